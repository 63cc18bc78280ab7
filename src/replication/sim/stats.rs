//! What the simulated schedules did, summed for the long-run report (`perf/sim.sh`).

/// What one or many schedules did: faults injected by kind, invariant checks run, work done
/// (the long-run report of `QUORRA_SIM_SCHEDULES`, see `perf/sim.sh`).
#[derive(Debug, Default, Clone)]
pub(super) struct SimStats {
    pub(super) schedules: u64,
    pub(super) messages: u64,
    pub(super) dropped: u64,
    pub(super) duplicated: u64,
    pub(super) cut_by_partition: u64,
    pub(super) crashes: u64,
    pub(super) restarts: u64,
    pub(super) isolations: u64,
    pub(super) heals: u64,
    pub(super) truncations: u64,
    pub(super) unsynced_lost_records: u64,
    pub(super) commit_checks: u64,
    pub(super) leader_checks: u64,
    pub(super) order_checks: u64,
    pub(super) final_checks: u64,
    pub(super) acked: u64,
    pub(super) elections: u64,
    pub(super) five_replica_schedules: u64,
    pub(super) metadata_write_failures: u64,
    pub(super) metadata_checks: u64,
}

impl SimStats {
    pub(super) fn add(&mut self, o: &SimStats) {
        self.schedules += o.schedules;
        self.messages += o.messages;
        self.dropped += o.dropped;
        self.duplicated += o.duplicated;
        self.cut_by_partition += o.cut_by_partition;
        self.crashes += o.crashes;
        self.restarts += o.restarts;
        self.isolations += o.isolations;
        self.heals += o.heals;
        self.truncations += o.truncations;
        self.unsynced_lost_records += o.unsynced_lost_records;
        self.commit_checks += o.commit_checks;
        self.leader_checks += o.leader_checks;
        self.order_checks += o.order_checks;
        self.final_checks += o.final_checks;
        self.acked += o.acked;
        self.elections += o.elections;
        self.five_replica_schedules += o.five_replica_schedules;
        self.metadata_write_failures += o.metadata_write_failures;
        self.metadata_checks += o.metadata_checks;
    }

    /// The report, in markdown.
    pub(super) fn report(&self, first_seed: u64) -> String {
        let rows = [
            ("schedules", self.schedules),
            ("of them with five replicas", self.five_replica_schedules),
            ("messages sent", self.messages),
            ("fault: message dropped", self.dropped),
            ("fault: message duplicated", self.duplicated),
            ("fault: message cut by a partition", self.cut_by_partition),
            ("fault: crash (unsynced writes lost)", self.crashes),
            ("records lost from crashed logs (unsynced)", self.unsynced_lost_records),
            ("restarts", self.restarts),
            ("fault: network partition (one node, or two of five, cut off)", self.isolations),
            ("heals", self.heals),
            ("log truncations (divergent tails cut)", self.truncations),
            ("fault: metadata write refused (the controller restarts from the metadata)", self.metadata_write_failures),
            ("check: a replica acts only on a recorded epoch and appointment", self.metadata_checks),
            ("check: high watermark monotonic, within the log, equal to the committed log", self.commit_checks),
            ("check: one leader per epoch, a new leader holds the committed log", self.leader_checks),
            ("check: a producer's batch commits in order, once", self.order_checks),
            ("check: end of schedule (acked records committed, logs converge, producer tables)", self.final_checks),
            ("records acknowledged", self.acked),
            ("epochs led (elections)", self.elections),
        ];
        let mut out = format!(
            "# Simulation report\n\nSeeds {first_seed}..{} (replay one: `QUORRA_SIM_SEED=<n> QUORRA_SIM_TRACE=1 cargo test --lib sim_one_seed -- --nocapture`).\n\n| what | count |\n|---|---:|\n",
            first_seed + self.schedules
        );
        for (what, n) in rows {
            out += &format!("| {what} | {n} |\n");
        }
        out + "<!-- end of the simulation report -->"
    }
}
