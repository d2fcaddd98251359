//! `haproxy.router.openshift.io/rate-limit-connections`: per client address
//! and route, concurrent requests (`.concurrent-tcp`), new connections per
//! 3 s (`.rate-tcp`) and HTTP requests per 10 s (`.rate-http`). State lives
//! outside the table, keyed by route, so a table swap does not reset it.

use crate::table::RateLimits;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TCP_WINDOW: Duration = Duration::from_secs(3);
const HTTP_WINDOW: Duration = Duration::from_secs(10);
/// Addresses idle this long are forgotten.
const FORGET: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Window {
    start: Instant,
    count: u32,
}

impl Window {
    fn hit(&mut self, now: Instant, len: Duration, limit: u32) -> bool {
        if now.duration_since(self.start) >= len {
            self.start = now;
            self.count = 0;
        }
        if self.count >= limit {
            return false;
        }
        self.count += 1;
        true
    }
}

#[derive(Debug)]
struct Client {
    in_flight: u32,
    tcp: Window,
    http: Window,
    seen: Instant,
}

#[derive(Debug, Default)]
struct RouteState {
    clients: Mutex<HashMap<IpAddr, Client>>,
}

/// `(namespace, name)`.
type RouteKey = (Arc<str>, Arc<str>);

/// Every rate-limited route's counters.
#[derive(Debug, Default)]
pub struct Limiters {
    routes: Mutex<HashMap<RouteKey, Arc<RouteState>>>,
}

/// Which limit was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limited {
    Concurrent,
    RateTcp,
    RateHttp,
}

/// Holds one concurrent slot until dropped.
#[derive(Debug)]
pub struct Slot {
    state: Arc<RouteState>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self.state.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = m.get_mut(&self.ip) {
            c.in_flight = c.in_flight.saturating_sub(1);
        }
    }
}

impl Limiters {
    /// Admit one request from `ip` to route `ns/name`; `new_conn` when it is
    /// the first request of its connection.
    pub fn admit(
        &self,
        ns: &Arc<str>,
        name: &Arc<str>,
        limits: &RateLimits,
        ip: IpAddr,
        new_conn: bool,
    ) -> Result<Slot, Limited> {
        let state = {
            let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
            routes
                .entry((ns.clone(), name.clone()))
                .or_default()
                .clone()
        };
        let now = Instant::now();
        let mut clients = state.clients.lock().unwrap_or_else(|p| p.into_inner());
        // Sweep idle addresses now and then, not on every request.
        if clients.len() > 10_000 && clients.len() % 1024 == 0 {
            clients.retain(|_, c| c.in_flight > 0 || now.duration_since(c.seen) < FORGET);
        }
        let c = clients.entry(ip).or_insert_with(|| Client {
            in_flight: 0,
            tcp: Window {
                start: now,
                count: 0,
            },
            http: Window {
                start: now,
                count: 0,
            },
            seen: now,
        });
        c.seen = now;
        if let Some(max) = limits.concurrent {
            if c.in_flight >= max {
                return Err(Limited::Concurrent);
            }
        }
        if let (Some(max), true) = (limits.rate_tcp, new_conn) {
            if !c.tcp.hit(now, TCP_WINDOW, max) {
                return Err(Limited::RateTcp);
            }
        }
        if let Some(max) = limits.rate_http {
            if !c.http.hit(now, HTTP_WINDOW, max) {
                return Err(Limited::RateHttp);
            }
        }
        c.in_flight += 1;
        drop(clients);
        Ok(Slot { state, ip })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_client() {
        let l = Limiters::default();
        let (ns, name): (Arc<str>, Arc<str>) = ("n".into(), "r".into());
        let lim = RateLimits {
            concurrent: Some(2),
            rate_tcp: Some(3),
            rate_http: Some(5),
        };
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = l.admit(&ns, &name, &lim, a, true).unwrap();
        let s2 = l.admit(&ns, &name, &lim, a, false).unwrap();
        assert_eq!(
            l.admit(&ns, &name, &lim, a, false).unwrap_err(),
            Limited::Concurrent
        );
        assert!(
            l.admit(&ns, &name, &lim, b, true).is_ok(),
            "other clients unaffected"
        );
        drop((s1, s2));
        let _ = l.admit(&ns, &name, &lim, a, true).unwrap();
        let _ = l.admit(&ns, &name, &lim, a, true).unwrap();
        assert_eq!(
            l.admit(&ns, &name, &lim, a, true).unwrap_err(),
            Limited::RateTcp
        );
        // Four requests counted in the window so far (refusals count none).
        let _ = l.admit(&ns, &name, &lim, a, false).unwrap();
        assert_eq!(
            l.admit(&ns, &name, &lim, a, false).unwrap_err(),
            Limited::RateHttp
        );
    }
}
