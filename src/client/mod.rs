//! The Quorra client library: a connection to a broker, a batching producer and a
//! long-polling consumer with consumer-group offsets. Used by the `quorra` CLI and the
//! `quorra-load` generator.
//!
//! The client runs inside a glommio executor (one per thread, like the broker); all types
//! are `!Send` and cheap to share with `Rc`.

pub mod cli_args;
pub mod consumer;
pub mod producer;
mod routing;

use std::cell::RefCell;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use thiserror::Error;

pub use crate::net::connection::{Connection, LinkError};
pub use consumer::{ConsumedRecord, Consumer, ConsumerConfig, StartFrom};
pub use producer::{Partitioner, Producer, ProducerConfig, RecordMetadata};
pub use routing::{is_retriable, ReadFrom};

use crate::limits::DEFAULT_MAX_FRAME_BYTES;
use crate::protocol::messages::*;
use crate::protocol::{decode, encode, ApiKind, BodyBuf, DecodeError, ErrorCode, Frame};

/// Everything that can go wrong for a client, each with a message fit for a one-line error.
#[derive(Debug, Error, Clone)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {message}")]
    Connect { addr: String, message: String },
    #[error("no broker reachable ({0})")]
    NoBroker(String),
    #[error("connection to {addr} lost: {reason}")]
    Disconnected { addr: String, reason: String },
    #[error("{message} ({code})")]
    Server { code: ErrorCode, message: String, leader_hint: Option<String> },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("corrupt data received: {0}")]
    Corrupt(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("{0}")]
    Invalid(String),
}

impl ClientError {
    /// The server's error code, if the server answered with an error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether a new connection (maybe to another node) may succeed.
    pub fn is_connection_error(&self) -> bool {
        matches!(self, ClientError::Connect { .. } | ClientError::Disconnected { .. } | ClientError::NoBroker(_))
    }
}

/// The client's view of a [`Connection`]: its errors as [`ClientError`]s.
pub(crate) trait Requests {
    /// [`Connection::send`]: queued now, in order, answered by the returned future.
    fn request(
        &self,
        kind: ApiKind,
        archive: BodyBuf,
        payload: Vec<Bytes>,
    ) -> impl std::future::Future<Output = Result<Frame, ClientError>> + 'static;
}

impl Requests for Connection {
    fn request(
        &self,
        kind: ApiKind,
        archive: BodyBuf,
        payload: Vec<Bytes>,
    ) -> impl std::future::Future<Output = Result<Frame, ClientError>> + 'static {
        let answer = self.send(kind, archive, payload);
        async move { answer.await.map_err(ClientError::from) }
    }
}

impl From<LinkError> for ClientError {
    fn from(e: LinkError) -> Self {
        match e {
            LinkError::Connect { addr, message } => ClientError::Connect { addr, message },
            LinkError::Disconnected { addr, reason } => ClientError::Disconnected { addr, reason },
            LinkError::Server { code, message, leader_hint } => ClientError::Server { code, message, leader_hint },
            LinkError::Protocol(message) => ClientError::Protocol(message),
        }
    }
}

impl From<DecodeError> for ClientError {
    fn from(e: DecodeError) -> Self {
        ClientError::Protocol(e.to_string())
    }
}

/// How to reach the cluster.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port` addresses, tried in turn.
    pub bootstrap: Vec<String>,
    pub connect_timeout: Duration,
    /// Longest any single request may take (fetch long polls add their own wait).
    pub request_timeout: Duration,
    pub max_frame_bytes: usize,
    /// In a cluster, send each partition's requests straight to the node that serves it
    /// (default). Off: everything goes to the bootstrap node, which forwards what it does
    /// not serve (`multi-master` and `forwarding` modes).
    pub follow_leaders: bool,
    /// Authenticate every connection as this user (SCRAM-SHA-256), for brokers with
    /// `[auth] enabled`.
    pub credentials: Option<Credentials>,
    /// Speak TLS to brokers with `[tls]`: the CA to trust, and the client's certificate
    /// (which authenticates it, mTLS) if it has one.
    pub tls: Option<crate::net::tls::ClientTls>,
}

/// A user and its password (never printed, never sent: SCRAM proves it).
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({:?}, password hidden)", self.user)
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            bootstrap: vec!["127.0.0.1:7420".into()],
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            follow_leaders: true,
            credentials: None,
            tls: None,
        }
    }
}

impl ClientConfig {
    /// Parses a comma-separated bootstrap list.
    pub fn with_bootstrap(list: &str) -> Self {
        ClientConfig {
            bootstrap: list.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
            ..Default::default()
        }
    }
}

/// A client: one connection at a time, re-established (trying every bootstrap address in
/// turn) when it breaks.
pub struct Client {
    config: ClientConfig,
    conn: RefCell<Option<Rc<Connection>>>,
    /// A node that failed a request: metadata is asked elsewhere first.
    avoid: std::cell::Cell<Option<SocketAddr>>,
    routes: routing::SharedRoutes,
}

impl Client {
    /// Connects to the first reachable bootstrap address.
    pub async fn connect(config: ClientConfig) -> Result<Rc<Client>, ClientError> {
        if config.bootstrap.is_empty() {
            return Err(ClientError::Invalid("no bootstrap address given".into()));
        }
        let client =
            Rc::new(Client { config, conn: RefCell::new(None), avoid: Default::default(), routes: Default::default() });
        client.connection().await?;
        Ok(client)
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Stops using `addr` as the metadata connection (it failed a request; its view of the
    /// cluster may be stale). A connection to it that still works is dropped only when
    /// `even_if_working` (the node stopped answering, or may be stale): requests of other
    /// tasks may be in flight on it, and dropping it fails them all.
    pub fn avoid_for_metadata(&self, addr: SocketAddr, even_if_working: bool) {
        self.avoid.set(Some(addr));
        if self.conn.borrow().as_ref().is_some_and(|c| c.addr() == addr && (even_if_working || c.is_broken())) {
            *self.conn.borrow_mut() = None;
        }
    }

    /// The live connection, reconnecting if needed.
    pub async fn connection(&self) -> Result<Rc<Connection>, ClientError> {
        if let Some(c) = self.conn.borrow().as_ref().filter(|c| !c.is_broken()) {
            return Ok(c.clone());
        }
        let mut failures = Vec::new();
        let mut candidates = Vec::new();
        for addr in &self.config.bootstrap {
            candidates.extend(resolve(addr)?);
        }
        // A node that just failed a request is tried last.
        let avoid = self.avoid.get();
        candidates.sort_by_key(|a| Some(*a) == avoid);
        {
            for sock in candidates {
                match self.open_connection(sock).await {
                    Ok(c) => {
                        *self.conn.borrow_mut() = Some(c.clone());
                        return Ok(c);
                    }
                    // Another node would say the same.
                    Err(e) if e.code() == Some(ErrorCode::AuthenticationFailed) => return Err(e),
                    Err(e) => failures.push(e.to_string()),
                }
            }
        }
        if failures.len() == 1 {
            return Err(ClientError::NoBroker(failures.remove(0)));
        }
        Err(ClientError::NoBroker(failures.join("; ")))
    }

    /// A new connection to `addr`, authenticated when the config has credentials.
    pub(crate) async fn open_connection(&self, addr: SocketAddr) -> Result<Rc<Connection>, ClientError> {
        let timeout = self.config.connect_timeout;
        let conn = Connection::connect(addr, timeout, self.config.max_frame_bytes, self.config.tls.as_ref()).await?;
        if let Some(credentials) = &self.config.credentials {
            let exchange = authenticate(&conn, credentials);
            crate::rt::timeout(self.config.request_timeout, exchange)
                .await
                .unwrap_or_else(|| Err(ClientError::Timeout(format!("authentication at {addr}"))))?;
        }
        Ok(conn)
    }

    /// Creates user `name` or changes its password. The SCRAM credential is computed here;
    /// the password never leaves this process.
    pub async fn upsert_user(&self, name: &str, password: &str) -> Result<bool, ClientError> {
        let salt: [u8; 16] = crate::protocol::node_auth::fresh_nonce()[..16].try_into().expect("16 of 32 bytes");
        let iterations = crate::protocol::scram::DEFAULT_ITERATIONS;
        let c = crate::protocol::scram::Credential::new(password, &salt, iterations);
        let req = UpsertUserRequest {
            name: name.into(),
            salt: c.salt,
            iterations,
            stored_key: c.stored_key,
            server_key: c.server_key,
        };
        let resp: UpsertUserResponse = self.call(ApiKind::UpsertUser, &req).await?;
        Ok(resp.created)
    }

    pub async fn delete_user(&self, name: &str) -> Result<(), ClientError> {
        let _: DeleteUserResponse = self.call(ApiKind::DeleteUser, &DeleteUserRequest { name: name.into() }).await?;
        Ok(())
    }

    pub async fn list_users(&self) -> Result<Vec<String>, ClientError> {
        let resp: ListUsersResponse = self.call(ApiKind::ListUsers, &ListUsersRequest {}).await?;
        Ok(resp.users)
    }

    /// Adds an ACL; false when it existed already.
    pub async fn create_acl(&self, acl: &crate::protocol::acl::Acl) -> Result<bool, ClientError> {
        let resp: CreateAclResponse = self.call(ApiKind::CreateAcl, &CreateAclRequest { acl: acl.into() }).await?;
        Ok(resp.created)
    }

    pub async fn delete_acl(&self, acl: &crate::protocol::acl::Acl) -> Result<(), ClientError> {
        let _: DeleteAclResponse = self.call(ApiKind::DeleteAcl, &DeleteAclRequest { acl: acl.into() }).await?;
        Ok(())
    }

    pub async fn list_acls(&self) -> Result<Vec<crate::protocol::acl::Acl>, ClientError> {
        let resp: ListAclsResponse = self.call(ApiKind::ListAcls, &ListAclsRequest {}).await?;
        resp.acls.iter().map(|a| a.to_acl().map_err(ClientError::Protocol)).collect()
    }

    /// Sends a request and waits for its response frame.
    pub async fn request(
        &self,
        kind: ApiKind,
        archive: BodyBuf,
        payload: Vec<Bytes>,
        timeout: Duration,
    ) -> Result<Frame, ClientError> {
        let conn = self.connection().await?;
        let fut = conn.request(kind, archive, payload);
        match crate::rt::timeout(timeout, fut).await {
            Some(r) => r,
            None => {
                Err(ClientError::Timeout(format!("no answer from {} within {} ms", conn.addr(), timeout.as_millis())))
            }
        }
    }

    async fn call<Req, Resp>(&self, kind: ApiKind, req: &Req) -> Result<Resp, ClientError>
    where
        Req: for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<BodyBuf, rkyv::ser::allocator::ArenaHandle<'a>, rkyv::rancor::Error>,
        >,
        Resp: rkyv::Archive,
        Resp::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>>
            + rkyv::Deserialize<Resp, rkyv::api::high::HighDeserializer<rkyv::rancor::Error>>,
    {
        let frame = self.request(kind, encode(req), Vec::new(), self.config.request_timeout).await?;
        Ok(decode::<Resp>(frame.archive())?)
    }

    pub async fn metadata(&self, topics: Vec<String>) -> Result<MetadataResponse, ClientError> {
        self.call(ApiKind::Metadata, &MetadataRequest { topics }).await
    }

    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        replication_factor: u16,
    ) -> Result<CreateTopicResponse, ClientError> {
        self.call(ApiKind::CreateTopic, &CreateTopicRequest { name: name.into(), partitions, replication_factor }).await
    }

    pub async fn delete_topic(&self, name: &str) -> Result<DeleteTopicResponse, ClientError> {
        self.call(ApiKind::DeleteTopic, &DeleteTopicRequest { name: name.into() }).await
    }

    pub async fn describe_topic(&self, name: &str) -> Result<DescribeTopicResponse, ClientError> {
        self.call(ApiKind::DescribeTopic, &DescribeTopicRequest { name: name.into() }).await
    }

    pub async fn list_topics(&self) -> Result<ListTopicsResponse, ClientError> {
        self.call(ApiKind::ListTopics, &ListTopicsRequest {}).await
    }

    pub async fn cluster_status(&self) -> Result<ClusterStatusResponse, ClientError> {
        self.call(ApiKind::ClusterStatus, &ClusterStatusRequest {}).await
    }

    /// Number of partitions of a topic (an `unknown_topic` error if there is no such topic).
    pub async fn partition_count(&self, topic: &str) -> Result<u32, ClientError> {
        Ok(self.topic_metadata(topic).await?.partitions.len() as u32)
    }

    /// One topic's metadata: its incarnation and partitions (an `unknown_topic` error if
    /// there is no such topic).
    pub async fn topic_metadata(&self, topic: &str) -> Result<TopicMetadata, ClientError> {
        let md = self.metadata(vec![topic.to_string()]).await?;
        md.topics.into_iter().find(|t| t.name == topic).ok_or_else(|| ClientError::Server {
            code: ErrorCode::UnknownTopic,
            message: format!("no such topic: {topic}"),
            leader_hint: None,
        })
    }

    /// Produces already-built record batches to one partition.
    pub async fn produce_batches(
        &self,
        topic: &str,
        partition: u32,
        acks: Acks,
        batches: Vec<Bytes>,
    ) -> Result<ProduceResponse, ClientError> {
        let req = ProduceRequest {
            topic: topic.into(),
            partition,
            acks: acks as u8,
            timeout_ms: self.config.request_timeout.as_millis() as u32,
        };
        // Sent once: a retry could store the batches twice (the producer retries safely).
        let conn = self.partition_connection(topic, partition, ReadFrom::Leader).await?;
        let frame =
            crate::rt::timeout(self.config.request_timeout, conn.request(ApiKind::Produce, encode(&req), batches))
                .await
                .unwrap_or_else(|| Err(ClientError::Timeout("produce not answered".into())))?;
        Ok(decode::<ProduceResponse>(frame.archive())?)
    }

    /// Fetches whole batches from the batch containing `offset`.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        max_wait: Duration,
    ) -> Result<FetchResult, ClientError> {
        let req = FetchRequest {
            topic: topic.into(),
            partition,
            offset,
            max_bytes,
            max_wait_ms: max_wait.as_millis() as u32,
        };
        let timeout = self.config.request_timeout + max_wait;
        let frame =
            self.partition_request(topic, partition, ReadFrom::Leader, ApiKind::Fetch, encode(&req), timeout).await?;
        let resp = decode::<FetchResponse>(frame.archive())?;
        Ok(FetchResult {
            high_watermark: resp.high_watermark,
            log_start_offset: resp.log_start_offset,
            throttle_ms: resp.throttle_ms,
            batches: frame.into_payload(),
        })
    }

    pub async fn list_offsets(
        &self,
        topic: &str,
        partition: u32,
        spec: u8,
        timestamp_ms: i64,
    ) -> Result<u64, ClientError> {
        let req = ListOffsetsRequest { topic: topic.into(), partition, spec, timestamp_ms };
        let timeout = self.config.request_timeout;
        let frame = self
            .partition_request(topic, partition, ReadFrom::Leader, ApiKind::ListOffsets, encode(&req), timeout)
            .await?;
        Ok(decode::<ListOffsetsResponse>(frame.archive())?.offset)
    }

    /// A request about one partition that is safe to repeat, sent to a replica that holds it
    /// and sent again (after following a not-leader hint or re-reading metadata) while it
    /// fails in a retriable way, for up to the request timeout.
    pub async fn partition_request(
        &self,
        topic: &str,
        partition: u32,
        read_from: ReadFrom,
        kind: ApiKind,
        archive: BodyBuf,
        timeout: Duration,
    ) -> Result<Frame, ClientError> {
        let deadline = std::time::Instant::now() + self.config.request_timeout;
        loop {
            let result = match self.partition_connection(topic, partition, read_from).await {
                Ok(conn) => crate::rt::timeout(timeout, conn.request(kind, archive.clone(), Vec::new()))
                    .await
                    .unwrap_or_else(|| Err(ClientError::Timeout(format!("no answer from {}", conn.addr())))),
                Err(e) => Err(e),
            };
            match result {
                Err(e) if is_retriable(&e) && std::time::Instant::now() < deadline => {
                    self.route_failed(topic, partition, &e);
                    crate::rt::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    pub async fn commit_offset(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> Result<(), ClientError> {
        self.commit_offset_with_metadata(group, topic, partition, offset, "").await
    }

    /// [`Self::commit_offset`] with a string stored beside the offset (at most 1 KiB).
    pub async fn commit_offset_with_metadata(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        offset: u64,
        metadata: &str,
    ) -> Result<(), ClientError> {
        let req = CommitOffsetRequest {
            group: group.into(),
            topic: topic.into(),
            partition,
            offset,
            metadata: metadata.into(),
        };
        let _: CommitOffsetResponse = self.call(ApiKind::CommitOffset, &req).await?;
        Ok(())
    }

    /// A new producer id from the cluster (retried while the cluster cannot allocate one,
    /// e.g. during a metadata election, up to the request timeout).
    pub async fn init_producer(&self) -> Result<u64, ClientError> {
        let deadline = std::time::Instant::now() + self.config.request_timeout;
        loop {
            match self.call::<_, InitProducerResponse>(ApiKind::InitProducer, &InitProducerRequest {}).await {
                Ok(r) if r.producer_id != 0 => return Ok(r.producer_id),
                Ok(_) => return Err(ClientError::Protocol("the broker allocated producer id 0".into())),
                Err(e) if is_retriable(&e) && std::time::Instant::now() < deadline => {
                    if let Ok(c) = self.connection().await {
                        self.avoid_for_metadata(c.addr(), e.is_connection_error());
                    }
                    crate::rt::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub async fn fetch_offset(&self, group: &str, topic: &str, partition: u32) -> Result<Option<u64>, ClientError> {
        let resp: FetchOffsetResponse = self
            .call(ApiKind::FetchOffset, &FetchOffsetRequest { group: group.into(), topic: topic.into(), partition })
            .await?;
        Ok(resp.offset)
    }
}

/// The answer to a fetch: concatenated record batches (the first may start before the
/// requested offset) and the partition's bounds.
pub struct FetchResult {
    pub high_watermark: u64,
    pub log_start_offset: u64,
    /// How long the broker held the request back (the principal is over its quota).
    pub throttle_ms: u32,
    pub batches: Bytes,
}

fn resolve(addr: &str) -> Result<Vec<SocketAddr>, ClientError> {
    addr.to_socket_addrs()
        .map(Iterator::collect)
        .map_err(|e| ClientError::Invalid(format!("bad broker address {addr:?}: {e}")))
}

/// The client's side of the SCRAM-SHA-256 exchange on a new connection.
async fn authenticate(conn: &Connection, credentials: &Credentials) -> Result<(), ClientError> {
    use crate::protocol::scram::ClientExchange;
    let failed = |e: crate::protocol::scram::ScramError| ClientError::Invalid(format!("authentication: {e}"));
    let nonce = crate::protocol::node_auth::fresh_text_nonce();
    let (exchange, first) = ClientExchange::start(&credentials.user, &credentials.password, &nonce).map_err(failed)?;
    let step = |message: String| {
        let req = AuthenticateRequest { mechanism: "SCRAM-SHA-256".into(), message };
        conn.request(ApiKind::Authenticate, encode(&req), Vec::new())
    };
    let server_first: AuthenticateResponse = decode(step(first).await?.archive())?;
    let (verdict, last) = exchange.answer(&server_first.message).map_err(failed)?;
    let server_final: AuthenticateResponse = decode(step(last).await?.archive())?;
    verdict.verify(&server_final.message).map_err(failed)
}
