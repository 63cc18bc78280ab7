//! Replicated clusters of three real `quorra serve` processes on 127.0.0.1: kills, restarts,
//! network cuts through fault-injecting proxies, and a checker that every message
//! acknowledged with `acks=quorum` is still readable where it was acknowledged.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{check, final_log, Cluster, Load, Verdict, Watcher};
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

#[test]
fn isolated_leader_acknowledges_nothing_and_rejoins_after_healing() {
    let mut c = Cluster::start("partition", 3, "master-slave", "");
    c.create_topic("t", TOPIC_PARTITIONS, 3);
    let leader = c.leaders("t")[0];
    let watcher = Watcher::start(&c.bootstrap(), "t", ReadFrom::Any);
    let load = Load::start(&c.bootstrap(), "t", TOPIC_PARTITIONS, Acks::Quorum);
    load.wait_acked(1000, Duration::from_secs(30));
    c.isolate(leader);
    // The isolated leader cannot reach a quorum: a produce sent straight to it is never
    // acknowledged.
    let isolated = c.node(leader).client.to_string();
    let direct = common::run(move || async move {
        let client = common::client(&isolated).await;
        let mut b = quorra::protocol::batch::BatchBuilder::with_capacity(64);
        b.push(None, b"to the isolated leader", 1);
        client.produce_batches("t", 0, Acks::Quorum, vec![b.finish(0, 0, 0)]).await
    });
    assert!(direct.is_err(), "the isolated leader acknowledged a write: {direct:?}");
    // The majority side elects a leader and goes on.
    load.wait_acked(2000, Duration::from_secs(40));
    c.heal();
    c.wait_for("all replicas in sync after healing", Duration::from_secs(40), |s| {
        s.partitions.iter().all(|p| p.in_sync.len() == 3 && p.lag.iter().all(|l| l.records == 0))
    });
    load.wait_acked(500, Duration::from_secs(30));
    let acked = load.stop();
    let seen = watcher.stop();
    let v = check(&c.bootstrap(), "t", TOPIC_PARTITIONS, &acked, ReadFrom::Leader);
    assert_nothing_lost(&v, "after the partition healed", &c);
    // No consumer saw a message that later disappeared: every record it was given is in
    // the final log at the same offset (read from the old leader alone, which truncated).
    let old_leader_view = final_log(&c.node(leader).client.to_string(), "t");
    let final_view = final_log(&c.bootstrap(), "t");
    assert_eq!(old_leader_view, final_view, "the old leader's log equals the cluster's");
    // It held at least the batch sent to it directly, uncommitted: it cut that tail.
    assert!(c.node(leader).log().contains("t/0: truncating the log from offset"), "{}", c.node(leader).log());
    for (p, o, value) in &seen {
        assert_eq!(final_view.get(&(*p, *o)), Some(value), "a consumer saw {p}/{o}, which later changed");
    }
}

#[test]
fn paused_leader_is_replaced_and_acknowledges_nothing_when_resumed() {
    let mut c = Cluster::start("sigstop", 3, "master-slave", "");
    c.create_topic("t", TOPIC_PARTITIONS, 3);
    let leader = c.leaders("t")[0];
    let load = Load::start(&c.bootstrap(), "t", TOPIC_PARTITIONS, Acks::Quorum);
    load.wait_acked(1000, Duration::from_secs(30));
    c.node(leader).signal(libc::SIGSTOP);
    load.wait_acked(2000, Duration::from_secs(40));
    let during = c.leaders("t");
    assert!(during.iter().all(|&l| l != leader && l != 0), "leaders while paused: {during:?}");
    c.node(leader).signal(libc::SIGCONT);
    c.wait_for("the resumed node back in sync", Duration::from_secs(40), |s| {
        s.partitions.iter().all(|p| p.in_sync.len() == 3 && p.lag.iter().all(|l| l.records == 0))
    });
    load.wait_acked(500, Duration::from_secs(30));
    let acked = load.stop();
    let v = check(&c.bootstrap(), "t", TOPIC_PARTITIONS, &acked, ReadFrom::Any);
    assert_nothing_lost(&v, "after the paused leader resumed", &c);
}

#[test]
fn rolling_restart_under_load_loses_nothing() {
    let mut c = Cluster::start("rolling", 3, "hybrid", "");
    c.create_topic("t", TOPIC_PARTITIONS, 3);
    let load = Load::start(&c.bootstrap(), "t", TOPIC_PARTITIONS, Acks::Quorum);
    load.wait_acked(1000, Duration::from_secs(30));
    for id in 1..=3 {
        c.node(id).restart();
        c.wait_for("every replica in sync", Duration::from_secs(40), |s| {
            s.partitions.iter().all(|p| p.leader.is_some() && p.in_sync.len() == 3)
        });
        load.wait_acked(1000, Duration::from_secs(40));
    }
    let acked = load.stop();
    let v = check(&c.bootstrap(), "t", TOPIC_PARTITIONS, &acked, ReadFrom::Leader);
    assert_nothing_lost(&v, "after a rolling restart", &c);
}

#[test]
fn follower_reads_stop_at_the_high_watermark() {
    let c = Cluster::start("hwreads", 3, "master-slave", "");
    c.create_topic("t", TOPIC_PARTITIONS, 3);
    let watcher = Watcher::start(&c.bootstrap(), "t", ReadFrom::Follower);
    let load = Load::start(&c.bootstrap(), "t", TOPIC_PARTITIONS, Acks::Quorum);
    load.wait_acked(5000, Duration::from_secs(40));
    let acked = load.stop();
    std::thread::sleep(Duration::from_millis(500));
    let seen = watcher.stop();
    // Everything a follower served is committed: in the final log, at that offset, and the
    // follower caught up with everything acknowledged.
    let final_view = final_log(&c.bootstrap(), "t");
    for (p, o, value) in &seen {
        assert_eq!(final_view.get(&(*p, *o)), Some(value), "a follower served {p}/{o}, which is not committed");
    }
    let seen_at: std::collections::HashSet<(u32, u64)> = seen.iter().map(|(p, o, _)| (*p, *o)).collect();
    let missing = acked.at.keys().filter(|k| !seen_at.contains(k)).count();
    assert_eq!(missing, 0, "follower readers received everything acknowledged");
}
