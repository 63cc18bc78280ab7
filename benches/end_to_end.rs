//! In-process end to end: a broker (2 shards) and a client in one process, over loopback.
//! Reports produce -> acknowledgement latency with one message in flight, and throughput
//! with a window of 256, for 1 KiB messages, acks = leader, flush = always.
//!
//! `cargo bench --bench end_to_end` measures for a few seconds; under `cargo test` (no
//! `--bench` argument) it runs briefly, so the benchmark cannot rot.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use quorra::client::{Client, ClientConfig, Partitioner, Producer, ProducerConfig};
use quorra::config::Config;
use quorra::protocol::messages::Acks;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Run {
    messages: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
}

async fn produce(bootstrap: String, window: usize, duration: Duration) -> Run {
    let client = Client::connect(ClientConfig::with_bootstrap(&bootstrap)).await.unwrap();
    let linger = if window == 1 { Duration::ZERO } else { Duration::from_millis(1) };
    let config =
        ProducerConfig { acks: Acks::Leader, linger, partitioner: Partitioner::RoundRobin, ..Default::default() };
    let producer = Producer::new(client, config).await.unwrap();
    let value = vec![42u8; 1024];
    let mut latency_us = Histogram::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut in_flight = VecDeque::new();
    let start = Instant::now();
    let mut messages = 0;
    while start.elapsed() < duration {
        if in_flight.len() >= window {
            let (t, d): (Instant, quorra::client::producer::Delivery) = in_flight.pop_front().unwrap();
            let (r, acked_at) = d.wait_timed().await;
            r.unwrap();
            latency_us.record(acked_at.saturating_duration_since(t).as_micros().max(1) as u64).unwrap();
            messages += 1;
        }
        let d = producer.send("bench", None, &value).await.unwrap();
        in_flight.push_back((Instant::now(), d));
    }
    producer.flush().await;
    for (t, d) in in_flight {
        let (r, acked_at) = d.wait_timed().await;
        r.unwrap();
        latency_us.record(acked_at.saturating_duration_since(t).as_micros().max(1) as u64).unwrap();
        messages += 1;
    }
    Run { messages, elapsed: start.elapsed(), latency_us }
}

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let seconds = if measuring { Duration::from_secs(5) } else { Duration::from_millis(300) };
    let dir = tempfile::Builder::new().prefix("quorra-bench-e2e-").tempdir_in("/tmp").unwrap();
    let port = free_port();
    let config = Config {
        listen: format!("127.0.0.1:{port}").parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        shards: 2,
        ..Config::default()
    };
    let broker = std::thread::spawn(move || quorra::shard::run_broker(config));
    let bootstrap = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&bootstrap).is_err() {
        assert!(Instant::now() < deadline, "broker did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let b = bootstrap.clone();
    let (latency, throughput) = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move {
            Client::connect(ClientConfig::with_bootstrap(&b)).await.unwrap().create_topic("bench", 4, 1).await.unwrap();
            let latency = produce(b.clone(), 1, seconds).await;
            let throughput = produce(b, 256, seconds).await;
            (latency, throughput)
        })
        .unwrap()
        .join()
        .unwrap();
    let h = &latency.latency_us;
    println!(
        "end_to_end/produce->ack 1 KiB, window 1:   {:>9.0} msgs/s   p50 {} us  p99 {} us  p99.9 {} us",
        latency.messages as f64 / latency.elapsed.as_secs_f64(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999)
    );
    let h = &throughput.latency_us;
    println!(
        "end_to_end/produce->ack 1 KiB, window 256: {:>9.0} msgs/s   {:.1} MB/s  p50 {} us  p99 {} us",
        throughput.messages as f64 / throughput.elapsed.as_secs_f64(),
        throughput.messages as f64 * 1024.0 / throughput.elapsed.as_secs_f64() / 1e6,
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99)
    );
    // The broker treats SIGTERM as "shut down cleanly".
    // SAFETY: raising a signal in our own process; the broker registered a flag handler.
    unsafe { libc::raise(libc::SIGTERM) };
    broker.join().unwrap().unwrap();
}
