//! What the connection's reader learns of a request from one validated look at its
//! archive: the partition or group it addresses, which decides both the owner shard and
//! the ACL resource, and the most a fetch may answer. One `access` per request on the
//! reader, whatever `[auth]` says (before, routing, the ACL check and the answer budget
//! each validated the archive again). The reader also decides here, once, where the
//! request goes: a shard of this node, or (in the modes that forward) another node.

use crate::protocol::messages::{
    ApiKind, CommitOffsetRequest, FetchOffsetRequest, FetchRequest, ListOffsetsRequest, ProduceRequest,
};
use crate::protocol::peer::{AppendRequest, PeerKind};
use crate::protocol::{access, Frame};
use crate::replication::NodeId;
use crate::shard::{owner_of_group, owner_of_partition, Shard};

/// Where the reader sends a request.
#[derive(Debug, PartialEq)]
pub enum Route {
    /// A shard of this node (this one, or its owner over the mesh).
    Shard(usize),
    /// Another node, as is (multi-master and forwarding modes): its answer goes back
    /// unchanged.
    Node(NodeId),
}

/// What a request addresses, as far as placement and authorization need to know.
#[derive(Debug, PartialEq)]
pub enum Subject<'a> {
    /// A produce, fetch, list-offsets or follower append: one partition.
    Partition { topic: &'a str, partition: u32 },
    /// An offset commit or fetch: a group's offset of a topic.
    GroupOffset { group: &'a str, topic: &'a str },
    /// A request that changes cluster-wide state (topics, producer ids, users, ACLs):
    /// shard 0 serializes them.
    Serialized,
    /// Anything else, and a request whose archive does not validate (its handler answers
    /// with the error): served where it arrived.
    Here,
}

/// The reader's one look at a request.
#[derive(Debug)]
pub struct Placement<'a> {
    pub api: Option<ApiKind>,
    pub subject: Subject<'a>,
    /// A fetch's `max_bytes`.
    fetch_max_bytes: Option<u32>,
}

impl<'a> Placement<'a> {
    pub fn of(frame: &'a Frame) -> Placement<'a> {
        let api = ApiKind::from_u16(frame.header.kind);
        let a = frame.archive();
        let mut fetch_max_bytes = None;
        let subject = match api {
            Some(ApiKind::Produce) => {
                access::<ProduceRequest>(a).ok().map(|r| partition(&r.topic, r.partition.to_native()))
            }
            Some(ApiKind::Fetch) => access::<FetchRequest>(a).ok().map(|r| {
                fetch_max_bytes = Some(r.max_bytes.to_native());
                partition(&r.topic, r.partition.to_native())
            }),
            Some(ApiKind::ListOffsets) => {
                access::<ListOffsetsRequest>(a).ok().map(|r| partition(&r.topic, r.partition.to_native()))
            }
            Some(ApiKind::CommitOffset) => access::<CommitOffsetRequest>(a)
                .ok()
                .map(|r| Subject::GroupOffset { group: r.group.as_str(), topic: r.topic.as_str() }),
            Some(ApiKind::FetchOffset) => access::<FetchOffsetRequest>(a)
                .ok()
                .map(|r| Subject::GroupOffset { group: r.group.as_str(), topic: r.topic.as_str() }),
            Some(
                ApiKind::CreateTopic
                | ApiKind::DeleteTopic
                | ApiKind::InitProducer
                | ApiKind::UpsertUser
                | ApiKind::DeleteUser
                | ApiKind::CreateAcl
                | ApiKind::DeleteAcl,
            ) => Some(Subject::Serialized),
            None if frame.header.kind == PeerKind::Append as u16 => {
                access::<AppendRequest>(a).ok().map(|r| partition(&r.topic, r.partition.to_native()))
            }
            _ => None,
        };
        Placement { api, subject: subject.unwrap_or(Subject::Here), fetch_max_bytes }
    }

    /// The shard that must handle the request, of `shards`, read on shard `here`.
    pub fn owner(&self, here: usize, shards: usize) -> usize {
        match self.subject {
            Subject::Partition { topic, partition } => owner_of_partition(topic, partition, shards),
            Subject::GroupOffset { group, .. } => owner_of_group(group, shards),
            Subject::Serialized => 0,
            Subject::Here => here,
        }
    }

    /// Where the request goes, read on `shard`: to another node when the mode forwards, a
    /// client (not a node: one hop) sent it, and this node's metadata says the partition's
    /// leader (for a produce) or every replica (for a read) is elsewhere; otherwise to the
    /// owner shard.
    pub fn route(&self, shard: &Shard, from_node: Option<NodeId>) -> Route {
        let to_owner = Route::Shard(self.owner(shard.id, shard.shards));
        let (Some(c), Subject::Partition { topic, partition }, None) = (&shard.cluster, &self.subject, from_node)
        else {
            return to_owner;
        };
        let need_leader = match self.api {
            Some(ApiKind::Produce) => true,
            Some(ApiKind::Fetch | ApiKind::ListOffsets) => false,
            _ => return to_owner,
        };
        if !c.control.settings.mode.forwards() {
            return to_owner;
        }
        let meta = c.meta.borrow();
        let Some(p) = meta.partition(topic, *partition) else { return to_owner };
        match forward_target(c.node_id, need_leader, p.leader, &p.replicas) {
            Some(node) => Route::Node(node),
            None => to_owner,
        }
    }

    /// Bytes of the request's answer, at most: what it reserves of its connection's answer
    /// budget until the answer is written. A fetch answers up to its `max_bytes`; other
    /// answers are small.
    pub fn answer_reservation(&self) -> u64 {
        const SMALL_ANSWER_BYTES: u64 = 16 * 1024;
        self.fetch_max_bytes
            .map_or(SMALL_ANSWER_BYTES, |max| u64::from(max.min(crate::limits::MAX_FETCH_BYTES)) + SMALL_ANSWER_BYTES)
    }
}

/// The node a request for a partition led by `leader` and held by `replicas` goes to, read
/// on node `here`; None when `here` serves it. A read is served by any replica; without a
/// leader (an election, or the only replica is down) the first replica is asked, so that
/// the client hears which node is missing.
fn forward_target(here: NodeId, need_leader: bool, leader: Option<NodeId>, replicas: &[NodeId]) -> Option<NodeId> {
    if !need_leader && replicas.contains(&here) {
        return None;
    }
    let target = leader.or(replicas.first().copied())?;
    (target != here).then_some(target)
}

fn partition(topic: &str, partition: u32) -> Subject<'_> {
    Subject::Partition { topic, partition }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::FRAME_HEADER_BYTES;
    use crate::protocol::frame::{FrameHeader, OutFrame};
    use crate::protocol::BodyBuf;

    /// The frame a client would send: `archive` as the body, no payload.
    fn frame(kind: ApiKind, archive: &[u8]) -> Frame {
        let mut a = BodyBuf::new();
        a.extend_from_slice(archive);
        let mut wire = Vec::new();
        OutFrame::new(kind as u16, 0, 1, a, Vec::new()).write_to(&mut wire);
        let header = FrameHeader::decode(wire[..FRAME_HEADER_BYTES].try_into().unwrap(), 1 << 20).unwrap();
        let mut body = BodyBuf::new();
        body.extend_from_slice(&wire[FRAME_HEADER_BYTES..]);
        Frame::from_parts(header, body).unwrap()
    }

    #[test]
    fn a_partition_request_goes_to_its_partitions_shard_and_names_its_topic() {
        let produce = crate::protocol::encode(&ProduceRequest {
            topic: "orders".into(),
            partition: 5,
            acks: 1,
            timeout_ms: 1000,
        });
        let f = frame(ApiKind::Produce, &produce);
        let p = Placement::of(&f);
        assert_eq!(p.subject, Subject::Partition { topic: "orders", partition: 5 });
        assert_eq!(p.owner(1, 4), owner_of_partition("orders", 5, 4));
        assert_eq!(p.answer_reservation(), 16 * 1024);

        let fetch = crate::protocol::encode(&FetchRequest {
            topic: "orders".into(),
            partition: 5,
            offset: 0,
            max_bytes: u32::MAX,
            max_wait_ms: 0,
        });
        let f = frame(ApiKind::Fetch, &fetch);
        let p = Placement::of(&f);
        assert_eq!(p.owner(1, 4), owner_of_partition("orders", 5, 4));
        // A client cannot reserve more than the fetch limit.
        assert_eq!(p.answer_reservation(), u64::from(crate::limits::MAX_FETCH_BYTES) + 16 * 1024);
    }

    #[test]
    fn a_produce_goes_to_the_leader_and_a_read_to_any_replica() {
        // Node 2 leads; node 1 holds a replica, node 4 none.
        assert_eq!(forward_target(2, true, Some(2), &[1, 2, 3]), None, "the leader serves a produce");
        assert_eq!(forward_target(1, true, Some(2), &[1, 2, 3]), Some(2), "a follower forwards a produce");
        assert_eq!(forward_target(1, false, Some(2), &[1, 2, 3]), None, "a follower serves a read");
        assert_eq!(forward_target(4, false, Some(2), &[1, 2, 3]), Some(2), "a node without a replica forwards a read");
        // Without a leader, the first replica is asked (and says who is missing).
        assert_eq!(forward_target(4, true, None, &[3, 1]), Some(3));
        assert_eq!(forward_target(3, true, None, &[3, 1]), None);
        assert_eq!(forward_target(4, true, None, &[]), None);
    }

    #[test]
    fn a_request_that_does_not_validate_stays_where_it_arrived() {
        let f = frame(ApiKind::Produce, &[1, 2, 3]);
        let p = Placement::of(&f);
        assert_eq!(p.subject, Subject::Here);
        assert_eq!(p.owner(3, 4), 3);
        let f = frame(ApiKind::CreateTopic, &[]);
        assert_eq!(Placement::of(&f).owner(3, 4), 0, "cluster-wide changes are serialized on shard 0");
    }
}
