//! Connection caps at accept: all client connections of the process, and
//! per source address (a greedy or hostile client cannot hold every
//! socket). Over a cap the connection is closed at once and counted; the
//! accept loop never waits.

use crate::pool::fxhash::FxHashMap;
use crate::telemetry::metrics::{ConnGuard, ListenerStats};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Connections refused: 0 over the process cap, 1 over the per-source cap.
pub static REFUSED: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// Open connections per source address.
type Counts = Arc<Mutex<FxHashMap<IpAddr, u32>>>;

/// The caps and the live per-source counts.
#[derive(Debug)]
pub struct ConnLimits {
    /// Client connections open at once, both listeners (0: no cap).
    pub max: usize,
    /// Client connections from one address (0: no cap).
    pub per_source: u32,
    open: Counts,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits::new(0, 0)
    }
}

/// A client connection's place under the caps, released on drop.
#[derive(Debug)]
pub struct ConnSlot {
    _open: ConnGuard,
    source: Option<(Counts, IpAddr)>,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if let Some((map, ip)) = self.source.take() {
            let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = m.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&ip);
                }
            }
        }
    }
}

impl ConnLimits {
    pub fn new(max: usize, per_source: u32) -> Self {
        ConnLimits {
            max,
            per_source,
            open: Arc::default(),
        }
    }

    /// Admit a connection from `ip` on `listener`; `None`: over a cap (the
    /// caller closes it). `count_source` is false for trusted balancers
    /// (every client behind them shares their address).
    pub fn admit(
        &self,
        listener: &'static ListenerStats,
        ip: IpAddr,
        count_source: bool,
    ) -> Option<ConnSlot> {
        use crate::telemetry::metrics::{HTTP, HTTPS};
        if self.max > 0 {
            let open = HTTP.active.load(Ordering::Relaxed) + HTTPS.active.load(Ordering::Relaxed);
            if open >= self.max as i64 {
                REFUSED[0].fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
        let source = if self.per_source > 0 && count_source {
            let ip = ip.to_canonical();
            let mut m = self.open.lock().unwrap_or_else(|p| p.into_inner());
            let n = m.entry(ip).or_insert(0);
            if *n >= self.per_source {
                REFUSED[1].fetch_add(1, Ordering::Relaxed);
                return None;
            }
            *n += 1;
            Some((self.open.clone(), ip))
        } else {
            None
        };
        Some(ConnSlot {
            _open: listener.open(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::HTTP;

    #[test]
    fn per_source_cap_and_release() {
        let l = ConnLimits::new(0, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = l.admit(&HTTP, a, true).unwrap();
        let _s2 = l.admit(&HTTP, a, true).unwrap();
        assert!(l.admit(&HTTP, a, true).is_none(), "third from one address");
        assert!(l.admit(&HTTP, b, true).is_some(), "others unaffected");
        assert!(
            l.admit(&HTTP, a, false).is_some(),
            "a trusted balancer is not capped"
        );
        drop(s1);
        assert!(l.admit(&HTTP, a, true).is_some(), "a slot freed on close");
    }
}
