//! Single-node broker tests with real processes: bulk round trip, kill -9 under load,
//! torn tails and corruption on disk.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{client, payload, run, scratch_dir, Broker};
use quorra::client::{ClientError, Consumer, ConsumerConfig, Producer, ProducerConfig, StartFrom};
use quorra::protocol::messages::Acks;
use quorra::protocol::ErrorCode;

const PARTITIONS: u32 = 8;

/// Consumes `topic` from the beginning until `expected` records arrived (or a stall), and
/// hands each record to `check`.
async fn consume_all(bootstrap: &str, topic: &str, expected: u64, mut check: impl FnMut(u32, u64, &[u8])) -> u64 {
    let c = client(bootstrap).await;
    let config = ConsumerConfig { start: StartFrom::Earliest, max_bytes: 4 << 20, ..Default::default() };
    let mut consumer = Consumer::new(c, topic, None, config).await.expect("consumer");
    let mut seen = 0u64;
    let mut idle_polls = 0;
    while seen < expected && idle_polls < 20 {
        let records = consumer.poll().await.expect("poll");
        idle_polls = if records.is_empty() { idle_polls + 1 } else { 0 };
        for r in records {
            check(r.partition, r.offset, &r.value);
            seen += 1;
        }
    }
    seen
}

#[test]
fn bulk_round_trip_of_mixed_sizes_in_order_per_partition() {
    let dir = scratch_dir("bulk");
    let broker = Broker::start(dir.path(), &[]);
    let bootstrap = broker.bootstrap();
    const SMALL: u64 = 200_000;
    const BIG: u64 = 100;
    let total = SMALL + BIG;
    // Message i goes to partition i % 8 with the i/8-th sequence number there; the last 100 are 1 MiB.
    let message = |i: u64| -> (u32, Vec<u8>) {
        let p = (i % u64::from(PARTITIONS)) as u32;
        let seq = i / u64::from(PARTITIONS);
        if i >= SMALL {
            let mut v = payload(p, seq, 64);
            v.resize(1 << 20, (i % 251) as u8);
            (p, v)
        } else {
            (p, payload(p, seq, 4096))
        }
    };
    let b = bootstrap.clone();
    let acked = run(move || async move {
        let c = client(&b).await;
        c.create_topic("bulk", PARTITIONS, 1).await.unwrap();
        let config = ProducerConfig { acks: Acks::Leader, batch_bytes: 512 * 1024, ..Default::default() };
        let producer = Producer::new(c, config).await.unwrap();
        let mut deliveries = Vec::new();
        for i in 0..total {
            let (p, v) = message(i);
            deliveries.push(producer.send_to("bulk", p, None, &v).await.unwrap());
        }
        producer.flush().await;
        let mut acked = 0u64;
        for d in deliveries {
            d.wait().await.expect("acknowledged");
            acked += 1;
        }
        acked
    });
    assert_eq!(acked, total);

    let seen = run(move || async move {
        let mut next_seq: HashMap<u32, u64> = HashMap::new();
        consume_all(&bootstrap, "bulk", total, |p, offset, value| {
            let seq = next_seq.entry(p).or_default();
            assert_eq!(offset, *seq, "partition {p}: offsets dense and in order");
            let i = *seq * u64::from(PARTITIONS) + u64::from(p);
            let (ep, expected) = message(i);
            assert_eq!(ep, p);
            assert!(value == expected.as_slice(), "partition {p} offset {offset}: content differs");
            *seq += 1;
        })
        .await
    });
    assert_eq!(seen, total, "every message read back");
}

#[test]
fn kill_9_under_load_loses_no_acknowledged_message() {
    let dir = scratch_dir("kill9");
    let mut broker = Broker::start(dir.path(), &["--flush", "always"]);
    let bootstrap = broker.bootstrap();
    let b = bootstrap.clone();
    run(move || async move { client(&b).await.create_topic("k9", 4, 1).await.unwrap() });
    let pid = broker.pid().unwrap();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    // Four producers (one per partition) send until the broker dies; each remembers what was acked.
    let b = bootstrap.clone();
    let acked: Vec<(u32, u64, u64)> = run(move || async move {
        let c = client(&b).await;
        let producer = Producer::new(
            c,
            ProducerConfig { acks: Acks::Leader, linger: Duration::ZERO, max_in_flight: 8, ..Default::default() },
        )
        .await
        .unwrap();
        let mut acked = Vec::new();
        let mut seq = [0u64; 4];
        'outer: loop {
            let mut round = Vec::new();
            for p in 0..4u32 {
                for _ in 0..16 {
                    let s = seq[p as usize];
                    seq[p as usize] += 1;
                    match producer.send_to("k9", p, None, &payload(p, s, 512)).await {
                        Ok(d) => round.push((p, s, d)),
                        Err(_) => break 'outer,
                    }
                }
            }
            let mut failed = false;
            for (p, s, d) in round {
                match d.wait().await {
                    Ok(md) => acked.push((p, s, md.offset)),
                    Err(_) => failed = true,
                }
            }
            if failed {
                break;
            }
        }
        acked
    });
    killer.join().unwrap();
    assert!(acked.len() > 100, "the load ran before the kill ({} acked)", acked.len());
    broker.restart();
    let b = broker.bootstrap();
    let expected: HashMap<(u32, u64), u64> = acked.iter().map(|&(p, s, o)| ((p, o), s)).collect();
    let max_acked = acked.len() as u64;
    let (found, per_partition) = run(move || async move {
        let mut found = 0u64;
        let mut next: HashMap<u32, u64> = HashMap::new();
        consume_all(&b, "k9", u64::MAX, |p, offset, value| {
            let n = next.entry(p).or_default();
            assert_eq!(offset, *n, "offsets stay dense after the crash");
            *n += 1;
            if let Some(&s) = expected.get(&(p, offset)) {
                assert!(value == payload(p, s, 512).as_slice(), "acked message at {p}/{offset} changed");
                found += 1;
            }
        })
        .await;
        (found, next)
    });
    assert_eq!(found, max_acked, "every acknowledged message is readable where it was acknowledged");
    // Producing continues after the restart, at the next offsets.
    let b = broker.bootstrap();
    run(move || async move {
        let c = client(&b).await;
        for p in 0..4u32 {
            let producer =
                Producer::new(c.clone(), ProducerConfig { acks: Acks::Leader, ..Default::default() }).await.unwrap();
            let d = producer.send_to("k9", p, None, b"after restart").await.unwrap();
            producer.flush().await;
            let md = d.wait().await.unwrap();
            assert_eq!(md.offset, per_partition.get(&p).copied().unwrap_or(0));
        }
    });
}

/// Produces `n` single-record batches (each acknowledged before the next is sent).
async fn produce_one_by_one(bootstrap: &str, topic: &str, partition: u32, n: u64) {
    let c = client(bootstrap).await;
    let producer =
        Producer::new(c, ProducerConfig { acks: Acks::Leader, linger: Duration::ZERO, ..Default::default() })
            .await
            .unwrap();
    for i in 0..n {
        let d = producer.send_to(topic, partition, None, &payload(partition, i, 300)).await.unwrap();
        producer.flush().await;
        d.wait().await.unwrap();
    }
}

/// Byte positions of the batches in a segment file.
fn batch_positions(segment: &std::path::Path) -> Vec<(usize, usize)> {
    let bytes = std::fs::read(segment).unwrap();
    let mut out = Vec::new();
    let mut pos = 0;
    while let Ok(h) = quorra::protocol::batch::check_batch(&bytes[pos..]) {
        out.push((pos, h.batch_len as usize));
        pos += h.batch_len as usize;
    }
    out
}

fn describe_state(bootstrap: &str, topic: &str) -> Vec<(u64, String)> {
    let (b, t) = (bootstrap.to_string(), topic.to_string());
    run(move || async move {
        let d = client(&b).await.describe_topic(&t).await.unwrap();
        d.partitions.into_iter().map(|p| (p.log_end_offset, p.state)).collect()
    })
}

fn read_partition(bootstrap: &str, topic: &str, partition: u32) -> Result<Vec<(u64, Vec<u8>)>, ClientError> {
    let (b, t) = (bootstrap.to_string(), topic.to_string());
    run(move || async move {
        let c = client(&b).await;
        let config =
            ConsumerConfig { start: StartFrom::Earliest, max_wait: Duration::from_millis(50), ..Default::default() };
        let mut consumer = Consumer::new(c, &t, Some(vec![partition]), config).await?;
        let mut out = Vec::new();
        loop {
            let records = consumer.poll().await?;
            if records.is_empty() && consumer.caught_up() {
                return Ok(out);
            }
            out.extend(records.into_iter().map(|r| (r.offset, r.value.to_vec())));
        }
    })
}

#[test]
fn torn_tails_are_truncated_and_mid_log_corruption_is_reported() {
    let dir = scratch_dir("torn");
    let mut broker = Broker::start(dir.path(), &[]);
    let b = broker.bootstrap();
    run(move || async move {
        client(&b).await.create_topic("torn", 2, 1).await.unwrap();
        produce_one_by_one(&b, "torn", 0, 50).await;
        produce_one_by_one(&b, "torn", 1, 10).await;
    });
    // Killed: a torn write is one the broker did not see through (a clean stop records the
    // recovery point, and damage below it is corruption: the last case).
    broker.kill();
    let segment = broker.data_dir.join("topics/torn/0/00000000000000000000.log");
    let check_intact = |records: &[(u64, Vec<u8>)], n: usize| {
        assert_eq!(records.len(), n);
        for (i, (offset, value)) in records.iter().enumerate() {
            assert_eq!(*offset, i as u64);
            assert_eq!(value, &payload(0, i as u64, 300));
        }
    };

    // A segment cut in the middle of its last batch: the torn batch is dropped.
    let batches = batch_positions(&segment);
    assert_eq!(batches.len(), 50);
    let (last_pos, last_len) = batches[49];
    std::fs::OpenOptions::new().write(true).open(&segment).unwrap().set_len((last_pos + last_len / 2) as u64).unwrap();
    broker.restart();
    assert_eq!(describe_state(&broker.bootstrap(), "torn")[0], (49, "ok".to_string()));
    check_intact(&read_partition(&broker.bootstrap(), "torn", 0).unwrap(), 49);
    assert!(broker.log().contains("torn tail"), "the truncation is logged");

    // Flipped bytes in the last batch, nothing valid after it: also a torn tail.
    broker.kill();
    let (pos, len) = batch_positions(&segment)[48];
    flip_byte(&segment, pos + len - 5);
    broker.restart();
    assert_eq!(describe_state(&broker.bootstrap(), "torn")[0], (48, "ok".to_string()));
    check_intact(&read_partition(&broker.bootstrap(), "torn", 0).unwrap(), 48);

    // Flipped bytes in the middle: reported, never served, and other partitions keep serving.
    assert!(broker.stop());
    let (pos, len) = batch_positions(&segment)[10];
    flip_byte(&segment, pos + len / 2);
    broker.restart();
    let states = describe_state(&broker.bootstrap(), "torn");
    assert!(states[0].1.starts_with("corrupt"), "describe shows the corruption: {:?}", states[0]);
    assert_eq!(states[1], (10, "ok".to_string()));
    let err = read_partition(&broker.bootstrap(), "torn", 0).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PartitionCorrupt), "{err}");
    assert_eq!(read_partition(&broker.bootstrap(), "torn", 1).unwrap().len(), 10);
    let b = broker.bootstrap();
    run(move || async move { produce_one_by_one(&b, "torn", 1, 1).await });
    assert!(broker.log().contains("corruption"), "the corruption is logged");

    // Defect 11i: after a clean stop, the recovery point covers every batch: damage to the
    // last one is corruption, not a torn tail to cut.
    assert!(broker.stop(), "clean shutdown");
    let segment = broker.data_dir.join("topics/torn/1/00000000000000000000.log");
    let (pos, len) = *batch_positions(&segment).last().unwrap();
    flip_byte(&segment, pos + len - 5);
    broker.restart();
    let states = describe_state(&broker.bootstrap(), "torn");
    assert!(states[1].1.starts_with("corrupt"), "damage below the recovery point: {:?}", states[1]);
    assert!(broker.log().contains("below the recovery point"), "the reason is logged");
}

fn flip_byte(path: &std::path::Path, at: usize) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8];
    f.seek(SeekFrom::Start(at as u64)).unwrap();
    f.read_exact(&mut b).unwrap();
    b[0] ^= 0x5a;
    f.seek(SeekFrom::Start(at as u64)).unwrap();
    f.write_all(&b).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn offsets_by_time_and_group_offsets_survive_a_restart() {
    use quorra::protocol::batch::BatchBuilder;
    use quorra::protocol::messages::{OFFSET_SPEC_EARLIEST, OFFSET_SPEC_LATEST, OFFSET_SPEC_TIMESTAMP};
    let dir = scratch_dir("offsets");
    let mut broker = Broker::start(dir.path(), &[]);
    let b = broker.bootstrap();
    run(move || async move {
        let c = client(&b).await;
        c.create_topic("ts", 1, 1).await.unwrap();
        for ts in [1000i64, 2000, 3000] {
            let mut batch = BatchBuilder::with_capacity(64);
            batch.push(None, b"a", ts);
            batch.push(None, b"b", ts + 1);
            c.produce_batches("ts", 0, Acks::Leader, vec![batch.finish(0, 0, 0)]).await.unwrap();
        }
        assert_eq!(c.list_offsets("ts", 0, OFFSET_SPEC_EARLIEST, 0).await.unwrap(), 0);
        assert_eq!(c.list_offsets("ts", 0, OFFSET_SPEC_LATEST, 0).await.unwrap(), 6);
        assert_eq!(c.list_offsets("ts", 0, OFFSET_SPEC_TIMESTAMP, 1500).await.unwrap(), 2);
        assert_eq!(c.list_offsets("ts", 0, OFFSET_SPEC_TIMESTAMP, 2001).await.unwrap(), 3);
        assert_eq!(c.list_offsets("ts", 0, OFFSET_SPEC_TIMESTAMP, 99_999).await.unwrap(), 6);
        assert_eq!(c.fetch_offset("g", "ts", 0).await.unwrap(), None);
        c.commit_offset("g", "ts", 0, 3).await.unwrap();
        c.commit_offset("g", "ts", 0, 4).await.unwrap();
        assert_eq!(c.fetch_offset("g", "ts", 0).await.unwrap(), Some(4));
        let err = c.commit_offset("g", "nope", 0, 1).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::UnknownTopic));
    });
    broker.restart();
    let b = broker.bootstrap();
    run(move || async move {
        let c = client(&b).await;
        assert_eq!(c.fetch_offset("g", "ts", 0).await.unwrap(), Some(4), "group offsets are replayed from their log");
        assert_eq!(
            c.list_offsets("ts", 0, OFFSET_SPEC_TIMESTAMP, 1500).await.unwrap(),
            2,
            "and the time index after a restart"
        );
    });
}
