//! The control plane: one thread per node running a tokio runtime with openraft for the
//! metadata, the node-to-node control links, and (on the metadata leader) one partition
//! [`Controller`] per partition that elects partition leaders.
//!
//! Shards talk to it through a [`ControlHandle`] (metadata writes, status, their replicas'
//! messages to the controller) and hear from it through a watch channel of the metadata and
//! one inbox per shard for controller messages to their replicas. Nothing here is on the
//! data path.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{
    ClientWriteError, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{BasicNode, Raft, ServerState};
use tokio::sync::{mpsc, oneshot, watch};

pub mod carry_out;
mod controllers;

use super::meta::{MetaCommand, MetaError, MetaState};
use super::raft_store::{LogStore, MetaRaft, MetaReply, RaftNodeId, StateMachine};
use super::rpc::{
    check_hello, control_handshake, read_msg, write_msg, ControlEnvelope, LinkError, PeerLink, Reply, Request,
    WriteError,
};
use crate::config::{ClusterMode, ClusterSettings, Config};
use crate::protocol::messages::{
    ClusterStatusResponse as ClusterStatus, FollowerLag, NodeStatusInfo, PartitionReplicationStatus,
};
use crate::replication::controller::{Controller, ControllerAction, ControllerConfig};
use crate::replication::{ControlMessage, NodeId};
use crate::shard::owner_of_partition;
use crate::storage::control_files::{InjectedFaults, OsControlFiles};
use controllers::controller_loop;

/// How long a metadata write may wait for a leader before it fails.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// Timeout of one control-link call.
const CALL_TIMEOUT: Duration = Duration::from_millis(1000);
/// How often controllers tick and nodes say they are alive.
const TICK: Duration = Duration::from_millis(20);
const NODE_HEARTBEAT: Duration = Duration::from_millis(100);

/// Why a metadata request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Refused(#[from] MetaError),
    #[error("cluster metadata unavailable: {0}")]
    Unavailable(String),
}

enum ShardRequest {
    Write(MetaCommand, oneshot::Sender<Result<Option<u64>, ControlError>>),
    Status(oneshot::Sender<Result<ClusterStatus, ControlError>>),
}

/// What a shard holds to reach the control plane. Cheap to clone; `Send`.
#[derive(Clone)]
pub struct ControlHandle {
    requests: mpsc::Sender<ShardRequest>,
    to_controller: mpsc::Sender<ControlEnvelope>,
    /// The metadata as this node applied it.
    pub meta: watch::Receiver<Arc<MetaState>>,
    pub settings: Arc<ClusterSettings>,
}

impl ControlHandle {
    /// Applies a metadata command through Raft; returns once it is committed (and applied
    /// on the metadata leader), with what it allocated (see [`MetaState::apply`]).
    pub async fn write(&self, cmd: MetaCommand) -> Result<Option<u64>, ControlError> {
        let (tx, rx) = oneshot::channel();
        self.requests.send(ShardRequest::Write(cmd, tx)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    pub async fn status(&self) -> Result<ClusterStatus, ControlError> {
        let (tx, rx) = oneshot::channel();
        self.requests.send(ShardRequest::Status(tx)).await.map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// A replica's message for its partition's controller.
    pub fn to_controller(&self, envelope: ControlEnvelope) {
        offer(&self.to_controller, envelope, "to the controller");
    }
}

/// Messages a control-plane queue holds (requests from the shards, messages for the
/// controller, for each shard's replicas, for each other node): beyond, a shard's request
/// waits and a control message is dropped.
pub const CONTROL_QUEUE_DEPTH: usize = 4096;

/// Queues a control message, dropping it when the queue is full: every one is periodic or
/// retried (replicas report each tick, controllers resend every 100 ms), so a flood costs a
/// bounded queue, never memory that grows.
fn offer<T>(tx: &mpsc::Sender<T>, msg: T, queue: &str) {
    if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(msg) {
        log::debug!("control queue {queue} is full: a message dropped (it is retried)");
    }
}

fn reply_result(reply: MetaReply) -> Result<Option<u64>, ControlError> {
    match reply.error {
        Some(e) => Err(ControlError::Refused(e)),
        None => Ok(reply.value),
    }
}

fn stopped() -> ControlError {
    ControlError::Unavailable("the control plane stopped".into())
}

/// The control plane's thread; dropping every [`ControlHandle`] stops it.
pub struct ControlPlane {
    pub handle: ControlHandle,
    pub thread: std::thread::JoinHandle<()>,
    /// Ends the control plane (Raft shut down, links closed), whoever still holds a handle.
    pub stop: Arc<tokio::sync::Notify>,
}

/// Refuses to start a node whose Raft vote is missing while its disk holds replicas of the
/// cluster: it was a member, its metadata was lost, and on an empty vote it could vote twice
/// in one term and help elect two metadata leaders. (A disk wiped whole cannot be told from
/// a new node's; docs/cluster-modes.md, "Losing a disk", says what to do in both cases.)
fn refuse_lost_vote(data_dir: &std::path::Path, raft_dir: &std::path::Path) -> Result<(), String> {
    if raft_dir.join("vote.json").exists() {
        return Ok(());
    }
    let replica_state = std::fs::read_dir(data_dir.join("topics"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|topic| std::fs::read_dir(topic.path()).into_iter().flatten().flatten())
        .map(|partition| partition.path().join("replica.json"))
        .find(|state| state.exists());
    match replica_state {
        None => Ok(()),
        Some(state) => Err(format!(
            "{} holds no Raft vote, but {} shows that this node held replicas of the cluster: its \
             metadata was lost, and started on an empty vote it could help elect two metadata leaders \
             in one term; restore {} from a backup or rebuild the cluster (docs/cluster-modes.md, \
             \"Losing a disk\")",
            raft_dir.display(),
            state.display(),
            raft_dir.display()
        )),
    }
}

/// Starts the control plane. `shard_inboxes[i]` receives the controller's messages for the
/// replicas shard `i` owns.
pub fn start(config: &Config, shard_inboxes: Vec<mpsc::Sender<ControlEnvelope>>) -> Result<ControlPlane, String> {
    let settings = Arc::new(config.cluster.clone().ok_or("no [cluster] section")?);
    let me = settings.me().clone();
    let listener = std::net::TcpListener::bind(me.peer).map_err(|e| format!("cannot listen on {}: {e}", me.peer))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let raft_dir = config.data_dir.join("meta").join("raft");
    refuse_lost_vote(&config.data_dir, &raft_dir)?;
    let files = OsControlFiles::shared(InjectedFaults::Metadata);
    let log_store =
        LogStore::open(files.clone(), &raft_dir).map_err(|e| format!("metadata log {}: {e}", raft_dir.display()))?;
    let (state_machine, meta) =
        StateMachine::open(files, &raft_dir).map_err(|e| format!("metadata snapshot {}: {e}", raft_dir.display()))?;
    let (requests, requests_rx) = mpsc::channel(CONTROL_QUEUE_DEPTH);
    let stop = Arc::new(tokio::sync::Notify::new());
    let stop_rx = stop.clone();
    let (to_controller, to_controller_rx) = mpsc::channel(CONTROL_QUEUE_DEPTH);
    let handle = ControlHandle { requests, to_controller, meta: meta.clone(), settings: settings.clone() };
    let shards = config.shard_count();
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("cannot start the control runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                let ctx = match Ctx::start(settings, shards, shard_inboxes, log_store, state_machine, meta).await {
                    Ok(ctx) => ctx,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                run(ctx, listener, requests_rx, to_controller_rx, stop_rx).await;
            });
        })
        .map_err(|e| format!("cannot start the control thread: {e}"))?;
    ready_rx.recv().map_err(|_| "the control thread died while starting".to_string())??;
    Ok(ControlPlane { handle, thread, stop })
}

/// State shared by the control plane's tasks.
struct Ctx {
    me: NodeId,
    settings: Arc<ClusterSettings>,
    raft: Raft<MetaRaft>,
    meta: watch::Receiver<Arc<MetaState>>,
    shards: usize,
    shard_inboxes: Vec<mpsc::Sender<ControlEnvelope>>,
    /// Controller-bound messages (from local replicas and from other nodes).
    controller_inbox: mpsc::Sender<Vec<ControlEnvelope>>,
    controller_inbox_rx: Mutex<Option<mpsc::Receiver<Vec<ControlEnvelope>>>>,
    outboxes: Mutex<HashMap<NodeId, mpsc::Sender<Vec<ControlEnvelope>>>>,
    write_links: Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<PeerLink>>>>,
    last_seen: Mutex<HashMap<NodeId, Instant>>,
    /// The last heartbeat of each partition's leader (for status).
    leader_reports: Mutex<HashMap<(String, u32), ControlMessage>>,
}

impl Ctx {
    async fn start(
        settings: Arc<ClusterSettings>,
        shards: usize,
        shard_inboxes: Vec<mpsc::Sender<ControlEnvelope>>,
        log_store: LogStore,
        state_machine: StateMachine,
        meta: watch::Receiver<Arc<MetaState>>,
    ) -> Result<Arc<Ctx>, String> {
        let et = settings.election_timeout_ms;
        let raft_config = openraft::Config {
            cluster_name: settings.cluster_id.clone(),
            heartbeat_interval: (et / 8).max(20),
            election_timeout_min: et / 2,
            election_timeout_max: et * 3 / 4,
            ..Default::default()
        };
        let raft_config = Arc::new(raft_config.validate().map_err(|e| format!("raft settings: {e}"))?);
        let network = Network { settings: settings.clone() };
        let me = settings.node_id;
        let raft = Raft::new(u64::from(me), raft_config, network, log_store, state_machine)
            .await
            .map_err(|e| format!("cannot start the metadata raft: {e}"))?;
        if !raft.is_initialized().await.map_err(|e| e.to_string())? {
            let members: BTreeMap<RaftNodeId, BasicNode> =
                settings.nodes.iter().map(|n| (u64::from(n.id), BasicNode::new(n.peer))).collect();
            // Every node may propose the same initial membership; all but the first are
            // refused, which is fine.
            if let Err(e) = raft.initialize(members).await {
                log::debug!("metadata raft initialisation: {e}");
            }
        }
        let (controller_inbox, rx) = mpsc::channel(CONTROL_QUEUE_DEPTH);
        Ok(Arc::new(Ctx {
            me,
            settings,
            raft,
            meta,
            shards,
            shard_inboxes,
            controller_inbox,
            controller_inbox_rx: Mutex::new(Some(rx)),
            outboxes: Mutex::new(HashMap::new()),
            write_links: Mutex::new(HashMap::new()),
            last_seen: Mutex::new(HashMap::new()),
            leader_reports: Mutex::new(HashMap::new()),
        }))
    }

    fn metadata_leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader.map(|l| l as NodeId)
    }

    fn is_metadata_leader(&self) -> bool {
        let m = self.raft.metrics().borrow().clone();
        m.state == ServerState::Leader && m.current_leader == Some(u64::from(self.me))
    }

    fn saw(&self, node: NodeId) {
        self.last_seen.lock().expect("last_seen lock").insert(node, Instant::now());
    }

    /// Applies `cmd` through Raft, forwarding it to the metadata leader when that is not us.
    async fn write(&self, cmd: MetaCommand) -> Result<Option<u64>, ControlError> {
        let deadline = Instant::now() + WRITE_DEADLINE;
        loop {
            let leader = match self.raft.client_write(cmd.clone()).await {
                Ok(resp) => return reply_result(resp.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => f.leader_id.map(|l| l as NodeId),
                Err(e) => return Err(ControlError::Unavailable(e.to_string())),
            };
            if let Some(leader) = leader.filter(|&l| l != self.me) {
                match self.forward_write(leader, &cmd).await {
                    Ok(reply) => return reply_result(reply),
                    Err(e) => log::debug!("forwarding a metadata write to node {leader}: {e}"),
                }
            }
            if Instant::now() >= deadline {
                return Err(ControlError::Unavailable("no metadata leader (is a majority of nodes up?)".into()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn forward_write(&self, leader: NodeId, cmd: &MetaCommand) -> Result<MetaReply, String> {
        let link = self.write_link(leader).ok_or("unknown node")?;
        let mut link = link.lock().await;
        match link.call(&Request::Write(cmd.clone()), CALL_TIMEOUT * 5).await {
            Ok(Reply::Write(Ok(r))) => Ok(r),
            Ok(Reply::Write(Err(e))) => Err(e.to_string()),
            Ok(_) => Err("unexpected reply".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    fn write_link(&self, node: NodeId) -> Option<Arc<tokio::sync::Mutex<PeerLink>>> {
        let mut links = self.write_links.lock().expect("links lock");
        if let Some(link) = links.get(&node) {
            return Some(link.clone());
        }
        let link = Arc::new(tokio::sync::Mutex::new(PeerLink::new(&self.settings, node)?));
        links.insert(node, link.clone());
        Some(link)
    }

    /// Queues messages for a node; a task per node sends what queued up, one call at a time.
    /// Lost messages are fine: controllers and replicas retry.
    fn send_to(self: &Arc<Self>, node: NodeId, messages: Vec<ControlEnvelope>) {
        if node == self.me {
            self.deliver(messages);
            return;
        }
        let Some(link) = PeerLink::new(&self.settings, node) else { return };
        let mut outboxes = self.outboxes.lock().expect("outboxes lock");
        let tx = outboxes.entry(node).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(CONTROL_QUEUE_DEPTH);
            tokio::spawn(send_loop(link, rx));
            tx
        });
        offer(tx, messages, "outbox");
    }

    /// Routes messages that arrived for this node: to the controller or to the replicas.
    fn deliver(&self, messages: Vec<ControlEnvelope>) {
        let (to_controller, to_replicas): (Vec<_>, Vec<_>) = messages
            .into_iter()
            .partition(|e| matches!(e.msg, ControlMessage::Fenced { .. } | ControlMessage::Heartbeat { .. }));
        if !to_controller.is_empty() {
            offer(&self.controller_inbox, to_controller, "controller inbox");
        }
        for e in to_replicas {
            let shard = owner_of_partition(&e.topic, e.partition, self.shards);
            offer(&self.shard_inboxes[shard], e, "shard inbox");
        }
    }

    fn status(&self) -> Result<ClusterStatus, ControlError> {
        let leader = self.metadata_leader();
        let timeout = Duration::from_millis(self.settings.election_timeout_ms);
        let seen = self.last_seen.lock().expect("last_seen lock").clone();
        let nodes = self
            .settings
            .nodes
            .iter()
            .map(|n| NodeStatusInfo {
                node_id: n.id,
                client_addr: n.client.to_string(),
                alive: n.id == self.me || seen.get(&n.id).is_some_and(|t| t.elapsed() < timeout),
                metadata_leader: leader == Some(n.id),
            })
            .collect();
        let meta = self.meta.borrow().clone();
        let reports = self.leader_reports.lock().expect("reports lock").clone();
        let mut partitions = Vec::new();
        for (topic, t) in meta.topics.iter() {
            for (i, p) in t.partitions.iter().enumerate() {
                let mut r = PartitionReplicationStatus {
                    topic: topic.clone(),
                    partition: i as u32,
                    replicas: p.replicas.clone(),
                    epoch: p.epoch,
                    leader: p.leader,
                    in_sync: Vec::new(),
                    high_watermark: 0,
                    log_end: 0,
                    lag: Vec::new(),
                };
                if let Some(ControlMessage::Heartbeat {
                    from,
                    leading,
                    high_watermark,
                    log_end,
                    in_sync,
                    followers,
                    ..
                }) = reports.get(&(topic.clone(), i as u32))
                {
                    if Some(*from) == p.leader && *leading == Some(p.epoch) {
                        r.in_sync = in_sync.clone();
                        r.high_watermark = *high_watermark;
                        r.log_end = *log_end;
                        r.lag = followers
                            .iter()
                            .map(|&(node_id, m)| FollowerLag { node_id, records: log_end.saturating_sub(m) })
                            .collect();
                    }
                }
                partitions.push(r);
            }
        }
        Ok(ClusterStatus {
            cluster_id: self.settings.cluster_id.clone(),
            mode: self.settings.mode.to_string(),
            metadata_leader: leader,
            nodes,
            partitions,
        })
    }

    async fn status_from_leader(&self) -> Result<ClusterStatus, ControlError> {
        if self.is_metadata_leader() {
            return self.status();
        }
        let leader = self.metadata_leader().ok_or_else(|| ControlError::Unavailable("no metadata leader".into()))?;
        let link = self.write_link(leader).ok_or_else(|| ControlError::Unavailable("unknown leader".into()))?;
        let mut link = link.lock().await;
        match link.call(&Request::Status, CALL_TIMEOUT).await {
            Ok(Reply::Status(Ok(s))) => Ok(s),
            Ok(Reply::Status(Err(e))) => Err(ControlError::Unavailable(e.to_string())),
            Ok(_) => Err(ControlError::Unavailable("unexpected reply".into())),
            Err(e) => Err(ControlError::Unavailable(format!("metadata leader {leader}: {e}"))),
        }
    }
}

async fn send_loop(mut link: PeerLink, mut rx: mpsc::Receiver<Vec<ControlEnvelope>>) {
    while let Some(mut batch) = rx.recv().await {
        while let Ok(more) = rx.try_recv() {
            batch.extend(more);
        }
        let from = link_owner(&link);
        if let Err(e) = link.call(&Request::Control { from, messages: batch }, CALL_TIMEOUT).await {
            log::debug!("control link to node {}: {e}", link.target);
        }
    }
}

fn link_owner(link: &PeerLink) -> NodeId {
    link.me()
}

/// Runs the control plane until the shards drop their handles.
async fn run(
    ctx: Arc<Ctx>,
    listener: std::net::TcpListener,
    mut requests: mpsc::Receiver<ShardRequest>,
    to_controller: mpsc::Receiver<ControlEnvelope>,
    stop: Arc<tokio::sync::Notify>,
) {
    match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => {
            tokio::spawn(accept_loop(ctx.clone(), l));
        }
        Err(e) => log::error!("control listener: {e}"),
    }
    tokio::spawn(forward_to_controller(ctx.clone(), to_controller));
    tokio::spawn(controller_loop(ctx.clone()));
    tokio::spawn(stop_when_raft_fails(ctx.raft.metrics()));
    loop {
        let req = tokio::select! {
            req = requests.recv() => req,
            _ = stop.notified() => None,
        };
        let Some(req) = req else { break };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            match req {
                ShardRequest::Write(cmd, reply) => {
                    let _ = reply.send(ctx.write(cmd).await);
                }
                ShardRequest::Status(reply) => {
                    let _ = reply.send(ctx.status_from_leader().await);
                }
            }
        });
    }
    if let Err(e) = ctx.raft.shutdown().await {
        log::warn!("metadata raft shutdown: {e}");
    }
}

/// Fail-stop: when this node's Raft stops on an error (its metadata log could not be
/// written or synced, so what it has acknowledged may not be durable, or a panic), the
/// process exits. Going on, it would serve clients and lead partitions on metadata it can
/// no longer make durable nor follow. The other members carry on without it; restarted (by
/// the operator or a supervisor) on a healthy disk, it recovers its log and catches up.
async fn stop_when_raft_fails(mut metrics: watch::Receiver<openraft::RaftMetrics<RaftNodeId, BasicNode>>) {
    loop {
        let failed = match &metrics.borrow_and_update().running_state {
            Err(openraft::error::Fatal::Stopped) | Ok(()) => None,
            Err(fatal) => Some(fatal.to_string()),
        };
        if let Some(why) = failed {
            log::error!(
                "the metadata log cannot be written ({why}): this node stops; restart it once its disk is healthy"
            );
            std::process::exit(EXIT_METADATA_FAILED);
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// The exit status of a node whose metadata log failed (EX_IOERR of sysexits.h).
const EXIT_METADATA_FAILED: i32 = 74;

/// Sends local replicas' messages (and this node's liveness) to the metadata leader.
async fn forward_to_controller(ctx: Arc<Ctx>, mut rx: mpsc::Receiver<ControlEnvelope>) {
    let mut heartbeat = tokio::time::interval(NODE_HEARTBEAT);
    loop {
        let mut batch = Vec::new();
        tokio::select! {
            got = rx.recv() => match got {
                Some(e) => batch.push(e),
                None => return,
            },
            _ = heartbeat.tick() => {
                // Every node hears from every other one, so that whichever becomes the
                // metadata leader knows who is alive (and who went silent, and when).
                let leader = ctx.metadata_leader();
                for n in ctx.settings.node_ids() {
                    if n != ctx.me && Some(n) != leader {
                        ctx.send_to(n, Vec::new());
                    }
                }
            }
        }
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        match ctx.metadata_leader() {
            Some(l) if l == ctx.me => ctx.deliver(batch),
            // An empty batch still tells the leader this node is alive.
            Some(l) => ctx.send_to(l, batch),
            None => {}
        }
    }
}

/// Control links that have not said hello yet, at most: beyond, new connections are closed
/// at once (a member connects once per peer; a flood of strangers gets nowhere).
const MAX_LINKS_BEFORE_HELLO: usize = 64;

async fn accept_loop(ctx: Arc<Ctx>, listener: tokio::net::TcpListener) {
    let before_hello = Arc::new(tokio::sync::Semaphore::new(MAX_LINKS_BEFORE_HELLO));
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                let Ok(permit) = before_hello.clone().try_acquire_owned() else {
                    log::warn!("control link from {addr} refused: {MAX_LINKS_BEFORE_HELLO} links are saying hello");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve_link(ctx.clone(), stream, addr, permit));
            }
            Err(e) => {
                log::warn!("control listener: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// With `[tls]`, the TLS handshake of an accepted control link (within the hello's time
/// bound), and the DNS names of the certificate the other node presented.
async fn secure_link(
    ctx: &Ctx,
    stream: tokio::net::TcpStream,
) -> Result<(super::rpc::LinkStream, Vec<String>), String> {
    let Some(tls) = &ctx.settings.tls else { return Ok((Box::new(stream), Vec::new())) };
    let within = Duration::from_millis(crate::limits::DEFAULT_FRAME_TIMEOUT_MS);
    let accept = tokio_rustls::TlsAcceptor::from(tls.server_config()).accept(stream);
    let stream = tokio::time::timeout(within, accept)
        .await
        .map_err(|_| format!("the TLS handshake did not complete within {within:?}"))?
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let names = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(crate::net::tls::dns_names_of);
    Ok((Box::new(stream), names.unwrap_or_default()))
}

async fn serve_link(
    ctx: Arc<Ctx>,
    stream: tokio::net::TcpStream,
    addr: SocketAddr,
    before_hello: tokio::sync::OwnedSemaphorePermit,
) {
    let (mut stream, cert_names) = match secure_link(&ctx, stream).await {
        Ok(secured) => secured,
        Err(why) => {
            crate::log_limited!(warn, "control link from {addr} refused: {why}");
            return;
        }
    };
    let peer = accept_handshake(&ctx.settings, &mut stream, &cert_names).await;
    drop(before_hello);
    let peer = match peer {
        Ok(p) => p,
        Err(why) => {
            // (Rate-limited: a flood of forged hellos must not fill the disk.)
            crate::log_limited!(warn, "control link from {addr} refused: {why}");
            let _ = write_msg(&mut stream, &Reply::Refused(why)).await;
            return;
        }
    };
    if write_msg(&mut stream, &Reply::HelloOk).await.is_err() {
        return;
    }
    ctx.saw(peer);
    loop {
        let req = match read_msg::<Request>(&mut stream).await {
            Ok(r) => r,
            Err(LinkError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return,
            Err(e) => {
                log::warn!("control link from node {peer} ({addr}) closed: {e}");
                return;
            }
        };
        ctx.saw(peer);
        let reply = handle(&ctx, peer, req).await;
        if write_msg(&mut stream, &reply).await.is_err() {
            return;
        }
    }
}

/// The receiver's side of the node handshake on a control link: the opener's node id once
/// it proved it holds the cluster secret.
async fn accept_handshake(
    settings: &ClusterSettings,
    stream: &mut super::rpc::LinkStream,
    cert_names: &[String],
) -> Result<NodeId, String> {
    let first = super::rpc::read_hello::<Request>(stream).await.map_err(|e| e.to_string())?;
    let (peer, initiator_nonce) = check_hello(&first, &settings.cluster_id, &settings.node_ids(), settings.node_id)?;
    // With TLS, the link's certificate must name the node it says it is.
    let wanted = crate::net::tls::node_name(&settings.cluster_id, peer);
    if settings.tls.is_some() && !cert_names.contains(&wanted) {
        return Err(format!("node {peer}'s link presented no certificate naming {wanted}"));
    }
    let acceptor_nonce = crate::protocol::node_auth::fresh_nonce();
    let handshake = control_handshake(
        &settings.secret,
        &settings.cluster_id,
        peer,
        settings.node_id,
        initiator_nonce,
        acceptor_nonce,
    );
    let challenge =
        Reply::Challenge { node_id: settings.node_id, nonce: acceptor_nonce, proof: handshake.acceptor_proof() };
    write_msg(stream, &challenge).await.map_err(|e| e.to_string())?;
    match super::rpc::read_hello::<Request>(stream).await.map_err(|e| e.to_string())? {
        Request::Proof { proof } => handshake.check_initiator(&proof).map_err(|e| e.to_string())?,
        _ => return Err(format!("node {peer} sent something else than its proof")),
    }
    Ok(peer)
}

async fn handle(ctx: &Arc<Ctx>, peer: NodeId, req: Request) -> Reply {
    match req {
        Request::Append(rpc) => Reply::Append(ctx.raft.append_entries(rpc).await),
        Request::Vote(rpc) => Reply::Vote(ctx.raft.vote(rpc).await),
        Request::Snapshot(rpc) => Reply::Snapshot(ctx.raft.install_snapshot(rpc).await),
        Request::Write(cmd) => Reply::Write(match ctx.raft.client_write(cmd).await {
            Ok(resp) => Ok(resp.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(WriteError::NotLeader(f.leader_id.map(|l| l as NodeId)))
            }
            Err(e) => Err(WriteError::Failed(e.to_string())),
        }),
        Request::Control { from, messages } if from == peer => {
            ctx.deliver(messages);
            Reply::Done
        }
        Request::Control { from, .. } => {
            log::warn!("control link from node {peer} claims to be node {from}; ignored");
            Reply::Refused("sender mismatch".into())
        }
        Request::Status => Reply::Status(if ctx.is_metadata_leader() {
            ctx.status().map_err(|e| WriteError::Failed(e.to_string()))
        } else {
            Err(WriteError::NotLeader(ctx.metadata_leader()))
        }),
        Request::Hello { .. } | Request::Proof { .. } => {
            Reply::Refused("a handshake message after the handshake".into())
        }
    }
}

/// openraft's network: one link per target node.
struct Network {
    settings: Arc<ClusterSettings>,
}

impl RaftNetworkFactory<MetaRaft> for Network {
    type Network = RaftLink;

    async fn new_client(&mut self, target: RaftNodeId, _node: &BasicNode) -> RaftLink {
        RaftLink { target, link: PeerLink::new(&self.settings, target as NodeId) }
    }
}

struct RaftLink {
    target: RaftNodeId,
    link: Option<PeerLink>,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<RaftNodeId, BasicNode, RaftError<RaftNodeId, E>>>;

impl RaftLink {
    async fn call(&mut self, req: Request, option: &RPCOption) -> Result<Reply, Unreachable> {
        let link = self.link.as_mut().ok_or_else(|| Unreachable::new(&LinkError::Refused("unknown node".into())))?;
        link.call(&req, option.hard_ttl()).await.map_err(|e| Unreachable::new(&e))
    }
}

fn unexpected<E: std::error::Error>() -> RPCError<RaftNodeId, BasicNode, RaftError<RaftNodeId, E>> {
    RPCError::Network(NetworkError::new(&LinkError::Unexpected))
}

impl RaftNetwork<MetaRaft> for RaftLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<MetaRaft>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<RaftNodeId>> {
        match self.call(Request::Append(rpc), &option).await? {
            Reply::Append(Ok(r)) => Ok(r),
            Reply::Append(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(unexpected()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<MetaRaft>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<RaftNodeId>, InstallSnapshotError> {
        match self.call(Request::Snapshot(rpc), &option).await? {
            Reply::Snapshot(Ok(r)) => Ok(r),
            Reply::Snapshot(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(unexpected()),
        }
    }

    async fn vote(&mut self, rpc: VoteRequest<RaftNodeId>, option: RPCOption) -> RpcResult<VoteResponse<RaftNodeId>> {
        match self.call(Request::Vote(rpc), &option).await? {
            Reply::Vote(Ok(r)) => Ok(r),
            Reply::Vote(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(unexpected()),
        }
    }
}
