//! The control plane's file seam: the metadata log's files (`cluster/raft_store.rs`) and
//! the shared-storage leases (`shard/shared_storage.rs`).
//!
//! These run on threads of their own (the control thread's tokio runtime, the lease
//! renewal thread), not on a shard, so this seam is blocking and `Send + Sync` where
//! [`super::Disk`] is async and shard-local. Both seams end in the same calls: the
//! operating system's through [`super::durable_fs`] (one way of replacing a file
//! atomically), and the simulated file system of [`super::mem_disk::MemDisk`]
//! ([`MemDisk::control_files`](super::mem_disk::MemDisk::control_files)), whose crashes
//! and errnos reach these files too. Injected faults (`QUORRA_FAULT_FILE`'s `meta=` and
//! `lease=` lines) are checked here, in [`OsControlFiles`].

use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;

use super::durable_fs;

/// Blocking, durable file operations on small files. Every call that changes a file is
/// durable when it returns (data and directory entry).
pub trait ControlFiles: Send + Sync + 'static {
    /// Creates a directory and its missing ancestors, durably.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// A file's whole content; `None` when absent.
    fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>>;
    /// Names of a directory's entries; an absent directory has none.
    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Replaces `path` with `bytes`, all or nothing.
    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Creates `path` with `bytes` unless it exists (O_EXCL): false when it did.
    fn create_new(&self, path: &Path, bytes: &[u8]) -> io::Result<bool>;
    /// Appends `bytes` to an existing file and syncs it. A failed sync may leave them
    /// written but not durable (a crash then keeps any prefix of them).
    fn append(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Cuts a file to `len` bytes, durably.
    fn truncate(&self, path: &Path, len: u64) -> io::Result<()>;
    /// Removes a file, durably; absent is not an error.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
}

/// A shared handle to a [`ControlFiles`].
pub type SharedControlFiles = Arc<dyn ControlFiles>;

/// Which of the injected faults a set of control files meets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectedFaults {
    /// `meta=<errno>`: writes and syncs of the metadata log's files.
    Metadata,
    /// `lease=<errno>`: writes of the shared-storage lease files.
    Lease,
    /// None: files written once at start-up (the data directory's identity).
    None,
}

/// The operating system's files, with the injected faults of one kind.
#[derive(Clone, Copy, Debug)]
pub struct OsControlFiles {
    pub faults: InjectedFaults,
}

impl OsControlFiles {
    pub fn shared(faults: InjectedFaults) -> SharedControlFiles {
        Arc::new(OsControlFiles { faults })
    }

    fn check(&self, op: &'static str, path: &Path) -> io::Result<()> {
        match self.faults {
            InjectedFaults::Metadata => super::faults::check_metadata(op, path),
            InjectedFaults::Lease => super::faults::check_lease(path).map_err(io::Error::other),
            InjectedFaults::None => Ok(()),
        }
    }
}

impl ControlFiles for OsControlFiles {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        durable_fs::create_dir_all(dir)
    }

    fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        match std::fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        match std::fs::read_dir(dir) {
            Ok(entries) => Ok(entries.flatten().filter_map(|e| e.file_name().to_str().map(str::to_string)).collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.check("write", path)?;
        durable_fs::write_atomic(path, bytes, || Ok(()))
    }

    fn create_new(&self, path: &Path, bytes: &[u8]) -> io::Result<bool> {
        self.check("write", path)?;
        let mut f = match std::fs::OpenOptions::new().write(true).create_new(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(e),
        };
        f.write_all(bytes)?;
        f.sync_all()?;
        durable_fs::fsync_dir(path.parent().unwrap_or(Path::new(".")))?;
        Ok(true)
    }

    fn append(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        self.check("write", path)?;
        let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
        f.write_all(bytes)?;
        self.check("sync", path)?;
        f.sync_data()
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        self.check("write", path)?;
        let f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.set_len(len)?;
        f.sync_all()
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        durable_fs::remove_file(path)
    }
}
