//! How a partition controller's decisions become effects, one driver for production (Raft
//! through openraft, the control links) and the simulator (a simulated metadata log and
//! network): each record is written to the metadata log before anything decided after it
//! is carried out, so an epoch is open before any replica is fenced with it and an
//! appointment is recorded before it is sent.

use std::collections::BTreeMap;

use crate::replication::controller::ControllerAction;
use crate::replication::{ControlMessage, Epoch, NodeId};

/// What the metadata log refused (a metadata leader change, a lost quorum).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the metadata log refused {record}: {reason}")]
pub struct Refused {
    pub record: String,
    pub reason: String,
}

/// A controller's record in the metadata log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// A new epoch is open (epochs are unique: recorded before any replica is fenced).
    Epoch(Epoch),
    /// `leader` leads `epoch` (recorded before it is told).
    Leader { epoch: Epoch, leader: NodeId },
}

/// Where a controller's decisions go.
pub trait ControllerEnv {
    /// Writes `record` to the metadata log; returns once it is committed.
    fn record(&self, record: Record) -> impl std::future::Future<Output = Result<(), Refused>>;
    /// Sends control messages to a replica's node (in order).
    fn send(&self, node: NodeId, messages: Vec<ControlMessage>);
}

/// Carries out a controller's decisions in order: messages decided before a record leave
/// first (grouped per node), then the record is written, then what came after it. A refused
/// record stops there, dropping what came after it: the caller resumes the controller from
/// what the metadata holds.
pub async fn carry_out<E: ControllerEnv>(env: &E, out: Vec<ControllerAction>) -> Result<(), Refused> {
    let mut by_node: BTreeMap<NodeId, Vec<ControlMessage>> = BTreeMap::new();
    for action in out {
        let record = match action {
            ControllerAction::Send(node, msg) => {
                by_node.entry(node).or_default().push(msg);
                continue;
            }
            ControllerAction::RecordEpoch(epoch) => Record::Epoch(epoch),
            ControllerAction::RecordLeader { epoch, leader } => Record::Leader { epoch, leader },
        };
        send_all(env, std::mem::take(&mut by_node));
        env.record(record).await?;
    }
    send_all(env, by_node);
    Ok(())
}

fn send_all<E: ControllerEnv>(env: &E, by_node: BTreeMap<NodeId, Vec<ControlMessage>>) {
    for (node, messages) in by_node {
        env.send(node, messages);
    }
}
