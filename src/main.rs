//! `quorra`: the broker (`quorra serve`) and its command-line client.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine;
use clap::{Args, Parser, Subcommand, ValueEnum};

use quorra::client::{
    Client, ClientConfig, Consumer, ConsumerConfig, Partitioner, Producer, ProducerConfig, ReadFrom, StartFrom,
};
use quorra::config::{Config, FlushPolicy};
use quorra::protocol::messages::{Acks, ClusterStatusResponse, NodeStatusInfo};

#[derive(Parser)]
#[command(
    name = "quorra",
    version,
    about = "Quorra: a replicated, thread-per-core message broker",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a broker.
    Serve(ServeArgs),
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Produce messages read from stdin, one per line.
    Produce(ProduceArgs),
    /// Print messages of a topic, one per line.
    Consume(ConsumeArgs),
    /// Inspect a cluster.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Manage the users of a broker with [auth] enabled (super users only; while no user
    /// exists, any client on the broker's own machine may create the first).
    #[command(subcommand)]
    User(UserCommand),
    /// Manage the access control lists of a broker with [auth] enabled (docs/security.md).
    #[command(subcommand)]
    Acl(AclCommand),
}

#[derive(Subcommand)]
enum AclCommand {
    /// Allow (or, with --deny, deny) a principal an operation on a resource.
    Add {
        #[command(flatten)]
        acl: AclArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Remove an ACL (named exactly as it was added).
    Remove {
        #[command(flatten)]
        acl: AclArgs,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the ACLs.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args)]
#[command(group = clap::ArgGroup::new("resource").required(true).args(["topic", "group", "cluster"]))]
struct AclArgs {
    /// A user name, or * for every authenticated user.
    #[arg(long)]
    principal: String,
    /// read, write, create, delete, describe, alter or all.
    #[arg(long)]
    operation: String,
    /// The topic (* for every topic).
    #[arg(long)]
    topic: Option<String>,
    /// The consumer group (* for every group).
    #[arg(long)]
    group: Option<String>,
    /// The cluster (or single broker) itself: topic creation, users, ACLs, status.
    #[arg(long)]
    cluster: bool,
    /// The topic or group name is a prefix: every name that starts with it.
    #[arg(long)]
    prefix: bool,
    /// Deny instead of allow (a deny wins over every allow).
    #[arg(long)]
    deny: bool,
}

impl AclArgs {
    fn to_acl(&self) -> Result<quorra::protocol::acl::Acl> {
        use quorra::protocol::acl::{Acl, Operation, PatternKind, Permission, ResourceKind, CLUSTER_NAME};
        let (resource, name) = match (&self.topic, &self.group) {
            (Some(t), _) => (ResourceKind::Topic, t.clone()),
            (_, Some(g)) => (ResourceKind::Group, g.clone()),
            _ => (ResourceKind::Cluster, CLUSTER_NAME.to_string()),
        };
        let operation = Operation::parse(&self.operation).with_context(|| {
            format!("unknown operation {:?}: read, write, create, delete, describe, alter or all", self.operation)
        })?;
        let acl = Acl {
            principal: self.principal.clone(),
            resource,
            pattern: if self.prefix { PatternKind::Prefix } else { PatternKind::Literal },
            name,
            operation,
            permission: if self.deny { Permission::Deny } else { Permission::Allow },
        };
        acl.validate().map_err(anyhow::Error::msg)?;
        Ok(acl)
    }
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user or change its password; the password is read from QUORRA_NEW_PASSWORD,
    /// else from the first line of stdin.
    Add {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a user.
    Remove {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the users.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Nodes (alive; partitions led and followed; metadata leader) and, per partition: leader, epoch, replicas, in-sync
    /// replicas, high watermark and each follower's lag.
    Status {
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Address for clients [default: 127.0.0.1:7420]
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Directory for logs and metadata [default: ./quorra-data]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Number of shards (threads, one per core) [default: one per available core]
    #[arg(long)]
    shards: Option<usize>,
    /// TOML configuration file; flags override its settings; unknown keys are an error
    #[arg(long)]
    config: Option<PathBuf>,
    /// When to fdatasync: "always" (before every acknowledgement) or "interval:<ms>"
    #[arg(long)]
    flush: Option<FlushPolicy>,
    /// Address for Kafka clients, or "off" [default: 127.0.0.1:9092]
    #[arg(long)]
    kafka_listen: Option<String>,
}

#[derive(Args, Clone)]
struct ClientArgs {
    /// Broker addresses, comma-separated; tried in turn
    #[arg(long, default_value = "127.0.0.1:7420", env = "QUORRA_BOOTSTRAP")]
    bootstrap: String,
    /// Send every request to the bootstrap node instead of each partition's leader (in
    /// multi-master and forwarding modes that node forwards what it does not serve)
    #[arg(long)]
    no_follow_leaders: bool,
    #[command(flatten)]
    security: quorra::client::cli_args::SecurityArgs,
}

#[derive(Subcommand)]
enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        /// Number of partitions
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Copies of each partition; default: the mode's (1 on a single node and in
        /// forwarding, every node in master-slave and multi-master, up to 3 in hybrid)
        #[arg(long, default_value_t = 0)]
        replication_factor: u16,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List topics.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a topic's partitions: offsets, size and state.
    Describe {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a topic and its data.
    Delete {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args)]
struct ProduceArgs {
    topic: String,
    /// Send every message to this partition (default: by key hash, or round-robin without a key)
    #[arg(long)]
    partition: Option<u32>,
    /// Key of every message
    #[arg(long)]
    key: Option<String>,
    /// Acknowledgement level: none, leader, quorum or all
    #[arg(long, default_value = "quorum")]
    acks: Acks,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    /// The value only
    Raw,
    /// One JSON object per message: partition, offset, timestamp, key, value
    Json,
}

#[derive(Args)]
struct ConsumeArgs {
    topic: String,
    /// Read only this partition
    #[arg(long)]
    partition: Option<u32>,
    /// Start at the first stored message (default: only new messages)
    #[arg(long, conflicts_with = "offset")]
    from_beginning: bool,
    /// Start at this offset
    #[arg(long)]
    offset: Option<u64>,
    /// Stop after this many messages
    #[arg(long)]
    max_messages: Option<u64>,
    /// Consumer group: resume from its committed offsets and commit progress
    #[arg(long)]
    group: Option<String>,
    /// Keep waiting for new messages instead of stopping at the end
    #[arg(long)]
    follow: bool,
    /// Output format
    #[arg(long, value_enum, default_value = "raw")]
    format: Format,
    /// In a cluster, read from the leader, a follower, or any replica (all serve only
    /// committed messages)
    #[arg(long, default_value = "leader")]
    read_from: ReadFrom,
    #[command(flatten)]
    client: ClientArgs,
}

fn main() {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Serve(_)) { "info" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(format!("{default_level},glommio=off")))
        .format_timestamp_millis()
        .init();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Topic(cmd) => run_client(move || topic(cmd)),
        Command::Produce(args) => run_client(move || produce(args)),
        Command::Consume(args) => run_client(move || consume(args)),
        Command::Cluster(cmd) => run_client(move || cluster(cmd)),
        Command::User(cmd) => run_client(move || user(cmd)),
        Command::Acl(cmd) => run_client(move || acl(cmd)),
    };
    if let Err(e) = result {
        // A closed stdout (`quorra consume ... | head`) ends the command, quietly.
        if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) {
            return;
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn serve(args: ServeArgs) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(shards) = args.shards {
        config.shards = shards;
    }
    if let Some(flush) = args.flush {
        config.storage.flush = flush;
    }
    match args.kafka_listen.as_deref() {
        None => {}
        Some("off") => config.kafka.enabled = false,
        Some(addr) => {
            config.kafka.enabled = true;
            config.kafka.listen = Some(addr.parse().with_context(|| format!("--kafka-listen {addr:?}"))?);
        }
    }
    quorra::shard::run_broker(config)?;
    Ok(())
}

/// Runs a client command on a single-threaded glommio executor.
fn run_client<F, Fut>(f: F) -> Result<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + 'static,
{
    quorra::rt::block_on(f()).map_err(|e| anyhow::anyhow!("the client: {e}"))?
}

async fn connect(args: &ClientArgs) -> Result<Rc<Client>> {
    let config =
        ClientConfig { follow_leaders: !args.no_follow_leaders, ..ClientConfig::with_bootstrap(&args.bootstrap) };
    Ok(Client::connect(args.security.apply(config)?).await?)
}

async fn user(cmd: UserCommand) -> Result<()> {
    match cmd {
        UserCommand::Add { name, client } => {
            let password = match std::env::var("QUORRA_NEW_PASSWORD") {
                Ok(p) => p,
                Err(_) => {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    line.trim_end_matches(['\r', '\n']).to_string()
                }
            };
            if password.is_empty() {
                anyhow::bail!("an empty password: give it in QUORRA_NEW_PASSWORD or on stdin");
            }
            let created = connect(&client).await?.upsert_user(&name, &password).await?;
            println!("{} user {name}", if created { "created" } else { "changed the password of" });
        }
        UserCommand::Remove { name, client } => {
            connect(&client).await?.delete_user(&name).await?;
            println!("deleted user {name}");
        }
        UserCommand::List { client } => {
            for u in connect(&client).await?.list_users().await? {
                println!("{u}");
            }
        }
    }
    Ok(())
}

async fn acl(cmd: AclCommand) -> Result<()> {
    match cmd {
        AclCommand::Add { acl, client } => {
            let acl = acl.to_acl()?;
            let created = connect(&client).await?.create_acl(&acl).await?;
            println!("{} {acl}", if created { "added" } else { "already present:" });
        }
        AclCommand::Remove { acl, client } => {
            let acl = acl.to_acl()?;
            connect(&client).await?.delete_acl(&acl).await?;
            println!("removed {acl}");
        }
        AclCommand::List { client } => {
            for acl in connect(&client).await?.list_acls().await? {
                println!("{acl}");
            }
        }
    }
    Ok(())
}

async fn topic(cmd: TopicCommand) -> Result<()> {
    match cmd {
        TopicCommand::Create { name, partitions, replication_factor, client } => {
            let r = connect(&client).await?.create_topic(&name, partitions, replication_factor).await?;
            println!("created topic {} with {} partitions", r.name, r.partitions);
        }
        TopicCommand::List { client } => {
            for t in connect(&client).await?.list_topics().await?.topics {
                println!("{}\tpartitions={}\treplication_factor={}", t.name, t.partitions, t.replication_factor);
            }
        }
        TopicCommand::Describe { name, client } => {
            let d = connect(&client).await?.describe_topic(&name).await?;
            println!("topic {} ({} partitions)", d.name, d.partitions.len());
            println!(
                "{:>9} {:>6} {:>12} {:>14} {:>12} {:>8} {:>12}  state",
                "partition", "leader", "log_start", "high_watermark", "log_end", "segments", "bytes"
            );
            for p in d.partitions {
                println!(
                    "{:>9} {:>6} {:>12} {:>14} {:>12} {:>8} {:>12}  {}",
                    p.partition,
                    p.leader,
                    p.log_start_offset,
                    p.high_watermark,
                    p.log_end_offset,
                    p.segments,
                    p.size_bytes,
                    p.state
                );
            }
        }
        TopicCommand::Delete { name, client } => {
            connect(&client).await?.delete_topic(&name).await?;
            println!("deleted topic {name}");
        }
    }
    Ok(())
}

async fn produce(args: ProduceArgs) -> Result<()> {
    let client = connect(&args.client).await?;
    let config = ProducerConfig { acks: args.acks, partitioner: Partitioner::KeyHash, ..ProducerConfig::default() };
    let producer = Producer::new(client, config).await?;
    let partitions = producer.partitions(&args.topic).await?;
    if let Some(p) = args.partition.filter(|&p| p >= partitions) {
        bail!("topic {} has {partitions} partitions; partition {p} does not exist", args.topic);
    }
    let key = args.key.as_deref().map(str::as_bytes);
    let mut deliveries = Vec::new();
    let stdin = std::io::stdin();
    let mut line = Vec::new();
    let mut input = stdin.lock();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line).context("reading stdin")? == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        let delivery = match args.partition {
            Some(p) => producer.send_to(&args.topic, p, key, &line).await?,
            None => producer.send(&args.topic, key, &line).await?,
        };
        deliveries.push(delivery);
    }
    producer.flush().await;
    let total = deliveries.len();
    let mut last: BTreeMap<u32, u64> = BTreeMap::new();
    let mut first_error = None;
    let mut acked = 0;
    for d in deliveries {
        match d.wait().await {
            Ok(md) => {
                acked += 1;
                let e = last.entry(md.partition).or_insert(md.offset);
                *e = (*e).max(md.offset);
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "acknowledged {acked} of {total} messages")?;
    for (p, o) in &last {
        writeln!(out, "partition {p}: last offset {o}")?;
    }
    if let Some(e) = first_error {
        bail!("{} messages not acknowledged: {e}", total - acked);
    }
    Ok(())
}

async fn consume(args: ConsumeArgs) -> Result<()> {
    let client = connect(&args.client).await?;
    let start = match (args.from_beginning, args.offset) {
        (true, _) => StartFrom::Earliest,
        (false, Some(o)) => StartFrom::Offset(o),
        (false, None) => StartFrom::Latest,
    };
    let config = ConsumerConfig {
        start,
        group: args.group.clone(),
        max_wait: Duration::from_millis(if args.follow { 1000 } else { 200 }),
        read_from: args.read_from,
        ..Default::default()
    };
    let mut consumer = Consumer::new(client, &args.topic, args.partition.map(|p| vec![p]), config).await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let limit = args.max_messages.unwrap_or(u64::MAX);
    let mut printed = 0u64;
    'outer: while printed < limit {
        let records = consumer.poll().await?;
        for r in &records {
            if printed == limit {
                break 'outer;
            }
            match args.format {
                Format::Raw => {
                    out.write_all(&r.value)?;
                    out.write_all(b"\n")?;
                }
                Format::Json => {
                    let mut obj = serde_json::json!({"partition": r.partition, "offset": r.offset, "timestamp": r.timestamp, "key": r.key.as_ref().map(|k| text_or_base64(k)), "value": text_or_base64(&r.value)});
                    if std::str::from_utf8(&r.value).is_err() {
                        obj["value_encoding"] = "base64".into();
                    }
                    serde_json::to_writer(&mut out, &obj)?;
                    out.write_all(b"\n")?;
                }
            }
            printed += 1;
        }
        if records.is_empty() && !args.follow && consumer.caught_up() {
            break;
        }
        out.flush()?;
    }
    out.flush()?;
    if args.group.is_some() {
        consumer.commit().await?;
    }
    Ok(())
}

async fn cluster(cmd: ClusterCommand) -> Result<()> {
    let ClusterCommand::Status { client } = cmd;
    let s = connect(&client).await?.cluster_status().await?;
    let id = |n: Option<u32>| n.map_or_else(|| "-".to_string(), |n| n.to_string());
    let list = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    println!("cluster {} (mode {}), metadata leader: node {}", s.cluster_id, s.mode, id(s.metadata_leader));
    println!("{:>6} {:<22} {:<6} role", "node", "address", "alive");
    for n in &s.nodes {
        println!(
            "{:>6} {:<22} {:<6} {}",
            n.node_id,
            n.client_addr,
            if n.alive { "yes" } else { "NO" },
            node_role(&s, n)
        );
    }
    println!(
        "{:<24} {:>6} {:>6} {:<10} {:<10} {:>14} {:>12}  lag",
        "partition", "leader", "epoch", "replicas", "in-sync", "high_watermark", "log_end"
    );
    for p in &s.partitions {
        let lag = p.lag.iter().map(|l| format!("{}:{}", l.node_id, l.records)).collect::<Vec<_>>().join(" ");
        println!(
            "{:<24} {:>6} {:>6} {:<10} {:<10} {:>14} {:>12}  {lag}",
            format!("{}/{}", p.topic, p.partition),
            id(p.leader),
            p.epoch,
            list(&p.replicas),
            list(&p.in_sync),
            p.high_watermark,
            p.log_end
        );
    }
    Ok(())
}

/// What a node does: how many partitions it leads and follows, and whether it leads the
/// metadata (in master-slave mode the master is the node that leads them all).
fn node_role(s: &ClusterStatusResponse, n: &NodeStatusInfo) -> String {
    let leads = s.partitions.iter().filter(|p| p.leader == Some(n.node_id)).count();
    let follows =
        s.partitions.iter().filter(|p| p.leader != Some(n.node_id) && p.replicas.contains(&n.node_id)).count();
    let mut role = format!("leads {leads}, follows {follows}");
    if n.metadata_leader {
        role.push_str(", metadata leader");
    }
    role
}

fn text_or_base64(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_string(),
        Err(_) => base64::engine::general_purpose::STANDARD.encode(b),
    }
}
