//! Message archives: bytecheck validation rejects every malformed archive without panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;
use quorra::protocol::messages::*;
use quorra::protocol::peer::{decode_append, decode_reply, AppendReply, AppendRequest, PeerHello};
use quorra::protocol::{decode, BodyBuf};

fuzz_target!(|data: &[u8]| {
    let mut aligned = BodyBuf::new();
    aligned.extend_from_slice(data);
    let _ = decode::<ProduceRequest>(&aligned);
    let _ = decode::<FetchRequest>(&aligned);
    let _ = decode::<CreateTopicRequest>(&aligned);
    let _ = decode::<MetadataResponse>(&aligned);
    let _ = decode::<DescribeTopicResponse>(&aligned);
    let _ = decode::<ErrorResponse>(&aligned);
    let _ = decode::<CommitOffsetRequest>(&aligned);
    let _ = decode::<PeerHello>(&aligned);
    if let Ok(req) = decode::<AppendRequest>(&aligned) {
        let _ = decode_append(&req, data.len());
    }
    if let Ok(reply) = decode::<AppendReply>(&aligned) {
        let _ = decode_reply(&reply);
    }
});
