//! A batching, idempotent producer: records are grouped per partition into record batches
//! (up to `batch_bytes`, or for at most `linger`), sent with a bounded number of requests in
//! flight, and acknowledged one by one through [`Delivery`] futures.
//!
//! The promise (docs/protocol.md, "Idempotent producers"): the records one producer sends
//! to one partition are stored in the order they were sent, each exactly once, through
//! retries, timeouts, reconnects and leader changes; a record is lost only if its delivery
//! failed.
//!
//! How it is kept: the broker allocates the producer's id; each partition's batches carry
//! consecutive sequence numbers and go through that partition's *lane*, one task that
//! sends them in sequence order (pipelined, at most [`PRODUCER_BATCHES_REMEMBERED`] at a
//! time) and takes their answers in the same order. The leader accepts a batch only if it
//! continues the sequence and answers a repeat with the offsets it already has. After a
//! retriable error the lane sends nothing new: it waits until every batch it has in flight
//! was answered, then sends the unacknowledged ones again, oldest first. A later batch is
//! never acknowledged before an earlier one. When the partition lacks an earlier batch for
//! good (its delivery failed, or it was lost with `acks=leader`), the lane starts a new
//! producer epoch and numbers its remaining batches from 0 again.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use crate::rt::{Semaphore, StaticPermit};
use bytes::Bytes;

use super::{is_retriable, Client, ClientError, ReadFrom, Requests};
use crate::limits::{MAX_BATCH_BYTES, PRODUCER_BATCHES_REMEMBERED};
use crate::protocol::batch::{add_sequence, restamp_producer, BatchBuilder, BATCH_HEADER_BYTES};
use crate::protocol::messages::{Acks, ProduceRequest, ProduceResponse};
use crate::protocol::{decode, encode, ApiKind, ErrorCode, Frame};
use crate::rt::{self, Notify, WaitList};

/// How records are assigned to partitions when the caller does not name one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partitioner {
    /// Keyed records go to `crc32c(key) % partitions` (same key, same partition, in order);
    /// records without a key go round-robin.
    KeyHash,
    /// Every record goes to the next partition in turn, keys or not.
    RoundRobin,
}

#[derive(Debug, Clone)]
pub struct ProducerConfig {
    pub acks: Acks,
    /// Longest a record waits for its batch to fill. Zero: send as soon as the caller yields.
    pub linger: Duration,
    /// A batch is sent once it reaches this size.
    pub batch_bytes: usize,
    /// Produce requests in flight at once (per producer; per partition at most
    /// [`PRODUCER_BATCHES_REMEMBERED`]).
    pub max_in_flight: usize,
    /// Bytes of sealed batches waiting to be sent before `send` waits (backpressure).
    pub max_buffered_bytes: usize,
    pub partitioner: Partitioner,
    /// One attempt of a produce waits this long for its answer; then it is sent again
    /// (to the leader, which may have changed).
    pub attempt_timeout: Duration,
    /// A record that is not acknowledged within this long after it was sealed into a batch
    /// (all attempts) fails.
    pub delivery_timeout: Duration,
    /// Ask the broker for a producer id and number the batches, so that retries are never
    /// stored twice nor out of order (default). Off: batches carry producer id 0 and a
    /// retry after a lost answer may store a batch twice.
    pub idempotent: bool,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            acks: Acks::Quorum,
            linger: Duration::from_millis(1),
            batch_bytes: 128 * 1024,
            max_in_flight: 32,
            max_buffered_bytes: 32 << 20,
            partitioner: Partitioner::KeyHash,
            attempt_timeout: Duration::from_secs(5),
            delivery_timeout: Duration::from_secs(60),
            idempotent: true,
        }
    }
}

/// Where an acknowledged record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMetadata {
    pub partition: u32,
    pub offset: u64,
}

/// Shared outcome of one batch.
#[derive(Default)]
struct BatchAck {
    /// The base offset (or the error), and when the answer arrived.
    result: RefCell<Option<(Result<u64, ClientError>, Instant)>>,
    done: WaitList,
}

impl BatchAck {
    fn resolve(&self, result: Result<u64, ClientError>) {
        *self.result.borrow_mut() = Some((result, Instant::now()));
        self.done.notify_all();
    }
}

/// The acknowledgement of one record, to be awaited.
pub struct Delivery {
    ack: Rc<BatchAck>,
    partition: u32,
    index: u32,
}

impl Delivery {
    /// Waits for the broker's answer for this record.
    pub async fn wait(self) -> Result<RecordMetadata, ClientError> {
        self.wait_timed().await.0
    }

    /// Waits for the broker's answer and also returns when it arrived (which may be well
    /// before this call: latency measurements must not depend on when they look).
    pub async fn wait_timed(self) -> (Result<RecordMetadata, ClientError>, Instant) {
        loop {
            if let Some((r, at)) = self.ack.result.borrow().as_ref() {
                let r = r
                    .clone()
                    .map(|base| RecordMetadata { partition: self.partition, offset: base + u64::from(self.index) });
                return (r, *at);
            }
            self.ack.done.wait().await;
        }
    }
}

struct Accumulator {
    builder: BatchBuilder,
    ack: Rc<BatchAck>,
    generation: u64,
}

/// A batch with its sequence numbers, waiting for its acknowledgement.
struct Sealed {
    batch: Bytes,
    records: u32,
    ack: Rc<BatchAck>,
    /// It fails if not acknowledged by then.
    deadline: Instant,
}

/// One partition's batches, in sequence order, and the numbering of the next one.
struct Lane {
    topic: Rc<str>,
    partition: u32,
    /// The producer id and epoch this partition's batches carry (a lane may move to a new
    /// epoch, or a new id once the epochs are used up, independently of other partitions:
    /// the broker tracks sequences per partition).
    producer_id: Cell<u64>,
    epoch: Cell<u16>,
    next_sequence: Cell<u32>,
    /// Sealed, not yet sent.
    unsent: RefCell<VecDeque<Sealed>>,
    /// Whether its task runs.
    running: Cell<bool>,
    wake: Notify,
}

impl Lane {
    /// Takes the sequence numbers of a batch of `records`.
    fn take_sequence(&self, records: u32) -> u32 {
        let first = self.next_sequence.get();
        self.next_sequence.set(add_sequence(first, records));
        first
    }
}

/// What became of one attempt to send a batch.
type AttemptResult = Result<(Frame, SocketAddr), (ClientError, Option<SocketAddr>)>;
type Attempt = futures_lite::future::BoxedLocal<AttemptResult>;

enum SentState {
    /// An attempt is on its way.
    InFlight(Attempt),
    /// Its last attempt was answered (or failed) and the lane has not acted on it yet.
    Answered(AttemptResult),
    /// To be sent again.
    Resend,
    /// Stored: its base offset.
    Stored(u64),
}

/// A batch the lane has sent and not yet resolved.
struct Sent {
    sealed: Sealed,
    state: SentState,
    _permit: StaticPermit,
}

impl Sent {
    /// The answer to its last attempt (waiting for it); the batch is then due to be resent
    /// unless the caller records otherwise.
    async fn outcome(&mut self) -> AttemptResult {
        match std::mem::replace(&mut self.state, SentState::Resend) {
            SentState::InFlight(attempt) => attempt.await,
            SentState::Answered(r) => r,
            SentState::Resend | SentState::Stored(_) => unreachable!("only a sent batch has an outcome"),
        }
    }
}

/// What the lane waited for.
enum Wakeup {
    Answered(AttemptResult),
    /// A batch was sealed and there is room to send it.
    Sealed,
}

/// A topic's partition.
type PartitionKey = (Rc<str>, u32);

/// Retries back off from this, doubling, to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_millis(100);

pub struct Producer {
    client: Rc<Client>,
    config: ProducerConfig,
    partition_counts: RefCell<HashMap<String, u32>>,
    /// Topic names as shared strings, so a send does not allocate one.
    topic_names: RefCell<HashMap<String, Rc<str>>>,
    accumulators: RefCell<HashMap<PartitionKey, Accumulator>>,
    lanes: RefCell<HashMap<PartitionKey, Rc<Lane>>>,
    queued_bytes: Cell<usize>,
    queue_drained: WaitList,
    in_flight: Rc<Semaphore>,
    outstanding: Cell<usize>,
    outstanding_done: WaitList,
    round_robin: Cell<u32>,
    generation: Cell<u64>,
    /// The id the broker allocated (0 when not idempotent).
    producer_id: u64,
}

impl Producer {
    /// A producer; an idempotent one first asks the broker for its producer id.
    pub async fn new(client: Rc<Client>, config: ProducerConfig) -> Result<Rc<Producer>, ClientError> {
        let producer_id = if config.idempotent { client.init_producer().await? } else { 0 };
        let in_flight = Rc::new(Semaphore::new(config.max_in_flight.max(1) as u64));
        Ok(Rc::new(Producer {
            client,
            config,
            partition_counts: RefCell::new(HashMap::new()),
            topic_names: RefCell::new(HashMap::new()),
            accumulators: RefCell::new(HashMap::new()),
            lanes: RefCell::new(HashMap::new()),
            queued_bytes: Cell::new(0),
            queue_drained: WaitList::default(),
            in_flight,
            outstanding: Cell::new(0),
            outstanding_done: WaitList::default(),
            round_robin: Cell::new(0),
            generation: Cell::new(0),
            producer_id,
        }))
    }

    /// The id the broker gave this producer (0: not idempotent).
    pub fn producer_id(&self) -> u64 {
        self.producer_id
    }

    /// Number of partitions of `topic` (looked up once).
    pub async fn partitions(&self, topic: &str) -> Result<u32, ClientError> {
        if let Some(&n) = self.partition_counts.borrow().get(topic) {
            return Ok(n);
        }
        let n = self.client.partition_count(topic).await?;
        self.partition_counts.borrow_mut().insert(topic.to_string(), n);
        Ok(n)
    }

    fn topic_name(&self, topic: &str) -> Rc<str> {
        if let Some(name) = self.topic_names.borrow().get(topic) {
            return name.clone();
        }
        let name: Rc<str> = Rc::from(topic);
        self.topic_names.borrow_mut().insert(topic.to_string(), name.clone());
        name
    }

    fn choose_partition(&self, key: Option<&[u8]>, partitions: u32) -> u32 {
        match (self.config.partitioner, key) {
            (Partitioner::KeyHash, Some(k)) => crc32c::crc32c(k) % partitions,
            _ => {
                let p = self.round_robin.get();
                self.round_robin.set(p.wrapping_add(1));
                p % partitions
            }
        }
    }

    /// Queues a record, choosing its partition; returns its delivery future.
    pub async fn send(self: &Rc<Self>, topic: &str, key: Option<&[u8]>, value: &[u8]) -> Result<Delivery, ClientError> {
        let partitions = self.partitions(topic).await?;
        let partition = self.choose_partition(key, partitions);
        self.send_to(topic, partition, key, value).await
    }

    /// Queues a record for a given partition; waits only when too much is buffered.
    pub async fn send_to(
        self: &Rc<Self>,
        topic: &str,
        partition: u32,
        key: Option<&[u8]>,
        value: &[u8],
    ) -> Result<Delivery, ClientError> {
        let record_bytes = BatchBuilder::record_bytes(key, value);
        if record_bytes + BATCH_HEADER_BYTES > MAX_BATCH_BYTES {
            return Err(ClientError::Invalid(format!(
                "a record of {record_bytes} bytes exceeds the largest batch ({MAX_BATCH_BYTES} bytes)"
            )));
        }
        while self.queued_bytes.get() > self.config.max_buffered_bytes {
            self.queue_drained.wait().await;
        }
        let topic = self.topic_name(topic);
        let key_id = (topic.clone(), partition);
        let (delivery, full, new_generation) = {
            let mut accs = self.accumulators.borrow_mut();
            // A record that would overflow the batch starts a new one.
            if accs.get(&key_id).is_some_and(|a| {
                a.builder.record_count() > 0 && a.builder.len_bytes() + record_bytes > self.config.batch_bytes
            }) {
                let acc = accs.remove(&key_id).expect("checked");
                self.seal(topic.clone(), partition, acc);
            }
            let mut new_generation = None;
            let acc = accs.entry(key_id.clone()).or_insert_with(|| {
                let generation = self.generation.get() + 1;
                self.generation.set(generation);
                new_generation = Some(generation);
                Accumulator {
                    builder: BatchBuilder::with_capacity(self.config.batch_bytes.min(1 << 20)),
                    ack: Rc::default(),
                    generation,
                }
            });
            let index = acc.builder.record_count();
            acc.builder.push(key, value, rt::now_ms());
            let delivery = Delivery { ack: acc.ack.clone(), partition, index };
            (delivery, acc.builder.len_bytes() >= self.config.batch_bytes, new_generation)
        };
        if full {
            let acc = self.accumulators.borrow_mut().remove(&key_id).expect("just filled");
            self.seal(topic, partition, acc);
        } else if let Some(generation) = new_generation {
            self.schedule_linger(key_id, generation);
        }
        Ok(delivery)
    }

    fn schedule_linger(self: &Rc<Self>, key: PartitionKey, generation: u64) {
        let weak = Rc::downgrade(self);
        let linger = self.config.linger;
        rt::spawn(async move {
            if linger.is_zero() {
                rt::yield_now().await;
            } else {
                rt::sleep(linger).await;
            }
            let Some(p) = weak.upgrade() else { return };
            let acc = {
                let mut accs = p.accumulators.borrow_mut();
                match accs.get(&key) {
                    Some(a) if a.generation == generation => accs.remove(&key),
                    _ => None,
                }
            };
            if let Some(acc) = acc {
                p.seal(key.0, key.1, acc);
            }
        });
    }

    fn lane(self: &Rc<Self>, topic: Rc<str>, partition: u32) -> Rc<Lane> {
        let key = (topic.clone(), partition);
        if let Some(lane) = self.lanes.borrow().get(&key) {
            return lane.clone();
        }
        let lane = Rc::new(Lane {
            topic,
            partition,
            producer_id: Cell::new(self.producer_id),
            epoch: Cell::new(0),
            next_sequence: Cell::new(0),
            unsent: RefCell::new(VecDeque::new()),
            running: Cell::new(false),
            wake: Notify::new(),
        });
        self.lanes.borrow_mut().insert(key, lane.clone());
        lane
    }

    /// Numbers a full (or lingered) batch and hands it to its partition's lane.
    fn seal(self: &Rc<Self>, topic: Rc<str>, partition: u32, acc: Accumulator) {
        let lane = self.lane(topic, partition);
        let records = acc.builder.record_count();
        let sequence = if lane.producer_id.get() == 0 { 0 } else { lane.take_sequence(records) };
        let batch = acc.builder.finish(lane.producer_id.get(), lane.epoch.get(), sequence);
        self.queued_bytes.set(self.queued_bytes.get() + batch.len());
        self.outstanding.set(self.outstanding.get() + 1);
        let deadline = Instant::now() + self.config.delivery_timeout;
        lane.unsent.borrow_mut().push_back(Sealed { batch, records, ack: acc.ack, deadline });
        if lane.running.replace(true) {
            lane.wake.notify();
        } else {
            rt::spawn(run_lane(Rc::downgrade(self), lane));
        }
    }

    /// Sends every buffered record now and waits until all are acknowledged (or failed).
    pub async fn flush(self: &Rc<Self>) {
        let accs: Vec<_> = self.accumulators.borrow_mut().drain().collect();
        for ((topic, partition), acc) in accs {
            self.seal(topic, partition, acc);
        }
        while self.outstanding.get() > 0 {
            self.outstanding_done.wait().await;
        }
    }

    /// Batches a lane may have sent and not resolved: what the broker remembers offsets
    /// for, so that every retry can be answered with the offsets it already has.
    fn lane_window(&self) -> usize {
        self.config.max_in_flight.clamp(1, PRODUCER_BATCHES_REMEMBERED)
    }

    fn produce_request(&self, lane: &Lane) -> ProduceRequest {
        ProduceRequest {
            topic: lane.topic.to_string(),
            partition: lane.partition,
            acks: self.config.acks as u8,
            timeout_ms: self.config.attempt_timeout.as_millis() as u32,
        }
    }

    /// Sends one attempt of a batch (queued on its connection now, so attempts made in
    /// order leave in order); returns the future of its answer.
    async fn attempt(&self, lane: &Lane, batch: &Bytes) -> Attempt {
        let timeout = self.config.attempt_timeout + Duration::from_millis(500);
        let request = self.produce_request(lane);
        match self.client.partition_connection(&lane.topic, lane.partition, ReadFrom::Leader).await {
            Ok(conn) => {
                let fut = conn.request(ApiKind::Produce, encode(&request), vec![batch.clone()]);
                let addr = conn.addr();
                futures_lite::future::FutureExt::boxed_local(async move {
                    rt::timeout(timeout, fut)
                        .await
                        .unwrap_or_else(|| Err(ClientError::Timeout(format!("produce not answered by {addr}"))))
                        .map(|f| (f, addr))
                        .map_err(|e| (e, Some(addr)))
                })
            }
            Err(e) => futures_lite::future::FutureExt::boxed_local(async move { Err((e, None)) }),
        }
    }

    fn resolve(&self, sealed: Sealed, result: Result<u64, ClientError>) {
        sealed.ack.resolve(result);
        self.outstanding.set(self.outstanding.get() - 1);
        self.outstanding_done.notify_all();
    }

    /// Waits for the answer of every batch in flight after the first (so that nothing of
    /// this partition is on its way when the lane sends again).
    async fn settle(&self, sent: &mut VecDeque<Sent>) {
        for s in sent.iter_mut().skip(1) {
            if let SentState::InFlight(_) = s.state {
                let result = s.outcome().await;
                s.state = match result {
                    Ok((frame, _)) => match decode::<ProduceResponse>(frame.archive()) {
                        Ok(r) => SentState::Stored(r.base_offset),
                        Err(e) => SentState::Answered(Err((e.into(), None))),
                    },
                    Err(e) => SentState::Answered(Err(e)),
                };
            }
        }
    }

    /// Sends again, oldest first, every batch in `sent` that is not known to be stored.
    async fn resend(&self, lane: &Lane, sent: &mut VecDeque<Sent>) {
        for s in sent.iter_mut() {
            if !matches!(s.state, SentState::Stored(_)) {
                s.state = SentState::InFlight(self.attempt(lane, &s.sealed.batch).await);
            }
        }
    }

    /// The partition lacks an earlier batch for good, or forgot this producer: the lane
    /// moves to a new epoch (a new producer id once the epochs are used up) and numbers
    /// every batch it has not had acknowledged from 0 again. No batch of the old numbering
    /// is in flight (the caller settled them).
    async fn start_new_epoch(&self, lane: &Lane, sent: &mut VecDeque<Sent>) -> Result<(), ClientError> {
        if lane.epoch.get() == u16::MAX {
            lane.producer_id.set(self.client.init_producer().await?);
            lane.epoch.set(0);
        } else {
            lane.epoch.set(lane.epoch.get() + 1);
        }
        log::debug!(
            "{}/{}: producer {} starts epoch {} (an earlier batch is missing for good)",
            lane.topic,
            lane.partition,
            lane.producer_id.get(),
            lane.epoch.get()
        );
        lane.next_sequence.set(0);
        let renumber = |sealed: &mut Sealed| {
            let mut bytes = sealed.batch.to_vec();
            restamp_producer(&mut bytes, lane.producer_id.get(), lane.epoch.get(), lane.take_sequence(sealed.records));
            sealed.batch = Bytes::from(bytes);
        };
        for s in sent.iter_mut().filter(|s| !matches!(s.state, SentState::Stored(_))) {
            renumber(&mut s.sealed);
        }
        for sealed in lane.unsent.borrow_mut().iter_mut() {
            renumber(sealed);
        }
        Ok(())
    }
}

/// What the oldest unresolved batch's answer makes the lane do.
enum Next {
    Stored(u64),
    /// Settle, back off, send the unacknowledged batches again in order.
    Retry(ClientError, Option<SocketAddr>),
    /// Settle, start a new epoch, send again.
    NewEpoch(ClientError),
    Fail(ClientError),
}

fn judge(result: AttemptResult, deadline: Instant) -> Next {
    let (error, failed_at) = match result {
        Ok((frame, _)) => {
            return match decode::<ProduceResponse>(frame.archive()) {
                Ok(r) => Next::Stored(r.base_offset),
                Err(e) => Next::Fail(e.into()),
            }
        }
        Err(e) => e,
    };
    match error.code() {
        // This is the oldest batch the lane has not resolved: an earlier one is missing for
        // good (or the partition forgot the producer), and no retry will bring it.
        Some(ErrorCode::OutOfOrderSequence | ErrorCode::UnknownProducer) => Next::NewEpoch(error),
        _ if is_retriable(&error) && Instant::now() < deadline => Next::Retry(error, failed_at),
        _ if is_retriable(&error) => {
            Next::Fail(ClientError::Timeout(format!("delivery timed out; last error: {error}")))
        }
        _ => Next::Fail(error),
    }
}

/// A lane's task: sends the partition's batches in sequence order and resolves them in the
/// same order (see the module docs). Ends when nothing is left to send.
async fn run_lane(this: Weak<Producer>, lane: Rc<Lane>) {
    let mut sent: VecDeque<Sent> = VecDeque::new();
    let mut backoff = FIRST_BACKOFF;
    loop {
        let Some(p) = this.upgrade() else { return fail_all(&lane, sent) };
        while sent.len() < p.lane_window() && !lane.unsent.borrow().is_empty() {
            // A lane waits for a request slot only when it holds none: a lane that holds
            // some takes its answers instead (each frees a slot), so lanes waiting for each
            // other's slots cannot all stop.
            let permit = if sent.is_empty() {
                match p.in_flight.clone().acquire_static_permit(1).await {
                    Ok(permit) => permit,
                    Err(_) => return,
                }
            } else {
                match p.in_flight.clone().try_acquire_static_permit(1) {
                    Ok(permit) => permit,
                    Err(_) => break,
                }
            };
            let Some(sealed) = lane.unsent.borrow_mut().pop_front() else { break };
            p.queued_bytes.set(p.queued_bytes.get() - sealed.batch.len());
            p.queue_drained.notify_all();
            let attempt = p.attempt(&lane, &sealed.batch).await;
            sent.push_back(Sent { sealed, state: SentState::InFlight(attempt), _permit: permit });
        }
        let Some(front) = sent.front_mut() else {
            if lane.unsent.borrow().is_empty() {
                lane.running.set(false);
                return;
            }
            continue;
        };
        if let SentState::Stored(base) = front.state {
            let done = sent.pop_front().expect("the front");
            p.resolve(done.sealed, Ok(base));
            continue;
        }
        let room = sent.len() < p.lane_window();
        drop(p);
        let front = sent.front_mut().expect("checked above");
        let wakeup = match &mut front.state {
            // With room for more, a newly sealed batch is sent without waiting for the oldest.
            SentState::InFlight(attempt) if room => {
                futures_lite::future::or(async { Wakeup::Answered(attempt.await) }, async {
                    lane.wake.notified().await;
                    Wakeup::Sealed
                })
                .await
            }
            _ => Wakeup::Answered(front.outcome().await),
        };
        let result = match wakeup {
            Wakeup::Sealed => continue,
            Wakeup::Answered(result) => {
                front.state = SentState::Resend;
                result
            }
        };
        let next = judge(result, front.sealed.deadline);
        let Some(p) = this.upgrade() else { return fail_all(&lane, sent) };
        match next {
            Next::Stored(base) => {
                backoff = FIRST_BACKOFF;
                let done = sent.pop_front().expect("the front");
                p.resolve(done.sealed, Ok(base));
            }
            Next::Fail(e) => {
                let done = sent.pop_front().expect("the front");
                p.resolve(done.sealed, Err(e));
            }
            Next::Retry(e, failed_at) => {
                log::debug!(
                    "produce to {}/{} failed ({e}); sending again from the oldest batch",
                    lane.topic,
                    lane.partition
                );
                p.client.route_failed_at(&lane.topic, lane.partition, &e, failed_at);
                p.settle(&mut sent).await;
                drop(p);
                rt::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                let Some(p) = this.upgrade() else { return fail_all(&lane, sent) };
                p.resend(&lane, &mut sent).await;
            }
            Next::NewEpoch(e) => {
                p.settle(&mut sent).await;
                if let Err(init) = p.start_new_epoch(&lane, &mut sent).await {
                    // Without a usable numbering nothing more can be sent: fail the oldest
                    // batch and try again with the next.
                    let done = sent.pop_front().expect("the front");
                    p.resolve(done.sealed, Err(ClientError::Invalid(format!("{e}; and a new producer id: {init}"))));
                    continue;
                }
                p.resend(&lane, &mut sent).await;
            }
        }
    }
}

/// The producer is gone: nothing will resolve these batches any more.
fn fail_all(lane: &Lane, sent: VecDeque<Sent>) {
    let gone = || Err(ClientError::Invalid("the producer was dropped before the batch was acknowledged".into()));
    for s in sent {
        s.sealed.ack.resolve(gone());
    }
    for sealed in lane.unsent.borrow_mut().drain(..) {
        sealed.ack.resolve(gone());
    }
    lane.running.set(false);
}
