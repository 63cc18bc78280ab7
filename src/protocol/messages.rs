//! Request and response bodies. Each is an rkyv archive validated with bytecheck before use.
//!
//! The kind of a frame says which type its archive holds; a response carries the kind of
//! its request with the response flag set, or an [`ErrorResponse`] with the error flag.

use rkyv::{Archive, Deserialize, Serialize};

/// The request kinds. The numeric values are part of the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ApiKind {
    Metadata = 1,
    CreateTopic = 2,
    DeleteTopic = 3,
    DescribeTopic = 4,
    ListTopics = 5,
    Produce = 6,
    Fetch = 7,
    ListOffsets = 8,
    CommitOffset = 9,
    FetchOffset = 10,
    ClusterStatus = 11,
    InitProducer = 12,
    /// One step of a SCRAM-SHA-256 exchange (docs/protocol.md, "Authentication").
    Authenticate = 13,
    /// Creates a user or changes its password (its SCRAM credential).
    UpsertUser = 14,
    DeleteUser = 15,
    ListUsers = 16,
    /// Adds an ACL (docs/security.md, "Authorization").
    CreateAcl = 17,
    DeleteAcl = 18,
    ListAcls = 19,
}

impl ApiKind {
    pub fn from_u16(v: u16) -> Option<ApiKind> {
        use ApiKind::*;
        Some(match v {
            1 => Metadata,
            2 => CreateTopic,
            3 => DeleteTopic,
            4 => DescribeTopic,
            5 => ListTopics,
            6 => Produce,
            7 => Fetch,
            8 => ListOffsets,
            9 => CommitOffset,
            10 => FetchOffset,
            11 => ClusterStatus,
            12 => InitProducer,
            13 => Authenticate,
            14 => UpsertUser,
            15 => DeleteUser,
            16 => ListUsers,
            17 => CreateAcl,
            18 => DeleteAcl,
            19 => ListAcls,
            _ => return None,
        })
    }
}

/// Acknowledgement levels of a produce request (the `acks` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Acks {
    /// Answer once the batch is accepted, before it is written anywhere.
    None = 0,
    /// Answer once the leader has the batch on its disk (flushed, with `flush = always`).
    Leader = 1,
    /// Answer once a majority of replicas persisted it (single node: same as `Leader`).
    Quorum = 2,
    /// Answer once every in-sync replica persisted it (single node: same as `Leader`).
    All = 3,
}

impl Acks {
    pub fn from_u8(v: u8) -> Option<Acks> {
        Some(match v {
            0 => Acks::None,
            1 => Acks::Leader,
            2 => Acks::Quorum,
            3 => Acks::All,
            _ => return None,
        })
    }
}

impl std::str::FromStr for Acks {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" | "0" => Ok(Acks::None),
            "leader" | "1" => Ok(Acks::Leader),
            "quorum" => Ok(Acks::Quorum),
            "all" | "-1" => Ok(Acks::All),
            other => Err(format!("unknown acks level {other:?} (expected none, leader, quorum or all)")),
        }
    }
}

/// `ListOffsetsRequest::spec` values.
pub const OFFSET_SPEC_EARLIEST: u8 = 0;
pub const OFFSET_SPEC_LATEST: u8 = 1;
pub const OFFSET_SPEC_TIMESTAMP: u8 = 2;

/// Error reply to any request.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ErrorResponse {
    /// An [`crate::protocol::ErrorCode`].
    pub code: u16,
    /// Human-readable detail.
    pub message: String,
    /// Where to retry, when the request went to the wrong node (cluster modes).
    pub leader_hint: Option<String>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct MetadataRequest {
    /// Topics to describe; empty means all.
    pub topics: Vec<String>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct NodeInfo {
    pub node_id: u32,
    pub address: String,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PartitionMetadata {
    pub partition: u32,
    /// Node that leads the partition.
    pub leader: u32,
    pub replicas: Vec<u32>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TopicMetadata {
    pub name: String,
    /// The topic's incarnation: its id (0 on a single node) and creation time. A topic
    /// deleted and created again under its name, or on a fresh cluster, has another.
    pub id: u64,
    pub created_ms: i64,
    pub partitions: Vec<PartitionMetadata>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct MetadataResponse {
    pub node_id: u32,
    pub nodes: Vec<NodeInfo>,
    pub topics: Vec<TopicMetadata>,
    pub server_version: String,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CreateTopicRequest {
    pub name: String,
    pub partitions: u32,
    pub replication_factor: u16,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CreateTopicResponse {
    pub name: String,
    pub partitions: u32,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct DeleteTopicRequest {
    pub name: String,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct DeleteTopicResponse {
    pub name: String,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct DescribeTopicRequest {
    pub name: String,
}

/// The state of one partition as its owner sees it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PartitionStatus {
    pub partition: u32,
    pub leader: u32,
    /// First offset still stored (retention moves it forward).
    pub log_start_offset: u64,
    /// Offsets below it are committed and readable.
    pub high_watermark: u64,
    /// Next offset to be assigned.
    pub log_end_offset: u64,
    pub segments: u32,
    pub size_bytes: u64,
    /// `ok`, or why the partition does not serve (`corrupt: ...`, `stopped: ...`).
    pub state: String,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct DescribeTopicResponse {
    pub name: String,
    pub partitions: Vec<PartitionStatus>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct ListTopicsRequest {}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TopicSummary {
    pub name: String,
    pub partitions: u32,
    pub replication_factor: u16,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ListTopicsResponse {
    pub topics: Vec<TopicSummary>,
}

/// Produce: the payload holds one or more record batches for one partition.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ProduceRequest {
    pub topic: String,
    pub partition: u32,
    /// An [`Acks`] value.
    pub acks: u8,
    /// How long the broker may wait for the acknowledgement level before answering `Timeout`.
    pub timeout_ms: u32,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ProduceResponse {
    /// Offset of the first record of the first batch.
    pub base_offset: u64,
    /// Offset of the last record of the last batch.
    pub last_offset: u64,
    /// High watermark after this produce (informative).
    pub high_watermark: u64,
    /// How long the broker held this request back: the principal is over its produce or
    /// fetch quota (docs/security.md, "Quotas"). 0 when not throttled.
    pub throttle_ms: u32,
}

/// Fetch: whole batches from the batch containing `offset`, up to `max_bytes` (at least one
/// batch is returned when one is available, even if larger).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct FetchRequest {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub max_bytes: u32,
    /// Long poll: when nothing at `offset` is committed yet, wait up to this long for it.
    pub max_wait_ms: u32,
}

/// The payload holds concatenated record batches; the first may start before `offset`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct FetchResponse {
    pub high_watermark: u64,
    pub log_start_offset: u64,
    /// As in `ProduceResponse`.
    pub throttle_ms: u32,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ListOffsetsRequest {
    pub topic: String,
    pub partition: u32,
    /// `OFFSET_SPEC_*`.
    pub spec: u8,
    /// For `OFFSET_SPEC_TIMESTAMP`: the first offset whose timestamp is at least this (ms).
    pub timestamp_ms: i64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ListOffsetsResponse {
    /// The offset; for a timestamp past every record, the high watermark.
    pub offset: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CommitOffsetRequest {
    pub group: String,
    pub topic: String,
    pub partition: u32,
    /// The next offset the group will read.
    pub offset: u64,
    pub metadata: String,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CommitOffsetResponse {}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct FetchOffsetRequest {
    pub group: String,
    pub topic: String,
    pub partition: u32,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct FetchOffsetResponse {
    /// None when the group never committed for this partition.
    pub offset: Option<u64>,
    pub metadata: String,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct ClusterStatusRequest {}

// The status types also derive serde: the metadata leader builds them and other nodes
// relay them over the control links (JSON) unchanged.

#[derive(Archive, Serialize, Deserialize, serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
pub struct NodeStatusInfo {
    pub node_id: u32,
    pub client_addr: String,
    pub alive: bool,
    pub metadata_leader: bool,
}

#[derive(Archive, Serialize, Deserialize, serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
pub struct FollowerLag {
    pub node_id: u32,
    /// Records the leader holds that the follower has not durably matched.
    pub records: u64,
}

#[derive(Archive, Serialize, Deserialize, serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
pub struct PartitionReplicationStatus {
    pub topic: String,
    pub partition: u32,
    pub replicas: Vec<u32>,
    pub epoch: u32,
    pub leader: Option<u32>,
    pub in_sync: Vec<u32>,
    pub high_watermark: u64,
    pub log_end: u64,
    pub lag: Vec<FollowerLag>,
}

#[derive(Archive, Serialize, Deserialize, serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
pub struct ClusterStatusResponse {
    pub cluster_id: String,
    pub mode: String,
    pub metadata_leader: Option<u32>,
    pub nodes: Vec<NodeStatusInfo>,
    pub partitions: Vec<PartitionReplicationStatus>,
}

/// Asks for a producer id: unique in the cluster, never 0 (see docs/protocol.md,
/// "Idempotent producers").
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct InitProducerRequest {}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct InitProducerResponse {
    pub producer_id: u64,
}

/// One client message of a SASL exchange: `mechanism` is `SCRAM-SHA-256`; `message` the
/// client-first message, then the client-final one.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct AuthenticateRequest {
    pub mechanism: String,
    pub message: String,
}

/// The server's answer: the server-first message (`done: false`), then the server-final one
/// (`done: true`: the connection is authenticated as `principal`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct AuthenticateResponse {
    pub message: String,
    pub done: bool,
    pub principal: String,
}

/// A user's SCRAM-SHA-256 credential, computed by the client from the password (which never
/// reaches the broker): salt, iterations, `StoredKey`, `ServerKey`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct UpsertUserRequest {
    pub name: String,
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct UpsertUserResponse {
    pub name: String,
    /// False: the user existed and its credential was replaced.
    pub created: bool,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct DeleteUserRequest {
    pub name: String,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct DeleteUserResponse {
    pub name: String,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct ListUsersRequest {}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ListUsersResponse {
    pub users: Vec<String>,
}

/// One ACL on the wire: the codes of [`crate::protocol::acl`]'s enums.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct AclSpec {
    /// A user name, or `*` for every authenticated user.
    pub principal: String,
    /// `ResourceKind`: 1 topic, 2 group, 3 cluster.
    pub resource: u8,
    /// `PatternKind`: 1 literal, 2 prefix.
    pub pattern: u8,
    pub name: String,
    /// `Operation`: 1 read, 2 write, 3 create, 4 delete, 5 describe, 6 alter, 7 all.
    pub operation: u8,
    /// `Permission`: 1 allow, 2 deny.
    pub permission: u8,
}

impl AclSpec {
    /// The ACL this names, validated.
    pub fn to_acl(&self) -> Result<crate::protocol::acl::Acl, String> {
        use crate::protocol::acl::{Acl, Operation, PatternKind, Permission, ResourceKind};
        let acl = Acl {
            principal: self.principal.clone(),
            resource: ResourceKind::from_u8(self.resource)
                .ok_or_else(|| format!("unknown resource kind {}", self.resource))?,
            pattern: PatternKind::from_u8(self.pattern)
                .ok_or_else(|| format!("unknown pattern kind {}", self.pattern))?,
            name: self.name.clone(),
            operation: Operation::from_u8(self.operation)
                .ok_or_else(|| format!("unknown operation {}", self.operation))?,
            permission: Permission::from_u8(self.permission)
                .ok_or_else(|| format!("unknown permission {}", self.permission))?,
        };
        acl.validate()?;
        Ok(acl)
    }
}

impl From<&crate::protocol::acl::Acl> for AclSpec {
    fn from(acl: &crate::protocol::acl::Acl) -> AclSpec {
        AclSpec {
            principal: acl.principal.clone(),
            resource: acl.resource as u8,
            pattern: acl.pattern as u8,
            name: acl.name.clone(),
            operation: acl.operation as u8,
            permission: acl.permission as u8,
        }
    }
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CreateAclRequest {
    pub acl: AclSpec,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CreateAclResponse {
    /// False when the ACL existed already.
    pub created: bool,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct DeleteAclRequest {
    pub acl: AclSpec,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct DeleteAclResponse {}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct ListAclsRequest {}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ListAclsResponse {
    pub acls: Vec<AclSpec>,
}
