//! TLS on the client port, with real processes: only TLS clients that trust the broker's CA
//! get in; client certificates from the configured CA authenticate as their common name
//! (mTLS), others (another CA, expired) are refused; bad TLS input from one client does not
//! disturb others; certificates are reloaded on SIGHUP.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{config_file, scratch_dir, Broker};
use quorra::client::{Client, ClientConfig, ClientError, Credentials};
use quorra::net::tls::ClientTls;
use quorra::protocol::messages::Acks;
use quorra::protocol::ErrorCode;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// A certificate authority of the test's own.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        Ca { issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap() }
    }

    fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, self.issuer.pem()).unwrap();
        path
    }

    /// A leaf certificate for `sans` with common name `cn`, valid now unless `expired`;
    /// written as `<name>.pem` and `<name>.key`.
    fn issue(&self, dir: &Path, name: &str, cn: &str, sans: &[&str], expired: bool) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }
}

fn tls_client(bootstrap: &str, ca: &Path, identity: Option<&(PathBuf, PathBuf)>, user: Option<&str>) -> ClientConfig {
    let identity = identity.map(|(c, k)| (c.as_path(), k.as_path()));
    ClientConfig {
        tls: Some(ClientTls::from_files(ca, identity, None).unwrap()),
        credentials: user.map(|u| Credentials { user: u.into(), password: "a password".into() }),
        connect_timeout: Duration::from_secs(3),
        ..ClientConfig::with_bootstrap(bootstrap)
    }
}

/// Produces one record to `topic` and reads it back.
fn round_trip(config: ClientConfig, topic: &'static str) -> Result<(), ClientError> {
    common::run(move || async move {
        let c = Client::connect(config).await?;
        let mut b = quorra::protocol::batch::BatchBuilder::with_capacity(64);
        b.push(None, b"over TLS", 1);
        let offset = c.produce_batches(topic, 0, Acks::Leader, vec![b.finish(0, 0, 0)]).await?.base_offset;
        let fetched = c.fetch(topic, 0, offset, 1 << 16, Duration::from_millis(100)).await?;
        assert!(fetched.batches.windows(8).any(|w| w == b"over TLS"), "the record came back");
        Ok(())
    })
}

fn create_topic(config: ClientConfig, topic: &'static str) -> Result<(), ClientError> {
    common::run(move || async move { Client::connect(config).await?.create_topic(topic, 1, 1).await.map(drop) })
}

/// Whether the broker closed `s` (EOF or reset) within `within`, reading what it sends.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn tls_clients_get_in_certificates_authenticate_and_bad_tls_input_is_harmless() {
    let dir = scratch_dir("tls");
    let d = dir.path();
    let ca = Ca::new("Quorra test CA");
    let ca_file = ca.write(d, "ca");
    let (server_cert, server_key) = ca.issue(d, "broker", "broker", &["127.0.0.1"], false);
    let alice = ca.issue(d, "alice", "alice", &[], false);
    let expired = ca.issue(d, "expired", "alice", &[], true);
    let other_ca = Ca::new("Another CA");
    let other_ca_file = other_ca.write(d, "other-ca");
    let mallory = other_ca.issue(d, "mallory", "alice", &[], false);
    let config = config_file(
        d,
        &format!(
            "frame_timeout_ms = 1500\n[auth]\nenabled = true\nsuper_users = [\"admin\"]\n\
             [tls]\ncert_file = {:?}\nkey_file = {:?}\nca_file = {:?}\nclient_auth = \"optional\"\n",
            server_cert, server_key, ca_file
        ),
    );
    let broker = Broker::start(d, &["--config", config.to_str().unwrap()]);
    let b = broker.bootstrap();

    // A plain client does not get in.
    let plain = ClientConfig { connect_timeout: Duration::from_secs(3), ..ClientConfig::with_bootstrap(&b) };
    let refused = common::run(move || async move { Client::connect(plain).await?.list_topics().await });
    assert!(refused.is_err(), "a plain-TCP client must not be served by a TLS port");

    // Over TLS: the first user from loopback, then SCRAM as it.
    let anonymous = tls_client(&b, &ca_file, None, None);
    common::run(move || async move { Client::connect(anonymous).await?.upsert_user("admin", "a password").await })
        .unwrap();
    let admin = tls_client(&b, &ca_file, None, Some("admin"));
    create_topic(admin.clone(), "secure").unwrap();
    round_trip(admin.clone(), "secure").unwrap();

    // A client that trusts another CA refuses the broker.
    let wrong_trust = tls_client(&b, &other_ca_file, None, Some("admin"));
    let e = create_topic(wrong_trust, "x").unwrap_err();
    assert!(e.is_connection_error(), "{e}");

    // alice's certificate authenticates her: refused as alice (no ACL), not as anonymous.
    let as_alice = tls_client(&b, &ca_file, Some(&alice), None);
    let e = round_trip(as_alice.clone(), "secure").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotAuthorized), "{e}");
    assert!(e.to_string().contains("alice may not"), "{e}");
    let grant = quorra::protocol::acl::Acl {
        principal: "alice".into(),
        resource: quorra::protocol::acl::ResourceKind::Topic,
        pattern: quorra::protocol::acl::PatternKind::Literal,
        name: "secure".into(),
        operation: quorra::protocol::acl::Operation::All,
        permission: quorra::protocol::acl::Permission::Allow,
    };
    let admin2 = admin.clone();
    common::run(move || async move { Client::connect(admin2).await?.create_acl(&grant).await }).unwrap();
    round_trip(as_alice, "secure").unwrap();

    // Certificates from another CA and expired ones are refused in the handshake.
    for (what, identity) in [("another CA", &mallory), ("expired", &expired)] {
        let e = round_trip(tls_client(&b, &ca_file, Some(identity), None), "secure").unwrap_err();
        assert!(e.is_connection_error() || e.code() == Some(ErrorCode::AuthenticationFailed), "{what}: {e}");
        round_trip(admin.clone(), "secure").unwrap();
    }

    // Garbage instead of a handshake, a handshake that stalls, and one byte a second: each
    // closed, none disturbs a client being served meanwhile.
    let mut garbage = TcpStream::connect(&b).unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\nHost: quorra\r\n\r\n").unwrap();
    let mut stalled = TcpStream::connect(&b).unwrap();
    let mut slow = TcpStream::connect(&b).unwrap();
    let started = Instant::now();
    for byte in [0x16u8, 0x03, 0x01] {
        slow.write_all(&[byte]).unwrap();
        round_trip(admin.clone(), "secure").unwrap();
        std::thread::sleep(Duration::from_millis(700));
    }
    assert!(closed_within(&mut garbage, Duration::from_secs(1)), "garbage is refused at once");
    assert!(closed_within(&mut stalled, Duration::from_secs(5)), "a stalled handshake is closed");
    assert!(closed_within(&mut slow, Duration::from_secs(5)), "a one-byte-a-second handshake is closed");
    assert!(started.elapsed() < Duration::from_secs(10));
    round_trip(admin.clone(), "secure").unwrap();

    // The CLI speaks TLS.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_quorra"))
        .args(["topic", "list", "--bootstrap", &b, "--user", "admin", "--tls-ca", ca_file.to_str().unwrap()])
        .env("QUORRA_PASSWORD", "a password")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("secure"), "{out:?}");
    let log = broker.log();
    assert!(log.contains("TLS handshake with 127.0.0.1"), "handshake failures are logged: {log}");
}

fn wait_for_log(broker: &Broker, needle: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !broker.log().contains(needle) {
        assert!(Instant::now() < deadline, "the log never said {needle:?}:\n{}", broker.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn certificates_are_reloaded_on_sighup() {
    let dir = scratch_dir("tls-reload");
    let d = dir.path();
    let (old_ca, new_ca) = (Ca::new("Old CA"), Ca::new("New CA"));
    let (old_ca_file, new_ca_file) = (old_ca.write(d, "old-ca"), new_ca.write(d, "new-ca"));
    let (cert, key) = old_ca.issue(d, "broker", "broker", &["127.0.0.1"], false);
    let config = config_file(d, &format!("[tls]\ncert_file = {cert:?}\nkey_file = {key:?}\n"));
    let broker = Broker::start(d, &["--config", config.to_str().unwrap()]);
    let b = broker.bootstrap();
    create_topic(tls_client(&b, &old_ca_file, None, None), "t").unwrap();
    assert!(create_topic(tls_client(&b, &new_ca_file, None, None), "u").unwrap_err().is_connection_error());

    // A broken file: the old certificate stays, and the log says so.
    std::fs::write(&cert, "not a certificate").unwrap();
    let hup = || {
        assert!(std::process::Command::new("kill")
            .args(["-HUP", &broker.pid().unwrap().to_string()])
            .status()
            .unwrap()
            .success())
    };
    hup();
    wait_for_log(&broker, "TLS certificates not reloaded", Duration::from_secs(10));
    round_trip(tls_client(&b, &old_ca_file, None, None), "t").unwrap();

    // The new certificate, from the new CA: served from the next connection on.
    let (new_cert, new_key) = new_ca.issue(d, "broker-new", "broker", &["127.0.0.1"], false);
    std::fs::rename(new_cert, &cert).unwrap();
    std::fs::rename(new_key, &key).unwrap();
    hup();
    wait_for_log(&broker, "TLS certificates reloaded", Duration::from_secs(10));
    round_trip(tls_client(&b, &new_ca_file, None, None), "t").unwrap();
    assert!(round_trip(tls_client(&b, &old_ca_file, None, None), "t").unwrap_err().is_connection_error());
}

/// A three-node master-slave cluster with `[tls]`: every link (client port, data links,
/// control links) speaks TLS, nodes present certificates naming `node-<id>.<cluster id>`,
/// and records replicate to every node. A certificate of one node cannot speak for another.
#[test]
fn a_tls_cluster_replicates_and_a_node_certificate_speaks_only_for_its_node() {
    use common::cluster::Cluster;
    use quorra::protocol::peer::{PeerChallenge, PeerHello, PeerKind};
    let certs = scratch_dir("tls-cluster-certs");
    let d = certs.path().to_path_buf();
    let ca = Ca::new("Cluster CA");
    let ca_file = ca.write(&d, "ca");
    let cluster_id = "test-tls-cluster";
    for n in 1..=3 {
        let name = quorra::net::tls::node_name(cluster_id, n);
        ca.issue(&d, &format!("node{n}"), &format!("node-{n}"), &["127.0.0.1", &name], false);
    }
    let tune = |config: &mut toml::Table| {
        let id = config["cluster"]["node_id"].as_integer().unwrap();
        let mut tls = toml::Table::new();
        tls.insert("cert_file".into(), d.join(format!("node{id}.pem")).display().to_string().into());
        tls.insert("key_file".into(), d.join(format!("node{id}.key")).display().to_string().into());
        tls.insert("ca_file".into(), ca_file.display().to_string().into());
        tls.insert("client_auth".into(), "optional".into());
        config.insert("tls".into(), tls.into());
    };
    let mut c = Cluster::start_tuned("tls-cluster", "master-slave", tune);
    let client = tls_client(&c.bootstrap(), &ca_file, None, None);
    c.client_template = Some(client.clone());
    let config = client.clone();
    common::run(move || async move { Client::connect(config).await?.create_topic("t", 1, 3).await }).unwrap();
    c.wait_in_sync(3, Duration::from_secs(30));
    let config = client.clone();
    common::run(move || async move {
        let c = Client::connect(config).await?;
        for i in 0..100u32 {
            let mut b = quorra::protocol::batch::BatchBuilder::with_capacity(64);
            b.push(None, format!("record {i}").as_bytes(), 1);
            c.produce_batches("t", 0, Acks::All, vec![b.finish(0, 0, 0)]).await?;
        }
        Ok::<_, ClientError>(())
    })
    .unwrap();
    c.wait_caught_up("every replica holds the 100 records", Duration::from_secs(30));
    let status = c.status().unwrap();
    // (100 records and the leader's epoch marker.)
    assert_eq!(status.partitions[0].high_watermark, 101, "{status:?}");
    let config = client.clone();
    let fetched = common::run(move || async move {
        Client::connect(config).await?.fetch("t", 0, 0, 1 << 20, Duration::from_millis(100)).await
    })
    .unwrap();
    for i in [0, 57, 99] {
        let wanted = format!("record {i}");
        assert!(fetched.batches.windows(wanted.len()).any(|w| w == wanted.as_bytes()), "{wanted} over TLS");
    }

    // Node 3's certificate, saying hello as node 2 on node 1's client port: refused before
    // the secret is even asked for. As node 3, it gets the challenge.
    let node1 = c.node(1).client;
    // A TLS connection to node 1 at `addr` presenting node 3's certificate.
    let presenting = |addr, cert: &str| {
        let identity = (d.join(format!("{cert}.pem")), d.join(format!("{cert}.key")));
        let tls = ClientTls::from_files(&ca_file, Some((&identity.0, &identity.1)), None).unwrap();
        let name = rustls::pki_types::ServerName::try_from(quorra::net::tls::node_name(cluster_id, 1)).unwrap();
        let conn = rustls::ClientConnection::new(tls.parts().0, name).unwrap();
        rustls::StreamOwned::new(conn, TcpStream::connect(addr).unwrap())
    };
    let as_node3_to_node1 = |addr| presenting(addr, "node3");
    let hello_as = |claimed: u32| {
        let mut s = as_node3_to_node1(node1);
        let hello = quorra::protocol::encode(&PeerHello {
            cluster_id: cluster_id.into(),
            node_id: claimed,
            to: 1,
            nonce: [5; 32],
        });
        common::raw::exchange(&mut s, PeerKind::Hello as u16, &hello, &[])
    };
    let refused = hello_as(2).error();
    assert_eq!(refused.code, ErrorCode::AuthenticationFailed as u16);
    assert!(refused.message.contains("no certificate naming node-2.test-tls-cluster"), "{}", refused.message);
    let challenge: PeerChallenge = quorra::protocol::decode(&hello_as(3).ok()).unwrap();
    assert_eq!(challenge.node_id, 1);

    // The same on the control port: node 3's certificate cannot say hello as node 2.
    let mut s = as_node3_to_node1(c.node(1).peer);
    s.sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let hello =
        quorra::cluster::rpc::Request::Hello { cluster_id: cluster_id.into(), node_id: 2, to: 1, nonce: [6; 32] };
    s.write_all(&quorra::cluster::rpc::encode(&hello)).unwrap();
    let mut head = [0u8; 8];
    s.read_exact(&mut head).unwrap();
    let mut body = vec![0u8; u32::from_le_bytes(head[..4].try_into().unwrap()) as usize];
    s.read_exact(&mut body).unwrap();
    let reply = String::from_utf8_lossy(&body);
    assert!(reply.contains("Refused") && reply.contains("no certificate naming node-2.test-tls-cluster"), "{reply}");

    // A certificate naming node 3 from another CA, and an expired one from the cluster's
    // CA: the handshake fails on both ports, before any hello is read.
    let other_ca = Ca::new("Another CA");
    let node3_name = quorra::net::tls::node_name(cluster_id, 3);
    other_ca.issue(&d, "forged-node3", "node-3", &["127.0.0.1", &node3_name], false);
    ca.issue(&d, "expired-node3", "node-3", &["127.0.0.1", &node3_name], true);
    for cert in ["forged-node3", "expired-node3"] {
        let mut s = presenting(node1, cert);
        let hello =
            quorra::protocol::encode(&PeerHello { cluster_id: cluster_id.into(), node_id: 3, to: 1, nonce: [7; 32] });
        let answer = common::raw::exchange(&mut s, PeerKind::Hello as u16, &hello, &[]);
        assert!(matches!(answer, common::raw::Answer::Closed), "{cert} on the data port: {answer:?}");
        let mut s = presenting(c.node(1).peer, cert);
        s.sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let hello =
            quorra::cluster::rpc::Request::Hello { cluster_id: cluster_id.into(), node_id: 3, to: 1, nonce: [8; 32] };
        let refused = s.write_all(&quorra::cluster::rpc::encode(&hello)).and_then(|_| s.read_exact(&mut head));
        assert!(refused.is_err(), "{cert} on the control port must not be answered");
    }
    let log = c.node(1).log();
    assert!(log.contains("UnknownIssuer") || log.contains("unknown issuer"), "another CA is logged: {log}");
    assert!(log.contains("Expired") || log.contains("expired"), "an expired certificate is logged");
    // The cluster is unharmed.
    assert_eq!(c.status().unwrap().partitions[0].high_watermark, 101);
}

/// `examples/secure/` as the README's tour uses it: certificates from its script
/// (openssl), three master-slave nodes with TLS, SCRAM users and ACLs; a plain client
/// refused; the first user from loopback; a user with an ACL and alice's certificate.
#[test]
fn the_secure_example_cluster_works_as_documented() {
    use common::cluster::Cluster;
    let certs = scratch_dir("secure-certs");
    let d = certs.path().to_path_buf();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/secure/make-certs.sh");
    let made = std::process::Command::new(&script)
        .arg(&d)
        .env("QUORRA_CLUSTER_ID", "test-secure")
        .output()
        .expect("examples/secure/make-certs.sh runs (it needs openssl)");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let tune = |config: &mut toml::Table| {
        let tls = config.get_mut("tls").and_then(toml::Value::as_table_mut).expect("the example has [tls]");
        for key in ["cert_file", "key_file", "ca_file"] {
            let shipped = tls[key].as_str().unwrap().to_string();
            let file = Path::new(&shipped).file_name().unwrap();
            tls.insert(key.into(), d.join(file).display().to_string().into());
        }
    };
    let mut c = Cluster::start_tuned("secure", "secure", tune);
    let b = c.bootstrap();
    let ca_file = d.join("ca.pem");
    let plain = ClientConfig { connect_timeout: Duration::from_secs(3), ..ClientConfig::with_bootstrap(&b) };
    assert!(common::run(move || async move { Client::connect(plain).await?.list_topics().await }).is_err());
    let anonymous = tls_client(&b, &ca_file, None, None);
    common::run(move || async move { Client::connect(anonymous).await?.upsert_user("admin", "a password").await })
        .unwrap();
    let admin = tls_client(&b, &ca_file, None, Some("admin"));
    c.client_template = Some(admin.clone());
    let config = admin.clone();
    common::run(move || async move {
        let c = Client::connect(config).await?;
        c.create_topic("orders", 1, 3).await?;
        c.upsert_user("bob", "a password").await?;
        let acl = |principal: &str, operation| quorra::protocol::acl::Acl {
            principal: principal.into(),
            resource: quorra::protocol::acl::ResourceKind::Topic,
            pattern: quorra::protocol::acl::PatternKind::Literal,
            name: "orders".into(),
            operation,
            permission: quorra::protocol::acl::Permission::Allow,
        };
        c.create_acl(&acl("bob", quorra::protocol::acl::Operation::Write)).await?;
        c.create_acl(&acl("alice", quorra::protocol::acl::Operation::Read)).await?;
        Ok::<_, ClientError>(())
    })
    .unwrap();
    c.wait_in_sync(3, Duration::from_secs(30));
    let bob = tls_client(&b, &ca_file, None, Some("bob"));
    let config = bob.clone();
    common::run(move || async move {
        let mut batch = quorra::protocol::batch::BatchBuilder::with_capacity(64);
        batch.push(None, b"secure order", 1);
        Client::connect(config).await?.produce_batches("orders", 0, Acks::All, vec![batch.finish(0, 0, 0)]).await
    })
    .unwrap();
    let e = round_trip(bob, "orders").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotAuthorized), "bob may write, not read: {e}");
    let alice = tls_client(&b, &ca_file, Some(&(d.join("alice.pem"), d.join("alice.key"))), None);
    let fetched = common::run(move || async move {
        Client::connect(alice).await?.fetch("orders", 0, 0, 1 << 20, Duration::from_millis(100)).await
    })
    .unwrap();
    assert!(fetched.batches.windows(12).any(|w| w == b"secure order"), "alice (by certificate) reads");
    c.wait_caught_up("the order on every node", Duration::from_secs(30));
}
