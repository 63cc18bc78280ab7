//! Opening a log: recovering its segments (sealed ones through their index, the active one
//! by a scan), the recovery point that tells a torn tail from corruption, and zeroing a
//! truncated tail.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::*;
use crate::storage::index::SparseIndex;
use crate::storage::scan::{scan_segment, ScanOutcome};

/// The recovery point: an offset below which the log was known durable (written now and
/// then and at a clean close, as Kafka's recovery-point checkpoint). Damage at the end of
/// the active segment below it is corruption, not a torn tail: those batches were durable,
/// and a torn write can only damage what was being written.
pub const RECOVERY_POINT_FILE: &str = "recovery-point";

/// Records `offset` as the recovery point of the log in `dir` (durably, atomically).
pub async fn write_recovery_point<D: Disk>(disk: &D, dir: &Path, offset: u64) -> Result<(), StorageError> {
    disk.write_file_atomic(&dir.join(RECOVERY_POINT_FILE), format!("{offset}\n").into_bytes()).await?;
    Ok(())
}

/// The recovery point recorded in `dir` (0 when none, or when the file is unreadable: then
/// damage at the end is a torn tail, as before there was a recovery point).
pub(super) async fn read_recovery_point<D: Disk>(disk: &D, dir: &Path) -> Result<u64, StorageError> {
    let Some(bytes) = disk.read_file(&dir.join(RECOVERY_POINT_FILE)).await? else { return Ok(0) };
    match std::str::from_utf8(&bytes).ok().and_then(|t| t.trim().parse().ok()) {
        Some(offset) => Ok(offset),
        None => {
            log::warn!("{}: unreadable recovery point; damage at the log's end counts as a torn tail", dir.display());
            Ok(0)
        }
    }
}

impl<D: Disk> PartitionLog<D> {
    /// Opens (creating if needed) the log in `dir` and recovers it: sealed segments are
    /// trusted through their index (rebuilt by a scan if damaged), the last segment is
    /// scanned batch by batch, a torn tail is truncated, corruption is reported.
    pub async fn open(disk: D, dir: PathBuf, config: LogConfig) -> Result<Self, StorageError> {
        disk.create_dir_all(&dir).await?;
        let mut bases: Vec<u64> = disk
            .list_dir(&dir)
            .await?
            .iter()
            .filter_map(|n| n.strip_suffix(".log").and_then(|b| b.parse().ok()))
            .collect();
        bases.sort_unstable();
        let mut log = PartitionLog {
            disk: disk.clone(),
            dir: dir.clone(),
            config,
            segments: BTreeMap::new(),
            log_start_offset: 0,
            next_offset: 0,
            written_offset: 0,
            durable_offset: 0,
            cache: VecDeque::new(),
            cache_bytes: 0,
            tail_block: Vec::new(),
            health: LogHealth::Healthy,
            write_in_flight: false,
            sync_in_flight: false,
            unsynced: Vec::new(),
            recovery_point: read_recovery_point(&disk, &dir).await?,
        };
        if let Some(marker) = disk.read_file(&dir.join(CORRUPT_MARKER)).await? {
            log.health = LogHealth::Corrupt(String::from_utf8_lossy(&marker).trim().to_string());
        }
        if bases.is_empty() {
            let path = dir.join(segment_file_name(0, "log"));
            let file = disk.open(&path, true).await?;
            let allocated = log.config.first_preallocation();
            file.preallocate(allocated).await?;
            log.insert_segment(0, path, file, allocated);
            return Ok(log);
        }
        let last = *bases.last().expect("non-empty");
        for &base in &bases {
            if base == last {
                log.recover_active(base).await?;
            } else {
                log.load_sealed(base).await?;
            }
        }
        log.log_start_offset = bases[0];
        log.written_offset = log.next_offset;
        log.durable_offset = log.next_offset;
        if log.config.fresh_segment_on_open && log.health == LogHealth::Healthy {
            log.start_fresh_segment().await?;
        }
        log.check_invariants();
        Ok(log)
    }

    /// Moves writes to a segment file this process created: a non-empty active segment is
    /// sealed (its index records where its data ends) and the next one started; an empty
    /// one is replaced by a new file of the same name.
    ///
    /// Why: in shared-storage mode the node this one replaced may still hold the files
    /// open, and a write it issued just before its fence closed (its process paused between
    /// the check and the submission) can reach the disk at any time later. Such a write goes
    /// to that node's active segment, at or beyond the end recovered here: into a file this
    /// node never appends to again, past the end its index records, so it can neither
    /// overwrite nor extend the log.
    pub(super) async fn start_fresh_segment(&mut self) -> Result<(), StorageError> {
        let active = self.active();
        let (base, empty) = (active.base_offset, active.size == 0);
        if empty {
            self.disk.remove_file(&active.log_path).await?;
        } else {
            self.disk.write_file_atomic(&active.index_path, active.index_bytes()).await?;
        }
        let new_path = self.dir.join(segment_file_name(self.next_offset, "log"));
        let file = self.disk.open(&new_path, true).await?;
        let allocated = self.config.first_preallocation();
        file.preallocate(allocated).await?;
        if empty {
            self.segments.remove(&base);
        }
        self.finish_roll(self.next_offset, new_path, file, allocated);
        Ok(())
    }

    pub(super) fn insert_segment(&mut self, base: u64, log_path: PathBuf, file: D::File, allocated: u64) {
        let index_path = log_path.with_extension("index");
        self.segments.insert(
            base,
            Segment {
                base_offset: base,
                file: Rc::new(file),
                log_path,
                index_path,
                size: 0,
                next_offset: base,
                max_timestamp: i64::MIN,
                index: SparseIndex::default(),
                zeroed_end: 0,
                allocated,
            },
        );
        self.next_offset = base;
    }

    pub(super) async fn load_sealed(&mut self, base: u64) -> Result<(), StorageError> {
        let log_path = self.dir.join(segment_file_name(base, "log"));
        let index_path = log_path.with_extension("index");
        let file = self.disk.open(&log_path, false).await?;
        let (index, summary) = match self.disk.read_file(&index_path).await?.as_deref().and_then(SparseIndex::decode) {
            Some(found) => found,
            None => {
                log::warn!("{}: index missing or damaged, rebuilding it by a scan", index_path.display());
                let len = file.size().await?;
                let scan = scan_segment(&file, base, len, self.config.index_interval_bytes).await?;
                if scan.outcome != ScanOutcome::Clean {
                    self.set_corrupt(format!("sealed segment {} is damaged: {:?}", log_path.display(), scan.outcome));
                }
                let summary = SegmentSummary {
                    size: scan.size,
                    next_offset: scan.next_offset,
                    max_timestamp: scan.max_timestamp,
                };
                self.disk.write_file_atomic(&index_path, scan.index.encode(summary)).await?;
                (scan.index, summary)
            }
        };
        self.check_continuity(base);
        self.segments.insert(
            base,
            Segment {
                base_offset: base,
                file: Rc::new(file),
                log_path,
                index_path,
                size: summary.size,
                next_offset: summary.next_offset,
                max_timestamp: summary.max_timestamp,
                index,
                zeroed_end: align_up(summary.size),
                allocated: summary.size,
            },
        );
        self.next_offset = summary.next_offset;
        Ok(())
    }

    pub(super) fn check_continuity(&mut self, base: u64) {
        if !self.segments.is_empty() && base != self.next_offset {
            self.set_corrupt(format!(
                "segment {base} does not continue the previous one, which ends at {}",
                self.next_offset
            ));
        }
    }

    pub(super) async fn recover_active(&mut self, base: u64) -> Result<(), StorageError> {
        let log_path = self.dir.join(segment_file_name(base, "log"));
        let file = self.disk.open(&log_path, false).await?;
        let file_len = file.size().await?;
        let mut scan = scan_segment(&file, base, file_len, self.config.index_interval_bytes).await?;
        if let ScanOutcome::TornTail { reason, .. } = &scan.outcome {
            if scan.next_offset < self.recovery_point {
                // Batches that were durable are damaged since: no torn write did that.
                let reason = format!("{reason}, below the recovery point {}", self.recovery_point);
                scan.outcome = ScanOutcome::Corrupt { position: scan.size, offset: scan.next_offset, reason };
            }
        }
        let zero_until = match &scan.outcome {
            ScanOutcome::Clean => None,
            ScanOutcome::TornTail { garbage_end, reason } => {
                log::warn!("{}: torn tail at byte {} ({reason}); truncating it", log_path.display(), scan.size);
                Some(*garbage_end)
            }
            ScanOutcome::Corrupt { position, offset, reason } if self.config.truncate_corrupt => {
                log::error!(
                    "{}: corruption at byte {position} (offset {offset}): {reason}; truncating as configured (truncate_corrupt), later data is discarded",
                    log_path.display()
                );
                Some(align_up(file_len))
            }
            ScanOutcome::Corrupt { position, offset, reason } => {
                let why =
                    format!("corruption in {} at byte {position} (offset {offset}): {reason}", log_path.display());
                log::error!("{why}; the partition refuses service until the operator acts");
                self.set_corrupt(why.clone());
                self.disk.write_file_atomic(&self.dir.join(CORRUPT_MARKER), why.into_bytes()).await?;
                None
            }
        };
        self.check_continuity(base);
        let tail_start = align_down(scan.size);
        self.tail_block = file.read_at(tail_start, (scan.size - tail_start) as usize).await?;
        match zero_until {
            Some(end) => zero_range(&file, tail_start, &self.tail_block, end).await?,
            // What a read returns may still sit in a volatile device cache (a process crash
            // with flush = interval, or a failed flush): make it durable before serving it.
            None => file.sync_data().await?,
        }
        self.segments.insert(
            base,
            Segment {
                base_offset: base,
                file: Rc::new(file),
                index_path: log_path.with_extension("index"),
                log_path,
                size: scan.size,
                next_offset: scan.next_offset,
                max_timestamp: scan.max_timestamp,
                index: scan.index,
                zeroed_end: align_up(scan.size).max(zero_until.unwrap_or(0)),
                allocated: file_len.max(zero_until.unwrap_or(0)),
            },
        );
        self.next_offset = scan.next_offset;
        Ok(())
    }
}

/// Overwrites `[tail_start, end)` with the tail block followed by zeros, then syncs: the
/// truncated garbage can never be mistaken for data by a later recovery.
pub(super) async fn zero_range<F: DiskFile>(file: &F, tail_start: u64, tail: &[u8], end: u64) -> DiskResult<()> {
    const CHUNK: u64 = 1 << 20;
    let mut pos = tail_start;
    let mut first = true;
    while pos < end {
        let len = CHUNK.min(align_up(end) - pos);
        let mut buf = file.alloc_buf(len as usize);
        if first {
            buf.as_mut_slice()[..tail.len()].copy_from_slice(tail);
            first = false;
        }
        file.write_at(buf, pos).await?;
        pos += len;
    }
    file.sync_data().await
}
