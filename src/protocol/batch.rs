//! The record batch: Kafka's RecordBatch v2 (magic 2), the unit that is produced, stored,
//! replicated and served, byte for byte, to native and Kafka clients alike.
//!
//! All integers are big-endian, as in Kafka. The leader stamps `base_offset` and
//! `partition_leader_epoch` when it appends; both lie *outside* the CRC, so the bytes a
//! producer sent are stored and served unchanged and the CRC the producer computed stays
//! valid end to end (producer -> broker -> disk -> consumer).
//!
//! ```text
//! off  size  field                    covered by CRC
//!   0    8   base_offset              no  (stamped by the leader)
//!   8    4   batch_length             no  (bytes after this field; a wrong one makes the CRC range wrong)
//!  12    4   partition_leader_epoch   no  (stamped by the leader)
//!  16    1   magic = 2                no  (checked)
//!  17    4   crc32c                   -   (CRC-32C of bytes [21, end))
//!  21    2   attributes               yes (0 from producers; bit 5 (0x20): control batch, leaders only)
//!  23    4   last_offset_delta        yes (record_count - 1: batches are dense, never compacted)
//!  27    8   base_timestamp           yes (ms since the Unix epoch)
//!  35    8   max_timestamp            yes
//!  43    8   producer_id              yes (-1: not idempotent)
//!  51    2   producer_epoch           yes (-1 without a producer id)
//!  53    4   base_sequence            yes (-1 without a producer id)
//!  57    4   record_count             yes
//!  61        records
//! ```
//!
//! A record is Kafka's: `length varint | attributes i8 (0) | timestamp_delta varlong |
//! offset_delta varint | key_length varint (-1: no key) | key | value_length varint (-1:
//! null) | value | header_count varint | headers (key_length varint | key | value_length
//! varint | value)`, varints zigzag-encoded. Its offset is `base_offset + offset_delta`, and
//! `offset_delta` is its index in the batch. A null value reads as an empty one here, and
//! headers are checked and skipped (a Kafka client gets them as sent).
//!
//! `BatchHeader` keeps Quorra's conventions: `producer_id` 0 means "not idempotent" (-1 on
//! the wire; a batch claiming producer id 0 is refused, and the broker never hands out 0),
//! and `batch_len` is the whole batch's size.

use bytes::Bytes;
use thiserror::Error;

use crate::limits::{MAX_BATCH_BYTES, MAX_RECORDS_PER_BATCH};

/// Size of the batch header.
pub const BATCH_HEADER_BYTES: usize = 61;
/// The magic byte of Kafka's RecordBatch v2, the only batch format stored.
pub const BATCH_MAGIC: u8 = 2;
/// First byte covered by the batch CRC.
const CRC_START: usize = 21;
/// Bytes before `batch_length` counts: the base offset and the length field itself.
const LENGTH_EXCLUDES: usize = 12;
/// Most bytes one record adds besides its key and value: its length, attributes,
/// timestamp delta, offset delta, key and value lengths (varints at their widest) and an
/// empty header count.
pub const RECORD_OVERHEAD_BYTES: usize = 5 + 1 + 10 + 5 + 5 + 5 + 1;

mod at {
    pub const BASE_OFFSET: usize = 0;
    pub const LENGTH: usize = 8;
    pub const LEADER_EPOCH: usize = 12;
    pub const MAGIC: usize = 16;
    pub const CRC: usize = 17;
    pub const ATTRIBUTES: usize = 21;
    pub const LAST_OFFSET_DELTA: usize = 23;
    pub const FIRST_TS: usize = 27;
    pub const MAX_TS: usize = 35;
    pub const PRODUCER_ID: usize = 43;
    pub const PRODUCER_EPOCH: usize = 51;
    pub const BASE_SEQUENCE: usize = 53;
    pub const RECORD_COUNT: usize = 57;
}

/// Why a batch was rejected.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum BatchError {
    #[error("batch truncated: {have} bytes, need {need}")]
    Truncated { have: usize, need: usize },
    #[error("bad batch magic {0} (only Kafka's RecordBatch v2, magic 2, is accepted)")]
    BadMagic(u8),
    #[error("batch length {0} out of range")]
    BadLength(u32),
    #[error("batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("unsupported batch attributes {0:#06x}")]
    BadAttributes(u16),
    #[error("malformed records: {0}")]
    BadRecords(&'static str),
    #[error("bad producer fields: {0}")]
    BadProducer(&'static str),
    #[error("empty batch")]
    Empty,
}

/// The decoded header of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: u64,
    pub leader_epoch: u32,
    /// The whole batch's size in bytes (Kafka's `batch_length` + 12).
    pub batch_len: u32,
    pub crc: u32,
    pub producer_epoch: u16,
    pub record_count: u32,
    pub first_timestamp: i64,
    pub max_timestamp: i64,
    /// 0: not idempotent (-1 on the wire).
    pub producer_id: u64,
    pub base_sequence: u32,
    pub attributes: u16,
}

/// Attribute bit of a control batch (Kafka's): written by a leader (the epoch-start marker),
/// replicated and stored like data, skipped by consumers.
pub const ATTR_CONTROL: u16 = 0x20;
/// Kafka's control record key of the epoch-start marker: version 0, type 2 (`LEADER_CHANGE`,
/// the type KRaft gives the same event), which Kafka clients skip.
const CONTROL_KEY_LEADER_CHANGE: [u8; 4] = [0, 0, 0, 2];

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
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn put(b: &mut [u8], at: usize, bytes: &[u8]) {
    b[at..at + bytes.len()].copy_from_slice(bytes);
}

/// Whether `bytes` could begin a batch: enough bytes for a header and the magic byte where
/// it belongs. Cheap; the recovery scan uses it to look for batches past damage.
pub fn may_start_batch(bytes: &[u8]) -> bool {
    bytes.len() >= BATCH_HEADER_BYTES && bytes[at::MAGIC] == BATCH_MAGIC
}

/// Whether `bytes` begin with a batch of the format Quorra stored before it adopted Kafka's
/// (magic "QRB1" at byte 20), so that such data is refused by name rather than taken for
/// damage.
pub fn is_pre_kafka_batch(bytes: &[u8]) -> bool {
    bytes.len() >= 24 && bytes[20..24] == *b"QRB1"
}

/// Reads the header fields without checking the CRC or records. `bytes` must hold a header.
pub fn peek_header(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    if bytes.len() < BATCH_HEADER_BYTES {
        return Err(BatchError::Truncated { have: bytes.len(), need: BATCH_HEADER_BYTES });
    }
    if bytes[at::MAGIC] != BATCH_MAGIC {
        return Err(BatchError::BadMagic(bytes[at::MAGIC]));
    }
    let length = u32_at(bytes, at::LENGTH);
    let batch_len = (length as usize).saturating_add(LENGTH_EXCLUDES);
    if !(BATCH_HEADER_BYTES..=MAX_BATCH_BYTES).contains(&batch_len) {
        return Err(BatchError::BadLength(length));
    }
    let record_count = u32_at(bytes, at::RECORD_COUNT);
    if record_count == 0 {
        return Err(BatchError::Empty);
    }
    if record_count > MAX_RECORDS_PER_BATCH {
        return Err(BatchError::BadRecords("too many records"));
    }
    if u32_at(bytes, at::LAST_OFFSET_DELTA) != record_count - 1 {
        return Err(BatchError::BadRecords("last_offset_delta is not record_count - 1"));
    }
    let (producer_id, producer_epoch, base_sequence) = producer_fields(bytes)?;
    Ok(BatchHeader {
        base_offset: u64_at(bytes, at::BASE_OFFSET),
        leader_epoch: u32_at(bytes, at::LEADER_EPOCH),
        batch_len: batch_len as u32,
        crc: u32_at(bytes, at::CRC),
        producer_epoch,
        record_count,
        first_timestamp: u64_at(bytes, at::FIRST_TS) as i64,
        max_timestamp: u64_at(bytes, at::MAX_TS) as i64,
        producer_id,
        base_sequence,
        attributes: u16_at(bytes, at::ATTRIBUTES),
    })
}

/// The producer fields in Quorra's convention: (0, 0, 0) for Kafka's "no producer"
/// (-1, -1, -1); a batch with a producer id has a non-negative epoch and sequence.
fn producer_fields(bytes: &[u8]) -> Result<(u64, u16, u32), BatchError> {
    let id = u64_at(bytes, at::PRODUCER_ID) as i64;
    let epoch = u16_at(bytes, at::PRODUCER_EPOCH) as i16;
    let sequence = u32_at(bytes, at::BASE_SEQUENCE) as i32;
    match id {
        -1 => Ok((0, 0, 0)),
        0 => Err(BatchError::BadProducer("producer id 0 is never handed out")),
        id if id < 0 => Err(BatchError::BadProducer("negative producer id")),
        _ if epoch < 0 || sequence < 0 => {
            Err(BatchError::BadProducer("an idempotent batch needs an epoch and a sequence"))
        }
        id => Ok((id as u64, epoch as u16, sequence as u32)),
    }
}

/// Writes the producer fields in Kafka's convention (producer id 0: none, written as -1s).
fn put_producer_fields(b: &mut [u8], producer_id: u64, producer_epoch: u16, base_sequence: u32) {
    let (id, epoch, sequence) = if producer_id == 0 {
        (-1i64, -1i16, -1i32)
    } else {
        (producer_id as i64, producer_epoch as i16, base_sequence as i32)
    };
    put(b, at::PRODUCER_ID, &id.to_be_bytes());
    put(b, at::PRODUCER_EPOCH, &epoch.to_be_bytes());
    put(b, at::BASE_SEQUENCE, &sequence.to_be_bytes());
}

fn write_crc(b: &mut [u8]) {
    let crc = crc32c::crc32c(&b[CRC_START..]);
    put(b, at::CRC, &crc.to_be_bytes());
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

/// Full validation of a batch arriving from a producer: header, CRC, attributes and the
/// structure of every record, so that nothing malformed is ever stored.
pub fn validate_batch(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = check_batch(bytes)?;
    if header.attributes != 0 {
        return Err(BatchError::BadAttributes(header.attributes));
    }
    if header.max_timestamp < header.first_timestamp {
        return Err(BatchError::BadRecords("max_timestamp before base_timestamp"));
    }
    let mut records = RecordIter::new(&bytes[..header.batch_len as usize], &header);
    for index in 0..header.record_count {
        match records.next() {
            Some(Ok(r)) if r.offset != header.base_offset + u64::from(index) => {
                return Err(BatchError::BadRecords("offset_delta is not the record's index"))
            }
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
    put(bytes, at::BASE_OFFSET, &base_offset.to_be_bytes());
    put(bytes, at::LEADER_EPOCH, &leader_epoch.to_be_bytes());
}

/// Rewrites the producer fields of a finished batch (id, epoch, base sequence) and its CRC,
/// which covers them. Used by a producer that must renumber batches it has not yet had
/// acknowledged (a new producer epoch after a sequence it could not recover).
pub fn restamp_producer(bytes: &mut [u8], producer_id: u64, producer_epoch: u16, base_sequence: u32) {
    put_producer_fields(bytes, producer_id, producer_epoch, base_sequence);
    let len = (u32_at(bytes, at::LENGTH) as usize).saturating_add(LENGTH_EXCLUDES).min(bytes.len());
    write_crc(&mut bytes[..len]);
}

/// Sequence numbers live in Kafka's space: 0 to 2^31 - 1, wrapping to 0.
pub const SEQUENCE_SPACE: u32 = 1 << 31;

/// The sequence after `count` records from `base` (Kafka's `incrementSequence`).
pub fn add_sequence(base: u32, count: u32) -> u32 {
    ((u64::from(base) + u64::from(count)) % u64::from(SEQUENCE_SPACE)) as u32
}

/// Whether sequence `a` comes before `b` (less than half the space before it).
pub fn sequence_before(a: u32, b: u32) -> bool {
    let ahead = (u64::from(b) + u64::from(SEQUENCE_SPACE) - u64::from(a) % u64::from(SEQUENCE_SPACE))
        % u64::from(SEQUENCE_SPACE);
    ahead != 0 && ahead < u64::from(SEQUENCE_SPACE / 2)
}

/// One record, borrowed from its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub offset: u64,
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    /// A null value (a Kafka tombstone) reads as empty.
    pub value: &'a [u8],
}

/// Iterates the records of one batch; yields an error (once) on malformed bytes.
pub struct RecordIter<'a> {
    body: &'a [u8],
    remaining: u32,
    base_offset: u64,
    first_timestamp: i64,
}

const TRUNCATED: BatchError = BatchError::BadRecords("record runs past its end");

/// Reads Kafka's zigzag varints from the front of a slice.
struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn varlong(&mut self) -> Result<i64, BatchError> {
        let mut raw = 0u64;
        for i in 0..10 {
            let (&byte, rest) = self.bytes.split_first().ok_or(TRUNCATED)?;
            self.bytes = rest;
            raw |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                if i == 9 && byte > 1 {
                    break;
                }
                return Ok((raw >> 1) as i64 ^ -((raw & 1) as i64));
            }
        }
        Err(BatchError::BadRecords("varint longer than 64 bits"))
    }

    fn varint(&mut self) -> Result<i32, BatchError> {
        i32::try_from(self.varlong()?).map_err(|_| BatchError::BadRecords("varint out of the 32-bit range"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], BatchError> {
        if self.bytes.len() < n {
            return Err(TRUNCATED);
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    /// A length-prefixed byte string; `None` for length -1.
    fn bytes_or_null(&mut self) -> Result<Option<&'a [u8]>, BatchError> {
        match self.varint()? {
            -1 => Ok(None),
            n if n < 0 => Err(BatchError::BadRecords("negative length")),
            n => self.take(n as usize).map(Some),
        }
    }
}

impl<'a> RecordIter<'a> {
    /// Iterates the records of a batch that passed [`check_batch`].
    pub fn new(batch: &'a [u8], header: &BatchHeader) -> Self {
        RecordIter {
            body: &batch[BATCH_HEADER_BYTES..header.batch_len as usize],
            remaining: header.record_count,
            base_offset: header.base_offset,
            first_timestamp: header.first_timestamp,
        }
    }

    fn next_record(&mut self) -> Result<Record<'a>, BatchError> {
        let mut outer = Cursor { bytes: self.body };
        let length = outer.varint()?;
        let length = usize::try_from(length).map_err(|_| BatchError::BadRecords("negative record length"))?;
        let mut c = Cursor { bytes: outer.take(length)? };
        self.body = outer.bytes;
        if c.take(1)?[0] != 0 {
            return Err(BatchError::BadRecords("record attributes are not zero"));
        }
        let timestamp_delta = c.varlong()?;
        let offset_delta = c.varint()?;
        let offset_delta = u32::try_from(offset_delta).map_err(|_| BatchError::BadRecords("negative offset delta"))?;
        let key = c.bytes_or_null()?;
        let value = c.bytes_or_null()?.unwrap_or_default();
        let headers = c.varint()?;
        if headers < 0 {
            return Err(BatchError::BadRecords("negative header count"));
        }
        for _ in 0..headers {
            // Each header takes at least two bytes, so a huge count fails on the bytes.
            if c.bytes_or_null()?.is_none() {
                return Err(BatchError::BadRecords("null header key"));
            }
            c.bytes_or_null()?;
        }
        if !c.bytes.is_empty() {
            return Err(BatchError::BadRecords("record longer than its fields"));
        }
        Ok(Record {
            offset: self.base_offset + u64::from(offset_delta),
            timestamp: self.first_timestamp.saturating_add(timestamp_delta),
            key,
            value,
        })
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

fn put_varlong(buf: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        buf.push((z as u8) | 0x80);
        z >>= 7;
    }
    buf.push(z as u8);
}

fn varlong_len(v: i64) -> usize {
    let z = ((v << 1) ^ (v >> 63)) as u64;
    (64 - z.max(1).leading_zeros() as usize).div_ceil(7)
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

    /// Most bytes a record with this key and value adds to a batch.
    pub fn record_bytes(key: Option<&[u8]>, value: &[u8]) -> usize {
        RECORD_OVERHEAD_BYTES + key.map_or(0, <[u8]>::len) + value.len()
    }

    /// Appends a record.
    pub fn push(&mut self, key: Option<&[u8]>, value: &[u8], timestamp_ms: i64) {
        if self.record_count == 0 {
            self.first_timestamp = timestamp_ms;
            self.max_timestamp = timestamp_ms;
        }
        self.max_timestamp = self.max_timestamp.max(timestamp_ms);
        let timestamp_delta = timestamp_ms.saturating_sub(self.first_timestamp);
        let offset_delta = i64::from(self.record_count);
        let key_len = key.map_or(-1, |k| k.len() as i64);
        let body_len = 1
            + varlong_len(timestamp_delta)
            + varlong_len(offset_delta)
            + varlong_len(key_len)
            + key.map_or(0, <[u8]>::len)
            + varlong_len(value.len() as i64)
            + value.len()
            + 1;
        let b = &mut self.buf;
        put_varlong(b, body_len as i64);
        b.push(0); // record attributes
        put_varlong(b, timestamp_delta);
        put_varlong(b, offset_delta);
        put_varlong(b, key_len);
        b.extend_from_slice(key.unwrap_or_default());
        put_varlong(b, value.len() as i64);
        b.extend_from_slice(value);
        b.push(0); // no headers
        self.record_count += 1;
    }

    /// The epoch-start marker a new leader appends: a control batch of one record, Kafka's
    /// `LEADER_CHANGE` control key and the epoch as its value.
    pub fn control(leader_epoch: u32, timestamp_ms: i64) -> Bytes {
        let mut b = BatchBuilder::with_capacity(32);
        b.push(Some(&CONTROL_KEY_LEADER_CHANGE), &leader_epoch.to_be_bytes(), timestamp_ms);
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
        let length = (self.buf.len() - LENGTH_EXCLUDES) as u32;
        let b = &mut self.buf;
        put(b, at::LENGTH, &length.to_be_bytes());
        b[at::MAGIC] = BATCH_MAGIC;
        put(b, at::ATTRIBUTES, &attributes.to_be_bytes());
        put(b, at::LAST_OFFSET_DELTA, &self.record_count.wrapping_sub(1).to_be_bytes());
        put(b, at::FIRST_TS, &self.first_timestamp.to_be_bytes());
        put(b, at::MAX_TS, &self.max_timestamp.to_be_bytes());
        put_producer_fields(b, producer_id, producer_epoch, base_sequence);
        put(b, at::RECORD_COUNT, &self.record_count.to_be_bytes());
        write_crc(b);
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
mod tests;
