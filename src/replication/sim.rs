//! Deterministic simulation of a replicated partition: three replicas and a controller on a
//! virtual-time network that drops, delays, reorders and duplicates messages, with crashes
//! (unflushed data lost), restarts and network partitions. Seeded and reproducible: a failure
//! prints its seed; `QUORRA_SIM_SEED=<n> cargo test sim_one_seed -- --nocapture` replays it.
//!
//! Besides anonymous appends, two idempotent producers send numbered batches to whichever
//! replica leads (the production [`ProducerTable`] decides on each replica, as the broker's
//! leader does) and resend everything unacknowledged, oldest first, when the oldest goes
//! unanswered. The committed log must then hold each producer's batches in the order it
//! sent them, each exactly once, and every replica's producer table must agree with its log.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::controller::{Controller, ControllerAction, ControllerConfig};
use super::replica::{Replica, ReplicaConfig};
use super::{Action, ControlMessage, Epoch, EpochHistory, NodeId, PeerMessage};
use crate::broker::partition::producers::{Admission, ProducerTable};
use crate::protocol::batch::BatchHeader;

mod checks;
mod metadata;
mod stats;
use stats::SimStats;

const TICK_MS: u64 = 10;
/// Identifies the epoch-start control records in the simulated logs.
const CONTROL: u64 = u64::MAX;

/// One record in a simulated log: the epoch that wrote it, a unique id, and for a record of
/// an idempotent producer its producer and sequence (its batches hold one record each: the
/// simulated replicas split appends anywhere, the real ones only at batch boundaries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rec {
    epoch: Epoch,
    id: u64,
    producer: Option<(u64, u32)>,
}

/// A batch waiting for its commit.
struct Waiting {
    leader: NodeId,
    epoch: Epoch,
    end: u64,
    /// (offset, id) of each record.
    records: Vec<(u64, u64)>,
    /// The producer batch it answers: (producer index, sequence).
    from: Option<(usize, u32)>,
}

/// An idempotent producer's view: its batches not yet acknowledged, oldest first.
struct SimProducer {
    id: u64,
    next_sequence: u32,
    /// (sequence, record id, when last sent, acknowledged), oldest first; acknowledged ones
    /// leave from the front, in order, as the real producer resolves them.
    unacked: std::collections::VecDeque<(u32, u64, u64, bool)>,
    acked_through: Option<u32>,
}

/// Batches a simulated producer keeps unacknowledged at most.
const PRODUCER_WINDOW: usize = 8;
/// The oldest batch unanswered for this long: resend everything unacknowledged.
const PRODUCER_RETRY_MS: u64 = 60;

fn producer_header(producer: u64, sequence: u32, base_offset: u64) -> BatchHeader {
    BatchHeader {
        base_offset,
        leader_epoch: 0,
        batch_len: 0,
        crc: 0,
        producer_epoch: 0,
        record_count: 1,
        first_timestamp: 0,
        max_timestamp: 0,
        producer_id: producer,
        base_sequence: sequence,
        attributes: 0,
    }
}

/// The producer table a replica rebuilds from its log (at start, after a truncation).
fn table_of(log: &[Rec]) -> ProducerTable {
    let mut t = ProducerTable::default();
    for (offset, r) in log.iter().enumerate() {
        if let Some((producer, sequence)) = r.producer {
            t.observe(&producer_header(producer, sequence, offset as u64), log.len() as u64);
        }
    }
    t
}

#[derive(Debug, Clone)]
enum Dest {
    Node(NodeId),
    Controller,
}

#[derive(Debug, Clone)]
enum Event {
    Deliver {
        to: Dest,
        from: Option<NodeId>,
        msg: Msg,
    },
    Flush {
        node: NodeId,
        generation: u64,
        target: usize,
    },
    Tick,
    Crash(NodeId),
    Restart(NodeId),
    /// The nodes of the mask (bit n: node n) are cut off from the others and the
    /// controller (a minority: one node, or two of five).
    Partition(u32),
    Heal,
    /// The metadata log committed (or refused) the controller's record: the rest of its
    /// decisions go ahead (or the controller restarts from the metadata).
    MetaCommitted {
        rest: Vec<ControllerAction>,
    },
}

#[derive(Debug, Clone)]
enum Msg {
    Peer(PeerMessage, Vec<Rec>),
    Control(ControlMessage),
}

struct Node {
    up: bool,
    replica: Replica,
    log: Vec<Rec>,
    durable_len: usize,
    durable_epoch: Epoch,
    generation: u64,
    flush_pending: bool,
    hw_seen: u64,
    producers: ProducerTable,
    /// Appends to acknowledge once durable: (leader, through), from `AckWhenDurable`.
    pending_acks: Vec<(NodeId, u64)>,
    /// A flush takes up to this long: most disks are fast, a slow one (a third of the
    /// nodes) takes longer than a message's round trip, so a replica's own flush can
    /// complete after its followers' acknowledgements.
    flush_max_ms: u64,
}

fn history_of(log: &[Rec]) -> EpochHistory {
    let mut h = EpochHistory::default();
    for (i, r) in log.iter().enumerate() {
        h.observe(r.epoch, i as u64);
    }
    h
}

struct Sim {
    stats: SimStats,
    rng: StdRng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    events: Vec<Option<Event>>,
    nodes: Vec<Node>,
    controller: Controller,
    controller_config: ControllerConfig,
    preferred: Option<NodeId>,
    /// The simulated metadata log: the highest epoch recorded, and who was recorded as its
    /// leader. A record takes a random delay to commit and may fail (a metadata leader
    /// change); meanwhile the controller waits, as the production one awaits its write.
    meta_epoch: Epoch,
    meta_leader: Option<(Epoch, NodeId)>,
    meta_fail_rate: f64,
    controller_waiting: bool,
    /// Messages for the controller that arrived while it waited for the metadata.
    controller_backlog: std::collections::VecDeque<ControlMessage>,
    /// Nodes cut off from the rest and the controller (bit n: node n); 0: the network is whole.
    cut_off: u32,
    drop_rate: f64,
    dup_rate: f64,
    next_id: u64,
    /// The committed log as seen so far (never shrinks or changes).
    committed: Vec<Rec>,
    /// Records acknowledged to producers: (offset, id).
    acked: Vec<(u64, u64)>,
    /// Producer batches waiting for their commit: (node, epoch, end offset, records).
    waiting: Vec<Waiting>,
    leaders: BTreeMap<Epoch, NodeId>,
    /// Varies by seed: small windows and messages split appends across epoch boundaries.
    replica_config: ReplicaConfig,
    trace: bool,
    producers: Vec<SimProducer>,
    /// The records the next `AppendLocal` writes (a producer's batch), else new anonymous ones.
    next_local: Option<Vec<Rec>>,
    /// Per producer, how many of its batches the committed log holds.
    committed_sequences: BTreeMap<u64, u32>,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        // Mostly three replicas; every fourth schedule five, where two majorities can differ
        // in all but one member.
        let replicas: Vec<NodeId> = (0..if seed % 4 == 0 { 5 } else { 3 }).collect();
        let replica_config = ReplicaConfig {
            window_records: rng.gen_range(16..64),
            max_records_per_message: rng.gen_range(3..8),
            resend_ms: rng.gen_range(30..200),
            ..Default::default()
        };
        let nodes = replicas
            .iter()
            .map(|&id| Node {
                flush_max_ms: if rng.gen_bool(1.0 / 3.0) { rng.gen_range(10..60) } else { 4 },
                up: true,
                replica: Replica::recover(id, replica_config.clone(), 0, EpochHistory::default(), 0),
                log: Vec::new(),
                durable_len: 0,
                durable_epoch: 0,
                generation: 0,
                flush_pending: false,
                hw_seen: 0,
                producers: ProducerTable::default(),
                pending_acks: Vec::new(),
            })
            .collect();
        let drop_rate = rng.gen_range(0.0..0.15);
        let meta_fail_rate = rng.gen_range(0.0..0.05);
        let controller_config = ControllerConfig { election_timeout_ms: 150, retry_ms: 30 };
        // Every other schedule prefers replica 0 (hand-overs to it once it caught up).
        let preferred = (seed % 2 == 1).then_some(0);
        let dup_rate = rng.gen_range(0.0..0.05);
        let stats =
            SimStats { schedules: 1, five_replica_schedules: u64::from(replicas.len() == 5), ..Default::default() };
        Sim {
            stats,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: Vec::new(),
            nodes,
            controller: Controller::new(controller_config.clone(), replicas, 0).with_preferred(preferred),
            controller_config,
            preferred,
            meta_epoch: 0,
            meta_leader: None,
            meta_fail_rate,
            controller_waiting: false,
            controller_backlog: Default::default(),
            cut_off: 0,
            drop_rate,
            dup_rate,
            next_id: 1,
            committed: Vec::new(),
            acked: Vec::new(),
            waiting: Vec::new(),
            leaders: BTreeMap::new(),
            replica_config,
            trace: std::env::var("QUORRA_SIM_TRACE").is_ok(),
            producers: (1..=2)
                .map(|id| SimProducer { id, next_sequence: 0, unacked: Default::default(), acked_through: None })
                .collect(),
            next_local: None,
            committed_sequences: BTreeMap::new(),
        }
    }

    fn schedule(&mut self, at: u64, e: Event) {
        self.seq += 1;
        self.events.push(Some(e));
        self.queue.push(Reverse((at, self.seq, self.events.len() - 1)));
    }

    fn reachable(&self, a: Option<NodeId>, b: &Dest) -> bool {
        let b = match b {
            Dest::Node(n) => Some(*n),
            Dest::Controller => None,
        };
        let side = |n: Option<NodeId>| n.is_some_and(|n| self.cut_off & (1 << n) != 0);
        side(a) == side(b)
    }

    fn send(&mut self, from: Option<NodeId>, to: Dest, msg: Msg) {
        self.stats.messages += 1;
        if !self.reachable(from, &to) {
            self.stats.cut_by_partition += 1;
            return;
        }
        if self.rng.gen_bool(self.drop_rate) {
            self.stats.dropped += 1;
            return;
        }
        let copies = if self.rng.gen_bool(self.dup_rate) { 2 } else { 1 };
        self.stats.duplicated += copies - 1;
        for _ in 0..copies {
            let at = self.now + self.rng.gen_range(1..6);
            self.schedule(at, Event::Deliver { to: to.clone(), from, msg: msg.clone() });
        }
    }

    fn run_actions(&mut self, n: NodeId, actions: Vec<Action>) {
        for a in actions {
            if self.trace {
                eprintln!("{:>5} n{n} {:?}", self.now, a);
            }
            let node = &mut self.nodes[n as usize];
            match a {
                Action::AppendLocal(meta) => {
                    assert_eq!(node.log.len() as u64, meta.base_offset, "append at the log end");
                    match self.next_local.take().filter(|_| !meta.control) {
                        Some(records) => {
                            assert_eq!(records.len() as u32, meta.record_count);
                            node.log.extend(records.into_iter().map(|r| Rec { epoch: meta.epoch, ..r }));
                        }
                        None => {
                            for _ in 0..meta.record_count {
                                let id = if meta.control {
                                    CONTROL
                                } else {
                                    self.next_id += 1;
                                    self.next_id
                                };
                                node.log.push(Rec { epoch: meta.epoch, id, producer: None });
                            }
                        }
                    }
                    self.request_flush(n);
                }
                Action::AppendReplicated { .. } => unreachable!("handled with the message payload"),
                Action::Truncate(o) => {
                    let node = &mut self.nodes[n as usize];
                    assert!(o as usize <= node.log.len());
                    assert!(
                        (o as usize) >= node.hw_seen as usize,
                        "n{n} truncates below its high watermark {} to {o}",
                        node.hw_seen
                    );
                    node.log.truncate(o as usize);
                    self.stats.truncations += 1;
                    node.durable_len = node.durable_len.min(o as usize);
                    node.generation += 1;
                    node.producers = table_of(&node.log);
                }
                Action::RestartLogAt(_) => unreachable!("the simulated logs have no retention: every log starts at 0"),
                Action::PersistEpoch(e) => node.durable_epoch = e,
                Action::Send(to, msg) => {
                    let payload = match &msg {
                        PeerMessage::Append { prev_offset, end_offset, .. } => {
                            node.log[*prev_offset as usize..*end_offset as usize].to_vec()
                        }
                        _ => Vec::new(),
                    };
                    self.send(Some(n), Dest::Node(to), Msg::Peer(msg, payload));
                }
                Action::Control(msg) => self.send(Some(n), Dest::Controller, Msg::Control(msg)),
                Action::AckWhenDurable { leader, through } => {
                    if node.durable_len as u64 >= through {
                        let ack = node.replica.ack();
                        self.send(Some(n), Dest::Node(leader), Msg::Peer(ack, Vec::new()));
                    } else {
                        node.pending_acks.push((leader, through));
                    }
                }
                Action::Commit(hw) => self.on_commit(n, hw),
            }
        }
    }

    fn request_flush(&mut self, n: NodeId) {
        let node = &mut self.nodes[n as usize];
        if !node.flush_pending {
            node.flush_pending = true;
            let (generation, target) = (node.generation, node.log.len());
            let at = self.now + self.rng.gen_range(0..node.flush_max_ms);
            self.schedule(at, Event::Flush { node: n, generation, target });
        }
    }

    /// Acknowledges the appends of `n` that are durable now (what the production driver's
    /// wait for the flush does).
    fn send_durable_acks(&mut self, n: NodeId) {
        let node = &mut self.nodes[n as usize];
        let durable = node.durable_len as u64;
        let (ready, waiting): (Vec<_>, Vec<_>) = node.pending_acks.drain(..).partition(|&(_, t)| t <= durable);
        node.pending_acks = waiting;
        let mut leaders: Vec<NodeId> = ready.into_iter().map(|(l, _)| l).collect();
        leaders.dedup();
        for leader in leaders {
            let ack = self.nodes[n as usize].replica.ack();
            self.send(Some(n), Dest::Node(leader), Msg::Peer(ack, Vec::new()));
        }
    }

    fn on_commit(&mut self, n: NodeId, hw: u64) {
        self.stats.commit_checks += 1;
        let node = &mut self.nodes[n as usize];
        assert!(hw >= node.hw_seen, "n{n}: high watermark went back from {} to {hw}", node.hw_seen);
        node.hw_seen = hw;
        let hw = hw as usize;
        assert!(hw <= node.log.len(), "n{n}: high watermark {hw} beyond its log end {}", node.log.len());
        for i in 0..hw.min(self.committed.len()) {
            assert_eq!(node.log[i], self.committed[i], "n{n}: offset {i} differs from the committed log (hw {hw})");
        }
        if hw > self.committed.len() {
            let extra = node.log[self.committed.len()..hw].to_vec();
            for r in &extra {
                // Each producer's batches enter the committed log in the order it sent them,
                // each once, with no gap.
                if let Some((producer, sequence)) = r.producer {
                    self.stats.order_checks += 1;
                    let next = self.committed_sequences.entry(producer).or_insert(0);
                    assert_eq!(sequence, *next, "producer {producer}: batch {sequence} committed after {}", *next);
                    *next += 1;
                }
            }
            self.committed.extend(extra);
        }
        self.release_waiting(n);
    }

    /// Acknowledges the batches waiting on leader `n` that it has committed.
    fn release_waiting(&mut self, n: NodeId) {
        let committed_len = self.committed.len().min(self.nodes[n as usize].hw_seen as usize) as u64;
        let mut still = Vec::new();
        for w in std::mem::take(&mut self.waiting) {
            let leader = &self.nodes[w.leader as usize];
            if !(leader.up && leader.replica.is_leader() && leader.replica.epoch() == w.epoch) {
                // Its leader no longer leads that epoch: it will never be answered.
                continue;
            }
            if w.leader == n && w.end <= committed_len {
                self.acked.extend(w.records);
                if let Some((k, sequence)) = w.from {
                    self.producer_acked(k, sequence);
                }
            } else {
                still.push(w);
            }
        }
        self.waiting = still;
    }

    fn deliver(&mut self, to: Dest, from: Option<NodeId>, msg: Msg) {
        match (to, msg) {
            (Dest::Controller, Msg::Control(m)) => {
                self.controller_backlog.push_back(m);
                self.drain_controller_backlog();
            }
            (Dest::Node(n), msg) => {
                if !self.nodes[n as usize].up {
                    return;
                }
                let mut out = Vec::new();
                match msg {
                    Msg::Control(m) => {
                        self.check_recorded(n, &m);
                        self.nodes[n as usize].replica.on_control(m, &mut out)
                    }
                    Msg::Peer(m, payload) => {
                        let prev = match &m {
                            PeerMessage::Append { prev_offset, .. } => *prev_offset,
                            _ => 0,
                        };
                        self.nodes[n as usize].replica.on_peer(m, &mut out);
                        // Actions run in order; replicated appends take their records from the message.
                        for a in out.drain(..) {
                            if let Action::AppendReplicated { from: f, to: t } = a {
                                let node = &mut self.nodes[n as usize];
                                assert_eq!(node.log.len() as u64, f, "n{n}: replicated append not at the log end");
                                node.log.extend_from_slice(&payload[(f - prev) as usize..(t - prev) as usize]);
                                let written = node.durable_len as u64;
                                for offset in f..t {
                                    if let Some((producer, sequence)) = node.log[offset as usize].producer {
                                        node.producers.observe(&producer_header(producer, sequence, offset), written);
                                    }
                                }
                                self.request_flush(n);
                            } else {
                                self.run_actions(n, vec![a]);
                            }
                        }
                    }
                }
                let _ = from;
                self.run_actions(n, out);
                self.check_leaders(n);
            }
            (Dest::Controller, Msg::Peer(..)) => unreachable!(),
        }
    }

    fn check_leaders(&mut self, n: NodeId) {
        let node = &self.nodes[n as usize];
        if node.up && node.replica.is_leader() {
            self.stats.leader_checks += 1;
            let e = node.replica.epoch();
            match self.leaders.get(&e) {
                Some(&other) => assert_eq!(other, n, "two leaders in epoch {e}"),
                None => {
                    // A new leader holds every committed record.
                    assert!(
                        node.log.len() >= self.committed.len(),
                        "new leader n{n} (epoch {e}) lacks committed records"
                    );
                    assert_eq!(
                        &node.log[..self.committed.len()],
                        &self.committed[..],
                        "new leader n{n} differs from the committed log"
                    );
                    self.leaders.insert(e, n);
                }
            }
        }
    }

    /// A replica that believes it leads, chosen at random (a client may reach a stale one).
    fn some_leader(&mut self) -> Option<NodeId> {
        let leaders: Vec<NodeId> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, x)| x.up && x.replica.is_leader())
            .map(|(i, _)| i as NodeId)
            .collect();
        leaders.get(self.rng.gen_range(0..leaders.len().max(1))).copied()
    }

    fn client_append(&mut self) {
        let Some(n) = self.some_leader() else { return };
        let count = self.rng.gen_range(1..4u32);
        let mut out = Vec::new();
        let Ok(base) = self.nodes[n as usize].replica.append(count, &mut out) else { return };
        let first_id = self.next_id + 1;
        let epoch = self.nodes[n as usize].replica.epoch();
        self.run_actions(n, out);
        let records = (0..u64::from(count)).map(|i| (base + i, first_id + i)).collect();
        self.waiting.push(Waiting { leader: n, epoch, end: base + u64::from(count), records, from: None });
    }

    /// Producer `k` sends its batch `sequence` (record `id`) to a leader, which applies the
    /// sequence rules as the broker does.
    fn producer_send(&mut self, k: usize, sequence: u32, id: u64) {
        let Some(n) = self.some_leader() else { return };
        let producer = self.producers[k].id;
        let node = &mut self.nodes[n as usize];
        let epoch = node.replica.epoch();
        let header = producer_header(producer, sequence, node.log.len() as u64);
        let records = match node.producers.check(&header) {
            // Refused (a gap, from a leader that lacks an earlier batch): resent later.
            Err(_) => return,
            Ok(Admission::Duplicate(stored)) => vec![(stored.base_offset, id)],
            Ok(Admission::Append) => {
                let mut out = Vec::new();
                let Ok(base) = node.replica.append(1, &mut out) else { return };
                node.producers.observe(&producer_header(producer, sequence, base), node.durable_len as u64);
                self.next_local = Some(vec![Rec { epoch, id, producer: Some((producer, sequence)) }]);
                self.run_actions(n, out);
                vec![(base, id)]
            }
        };
        let end = records[0].0 + 1;
        self.waiting.push(Waiting { leader: n, epoch, end, records, from: Some((k, sequence)) });
        // A repeat of a batch already committed is answered at once (the broker's wait for
        // the commit returns immediately).
        self.release_waiting(n);
    }

    fn producer_acked(&mut self, k: usize, sequence: u32) {
        let id = self.producers[k].id;
        let committed = self.committed_sequences.get(&id).copied().unwrap_or(0);
        assert!(sequence < committed, "producer {id}: batch {sequence} acknowledged, {committed} committed");
        let p = &mut self.producers[k];
        if let Some(u) = p.unacked.iter_mut().find(|u| u.0 == sequence) {
            u.3 = true;
        }
        while p.unacked.front().is_some_and(|u| u.3) {
            p.acked_through = p.unacked.pop_front().map(|u| u.0);
        }
    }

    /// Each producer: resend everything unacknowledged, oldest first, once the oldest waited
    /// too long; and (while faults run) maybe send a new batch.
    fn producers_step(&mut self, new_batches: bool) {
        for k in 0..self.producers.len() {
            let now = self.now;
            if self.producers[k].unacked.front().is_some_and(|u| now - u.2 >= PRODUCER_RETRY_MS) {
                let resend: Vec<(u32, u64)> =
                    self.producers[k].unacked.iter().filter(|u| !u.3).map(|u| (u.0, u.1)).collect();
                for u in self.producers[k].unacked.iter_mut() {
                    u.2 = now;
                }
                for (sequence, id) in resend {
                    self.producer_send(k, sequence, id);
                }
            }
            if new_batches && self.producers[k].unacked.len() < PRODUCER_WINDOW && self.rng.gen_bool(0.5) {
                self.next_id += 1;
                let (id, p) = (self.next_id, &mut self.producers[k]);
                let sequence = p.next_sequence;
                p.next_sequence += 1;
                p.unacked.push_back((sequence, id, now, false));
                self.producer_send(k, sequence, id);
            }
        }
    }

    fn step(&mut self, e: Event, faults: bool) {
        match e {
            Event::Deliver { to, from, msg } => self.deliver(to, from, msg),
            Event::Flush { node: n, generation, target } => {
                let node = &mut self.nodes[n as usize];
                node.flush_pending = false;
                if !node.up {
                    return;
                }
                if node.generation == generation {
                    node.durable_len = node.durable_len.max(target.min(node.log.len()));
                }
                let durable = node.durable_len as u64;
                if node.log.len() > node.durable_len {
                    self.request_flush(n);
                }
                let mut out = Vec::new();
                self.nodes[n as usize].replica.on_durable(durable, &mut out);
                self.run_actions(n, out);
                self.send_durable_acks(n);
            }
            Event::Tick => {
                if !self.controller_waiting {
                    let mut out = Vec::new();
                    self.controller.tick(self.now, &mut out);
                    self.carry_out(out);
                }
                for n in 0..self.nodes.len() as NodeId {
                    if self.nodes[n as usize].up {
                        let mut out = Vec::new();
                        self.nodes[n as usize].replica.tick(self.now, &mut out);
                        self.run_actions(n, out);
                    }
                }
                if faults {
                    for _ in 0..2 {
                        self.client_append();
                    }
                }
                self.producers_step(faults);
                self.schedule(self.now + TICK_MS, Event::Tick);
            }
            Event::Crash(n) => {
                let node = &mut self.nodes[n as usize];
                if node.up {
                    node.up = false;
                    self.stats.crashes += 1;
                    node.pending_acks.clear();
                    self.stats.unsynced_lost_records += (node.log.len() - node.durable_len) as u64;
                    node.log.truncate(node.durable_len);
                    node.generation += 1;
                    node.flush_pending = false;
                    node.producers = ProducerTable::default();
                }
            }
            Event::Restart(n) => {
                let node = &mut self.nodes[n as usize];
                if !node.up {
                    node.up = true;
                    self.stats.restarts += 1;
                    node.hw_seen = 0;
                    let config = self.replica_config.clone();
                    node.replica =
                        Replica::recover(n, config, node.durable_epoch, history_of(&node.log), node.log.len() as u64);
                    node.producers = table_of(&node.log);
                }
            }
            Event::Partition(mask) => {
                self.stats.isolations += 1;
                self.cut_off = mask;
            }
            Event::Heal => {
                self.stats.heals += u64::from(self.cut_off != 0);
                self.cut_off = 0;
            }
            Event::MetaCommitted { rest } => self.meta_committed(rest),
        }
    }

    fn run(&mut self, active_ms: u64, quiet_ms: u64) {
        self.schedule(0, Event::Tick);
        // A fault schedule: crashes with restarts, partitions with heals.
        let mut t = 50;
        while t < active_ms {
            let n = self.rng.gen_range(0..self.nodes.len() as NodeId);
            match self.rng.gen_range(0..4) {
                0 => {
                    self.schedule(t, Event::Crash(n));
                    let back = t + self.rng.gen_range(20..300);
                    self.schedule(back, Event::Restart(n));
                }
                1 => {
                    // Five replicas: half the time two of them cut off together, so that
                    // majorities differ in more than one member.
                    let mut mask = 1 << n;
                    if self.nodes.len() == 5 && self.rng.gen_bool(0.5) {
                        mask |= 1 << ((n + self.rng.gen_range(1..5)) % 5);
                    }
                    self.schedule(t, Event::Partition(mask));
                    let heal = t + self.rng.gen_range(50..400);
                    self.schedule(heal, Event::Heal);
                }
                _ => {}
            }
            t += self.rng.gen_range(40..250);
        }
        let end = active_ms + quiet_ms;
        while let Some(Reverse((at, _, idx))) = self.queue.pop() {
            // Past the quiet period, run on (for at most a second) only to finish what was
            // under way at its end, such as a hand-over waiting for its metadata records.
            if at > end && (self.settled() || at > end + 1000) {
                break;
            }
            self.now = at;
            let e = self.events[idx].take().expect("each event runs once");
            if at >= active_ms {
                // Quiet period: everyone up, the network whole, no faults.
                self.cut_off = 0;
                self.drop_rate = 0.0;
                self.meta_fail_rate = 0.0;
                for n in 0..self.nodes.len() as NodeId {
                    if !self.nodes[n as usize].up {
                        self.step(Event::Restart(n), false);
                    }
                }
                if matches!(e, Event::Crash(_) | Event::Partition(_)) {
                    continue;
                }
            }
            self.step(e, at < active_ms);
        }
    }
}

#[cfg(test)]
mod tests;
