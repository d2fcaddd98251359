//! The access log: one JSON line per request on stdout. Requests only hand a
//! small record to a bounded queue; a separate task formats and writes.
//! When the queue is full the line is dropped and counted, never waited for.

use crate::proxy::ConnInfo;
use crate::table::{Endpoint, RouteEntry};
use http::{Method, Request, StatusCode, Uri, Version};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// What the access log wants to know about how a request was forwarded.
#[derive(Debug, Default, Clone, Copy)]
pub struct Trace {
    /// Sticky-cookie decision: `hit` (the cookie's endpoint served it),
    /// `miss` (a cookie named an endpoint that is gone or full: chosen
    /// again), `new` (no cookie: one was set); `None` without cookies.
    pub sticky: Option<&'static str>,
    /// From the first pick to a usable upstream connection (retries
    /// included).
    pub connect: Option<std::time::Duration>,
    /// From sending the request to the upstream's response head.
    pub response: Option<std::time::Duration>,
}

/// What one request leaves behind.
#[derive(Debug)]
pub struct LogLine {
    time: SystemTime,
    client: SocketAddr,
    method: Method,
    uri: Uri,
    host: Box<str>,
    version: Version,
    request_id: Option<http::HeaderValue>,
    tls: bool,
    tls_version: Option<&'static str>,
    pub route: Option<Arc<RouteEntry>>,
    status: u16,
    endpoint: Option<Endpoint>,
    duration: Duration,
    trace: Trace,
}

impl LogLine {
    pub fn start<B>(conn: &ConnInfo, req: &Request<B>, host: &str) -> Self {
        LogLine {
            time: SystemTime::now(),
            client: conn.peer,
            method: req.method().clone(),
            uri: req.uri().clone(),
            host: host.into(),
            version: req.version(),
            request_id: req.headers().get("x-request-id").cloned(),
            tls: conn.tls,
            tls_version: conn.tls_version,
            route: None,
            status: 0,
            endpoint: None,
            duration: Duration::ZERO,
            trace: Default::default(),
        }
    }

    pub fn finish(
        &mut self,
        status: StatusCode,
        endpoint: Option<Endpoint>,
        duration: Duration,
        trace: &Trace,
    ) {
        self.status = status.as_u16();
        self.endpoint = endpoint;
        self.duration = duration;
        self.trace = *trace;
    }

    fn to_json(&self) -> serde_json::Value {
        let ts = self
            .time
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
        serde_json::json!({
            "time": crate::telemetry::rfc3339_millis(ts),
            "client": self.client.to_string(),
            "method": self.method.as_str(),
            "host": &*self.host,
            "path": self.uri.path(),
            "protocol": format!("{:?}", self.version),
            "status": self.status,
            "duration_ms": self.duration.as_secs_f64() * 1000.0,
            "namespace": self.route.as_ref().map(|r| &*r.namespace),
            "route": self.route.as_ref().map(|r| &*r.name),
            "endpoint": self.endpoint.as_ref().map(|e| e.to_string()),
            "request_id": self.request_id.as_ref().and_then(|v| v.to_str().ok()),
            "tls": self.tls,
            "tls_version": self.tls_version,
            "termination": self.route.as_ref().and_then(|r| r.termination).map(|t| format!("{t:?}").to_lowercase()),
            "sticky": self.trace.sticky,
            "upstream_connect_ms": ms(self.trace.connect),
            "upstream_response_ms": ms(self.trace.response),
        })
    }
}

/// One queued line: a request (rendered by the writer, off the request
/// path) or a line already rendered (egress connections).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // moved once into the queue; boxing costs an allocation per request
pub enum Entry {
    Request(LogLine),
    Json(String),
}

/// Lines dropped process-wide because the queue was full (for /metrics).
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

/// The queue end requests write to.
#[derive(Debug)]
pub struct AccessLog {
    tx: mpsc::Sender<Entry>,
    dropped: AtomicU64,
}

impl AccessLog {
    /// Start the writer task (stdout) with a queue of `capacity` lines.
    pub fn spawn(capacity: usize) -> Self {
        let (tx, mut rx) = mpsc::channel::<Entry>(capacity);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(64);
            while rx.recv_many(&mut batch, 64).await > 0 {
                let mut out = std::io::stdout().lock();
                for l in batch.drain(..) {
                    let _ = match l {
                        Entry::Request(l) => writeln!(out, "{}", l.to_json()),
                        Entry::Json(s) => writeln!(out, "{s}"),
                    };
                }
                let _ = out.flush();
            }
        });
        AccessLog {
            tx,
            dropped: AtomicU64::new(0),
        }
    }

    pub fn push(&self, line: LogLine) {
        if self.tx.try_send(Entry::Request(line)).is_err() {
            self.count_drop();
        }
    }

    /// Queue a line already rendered as JSON.
    pub fn push_json(&self, line: String) {
        if self.tx.try_send(Entry::Json(line)).is_err() {
            self.count_drop();
        }
    }

    fn count_drop(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }

    /// Lines dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
