//! Idempotent produce: the batches each producer stored recently, by producer id and
//! sequence number, so that a retried batch (after a timeout or a failover) is answered
//! with the offsets it already has instead of being stored twice.
//!
//! Every replica keeps the table as batches enter its log (the leader's appends, the
//! follower's replicated ones), so a follower that becomes leader has it already; after a
//! restart it is rebuilt from the last segment. Retries come within the producer's delivery
//! timeout (a minute by default), far less than a segment's worth of traffic would need.

use std::collections::{HashMap, VecDeque};

use crate::protocol::batch::BatchHeader;

/// Batches remembered per producer.
const BATCHES_PER_PRODUCER: usize = 256;
/// Producers remembered per partition; beyond it the table starts over (a retry from a
/// forgotten producer is then stored again, as without idempotence).
const PRODUCERS_PER_PARTITION: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredBatch {
    pub base_sequence: u32,
    pub base_offset: u64,
    pub last_offset: u64,
}

#[derive(Default)]
pub struct ProducerTable {
    producers: HashMap<u64, VecDeque<StoredBatch>>,
}

impl ProducerTable {
    /// Where a batch with this producer id and sequence was stored, if it was.
    pub fn find(&self, producer_id: u64, base_sequence: u32) -> Option<StoredBatch> {
        if producer_id == 0 {
            return None;
        }
        self.producers.get(&producer_id)?.iter().rev().find(|b| b.base_sequence == base_sequence).copied()
    }

    /// Notes a batch that entered the log.
    pub fn observe(&mut self, header: &BatchHeader) {
        if header.producer_id == 0 || header.record_count == 0 {
            return;
        }
        if self.producers.len() >= PRODUCERS_PER_PARTITION && !self.producers.contains_key(&header.producer_id) {
            self.producers.clear();
        }
        let batches = self.producers.entry(header.producer_id).or_default();
        if batches.len() >= BATCHES_PER_PRODUCER {
            batches.pop_front();
        }
        batches.push_back(StoredBatch {
            base_sequence: header.base_sequence,
            base_offset: header.base_offset,
            last_offset: header.last_offset(),
        });
    }

    /// Forgets batches at and after `offset` (a truncated tail).
    pub fn truncate(&mut self, offset: u64) {
        for batches in self.producers.values_mut() {
            batches.retain(|b| b.base_offset < offset);
        }
        self.producers.retain(|_, b| !b.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::batch::{check_batch, stamp_batch, BatchBuilder};

    fn header(pid: u64, seq: u32, base: u64, records: u32) -> BatchHeader {
        let mut b = BatchBuilder::with_capacity(64);
        for _ in 0..records {
            b.push(None, b"v", 1);
        }
        let mut bytes = b.finish(pid, 0, seq).to_vec();
        stamp_batch(&mut bytes, base, 1);
        check_batch(&bytes).unwrap()
    }

    #[test]
    fn finds_retries_and_forgets_truncated_batches() {
        let mut t = ProducerTable::default();
        t.observe(&header(7, 0, 10, 3));
        t.observe(&header(7, 3, 13, 2));
        t.observe(&header(0, 0, 15, 1));
        assert_eq!(t.find(7, 3), Some(StoredBatch { base_sequence: 3, base_offset: 13, last_offset: 14 }));
        assert_eq!(t.find(7, 5), None);
        assert_eq!(t.find(0, 0), None, "producer id 0 is not idempotent");
        t.truncate(13);
        assert_eq!(t.find(7, 3), None);
        assert!(t.find(7, 0).is_some());
    }
}
