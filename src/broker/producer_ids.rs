//! Producer ids, handed out by the broker so that no two producers ever share a sequence
//! space: a producer asks for one (`InitProducer`) before its first batch.
//!
//! Ids are reserved in blocks of [`PRODUCER_ID_BLOCK`]: on a single node (and in
//! shared-storage mode) by a durable write of the next free block to `meta/producer-ids`
//! before any id of the block is handed out; in a replicated cluster by a metadata command
//! (`AllocateProducerIds`) committed through Raft. Ids left over in a block when the broker
//! stops are never used (the id space is 64 bits wide). Owned by shard 0.

use std::cell::Cell;
use std::future::Future;

use crate::limits::PRODUCER_ID_BLOCK;

/// The block of ids shard 0 hands out from.
pub struct ProducerIds {
    next: Cell<u64>,
    end: Cell<u64>,
    /// One reservation at a time.
    lock: crate::rt::Semaphore,
}

impl Default for ProducerIds {
    fn default() -> Self {
        ProducerIds { next: Cell::new(0), end: Cell::new(0), lock: crate::rt::Semaphore::new(1) }
    }
}

impl ProducerIds {
    /// The next unused id; `reserve` makes a new block durable and returns its first id.
    pub async fn allocate<E, F>(&self, reserve: impl FnOnce() -> F) -> Result<u64, E>
    where
        F: Future<Output = Result<u64, E>>,
    {
        let _permit = self.lock.acquire_permit(1).await.expect("the allocation lock is never closed");
        if self.next.get() >= self.end.get() {
            let first = reserve().await?;
            assert!(first > 0, "producer id 0 means not idempotent");
            self.next.set(first);
            self.end.set(first + PRODUCER_ID_BLOCK);
        }
        let id = self.next.get();
        self.next.set(id + 1);
        Ok(id)
    }
}

/// The single-node reservation: reads the next free block from `meta/producer-ids`, records
/// the one after it (atomically, durably) and returns the block's first id.
pub async fn reserve_block_on_disk<D: crate::storage::Disk>(
    disk: &D,
    data_dir: &std::path::Path,
) -> Result<u64, crate::storage::StorageError> {
    let path = data_dir.join("meta").join("producer-ids");
    let first = match disk.read_file(&path).await? {
        None => 1,
        Some(bytes) => {
            std::str::from_utf8(&bytes).ok().and_then(|s| s.trim().parse::<u64>().ok()).filter(|&n| n > 0).ok_or_else(
                || crate::storage::StorageError::Corrupt(format!("{} is not a producer id", path.display())),
            )?
        }
    };
    let next = first
        .checked_add(PRODUCER_ID_BLOCK)
        .ok_or_else(|| crate::storage::StorageError::Io("producer ids exhausted".into()))?;
    disk.write_file_atomic(&path, format!("{next}\n").into_bytes()).await?;
    Ok(first)
}
