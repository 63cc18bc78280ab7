//! Requests that a cluster member answers differently from a single node: topic changes go
//! through the replicated metadata, metadata names leaders and replicas, appends from a
//! partition's leader reach its follower replica here.

use std::rc::Rc;
use std::time::{Duration, Instant};

use super::handlers::{reply, ApiError, HandlerResult};
use crate::broker::catalog::{validate_partition_count, validate_topic_name};
use crate::cluster::meta::{place_replicas, MetaCommand, MetaError};
use crate::cluster::ControlError;
use crate::net::connection::LinkError;
use crate::protocol::frame::FLAG_RESPONSE;
use crate::protocol::messages::*;
use crate::protocol::peer::{decode_append, encode_peer, AppendRequest, WirePeer};
use crate::protocol::{decode, encode, ErrorCode, Frame, OutFrame};
use crate::rt;
use crate::shard::Shard;

/// A forwarded request's answer must come within this (a produce waits for its acks there).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(35);

/// How long a topic change waits to show up in this node's metadata after it committed.
const APPLY_WAIT: Duration = Duration::from_secs(5);

fn cluster(shard: &Shard) -> &crate::shard::cluster::ShardCluster {
    shard.cluster.as_ref().expect("cluster handlers run on cluster members")
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        let code = match &e {
            ControlError::Refused(MetaError::TopicExists(_)) => ErrorCode::TopicExists,
            ControlError::Refused(MetaError::UnknownTopic(_)) => ErrorCode::UnknownTopic,
            ControlError::Refused(MetaError::UnknownPartition(..)) => ErrorCode::UnknownPartition,
            ControlError::Refused(MetaError::TooManyGroups(_)) => ErrorCode::TooManyGroups,
            ControlError::Refused(_) => ErrorCode::InvalidRequest,
            ControlError::Unavailable(_) => ErrorCode::Unavailable,
        };
        ApiError::new(code, e.to_string())
    }
}

/// The error for a partition this node does not hold: retry at its leader.
pub fn not_here(shard: &Shard, topic: &str, partition: u32) -> ApiError {
    let c = cluster(shard);
    let leader = c.meta.borrow().partition(topic, partition).and_then(|p| p.leader);
    let mut e = ApiError::new(
        ErrorCode::NotLeader,
        match leader {
            Some(l) => format!("node {} holds no replica of {topic}/{partition}; node {l} leads it", c.node_id),
            None => format!("{topic}/{partition} has no leader right now"),
        },
    );
    e.leader_hint = leader.and_then(|l| c.client_addr(l));
    e
}

pub fn metadata(shard: &Shard, frame: &Frame) -> HandlerResult {
    let req = decode::<MetadataRequest>(frame.archive())?;
    let c = cluster(shard);
    let meta = c.meta.borrow().clone();
    for wanted in &req.topics {
        if !meta.topics.contains_key(wanted) {
            return Err(ApiError::new(ErrorCode::UnknownTopic, format!("no such topic: {wanted}")));
        }
    }
    let topics = meta
        .topics
        .iter()
        .filter(|(name, _)| req.topics.is_empty() || req.topics.contains(name))
        .filter(|(name, _)| super::authz::may_describe_topic(shard, frame, name))
        .map(|(name, t)| TopicMetadata {
            name: name.clone(),
            id: t.id,
            created_ms: t.created_ms,
            partitions: t
                .partitions
                .iter()
                .enumerate()
                .map(|(i, p)| PartitionMetadata {
                    partition: i as u32,
                    leader: p.leader.unwrap_or(0),
                    replicas: p.replicas.clone(),
                })
                .collect(),
        })
        .collect();
    let nodes =
        c.control.settings.nodes.iter().map(|n| NodeInfo { node_id: n.id, address: n.client.to_string() }).collect();
    reply(&MetadataResponse {
        node_id: c.node_id,
        nodes,
        topics,
        server_version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

pub async fn create_topic(shard: &Rc<Shard>, frame: &Frame) -> HandlerResult {
    let req = decode::<CreateTopicRequest>(frame.archive())?;
    validate_topic_name(&req.name).map_err(|m| ApiError::new(ErrorCode::InvalidTopicName, m))?;
    validate_partition_count(req.partitions).map_err(|m| ApiError::new(ErrorCode::InvalidRequest, m))?;
    let c = cluster(shard);
    let settings = &c.control.settings;
    let rf = match req.replication_factor {
        0 => settings.mode.default_replication_factor(settings.nodes.len()),
        rf => rf,
    };
    super::handlers::check_room_for_partitions(shard, req.partitions)?;
    let replicas = place_replicas(settings.mode, &settings.node_ids(), settings.master_node(), req.partitions, rf)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()))?;
    let cmd =
        MetaCommand::CreateTopic { name: req.name.clone(), replication_factor: rf, created_ms: rt::now_ms(), replicas };
    c.control.write(cmd).await?;
    wait_applied(shard, |s| s.catalog.borrow().topics.contains_key(&req.name)).await;
    reply(&CreateTopicResponse { name: req.name, partitions: req.partitions })
}

pub async fn delete_topic(shard: &Rc<Shard>, frame: &Frame) -> HandlerResult {
    let req = decode::<DeleteTopicRequest>(frame.archive())?;
    cluster(shard).control.write(MetaCommand::DeleteTopic { name: req.name.clone() }).await?;
    wait_applied(shard, |s| !s.catalog.borrow().topics.contains_key(&req.name)).await;
    reply(&DeleteTopicResponse { name: req.name })
}

/// Waits (briefly) until this shard applied a committed change, so that the client's next
/// request here sees it.
pub(super) async fn wait_applied(shard: &Rc<Shard>, done: impl Fn(&Shard) -> bool) {
    let deadline = Instant::now() + APPLY_WAIT;
    while !done(shard) && Instant::now() < deadline {
        rt::sleep(Duration::from_millis(5)).await;
    }
}

pub async fn cluster_status(shard: &Rc<Shard>) -> HandlerResult {
    let Some(c) = shard.cluster.as_ref() else {
        return Err(ApiError::new(ErrorCode::InvalidRequest, "this broker runs as a single node, not in a cluster"));
    };
    reply(&c.control.status().await?)
}

/// A leader's append for a replica on this shard; answered once the batches are durable.
pub async fn follower_append(shard: &Rc<Shard>, frame: Frame) -> OutFrame {
    let (kind, corr) = (frame.header.kind, frame.header.correlation_id);
    let fail = |code, msg: String| super::handlers::error_frame(kind, corr, code, &msg);
    let req = match decode::<AppendRequest>(frame.archive()) {
        Ok(r) => r,
        Err(e) => return fail(ErrorCode::InvalidRequest, e.to_string()),
    };
    let msg = match decode_append(&req, frame.payload().len()) {
        Ok(m) => m,
        Err(e) => {
            log::warn!("refused an append for {}/{} from node {}: {e}", req.topic, req.partition, req.leader);
            return fail(ErrorCode::InvalidRequest, e.to_string());
        }
    };
    let Some(part) = shard.partition(&req.topic, req.partition).filter(|p| p.is_replicated()) else {
        return fail(ErrorCode::Unavailable, format!("no replica of {}/{} here (yet)", req.topic, req.partition));
    };
    if !crate::shard::cluster::same_incarnation(part.topic_id(), req.topic_id) {
        log::warn!(
            "refused an append for {}/{} from node {}: incarnation {} of the topic, this replica is of {}",
            req.topic,
            req.partition,
            req.leader,
            req.topic_id,
            part.topic_id()
        );
        return fail(
            ErrorCode::Unavailable,
            format!("{}/{}: another incarnation of the topic", req.topic, req.partition),
        );
    }
    let batches = frame.into_payload();
    let batches = as_chunks(batches);
    match part.on_leader_append(msg, &batches).await {
        Some(answer) => match encode_peer(&req.topic, part.topic_id(), req.partition, &answer) {
            WirePeer::Reply(r) => OutFrame::new(kind, FLAG_RESPONSE, corr, encode(&r), Vec::new()),
            WirePeer::Append(_) => fail(ErrorCode::Unknown, "a follower does not answer with an append".into()),
        },
        None => fail(ErrorCode::StorageError, format!("{}/{}: the append was not applied", req.topic, req.partition)),
    }
}

/// Sends a client request on to `node`; the future is its answer, handed back as is.
/// Requests the reader forwards one after another reach `node` in that order
/// ([`crate::shard::forward`]).
pub fn forward(shard: &Rc<Shard>, node: u32, frame: Frame) -> impl std::future::Future<Output = HandlerResult> {
    let kind = frame.header.kind;
    let mut archive = crate::protocol::BodyBuf::new();
    archive.extend_from_slice(frame.archive());
    let queued = crate::shard::forward::queue(shard, node, kind, archive, as_chunks(frame.into_payload()));
    async move {
        let down = || ApiError::new(ErrorCode::Unavailable, format!("owner node {node} is down"));
        let crate::shard::forward::Queued { conn, answer } = queued.await.map_err(|_| down())?;
        match rt::timeout(FORWARD_TIMEOUT, answer).await {
            Some(Ok(answer)) => {
                let mut a = crate::protocol::BodyBuf::new();
                a.extend_from_slice(answer.archive());
                let payload = answer.into_payload();
                Ok((a, as_chunks(payload)))
            }
            Some(Err(LinkError::Server { code, message, leader_hint })) => Err(ApiError { code, message, leader_hint }),
            Some(Err(LinkError::Connect { .. } | LinkError::Disconnected { .. })) => Err(down()),
            Some(Err(e)) => Err(ApiError::new(ErrorCode::Unavailable, format!("forwarding to node {node}: {e}"))),
            None => {
                // Longer than any request's own timeout: the node is gone, though the
                // connection may look open (a machine lost without a reset). The next
                // request reconnects.
                conn.abort(&format!("node {node} did not answer a forwarded request in {FORWARD_TIMEOUT:?}"));
                Err(ApiError::new(ErrorCode::Timeout, format!("node {node} did not answer in time")))
            }
        }
    }
}

/// A frame's payload as the chunk list frames are built from (none when empty).
fn as_chunks(payload: bytes::Bytes) -> Vec<bytes::Bytes> {
    if payload.is_empty() {
        Vec::new()
    } else {
        vec![payload]
    }
}
