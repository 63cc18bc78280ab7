//! openraft storage for the metadata log, on the control-plane thread.
//!
//! Files in `<data_dir>/meta/raft/`:
//! - `log`: append-only records `[len u32][crc32c u32][json]`, each an entry, a truncation
//!   or a purge marker, fsync'ed before openraft is told they are durable. A torn or
//!   corrupt record ends the log at start-up (everything after it was never acknowledged:
//!   the fsync that would have made it durable did not return).
//! - `vote.json`, `committed.json`, `snapshot.json`: replaced atomically.
//!
//! Metadata is small and changes rarely (topic changes, elections), so plain blocking file
//! I/O on the control thread is enough; the data path never waits for it. It goes through
//! the control plane's file seam ([`ControlFiles`]): the operating system's files with the
//! injected `meta=` faults in production, a crashable [`crate::storage::mem_disk::MemDisk`]
//! in tests.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::meta::{MetaCommand, MetaError, MetaState};
use crate::limits::MAX_CONTROL_MESSAGE_BYTES;
use crate::storage::control_files::{ControlFiles, SharedControlFiles};

/// The result of applying one metadata command: why it was refused, or what it allocated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaReply {
    pub error: Option<MetaError>,
    #[serde(default)]
    pub value: Option<u64>,
}

impl MetaReply {
    fn of(result: Result<Option<u64>, MetaError>) -> MetaReply {
        match result {
            Ok(value) => MetaReply { error: None, value },
            Err(e) => MetaReply { error: Some(e), value: None },
        }
    }
}

openraft::declare_raft_types!(
    /// openraft's types for the metadata group.
    pub MetaRaft:
        D = MetaCommand,
        R = MetaReply,
        NodeId = u64,
        Node = openraft::BasicNode,
);

pub type RaftNodeId = u64;
type StoreResult<T> = Result<T, StorageError<RaftNodeId>>;

#[derive(Serialize, Deserialize)]
enum LogRecord {
    Entry(Entry<MetaRaft>),
    /// Entries at and after this index are gone.
    Truncate(u64),
    /// Entries up to this log id are gone (a snapshot covers them).
    Purge(LogId<RaftNodeId>),
}

/// Writes one framed record.
fn encode_record(out: &mut Vec<u8>, record: &LogRecord) {
    let json = serde_json::to_vec(record).expect("log records serialize");
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&json).to_le_bytes());
    out.extend_from_slice(&json);
}

/// What reading the metadata log found.
struct Decoded {
    records: Vec<LogRecord>,
    /// Length of the valid prefix.
    valid: usize,
    /// Intact records after the first damaged one: more than 0 means damage in the middle
    /// of the log (a torn write only ever damages its end), and the entries after it are
    /// committed ones that must not be dropped.
    intact_after_damage: usize,
}

/// One framed record at `at`: it and the position after it, if it is whole and intact.
fn decode_record_at(bytes: &[u8], at: usize) -> Option<(LogRecord, usize)> {
    let header = bytes.get(at..at + 8)?;
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if len == 0 || len > MAX_CONTROL_MESSAGE_BYTES || bytes.len() - at - 8 < len {
        return None;
    }
    let body = &bytes[at + 8..at + 8 + len];
    if crc32c::crc32c(body) != crc {
        return None;
    }
    serde_json::from_slice(body).ok().map(|r| (r, at + 8 + len))
}

/// Reads framed records until the end or the first torn/corrupt one, then looks past that
/// one for intact records (which tell damage in the middle from a torn tail).
fn decode_records(bytes: &[u8]) -> Decoded {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some((r, next)) = decode_record_at(bytes, at) {
        records.push(r);
        at = next;
    }
    let valid = at;
    let mut intact_after_damage = 0;
    // (Only when something follows the damage: nothing to scan in a clean log.)
    let mut scan = valid + 1;
    while scan + 8 <= bytes.len() {
        match decode_record_at(bytes, scan) {
            Some((_, next)) => {
                intact_after_damage += 1;
                scan = next;
            }
            None => scan += 1,
        }
    }
    Decoded { records, valid, intact_after_damage }
}

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn read_json<T: for<'de> Deserialize<'de>>(files: &dyn ControlFiles, path: &Path) -> std::io::Result<Option<T>> {
    match files.read(path)? {
        Some(b) => serde_json::from_slice(&b).map(Some).map_err(|e| io_err(format!("{}: {e}", path.display()))),
        None => Ok(None),
    }
}

struct LogInner {
    files: SharedControlFiles,
    dir: PathBuf,
    entries: BTreeMap<u64, Entry<MetaRaft>>,
    last_purged: Option<LogId<RaftNodeId>>,
}

impl LogInner {
    fn write_records(&mut self, records: &[LogRecord]) -> std::io::Result<()> {
        let mut buf = Vec::new();
        for r in records {
            encode_record(&mut buf, r);
        }
        self.files.append(&self.dir.join("log"), &buf)
    }

    /// Rewrites the log file with only what is still needed (after a purge).
    fn compact(&mut self) -> std::io::Result<()> {
        let mut buf = Vec::new();
        if let Some(p) = self.last_purged {
            encode_record(&mut buf, &LogRecord::Purge(p));
        }
        for e in self.entries.values() {
            encode_record(&mut buf, &LogRecord::Entry(e.clone()));
        }
        self.files.write_atomic(&self.dir.join("log"), &buf)
    }
}

/// The metadata log (openraft's log storage, v2 traits). Clones share the log.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<LogInner>>,
}

impl LogStore {
    pub fn open(files: SharedControlFiles, dir: &Path) -> std::io::Result<LogStore> {
        files.create_dir_all(dir)?;
        let path = dir.join("log");
        let bytes = match files.read(&path)? {
            Some(bytes) => bytes,
            None => {
                // The new log's name must be durable before any record in it counts.
                files.write_atomic(&path, &[])?;
                Vec::new()
            }
        };
        let Decoded { records, valid, intact_after_damage } = decode_records(&bytes);
        if intact_after_damage > 0 {
            // Dropping the damaged record would drop every committed entry after it too.
            return Err(std::io::Error::other(format!(
                "{}: the record at byte {valid} is damaged and {intact_after_damage} intact records follow it: \
                 this is not a torn tail but corruption in the middle of the log, and committed metadata \
                 would be lost; refusing to start. Restore this node's data directory from a backup, or \
                 replace the node (remove it from the cluster and add a fresh one)",
                path.display()
            )));
        }
        if valid < bytes.len() {
            log::warn!("metadata log {}: dropping {} bytes of torn tail", path.display(), bytes.len() - valid);
            files.truncate(&path, valid as u64)?;
        }
        let mut entries = BTreeMap::new();
        let mut last_purged = None;
        for r in records {
            match r {
                LogRecord::Entry(e) => {
                    entries.insert(e.log_id.index, e);
                }
                LogRecord::Truncate(i) => {
                    entries.split_off(&i);
                }
                LogRecord::Purge(id) => {
                    entries = entries.split_off(&(id.index + 1));
                    last_purged = Some(id);
                }
            }
        }
        Ok(LogStore { inner: Arc::new(Mutex::new(LogInner { files, dir: dir.to_path_buf(), entries, last_purged })) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogInner> {
        self.inner.lock().expect("metadata log lock")
    }

    /// The seam and the path of one of the log's small files.
    fn file(&self, name: &str) -> (SharedControlFiles, PathBuf) {
        let inner = self.lock();
        (inner.files.clone(), inner.dir.join(name))
    }
}

impl RaftLogReader<MetaRaft> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StoreResult<Vec<Entry<MetaRaft>>> {
        Ok(self.lock().entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<MetaRaft> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StoreResult<LogState<MetaRaft>> {
        let inner = self.lock();
        let last = inner.entries.values().next_back().map(|e| e.log_id).or(inner.last_purged);
        Ok(LogState { last_purged_log_id: inner.last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<RaftNodeId>) -> StoreResult<()> {
        let bytes = serde_json::to_vec(vote).expect("vote serializes");
        let (files, path) = self.file("vote.json");
        files.write_atomic(&path, &bytes).map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> StoreResult<Option<Vote<RaftNodeId>>> {
        let (files, path) = self.file("vote.json");
        read_json(&*files, &path).map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<RaftNodeId>>) -> StoreResult<()> {
        let bytes = serde_json::to_vec(&committed).expect("log id serializes");
        let (files, path) = self.file("committed.json");
        files.write_atomic(&path, &bytes).map_err(|e| StorageIOError::write(&e).into())
    }

    async fn read_committed(&mut self) -> StoreResult<Option<LogId<RaftNodeId>>> {
        let (files, path) = self.file("committed.json");
        let c: Option<Option<LogId<RaftNodeId>>> = read_json(&*files, &path).map_err(|e| StorageIOError::read(&e))?;
        Ok(c.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<MetaRaft>) -> StoreResult<()>
    where
        I: IntoIterator<Item = Entry<MetaRaft>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        let records: Vec<_> = entries.iter().cloned().map(LogRecord::Entry).collect();
        let mut inner = self.lock();
        let result = inner.write_records(&records);
        if result.is_ok() {
            for e in entries {
                inner.entries.insert(e.log_id.index, e);
            }
        }
        let err = result.as_ref().err().map(|e| StorageIOError::write_logs(e).into());
        callback.log_io_completed(result);
        err.map_or(Ok(()), Err)
    }

    async fn truncate(&mut self, log_id: LogId<RaftNodeId>) -> StoreResult<()> {
        let mut inner = self.lock();
        inner.write_records(&[LogRecord::Truncate(log_id.index)]).map_err(|e| StorageIOError::write_logs(&e))?;
        inner.entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<RaftNodeId>) -> StoreResult<()> {
        let mut inner = self.lock();
        inner.entries = inner.entries.split_off(&(log_id.index + 1));
        inner.last_purged = Some(log_id);
        inner.compact().map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

#[derive(Serialize, Deserialize, Clone)]
struct SnapshotFile {
    meta: SnapshotMeta<RaftNodeId, openraft::BasicNode>,
    state: MetaState,
}

struct MachineInner {
    files: SharedControlFiles,
    dir: PathBuf,
    last_applied: Option<LogId<RaftNodeId>>,
    membership: StoredMembership<RaftNodeId, openraft::BasicNode>,
    state: MetaState,
    snapshot: Option<SnapshotFile>,
    snapshot_count: u64,
}

/// The metadata state machine. Every applied change is published on a watch channel that
/// the shards follow.
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Mutex<MachineInner>>,
    published: Arc<watch::Sender<Arc<MetaState>>>,
}

impl StateMachine {
    /// Opens the state machine from its last snapshot (entries after it are applied again
    /// by openraft from the log).
    pub fn open(
        files: SharedControlFiles,
        dir: &Path,
    ) -> std::io::Result<(StateMachine, watch::Receiver<Arc<MetaState>>)> {
        let snapshot: Option<SnapshotFile> = read_json(&*files, &dir.join("snapshot.json"))?;
        let (last_applied, membership, state) = match &snapshot {
            Some(s) => (s.meta.last_log_id, s.meta.last_membership.clone(), s.state.clone()),
            None => (None, StoredMembership::default(), MetaState::default()),
        };
        let (tx, rx) = watch::channel(Arc::new(state.clone()));
        let inner = MachineInner {
            files,
            dir: dir.to_path_buf(),
            last_applied,
            membership,
            state,
            snapshot,
            snapshot_count: 0,
        };
        Ok((StateMachine { inner: Arc::new(Mutex::new(inner)), published: Arc::new(tx) }, rx))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MachineInner> {
        self.inner.lock().expect("state machine lock")
    }

    fn publish(&self, state: &MetaState) {
        self.published.send_replace(Arc::new(state.clone()));
    }
}

impl RaftSnapshotBuilder<MetaRaft> for StateMachine {
    async fn build_snapshot(&mut self) -> StoreResult<Snapshot<MetaRaft>> {
        let mut inner = self.lock();
        inner.snapshot_count += 1;
        let snapshot_id = format!(
            "{}-{}",
            inner.last_applied.map_or_else(|| "0".to_string(), |l| l.index.to_string()),
            inner.snapshot_count
        );
        let meta =
            SnapshotMeta { last_log_id: inner.last_applied, last_membership: inner.membership.clone(), snapshot_id };
        let file = SnapshotFile { meta: meta.clone(), state: inner.state.clone() };
        let bytes = serde_json::to_vec(&file).expect("snapshot serializes");
        inner
            .files
            .write_atomic(&inner.dir.join("snapshot.json"), &bytes)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        inner.snapshot = Some(file);
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) })
    }
}

impl RaftStateMachine<MetaRaft> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> StoreResult<(Option<LogId<RaftNodeId>>, StoredMembership<RaftNodeId, openraft::BasicNode>)> {
        let inner = self.lock();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StoreResult<Vec<MetaReply>>
    where
        I: IntoIterator<Item = Entry<MetaRaft>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut replies = Vec::new();
        let mut inner = self.lock();
        for e in entries {
            inner.last_applied = Some(e.log_id);
            let reply = match e.payload {
                EntryPayload::Blank => MetaReply::default(),
                EntryPayload::Normal(cmd) => MetaReply::of(inner.state.apply(&cmd)),
                EntryPayload::Membership(m) => {
                    inner.membership = StoredMembership::new(Some(e.log_id), m);
                    MetaReply::default()
                }
            };
            replies.push(reply);
        }
        self.publish(&inner.state);
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StoreResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<RaftNodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StoreResult<()> {
        let bytes = snapshot.into_inner();
        let file: SnapshotFile = serde_json::from_slice(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &io_err(e)))?;
        let mut inner = self.lock();
        inner
            .files
            .write_atomic(&inner.dir.join("snapshot.json"), &bytes)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        inner.last_applied = meta.last_log_id;
        inner.membership = meta.last_membership.clone();
        inner.state = file.state.clone();
        inner.snapshot = Some(file);
        self.publish(&inner.state);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StoreResult<Option<Snapshot<MetaRaft>>> {
        let inner = self.lock();
        Ok(inner.snapshot.as_ref().map(|s| {
            let bytes = serde_json::to_vec(s).expect("snapshot serializes");
            Snapshot { meta: s.meta.clone(), snapshot: Box::new(Cursor::new(bytes)) }
        }))
    }
}

/// A blank entry of term 1 at `index`.
#[cfg(test)]
fn blank(index: u64) -> LogRecord {
    LogRecord::Entry(Entry {
        log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Blank,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_stop_at_a_torn_or_corrupt_tail() {
        let mut buf = Vec::new();
        encode_record(&mut buf, &LogRecord::Truncate(5));
        encode_record(&mut buf, &LogRecord::Truncate(7));
        let whole = buf.len();
        let d = decode_records(&buf);
        assert_eq!((d.records.len(), d.valid, d.intact_after_damage), (2, whole, 0));
        let d = decode_records(&buf[..whole - 1]);
        assert_eq!(d.records.len(), 1, "a torn record ends the log");
        assert!(d.valid < whole);
        assert_eq!(d.intact_after_damage, 0, "a torn tail");
        let mut flipped = buf.clone();
        flipped[whole - 2] ^= 1;
        let d = decode_records(&flipped);
        assert_eq!((d.records.len(), d.intact_after_damage), (1, 0), "a corrupt last record ends the log");
        let mut huge = buf.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let d = decode_records(&huge);
        assert_eq!(d.records.len(), 0, "an absurd length is not trusted");
        assert_eq!(d.intact_after_damage, 1, "and the record after it is seen");
    }

    fn blank_entry(index: u64) -> LogRecord {
        blank(index)
    }

    /// Defect 11k: a damaged record in the middle of the metadata log must not silently drop
    /// the committed entries after it: the node refuses to start and says why, and the log
    /// file is left as it was. Damage to the last record alone is a torn tail, cut as before.
    #[test]
    fn a_damaged_record_in_the_middle_of_the_metadata_log_refuses_the_start() {
        let dir = tempfile::Builder::new().prefix("quorra-metalog").tempdir_in("/tmp").unwrap();
        let mut buf = Vec::new();
        let mut ends = Vec::new();
        for index in 1..=5 {
            encode_record(&mut buf, &blank_entry(index));
            ends.push(buf.len());
        }
        let path = dir.path().join("log");
        let mut damaged = buf.clone();
        damaged[ends[1] + 12] ^= 0x40; // inside entry 3
        std::fs::write(&path, &damaged).unwrap();
        let files = crate::storage::control_files::OsControlFiles::shared(
            crate::storage::control_files::InjectedFaults::Metadata,
        );
        let e = LogStore::open(files.clone(), dir.path()).err().expect("refused");
        assert!(e.to_string().contains("2 intact records follow"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), damaged, "nothing cut");
        // The same damage in the last record: a torn tail, cut; the four before it stay.
        let mut torn = buf.clone();
        torn[ends[3] + 12] ^= 0x40;
        std::fs::write(&path, &torn).unwrap();
        let store = LogStore::open(files, dir.path()).expect("a torn tail is not corruption");
        assert_eq!(store.lock().entries.keys().copied().collect::<Vec<_>>(), [1, 2, 3, 4]);
    }
}

/// The metadata log on a simulated disk, through the control plane's file seam.
#[cfg(test)]
mod crash_tests {
    use std::path::Path;
    use std::sync::Arc;

    use openraft::storage::RaftLogStorage;
    use openraft::Vote;

    use super::{blank, LogStore};
    use crate::storage::mem_disk::{CrashMode, MemDisk};

    const DIR: &str = "/data/meta/raft";

    fn open(disk: &MemDisk) -> LogStore {
        LogStore::open(Arc::new(disk.control_files()), Path::new(DIR)).expect("opens")
    }

    fn indexes(store: &LogStore) -> Vec<u64> {
        store.lock().entries.keys().copied().collect()
    }

    /// An append whose fsync failed was never reported durable: after a crash that tore it,
    /// the log opens at the last whole record and keeps every entry before it, and the cut is
    /// itself durable (the next append follows the last whole record, through a crash).
    #[test]
    fn a_crash_tears_an_append_whose_sync_failed_and_the_log_keeps_the_entries_before_it() {
        let disk = MemDisk::new();
        let store = open(&disk);
        store.lock().write_records(&[blank(1), blank(2), blank(3)]).expect("durable");
        disk.control_files().set_errnos(None, Some(libc::EIO));
        let e = store.lock().write_records(&[blank(4)]).expect_err("the sync failed");
        assert_eq!(e.raw_os_error(), Some(libc::EIO));

        let torn = disk.crash(CrashMode::Tear { keep_writes: 0, torn_bytes: 10 });
        let reopened = open(&torn);
        assert_eq!(indexes(&reopened), [1, 2, 3], "the torn record is cut, the three before it kept");
        reopened.lock().write_records(&[blank(5)]).expect("durable");
        let again = torn.crash(CrashMode::LoseUnsynced);
        assert_eq!(indexes(&open(&again)), [1, 2, 3, 5], "the cut was durable: the next append follows entry 3");
        let written = disk.crash(CrashMode::Tear { keep_writes: 1, torn_bytes: 0 });
        assert_eq!(indexes(&open(&written)), [1, 2, 3, 4], "an append written whole before the crash is read");
    }

    /// The vote is replaced atomically: a failed write leaves the old vote, through a crash.
    #[test]
    fn a_vote_whose_write_failed_leaves_the_old_vote() {
        let disk = MemDisk::new();
        let mut store = open(&disk);
        use futures_lite::future::block_on as run;
        run(store.save_vote(&Vote::new(3, 1))).expect("saved");
        disk.control_files().set_errnos(Some(libc::EIO), None);
        assert!(run(store.save_vote(&Vote::new(4, 2))).is_err(), "the write failed");
        let mut after = open(&disk.crash(CrashMode::LoseUnsynced));
        assert_eq!(run(after.read_vote()).expect("read"), Some(Vote::new(3, 1)));
    }
}
