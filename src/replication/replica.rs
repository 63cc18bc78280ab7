//! One replica of one partition, as a pure state machine.
//!
//! Events: [`Replica::append`] (a producer's batch, on the leader), [`Replica::on_peer`],
//! [`Replica::on_control`], [`Replica::on_durable`] (a flush completed), [`Replica::tick`].
//! Each returns [`Action`]s for the driver to carry out in order.
//!
//! State that must be durable: the log (through `AppendLocal`/`AppendReplicated`/`Truncate`
//! and the flushes reported by `on_durable`) and the epoch (`PersistEpoch`). Everything else
//! is rebuilt after a restart by [`Replica::recover`].

use std::collections::BTreeMap;

use super::answers::{AckLevel, Answer, Answers, Standing};
use super::{Action, BatchMeta, ControlMessage, Epoch, EpochHistory, NodeId, PeerMessage};

/// Tunables of replication.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// Records a leader sends to a follower beyond what it acknowledged (pipelining window).
    pub window_records: u64,
    /// Records in one append message at most.
    pub max_records_per_message: u64,
    /// A leader sends a heartbeat to a follower that heard nothing for this long.
    pub heartbeat_ms: u64,
    /// Without progress from a follower for this long, the leader resends from its last
    /// acknowledged offset (messages may have been lost).
    pub resend_ms: u64,
    /// A follower that was not caught up for this long leaves the in-sync set.
    pub isr_lag_ms: u64,
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        ReplicaConfig {
            window_records: 1 << 20,
            max_records_per_message: 1 << 14,
            heartbeat_ms: 50,
            resend_ms: 200,
            isr_lag_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone)]
struct Progress {
    /// Next offset to send.
    next: u64,
    /// Durably held by the follower and matching our log.
    matched: u64,
    /// Where the follower's log is believed to match ours (the log end when this leader took
    /// over, or the divergence point a mismatch reported). When nothing in flight was
    /// acknowledged the leader resumes from here, or from `matched` if higher; a wrong belief
    /// costs a mismatch, whereas resuming from an unknown `matched` (0 for a follower that
    /// was down when this leader took over) would send it the whole log again.
    probe: u64,
    last_sent_ms: u64,
    last_progress_ms: u64,
    /// When the follower last matched the leader's log end, either the end now or the end
    /// at its previous acknowledgement (one round trip behind under steady load).
    last_caught_up_ms: u64,
    /// The leader's log end when this follower's previous acknowledgement arrived.
    end_at_last_ack: u64,
}

impl Progress {
    fn resume_point(&self) -> u64 {
        self.matched.max(self.probe)
    }
}

#[derive(Debug, Clone)]
enum Role {
    Leader { followers: BTreeMap<NodeId, Progress> },
    Follower { leader: Option<NodeId> },
}

/// Why the leader refused a produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotLeader {
    /// The replica follows this node (if it knows one).
    Follower { leader: Option<NodeId> },
}

#[derive(Debug, Clone)]
pub struct Replica {
    id: NodeId,
    config: ReplicaConfig,
    epoch: Epoch,
    /// Whether this incarnation was fenced at (or told to lead) `epoch`: a restarted replica
    /// must not lead an epoch it may already have written in before the restart.
    fenced_this_run: bool,
    role: Role,
    replicas: Vec<NodeId>,
    history: EpochHistory,
    log_end: u64,
    durable_end: u64,
    /// Follower: below this, the log is known to match the current leader's.
    verified_end: u64,
    high_watermark: u64,
    now_ms: u64,
    /// Whether this replica's answers to a fence count toward an election. A replica that
    /// lost data it had acknowledged (a wiped directory, a repaired corrupt segment) must not
    /// count until it holds again everything its leader had committed: otherwise it could
    /// outvote the one surviving copy of quorum-acknowledged batches.
    voter: bool,
    /// Follower: the leader's high watermark in the last append it sent.
    leader_hw_seen: u64,
    /// The first offset this replica's log holds (retention removed what is below). A leader
    /// cannot send a follower anything older: it sends from here, and a follower whose log
    /// does not reach this point restarts its log here.
    log_start: u64,
    /// The only replica of its partition ([`Replica::alone`]): no controller, no peers.
    alone: bool,
    /// Produces waiting for their acknowledgement: answered by [`Action::Answer`] from
    /// every entry point that can change what they wait for.
    answers: Answers,
}

impl Replica {
    /// A replica starting from its durable state: the persisted epoch and the log (history
    /// and end). It starts as a follower that knows no leader.
    pub fn recover(id: NodeId, config: ReplicaConfig, epoch: Epoch, history: EpochHistory, log_end: u64) -> Replica {
        Replica {
            id,
            config,
            epoch,
            fenced_this_run: false,
            role: Role::Follower { leader: None },
            replicas: Vec::new(),
            history,
            log_end,
            durable_end: log_end,
            verified_end: 0,
            high_watermark: 0,
            now_ms: 0,
            voter: true,
            leader_hw_seen: 0,
            log_start: 0,
            alone: false,
            answers: Answers::default(),
        }
    }

    /// The only replica of its partition: a single node's, or shared storage's active
    /// node's (a replica set of one). It leads `epoch` from the start, with nobody to fence
    /// or elect it, and everything durable in its log is committed: no other copy exists
    /// that could hold anything else. From here on it is the same state machine as a
    /// cluster's replica (its high watermark the majority, itself, of durable ends).
    /// `log_end` above `durable_end`: recovered batches not yet durable, whose epochs it
    /// does not know; they commit with the first durable batch of its own epoch.
    pub fn alone(id: NodeId, config: ReplicaConfig, epoch: Epoch, log_end: u64, durable_end: u64) -> Replica {
        let durable_end = durable_end.min(log_end);
        Replica {
            id,
            config,
            epoch,
            fenced_this_run: true,
            role: Role::Leader { followers: BTreeMap::new() },
            replicas: vec![id],
            history: EpochHistory::default(),
            log_end,
            durable_end,
            verified_end: log_end,
            high_watermark: durable_end,
            now_ms: 0,
            voter: true,
            leader_hw_seen: 0,
            log_start: 0,
            alone: true,
            answers: Answers::default(),
        }
    }

    /// Whether it is the only replica of its partition (see [`Replica::alone`]).
    pub fn is_alone(&self) -> bool {
        self.alone
    }

    /// A replica that is alone moves on to a newer epoch by itself: shared storage's
    /// fencing epoch, which the node that took the directory over stamps into its batches.
    /// (A cluster's replicas learn epochs from the controller and their leader only.)
    pub fn enter_epoch_alone(&mut self, epoch: Epoch) {
        if self.alone && epoch > self.epoch {
            self.epoch = epoch;
        }
    }

    /// The same replica, durable only below `offset` (a replica restarted from a log with
    /// appends still waiting for the disk).
    pub fn durable_below(mut self, offset: u64) -> Replica {
        self.durable_end = offset.min(self.log_end);
        self
    }

    /// Retention removed the log below `offset` (or the log starts there).
    pub fn set_log_start(&mut self, offset: u64) {
        self.log_start = offset.min(self.log_end);
    }

    pub fn log_start(&self) -> u64 {
        self.log_start
    }

    /// The same replica, not counted in elections until it has caught up with a leader (see
    /// `voter`).
    pub fn without_vote(mut self) -> Replica {
        self.voter = false;
        self
    }

    /// Whether its fence answers count toward elections.
    pub fn is_voter(&self) -> bool {
        self.voter
    }

    /// A replica that was not counted becomes a voter once it durably holds everything its
    /// leader had committed when it last heard from it. Only a high watermark past the
    /// leader's epoch-start batch says that: a new leader's starts lower (its earlier epochs'
    /// batches commit with its epoch-start batch).
    fn regain_vote(&mut self, out: &mut Vec<Action>) {
        let epoch_start = self.history.entries().iter().find(|&&(e, _)| e == self.epoch).map(|&(_, s)| s);
        let leader_committed_its_epoch = epoch_start.is_some_and(|s| self.leader_hw_seen > s);
        if !self.voter && leader_committed_its_epoch && self.durable_match() >= self.leader_hw_seen {
            self.voter = true;
            out.push(Action::PersistEpoch(self.epoch));
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }
    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader { .. })
    }
    pub fn leader(&self) -> Option<NodeId> {
        match &self.role {
            Role::Leader { .. } => Some(self.id),
            Role::Follower { leader } => *leader,
        }
    }
    pub fn high_watermark(&self) -> u64 {
        self.high_watermark
    }
    pub fn log_end(&self) -> u64 {
        self.log_end
    }
    pub fn durable_end(&self) -> u64 {
        self.durable_end
    }
    pub fn history(&self) -> &EpochHistory {
        &self.history
    }
    pub fn config(&self) -> &ReplicaConfig {
        &self.config
    }

    /// Leader: the append message for `[from, to)` of its log (a link sends the batches
    /// of exactly that range with it).
    pub fn append_message(&self, from: u64, to: u64) -> PeerMessage {
        append_message(self.id, self.epoch, &self.history, from, to, self.high_watermark, self.log_start)
    }

    /// The in-sync replicas (the leader and followers caught up within `isr_lag_ms`).
    pub fn in_sync(&self) -> Vec<NodeId> {
        let mut out = vec![self.id];
        if let Role::Leader { followers } = &self.role {
            for (&f, p) in followers {
                if self.now_ms.saturating_sub(p.last_caught_up_ms) <= self.config.isr_lag_ms {
                    out.push(f);
                }
            }
        }
        out
    }

    /// The heartbeat this replica sends the controller.
    pub fn heartbeat(&self) -> ControlMessage {
        let followers = match &self.role {
            Role::Leader { followers } => followers.iter().map(|(&f, p)| (f, p.matched)).collect(),
            Role::Follower { .. } => Vec::new(),
        };
        ControlMessage::Heartbeat {
            from: self.id,
            leading: self.is_leader().then_some(self.epoch),
            high_watermark: self.high_watermark,
            log_end: self.log_end,
            in_sync: if self.is_leader() { self.in_sync() } else { Vec::new() },
            followers,
            epoch: self.epoch,
            fenced_this_run: self.fenced_this_run,
        }
    }

    /// Whether every in-sync replica durably holds everything below `offset` (acks = all).
    pub fn all_in_sync_hold(&self, offset: u64) -> bool {
        let Role::Leader { followers } = &self.role else { return false };
        self.durable_end >= offset
            && followers.iter().all(|(_, p)| {
                p.matched >= offset || self.now_ms.saturating_sub(p.last_caught_up_ms) > self.config.isr_lag_ms
            })
    }

    /// Leader: appends a producer's batch of `record_count` records; returns its base offset.
    pub fn append(&mut self, record_count: u32, out: &mut Vec<Action>) -> Result<u64, NotLeader> {
        if !self.is_leader() {
            return Err(NotLeader::Follower { leader: self.leader() });
        }
        let base = self.append_local(record_count, false, out);
        self.pump(out);
        Ok(base)
    }

    fn append_local(&mut self, record_count: u32, control: bool, out: &mut Vec<Action>) -> u64 {
        let base = self.log_end;
        self.history.observe(self.epoch, base);
        self.log_end += u64::from(record_count);
        out.push(Action::AppendLocal(BatchMeta { base_offset: base, record_count, epoch: self.epoch, control }));
        base
    }

    /// A flush completed: everything below `offset` is durable.
    pub fn on_durable(&mut self, offset: u64, out: &mut Vec<Action>) {
        self.durable_step(offset, out);
        self.settle_answers(out);
    }

    /// Time passes: heartbeats, resends, the controller heartbeat.
    pub fn tick(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        self.tick_step(now_ms, out);
        self.settle_answers(out);
    }

    /// A message from a peer replica.
    pub fn on_peer(&mut self, msg: PeerMessage, out: &mut Vec<Action>) {
        self.peer_step(msg, out);
        self.settle_answers(out);
    }

    /// A message from the controller.
    pub fn on_control(&mut self, msg: ControlMessage, out: &mut Vec<Action>) {
        self.control_step(msg, out);
        self.settle_answers(out);
    }

    /// A produce whose batch ends before `end` waits for `level`: answered with
    /// [`Action::Answer`] carrying `token`, now if its level already holds, else from
    /// whichever later event decides it.
    pub fn answer_when(&mut self, token: u64, end: u64, level: AckLevel, out: &mut Vec<Action>) {
        let leading = self.is_leader().then_some(self.epoch);
        self.answers.push(token, end, level, leading);
        self.settle_answers(out);
    }

    /// The log failed: every waiting produce is told so (its batch is gone from the log).
    pub fn fail_answers(&mut self, out: &mut Vec<Action>) {
        self.answers.answer_all(Answer::LogFailed, out);
    }

    /// Takes over the waiting produces of the replica this one replaces (rebuilt from the
    /// log), and answers those its state already decides.
    pub fn adopt_answers(&mut self, from: &mut Replica, out: &mut Vec<Action>) {
        from.answers.move_into(&mut self.answers);
        self.settle_answers(out);
    }

    /// Forgets the waiting produces whose token `keep` rejects (they timed out: nobody waits
    /// for their answer any more), so that a partition that cannot commit for a long time
    /// does not keep every abandoned produce.
    pub fn retain_answers(&mut self, keep: impl Fn(u64) -> bool) {
        self.answers.retain(keep);
    }

    /// How many produces wait for an answer.
    pub fn waiting_answers(&self) -> usize {
        self.answers.len()
    }

    fn settle_answers(&mut self, out: &mut Vec<Action>) {
        if self.answers.is_empty() {
            return;
        }
        let mut answers = std::mem::take(&mut self.answers);
        let all_in_sync_hold = |offset| self.all_in_sync_hold(offset);
        let now = Standing {
            leading: self.is_leader().then_some(self.epoch),
            leader: self.leader(),
            durable_end: self.durable_end,
            high_watermark: self.high_watermark,
            all_in_sync_hold: &all_in_sync_hold,
        };
        answers.settle(&now, out);
        self.answers = answers;
    }

    fn durable_step(&mut self, offset: u64, out: &mut Vec<Action>) {
        let offset = offset.min(self.log_end);
        if offset <= self.durable_end {
            return;
        }
        self.durable_end = offset;
        match &self.role {
            Role::Leader { .. } => self.advance_high_watermark(out),
            // (What became durable is acknowledged by the appends' `AckWhenDurable`.)
            Role::Follower { .. } => {
                self.regain_vote(out);
                self.follow_high_watermark(out);
            }
        }
    }

    /// Follower: what it durably holds that matches the leader's log.
    fn durable_match(&self) -> u64 {
        self.durable_end.min(self.verified_end)
    }

    fn tick_step(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        if self.alone {
            // No controller to tell, no follower to send to.
            self.now_ms = self.now_ms.max(now_ms);
            return;
        }
        let heartbeat_due = now_ms / self.config.heartbeat_ms != self.now_ms / self.config.heartbeat_ms;
        self.now_ms = self.now_ms.max(now_ms);
        if heartbeat_due {
            out.push(Action::Control(self.heartbeat()));
        }
        let (resend_ms, heartbeat_ms) = (self.config.resend_ms, self.config.heartbeat_ms);
        if let Role::Leader { followers } = &mut self.role {
            for p in followers.values_mut() {
                if p.next > p.resume_point() && now_ms.saturating_sub(p.last_progress_ms) >= resend_ms {
                    // Nothing acknowledged for a while: messages were lost; go back.
                    p.next = p.resume_point();
                    p.last_progress_ms = now_ms;
                }
                if now_ms.saturating_sub(p.last_sent_ms) >= heartbeat_ms {
                    p.last_sent_ms = 0; // forces a (possibly empty) append in pump
                }
            }
            self.pump(out);
        }
    }

    /// Leader: sends every follower what it is missing, within the window.
    fn pump(&mut self, out: &mut Vec<Action>) {
        let Role::Leader { followers } = &mut self.role else { return };
        let log_start = self.log_start;
        for (&f, p) in followers.iter_mut() {
            let mut sent = false;
            // Nothing below the log start can be sent: a follower that lacks it restarts there.
            p.next = p.next.max(log_start);
            while p.next < self.log_end && p.next - p.matched.max(log_start) < self.config.window_records {
                let end = self.log_end.min(p.next + self.config.max_records_per_message);
                out.push(Action::Send(
                    f,
                    append_message(self.id, self.epoch, &self.history, p.next, end, self.high_watermark, log_start),
                ));
                p.next = end;
                p.last_sent_ms = self.now_ms.max(1);
                sent = true;
            }
            if !sent && p.last_sent_ms == 0 {
                // Heartbeat: an empty append where the follower's log is believed to match;
                // its answer confirms that (raising `matched`) or reports the divergence.
                let at = p.resume_point().max(log_start);
                out.push(Action::Send(
                    f,
                    append_message(self.id, self.epoch, &self.history, at, at, self.high_watermark, log_start),
                ));
                p.last_sent_ms = self.now_ms.max(1);
            }
        }
    }

    fn advance_high_watermark(&mut self, out: &mut Vec<Action>) {
        let Role::Leader { followers } = &self.role else { return };
        let mut ends: Vec<u64> = self
            .replicas
            .iter()
            .map(|r| if *r == self.id { self.durable_end } else { followers.get(r).map_or(0, |p| p.matched) })
            .collect();
        ends.sort_unstable_by(|a, b| b.cmp(a));
        // Never beyond its own durable copy, though followers may hold more (the link sends
        // batches before the leader's flush ends): a failed flush drops what the leader had
        // not made durable, and its high watermark would then lie above its log end.
        let quorum = ends.get(self.replicas.len() / 2).copied().unwrap_or(0).min(self.durable_end);
        // Only a batch of the current epoch is committed by counting copies; earlier ones
        // are committed with it (log matching), never alone.
        if quorum > self.high_watermark && self.history.epoch_at(quorum - 1) == Some(self.epoch) {
            self.high_watermark = quorum;
            out.push(Action::Commit(quorum));
        }
    }

    fn adopt_epoch(&mut self, epoch: Epoch, out: &mut Vec<Action>) {
        if epoch > self.epoch {
            self.epoch = epoch;
            self.fenced_this_run = false;
            self.verified_end = 0;
            out.push(Action::PersistEpoch(epoch));
        }
    }

    /// A message from another replica.
    fn peer_step(&mut self, msg: PeerMessage, out: &mut Vec<Action>) {
        if self.alone {
            // It has no peers: whatever claims to be one is not listened to.
            return;
        }
        match msg {
            PeerMessage::Append { epoch, leader, .. } if epoch < self.epoch => {
                out.push(Action::Send(leader, PeerMessage::StaleEpoch { epoch: self.epoch, from: self.id }));
            }
            PeerMessage::Append {
                epoch,
                leader,
                prev_offset,
                prev_epoch,
                end_offset,
                epochs,
                leader_hw,
                log_start,
            } => {
                if epoch > self.epoch || !matches!(self.role, Role::Follower { leader: Some(l) } if l == leader) {
                    debug_assert!(!(self.is_leader() && epoch == self.epoch), "two leaders in epoch {epoch}");
                    self.adopt_epoch(epoch, out);
                    self.role = Role::Follower { leader: Some(leader) };
                }
                let append =
                    LeaderAppend { prev: prev_offset, prev_epoch, end: end_offset, epochs, leader_hw, log_start };
                self.follow(leader, append, out);
            }
            PeerMessage::Ack { epoch, from, durable_match } if epoch == self.epoch => {
                let now = self.now_ms;
                let log_end = self.log_end;
                if let Role::Leader { followers } = &mut self.role {
                    if let Some(p) = followers.get_mut(&from) {
                        if durable_match > p.matched {
                            p.matched = durable_match;
                            p.last_progress_ms = now;
                        }
                        p.next = p.next.max(p.matched);
                        if p.matched >= log_end.min(p.end_at_last_ack) {
                            p.last_caught_up_ms = now;
                        }
                        p.end_at_last_ack = log_end;
                    }
                    self.advance_high_watermark(out);
                    self.pump(out);
                }
            }
            PeerMessage::Mismatch { epoch, from, log_end, history } if epoch == self.epoch => {
                let diverge = self.history.divergence(self.log_end, &history, log_end);
                if let Role::Leader { followers } = &mut self.role {
                    if let Some(p) = followers.get_mut(&from) {
                        if diverge == p.probe && p.next > diverge && p.matched <= diverge {
                            // The answer to another message sent before the follower got the
                            // resend from this point, which is on its way (or lost: then the
                            // resend timer goes back here). Rewinding for every such answer
                            // would send a window per message in flight, each answered the
                            // same way: a storm.
                            return;
                        }
                        p.matched = p.matched.min(diverge);
                        p.next = diverge;
                        p.probe = diverge;
                        p.last_sent_ms = 0;
                    }
                    self.pump(out);
                }
            }
            PeerMessage::StaleEpoch { epoch, .. } if epoch > self.epoch => {
                self.adopt_epoch(epoch, out);
                self.role = Role::Follower { leader: None };
            }
            // Answers to an older epoch of ours, or duplicates: nothing to do.
            PeerMessage::Ack { .. } | PeerMessage::Mismatch { .. } | PeerMessage::StaleEpoch { .. } => {}
        }
    }

    /// Follower side of an append: check the previous batch, cut a divergent tail, append
    /// what is new, acknowledge.
    fn follow(&mut self, leader: NodeId, append: LeaderAppend, out: &mut Vec<Action>) {
        let LeaderAppend { prev, prev_epoch, end, epochs, leader_hw, log_start } = append;
        let mut prev_matches = prev <= self.log_end && (prev == 0 || self.history.epoch_at(prev - 1) == prev_epoch);
        if !prev_matches && prev > 0 && prev == log_start {
            // The leader holds nothing older, and what this log holds there is missing or
            // divergent (log matching: a batch that differs at `prev - 1` means every later
            // one differs too), so none of it is of use: start over where the leader's log
            // starts.
            self.restart_log_at(prev, prev_epoch, out);
            prev_matches = true;
        }
        if !prev_matches {
            out.push(Action::Send(
                leader,
                PeerMessage::Mismatch {
                    epoch: self.epoch,
                    from: self.id,
                    log_end: self.log_end,
                    history: self.history.clone(),
                },
            ));
            return;
        }
        // Where the leader's range and ours first disagree: truncate there.
        let theirs = EpochHistory { starts: epochs };
        let overlap_end = end.min(self.log_end);
        let mut keep = overlap_end;
        let mut o = prev;
        while o < overlap_end {
            if self.history.epoch_at(o) != theirs.epoch_at(o) {
                keep = o;
                break;
            }
            // Jump to the next boundary of either history.
            let next_boundary = self
                .history
                .starts
                .iter()
                .chain(&theirs.starts)
                .map(|&(_, s)| s)
                .filter(|&s| s > o)
                .min()
                .unwrap_or(overlap_end);
            o = next_boundary;
        }
        if keep < self.log_end && keep < end {
            out.push(Action::Truncate(keep));
            self.history.truncate(keep);
            self.log_end = keep;
            self.durable_end = self.durable_end.min(keep);
        }
        if end > self.log_end {
            for &(e, s) in &theirs.starts {
                let start = s.max(self.log_end);
                if start < end && theirs.epoch_at(start) == Some(e) {
                    self.history.observe(e, start);
                }
            }
            out.push(Action::AppendReplicated { from: self.log_end, to: end });
            self.log_end = end;
        }
        self.verified_end = self.verified_end.max(end);
        self.leader_hw_seen = leader_hw;
        self.regain_vote(out);
        self.follow_high_watermark(out);
        if end > self.durable_end {
            out.push(Action::AckWhenDurable { leader, through: end });
        } else {
            out.push(Action::Send(leader, self.ack()));
        }
    }

    /// Follower: the leader's high watermark, as far as this replica durably holds the
    /// leader's log. Not beyond what is durable here: a write that fails drops what it had
    /// not made durable, and a high watermark above the log end would have served it.
    fn follow_high_watermark(&mut self, out: &mut Vec<Action>) {
        let hw = self.leader_hw_seen.min(self.durable_match());
        if hw > self.high_watermark {
            self.high_watermark = hw;
            out.push(Action::Commit(hw));
        }
    }

    /// Follower: the acknowledgement of what it durably holds that matches the leader's log.
    pub fn ack(&self) -> PeerMessage {
        PeerMessage::Ack { epoch: self.epoch, from: self.id, durable_match: self.durable_match() }
    }

    /// Follower: empties the log and starts it at `offset`, after a batch of `prev_epoch`.
    fn restart_log_at(&mut self, offset: u64, prev_epoch: Option<Epoch>, out: &mut Vec<Action>) {
        out.push(Action::RestartLogAt(offset));
        self.history = EpochHistory::default();
        if let Some(e) = prev_epoch {
            // What the next append's previous-batch check needs: the epoch at `offset - 1`.
            self.history.observe(e, offset - 1);
        }
        self.log_start = offset;
        self.log_end = offset;
        self.durable_end = offset;
        self.verified_end = offset;
    }

    /// A message from the controller.
    fn control_step(&mut self, msg: ControlMessage, out: &mut Vec<Action>) {
        if self.alone {
            // Nobody fences or elects the only replica.
            return;
        }
        match msg {
            ControlMessage::Fence { epoch } if epoch >= self.epoch => {
                if epoch > self.epoch || self.is_leader() {
                    self.adopt_epoch(epoch, out);
                    self.role = Role::Follower { leader: None };
                }
                self.fenced_this_run = true;
                // A replica that lost data answers too, saying so: it does not count toward a
                // majority, but when every replica answers, what it holds is in sight.
                let last_epoch = if self.durable_end == 0 { None } else { self.history.epoch_at(self.durable_end - 1) };
                out.push(Action::Control(ControlMessage::Fenced {
                    epoch,
                    from: self.id,
                    last_epoch,
                    durable_end: self.durable_end,
                    voter: self.voter,
                }));
            }
            ControlMessage::BecomeLeader { epoch, replicas, unanimous } => {
                let already = self.is_leader() && self.epoch == epoch;
                // Never lead an epoch this replica may have written in before a restart, nor
                // while it may lack committed batches, unless every replica answered and it
                // holds the most of what survives.
                let fresh = epoch > self.epoch || (epoch == self.epoch && self.fenced_this_run);
                if already || !fresh || !(self.voter || unanimous) {
                    return;
                }
                self.adopt_epoch(epoch, out);
                self.fenced_this_run = true;
                if !self.voter {
                    // Its log is now the partition's: it counts again (persisted with the epoch).
                    self.voter = true;
                    out.push(Action::PersistEpoch(epoch));
                }
                let now = self.now_ms;
                let followers = replicas
                    .iter()
                    .filter(|&&r| r != self.id)
                    .map(|&r| {
                        (
                            r,
                            Progress {
                                next: self.log_end,
                                matched: 0,
                                probe: self.log_end,
                                last_sent_ms: 0,
                                last_progress_ms: now,
                                last_caught_up_ms: now,
                                end_at_last_ack: self.log_end,
                            },
                        )
                    })
                    .collect();
                self.replicas = replicas;
                self.role = Role::Leader { followers };
                // The epoch-start marker lets batches of earlier epochs commit promptly.
                self.append_local(1, true, out);
                self.pump(out);
            }
            ControlMessage::BecomeFollower { epoch, leader, replicas } if epoch >= self.epoch => {
                self.replicas = replicas;
                if epoch > self.epoch || !matches!(self.role, Role::Follower { leader: Some(l) } if l == leader) {
                    self.adopt_epoch(epoch, out);
                    self.role = Role::Follower { leader: Some(leader) };
                }
            }
            _ => {}
        }
    }
}

/// What a leader's append says, for the follower.
struct LeaderAppend {
    prev: u64,
    prev_epoch: Option<Epoch>,
    end: u64,
    epochs: Vec<(Epoch, u64)>,
    leader_hw: u64,
    log_start: u64,
}

fn append_message(
    leader: NodeId,
    epoch: Epoch,
    history: &EpochHistory,
    from: u64,
    to: u64,
    leader_hw: u64,
    log_start: u64,
) -> PeerMessage {
    let prev_epoch = if from == 0 { None } else { history.epoch_at(from - 1) };
    // The history entries that cover [from, to): the one in force at `from` and later ones.
    let first = history.starts.partition_point(|&(_, s)| s <= from).saturating_sub(1);
    let epochs = history.starts[first..].iter().copied().filter(|&(_, s)| s < to.max(from + 1)).collect();
    PeerMessage::Append { epoch, leader, prev_offset: from, prev_epoch, end_offset: to, epochs, leader_hw, log_start }
}

#[cfg(test)]
mod tests;
