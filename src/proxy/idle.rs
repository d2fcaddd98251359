//! Client connection deadlines, HAProxy's `timeout http-request` and
//! `timeout http-keep-alive`: a request's head must arrive within the
//! header timeout of its first byte (of the connection's start, for the
//! first request), and a connection with no request in progress is closed
//! after the keep-alive timeout. hyper's own header timer runs from the
//! moment it waits for a head, idle or not, so it would close idle
//! keep-alive connections at the (short) header timeout; it is off, and
//! this wrapper around the client stream keeps both deadlines with one
//! timer.
//!
//! The service marks requests in progress on [`super::ConnInfo`] (from the
//! service call until the response body is done or dropped); while any is,
//! no deadline runs (the route timeouts apply). Bytes read while an
//! HTTP/1 request was in progress (a pipelined head, or the body) start the
//! next idle period with the header deadline, the conservative choice. On
//! HTTP/2 only the keep-alive deadline runs between requests (frames such
//! as PING are not a head); HTTP/2 request headers are bounded by h2's
//! own limits.
//!
//! **Parking.** An HTTP/1 connection idle for `Deadlines::park` gives its
//! buffers back: the wrapper answers hyper's pending read with end-of-file
//! (hyper, idle, ends the connection cleanly, and its shutdown of the
//! stream is swallowed), the connection driver (`super::conn`) drops
//! hyper's connection — its 8 KiB read and 8 KiB write buffers and the
//! boxed service future — and waits on the bare stream; the next request's
//! first bytes start a fresh hyper connection with them. HAProxy releases
//! an idle connection's buffers the same way. An HTTP/2 connection cannot
//! park (its HPACK tables and settings live on); the same timer only wakes
//! it, and h2, waiting a second time with no streams, frees its read,
//! write and HPACK string buffers (the patch in `vendor/h2`).

use super::ConnInfo;
use bytes::{Buf, Bytes};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The two client deadlines.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// From a request's first byte (or the connection's start) to its
    /// complete head.
    pub header: Duration,
    /// With no request in progress and no byte of the next one.
    pub keep_alive: Duration,
    /// A response the client does not read: writes stalled this long
    /// close the connection (HAProxy's `timeout client` on the send side;
    /// slow-read attacks). Zero: no limit.
    pub send: Duration,
    /// A connection idle this long releases its buffers (see the module
    /// documentation). Zero: never.
    pub park: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Waiting for a head: the header deadline runs.
    Head,
    /// Between requests: the keep-alive deadline runs.
    Idle,
    /// A request is in progress: no deadline.
    Busy,
}

/// The client stream with its deadlines.
///
/// One timer, never later than what is due: entering `Idle` arms it at the
/// header timeout (the earliest a following `Head` can need) unless it is
/// already armed earlier, and the logical deadline (`deadline`) is checked
/// when it fires; a timer that fires early is re-armed for what is due
/// then (an idle connection: once, for the rest of the keep-alive time).
pub struct ClientIo<I> {
    io: I,
    info: Arc<ConnInfo>,
    deadlines: Deadlines,
    mode: Mode,
    deadline: Instant,
    timer: Pin<Box<Sleep>>,
    /// Requests started on the connection when last looked.
    seen: u32,
    /// While busy: writes have been stalled since this deadline minus the
    /// send timeout (the timer is armed at it).
    send_deadline: Option<Instant>,
    /// The connection speaks HTTP/2 (its first bytes are the preface):
    /// frames between requests (PING, SETTINGS, WINDOW_UPDATE) are not a
    /// request's head, so only the keep-alive deadline runs between them.
    h2: Option<bool>,
    /// Bytes read ahead (protocol sniffing, parking) that the next reads
    /// return first.
    unread: Bytes,
    /// While idle: when the connection parks.
    park_at: Option<Instant>,
    /// End-of-file was reported to hyper to park; its shutdown is
    /// swallowed until the next byte arrives.
    parked: bool,
    /// The last write or flush did not complete.
    write_pending: bool,
}

/// What the timer says when it fired.
enum Fired {
    Nothing,
    Park,
    Expired,
}

impl<I> ClientIo<I> {
    pub fn new(io: I, info: Arc<ConnInfo>, deadlines: Deadlines) -> Self {
        let deadline = Instant::now() + deadlines.header;
        ClientIo {
            io,
            info,
            deadlines,
            mode: Mode::Head,
            deadline,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            seen: 0,
            send_deadline: None,
            h2: None,
            unread: Bytes::new(),
            park_at: None,
            parked: false,
            write_pending: false,
        }
    }

    /// Read until the first bytes tell HTTP/2's preface from an HTTP/1
    /// request (under the header deadline) and keep them for the next
    /// reads: whether the connection speaks HTTP/2. The first read takes
    /// up to 4 KiB, so an HTTP/1 request's head usually arrives whole in it
    /// and hyper needs no second read system call for it.
    pub async fn sniff(&mut self) -> io::Result<bool>
    where
        I: AsyncRead + Unpin,
    {
        const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let mut got = Vec::new();
        loop {
            let n = self.read_some(&mut got).await?;
            let k = got.len().min(PREFACE.len());
            if n == 0 || got[..k] != PREFACE[..k] || k == PREFACE.len() {
                break;
            }
        }
        let h2 = got.starts_with(PREFACE);
        self.h2 = Some(h2);
        self.unread = Bytes::from(got);
        Ok(h2)
    }

    /// One read of up to 4 KiB through the deadlines, appended to `to`: how
    /// many bytes (0 at end-of-file). The buffer lives only while polled.
    async fn read_some(&mut self, to: &mut Vec<u8>) -> io::Result<usize>
    where
        I: AsyncRead + Unpin,
    {
        std::future::poll_fn(|cx| {
            let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
            let mut rb = ReadBuf::uninit(&mut buf);
            std::task::ready!(Pin::new(&mut *self).poll_read(cx, &mut rb))?;
            to.extend_from_slice(rb.filled());
            Poll::Ready(Ok(rb.filled().len()))
        })
        .await
    }

    /// Whether the connection parked (hyper saw end-of-file for it).
    pub fn parked(&self) -> bool {
        self.parked
    }

    /// Bytes hyper had read and not used, returned first by the next reads
    /// (before any still unread here: hyper read those later).
    pub fn unread(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        if self.unread.is_empty() {
            self.unread = bytes;
        } else {
            let mut both = Vec::with_capacity(bytes.len() + self.unread.len());
            both.extend_from_slice(&bytes);
            both.extend_from_slice(&self.unread);
            self.unread = Bytes::from(both);
        }
    }

    /// While parked: wait for the next request's first bytes (kept for the
    /// next hyper connection): true; false at end-of-file. The keep-alive
    /// deadline still runs (an error).
    pub async fn wait_next(&mut self) -> io::Result<bool>
    where
        I: AsyncRead + Unpin,
    {
        if !self.unread.is_empty() {
            return Ok(true);
        }
        let mut first = Vec::new();
        let n = self.read_some(&mut first).await?;
        self.unread = Bytes::from(first);
        Ok(n > 0)
    }

    /// The connection's facts and shared state.
    pub fn info(&self) -> &Arc<ConnInfo> {
        &self.info
    }

    /// Close a parked connection: the stream's shutdown, no longer
    /// swallowed.
    pub async fn close(&mut self)
    where
        I: AsyncWrite + Unpin,
    {
        use tokio::io::AsyncWriteExt as _;
        self.parked = false;
        let _ = self.io.shutdown().await;
    }

    fn enter(&mut self, mode: Mode) {
        self.mode = mode;
        self.send_deadline = None;
        let now = Instant::now();
        match mode {
            Mode::Head => {
                self.deadline = now + self.deadlines.header;
                if self.timer.deadline() > self.deadline {
                    self.timer.as_mut().reset(self.deadline);
                }
            }
            Mode::Idle => {
                self.deadline = now + self.deadlines.keep_alive;
                let mut first = self.deadlines.header.min(self.deadlines.keep_alive);
                self.park_at = None;
                if self.h2.is_some() && !self.deadlines.park.is_zero() {
                    first = first.min(self.deadlines.park);
                    self.park_at = Some(now + self.deadlines.park);
                }
                // Armed earlier already, it fires early and `fired` re-arms
                // it for what is due then: on a busy keep-alive connection
                // one re-arm per `first`, not a reset (~230 instructions)
                // per request.
                super::deadline::arm_by(self.timer.as_mut(), now + first);
            }
            Mode::Busy => {}
        }
    }

    /// Follow the connection's requests: busy while any is in progress;
    /// when the last ends (seen here, or by a request count that moved
    /// between two looks), idle — or waiting for a head if bytes came in
    /// meanwhile. Called on every read and write: hyper writes the end of
    /// a response after its body is dropped, so the idle deadline starts
    /// even if hyper does not read again.
    fn settle(&mut self, cx: &mut Context<'_>) {
        let started = self.info.cancels.started.load(Relaxed);
        if self.info.busy.load(Acquire) > 0 || self.info.upgraded.load(Relaxed) {
            self.mode = Mode::Busy;
            self.seen = started;
            return;
        }
        if self.mode == Mode::Busy || started != self.seen {
            self.seen = started;
            let read = self.info.read_while_busy.swap(false, Relaxed);
            let next = if read && self.h2 != Some(true) {
                Mode::Head
            } else {
                Mode::Idle
            };
            self.enter(next);
            // Register the timer with this task.
            let _ = self.timer.as_mut().poll(cx);
        }
    }

    /// After a write: a stalled write (Pending) while a request is in
    /// progress arms the send deadline; progress clears it; past it, the
    /// write fails and hyper closes the connection.
    fn write_stalled<T>(
        &mut self,
        r: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        if self.mode != Mode::Busy
            || self.deadlines.send.is_zero()
            || self.info.upgraded.load(Relaxed)
        {
            return r;
        }
        match r {
            Poll::Pending => {
                let d = *self.send_deadline.get_or_insert_with(|| {
                    let d = Instant::now() + self.deadlines.send;
                    self.timer.as_mut().reset(d);
                    d
                });
                if self.timer.as_mut().poll(cx).is_ready() && Instant::now() >= d {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "client did not read the response within the client timeout",
                    )));
                }
                Poll::Pending
            }
            r => {
                self.send_deadline = None;
                r
            }
        }
    }

    /// What the fired timer means: the deadline passed, or time to park
    /// (re-arming it when it fired early for either).
    fn fired(&mut self, cx: &mut Context<'_>) -> Fired {
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if now >= self.deadline {
                return Fired::Expired;
            }
            let mut next = self.deadline;
            if let Some(at) = self.park_at {
                if now >= at {
                    self.park_at = None;
                    // HTTP/2 cannot park (its HPACK tables live on): this
                    // wake-up alone makes h2 wait a second time with no
                    // streams, and free its buffers (vendor/h2/PATCH.md).
                    if self.mode == Mode::Idle
                        && !self.write_pending
                        && !self.parked
                        && self.h2 == Some(false)
                    {
                        return Fired::Park;
                    }
                } else {
                    next = next.min(at);
                }
            }
            self.timer.as_mut().reset(next);
        }
        Fired::Nothing
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ClientIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.settle(cx);
        let before = buf.filled().len();
        let r = if this.unread.is_empty() {
            Pin::new(&mut this.io).poll_read(cx, buf)
        } else {
            let n = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.unread[..n]);
            this.unread.advance(n);
            if this.unread.is_empty() {
                this.unread = Bytes::new(); // release the allocation
            }
            Poll::Ready(Ok(()))
        };
        match r {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.parked = false;
                    match this.mode {
                        Mode::Idle if this.h2 == Some(true) => {}
                        Mode::Idle => this.enter(Mode::Head),
                        Mode::Busy => this.info.read_while_busy.store(true, Relaxed),
                        Mode::Head => {}
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if this.mode == Mode::Busy {
                    return Poll::Pending;
                }
                match this.fired(cx) {
                    Fired::Nothing => Poll::Pending,
                    Fired::Park => {
                        // End-of-file for hyper, idle: it ends the
                        // connection cleanly and the driver parks it.
                        this.parked = true;
                        Poll::Ready(Ok(()))
                    }
                    Fired::Expired => {
                        let what = if this.mode == Mode::Head {
                            "request head not received within the header timeout"
                        } else {
                            "idle keep-alive connection timed out"
                        };
                        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)))
                    }
                }
            }
            r => r,
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ClientIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.write_pending = r.is_pending();
        this.settle(cx);
        this.write_stalled(r, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.write_pending = r.is_pending();
        this.settle(cx);
        this.write_stalled(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.write_pending = r.is_pending();
        this.settle(cx);
        this.write_stalled(r, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.parked {
            // hyper ending a connection it was told to park: the stream
            // stays open for the next request.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn deadlines() -> Deadlines {
        Deadlines {
            header: Duration::from_secs(5),
            keep_alive: Duration::from_secs(5),
            send: Duration::from_secs(5),
            park: Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn sniffed_and_unread_bytes_come_back_in_order() {
        let (client, server) = tokio::io::duplex(64);
        let peer = "127.0.0.1:1".parse().unwrap();
        let info = Arc::new(ConnInfo::new(peer, peer, false));
        let mut io = ClientIo::new(server, info, deadlines());
        let mut client = client;
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert!(!io.sniff().await.unwrap(), "an HTTP/1 request is not h2");
        // What hyper had buffered goes before what is still unread here.
        io.unread(Bytes::from_static(b"<hyper>"));
        client.write_all(b"Host: a\r\n\r\n").await.unwrap();
        drop(client);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"<hyper>GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    }

    #[tokio::test]
    async fn the_http2_preface_is_recognised_across_reads() {
        let (mut client, server) = tokio::io::duplex(64);
        let peer = "127.0.0.1:1".parse().unwrap();
        let info = Arc::new(ConnInfo::new(peer, peer, false));
        let mut io = ClientIo::new(server, info, deadlines());
        let sniff = tokio::spawn(async move {
            let h2 = io.sniff().await.unwrap();
            (h2, io)
        });
        client.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.write_all(b"\r\nSM\r\n\r\n").await.unwrap();
        let (h2, mut io) = sniff.await.unwrap();
        assert!(h2);
        drop(client);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(
            all, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "the preface is handed on whole"
        );
    }
}
