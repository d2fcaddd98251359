//! Process-wide counters and the histogram type behind `/metrics`. The
//! request path only adds to atomics; the admin listener reads them on a
//! scrape and encodes them with `prometheus-client` (see `admin::metrics`).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// A fixed-bucket histogram of durations, lock-free. Buckets hold counts
/// per bucket (not cumulative); the encoder sums them.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds in microseconds, ascending.
    bounds: &'static [u64],
    /// One per bound, plus +Inf.
    buckets: Box<[AtomicU64]>,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [u64]) -> Self {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: std::time::Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        let i = self.bounds.partition_point(|b| *b < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// (sum in seconds, count, per-bucket counts `(upper bound s, n)`,
    /// +Inf last). Not cumulative: the encoder adds them up.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut total = 0u64;
        let mut out = Vec::with_capacity(self.buckets.len());
        for (i, b) in self.buckets.iter().enumerate() {
            let n = b.load(Ordering::Relaxed);
            total += n;
            let le = self
                .bounds
                .get(i)
                .map_or(f64::INFINITY, |us| *us as f64 / 1e6);
            out.push((le, n));
        }
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        (sum, total, out)
    }
}

/// Request durations: 1 ms … 30 s.
pub const LATENCY_BUCKETS: &[u64] = &[
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000, 30_000_000,
];

/// Upstream connects: 100 µs … 5 s.
pub const CONNECT_BUCKETS: &[u64] = &[
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
    5_000_000,
];

/// Table compiles: 100 µs … 10 s.
pub const COMPILE_BUCKETS: &[u64] = &[
    100, 1_000, 5_000, 10_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 10_000_000,
];

/// One listener's connection counters.
#[derive(Debug)]
pub struct ListenerStats {
    pub accepted: AtomicU64,
    pub active: AtomicI64,
}

impl ListenerStats {
    const fn new() -> Self {
        ListenerStats {
            accepted: AtomicU64::new(0),
            active: AtomicI64::new(0),
        }
    }

    /// Count an accepted connection; it stays active until the guard drops.
    pub fn open(&'static self) -> ConnGuard {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        ConnGuard(self)
    }
}

/// Decrements a listener's active connections on drop.
#[derive(Debug)]
pub struct ConnGuard(&'static ListenerStats);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The plain HTTP listener.
pub static HTTP: ListenerStats = ListenerStats::new();
/// The HTTPS listener (terminated and passthrough).
pub static HTTPS: ListenerStats = ListenerStats::new();

/// Completed TLS handshakes on the HTTPS listener (terminated here).
pub static TLS_HANDSHAKES: AtomicU64 = AtomicU64::new(0);
/// Connections spliced to passthrough backends.
pub static PASSTHROUGH_CONNECTIONS: AtomicU64 = AtomicU64::new(0);

/// Why a connection on the HTTPS listener ended before serving anything
/// (label `reason` of `gatehouse_tls_handshake_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsRefusal {
    /// No complete ClientHello within the handshake timeout.
    HelloTimeout = 0,
    /// The first bytes were not a TLS record.
    NotTls = 1,
    /// Malformed, truncated or oversized ClientHello.
    BadHello = 2,
    /// Closed or failed while sending the ClientHello.
    Closed = 3,
    /// The handshake did not finish within the timeout.
    HandshakeTimeout = 4,
    /// rustls refused it (no common version or cipher, bad client
    /// certificate, alert).
    Handshake = 5,
    /// Passthrough refused: client not in the allow-list, or no endpoint.
    Passthrough = 6,
    /// A trusted balancer's connection without a valid PROXY header.
    ProxyHeader = 7,
}

impl TlsRefusal {
    pub const LABELS: [&'static str; 8] = [
        "hello_timeout",
        "not_tls",
        "bad_hello",
        "closed",
        "handshake_timeout",
        "handshake",
        "passthrough",
        "proxy_header",
    ];
}

pub static TLS_FAILURES: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];

/// Connections from trusted balancers closed for a bad or missing PROXY
/// header (both listeners).
pub static PROXY_HEADER_REFUSED: AtomicU64 = AtomicU64::new(0);

pub fn tls_refused(r: TlsRefusal) {
    TLS_FAILURES[r as usize].fetch_add(1, Ordering::Relaxed);
}

/// What a compile rebuilt; indexes [`TableStats::compiles`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompileKind {
    /// Everything (admission, every host).
    Full = 0,
    /// The hosts whose services' endpoints changed.
    Endpoints = 1,
    /// The hosts a few changed routes claimed or claim.
    Routes = 2,
}

impl CompileKind {
    pub const ALL: [CompileKind; 3] = [Self::Full, Self::Endpoints, Self::Routes];

    /// The `kind` label and log field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Endpoints => "endpoints",
            Self::Routes => "routes",
        }
    }
}

/// Table compiles and swaps.
#[derive(Debug)]
pub struct TableStats {
    /// By [`CompileKind`].
    pub compiles: [AtomicU64; 3],
    pub compile_seconds: std::sync::OnceLock<Histogram>,
    /// Microseconds the last compile took.
    pub last_compile_us: AtomicU64,
    /// Unix time (ms) of the last swap.
    pub last_swap_ms: AtomicU64,
    /// Unix time (ms) the source last changed what the router sees.
    pub last_change_ms: AtomicU64,
    /// Compiles that failed (the previous table stayed).
    pub failures: AtomicU64,
}

pub static TABLE: TableStats = TableStats {
    compiles: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
    compile_seconds: std::sync::OnceLock::new(),
    last_compile_us: AtomicU64::new(0),
    last_swap_ms: AtomicU64::new(0),
    last_change_ms: AtomicU64::new(0),
    failures: AtomicU64::new(0),
};

impl TableStats {
    pub fn compile_histogram(&self) -> &Histogram {
        self.compile_seconds
            .get_or_init(|| Histogram::new(COMPILE_BUCKETS))
    }

    /// One compile of `kind` published.
    pub fn record(&self, kind: CompileKind, took: std::time::Duration) {
        self.compiles[kind as usize].fetch_add(1, Ordering::Relaxed);
        self.compile_histogram().observe(took);
        self.last_compile_us
            .store(took.as_micros() as u64, Ordering::Relaxed);
        self.last_swap_ms.store(unix_ms(), Ordering::Relaxed);
    }
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn histogram_buckets_with_inf_last() {
        let h = Histogram::new(&[1_000, 10_000]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_micros(1_000)); // on the bound: le=0.001
        h.observe(Duration::from_micros(5_000));
        h.observe(Duration::from_secs(1));
        let (sum, count, b) = h.snapshot();
        assert_eq!(count, 4);
        assert_eq!(b, vec![(0.001, 2), (0.01, 1), (f64::INFINITY, 1)]);
        assert!((sum - 1.0065).abs() < 1e-9, "{sum}");
    }
}
