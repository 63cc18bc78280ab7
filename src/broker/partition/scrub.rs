//! Scrubbing: a replica reads its committed log in the background and checks every batch's
//! CRC, so that damage on its disk (a flipped bit nobody has read yet) is found while the
//! other replicas still hold good copies. Left to the readers, such damage is found only
//! when a read meets it, possibly after every replica has had a flip of its own: then each
//! cuts its log at a different place and records that only one of them still held are gone
//! (the 30-minute multi-master nemesis of 2026-12-03, seed 20261206, lost a partition so).
//!
//! What the scrub finds goes the way of damage a read finds: the log is marked corrupt, the
//! shard reopens the replica, which cuts its log at the first damaged batch and fetches the
//! rest again from the leader (`Partition::open_replica`).

use std::time::{Duration, Instant};

use super::Partition;
use crate::protocol::batch::BatchIter;
use crate::rt;
use crate::storage::log::ReadPlan;
use crate::storage::{Disk, StorageError};

/// Bytes read at a time (one direct-I/O read).
const SCRUB_CHUNK: usize = 1 << 20;

/// Before damage is reported, the batch is read again after this long: a read can race a
/// cut of the log (a follower's truncation) and see bytes that are going away.
const RECHECK_AFTER: Duration = Duration::from_millis(50);

/// How a scrub pass ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scrubbed {
    /// Every batch from the log start to the high watermark (as they were when the pass
    /// began) passed its CRC check; so many bytes were read from the disk.
    Clean { bytes: u64 },
    /// The batch at this offset is damaged: the log is now marked corrupt.
    Damaged { offset: u64 },
    /// The partition closed, or the log moved under the pass (retention, a cut): nothing
    /// to conclude.
    Interrupted,
}

impl<D: Disk> Partition<D> {
    /// Reads the committed log from its start to the high watermark, at most
    /// `bytes_per_sec` from the disk, checking every batch; marks the log corrupt if a batch
    /// is damaged. Batches still in the memory tail (written moments ago) are not read.
    pub async fn scrub(&self, bytes_per_sec: u64) -> Result<Scrubbed, StorageError> {
        let (mut offset, end) = {
            let log = self.log.borrow();
            (log.log_start_offset(), self.high_watermark().min(log.next_offset()))
        };
        let started = Instant::now();
        let mut read = 0u64;
        while offset < end {
            if self.closing.get() {
                return Ok(Scrubbed::Interrupted);
            }
            let chunk = match self.read_for_scrub(offset, end).await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(StorageError::OffsetOutOfRange { .. }) => return Ok(Scrubbed::Interrupted),
                Err(StorageError::Corrupt(why)) => return self.confirm_damage(offset, end, &why).await,
                Err(e) => return Err(e),
            };
            read += chunk.len() as u64;
            let before = offset;
            for (header, _) in BatchIter::new(&chunk).flatten() {
                offset = offset.max(header.next_offset());
            }
            if offset == before {
                break;
            }
            pace(started, read, bytes_per_sec).await;
        }
        Ok(Scrubbed::Clean { bytes: read })
    }

    /// The batches from `offset` on read from the disk (each one's CRC checked); None once
    /// the rest is in the memory tail or nothing more is there.
    async fn read_for_scrub(&self, offset: u64, end: u64) -> Result<Option<bytes::Bytes>, StorageError> {
        let plan = self.log.borrow().plan_read(offset, SCRUB_CHUNK, end)?;
        match plan {
            ReadPlan::Ready(_) => Ok(None),
            ReadPlan::Disk(read) => Ok(Some(read.run().await?).filter(|bytes| !bytes.is_empty())),
        }
    }

    /// A read at `offset` met damage: read it once more, and if the batch is still there
    /// and still damaged, mark the log corrupt.
    async fn confirm_damage(&self, offset: u64, end: u64, why: &str) -> Result<Scrubbed, StorageError> {
        rt::sleep(RECHECK_AFTER).await;
        if self.closing.get() {
            return Ok(Scrubbed::Interrupted);
        }
        match self.read_for_scrub(offset, end).await {
            Err(StorageError::Corrupt(_)) => {
                log::error!("{}/{}: the scrub found damage at offset {offset}: {why}", self.topic, self.id);
                self.mark_corrupt(why).await;
                Ok(Scrubbed::Damaged { offset })
            }
            Err(StorageError::OffsetOutOfRange { .. }) | Ok(_) => Ok(Scrubbed::Interrupted),
            Err(e) => Err(e),
        }
    }
}

/// Sleeps as long as keeps `read` bytes since `started` within `bytes_per_sec`.
async fn pace(started: Instant, read: u64, bytes_per_sec: u64) {
    if bytes_per_sec == 0 {
        return;
    }
    let due = started + Duration::from_secs_f64(read as f64 / bytes_per_sec as f64);
    let now = Instant::now();
    if due > now {
        rt::sleep(due - now).await;
    }
}
