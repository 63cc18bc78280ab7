//! Request handlers: a validated frame in, an encoded response frame out.
//!
//! Every failure becomes an [`ErrorResponse`] with a typed [`ErrorCode`] and a message that
//! says what went wrong; nothing a client sends can make a handler panic.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;

use crate::broker::catalog::{validate_group_name, validate_partition_count, validate_topic_name};
use crate::broker::offsets::OffsetError;
use crate::broker::partition::{AckLevel, AppendError, SequenceError};
use crate::broker::{Catalog, Partition, TopicConfig};
use crate::limits::{MAX_FETCH_BYTES, MAX_FETCH_WAIT_MS, MAX_OFFSET_METADATA_BYTES};
use crate::protocol::frame::{FLAG_ERROR, FLAG_RESPONSE};
use crate::protocol::messages::*;
use crate::protocol::{access, decode, encode, ApiKind, BodyBuf, DecodeError, ErrorCode, Frame, OutFrame};
use crate::rt;
use crate::shard::mesh::{MeshReply, MeshRequest};
use crate::shard::Shard;
use crate::storage::StorageError;

/// Longest a produce may wait for its acknowledgement.
const MAX_PRODUCE_TIMEOUT_MS: u32 = 300_000;
const DEFAULT_PRODUCE_TIMEOUT_MS: u32 = 30_000;

/// A typed failure of a request.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// The client address of the node to retry at (not-leader errors in a cluster).
    pub leader_hint: Option<String>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), leader_hint: None }
    }
}

impl From<DecodeError> for ApiError {
    fn from(e: DecodeError) -> Self {
        ApiError::new(ErrorCode::InvalidRequest, e.to_string())
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        let code = match &e {
            StorageError::DiskFull(_) => ErrorCode::DiskFull,
            StorageError::Io(_) | StorageError::Failed(_) => ErrorCode::StorageError,
            StorageError::Corrupt(_) => ErrorCode::PartitionCorrupt,
            StorageError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            StorageError::BadBatch(_) => ErrorCode::CorruptBatch,
            StorageError::EmptyAppend => ErrorCode::InvalidRequest,
            StorageError::CommitTimeout(_) => ErrorCode::Timeout,
            StorageError::Closing => ErrorCode::ShuttingDown,
            StorageError::NotLeader(_) => ErrorCode::NotLeader,
            StorageError::LeaderStarting | StorageError::LeaderMoving => ErrorCode::Unavailable,
            StorageError::Backpressure(_) => ErrorCode::Backpressure,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<OffsetError> for ApiError {
    fn from(e: OffsetError) -> Self {
        match e {
            OffsetError::Storage(e) => e.into(),
            e @ OffsetError::TooManyGroups(_) => ApiError::new(ErrorCode::TooManyGroups, e.to_string()),
        }
    }
}

type Reply = (BodyBuf, Vec<Bytes>);
pub(super) type HandlerResult = Result<Reply, ApiError>;

pub(super) fn reply<T>(value: &T) -> HandlerResult
where
    T: for<'a> rkyv::Serialize<
        rkyv::api::high::HighSerializer<BodyBuf, rkyv::ser::allocator::ArenaHandle<'a>, rkyv::rancor::Error>,
    >,
{
    Ok((encode(value), Vec::new()))
}

/// An error response frame.
pub fn error_frame(kind: u16, correlation_id: u64, code: ErrorCode, message: &str) -> OutFrame {
    error_frame_with_hint(kind, correlation_id, code, message, None)
}

fn error_frame_with_hint(
    kind: u16,
    correlation_id: u64,
    code: ErrorCode,
    message: &str,
    hint: Option<String>,
) -> OutFrame {
    let body = ErrorResponse { code: code as u16, message: message.to_string(), leader_hint: hint };
    OutFrame::new(kind, FLAG_RESPONSE | FLAG_ERROR, correlation_id, encode(&body), Vec::new())
}

/// Handles one client request.
pub async fn handle(shard: &Rc<Shard>, frame: Frame) -> OutFrame {
    let (kind, corr) = (frame.header.kind, frame.header.correlation_id);
    if frame.header.is_response() {
        return error_frame(kind, corr, ErrorCode::InvalidRequest, "a broker does not accept responses");
    }
    if kind == crate::protocol::peer::PeerKind::Append as u16 && shard.cluster.is_some() {
        return super::cluster_handlers::follower_append(shard, frame).await;
    }
    let Some(api) = ApiKind::from_u16(kind) else {
        return error_frame(kind, corr, ErrorCode::UnknownKind, &format!("unknown request kind {kind}"));
    };
    let clustered = shard.cluster.is_some();
    let result = match api {
        ApiKind::Metadata if clustered => super::cluster_handlers::metadata(shard, &frame),
        ApiKind::Metadata => metadata(shard, &frame),
        ApiKind::CreateTopic if clustered => super::cluster_handlers::create_topic(shard, &frame).await,
        ApiKind::CreateTopic => create_topic(shard, &frame).await,
        ApiKind::DeleteTopic if clustered => super::cluster_handlers::delete_topic(shard, &frame).await,
        ApiKind::DeleteTopic => delete_topic(shard, &frame).await,
        ApiKind::DescribeTopic => describe_topic(shard, &frame).await,
        ApiKind::ClusterStatus => super::cluster_handlers::cluster_status(shard).await,
        ApiKind::ListTopics => list_topics(shard, &frame),
        ApiKind::Produce => produce(shard, frame).await,
        ApiKind::Fetch => fetch(shard, frame).await,
        ApiKind::ListOffsets => list_offsets(shard, frame).await,
        ApiKind::CommitOffset => commit_offset(shard, &frame).await,
        ApiKind::FetchOffset => fetch_offset(shard, &frame).await,
        ApiKind::InitProducer => init_producer(shard, &frame).await,
        ApiKind::UpsertUser => super::auth::upsert_user(shard, &frame).await,
        ApiKind::DeleteUser => super::auth::delete_user(shard, &frame).await,
        ApiKind::ListUsers => super::auth::list_users(shard),
        ApiKind::CreateAcl => super::authz::create_acl(shard, &frame).await,
        ApiKind::DeleteAcl => super::authz::delete_acl(shard, &frame).await,
        ApiKind::ListAcls => super::authz::list_acls(shard),
        // (Answered by the connection's reader: it changes the connection's state.)
        ApiKind::Authenticate => Err(ApiError::new(ErrorCode::InvalidRequest, "authenticate on the connection itself")),
    };
    answer(kind, corr, result)
}

/// The response frame of a handler's result.
pub(super) fn answer(kind: u16, corr: u64, result: HandlerResult) -> OutFrame {
    match result {
        Ok((archive, payload)) => OutFrame::new(kind, FLAG_RESPONSE, corr, archive, payload),
        Err(e) => error_frame_with_hint(kind, corr, e.code, &e.message, e.leader_hint),
    }
}

/// Finds a partition this shard owns, with a precise error when it does not exist.
/// Whether this broker can take `new` more partitions: at most `max_partitions` in all (in a
/// cluster, every partition of the catalog counts: a node may hold a replica of each), and
/// room on the data directory's file system for their first segments' preallocation.
pub(super) fn check_room_for_partitions(shard: &Shard, new: u32) -> Result<(), ApiError> {
    let held: u64 = shard.catalog.borrow().topics.values().map(|t| u64::from(t.partitions)).sum();
    let max = shard.config.max_partitions as u64;
    if held + u64::from(new) > max {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!(
                "{new} more partitions would make {} on this broker; max_partitions is {max}",
                held + u64::from(new)
            ),
        ));
    }
    let needed = u64::from(new) * shard.config.log_config().first_preallocation();
    match free_bytes(&shard.config.data_dir) {
        Some(free) if needed > free => Err(ApiError::new(
            ErrorCode::DiskFull,
            format!(
                "{new} partitions preallocate {} MiB (storage.preallocate_bytes each, at most storage.segment_bytes); {} MiB are free",
                needed >> 20,
                free >> 20
            ),
        )),
        _ => Ok(()),
    }
}

/// Bytes an unprivileged user may still write on the file system holding `dir`.
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the struct we pass; the path is a valid C string.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    Some(stat.f_bavail as u64 * stat.f_frsize as u64)
}

fn partition_for(shard: &Shard, topic: &str, partition: u32) -> Result<Rc<Partition>, ApiError> {
    let catalog = shard.catalog.borrow();
    let Some(config) = catalog.topics.get(topic) else {
        return Err(ApiError::new(ErrorCode::UnknownTopic, format!("no such topic: {topic}")));
    };
    if partition >= config.partitions {
        return Err(ApiError::new(
            ErrorCode::UnknownPartition,
            format!("topic {topic} has {} partitions; partition {partition} does not exist", config.partitions),
        ));
    }
    drop(catalog);
    match shard.partition(topic, partition) {
        Some(p) => Ok(p),
        None if shard.cluster.is_some() => Err(super::cluster_handlers::not_here(shard, topic, partition)),
        None => Err(ApiError::new(ErrorCode::Unavailable, format!("partition {topic}/{partition} is not open yet"))),
    }
}

fn metadata(shard: &Shard, frame: &Frame) -> HandlerResult {
    let req = decode::<MetadataRequest>(frame.archive())?;
    let catalog = shard.catalog.borrow();
    let mut topics = Vec::new();
    for (name, config) in &catalog.topics {
        if !req.topics.is_empty() && !req.topics.contains(name) {
            continue;
        }
        if !super::authz::may_describe_topic(shard, frame, name) {
            continue;
        }
        let partitions =
            (0..config.partitions).map(|p| PartitionMetadata { partition: p, leader: 0, replicas: vec![0] }).collect();
        topics.push(TopicMetadata { name: name.clone(), id: config.id, created_ms: config.created_ms, partitions });
    }
    for wanted in &req.topics {
        if !catalog.topics.contains_key(wanted) {
            return Err(ApiError::new(ErrorCode::UnknownTopic, format!("no such topic: {wanted}")));
        }
    }
    let nodes = vec![NodeInfo { node_id: 0, address: shard.config.listen.to_string() }];
    reply(&MetadataResponse { node_id: 0, nodes, topics, server_version: env!("CARGO_PKG_VERSION").to_string() })
}

fn list_topics(shard: &Shard, frame: &Frame) -> HandlerResult {
    let topics = shard
        .catalog
        .borrow()
        .topics
        .iter()
        .filter(|(name, _)| super::authz::may_describe_topic(shard, frame, name))
        .map(|(name, c)| TopicSummary {
            name: name.clone(),
            partitions: c.partitions,
            replication_factor: c.replication_factor,
        })
        .collect();
    reply(&ListTopicsResponse { topics })
}

async fn create_topic(shard: &Rc<Shard>, frame: &Frame) -> HandlerResult {
    let req = decode::<CreateTopicRequest>(frame.archive())?;
    validate_topic_name(&req.name).map_err(|m| ApiError::new(ErrorCode::InvalidTopicName, m))?;
    validate_partition_count(req.partitions).map_err(|m| ApiError::new(ErrorCode::InvalidRequest, m))?;
    let rf = req.replication_factor.max(1);
    if rf > 1 {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("replication factor {rf} needs {rf} nodes; this broker runs as a single node"),
        ));
    }
    let _guard =
        shard.catalog_lock.acquire_permit(1).await.map_err(|e| ApiError::new(ErrorCode::Unknown, e.to_string()))?;
    if shard.catalog.borrow().topics.contains_key(&req.name) {
        return Err(ApiError::new(ErrorCode::TopicExists, format!("topic {} already exists", req.name)));
    }
    check_room_for_partitions(shard, req.partitions)?;
    let config = TopicConfig { id: 0, partitions: req.partitions, replication_factor: rf, created_ms: rt::now_ms() };
    let mut next = shard.catalog.borrow().clone();
    next.topics.insert(req.name.clone(), config.clone());
    persist_catalog(shard, &next).await?;
    let results =
        broadcast(shard, || MeshRequest::TopicCreated { name: req.name.clone(), config: config.clone() }).await;
    check_all(results)?;
    reply(&CreateTopicResponse { name: req.name, partitions: req.partitions })
}

async fn delete_topic(shard: &Rc<Shard>, frame: &Frame) -> HandlerResult {
    let req = decode::<DeleteTopicRequest>(frame.archive())?;
    let _guard =
        shard.catalog_lock.acquire_permit(1).await.map_err(|e| ApiError::new(ErrorCode::Unknown, e.to_string()))?;
    if !shard.catalog.borrow().topics.contains_key(&req.name) {
        return Err(ApiError::new(ErrorCode::UnknownTopic, format!("no such topic: {}", req.name)));
    }
    // The marker first: a start after a crash removes a directory only if it carries one.
    let dir = shard.config.data_dir.join("topics").join(&req.name);
    crate::storage::Disk::write_file_atomic(&shard.disk, &dir.join(crate::broker::catalog::DELETED_MARKER), Vec::new())
        .await
        .map_err(|e| ApiError::from(StorageError::from(e)))?;
    let mut next = shard.catalog.borrow().clone();
    next.topics.remove(&req.name);
    persist_catalog(shard, &next).await?;
    let results = broadcast(shard, || MeshRequest::TopicDeleted { name: req.name.clone() }).await;
    check_all(results)?;
    crate::storage::Disk::remove_dir_all(&shard.disk, &dir)
        .await
        .map_err(|e| ApiError::new(ErrorCode::StorageError, e.to_string()))?;
    reply(&DeleteTopicResponse { name: req.name })
}

pub(super) async fn persist_catalog(shard: &Shard, catalog: &Catalog) -> Result<(), ApiError> {
    let path = Catalog::path(&shard.config.data_dir);
    crate::storage::Disk::write_file_atomic(&shard.disk, &path, catalog.encode())
        .await
        .map_err(|e| ApiError::from(StorageError::from(e)))
}

/// Sends a request to every shard (this one included) and collects the replies.
pub(super) async fn broadcast(shard: &Rc<Shard>, make: impl Fn() -> MeshRequest) -> Vec<MeshReply> {
    let mut pending = Vec::new();
    for peer in (0..shard.shards).filter(|&p| p != shard.id) {
        pending.push(shard.mesh.send(peer, make()).await);
    }
    let mut replies = vec![handle_mesh_request(shard, make()).await];
    for rx in pending {
        replies.push(rx.await.unwrap_or(MeshReply::Done(Err("a shard did not answer".into()))));
    }
    replies
}

pub(super) fn check_all(replies: Vec<MeshReply>) -> Result<(), ApiError> {
    for r in replies {
        if let MeshReply::Done(Err(e)) = r {
            return Err(ApiError::new(ErrorCode::StorageError, e));
        }
    }
    Ok(())
}

async fn describe_topic(shard: &Rc<Shard>, frame: &Frame) -> HandlerResult {
    let req = decode::<DescribeTopicRequest>(frame.archive())?;
    if !shard.catalog.borrow().topics.contains_key(&req.name) {
        return Err(ApiError::new(ErrorCode::UnknownTopic, format!("no such topic: {}", req.name)));
    }
    let mut partitions = Vec::new();
    for r in broadcast(shard, || MeshRequest::Status { topic: req.name.clone() }).await {
        if let MeshReply::Status(s) = r {
            partitions.extend(s);
        }
    }
    partitions.sort_by_key(|p| p.partition);
    reply(&DescribeTopicResponse { name: req.name, partitions })
}

/// The bytes of a produce frame's payload, stamped in place and then shared without a copy.
struct ProducePayload(Frame);

impl AsMut<[u8]> for ProducePayload {
    fn as_mut(&mut self) -> &mut [u8] {
        self.0.payload_mut()
    }
}

async fn produce(shard: &Rc<Shard>, frame: Frame) -> HandlerResult {
    let (topic, partition, acks, timeout_ms) = {
        let r = access::<ProduceRequest>(frame.archive())?;
        (r.topic.as_str().to_string(), r.partition.to_native(), r.acks, r.timeout_ms.to_native())
    };
    let acks = Acks::from_u8(acks)
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidRequest, format!("unknown acks level {acks}")))?;
    let timeout_ms = if timeout_ms == 0 { DEFAULT_PRODUCE_TIMEOUT_MS } else { timeout_ms.min(MAX_PRODUCE_TIMEOUT_MS) };
    let part = partition_for(shard, &topic, partition)?;
    let frame_throttle = frame.throttle_ms;
    let appended = part.append(ProducePayload(frame), |p| p.0.into_payload()).map_err(|e| match e {
        AppendError::Storage(e) => with_hint(shard, e),
        AppendError::Sequence(e) => sequence_error(e),
        AppendError::Invalid(m) => ApiError::new(ErrorCode::InvalidRequest, m),
    })?;
    let level = match acks {
        Acks::None => None,
        Acks::Leader => Some(AckLevel::Local),
        Acks::Quorum => Some(AckLevel::Quorum),
        Acks::All => Some(AckLevel::All),
    };
    let high_watermark = match level {
        None => part.high_watermark(),
        Some(level) => part
            .wait_committed(appended.last_offset, level, Duration::from_millis(timeout_ms.into()))
            .await
            .map_err(|e| with_hint(shard, e))?,
    };
    reply(&ProduceResponse {
        base_offset: appended.first_offset,
        last_offset: appended.last_offset,
        high_watermark,
        throttle_ms: frame_throttle,
    })
}

async fn fetch(shard: &Rc<Shard>, frame: Frame) -> HandlerResult {
    let req = decode::<FetchRequest>(frame.archive())?;
    let part = partition_for(shard, &req.topic, req.partition)?;
    let max_bytes = req.max_bytes.clamp(1, MAX_FETCH_BYTES) as usize;
    let wait = Duration::from_millis(req.max_wait_ms.min(MAX_FETCH_WAIT_MS).into());
    let chunks = part.fetch(req.offset, max_bytes, wait).await?;
    let response = FetchResponse {
        high_watermark: part.high_watermark(),
        log_start_offset: part.log_start_offset(),
        throttle_ms: frame.throttle_ms,
    };
    Ok((encode(&response), chunks))
}

async fn list_offsets(shard: &Rc<Shard>, frame: Frame) -> HandlerResult {
    let req = decode::<ListOffsetsRequest>(frame.archive())?;
    let part = partition_for(shard, &req.topic, req.partition)?;
    let offset = match req.spec {
        OFFSET_SPEC_EARLIEST => part.log_start_offset(),
        OFFSET_SPEC_LATEST => part.high_watermark(),
        OFFSET_SPEC_TIMESTAMP => part.offset_for_timestamp(req.timestamp_ms).await?,
        other => return Err(ApiError::new(ErrorCode::InvalidRequest, format!("unknown offset spec {other}"))),
    };
    reply(&ListOffsetsResponse { offset })
}

fn check_group_target(shard: &Shard, group: &str, topic: &str, partition: u32) -> Result<(), ApiError> {
    validate_group_name(group).map_err(|m| ApiError::new(ErrorCode::InvalidRequest, m))?;
    let catalog = shard.catalog.borrow();
    match catalog.topics.get(topic) {
        None => Err(ApiError::new(ErrorCode::UnknownTopic, format!("no such topic: {topic}"))),
        Some(c) if partition >= c.partitions => {
            Err(ApiError::new(ErrorCode::UnknownPartition, format!("topic {topic} has {} partitions", c.partitions)))
        }
        Some(_) => Ok(()),
    }
}

async fn commit_offset(shard: &Rc<Shard>, frame: &Frame) -> HandlerResult {
    let req = decode::<CommitOffsetRequest>(frame.archive())?;
    check_group_target(shard, &req.group, &req.topic, req.partition)?;
    if req.metadata.len() > MAX_OFFSET_METADATA_BYTES {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("offset metadata is limited to {MAX_OFFSET_METADATA_BYTES} bytes"),
        ));
    }
    if let Some(c) = shard.cluster.as_ref() {
        let cmd = crate::cluster::meta::MetaCommand::CommitOffset {
            group: req.group,
            topic: req.topic,
            partition: req.partition,
            offset: req.offset,
            metadata: req.metadata,
            max_groups: shard.config.max_consumer_groups as u64,
        };
        c.control.write(cmd).await?;
        return reply(&CommitOffsetResponse {});
    }
    shard.offsets.commit(&req.group, &req.topic, req.partition, req.offset, &req.metadata).await?;
    reply(&CommitOffsetResponse {})
}

async fn fetch_offset(shard: &Rc<Shard>, frame: &Frame) -> HandlerResult {
    let req = decode::<FetchOffsetRequest>(frame.archive())?;
    check_group_target(shard, &req.group, &req.topic, req.partition)?;
    let found = match shard.cluster.as_ref() {
        // Committed through Raft; this node's applied copy may trail the leader's by a
        // moment.
        Some(c) => c
            .meta
            .borrow()
            .committed_offset(&req.group, &req.topic, req.partition)
            .map(|o| (o.offset, o.metadata.clone())),
        None => shard.offsets.fetch(&req.group, &req.topic, req.partition).await?,
    };
    let (offset, metadata) = match found {
        Some((o, m)) => (Some(o), m),
        None => (None, String::new()),
    };
    reply(&FetchOffsetResponse { offset, metadata })
}

/// A new producer id (shard 0 hands them out; see `broker::producer_ids`).
async fn init_producer(shard: &Rc<Shard>, frame: &Frame) -> HandlerResult {
    let _ = decode::<InitProducerRequest>(frame.archive())?;
    let producer_id = shard
        .producer_ids
        .allocate(|| async {
            match shard.cluster.as_ref() {
                Some(c) => c
                    .control
                    .write(crate::cluster::meta::MetaCommand::AllocateProducerIds {
                        count: crate::limits::PRODUCER_ID_BLOCK,
                    })
                    .await?
                    .ok_or_else(|| ApiError::new(ErrorCode::Unknown, "the metadata allocated no producer ids")),
                None => crate::broker::producer_ids::reserve_block_on_disk(&shard.disk, &shard.config.data_dir)
                    .await
                    .map_err(ApiError::from),
            }
        })
        .await?;
    reply(&InitProducerResponse { producer_id })
}

/// A broken sequence rule as a client sees it.
fn sequence_error(e: SequenceError) -> ApiError {
    let code = match e {
        SequenceError::OutOfOrder { .. } => ErrorCode::OutOfOrderSequence,
        SequenceError::UnknownProducer { .. } => ErrorCode::UnknownProducer,
        SequenceError::Fenced { .. } => ErrorCode::ProducerFenced,
        SequenceError::DuplicateTooOld { .. } => ErrorCode::DuplicateSequence,
    };
    ApiError::new(code, e.to_string())
}

/// A storage error as a client sees it; a not-leader error names the leader to retry at.
fn with_hint(shard: &Shard, e: StorageError) -> ApiError {
    let leader = if let StorageError::NotLeader(l) = &e { *l } else { None };
    let mut api = ApiError::from(e);
    if let (Some(l), Some(c)) = (leader, shard.cluster.as_ref()) {
        api.leader_hint = c.client_addr(l);
    }
    api
}

/// Handles a request from another shard.
pub async fn handle_mesh_request(shard: &Rc<Shard>, request: MeshRequest) -> MeshReply {
    match request {
        // Boxed: a client request may itself broadcast over the mesh (create topic).
        MeshRequest::Client(frame) => MeshReply::Client(Box::pin(handle(shard, frame)).await),
        MeshRequest::TopicCreated { name, config } => {
            let partitions = config.partitions;
            shard.catalog.borrow_mut().topics.insert(name.clone(), config);
            MeshReply::Done(shard.open_topic_partitions(&name, partitions).await)
        }
        MeshRequest::AccessChanged { users, acls } => {
            let mut catalog = shard.catalog.borrow_mut();
            (catalog.users, catalog.acls) = (users, acls);
            MeshReply::Done(Ok(()))
        }
        MeshRequest::TopicDeleted { name } => {
            shard.catalog.borrow_mut().topics.remove(&name);
            MeshReply::Done(shard.drop_topic_partitions(&name).await)
        }
        MeshRequest::Status { topic } => {
            let parts: Vec<_> =
                shard.partitions.borrow().iter().filter(|((t, _), _)| *t == topic).map(|(_, p)| p.clone()).collect();
            MeshReply::Status(parts.iter().map(|p| p.status(p.leadership().1.unwrap_or(0))).collect())
        }
    }
}
