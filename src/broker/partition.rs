//! A partition as its owning shard runs it: the log, the writer task that turns appends into
//! group commits, producers waiting for their acknowledgement, and readers waiting for data.
//!
//! Owned by exactly one shard (`!Send`). The high watermark (what readers may see and what
//! acknowledgements wait for) is the durable end with `flush = always`, the written end with
//! `flush = interval`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures_channel::oneshot;

use crate::config::FlushPolicy;
use crate::protocol::batch::{BatchHeader, BatchIter, RecordIter};
use crate::protocol::messages::PartitionStatus;
use crate::replication::{Action, Answer};
use crate::rt::{self, Notify, WaitList};
use crate::storage::log::ReadPlan;
use crate::storage::{Disk, LogConfig, LogHealth, PartitionLog, StorageError};

#[cfg(test)]
mod inspect;
pub(crate) mod producers;
mod replication;
mod scrub;
#[cfg(test)]
mod tests;
pub use producers::SequenceError;
use producers::{Admission, ProducerTable};
pub use replication::{stored_topic_id, Outbound, ReplicaSetup, Replication};
pub use scrub::Scrubbed;

/// The disk the broker runs on: glommio DMA files behind the fault-injection switches.
pub type ServerDisk = crate::storage::faults::GuardedDisk<crate::storage::glommio_disk::GlommioDisk>;

/// Waits longer than this are cut short so a waiting list cannot grow without bound.
const PRUNE_WAITERS_ABOVE: usize = 1024;

/// What an acknowledgement waits for (the replica decides when it holds).
pub use crate::replication::AckLevel;

/// Result of a produce that was appended.
#[derive(Debug, Clone, Copy)]
pub struct Appended {
    pub first_offset: u64,
    pub last_offset: u64,
}

/// Why a produce was not appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The batch breaks its producer's sequence rules (see `producers`).
    #[error(transparent)]
    Sequence(#[from] SequenceError),
    #[error("{0}")]
    Invalid(String),
}

/// File name suffix of the producer-table snapshots (`<offset, 20 digits>.producers`).
const PRODUCER_SNAPSHOT_SUFFIX: &str = ".producers";

pub struct Partition<D: Disk = ServerDisk> {
    pub topic: Rc<str>,
    pub id: u32,
    disk: D,
    dir: PathBuf,
    log_config: LogConfig,
    flush: FlushPolicy,
    log: RefCell<PartitionLog<D>>,
    /// Produces waiting for the replica's [`Answer`](crate::replication::Answer), by token.
    waiting: RefCell<HashMap<u64, oneshot::Sender<Result<u64, StorageError>>>>,
    next_token: Cell<u64>,
    data_arrived: WaitList,
    wake_writer: Notify,
    closing: Cell<bool>,
    writer_done: Notify,
    writer_running: Cell<bool>,
    /// The partition's replica: of a cluster's replica set, or the only one (a single
    /// node's partition is a replica set of one, through the same driver).
    replication: RefCell<Replication>,
    /// The high watermark readers may see. It follows the replica's, but only once the
    /// actions before each `Commit` (a truncation, appends) were carried out: the replica
    /// decides first, the log catches up, and readers must see the log's state.
    visible_hw: Cell<u64>,
    /// The writer starts no new job (a follower truncating its log).
    paused: Cell<bool>,
    /// Counts the times `log` was replaced by a fresh open (a truncation, a reopen after a
    /// failed write): an I/O job started on an older log must not complete on the new one.
    log_generation: Cell<u64>,
    /// Serializes a follower's handling of its leader's appends (they may await a
    /// truncation or an epoch write, and must apply in order).
    follower_lock: crate::rt::Semaphore,
    /// Recent batches per idempotent producer: agrees with the log (module `producers`).
    producers: RefCell<ProducerTable>,
    /// A controlled shutdown: as leader, take no new batches, so that a follower catches up
    /// and the partition can be handed over without waiting for an election timeout.
    draining: Cell<bool>,
}

impl<D: Disk> Partition<D> {
    /// Opens (recovering) the log and starts the writer task.
    pub async fn open(
        disk: D,
        topic: Rc<str>,
        id: u32,
        dir: PathBuf,
        log_config: LogConfig,
        flush: FlushPolicy,
    ) -> Result<Rc<Self>, StorageError> {
        let log = PartitionLog::open(disk.clone(), dir.clone(), log_config.clone()).await?;
        if let LogHealth::Corrupt(why) = log.health() {
            log::error!("partition {topic}/{id} is corrupt and will not serve: {why}");
        }
        let alone = Replication::alone(disk.fencing_epoch(), log.next_offset(), local_end_of(&log, flush));
        let visible_hw = alone.replica.high_watermark();
        let log = RefCell::new(log);
        let producers = load_producer_table(&disk, &dir, &log).await?;
        let p = Rc::new(Partition {
            topic,
            id,
            disk,
            dir,
            log_config,
            flush,
            log,
            waiting: RefCell::default(),
            next_token: Cell::new(0),
            data_arrived: WaitList::default(),
            wake_writer: Notify::new(),
            closing: Cell::new(false),
            writer_done: Notify::new(),
            writer_running: Cell::new(true),
            replication: RefCell::new(alone),
            visible_hw: Cell::new(visible_hw),
            paused: Cell::new(false),
            log_generation: Cell::new(0),
            follower_lock: crate::rt::Semaphore::new(1),
            producers: RefCell::new(producers),
            draining: Cell::new(false),
        });
        rt::spawn(p.clone().writer());
        Ok(p)
    }

    /// Writes the producer table as it stands at the log's written end (where it is exact),
    /// so that a restart replays only the batches after it.
    async fn snapshot_producers(&self) {
        let (at, bytes) = {
            let log = self.log.borrow();
            if !matches!(log.health(), LogHealth::Healthy) {
                return;
            }
            let at = log.written_offset();
            (at, self.producers.borrow().encode_snapshot(at))
        };
        let path = self.dir.join(format!("{at:020}{PRODUCER_SNAPSHOT_SUFFIX}"));
        if let Err(e) = self.disk.write_file_atomic(&path, bytes).await {
            // Not fatal: the next start replays from an older snapshot.
            log::warn!("{}/{}: producer snapshot {}: {e}", self.topic, self.id, path.display());
        }
    }

    /// Offsets below it are committed: readable and acknowledged.
    pub fn high_watermark(&self) -> u64 {
        self.visible_hw.get()
    }

    /// What this replica holds as its flush policy defines it: durable with `flush =
    /// always`, written with `flush = interval`.
    pub(super) fn local_end(&self) -> u64 {
        local_end_of(&self.log.borrow(), self.flush)
    }

    /// The next offset the log assigns.
    pub fn log_end_offset(&self) -> u64 {
        self.log.borrow().next_offset()
    }

    pub fn log_start_offset(&self) -> u64 {
        self.log.borrow().log_start_offset()
    }

    pub fn health(&self) -> LogHealth {
        self.log.borrow().health().clone()
    }

    /// Validates, stamps and appends the batches in `payload`. `into_bytes` turns the
    /// stamped buffer into shared bytes without copying. No `.await` inside: appends from
    /// tasks spawned in order keep that order.
    /// Only the leader appends (stamping its epoch), and its replica then streams the
    /// batches to the followers (a replica alone has none).
    /// An idempotent batch (a producer id) must come alone and pass its producer's sequence
    /// rules; an exact repeat of one already stored is answered with its offsets.
    pub fn append<B>(&self, mut payload: B, into_bytes: impl FnOnce(B) -> Bytes) -> Result<Appended, AppendError>
    where
        B: AsMut<[u8]>,
    {
        if self.closing.get() {
            return Err(StorageError::Closing.into());
        }
        let mut replication = self.replication.borrow_mut();
        let r = &mut *replication;
        // shared-storage: the lease's fencing epoch (0 on a single node), the only replica's.
        r.replica.enter_epoch_alone(self.disk.fencing_epoch());
        if !r.replica.is_leader() {
            return Err(StorageError::NotLeader(r.replica.leader()).into());
        }
        if self.draining.get() {
            return Err(StorageError::LeaderMoving.into());
        }
        // A damaged cluster replica is about to be reopened and repaired
        // (`shard/cluster.rs`); another replica will lead. (Alone, the log refuses the batch.)
        if r.in_cluster() && matches!(self.log.borrow().health(), LogHealth::Corrupt(_)) {
            return Err(StorageError::NotLeader(None).into());
        }
        // A new leader's epoch-start batch is decided but not yet in the log (its epoch is
        // being persisted first): a batch appended now would take its offset.
        if r.replica.log_end() != self.log.borrow().next_offset() {
            return Err(StorageError::LeaderStarting.into());
        }
        let epoch = r.replica.epoch();
        let mut log = self.log.borrow_mut();
        // Validates every batch and refuses writes to a log that cannot take them, before
        // anything is compared with the producer table (which may hold batches that a
        // failed write is about to drop).
        let stamped = log.stamp(payload.as_mut(), epoch)?;
        let headers: Vec<BatchHeader> = stamped
            .iter()
            .map(|b| crate::protocol::batch::peek_header(&payload.as_mut()[b.start..]).expect("stamp validated it"))
            .collect();
        if headers.iter().any(|h| h.producer_id != 0) {
            if headers.len() != 1 {
                return Err(AppendError::Invalid("an idempotent produce carries exactly one batch".into()));
            }
            if let Admission::Duplicate(stored) = self.producers.borrow().check(&headers[0])? {
                return Ok(Appended { first_offset: stored.base_offset, last_offset: stored.last_offset() });
            }
        }
        {
            let mut producers = self.producers.borrow_mut();
            for header in &headers {
                producers.observe(header, log.written_offset());
            }
        }
        let (first_offset, last_offset) = log.append_stamped(into_bytes(payload), &stamped);
        drop(log);
        let mut actions = Vec::new();
        for b in &stamped {
            let base = replication.replica.append((b.next_offset - b.base_offset) as u32, &mut actions);
            debug_assert_eq!(base, Ok(b.base_offset), "the replica and the log agree on offsets");
        }
        drop(replication);
        self.wake_writer.notify();
        self.run_sync_actions(actions);
        Ok(Appended { first_offset, last_offset })
    }

    /// Waits until `last_offset` is acknowledged at `level`; returns the high watermark then.
    pub async fn wait_committed(
        &self,
        last_offset: u64,
        level: AckLevel,
        timeout: Duration,
    ) -> Result<u64, StorageError> {
        let token = self.next_token.get();
        self.next_token.set(token + 1);
        let (tx, mut rx) = oneshot::channel();
        self.waiting.borrow_mut().insert(token, tx);
        let mut actions = Vec::new();
        self.replication.borrow_mut().replica.answer_when(token, last_offset + 1, level, &mut actions);
        self.run_sync_actions(actions);
        // (Answered at once when its level already holds.)
        if let Ok(Some(result)) = rx.try_recv() {
            return result;
        }
        match rt::timeout(timeout, rx).await {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(StorageError::Closing),
            None => {
                self.waiting.borrow_mut().remove(&token);
                self.forget_abandoned_answers();
                Err(StorageError::CommitTimeout(timeout.as_millis() as u64))
            }
        }
    }

    /// Keeps the replica's list of waiting produces bounded by the produces still waited for:
    /// one that timed out stays on it until decided, which a partition that cannot commit
    /// (no majority) may not do for a long time. Pruned when it holds twice as many as are
    /// waited for (amortized: each prune removes at least half).
    fn forget_abandoned_answers(&self) {
        let live = self.waiting.borrow();
        let mut r = self.replication.borrow_mut();
        if r.replica.waiting_answers() > 2 * live.len() + PRUNE_WAITERS_ABOVE {
            r.replica.retain_answers(|token| live.contains_key(&token));
        }
    }

    /// Delivers the replica's answer to the produce waiting with `token` (gone if it timed out).
    fn deliver(&self, token: u64, answer: Answer) {
        let Some(tx) = self.waiting.borrow_mut().remove(&token) else { return };
        let result = match answer {
            Answer::Acknowledged => Ok(self.high_watermark()),
            Answer::NotLeader(leader) => Err(StorageError::NotLeader(leader)),
            Answer::LogFailed => Err(StorageError::Io("the log failed before the batch was durable".into())),
        };
        let _ = tx.send(result);
    }

    /// The writer task: runs the log's jobs one after another; appends that arrive while a
    /// job runs are batched into the next one (group commit).
    async fn writer(self: Rc<Self>) {
        let sync_each_write = self.flush == FlushPolicy::Always;
        let mut backoff = Duration::from_millis(100);
        loop {
            if self.paused.get() {
                self.wake_writer.notified().await;
                continue;
            }
            let job = self.log.borrow_mut().next_job(sync_each_write);
            // Nothing to write: use the idle time to zero the blocks ahead (cheaper flushes).
            let job = job.or_else(|| if self.closing.get() { None } else { self.log.borrow_mut().next_idle_job() });
            if let Some(job) = job {
                let rolled = matches!(job, crate::storage::log::LogJob::Roll(_));
                let outcome = job.run(&self.disk).await;
                let result = self.log.borrow_mut().complete(outcome);
                let ok = result.is_ok();
                self.after_io(result);
                if rolled && ok {
                    // The new segment starts at the written end: a snapshot there lets a restart
                    // skip every older segment.
                    self.snapshot_producers().await;
                }
                continue;
            }
            if self.closing.get() {
                break;
            }
            if matches!(self.health(), LogHealth::Failed { .. }) {
                rt::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                self.reopen().await;
                continue;
            }
            backoff = Duration::from_millis(100);
            self.wake_writer.notified().await;
        }
        self.writer_running.set(false);
        self.writer_done.notify();
    }

    /// Rebuilds the log from what is on disk after a failed write or flush. The failed
    /// flush is never retried: whatever the disk holds now is scanned and trusted only as
    /// far as its CRCs go; nothing that was not acknowledged is made to look acknowledged.
    async fn reopen(&self) {
        match self.open_fresh_log().await {
            Ok(()) => {
                // The rescan may have found more (or less) than the log had: the replica
                // restarts from what is there.
                self.reset_to_reopened_log().await;
                log::warn!(
                    "partition {}/{}: reopened from disk at offset {}, writes resume",
                    self.topic,
                    self.id,
                    self.log.borrow().next_offset()
                );
                self.data_arrived.notify_all();
            }
            Err(e) => log::warn!("partition {}/{}: still failing: {e}", self.topic, self.id),
        }
    }

    /// Opens the log again from disk and rebuilds the producer table from it, then puts both
    /// in place at once: no append sees the new log with the old table.
    async fn open_fresh_log(&self) -> Result<(), StorageError> {
        let fresh = PartitionLog::open(self.disk.clone(), self.dir.clone(), self.log_config.clone()).await?;
        let fresh = RefCell::new(fresh);
        let producers = load_producer_table(&self.disk, &self.dir, &fresh).await?;
        *self.log.borrow_mut() = fresh.into_inner();
        *self.producers.borrow_mut() = producers;
        self.log_generation.set(self.log_generation.get() + 1);
        Ok(())
    }

    /// Runs the periodic fsync of `flush = interval`. Not while a truncation holds the log;
    /// and a sync that was overtaken by one (or by a reopen) reports nothing: it made durable
    /// a log that is gone, and the fresh log knows what its files hold.
    pub async fn sync_now(&self) {
        if self.paused.get() {
            return;
        }
        let generation = self.log_generation.get();
        let job = self.log.borrow_mut().next_sync_job();
        if let Some(job) = job {
            let outcome = job.run(&self.disk).await;
            if self.log_generation.get() != generation {
                log::debug!("{}/{}: a sync outlived the log it started on", self.topic, self.id);
                return;
            }
            let result = self.log.borrow_mut().complete(outcome);
            self.after_io(result);
        }
    }

    fn after_io(&self, result: Result<(), StorageError>) {
        let local_end = self.local_end();
        let mut actions = Vec::new();
        // While a truncation is under way the replica already believes in the cut log, and
        // the durable end of the log not yet cut says nothing about its new tail (a write
        // that was in flight when the truncation began completes now).
        let truncating = self.paused.get();
        if !truncating {
            self.replication.borrow_mut().replica.on_durable(local_end, &mut actions);
        }
        // (A `Commit` among the actions woke the readers already; once per completion is
        // enough.)
        let committed = self.run_sync_actions(actions);
        let failed = result.is_err();
        if let Err(e) = result {
            // Every batch above the written end was dropped, from the log and from the
            // producer table (exactly: it never trims batches that were not written), so a
            // retry is appended again instead of being answered with offsets that other
            // batches will take. The reopen rebuilds both from disk.
            let written = self.log.borrow().written_offset();
            self.producers.borrow_mut().truncate(written);
            // The replica counted the dropped batches into its log end: a cluster's leader
            // steps down; the only replica restarts from the log.
            self.reset_to_log_end();
            // Every batch above the durable end was dropped: the replica tells its producers.
            let mut failed = Vec::new();
            self.replication.borrow_mut().replica.fail_answers(&mut failed);
            for a in failed {
                if let Action::Answer { token, .. } = a {
                    if let Some(tx) = self.waiting.borrow_mut().remove(&token) {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
            }
        }
        // (Also what `while_paused` waits for: no job in flight any more.)
        if !committed || failed {
            self.data_arrived.notify_all();
        }
    }

    /// Reads whole batches from the one containing `offset`; waits up to `max_wait` when
    /// nothing is committed there yet. Never returns data at or above the high watermark.
    pub async fn fetch(&self, offset: u64, max_bytes: usize, max_wait: Duration) -> Result<Vec<Bytes>, StorageError> {
        match self.fetch_from_log(offset, max_bytes, max_wait).await {
            // A cluster replica repairs damage from the others (`shard/cluster.rs`): to the
            // reader, it is a replica that serves nothing for now; another one will.
            Err(StorageError::Corrupt(_)) if self.is_replicated() => Err(StorageError::NotLeader(None)),
            result => result,
        }
    }

    async fn fetch_from_log(
        &self,
        offset: u64,
        max_bytes: usize,
        max_wait: Duration,
    ) -> Result<Vec<Bytes>, StorageError> {
        let deadline = std::time::Instant::now() + max_wait;
        loop {
            let hw = self.high_watermark();
            let plan = self.log.borrow().plan_read(offset, max_bytes, hw)?;
            let chunks = match plan {
                ReadPlan::Ready(chunks) => chunks,
                ReadPlan::Disk(read) => match read.run().await {
                    Ok(bytes) if bytes.is_empty() => Vec::new(),
                    Ok(bytes) => vec![bytes],
                    Err(StorageError::Corrupt(why)) => return Err(self.mark_corrupt(&why).await),
                    Err(e) => return Err(e),
                },
            };
            let now = std::time::Instant::now();
            if !chunks.is_empty() || now >= deadline || self.closing.get() {
                return Ok(chunks);
            }
            if self.data_arrived.len() > PRUNE_WAITERS_ABOVE {
                self.data_arrived.prune();
            }
            let arrived = self.data_arrived.wait();
            rt::timeout(deadline - now, arrived).await;
        }
    }

    async fn mark_corrupt(&self, why: &str) -> StorageError {
        let (path, bytes) = self.log.borrow_mut().mark_corrupt(why);
        if let Err(e) = self.disk.write_file_atomic(&path, bytes).await {
            log::error!("could not persist the corruption marker {}: {e}", path.display());
        }
        StorageError::Corrupt(why.to_string())
    }

    /// Visits the committed batches from the one holding `offset` on, in order, until
    /// `visit` returns a value or the high watermark is reached.
    pub async fn scan_committed<T>(
        &self,
        mut offset: u64,
        mut visit: impl FnMut(&BatchHeader, &[u8]) -> Result<Option<T>, StorageError>,
    ) -> Result<Option<T>, StorageError> {
        while offset < self.high_watermark() {
            let chunks = self.fetch(offset, 1 << 20, Duration::ZERO).await?;
            if chunks.is_empty() {
                break;
            }
            for chunk in &chunks {
                for item in BatchIter::new(chunk) {
                    let (header, bytes) = item.map_err(|e| StorageError::Corrupt(e.to_string()))?;
                    if let Some(found) = visit(&header, bytes)? {
                        return Ok(Some(found));
                    }
                    offset = offset.max(header.next_offset());
                }
            }
        }
        Ok(None)
    }

    /// The first offset whose record timestamp is at least `ts`, or the high watermark.
    pub async fn offset_for_timestamp(&self, ts: i64) -> Result<u64, StorageError> {
        let Some(start) = self.log.borrow().timestamp_scan_start(ts) else { return Ok(self.high_watermark()) };
        let found = self
            .scan_committed(start, |header, bytes| {
                if header.max_timestamp < ts {
                    return Ok(None);
                }
                for rec in RecordIter::new(bytes, header) {
                    let rec = rec.map_err(|e| StorageError::Corrupt(e.to_string()))?;
                    if rec.offset >= start && rec.timestamp >= ts {
                        return Ok(Some(rec.offset));
                    }
                }
                Ok(None)
            })
            .await?;
        Ok(found.unwrap_or_else(|| self.high_watermark()))
    }

    /// Records the durable end as the log's recovery point, if it moved (see
    /// [`crate::storage::log::RECOVERY_POINT_FILE`]): periodically and at a clean close.
    pub async fn checkpoint_recovery_point(&self) {
        let (durable, recorded, healthy) = {
            let log = self.log.borrow();
            (log.durable_offset(), log.recovery_point(), matches!(log.health(), LogHealth::Healthy))
        };
        if !healthy || durable == recorded {
            return;
        }
        let generation = self.log_generation.get();
        match crate::storage::log::write_recovery_point(&self.disk, &self.dir, durable).await {
            // (A truncation that ran meanwhile lowered it itself, and replaced the log.)
            Ok(()) if self.log_generation.get() == generation => self.log.borrow_mut().note_recovery_point(durable),
            Ok(()) => {}
            Err(e) => log::warn!("{}/{}: cannot record the recovery point: {e}", self.topic, self.id),
        }
    }

    /// Before cutting the log at `offset`: a recovery point above the cut would make the cut
    /// look like damage to durable batches at the next start.
    async fn lower_recovery_point(&self, offset: u64) -> Result<(), StorageError> {
        if self.log.borrow().recovery_point() > offset {
            crate::storage::log::write_recovery_point(&self.disk, &self.dir, offset).await?;
            self.log.borrow_mut().note_recovery_point(offset);
        }
        Ok(())
    }

    /// Applies retention and deletes the files of dropped segments.
    pub async fn apply_retention(&self) {
        let removed = self.log.borrow_mut().apply_retention(rt::now_ms());
        self.remove_segment_files(removed).await;
    }

    /// Drops the whole segments that end at or below `offset` (a compacted log: what they
    /// hold is superseded) and deletes their files.
    pub async fn remove_segments_below(&self, offset: u64) {
        let removed = self.log.borrow_mut().remove_segments_below(offset);
        self.remove_segment_files(removed).await;
    }

    /// After segments were dropped from the front of the log: the producer table, the
    /// followers and the disk learn the new log start.
    async fn remove_segment_files(&self, removed: Vec<std::path::PathBuf>) {
        if removed.is_empty() {
            return;
        }
        let log_start = self.log.borrow().log_start_offset();
        self.producers.borrow_mut().forget_before(log_start);
        // A leader sends followers nothing older from now on.
        self.replication.borrow_mut().replica.set_log_start(log_start);
        for path in removed {
            if let Err(e) = self.disk.remove_file(&path).await {
                log::warn!("retention: {e}");
            }
        }
        remove_producer_snapshots(&self.disk, &self.dir, |at| at < log_start).await;
    }

    pub fn status(&self, leader: u32) -> PartitionStatus {
        let high_watermark = self.high_watermark();
        let log = self.log.borrow();
        let state = match log.health() {
            LogHealth::Healthy => "ok".to_string(),
            LogHealth::Corrupt(why) => format!("corrupt: {why}"),
            LogHealth::Failed { reason, .. } => format!("stopped: {reason}"),
        };
        PartitionStatus {
            partition: self.id,
            leader,
            log_start_offset: log.log_start_offset(),
            high_watermark,
            log_end_offset: log.next_offset(),
            segments: log.segment_count() as u32,
            size_bytes: log.size_bytes(),
            state,
        }
    }

    /// Stops accepting appends, lets the writer flush what is pending, and waits for it;
    /// then makes everything durable (with `flush = interval`) and snapshots the producer
    /// table at the log end, so the next start needs no replay.
    pub async fn close(&self) {
        self.closing.set(true);
        self.wake_writer.notify();
        while self.writer_running.get() {
            self.writer_done.notified().await;
        }
        if let FlushPolicy::IntervalMs(_) = self.flush {
            self.sync_now().await;
        }
        if !self.log.borrow().has_unsynced() {
            self.snapshot_producers().await;
        }
        self.checkpoint_recovery_point().await;
        self.data_arrived.notify_all();
    }

    /// Starts a controlled shutdown of this replica (see `draining`).
    pub fn start_draining(&self) {
        self.draining.set(true);
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}

/// What `log` holds as `flush` defines it (see [`Partition::local_end`]).
fn local_end_of<D: Disk>(log: &PartitionLog<D>, flush: FlushPolicy) -> u64 {
    match flush {
        FlushPolicy::Always => log.durable_offset(),
        FlushPolicy::IntervalMs(_) => log.written_offset(),
    }
}

/// Offsets of the producer snapshots in a partition directory, ascending.
async fn producer_snapshots<D: Disk>(disk: &D, dir: &std::path::Path) -> Result<Vec<u64>, StorageError> {
    let mut offsets: Vec<u64> = disk
        .list_dir(dir)
        .await?
        .iter()
        .filter_map(|n| n.strip_suffix(PRODUCER_SNAPSHOT_SUFFIX).and_then(|o| o.parse().ok()))
        .collect();
    offsets.sort_unstable();
    Ok(offsets)
}

/// Removes the producer snapshots whose offset `doomed` picks (failures are logged: a stale
/// snapshot is also ignored when the table is loaded).
async fn remove_producer_snapshots<D: Disk>(disk: &D, dir: &std::path::Path, doomed: impl Fn(u64) -> bool) {
    let Ok(offsets) = producer_snapshots(disk, dir).await else { return };
    for at in offsets.into_iter().filter(|&at| doomed(at)) {
        let path = dir.join(format!("{at:020}{PRODUCER_SNAPSHOT_SUFFIX}"));
        if let Err(e) = disk.remove_file(&path).await {
            log::warn!("removing {}: {e}", path.display());
        }
    }
}

/// The producer table of a log just opened: the newest usable snapshot at or below its end,
/// then every batch header after it. Snapshots beyond the end (the log lost or cut that
/// data since) are deleted first: they describe batches that are not there.
async fn load_producer_table<D: Disk>(
    disk: &D,
    dir: &std::path::Path,
    log: &RefCell<PartitionLog<D>>,
) -> Result<ProducerTable, StorageError> {
    let (healthy, end, log_start, written) = {
        let log = log.borrow();
        (matches!(log.health(), LogHealth::Healthy), log.next_offset(), log.log_start_offset(), log.written_offset())
    };
    if !healthy {
        return Ok(ProducerTable::default());
    }
    remove_producer_snapshots(disk, dir, |at| at > end).await;
    let mut table = ProducerTable::default();
    let mut replay_from = log_start;
    for at in producer_snapshots(disk, dir).await?.into_iter().rev().filter(|&at| at <= end) {
        let path = dir.join(format!("{at:020}{PRODUCER_SNAPSHOT_SUFFIX}"));
        let Some(bytes) = disk.read_file(&path).await? else { continue };
        match ProducerTable::decode_snapshot(&bytes) {
            Ok((offset, t)) if offset == at => {
                table = t;
                replay_from = replay_from.max(at);
                break;
            }
            Ok(_) => log::warn!("{}: names another offset; ignored", path.display()),
            Err(e) => log::warn!("{}: {e}; ignored", path.display()),
        }
    }
    table.forget_before(log_start);
    visit_batch_headers(log, replay_from, |header| table.observe(header, written)).await?;
    Ok(table)
}

/// Reads the header of every batch from the one at `from` to the log end (written or not,
/// committed or not), in order. For rebuilding state when a log is opened.
async fn visit_batch_headers<D: Disk>(
    log: &RefCell<PartitionLog<D>>,
    mut offset: u64,
    mut visit: impl FnMut(&BatchHeader),
) -> Result<(), StorageError> {
    let end = log.borrow().next_offset();
    while offset < end {
        let plan = log.borrow().plan_read(offset, 1 << 20, end)?;
        let chunks = match plan {
            ReadPlan::Ready(c) => c,
            ReadPlan::Disk(read) => vec![read.run().await?],
        };
        let before = offset;
        for chunk in &chunks {
            for item in BatchIter::new(chunk) {
                let (header, _) = item.map_err(|e| StorageError::Corrupt(e.to_string()))?;
                if header.base_offset >= offset {
                    visit(&header);
                    offset = header.next_offset();
                }
            }
        }
        if offset == before {
            break;
        }
    }
    Ok(())
}
