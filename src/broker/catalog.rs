//! The topic catalog: which topics exist and how many partitions each has.
//!
//! Stored as JSON in `<data_dir>/meta/topics.json`, replaced atomically. Shard 0 owns the
//! writes; every shard keeps a copy, updated over the mesh.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::limits::{MAX_GROUP_NAME_BYTES, MAX_PARTITIONS_PER_TOPIC, MAX_TOPIC_NAME_BYTES};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    /// The topic's incarnation in a cluster's metadata (0 on a single node).
    #[serde(default)]
    pub id: u64,
    pub partitions: u32,
    pub replication_factor: u16,
    pub created_ms: i64,
}

/// Written into a topic's directory before its deletion is recorded in the catalog: a start
/// after a crash removes only directories that carry it.
pub const DELETED_MARKER: &str = "DELETED";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    pub topics: BTreeMap<String, TopicConfig>,
    /// A single node's users (a cluster keeps them in its replicated metadata).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub users: BTreeMap<String, crate::protocol::scram::Credential>,
    /// A single node's ACLs (likewise).
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub acls: std::collections::BTreeSet<crate::protocol::acl::Acl>,
}

impl Catalog {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("meta").join("topics.json")
    }

    /// Loads the catalog at start-up (before the shards run); an absent file is an empty catalog.
    pub fn load(data_dir: &Path) -> Result<Catalog, String> {
        let path = Self::path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Catalog::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("catalog serializes")
    }
}

/// Names are used as directory names: a conservative character set, no `.` or `..`.
fn validate_name(kind: &str, name: &str, max: usize) -> Result<(), String> {
    if name.is_empty() || name.len() > max {
        return Err(format!("{kind} name must be 1 to {max} bytes long"));
    }
    if name == "." || name == ".." || name.starts_with("__") {
        return Err(format!("{kind} name {name:?} is reserved"));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(format!("{kind} name {name:?} has the character {c:?}; use letters, digits, '.', '_' and '-'"));
    }
    Ok(())
}

pub fn validate_topic_name(name: &str) -> Result<(), String> {
    validate_name("topic", name, MAX_TOPIC_NAME_BYTES)
}

pub fn validate_group_name(name: &str) -> Result<(), String> {
    validate_name("group", name, MAX_GROUP_NAME_BYTES)
}

pub fn validate_partition_count(n: u32) -> Result<(), String> {
    if n == 0 || n > MAX_PARTITIONS_PER_TOPIC {
        return Err(format!("partitions must be between 1 and {MAX_PARTITIONS_PER_TOPIC}"));
    }
    Ok(())
}

/// Directory of one partition's log.
pub fn partition_dir(data_dir: &Path, topic: &str, partition: u32) -> PathBuf {
    data_dir.join("topics").join(topic).join(partition.to_string())
}

/// Directory of one consumer group's offset log.
pub fn group_dir(data_dir: &Path, group: &str) -> PathBuf {
    data_dir.join("groups").join(group)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_topic_name("orders.v2-eu_1").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", "__internal", "é"] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_topic_name(&"x".repeat(MAX_TOPIC_NAME_BYTES + 1)).is_err());
    }
}
