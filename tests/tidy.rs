//! Keeps the layout honest (in the manner of rust-analyzer's `tidy.rs`): the rules that
//! ARCHITECTURE.md states about where things live are checked here on every test run, so a
//! change that breaks one fails here with the file and line, not in a later review.
//!
//! - glommio is named only by the runtime seam (`rt/`), the storage seam's glommio disk, the
//!   network seam (`net/`) and the shard runtime (`shard/runtime.rs`, `shard/mesh.rs`);
//! - the pure state machines and codecs (`replication/`, `cluster/meta.rs`, `protocol/`) do
//!   no I/O, read no clock and never await;
//! - every `unsafe` has a `// SAFETY:` comment just above it;
//! - no source file is over 800 lines;
//! - every queue is bounded: no unbounded channel anywhere.

use std::path::{Path, PathBuf};

const MAX_LINES: usize = 800;

/// Where glommio may be named (paths relative to `src/`).
const GLOMMIO_ALLOWED: &[&str] = &["rt/", "storage/glommio_disk.rs", "net/", "shard/runtime.rs", "shard/mesh.rs"];

/// Modules that must stay free of I/O, clocks and awaits (paths relative to `src/`).
const PURE: &[&str] = &["replication/", "cluster/meta.rs", "protocol/"];

/// What the pure modules must not contain.
const IMPURE: &[&str] = &[
    ".await",
    "async fn",
    "Instant::now",
    "SystemTime",
    "std::fs",
    "std::net::Tcp",
    "std::thread",
    "tokio",
    "glommio",
    "crate::rt",
];

struct Source {
    /// Relative to the workspace root.
    path: PathBuf,
    text: String,
}

fn sources(root: &Path) -> Vec<Source> {
    let mut out = Vec::new();
    let mut stack = vec![root.join("src"), root.join("tools"), root.join("benches")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n == "target") {
                    continue;
                }
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.push(Source { path: path.strip_prefix(root).unwrap().to_path_buf(), text });
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// Lines of code with their numbers: comment lines and `#[cfg(test)]` modules' bodies are
/// kept (tests obey the layout too), only `//` comments are dropped.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(i, l)| (i + 1, l)).filter(|(_, l)| !l.trim_start().starts_with("//"))
}

fn under_src(s: &Source) -> Option<String> {
    s.path.strip_prefix("src").ok().map(|p| p.to_string_lossy().into_owned())
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn report(rule: &str, found: Vec<String>) {
    assert!(found.is_empty(), "{rule}:\n  {}", found.join("\n  "));
}

#[test]
fn glommio_is_named_only_by_the_runtime_storage_and_network_seams() {
    let mut found = Vec::new();
    for s in sources(&root()) {
        let Some(rel) = under_src(&s) else { continue };
        if GLOMMIO_ALLOWED.iter().any(|a| rel.starts_with(a)) {
            continue;
        }
        for (n, line) in code_lines(&s.text) {
            if line.contains("glommio::") || line.contains("use glommio") {
                found.push(format!("{}:{n}: {}", s.path.display(), line.trim()));
            }
        }
    }
    report("glommio named outside rt/, storage/glommio_disk.rs, net/ and the shard runtime", found);
}

#[test]
fn the_state_machines_and_codecs_do_no_io_read_no_clock_and_never_await() {
    let mut found = Vec::new();
    for s in sources(&root()) {
        let Some(rel) = under_src(&s) else { continue };
        if !PURE.iter().any(|p| rel.starts_with(p)) {
            continue;
        }
        for (n, line) in code_lines(&s.text) {
            if let Some(word) = IMPURE.iter().find(|w| line.contains(*w)) {
                found.push(format!("{}:{n}: `{word}` in {}", s.path.display(), line.trim()));
            }
        }
    }
    report("I/O, clock or await in a pure module", found);
}

#[test]
fn every_unsafe_block_says_why_it_is_sound() {
    let mut found = Vec::new();
    for s in sources(&root()) {
        let lines: Vec<&str> = s.text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if !(code.contains("unsafe {") || code.contains("unsafe fn") || code.contains("unsafe impl")) {
                continue;
            }
            // The comment may sit on the lines just above (several lines of it, or above the
            // `let`/`if` the block is part of).
            let above = lines[i.saturating_sub(4)..i].iter().any(|l| l.contains("// SAFETY:"));
            if !(above || line.contains("// SAFETY:")) {
                found.push(format!("{}:{}: {}", s.path.display(), i + 1, line.trim()));
            }
        }
    }
    report("unsafe without a `// SAFETY:` comment above it", found);
}

/// One way of replacing a file atomically (`storage/durable_fs.rs`), reached only through
/// the two storage seams (`Disk` for the shards, `ControlFiles` for the metadata log, the
/// leases and start-up files), so that injected faults and `MemDisk` reach every file.
#[test]
fn files_are_replaced_only_through_the_storage_seams() {
    let mut found = Vec::new();
    for s in sources(&root()) {
        let Some(rel) = under_src(&s) else { continue };
        if rel.starts_with("storage/") {
            continue;
        }
        for (n, line) in code_lines(&s.text) {
            if line.contains("durable_fs::write_atomic")
                || line.contains("fs::rename(")
                || line.contains("create_new(true)")
            {
                found.push(format!("{}:{n}: {}", s.path.display(), line.trim()));
            }
        }
    }
    report("files replaced or created exclusively outside storage/ (use Disk or ControlFiles)", found);
}

#[test]
fn no_source_file_is_over_800_lines() {
    let found: Vec<String> = sources(&root())
        .iter()
        .filter(|s| s.text.lines().count() > MAX_LINES)
        .map(|s| format!("{}: {} lines", s.path.display(), s.text.lines().count()))
        .collect();
    report("source files over 800 lines (split them by what they do)", found);
}

#[test]
fn every_queue_is_bounded() {
    let mut found = Vec::new();
    for s in sources(&root()) {
        for (n, line) in code_lines(&s.text) {
            if line.contains("unbounded_channel") || line.contains("mpsc::channel()") || line.contains("unbounded()") {
                found.push(format!("{}:{n}: {}", s.path.display(), line.trim()));
            }
        }
    }
    report("unbounded queues (give each a bound a client cannot raise)", found);
}

/// The rules above would pass vacuously if the walk found nothing.
#[test]
fn the_walk_sees_the_sources() {
    let all = sources(&root());
    assert!(all.iter().any(|s| s.path == Path::new("src/storage/log/mod.rs")), "found {} files", all.len());
    assert!(all.iter().any(|s| s.path == Path::new("src/replication/replica.rs")));
}
