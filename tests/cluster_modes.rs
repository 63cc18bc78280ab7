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
    c.create_topic("t", 3, 3);
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
    assert_eq!((v.lost, v.duplicated, v.corrupt), (0, 0, 0), "{v:?}\n{}", c.logs());
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
    assert_eq!((v.lost, v.duplicated, v.corrupt), (0, 0, 0), "{v:?}");
    // The owner of partition 0 goes down: its partition says so, the others keep working.
    let owner = c.leaders("t")[0];
    c.node(owner).kill();
    let entry = [1u32, 2, 3].into_iter().find(|&n| n != owner).unwrap();
    let via = c.node(entry).client.to_string();
    let (down, others_ok) = common::run(move || async move {
        let config = ClientConfig { follow_leaders: false, ..ClientConfig::with_bootstrap(&via) };
        let client = Client::connect(config).await.unwrap();
        // Messages in the checker's format, numbered beyond the load's.
        let batch = |p: u32| {
            let mut b = quorra::protocol::batch::BatchBuilder::with_capacity(1024);
            b.push(None, &common::payload(p, 1_000_000_000 + u64::from(p), MESSAGE_BYTES), 1);
            vec![b.finish(0, 0, 0)]
        };
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
    assert_eq!((v.lost, v.duplicated, v.corrupt), (0, 0, 0), "{v:?}");
}
