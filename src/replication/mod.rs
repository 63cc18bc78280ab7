//! Replication of a partition's log across its replica set: pure state machines, no I/O.
//!
//! - [`replica::Replica`]: one replica of one partition. Events in (a produce, a message from
//!   a peer, a flush that completed, a tick), [`Action`]s out (append these batches, truncate,
//!   persist the epoch, send this message). The leader streams batches to its followers
//!   without waiting for earlier acknowledgements (a bounded window), and advances the high
//!   watermark to what a majority has made durable.
//! - [`controller::Controller`]: chooses leaders. When a leader is lost it fences the old
//!   epoch on the replicas, waits for a majority to answer with their durable log ends, and
//!   makes the most up-to-date of them leader (by last epoch, then end offset): that replica
//!   holds every committed batch. In a cluster its decisions are replicated with Raft
//!   (openraft); here it is the pure decision logic.
//!
//! Nothing here can block or fail on I/O. The simulator (`src/sim/`, tests) runs them inside
//! the production partition (`broker::partition`) on simulated disks, a seeded, virtual-time
//! network that drops, delays, reorders and duplicates messages, and a simulated metadata
//! log, crashes and restarts nodes, and checks the invariants after every instant.
//!
//! Invariants (checked by the simulator):
//! 1. A committed batch (below some leader's high watermark) is never lost or changed.
//! 2. Every replica's log agrees with the committed log up to that replica's high watermark.
//! 3. A replica's high watermark never decreases while it runs.
//! 4. At most one leader per epoch.
//! 5. Liveness: after a quiet period (no faults), one leader has committed its whole log and
//!    every replica holds that log.
//!
//! What need not hold: a follower may hold a divergent, uncommitted tail for a while (it is
//! never served: readers are bounded by the high watermark); a new leader's high watermark
//! may start below the old leader's (it catches up once its first batch commits).

pub mod answers;
pub mod controller;
pub mod replica;

pub use answers::{AckLevel, Answer};

/// Identifies a node of the cluster.
pub type NodeId = u32;
/// A leadership term of one partition; increases with every election.
pub type Epoch = u32;

fn unknown_epoch() -> Epoch {
    Epoch::MAX
}

/// A record batch as replication sees it: where it sits and which epoch wrote it. The bytes
/// travel beside it (the driver reads them from the log); equal offset and epoch on two
/// replicas mean equal bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMeta {
    pub base_offset: u64,
    pub record_count: u32,
    pub epoch: Epoch,
    /// A control batch (the epoch-start marker a new leader writes), skipped by consumers.
    pub control: bool,
}

impl BatchMeta {
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }
}

/// The start offset of every epoch in a log, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EpochHistory {
    starts: Vec<(Epoch, u64)>,
}

impl EpochHistory {
    /// The epoch of the batch holding `offset` (None before the first batch).
    pub fn epoch_at(&self, offset: u64) -> Option<Epoch> {
        let i = self.starts.partition_point(|&(_, start)| start <= offset);
        (i > 0).then(|| self.starts[i - 1].0)
    }

    pub fn last_epoch(&self) -> Option<Epoch> {
        self.starts.last().map(|&(e, _)| e)
    }

    /// Records that a batch of `epoch` starts at `offset` (the log end).
    pub fn observe(&mut self, epoch: Epoch, offset: u64) {
        if self.last_epoch() != Some(epoch) {
            debug_assert!(self.last_epoch().is_none_or(|last| last < epoch), "epochs only grow along a log");
            self.starts.push((epoch, offset));
        }
    }

    /// Forgets everything at and after `offset` (truncation).
    pub fn truncate(&mut self, offset: u64) {
        self.starts.retain(|&(_, start)| start < offset);
    }

    pub fn entries(&self) -> &[(Epoch, u64)] {
        &self.starts
    }

    /// The first offset where two logs (histories and ends) may differ: below it, both hold
    /// batches of the same epochs at the same offsets, hence the same bytes. Epochs are
    /// constant between history boundaries, so comparing at every boundary suffices.
    pub fn divergence(&self, my_end: u64, other: &EpochHistory, other_end: u64) -> u64 {
        let limit = my_end.min(other_end);
        let mut points: Vec<u64> =
            self.starts.iter().chain(&other.starts).map(|&(_, s)| s).filter(|&s| s < limit).collect();
        points.push(0);
        points.sort_unstable();
        points.dedup();
        points.into_iter().find(|&p| p < limit && self.epoch_at(p) != other.epoch_at(p)).unwrap_or(limit)
    }
}

/// Messages between the replicas of a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerMessage {
    /// Leader -> follower: the leader's batches in `[prev_offset, end_offset)` (the driver
    /// attaches their bytes), after a batch of `prev_epoch` (None at offset 0), with the
    /// leader's epoch history over that range. `prev_offset == end_offset`: a heartbeat.
    Append {
        epoch: Epoch,
        leader: NodeId,
        prev_offset: u64,
        prev_epoch: Option<Epoch>,
        end_offset: u64,
        epochs: Vec<(Epoch, u64)>,
        leader_hw: u64,
        /// The first offset the leader's log holds: it can send nothing older.
        log_start: u64,
    },
    /// Follower -> leader: durably holds everything below `durable_match` that matches the
    /// leader's log.
    Ack { epoch: Epoch, from: NodeId, durable_match: u64 },
    /// Follower -> leader: the batches did not follow this log; here is its shape.
    Mismatch { epoch: Epoch, from: NodeId, log_end: u64, history: EpochHistory },
    /// Any -> stale sender: a newer epoch exists.
    StaleEpoch { epoch: Epoch, from: NodeId },
}

/// Messages between the controller and replicas.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ControlMessage {
    /// Controller -> replica: refuse everything below `epoch`, then report your durable log.
    Fence { epoch: Epoch },
    /// Replica -> controller: fenced at `epoch`; my durable log ends at `durable_end` with
    /// batches of `last_epoch` last. `voter: false`: I lost data I had acknowledged and have
    /// not caught up since; do not count me toward a majority.
    Fenced { epoch: Epoch, from: NodeId, last_epoch: Option<Epoch>, durable_end: u64, voter: bool },
    /// Controller -> replica: lead `epoch` with these replicas. `unanimous`: every replica
    /// answered the fence and this one holds the most (it may lead though it lost data).
    BecomeLeader { epoch: Epoch, replicas: Vec<NodeId>, unanimous: bool },
    /// Controller -> replica: follow `leader` in `epoch`.
    BecomeFollower { epoch: Epoch, leader: NodeId, replicas: Vec<NodeId> },
    /// Replica -> controller: alive; leading `leading` (an epoch) if any. A leader adds its
    /// high watermark, log end, in-sync set and what each follower durably matched (for
    /// status, and to hand leadership back to a preferred replica that caught up).
    Heartbeat {
        from: NodeId,
        leading: Option<Epoch>,
        high_watermark: u64,
        log_end: u64,
        in_sync: Vec<NodeId>,
        followers: Vec<(NodeId, u64)>,
        /// The epoch the replica is in (a heartbeat of an older epoch was sent before the
        /// replica saw this election). Absent from an older node's heartbeat: taken as
        /// current, as that node's controller did.
        #[serde(default = "unknown_epoch")]
        epoch: Epoch,
        /// Whether the replica was fenced in `epoch` since it last started, so that it may
        /// still take up an appointment in it (one that restarted may not).
        #[serde(default)]
        fenced_this_run: bool,
    },
}

/// What a replica asks its driver to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The leader appends a batch at its log end: the client's bytes, or (control) the
    /// epoch-start marker.
    AppendLocal(BatchMeta),
    /// A follower appends the bytes of `[from, to)` that came with the leader's message.
    AppendReplicated { from: u64, to: u64 },
    /// Remove every batch at and after this offset (before any later append).
    Truncate(u64),
    /// Remove every batch and start the log, empty, at this offset: the leader's log starts
    /// there (retention removed what is older) and this log holds nothing of use below it.
    RestartLogAt(u64),
    /// Make the epoch durable before any later `Send` (a fenced replica must stay fenced
    /// across a crash).
    PersistEpoch(Epoch),
    /// Send to a peer replica; `Append` messages are filled with the batches' bytes.
    Send(NodeId, PeerMessage),
    /// Send to the controller.
    Control(ControlMessage),
    /// Follower: answer the leader's append with [`Replica::ack`](replica::Replica::ack)
    /// once this log is durable through `through` (the append just taken is not yet). The
    /// only way a follower acknowledges new data: a driver never builds an Ack of its own.
    AckWhenDurable { leader: NodeId, through: u64 },
    /// The high watermark moved: wake readers.
    Commit(u64),
    /// Answer the produce that waits with `token` ([`replica::Replica::answer_when`]).
    Answer { token: u64, answer: Answer },
}
