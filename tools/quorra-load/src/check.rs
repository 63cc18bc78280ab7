//! The checker: compares what was acknowledged (the ledger) with what was read.

use std::collections::HashMap;
use std::fmt;

use crate::ledger::Entry;

/// Outcome of a verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub acked: u64,
    pub read: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub corrupt: u64,
    pub reordered: u64,
}

impl Report {
    pub fn passed(&self, allow_duplicates: bool) -> bool {
        self.lost == 0 && self.corrupt == 0 && self.reordered == 0 && (allow_duplicates || self.duplicated == 0)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "acked {}, read {}, lost {}, duplicated {}, corrupt {}, reordered {}",
            self.acked, self.read, self.lost, self.duplicated, self.corrupt, self.reordered
        )
    }
}

/// `seen`: per producer, every sequence number read (any order, with repeats).
pub fn verify(expected: &[Entry], seen: &HashMap<u32, Vec<u64>>, corrupt: u64, reordered: u64) -> Report {
    let mut sorted: HashMap<u32, Vec<u64>> = HashMap::new();
    let mut read = 0u64;
    let mut duplicated = 0u64;
    for (p, seqs) in seen {
        let mut s = seqs.clone();
        s.sort_unstable();
        read += s.len() as u64;
        let before = s.len();
        s.dedup();
        duplicated += (before - s.len()) as u64;
        sorted.insert(*p, s);
    }
    let mut acked = 0u64;
    let mut lost = 0u64;
    for entry in expected {
        let have = sorted.get(&entry.producer).map_or(&[][..], Vec::as_slice);
        for &(from, to) in &entry.acked {
            acked += to - from;
            let lo = have.partition_point(|&s| s < from);
            let hi = have.partition_point(|&s| s < to);
            lost += (to - from) - (hi - lo) as u64;
        }
    }
    Report { acked, read: read + corrupt, lost, duplicated, corrupt, reordered }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_losses_and_duplicates() {
        let expected = vec![Entry { topic: "t".into(), incarnation: None, producer: 1, acked: vec![(0, 5), (7, 9)] }];
        let mut seen = HashMap::new();
        seen.insert(1, vec![0, 1, 1, 3, 4, 7, 8, 9]);
        let r = verify(&expected, &seen, 0, 0);
        assert_eq!(r, Report { acked: 7, read: 8, lost: 1, duplicated: 1, corrupt: 0, reordered: 0 });
        assert!(!r.passed(true));
        assert_eq!(r.to_string(), "acked 7, read 8, lost 1, duplicated 1, corrupt 0, reordered 0");
    }
}
