//! The nemesis, in the manner of Jepsen: a three-node cluster of real `quorra serve`
//! processes, each on its own loopback address, under idempotent `acks=quorum` producers and
//! consumers reading from leaders and from followers the whole time, while a seeded random
//! schedule kills, pauses, restarts and partitions the nodes (nftables rules between their
//! addresses) and fails or corrupts their disks. At the end a history checker reads the log
//! back: every acknowledged record once, at its offset, in producer order; nothing a consumer
//! read disappeared or changed; offsets dense. It also reports, for each fault, how long the
//! producers got no acknowledgement.
//!
//! Environment: `QUORRA_NEMESIS_SEED` (default: from the clock; printed), `QUORRA_NEMESIS_SECS`
//! (per mode, default 60), `QUORRA_NEMESIS_REPORT` (a file the Markdown report is appended
//! to), `QUORRA_NEMESIS_FAULTS` (only these kinds, e.g. `Isolate,Kill`),
//! `QUORRA_NEMESIS_REQUIRE_FIREWALL=1` (fail instead of leaving out the network faults
//! when nftables cannot be used: `.ci/run` sets it). `perf/nemesis.sh` runs long schedules.

#[path = "../common/mod.rs"]
mod common;
mod faults;
mod firewall;
mod history;

use std::time::{Duration, Instant};

use common::cluster::{private_loopback, Cluster, Load, LoadShape, Watcher};
use faults::Nemesis;
use firewall::Firewall;
use quorra::client::ReadFrom;
use quorra::protocol::messages::Acks;

const PARTITIONS: u32 = 3;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v}: not a number")))
}

fn run_mode(mode: &str, mode_index: u8) {
    let seed = env_u64("QUORRA_NEMESIS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs()
    });
    let secs = env_u64("QUORRA_NEMESIS_SECS").unwrap_or(60);
    eprintln!("nemesis {mode}: seed {seed}, {secs} s (QUORRA_NEMESIS_SEED={seed} replays the schedule)");
    let firewall = firewall_or_skip(&mode.replace('-', "_"));
    let mut cluster = Cluster::start_addressed(&format!("nemesis-{mode}"), mode, private_loopback(mode_index), |_| {});
    cluster.create_topic("t", PARTITIONS, 0);
    let bootstrap = cluster.bootstrap();
    let shape = LoadShape { acks: Acks::Quorum, producers: 2, window: 16, ..Default::default() };
    let started = Instant::now();
    let load = Load::start_shaped(&bootstrap, "t", PARTITIONS, shape);
    let leader_reads = Watcher::start(&bootstrap, "t", ReadFrom::Leader);
    let follower_reads = Watcher::start(&bootstrap, "t", ReadFrom::Follower);
    load.wait_acked(200, Duration::from_secs(30));
    let mut nemesis = Nemesis::new(&mut cluster, firewall, seed, started);
    nemesis.wait_recovered("the start");
    while started.elapsed() < Duration::from_secs(secs) {
        nemesis.step();
        std::thread::sleep(Duration::from_secs(1));
    }
    let faults = std::mem::take(&mut nemesis.records);
    drop(nemesis);
    // Each step of the end says when it starts, so that a check that takes long shows where.
    let phase = |what: &str| eprintln!("nemesis {mode}: {what} at {:.0} s", started.elapsed().as_secs_f64());
    phase("schedule over; waiting for acknowledgements");
    // Still taking writes after everything.
    load.wait_acked(200, Duration::from_secs(60));
    let run_end_ms = started.elapsed().as_millis() as u64;
    phase("stopping the producers");
    let acked = load.stop();
    phase("stopping the consumers");
    let (leader_seen, follower_seen) = (leader_reads.stop(), follower_reads.stop());
    phase("reading the log back");
    let history = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        history::check_history(&bootstrap, "t", PARTITIONS, &acked, &[&leader_seen, &follower_seen])
    }))
    .unwrap_or_else(|_| {
        keep_logs(mode, &cluster);
        panic!("seed {seed}: the read-back failed (above); status: {:#?}", cluster.status())
    });
    let silences = history::unavailability(&faults, &acked, run_end_ms);
    let report = history::report(mode, seed, secs, &history, &silences, acked.at.len() as u64);
    eprintln!("{report}");
    if let Some(path) = std::env::var_os("QUORRA_NEMESIS_REPORT") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("report file");
        f.write_all(report.as_bytes()).expect("write report");
    }
    assert!(!faults.is_empty(), "the schedule applied no fault");
    assert!(history.verdict.acked > 0, "nothing acknowledged");
    if !history.is_clean() {
        keep_logs(mode, &cluster);
    }
    assert!(history.is_clean(), "seed {seed}: {history:?}\n{}", cluster.logs());
}

/// Copies the nodes' logs where a failed run leaves them (the cluster's directory goes):
/// `target/nemesis-logs/<mode>-node<id>.log`; a 30-minute run's are too long to print.
fn keep_logs(mode: &str, cluster: &Cluster) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/nemesis-logs");
    let _ = std::fs::create_dir_all(&dir);
    for node in &cluster.nodes {
        let (id, path) = (node.id, dir.join(format!("{mode}-node{}.log", node.id)));
        match std::fs::write(&path, node.log()) {
            Ok(()) => eprintln!("nemesis {mode}: node {id}'s log kept in {}", path.display()),
            Err(e) => eprintln!("nemesis {mode}: cannot keep node {id}'s log in {}: {e}", path.display()),
        }
    }
}

/// A follower's machine vanishes without a reset (see [`faults::FaultKind::Vanish`]): its
/// leader's link to it has sent a window of appends, all acknowledged by the follower's
/// kernel, and waits for answers that will never come; TCP has nothing to retransmit, so
/// nothing tells the leader the connection is dead. Before, the link waited for ever: the
/// restarted follower got nothing more and stayed out of the in-sync set. (Seen in CI as a
/// multi-master follower lagging 109,783 records 90 s after a one-way cut, seed 1796249862;
/// that run could not be replayed, this sequence fails every time.)
#[test]
fn a_follower_that_vanished_without_a_reset_is_reconnected_and_catches_up() {
    let Some(firewall) = firewall_or_skip("vanish") else { return };
    let mut cluster = Cluster::start_addressed("vanish", "master-slave", private_loopback(3), |_| {});
    cluster.create_topic("t", 1, 0);
    let bootstrap = cluster.bootstrap();
    let shape = LoadShape { acks: Acks::Quorum, producers: 2, window: 16, ..Default::default() };
    let started = Instant::now();
    let load = Load::start_shaped(&bootstrap, "t", 1, shape);
    load.wait_acked(200, Duration::from_secs(30));
    let leader = cluster.status().and_then(|s| s.partitions[0].leader).expect("a leader");
    let follower = cluster.nodes.iter().map(|n| n.id).find(|&id| id != leader).expect("a follower");
    let mut nemesis = Nemesis::new(&mut cluster, Some(firewall), 0, started);
    nemesis.wait_recovered("the start");
    for _ in 0..2 {
        nemesis.apply_and_recover(faults::FaultKind::Vanish, follower, Duration::from_secs(2));
    }
    drop(nemesis);
    load.wait_acked(200, Duration::from_secs(30));
    let acked = load.stop();
    let history = history::check_history(&bootstrap, "t", 1, &acked, &[]);
    assert!(history.is_clean(), "{history:?}\n{}", cluster.logs());
}

/// The run's own nftables table, or None (and a loud note) where nftables cannot be used,
/// unless `QUORRA_NEMESIS_REQUIRE_FIREWALL` says it must.
fn firewall_or_skip(run: &str) -> Option<Firewall> {
    match Firewall::new(run) {
        Ok(f) => Some(f),
        Err(e) if std::env::var_os("QUORRA_NEMESIS_REQUIRE_FIREWALL").is_some() => {
            panic!("network faults need nftables (root and the nftables package): {e}")
        }
        Err(e) => {
            eprintln!("{run}: WITHOUT network faults: {e}");
            None
        }
    }
}

#[test]
fn nemesis_master_slave() {
    run_mode("master-slave", 0);
}

#[test]
fn nemesis_hybrid() {
    run_mode("hybrid", 1);
}

#[test]
fn nemesis_multi_master() {
    run_mode("multi-master", 2);
}
