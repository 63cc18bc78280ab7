//! Kafka's Produce, Fetch and ListOffsets, one native request per partition.
//!
//! A produce's records are Kafka RecordBatch v2, Quorra's stored format: they go to the
//! partition as sent (validated, stamped in place, stored). A fetch answers the stored
//! batches as they are.

use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{ListOffsetsPartitionResponse, ListOffsetsTopicResponse};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse, ProduceRequest,
    ProduceResponse, TopicName,
};
use kafka_protocol::protocol::{Encodable, StrBytes};

use super::apis::{encode_response, kafka_code, kafka_error};
use super::{bridge, Answer};
use crate::protocol::messages::{self as native, Acks, ApiKind};
use crate::protocol::OutFrame;
use crate::server::PendingAnswer;
use crate::shard::Shard;

/// Kafka's `INVALID_REQUIRED_ACKS`.
const INVALID_REQUIRED_ACKS: i16 = 21;

/// The answer, encoded when every partition's native answer is in.
fn respond<R: Encodable + 'static>(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: impl std::future::Future<Output = R> + 'static,
) -> Answer {
    Box::pin(async move {
        let body = body.await;
        encode_response(key, version, correlation_id, &body).inspect_err(|e| log::error!("kafka: {e}")).ok()
    })
}

/// A partition's native answer to come, or the Kafka error it already has.
enum Part {
    Sent(PendingAnswer),
    Refused(i16),
}

impl Part {
    async fn outcome(self) -> Result<OutFrame, i16> {
        match self {
            Part::Refused(code) => Err(code),
            Part::Sent(pending) => {
                let out = pending.await;
                match bridge::error_of(&out) {
                    Some((code, _)) => Err(kafka_code(code)),
                    None => Ok(out),
                }
            }
        }
    }
}

/// Kafka's acks: 0 none (and no answer), 1 the leader's disk, -1 every in-sync replica
/// (Quorra's `all`; docs/kafka.md compares it with Kafka's `min.insync.replicas`).
fn acks_of(acks: i16) -> Option<Acks> {
    match acks {
        0 => Some(Acks::None),
        1 => Some(Acks::Leader),
        -1 => Some(Acks::All),
        _ => None,
    }
}

pub async fn produce(shard: &Rc<Shard>, request: ProduceRequest, version: i16, correlation_id: i32) -> Answer {
    let acks = acks_of(request.acks);
    let timeout_ms = request.timeout_ms.max(0) as u32;
    let mut topics = Vec::new();
    for topic in request.topic_data {
        let name = topic.name.0.to_string();
        let mut parts = Vec::new();
        for p in topic.partition_data {
            let part = match (acks, request.transactional_id.is_some(), u32::try_from(p.index)) {
                (None, _, _) => Part::Refused(INVALID_REQUIRED_ACKS),
                (_, true, _) => Part::Refused(kafka_error::INVALID_REQUEST),
                (_, _, Err(_)) => Part::Refused(kafka_error::UNKNOWN_TOPIC_OR_PARTITION),
                (Some(acks), false, Ok(partition)) => {
                    let ask = native::ProduceRequest { topic: name.clone(), partition, acks: acks as u8, timeout_ms };
                    let records = p.records.unwrap_or_default();
                    Part::Sent(bridge::send(shard, ApiKind::Produce, &crate::protocol::encode(&ask), &records).await)
                }
            };
            parts.push((p.index, part));
        }
        topics.push((name, parts));
    }
    if acks == Some(Acks::None) {
        // Kafka does not answer acks=0; the requests are on their way already.
        return Box::pin(std::future::ready(None));
    }
    respond(ApiKey::Produce, version, correlation_id, async move {
        let mut response = ProduceResponse::default();
        for (name, parts) in topics {
            let mut topic = TopicProduceResponse::default();
            topic.name = TopicName(StrBytes::from_string(name));
            for (index, part) in parts {
                let mut p = PartitionProduceResponse::default();
                p.index = index;
                p.log_append_time_ms = -1;
                p.log_start_offset = -1;
                match part.outcome().await.and_then(|out| {
                    crate::protocol::decode::<native::ProduceResponse>(&out.archive)
                        .map_err(|_| kafka_error::UNKNOWN_SERVER_ERROR)
                }) {
                    Ok(answer) => {
                        p.base_offset = answer.base_offset as i64;
                        response.throttle_time_ms = response.throttle_time_ms.max(answer.throttle_ms as i32);
                    }
                    Err(code) => {
                        p.error_code = code;
                        p.base_offset = -1;
                    }
                }
                topic.partition_responses.push(p);
            }
            response.responses.push(topic);
        }
        response
    })
}

pub async fn fetch(shard: &Rc<Shard>, request: FetchRequest, version: i16, correlation_id: i32) -> Answer {
    let wait_ms = request.max_wait_ms.max(0) as u32;
    let total_max = request.max_bytes.max(1) as u32;
    // First every partition without waiting; if that finds nothing and the client may
    // wait, every partition again with its long poll, answered as soon as one has data.
    let mut asks = Vec::new();
    for topic in &request.topics {
        for p in &topic.partitions {
            asks.push((topic.topic.0.to_string(), p.partition, p.fetch_offset, p.partition_max_bytes));
        }
    }
    let first = fetch_round(shard, &asks, total_max, 0).await;
    let shard = shard.clone();
    respond(ApiKey::Fetch, version, correlation_id, async move {
        let mut results = collect(first).await;
        let found = results.iter().any(|(_, _, r)| r.as_ref().is_ok_and(|(_, bytes)| !bytes.is_empty()));
        // The long poll, on the partitions that answered (an unknown one would end it at once).
        let waiting: Vec<usize> = (0..results.len()).filter(|&i| results[i].2.is_ok()).collect();
        if !found && wait_ms > 0 && !waiting.is_empty() {
            let again: Vec<_> = waiting.iter().map(|&i| asks[i].clone()).collect();
            let polls = fetch_round(&shard, &again, total_max, wait_ms).await;
            let polls: Vec<_> = polls.into_iter().map(|(_, _, part)| Box::pin(part.outcome())).collect();
            let bound = Duration::from_millis(u64::from(wait_ms) + 1000);
            if let Some((Ok(out), k, _)) = crate::rt::timeout(bound, futures_util::future::select_all(polls)).await {
                results[waiting[k]].2 = Ok(fetched(&out));
            }
        }
        let mut response = FetchResponse::default();
        for (name, partition, result) in results {
            if response.responses.last().is_none_or(|t: &FetchableTopicResponse| t.topic.0.as_str() != name) {
                let mut topic = FetchableTopicResponse::default();
                topic.topic = TopicName(StrBytes::from_string(name));
                response.responses.push(topic);
            }
            let mut p = PartitionData::default();
            p.partition_index = partition;
            p.aborted_transactions = Some(Vec::new());
            p.preferred_read_replica = BrokerId(-1);
            match result {
                Ok(((high_watermark, log_start), records)) => {
                    p.high_watermark = high_watermark;
                    p.last_stable_offset = high_watermark;
                    p.log_start_offset = log_start;
                    p.records = Some(records);
                }
                Err(code) => {
                    p.error_code = code;
                    p.high_watermark = -1;
                    p.last_stable_offset = -1;
                    p.log_start_offset = -1;
                }
            }
            response.responses.last_mut().expect("pushed above").partitions.push(p);
        }
        response
    })
}

type Fetched = ((i64, i64), Bytes);

/// One native fetch per partition asked for.
async fn fetch_round(
    shard: &Rc<Shard>,
    asks: &[(String, i32, i64, i32)],
    total_max: u32,
    wait_ms: u32,
) -> Vec<(String, i32, Part)> {
    let mut parts = Vec::new();
    for (name, partition, offset, max_bytes) in asks {
        let part = match (u32::try_from(*partition), u64::try_from(*offset)) {
            (Err(_), _) => Part::Refused(kafka_error::UNKNOWN_TOPIC_OR_PARTITION),
            (_, Err(_)) => Part::Refused(kafka_error::OFFSET_OUT_OF_RANGE),
            (Ok(partition), Ok(offset)) => {
                let max_bytes = (*max_bytes).max(1) as u32;
                let ask = native::FetchRequest {
                    topic: name.clone(),
                    partition,
                    offset,
                    max_bytes: max_bytes.min(total_max),
                    max_wait_ms: wait_ms,
                };
                Part::Sent(bridge::send(shard, ApiKind::Fetch, &crate::protocol::encode(&ask), &[]).await)
            }
        };
        parts.push((name.clone(), *partition, part));
    }
    parts
}

async fn collect(parts: Vec<(String, i32, Part)>) -> Vec<(String, i32, Result<Fetched, i16>)> {
    let mut out = Vec::with_capacity(parts.len());
    for (name, partition, part) in parts {
        let result = part.outcome().await.map(|o| fetched(&o));
        out.push((name, partition, result));
    }
    out
}

/// A native fetch answer's high watermark, log start and batches (one buffer, as Kafka's
/// codec writes records).
fn fetched(out: &OutFrame) -> Fetched {
    let (hw, start) = crate::protocol::decode::<native::FetchResponse>(&out.archive)
        .map_or((-1, -1), |r| (r.high_watermark as i64, r.log_start_offset as i64));
    let records = match out.payload.as_slice() {
        [one] => one.clone(),
        chunks => {
            let mut all = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
            chunks.iter().for_each(|c| all.extend_from_slice(c));
            all.freeze()
        }
    };
    ((hw, start), records)
}

pub async fn list_offsets(shard: &Rc<Shard>, request: ListOffsetsRequest, version: i16, correlation_id: i32) -> Answer {
    let mut topics = Vec::new();
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let mut parts = Vec::new();
        for p in topic.partitions {
            let (spec, timestamp_ms) = match p.timestamp {
                -2 => (native::OFFSET_SPEC_EARLIEST, 0),
                -1 => (native::OFFSET_SPEC_LATEST, 0),
                t => (native::OFFSET_SPEC_TIMESTAMP, t),
            };
            let part = match u32::try_from(p.partition_index) {
                Err(_) => Part::Refused(kafka_error::UNKNOWN_TOPIC_OR_PARTITION),
                Ok(_) if p.timestamp < -2 => Part::Refused(kafka_error::INVALID_REQUEST),
                Ok(partition) => {
                    let ask = native::ListOffsetsRequest { topic: name.clone(), partition, spec, timestamp_ms };
                    Part::Sent(bridge::send(shard, ApiKind::ListOffsets, &crate::protocol::encode(&ask), &[]).await)
                }
            };
            parts.push((p.partition_index, part));
        }
        topics.push((name, parts));
    }
    respond(ApiKey::ListOffsets, version, correlation_id, async move {
        let mut response = ListOffsetsResponse::default();
        for (name, parts) in topics {
            let mut topic = ListOffsetsTopicResponse::default();
            topic.name = TopicName(StrBytes::from_string(name));
            for (index, part) in parts {
                let mut p = ListOffsetsPartitionResponse::default();
                p.partition_index = index;
                p.timestamp = -1;
                p.leader_epoch = -1;
                match part.outcome().await.and_then(|out| {
                    crate::protocol::decode::<native::ListOffsetsResponse>(&out.archive)
                        .map_err(|_| kafka_error::UNKNOWN_SERVER_ERROR)
                }) {
                    Ok(answer) => p.offset = answer.offset as i64,
                    Err(code) => {
                        p.error_code = code;
                        p.offset = -1;
                    }
                }
                topic.partitions.push(p);
            }
            response.topics.push(topic);
        }
        response
    })
}
