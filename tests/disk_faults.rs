//! Disk full and failed flushes, injected into a real broker through `QUORRA_FAULT_FILE`:
//! produce gets a clear error, nothing acknowledged is lost, a failed flush is never
//! reported as a success, reads keep working, and writes resume when the fault clears.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::{client, config_file, payload, run, scratch_dir, Broker};
use quorra::client::{Client, ClientError, Consumer, ConsumerConfig, Producer, ProducerConfig, StartFrom};
use quorra::protocol::messages::Acks;
use quorra::protocol::ErrorCode;

/// Sends one record and waits for its acknowledgement.
async fn produce_one(c: &Rc<Client>, seq: u64, size: usize) -> Result<u64, ClientError> {
    let producer =
        Producer::new(c.clone(), ProducerConfig { acks: Acks::Leader, linger: Duration::ZERO, ..Default::default() })
            .await?;
    let d = producer.send_to("f", 0, None, &payload(0, seq, size)).await?;
    producer.flush().await;
    d.wait().await.map(|md| md.offset)
}

fn set_faults(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    // The broker's watcher looks every 50 ms.
    std::thread::sleep(Duration::from_millis(250));
}

#[test]
fn disk_full_and_failed_flush_lose_nothing_and_recover() {
    let dir = scratch_dir("faults");
    let faults = dir.path().join("faults");
    std::fs::write(&faults, "").unwrap();
    let cfg = config_file(dir.path(), "[storage]\nsegment_bytes = 262144\n");
    let mut broker = Broker::start_with_env(
        dir.path(),
        &["--config", cfg.to_str().unwrap()],
        &[("QUORRA_FAULT_FILE", faults.to_str().unwrap())],
    );
    let b = broker.bootstrap();
    let f = faults.clone();
    // seq -> (acknowledged offset, payload size bound)
    let acked: HashMap<u64, (u64, usize)> = run(move || async move {
        let c = client(&b).await;
        c.create_topic("f", 1, 1).await.unwrap();
        let mut acked = HashMap::new();
        let mut seq = 0u64;
        let mut produce = |c: Rc<Client>, size: usize| {
            let s = seq;
            seq += 1;
            async move { (s, produce_one(&c, s, size).await.map(|o| (o, size))) }
        };
        for _ in 0..20 {
            let (s, r) = produce(c.clone(), 1000).await;
            acked.insert(s, r.expect("healthy disk"));
        }

        for (fault, expected_code) in [
            ("write=enospc", ErrorCode::DiskFull),
            ("sync=eio", ErrorCode::StorageError),
            ("write=eio", ErrorCode::StorageError),
        ] {
            set_faults(&f, fault);
            for _ in 0..3 {
                let (s, r) = produce(c.clone(), 1000).await;
                match r {
                    Ok(o) => panic!("{fault}: message {s} acknowledged at {o:?} although the disk failed"),
                    Err(e) => assert_eq!(e.code(), Some(expected_code), "{fault}: {e}"),
                }
            }
            // Reads keep working while writes fail. (A batch whose flush failed may be on
            // the disk all the same and is then found again when the log reopens: it was
            // not acknowledged, so it can be there or not; acknowledged ones must be.)
            assert!(count_readable(&c).await >= acked.len() as u64, "{fault}: reads during the fault");
            set_faults(&f, "");
            let (s, r) = retry_until_ok(|| produce(c.clone(), 1000)).await;
            acked.insert(s, r);
        }

        // Preallocating the next segment fails: produce until a roll is needed.
        set_faults(&f, "fallocate=enospc");
        let mut saw_disk_full = false;
        for _ in 0..40 {
            let (s, r) = produce(c.clone(), 20_000).await;
            match r {
                Ok(o) => {
                    acked.insert(s, o);
                }
                Err(e) => {
                    assert_eq!(e.code(), Some(ErrorCode::DiskFull), "{e}");
                    saw_disk_full = true;
                    break;
                }
            }
        }
        assert!(saw_disk_full, "a roll without space fails the produce");
        set_faults(&f, "");
        let (s, r) = retry_until_ok(|| produce(c.clone(), 20_000)).await;
        acked.insert(s, r);
        acked
    });

    // After a crash every acknowledged message is where it was acknowledged.
    broker.restart();
    let b = broker.bootstrap();
    let found = run(move || async move {
        let c = client(&b).await;
        let mut consumer =
            Consumer::new(c, "f", None, ConsumerConfig { start: StartFrom::Earliest, ..Default::default() })
                .await
                .unwrap();
        let mut by_offset = HashMap::new();
        loop {
            let records = consumer.poll().await.unwrap();
            if records.is_empty() && consumer.caught_up() {
                break;
            }
            for r in records {
                by_offset.insert(r.offset, r.value.to_vec());
            }
        }
        by_offset
    });
    for (seq, (offset, size)) in &acked {
        let value = found.get(offset).unwrap_or_else(|| panic!("acknowledged message {seq} at offset {offset} lost"));
        assert!(value == &payload(0, *seq, *size), "offset {offset} holds other data");
    }
    let max = found.keys().max().copied().unwrap_or(0);
    assert_eq!(found.len() as u64, max + 1, "offsets are dense");
}

async fn count_readable(c: &Rc<Client>) -> u64 {
    let mut offset = 0;
    let mut n = 0;
    loop {
        let r = c.fetch("f", 0, offset, 1 << 20, Duration::ZERO).await.expect("fetch during the fault");
        let mut progressed = false;
        for item in quorra::protocol::batch::BatchIter::new(&r.batches) {
            let (h, _) = item.expect("valid batch");
            n += u64::from(h.record_count);
            offset = h.next_offset();
            progressed = true;
        }
        if !progressed {
            return n;
        }
    }
}

async fn retry_until_ok<F, Fut>(mut attempt: F) -> (u64, (u64, usize))
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (u64, Result<(u64, usize), ClientError>)>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, r) = attempt().await;
        match r {
            Ok(o) => return (s, o),
            Err(e) if Instant::now() < deadline => {
                log::debug!("not yet: {e}");
                glommio::timer::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("writes did not resume after the fault cleared: {e}"),
        }
    }
}

#[test]
fn a_slow_disk_delays_acknowledgements_and_loses_nothing() {
    let dir = scratch_dir("slow-disk");
    let faults = dir.path().join("faults");
    std::fs::write(&faults, "").unwrap();
    let broker = Broker::start_with_env(dir.path(), &[], &[("QUORRA_FAULT_FILE", faults.to_str().unwrap())]);
    let b = broker.bootstrap();
    let f = faults.clone();
    run(move || async move {
        let c = client(&b).await;
        c.create_topic("f", 1, 1).await.unwrap();
        produce_one(&c, 0, 100).await.expect("healthy disk");
        set_faults(&f, "slow=300");
        let asked = Instant::now();
        let offset = produce_one(&c, 1, 100).await.expect("a slow disk still takes writes");
        // The write (and its flush, when separate) waited for the injected latency.
        assert!(asked.elapsed() >= Duration::from_millis(300), "acknowledged in {:?}", asked.elapsed());
        set_faults(&f, "");
        assert_eq!(produce_one(&c, 2, 100).await.expect("fast again"), offset + 1);
        assert_eq!(count_readable(&c).await, 3);
    });
}
