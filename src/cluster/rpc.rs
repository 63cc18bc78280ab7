//! The control-plane link between nodes: metadata Raft traffic, forwarded metadata writes,
//! and the controller's messages to and from partition replicas.
//!
//! A link is a TCP connection on the nodes' `peer` addresses. Every message is framed as
//! `[len u32][crc32c u32][json]`, at most `MAX_CONTROL_MESSAGE_BYTES`; a bad CRC, an
//! oversized length or JSON that does not decode closes the link. A link opens with the
//! node handshake of [`crate::protocol::node_auth`] ([`Request::Hello`],
//! [`Reply::Challenge`], [`Request::Proof`], [`Reply::HelloOk`]): a node of another
//! cluster, one that is not a member, or one that cannot prove it holds the cluster secret
//! is refused and logged before anything else is read.

use std::time::Duration;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpSocket;

use super::meta::MetaCommand;
use super::raft_store::{MetaRaft, MetaReply, RaftNodeId};
use crate::config::ClusterSettings;
use crate::limits::MAX_CONTROL_MESSAGE_BYTES;
use crate::protocol::messages::ClusterStatusResponse as ClusterStatus;
use crate::protocol::node_auth::{fresh_nonce, Handshake, LinkKind, Nonce, Proof};
use crate::replication::{ControlMessage, NodeId};

/// A controller message about one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlEnvelope {
    pub topic: String,
    /// The topic's incarnation (see `TopicMeta::id`); a message for another one is ignored.
    #[serde(default)]
    pub topic_id: u64,
    pub partition: u32,
    pub msg: ControlMessage,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    Hello {
        cluster_id: String,
        node_id: NodeId,
        /// The node it means to reach.
        to: NodeId,
        nonce: Nonce,
    },
    /// The opener's proof of the cluster secret, answering [`Reply::Challenge`].
    Proof {
        proof: Proof,
    },
    Append(AppendEntriesRequest<MetaRaft>),
    Vote(VoteRequest<RaftNodeId>),
    Snapshot(InstallSnapshotRequest<MetaRaft>),
    /// Apply a metadata command; sent to the metadata leader.
    Write(MetaCommand),
    /// Controller <-> replicas, both directions.
    Control {
        from: NodeId,
        messages: Vec<ControlEnvelope>,
    },
    /// The cluster status, as the metadata leader knows it.
    Status,
}

/// Why a forwarded write was not applied.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum WriteError {
    #[error("not the metadata leader (leader: {0:?})")]
    NotLeader(Option<NodeId>),
    #[error("{0}")]
    Failed(String),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    /// The answer to a hello: the receiver's nonce and its proof of the secret.
    Challenge {
        node_id: NodeId,
        nonce: Nonce,
        proof: Proof,
    },
    HelloOk,
    Refused(String),
    Append(Result<AppendEntriesResponse<RaftNodeId>, RaftError<RaftNodeId>>),
    Vote(Result<VoteResponse<RaftNodeId>, RaftError<RaftNodeId>>),
    Snapshot(Result<InstallSnapshotResponse<RaftNodeId>, RaftError<RaftNodeId, InstallSnapshotError>>),
    Write(Result<MetaReply, WriteError>),
    Status(Result<ClusterStatus, WriteError>),
    Done,
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("message of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("message checksum mismatch")]
    Checksum,
    #[error("undecodable message: {0}")]
    Decode(String),
    #[error("timed out")]
    Timeout,
    #[error("refused: {0}")]
    Refused(String),
    #[error("unexpected reply")]
    Unexpected,
}

pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let json = serde_json::to_vec(msg).expect("control messages serialize");
    let mut out = Vec::with_capacity(json.len() + 8);
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&json).to_le_bytes());
    out.extend_from_slice(&json);
    out
}

/// Decodes one whole message body after its 8-byte header was read.
pub fn decode_body<T: for<'de> Deserialize<'de>>(crc: u32, body: &[u8]) -> Result<T, LinkError> {
    if crc32c::crc32c(body) != crc {
        return Err(LinkError::Checksum);
    }
    serde_json::from_slice(body).map_err(|e| LinkError::Decode(e.to_string()))
}

pub async fn read_msg<T: for<'de> Deserialize<'de>>(
    stream: &mut (impl AsyncRead + Unpin + ?Sized),
) -> Result<T, LinkError> {
    read_msg_within(stream, MAX_CONTROL_MESSAGE_BYTES).await
}

/// The first message of a link, before the peer said who it is: small, and whole within
/// the completion timeout.
pub async fn read_hello<T: for<'de> Deserialize<'de>>(
    stream: &mut (impl AsyncRead + Unpin + ?Sized),
) -> Result<T, LinkError> {
    tokio::time::timeout(CONTROL_COMPLETION_TIMEOUT, read_msg_within(stream, MAX_CONTROL_HELLO_BYTES))
        .await
        .unwrap_or(Err(LinkError::Timeout))
}

/// A header waits as long as the link is quiet; a body must follow within the completion
/// timeout (plus 1 ms per KB), and its buffer grows as its bytes arrive.
async fn read_msg_within<T: for<'de> Deserialize<'de>>(
    stream: &mut (impl AsyncRead + Unpin + ?Sized),
    max_len: usize,
) -> Result<T, LinkError> {
    let mut header = [0u8; 8];
    stream.read_exact(&mut header).await?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len > max_len {
        return Err(LinkError::TooLarge(len));
    }
    let mut body = Vec::new();
    let deadline = CONTROL_COMPLETION_TIMEOUT + Duration::from_millis(len as u64 / 1000);
    let mut limited = (&mut *stream).take(len as u64);
    let read = limited.read_to_end(&mut body);
    tokio::time::timeout(deadline, read).await.map_err(|_| LinkError::Timeout)??;
    if body.len() != len {
        return Err(LinkError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    decode_body(crc, &body)
}

/// Largest hello on a control link (a cluster id and a node id).
const MAX_CONTROL_HELLO_BYTES: usize = 4096;
/// How long the rest of a control message may take once its header arrived.
const CONTROL_COMPLETION_TIMEOUT: Duration = Duration::from_millis(crate::limits::DEFAULT_FRAME_TIMEOUT_MS);

pub async fn write_msg<T: Serialize>(
    stream: &mut (impl AsyncWrite + Unpin + ?Sized),
    msg: &T,
) -> Result<(), LinkError> {
    stream.write_all(&encode(msg)).await?;
    // (TLS: out of the session and onto the socket.)
    stream.flush().await?;
    Ok(())
}

/// One outgoing link to a peer node: connects (and says hello) on first use, and again
/// after any failure. Calls are sequential: request, then its reply.
pub struct PeerLink {
    pub target: NodeId,
    addr: std::net::SocketAddr,
    /// The local address the link leaves from (the node's own control address).
    source: Option<std::net::IpAddr>,
    cluster_id: String,
    me: NodeId,
    secret: crate::protocol::node_auth::ClusterSecret,
    /// With `[tls]`: this node's certificate, and the check that the target's names it.
    tls: Option<crate::net::tls::ClientTls>,
    stream: Option<LinkStream>,
}

/// A control link's stream: plain TCP or TLS.
pub trait LinkIo: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> LinkIo for T {}
pub type LinkStream = Box<dyn LinkIo>;

impl PeerLink {
    /// A link from this node (`settings.me()`) to `target`; `None` when it is no member.
    pub fn new(settings: &ClusterSettings, target: NodeId) -> Option<PeerLink> {
        let addr = settings.node(target)?.peer;
        let source = crate::net::link_source(settings.me().peer);
        Some(PeerLink {
            target,
            addr,
            source,
            cluster_id: settings.cluster_id.clone(),
            me: settings.node_id,
            secret: settings.secret.clone(),
            tls: settings.tls.as_ref().and_then(|t| t.node_connector(&settings.cluster_id, target)),
            stream: None,
        })
    }

    /// The node this link speaks for.
    pub fn me(&self) -> NodeId {
        self.me
    }

    pub async fn call(&mut self, request: &Request, timeout: Duration) -> Result<Reply, LinkError> {
        let result = tokio::time::timeout(timeout, self.call_inner(request)).await.unwrap_or(Err(LinkError::Timeout));
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn call_inner(&mut self, request: &Request) -> Result<Reply, LinkError> {
        if self.stream.is_none() {
            let socket = if self.addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
            if let Some(ip) = self.source {
                socket.bind(std::net::SocketAddr::new(ip, 0))?;
            }
            let s = socket.connect(self.addr).await?;
            s.set_nodelay(true)?;
            let mut s: LinkStream = match &self.tls {
                None => Box::new(s),
                Some(tls) => {
                    let (config, name) = tls.parts();
                    let name = name.expect("a node connector names the node");
                    Box::new(tokio_rustls::TlsConnector::from(config).connect(name, s).await?)
                }
            };
            self.authenticate(&mut s).await?;
            self.stream = Some(s);
        }
        let s = self.stream.as_mut().expect("connected above");
        write_msg(s, request).await?;
        read_msg(s).await
    }
}

impl PeerLink {
    /// The opener's side of the node handshake: proves this node holds the cluster secret,
    /// and checks that the target does.
    async fn authenticate(&self, s: &mut LinkStream) -> Result<(), LinkError> {
        let initiator_nonce = fresh_nonce();
        let hello = Request::Hello {
            cluster_id: self.cluster_id.clone(),
            node_id: self.me,
            to: self.target,
            nonce: initiator_nonce,
        };
        write_msg(s, &hello).await?;
        let (node_id, acceptor_nonce, proof) = match read_msg::<Reply>(s).await? {
            Reply::Challenge { node_id, nonce, proof } => (node_id, nonce, proof),
            Reply::Refused(why) => return Err(LinkError::Refused(why)),
            _ => return Err(LinkError::Unexpected),
        };
        if node_id != self.target {
            return Err(LinkError::Refused(format!("node {node_id} answered for node {}", self.target)));
        }
        let handshake =
            control_handshake(&self.secret, &self.cluster_id, self.me, self.target, initiator_nonce, acceptor_nonce);
        if let Err(e) = handshake.check_acceptor(&proof) {
            crate::log_limited!(warn, "control link to {}: {e}; closing it", self.addr);
            return Err(LinkError::Refused(e.to_string()));
        }
        write_msg(s, &Request::Proof { proof: handshake.initiator_proof() }).await?;
        match read_msg::<Reply>(s).await? {
            Reply::HelloOk => Ok(()),
            Reply::Refused(why) => Err(LinkError::Refused(why)),
            _ => Err(LinkError::Unexpected),
        }
    }
}

/// The handshake of a control link from `initiator` to `acceptor`.
pub fn control_handshake<'a>(
    secret: &'a crate::protocol::node_auth::ClusterSecret,
    cluster_id: &'a str,
    initiator: NodeId,
    acceptor: NodeId,
    initiator_nonce: Nonce,
    acceptor_nonce: Nonce,
) -> Handshake<'a> {
    Handshake { secret, link: LinkKind::Control, cluster_id, initiator, acceptor, initiator_nonce, acceptor_nonce }
}

/// Checks a link's first message: returns the peer's node id and its nonce. The rules are
/// the data links' ([`crate::protocol::peer::check_hello`]).
pub fn check_hello(
    first: &Request,
    cluster_id: &str,
    members: &[NodeId],
    me: NodeId,
) -> Result<(NodeId, Nonce), String> {
    match first {
        Request::Hello { cluster_id: c, node_id, to, nonce } => {
            let hello =
                crate::protocol::peer::PeerHello { cluster_id: c.clone(), node_id: *node_id, to: *to, nonce: *nonce };
            let node =
                crate::protocol::peer::check_hello(&hello, cluster_id, members, me).map_err(|e| e.to_string())?;
            Ok((node, *nonce))
        }
        _ => Err("the first message of a link must be a hello".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// What arrives before a link's handshake is untrusted: garbage, or a hello or proof
        /// with bytes changed, never panics the decoder.
        #[test]
        fn garbage_control_messages_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300), flip in 0usize..300) {
            let _ = decode_body::<Request>(crc32c::crc32c(&bytes), &bytes);
            let hello = encode(&Request::Hello { cluster_id: "c".into(), node_id: 1, to: 2, nonce: [3; 32] });
            let mut body = hello[8..].to_vec();
            let i = flip % body.len();
            body[i] = bytes.first().copied().unwrap_or(b'x');
            let _ = decode_body::<Request>(crc32c::crc32c(&body), &body);
        }
    }

    #[test]
    fn framing_detects_corruption_and_hello_checks_membership() {
        let msg = Request::Write(MetaCommand::DeleteTopic { name: "t".into() });
        let bytes = encode(&msg);
        let crc = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
        assert!(decode_body::<Request>(crc, &bytes[8..]).is_ok());
        for i in 8..bytes.len() {
            let mut bad = bytes[8..].to_vec();
            bad[i - 8] ^= 0x20;
            assert!(decode_body::<Request>(crc, &bad).is_err(), "flip at {i} undetected");
        }
        let hello = |c: &str, n| Request::Hello { cluster_id: c.into(), node_id: n, to: 1, nonce: [5; 32] };
        assert_eq!(check_hello(&hello("a", 2), "a", &[1, 2, 3], 1), Ok((2, [5; 32])));
        assert!(check_hello(&hello("b", 2), "a", &[1, 2, 3], 1).unwrap_err().contains("cluster"));
        assert!(check_hello(&hello("a", 9), "a", &[1, 2, 3], 1).unwrap_err().contains("not a member"));
        assert!(check_hello(&hello("a", 2), "a", &[1, 2, 3], 3).unwrap_err().contains("meant for node 1"));
        assert!(check_hello(&msg, "a", &[1], 1).is_err());
    }
}
