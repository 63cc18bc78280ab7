//! Storage: the partition log on direct I/O, its recovery, and the disk seam under it.
//!
//! Owned by one shard at a time; nothing here is `Send`. The log never performs I/O while
//! its state is borrowed: see [`log`] for the job protocol.

pub mod control_files;
pub mod disk;
pub mod durable_fs;
pub mod faults;
pub mod fence;
pub mod glommio_disk;
pub mod index;
pub mod log;
pub mod mem_disk;
pub mod scan;

pub use disk::{Disk, DiskError, DiskFile};
pub use log::{LogConfig, LogHealth, PartitionLog, StorageError};

#[cfg(test)]
mod tests;
