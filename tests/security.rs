//! Who may talk to a broker: node-to-node traffic (replication on the client port, Raft and
//! metadata writes on the control port) only from nodes that prove they hold the cluster's
//! secret; everything else refused, logged, and harmless. Real processes.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::cluster::{check, final_log, read_all, Cluster, Load};
use openraft::raft::VoteRequest;
use openraft::Vote;
use quorra::client::ReadFrom;
use quorra::cluster::meta::MetaCommand;
use quorra::cluster::rpc::Request;
use quorra::protocol::messages::Acks;
use quorra::protocol::node_auth::{ClusterSecret, Handshake, LinkKind, Nonce};
use quorra::protocol::peer::{
    AppendReply, AppendRequest, EpochStart, PeerChallenge, PeerHello, PeerKind, PeerProof, REPLY_STALE_EPOCH,
};
use quorra::protocol::{decode, encode, BodyBuf, ErrorCode};

/// An epoch far above anything the controller will open for years.
const FORGED_EPOCH: u32 = 1 << 30;

use common::raw::{exchange, Answer};

/// Whether the other end closes the connection within 5 s (after whatever it still sends).
fn is_closed(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    loop {
        match s.read(&mut [0u8; 512]) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => return !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
        }
    }
}

/// A control-link message (`[len][crc32c][json]`), and the answer's JSON (None once closed).
fn control_exchange(s: &mut TcpStream, json: &str) -> Option<String> {
    let mut framed = (json.len() as u32).to_le_bytes().to_vec();
    framed.extend_from_slice(&crc32c::crc32c(json.as_bytes()).to_le_bytes());
    framed.extend_from_slice(json.as_bytes());
    s.write_all(&framed).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = [0u8; 8];
    s.read_exact(&mut head).ok()?;
    let mut body = vec![0u8; u32::from_le_bytes(head[..4].try_into().unwrap()) as usize];
    s.read_exact(&mut body).ok()?;
    Some(String::from_utf8_lossy(&body).into_owned())
}

fn control_json(r: &Request) -> String {
    serde_json::to_string(r).unwrap()
}

/// What an attacker (or a node) says in the first frame of a data link.
fn hello(cluster: &str, from: u32, to: u32, nonce: Nonce) -> BodyBuf {
    encode(&PeerHello { cluster_id: cluster.into(), node_id: from, to, nonce })
}

/// Says hello on a data link and answers the challenge with a proof keyed by `secret`: the
/// answer to the proof. (With the cluster's secret, what a real node does.)
fn handshake(s: &mut TcpStream, cluster: &str, from: u32, to: u32, secret: &[u8], nonce: Nonce) -> (Answer, Nonce) {
    let challenge: PeerChallenge =
        decode(&exchange(s, PeerKind::Hello as u16, &hello(cluster, from, to, nonce), &[]).ok()).unwrap();
    let secret = ClusterSecret::new(secret).unwrap();
    let h = Handshake {
        secret: &secret,
        link: LinkKind::Data,
        cluster_id: cluster,
        initiator: from,
        acceptor: to,
        initiator_nonce: nonce,
        acceptor_nonce: challenge.nonce,
    };
    let proof = encode(&PeerProof { proof: h.initiator_proof() });
    (exchange(s, PeerKind::Proof as u16, &proof, &[]), challenge.nonce)
}

fn forged_append(leader: u32, epoch: u32) -> (BodyBuf, Vec<u8>) {
    let mut forged = quorra::protocol::batch::BatchBuilder::with_capacity(64);
    forged.push(None, b"forged", 1);
    let append = encode(&AppendRequest {
        topic: "t".into(),
        topic_id: 0, // any incarnation
        partition: 0,
        epoch,
        leader,
        prev_offset: 0,
        prev_epoch: None,
        end_offset: 1,
        epochs: vec![EpochStart { epoch, start_offset: 0 }],
        leader_hw: 1,
        log_start: 0,
    });
    (append, forged.finish(0, 0, 0).to_vec())
}

/// What one node serves of topic `t` (a follower up to its high watermark).
fn node_view(c: &mut Cluster, n: u32) -> HashMap<(u32, u64), Vec<u8>> {
    read_all(&c.node(n).client.to_string(), "t", ReadFrom::Any, false)
        .into_iter()
        .map(|(p, o, v)| ((p, o), v))
        .collect()
}

/// The attack of issue 13, from a process that knows what `quorra cluster status` prints
/// (the cluster id, the members) and the protocol, but not the cluster's secret: a hello as
/// the leader on a follower's client port, then an append of a forged batch with a huge
/// epoch (before the node handshake, every follower truncated its committed log from
/// offset 0 to store it, and the partition stayed leaderless). Also a proof replayed from a
/// real node's handshake, and a metadata write on the control port.
#[test]
fn forged_node_traffic_is_refused_logged_and_changes_nothing() {
    let mut c = Cluster::start("forged", "master-slave");
    c.create_topic("t", 1, 3);
    let load = Load::start(&c.bootstrap(), "t", 1, Acks::Quorum);
    load.wait_acked(1000, Duration::from_secs(30));
    let leader = c.leaders("t")[0];
    let epoch_before = c.status().unwrap().partitions[0].epoch;
    let (append, batch) = forged_append(leader, FORGED_EPOCH);
    let cluster = "test-forged";
    let wrong_secret = b"not the cluster's secret at all";
    for target in (1..=3).filter(|&n| n != leader) {
        let addr = c.node(target).client;
        // A proof keyed by a guessed secret: refused, closed, the append never read.
        let mut s = TcpStream::connect(addr).unwrap();
        let (answer, _) = handshake(&mut s, cluster, leader, target, wrong_secret, [1; 32]);
        assert_eq!(answer.error().code, ErrorCode::AuthenticationFailed as u16);
        assert!(matches!(exchange(&mut s, PeerKind::Append as u16, &append, &batch), Answer::Closed));
        // A hello, then the append without a proof.
        let mut s = TcpStream::connect(addr).unwrap();
        exchange(&mut s, PeerKind::Hello as u16, &hello(cluster, leader, target, [2; 32]), &[]).ok();
        let refused = exchange(&mut s, PeerKind::Append as u16, &append, &batch).error();
        assert_eq!(refused.code, ErrorCode::AuthenticationFailed as u16, "{refused:?}");
        assert!(is_closed(&mut s));
        // The append alone.
        let mut s = TcpStream::connect(addr).unwrap();
        assert_eq!(
            exchange(&mut s, PeerKind::Append as u16, &append, &batch).error().code,
            ErrorCode::AuthenticationFailed as u16
        );
        // A replay: a real node's hello and proof, recorded, sent again on another
        // connection (the receiver's nonce differs).
        let mut recorded = TcpStream::connect(addr).unwrap();
        let nonce = [3; 32];
        let (answer, their_nonce) = handshake(&mut recorded, cluster, leader, target, &c.secret(), nonce);
        answer.ok();
        let secret = ClusterSecret::new(&c.secret()).unwrap();
        let recorded_proof = Handshake {
            secret: &secret,
            link: LinkKind::Data,
            cluster_id: cluster,
            initiator: leader,
            acceptor: target,
            initiator_nonce: nonce,
            acceptor_nonce: their_nonce,
        }
        .initiator_proof();
        drop(recorded);
        let mut s = TcpStream::connect(addr).unwrap();
        exchange(&mut s, PeerKind::Hello as u16, &hello(cluster, leader, target, nonce), &[]).ok();
        let replayed = exchange(&mut s, PeerKind::Proof as u16, &encode(&PeerProof { proof: recorded_proof }), &[]);
        assert_eq!(replayed.error().code, ErrorCode::AuthenticationFailed as u16, "a replayed proof was accepted");
        assert!(matches!(exchange(&mut s, PeerKind::Append as u16, &append, &batch), Answer::Closed));
    }
    // The control port: a made-up proof, then a metadata write deleting the topic; a Raft
    // vote of a huge term instead of the proof; a vote with no hello at all.
    let target = leader % 3 + 1;
    let metadata_leader = c.status().unwrap().metadata_leader;
    let control_hello =
        control_json(&Request::Hello { cluster_id: cluster.into(), node_id: leader, to: target, nonce: [7; 32] });
    let vote = control_json(&Request::Vote(VoteRequest::new(Vote::new(1 << 40, u64::from(leader)), None)));
    let delete = control_json(&Request::Write(MetaCommand::DeleteTopic { name: "t".into() }));
    let mut s = TcpStream::connect(c.node(target).peer).unwrap();
    let challenge = control_exchange(&mut s, &control_hello).expect("a challenge");
    assert!(challenge.contains("Challenge"), "{challenge}");
    let refused = control_exchange(&mut s, &control_json(&Request::Proof { proof: [9; 32] })).expect("an answer");
    assert!(refused.contains("Refused") && refused.contains("could not prove"), "{refused}");
    assert!(control_exchange(&mut s, &delete).is_none(), "the link stayed open");
    let mut s = TcpStream::connect(c.node(target).peer).unwrap();
    control_exchange(&mut s, &control_hello).expect("a challenge");
    let refused = control_exchange(&mut s, &vote).expect("an answer");
    assert!(refused.contains("Refused") && refused.contains("else than its proof"), "{refused}");
    let mut s = TcpStream::connect(c.node(target).peer).unwrap();
    let refused = control_exchange(&mut s, &vote).expect("an answer");
    assert!(refused.contains("Refused") && refused.contains("must be a hello"), "{refused}");
    // The cluster goes on as if nothing happened.
    if !load.try_wait_acked(2500, Duration::from_secs(30)) {
        panic!("the load stalled after the attack; status {:#?}\n{}", c.status(), c.logs());
    }
    let acked = load.stop();
    c.wait_caught_up("every replica caught up", Duration::from_secs(30));
    let status = c.status().unwrap();
    assert_eq!(status.partitions.len(), 1, "the topic is gone: {status:?}");
    assert!(status.partitions[0].epoch < FORGED_EPOCH, "the forged epoch was adopted: {status:?}");
    assert_eq!(status.partitions[0].epoch, epoch_before, "the partition changed epochs: {status:?}");
    let v = check(&c.bootstrap(), "t", 1, &acked, ReadFrom::Leader);
    assert!(v.acked > 0 && v.is_clean(), "{v:?}\n{}", c.logs());
    let cluster_view = final_log(&c.bootstrap(), "t");
    for n in 1..=3 {
        let only = node_view(&mut c, n);
        assert_eq!(only, cluster_view, "node {n}'s log differs from the cluster's");
        assert!(!only.values().any(|v| v == b"forged"), "node {n} stores the forged record");
    }
    // Refused and logged, saying why.
    for n in (1..=3).filter(|&n| n != leader) {
        let log = c.node(n).log();
        for expected in ["could not prove it holds the cluster secret", "before the node proved the cluster secret"] {
            assert!(log.contains(expected), "node {n} did not log {expected:?}:\n{log}");
        }
    }
    assert!(c.node(target).log().contains("control link from"), "{}", c.node(target).log());
    assert_eq!(c.status().unwrap().metadata_leader, metadata_leader, "the metadata leader changed");
}

/// A member that proved the secret but sends what no leader would: an append of a stale
/// epoch is answered (not applied), one in another node's name closes the link; a foreign
/// cluster's hello and garbage on the control port are refused.
#[test]
fn bad_input_from_an_authenticated_node_is_refused_and_harmless() {
    let mut c = Cluster::start("badpeer", "master-slave");
    c.create_topic("t", 1, 3);
    let load = Load::start(&c.bootstrap(), "t", 1, Acks::Quorum);
    load.wait_acked(500, Duration::from_secs(30));
    let leader = c.leaders("t")[0];
    let target = leader % 3 + 1; // a follower
    let addr = c.node(target).client;
    // A hello from another cluster, and one meant for another node: refused, closed.
    for (cluster, to) in [("other-cluster", target), ("test-badpeer", leader)] {
        let mut s = TcpStream::connect(addr).unwrap();
        let e = exchange(&mut s, PeerKind::Hello as u16, &hello(cluster, leader, to, [4; 32]), &[]).error();
        assert_eq!(e.code, ErrorCode::AuthenticationFailed as u16, "{e:?}");
        assert!(is_closed(&mut s));
    }
    // A real handshake, then a stale epoch: answered with the newer epoch, not applied.
    let mut s = TcpStream::connect(addr).unwrap();
    handshake(&mut s, "test-badpeer", leader, target, &c.secret(), [5; 32]).0.ok();
    let (stale, batch) = forged_append(leader, 0);
    let reply: AppendReply = decode(&exchange(&mut s, PeerKind::Append as u16, &stale, &batch).ok()).unwrap();
    assert_eq!(reply.kind, REPLY_STALE_EPOCH, "a stale append must be refused");
    // An append in another node's name: refused, closed.
    let (other, batch) = forged_append(leader % 3 + 1, 99);
    assert_eq!(
        exchange(&mut s, PeerKind::Append as u16, &other, &batch).error().code,
        ErrorCode::InvalidRequest as u16
    );
    assert!(is_closed(&mut s));
    // Garbage and a foreign hello on the control port: closed, logged.
    let mut s = TcpStream::connect(c.node(target).peer).unwrap();
    s.write_all(&[0xAB; 300]).unwrap();
    assert!(is_closed(&mut s));
    let mut s = TcpStream::connect(c.node(target).peer).unwrap();
    let foreign =
        control_json(&Request::Hello { cluster_id: "other-cluster".into(), node_id: 1, to: target, nonce: [1; 32] });
    let answer = control_exchange(&mut s, &foreign).expect("an answer");
    assert!(answer.contains("Refused"), "{answer}");
    // The cluster goes on; nothing forged entered any log.
    load.wait_acked(1000, Duration::from_secs(30));
    let acked = load.stop();
    let v = check(&c.bootstrap(), "t", 1, &acked, ReadFrom::Any);
    assert!(v.acked > 0 && v.is_clean(), "{v:?}\n{}", c.logs());
    let log = c.node(target).log();
    for expected in ["other-cluster", "meant for node", "sent an append as node", "control link from"] {
        assert!(log.contains(expected), "the node did not log {expected:?}:\n{log}");
    }
}

/// A node started with another secret cannot join: its links are refused both ways, and the
/// cluster it tried to join goes on.
#[test]
fn a_node_with_the_wrong_secret_is_kept_out() {
    let mut c = Cluster::start("wrongsecret", "master-slave");
    c.create_topic("t", 1, 3);
    let load = Load::start(&c.bootstrap(), "t", 1, Acks::Quorum);
    load.wait_acked(500, Duration::from_secs(30));
    let leader = c.leaders("t")[0];
    let outsider = leader % 3 + 1;
    c.node(outsider).kill();
    let config = c.node(outsider).dir.join("node.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let mut table: toml::Table = text.parse().unwrap();
    let wrong = c.node(outsider).dir.join("wrong.secret");
    std::fs::write(&wrong, "a different secret of enough bytes\n").unwrap();
    table["cluster"].as_table_mut().unwrap().insert("secret_file".into(), wrong.display().to_string().into());
    std::fs::write(&config, toml::to_string(&table).unwrap()).unwrap();
    c.node(outsider).restart();
    load.wait_acked(2000, Duration::from_secs(30));
    // Out of the in-sync set after the lag allowance, and it stays out.
    c.wait_for("the outsider out of the in-sync set", Duration::from_secs(30), |s| {
        !s.partitions[0].in_sync.contains(&outsider)
    });
    load.wait_acked(1000, Duration::from_secs(30));
    let status = c.status().unwrap();
    assert!(!status.partitions[0].in_sync.contains(&outsider), "the outsider is in sync: {status:?}");
    assert!(status.nodes.iter().any(|n| n.node_id == outsider && !n.alive), "the outsider is alive: {status:?}");
    let acked = load.stop();
    let v = check(&c.bootstrap(), "t", 1, &acked, ReadFrom::Leader);
    assert!(v.acked > 0 && v.is_clean(), "{v:?}\n{}", c.logs());
    let log = c.node(leader).log();
    assert!(log.contains(&format!("node {outsider} could not prove it holds the cluster secret")), "{log}");
    let log = c.node(outsider).log();
    assert!(log.contains("could not prove it holds the cluster secret"), "{log}");
}

fn client_as(bootstrap: &str, user: &str, password: &str) -> quorra::client::ClientConfig {
    quorra::client::ClientConfig {
        credentials: Some(quorra::client::Credentials { user: user.into(), password: password.into() }),
        ..quorra::client::ClientConfig::with_bootstrap(bootstrap)
    }
}

/// The error code of a result (None: it succeeded).
fn code<T>(r: Result<T, quorra::client::ClientError>) -> Option<ErrorCode> {
    r.err().map(|e| e.code().unwrap_or(ErrorCode::Unknown))
}

/// What a client as `config` gets for: creating topic `topic`, producing one record to it,
/// adding user `new_user`, listing the users (the error codes, None for success). Each on a
/// connection of its own (a refused request closes its connection).
fn try_everything(config: quorra::client::ClientConfig, topic: &str, new_user: &str) -> [Option<ErrorCode>; 4] {
    use quorra::client::Client;
    let (topic, new_user) = (topic.to_string(), new_user.to_string());
    common::run(move || async move {
        let fresh = || Client::connect(config.clone());
        let create = match fresh().await {
            Ok(c) => code(c.create_topic(&topic, 1, 1).await),
            Err(e) => code::<()>(Err(e)),
        };
        let mut b = quorra::protocol::batch::BatchBuilder::with_capacity(64);
        b.push(None, b"hello", 1);
        let produce = match fresh().await {
            Ok(c) => code(c.produce_batches(&topic, 0, Acks::Leader, vec![b.finish(0, 0, 0)]).await),
            Err(e) => code::<()>(Err(e)),
        };
        let add = match fresh().await {
            Ok(c) => code(c.upsert_user(&new_user, "a password").await),
            Err(e) => code::<()>(Err(e)),
        };
        let list = match fresh().await {
            Ok(c) => code(c.list_users().await),
            Err(e) => code::<()>(Err(e)),
        };
        [create, produce, add, list]
    })
}

/// `[auth] enabled` on a single node: nothing but authentication before it; the first user
/// from the broker's own machine; wrong passwords and unknown users refused alike; only
/// super users manage users; users survive a restart; the CLI authenticates.
#[test]
fn clients_authenticate_with_scram_and_only_super_users_manage_users_by_default() {
    use common::{config_file, scratch_dir, Broker};
    use quorra::client::ClientConfig;
    let dir = scratch_dir("scram");
    let config = config_file(dir.path(), "[auth]\nenabled = true\nsuper_users = [\"admin\"]\n");
    let mut broker = Broker::start(dir.path(), &["--config", config.to_str().unwrap()]);
    let b = broker.bootstrap();
    let anonymous = || ClientConfig::with_bootstrap(&b);
    let denied = Some(ErrorCode::AuthenticationFailed);
    // Before any user exists: a loopback client may create the first, and nothing else.
    let [create, produce, add, _] = try_everything(anonymous(), "t0", "admin");
    assert_eq!((create, produce, add), (denied, denied, None), "an anonymous client before any user");
    let [create, produce, add, list] = try_everything(anonymous(), "t0", "eve");
    assert_eq!([create, produce, add, list], [denied; 4], "an anonymous client once a user exists");
    // The password of "admin" is "a password" (set above).
    assert_eq!(try_everything(client_as(&b, "admin", "a password"), "t1", "bob"), [None; 4], "a super user");
    assert_eq!(try_everything(client_as(&b, "admin", "wrong"), "t2", "x"), [denied; 4], "a wrong password");
    assert_eq!(try_everything(client_as(&b, "nobody", "a password"), "t2", "x"), [denied; 4], "an unknown user");
    let not_authorized = Some(ErrorCode::NotAuthorized);
    assert_eq!(
        try_everything(client_as(&b, "bob", "a password"), "t3", "mallory"),
        [not_authorized; 4],
        "a user that is not a super user, without ACLs (deny by default)"
    );
    // Users are persisted; the CLI authenticates (and lists them).
    broker.restart();
    let b = broker.bootstrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_quorra"))
        .args(["user", "list", "--bootstrap", &b, "--user", "admin"])
        .env("QUORRA_PASSWORD", "a password")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "admin\nbob\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_quorra"))
        .args(["topic", "list", "--bootstrap", &b])
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("authentication_failed"), "{out:?}");
    // A deleted user is refused.
    let admin = client_as(&b, "admin", "a password");
    common::run(move || async move {
        quorra::client::Client::connect(admin).await.unwrap().delete_user("bob").await.unwrap()
    });
    assert_eq!(try_everything(client_as(&b, "bob", "a password"), "t4", "x"), [denied; 4], "a deleted user");
    let log = broker.log();
    assert!(log.contains("authentication of \"admin\" failed") && log.contains("authenticate first"), "{log}");
}

/// In a cluster, users and ACLs are replicated metadata: created on one node, they hold on
/// every node.
#[test]
fn users_are_replicated_metadata() {
    let mut c = Cluster::start_tuned("users", "hybrid", |config| {
        let mut auth = toml::Table::new();
        auth.insert("enabled".into(), true.into());
        auth.insert("super_users".into(), toml::Value::Array(vec!["admin".into()]));
        config.insert("auth".into(), auth.into());
    });
    let first = c.node(1).client.to_string();
    common::run(move || async move {
        let client =
            quorra::client::Client::connect(quorra::client::ClientConfig::with_bootstrap(&first)).await.unwrap();
        client.upsert_user("admin", "a password").await.unwrap();
    });
    for n in 2..=3 {
        let at = c.node(n).client.to_string();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let config = client_as(&at, "admin", "a password");
        let users = loop {
            let config = quorra::client::ClientConfig { follow_leaders: false, ..config.clone() };
            let got =
                common::run(move || async move { quorra::client::Client::connect(config).await?.list_users().await });
            match got {
                Ok(users) => break users,
                Err(e) if std::time::Instant::now() < deadline => {
                    assert_eq!(e.code(), Some(ErrorCode::AuthenticationFailed), "{e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("node {n} never accepted the user: {e}"),
            }
        };
        assert_eq!(users, vec!["admin".to_string()]);
    }
    // ACLs too: alice, allowed to create topics on node 1, may on node 3.
    let admin = client_as(&c.node(1).client.to_string(), "admin", "a password");
    common::run(move || async move {
        let client = quorra::client::Client::connect(admin).await.unwrap();
        client.upsert_user("alice", "her password").await.unwrap();
        client.create_acl(&acl("cluster", "", false, "create")).await.unwrap();
    });
    let alice = client_as(&c.node(3).client.to_string(), "alice", "her password");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let config = quorra::client::ClientConfig { follow_leaders: false, ..alice.clone() };
        match attempt(config, Op::CreateTopic("alices")) {
            Ok(()) => break,
            Err(e) if std::time::Instant::now() < deadline => {
                let waiting = [ErrorCode::AuthenticationFailed, ErrorCode::NotAuthorized];
                assert!(e.code().is_some_and(|code| waiting.contains(&code)), "{e}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("node 3 never applied alice's ACL: {e}"),
        }
    }
    let anonymous = c.node(3).client.to_string();
    let refused = common::run(move || async move {
        quorra::client::Client::connect(quorra::client::ClientConfig::with_bootstrap(&anonymous))
            .await
            .unwrap()
            .create_topic("t", 1, 1)
            .await
    });
    assert_eq!(refused.unwrap_err().code(), Some(ErrorCode::AuthenticationFailed));
}

/// One request of the ACL matrix.
#[derive(Debug, Clone)]
enum Op {
    CreateTopic(&'static str),
    DeleteTopic(&'static str),
    DescribeTopic(&'static str),
    Produce(&'static str),
    Fetch(&'static str),
    ListOffsets(&'static str),
    Commit { group: &'static str, topic: &'static str },
    FetchOffset { group: &'static str, topic: &'static str },
    InitProducer,
    ListUsers,
    AddUser(&'static str),
    ListAcls,
}

/// What `op` gets as `config` (None: it succeeded), on a connection of its own.
fn attempt(config: quorra::client::ClientConfig, op: Op) -> Result<(), quorra::client::ClientError> {
    common::run(move || async move {
        let c = quorra::client::Client::connect(config).await?;
        let wait = Duration::from_millis(10);
        match op {
            Op::CreateTopic(t) => c.create_topic(t, 1, 1).await.map(drop),
            Op::DeleteTopic(t) => c.delete_topic(t).await.map(drop),
            Op::DescribeTopic(t) => c.describe_topic(t).await.map(drop),
            Op::Produce(t) => {
                let mut b = quorra::protocol::batch::BatchBuilder::with_capacity(64);
                b.push(None, b"hello", 1);
                c.produce_batches(t, 0, Acks::Leader, vec![b.finish(0, 0, 0)]).await.map(drop)
            }
            Op::Fetch(t) => c.fetch(t, 0, 0, 4096, wait).await.map(drop),
            Op::ListOffsets(t) => {
                c.list_offsets(t, 0, quorra::protocol::messages::OFFSET_SPEC_LATEST, 0).await.map(drop)
            }
            Op::Commit { group, topic } => c.commit_offset(group, topic, 0, 0).await,
            Op::FetchOffset { group, topic } => c.fetch_offset(group, topic, 0).await.map(drop),
            Op::InitProducer => c.init_producer().await.map(drop),
            Op::ListUsers => c.list_users().await.map(drop),
            Op::AddUser(name) => c.upsert_user(name, "another password").await.map(drop),
            Op::ListAcls => c.list_acls().await.map(drop),
        }
    })
}

fn acl(resource: &str, name: &str, prefix: bool, operation: &str) -> quorra::protocol::acl::Acl {
    use quorra::protocol::acl::*;
    Acl {
        principal: "alice".into(),
        resource: match resource {
            "topic" => ResourceKind::Topic,
            "group" => ResourceKind::Group,
            _ => ResourceKind::Cluster,
        },
        pattern: if prefix { PatternKind::Prefix } else { PatternKind::Literal },
        name: if resource == "cluster" { CLUSTER_NAME.into() } else { name.into() },
        operation: Operation::parse(operation).unwrap(),
        permission: Permission::Allow,
    }
}

/// Every operation, with and without its grant, for topic, group and cluster resources,
/// literal and prefix: refused with `not_authorized` (naming the operation and resource)
/// without it; served with it; refused again once a deny is added beside the grant. A grant
/// of another operation on the same resource never serves. Denials are logged.
#[test]
fn acls_allow_exactly_what_they_grant_and_deny_by_default() {
    use common::{config_file, scratch_dir, Broker};
    use quorra::protocol::acl::{Operation, Permission};
    let dir = scratch_dir("acls");
    let config = config_file(dir.path(), "[auth]\nenabled = true\nsuper_users = [\"admin\"]\n");
    let mut broker = Broker::start(dir.path(), &["--config", config.to_str().unwrap()]);
    let b = broker.bootstrap();
    let admin = client_as(&b, "admin", "a password");
    let alice = client_as(&b, "alice", "her password");
    common::run(move || async move {
        let anonymous =
            quorra::client::Client::connect(quorra::client::ClientConfig::with_bootstrap(&b)).await.unwrap();
        anonymous.upsert_user("admin", "a password").await.unwrap();
        drop(anonymous);
        let c = quorra::client::Client::connect(admin).await.unwrap();
        c.upsert_user("alice", "her password").await.unwrap();
        for t in ["orders", "audit.eu", "doomed.1", "doomed.2"] {
            c.create_topic(t, 1, 1).await.unwrap();
        }
    });
    let admin = client_as(&broker.bootstrap(), "admin", "a password");
    let change = |acl: quorra::protocol::acl::Acl, add: bool| {
        let admin = admin.clone();
        common::run(move || async move {
            let c = quorra::client::Client::connect(admin).await.unwrap();
            if add {
                c.create_acl(&acl).await.unwrap();
            } else {
                c.delete_acl(&acl).await.unwrap();
            }
        })
    };
    // (request, its grant, an unrelated grant on the same resource)
    let rows: Vec<(Op, quorra::protocol::acl::Acl, quorra::protocol::acl::Acl)> = vec![
        (Op::CreateTopic("new.1"), acl("topic", "new.1", false, "create"), acl("topic", "new.1", false, "read")),
        (Op::CreateTopic("new.2"), acl("topic", "new.", true, "create"), acl("topic", "new.", true, "write")),
        (Op::CreateTopic("other"), acl("cluster", "", false, "create"), acl("cluster", "", false, "describe")),
        (
            Op::DeleteTopic("doomed.1"),
            acl("topic", "doomed.1", false, "delete"),
            acl("topic", "doomed.1", false, "write"),
        ),
        (Op::DeleteTopic("doomed.2"), acl("topic", "doomed", true, "delete"), acl("topic", "doomed", true, "read")),
        (
            Op::DescribeTopic("orders"),
            acl("topic", "orders", false, "describe"),
            acl("topic", "orders", false, "create"),
        ),
        (Op::DescribeTopic("orders"), acl("topic", "ord", true, "read"), acl("topic", "ord", true, "create")),
        (Op::Produce("orders"), acl("topic", "orders", false, "write"), acl("topic", "orders", false, "read")),
        (Op::Produce("audit.eu"), acl("topic", "audit.", true, "write"), acl("topic", "audit.", true, "read")),
        (Op::Fetch("orders"), acl("topic", "orders", false, "read"), acl("topic", "orders", false, "write")),
        (Op::Fetch("audit.eu"), acl("topic", "*", false, "read"), acl("topic", "*", false, "describe")),
        (Op::ListOffsets("orders"), acl("topic", "o", true, "describe"), acl("topic", "o", true, "create")),
        (Op::InitProducer, acl("topic", "audit.", true, "write"), acl("topic", "audit.", true, "read")),
        (Op::InitProducer, acl("cluster", "", false, "write"), acl("cluster", "", false, "read")),
        (Op::ListUsers, acl("cluster", "", false, "describe"), acl("cluster", "", false, "create")),
        (Op::AddUser("carol"), acl("cluster", "", false, "alter"), acl("cluster", "", false, "describe")),
        (Op::ListAcls, acl("cluster", "", false, "all"), acl("topic", "*", false, "all")),
    ];
    // A group's requests need the group and the topic: the topic is granted throughout.
    let group_rows: Vec<(Op, quorra::protocol::acl::Acl, quorra::protocol::acl::Acl)> = vec![
        (
            Op::Commit { group: "g1", topic: "orders" },
            acl("group", "g1", false, "read"),
            acl("group", "g1", false, "describe"),
        ),
        (
            Op::Commit { group: "g2", topic: "orders" },
            acl("group", "g", true, "read"),
            acl("group", "g", true, "write"),
        ),
        (
            Op::FetchOffset { group: "g1", topic: "orders" },
            acl("group", "g1", false, "describe"),
            acl("group", "g1", false, "create"),
        ),
        (
            Op::FetchOffset { group: "g3", topic: "orders" },
            acl("group", "g", true, "read"),
            acl("group", "h", true, "read"),
        ),
    ];
    let not_authorized = Some(ErrorCode::NotAuthorized);
    let topic_read = acl("topic", "orders", false, "read");
    for (i, (op, grant, unrelated)) in rows.into_iter().chain(group_rows).enumerate() {
        let grouped = matches!(op, Op::Commit { .. } | Op::FetchOffset { .. });
        if grouped {
            change(topic_read.clone(), true);
        }
        change(unrelated.clone(), true);
        let refused = attempt(alice.clone(), op.clone());
        assert_eq!(code(refused.clone()), not_authorized, "row {i}: {op:?} with only {unrelated}");
        let message = refused.unwrap_err().to_string();
        assert!(message.contains("alice may not"), "row {i}: the refusal names who and what: {message}");
        change(grant.clone(), true);
        assert_eq!(code(attempt(alice.clone(), op.clone())), None, "row {i}: {op:?} with {grant}");
        // A deny of the operation the request needs (describe, where the grant implies it).
        let implied = matches!(op, Op::DescribeTopic(_) | Op::FetchOffset { .. }) && grant.operation == Operation::Read;
        let operation = if implied { Operation::Describe } else { grant.operation };
        let deny = quorra::protocol::acl::Acl { permission: Permission::Deny, operation, ..grant.clone() };
        change(deny.clone(), true);
        assert_eq!(code(attempt(alice.clone(), op.clone())), not_authorized, "row {i}: {op:?} with {grant} and {deny}");
        for acl in [grant, deny, unrelated] {
            change(acl, false);
        }
        if grouped {
            change(topic_read.clone(), false);
        }
    }
    // Only what alice may describe is listed; a commit needs the topic too.
    change(acl("topic", "audit.", true, "read"), true);
    let listed = common::run({
        let alice = alice.clone();
        move || async move { quorra::client::Client::connect(alice).await?.list_topics().await }
    });
    let names: Vec<String> = listed.unwrap().topics.into_iter().map(|t| t.name).collect();
    assert_eq!(names, vec!["audit.eu".to_string()]);
    change(acl("group", "g1", false, "read"), true);
    let without_topic = attempt(alice.clone(), Op::Commit { group: "g1", topic: "orders" });
    assert!(without_topic.unwrap_err().to_string().contains("alice may not read topic orders"));
    // Denials are logged with the peer's address; ACLs survive a restart and are listed.
    let log = broker.log();
    // (The first denial: later ones may be rate-limited.)
    assert!(
        log.contains("denied a request from 127.0.0.1") && log.contains("alice may not create topic new.1"),
        "{log}"
    );
    broker.restart();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_quorra"))
        .args(["acl", "list", "--bootstrap", &broker.bootstrap(), "--user", "admin"])
        .env("QUORRA_PASSWORD", "a password")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "allow alice read on topic audit. (prefix)\nallow alice read on group g1\n"
    );
}

/// One SCRAM-SHA-256 message on a raw connection: the server's answer (or its error code).
fn scram_step(s: &mut TcpStream, message: String) -> Result<quorra::protocol::messages::AuthenticateResponse, u16> {
    use quorra::protocol::messages::{ApiKind, AuthenticateRequest, AuthenticateResponse};
    let req = AuthenticateRequest { mechanism: "SCRAM-SHA-256".into(), message };
    match exchange(s, ApiKind::Authenticate as u16, &encode(&req), &[]) {
        Answer::Ok(a) => Ok(decode::<AuthenticateResponse>(&a).unwrap()),
        Answer::Error(e) => Err(e.code),
        Answer::Closed => Err(0),
    }
}

/// An eavesdropper's replay: a whole SCRAM exchange recorded from a successful login, its
/// client messages sent again on a new connection. The server's nonce differs, so the
/// recorded proof fails: `authentication_failed`, the connection is closed, and what it
/// then sends is never served.
#[test]
fn a_recorded_scram_exchange_replayed_on_another_connection_is_refused() {
    use common::{config_file, scratch_dir, Broker};
    use quorra::protocol::scram::ClientExchange;
    let dir = scratch_dir("scram-replay");
    let config = config_file(dir.path(), "[auth]\nenabled = true\nsuper_users = [\"admin\"]\n");
    let broker = Broker::start(dir.path(), &["--config", config.to_str().unwrap()]);
    let b = broker.bootstrap();
    let first_user = quorra::client::ClientConfig::with_bootstrap(&b);
    common::run(move || async move {
        let c = quorra::client::Client::connect(first_user).await.unwrap();
        c.upsert_user("admin", "a password").await.unwrap();
    });
    // The genuine login, recorded.
    let mut s = TcpStream::connect(&b).unwrap();
    let (client, client_first) = ClientExchange::start("admin", "a password", "rOprNGfwEbeRWgbNEkqO").unwrap();
    let server_first = scram_step(&mut s, client_first.clone()).expect("server-first");
    assert!(!server_first.done);
    let (verdict, client_final) = client.answer(&server_first.message).unwrap();
    let server_final = scram_step(&mut s, client_final.clone()).expect("server-final");
    assert!(server_final.done && server_final.principal == "admin", "{server_final:?}");
    verdict.verify(&server_final.message).expect("the genuine server");
    drop(s);
    // The replay, on a new connection.
    let mut s = TcpStream::connect(&b).unwrap();
    let replayed_first = scram_step(&mut s, client_first).expect("a server-first for the replayed client-first");
    assert_ne!(replayed_first.message, server_first.message, "the server chose the same nonce again");
    let refused = scram_step(&mut s, client_final);
    assert_eq!(refused.err(), Some(ErrorCode::AuthenticationFailed as u16), "the replayed proof was accepted");
    // Nothing more is served on it.
    let list = quorra::protocol::messages::ApiKind::ListTopics as u16;
    assert!(matches!(exchange(&mut s, list, &[], &[]), Answer::Closed), "the connection stayed open");
    let log = broker.log();
    assert!(log.contains("authentication of \"admin\" failed"), "{log}");
}
