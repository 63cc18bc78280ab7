//! A batching producer: records are grouped per partition into record batches (up to
//! `batch_bytes`, or for at most `linger`), sent with a bounded number of requests in flight,
//! and acknowledged one by one through [`Delivery`] futures.
//!
//! Batches of one partition leave in the order they were sealed: one sender task writes
//! every request, so the broker appends them in that order even with many in flight.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::sync::Semaphore;

use super::{is_retriable, Client, ClientError, ReadFrom};
use crate::limits::MAX_BATCH_BYTES;
use crate::protocol::batch::{BatchBuilder, BATCH_HEADER_BYTES};
use crate::protocol::messages::{Acks, ProduceRequest, ProduceResponse};
use crate::protocol::{decode, encode, ApiKind, Frame};
use crate::rt::{self, Notify, WaitList};
use std::net::SocketAddr;

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
    /// Produce requests in flight at once (per producer).
    pub max_in_flight: usize,
    /// Bytes of sealed batches waiting to be sent before `send` waits (backpressure).
    pub max_buffered_bytes: usize,
    pub partitioner: Partitioner,
    /// One attempt of a produce waits this long for its answer; then it is sent again
    /// (to the leader, which may have changed).
    pub attempt_timeout: Duration,
    /// A record that is not acknowledged within this long (all attempts) fails.
    pub delivery_timeout: Duration,
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

struct Sealed {
    topic: Rc<str>,
    partition: u32,
    batch: Bytes,
    ack: Rc<BatchAck>,
}

pub struct Producer {
    client: Rc<Client>,
    config: ProducerConfig,
    partition_counts: RefCell<HashMap<String, u32>>,
    /// Topic names as shared strings, so a send does not allocate one.
    topic_names: RefCell<HashMap<String, Rc<str>>>,
    accumulators: RefCell<HashMap<(Rc<str>, u32), Accumulator>>,
    queue: RefCell<VecDeque<Sealed>>,
    queued_bytes: Cell<usize>,
    queue_ready: Notify,
    queue_drained: WaitList,
    in_flight: Rc<Semaphore>,
    outstanding: Cell<usize>,
    outstanding_done: WaitList,
    round_robin: Cell<u32>,
    generation: Cell<u64>,
    /// Identifies this producer's batches: with the per-partition sequence numbers, a
    /// leader recognises a batch it already stored when a retry brings it again.
    producer_id: u64,
    sequences: RefCell<HashMap<(Rc<str>, u32), u32>>,
}

impl Producer {
    pub fn new(client: Rc<Client>, config: ProducerConfig) -> Rc<Producer> {
        let in_flight = Rc::new(Semaphore::new(config.max_in_flight.max(1) as u64));
        let p = Rc::new(Producer {
            client,
            config,
            partition_counts: RefCell::new(HashMap::new()),
            topic_names: RefCell::new(HashMap::new()),
            accumulators: RefCell::new(HashMap::new()),
            queue: RefCell::new(VecDeque::new()),
            queued_bytes: Cell::new(0),
            queue_ready: Notify::new(),
            queue_drained: WaitList::default(),
            in_flight,
            outstanding: Cell::new(0),
            outstanding_done: WaitList::default(),
            round_robin: Cell::new(0),
            generation: Cell::new(0),
            producer_id: random_producer_id(),
            sequences: RefCell::new(HashMap::new()),
        });
        rt::spawn(Producer::sender(Rc::downgrade(&p)));
        p
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

    fn schedule_linger(self: &Rc<Self>, key: (Rc<str>, u32), generation: u64) {
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

    fn seal(&self, topic: Rc<str>, partition: u32, acc: Accumulator) {
        let records = acc.builder.record_count();
        let sequence = {
            let mut seqs = self.sequences.borrow_mut();
            let seq = seqs.entry((topic.clone(), partition)).or_insert(0);
            let first = *seq;
            *seq = seq.wrapping_add(records);
            first
        };
        let batch = acc.builder.finish(self.producer_id, 0, sequence);
        self.queued_bytes.set(self.queued_bytes.get() + batch.len());
        self.outstanding.set(self.outstanding.get() + 1);
        self.queue.borrow_mut().push_back(Sealed { topic, partition, batch, ack: acc.ack });
        self.queue_ready.notify();
    }

    /// Sends every buffered record now and waits until all are acknowledged (or failed).
    pub async fn flush(&self) {
        let accs: Vec<_> = self.accumulators.borrow_mut().drain().collect();
        for ((topic, partition), acc) in accs {
            self.seal(topic, partition, acc);
        }
        while self.outstanding.get() > 0 {
            self.outstanding_done.wait().await;
        }
    }

    /// The sender task: writes sealed batches in order, at most `max_in_flight` at a time.
    async fn sender(this: std::rc::Weak<Self>) {
        loop {
            let Some(p) = this.upgrade() else { return };
            let next = p.queue.borrow_mut().pop_front();
            let Some(sealed) = next else {
                let ready = p.queue_ready.clone();
                drop(p);
                // Wake up now and then to notice that the producer was dropped.
                rt::timeout(Duration::from_millis(200), ready.notified()).await;
                continue;
            };
            p.queued_bytes.set(p.queued_bytes.get() - sealed.batch.len());
            p.queue_drained.notify_all();
            let Ok(permit) = p.in_flight.clone().acquire_static_permit(1).await else { return };
            let request = ProduceRequest {
                topic: sealed.topic.to_string(),
                partition: sealed.partition,
                acks: p.config.acks as u8,
                timeout_ms: p.config.attempt_timeout.as_millis() as u32,
            };
            // The first attempt is queued on its connection now, so batches of a partition
            // leave in order; retries (after a failover) follow in their own time.
            let first = p.attempt(&sealed, &request).await;
            let response = futures_lite::future::FutureExt::boxed_local(Producer::deliver(
                this.clone(),
                sealed.topic.clone(),
                sealed.partition,
                sealed.batch.clone(),
                request,
                first,
            ));
            let weak = this.clone();
            rt::spawn(async move {
                let result = response.await;
                sealed.ack.resolve(result);
                drop(permit);
                if let Some(p) = weak.upgrade() {
                    p.outstanding.set(p.outstanding.get() - 1);
                    p.outstanding_done.notify_all();
                }
            });
        }
    }

    /// Sends one attempt of a produce; returns the future of its answer.
    async fn attempt(&self, sealed: &Sealed, request: &ProduceRequest) -> Attempt {
        let timeout = self.config.attempt_timeout + Duration::from_millis(500);
        match self.client.partition_connection(&sealed.topic, sealed.partition, ReadFrom::Leader).await {
            Ok(conn) => {
                let fut = conn.send(ApiKind::Produce, encode(request), vec![sealed.batch.clone()]);
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

    /// Waits for a produce's answer, sending it again while it fails in a retriable way
    /// (not the leader, node unreachable, no answer) within the delivery timeout. Retries
    /// carry the same producer id and sequence, so a leader that already stored the batch
    /// answers with its offsets instead of storing it twice.
    async fn deliver(
        this: std::rc::Weak<Self>,
        topic: Rc<str>,
        partition: u32,
        batch: Bytes,
        request: ProduceRequest,
        first: Attempt,
    ) -> Result<u64, ClientError> {
        let started = Instant::now();
        let mut pending = first;
        let mut backoff = Duration::from_millis(20);
        loop {
            let (error, failed_at) = match pending.await {
                Ok((frame, _)) => return Ok(decode::<ProduceResponse>(frame.archive())?.base_offset),
                Err(e) => e,
            };
            let Some(p) = this.upgrade() else { return Err(error) };
            if !is_retriable(&error) || started.elapsed() + backoff >= p.config.delivery_timeout {
                return Err(error);
            }
            log::debug!("produce to {topic}/{partition} failed ({error}); retrying");
            p.client.route_failed_at(&topic, partition, &error, failed_at);
            drop(p);
            rt::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(100));
            let Some(p) = this.upgrade() else { return Err(error) };
            let sealed = Sealed { topic: topic.clone(), partition, batch: batch.clone(), ack: Rc::default() };
            pending = p.attempt(&sealed, &request).await;
        }
    }
}

/// One attempt of a produce: the answer and the node that gave it, or the error and the
/// node that failed (when one was reached).
type Attempt = futures_lite::future::BoxedLocal<Result<(Frame, SocketAddr), (ClientError, Option<SocketAddr>)>>;

/// A random, nonzero producer id (zero means "not idempotent").
fn random_producer_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.write_u32(std::process::id());
    h.finish().max(1)
}
