//! The Kafka listener's request decoder: arbitrary bytes never panic and never size an
//! allocation beyond what they carry (a failed allocation would abort the fuzzer, which
//! counts as a crash).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = quorra::kafka::codec::decode(bytes::Bytes::copy_from_slice(data));
});
