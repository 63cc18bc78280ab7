//! The replicated metadata: topics, the replica set of every partition, its current epoch
//! and leader. Changed only by applying [`MetaCommand`]s in Raft log order, so every node
//! that applied the same prefix holds the same state. `apply` is pure and deterministic:
//! a command that does not fit the state (a stale epoch, an unknown topic) is refused with
//! the same error on every node.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::ClusterMode;
use crate::replication::{Epoch, NodeId};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMeta {
    /// The replicas, the preferred leader first.
    pub replicas: Vec<NodeId>,
    /// The newest epoch a controller opened (fenced) for this partition.
    pub epoch: Epoch,
    /// The leader appointed in `epoch` (None while an election runs).
    pub leader: Option<NodeId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    /// This incarnation of the topic: a topic deleted and created again gets a new id, so
    /// that a replica of the old one (on a node that was down meanwhile) is never taken for
    /// one of the new. 0: created before ids existed.
    #[serde(default)]
    pub id: u64,
    pub replication_factor: u16,
    pub created_ms: i64,
    pub partitions: Vec<PartitionMeta>,
}

/// One consumer group's committed offsets: topic -> partition -> committed.
pub type GroupOffsets = BTreeMap<String, BTreeMap<u32, CommittedOffset>>;

/// The groups' offsets: a persistent map, so that a copy shares every node but the path to
/// the group that changed (an offset commit costs O(log groups), not a copy of the map).
pub type Groups = rpds::RedBlackTreeMapSync<String, Arc<GroupOffsets>>;

/// The replicated metadata. Every applied entry publishes a copy to the shards, so its big
/// parts are shared and copied only where they change: a copy after an offset commit shares
/// the topics (the shards see `Arc::ptr_eq` and skip their walk of the partitions) and every
/// other group's offsets (see [`Groups`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaState {
    pub topics: Arc<BTreeMap<String, TopicMeta>>,
    /// Consumer-group offsets: group -> topic -> partition -> committed.
    #[serde(default)]
    pub offsets: Groups,
    /// The first producer id not yet handed out (ids are allocated in blocks, cluster-wide;
    /// 0 is "not idempotent" and never allocated).
    #[serde(default)]
    pub next_producer_id: u64,
    /// The id the next topic created gets (from 1).
    #[serde(default)]
    pub next_topic_id: u64,
    /// Nodes stopping (SIGTERM): controllers move their partitions' leadership to in-sync
    /// followers and never give it back to them until they start again.
    #[serde(default)]
    pub draining: std::collections::BTreeSet<NodeId>,
    /// Users and their SCRAM credentials (never passwords).
    #[serde(default)]
    pub users: Arc<BTreeMap<String, crate::protocol::scram::Credential>>,
    /// Access control lists (enforced with `[auth] enabled`).
    #[serde(default)]
    pub acls: Arc<std::collections::BTreeSet<crate::protocol::acl::Acl>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOffset {
    pub offset: u64,
    pub metadata: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    CreateTopic {
        name: String,
        replication_factor: u16,
        created_ms: i64,
        replicas: Vec<Vec<NodeId>>,
    },
    DeleteTopic {
        name: String,
    },
    /// A controller opens `epoch` for a partition before fencing its replicas: epochs are
    /// unique because only a command that raises the epoch is accepted.
    OpenEpoch {
        topic: String,
        partition: u32,
        epoch: Epoch,
    },
    /// The controller appointed `leader` in `epoch` (the epoch it opened).
    SetLeader {
        topic: String,
        partition: u32,
        epoch: Epoch,
        leader: NodeId,
    },
    /// Reserves `count` producer ids for the node that asks; the reply carries the first.
    AllocateProducerIds {
        count: u64,
    },
    /// A node begins a controlled shutdown (`draining: true`) or has started again.
    SetDraining {
        node: NodeId,
        draining: bool,
    },
    /// Creates a user or replaces its credential.
    PutUser {
        name: String,
        credential: crate::protocol::scram::Credential,
    },
    RemoveUser {
        name: String,
    },
    /// Adds an ACL (a no-op when it exists).
    PutAcl {
        acl: crate::protocol::acl::Acl,
    },
    RemoveAcl {
        acl: crate::protocol::acl::Acl,
    },
    /// A consumer group's next offset for a partition.
    CommitOffset {
        group: String,
        topic: String,
        partition: u32,
        offset: u64,
        metadata: String,
        /// The committing node's `max_consumer_groups`: a commit that would create a group
        /// beyond it is refused (0, in entries written before the limit: no limit).
        #[serde(default)]
        max_groups: u64,
    },
}

/// Why a command was refused (the same on every node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MetaError {
    #[error("topic {0} already exists")]
    TopicExists(String),
    #[error("no such topic: {0}")]
    UnknownTopic(String),
    #[error("no such partition: {0}/{1}")]
    UnknownPartition(String, u32),
    #[error("epoch {got} is not newer than {current} for {topic}/{partition}")]
    StaleEpoch { topic: String, partition: u32, got: Epoch, current: Epoch },
    #[error("the cluster holds {0} consumer groups (max_consumer_groups); a new group cannot commit")]
    TooManyGroups(u64),
    #[error("no such user: {0}")]
    UnknownUser(String),
    #[error("no such ACL: {0}")]
    UnknownAcl(crate::protocol::acl::Acl),
    #[error("{0}")]
    Invalid(String),
}

/// Largest block of producer ids one command may reserve.
const MAX_PRODUCER_ID_BLOCK: u64 = 1 << 20;

impl MetaState {
    /// Applies a command; returns what it allocated, if it allocates (the first producer id
    /// of a block).
    pub fn apply(&mut self, cmd: &MetaCommand) -> Result<Option<u64>, MetaError> {
        self.apply_change(cmd)?;
        match cmd {
            MetaCommand::AllocateProducerIds { count } => {
                if *count == 0 || *count > MAX_PRODUCER_ID_BLOCK {
                    return Err(MetaError::Invalid(format!("cannot reserve {count} producer ids")));
                }
                let first = self.next_producer_id.max(1);
                self.next_producer_id = first + count;
                Ok(Some(first))
            }
            _ => Ok(None),
        }
    }

    fn apply_change(&mut self, cmd: &MetaCommand) -> Result<(), MetaError> {
        match cmd {
            MetaCommand::AllocateProducerIds { .. } => Ok(()),
            MetaCommand::PutUser { name, credential } => {
                crate::protocol::scram::validate_user_name(name).map_err(MetaError::Invalid)?;
                Arc::make_mut(&mut self.users).insert(name.clone(), credential.clone());
                Ok(())
            }
            MetaCommand::RemoveUser { name } => match Arc::make_mut(&mut self.users).remove(name) {
                Some(_) => Ok(()),
                None => Err(MetaError::UnknownUser(name.clone())),
            },
            MetaCommand::PutAcl { acl } => {
                acl.validate().map_err(MetaError::Invalid)?;
                if !self.acls.contains(acl) && self.acls.len() >= crate::protocol::acl::MAX_ACLS {
                    return Err(MetaError::Invalid(format!(
                        "the cluster holds {} ACLs, the most it may",
                        crate::protocol::acl::MAX_ACLS
                    )));
                }
                Arc::make_mut(&mut self.acls).insert(acl.clone());
                Ok(())
            }
            MetaCommand::RemoveAcl { acl } => match Arc::make_mut(&mut self.acls).remove(acl) {
                true => Ok(()),
                false => Err(MetaError::UnknownAcl(acl.clone())),
            },
            MetaCommand::SetDraining { node, draining } => {
                if *draining {
                    self.draining.insert(*node);
                } else {
                    self.draining.remove(node);
                }
                Ok(())
            }
            MetaCommand::CreateTopic { name, replication_factor, created_ms, replicas } => {
                if self.topics.contains_key(name) {
                    return Err(MetaError::TopicExists(name.clone()));
                }
                if replicas.is_empty() || replicas.iter().any(|r| r.len() != usize::from(*replication_factor)) {
                    return Err(MetaError::Invalid("replica sets do not match the replication factor".into()));
                }
                let partitions =
                    replicas.iter().map(|r| PartitionMeta { replicas: r.clone(), epoch: 0, leader: None }).collect();
                let id = self.next_topic_id.max(1);
                self.next_topic_id = id + 1;
                Arc::make_mut(&mut self.topics).insert(
                    name.clone(),
                    TopicMeta { id, replication_factor: *replication_factor, created_ms: *created_ms, partitions },
                );
                Ok(())
            }
            MetaCommand::DeleteTopic { name } => {
                Arc::make_mut(&mut self.topics).remove(name).ok_or_else(|| MetaError::UnknownTopic(name.clone()))?;
                let holding: Vec<String> =
                    self.offsets.iter().filter(|(_, g)| g.contains_key(name)).map(|(k, _)| k.clone()).collect();
                for group in holding {
                    if let Some(g) = self.offsets.get_mut(&group) {
                        Arc::make_mut(g).remove(name);
                    }
                }
                Ok(())
            }
            MetaCommand::CommitOffset { group, topic, partition, offset, metadata, max_groups } => {
                // (Checked without `partition_mut`: that would copy the shared topics.)
                if self.partition(topic, *partition).is_none() {
                    return Err(match self.topics.contains_key(topic) {
                        true => MetaError::UnknownPartition(topic.clone(), *partition),
                        false => MetaError::UnknownTopic(topic.clone()),
                    });
                }
                if !self.offsets.contains_key(group) {
                    let held = self.offsets.size() as u64;
                    if *max_groups > 0 && held >= *max_groups {
                        return Err(MetaError::TooManyGroups(held));
                    }
                    self.offsets.insert_mut(group.clone(), Arc::default());
                }
                let group = self.offsets.get_mut(group).expect("inserted above");
                Arc::make_mut(group)
                    .entry(topic.clone())
                    .or_default()
                    .insert(*partition, CommittedOffset { offset: *offset, metadata: metadata.clone() });
                Ok(())
            }
            MetaCommand::OpenEpoch { topic, partition, epoch } => {
                let p = self.partition_mut(topic, *partition)?;
                if *epoch <= p.epoch {
                    return Err(MetaError::StaleEpoch {
                        topic: topic.clone(),
                        partition: *partition,
                        got: *epoch,
                        current: p.epoch,
                    });
                }
                p.epoch = *epoch;
                p.leader = None;
                Ok(())
            }
            MetaCommand::SetLeader { topic, partition, epoch, leader } => {
                let p = self.partition_mut(topic, *partition)?;
                if *epoch != p.epoch || !p.replicas.contains(leader) {
                    return Err(MetaError::StaleEpoch {
                        topic: topic.clone(),
                        partition: *partition,
                        got: *epoch,
                        current: p.epoch,
                    });
                }
                p.leader = Some(*leader);
                Ok(())
            }
        }
    }

    fn partition_mut(&mut self, topic: &str, partition: u32) -> Result<&mut PartitionMeta, MetaError> {
        let topics = Arc::make_mut(&mut self.topics);
        let t = topics.get_mut(topic).ok_or_else(|| MetaError::UnknownTopic(topic.to_string()))?;
        t.partitions
            .get_mut(partition as usize)
            .ok_or_else(|| MetaError::UnknownPartition(topic.to_string(), partition))
    }

    pub fn partition(&self, topic: &str, partition: u32) -> Option<&PartitionMeta> {
        self.topics.get(topic)?.partitions.get(partition as usize)
    }

    pub fn committed_offset(&self, group: &str, topic: &str, partition: u32) -> Option<&CommittedOffset> {
        self.offsets.get(group)?.get(topic)?.get(&partition)
    }
}

/// Chooses the replica set of every partition of a new topic; the preferred leader first.
///
/// - master-slave: the master leads every partition; the other replicas rotate over the
///   remaining nodes.
/// - hybrid: partition `p` starts at node `p mod n` and takes the next ones, so leadership
///   and copies spread evenly.
pub fn place_replicas(
    mode: ClusterMode,
    nodes: &[NodeId],
    master: NodeId,
    partitions: u32,
    replication_factor: u16,
) -> Result<Vec<Vec<NodeId>>, MetaError> {
    let mut nodes = nodes.to_vec();
    nodes.sort_unstable();
    let rf = usize::from(replication_factor);
    if rf == 0 || rf > nodes.len() {
        return Err(MetaError::Invalid(format!(
            "replication factor must be between 1 and the number of nodes ({})",
            nodes.len()
        )));
    }
    let placement = match mode {
        ClusterMode::MasterSlave => {
            let others: Vec<NodeId> = nodes.iter().copied().filter(|&n| n != master).collect();
            (0..partitions as usize)
                .map(|p| {
                    let mut set = vec![master];
                    set.extend((0..rf - 1).map(|i| others[(p + i) % others.len()]));
                    set
                })
                .collect()
        }
        ClusterMode::SharedStorage => {
            return Err(MetaError::Invalid("shared-storage nodes keep no replicated metadata".into()));
        }
        ClusterMode::Forwarding if rf != 1 => {
            return Err(MetaError::Invalid("forwarding mode keeps one copy: replication factor 1".into()));
        }
        ClusterMode::Hybrid | ClusterMode::MultiMaster | ClusterMode::Forwarding => {
            (0..partitions as usize).map(|p| (0..rf).map(|i| nodes[(p + i) % nodes.len()]).collect()).collect()
        }
    };
    Ok(placement)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(state: &mut MetaState, name: &str, replicas: Vec<Vec<NodeId>>) -> Result<(), MetaError> {
        let rf = replicas[0].len() as u16;
        state
            .apply(&MetaCommand::CreateTopic { name: name.into(), replication_factor: rf, created_ms: 1, replicas })
            .map(|_| ())
    }

    /// A commit of `group`'s offset for t/0.
    fn commit_to_t0(group: &str, offset: u64, max_groups: u64) -> MetaCommand {
        MetaCommand::CommitOffset {
            group: group.into(),
            topic: "t".into(),
            partition: 0,
            offset,
            metadata: String::new(),
            max_groups,
        }
    }

    /// Issue 11 part 3: an offset commit's cost is proportional to the change. The copy that
    /// was published before it (what the shards hold) keeps sharing the topics and every other
    /// group's offsets with the state after it; only the committing group's map is copied.
    #[test]
    fn an_offset_commit_copies_only_its_group() {
        let mut s = MetaState::default();
        create(&mut s, "t", vec![vec![1, 2, 3]; 4]).unwrap();
        let commit = |g: &str, o| commit_to_t0(g, o, 0);
        for g in 0..100 {
            s.apply(&commit(&format!("g{g}"), 1)).unwrap();
        }
        let published = s.clone();
        s.apply(&commit("g7", 2)).unwrap();
        assert!(Arc::ptr_eq(&published.topics, &s.topics), "the topics are shared, not copied");
        assert!(Arc::ptr_eq(&published.offsets["g8"], &s.offsets["g8"]), "other groups are shared");
        assert!(!Arc::ptr_eq(&published.offsets["g7"], &s.offsets["g7"]));
        assert_eq!(published.committed_offset("g7", "t", 0).map(|c| c.offset), Some(1), "the old copy is intact");
        assert_eq!(s.committed_offset("g7", "t", 0).map(|c| c.offset), Some(2));
        // A leader change copies the topics (the shards then walk them), not the offsets.
        let published = s.clone();
        s.apply(&MetaCommand::OpenEpoch { topic: "t".into(), partition: 0, epoch: 1 }).unwrap();
        assert!(!Arc::ptr_eq(&published.topics, &s.topics));
        assert!(Arc::ptr_eq(&published.offsets["g8"], &s.offsets["g8"]));
    }

    /// A commit that would create a group beyond the committing node's limit is refused on
    /// every node alike; groups that already committed keep committing.
    #[test]
    fn a_commit_beyond_the_group_limit_is_refused() {
        let mut s = MetaState::default();
        create(&mut s, "t", vec![vec![1]]).unwrap();
        let commit = |g: &str, o| commit_to_t0(g, o, 2);
        s.apply(&commit("a", 1)).unwrap();
        s.apply(&commit("b", 1)).unwrap();
        assert!(matches!(s.apply(&commit("c", 1)), Err(MetaError::TooManyGroups(2))));
        assert_eq!(s.committed_offset("c", "t", 0), None);
        s.apply(&commit("a", 2)).unwrap();
        assert_eq!(s.committed_offset("a", "t", 0).map(|c| c.offset), Some(2));
    }

    /// The persistent group map is stored (Raft snapshots) as the JSON map it replaced, so
    /// snapshots written before it still load.
    #[test]
    fn the_group_offsets_keep_their_stored_form() {
        let mut s = MetaState::default();
        create(&mut s, "t", vec![vec![1]]).unwrap();
        let commit = MetaCommand::CommitOffset {
            group: "g".into(),
            topic: "t".into(),
            partition: 0,
            offset: 7,
            metadata: "m".into(),
            max_groups: 0,
        };
        s.apply(&commit).unwrap();
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["offsets"]["g"]["t"]["0"], serde_json::json!({"offset": 7, "metadata": "m"}));
        let back: MetaState = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn producer_id_blocks_never_overlap_and_never_start_at_zero() {
        let mut s = MetaState::default();
        let first = s.apply(&MetaCommand::AllocateProducerIds { count: 1024 }).unwrap().unwrap();
        let second = s.apply(&MetaCommand::AllocateProducerIds { count: 10 }).unwrap().unwrap();
        assert_eq!((first, second), (1, 1025));
        assert!(s.apply(&MetaCommand::AllocateProducerIds { count: 0 }).is_err());
        assert_eq!(s.apply(&MetaCommand::AllocateProducerIds { count: 1 }).unwrap(), Some(1035));
    }

    #[test]
    fn epochs_only_grow_and_leaders_belong_to_the_open_epoch() {
        let mut s = MetaState::default();
        create(&mut s, "t", vec![vec![1, 2, 3]]).unwrap();
        assert!(matches!(create(&mut s, "t", vec![vec![1, 2, 3]]), Err(MetaError::TopicExists(_))));
        let open = |e| MetaCommand::OpenEpoch { topic: "t".into(), partition: 0, epoch: e };
        let lead = |e, l| MetaCommand::SetLeader { topic: "t".into(), partition: 0, epoch: e, leader: l };
        s.apply(&open(1)).unwrap();
        assert!(s.apply(&open(1)).is_err(), "an epoch is opened once");
        s.apply(&lead(1, 2)).unwrap();
        assert_eq!(s.partition("t", 0).unwrap().leader, Some(2));
        s.apply(&open(3)).unwrap();
        assert_eq!(s.partition("t", 0).unwrap().leader, None, "opening an epoch clears the leader");
        assert!(s.apply(&lead(1, 2)).is_err(), "an appointment of an older epoch is refused");
        assert!(s.apply(&lead(3, 9)).is_err(), "the leader must be a replica");
        assert!(s.apply(&MetaCommand::OpenEpoch { topic: "t".into(), partition: 1, epoch: 9 }).is_err());
        let commit = |p, o| MetaCommand::CommitOffset {
            group: "g".into(),
            topic: "t".into(),
            partition: p,
            offset: o,
            metadata: String::new(),
            max_groups: 0,
        };
        s.apply(&commit(0, 42)).unwrap();
        assert!(s.apply(&commit(1, 1)).is_err(), "no such partition");
        assert_eq!(s.committed_offset("g", "t", 0).map(|c| c.offset), Some(42));
        s.apply(&MetaCommand::DeleteTopic { name: "t".into() }).unwrap();
        assert!(s.topics.is_empty());
        assert_eq!(s.committed_offset("g", "t", 0), None, "a deleted topic's offsets go with it");
    }

    #[test]
    fn placement_by_mode() {
        let ms = place_replicas(ClusterMode::MasterSlave, &[3, 1, 2], 2, 4, 3).unwrap();
        assert!(ms.iter().all(|r| r[0] == 2 && r.len() == 3), "{ms:?}");
        assert!(ms.iter().all(|r| {
            let mut s = r.clone();
            s.sort();
            s == vec![1, 2, 3]
        }));
        let hy = place_replicas(ClusterMode::Hybrid, &[1, 2, 3], 1, 6, 2).unwrap();
        let leaders: Vec<_> = hy.iter().map(|r| r[0]).collect();
        assert_eq!(leaders, vec![1, 2, 3, 1, 2, 3]);
        assert!(hy.iter().all(|r| r[0] != r[1]));
        assert!(place_replicas(ClusterMode::Hybrid, &[1, 2, 3], 1, 1, 4).is_err());
        assert!(place_replicas(ClusterMode::Hybrid, &[1, 2, 3], 1, 1, 0).is_err());
        let fw = place_replicas(ClusterMode::Forwarding, &[1, 2, 3], 1, 3, 1).unwrap();
        assert_eq!(fw, vec![vec![1], vec![2], vec![3]]);
        assert!(place_replicas(ClusterMode::Forwarding, &[1, 2, 3], 1, 3, 2).is_err());
    }
}
