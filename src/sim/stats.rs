//! What the simulated schedules did, summed for the long-run report (`perf/sim.sh`).

/// Declares the counters once: the struct, their sum and the report's rows.
macro_rules! sim_stats {
    ($($field:ident: $what:literal,)*) => {
        /// What one or many schedules did: faults injected by kind, invariant checks run,
        /// work done (the long-run report of `QUORRA_SIM_SCHEDULES`, see `perf/sim.sh`).
        #[derive(Debug, Default, Clone)]
        pub(super) struct SimStats {
            $(pub(super) $field: u64,)*
        }

        impl SimStats {
            pub(super) fn add(&mut self, o: &SimStats) {
                $(self.$field += o.$field;)*
            }

            fn rows(&self) -> Vec<(&'static str, u64)> {
                vec![$(($what, self.$field),)*]
            }
        }
    };
}

sim_stats! {
    schedules: "schedules",
    five_replica_schedules: "of them with five replicas",
    single_node_schedules: "of them a single node (a replica set of one)",
    messages: "messages sent",
    dropped: "fault: message dropped",
    duplicated: "fault: message duplicated",
    cut_by_partition: "fault: message cut by a partition",
    crashes: "fault: crash (power loss: unsynced writes lost)",
    torn_crashes: "of them tearing unsynced writes (a prefix kept, one write cut short)",
    wiped_disks: "of them losing the disk (the replica restarts empty, without a vote until caught up)",
    unsynced_lost_records: "records lost from crashed logs (unsynced)",
    restarts: "restarts (recovery from the simulated disk)",
    isolations: "fault: network partition (one node, or two of five, cut off)",
    heals: "heals",
    disk_failures: "fault: a disk fails for a while (EIO on writes or on syncs, or full: ENOSPC)",
    truncations: "log ends moved back (divergent tails cut, failed writes dropped)",
    metadata_write_failures: "fault: metadata write refused (the controller restarts from the metadata)",
    metadata_checks: "check: a replica acts only on a recorded epoch and appointment",
    commit_checks: "check: high watermark monotonic, within the log, equal to the committed log",
    leader_checks: "check: one leader per epoch, a new leader holds the committed log",
    order_checks: "check: a producer's batch commits in order, once",
    leader_ack_checks: "check: a record acknowledged at acks=leader by the final leader is committed at its offset",
    leader_durability_checks: "check: a record acknowledged at acks=leader survives its leader's crash",
    reads: "reads served by a replica",
    served_checks: "check: a record served was committed at its offset",
    final_checks: "check: end of schedule (acked records committed, logs converge, producer tables)",
    acked: "records acknowledged",
    elections: "epochs led (elections)",
}

impl SimStats {
    /// The report, in markdown.
    pub(super) fn report(&self, first_seed: u64) -> String {
        let mut out = format!(
            "# Simulation report\n\nSeeds {first_seed}..{} (replay one: `QUORRA_SIM_SEED=<n> QUORRA_SIM_TRACE=1 cargo test --lib sim::tests::sim_one_seed -- --exact --nocapture`).\n\n| what | count |\n|---|---:|\n",
            first_seed + self.schedules
        );
        for (what, n) in self.rows() {
            out += &format!("| {what} | {n} |\n");
        }
        out + "<!-- end of the simulation report -->"
    }
}
