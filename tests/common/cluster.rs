//! A cluster of real `quorra serve` processes on 127.0.0.1, with a fault-injecting TCP
//! proxy on every node-to-node path, and a checker of acknowledged messages.
//!
//! Node `i` reaches node `j` (control links and data links alike) only through the proxies
//! `i -> j`, so cutting them partitions the network one way; clients use the real addresses.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quorra::client::{Client, ClientConfig, ConsumerConfig, Producer, ProducerConfig, ReadFrom, StartFrom};
use quorra::protocol::messages::{Acks, ClusterStatusResponse};

use super::{payload, run, scratch_dir};

/// A TCP forwarder that can drop every connection and refuse new ones (a network cut).
pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (c, k) = (cut.clone(), conns.clone());
        std::thread::spawn(move || {
            for inbound in listener.incoming() {
                let Ok(inbound) = inbound else { continue };
                if c.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let Ok(outbound) = TcpStream::connect(target) else { continue };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                {
                    let mut k = k.lock().unwrap();
                    k.retain(|s: &TcpStream| s.peer_addr().is_ok());
                    k.push(inbound.try_clone().unwrap());
                    k.push(outbound.try_clone().unwrap());
                }
                for (mut from, mut to) in
                    [(inbound.try_clone().unwrap(), outbound.try_clone().unwrap()), (outbound, inbound)]
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = from.shutdown(Shutdown::Both);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy { addr, cut, conns }
    }

    /// Drops every connection through this path and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// Cluster tests run one at a time: each starts several processes, and ports must not be
/// handed out twice.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The first of a few loopback addresses (127.a.b.c) no other test process uses: `a` and
/// `b` from the process id, `c` from `run` (runs in one process take turns), for
/// [`Cluster::start_addressed`].
pub fn private_loopback(run: u8) -> Ipv4Addr {
    let pid = std::process::id();
    Ipv4Addr::new(127, 1 + ((pid >> 8) % 250) as u8, pid as u8, 10 + 10 * (run % 24))
}

/// A free port below the kernel's ephemeral range (32768+), so that the outgoing
/// connections of other processes cannot take it while its node is down.
pub fn free_port() -> SocketAddr {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = u64::from(std::process::id()) * 7919 + NEXT.fetch_add(1, Ordering::SeqCst) * 104_729;
    for i in 0..10_000u64 {
        let port = 20_000 + ((seed + i * 7) % 12_000) as u16;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        if TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free port");
}

pub struct Node {
    pub id: u32,
    pub client: SocketAddr,
    pub peer: SocketAddr,
    pub dir: PathBuf,
    /// The node's `QUORRA_FAULT_FILE`, when it was started with one.
    fault_file: Option<PathBuf>,
    child: Option<Child>,
    /// Stopped with SIGSTOP (it accepts connections but answers nothing).
    paused: std::cell::Cell<bool>,
}

impl Node {
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("broker.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_up(&self) -> bool {
        self.child.is_some()
    }

    /// Whether the node's process, started by the test, has ended on its own.
    pub fn has_exited(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().expect("wait").is_some())
    }

    /// `quorra serve` with this node's configuration, its stderr piped.
    fn serve_command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_quorra"));
        cmd.args(["serve", "--config"]).arg(self.dir.join("node.toml"));
        cmd.env("RUST_LOG", node_log_filter());
        if let Some(f) = &self.fault_file {
            cmd.env("QUORRA_FAULT_FILE", f);
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        cmd
    }

    /// Switches the node's disk faults (lines of `QUORRA_FAULT_FILE`, e.g. `sync=eio`; empty:
    /// none). The node must have been started with a fault file.
    pub fn set_disk_faults(&self, lines: &[&str]) {
        let f = self.fault_file.as_ref().expect("the node was started with a fault file");
        std::fs::write(f, lines.join("\n")).unwrap();
    }

    fn launch(&mut self) {
        let mut child = self.serve_command().spawn().expect("start quorra serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log_path = self.log_path();
        std::thread::spawn(move || {
            let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).unwrap();
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(log, "{line}");
                if line.contains("serving on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            panic!("node {} did not start; log:\n{}", self.id, self.log());
        }
        self.child = Some(child);
    }

    /// Runs the node (which must be down) in the foreground expecting it to refuse to start:
    /// its exit status and what it printed.
    pub fn run_expecting_exit(&self, timeout: Duration) -> (std::process::ExitStatus, String) {
        self.run_command_expecting_exit(self.serve_command(), timeout)
    }

    /// `quorra serve` with `args` instead of this node's configuration (a misconfigured start
    /// on its data directory), expected to refuse to start.
    pub fn run_serve_expecting_exit(&self, args: &[&str], timeout: Duration) -> (std::process::ExitStatus, String) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_quorra"));
        cmd.arg("serve").args(args);
        cmd.env("RUST_LOG", node_log_filter());
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        self.run_command_expecting_exit(cmd, timeout)
    }

    fn run_command_expecting_exit(
        &self,
        mut command: Command,
        timeout: Duration,
    ) -> (std::process::ExitStatus, String) {
        assert!(self.child.is_none(), "node {} is running", self.id);
        let mut child = command.spawn().expect("start quorra serve");
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("node {} kept running; it was expected to refuse to start", self.id);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = String::new();
        let _ = std::io::Read::read_to_string(&mut child.stderr.take().expect("piped"), &mut stderr);
        (status, stderr)
    }

    /// kill -9 (also of a stopped process: it is then no longer paused).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.paused.set(false);
    }

    /// SIGTERM, then waits up to `timeout` for the exit: its status and how long it took
    /// (None: still running at the deadline; it is then killed).
    pub fn terminate(&mut self, timeout: Duration) -> Option<(std::process::ExitStatus, Duration)> {
        let mut c = self.child.take()?;
        let asked = Instant::now();
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        while asked.elapsed() < timeout {
            if let Some(status) = c.try_wait().unwrap() {
                return Some((status, asked.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// Starts the node (again) after it stopped.
    pub fn start(&mut self) {
        self.restart()
    }

    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !super::can_bind_as_a_broker(self.client) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.launch();
    }

    pub fn signal(&self, sig: i32) {
        match sig {
            libc::SIGSTOP => self.paused.set(true),
            libc::SIGCONT => self.paused.set(false),
            _ => {}
        }
        if let Some(pid) = self.pid() {
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(pid as i32, sig) };
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        self.kill();
    }
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    _serial: std::sync::MutexGuard<'static, ()>,
    /// `(from, to)` -> the proxies (client port, peer port) node `from` uses to reach `to`.
    proxies: HashMap<(u32, u32), (Proxy, Proxy)>,
    _dir: tempfile::TempDir,
    /// How the harness's own clients (status, waits) speak to nodes with `[tls]` or
    /// `[auth]`: TLS settings and credentials taken from here.
    pub client_template: Option<ClientConfig>,
}

impl Cluster {
    /// Starts the nodes of `examples/<mode>/` (their settings, with test ports, data
    /// directories and a proxy on every node-to-node path).
    pub fn start(name: &str, mode: &str) -> Cluster {
        Cluster::start_tuned(name, mode, |_| {})
    }

    /// [`Cluster::start`], with `tune` applied to every node's configuration.
    pub fn start_tuned(name: &str, mode: &str, tune: impl Fn(&mut toml::Table)) -> Cluster {
        let serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let n = example_node_count(mode);
        let addrs: Vec<(u32, SocketAddr, SocketAddr)> = (1..=n).map(|i| (i, free_port(), free_port())).collect();
        let mut proxies = HashMap::new();
        for &(i, _, _) in &addrs {
            for &(j, client, peer) in &addrs {
                if i != j {
                    proxies.insert((i, j), (Proxy::start(client), Proxy::start(peer)));
                }
            }
        }
        let seen_from = |i: u32| -> Vec<(u32, SocketAddr, SocketAddr)> {
            addrs
                .iter()
                .map(|&(j, c, p)| {
                    if i == j {
                        (j, c, p)
                    } else {
                        let (pc, pp) = &proxies[&(i, j)];
                        (j, pc.addr, pp.addr)
                    }
                })
                .collect()
        };
        let (nodes, dir) = launch_all(name, mode, &addrs, seen_from, tune, false);
        Cluster { nodes, _serial: serial, proxies, _dir: dir, client_template: None }
    }

    /// The nodes of `examples/<mode>/` without proxies, node `i` on its own loopback address
    /// `first_ip + i - 1` (its links leave from it, so a firewall rule between two addresses
    /// cuts that link), each with a fault file (`Node::set_disk_faults`).
    pub fn start_addressed(name: &str, mode: &str, first_ip: Ipv4Addr, tune: impl Fn(&mut toml::Table)) -> Cluster {
        let serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let n = example_node_count(mode);
        let addrs: Vec<(u32, SocketAddr, SocketAddr)> = (1..=n)
            .map(|i| {
                let ip = Ipv4Addr::from(u32::from(first_ip) + i - 1);
                let on_ip = |a: SocketAddr| SocketAddr::new(ip.into(), a.port());
                (i, on_ip(free_port()), on_ip(free_port()))
            })
            .collect();
        let (nodes, dir) = launch_all(name, mode, &addrs, |_| addrs.clone(), tune, true);
        Cluster { nodes, _serial: serial, proxies: HashMap::new(), _dir: dir, client_template: None }
    }

    /// The file holding this cluster's secret (as the nodes read it: trimmed).
    pub fn secret(&self) -> Vec<u8> {
        let text = std::fs::read(self._dir.path().join(CLUSTER_SECRET_FILE)).unwrap();
        text.trim_ascii().to_vec()
    }

    pub fn node(&mut self, id: u32) -> &mut Node {
        &mut self.nodes[id as usize - 1]
    }

    /// Every node's real client address, comma-separated.
    pub fn bootstrap(&self) -> String {
        self.nodes.iter().map(|n| n.client.to_string()).collect::<Vec<_>>().join(",")
    }

    /// Bootstrap list of the nodes that are up (and not paused).
    pub fn bootstrap_up(&self) -> String {
        let up = self.nodes.iter().filter(|n| n.is_up() && !n.paused.get());
        up.map(|n| n.client.to_string()).collect::<Vec<_>>().join(",")
    }

    /// Cuts every link between `id` and the other nodes, both ways.
    pub fn isolate(&self, id: u32) {
        for ((from, to), (c, p)) in &self.proxies {
            if *from == id || *to == id {
                c.cut();
                p.cut();
            }
        }
    }

    pub fn heal(&self) {
        for (c, p) in self.proxies.values() {
            c.heal();
            p.heal();
        }
    }

    pub fn status(&self) -> Option<ClusterStatusResponse> {
        let (b, template) = (self.bootstrap_up(), self.client_template.clone().unwrap_or_default());
        run(move || async move {
            let config = ClientConfig {
                request_timeout: Duration::from_secs(3),
                ..ClientConfig { bootstrap: ClientConfig::with_bootstrap(&b).bootstrap, ..template }
            };
            let c = Client::connect(config).await.ok()?;
            c.cluster_status().await.ok()
        })
    }

    /// Waits until every partition has a leader and `replicas` in-sync replicas.
    pub fn wait_in_sync(&self, replicas: usize, timeout: Duration) {
        self.wait_for("every replica in sync", timeout, |s| {
            s.partitions.iter().all(|p| p.leader.is_some() && p.in_sync.len() == replicas)
        });
    }

    /// Waits until every replica of every partition is in sync and holds the leader's
    /// whole log (only meaningful once no load is running).
    pub fn wait_caught_up(&self, what: &str, timeout: Duration) {
        self.wait_for(what, timeout, |s| {
            s.partitions.iter().all(|p| p.in_sync.len() == p.replicas.len() && p.lag.iter().all(|l| l.records == 0))
        });
    }

    /// Waits until `cond` holds for the cluster status (polled every 100 ms).
    pub fn wait_for(&self, what: &str, timeout: Duration, cond: impl Fn(&ClusterStatusResponse) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.status() {
                if cond(&s) {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; status: {:#?}", self.status());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The leader of every partition of `topic`, once each has one.
    pub fn leaders(&self, topic: &str) -> Vec<u32> {
        self.status()
            .map(|s| s.partitions.iter().filter(|p| p.topic == topic).map(|p| p.leader.unwrap_or(0)).collect())
            .unwrap_or_default()
    }

    /// The leader of `topic`'s partition, waiting (up to `timeout`) for one: read from one
    /// status, so that a hand-over starting between two reads cannot yield "no leader".
    pub fn leader_of(&self, topic: &str, partition: u32, timeout: Duration) -> u32 {
        let deadline = Instant::now() + timeout;
        loop {
            let leader = self.status().and_then(|s| {
                s.partitions.iter().find(|p| p.topic == topic && p.partition == partition).and_then(|p| p.leader)
            });
            match leader {
                Some(l) => return l,
                None if Instant::now() > deadline => panic!("{topic}/{partition} has no leader after {timeout:?}"),
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    pub fn create_topic(&self, topic: &str, partitions: u32, rf: u16) {
        let (b, t) = (self.bootstrap(), topic.to_string());
        run(move || async move {
            let c = Client::connect(ClientConfig::with_bootstrap(&b)).await.unwrap();
            c.create_topic(&t, partitions, rf).await.unwrap();
        });
        let t = topic.to_string();
        self.wait_for("leaders of every partition", Duration::from_secs(20), |s| {
            let ps: Vec<_> = s.partitions.iter().filter(|p| p.topic == t).collect();
            ps.len() == partitions as usize && ps.iter().all(|p| p.leader.is_some() && p.high_watermark > 0)
        });
    }

    /// Creates and deletes the topic `scratch` (one partition, one copy): two metadata
    /// writes that every member appends. Errors are ignored (a fault may be under way).
    pub fn write_metadata_twice(&self, scratch: &str) {
        let (b, t) = (self.bootstrap_up(), scratch.to_string());
        run(move || async move {
            let config = ClientConfig { request_timeout: Duration::from_secs(5), ..ClientConfig::with_bootstrap(&b) };
            let Ok(c) = Client::connect(config).await else { return };
            let _ = c.create_topic(&t, 1, 1).await;
            let _ = c.delete_topic(&t).await;
        });
    }

    pub fn logs(&self) -> String {
        self.nodes.iter().map(|n| format!("--- node {} ---\n{}", n.id, n.log())).collect()
    }
}

/// Writes every node's configuration (`seen_from(i)`: the addresses node `i` reaches the
/// others at) and starts the nodes together: the metadata group needs a majority.
fn launch_all(
    name: &str,
    mode: &str,
    addrs: &[(u32, SocketAddr, SocketAddr)],
    seen_from: impl Fn(u32) -> Vec<(u32, SocketAddr, SocketAddr)>,
    tune: impl Fn(&mut toml::Table),
    fault_files: bool,
) -> (Vec<Node>, tempfile::TempDir) {
    let dir = scratch_dir(name);
    // A secret of this cluster's own (the examples name a public one).
    let secret_file = dir.path().join(CLUSTER_SECRET_FILE);
    let secret: [u8; 32] = rand::random();
    std::fs::write(&secret_file, base64_secret(&secret)).unwrap();
    let mut nodes = Vec::new();
    for &(i, client, peer) in addrs {
        let node_dir = dir.path().join(format!("node{i}"));
        std::fs::create_dir_all(&node_dir).unwrap();
        let toml = example_config(mode, i, &node_dir.join("data"), &format!("test-{name}"), &seen_from(i));
        let mut config: toml::Table = toml.parse().unwrap();
        let cluster = config.get_mut("cluster").and_then(toml::Value::as_table_mut).expect("a [cluster] section");
        if cluster.contains_key("secret_file") {
            cluster.insert("secret_file".into(), secret_file.display().to_string().into());
        }
        tune(&mut config);
        std::fs::write(node_dir.join("node.toml"), toml::to_string(&config).unwrap()).unwrap();
        let fault_file = fault_files.then(|| node_dir.join("faults"));
        nodes.push(Node { id: i, client, peer, dir: node_dir, fault_file, child: None, paused: Default::default() });
    }
    let handles: Vec<_> = nodes
        .into_iter()
        .map(|mut node| {
            std::thread::spawn(move || {
                node.launch();
                node
            })
        })
        .collect();
    (handles.into_iter().map(|h| h.join().unwrap()).collect(), dir)
}

/// The cluster secret's file in a cluster's scratch directory.
const CLUSTER_SECRET_FILE: &str = "cluster.secret";

/// A secret as an operator makes one (`head -c 32 /dev/urandom | base64`).
fn base64_secret(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes) + "\n"
}

fn example_dir(mode: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(mode)
}

/// How many nodes `examples/<mode>/` configures.
pub fn example_node_count(mode: &str) -> u32 {
    let dir = example_dir(mode);
    let files = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    files.flatten().filter(|f| f.file_name().to_string_lossy().ends_with(".toml")).count() as u32
}

/// `examples/<mode>/node<id>.toml` with the test's addresses (`nodes`: id, client, peer as
/// node `id` reaches them), data directory and cluster id; every other setting as shipped.
pub fn example_config(
    mode: &str,
    id: u32,
    data_dir: &Path,
    cluster_id: &str,
    nodes: &[(u32, SocketAddr, SocketAddr)],
) -> String {
    let path = example_dir(mode).join(format!("node{id}.toml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut config: toml::Table = text.parse().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let me = nodes.iter().find(|n| n.0 == id).expect("the node is listed");
    config.insert("listen".into(), me.1.to_string().into());
    config.insert("data_dir".into(), data_dir.display().to_string().into());
    let cluster = config.get_mut("cluster").and_then(toml::Value::as_table_mut).expect("a [cluster] section");
    // (`examples/secure/` is a master-slave cluster with TLS and authentication.)
    let expected_mode = if mode == "secure" { "master-slave" } else { mode };
    assert_eq!(cluster.get("mode").and_then(toml::Value::as_str), Some(expected_mode), "{}", path.display());
    assert_eq!(cluster.get("node_id").and_then(toml::Value::as_integer), Some(i64::from(id)), "{}", path.display());
    let listed = cluster.get("nodes").and_then(toml::Value::as_array).map_or(0, Vec::len);
    assert_eq!(listed, nodes.len(), "{}: node count", path.display());
    cluster.insert("cluster_id".into(), cluster_id.into());
    let nodes: Vec<toml::Value> = nodes
        .iter()
        .map(|&(j, c, p)| {
            let mut t = toml::Table::new();
            t.insert("id".into(), i64::from(j).into());
            t.insert("client".into(), c.to_string().into());
            t.insert("peer".into(), p.to_string().into());
            toml::Value::Table(t)
        })
        .collect();
    cluster.insert("nodes".into(), nodes.into());
    toml::to_string(&config).unwrap()
}

/// The nodes' log filter: `QUORRA_TEST_NODE_LOG` when set (to look into a failure, e.g.
/// `debug,glommio=off`), else info.
fn node_log_filter() -> String {
    std::env::var("QUORRA_TEST_NODE_LOG").unwrap_or_else(|_| "info,glommio=off".into())
}

/// What a load run acknowledged: (partition, offset) -> message number.
#[derive(Default, Clone)]
pub struct Acked {
    pub at: HashMap<(u32, u64), u64>,
    /// When each acknowledgement arrived (ms since the load started), by message number.
    pub times_ms: Vec<(u64, u64)>,
    /// The longest a message waited for its acknowledgement (from its send).
    pub max_latency: Duration,
    /// When the longest-waiting message was acknowledged (ms since the load started).
    pub max_latency_at_ms: u64,
}

/// A producer running on its own thread until stopped, recording every acknowledgement.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub sent: Arc<AtomicU64>,
    pub acked_count: Arc<AtomicU64>,
    /// The last delivery error (for a stalled load's report).
    pub last_error: Arc<Mutex<Option<String>>>,
    handle: Option<std::thread::JoinHandle<Acked>>,
}

pub const MESSAGE_BYTES: usize = 256;

/// How a [`Load`] sends.
#[derive(Clone)]
pub struct LoadShape {
    pub acks: Acks,
    pub producers: u32,
    /// Messages each producer keeps unacknowledged at most.
    pub window: usize,
    /// Open loop: messages per second per producer (the window still bounds what is
    /// outstanding).
    pub rate: Option<f64>,
    pub follow_leaders: bool,
    /// The first message number.
    pub first: u64,
}

impl Default for LoadShape {
    fn default() -> Self {
        LoadShape { acks: Acks::Quorum, producers: 1, window: 32, rate: None, follow_leaders: true, first: 0 }
    }
}

/// What the producers of a load share with the test.
#[derive(Clone)]
struct LoadCounters {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    acked: Arc<AtomicU64>,
    last_error: Arc<Mutex<Option<String>>>,
}

/// One producer of a [`Load`]: sends numbered messages round-robin over the partitions until
/// stopped, awaiting their acknowledgements in order.
#[allow(clippy::too_many_arguments)]
async fn produce_numbered(
    bootstrap: &str,
    topic: &str,
    partitions: u32,
    shape: &LoadShape,
    first: u64,
    counters: &LoadCounters,
    acked: &std::rc::Rc<std::cell::RefCell<Acked>>,
    started: Instant,
) {
    let config = ClientConfig { follow_leaders: shape.follow_leaders, ..ClientConfig::with_bootstrap(bootstrap) };
    let c = Client::connect(config).await.unwrap();
    let producer_config = ProducerConfig {
        acks: shape.acks,
        linger: Duration::ZERO,
        max_in_flight: 8,
        attempt_timeout: Duration::from_secs(2),
        delivery_timeout: Duration::from_secs(60),
        ..Default::default()
    };
    let producer = Producer::new(c, producer_config).await.unwrap();
    let window = std::rc::Rc::new(glommio::sync::Semaphore::new(shape.window.max(1) as u64));
    let mut i = 0u64;
    while !counters.stop.load(Ordering::SeqCst) {
        if let Some(rate) = shape.rate {
            let at = started + Duration::from_secs_f64(i as f64 / rate);
            if let Some(wait) = at.checked_duration_since(Instant::now()) {
                quorra::rt::sleep(wait).await;
            }
        }
        let permit = window.clone().acquire_static_permit(1).await.unwrap();
        let n = first + i;
        let p = (i % u64::from(partitions)) as u32;
        let sent_at = Instant::now();
        let d = producer.send_to(topic, p, None, &payload(p, n, MESSAGE_BYTES)).await.unwrap();
        counters.sent.fetch_add(1, Ordering::SeqCst);
        let (counters, acked) = (counters.clone(), acked.clone());
        quorra::rt::spawn(async move {
            match d.wait().await {
                Ok(md) => {
                    let mut acked = acked.borrow_mut();
                    acked.at.insert((md.partition, md.offset), n);
                    acked.times_ms.push((n, started.elapsed().as_millis() as u64));
                    if sent_at.elapsed() > acked.max_latency {
                        acked.max_latency = sent_at.elapsed();
                        acked.max_latency_at_ms = started.elapsed().as_millis() as u64;
                    }
                    counters.acked.fetch_add(1, Ordering::SeqCst);
                }
                Err(e) => *counters.last_error.lock().unwrap() = Some(e.to_string()),
            }
            drop(permit);
        });
        i += 1;
    }
    producer.flush().await;
    // Every acknowledgement recorded: all permits are back.
    let _all = window.acquire_permit(shape.window.max(1) as u64).await;
}

impl Load {
    /// Sends numbered messages round-robin over the partitions of `topic` with `acks`.
    pub fn start(bootstrap: &str, topic: &str, partitions: u32, acks: Acks) -> Load {
        Self::start_with(bootstrap, topic, partitions, acks, true)
    }

    /// [`Self::start`]; with `follow_leaders` false every request goes to the bootstrap
    /// node (which forwards, in the modes that do).
    pub fn start_with(bootstrap: &str, topic: &str, partitions: u32, acks: Acks, follow_leaders: bool) -> Load {
        Self::start_shaped(bootstrap, topic, partitions, LoadShape { acks, follow_leaders, ..Default::default() })
    }

    /// [`Self::start`], numbering the messages from `first` (a second load on a topic that
    /// holds a first one's messages).
    pub fn start_numbered_from(bootstrap: &str, topic: &str, partitions: u32, acks: Acks, first: u64) -> Load {
        Self::start_shaped(bootstrap, topic, partitions, LoadShape { acks, first, ..Default::default() })
    }

    /// `shape.producers` producers (each its own client) on one thread, each keeping up to
    /// `shape.window` messages unacknowledged (closed loop) or sending at `shape.rate`.
    /// Producer `k` numbers its messages `first + (k << 40) + i`, so the checker can tell
    /// each producer's order apart.
    pub fn start_shaped(bootstrap: &str, topic: &str, partitions: u32, shape: LoadShape) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let acked_count = Arc::new(AtomicU64::new(0));
        let last_error: Arc<Mutex<Option<String>>> = Arc::default();
        let counters = LoadCounters {
            stop: stop.clone(),
            sent: sent.clone(),
            acked: acked_count.clone(),
            last_error: last_error.clone(),
        };
        let (b, t) = (bootstrap.to_string(), topic.to_string());
        let handle = std::thread::spawn(move || {
            run(move || async move {
                let started = Instant::now();
                let acked = std::rc::Rc::new(std::cell::RefCell::new(Acked::default()));
                let tasks: Vec<_> = (0..shape.producers)
                    .map(|k| {
                        let (b, t, shape, counters, acked) =
                            (b.clone(), t.clone(), shape.clone(), counters.clone(), acked.clone());
                        quorra::rt::spawn_joinable(async move {
                            let first = shape.first + (u64::from(k) << 40);
                            produce_numbered(&b, &t, partitions, &shape, first, &counters, &acked, started).await
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await;
                }
                std::rc::Rc::try_unwrap(acked).ok().expect("the producers are done").into_inner()
            })
        });
        Load { stop, sent, acked_count, last_error, handle: Some(handle) }
    }

    /// Waits until `n` more messages were acknowledged.
    pub fn wait_acked(&self, n: u64, timeout: Duration) {
        assert!(
            self.try_wait_acked(n, timeout),
            "the load stalled at {} acks (last error: {:?})",
            self.acked_count.load(Ordering::SeqCst),
            self.last_error.lock().unwrap()
        );
    }

    /// Like [`Self::wait_acked`]; false when the acknowledgements stopped coming.
    pub fn try_wait_acked(&self, n: u64, timeout: Duration) -> bool {
        let target = self.acked_count.load(Ordering::SeqCst) + n;
        let deadline = Instant::now() + timeout;
        while self.acked_count.load(Ordering::SeqCst) < target {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    pub fn stop(mut self) -> Acked {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().unwrap().join().unwrap()
    }
}

/// The checker's verdict, in the load generator's terms.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub acked: u64,
    pub read: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub corrupt: u64,
    /// Records stored before a record the producer sent earlier (in offset order within a
    /// partition, a message number below one seen before it).
    pub reordered: u64,
}

impl Verdict {
    /// Nothing acknowledged lost, nothing twice, nothing corrupt, nothing out of order.
    pub fn is_clean(&self) -> bool {
        (self.lost, self.duplicated, self.corrupt, self.reordered) == (0, 0, 0, 0)
    }
}

/// Reads every partition of `topic` from `read_from` replicas through `bootstrap` and checks
/// that every acknowledged message is at the offset it was acknowledged with, that no
/// message appears twice, and that every record is one that was sent.
pub fn check(bootstrap: &str, topic: &str, partitions: u32, acked: &Acked, read_from: ReadFrom) -> Verdict {
    check_with(bootstrap, topic, partitions, acked, read_from, true)
}

/// [`check`]; with `follow_leaders` false it reads everything through the bootstrap node.
pub fn check_with(
    bootstrap: &str,
    topic: &str,
    partitions: u32,
    acked: &Acked,
    read_from: ReadFrom,
    follow_leaders: bool,
) -> Verdict {
    let _ = partitions;
    verdict_of(&mut read_all(bootstrap, topic, read_from, follow_leaders), acked)
}

/// The checker's verdict on records read back (in any order; sorted by the call).
pub fn verdict_of(records: &mut Seen, acked: &Acked) -> Verdict {
    records.sort_by_key(|(p, offset, _)| (*p, *offset));
    let mut v = Verdict { acked: acked.at.len() as u64, read: records.len() as u64, ..Default::default() };
    let mut seen = HashSet::new();
    let mut found = HashSet::new();
    // The highest message number stored so far in each partition, per producer (the number's
    // high bits): a producer sends its messages of a partition in increasing numbers, so
    // they must be stored that way.
    let mut highest: HashMap<(u32, u64), u64> = HashMap::new();
    for (p, offset, value) in records.iter() {
        if value.len() < 12 {
            v.corrupt += 1;
            continue;
        }
        let n = u64::from_le_bytes(value[4..12].try_into().unwrap());
        if *value != payload(*p, n, MESSAGE_BYTES) {
            v.corrupt += 1;
            continue;
        }
        if !seen.insert(n) {
            v.duplicated += 1;
        }
        match highest.get(&(*p, n >> 40)) {
            Some(&h) if n < h => v.reordered += 1,
            _ => {
                highest.insert((*p, n >> 40), n);
            }
        }
        if acked.at.get(&(*p, *offset)) == Some(&n) {
            found.insert((*p, *offset));
        }
    }
    v.lost = acked.at.len() as u64 - found.len() as u64;
    v
}

/// Records a consumer received: (partition, offset, value).
pub type Seen = Vec<(u32, u64, Vec<u8>)>;

/// A consumer reading `topic` continuously (from `read_from` replicas) until stopped,
/// remembering every record it was given.
pub struct Watcher {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Seen>>,
}

impl Watcher {
    pub fn start(bootstrap: &str, topic: &str, read_from: ReadFrom) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let (b, t, s) = (bootstrap.to_string(), topic.to_string(), stop.clone());
        let handle = std::thread::spawn(move || {
            run(move || async move {
                let c = Client::connect(ClientConfig::with_bootstrap(&b)).await.unwrap();
                let config = ConsumerConfig {
                    start: StartFrom::Earliest,
                    max_wait: Duration::from_millis(100),
                    read_from,
                    ..Default::default()
                };
                let mut consumer = quorra::client::Consumer::new(c, &t, None, config).await.unwrap();
                let mut seen = Vec::new();
                while !s.load(Ordering::SeqCst) {
                    match consumer.poll().await {
                        Ok(records) => {
                            seen.extend(records.into_iter().map(|r| (r.partition, r.offset, r.value.to_vec())))
                        }
                        Err(_) => quorra::rt::sleep(Duration::from_millis(50)).await,
                    }
                }
                seen
            })
        });
        Watcher { stop, handle: Some(handle) }
    }

    pub fn stop(mut self) -> Seen {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().unwrap().join().unwrap()
    }
}

/// Every record of `topic`, read from `bootstrap` after the fact: (partition, offset) -> value.
pub fn final_log(bootstrap: &str, topic: &str) -> HashMap<(u32, u64), Vec<u8>> {
    read_all(bootstrap, topic, ReadFrom::Leader, true).into_iter().map(|(p, o, v)| ((p, o), v)).collect()
}

/// How long [`read_all`] waits without reading a record before it gives up on a partition
/// that is not caught up (between leaders for longer than any fault should leave it).
pub const READ_STALL_LIMIT: Duration = Duration::from_secs(120);

/// Reads every partition of `topic` from the start until five polls in a row bring nothing
/// and the consumer is caught up: (partition, offset, value) in the order received.
pub fn read_all(bootstrap: &str, topic: &str, read_from: ReadFrom, follow_leaders: bool) -> Seen {
    let (b, t) = (bootstrap.to_string(), topic.to_string());
    run(move || async move {
        let c = Client::connect(ClientConfig { follow_leaders, ..ClientConfig::with_bootstrap(&b) }).await.unwrap();
        let config = ConsumerConfig {
            start: StartFrom::Earliest,
            max_wait: Duration::from_millis(100),
            read_from,
            ..Default::default()
        };
        let mut consumer = quorra::client::Consumer::new(c, &t, None, config).await.unwrap();
        let mut out = Vec::new();
        let mut idle = 0;
        let mut last_progress = Instant::now();
        while idle < 5 {
            let batch = consumer.poll().await.unwrap();
            if batch.is_empty() && consumer.caught_up() {
                idle += 1;
            } else {
                idle = 0;
            }
            if !batch.is_empty() {
                last_progress = Instant::now();
            }
            // A partition that stays leaderless, or serves nothing below its high watermark,
            // must fail the read with where it stands, not keep it polling for ever.
            assert!(
                last_progress.elapsed() < READ_STALL_LIMIT,
                "{t}: no record read for {READ_STALL_LIMIT:?} and not caught up; per partition: {:?}",
                consumer.cursor_states()
            );
            out.extend(batch.into_iter().map(|r| (r.partition, r.offset, r.value.to_vec())));
        }
        out
    })
}
