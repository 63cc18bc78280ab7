//! The partition controllers: on the metadata leader, one [`Controller`] per partition,
//! fed by the replicas' reports and ticked, whose decisions are recorded in the metadata
//! before they are sent to the replicas.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::carry_out::{ControllerEnv, Record, Refused};
use super::*;

/// Runs the partition controllers while this node is the metadata leader.
pub(super) async fn controller_loop(ctx: Arc<Ctx>) {
    let Some(mut inbox) = ctx.controller_inbox_rx.lock().expect("inbox lock").take() else { return };
    let started = Instant::now();
    let now_ms = move || started.elapsed().as_millis() as u64;
    let config = ControllerConfig { election_timeout_ms: ctx.settings.election_timeout_ms, retry_ms: 100 };
    let mut controllers: HashMap<(String, u32), Controller> = HashMap::new();
    // The incarnation (topic id) each topic's controllers were made for.
    let mut incarnations: HashMap<String, u64> = HashMap::new();
    let mut leading = false;
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            got = inbox.recv() => {
                let Some(batch) = got else { return };
                if !leading {
                    continue;
                }
                for e in batch {
                    let key = (e.topic.clone(), e.partition);
                    if let ControlMessage::Heartbeat { from, .. } = &e.msg {
                        ctx.saw(*from);
                        if controllers.get(&key).is_some_and(|c| c.leader() == Some(*from)) {
                            ctx.leader_reports.lock().expect("reports lock").insert(key.clone(), e.msg.clone());
                        }
                    }
                    // A replica of another incarnation of the topic (deleted, created again).
                    let current_id = ctx.meta.borrow().topics.get(&e.topic).map_or(0, |t| t.id);
                    if !crate::shard::cluster::same_incarnation(current_id, e.topic_id) {
                        continue;
                    }
                    let Some(c) = controllers.get_mut(&key) else { continue };
                    let mut out = Vec::new();
                    c.on_message(e.msg, &mut out);
                    carry_out(&ctx, &key, &mut controllers, out, &config, now_ms()).await;
                }
            }
            _ = tick.tick() => {
                let now_leading = ctx.is_metadata_leader();
                if now_leading != leading {
                    controllers.clear();
                    incarnations.clear();
                    leading = now_leading;
                    if leading {
                        log::info!("node {} is the metadata leader; partition controllers start", ctx.me);
                    }
                }
                if !leading {
                    continue;
                }
                sync_controllers(&ctx, &mut controllers, &mut incarnations, &config, now_ms());
                let draining: Vec<NodeId> = ctx.meta.borrow().draining.iter().copied().collect();
                for c in controllers.values_mut() {
                    c.set_draining(&draining);
                }
                let keys: Vec<_> = controllers.keys().cloned().collect();
                for key in keys {
                    let mut out = Vec::new();
                    if let Some(c) = controllers.get_mut(&key) {
                        c.tick(now_ms(), &mut out);
                    }
                    carry_out(&ctx, &key, &mut controllers, out, &config, now_ms()).await;
                }
            }
        }
    }
}

/// One controller per partition in the metadata; resumed from the epoch and leader there.
/// A topic deleted and created again between two syncs gets new controllers: the old
/// incarnation's would go on appointing its leader without any record for the new one.
fn sync_controllers(
    ctx: &Ctx,
    controllers: &mut HashMap<(String, u32), Controller>,
    incarnations: &mut HashMap<String, u64>,
    config: &ControllerConfig,
    now_ms: u64,
) {
    let meta = ctx.meta.borrow().clone();
    controllers.retain(|(t, p), _| {
        meta.partition(t, *p).is_some() && meta.topics.get(t).map(|t| t.id) == incarnations.get(t).copied()
    });
    incarnations.clear();
    incarnations.extend(meta.topics.iter().map(|(name, t)| (name.clone(), t.id)));
    for (topic, t) in meta.topics.iter() {
        for (i, p) in t.partitions.iter().enumerate() {
            let key = (topic.clone(), i as u32);
            controllers.entry(key).or_insert_with(|| new_controller(ctx, config, p, now_ms));
        }
    }
}

fn new_controller(
    ctx: &Ctx,
    config: &ControllerConfig,
    p: &crate::cluster::meta::PartitionMeta,
    now_ms: u64,
) -> Controller {
    let preferred = match ctx.settings.mode {
        ClusterMode::MasterSlave if ctx.settings.prefer_master => Some(ctx.settings.master_node()),
        ClusterMode::MasterSlave => None,
        ClusterMode::Hybrid | ClusterMode::MultiMaster | ClusterMode::Forwarding | ClusterMode::SharedStorage => {
            p.replicas.first().copied()
        }
    };
    // A leader this node has not heard from for a while (typically the old metadata leader,
    // dead) needs not be given a fresh election timeout.
    let seen_ms = p
        .leader
        .and_then(|l| ctx.last_seen.lock().expect("last_seen lock").get(&l).map(|t| t.elapsed().as_millis() as u64))
        .map_or(now_ms, |ago| now_ms.saturating_sub(ago));
    Controller::resume(config.clone(), p.replicas.clone(), p.epoch, p.leader, seen_ms, now_ms).with_preferred(preferred)
}

/// Carries out a controller's decisions (`carry_out::carry_out`, the driver the simulator
/// runs too); a refused write resets the controller from the metadata.
async fn carry_out(
    ctx: &Arc<Ctx>,
    key: &(String, u32),
    controllers: &mut HashMap<(String, u32), Controller>,
    out: Vec<ControllerAction>,
    config: &ControllerConfig,
    now_ms: u64,
) {
    if out.is_empty() {
        return;
    }
    let (topic, partition) = (key.0.clone(), key.1);
    let topic_id = ctx.meta.borrow().topics.get(&topic).map_or(0, |t| t.id);
    let env = PartitionEnv { ctx, topic: &topic, partition, topic_id };
    if let Err(e) = super::carry_out::carry_out(&env, out).await {
        log::warn!("controller of {topic}/{partition}: {e}");
        let fresh = ctx.meta.borrow().partition(&topic, partition).cloned();
        match fresh {
            Some(p) => {
                controllers.insert(key.clone(), new_controller(ctx, config, &p, now_ms));
            }
            None => {
                controllers.remove(key);
            }
        }
    }
}

/// A partition's controller as production runs it: records go to Raft, messages over the
/// control links.
struct PartitionEnv<'a> {
    ctx: &'a Arc<Ctx>,
    topic: &'a str,
    partition: u32,
    topic_id: u64,
}

impl ControllerEnv for PartitionEnv<'_> {
    async fn record(&self, record: Record) -> Result<(), Refused> {
        let (topic, partition) = (self.topic.to_string(), self.partition);
        let cmd = match record {
            Record::Epoch(epoch) => MetaCommand::OpenEpoch { topic, partition, epoch },
            Record::Leader { epoch, leader } => MetaCommand::SetLeader { topic, partition, epoch, leader },
        };
        self.ctx.write(cmd.clone()).await.map_err(|e| Refused { record: format!("{cmd:?}"), reason: e.to_string() })?;
        if let Record::Leader { epoch, leader } = record {
            log::info!("{}/{}: node {leader} leads epoch {epoch}", self.topic, self.partition);
        }
        Ok(())
    }

    fn send(&self, node: NodeId, messages: Vec<ControlMessage>) {
        let envelopes = messages
            .into_iter()
            .map(|msg| ControlEnvelope {
                topic: self.topic.to_string(),
                topic_id: self.topic_id,
                partition: self.partition,
                msg,
            })
            .collect();
        self.ctx.send_to(node, envelopes);
    }
}
