//! The ledger: which messages each producer had acknowledged, kept in a file so that a later
//! `consume --verify` (another process) knows what must be there.
//!
//! One JSON line per producer and run: `{"topic": .., "incarnation": {"id": .., "created_ms": ..},
//! "producer": id, "acked": [[from, to), ..]}`. A producer's acknowledged sequence numbers
//! are stored as half-open ranges. The incarnation ties the lines to the topic as it was
//! when they were written: a topic deleted and created again under its name, or one of a
//! fresh cluster, is another, and the lines of the old one say nothing about it.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    pub topic: String,
    /// None: written before ledgers named the incarnation (taken to be the live one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<Incarnation>,
    pub producer: u32,
    pub acked: Vec<(u64, u64)>,
}

/// One incarnation of a topic: its id (0 on a single node) and creation time.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Incarnation {
    pub id: u64,
    pub created_ms: i64,
}

impl std::fmt::Display for Incarnation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "id {}, created at {} ms", self.id, self.created_ms)
    }
}

/// Default ledger location for a topic: `./.quorra-load/<topic>.ledger`.
pub fn default_path(topic: &str) -> PathBuf {
    PathBuf::from(".quorra-load").join(format!("{topic}.ledger"))
}

/// Collapses sorted sequence numbers into half-open ranges.
pub fn ranges(sorted: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &s in sorted {
        match out.last_mut() {
            Some((_, end)) if *end == s => *end += 1,
            _ => out.push((s, s + 1)),
        }
    }
    out
}

pub fn reset(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

pub fn append(path: &Path, entries: &[Entry]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    for e in entries {
        serde_json::to_writer(&mut f, e)?;
        f.write_all(b"\n")?;
    }
    f.sync_all()
}

pub fn load(path: &Path, topic: &str) -> std::io::Result<Vec<Entry>> {
    Ok(load_all(path)?.into_iter().filter(|e| e.topic == topic).collect())
}

fn load_all(path: &Path) -> std::io::Result<Vec<Entry>> {
    let f = std::fs::File::open(path)?;
    let mut out = Vec::new();
    for line in std::io::BufReader::new(f).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let e: Entry =
            serde_json::from_str(&line).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        out.push(e);
    }
    Ok(out)
}

/// Removes from the ledger at `path` the lines of `topic` written for another incarnation
/// than `live` (they cannot be checked against it); how many it removed.
pub fn forget_other_incarnations(path: &Path, topic: &str, live: Incarnation) -> std::io::Result<usize> {
    let all = match load_all(path) {
        Ok(all) => all,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let stale = |e: &Entry| e.topic == topic && e.incarnation.is_some_and(|i| i != live);
    let removed = all.iter().filter(|e| stale(e)).count();
    if removed > 0 {
        let kept: Vec<Entry> = all.into_iter().filter(|e| !stale(e)).collect();
        let tmp = path.with_extension("ledger.tmp");
        reset(&tmp)?;
        append(&tmp, &kept)?;
        std::fs::rename(&tmp, path)?;
    }
    Ok(removed)
}

/// The incarnation the ledger's lines were written for, if it is not `live` (the first
/// such one found).
pub fn other_incarnation(entries: &[Entry], live: Incarnation) -> Option<Incarnation> {
    entries.iter().filter_map(|e| e.incarnation).find(|&i| i != live)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(topic: &str, incarnation: Option<Incarnation>, producer: u32) -> Entry {
        Entry { topic: topic.into(), incarnation, producer, acked: vec![(0, 10)] }
    }

    /// Seen: two runs against two fresh clusters with one topic name; the second's check
    /// counted the first run's records as lost.
    #[test]
    fn lines_of_another_incarnation_are_forgotten_on_produce_and_named_on_verify() {
        let dir = std::env::temp_dir().join(format!("quorra-ledger-{}", std::process::id()));
        let path = dir.join("t.ledger");
        let (old, new) = (Incarnation { id: 1, created_ms: 100 }, Incarnation { id: 1, created_ms: 200 });
        let lines = [entry("t", Some(old), 1), entry("t", None, 2), entry("u", Some(old), 3), entry("t", Some(new), 4)];
        append(&path, &lines).unwrap();
        assert_eq!(other_incarnation(&load(&path, "t").unwrap(), new), Some(old));
        assert_eq!(forget_other_incarnations(&path, "t", new).unwrap(), 1);
        let kept = load_all(&path).unwrap();
        assert_eq!(kept.iter().map(|e| e.producer).collect::<Vec<_>>(), vec![2, 3, 4], "only t's old line goes");
        assert_eq!(other_incarnation(&load(&path, "t").unwrap(), new), None);
        assert_eq!(forget_other_incarnations(&path, "t", new).unwrap(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ranges_collapse() {
        assert_eq!(ranges(&[0, 1, 2, 5, 6, 9]), vec![(0, 3), (5, 7), (9, 10)]);
        assert_eq!(ranges(&[]), vec![]);
    }
}
