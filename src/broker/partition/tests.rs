//! A partition (log, writer task, producer table) on the simulated disk, inside a glommio
//! executor: the failure paths between the log and the producer table.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;

use super::{AckLevel, Partition};
use crate::config::FlushPolicy;
use crate::protocol::batch::BatchBuilder;
use crate::storage::mem_disk::{MemDisk, MemFaults};
use crate::storage::{LogConfig, LogHealth};

fn run<F: std::future::Future<Output = ()> + 'static>(f: impl FnOnce() -> F + Send + 'static) {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move { f().await })
        .expect("executor")
        .join()
        .expect("test thread");
}

fn idempotent_batch(producer_id: u64, sequence: u32, value: &[u8]) -> Vec<u8> {
    let mut b = BatchBuilder::with_capacity(64);
    b.push(None, value, 1);
    b.finish(producer_id, 0, sequence).to_vec()
}

async fn open(disk: &MemDisk) -> Rc<Partition<MemDisk>> {
    Partition::open(disk.clone(), "t".into(), 0, PathBuf::from("/data/t/0"), LogConfig::default(), FlushPolicy::Always)
        .await
        .expect("open")
}

async fn wait_healthy(p: &Partition<MemDisk>) {
    for _ in 0..200 {
        if p.health() == LogHealth::Healthy {
            return;
        }
        crate::rt::sleep(Duration::from_millis(20)).await;
    }
    panic!("the partition did not reopen: {:?}", p.health());
}

/// The value stored at `offset`.
async fn value_at(p: &Partition<MemDisk>, offset: u64) -> Vec<u8> {
    let chunks = p.fetch(offset, 1 << 20, Duration::ZERO).await.expect("fetch");
    for chunk in &chunks {
        for item in crate::protocol::batch::BatchIter::new(chunk) {
            let (header, bytes) = item.expect("batch");
            for rec in crate::protocol::batch::RecordIter::new(bytes, &header) {
                let rec = rec.expect("record");
                if rec.offset == offset {
                    return rec.value.to_vec();
                }
            }
        }
    }
    panic!("no record at offset {offset}");
}

/// Defect 11c: a failed write drops the pending batches from the log; the producer table
/// must forget them too. Otherwise a retry of such a batch, after another producer's batch
/// took its offset, is answered with that offset: acknowledged, and pointing at someone
/// else's record.
#[test]
fn a_retry_of_a_batch_that_a_failed_write_dropped_is_stored_again() {
    run(|| async {
        let disk = MemDisk::new();
        let p = open(&disk).await;
        disk.set_faults(MemFaults { write_errno: Some(libc::EIO), ..Default::default() });
        let a = p.append(idempotent_batch(5, 0, b"from producer 5"), Bytes::from).expect("appended");
        assert_eq!(a.first_offset, 0);
        let failed = p.wait_committed(a.last_offset, AckLevel::Local, Duration::from_secs(5)).await;
        assert!(failed.is_err(), "the write failed, so the produce must fail: {failed:?}");
        disk.set_faults(MemFaults::default());
        wait_healthy(&p).await;
        let b = p.append(idempotent_batch(6, 0, b"from producer 6"), Bytes::from).expect("appended");
        assert_eq!(b.first_offset, 0, "the dropped batch's offset is taken by the next one");
        p.wait_committed(b.last_offset, AckLevel::Local, Duration::from_secs(5)).await.expect("stored");
        // Producer 5 retries its batch.
        let retry = p.append(idempotent_batch(5, 0, b"from producer 5"), Bytes::from).expect("appended");
        p.wait_committed(retry.last_offset, AckLevel::Local, Duration::from_secs(5)).await.expect("stored");
        assert_eq!(retry.first_offset, 1, "the retry is stored, not answered with offset 0");
        assert_eq!(value_at(&p, retry.first_offset).await, b"from producer 5");
    });
}
