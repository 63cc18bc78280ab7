//! `quorra-load`: drives a Quorra broker or cluster with producers and consumers on every
//! core, measures throughput and latency, and checks that nothing acknowledged was lost.

mod check;
mod failover;
mod ledger;
mod payload;
mod run;
mod stats;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};
use quorra::protocol::messages::Acks;

#[derive(Parser)]
#[command(name = "quorra-load", version, about = "Load generator and checker for Quorra")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Produce messages and report throughput and acknowledgement latency.
    Produce(ProduceArgs),
    /// Consume a topic from the beginning; with --verify, prove nothing acknowledged was lost.
    Consume(ConsumeArgs),
    /// Produce and consume at once; report end-to-end latency (send -> receive) and verify.
    E2e(E2eArgs),
    /// Kill a partition leader (SIGKILL) and time until a new leader acknowledges a write.
    Failover(failover::FailoverArgs),
}

#[derive(Args, Clone)]
pub struct Common {
    /// Broker addresses, comma-separated
    #[arg(long, default_value = "127.0.0.1:7420")]
    pub bootstrap: String,
    #[arg(long)]
    pub topic: String,
    /// Load shards (threads); default: one per core
    #[arg(long)]
    pub cores: Option<usize>,
    /// Write the summary as JSON here
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Where acknowledged messages are recorded for --verify [default: ./.quorra-load/<topic>.ledger]
    #[arg(long)]
    pub ledger: Option<PathBuf>,
    /// Send every request to the first reachable bootstrap node instead of each
    /// partition's leader (multi-master and forwarding nodes forward what they do not serve)
    #[arg(long)]
    pub no_follow_leaders: bool,
    #[command(flatten)]
    pub security: quorra::client::cli_args::SecurityArgs,
}

impl Common {
    /// How to reach the brokers: follow leaders or not, credentials, TLS.
    pub fn client_config(&self) -> Result<quorra::client::ClientConfig, quorra::client::ClientError> {
        let config = quorra::client::ClientConfig {
            follow_leaders: !self.no_follow_leaders,
            ..quorra::client::ClientConfig::with_bootstrap(&self.bootstrap)
        };
        self.security.apply(config)
    }
    pub fn cores(&self) -> usize {
        self.cores.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from)).max(1)
    }
    pub fn ledger_path(&self) -> PathBuf {
        self.ledger.clone().unwrap_or_else(|| ledger::default_path(&self.topic))
    }
}

#[derive(Args, Clone)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub common: Common,
    /// Create the topic with this many partitions if it does not exist
    #[arg(long)]
    pub create_partitions: Option<u32>,
    /// Replication factor of a topic created with --create-partitions (a cluster)
    #[arg(long, default_value_t = 1)]
    pub replication_factor: u16,
    /// Total messages to send (split over producers)
    #[arg(long, conflicts_with = "duration")]
    pub messages: Option<u64>,
    /// Send for this long instead (e.g. 30s, 500ms)
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Message size in bytes (at least 28: the checker's header)
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Concurrent producers (each with its own connection)
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Messages in flight per producer (closed loop); 1 measures latency
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// Producer batch size
    #[arg(long, default_value_t = 128 * 1024)]
    pub batch_bytes: usize,
    /// Producer linger in microseconds (0: a batch leaves as soon as the producer waits)
    #[arg(long, default_value_t = 0)]
    pub linger_us: u64,
    /// Acknowledgement level: none, leader, quorum, all
    #[arg(long, default_value = "quorum")]
    pub acks: Acks,
    /// Open loop: send at this total rate (msgs/s); latency counts from the intended send time
    #[arg(long)]
    pub rate: Option<f64>,
    /// Write the latency percentile distribution (.hgrm, microseconds) here
    #[arg(long)]
    pub hgrm: Option<PathBuf>,
}

#[derive(Args, Clone)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub common: Common,
    /// Concurrent consumers; partitions are split among them
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Check every acknowledged message (from the ledger) was read once, in order, intact
    #[arg(long)]
    pub verify: bool,
    /// With --verify: tolerate duplicates (at-least-once runs)
    #[arg(long)]
    pub allow_duplicates: bool,
}

#[derive(Args, Clone)]
pub struct E2eArgs {
    #[command(flatten)]
    pub produce: ProduceArgs,
    /// Concurrent consumers
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn,glommio=off")).init();
    let result = match Cli::parse().command {
        Command::Produce(args) => produce(args),
        Command::Consume(args) => consume(args),
        Command::E2e(args) => e2e(args),
        Command::Failover(args) => failover::run(args),
    };
    match result {
        Ok(true) => {}
        Ok(false) => std::process::exit(2),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn check_produce_args(args: &ProduceArgs) -> Result<()> {
    if args.size < payload::HEADER_BYTES {
        bail!("--size must be at least {} bytes (the checker's header)", payload::HEADER_BYTES);
    }
    if args.messages.is_none() && args.duration.is_none() {
        bail!("give --messages N or --duration D");
    }
    if args.producers == 0 || args.window == 0 {
        bail!("--producers and --window must be at least 1");
    }
    if args.rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
        bail!("--rate must be positive");
    }
    Ok(())
}

fn produce(args: ProduceArgs) -> Result<bool> {
    check_produce_args(&args)?;
    let incarnation = run::prepare_topic(&args)?;
    let outcome = run::produce(&args, incarnation)?;
    outcome.summary.print("produce");
    if let Some(p) = &args.common.json {
        outcome.summary.write_json(p)?;
    }
    if let Some(p) = &args.hgrm {
        stats::write_hgrm(p, &outcome.histogram)?;
    }
    ledger::append(&args.common.ledger_path(), &outcome.ledger)?;
    if let Some(e) = &outcome.first_error {
        eprintln!("first error: {e}");
    }
    Ok(outcome.summary.errors == 0)
}

fn consume(args: ConsumeArgs) -> Result<bool> {
    let expected = if args.verify {
        let path = args.common.ledger_path();
        let entries = match ledger::load(&path, &args.common.topic) {
            Ok(entries) => entries,
            Err(e) => bail!(
                "cannot read the ledger {}: {e} (run `quorra-load produce` first, or pass --ledger)",
                path.display()
            ),
        };
        let live = run::topic_incarnation(&args.common)?;
        if let Some(other) = ledger::other_incarnation(&entries, live) {
            bail!(
                "the ledger {} was written for another incarnation of topic {} ({other}) than the broker's ({live}): the topic was deleted and created again, or this is another cluster, so nothing in it can be checked here; produce again (the ledger then starts afresh) or pass --ledger",
                path.display(),
                args.common.topic
            );
        }
        Some(entries)
    } else {
        None
    };
    let outcome = run::consume(&args.common, args.consumers, None)?;
    outcome.summary.print("consume");
    if let Some(p) = &args.common.json {
        outcome.summary.write_json(p)?;
    }
    match expected {
        Some(entries) => {
            let report = check::verify(&entries, &outcome.seen, outcome.corrupt, outcome.reordered);
            println!("{report}");
            Ok(report.passed(args.allow_duplicates))
        }
        None => Ok(outcome.corrupt == 0),
    }
}

fn e2e(args: E2eArgs) -> Result<bool> {
    check_produce_args(&args.produce)?;
    let incarnation = run::prepare_topic(&args.produce)?;
    let (produced, consumed) = run::e2e(&args, incarnation)?;
    produced.summary.print("produce (latency: send -> acknowledgement)");
    consumed.summary.print("consume (latency: send -> receive)");
    if let Some(p) = &args.produce.common.json {
        consumed.summary.write_json(p)?;
    }
    if let Some(p) = &args.produce.hgrm {
        stats::write_hgrm(p, &consumed.histogram)?;
    }
    ledger::append(&args.produce.common.ledger_path(), &produced.ledger)?;
    let report = check::verify(&produced.ledger, &consumed.seen, consumed.corrupt, consumed.reordered);
    println!("{report}");
    Ok(report.passed(false) && produced.summary.errors == 0)
}
