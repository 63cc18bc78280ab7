//! Fault injection into a running broker, for fault tests that use real processes.
//!
//! When the environment variable `QUORRA_FAULT_FILE` names a file, a watcher thread reads it
//! every 50 ms; each line switches on one fault until the line is removed:
//!
//! ```text
//! write=enospc      every log write fails with ENOSPC
//! write=eio         every log write fails with EIO
//! sync=eio          every fdatasync fails with EIO
//! fallocate=enospc  segment preallocation fails with ENOSPC
//! lease=eio         shared-storage lease renewals fail with EIO (the storage cut off)
//! meta=eio          every write and sync of the metadata log (Raft) fails with EIO
//! slow=50           every log write and fdatasync takes 50 ms longer (a slow disk)
//! ```
//!
//! Without the variable nothing is watched and every check is one relaxed atomic load.
//!
//! The server's disk, [`GuardedDisk`], also passes every write, flush and file change
//! through the shared-storage fence ([`super::fence`]) first.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use super::disk::{Disk, DiskError, DiskFile, DiskResult, IoBuf};
use super::fence;

/// The switches, shared by every shard of the process.
#[derive(Default, Debug)]
pub struct FaultSwitches {
    write_errno: AtomicI32,
    sync_errno: AtomicI32,
    fallocate_errno: AtomicI32,
    lease_errno: AtomicI32,
    metadata_errno: AtomicI32,
    slow_ms: AtomicI32,
}

impl FaultSwitches {
    fn check(slot: &AtomicI32, op: &'static str, path: &Path) -> DiskResult<()> {
        match slot.load(Ordering::Relaxed) {
            0 => Ok(()),
            e => Err(DiskError::new(op, path, std::io::Error::from_raw_os_error(e))),
        }
    }

    /// Applies the text of a fault file.
    pub fn apply(&self, text: &str) {
        let (mut write, mut sync, mut fallocate, mut lease, mut metadata, mut slow) = (0, 0, 0, 0, 0, 0);
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let errno = |v: &str| match v {
                "enospc" => libc::ENOSPC,
                "eio" => libc::EIO,
                other => {
                    log::warn!("fault file: unknown error {other:?}");
                    0
                }
            };
            match line.split_once('=') {
                Some(("write", v)) => write = errno(v),
                Some(("sync", v)) => sync = errno(v),
                Some(("fallocate", v)) => fallocate = errno(v),
                Some(("lease", v)) => lease = errno(v),
                Some(("meta", v)) => metadata = errno(v),
                Some(("slow", v)) => {
                    slow = v.trim_end_matches("ms").parse().unwrap_or_else(|_| {
                        log::warn!("fault file: {v:?} is not a number of milliseconds");
                        0
                    })
                }
                _ => log::warn!("fault file: unknown line {line:?}"),
            }
        }
        self.write_errno.store(write, Ordering::Relaxed);
        self.sync_errno.store(sync, Ordering::Relaxed);
        self.fallocate_errno.store(fallocate, Ordering::Relaxed);
        self.lease_errno.store(lease, Ordering::Relaxed);
        self.metadata_errno.store(metadata, Ordering::Relaxed);
        self.slow_ms.store(slow, Ordering::Relaxed);
    }

    /// The injected latency of a log write or flush, if any.
    async fn delay(&self) {
        let ms = self.slow_ms.load(Ordering::Relaxed);
        if ms > 0 {
            crate::rt::sleep(Duration::from_millis(ms as u64)).await;
        }
    }
}

/// The injected fault of a lease renewal, if any.
pub fn check_lease(path: &Path) -> DiskResult<()> {
    FaultSwitches::check(&switches().lease_errno, "renew lease", path)
}

/// The injected fault of a write or sync of the metadata log, if any.
pub fn check_metadata(op: &'static str, path: &Path) -> std::io::Result<()> {
    FaultSwitches::check(&switches().metadata_errno, op, path).map_err(std::io::Error::other)
}

static SWITCHES: OnceLock<FaultSwitches> = OnceLock::new();

/// The process-wide switches.
pub fn switches() -> &'static FaultSwitches {
    SWITCHES.get_or_init(FaultSwitches::default)
}

/// Starts the watcher thread when `QUORRA_FAULT_FILE` is set.
pub fn watch_from_env() {
    let Some(path) = std::env::var_os("QUORRA_FAULT_FILE").map(PathBuf::from) else {
        return;
    };
    log::warn!("fault injection enabled from {}", path.display());
    std::thread::Builder::new()
        .name("fault-watch".into())
        .spawn(move || {
            let mut last = String::new();
            loop {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                if text != last {
                    log::warn!("fault injection now: {:?}", text.trim());
                    switches().apply(&text);
                    last = text;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .expect("spawn fault watcher");
}

/// Wraps a disk so that every operation that changes it first passes the fence, then the
/// fault switches; writes and flushes pass the fence again once completed.
#[derive(Clone, Debug, Default)]
pub struct GuardedDisk<D>(pub D);

/// A file of a [`GuardedDisk`].
pub struct GuardedFile<F> {
    inner: F,
    path: PathBuf,
}

impl<F: DiskFile> DiskFile for GuardedFile<F> {
    fn alignment(&self) -> usize {
        self.inner.alignment()
    }
    fn alloc_buf(&self, len: usize) -> IoBuf {
        self.inner.alloc_buf(len)
    }
    fn durable_writes(&self) -> bool {
        self.inner.durable_writes()
    }
    async fn write_at(&self, buf: IoBuf, pos: u64) -> DiskResult<()> {
        fence::check("write", &self.path)?;
        FaultSwitches::check(&switches().write_errno, "write", &self.path)?;
        if self.inner.durable_writes() {
            // An O_DSYNC write is also the flush: a flush fault fails it.
            FaultSwitches::check(&switches().sync_errno, "write (O_DSYNC)", &self.path)?;
        }
        switches().delay().await;
        self.inner.write_at(buf, pos).await?;
        fence::check("write (completed after the fence closed)", &self.path)
    }
    async fn read_at(&self, pos: u64, len: usize) -> DiskResult<Vec<u8>> {
        self.inner.read_at(pos, len).await
    }
    async fn sync_data(&self) -> DiskResult<()> {
        fence::check("fdatasync", &self.path)?;
        FaultSwitches::check(&switches().sync_errno, "fdatasync", &self.path)?;
        switches().delay().await;
        self.inner.sync_data().await?;
        fence::check("fdatasync (completed after the fence closed)", &self.path)
    }
    async fn preallocate(&self, len: u64) -> DiskResult<()> {
        fence::check("fallocate", &self.path)?;
        FaultSwitches::check(&switches().fallocate_errno, "fallocate", &self.path)?;
        self.inner.preallocate(len).await
    }
    async fn size(&self) -> DiskResult<u64> {
        self.inner.size().await
    }
    async fn close(self) -> DiskResult<()> {
        self.inner.close().await
    }
}

impl<D: Disk> Disk for GuardedDisk<D> {
    type File = GuardedFile<D::File>;
    fn fencing_epoch(&self) -> u32 {
        fence::epoch()
    }
    async fn open(&self, path: &Path, create: bool) -> DiskResult<Self::File> {
        if create {
            fence::check("create", path)?;
        }
        Ok(GuardedFile { inner: self.0.open(path, create).await?, path: path.to_path_buf() })
    }
    async fn create_dir_all(&self, path: &Path) -> DiskResult<()> {
        fence::check("mkdir", path)?;
        self.0.create_dir_all(path).await
    }
    async fn list_dir(&self, path: &Path) -> DiskResult<Vec<String>> {
        self.0.list_dir(path).await
    }
    async fn remove_file(&self, path: &Path) -> DiskResult<()> {
        fence::check("remove", path)?;
        self.0.remove_file(path).await
    }
    async fn remove_dir_all(&self, path: &Path) -> DiskResult<()> {
        fence::check("remove", path)?;
        self.0.remove_dir_all(path).await
    }
    async fn read_file(&self, path: &Path) -> DiskResult<Option<Vec<u8>>> {
        self.0.read_file(path).await
    }
    async fn write_file_atomic(&self, path: &Path, bytes: Vec<u8>) -> DiskResult<()> {
        fence::check("write", path)?;
        FaultSwitches::check(&switches().write_errno, "write", path)?;
        self.0.write_file_atomic(path, bytes).await?;
        fence::check("write (completed after the fence closed)", path)
    }
}
