//! A shard's part in a cluster: following the replicated metadata (opening the partitions
//! this node replicates), handing controller messages to replicas, ticking replicas. The
//! data links to other nodes are in [`super::data_link`].

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use super::data_link::DataLink;
use crate::broker::partition::{Outbound, ReplicaSetup};
use crate::broker::{Partition, TopicConfig};
use crate::cluster::meta::MetaState;
use crate::cluster::rpc::ControlEnvelope;
use crate::cluster::ControlHandle;
use crate::replication::replica::ReplicaConfig;
use crate::replication::NodeId;
use crate::rt;
use crate::shard::{owner_of_partition, Shard};

/// How often replicas tick (heartbeats, resends).
const REPLICA_TICK: Duration = Duration::from_millis(10);

/// What a shard of a cluster node keeps about the cluster.
pub struct ShardCluster {
    pub node_id: NodeId,
    pub control: ControlHandle,
    /// The metadata as this shard last applied it.
    pub meta: RefCell<Arc<MetaState>>,
    pub(super) links: RefCell<HashMap<NodeId, Rc<DataLink>>>,
    /// Links for forwarded client requests (multi-master, forwarding modes).
    pub(super) forwards: super::forward::ForwardLinks,
    /// Replicas found damaged while they ran, being reopened to repair them.
    repairing: RefCell<std::collections::HashSet<(String, u32)>>,
    /// A controlled shutdown began: the stopping mark must stay in the metadata.
    stopping: Cell<bool>,
    /// A write clearing an earlier run's stopping mark is under way (a shutdown waits for
    /// it, so that the clear cannot land after its own mark).
    clearing_mark: Cell<bool>,
}

impl ShardCluster {
    pub fn new(control: ControlHandle) -> ShardCluster {
        let meta = control.meta.borrow().clone();
        ShardCluster {
            node_id: control.settings.node_id,
            control,
            meta: RefCell::new(meta),
            links: RefCell::new(HashMap::new()),
            forwards: Default::default(),
            repairing: RefCell::default(),
            stopping: Cell::new(false),
            clearing_mark: Cell::new(false),
        }
    }

    /// The client address of a node (for not-leader hints).
    pub fn client_addr(&self, node: NodeId) -> Option<String> {
        self.control.settings.node(node).map(|n| n.client.to_string())
    }
}

/// Starts the shard's cluster tasks.
pub fn start(shard: &Rc<Shard>, inbox: tokio::sync::mpsc::Receiver<ControlEnvelope>) {
    rt::spawn(follow_metadata(shard.clone()));
    rt::spawn(serve_control_inbox(Rc::downgrade(shard), inbox));
    rt::spawn(tick_replicas(Rc::downgrade(shard)));
    let settings = &cluster(shard).control.settings;
    if settings.scrub_bytes_per_sec > 0 {
        let every = Duration::from_secs(settings.scrub_interval_secs);
        rt::spawn(scrub_replicas(Rc::downgrade(shard), settings.scrub_bytes_per_sec, every));
    }
}

pub(super) fn cluster(shard: &Shard) -> &ShardCluster {
    shard.cluster.as_ref().expect("cluster tasks run on cluster shards only")
}

/// A controlled shutdown (SIGTERM): records in the metadata that this node is stopping, so
/// that the controllers move the leadership of its partitions to in-sync followers, and
/// waits (at most `budget`) until another replica leads each partition this shard led;
/// requests keep being served meanwhile (not-leader answers name the new leaders).
/// (Waiting only until this shard is fenced is too short: were it the metadata leader and
/// left before the successor's appointment is recorded, the partition would stay leaderless
/// for a metadata election.) Shard 0 writes the record.
pub async fn hand_over_leadership(shard: &Rc<Shard>, budget: Duration) {
    let c = cluster(shard);
    let started = std::time::Instant::now();
    let deadline = started + budget;
    c.stopping.set(true);
    while c.clearing_mark.get() && std::time::Instant::now() < deadline {
        rt::sleep(Duration::from_millis(5)).await;
    }
    if shard.id == 0 {
        let cmd = crate::cluster::meta::MetaCommand::SetDraining { node: c.node_id, draining: true };
        match rt::timeout(budget, c.control.write(cmd)).await {
            Some(Ok(_)) => {}
            Some(Err(e)) => log::warn!("controlled shutdown: cannot record it in the metadata: {e}"),
            None => log::warn!("controlled shutdown: recording it in the metadata timed out"),
        }
    }
    let led: Vec<Rc<Partition>> = shard.partitions.borrow().values().filter(|p| p.leadership().0).cloned().collect();
    for p in shard.partitions.borrow().values() {
        p.start_draining();
    }
    let me = c.node_id;
    let not_yet_moved = || led.iter().filter(|p| !matches!(p.leadership(), (false, Some(l), _) if l != me)).count();
    while not_yet_moved() > 0 && std::time::Instant::now() < deadline {
        rt::sleep(Duration::from_millis(20)).await;
    }
    match not_yet_moved() {
        0 if !led.is_empty() => log::info!(
            "shard {}: leadership of {} partitions handed over in {} ms",
            shard.id,
            led.len(),
            started.elapsed().as_millis()
        ),
        0 => {}
        left => log::warn!(
            "shard {}: {left} of its {} partitions have no other leader after {} ms; stopping anyway",
            shard.id,
            led.len(),
            budget.as_millis()
        ),
    }
}

/// A node that stopped with a controlled shutdown is marked as stopping in the metadata;
/// once started again it clears the mark (retrying until the metadata takes it), so that
/// controllers give it leadership again.
pub async fn undrain_on_start(shard: Rc<Shard>) {
    let Some(c) = shard.cluster.as_ref() else { return };
    // (Checked for as long as the node runs: the metadata this node replays at start may
    // bring the mark after a while.)
    // (A controlled shutdown of this run ends it: its own mark must stay; clearing it would
    // stop the controllers from moving this node's partitions.)
    while !shard.shutting_down.get() && !c.stopping.get() {
        let marked = c.control.meta.borrow().draining.contains(&c.node_id);
        if marked {
            let cmd = crate::cluster::meta::MetaCommand::SetDraining { node: c.node_id, draining: false };
            c.clearing_mark.set(true);
            let cleared = c.control.write(cmd).await;
            c.clearing_mark.set(false);
            if let Err(e) = cleared {
                log::debug!("clearing this node's stopping mark: {e}");
            }
        }
        rt::sleep(Duration::from_millis(500)).await;
    }
}

/// Applies every metadata change: the catalog copy, partitions to open and to drop.
async fn follow_metadata(shard: Rc<Shard>) {
    let mut rx = cluster(&shard).control.meta.clone();
    // The topics last walked, if every replica among them opened: a change that left them
    // as they were (an offset commit shares them) costs no walk.
    let mut walked: Option<Arc<std::collections::BTreeMap<String, crate::cluster::meta::TopicMeta>>> = None;
    loop {
        let meta = rx.borrow_and_update().clone();
        if walked.as_ref().is_some_and(|w| Arc::ptr_eq(w, &meta.topics)) {
            *cluster(&shard).meta.borrow_mut() = meta.clone();
        } else {
            let all_open = apply_metadata(&shard, &meta).await;
            walked = all_open.then(|| meta.topics.clone());
        }
        if shard.shutting_down.get() {
            return;
        }
        let changed = if walked.is_some() {
            rx.changed().await
        } else {
            // A replica did not open (a full disk, an I/O error): try again in a while, also
            // when the metadata stays as it is, or it would stay closed until some change.
            rt::timeout(REOPEN_RETRY, rx.changed()).await.unwrap_or(Ok(()))
        };
        if changed.is_err() {
            return;
        }
    }
}

/// How long a shard waits before trying again to open a replica that failed to open.
const REOPEN_RETRY: Duration = Duration::from_secs(1);

/// Returns whether every replica this shard should hold is open.
async fn apply_metadata(shard: &Rc<Shard>, meta: &Arc<MetaState>) -> bool {
    let mut all_open = true;
    let c = cluster(shard);
    *c.meta.borrow_mut() = meta.clone();
    let gone: Vec<String> =
        shard.catalog.borrow().topics.keys().filter(|t| !meta.topics.contains_key(*t)).cloned().collect();
    for topic in gone {
        let removed = shard.catalog.borrow_mut().topics.remove(&topic);
        if let Some(config) = removed {
            // The records of this node's replicas of the deleted topic go with it.
            for p in (0..config.partitions).filter(|&p| owner_of_partition(&topic, p, shard.shards) == shard.id) {
                let record = replica_record(shard, config.id, p);
                if let Ok(Some(_)) = crate::storage::Disk::read_file(&shard.disk, &record).await {
                    let _ = crate::storage::Disk::remove_file(&shard.disk, &record).await;
                }
            }
        }
        if let Err(e) = shard.drop_topic_partitions(&topic).await {
            log::warn!("removing topic {topic}: {e}");
        }
    }
    for (name, t) in meta.topics.iter() {
        let config = TopicConfig {
            id: t.id,
            partitions: t.partitions.len() as u32,
            replication_factor: t.replication_factor,
            created_ms: t.created_ms,
        };
        shard.catalog.borrow_mut().topics.insert(name.clone(), config);
        for (i, p) in t.partitions.iter().enumerate() {
            let i = i as u32;
            if !p.replicas.contains(&c.node_id) || owner_of_partition(name, i, shard.shards) != shard.id {
                continue;
            }
            if let Some(open) = shard.partition(name, i) {
                if same_incarnation(open.topic_id(), t.id) {
                    continue;
                }
                // The topic was deleted and created again in one step of the metadata.
                shard.partitions.borrow_mut().remove(&(name.clone(), i));
                open.close().await;
            }
            if let Err(e) = open_replica(shard, name, i, t.id).await {
                log::error!("cannot open replica {name}/{i}: {e}");
                all_open = false;
            }
        }
    }
    all_open
}

/// Where a node records that it holds a replica of a partition (outside the partition's
/// directory, which may be lost: `meta/replicas/<topic id>-<partition>`).
fn replica_record(shard: &Shard, topic_id: u64, partition: u32) -> std::path::PathBuf {
    shard.config.data_dir.join("meta").join("replicas").join(format!("{topic_id}-{partition}"))
}

/// Opens this node's replica of a partition. A replica this node held before (its record in
/// `meta/replicas`) whose state is gone lost what it had acknowledged: it must not vote until
/// it caught up. (A replica it never held has acknowledged nothing: its vote is safe.)
async fn open_replica(shard: &Rc<Shard>, topic: &str, partition: u32, topic_id: u64) -> Result<(), String> {
    let dir = crate::broker::catalog::partition_dir(&shard.config.data_dir, topic, partition);
    let disk = &shard.disk;
    let record = replica_record(shard, topic_id, partition);
    let held_before = crate::storage::Disk::read_file(disk, &record).await.map_err(|e| e.to_string())?.is_some();
    let has_state =
        crate::storage::Disk::read_file(disk, &dir.join("replica.json")).await.map_err(|e| e.to_string())?.is_some();
    let lost_data = held_before && !has_state;
    let stored = crate::broker::partition::stored_topic_id(&shard.disk, &dir).await.map_err(|e| e.to_string())?;
    if !same_incarnation(stored, topic_id) {
        // This node was down while the topic was deleted (a committed `topic delete`) and
        // created again: what it holds is the old topic's, never to be served or counted.
        log::warn!(
            "{topic}/{partition}: removing the replica of incarnation {stored} of the topic (it was deleted); \
             the replica of incarnation {topic_id} starts empty"
        );
        crate::storage::Disk::remove_dir_all(&shard.disk, &dir).await.map_err(|e| e.to_string())?;
    }
    let outbound: Rc<dyn Outbound> = Rc::new(super::data_link::ShardOutbound { shard: Rc::downgrade(shard) });
    let config = ReplicaConfig {
        window_records: 1 << 16,
        max_records_per_message: 1 << 16,
        isr_lag_ms: 10 * cluster(shard).control.settings.election_timeout_ms,
        ..ReplicaConfig::default()
    };
    let setup = ReplicaSetup { node: cluster(shard).node_id, topic_id, lost_data, config, outbound };
    let part = Partition::open_replica(
        shard.disk.clone(),
        Rc::from(topic),
        partition,
        dir.clone(),
        shard.config.log_config(),
        shard.config.storage.flush,
        setup,
    )
    .await
    .map_err(|e| e.to_string())?;
    if !held_before {
        crate::storage::Disk::create_dir_all(disk, record.parent().expect("a parent"))
            .await
            .map_err(|e| e.to_string())?;
        crate::storage::Disk::write_file_atomic(disk, &record, topic.as_bytes().to_vec())
            .await
            .map_err(|e| e.to_string())?;
    }
    shard.partitions.borrow_mut().insert((topic.to_string(), partition), part);
    Ok(())
}

async fn serve_control_inbox(shard: Weak<Shard>, mut inbox: tokio::sync::mpsc::Receiver<ControlEnvelope>) {
    while let Some(e) = inbox.recv().await {
        let Some(shard) = shard.upgrade() else { return };
        // A partition not open yet (metadata still on its way) ignores it: controllers retry.
        // So does a replica of another incarnation of the topic.
        if let Some(p) = shard.partition(&e.topic, e.partition).filter(|p| same_incarnation(p.topic_id(), e.topic_id)) {
            p.on_control(e.msg).await;
        }
    }
}

async fn tick_replicas(shard: Weak<Shard>) {
    let started = std::time::Instant::now();
    loop {
        rt::sleep(REPLICA_TICK).await;
        let Some(shard) = shard.upgrade() else { return };
        if shard.shutting_down.get() {
            return;
        }
        let now_ms = started.elapsed().as_millis() as u64;
        let parts: Vec<_> = shard.partitions.borrow().iter().map(|(k, p)| (k.clone(), p.clone())).collect();
        for ((topic, partition), p) in parts {
            if matches!(p.health(), crate::storage::LogHealth::Corrupt(_)) {
                let key = (topic.clone(), partition);
                if cluster(&shard).repairing.borrow_mut().insert(key) {
                    rt::spawn(repair_replica(shard.clone(), topic, partition, p));
                }
                continue;
            }
            p.replication_tick(now_ms);
        }
    }
}

/// A replica that found damage in its log while it ran (a read below the high watermark
/// met a batch whose CRC fails: a bit flip on the disk) refuses service, and the other
/// replicas hold good copies: it is closed and opened again, which cuts its log where the
/// damage begins and has it fetch the rest from the partition's leader, without a vote
/// until it caught up (`Partition::open_replica`). A leader thereby steps down; the
/// controller elects one of the others. Tried again every second until it opens.
async fn repair_replica(shard: Rc<Shard>, topic: String, partition: u32, corrupt: Rc<Partition>) {
    log::warn!("{topic}/{partition}: this replica's log is damaged; reopening it to repair it from the leader");
    // (It stays in the shard's map, closed, until the new one replaces it: the metadata
    // follower must not open a second one on the same files meanwhile.)
    let topic_id = corrupt.topic_id();
    corrupt.close().await;
    loop {
        let wanted = cluster(&shard).meta.borrow().topics.get(&topic).is_some_and(|t| t.id == topic_id);
        let still_this_one = shard.partition(&topic, partition).is_some_and(|p| Rc::ptr_eq(&p, &corrupt));
        if shard.shutting_down.get() || !wanted || !still_this_one {
            break;
        }
        match open_replica(&shard, &topic, partition, topic_id).await {
            Ok(()) => break,
            Err(e) => log::error!("cannot reopen replica {topic}/{partition} to repair it: {e}"),
        }
        rt::sleep(REOPEN_RETRY).await;
    }
    cluster(&shard).repairing.borrow_mut().remove(&(topic, partition));
}

/// How often the scrub looks for a replica due for a pass.
const SCRUB_POLL: Duration = Duration::from_secs(1);

/// Scrubs the shard's replicas one at a time (`Partition::scrub`): each one soon after it
/// opens, since damage done while the node was down (or by its last crash) has had no
/// reader, then again `every` after its last complete pass. Damage found marks the log
/// corrupt, and `tick_replicas` has the replica repaired from the others.
async fn scrub_replicas(shard: Weak<Shard>, bytes_per_sec: u64, every: Duration) {
    // The last complete pass of each replica (a reopened replica is another one).
    let mut passes: HashMap<(String, u32), (Weak<Partition>, std::time::Instant)> = HashMap::new();
    loop {
        rt::sleep(SCRUB_POLL).await;
        let Some(due) = shard.upgrade().and_then(|shard| replica_due_for_scrub(&shard, &mut passes, every)) else {
            if shard.upgrade().is_none_or(|s| s.shutting_down.get()) {
                return;
            }
            continue;
        };
        let (key, p) = due;
        match p.scrub(bytes_per_sec).await {
            Ok(crate::broker::partition::Scrubbed::Clean { bytes }) => {
                log::info!("{}/{}: scrubbed {bytes} bytes, no damage", key.0, key.1);
                passes.insert(key, (Rc::downgrade(&p), std::time::Instant::now()));
            }
            Ok(crate::broker::partition::Scrubbed::Damaged { .. })
            | Ok(crate::broker::partition::Scrubbed::Interrupted) => {}
            Err(e) => {
                log::warn!("{}/{}: the scrub could not read the log: {e}", key.0, key.1);
                passes.insert(key, (Rc::downgrade(&p), std::time::Instant::now()));
            }
        }
    }
}

/// The healthy replica that waited longest for a scrub: first those never scrubbed since
/// they opened, then those whose last pass is `every` old. Forgets replicas now closed.
fn replica_due_for_scrub(
    shard: &Shard,
    passes: &mut HashMap<(String, u32), (Weak<Partition>, std::time::Instant)>,
    every: Duration,
) -> Option<((String, u32), Rc<Partition>)> {
    if shard.shutting_down.get() {
        return None;
    }
    let parts = shard.partitions.borrow();
    passes.retain(|key, (weak, _)| parts.get(key).is_some_and(|p| std::ptr::eq(Rc::as_ptr(p), weak.as_ptr())));
    let last_pass = |key: &(String, u32)| passes.get(key).map(|(_, at)| *at);
    parts
        .iter()
        .filter(|(_, p)| matches!(p.health(), crate::storage::LogHealth::Healthy) && p.is_replicated())
        .filter(|(key, _)| last_pass(key).is_none_or(|at| at.elapsed() >= every))
        .min_by_key(|(key, _)| last_pass(key))
        .map(|(key, p)| (key.clone(), p.clone()))
}

/// Whether two topic ids name the same incarnation (0: not known, written before ids).
pub fn same_incarnation(a: u64, b: u64) -> bool {
    a == b || a == 0 || b == 0
}
