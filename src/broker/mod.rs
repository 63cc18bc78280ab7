//! The broker's state on a shard: the topic catalog, the partitions this shard owns and the
//! consumer-group offsets it keeps. Protocol-agnostic: the server turns frames into calls.

pub mod catalog;
pub mod offsets;
pub mod partition;
pub mod producer_ids;

pub use catalog::{Catalog, TopicConfig};
pub use partition::{Partition, ServerDisk};
