//! Quorra: a replicated, thread-per-core message broker on io_uring.
//!
//! See `ARCHITECTURE.md` for the map of the code.

pub mod broker;
pub mod client;
pub mod cluster;
pub mod config;
pub mod kafka;
pub mod limits;
pub mod log_limit;
pub mod net;
pub mod protocol;
pub mod replication;
pub mod rt;
pub mod server;
pub mod shard;
#[cfg(test)]
mod sim;
pub mod storage;
