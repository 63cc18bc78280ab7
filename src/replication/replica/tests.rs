//! Unit tests of the replica state machine.

use super::*;

fn history(epochs: &[(Epoch, u64)]) -> EpochHistory {
    let mut h = EpochHistory::default();
    for &(e, s) in epochs {
        h.observe(e, s);
    }
    h
}

fn sends_to(out: &[Action], to: NodeId) -> Vec<PeerMessage> {
    out.iter()
        .filter_map(|a| match a {
            Action::Send(n, m) if *n == to => Some(m.clone()),
            _ => None,
        })
        .collect()
}

/// What a follower's driver sends its leader for `replies`: the messages for it, and for
/// each `AckWhenDurable` the follower's ack once the flush is done (here at once).
fn answers_to_leader(follower: &mut Replica, replies: &[Action], leader: NodeId) -> Vec<PeerMessage> {
    let mut out = sends_to(replies, leader);
    for a in replies {
        if let Action::AckWhenDurable { leader: l, through } = a {
            assert_eq!(*l, leader);
            follower.on_durable(*through, &mut Vec::new());
            out.push(follower.ack());
        }
    }
    out
}

/// The replica decides when a follower acknowledges (issue 12): an append of new data is
/// answered with `AckWhenDurable` through its end, never with an Ack that a driver would
/// have to hold back; a flush emits no Ack of its own; an append with nothing new (a
/// heartbeat) is acknowledged at once.
#[test]
fn a_follower_acknowledges_new_data_only_once_it_is_durable() {
    let config = ReplicaConfig::default();
    let mut follower = Replica::recover(2, config, 1, history(&[(1, 0)]), 10);
    let mut out = Vec::new();
    follower.on_control(ControlMessage::Fence { epoch: 2 }, &mut out);
    let append = |prev: u64, prev_epoch: Epoch, end: u64| PeerMessage::Append {
        epoch: 2,
        leader: 1,
        prev_offset: prev,
        prev_epoch: Some(prev_epoch),
        end_offset: end,
        epochs: vec![(1, 0), (2, 10)],
        leader_hw: 10,
        log_start: 0,
    };
    out.clear();
    follower.on_peer(append(10, 1, 15), &mut out);
    assert!(out.contains(&Action::AppendReplicated { from: 10, to: 15 }), "{out:?}");
    assert!(out.contains(&Action::AckWhenDurable { leader: 1, through: 15 }), "{out:?}");
    assert!(sends_to(&out, 1).is_empty(), "no Ack before the data is durable: {out:?}");
    out.clear();
    follower.on_durable(15, &mut out);
    assert!(sends_to(&out, 1).is_empty(), "a flush sends nothing itself: {out:?}");
    assert_eq!(follower.ack(), PeerMessage::Ack { epoch: 2, from: 2, durable_match: 15 });
    out.clear();
    follower.on_peer(append(15, 2, 15), &mut out);
    assert_eq!(sends_to(&out, 1), [PeerMessage::Ack { epoch: 2, from: 2, durable_match: 15 }], "{out:?}");
}

/// A follower that was down while a new leader took over, and returns with the log it
/// had: the leader confirms where the logs match and sends only what is new, instead of
/// the whole log again (the cause of a 27 s stall in perf/cluster.sh on 2026-12-01).
#[test]
fn a_follower_down_across_a_leader_change_is_not_sent_the_whole_log_again() {
    const LOG: u64 = 100_000;
    let shared = history(&[(1, 0)]);
    let config = ReplicaConfig::default();
    let mut leader = Replica::recover(1, config.clone(), 1, shared.clone(), LOG);
    let mut returning = Replica::recover(3, config.clone(), 1, shared, LOG);
    let mut out = Vec::new();
    leader.on_control(ControlMessage::Fence { epoch: 2 }, &mut out);
    leader.on_control(ControlMessage::BecomeLeader { epoch: 2, replicas: vec![1, 2, 3], unanimous: false }, &mut out);
    leader.on_durable(LOG + 1, &mut out);
    // Node 3 is down for ten resend periods: everything sent to it is lost.
    let mut lost = sends_to(&out, 3);
    for now in (0..10 * config.resend_ms).step_by(10) {
        out.clear();
        leader.tick(now, &mut out);
        lost.extend(sends_to(&out, 3));
    }
    assert!(!lost.is_empty(), "the leader kept trying node 3");
    // Node 3 is back; deliver the leader's next messages to it and its answers back.
    let mut sent = Vec::new();
    let mut now = 10 * config.resend_ms;
    for _ in 0..20 {
        out.clear();
        now += config.heartbeat_ms;
        leader.tick(now, &mut out);
        for msg in sends_to(&out, 3) {
            sent.push(msg.clone());
            let mut replies = Vec::new();
            returning.on_peer(msg, &mut replies);
            for reply in answers_to_leader(&mut returning, &replies, 1) {
                leader.on_peer(reply, &mut Vec::new());
            }
        }
    }
    for msg in lost.iter().chain(&sent) {
        let PeerMessage::Append { prev_offset, .. } = msg else { panic!("unexpected {msg:?}") };
        assert!(*prev_offset >= LOG, "the leader went back to offset {prev_offset} of its {LOG}-record log");
    }
    assert_eq!(returning.log_end(), LOG + 1, "node 3 got the epoch-start marker");
    let ControlMessage::Heartbeat { followers, .. } = leader.heartbeat() else { unreachable!() };
    assert!(followers.contains(&(3, LOG + 1)), "node 3 counts as caught up: {followers:?}");
}

/// Defect 11h: a follower whose log ends below the leader's log start (retention removed
/// what it lacks) restarts its log there and catches up, instead of being sent nothing.
#[test]
fn a_follower_behind_the_leaders_log_start_restarts_there() {
    let config = ReplicaConfig::default();
    let leader_history = history(&[(1, 0), (2, 50)]);
    let mut leader = Replica::recover(1, config.clone(), 1, leader_history, 200);
    leader.set_log_start(120);
    let mut out = Vec::new();
    leader.on_control(ControlMessage::Fence { epoch: 2 }, &mut out);
    leader.on_control(ControlMessage::BecomeLeader { epoch: 2, replicas: vec![1, 2], unanimous: false }, &mut out);
    assert!(leader.is_leader());
    leader.on_durable(leader.log_end(), &mut out);
    let mut follower = Replica::recover(2, config.clone(), 1, history(&[(1, 0)]), 10);
    let mut restarted = Vec::new();
    let mut now = 0;
    for _ in 0..50 {
        now += config.heartbeat_ms;
        out.clear();
        leader.tick(now, &mut out);
        for msg in sends_to(&out, 2) {
            if let PeerMessage::Append { prev_offset, .. } = msg {
                assert!(prev_offset >= 120, "the leader cannot send from {prev_offset}, below its log start");
            }
            let mut replies = Vec::new();
            follower.on_peer(msg, &mut replies);
            for a in &replies {
                if let Action::RestartLogAt(at) = a {
                    restarted.push(*at);
                }
            }
            for reply in answers_to_leader(&mut follower, &replies, 1) {
                leader.on_peer(reply, &mut Vec::new());
            }
        }
    }
    assert_eq!(restarted, vec![120], "restarted once, at the leader's log start");
    assert_eq!(follower.log_start(), 120);
    assert_eq!(follower.log_end(), leader.log_end(), "caught up");
    assert_eq!(follower.history().epoch_at(119), Some(2), "knows the epoch before its first offset");
    let ControlMessage::Heartbeat { followers, .. } = leader.heartbeat() else { unreachable!() };
    assert!(followers.contains(&(2, leader.log_end())), "the follower counts as caught up: {followers:?}");
}

/// Defect 11f: a replica that lost its data answers fences as a non-voter (so it does not
/// count toward an election majority, nor get appointed but by every replica's answers)
/// until it holds everything its leader committed; then it votes again.
#[test]
fn a_replica_that_lost_its_data_votes_only_once_caught_up() {
    let config = ReplicaConfig::default();
    let mut wiped = Replica::recover(3, config.clone(), 4, EpochHistory::default(), 0).without_vote();
    let mut out = Vec::new();
    wiped.on_control(ControlMessage::Fence { epoch: 5 }, &mut out);
    assert!(out.iter().any(|a| matches!(a, Action::Control(ControlMessage::Fenced { voter: false, .. }))), "{out:?}");
    assert!(!out.iter().any(|a| matches!(a, Action::Control(ControlMessage::Fenced { voter: true, .. }))), "{out:?}");
    assert_eq!(wiped.epoch(), 5, "it is fenced all the same");
    out.clear();
    wiped.on_control(ControlMessage::BecomeLeader { epoch: 6, replicas: vec![1, 2, 3], unanimous: false }, &mut out);
    assert!(!wiped.is_leader(), "never appointed while it may lack committed batches");
    // Leader 1 in epoch 6 (started at offset 100) sends it everything; its high watermark
    // is still that of a leader that has not committed its epoch start.
    let leader_history = history(&[(4, 0), (6, 100)]);
    let append = |hw| PeerMessage::Append {
        epoch: 6,
        leader: 1,
        prev_offset: 0,
        prev_epoch: None,
        end_offset: 101,
        epochs: leader_history.entries().to_vec(),
        leader_hw: hw,
        log_start: 0,
    };
    out.clear();
    wiped.on_peer(append(90), &mut out);
    wiped.on_durable(101, &mut out);
    assert!(!wiped.is_voter(), "a high watermark below the epoch start proves nothing");
    wiped.on_peer(append(101), &mut out);
    assert!(wiped.is_voter(), "it holds everything the leader committed");
    assert!(out.iter().any(|a| matches!(a, Action::PersistEpoch(6))), "the vote is persisted");
    out.clear();
    wiped.on_control(ControlMessage::Fence { epoch: 7 }, &mut out);
    assert!(out.iter().any(|a| matches!(a, Action::Control(ControlMessage::Fenced { durable_end: 101, .. }))));
}

/// A follower whose log is shorter than the leader's: the probe at the leader's log end
/// mismatches, and the leader sends from the follower's end, not from offset 0.
#[test]
fn a_shorter_follower_is_sent_from_where_its_log_ends() {
    let config = ReplicaConfig::default();
    let mut leader = Replica::recover(1, config.clone(), 1, history(&[(1, 0)]), 5_000);
    let mut behind = Replica::recover(2, config.clone(), 1, history(&[(1, 0)]), 3_000);
    let mut out = Vec::new();
    leader.on_control(ControlMessage::Fence { epoch: 2 }, &mut out);
    leader.on_control(ControlMessage::BecomeLeader { epoch: 2, replicas: vec![1, 2], unanimous: false }, &mut out);
    let mut first_sent = Vec::new();
    let mut pending = sends_to(&out, 2);
    for _ in 0..10 {
        let mut next = Vec::new();
        for msg in pending.drain(..) {
            if let PeerMessage::Append { prev_offset, end_offset, .. } = &msg {
                if end_offset > prev_offset {
                    first_sent.push(*prev_offset);
                }
            }
            let mut replies = Vec::new();
            behind.on_peer(msg, &mut replies);
            let mut answers = Vec::new();
            for reply in answers_to_leader(&mut behind, &replies, 1) {
                leader.on_peer(reply, &mut answers);
            }
            next.extend(sends_to(&answers, 2));
        }
        pending = next;
    }
    assert_eq!(behind.log_end(), 5_001, "the follower caught up");
    assert!(first_sent.contains(&3_000), "sent from the follower's end: {first_sent:?}");
    assert!(first_sent.iter().all(|&o| o >= 3_000), "nothing from below its end: {first_sent:?}");
}

/// After a mismatch the leader resends a window from the divergence point; the other
/// messages it had in flight are answered with the same mismatch. Before, each of those
/// rewound the leader again and resent the window, each answered the same way: a storm
/// (seen in the simulator on the production driver: a follower whose appends failed, with
/// small messages, grew to hundreds of thousands of messages in a simulated second).
#[test]
fn mismatches_for_messages_in_flight_do_not_resend_the_window_again() {
    let config = ReplicaConfig { window_records: 1000, max_records_per_message: 10, ..ReplicaConfig::default() };
    let mut leader = Replica::recover(1, config.clone(), 1, history(&[(1, 0)]), 100);
    let mut follower = Replica::recover(2, config, 1, history(&[(1, 0)]), 40);
    let mut out = Vec::new();
    leader.on_control(ControlMessage::Fence { epoch: 2 }, &mut out);
    leader.on_control(ControlMessage::BecomeLeader { epoch: 2, replicas: vec![1, 2], unanimous: false }, &mut out);
    follower.on_control(ControlMessage::BecomeFollower { epoch: 2, leader: 1, replicas: vec![1, 2] }, &mut out);
    let heartbeat = sends_to(&out, 2).pop().expect("the new leader's first append");
    let mut replies = Vec::new();
    follower.on_peer(heartbeat, &mut replies);
    let mismatch = sends_to(&replies, 1).pop().expect("the follower's log ends before");
    assert!(matches!(mismatch, PeerMessage::Mismatch { log_end: 40, .. }), "{mismatch:?}");
    let mut resent = Vec::new();
    leader.on_peer(mismatch.clone(), &mut resent);
    let window = sends_to(&resent, 2);
    assert!(window.len() > 2, "a window of messages from the divergence point: {window:?}");
    // The first resent message is lost; every later one meets the same log end.
    let mut again = Vec::new();
    for msg in &window[1..] {
        let mut replies = Vec::new();
        follower.on_peer(msg.clone(), &mut replies);
        for answer in sends_to(&replies, 1) {
            assert!(matches!(answer, PeerMessage::Mismatch { log_end: 40, .. }), "{answer:?}");
            leader.on_peer(answer, &mut again);
        }
    }
    assert!(sends_to(&again, 2).is_empty(), "resent the window again: {:?}", sends_to(&again, 2));
}

/// Under steady load a follower that keeps up one round trip behind the leader stays in
/// sync (Kafka's rule: it matched the leader's log end as of its previous acknowledgement).
/// Before, only an ack reaching the leader's current log end counted, so with producers
/// paced by a faster follower the slower one never was in sync again (seen by the nemesis:
/// a rejoined node out of the in-sync set for a minute while its lag stayed small).
#[test]
fn a_follower_one_round_trip_behind_under_steady_load_stays_in_sync() {
    let config = ReplicaConfig { isr_lag_ms: 500, ..Default::default() };
    let mut leader = Replica::recover(1, config, 1, history(&[(1, 0)]), 0);
    let mut out = Vec::new();
    leader.on_control(ControlMessage::Fence { epoch: 2 }, &mut out);
    leader.on_control(ControlMessage::BecomeLeader { epoch: 2, replicas: vec![1, 2, 3], unanimous: false }, &mut out);
    let ack = |from: NodeId, durable_match: u64| PeerMessage::Ack { epoch: 2, from, durable_match };
    let mut now = 0;
    let mut previous_end = 0;
    let mut step = |leader: &mut Replica, node3_answers: bool| {
        now += 10;
        let mut out = Vec::new();
        leader.tick(now, &mut out);
        let end = leader.log_end();
        leader.on_durable(end, &mut out);
        leader.on_peer(ack(2, end), &mut out);
        if node3_answers {
            leader.on_peer(ack(3, previous_end), &mut out);
        }
        previous_end = end;
        leader.append(5, &mut out).expect("leading");
    };
    for _ in 0..200 {
        step(&mut leader, true);
    }
    assert_eq!(leader.in_sync(), vec![1, 2, 3], "node 3 keeps up, one round trip behind");
    for _ in 0..100 {
        step(&mut leader, false);
    }
    assert_eq!(leader.in_sync(), vec![1, 2], "node 3 stopped answering: out after isr_lag_ms");
}

/// Five replicas driven by hand through a schedule: messages queue and are delivered (or
/// dropped) when the schedule says; every disk is durable at once.
struct FiveReplicas {
    replicas: BTreeMap<NodeId, Replica>,
    queue: std::collections::VecDeque<(NodeId, NodeId, PeerMessage)>,
}

impl FiveReplicas {
    fn new(config: &ReplicaConfig) -> Self {
        let replicas =
            (1..=5).map(|n| (n, Replica::recover(n, config.clone(), 0, EpochHistory::default(), 0))).collect();
        FiveReplicas { replicas, queue: Default::default() }
    }

    fn get(&mut self, n: NodeId) -> &mut Replica {
        self.replicas.get_mut(&n).expect("one of the five")
    }

    /// Carries out `n`'s actions: messages queue, appends are durable at once.
    fn carry_out(&mut self, n: NodeId, actions: Vec<Action>) {
        for a in actions {
            let mut more = Vec::new();
            match a {
                Action::Send(to, msg) => self.queue.push_back((n, to, msg)),
                Action::AppendLocal(_) => {
                    let end = self.get(n).log_end();
                    self.get(n).on_durable(end, &mut more);
                }
                Action::AckWhenDurable { leader, through } => {
                    self.get(n).on_durable(through, &mut more);
                    let ack = self.get(n).ack();
                    self.queue.push_back((n, leader, ack));
                }
                _ => {}
            }
            self.carry_out(n, more);
        }
    }

    fn control(&mut self, n: NodeId, msg: ControlMessage) {
        let mut out = Vec::new();
        self.get(n).on_control(msg, &mut out);
        self.carry_out(n, out);
    }

    /// A new epoch: `voters` fenced, `leader` appointed, the other voters its followers.
    fn elect(&mut self, epoch: Epoch, leader: NodeId, voters: &[NodeId]) {
        for &v in voters {
            self.control(v, ControlMessage::Fence { epoch });
        }
        self.control(leader, ControlMessage::BecomeLeader { epoch, replicas: vec![1, 2, 3, 4, 5], unanimous: false });
        for &v in voters.iter().filter(|&&v| v != leader) {
            self.control(v, ControlMessage::BecomeFollower { epoch, leader, replicas: vec![1, 2, 3, 4, 5] });
        }
    }

    fn append(&mut self, n: NodeId) {
        let mut out = Vec::new();
        self.get(n).append(1, &mut out).expect("the leader appends");
        self.carry_out(n, out);
    }

    /// Delivers queued messages (and the answers they cause) that `allow` lets through;
    /// the rest are lost.
    fn deliver(&mut self, mut allow: impl FnMut(NodeId, NodeId, &PeerMessage) -> bool) {
        while let Some((from, to, msg)) = self.queue.pop_front() {
            if allow(from, to, &msg) {
                let mut out = Vec::new();
                self.get(to).on_peer(msg, &mut out);
                self.carry_out(to, out);
            }
        }
    }

    /// A restart from what the replica's disk holds.
    fn restart(&mut self, n: NodeId, config: &ReplicaConfig) {
        let r = self.get(n);
        let (epoch, history, end) = (r.epoch(), r.history().clone(), r.log_end());
        *self.get(n) = Replica::recover(n, config.clone(), epoch, history, end);
    }
}

/// The Raft paper's Figure 8, the case that needs the current-epoch commit rule and that
/// random schedules rarely build: a record of an older epoch that reaches a majority only
/// under a later leader must not count as committed until a record of that leader's own
/// epoch does, because a replica that never saw it can still win the next election and cut
/// it. (When the simulator was written, removing the rule went uncaught in 10,000 random
/// schedules.)
#[test]
fn figure_eight_an_older_epochs_record_on_a_majority_is_not_committed_by_counting() {
    let config = ReplicaConfig { max_records_per_message: 1, ..ReplicaConfig::default() };
    let mut five = FiveReplicas::new(&config);
    // Epoch 1: n1 leads; everyone holds its epoch-start batch (offset 0).
    five.elect(1, 1, &[1, 2, 3, 4, 5]);
    five.deliver(|_, _, _| true);
    assert_eq!(five.get(1).high_watermark(), 1);
    // (a) Epoch 2, n1 again: its epoch-start batch (1) and a record X (2) reach n2 only.
    five.elect(2, 1, &[1, 2, 3]);
    five.append(1);
    five.deliver(|from, to, _| matches!((from, to), (1, 2) | (2, 1)));
    // (b) n1 crashes. Epoch 3, n5 leads with n3 and n4: its own batches at 1 and 2 (Y)
    // reach nobody.
    five.elect(3, 5, &[3, 4, 5]);
    five.append(5);
    five.deliver(|_, _, _| false);
    // (c) n5 crashes, n1 restarts. Epoch 4, n1 leads with n2 and n3: X reaches n3, so a
    // majority holds it; n1's epoch-4 batch (3) reaches n2 only.
    five.restart(1, &config);
    five.elect(4, 1, &[1, 2, 3]);
    // (n3's log ends at 1: the leader's first message there, its epoch-4 batch, only brings
    // back a mismatch, after which the leader sends from 1.)
    let mut x_reached_n3 = false;
    five.deliver(|from, to, msg| match (from, to, msg) {
        (1, 2, _) | (2, 1, _) | (3, 1, _) => true,
        (1, 3, PeerMessage::Append { end_offset, .. }) if *end_offset <= 3 => {
            x_reached_n3 |= *end_offset == 3;
            true
        }
        (1, 3, _) => !x_reached_n3,
        _ => false,
    });
    let committed = five.get(1).high_watermark();
    let x_epoch = five.get(1).history().epoch_at(2);
    // (d) n1 crashes, n5 restarts. Epoch 5: of n3, n4, n5 the most up-to-date is n5 (last
    // epoch 3), which leads and makes the others match its log.
    five.restart(5, &config);
    five.elect(5, 5, &[3, 4, 5]);
    five.deliver(|from, to, _| from >= 3 && to >= 3);
    assert_eq!(five.get(3).history().epoch_at(2), five.get(5).history().epoch_at(2), "n3 follows n5");
    if committed > 2 {
        assert_eq!(
            five.get(5).history().epoch_at(2),
            x_epoch,
            "n1 committed X at offset 2 (high watermark {committed}), and the next leader cut it"
        );
    }
    assert!(committed <= 1, "an epoch-2 record committed under epoch 4 by counting copies: hw {committed}");
}

#[test]
fn divergence_of_histories() {
    let mut a = EpochHistory::default();
    a.observe(1, 0);
    a.observe(2, 2);
    a.observe(4, 4);
    let mut b = EpochHistory::default();
    b.observe(1, 0);
    b.observe(3, 2);
    assert_eq!(a.divergence(5, &b, 4), 2);
    assert_eq!(b.divergence(4, &a, 5), 2);
    assert_eq!(a.divergence(5, &a.clone(), 5), 5);
    let mut c = a.clone();
    c.truncate(3);
    assert_eq!(a.divergence(5, &c, 3), 3);
}

/// Found by the nemesis (hybrid, seed 20261205): bit flips in two of three replicas' logs,
/// one after the other, left both repairing, neither a voter, and the partition without a
/// leader for good although all three replicas were up: one voter is no majority, and only a
/// leader could make the others voters again. When every replica answers a fence, nothing
/// that survives anywhere is out of sight: the most up-to-date of them all may lead.
#[test]
fn replicas_that_lost_data_elect_the_most_up_to_date_when_every_replica_answers() {
    use crate::replication::controller::{Controller, ControllerAction, ControllerConfig};
    let config = ReplicaConfig::default();
    let h = history(&[(4, 0)]);
    // Node 1 repaired a flip at 80, node 3 one at 30; node 2 lags at 50 but lost nothing.
    let mut replicas: BTreeMap<NodeId, Replica> = [
        (1, Replica::recover(1, config.clone(), 4, h.clone(), 80).without_vote()),
        (2, Replica::recover(2, config.clone(), 4, h.clone(), 50)),
        (3, Replica::recover(3, config.clone(), 4, h.clone(), 30).without_vote()),
    ]
    .into();
    let cc = ControllerConfig::default();
    let mut controller = Controller::resume(cc.clone(), vec![1, 2, 3], 4, None, 0, 0);
    let mut now = 0;
    for _ in 0..20 {
        now += cc.retry_ms;
        let mut out = Vec::new();
        controller.tick(now, &mut out);
        // Deliver the controller's messages, and the replicas' answers back, until quiet.
        while !out.is_empty() {
            let mut answers = Vec::new();
            for action in out.drain(..) {
                if let ControllerAction::Send(to, msg) = action {
                    let mut acts = Vec::new();
                    replicas.get_mut(&to).unwrap().on_control(msg, &mut acts);
                    answers.extend(acts.into_iter().filter_map(|a| match a {
                        Action::Control(m) => Some(m),
                        _ => None,
                    }));
                }
            }
            for m in answers {
                controller.on_message(m, &mut out);
            }
        }
    }
    assert_eq!(controller.leader(), Some(1), "the longest surviving log leads");
    assert!(replicas[&1].is_leader(), "and takes the lead");
    // With a voter majority, a non-voter still decides nothing (the rule the repair needs).
    let mut c = Controller::resume(cc.clone(), vec![1, 2, 3], 4, None, 0, 0);
    let mut out = Vec::new();
    c.tick(cc.retry_ms, &mut out);
    let fenced =
        |from, durable_end, voter| ControlMessage::Fenced { epoch: 5, from, last_epoch: Some(4), durable_end, voter };
    c.on_message(fenced(1, 80, false), &mut out);
    c.on_message(fenced(2, 50, true), &mut out);
    assert_eq!(c.leader(), None, "one voter and a non-voter: wait for the third");
}

fn answers(out: &[Action]) -> Vec<(u64, Answer)> {
    out.iter()
        .filter_map(|a| match a {
            Action::Answer { token, answer } => Some((*token, *answer)),
            _ => None,
        })
        .collect()
}

/// The replica decides when each produce is answered (issue 12): `acks=leader` once its
/// own copy is durable, `quorum` once the high watermark passes the batch (and after the
/// `Commit` that moves it), and a produce whose leader lost the epoch it was taken in is
/// told to go to the new leader, whatever the offsets say.
#[test]
fn the_replica_answers_each_produce_when_its_level_holds_or_its_leader_is_gone() {
    let mut alone = Replica::alone(0, ReplicaConfig::default(), 0, 0, 0);
    let mut out = Vec::new();
    alone.append(5, &mut out).expect("leads");
    alone.answer_when(1, 5, AckLevel::Local, &mut out);
    alone.answer_when(2, 5, AckLevel::Quorum, &mut out);
    assert!(answers(&out).is_empty(), "nothing is durable yet: {out:?}");
    alone.on_durable(3, &mut out);
    assert!(answers(&out).is_empty(), "the batch is not wholly durable: {out:?}");
    out.clear();
    alone.on_durable(5, &mut out);
    assert_eq!(answers(&out), [(1, Answer::Acknowledged), (2, Answer::Acknowledged)]);
    let commit = out.iter().position(|a| *a == Action::Commit(5)).expect("the high watermark moved");
    let answer = out.iter().position(|a| matches!(a, Action::Answer { .. })).expect("answered");
    assert!(commit < answer, "readers see the batch before its producer hears of it: {out:?}");
    out.clear();
    alone.answer_when(3, 5, AckLevel::All, &mut out);
    assert_eq!(answers(&out), [(3, Answer::Acknowledged)], "answered at once when it already holds");

    let mut leader = Replica::recover(1, ReplicaConfig::default(), 0, EpochHistory::default(), 0);
    leader.on_control(ControlMessage::Fence { epoch: 1 }, &mut out);
    leader.on_control(ControlMessage::BecomeLeader { epoch: 1, replicas: vec![1, 2, 3], unanimous: false }, &mut out);
    let first = leader.append(1, &mut out).expect("leads") + 1;
    leader.answer_when(7, first, AckLevel::Quorum, &mut out);
    leader.answer_when(8, first, AckLevel::Local, &mut out);
    let second = leader.append(1, &mut out).expect("leads") + 1;
    leader.answer_when(9, second, AckLevel::Local, &mut out);
    out.clear();
    leader.on_durable(first, &mut out);
    assert_eq!(answers(&out), [(8, Answer::Acknowledged)], "no follower holds it yet: {out:?}");
    out.clear();
    leader.on_control(ControlMessage::Fence { epoch: 2 }, &mut out);
    assert_eq!(answers(&out), [(7, Answer::NotLeader(None)), (9, Answer::NotLeader(None))]);
    assert_eq!(leader.waiting_answers(), 0);

    out.clear();
    alone.append(1, &mut out).expect("leads");
    alone.answer_when(10, 6, AckLevel::Quorum, &mut out);
    alone.fail_answers(&mut out);
    assert_eq!(answers(&out), [(10, Answer::LogFailed)], "a failed log answers what waits");

    out.clear();
    alone.answer_when(11, 99, AckLevel::Quorum, &mut out);
    alone.answer_when(12, 99, AckLevel::Quorum, &mut out);
    alone.retain_answers(|token| token != 11);
    assert_eq!(alone.waiting_answers(), 1, "a produce nobody waits for is forgotten");
    alone.fail_answers(&mut out);
    assert_eq!(answers(&out), [(12, Answer::LogFailed)]);
}
