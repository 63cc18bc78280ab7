//! The shard mesh: typed messages between shards over glommio's bounded channels, with
//! request/reply correlation.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use futures_channel::oneshot;
use glommio::channels::channel_mesh::Senders;

/// The receiving end of one shard's channel from another.
pub type MeshReceiver<T> = glommio::channels::shared_channel::ConnectedReceiver<T>;

use crate::broker::TopicConfig;
use crate::protocol::messages::PartitionStatus;
use crate::protocol::{Frame, OutFrame};

/// What one shard asks another.
pub enum MeshRequest {
    /// A client request for a partition or group the receiver owns.
    Client(Frame),
    /// A topic was added to the catalog: update the copy, open owned partitions.
    TopicCreated { name: String, config: TopicConfig },
    /// A topic was removed from the catalog: update the copy, close and delete partitions.
    TopicDeleted { name: String },
    /// A single node's users or ACLs changed: update the catalog's copy.
    AccessChanged {
        users: std::collections::BTreeMap<String, crate::protocol::scram::Credential>,
        acls: std::collections::BTreeSet<crate::protocol::acl::Acl>,
    },
    /// Report the status of the owned partitions of a topic.
    Status { topic: String },
}

/// The answer to a [`MeshRequest`].
pub enum MeshReply {
    Client(OutFrame),
    Done(Result<(), String>),
    Status(Vec<PartitionStatus>),
}

pub enum MeshMsg {
    Request { id: u64, from: usize, request: MeshRequest },
    Reply { id: u64, reply: MeshReply },
}

/// This shard's end of the mesh.
pub struct Mesh {
    senders: Senders<MeshMsg>,
    pending: RefCell<HashMap<u64, oneshot::Sender<MeshReply>>>,
    next_id: Cell<u64>,
}

impl Mesh {
    pub fn new(senders: Senders<MeshMsg>) -> Self {
        Mesh { senders, pending: RefCell::new(HashMap::new()), next_id: Cell::new(1) }
    }

    pub fn peer_id(&self) -> usize {
        self.senders.peer_id()
    }

    pub fn peers(&self) -> usize {
        self.senders.nr_consumers()
    }

    /// Sends a request and returns a future of its reply. The send itself is awaited here
    /// (in order), so requests from one task reach the peer in the order they were made.
    pub async fn send(&self, to: usize, request: MeshRequest) -> oneshot::Receiver<MeshReply> {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(id, tx);
        let msg = MeshMsg::Request { id, from: self.peer_id(), request };
        if self.senders.send_to(to, msg).await.is_err() {
            // The peer is gone (shutting down): the receiver sees a cancelled reply.
            self.pending.borrow_mut().remove(&id);
        }
        rx
    }

    /// Sends a reply to a request that came from `to`.
    pub async fn reply(&self, to: usize, id: u64, reply: MeshReply) {
        let _ = self.senders.send_to(to, MeshMsg::Reply { id, reply }).await;
    }

    /// Delivers a reply to whoever waits for it.
    pub fn deliver(&self, id: u64, reply: MeshReply) {
        if let Some(tx) = self.pending.borrow_mut().remove(&id) {
            let _ = tx.send(reply);
        }
    }
}
