//! The Kafka listener of a real single-node broker, spoken to with Kafka's own codecs (the
//! `kafka-protocol` crate, generated from Kafka's schemas) and with kcat (Debian's, on
//! librdkafka): versions, metadata, produce, fetch and list offsets; one batch format for
//! both protocols; bad input closes only its own connection.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::{run, scratch_dir, Broker};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use quorra::protocol::batch::{BatchIter, RecordIter};

/// A broker serving Kafka clients on a port of its own; its Kafka address.
fn start(dir: &std::path::Path) -> (Broker, SocketAddr) {
    let broker = Broker::start(dir, &["--kafka-listen", "127.0.0.1:0"]);
    let log = broker.log();
    let addr = log
        .split("serving Kafka clients on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no Kafka listener in the log:\n{log}"));
    (broker, addr.parse().unwrap())
}

/// One Kafka request and its answer, over a blocking socket.
fn call<Req: Encodable, Resp: Decodable>(
    stream: &mut TcpStream,
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    request: &Req,
) -> Resp {
    send(stream, key, version, correlation_id, request);
    let mut body = read_answer(stream).expect("an answer");
    let header = ResponseHeader::decode(&mut body, key.response_header_version(version)).unwrap();
    assert_eq!(header.correlation_id, correlation_id);
    Resp::decode(&mut body, version).unwrap()
}

fn send<Req: Encodable>(stream: &mut TcpStream, key: ApiKey, version: i16, correlation_id: i32, request: &Req) {
    let mut header = RequestHeader::default();
    header.request_api_key = key as i16;
    header.request_api_version = version;
    header.correlation_id = correlation_id;
    header.client_id = Some(StrBytes::from_static_str("quorra-test"));
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    header.encode(&mut buf, key.request_header_version(version)).unwrap();
    request.encode(&mut buf, version).unwrap();
    let size = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    stream.write_all(&buf).unwrap();
}

/// The next answer's bytes after its length, or None when the broker closed the connection.
fn read_answer(stream: &mut TcpStream) -> Option<Bytes> {
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).ok()?;
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut body).ok()?;
    Some(Bytes::from(body))
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

fn create_topic(broker: &Broker, name: &'static str, partitions: u32) {
    let bootstrap = broker.bootstrap();
    run(move || async move { common::client(&bootstrap).await.create_topic(name, partitions, 1).await.unwrap() });
}

fn kafka_batch(first_offset: i64, values: &[&[u8]]) -> Bytes {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: first_offset + i as i64,
            sequence: -1,
            timestamp: 1_700_000_000_000 + i as i64,
            key: (i % 2 == 0).then(|| Bytes::from(format!("key-{i}"))),
            value: Some(Bytes::copy_from_slice(v)),
            headers: IndexMap::new(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(&mut buf, &records, &RecordEncodeOptions { version: 2, compression: Compression::None })
        .unwrap();
    buf.freeze()
}

fn produce(stream: &mut TcpStream, correlation_id: i32, topic: &str, partition: i32, batch: Bytes) -> (i16, i64) {
    let mut data = PartitionProduceData::default();
    data.index = partition;
    data.records = Some(batch);
    let mut t = TopicProduceData::default();
    t.name = TopicName(StrBytes::from_string(topic.into()));
    t.partition_data = vec![data];
    let mut request = ProduceRequest::default();
    request.acks = -1;
    request.timeout_ms = 10_000;
    request.topic_data = vec![t];
    let answer: ProduceResponse = call(stream, ApiKey::Produce, 8, correlation_id, &request);
    let p = &answer.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

fn fetch(stream: &mut TcpStream, correlation_id: i32, topic: &str, partition: i32, offset: i64) -> (i16, i64, Bytes) {
    let mut p = FetchPartition::default();
    p.partition = partition;
    p.fetch_offset = offset;
    p.partition_max_bytes = 1 << 20;
    let mut t = FetchTopic::default();
    t.topic = TopicName(StrBytes::from_string(topic.into()));
    t.partitions = vec![p];
    let mut request = FetchRequest::default();
    request.replica_id = BrokerId(-1);
    request.max_wait_ms = 100;
    request.min_bytes = 1;
    request.max_bytes = 4 << 20;
    request.topics = vec![t];
    let answer: FetchResponse = call(stream, ApiKey::Fetch, 11, correlation_id, &request);
    let p = &answer.responses[0].partitions[0];
    (p.error_code, p.high_watermark, p.records.clone().unwrap_or_default())
}

fn list_offset(stream: &mut TcpStream, correlation_id: i32, topic: &str, timestamp: i64) -> i64 {
    let mut p = ListOffsetsPartition::default();
    p.partition_index = 0;
    p.timestamp = timestamp;
    let mut t = ListOffsetsTopic::default();
    t.name = TopicName(StrBytes::from_string(topic.into()));
    t.partitions = vec![p];
    let mut request = ListOffsetsRequest::default();
    request.replica_id = BrokerId(-1);
    request.topics = vec![t];
    let answer: ListOffsetsResponse = call(stream, ApiKey::ListOffsets, 5, correlation_id, &request);
    let p = &answer.topics[0].partitions[0];
    assert_eq!(p.error_code, 0);
    p.offset
}

#[test]
fn kafka_codecs_negotiate_versions_list_topics_produce_fetch_and_list_offsets() {
    let dir = scratch_dir("kafka-codecs");
    let (broker, kafka) = start(dir.path());
    create_topic(&broker, "orders", 2);
    let mut s = connect(kafka);

    // Versions: v3 answered in v3; a version beyond ours in v0, with the error and the list.
    let versions: ApiVersionsResponse = call(&mut s, ApiKey::ApiVersions, 3, 1, &ApiVersionsRequest::default());
    assert_eq!(versions.error_code, 0);
    let produce_range = versions.api_keys.iter().find(|k| k.api_key == ApiKey::Produce as i16).unwrap();
    assert_eq!((produce_range.min_version, produce_range.max_version), (3, 8));
    // (Kafka's codec cannot encode v99: a v3 request, its version field then set to 99.)
    let mut newer = RequestHeader::default();
    newer.request_api_key = ApiKey::ApiVersions as i16;
    newer.request_api_version = 3;
    newer.correlation_id = 2;
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    newer.encode(&mut buf, 2).unwrap();
    ApiVersionsRequest::default().encode(&mut buf, 3).unwrap();
    let size = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    buf[6..8].copy_from_slice(&99i16.to_be_bytes());
    s.write_all(&buf).unwrap();
    let mut body = read_answer(&mut s).unwrap();
    assert_eq!(body.get_i32(), 2);
    let refused = ApiVersionsResponse::decode(&mut body, 0).unwrap();
    assert_eq!(refused.error_code, 35, "UNSUPPORTED_VERSION");
    assert!(!refused.api_keys.is_empty());

    // Metadata: this broker at its Kafka address; the topic's partitions; an unknown topic.
    let mut all = MetadataRequest::default();
    all.topics = None;
    let md: MetadataResponse = call(&mut s, ApiKey::Metadata, 8, 3, &all);
    assert_eq!(md.brokers.len(), 1);
    assert_eq!((md.brokers[0].host.as_str(), md.brokers[0].port), ("127.0.0.1", i32::from(kafka.port())));
    let orders = md.topics.iter().find(|t| t.name.as_ref().unwrap().0.as_str() == "orders").unwrap();
    assert_eq!((orders.error_code, orders.partitions.len()), (0, 2));
    assert_eq!(orders.partitions[0].leader_id, md.brokers[0].node_id);
    let mut missing = MetadataRequest::default();
    let mut topic = kafka_protocol::messages::metadata_request::MetadataRequestTopic::default();
    topic.name = Some(TopicName(StrBytes::from_static_str("nope")));
    missing.topics = Some(vec![topic]);
    let md: MetadataResponse = call(&mut s, ApiKey::Metadata, 8, 4, &missing);
    assert_eq!(md.topics[0].error_code, 3, "UNKNOWN_TOPIC_OR_PARTITION");

    // Produce two batches; fetch them back byte for byte and as records.
    let first = kafka_batch(0, &[b"a", b"bb", b"ccc"]);
    let second = kafka_batch(0, &[b"dddd", b"eeeee"]);
    assert_eq!(produce(&mut s, 5, "orders", 0, first.clone()), (0, 0));
    assert_eq!(produce(&mut s, 6, "orders", 0, second.clone()), (0, 3));
    assert_eq!(produce(&mut s, 7, "nope", 0, first.clone()).0, 3, "UNKNOWN_TOPIC_OR_PARTITION");
    let (error, high_watermark, records) = fetch(&mut s, 8, "orders", 0, 0);
    assert_eq!((error, high_watermark), (0, 5));
    // Stored as sent, batch by batch (Kafka's encoder may split records into several): only
    // the leader's fields (base offset, leader epoch) differ.
    let stored: Vec<_> = BatchIter::new(&records).map(|b| b.unwrap().1.to_vec()).collect();
    let sent: Vec<_> = BatchIter::new(&first).chain(BatchIter::new(&second)).map(|b| b.unwrap().1.to_vec()).collect();
    assert_eq!(stored.len(), sent.len());
    for (stored, sent) in stored.iter().zip(&sent) {
        assert_eq!(stored[16..], sent[16..]);
    }
    let mut records_buf = records.clone();
    let decoded = RecordBatchDecoder::decode_all(&mut records_buf).unwrap();
    let values: Vec<_> = decoded.iter().flat_map(|set| &set.records).map(|r| r.value.clone().unwrap()).collect();
    assert_eq!(values, [&b"a"[..], b"bb", b"ccc", b"dddd", b"eeeee"]);
    let offsets: Vec<_> = decoded.iter().flat_map(|set| &set.records).map(|r| r.offset).collect();
    assert_eq!(offsets, [0, 1, 2, 3, 4]);

    // A fetch past the end waits out its max_wait and answers empty.
    let (error, _, nothing) = fetch(&mut s, 9, "orders", 0, 5);
    assert_eq!((error, nothing.len()), (0, 0));
    assert_eq!(list_offset(&mut s, 10, "orders", -1), 5, "latest");
    assert_eq!(list_offset(&mut s, 11, "orders", -2), 0, "earliest");

    // The native client reads what the Kafka client wrote.
    let bootstrap = broker.bootstrap();
    let native = run(move || async move {
        let c = common::client(&bootstrap).await;
        let fetched = c.fetch("orders", 0, 0, 1 << 20, Duration::ZERO).await.unwrap();
        let mut values = Vec::new();
        for item in BatchIter::new(&fetched.batches) {
            let (header, bytes) = item.unwrap();
            for r in RecordIter::new(bytes, &header) {
                values.push(r.unwrap().value.to_vec());
            }
        }
        values
    });
    assert_eq!(native, [&b"a"[..], b"bb", b"ccc", b"dddd", b"eeeee"]);
}

#[test]
fn bad_kafka_requests_close_only_their_own_connection() {
    let dir = scratch_dir("kafka-bad-input");
    let (_broker, kafka) = start(dir.path());
    let probes: Vec<(&str, Vec<u8>)> = vec![
        // Metadata v0 claiming 2^31 - 1 topics in its last 4 bytes: the unpatched codec asks
        // for an allocation of about 100 GiB up front, and its failure aborts the broker.
        ("a huge array count", vec![0, 0, 0, 14, 0, 3, 0, 0, 0, 0, 0, 7, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff]),
        ("a negative length", (-5i32).to_be_bytes().to_vec()),
        ("a length beyond the limit", (1i32 << 30).to_be_bytes().to_vec()),
        ("an unknown API key", [&16i32.to_be_bytes()[..], &[0x7f, 0x7f, 0, 0], &[0; 12]].concat()),
        ("a version not served", [&12i32.to_be_bytes()[..], &[0, 0, 0, 99], &[0, 0, 0, 1, 0xff, 0xff, 0, 0]].concat()),
        ("a truncated request", [&100i32.to_be_bytes()[..], &[0, 18, 0, 0]].concat()),
    ];
    for (what, bytes) in probes {
        let mut s = connect(kafka);
        s.write_all(&bytes).unwrap();
        if what == "a truncated request" {
            s.shutdown(std::net::Shutdown::Write).unwrap();
        }
        assert!(read_answer(&mut s).is_none(), "{what}: the connection closes without an answer");
        let mut fresh = connect(kafka);
        let ok: ApiVersionsResponse = call(&mut fresh, ApiKey::ApiVersions, 3, 1, &ApiVersionsRequest::default());
        assert_eq!(ok.error_code, 0, "after {what}, other clients are served");
    }
}

/// Debian's kcat (librdkafka 2.0): `-L` lists the broker and topic; 100,000 messages go in
/// with `-P` and come back with `-C`, byte for byte and in order.
#[test]
fn kcat_lists_the_broker_and_round_trips_a_hundred_thousand_messages() {
    let dir = scratch_dir("kafka-kcat");
    let (broker, kafka) = start(dir.path());
    create_topic(&broker, "kcat", 1);
    let kcat = |args: &[&str], input: Option<&[u8]>| {
        let mut child = Command::new("kcat")
            .args(["-b", &kafka.to_string()])
            .args(args)
            .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kcat is installed (.ci/run installs Debian's kcat)");
        if let Some(input) = input {
            child.stdin.take().unwrap().write_all(input).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "kcat {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    let listing = String::from_utf8(kcat(&["-L", "-t", "kcat"], None)).unwrap();
    assert!(listing.contains(&format!("at 127.0.0.1:{}", kafka.port())), "{listing}");
    assert!(listing.contains("topic \"kcat\" with 1 partitions"), "{listing}");

    let messages: Vec<String> = (0..100_000).map(|i| format!("message {i:06} {}", "x".repeat(i % 97))).collect();
    let input = messages.join("\n") + "\n";
    kcat(&["-P", "-t", "kcat", "-p", "0", "-X", "acks=all"], Some(input.as_bytes()));
    let output = kcat(&["-C", "-t", "kcat", "-p", "0", "-o", "beginning", "-e", "-q"], None);
    let got: Vec<&str> = std::str::from_utf8(&output).unwrap().lines().collect();
    assert_eq!(got.len(), messages.len());
    assert!(got.iter().zip(&messages).all(|(a, b)| a == b), "the messages come back in order, byte for byte");
}

fn idempotent_batch(producer_id: i64, sequence: i32, values: &[&[u8]]) -> Bytes {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id,
            producer_epoch: 0,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: sequence + i as i32,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::copy_from_slice(v)),
            headers: IndexMap::new(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(&mut buf, &records, &RecordEncodeOptions { version: 2, compression: Compression::None })
        .unwrap();
    buf.freeze()
}

/// Topics made and removed through Kafka's admin APIs; an idempotent producer's id, and the
/// sequence rules its batches meet (a retry stored once, a gap refused).
#[test]
fn kafka_admin_creates_and_deletes_topics_and_idempotent_producers_get_ids() {
    use kafka_protocol::messages::create_topics_request::CreatableTopic;
    let dir = scratch_dir("kafka-admin");
    let (_broker, kafka) = start(dir.path());
    let mut s = connect(kafka);

    let mut topic = CreatableTopic::default();
    topic.name = TopicName(StrBytes::from_static_str("made-by-kafka"));
    topic.num_partitions = 3;
    topic.replication_factor = -1;
    let mut create = CreateTopicsRequest::default();
    create.topics = vec![topic.clone()];
    create.timeout_ms = 10_000;
    let created: CreateTopicsResponse = call(&mut s, ApiKey::CreateTopics, 4, 1, &create);
    assert_eq!(created.topics[0].error_code, 0);
    let again: CreateTopicsResponse = call(&mut s, ApiKey::CreateTopics, 4, 2, &create);
    assert_eq!(again.topics[0].error_code, 36, "TOPIC_ALREADY_EXISTS");
    let mut bad = topic.clone();
    bad.name = TopicName(StrBytes::from_static_str("bad/name"));
    create.topics = vec![bad];
    let refused: CreateTopicsResponse = call(&mut s, ApiKey::CreateTopics, 4, 3, &create);
    assert_eq!(refused.topics[0].error_code, 17, "INVALID_TOPIC_EXCEPTION");
    let mut all = MetadataRequest::default();
    all.topics = None;
    let md: MetadataResponse = call(&mut s, ApiKey::Metadata, 8, 4, &all);
    let made = md.topics.iter().find(|t| t.name.as_ref().unwrap().0.as_str() == "made-by-kafka").unwrap();
    assert_eq!(made.partitions.len(), 3);

    // The idempotent producer: an id, epoch 0; a retried batch is stored once; a gap refused.
    let mut init = InitProducerIdRequest::default();
    init.transactional_id = None;
    init.transaction_timeout_ms = -1;
    let id: InitProducerIdResponse = call(&mut s, ApiKey::InitProducerId, 1, 5, &init);
    assert_eq!(id.error_code, 0);
    assert!(id.producer_id.0 > 0 && id.producer_epoch == 0, "{id:?}");
    let other: InitProducerIdResponse = call(&mut s, ApiKey::InitProducerId, 1, 6, &init);
    assert_ne!(other.producer_id, id.producer_id, "ids are unique");
    let first = idempotent_batch(id.producer_id.0, 0, &[b"a", b"b"]);
    assert_eq!(produce(&mut s, 7, "made-by-kafka", 0, first.clone()), (0, 0));
    assert_eq!(produce(&mut s, 8, "made-by-kafka", 0, first), (0, 0), "the retry answers the first offsets");
    let gap = idempotent_batch(id.producer_id.0, 5, &[b"c"]);
    assert_eq!(produce(&mut s, 9, "made-by-kafka", 0, gap).0, 45, "OUT_OF_ORDER_SEQUENCE_NUMBER");
    let next = idempotent_batch(id.producer_id.0, 2, &[b"c"]);
    assert_eq!(produce(&mut s, 10, "made-by-kafka", 0, next), (0, 2));
    let (_, high_watermark, _) = fetch(&mut s, 11, "made-by-kafka", 0, 0);
    assert_eq!(high_watermark, 3, "three records, none twice");

    let mut delete = DeleteTopicsRequest::default();
    delete.topic_names = vec![TopicName(StrBytes::from_static_str("made-by-kafka"))];
    delete.timeout_ms = 10_000;
    let deleted: DeleteTopicsResponse = call(&mut s, ApiKey::DeleteTopics, 3, 12, &delete);
    assert_eq!(deleted.responses[0].error_code, 0);
    let gone: DeleteTopicsResponse = call(&mut s, ApiKey::DeleteTopics, 3, 13, &delete);
    assert_eq!(gone.responses[0].error_code, 3, "UNKNOWN_TOPIC_OR_PARTITION");
}

/// confluent-kafka from PyPI (librdkafka 2.x, newer than kcat's): an idempotent producer
/// (acks=all, 5 in flight per partition) writes 20,000 messages over 3 partitions; a
/// consumer reads them back: nothing lost, duplicated or reordered, offsets dense
/// (`tests/kafka_clients/confluent_idempotent.py` checks and prints the counts).
#[test]
fn confluent_kafka_idempotent_producer_and_consumer_lose_nothing() {
    let dir = scratch_dir("kafka-confluent");
    let (broker, kafka) = start(dir.path());
    create_topic(&broker, "confluent", 3);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kafka_clients/confluent_idempotent.py");
    let out = Command::new("python3")
        .args([script, &kafka.to_string(), "confluent", "3", "20000"])
        .output()
        .expect("python3 runs (.ci/run installs it and confluent-kafka)");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}\n{}\nbroker log:\n{}", String::from_utf8_lossy(&out.stderr), broker.log());
    assert!(report.contains("read 20000, lost 0, duplicated 0, reordered 0, offsets dense True"), "{report}");
}
