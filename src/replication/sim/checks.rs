//! The simulator's end-of-schedule checks: liveness (one leader, everything committed and
//! held by every replica) and each producer's batches in order, once, with tables that agree.

use std::collections::HashSet;

use super::*;

impl Sim {
    /// One leader, with all of its log committed and held by every replica, and no
    /// controller decision in flight: what the final checks expect.
    pub(super) fn settled(&self) -> bool {
        let leaders: Vec<&Node> = self.nodes.iter().filter(|x| x.up && x.replica.is_leader()).collect();
        !self.controller_waiting
            && leaders.len() == 1
            && leaders[0].hw_seen == leaders[0].log.len() as u64
            && self.nodes.iter().all(|n| n.log == leaders[0].log)
    }

    pub(super) fn final_checks(&mut self, seed: u64) {
        self.stats.final_checks += 1;
        let committed: HashSet<(u64, u64)> = self.committed.iter().enumerate().map(|(i, r)| (i as u64, r.id)).collect();
        for &(o, id) in &self.acked {
            assert!(committed.contains(&(o, id)), "seed {seed}: acknowledged record {id} at offset {o} lost");
        }
        for (n, node) in self.nodes.iter().enumerate() {
            let hw = node.hw_seen as usize;
            assert_eq!(&node.log[..hw], &self.committed[..hw], "seed {seed}: n{n} disagrees below its high watermark");
        }
        // Liveness: after the quiet period one leader has committed its whole log and every
        // replica holds that log (followers learn the high watermark with the next message,
        // which a hand-over just before the end may not have sent yet).
        let leaders: Vec<&Node> = self.nodes.iter().filter(|x| x.replica.is_leader()).collect();
        assert_eq!(leaders.len(), 1, "seed {seed}: one leader after the quiet period");
        let leader = leaders[0];
        assert_eq!(leader.hw_seen, leader.log.len() as u64, "seed {seed}: the leader's log is not all committed");
        for (n, node) in self.nodes.iter().enumerate() {
            assert_eq!(
                node.log, leader.log,
                "seed {seed}: n{n} has not caught up with the leader after the quiet period"
            );
        }
        self.producer_checks(seed);
    }

    /// Each producer's batches are in the committed log in the order it sent them, each once,
    /// with no gap; every one was acknowledged by the end; and every replica's producer table
    /// agrees with its log.
    fn producer_checks(&self, seed: u64) {
        for p in &self.producers {
            let sequences: Vec<u32> = self
                .committed
                .iter()
                .filter_map(|r| r.producer.filter(|(id, _)| *id == p.id).map(|(_, s)| s))
                .collect();
            let expected: Vec<u32> = (0..p.next_sequence).collect();
            assert_eq!(sequences, expected, "seed {seed}: producer {}'s batches in the committed log", p.id);
            assert!(p.unacked.is_empty(), "seed {seed}: producer {} still waits for {:?}", p.id, p.unacked);
            assert_eq!(p.acked_through, p.next_sequence.checked_sub(1), "seed {seed}: producer {}", p.id);
        }
        for (n, node) in self.nodes.iter().enumerate() {
            let rebuilt = table_of(&node.log);
            for p in &self.producers {
                assert_eq!(
                    node.producers.last_batch(p.id),
                    rebuilt.last_batch(p.id),
                    "seed {seed}: n{n}'s producer table disagrees with its log for producer {}",
                    p.id
                );
            }
        }
    }
}
