//! Upstream connections: HTTP/1.1 keep-alive and HTTP/2 cleartext (h2c),
//! pooled per endpoint, shared by every route.
//!
//! Connecting is separate from sending, so a connect failure can move to the
//! next endpoint before the request (and its body) is committed anywhere.
//! Owns connecting and reuse; must not choose endpoints (`balance`) or look
//! at routes.

mod body;
pub mod fxhash;
mod h1;

pub use body::{ClientTimedOut, RequestBody, StallTimer, UpstreamBody};
pub use h1::{decode_response, ExtraHead, H1Error, RawBody};

use crate::io::Flat;
use crate::table::{Endpoint, UpstreamProtocol, UpstreamTls};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tracing::debug;

/// Pool settings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub connect_timeout: Duration,
    /// Idle pooled connections are closed after this.
    pub idle_timeout: Duration,
    /// Every this often, half of an endpoint's connections idle at least
    /// this long are closed, never its most recently used one (after
    /// HAProxy's `pool-purge-delay`, which keeps an estimate of recent need
    /// instead): a burst's extra connections go within seconds instead of
    /// all staying until `idle_timeout`. Zero: only `idle_timeout` applies.
    pub purge_delay: Duration,
    pub max_idle_per_endpoint: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(90),
            purge_delay: Duration::from_secs(5),
            max_idle_per_endpoint: 1024,
        }
    }
}

/// A connection could not be made; nothing was sent.
#[derive(Debug, thiserror::Error)]
#[error("connect to {endpoint}: {source}")]
pub struct ConnectError {
    pub endpoint: String,
    pub source: io::Error,
    /// TCP worked but the TLS handshake failed (e.g. the endpoint's
    /// certificate is not trusted): a bad gateway, not an absent one.
    pub tls: bool,
}

/// The exchange failed after the request was handed to a connection.
#[derive(Debug, thiserror::Error)]
#[error("upstream {endpoint}: {source}")]
pub struct ExchangeError {
    pub endpoint: String,
    /// hyper's error, or this crate's HTTP/1.1 client's ([`H1Error`]).
    pub source: Box<dyn std::error::Error + Send + Sync>,
    /// The request went out on a pooled connection that then failed before
    /// any response byte: the upstream most likely closed it while idle,
    /// and a safe request may be sent again on a fresh connection.
    pub stale: bool,
    /// Failed before any response byte (closed, reset): a safe request may
    /// go to another endpoint.
    pub before_response: bool,
    /// The request itself, when hyper gives it back unsent (a new connection
    /// closed before anything was written): any request may go elsewhere.
    pub unsent: Option<Request<RequestBody>>,
    /// The request as it was written (its body dropped), given back by
    /// this crate's HTTP/1.1 client when no complete answer came: a safe
    /// one may be sent again without a copy kept beforehand.
    pub sent: Option<Request<RequestBody>>,
}

impl ExchangeError {
    fn new(endpoint: &Endpoint, source: hyper::Error, reused: bool) -> Self {
        let before_response = no_response(&source);
        ExchangeError {
            endpoint: endpoint.to_string(),
            source: Box::new(source),
            stale: reused && before_response,
            before_response,
            unsent: None,
            sent: None,
        }
    }

    /// The exchange failed on a timeout (hyper's, or an I/O one).
    pub fn is_timeout(&self) -> bool {
        let mut e: Option<&(dyn std::error::Error + 'static)> = Some(&*self.source);
        while let Some(x) = e {
            if x.downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_timeout)
                || x.downcast_ref::<io::Error>()
                    .is_some_and(|io| io.kind() == io::ErrorKind::TimedOut)
            {
                return true;
            }
            e = x.source();
        }
        false
    }
}

/// Did the exchange die before a response started (closed, reset)?
fn no_response(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        return true;
    }
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            return matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            );
        }
        src = s.source();
    }
    false
}

type H1 = http1::SendRequest<RequestBody>;
type H2 = http2::SendRequest<RequestBody>;

struct IdleConn {
    conn: Idle,
    since: Instant,
}

/// An idle HTTP/1.1 connection: hyper's (its task, buffers and channel
/// stay with it), or this crate's client's (just the socket).
pub(crate) enum Idle {
    Hyper(H1),
    Raw(TcpStream),
}

impl Idle {
    fn is_closed(&self) -> bool {
        match self {
            Idle::Hyper(s) => s.is_closed(),
            Idle::Raw(s) => h1::closed(s),
        }
    }
}

/// How a request reaches its endpoint, beyond the address.
#[derive(Debug, Clone, Copy, Default)]
pub struct Via<'a> {
    /// Re-encrypt: TLS under this verifier.
    pub tls: Option<&'a Arc<UpstreamTls>>,
    /// Keep a TLS endpoint from choosing h2 (upgrades need HTTP/1.1).
    pub h1_only: bool,
    /// Begin new connections with a PROXY v2 header naming this client and
    /// listener address (`proxy_protocol_to_upstreams`).
    pub proxy_header: Option<(SocketAddr, SocketAddr)>,
    /// The request has no body and is no upgrade: over plain HTTP/1.1 it
    /// goes through this crate's own client ([`h1`]), not hyper's.
    pub bodyless: bool,
}

/// Pooled connections are shared only between requests to the same
/// endpoint over the same transport (plain, or TLS under one verifier).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    endpoint: Endpoint,
    tls: u64,
    /// Connections that began with a PROXY header belong to that client
    /// connection (client, listener) and are reused only for it.
    source: Option<Box<(SocketAddr, SocketAddr)>>,
}

pub(crate) struct Inner {
    cfg: PoolConfig,
    idle: Mutex<HashMap<PoolKey, Vec<IdleConn>, fxhash::Build>>,
    h2: Mutex<HashMap<PoolKey, H2, fxhash::Build>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("cfg", &self.cfg).finish()
    }
}

/// Both pools, cheap to clone.
#[derive(Clone, Debug)]
pub struct Upstreams {
    inner: Arc<Inner>,
}

/// A connection ready to carry one request.
pub struct Conn {
    kind: ConnKind,
    key: PoolKey,
}

enum ConnKind {
    H1 { sender: H1, reused: bool },
    H2(H2),
    Raw { stream: TcpStream, reused: bool },
}

impl Conn {
    fn h1(key: PoolKey, sender: H1, reused: bool) -> Self {
        Conn {
            kind: ConnKind::H1 { sender, reused },
            key,
        }
    }

    fn raw(key: PoolKey, stream: TcpStream, reused: bool) -> Self {
        Conn {
            kind: ConnKind::Raw { stream, reused },
            key,
        }
    }

    fn h2(key: PoolKey, sender: H2) -> Self {
        Conn {
            kind: ConnKind::H2(sender),
            key,
        }
    }

    /// The protocol this connection speaks (for TLS upstreams: what ALPN
    /// chose).
    pub fn protocol(&self) -> UpstreamProtocol {
        match self.kind {
            ConnKind::H1 { .. } | ConnKind::Raw { .. } => UpstreamProtocol::Http1,
            ConnKind::H2(_) => UpstreamProtocol::H2c,
        }
    }

    /// Whether this connection is this crate's HTTP/1.1 client's (which
    /// gives a request back when no answer came).
    pub fn is_raw(&self) -> bool {
        matches!(self.kind, ConnKind::Raw { .. })
    }

    /// Whether this connection carried earlier requests.
    pub fn is_reused(&self) -> bool {
        matches!(
            self.kind,
            ConnKind::H1 { reused: true, .. } | ConnKind::Raw { reused: true, .. }
        )
    }
}

impl Upstreams {
    /// Create the pools and start the idle sweeper (needs a runtime).
    pub fn new(cfg: &PoolConfig) -> Self {
        let inner = Arc::new(Inner {
            cfg: cfg.clone(),
            idle: Mutex::new(HashMap::default()),
            h2: Mutex::new(HashMap::default()),
        });
        let weak = Arc::downgrade(&inner);
        let purge = cfg.purge_delay;
        let (every, floor) = if purge.is_zero() {
            (cfg.idle_timeout / 2, Duration::from_secs(1))
        } else {
            (
                (cfg.idle_timeout / 2).min(purge),
                purge.min(Duration::from_secs(1)),
            )
        };
        let every = every.max(floor);
        tokio::spawn(async move {
            let mut last_purge = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(every).await;
                let Some(inner) = weak.upgrade() else { return };
                // Halving runs once per purge period, however often the
                // idle-timeout sweep does.
                let now = tokio::time::Instant::now();
                let purge_now = !purge.is_zero() && now.duration_since(last_purge) >= purge;
                if purge_now {
                    last_purge = now;
                }
                inner.sweep(purge_now);
            }
        });
        Upstreams { inner }
    }

    fn key(endpoint: &Endpoint, via: &Via<'_>) -> PoolKey {
        PoolKey {
            endpoint: endpoint.clone(),
            tls: via.tls.map_or(0, |t| t.id),
            source: via.proxy_header.map(Box::new),
        }
    }

    /// A new connection to `endpoint`, never a pooled one.
    /// `h1_only` keeps a TLS endpoint from choosing h2 (upgrades need
    /// HTTP/1.1).
    ///
    /// Boxed: a TCP + TLS + HTTP handshake is an 8 KB future, and every
    /// future that awaits it inline grows by as much — up to the request
    /// future hyper keeps per client connection, idle or not (measured: 25 KB
    /// per connection and a 13 KB copy per request). New connections are the
    /// rare path; one allocation there is cheap.
    pub async fn connect(
        &self,
        endpoint: &Endpoint,
        protocol: UpstreamProtocol,
        via: &Via<'_>,
    ) -> Result<Conn, ConnectError> {
        Box::pin(self.connect_new(endpoint, protocol, via)).await
    }

    async fn connect_new(
        &self,
        endpoint: &Endpoint,
        protocol: UpstreamProtocol,
        via: &Via<'_>,
    ) -> Result<Conn, ConnectError> {
        let (tls, h1_only) = (via.tls, via.h1_only);
        let key = Self::key(endpoint, via);
        let mut stream = self.connect_tcp(endpoint).await?;
        if let Some((client, local)) = via.proxy_header {
            use tokio::io::AsyncWriteExt as _;
            let header = crate::proxy::proxy_protocol::encode_v2(client, local);
            stream
                .write_all(&header)
                .await
                .map_err(|source| ConnectError {
                    endpoint: endpoint.to_string(),
                    source,
                    tls: false,
                })?;
        }
        match tls {
            Some(t) => self.handshake_tls(key, stream, t, h1_only).await,
            None => Ok(match protocol {
                UpstreamProtocol::Http1 if via.bodyless && !h1_only => {
                    Conn::raw(key, stream, false)
                }
                UpstreamProtocol::Http1 => {
                    Conn::h1(key, self.handshake_h1(endpoint, Flat(stream)).await?, false)
                }
                UpstreamProtocol::H2c => {
                    let s = self.handshake_h2(endpoint, Flat(stream)).await?;
                    lock(&self.inner.h2).insert(key.clone(), s.clone());
                    Conn::h2(key, s)
                }
            }),
        }
    }

    /// A pooled connection to `endpoint`, or a new one. With `tls`, the
    /// protocol is what the endpoint's ALPN picks (h2 preferred).
    pub async fn checkout(
        &self,
        endpoint: &Endpoint,
        protocol: UpstreamProtocol,
        via: &Via<'_>,
    ) -> Result<Conn, ConnectError> {
        let (tls, h1_only) = (via.tls, via.h1_only);
        let key = Self::key(endpoint, via);
        if (protocol == UpstreamProtocol::H2c || tls.is_some()) && !h1_only {
            let existing = lock(&self.inner.h2)
                .get(&key)
                .filter(|s| !s.is_closed())
                .cloned();
            if let Some(s) = existing {
                return Ok(Conn::h2(key, s));
            }
        }
        if protocol == UpstreamProtocol::Http1 || tls.is_some() {
            while let Some(c) = self.inner.pop_idle(&key) {
                if c.since.elapsed() > self.inner.cfg.idle_timeout {
                    continue;
                }
                let mut sender = match c.conn {
                    Idle::Hyper(sender) => sender,
                    Idle::Raw(stream) if h1::closed(&stream) => continue,
                    Idle::Raw(stream) if via.bodyless && !h1_only => {
                        return Ok(Conn::raw(key, stream, true))
                    }
                    // A body to stream: hyper takes the connection over
                    // (its HTTP/1.1 handshake does no I/O).
                    Idle::Raw(stream) => match self.handshake_h1(endpoint, Flat(stream)).await {
                        Ok(sender) => return Ok(Conn::h1(key, sender, true)),
                        Err(_) => continue,
                    },
                };
                // Returned at end of body; the connection task may still be
                // finishing the exchange. Closed → try the next one.
                // Not ready soon means an earlier request on it is still
                // uploading (the upstream answered early): leave it.
                if sender.is_ready()
                    || matches!(
                        tokio::time::timeout(Duration::from_millis(50), sender.ready()).await,
                        Ok(Ok(()))
                    )
                {
                    return Ok(Conn::h1(key, sender, true));
                }
                debug!(%endpoint, "pooled connection not ready within 50 ms; dropped");
            }
        }
        debug!(%endpoint, "no pooled connection; connecting");
        self.connect(endpoint, protocol, via).await
    }

    /// Send on `conn`. A stale pooled HTTP/1.1 connection of hyper's that
    /// closed before the request was written gets the request back, and it
    /// is sent once more on a fresh connection to the same endpoint (this
    /// crate's client hands such a request back in the error, `unsent` and
    /// `stale`, and the handler does the same).
    ///
    /// The request is handed to the connection now; the returned future
    /// only waits for the answer, polling hyper's in place. (An `async fn`
    /// kept the request, the connection and the retry's connect in its
    /// state, and an `async` block a second copy of hyper's future: 1.9
    /// and 1.1 KB, copied into every request's future.)
    ///
    /// `extra`: header lines this crate's client writes after the map's;
    /// the caller puts them in the map instead for any other connection.
    pub fn send<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        conn: Conn,
        req: Request<RequestBody>,
        via: &'a Via<'a>,
        extra: Option<&'a dyn ExtraHead>,
    ) -> Sending<
        'a,
        impl Future<Output = H2Sent> + Send,
        impl Future<Output = H1Sent> + Send,
        impl Future<Output = Result<Response<RawBody>, ExchangeError>> + Send + 'a,
    > {
        match conn.kind {
            ConnKind::Raw { stream, reused } => Sending::Raw {
                answer: h1::exchange(
                    stream,
                    req,
                    reused,
                    endpoint,
                    h1::Back {
                        pool: self.inner.clone(),
                        key: conn.key,
                    },
                    extra,
                ),
            },
            ConnKind::H2(mut s) => Sending::H2 {
                answer: s.send_request(req),
                endpoint,
            },
            ConnKind::H1 { mut sender, reused } => Sending::H1 {
                answer: sender.try_send_request(req),
                pool: self,
                endpoint,
                via,
                key: conn.key,
                sender,
                reused,
            },
        }
    }

    /// An HTTP/1.1 request its connection did not take: once more on a
    /// fresh connection when the pooled one was closed under us, else the
    /// error (with the request, when none of it was written).
    async fn unsent(
        &self,
        endpoint: &Endpoint,
        mut e: hyper::client::conn::TrySendError<Request<RequestBody>>,
        reused: bool,
        via: &Via<'_>,
    ) -> Result<Response<UpstreamBody>, ExchangeError> {
        match (reused, e.take_message()) {
            (true, Some(req)) => {
                debug!(%endpoint, "pooled connection closed under us; reconnecting");
                let fresh = self
                    .connect(
                        endpoint,
                        UpstreamProtocol::Http1,
                        &Via {
                            h1_only: true,
                            ..*via
                        },
                    )
                    .await
                    .map_err(|c| {
                        ExchangeError::new(endpoint, hyper_error_from(e.into_error(), c), false)
                    })?;
                // Through hyper's client before: the map has every header.
                self.send(endpoint, fresh, req, via, None).await
            }
            (reused, unsent) => {
                let mut err = ExchangeError::new(endpoint, e.into_error(), reused);
                err.unsent = unsent;
                Err(err)
            }
        }
    }

    async fn handshake_tls(
        &self,
        key: PoolKey,
        stream: TcpStream,
        tls: &Arc<UpstreamTls>,
        h1_only: bool,
    ) -> Result<Conn, ConnectError> {
        let err = |source: io::Error| ConnectError {
            endpoint: key.endpoint.to_string(),
            source,
            tls: true,
        };
        let config = if h1_only { &tls.config_h1 } else { &tls.config };
        let connector = tokio_rustls::TlsConnector::from(config.clone());
        let s = tokio::time::timeout(
            self.inner.cfg.connect_timeout,
            connector.connect(tls.server_name.clone(), Flat(stream)),
        )
        .await
        .map_err(|_| {
            err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            ))
        })?
        .map_err(err)?;
        if s.get_ref().1.alpn_protocol() == Some(b"h2") {
            let h2 = self.handshake_h2(&key.endpoint, s).await?;
            lock(&self.inner.h2).insert(key.clone(), h2.clone());
            Ok(Conn::h2(key, h2))
        } else {
            let h1 = self.handshake_h1(&key.endpoint, s).await?;
            Ok(Conn::h1(key, h1, false))
        }
    }

    /// A TCP connection to `endpoint` (DNS names resolved now), with the
    /// connect timeout.
    pub async fn connect_tcp(&self, endpoint: &Endpoint) -> Result<TcpStream, ConnectError> {
        let timeout = self.inner.cfg.connect_timeout;
        let err = |source| ConnectError {
            endpoint: endpoint.to_string(),
            source,
            tls: false,
        };
        let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
        let stream = match endpoint {
            Endpoint::Socket(a) => tokio::time::timeout(timeout, TcpStream::connect(a))
                .await
                .map_err(|_| err(timed_out()))?
                .map_err(err)?,
            Endpoint::Dns {
                host,
                port,
                public_only,
            } => {
                let addrs: Vec<_> =
                    tokio::time::timeout(timeout, tokio::net::lookup_host((&**host, *port)))
                        .await
                        .map_err(|_| err(timed_out()))?
                        .map_err(err)?
                        .filter(|a| !*public_only || !crate::compile::is_node_local(a.ip()))
                        .collect();
                let mut last = io::Error::new(
                    io::ErrorKind::NotFound,
                    "name resolved to no (permitted) address",
                );
                let mut found = None;
                for a in addrs {
                    match tokio::time::timeout(timeout, TcpStream::connect(a)).await {
                        Ok(Ok(s)) => {
                            found = Some(s);
                            break;
                        }
                        Ok(Err(e)) => last = e,
                        Err(_) => last = timed_out(),
                    }
                }
                found.ok_or_else(|| err(last))?
            }
        };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn handshake_h1<I>(&self, endpoint: &Endpoint, io: I) -> Result<H1, ConnectError>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| handshake_error(endpoint, e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    async fn handshake_h2<I>(&self, endpoint: &Endpoint, io: I) -> Result<H2, ConnectError>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| handshake_error(endpoint, e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(error = %e, "upstream h2 connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Idle HTTP/1.1 connections held, over all endpoints.
    pub fn idle_count(&self) -> usize {
        lock(&self.inner.idle).values().map(Vec::len).sum()
    }
}

/// The retry's connect failed too: report the original error (it says why
/// the pooled connection was unusable) and log the connect failure.
fn hyper_error_from(original: hyper::Error, connect: ConnectError) -> hyper::Error {
    debug!(error = %connect, "reconnect after a stale pooled connection failed");
    original
}

/// The HTTP handshake on a fresh connection failed.
fn handshake_error(endpoint: &Endpoint, e: hyper::Error) -> ConnectError {
    ConnectError {
        endpoint: endpoint.to_string(),
        source: io::Error::other(e),
        tls: false,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a pool lock cannot leave the map inconsistent
    // (every critical section is a single insert/remove), so poisoning is
    // ignored rather than spread.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    fn pop_idle(&self, key: &PoolKey) -> Option<IdleConn> {
        lock(&self.idle).get_mut(key).and_then(Vec::pop)
    }

    pub(crate) fn put_idle(&self, key: &PoolKey, conn: Idle) {
        if let Idle::Hyper(s) = &conn {
            if s.is_closed() {
                return;
            }
        }
        let mut idle = lock(&self.idle);
        let list = match idle.get_mut(key) {
            Some(l) => l,
            None => idle.entry(key.clone()).or_default(),
        };
        // A connection that began with a client's PROXY header serves that
        // client connection only: one idle is enough.
        let max = if key.source.is_some() {
            1
        } else {
            self.cfg.max_idle_per_endpoint
        };
        if list.len() < max {
            list.push(IdleConn {
                conn,
                since: Instant::now(),
            });
        }
    }

    fn sweep(&self, purge_now: bool) {
        let max = self.cfg.idle_timeout;
        let purge = self.cfg.purge_delay;
        let now = Instant::now();
        let mut idle = lock(&self.idle);
        idle.retain(|_, list| {
            list.retain(|c| !c.conn.is_closed() && now.duration_since(c.since) <= max);
            if purge_now {
                // The list is a stack (returned at the end, taken from the
                // end): its front is the least recently used. The most
                // recent one is never purged: a route used every few
                // seconds keeps its connection (until `idle_timeout`).
                let older = list.len().saturating_sub(1);
                let n = purge_count(
                    list[..older].iter().map(|c| now.duration_since(c.since)),
                    purge,
                );
                list.drain(..n);
            }
            !list.is_empty()
        });
        drop(idle);
        lock(&self.h2).retain(|_, s| !s.is_closed());
    }
}

/// How many of an endpoint's idle connections (least recently used first,
/// by how long each has been idle; the most recent one is not offered) a
/// purge closes: half of those idle at least `purge_delay`, rounded up.
fn purge_count(idle_for: impl Iterator<Item = Duration>, purge_delay: Duration) -> usize {
    idle_for.filter(|d| *d >= purge_delay).count().div_ceil(2)
}

type Answer = Result<Response<UpstreamBody>, ExchangeError>;
/// What hyper's HTTP/2 and HTTP/1.1 sends resolve to.
type H2Sent = hyper::Result<Response<Incoming>>;
type H1Sent = Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<RequestBody>>>;

pin_project_lite::pin_project! {
    /// An upstream's answer on its way: hyper's future, polled in place,
    /// and what the pool needs when it comes (see [`Upstreams::send`]).
    #[project = SendingProj]
    #[project_replace = SendingOwned]
    pub enum Sending<'a, F2, F1, FR> {
        /// This crate's HTTP/1.1 client ([`h1`]): the whole exchange.
        Raw {
            #[pin]
            answer: FR,
        },
        H2 {
            #[pin]
            answer: F2,
            endpoint: &'a Endpoint,
        },
        H1 {
            #[pin]
            answer: F1,
            pool: &'a Upstreams,
            endpoint: &'a Endpoint,
            via: &'a Via<'a>,
            key: PoolKey,
            sender: H1,
            reused: bool,
        },
        /// The connection did not take the request (rare): a boxed retry.
        Unsent {
            retry: Pin<Box<dyn Future<Output = Answer> + Send + 'a>>,
        },
        Done,
    }
}

impl<F2, F1, FR> Future for Sending<'_, F2, F1, FR>
where
    FR: Future<Output = Result<Response<h1::RawBody>, ExchangeError>>,
    F2: Future<Output = hyper::Result<Response<Incoming>>>,
    F1: Future<
        Output = Result<
            Response<Incoming>,
            hyper::client::conn::TrySendError<Request<RequestBody>>,
        >,
    >,
{
    type Output = Answer;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Answer> {
        loop {
            let next = match self.as_mut().project() {
                SendingProj::Raw { answer } => {
                    let result = std::task::ready!(answer.poll(cx));
                    self.set(Sending::Done);
                    return Poll::Ready(result.map(|r| r.map(UpstreamBody::raw)));
                }
                SendingProj::H2 { answer, endpoint } => {
                    let result = std::task::ready!(answer.poll(cx));
                    let endpoint = *endpoint;
                    self.set(Sending::Done);
                    return Poll::Ready(match result {
                        Ok(resp) => Ok(resp.map(UpstreamBody::plain)),
                        Err(e) => Err(ExchangeError::new(endpoint, e, false)),
                    });
                }
                SendingProj::H1 { answer, .. } => std::task::ready!(answer.poll(cx)),
                SendingProj::Unsent { retry } => return retry.as_mut().poll(cx),
                SendingProj::Done => panic!("Sending polled after it answered"),
            };
            let SendingOwned::H1 {
                pool,
                endpoint,
                via,
                key,
                sender,
                reused,
                ..
            } = self.as_mut().project_replace(Sending::Done)
            else {
                unreachable!("only the H1 arm falls through")
            };
            match next {
                Ok(resp) => {
                    return Poll::Ready(Ok(UpstreamBody::pooled(
                        resp,
                        pool.inner.clone(),
                        key,
                        sender,
                    )))
                }
                Err(e) => self.set(Sending::Unsent {
                    retry: Box::pin(pool.unsent(endpoint, e, reused, via)),
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::purge_count;
    use std::time::Duration;

    #[test]
    fn a_sweep_closes_half_of_the_cold_connections() {
        let s = Duration::from_secs;
        let d = s(5);
        // Least recently used first: 4 cold (idle ≥ 5 s), 2 warm.
        assert_eq!(
            purge_count([s(9), s(8), s(7), s(5), s(3), s(0)].into_iter(), d),
            2
        );
        assert_eq!(purge_count([s(6)].into_iter(), d), 1, "one cold one goes");
        assert_eq!(
            purge_count([s(4), s(1)].into_iter(), d),
            0,
            "warm ones stay"
        );
        assert_eq!(purge_count(std::iter::empty(), d), 0);
        // Repeated purges of a pool nobody uses (the sweep offers all but
        // the most recent): 171 -> 1 in 8 rounds.
        let mut n = 171usize;
        let mut rounds = 0;
        while n > 1 {
            n -= purge_count(std::iter::repeat_n(s(10), n - 1), d);
            rounds += 1;
        }
        assert_eq!((n, rounds), (1, 8));
    }
}
