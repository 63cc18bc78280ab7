//! Every size limit of Quorra in one place, with their relations checked at compile time.
//!
//! A limit that is not here is a bug: bounded queues, frame sizes and batch sizes must be
//! explainable from this file alone.

/// Bytes of the fixed frame header that precedes every request and response.
pub const FRAME_HEADER_BYTES: usize = 32;

/// Default largest frame (header + archive + payload) a broker accepts; `max_frame_bytes` in config.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Smallest `max_frame_bytes` an operator may configure: must fit one 1 MiB message and its overhead.
pub const MIN_MAX_FRAME_BYTES: usize = 2 * 1024 * 1024;

/// Largest archive (the rkyv part of a frame, without the payload). Requests are small structs.
pub const MAX_ARCHIVE_BYTES: usize = 64 * 1024;

/// Largest single record batch, header included.
pub const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// Largest number of records in one batch.
pub const MAX_RECORDS_PER_BATCH: u32 = 1 << 20;

/// Longest topic name.
pub const MAX_TOPIC_NAME_BYTES: usize = 200;

/// Longest consumer-group name.
pub const MAX_GROUP_NAME_BYTES: usize = 200;

/// Most partitions one topic may have.
pub const MAX_PARTITIONS_PER_TOPIC: u32 = 1024;

/// Longest a fetch may wait for new data (long poll).
pub const MAX_FETCH_WAIT_MS: u32 = 60_000;

/// Largest `max_bytes` a fetch may ask for.
pub const MAX_FETCH_BYTES: u32 = 8 * 1024 * 1024;

/// Requests a single connection may have in flight on the broker; reading stops beyond it.
pub const MAX_IN_FLIGHT_PER_CONNECTION: usize = 512;

/// Forwarded requests that may wait, per shard and node, for the link to that node to open
/// (`shard/forward.rs`); beyond, a request fails at once as unavailable.
pub const MAX_FORWARDS_WAITING_FOR_LINK: usize = 4096;

/// Depth of each shard-to-shard channel of the mesh.
pub const MESH_CHANNEL_DEPTH: usize = 1024;

/// Largest group-commit write of a partition log; a single larger batch is written alone.
pub const MAX_WRITE_BYTES: usize = 4 * 1024 * 1024;

/// Alignment of direct I/O on every supported file system (logical block size upper bound).
pub const IO_ALIGNMENT: usize = 4096;

/// Default for how long the rest of a frame may take once its first byte arrived.
pub const DEFAULT_FRAME_TIMEOUT_MS: u64 = 10_000;

/// Default for how long a client connection may send nothing before it is closed
/// (`idle_timeout_ms`; Kafka's `connections.max.idle.ms` is the same 10 minutes).
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 10 * 60 * 1000;

/// Default for the client connections a broker holds at once (`max_connections`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// Default for the client connections one address may hold (`max_connections_per_ip`).
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 1_000;

/// Default for the bytes of answers one connection may have pending, not yet written
/// (`max_answer_bytes_per_connection`): eight of the largest fetch answers.
pub const DEFAULT_MAX_ANSWER_BYTES_PER_CONNECTION: usize = 64 * 1024 * 1024;

/// Default for the appended bytes a partition holds before they are written
/// (`storage.max_pending_bytes`): beyond, producers get a retriable `backpressure`.
pub const DEFAULT_MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;

/// A new segment file's preallocation (`storage.preallocate_bytes`); it doubles as the
/// segment fills. What one partition costs on disk before it holds data.
pub const DEFAULT_PREALLOCATE_BYTES: u64 = 1024 * 1024;

/// Default for the partitions a broker holds at most (`max_partitions`).
pub const DEFAULT_MAX_PARTITIONS: usize = 4096;

/// Default for the consumer groups a broker (a cluster) holds at most (`max_consumer_groups`).
pub const DEFAULT_MAX_CONSUMER_GROUPS: usize = 10_000;

/// Largest consumer-group offset record's metadata string.
pub const MAX_OFFSET_METADATA_BYTES: usize = 1024;

const _: () = assert!(MAX_BATCH_BYTES + MAX_ARCHIVE_BYTES + FRAME_HEADER_BYTES <= DEFAULT_MAX_FRAME_BYTES);
const _: () = assert!(MIN_MAX_FRAME_BYTES > 1024 * 1024 + MAX_ARCHIVE_BYTES);
const _: () = assert!(MAX_FETCH_BYTES as usize <= MAX_BATCH_BYTES);
const _: () = assert!(IO_ALIGNMENT.is_power_of_two());
const _: () = assert!(FRAME_HEADER_BYTES % 16 == 0, "the archive after the header must stay 16-aligned");

/// A cluster has at most this many nodes.
pub const MAX_CLUSTER_NODES: usize = 64;

/// Default time after which a silent partition leader (or metadata leader) is replaced:
/// failover then completes in about a second on a LAN.
pub const DEFAULT_ELECTION_TIMEOUT_MS: u64 = 600;
/// shared-storage: how long an active node's lease on the data directory lasts unrenewed.
/// It bounds the takeover of a paused or cut-off node (about twice this) and is renewed
/// every quarter of it.
pub const DEFAULT_LEASE_MS: u64 = 1000;

/// How fast a replica's background scrub reads its log (about 1/30 of these disks'
/// sequential read rate: a pass over 100 GiB takes under an hour).
pub const DEFAULT_SCRUB_BYTES_PER_SEC: u64 = 32 << 20;

/// A replica's log is scrubbed after every open and again this long after its last pass.
pub const DEFAULT_SCRUB_INTERVAL_SECS: u64 = 24 * 3600;

/// Largest control-plane message (metadata log entries, snapshots, status).
pub const MAX_CONTROL_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Batches of one producer whose offsets a partition remembers, to answer a retry with the
/// offsets it already has. Producers keep at most this many batches of one partition
/// unacknowledged, so that every retry they send falls within what the partition remembers.
pub const PRODUCER_BATCHES_REMEMBERED: usize = 32;

/// Idempotent producers one partition tracks; beyond it the one that wrote least recently
/// is forgotten (its next batch gets `unknown_producer`, never a silent accept).
pub const MAX_PRODUCERS_PER_PARTITION: usize = 4096;

/// Producer ids a broker reserves at a time (one durable write, or one metadata command in a
/// cluster, per block).
pub const PRODUCER_ID_BLOCK: u64 = 1024;

const _: () = assert!(PRODUCER_BATCHES_REMEMBERED <= MAX_IN_FLIGHT_PER_CONNECTION);

/// Default bound on a clean shutdown (SIGTERM/SIGINT), controlled hand-over included.
pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 10_000;
