//! The response body handed to clients: the upstream's, streamed, or a short
//! local one. An enum, not a box: no allocation per response.

use crate::pool::UpstreamBody;
use crate::proxy::limits::Slot;
use crate::table::ActiveGuard;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

#[derive(Debug)]
pub enum ProxyBody {
    /// The upstream's body; the guard counts the request as in flight
    /// until the body is done or dropped.
    Upstream(UpstreamBody, Option<InFlight>),
    Local(Option<Bytes>),
}

impl ProxyBody {
    pub fn local(text: impl Into<Bytes>) -> Self {
        ProxyBody::Local(Some(text.into()))
    }

    pub fn empty() -> Self {
        ProxyBody::Local(None)
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
        match self.get_mut() {
            ProxyBody::Upstream(b, hold) => match Pin::new(b).poll_frame(cx) {
                Poll::Ready(r) => {
                    if let Some(h) = hold {
                        h.timer = None;
                    }
                    Poll::Ready(r.map(|f| f.map_err(BoxError::from)))
                }
                Poll::Pending => {
                    // The route's timeout is also the longest the upstream
                    // may stay silent mid-body (HAProxy `timeout server`).
                    // The timer exists only while the body is stalled.
                    if let Some(h) = hold.as_mut().filter(|h| !h.idle.is_zero()) {
                        let idle = h.idle;
                        let t = h
                            .timer
                            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                        if t.as_mut().poll(cx).is_ready() {
                            let e = std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "upstream idle mid-body",
                            );
                            return Poll::Ready(Some(Err(e.into())));
                        }
                    }
                    Poll::Pending
                }
            },
            ProxyBody::Local(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(b, _) => b.is_end_stream(),
            ProxyBody::Local(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(b, _) => b.size_hint(),
            ProxyBody::Local(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

/// What a response holds while it streams: its endpoint's in-flight count,
/// on rate-limited routes the client's concurrency slot, and the idle timer.
#[derive(Debug)]
pub struct InFlight {
    pub active: ActiveGuard,
    pub slot: Option<Slot>,
    pub idle: std::time::Duration,
    pub timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl InFlight {
    pub fn new(active: ActiveGuard, slot: Option<Slot>, idle: std::time::Duration) -> Self {
        InFlight {
            active,
            slot,
            idle,
            timer: None,
        }
    }
}
