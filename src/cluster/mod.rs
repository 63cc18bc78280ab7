//! The cluster: replicated metadata and partition leadership.
//!
//! - [`meta`]: the metadata state (topics, replica sets, epochs, leaders) and the commands
//!   that change it; pure.
//! - [`raft_store`]: openraft's log and state-machine storage for it, file-backed.
//! - [`rpc`]: the control links between nodes (framing, hello, messages).
//! - [`control`]: the control-plane thread: openraft, the links, the partition controllers
//!   (on the metadata leader), and the handle the shards use.

pub mod control;
pub mod meta;
pub mod raft_store;
pub mod rpc;

pub use control::{ControlError, ControlHandle, ControlPlane};
