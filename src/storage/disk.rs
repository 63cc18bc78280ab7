//! The seam between the log and the operating system.
//!
//! The log is written against these traits only; [`crate::storage::glommio_disk`] implements them
//! with glommio's O_DIRECT files on io_uring, [`crate::storage::mem_disk`] in memory with crash
//! and fault simulation, and [`crate::storage::faults`] wraps either to inject errors into a
//! running broker. Nothing outside this seam names glommio's file types.

use std::io;
use std::path::Path;

/// A buffer for direct I/O: aligned to [`DiskFile::alignment`], length a multiple of it.
pub enum IoBuf {
    Dma(super::glommio_disk::DmaBuffer),
    Heap(Vec<u8>),
}

impl IoBuf {
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        match self {
            IoBuf::Dma(b) => b.as_bytes_mut(),
            IoBuf::Heap(v) => v,
        }
    }
    pub fn as_slice(&self) -> &[u8] {
        match self {
            IoBuf::Dma(b) => b.as_bytes(),
            IoBuf::Heap(v) => v,
        }
    }
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An I/O error with what was being done and to which file, as glommio's own errors carry.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct DiskError {
    pub op: &'static str,
    pub path: String,
    #[source]
    pub source: io::Error,
}

impl DiskError {
    pub fn new(op: &'static str, path: &Path, source: io::Error) -> Self {
        DiskError { op, path: path.display().to_string(), source }
    }
    /// The file system is full (ENOSPC or EDQUOT).
    pub fn is_disk_full(&self) -> bool {
        matches!(self.source.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
    }
}

pub type DiskResult<T> = Result<T, DiskError>;

/// One open log file, read and written with direct I/O at aligned positions.
#[allow(async_fn_in_trait)] // shard-local: futures need not be Send
pub trait DiskFile: 'static {
    /// Alignment of positions, lengths and buffers.
    fn alignment(&self) -> usize;
    /// Allocates an aligned, zeroed buffer of `len` bytes (a multiple of the alignment).
    fn alloc_buf(&self, len: usize) -> IoBuf;
    /// Whether a completed write is already durable (the file was opened with O_DSYNC), so
    /// that no separate `sync_data` is needed after it.
    fn durable_writes(&self) -> bool {
        false
    }
    /// Writes the whole buffer at `pos` (aligned). A short write is an error.
    async fn write_at(&self, buf: IoBuf, pos: u64) -> DiskResult<()>;
    /// Reads up to `len` bytes at `pos` (any position); fewer at the end of the file.
    async fn read_at(&self, pos: u64, len: usize) -> DiskResult<Vec<u8>>;
    /// Makes every completed write durable (fdatasync).
    async fn sync_data(&self) -> DiskResult<()>;
    /// Reserves space up to `len` bytes (fallocate); the file's size becomes `len`.
    async fn preallocate(&self, len: u64) -> DiskResult<()>;
    /// Current size of the file.
    async fn size(&self) -> DiskResult<u64>;
    /// Closes the file (a dropped file is closed too, without reporting errors).
    async fn close(self) -> DiskResult<()>;
}

/// A file system: opens log files and handles small metadata files and directories.
#[allow(async_fn_in_trait)]
pub trait Disk: Clone + 'static {
    type File: DiskFile;
    /// Opens (creating when asked) a file for direct reading and writing.
    async fn open(&self, path: &Path, create: bool) -> DiskResult<Self::File>;
    async fn create_dir_all(&self, path: &Path) -> DiskResult<()>;
    /// Names of the entries of a directory; an absent directory has none.
    async fn list_dir(&self, path: &Path) -> DiskResult<Vec<String>>;
    async fn remove_file(&self, path: &Path) -> DiskResult<()>;
    async fn remove_dir_all(&self, path: &Path) -> DiskResult<()>;
    /// Reads a small file whole; `None` when absent.
    async fn read_file(&self, path: &Path) -> DiskResult<Option<Vec<u8>>>;
    /// Replaces a small file atomically and durably (temp file, fsync, rename, fsync dir).
    async fn write_file_atomic(&self, path: &Path, bytes: Vec<u8>) -> DiskResult<()>;
    /// The epoch a log on this disk stamps into the batches it takes: the shared-storage
    /// lease's fencing epoch, so that a replaced node's late batches are told apart from its
    /// successor's. 0 on a disk without a fence.
    fn fencing_epoch(&self) -> u32 {
        0
    }
}
