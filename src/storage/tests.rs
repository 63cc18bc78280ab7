//! Tests of the partition log against the simulated disk: round trips, rolls, crashes with
//! torn writes, corruption, failing writes and flushes, retention, and a random-operation
//! test against a model.

use std::path::PathBuf;

use bytes::Bytes;
use futures_lite::future::block_on;
use rand::{Rng, SeedableRng};

use super::log::{LogJob, ReadPlan};
use super::mem_disk::{CrashMode, MemDisk, MemFaults};
use super::{LogConfig, LogHealth, PartitionLog, StorageError};
use crate::protocol::batch::{BatchBuilder, BatchIter, RecordIter};

fn dir() -> PathBuf {
    PathBuf::from("/data/topics/t/0")
}

fn small_config() -> LogConfig {
    LogConfig { segment_bytes: 64 * 1024, cache_bytes: 16 * 1024, max_write_bytes: 32 * 1024, ..LogConfig::default() }
}

fn batch(values: &[Vec<u8>]) -> Vec<u8> {
    let mut b = BatchBuilder::with_capacity(1024);
    for (i, v) in values.iter().enumerate() {
        b.push(None, v, 1_000 + i as i64);
    }
    b.finish(0, 0, 0).to_vec()
}

fn append(log: &mut PartitionLog<MemDisk>, values: &[Vec<u8>]) -> Result<(u64, u64), StorageError> {
    append_in_epoch(log, values, 1)
}

fn append_in_epoch(
    log: &mut PartitionLog<MemDisk>,
    values: &[Vec<u8>],
    epoch: u32,
) -> Result<(u64, u64), StorageError> {
    let mut payload = batch(values);
    let stamped = log.stamp(&mut payload, epoch)?;
    Ok(log.append_stamped(Bytes::from(payload), &stamped))
}

/// Runs every pending write to completion (`sync`: flush = always; otherwise the writes are
/// left unsynced, as between two interval flushes); returns the first error.
fn drive(log: &mut PartitionLog<MemDisk>, disk: &MemDisk, sync: bool) -> Result<(), StorageError> {
    loop {
        let Some(job) = log.next_job(sync) else {
            return Ok(());
        };
        let outcome = block_on(LogJob::run(job, disk));
        log.complete(outcome)?;
    }
}

fn read_all(log: &PartitionLog<MemDisk>, upto: u64) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < upto {
        let chunks = match log.plan_read(offset, 4096, upto)? {
            ReadPlan::Ready(c) => c,
            ReadPlan::Disk(r) => vec![block_on(r.run())?],
        };
        assert!(!chunks.is_empty(), "no progress at offset {offset}");
        for chunk in chunks {
            for item in BatchIter::new(&chunk) {
                let (h, bytes) = item.expect("served batches are valid");
                for rec in RecordIter::new(bytes, &h) {
                    let rec = rec.unwrap();
                    if rec.offset >= offset && rec.offset < upto {
                        out.push((rec.offset, rec.value.to_vec()));
                    }
                }
                offset = offset.max(h.next_offset());
            }
        }
    }
    Ok(out)
}

fn open(disk: &MemDisk, config: LogConfig) -> PartitionLog<MemDisk> {
    block_on(PartitionLog::open(disk.clone(), dir(), config)).unwrap()
}

fn value(i: u64, len: usize) -> Vec<u8> {
    let mut v = i.to_le_bytes().to_vec();
    v.resize(len.max(8), (i % 251) as u8);
    v
}

#[test]
fn round_trip_across_rolls_and_reopen() {
    let disk = MemDisk::new();
    let mut log = open(&disk, small_config());
    let mut expected = Vec::new();
    for i in 0..400u64 {
        let v = value(i, 10 + (i as usize * 37) % 900);
        let (first, last) = append(&mut log, std::slice::from_ref(&v)).unwrap();
        assert_eq!((first, last), (i, i));
        expected.push((i, v));
        if i % 7 == 0 {
            drive(&mut log, &disk, true).unwrap();
        }
    }
    drive(&mut log, &disk, true).unwrap();
    assert!(log.segment_count() > 3, "small segments roll");
    assert_eq!(log.durable_offset(), 400);
    assert_eq!(read_all(&log, 400).unwrap(), expected);
    drop(log);
    let log = open(&disk, small_config());
    assert_eq!(log.next_offset(), 400);
    assert_eq!(read_all(&log, 400).unwrap(), expected);
}

#[test]
fn group_commit_merges_appends_into_one_write() {
    let disk = MemDisk::new();
    let mut log = open(&disk, LogConfig::default());
    for i in 0..50 {
        append(&mut log, &[value(i, 100)]).unwrap();
    }
    let before = disk.counters();
    drive(&mut log, &disk, true).unwrap();
    let after = disk.counters();
    assert_eq!((after.0 - before.0, after.1 - before.1), (1, 1), "50 appends, one write, one flush");
}

#[test]
fn crash_loses_nothing_that_was_flushed_and_tears_are_truncated() {
    for keep in 0..3 {
        for torn in [0usize, 1, 100, 4095, 4096, 5000] {
            let disk = MemDisk::new();
            let mut log = open(&disk, small_config());
            for i in 0..20 {
                append(&mut log, &[value(i, 300)]).unwrap();
            }
            drive(&mut log, &disk, true).unwrap();
            // Unsynced writes: interval mode writes without syncing.
            for i in 20..60 {
                append(&mut log, &[value(i, 300)]).unwrap();
                if i % 10 == 0 {
                    drive(&mut log, &disk, false).ok();
                }
            }
            let crashed = disk.crash(CrashMode::Tear { keep_writes: keep, torn_bytes: torn });
            drop(log);
            let log = open(&crashed, small_config());
            assert_eq!(log.health(), &LogHealth::Healthy);
            assert!(log.next_offset() >= 20, "flushed records survive (keep {keep}, torn {torn})");
            let got = read_all(&log, log.next_offset()).unwrap();
            for (i, (off, v)) in got.iter().enumerate() {
                assert_eq!(*off, i as u64);
                assert_eq!(v, &value(i as u64, 300));
            }
        }
    }
}

/// Ten single-record batches, each flushed; returns the segment path and its data end.
fn ten_flushed_batches(disk: &MemDisk) -> (PathBuf, usize) {
    let mut log = open(disk, LogConfig::default());
    for i in 0..10 {
        append(&mut log, &[value(i, 200)]).unwrap();
        drive(&mut log, disk, true).unwrap();
    }
    (dir().join("00000000000000000000.log"), log.size_bytes() as usize)
}

#[test]
fn truncated_segment_mid_batch_is_a_torn_tail() {
    let disk = MemDisk::new();
    let (seg, end) = ten_flushed_batches(&disk);
    // Cut the last batch in half: zero its second half as a torn write would.
    disk.with_file(&seg, |b| b[end - 100..end].fill(0));
    let log = open(&disk, LogConfig::default());
    assert_eq!(log.health(), &LogHealth::Healthy);
    assert_eq!(log.next_offset(), 9);
    assert_eq!(read_all(&log, 9).unwrap().len(), 9);
}

#[test]
fn flipped_bytes_in_the_last_batch_are_truncated_in_the_middle_are_reported() {
    let disk = MemDisk::new();
    let (seg, end) = ten_flushed_batches(&disk);
    disk.with_file(&seg, |b| b[end - 10] ^= 0xff);
    let mut log = open(&disk, LogConfig::default());
    assert_eq!(log.health(), &LogHealth::Healthy, "damage with nothing after it is a torn tail");
    assert_eq!(log.next_offset(), 9);
    append(&mut log, &[value(9, 200)]).unwrap();
    drive(&mut log, &disk, true).unwrap();
    drop(log);

    // Now damage a batch in the middle: later batches are intact, so this is corruption.
    disk.with_file(&seg, |b| b[300] ^= 0xff);
    let log = open(&disk, LogConfig::default());
    assert!(matches!(log.health(), LogHealth::Corrupt(_)), "{:?}", log.health());
    assert!(matches!(log.plan_read(0, 1024, 10), Err(StorageError::Corrupt(_))));
    drop(log);
    // The verdict persists across restarts until the operator acts.
    let log = open(&disk, LogConfig::default());
    assert!(matches!(log.health(), LogHealth::Corrupt(_)));
    drop(log);
    // The operator's choice: truncate at the corruption (losing what follows).
    block_on(super::Disk::remove_file(&disk, &dir().join(super::log::CORRUPT_MARKER))).unwrap();
    let log = open(&disk, LogConfig { truncate_corrupt: true, ..LogConfig::default() });
    assert_eq!(log.health(), &LogHealth::Healthy);
    assert_eq!(log.next_offset(), 1);
}

#[test]
fn a_corrupt_sealed_segment_is_detected_when_read() {
    let disk = MemDisk::new();
    let mut log = open(&disk, small_config());
    for i in 0..300 {
        append(&mut log, &[value(i, 500)]).unwrap();
        drive(&mut log, &disk, true).unwrap();
    }
    drop(log);
    disk.with_file(&dir().join("00000000000000000000.log"), |b| b[1000] ^= 1);
    let mut log = open(&disk, small_config());
    let err = read_all(&log, 300).unwrap_err();
    assert!(matches!(err, StorageError::Corrupt(_)), "{err}");
    let StorageError::Corrupt(why) = err else { unreachable!() };
    let (path, bytes) = log.mark_corrupt(&why);
    block_on(super::Disk::write_file_atomic(&disk, &path, bytes)).unwrap();
    assert!(matches!(log.plan_read(299, 100, 300), Err(StorageError::Corrupt(_))));
}

#[test]
fn failed_write_drops_pending_keeps_reads_and_resumes_after_reopen() {
    let disk = MemDisk::new();
    let mut log = open(&disk, LogConfig::default());
    for i in 0..5 {
        append(&mut log, &[value(i, 100)]).unwrap();
    }
    drive(&mut log, &disk, true).unwrap();
    disk.set_faults(MemFaults { write_errno: Some(libc::ENOSPC), ..Default::default() });
    append(&mut log, &[value(5, 100)]).unwrap();
    let err = drive(&mut log, &disk, true).unwrap_err();
    assert!(matches!(err, StorageError::DiskFull(_)), "{err}");
    assert_eq!(log.next_offset(), 5, "the unwritten batch is dropped");
    assert!(matches!(append(&mut log, &[value(5, 100)]), Err(StorageError::DiskFull(_))));
    assert_eq!(read_all(&log, 5).unwrap().len(), 5, "reads keep working");
    // Space returns: the owner reopens the log from disk and writes resume.
    disk.set_faults(MemFaults::default());
    drop(log);
    let mut log = open(&disk, LogConfig::default());
    append(&mut log, &[value(5, 100)]).unwrap();
    drive(&mut log, &disk, true).unwrap();
    assert_eq!(read_all(&log, 6).unwrap().len(), 6);
}

#[test]
fn failed_fsync_is_not_retried_and_is_not_durable() {
    let disk = MemDisk::new();
    let mut log = open(&disk, LogConfig::default());
    append(&mut log, &[value(0, 100)]).unwrap();
    drive(&mut log, &disk, true).unwrap();
    disk.set_faults(MemFaults { sync_errno: Some(libc::EIO), ..Default::default() });
    append(&mut log, &[value(1, 100)]).unwrap();
    let (_, syncs_before) = disk.counters();
    let err = drive(&mut log, &disk, true).unwrap_err();
    assert!(matches!(err, StorageError::Io(_)), "{err}");
    assert_eq!(log.durable_offset(), 1);
    assert!(matches!(log.health(), LogHealth::Failed { .. }));
    assert!(log.next_job(true).is_none(), "a failed log hands out no more writes");
    assert_eq!(disk.counters().1, syncs_before, "no retry of the failed fsync");
}

#[test]
fn retention_deletes_whole_old_segments() {
    let disk = MemDisk::new();
    let config = LogConfig { retention_bytes: Some(128 * 1024), ..small_config() };
    let mut log = open(&disk, config.clone());
    for i in 0..1000 {
        append(&mut log, &[value(i, 500)]).unwrap();
        if i % 10 == 0 {
            drive(&mut log, &disk, true).unwrap();
        }
    }
    drive(&mut log, &disk, true).unwrap();
    let removed = log.apply_retention(0);
    assert!(!removed.is_empty());
    assert!(log.size_bytes() <= 128 * 1024 + config.segment_bytes);
    let start = log.log_start_offset();
    assert!(start > 0);
    assert!(matches!(log.plan_read(0, 100, 1000), Err(StorageError::OffsetOutOfRange { .. })));
    let got = read_all(&log, 1000).unwrap();
    assert_eq!(got.first().unwrap().0, start);
    assert_eq!(got.len() as u64, 1000 - start);
}

#[test]
fn random_operations_against_a_model() {
    for seed in 0..40u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut disk = MemDisk::new();
        let config = small_config();
        let mut log = open(&disk, config.clone());
        // model: every record that was made durable, by offset
        let mut durable: Vec<Vec<u8>> = Vec::new();
        let mut appended: Vec<Vec<u8>> = Vec::new();
        for step in 0..300 {
            match rng.gen_range(0..10) {
                0..=5 => {
                    let n = rng.gen_range(1..5);
                    let values: Vec<_> = (0..n).map(|_| value(rng.gen(), rng.gen_range(0..3000))).collect();
                    let (first, _) = append(&mut log, &values).unwrap();
                    assert_eq!(first as usize, appended.len(), "seed {seed} step {step}");
                    appended.extend(values);
                }
                6..=7 => {
                    drive(&mut log, &disk, true).unwrap();
                    assert_eq!(log.durable_offset() as usize, appended.len(), "seed {seed} step {step}");
                    durable = appended.clone();
                }
                8 => {
                    if let Some(job) = log.next_idle_job() {
                        let outcome = block_on(LogJob::run(job, &disk));
                        log.complete(outcome).unwrap();
                    }
                    drive(&mut log, &disk, false).ok();
                    if rng.gen_bool(0.3) {
                        // the interval flush
                        if let Some(job) = log.next_sync_job() {
                            let outcome = block_on(LogJob::run(job, &disk));
                            log.complete(outcome).unwrap();
                            durable = appended[..log.durable_offset() as usize].to_vec();
                        }
                    }
                }
                _ => {
                    let mode = CrashMode::Tear { keep_writes: rng.gen_range(0..3), torn_bytes: rng.gen_range(0..9000) };
                    disk = disk.crash(mode);
                    log = open(&disk, config.clone());
                    assert_eq!(log.health(), &LogHealth::Healthy, "seed {seed} step {step}");
                    let n = log.next_offset() as usize;
                    assert!(n >= durable.len(), "seed {seed} step {step}: lost durable records");
                    let got = read_all(&log, n as u64).unwrap();
                    for (i, (off, v)) in got.iter().enumerate() {
                        assert_eq!(*off as usize, i);
                        assert_eq!(v, &appended[i], "seed {seed} step {step}: offset {i} differs");
                    }
                    appended.truncate(n);
                    durable.truncate(n);
                }
            }
        }
    }
}

#[test]
fn truncation_cuts_files_at_a_batch_boundary_across_segments() {
    let disk = MemDisk::new();
    let mut log = open(&disk, small_config());
    let mut ends = Vec::new();
    for i in 0..200u64 {
        append(&mut log, &[value(i, 700), value(i + 1000, 300)]).unwrap();
        ends.push(log.next_offset());
        drive(&mut log, &disk, true).unwrap();
    }
    assert!(log.segment_count() > 2, "the test needs several segments");
    // Cut in the middle of the second segment's range and check the rest is gone for good.
    let cut = ends[120];
    block_on(async { log.plan_truncation(cut).unwrap().run().await }).unwrap();
    drop(log);
    let mut log = open(&disk, small_config());
    assert_eq!(log.next_offset(), cut);
    let kept = read_all(&log, cut).unwrap();
    assert_eq!(kept.len() as u64, cut);
    assert_eq!(kept[2].1, value(1, 700));
    // New appends continue from the cut, and survive a crash.
    append(&mut log, &[b"after".to_vec()]).unwrap();
    drive(&mut log, &disk, true).unwrap();
    let crashed = disk.crash(CrashMode::LoseUnsynced);
    let log = open(&crashed, small_config());
    assert_eq!(log.next_offset(), cut + 1);
    assert_eq!(read_all(&log, cut + 1).unwrap().last().unwrap().1, b"after".to_vec());
    // A cut that is not a batch boundary is refused.
    let disk2 = MemDisk::new();
    let mut log2 = open(&disk2, small_config());
    append(&mut log2, &[value(1, 10), value(2, 10)]).unwrap();
    append(&mut log2, &[value(3, 10)]).unwrap();
    drive(&mut log2, &disk2, true).unwrap();
    assert!(block_on(async { log2.plan_truncation(1).unwrap().run().await }).is_err());
}

/// A truncation cut short between its file removals (a crash; here EIO once the first
/// later segment's two files are gone) must leave a shorter log, never one with a hole.
/// Before, the segments after the cut were removed oldest first: one cut short left those
/// after the hole, and the log opened corrupt ("segment 240 does not continue the previous
/// one, which ends at 120"): a single node refused service, a replica threw away all it
/// held above the hole. (Found reading the code after the 30-minute hybrid nemesis of
/// 2026-12-04, seed 20261208, whose read-back stalled on t/0 with no logs kept; whether
/// this is that stall is not known.)
#[test]
fn a_truncation_cut_short_between_its_removals_leaves_no_hole() {
    let disk = MemDisk::new();
    let mut log = open(&disk, small_config());
    let mut ends = Vec::new();
    for i in 0..200u64 {
        append(&mut log, &[value(i, 700), value(i + 1000, 300)]).unwrap();
        ends.push(log.next_offset());
        drive(&mut log, &disk, true).unwrap();
    }
    assert!(log.segment_count() > 3, "the test needs several segments after the cut");
    let cut = ends[20];
    disk.set_faults(MemFaults { removals_left: Some(std::rc::Rc::new(std::cell::Cell::new(2))), ..Default::default() });
    assert!(block_on(async { log.plan_truncation(cut).unwrap().run().await }).is_err(), "cut short");
    disk.set_faults(MemFaults::default());
    drop(log);
    let log = open(&disk, small_config());
    let end = log.next_offset();
    let all = read_all(&log, end).unwrap();
    assert_eq!(all.len() as u64, end, "every offset below the log end {end} is there");
    assert!(all.iter().enumerate().all(|(i, (offset, _))| *offset == i as u64), "dense offsets");
}

#[test]
fn a_batch_with_an_older_epoch_after_a_newer_one_is_a_late_write_and_not_served() {
    let disk = MemDisk::new();
    let (seg, _) = ten_flushed_batches(&disk); // epoch 1
    let mut log = open(&disk, LogConfig::default());
    let epoch_two = |log: &mut PartitionLog<MemDisk>, i: u64| append_in_epoch(log, &[value(i, 200)], 2).unwrap();
    epoch_two(&mut log, 10);
    drive(&mut log, &disk, true).unwrap();
    let after_epoch_two = log.size_bytes() as usize;
    epoch_two(&mut log, 11);
    drive(&mut log, &disk, true).unwrap();
    drop(log);
    assert_eq!(open(&disk, LogConfig::default()).next_offset(), 12, "rising epochs are a valid log");

    // A replaced node (epoch 1) writes its offset-11 batch over the successor's: same offset,
    // valid CRC (the epoch lies outside it), lower epoch. The scan cuts it as the torn tail.
    disk.with_file(&seg, |b| b[after_epoch_two + 12..after_epoch_two + 16].copy_from_slice(&1u32.to_be_bytes()));
    let log = open(&disk, LogConfig::default());
    assert_eq!(log.health(), &LogHealth::Healthy);
    assert_eq!(log.next_offset(), 11);
    assert_eq!(read_all(&log, 11).unwrap().len(), 11);
    drop(log);

    // In the middle of the log (later batches intact) it is reported as corruption.
    let mut log = open(&disk, LogConfig::default());
    epoch_two(&mut log, 11);
    epoch_two(&mut log, 12);
    drive(&mut log, &disk, true).unwrap();
    drop(log);
    disk.with_file(&seg, |b| b[after_epoch_two + 12..after_epoch_two + 16].copy_from_slice(&1u32.to_be_bytes()));
    let log = open(&disk, LogConfig::default());
    assert!(matches!(log.health(), LogHealth::Corrupt(_)), "{:?}", log.health());
}

#[test]
fn an_idle_log_zeroes_ahead_in_large_steps_not_after_every_append() {
    let disk = MemDisk::new();
    let mut log = open(&disk, LogConfig::default());
    let mut zeroings = 0;
    for i in 0..200 {
        append(&mut log, &[value(i, 1000)]).unwrap();
        drive(&mut log, &disk, true).unwrap();
        while let Some(job) = log.next_idle_job() {
            zeroings += 1;
            let outcome = block_on(LogJob::run(job, &disk));
            log.complete(outcome).unwrap();
        }
    }
    // About 200 KiB appended: zeroed once at the start and once when half of the 256 KiB
    // margin was used, not after each of the ~50 blocks written.
    assert!((1..=3).contains(&zeroings), "{zeroings} zeroings");
    assert_eq!(read_all(&log, 200).unwrap().len(), 200);
}

/// Shared storage: the node that was replaced still holds the files open, and writes it
/// issued before its fence closed reach the disk after the new active node took over (an
/// append and the zeroing ahead of it). The new node writes only to a segment file it
/// created, so the late writes neither overwrite nor extend its log.
#[test]
fn late_writes_of_a_replaced_node_land_outside_the_new_active_nodes_log() {
    let fresh = LogConfig { fresh_segment_on_open: true, ..small_config() };
    let disk = MemDisk::new();
    let mut old = open(&disk, small_config());
    let mut expected = Vec::new();
    for i in 0..10 {
        append(&mut old, &[value(i, 500)]).unwrap();
        expected.push((i, value(i, 500)));
    }
    drive(&mut old, &disk, true).unwrap();
    // Issued by the old node, not yet on the disk when the new node recovers.
    for i in 0..3 {
        append(&mut old, &[value(100 + i, 700)]).unwrap();
    }

    let mut new = open(&disk, fresh.clone());
    assert_eq!(new.next_offset(), 10);
    for i in 10..20 {
        append_in_epoch(&mut new, &[value(i, 500)], 2).unwrap();
        expected.push((i, value(i, 500)));
    }
    drive(&mut new, &disk, true).unwrap();

    // The old node's late writes land.
    drive(&mut old, &disk, true).unwrap();
    while let Some(job) = old.next_idle_job() {
        let outcome = block_on(LogJob::run(job, &disk));
        old.complete(outcome).unwrap();
    }

    assert_eq!(read_all(&new, 20).unwrap(), expected, "the running new node's log");
    drop(new);
    let reopened = open(&disk, fresh);
    assert_eq!(reopened.health(), &LogHealth::Healthy);
    assert_eq!(reopened.next_offset(), 20, "nothing of the late writes joined the log");
    assert_eq!(read_all(&reopened, 20).unwrap(), expected, "after a restart");
}

/// The replacement of an empty active segment: the new node's file is a new one, so the
/// old node's handle writes elsewhere.
#[test]
fn an_empty_active_segment_is_replaced_by_a_new_file() {
    let fresh = LogConfig { fresh_segment_on_open: true, ..small_config() };
    let disk = MemDisk::new();
    let mut old = open(&disk, small_config());
    append(&mut old, &[value(0, 700)]).unwrap();
    let mut new = open(&disk, fresh.clone());
    assert_eq!(new.next_offset(), 0);
    append_in_epoch(&mut new, &[value(1, 300)], 2).unwrap();
    drive(&mut new, &disk, true).unwrap();
    drive(&mut old, &disk, true).unwrap();
    drop(new);
    let reopened = open(&disk, fresh);
    assert_eq!(read_all(&reopened, 1).unwrap(), vec![(0, value(1, 300))]);
}

/// Defect 11i, at the log: damage to the last batch below the recovery point is corruption;
/// above it, a torn tail as before.
#[test]
fn the_recovery_point_tells_damage_to_durable_batches_from_a_torn_tail() {
    let disk = MemDisk::new();
    let (seg, end) = ten_flushed_batches(&disk);
    disk.with_file(&seg, |b| b[end - 10] ^= 0xff);
    block_on(super::log::write_recovery_point(&disk, &dir(), 9)).unwrap();
    let log = open(&disk, LogConfig::default());
    assert_eq!(log.health(), &LogHealth::Healthy, "batch 9 was above the recovery point: a torn tail");
    assert_eq!(log.next_offset(), 9);
    drop(log);
    let disk = MemDisk::new();
    let (seg, end) = ten_flushed_batches(&disk);
    disk.with_file(&seg, |b| b[end - 10] ^= 0xff);
    block_on(super::log::write_recovery_point(&disk, &dir(), 10)).unwrap();
    let log = open(&disk, LogConfig::default());
    assert!(matches!(log.health(), LogHealth::Corrupt(_)), "batch 9 was durable: {:?}", log.health());
    assert!(matches!(log.plan_read(0, 1024, 10), Err(StorageError::Corrupt(_))));
    drop(log);
    // Repaired as any corruption (by the operator, or from the leader in a cluster).
    block_on(super::Disk::remove_file(&disk, &dir().join(super::log::CORRUPT_MARKER))).unwrap();
    let log = open(&disk, LogConfig { truncate_corrupt: true, ..LogConfig::default() });
    assert_eq!(log.health(), &LogHealth::Healthy);
    assert_eq!(log.next_offset(), 9);
}

/// Issue 11 part 3: appends that outpace the disk (acks = none) are refused with a
/// retriable backpressure once `max_pending_bytes` wait to be written; once written, the
/// log takes appends again. Memory stays under cache + pending + one request.
#[test]
fn appends_beyond_the_pending_limit_get_backpressure_until_written() {
    let disk = MemDisk::new();
    let config = LogConfig { max_pending_bytes: 64 * 1024, ..small_config() };
    let mut log = open(&disk, config.clone());
    let mut refused = None;
    for i in 0..1000 {
        match append(&mut log, &[value(i, 1000)]) {
            Ok(_) => {}
            Err(e) => {
                refused = Some((i, e));
                break;
            }
        }
    }
    let (at, e) = refused.expect("refused before 1 MB waited");
    assert!(matches!(e, StorageError::Backpressure(_)), "{e}");
    assert!(at * 1000 < config.cache_bytes as u64 + config.max_pending_bytes as u64 + 2000, "refused only at {at}");
    drive(&mut log, &disk, true).unwrap();
    append(&mut log, &[value(at, 1000)]).expect("written: appends are taken again");
}

/// Issue 11 part 3: a new segment is preallocated to `preallocate_bytes`, not to the whole
/// segment (a create of 1,024 partitions preallocated 64 GiB), and the preallocation doubles
/// ahead of the writes up to the segment's size; everything written reads back after a
/// crash, across the steps and a roll.
#[test]
fn a_segment_is_preallocated_in_steps_as_it_fills() {
    let disk = MemDisk::new();
    let config = LogConfig {
        segment_bytes: 1 << 20,
        preallocate_bytes: 64 * 1024,
        prezero: false,
        cache_bytes: 16 * 1024,
        ..LogConfig::default()
    };
    let first = dir().join(format!("{:020}.log", 0));
    let len = |path: &PathBuf| disk.with_file(path, |d| d.len() as u64).expect("the segment exists");
    let mut log = open(&disk, config.clone());
    assert_eq!(len(&first), 64 * 1024, "a new segment holds only the first step");
    let mut sizes = vec![len(&first)];
    let mut expected = Vec::new();
    for i in 0..300u64 {
        let v = value(i, 4000);
        append(&mut log, std::slice::from_ref(&v)).unwrap();
        drive(&mut log, &disk, true).unwrap();
        expected.push((i, v));
        let now = len(&first);
        if now != *sizes.last().unwrap() {
            sizes.push(now);
        }
    }
    // 300 records of ~4 KiB fill the first 1 MiB segment and roll into a second one.
    assert_eq!(sizes, [64 << 10, 128 << 10, 256 << 10, 512 << 10, 1 << 20], "doubling steps up to the segment");
    assert!(log.segment_count() >= 2, "the log rolled");
    let crashed = disk.crash(CrashMode::LoseUnsynced);
    let log = open(&crashed, config);
    assert_eq!(read_all(&log, log.next_offset()).unwrap(), expected, "every record reads back after a crash");
}

/// A follower cutting its divergent tail zeroes the cut part of the segment while readers
/// still use the log as it was (their reads stop below the cut, at the high watermark).
/// Before, a disk read planned then parsed on into the zeros and reported the partition
/// corrupt (the simulator's seed 1037: a follower serving a consumer during a truncation);
/// a read now reports damage only in the batches it would return.
#[test]
fn a_read_below_a_truncation_that_runs_meanwhile_is_not_taken_for_corruption() {
    let disk = MemDisk::new();
    let config = LogConfig { cache_bytes: 0, ..small_config() };
    let mut log = open(&disk, config);
    for i in 0..8 {
        append(&mut log, &[value(i, 300)]).unwrap();
    }
    drive(&mut log, &disk, true).unwrap();
    let cut = 5;
    let ReadPlan::Disk(read) = log.plan_read(2, 1 << 20, cut).unwrap() else { panic!("the cache is off") };
    block_on(async { log.plan_truncation(cut).unwrap().run().await }).unwrap();
    let bytes = block_on(read.run()).expect("the read stops at the cut");
    let offsets: Vec<u64> = BatchIter::new(&bytes).map(|b| b.unwrap().0.base_offset).collect();
    assert_eq!(offsets, vec![2, 3, 4]);
}
