//! Per-principal quotas with real processes: a principal over its produce or fetch rate is
//! throttled (its answers come later and say by how much; nothing is dropped), another
//! principal is not held back meanwhile, and connections per principal are bounded.

mod common;

use std::time::{Duration, Instant};

use common::{config_file, scratch_dir, Broker};
use quorra::client::{Client, ClientConfig, Credentials};
use quorra::protocol::messages::Acks;
use quorra::protocol::ErrorCode;

const RATE: u64 = 1_000_000;
const BATCH_BYTES: usize = 64 * 1024;
/// 4 MiB: a second's burst, then about three seconds' worth.
const BATCHES: usize = 64;

fn as_user(bootstrap: &str, user: &str) -> ClientConfig {
    ClientConfig {
        credentials: Some(Credentials { user: user.into(), password: "a password".into() }),
        ..ClientConfig::with_bootstrap(bootstrap)
    }
}

fn batch(bytes: usize) -> bytes::Bytes {
    let mut b = quorra::protocol::batch::BatchBuilder::with_capacity(bytes + 128);
    b.push(None, &vec![7u8; bytes], 1);
    b.finish(0, 0, 0)
}

/// The quiet principal's produce latencies (ms), `n` one at a time.
fn quiet_latencies(config: ClientConfig, n: usize) -> Vec<f64> {
    common::run(move || async move {
        let c = Client::connect(config).await.unwrap();
        let mut out = Vec::new();
        for _ in 0..n {
            let started = Instant::now();
            let r = c.produce_batches("quiet", 0, Acks::Leader, vec![batch(100)]).await.unwrap();
            assert_eq!(r.throttle_ms, 0, "the quiet principal is never throttled");
            out.push(started.elapsed().as_secs_f64() * 1000.0);
            quorra::rt::sleep(Duration::from_millis(5)).await;
        }
        out
    })
}

fn p99(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

#[test]
fn a_principal_over_its_quota_is_throttled_and_others_are_not() {
    let dir = scratch_dir("quotas");
    let config = config_file(
        dir.path(),
        &format!(
            "[auth]\nenabled = true\nsuper_users = [\"admin\", \"noisy\", \"quiet\"]\n\
             [quotas]\nproduce_bytes_per_sec = {RATE}\nfetch_bytes_per_sec = {RATE}\nconnections = 3\n\
             [quotas.users.quiet]\nproduce_bytes_per_sec = 0\nconnections = 10\n"
        ),
    );
    let broker = Broker::start(dir.path(), &["--config", config.to_str().unwrap()]);
    let b = broker.bootstrap();
    let setup = ClientConfig::with_bootstrap(&b);
    common::run(move || async move { Client::connect(setup).await.unwrap().upsert_user("admin", "a password").await })
        .unwrap();
    let admin = as_user(&b, "admin");
    common::run(move || async move {
        let c = Client::connect(admin).await.unwrap();
        c.upsert_user("noisy", "a password").await.unwrap();
        c.upsert_user("quiet", "a password").await.unwrap();
        c.create_topic("noisy", 1, 1).await.unwrap();
        c.create_topic("quiet", 1, 1).await.unwrap();
    });
    let baseline = p99(quiet_latencies(as_user(&b, "quiet"), 200));

    // The noisy principal produces 4 MiB at once; the quiet one produces meanwhile.
    let noisy = as_user(&b, "noisy");
    let started = Instant::now();
    let producing = std::thread::spawn(move || {
        common::run(move || async move {
            let c = Client::connect(noisy).await.unwrap();
            let mut throttled = 0u64;
            let mut next = 0;
            for _ in 0..BATCHES {
                let r = c.produce_batches("noisy", 0, Acks::Leader, vec![batch(BATCH_BYTES)]).await.unwrap();
                assert_eq!(r.base_offset, next, "every batch lands, in order");
                next = r.last_offset + 1;
                throttled += u64::from(r.throttle_ms);
            }
            throttled
        })
    });
    let during = p99(quiet_latencies(as_user(&b, "quiet"), 200));
    let throttled_ms = producing.join().unwrap();
    let took = started.elapsed();
    let sent = (BATCHES * BATCH_BYTES) as f64;
    let floor = Duration::from_secs_f64((sent - RATE as f64) / RATE as f64 * 0.9);
    assert!(took >= floor, "4 MiB at 1 MB/s took {took:?}: not throttled");
    assert!(throttled_ms as f64 >= floor.as_millis() as f64 * 0.8, "the answers say so: {throttled_ms} ms");
    eprintln!("quiet principal's p99: {baseline:.2} ms alone, {during:.2} ms beside the noisy one");
    assert!(during <= 2.0 * baseline + 5.0, "quiet p99 {during:.2} ms vs {baseline:.2} ms alone");

    // Fetching the 4 MiB back is throttled the same way.
    let noisy = as_user(&b, "noisy");
    let started = Instant::now();
    let (fetched, throttled_ms) = common::run(move || async move {
        let c = Client::connect(noisy).await.unwrap();
        let (mut offset, mut bytes, mut throttled) = (0, 0, 0u64);
        while offset < BATCHES as u64 {
            let f = c.fetch("noisy", 0, offset, BATCH_BYTES as u32, Duration::ZERO).await.unwrap();
            throttled += u64::from(f.throttle_ms);
            bytes += f.batches.len();
            offset += 1;
        }
        (bytes, throttled)
    });
    assert!(fetched >= BATCHES * BATCH_BYTES);
    let took = started.elapsed();
    assert!(took >= floor && throttled_ms > 0, "fetching 4 MiB at 1 MB/s took {took:?} ({throttled_ms} ms throttled)");

    // Three connections per principal: the fourth is refused.
    let noisy = as_user(&b, "noisy");
    let refused = common::run(move || async move {
        let mut held = Vec::new();
        for _ in 0..3 {
            let c = Client::connect(noisy.clone()).await.unwrap();
            c.list_topics().await.unwrap();
            held.push(c);
        }
        match Client::connect(noisy).await {
            Ok(fourth) => fourth.list_topics().await.err(),
            Err(e) => Some(e),
        }
    });
    let e = refused.expect("a fourth connection is refused");
    assert!(e.to_string().contains("limit of 3 connections"), "{e}");
    assert!(e.code() == Some(ErrorCode::TooManyConnections) || e.is_connection_error(), "{e}");
}
