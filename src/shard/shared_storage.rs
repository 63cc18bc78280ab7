//! `mode = "shared-storage"`: which of the nodes configured over one data directory is
//! active, and how it stops being active.
//!
//! Two mechanisms, both in `meta/` of the shared directory:
//!
//! - **The lock**: an exclusive `flock` on `LOCK`, held by the active node. The kernel (or
//!   a working NFS lock manager) releases it when the holder dies, however it dies.
//! - **The lease**: the file `meta/epochs/<N>`, created exclusively (O_EXCL) by the node
//!   that became active with fencing epoch N, and rewritten by it every quarter lease.
//!   Creating `<N+1>` is the takeover: only one node can, and the holder of N sees it at its
//!   next renewal and fences itself.
//!
//! A standby watches the highest epoch's lease file. It takes over:
//! - at once, when it holds the lock and the lease says its holder held the lock (the
//!   holder is dead: a killed process releases its lock), with `trust_lock`;
//! - otherwise after a whole lease without renewal (a paused node, one cut off from the
//!   storage, or locks that cannot be trusted), then waits one lease more before writing.
//!
//! The active node's write fence ([`crate::storage::fence`]) closes three quarters of a
//! lease after the start of its last successful renewal, so a node that cannot renew stops
//! writing (and so acknowledging) before anyone can take over. A node that learns it was
//! replaced, or whose lease expired, restarts itself as a standby (exec of its own command
//! line) and never writes again in the old process.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::runtime::{try_lock_data_dir, BrokerError};
use crate::config::Config;
use crate::storage::control_files::{InjectedFaults, OsControlFiles, SharedControlFiles};
use crate::storage::fence;

/// What a lease file says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Lease {
    node: u32,
    /// Bumped by every renewal: a standby only compares contents.
    renewals: u64,
    /// Whether the holder holds the directory's lock.
    locked: bool,
}

/// The lease files of one data directory, through the control plane's file seam (the
/// operating system's files with the injected `lease=` faults; a `MemDisk` in tests).
struct Leases {
    files: SharedControlFiles,
    dir: PathBuf,
}

impl Leases {
    fn path(&self, epoch: u32) -> PathBuf {
        self.dir.join(epoch.to_string())
    }

    fn epochs(&self) -> std::io::Result<Vec<u32>> {
        Ok(self.files.list_dir(&self.dir)?.iter().filter_map(|name| name.parse().ok()).collect())
    }

    /// The highest epoch and what its file says (`None` while it is being written, or when
    /// it cannot be parsed: a standby treats any change of content as a renewal).
    fn highest(&self) -> std::io::Result<Option<(u32, Option<Lease>)>> {
        let Some(top) = self.epochs()?.into_iter().max() else {
            return Ok(None);
        };
        let lease = self.files.read(&self.path(top)).ok().flatten().and_then(|b| serde_json::from_slice(&b).ok());
        Ok(Some((top, lease)))
    }

    /// Creates the lease of `epoch`; false when another node created it first.
    fn claim(&self, epoch: u32, lease: &Lease) -> std::io::Result<bool> {
        self.files.create_dir_all(&self.dir)?;
        if !self.files.create_new(&self.path(epoch), &serde_json::to_vec(lease).expect("lease serializes"))? {
            return Ok(false);
        }
        // Older leases are history: keep the last few for the operator.
        for old in self.epochs()?.into_iter().filter(|&old| old < epoch.saturating_sub(8)) {
            self.files.remove_file(&self.path(old))?;
        }
        Ok(true)
    }

    fn renew(&self, epoch: u32, lease: &Lease) -> std::io::Result<()> {
        self.files.write_atomic(&self.path(epoch), &serde_json::to_vec(lease).expect("lease serializes"))
    }

    fn exists(&self, epoch: u32) -> bool {
        self.files.read(&self.path(epoch)).is_ok_and(|lease| lease.is_some())
    }
}

/// Settings of the lease, from `[cluster]`.
#[derive(Clone, Copy)]
struct Timing {
    lease: Duration,
    trust_lock: bool,
    node: u32,
}

impl Timing {
    fn renew_every(&self) -> Duration {
        self.lease / 4
    }
    /// How long the fence stays open after a renewal started.
    fn valid_ms(&self) -> u64 {
        self.lease.as_millis() as u64 * 3 / 4
    }
}

/// Blocks as a standby until this node is the active one; returns with the fence installed
/// and a renewal thread running. The lock (if held) stays open for the life of the process.
pub fn become_active(config: &Config, stop: &AtomicBool) -> Result<Option<File>, BrokerError> {
    let cluster = config.cluster.as_ref().expect("shared-storage has [cluster]");
    let timing = Timing {
        lease: Duration::from_millis(cluster.lease_ms),
        trust_lock: cluster.trust_lock,
        node: cluster.node_id,
    };
    let dir = &config.data_dir;
    let leases = Leases { files: OsControlFiles::shared(InjectedFaults::Lease), dir: dir.join("meta").join("epochs") };
    let io_err =
        |e: std::io::Error| BrokerError::DataDir { path: leases.dir.display().to_string(), message: e.to_string() };
    let poll = (timing.lease / 50).clamp(Duration::from_millis(5), Duration::from_millis(50));
    let mut lock: Option<File> = None;
    // The lease as last seen, and when it was first seen like that (this node's clock).
    let mut seen: Option<(u32, Option<Lease>)> = None;
    let mut seen_since = Instant::now();
    let mut lock_taken_at: Option<(u32, Option<Lease>)> = None;
    let mut said = false;
    let mut first = true;
    loop {
        if stop.load(Ordering::SeqCst) {
            return Err(BrokerError::Shard { shard: 0, message: "stopped while standing by".into() });
        }
        let top = leases.highest().map_err(io_err)?;
        if top != seen {
            seen = top.clone();
            seen_since = Instant::now();
        }
        let quiet = seen_since.elapsed();
        // Try the lock whenever the holder holds it (it is free only once the holder died),
        // at start, without a lease, or when the holder missed a renewal; not all the time
        // otherwise: a holder without the lock must be able to take it.
        let holder_locked = matches!(&top, Some((_, Some(l))) if l.locked);
        if lock.is_none() && (first || holder_locked || top.is_none() || quiet > timing.renew_every() * 3 / 2) {
            lock = try_lock_data_dir(dir)?;
            lock_taken_at = top.clone();
        }
        first = false;
        // A holder that renews is alive: leave it the lock.
        if lock.is_some() && top.is_some() && top != lock_taken_at {
            lock = None;
        }
        let (next_epoch, holder_dead) = match &top {
            None => (legacy_epoch(dir) + 1, lock.is_some()),
            Some((n, lease)) => {
                (n + 1, lock.is_some() && timing.trust_lock && lease.as_ref().is_some_and(|l| l.locked))
            }
        };
        let expired = quiet >= timing.lease;
        if holder_dead || expired {
            let lease = Lease { node: timing.node, renewals: 0, locked: lock.is_some() };
            let claimed_at = Instant::now();
            if leases.claim(next_epoch, &lease).map_err(io_err)? {
                if !holder_dead {
                    log::warn!(
                        "standby: the lease of epoch {} was not renewed for {quiet:?}; took epoch {next_epoch}, waiting {:?} for the old active node to fence itself",
                        next_epoch - 1,
                        timing.lease
                    );
                }
                // The claim is this lease's first renewal: the fence is open when the shards
                // start (recovery writes), not only once the renewal thread has run.
                fence::install(next_epoch);
                fence::extend(claimed_at, timing.valid_ms());
                spawn_renewals(leases, next_epoch, lease, lock.is_some(), dir.clone(), timing);
                if !holder_dead {
                    std::thread::sleep(timing.lease.saturating_sub(claimed_at.elapsed()));
                }
                log::info!("active on {} with fencing epoch {next_epoch}; recovering the logs", dir.display());
                return Ok(lock);
            }
            seen = None; // another standby was faster: watch its lease
            continue;
        }
        if !said {
            log::info!("standby: another node is active on {}; waiting for it", dir.display());
            said = true;
        }
        std::thread::sleep(poll);
    }
}

/// The epoch of a directory written before leases existed (`meta/fencing-epoch`).
fn legacy_epoch(dir: &Path) -> u32 {
    std::fs::read_to_string(dir.join("meta").join("fencing-epoch"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The active node's renewals: every quarter lease, check that no node took the next epoch,
/// rewrite the lease, and move the fence. On losing the lease: fence, then restart as a
/// standby.
fn spawn_renewals(leases: Leases, epoch: u32, mut lease: Lease, claimed_locked: bool, dir: PathBuf, timing: Timing) {
    std::thread::Builder::new()
        .name("lease".into())
        .spawn(move || {
            // Taken over by the lease: the lock, once its old holder lets go (then held for
            // the life of the process).
            let mut late_lock: Option<File> = None;
            let mut started = Instant::now();
            loop {
                if let Err(e) = leases.renew(epoch, &lease) {
                    log::warn!("lease: cannot renew epoch {epoch}: {e}");
                } else {
                    fence::extend(started, timing.valid_ms());
                }
                std::thread::sleep(timing.renew_every());
                started = Instant::now();
                if !fence::open_at(started) {
                    lose_lease(&format!("the lease of epoch {epoch} expired (paused, or the storage did not answer)"));
                }
                if leases.exists(epoch + 1) {
                    lose_lease(&format!("another node took over with fencing epoch {}", epoch + 1));
                }
                if !claimed_locked && late_lock.is_none() {
                    late_lock = try_lock_data_dir(&dir).ok().flatten();
                }
                lease.renewals += 1;
                lease.locked = claimed_locked || late_lock.is_some();
            }
        })
        .expect("spawn the lease thread");
}

/// Fences this process for good and restarts it as a standby.
fn lose_lease(why: &str) -> ! {
    fence::trip();
    log::error!("fenced: {why}; this node stops writing and restarts as a standby");
    let exe = std::env::current_exe();
    let err = match exe {
        Ok(exe) => {
            use std::os::unix::process::CommandExt;
            std::process::Command::new(exe).args(std::env::args_os().skip(1)).exec()
        }
        Err(e) => e,
    };
    log::error!("cannot restart as a standby ({err}); exiting");
    std::process::exit(75);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{Lease, Leases};
    use crate::storage::mem_disk::{CrashMode, MemDisk};

    fn leases_on(disk: &MemDisk) -> Leases {
        Leases { files: Arc::new(disk.control_files()), dir: "/data/meta/epochs".into() }
    }

    fn lease(node: u32, renewals: u64) -> Lease {
        Lease { node, renewals, locked: true }
    }

    /// The leases go through the control plane's file seam, so a simulated disk reaches them:
    /// one claimer per epoch, a claim and a renewal survive a crash, a failing disk fails the
    /// renewal (which is what fences the node), and old epochs are pruned.
    #[test]
    fn one_node_claims_an_epoch_and_its_renewals_survive_a_crash() {
        let disk = MemDisk::new();
        let (a, b) = (leases_on(&disk), leases_on(&disk));
        assert!(a.claim(1, &lease(1, 0)).unwrap(), "the first claim of epoch 1 wins");
        assert!(!b.claim(1, &lease(2, 0)).unwrap(), "a second claim of the same epoch loses");
        a.renew(1, &lease(1, 1)).unwrap();

        let after = leases_on(&disk.crash(CrashMode::LoseUnsynced));
        assert_eq!(after.highest().unwrap(), Some((1, Some(lease(1, 1)))), "claim and renewal were durable");

        disk.control_files().set_errnos(Some(libc::EIO), None);
        let e = a.renew(1, &lease(1, 2)).expect_err("a failing disk fails the renewal");
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        assert_eq!(a.highest().unwrap(), Some((1, Some(lease(1, 1)))), "the failed renewal changed nothing");
        disk.control_files().set_errnos(None, None);

        for epoch in 2..=20 {
            assert!(b.claim(epoch, &lease(2, 0)).unwrap());
        }
        let mut kept = b.epochs().unwrap();
        kept.sort();
        assert_eq!(kept, (12..=20).collect::<Vec<_>>(), "the last few epochs are kept for the operator");
        assert!(a.exists(20) && !a.exists(21));
    }
}
