//! Upgraded connections (WebSocket and friends): bytes both ways until one
//! side closes or nothing moves for the tunnel timeout.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::debug;

/// Join the client's and the upstream's upgraded connections in a task.
pub fn spawn<H: Send + 'static>(client: OnUpgrade, upstream: OnUpgrade, idle: Duration, hold: H) {
    tokio::spawn(async move {
        // Counters and limiter slots stay taken while the tunnel lives.
        let _hold = hold;
        let (c, u) = tokio::join!(client, upstream);
        let (Ok(c), Ok(u)) = (c, u) else {
            debug!("upgrade did not complete on both sides");
            return;
        };
        pipe(TokioIo::new(c), TokioIo::new(u), idle).await;
    });
}

/// Copy both ways until either side closes or no byte moves for `idle`.
pub async fn pipe<A, B>(a: A, b: B, idle: Duration)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let r = pipe_counted(a, b, idle, 8 * 1024).await;
    debug!(reason = %r.reason, "tunnel closed");
}

/// How a pipe ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipeResult {
    /// Bytes read from `a` (and written to `b`).
    pub a_to_b: u64,
    pub b_to_a: u64,
    /// `closed`, `idle timeout` or the I/O error.
    pub reason: String,
}

/// [`pipe`], counting bytes each way, with a `buf`-byte buffer per
/// direction (bulk transfers want more than tokio's 8 KiB). A half-close
/// (EOF from one side) is passed on as a write shutdown and the other
/// direction keeps flowing.
pub async fn pipe_counted<A, B>(a: A, b: B, idle: Duration, buf: usize) -> PipeResult
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let epoch = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut c = Activity::new(a, last.clone(), epoch);
    let mut u = Activity::new(b, last.clone(), epoch);
    let (reason, done) = {
        let copy = tokio::io::copy_bidirectional_with_sizes(&mut c, &mut u, buf, buf);
        let watchdog = async {
            loop {
                let since = Duration::from_millis(last.load(Ordering::Relaxed));
                let deadline = epoch + since + idle;
                if Instant::now() >= deadline {
                    return;
                }
                tokio::time::sleep_until(deadline.into()).await;
            }
        };
        tokio::select! {
            r = copy => match r {
                Ok(n) => ("closed".to_owned(), Some(n)),
                Err(e) => (format!("error: {e}"), None),
            },
            _ = watchdog => ("idle timeout".to_owned(), None),
        }
    };
    let (a_to_b, b_to_a) = done.unwrap_or((c.read, u.read));
    PipeResult {
        a_to_b,
        b_to_a,
        reason,
    }
}

/// Records the time of the last byte moved.
struct Activity<T> {
    io: T,
    last: Arc<AtomicU64>,
    epoch: Instant,
    /// Bytes read from this side.
    read: u64,
}

impl<T> Activity<T> {
    fn new(io: T, last: Arc<AtomicU64>, epoch: Instant) -> Self {
        Activity {
            io,
            last,
            epoch,
            read: 0,
        }
    }

    fn touch(&self) {
        self.last
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Activity<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read += n as u64;
            self.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Activity<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
