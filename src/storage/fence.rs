//! The shared-storage write fence: a process-wide gate that every write, flush and file
//! change of the server's disk passes (see [`super::faults::GuardedDisk`]).
//!
//! In `shared-storage` mode the active node holds a lease on the data directory, renewed
//! by a thread (`shard::shared_storage`). Each successful renewal moves the fence's
//! deadline to three quarters of a lease after the renewal *started*; a node paused,
//! cut off from the storage or replaced stops passing the gate at the deadline, before a
//! standby can take over (which needs a whole lease without renewal, then waits a whole
//! lease more). Without a fence installed (every other mode) the gate is one atomic load.
//!
//! The gate is passed twice: before an operation, and after it completed, so that an
//! operation that finished after the deadline never counts as done (a process paused
//! between the first check and the submission would otherwise acknowledge a write the
//! next active node never saw). Such a late write may still reach the disk; the next
//! active node writes only to files it created (`LogConfig::fresh_segment_on_open`), so it
//! lands past the end of a segment the new node sealed.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use super::disk::{DiskError, DiskResult};

struct Fence {
    /// Milliseconds since `base` after which nothing may be written.
    deadline_ms: AtomicU64,
    /// Set when this node learned it was replaced: never cleared.
    tripped: AtomicBool,
    epoch: AtomicU32,
    base: Instant,
}

static FENCE: OnceLock<Fence> = OnceLock::new();

/// Installs the fence for the lease of `epoch`, closed until the first [`extend`].
pub fn install(epoch: u32) {
    let fence = FENCE.get_or_init(|| Fence {
        deadline_ms: AtomicU64::new(0),
        tripped: AtomicBool::new(false),
        epoch: AtomicU32::new(0),
        base: Instant::now(),
    });
    fence.epoch.store(epoch, Ordering::SeqCst);
}

/// A renewal that started at `started` succeeded: writes may go on until `started + valid_ms`.
pub fn extend(started: Instant, valid_ms: u64) {
    let Some(f) = FENCE.get() else { return };
    let deadline = started.saturating_duration_since(f.base).as_millis() as u64 + valid_ms;
    f.deadline_ms.fetch_max(deadline, Ordering::SeqCst);
}

/// This node was replaced (or lost its lease): nothing passes the gate any more.
pub fn trip() {
    if let Some(f) = FENCE.get() {
        f.tripped.store(true, Ordering::SeqCst);
    }
}

/// Whether the lease is still valid at `now` (always, without a fence).
pub fn open_at(now: Instant) -> bool {
    match FENCE.get() {
        None => true,
        Some(f) => {
            !f.tripped.load(Ordering::SeqCst)
                && (now.saturating_duration_since(f.base).as_millis() as u64) < f.deadline_ms.load(Ordering::SeqCst)
        }
    }
}

/// The fencing epoch to stamp into batches (0 without a fence).
pub fn epoch() -> u32 {
    FENCE.get().map_or(0, |f| f.epoch.load(Ordering::SeqCst))
}

/// The gate: an error naming the operation when the lease does not allow writing now.
pub fn check(op: &'static str, path: &Path) -> DiskResult<()> {
    check_io().map_err(|e| DiskError::new(op, path, e))
}

/// [`check`] as a plain I/O error, for code below the disk seam.
pub fn check_io() -> std::io::Result<()> {
    if FENCE.get().is_none() || open_at(Instant::now()) {
        return Ok(());
    }
    Err(std::io::Error::other("fenced: this node's shared-storage lease expired or another node took over"))
}
