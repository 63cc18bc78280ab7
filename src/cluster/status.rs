//! What `quorra cluster status` shows, as the metadata leader sees it.

use serde::{Deserialize, Serialize};

use crate::replication::{Epoch, NodeId};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: NodeId,
    pub client_addr: String,
    /// Heard from within the election timeout (the metadata leader is always alive).
    pub alive: bool,
    pub metadata_leader: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionReport {
    pub topic: String,
    pub partition: u32,
    pub replicas: Vec<NodeId>,
    pub epoch: Epoch,
    pub leader: Option<NodeId>,
    /// From the leader's last heartbeat (empty until one arrived).
    pub in_sync: Vec<NodeId>,
    pub high_watermark: u64,
    pub log_end: u64,
    /// Per follower: records the leader holds that the follower has not durably matched.
    pub lag: Vec<(NodeId, u64)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub cluster_id: String,
    pub mode: String,
    pub metadata_leader: Option<NodeId>,
    pub nodes: Vec<NodeStatus>,
    pub partitions: Vec<PartitionReport>,
}
