//! A node whose metadata log (Raft) cannot be written, with real processes: the failure is
//! injected through `QUORRA_FAULT_FILE` (`meta=eio`) into the metadata leader.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{check_with, private_loopback, Cluster, Load};
use quorra::client::ReadFrom;
use quorra::protocol::messages::Acks;

/// The node stops at once, saying why (it must not go on as a member whose metadata is
/// neither durable nor current: before, its Raft stopped and the process went on serving
/// clients as if nothing happened); the other two keep acknowledging; restarted on a
/// healthy disk it rejoins and every acknowledged record is read back, in order, once.
#[test]
fn a_node_whose_metadata_log_fails_stops_and_rejoins_whole_once_restarted() {
    let mut c = Cluster::start_addressed("meta-eio", "master-slave", private_loopback(0), |_| {});
    c.create_topic("t", 3, 3);
    let load = Load::start(&c.bootstrap(), "t", 3, Acks::Quorum);
    load.wait_acked(2000, Duration::from_secs(30));
    let victim = c.status().and_then(|s| s.metadata_leader).expect("a metadata leader");
    c.node(victim).set_disk_faults(&["meta=eio"]);
    // A metadata write: every member appends it to its metadata log (it may fail: its
    // leader is the node that cannot write).
    let b = c.bootstrap();
    let _ = common::run(move || async move {
        let client = quorra::client::Client::connect(quorra::client::ClientConfig::with_bootstrap(&b)).await?;
        client.create_topic("after", 1, 2).await
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c.node(victim).has_exited() {
        assert!(
            Instant::now() < deadline,
            "node {victim} runs on with a metadata log it cannot write\n{}",
            c.node(victim).log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = c.node(victim).log();
    assert!(log.contains("the metadata log cannot be written"), "{log}");
    // The others go on: a new metadata leader, every partition led, acknowledgements.
    c.wait_for("a new metadata leader", Duration::from_secs(30), |s| {
        s.metadata_leader.is_some_and(|l| l != victim) && s.partitions.iter().all(|p| p.leader.is_some())
    });
    load.wait_acked(2000, Duration::from_secs(30));
    // Back on a healthy disk: in sync again, and nothing acknowledged is lost.
    c.node(victim).set_disk_faults(&[]);
    c.node(victim).restart();
    let acked = load.stop();
    c.wait_caught_up("the restarted node caught up", Duration::from_secs(60));
    let via = c.node(victim).client.to_string();
    let v = check_with(&via, "t", 3, &acked, ReadFrom::Follower, false);
    assert!(v.is_clean(), "{v:?}\n{}", c.logs());
}
