//! The partition log: segments on disk, recent batches in memory, and the write pipeline.
//!
//! The log does no I/O by itself while it holds its state: every disk operation is handed
//! out as a job ([`LogJob`]) that the owner runs without borrowing the log, and whose
//! outcome it hands back to [`PartitionLog::complete`]. That keeps `RefCell` borrows off
//! `.await` points and lets appends keep arriving while a write is in flight: they form the
//! next group commit.
//!
//! Invariants (checked by `check_invariants` after every transition in debug builds):
//! - `log_start_offset <= durable_offset <= written_offset <= next_offset`;
//! - the in-memory cache is a contiguous run of batches ending at `next_offset`, and holds
//!   every batch at or above `written_offset` (the pending ones, not yet on disk);
//! - at most one write or roll is in flight; writes go to the active (last) segment only;
//! - the active segment's tail block (`tail_block`) equals the bytes on disk from the
//!   aligned start of its last partial block to its end.
//!
//! What need not hold: `durable_offset` may trail `written_offset` with `flush = interval`.
//! The owning shard decides what is visible to readers (the high watermark); the log only
//! refuses to serve above the bound it is given.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;

use bytes::Bytes;
use thiserror::Error;

use crate::limits::IO_ALIGNMENT;
use crate::protocol::batch::{check_batch, stamp_batch, validate_batch, BatchError, BATCH_HEADER_BYTES};

mod jobs;
mod recovery;
mod truncation;

pub use jobs::{JobOutcome, LogJob};
pub use recovery::{write_recovery_point, RECOVERY_POINT_FILE};
pub use truncation::{Restart, Truncation};

use super::disk::{Disk, DiskError, DiskFile, DiskResult, IoBuf};
use super::index::{SegmentSummary, SparseIndex};

/// Name of the marker file that keeps a partition refusing service after corruption was found.
pub const CORRUPT_MARKER: &str = "CORRUPT";
/// Tunables of one partition log.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A segment is rolled when the next batch would take it past this size.
    pub segment_bytes: u64,
    /// A new segment file is preallocated to this much (at most `segment_bytes`); the
    /// active segment's preallocation doubles ahead of its writes, up to `segment_bytes`.
    /// Why stepped: a partition costs disk for what it holds, not a whole segment at
    /// create (1,024 partitions of 64 MiB segments took 64 GiB before a record arrived).
    pub preallocate_bytes: u64,
    /// Distance between sparse index entries.
    pub index_interval_bytes: u64,
    /// Bytes of recent, already written batches kept in memory for readers.
    pub cache_bytes: usize,
    /// Largest single write (a group commit larger than this is split).
    pub max_write_bytes: usize,
    /// Bytes of appended batches not yet written that the log holds; beyond them producers
    /// are refused with a retriable `backpressure` (the disk is slower than they are, and
    /// with `acks = none` nothing else slows them down).
    pub max_pending_bytes: usize,
    /// Delete the oldest segments while the log is larger than this.
    pub retention_bytes: Option<u64>,
    /// Delete segments whose newest record is older than this.
    pub retention_ms: Option<u64>,
    /// On recovery, truncate at mid-log corruption instead of refusing service.
    pub truncate_corrupt: bool,
    /// When idle, write zeros ahead of the active segment's end (see [`LogJob::Zero`]).
    pub prezero: bool,
    /// After recovery, write only to a segment file this process created (see
    /// [`PartitionLog::open`]): set in shared-storage mode, where the node replaced may
    /// still hold the old files open.
    pub fresh_segment_on_open: bool,
}

impl LogConfig {
    /// What a new segment file is preallocated to.
    pub fn first_preallocation(&self) -> u64 {
        self.preallocate_bytes.min(self.segment_bytes)
    }

    /// The preallocation of a segment holding `allocated` bytes when a write will end at
    /// `end`: doubled once the write passes half of it (so that the next writes land in
    /// allocated blocks), never beyond the segment, always covering the write.
    fn next_preallocation(&self, allocated: u64, end: u64) -> Option<u64> {
        if end <= allocated / 2 {
            return None;
        }
        let grown = (allocated * 2).max(self.first_preallocation()).min(self.segment_bytes).max(align_up(end));
        (grown > allocated).then_some(grown)
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 64 << 20,
            preallocate_bytes: crate::limits::DEFAULT_PREALLOCATE_BYTES,
            index_interval_bytes: 4096,
            cache_bytes: 8 << 20,
            max_write_bytes: crate::limits::MAX_WRITE_BYTES,
            max_pending_bytes: crate::limits::DEFAULT_MAX_PENDING_BYTES,
            retention_bytes: None,
            retention_ms: None,
            truncate_corrupt: false,
            prezero: true,
            fresh_segment_on_open: false,
        }
    }
}

/// Whether the log serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogHealth {
    Healthy,
    /// Corruption was found: no reads, no writes, until the operator acts.
    Corrupt(String),
    /// A write, flush or roll failed: reads of what was durable continue, writes are refused
    /// until the log is reopened from disk (never by retrying the failed flush).
    Failed {
        reason: String,
        disk_full: bool,
    },
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StorageError {
    #[error("disk full: {0}")]
    DiskFull(String),
    #[error("storage I/O error: {0}")]
    Io(String),
    #[error("partition is corrupt and refuses service: {0}")]
    Corrupt(String),
    #[error("partition stopped accepting writes after an I/O error: {0}")]
    Failed(String),
    #[error("offset {offset} is out of range [{start}, {end}]")]
    OffsetOutOfRange { offset: u64, start: u64, end: u64 },
    #[error("invalid record batch: {0}")]
    BadBatch(#[from] BatchError),
    #[error("empty produce request")]
    EmptyAppend,
    #[error("timed out after {0} ms waiting for the batch to be committed")]
    CommitTimeout(u64),
    #[error("the partition is closing")]
    Closing,
    /// Replication: this replica does not lead the partition (it may know who does).
    #[error("this node does not lead the partition{}", .0.map(|l| format!(" (node {l} does)")).unwrap_or_default())]
    NotLeader(Option<u32>),
    /// Replication: this replica was just made leader and has not yet written the start of
    /// its epoch; a retry in a moment succeeds.
    #[error("the partition's leader is starting its epoch; retry")]
    LeaderStarting,
    /// Replication: this leader is stopping and hands the partition over; retry in a moment
    /// (at the new leader).
    #[error("the partition's leader is stopping and hands it over; retry")]
    LeaderMoving,
    /// More appended bytes wait for the disk than the log holds (`max_pending_bytes`).
    #[error("{0} bytes wait to be written to this partition (max_pending_bytes); retry")]
    Backpressure(usize),
}

impl From<DiskError> for StorageError {
    fn from(e: DiskError) -> Self {
        if e.is_disk_full() {
            StorageError::DiskFull(e.to_string())
        } else {
            StorageError::Io(e.to_string())
        }
    }
}

/// One segment: a file of batches starting at `base_offset`.
struct Segment<F> {
    base_offset: u64,
    file: Rc<F>,
    log_path: PathBuf,
    index_path: PathBuf,
    /// Bytes of batches written (the file itself is preallocated and longer).
    size: u64,
    next_offset: u64,
    max_timestamp: i64,
    index: SparseIndex,
    /// Blocks below this were written at least once (data or zeros).
    zeroed_end: u64,
    /// The file's length as far as this log made it (preallocated, written or zeroed).
    allocated: u64,
}

impl<F> Segment<F> {
    /// The index file's contents for this segment as it stands: the sparse index and where
    /// the segment's data ends (what a sealed segment is trusted by at the next open).
    fn index_bytes(&self) -> Vec<u8> {
        let summary =
            SegmentSummary { size: self.size, next_offset: self.next_offset, max_timestamp: self.max_timestamp };
        self.index.encode(summary)
    }
}

/// A batch held in memory: pending (not yet written) or recently written.
#[derive(Clone, Debug)]
pub struct CachedBatch {
    pub base_offset: u64,
    pub next_offset: u64,
    pub max_timestamp: i64,
    pub bytes: Bytes,
}

/// What `stamp` learned about one batch of a produce request.
#[derive(Clone, Copy, Debug)]
pub struct StampedBatch {
    pub base_offset: u64,
    pub next_offset: u64,
    pub max_timestamp: i64,
    pub start: usize,
    pub len: usize,
}

/// Result of planning a read.
pub enum ReadPlan<F> {
    /// Served from memory, no I/O.
    Ready(Vec<Bytes>),
    /// Needs a disk read.
    Disk(DiskRead<F>),
}

/// A read from a segment file, run without borrowing the log.
pub struct DiskRead<F> {
    file: Rc<F>,
    pos: u64,
    len: u64,
    segment_end: u64,
    offset: u64,
    max_bytes: usize,
    upto: u64,
}

impl<F: DiskFile> DiskRead<F> {
    /// Reads, checks every batch's CRC, and returns whole batches (possibly none).
    pub async fn run(self) -> Result<Bytes, StorageError> {
        let mut data = self.file.read_at(self.pos, self.len as usize).await?;
        let (mut start, mut end) = (None, 0usize);
        let mut p = 0usize;
        loop {
            let file_pos = self.pos + p as u64;
            if file_pos + BATCH_HEADER_BYTES as u64 > self.segment_end {
                break;
            }
            if data.len() < p + BATCH_HEADER_BYTES {
                if start.is_some() {
                    break;
                }
                let more = self.file.read_at(self.pos + data.len() as u64, BATCH_HEADER_BYTES).await?;
                if more.is_empty() {
                    break;
                }
                data.extend_from_slice(&more);
                continue;
            }
            // Damage after the batches already taken is not this read's to report: a read
            // stops below the high watermark, and what lies beyond may be a tail that a
            // truncation is cutting meanwhile. (A read that starts there reports real damage.)
            let header = match crate::protocol::batch::peek_header(&data[p..]) {
                Ok(header) => header,
                Err(_) if start.is_some() => break,
                Err(e) => return Err(StorageError::Corrupt(format!("batch at position {file_pos}: {e}"))),
            };
            let len = header.batch_len as usize;
            if data.len() < p + len {
                if start.is_some() {
                    break;
                }
                let missing = p + len - data.len();
                let more = self.file.read_at(self.pos + data.len() as u64, missing).await?;
                if more.len() < missing {
                    return Err(StorageError::Corrupt(format!("batch at position {file_pos} is cut short")));
                }
                data.extend_from_slice(&more);
            }
            match check_batch(&data[p..p + len]) {
                Ok(_) => {}
                Err(_) if start.is_some() => break,
                Err(e) => return Err(StorageError::Corrupt(format!("batch at position {file_pos}: {e}"))),
            }
            if header.base_offset >= self.upto {
                break;
            }
            if header.next_offset() > self.offset {
                if start.is_some() && end - start.unwrap_or(0) + len > self.max_bytes {
                    break;
                }
                start.get_or_insert(p);
                end = p + len;
            }
            p += len;
        }
        Ok(match start {
            Some(s) => Bytes::from(data).slice(s..end),
            None => Bytes::new(),
        })
    }
}

/// A partition's log. Owned by one shard; see the module docs for the job protocol.
pub struct PartitionLog<D: Disk> {
    disk: D,
    dir: PathBuf,
    config: LogConfig,
    segments: BTreeMap<u64, Segment<D::File>>,
    log_start_offset: u64,
    next_offset: u64,
    written_offset: u64,
    durable_offset: u64,
    cache: VecDeque<CachedBatch>,
    cache_bytes: usize,
    tail_block: Vec<u8>,
    health: LogHealth,
    write_in_flight: bool,
    sync_in_flight: bool,
    unsynced: Vec<Rc<D::File>>,
    /// What [`RECOVERY_POINT_FILE`] says.
    recovery_point: u64,
}

fn segment_file_name(base: u64, ext: &str) -> String {
    format!("{base:020}.{ext}")
}

fn align_down(v: u64) -> u64 {
    v / IO_ALIGNMENT as u64 * IO_ALIGNMENT as u64
}

fn align_up(v: u64) -> u64 {
    v.div_ceil(IO_ALIGNMENT as u64) * IO_ALIGNMENT as u64
}

impl<D: Disk> PartitionLog<D> {
    fn set_corrupt(&mut self, why: String) {
        if !matches!(self.health, LogHealth::Corrupt(_)) {
            self.health = LogHealth::Corrupt(why);
        }
    }

    /// Marks the log corrupt after a read found a bad batch; returns the marker to persist.
    pub fn mark_corrupt(&mut self, why: &str) -> (PathBuf, Vec<u8>) {
        log::error!("{}: {why}; the partition refuses service until the operator acts", self.dir.display());
        self.set_corrupt(why.to_string());
        (self.dir.join(CORRUPT_MARKER), why.as_bytes().to_vec())
    }

    pub fn health(&self) -> &LogHealth {
        &self.health
    }
    pub fn log_start_offset(&self) -> u64 {
        self.log_start_offset
    }
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }
    pub fn written_offset(&self) -> u64 {
        self.written_offset
    }
    pub fn durable_offset(&self) -> u64 {
        self.durable_offset
    }
    /// The recovery point on disk (see [`RECOVERY_POINT_FILE`]).
    pub fn recovery_point(&self) -> u64 {
        self.recovery_point
    }
    /// The caller wrote `offset` as the recovery point.
    pub fn note_recovery_point(&mut self, offset: u64) {
        self.recovery_point = offset;
    }
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.size).sum()
    }
    pub fn has_pending(&self) -> bool {
        self.written_offset < self.next_offset
    }
    pub fn has_unsynced(&self) -> bool {
        !self.unsynced.is_empty()
    }
    pub fn io_in_flight(&self) -> bool {
        self.write_in_flight || self.sync_in_flight
    }

    fn writable(&self) -> Result<(), StorageError> {
        match &self.health {
            LogHealth::Healthy => Ok(()),
            LogHealth::Corrupt(why) => Err(StorageError::Corrupt(why.clone())),
            LogHealth::Failed { reason, disk_full: true } => Err(StorageError::DiskFull(reason.clone())),
            LogHealth::Failed { reason, .. } => Err(StorageError::Failed(reason.clone())),
        }
    }

    /// Validates every batch of a produce payload and stamps offsets from the log end, in
    /// place. Does not change the log: call [`Self::append_stamped`] next, with no `.await`
    /// in between (the offsets assume nothing else is appended first).
    pub fn stamp(&self, payload: &mut [u8], leader_epoch: u32) -> Result<Vec<StampedBatch>, StorageError> {
        self.writable()?;
        if payload.is_empty() {
            return Err(StorageError::EmptyAppend);
        }
        // Written batches are evicted from the cache down to `cache_bytes` after each write,
        // so beyond it the cache holds (within one write) only batches waiting for the disk:
        // the partition's memory stays under `cache_bytes + max_pending_bytes` + one request.
        let pending = self.cache_bytes.saturating_sub(self.config.cache_bytes);
        if pending >= self.config.max_pending_bytes {
            return Err(StorageError::Backpressure(pending));
        }
        let mut batches = Vec::new();
        let mut next = self.next_offset;
        let mut at = 0;
        while at < payload.len() {
            let header = validate_batch(&payload[at..])?;
            let len = header.batch_len as usize;
            stamp_batch(&mut payload[at..at + len], next, leader_epoch);
            let base = next;
            next += u64::from(header.record_count);
            batches.push(StampedBatch {
                base_offset: base,
                next_offset: next,
                max_timestamp: header.max_timestamp,
                start: at,
                len,
            });
            at += len;
        }
        Ok(batches)
    }

    /// Appends batches stamped by [`Self::stamp`]; returns (first offset, last offset).
    pub fn append_stamped(&mut self, payload: Bytes, batches: &[StampedBatch]) -> (u64, u64) {
        let first = batches.first().expect("stamp returns at least one batch");
        assert_eq!(first.base_offset, self.next_offset, "appended batches were stamped for another log end");
        for b in batches {
            self.push_cached(CachedBatch {
                base_offset: b.base_offset,
                next_offset: b.next_offset,
                max_timestamp: b.max_timestamp,
                bytes: payload.slice(b.start..b.start + b.len),
            });
        }
        self.check_invariants();
        (first.base_offset, self.next_offset - 1)
    }

    /// Appends one batch that already carries its offsets (replication, offset stores).
    pub fn append_batch(&mut self, batch: Bytes) -> Result<u64, StorageError> {
        self.writable()?;
        let header = check_batch(&batch)?;
        if header.base_offset != self.next_offset || header.batch_len as usize != batch.len() {
            return Err(StorageError::Io(format!(
                "batch at offset {} does not continue the log at {}",
                header.base_offset, self.next_offset
            )));
        }
        self.push_cached(CachedBatch {
            base_offset: header.base_offset,
            next_offset: header.next_offset(),
            max_timestamp: header.max_timestamp,
            bytes: batch,
        });
        Ok(header.last_offset())
    }

    fn push_cached(&mut self, b: CachedBatch) {
        self.next_offset = b.next_offset;
        self.cache_bytes += b.bytes.len();
        self.cache.push_back(b);
    }

    fn active(&self) -> &Segment<D::File> {
        self.segments.values().next_back().expect("a log always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment<D::File> {
        self.segments.values_mut().next_back().expect("a log always has an active segment")
    }

    fn evict_cache(&mut self) {
        while self.cache_bytes > self.config.cache_bytes
            && self.cache.front().is_some_and(|b| b.next_offset <= self.written_offset)
        {
            let b = self.cache.pop_front().expect("checked");
            self.cache_bytes -= b.bytes.len();
        }
    }

    /// Plans a read of whole batches from the one containing `offset`, none at or above `upto`.
    pub fn plan_read(&self, offset: u64, max_bytes: usize, upto: u64) -> Result<ReadPlan<D::File>, StorageError> {
        if let LogHealth::Corrupt(why) = &self.health {
            return Err(StorageError::Corrupt(why.clone()));
        }
        if offset < self.log_start_offset || offset > self.next_offset {
            return Err(StorageError::OffsetOutOfRange { offset, start: self.log_start_offset, end: self.next_offset });
        }
        if offset >= upto {
            return Ok(ReadPlan::Ready(Vec::new()));
        }
        if self.cache.front().is_some_and(|b| b.base_offset <= offset) {
            let first = self.cache.partition_point(|b| b.next_offset <= offset);
            let mut out = Vec::new();
            let mut total = 0;
            for b in self.cache.range(first..) {
                if b.base_offset >= upto || (!out.is_empty() && total + b.bytes.len() > max_bytes) {
                    break;
                }
                total += b.bytes.len();
                out.push(b.bytes.clone());
            }
            return Ok(ReadPlan::Ready(out));
        }
        let (_, seg) = self.segments.range(..=offset).next_back().expect("offset >= log start has a segment");
        let pos = seg.index.position_for(offset);
        let len = (seg.size - pos).min(max_bytes as u64 + self.config.index_interval_bytes + BATCH_HEADER_BYTES as u64);
        Ok(ReadPlan::Disk(DiskRead {
            file: seg.file.clone(),
            pos,
            len,
            segment_end: seg.size,
            offset,
            max_bytes,
            upto,
        }))
    }

    /// Where to start scanning for the first record with a timestamp >= `ts`; `None` if no
    /// segment has one.
    pub fn timestamp_scan_start(&self, ts: i64) -> Option<u64> {
        let seg = self.segments.values().find(|s| s.max_timestamp >= ts)?;
        Some(seg.index.start_for_timestamp(ts, seg.base_offset).0.max(self.log_start_offset))
    }

    /// Removes whole segments past the retention limits; returns their files to delete.
    pub fn apply_retention(&mut self, now_ms: i64) -> Vec<PathBuf> {
        let (retention_bytes, retention_ms) = (self.config.retention_bytes, self.config.retention_ms);
        self.remove_first_segments_while(|first, total| {
            let over_size = retention_bytes.is_some_and(|limit| total > limit);
            let too_old = retention_ms.is_some_and(|ms| first.max_timestamp < now_ms.saturating_sub(ms as i64));
            over_size || too_old
        })
    }

    /// Removes the whole segments that end at or below `offset` (everything in them is
    /// superseded, as a compacted log's checkpoint supersedes what came before it); returns
    /// their files to delete.
    pub fn remove_segments_below(&mut self, offset: u64) -> Vec<PathBuf> {
        self.remove_first_segments_while(|first, _| first.next_offset <= offset)
    }

    /// Removes the oldest segments, never the active one nor one not yet durable, while
    /// `remove(oldest, bytes held)` says so; returns their files to delete.
    fn remove_first_segments_while(&mut self, remove: impl Fn(&Segment<D::File>, u64) -> bool) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        let mut total: u64 = self.size_bytes();
        while self.segments.len() > 1 {
            let first = self.segments.values().next().expect("len > 1");
            if !remove(first, total) || first.next_offset > self.durable_offset {
                break;
            }
            let seg = self.segments.pop_first().expect("len > 1").1;
            total -= seg.size;
            removed.push(seg.log_path);
            removed.push(seg.index_path);
        }
        if let Some(first) = self.segments.values().next() {
            self.log_start_offset = first.base_offset;
        }
        while self.cache.front().is_some_and(|b| b.base_offset < self.log_start_offset) {
            let b = self.cache.pop_front().expect("checked");
            self.cache_bytes -= b.bytes.len();
        }
        removed
    }

    fn check_invariants(&self) {
        assert!(self.log_start_offset <= self.durable_offset || self.segments.len() == 1);
        assert!(
            self.durable_offset <= self.written_offset,
            "durable {} > written {}",
            self.durable_offset,
            self.written_offset
        );
        assert!(self.written_offset <= self.next_offset, "written {} > next {}", self.written_offset, self.next_offset);
        debug_assert!(self.cache.iter().zip(self.cache.iter().skip(1)).all(|(a, b)| a.next_offset == b.base_offset));
        debug_assert!(self.cache.back().is_none_or(|b| b.next_offset == self.next_offset));
        debug_assert!(
            self.written_offset == self.next_offset
                || self.cache.front().is_some_and(|b| b.base_offset <= self.written_offset)
        );
        debug_assert_eq!(self.cache_bytes, self.cache.iter().map(|b| b.bytes.len()).sum::<usize>());
    }
}
