//! Codec costs: frame encode, frame parse with both CRCs, batch validation, archive access,
//! and raw CRC32C throughput.

use bytes::Bytes;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use quorra::protocol::batch::{validate_batch, BatchBuilder};
use quorra::protocol::frame::{parse_frame, OutFrame};
use quorra::protocol::messages::ProduceRequest;
use quorra::protocol::{access, encode, ApiKind};

fn sample_batch(records: usize, size: usize) -> Bytes {
    let mut b = BatchBuilder::with_capacity(records * (size + 12));
    let value = vec![7u8; size];
    for i in 0..records {
        b.push(None, &value, 1_700_000_000_000 + i as i64);
    }
    b.finish(0, 0, 0)
}

fn frames(c: &mut Criterion) {
    let req = ProduceRequest { topic: "orders".into(), partition: 3, acks: 1, timeout_ms: 30_000 };
    let batch = sample_batch(1, 1024);
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode produce (1 KiB payload)", |b| {
        b.iter(|| OutFrame::new(ApiKind::Produce as u16, 0, 1, encode(black_box(&req)), vec![batch.clone()]))
    });
    let mut wire = Vec::new();
    OutFrame::new(ApiKind::Produce as u16, 0, 1, encode(&req), vec![batch.clone()]).write_to(&mut wire);
    g.bench_function("parse + validate produce (1 KiB payload)", |b| {
        b.iter(|| {
            let (frame, _) = parse_frame(black_box(&wire), 1 << 20).unwrap().unwrap();
            let r = access::<ProduceRequest>(frame.archive()).unwrap();
            black_box(r.partition.to_native());
            validate_batch(frame.payload()).unwrap()
        })
    });
    let archive = encode(&req);
    g.bench_function("rkyv access (validated)", |b| {
        b.iter(|| access::<ProduceRequest>(black_box(&archive)).unwrap().partition)
    });
    g.finish();

    let mut g = c.benchmark_group("batch");
    for (records, size) in [(1usize, 1024usize), (64, 1024), (1024, 100)] {
        let batch = sample_batch(records, size);
        g.throughput(Throughput::Bytes(batch.len() as u64));
        g.bench_function(format!("validate {records} x {size} B"), |b| {
            b.iter(|| validate_batch(black_box(&batch)).unwrap())
        });
    }
    g.finish();
}

fn crc(c: &mut Criterion) {
    let mut g = c.benchmark_group("crc32c");
    for size in [4096usize, 1 << 20] {
        let data = vec![0xa5u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("{size} B"), |b| b.iter(|| crc32c::crc32c(black_box(&data))));
    }
    g.finish();
}

criterion_group!(benches, frames, crc);
criterion_main!(benches);
