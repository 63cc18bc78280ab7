//! The recovery scan of a segment file: finds where valid data ends and classifies what
//! follows as a clean end, a torn tail (an interrupted last write) or corruption.
//!
//! The rule: after the first batch that fails its checks, the rest of the written area is
//! searched for any valid batch with a later offset. If there is one, data that was once
//! complete lies beyond the damage: that is corruption in the middle of the log, which is
//! reported and never silently dropped. If there is none, the damage is the tail of the
//! last write, which was never acknowledged (acks wait for the flush), and it is truncated.
//!
//! Leader epochs never decrease along a log (a new leader, or a new active node in
//! shared-storage mode, writes with a higher one). A batch with a lower epoch than the one
//! before it is a late write by a replaced node and fails the scan like a damaged batch.

use crate::limits::IO_ALIGNMENT;
use crate::protocol::batch::{check_batch, may_start_batch, peek_header, BATCH_HEADER_BYTES};

use super::disk::{DiskFile, DiskResult};
use super::index::SparseIndex;

/// How much is read at a time while scanning.
const SCAN_CHUNK_BYTES: usize = 1 << 20;
/// How far past a bad batch the scan looks for later valid batches.
const CORRUPTION_SEARCH_BYTES: u64 = 64 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanOutcome {
    /// Valid batches, then nothing (zeros or the end of the file).
    Clean,
    /// Valid batches, then damage with nothing valid after it, up to `garbage_end`.
    TornTail { garbage_end: u64, reason: String },
    /// Valid batches, then damage, then more valid batches: data was lost in the middle.
    Corrupt { position: u64, offset: u64, reason: String },
}

#[derive(Debug, Clone)]
pub struct ScanResult {
    /// Bytes of valid batches from the start of the file.
    pub size: u64,
    pub next_offset: u64,
    pub max_timestamp: i64,
    pub index: SparseIndex,
    pub outcome: ScanOutcome,
}

/// Reads a file forward, keeping a window of the unconsumed bytes.
struct Reader<'a, F> {
    file: &'a F,
    file_len: u64,
    /// File position of `window[0]`.
    window_start: u64,
    window: Vec<u8>,
}

impl<F: DiskFile> Reader<'_, F> {
    /// Makes sure the window covers `[pos, pos + len)` if the file has it; returns whether it does.
    async fn ensure(&mut self, pos: u64, len: usize) -> DiskResult<bool> {
        if pos > self.window_start {
            let drop = ((pos - self.window_start) as usize).min(self.window.len());
            self.window.drain(..drop);
            self.window_start += drop as u64;
        }
        while self.window_start + (self.window.len() as u64) < pos + len as u64 {
            let read_pos = self.window_start + self.window.len() as u64;
            if read_pos >= self.file_len {
                return Ok(false);
            }
            let want = SCAN_CHUNK_BYTES.max(len).min((self.file_len - read_pos) as usize);
            let chunk = self.file.read_at(read_pos, want).await?;
            if chunk.is_empty() {
                return Ok(false);
            }
            self.window.extend_from_slice(&chunk);
        }
        Ok(true)
    }

    fn slice(&self, pos: u64, len: usize) -> &[u8] {
        let at = (pos - self.window_start) as usize;
        &self.window[at..(at + len).min(self.window.len())]
    }
}

/// Scans a segment that starts at `base_offset`, from position 0 to `file_len`.
pub async fn scan_segment<F: DiskFile>(
    file: &F,
    base_offset: u64,
    file_len: u64,
    index_interval_bytes: u64,
) -> DiskResult<ScanResult> {
    let mut r = Reader { file, file_len, window_start: 0, window: Vec::new() };
    let mut pos = 0u64;
    let mut next_offset = base_offset;
    let mut max_timestamp = i64::MIN;
    let mut index = SparseIndex::default();
    let mut last_epoch = 0u32;
    let failure: String = loop {
        if !r.ensure(pos, BATCH_HEADER_BYTES).await? {
            let rest = r.slice(pos, BATCH_HEADER_BYTES);
            if rest.iter().all(|&b| b == 0) {
                break String::new();
            }
            break "truncated batch header at the end of the file".into();
        }
        let head = r.slice(pos, BATCH_HEADER_BYTES);
        if head.iter().all(|&b| b == 0) {
            break String::new();
        }
        let header = match peek_header(head) {
            Ok(h) => h,
            Err(e) => break e.to_string(),
        };
        let len = header.batch_len as usize;
        if !r.ensure(pos, len).await? {
            break format!("batch at {pos} runs past the end of the file");
        }
        if let Err(e) = check_batch(r.slice(pos, len)) {
            break e.to_string();
        }
        if header.base_offset != next_offset {
            break format!("batch at {pos} has offset {} where {next_offset} was expected", header.base_offset);
        }
        if header.leader_epoch < last_epoch {
            break format!(
                "batch at {pos} has epoch {} after epoch {last_epoch}: a late write by a replaced node",
                header.leader_epoch
            );
        }
        last_epoch = header.leader_epoch;
        max_timestamp = max_timestamp.max(header.max_timestamp);
        index.observe(next_offset, pos, max_timestamp, index_interval_bytes);
        pos += len as u64;
        next_offset = header.next_offset();
    };
    let outcome = if failure.is_empty() {
        ScanOutcome::Clean
    } else {
        classify_damage(&mut r, pos, next_offset, failure).await?
    };
    Ok(ScanResult { size: pos, next_offset, max_timestamp, index, outcome })
}

/// Looks past damage at `pos` for a valid batch with an offset at or after `next_offset`.
async fn classify_damage<F: DiskFile>(
    r: &mut Reader<'_, F>,
    pos: u64,
    next_offset: u64,
    reason: String,
) -> DiskResult<ScanOutcome> {
    let limit = r.file_len.min(pos + CORRUPTION_SEARCH_BYTES);
    let mut garbage_end = pos;
    let mut chunk_start = pos;
    while chunk_start < limit {
        let want = (SCAN_CHUNK_BYTES as u64).min(limit - chunk_start) as usize;
        // Keep one batch header of overlap so a batch straddling chunks is still seen.
        r.ensure(chunk_start, want + BATCH_HEADER_BYTES).await?;
        let chunk = r.slice(chunk_start, want + BATCH_HEADER_BYTES).to_vec();
        if chunk_start > pos && chunk[..want.min(chunk.len())].iter().all(|&b| b == 0) {
            break; // a whole chunk of zeros: the end of what was ever written
        }
        if let Some(last_nonzero) = chunk[..want.min(chunk.len())].iter().rposition(|&b| b != 0) {
            garbage_end = chunk_start + last_nonzero as u64 + 1;
        }
        for at in 0..want.min(chunk.len()) {
            let candidate = chunk_start + at as u64;
            if candidate == pos || chunk.len() - at < BATCH_HEADER_BYTES {
                continue;
            }
            if !may_start_batch(&chunk[at..]) {
                continue;
            }
            let Ok(h) = peek_header(&chunk[at..]) else {
                continue;
            };
            if h.base_offset < next_offset {
                continue;
            }
            if r.ensure(candidate, h.batch_len as usize).await?
                && check_batch(r.slice(candidate, h.batch_len as usize)).is_ok()
            {
                return Ok(ScanOutcome::Corrupt { position: pos, offset: next_offset, reason });
            }
        }
        chunk_start += want as u64;
    }
    let garbage_end = garbage_end.div_ceil(IO_ALIGNMENT as u64) * IO_ALIGNMENT as u64;
    Ok(ScanOutcome::TornTail { garbage_end, reason })
}
