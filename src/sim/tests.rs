//! The simulator's test entry points: many seeded schedules, one replayed seed.

use super::*;

fn run_seed(seed: u64, shape: Shape) -> SimStats {
    let result = std::panic::catch_unwind(|| run_schedule(seed, shape, 1200, 800));
    match result {
        Ok(r) => r,
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let single = if shape == Shape::SingleNode { " QUORRA_SIM_SINGLE_NODE=1" } else { "" };
            panic!("simulation seed {seed} failed: {msg} ({shape:?} schedule)\nreplay: QUORRA_SIM_SEED={seed}{single} QUORRA_SIM_TRACE=1 cargo test --lib sim::tests::sim_one_seed -- --exact --nocapture");
        }
    }
}

/// `QUORRA_SIM_SCHEDULES` cluster schedules (1,000 by default) from seed
/// `QUORRA_SIM_FIRST_SEED` (0), and a quarter as many single-node schedules from the same
/// seed; with `QUORRA_SIM_REPORT` set, prints the report (`perf/sim.sh` keeps it).
#[test]
fn random_fault_schedules() {
    let env = |k: &str| std::env::var(k).ok().and_then(|s| s.parse::<u64>().ok());
    let schedules = env("QUORRA_SIM_SCHEDULES").unwrap_or(1_000);
    let first = env("QUORRA_SIM_FIRST_SEED").unwrap_or(0);
    let mut total = SimStats::default();
    for seed in first..first + schedules {
        total.add(&run_seed(seed, Shape::Cluster));
    }
    let mut single = SimStats::default();
    for seed in first..first + schedules.div_ceil(4) {
        single.add(&run_seed(seed, Shape::SingleNode));
    }
    // A single node acknowledges, crashes, loses unsynced writes, fails its disk and
    // checks what it acknowledged after each restart.
    assert!(single.acked > single.schedules * 20, "too few acknowledged records on a single node: {single:?}");
    if single.schedules >= 25 {
        let work = [single.crashes, single.disk_failures, single.leader_durability_checks, single.served_checks];
        assert!(work.iter().all(|&n| n > 0), "a single node's schedules did not do everything: {single:?}");
    }
    total.add(&single);
    if std::env::var("QUORRA_SIM_REPORT").is_ok() {
        println!("{}", total.report(first));
    }
    // The schedules do real work: records get acknowledged, leaders change, and every kind
    // of fault happens.
    assert!(total.acked > schedules * 20, "too few acknowledged records: {total:?}");
    assert!(total.elections > schedules, "too few elections: {total:?}");
    if schedules >= 100 {
        let faults = [
            total.dropped,
            total.duplicated,
            total.cut_by_partition,
            total.crashes,
            total.truncations,
            total.disk_failures,
        ];
        assert!(faults.iter().all(|&n| n > 0), "a kind of fault never happened: {total:?}");
        assert!(total.unsynced_lost_records > 0, "no crash ever lost an unsynced write: {total:?}");
        assert!(total.served_checks > 0, "no reader was ever served: {total:?}");
    }
}

/// Seeds that found defects once the simulator failed disks (each failed before its fix:
/// a follower's high watermark above what it held durably, a failed truncation, epochs of
/// batches above the recovery point missing from the history, a durable report to a
/// replica about to cut its log, a reset from the replica's own history or with appends
/// counted durable, a replica that could not open on a full disk). The default schedules
/// hold some of them; the others are here.
#[test]
fn seeds_that_found_defects() {
    for seed in [1, 5, 15, 334, 395, 410, 1145, 2828] {
        run_seed(seed, Shape::Cluster);
    }
}

#[test]
fn sim_one_seed() {
    if let Some(seed) = std::env::var("QUORRA_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        let shape = if std::env::var("QUORRA_SIM_SINGLE_NODE").is_ok() { Shape::SingleNode } else { Shape::Cluster };
        let stats = run_seed(seed, shape);
        eprintln!("seed {seed}: {} records acknowledged, {} epochs led; {stats:?}", stats.acked, stats.elections);
    }
}
