//! The write pipeline: the disk jobs a log hands out (write, roll, zero ahead, sync), how
//! they run without borrowing the log, and how their outcomes move its offsets.

use std::path::PathBuf;
use std::rc::Rc;

use super::*;

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

impl<D: Disk> PartitionLog<D> {
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

    pub(super) fn roll_job(&self, sync_old: bool) -> RollJob<D::File> {
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

    pub(super) fn write_job(&self, first_pending: usize, sync: bool) -> WriteJob<D::File> {
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

    pub(super) fn finish_write(&mut self, meta: WriteMeta) {
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

    pub(super) fn finish_roll(&mut self, base: u64, log_path: PathBuf, file: D::File, allocated: u64) {
        // The old segment was synced by the roll (or by its last write): all of it is durable.
        self.durable_offset = self.written_offset;
        self.unsynced.clear();
        self.tail_block.clear();
        let next = self.next_offset;
        self.insert_segment(base, log_path, file, allocated);
        self.next_offset = next;
    }

    /// Stops writes after an I/O error: what was not written is dropped, and the writer
    /// reopens the log from disk before it takes writes again (also used by a partition
    /// whose truncation failed half-way: only a rescan knows what the files hold).
    pub fn fail(&mut self, err: &StorageError) {
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
}
