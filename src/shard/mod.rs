//! Shards: one glommio executor per core, each owning a slice of the partitions, talking to
//! each other only over a mesh of bounded lock-free channels.
//!
//! Ownership is a pure function ([`owner_of_partition`], [`owner_of_group`]) of names and the
//! shard count, so every shard routes a request without asking anyone. A request that
//! arrives on another shard travels to the owner as the raw frame and its answer travels
//! back as an encoded frame: nothing is decoded twice or re-encoded.

pub mod cluster;
pub mod data_link;
pub mod forward;
pub mod identity;
pub mod mesh;
pub mod runtime;
pub mod shared_storage;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use crate::broker::offsets::OffsetStore;
use crate::broker::{Catalog, Partition, ServerDisk};
use crate::config::Config;

pub use runtime::{run_broker, BrokerError};

/// The shard that owns a partition: stable across restarts for a given shard count.
pub fn owner_of_partition(topic: &str, partition: u32, shards: usize) -> usize {
    let h = crc32c::crc32c_append(crc32c::crc32c(topic.as_bytes()), &partition.to_le_bytes());
    (h as usize) % shards
}

/// The shard that keeps a consumer group's offsets.
pub fn owner_of_group(group: &str, shards: usize) -> usize {
    (crc32c::crc32c(group.as_bytes()) as usize) % shards
}

/// Everything one shard owns. Lives on its executor thread only.
pub struct Shard {
    /// Index of this shard in the mesh.
    pub id: usize,
    pub shards: usize,
    pub config: Rc<Config>,
    pub disk: ServerDisk,
    /// This shard's copy of the topic catalog (shard 0 writes it and tells the others).
    pub catalog: RefCell<Catalog>,
    /// Partitions owned by this shard.
    pub partitions: RefCell<HashMap<(String, u32), Rc<Partition>>>,
    pub offsets: OffsetStore<ServerDisk>,
    pub mesh: mesh::Mesh,
    /// Serializes catalog changes (used on shard 0).
    pub catalog_lock: crate::rt::Semaphore,
    pub shutting_down: Cell<bool>,
    /// Cluster membership of this node (None: a single node).
    pub cluster: Option<cluster::ShardCluster>,
    /// Producer ids (handed out by shard 0).
    pub producer_ids: crate::broker::producer_ids::ProducerIds,
    /// The broker's client connections (shared by its shards).
    pub connections: std::sync::Arc<crate::server::connections::ConnectionRegistry>,
    /// TLS on the client port (None: plain TCP).
    pub tls: Option<std::sync::Arc<crate::net::tls::ServerTls>>,
    /// Per-principal quotas, broker-wide (None: none configured).
    pub quotas: Option<std::sync::Arc<crate::server::quotas::Quotas>>,
    /// Where Kafka clients reach this node (`[kafka]`), when it serves them.
    pub kafka_addr: Option<std::net::SocketAddr>,
}

impl Shard {
    pub fn partition(&self, topic: &str, partition: u32) -> Option<Rc<Partition>> {
        self.partitions.borrow().get(&(topic.to_string(), partition)).cloned()
    }

    /// Opens the partitions of `topic` that this shard owns.
    pub async fn open_topic_partitions(&self, topic: &str, partitions: u32) -> Result<(), String> {
        let name: Rc<str> = Rc::from(topic);
        for p in (0..partitions).filter(|&p| owner_of_partition(topic, p, self.shards) == self.id) {
            if self.partition(topic, p).is_some() {
                continue;
            }
            let dir = crate::broker::catalog::partition_dir(&self.config.data_dir, topic, p);
            let part = Partition::open(
                self.disk.clone(),
                name.clone(),
                p,
                dir,
                self.config.log_config(),
                self.config.storage.flush,
            )
            .await
            .map_err(|e| format!("opening {topic}/{p}: {e}"))?;
            self.partitions.borrow_mut().insert((topic.to_string(), p), part);
        }
        Ok(())
    }

    /// Closes and deletes this shard's partitions of `topic`.
    pub async fn drop_topic_partitions(&self, topic: &str) -> Result<(), String> {
        let owned: Vec<_> = {
            let mut parts = self.partitions.borrow_mut();
            let keys: Vec<_> = parts.keys().filter(|(t, _)| t == topic).cloned().collect();
            keys.into_iter().filter_map(|k| parts.remove(&k)).collect()
        };
        for p in owned {
            p.close().await;
            crate::storage::Disk::remove_dir_all(&self.disk, p.dir()).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
