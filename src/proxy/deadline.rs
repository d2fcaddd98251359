//! The route timeout's timer, kept by the connection between requests.
//!
//! A fresh timer per request (`tokio::time::timeout_at`) registers in the
//! timer wheel on its first wait and leaves it when dropped: the wheel's
//! lock, an insertion and a removal per request. A connection's requests
//! follow each other, so the connection keeps one timer and lends it to
//! one request at a time; a lent timer already armed no later than the
//! request's deadline is left as it is. When it fires early, the deadline
//! is checked and the timer re-armed for it — once per route timeout on a
//! busy connection, instead of twice per request.
//!
//! A connection's first request uses a timer of its own (a one-request
//! connection then allocates none), and so does a request that finds the
//! timer lent. HTTP/2 streams (each its own task, at once) do not use the
//! slot: a timer kept after a stream would hold that finished task.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use tokio::time::{Instant, Sleep};

/// A connection's timer for its requests' route timeouts.
#[derive(Debug, Default)]
pub struct TimerSlot(Mutex<Slot>);

#[derive(Debug, Default)]
enum Slot {
    /// No request yet: the first uses a timer of its own, with no
    /// allocation, since most connections that carry one request (HTTP/1.0,
    /// `Connection: close`) carry only that one.
    #[default]
    Fresh,
    /// No timer kept (or dropped while the connection parks).
    Empty,
    /// Between requests.
    Kept(Pin<Box<Sleep>>),
    /// A request has it.
    Lent,
}

impl TimerSlot {
    /// Borrow the timer, armed no later than `deadline`: `None` for the
    /// connection's first request and while another request has it.
    fn lend(&self, deadline: Instant) -> Option<Pin<Box<Sleep>>> {
        let mut slot = self.0.try_lock().ok()?;
        match std::mem::replace(&mut *slot, Slot::Lent) {
            Slot::Kept(mut t) => {
                arm_by(t.as_mut(), deadline);
                Some(t)
            }
            Slot::Empty => Some(Box::pin(tokio::time::sleep_until(deadline))),
            Slot::Fresh => {
                *slot = Slot::Empty;
                None
            }
            Slot::Lent => None,
        }
    }

    fn give_back(&self, t: Pin<Box<Sleep>>) {
        if let Ok(mut slot) = self.0.try_lock() {
            if matches!(*slot, Slot::Lent) {
                *slot = Slot::Kept(t);
            }
        }
    }

    /// Drop the kept timer: a parked connection holds no timer.
    pub fn clear(&self) {
        if let Ok(mut slot) = self.0.try_lock() {
            if matches!(*slot, Slot::Kept(_)) {
                *slot = Slot::Empty;
            }
        }
    }
}

/// Make `timer` fire no later than `at`: a timer still armed earlier is
/// left as it is (its owner checks the real deadline when it fires and
/// re-arms it), so a busy owner does not reset it, and take the timer
/// wheel's lock, for every deadline it moves on to.
pub fn arm_by(timer: Pin<&mut Sleep>, at: Instant) {
    if timer.is_elapsed() || timer.deadline() > at {
        timer.reset(at);
    }
}

/// The deadline passed before the future completed.
#[derive(Debug, PartialEq, Eq)]
pub struct TimedOut;

/// `fut`, or [`TimedOut`] once `deadline` has passed: under the slot's
/// timer when there is a slot and its timer is free, else under one of its
/// own.
pub fn within<F: Future + Unpin>(
    slot: Option<&TimerSlot>,
    deadline: Instant,
    fut: F,
) -> Within<'_, F> {
    match slot.and_then(|s| Some((s, s.lend(deadline)?))) {
        Some((slot, timer)) => Within::Lent {
            lent: Lent {
                slot,
                timer: Some(timer),
                deadline,
                fut,
            },
        },
        None => Within::Own {
            sleep: tokio::time::sleep_until(deadline),
            fut,
        },
    }
}

pin_project_lite::pin_project! {
    /// [`within`]'s future: under the connection's timer, or its own. (A
    /// plain enum, not an `async fn`, and no `tokio::time::Timeout` inside:
    /// each layer that re-wraps the response on its way out costs a copy
    /// of it, ~90 instructions.)
    #[project = WithinProj]
    pub enum Within<'a, F> {
        Lent { lent: Lent<'a, F> },
        Own { #[pin] sleep: Sleep, fut: F },
    }
}

impl<F: Future + Unpin> Future for Within<'_, F> {
    type Output = Result<F::Output, TimedOut>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            WithinProj::Lent { lent } => Pin::new(lent).poll(cx),
            WithinProj::Own { sleep, fut } => {
                if let Poll::Ready(v) = Pin::new(fut).poll(cx) {
                    return Poll::Ready(Ok(v));
                }
                match sleep.poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(TimedOut)),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

/// A future under a lent timer, which goes back to its slot when done.
pub struct Lent<'a, F> {
    slot: &'a TimerSlot,
    /// `Some` until dropped.
    timer: Option<Pin<Box<Sleep>>>,
    deadline: Instant,
    fut: F,
}

impl<F: Future + Unpin> Future for Lent<'_, F> {
    type Output = Result<F::Output, TimedOut>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Poll::Ready(v) = Pin::new(&mut this.fut).poll(cx) {
            return Poll::Ready(Ok(v));
        }
        let Some(timer) = this.timer.as_mut() else {
            return Poll::Pending;
        };
        // Fired: due, or early (armed for an earlier request's deadline).
        while timer.as_mut().poll(cx).is_ready() {
            if Instant::now() >= this.deadline {
                return Poll::Ready(Err(TimedOut));
            }
            timer.as_mut().reset(this.deadline);
        }
        Poll::Pending
    }
}

impl<F> Drop for Lent<'_, F> {
    fn drop(&mut self) {
        if let Some(t) = self.timer.take() {
            self.slot.give_back(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn never() -> std::future::Pending<()> {
        std::future::pending()
    }

    /// How long after `start` the deadline `after` from now cut a future
    /// that never completes.
    async fn cut_after(slot: &TimerSlot, after: Duration) -> Duration {
        let start = Instant::now();
        assert_eq!(
            within(Some(slot), start + after, never()).await,
            Err(TimedOut)
        );
        Instant::now() - start
    }

    #[tokio::test(start_paused = true)]
    async fn each_request_is_cut_at_its_own_deadline() {
        let slot = TimerSlot::default();
        // The first request uses a timer of its own; none is kept.
        assert_eq!(
            cut_after(&slot, Duration::from_millis(200)).await,
            Duration::from_millis(200)
        );
        assert!(matches!(*slot.0.lock().unwrap(), Slot::Empty));
        // Completes at once: the timer goes back armed 30 s out.
        assert_eq!(
            within(
                Some(&slot),
                Instant::now() + Duration::from_secs(30),
                std::future::ready(7)
            )
            .await,
            Ok(7)
        );
        assert!(matches!(*slot.0.lock().unwrap(), Slot::Kept(_)));
        // A shorter deadline pulls the kept timer in.
        assert_eq!(
            cut_after(&slot, Duration::from_secs(1)).await,
            Duration::from_secs(1)
        );
        // An elapsed timer is armed again, for the whole deadline.
        assert_eq!(
            cut_after(&slot, Duration::from_secs(5)).await,
            Duration::from_secs(5)
        );
        // Armed earlier than needed (2 s out, then a request 1 s later
        // with 5 s): it fires early and the request still gets its 5 s.
        assert_eq!(
            within(
                Some(&slot),
                Instant::now() + Duration::from_secs(2),
                std::future::ready(())
            )
            .await,
            Ok(())
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            cut_after(&slot, Duration::from_secs(5)).await,
            Duration::from_secs(5)
        );
        // Cleared (parked): the next request makes a new one.
        slot.clear();
        assert!(matches!(*slot.0.lock().unwrap(), Slot::Empty));
        assert_eq!(
            cut_after(&slot, Duration::from_millis(300)).await,
            Duration::from_millis(300)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn requests_at_once_each_get_a_timer() {
        let slot = TimerSlot::default();
        assert_eq!(
            within(Some(&slot), Instant::now(), std::future::ready(())).await,
            Ok(())
        );
        let start = Instant::now();
        let first = within(Some(&slot), start + Duration::from_secs(3), never());
        let second = within(Some(&slot), start + Duration::from_secs(1), never());
        let (a, b) = tokio::join!(
            async {
                let r = first.await;
                (r, Instant::now() - start)
            },
            async {
                let r = second.await;
                (r, Instant::now() - start)
            }
        );
        assert_eq!(a, (Err(TimedOut), Duration::from_secs(3)));
        assert_eq!(b, (Err(TimedOut), Duration::from_secs(1)));
        // The lent one came back; the other was dropped.
        assert!(matches!(*slot.0.lock().unwrap(), Slot::Kept(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_future_that_completes_is_not_cut() {
        let slot = TimerSlot::default();
        let start = Instant::now();
        let r = within(
            Some(&slot),
            start + Duration::from_secs(2),
            Box::pin(tokio::time::sleep(Duration::from_millis(1500))),
        )
        .await;
        assert_eq!(r, Ok(()));
        assert_eq!(Instant::now() - start, Duration::from_millis(1500));
        // Without a slot (HTTP/2): a timer of its own; the slot is not
        // touched.
        assert!(matches!(*slot.0.lock().unwrap(), Slot::Empty));
        let start = Instant::now();
        let r = within(None, start + Duration::from_secs(1), never()).await;
        assert_eq!(
            (r, Instant::now() - start),
            (Err(TimedOut), Duration::from_secs(1))
        );
        assert!(matches!(*slot.0.lock().unwrap(), Slot::Empty));
    }
}
