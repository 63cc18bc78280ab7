//! The data links: from the leaders on this shard to each follower node, the appends the
//! replicas ask for (ranges of the log, read from it when sent) and their other messages;
//! each answer goes back to its partition. Also the connections that forward client
//! requests to other nodes.
//!
//! A link never holds more than the replicas need: what waits for it is at most one range
//! and a few messages per partition ([`LinkQueue`]), so a link that cannot keep up, or a
//! follower that is away, costs memory in proportion to partitions, not to time. A link
//! whose follower stops answering ([`LINK_REPLY_TIMEOUT`]) is closed and opened again; what
//! was in flight or queued is the replicas' to resend.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};
use std::time::Duration;

use super::cluster::{cluster, same_incarnation};
use crate::broker::partition::Outbound;
use crate::broker::Partition;
use crate::cluster::rpc::ControlEnvelope;
use crate::config::ClusterSettings;
use crate::net::connection::Connection;
use crate::protocol::node_auth::{fresh_nonce, Handshake, LinkKind};
use crate::protocol::peer::{encode_peer, AppendReply, PeerChallenge, PeerHello, PeerKind, PeerProof, WirePeer};
use crate::protocol::{decode, encode};
use crate::replication::{ControlMessage, Epoch, NodeId, PeerMessage};
use crate::rt::{self, Notify};
use crate::shard::Shard;

/// Bytes of batches in one append frame to a follower, at most (one batch may exceed it).
const APPEND_FRAME_BYTES: usize = 1 << 20;
/// Append frames in flight on one link before the link waits for answers.
const LINK_WINDOW: u64 = 64;
/// A follower answers an append once it is durable. One that has not answered for this
/// long is taken as gone, and the link reconnects: a machine that vanished without a reset
/// (power lost) leaves a connection on which everything sent was acknowledged, so TCP has
/// nothing to retransmit and would never report it dead. Far above a durable write (even
/// the nemesis's slowest disk: 200 ms per write), below the in-sync lag limit (6 s).
pub const LINK_REPLY_TIMEOUT: Duration = Duration::from_secs(3);
/// Messages other than the range kept waiting per partition on a link; older ones go first.
const MESSAGES_PER_PARTITION: usize = 4;

/// The replicas' outbound path: sends to the links, reports to the controller.
pub struct ShardOutbound {
    pub shard: Weak<Shard>,
}

impl Outbound for ShardOutbound {
    fn send(&self, topic: &Rc<str>, topic_id: u64, partition: u32, to: NodeId, msg: PeerMessage) {
        let Some(shard) = self.shard.upgrade() else { return };
        let link = link_to(&shard, to);
        let key = ReplicaKey { topic: topic.clone(), topic_id, partition };
        let item = match msg {
            PeerMessage::Append { epoch, prev_offset, end_offset, .. } if end_offset > prev_offset => {
                Outgoing::Range { key, epoch, from: prev_offset, to: end_offset }
            }
            msg => Outgoing::Message { key, msg },
        };
        link.queue.borrow_mut().push(item);
        link.wake.notify();
    }

    fn control(&self, topic: &Rc<str>, topic_id: u64, partition: u32, msg: ControlMessage) {
        let Some(shard) = self.shard.upgrade() else { return };
        cluster(&shard).control.to_controller(ControlEnvelope { topic: topic.to_string(), topic_id, partition, msg });
    }
}

/// A replica: its partition and the incarnation of its topic.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ReplicaKey {
    topic: Rc<str>,
    topic_id: u64,
    partition: u32,
}

impl ReplicaKey {
    /// This shard's replica of it, if it is still that incarnation.
    fn replica(&self, shard: &Shard) -> Option<Rc<Partition>> {
        shard.partition(&self.topic, self.partition).filter(|p| same_incarnation(p.topic_id(), self.topic_id))
    }
}

#[derive(Debug, PartialEq)]
enum Outgoing {
    /// Batches `[from, to)` of a partition this shard leads in `epoch`.
    Range {
        key: ReplicaKey,
        epoch: Epoch,
        from: u64,
        to: u64,
    },
    Message {
        key: ReplicaKey,
        msg: PeerMessage,
    },
}

/// What one partition has waiting on a link.
#[derive(Default)]
struct Waiting {
    /// The range to send, with its epoch: ranges asked for while one waits are merged into
    /// it (a resend from an earlier offset widens it), so a link that waits does not
    /// collect one copy of the log per resend.
    range: Option<(Epoch, u64, u64)>,
    messages: VecDeque<PeerMessage>,
}

/// What waits to be sent on a link, partitions served in turn.
#[derive(Default)]
struct LinkQueue {
    turn: VecDeque<ReplicaKey>,
    waiting: HashMap<ReplicaKey, Waiting>,
}

impl LinkQueue {
    fn push(&mut self, item: Outgoing) {
        let key = match &item {
            Outgoing::Range { key, .. } | Outgoing::Message { key, .. } => key.clone(),
        };
        let w = self.waiting.entry(key.clone()).or_insert_with(|| {
            self.turn.push_back(key);
            Waiting::default()
        });
        match item {
            Outgoing::Range { epoch, from, to, .. } => {
                w.range = Some(match w.range {
                    Some((e, f, t)) if e == epoch => (epoch, f.min(from), t.max(to)),
                    // A range of an older epoch is no longer this leader's to send.
                    Some((e, f, t)) if e > epoch => (e, f, t),
                    _ => (epoch, from, to),
                });
            }
            Outgoing::Message { msg, .. } => {
                // A heartbeat (an empty append) supersedes the one waiting: it says where
                // the leader now believes the follower is, with a newer high watermark.
                if is_heartbeat(&msg) {
                    w.messages.retain(|m| !is_heartbeat(m));
                }
                if w.messages.len() == MESSAGES_PER_PARTITION {
                    w.messages.pop_front();
                }
                w.messages.push_back(msg);
            }
        }
    }

    /// The next thing to send: one partition's, then the next partition's turn.
    fn pop(&mut self) -> Option<Outgoing> {
        let key = self.turn.pop_front()?;
        let w = self.waiting.get_mut(&key).expect("a partition in turn waits");
        let item = match w.messages.pop_front() {
            Some(msg) => Outgoing::Message { key: key.clone(), msg },
            None => {
                let (epoch, from, to) = w.range.take().expect("a partition in turn has something waiting");
                Outgoing::Range { key: key.clone(), epoch, from, to }
            }
        };
        if w.messages.is_empty() && w.range.is_none() {
            self.waiting.remove(&key);
        } else {
            self.turn.push_back(key);
        }
        Some(item)
    }

    fn clear(&mut self) {
        self.turn.clear();
        self.waiting.clear();
    }
}

fn is_heartbeat(msg: &PeerMessage) -> bool {
    matches!(msg, PeerMessage::Append { prev_offset, end_offset, .. } if prev_offset == end_offset)
}

/// The link from this shard to one follower node.
pub struct DataLink {
    queue: RefCell<LinkQueue>,
    wake: Notify,
}

fn link_to(shard: &Rc<Shard>, node: NodeId) -> Rc<DataLink> {
    let c = cluster(shard);
    if let Some(l) = c.links.borrow().get(&node) {
        return l.clone();
    }
    let link = Rc::new(DataLink { queue: RefCell::new(LinkQueue::default()), wake: Notify::new() });
    c.links.borrow_mut().insert(node, link.clone());
    rt::spawn(run_link(Rc::downgrade(shard), node, link.clone()));
    link
}

/// Connects (again) to the node and sends what is queued; answers go to the partitions.
/// What was queued while the node was unreachable is dropped: replicas resend.
async fn run_link(shard: Weak<Shard>, node: NodeId, link: Rc<DataLink>) {
    loop {
        let Some(s) = shard.upgrade() else { return };
        if s.shutting_down.get() {
            return;
        }
        let conn = match connect(&s, node).await {
            Ok(c) => c,
            Err(e) => {
                log::debug!("data link to node {node}: {e}");
                link.queue.borrow_mut().clear();
                drop(s);
                rt::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        drop(s);
        // A window per connection: answers a broken connection still owes never come.
        let window = Rc::new(crate::rt::Semaphore::new(LINK_WINDOW));
        while !conn.is_broken() {
            let item = link.queue.borrow_mut().pop();
            let Some(item) = item else {
                rt::timeout(Duration::from_millis(100), link.wake.notified()).await;
                continue;
            };
            let Some(s) = shard.upgrade() else { return };
            send_item(&s, &conn, &window, item).await;
        }
        log::info!("data link to node {node} broke; reconnecting");
    }
}

/// Opens a node-to-node connection to `node` and runs the handshake on it.
pub(super) async fn connect(shard: &Shard, node: NodeId) -> Result<Rc<Connection>, String> {
    let c = cluster(shard);
    let addr = c.control.settings.node(node).ok_or("unknown node")?.client;
    let source = crate::net::link_source(shard.config.listen);
    let settings = &c.control.settings;
    let tls = settings.tls.as_ref().and_then(|t| t.node_connector(&settings.cluster_id, node));
    let conn =
        Connection::connect_from(source, addr, Duration::from_millis(500), shard.config.max_frame_bytes, tls.as_ref())
            .await
            .map_err(|e| e.to_string())?;
    rt::timeout(HANDSHAKE_TIMEOUT, authenticate(&conn, &c.control.settings, node)).await.ok_or("hello timed out")??;
    Ok(conn)
}

/// How long the node handshake may take on a new link.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// The opener's side of the node handshake ([`crate::protocol::node_auth`]): proves this
/// node holds the cluster secret to `node`, and checks that `node` does, before anything
/// else goes over the link.
async fn authenticate(conn: &Connection, settings: &ClusterSettings, node: NodeId) -> Result<(), String> {
    let initiator_nonce = fresh_nonce();
    let hello = PeerHello {
        cluster_id: settings.cluster_id.clone(),
        node_id: settings.node_id,
        to: node,
        nonce: initiator_nonce,
    };
    let answer = conn.send_kind(PeerKind::Hello as u16, encode(&hello), Vec::new()).await;
    let answer = answer.map_err(|e| format!("hello refused: {e}"))?;
    let challenge: PeerChallenge = decode(answer.archive()).map_err(|e| format!("bad challenge: {e}"))?;
    if challenge.node_id != node {
        return Err(format!("node {} answered for node {node}", challenge.node_id));
    }
    let handshake = Handshake {
        secret: &settings.secret,
        link: LinkKind::Data,
        cluster_id: &settings.cluster_id,
        initiator: settings.node_id,
        acceptor: node,
        initiator_nonce,
        acceptor_nonce: challenge.nonce,
    };
    if let Err(e) = handshake.check_acceptor(&challenge.proof) {
        crate::log_limited!(warn, "data link to {}: {e}; closing it", conn.addr());
        return Err(e.to_string());
    }
    let proof = PeerProof { proof: handshake.initiator_proof() };
    let accepted = conn.send_kind(PeerKind::Proof as u16, encode(&proof), Vec::new()).await;
    accepted.map_err(|e| format!("proof refused: {e}"))?;
    Ok(())
}

async fn send_item(shard: &Rc<Shard>, conn: &Rc<Connection>, window: &Rc<crate::rt::Semaphore>, item: Outgoing) {
    match item {
        Outgoing::Message { key, msg } => send_frame(shard, conn, window, &key, &msg, Vec::new()).await,
        Outgoing::Range { key, epoch, mut from, to } => {
            while from < to && !conn.is_broken() {
                let Some(p) = key.replica(shard) else { return };
                let Some((msg, batches)) = p.read_for_follower(epoch, from, to, APPEND_FRAME_BYTES).await else {
                    return;
                };
                let PeerMessage::Append { end_offset, .. } = &msg else { return };
                from = *end_offset;
                send_frame(shard, conn, window, &key, &msg, batches).await;
            }
        }
    }
}

async fn send_frame(
    shard: &Rc<Shard>,
    conn: &Rc<Connection>,
    window: &Rc<crate::rt::Semaphore>,
    key: &ReplicaKey,
    msg: &PeerMessage,
    batches: Vec<bytes::Bytes>,
) {
    let WirePeer::Append(req) = encode_peer(&key.topic, key.topic_id, key.partition, msg) else { return };
    let Ok(permit) = window.clone().acquire_static_permit(1).await else { return };
    let reply = conn.send_kind(PeerKind::Append as u16, encode(&req), batches);
    let (shard, key, conn) = (Rc::downgrade(shard), key.clone(), conn.clone());
    let (topic, partition) = (key.topic.clone(), key.partition);
    rt::spawn(async move {
        let answer = rt::timeout(LINK_REPLY_TIMEOUT, reply).await;
        drop(permit);
        let frame = match answer {
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                log::debug!("append to a follower of {topic}/{partition}: {e}");
                return;
            }
            None => {
                if !conn.is_broken() {
                    log::warn!(
                        "{topic}/{partition}: node at {} has not answered an append for {LINK_REPLY_TIMEOUT:?}; \
                         closing the link",
                        conn.addr()
                    );
                }
                conn.abort("the follower stopped answering");
                return;
            }
        };
        let msg = match decode::<AppendReply>(frame.archive()).map_err(|e| e.to_string()).and_then(|r| {
            if !same_incarnation(r.topic_id, key.topic_id) {
                return Err(format!("from incarnation {} of the topic, not {}", r.topic_id, key.topic_id));
            }
            crate::protocol::peer::decode_reply(&r).map_err(|e| e.to_string())
        }) {
            Ok(m) => m,
            Err(e) => {
                log::warn!("bad append reply for {topic}/{partition}: {e}");
                return;
            }
        };
        let Some(shard) = shard.upgrade() else { return };
        if let Some(p) = key.replica(&shard) {
            p.on_follower_reply(msg).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::{LinkQueue, Outgoing, ReplicaKey};
    use crate::replication::PeerMessage;

    fn key(partition: u32) -> ReplicaKey {
        ReplicaKey { topic: "t".into(), topic_id: 1, partition }
    }

    fn range(partition: u32, epoch: crate::replication::Epoch, from: u64, to: u64) -> Outgoing {
        Outgoing::Range { key: key(partition), epoch, from, to }
    }

    fn heartbeat(partition: u32, at: u64, hw: u64) -> Outgoing {
        let msg = PeerMessage::Append {
            epoch: 1,
            leader: 1,
            prev_offset: at,
            prev_epoch: Some(1),
            end_offset: at,
            epochs: vec![(1, 0)],
            leader_hw: hw,
            log_start: 0,
        };
        Outgoing::Message { key: key(partition), msg }
    }

    fn drain(q: &mut LinkQueue) -> Vec<Outgoing> {
        std::iter::from_fn(|| q.pop()).collect()
    }

    /// A link that cannot send (its follower is away, or slower than the leader) is asked
    /// for a resend every 200 ms and a heartbeat every 50 ms, per partition. Before, each
    /// request waited in a queue of its own: an hour away was 90,000 items per partition,
    /// each re-reading the log when its turn came, and the follower got the new records only
    /// after all of them.
    #[test]
    fn what_waits_on_a_link_is_bounded_by_partitions_not_by_time() {
        let mut q = LinkQueue::default();
        for i in 0..100_000u64 {
            q.push(range(0, 1, 1_000 - i % 1_000, 2_000 + i));
            q.push(heartbeat(0, 1_000, i));
            q.push(range(1, 3, 50 + i % 7, 60 + i));
        }
        let items = drain(&mut q);
        assert_eq!(items.len(), 3, "{items:?}");
        assert!(items.contains(&range(0, 1, 1, 101_999)), "one range covering every range asked for: {items:?}");
        assert!(items.contains(&heartbeat(0, 1_000, 99_999)), "the newest heartbeat only: {items:?}");
        assert!(items.contains(&range(1, 3, 50, 100_059)), "{items:?}");
    }

    #[test]
    fn a_newer_epoch_replaces_a_waiting_range_and_partitions_take_turns() {
        let mut q = LinkQueue::default();
        q.push(range(0, 1, 10, 20));
        q.push(range(0, 2, 15, 30));
        q.push(range(0, 1, 0, 40));
        q.push(range(1, 1, 5, 6));
        q.push(heartbeat(0, 30, 12));
        assert_eq!(drain(&mut q), vec![heartbeat(0, 30, 12), range(1, 1, 5, 6), range(0, 2, 15, 30)]);
        assert!(q.pop().is_none() && q.waiting.is_empty());
    }
}
