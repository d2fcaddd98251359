//! Live endpoint state that must outlive any one table: requests in flight
//! (leastconn, random's two choices) and passive health (consecutive
//! failures, ejection with back-off). Keyed by endpoint identity in a
//! registry, so a recompiled table picks up the same state.

use super::Endpoint;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// When an endpoint is taken out of rotation after failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Consecutive failures (connect errors, and 5xx when `eject_on_5xx`)
    /// before ejection; 0 turns passive ejection off.
    pub eject_after: u32,
    pub eject_on_5xx: bool,
    /// First ejection; doubles on each consecutive one.
    pub base_ejection: Duration,
    pub max_ejection: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            eject_after: 3,
            eject_on_5xx: false,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(30),
        }
    }
}

fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// One endpoint's counters and identity.
#[derive(Debug, Default)]
pub struct EndpointLive {
    active: AtomicU32,
    failures: AtomicU32,
    ejections: AtomicU32,
    ejected_until_ms: AtomicU64,
    /// Active checks: marked down after `FALL` failed checks in a row, up
    /// again after `RISE` good ones (HAProxy's defaults).
    down: AtomicBool,
    check_fails: AtomicU32,
    check_oks: AtomicU32,
    last_check_ms: AtomicU64,
    /// The sticky-cookie value naming this endpoint: HMAC-SHA256 of its
    /// address under the router's key, computed once.
    pub cookie: Arc<str>,
    /// Stable identity hash for consistent hashing (same HMAC).
    pub id: u64,
    /// Totals for /metrics.
    pub stats: EndpointCounters,
}

/// One endpoint's totals (across every route that uses it).
#[derive(Debug, Default)]
pub struct EndpointCounters {
    /// Responses by status class, index 0 = 1xx … 4 = 5xx.
    pub classes: [AtomicU64; 5],
    /// Response body bytes sent to clients.
    pub bytes_out: AtomicU64,
    /// Failed connects and exchanges.
    pub failures: AtomicU64,
    /// Times passive health took it out of rotation.
    pub ejections: AtomicU64,
}

impl EndpointCounters {
    pub fn finish(&self, status: u16, bytes: u64) {
        self.classes[super::stats::class_index(status)].fetch_add(1, Ordering::Relaxed);
        if bytes != 0 {
            self.bytes_out.fetch_add(bytes, Ordering::Relaxed);
        }
    }
}

/// Failed checks in a row that mark an endpoint down (HAProxy `fall`).
pub const FALL: u32 = 3;
/// Good checks in a row that bring it back (HAProxy `rise`).
pub const RISE: u32 = 2;

impl EndpointLive {
    /// Requests in flight to this endpoint.
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// Not ejected right now (an expired ejection means: try it again) and
    /// not marked down by active checks.
    pub fn is_available(&self) -> bool {
        if self.down.load(Ordering::Relaxed) {
            return false;
        }
        // Never ejected (or reinstated): no clock read on the hot path.
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until == 0 || until <= now_ms()
    }

    /// Marked down by active health checks.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// Whether a check is due given `interval`; claims it if so.
    pub fn check_due(&self, interval: Duration) -> bool {
        let now = now_ms();
        let last = self.last_check_ms.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < interval.as_millis() as u64 {
            return false;
        }
        self.last_check_ms
            .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Record an active check's result; returns `Some(up)` when the state
    /// changed.
    pub fn record_check(&self, ok: bool) -> Option<bool> {
        if ok {
            self.check_fails.store(0, Ordering::Relaxed);
            let n = self.check_oks.fetch_add(1, Ordering::Relaxed) + 1;
            if self.down.load(Ordering::Relaxed) && n >= RISE {
                self.down.store(false, Ordering::Relaxed);
                return Some(true);
            }
        } else {
            self.check_oks.store(0, Ordering::Relaxed);
            let n = self.check_fails.fetch_add(1, Ordering::Relaxed) + 1;
            if !self.down.load(Ordering::Relaxed) && n >= FALL {
                self.down.store(true, Ordering::Relaxed);
                return Some(false);
            }
        }
        None
    }

    /// Currently ejected.
    pub fn is_ejected(&self) -> bool {
        !self.is_available()
    }

    /// Count a request until the guard drops (response finished or gone).
    pub fn begin(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.clone())
    }

    /// `begin`, unless `cap` requests are already in flight: the check and
    /// the count are one atomic step, so two threads racing for an
    /// endpoint's last slot under `pod-concurrent-connections` cannot both
    /// take it.
    pub fn try_begin(self: &Arc<Self>, cap: Option<u32>) -> Option<ActiveGuard> {
        let Some(cap) = cap else {
            return Some(self.begin());
        };
        self.active
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| {
                (a < cap).then_some(a + 1)
            })
            .ok()
            .map(|_| ActiveGuard(self.clone()))
    }

    /// The endpoint answered well: forget past failures.
    pub fn record_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.ejections.load(Ordering::Relaxed) != 0 && self.is_available() {
            self.ejections.store(0, Ordering::Relaxed);
            self.ejected_until_ms.store(0, Ordering::Relaxed);
        }
    }

    /// The endpoint failed; returns true when this failure ejected it.
    pub fn record_failure(&self, policy: &HealthPolicy) -> bool {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        if policy.eject_after == 0 {
            return false;
        }
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < policy.eject_after || !self.is_available() {
            return false;
        }
        self.failures.store(0, Ordering::Relaxed);
        self.stats.ejections.fetch_add(1, Ordering::Relaxed);
        let k = self.ejections.fetch_add(1, Ordering::Relaxed).min(16);
        let backoff = policy
            .base_ejection
            .saturating_mul(1u32 << k)
            .min(policy.max_ejection);
        self.ejected_until_ms
            .store(now_ms() + backoff.as_millis() as u64, Ordering::Relaxed);
        true
    }
}

/// Decrements the in-flight count on drop.
#[derive(Debug)]
pub struct ActiveGuard(Arc<EndpointLive>);

impl ActiveGuard {
    /// The endpoint this request is on.
    pub fn live(&self) -> &EndpointLive {
        &self.0
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Endpoint identity → its live state, shared by every table.
#[derive(Debug, Default)]
pub struct LiveRegistry {
    map: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    map: crate::pool::fxhash::FxHashMap<Endpoint, Weak<EndpointLive>>,
    /// The cookie key as last given, and its HMAC state (keyed once, not
    /// per endpoint).
    key: Option<(Box<[u8]>, aws_lc_rs::hmac::Key)>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("endpoints", &self.map.len())
            .finish()
    }
}

impl LiveRegistry {
    /// The state for `ep`, created on first sight; `key` signs its cookie
    /// value (the router's cookie key, constant for the process).
    pub fn get(&self, ep: &Endpoint, key: &[u8]) -> Arc<EndpointLive> {
        let mut guard = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let r = &mut *guard;
        if let Some(live) = r.map.get(ep).and_then(Weak::upgrade) {
            return live;
        }
        if r.key.as_ref().is_none_or(|(k, _)| **k != *key) {
            let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
            r.key = Some((key.into(), k));
        }
        let Some((_, k)) = &r.key else {
            unreachable!("set just above")
        };
        let tag = aws_lc_rs::hmac::sign(k, ep.to_string().as_bytes());
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut cookie = String::with_capacity(16);
        for b in &tag.as_ref()[..8] {
            cookie.push(HEX[(b >> 4) as usize] as char);
            cookie.push(HEX[(b & 15) as usize] as char);
        }
        let mut idb = [0u8; 8];
        idb.copy_from_slice(&tag.as_ref()[8..16]);
        let live = Arc::new(EndpointLive {
            cookie: Arc::from(cookie),
            id: u64::from_le_bytes(idb),
            ..EndpointLive::default()
        });
        r.map.insert(ep.clone(), Arc::downgrade(&live));
        live
    }

    /// Forget endpoints no table refers to any more.
    pub fn prune(&self) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.map.retain(|_, w| w.strong_count() > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn try_begin_never_passes_the_cap_under_contention() {
        let e = Arc::new(EndpointLive::default());
        let start = Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (e, start) = (e.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    // Hold every slot taken until all threads have tried.
                    (0..100)
                        .filter_map(|_| e.try_begin(Some(3)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let held: Vec<ActiveGuard> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        assert_eq!(held.len(), 3, "exactly the cap's slots were handed out");
        assert_eq!(e.active(), 3);
        assert!(e.try_begin(Some(3)).is_none());
        drop(held);
        assert_eq!(e.active(), 0, "every guard gave its slot back");
        let g = e.try_begin(None).expect("no cap: always");
        assert_eq!(e.active(), 1);
        drop(g);
    }

    #[test]
    fn ejects_after_consecutive_failures_with_backoff() {
        let p = HealthPolicy {
            eject_after: 2,
            base_ejection: Duration::from_millis(50),
            ..Default::default()
        };
        let e = EndpointLive::default();
        assert!(!e.record_failure(&p));
        e.record_success();
        assert!(!e.record_failure(&p));
        assert!(e.record_failure(&p), "second consecutive failure ejects");
        assert!(e.is_ejected());
        std::thread::sleep(Duration::from_millis(70));
        assert!(e.is_available(), "back after the back-off");
        let g = Arc::new(EndpointLive::default());
        let guard = g.begin();
        assert_eq!(g.active(), 1);
        drop(guard);
        assert_eq!(g.active(), 0);
    }

    #[test]
    fn registry_shares_state_and_forgets_unused() {
        let r = LiveRegistry::default();
        let ep = Endpoint::Socket(([127, 0, 0, 1], 1).into());
        let a = r.get(&ep, b"k");
        let b = r.get(&ep, b"k");
        assert!(Arc::ptr_eq(&a, &b));
        drop((a, b));
        r.prune();
        assert!(r.map.lock().unwrap().map.is_empty());
    }
}
