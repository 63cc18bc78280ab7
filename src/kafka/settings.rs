//! `[kafka]`: the Kafka-protocol listener's configuration.

use std::net::SocketAddr;

use serde::Deserialize;

/// Where Kafka clients are served by default.
pub const DEFAULT_KAFKA_LISTEN: &str = "127.0.0.1:9092";

/// `[kafka]` (docs/kafka.md).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    /// Serve Kafka clients at all.
    pub enabled: bool,
    /// The address every shard binds (SO_REUSEPORT). Unset: 127.0.0.1:9092, and then a
    /// port another process holds turns the listener off with a warning instead of failing
    /// the start (a second broker on one machine); an address set here must be bound.
    pub listen: Option<SocketAddr>,
    /// The address Metadata names for this node (default: the bound one), for clients
    /// that reach it through NAT or a proxy.
    pub advertised: Option<SocketAddr>,
    /// Largest Kafka request accepted, its length prefix excluded (Kafka's
    /// `socket.request.max.bytes` is 100 MiB; a produce is at most one batch per partition).
    pub max_request_bytes: usize,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings { enabled: true, listen: None, advertised: None, max_request_bytes: 64 << 20 }
    }
}

impl KafkaSettings {
    /// The address to bind, and whether it was configured (a failure to bind it fails the
    /// start) or is the default.
    pub fn listen_addr(&self) -> (SocketAddr, bool) {
        match self.listen {
            Some(a) => (a, true),
            None => (DEFAULT_KAFKA_LISTEN.parse().expect("valid literal"), false),
        }
    }
}
