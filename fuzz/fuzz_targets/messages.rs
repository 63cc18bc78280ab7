//! Message archives: bytecheck validation rejects every malformed archive without panicking;
//! the node handshake's messages, on data links (rkyv) and control links (JSON), too.
#![no_main]
use libfuzzer_sys::fuzz_target;
use quorra::protocol::messages::*;
use quorra::protocol::peer::{
    decode_append, decode_reply, AppendReply, AppendRequest, PeerAccepted, PeerChallenge, PeerHello, PeerProof,
};
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
    let _ = decode::<PeerChallenge>(&aligned);
    let _ = decode::<PeerProof>(&aligned);
    let _ = decode::<PeerAccepted>(&aligned);
    // A control-link message past its CRC (the hello and proof are its first messages).
    let _ = quorra::cluster::rpc::decode_body::<quorra::cluster::rpc::Request>(crc32c::crc32c(data), data);
    if let Ok(req) = decode::<AppendRequest>(&aligned) {
        let _ = decode_append(&req, data.len());
    }
    if let Ok(reply) = decode::<AppendReply>(&aligned) {
        let _ = decode_reply(&reply);
    }
});
