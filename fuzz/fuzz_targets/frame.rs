//! Frame decoding: any bytes either decode into frames whose CRCs hold, or are rejected.
//!
//! Random bytes almost never carry a valid header CRC, so when the first input byte is odd
//! the target repairs both CRCs first: the rest of the decoder (lengths, limits, flags,
//! versions) then gets explored too.
#![no_main]
use libfuzzer_sys::fuzz_target;
use quorra::protocol::frame::parse_frame;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut bytes = rest.to_vec();
    if mode & 1 == 1 && bytes.len() >= 32 {
        bytes[0..4].copy_from_slice(b"QRRA");
        let body_crc = crc32c::crc32c(&bytes[32..]);
        bytes[24..28].copy_from_slice(&body_crc.to_le_bytes());
        let header_crc = crc32c::crc32c(&bytes[..28]);
        bytes[28..32].copy_from_slice(&header_crc.to_le_bytes());
    }
    let mut rest = &bytes[..];
    while let Ok(Some((frame, used))) = parse_frame(rest, 1 << 20) {
        assert!(used >= 32 && used <= rest.len());
        assert_eq!(frame.archive().len() + frame.payload().len() + 32, used);
        rest = &rest[used..];
    }
});
