//! Per-principal quotas (with `[auth] enabled`): produce and fetch byte rates and
//! connection counts, broker-wide.
//!
//! A principal over its byte rate is throttled, as Kafka does: its connection's reader waits
//! before it passes on the next request (so the answer comes later, and nothing more is
//! read meanwhile), and the answer says how long (`throttle_ms`). Nothing is dropped. The
//! rate is a GCRA (virtual scheduling) on one atomic per principal and direction: a burst of
//! one second's worth passes at once, beyond it each byte owes `1 / rate` seconds. The
//! table of principals is locked only when a connection authenticates, never per request.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// The longest a single request is held back (a client far over its rate is slowed at
/// this pace until its debt is paid, not parked for minutes).
pub const MAX_THROTTLE: Duration = Duration::from_secs(5);

/// `[quotas]` of the config (0: no limit).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaSettings {
    /// Bytes per second each principal may produce (record batches, as sent).
    pub produce_bytes_per_sec: u64,
    /// Bytes per second each principal may fetch (record batches, as answered).
    pub fetch_bytes_per_sec: u64,
    /// Connections each principal may hold at once.
    pub connections: usize,
    /// Per user: other limits than the defaults above.
    pub users: BTreeMap<String, UserQuota>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UserQuota {
    pub produce_bytes_per_sec: Option<u64>,
    pub fetch_bytes_per_sec: Option<u64>,
    pub connections: Option<usize>,
}

impl QuotaSettings {
    pub fn any(&self) -> bool {
        self.produce_bytes_per_sec > 0 || self.fetch_bytes_per_sec > 0 || self.connections > 0 || !self.users.is_empty()
    }
}

/// A byte rate: the GCRA's theoretical arrival time, in ns since the broker's start.
struct Rate {
    bytes_per_sec: u64,
    tat_ns: AtomicU64,
}

impl Rate {
    fn new(bytes_per_sec: u64) -> Rate {
        Rate { bytes_per_sec, tat_ns: AtomicU64::new(0) }
    }

    /// Records `bytes` at `now_ns`; how long to wait before the next request passes.
    fn charge(&self, bytes: u64, now_ns: u64) -> Duration {
        if self.bytes_per_sec == 0 {
            return Duration::ZERO;
        }
        let cost = (u128::from(bytes) * 1_000_000_000 / u128::from(self.bytes_per_sec)).min(u128::from(u64::MAX / 4));
        let cost = cost as u64;
        let mut tat = self.tat_ns.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now_ns).saturating_add(cost);
            match self.tat_ns.compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Self::wait(next, now_ns),
                Err(seen) => tat = seen,
            }
        }
    }

    /// The wait owed at `now_ns` for a schedule reaching `tat_ns` (a second's burst free).
    fn wait(tat_ns: u64, now_ns: u64) -> Duration {
        let owed = tat_ns.saturating_sub(now_ns).saturating_sub(1_000_000_000);
        Duration::from_nanos(owed).min(MAX_THROTTLE)
    }

    fn owed(&self, now_ns: u64) -> Duration {
        if self.bytes_per_sec == 0 {
            return Duration::ZERO;
        }
        Self::wait(self.tat_ns.load(Ordering::Relaxed), now_ns)
    }
}

/// One principal's limits and use, shared by its connections on every shard.
pub struct PrincipalQuota {
    produce: Rate,
    fetch: Rate,
    max_connections: usize,
    connections: AtomicUsize,
    epoch: Instant,
}

impl PrincipalQuota {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Before a request passes: a produce is charged its bytes; any request waits for what
    /// the principal owes (a fetch: for the bytes earlier fetches answered).
    pub fn before(&self, produce_bytes: Option<u64>) -> Duration {
        let now = self.now_ns();
        let produce = match produce_bytes {
            Some(bytes) => self.produce.charge(bytes, now),
            None => Duration::ZERO,
        };
        produce.max(self.fetch.owed(now))
    }

    /// After a fetch answered `bytes`.
    pub fn fetched(&self, bytes: u64) {
        self.fetch.charge(bytes, self.now_ns());
    }
}

/// A connection's hold on its principal's quota; released when dropped.
pub struct ConnectionQuota(Arc<PrincipalQuota>);

impl ConnectionQuota {
    /// The principal's quota, for a task that outlives the request (a fetch's answer).
    pub fn shared(&self) -> Arc<PrincipalQuota> {
        self.0.clone()
    }
}

impl std::ops::Deref for ConnectionQuota {
    type Target = PrincipalQuota;
    fn deref(&self) -> &PrincipalQuota {
        &self.0
    }
}

impl Drop for ConnectionQuota {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The broker's quotas (shared by its shards).
pub struct Quotas {
    settings: QuotaSettings,
    principals: Mutex<HashMap<Arc<str>, Arc<PrincipalQuota>>>,
    epoch: Instant,
}

impl Quotas {
    pub fn new(settings: QuotaSettings) -> Quotas {
        Quotas { settings, principals: Mutex::new(HashMap::new()), epoch: Instant::now() }
    }

    /// A new authenticated connection of `principal`: its quota, or the refusal when the
    /// principal holds all the connections it may.
    pub fn admit(&self, principal: &Arc<str>) -> Result<ConnectionQuota, String> {
        let quota = {
            let mut table = self.principals.lock().unwrap_or_else(|e| e.into_inner());
            table.entry(principal.clone()).or_insert_with(|| Arc::new(self.limits_of(principal))).clone()
        };
        let held = quota.connections.fetch_add(1, Ordering::Relaxed);
        let conn = ConnectionQuota(quota);
        if conn.max_connections > 0 && held >= conn.max_connections {
            return Err(format!("{principal} holds its limit of {} connections (quotas)", conn.max_connections));
        }
        Ok(conn)
    }

    fn limits_of(&self, principal: &str) -> PrincipalQuota {
        let s = &self.settings;
        let user = s.users.get(principal);
        PrincipalQuota {
            produce: Rate::new(user.and_then(|u| u.produce_bytes_per_sec).unwrap_or(s.produce_bytes_per_sec)),
            fetch: Rate::new(user.and_then(|u| u.fetch_bytes_per_sec).unwrap_or(s.fetch_bytes_per_sec)),
            max_connections: user.and_then(|u| u.connections).unwrap_or(s.connections),
            connections: AtomicUsize::new(0),
            epoch: self.epoch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_lets_a_seconds_burst_through_then_spaces_the_rest() {
        let rate = Rate::new(1000);
        assert_eq!(rate.charge(1000, 0), Duration::ZERO, "a second's worth at once");
        assert_eq!(rate.charge(500, 0), Duration::from_millis(500), "then half a second per 500 bytes");
        assert_eq!(rate.owed(250_000_000), Duration::from_millis(250), "the debt shrinks as time passes");
        assert_eq!(rate.owed(10_000_000_000), Duration::ZERO);
        assert_eq!(rate.charge(u64::MAX, 0), MAX_THROTTLE, "a single wait is bounded");
        assert_eq!(Rate::new(0).charge(u64::MAX, 0), Duration::ZERO, "0: no limit");
    }

    #[test]
    fn connections_are_counted_per_principal_and_released() {
        let settings = QuotaSettings {
            connections: 2,
            users: [("bulk".to_string(), UserQuota { connections: Some(1), ..Default::default() })].into(),
            ..Default::default()
        };
        let quotas = Quotas::new(settings);
        let (alice, bulk): (Arc<str>, Arc<str>) = ("alice".into(), "bulk".into());
        let a1 = quotas.admit(&alice).unwrap();
        let _a2 = quotas.admit(&alice).unwrap();
        assert!(quotas.admit(&alice).err().unwrap().contains("limit of 2"));
        drop(a1);
        quotas.admit(&alice).unwrap();
        let _b = quotas.admit(&bulk).unwrap();
        assert!(quotas.admit(&bulk).is_err(), "a user's own limit");
    }
}
