//! A partition's replication: the sans-IO [`Replica`] driven by the partition's log.
//!
//! The replica decides; this module carries its actions out: appends go to the log, a
//! truncation cuts the log files, the epoch and the epoch history are written to
//! `replica.json` before anything that depends on them, messages leave through an
//! [`Outbound`] (the shard's links to other nodes and to the control plane).
//!
//! Invariant: the replica's log end always equals the log's next offset.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{AckLevel, Partition};
use crate::protocol::batch::{stamp_batch, BatchBuilder, BatchIter};
use crate::replication::replica::{Replica, ReplicaConfig};
use crate::replication::{Action, ControlMessage, Epoch, EpochHistory, NodeId, PeerMessage};
use crate::rt;
use crate::storage::{Disk, StorageError};

const REPLICA_STATE_FILE: &str = "replica.json";

/// Where a partition's replication messages go.
pub trait Outbound {
    /// To the replica on node `to`. A non-empty `Append` names a range of this partition's
    /// log; the link reads those batches from the log when it sends them.
    fn send(&self, topic: &Rc<str>, topic_id: u64, partition: u32, to: NodeId, msg: PeerMessage);
    /// To the partition's controller.
    fn control(&self, topic: &Rc<str>, topic_id: u64, partition: u32, msg: ControlMessage);
}

/// A partition's replica and what its driver keeps beside it. Every partition has one: a
/// cluster's replica (`enable_replication`), or, on a single node and shared storage's
/// active node, the only replica of a replica set of one (`Replication::alone`), driven by
/// the same code (appends, flushes, the high watermark, acknowledgements).
pub struct Replication {
    pub replica: Replica,
    /// The incarnation of the topic this replica belongs to (`TopicMeta::id`; 0 alone).
    topic_id: u64,
    outbound: Rc<dyn Outbound>,
    /// The epoch and history last written to `replica.json`, and whether it votes (a
    /// replica alone has no `replica.json`: its epoch is the disk's fencing epoch).
    persisted: (Epoch, EpochHistory, bool),
}

/// The node id a replica alone goes by (it has no cluster to be a member of).
const ALONE: NodeId = 0;

/// Where the messages of a replica alone go: nowhere (it has no peers and no controller).
struct NoPeers;
impl Outbound for NoPeers {
    fn send(&self, _: &Rc<str>, _: u64, _: u32, _: NodeId, _: PeerMessage) {}
    fn control(&self, _: &Rc<str>, _: u64, _: u32, _: ControlMessage) {}
}

impl Replication {
    /// The replica set of one of a partition that is the only copy of its data, leading
    /// `epoch` (the disk's fencing epoch): see [`Replica::alone`].
    pub(super) fn alone(epoch: Epoch, log_end: u64, durable_end: u64) -> Replication {
        Replication {
            replica: Replica::alone(ALONE, ReplicaConfig::default(), epoch, log_end, durable_end),
            topic_id: 0,
            outbound: Rc::new(NoPeers),
            persisted: (epoch, EpochHistory::default(), true),
        }
    }

    /// Whether it belongs to a cluster's replica set (not the only copy of the data).
    pub(super) fn in_cluster(&self) -> bool {
        !self.replica.is_alone()
    }
}

/// `replica.json`: what a replica must remember across restarts besides its log.
#[derive(Serialize, Deserialize)]
struct ReplicaState {
    /// The topic's incarnation (0: written before topic ids).
    #[serde(default)]
    topic_id: u64,
    epoch: Epoch,
    history: Vec<(Epoch, u64)>,
    /// Whether its answers count in elections (false from when it lost data until it caught
    /// up again; absent in files written before: true).
    #[serde(default = "counts_in_elections")]
    voter: bool,
}

fn counts_in_elections() -> bool {
    true
}

impl Default for ReplicaState {
    /// A replica without a file yet: a new one, which votes.
    fn default() -> Self {
        ReplicaState { topic_id: 0, epoch: 0, history: Vec::new(), voter: true }
    }
}

/// The `replica.json` in a partition directory (the default when there is none).
async fn read_replica_state<D: Disk>(disk: &D, dir: &std::path::Path) -> Result<ReplicaState, StorageError> {
    let path = dir.join(REPLICA_STATE_FILE);
    match disk.read_file(&path).await? {
        Some(bytes) => {
            serde_json::from_slice(&bytes).map_err(|e| StorageError::Corrupt(format!("{}: {e}", path.display())))
        }
        None => Ok(ReplicaState::default()),
    }
}

/// The incarnation of the topic whose replica a partition directory holds (0: none known).
pub async fn stored_topic_id<D: Disk>(disk: &D, dir: &std::path::Path) -> Result<u64, StorageError> {
    Ok(read_replica_state(disk, dir).await?.topic_id)
}

/// What a follower's replica answered an append from the leader with.
enum ReplyToLeader {
    /// Nothing (a failure made it step back; the leader resends).
    None,
    /// This, at once (an Ack of data already durable, a mismatch, a newer epoch).
    Now(PeerMessage),
    /// Its Ack, once the log is durable through this offset (`Action::AckWhenDurable`).
    WhenDurable(u64),
}

/// What a replica needs besides its log: who it is, which incarnation of the topic, whether
/// it lost data, its tuning and where its messages go.
#[derive(Clone)]
pub struct ReplicaSetup {
    pub node: NodeId,
    pub topic_id: u64,
    /// The replica had data it no longer has (see [`Partition::enable_replication`]).
    pub lost_data: bool,
    pub config: ReplicaConfig,
    pub outbound: Rc<dyn Outbound>,
}

impl<D: Disk> Partition<D> {
    /// Opens a cluster replica: the log (recovering it), then replication. A log found
    /// corrupt is cut where it went bad instead of waiting for an operator (a replica has a
    /// better source: the rest comes again from the partition's leader), and the replica
    /// then counts as having lost data. The shards and the simulator open replicas here.
    pub async fn open_replica(
        disk: D,
        topic: Rc<str>,
        id: u32,
        dir: std::path::PathBuf,
        log_config: crate::storage::LogConfig,
        flush: crate::config::FlushPolicy,
        setup: ReplicaSetup,
    ) -> Result<Rc<Self>, StorageError> {
        let open = |log_config| Partition::open(disk.clone(), topic.clone(), id, dir.clone(), log_config, flush);
        let mut part = open(log_config.clone()).await?;
        let mut lost_data = setup.lost_data;
        if let crate::storage::LogHealth::Corrupt(why) = part.health() {
            log::warn!("{topic}/{id}: {why}; repairing this replica from the partition's leader");
            part.close().await;
            disk.remove_file(&dir.join(crate::storage::log::CORRUPT_MARKER)).await?;
            part = open(crate::storage::LogConfig { truncate_corrupt: true, ..log_config }).await?;
            lost_data = true;
            // Recovery reads only the active segment: damage a read found in a sealed one is
            // still there.
            part.cut_at_first_damage(&why).await?;
        }
        let ReplicaSetup { node, topic_id, config, outbound, .. } = setup;
        let enabled = part.enable_replication(node, topic_id, lost_data, config.clone(), outbound.clone()).await;
        if let Err(StorageError::Corrupt(why)) = &enabled {
            // Damage in a sealed segment, which recovery does not read (it checks the active
            // one): found when the epochs are borne out. Cut the log at the first damaged
            // batch, as for damage in the active segment, and fetch the rest again.
            if part.cut_at_first_damage(why).await? {
                part.enable_replication(node, topic_id, true, config, outbound).await?;
                return Ok(part);
            }
        }
        enabled?;
        Ok(part)
    }

    /// Reads the whole log for the first batch whose CRC fails and cuts the log there (the
    /// replica then fetches the rest again from its leader); whether it found one. `why`:
    /// the damage that sent the replica here, for the log.
    async fn cut_at_first_damage(&self, why: &str) -> Result<bool, StorageError> {
        let Some(offset) = self.first_damaged_offset().await? else { return Ok(false) };
        log::warn!(
            "{}/{}: {why}; the first damaged batch is at offset {offset}: cutting the log there and repairing this replica from the partition's leader",
            self.topic,
            self.id
        );
        self.cut_damaged_log(offset).await?;
        Ok(true)
    }

    /// Where the first batch whose CRC fails begins, reading the whole log (None: none).
    async fn first_damaged_offset(&self) -> Result<Option<u64>, StorageError> {
        let start = self.log.borrow().log_start_offset();
        let mut good_end = start;
        match super::visit_batch_headers(&self.log, start, |h| good_end = h.next_offset()).await {
            Ok(()) => Ok(None),
            Err(StorageError::Corrupt(_)) => Ok(Some(good_end)),
            Err(e) => Err(e),
        }
    }

    /// Cuts the log at `offset` before replication starts (a repair: see `open_replica`).
    async fn cut_damaged_log(&self, offset: u64) -> Result<(), StorageError> {
        self.while_paused(self.truncate_paused(offset)).await
    }

    /// Runs `work` on the files with the writer paused and no log I/O in flight, then lets
    /// the writer go on.
    async fn while_paused<T>(&self, work: impl std::future::Future<Output = T>) -> T {
        self.paused.set(true);
        // Every job's completion passes `after_io`, which wakes `data_arrived`; the timeout
        // only bounds the wait should a completion ever be missed.
        while self.log.borrow().io_in_flight() {
            rt::timeout(Duration::from_millis(100), self.data_arrived.wait()).await;
        }
        let result = work.await;
        self.paused.set(false);
        self.wake_writer.notify();
        result
    }

    /// Turns replication on: recovers the replica from `replica.json` and the log.
    /// `lost_data`: the replica had data it no longer has (its directory was rebuilt or
    /// repaired): it does not count in elections until it caught up (`Replica::without_vote`).
    pub async fn enable_replication(
        &self,
        node: NodeId,
        topic_id: u64,
        lost_data: bool,
        config: ReplicaConfig,
        outbound: Rc<dyn Outbound>,
    ) -> Result<(), StorageError> {
        let state = read_replica_state(&self.disk, &self.dir).await?;
        if state.topic_id != 0 && topic_id != 0 && state.topic_id != topic_id {
            return Err(StorageError::Corrupt(format!(
                "{} holds a replica of incarnation {} of the topic, not {topic_id}",
                self.dir.display(),
                state.topic_id
            )));
        }
        let history = self.history_borne_out(&state.history).await?;
        let log_end = self.log.borrow().next_offset();
        let mut replica = Replica::recover(node, config, state.epoch, history.clone(), log_end);
        replica.set_log_start(self.log.borrow().log_start_offset());
        let voter = state.voter && !lost_data;
        if !voter {
            log::warn!(
                "{}/{}: this replica lost data; it does not count in elections until it has caught up",
                self.topic,
                self.id
            );
            replica = replica.without_vote();
        }
        let stored_topic_id = state.topic_id;
        let mut answered = Vec::new();
        replica.adopt_answers(&mut self.replication.borrow_mut().replica, &mut answered);
        *self.replication.borrow_mut() =
            Replication { replica, topic_id, outbound, persisted: (state.epoch, history, voter) };
        self.run_sync_actions(answered);
        // What the log held when it was opened counted as committed to the replica alone
        // it had until now; a cluster's replica commits only what its leader says.
        self.visible_hw.set(0);
        if stored_topic_id != topic_id || voter != state.voter {
            self.write_replica_state().await?;
        }
        Ok(())
    }

    /// The epoch history of the log as its files hold it. Below the recovery point (what
    /// was durable at the last checkpoint) the persisted entries are trusted as far as the
    /// log bears them out (each is checked against the epoch stamped in the batch at its
    /// start): nothing there was cut or dropped since. Above it the files may hold batches
    /// the persisted history no longer lists (a write that failed after it reached the file,
    /// a truncation cut short by a crash after `replica.json` was rewritten), so that part
    /// is read from the batch headers themselves. A log without any persisted entry (no
    /// `replica.json`) is read whole.
    async fn history_borne_out(&self, entries: &[(Epoch, u64)]) -> Result<EpochHistory, StorageError> {
        let (log_start, log_end) = (self.log.borrow().log_start_offset(), self.log.borrow().next_offset());
        let trusted_end = self.log.borrow().recovery_point().clamp(log_start, log_end);
        let mut history = EpochHistory::default();
        let mut scan_from = trusted_end;
        for &(e, start) in entries {
            if start >= trusted_end {
                break;
            }
            // (An epoch that started before the log start, which retention removed, cannot be
            // checked and needs not be.)
            if start >= log_start && self.batch_epoch_at(start).await? != Some(e) {
                // (Not expected below the recovery point; the headers tell from here.)
                scan_from = start;
                break;
            }
            history.observe(e, start);
        }
        if history.entries().is_empty() {
            scan_from = log_start;
        }
        super::visit_batch_headers(&self.log, scan_from, |header| {
            if history.last_epoch().is_none_or(|l| l < header.leader_epoch) {
                history.observe(header.leader_epoch, header.base_offset);
            }
        })
        .await?;
        Ok(history)
    }

    /// The epoch stamped in the batch that starts at `offset` (None: no batch starts there).
    async fn batch_epoch_at(&self, offset: u64) -> Result<Option<Epoch>, StorageError> {
        let plan = self.log.borrow().plan_read(offset, 1, offset + 1)?;
        let chunks = match plan {
            crate::storage::log::ReadPlan::Ready(c) => c,
            crate::storage::log::ReadPlan::Disk(read) => vec![read.run().await?],
        };
        let first = chunks.first().map(|c| crate::protocol::batch::peek_header(c)).transpose()?;
        Ok(first.filter(|h| h.base_offset == offset).map(|h| h.leader_epoch))
    }

    /// The incarnation of the topic this replica belongs to (0 when it is alone).
    pub fn topic_id(&self) -> u64 {
        self.replication.borrow().topic_id
    }

    /// Whether the partition is a replica of a cluster's replica set (not the only copy of
    /// its data, as on a single node): only then do other nodes' messages reach it.
    pub fn is_replicated(&self) -> bool {
        self.replication.borrow().in_cluster()
    }

    /// The replica's view: (is leader, leader, epoch). A replica alone leads, as node 0.
    pub fn leadership(&self) -> (bool, Option<NodeId>, Epoch) {
        let r = self.replication.borrow();
        (r.replica.is_leader(), r.replica.leader(), r.replica.epoch())
    }

    /// For a link sending `[from, to)` to a follower: the whole batches that cover the
    /// range's start and, within about `max_bytes`, what follows up to its end, and the
    /// append message describing exactly them. The replica counts records and knows nothing
    /// of batches, so its range may begin or end inside one: the message then starts at that
    /// batch's base and ends with the batch holding `to - 1` (a follower takes the overlap
    /// with what it holds as a resend). None when this replica no longer leads `epoch` or
    /// the range is gone.
    pub async fn read_for_follower(
        &self,
        epoch: Epoch,
        from: u64,
        to: u64,
        max_bytes: usize,
    ) -> Option<(PeerMessage, Vec<Bytes>)> {
        let plan = {
            let r = self.replication.borrow();
            if !r.in_cluster() || !r.replica.is_leader() || r.replica.epoch() != epoch {
                return None;
            }
            let log = self.log.borrow();
            log.plan_read(from, max_bytes, log.next_offset()).ok()?
        };
        let chunks = match plan {
            crate::storage::log::ReadPlan::Ready(c) => c,
            crate::storage::log::ReadPlan::Disk(read) => vec![read.run().await.ok()?],
        };
        let mut out = Vec::new();
        let mut start = None;
        let mut end = from;
        for chunk in chunks {
            let mut at = 0;
            for item in BatchIter::new(&chunk) {
                let (header, bytes) = item.ok()?;
                let len = bytes.len();
                let takes = match start {
                    None => header.base_offset <= from && from < header.next_offset(),
                    Some(_) => header.base_offset == end && end < to,
                };
                if takes {
                    start.get_or_insert(header.base_offset);
                    out.push(chunk.slice(at..at + len));
                    end = header.next_offset();
                }
                at += len;
            }
        }
        let start = start?;
        let r = self.replication.borrow();
        if !r.replica.is_leader() || r.replica.epoch() != epoch || end > r.replica.log_end() {
            return None;
        }
        Some((r.replica.append_message(start, end), out))
    }

    /// Carries out actions that need no waiting. Those that do (a truncation, an epoch
    /// write) never come out of the calls that use this. Returns whether one was a
    /// `Commit` (then the waiters were answered and the readers woken).
    pub(super) fn run_sync_actions(&self, actions: Vec<Action>) -> bool {
        let mut committed = false;
        if actions.is_empty() {
            return committed;
        }
        let (outbound, topic_id) = {
            let r = self.replication.borrow();
            (r.outbound.clone(), r.topic_id)
        };
        for a in actions {
            match a {
                Action::Send(to, msg) => outbound.send(&self.topic, topic_id, self.id, to, msg),
                Action::Control(msg) => outbound.control(&self.topic, topic_id, self.id, msg),
                Action::Commit(hw) => {
                    self.visible_hw.set(self.visible_hw.get().max(hw));
                    self.data_arrived.notify_all();
                    committed = true;
                }
                Action::Answer { token, answer } => self.deliver(token, answer),
                // A producer's batch: already in the log (the append made it).
                Action::AppendLocal(meta) if !meta.control => {}
                // A vote regained when a flush completed: `replica.json` records it with the
                // next replicated append (`persist_replica_state` compares the vote too).
                // Until then a restart finds it without a vote, which is the safe side.
                Action::PersistEpoch(_) => {}
                other => log::error!("{}/{}: unexpected replication action {other:?}", self.topic, self.id),
            }
        }
        committed
    }

    /// Time passes: heartbeats, resends, the controller heartbeat.
    pub fn replication_tick(&self, now_ms: u64) {
        let mut actions = Vec::new();
        self.replication.borrow_mut().replica.tick(now_ms, &mut actions);
        self.run_sync_actions(actions);
    }

    /// Leader: a follower's answer.
    pub async fn on_follower_reply(&self, msg: PeerMessage) {
        let mut actions = Vec::new();
        self.replication.borrow_mut().replica.on_peer(msg, &mut actions);
        self.run_actions(actions, &[]).await;
    }

    /// A message from the controller.
    pub async fn on_control(&self, msg: ControlMessage) {
        let _permit = self.follower_lock.acquire_permit(1).await;
        if self.log_failed() && matches!(msg, ControlMessage::Fence { .. }) {
            // (Its durable end and last epoch would be guesses; the controller asks again.)
            return;
        }
        let mut actions = Vec::new();
        self.replication.borrow_mut().replica.on_control(msg, &mut actions);
        self.run_actions(actions, &[]).await;
    }

    /// Follower: an append from the leader with its batches; returns the answer, sent once
    /// the batches are durable here.
    pub async fn on_leader_append(&self, msg: PeerMessage, batches: &[Bytes]) -> Option<PeerMessage> {
        let permit = self.follower_lock.acquire_permit(1).await;
        if self.log_failed() {
            return None;
        }
        let mut actions = Vec::new();
        self.replication.borrow_mut().replica.on_peer(msg, &mut actions);
        // From here until the cut is made, the replica believes in a log the files do not
        // hold yet: no write may complete into it and report its durable end (`after_io`),
        // however long the epoch write before the cut takes.
        let cutting = actions.iter().any(|a| matches!(a, Action::Truncate(_) | Action::RestartLogAt(_)));
        if cutting {
            self.paused.set(true);
        }
        let answer = self.run_actions(actions, batches).await;
        if cutting {
            // (The cut itself resumes the writer; this is for a step that failed before it.)
            self.paused.set(false);
            self.wake_writer.notify();
        }
        // Later appends go ahead while this one waits for its flush (group commit).
        drop(permit);
        match answer {
            ReplyToLeader::WhenDurable(through) => {
                // (After 10 s the ack says what is durable by then, which may be less.)
                let _ = self.wait_committed(through - 1, AckLevel::Local, Duration::from_secs(10)).await;
                Some(self.replication.borrow().replica.ack())
            }
            ReplyToLeader::Now(msg) => Some(msg),
            ReplyToLeader::None => None,
        }
    }

    /// Carries out actions in order; returns the answer the replica gave the leader.
    async fn run_actions(&self, actions: Vec<Action>, batches: &[Bytes]) -> ReplyToLeader {
        let mut answer = ReplyToLeader::None;
        let mut deferred = Vec::new();
        for a in actions {
            match a {
                Action::PersistEpoch(_) => {
                    if let Err(e) = self.persist_replica_state().await {
                        crate::log_limited!(error, "{}/{}: cannot persist the epoch: {e}", self.topic, self.id);
                        // Say nothing rather than act on an epoch we may forget.
                        self.reset_to_log_end();
                        return ReplyToLeader::None;
                    }
                }
                Action::Truncate(offset) => {
                    if let Err(e) = self.truncate(offset).await {
                        crate::log_limited!(error, "{}/{}: truncation to {offset} failed: {e}", self.topic, self.id);
                        self.fail_until_reopened(&e);
                        return ReplyToLeader::None;
                    }
                }
                Action::RestartLogAt(offset) => {
                    if let Err(e) = self.restart_log_at(offset).await {
                        crate::log_limited!(
                            error,
                            "{}/{}: restarting the log at {offset} failed: {e}",
                            self.topic,
                            self.id
                        );
                        self.fail_until_reopened(&e);
                        return ReplyToLeader::None;
                    }
                }
                Action::AppendReplicated { from, to } => {
                    if let Err(e) = self.persist_replica_state().await {
                        crate::log_limited!(error, "{}/{}: cannot persist the epoch history: {e}", self.topic, self.id);
                        // The replica counted the batches into its log: it believes in a log
                        // the partition does not have.
                        self.reset_to_log_end();
                        return ReplyToLeader::None;
                    }
                    if let Err(e) = self.append_replicated(from, to, batches) {
                        crate::log_limited!(
                            error,
                            "{}/{}: replicated append {from}..{to} failed: {e}",
                            self.topic,
                            self.id
                        );
                        self.reset_to_log_end();
                        return ReplyToLeader::None;
                    }
                }
                Action::AppendLocal(meta) if meta.control => {
                    if self.persist_replica_state().await.is_err() {
                        self.reset_to_log_end();
                        return ReplyToLeader::None;
                    }
                    let mut batch = BatchBuilder::control(meta.epoch, rt::now_ms()).to_vec();
                    stamp_batch(&mut batch, meta.base_offset, meta.epoch);
                    let appended = self.log.borrow_mut().append_batch(Bytes::from(batch));
                    if let Err(e) = appended {
                        // (A log that cannot take writes now, such as a full disk at election
                        // time.) Leading without the epoch-start batch would wedge: step down.
                        crate::log_limited!(error, "{}/{}: epoch-start batch: {e}", self.topic, self.id);
                        self.reset_to_log_end();
                        return ReplyToLeader::None;
                    }
                    self.wake_writer.notify();
                }
                Action::AppendLocal(_) => {}
                Action::AckWhenDurable { through, .. } => answer = ReplyToLeader::WhenDurable(through),
                Action::Send(to, msg) => {
                    if matches!(
                        msg,
                        PeerMessage::Ack { .. } | PeerMessage::Mismatch { .. } | PeerMessage::StaleEpoch { .. }
                    ) {
                        answer = ReplyToLeader::Now(msg);
                    } else {
                        deferred.push(Action::Send(to, msg));
                    }
                }
                other => deferred.push(other),
            }
        }
        self.run_sync_actions(deferred);
        answer
    }

    fn append_replicated(&self, from: u64, to: u64, batches: &[Bytes]) -> Result<(), StorageError> {
        let mut log = self.log.borrow_mut();
        for chunk in batches {
            let mut at = 0;
            for item in BatchIter::new(chunk) {
                let (header, bytes) = item?;
                let len = bytes.len();
                if header.base_offset >= from && header.next_offset() <= to {
                    log.append_batch(chunk.slice(at..at + len))?;
                    self.producers.borrow_mut().observe(&header, log.written_offset());
                }
                at += len;
            }
        }
        if log.next_offset() != to {
            return Err(StorageError::Io(format!("the leader's batches end at {} instead of {to}", log.next_offset())));
        }
        drop(log);
        self.wake_writer.notify();
        Ok(())
    }

    /// A truncation or restart of the log failed part of the way: the files may hold
    /// anything between the old log and the new one, so the log stops taking writes until
    /// the writer has reopened it from disk (a rescan), and the replica, which already
    /// believes in the new log, restarts from the reopened one. Until then the replica
    /// takes no append and answers no fence (`log_failed`).
    fn fail_until_reopened(&self, e: &StorageError) {
        if !self.log_failed() {
            self.log.borrow_mut().fail(e);
        }
        self.reset_to_log_end();
        self.wake_writer.notify();
    }

    /// While the log is failed (until the writer reopened it from disk), the replica's idea
    /// of its log (end, epoch history) is not to be trusted: it takes no append and answers
    /// no fence.
    fn log_failed(&self) -> bool {
        matches!(self.health(), crate::storage::log::LogHealth::Failed { .. })
    }

    /// The replica believes in a log the partition's log no longer has (a failed write or
    /// replicated append dropped batches; a failed epoch write or epoch-start append): restart
    /// it from the log, as a follower that knows no leader, in the epoch last persisted. A
    /// leader thereby steps down: its heartbeats say it leads nothing, and the controller
    /// elects anew (possibly this replica again, in a new epoch, once its log works). A
    /// follower asks its leader again.
    pub(super) fn reset_to_log_end(&self) {
        self.reset_replica(None);
    }

    /// After the log was reopened from disk: the replica restarts from it, with the
    /// persisted epoch history as far as the reopened log bears it out (what a truncation
    /// that failed half-way left in the files is whatever the rescan found).
    pub(super) async fn reset_to_reopened_log(&self) {
        let persisted = {
            let r = self.replication.borrow();
            if !r.in_cluster() {
                // (Alone, its epochs matter to nobody: no follower compares logs with it.)
                drop(r);
                self.reset_replica(None);
                return;
            }
            r.persisted.1.entries().to_vec()
        };
        match self.history_borne_out(&persisted).await {
            Ok(history) => self.reset_replica(Some(history)),
            Err(e) => {
                log::error!("{}/{}: cannot read the reopened log's epochs: {e}", self.topic, self.id);
                self.fail_until_reopened(&e);
            }
        }
    }

    /// Restarts the replica from the log (see `reset_to_log_end`), with `history` if given,
    /// else the persisted one cut at the log end: never the replica's own, which may already
    /// hold what a failed step was about to do (a new leader's epochs over a tail not cut).
    fn reset_replica(&self, history: Option<EpochHistory>) {
        let log_end = self.log.borrow().next_offset();
        // (Appends may still wait for the disk: the replica must not count them durable.)
        let durable = self.local_end();
        let mut r = self.replication.borrow_mut();
        let mut replica = if !r.in_cluster() {
            // The only copy restarts from its log, still leading: nobody else could. Its
            // high watermark is what the log holds durably now (after a reopen, what the
            // rescan found).
            let mut replica = Replica::alone(ALONE, r.replica.config().clone(), r.replica.epoch(), log_end, durable);
            replica.set_log_start(self.log.borrow().log_start_offset());
            self.visible_hw.set(replica.high_watermark());
            replica
        } else {
            if r.replica.is_leader() {
                log::warn!("{}/{}: stepping down as leader: its log failed at offset {log_end}", self.topic, self.id);
            }
            let mut history = history.unwrap_or_else(|| r.persisted.1.clone());
            history.truncate(log_end);
            let mut replica =
                Replica::recover(r.replica.id(), r.replica.config().clone(), r.persisted.0, history, log_end)
                    .durable_below(durable);
            replica.set_log_start(self.log.borrow().log_start_offset());
            if !r.persisted.2 {
                replica = replica.without_vote();
            }
            replica
        };
        // The produces still waiting are the new replica's to answer.
        let mut actions = Vec::new();
        replica.adopt_answers(&mut r.replica, &mut actions);
        r.replica = replica;
        drop(r);
        self.run_sync_actions(actions);
    }

    /// Writes the epoch and history to `replica.json` if they changed since the last write.
    async fn persist_replica_state(&self) -> Result<(), StorageError> {
        {
            let r = self.replication.borrow();
            // Called before every replicated append: compare before copying anything. (A
            // replica alone has no `replica.json`: `write_replica_state` skips it.)
            if (r.replica.epoch(), r.replica.history(), r.replica.is_voter())
                == (r.persisted.0, &r.persisted.1, r.persisted.2)
            {
                return Ok(());
            }
        }
        self.write_replica_state().await
    }

    /// Writes `replica.json`: the topic's incarnation, the epoch and the epoch history.
    async fn write_replica_state(&self) -> Result<(), StorageError> {
        let (state, current) = {
            let r = self.replication.borrow();
            if !r.in_cluster() {
                return Ok(());
            }
            let current = (r.replica.epoch(), r.replica.history().clone(), r.replica.is_voter());
            let state = ReplicaState {
                topic_id: r.topic_id,
                epoch: current.0,
                history: current.1.entries().to_vec(),
                voter: current.2,
            };
            (state, current)
        };
        let bytes = serde_json::to_vec(&state).expect("replica state serializes");
        self.disk.write_file_atomic(&self.dir.join(REPLICA_STATE_FILE), bytes).await?;
        self.replication.borrow_mut().persisted = current;
        Ok(())
    }

    /// Removes every batch at and after `offset`: in memory if none was written yet, else
    /// by cutting the files and reopening the log.
    pub(in crate::broker::partition) async fn truncate(&self, offset: u64) -> Result<(), StorageError> {
        log::warn!(
            "{}/{}: truncating the log from offset {offset} to {} (a divergent, uncommitted tail)",
            self.topic,
            self.id,
            self.log.borrow().next_offset()
        );
        self.while_paused(self.truncate_paused(offset)).await?;
        self.persist_replica_state().await
    }

    /// Empties the log and starts it at `offset`: the leader's log starts there, and this
    /// one holds nothing of use below it (it ends before, or diverges).
    pub(in crate::broker::partition) async fn restart_log_at(&self, offset: u64) -> Result<(), StorageError> {
        log::warn!(
            "{}/{}: the leader's log starts at {offset} and this one holds nothing of use before it (it ends \
             at {}): restarting it there",
            self.topic,
            self.id,
            self.log.borrow().next_offset()
        );
        self.while_paused(self.restart_log_paused(offset)).await?;
        self.persist_replica_state().await
    }

    async fn restart_log_paused(&self, offset: u64) -> Result<(), StorageError> {
        self.lower_recovery_point(0).await?;
        let plan = self.log.borrow().plan_restart(offset)?;
        plan.run().await?;
        super::remove_producer_snapshots(&self.disk, &self.dir, |_| true).await;
        self.open_fresh_log().await?;
        let (start, end) = (self.log.borrow().log_start_offset(), self.log.borrow().next_offset());
        if (start, end) != (offset, offset) {
            return Err(StorageError::Io(format!("after the restart the log holds {start}..{end}")));
        }
        Ok(())
    }

    async fn truncate_paused(&self, offset: u64) -> Result<(), StorageError> {
        let written = self.log.borrow().written_offset();
        if offset >= written {
            // Only unwritten batches go: the producer table forgets them exactly.
            self.producers.borrow_mut().truncate(offset);
            return self.log.borrow_mut().drop_unwritten_from(offset);
        }
        self.lower_recovery_point(offset).await?;
        let plan = self.log.borrow().plan_truncation(offset)?;
        plan.run().await?;
        // Written batches go: the table is rebuilt from what the files hold now (and from a
        // snapshot at or below the cut, never one above it).
        super::remove_producer_snapshots(&self.disk, &self.dir, |at| at > offset).await;
        self.open_fresh_log().await?;
        let end = self.log.borrow().next_offset();
        if end != offset {
            return Err(StorageError::Io(format!("after truncation the log ends at {end}")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
