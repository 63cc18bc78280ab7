//! Kafka's Metadata: the brokers (this node, at its Kafka address) and the topics asked for,
//! from the native metadata of every topic.

use std::rc::Rc;

use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{ApiKey, BrokerId, MetadataRequest, MetadataResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use super::apis::{encode_response, kafka_code, kafka_error};
use super::{bridge, Answer};
use crate::protocol::messages::{self as native, ApiKind};
use crate::shard::Shard;

pub async fn serve(shard: &Rc<Shard>, request: MetadataRequest, version: i16, correlation_id: i32) -> Answer {
    let wanted: Option<Vec<String>> = request
        .topics
        .map(|topics| topics.into_iter().filter_map(|t| t.name.map(|n| n.0.to_string())).collect::<Vec<_>>())
        // In v0 an empty list asks for every topic (later versions say so with null).
        .filter(|topics| version > 0 || !topics.is_empty());
    let archive = crate::protocol::encode(&native::MetadataRequest { topics: Vec::new() });
    let pending = bridge::send(shard, ApiKind::Metadata, &archive, &[]).await;
    let me = shard.kafka_addr;
    Box::pin(async move {
        let out = pending.await;
        let known = match bridge::error_of(&out) {
            Some((code, message)) => {
                log::warn!("kafka Metadata: {message}");
                Err(kafka_code(code))
            }
            None => crate::protocol::decode::<native::MetadataResponse>(&out.archive)
                .map_err(|_| kafka_error::UNKNOWN_SERVER_ERROR),
        };
        let body = answer(me, known, wanted);
        match encode_response(ApiKey::Metadata, version, correlation_id, &body) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                log::error!("kafka: {e}");
                None
            }
        }
    })
}

fn answer(
    me: Option<std::net::SocketAddr>,
    known: Result<native::MetadataResponse, i16>,
    wanted: Option<Vec<String>>,
) -> MetadataResponse {
    let mut body = MetadataResponse::default();
    let node_id = known.as_ref().map_or(0, |k| k.node_id as i32);
    if let Some(addr) = me {
        let mut broker = MetadataResponseBroker::default();
        broker.node_id = BrokerId(node_id);
        broker.host = StrBytes::from_string(addr.ip().to_string());
        broker.port = i32::from(addr.port());
        body.brokers.push(broker);
    }
    body.cluster_id = Some(StrBytes::from_static_str("quorra"));
    body.controller_id = BrokerId(node_id);
    let topics = known.as_ref().map(|k| k.topics.as_slice()).unwrap_or_default();
    let names: Vec<String> = match &wanted {
        Some(w) => w.clone(),
        None => topics.iter().map(|t| t.name.clone()).collect(),
    };
    for name in names {
        let mut topic = MetadataResponseTopic::default();
        topic.name = Some(TopicName(StrBytes::from_string(name.clone())));
        match (&known, topics.iter().find(|t| t.name == name)) {
            (Err(code), _) => topic.error_code = *code,
            (Ok(_), None) => topic.error_code = kafka_error::UNKNOWN_TOPIC_OR_PARTITION,
            (Ok(_), Some(t)) => {
                topic.partitions = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let mut part = MetadataResponsePartition::default();
                        part.partition_index = p.partition as i32;
                        part.leader_id = BrokerId(p.leader as i32);
                        part.leader_epoch = -1;
                        part.replica_nodes = p.replicas.iter().map(|&r| BrokerId(r as i32)).collect();
                        part.isr_nodes = part.replica_nodes.clone();
                        part
                    })
                    .collect();
            }
        }
        body.topics.push(topic);
    }
    body
}
