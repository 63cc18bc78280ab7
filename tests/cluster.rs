//! Replicated clusters of three real `quorra serve` processes on 127.0.0.1: kills, restarts,
//! network cuts through fault-injecting proxies, and a checker that every message
//! acknowledged with `acks=quorum` is still readable where it was acknowledged.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{check, Cluster, Load, Verdict};
use quorra::client::ReadFrom;
use quorra::protocol::messages::Acks;

const TOPIC_PARTITIONS: u32 = 3;

fn assert_nothing_lost(v: &Verdict, what: &str, c: &Cluster) {
    assert!(v.acked > 0, "{what}: nothing was acknowledged");
    assert_eq!((v.lost, v.duplicated, v.corrupt), (0, 0, 0), "{what}: {v:?}\n{}", c.logs());
}

#[test]
fn leader_killed_under_load_fails_over_and_loses_nothing() {
    let mut c = Cluster::start("failover", 3, "master-slave", "");
    c.create_topic("t", TOPIC_PARTITIONS, 3);
    let leader = c.leaders("t")[0];
    let load = Load::start(&c.bootstrap(), "t", TOPIC_PARTITIONS, Acks::Quorum);
    load.wait_acked(2000, Duration::from_secs(30));
    let killed_at = Instant::now();
    c.node(leader).kill();
    // A new leader serves: acknowledgements continue.
    load.wait_acked(2000, Duration::from_secs(30));
    let failover = killed_at.elapsed();
    let acked = load.stop();
    let after: Vec<u32> = c.leaders("t");
    assert!(after.iter().all(|&l| l != leader && l != 0), "new leaders {after:?} (old {leader})");
    let v = check(&c.bootstrap_up(), "t", TOPIC_PARTITIONS, &acked, ReadFrom::Leader);
    assert_nothing_lost(&v, "after the leader was killed", &c);
    eprintln!("failover: 2000 more acks {failover:?} after the kill; {v:?}");
    // The old leader comes back as a follower, catches up, and (master-slave) leads again.
    c.node(leader).restart();
    c.wait_for("the old master leading again", Duration::from_secs(30), |s| {
        s.partitions.iter().all(|p| p.leader == Some(leader) && p.in_sync.len() == 3)
    });
    let v2 = check(&c.bootstrap(), "t", TOPIC_PARTITIONS, &acked, ReadFrom::Leader);
    assert_nothing_lost(&v2, "after the old leader returned", &c);
}

#[test]
fn follower_restarted_catches_up_and_serves_reads() {
    let mut c = Cluster::start("catchup", 3, "master-slave", "");
    c.create_topic("t", TOPIC_PARTITIONS, 3);
    let leader = c.leaders("t")[0];
    let follower = if leader == 3 { 2 } else { 3 };
    let load = Load::start(&c.bootstrap(), "t", TOPIC_PARTITIONS, Acks::Quorum);
    load.wait_acked(1000, Duration::from_secs(30));
    c.node(follower).kill();
    load.wait_acked(3000, Duration::from_secs(30));
    c.node(follower).restart();
    load.wait_acked(1000, Duration::from_secs(30));
    let acked = load.stop();
    c.wait_for("the follower back in sync", Duration::from_secs(30), |s| {
        s.partitions.iter().all(|p| p.in_sync.contains(&follower) && p.lag.iter().all(|l| l.records == 0))
    });
    // Reads from that follower alone: everything acknowledged is there, nothing else.
    let only_follower = c.node(follower).client.to_string();
    let v = check(&only_follower, "t", TOPIC_PARTITIONS, &acked, ReadFrom::Follower);
    assert_nothing_lost(&v, "read from the restarted follower", &c);
}

#[test]
fn all_nodes_killed_at_once_keep_every_quorum_acknowledgement() {
    let mut c = Cluster::start("allkill", 3, "hybrid", "");
    c.create_topic("t", TOPIC_PARTITIONS, 3);
    let load = Load::start(&c.bootstrap(), "t", TOPIC_PARTITIONS, Acks::Quorum);
    load.wait_acked(3000, Duration::from_secs(30));
    for id in 1..=3 {
        c.node(id).kill();
    }
    let acked = load.stop();
    for id in 1..=3 {
        c.node(id).restart();
    }
    c.wait_for("leaders after the restart", Duration::from_secs(30), |s| {
        s.partitions.iter().all(|p| p.leader.is_some() && p.in_sync.len() == 3)
    });
    let v = check(&c.bootstrap(), "t", TOPIC_PARTITIONS, &acked, ReadFrom::Any);
    assert_nothing_lost(&v, "after every node was killed", &c);
}
