//! The simulator's checks. After every instant of virtual time, on every running replica:
//! its high watermark never goes back and everything below it is the committed log (which
//! grows from what replicas commit, never changes); each producer's batches commit in
//! order, once; at most one leader per epoch, and a new leader holds the committed log. At
//! the end: every acknowledged record is in the committed log at its offset; every record
//! a reader was served is there too (nothing uncommitted was served); one leader has
//! committed its whole log and every replica holds it; every producer's batches are there
//! in order, each once, all acknowledged; every replica's producer table agrees with its log.

use std::collections::HashSet;

use super::*;

/// The records of `p`'s log in `[from, to)`.
fn records(p: &Part, from: u64, to: u64) -> Vec<(u64, Rec)> {
    records_of(&p.batches_for_checks(from, to)).into_iter().filter(|(o, _)| *o >= from && *o < to).collect()
}

pub(super) fn after_instant(w: &WorldRef) {
    let mut world = w.borrow_mut();
    for n in 0..world.nodes.len() {
        let node = &world.nodes[n];
        let Some(p) = node.part.clone().filter(|_| node.up) else { continue };
        check_commits(&mut world, n as NodeId, &p);
        check_leadership(&mut world, n as NodeId, &p);
        let end = p.log_end_offset();
        if p.replica_log_end_for_checks() != end {
            world.trace(|| format!("n{n}: replica log end {} != log end {end}", p.replica_log_end_for_checks()));
        }
        let before = world.nodes[n].log_end_seen;
        if end < before {
            // (A truncation of a divergent tail, or a failed write dropping its batches.)
            world.stats.truncations += 1;
            world.trace(|| format!("n{n}: log end {before} -> {end}, {:?}", p.leadership()));
        }
        world.nodes[n].log_end_seen = end;
    }
}

fn check_commits(world: &mut World, n: NodeId, p: &Part) {
    let hw = p.high_watermark();
    let node = &world.nodes[n as usize];
    assert!(hw >= node.hw_seen, "n{n}: high watermark went back from {} to {hw}", node.hw_seen);
    assert!(hw <= p.log_end_offset(), "n{n}: high watermark {hw} beyond its log end {}", p.log_end_offset());
    let from = node.verified_to;
    if hw > from {
        world.stats.commit_checks += 1;
        for (offset, rec) in records(p, from, hw) {
            let at = offset as usize;
            if at < world.committed.len() {
                assert_eq!(rec, world.committed[at], "n{n}: offset {offset} differs from the committed log (hw {hw})");
                continue;
            }
            assert_eq!(at, world.committed.len(), "n{n}: a gap in the committed log at {offset}");
            // Each producer's batches enter the committed log in the order it sent them,
            // each once, with no gap.
            if let Some((producer, sequence)) = rec.producer {
                world.stats.order_checks += 1;
                let next = world.committed_sequences.entry(producer).or_insert(0);
                assert_eq!(sequence, *next, "producer {producer}: batch {sequence} committed after {}", *next);
                *next += 1;
            }
            world.committed.push(rec);
        }
        world.nodes[n as usize].verified_to = hw;
    }
    world.nodes[n as usize].hw_seen = hw;
}

fn check_leadership(world: &mut World, n: NodeId, p: &Part) {
    let (true, _, epoch) = p.leadership() else { return };
    world.stats.leader_checks += 1;
    match world.leaders.get(&epoch) {
        Some(&other) => assert_eq!(other, n, "two leaders in epoch {epoch}"),
        None => {
            // A new leader holds every committed record.
            let len = world.committed.len() as u64;
            assert!(p.log_end_offset() >= len, "new leader n{n} (epoch {epoch}) lacks committed records");
            let held: Vec<Rec> = records(p, 0, len).into_iter().map(|(_, r)| r).collect();
            assert!(held == world.committed, "new leader n{n} (epoch {epoch}) differs from the committed log");
            world.leaders.insert(epoch, n);
            world.trace(|| format!("n{n} leads epoch {epoch}"));
        }
    }
}

/// One leader, with all of its log committed and held by every replica, and no
/// controller decision in flight: what the final checks expect.
pub(super) fn settled(w: &WorldRef) -> bool {
    let world = w.borrow();
    let parts: Vec<Rc<Part>> = world.nodes.iter().filter(|n| n.up).filter_map(|n| n.part.clone()).collect();
    if parts.len() != world.nodes.len() || world.controller_busy {
        return false;
    }
    let leaders: Vec<&Rc<Part>> = parts.iter().filter(|p| p.leadership().0).collect();
    let [leader] = leaders[..] else { return false };
    let end = leader.log_end_offset();
    leader.high_watermark() == end && parts.iter().all(|p| p.log_end_offset() == end && p.high_watermark() == end)
}

/// Each node's state, for failure messages.
fn describe(world: &World) -> String {
    let mut out = String::new();
    for (n, node) in world.nodes.iter().enumerate() {
        out += &match node.part.as_ref().filter(|_| node.up) {
            Some(p) => format!(
                "\n  n{n}: {:?}, log {}..{}, hw {}, {:?}, (written, durable, io, paused, writer) {:?}",
                p.leadership(),
                p.log_start_offset(),
                p.log_end_offset(),
                p.high_watermark(),
                p.health(),
                p.write_state_for_checks()
            ),
            None => format!("\n  n{n}: down"),
        };
    }
    out
}

pub(super) fn final_checks(w: &WorldRef) {
    let mut world = w.borrow_mut();
    world.trace(|| format!("final state:{}", describe(&world)));
    let seed = world.seed;
    world.stats.final_checks += 1;
    let committed: HashSet<(u64, u64)> = world.committed.iter().enumerate().map(|(i, r)| (i as u64, r.id)).collect();
    for &(o, id) in &world.acked {
        assert!(committed.contains(&(o, id)), "seed {seed}: acknowledged record {id} at offset {o} lost");
    }
    for &(n, o, rec) in &world.served {
        assert_eq!(world.committed.get(o as usize), Some(&rec), "seed {seed}: n{n} served offset {o} uncommitted");
    }
    world.stats.served_checks += world.served.len() as u64;
    let parts: Vec<Rc<Part>> = world.nodes.iter().map(|n| n.part.clone().expect("every node runs")).collect();
    // Liveness: after the quiet period one leader has committed its whole log and every
    // replica holds that log.
    let leaders: Vec<NodeId> = (0..parts.len() as NodeId).filter(|&n| parts[n as usize].leadership().0).collect();
    assert_eq!(leaders.len(), 1, "seed {seed}: one leader after the quiet period, not {leaders:?}");
    let leader = &parts[leaders[0] as usize];
    let end = leader.log_end_offset();
    world.trace(|| {
        let hw = leader.high_watermark();
        let tail: Vec<String> = leader
            .batches_for_checks(hw, end)
            .iter()
            .map(|(h, _)| {
                format!(
                    "{}+{} e{}{}",
                    h.base_offset,
                    h.record_count,
                    h.leader_epoch,
                    if h.is_control() { " control" } else { "" }
                )
            })
            .collect();
        format!("the leader's uncommitted batches: {tail:?}")
    });
    assert_eq!(leader.high_watermark(), end, "seed {seed}: the leader's log is not all committed");
    // `acks=leader`: what the final leader acknowledged in its epoch is all there (what an
    // earlier leader acknowledged may have been cut by a failover, as documented).
    let final_epoch = leader.leadership().2;
    let by_final_leader: Vec<(u64, u64)> =
        world.acked_by_leader.iter().filter(|(e, _, _)| *e == final_epoch).map(|&(_, o, id)| (o, id)).collect();
    for &(o, id) in &by_final_leader {
        assert!(committed.contains(&(o, id)), "seed {seed}: record {id} acknowledged by the leader at {o} lost");
    }
    world.stats.leader_ack_checks += by_final_leader.len() as u64;
    let log: Vec<Rec> = records(leader, 0, end).into_iter().map(|(_, r)| r).collect();
    assert_eq!(log.len() as u64, end, "seed {seed}: the leader's log has holes");
    assert_eq!(&log[..world.committed.len()], &world.committed[..], "seed {seed}: the leader's log");
    for (n, p) in parts.iter().enumerate() {
        let held: Vec<Rec> = records(p, 0, p.log_end_offset()).into_iter().map(|(_, r)| r).collect();
        assert!(held == log, "seed {seed}: n{n} has not caught up with the leader after the quiet period");
    }
    producer_checks(&world, &log, &parts);
}

/// Each producer's batches are in the committed log in the order it sent them, each once,
/// with no gap; every one was acknowledged by the end; and every replica's producer table
/// agrees with its log.
fn producer_checks(world: &World, log: &[Rec], parts: &[Rc<Part>]) {
    let seed = world.seed;
    for p in &world.producers {
        let sequences: Vec<u32> =
            log.iter().filter_map(|r| r.producer.filter(|(id, _)| *id == p.id).map(|(_, s)| s)).collect();
        let expected: Vec<u32> = (0..p.next_sequence).collect();
        assert_eq!(sequences, expected, "seed {seed}: producer {}'s batches in the committed log", p.id);
        assert!(p.unacked.is_empty(), "seed {seed}: producer {} still waits for {:?}", p.id, p.unacked);
        assert_eq!(p.acked_through, p.next_sequence.checked_sub(1), "seed {seed}: producer {}", p.id);
        let last = log.iter().enumerate().rev().find(|(_, r)| r.producer.is_some_and(|(id, _)| id == p.id));
        for (n, part) in parts.iter().enumerate() {
            let stored = part.producer_batch_for_checks(p.id);
            assert_eq!(
                stored.map(|b| (b.base_offset, b.base_sequence)),
                last.map(|(o, r)| (o as u64, r.producer.expect("a producer's record").1)),
                "seed {seed}: n{n}'s producer table disagrees with its log for producer {}",
                p.id
            );
        }
    }
}
