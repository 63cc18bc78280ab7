//! An in-memory [`Disk`] for tests and simulation: it remembers what was synced, so that a
//! simulated crash loses (or tears) everything written since the last `sync_data`, and it
//! can be told to fail writes, syncs or preallocation.
//!
//! The same simulated file system is also a [`ControlFiles`] ([`MemDisk::control_files`]):
//! the metadata log and the leases, which run on threads of their own, see the same crashes
//! and errnos. So the files are shared through `Arc<Mutex<_>>`; the shard-side fault
//! switches (latency from the simulator's seeded source, held syncs) stay `Rc`.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard};

use super::control_files::ControlFiles;
use super::disk::{Disk, DiskError, DiskFile, DiskResult, IoBuf};

const ALIGN: usize = 4096;

#[derive(Default, Clone)]
struct MemFileData {
    /// What a crash leaves.
    durable: Vec<u8>,
    /// What reads see.
    current: Vec<u8>,
    /// Writes since the last sync, in order: a crash may keep a prefix of them (torn).
    unsynced: Vec<(u64, Vec<u8>)>,
}

/// Faults the next operations will meet.
#[derive(Default, Clone, Debug)]
pub struct MemFaults {
    /// Every write fails with this errno while set.
    pub write_errno: Option<i32>,
    /// Every sync fails with this errno while set.
    pub sync_errno: Option<i32>,
    /// Preallocation fails with this errno while set.
    pub preallocate_errno: Option<i32>,
    /// While it holds `true`, every sync waits (yielding to other tasks): a slow flush, so
    /// that tests can stage what happens while one is in flight.
    pub hold_syncs: Option<std::rc::Rc<std::cell::Cell<bool>>>,
    /// How long each operation takes (through `rt::sleep`: virtual time in the simulator).
    pub latency: Option<DiskLatency>,
    /// So many more file removals succeed, then every one fails with EIO: work cut short
    /// between its removals, as a crash would cut it.
    pub removals_left: Option<std::rc::Rc<std::cell::Cell<u32>>>,
}

/// The kinds of operation a [`DiskLatency`] is asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskOp {
    Write,
    Sync,
    /// `write_file_atomic`: a small file written, synced and renamed into place.
    ReplaceFile,
}

/// The time each disk operation takes: a function, so that the simulator draws it from its
/// seeded random source.
#[derive(Clone)]
pub struct DiskLatency(pub Rc<dyn Fn(DiskOp) -> std::time::Duration>);

impl std::fmt::Debug for DiskLatency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DiskLatency")
    }
}

type SharedFile = Arc<Mutex<MemFileData>>;

/// The files and directories, shared by the disk, its open files and its control files.
#[derive(Default)]
struct MemFs {
    files: BTreeMap<PathBuf, SharedFile>,
    dirs: BTreeSet<PathBuf>,
    /// What the control files' writes and syncs meet (the shard-side switches are `Rc`).
    control_write_errno: Option<i32>,
    control_sync_errno: Option<i32>,
    writes: u64,
    syncs: u64,
}

impl MemFs {
    fn list_dir(&self, path: &Path) -> Vec<String> {
        let mut names = BTreeSet::new();
        for p in self.files.keys().chain(self.dirs.iter()) {
            if p.parent() == Some(path) {
                if let Some(n) = p.file_name() {
                    names.insert(n.to_string_lossy().into_owned());
                }
            }
        }
        names.into_iter().collect()
    }

    fn create_dir_all(&mut self, path: &Path) {
        for a in path.ancestors() {
            self.dirs.insert(a.to_path_buf());
        }
    }

    fn read(&self, path: &Path) -> Option<Vec<u8>> {
        self.files.get(path).map(|d| lock(d).current.clone())
    }

    /// A file replaced whole and durably (written, synced, renamed).
    fn replace(&mut self, path: &Path, bytes: Vec<u8>) {
        let data = MemFileData { durable: bytes.clone(), current: bytes, unsynced: Vec::new() };
        self.files.insert(path.to_path_buf(), Arc::new(Mutex::new(data)));
    }
}

/// Locks shared simulated state; a panic elsewhere (a failed test) does not hide it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A simulated file system, cheap to clone (all clones share it).
#[derive(Clone, Default)]
pub struct MemDisk {
    fs: Arc<Mutex<MemFs>>,
    faults: Rc<RefCell<MemFaults>>,
}

/// How a simulated crash treats unsynced writes.
#[derive(Clone, Copy, Debug)]
pub enum CrashMode {
    /// Every unsynced write is lost.
    LoseUnsynced,
    /// The first `n` unsynced writes survive, and the next one only up to `torn_bytes`.
    Tear { keep_writes: usize, torn_bytes: usize },
}

impl MemDisk {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set_faults(&self, faults: MemFaults) {
        *self.faults.borrow_mut() = faults;
    }

    /// The same file system seen by the control plane's blocking seam.
    pub fn control_files(&self) -> MemControlFiles {
        MemControlFiles { fs: self.fs.clone() }
    }

    /// Number of writes and syncs so far.
    pub fn counters(&self) -> (u64, u64) {
        let fs = lock(&self.fs);
        (fs.writes, fs.syncs)
    }

    /// Simulates a power loss: returns the disk as a restarted machine would find it.
    /// Open handles of the old disk keep working on the old state and must be dropped.
    pub fn crash(&self, mode: CrashMode) -> MemDisk {
        let fs = lock(&self.fs);
        let mut files = BTreeMap::new();
        for (path, data) in &fs.files {
            let data = lock(data);
            let mut content = data.durable.clone();
            if let CrashMode::Tear { keep_writes, torn_bytes } = mode {
                for (i, (pos, bytes)) in data.unsynced.iter().enumerate() {
                    let take = if i < keep_writes {
                        bytes.len()
                    } else if i == keep_writes {
                        torn_bytes.min(bytes.len())
                    } else {
                        break;
                    };
                    apply(&mut content, *pos, &bytes[..take]);
                }
            }
            let data = MemFileData { durable: content.clone(), current: content, unsynced: Vec::new() };
            files.insert(path.clone(), Arc::new(Mutex::new(data)));
        }
        let new = MemFs { files, dirs: fs.dirs.clone(), ..Default::default() };
        MemDisk { fs: Arc::new(Mutex::new(new)), faults: Rc::default() }
    }

    /// Direct access to a file's current bytes (tests corrupt them).
    pub fn with_file<R>(&self, path: &Path, f: impl FnOnce(&mut Vec<u8>) -> R) -> Option<R> {
        let fs = lock(&self.fs);
        let mut data = lock(fs.files.get(path)?);
        let r = f(&mut data.current);
        data.durable = data.current.clone();
        data.unsynced.clear();
        Some(r)
    }
}

/// Waits as long as the latency model says `op` takes (not at all without one).
async fn take_time(faults: &RefCell<MemFaults>, op: DiskOp) {
    let latency = faults.borrow().latency.clone();
    if let Some(DiskLatency(of)) = latency {
        crate::rt::sleep(of(op)).await;
    }
}

fn apply(content: &mut Vec<u8>, pos: u64, bytes: &[u8]) {
    let end = pos as usize + bytes.len();
    if content.len() < end {
        content.resize(end, 0);
    }
    content[pos as usize..end].copy_from_slice(bytes);
}

fn errno(op: &'static str, path: &Path, e: i32) -> DiskError {
    DiskError::new(op, path, io::Error::from_raw_os_error(e))
}

/// A handle to a simulated file (it shares the file's data, as an open descriptor would).
pub struct MemFile {
    fs: Arc<Mutex<MemFs>>,
    faults: Rc<RefCell<MemFaults>>,
    data: SharedFile,
    path: PathBuf,
}

impl DiskFile for MemFile {
    fn alignment(&self) -> usize {
        ALIGN
    }

    fn alloc_buf(&self, len: usize) -> IoBuf {
        assert_eq!(len % ALIGN, 0, "unaligned buffer length {len}");
        IoBuf::Heap(vec![0; len])
    }

    async fn write_at(&self, buf: IoBuf, pos: u64) -> DiskResult<()> {
        assert_eq!(pos as usize % ALIGN, 0, "unaligned write position {pos}");
        assert_eq!(buf.len() % ALIGN, 0, "unaligned write length {}", buf.len());
        take_time(&self.faults, DiskOp::Write).await;
        if let Some(e) = self.faults.borrow().write_errno {
            return Err(errno("write", &self.path, e));
        }
        lock(&self.fs).writes += 1;
        let mut data = lock(&self.data);
        apply(&mut data.current, pos, buf.as_slice());
        data.unsynced.push((pos, buf.as_slice().to_vec()));
        Ok(())
    }

    async fn read_at(&self, pos: u64, len: usize) -> DiskResult<Vec<u8>> {
        let data = lock(&self.data);
        let start = (pos as usize).min(data.current.len());
        let end = (start + len).min(data.current.len());
        Ok(data.current[start..end].to_vec())
    }

    async fn sync_data(&self) -> DiskResult<()> {
        let gate = self.faults.borrow().hold_syncs.clone();
        while gate.as_ref().is_some_and(|g| g.get()) {
            futures_lite::future::yield_now().await;
        }
        // What a sync makes durable is what was written before it began; writes that
        // complete while it runs stay unsynced.
        let (before, writes_before) = {
            let data = lock(&self.data);
            (data.current.clone(), data.unsynced.len())
        };
        take_time(&self.faults, DiskOp::Sync).await;
        if let Some(e) = self.faults.borrow().sync_errno {
            return Err(errno("fdatasync", &self.path, e));
        }
        lock(&self.fs).syncs += 1;
        let mut data = lock(&self.data);
        // (A preallocation during the sync made the file longer, durably.)
        let preallocated = data.durable.len();
        data.durable = before;
        if data.durable.len() < preallocated {
            data.durable.resize(preallocated, 0);
        }
        let writes_before = writes_before.min(data.unsynced.len());
        data.unsynced.drain(..writes_before);
        Ok(())
    }

    async fn preallocate(&self, len: u64) -> DiskResult<()> {
        if let Some(e) = self.faults.borrow().preallocate_errno {
            return Err(errno("fallocate", &self.path, e));
        }
        let mut data = lock(&self.data);
        if data.current.len() < len as usize {
            data.current.resize(len as usize, 0);
            // Metadata-only change: a crash keeps the size (as fallocate + fsync would).
            data.durable.resize(len as usize, 0);
        }
        Ok(())
    }

    async fn size(&self) -> DiskResult<u64> {
        Ok(lock(&self.data).current.len() as u64)
    }

    async fn close(self) -> DiskResult<()> {
        Ok(())
    }
}

impl Disk for MemDisk {
    type File = MemFile;

    async fn open(&self, path: &Path, create: bool) -> DiskResult<MemFile> {
        let mut fs = lock(&self.fs);
        if !fs.files.contains_key(path) {
            if !create {
                return Err(errno("open", path, libc::ENOENT));
            }
            fs.files.insert(path.to_path_buf(), SharedFile::default());
        }
        let data = fs.files[path].clone();
        Ok(MemFile { fs: self.fs.clone(), faults: self.faults.clone(), data, path: path.to_path_buf() })
    }

    async fn create_dir_all(&self, path: &Path) -> DiskResult<()> {
        lock(&self.fs).create_dir_all(path);
        Ok(())
    }

    async fn list_dir(&self, path: &Path) -> DiskResult<Vec<String>> {
        Ok(lock(&self.fs).list_dir(path))
    }

    async fn remove_file(&self, path: &Path) -> DiskResult<()> {
        if let Some(left) = &self.faults.borrow().removals_left {
            if left.get() == 0 {
                return Err(errno("remove", path, libc::EIO));
            }
            left.set(left.get() - 1);
        }
        lock(&self.fs).files.remove(path);
        Ok(())
    }

    async fn remove_dir_all(&self, path: &Path) -> DiskResult<()> {
        let mut fs = lock(&self.fs);
        fs.files.retain(|p, _| !p.starts_with(path));
        fs.dirs.retain(|p| !p.starts_with(path));
        Ok(())
    }

    async fn read_file(&self, path: &Path) -> DiskResult<Option<Vec<u8>>> {
        Ok(lock(&self.fs).read(path))
    }

    async fn write_file_atomic(&self, path: &Path, bytes: Vec<u8>) -> DiskResult<()> {
        take_time(&self.faults, DiskOp::ReplaceFile).await;
        if let Some(e) = self.faults.borrow().write_errno {
            return Err(errno("write", path, e));
        }
        lock(&self.fs).replace(path, bytes);
        Ok(())
    }
}

/// A [`MemDisk`]'s file system through the control plane's blocking seam: what a crash of
/// the disk keeps, these files keep; what it loses, they lose.
#[derive(Clone)]
pub struct MemControlFiles {
    fs: Arc<Mutex<MemFs>>,
}

impl MemControlFiles {
    /// Makes every later write (`write`) or sync (`sync`) of the control files fail with
    /// the errno given, or succeed again with `None`.
    pub fn set_errnos(&self, write: Option<i32>, sync: Option<i32>) {
        let mut fs = lock(&self.fs);
        fs.control_write_errno = write;
        fs.control_sync_errno = sync;
    }

    fn refuse_write(fs: &MemFs) -> io::Result<()> {
        fs.control_write_errno.map_or(Ok(()), |e| Err(io::Error::from_raw_os_error(e)))
    }
}

impl ControlFiles for MemControlFiles {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        lock(&self.fs).create_dir_all(dir);
        Ok(())
    }

    fn read(&self, path: &Path) -> io::Result<Option<Vec<u8>>> {
        Ok(lock(&self.fs).read(path))
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        Ok(lock(&self.fs).list_dir(dir))
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut fs = lock(&self.fs);
        Self::refuse_write(&fs)?;
        fs.replace(path, bytes.to_vec());
        Ok(())
    }

    fn create_new(&self, path: &Path, bytes: &[u8]) -> io::Result<bool> {
        let mut fs = lock(&self.fs);
        if fs.files.contains_key(path) {
            return Ok(false);
        }
        Self::refuse_write(&fs)?;
        fs.replace(path, bytes.to_vec());
        Ok(true)
    }

    fn append(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let fs = lock(&self.fs);
        Self::refuse_write(&fs)?;
        let file = fs.files.get(path).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        let mut data = lock(file);
        let at = data.current.len() as u64;
        apply(&mut data.current, at, bytes);
        data.unsynced.push((at, bytes.to_vec()));
        if let Some(e) = fs.control_sync_errno {
            return Err(io::Error::from_raw_os_error(e));
        }
        data.durable = data.current.clone();
        data.unsynced.clear();
        Ok(())
    }

    fn truncate(&self, path: &Path, len: u64) -> io::Result<()> {
        let fs = lock(&self.fs);
        Self::refuse_write(&fs)?;
        let file = fs.files.get(path).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
        let mut data = lock(file);
        data.current.truncate(len as usize);
        data.durable = data.current.clone();
        data.unsynced.clear();
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        lock(&self.fs).files.remove(path);
        Ok(())
    }
}
