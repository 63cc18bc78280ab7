//! The simulated clients: anonymous producers (`acks=quorum`, `all` or `leader`), two idempotent
//! producers that number their batches and resend everything unacknowledged, oldest first,
//! when the oldest goes unanswered, and readers that fetch from any replica. A request runs
//! on the node it reached, through the partition's own `append` and `wait_committed` (the
//! produce handler's two calls), so it dies with the node.

use super::*;
use crate::broker::partition::AckLevel;
use crate::protocol::batch::BatchBuilder;

/// Batches a simulated producer keeps unacknowledged at most.
const PRODUCER_WINDOW: usize = 8;
/// The oldest batch unanswered for this long: resend everything unacknowledged.
const PRODUCER_RETRY_MS: u64 = 60;
/// How long a produce waits for its commit (the client's request timeout).
const COMMIT_TIMEOUT: Duration = Duration::from_millis(500);

pub(super) async fn run_clients(w: WorldRef) {
    loop {
        crate::rt::sleep(TICK).await;
        let active = w.borrow().active;
        if active {
            for _ in 0..2 {
                anonymous_append(&w);
            }
            read_somewhere(&w);
        }
        producers_step(&w, active);
    }
}

/// A replica that believes it leads, chosen at random (a client may reach a stale one).
fn some_leader(w: &WorldRef) -> Option<(NodeId, Rc<Part>)> {
    let mut world = w.borrow_mut();
    let leaders: Vec<(NodeId, Rc<Part>)> = world
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, x)| x.up)
        .filter_map(|(i, x)| x.part.clone().map(|p| (i as NodeId, p)))
        .filter(|(_, p)| p.leadership().0)
        .collect();
    if leaders.is_empty() {
        return None;
    }
    let i = world.rng.gen_range(0..leaders.len());
    leaders.into_iter().nth(i)
}

fn batch_of(ids: &[u64], producer: Option<(u64, u32)>) -> Vec<u8> {
    let mut b = BatchBuilder::with_capacity(64);
    for id in ids {
        b.push(None, &id.to_le_bytes(), 1);
    }
    let (producer_id, sequence) = producer.unwrap_or((0, 0));
    b.finish(producer_id, 0, sequence).to_vec()
}

fn anonymous_append(w: &WorldRef) {
    let Some((n, p)) = some_leader(w) else { return };
    let (ids, level, rt) = {
        let mut world = w.borrow_mut();
        let count = world.rng.gen_range(1..4u64);
        let ids: Vec<u64> = (0..count).map(|i| world.next_id + 1 + i).collect();
        world.next_id += count;
        let level = match world.rng.gen_range(0..10) {
            0 => AckLevel::Local,
            1 | 2 => AckLevel::All,
            _ => AckLevel::Quorum,
        };
        (ids, level, world.rt.clone())
    };
    let epoch = p.leadership().2;
    let w = w.clone();
    rt.spawn_as(n, async move {
        let Ok(appended) = p.append(batch_of(&ids, None), Bytes::from) else { return };
        if p.wait_committed(appended.last_offset, level, COMMIT_TIMEOUT).await.is_ok() {
            let mut world = w.borrow_mut();
            world.trace(|| {
                format!("n{n} acked {ids:?} at {appended:?} {level:?}, hw {}, {:?}", p.high_watermark(), p.leadership())
            });
            let records = (appended.first_offset..=appended.last_offset).zip(ids.iter().copied());
            match level {
                // Durable on the leader alone: kept as long as that leader leads (README).
                AckLevel::Local => {
                    world.trace(|| format!("n{n} acked at leader: {:?} (epoch {epoch})", appended));
                    world.acked_by_leader.extend(records.clone().map(|(o, id)| (epoch, o, id)));
                    world.nodes[n as usize].durable_acks.extend(records.map(|(o, id)| (epoch, o, id)));
                }
                AckLevel::Quorum | AckLevel::All => world.acked.extend(records),
            }
        }
    });
}

/// Producer `k` sends its batch `sequence` (record `id`) to a leader, whose partition
/// applies the sequence rules.
fn producer_send(w: &WorldRef, k: usize, sequence: u32, id: u64) {
    let Some((n, p)) = some_leader(w) else { return };
    let (producer, rt) = {
        let world = w.borrow();
        (world.producers[k].id, world.rt.clone())
    };
    let w = w.clone();
    rt.spawn_as(n, async move {
        // Refused (a gap, from a leader that lacks an earlier batch; not the leader): the
        // producer resends later.
        let Ok(appended) = p.append(batch_of(&[id], Some((producer, sequence))), Bytes::from) else { return };
        if p.wait_committed(appended.last_offset, AckLevel::Quorum, COMMIT_TIMEOUT).await.is_ok() {
            w.borrow().trace(|| {
                format!(
                    "n{n} acked producer {producer} seq {sequence} id {id} at {appended:?}, hw {}, {:?}",
                    p.high_watermark(),
                    p.leadership()
                )
            });
            producer_acked(&w, k, sequence, appended.first_offset, id);
        }
    });
}

fn producer_acked(w: &WorldRef, k: usize, sequence: u32, offset: u64, id: u64) {
    let mut world = w.borrow_mut();
    world.acked.push((offset, id));
    let p = &mut world.producers[k];
    if let Some(u) = p.unacked.iter_mut().find(|u| u.0 == sequence) {
        u.3 = true;
    }
    while p.unacked.front().is_some_and(|u| u.3) {
        p.acked_through = p.unacked.pop_front().map(|u| u.0);
    }
}

/// Each producer: resend everything unacknowledged, oldest first, once the oldest waited
/// too long; and (while faults run) maybe send a new batch.
fn producers_step(w: &WorldRef, new_batches: bool) {
    let count = w.borrow().producers.len();
    for k in 0..count {
        let mut sends = Vec::new();
        {
            let mut world = w.borrow_mut();
            let now = world.rt.now_ms();
            let p = &mut world.producers[k];
            if p.unacked.front().is_some_and(|u| now - u.2 >= PRODUCER_RETRY_MS) {
                sends.extend(p.unacked.iter().filter(|u| !u.3).map(|u| (u.0, u.1)));
                for u in p.unacked.iter_mut() {
                    u.2 = now;
                }
            }
            let room = world.producers[k].unacked.len() < PRODUCER_WINDOW;
            if new_batches && room && world.rng.gen_bool(0.5) {
                world.next_id += 1;
                let id = world.next_id;
                let p = &mut world.producers[k];
                let sequence = p.next_sequence;
                p.next_sequence += 1;
                p.unacked.push_back((sequence, id, now, false));
                sends.push((sequence, id));
            }
        }
        for (sequence, id) in sends {
            producer_send(w, k, sequence, id);
        }
    }
}

/// A reader fetches from a random replica at a random offset below what it has seen
/// committed there; what it is served is checked against the final committed log.
fn read_somewhere(w: &WorldRef) {
    let (n, p, offset, rt) = {
        let mut world = w.borrow_mut();
        let count = world.nodes.len();
        let n = world.rng.gen_range(0..count);
        let node = &world.nodes[n];
        let Some(p) = node.part.clone().filter(|_| node.up) else { return };
        let hw = p.high_watermark();
        let start = p.log_start_offset();
        let offset = if hw > start { world.rng.gen_range(start..=hw) } else { start };
        (n as NodeId, p, offset, world.rt.clone())
    };
    let w = w.clone();
    rt.spawn_as(n, async move {
        let Ok(chunks) = p.fetch(offset, 4096, Duration::ZERO).await else { return };
        let mut batches = Vec::new();
        for chunk in &chunks {
            let mut at = 0;
            for item in crate::protocol::batch::BatchIter::new(chunk) {
                let (header, bytes) = item.expect("served batches pass their checks");
                batches.push((header, chunk.slice(at..at + bytes.len())));
                at += bytes.len();
            }
        }
        let mut world = w.borrow_mut();
        world.stats.reads += 1;
        for (offset, rec) in records_of(&batches) {
            world.served.push((n, offset, rec));
        }
    });
}
