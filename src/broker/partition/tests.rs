//! A partition (log, writer task, producer table) on the simulated disk, inside a glommio
//! executor: the failure paths between the log and the producer table.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;

use super::{AckLevel, Partition};
use crate::config::FlushPolicy;
use crate::protocol::batch::BatchBuilder;
use crate::storage::mem_disk::{MemDisk, MemFaults};
use crate::storage::{LogConfig, LogHealth};

fn run<F: std::future::Future<Output = ()> + 'static>(f: impl FnOnce() -> F + Send + 'static) {
    crate::rt::block_on(f()).expect("executor");
}

fn idempotent_batch(producer_id: u64, sequence: u32, value: &[u8]) -> Vec<u8> {
    let mut b = BatchBuilder::with_capacity(64);
    b.push(None, value, 1);
    b.finish(producer_id, 0, sequence).to_vec()
}

async fn open(disk: &MemDisk) -> Rc<Partition<MemDisk>> {
    Partition::open(disk.clone(), "t".into(), 0, PathBuf::from("/data/t/0"), LogConfig::default(), FlushPolicy::Always)
        .await
        .expect("open")
}

async fn wait_healthy(p: &Partition<MemDisk>) {
    for _ in 0..200 {
        if p.health() == LogHealth::Healthy {
            return;
        }
        crate::rt::sleep(Duration::from_millis(20)).await;
    }
    panic!("the partition did not reopen: {:?}", p.health());
}

/// The value stored at `offset`.
async fn value_at(p: &Partition<MemDisk>, offset: u64) -> Vec<u8> {
    let chunks = p.fetch(offset, 1 << 20, Duration::ZERO).await.expect("fetch");
    for chunk in &chunks {
        for item in crate::protocol::batch::BatchIter::new(chunk) {
            let (header, bytes) = item.expect("batch");
            for rec in crate::protocol::batch::RecordIter::new(bytes, &header) {
                let rec = rec.expect("record");
                if rec.offset == offset {
                    return rec.value.to_vec();
                }
            }
        }
    }
    panic!("no record at offset {offset}");
}

/// Defect 11c: a failed write drops the pending batches from the log; the producer table
/// must forget them too. Otherwise a retry of such a batch, after another producer's batch
/// took its offset, is answered with that offset: acknowledged, and pointing at someone
/// else's record.
#[test]
fn a_retry_of_a_batch_that_a_failed_write_dropped_is_stored_again() {
    run(|| async {
        let disk = MemDisk::new();
        let p = open(&disk).await;
        disk.set_faults(MemFaults { write_errno: Some(libc::EIO), ..Default::default() });
        let a = p.append(idempotent_batch(5, 0, b"from producer 5"), Bytes::from).expect("appended");
        assert_eq!(a.first_offset, 0);
        let failed = p.wait_committed(a.last_offset, AckLevel::Local, Duration::from_secs(5)).await;
        assert!(failed.is_err(), "the write failed, so the produce must fail: {failed:?}");
        disk.set_faults(MemFaults::default());
        wait_healthy(&p).await;
        let b = p.append(idempotent_batch(6, 0, b"from producer 6"), Bytes::from).expect("appended");
        assert_eq!(b.first_offset, 0, "the dropped batch's offset is taken by the next one");
        p.wait_committed(b.last_offset, AckLevel::Local, Duration::from_secs(5)).await.expect("stored");
        // Producer 5 retries its batch.
        let retry = p.append(idempotent_batch(5, 0, b"from producer 5"), Bytes::from).expect("appended");
        p.wait_committed(retry.last_offset, AckLevel::Local, Duration::from_secs(5)).await.expect("stored");
        assert_eq!(retry.first_offset, 1, "the retry is stored, not answered with offset 0");
        assert_eq!(value_at(&p, retry.first_offset).await, b"from producer 5");
    });
}

struct Nowhere;
impl super::Outbound for Nowhere {
    fn send(&self, _: &Rc<str>, _: u64, _: u32, _: crate::replication::NodeId, _: crate::replication::PeerMessage) {}
    fn control(&self, _: &Rc<str>, _: u64, _: u32, _: crate::replication::ControlMessage) {}
}

/// Makes the one-replica partition lead `epoch` and waits until it takes writes.
async fn lead(p: &Partition<MemDisk>, epoch: u32) {
    use crate::replication::ControlMessage;
    p.on_control(ControlMessage::Fence { epoch }).await;
    p.on_control(ControlMessage::BecomeLeader { epoch, replicas: vec![1], unanimous: false }).await;
    for _ in 0..100 {
        if matches!(p.leadership(), (true, _, e) if e == epoch) {
            return;
        }
        crate::rt::sleep(Duration::from_millis(10)).await;
    }
    panic!("not leading epoch {epoch}: {:?}", p.leadership());
}

/// Appends a batch, retrying while the leader starts its epoch; the append's offsets.
async fn append_as_leader(p: &Partition<MemDisk>, value: &[u8]) -> Result<super::Appended, super::AppendError> {
    for _ in 0..100 {
        match p.append(idempotent_batch(0, 0, value), Bytes::from) {
            Err(super::AppendError::Storage(crate::storage::StorageError::LeaderStarting)) => {
                crate::rt::sleep(Duration::from_millis(10)).await
            }
            other => return other,
        }
    }
    Err(crate::storage::StorageError::LeaderStarting.into())
}

/// Defect 11d: a leader whose write failed rewinds its log (the pending batches are
/// dropped), and its replica must follow: before the fix the replica kept the longer log
/// end, every later append answered "leader starting" while its heartbeats still said it
/// led, and nobody replaced it. It must step down (so that it is elected again, or another
/// replica is) or recover.
#[test]
fn a_leader_whose_write_failed_steps_down_and_can_lead_again() {
    run(|| async {
        let disk = MemDisk::new();
        let p = open(&disk).await;
        p.enable_replication(1, 1, false, crate::replication::replica::ReplicaConfig::default(), Rc::new(Nowhere))
            .await
            .unwrap();
        lead(&p, 1).await;
        let first = append_as_leader(&p, b"before").await.expect("appended");
        p.wait_committed(first.last_offset, AckLevel::Quorum, Duration::from_secs(5)).await.expect("committed");
        disk.set_faults(MemFaults { write_errno: Some(libc::ENOSPC), ..Default::default() });
        let lost = append_as_leader(&p, b"lost").await.expect("appended in memory");
        let failed = p.wait_committed(lost.last_offset, AckLevel::Quorum, Duration::from_secs(5)).await;
        assert!(failed.is_err(), "{failed:?}");
        disk.set_faults(MemFaults::default());
        wait_healthy(&p).await;
        crate::rt::sleep(Duration::from_millis(50)).await;
        // Not wedged: either it takes writes, or it says it does not lead (and is elected anew).
        match append_as_leader(&p, b"after").await {
            Ok(_) => {}
            Err(e) => {
                assert!(!p.leadership().0, "refuses writes ({e}) while saying it leads: {:?}", p.leadership());
                lead(&p, 2).await;
            }
        }
        let after = append_as_leader(&p, b"after").await.expect("takes writes again");
        p.wait_committed(after.last_offset, AckLevel::Quorum, Duration::from_secs(5)).await.expect("committed");
        assert_eq!(value_at(&p, first.first_offset).await, b"before");
        assert_eq!(value_at(&p, after.first_offset).await, b"after");
    });
}

/// Defect 11d, second case: a replica appointed while its log cannot take writes (the disk
/// full at election time) cannot write its epoch-start batch. Before the fix it led anyway
/// with a log end its log did not have, and answered "leader starting" forever; it must step
/// down, and lead normally once elected again with a working disk.
#[test]
fn a_leader_that_cannot_write_its_epoch_start_steps_down() {
    run(|| async {
        let disk = MemDisk::new();
        let p = open(&disk).await;
        p.enable_replication(1, 1, false, crate::replication::replica::ReplicaConfig::default(), Rc::new(Nowhere))
            .await
            .unwrap();
        lead(&p, 1).await;
        let first = append_as_leader(&p, b"before").await.expect("appended");
        p.wait_committed(first.last_offset, AckLevel::Quorum, Duration::from_secs(5)).await.expect("committed");
        // Flushes fail: the log stops, and its reopen (which flushes what it recovers) keeps
        // failing, while small files (the replica's epoch) can still be written.
        disk.set_faults(MemFaults { sync_errno: Some(libc::EIO), ..Default::default() });
        let lost = append_as_leader(&p, b"lost").await.expect("appended in memory");
        assert!(p.wait_committed(lost.last_offset, AckLevel::Quorum, Duration::from_secs(5)).await.is_err());
        use crate::replication::ControlMessage;
        p.on_control(ControlMessage::Fence { epoch: 2 }).await;
        p.on_control(ControlMessage::BecomeLeader { epoch: 2, replicas: vec![1], unanimous: false }).await;
        assert!(!p.leadership().0, "it cannot start its epoch, so it must not lead: {:?}", p.leadership());
        disk.set_faults(MemFaults::default());
        wait_healthy(&p).await;
        lead(&p, 3).await;
        let after = append_as_leader(&p, b"after").await.expect("takes writes again");
        p.wait_committed(after.last_offset, AckLevel::Quorum, Duration::from_secs(5)).await.expect("committed");
        assert_eq!(value_at(&p, after.first_offset).await, b"after");
    });
}

/// Defect 11g: with `flush = interval`, a periodic sync that started on the log before a
/// truncation replaced it must not complete on the new one (there it would claim durable an
/// offset above the new log's written end: the `durable <= written` assertion, a panicked
/// shard).
#[test]
fn a_sync_in_flight_across_a_truncation_does_not_complete_on_the_new_log() {
    run(|| async {
        let disk = MemDisk::new();
        let p = Partition::open(
            disk.clone(),
            "t".into(),
            0,
            PathBuf::from("/data/t/0"),
            LogConfig { prezero: false, ..LogConfig::default() },
            FlushPolicy::IntervalMs(1_000_000),
        )
        .await
        .expect("open");
        let mut last = 0;
        for i in 0..3u8 {
            last = p.append(idempotent_batch(0, 0, &[i]), Bytes::from).expect("appended").last_offset;
        }
        p.wait_committed(last, AckLevel::Local, Duration::from_secs(5)).await.expect("written");
        // Flushes are slow from now on: the truncation's own flush waits, and so does a
        // periodic sync that starts meanwhile.
        let gate = Rc::new(std::cell::Cell::new(true));
        disk.set_faults(MemFaults { hold_syncs: Some(gate.clone()), ..Default::default() });
        let truncation = {
            let p = p.clone();
            crate::rt::spawn_joinable(async move { p.truncate(1).await })
        };
        crate::rt::sleep(Duration::from_millis(20)).await;
        let sync = {
            let p = p.clone();
            crate::rt::spawn_joinable(async move { p.sync_now().await })
        };
        crate::rt::sleep(Duration::from_millis(20)).await;
        gate.set(false);
        truncation.await.expect("ran").expect("truncated");
        sync.await.expect("the shard did not panic");
        assert_eq!(p.log_end_offset(), 1);
        // (Only a cluster's follower is ever told to cut its log; this test cut the log of
        // a replica alone behind its back, so it restarts from the log, as after a failed
        // write.)
        p.reset_to_log_end();
        let next = p.append(idempotent_batch(0, 0, b"after"), Bytes::from).expect("appended");
        assert_eq!(next.first_offset, 1);
    });
}

/// Defect 11i: a partition closed cleanly records its recovery point; damage found at the
/// end of its active segment at the next start is below it, so it is corruption (reported,
/// the partition refuses service; a cluster replica repairs it from its leader), not a torn
/// tail silently cut with the batches that were acknowledged long ago.
#[test]
fn damage_to_durable_batches_at_the_end_of_the_log_is_corruption_not_a_torn_tail() {
    run(|| async {
        let disk = MemDisk::new();
        let p = open(&disk).await;
        let mut last = 0;
        for i in 0..5u8 {
            last = p.append(idempotent_batch(0, 0, &[i; 100]), Bytes::from).expect("appended").last_offset;
            p.wait_committed(last, AckLevel::Local, Duration::from_secs(5)).await.expect("durable");
        }
        p.close().await;
        drop(p);
        let segment = PathBuf::from("/data/t/0/00000000000000000000.log");
        // The last batch's last value byte (batches are written whole, 100 value bytes last).
        let end = disk.with_file(&segment, |b| b.iter().rposition(|&x| x == 4).expect("the last value")).unwrap();
        disk.with_file(&segment, |b| b[end] ^= 0xff);
        let p = open(&disk).await;
        assert!(matches!(p.health(), LogHealth::Corrupt(_)), "cut as a torn tail: {:?}", p.health());
        assert_eq!(p.log_end_offset(), last, "nothing is cut");
    });
}

/// The producer table is rebuilt when a partition opens (its snapshot, then the batches after
/// it): a producer's retry after the broker restarted is answered with the offsets it was
/// stored at, and a gap in its sequence is still refused. (Found by the mutation check that
/// opens every partition with an empty table: no test caught it.)
#[test]
fn a_reopened_partition_answers_a_retry_with_its_original_offsets() {
    run(|| async {
        let disk = MemDisk::new();
        let p = open(&disk).await;
        for (sequence, value) in [(0, b"first"), (1, b"again")] {
            let a = p.append(idempotent_batch(5, sequence, value), Bytes::from).expect("appended");
            p.wait_committed(a.last_offset, AckLevel::Local, Duration::from_secs(5)).await.expect("stored");
        }
        p.close().await;
        let mut disk = disk;
        for crashed in [false, true] {
            if crashed {
                // A power loss after the clean reopen: the table comes from what is durable.
                disk = disk.crash(crate::storage::mem_disk::CrashMode::LoseUnsynced);
            }
            let p = open(&disk).await;
            let retry = p.append(idempotent_batch(5, 1, b"again"), Bytes::from).expect("answered");
            assert_eq!((retry.first_offset, retry.last_offset), (1, 1), "crashed: {crashed}: a duplicate");
            assert_eq!(p.high_watermark(), 2, "crashed: {crashed}: nothing appended twice");
            let gap = p.append(idempotent_batch(5, 3, b"gap"), Bytes::from);
            assert!(gap.is_err(), "crashed: {crashed}: sequence 3 after 1 is a gap: {gap:?}");
            p.close().await;
        }
    });
}

/// A single node's partition is a replica set of one, through the same driver as a
/// cluster's: its replica leads from the start (as node 0, in the disk's fencing epoch), its
/// high watermark is its durable end, and what claims to come from a leader or a controller
/// changes nothing (it has neither).
#[test]
fn a_single_node_partition_is_a_replica_set_of_one_that_no_peer_can_move() {
    use crate::replication::{ControlMessage, PeerMessage};
    run(|| async {
        let disk = MemDisk::new();
        let p = open(&disk).await;
        assert_eq!(p.leadership(), (true, Some(0), 0), "the only replica leads");
        assert!(!p.is_replicated(), "not a cluster's replica");
        let first = p.append(idempotent_batch(0, 0, b"one"), Bytes::from).expect("appended");
        let hw = p.wait_committed(first.last_offset, AckLevel::Quorum, Duration::from_secs(5)).await.expect("acked");
        assert_eq!(hw, first.last_offset + 1, "the high watermark is the durable end");

        let mut forged = BatchBuilder::with_capacity(64);
        forged.push(None, b"forged", 1);
        let mut forged = forged.finish(0, 0, 0).to_vec();
        crate::protocol::batch::stamp_batch(&mut forged, 0, 99);
        let append = PeerMessage::Append {
            epoch: 99,
            leader: 7,
            prev_offset: 0,
            prev_epoch: None,
            end_offset: 1,
            epochs: vec![(99, 0)],
            leader_hw: 1,
            log_start: 0,
        };
        assert_eq!(p.on_leader_append(append, &[Bytes::from(forged)]).await, None, "no answer to a forged append");
        p.on_control(ControlMessage::Fence { epoch: 99 }).await;
        p.on_control(ControlMessage::BecomeFollower { epoch: 100, leader: 7, replicas: vec![0, 7] }).await;
        p.on_follower_reply(PeerMessage::StaleEpoch { epoch: 101, from: 7 }).await;
        assert_eq!(p.leadership(), (true, Some(0), 0), "still the leader of its own epoch");
        assert_eq!((p.log_end_offset(), p.high_watermark()), (1, 1), "the log and high watermark did not move");
        assert_eq!(value_at(&p, 0).await, b"one");

        let next = p.append(idempotent_batch(0, 0, b"two"), Bytes::from).expect("appended");
        assert_eq!(next.first_offset, 1);
        p.wait_committed(next.last_offset, AckLevel::All, Duration::from_secs(5)).await.expect("acked at all");
        assert_eq!(value_at(&p, 1).await, b"two");
    });
}

/// A single node whose sync fails restarts its replica from the log with only what is
/// durable counted: what the failed sync was to make durable is neither served nor counted
/// (a crash before the reopen would lose it), though the write that put it in the file
/// succeeded.
#[test]
fn a_single_node_whose_sync_failed_counts_only_what_is_durable() {
    run(|| async {
        let disk = MemDisk::new();
        let p = open(&disk).await;
        let first = p.append(idempotent_batch(0, 0, b"durable"), Bytes::from).expect("appended");
        p.wait_committed(first.last_offset, AckLevel::Quorum, Duration::from_secs(5)).await.expect("acked");
        disk.set_faults(MemFaults { sync_errno: Some(libc::EIO), ..Default::default() });
        let second = p.append(idempotent_batch(0, 0, b"never synced"), Bytes::from).expect("appended");
        let failed = p.wait_committed(second.last_offset, AckLevel::Quorum, Duration::from_secs(5)).await;
        assert!(failed.is_err(), "the sync failed, so the produce must fail: {failed:?}");
        // (The reopen keeps failing while syncs do.)
        crate::rt::sleep(Duration::from_millis(50)).await;
        assert_eq!(p.high_watermark(), 1, "only the synced record counts");
        assert!(p.fetch(1, 1 << 20, Duration::ZERO).await.expect("fetch").is_empty(), "nothing unsynced is served");
        disk.set_faults(MemFaults::default());
        wait_healthy(&p).await;
        assert_eq!(value_at(&p, 0).await, b"durable");
    });
}
