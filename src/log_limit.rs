//! Rate-limited logging: a failure that repeats for every message (a full disk under a
//! stream of appends) is logged at most once a second per call site, with a count of the
//! lines left out, so that it cannot fill the disk it complains about.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// One call site's state: when it last logged, and how many lines it left out since.
pub struct LogLimit {
    last_ms: AtomicI64,
    left_out: AtomicU64,
}

impl LogLimit {
    pub const fn new() -> LogLimit {
        LogLimit { last_ms: AtomicI64::new(i64::MIN), left_out: AtomicU64::new(0) }
    }

    /// Whether a line may be logged at `now_ms`: `Some(lines left out before it)`.
    pub fn admit(&self, now_ms: i64, every_ms: i64) -> Option<u64> {
        let last = self.last_ms.load(Relaxed);
        // (A clock that went back, e.g. a new simulated schedule, also logs.)
        let due = last == i64::MIN || now_ms < last || now_ms - last >= every_ms;
        if due && self.last_ms.compare_exchange(last, now_ms, Relaxed, Relaxed).is_ok() {
            Some(self.left_out.swap(0, Relaxed))
        } else {
            self.left_out.fetch_add(1, Relaxed);
            None
        }
    }
}

impl Default for LogLimit {
    fn default() -> Self {
        Self::new()
    }
}

/// Like `log::$level!`, at most once per `$every_ms` milliseconds for this call site.
#[macro_export]
macro_rules! log_limited {
    ($level:ident, $every_ms:expr, $($arg:tt)+) => {{
        static LIMIT: $crate::log_limit::LogLimit = $crate::log_limit::LogLimit::new();
        match LIMIT.admit($crate::rt::now_ms(), $every_ms) {
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
    fn a_repeated_line_is_admitted_once_per_interval_with_the_count_left_out() {
        let limit = LogLimit::new();
        assert_eq!(limit.admit(10_000, 1000), Some(0));
        for t in 1..100 {
            assert_eq!(limit.admit(10_000 + t, 1000), None);
        }
        assert_eq!(limit.admit(11_000, 1000), Some(99));
        assert_eq!(limit.admit(11_001, 1000), None);
        // A clock that went back starts over.
        assert_eq!(limit.admit(5, 1000), Some(1));
    }
}
