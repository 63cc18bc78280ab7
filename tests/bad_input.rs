//! Malformed and hostile input from raw sockets: each gets an error reply or a closed
//! connection, the broker never panics, and a well-behaved client next to it is unaffected.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{client, config_file, run, scratch_dir, Broker};
use quorra::client::{Producer, ProducerConfig};
use quorra::protocol::frame::{FrameHeader, OutFrame, FLAG_RESPONSE};
use quorra::protocol::messages::{
    Acks, ErrorResponse, FetchRequest, ListTopicsRequest, MetadataRequest, ProduceRequest,
};
use quorra::protocol::{decode, encode, ApiKind, BodyBuf, ErrorCode};

enum Reply {
    Error(ErrorCode),
    Ok(u16),
    Closed,
}

fn frame(kind: u16, flags: u8, corr: u64, archive: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut a = BodyBuf::new();
    a.extend_from_slice(archive);
    let f = OutFrame::new(kind, flags, corr, a, vec![Bytes::copy_from_slice(payload)]);
    let mut out = Vec::new();
    f.write_to(&mut out);
    out
}

fn read_reply(s: &mut TcpStream) -> Reply {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = [0u8; 32];
    if s.read_exact(&mut head).is_err() {
        return Reply::Closed;
    }
    let h = FrameHeader::decode(&head, 64 << 20).expect("the broker sends valid headers");
    let mut body = vec![0u8; h.body_len()];
    s.read_exact(&mut body).expect("body");
    if h.is_error() {
        let mut a = BodyBuf::new();
        a.extend_from_slice(&body[..h.archive_len as usize]);
        let e = decode::<ErrorResponse>(&a).expect("error body");
        Reply::Error(ErrorCode::from_u16(e.code))
    } else {
        Reply::Ok(h.kind)
    }
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

fn expect_error_or_close(reply: Reply, want: Option<ErrorCode>, what: &str) {
    match (reply, want) {
        (Reply::Closed, _) => {}
        (Reply::Error(code), Some(w)) => assert_eq!(code, w, "{what}"),
        (Reply::Error(_), None) => {}
        (Reply::Ok(k), _) => panic!("{what}: accepted as a valid request of kind {k}"),
    }
}

fn assert_closed(s: &mut TcpStream, what: &str) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 1];
    match s.read(&mut buf) {
        Ok(0) | Err(_) => {}
        Ok(_) => panic!("{what}: connection still open"),
    }
}

#[test]
fn hostile_input_gets_errors_and_does_not_disturb_other_clients() {
    let dir = scratch_dir("bad-input");
    let cfg = config_file(dir.path(), "frame_timeout_ms = 1500\n");
    let mut broker = Broker::start(dir.path(), &["--config", cfg.to_str().unwrap()]);
    let addr = broker.bootstrap();

    // A well-behaved client producing and reading back all along.
    let stop = Arc::new(AtomicBool::new(false));
    let (b, stop2) = (addr.clone(), stop.clone());
    let healthy = std::thread::spawn(move || {
        run(move || async move {
            let c = client(&b).await;
            c.create_topic("ok", 1, 1).await.unwrap();
            let producer = Producer::new(
                c.clone(),
                ProducerConfig { acks: Acks::Leader, linger: Duration::ZERO, ..Default::default() },
            )
            .await
            .unwrap();
            let (mut rounds, mut errors, mut offset) = (0u64, Vec::new(), 0u64);
            while !stop2.load(Ordering::SeqCst) {
                let d = producer.send_to("ok", 0, None, format!("m{rounds}").as_bytes()).await.unwrap();
                producer.flush().await;
                match d.wait().await {
                    Ok(md) => assert_eq!(md.offset, offset),
                    Err(e) => errors.push(e.to_string()),
                }
                match c.fetch("ok", 0, offset, 1 << 16, Duration::from_millis(100)).await {
                    Ok(r) if !r.batches.is_empty() => offset += 1,
                    Ok(_) => errors.push(format!("offset {offset} not readable")),
                    Err(e) => errors.push(e.to_string()),
                }
                rounds += 1;
            }
            (rounds, errors)
        })
    });
    std::thread::sleep(Duration::from_millis(300));

    // 1. Garbage bytes: framing is lost, so an error reply and a close.
    let mut s = connect(&addr);
    s.write_all(&[0x42; 64]).unwrap();
    expect_error_or_close(read_reply(&mut s), Some(ErrorCode::CorruptFrame), "garbage");
    assert_closed(&mut s, "garbage");

    // 2. A truncated frame, then end of stream.
    let valid = frame(ApiKind::ListTopics as u16, 0, 7, &encode(&ListTopicsRequest {}), &[]);
    let mut s = connect(&addr);
    s.write_all(&valid[..valid.len() - 3]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    expect_error_or_close(read_reply(&mut s), None, "truncated frame");

    // 3. An oversized length, with a header CRC that is valid.
    let mut big = frame(ApiKind::Produce as u16, 0, 8, &[], &[]);
    big[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
    let crc = crc32c::crc32c(&big[..28]);
    big[28..32].copy_from_slice(&crc.to_le_bytes());
    let mut s = connect(&addr);
    s.write_all(&big).unwrap();
    expect_error_or_close(read_reply(&mut s), Some(ErrorCode::FrameTooLarge), "oversized length");
    assert_closed(&mut s, "oversized length");

    // 4. A bad body CRC: an error for that request, and the connection still serves.
    let metadata = frame(ApiKind::Metadata as u16, 0, 7, &encode(&MetadataRequest { topics: vec![] }), &[]);
    assert!(metadata.len() > 32, "the request has a body to corrupt");
    let mut bad_crc = metadata.clone();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0xff;
    let mut s = connect(&addr);
    s.write_all(&bad_crc).unwrap();
    expect_error_or_close(read_reply(&mut s), Some(ErrorCode::CorruptFrame), "bad body CRC");
    s.write_all(&metadata).unwrap();
    assert!(
        matches!(read_reply(&mut s), Reply::Ok(k) if k == ApiKind::Metadata as u16),
        "connection usable after a bad CRC"
    );

    // 5. A valid CRC over a body that is not a valid archive.
    let garbage_archive: Vec<u8> = (0..48u8).map(|i| i.wrapping_mul(37)).collect();
    s.write_all(&frame(ApiKind::Produce as u16, 0, 9, &garbage_archive, b"xx")).unwrap();
    expect_error_or_close(read_reply(&mut s), Some(ErrorCode::InvalidRequest), "invalid archive");
    s.write_all(&frame(ApiKind::Fetch as u16, 0, 10, &[], &[])).unwrap();
    expect_error_or_close(read_reply(&mut s), Some(ErrorCode::InvalidRequest), "empty archive");

    // 6. An unknown request kind, and a response sent as a request.
    s.write_all(&frame(999, 0, 11, &encode(&ListTopicsRequest {}), &[])).unwrap();
    expect_error_or_close(read_reply(&mut s), Some(ErrorCode::UnknownKind), "unknown kind");
    s.write_all(&frame(ApiKind::ListTopics as u16, FLAG_RESPONSE, 12, &encode(&ListTopicsRequest {}), &[])).unwrap();
    expect_error_or_close(read_reply(&mut s), Some(ErrorCode::InvalidRequest), "response as request");

    // 7. A valid frame carrying a corrupt record batch, and one for a missing topic.
    let mut batch = quorra::protocol::batch::BatchBuilder::with_capacity(64);
    batch.push(None, b"hello", 1);
    let mut batch = batch.finish(0, 0, 0).to_vec();
    let n = batch.len();
    batch[n - 2] ^= 1;
    let req = ProduceRequest { topic: "ok".into(), partition: 0, acks: 1, timeout_ms: 1000 };
    s.write_all(&frame(ApiKind::Produce as u16, 0, 13, &encode(&req), &batch)).unwrap();
    expect_error_or_close(read_reply(&mut s), Some(ErrorCode::CorruptBatch), "corrupt batch");
    let req = FetchRequest { topic: "nope".into(), partition: 0, offset: 0, max_bytes: 100, max_wait_ms: 0 };
    s.write_all(&frame(ApiKind::Fetch as u16, 0, 14, &encode(&req), &[])).unwrap();
    expect_error_or_close(read_reply(&mut s), Some(ErrorCode::UnknownTopic), "unknown topic");

    // 8. A client that sends one byte per second is disconnected once the frame times out.
    let mut s = connect(&addr);
    let started = Instant::now();
    let mut closed = false;
    for byte in valid.iter().take(10) {
        if s.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
        s.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        let r = s.read(&mut buf);
        s.set_nonblocking(false).unwrap();
        if r.is_ok() {
            closed = true;
            break;
        }
    }
    assert!(closed, "a stalled frame closes the connection");
    assert!(started.elapsed() < Duration::from_secs(8));

    stop.store(true, Ordering::SeqCst);
    let (rounds, errors) = healthy.join().unwrap();
    assert!(rounds > 10, "the healthy client made progress ({rounds} rounds)");
    assert!(errors.is_empty(), "the healthy client saw errors: {errors:?}");
    assert!(broker.is_running(), "the broker survived");
    assert!(!broker.log().contains("panicked"), "no panic in the broker log");
}

/// The broker's resident memory, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// Part 3 of issue 11: a frame header alone, declaring the largest frame, must not make the
/// broker allocate (and zero) that length before the bytes arrive. 300 connections that each
/// send such a header and stall would have cost 300 x 16 MiB; the buffer now grows with what
/// arrives.
#[test]
fn headers_declaring_large_frames_cost_no_memory_until_their_bytes_arrive() {
    let dir = scratch_dir("header-alone");
    let mut broker = Broker::start(dir.path(), &[]);
    let addr = broker.bootstrap();
    let pid = broker.pid().unwrap();
    let before = rss_bytes(pid);
    let declared = quorra::limits::DEFAULT_MAX_FRAME_BYTES as u32 - 32;
    let header = FrameHeader {
        flags: 0,
        kind: ApiKind::Produce as u16,
        correlation_id: 1,
        archive_len: 0,
        payload_len: declared,
        body_crc: 0,
    }
    .encode();
    let mut stalled = Vec::new();
    for _ in 0..300 {
        let mut s = connect(&addr);
        s.write_all(&header).unwrap();
        s.write_all(&[7u8; 100]).unwrap();
        stalled.push(s);
    }
    std::thread::sleep(Duration::from_secs(2));
    let grown = rss_bytes(pid).saturating_sub(before);
    assert!(grown < 100 << 20, "300 stalled headers cost {} MiB of resident memory", grown >> 20);
    // And the broker still serves.
    let b = addr.clone();
    run(move || async move {
        let c = client(&b).await;
        c.create_topic("after", 1, 1).await.unwrap();
    });
    drop(stalled);
    assert!(broker.is_running());
}

/// Part 3 of issue 11: connection limits and the idle timeout. One address may hold
/// `max_connections_per_ip` connections; the next is refused with `too_many_connections`
/// and closed. Connections that send nothing for `idle_timeout_ms` are closed, which frees
/// their slots.
#[test]
fn connections_beyond_the_limit_are_refused_and_idle_ones_closed() {
    let dir = scratch_dir("conn-limits");
    let cfg = config_file(dir.path(), "max_connections_per_ip = 40\nidle_timeout_ms = 1500\n");
    let broker = Broker::start(dir.path(), &["--config", cfg.to_str().unwrap()]);
    let addr = broker.bootstrap();
    let held: Vec<TcpStream> = (0..40).map(|_| connect(&addr)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut refused = connect(&addr);
    expect_error_or_close(read_reply(&mut refused), Some(ErrorCode::TooManyConnections), "the 41st connection");
    assert!(matches!(read_reply(&mut connect(&addr)), Reply::Error(ErrorCode::TooManyConnections)));
    // Idle: closed by the broker within the timeout (and a little slack).
    let started = Instant::now();
    for mut s in held {
        assert_closed(&mut s, "an idle connection");
    }
    assert!(started.elapsed() < Duration::from_secs(10), "idle connections closed late: {:?}", started.elapsed());
    // Their slots are free again: a client works.
    let b = addr.clone();
    run(move || async move {
        let c = client(&b).await;
        c.create_topic("after", 1, 1).await.unwrap();
    });
}

/// Part 3 of issue 11: a client that pipelines large fetches and never reads its answers.
/// Each answer counts against its connection's `max_answer_bytes_per_connection` until it is
/// written (it used to be released once queued), so the broker stops reading that client's
/// requests instead of holding hundreds of 8 MiB answers; other clients are served.
#[test]
fn a_client_that_never_reads_its_fetch_answers_holds_a_bounded_amount_of_memory() {
    let dir = scratch_dir("never-reads");
    let broker = Broker::start(dir.path(), &[]);
    let addr = broker.bootstrap();
    let pid = broker.pid().unwrap();
    // 48 MiB: most of it beyond the partition's cache, so each answer is read from disk.
    let b = addr.clone();
    run(move || async move {
        let c = client(&b).await;
        c.create_topic("big", 1, 1).await.unwrap();
        let producer =
            Producer::new(c.clone(), ProducerConfig { acks: Acks::Leader, ..Default::default() }).await.unwrap();
        let value = vec![9u8; 64 * 1024];
        let mut last = None;
        for _ in 0..768 {
            last = Some(producer.send_to("big", 0, None, &value).await.unwrap());
        }
        producer.flush().await;
        last.unwrap().wait().await.unwrap();
    });
    let before = rss_bytes(pid);
    let mut s = connect(&addr);
    let fetch = FetchRequest { topic: "big".into(), partition: 0, offset: 0, max_bytes: 8 << 20, max_wait_ms: 0 };
    let request = frame(ApiKind::Fetch as u16, 0, 1, &encode(&fetch), &[]);
    // Writes until the broker stops reading (the socket buffers fill), at most 400 requests.
    s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut sent = 0;
    while sent < 400 && s.write_all(&request).is_ok() {
        sent += 1;
    }
    std::thread::sleep(Duration::from_secs(2));
    let grown = rss_bytes(pid).saturating_sub(before);
    assert!(grown < 256 << 20, "{sent} unread fetch answers cost {} MiB of resident memory", grown >> 20);
    // Another client is served meanwhile.
    let b = addr.clone();
    run(move || async move {
        let c = client(&b).await;
        let r = c.fetch("big", 0, 0, 1 << 16, Duration::ZERO).await.unwrap();
        assert!(!r.batches.is_empty());
    });
    drop(s);
}

/// Part 3 of issue 11: a topic create is refused, and nothing created, when it would take
/// the broker past `max_partitions`, or when the segments it preallocates do not fit on
/// the data directory's file system (a create of 1,024 partitions preallocated 64 GiB).
#[test]
fn a_create_beyond_the_partition_limit_or_the_free_disk_is_refused() {
    let dir = scratch_dir("partition-limits");
    let cfg = config_file(dir.path(), "max_partitions = 10\n");
    let broker = Broker::start(dir.path(), &["--config", cfg.to_str().unwrap()]);
    let b = broker.bootstrap();
    run(move || async move {
        let c = client(&b).await;
        c.create_topic("eight", 8, 1).await.unwrap();
        let e = c.create_topic("three", 3, 1).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::InvalidRequest), "{e}");
        assert!(e.to_string().contains("max_partitions"), "{e}");
        c.create_topic("two", 2, 1).await.expect("within the limit");
        let topics = c.list_topics().await.unwrap();
        assert!(!topics.topics.iter().any(|t| t.name == "three"), "the refused topic was not created");
    });
    drop(broker);
    // A new partition preallocates its first step (storage.preallocate_bytes, 1 MiB), not a
    // whole 64 MiB segment: 64 partitions take about 64 MiB of disk, not 4 GiB.
    let dir = scratch_dir("prealloc-steps");
    let broker = Broker::start(dir.path(), &[]);
    let b = broker.bootstrap();
    run(move || async move {
        client(&b).await.create_topic("wide", 64, 1).await.unwrap();
    });
    let (segments, allocated) = segments_under(&dir.path().join("data/topics/wide"));
    assert_eq!(segments, 64, "each partition has its segment file");
    assert!(allocated < 128 << 20, "64 new partitions allocated {} MiB on disk", allocated >> 20);
    drop(broker);
    // A first step of 1 TiB: one partition's preallocation does not fit.
    let dir = scratch_dir("prealloc-limit");
    let cfg = config_file(dir.path(), "[storage]\nsegment_bytes = 1099511627776\npreallocate_bytes = 1099511627776\n");
    let broker = Broker::start(dir.path(), &["--config", cfg.to_str().unwrap()]);
    let b = broker.bootstrap();
    run(move || async move {
        let c = client(&b).await;
        let e = c.create_topic("huge", 1, 1).await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::DiskFull), "{e}");
        assert!(c.list_topics().await.unwrap().topics.is_empty());
    });
}

/// The segment files below `dir`, and the disk blocks allocated to all its files (what
/// preallocation costs).
fn segments_under(dir: &std::path::Path) -> (usize, u64) {
    use std::os::unix::fs::MetadataExt;
    let files = common::files_below(dir);
    let segments = files.iter().filter(|(path, _)| path.extension().is_some_and(|x| x == "log")).count();
    (segments, files.iter().map(|(_, meta)| meta.blocks() * 512).sum())
}

/// Part 3 of issue 11: consumer-group names cost bounded resources. Asking for the offsets
/// of a group that never committed creates nothing (each name used to open a log: a
/// descriptor and 1 MiB preallocated); a shard keeps at most 256 group logs open, closing
/// the least recently used, and a closed group's offsets are still there when asked again.
#[test]
fn many_consumer_group_names_hold_bounded_descriptors_and_create_nothing_when_only_read() {
    let dir = scratch_dir("many-groups");
    let broker = Broker::start(dir.path(), &["--shards", "1"]);
    let b = broker.bootstrap();
    let pid = broker.pid().unwrap();
    let fds = || std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    let groups_dir = broker.data_dir.join("groups");
    let before = fds();
    let b2 = b.clone();
    run(move || async move {
        let c = client(&b2).await;
        c.create_topic("t", 1, 1).await.unwrap();
        for i in 0..1000 {
            assert_eq!(c.fetch_offset(&format!("reader-{i}"), "t", 0).await.unwrap(), None);
        }
    });
    let created = std::fs::read_dir(&groups_dir).map_or(0, |d| d.count());
    assert_eq!(created, 0, "reading unknown groups created {created} group directories");
    run(move || async move {
        let c = client(&b).await;
        for i in 0..600u64 {
            c.commit_offset(&format!("g-{i}"), "t", 0, i).await.unwrap();
        }
        for i in [0u64, 1, 300, 599] {
            assert_eq!(c.fetch_offset(&format!("g-{i}"), "t", 0).await.unwrap(), Some(i), "group g-{i}");
        }
    });
    let grown = fds().saturating_sub(before);
    assert!(grown < 400, "600 groups hold {grown} more descriptors");
}

/// Part 3 of issue 11: the consumer groups on disk are bounded. A commit that would create a
/// group beyond `max_consumer_groups` (counted over all shards, and across a restart) is
/// refused with `too_many_groups` and creates nothing; groups that committed keep working.
#[test]
fn a_commit_that_would_create_a_group_beyond_the_limit_is_refused() {
    let dir = scratch_dir("group-limit");
    let cfg = config_file(dir.path(), "max_consumer_groups = 5\n");
    let args = ["--config", cfg.to_str().unwrap(), "--shards", "2"];
    let mut broker = Broker::start(dir.path(), &args);
    let groups_dir = broker.data_dir.join("groups");
    let refused = |b: String| {
        run(move || async move {
            let c = client(&b).await;
            let e = c.commit_offset("one-too-many", "t", 0, 1).await.unwrap_err();
            assert_eq!(e.code(), Some(ErrorCode::TooManyGroups), "{e}");
            assert!(e.to_string().contains("max_consumer_groups"), "{e}");
            assert_eq!(c.fetch_offset("one-too-many", "t", 0).await.unwrap(), None);
            c.commit_offset("g-3", "t", 0, 33).await.expect("a group that committed keeps committing");
            assert_eq!(c.fetch_offset("g-3", "t", 0).await.unwrap(), Some(33));
        })
    };
    let b = broker.bootstrap();
    run(move || async move {
        let c = client(&b).await;
        c.create_topic("t", 1, 1).await.unwrap();
        for i in 0..5u64 {
            c.commit_offset(&format!("g-{i}"), "t", 0, i).await.unwrap();
        }
    });
    refused(broker.bootstrap());
    let on_disk = std::fs::read_dir(&groups_dir).unwrap().count();
    assert_eq!(on_disk, 5, "group directories");
    broker.restart();
    refused(broker.bootstrap());
    assert_eq!(std::fs::read_dir(&groups_dir).unwrap().count(), 5);
}

/// Part 3 of issue 11: a consumer group's log does not grow with its commits. After 4,000
/// commits of about 1 KiB (4 MB of records) the group's directory holds about a megabyte:
/// the store writes a checkpoint of the current offsets and deletes the segments before it.
/// After a restart every partition's last commit is there.
#[test]
fn a_consumer_groups_log_is_compacted_as_it_commits() {
    let dir = scratch_dir("group-compaction");
    let mut broker = Broker::start(dir.path(), &["--shards", "1"]);
    let group_dir = broker.data_dir.join("groups").join("busy");
    let b = broker.bootstrap();
    run(move || async move {
        let c = client(&b).await;
        c.create_topic("t", 4, 1).await.unwrap();
        for i in 0..4_000u64 {
            let metadata = format!("{i:01000}");
            c.commit_offset_with_metadata("busy", "t", (i % 4) as u32, i, &metadata).await.unwrap();
        }
    });
    let bytes: u64 = std::fs::read_dir(&group_dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    assert!(bytes < 2 << 20, "4 MB of commits left {bytes} bytes in the group's directory");
    broker.restart();
    let b = broker.bootstrap();
    run(move || async move {
        let c = client(&b).await;
        for p in 0..4u32 {
            let last = 4_000 - 4 + u64::from(p);
            assert_eq!(c.fetch_offset("busy", "t", p).await.unwrap(), Some(last), "partition {p}");
        }
    });
}

/// The well-behaved client of the stress test: produce one record (acks = leader), read it
/// back, for `for_how_long`; the round trips' latencies, sorted.
fn well_behaved_round_trips(addr: &str, offset: &mut u64, for_how_long: Duration) -> Vec<Duration> {
    let b = addr.to_string();
    let start_at = *offset;
    let (latencies, next) = run(move || async move {
        let c = client(&b).await;
        let producer = Producer::new(
            c.clone(),
            ProducerConfig { acks: Acks::Leader, linger: Duration::ZERO, ..Default::default() },
        )
        .await
        .unwrap();
        let (mut latencies, mut offset) = (Vec::new(), start_at);
        let until = Instant::now() + for_how_long;
        while Instant::now() < until {
            let t = Instant::now();
            let d = producer.send_to("work", 0, None, b"steady").await.unwrap();
            producer.flush().await;
            let md = d.wait().await.expect("the well-behaved producer is served");
            let r = c.fetch("work", 0, md.offset, 1 << 16, Duration::from_secs(5)).await.unwrap();
            assert!(!r.batches.is_empty(), "its record is readable");
            latencies.push(t.elapsed());
            offset = md.offset + 1;
        }
        latencies.sort();
        (latencies, offset)
    });
    *offset = next;
    latencies
}

fn p99(sorted: &[Duration]) -> Duration {
    sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)]
}

/// Issue 11 part 3, all at once: 2,000 connections that each send a header declaring
/// 16 MiB and stall, a client that pipelines large fetches and never reads, 10,000
/// consumer-group names, and a create of more partitions than allowed. The broker's resident
/// memory stays under 1 GiB (documented in README.md, "Limits"), a concurrent well-behaved
/// producer and consumer keep working, and nothing crashes. The well-behaved client's p99 is
/// printed against its quiet p99 (the figure for the "within 3x"; a timed assertion
/// on a shared 2-core machine would be noise).
#[test]
fn one_client_cannot_take_the_broker_down() {
    let dir = scratch_dir("stress");
    let cfg = config_file(dir.path(), "max_connections_per_ip = 4000\nmax_connections = 5000\nmax_partitions = 64\n");
    let mut broker = Broker::start(dir.path(), &["--config", cfg.to_str().unwrap()]);
    let addr = broker.bootstrap();
    let pid = broker.pid().unwrap();
    let b = addr.clone();
    run(move || async move {
        let c = client(&b).await;
        c.create_topic("work", 1, 1).await.unwrap();
        c.create_topic("big", 1, 1).await.unwrap();
        let producer =
            Producer::new(c.clone(), ProducerConfig { acks: Acks::Leader, ..Default::default() }).await.unwrap();
        let value = vec![9u8; 64 * 1024];
        let mut last = None;
        for _ in 0..512 {
            last = Some(producer.send_to("big", 0, None, &value).await.unwrap());
        }
        producer.flush().await;
        last.unwrap().wait().await.unwrap();
    });
    let mut offset = 0;
    well_behaved_round_trips(&addr, &mut offset, Duration::from_secs(1)); // warm-up
    let quiet = well_behaved_round_trips(&addr, &mut offset, Duration::from_secs(3));
    let baseline_rss = rss_bytes(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                peak.fetch_max(rss_bytes(pid), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    // 2,000 stalled headers declaring 16 MiB each.
    let header = FrameHeader {
        flags: 0,
        kind: ApiKind::Produce as u16,
        correlation_id: 1,
        archive_len: 0,
        payload_len: quorra::limits::DEFAULT_MAX_FRAME_BYTES as u32 - 32,
        body_crc: 0,
    }
    .encode();
    let stalled: Vec<TcpStream> = (0..2000)
        .map(|_| {
            let mut s = connect(&addr);
            s.write_all(&header).unwrap();
            s
        })
        .collect();
    // A reader of large fetches that never reads its answers.
    let mut greedy = connect(&addr);
    let fetch = FetchRequest { topic: "big".into(), partition: 0, offset: 0, max_bytes: 8 << 20, max_wait_ms: 0 };
    let request = frame(ApiKind::Fetch as u16, 0, 1, &encode(&fetch), &[]);
    greedy.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    for _ in 0..400 {
        if greedy.write_all(&request).is_err() {
            break;
        }
    }
    // 10,000 group names, and a create beyond the partition limit, from another thread.
    let b = addr.clone();
    let names = std::thread::spawn(move || {
        run(move || async move {
            let c = client(&b).await;
            for i in 0..10_000 {
                c.fetch_offset(&format!("stranger-{i}"), "work", 0).await.unwrap();
                if i % 10 == 0 {
                    c.commit_offset(&format!("stranger-{i}"), "work", 0, 1).await.unwrap();
                }
            }
            let e = c.create_topic("too-many", 100, 1).await.unwrap_err();
            assert_eq!(e.code(), Some(ErrorCode::InvalidRequest), "{e}");
        })
    });
    let attacked = well_behaved_round_trips(&addr, &mut offset, Duration::from_secs(5));
    names.join().expect("the group names and the create were answered");
    stop.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::SeqCst);
    eprintln!(
        "stress: rss {} MiB before, peak {} MiB under attack; well-behaved p99 quiet {:?} ({} round trips), \
         attacked {:?} ({} round trips), ratio {:.2}",
        baseline_rss >> 20,
        peak >> 20,
        p99(&quiet),
        quiet.len(),
        p99(&attacked),
        attacked.len(),
        p99(&attacked).as_secs_f64() / p99(&quiet).as_secs_f64()
    );
    assert!(peak < 1 << 30, "resident memory reached {} MiB", peak >> 20);
    assert!(attacked.len() > 10, "the well-behaved client barely got through: {} round trips", attacked.len());
    assert!(broker.is_running(), "the broker survived");
    drop((stalled, greedy));
}
