//! The response body handed to clients: the upstream's, streamed, or a short
//! local one. An enum, not a box: no allocation per response.

use crate::pool::UpstreamBody;
use crate::proxy::limits::Slot;
use crate::table::ActiveGuard;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
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

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream(b, _) => Pin::new(b).poll_frame(cx),
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

/// What a response holds while it streams: its endpoint's in-flight count
/// and, on rate-limited routes, the client's concurrency slot.
#[derive(Debug)]
pub struct InFlight {
    pub active: ActiveGuard,
    pub slot: Option<Slot>,
}
