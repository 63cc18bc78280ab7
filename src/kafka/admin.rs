//! Kafka's topic administration (CreateTopics, DeleteTopics) and the idempotent producer's
//! id (InitProducerId), each one native request.

use std::rc::Rc;

use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    InitProducerIdRequest, InitProducerIdResponse, ProducerId,
};
use kafka_protocol::protocol::StrBytes;

use super::apis::{encode_response, kafka_code, kafka_error};
use super::{bridge, Answer};
use crate::protocol::messages::{self as native, ApiKind};
use crate::protocol::ErrorCode;
use crate::shard::Shard;

/// Kafka's codes for what only topic administration meets.
const TOPIC_ALREADY_EXISTS: i16 = 36;
const INVALID_TOPIC_EXCEPTION: i16 = 17;
const INVALID_PARTITIONS: i16 = 37;
const INVALID_REPLICATION_FACTOR: i16 = 38;

fn admin_code(code: ErrorCode) -> i16 {
    match code {
        ErrorCode::TopicExists => TOPIC_ALREADY_EXISTS,
        ErrorCode::InvalidTopicName => INVALID_TOPIC_EXCEPTION,
        other => kafka_code(other),
    }
}

/// A native answer: its body, or its error in Kafka's terms with the message.
fn outcome<T>(out: &crate::protocol::OutFrame, decode: impl Fn(&[u8]) -> Option<T>) -> Result<T, (i16, String)> {
    match bridge::error_of(out) {
        Some((code, message)) => Err((admin_code(code), message)),
        None => decode(&out.archive).ok_or((kafka_error::UNKNOWN_SERVER_ERROR, "undecodable answer".into())),
    }
}

fn encoded<R: kafka_protocol::protocol::Encodable>(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> Option<bytes::Bytes> {
    encode_response(key, version, correlation_id, body).inspect_err(|e| log::error!("kafka: {e}")).ok()
}

/// The idempotent producer's id: a native producer id (unique in the cluster, never 0) at
/// epoch 0. Transactions are not served.
pub async fn init_producer_id(
    shard: &Rc<Shard>,
    request: InitProducerIdRequest,
    version: i16,
    correlation_id: i32,
) -> Answer {
    let transactional = request.transactional_id.is_some();
    let pending = match transactional {
        true => None,
        false => {
            let archive = crate::protocol::encode(&native::InitProducerRequest {});
            Some(bridge::send(shard, ApiKind::InitProducer, &archive, &[]).await)
        }
    };
    Box::pin(async move {
        let mut response = InitProducerIdResponse::default();
        response.producer_id = ProducerId(-1);
        response.producer_epoch = -1;
        match pending {
            None => response.error_code = kafka_error::UNSUPPORTED_VERSION,
            Some(pending) => {
                let out = pending.await;
                match outcome(&out, |a| crate::protocol::decode::<native::InitProducerResponse>(a).ok()) {
                    Ok(answer) => {
                        response.producer_id = ProducerId(answer.producer_id as i64);
                        response.producer_epoch = 0;
                    }
                    Err((code, message)) => {
                        log::warn!("kafka InitProducerId: {message}");
                        response.error_code = code;
                    }
                }
            }
        }
        encoded(ApiKey::InitProducerId, version, correlation_id, &response)
    })
}

pub async fn create_topics(
    shard: &Rc<Shard>,
    request: CreateTopicsRequest,
    version: i16,
    correlation_id: i32,
) -> Answer {
    let mut asks = Vec::new();
    for topic in request.topics {
        let name = topic.name.0.to_string();
        // -1: the broker's default (one partition; on a cluster, the mode's replication).
        let partitions = match topic.num_partitions {
            -1 => Ok(1),
            n => u32::try_from(n).ok().filter(|&n| n > 0).ok_or(INVALID_PARTITIONS),
        };
        let replication = match topic.replication_factor {
            -1 => Ok(0),
            n => u16::try_from(n).ok().filter(|&n| n > 0).ok_or(INVALID_REPLICATION_FACTOR),
        };
        let pending = match (partitions, replication, request.validate_only, topic.assignments.is_empty()) {
            (Err(code), _, _, _) | (_, Err(code), _, _) => Err((code, None)),
            (_, _, _, false) => {
                Err((kafka_error::INVALID_REQUEST, Some("manual replica assignments are not served".into())))
            }
            (_, _, true, _) => Err((kafka_error::INVALID_REQUEST, Some("validate_only is not served".into()))),
            (Ok(partitions), Ok(replication_factor), false, true) => {
                let ask = native::CreateTopicRequest { name: name.clone(), partitions, replication_factor };
                Ok(bridge::send(shard, ApiKind::CreateTopic, &crate::protocol::encode(&ask), &[]).await)
            }
        };
        asks.push((name, pending));
    }
    Box::pin(async move {
        let mut response = CreateTopicsResponse::default();
        for (name, pending) in asks {
            let mut result = CreatableTopicResult::default();
            result.name = kafka_protocol::messages::TopicName(StrBytes::from_string(name));
            result.num_partitions = -1;
            result.replication_factor = -1;
            let answer = match pending {
                Err(e) => Err(e),
                Ok(pending) => {
                    let out = pending.await;
                    outcome(&out, |a| crate::protocol::decode::<native::CreateTopicResponse>(a).ok())
                        .map_err(|(code, message)| (code, Some(message)))
                }
            };
            match answer {
                // (Versions before 5 do not carry the partition count.)
                Ok(created) if version >= 5 => result.num_partitions = created.partitions as i32,
                Ok(_) => {}
                Err((code, message)) => {
                    result.error_code = code;
                    result.error_message = message.map(StrBytes::from_string);
                }
            }
            response.topics.push(result);
        }
        encoded(ApiKey::CreateTopics, version, correlation_id, &response)
    })
}

pub async fn delete_topics(
    shard: &Rc<Shard>,
    request: DeleteTopicsRequest,
    version: i16,
    correlation_id: i32,
) -> Answer {
    let mut asks = Vec::new();
    for name in request.topic_names {
        let name = name.0.to_string();
        let ask = native::DeleteTopicRequest { name: name.clone() };
        asks.push((name, bridge::send(shard, ApiKind::DeleteTopic, &crate::protocol::encode(&ask), &[]).await));
    }
    Box::pin(async move {
        let mut response = DeleteTopicsResponse::default();
        for (name, pending) in asks {
            let mut result = DeletableTopicResult::default();
            result.name = Some(kafka_protocol::messages::TopicName(StrBytes::from_string(name)));
            let out = pending.await;
            if let Err((code, message)) =
                outcome(&out, |a| crate::protocol::decode::<native::DeleteTopicResponse>(a).ok())
            {
                result.error_code = code;
                if version >= 5 {
                    result.error_message = Some(StrBytes::from_string(message));
                }
            }
            response.responses.push(result);
        }
        encoded(ApiKey::DeleteTopics, version, correlation_id, &response)
    })
}
