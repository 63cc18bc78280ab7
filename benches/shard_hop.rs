//! The cost of passing a request to another shard and getting the answer back, over the
//! same glommio shared channels the mesh uses; parked and spinning executors.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use glommio::channels::shared_channel;
use glommio::{LocalExecutorBuilder, Placement};

/// Runs `iters` round trips between two executors; returns the time they took.
fn round_trips(iters: u64, spin: Duration) -> Duration {
    let (to_b, from_a) = shared_channel::new_bounded::<u64>(64);
    let (to_a, from_b) = shared_channel::new_bounded::<u64>(64);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let place = |i: usize| if cores > 1 { Placement::Fixed(i % cores) } else { Placement::Unbound };
    let echo = LocalExecutorBuilder::new(place(1))
        .spin_before_park(spin)
        .spawn(move || async move {
            let (rx, tx) = (from_a.connect().await, to_a.connect().await);
            while let Some(v) = rx.recv().await {
                if tx.send(v).await.is_err() {
                    break;
                }
            }
        })
        .unwrap();
    let elapsed = LocalExecutorBuilder::new(place(0))
        .spin_before_park(spin)
        .spawn(move || async move {
            let (tx, rx) = (to_b.connect().await, from_b.connect().await);
            // Warm up, then measure.
            for i in 0..10 {
                tx.send(i).await.unwrap();
                rx.recv().await.unwrap();
            }
            let start = Instant::now();
            for i in 0..iters {
                tx.send(i).await.unwrap();
                rx.recv().await.unwrap();
            }
            start.elapsed()
        })
        .unwrap()
        .join()
        .unwrap();
    echo.join().unwrap();
    elapsed
}

fn hop(c: &mut Criterion) {
    let mut g = c.benchmark_group("cross-shard round trip");
    g.sample_size(20);
    g.throughput(Throughput::Elements(1));
    for (name, spin) in [("parked", Duration::ZERO), ("spin 100us", Duration::from_micros(100))] {
        g.bench_function(name, |b| b.iter_custom(|iters| round_trips(iters, spin)));
    }
    g.finish();
}

criterion_group!(benches, hop);
criterion_main!(benches);
