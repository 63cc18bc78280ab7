//! Deterministic simulation of a replicated partition, running the production code: each
//! simulated node is a real [`Partition`] (its log, writer task, producer table, replica
//! driver, `replica.json`, truncation of real segment files, recovery) on a [`MemDisk`]
//! that takes time, loses or tears unsynced writes on a crash and fails on demand; the
//! tasks run on a virtual-time executor (`rt::sim`) that takes over the runtime seam, so
//! nothing in the partition knows it is simulated. Around the nodes: a network that drops,
//! delays, reorders and duplicates messages and cuts off minorities; the production
//! [`Controller`] with a simulated metadata log (`control.rs`); clients that produce and
//! read (`clients.rs`); checks after every instant and at the end (`checks.rs`).
//!
//! Seeded and reproducible: a failure prints its seed; `QUORRA_SIM_SEED=<n> cargo test --lib
//! sim::tests::sim_one_seed -- --exact --nocapture` replays it (`QUORRA_SIM_TRACE=1` prints
//! what happens, with the production code's log lines).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::{Rc, Weak};
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::broker::partition::{Outbound, Partition, ReplicaSetup};
use crate::config::FlushPolicy;
use crate::protocol::batch::BatchHeader;
use crate::replication::controller::{Controller, ControllerConfig};
use crate::replication::replica::ReplicaConfig;
use crate::replication::{ControlMessage, Epoch, NodeId, PeerMessage};
use crate::rt::sim::{Installed, SimRuntime, WORLD};
use crate::storage::mem_disk::{CrashMode, DiskLatency, DiskOp, MemDisk, MemFaults};
use crate::storage::LogConfig;

mod checks;
mod clients;
mod control;
mod stats;
mod tests;
use stats::SimStats;

type Part = Partition<MemDisk>;
type WorldRef = Rc<RefCell<World>>;

const TOPIC: &str = "t";
const TOPIC_ID: u64 = 1;
const TICK: Duration = Duration::from_millis(10);
/// The record id of the records of control batches (a new leader's epoch-start batch).
const CONTROL: u64 = u64::MAX;
/// Bytes of batches in one append message at most (production: `APPEND_FRAME_BYTES`).
const APPEND_BYTES: usize = 2048;

/// One record of a log as the checks see it: the epoch of its batch, its id (its value), and
/// for an idempotent producer's record its producer and sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rec {
    epoch: Epoch,
    id: u64,
    producer: Option<(u64, u32)>,
}

/// The records of batches read from a log, with their offsets.
fn records_of(batches: &[(BatchHeader, Bytes)]) -> Vec<(u64, Rec)> {
    let mut out = Vec::new();
    for (header, bytes) in batches {
        let producer = (header.producer_id != 0).then_some(header.producer_id);
        if header.is_control() {
            for i in 0..u64::from(header.record_count) {
                out.push((header.base_offset + i, Rec { epoch: header.leader_epoch, id: CONTROL, producer: None }));
            }
            continue;
        }
        for (i, rec) in crate::protocol::batch::RecordIter::new(bytes, header).enumerate() {
            let rec = rec.expect("records pass their checks");
            let id = u64::from_le_bytes(rec.value.try_into().expect("8-byte values"));
            let producer = producer.map(|p| (p, header.base_sequence + i as u32));
            out.push((rec.offset, Rec { epoch: header.leader_epoch, id, producer }));
        }
    }
    out
}

#[derive(Debug, Clone, Copy)]
enum Dest {
    Node(NodeId),
    Controller,
}

/// What travels between nodes, and between nodes and the controller.
#[derive(Clone)]
enum Net {
    /// Leader to follower (production: an append frame, its batches after it).
    Append { leader: NodeId, msg: PeerMessage, batches: Vec<Bytes> },
    /// Follower to leader: the answer to an append.
    Reply(PeerMessage),
    /// Controller to a replica.
    Control(ControlMessage),
    /// A replica to the controller.
    ToController(ControlMessage),
}

struct SimNode {
    up: bool,
    disk: MemDisk,
    /// The partition, once opened after the node's last start.
    part: Option<Rc<Part>>,
    /// What the checks saw: the high watermark, and how far the log was compared with the
    /// committed log.
    hw_seen: u64,
    verified_to: u64,
    log_end_seen: u64,
    /// The log end when the node crashed (what its restart may have lost).
    end_at_crash: u64,
    /// Records it acknowledged at `acks=leader`: (epoch, offset, id). If it crashes while
    /// still leading that epoch, its restart must find them in its log (durable on the
    /// leader's disk before the answer; after a failover they may be cut, as documented).
    durable_acks: Vec<(Epoch, u64, u64)>,
    /// Its partition directory was lost in the crash (a replaced disk): it restarts as a
    /// replica that lost data (production: the shard's replica record without `replica.json`).
    wiped: bool,
    /// A flush or small-file write takes up to this long: most disks are fast, a slow one
    /// (a third of the nodes) takes longer than a message's round trip.
    flush_max_us: u64,
    rng: Rc<RefCell<StdRng>>,
}

/// An idempotent producer's view: its batches not yet acknowledged, oldest first.
struct SimProducer {
    id: u64,
    next_sequence: u32,
    /// (sequence, record id, when last sent in ms, acknowledged), oldest first;
    /// acknowledged ones leave from the front, in order, as the real producer resolves them.
    unacked: std::collections::VecDeque<(u32, u64, u64, bool)>,
    acked_through: Option<u32>,
}

/// What a schedule simulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    /// A cluster's replica set: three replicas (five in every fourth schedule), the
    /// controller, the metadata log.
    Cluster,
    /// A single node: its partition is a replica set of one (`Partition::open`), driven by
    /// the same code as a cluster's replicas; no controller, nobody to fail over to.
    SingleNode,
}

struct World {
    seed: u64,
    shape: Shape,
    stats: SimStats,
    rng: StdRng,
    rt: Rc<SimRuntime>,
    nodes: Vec<SimNode>,
    replica_config: ReplicaConfig,
    log_config: LogConfig,
    controller: Controller,
    controller_config: ControllerConfig,
    preferred: Option<NodeId>,
    /// The simulated metadata log: the highest epoch recorded, and who was recorded as its
    /// leader.
    meta_epoch: Epoch,
    meta_leader: Option<(Epoch, NodeId)>,
    meta_fail_rate: f64,
    /// The controller is carrying out a decision (waiting for the metadata log).
    controller_busy: bool,
    /// Messages for the controller, and the wake-up of its loop.
    controller_backlog: std::collections::VecDeque<ControlMessage>,
    controller_inbox: crate::rt::Notify,
    /// Nodes cut off from the rest and the controller (bit n: node n); 0: the network is whole.
    cut_off: u32,
    drop_rate: f64,
    dup_rate: f64,
    /// While true, faults are injected and clients send new records.
    active: bool,
    next_id: u64,
    /// The committed log as seen so far (never shrinks or changes).
    committed: Vec<Rec>,
    /// Records acknowledged to producers at `quorum` or `all`: (offset, id).
    acked: Vec<(u64, u64)>,
    /// Records acknowledged at `leader`: (the leader's epoch, offset, id).
    acked_by_leader: Vec<(Epoch, u64, u64)>,
    /// Records a reader was served: (node, offset, record), checked at the end.
    served: Vec<(NodeId, u64, Rec)>,
    leaders: BTreeMap<Epoch, NodeId>,
    producers: Vec<SimProducer>,
    /// Per producer, how many of its batches the committed log holds.
    committed_sequences: BTreeMap<u64, u32>,
    trace: bool,
}

impl World {
    fn trace(&self, what: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("{:>8.3} {}", self.rt.now_us() as f64 / 1000.0, what());
        }
    }
}

/// With `QUORRA_SIM_TRACE`, the production code's log lines go to stderr with the virtual
/// time and the node whose task wrote them.
struct TraceLogger;

impl log::Log for TraceLogger {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        if let Some(rt) = crate::rt::sim::current() {
            eprintln!("{:>8.3} [{}] {}", rt.now_us() as f64 / 1000.0, record.level(), record.args());
        }
    }

    fn flush(&self) {}
}

fn partition_dir() -> PathBuf {
    PathBuf::from("/sim").join(TOPIC).join("0")
}

/// Builds the world of schedule `seed`: three replicas (five in every fourth schedule), or
/// a single node.
fn new_world(seed: u64, shape: Shape, rt: Rc<SimRuntime>) -> WorldRef {
    let mut rng = StdRng::seed_from_u64(seed);
    let replica_count = match shape {
        Shape::SingleNode => 1,
        Shape::Cluster if seed % 4 == 0 => 5,
        Shape::Cluster => 3,
    };
    let replicas: Vec<NodeId> = (0..replica_count).collect();
    let replica_config = ReplicaConfig {
        window_records: rng.gen_range(16..64),
        max_records_per_message: rng.gen_range(3..8),
        resend_ms: rng.gen_range(30..200),
        ..Default::default()
    };
    // Small segments, so that rolls (and producer snapshots) happen; a small cache, so that
    // reads also go to the disk.
    let log_config = LogConfig {
        segment_bytes: rng.gen_range(2..8u64) << 12,
        preallocate_bytes: 4096,
        cache_bytes: rng.gen_range(1..16) << 10,
        prezero: rng.gen_bool(0.5),
        ..Default::default()
    };
    let nodes = replicas
        .iter()
        .map(|_| SimNode {
            up: false,
            disk: MemDisk::new(),
            part: None,
            hw_seen: 0,
            verified_to: 0,
            log_end_seen: 0,
            end_at_crash: 0,
            wiped: false,
            durable_acks: Vec::new(),
            flush_max_us: if rng.gen_bool(1.0 / 3.0) { rng.gen_range(10_000..60_000) } else { 4_000 },
            rng: Rc::new(RefCell::new(StdRng::seed_from_u64(rng.gen()))),
        })
        .collect();
    let controller_config = ControllerConfig { election_timeout_ms: 150, retry_ms: 30 };
    // Every other schedule prefers replica 0 (hand-overs to it once it caught up).
    let preferred = (seed % 2 == 1).then_some(0);
    let stats = SimStats {
        schedules: 1,
        five_replica_schedules: u64::from(replicas.len() == 5),
        single_node_schedules: u64::from(shape == Shape::SingleNode),
        ..Default::default()
    };
    Rc::new(RefCell::new(World {
        seed,
        shape,
        stats,
        drop_rate: rng.gen_range(0.0..0.15),
        dup_rate: rng.gen_range(0.0..0.05),
        meta_fail_rate: rng.gen_range(0.0..0.05),
        rng,
        rt,
        nodes,
        replica_config,
        log_config,
        controller: Controller::new(controller_config.clone(), replicas, 0).with_preferred(preferred),
        controller_config,
        preferred,
        meta_epoch: 0,
        meta_leader: None,
        controller_busy: false,
        controller_backlog: Default::default(),
        controller_inbox: crate::rt::Notify::new(),
        cut_off: 0,
        active: true,
        next_id: 0,
        committed: Vec::new(),
        acked: Vec::new(),
        acked_by_leader: Vec::new(),
        served: Vec::new(),
        leaders: BTreeMap::new(),
        producers: (1..=2)
            .map(|id| SimProducer { id, next_sequence: 0, unacked: Default::default(), acked_through: None })
            .collect(),
        committed_sequences: BTreeMap::new(),
        trace: std::env::var("QUORRA_SIM_TRACE").is_ok(),
    }))
}

/// The disk latency of node `n`: writes take up to half a millisecond, flushes and small
/// file replacements up to the node's `flush_max_us`.
fn latency_of(node: &SimNode) -> DiskLatency {
    let (rng, flush_max) = (node.rng.clone(), node.flush_max_us);
    DiskLatency(Rc::new(move |op| {
        let us = match op {
            DiskOp::Write => rng.borrow_mut().gen_range(20..500),
            DiskOp::Sync | DiskOp::ReplaceFile => rng.borrow_mut().gen_range(50..flush_max),
        };
        Duration::from_micros(us)
    }))
}

/// Where a simulated partition's messages go: into the simulated network.
struct SimOutbound {
    world: Weak<RefCell<World>>,
    node: NodeId,
}

impl Outbound for SimOutbound {
    fn send(&self, _: &Rc<str>, _: u64, _: u32, to: NodeId, msg: PeerMessage) {
        let Some(w) = self.world.upgrade() else { return };
        let n = self.node;
        match msg {
            // As the production link does: the batches are read from the log when sent.
            PeerMessage::Append { epoch, prev_offset, end_offset, .. } if end_offset > prev_offset => {
                let Some(p) = w.borrow().nodes[n as usize].part.clone() else { return };
                crate::rt::spawn(async move {
                    let mut from = prev_offset;
                    while from < end_offset {
                        let Some((msg, batches)) = p.read_for_follower(epoch, from, end_offset, APPEND_BYTES).await
                        else {
                            return;
                        };
                        let PeerMessage::Append { end_offset: sent_to, .. } = &msg else { return };
                        from = *sent_to;
                        send(&w, Some(n), Dest::Node(to), Net::Append { leader: n, msg, batches });
                    }
                });
            }
            msg => send(&w, Some(n), Dest::Node(to), Net::Append { leader: n, msg, batches: Vec::new() }),
        }
    }

    fn control(&self, _: &Rc<str>, _: u64, _: u32, msg: ControlMessage) {
        let Some(w) = self.world.upgrade() else { return };
        send(&w, Some(self.node), Dest::Controller, Net::ToController(msg));
    }
}

fn reachable(cut_off: u32, a: Option<NodeId>, b: Dest) -> bool {
    let b = match b {
        Dest::Node(n) => Some(n),
        Dest::Controller => None,
    };
    let side = |n: Option<NodeId>| n.is_some_and(|n| cut_off & (1 << n) != 0);
    side(a) == side(b)
}

/// Puts a message on the simulated network: it may be cut, dropped, duplicated, delayed by
/// 1-6 ms (so reordered).
fn send(w: &WorldRef, from: Option<NodeId>, to: Dest, msg: Net) {
    let (rt, delays) = {
        let mut world = w.borrow_mut();
        world.stats.messages += 1;
        if !reachable(world.cut_off, from, to) {
            world.stats.cut_by_partition += 1;
            return;
        }
        let drop_rate = world.drop_rate;
        if world.rng.gen_bool(drop_rate) {
            world.stats.dropped += 1;
            return;
        }
        let dup_rate = world.dup_rate;
        let copies = if world.rng.gen_bool(dup_rate) { 2 } else { 1 };
        world.stats.duplicated += copies - 1;
        let delays: Vec<u64> = (0..copies).map(|_| world.rng.gen_range(1000..6000)).collect();
        (world.rt.clone(), delays)
    };
    for delay in delays {
        let (w, msg) = (w.clone(), msg.clone());
        rt.spawn_as(WORLD, async move {
            crate::rt::sleep(Duration::from_micros(delay)).await;
            deliver(&w, from, to, msg);
        });
    }
}

fn deliver(w: &WorldRef, from: Option<NodeId>, to: Dest, msg: Net) {
    let (n, msg) = match (to, msg) {
        (Dest::Controller, Net::ToController(m)) => return control::to_controller(w, m),
        (Dest::Node(n), msg) => (n, msg),
        (Dest::Controller, _) => unreachable!("only control messages go to the controller"),
    };
    let (rt, p) = {
        let world = w.borrow();
        let node = &world.nodes[n as usize];
        let Some(p) = node.part.clone().filter(|_| node.up) else { return };
        (world.rt.clone(), p)
    };
    let w = w.clone();
    rt.spawn_as(n, async move {
        w.borrow().trace(|| match &msg {
            Net::Append { leader, msg, batches } => format!("n{leader} -> n{n}: {msg:?} ({} chunks)", batches.len()),
            Net::Reply(m) => format!("-> n{n}: {m:?}"),
            Net::Control(m) => format!("controller -> n{n}: {m:?}"),
            Net::ToController(_) => String::new(),
        });
        match msg {
            Net::Control(m) => {
                control::check_recorded(&w, n, &m);
                p.on_control(m).await;
            }
            Net::Append { leader, msg, batches } => {
                debug_assert_eq!(from, Some(leader));
                if let Some(answer) = p.on_leader_append(msg, &batches).await {
                    send(&w, Some(n), Dest::Node(leader), Net::Reply(answer));
                }
            }
            Net::Reply(m) => p.on_follower_reply(m).await,
            Net::ToController(_) => unreachable!("a replica gets no controller-bound message"),
        }
    });
}

/// Starts node `n` from what its disk holds: opens the partition (recovery), turns
/// replication on, and starts its tick and checkpoint tasks (all owned by the node).
fn start_node(w: &WorldRef, n: NodeId) {
    let (rt, disk, log_config, replica_config, lost_data, shape) = {
        let mut world = w.borrow_mut();
        let node = &mut world.nodes[n as usize];
        assert!(!node.up);
        let lost_data = node.wiped;
        node.up = true;
        node.hw_seen = 0;
        node.verified_to = 0;
        let latency = latency_of(node);
        node.disk.set_faults(MemFaults { latency: Some(latency), ..Default::default() });
        let disk = node.disk.clone();
        (world.rt.clone(), disk, world.log_config.clone(), world.replica_config.clone(), lost_data, world.shape)
    };
    let w = w.clone();
    rt.spawn_as(n, async move {
        let outbound = Rc::new(SimOutbound { world: Rc::downgrade(&w), node: n });
        let setup = ReplicaSetup { node: n, topic_id: TOPIC_ID, lost_data, config: replica_config, outbound };
        // As the shards do (`shard/cluster.rs`): a replica that cannot open (a full or
        // failing disk) is tried again until it opens.
        let p = loop {
            let (disk, config, setup) = (disk.clone(), log_config.clone(), setup.clone());
            let opened = match shape {
                Shape::Cluster => {
                    Partition::open_replica(disk, TOPIC.into(), 0, partition_dir(), config, FlushPolicy::Always, setup)
                        .await
                }
                // As a single node's shard opens its partitions (`broker::catalog`).
                Shape::SingleNode => {
                    Partition::open(disk, TOPIC.into(), 0, partition_dir(), config, FlushPolicy::Always).await
                }
            };
            match opened {
                Ok(p) => break p,
                Err(e) => {
                    w.borrow().trace(|| format!("n{n} cannot open its replica: {e}; trying again"));
                    crate::rt::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        {
            let mut world = w.borrow_mut();
            let end = p.log_end_offset();
            let node = &mut world.nodes[n as usize];
            world.stats.unsynced_lost_records += node.end_at_crash.saturating_sub(end);
            let node = &mut world.nodes[n as usize];
            if node.wiped {
                node.durable_acks.clear();
            }
            let held: std::collections::HashSet<(u64, u64)> =
                records_of(&p.batches_for_checks(0, end)).into_iter().map(|(o, r)| (o, r.id)).collect();
            for &(_, o, id) in &node.durable_acks {
                assert!(
                    held.contains(&(o, id)),
                    "n{n} acknowledged record {id} at {o} (acks=leader) and lost it in a crash"
                );
            }
            let checked = node.durable_acks.len() as u64;
            world.stats.leader_durability_checks += checked;
            let node = &mut world.nodes[n as usize];
            node.log_end_seen = end;
            // (`replica.json` now says it does not vote until caught up.)
            node.wiped = false;
            node.part = Some(p.clone());
            world.trace(|| format!("n{n} started, log end {end}"));
        }
        let ticking = p.clone();
        crate::rt::spawn(async move {
            loop {
                crate::rt::sleep(TICK).await;
                let now = crate::rt::sim::current().expect("simulated").now_ms();
                ticking.replication_tick(now);
            }
        });
        loop {
            crate::rt::sleep(Duration::from_millis(100)).await;
            p.checkpoint_recovery_point().await;
        }
    });
}

/// Node `n` loses power: its tasks stop wherever they were, its disk keeps what was synced
/// (or, half the time, also a torn prefix of what was not).
fn crash_node(w: &WorldRef, n: NodeId) {
    let rt = {
        let mut world = w.borrow_mut();
        if !world.nodes[n as usize].up {
            return;
        }
        world.stats.crashes += 1;
        let mode = if world.rng.gen_bool(0.5) {
            CrashMode::LoseUnsynced
        } else {
            world.stats.torn_crashes += 1;
            CrashMode::Tear { keep_writes: world.rng.gen_range(0..3), torn_bytes: world.rng.gen_range(0..4096) }
        };
        // One crash in ten loses the disk too, when every other replica runs and votes:
        // more lost copies at once than the replicas tolerate is not a fault the cluster
        // recovers from by itself (no copy is known to hold everything committed).
        let others_vote = world
            .nodes
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != n as usize)
            .all(|(_, x)| x.up && x.part.as_ref().is_some_and(|p| p.is_voter_for_checks()));
        // (Nor is losing the disk of a single node, the only copy.)
        let wiped = others_vote && world.nodes.len() > 1 && world.rng.gen_bool(0.1);
        world.stats.wiped_disks += u64::from(wiped);
        let node = &mut world.nodes[n as usize];
        node.up = false;
        let part = node.part.take();
        node.end_at_crash = part.as_ref().map_or(node.log_end_seen, |p| p.log_end_offset());
        // What it acknowledged at `acks=leader` is owed by its disk only while it leads the
        // epoch it acknowledged in (a leader never cuts its own log).
        let leading = part.map(|p| p.leadership()).filter(|(leads, _, _)| *leads).map(|(_, _, e)| e);
        node.durable_acks.retain(|&(e, _, _)| Some(e) == leading);
        node.disk = node.disk.crash(mode);
        if wiped {
            node.wiped = true;
            let dir = partition_dir();
            let removed = crate::storage::Disk::remove_dir_all(&node.disk, &dir);
            futures_lite::future::block_on(removed).expect("an in-memory directory removal");
        }
        world.trace(|| format!("n{n} crashed ({mode:?}){}", if wiped { ", its disk lost" } else { "" }));
        world.rt.clone()
    };
    rt.kill(n);
}

/// Node `n`'s disk fails for 20-300 ms: every write fails with EIO, or every sync does, or
/// the disk is full (writes and preallocation fail with ENOSPC); then it works again. The
/// partition must drop what it had not made durable, tell its producers, reopen its log and
/// never acknowledge, count or serve what the failed disk did not keep.
fn fail_disk_for_a_while(w: &WorldRef, n: NodeId) {
    let (rt, heal_after) = {
        let mut world = w.borrow_mut();
        if !world.nodes[n as usize].up {
            return;
        }
        world.stats.disk_failures += 1;
        let kind = world.rng.gen_range(0..3);
        let heal_after = world.rng.gen_range(20..300);
        let node = &world.nodes[n as usize];
        let mut faults = MemFaults { latency: Some(latency_of(node)), ..Default::default() };
        let what = match kind {
            0 => {
                faults.write_errno = Some(libc::EIO);
                "writes fail (EIO)"
            }
            1 => {
                faults.sync_errno = Some(libc::EIO);
                "syncs fail (EIO)"
            }
            _ => {
                faults.write_errno = Some(libc::ENOSPC);
                faults.preallocate_errno = Some(libc::ENOSPC);
                "full (ENOSPC)"
            }
        };
        node.disk.set_faults(faults);
        world.trace(|| format!("n{n}'s disk: {what} for {heal_after} ms"));
        (world.rt.clone(), heal_after)
    };
    let w = w.clone();
    rt.spawn_as(WORLD, async move {
        crate::rt::sleep(Duration::from_millis(heal_after)).await;
        let world = w.borrow();
        // (A crash meanwhile gave the node a new disk, which start_node set up without faults.)
        let node = &world.nodes[n as usize];
        node.disk.set_faults(MemFaults { latency: Some(latency_of(node)), ..Default::default() });
        world.trace(|| format!("n{n}'s disk works again"));
    });
}

/// The fault schedule: crashes with restarts, partitions with heals, failing disks, for
/// `active_ms`.
async fn nemesis(w: WorldRef, active_ms: u64) {
    let mut t = 50;
    let node_count = w.borrow().nodes.len() as NodeId;
    let rt = w.borrow().rt.clone();
    while t < active_ms {
        let (kind, n, pause) = {
            let mut world = w.borrow_mut();
            (world.rng.gen_range(0..4), world.rng.gen_range(0..node_count), world.rng.gen_range(40..250))
        };
        rt.sleep_until(t * 1000).await;
        match kind {
            0 => {
                crash_node(&w, n);
                let back = w.borrow_mut().rng.gen_range(20..300);
                let w = w.clone();
                rt.spawn_as(WORLD, async move {
                    crate::rt::sleep(Duration::from_millis(back)).await;
                    if w.borrow().active && !w.borrow().nodes[n as usize].up {
                        w.borrow_mut().stats.restarts += 1;
                        start_node(&w, n);
                    }
                });
            }
            1 => {
                let heal = {
                    let mut world = w.borrow_mut();
                    // Five replicas: half the time two of them cut off together, so that
                    // majorities differ in more than one member.
                    let mut mask = 1 << n;
                    if node_count == 5 && world.rng.gen_bool(0.5) {
                        mask |= 1 << ((n + world.rng.gen_range(1..5)) % 5);
                    }
                    world.stats.isolations += 1;
                    world.cut_off = mask;
                    world.trace(|| format!("cut off {mask:b}"));
                    world.rng.gen_range(50..400)
                };
                let w = w.clone();
                rt.spawn_as(WORLD, async move {
                    crate::rt::sleep(Duration::from_millis(heal)).await;
                    let mut world = w.borrow_mut();
                    world.stats.heals += u64::from(world.cut_off != 0);
                    world.cut_off = 0;
                });
            }
            2 if w.borrow_mut().rng.gen_bool(0.5) => fail_disk_for_a_while(&w, n),
            _ => {}
        }
        t += pause;
    }
}

/// The end of the faults: the network heals, every disk works, every node is up, nothing
/// is dropped, the metadata log accepts every record.
fn quiet_down(w: &WorldRef) {
    let down: Vec<NodeId> = {
        let mut world = w.borrow_mut();
        for node in &world.nodes {
            node.disk.set_faults(MemFaults { latency: Some(latency_of(node)), ..Default::default() });
        }
        world.active = false;
        world.cut_off = 0;
        world.drop_rate = 0.0;
        world.meta_fail_rate = 0.0;
        world.trace(|| "quiet period".to_string());
        (0..world.nodes.len() as NodeId).filter(|&n| !world.nodes[n as usize].up).collect()
    };
    for n in down {
        w.borrow_mut().stats.restarts += 1;
        start_node(w, n);
    }
}

/// Runs schedule `seed`: faults for `active_ms`, then quiet for `quiet_ms` (and up to three
/// seconds more, only to finish what was under way: a replica that lost its disk late in
/// the schedule fetches the whole log again, in windows of 16-64 records acknowledged once
/// flushed by disks that take up to 60 ms); then the final checks. Panics on a
/// broken invariant.
fn run_schedule(seed: u64, shape: Shape, active_ms: u64, quiet_ms: u64) -> SimStats {
    if std::env::var("QUORRA_SIM_TRACE").is_ok() {
        let _ = log::set_logger(&TraceLogger);
        log::set_max_level(log::LevelFilter::Debug);
    }
    let rt: Installed = SimRuntime::install();
    let w = new_world(seed, shape, rt.handle());
    let node_count = w.borrow().nodes.len() as NodeId;
    for n in 0..node_count {
        start_node(&w, n);
    }
    rt.spawn_as(WORLD, nemesis(w.clone(), active_ms));
    if shape == Shape::Cluster {
        rt.spawn_as(WORLD, control::run_controller(w.clone()));
    }
    rt.spawn_as(WORLD, clients::run_clients(w.clone()));
    let mut observe = || {
        checks::after_instant(&w);
        false
    };
    rt.run_until(active_ms * 1000, &mut observe);
    quiet_down(&w);
    let end = (active_ms + quiet_ms) * 1000;
    rt.run_until(end, &mut observe);
    let mut settled = false;
    rt.run_until(end + 3_000_000, || {
        checks::after_instant(&w);
        settled = checks::settled(&w);
        settled
    });
    checks::final_checks(&w);
    let world = w.borrow();
    SimStats { acked: world.acked.len() as u64, elections: world.leaders.len() as u64, ..world.stats.clone() }
}
