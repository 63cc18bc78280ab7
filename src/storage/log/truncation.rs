//! Cutting a log back: dropping unwritten batches, truncating files at a batch boundary,
//! and restarting an empty log at an offset (each planned by the log, run without it).

use std::path::PathBuf;
use std::rc::Rc;

use super::recovery::zero_range;
use super::*;

impl<D: Disk> PartitionLog<D> {
    /// Drops batches at and after `offset` that were not written yet (replication: a
    /// follower cutting a divergent tail). `offset` must be a batch boundary at or above the
    /// written end, and no write may be in flight.
    pub fn drop_unwritten_from(&mut self, offset: u64) -> Result<(), StorageError> {
        if self.write_in_flight || offset < self.written_offset {
            return Err(StorageError::Io(format!("cannot drop from {offset}: it is being or was written")));
        }
        while self.cache.back().is_some_and(|b| b.base_offset >= offset) {
            let b = self.cache.pop_back().expect("checked");
            self.cache_bytes -= b.bytes.len();
        }
        self.next_offset = self.cache.back().map_or(self.written_offset, |b| b.next_offset);
        if self.next_offset != offset {
            return Err(StorageError::Io(format!("offset {offset} is not a batch boundary")));
        }
        self.check_invariants();
        Ok(())
    }

    /// Plans the removal of every batch at and after `offset` (a batch boundary below the
    /// written end) from the files: later segments are deleted, the one holding `offset` is
    /// zeroed from there. Run the plan, then drop this log and open it again (recovery finds
    /// the new end). No I/O may be in flight.
    pub fn plan_truncation(&self, offset: u64) -> Result<Truncation<D>, StorageError> {
        if self.io_in_flight() {
            return Err(StorageError::Io("truncation while I/O is in flight".into()));
        }
        let first = *self.segments.keys().next().expect("a log always has a segment");
        // Newest first: a crash midway leaves a shorter log, never one with a hole.
        let remove = self
            .segments
            .range(offset..)
            .rev()
            .filter(|(&base, _)| base != first)
            .flat_map(|(_, seg)| [seg.index_path.clone(), seg.log_path.clone()])
            .collect();
        let (_, seg) = self.segments.range(..offset.max(first + 1)).next_back().expect("the first segment");
        Ok(Truncation {
            disk: self.disk.clone(),
            remove,
            file: seg.file.clone(),
            index_path: seg.index_path.clone(),
            scan_from: if offset <= seg.base_offset { 0 } else { seg.index.position_for(offset) },
            size: seg.size,
            offset,
        })
    }

    /// Plans emptying the log and starting it at `offset` (a follower whose leader's log starts
    /// there and that holds nothing of use below). Run the plan, then open the log again. No
    /// I/O may be in flight.
    pub fn plan_restart(&self, offset: u64) -> Result<Restart<D>, StorageError> {
        if self.io_in_flight() {
            return Err(StorageError::Io("restart while I/O is in flight".into()));
        }
        // Newest first: a crash midway leaves a shorter log, never one with a hole.
        let remove =
            self.segments.values().rev().flat_map(|seg| [seg.index_path.clone(), seg.log_path.clone()]).collect();
        Ok(Restart {
            disk: self.disk.clone(),
            remove,
            new_segment: self.dir.join(segment_file_name(offset, "log")),
            preallocate: self.config.first_preallocation(),
        })
    }
}

/// File work that empties a log and starts it at an offset (see [`PartitionLog::plan_restart`]).
pub struct Restart<D: Disk> {
    disk: D,
    remove: Vec<PathBuf>,
    new_segment: PathBuf,
    preallocate: u64,
}

impl<D: Disk> Restart<D> {
    pub async fn run(self) -> Result<(), StorageError> {
        for path in &self.remove {
            self.disk.remove_file(path).await?;
        }
        // (A crash before this leaves an empty directory: a log at 0, which restarts again.)
        let file = self.disk.open(&self.new_segment, true).await?;
        file.preallocate(self.preallocate).await?;
        file.sync_data().await?;
        Ok(())
    }
}

/// File work that truncates a log (see [`PartitionLog::plan_truncation`]).
pub struct Truncation<D: Disk> {
    disk: D,
    remove: Vec<PathBuf>,
    file: Rc<D::File>,
    index_path: PathBuf,
    scan_from: u64,
    size: u64,
    offset: u64,
}

impl<D: Disk> Truncation<D> {
    pub async fn run(self) -> Result<(), StorageError> {
        for path in &self.remove {
            self.disk.remove_file(path).await?;
        }
        let mut pos = self.scan_from;
        while pos < self.size {
            let bytes = self.file.read_at(pos, BATCH_HEADER_BYTES).await?;
            let header = crate::protocol::batch::peek_header(&bytes)?;
            if header.base_offset >= self.offset {
                if header.base_offset > self.offset {
                    return Err(StorageError::Io(format!("offset {} is not a batch boundary", self.offset)));
                }
                break;
            }
            pos += u64::from(header.batch_len);
        }
        let tail_start = align_down(pos);
        let tail = self.file.read_at(tail_start, (pos - tail_start) as usize).await?;
        zero_range(self.file.as_ref(), tail_start, &tail, align_up(self.size.max(pos + 1))).await?;
        // Its index (if sealed) described the longer segment; the reopened log rebuilds it.
        self.disk.remove_file(&self.index_path).await?;
        Ok(())
    }
}
