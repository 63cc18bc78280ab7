//! An in-memory [`Disk`] for tests and simulation: it remembers what was synced, so that a
//! simulated crash loses (or tears) everything written since the last `sync_data`, and it
//! can be told to fail writes, syncs or preallocation.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

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

#[derive(Default)]
struct MemFs {
    files: BTreeMap<PathBuf, Rc<RefCell<MemFileData>>>,
    dirs: BTreeSet<PathBuf>,
    faults: MemFaults,
    writes: u64,
    syncs: u64,
}

/// A simulated file system, cheap to clone (all clones share it).
#[derive(Clone, Default)]
pub struct MemDisk {
    fs: Rc<RefCell<MemFs>>,
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
        self.fs.borrow_mut().faults = faults;
    }

    /// Number of writes and syncs so far.
    pub fn counters(&self) -> (u64, u64) {
        let fs = self.fs.borrow();
        (fs.writes, fs.syncs)
    }

    /// Simulates a power loss: returns the disk as a restarted machine would find it.
    /// Open handles of the old disk keep working on the old state and must be dropped.
    pub fn crash(&self, mode: CrashMode) -> MemDisk {
        let fs = self.fs.borrow();
        let mut files = BTreeMap::new();
        for (path, data) in &fs.files {
            let data = data.borrow();
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
            files.insert(path.clone(), Rc::new(RefCell::new(data)));
        }
        let new = MemFs { files, dirs: fs.dirs.clone(), ..Default::default() };
        MemDisk { fs: Rc::new(RefCell::new(new)) }
    }

    /// Direct access to a file's current bytes (tests corrupt them).
    pub fn with_file<R>(&self, path: &Path, f: impl FnOnce(&mut Vec<u8>) -> R) -> Option<R> {
        let fs = self.fs.borrow();
        let mut data = fs.files.get(path)?.borrow_mut();
        let r = f(&mut data.current);
        data.durable = data.current.clone();
        data.unsynced.clear();
        Some(r)
    }
}

/// Waits as long as the latency model says `op` takes (not at all without one).
async fn take_time(fs: &Rc<RefCell<MemFs>>, op: DiskOp) {
    let latency = fs.borrow().faults.latency.clone();
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
    fs: Rc<RefCell<MemFs>>,
    data: Rc<RefCell<MemFileData>>,
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
        take_time(&self.fs, DiskOp::Write).await;
        let mut fs = self.fs.borrow_mut();
        if let Some(e) = fs.faults.write_errno {
            return Err(errno("write", &self.path, e));
        }
        fs.writes += 1;
        let mut data = self.data.borrow_mut();
        apply(&mut data.current, pos, buf.as_slice());
        data.unsynced.push((pos, buf.as_slice().to_vec()));
        Ok(())
    }

    async fn read_at(&self, pos: u64, len: usize) -> DiskResult<Vec<u8>> {
        let data = self.data.borrow();
        let start = (pos as usize).min(data.current.len());
        let end = (start + len).min(data.current.len());
        Ok(data.current[start..end].to_vec())
    }

    async fn sync_data(&self) -> DiskResult<()> {
        let gate = self.fs.borrow().faults.hold_syncs.clone();
        while gate.as_ref().is_some_and(|g| g.get()) {
            futures_lite::future::yield_now().await;
        }
        // What a sync makes durable is what was written before it began; writes that
        // complete while it runs stay unsynced.
        let (before, writes_before) = {
            let data = self.data.borrow();
            (data.current.clone(), data.unsynced.len())
        };
        take_time(&self.fs, DiskOp::Sync).await;
        let mut fs = self.fs.borrow_mut();
        if let Some(e) = fs.faults.sync_errno {
            return Err(errno("fdatasync", &self.path, e));
        }
        fs.syncs += 1;
        let mut data = self.data.borrow_mut();
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
        let fs = self.fs.borrow();
        if let Some(e) = fs.faults.preallocate_errno {
            return Err(errno("fallocate", &self.path, e));
        }
        let mut data = self.data.borrow_mut();
        if data.current.len() < len as usize {
            data.current.resize(len as usize, 0);
            // Metadata-only change: a crash keeps the size (as fallocate + fsync would).
            data.durable.resize(len as usize, 0);
        }
        Ok(())
    }

    async fn size(&self) -> DiskResult<u64> {
        Ok(self.data.borrow().current.len() as u64)
    }

    async fn close(self) -> DiskResult<()> {
        Ok(())
    }
}

impl Disk for MemDisk {
    type File = MemFile;

    async fn open(&self, path: &Path, create: bool) -> DiskResult<MemFile> {
        let mut fs = self.fs.borrow_mut();
        if !fs.files.contains_key(path) {
            if !create {
                return Err(errno("open", path, libc::ENOENT));
            }
            fs.files.insert(path.to_path_buf(), Rc::default());
        }
        let data = fs.files[path].clone();
        Ok(MemFile { fs: self.fs.clone(), data, path: path.to_path_buf() })
    }

    async fn create_dir_all(&self, path: &Path) -> DiskResult<()> {
        let mut fs = self.fs.borrow_mut();
        for a in path.ancestors() {
            fs.dirs.insert(a.to_path_buf());
        }
        Ok(())
    }

    async fn list_dir(&self, path: &Path) -> DiskResult<Vec<String>> {
        let fs = self.fs.borrow();
        let mut names = BTreeSet::new();
        for p in fs.files.keys().chain(fs.dirs.iter()) {
            if p.parent() == Some(path) {
                if let Some(n) = p.file_name() {
                    names.insert(n.to_string_lossy().into_owned());
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    async fn remove_file(&self, path: &Path) -> DiskResult<()> {
        let mut fs = self.fs.borrow_mut();
        if let Some(left) = &fs.faults.removals_left {
            if left.get() == 0 {
                return Err(errno("remove", path, libc::EIO));
            }
            left.set(left.get() - 1);
        }
        fs.files.remove(path);
        Ok(())
    }

    async fn remove_dir_all(&self, path: &Path) -> DiskResult<()> {
        let mut fs = self.fs.borrow_mut();
        fs.files.retain(|p, _| !p.starts_with(path));
        fs.dirs.retain(|p| !p.starts_with(path));
        Ok(())
    }

    async fn read_file(&self, path: &Path) -> DiskResult<Option<Vec<u8>>> {
        Ok(self.fs.borrow().files.get(path).map(|d| d.borrow().current.clone()))
    }

    async fn write_file_atomic(&self, path: &Path, bytes: Vec<u8>) -> DiskResult<()> {
        take_time(&self.fs, DiskOp::ReplaceFile).await;
        let mut fs = self.fs.borrow_mut();
        if let Some(e) = fs.faults.write_errno {
            return Err(errno("write", path, e));
        }
        let data = MemFileData { durable: bytes.clone(), current: bytes, unsynced: Vec::new() };
        fs.files.insert(path.to_path_buf(), Rc::new(RefCell::new(data)));
        Ok(())
    }
}
