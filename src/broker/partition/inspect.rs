//! What the simulator's checks read from a partition, outside the request path: its whole
//! log (also above the high watermark) and its producer table.

use bytes::Bytes;

use super::producers::StoredBatch;
use super::Partition;
use crate::protocol::batch::{BatchHeader, BatchIter};
use crate::storage::log::ReadPlan;
use crate::storage::Disk;

impl<D: Disk> Partition<D> {
    /// Every batch that starts in `[from, to)` (`to` at most the log end), with its header.
    /// The disk must answer reads at once (`MemDisk` does): a read that would wait panics.
    pub fn batches_for_checks(&self, from: u64, to: u64) -> Vec<(BatchHeader, Bytes)> {
        let mut out = Vec::new();
        let mut offset = from.max(self.log_start_offset());
        let to = to.min(self.log_end_offset());
        while offset < to {
            let plan = self.log.borrow().plan_read(offset, 1 << 20, to).expect("a readable log");
            let chunks = match plan {
                ReadPlan::Ready(chunks) => chunks,
                ReadPlan::Disk(read) => vec![poll_now(read.run()).expect("the disk read")],
            };
            let before = offset;
            for chunk in &chunks {
                let mut at = 0;
                for item in BatchIter::new(chunk) {
                    let (header, bytes) = item.expect("batches pass their checks");
                    let len = bytes.len();
                    if header.base_offset >= offset && header.base_offset < to {
                        out.push((header, chunk.slice(at..at + len)));
                        offset = header.next_offset();
                    }
                    at += len;
                }
            }
            assert!(offset > before, "no progress reading the log at {offset}");
        }
        out
    }

    /// The producer table's newest batch of `producer_id`.
    pub fn producer_batch_for_checks(&self, producer_id: u64) -> Option<StoredBatch> {
        self.producers.borrow().last_batch(producer_id)
    }
}

/// Polls a future once; it must be ready.
fn poll_now<T>(fut: impl std::future::Future<Output = T>) -> T {
    let mut fut = std::pin::pin!(fut);
    match fut.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("a read for the checks had to wait"),
    }
}

impl<D: Disk> Partition<D> {
    /// The log end the replica believes in.
    pub fn replica_log_end_for_checks(&self) -> u64 {
        self.replication.borrow().replica.log_end()
    }
}

impl<D: Disk> Partition<D> {
    /// (written, durable, io in flight, paused, writer running) of the log: for failure messages.
    pub fn write_state_for_checks(&self) -> (u64, u64, bool, bool, bool) {
        let log = self.log.borrow();
        (log.written_offset(), log.durable_offset(), log.io_in_flight(), self.paused.get(), self.writer_running.get())
    }
}

impl<D: Disk> Partition<D> {
    /// Whether the replica counts in elections (false after it lost data, until caught up).
    pub fn is_voter_for_checks(&self) -> bool {
        self.replication.borrow().replica.is_voter()
    }
}
