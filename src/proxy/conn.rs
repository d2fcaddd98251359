//! One client connection from its first byte to its close: which protocol
//! it speaks (HTTP/2's preface or not), hyper's connection for it, graceful
//! drain, and parking (an idle HTTP/1 connection gives back hyper's buffers
//! until its next request; see `idle`).

use super::idle::{ClientIo, Deadlines};
use super::ConnInfo;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tracing::debug;

/// HTTP/1 connections parked now (idle, buffers released).
pub static PARKED: AtomicU64 = AtomicU64::new(0);

/// Longest wait for a parked connection's close to be written.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The listeners' protocol settings: hyper's two builders and the client
/// deadlines.
pub(crate) struct ConnServer {
    pub(super) h1: hyper::server::conn::http1::Builder,
    pub(super) h2: hyper::server::conn::http2::Builder<TokioExecutor>,
    pub(super) deadlines: Deadlines,
}

/// A listener's connections, for a graceful drain: each holds a
/// [`DrainWatch`]; `shutdown` tells them all and waits until every one has
/// ended.
pub(crate) struct Drain(watch::Sender<bool>);

/// One connection's view of its listener's [`Drain`].
pub(crate) struct DrainWatch(watch::Receiver<bool>);

impl Drain {
    pub fn new() -> Self {
        Drain(watch::channel(false).0)
    }

    pub fn watcher(&self) -> DrainWatch {
        DrainWatch(self.0.subscribe())
    }

    /// Tell every connection to finish (idle ones close, busy ones close
    /// after their response; HTTP/2 gets GOAWAY) and wait for all to end.
    pub async fn shutdown(self) {
        self.0.send_replace(true);
        self.0.closed().await;
    }
}

impl DrainWatch {
    /// Resolves once the drain has begun (or its listener is gone).
    ///
    /// Polled on every wake of its connection's task, next to the
    /// connection itself. The watch's own wait takes its waiter lock on
    /// every poll (~400 instructions per request); here it is polled again
    /// only when the channel's version moved (one atomic load, through a
    /// second receiver) or the task's waker is not the one it holds.
    async fn begun(&mut self) {
        let mut probe = self.0.clone();
        let mut wait = std::pin::pin!(self.0.wait_for(|d| *d));
        let mut waiting: Option<std::task::Waker> = None;
        std::future::poll_fn(|cx| {
            if let Some(w) = &waiting {
                if w.will_wake(cx.waker()) && matches!(probe.has_changed(), Ok(false)) {
                    return std::task::Poll::Pending;
                }
            }
            // Marked before the wait looks at the value: a change from
            // here on shows in the probe (one made earlier, the wait sees).
            probe.mark_unchanged();
            match std::future::Future::poll(wait.as_mut(), cx) {
                std::task::Poll::Ready(_) => std::task::Poll::Ready(()),
                std::task::Poll::Pending => {
                    waiting = Some(cx.waker().clone());
                    std::task::Poll::Pending
                }
            }
        })
        .await
    }
}

/// Serve `io` until the connection ends.
pub(crate) async fn drive<I, S, F>(
    server: &ConnServer,
    io: I,
    info: Arc<ConnInfo>,
    svc: S,
    mut drain: DrainWatch,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<super::ProxyBody>,
            Error = std::convert::Infallible,
            Future = F,
        > + Clone
        + Send
        + Unpin
        + 'static,
    F: std::future::Future<
            Output = Result<hyper::Response<super::ProxyBody>, std::convert::Infallible>,
        > + Send
        + 'static,
{
    let peer = info.peer;
    let mut io = ClientIo::new(io, info, server.deadlines);
    match io.sniff().await {
        Ok(true) => {
            // Each HTTP/2 stream's future boxed: hyper spawns every stream
            // as a task, and tokio copies a task's future several times on
            // spawn; a pointer instead of the 2.5 KB request future (callgrind
            // h2: 47,574 unboxed -> 45,727 instructions per request). HTTP/1
            // keeps it unboxed in hyper's per-connection box (`service`).
            let svc = hyper::service::service_fn(move |req| Box::pin(svc.call(req)));
            // Boxed, as the HTTP/1 one: the task itself stays small.
            let mut conn = Box::pin(server.h2.serve_connection(TokioIo::new(io), svc));
            let r = until_done(conn.as_mut(), &mut drain, |c| c.graceful_shutdown()).await;
            if let Err(e) = r {
                debug!(%peer, error = %e, "client connection ended with an error");
            }
            return;
        }
        Ok(false) => {}
        Err(e) => {
            debug!(%peer, error = %e, "client connection ended before its first request");
            return;
        }
    }
    loop {
        // Boxed: dropped while parked, so a parked connection's task holds
        // only the stream.
        let mut conn = Box::new(
            server
                .h1
                .serve_connection(TokioIo::new(io), svc.clone())
                .with_upgrades(),
        );
        let r = until_done(Pin::new(&mut *conn), &mut drain, |c| c.graceful_shutdown()).await;
        if let Err(e) = r {
            debug!(%peer, error = %e, "client connection ended with an error");
            return;
        }
        // Ended: upgraded (the tunnel owns the stream now), closed, or
        // parked.
        let Some(parts) = (*conn).into_parts() else {
            return;
        };
        io = parts.io.into_inner();
        if !io.parked() {
            return;
        }
        io.unread(parts.read_buf);
        drop(parts.service);
        io.info().route_timer.clear();
        PARKED.fetch_add(1, Relaxed);
        let next = tokio::select! {
            r = io.wait_next() => matches!(r, Ok(true)),
            _ = drain.begun() => false,
        };
        PARKED.fetch_sub(1, Relaxed);
        if !next {
            // Nothing is pending on a parked connection, so its FIN (or
            // TLS close_notify) goes out at once; bounded all the same.
            let _ = tokio::time::timeout(CLOSE_WAIT, io.close()).await;
            return;
        }
    }
}

/// Poll `conn` to its end; once the drain begins (at once if it already
/// has), tell it to finish with `shutdown`.
async fn until_done<C, E>(
    mut conn: Pin<&mut C>,
    drain: &mut DrainWatch,
    shutdown: impl Fn(Pin<&mut C>),
) -> Result<(), E>
where
    C: std::future::Future<Output = Result<(), E>> + ?Sized,
{
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => return r,
            _ = drain.begun(), if !draining => {
                shutdown(conn.as_mut());
                draining = true;
            }
        }
    }
}
