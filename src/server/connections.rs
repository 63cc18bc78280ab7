//! How many client connections a broker holds, in all and per client address: one client
//! cannot take every descriptor (or every shard's memory) by opening connections.
//!
//! Shared by the shards of a broker; touched once when a connection opens and once when it
//! closes, never on the request path.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The broker-wide connection counts and their limits.
#[derive(Debug)]
pub struct ConnectionRegistry {
    max_total: usize,
    max_per_ip: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    /// Holds at most `max_total` addresses (an address is removed with its last connection).
    per_ip: HashMap<IpAddr, usize>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the broker holds its limit of {0} connections (max_connections)")]
    Broker(usize),
    #[error("{ip} holds its limit of {limit} connections (max_connections_per_ip)")]
    Address { ip: IpAddr, limit: usize },
}

/// A connection counted in the registry; dropping it releases the count.
#[derive(Debug)]
pub struct ConnectionSlot {
    registry: Arc<ConnectionRegistry>,
    ip: IpAddr,
}

impl ConnectionRegistry {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<ConnectionRegistry> {
        Arc::new(ConnectionRegistry { max_total, max_per_ip, counts: Mutex::default() })
    }

    /// Counts a new connection from `ip`, unless a limit is reached.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot, Refused> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.total >= self.max_total {
            return Err(Refused::Broker(self.max_total));
        }
        let mine = counts.per_ip.entry(ip).or_default();
        if *mine >= self.max_per_ip {
            return Err(Refused::Address { ip, limit: self.max_per_ip });
        }
        *mine += 1;
        counts.total += 1;
        Ok(ConnectionSlot { registry: self.clone(), ip })
    }

    /// Connections now held.
    pub fn total(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = self.registry.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.total -= 1;
        if let Some(n) = counts.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_broker_and_per_address_are_kept_and_released() {
        let r = ConnectionRegistry::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = r.admit(a).unwrap();
        let _a2 = r.admit(a).unwrap();
        assert_eq!(r.admit(a).unwrap_err(), Refused::Address { ip: a, limit: 2 });
        let _b1 = r.admit(b).unwrap();
        assert_eq!(r.admit(b).unwrap_err(), Refused::Broker(3));
        drop(a1);
        assert_eq!(r.total(), 2);
        let _b2 = r.admit(b).expect("a released slot is free again");
        assert_eq!(r.counts.lock().unwrap().per_ip.len(), 2);
    }
}
