//! A request body that survives a failed connect: the client's body stays
//! in a shared slot until the upstream connection first polls it, so the
//! same request can be sent to the next endpoint.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// Shared between the attempts of one request.
pub type RetrySlot = Arc<Mutex<Option<Incoming>>>;

/// The body sent upstream.
#[derive(Debug)]
pub struct RetryBody {
    slot: Option<RetrySlot>,
    taken: Option<Incoming>,
    hint: SizeHint,
}

impl RetryBody {
    /// No body (GET, HEAD, …): nothing to keep.
    pub fn empty() -> Self {
        RetryBody {
            slot: None,
            taken: None,
            hint: SizeHint::with_exact(0),
        }
    }

    /// A body taken from `slot` on first poll.
    pub fn from_slot(slot: RetrySlot, hint: SizeHint) -> Self {
        RetryBody {
            slot: Some(slot),
            taken: None,
            hint,
        }
    }

    /// Whether this attempt has started reading the client's body (then a
    /// retry is impossible).
    pub fn slot_is_empty(slot: &RetrySlot) -> bool {
        slot.lock().map(|s| s.is_none()).unwrap_or(true)
    }
}

impl Body for RetryBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if self.taken.is_none() {
            let Some(slot) = self.slot.take() else {
                return Poll::Ready(None);
            };
            // Poisoning needs a panic while holding the lock; none can happen.
            self.taken = slot.lock().ok().and_then(|mut s| s.take());
            if self.taken.is_none() {
                return Poll::Ready(None);
            }
        }
        match self.taken.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.taken {
            Some(b) => b.is_end_stream(),
            None => self.slot.is_none() || self.hint.exact() == Some(0),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.taken {
            Some(b) => b.size_hint(),
            None => self.hint,
        }
    }
}
