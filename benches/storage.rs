//! The partition log on the real disk (O_DIRECT through glommio): append + write + fdatasync
//! by batch size, and fetch from memory and from disk.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use quorra::protocol::batch::BatchBuilder;
use quorra::storage::glommio_disk::{prime_device_probe, GlommioDisk};
use quorra::storage::log::{LogJob, ReadPlan};
use quorra::storage::{LogConfig, PartitionLog};

fn batch_of(bytes: usize) -> Vec<u8> {
    let records = (bytes / 1036).max(1);
    let mut b = BatchBuilder::with_capacity(bytes);
    let value = vec![1u8; (bytes / records).saturating_sub(12).max(1)];
    for i in 0..records {
        b.push(None, &value, i as i64);
    }
    b.finish(0, 0, 0).to_vec()
}

/// Runs `f` on a fresh glommio executor with a fresh log directory; returns what it measured.
fn on_executor<F, Fut>(f: F) -> Duration
where
    F: FnOnce(PathBuf) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Duration> + 'static,
{
    let dir = tempfile::Builder::new().prefix("quorra-bench-").tempdir_in("/tmp").unwrap();
    let path = dir.path().to_path_buf();
    let d = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(64 << 20)
        .spawn(move || async move {
            prime_device_probe(&path).await.unwrap();
            f(path.join("log")).await
        })
        .unwrap()
        .join()
        .unwrap();
    drop(dir);
    d
}

async fn append_flush(log: &mut PartitionLog<GlommioDisk>, payload: &mut [u8]) {
    let stamped = log.stamp(payload, 0).unwrap();
    log.append_stamped(Bytes::copy_from_slice(payload), &stamped);
    while let Some(job) = log.next_job(true) {
        let outcome = LogJob::run(job, &GlommioDisk::default()).await;
        log.complete(outcome).unwrap();
    }
}

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("segment append + fdatasync");
    g.sample_size(20);
    for size in [4096usize, 64 << 10, 1 << 20] {
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("{} KiB batches", size / 1024), |b| {
            b.iter_custom(|iters| {
                on_executor(move |dir| async move {
                    let config = LogConfig { segment_bytes: 256 << 20, ..LogConfig::default() };
                    let mut log = PartitionLog::open(GlommioDisk::default(), dir, config).await.unwrap();
                    let mut payload = batch_of(size);
                    let start = Instant::now();
                    for _ in 0..iters {
                        append_flush(&mut log, &mut payload).await;
                    }
                    start.elapsed()
                })
            })
        });
    }
    g.finish();
}

fn fetch(c: &mut Criterion) {
    let mut g = c.benchmark_group("fetch 1 MiB");
    g.sample_size(20);
    g.throughput(Throughput::Bytes(1 << 20));
    for (name, cache_bytes) in [("from memory", 64usize << 20), ("from disk", 0)] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                on_executor(move |dir| async move {
                    let config = LogConfig { cache_bytes, segment_bytes: 256 << 20, ..LogConfig::default() };
                    let mut log = PartitionLog::open(GlommioDisk::default(), dir, config).await.unwrap();
                    let mut payload = batch_of(64 << 10);
                    for _ in 0..64 {
                        append_flush(&mut log, &mut payload).await;
                    }
                    let end = log.next_offset();
                    let start = Instant::now();
                    for _ in 0..iters {
                        let bytes: usize = match log.plan_read(0, 1 << 20, end).unwrap() {
                            ReadPlan::Ready(chunks) => chunks.iter().map(Bytes::len).sum(),
                            ReadPlan::Disk(read) => read.run().await.unwrap().len(),
                        };
                        assert!(bytes >= 1 << 19);
                    }
                    start.elapsed()
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, append, fetch);
criterion_main!(benches);
