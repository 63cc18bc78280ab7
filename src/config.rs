//! Broker configuration: an optional TOML file, overridden by command-line flags.
//!
//! Unknown keys are an error, so a typo never silently falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer};
use thiserror::Error;

use crate::limits::{
    DEFAULT_FRAME_TIMEOUT_MS, DEFAULT_MAX_FRAME_BYTES, DEFAULT_SHUTDOWN_TIMEOUT_MS, MIN_MAX_FRAME_BYTES,
};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid setting {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// When the log is flushed (fdatasync) relative to acknowledgements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Every acknowledged batch is on stable storage (write + fdatasync) before the ack.
    Always,
    /// Batches are written (O_DIRECT) before the ack and fdatasync'ed every N ms: a crash of
    /// the process loses nothing acknowledged, a power loss may lose the last N ms.
    IntervalMs(u64),
}

impl FromStr for FlushPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "always" {
            return Ok(FlushPolicy::Always);
        }
        if let Some(ms) = s.strip_prefix("interval:") {
            let ms = ms.trim_end_matches("ms").parse::<u64>().map_err(|_| format!("bad interval in {s:?}"))?;
            if ms == 0 {
                return Err("flush interval must be at least 1 ms".into());
            }
            return Ok(FlushPolicy::IntervalMs(ms));
        }
        Err(format!("unknown flush policy {s:?} (expected \"always\" or \"interval:<ms>\")"))
    }
}

impl std::fmt::Display for FlushPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FlushPolicy::Always => f.write_str("always"),
            FlushPolicy::IntervalMs(ms) => write!(f, "interval:{ms}"),
        }
    }
}

impl<'de> Deserialize<'de> for FlushPolicy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `[storage]`: the partition logs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSettings {
    /// `"always"` (default) or `"interval:<ms>"`.
    pub flush: FlushPolicy,
    /// Segment file size: a segment is rolled when the next batch would pass it.
    pub segment_bytes: u64,
    /// What a new segment file is preallocated to; the preallocation doubles ahead of the
    /// writes up to `segment_bytes` (so a partition costs disk for what it holds).
    pub preallocate_bytes: u64,
    /// Bytes between sparse index entries.
    pub index_interval_bytes: u64,
    /// Recent data kept in memory per partition for readers.
    pub cache_bytes: usize,
    /// Appended bytes waiting for the disk per partition; beyond, produces get `backpressure`.
    pub max_pending_bytes: usize,
    /// Delete old segments while a partition is larger than this (0: no limit).
    pub retention_bytes: u64,
    /// Delete segments whose newest record is older than this many ms (0: keep forever).
    pub retention_ms: u64,
    /// How often retention is applied.
    pub retention_check_ms: u64,
    /// At start, truncate a partition at mid-log corruption instead of refusing to serve it.
    pub truncate_corrupt: bool,
    /// While a partition is idle, write zeros just ahead of its end, so that later flushes
    /// overwrite blocks instead of converting never-written ones (half the flush latency).
    pub prezero: bool,
    /// With `flush = "always"`: open segment files with O_DSYNC so each write is durable
    /// when it completes (one operation instead of a write and an fdatasync).
    pub dsync: bool,
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings {
            flush: FlushPolicy::Always,
            segment_bytes: 64 << 20,
            preallocate_bytes: crate::limits::DEFAULT_PREALLOCATE_BYTES,
            index_interval_bytes: 4096,
            cache_bytes: 8 << 20,
            max_pending_bytes: crate::limits::DEFAULT_MAX_PENDING_BYTES,
            retention_bytes: 0,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_check_ms: 30_000,
            truncate_corrupt: false,
            prezero: true,
            dsync: true,
        }
    }
}

/// `[runtime]`: the shard executors.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSettings {
    /// Memory each shard registers with io_uring for DMA buffers.
    pub io_memory_bytes: usize,
    /// Busy-wait this long before a shard parks (trades a busy core for wake-up latency).
    pub spin_before_park_us: u64,
    /// Pin each shard to its own core.
    pub pin_cores: bool,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        RuntimeSettings { io_memory_bytes: 64 << 20, spin_before_park_us: 0, pin_cores: true }
    }
}

/// The whole configuration of a broker.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Client address; every shard binds it with SO_REUSEPORT.
    pub listen: SocketAddr,
    /// Where logs and metadata live.
    pub data_dir: PathBuf,
    /// Number of shards (one executor thread each); 0 means one per available core.
    pub shards: usize,
    /// Largest frame accepted.
    pub max_frame_bytes: usize,
    /// Once a frame started to arrive, the rest must follow within this many ms, or the
    /// connection is closed (slow or stalled clients cannot hold resources forever).
    pub frame_timeout_ms: u64,
    /// A client connection that sends nothing for this long is closed (0: never).
    pub idle_timeout_ms: u64,
    /// Client connections the broker holds at once, in all; more are refused.
    pub max_connections: usize,
    /// Client connections one address may hold at once.
    pub max_connections_per_ip: usize,
    /// Partitions this broker holds at most (in a cluster: partitions in the catalog);
    /// a topic create beyond is refused.
    pub max_partitions: usize,
    /// Consumer groups this broker (in a cluster: the cluster) holds at most; a commit that
    /// would create another is refused with `too_many_groups`.
    pub max_consumer_groups: usize,
    /// Bytes of answers one connection may have pending (being prepared or queued, not yet
    /// written); beyond it the broker reads no more requests from it until the client reads.
    pub max_answer_bytes_per_connection: usize,
    /// On SIGTERM/SIGINT the broker stops within this long: a cluster node first moves the
    /// leadership of its partitions to in-sync followers (for at most about half of it),
    /// then flushes and closes everything.
    pub shutdown_timeout_ms: u64,
    /// Serve on an address other machines can reach without TLS (`[tls]`) or without client
    /// authentication (`[auth] enabled`). Without it such a start is refused.
    pub allow_insecure: bool,
    pub storage: StorageSettings,
    pub runtime: RuntimeSettings,
    pub auth: AuthSettings,
    /// `[tls]`: TLS on the client port.
    pub tls: crate::net::tls::TlsSettings,
    /// `[quotas]`: per-principal byte rates and connections (with `[auth] enabled`).
    pub quotas: crate::server::quotas::QuotaSettings,
    /// `[cluster]`: absent for a single node.
    pub cluster: Option<ClusterSettings>,
    /// `[kafka]`: the Kafka-protocol listener (docs/kafka.md).
    pub kafka: crate::kafka::KafkaSettings,
}

/// How the nodes of a cluster share the partitions (see docs/cluster-modes.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClusterMode {
    /// One master node leads every partition; the others hold synchronous copies.
    MasterSlave,
    /// Leadership spread evenly over the nodes, each partition with 2-3 replicas.
    Hybrid,
    /// Every node holds every partition (replication factor = node count by default) and
    /// accepts every request; a produce for a partition led elsewhere is forwarded.
    MultiMaster,
    /// Replication factor 1, partitions spread over the nodes; any node forwards produce and
    /// fetch to the partition's owner.
    Forwarding,
    /// Active and standby nodes over one shared data directory: the node holding the
    /// directory's lock serves as a single broker; the others wait for the lock.
    SharedStorage,
}

impl ClusterMode {
    /// The replication factor of a topic created without one: master-slave and multi-master
    /// put a copy on every node, hybrid up to three, forwarding (and shared-storage) one.
    pub fn default_replication_factor(self, nodes: usize) -> u16 {
        let rf = match self {
            ClusterMode::MasterSlave | ClusterMode::MultiMaster => nodes,
            ClusterMode::Hybrid => nodes.min(3),
            ClusterMode::Forwarding | ClusterMode::SharedStorage => 1,
        };
        rf.clamp(1, usize::from(u16::MAX)) as u16
    }

    /// Whether a node forwards requests for partitions it does not serve.
    pub fn forwards(self) -> bool {
        matches!(self, ClusterMode::MultiMaster | ClusterMode::Forwarding)
    }
}

impl std::fmt::Display for ClusterMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClusterMode::MasterSlave => "master-slave",
            ClusterMode::Hybrid => "hybrid",
            ClusterMode::MultiMaster => "multi-master",
            ClusterMode::Forwarding => "forwarding",
            ClusterMode::SharedStorage => "shared-storage",
        })
    }
}

/// `[auth]`: client authentication (docs/security.md).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Every client connection must authenticate (SCRAM-SHA-256) before any other request.
    pub enabled: bool,
    /// Users who may do everything, managing users included.
    pub super_users: Vec<String>,
    /// Keys the decoy challenges for unknown users (the same answer for a name every time,
    /// as for a real user). Set at start: random on a single node, derived from the cluster
    /// secret in a cluster (the same on every node).
    #[serde(skip)]
    pub decoy_key: [u8; 32],
}

/// One member of the cluster, as every node's config lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeAddress {
    pub id: u32,
    /// Where clients reach it (its `listen` address as others see it).
    pub client: SocketAddr,
    /// Where other nodes reach its control plane (metadata, elections).
    pub peer: SocketAddr,
}

/// `[cluster]`: membership and failover settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// This node's id; must appear in `nodes`.
    pub node_id: u32,
    /// Nodes refuse links from another cluster.
    pub cluster_id: String,
    pub mode: ClusterMode,
    /// Every member, this node included.
    pub nodes: Vec<NodeAddress>,
    /// master-slave: the node that leads when it is alive and in sync (default: lowest id).
    #[serde(default)]
    pub master: Option<u32>,
    /// master-slave: give leadership back to the master once it has caught up.
    #[serde(default = "default_true")]
    pub prefer_master: bool,
    /// A partition leader (or the metadata leader) silent this long is replaced.
    #[serde(default = "default_election_timeout_ms")]
    pub election_timeout_ms: u64,
    /// shared-storage: the active node's lease on the data directory. A standby takes over
    /// a node that has not renewed it for this long (then waits as long again before
    /// writing); the active node stops writing after three quarters of it without renewal.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// shared-storage: the storage's locks are reliable (a local file system; NFS with
    /// working lock recovery): a standby that gets the lock of a node that held it takes
    /// over at once. `false`: only the lease counts (slower takeover, no trust in locks).
    #[serde(default = "default_true")]
    pub trust_lock: bool,
    /// Every replica reads its whole committed log in the background, checking each
    /// batch's CRC, so that damage on the disk is repaired from the other replicas while
    /// they still hold good copies: after each open, then every `scrub_interval_secs`, at
    /// most this many bytes a second (0: never).
    #[serde(default = "default_scrub_bytes_per_sec")]
    pub scrub_bytes_per_sec: u64,
    #[serde(default = "default_scrub_interval_secs")]
    pub scrub_interval_secs: u64,
    /// A file holding the cluster's shared secret, the same on every node (required by
    /// every mode that replicates): nodes prove they hold it before any node-to-node
    /// traffic is accepted. One secret per line: the first is proved, all are accepted (a
    /// rotation: docs/security.md). Relative paths are taken from the working directory.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// The secret itself, read from `secret_file` when the broker starts.
    #[serde(skip)]
    pub secret: crate::protocol::node_auth::ClusterSecret,
    /// TLS of the node links (`[tls]`), set when the broker starts.
    #[serde(skip)]
    pub tls: Option<std::sync::Arc<crate::net::tls::ServerTls>>,
}

fn default_true() -> bool {
    true
}

fn default_election_timeout_ms() -> u64 {
    crate::limits::DEFAULT_ELECTION_TIMEOUT_MS
}

fn default_scrub_bytes_per_sec() -> u64 {
    crate::limits::DEFAULT_SCRUB_BYTES_PER_SEC
}

fn default_scrub_interval_secs() -> u64 {
    crate::limits::DEFAULT_SCRUB_INTERVAL_SECS
}

fn default_lease_ms() -> u64 {
    crate::limits::DEFAULT_LEASE_MS
}

impl ClusterSettings {
    pub fn me(&self) -> &NodeAddress {
        self.nodes.iter().find(|n| n.id == self.node_id).expect("validated: node_id is a member")
    }

    pub fn node(&self, id: u32) -> Option<&NodeAddress> {
        self.nodes.iter().find(|n| n.id == id)
    }

    pub fn node_ids(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// Whether nodes replicate through the metadata cluster (every mode but shared-storage,
    /// where the storage itself is shared).
    pub fn replicates(&self) -> bool {
        self.mode != ClusterMode::SharedStorage
    }

    /// Reads `secret_file` into `secret` (every mode but shared-storage needs one).
    pub fn load_secret(&mut self) -> Result<(), ConfigError> {
        let bad = |message: String| ConfigError::Invalid { key: "cluster.secret_file", message };
        let Some(path) = &self.secret_file else {
            if !self.replicates() {
                return Ok(());
            }
            return Err(bad(format!(
                "{} mode needs a shared secret that authenticates the nodes to each other: \
                 create one file for the whole cluster (head -c 32 /dev/urandom | base64 > cluster.secret) \
                 and name it in [cluster] secret_file on every node",
                self.mode
            )));
        };
        let text = std::fs::read(path).map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
        self.secret = crate::protocol::node_auth::ClusterSecret::parse(&text)
            .map_err(|e| bad(format!("{}: {e}", path.display())))?;
        Ok(())
    }

    /// The master of master-slave mode.
    pub fn master_node(&self) -> u32 {
        self.master.unwrap_or_else(|| self.nodes.iter().map(|n| n.id).min().unwrap_or(self.node_id))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, message: String| Err(ConfigError::Invalid { key, message });
        if self.cluster_id.is_empty() || self.cluster_id.len() > 64 {
            return bad("cluster.cluster_id", "must be 1 to 64 bytes long".into());
        }
        let mut ids = self.node_ids();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != self.nodes.len() {
            return bad("cluster.nodes", "node ids must be unique".into());
        }
        if ids.contains(&0) {
            return bad("cluster.nodes", "node id 0 is reserved".into());
        }
        if !ids.contains(&self.node_id) {
            return bad("cluster.node_id", format!("{} is not one of cluster.nodes {ids:?}", self.node_id));
        }
        if self.nodes.len() > crate::limits::MAX_CLUSTER_NODES {
            return bad("cluster.nodes", format!("at most {} nodes", crate::limits::MAX_CLUSTER_NODES));
        }
        if let Some(m) = self.master {
            if !ids.contains(&m) {
                return bad("cluster.master", format!("{m} is not one of cluster.nodes {ids:?}"));
            }
        }
        if self.election_timeout_ms < 100 {
            return bad("cluster.election_timeout_ms", "must be at least 100".into());
        }
        if !(200..=600_000).contains(&self.lease_ms) {
            return bad("cluster.lease_ms", "must be between 200 and 600000".into());
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7420".parse().expect("valid literal"),
            data_dir: PathBuf::from("./quorra-data"),
            shards: 0,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            frame_timeout_ms: DEFAULT_FRAME_TIMEOUT_MS,
            idle_timeout_ms: crate::limits::DEFAULT_IDLE_TIMEOUT_MS,
            max_connections: crate::limits::DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: crate::limits::DEFAULT_MAX_CONNECTIONS_PER_IP,
            max_partitions: crate::limits::DEFAULT_MAX_PARTITIONS,
            max_consumer_groups: crate::limits::DEFAULT_MAX_CONSUMER_GROUPS,
            max_answer_bytes_per_connection: crate::limits::DEFAULT_MAX_ANSWER_BYTES_PER_CONNECTION,
            shutdown_timeout_ms: DEFAULT_SHUTDOWN_TIMEOUT_MS,
            allow_insecure: false,
            storage: StorageSettings::default(),
            runtime: RuntimeSettings::default(),
            auth: AuthSettings::default(),
            tls: Default::default(),
            quotas: Default::default(),
            cluster: None,
            kafka: Default::default(),
        }
    }
}

impl Config {
    /// Reads a TOML file; unknown keys are an error.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse { path: path.display().to_string(), message })
    }

    pub fn from_toml(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim().replace('\n', " "))
    }

    /// Number of shards to run.
    pub fn shard_count(&self) -> usize {
        if self.shards > 0 {
            self.shards
        } else {
            std::thread::available_parallelism().map_or(1, usize::from)
        }
    }

    /// Checks relations between settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_frame_bytes < MIN_MAX_FRAME_BYTES {
            return Err(ConfigError::Invalid {
                key: "max_frame_bytes",
                message: format!("must be at least {MIN_MAX_FRAME_BYTES}"),
            });
        }
        if self.storage.segment_bytes < 64 * 1024 {
            return Err(ConfigError::Invalid {
                key: "storage.segment_bytes",
                message: "must be at least 65536".into(),
            });
        }
        if self.storage.preallocate_bytes < 4096 {
            return Err(ConfigError::Invalid {
                key: "storage.preallocate_bytes",
                message: "must be at least 4096 (one block)".into(),
            });
        }
        if self.storage.index_interval_bytes == 0 {
            return Err(ConfigError::Invalid {
                key: "storage.index_interval_bytes",
                message: "must be positive".into(),
            });
        }
        if self.shutdown_timeout_ms < 1000 {
            return Err(ConfigError::Invalid { key: "shutdown_timeout_ms", message: "must be at least 1000".into() });
        }
        if self.frame_timeout_ms < 100 {
            return Err(ConfigError::Invalid { key: "frame_timeout_ms", message: "must be at least 100".into() });
        }
        if self.idle_timeout_ms != 0 && self.idle_timeout_ms < 1000 {
            return Err(ConfigError::Invalid { key: "idle_timeout_ms", message: "must be 0 or at least 1000".into() });
        }
        if self.max_answer_bytes_per_connection < crate::limits::MAX_FETCH_BYTES as usize + 64 * 1024 {
            return Err(ConfigError::Invalid {
                key: "max_answer_bytes_per_connection",
                message: format!(
                    "must hold the largest fetch answer: at least {}",
                    crate::limits::MAX_FETCH_BYTES as usize + 64 * 1024
                ),
            });
        }
        if self.max_connections == 0 || self.max_connections_per_ip == 0 {
            return Err(ConfigError::Invalid {
                key: "max_connections",
                message: "max_connections and max_connections_per_ip must be positive".into(),
            });
        }
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
            if self.listen.port() == 0 {
                return Err(ConfigError::Invalid {
                    key: "listen",
                    message: "a cluster member needs a fixed port (peers hand it to clients)".into(),
                });
            }
        }
        self.tls.validate().map_err(|message| ConfigError::Invalid { key: "tls", message })?;
        if self.quotas.any() && !self.auth.enabled {
            return Err(ConfigError::Invalid {
                key: "quotas",
                message: "quotas are per principal: they need [auth] enabled".into(),
            });
        }
        if let Some(c) = self.cluster.as_ref().filter(|c| c.replicates() && self.tls.enabled()) {
            if self.tls.ca_file.is_none() || self.tls.client_auth == crate::net::tls::ClientAuth::None {
                return Err(ConfigError::Invalid {
                    key: "tls",
                    message: "a cluster's nodes prove who they are with certificates: set ca_file and \
                              client_auth = \"optional\" (clients may use SCRAM) or \"required\""
                        .into(),
                });
            }
            let name = crate::net::tls::node_name(&c.cluster_id, c.node_id);
            if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                return Err(ConfigError::Invalid {
                    key: "cluster.cluster_id",
                    message: format!("with TLS, node certificates name {name:?}: the cluster id must be a DNS label"),
                });
            }
        }
        if let Some(exposed) = self.exposed_address() {
            if !self.allow_insecure {
                let client_port = exposed == self.listen;
                let missing = match (client_port && self.tls.enabled(), self.auth.enabled) {
                    (true, false) => "does not authenticate clients ([auth] enabled)",
                    (false, true) => "has no TLS there ([tls])",
                    _ => "has no TLS there ([tls]) and does not authenticate clients ([auth] enabled)",
                };
                return Err(ConfigError::Invalid {
                    key: "allow_insecure",
                    message: format!(
                        "{exposed} can be reached from other machines, and this broker {missing}. \
                         Bind a loopback address, configure what is missing, or set \
                         allow_insecure = true if the network around it is trusted"
                    ),
                });
            }
        }
        self.validate_kafka()?;
        if self.shards > 256 {
            return Err(ConfigError::Invalid { key: "shards", message: "at most 256".into() });
        }
        if self.runtime.io_memory_bytes < 1 << 20 {
            return Err(ConfigError::Invalid {
                key: "runtime.io_memory_bytes",
                message: "must be at least 1 MiB".into(),
            });
        }
        Ok(())
    }

    /// The Kafka listener serves single brokers without `[auth]` for now (docs/kafka.md):
    /// one configured where it cannot serve is refused; on a non-loopback address it has
    /// neither TLS nor SASL, as `allow_insecure` says.
    fn validate_kafka(&self) -> Result<(), ConfigError> {
        let bad = |message: String| Err(ConfigError::Invalid { key: "kafka.listen", message });
        let Some(listen) = self.kafka.listen.filter(|_| self.kafka.enabled) else { return Ok(()) };
        if self.cluster.is_some() {
            return bad("the Kafka listener does not serve cluster nodes yet (docs/kafka.md)".into());
        }
        if self.auth.enabled {
            return bad(
                "the Kafka listener has no SASL yet: it cannot serve with [auth] enabled (docs/kafka.md)".into()
            );
        }
        if !listen.ip().is_loopback() && !self.allow_insecure {
            return bad(format!(
                "{listen} can be reached from other machines, and the Kafka listener has no TLS or SASL yet. \
                 Bind a loopback address, or set allow_insecure = true if the network around it is trusted"
            ));
        }
        Ok(())
    }

    /// Whether the Kafka listener runs: enabled, and where it can serve (a single broker
    /// without `[auth]`).
    pub fn serves_kafka(&self) -> bool {
        self.kafka.enabled && self.cluster.is_none() && !self.auth.enabled
    }

    /// The first address this broker serves on that other machines reach and that is not
    /// secured: its client address unless it has TLS and authenticates clients, or in a
    /// cluster its control address unless it has TLS.
    pub fn exposed_address(&self) -> Option<SocketAddr> {
        let client_secured = self.tls.enabled() && self.auth.enabled;
        let client = (!client_secured).then_some(self.listen);
        let control =
            self.cluster.as_ref().filter(|_| !self.tls.enabled()).and_then(|c| c.node(c.node_id)).map(|n| n.peer);
        [client, control].into_iter().flatten().find(|a| !a.ip().is_loopback())
    }

    pub fn frame_limits(&self) -> crate::net::FrameLimits {
        crate::net::FrameLimits {
            max_frame_bytes: self.max_frame_bytes,
            completion_timeout: std::time::Duration::from_millis(self.frame_timeout_ms),
            idle_timeout: (self.idle_timeout_ms > 0).then(|| std::time::Duration::from_millis(self.idle_timeout_ms)),
        }
    }

    /// The log settings of a data partition.
    pub fn log_config(&self) -> crate::storage::LogConfig {
        let s = &self.storage;
        crate::storage::LogConfig {
            segment_bytes: s.segment_bytes,
            preallocate_bytes: s.preallocate_bytes,
            index_interval_bytes: s.index_interval_bytes,
            cache_bytes: s.cache_bytes,
            max_write_bytes: crate::limits::MAX_WRITE_BYTES,
            max_pending_bytes: s.max_pending_bytes,
            retention_bytes: (s.retention_bytes > 0).then_some(s.retention_bytes),
            retention_ms: (s.retention_ms > 0).then_some(s.retention_ms),
            truncate_corrupt: s.truncate_corrupt,
            prezero: s.prezero,
            fresh_segment_on_open: self.cluster.as_ref().is_some_and(|c| c.mode == ClusterMode::SharedStorage),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c = Config::from_toml("listen = \"127.0.0.1:9000\"\n[storage]\nflush = \"interval:5\"\n").unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.storage.flush, FlushPolicy::IntervalMs(5));
        assert_eq!(c.storage.segment_bytes, 64 << 20);
        c.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = Config::from_toml("listne = \"127.0.0.1:9000\"").unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
        let e = Config::from_toml("[storage]\nflush = \"sometimes\"").unwrap_err();
        assert!(e.contains("unknown flush policy"), "{e}");
    }

    #[test]
    fn an_address_other_machines_reach_needs_allow_insecure() {
        let exposed = Config::from_toml("listen = \"0.0.0.0:9000\"").unwrap();
        let e = exposed.validate().unwrap_err().to_string();
        assert!(e.contains("allow_insecure") && e.contains("0.0.0.0:9000"), "{e}");
        let allowed = Config::from_toml("listen = \"0.0.0.0:9000\"\nallow_insecure = true").unwrap();
        allowed.validate().unwrap();
        let tls = "listen = \"0.0.0.0:9000\"\n[tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n";
        let e = Config::from_toml(tls).unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("does not authenticate clients"), "{e}");
        let secured = Config::from_toml(&format!("{tls}[auth]\nenabled = true\n")).unwrap();
        secured.validate().unwrap();
        let e = Config::from_toml("[tls]\ncert_file = \"c.pem\"\n").unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("go together"), "{e}");
        let cluster = |peer: &str| {
            Config::from_toml(&format!(
                "listen = \"127.0.0.1:9000\"\n[cluster]\nnode_id = 1\ncluster_id = \"c\"\nmode = \"hybrid\"\n\
                 [[cluster.nodes]]\nid = 1\nclient = \"127.0.0.1:9000\"\npeer = \"{peer}\"\n"
            ))
            .unwrap()
        };
        assert!(cluster("127.0.0.1:9100").validate().is_ok());
        let e = cluster("10.1.2.3:9100").validate().unwrap_err().to_string();
        assert!(e.contains("10.1.2.3:9100"), "{e}");
    }

    #[test]
    fn a_replicating_cluster_needs_a_secret_of_enough_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let settings = |secret: Option<&std::path::Path>, mode: &str| {
            let line = secret.map_or(String::new(), |p| format!("secret_file = \"{}\"\n", p.display()));
            let text = format!(
                "listen = \"127.0.0.1:9000\"\n[cluster]\nnode_id = 1\ncluster_id = \"c\"\nmode = \"{mode}\"\n{line}\
                 [[cluster.nodes]]\nid = 1\nclient = \"127.0.0.1:9000\"\npeer = \"127.0.0.1:9100\"\n"
            );
            Config::from_toml(&text).unwrap().cluster.unwrap()
        };
        let e = settings(None, "master-slave").load_secret().unwrap_err().to_string();
        assert!(e.contains("secret_file") && e.contains("head -c 32"), "{e}");
        settings(None, "shared-storage").load_secret().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "tiny\n").unwrap();
        let e = settings(Some(&short), "hybrid").load_secret().unwrap_err().to_string();
        assert!(e.contains("at least 16"), "{e}");
        let missing = dir.path().join("missing");
        assert!(settings(Some(&missing), "hybrid").load_secret().unwrap_err().to_string().contains("cannot read"));
        let good = dir.path().join("good");
        std::fs::write(&good, "  0123456789abcdef0123  \n").unwrap();
        let mut s = settings(Some(&good), "hybrid");
        s.load_secret().unwrap();
        assert!(format!("{:?}", s.secret).contains("[20] bytes"), "{:?}", s.secret);
    }
}
