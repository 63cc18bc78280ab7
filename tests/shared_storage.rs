//! `mode = "shared-storage"`: an active and a standby node over one data directory. The
//! standby waits for the directory's lock, takes over when the active node is killed,
//! recovers the logs and serves; clients given both addresses carry on.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{check, example_config, free_port, read_all, Load};
use quorra::client::ReadFrom;
use quorra::protocol::messages::Acks;

struct Proc {
    child: Child,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a node; its injected faults are read from `<config>.faults` (see `storage::faults`).
fn spawn(config: &Path, log: &Path) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_quorra"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "info,glommio=off")
        .env("QUORRA_FAULT_FILE", config.with_extension("faults"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let path = log.to_path_buf();
    std::thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = writeln!(f, "{line}");
        }
    });
    Proc { child, log: log.to_path_buf() }
}

/// Waits until `needle` appears `count` times in the log.
fn wait_log(p: &Proc, needle: &str, count: usize, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::fs::read_to_string(&p.log).unwrap_or_default().matches(needle).count() >= count {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// The two nodes of `examples/shared-storage/` over one data directory, the active one
/// (node 1) serving and node 2 standing by.
struct Pair {
    dir: tempfile::TempDir,
    configs: [PathBuf; 2],
    addrs: [std::net::SocketAddr; 2],
    active: Option<Proc>,
    standby: Option<Proc>,
}

impl Pair {
    fn start(name: &str) -> Pair {
        let dir = common::scratch_dir(name);
        let data = dir.path().join("shared-data");
        let nodes = [(1, free_port(), free_port()), (2, free_port(), free_port())];
        let configs = [1u32, 2].map(|id| {
            let path = dir.path().join(format!("node{id}.toml"));
            std::fs::write(&path, example_config("shared-storage", id, &data, "shared", &nodes)).unwrap();
            path
        });
        let active = spawn(&configs[0], &dir.path().join("node1.log"));
        assert!(wait_log(&active, "serving on", 1, Duration::from_secs(30)), "node 1 did not start");
        let standby = spawn(&configs[1], &dir.path().join("node2.log"));
        assert!(wait_log(&standby, "standby", 1, Duration::from_secs(30)), "node 2 did not stand by");
        let pair = Pair { dir, configs, addrs: [nodes[0].1, nodes[1].1], active: Some(active), standby: Some(standby) };
        let bs = pair.bootstrap();
        common::run(move || async move { common::client(&bs).await.create_topic("t", 4, 1).await.unwrap() });
        pair
    }

    fn bootstrap(&self) -> String {
        format!("{},{}", self.addrs[0], self.addrs[1])
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }
}

/// Every partition's offsets are 0, 1, 2, ... with no gap.
fn assert_dense(bootstrap: &str, partitions: u32) {
    let records = read_all(bootstrap, "t", ReadFrom::Leader, true);
    for p in 0..partitions {
        let mut offsets: Vec<u64> = records.iter().filter(|r| r.0 == p).map(|r| r.1).collect();
        offsets.sort_unstable();
        assert!(offsets.iter().enumerate().all(|(i, &o)| o == i as u64), "partition {p} is not dense");
    }
}

#[test]
fn standby_takes_over_a_killed_active_node_and_loses_nothing() {
    let mut pair = Pair::start("shared-kill");
    let bootstrap = pair.bootstrap();
    let load = Load::start(&bootstrap, "t", 4, Acks::Leader);
    load.wait_acked(2000, Duration::from_secs(30));
    let killed_at = Instant::now();
    drop(pair.active.take()); // kill -9
    let standby = pair.standby.as_ref().unwrap();
    assert!(wait_log(standby, "serving on", 1, Duration::from_secs(30)), "the standby did not take over");
    let takeover = killed_at.elapsed();
    let resumed = Instant::now();
    load.wait_acked(2000, Duration::from_secs(30));
    eprintln!("2000 acks {:?} after the takeover", resumed.elapsed());
    let acked = load.stop();
    let log = pair.log("node2.log");
    assert!(log.contains("fencing epoch 2"), "{log}");
    let v = check(&pair.addrs[1].to_string(), "t", 4, &acked, ReadFrom::Leader);
    assert!(v.acked >= 4000);
    assert!(v.is_clean(), "{v:?}\n{log}");
    assert_dense(&pair.addrs[1].to_string(), 4);
    eprintln!("takeover: serving {takeover:?} after the kill; {v:?}");
    // The old active node comes back as the standby.
    let back = spawn(&pair.configs[0], &pair.dir.path().join("node1-again.log"));
    assert!(wait_log(&back, "standby", 1, Duration::from_secs(30)), "the returning node did not stand by");
}

/// The active node is paused beyond its lease: the standby takes over by the lease (the
/// paused node still holds the lock); when resumed, the old node finds itself replaced,
/// writes nothing more, and restarts as a standby.
#[test]
fn paused_active_node_is_replaced_by_its_lease_and_fences_itself_when_resumed() {
    let pair = Pair::start("shared-pause");
    let bootstrap = pair.bootstrap();
    let load = Load::start(&bootstrap, "t", 4, Acks::Leader);
    load.wait_acked(2000, Duration::from_secs(30));
    let active = pair.active.as_ref().unwrap();
    let pid = active.child.id() as i32;
    // SAFETY: signalling a child process we own.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let paused_at = Instant::now();
    let standby = pair.standby.as_ref().unwrap();
    assert!(wait_log(standby, "serving on", 1, Duration::from_secs(30)), "the standby did not take over");
    let takeover = paused_at.elapsed();
    assert!(pair.log("node2.log").contains("was not renewed"), "{}", pair.log("node2.log"));
    load.wait_acked(2000, Duration::from_secs(30));
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert!(wait_log(active, "fenced:", 1, Duration::from_secs(30)), "the resumed node did not fence itself");
    assert!(wait_log(active, "standby", 1, Duration::from_secs(30)), "the fenced node did not restart as a standby");
    // Writes go on through the new active node while the old one stands by.
    load.wait_acked(2000, Duration::from_secs(30));
    let acked = load.stop();
    let via = pair.addrs[1].to_string();
    let v = check(&via, "t", 4, &acked, ReadFrom::Leader);
    assert!(v.acked >= 6000);
    assert!(v.is_clean(), "{v:?}\n{}", pair.log("node1.log"));
    assert_dense(&via, 4);
    eprintln!("takeover of a paused node: serving {takeover:?} after SIGSTOP; {v:?}");
}

/// The active node cannot renew its lease (the storage cut off for the lease, while its log
/// writes still work): it stops writing and acknowledging at three quarters of the lease,
/// before the standby takes over, and restarts as a standby.
#[test]
fn active_node_that_cannot_renew_its_lease_stops_writing_before_the_takeover() {
    let pair = Pair::start("shared-lease");
    let load = Load::start(&pair.bootstrap(), "t", 4, Acks::Leader);
    load.wait_acked(2000, Duration::from_secs(30));
    std::fs::write(pair.configs[0].with_extension("faults"), "lease=eio\n").unwrap();
    let standby = pair.standby.as_ref().unwrap();
    assert!(wait_log(standby, "serving on", 1, Duration::from_secs(30)), "the standby did not take over");
    let active = pair.active.as_ref().unwrap();
    assert!(wait_log(active, "fenced:", 1, Duration::from_secs(30)), "the old node did not fence itself");
    load.wait_acked(2000, Duration::from_secs(30));
    let acked = load.stop();
    let log = pair.log("node1.log");
    assert!(log.contains("cannot renew"), "{log}");
    // The gate refused the old node's writes once its lease ran out.
    assert!(log.contains("lease expired or another node took over"), "{log}");
    let via = pair.addrs[1].to_string();
    let v = check(&via, "t", 4, &acked, ReadFrom::Leader);
    assert!(v.is_clean(), "{v:?}\n{log}");
    assert_dense(&via, 4);
}
