//! Tests of the replicated partition driver (the simulator in `src/sim/` drives it under faults).

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;

use super::super::{Outbound, Partition};
use crate::config::FlushPolicy;
use crate::protocol::batch::BatchBuilder;
use crate::replication::replica::ReplicaConfig;
use crate::replication::{ControlMessage, NodeId, PeerMessage};
use crate::storage::glommio_disk::{prime_device_probe, GlommioDisk};
use crate::storage::{LogConfig, StorageError};

struct Nowhere;
impl Outbound for Nowhere {
    fn send(&self, _: &Rc<str>, _: u64, _: u32, _: NodeId, _: PeerMessage) {}
    fn control(&self, _: &Rc<str>, _: u64, _: u32, _: ControlMessage) {}
}

fn batch_of(records: usize) -> Vec<u8> {
    let mut b = BatchBuilder::with_capacity(64);
    for _ in 0..records {
        b.push(None, b"value", 1);
    }
    b.finish(0, 0, 0).to_vec()
}

/// The replica counts records and may ask a link for a range that begins or ends inside a
/// batch. Before, the link sent only batches starting exactly at the range's start and
/// ending within it: a range starting inside a batch got nothing, so a follower far
/// behind got one message per resend timeout (the simulator's seed 50 ended with an
/// uncommitted tail this way).
#[test]
fn a_range_that_starts_or_ends_inside_a_batch_is_sent_as_the_batches_covering_it() {
    crate::rt::block_on(async {
        let disk = crate::storage::mem_disk::MemDisk::new();
        let dir = std::path::PathBuf::from("/t/0");
        let p = Partition::open(disk, "t".into(), 0, dir, LogConfig::default(), FlushPolicy::Always).await.unwrap();
        p.enable_replication(1, 1, false, ReplicaConfig::default(), Rc::new(Nowhere)).await.unwrap();
        p.on_control(ControlMessage::BecomeLeader { epoch: 1, replicas: vec![1], unanimous: false }).await;
        // The epoch-start batch at 0, then batches 1..4 and 4..7.
        assert_eq!(p.append(batch_of(3), Bytes::from).unwrap().first_offset, 1);
        let last = p.append(batch_of(3), Bytes::from).unwrap().last_offset;
        p.wait_committed(last, crate::broker::partition::AckLevel::Local, Duration::from_secs(5)).await.unwrap();
        let range = |msg: &PeerMessage| match msg {
            PeerMessage::Append { prev_offset, end_offset, .. } => (*prev_offset, *end_offset),
            other => panic!("not an append: {other:?}"),
        };
        let (msg, batches) = p.read_for_follower(1, 5, 6, 1 << 20).await.expect("the batch holding offset 5");
        assert_eq!((range(&msg), batches.len()), ((4, 7), 1));
        let (msg, batches) = p.read_for_follower(1, 2, 5, 1 << 20).await.expect("the batches holding 2..5");
        assert_eq!((range(&msg), batches.len()), ((1, 7), 2));
        let (msg, _) = p.read_for_follower(1, 0, 1, 1 << 20).await.expect("the epoch-start batch");
        assert_eq!(range(&msg), (0, 1));
        assert!(p.read_for_follower(2, 0, 1, 1 << 20).await.is_none(), "not the leader of epoch 2");
    })
    .unwrap();
}

/// A leader cut off with a produce waiting for its quorum, deposed meanwhile, comes back
/// as a follower: it cuts its tail (the produce's batch with it) and takes the new
/// leader's batches at the same offsets, with a high watermark above them. Before, the
/// waiting produce was then answered as committed, at an offset that held another
/// record (the simulator's seed 5519, a partitioned leader; production waits 30 s).
#[test]
fn a_produce_waiting_on_a_deposed_leader_is_not_answered_with_the_new_leaders_offsets() {
    crate::rt::block_on(async {
        let disk = crate::storage::mem_disk::MemDisk::new();
        let dir = std::path::PathBuf::from("/t/0");
        let p = Partition::open(disk, "t".into(), 0, dir, LogConfig::default(), FlushPolicy::Always).await.unwrap();
        p.enable_replication(1, 1, false, ReplicaConfig::default(), Rc::new(Nowhere)).await.unwrap();
        p.on_control(ControlMessage::BecomeLeader { epoch: 1, replicas: vec![1, 2], unanimous: false }).await;
        let appended = p.append(batch_of(1), Bytes::from).unwrap();
        assert_eq!(appended.first_offset, 1, "after the epoch-start batch");
        let waiting = {
            let p = p.clone();
            crate::rt::spawn_joinable(async move {
                p.wait_committed(
                    appended.last_offset,
                    crate::broker::partition::AckLevel::Quorum,
                    Duration::from_secs(5),
                )
                .await
            })
        };
        crate::rt::sleep(Duration::from_millis(20)).await;
        // Node 2 led epoch 2 meanwhile (the fence never reached this node): its epoch-start
        // batch at 1, a record at 2, committed.
        let mut start = BatchBuilder::control(2, 1).to_vec();
        crate::protocol::batch::stamp_batch(&mut start, 1, 2);
        let mut record = batch_of(1);
        crate::protocol::batch::stamp_batch(&mut record, 2, 2);
        let append = PeerMessage::Append {
            epoch: 2,
            leader: 2,
            prev_offset: 1,
            prev_epoch: Some(1),
            end_offset: 3,
            epochs: vec![(1, 0), (2, 1)],
            leader_hw: 3,
            log_start: 0,
        };
        let answer = p.on_leader_append(append, &[Bytes::from(start), Bytes::from(record)]).await;
        assert!(matches!(answer, Some(PeerMessage::Ack { .. })), "{answer:?}");
        assert_eq!(p.high_watermark(), 3, "the new leader's batches are committed here");
        let answered = waiting.await.expect("the waiter ran");
        assert!(answered.is_err(), "the cut batch was answered as committed: {answered:?}");
    })
    .unwrap();
}

/// A follower adopting a new leader's history persists it (with its epoch) before it has
/// cut its divergent tail from the files. Crashing in between left `replica.json` saying
/// that the old tail's offsets belong to the new epoch, so the restarted replica matched
/// the new leader's log on offsets alone and kept the divergent batches below the high
/// watermark (the simulator's seed 6330). The history is now checked against the epochs
/// stamped in the log's batches when a replica opens.
#[test]
fn a_persisted_history_ahead_of_the_log_is_corrected_from_the_batches() {
    crate::rt::block_on(async {
        let disk = crate::storage::mem_disk::MemDisk::new();
        let dir = std::path::PathBuf::from("/t/0");
        let open =
            || Partition::open(disk.clone(), "t".into(), 0, dir.clone(), LogConfig::default(), FlushPolicy::Always);
        let p = open().await.unwrap();
        p.enable_replication(1, 1, false, ReplicaConfig::default(), Rc::new(Nowhere)).await.unwrap();
        p.on_control(ControlMessage::BecomeLeader { epoch: 1, replicas: vec![1], unanimous: false }).await;
        let last = p.append(batch_of(2), Bytes::from).unwrap().last_offset;
        p.wait_committed(last, crate::broker::partition::AckLevel::Local, Duration::from_secs(5)).await.unwrap();
        p.close().await;
        drop(p);
        // What a crash between persisting the new leader's history and cutting the files leaves.
        let state = br#"{"topic_id":1,"epoch":2,"history":[[1,0],[2,1]],"voter":true}"#.to_vec();
        crate::storage::Disk::write_file_atomic(&disk, &dir.join("replica.json"), state).await.unwrap();
        let p = open().await.unwrap();
        p.enable_replication(1, 1, false, ReplicaConfig::default(), Rc::new(Nowhere)).await.unwrap();
        let history = p.replication.borrow().replica.history().clone();
        assert_eq!(history.epoch_at(1), Some(1), "offset 1 holds an epoch-1 batch: {history:?}");
        assert_eq!(p.replication.borrow().replica.epoch(), 2, "the epoch stays adopted");
    })
    .unwrap();
}

fn producer_batch() -> Vec<u8> {
    let mut b = BatchBuilder::with_capacity(64);
    b.push(None, b"value", 1);
    b.finish(0, 0, 0).to_vec()
}

/// A replica made leader persists its epoch (an await) before its epoch-start batch
/// enters the log; a producer's batch arriving meanwhile must not take that offset.
#[test]
fn a_produce_during_the_epoch_start_neither_takes_its_offset_nor_is_lost() {
    let dir = tempfile::Builder::new().prefix("quorra-epoch-start").tempdir_in("/tmp").unwrap();
    let root = dir.path().to_path_buf();
    crate::rt::block_on(async move {
        prime_device_probe(&root).await.unwrap();
        let disk = GlommioDisk { dsync: true };
        let p = Partition::open(disk, "t".into(), 0, root.join("t-0"), LogConfig::default(), FlushPolicy::Always)
            .await
            .unwrap();
        p.enable_replication(1, 1, false, ReplicaConfig::default(), Rc::new(Nowhere)).await.unwrap();
        let becoming = {
            let p = p.clone();
            crate::rt::spawn_joinable(async move {
                p.on_control(ControlMessage::BecomeLeader { epoch: 1, replicas: vec![1], unanimous: false }).await
            })
        };
        // Let the appointment run up to its first wait (writing replica.json).
        crate::rt::yield_now().await;
        crate::rt::sleep(Duration::from_micros(1)).await;
        let during = p.append(producer_batch(), Bytes::from);
        becoming.await;
        let after = p.append(producer_batch(), Bytes::from).expect("the leader takes writes once started");
        if let Err(e) = &during {
            assert!(matches!(e, crate::broker::partition::AppendError::Storage(StorageError::LeaderStarting)), "{e}");
        }
        // What was accepted sits after the epoch-start batch; log and replica agree.
        assert_eq!(after.first_offset, if during.is_ok() { 2 } else { 1 });
        let replica_end = p.replication.borrow().replica.log_end();
        assert_eq!(replica_end, p.log.borrow().next_offset(), "the replica and the log disagree");
    })
    .unwrap();
}

mod follower_reads_from_disk {
    //! A follower far behind is sent batches that are no longer in the log's memory cache:
    //! the link reads them from the segment files. The other tests read from the cache.
    use std::rc::Rc;
    use std::time::Duration;

    use bytes::Bytes;

    use super::Nowhere;
    use crate::broker::partition::AckLevel;
    use crate::broker::Partition;
    use crate::config::FlushPolicy;
    use crate::protocol::batch::BatchBuilder;
    use crate::replication::replica::ReplicaConfig;
    use crate::replication::{ControlMessage, PeerMessage};
    use crate::storage::glommio_disk::{prime_device_probe, GlommioDisk};
    use crate::storage::{Disk, LogConfig};

    /// Batches of 1..=7 records with values of 10..=1,300 bytes: sizes that straddle index
    /// intervals, direct-I/O blocks and segment ends.
    fn batch(n: usize) -> Vec<u8> {
        let mut b = BatchBuilder::with_capacity(64);
        for r in 0..1 + n % 7 {
            b.push(None, &vec![b'a' + (r as u8); 10 + (n * 197) % 1_290], 1);
        }
        b.finish(0, 0, 0).to_vec()
    }

    /// Every start offset of a log held only on disk (small segments, a cache of one small
    /// batch) gives the batch holding it, and walking from any of them reaches the log end.
    async fn every_offset_is_sent_from_disk<D: Disk>(disk: D, dir: std::path::PathBuf) {
        let config = LogConfig { segment_bytes: 64 << 10, cache_bytes: 1, ..LogConfig::default() };
        let p = Partition::open(disk, "t".into(), 0, dir, config, FlushPolicy::Always).await.unwrap();
        p.enable_replication(1, 1, false, ReplicaConfig::default(), Rc::new(Nowhere)).await.unwrap();
        p.on_control(ControlMessage::BecomeLeader { epoch: 1, replicas: vec![1], unanimous: false }).await;
        let mut last = 0;
        for n in 0..400 {
            last = p.append(batch(n), Bytes::from).unwrap().last_offset;
            if n % 16 == 0 {
                p.wait_committed(last, AckLevel::Local, Duration::from_secs(5)).await.unwrap();
            }
        }
        p.wait_committed(last, AckLevel::Local, Duration::from_secs(5)).await.unwrap();
        let end = last + 1;
        let segments = p.log.borrow().segment_count();
        assert!(segments > 4, "the log spans segments: {segments}");
        for from in 0..end {
            let mut at = from;
            let mut first = true;
            while at < end {
                let Some((msg, batches)) = p.read_for_follower(1, at, end, 16 << 10).await else {
                    panic!("nothing to send from {at} (walking from {from}) of a log ending at {end}");
                };
                let PeerMessage::Append { prev_offset, end_offset, .. } = msg else { panic!("not an append: {msg:?}") };
                assert!(prev_offset <= at && at < end_offset, "sent {prev_offset}..{end_offset} for {at}");
                assert!(!batches.is_empty());
                if !first {
                    assert_eq!(prev_offset, at, "a continuation starts where the last message ended");
                }
                first = false;
                at = end_offset;
            }
        }
    }

    #[test]
    fn a_follower_far_behind_is_sent_every_range_from_the_segment_files() {
        let dir = tempfile::Builder::new().prefix("quorra-follower-disk").tempdir_in("/tmp").unwrap();
        let root = dir.path().to_path_buf();
        crate::rt::block_on(async move {
            prime_device_probe(&root).await.unwrap();
            every_offset_is_sent_from_disk(GlommioDisk { dsync: true }, root.join("t-0")).await;
        })
        .unwrap();
    }

    #[test]
    fn a_follower_far_behind_is_sent_every_range_from_a_simulated_disk() {
        crate::rt::block_on(async {
            let disk = crate::storage::mem_disk::MemDisk::new();
            every_offset_is_sent_from_disk(disk, std::path::PathBuf::from("/t/0")).await;
        })
        .unwrap();
    }
}

/// Node 1's setup of a replica set of one, as a first open (no data lost before).
fn replica_of_one() -> super::ReplicaSetup {
    super::ReplicaSetup {
        node: 1,
        topic_id: 1,
        lost_data: false,
        config: ReplicaConfig::default(),
        outbound: Rc::new(Nowhere),
    }
}

/// Flips a bit near the end of the batch at `base_offset` in the log's first segment (its
/// records, covered by the batch CRC); whether that batch is there.
fn flip_a_bit_in_first_segment(
    disk: &crate::storage::mem_disk::MemDisk,
    dir: &std::path::Path,
    base_offset: u64,
) -> bool {
    let first = dir.join("00000000000000000000.log");
    let flipped = disk.with_file(&first, |bytes| {
        let (mut pos, mut at) = (0, None);
        for item in crate::protocol::batch::BatchIter::new(bytes) {
            let (header, batch) = item.unwrap();
            if header.base_offset == base_offset {
                at = Some(pos + batch.len() - 3);
                break;
            }
            pos += batch.len();
        }
        at.map(|i| bytes[i] ^= 0x10).is_some()
    });
    flipped == Some(true)
}

/// Found by the nemesis (hybrid, seed 20261205): a bit flip in a sealed segment, which
/// recovery does not read, surfaced when a restarted replica checked its epochs against
/// its batches; the replica then refused to open every second for good ("cannot open
/// replica t/2: partition is corrupt"), and the partition ran one replica short. It must
/// cut its log at the first damaged batch and repair the rest from the leader, as for
/// damage in the active segment, without a vote until it caught up.
#[test]
fn damage_in_a_sealed_segment_is_cut_and_repaired_not_refused_for_good() {
    crate::rt::block_on(async {
        let disk = crate::storage::mem_disk::MemDisk::new();
        let dir = std::path::PathBuf::from("/t/2");
        let config = LogConfig { segment_bytes: 64 * 1024, preallocate_bytes: 64 * 1024, ..LogConfig::default() };
        let open = || Partition::open(disk.clone(), "t".into(), 2, dir.clone(), config.clone(), FlushPolicy::Always);
        let p = open().await.unwrap();
        p.enable_replication(1, 1, false, ReplicaConfig::default(), Rc::new(Nowhere)).await.unwrap();
        p.on_control(ControlMessage::BecomeLeader { epoch: 1, replicas: vec![1], unanimous: false }).await;
        let value = vec![b'v'; 1000];
        let append = || {
            let mut b = BatchBuilder::with_capacity(1100);
            b.push(None, &value, 1);
            p.append(b.finish(0, 0, 0).to_vec(), Bytes::from).unwrap().last_offset
        };
        for _ in 0..20 {
            append();
        }
        // Epoch 2 starts in the first segment; then enough to fill several more.
        p.on_control(ControlMessage::Fence { epoch: 2 }).await;
        p.on_control(ControlMessage::BecomeLeader { epoch: 2, replicas: vec![1], unanimous: false }).await;
        let mut last = 0;
        for _ in 0..300 {
            last = append();
        }
        p.wait_committed(last, crate::broker::partition::AckLevel::Local, Duration::from_secs(5)).await.unwrap();
        let epoch2_start = p.replication.borrow().replica.history().entries()[1].1;
        p.close().await;
        drop(p);
        // Flip a bit in the epoch-2 start batch, in the (now sealed) first segment.
        assert!(
            flip_a_bit_in_first_segment(&disk, &dir, epoch2_start),
            "the batch at {epoch2_start} is in the first segment"
        );
        // What happened before: the check of the epochs met the damage and the open failed.
        let plain = open().await.unwrap();
        let refused = plain.enable_replication(1, 1, false, ReplicaConfig::default(), Rc::new(Nowhere)).await;
        assert!(matches!(refused, Err(StorageError::Corrupt(_))), "{:?}", refused.err());
        plain.close().await;
        drop(plain);
        let repaired = Partition::open_replica(
            disk.clone(),
            "t".into(),
            2,
            dir.clone(),
            config.clone(),
            FlushPolicy::Always,
            replica_of_one(),
        )
        .await
        .expect("the replica opens, cut at the damage");
        assert_eq!(repaired.log_end_offset(), epoch2_start, "cut where the damage begins");
        assert!(!repaired.is_voter_for_checks(), "no vote until it caught up from the leader");
    })
    .unwrap();
}

/// A bit flip in a record of a sealed segment, which no epoch check reads, found by a
/// fetch: the replica is marked corrupt and reopened, and the reopen must cut the log at
/// the damaged batch. (Seen in the 30-minute multi-master nemesis, seed 20261206: recovery
/// reads only the active segment, so the corruption marker's repair left the damage in
/// place, the same batch was found again and again, and the replica never healed.)
#[test]
fn damage_found_by_a_read_in_a_sealed_segment_is_cut_on_the_reopen() {
    crate::rt::block_on(async {
        let disk = crate::storage::mem_disk::MemDisk::new();
        let dir = std::path::PathBuf::from("/t/3");
        let config = LogConfig { segment_bytes: 64 * 1024, preallocate_bytes: 64 * 1024, ..LogConfig::default() };
        let open_replica = || {
            Partition::open_replica(
                disk.clone(),
                "t".into(),
                3,
                dir.clone(),
                config.clone(),
                FlushPolicy::Always,
                replica_of_one(),
            )
        };
        let p = open_replica().await.unwrap();
        p.on_control(ControlMessage::BecomeLeader { epoch: 1, replicas: vec![1], unanimous: false }).await;
        let value = vec![b'v'; 1000];
        let mut last = 0;
        for _ in 0..300 {
            let mut b = BatchBuilder::with_capacity(1100);
            b.push(None, &value, 1);
            last = p.append(b.finish(0, 0, 0).to_vec(), Bytes::from).unwrap().last_offset;
        }
        p.wait_committed(last, crate::broker::partition::AckLevel::Local, Duration::from_secs(5)).await.unwrap();
        // A record's byte in the middle of the first (sealed) segment.
        let damaged = 30;
        assert!(flip_a_bit_in_first_segment(&disk, &dir, damaged), "offset {damaged} is in the first segment");
        // A read finds it, from disk (reopened: nothing in memory).
        p.close().await;
        drop(p);
        let p = open_replica().await.expect("the damage is in no batch the open reads");
        p.on_control(ControlMessage::Fence { epoch: 2 }).await;
        p.on_control(ControlMessage::BecomeLeader { epoch: 2, replicas: vec![1], unanimous: false }).await;
        let end = p.log_end_offset();
        p.wait_committed(end - 1, crate::broker::partition::AckLevel::Quorum, Duration::from_secs(5)).await.unwrap();
        let mut offset = 0;
        let found = loop {
            match p.fetch(offset, 64 * 1024, Duration::ZERO).await {
                Ok(chunks) if chunks.is_empty() => break None,
                Ok(chunks) => {
                    for c in &chunks {
                        for item in crate::protocol::batch::BatchIter::new(c) {
                            offset = offset.max(item.unwrap().0.next_offset());
                        }
                    }
                }
                Err(e) => break Some(e),
            }
        };
        // (The fetch that met it says Corrupt; one after it, NotLeader: a damaged replica
        // does not lead.)
        assert!(found.is_some(), "the read stops at the damage");
        assert!(matches!(p.health(), crate::storage::LogHealth::Corrupt(_)), "the read found the damage: {found:?}");
        p.close().await;
        drop(p);
        // The reopen the shard makes (`repair_replica`) cuts the log at the damaged batch.
        let repaired = open_replica().await.expect("the replica opens");
        assert_eq!(repaired.log_end_offset(), damaged, "cut where the damage begins");
        assert!(matches!(repaired.health(), crate::storage::LogHealth::Healthy));
        assert!(!repaired.is_voter_for_checks(), "no vote until it caught up from the leader");
    })
    .unwrap();
}

/// Latent damage: a bit flipped in a sealed segment while the node was down is in no batch
/// the open or the epoch check reads, and nobody fetches it for now. Left so, it waits for
/// a read, by which time the other replicas may have flips of their own (the 30-minute
/// multi-master nemesis, seed 20261206, lost a partition when every replica cut its log at
/// a different place). The scrub reads the whole committed log and finds it at once; the
/// log is marked corrupt, so the shard reopens the replica, which cuts it there.
#[test]
fn the_scrub_finds_damage_no_read_has_met_and_marks_the_log_corrupt() {
    crate::rt::block_on(async {
        let disk = crate::storage::mem_disk::MemDisk::new();
        let dir = std::path::PathBuf::from("/t/4");
        let config = LogConfig { segment_bytes: 64 * 1024, preallocate_bytes: 64 * 1024, ..LogConfig::default() };
        let open_replica = || {
            Partition::open_replica(
                disk.clone(),
                "t".into(),
                4,
                dir.clone(),
                config.clone(),
                FlushPolicy::Always,
                replica_of_one(),
            )
        };
        let p = open_replica().await.unwrap();
        p.on_control(ControlMessage::BecomeLeader { epoch: 1, replicas: vec![1], unanimous: false }).await;
        let value = vec![b'v'; 1000];
        let mut last = 0;
        for _ in 0..300 {
            let mut b = BatchBuilder::with_capacity(1100);
            b.push(None, &value, 1);
            last = p.append(b.finish(0, 0, 0).to_vec(), Bytes::from).unwrap().last_offset;
        }
        p.wait_committed(last, crate::broker::partition::AckLevel::Local, Duration::from_secs(5)).await.unwrap();
        p.close().await;
        drop(p);
        let p = open_replica().await.unwrap();
        p.on_control(ControlMessage::Fence { epoch: 2 }).await;
        p.on_control(ControlMessage::BecomeLeader { epoch: 2, replicas: vec![1], unanimous: false }).await;
        let end = p.log_end_offset();
        p.wait_committed(end - 1, crate::broker::partition::AckLevel::Quorum, Duration::from_secs(5)).await.unwrap();
        let clean = p.scrub(0).await.unwrap();
        assert!(matches!(clean, super::super::Scrubbed::Clean { bytes } if bytes > 300 * 1000), "{clean:?}");
        p.close().await;
        drop(p);

        let damaged = 30;
        assert!(flip_a_bit_in_first_segment(&disk, &dir, damaged), "offset {damaged} is in the first segment");
        let p = open_replica().await.expect("the damage is in no batch the open reads");
        p.on_control(ControlMessage::Fence { epoch: 3 }).await;
        p.on_control(ControlMessage::BecomeLeader { epoch: 3, replicas: vec![1], unanimous: false }).await;
        let end = p.log_end_offset();
        p.wait_committed(end - 1, crate::broker::partition::AckLevel::Quorum, Duration::from_secs(5)).await.unwrap();
        assert!(matches!(p.health(), crate::storage::LogHealth::Healthy), "nothing has read the damage yet");
        assert_eq!(p.scrub(0).await.unwrap(), super::super::Scrubbed::Damaged { offset: damaged });
        assert!(matches!(p.health(), crate::storage::LogHealth::Corrupt(_)), "the scrub marked the log corrupt");
        p.close().await;
        drop(p);
        let repaired = open_replica().await.expect("the replica opens");
        assert_eq!(repaired.log_end_offset(), damaged, "cut where the damage begins");
    })
    .unwrap();
}
