//! Rate-limited logging: a failure that repeats for every message (a full disk under a
//! stream of appends, a flood of forged hellos) is logged at most a few times a second per
//! call site, with a count of the lines left out, so that it cannot fill the disk it
//! complains about.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// One call site's state: when its window began, how many lines it logged in it, and how
/// many it left out since it last logged.
pub struct LogLimit {
    window_ms: AtomicI64,
    in_window: AtomicU64,
    left_out: AtomicU64,
}

impl LogLimit {
    pub const fn new() -> LogLimit {
        LogLimit { window_ms: AtomicI64::new(i64::MIN), in_window: AtomicU64::new(0), left_out: AtomicU64::new(0) }
    }

    /// Whether a line may be logged at `now_ms` (at most `burst` per `every_ms`): `Some(lines
    /// left out before it)`. Threads racing on a window boundary may log a line more or
    /// less; the bound holds within that.
    pub fn admit(&self, now_ms: i64, every_ms: i64, burst: u64) -> Option<u64> {
        let start = self.window_ms.load(Relaxed);
        // (A clock that went back, e.g. a new simulated schedule, starts a window too.)
        let due = start == i64::MIN || now_ms < start || now_ms - start >= every_ms;
        if due && self.window_ms.compare_exchange(start, now_ms, Relaxed, Relaxed).is_ok() {
            self.in_window.store(1, Relaxed);
            return Some(self.left_out.swap(0, Relaxed));
        }
        if self.in_window.fetch_add(1, Relaxed) < burst {
            return Some(self.left_out.swap(0, Relaxed));
        }
        self.left_out.fetch_add(1, Relaxed);
        None
    }
}

impl Default for LogLimit {
    fn default() -> Self {
        Self::new()
    }
}

/// One call site of [`log_limited!`] logs at most [`BURST`] lines per [`EVERY_MS`].
pub const EVERY_MS: i64 = 1000;
pub const BURST: u64 = 5;

/// Like `log::$level!`, at most [`BURST`] lines per [`EVERY_MS`] for this call site.
#[macro_export]
macro_rules! log_limited {
    ($level:ident, $($arg:tt)+) => {{
        static LIMIT: $crate::log_limit::LogLimit = $crate::log_limit::LogLimit::new();
        match LIMIT.admit($crate::rt::now_ms(), $crate::log_limit::EVERY_MS, $crate::log_limit::BURST) {
            Some(0) => log::$level!($($arg)+),
            Some(n) => log::$level!("{} ({n} more like it left out)", format_args!($($arg)+)),
            None => {}
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::LogLimit;

    #[test]
    fn a_repeated_line_is_admitted_a_burst_per_interval_with_the_count_left_out() {
        let limit = LogLimit::new();
        for t in 0..3 {
            assert_eq!(limit.admit(10_000 + t, 1000, 3), Some(0));
        }
        for t in 3..100 {
            assert_eq!(limit.admit(10_000 + t, 1000, 3), None);
        }
        assert_eq!(limit.admit(11_000, 1000, 3), Some(97));
        assert_eq!(limit.admit(11_001, 1000, 3), Some(0));
        assert_eq!(limit.admit(11_002, 1000, 3), Some(0));
        assert_eq!(limit.admit(11_003, 1000, 3), None);
        // A clock that went back starts over.
        assert_eq!(limit.admit(5, 1000, 3), Some(1));
    }
}
