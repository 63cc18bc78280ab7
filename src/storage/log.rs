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
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;
use thiserror::Error;

use crate::limits::IO_ALIGNMENT;
use crate::protocol::batch::{check_batch, stamp_batch, validate_batch, BatchError, BATCH_HEADER_BYTES};

use super::disk::{Disk, DiskError, DiskFile, DiskResult, IoBuf};
use super::index::{SegmentSummary, SparseIndex};
use super::scan::{scan_segment, ScanOutcome};

/// Name of the marker file that keeps a partition refusing service after corruption was found.
pub const CORRUPT_MARKER: &str = "CORRUPT";
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
async fn read_recovery_point<D: Disk>(disk: &D, dir: &Path) -> Result<u64, StorageError> {
    let Some(bytes) = disk.read_file(&dir.join(RECOVERY_POINT_FILE)).await? else { return Ok(0) };
    match std::str::from_utf8(&bytes).ok().and_then(|t| t.trim().parse().ok()) {
        Some(offset) => Ok(offset),
        None => {
            log::warn!("{}: unreadable recovery point; damage at the log's end counts as a torn tail", dir.display());
            Ok(0)
        }
    }
}

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

/// How far ahead of the write position an idle log zeroes. It zeroes again only once half
/// of that margin was written over: each zeroing costs a write and a flush, and one per
/// small append (as at low load) would double the flushes the device has to serialize.
const ZERO_AHEAD_BYTES: u64 = 256 * 1024;

/// A disk operation handed out by the log.
pub enum LogJob<F> {
    Write(WriteJob<F>),
    Roll(RollJob<F>),
    Sync(SyncJob<F>),
    /// Zeros written (and synced) beyond the data of the active segment while idle. A
    /// preallocated block that was never written turns every fdatasync touching it into a
    /// journal commit (twice the latency here); once zeroed, later writes there are plain
    /// overwrites.
    Zero(ZeroJob<F>),
}

pub struct ZeroJob<F> {
    file: Rc<F>,
    pos: u64,
    len: u64,
}

pub struct WriteJob<F> {
    file: Rc<F>,
    buf: IoBuf,
    pos: u64,
    sync: bool,
    new_size: u64,
    /// Preallocate the file to this before writing (see [`LogConfig::preallocate_bytes`]).
    grow_to: Option<u64>,
    end_offset: u64,
    max_timestamp: i64,
    /// (base offset, position) of each batch written, for the index.
    batches: Vec<(u64, u64, i64)>,
    new_tail: Vec<u8>,
}

pub struct RollJob<F> {
    old_file: Rc<F>,
    sync_old: bool,
    index_path: PathBuf,
    index_bytes: Vec<u8>,
    new_log_path: PathBuf,
    new_base: u64,
    preallocate: u64,
    _marker: std::marker::PhantomData<F>,
}

pub struct SyncJob<F> {
    files: Vec<Rc<F>>,
    target: u64,
}

/// The result of a job, to be handed to [`PartitionLog::complete`].
pub enum JobOutcome<F> {
    Zeroed { end: u64, result: DiskResult<()> },
    Written { meta: WriteMeta, result: DiskResult<()> },
    Rolled { base: u64, log_path: PathBuf, result: DiskResult<F> },
    Synced { target: u64, result: DiskResult<()> },
}

pub struct WriteMeta {
    synced: bool,
    new_size: u64,
    grown_to: Option<u64>,
    end_offset: u64,
    max_timestamp: i64,
    batches: Vec<(u64, u64, i64)>,
    new_tail: Vec<u8>,
}

impl<F: DiskFile> LogJob<F> {
    /// Runs the job's I/O. `disk` opens files for rolls.
    pub async fn run<D: Disk<File = F>>(self, disk: &D) -> JobOutcome<F> {
        match self {
            LogJob::Write(j) => {
                let mut result = match j.grow_to {
                    Some(len) => j.file.preallocate(len).await,
                    None => Ok(()),
                };
                if result.is_ok() {
                    result = j.file.write_at(j.buf, j.pos).await;
                }
                if result.is_ok() && j.sync && !j.file.durable_writes() {
                    result = j.file.sync_data().await;
                }
                let meta = WriteMeta {
                    synced: j.sync,
                    new_size: j.new_size,
                    grown_to: j.grow_to,
                    end_offset: j.end_offset,
                    max_timestamp: j.max_timestamp,
                    batches: j.batches,
                    new_tail: j.new_tail,
                };
                JobOutcome::Written { meta, result }
            }
            LogJob::Roll(j) => {
                let result = async {
                    if j.sync_old {
                        j.old_file.sync_data().await?;
                    }
                    disk.write_file_atomic(&j.index_path, j.index_bytes).await?;
                    let f = disk.open(&j.new_log_path, true).await?;
                    f.preallocate(j.preallocate).await?;
                    Ok(f)
                }
                .await;
                JobOutcome::Rolled { base: j.new_base, log_path: j.new_log_path, result }
            }
            LogJob::Zero(j) => {
                let result = async {
                    j.file.write_at(j.file.alloc_buf(j.len as usize), j.pos).await?;
                    j.file.sync_data().await
                }
                .await;
                JobOutcome::Zeroed { end: j.pos + j.len, result }
            }
            LogJob::Sync(j) => {
                let mut result = Ok(());
                for f in &j.files {
                    result = f.sync_data().await;
                    if result.is_err() {
                        break;
                    }
                }
                JobOutcome::Synced { target: j.target, result }
            }
        }
    }
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
            let header = crate::protocol::batch::peek_header(&data[p..])
                .map_err(|e| StorageError::Corrupt(format!("batch at position {file_pos}: {e}")))?;
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
            check_batch(&data[p..p + len])
                .map_err(|e| StorageError::Corrupt(format!("batch at position {file_pos}: {e}")))?;
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
    async fn start_fresh_segment(&mut self) -> Result<(), StorageError> {
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

    fn insert_segment(&mut self, base: u64, log_path: PathBuf, file: D::File, allocated: u64) {
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

    async fn load_sealed(&mut self, base: u64) -> Result<(), StorageError> {
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

    fn check_continuity(&mut self, base: u64) {
        if !self.segments.is_empty() && base != self.next_offset {
            self.set_corrupt(format!(
                "segment {base} does not continue the previous one, which ends at {}",
                self.next_offset
            ));
        }
    }

    async fn recover_active(&mut self, base: u64) -> Result<(), StorageError> {
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

    /// The next disk operation to run, if any. `sync_each_write` is `flush = always`.
    pub fn next_job(&mut self, sync_each_write: bool) -> Option<LogJob<D::File>> {
        if self.health != LogHealth::Healthy || self.write_in_flight {
            return None;
        }
        let first_pending = self.cache.partition_point(|b| b.base_offset < self.written_offset);
        let Some(pending) = self.cache.get(first_pending) else {
            // With flush = always nothing may stay unsynced (after a switch from interval).
            return if sync_each_write { self.next_sync_job() } else { None };
        };
        let pending_len = pending.bytes.len() as u64;
        let active = self.active();
        if active.size > 0 && active.size + pending_len > self.config.segment_bytes {
            self.write_in_flight = true;
            // The sealed segment must be durable before its successor takes writes.
            let sync_old = !self.unsynced.is_empty();
            return Some(LogJob::Roll(self.roll_job(sync_old)));
        }
        self.write_in_flight = true;
        Some(LogJob::Write(self.write_job(first_pending, sync_each_write)))
    }

    fn roll_job(&self, sync_old: bool) -> RollJob<D::File> {
        let active = self.active();
        RollJob {
            old_file: active.file.clone(),
            sync_old,
            index_path: active.index_path.clone(),
            index_bytes: active.index_bytes(),
            new_log_path: self.dir.join(segment_file_name(self.written_offset, "log")),
            new_base: self.written_offset,
            preallocate: self.config.first_preallocation(),
            _marker: std::marker::PhantomData,
        }
    }

    fn write_job(&self, first_pending: usize, sync: bool) -> WriteJob<D::File> {
        let active = self.active();
        let start = align_down(active.size);
        let mut total = self.tail_block.len() as u64;
        let mut batches = Vec::new();
        let mut max_timestamp = active.max_timestamp;
        let mut end_offset = self.written_offset;
        for b in self.cache.range(first_pending..) {
            let len = b.bytes.len() as u64;
            let fits_write = total + len <= self.config.max_write_bytes as u64;
            let fits_segment = active.size + (total - self.tail_block.len() as u64) + len <= self.config.segment_bytes;
            if !(batches.is_empty() || fits_write && fits_segment) {
                break;
            }
            batches.push((b.base_offset, start + total, b.max_timestamp));
            max_timestamp = max_timestamp.max(b.max_timestamp);
            total += len;
            end_offset = b.next_offset;
        }
        let mut buf = active.file.alloc_buf(align_up(total) as usize);
        {
            let out = buf.as_mut_slice();
            out[..self.tail_block.len()].copy_from_slice(&self.tail_block);
            let mut at = self.tail_block.len();
            for b in self.cache.range(first_pending..first_pending + batches.len()) {
                out[at..at + b.bytes.len()].copy_from_slice(&b.bytes);
                at += b.bytes.len();
            }
        }
        let tail_from = align_down(total) as usize;
        let new_tail = buf.as_slice()[tail_from..total as usize].to_vec();
        WriteJob {
            file: active.file.clone(),
            buf,
            pos: start,
            sync,
            new_size: start + total,
            grow_to: self.config.next_preallocation(active.allocated, start + total),
            end_offset,
            max_timestamp,
            batches,
            new_tail,
        }
    }

    /// Work for an idle log: zeroing the blocks just ahead of the active segment's end.
    pub fn next_idle_job(&mut self) -> Option<LogJob<D::File>> {
        if !self.config.prezero || self.health != LogHealth::Healthy || self.write_in_flight || self.has_pending() {
            return None;
        }
        let active = self.active();
        let data_end = align_up(active.size);
        let target = (data_end + ZERO_AHEAD_BYTES).min(self.config.segment_bytes);
        let pos = active.zeroed_end.max(data_end);
        if pos >= target || pos - data_end >= ZERO_AHEAD_BYTES / 2 {
            return None;
        }
        let file = active.file.clone();
        self.write_in_flight = true;
        Some(LogJob::Zero(ZeroJob { file, pos, len: target - pos }))
    }

    /// The fsync to run with `flush = interval`, if anything written is not yet durable.
    pub fn next_sync_job(&mut self) -> Option<LogJob<D::File>> {
        if self.health != LogHealth::Healthy || self.sync_in_flight || self.unsynced.is_empty() {
            return None;
        }
        self.sync_in_flight = true;
        Some(LogJob::Sync(SyncJob { files: std::mem::take(&mut self.unsynced), target: self.written_offset }))
    }

    /// Takes back a job's outcome. An error stops writes (see [`LogHealth::Failed`]); the
    /// pending batches are dropped and their producers must be told.
    pub fn complete(&mut self, outcome: JobOutcome<D::File>) -> Result<(), StorageError> {
        let result = match outcome {
            JobOutcome::Zeroed { end, result } => {
                self.write_in_flight = false;
                result.map(|()| {
                    let active = self.active_mut();
                    active.zeroed_end = active.zeroed_end.max(end);
                    active.allocated = active.allocated.max(end);
                })
            }
            JobOutcome::Written { meta, result } => {
                self.write_in_flight = false;
                result.map(|()| self.finish_write(meta))
            }
            JobOutcome::Rolled { base, log_path, result } => {
                self.write_in_flight = false;
                let allocated = self.config.first_preallocation();
                result.map(|file| self.finish_roll(base, log_path, file, allocated))
            }
            JobOutcome::Synced { target, result } => {
                self.sync_in_flight = false;
                result.map(|()| self.durable_offset = self.durable_offset.max(target))
            }
        };
        if let Err(e) = result {
            let err = StorageError::from(e);
            self.fail(&err);
            return Err(err);
        }
        self.check_invariants();
        Ok(())
    }

    fn finish_write(&mut self, meta: WriteMeta) {
        if self.health != LogHealth::Healthy {
            return; // failed meanwhile: the state is rebuilt from disk on reopen
        }
        let interval = self.config.index_interval_bytes;
        let active = self.active_mut();
        for &(base, pos, ts) in &meta.batches {
            active.index.observe(base, pos, ts, interval);
        }
        active.size = meta.new_size;
        active.zeroed_end = active.zeroed_end.max(align_up(meta.new_size));
        active.allocated = active.allocated.max(meta.grown_to.unwrap_or(0)).max(align_up(meta.new_size));
        active.next_offset = meta.end_offset;
        active.max_timestamp = meta.max_timestamp;
        let file = active.file.clone();
        self.tail_block = meta.new_tail;
        self.written_offset = meta.end_offset;
        if meta.synced {
            // fdatasync covers every earlier write to this file, and rolls sync older files.
            self.durable_offset = meta.end_offset;
            self.unsynced.clear();
        } else if !self.unsynced.iter().any(|f| Rc::ptr_eq(f, &file)) {
            self.unsynced.push(file);
        }
        self.evict_cache();
    }

    fn finish_roll(&mut self, base: u64, log_path: PathBuf, file: D::File, allocated: u64) {
        // The old segment was synced by the roll (or by its last write): all of it is durable.
        self.durable_offset = self.written_offset;
        self.unsynced.clear();
        self.tail_block.clear();
        let next = self.next_offset;
        self.insert_segment(base, log_path, file, allocated);
        self.next_offset = next;
    }

    fn fail(&mut self, err: &StorageError) {
        log::error!("{}: {err}; writes stop until the log is reopened from disk", self.dir.display());
        self.health =
            LogHealth::Failed { reason: err.to_string(), disk_full: matches!(err, StorageError::DiskFull(_)) };
        // Nothing above written_offset reached the disk as far as we know: drop it.
        while self.cache.back().is_some_and(|b| b.base_offset >= self.written_offset) {
            let b = self.cache.pop_back().expect("checked");
            self.cache_bytes -= b.bytes.len();
        }
        self.next_offset = self.written_offset;
        // Written but unsynced data (flush = interval) stays as it is: whether it survived is
        // decided by the rescan when the log is reopened, never by retrying the flush.
    }

    fn evict_cache(&mut self) {
        while self.cache_bytes > self.config.cache_bytes
            && self.cache.front().is_some_and(|b| b.next_offset <= self.written_offset)
        {
            let b = self.cache.pop_front().expect("checked");
            self.cache_bytes -= b.bytes.len();
        }
    }

    /// Drops batches at and after `offset` that were not written yet (replication: a
    /// follower cutting a divergent tail). `offset` must be a batch boundary at or above the
    /// written end, and no write may be in flight.
    pub fn drop_unwritten_from(&mut self, offset: u64) -> Result<(), StorageError> {
        if self.write_in_flight || offset < self.written_offset {
            return Err(StorageError::Io(format!("cannot drop from {offset}: it is being or was written")));
        }
        while self.cache.back().is_some_and(|b| b.base_offset >= offset) {
            let b = self.cache.pop_back().expect("checked");
            self.cache_bytes -= b.bytes.len();
        }
        self.next_offset = self.cache.back().map_or(self.written_offset, |b| b.next_offset);
        if self.next_offset != offset {
            return Err(StorageError::Io(format!("offset {offset} is not a batch boundary")));
        }
        self.check_invariants();
        Ok(())
    }

    /// Plans the removal of every batch at and after `offset` (a batch boundary below the
    /// written end) from the files: later segments are deleted, the one holding `offset` is
    /// zeroed from there. Run the plan, then drop this log and open it again (recovery finds
    /// the new end). No I/O may be in flight.
    pub fn plan_truncation(&self, offset: u64) -> Result<Truncation<D>, StorageError> {
        if self.io_in_flight() {
            return Err(StorageError::Io("truncation while I/O is in flight".into()));
        }
        let first = *self.segments.keys().next().expect("a log always has a segment");
        let remove = self
            .segments
            .range(offset..)
            .filter(|(&base, _)| base != first)
            .flat_map(|(_, seg)| [seg.index_path.clone(), seg.log_path.clone()])
            .collect();
        let (_, seg) = self.segments.range(..offset.max(first + 1)).next_back().expect("the first segment");
        Ok(Truncation {
            disk: self.disk.clone(),
            remove,
            file: seg.file.clone(),
            index_path: seg.index_path.clone(),
            scan_from: if offset <= seg.base_offset { 0 } else { seg.index.position_for(offset) },
            size: seg.size,
            offset,
        })
    }

    /// Plans emptying the log and starting it at `offset` (a follower whose leader's log starts
    /// there and that holds nothing of use below). Run the plan, then open the log again. No
    /// I/O may be in flight.
    pub fn plan_restart(&self, offset: u64) -> Result<Restart<D>, StorageError> {
        if self.io_in_flight() {
            return Err(StorageError::Io("restart while I/O is in flight".into()));
        }
        // Newest first: a crash midway leaves a shorter log, never one with a hole.
        let remove =
            self.segments.values().rev().flat_map(|seg| [seg.index_path.clone(), seg.log_path.clone()]).collect();
        Ok(Restart {
            disk: self.disk.clone(),
            remove,
            new_segment: self.dir.join(segment_file_name(offset, "log")),
            preallocate: self.config.first_preallocation(),
        })
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

/// Overwrites `[tail_start, end)` with the tail block followed by zeros, then syncs: the
/// truncated garbage can never be mistaken for data by a later recovery.
async fn zero_range<F: DiskFile>(file: &F, tail_start: u64, tail: &[u8], end: u64) -> DiskResult<()> {
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

/// File work that empties a log and starts it at an offset (see [`PartitionLog::plan_restart`]).
pub struct Restart<D: Disk> {
    disk: D,
    remove: Vec<PathBuf>,
    new_segment: PathBuf,
    preallocate: u64,
}

impl<D: Disk> Restart<D> {
    pub async fn run(self) -> Result<(), StorageError> {
        for path in &self.remove {
            self.disk.remove_file(path).await?;
        }
        // (A crash before this leaves an empty directory: a log at 0, which restarts again.)
        let file = self.disk.open(&self.new_segment, true).await?;
        file.preallocate(self.preallocate).await?;
        file.sync_data().await?;
        Ok(())
    }
}

/// File work that truncates a log (see [`PartitionLog::plan_truncation`]).
pub struct Truncation<D: Disk> {
    disk: D,
    remove: Vec<PathBuf>,
    file: Rc<D::File>,
    index_path: PathBuf,
    scan_from: u64,
    size: u64,
    offset: u64,
}

impl<D: Disk> Truncation<D> {
    pub async fn run(self) -> Result<(), StorageError> {
        for path in &self.remove {
            self.disk.remove_file(path).await?;
        }
        let mut pos = self.scan_from;
        while pos < self.size {
            let bytes = self.file.read_at(pos, BATCH_HEADER_BYTES).await?;
            let header = crate::protocol::batch::peek_header(&bytes)?;
            if header.base_offset >= self.offset {
                if header.base_offset > self.offset {
                    return Err(StorageError::Io(format!("offset {} is not a batch boundary", self.offset)));
                }
                break;
            }
            pos += u64::from(header.batch_len);
        }
        let tail_start = align_down(pos);
        let tail = self.file.read_at(tail_start, (pos - tail_start) as usize).await?;
        zero_range(self.file.as_ref(), tail_start, &tail, align_up(self.size.max(pos + 1))).await?;
        // Its index (if sealed) described the longer segment; the reopened log rebuilds it.
        self.disk.remove_file(&self.index_path).await?;
        Ok(())
    }
}
