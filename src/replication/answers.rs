//! Produces waiting for their acknowledgement. The replica decides when each is answered and
//! how ([`Action::Answer`]); the driver only delivers the answer to the connection that
//! waits. (Before, the driver compared offsets with its own copy of the high watermark, so
//! the state machine did not say when a produce was acknowledged.)

use std::collections::VecDeque;

use super::{Action, Epoch, NodeId};

/// What an acknowledgement waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckLevel {
    /// This replica's own log (durable with `flush = always`).
    Local,
    /// The high watermark: a majority of the replicas (just this one without replication).
    Quorum,
    /// Every in-sync replica, and the high watermark.
    All,
}

/// How a waiting produce is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Its level holds: acknowledge it.
    Acknowledged,
    /// This replica no longer leads the epoch the produce was taken in (or, for `quorum`
    /// and `all`, leads no longer at all): a new leader may or may not keep the batch, so
    /// the producer retries there (deduplication makes that safe).
    NotLeader(Option<NodeId>),
    /// The log failed before the batch was durable: the batch is gone from the log.
    LogFailed,
}

/// One produce waiting.
#[derive(Debug, Clone)]
struct Waiting {
    token: u64,
    /// The batch ends before this offset.
    end: u64,
    level: AckLevel,
    /// The epoch this replica led when the produce was taken, if it led: once it leads no
    /// longer in that epoch the batch may have been cut and its offsets taken by another
    /// leader's batches, whatever the high watermark says.
    leading: Option<Epoch>,
}

/// What the replica knows that decides the answers.
pub(super) struct Standing<'a> {
    pub leading: Option<Epoch>,
    pub leader: Option<NodeId>,
    pub durable_end: u64,
    pub high_watermark: u64,
    /// Whether every in-sync replica durably holds everything below an offset.
    pub all_in_sync_hold: &'a dyn Fn(u64) -> bool,
}

/// The produces a replica has yet to answer, in arrival order.
#[derive(Debug, Default, Clone)]
pub struct Answers {
    waiting: VecDeque<Waiting>,
}

impl Answers {
    pub(super) fn push(&mut self, token: u64, end: u64, level: AckLevel, leading: Option<Epoch>) {
        self.waiting.push_back(Waiting { token, end, level, leading });
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Answers every produce whose fate is decided; keeps the others.
    pub(super) fn settle(&mut self, now: &Standing<'_>, out: &mut Vec<Action>) {
        self.waiting.retain(|w| match decide(w, now) {
            Some(answer) => {
                out.push(Action::Answer { token: w.token, answer });
                false
            }
            None => true,
        });
    }

    /// Answers every produce with `answer`.
    pub(super) fn answer_all(&mut self, answer: Answer, out: &mut Vec<Action>) {
        out.extend(self.waiting.drain(..).map(|w| Action::Answer { token: w.token, answer }));
    }

    /// Forgets the produces `keep` does not want answered (their producers gave up).
    pub(super) fn retain(&mut self, keep: impl Fn(u64) -> bool) {
        self.waiting.retain(|w| keep(w.token));
    }

    /// Moves every waiting produce into `other` (a replica rebuilt from the log).
    pub(super) fn move_into(&mut self, other: &mut Answers) {
        other.waiting.append(&mut self.waiting);
    }
}

fn decide(w: &Waiting, now: &Standing<'_>) -> Option<Answer> {
    if w.leading.is_some() && w.leading != now.leading {
        return Some(Answer::NotLeader(now.leader));
    }
    let holds = match w.level {
        AckLevel::Local => now.durable_end >= w.end,
        AckLevel::Quorum => now.high_watermark >= w.end,
        AckLevel::All => now.high_watermark >= w.end && (now.all_in_sync_hold)(w.end),
    };
    if holds {
        return Some(Answer::Acknowledged);
    }
    match (now.leading, w.level) {
        (None, AckLevel::Quorum | AckLevel::All) => Some(Answer::NotLeader(now.leader)),
        _ => None,
    }
}
