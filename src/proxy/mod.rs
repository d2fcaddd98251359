//! The data path: accept connections, speak HTTP/1.1 and HTTP/2 (h2c prior
//! knowledge on the plain port) to clients, and forward through `pool`.
//!
//! Reads the table once per request; never holds it across an `.await`.

mod body;
pub(crate) mod conn;
pub mod conn_limits;
pub mod deadline;
mod handler;
pub mod headers;
pub mod idle;
pub mod limits;
pub mod proxy_protocol;

mod local;
pub(crate) mod tunnel;

pub use body::{Done, ProxyBody};

use crate::pool::Upstreams;
use crate::table::TableStore;
use crate::telemetry::access_log::AccessLog;
use conn::{ConnServer, Drain, DrainWatch};
use http::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// What every request needs, shared by all connections.
#[derive(Debug)]
pub struct Proxy {
    pub store: Arc<TableStore>,
    pub upstreams: Upstreams,
    pub access_log: Option<Arc<AccessLog>>,
    /// Share of requests written to the access log (1.0: all).
    pub log_sample: f64,
    pub health: crate::table::HealthPolicy,
    pub retry_budget: RetryBudget,
    pub limits: limits::Limiters,
    /// PROXY protocol: the load balancers' ranges, when it is on.
    pub proxy_protocol: Option<Arc<[crate::model::ipnet::IpNet]>>,
    /// Connection caps (process-wide and per source address).
    pub conn_limits: conn_limits::ConnLimits,
    /// Send a PROXY v2 header to passthrough backends.
    pub proxy_to_passthrough: bool,
    /// Begin upstream connections with a PROXY v2 header (client and
    /// listener address); such connections serve only their client
    /// connection.
    pub proxy_to_upstreams: bool,
    /// Longest client silence mid-body (0: none); then 408.
    pub client_timeout: Duration,
}

impl Proxy {
    /// Admit a new client connection under the caps; `None`: close it.
    pub(crate) fn admit(
        &self,
        listener: &'static crate::telemetry::metrics::ListenerStats,
        peer: SocketAddr,
    ) -> Option<conn_limits::ConnSlot> {
        // A trusted balancer carries every client behind it: not capped as
        // one source.
        let balancer = self
            .proxy_protocol
            .as_ref()
            .is_some_and(|t| proxy_protocol::trusted(peer.ip(), t));
        self.conn_limits.admit(listener, peer.ip(), !balancer)
    }

    /// Read the PROXY header when `peer` is a trusted balancer: the client's
    /// real address and the bytes after the header. `Ok(None)`: no header
    /// expected from this peer.
    pub(crate) async fn proxy_header(
        &self,
        stream: &mut tokio::net::TcpStream,
        peer: SocketAddr,
        timeout: Duration,
    ) -> Result<Option<(SocketAddr, Vec<u8>)>, proxy_protocol::Error> {
        let Some(trusted) = &self.proxy_protocol else {
            return Ok(None);
        };
        if !proxy_protocol::trusted(peer.ip(), trusted) {
            return Ok(None);
        }
        match proxy_protocol::read(stream, timeout).await {
            Ok((proxy_protocol::Header::Proxied { source, .. }, rest)) => Ok(Some((source, rest))),
            Ok((proxy_protocol::Header::Local, rest)) => Ok(Some((peer, rest))),
            Err(e) => {
                crate::telemetry::metrics::PROXY_HEADER_REFUSED
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                debug!(%peer, error = %e, "PROXY header refused");
                Err(e)
            }
        }
    }
}

/// Requests for hosts no route serves (process-wide, for /metrics).
pub static UNROUTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Retries may add at most a tenth to the load: every request deposits one
/// token, every retry to another endpoint costs ten; a small reserve lets a
/// quiet router retry too. An outage cannot be amplified by retries.
#[derive(Debug)]
pub struct RetryBudget {
    tokens: std::sync::atomic::AtomicI64,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            tokens: std::sync::atomic::AtomicI64::new(Self::CAP),
        }
    }
}

impl RetryBudget {
    const CAP: i64 = 200;
    const COST: i64 = 10;

    pub fn deposit(&self) {
        use std::sync::atomic::Ordering;
        if self.tokens.load(Ordering::Relaxed) < Self::CAP {
            self.tokens.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Take the cost of one retry; false when the budget is spent.
    pub fn withdraw(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                (t >= Self::COST).then_some(t - Self::COST)
            })
            .is_ok()
    }
}

/// One client connection, rendered once so requests do not format again.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub tls: bool,
    pub ip_value: HeaderValue,
    pub port_value: HeaderValue,
    /// The verified client certificate's subject (mutual TLS). Boxed: rare,
    /// and it keeps `ConnInfo` within 256 bytes, which glibc copies (when
    /// it is moved into its `Arc`) in one straight run: past 256, its loop
    /// took 35 more instructions per connection.
    pub client_dn: Option<Box<HeaderValue>>,
    /// Negotiated TLS version (`TLSv1.3`, `TLSv1.2`) on terminated TLS.
    pub tls_version: Option<&'static str>,
    /// Requests seen on this connection (the first one opens it, for
    /// per-client connection rates).
    pub requests: std::sync::atomic::AtomicU32,
    /// Requests started and cancelled by the client on this connection.
    pub cancels: Cancels,
    /// Requests in progress (service called, response body not done).
    pub busy: std::sync::atomic::AtomicU32,
    /// Bytes arrived while a request was in progress.
    pub read_while_busy: std::sync::atomic::AtomicBool,
    /// The connection was upgraded (WebSocket): a tunnel now, bound by the
    /// route's tunnel timeout, not by the client deadlines.
    pub upgraded: std::sync::atomic::AtomicBool,
    /// The route timeout's timer, lent to one request at a time.
    pub route_timer: deadline::TimerSlot,
}

/// A client that cancels most of the requests it starts — HTTP/2 rapid
/// reset (CVE-2023-44487): HEADERS then RST_STREAM, over and over, each
/// one costing an upstream request — is closed once it has cancelled
/// `Cancels::LIMIT` requests and more than half of what it asked. Browsers
/// cancel a few streams when a page changes; nothing legitimate cancels
/// hundreds. (HAProxy's equivalent is `tune.h2.fe.glitches-threshold`.)
#[derive(Debug, Default)]
pub struct Cancels {
    started: std::sync::atomic::AtomicU32,
    cancelled: std::sync::atomic::AtomicU32,
    closing: std::sync::atomic::AtomicBool,
    /// The connection's task, woken when `closing` is set. (A `Notify`
    /// took its waiter lock on every poll of the connection's task: ~340
    /// instructions per request.)
    close: futures::task::AtomicWaker,
}

/// Connections closed for cancelling too many requests.
pub static CLOSED_FOR_CANCELS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Cancels {
    pub const LIMIT: u32 = 100;

    fn start(&self) {
        self.started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn cancelled(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let c = self.cancelled.fetch_add(1, Relaxed) + 1;
        if c >= Self::LIMIT
            && c > self.started.load(Relaxed) / 2
            && !self.closing.swap(true, Relaxed)
        {
            CLOSED_FOR_CANCELS.fetch_add(1, Relaxed);
            self.close.wake();
        }
    }

    /// Resolves once the connection is to be closed for its cancels.
    fn closing(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            use std::sync::atomic::Ordering::Relaxed;
            // Registered before the flag is read: a `cancelled` between
            // the two wakes the waker just registered.
            self.close.register(cx.waker());
            if self.closing.load(Relaxed) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
    }
}

/// One request in progress on its connection: from the service call until
/// the response body is done or dropped (it moves into the body). Dropped
/// before a response exists, the request was cancelled by the client.
#[derive(Debug)]
pub struct RequestGuard {
    info: Arc<ConnInfo>,
    answered: bool,
}

impl RequestGuard {
    fn new(info: Arc<ConnInfo>) -> Self {
        info.cancels.start();
        info.busy.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        RequestGuard {
            info,
            answered: false,
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if !self.answered {
            self.info.cancels.cancelled();
        }
        self.info
            .busy
            .fetch_sub(1, std::sync::atomic::Ordering::Release);
    }
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, local: SocketAddr, tls: bool) -> Self {
        let ip = peer.ip().to_canonical();
        ConnInfo {
            peer: SocketAddr::new(ip, peer.port()),
            local,
            tls,
            tls_version: None,
            ip_value: HeaderValue::try_from(ip.to_string())
                .unwrap_or(HeaderValue::from_static("unknown")),
            port_value: HeaderValue::from(local.port()),
            client_dn: None,
            requests: std::sync::atomic::AtomicU32::new(0),
            cancels: Cancels::default(),
            busy: std::sync::atomic::AtomicU32::new(0),
            read_while_busy: std::sync::atomic::AtomicBool::new(false),
            upgraded: std::sync::atomic::AtomicBool::new(false),
            route_timer: deadline::TimerSlot::default(),
        }
    }
}

/// Client-side protocol settings.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Time allowed to send request headers.
    pub header_timeout: Duration,
    /// Idle time allowed between requests.
    pub keep_alive_timeout: Duration,
    /// How long a client may leave a response unread (writes stalled).
    pub send_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    pub drain: Duration,
    /// Request line + header bytes allowed (larger: 414 / 431).
    pub max_header_bytes: usize,
}

/// How long an idle HTTP/1 connection keeps hyper's buffers before it
/// parks (see `idle`): long enough that a client's next request on a busy
/// connection never pays for new ones, short enough that thousands of idle
/// keep-alive connections cost a few KiB each.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// The connection server both listeners use.
pub(crate) fn builder(settings: &ServerSettings) -> ConnServer {
    let mut h1 = hyper::server::conn::http1::Builder::new();
    h1.timer(TokioTimer::new())
        // The header and keep-alive deadlines are `idle::ClientIo`'s.
        .header_read_timeout(None)
        .max_buf_size(settings.max_header_bytes.max(8192))
        // A client's FIN after its request is not a cancel: it gets its
        // answer, as from HAProxy without `option abortonclose` (hyper's
        // default dropped the request, and the client got nothing). hyper
        // also stops reading the socket while a request is in flight,
        // which cost a new 8 KiB read buffer per request (the old one is
        // still shared with the request's header values).
        .half_close(true)
        .keep_alive(true);
    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(250)
        .max_header_list_size(settings.max_header_bytes.min(u32::MAX as usize) as u32)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    ConnServer {
        h1,
        h2,
        deadlines: idle::Deadlines {
            header: settings.header_timeout,
            keep_alive: settings.keep_alive_timeout,
            send: settings.send_timeout,
            park: PARK_AFTER,
        },
    }
}

/// Serve one client connection (plain or already-decrypted TLS).
pub(crate) fn serve_conn<I>(
    server: &Arc<ConnServer>,
    drain: DrainWatch,
    io: I,
    info: Arc<ConnInfo>,
    proxy: Arc<Proxy>,
    open: conn_limits::ConnSlot,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = info.peer;
    let svc = service(proxy, info.clone());
    // Spans at debug level: free (one callsite check) unless RUST_LOG asks
    // for them; then every log line of a request names its connection.
    let span = tracing::debug_span!("conn", %peer, tls = info.tls);
    let server = server.clone();
    use tracing::Instrument as _;
    // Boxed before it is spawned: tokio moves a task's future by value a
    // few times on spawn and writes its whole stage again when it ends; a
    // pointer instead of the connection's 1.3 KB state machine makes those
    // copies a few bytes each (callgrind, h1-close: 45,298 -> 44,709
    // instructions per connection).
    let conn = async move {
        tokio::select! {
            _ = conn::drive(&server, io, info.clone(), svc, drain) => {}
            _ = info.cancels.closing() => {
                warn!(%peer, "closing a client connection that cancels most of its requests (HTTP/2 rapid reset?)");
            }
        }
        drop(open);
    };
    tokio::spawn(Box::pin(conn.instrument(span)));
}

/// The per-connection service: every request through `handler::handle`, in
/// a request span.
fn service(
    proxy: Arc<Proxy>,
    info: Arc<ConnInfo>,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = hyper::Response<ProxyBody>,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<hyper::Response<ProxyBody>, Infallible>>
                 + Send
                 + 'static,
> + Clone
       + Send
       + 'static {
    service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let mut guard = RequestGuard::new(info.clone());
        let span = tracing::debug_span!(
            "request",
            method = %req.method(),
            path = req.uri().path(),
            id = tracing::field::Empty
        );
        use futures::future::Either;
        use tracing::Instrument as _;
        match span.in_scope(|| handler::handle(&proxy, &guard.info, req)) {
            // Answered without an upstream: no future to keep.
            handler::Handled::Ready(mut resp) => {
                guard.answered = true;
                resp.body_mut().hold(guard);
                Either::Left(std::future::ready(Ok::<_, Infallible>(resp)))
            }
            // Not boxed: hyper keeps an HTTP/1 connection's service future
            // in a box of its own, reused by every request on the
            // connection (warm), and a parked connection drops it with the
            // rest of hyper's state. A box here was a fresh 2.5 KB
            // allocation per request, written cold. (HTTP/2 streams get
            // theirs boxed in `conn::drive`: hyper spawns each as a task.)
            handler::Handled::Forward(mut exchange) => {
                let proxy = proxy.clone();
                Either::Right(
                    async move {
                        let mut resp = exchange.run(&proxy, &guard.info).await;
                        guard.answered = true;
                        resp.body_mut().hold(guard);
                        Ok::<_, Infallible>(resp)
                    }
                    .instrument(span),
                )
            }
        }
    })
}

/// Serve one client connection to its end on the current task, with the
/// listeners' protocol settings (fuzzing and embedding; no listener, no
/// drain).
pub async fn serve_one<I>(io: I, peer: SocketAddr, proxy: Arc<Proxy>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let settings = ServerSettings {
        header_timeout: Duration::from_secs(1),
        keep_alive_timeout: Duration::from_secs(1),
        send_timeout: Duration::from_secs(1),
        drain: Duration::ZERO,
        max_header_bytes: 32 * 1024,
    };
    let info = Arc::new(ConnInfo::new(peer, peer, false));
    let server = builder(&settings);
    let svc = service(proxy, info.clone());
    let drain = Drain::new();
    conn::drive(&server, io, info, svc, drain.watcher()).await;
}

/// Serve plain HTTP (h1 and h2c) on `listener` until `shutdown` turns true,
/// then drain in-flight requests for up to `settings.drain`.
pub async fn serve_http(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    settings: ServerSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let builder = Arc::new(builder(&settings));
    let graceful = Drain::new();
    let local = listener.local_addr().ok();
    let mut last_accept = None;
    let set_nodelay = prepare_listener(&listener);
    while let Some((mut stream, peer)) = accept(&listener, set_nodelay, &mut shutdown).await {
        last_accept = Some(std::time::Instant::now());
        let Some(open) = proxy.admit(&crate::telemetry::metrics::HTTP, peer) else {
            debug!(%peer, "connection refused: over the connection caps");
            continue;
        };
        let local = local.unwrap_or(peer);
        if proxy.proxy_protocol.is_none() {
            let info = Arc::new(ConnInfo::new(peer, local, false));
            let io = crate::tls::PrefixedIo::new(Vec::new(), crate::io::Flat(stream));
            serve_conn(&builder, graceful.watcher(), io, info, proxy.clone(), open);
            continue;
        }
        // The header is read off the accept loop, bounded by the header
        // timeout.
        let (proxy, builder, watcher) = (proxy.clone(), builder.clone(), graceful.watcher());
        let timeout = settings.header_timeout;
        tokio::spawn(async move {
            let Ok(found) = proxy.proxy_header(&mut stream, peer, timeout).await else {
                return;
            };
            let (client, rest) = found.unwrap_or((peer, Vec::new()));
            let info = Arc::new(ConnInfo::new(client, local, false));
            let io = crate::tls::PrefixedIo::new(rest, crate::io::Flat(stream));
            serve_conn(&builder, watcher, io, info, proxy, open);
        });
    }
    drop(listener);
    drain(graceful, local, settings.drain, last_accept).await;
}

/// Set up a public listener's sockets before the first accept; `true`:
/// `accept` must set TCP_NODELAY on every connection itself.
///
/// Linux copies a listening socket's options into each connection it
/// accepts, so two options are set once here:
/// - TCP_NODELAY, which spares one `setsockopt` per connection (9 system
///   calls per plain `Connection: close` request instead of 10, `strace -c`);
///   where it cannot be set on the listener, or on other kernels, `accept`
///   sets it on every connection;
/// - TCP_QUICKACK off (set after `listen`, which resets it, as HAProxy's
///   default `option tcp-smart-accept` does): the kernel would acknowledge a
///   new connection's first request at once in a packet of its own; with it
///   off, that ACK rides on the response (tcpdump: 9 packets per
///   `Connection: close` exchange, handshake and close included, instead of
///   10; the kernel still sends it after its delayed-ACK timeout, tens of
///   ms, when the answer takes longer). Best effort: a refusal changes no
///   behaviour.
#[cfg(target_os = "linux")]
pub(crate) fn prepare_listener(listener: &TcpListener) -> bool {
    if let Err(e) = rustix::net::sockopt::set_tcp_quickack(listener, false) {
        debug!(error = %e, "TCP_QUICKACK off on the listener refused");
    }
    rustix::net::sockopt::set_tcp_nodelay(listener, true).is_err()
}

/// Other kernels: nodelay per connection (see the Linux version).
#[cfg(not(target_os = "linux"))]
pub(crate) fn prepare_listener(_listener: &TcpListener) -> bool {
    true
}

/// The next connection (nodelay set, on the listener or here: see
/// `prepare_listener`), or `None` once `shutdown` turns true.
/// Accept errors (EMFILE and friends) back off instead of spinning.
pub(crate) async fn accept(
    listener: &TcpListener,
    set_nodelay: bool,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((s, peer)) => {
                    if set_nodelay {
                        let _ = s.set_nodelay(true);
                    }
                    return Some((s, peer));
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            _ = crate::app_signal::stopped(shutdown) => return None,
        }
    }
}

/// How long a closed listener's last connections get to send their first
/// request before idle connections are closed.
const LINGER: Duration = Duration::from_millis(1000);

/// Wait for in-flight requests, up to `deadline`.
pub(crate) async fn drain(
    graceful: Drain,
    local: Option<SocketAddr>,
    deadline: Duration,
    last_accept: Option<std::time::Instant>,
) {
    info!(addr = ?local, "listener closed; draining");
    // Connections accepted just before the listener closed may not have
    // sent their first request yet; hyper's graceful shutdown closes such
    // "idle" connections at once, and the client's request is lost. Let
    // them be served first (measured: 2 of 3567 requests failed across a
    // rolling restart without this pause, 0 with it).
    let linger = last_accept
        .map_or(Duration::ZERO, |t| LINGER.saturating_sub(t.elapsed()))
        .min(deadline);
    tokio::time::sleep(linger).await;
    if tokio::time::timeout(deadline.saturating_sub(linger), graceful.shutdown())
        .await
        .is_err()
    {
        warn!(addr = ?local, "drain deadline passed; closing remaining connections");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The listener's TCP_NODELAY reaches every accepted connection, with
    /// no per-connection `setsockopt` (an accepted socket without it would
    /// hold small writes for the client's delayed ACK: 40 ms stalls), and
    /// so does TCP_QUICKACK off.
    #[tokio::test]
    async fn accepted_connections_inherit_listener_options() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let per_connection = prepare_listener(&listener);
        assert_eq!(per_connection, !cfg!(target_os = "linux"));
        let addr = listener.local_addr().unwrap();
        let (_tx, mut rx) = watch::channel(false);
        let client = tokio::net::TcpStream::connect(addr);
        let (accepted, client) = tokio::join!(accept(&listener, per_connection, &mut rx), client);
        let (stream, peer) = accepted.expect("accepted");
        assert_eq!(peer, client.unwrap().local_addr().unwrap());
        assert!(
            stream.nodelay().unwrap(),
            "accepted socket without TCP_NODELAY"
        );
        // Quick ACKs off came with it: the first request's ACK waits for
        // the response.
        #[cfg(target_os = "linux")]
        assert!(!rustix::net::sockopt::tcp_quickack(&stream).unwrap());

        // Without the listener option, the flag makes accept set it.
        let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = plain.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr);
        let (accepted, _client) = tokio::join!(accept(&plain, true, &mut rx), client);
        let stream = accepted.unwrap().0;
        assert!(stream.nodelay().unwrap());
        #[cfg(target_os = "linux")]
        assert!(rustix::net::sockopt::tcp_quickack(&stream).unwrap());
    }
}
