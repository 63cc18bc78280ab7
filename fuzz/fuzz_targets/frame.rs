//! Frame decoding: any bytes either decode into frames whose CRCs hold, or are rejected.
#![no_main]
use libfuzzer_sys::fuzz_target;
use quorra::protocol::frame::parse_frame;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((frame, used))) = parse_frame(rest, 1 << 20) {
        assert!(used >= 32 && used <= rest.len());
        assert_eq!(frame.archive().len() + frame.payload().len() + 32, used);
        rest = &rest[used..];
    }
});
