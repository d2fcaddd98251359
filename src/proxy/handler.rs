//! One HTTP request: find the route, check the termination policy, pick an
//! endpoint, forward, retry the next endpoint on connect failure, map errors
//! to 502/503/504, tunnel upgrades.

use super::body::ProxyBody;
use super::headers::{set_forwarded, strip_hop_by_hop, strip_hop_by_hop_named, ClientSide, Names};
use super::local;
use super::{ConnInfo, Proxy};
use crate::balance::{self, Pick};
use crate::model::admission::{InsecurePolicy, Termination};
use crate::pool::RequestBody;
use crate::table::{Endpoint, ForwardedPolicy, RouteEntry, UpstreamProtocol};
use crate::telemetry::access_log::LogLine;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::Body as _;
use hyper::body::Incoming;
use std::sync::Arc;
use std::time::Instant;
use tracing::{debug, warn};

static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
static X_SSL_CLIENT_DN: http::HeaderName = http::HeaderName::from_static("x-ssl-client-dn");
static X_SSL_CLIENT_VERIFY: http::HeaderName = http::HeaderName::from_static("x-ssl-client-verify");

/// How long a request waits for an endpoint below its connection limit.
const QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Longest request target accepted (414 beyond).
const MAX_URI_BYTES: usize = 16 * 1024;

/// At most this many endpoints are tried for one request.
const MAX_ATTEMPTS: usize = 3;

/// What [`handle`] decided without waiting: an answer now, or an exchange
/// with an upstream still to run.
pub enum Handled {
    Ready(Response<ProxyBody>),
    Forward(Exchange),
}

/// Serve one request, up to the first wait. Never fails: every problem
/// becomes a response.
///
/// Everything that needs no upstream (the checks, the route, the policy,
/// the rewritten request head) happens here, in a plain function: only
/// [`Exchange::run`] is a future, and it holds only what crosses an await.
/// (A future's state is copied whole when it is boxed and moved; the
/// request, its parts and the rewritten request all held in one `async fn`
/// made the per-request future 5.5 KB.)
pub fn handle(proxy: &Proxy, conn: &ConnInfo, mut req: Request<Incoming>) -> Handled {
    let start = Instant::now();
    // Like nginx's large_client_header_buffers: a request target beyond
    // 16 KiB is refused (heads beyond max_header_bytes get 431 from hyper).
    if req.uri().path_and_query().map_or(0, |p| p.as_str().len()) > MAX_URI_BYTES {
        return Handled::Ready(local::close(
            StatusCode::URI_TOO_LONG,
            "request target too long",
        ));
    }
    // Room, once, for the request id and a `host` an HTTP/2 request lacks:
    // growing the map re-hashes every entry. (On a kept-alive HTTP/1.1
    // connection hyper parses into the last response's map, emptied,
    // which has room for these: 8 here grew it on every request, 650
    // instructions. `prepare` makes room for what else it adds.)
    let _ = req.headers_mut().try_reserve(2);
    // Every request carries an id end to end: the client's, or a new one.
    // (One hash of the name: the entry, not a lookup and then an insert.)
    if let http::header::Entry::Vacant(v) = req.headers_mut().entry(&X_REQUEST_ID) {
        v.insert(request_id());
    }
    if tracing::enabled!(tracing::Level::DEBUG) {
        if let Some(id) = req
            .headers()
            .get(&X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
        {
            tracing::Span::current().record("id", id);
        }
    }
    // The Host fields, looked up once for the value and for a second one.
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let (host_field, second_host) = (hosts.next(), hosts.next().is_some());
    let host_value = match request_host(&req, host_field) {
        Some(h) => h,
        None => {
            return Handled::Ready(local::close(StatusCode::BAD_REQUEST, "missing Host header"))
        }
    };
    // Two Host fields are two answers to "which site?": refuse rather than
    // pick one the upstream may read differently (RFC 9112 §3.2).
    if second_host {
        return Handled::Ready(local::close(
            StatusCode::BAD_REQUEST,
            "more than one Host header",
        ));
    }
    let host = host_value.to_str().unwrap_or("");
    let route = proxy.store.load().lookup(host, req.uri().path()).cloned();
    let counted = route.as_ref().map(|r| r.stats.clone());
    if let Some(s) = &counted {
        s.active.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let log = proxy
        .access_log
        .as_ref()
        .filter(|_| proxy.log_sample >= 1.0 || sampled(proxy.log_sample))
        .map(|sink| {
            let mut line = LogLine::start(conn, &req, host);
            line.route = route.clone();
            Box::new((line, sink.clone()))
        });
    let mut books = Books {
        start,
        counted,
        log,
        trace: Default::default(),
    };
    let Some(route) = route else {
        let resp = local::text(StatusCode::SERVICE_UNAVAILABLE, "no route for this host");
        return Handled::Ready(books.finish(resp, None));
    };
    match admit(proxy, conn, &req, &route, host) {
        Ok(slot) => Handled::Forward(prepare(proxy, conn, req, route, host_value, slot, books)),
        Err(refused) => Handled::Ready(books.finish(*refused, None)),
    }
}

/// A request's bookkeeping: its route's counters and its access-log line,
/// settled when the response's body ends.
struct Books {
    start: Instant,
    counted: Option<Arc<crate::table::RouteCounters>>,
    log: Option<Box<(LogLine, Arc<crate::telemetry::access_log::AccessLog>)>>,
    trace: crate::telemetry::access_log::Trace,
}

impl Books {
    fn finish(
        &mut self,
        mut resp: Response<ProxyBody>,
        endpoint: Option<Endpoint>,
    ) -> Response<ProxyBody> {
        let status = resp.status();
        match &self.counted {
            Some(stats) => {
                stats.count(status.as_u16());
                if let Some(s) = self.trace.sticky {
                    stats.sticky(s);
                }
            }
            None => {
                super::UNROUTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        // Bytes, total time and the log line wait for the end of the body.
        if self.counted.is_some() || self.log.is_some() {
            let mut done = super::Done::new(self.counted.take(), self.start, status.as_u16());
            done.log = self.log.take().map(|mut entry| {
                entry.0.finish(status, endpoint, &self.trace);
                entry
            });
            resp.body_mut().finish_with(done);
        }
        resp
    }
}

fn request_host(req: &Request<Incoming>, host_field: Option<&HeaderValue>) -> Option<HeaderValue> {
    // h2 (and absolute-form h1) carry the authority in the URI.
    if let Some(a) = req.uri().authority() {
        return HeaderValue::from_str(a.as_str()).ok();
    }
    host_field.filter(|h| !h.is_empty()).cloned()
}

/// Whether to log this request at `rate` (0..1).
fn sampled(rate: f64) -> bool {
    ((balance::random_u64() >> 11) as f64 / ((1u64 << 53) as f64)) < rate
}

/// A request on its way to an upstream: the rewritten request and what the
/// upstream exchange needs to know about it.
pub struct Exchange {
    books: Books,
    route: Arc<RouteEntry>,
    host_value: HeaderValue,
    /// The request to send (taken when it is sent; a retry puts one back).
    up: Request<RequestBody>,
    /// Its target, set once the upstream's protocol is known.
    pq: Option<http::uri::PathAndQuery>,
    slot: Option<super::limits::Slot>,
    sticky: Option<Pick>,
    had_cookie: bool,
    upgrade: bool,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    /// The forwarded headers are still to be added to `up` (it carried
    /// none; see `prepare`).
    forwarded_later: bool,
    /// The client speaks HTTP/1: its requests follow each other on one
    /// task, so the route timeout can use the connection's kept timer.
    /// (An HTTP/2 stream's task would be left registered in it, holding
    /// the finished task's allocation until the timer next fired.)
    keeps_timer: bool,
}

/// The route's policy for this request: termination, allowlist, rate
/// limits. `Ok` carries the rate-limit slot the request holds; `Err` is the
/// answer when the route refuses it (boxed: refusals are rare, and a
/// response is large).
fn admit(
    proxy: &Proxy,
    conn: &ConnInfo,
    req: &Request<Incoming>,
    route: &RouteEntry,
    host: &str,
) -> Result<Option<super::limits::Slot>, Box<Response<ProxyBody>>> {
    if route.termination.is_some() && !conn.tls {
        match route.insecure {
            InsecurePolicy::Allow => {}
            InsecurePolicy::Redirect => {
                let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
                return Err(Box::new(local::redirect_https(host, pq)));
            }
            InsecurePolicy::None => {
                return Err(Box::new(local::text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "this route is only served over https",
                )))
            }
        }
    }
    if conn.tls
        && !matches!(
            route.termination,
            Some(Termination::Edge | Termination::Reencrypt)
        )
    {
        // Plain routes are not served on :443, and a passthrough route
        // reached without its SNI has no backend to terminate for it.
        return Err(Box::new(local::text(
            StatusCode::SERVICE_UNAVAILABLE,
            "this route is not served over https",
        )));
    }
    if route.backends.is_empty() {
        return Err(Box::new(local::text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no ready endpoints for this route",
        )));
    }

    if let Some(allow) = &route.settings.allowlist {
        if !allow.iter().any(|n| n.contains(conn.peer.ip())) {
            return Err(Box::new(local::text(
                StatusCode::FORBIDDEN,
                "your address may not use this route",
            )));
        }
    }
    let new_conn = conn
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        == 0;
    Ok(match &route.settings.rate_limits {
        None => None,
        Some(l) => {
            match proxy
                .limits
                .admit(&route.namespace, &route.name, l, conn.peer.ip(), new_conn)
            {
                Ok(s) => Some(s),
                Err(why) => {
                    debug!(route = %route.name, namespace = %route.namespace, client = %conn.peer.ip(), ?why, "rate limited");
                    return Err(Box::new(local::text(
                        StatusCode::TOO_MANY_REQUESTS,
                        "too many requests from your address",
                    )));
                }
            }
        }
    })
}

/// The request head rewritten for the upstream, and what the exchange
/// needs to know about it.
fn prepare(
    proxy: &Proxy,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    route: Arc<RouteEntry>,
    host_value: HeaderValue,
    slot: Option<super::limits::Slot>,
    books: Books,
) -> Exchange {
    let host = host_value.to_str().unwrap_or("");
    // A sticky cookie naming a live endpoint of this route wins the first
    // pick; it is not passed on to the application (HAProxy's `indirect`).
    let had_cookie = route
        .settings
        .cookie
        .as_ref()
        .is_some_and(|c| cookie_value(req.headers(), &c.name).is_some());
    let sticky = route.settings.cookie.as_ref().and_then(|c| {
        let value = cookie_value(req.headers(), &c.name)?;
        balance::sticky(&route.backends, value)
    });
    if let Some(c) = &route.settings.cookie {
        remove_cookie(req.headers_mut(), &c.name);
    }

    // One pass over the names for everything below that depends on which
    // are present: hop-by-hop headers, cookies, client-certificate and
    // forwarded names. (Three passes and two hashed lookups before.) Names
    // the Connection header lists are removed after it: a forwarded or
    // client-certificate header among them is then handled as if present,
    // which puts the same headers in the map instead of the head.
    let names = Names::of(req.headers());
    let h1 = req.version() <= http::Version::HTTP_11;
    let wants_upgrade = h1 && names.upgrade();
    let client_upgrade = wants_upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let headers = &mut parts.headers;
    let upgrade = strip_hop_by_hop_named(headers, &names) && wants_upgrade;
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    // `host_value` is the URI's authority when there is one (HTTP/2,
    // absolute-form); otherwise it is the one Host field, still in the map
    // unless the Connection header named it.
    if parts.uri.authority().is_some() || names.connection() {
        headers.insert(header::HOST, host_value.clone());
    }
    // HTTP/2 clients send one cookie field per pair; HTTP/1.1 wants one
    // header (RFC 9113 §8.2.3).
    if names.cookie && headers.get_all(header::COOKIE).iter().nth(1).is_some() {
        let joined: Vec<&str> = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if let Ok(v) = HeaderValue::from_str(&joined.join("; ")) {
            headers.insert(header::COOKIE, v);
        }
    }
    // A request that carries no forwarded header gets the same ones under
    // every policy but `Never`; they are added when its connection is
    // known: written straight into the head by this crate's HTTP/1.1
    // client, put in the map for any other (`Exchange::forward`).
    // One that carries one gets them here, as its policy says.
    let policy = route.settings.forwarded;
    let forwarded_later = policy != ForwardedPolicy::Never && !names.forwarded;
    let forwarded_now = policy != ForwardedPolicy::Never && names.forwarded;
    let _ = headers.try_reserve(if conn.tls { 2 } else { 0 } + if forwarded_now { 5 } else { 0 });
    // Client-certificate facts come from our handshake only, never from the
    // client's own headers.
    // (Looked up only when a name of that shape is present: two hashed
    // removals per request otherwise.)
    if names.ssl_client {
        headers.remove(&X_SSL_CLIENT_DN);
        headers.remove(&X_SSL_CLIENT_VERIFY);
    }
    if conn.tls {
        match &conn.client_dn {
            Some(dn) => {
                headers.insert(X_SSL_CLIENT_DN.clone(), HeaderValue::clone(dn));
                headers.insert(
                    X_SSL_CLIENT_VERIFY.clone(),
                    HeaderValue::from_static("SUCCESS"),
                );
            }
            None => {
                headers.insert(
                    X_SSL_CLIENT_VERIFY.clone(),
                    HeaderValue::from_static("NONE"),
                );
            }
        }
    }
    if forwarded_now {
        set_forwarded(headers, policy, &client_side(conn, host, &host_value));
    }

    let pq = match &route.settings.rewrite_target {
        Some(target) => rewrite(&route.path, target, &parts.uri),
        None => parts.uri.path_and_query().cloned(),
    };
    let body = if body.is_end_stream() {
        RequestBody::Client(body)
    } else {
        RequestBody::Counted(
            body,
            route.stats.clone(),
            crate::pool::StallTimer::new(proxy.client_timeout),
        )
    };
    Exchange {
        books,
        up: Request::from_parts(parts, body),
        pq,
        slot,
        sticky,
        had_cookie,
        upgrade,
        client_upgrade,
        route,
        host_value,
        forwarded_later,
        keeps_timer: h1,
    }
}

/// The client's side of `conn`, for the forwarded headers.
fn client_side<'a>(
    conn: &'a ConnInfo,
    host: &'a str,
    host_value: &'a HeaderValue,
) -> ClientSide<'a> {
    ClientSide {
        ip: conn.peer.ip(),
        ip_value: &conn.ip_value,
        port_value: &conn.port_value,
        proto: if conn.tls { "https" } else { "http" },
        host,
        host_value,
    }
}

impl Exchange {
    /// Run the exchange: connect (retrying other endpoints), send (replaying
    /// where that is safe), and answer with the upstream's response or the
    /// error that stands for it.
    pub async fn run(&mut self, proxy: &Proxy, conn: &ConnInfo) -> Response<ProxyBody> {
        let (resp, endpoint) = self.forward(proxy, conn).await;
        self.books.finish(resp, endpoint)
    }

    async fn forward(
        &mut self,
        proxy: &Proxy,
        conn: &ConnInfo,
    ) -> (Response<ProxyBody>, Option<Endpoint>) {
        let route = &*self.route;
        let host = self.host_value.to_str().unwrap_or("");
        let upgrade = self.upgrade;
        let sticky = self.sticky;
        let trace = &mut self.books.trace;
        // Connect first: a refused or timed-out connect moves to the next
        // endpoint while the request is still whole in our hands.
        let mut tried: Vec<Pick> = Vec::new();
        let endpoints: usize = route
            .backends
            .groups
            .iter()
            .map(|g| g.endpoints.len())
            .sum();
        let connect_started = std::time::Instant::now();
        let via = crate::pool::Via {
            tls: route.upstream_tls.as_ref(),
            h1_only: upgrade,
            proxy_header: proxy.proxy_to_upstreams.then_some((conn.peer, conn.local)),
            bodyless: !upgrade
                && self.up.body().is_end_stream()
                && self.up.method() != http::Method::CONNECT
                && !self.up.headers().contains_key(header::TRANSFER_ENCODING),
        };
        let cap = route.settings.pod_max_conn;
        // When every endpoint is at its connection limit: how long a request
        // may wait in line (set on its first wait, kept across re-picks).
        let mut queue_until: Option<tokio::time::Instant> = None;
        let queue_deadline =
            || tokio::time::Instant::now() + QUEUE_WAIT.min(route.settings.timeout);
        let at_limit = || {
            local::text(
                StatusCode::SERVICE_UNAVAILABLE,
                "every endpoint is at its connection limit",
            )
        };
        let (endpoint, protocol, upstream, chosen, pending) = loop {
            let mut next = match sticky {
                Some(s)
                    if tried.is_empty()
                        && cap.is_none_or(|c| s.member(&route.backends).live.active() < c) =>
                {
                    Some(s)
                }
                _ => balance::pick_capped(&route.backends, conn.peer.ip(), &tried, cap),
            };
            if next.is_none()
                && cap.is_some()
                && balance::pick(&route.backends, conn.peer.ip(), &tried).is_some()
            {
                // Every endpoint is at its connection limit: wait a moment in
                // line, as HAProxy's queue does, then give up with 503.
                let until = *queue_until.get_or_insert_with(queue_deadline);
                while next.is_none() && tokio::time::Instant::now() < until {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    next = balance::pick_capped(&route.backends, conn.peer.ip(), &tried, cap);
                }
                if next.is_none() {
                    return (at_limit(), None);
                }
            }
            let Some(pick) = next else {
                return (
                    local::text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no endpoint accepted the connection",
                    ),
                    None,
                );
            };
            // Count the request on its endpoint now, before connecting, so a
            // burst cannot pass a pod-concurrent-connections cap during the
            // connect; dropped again if the connect fails. The cap is checked
            // again in the same atomic step: another thread may have taken
            // the last slot since the pick looked.
            let Some(pending) = pick.member(&route.backends).live.try_begin(cap) else {
                // Lost the race for the last slot: in line, as above, under
                // the same deadline.
                let until = *queue_until.get_or_insert_with(queue_deadline);
                if tokio::time::Instant::now() >= until {
                    return (at_limit(), None);
                }
                tokio::task::yield_now().await;
                continue;
            };
            let (group, endpoint) = pick.resolve(&route.backends);
            let protocol = protocol_for(group, upgrade);
            match proxy.upstreams.checkout(endpoint, protocol, &via).await {
                Ok(upstream) => {
                    if !upstream.is_reused() {
                        route.stats.connect.observe(connect_started.elapsed());
                    }
                    let protocol = upstream.protocol();
                    set_target(
                        &mut self.up,
                        protocol,
                        host,
                        self.pq.take(),
                        route.upstream_tls.is_some(),
                    );
                    break (endpoint.clone(), protocol, upstream, pick, pending);
                }
                Err(e) => {
                    route.stats.error(if e.tls {
                        crate::table::UpstreamError::Tls
                    } else {
                        crate::table::UpstreamError::Connect
                    });
                    tried.push(pick);
                    if pick
                        .member(&route.backends)
                        .live
                        .record_failure(&proxy.health)
                    {
                        warn!(route = %route.name, namespace = %route.namespace, %endpoint, "endpoint ejected after consecutive failures");
                    }
                    let retry = tried.len() < MAX_ATTEMPTS.min(endpoints);
                    warn!(route = %route.name, namespace = %route.namespace, %endpoint, error = %e.source, tls = e.tls, retry, "upstream connect failed");
                    if e.tls {
                        // The endpoint answered but could not be verified (or
                        // spoke no TLS): a bad gateway, and every endpoint of
                        // the service most likely shares the cause.
                        return (
                            local::text(
                                StatusCode::BAD_GATEWAY,
                                "the upstream's TLS certificate could not be verified",
                            ),
                            Some(endpoint.clone()),
                        );
                    }
                    if retry {
                        route.stats.retry();
                    } else {
                        return (
                            local::text(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "no endpoint accepted the connection",
                            ),
                            Some(endpoint.clone()),
                        );
                    }
                }
            }
        };
        // A safe request without a body may go out again: on a fresh
        // connection when a pooled one turns out closed by the
        // upstream (the keep-alive race), or on another endpoint when one dies
        // before answering (bounded by MAX_ATTEMPTS and the retry budget).
        let up = &self.up;
        let replayable = is_safe(up.method()) && up.body().is_end_stream();
        // This crate's HTTP/1.1 client gives the request back when no answer
        // came (`ExchangeError::sent`); hyper's consumes it, so for hyper a
        // copy of the head is kept before sending.
        let mut replay: Option<Request<()>> = None;
        proxy.retry_budget.deposit();
        // One clock read for the connect time, the send time and the
        // deadline (three reads before).
        let sent_at = std::time::Instant::now();
        trace.connect = Some(sent_at.saturating_duration_since(connect_started));
        let deadline = tokio::time::Instant::from_std(sent_at) + route.settings.timeout;
        let client = client_side(conn, host, &self.host_value);
        let (mut endpoint, mut chosen, mut upstream) = (endpoint, chosen, upstream);
        let mut pending = Some(pending);
        let _ = protocol;
        let retry = Retry {
            proxy,
            conn,
            route,
            via: &via,
            host,
            upgrade,
            endpoints,
            replayable,
        };
        let sent = loop {
            let member = chosen.member(&route.backends);
            let guard = pending.take().unwrap_or_else(|| member.live.begin());
            if self.forwarded_later && !upstream.is_raw() {
                set_forwarded(self.up.headers_mut(), route.settings.forwarded, &client);
                self.forwarded_later = false;
            }
            let extra = self
                .forwarded_later
                .then_some(&client as &dyn crate::pool::ExtraHead);
            if replayable && replay.is_none() && !upstream.is_raw() {
                replay = Some(copy_head(&self.up, ()));
            }
            // The answer and the error live inside this block only: held
            // across the recovery's await, they would take room in every
            // request's future and be copied with it. The exchange is
            // pinned where it is made, so the timeout holds a reference to
            // it instead of a second copy; it is dropped (it borrows the
            // endpoint) before the answer is looked at.
            let recovery = {
                let answer = {
                    let sending = std::pin::pin!(proxy.upstreams.send(
                        &endpoint,
                        upstream,
                        take(&mut self.up),
                        &via,
                        extra,
                    ));
                    let timer = self.keeps_timer.then_some(&conn.route_timer);
                    super::deadline::within(timer, deadline, sending).await
                };
                match answer {
                    // Boxed: the recovery's state (the error, the unsent
                    // request, a checkout) would otherwise sit in every
                    // request's future.
                    Ok(Err(e)) => {
                        Box::pin(retry.recover(&mut tried, e, &endpoint, chosen, replay.as_ref()))
                    }
                    other => break (other, chosen, endpoint, guard),
                }
            };
            match recovery.await {
                Recovery::Again {
                    endpoint: next_ep,
                    chosen: next,
                    upstream: c,
                    up,
                    counted,
                } => {
                    (endpoint, chosen, upstream, self.up) = (next_ep, next, c, up);
                    // The same endpoint again keeps this request's slot.
                    pending = Some(counted.unwrap_or(guard));
                }
                Recovery::Fail(e) => break (Ok(Err(e)), chosen, endpoint, guard),
            }
        };
        let (sent, chosen, endpoint, guard) = sent;
        let member = chosen.member(&route.backends);
        match sent {
            Err(_) => {
                route.stats.error(crate::table::UpstreamError::Timeout);
                warn!(route = %route.name, namespace = %route.namespace, %endpoint, "upstream timed out");
                (
                    local::text(
                        StatusCode::GATEWAY_TIMEOUT,
                        "the upstream did not answer in time",
                    ),
                    Some(endpoint),
                )
            }
            Ok(Ok(mut resp)) => {
                if upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    if let Some(client) = self.client_upgrade.take() {
                        conn.upgraded
                            .store(true, std::sync::atomic::Ordering::Relaxed);
                        let upstream = hyper::upgrade::on(&mut resp);
                        super::tunnel::spawn(
                            client,
                            upstream,
                            route.settings.tunnel_timeout,
                            super::body::InFlight::new(
                                guard,
                                self.slot.take(),
                                std::time::Duration::ZERO,
                            ),
                        );
                    }
                    let (parts, _) = resp.into_parts();
                    return (
                        Response::from_parts(parts, ProxyBody::empty()),
                        Some(endpoint),
                    );
                }
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                if parts.status.is_server_error() && proxy.health.eject_on_5xx {
                    member.live.record_failure(&proxy.health);
                } else {
                    member.live.record_success();
                }
                trace.response = Some(sent_at.elapsed());
                if let Some(c) = &route.settings.cookie {
                    trace.sticky = Some(match (self.had_cookie, sticky == Some(chosen)) {
                        (true, true) => "hit",
                        (true, false) => "miss",
                        (false, _) => "new",
                    });
                    if sticky != Some(chosen) {
                        set_cookie(&mut parts.headers, c, &member.cookie);
                    }
                }
                if let (true, Some(hsts)) = (conn.tls, &route.settings.hsts) {
                    parts
                        .headers
                        .insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
                }
                (
                    Response::from_parts(
                        parts,
                        ProxyBody::upstream(
                            body,
                            super::body::InFlight::new(
                                guard,
                                self.slot.take(),
                                route.settings.timeout,
                            ),
                        ),
                    ),
                    Some(endpoint),
                )
            }
            Ok(Err(e)) if crate::pool::ClientTimedOut::caused(&*e.source) => {
                debug!(route = %route.name, namespace = %route.namespace, "client silent mid-body");
                (
                    local::close(
                        StatusCode::REQUEST_TIMEOUT,
                        "the request body did not arrive in time",
                    ),
                    Some(endpoint),
                )
            }
            Ok(Err(e)) => {
                debug!(route = %route.name, namespace = %route.namespace, error = %e, "upstream exchange failed");
                route.stats.error(if e.is_timeout() {
                    crate::table::UpstreamError::Timeout
                } else {
                    crate::table::UpstreamError::Closed
                });
                if e.is_timeout() {
                    return (
                        local::text(
                            StatusCode::GATEWAY_TIMEOUT,
                            "the upstream did not answer in time",
                        ),
                        Some(endpoint),
                    );
                }
                (
                    local::text(
                        StatusCode::BAD_GATEWAY,
                        "the upstream closed or reset the connection",
                    ),
                    Some(endpoint),
                )
            }
        }
    }
}

/// The request to send now, leaving an empty one in its place (a retry
/// puts the next one back).
fn take(up: &mut Request<RequestBody>) -> Request<RequestBody> {
    std::mem::replace(up, Request::new(RequestBody::Empty))
}

/// A request's head (method, target, version, headers) with `body`.
fn copy_head<A, B>(from: &Request<A>, body: B) -> Request<B> {
    let mut r = Request::new(body);
    *r.method_mut() = from.method().clone();
    *r.uri_mut() = from.uri().clone();
    *r.version_mut() = from.version();
    *r.headers_mut() = from.headers().clone();
    r
}

/// The protocol to ask `group`'s endpoints for: HTTP/1.1 for an upgrade
/// (it has no HTTP/2 form here), else the group's own.
fn protocol_for(group: &crate::table::BackendGroup, upgrade: bool) -> UpstreamProtocol {
    if upgrade {
        UpstreamProtocol::Http1
    } else {
        group.protocol
    }
}

/// What a failed send needs to decide on another attempt.
struct Retry<'a> {
    proxy: &'a Proxy,
    conn: &'a ConnInfo,
    route: &'a RouteEntry,
    via: &'a crate::pool::Via<'a>,
    host: &'a str,
    upgrade: bool,
    /// Endpoints of the route (attempts are bounded by them too).
    endpoints: usize,
    /// A safe request without a body: it may be sent again.
    replayable: bool,
}

/// After a failed send: where to send next, or the error to answer with.
enum Recovery {
    Again {
        endpoint: Endpoint,
        chosen: Pick,
        upstream: crate::pool::Conn,
        up: Request<RequestBody>,
        /// Another endpoint's slot, taken under the route's
        /// pod-concurrent-connections cap (none: the same endpoint again).
        counted: Option<crate::table::ActiveGuard>,
    },
    Fail(crate::pool::ExchangeError),
}

impl Retry<'_> {
    /// Another endpoint for a retry, counted on it now: a retry does not
    /// pass the route's pod-concurrent-connections cap either (no wait in
    /// line: an endpoint at its limit is skipped, and none left fails).
    fn pick_counted(&self, tried: &[Pick]) -> Option<(Pick, crate::table::ActiveGuard)> {
        let route = self.route;
        let cap = route.settings.pod_max_conn;
        let next = balance::pick_capped(&route.backends, self.conn.peer.ip(), tried, cap)?;
        let counted = next.member(&route.backends).live.try_begin(cap)?;
        Some((next, counted))
    }

    async fn recover(
        &self,
        tried: &mut Vec<Pick>,
        mut e: crate::pool::ExchangeError,
        endpoint: &Endpoint,
        chosen: Pick,
        replay: Option<&Request<()>>,
    ) -> Recovery {
        let (proxy, route) = (self.proxy, self.route);
        let tls = route.upstream_tls.is_some();
        let member = chosen.member(&route.backends);
        if !e.stale {
            member.live.record_failure(&proxy.health);
        }
        // What to send again. Nothing written (`unsent`): the request, body
        // and all, whatever its method. Else a safe request without a body:
        // as the client gave it back, or the copy kept.
        let (mut req, unwritten) = match (e.unsent.take(), e.sent.take(), replay) {
            (Some(req), ..) => (req, true),
            (None, Some(req), _) if self.replayable => (req, false),
            (None, _, Some(head)) if self.replayable => {
                (copy_head(head, RequestBody::Empty), false)
            }
            _ => return Recovery::Fail(e),
        };
        if e.stale {
            // A pooled connection the upstream had closed: the same
            // endpoint on a fresh one (the endpoint did nothing wrong).
            debug!(%endpoint, error = %e.source, unwritten, "pooled connection was closed by the upstream; sending again on a fresh one");
            let protocol = chosen.resolve(&route.backends).0.protocol;
            match proxy.upstreams.connect(endpoint, protocol, self.via).await {
                Ok(fresh) => {
                    route.stats.retry();
                    return Recovery::Again {
                        endpoint: endpoint.clone(),
                        chosen,
                        upstream: fresh,
                        up: req,
                        counted: None,
                    };
                }
                // It closed because it died: count it, and try another.
                Err(_) => {
                    member.live.record_failure(&proxy.health);
                }
            }
        }
        tried.push(chosen);
        // Another endpoint: always for an unwritten request; for one that
        // went out, only when nothing of an answer came, and within the
        // retry budget.
        if tried.len() >= MAX_ATTEMPTS.min(self.endpoints)
            || !unwritten && (!e.before_response || !proxy.retry_budget.withdraw())
        {
            return Recovery::Fail(e);
        }
        let Some((next, counted)) = self.pick_counted(tried) else {
            return Recovery::Fail(e);
        };
        let (group, next_ep) = next.resolve(&route.backends);
        match proxy
            .upstreams
            .checkout(next_ep, protocol_for(group, self.upgrade), self.via)
            .await
        {
            Ok(c) => {
                warn!(route = %route.name, namespace = %route.namespace, %endpoint, next = %next_ep, error = %e.source, unwritten, "upstream failed before answering; retrying on another endpoint");
                let pq = req.uri().path_and_query().cloned();
                set_target(&mut req, c.protocol(), self.host, pq, tls);
                route.stats.retry();
                Recovery::Again {
                    endpoint: next_ep.clone(),
                    chosen: next,
                    upstream: c,
                    up: req,
                    counted: Some(counted),
                }
            }
            Err(_) => Recovery::Fail(e),
        }
    }
}

/// HTTP/1.1 upstreams get origin-form (`/path?q`), whatever form the client
/// used; HTTP/2 upstreams get the client's host as `:authority`.
fn set_target<B>(
    req: &mut Request<B>,
    protocol: UpstreamProtocol,
    host: &str,
    pq: Option<http::uri::PathAndQuery>,
    tls: bool,
) {
    let pq = pq.unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    match protocol {
        UpstreamProtocol::Http1 => {
            *req.version_mut() = http::Version::HTTP_11;
            if req.uri().scheme().is_some() || req.uri().path_and_query() != Some(&pq) {
                *req.uri_mut() = http::Uri::from(pq);
            }
        }
        UpstreamProtocol::H2c => {
            *req.version_mut() = http::Version::HTTP_2;
            let uri = http::Uri::builder()
                .scheme(if tls { "https" } else { "http" })
                .authority(host)
                .path_and_query(pq)
                .build();
            if let Ok(u) = uri {
                *req.uri_mut() = u;
            }
        }
    }
}

/// Methods a proxy may send twice (RFC 9110 §9.2.1).
fn is_safe(m: &http::Method) -> bool {
    matches!(
        *m,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS | http::Method::TRACE
    )
}

/// The value of cookie `name` in the request's Cookie headers.
fn cookie_value<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k.trim() == name).then(|| v.trim().trim_matches('"'))
        })
}

/// Drop cookie `name` from the Cookie headers (the application never sees
/// the router's cookie).
fn remove_cookie(headers: &mut http::HeaderMap, name: &str) {
    if cookie_value(headers, name).is_none() {
        return;
    }
    let rest: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|p| !p.is_empty() && p.split_once('=').is_none_or(|(k, _)| k.trim() != name))
        .map(str::to_owned)
        .collect();
    headers.remove(header::COOKIE);
    if !rest.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&rest.join("; ")) {
            headers.insert(header::COOKIE, v);
        }
    }
}

/// Insert the sticky cookie (HAProxy `cookie … insert indirect nocache
/// httponly`): the response must not be cached with it.
fn set_cookie(headers: &mut http::HeaderMap, c: &crate::table::CookieSpec, value: &str) {
    if let Ok(v) = HeaderValue::from_str(&format!("{}={}{}", c.name, value, c.attributes)) {
        headers.append(header::SET_COOKIE, v);
        if !headers.contains_key(header::CACHE_CONTROL) {
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private"));
        }
    }
}

/// `haproxy.router.openshift.io/rewrite-target`: the route's path prefix is
/// replaced by the target, as OpenShift documents it (`/foo` → `/bar`:
/// `/foo/x` → `/bar/x`; target `/`: `/foo/x` → `/x`).
fn rewrite(route_path: &str, target: &str, uri: &http::Uri) -> Option<http::uri::PathAndQuery> {
    let path = uri.path();
    let prefix = if route_path.is_empty() {
        "/"
    } else {
        route_path
    };
    let rest = path.strip_prefix(prefix).unwrap_or(path);
    let mut out = String::with_capacity(target.len() + rest.len() + 16);
    out.push_str(target);
    if target.ends_with('/') {
        out.push_str(rest.strip_prefix('/').unwrap_or(rest));
    } else {
        out.push_str(rest);
    }
    if out.is_empty() {
        out.push('/');
    }
    if let Some(q) = uri.query() {
        out.push('?');
        out.push_str(q);
    }
    http::uri::PathAndQuery::try_from(out).ok()
}

/// A new request id: 16 hex digits from a per-thread generator (unique
/// enough to follow one request through logs; not a secret).
fn request_id() -> HeaderValue {
    let n = crate::balance::random_u64();
    let mut buf = [0u8; 16];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = b"0123456789abcdef"[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&buf).unwrap_or(HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_target_as_openshift_documents_it() {
        let r = |route: &str, target: &str, req: &str| {
            rewrite(route, target, &req.parse().unwrap())
                .unwrap()
                .to_string()
        };
        assert_eq!(r("/foo", "/", "/foo"), "/");
        assert_eq!(r("/foo", "/", "/foo/"), "/");
        assert_eq!(r("/foo", "/", "/foo/bar"), "/bar");
        assert_eq!(r("/foo/", "/", "/foo/bar"), "/bar");
        assert_eq!(r("/foo", "/bar", "/foo"), "/bar");
        assert_eq!(r("/foo", "/bar", "/foo/"), "/bar/");
        assert_eq!(r("/foo", "/bar", "/foo/bar"), "/bar/bar");
        assert_eq!(r("/foo/", "/bar", "/foo/bar"), "/barbar");
        assert_eq!(r("/foo", "/", "/foo/a?b=c"), "/a?b=c");
    }

    #[test]
    fn cookies() {
        let mut h = http::HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; route=abc; b=2"),
        );
        assert_eq!(cookie_value(&h, "route"), Some("abc"));
        remove_cookie(&mut h, "route");
        assert_eq!(h[header::COOKIE], "a=1; b=2");
        let mut only = http::HeaderMap::new();
        only.append(header::COOKIE, HeaderValue::from_static("route=abc"));
        remove_cookie(&mut only, "route");
        assert!(only.get(header::COOKIE).is_none());
    }
}
