//! Finding the node that serves a partition: in a cluster the leader (for produce) or any
//! replica (for reads, as the caller asks), learnt from metadata and corrected by the
//! not-leader hints and connection failures of later requests. A single broker serves
//! everything on the bootstrap connection.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::str::FromStr;

use super::{Client, ClientError, Connection, Requests};
use crate::protocol::messages::{MetadataRequest, MetadataResponse};
use crate::protocol::{decode, encode, ApiKind};

/// How long a metadata request may take before another node is asked.
const METADATA_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Which replica a consumer reads from. Every replica serves only what is committed (below
/// the high watermark), so all three see the same data; followers may lag a little.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadFrom {
    #[default]
    Leader,
    /// A follower when one is known, else the leader.
    Follower,
    /// Any replica, chosen per partition.
    Any,
}

impl FromStr for ReadFrom {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "leader" => Ok(ReadFrom::Leader),
            "follower" => Ok(ReadFrom::Follower),
            "any" => Ok(ReadFrom::Any),
            other => Err(format!("unknown replica choice {other:?} (expected leader, follower or any)")),
        }
    }
}

#[derive(Default)]
pub(super) struct Routes {
    /// Whether the brokers form a cluster (metadata names real node ids).
    clustered: Option<bool>,
    conns: HashMap<SocketAddr, Rc<Connection>>,
    /// Leader's client address per partition.
    leaders: HashMap<(String, u32), SocketAddr>,
    /// Every replica's client address per partition.
    replicas: HashMap<(String, u32), Vec<SocketAddr>>,
}

pub(super) type SharedRoutes = RefCell<Routes>;

impl Client {
    async fn connection_at(&self, addr: SocketAddr) -> Result<Rc<Connection>, ClientError> {
        if let Some(c) = self.routes.borrow().conns.get(&addr).filter(|c| !c.is_broken()) {
            return Ok(c.clone());
        }
        let c = self.open_connection(addr).await?;
        self.routes.borrow_mut().conns.insert(addr, c.clone());
        Ok(c)
    }

    /// Re-reads where the partitions of `topic` live. A node that does not answer within
    /// a few seconds (dead, cut off, paused) is set aside and the next one asked.
    pub async fn refresh_routes(&self, topic: &str) -> Result<(), ClientError> {
        let mut attempts = self.config.bootstrap.len().max(2);
        let md = loop {
            let conn = self.connection().await?;
            let req = encode(&MetadataRequest { topics: vec![topic.to_string()] });
            let answer = crate::rt::timeout(METADATA_TIMEOUT, conn.request(ApiKind::Metadata, req, Vec::new()))
                .await
                .unwrap_or_else(|| Err(ClientError::Timeout(format!("no metadata from {}", conn.addr()))));
            match answer {
                Ok(frame) => break decode::<MetadataResponse>(frame.archive())?,
                Err(e) if is_retriable(&e) && attempts > 1 => {
                    attempts -= 1;
                    self.avoid_for_metadata(conn.addr(), matches!(e, ClientError::Timeout(_)));
                }
                Err(e) => return Err(e),
            }
        };
        let mut routes = self.routes.borrow_mut();
        routes.clustered = Some(md.node_id != 0);
        let addr_of: HashMap<u32, SocketAddr> =
            md.nodes.iter().filter_map(|n| n.address.parse().ok().map(|a| (n.node_id, a))).collect();
        for t in md.topics {
            for p in t.partitions {
                let key = (t.name.clone(), p.partition);
                match addr_of.get(&p.leader) {
                    Some(&a) if p.leader != 0 => {
                        routes.leaders.insert(key.clone(), a);
                    }
                    _ => {
                        routes.leaders.remove(&key);
                    }
                }
                routes.replicas.insert(key, p.replicas.iter().filter_map(|r| addr_of.get(r).copied()).collect());
            }
        }
        Ok(())
    }

    /// The connection to use for a partition.
    pub async fn partition_connection(
        &self,
        topic: &str,
        partition: u32,
        read_from: ReadFrom,
    ) -> Result<Rc<Connection>, ClientError> {
        if !self.config.follow_leaders {
            return self.connection().await;
        }
        if self.routes.borrow().clustered.is_none() {
            self.refresh_routes(topic).await?;
        }
        if self.routes.borrow().clustered == Some(false) {
            return self.connection().await;
        }
        let key = (topic.to_string(), partition);
        let mut addr = self.pick(&key, read_from);
        if addr.is_none() {
            self.refresh_routes(topic).await?;
            addr = self.pick(&key, read_from);
        }
        let addr = addr.ok_or_else(|| ClientError::Server {
            code: crate::protocol::ErrorCode::NotLeader,
            message: format!("{topic}/{partition} has no leader right now"),
            leader_hint: None,
        })?;
        self.connection_at(addr).await
    }

    fn pick(&self, key: &(String, u32), read_from: ReadFrom) -> Option<SocketAddr> {
        let routes = self.routes.borrow();
        let leader = routes.leaders.get(key).copied();
        let replicas = routes.replicas.get(key).cloned().unwrap_or_default();
        match read_from {
            ReadFrom::Leader => leader,
            ReadFrom::Follower => replicas.iter().copied().find(|a| Some(*a) != leader).or(leader),
            ReadFrom::Any => {
                let n = replicas.len().max(1);
                replicas.get(crate::rt::now_ms() as usize % n).copied().or(leader)
            }
        }
    }

    /// A request for a partition failed: forget its route (or take the leader hint).
    pub fn route_failed(&self, topic: &str, partition: u32, error: &ClientError) {
        self.route_failed_at(topic, partition, error, None)
    }

    /// [`Self::route_failed`], knowing which node failed: it is not asked for metadata next.
    pub fn route_failed_at(&self, topic: &str, partition: u32, error: &ClientError, failed: Option<SocketAddr>) {
        if let (Some(addr), None) = (failed, error.code()) {
            // A connection error broke only the connection it happened on (a newer one to the
            // same node may work); a timeout says the node itself stopped answering.
            self.avoid_for_metadata(addr, matches!(error, ClientError::Timeout(_)));
        }
        let mut routes = self.routes.borrow_mut();
        let key = (topic.to_string(), partition);
        let hint = match error {
            ClientError::Server { leader_hint: Some(h), .. } => h.parse().ok(),
            _ => None,
        };
        match hint {
            Some(a) => {
                routes.leaders.insert(key, a);
            }
            None => {
                // The node may be down or cut off, with stale metadata: ask another one.
                if let Some(failed) = routes.leaders.remove(&key) {
                    drop(routes);
                    self.avoid_for_metadata(failed, true);
                    return;
                }
            }
        }
        if error.is_connection_error() {
            routes.conns.retain(|_, c| !c.is_broken());
        }
    }
}

/// Whether a request that failed this way may succeed when sent again (perhaps elsewhere).
pub fn is_retriable(e: &ClientError) -> bool {
    e.is_connection_error() || matches!(e, ClientError::Timeout(_)) || e.code().is_some_and(|c| c.is_retriable())
}
