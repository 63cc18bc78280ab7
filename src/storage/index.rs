//! The sparse offset index of a segment, and its file format for sealed segments.
//!
//! One entry every `index_interval_bytes` of log maps an offset to the byte position of the
//! batch that starts with it, with the largest record timestamp seen up to that batch (for
//! lookups by time). The active segment's index lives in memory and is rebuilt by the
//! recovery scan; a sealed segment's index is written to `<base>.index` when it is sealed.
//!
//! ```text
//! "QIX1" | count u32 | size u64 | next_offset u64 | max_timestamp i64 | count x (offset u64,
//! position u64, max_timestamp i64) | crc32c u32 of everything before it
//! ```

const MAGIC: &[u8; 4] = b"QIX1";
const HEADER_BYTES: usize = 4 + 4 + 8 + 8 + 8;
const ENTRY_BYTES: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// Base offset of the batch at `position`.
    pub offset: u64,
    pub position: u64,
    /// Largest record timestamp in the segment up to and including this batch.
    pub max_timestamp: i64,
}

/// What a sealed segment's index file records about the segment as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentSummary {
    /// Bytes of valid batches.
    pub size: u64,
    /// Offset after the last batch.
    pub next_offset: u64,
    pub max_timestamp: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SparseIndex {
    entries: Vec<IndexEntry>,
}

impl SparseIndex {
    /// Records the batch starting at `position` if it is far enough from the previous entry.
    pub fn observe(&mut self, offset: u64, position: u64, max_timestamp: i64, interval_bytes: u64) {
        match self.entries.last() {
            Some(last) if position < last.position + interval_bytes => {}
            _ => self.entries.push(IndexEntry { offset, position, max_timestamp }),
        }
    }

    /// Position of the last indexed batch starting at or before `offset` (0 when none).
    pub fn position_for(&self, offset: u64) -> u64 {
        let i = self.entries.partition_point(|e| e.offset <= offset);
        if i == 0 {
            0
        } else {
            self.entries[i - 1].position
        }
    }

    /// Offset and position from which to scan for the first record with timestamp >= `ts`.
    pub fn start_for_timestamp(&self, ts: i64, segment_base: u64) -> (u64, u64) {
        let i = self.entries.partition_point(|e| e.max_timestamp < ts);
        if i == 0 {
            (segment_base, 0)
        } else {
            (self.entries[i - 1].offset, self.entries[i - 1].position)
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops entries at or past `position` (truncation).
    pub fn truncate_from(&mut self, position: u64) {
        self.entries.retain(|e| e.position < position);
    }

    pub fn encode(&self, summary: SegmentSummary) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + self.entries.len() * ENTRY_BYTES + 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        out.extend_from_slice(&summary.size.to_le_bytes());
        out.extend_from_slice(&summary.next_offset.to_le_bytes());
        out.extend_from_slice(&summary.max_timestamp.to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.offset.to_le_bytes());
            out.extend_from_slice(&e.position.to_le_bytes());
            out.extend_from_slice(&e.max_timestamp.to_le_bytes());
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes an index file; `None` when it is damaged in any way (then it is rebuilt).
    pub fn decode(bytes: &[u8]) -> Option<(SparseIndex, SegmentSummary)> {
        if bytes.len() < HEADER_BYTES + 4 || &bytes[0..4] != MAGIC {
            return None;
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().ok()?) {
            return None;
        }
        let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
        let count = u32::from_le_bytes(body[4..8].try_into().ok()?) as usize;
        if body.len() != HEADER_BYTES + count * ENTRY_BYTES {
            return None;
        }
        let summary = SegmentSummary { size: u64_at(8), next_offset: u64_at(16), max_timestamp: u64_at(24) as i64 };
        let entries = (0..count)
            .map(|i| {
                let at = HEADER_BYTES + i * ENTRY_BYTES;
                IndexEntry { offset: u64_at(at), position: u64_at(at + 8), max_timestamp: u64_at(at + 16) as i64 }
            })
            .collect();
        Some((SparseIndex { entries }, summary))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_and_round_trip() {
        let mut idx = SparseIndex::default();
        for i in 0..100u64 {
            idx.observe(i * 10, i * 1000, i as i64 * 5, 4096);
        }
        // entries at positions 0, 5000, 10000, ...: every 5th batch
        assert_eq!(idx.position_for(0), 0);
        assert_eq!(idx.position_for(49), 0);
        assert_eq!(idx.position_for(50), 5000);
        assert_eq!(idx.start_for_timestamp(0, 0), (0, 0));
        assert_eq!(idx.start_for_timestamp(26, 0), (50, 5000));
        let summary = SegmentSummary { size: 100_000, next_offset: 1000, max_timestamp: 495 };
        let bytes = idx.encode(summary);
        assert_eq!(SparseIndex::decode(&bytes), Some((idx.clone(), summary)));
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(SparseIndex::decode(&b).is_none(), "flip at {i} undetected");
        }
    }
}
