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
    let firewall = match Firewall::new(&mode.replace('-', "_")) {
        Ok(f) => Some(f),
        Err(e) if std::env::var_os("QUORRA_NEMESIS_REQUIRE_FIREWALL").is_some() => {
            panic!("network faults need nftables (root and the nftables package): {e}")
        }
        Err(e) => {
            eprintln!("nemesis {mode}: WITHOUT network faults: {e}");
            None
        }
    };
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
    // Still taking writes after everything.
    load.wait_acked(200, Duration::from_secs(60));
    let run_end_ms = started.elapsed().as_millis() as u64;
    let acked = load.stop();
    let (leader_seen, follower_seen) = (leader_reads.stop(), follower_reads.stop());
    let history = history::check_history(&bootstrap, "t", PARTITIONS, &acked, &[&leader_seen, &follower_seen]);
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
    assert!(history.is_clean(), "seed {seed}: {history:?}\n{}", cluster.logs());
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
