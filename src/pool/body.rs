//! The upstream's response body, streamed to the client. An HTTP/1.1
//! connection goes back to the pool when its body has been read to the end;
//! a body abandoned half-way (client gone) takes its connection with it, as
//! the connection still has unread bytes.

use super::{h1::RawBody, Idle, Inner, PoolKey, H1};
use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// What to give back when the body ends.
pub struct Return {
    pool: Arc<Inner>,
    key: PoolKey,
    sender: H1,
}

pub enum UpstreamBody {
    /// From hyper's client; an HTTP/1.1 connection goes back at the end.
    Hyper {
        body: Incoming,
        back: Option<Return>,
    },
    /// From this crate's HTTP/1.1 client, which gives its connection back
    /// itself.
    Raw(RawBody),
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamBody::Hyper { back, .. } => f
                .debug_struct("UpstreamBody")
                .field("pooled", &back.is_some())
                .finish(),
            UpstreamBody::Raw(b) => b.fmt(f),
        }
    }
}

impl UpstreamBody {
    pub(crate) fn plain(body: Incoming) -> Self {
        UpstreamBody::Hyper { body, back: None }
    }

    pub(crate) fn raw(body: RawBody) -> Self {
        UpstreamBody::Raw(body)
    }

    pub(crate) fn pooled(
        resp: Response<Incoming>,
        pool: Arc<Inner>,
        key: PoolKey,
        sender: H1,
    ) -> Response<Self> {
        // 101: the connection now belongs to the upgrade, never to the pool.
        if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            return resp.map(Self::plain);
        }
        let done = resp.body().is_end_stream();
        let back = Return { pool, key, sender };
        if done {
            back.pool.put_idle(&back.key, Idle::Hyper(back.sender));
            return resp.map(Self::plain);
        }
        resp.map(|body| UpstreamBody::Hyper {
            body,
            back: Some(back),
        })
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let (body, back) = match self.get_mut() {
            UpstreamBody::Raw(b) => return b.poll_frame(cx).map_err(Into::into),
            UpstreamBody::Hyper { body, back } => (body, back),
        };
        let r = Pin::new(&mut *body).poll_frame(cx);
        match &r {
            Poll::Ready(None) => {
                if let Some(b) = back.take() {
                    b.pool.put_idle(&b.key, Idle::Hyper(b.sender));
                }
            }
            // The server stops polling once the body says it is complete,
            // so the last data frame is where the connection goes back.
            Poll::Ready(Some(Ok(_))) if body.is_end_stream() => {
                if let Some(b) = back.take() {
                    b.pool.put_idle(&b.key, Idle::Hyper(b.sender));
                }
            }
            Poll::Ready(Some(Err(_))) => *back = None,
            _ => {}
        }
        r.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Hyper { body, .. } => body.is_end_stream(),
            UpstreamBody::Raw(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Hyper { body, .. } => body.size_hint(),
            UpstreamBody::Raw(b) => b.size_hint(),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body sent upstream: the client's, streamed, or none (a replayed
/// bodyless request).
#[derive(Debug)]
pub enum RequestBody {
    Client(Incoming),
    /// The client's body, its bytes counted on the route, its silences
    /// bounded by the client timeout.
    Counted(Incoming, Arc<crate::table::RouteCounters>, StallTimer),
    Empty,
}

/// A body's stall limit: the timer exists only while the body is stalled
/// (created on the first `Pending`, dropped on progress). Used for a
/// client silent mid-request-body and an upstream silent mid-response.
#[derive(Debug)]
pub struct StallTimer {
    limit: std::time::Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl StallTimer {
    /// `limit` zero: no limit.
    pub fn new(limit: std::time::Duration) -> Self {
        StallTimer { limit, timer: None }
    }

    /// The body made progress.
    pub fn progress(&mut self) {
        self.timer = None;
    }

    /// The body is pending: whether it has now been stalled for `limit`.
    pub fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.limit.is_zero() {
            return false;
        }
        let limit = self.limit;
        self.timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)))
            .as_mut()
            .poll(cx)
            .is_ready()
    }
}

/// The error a request body ends with when the client went silent: the
/// handler answers 408 for it.
#[derive(Debug)]
pub struct ClientTimedOut;

impl std::fmt::Display for ClientTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("client silent mid-body longer than the client timeout")
    }
}

impl std::error::Error for ClientTimedOut {}

impl ClientTimedOut {
    /// Whether `e` or one of its sources is a client body timeout.
    pub fn caused(e: &(dyn std::error::Error + 'static)) -> bool {
        let mut e = Some(e);
        while let Some(x) = e {
            if x.is::<ClientTimedOut>() {
                return true;
            }
            e = x.source();
        }
        false
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Client(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            RequestBody::Counted(b, stats, idle) => match Pin::new(b).poll_frame(cx) {
                Poll::Ready(r) => {
                    idle.progress();
                    if let Some(Ok(f)) = &r {
                        if let Some(d) = f.data_ref() {
                            stats
                                .bytes_in
                                .fetch_add(d.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    Poll::Ready(r.map(|r| r.map_err(Into::into)))
                }
                Poll::Pending if idle.expired(cx) => {
                    Poll::Ready(Some(Err(Box::new(ClientTimedOut))))
                }
                Poll::Pending => Poll::Pending,
            },
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Client(b) | RequestBody::Counted(b, ..) => b.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Client(b) | RequestBody::Counted(b, ..) => b.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}
