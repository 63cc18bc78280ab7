//! The production [`Disk`]: glommio DMA files (O_DIRECT on io_uring) for logs, and blocking
//! std::fs calls moved off the shard to glommio's blocking pool for rare metadata work.

use std::io;
use std::path::{Path, PathBuf};

use glommio::io::{DmaFile, OpenOptions};

/// glommio's aligned buffer, which [`IoBuf::Dma`] holds.
pub type DmaBuffer = glommio::io::DmaBuffer;

use super::disk::{Disk, DiskError, DiskFile, DiskResult, IoBuf};

/// glommio-backed disk. Must be used from inside a glommio executor.
#[derive(Clone, Copy, Debug, Default)]
pub struct GlommioDisk {
    /// Open log files with O_DSYNC: each write is durable when it completes, one operation
    /// instead of a write and an fdatasync (used with `flush = always`).
    pub dsync: bool,
}

/// A log file opened with O_DIRECT (and O_DSYNC when the disk says so).
pub struct GlommioFile {
    file: DmaFile,
    path: PathBuf,
    dsync: bool,
}

fn to_io(e: glommio::GlommioError<()>) -> io::Error {
    io::Error::from(e)
}

impl DiskFile for GlommioFile {
    fn alignment(&self) -> usize {
        self.file.alignment() as usize
    }

    fn durable_writes(&self) -> bool {
        self.dsync
    }

    fn alloc_buf(&self, len: usize) -> IoBuf {
        let mut buf = self.file.alloc_dma_buffer(len);
        buf.as_bytes_mut().fill(0);
        IoBuf::Dma(buf)
    }

    async fn write_at(&self, buf: IoBuf, pos: u64) -> DiskResult<()> {
        let IoBuf::Dma(buf) = buf else { panic!("GlommioFile::write_at needs a DMA buffer from alloc_buf") };
        let len = buf.len();
        let written = self.file.write_at(buf, pos).await.map_err(|e| DiskError::new("write", &self.path, to_io(e)))?;
        if written != len {
            // A short direct write means the device ran out of room (see write(2)).
            let e = io::Error::from_raw_os_error(libc::ENOSPC);
            return Err(DiskError::new("write (short)", &self.path, e));
        }
        Ok(())
    }

    async fn read_at(&self, pos: u64, len: usize) -> DiskResult<Vec<u8>> {
        let r = self.file.read_at(pos, len).await.map_err(|e| {
            log::warn!("read of {len} bytes at {pos} from {} failed: {e}", self.path.display());
            DiskError::new("read", &self.path, to_io(e))
        })?;
        Ok(r.to_vec())
    }

    async fn sync_data(&self) -> DiskResult<()> {
        self.file.fdatasync().await.map_err(|e| DiskError::new("fdatasync", &self.path, to_io(e)))
    }

    async fn preallocate(&self, len: u64) -> DiskResult<()> {
        self.file.pre_allocate(len, false).await.map_err(|e| DiskError::new("fallocate", &self.path, to_io(e)))
    }

    async fn size(&self) -> DiskResult<u64> {
        self.file.file_size().await.map_err(|e| DiskError::new("stat", &self.path, to_io(e)))
    }

    async fn close(self) -> DiskResult<()> {
        self.file.close().await.map_err(|e| DiskError::new("close", &self.path, to_io(e)))
    }
}

/// Runs a blocking file-system call on glommio's blocking pool, so the shard keeps serving.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    glommio::executor().spawn_blocking(f).await
}

use super::durable_fs::{self, fsync_dir};

impl Disk for GlommioDisk {
    type File = GlommioFile;

    async fn open(&self, path: &Path, create: bool) -> DiskResult<GlommioFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .custom_flags(if self.dsync { libc::O_DSYNC } else { 0 })
            .dma_open(path)
            .await
            .map_err(|e| DiskError::new("open", path, to_io(e)))?;
        if create {
            // A new file's directory entry must be durable before anything in it counts as durable.
            if let Some(dir) = path.parent().map(Path::to_path_buf) {
                blocking(move || fsync_dir(&dir)).await.map_err(|e| DiskError::new("fsync dir of", path, e))?;
            }
        }
        Ok(GlommioFile { file, path: path.to_path_buf(), dsync: self.dsync })
    }

    async fn create_dir_all(&self, path: &Path) -> DiskResult<()> {
        on_path("mkdir", path, durable_fs::create_dir_all).await
    }

    async fn list_dir(&self, path: &Path) -> DiskResult<Vec<String>> {
        let names =
            |p: &Path| std::fs::read_dir(p)?.map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned())).collect();
        on_path("list", path, move |p| absent_as(names(p), Vec::new())).await
    }

    async fn remove_file(&self, path: &Path) -> DiskResult<()> {
        on_path("remove", path, durable_fs::remove_file).await
    }

    async fn remove_dir_all(&self, path: &Path) -> DiskResult<()> {
        on_path("remove dir", path, durable_fs::remove_dir_all).await
    }

    async fn read_file(&self, path: &Path) -> DiskResult<Option<Vec<u8>>> {
        on_path("read", path, |p| absent_as(std::fs::read(p).map(Some), None)).await
    }

    async fn write_file_atomic(&self, path: &Path, bytes: Vec<u8>) -> DiskResult<()> {
        on_path("write", path, move |p| write_file_atomic_fenced(p, &bytes)).await
    }
}

/// Runs a blocking call on `path` off the shard, with the operation and path in its error.
async fn on_path<T: Send + 'static>(
    op: &'static str,
    path: &Path,
    f: impl FnOnce(&Path) -> io::Result<T> + Send + 'static,
) -> DiskResult<T> {
    let p = path.to_path_buf();
    blocking(move || f(&p)).await.map_err(|e| DiskError::new(op, path, e))
}

/// A missing file or directory reads as `absent` instead of an error.
fn absent_as<T>(result: io::Result<T>, absent: T) -> io::Result<T> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(absent),
        other => other,
    }
}

/// Temp file, fsync, rename over the target, fsync the directory: all or nothing, durably.
///
/// The temporary name is unique per call, so concurrent writers of the same file (every
/// shard writes the device probe at start) cannot rename each other's file away.
pub fn write_file_atomic_blocking(path: &Path, bytes: &[u8]) -> io::Result<()> {
    durable_fs::write_atomic(path, bytes, || Ok(()))
}

/// [`write_file_atomic_blocking`], passing the shared-storage fence again just before the
/// rename: a node paused after the disk seam's check must not replace, when it resumes, a
/// file its successor wrote meanwhile.
fn write_file_atomic_fenced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    durable_fs::write_atomic(path, bytes, super::fence::check_io)
}

/// Makes glommio probe the data directory's device with a file that has data in it.
///
/// glommio decides once per device whether to use the io_uring poll ring, by reading the
/// first block of the first file it opens there. When that file is new and empty the read
/// "succeeds" without touching the device, glommio wrongly concludes that polling works,
/// and every later large read fails with EOPNOTSUPP. Opening a file with a real block
/// first gives the probe a real answer. Call before opening any log file.
pub async fn prime_device_probe(data_dir: &Path) -> io::Result<()> {
    let path = data_dir.join("meta").join("device-probe");
    let p = path.clone();
    blocking(move || {
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let needs_block = std::fs::metadata(&p).map(|m| m.len() < 4096).unwrap_or(true);
        if needs_block {
            write_file_atomic_blocking(&p, &[0u8; 4096])?;
        }
        Ok(())
    })
    .await?;
    let file = DmaFile::open(&path).await.map_err(io::Error::from)?;
    file.close().await.map_err(io::Error::from)
}
