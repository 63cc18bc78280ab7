//! Node-to-node messages (replication traffic between the replicas of a partition), framed
//! like client requests (same header, CRCs and validation) with their own kinds.
//!
//! Every link starts with the handshake of [`super::node_auth`]: a [`PeerHello`] naming the
//! cluster, the sender and the receiver, answered by a [`PeerChallenge`], answered by a
//! [`PeerProof`]. A node from another cluster, one that is not a member, or one that cannot
//! prove it holds the cluster secret is refused before anything else is read.
//! Batches of an append travel as the frame's raw payload, exactly as stored.

use rkyv::{Archive, Deserialize, Serialize};

use super::node_auth::{check_addressing, AuthError, Nonce, Proof};
use crate::replication::{Epoch, EpochHistory, NodeId, PeerMessage};

/// Frame kinds of node-to-node traffic (client kinds are below 100).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum PeerKind {
    Hello = 100,
    Append = 101,
    AppendReply = 102,
    Proof = 103,
}

impl PeerKind {
    pub fn from_u16(v: u16) -> Option<PeerKind> {
        match v {
            100 => Some(PeerKind::Hello),
            101 => Some(PeerKind::Append),
            102 => Some(PeerKind::AppendReply),
            103 => Some(PeerKind::Proof),
            _ => None,
        }
    }
}

/// First frame on a node-to-node link (kind 100), from the node that opened it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PeerHello {
    pub cluster_id: String,
    pub node_id: u32,
    /// The node it means to reach.
    pub to: u32,
    pub nonce: Nonce,
}

/// The answer to a hello: the receiver's nonce and its proof of the secret.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PeerChallenge {
    pub node_id: u32,
    pub nonce: Nonce,
    pub proof: Proof,
}

/// Second frame (kind 103): the opener's proof of the secret; answered by an empty
/// [`PeerAccepted`], or an error and the end of the connection.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PeerProof {
    pub proof: Proof,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PeerAccepted {
    pub node_id: u32,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct EpochStart {
    pub epoch: u32,
    pub start_offset: u64,
}

/// Leader -> follower; the payload holds the batches of `[prev_offset, end_offset)`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct AppendRequest {
    pub topic: String,
    /// The topic's incarnation (a topic deleted and created again has another id).
    pub topic_id: u64,
    pub partition: u32,
    pub epoch: u32,
    pub leader: u32,
    pub prev_offset: u64,
    pub prev_epoch: Option<u32>,
    pub end_offset: u64,
    pub epochs: Vec<EpochStart>,
    pub leader_hw: u64,
    /// The first offset the leader's log holds (a follower that does not reach it restarts
    /// its log there).
    pub log_start: u64,
}

/// `AppendReply::kind` values.
pub const REPLY_ACK: u8 = 0;
pub const REPLY_MISMATCH: u8 = 1;
pub const REPLY_STALE_EPOCH: u8 = 2;

/// Follower -> leader.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct AppendReply {
    pub topic: String,
    pub topic_id: u64,
    pub partition: u32,
    pub kind: u8,
    pub epoch: u32,
    pub from: u32,
    pub durable_match: u64,
    pub log_end: u64,
    pub history: Vec<EpochStart>,
}

/// Why a peer message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("peer from cluster {got:?}, this is cluster {want:?}")]
    WrongCluster { got: String, want: String },
    #[error("node {0} is not a member of this cluster")]
    UnknownNode(u32),
    #[error("invalid peer message: {0}")]
    Invalid(String),
    #[error("{0}")]
    Auth(#[from] AuthError),
}

/// Checks a hello's ids against this node's cluster and membership (before any proof):
/// returns the sender.
pub fn check_hello(hello: &PeerHello, cluster_id: &str, members: &[NodeId], me: NodeId) -> Result<NodeId, PeerError> {
    if hello.cluster_id != cluster_id {
        return Err(PeerError::WrongCluster { got: hello.cluster_id.clone(), want: cluster_id.to_string() });
    }
    if !members.contains(&hello.node_id) {
        return Err(PeerError::UnknownNode(hello.node_id));
    }
    check_addressing(hello.node_id, hello.to, me)?;
    Ok(hello.node_id)
}

fn to_wire(h: &[(Epoch, u64)]) -> Vec<EpochStart> {
    h.iter().map(|&(epoch, start_offset)| EpochStart { epoch, start_offset }).collect()
}

/// Rebuilds an epoch history, refusing one that is not strictly increasing in both epoch
/// and offset (a peer may be broken or hostile).
fn from_wire(h: &[EpochStart]) -> Result<Vec<(Epoch, u64)>, PeerError> {
    let pairs: Vec<(Epoch, u64)> = h.iter().map(|e| (e.epoch, e.start_offset)).collect();
    if pairs.windows(2).any(|w| w[0].0 >= w[1].0 || w[0].1 >= w[1].1) {
        return Err(PeerError::Invalid("epoch history is not increasing".into()));
    }
    Ok(pairs)
}

/// Encodes a replication message of `topic`/`partition` for the wire.
pub enum WirePeer {
    Append(AppendRequest),
    Reply(AppendReply),
}

pub fn encode_peer(topic: &str, topic_id: u64, partition: u32, msg: &PeerMessage) -> WirePeer {
    let (topic, partition) = (topic.to_string(), partition);
    match msg {
        PeerMessage::Append { epoch, leader, prev_offset, prev_epoch, end_offset, epochs, leader_hw, log_start } => {
            WirePeer::Append(AppendRequest {
                topic,
                topic_id,
                partition,
                epoch: *epoch,
                leader: *leader,
                prev_offset: *prev_offset,
                prev_epoch: *prev_epoch,
                end_offset: *end_offset,
                epochs: to_wire(epochs),
                leader_hw: *leader_hw,
                log_start: *log_start,
            })
        }
        PeerMessage::Ack { epoch, from, durable_match } => WirePeer::Reply(AppendReply {
            topic,
            topic_id,
            partition,
            kind: REPLY_ACK,
            epoch: *epoch,
            from: *from,
            durable_match: *durable_match,
            log_end: 0,
            history: Vec::new(),
        }),
        PeerMessage::Mismatch { epoch, from, log_end, history } => WirePeer::Reply(AppendReply {
            topic,
            topic_id,
            partition,
            kind: REPLY_MISMATCH,
            epoch: *epoch,
            from: *from,
            durable_match: 0,
            log_end: *log_end,
            history: to_wire(history.entries()),
        }),
        PeerMessage::StaleEpoch { epoch, from } => WirePeer::Reply(AppendReply {
            topic,
            topic_id,
            partition,
            kind: REPLY_STALE_EPOCH,
            epoch: *epoch,
            from: *from,
            durable_match: 0,
            log_end: 0,
            history: Vec::new(),
        }),
    }
}

/// Decodes an append request, checking what the state machine relies on.
pub fn decode_append(req: &AppendRequest, payload_len: usize) -> Result<PeerMessage, PeerError> {
    if req.end_offset < req.prev_offset {
        return Err(PeerError::Invalid(format!("append range {}..{} is reversed", req.prev_offset, req.end_offset)));
    }
    if req.prev_offset == 0 && req.prev_epoch.is_some() {
        return Err(PeerError::Invalid("an append at offset 0 has no previous epoch".into()));
    }
    if (req.end_offset == req.prev_offset) != (payload_len == 0) {
        return Err(PeerError::Invalid("payload does not match the append range".into()));
    }
    let epochs = from_wire(&req.epochs)?;
    if epochs.iter().any(|&(e, _)| e > req.epoch) {
        return Err(PeerError::Invalid("batches from an epoch after the sender's".into()));
    }
    if req.log_start > req.prev_offset {
        return Err(PeerError::Invalid(format!(
            "append from {} below the leader's log start {}",
            req.prev_offset, req.log_start
        )));
    }
    Ok(PeerMessage::Append {
        epoch: req.epoch,
        leader: req.leader,
        prev_offset: req.prev_offset,
        prev_epoch: req.prev_epoch,
        end_offset: req.end_offset,
        epochs,
        leader_hw: req.leader_hw,
        log_start: req.log_start,
    })
}

/// Decodes a follower's reply.
pub fn decode_reply(r: &AppendReply) -> Result<PeerMessage, PeerError> {
    Ok(match r.kind {
        REPLY_ACK => PeerMessage::Ack { epoch: r.epoch, from: r.from, durable_match: r.durable_match },
        REPLY_MISMATCH => {
            let mut history = EpochHistory::default();
            for (e, s) in from_wire(&r.history)? {
                history.observe(e, s);
            }
            if history.entries().last().is_some_and(|&(_, s)| s >= r.log_end) {
                return Err(PeerError::Invalid("epoch history beyond the log end".into()));
            }
            PeerMessage::Mismatch { epoch: r.epoch, from: r.from, log_end: r.log_end, history }
        }
        REPLY_STALE_EPOCH => PeerMessage::StaleEpoch { epoch: r.epoch, from: r.from },
        other => return Err(PeerError::Invalid(format!("unknown reply kind {other}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{decode, encode};
    use proptest::prelude::*;

    #[test]
    fn replication_messages_round_trip_through_the_wire() {
        let mut history = EpochHistory::default();
        history.observe(1, 0);
        history.observe(3, 10);
        let messages = vec![
            PeerMessage::Append {
                epoch: 3,
                leader: 2,
                prev_offset: 10,
                prev_epoch: Some(1),
                end_offset: 14,
                epochs: vec![(1, 0), (3, 10)],
                leader_hw: 9,
                log_start: 4,
            },
            PeerMessage::Ack { epoch: 3, from: 1, durable_match: 12 },
            PeerMessage::Mismatch { epoch: 3, from: 1, log_end: 12, history },
            PeerMessage::StaleEpoch { epoch: 4, from: 1 },
        ];
        for m in messages {
            let back = match encode_peer("t", 9, 0, &m) {
                WirePeer::Append(req) => {
                    let bytes = encode(&req);
                    let req: AppendRequest = decode(&bytes).unwrap();
                    decode_append(&req, 100).unwrap()
                }
                WirePeer::Reply(r) => decode_reply(&decode(&encode(&r)).unwrap()).unwrap(),
            };
            assert_eq!(back, m);
        }
    }

    #[test]
    fn foreign_unknown_and_misaddressed_nodes_are_refused() {
        let hello = PeerHello { cluster_id: "a".into(), node_id: 2, to: 1, nonce: [7; 32] };
        assert_eq!(check_hello(&hello, "a", &[1, 2, 3], 1), Ok(2));
        assert!(matches!(check_hello(&hello, "b", &[1, 2, 3], 1), Err(PeerError::WrongCluster { .. })));
        assert_eq!(check_hello(&hello, "a", &[1, 3], 1), Err(PeerError::UnknownNode(2)));
        assert!(matches!(check_hello(&hello, "a", &[1, 2, 3], 3), Err(PeerError::Auth(AuthError::NotForMe { .. }))));
        let from_me = PeerHello { to: 2, ..hello };
        assert!(matches!(check_hello(&from_me, "a", &[1, 2, 3], 2), Err(PeerError::Auth(AuthError::FromMyself(2)))));
    }

    #[test]
    fn malformed_appends_are_refused() {
        let ok = AppendRequest {
            topic: "t".into(),
            topic_id: 1,
            partition: 0,
            epoch: 3,
            leader: 1,
            prev_offset: 5,
            prev_epoch: Some(2),
            end_offset: 9,
            epochs: vec![EpochStart { epoch: 2, start_offset: 0 }, EpochStart { epoch: 3, start_offset: 7 }],
            leader_hw: 5,
            log_start: 5,
        };
        assert!(decode_append(&ok, 10).is_ok());
        let below_log_start = AppendRequest { log_start: 6, ..ok.clone() };
        assert!(decode_append(&below_log_start, 10).is_err());
        let reversed = AppendRequest { end_offset: 4, ..ok.clone() };
        assert!(decode_append(&reversed, 10).is_err());
        let future_epoch = AppendRequest { epochs: vec![EpochStart { epoch: 9, start_offset: 0 }], ..ok.clone() };
        assert!(decode_append(&future_epoch, 10).is_err());
        let unordered = AppendRequest {
            epochs: vec![EpochStart { epoch: 3, start_offset: 7 }, EpochStart { epoch: 2, start_offset: 0 }],
            ..ok.clone()
        };
        assert!(decode_append(&unordered, 10).is_err());
        assert!(decode_append(&ok, 0).is_err(), "a range without bytes");
    }

    proptest! {
        #[test]
        fn garbage_peer_frames_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let mut aligned = crate::protocol::BodyBuf::new();
            aligned.extend_from_slice(&bytes);
            if let Ok(req) = decode::<AppendRequest>(&aligned) {
                let _ = decode_append(&req, bytes.len());
            }
            if let Ok(r) = decode::<AppendReply>(&aligned) {
                let _ = decode_reply(&r);
            }
            let _ = decode::<PeerHello>(&aligned);
            let _ = decode::<PeerChallenge>(&aligned);
            let _ = decode::<PeerProof>(&aligned);
        }
    }
}
