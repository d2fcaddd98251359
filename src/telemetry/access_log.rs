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
    /// Response body bytes sent to the client.
    bytes: u64,
    /// False when the response body did not reach its end (client gone,
    /// upstream failed mid-body).
    complete: bool,
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
            bytes: 0,
            complete: true,
        }
    }

    /// The response head is known.
    pub fn finish(&mut self, status: StatusCode, endpoint: Option<Endpoint>, trace: &Trace) {
        self.status = status.as_u16();
        self.endpoint = endpoint;
        self.trace = *trace;
    }

    /// The response body is done (or abandoned).
    pub fn end(&mut self, bytes: u64, duration: Duration, complete: bool) {
        self.bytes = bytes;
        self.duration = duration;
        self.complete = complete;
    }

    /// Render as one JSON object into `out`, by hand: no intermediate
    /// value tree (measured: the `serde_json::json!` version cost 28 % more
    /// CPU per request at full load, benches/load GH_ACCESS_LOG=json).
    pub(crate) fn write_json(&self, out: &mut String) {
        let ts = self
            .time
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        out.push_str("{\"time\":\"");
        crate::telemetry::push_rfc3339_millis(out, ts);
        out.push_str("\",\"client\":\"");
        push_socket_addr(out, &self.client);
        out.push_str("\",\"method\":");
        json_str(out, self.method.as_str());
        out.push_str(",\"host\":");
        json_str(out, &self.host);
        out.push_str(",\"path\":");
        json_str(out, self.uri.path());
        out.push_str(",\"protocol\":\"");
        out.push_str(match self.version {
            Version::HTTP_09 => "HTTP/0.9",
            Version::HTTP_10 => "HTTP/1.0",
            Version::HTTP_11 => "HTTP/1.1",
            Version::HTTP_2 => "HTTP/2.0",
            Version::HTTP_3 => "HTTP/3.0",
            _ => "unknown",
        });
        out.push_str("\",\"status\":");
        push_u64(out, u64::from(self.status));
        out.push_str(",\"bytes\":");
        push_u64(out, self.bytes);
        out.push_str(if self.complete {
            ",\"complete\":true"
        } else {
            ",\"complete\":false"
        });
        out.push_str(",\"duration_ms\":");
        push_millis(out, self.duration);
        out.push_str(",\"namespace\":");
        json_opt(out, self.route.as_ref().map(|r| &*r.namespace));
        out.push_str(",\"route\":");
        json_opt(out, self.route.as_ref().map(|r| &*r.name));
        out.push_str(",\"endpoint\":");
        match &self.endpoint {
            Some(Endpoint::Socket(a)) => {
                out.push('"');
                push_socket_addr(out, a);
                out.push('"');
            }
            Some(e) => json_str(out, &e.to_string()),
            None => out.push_str("null"),
        }
        out.push_str(",\"request_id\":");
        json_opt(out, self.request_id.as_ref().and_then(|v| v.to_str().ok()));
        out.push_str(if self.tls {
            ",\"tls\":true,\"tls_version\":"
        } else {
            ",\"tls\":false,\"tls_version\":"
        });
        json_opt(out, self.tls_version);
        out.push_str(",\"termination\":");
        json_opt(
            out,
            self.route
                .as_ref()
                .and_then(|r| r.termination)
                .map(|t| match t {
                    crate::model::admission::Termination::Edge => "edge",
                    crate::model::admission::Termination::Passthrough => "passthrough",
                    crate::model::admission::Termination::Reencrypt => "reencrypt",
                }),
        );
        out.push_str(",\"sticky\":");
        json_opt(out, self.trace.sticky);
        for (k, d) in [
            (",\"upstream_connect_ms\":", self.trace.connect),
            (",\"upstream_response_ms\":", self.trace.response),
        ] {
            out.push_str(k);
            match d {
                Some(d) => push_millis(out, d),
                None => out.push_str("null"),
            }
        }
        out.push('}');
    }
}

/// Decimal digits of `n`, without the formatting machinery (the writer
/// renders tens of thousands of lines a second).
pub(crate) fn push_u64(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    out.push_str(std::str::from_utf8(&buf[i..]).unwrap_or("0"));
}

/// Milliseconds with three decimals (microsecond resolution): `1.500`.
pub(crate) fn push_millis(out: &mut String, d: Duration) {
    let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
    push_u64(out, us / 1000);
    out.push('.');
    let frac = us % 1000;
    out.push(char::from(b'0' + (frac / 100) as u8));
    out.push(char::from(b'0' + (frac / 10 % 10) as u8));
    out.push(char::from(b'0' + (frac % 10) as u8));
}

/// `1.2.3.4:5` or `[::1]:5`.
fn push_socket_addr(out: &mut String, a: &SocketAddr) {
    match a {
        SocketAddr::V4(v4) => {
            for (i, o) in v4.ip().octets().iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_u64(out, u64::from(*o));
            }
            out.push(':');
            push_u64(out, u64::from(v4.port()));
        }
        SocketAddr::V6(_) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{a}");
        }
    }
}

/// One queued line: a request (rendered by the writer, off the request
/// path) or a line already rendered (egress connections).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // moved once into the queue; boxing costs an allocation per request
pub enum Entry {
    Request(LogLine),
    Json(String),
    /// Everything queued before it is written: acknowledge.
    Flush(tokio::sync::oneshot::Sender<()>),
}

fn write_out(buf: &mut String) {
    if buf.is_empty() {
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(buf.as_bytes());
    let _ = out.flush();
    buf.clear();
}

/// A JSON string literal: quotes, backslashes and control characters
/// escaped (request paths and hosts come from the network).
fn json_str(out: &mut String, s: &str) {
    use std::fmt::Write as _;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_opt(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.push_str("null"),
    }
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
        // Its own thread: a slow or stalled stdout blocks only this thread,
        // never a runtime worker (with one worker thread it would stop the
        // whole router). It polls the queue every few milliseconds instead
        // of sleeping on it: a sleeping receiver costs the request path a
        // futex wake per line (measured: −37 % throughput), a polling one
        // costs nothing per line.
        let _ = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                use tokio::sync::mpsc::error::TryRecvError;
                let mut buf = String::with_capacity(64 * 1024);
                let mut idle = Duration::from_millis(5);
                loop {
                    let mut n = 0usize;
                    let mut closed = false;
                    loop {
                        match rx.try_recv() {
                            Ok(Entry::Request(l)) => l.write_json(&mut buf),
                            Ok(Entry::Json(s)) => buf.push_str(&s),
                            Ok(Entry::Flush(ack)) => {
                                write_out(&mut buf);
                                let _ = ack.send(());
                                continue;
                            }
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Disconnected) => {
                                closed = true;
                                break;
                            }
                        }
                        buf.push('\n');
                        n += 1;
                        if buf.len() >= 256 * 1024 {
                            write_out(&mut buf);
                        }
                    }
                    write_out(&mut buf);
                    if closed {
                        return;
                    }
                    // Quiet: look less often (up to 50 ms); busy: every 5 ms.
                    idle = if n == 0 {
                        (idle * 2).min(Duration::from_millis(50))
                    } else {
                        Duration::from_millis(5)
                    };
                    std::thread::sleep(idle);
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

    /// Wait (up to `within`) until every line queued so far is written:
    /// shutdown calls it so the last requests' lines are not lost.
    pub async fn flush(&self, within: Duration) {
        let (ack, done) = tokio::sync::oneshot::channel();
        let deadline = tokio::time::Instant::now() + within;
        let mut entry = Entry::Flush(ack);
        loop {
            match self.tx.try_send(entry) {
                Ok(()) => break,
                Err(mpsc::error::TrySendError::Full(e))
                    if tokio::time::Instant::now() < deadline =>
                {
                    entry = e;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(_) => return,
            }
        }
        let _ = tokio::time::timeout_at(deadline, done).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_valid_json_whatever_the_request_carried() {
        let mut s = String::new();
        json_str(&mut s, "a\"b\\c\nd\te\u{1}é");
        let back: String = serde_json::from_str(&s).unwrap();
        assert_eq!(back, "a\"b\\c\nd\te\u{1}é");

        let conn = crate::proxy::ConnInfo::new(
            "192.0.2.1:5555".parse().unwrap(),
            "127.0.0.1:80".parse().unwrap(),
            false,
        );
        let req = Request::get("/p%22ath?q=1")
            .header("x-request-id", "id-1")
            .body(())
            .unwrap();
        let mut l = LogLine::start(&conn, &req, "we\"ird.example.com");
        l.end(42, Duration::from_micros(1500), false);
        l.finish(
            StatusCode::OK,
            None,
            &Trace {
                sticky: Some("new"),
                connect: Some(Duration::from_micros(250)),
                response: None,
            },
        );
        let mut out = String::new();
        l.write_json(&mut out);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["host"], "we\"ird.example.com");
        assert_eq!(v["path"], "/p%22ath");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["bytes"], 42);
        assert_eq!(v["complete"], false);
        assert_eq!(v["upstream_connect_ms"], 0.25);
        assert!(v["upstream_response_ms"].is_null() && v["route"].is_null());
        assert_eq!(v["sticky"], "new");
        assert_eq!(v["request_id"], "id-1");
        assert_eq!(v["client"], "192.0.2.1:5555");
        assert_eq!(v["protocol"], "HTTP/1.1");
    }

    #[test]
    fn numbers_and_addresses_render_like_display() {
        for n in [0u64, 7, 10, 99, 1000, 65535, u64::MAX] {
            let mut s = String::new();
            push_u64(&mut s, n);
            assert_eq!(s, n.to_string());
        }
        for (us, want) in [
            (0u64, "0.000"),
            (1, "0.001"),
            (1500, "1.500"),
            (12_345_678, "12345.678"),
        ] {
            let mut s = String::new();
            push_millis(&mut s, Duration::from_micros(us));
            assert_eq!(s, want);
        }
        for a in [
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.1.2.3:8080",
            "[::1]:443",
            "[2001:db8::1]:80",
        ] {
            let addr: SocketAddr = a.parse().unwrap();
            let mut s = String::new();
            push_socket_addr(&mut s, &addr);
            assert_eq!(s, a);
        }
    }
}
