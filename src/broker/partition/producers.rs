//! Idempotent producers on one partition: the sequence rules that keep each producer's
//! records in the order it sent them, each exactly once, and the table they are checked
//! against.
//!
//! A producer (an id the broker allocated, and an epoch the producer raises when it must
//! start its sequences over) numbers the records it sends to each partition: the first
//! batch starts at sequence 0, each next one where the previous ended. The leader accepts a
//! batch only if it continues its producer's sequence; an exact repeat of a batch it stored
//! recently is answered with the offsets it already has; anything else is refused with a
//! typed error (see [`SequenceError`]), never silently accepted.
//!
//! Every replica keeps the table as batches enter its log (the leader's appends, a
//! follower's replicated ones), so a new leader has it already. It survives restarts as a
//! snapshot file per segment roll and at clean shutdown (`<offset>.producers`: the state
//! of every batch below that offset), plus a replay of the batch headers after it.
//!
//! Invariants:
//! - each producer's remembered batches are in log order, with no two at one offset;
//! - batches below the log's written end are trimmed to the newest
//!   [`PRODUCER_BATCHES_REMEMBERED`]; batches above it (appended, not yet written) are never
//!   trimmed, so forgetting the unwritten tail ([`ProducerTable::truncate`] at or above the
//!   written end) leaves exactly the state of the written log;
//! - a producer is present only with at least one remembered batch.

use std::collections::{HashMap, VecDeque};

use thiserror::Error;

use crate::limits::{MAX_PRODUCERS_PER_PARTITION, PRODUCER_BATCHES_REMEMBERED};
use crate::protocol::batch::{add_sequence, sequence_before, BatchHeader};

/// One batch a producer stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredBatch {
    pub producer_epoch: u16,
    pub base_sequence: u32,
    pub record_count: u32,
    pub base_offset: u64,
}

impl StoredBatch {
    pub fn last_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count) - 1
    }

    /// The sequence the producer's next batch must start at.
    fn next_sequence(&self) -> u32 {
        add_sequence(self.base_sequence, self.record_count)
    }
}

/// What the leader does with an idempotent batch that passed the sequence rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// It continues the producer's sequence: append it.
    Append,
    /// It repeats a batch already stored: answer with these offsets, store nothing.
    Duplicate(StoredBatch),
}

/// Why a batch was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SequenceError {
    /// An earlier batch of the producer is missing here: the producer must send that one
    /// first (retriable).
    #[error("out-of-order sequence from producer {producer_id} epoch {epoch}: expected {expected}, got {got}")]
    OutOfOrder { producer_id: u64, epoch: u16, expected: u32, got: u32 },
    /// The partition does not remember this producer and the batch does not start a
    /// sequence: it cannot tell a gap from a retry.
    #[error(
        "producer {producer_id} is unknown to this partition (forgotten, or its batches were removed by \
         retention) and sequence {got} does not start one; start a new producer epoch at sequence 0"
    )]
    UnknownProducer { producer_id: u64, got: u32 },
    /// A newer epoch of the producer id wrote here.
    #[error("producer {producer_id} epoch {epoch} is fenced: epoch {current} has written to this partition")]
    Fenced { producer_id: u64, epoch: u16, current: u16 },
    /// A repeat of a batch stored longer ago than the partition remembers offsets for.
    #[error(
        "sequence {got} of producer {producer_id} was stored before the oldest batch this partition \
         remembers (sequence {oldest}); where it is cannot be told"
    )]
    DuplicateTooOld { producer_id: u64, got: u32, oldest: u32 },
}

/// The producers of one partition and their recent batches.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProducerTable {
    producers: HashMap<u64, VecDeque<StoredBatch>>,
}

impl ProducerTable {
    /// The sequence rules for a batch about to be appended. Batches without a producer id
    /// (not idempotent) are always appended.
    pub fn check(&self, header: &BatchHeader) -> Result<Admission, SequenceError> {
        let (producer_id, epoch, got) = (header.producer_id, header.producer_epoch, header.base_sequence);
        if producer_id == 0 {
            return Ok(Admission::Append);
        }
        let Some(batches) = self.producers.get(&producer_id) else {
            return if got == 0 {
                Ok(Admission::Append)
            } else {
                Err(SequenceError::UnknownProducer { producer_id, got })
            };
        };
        let last = *batches.back().expect("a tracked producer has a batch");
        if epoch < last.producer_epoch {
            return Err(SequenceError::Fenced { producer_id, epoch, current: last.producer_epoch });
        }
        if epoch > last.producer_epoch {
            // A new epoch starts its sequence over.
            return if got == 0 {
                Ok(Admission::Append)
            } else {
                Err(SequenceError::OutOfOrder { producer_id, epoch, expected: 0, got })
            };
        }
        if let Some(stored) = batches.iter().rev().find(|b| b.producer_epoch == epoch && b.base_sequence == got) {
            if stored.record_count == header.record_count {
                return Ok(Admission::Duplicate(*stored));
            }
        }
        let expected = last.next_sequence();
        if got == expected {
            return Ok(Admission::Append);
        }
        if sequence_before(got, expected) {
            let oldest = batches.iter().find(|b| b.producer_epoch == epoch).map_or(expected, |b| b.base_sequence);
            if sequence_before(got, oldest) {
                return Err(SequenceError::DuplicateTooOld { producer_id, got, oldest });
            }
        }
        Err(SequenceError::OutOfOrder { producer_id, epoch, expected, got })
    }

    /// Notes a batch that entered the log (appended by the leader, or replicated: a
    /// follower takes what its leader decided, without checking). `written_end`: the log's
    /// written end, below which batches may be trimmed.
    pub fn observe(&mut self, header: &BatchHeader, written_end: u64) {
        if header.producer_id == 0 || header.record_count == 0 || header.is_control() {
            return;
        }
        if !self.producers.contains_key(&header.producer_id) && self.producers.len() >= MAX_PRODUCERS_PER_PARTITION {
            self.evict_least_recent();
        }
        let batches = self.producers.entry(header.producer_id).or_default();
        batches.push_back(StoredBatch {
            producer_epoch: header.producer_epoch,
            base_sequence: header.base_sequence,
            record_count: header.record_count,
            base_offset: header.base_offset,
        });
        while batches.len() > PRODUCER_BATCHES_REMEMBERED
            && batches.front().is_some_and(|b| b.base_offset < written_end)
        {
            batches.pop_front();
        }
    }

    /// Forgets the producer that wrote least recently (the table is full).
    fn evict_least_recent(&mut self) {
        let oldest =
            self.producers.iter().min_by_key(|(_, b)| b.back().map_or(0, |b| b.base_offset)).map(|(&id, _)| id);
        if let Some(id) = oldest {
            self.producers.remove(&id);
        }
    }

    /// Forgets batches at and after `offset`. Exact (the table then describes the log below
    /// `offset`) when `offset` is at or above the written end; below it the table must be
    /// rebuilt from the log instead (see the module docs).
    pub fn truncate(&mut self, offset: u64) {
        for batches in self.producers.values_mut() {
            while batches.back().is_some_and(|b| b.base_offset >= offset) {
                batches.pop_back();
            }
        }
        self.producers.retain(|_, b| !b.is_empty());
    }

    /// Retention removed everything below `log_start`: producers whose batches are all gone
    /// are forgotten (their next batch gets `unknown_producer`), and no offset below it is
    /// given out for a retry.
    pub fn forget_before(&mut self, log_start: u64) {
        for batches in self.producers.values_mut() {
            while batches.front().is_some_and(|b| b.base_offset < log_start) {
                batches.pop_front();
            }
        }
        self.producers.retain(|_, b| !b.is_empty());
    }

    /// The last batch a producer stored, if the table knows it.
    #[cfg(test)]
    pub fn last_batch(&self, producer_id: u64) -> Option<StoredBatch> {
        self.producers.get(&producer_id)?.back().copied()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// The table as a snapshot file: the state of the batches below `offset` (the log's
    /// written end, where the table is exact).
    pub fn encode_snapshot(&self, offset: u64) -> Vec<u8> {
        let mut ids: Vec<u64> = self.producers.keys().copied().collect();
        ids.sort_unstable();
        let mut out = Vec::with_capacity(24 + ids.len() * 64);
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&offset.to_le_bytes());
        let kept: Vec<(u64, Vec<&StoredBatch>)> = ids
            .iter()
            .map(|id| (*id, self.producers[id].iter().filter(|b| b.base_offset < offset).collect::<Vec<_>>()))
            .filter(|(_, b)| !b.is_empty())
            .collect();
        out.extend_from_slice(&(kept.len() as u32).to_le_bytes());
        for (id, batches) in kept {
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&(batches.len() as u32).to_le_bytes());
            for b in batches {
                out.extend_from_slice(&b.producer_epoch.to_le_bytes());
                out.extend_from_slice(&b.base_sequence.to_le_bytes());
                out.extend_from_slice(&b.record_count.to_le_bytes());
                out.extend_from_slice(&b.base_offset.to_le_bytes());
            }
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Reads a snapshot file: its offset and table. Anything malformed (a bad CRC, a length
    /// beyond the limits, batches out of order) is refused.
    pub fn decode_snapshot(bytes: &[u8]) -> Result<(u64, ProducerTable), SnapshotError> {
        let body_len = bytes.len().checked_sub(4).ok_or(SnapshotError("too short"))?;
        let (body, crc) = bytes.split_at(body_len);
        if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err(SnapshotError("CRC mismatch"));
        }
        let mut r = Reader(body);
        if r.take(4)? != SNAPSHOT_MAGIC {
            return Err(SnapshotError("bad magic"));
        }
        let offset = r.u64()?;
        let count = r.u32()? as usize;
        if count > MAX_PRODUCERS_PER_PARTITION {
            return Err(SnapshotError("too many producers"));
        }
        let mut table = ProducerTable::default();
        for _ in 0..count {
            let id = r.u64()?;
            let n = r.u32()? as usize;
            if id == 0 || n == 0 || n > SNAPSHOT_MAX_BATCHES_PER_PRODUCER {
                return Err(SnapshotError("bad producer entry"));
            }
            let mut batches = VecDeque::with_capacity(n);
            for _ in 0..n {
                let b = StoredBatch {
                    producer_epoch: r.u16()?,
                    base_sequence: r.u32()?,
                    record_count: r.u32()?,
                    base_offset: r.u64()?,
                };
                let follows = batches.back().is_none_or(|p: &StoredBatch| p.last_offset() < b.base_offset);
                if b.record_count == 0
                    || b.base_offset.checked_add(u64::from(b.record_count)).is_none_or(|end| end > offset)
                    || !follows
                {
                    return Err(SnapshotError("bad batch entry"));
                }
                batches.push_back(b);
            }
            if table.producers.insert(id, batches).is_some() {
                return Err(SnapshotError("a producer listed twice"));
            }
        }
        if !r.0.is_empty() {
            return Err(SnapshotError("trailing bytes"));
        }
        Ok((offset, table))
    }
}

const SNAPSHOT_MAGIC: &[u8; 4] = b"QPT1";
/// Batches per producer a snapshot may list: the remembered ones plus those appended but not
/// yet written when it was taken.
const SNAPSHOT_MAX_BATCHES_PER_PRODUCER: usize = 1 << 16;

/// A producer snapshot file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("producer snapshot: {0}")]
pub struct SnapshotError(&'static str);

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        if self.0.len() < n {
            return Err(SnapshotError("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u16(&mut self) -> Result<u16, SnapshotError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::batch::{check_batch, stamp_batch, BatchBuilder};

    fn header(pid: u64, epoch: u16, seq: u32, base: u64, records: u32) -> BatchHeader {
        let mut b = BatchBuilder::with_capacity(64);
        for _ in 0..records {
            b.push(None, b"v", 1);
        }
        let mut bytes = b.finish(pid, epoch, seq).to_vec();
        stamp_batch(&mut bytes, base, 1);
        check_batch(&bytes).unwrap()
    }

    /// A table holding producer 7's batches of 3, 2 and 4 records at offsets 10, 13, 15.
    fn table() -> ProducerTable {
        let mut t = ProducerTable::default();
        t.observe(&header(7, 0, 0, 10, 3), 0);
        t.observe(&header(7, 0, 3, 13, 2), 0);
        t.observe(&header(7, 0, 5, 15, 4), 0);
        t
    }

    #[test]
    fn a_batch_that_continues_the_sequence_is_appended() {
        assert_eq!(table().check(&header(7, 0, 9, 0, 1)), Ok(Admission::Append));
        assert_eq!(ProducerTable::default().check(&header(8, 0, 0, 0, 5)), Ok(Admission::Append), "a new producer");
        assert_eq!(table().check(&header(0, 0, 77, 0, 1)), Ok(Admission::Append), "id 0 is not idempotent");
    }

    #[test]
    fn an_exact_duplicate_is_answered_with_its_original_offsets() {
        let dup = table().check(&header(7, 0, 3, 0, 2)).unwrap();
        assert_eq!(
            dup,
            Admission::Duplicate(StoredBatch { producer_epoch: 0, base_sequence: 3, record_count: 2, base_offset: 13 })
        );
        let Admission::Duplicate(d) = dup else { unreachable!() };
        assert_eq!(d.last_offset(), 14);
    }

    #[test]
    fn a_gap_is_refused_as_out_of_order() {
        assert_eq!(
            table().check(&header(7, 0, 12, 0, 1)),
            Err(SequenceError::OutOfOrder { producer_id: 7, epoch: 0, expected: 9, got: 12 })
        );
        // A repeat of a stored sequence with another size is not that batch.
        assert!(matches!(table().check(&header(7, 0, 3, 0, 1)), Err(SequenceError::OutOfOrder { .. })));
        // A first batch that does not start at 0: the partition cannot know it is not a gap.
        assert_eq!(
            ProducerTable::default().check(&header(8, 0, 4, 0, 1)),
            Err(SequenceError::UnknownProducer { producer_id: 8, got: 4 })
        );
    }

    #[test]
    fn epochs_fence_zombies_and_start_sequences_over() {
        let mut t = table();
        assert_eq!(t.check(&header(7, 1, 0, 0, 1)), Ok(Admission::Append), "a new epoch starts at 0");
        assert!(matches!(t.check(&header(7, 1, 9, 0, 1)), Err(SequenceError::OutOfOrder { expected: 0, .. })));
        t.observe(&header(7, 1, 0, 19, 1), 0);
        assert_eq!(
            t.check(&header(7, 0, 9, 0, 1)),
            Err(SequenceError::Fenced { producer_id: 7, epoch: 0, current: 1 }),
            "the old epoch is a zombie now"
        );
        assert_eq!(t.check(&header(7, 1, 1, 0, 1)), Ok(Admission::Append));
    }

    #[test]
    fn an_evicted_producer_is_unknown_never_silently_accepted() {
        let mut t = ProducerTable::default();
        for pid in 1..=MAX_PRODUCERS_PER_PARTITION as u64 {
            t.observe(&header(pid, 0, 0, pid * 10, 1), u64::MAX);
        }
        assert_eq!(t.len(), MAX_PRODUCERS_PER_PARTITION);
        t.observe(&header(999_999, 0, 0, 1 << 40, 1), u64::MAX);
        assert_eq!(t.len(), MAX_PRODUCERS_PER_PARTITION, "the table is bounded");
        // Producer 1 wrote least recently: forgotten, its next batch is refused with a distinct error.
        assert_eq!(t.check(&header(1, 0, 1, 0, 1)), Err(SequenceError::UnknownProducer { producer_id: 1, got: 1 }));
        assert_eq!(t.check(&header(2, 0, 1, 0, 1)), Ok(Admission::Append), "the others are kept");
    }

    #[test]
    fn a_producer_whose_batches_retention_removed_is_unknown() {
        let mut t = table();
        t.observe(&header(8, 0, 0, 30, 1), 0);
        t.forget_before(20);
        assert_eq!(t.check(&header(7, 0, 9, 0, 1)), Err(SequenceError::UnknownProducer { producer_id: 7, got: 9 }));
        assert_eq!(t.check(&header(8, 0, 1, 0, 1)), Ok(Admission::Append));
        // Part of a producer's batches removed: no offset below the log start is handed out.
        let mut t = table();
        t.forget_before(14);
        assert!(matches!(t.check(&header(7, 0, 0, 0, 3)), Err(SequenceError::DuplicateTooOld { oldest: 5, .. })));
        assert_eq!(t.check(&header(7, 0, 9, 0, 1)), Ok(Admission::Append));
    }

    #[test]
    fn a_truncated_tail_is_forgotten_and_the_sequence_resumes_before_it() {
        let mut t = table();
        t.truncate(13);
        assert_eq!(t.check(&header(7, 0, 3, 0, 2)), Ok(Admission::Append), "the batch at 13 is gone: stored again");
        t.truncate(10);
        assert!(t.is_empty());
    }

    #[test]
    fn only_written_batches_beyond_the_window_are_trimmed() {
        let mut t = ProducerTable::default();
        let n = PRODUCER_BATCHES_REMEMBERED as u64 * 2;
        // Nothing written yet: every batch is kept, so a failed write can drop them exactly.
        for i in 0..n {
            t.observe(&header(5, 0, i as u32, i, 1), 0);
        }
        t.truncate(3);
        assert_eq!(t.check(&header(5, 0, 3, 0, 1)), Ok(Admission::Append));
        // Written: trimmed to the window, the newest kept.
        let mut t = ProducerTable::default();
        for i in 0..n {
            t.observe(&header(5, 0, i as u32, i, 1), i + 1);
        }
        assert!(matches!(t.check(&header(5, 0, 0, 0, 1)), Err(SequenceError::DuplicateTooOld { .. })));
        assert!(matches!(t.check(&header(5, 0, n as u32 - 1, 0, 1)), Ok(Admission::Duplicate(_))));
    }

    #[test]
    fn sequences_wrap_around_at_kafkas_2_to_the_31() {
        let last = crate::protocol::batch::SEQUENCE_SPACE - 2;
        let mut t = ProducerTable::default();
        t.observe(&header(3, 0, last, 0, 2), 0);
        assert_eq!(t.check(&header(3, 0, 0, 0, 1)), Ok(Admission::Append));
        assert!(matches!(t.check(&header(3, 0, last, 0, 2)), Ok(Admission::Duplicate(_))));
        assert!(matches!(t.check(&header(3, 0, 5, 0, 1)), Err(SequenceError::OutOfOrder { expected: 0, .. })));
    }

    #[test]
    fn snapshots_round_trip_and_keep_only_what_precedes_their_offset() {
        let mut t = table();
        t.observe(&header(9, 2, 0, 30, 1), 0);
        let bytes = t.encode_snapshot(31);
        assert_eq!(ProducerTable::decode_snapshot(&bytes), Ok((31, t.clone())));
        let (at, partial) = ProducerTable::decode_snapshot(&t.encode_snapshot(15)).unwrap();
        assert_eq!(at, 15);
        let mut expected = t.clone();
        expected.truncate(15);
        assert_eq!(partial, expected);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(ProducerTable::decode_snapshot(&bad).is_err(), "a flipped byte at {i} is caught");
        }
        assert!(ProducerTable::decode_snapshot(&bytes[..bytes.len() - 1]).is_err());
        assert!(ProducerTable::decode_snapshot(&[]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn garbage_snapshots_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = ProducerTable::decode_snapshot(&bytes);
            // With a valid CRC, the structure checks still hold.
            let mut signed = bytes.clone();
            signed.extend_from_slice(&crc32c::crc32c(&bytes).to_le_bytes());
            let _ = ProducerTable::decode_snapshot(&signed);
        }
    }
}
