//! The `multi-master` and `forwarding` cluster modes with real processes: any node takes
//! any request and forwards what it does not serve.

mod common;

use std::time::Duration;

use common::cluster::{check_with, Cluster, Load, MESSAGE_BYTES};
use quorra::client::{Client, ClientConfig, ReadFrom};
use quorra::protocol::messages::Acks;
use quorra::protocol::ErrorCode;

#[test]
fn multi_master_takes_writes_on_any_node_and_survives_a_kill() {
    let mut c = Cluster::start("multimaster", "multi-master");
    c.create_topic("t", 3, 0); // the mode's default: a copy on every node
    c.wait_for("a replica of every partition on every node", Duration::from_secs(30), |s| {
        s.partitions.iter().all(|p| p.leader.is_some() && p.replicas.len() == 3)
    });
    // A producer that talks only to node 2, a checker that talks only to node 3.
    let via2 = c.node(2).client.to_string();
    let via3 = c.node(3).client.to_string();
    let load = Load::start_with(&via2, "t", 3, Acks::Quorum, false);
    load.wait_acked(2000, Duration::from_secs(30));
    let leader0 = c.leaders("t")[0];
    assert_ne!(leader0, 0);
    let victim = if leader0 == 2 { 1 } else { leader0 };
    c.node(victim).kill();
    load.wait_acked(2000, Duration::from_secs(40));
    let acked = load.stop();
    let v = check_with(&via3, "t", 3, &acked, ReadFrom::Leader, false);
    assert!(v.acked >= 4000);
    assert!(v.is_clean(), "{v:?}\n{}", c.logs());
}

#[test]
fn forwarding_serves_every_partition_from_any_node_and_reports_a_missing_owner() {
    let mut c = Cluster::start("forwarding", "forwarding");
    c.create_topic("t", 3, 1);
    let via2 = c.node(2).client.to_string();
    let via3 = c.node(3).client.to_string();
    let load = Load::start_with(&via2, "t", 3, Acks::Quorum, false);
    load.wait_acked(3000, Duration::from_secs(30));
    let acked = load.stop();
    let v = check_with(&via3, "t", 3, &acked, ReadFrom::Leader, false);
    assert!(v.is_clean(), "{v:?}");
    // The owner of partition 0 goes down: its partition says so, the others keep working.
    let owner = c.leaders("t")[0];
    c.node(owner).kill();
    let entry = [1u32, 2, 3].into_iter().find(|&n| n != owner).unwrap();
    let via = c.node(entry).client.to_string();
    let (down, others_ok) = common::run(move || async move {
        let client = client_of_only(&via).await;
        // Messages in the checker's format, numbered beyond the load's.
        let batch = |p: u32| one_message(p, 1_000_000_000 + u64::from(p));
        let mut down = None;
        let mut others_ok = 0;
        for p in 0..3u32 {
            match client.produce_batches("t", p, Acks::Quorum, batch(p)).await {
                Ok(_) => others_ok += 1,
                Err(e) => down = Some((p, e)),
            }
        }
        (down.map(|(p, e)| (p, e.code(), e.to_string())), others_ok)
    });
    let (p, code, message) = down.expect("the dead owner's partition cannot take writes");
    assert_eq!(p, 0);
    assert_eq!(code, Some(ErrorCode::Unavailable), "{message}");
    assert!(message.contains(&format!("owner node {owner} is down")), "{message}");
    assert_eq!(others_ok, 2, "partitions of live owners keep working");
    // Back up: its data is intact.
    c.node(owner).restart();
    c.wait_for("the owner back", Duration::from_secs(30), |s| s.partitions.iter().all(|p| p.leader.is_some()));
    let v = check_with(&via3, "t", 3, &acked, ReadFrom::Leader, false);
    assert!(v.is_clean(), "{v:?}");
}

/// The Raft-based modes share one format: a master-slave cluster restarted as hybrid keeps
/// its topics and data, takes writes, and places new topics the hybrid way.
#[test]
fn switching_master_slave_to_hybrid_keeps_topics_and_data() {
    let mut c = Cluster::start("switchmode", "master-slave");
    c.create_topic("t", 3, 3);
    let load = Load::start(&c.bootstrap(), "t", 3, Acks::Quorum);
    load.wait_acked(2000, Duration::from_secs(30));
    let before = load.stop();
    for id in 1..=3 {
        c.node(id).kill();
        let path = c.node(id).dir.join("node.toml");
        let toml = std::fs::read_to_string(&path).unwrap().replace("\"master-slave\"", "\"hybrid\"");
        std::fs::write(&path, toml).unwrap();
    }
    for id in 1..=3 {
        c.node(id).restart();
    }
    c.wait_in_sync(3, Duration::from_secs(30));
    let v = check_with(&c.bootstrap(), "t", 3, &before, ReadFrom::Leader, true);
    assert!(v.is_clean(), "{v:?}\n{}", c.logs());
    // New topics are placed the hybrid way: one partition led by each node.
    c.create_topic("h", 3, 0);
    c.wait_for("hybrid placement", Duration::from_secs(30), |s| {
        let mut leaders: Vec<_> = s.partitions.iter().filter(|p| p.topic == "h").filter_map(|p| p.leader).collect();
        leaders.sort_unstable();
        leaders == [1, 2, 3]
    });
    // And the old topic takes writes in the new mode.
    let first = before.at.values().max().map_or(0, |n| n + 1_000_000);
    let load = Load::start_numbered_from(&c.bootstrap(), "t", 3, Acks::Quorum, first);
    load.wait_acked(1000, Duration::from_secs(30));
    let after = load.stop();
    let v = check_with(&c.bootstrap(), "t", 3, &after, ReadFrom::Leader, true);
    assert!(v.is_clean(), "{v:?}");
}

/// Requests a node forwards keep the order they came in, also while its link to the owner is
/// still opening: a burst of pipelined produces for one partition, sent to a node that
/// does not lead it right after the cluster started (no link to the leader yet), is stored
/// in the order it was sent. (Before, every forwarded request that found no open link
/// opened one of its own, and the requests raced to the leader over them.)
#[test]
fn forwarded_requests_keep_their_order_while_the_link_opens() {
    let mut c = Cluster::start("fwdorder", "forwarding");
    c.create_topic("t", 1, 1);
    let leader = c.leaders("t")[0];
    assert_ne!(leader, 0);
    let entry = [1u32, 2, 3].into_iter().find(|&n| n != leader).unwrap();
    let via = c.node(entry).client.to_string();
    let offsets = common::run(move || async move {
        let client = client_of_only(&via).await;
        // All queued on the client's one connection before any answer comes.
        let burst: Vec<_> =
            (0..200u64).map(|i| client.produce_batches("t", 0, Acks::Leader, one_message(0, i))).collect();
        join_all(burst)
            .await
            .into_iter()
            .map(|r| r.unwrap_or_else(|e| panic!("not stored: {e}")).base_offset)
            .collect::<Vec<_>>()
    });
    let out_of_order: Vec<_> = offsets.windows(2).filter(|w| w[1] <= w[0]).collect();
    assert!(out_of_order.is_empty(), "stored out of the order sent: {out_of_order:?} in {offsets:?}");
}

/// A client that talks to `addr` only (it does not follow leaders: the node must forward).
async fn client_of_only(addr: &str) -> std::rc::Rc<Client> {
    Client::connect(ClientConfig { follow_leaders: false, ..ClientConfig::with_bootstrap(addr) }).await.unwrap()
}

/// One batch of one message in the checker's format: producer `p`'s message `n`.
fn one_message(p: u32, n: u64) -> Vec<bytes::Bytes> {
    let mut b = quorra::protocol::batch::BatchBuilder::with_capacity(1024);
    b.push(None, &common::payload(p, n, MESSAGE_BYTES), 1);
    vec![b.finish(0, 0, 0)]
}

/// Polls every future, in order, until all are done.
async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        for (f, out) in futures.iter_mut().zip(outputs.iter_mut()) {
            if let Some(fut) = f {
                if let std::task::Poll::Ready(v) = fut.as_mut().poll(cx) {
                    *out = Some(v);
                    *f = None;
                }
            }
        }
        if futures.iter().all(Option::is_none) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("every future done")).collect()
}

/// Requests forwarded to a node that is down fail as unavailable, and the node that
/// forwards them keeps serving: its connects to the dead owner fail at once (a refused
/// connect on loopback), which once ran into the queue of waiting requests while it was
/// borrowed and panicked the shard (found by the multi-master nemesis).
#[test]
fn requests_forwarded_to_a_dead_node_fail_and_the_forwarder_keeps_serving() {
    let mut c = Cluster::start_addressed("fwddead", "forwarding", common::cluster::private_loopback(0), |_| {});
    c.create_topic("t", 3, 1);
    let owner = c.leader_of("t", 0, Duration::from_secs(10));
    let entry = [1u32, 2, 3].into_iter().find(|&n| n != owner).unwrap();
    c.node(owner).kill();
    let via = c.node(entry).client.to_string();
    let codes = common::run(move || async move {
        let client = client_of_only(&via).await;
        let mut codes = Vec::new();
        for _ in 0..50 {
            let burst: Vec<_> =
                (0..4).map(|_| client.produce_batches("t", 0, Acks::Leader, one_message(0, 1))).collect();
            for r in join_all(burst).await {
                codes.push(r.err().and_then(|e| e.code()));
            }
        }
        codes
    });
    assert!(codes.iter().all(|c| *c == Some(ErrorCode::Unavailable)), "{codes:?}");
    assert!(!c.node(entry).has_exited(), "the forwarding node died\n{}", c.node(entry).log());
}
