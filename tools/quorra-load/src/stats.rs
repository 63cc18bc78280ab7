//! Measurements: latency histograms (HDR, microseconds), shared counters, the live progress
//! line, the summary table, the JSON summary and the `.hgrm` percentile distribution.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// A histogram of latencies in microseconds, up to an hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// Counters every load shard adds to, and the channel their interval histograms travel on.
pub struct Shared {
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: AtomicU64,
    pub stop: AtomicBool,
    pub intervals: std::sync::Mutex<mpsc::SyncSender<Histogram<u64>>>,
}

impl Shared {
    pub fn new() -> (Arc<Shared>, mpsc::Receiver<Histogram<u64>>) {
        // One histogram per load shard per second; the progress line drains it every second.
        let (tx, rx) = mpsc::sync_channel(1024);
        let s = Shared {
            messages: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            intervals: std::sync::Mutex::new(tx),
        };
        (Arc::new(s), rx)
    }

    pub fn interval_sender(&self) -> mpsc::SyncSender<Histogram<u64>> {
        self.intervals.lock().expect("sender lock").clone()
    }
}

/// Prints a progress line to stderr every second until `shared.stop`.
pub fn spawn_progress(
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Histogram<u64>>,
    label: &'static str,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let (mut last_msgs, mut last_bytes, mut last_t) = (0u64, 0u64, Instant::now());
        while !shared.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(1000));
            let mut interval = new_histogram();
            while let Ok(h) = rx.try_recv() {
                let _ = interval.add(&h);
            }
            let (msgs, bytes) = (shared.messages.load(Ordering::Relaxed), shared.bytes.load(Ordering::Relaxed));
            let dt = last_t.elapsed().as_secs_f64();
            let p99 =
                if interval.is_empty() { "-".to_string() } else { format!("{} us", interval.value_at_quantile(0.99)) };
            eprintln!(
                "[{:>4.0}s] {label}: {msgs} msgs, {:.0} msgs/s, {:.1} MB/s, p99 {p99}, errors {}",
                start.elapsed().as_secs_f64(),
                (msgs - last_msgs) as f64 / dt,
                (bytes - last_bytes) as f64 / dt / 1e6,
                shared.errors.load(Ordering::Relaxed)
            );
            (last_msgs, last_bytes, last_t) = (msgs, bytes, Instant::now());
        }
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        Percentiles {
            min: h.min(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            p9999: h.value_at_quantile(0.9999),
            max: h.max(),
        }
    }
}

/// The summary a run prints and writes with `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub messages: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub msgs_per_sec: f64,
    pub mb_per_sec: f64,
    pub acked: u64,
    pub errors: u64,
    pub latency_us: Percentiles,
    /// Producers: the shortest time from a send to its acknowledgement (no latency
    /// reported may be below it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shortest_round_trip_us: Option<u64>,
    pub cpu_seconds: f64,
}

impl Summary {
    pub fn new(
        messages: u64,
        bytes: u64,
        acked: u64,
        errors: u64,
        elapsed: Duration,
        hist: &Histogram<u64>,
        cpu_seconds: f64,
    ) -> Summary {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        Summary {
            messages,
            bytes,
            seconds,
            msgs_per_sec: messages as f64 / seconds,
            mb_per_sec: bytes as f64 / seconds / 1e6,
            acked,
            errors,
            latency_us: Percentiles::of(hist),
            shortest_round_trip_us: None,
            cpu_seconds,
        }
    }

    pub fn print(&self, title: &str) {
        let l = &self.latency_us;
        println!("{title}");
        println!("  messages      {:>12}   acked {}   errors {}", self.messages, self.acked, self.errors);
        println!("  seconds       {:>12.2}   cpu seconds (load generator) {:.2}", self.seconds, self.cpu_seconds);
        println!("  throughput    {:>12.0} msgs/s   {:.1} MB/s", self.msgs_per_sec, self.mb_per_sec);
        println!(
            "  latency (us)  mean {:.0}  min {}  p50 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}  max {}",
            l.mean, l.min, l.p50, l.p90, l.p99, l.p999, l.p9999, l.max
        );
        if let Some(rt) = self.shortest_round_trip_us {
            println!("  shortest round trip (send -> acknowledgement) {rt} us");
        }
    }

    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, serde_json::to_vec_pretty(self)?)
    }
}

/// CPU time (user + system) this process used so far.
pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we pass; zeroed is a valid initial value.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Writes the standard HdrHistogram percentile distribution (values in microseconds).
pub fn write_hgrm(path: &Path, h: &Histogram<u64>) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(f, "{:>12} {:>14} {:>10} {:>14}\n", "Value", "Percentile", "TotalCount", "1/(1-Percentile)")?;
    for v in h.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        let inv = if q < 1.0 { format!("{:>14.2}", 1.0 / (1.0 - q)) } else { format!("{:>14}", "inf") };
        writeln!(
            f,
            "{:>12.3} {:>14.12} {:>10} {inv}",
            v.value_iterated_to() as f64,
            q,
            v.count_since_last_iteration()
        )?;
    }
    writeln!(f, "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]", h.mean(), h.stdev())?;
    writeln!(f, "#[Max     = {:>12.3}, Total count    = {:>12}]", h.max() as f64, h.len())?;
    writeln!(f, "#[Buckets = {:>12}, SubBuckets     = {:>12}]", h.buckets(), h.distinct_values())?;
    f.flush()
}
