//! `mode = "shared-storage"`: an active and a standby node over one data directory. The
//! standby waits for the directory's lock, takes over when the active node is killed,
//! recovers the logs and serves; clients given both addresses carry on.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::{check, free_port, Load};
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

fn spawn(config: &Path, log: &Path) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_quorra"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "info,glommio=off")
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

#[test]
fn standby_takes_over_a_killed_active_node_and_loses_nothing() {
    let dir = common::scratch_dir("shared");
    let data = dir.path().join("shared-data");
    let (a, b) = (free_port(), free_port());
    let config = |id: u32, listen| {
        let toml = format!(
            "listen = \"{listen}\"\ndata_dir = \"{}\"\nshards = 1\n[runtime]\npin_cores = false\n[cluster]\nnode_id = {id}\ncluster_id = \"shared\"\nmode = \"shared-storage\"\n\
             [[cluster.nodes]]\nid = 1\nclient = \"{a}\"\npeer = \"{}\"\n[[cluster.nodes]]\nid = 2\nclient = \"{b}\"\npeer = \"{}\"\n",
            data.display(),
            free_port(),
            free_port()
        );
        let path = dir.path().join(format!("node{id}.toml"));
        std::fs::write(&path, toml).unwrap();
        path
    };
    let (ca, cb) = (config(1, a), config(2, b));
    let active = spawn(&ca, &dir.path().join("node1.log"));
    assert!(wait_log(&active, "serving on", 1, Duration::from_secs(30)), "node 1 did not start");
    let standby = spawn(&cb, &dir.path().join("node2.log"));
    assert!(wait_log(&standby, "standby", 1, Duration::from_secs(30)), "node 2 did not stand by");
    let bootstrap = format!("{a},{b}");
    let bs = bootstrap.clone();
    common::run(move || async move { common::client(&bs).await.create_topic("t", 4, 1).await.unwrap() });
    let load = Load::start(&bootstrap, "t", 4, Acks::Leader);
    load.wait_acked(2000, Duration::from_secs(30));
    let killed_at = Instant::now();
    drop(active); // kill -9
    assert!(wait_log(&standby, "serving on", 1, Duration::from_secs(30)), "the standby did not take over");
    let takeover = killed_at.elapsed();
    let resumed = Instant::now();
    // Usually within a second; once in a few runs the client's first connections to the new
    // active node are closed during its start-up and the load needs ~10 s (not analysed yet).
    load.wait_acked(2000, Duration::from_secs(60));
    eprintln!("2000 acks {:?} after the takeover", resumed.elapsed());
    let acked = load.stop();
    let log = std::fs::read_to_string(&standby.log).unwrap();
    assert!(log.contains("fencing epoch 2"), "{log}");
    let v = check(&b.to_string(), "t", 4, &acked, ReadFrom::Leader);
    assert!(v.acked >= 4000);
    assert_eq!((v.lost, v.duplicated, v.corrupt), (0, 0, 0), "{v:?}\n{log}");
    eprintln!("takeover: serving {takeover:?} after the kill; {v:?}");
    // The old active node comes back as the standby.
    let back = spawn(&ca, &dir.path().join("node1-again.log"));
    assert!(wait_log(&back, "standby", 1, Duration::from_secs(30)), "the returning node did not stand by");
}
