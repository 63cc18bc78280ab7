//! The record batch: the unit that is produced, stored, replicated and served.
//!
//! A batch is a fixed 64-byte header followed by records. All integers are little-endian.
//! The leader stamps `base_offset` and `leader_epoch` when it appends; both lie *outside*
//! the CRC, so the bytes a producer sent are stored and served unchanged and the CRC the
//! producer computed stays valid end to end (producer -> broker -> disk -> consumer).
//!
//! ```text
//! off  size  field             covered by CRC
//!   0    8   base_offset       no  (stamped by the leader)
//!   8    4   leader_epoch      no  (stamped by the leader)
//!  12    4   batch_len         no  (a wrong length makes the CRC range wrong, so it is caught)
//!  16    4   crc32c            -   (CRC32C of bytes [20, batch_len))
//!  20    4   magic "QRB1"      yes
//!  24    2   attributes        yes (0 from producers; bit 4 (0x10): control batch, leaders only)
//!  26    2   producer_epoch    yes
//!  28    4   record_count      yes
//!  32    8   first_timestamp   yes (ms since the Unix epoch)
//!  40    8   max_timestamp     yes
//!  48    8   producer_id       yes (0: not idempotent)
//!  56    4   base_sequence     yes
//!  60    4   reserved (zero)   yes
//!  64        records
//! ```
//!
//! A record is `ts_delta u32 | key_len u32 (u32::MAX: no key) | key | value_len u32 | value`.
//! Its offset is `base_offset + index within the batch`.

use bytes::Bytes;
use thiserror::Error;

use crate::limits::{MAX_BATCH_BYTES, MAX_RECORDS_PER_BATCH};

/// Size of the batch header.
pub const BATCH_HEADER_BYTES: usize = 64;
/// Magic number of the current batch format.
pub const BATCH_MAGIC: u32 = u32::from_le_bytes(*b"QRB1");
/// First byte covered by the batch CRC.
const CRC_START: usize = 20;
/// Fixed bytes of one record besides its key and value.
pub const RECORD_OVERHEAD_BYTES: usize = 12;
const NO_KEY: u32 = u32::MAX;

mod at {
    pub const BASE_OFFSET: usize = 0;
    pub const LEADER_EPOCH: usize = 8;
    pub const LENGTH: usize = 12;
    pub const CRC: usize = 16;
    pub const MAGIC: usize = 20;
    pub const ATTRIBUTES: usize = 24;
    pub const PRODUCER_EPOCH: usize = 26;
    pub const RECORD_COUNT: usize = 28;
    pub const FIRST_TS: usize = 32;
    pub const MAX_TS: usize = 40;
    pub const PRODUCER_ID: usize = 48;
    pub const BASE_SEQUENCE: usize = 56;
    pub const RESERVED: usize = 60;
}

/// Why a batch was rejected.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BatchError {
    #[error("batch truncated: {have} bytes, need {need}")]
    Truncated { have: usize, need: usize },
    #[error("bad batch magic {0:#010x}")]
    BadMagic(u32),
    #[error("batch length {0} out of range")]
    BadLength(u32),
    #[error("batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("unsupported batch attributes {0:#06x}")]
    BadAttributes(u16),
    #[error("malformed records: {0}")]
    BadRecords(&'static str),
    #[error("empty batch")]
    Empty,
}

/// The decoded header of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: u64,
    pub leader_epoch: u32,
    pub batch_len: u32,
    pub crc: u32,
    pub producer_epoch: u16,
    pub record_count: u32,
    pub first_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: u64,
    pub base_sequence: u32,
    pub attributes: u16,
}

/// Attribute bit of a control batch: written by a leader (the epoch-start marker), replicated
/// and stored like data, skipped by consumers.
pub const ATTR_CONTROL: u16 = 0x10;

impl BatchHeader {
    /// A control batch carries no messages for consumers.
    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }

    /// Offset of the last record in the batch.
    pub fn last_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count) - 1
    }
    /// Offset just after the batch.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads the header fields without checking the CRC or records. `bytes` must hold a header.
pub fn peek_header(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    if bytes.len() < BATCH_HEADER_BYTES {
        return Err(BatchError::Truncated { have: bytes.len(), need: BATCH_HEADER_BYTES });
    }
    let magic = u32_at(bytes, at::MAGIC);
    if magic != BATCH_MAGIC {
        return Err(BatchError::BadMagic(magic));
    }
    let batch_len = u32_at(bytes, at::LENGTH);
    if (batch_len as usize) < BATCH_HEADER_BYTES || batch_len as usize > MAX_BATCH_BYTES {
        return Err(BatchError::BadLength(batch_len));
    }
    let record_count = u32_at(bytes, at::RECORD_COUNT);
    if record_count == 0 {
        return Err(BatchError::Empty);
    }
    if record_count > MAX_RECORDS_PER_BATCH {
        return Err(BatchError::BadRecords("too many records"));
    }
    Ok(BatchHeader {
        base_offset: u64_at(bytes, at::BASE_OFFSET),
        leader_epoch: u32_at(bytes, at::LEADER_EPOCH),
        batch_len,
        crc: u32_at(bytes, at::CRC),
        producer_epoch: u16_at(bytes, at::PRODUCER_EPOCH),
        record_count,
        first_timestamp: u64_at(bytes, at::FIRST_TS) as i64,
        max_timestamp: u64_at(bytes, at::MAX_TS) as i64,
        producer_id: u64_at(bytes, at::PRODUCER_ID),
        base_sequence: u32_at(bytes, at::BASE_SEQUENCE),
        attributes: u16_at(bytes, at::ATTRIBUTES),
    })
}

/// Checks header and CRC of the batch at the start of `bytes` (which may hold more after it).
///
/// This is the check on every read from disk and by every consumer: cheap (CRC32C runs at
/// tens of GB/s) and enough to catch any corruption since the producer computed the CRC.
pub fn check_batch(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = peek_header(bytes)?;
    let len = header.batch_len as usize;
    if bytes.len() < len {
        return Err(BatchError::Truncated { have: bytes.len(), need: len });
    }
    let computed = crc32c::crc32c(&bytes[CRC_START..len]);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch { stored: header.crc, computed });
    }
    Ok(header)
}

/// Full validation of a batch arriving from a producer: header, CRC, reserved fields and the
/// structure of every record, so that nothing malformed is ever stored.
pub fn validate_batch(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = check_batch(bytes)?;
    let attributes = u16_at(bytes, at::ATTRIBUTES);
    if attributes != 0 {
        return Err(BatchError::BadAttributes(attributes));
    }
    if u32_at(bytes, at::RESERVED) != 0 {
        return Err(BatchError::BadRecords("reserved header field is not zero"));
    }
    if header.max_timestamp < header.first_timestamp {
        return Err(BatchError::BadRecords("max_timestamp before first_timestamp"));
    }
    let body = &bytes[BATCH_HEADER_BYTES..header.batch_len as usize];
    let mut records = RecordIter { body, remaining: header.record_count, next_offset: 0, first_timestamp: 0 };
    for _ in 0..header.record_count {
        match records.next() {
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e),
            None => return Err(BatchError::BadRecords("fewer records than record_count")),
        }
    }
    if !records.body.is_empty() {
        return Err(BatchError::BadRecords("trailing bytes after the last record"));
    }
    Ok(header)
}

/// Stamps the leader-assigned fields. They lie outside the CRC, so the batch stays valid.
pub fn stamp_batch(bytes: &mut [u8], base_offset: u64, leader_epoch: u32) {
    bytes[at::BASE_OFFSET..at::BASE_OFFSET + 8].copy_from_slice(&base_offset.to_le_bytes());
    bytes[at::LEADER_EPOCH..at::LEADER_EPOCH + 4].copy_from_slice(&leader_epoch.to_le_bytes());
}

/// Rewrites the producer fields of a finished batch (id, epoch, base sequence) and its CRC,
/// which covers them. Used by a producer that must renumber batches it has not yet had
/// acknowledged (a new producer epoch after a sequence it could not recover).
pub fn restamp_producer(bytes: &mut [u8], producer_id: u64, producer_epoch: u16, base_sequence: u32) {
    bytes[at::PRODUCER_ID..at::PRODUCER_ID + 8].copy_from_slice(&producer_id.to_le_bytes());
    bytes[at::PRODUCER_EPOCH..at::PRODUCER_EPOCH + 2].copy_from_slice(&producer_epoch.to_le_bytes());
    bytes[at::BASE_SEQUENCE..at::BASE_SEQUENCE + 4].copy_from_slice(&base_sequence.to_le_bytes());
    let len = (u32_at(bytes, at::LENGTH) as usize).min(bytes.len());
    let crc = crc32c::crc32c(&bytes[CRC_START..len]);
    bytes[at::CRC..at::CRC + 4].copy_from_slice(&crc.to_le_bytes());
}

/// One record, borrowed from its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub offset: u64,
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
}

/// Iterates the records of one batch; yields an error (once) on malformed bytes.
pub struct RecordIter<'a> {
    body: &'a [u8],
    remaining: u32,
    next_offset: u64,
    first_timestamp: i64,
}

impl<'a> RecordIter<'a> {
    /// Iterates the records of a batch that passed [`check_batch`].
    pub fn new(batch: &'a [u8], header: &BatchHeader) -> Self {
        RecordIter {
            body: &batch[BATCH_HEADER_BYTES..header.batch_len as usize],
            remaining: header.record_count,
            next_offset: header.base_offset,
            first_timestamp: header.first_timestamp,
        }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.body.len() < n {
            return None;
        }
        let (head, rest) = self.body.split_at(n);
        self.body = rest;
        Some(head)
    }

    fn take_u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    fn next_record(&mut self) -> Result<Record<'a>, BatchError> {
        const TRUNCATED: BatchError = BatchError::BadRecords("record runs past the batch end");
        let ts_delta = self.take_u32().ok_or(TRUNCATED)?;
        let key_len = self.take_u32().ok_or(TRUNCATED)?;
        let key = if key_len == NO_KEY { None } else { Some(self.take(key_len as usize).ok_or(TRUNCATED)?) };
        let value_len = self.take_u32().ok_or(TRUNCATED)?;
        let value = self.take(value_len as usize).ok_or(TRUNCATED)?;
        let offset = self.next_offset;
        self.next_offset += 1;
        Ok(Record { offset, timestamp: self.first_timestamp.saturating_add(i64::from(ts_delta)), key, value })
    }
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<Record<'a>, BatchError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        let result = self.next_record();
        // After an error the rest of the batch cannot be trusted: stop.
        self.remaining = if result.is_err() { 0 } else { self.remaining - 1 };
        Some(result)
    }
}

/// Builds one batch from records, computing the CRC. Used by producers.
pub struct BatchBuilder {
    buf: Vec<u8>,
    record_count: u32,
    first_timestamp: i64,
    max_timestamp: i64,
}

impl BatchBuilder {
    /// A builder with room for `capacity` bytes of records.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(BATCH_HEADER_BYTES + capacity);
        buf.resize(BATCH_HEADER_BYTES, 0);
        BatchBuilder { buf, record_count: 0, first_timestamp: 0, max_timestamp: 0 }
    }

    /// Bytes the batch would have if finished now.
    pub fn len_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Records added so far.
    pub fn record_count(&self) -> u32 {
        self.record_count
    }

    /// Bytes a record with this key and value adds to a batch.
    pub fn record_bytes(key: Option<&[u8]>, value: &[u8]) -> usize {
        RECORD_OVERHEAD_BYTES + key.map_or(0, <[u8]>::len) + value.len()
    }

    /// Appends a record. Timestamps are clamped so the batch stays valid (deltas are
    /// non-negative and fit 32 bits), whatever clock the caller has.
    pub fn push(&mut self, key: Option<&[u8]>, value: &[u8], timestamp_ms: i64) {
        if self.record_count == 0 {
            self.first_timestamp = timestamp_ms;
            self.max_timestamp = timestamp_ms;
        }
        let ts = timestamp_ms.clamp(self.first_timestamp, self.first_timestamp + i64::from(u32::MAX));
        self.max_timestamp = self.max_timestamp.max(ts);
        let delta = (ts - self.first_timestamp) as u32;
        self.buf.extend_from_slice(&delta.to_le_bytes());
        match key {
            Some(k) => {
                self.buf.extend_from_slice(&(k.len() as u32).to_le_bytes());
                self.buf.extend_from_slice(k);
            }
            None => self.buf.extend_from_slice(&NO_KEY.to_le_bytes()),
        }
        self.buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(value);
        self.record_count += 1;
    }

    /// The epoch-start marker a new leader appends: one record whose value is the epoch.
    pub fn control(leader_epoch: u32, timestamp_ms: i64) -> Bytes {
        let mut b = BatchBuilder::with_capacity(32);
        b.push(Some(b"epoch-start"), &leader_epoch.to_le_bytes(), timestamp_ms);
        b.finish_with_attributes(0, 0, 0, ATTR_CONTROL)
    }

    /// Finishes the batch: writes the header and the CRC. `base_offset` is left 0 for the leader.
    pub fn finish(self, producer_id: u64, producer_epoch: u16, base_sequence: u32) -> Bytes {
        self.finish_with_attributes(producer_id, producer_epoch, base_sequence, 0)
    }

    fn finish_with_attributes(
        mut self,
        producer_id: u64,
        producer_epoch: u16,
        base_sequence: u32,
        attributes: u16,
    ) -> Bytes {
        let len = self.buf.len() as u32;
        let b = &mut self.buf;
        b[at::LENGTH..at::LENGTH + 4].copy_from_slice(&len.to_le_bytes());
        b[at::MAGIC..at::MAGIC + 4].copy_from_slice(&BATCH_MAGIC.to_le_bytes());
        b[at::ATTRIBUTES..at::ATTRIBUTES + 2].copy_from_slice(&attributes.to_le_bytes());
        b[at::PRODUCER_EPOCH..at::PRODUCER_EPOCH + 2].copy_from_slice(&producer_epoch.to_le_bytes());
        b[at::RECORD_COUNT..at::RECORD_COUNT + 4].copy_from_slice(&self.record_count.to_le_bytes());
        b[at::FIRST_TS..at::FIRST_TS + 8].copy_from_slice(&self.first_timestamp.to_le_bytes());
        b[at::MAX_TS..at::MAX_TS + 8].copy_from_slice(&self.max_timestamp.to_le_bytes());
        b[at::PRODUCER_ID..at::PRODUCER_ID + 8].copy_from_slice(&producer_id.to_le_bytes());
        b[at::BASE_SEQUENCE..at::BASE_SEQUENCE + 4].copy_from_slice(&base_sequence.to_le_bytes());
        b[at::RESERVED..at::RESERVED + 4].copy_from_slice(&0u32.to_le_bytes());
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[at::CRC..at::CRC + 4].copy_from_slice(&crc.to_le_bytes());
        Bytes::from(self.buf)
    }
}

/// Walks a buffer of concatenated batches, checking each one's header and CRC.
///
/// Yields `(header, batch bytes)`; stops after the first error, which it yields.
pub struct BatchIter<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> BatchIter<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        BatchIter { rest: bytes, failed: false }
    }
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Result<(BatchHeader, &'a [u8]), BatchError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.failed {
            return None;
        }
        match check_batch(self.rest) {
            Ok(h) => {
                let (batch, rest) = self.rest.split_at(h.batch_len as usize);
                self.rest = rest;
                Some(Ok((h, batch)))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type TestRecord = (Option<Vec<u8>>, Vec<u8>, i64);

    fn build(records: &[TestRecord]) -> Bytes {
        let mut b = BatchBuilder::with_capacity(128);
        for (k, v, ts) in records {
            b.push(k.as_deref(), v, *ts);
        }
        b.finish(7, 1, 42)
    }

    #[test]
    fn restamping_the_producer_fields_keeps_the_batch_valid() {
        let mut bytes = build(&[(None, b"a".to_vec(), 5), (Some(b"k".to_vec()), b"b".to_vec(), 6)]).to_vec();
        restamp_producer(&mut bytes, 99, 3, 1000);
        let h = validate_batch(&bytes).expect("still valid");
        assert_eq!((h.producer_id, h.producer_epoch, h.base_sequence), (99, 3, 1000));
        assert_eq!(h.record_count, 2);
    }

    #[test]
    fn stamping_keeps_the_crc_valid() {
        let batch = build(&[(None, b"a".to_vec(), 10), (Some(b"k".to_vec()), b"bc".to_vec(), 12)]);
        let mut bytes = batch.to_vec();
        stamp_batch(&mut bytes, 1000, 3);
        let h = validate_batch(&bytes).unwrap();
        assert_eq!((h.base_offset, h.leader_epoch, h.record_count), (1000, 3, 2));
        assert_eq!((h.producer_id, h.producer_epoch, h.base_sequence), (7, 1, 42));
        let recs: Vec<_> = RecordIter::new(&bytes, &h).map(Result::unwrap).collect();
        assert_eq!(recs[0], Record { offset: 1000, timestamp: 10, key: None, value: b"a" });
        assert_eq!(recs[1], Record { offset: 1001, timestamp: 12, key: Some(b"k"), value: b"bc" });
    }

    #[test]
    fn every_single_bit_flip_in_the_covered_range_is_detected() {
        let batch = build(&[(Some(b"key".to_vec()), vec![9u8; 100], 5)]).to_vec();
        for byte in CRC_START - 4..batch.len() {
            for bit in 0..8 {
                let mut b = batch.clone();
                b[byte] ^= 1 << bit;
                assert!(validate_batch(&b).is_err(), "flip at byte {byte} bit {bit} undetected");
            }
        }
    }

    #[test]
    fn control_batches_are_valid_on_disk_but_refused_from_producers() {
        let control = BatchBuilder::control(7, 1);
        let h = check_batch(&control).unwrap();
        assert!(h.is_control());
        assert_eq!(validate_batch(&control), Err(BatchError::BadAttributes(ATTR_CONTROL)));
        assert!(!check_batch(&build(&[(None, b"x".to_vec(), 1)])).unwrap().is_control());
    }

    #[test]
    fn empty_batches_and_bad_lengths_are_rejected() {
        let empty = BatchBuilder::with_capacity(0).finish(0, 0, 0);
        assert_eq!(validate_batch(&empty), Err(BatchError::Empty));
        let mut b = build(&[(None, b"x".to_vec(), 1)]).to_vec();
        b[at::LENGTH..at::LENGTH + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(validate_batch(&b), Err(BatchError::BadLength(_))));
    }

    fn arb_records() -> impl Strategy<Value = Vec<TestRecord>> {
        prop::collection::vec(
            (
                prop::option::of(prop::collection::vec(any::<u8>(), 0..16)),
                prop::collection::vec(any::<u8>(), 0..300),
                0i64..1 << 40,
            ),
            1..20,
        )
    }

    proptest! {
        #[test]
        fn round_trip(records in arb_records(), base in 0u64..1 << 50) {
            let mut bytes = build(&records).to_vec();
            stamp_batch(&mut bytes, base, 1);
            let h = validate_batch(&bytes).unwrap();
            let got: Vec<_> = RecordIter::new(&bytes, &h).map(Result::unwrap).collect();
            prop_assert_eq!(got.len(), records.len());
            for (i, (r, (k, v, _))) in got.iter().zip(&records).enumerate() {
                prop_assert_eq!(r.offset, base + i as u64);
                prop_assert_eq!(r.key, k.as_deref());
                prop_assert_eq!(r.value, &v[..]);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let _ = validate_batch(&bytes);
            for item in BatchIter::new(&bytes) { let _ = item; }
        }

        #[test]
        fn truncation_is_always_detected(records in arb_records(), cut in any::<prop::sample::Index>()) {
            let bytes = build(&records);
            let cut = cut.index(bytes.len());
            prop_assert!(validate_batch(&bytes[..cut]).is_err());
        }

        #[test]
        fn corrupting_a_byte_is_detected(records in arb_records(), pos in any::<prop::sample::Index>(), x in 1u8..=255) {
            let mut bytes = build(&records).to_vec();
            let pos = CRC_START - 4 + pos.index(bytes.len() - (CRC_START - 4));
            bytes[pos] ^= x;
            prop_assert!(validate_batch(&bytes).is_err());
        }

        #[test]
        fn forged_crc_over_malformed_records_is_rejected(records in arb_records(), extra in prop::collection::vec(any::<u8>(), 1..8)) {
            // A producer that computes a valid CRC over malformed records must still be refused.
            let mut bytes = build(&records).to_vec();
            bytes.extend_from_slice(&extra);
            let len = bytes.len() as u32;
            bytes[at::LENGTH..at::LENGTH + 4].copy_from_slice(&len.to_le_bytes());
            let crc = crc32c::crc32c(&bytes[CRC_START..]);
            bytes[at::CRC..at::CRC + 4].copy_from_slice(&crc.to_le_bytes());
            prop_assert!(check_batch(&bytes).is_ok());
            prop_assert!(validate_batch(&bytes).is_err());
        }
    }
}
