//! The response body handed to clients: the upstream's, streamed, or a short
//! local one. An enum, not a box: no allocation per response.
//!
//! It also carries the request's completion record: when the body ends (or
//! the client goes away) the route's bytes and latency are counted and the
//! access-log line, now knowing its bytes and total time, is queued.

use crate::pool::UpstreamBody;
use crate::proxy::limits::Slot;
use crate::table::{ActiveGuard, RouteCounters, UpstreamError};
use crate::telemetry::access_log::{AccessLog, LogLine};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

#[derive(Debug)]
pub struct ProxyBody {
    kind: Kind,
    done: Option<Done>,
    /// The request's place on its client connection, held until the body
    /// is done (client idle deadlines; see `proxy::idle`).
    conn: Option<super::RequestGuard>,
}

// Not boxed: the body lives in its client connection's state either way,
// and a box would be an allocation per response.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Kind {
    /// The upstream's body; the guard counts the request as in flight
    /// until the body is done or dropped.
    Upstream(UpstreamBody, Option<InFlight>),
    Local(Option<Bytes>),
}

impl ProxyBody {
    pub fn local(text: impl Into<Bytes>) -> Self {
        ProxyBody {
            kind: Kind::Local(Some(text.into())),
            done: None,
            conn: None,
        }
    }

    pub fn empty() -> Self {
        ProxyBody {
            kind: Kind::Local(None),
            done: None,
            conn: None,
        }
    }

    pub fn upstream(body: UpstreamBody, hold: InFlight) -> Self {
        ProxyBody {
            kind: Kind::Upstream(body, Some(hold)),
            done: None,
            conn: None,
        }
    }

    /// Hold the request's connection guard until the body is done.
    pub fn hold(&mut self, guard: super::RequestGuard) {
        self.conn = Some(guard);
    }

    /// Attach the completion record (counted when the body is finished).
    pub fn finish_with(&mut self, done: Done) {
        let mut done = done;
        if self.is_end_stream() {
            done.complete = true;
        }
        self.done = Some(done);
    }

    fn count(&mut self, n: usize) {
        if let Some(d) = &mut self.done {
            d.bytes += n as u64;
        }
    }

    fn ended(&mut self) {
        if let Some(d) = &mut self.done {
            d.complete = true;
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let r = match &mut this.kind {
            Kind::Upstream(b, hold) => match Pin::new(&mut *b).poll_frame(cx) {
                Poll::Ready(r) => {
                    if let Some(h) = hold {
                        h.stall.progress();
                    }
                    Poll::Ready(r)
                }
                // The route's timeout is also the longest the upstream may
                // stay silent mid-body (HAProxy `timeout server`).
                Poll::Pending if hold.as_mut().is_some_and(|h| h.stall.expired(cx)) => {
                    let e =
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "upstream idle mid-body");
                    Poll::Ready(Some(Err(e.into())))
                }
                Poll::Pending => Poll::Pending,
            },
            Kind::Local(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        };
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.count(d.len());
                }
                if this.is_end_stream() {
                    this.ended();
                }
            }
            Poll::Ready(None) => this.ended(),
            Poll::Ready(Some(Err(_))) => {
                if let Some(s) = this.done.as_ref().and_then(|d| d.stats.as_ref()) {
                    s.error(UpstreamError::Body);
                }
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream(b, _) => b.is_end_stream(),
            Kind::Local(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream(b, _) => b.size_hint(),
            Kind::Local(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// What a response holds while it streams: its endpoint's in-flight count,
/// on rate-limited routes the client's concurrency slot, and the idle timer.
#[derive(Debug)]
pub struct InFlight {
    pub active: ActiveGuard,
    pub slot: Option<Slot>,
    /// The upstream's silence limit mid-body.
    pub stall: crate::pool::StallTimer,
}

impl InFlight {
    pub fn new(active: ActiveGuard, slot: Option<Slot>, idle: std::time::Duration) -> Self {
        InFlight {
            active,
            slot,
            stall: crate::pool::StallTimer::new(idle),
        }
    }
}

/// A request's completion: counted and logged once, when its response body
/// is finished or abandoned.
#[derive(Debug)]
pub struct Done {
    pub stats: Option<Arc<RouteCounters>>,
    pub start: Instant,
    pub status: u16,
    /// Boxed: a log line is large, and the body (with this in it) is moved
    /// several times per response; most requests are not logged.
    pub log: Option<Box<(LogLine, Arc<AccessLog>)>>,
    bytes: u64,
    complete: bool,
}

impl Done {
    pub fn new(stats: Option<Arc<RouteCounters>>, start: Instant, status: u16) -> Self {
        Done {
            stats,
            start,
            status,
            log: None,
            bytes: 0,
            complete: false,
        }
    }
}

impl Done {
    /// Count and log the finished request; `endpoint` is the one that
    /// answered, when one did.
    fn record(mut self, endpoint: Option<&crate::table::EndpointLive>) {
        let took = self.start.elapsed();
        if let Some(s) = &self.stats {
            s.bytes_out.fetch_add(self.bytes, Ordering::Relaxed);
            s.duration.observe(took);
            s.active.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(e) = endpoint {
            e.stats.finish(self.status, self.bytes);
        }
        if let Some(entry) = self.log.take() {
            let (mut line, sink) = *entry;
            line.end(self.bytes, took, self.complete);
            sink.push(line);
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if let Some(d) = self.done.take() {
            let endpoint = match &self.kind {
                Kind::Upstream(_, Some(h)) => Some(h.active.live()),
                _ => None,
            };
            d.record(endpoint);
        }
    }
}
