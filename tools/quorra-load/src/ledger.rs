//! The ledger: which messages each producer had acknowledged, kept in a file so that a later
//! `consume --verify` (another process) knows what must be there.
//!
//! One JSON line per producer and run: `{"topic": .., "producer": id, "acked": [[from, to), ..]}`.
//! A producer's acknowledged sequence numbers are stored as half-open ranges.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    pub topic: String,
    pub producer: u32,
    pub acked: Vec<(u64, u64)>,
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
    let f = std::fs::File::open(path)?;
    let mut out = Vec::new();
    for line in std::io::BufReader::new(f).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let e: Entry =
            serde_json::from_str(&line).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        if e.topic == topic {
            out.push(e);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_collapse() {
        assert_eq!(ranges(&[0, 1, 2, 5, 6, 9]), vec![(0, 3), (5, 7), (9, 10)]);
        assert_eq!(ranges(&[]), vec![]);
    }
}
