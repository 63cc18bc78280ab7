//! Running the load: producer and consumer tasks on one glommio executor per core.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use quorra::client::{Client, ClientError, Consumer, ConsumerConfig, Partitioner, Producer, ProducerConfig, StartFrom};
use quorra::protocol::ErrorCode;

use crate::ledger::{self, Entry, Incarnation};
use crate::payload::{self, Stamp};
use crate::stats::{self, new_histogram, Shared, Summary};
use crate::{Common, E2eArgs, ProduceArgs};

pub struct ProduceOutcome {
    pub summary: Summary,
    pub histogram: Histogram<u64>,
    pub ledger: Vec<Entry>,
    pub first_error: Option<String>,
}

pub struct ConsumeOutcome {
    pub summary: Summary,
    pub histogram: Histogram<u64>,
    /// Per producer, every sequence number read.
    pub seen: HashMap<u32, Vec<u64>>,
    pub corrupt: u64,
    pub reordered: u64,
}

/// Runs `f(shard)` on `cores` executors and collects the results.
fn on_shards<T, F, Fut>(cores: usize, f: F) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    let mut handles = Vec::new();
    for shard in 0..cores {
        let f = f.clone();
        let h = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .name(&format!("load-{shard}"))
            .io_memory(8 << 20)
            .spawn(move || async move { f(shard).await })
            .map_err(|e| anyhow!("cannot start load shard {shard}: {e}"))?;
        handles.push(h);
    }
    handles.into_iter().map(|h| h.join().map_err(|e| anyhow!("load shard failed: {e}"))).collect()
}

fn block_on<T: Send + 'static>(
    fut: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + Sync + Clone + 'static,
) -> Result<T> {
    Ok(on_shards(1, move |_| fut.clone()())?.pop().expect("one shard"))
}

async fn connect(common: &Common) -> Result<Rc<Client>, ClientError> {
    Client::connect(common.client_config()?).await
}

/// Checks the broker is reachable and the topic exists (creating it when asked); the
/// topic's incarnation. The ledger starts afresh for a topic just created, and forgets the
/// lines of another incarnation of it.
pub fn prepare_topic(args: &ProduceArgs) -> Result<Incarnation> {
    let (common, create, ledger_path, rf) =
        (args.common.clone(), args.create_partitions, args.common.ledger_path(), args.replication_factor);
    let created: Result<(bool, Incarnation), ClientError> = block_on(move || {
        let common = common.clone();
        Box::pin(async move {
            let c = connect(&common).await?;
            let topic = &common.topic;
            let created = match create {
                Some(n) => match c.create_topic(topic, n, rf).await {
                    Ok(_) => true,
                    Err(e) if e.code() == Some(ErrorCode::TopicExists) => false,
                    Err(e) => return Err(e),
                },
                None => false,
            };
            // (A node may answer for a topic just created before its metadata shows it.)
            let mut tries = 0;
            let md = loop {
                match c.topic_metadata(topic).await {
                    Err(e) if created && e.code() == Some(ErrorCode::UnknownTopic) && tries < 50 => {
                        tries += 1;
                        glommio::timer::sleep(Duration::from_millis(100)).await;
                    }
                    md => break md?,
                }
            };
            Ok((created, Incarnation { id: md.id, created_ms: md.created_ms }))
        })
    })?;
    match created {
        Ok((true, live)) => {
            ledger::reset(&ledger_path).context("resetting the ledger")?;
            Ok(live)
        }
        Ok((false, live)) => {
            let forgotten = ledger::forget_other_incarnations(&ledger_path, &args.common.topic, live)
                .with_context(|| format!("updating the ledger {}", ledger_path.display()))?;
            if forgotten > 0 {
                eprintln!(
                    "note: the ledger {} held {forgotten} producers' acknowledgements for another incarnation of topic {} (deleted and created again, or another cluster); they are forgotten, as they cannot be checked against this one ({live})",
                    ledger_path.display(),
                    args.common.topic
                );
            }
            Ok(live)
        }
        Err(e) if e.code() == Some(ErrorCode::UnknownTopic) => {
            bail!("{e}; pass --create-partitions N to create it")
        }
        Err(e) => Err(e.into()),
    }
}

/// What one producer did.
struct ProducerResult {
    id: u32,
    acked: Vec<u64>,
    /// The shortest time from a send to its acknowledgement: no latency may be below it.
    shortest_round_trip_us: u64,
    errors: u64,
    first_error: Option<String>,
}

struct ShardHistograms {
    total: RefCell<Histogram<u64>>,
    interval: RefCell<Histogram<u64>>,
}

impl ShardHistograms {
    fn new() -> Rc<Self> {
        Rc::new(ShardHistograms { total: RefCell::new(new_histogram()), interval: RefCell::new(new_histogram()) })
    }
    fn record(&self, us: u64) {
        let us = us.max(1);
        let _ = self.total.borrow_mut().record(us);
        let _ = self.interval.borrow_mut().record(us);
    }
}

/// Every second, hands this shard's interval histogram to the progress line.
fn spawn_interval_ticker(h: Rc<ShardHistograms>, shared: Arc<Shared>, done: Rc<std::cell::Cell<bool>>) {
    let tx = shared.interval_sender();
    glommio::spawn_local(async move {
        while !done.get() {
            glommio::timer::sleep(Duration::from_millis(1000)).await;
            let snapshot = std::mem::replace(&mut *h.interval.borrow_mut(), new_histogram());
            let _ = tx.try_send(snapshot); // (full: the progress line misses one second)
        }
    })
    .detach();
}

#[derive(Clone)]
struct ProducerPlan {
    args: ProduceArgs,
    quota: Option<u64>,
    deadline: Option<Instant>,
    rate: Option<f64>,
}

async fn producer_task(plan: ProducerPlan, id: u32, shared: Arc<Shared>, hist: Rc<ShardHistograms>) -> ProducerResult {
    let mut result =
        ProducerResult { id, acked: Vec::new(), shortest_round_trip_us: u64::MAX, errors: 0, first_error: None };
    let a = &plan.args;
    let config = ProducerConfig {
        acks: a.acks,
        linger: Duration::from_micros(a.linger_us),
        batch_bytes: a.batch_bytes,
        max_in_flight: a.window.clamp(1, 64),
        partitioner: Partitioner::RoundRobin,
        ..Default::default()
    };
    let producer = match connect(&a.common).await {
        Ok(client) => Producer::new(client, config).await,
        Err(e) => Err(e),
    };
    let producer = match producer {
        Ok(p) => p,
        Err(e) => {
            result.errors += 1;
            result.first_error = Some(e.to_string());
            return result;
        }
    };
    let mut in_flight = VecDeque::new();
    let mut buf = vec![0u8; a.size];
    let start = Instant::now();
    let mut seq = 0u64;
    loop {
        if plan.quota.is_some_and(|q| seq >= q)
            || plan.deadline.is_some_and(|d| Instant::now() >= d)
            || shared.stop.load(Ordering::Relaxed)
        {
            break;
        }
        // Open loop: each message has an intended send time. A message sent late (the
        // window was full, the broker stalled) counts from it, so a stalled broker cannot
        // hide its stall by slowing the generator down; one sent early (timers are coarse:
        // the generator sleeps only when over a millisecond ahead) counts from its actual
        // send, never from a time still to come.
        let intended = match plan.rate {
            Some(rate) => {
                let at = start + Duration::from_secs_f64(seq as f64 / rate);
                let now = Instant::now();
                if at > now + Duration::from_millis(1) {
                    glommio::timer::sleep(at - now).await;
                }
                Some(at)
            }
            None => None,
        };
        while in_flight.len() >= a.window {
            complete_oldest(&mut in_flight, &mut result, &shared, &hist, a.size).await;
        }
        // Closed loop: from the actual send, after the wait for a free slot in the window
        // (at window 1 that wait is the previous message's round trip).
        let sent = Instant::now();
        let since = intended.map_or(sent, |at| at.min(sent));
        payload::encode(&mut buf, Stamp { producer: id, seq, sent_ns: payload::now_ns() });
        match producer.send(&a.common.topic, None, &buf).await {
            Ok(d) => in_flight.push_back(InFlightMessage { seq, since, sent, delivery: d }),
            Err(e) => note_error(&mut result, &shared, e),
        }
        seq += 1;
    }
    producer.flush().await;
    while !in_flight.is_empty() {
        complete_oldest(&mut in_flight, &mut result, &shared, &hist, a.size).await;
    }
    result
}

/// A message sent and not yet acknowledged.
struct InFlightMessage {
    seq: u64,
    /// Where its latency counts from.
    since: Instant,
    /// When it was handed to the producer (its round trip counts from here).
    sent: Instant,
    delivery: quorra::client::producer::Delivery,
}

type InFlight = VecDeque<InFlightMessage>;

async fn complete_oldest(
    in_flight: &mut InFlight,
    result: &mut ProducerResult,
    shared: &Shared,
    hist: &ShardHistograms,
    size: usize,
) {
    let Some(InFlightMessage { seq, since, sent, delivery }) = in_flight.pop_front() else { return };
    let (outcome, acked_at) = delivery.wait_timed().await;
    match outcome {
        Ok(_) => {
            hist.record(acked_at.saturating_duration_since(since).as_micros() as u64);
            result.shortest_round_trip_us =
                result.shortest_round_trip_us.min(acked_at.saturating_duration_since(sent).as_micros() as u64);
            result.acked.push(seq);
            shared.messages.fetch_add(1, Ordering::Relaxed);
            shared.bytes.fetch_add(size as u64, Ordering::Relaxed);
        }
        Err(e) => note_error(result, shared, e),
    }
}

fn note_error(result: &mut ProducerResult, shared: &Shared, e: ClientError) {
    result.errors += 1;
    shared.errors.fetch_add(1, Ordering::Relaxed);
    if result.first_error.is_none() {
        result.first_error = Some(e.to_string());
    }
}

fn plans(args: &ProduceArgs) -> Vec<ProducerPlan> {
    let n = args.producers as u64;
    let deadline = args.duration.map(|d| Instant::now() + d);
    (0..n)
        .map(|i| ProducerPlan {
            args: args.clone(),
            quota: args.messages.map(|m| m / n + u64::from(i < m % n)),
            deadline,
            rate: args.rate.map(|r| r / n as f64),
        })
        .collect()
}

/// Runs the producers of `args` on every shard; `gate` is awaited before sending starts.
async fn shard_producers(
    shard: usize,
    cores: usize,
    plans: Vec<ProducerPlan>,
    base_id: u32,
    shared: Arc<Shared>,
    hist: Rc<ShardHistograms>,
) -> Vec<ProducerResult> {
    let mut tasks = Vec::new();
    for (i, plan) in plans.into_iter().enumerate().filter(|(i, _)| i % cores == shard) {
        tasks.push(
            glommio::spawn_local(producer_task(plan, base_id.wrapping_add(i as u32), shared.clone(), hist.clone()))
                .detach(),
        );
    }
    let mut out = Vec::new();
    for t in tasks {
        if let Some(r) = t.await {
            out.push(r);
        }
    }
    out
}

/// What the producers did, together.
struct Produced {
    histogram: Histogram<u64>,
    ledger: Vec<Entry>,
    acked: u64,
    errors: u64,
    first_error: Option<String>,
    shortest_round_trip_us: Option<u64>,
}

fn merge_producers(
    topic: &str,
    incarnation: Incarnation,
    results: Vec<(Histogram<u64>, Vec<ProducerResult>)>,
) -> Produced {
    let mut out = Produced {
        histogram: new_histogram(),
        ledger: Vec::new(),
        acked: 0,
        errors: 0,
        first_error: None,
        shortest_round_trip_us: None,
    };
    for (h, producers) in results {
        let _ = out.histogram.add(&h);
        for p in producers {
            out.acked += p.acked.len() as u64;
            out.errors += p.errors;
            out.first_error = out.first_error.or(p.first_error);
            if !p.acked.is_empty() {
                let shortest =
                    out.shortest_round_trip_us.map_or(p.shortest_round_trip_us, |s| s.min(p.shortest_round_trip_us));
                out.shortest_round_trip_us = Some(shortest);
            }
            let mut seqs = p.acked;
            seqs.sort_unstable();
            out.ledger.push(Entry {
                topic: topic.to_string(),
                incarnation: Some(incarnation),
                producer: p.id,
                acked: ledger::ranges(&seqs),
            });
        }
    }
    out
}

pub fn produce(args: &ProduceArgs, incarnation: Incarnation) -> Result<ProduceOutcome> {
    let cores = args.common.cores();
    let (shared, rx) = Shared::new();
    let progress = stats::spawn_progress(shared.clone(), rx, "produce");
    let (cpu0, t0) = (stats::cpu_seconds(), Instant::now());
    let base_id: u32 = rand::random();
    let all_plans = plans(args);
    let s = shared.clone();
    let results = on_shards(cores, move |shard| {
        let (plans, shared) = (all_plans.clone(), s.clone());
        async move {
            let hist = ShardHistograms::new();
            let done = Rc::new(std::cell::Cell::new(false));
            spawn_interval_ticker(hist.clone(), shared.clone(), done.clone());
            let results = shard_producers(shard, cores, plans, base_id, shared, hist.clone()).await;
            done.set(true);
            let total = hist.total.borrow().clone();
            (total, results)
        }
    })?;
    let elapsed = t0.elapsed();
    shared.stop.store(true, Ordering::SeqCst);
    let _ = progress.join();
    let p = merge_producers(&args.common.topic, incarnation, results);
    let cpu = stats::cpu_seconds() - cpu0;
    let mut summary = Summary::new(p.acked, p.acked * args.size as u64, p.acked, p.errors, elapsed, &p.histogram, cpu);
    summary.shortest_round_trip_us = p.shortest_round_trip_us;
    Ok(ProduceOutcome { summary, histogram: p.histogram, ledger: p.ledger, first_error: p.first_error })
}

/// What one consumer read.
#[derive(Default)]
struct ConsumerResult {
    seen: HashMap<u32, Vec<u64>>,
    /// (producer, seq) read after a larger seq of that producer in the same partition.
    suspects: Vec<(u32, u64)>,
    corrupt: u64,
    messages: u64,
    bytes: u64,
    error: Option<String>,
}

/// When a consumer stops.
#[derive(Clone)]
enum StopRule {
    /// At the end of the data: caught up, and nothing new for a few polls.
    CaughtUp,
    /// Once producers are done (the counter reaches zero) and the consumer caught up.
    AfterProducers(Arc<AtomicUsize>),
}

async fn consumer_task(
    common: Common,
    partitions: Vec<u32>,
    start: StartFrom,
    stop: StopRule,
    ready: Arc<AtomicUsize>,
    shared: Arc<Shared>,
    hist: Rc<ShardHistograms>,
) -> ConsumerResult {
    let mut r = ConsumerResult::default();
    let setup = async {
        let c = connect(&common).await?;
        let config =
            ConsumerConfig { start, max_bytes: 4 << 20, max_wait: Duration::from_millis(200), ..Default::default() };
        Consumer::new(c, &common.topic, Some(partitions), config).await
    };
    let mut consumer = match setup.await {
        Ok(c) => c,
        Err(e) => {
            ready.fetch_add(1, Ordering::SeqCst);
            r.error = Some(e.to_string());
            return r;
        }
    };
    ready.fetch_add(1, Ordering::SeqCst);
    let mut last: HashMap<(u32, u32), u64> = HashMap::new();
    let mut idle = 0;
    loop {
        let records = match consumer.poll().await {
            Ok(records) => records,
            Err(e) => {
                r.error = Some(e.to_string());
                shared.errors.fetch_add(1, Ordering::Relaxed);
                return r;
            }
        };
        let now = payload::now_ns();
        idle = if records.is_empty() { idle + 1 } else { 0 };
        for rec in &records {
            r.messages += 1;
            r.bytes += rec.value.len() as u64;
            let Some(stamp) = payload::decode(&rec.value) else {
                r.corrupt += 1;
                continue;
            };
            hist.record(now.saturating_sub(stamp.sent_ns) / 1000);
            r.seen.entry(stamp.producer).or_default().push(stamp.seq);
            let prev = last.entry((rec.partition, stamp.producer)).or_insert(stamp.seq);
            if stamp.seq < *prev {
                r.suspects.push((stamp.producer, stamp.seq));
            }
            *prev = (*prev).max(stamp.seq);
        }
        shared.messages.fetch_add(records.len() as u64, Ordering::Relaxed);
        shared.bytes.fetch_add(records.iter().map(|x| x.value.len() as u64).sum(), Ordering::Relaxed);
        let finished = match &stop {
            StopRule::CaughtUp => consumer.caught_up() && idle >= 2,
            StopRule::AfterProducers(running) => {
                running.load(Ordering::SeqCst) == 0 && consumer.caught_up() && idle >= 2
            }
        };
        if finished {
            return r;
        }
    }
}

/// The incarnation of the topic on the broker.
pub fn topic_incarnation(common: &Common) -> Result<Incarnation> {
    let common = common.clone();
    let md: Result<_, ClientError> = block_on(move || {
        let common = common.clone();
        Box::pin(async move { connect(&common).await?.topic_metadata(&common.topic).await })
    })?;
    let md = md?;
    Ok(Incarnation { id: md.id, created_ms: md.created_ms })
}

fn partitions_of(common: &Common) -> Result<u32> {
    let common = common.clone();
    let n: Result<u32, ClientError> = block_on(move || {
        let common = common.clone();
        Box::pin(async move { connect(&common).await?.partition_count(&common.topic).await })
    })?;
    Ok(n?)
}

fn run_consumers(
    common: &Common,
    consumers: usize,
    start: StartFrom,
    stop: StopRule,
    ready: Arc<AtomicUsize>,
    shared: Arc<Shared>,
) -> Result<Vec<(Histogram<u64>, Vec<ConsumerResult>)>> {
    let partitions = partitions_of(common)?;
    let consumers = consumers.clamp(1, partitions as usize);
    let cores = common.cores().min(consumers);
    let common = common.clone();
    on_shards(cores, move |shard| {
        let (common, stop, ready, shared) = (common.clone(), stop.clone(), ready.clone(), shared.clone());
        async move {
            let hist = ShardHistograms::new();
            let done = Rc::new(std::cell::Cell::new(false));
            spawn_interval_ticker(hist.clone(), shared.clone(), done.clone());
            let mut tasks = Vec::new();
            for c in (0..consumers).filter(|c| c % cores == shard) {
                let parts: Vec<u32> = (0..partitions).filter(|p| *p as usize % consumers == c).collect();
                let t = consumer_task(
                    common.clone(),
                    parts,
                    start,
                    stop.clone(),
                    ready.clone(),
                    shared.clone(),
                    hist.clone(),
                );
                tasks.push(glommio::spawn_local(t).detach());
            }
            let mut out = Vec::new();
            for t in tasks {
                if let Some(r) = t.await {
                    out.push(r);
                }
            }
            done.set(true);
            let total = hist.total.borrow().clone();
            (total, out)
        }
    })
}

fn merge_consumers(
    results: Vec<(Histogram<u64>, Vec<ConsumerResult>)>,
    elapsed: Duration,
    cpu: f64,
) -> Result<ConsumeOutcome> {
    let mut histogram = new_histogram();
    let (mut seen, mut suspects, mut corrupt, mut messages, mut bytes) =
        (HashMap::<u32, Vec<u64>>::new(), Vec::new(), 0, 0, 0);
    for (h, consumers) in results {
        let _ = histogram.add(&h);
        for c in consumers {
            if let Some(e) = c.error {
                bail!("consumer failed: {e}");
            }
            for (p, s) in c.seen {
                seen.entry(p).or_default().extend(s);
            }
            suspects.extend(c.suspects);
            corrupt += c.corrupt;
            messages += c.messages;
            bytes += c.bytes;
        }
    }
    // A suspect read more than once is a duplicate (counted as such), not a reordering.
    let reordered =
        suspects.iter().filter(|(p, s)| seen.get(p).map_or(0, |v| v.iter().filter(|x| *x == s).count()) == 1).count()
            as u64;
    let summary = Summary::new(messages, bytes, 0, 0, elapsed, &histogram, cpu);
    Ok(ConsumeOutcome { summary, histogram, seen, corrupt, reordered })
}

pub fn consume(common: &Common, consumers: usize, start: Option<StartFrom>) -> Result<ConsumeOutcome> {
    let (shared, rx) = Shared::new();
    let progress = stats::spawn_progress(shared.clone(), rx, "consume");
    let (cpu0, t0) = (stats::cpu_seconds(), Instant::now());
    let ready = Arc::new(AtomicUsize::new(0));
    let results = run_consumers(
        common,
        consumers,
        start.unwrap_or(StartFrom::Earliest),
        StopRule::CaughtUp,
        ready,
        shared.clone(),
    );
    shared.stop.store(true, Ordering::SeqCst);
    let _ = progress.join();
    merge_consumers(results?, t0.elapsed(), stats::cpu_seconds() - cpu0)
}

pub fn e2e(args: &E2eArgs, incarnation: Incarnation) -> Result<(ProduceOutcome, ConsumeOutcome)> {
    let common = args.produce.common.clone();
    let partitions = partitions_of(&common)?;
    let consumers = args.consumers.clamp(1, partitions as usize);
    let running = Arc::new(AtomicUsize::new(1));
    let ready = Arc::new(AtomicUsize::new(0));
    let (consumer_shared, _rx) = Shared::new();
    let (c, r, rd, cs) = (common.clone(), running.clone(), ready.clone(), consumer_shared.clone());
    let (cpu0, t0) = (stats::cpu_seconds(), Instant::now());
    let consumer_thread = std::thread::spawn(move || {
        run_consumers(&c, consumers, StartFrom::Latest, StopRule::AfterProducers(r), rd, cs)
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready.load(Ordering::SeqCst) < consumers {
        if Instant::now() > deadline || consumer_thread.is_finished() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let produced = produce(&args.produce, incarnation);
    running.store(0, Ordering::SeqCst);
    let results = consumer_thread.join().map_err(|_| anyhow!("consumer thread panicked"))??;
    let consumed = merge_consumers(results, t0.elapsed(), stats::cpu_seconds() - cpu0)?;
    Ok((produced?, consumed))
}
