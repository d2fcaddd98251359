//! Per-route counters for /metrics, kept outside the table (keyed by
//! namespace/name) so a table swap does not reset them. Plain atomics: the
//! request path adds to them without a lock or a lookup (the route entry
//! holds its counters), and /metrics reads them when scraped.

use crate::pool::fxhash::FxHashMap;
use crate::telemetry::metrics::Histogram;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Why an exchange with an upstream failed (label `kind` of
/// `gatehouse_route_upstream_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// TCP connect refused, unreachable or timed out.
    Connect = 0,
    /// The endpoint's TLS could not be verified (re-encrypt).
    Tls = 1,
    /// Closed or reset before the response head.
    Closed = 2,
    /// No response within the route's timeout.
    Timeout = 3,
    /// Failed or went silent in the middle of the response body.
    Body = 4,
}

impl UpstreamError {
    pub const LABELS: [&'static str; 5] = ["connect", "tls", "closed", "timeout", "body"];
}

/// The sticky-cookie decision of one request (`hit`: the cookie's endpoint
/// served it; `miss`: the cookie named an endpoint that could not; `new`:
/// no cookie yet).
pub const STICKY_LABELS: [&str; 3] = ["hit", "miss", "new"];

/// Status class labels, index 0 = 1xx … 4 = 5xx.
pub const CLASS_LABELS: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Index into [`CLASS_LABELS`] for a status code.
pub fn class_index(status: u16) -> usize {
    (status / 100).clamp(1, 5) as usize - 1
}

/// Everything counted for one route.
#[derive(Debug)]
pub struct RouteCounters {
    /// Index 0 = 1xx … 4 = 5xx.
    classes: [AtomicU64; 5],
    /// Request body bytes received from clients.
    pub bytes_in: AtomicU64,
    /// Response body bytes sent to clients.
    pub bytes_out: AtomicU64,
    /// Requests in progress (head received, response body not yet done).
    pub active: AtomicI64,
    /// Request to end of response body.
    pub duration: Histogram,
    /// New upstream connections only (pooled ones cost nothing).
    pub connect: Histogram,
    pub errors: [AtomicU64; 5],
    /// Requests sent again: to another endpoint, or on a fresh connection
    /// after a pooled one turned out closed.
    pub retries: AtomicU64,
    pub sticky: [AtomicU64; 3],
}

impl Default for RouteCounters {
    fn default() -> Self {
        RouteCounters {
            classes: Default::default(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            active: AtomicI64::new(0),
            duration: Histogram::new(crate::telemetry::metrics::LATENCY_BUCKETS),
            connect: Histogram::new(crate::telemetry::metrics::CONNECT_BUCKETS),
            errors: Default::default(),
            retries: AtomicU64::new(0),
            sticky: Default::default(),
        }
    }
}

impl RouteCounters {
    pub fn count(&self, status: u16) {
        self.classes[class_index(status)].fetch_add(1, Ordering::Relaxed);
    }

    /// (class label, count) pairs: `1xx` … `5xx`.
    pub fn snapshot(&self) -> [(&'static str, u64); 5] {
        std::array::from_fn(|i| (CLASS_LABELS[i], self.classes[i].load(Ordering::Relaxed)))
    }

    pub fn error(&self, kind: UpstreamError) {
        self.errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a sticky decision by its label (`hit`, `miss`, `new`).
    pub fn sticky(&self, decision: &str) {
        if let Some(i) = STICKY_LABELS.iter().position(|l| *l == decision) {
            self.sticky[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Requests counted so far (all classes).
    pub fn total(&self) -> u64 {
        self.classes.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// (namespace, name) → counters, shared by every table. Nested maps so a
/// lookup borrows the names instead of allocating a key (10k lookups per
/// full compile).
#[derive(Debug, Default)]
pub struct StatsRegistry {
    map: Mutex<FxHashMap<String, FxHashMap<String, Weak<RouteCounters>>>>,
}

impl StatsRegistry {
    pub fn get(&self, ns: &str, name: &str) -> Arc<RouteCounters> {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = m.get(ns).and_then(|n| n.get(name)).and_then(Weak::upgrade) {
            return c;
        }
        let c = Arc::new(RouteCounters::default());
        m.entry(ns.to_owned())
            .or_default()
            .insert(name.to_owned(), Arc::downgrade(&c));
        c
    }

    /// Forget routes no table has any more.
    pub fn prune(&self) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, names| {
            names.retain(|_, w| w.strong_count() > 0);
            !names.is_empty()
        });
    }
}
