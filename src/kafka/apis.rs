//! Which Kafka APIs and versions the listener speaks, the ApiVersions answer, how each
//! request is served, and how native error codes read in Kafka's terms.

use std::rc::Rc;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse, ResponseHeader};
use kafka_protocol::protocol::Encodable;

use super::codec::{Body, Decoded};
use super::Answer;
use crate::protocol::ErrorCode;
use crate::shard::Shard;

/// The APIs served, with the versions advertised: the versions before each API's flexible
/// ones (tagged fields), which every current client accepts, and ApiVersions up to 3 (the
/// version clients open with).
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 8),
    (ApiKey::Fetch, 4, 11),
    (ApiKey::ListOffsets, 1, 5),
    (ApiKey::Metadata, 0, 8),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::InitProducerId, 0, 1),
    (ApiKey::CreateTopics, 2, 4),
    (ApiKey::DeleteTopics, 1, 3),
];

/// Kafka's error codes used here.
pub mod kafka_error {
    pub const NONE: i16 = 0;
    pub const UNKNOWN_SERVER_ERROR: i16 = -1;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const LEADER_NOT_AVAILABLE: i16 = 5;
    pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
    pub const REQUEST_TIMED_OUT: i16 = 7;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const NOT_ENOUGH_REPLICAS: i16 = 19;
    pub const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
    pub const UNSUPPORTED_VERSION: i16 = 35;
    pub const INVALID_REQUEST: i16 = 42;
    pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
    pub const DUPLICATE_SEQUENCE_NUMBER: i16 = 46;
    pub const INVALID_PRODUCER_EPOCH: i16 = 47;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const UNKNOWN_PRODUCER_ID: i16 = 59;
}

/// A native error in Kafka's terms: the code a Kafka client acts on as it would on a Kafka
/// broker's (retriable ones stay retriable).
pub fn kafka_code(code: ErrorCode) -> i16 {
    use kafka_error::*;
    match code {
        ErrorCode::UnknownTopic | ErrorCode::UnknownPartition | ErrorCode::InvalidTopicName => {
            UNKNOWN_TOPIC_OR_PARTITION
        }
        ErrorCode::OffsetOutOfRange => OFFSET_OUT_OF_RANGE,
        ErrorCode::CorruptBatch => CORRUPT_MESSAGE,
        ErrorCode::CorruptFrame | ErrorCode::InvalidRequest | ErrorCode::UnknownKind => INVALID_REQUEST,
        ErrorCode::FrameTooLarge => MESSAGE_TOO_LARGE,
        ErrorCode::NotLeader | ErrorCode::ShuttingDown => NOT_LEADER_OR_FOLLOWER,
        ErrorCode::Unavailable => LEADER_NOT_AVAILABLE,
        ErrorCode::Timeout | ErrorCode::Backpressure => REQUEST_TIMED_OUT,
        ErrorCode::StorageError | ErrorCode::DiskFull | ErrorCode::PartitionCorrupt => KAFKA_STORAGE_ERROR,
        ErrorCode::NotEnoughReplicas => NOT_ENOUGH_REPLICAS,
        ErrorCode::DuplicateSequence => DUPLICATE_SEQUENCE_NUMBER,
        ErrorCode::OutOfOrderSequence => OUT_OF_ORDER_SEQUENCE_NUMBER,
        ErrorCode::UnknownProducer => UNKNOWN_PRODUCER_ID,
        ErrorCode::ProducerFenced => INVALID_PRODUCER_EPOCH,
        ErrorCode::NotAuthorized | ErrorCode::AuthenticationFailed => TOPIC_AUTHORIZATION_FAILED,
        ErrorCode::UnsupportedVersion => UNSUPPORTED_VERSION,
        _ => UNKNOWN_SERVER_ERROR,
    }
}

/// The version range served for `key`, if it is served.
pub fn served(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED.iter().find(|(k, _, _)| *k == key).map(|&(_, min, max)| (min, max))
}

/// Serves one decoded request: the ordered part now (each partition's native request sent
/// on its way), the answer to come.
pub async fn serve(shard: &Rc<Shard>, request: Decoded) -> Result<Answer, String> {
    let Decoded { key, version, correlation_id, body } = request;
    match body {
        Body::ApiVersions { served } => {
            // A version beyond ours is answered in v0 with the list (KIP-511), so that the
            // client can pick one and ask again.
            let (version, error) =
                if served { (version, kafka_error::NONE) } else { (0, kafka_error::UNSUPPORTED_VERSION) };
            Ok(ready(encode_response(key, version, correlation_id, &api_versions(error))?))
        }
        Body::Metadata(r) => Ok(super::metadata::serve(shard, r, version, correlation_id).await),
        Body::Produce(r) => Ok(super::data::produce(shard, r, version, correlation_id).await),
        Body::Fetch(r) => Ok(super::data::fetch(shard, r, version, correlation_id).await),
        Body::ListOffsets(r) => Ok(super::data::list_offsets(shard, r, version, correlation_id).await),
        Body::InitProducerId(r) => Ok(super::admin::init_producer_id(shard, r, version, correlation_id).await),
        Body::CreateTopics(r) => Ok(super::admin::create_topics(shard, r, version, correlation_id).await),
        Body::DeleteTopics(r) => Ok(super::admin::delete_topics(shard, r, version, correlation_id).await),
    }
}

fn api_versions(error_code: i16) -> ApiVersionsResponse {
    let mut body = ApiVersionsResponse::default();
    body.error_code = error_code;
    body.api_keys = SUPPORTED
        .iter()
        .map(|&(key, min, max)| {
            let mut v = ApiVersion::default();
            v.api_key = key as i16;
            v.min_version = min;
            v.max_version = max;
            v
        })
        .collect();
    body
}

/// An answer that is ready now.
pub fn ready(bytes: Bytes) -> Answer {
    Box::pin(std::future::ready(Some(bytes)))
}

/// A response with its length prefix and header, in the header version `key` and
/// `version` call for. `Err` only for a response the version cannot carry (a bug).
pub fn encode_response<R: Encodable>(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> Result<Bytes, String> {
    let fail = |e: anyhow::Error| format!("encoding the {key:?} v{version} response: {e}");
    let header_version = key.response_header_version(version);
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    let mut header = ResponseHeader::default();
    header.correlation_id = correlation_id;
    header.encode(&mut buf, header_version).map_err(fail)?;
    body.encode(&mut buf, version).map_err(fail)?;
    let size = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_version_is_one_the_codecs_know() {
        for &(key, min, max) in SUPPORTED {
            let known = key.valid_versions();
            assert!(known.min <= min && max <= known.max, "{key:?} {min}-{max} outside {known:?}");
        }
    }

    #[test]
    fn an_api_versions_answer_encodes_in_every_served_version_and_in_v0_with_an_error() {
        for version in 0..=3 {
            let bytes = encode_response(ApiKey::ApiVersions, version, 7, &api_versions(kafka_error::NONE)).unwrap();
            assert_eq!(i32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize, bytes.len() - 4);
            assert_eq!(i32::from_be_bytes(bytes[4..8].try_into().unwrap()), 7, "correlation id first");
        }
        let refused =
            encode_response(ApiKey::ApiVersions, 0, 9, &api_versions(kafka_error::UNSUPPORTED_VERSION)).unwrap();
        assert_eq!(i16::from_be_bytes(refused[8..10].try_into().unwrap()), kafka_error::UNSUPPORTED_VERSION);
    }
}
