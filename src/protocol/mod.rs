//! The wire protocol: frames, record batches, messages and error codes.
//!
//! Everything here is pure: bytes in, values out, no I/O. See `docs/protocol.md` for the
//! specification a client in another language follows.

pub mod acl;
pub mod batch;
pub mod frame;
pub mod messages;
pub mod node_auth;
pub mod peer;
pub mod scram;

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use thiserror::Error;

pub use frame::{BodyBuf, Frame, FrameError, FrameHeader, OutFrame};
pub use messages::ApiKind;

/// Typed error codes carried by [`messages::ErrorResponse`]. Values are part of the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    Unknown = 0,
    UnknownTopic = 1,
    UnknownPartition = 2,
    TopicExists = 3,
    InvalidRequest = 4,
    CorruptBatch = 5,
    CorruptFrame = 6,
    UnsupportedVersion = 7,
    UnknownKind = 8,
    FrameTooLarge = 9,
    OffsetOutOfRange = 10,
    StorageError = 11,
    DiskFull = 12,
    PartitionCorrupt = 13,
    Timeout = 14,
    NotLeader = 15,
    Unavailable = 16,
    Backpressure = 17,
    InvalidTopicName = 18,
    ShuttingDown = 19,
    NotEnoughReplicas = 20,
    /// The batch repeats a sequence this partition stored longer ago than it remembers
    /// offsets for: it is stored, but where cannot be said.
    DuplicateSequence = 21,
    /// The batch does not continue its producer's sequence on this partition (an earlier
    /// batch is missing): resend the earlier batches first.
    OutOfOrderSequence = 22,
    /// The partition does not know this producer (it was evicted from the producer table,
    /// or its batches were removed by retention) and the batch does not start a sequence.
    UnknownProducer = 23,
    /// A newer epoch of this producer id has written to the partition: this one is a zombie.
    ProducerFenced = 24,
    /// The broker, or this client's address, holds its limit of connections; this one is
    /// closed. Retry later, or with fewer connections.
    TooManyConnections = 25,
    /// A commit would create a consumer group beyond the broker's (the cluster's)
    /// `max_consumer_groups`; groups that already committed keep working.
    TooManyGroups = 26,
    /// The connection could not prove who it is (a node link without the cluster secret);
    /// it is closed.
    AuthenticationFailed = 27,
    /// The authenticated principal may not do this (the message names the operation).
    NotAuthorized = 28,
}

impl ErrorCode {
    pub fn from_u16(v: u16) -> ErrorCode {
        use ErrorCode::*;
        match v {
            1 => UnknownTopic,
            2 => UnknownPartition,
            3 => TopicExists,
            4 => InvalidRequest,
            5 => CorruptBatch,
            6 => CorruptFrame,
            7 => UnsupportedVersion,
            8 => UnknownKind,
            9 => FrameTooLarge,
            10 => OffsetOutOfRange,
            11 => StorageError,
            12 => DiskFull,
            13 => PartitionCorrupt,
            14 => Timeout,
            15 => NotLeader,
            16 => Unavailable,
            17 => Backpressure,
            18 => InvalidTopicName,
            19 => ShuttingDown,
            20 => NotEnoughReplicas,
            21 => DuplicateSequence,
            22 => OutOfOrderSequence,
            23 => UnknownProducer,
            24 => ProducerFenced,
            25 => TooManyConnections,
            26 => TooManyGroups,
            27 => AuthenticationFailed,
            28 => NotAuthorized,
            _ => Unknown,
        }
    }

    /// Whether a client may retry the same request and expect it to succeed later.
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            ErrorCode::Timeout
                | ErrorCode::NotLeader
                | ErrorCode::Unavailable
                | ErrorCode::Backpressure
                | ErrorCode::ShuttingDown
                | ErrorCode::NotEnoughReplicas
                | ErrorCode::OutOfOrderSequence
                | ErrorCode::TooManyConnections
        )
    }

    /// Short snake-case name used in messages and docs.
    pub fn name(self) -> &'static str {
        use ErrorCode::*;
        match self {
            Unknown => "unknown",
            UnknownTopic => "unknown_topic",
            UnknownPartition => "unknown_partition",
            TopicExists => "topic_exists",
            InvalidRequest => "invalid_request",
            CorruptBatch => "corrupt_batch",
            CorruptFrame => "corrupt_frame",
            UnsupportedVersion => "unsupported_version",
            UnknownKind => "unknown_kind",
            FrameTooLarge => "frame_too_large",
            OffsetOutOfRange => "offset_out_of_range",
            StorageError => "storage_error",
            DiskFull => "disk_full",
            PartitionCorrupt => "partition_corrupt",
            Timeout => "timeout",
            NotLeader => "not_leader",
            Unavailable => "unavailable",
            Backpressure => "backpressure",
            InvalidTopicName => "invalid_topic_name",
            ShuttingDown => "shutting_down",
            NotEnoughReplicas => "not_enough_replicas",
            DuplicateSequence => "duplicate_sequence",
            OutOfOrderSequence => "out_of_order_sequence",
            UnknownProducer => "unknown_producer",
            ProducerFenced => "producer_fenced",
            TooManyConnections => "too_many_connections",
            TooManyGroups => "too_many_groups",
            AuthenticationFailed => "authentication_failed",
            NotAuthorized => "not_authorized",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A message archive failed validation.
#[derive(Debug, Error)]
#[error("invalid message body: {0}")]
pub struct DecodeError(String);

/// Serializes a message into an aligned archive.
pub fn encode<T>(value: &T) -> AlignedVec
where
    T: for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
{
    rkyv::to_bytes::<rancor::Error>(value).expect("serializing into memory cannot fail")
}

/// Validates an archive with bytecheck and returns a view of it, without copying.
pub fn access<T>(archive: &[u8]) -> Result<&T::Archived, DecodeError>
where
    T: rkyv::Archive,
    T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    rkyv::access::<T::Archived, rancor::Error>(archive).map_err(|e| DecodeError(e.to_string()))
}

/// Validates an archive and deserializes it into an owned value.
pub fn decode<T>(archive: &[u8]) -> Result<T, DecodeError>
where
    T: rkyv::Archive,
    T::Archived:
        for<'a> CheckBytes<HighValidator<'a, rancor::Error>> + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
{
    rkyv::from_bytes::<T, rancor::Error>(archive).map_err(|e| DecodeError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::messages::*;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn messages_round_trip() {
        let req = ProduceRequest { topic: "orders".into(), partition: 3, acks: 1, timeout_ms: 5000 };
        let bytes = encode(&req);
        assert_eq!(decode::<ProduceRequest>(&bytes).unwrap(), req);
        let view = access::<ProduceRequest>(&bytes).unwrap();
        assert_eq!(view.topic.as_str(), "orders");
        assert_eq!(view.partition.to_native(), 3);
    }

    #[test]
    fn error_codes_round_trip() {
        for v in 0..=24u16 {
            let code = ErrorCode::from_u16(v);
            assert_eq!(code as u16, v);
        }
    }

    proptest! {
        #[test]
        fn garbage_archives_are_rejected_not_panicking(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let mut aligned = AlignedVec::<16>::new();
            aligned.extend_from_slice(&bytes);
            let _ = decode::<ProduceRequest>(&aligned);
            let _ = decode::<DescribeTopicResponse>(&aligned);
            let _ = decode::<MetadataResponse>(&aligned);
        }

        #[test]
        fn corrupted_archives_never_panic(topic in "[a-z]{0,40}", pos in any::<prop::sample::Index>(), x in 1u8..=255) {
            let bytes = encode(&CreateTopicRequest { name: topic, partitions: 4, replication_factor: 1 });
            let mut aligned = AlignedVec::<16>::new();
            aligned.extend_from_slice(&bytes);
            let pos = pos.index(aligned.len());
            aligned[pos] ^= x;
            let _ = decode::<CreateTopicRequest>(&aligned);
        }
    }
}

#[cfg(test)]
mod golden {
    //! Byte-exact examples of the wire format. `docs/protocol.md` shows the same bytes; this
    //! test fails when the two disagree, so the document cannot drift from the code.
    use super::frame::OutFrame;
    use super::messages::*;
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes
            .chunks(16)
            .map(|c| c.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn examples() -> Vec<(&'static str, String)> {
        let produce =
            ProduceRequest { topic: "orders".into(), partition: 3, acks: Acks::Leader as u8, timeout_ms: 30_000 };
        let fetch = FetchRequest {
            topic: "a-longer-topic".into(),
            partition: 1,
            offset: 42,
            max_bytes: 1 << 20,
            max_wait_ms: 500,
        };
        let error = ErrorResponse {
            code: ErrorCode::UnknownTopic as u16,
            message: "no such topic: x".into(),
            leader_hint: None,
        };
        let mut batch = batch::BatchBuilder::with_capacity(32);
        batch.push(Some(b"k"), b"hello", 1_700_000_000_000);
        let batch = batch.finish(0, 0, 0);
        let frame = OutFrame::new(ApiKind::Produce as u16, 0, 7, encode(&produce), vec![batch.clone()]);
        let mut frame_bytes = Vec::new();
        frame.write_to(&mut frame_bytes);
        vec![
            ("ProduceRequest", hex(&encode(&produce))),
            ("FetchRequest", hex(&encode(&fetch))),
            ("ErrorResponse", hex(&encode(&error))),
            ("record batch", hex(&batch)),
            ("produce frame header", hex(&frame_bytes[..32])),
        ]
    }

    #[test]
    fn the_protocol_document_shows_the_real_bytes() {
        let doc = include_str!("../../docs/protocol.md");
        for (name, bytes) in examples() {
            assert!(doc.contains(&bytes), "docs/protocol.md lacks the current encoding of {name}:\n{bytes}");
        }
    }

    #[test]
    #[ignore = "prints the examples for docs/protocol.md"]
    fn print_examples() {
        for (name, bytes) in examples() {
            println!("### {name}\n```\n{bytes}\n```");
        }
    }
}
