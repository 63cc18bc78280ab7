//! Blocking file-system calls whose effect on directories survives a power loss.
//!
//! An fsync of a file makes its data durable, not its name: the name is an entry of the
//! parent directory, which must be synced too. So every call here that adds, replaces or
//! removes an entry syncs the directory holding it (and `create_dir_all` every directory it
//! added an entry to): a new topic directory does not vanish after a power loss, and a
//! deleted segment does not come back.
//!
//! These block: the shards call them through the disk seam's blocking pool
//! ([`super::glommio_disk`]); start-up code calls them directly.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Syncs a directory: the entries added, replaced or removed in it are durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(test)]
    recorded::note(dir);
    std::fs::File::open(dir)?.sync_all()
}

/// Creates `path` and its missing ancestors; syncs the parent of each one it created.
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    let mut missing: Vec<PathBuf> = Vec::new();
    let mut at = Some(path);
    while let Some(p) = at {
        if p.as_os_str().is_empty() || p.exists() {
            break;
        }
        missing.push(p.to_path_buf());
        at = p.parent();
    }
    std::fs::create_dir_all(path)?;
    // Deepest first: a directory's entry is made durable after its own contents' entries.
    for dir in &missing {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fsync_dir(parent)?;
        }
    }
    Ok(())
}

/// Removes a file and syncs its directory. A file already gone is not an error (its
/// directory is synced all the same: the removal may not have been durable yet).
pub fn remove_file(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    sync_parent(path)
}

/// Removes a directory tree and syncs the directory that held it (its own entries go with
/// it: once its entry is gone, nothing below is reachable). Absent is not an error.
pub fn remove_dir_all(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    sync_parent(path)
}

/// Replaces `path` with `bytes`, all or nothing and durably: a temporary file, synced,
/// renamed over the target, the directory synced. `before_rename` may still refuse (the
/// shared-storage fence). The temporary name is unique per call, so concurrent writers of
/// the same file cannot rename each other's file away.
pub fn write_atomic(path: &Path, bytes: &[u8], before_rename: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let unique = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = path.file_name().map_or_else(Default::default, |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!("{name}.{}.{unique}.tmp", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    if let Err(e) = before_rename() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path)?;
    sync_parent(path)
}

fn sync_parent(path: &Path) -> io::Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => match fsync_dir(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        },
        None => Ok(()),
    }
}

/// Tests: which directories were synced (every test thread's, filtered by path).
#[cfg(test)]
pub(crate) mod recorded {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    static SYNCED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

    pub(super) fn note(dir: &Path) {
        SYNCED.lock().unwrap_or_else(|e| e.into_inner()).push(dir.to_path_buf());
    }

    /// The directories under `root` (or `root` itself) synced so far, forgetting them.
    pub fn take_under(root: &Path) -> Vec<PathBuf> {
        let mut all = SYNCED.lock().unwrap_or_else(|e| e.into_inner());
        let (mine, others): (Vec<_>, Vec<_>) = all.drain(..).partition(|d| d.starts_with(root));
        *all = others;
        mine
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::recorded::take_under;
    use crate::storage::glommio_disk::GlommioDisk;
    use crate::storage::{Disk, DiskFile};

    fn run<F: std::future::Future<Output = ()> + 'static>(f: impl FnOnce() -> F + Send + 'static) {
        crate::rt::block_on(f()).unwrap();
    }

    fn synced(root: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            take_under(root).iter().map(|d| d.strip_prefix(root).unwrap().display().to_string()).collect();
        v.sort();
        v.dedup();
        v
    }

    /// Defect 11j: after a power loss, a new topic directory must not vanish and a deleted
    /// segment must not reappear. The disk seam syncs every directory whose entries changed:
    /// each parent of a directory it created, the directory of a removed file or tree.
    #[test]
    fn the_disk_syncs_every_directory_whose_entries_changed() {
        let dir = tempfile::Builder::new().prefix("quorra-dirsync").tempdir_in("/tmp").unwrap();
        let root = dir.path().to_path_buf();
        run(move || async move {
            let disk = GlommioDisk { dsync: true };
            disk.create_dir_all(&root.join("topics/orders/0")).await.unwrap();
            assert_eq!(synced(&root), ["", "topics", "topics/orders"], "each new directory's entry is durable");
            disk.create_dir_all(&root.join("topics/orders/0")).await.unwrap();
            assert!(synced(&root).is_empty(), "nothing created, nothing to sync");
            let segment = root.join("topics/orders/0/00000000000000000000.log");
            disk.open(&segment, true).await.unwrap().close().await.unwrap();
            assert_eq!(synced(&root), ["topics/orders/0"], "a new file's entry is durable");
            disk.remove_file(&segment).await.unwrap();
            assert_eq!(synced(&root), ["topics/orders/0"], "a removed segment stays removed");
            disk.remove_dir_all(&root.join("topics/orders")).await.unwrap();
            assert_eq!(synced(&root), ["topics"], "a removed topic stays removed");
            disk.write_file_atomic(&root.join("topics/catalog.json"), b"{}".to_vec()).await.unwrap();
            assert_eq!(synced(&root), ["topics"], "a replaced file's new entry is durable");
        });
    }
}
