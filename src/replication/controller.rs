//! Leader election for one partition, as a pure state machine.
//!
//! When the leader stops sending heartbeats (or says it no longer leads), the controller
//! opens a new epoch: it asks every replica to fence the old one and report its durable log
//! (last epoch, end). Once a majority answered, it appoints the most up-to-date of them
//! (largest last epoch, then largest end). Every committed batch is durable on a majority,
//! that majority meets the answering one, and the log matching property makes the most
//! up-to-date answer hold all of them.
//!
//! In a cluster this runs on the metadata leader and its decisions (the epoch above all)
//! are made durable through Raft before they are sent.

use std::collections::BTreeMap;

use super::{ControlMessage, Epoch, NodeId};

/// What a controller decides, in order. A driver carries them out in that order and makes
/// each `Record…` durable in the metadata log before anything after it: no replica is fenced
/// with an epoch, nor appointed, that a new controller (after a metadata leader change)
/// would not find recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControllerAction {
    /// Record that epoch N is open (it is higher than every epoch recorded before).
    RecordEpoch(Epoch),
    /// Record that `leader` leads `epoch`.
    RecordLeader { epoch: Epoch, leader: NodeId },
    /// Send to a replica.
    Send(NodeId, ControlMessage),
}

#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// A leader silent for this long is replaced.
    pub election_timeout_ms: u64,
    /// Unanswered fences and appointments are sent again after this long.
    pub retry_ms: u64,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig { election_timeout_ms: 600, retry_ms: 100 }
    }
}

#[derive(Debug, Clone)]
struct Election {
    epoch: Epoch,
    /// Each answer: the replica's last epoch, durable end, and whether it votes.
    answers: BTreeMap<NodeId, (Option<Epoch>, u64, bool)>,
    started_ms: u64,
    /// Wait for this replica's answer (for up to an election timeout) rather than settle for
    /// the first majority: the preferred replica in a hand-over to it and in the partition's
    /// first election (all replicas empty; otherwise a new topic would start under another
    /// replica and be handed over an instant later, an extra epoch for nothing); the
    /// caught-up follower a stopping leader hands over to.
    wait_for: Option<NodeId>,
}

#[derive(Debug, Clone)]
pub struct Controller {
    config: ControllerConfig,
    replicas: Vec<NodeId>,
    epoch: Epoch,
    leader: Option<NodeId>,
    election: Option<Election>,
    last_seen_ms: BTreeMap<NodeId, u64>,
    last_retry_ms: u64,
    /// When the last election started (or the controller took over): a leader that says it
    /// does not lead is replaced at most once per retry interval.
    last_election_ms: u64,
    /// When the current leader was appointed.
    appointed_ms: u64,
    now_ms: u64,
    /// Leads when it is alive and holds everything (master-slave's master, hybrid's first
    /// replica); None: no preference.
    preferred: Option<NodeId>,
    last_handover_ms: Option<u64>,
    /// Replicas in a controlled shutdown: leadership moves away from them to a caught-up
    /// follower, and is not given to them while another candidate is as up to date.
    draining: Vec<NodeId>,
    /// The current leader was appointed by every replica's answer (see `try_appoint`).
    unanimous: bool,
}

impl Controller {
    /// A controller for a partition with no leader yet (the first election starts at once).
    pub fn new(config: ControllerConfig, replicas: Vec<NodeId>, epoch: Epoch) -> Controller {
        Controller {
            config,
            replicas,
            epoch,
            leader: None,
            election: None,
            last_seen_ms: BTreeMap::new(),
            last_retry_ms: 0,
            last_election_ms: 0,
            appointed_ms: 0,
            now_ms: 0,
            preferred: None,
            last_handover_ms: None,
            draining: Vec::new(),
            unanimous: false,
        }
    }

    /// A controller taking over a partition whose epoch and leader are known (a new
    /// metadata leader). The leader counts as last heard from at `leader_seen_ms` (when
    /// this node last heard from it at all; `now_ms` if unknown).
    pub fn resume(
        config: ControllerConfig,
        replicas: Vec<NodeId>,
        epoch: Epoch,
        leader: Option<NodeId>,
        leader_seen_ms: u64,
        now_ms: u64,
    ) -> Controller {
        let mut c = Controller::new(config, replicas, epoch);
        c.now_ms = now_ms;
        c.last_retry_ms = now_ms;
        c.last_election_ms = now_ms;
        c.appointed_ms = now_ms;
        if let Some(l) = leader {
            c.leader = Some(l);
            c.last_seen_ms.insert(l, leader_seen_ms.min(now_ms));
        }
        c
    }

    /// Hands leadership to `preferred` whenever it has caught up with the leader.
    pub fn with_preferred(mut self, preferred: Option<NodeId>) -> Controller {
        self.preferred = preferred;
        self
    }

    /// The replicas now in a controlled shutdown (from the metadata).
    pub fn set_draining(&mut self, draining: &[NodeId]) {
        self.draining = draining.to_vec();
    }

    fn is_draining(&self, node: NodeId) -> bool {
        self.draining.contains(&node)
    }

    /// The preferred replica, unless it is stopping.
    fn preferred(&self) -> Option<NodeId> {
        self.preferred.filter(|&p| !self.is_draining(p))
    }

    pub fn replicas(&self) -> &[NodeId] {
        &self.replicas
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// Opens the next epoch and fences the replicas with it. `handover_to`: an election to
    /// hand leadership to that replica, which then waits for its answer (as the partition's
    /// first election waits for the preferred replica's).
    fn start_election(&mut self, handover_to: Option<NodeId>, out: &mut Vec<ControllerAction>) {
        let first = self.epoch == 0;
        self.epoch += 1;
        self.leader = None;
        let wait_for = handover_to.or(if first { self.preferred() } else { None });
        self.election =
            Some(Election { epoch: self.epoch, answers: BTreeMap::new(), started_ms: self.now_ms, wait_for });
        self.last_retry_ms = self.now_ms;
        self.last_election_ms = self.now_ms;
        out.push(ControllerAction::RecordEpoch(self.epoch));
        for &r in &self.replicas {
            out.push(ControllerAction::Send(r, ControlMessage::Fence { epoch: self.epoch }));
        }
    }

    fn appoint(&mut self, leader: NodeId, unanimous: bool, out: &mut Vec<ControllerAction>) {
        self.leader = Some(leader);
        self.unanimous = unanimous;
        self.election = None;
        self.appointed_ms = self.now_ms;
        self.last_seen_ms.insert(leader, self.now_ms);
        out.push(ControllerAction::RecordLeader { epoch: self.epoch, leader });
        self.send_appointments(out);
    }

    fn send_appointments(&self, out: &mut Vec<ControllerAction>) {
        let Some(leader) = self.leader else { return };
        for &r in &self.replicas {
            let msg = if r == leader {
                ControlMessage::BecomeLeader {
                    epoch: self.epoch,
                    replicas: self.replicas.clone(),
                    unanimous: self.unanimous,
                }
            } else {
                ControlMessage::BecomeFollower { epoch: self.epoch, leader, replicas: self.replicas.clone() }
            };
            out.push(ControllerAction::Send(r, msg));
        }
    }

    /// Time passes: detects a silent leader, retries what may have been lost.
    pub fn tick(&mut self, now_ms: u64, out: &mut Vec<ControllerAction>) {
        self.now_ms = self.now_ms.max(now_ms);
        match (self.leader, &self.election) {
            (None, None) => self.start_election(None, out),
            (Some(l), _)
                if self.now_ms.saturating_sub(self.last_seen_ms.get(&l).copied().unwrap_or(0))
                    > self.config.election_timeout_ms =>
            {
                self.start_election(None, out)
            }
            _ => {}
        }
        self.try_appoint(out);
        if self.now_ms.saturating_sub(self.last_retry_ms) >= self.config.retry_ms {
            self.last_retry_ms = self.now_ms;
            match &self.election {
                Some(e) => {
                    for &r in self.replicas.iter().filter(|r| !e.answers.contains_key(r)) {
                        out.push(ControllerAction::Send(r, ControlMessage::Fence { epoch: e.epoch }));
                    }
                }
                None => self.send_appointments(out),
            }
        }
    }

    /// Once a majority of voters answered the fence, appoints the most up-to-date of them
    /// (the preferred replica among equals). Replicas that lost data do not count: they could
    /// outvote the one surviving copy of a committed batch. But when every replica answered,
    /// every surviving copy is in sight, and the most up-to-date of all of them leads
    /// (`unanimous`): otherwise two damaged replicas of three would leave the partition
    /// without a leader for good, since only a leader makes them voters again.
    fn try_appoint(&mut self, out: &mut Vec<ControllerAction>) {
        let Some(e) = &self.election else { return };
        let preferred = self.preferred();
        let waiting = e.wait_for.is_some_and(|p| !e.answers.contains_key(&p))
            && self.now_ms.saturating_sub(e.started_ms) < self.config.election_timeout_ms;
        let voters = e.answers.values().filter(|&&(_, _, voter)| voter).count();
        let voter_majority = voters > self.replicas.len() / 2;
        if waiting || (!voter_majority && e.answers.len() < self.replicas.len()) {
            return;
        }
        // (Without a voter majority, every replica answered.)
        let unanimous = !voter_majority;
        // The most up to date (it holds every committed batch); among equals the preferred
        // replica, and never a stopping one when another is as up to date.
        let best = e
            .answers
            .iter()
            .filter(|(_, &(_, _, voter))| voter || unanimous)
            .max_by_key(|(&id, &(last, end, _))| {
                (last, end, !self.is_draining(id), Some(id) == preferred, std::cmp::Reverse(id))
            })
            .map(|(&id, _)| id);
        if let Some(leader) = best {
            self.appoint(leader, unanimous, out);
        }
    }

    /// A message from a replica.
    pub fn on_message(&mut self, msg: ControlMessage, out: &mut Vec<ControllerAction>) {
        match msg {
            ControlMessage::Heartbeat { from, leading, log_end, followers, epoch, fenced_this_run, .. } => {
                self.last_seen_ms.insert(from, self.now_ms);
                if self.leader == Some(from) && leading == Some(self.epoch) {
                    if let Some(to) = self.handover_target(&followers, log_end) {
                        self.last_handover_ms = Some(self.now_ms);
                        self.start_election(Some(to), out);
                        return;
                    }
                }
                // The appointed leader no longer leads this epoch (it restarted, or stepped down
                // after a failed write): elect anew. Not on a heartbeat sent before it saw this
                // epoch, nor while it was fenced in it this run and its appointment has yet to
                // reach it: under load an election takes longer than the retry interval, and
                // such a heartbeat, crossing the appointment, started the next election each
                // time (a new epoch every 150 ms with 16 partitions, 2026-12-07).
                // (For one election timeout: a replica that cannot take up its appointment is
                // replaced all the same.)
                let awaits_appointment = (epoch < self.epoch || (epoch == self.epoch && fenced_this_run))
                    && self.now_ms.saturating_sub(self.appointed_ms) < self.config.election_timeout_ms;
                if self.leader == Some(from)
                    && leading != Some(self.epoch)
                    && !awaits_appointment
                    && self.now_ms.saturating_sub(self.last_election_ms) >= self.config.retry_ms
                {
                    self.start_election(None, out);
                }
            }
            ControlMessage::Fenced { epoch, from, last_epoch, durable_end, voter } => {
                self.last_seen_ms.insert(from, self.now_ms);
                let Some(e) = &mut self.election else { return };
                if e.epoch != epoch {
                    return;
                }
                e.answers.insert(from, (last_epoch, durable_end, voter));
                self.try_appoint(out);
            }
            _ => {}
        }
    }

    /// The preferred replica is not the leader, is alive and durably holds the leader's
    /// whole log: fence and re-elect so that it takes over (at most once per 10 election
    /// timeouts, so a flapping replica cannot keep the partition electing).
    /// Whom to hand leadership to now, if anyone: a stopping leader hands over to a follower
    /// that durably holds its whole log, at once (a controlled shutdown, retried every retry
    /// interval); otherwise the preferred replica takes it back once it holds the leader's
    /// whole log (at most once per 10 election timeouts, so that a flapping replica cannot
    /// keep the partition electing).
    fn handover_target(&self, followers: &[(NodeId, u64)], log_end: u64) -> Option<NodeId> {
        if self.election.is_some() {
            return None;
        }
        let caught_up = |p: NodeId| followers.iter().any(|&(f, matched)| f == p && matched >= log_end);
        if self.leader.is_some_and(|l| self.is_draining(l)) {
            let recent = self.last_handover_ms.is_some_and(|t| self.now_ms.saturating_sub(t) < self.config.retry_ms);
            let target = self
                .preferred()
                .filter(|&p| caught_up(p))
                .or_else(|| followers.iter().map(|&(f, _)| f).find(|&f| !self.is_draining(f) && caught_up(f)));
            return target.filter(|_| !recent);
        }
        let p = self.preferred()?;
        let quiet =
            self.last_handover_ms.is_none_or(|t| self.now_ms.saturating_sub(t) >= 10 * self.config.election_timeout_ms);
        (self.leader != Some(p) && caught_up(p) && quiet).then_some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fenced(epoch: Epoch, from: NodeId) -> ControlMessage {
        ControlMessage::Fenced { epoch, from, last_epoch: None, durable_end: 0, voter: true }
    }

    fn sent(out: &[ControllerAction]) -> Vec<(NodeId, ControlMessage)> {
        out.iter()
            .filter_map(|a| match a {
                ControllerAction::Send(n, m) => Some((*n, m.clone())),
                _ => None,
            })
            .collect()
    }

    fn appointed(out: &[ControllerAction]) -> Option<NodeId> {
        sent(out).into_iter().find_map(|(n, m)| matches!(m, ControlMessage::BecomeLeader { .. }).then_some(n))
    }

    /// A new partition starts under its preferred replica when it answers within an
    /// election timeout, even if the others formed a majority first.
    #[test]
    fn the_first_election_waits_for_the_preferred_replica() {
        let config = ControllerConfig::default();
        let mut c = Controller::new(config.clone(), vec![1, 2, 3], 0).with_preferred(Some(1));
        let mut out = Vec::new();
        c.tick(0, &mut out);
        assert_eq!(sent(&out).iter().filter(|(_, m)| matches!(m, ControlMessage::Fence { epoch: 1 })).count(), 3);
        assert_eq!(out[0], ControllerAction::RecordEpoch(1), "the epoch is recorded before any fence");
        out.clear();
        c.on_message(fenced(1, 3), &mut out);
        c.on_message(fenced(1, 2), &mut out);
        c.tick(config.election_timeout_ms / 2, &mut out);
        assert_eq!(appointed(&out), None, "a majority without the preferred replica waits");
        out.clear();
        c.on_message(fenced(1, 1), &mut out);
        assert_eq!(appointed(&out), Some(1));
        assert_eq!(out[0], ControllerAction::RecordLeader { epoch: 1, leader: 1 }, "recorded before it is sent");
    }

    /// The wait is bounded: a preferred replica that does not answer is not waited for
    /// longer than an election timeout.
    #[test]
    fn the_first_election_does_not_wait_for_a_dead_preferred_replica() {
        let config = ControllerConfig::default();
        let mut c = Controller::new(config.clone(), vec![1, 2, 3], 0).with_preferred(Some(1));
        let mut out = Vec::new();
        c.tick(0, &mut out);
        c.on_message(fenced(1, 3), &mut out);
        c.on_message(fenced(1, 2), &mut out);
        out.clear();
        c.tick(config.election_timeout_ms, &mut out);
        assert_eq!(appointed(&out), Some(2), "the lowest id among equals");
    }

    /// A controlled shutdown: the stopping leader's partition moves to a caught-up follower
    /// at once, is not handed back to the stopping node (though preferred), and the stopping
    /// node is appointed only if nobody else is as up to date.
    #[test]
    fn a_stopping_leader_hands_over_to_a_caught_up_follower() {
        let config = ControllerConfig::default();
        let mut c = Controller::resume(config.clone(), vec![1, 2, 3], 4, Some(1), 0, 0).with_preferred(Some(1));
        c.set_draining(&[1]);
        let mut out = Vec::new();
        let heartbeat = |followers: Vec<(NodeId, u64)>| ControlMessage::Heartbeat {
            from: 1,
            leading: Some(4),
            high_watermark: 10,
            log_end: 10,
            in_sync: vec![1, 2, 3],
            followers,
            epoch: 4,
            fenced_this_run: true,
        };
        c.on_message(heartbeat(vec![(2, 7), (3, 9)]), &mut out);
        assert!(out.is_empty(), "nobody has the whole log yet");
        c.on_message(heartbeat(vec![(2, 7), (3, 10)]), &mut out);
        assert!(sent(&out).iter().any(|(_, m)| matches!(m, ControlMessage::Fence { epoch: 5 })), "{out:?}");
        out.clear();
        let answer = |from, durable_end| ControlMessage::Fenced {
            epoch: 5,
            from,
            last_epoch: Some(4),
            durable_end,
            voter: true,
        };
        c.on_message(answer(1, 10), &mut out);
        c.on_message(answer(2, 7), &mut out);
        assert_eq!(appointed(&out), None, "a majority, but the caught-up follower has not answered yet");
        c.on_message(answer(3, 10), &mut out);
        assert_eq!(appointed(&out), Some(3), "not the stopping node, though preferred and first to answer");
        // Once node 3 leads with node 1 caught up, no hand-back to the stopping master.
        out.clear();
        c.on_message(
            ControlMessage::Heartbeat {
                from: 3,
                leading: Some(5),
                high_watermark: 11,
                log_end: 11,
                in_sync: vec![1, 2, 3],
                followers: vec![(1, 11), (2, 11)],
                epoch: 5,
                fenced_this_run: true,
            },
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
        // Node 1 is the only one up to date: it is appointed (nothing committed may be lost).
        let mut c = Controller::resume(config, vec![1, 2, 3], 4, Some(1), 0, 0);
        c.set_draining(&[1]);
        c.tick(10_000, &mut out);
        out.clear();
        c.on_message(
            ControlMessage::Fenced { epoch: 5, from: 1, last_epoch: Some(4), durable_end: 10, voter: true },
            &mut out,
        );
        c.on_message(
            ControlMessage::Fenced { epoch: 5, from: 2, last_epoch: Some(4), durable_end: 8, voter: true },
            &mut out,
        );
        assert_eq!(appointed(&out), Some(1));
    }

    /// A failover does not wait: the preferred replica is usually the one that died.
    #[test]
    fn a_failover_election_settles_for_the_first_majority() {
        let config = ControllerConfig::default();
        let mut c = Controller::resume(config.clone(), vec![1, 2, 3], 4, Some(1), 0, 0).with_preferred(Some(1));
        let mut out = Vec::new();
        c.tick(config.election_timeout_ms + 1, &mut out);
        assert!(sent(&out).iter().any(|(_, m)| matches!(m, ControlMessage::Fence { epoch: 5 })));
        out.clear();
        c.on_message(
            ControlMessage::Fenced { epoch: 5, from: 2, last_epoch: Some(4), durable_end: 10, voter: true },
            &mut out,
        );
        c.on_message(
            ControlMessage::Fenced { epoch: 5, from: 3, last_epoch: Some(4), durable_end: 10, voter: true },
            &mut out,
        );
        assert_eq!(appointed(&out), Some(2));
    }

    /// Under load an election takes longer than the retry interval, and a heartbeat the new
    /// leader sent before its appointment reached it arrives after the appointment: that is
    /// no reason for another election (with 16 partitions on a slow disk, each appointment
    /// was followed by the next election, a new epoch every 150 ms). A heartbeat of a leader
    /// that restarted is, and so is one of a leader that did not take up its appointment
    /// within an election timeout.
    #[test]
    fn a_heartbeat_that_crossed_the_appointment_starts_no_election() {
        let config = ControllerConfig::default();
        let mut c = Controller::resume(config.clone(), vec![1, 2, 3], 4, Some(1), 0, 0);
        let mut out = Vec::new();
        let mut now = config.election_timeout_ms + 1;
        c.tick(now, &mut out);
        assert!(sent(&out).iter().any(|(_, m)| matches!(m, ControlMessage::Fence { epoch: 5 })), "{out:?}");
        now += 2 * config.retry_ms;
        c.tick(now, &mut out);
        for from in [1, 2, 3] {
            let answer = ControlMessage::Fenced {
                epoch: 5,
                from,
                last_epoch: Some(4),
                durable_end: 10 + u64::from(from),
                voter: true,
            };
            c.on_message(answer, &mut out);
        }
        let leader = appointed(&out).expect("a majority answered");
        let heartbeat = |epoch, fenced_this_run| ControlMessage::Heartbeat {
            from: leader,
            leading: None,
            high_watermark: 0,
            log_end: 13,
            in_sync: Vec::new(),
            followers: Vec::new(),
            epoch,
            fenced_this_run,
        };
        let elects = |c: &mut Controller, msg| {
            let mut out = Vec::new();
            c.on_message(msg, &mut out);
            sent(&out).iter().any(|(_, m)| matches!(m, ControlMessage::Fence { .. }))
        };
        now += config.retry_ms;
        c.tick(now, &mut Vec::new());
        assert!(!elects(&mut c, heartbeat(4, false)), "sent before it saw epoch 5");
        assert!(!elects(&mut c, heartbeat(5, true)), "fenced in epoch 5, its appointment on the way");
        assert_eq!(c.epoch(), 5);
        now += config.election_timeout_ms;
        c.tick(now, &mut Vec::new());
        assert!(elects(&mut c, heartbeat(5, true)), "it did not take up its appointment in an election timeout");
        assert_eq!(c.epoch(), 6);
        let mut restarted = Controller::resume(config.clone(), vec![1, 2, 3], 5, Some(leader), now, now);
        restarted.tick(now + config.retry_ms, &mut Vec::new());
        assert!(elects(&mut restarted, heartbeat(5, false)), "a leader that restarted leads no more");
    }
}
