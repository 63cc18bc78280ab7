use super::*;
use proptest::prelude::*;

type TestRecord = (Option<Vec<u8>>, Vec<u8>, i64);

fn build(records: &[TestRecord]) -> Bytes {
    let mut b = BatchBuilder::with_capacity(128);
    for (k, v, ts) in records {
        b.push(k.as_deref(), v, *ts);
    }
    b.finish(7, 1, 42)
}

#[test]
fn restamping_the_producer_fields_keeps_the_batch_valid() {
    let mut bytes = build(&[(None, b"a".to_vec(), 5), (Some(b"k".to_vec()), b"b".to_vec(), 6)]).to_vec();
    restamp_producer(&mut bytes, 99, 3, 1000);
    let h = validate_batch(&bytes).expect("still valid");
    assert_eq!((h.producer_id, h.producer_epoch, h.base_sequence), (99, 3, 1000));
    assert_eq!(h.record_count, 2);
}

#[test]
fn stamping_keeps_the_crc_valid() {
    let batch = build(&[(None, b"a".to_vec(), 10), (Some(b"k".to_vec()), b"bc".to_vec(), 12)]);
    let mut bytes = batch.to_vec();
    stamp_batch(&mut bytes, 1000, 3);
    let h = validate_batch(&bytes).unwrap();
    assert_eq!((h.base_offset, h.leader_epoch, h.record_count), (1000, 3, 2));
    assert_eq!((h.producer_id, h.producer_epoch, h.base_sequence), (7, 1, 42));
    let recs: Vec<_> = RecordIter::new(&bytes, &h).map(Result::unwrap).collect();
    assert_eq!(recs[0], Record { offset: 1000, timestamp: 10, key: None, value: b"a" });
    assert_eq!(recs[1], Record { offset: 1001, timestamp: 12, key: Some(b"k"), value: b"bc" });
}

#[test]
fn a_batch_without_a_producer_carries_kafkas_minus_ones() {
    let bytes = BatchBuilder::with_capacity(8).tap_push(b"v").finish(0, 0, 0);
    assert_eq!(bytes[at::PRODUCER_ID..at::RECORD_COUNT], [0xff; 14]);
    let h = validate_batch(&bytes).unwrap();
    assert_eq!((h.producer_id, h.producer_epoch, h.base_sequence), (0, 0, 0));
    let mut claims_zero = bytes.to_vec();
    put(&mut claims_zero, at::PRODUCER_ID, &0i64.to_be_bytes());
    write_crc(&mut claims_zero);
    assert!(matches!(validate_batch(&claims_zero), Err(BatchError::BadProducer(_))));
}

impl BatchBuilder {
    fn tap_push(mut self, value: &[u8]) -> Self {
        self.push(None, value, 1);
        self
    }
}

#[test]
fn every_single_bit_flip_from_the_magic_on_is_detected() {
    let batch = build(&[(Some(b"key".to_vec()), vec![9u8; 100], 5)]).to_vec();
    for byte in at::MAGIC..batch.len() {
        for bit in 0..8 {
            let mut b = batch.clone();
            b[byte] ^= 1 << bit;
            assert!(validate_batch(&b).is_err(), "flip at byte {byte} bit {bit} undetected");
        }
    }
}

#[test]
fn control_batches_are_valid_on_disk_but_refused_from_producers() {
    let control = BatchBuilder::control(7, 1);
    let h = check_batch(&control).unwrap();
    assert!(h.is_control());
    assert_eq!(validate_batch(&control), Err(BatchError::BadAttributes(ATTR_CONTROL)));
    assert!(!check_batch(&build(&[(None, b"x".to_vec(), 1)])).unwrap().is_control());
}

#[test]
fn empty_batches_and_bad_lengths_are_rejected() {
    let empty = BatchBuilder::with_capacity(0).finish(0, 0, 0);
    assert_eq!(validate_batch(&empty), Err(BatchError::Empty));
    let mut b = build(&[(None, b"x".to_vec(), 1)]).to_vec();
    put(&mut b, at::LENGTH, &u32::MAX.to_be_bytes());
    assert!(matches!(validate_batch(&b), Err(BatchError::BadLength(_))));
}

#[test]
fn batches_of_the_format_before_kafkas_are_recognised() {
    let mut old = vec![0u8; 64];
    old[20..24].copy_from_slice(b"QRB1");
    assert!(is_pre_kafka_batch(&old));
    assert!(!may_start_batch(&old));
    assert!(!is_pre_kafka_batch(&build(&[(None, b"x".to_vec(), 1)])));
}

#[test]
fn varints_take_kafkas_zigzag_encoding() {
    for (v, bytes) in [(0i64, &[0u8][..]), (-1, &[1]), (1, &[2]), (63, &[0x7e]), (-64, &[0x7f]), (64, &[0x80, 1])] {
        let mut buf = Vec::new();
        put_varlong(&mut buf, v);
        assert_eq!(buf, bytes, "{v}");
        assert_eq!(varlong_len(v), bytes.len());
        assert_eq!(Cursor { bytes }.varlong(), Ok(v));
    }
    for v in [i64::MIN, i64::MAX, i64::from(i32::MIN), 300, -300] {
        let mut buf = Vec::new();
        put_varlong(&mut buf, v);
        assert_eq!(varlong_len(v), buf.len());
        assert_eq!(Cursor { bytes: &buf }.varlong(), Ok(v));
    }
    assert!(Cursor { bytes: &[0xff; 11] }.varlong().is_err(), "longer than ten bytes");
    assert!(Cursor { bytes: &[0x80, 0x80] }.varlong().is_err(), "truncated");
    let mut big = Vec::new();
    put_varlong(&mut big, i64::from(i32::MAX) + 1);
    assert!(Cursor { bytes: &big }.varint().is_err());
}

/// The batches are Kafka's: what the `kafka-protocol` crate (codecs generated from Kafka's
/// own schemas) encodes, Quorra accepts and reads the same; what Quorra builds, it decodes.
mod kafka_compatibility {
    use super::*;
    use kafka_protocol::indexmap::IndexMap;
    use kafka_protocol::records::{
        Compression, Record as KafkaRecord, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    fn kafka_record(offset: i64, key: Option<&[u8]>, value: &[u8], timestamp: i64) -> KafkaRecord {
        KafkaRecord {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: 5,
            producer_epoch: 2,
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: 17 + offset as i32,
            timestamp,
            key: key.map(Bytes::copy_from_slice),
            value: Some(Bytes::copy_from_slice(value)),
            headers: IndexMap::new(),
        }
    }

    #[test]
    fn a_batch_kafka_encodes_is_valid_here() {
        let records = [kafka_record(0, Some(b"k1"), b"first", 1000), kafka_record(1, None, &[7u8; 300], 1003)];
        let mut buf = bytes::BytesMut::new();
        let options = RecordEncodeOptions { version: 2, compression: Compression::None };
        RecordBatchEncoder::encode(&mut buf, &records, &options).unwrap();
        let h = validate_batch(&buf).expect("Kafka's batch passes Quorra's validation");
        assert_eq!((h.producer_id, h.producer_epoch, h.base_sequence, h.record_count), (5, 2, 17, 2));
        assert_eq!((h.first_timestamp, h.max_timestamp, h.batch_len as usize), (1000, 1003, buf.len()));
        let got: Vec<_> = RecordIter::new(&buf, &h).map(Result::unwrap).collect();
        assert_eq!(got[0], Record { offset: 0, timestamp: 1000, key: Some(b"k1"), value: b"first" });
        assert_eq!(got[1], Record { offset: 1, timestamp: 1003, key: None, value: &[7u8; 300] });
    }

    #[test]
    fn headers_are_checked_and_skipped() {
        let mut record = kafka_record(0, None, b"v", 1);
        record.headers.insert("h".to_string().into(), Some(Bytes::from_static(b"x")));
        record.headers.insert("null".to_string().into(), None);
        let mut buf = bytes::BytesMut::new();
        let options = RecordEncodeOptions { version: 2, compression: Compression::None };
        RecordBatchEncoder::encode(&mut buf, [&record], &options).unwrap();
        let h = validate_batch(&buf).unwrap();
        let got: Vec<_> = RecordIter::new(&buf, &h).map(Result::unwrap).collect();
        assert_eq!(got, [Record { offset: 0, timestamp: 1, key: None, value: b"v" }]);
    }

    proptest! {
        #[test]
        fn what_quorra_builds_kafka_decodes(records in arb_records(), base in 0u64..1 << 40, epoch in 0u32..1000) {
            let mut bytes = build(&records).to_vec();
            stamp_batch(&mut bytes, base, epoch);
            let set = RecordBatchDecoder::decode(&mut Bytes::from(bytes)).expect("Kafka decodes it");
            prop_assert_eq!(set.records.len(), records.len());
            for (i, (r, (k, v, ts))) in set.records.iter().zip(&records).enumerate() {
                prop_assert_eq!(r.offset, (base + i as u64) as i64);
                prop_assert_eq!(r.partition_leader_epoch, epoch as i32);
                prop_assert_eq!((r.producer_id, r.producer_epoch, r.sequence), (7, 1, 42 + i as i32));
                prop_assert_eq!(r.key.as_deref(), k.as_deref());
                prop_assert_eq!(r.value.as_deref(), Some(&v[..]));
                prop_assert_eq!(r.timestamp, *ts);
            }
        }
    }
}

fn arb_records() -> impl Strategy<Value = Vec<TestRecord>> {
    prop::collection::vec(
        (
            prop::option::of(prop::collection::vec(any::<u8>(), 0..16)),
            prop::collection::vec(any::<u8>(), 0..300),
            0i64..1 << 40,
        ),
        1..20,
    )
}

proptest! {
    #[test]
    fn round_trip(records in arb_records(), base in 0u64..1 << 50) {
        let mut bytes = build(&records).to_vec();
        stamp_batch(&mut bytes, base, 1);
        let h = validate_batch(&bytes).unwrap();
        let got: Vec<_> = RecordIter::new(&bytes, &h).map(Result::unwrap).collect();
        prop_assert_eq!(got.len(), records.len());
        for (i, (r, (k, v, ts))) in got.iter().zip(&records).enumerate() {
            prop_assert_eq!(r.offset, base + i as u64);
            prop_assert_eq!(r.key, k.as_deref());
            prop_assert_eq!(r.value, &v[..]);
            prop_assert_eq!(r.timestamp, *ts);
        }
        let bound: usize = BATCH_HEADER_BYTES + records.iter().map(|(k, v, _)| BatchBuilder::record_bytes(k.as_deref(), v)).sum::<usize>();
        prop_assert!(bytes.len() <= bound, "record_bytes is an upper bound");
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = validate_batch(&bytes);
        for item in BatchIter::new(&bytes) { let _ = item; }
    }

    #[test]
    fn arbitrary_records_under_a_valid_crc_never_panic(body in prop::collection::vec(any::<u8>(), 0..200), count in 1u32..5) {
        // A producer that computes a valid CRC over garbage records reaches the record parser.
        let mut bytes = build(&[(None, b"x".to_vec(), 1)]).to_vec();
        bytes.truncate(BATCH_HEADER_BYTES);
        bytes.extend_from_slice(&body);
        let length = (bytes.len() - LENGTH_EXCLUDES) as u32;
        put(&mut bytes, at::LENGTH, &length.to_be_bytes());
        put(&mut bytes, at::LAST_OFFSET_DELTA, &(count - 1).to_be_bytes());
        put(&mut bytes, at::RECORD_COUNT, &count.to_be_bytes());
        write_crc(&mut bytes);
        let _ = validate_batch(&bytes);
    }

    #[test]
    fn truncation_is_always_detected(records in arb_records(), cut in any::<prop::sample::Index>()) {
        let bytes = build(&records);
        let cut = cut.index(bytes.len());
        prop_assert!(validate_batch(&bytes[..cut]).is_err());
    }

    #[test]
    fn corrupting_a_byte_is_detected(records in arb_records(), pos in any::<prop::sample::Index>(), x in 1u8..=255) {
        let mut bytes = build(&records).to_vec();
        let pos = at::MAGIC + pos.index(bytes.len() - at::MAGIC);
        bytes[pos] ^= x;
        prop_assert!(validate_batch(&bytes).is_err());
    }

    #[test]
    fn forged_crc_over_malformed_records_is_rejected(records in arb_records(), extra in prop::collection::vec(any::<u8>(), 1..8)) {
        // A producer that computes a valid CRC over malformed records must still be refused.
        let mut bytes = build(&records).to_vec();
        bytes.extend_from_slice(&extra);
        let length = (bytes.len() - LENGTH_EXCLUDES) as u32;
        put(&mut bytes, at::LENGTH, &length.to_be_bytes());
        write_crc(&mut bytes);
        prop_assert!(check_batch(&bytes).is_ok());
        prop_assert!(validate_batch(&bytes).is_err());
    }
}
