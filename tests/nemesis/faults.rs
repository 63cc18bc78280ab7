//! The nemesis: a seeded random schedule of faults applied to a cluster of real processes,
//! each held for a while, then healed, then waited out until the cluster has recovered
//! (every partition led, every replica in sync) before the next one.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::common::cluster::Cluster;
use super::common::files_below;
use super::firewall::Firewall;

/// What the nemesis can do to the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// kill -9 one node (a minority of three), restart it.
    Kill,
    /// kill -9 every node, restart them all.
    KillAll,
    /// SIGSTOP one node for longer than the election timeout, then SIGCONT.
    Pause,
    /// SIGTERM and restart each node in turn, waiting for recovery after each.
    RollingRestart,
    /// One node cut off from the others, both ways (minority / majority).
    Isolate,
    /// One node cut off from the metadata leader only; it still sees the third node.
    CutFromMetadataLeader,
    /// Two nodes cut from each other; the third sees both (a bridge).
    Bridge,
    /// Packets from one node to another dropped; the other direction flows.
    OneWay,
    /// Every log write or fdatasync of one node fails with EIO.
    DiskEio,
    /// One node's disk is full (writes and preallocation fail with ENOSPC).
    DiskFull,
    /// One node's log writes and flushes take 20-200 ms longer.
    DiskSlow,
    /// Every write and sync of one node's metadata log (Raft) fails with EIO, while a
    /// scratch topic is created and deleted (metadata writes every member appends): the
    /// node stops (fail-stop, exit status 74); once the fault clears it is restarted, as
    /// a supervisor would.
    MetadataEio,
    /// One node killed, bytes flipped in its segment files, restarted.
    BitFlip,
    /// One node vanishes without a reset, as a machine that loses power does: paused (its
    /// kernel still acknowledges what it is sent, nothing is answered), its packets to the
    /// others dropped, killed (its resets are dropped too), then restarted. The others'
    /// connections to it stay open, everything they sent acknowledged, waiting for answers.
    Vanish,
}

impl FaultKind {
    pub const ALL: [FaultKind; 14] = [
        FaultKind::Kill,
        FaultKind::KillAll,
        FaultKind::Pause,
        FaultKind::RollingRestart,
        FaultKind::Isolate,
        FaultKind::CutFromMetadataLeader,
        FaultKind::Bridge,
        FaultKind::OneWay,
        FaultKind::DiskEio,
        FaultKind::DiskFull,
        FaultKind::DiskSlow,
        FaultKind::MetadataEio,
        FaultKind::BitFlip,
        FaultKind::Vanish,
    ];

    /// The kinds `QUORRA_NEMESIS_FAULTS` names (comma-separated, as in the report), or all.
    pub fn chosen() -> Vec<FaultKind> {
        let Ok(names) = std::env::var("QUORRA_NEMESIS_FAULTS") else { return Self::ALL.to_vec() };
        names
            .split(',')
            .map(|name| {
                let found = Self::ALL.into_iter().find(|k| format!("{k:?}").eq_ignore_ascii_case(name.trim()));
                found.unwrap_or_else(|| panic!("QUORRA_NEMESIS_FAULTS: no fault kind {name:?} in {:?}", Self::ALL))
            })
            .collect()
    }

    fn needs_firewall(self) -> bool {
        matches!(
            self,
            FaultKind::Isolate
                | FaultKind::CutFromMetadataLeader
                | FaultKind::Bridge
                | FaultKind::OneWay
                | FaultKind::Vanish
        )
    }

    /// How often the schedule picks it, relative to the others: the cheap single-node
    /// faults most, the whole-cluster ones (which take longest to recover) least.
    fn weight(self) -> u32 {
        match self {
            FaultKind::KillAll | FaultKind::RollingRestart => 1,
            _ => 3,
        }
    }
}

/// One fault the nemesis applied, with times in ms since the run started.
#[derive(Clone, Debug)]
pub struct FaultRecord {
    pub kind: FaultKind,
    pub detail: String,
    pub start_ms: u64,
    pub healed_ms: u64,
    pub recovered_ms: u64,
}

pub struct Nemesis<'a> {
    pub cluster: &'a mut Cluster,
    firewall: Option<Firewall>,
    rng: StdRng,
    started: Instant,
    /// Longer than the election timeout: pauses and cuts last at least this long.
    min_hold: Duration,
    pub records: Vec<FaultRecord>,
}

/// A follower this close to its leader has caught up (the load keeps writing).
const MAX_RECOVERED_LAG: u64 = 5_000;

/// How long the cluster may take to recover from a healed fault before the run fails.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(90);

impl<'a> Nemesis<'a> {
    /// `started` is the run's time origin (the load's); `firewall` None leaves out the
    /// network faults.
    pub fn new(cluster: &'a mut Cluster, firewall: Option<Firewall>, seed: u64, started: Instant) -> Nemesis<'a> {
        let min_hold = Duration::from_millis(3 * quorra::limits::DEFAULT_ELECTION_TIMEOUT_MS);
        Nemesis { cluster, firewall, rng: StdRng::seed_from_u64(seed), started, min_hold, records: Vec::new() }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Picks a fault, holds it, heals it and waits until the cluster has recovered.
    pub fn step(&mut self) -> &FaultRecord {
        let kinds: Vec<FaultKind> =
            FaultKind::chosen().into_iter().filter(|k| self.firewall.is_some() || !k.needs_firewall()).collect();
        let kind = *kinds.choose_weighted(&mut self.rng, |k| k.weight()).expect("kinds");
        let hold = self.min_hold + Duration::from_millis(self.rng.gen_range(0..6_000));
        let x = self.pick();
        self.apply_and_recover(kind, x, hold)
    }

    /// Applies one fault to node `x` (the node it is about: the one killed, cut off,
    /// bridging...), holds it, heals it and waits until the cluster has recovered.
    pub fn apply_and_recover(&mut self, kind: FaultKind, x: u32, hold: Duration) -> &FaultRecord {
        let start_ms = self.now_ms();
        let detail = self.apply(kind, x, hold);
        let healed_ms = self.now_ms();
        self.wait_recovered(&format!("{kind:?} ({detail})"));
        let record = FaultRecord { kind, detail, start_ms, healed_ms, recovered_ms: self.now_ms() };
        eprintln!(
            "nemesis: {:?} {} at {} ms, healed at {} ms, recovered at {} ms",
            record.kind, record.detail, record.start_ms, record.healed_ms, record.recovered_ms
        );
        self.records.push(record);
        self.records.last().expect("pushed")
    }

    fn ids(&self) -> Vec<u32> {
        self.cluster.nodes.iter().map(|n| n.id).collect()
    }

    fn pick(&mut self) -> u32 {
        *self.ids().choose(&mut self.rng).expect("nodes")
    }

    fn ip(&mut self, id: u32) -> IpAddr {
        self.cluster.node(id).client.ip()
    }

    fn firewall(&self) -> &Firewall {
        self.firewall.as_ref().expect("network faults are chosen only with a firewall")
    }

    /// Starts the fault, waits `hold`, ends it; what it did, for the report.
    fn apply(&mut self, kind: FaultKind, x: u32, hold: Duration) -> String {
        match kind {
            FaultKind::Kill => {
                self.cluster.node(x).kill();
                std::thread::sleep(hold);
                self.cluster.node(x).restart();
                format!("node {x}")
            }
            FaultKind::KillAll => {
                for n in &mut self.cluster.nodes {
                    n.kill();
                }
                std::thread::sleep(hold.min(Duration::from_secs(3)));
                // Together: a node's start waits for a metadata majority.
                std::thread::scope(|s| {
                    for n in &mut self.cluster.nodes {
                        s.spawn(|| n.restart());
                    }
                });
                "every node".into()
            }
            FaultKind::Pause => {
                self.cluster.node(x).signal(libc::SIGSTOP);
                std::thread::sleep(hold);
                self.cluster.node(x).signal(libc::SIGCONT);
                format!("node {x}")
            }
            FaultKind::RollingRestart => {
                for id in self.ids() {
                    let stopped = self.cluster.node(id).terminate(Duration::from_secs(30));
                    assert!(stopped.is_some(), "node {id} did not stop on SIGTERM within 30 s");
                    self.cluster.node(id).restart();
                    self.wait_recovered(&format!("the rolling restart of node {id}"));
                }
                "every node in turn".into()
            }
            FaultKind::Isolate => {
                let xip = self.ip(x);
                for y in self.others(x) {
                    let yip = self.ip(y);
                    self.firewall().cut_both(xip, yip);
                }
                self.hold_then_heal(hold);
                format!("node {x}")
            }
            FaultKind::CutFromMetadataLeader => {
                let leader = self.cluster.status().and_then(|s| s.metadata_leader).unwrap_or(1);
                let y = self.pick_other(leader);
                let (lip, yip) = (self.ip(leader), self.ip(y));
                self.firewall().cut_both(lip, yip);
                self.hold_then_heal(hold);
                format!("node {y} from metadata leader {leader}")
            }
            FaultKind::Bridge => {
                let ends = self.others(x);
                let (a, b) = (self.ip(ends[0]), self.ip(ends[1]));
                self.firewall().cut_both(a, b);
                self.hold_then_heal(hold);
                format!("node {x} bridges {} and {}", ends[0], ends[1])
            }
            FaultKind::OneWay => {
                let y = self.pick_other(x);
                let (xip, yip) = (self.ip(x), self.ip(y));
                self.firewall().cut(xip, yip);
                self.hold_then_heal(hold);
                format!("node {x} -> node {y} dropped")
            }
            FaultKind::DiskEio => {
                let line = *["sync=eio", "write=eio"].choose(&mut self.rng).expect("lines");
                self.disk_faults_for(x, &[line], hold);
                format!("node {x}: {line}")
            }
            FaultKind::DiskFull => {
                self.disk_faults_for(x, &["write=enospc", "fallocate=enospc"], hold);
                format!("node {x}")
            }
            FaultKind::DiskSlow => {
                let line = format!("slow={}", self.rng.gen_range(20..=200));
                self.disk_faults_for(x, &[&line], hold);
                format!("node {x}: {line}")
            }
            FaultKind::MetadataEio => {
                self.cluster.node(x).set_disk_faults(&["meta=eio"]);
                // (The node reads its fault file every 50 ms.)
                std::thread::sleep(Duration::from_millis(200));
                self.cluster.write_metadata_twice(&format!("nemesis-scratch-{}", self.records.len()));
                std::thread::sleep(hold);
                self.cluster.node(x).set_disk_faults(&[]);
                if !self.cluster.node(x).has_exited() {
                    return format!("node {x}: meta=eio (no metadata write reached it)");
                }
                let log = self.cluster.node(x).log();
                assert!(
                    log.contains("the metadata log cannot be written"),
                    "node {x} ended, but not on its metadata log's failure\n{log}"
                );
                self.cluster.node(x).restart();
                format!("node {x}: meta=eio (it stopped; restarted)")
            }
            FaultKind::BitFlip => {
                self.cluster.node(x).kill();
                let flipped = self.flip_bits(x);
                std::thread::sleep(Duration::from_millis(500));
                self.cluster.node(x).restart();
                format!("node {x}: {flipped}")
            }
            FaultKind::Vanish => {
                self.cluster.node(x).signal(libc::SIGSTOP);
                // Long enough for the others to send it a window of appends and heartbeats.
                std::thread::sleep(hold.min(Duration::from_secs(2)));
                let xip = self.ip(x);
                for y in self.others(x) {
                    let yip = self.ip(y);
                    self.firewall().cut(xip, yip);
                }
                self.cluster.node(x).kill();
                std::thread::sleep(Duration::from_millis(500));
                self.firewall().heal();
                self.cluster.node(x).restart();
                format!("node {x}")
            }
        }
    }

    /// Every node but `x`.
    fn others(&self, x: u32) -> Vec<u32> {
        self.ids().into_iter().filter(|&y| y != x).collect()
    }

    /// A random node other than `x`.
    fn pick_other(&mut self, x: u32) -> u32 {
        *self.others(x).choose(&mut self.rng).expect("another node")
    }

    /// Node `x`'s disk faults `lines` for `hold`, then none.
    fn disk_faults_for(&mut self, x: u32, lines: &[&str], hold: Duration) {
        self.cluster.node(x).set_disk_faults(lines);
        std::thread::sleep(hold);
        self.cluster.node(x).set_disk_faults(&[]);
    }

    fn hold_then_heal(&self, hold: Duration) {
        std::thread::sleep(hold);
        self.firewall().heal();
    }

    /// Flips one bit in each of up to three segment files of the (stopped) node, at a random
    /// place in what was written (below the last non-zero byte: the rest is preallocation).
    fn flip_bits(&mut self, id: u32) -> String {
        let data = self.cluster.node(id).dir.join("data");
        let mut segments: Vec<_> = files_below(&data)
            .into_iter()
            .filter(|(p, m)| p.extension().is_some_and(|e| e == "log") && m.len() > 0)
            .map(|(p, _)| p)
            .collect();
        segments.shuffle(&mut self.rng);
        let mut flipped = Vec::new();
        for path in segments.into_iter().take(3) {
            let mut bytes = std::fs::read(&path).unwrap();
            let Some(end) = bytes.iter().rposition(|&b| b != 0) else { continue };
            let at = self.rng.gen_range(0..=end);
            bytes[at] ^= 1 << self.rng.gen_range(0..8);
            std::fs::write(&path, &bytes).unwrap();
            flipped.push(format!("{} @ {at}", path.strip_prefix(&data).unwrap_or(&path).display()));
        }
        if flipped.is_empty() {
            "no segment written yet".into()
        } else {
            flipped.join(", ")
        }
    }

    /// Waits until every node answers and every partition has a leader and all its replicas
    /// in sync; fails the run (with the nodes' logs) after [`RECOVERY_TIMEOUT`].
    /// (A leader counts a restarted follower in sync from before its restart for a moment:
    /// the condition must hold at two polls a second apart, and no follower may lag by more
    /// than [`MAX_RECOVERED_LAG`] records.)
    pub fn wait_recovered(&self, after: &str) {
        let deadline = Instant::now() + RECOVERY_TIMEOUT;
        let mut held_since: Option<Instant> = None;
        // Why the last polls that failed did, with how often (a budget that runs out says
        // whether the cluster was stuck on one thing or flapping).
        let mut misses: std::collections::BTreeMap<String, u32> = Default::default();
        loop {
            let status = self.cluster.status();
            let miss = match &status {
                None => Some("no status answer (3 s timeout)".to_string()),
                Some(s) => not_recovered_because(s),
            };
            match (&miss, held_since) {
                (None, Some(t)) if t.elapsed() >= Duration::from_secs(1) => return,
                (None, None) => held_since = Some(Instant::now()),
                (Some(why), _) => {
                    held_since = None;
                    *misses.entry(why.clone()).or_default() += 1;
                }
                _ => {}
            }
            if Instant::now() > deadline {
                let rules = self.firewall.as_ref().map(Firewall::rules).unwrap_or_default();
                panic!(
                    "the cluster did not recover within {RECOVERY_TIMEOUT:?} after {after}\n\
                     polls that failed, by reason: {misses:#?}\nstatus: {status:#?}\nfirewall: {rules}\n{}",
                    self.cluster.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Why a cluster status is not yet "recovered" (the first reason found), or None.
fn not_recovered_because(s: &quorra::protocol::messages::ClusterStatusResponse) -> Option<String> {
    if let Some(n) = s.nodes.iter().find(|n| !n.alive) {
        return Some(format!("node {} not alive", n.node_id));
    }
    if s.partitions.is_empty() {
        return Some("no partitions in the status".into());
    }
    s.partitions.iter().find_map(|p| {
        let name = format!("{}/{}", p.topic, p.partition);
        if p.leader.is_none() {
            Some(format!("{name}: no leader"))
        } else if p.in_sync.len() != p.replicas.len() {
            Some(format!("{name}: {} of {} replicas in sync", p.in_sync.len(), p.replicas.len()))
        } else {
            p.lag
                .iter()
                .find(|l| l.records > MAX_RECOVERED_LAG)
                .map(|l| format!("{name}: node {} lags by more than {MAX_RECOVERED_LAG} records", l.node_id))
        }
    })
}
