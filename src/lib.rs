//! Quorra: a replicated, thread-per-core message broker on io_uring.
//!
//! See `ARCHITECTURE.md` for the map of the code.

pub mod limits;
pub mod protocol;
pub mod storage;
pub mod broker;
pub mod config;
pub mod rt;
pub mod net;
pub mod server;
pub mod shard;
pub mod client;
