//! Consumer-group offsets ("the offset store"), kept durably in a small log per group.
//!
//! Each commit is one record (key: topic, NUL, partition; value: offset, metadata) appended
//! to the group's own partition log under `<data_dir>/groups/<group>/` and acknowledged once
//! flushed, like any produce. The in-memory map is rebuilt by replaying that log the first
//! time a group is used after a start. A group is owned by the shard `hash(group) % shards`.
//!
//! The log is compacted: once [`COMPACT_AFTER_BYTES`] of commits followed the last
//! checkpoint, every current offset is appended again (a checkpoint) and the whole segments
//! before it are deleted, so a group's log stays about a megabyte however long it commits.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;

use super::catalog::group_dir;
use super::partition::Partition;
use crate::config::FlushPolicy;
use crate::protocol::batch::{BatchBuilder, RecordIter};
use crate::rt;
use crate::storage::{Disk, LogConfig, StorageError};

/// Consumer groups whose offset logs a shard keeps open; beyond, the least recently used
/// idle one is closed (and reopened, replaying its small log, when next used).
const MAX_OPEN_GROUPS_PER_SHARD: usize = 256;

/// A group log's segment (preallocated: what a group costs on disk at least).
const GROUP_SEGMENT_BYTES: u64 = 256 << 10;

/// Commit bytes after the last checkpoint that make the next commit write a new one.
const COMPACT_AFTER_BYTES: u64 = 512 << 10;

/// A checkpoint is written in batches of about this size.
const CHECKPOINT_BATCH_BYTES: usize = 128 << 10;

/// How long a commit may wait for its flush.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);

type OffsetKey = (String, u32);

/// Why a commit was refused.
#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Committing would create a group beyond `max_consumer_groups`.
    #[error("this broker holds {0} consumer groups (max_consumer_groups); a new group cannot commit")]
    TooManyGroups(usize),
}

/// The consumer groups a broker holds (each has a directory and a small log), shared by its
/// shards: a new group is admitted only while there are fewer than `max`.
#[derive(Debug)]
pub struct GroupBudget {
    held: std::sync::atomic::AtomicUsize,
    max: usize,
}

impl GroupBudget {
    /// `held`: the groups on disk at start.
    pub fn new(held: usize, max: usize) -> Self {
        GroupBudget { held: held.into(), max }
    }

    /// Counts the group directories under `data_dir` (at start, before the shards run).
    pub fn count_on_disk(data_dir: &std::path::Path) -> usize {
        std::fs::read_dir(data_dir.join("groups"))
            .map(|dir| dir.filter_map(Result::ok).filter(|e| e.path().is_dir()).count())
            .unwrap_or(0)
    }

    fn admit(&self) -> Result<(), OffsetError> {
        use std::sync::atomic::Ordering;
        self.held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < self.max).then_some(n + 1))
            .map(|_| ())
            .map_err(OffsetError::TooManyGroups)
    }

    fn release(&self) {
        self.held.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

struct GroupStore<D: Disk> {
    log: Rc<Partition<D>>,
    /// What fetches answer: the offsets whose commits are durable.
    offsets: RefCell<HashMap<OffsetKey, (u64, String)>>,
    /// The newest offset appended per key, durable or not: what a checkpoint writes (one
    /// taken from `offsets` could write an older value after a newer commit's record).
    appended: RefCell<HashMap<OffsetKey, (u64, String)>>,
    /// Commit bytes appended since the last checkpoint (since the open: the whole log).
    since_checkpoint: std::cell::Cell<u64>,
    compacting: std::cell::Cell<bool>,
    /// When it was last used (a counter of the store): the least recent idle group is the
    /// one closed when too many are open.
    last_used: std::cell::Cell<u64>,
}

pub struct OffsetStore<D: Disk> {
    disk: D,
    data_dir: PathBuf,
    flush: FlushPolicy,
    /// Shared-storage mode: see [`LogConfig::fresh_segment_on_open`].
    fresh_segment_on_open: bool,
    groups: RefCell<HashMap<String, Rc<GroupStore<D>>>>,
    budget: std::sync::Arc<GroupBudget>,
    opening: crate::rt::Semaphore,
    uses: std::cell::Cell<u64>,
}

fn encode_key(topic: &str, partition: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + 5);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(&partition.to_le_bytes());
    k
}

fn decode_record(key: &[u8], value: &[u8]) -> Option<(OffsetKey, (u64, String))> {
    let nul = key.iter().position(|&b| b == 0)?;
    let topic = std::str::from_utf8(&key[..nul]).ok()?.to_string();
    let partition = u32::from_le_bytes(key.get(nul + 1..nul + 5)?.try_into().ok()?);
    let offset = u64::from_le_bytes(value.get(..8)?.try_into().ok()?);
    let metadata = String::from_utf8_lossy(&value[8..]).into_owned();
    Some(((topic, partition), (offset, metadata)))
}

impl<D: Disk> OffsetStore<D> {
    pub fn new(
        disk: D,
        data_dir: PathBuf,
        flush: FlushPolicy,
        fresh_segment_on_open: bool,
        budget: std::sync::Arc<GroupBudget>,
    ) -> Self {
        OffsetStore {
            disk,
            data_dir,
            flush,
            fresh_segment_on_open,
            groups: RefCell::new(HashMap::new()),
            budget,
            opening: crate::rt::Semaphore::new(1),
            uses: std::cell::Cell::new(0),
        }
    }

    fn log_config(&self) -> LogConfig {
        LogConfig {
            segment_bytes: GROUP_SEGMENT_BYTES,
            cache_bytes: 256 << 10,
            fresh_segment_on_open: self.fresh_segment_on_open,
            ..LogConfig::default()
        }
    }

    /// The group's store, opened if needed; `create`: also if it has none yet.
    async fn group(&self, name: &str, create: bool) -> Result<Option<Rc<GroupStore<D>>>, OffsetError> {
        if let Some(g) = self.open_group(name) {
            return Ok(Some(g));
        }
        let _permit = self.opening.acquire_permit(1).await.map_err(|e| StorageError::Io(e.to_string()))?;
        if let Some(g) = self.open_group(name) {
            return Ok(Some(g));
        }
        let dir = group_dir(&self.data_dir, name);
        let new = self.disk.list_dir(&dir).await.map_err(StorageError::from)?.is_empty();
        if new && !create {
            // A group that never committed: nothing to open, and nothing is created for it.
            return Ok(None);
        }
        if new {
            self.budget.admit()?;
        }
        self.close_idle_groups_beyond(MAX_OPEN_GROUPS_PER_SHARD - 1).await;
        let opened = Partition::open(
            self.disk.clone(),
            Rc::from(format!("group {name}")),
            0,
            dir,
            self.log_config(),
            self.flush,
        )
        .await;
        let log = match opened {
            Ok(log) => log,
            Err(e) => {
                if new {
                    self.budget.release();
                }
                return Err(e.into());
            }
        };
        let offsets = replay(&log).await?;
        let since_checkpoint = log.status(0).size_bytes;
        let store = Rc::new(GroupStore {
            log,
            appended: RefCell::new(offsets.clone()),
            offsets: RefCell::new(offsets),
            since_checkpoint: since_checkpoint.into(),
            compacting: Default::default(),
            last_used: Default::default(),
        });
        self.touch(&store);
        self.groups.borrow_mut().insert(name.to_string(), store.clone());
        Ok(Some(store))
    }

    fn open_group(&self, name: &str) -> Option<Rc<GroupStore<D>>> {
        let g = self.groups.borrow().get(name).cloned()?;
        self.touch(&g);
        Some(g)
    }

    fn touch(&self, g: &GroupStore<D>) {
        self.uses.set(self.uses.get() + 1);
        g.last_used.set(self.uses.get());
    }

    /// Closes the least recently used groups that no request is using while more than
    /// `keep` are open (each holds a descriptor and its log's cache).
    async fn close_idle_groups_beyond(&self, keep: usize) {
        while self.groups.borrow().len() > keep {
            let victim = {
                let groups = self.groups.borrow();
                let idle = groups.iter().filter(|(_, g)| Rc::strong_count(g) == 1);
                idle.min_by_key(|(_, g)| g.last_used.get()).map(|(name, _)| name.clone())
            };
            let Some(name) = victim else { return };
            let g = self.groups.borrow_mut().remove(&name).expect("listed");
            g.log.close().await;
        }
    }

    /// Groups whose logs are open now.
    pub fn open_groups(&self) -> usize {
        self.groups.borrow().len()
    }

    /// Durably records that `group` will next read `offset` of `topic`/`partition`.
    pub async fn commit(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        offset: u64,
        metadata: &str,
    ) -> Result<(), OffsetError> {
        let g = self.group(group, true).await?.expect("created");
        let key = (topic.to_string(), partition);
        let mut batch = BatchBuilder::with_capacity(metadata.len() + topic.len() + 48);
        push_record(&mut batch, &key, offset, metadata);
        let payload = batch.finish(0, 0, 0);
        g.since_checkpoint.set(g.since_checkpoint.get() + payload.len() as u64);
        let appended = append(&g.log, payload)?;
        g.appended.borrow_mut().insert(key.clone(), (offset, metadata.to_string()));
        g.log.wait_committed(appended.last_offset, crate::broker::partition::AckLevel::Local, COMMIT_TIMEOUT).await?;
        g.offsets.borrow_mut().insert(key, (offset, metadata.to_string()));
        if g.since_checkpoint.get() >= COMPACT_AFTER_BYTES && !g.compacting.replace(true) {
            let compacted = compact(&g).await;
            g.compacting.set(false);
            compacted?;
        }
        Ok(())
    }

    /// The last committed offset of `group` for `topic`/`partition`.
    pub async fn fetch(&self, group: &str, topic: &str, partition: u32) -> Result<Option<(u64, String)>, OffsetError> {
        let Some(g) = self.group(group, false).await? else { return Ok(None) };
        let found = g.offsets.borrow().get(&(topic.to_string(), partition)).cloned();
        Ok(found)
    }

    pub async fn close(&self) {
        let groups: Vec<_> = self.groups.borrow_mut().drain().map(|(_, g)| g).collect();
        for g in groups {
            g.log.close().await;
        }
    }
}

fn push_record(batch: &mut BatchBuilder, key: &OffsetKey, offset: u64, metadata: &str) {
    let mut value = offset.to_le_bytes().to_vec();
    value.extend_from_slice(metadata.as_bytes());
    batch.push(Some(&encode_key(&key.0, key.1)), &value, rt::now_ms());
}

fn append<D: Disk>(log: &Partition<D>, payload: Bytes) -> Result<crate::broker::partition::Appended, StorageError> {
    log.append(payload.to_vec(), Bytes::from).map_err(|e| match e {
        crate::broker::partition::AppendError::Storage(e) => e,
        // An offset record has no producer id: no sequence rule applies to it.
        other => StorageError::Io(other.to_string()),
    })
}

/// Writes a checkpoint (every current offset, again) and, once it is durable, deletes the
/// whole segments before it: what they held is superseded.
async fn compact<D: Disk>(g: &GroupStore<D>) -> Result<(), StorageError> {
    let entries: Vec<(OffsetKey, (u64, String))> =
        g.appended.borrow().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    g.since_checkpoint.set(0);
    let new_batch = || BatchBuilder::with_capacity(CHECKPOINT_BATCH_BYTES + 2048);
    let mut written: Option<(u64, u64)> = None;
    let mut write = |batch: BatchBuilder| -> Result<(), StorageError> {
        let appended = append(&g.log, batch.finish(0, 0, 0))?;
        let first = written.map_or(appended.first_offset, |(first, _)| first);
        written = Some((first, appended.last_offset));
        Ok(())
    };
    let mut batch = new_batch();
    for (key, (offset, metadata)) in &entries {
        push_record(&mut batch, key, *offset, metadata);
        if batch.len_bytes() >= CHECKPOINT_BATCH_BYTES {
            write(std::mem::replace(&mut batch, new_batch()))?;
        }
    }
    if batch.record_count() > 0 {
        write(batch)?;
    }
    let Some((first, last)) = written else { return Ok(()) };
    g.log.wait_committed(last, crate::broker::partition::AckLevel::Local, COMMIT_TIMEOUT).await?;
    g.log.remove_segments_below(first).await;
    Ok(())
}

async fn replay<D: Disk>(log: &Partition<D>) -> Result<HashMap<OffsetKey, (u64, String)>, StorageError> {
    let mut map = HashMap::new();
    log.scan_committed(log.log_start_offset(), |header, bytes| {
        for rec in RecordIter::new(bytes, header) {
            let rec = rec.map_err(|e| StorageError::Corrupt(e.to_string()))?;
            if let Some((k, v)) = rec.key.and_then(|k| decode_record(k, rec.value)) {
                map.insert(k, v);
            }
        }
        Ok(None::<()>)
    })
    .await?;
    Ok(map)
}
