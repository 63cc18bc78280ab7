//! A data directory's identity: which broker it belongs to. Recorded at the first start
//! (`meta/identity`, written atomically), checked at every later one, so that a node started
//! with the wrong configuration (another cluster id or node id, another mode, or no
//! `[cluster]` section at all on a cluster node's directory) refuses to start instead of
//! treating the directory's data as its own.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::{ClusterMode, Config};
use crate::storage::control_files::{ControlFiles, InjectedFaults, OsControlFiles};

/// Who a data directory belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Identity {
    /// A single broker.
    Single,
    /// One node of a replicated cluster.
    ClusterNode { cluster_id: String, node_id: u32, mode: ClusterMode },
    /// The shared directory of a shared-storage cluster (any of its nodes may serve it).
    SharedStorage { cluster_id: String },
}

impl Identity {
    /// The identity a configuration claims.
    pub fn of(config: &Config) -> Identity {
        match &config.cluster {
            None => Identity::Single,
            Some(c) if !c.replicates() => Identity::SharedStorage { cluster_id: c.cluster_id.clone() },
            Some(c) => Identity::ClusterNode { cluster_id: c.cluster_id.clone(), node_id: c.node_id, mode: c.mode },
        }
    }

    /// Whether a directory of identity `self` may be served with a configuration claiming
    /// `claimed`: the same broker; a cluster node may switch between the replicated modes
    /// (docs/cluster-modes.md, "Moving between modes").
    fn admits(&self, claimed: &Identity) -> bool {
        match (self, claimed) {
            (
                Identity::ClusterNode { cluster_id: a, node_id: n, .. },
                Identity::ClusterNode { cluster_id: b, node_id: m, .. },
            ) => a == b && n == m,
            (a, b) => a == b,
        }
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Single => write!(f, "a single broker"),
            Identity::ClusterNode { cluster_id, node_id, mode } => {
                write!(f, "node {node_id} of cluster {cluster_id:?} (mode {mode})")
            }
            Identity::SharedStorage { cluster_id } => write!(f, "the shared-storage cluster {cluster_id:?}"),
        }
    }
}

fn path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("meta").join("identity")
}

/// Checks the directory's recorded identity against the configuration, recording it at the
/// first start (and after an upgrade from a version that did not record it). On a mismatch:
/// one line naming both.
pub fn check_or_record(config: &Config) -> Result<(), String> {
    let dir = &config.data_dir;
    let claimed = Identity::of(config);
    let file = path(dir);
    match std::fs::read(&file) {
        Ok(bytes) => {
            let recorded: Identity = serde_json::from_slice(&bytes).map_err(|e| {
                format!("{}: unreadable identity ({e}); restore it or remove it to adopt the directory", file.display())
            })?;
            if !recorded.admits(&claimed) {
                return Err(format!(
                    "data directory {} belongs to {recorded}, but this configuration starts {claimed}; refusing to \
                     start (fix the configuration, or use another data_dir)",
                    dir.display()
                ));
            }
            if recorded != claimed {
                // A cluster node moved to another replicated mode: record the new one.
                write(dir, &claimed)?;
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write(dir, &claimed),
        Err(e) => Err(format!("{}: {e}", file.display())),
    }
}

/// The format the batches of this version are stored in (`protocol/batch.rs`), recorded in
/// `meta/batch-format` at the first start.
pub const BATCH_FORMAT: &str = "kafka-record-batch-v2";

fn batch_format_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("meta").join("batch-format")
}

/// Refuses a data directory whose batches are in another format than [`BATCH_FORMAT`]:
/// one recorded as another, or one that holds partitions or group logs but no record (an
/// earlier Quorra wrote it, in the format it had before Kafka's, "QRB1"), which the recovery
/// scan would otherwise take for damage. Records the format in a directory with no data.
pub fn check_or_record_batch_format(data_dir: &Path) -> Result<(), String> {
    let file = batch_format_path(data_dir);
    match std::fs::read_to_string(&file) {
        Ok(recorded) if recorded.trim() == BATCH_FORMAT => Ok(()),
        Ok(recorded) => Err(format!(
            "{}: the batches here are stored as {:?}, which this Quorra does not read (it stores {BATCH_FORMAT})",
            file.display(),
            recorded.trim()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if holds_data(data_dir) {
                return Err(format!(
                    "data directory {} was written by an earlier Quorra, which stored batches in its own format \
                     (\"QRB1\"); this Quorra stores Kafka's RecordBatch v2 and cannot read them. There is no \
                     in-place migration: read the topics out with the earlier version (quorra consume) and produce \
                     them into a new data_dir, or start on an empty one",
                    data_dir.display()
                ));
            }
            let fail = |e: std::io::Error| format!("recording the batch format in {}: {e}", file.display());
            let files = OsControlFiles { faults: InjectedFaults::None };
            files.create_dir_all(file.parent().expect("meta/batch-format has a parent")).map_err(fail)?;
            files.write_atomic(&file, BATCH_FORMAT.as_bytes()).map_err(fail)
        }
        Err(e) => Err(format!("{}: {e}", file.display())),
    }
}

/// Whether the directory holds a partition or a consumer group's offsets log.
fn holds_data(data_dir: &Path) -> bool {
    ["topics", "groups"]
        .iter()
        .any(|d| std::fs::read_dir(data_dir.join(d)).is_ok_and(|mut entries| entries.next().is_some()))
}

/// Replaces the identity file atomically and durably.
fn write(dir: &Path, identity: &Identity) -> Result<(), String> {
    let file = path(dir);
    let meta = file.parent().expect("meta/identity has a parent");
    let fail = |e: std::io::Error| format!("recording the data directory's identity in {}: {e}", file.display());
    let files = OsControlFiles { faults: InjectedFaults::None };
    files.create_dir_all(meta).map_err(fail)?;
    let json = serde_json::to_vec_pretty(identity).expect("identities serialize");
    files.write_atomic(&file, &json).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_with_data_of_the_earlier_batch_format_is_refused_by_name() {
        let fresh = tempfile::tempdir().unwrap();
        check_or_record_batch_format(fresh.path()).expect("an empty directory takes the current format");
        assert_eq!(std::fs::read_to_string(batch_format_path(fresh.path())).unwrap(), BATCH_FORMAT);
        check_or_record_batch_format(fresh.path()).expect("and keeps it");

        let old = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(old.path().join("topics/orders/0")).unwrap();
        let refused = check_or_record_batch_format(old.path()).unwrap_err();
        assert!(refused.contains("QRB1") && refused.contains("no in-place migration"), "{refused}");
        assert!(!batch_format_path(old.path()).exists(), "nothing recorded in a refused directory");

        std::fs::write(batch_format_path(fresh.path()), "something-else").unwrap();
        assert!(check_or_record_batch_format(fresh.path()).unwrap_err().contains("something-else"));
    }

    #[test]
    fn identities_admit_only_the_same_broker() {
        let node = |c: &str, n, mode| Identity::ClusterNode { cluster_id: c.into(), node_id: n, mode };
        let ms = node("a", 1, ClusterMode::MasterSlave);
        assert!(ms.admits(&ms));
        assert!(ms.admits(&node("a", 1, ClusterMode::Hybrid)), "a node may change its replicated mode");
        assert!(!ms.admits(&node("a", 2, ClusterMode::MasterSlave)));
        assert!(!ms.admits(&node("b", 1, ClusterMode::MasterSlave)));
        assert!(!ms.admits(&Identity::Single));
        assert!(!Identity::Single.admits(&ms));
        let shared = Identity::SharedStorage { cluster_id: "a".into() };
        assert!(!shared.admits(&Identity::Single));
        assert!(shared.admits(&shared.clone()));
        assert_eq!(ms.to_string(), "node 1 of cluster \"a\" (mode master-slave)");
    }
}
