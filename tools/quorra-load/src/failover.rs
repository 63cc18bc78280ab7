//! Failover probe: writes one message at a time to partition 0 of a replicated topic,
//! kills its leader's process with SIGKILL, and reports the time from the kill to the first
//! write acknowledged afterwards (necessarily by a new leader: the old one is dead).
//!
//! With brokers that are not a replicated cluster (a `shared-storage` pair) the victim is
//! the broker that answers, and the time is the takeover: kill to the first write the
//! standby acknowledged.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use quorra::client::{Client, ClientConfig, Producer, ProducerConfig};
use quorra::protocol::messages::Acks;

#[derive(clap::Args, Clone)]
pub struct FailoverArgs {
    /// Broker addresses, comma-separated (every node of the cluster)
    #[arg(long)]
    pub bootstrap: String,
    #[arg(long)]
    pub topic: String,
    /// The broker processes: node id = pid, comma-separated (e.g. 1=4242,2=4243,3=4244);
    /// for brokers that are not a replicated cluster, the node id is the position of its
    /// address in --bootstrap (from 1)
    #[arg(long)]
    pub pids: String,
    /// Write for this long before the kill
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub warmup: Duration,
    /// Give up when no write is acknowledged for this long after the kill
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub give_up: Duration,
    /// How to take the leader out: `kill` (SIGKILL) or `stop` (SIGSTOP, then SIGCONT once
    /// a new leader acknowledged a write: the resumed node must step down or fence itself)
    #[arg(long, default_value = "kill", value_parser = ["kill", "stop"])]
    pub signal: String,
}

fn parse_pids(s: &str) -> Result<Vec<(u32, i32)>> {
    s.split(',')
        .map(|kv| {
            let (k, v) = kv.split_once('=').context("--pids wants node=pid pairs")?;
            Ok((k.trim().parse()?, v.trim().parse()?))
        })
        .collect()
}

/// Prints `{"killed_node":N,"failover_ms":X,"acked_before":A}`.
pub fn run(args: FailoverArgs) -> Result<bool> {
    let pids = parse_pids(&args.pids)?;
    let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(4 << 20)
        .make()
        .map_err(|e| anyhow::anyhow!("cannot start the runtime: {e}"))?;
    let (killed, failover, acked_before) = ex.run(probe(args, pids))?;
    println!(
        "{{\"killed_node\":{killed},\"failover_ms\":{:.1},\"acked_before\":{acked_before}}}",
        failover.as_secs_f64() * 1e3
    );
    Ok(true)
}

async fn probe(args: FailoverArgs, pids: Vec<(u32, i32)>) -> Result<(u32, Duration, u64)> {
    let client = Client::connect(ClientConfig::with_bootstrap(&args.bootstrap)).await?;
    let config = ProducerConfig {
        acks: Acks::Quorum,
        linger: Duration::ZERO,
        max_in_flight: 1,
        attempt_timeout: Duration::from_secs(1),
        delivery_timeout: args.give_up,
        ..Default::default()
    };
    let producer = Producer::new(client.clone(), config).await?;
    let started = Instant::now();
    let mut acked = 0u64;
    while started.elapsed() < args.warmup {
        producer.send_to(&args.topic, 0, None, b"before").await?.wait().await?;
        acked += 1;
    }
    let md = client.metadata(vec![args.topic.clone()]).await?;
    let leader = if md.node_id == 0 {
        serving_broker(&client, &args.bootstrap).await?
    } else {
        md.topics
            .first()
            .and_then(|t| t.partitions.first())
            .map(|p| p.leader)
            .filter(|&l| l != 0)
            .context("partition 0 has no leader")?
    };
    let Some(&(_, pid)) = pids.iter().find(|(n, _)| *n == leader) else { bail!("no pid for node {leader}") };
    let signal = if args.signal == "stop" { libc::SIGSTOP } else { libc::SIGKILL };
    let killed_at = Instant::now();
    send_signal(pid, signal)?;
    if signal == libc::SIGSTOP {
        // A stop takes effect when every thread of the process reaches a stop point: an
        // answer it was already sending must not count as the new leader's.
        wait_stopped(pid)?;
    }
    loop {
        let d = producer.send_to(&args.topic, 0, None, b"after").await?;
        if d.wait().await.is_ok() {
            let failover = killed_at.elapsed();
            if signal == libc::SIGSTOP {
                send_signal(pid, libc::SIGCONT)?;
            }
            return Ok((leader, failover, acked));
        }
        if killed_at.elapsed() > args.give_up {
            bail!("no write acknowledged within {:?} of the kill", args.give_up);
        }
    }
}

/// Not a replicated cluster: the position (from 1) in `bootstrap` of the broker that serves.
async fn serving_broker(client: &Client, bootstrap: &str) -> Result<u32> {
    let addr = client.connection().await?.addr();
    let listed: Vec<std::net::SocketAddr> = bootstrap.split(',').filter_map(|a| a.trim().parse().ok()).collect();
    let at = listed.iter().position(|a| *a == addr).context("the serving broker is not in --bootstrap")?;
    Ok(at as u32 + 1)
}

fn send_signal(pid: i32, signal: i32) -> Result<()> {
    // SAFETY: sending a signal to a process the caller named; no memory is involved.
    if unsafe { libc::kill(pid, signal) } != 0 {
        bail!("signal {signal} to {pid}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Waits until /proc says the process is stopped (state T).
fn wait_stopped(pid: i32) -> Result<()> {
    for _ in 0..1000 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("reading the process state")?;
        // The state follows the command name, which is in parentheses and may hold spaces.
        if stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('T')) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    bail!("process {pid} did not stop");
}
