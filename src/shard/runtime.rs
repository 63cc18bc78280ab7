//! Starting and stopping the broker: the data directory lock, the catalog, one executor per
//! shard, the mesh between them, and a clean shutdown on SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};
use thiserror::Error;

use super::mesh::{Mesh, MeshMsg};
use super::Shard;
use crate::broker::offsets::OffsetStore;
use crate::broker::{Catalog, ServerDisk};
use crate::config::{Config, ConfigError, FlushPolicy};
use crate::limits::MESH_CHANNEL_DEPTH;
use crate::rt;

#[derive(Debug, Error)]
pub enum BrokerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("data directory {path}: {message}")]
    DataDir { path: String, message: String },
    #[error("topic catalog: {0}")]
    Catalog(String),
    #[error("cannot listen on {addr}: {message}")]
    Bind { addr: SocketAddr, message: String },
    #[error("shard {shard}: {message}")]
    Shard { shard: usize, message: String },
    #[error("cluster: {0}")]
    Cluster(String),
    #[error(transparent)]
    Tls(#[from] crate::net::tls::TlsError),
}

/// What the shards share while starting and stopping (never on the data path).
struct Startup {
    shards: usize,
    ready: AtomicUsize,
    failed: AtomicBool,
    bound_addr: Mutex<Option<SocketAddr>>,
    /// The Kafka listener's address once shard 0 bound it (`Some(None)`: it does not run).
    kafka_bound: Mutex<Option<Option<SocketAddr>>>,
    stop: Arc<AtomicBool>,
    connections: Arc<crate::server::connections::ConnectionRegistry>,
    /// The consumer groups the broker holds (single node, shared storage).
    groups: Arc<crate::broker::offsets::GroupBudget>,
    /// TLS on the client port (`[tls]`), reloaded on SIGHUP.
    tls: Option<Arc<crate::net::tls::ServerTls>>,
    quotas: Option<Arc<crate::server::quotas::Quotas>>,
}

/// Reads the TLS certificate, key and CA files again on every SIGHUP (connections accepted
/// from then on use them; a file that does not load leaves the old ones, and says so).
fn reload_tls_on_sighup(tls: Arc<crate::net::tls::ServerTls>) -> Result<(), BrokerError> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])
        .map_err(|e| BrokerError::Shard { shard: 0, message: format!("SIGHUP handler: {e}") })?;
    std::thread::Builder::new()
        .name("tls-reload".into())
        .spawn(move || {
            for _ in signals.forever() {
                match tls.reload() {
                    Ok(()) => log::info!("SIGHUP: TLS certificates reloaded"),
                    Err(e) => log::error!("SIGHUP: TLS certificates not reloaded, the old ones stay: {e}"),
                }
            }
        })
        .map_err(|e| BrokerError::Shard { shard: 0, message: e.to_string() })?;
    Ok(())
}

/// Runs a broker until SIGINT or SIGTERM; returns after a clean shutdown.
pub fn run_broker(mut config: Config) -> Result<(), BrokerError> {
    config.validate()?;
    if let Some(exposed) = config.exposed_address() {
        log::warn!(
            "serving on {exposed} with allow_insecure = true: {}{}",
            if config.tls.enabled() && exposed == config.listen { "TLS" } else { "no TLS" },
            if config.auth.enabled { "" } else { ", clients not authenticated" }
        );
    }
    if let Some(cluster) = &mut config.cluster {
        cluster.load_secret()?;
    }
    config.auth.decoy_key = match &config.cluster {
        Some(c) if c.replicates() => c.secret.derive(b"scram decoy"),
        _ => crate::protocol::node_auth::fresh_nonce(),
    };
    crate::storage::faults::watch_from_env();
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| BrokerError::Shard { shard: 0, message: e.to_string() })?;
    }
    spawn_shutdown_watchdog(stop.clone(), Duration::from_millis(config.shutdown_timeout_ms));
    let tls = match config.tls.enabled() {
        true => Some(Arc::new(crate::net::tls::ServerTls::new(&config.tls)?)),
        false => None,
    };
    if let Some(tls) = &tls {
        reload_tls_on_sighup(tls.clone())?;
    }
    if let Some(cluster) = &mut config.cluster {
        cluster.tls = tls.clone();
    }
    let shared_storage = config.cluster.as_ref().is_some_and(|c| !c.replicates());
    let _lock = if shared_storage {
        super::shared_storage::become_active(&config, &stop)?
    } else {
        Some(lock_data_dir(&config)?)
    };
    super::identity::check_or_record(&config)
        .and_then(|()| super::identity::check_or_record_batch_format(&config.data_dir))
        .map_err(|message| BrokerError::DataDir { path: config.data_dir.display().to_string(), message })?;
    let shards = config.shard_count();
    // A cluster node learns its topics from the replicated metadata, not a local catalog.
    let (catalog, cluster_parts, control) = if config.cluster.as_ref().is_some_and(|c| c.replicates()) {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..shards).map(|_| tokio::sync::mpsc::channel(crate::cluster::control::CONTROL_QUEUE_DEPTH)).unzip();
        let plane = crate::cluster::control::start(&config, senders).map_err(BrokerError::Cluster)?;
        let parts: Vec<_> = receivers.into_iter().map(|rx| Some((plane.handle.clone(), rx))).collect();
        (Catalog::default(), parts, Some(plane))
    } else {
        let catalog = Catalog::load(&config.data_dir).map_err(BrokerError::Catalog)?;
        finish_topic_deletions(&config, &catalog);
        (catalog, (0..shards).map(|_| None).collect(), None)
    };
    let startup = Arc::new(Startup {
        shards,
        ready: AtomicUsize::new(0),
        failed: AtomicBool::new(false),
        bound_addr: Mutex::new(None),
        kafka_bound: Mutex::new(None),
        stop,
        connections: crate::server::connections::ConnectionRegistry::new(
            config.max_connections,
            config.max_connections_per_ip,
        ),
        groups: Arc::new(crate::broker::offsets::GroupBudget::new(
            crate::broker::offsets::GroupBudget::count_on_disk(&config.data_dir),
            config.max_consumer_groups,
        )),
        tls,
        quotas: config.quotas.any().then(|| Arc::new(crate::server::quotas::Quotas::new(config.quotas.clone()))),
    });
    let mesh_builder = MeshBuilder::<MeshMsg, _>::full(shards, MESH_CHANNEL_DEPTH);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let mut handles = Vec::new();
    for (i, cluster_part) in cluster_parts.into_iter().enumerate() {
        let placement = if config.runtime.pin_cores { Placement::Fixed(i % cores) } else { Placement::Unbound };
        let (config, catalog, mesh_builder, startup) =
            (config.clone(), catalog.clone(), mesh_builder.clone(), startup.clone());
        let builder = LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{i}"))
            .io_memory(config.runtime.io_memory_bytes)
            .spin_before_park(Duration::from_micros(config.runtime.spin_before_park_us));
        let handle = builder
            .spawn(move || async move {
                let result = shard_main(config, catalog, mesh_builder, startup.clone(), cluster_part).await;
                if result.is_err() {
                    startup.failed.store(true, Ordering::SeqCst);
                    startup.stop.store(true, Ordering::SeqCst);
                }
                result
            })
            .map_err(|e| BrokerError::Shard { shard: i, message: format!("cannot start executor: {e}") })?;
        handles.push(handle);
    }
    let mut first_error = None;
    for (i, h) in handles.into_iter().enumerate() {
        let result = h.join().map_err(|e| BrokerError::Shard { shard: i, message: e.to_string() }).and_then(|r| r);
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }
    if let Some(plane) = control {
        plane.stop.notify_one();
        drop(plane.handle);
        let _ = plane.thread.join();
    }
    match first_error {
        Some(e) => Err(e),
        None => {
            log::info!("quorra stopped cleanly");
            Ok(())
        }
    }
}

/// Once a stop is asked for, the process ends within `timeout` even if something hangs
/// (everything acknowledged is durable already; the next start recovers the rest).
fn spawn_shutdown_watchdog(stop: Arc<AtomicBool>, timeout: Duration) {
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(timeout);
        log::error!("the shutdown did not complete within {} ms; exiting", timeout.as_millis());
        std::process::exit(1);
    });
}

/// One broker per data directory: an exclusive `flock` held for the life of the process.
fn lock_data_dir(config: &Config) -> Result<std::fs::File, BrokerError> {
    try_lock_data_dir(&config.data_dir)?.ok_or_else(|| BrokerError::DataDir {
        path: config.data_dir.display().to_string(),
        message: "another broker is using it (LOCK is held)".into(),
    })
}

/// The data directory's lock (`LOCK`, flock'ed), or `None` while another process holds it.
pub(super) fn try_lock_data_dir(dir: &std::path::Path) -> Result<Option<std::fs::File>, BrokerError> {
    use std::os::fd::AsRawFd;
    let err = |message: String| BrokerError::DataDir { path: dir.display().to_string(), message };
    crate::storage::durable_fs::create_dir_all(&dir.join("meta")).map_err(|e| err(e.to_string()))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))
        .map_err(|e| err(e.to_string()))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        Ok(Some(file))
    } else {
        Ok(None)
    }
}

/// A crash in the middle of `topic delete` leaves the topic's directory with its
/// [`DELETED_MARKER`]: remove such directories, once the catalog no longer lists them (the
/// deletion was recorded); a marker in a listed topic's directory is a deletion that never
/// completed (the topic stays: its delete was not acknowledged). A directory the catalog does
/// not list and that carries no marker is never removed: data is deleted only by `topic
/// delete`, never because a catalog does not mention it.
fn finish_topic_deletions(config: &Config, catalog: &Catalog) {
    let Ok(entries) = std::fs::read_dir(config.data_dir.join("topics")) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let marked = e.path().join(crate::broker::catalog::DELETED_MARKER).exists();
        match (catalog.topics.contains_key(&name), marked) {
            (false, true) => {
                log::info!("removing the files of topic {name}, whose deletion a crash interrupted");
                if let Err(err) = crate::storage::durable_fs::remove_dir_all(&e.path()) {
                    log::warn!("could not remove {}: {err}", e.path().display());
                }
            }
            (true, true) => {
                log::warn!("topic {name}: its deletion did not complete and was not acknowledged; it stays");
                let _ = crate::storage::durable_fs::remove_file(&e.path().join(crate::broker::catalog::DELETED_MARKER));
            }
            (false, false) => log::warn!(
                "{} is not a topic of the catalog; left as it is (remove it by hand if it is not needed)",
                e.path().display()
            ),
            (true, false) => {}
        }
    }
}

/// A shard's share of the control plane: its handle and its replicas' inbox.
type ClusterPart = (crate::cluster::ControlHandle, tokio::sync::mpsc::Receiver<crate::cluster::rpc::ControlEnvelope>);

async fn shard_main(
    config: Config,
    catalog: Catalog,
    mesh_builder: MeshBuilder<MeshMsg, glommio::channels::channel_mesh::Full>,
    startup: Arc<Startup>,
    cluster_part: Option<ClusterPart>,
) -> Result<(), BrokerError> {
    let (senders, receivers) = mesh_builder
        .join()
        .await
        .map_err(|e| BrokerError::Shard { shard: 0, message: format!("joining the mesh failed: {e}") })?;
    let mesh = Mesh::new(senders);
    let id = mesh.peer_id();
    let listener = bind(&config, id, &startup).await?;
    let kafka_listener = bind_kafka(&config, id, &startup).await?;
    let kafka_addr = kafka_listener.as_ref().map(|_| {
        let bound = startup.kafka_bound.lock().expect("startup lock").flatten().expect("bound before");
        config.kafka.advertised.unwrap_or(bound)
    });
    crate::storage::glommio_disk::prime_device_probe(&config.data_dir)
        .await
        .map_err(|e| BrokerError::DataDir { path: config.data_dir.display().to_string(), message: e.to_string() })?;
    let config = Rc::new(config);
    let shard = Rc::new(Shard {
        id,
        shards: startup.shards,
        disk: server_disk(&config),
        catalog: std::cell::RefCell::new(catalog.clone()),
        partitions: Default::default(),
        offsets: OffsetStore::new(
            server_disk(&config),
            config.data_dir.clone(),
            config.storage.flush,
            config.log_config().fresh_segment_on_open,
            startup.groups.clone(),
        ),
        mesh,
        catalog_lock: glommio::sync::Semaphore::new(1),
        shutting_down: std::cell::Cell::new(false),
        cluster: cluster_part.as_ref().map(|(handle, _)| super::cluster::ShardCluster::new(handle.clone())),
        producer_ids: Default::default(),
        connections: startup.connections.clone(),
        tls: startup.tls.clone(),
        quotas: startup.quotas.clone(),
        kafka_addr,
        config,
    });
    if let Some((_, inbox)) = cluster_part {
        super::cluster::start(&shard, inbox);
    }
    let mut receivers = receivers;
    // One task per peer shard serves what that peer sends.
    for (peer, rx) in receivers.streams() {
        rt::spawn(crate::server::serve_peer(shard.clone(), peer, rx));
    }
    for (name, topic) in &catalog.topics {
        shard
            .open_topic_partitions(name, topic.partitions)
            .await
            .map_err(|message| BrokerError::Shard { shard: id, message })?;
    }
    startup.ready.fetch_add(1, Ordering::SeqCst);
    while startup.ready.load(Ordering::SeqCst) < startup.shards {
        if startup.stop.load(Ordering::SeqCst) {
            break;
        }
        rt::sleep(Duration::from_millis(5)).await;
    }
    if id == 0 && !startup.failed.load(Ordering::SeqCst) {
        log::info!(
            "quorra {} serving on {} with {} shards, data in {}, flush {}",
            env!("CARGO_PKG_VERSION"),
            listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()),
            startup.shards,
            shard.config.data_dir.display(),
            shard.config.storage.flush
        );
    }
    spawn_background(&shard);
    if shard.id == 0 {
        rt::spawn(super::cluster::undrain_on_start(shard.clone()));
    }
    if let Some(kafka_listener) = kafka_listener {
        crate::server::spawn_acceptor(shard.clone(), kafka_listener, "kafka", crate::kafka::serve_connection);
    }
    let stop_flag = startup.stop.clone();
    crate::server::accept_loop(shard.clone(), listener, move || stop_flag.load(Ordering::SeqCst)).await;
    if shard.cluster.is_some() {
        let budget = Duration::from_millis(shard.config.shutdown_timeout_ms / 2);
        super::cluster::hand_over_leadership(&shard, budget).await;
    }
    shutdown(&shard).await;
    Ok(())
}

/// The disk of the shards: with `flush = always` (and `storage.dsync`), log files are opened
/// with O_DSYNC so that each write is durable as it completes.
fn server_disk(config: &Config) -> ServerDisk {
    let dsync = config.storage.dsync && config.storage.flush == FlushPolicy::Always;
    crate::storage::faults::GuardedDisk(crate::storage::glommio_disk::GlommioDisk { dsync })
}

async fn bind(config: &Config, id: usize, startup: &Startup) -> Result<glommio::net::TcpListener, BrokerError> {
    // Shard 0 binds first; with port 0 the others then bind the port it got.
    let mut addr = config.listen;
    if id != 0 {
        loop {
            if let Some(a) = *startup.bound_addr.lock().expect("startup lock") {
                addr = a;
                break;
            }
            if startup.stop.load(Ordering::SeqCst) {
                return Err(BrokerError::Shard { shard: id, message: "start-up aborted".into() });
            }
            rt::sleep(Duration::from_millis(2)).await;
        }
    }
    let listener =
        glommio::net::TcpListener::bind(addr).map_err(|e| BrokerError::Bind { addr, message: e.to_string() })?;
    if id == 0 {
        let bound = listener.local_addr().map_err(|e| BrokerError::Bind { addr, message: e.to_string() })?;
        *startup.bound_addr.lock().expect("startup lock") = Some(bound);
    }
    Ok(listener)
}

/// The Kafka listener of shard `id`, when the broker serves Kafka clients. Shard 0 binds
/// first (a port of 0 becomes the one it got); the default address, taken by another
/// process, turns the listener off with a warning, a configured one fails the start.
async fn bind_kafka(
    config: &Config,
    id: usize,
    startup: &Startup,
) -> Result<Option<glommio::net::TcpListener>, BrokerError> {
    if !config.serves_kafka() {
        return Ok(None);
    }
    let (addr, configured) = config.kafka.listen_addr();
    if id != 0 {
        loop {
            if let Some(bound) = *startup.kafka_bound.lock().expect("startup lock") {
                let Some(addr) = bound else { return Ok(None) };
                let listener = glommio::net::TcpListener::bind(addr)
                    .map_err(|e| BrokerError::Bind { addr, message: format!("kafka listener: {e}") })?;
                return Ok(Some(listener));
            }
            if startup.stop.load(Ordering::SeqCst) {
                return Err(BrokerError::Shard { shard: id, message: "start-up aborted".into() });
            }
            rt::sleep(Duration::from_millis(2)).await;
        }
    }
    let bound = glommio::net::TcpListener::bind(addr)
        .map_err(|e| e.to_string())
        .and_then(|l| l.local_addr().map(|a| (a, l)).map_err(|e| e.to_string()));
    let (listener, outcome) = match bound {
        Ok((local, listener)) => {
            log::info!("serving Kafka clients on {local}");
            (Some(listener), Some(local))
        }
        Err(e) if !configured => {
            log::warn!("not serving Kafka clients: the default address {addr} is taken ({e}); set [kafka] listen");
            (None, None)
        }
        Err(e) => return Err(BrokerError::Bind { addr, message: format!("kafka listener: {e}") }),
    };
    *startup.kafka_bound.lock().expect("startup lock") = Some(outcome);
    Ok(listener)
}

/// Periodic work: the interval fsync and retention, on their own schedule.
fn spawn_background(shard: &Rc<Shard>) {
    if let FlushPolicy::IntervalMs(ms) = shard.config.storage.flush {
        let s = shard.clone();
        rt::spawn(async move {
            while !s.shutting_down.get() {
                rt::sleep(Duration::from_millis(ms)).await;
                let parts: Vec<_> = s.partitions.borrow().values().cloned().collect();
                for p in parts {
                    p.sync_now().await;
                }
            }
        });
    }
    let s = shard.clone();
    rt::spawn(async move {
        let every = Duration::from_millis(s.config.storage.retention_check_ms.max(100));
        while !s.shutting_down.get() {
            rt::sleep(every).await;
            let parts: Vec<_> = s.partitions.borrow().values().cloned().collect();
            for p in parts {
                p.apply_retention().await;
                p.checkpoint_recovery_point().await;
            }
        }
    });
}

async fn shutdown(shard: &Rc<Shard>) {
    shard.shutting_down.set(true);
    let parts: Vec<_> = shard.partitions.borrow().values().cloned().collect();
    for p in parts {
        p.close().await;
    }
    shard.offsets.close().await;
    log::debug!("shard {} closed {} partitions", shard.id, shard.partitions.borrow().len());
}
