//! A Kafka request's bytes (after the length prefix) to a typed request: its header, then
//! its body in the version it names, for the APIs and versions served. Pure, no I/O: the
//! fuzz target `fuzz/fuzz_targets/kafka_request.rs` drives it.

use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, DeleteTopicsRequest, FetchRequest, InitProducerIdRequest, ListOffsetsRequest,
    MetadataRequest, ProduceRequest, RequestHeader,
};
use kafka_protocol::protocol::Decodable;

use super::apis::served;

/// A request the listener serves.
#[derive(Debug)]
pub struct Decoded {
    pub key: ApiKey,
    pub version: i16,
    pub correlation_id: i32,
    pub body: Body,
}

#[derive(Debug)]
pub enum Body {
    /// ApiVersions (its body is not needed); `served`: in a version answered as asked,
    /// otherwise answered in v0 with `UNSUPPORTED_VERSION`.
    ApiVersions {
        served: bool,
    },
    Metadata(MetadataRequest),
    Produce(ProduceRequest),
    Fetch(FetchRequest),
    ListOffsets(ListOffsetsRequest),
    InitProducerId(InitProducerIdRequest),
    CreateTopics(CreateTopicsRequest),
    DeleteTopics(DeleteTopicsRequest),
}

/// Decodes one request. `Err`: why the connection must close (too short, an API or
/// version not served, bytes that do not decode), as a Kafka broker closes it.
pub fn decode(mut bytes: Bytes) -> Result<Decoded, String> {
    if bytes.len() < 8 {
        return Err(format!("a request of {} bytes", bytes.len()));
    }
    let raw_key = i16::from_be_bytes([bytes[0], bytes[1]]);
    let version = i16::from_be_bytes([bytes[2], bytes[3]]);
    let key = ApiKey::try_from(raw_key).map_err(|_| format!("unknown API key {raw_key}"))?;
    let header = RequestHeader::decode(&mut bytes, key.request_header_version(version))
        .map_err(|e| format!("bad {key:?} request header: {e}"))?;
    let correlation_id = header.correlation_id;
    let in_range = served(key).is_some_and(|(min, max)| (min..=max).contains(&version));
    if key == ApiKey::ApiVersions {
        return Ok(Decoded { key, version, correlation_id, body: Body::ApiVersions { served: in_range } });
    }
    if !in_range {
        return Err(format!("{key:?} version {version} is not served (docs/kafka.md)"));
    }
    let bad = |e: anyhow::Error| format!("bad {key:?} v{version} request: {e}");
    let body = match key {
        ApiKey::Metadata => Body::Metadata(MetadataRequest::decode(&mut bytes, version).map_err(bad)?),
        ApiKey::Produce => Body::Produce(ProduceRequest::decode(&mut bytes, version).map_err(bad)?),
        ApiKey::Fetch => Body::Fetch(FetchRequest::decode(&mut bytes, version).map_err(bad)?),
        ApiKey::ListOffsets => Body::ListOffsets(ListOffsetsRequest::decode(&mut bytes, version).map_err(bad)?),
        ApiKey::InitProducerId => {
            Body::InitProducerId(InitProducerIdRequest::decode(&mut bytes, version).map_err(bad)?)
        }
        ApiKey::CreateTopics => Body::CreateTopics(CreateTopicsRequest::decode(&mut bytes, version).map_err(bad)?),
        ApiKey::DeleteTopics => Body::DeleteTopics(DeleteTopicsRequest::decode(&mut bytes, version).map_err(bad)?),
        _ => return Err(format!("{key:?} is not served (docs/kafka.md)")),
    };
    Ok(Decoded { key, version, correlation_id, body })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_array_count_beyond_the_bytes_that_follow_is_refused_before_any_allocation() {
        // Metadata v0 claiming 2^31 - 1 topics: unpatched, the codec reserves ~100 GiB
        // for them first, and the failed allocation aborts the process.
        let request = Bytes::from_static(&[0, 3, 0, 0, 0, 0, 0, 7, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff]);
        let refused = decode(request).unwrap_err();
        assert!(refused.contains("exceeds"), "{refused}");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(key in 0i16..4, version in 0i16..12, body in prop::collection::vec(any::<u8>(), 0..300)) {
            let mut bytes = key.to_be_bytes().to_vec();
            bytes.extend_from_slice(&version.to_be_bytes());
            bytes.extend_from_slice(&body);
            let _ = decode(Bytes::from(bytes));
        }
    }
}
