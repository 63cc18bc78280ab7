//! Record batch decoding: validation never panics, and a batch it accepts can be iterated
//! to the end without error.
#![no_main]
use libfuzzer_sys::fuzz_target;
use quorra::protocol::batch::{validate_batch, BatchIter, RecordIter};

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = validate_batch(data) {
        let records: Result<Vec<_>, _> = RecordIter::new(data, &header).collect();
        assert_eq!(records.expect("validated batches iterate").len() as u32, header.record_count);
    }
    for item in BatchIter::new(data) {
        if let Ok((h, bytes)) = item {
            assert_eq!(bytes.len(), h.batch_len as usize);
        }
    }
});
