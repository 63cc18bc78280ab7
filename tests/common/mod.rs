//! Test harness: real `quorra serve` processes on loopback ports, and a client runtime.
#![allow(dead_code)]

pub mod cluster;
pub mod raw;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use quorra::client::{Client, ClientConfig};

/// A broker process. Killed (SIGKILL) when dropped.
pub struct Broker {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    extra_args: Vec<String>,
    envs: Vec<(String, String)>,
}

/// A scratch directory on the real disk (not tmpfs: O_DIRECT must be exercised).
/// Every file below `dir` (walked recursively), with its metadata, sorted by path.
pub fn files_below(dir: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path(), meta));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// `QUORRA_TEST_KEEP=1` keeps it after the test (to look into a failure).
pub fn scratch_dir(name: &str) -> tempfile::TempDir {
    let keep = std::env::var_os("QUORRA_TEST_KEEP").is_some();
    let dir = tempfile::Builder::new()
        .prefix(&format!("quorra-test-{name}-"))
        .disable_cleanup(keep)
        .tempdir_in("/tmp")
        .expect("temp dir");
    if keep {
        eprintln!("keeping {}", dir.path().display());
    }
    dir
}

impl Broker {
    /// Starts a broker on an ephemeral port with 2 shards.
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> Broker {
        Self::start_with_env(data_dir, extra_args, &[])
    }

    /// `dir` holds the data directory (`dir/data`) and the broker's log (`dir/broker.log`).
    pub fn start_with_env(dir: &Path, extra_args: &[&str], envs: &[(&str, &str)]) -> Broker {
        let mut b = Broker {
            child: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.join("data"),
            log_path: dir.join("broker.log"),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            envs: envs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        b.launch("127.0.0.1:0");
        b
    }

    fn launch(&mut self, listen: &str) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_quorra"));
        cmd.args(["serve", "--listen", listen, "--data-dir"]).arg(&self.data_dir);
        if !self.extra_args.iter().any(|a| a == "--shards") {
            cmd.args(["--shards", "2"]);
        }
        cmd.args(&self.extra_args);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd.env("RUST_LOG", "info,glommio=off");
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start quorra serve");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let log_path = self.log_path.clone();
        std::thread::spawn(move || {
            let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).unwrap();
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(log, "{line}");
                if let Some(addr) = line.split("serving on ").nth(1).and_then(|r| r.split_whitespace().next()) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr.to_string());
                    }
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("broker did not start; log:\n{}", self.log()));
        self.addr = addr.parse().unwrap();
        self.child = Some(child);
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        let Some(mut c) = self.child.take() else { return false };
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        let listen = self.addr.to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // The port may take a moment to be free again.
            if can_bind_as_a_broker(self.addr) || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.launch(&listen);
    }

    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a broker could bind `addr` now. Brokers bind with SO_REUSEPORT (every shard binds
/// the port), so the sockets a killed broker leaves in TIME_WAIT keep a plain bind failing
/// for a minute while a broker's bind succeeds at once: probe the way a broker binds.
pub fn can_bind_as_a_broker(addr: SocketAddr) -> bool {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let SocketAddr::V4(v4) = addr else { return std::net::TcpListener::bind(addr).is_ok() };
    // SAFETY: plain socket calls on a descriptor this function owns (closed by OwnedFd).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if fd < 0 {
            return false;
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                &one as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
            sin_zero: [0; 8],
        };
        libc::bind(
            fd.as_raw_fd(),
            &sin as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ) == 0
    }
}

type Job = Box<dyn FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> + Send>;

/// Executor threads waiting for work (see [`run`]).
static IDLE_EXECUTORS: std::sync::Mutex<Vec<std::sync::mpsc::Sender<Job>>> = std::sync::Mutex::new(Vec::new());

/// Runs async client code on a glommio executor of its own thread, and waits for its
/// result. The threads are kept and reused: glommio leaks an eventfd for every executor it
/// ends (measured: 50 empty executors, 50 descriptors), and a 30-minute nemesis run polls
/// tens of thousands of times (it ran out of descriptors). After each piece of work the
/// executor runs on for a moment, so that the tasks of connections it closed end and close
/// their sockets. A panic in the work is caught on its thread and raised again in the
/// caller, with its message (the executor thread may have been started by another test,
/// whose captured output would otherwise hold it); the thread is not reused.
pub fn run<F, Fut, T>(f: F) -> T
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
    T: Send + 'static,
{
    use futures_lite::FutureExt;
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let job: Job = Box::new(move || {
        Box::pin(async move {
            let out = std::panic::AssertUnwindSafe(async move { f().await }).catch_unwind().await;
            let _ = done_tx.send(out.map_err(|p| panic_message(&*p)));
        })
    });
    let idle = IDLE_EXECUTORS.lock().unwrap().pop();
    let worker = idle.unwrap_or_else(start_executor_thread);
    worker.send(job).expect("an idle executor thread takes work");
    match done_rx.recv().expect("the client thread ended") {
        Ok(out) => {
            IDLE_EXECUTORS.lock().unwrap().push(worker);
            out
        }
        Err(message) => panic!("client code panicked: {message}"),
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into())
}

fn start_executor_thread() -> std::sync::mpsc::Sender<Job> {
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(4 << 20)
        .spawn(move || async move {
            while let Ok(job) = rx.recv() {
                job().await;
                glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .expect("executor");
    tx
}

pub async fn client(bootstrap: &str) -> Rc<Client> {
    Client::connect(ClientConfig::with_bootstrap(bootstrap)).await.expect("connect")
}

/// Deterministic payload of message `i` of partition `p`: its length and bytes derive from both.
pub fn payload(p: u32, i: u64, max_len: usize) -> Vec<u8> {
    let mut x = (u64::from(p) << 48) ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let len = (next() % (max_len as u64 + 1)) as usize;
    let mut v = Vec::with_capacity(len.max(12));
    v.extend_from_slice(&p.to_le_bytes());
    v.extend_from_slice(&i.to_le_bytes());
    while v.len() < len {
        v.extend_from_slice(&next().to_le_bytes());
    }
    v.truncate(len.max(12));
    v
}

/// Writes a TOML config file into `dir` and returns its path.
pub fn config_file(dir: &Path, toml: &str) -> PathBuf {
    let path = dir.join("quorra.toml");
    std::fs::write(&path, toml).unwrap();
    path
}
