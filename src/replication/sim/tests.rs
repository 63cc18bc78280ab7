//! The simulator's test entry points: many seeded schedules, one replayed seed, and seeds
//! that once caught broken variants of the algorithm.

use super::*;

fn run_seed(seed: u64) -> SimStats {
    let mut sim = Sim::new(seed);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        sim.run(1200, 800);
        sim.final_checks(seed);
        SimStats { acked: sim.acked.len() as u64, elections: sim.leaders.len() as u64, ..sim.stats.clone() }
    }));
    match result {
        Ok(r) => r,
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("simulation seed {seed} failed: {msg}\nreplay: QUORRA_SIM_SEED={seed} QUORRA_SIM_TRACE=1 cargo test --lib sim_one_seed -- --nocapture");
        }
    }
}

/// `QUORRA_SIM_SCHEDULES` schedules (10,000 by default) from seed `QUORRA_SIM_FIRST_SEED`
/// (0); with `QUORRA_SIM_REPORT` set, prints the report (`perf/sim.sh` keeps it).
#[test]
fn ten_thousand_random_fault_schedules() {
    let env = |k: &str| std::env::var(k).ok().and_then(|s| s.parse::<u64>().ok());
    let schedules = env("QUORRA_SIM_SCHEDULES").unwrap_or(10_000);
    let first = env("QUORRA_SIM_FIRST_SEED").unwrap_or(0);
    let mut total = SimStats::default();
    for seed in first..first + schedules {
        total.add(&run_seed(seed));
    }
    if std::env::var("QUORRA_SIM_REPORT").is_ok() {
        println!("{}", total.report(first));
    }
    // The schedules do real work: records get acknowledged, leaders change, and every kind
    // of fault happens.
    assert!(total.acked > schedules * 20, "too few acknowledged records: {total:?}");
    assert!(total.elections > schedules, "too few elections: {total:?}");
    if schedules >= 100 {
        let faults = [total.dropped, total.duplicated, total.cut_by_partition, total.crashes, total.truncations];
        assert!(faults.iter().all(|&n| n > 0), "a kind of fault never happened: {total:?}");
        assert!(total.unsynced_lost_records > 0, "no crash ever lost an unsynced write: {total:?}");
    }
}

#[test]
fn sim_one_seed() {
    if let Some(seed) = std::env::var("QUORRA_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        let stats = run_seed(seed);
        eprintln!("seed {seed}: {} records acknowledged, {} epochs led; {stats:?}", stats.acked, stats.elections);
    }
}

#[test]
fn divergence_of_histories() {
    let mut a = EpochHistory::default();
    a.observe(1, 0);
    a.observe(2, 2);
    a.observe(4, 4);
    let mut b = EpochHistory::default();
    b.observe(1, 0);
    b.observe(3, 2);
    assert_eq!(a.divergence(5, &b, 4), 2);
    assert_eq!(b.divergence(4, &a, 5), 2);
    assert_eq!(a.divergence(5, &a.clone(), 5), 5);
    let mut c = a.clone();
    c.truncate(3);
    assert_eq!(a.divergence(5, &c, 3), 3);
}

/// Seeds that caught broken variants of the algorithm (choosing a less up-to-date replica as
/// leader; a restarted replica leading an epoch it wrote in before): kept as named tests.
#[test]
fn seed_3_the_most_up_to_date_replica_must_lead() {
    run_seed(3);
}

#[test]
fn seed_28_a_restarted_replica_must_not_reuse_its_epoch() {
    run_seed(28);
}
