//! The admin listener: health, readiness, the routes API, a small metrics
//! page and the dashboard. Reads the table; never changes it.

use crate::table::TableStore;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::debug;

/// State the admin endpoints read.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub store: Arc<TableStore>,
    pub router_name: String,
    /// Bearer token required for everything but health (`--admin-token-file`).
    pub token: Option<Arc<str>>,
    /// The Kubernetes source's health (`--kube`).
    pub source: Option<Arc<crate::source::kube::SourceHealth>>,
}

/// Health endpoints stay open (kubelet and load balancers probe them), and
/// so does the dashboard page itself: it holds no data and asks for the
/// token before calling the API.
fn is_public(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/healthz/ready" | "/")
}

/// `Authorization: Bearer <token>`, compared in constant time.
fn authorized(state: &AdminState, req: &Request<Incoming>) -> bool {
    let Some(want) = &state.token else {
        return true;
    };
    let got = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .unwrap_or("");
    aws_lc_rs::constant_time::verify_slices_are_equal(got.as_bytes(), want.as_bytes()).is_ok()
}

/// Serve the admin API until `shutdown` turns true.
pub async fn serve(listener: TcpListener, state: AdminState, mut shutdown: watch::Receiver<bool>) {
    let state = Arc::new(state);
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = crate::app_signal::stopped(&mut shutdown) => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, req)) }
            });
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!(error = %e, "admin connection error");
            }
        });
    }
}

fn route(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if !is_public(req.uri().path()) && !authorized(state, &req) {
        let mut r = reply(
            StatusCode::UNAUTHORIZED,
            "text/plain",
            "a bearer token is required\n".into(),
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer realm=\"gatehouse\""),
        );
        return r;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" | "/healthz/ready" => {
            if state.store.is_ready() {
                reply(StatusCode::OK, "text/plain", "ready\n".into())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "waiting for the first table\n".into(),
                )
            }
        }
        "/api/routes" => {
            let t = state.store.load_full();
            // Each admitted route also shows the settings in effect (after
            // defaults and ignored annotation values).
            let effective: std::collections::HashMap<(&str, &str), serde_json::Value> = t
                .routes()
                .map(|r| ((&*r.namespace, &*r.name), effective(r)))
                .collect();
            let routes: Vec<serde_json::Value> = t
                .statuses
                .iter()
                .map(|s| {
                    let mut v = serde_json::to_value(s).unwrap_or_default();
                    if let (Some(e), Some(o)) = (
                        effective.get(&(s.namespace.as_str(), s.name.as_str())),
                        v.as_object_mut(),
                    ) {
                        o.insert("effective".into(), e.clone());
                    }
                    v
                })
                .collect();
            let body = serde_json::json!({
                "generation": t.generation,
                "routes": routes,
            });
            reply(StatusCode::OK, "application/json", body.to_string())
        }
        "/api/backends" => reply(StatusCode::OK, "application/json", backends(state)),
        "/metrics" => reply(StatusCode::OK, "text/plain; version=0.0.4", metrics(state)),
        "/" => reply(StatusCode::OK, "text/html; charset=utf-8", DASHBOARD.into()),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// A route's settings after defaults and validation.
fn effective(r: &crate::table::RouteEntry) -> serde_json::Value {
    let s = &r.settings;
    serde_json::json!({
        "balance": r.backends.algorithm,
        "timeout_ms": s.timeout.as_millis() as u64,
        "tunnel_timeout_ms": s.tunnel_timeout.as_millis() as u64,
        "forwarded_headers": format!("{:?}", s.forwarded).to_lowercase(),
        "cookie": s.cookie.as_ref().map(|c| &*c.name),
        "hsts": s.hsts.as_ref().and_then(|h| h.to_str().ok()),
        "rewrite_target": s.rewrite_target.as_deref(),
        "ip_allowlist": s.allowlist.as_ref().map(|l| l.len()),
        "rate_limits": s.rate_limits.map(|l| serde_json::json!({
            "concurrent_tcp": l.concurrent, "rate_tcp": l.rate_tcp, "rate_http": l.rate_http
        })),
        "pod_concurrent_connections": s.pod_max_conn,
        "health_check_interval_ms": s.check_interval.as_millis() as u64,
    })
}

/// Every admitted route's endpoints with weight, load and health.
fn backends(state: &AdminState) -> String {
    let t = state.store.load_full();
    let mut routes: Vec<_> = t.routes().collect();
    routes.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let list: Vec<serde_json::Value> = routes
        .iter()
        .map(|r| {
            let set = &r.backends;
            let endpoints: Vec<serde_json::Value> = set
                .members
                .iter()
                .map(|m| {
                    let g = &set.groups[m.group as usize];
                    serde_json::json!({
                        "address": g.endpoints[m.index as usize].to_string(),
                        "service": format!("{}/{}", g.service.0, g.service.1),
                        "weight": m.weight,
                        "active": m.live.active(),
                        "available": m.live.is_available(),
                        "ejected": m.live.is_ejected() && !m.live.is_down(),
                        "down": m.live.is_down(),
                    })
                })
                .collect();
            serde_json::json!({
                "namespace": &*r.namespace,
                "name": &*r.name,
                "host": &*r.host,
                "path": &*r.path,
                "algorithm": set.algorithm,
                "cookie": r.settings.cookie.as_ref().map(|c| &*c.name),
                "timeout_ms": r.settings.timeout.as_millis() as u64,
                "endpoints": endpoints,
                // Requests by status class since the route appeared (the
                // dashboard turns them into rates).
                "requests": r.stats.snapshot().iter().map(|(c, n)| (c.to_string(), serde_json::Value::from(*n))).collect::<serde_json::Map<_, _>>(),
            })
        })
        .collect();
    serde_json::json!({ "generation": t.generation, "backends": list }).to_string()
}

fn metrics(state: &AdminState) -> String {
    use std::fmt::Write as _;
    let t = state.store.load_full();
    let admitted = t.statuses.iter().filter(|s| s.admitted).count();
    let rejected = t.statuses.len() - admitted;
    let mut out = format!(
        "# HELP gatehouse_table_generation Generation of the live routing table.\n\
         # TYPE gatehouse_table_generation gauge\n\
         gatehouse_table_generation {}\n\
         # HELP gatehouse_routes Routes by admission state.\n\
         # TYPE gatehouse_routes gauge\n\
         gatehouse_routes{{state=\"admitted\"}} {admitted}\n\
         gatehouse_routes{{state=\"rejected\"}} {rejected}\n\
         # HELP gatehouse_ready 1 once the first complete table is live.\n\
         # TYPE gatehouse_ready gauge\n\
         gatehouse_ready {}\n\
         # HELP gatehouse_tls_handshake_failures_total TLS connections closed before a completed handshake (garbage, oversized or truncated ClientHello, timeout, failed verification).\n\
         # TYPE gatehouse_tls_handshake_failures_total counter\n\
         gatehouse_tls_handshake_failures_total {}\n\
         # HELP gatehouse_unrouted_requests_total Requests for hosts no route serves (answered 503).\n\
         # TYPE gatehouse_unrouted_requests_total counter\n\
         gatehouse_unrouted_requests_total {}\n\
         # HELP gatehouse_route_requests_total Requests per route by status class.\n\
         # TYPE gatehouse_route_requests_total counter\n",
        t.generation,
        u8::from(state.store.is_ready()),
        crate::tls::listener::HANDSHAKE_FAILURES.load(std::sync::atomic::Ordering::Relaxed),
        crate::proxy::UNROUTED.load(std::sync::atomic::Ordering::Relaxed),
    );
    let mut routes: Vec<_> = t.routes().collect();
    routes.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    routes.dedup_by(|a, b| a.namespace == b.namespace && a.name == b.name);
    for r in routes {
        for (class, n) in r.stats.snapshot() {
            let _ = writeln!(
                out,
                "gatehouse_route_requests_total{{namespace=\"{}\",route=\"{}\",code=\"{class}\"}} {n}",
                label(&r.namespace),
                label(&r.name)
            );
        }
    }
    if let Some(h) = &state.source {
        source_metrics(&mut out, h);
    }
    let _ = write!(
        out,
        "# HELP gatehouse_access_log_dropped_total Access log lines dropped because the queue to stdout was full (requests are never slowed).\n\
         # TYPE gatehouse_access_log_dropped_total counter\n\
         gatehouse_access_log_dropped_total {}\n",
        crate::telemetry::access_log::DROPPED.load(std::sync::atomic::Ordering::Relaxed)
    );
    let _ = write!(
        out,
        "# HELP gatehouse_endpoints_dropped_total Endpoint addresses dropped because they are loopback, link-local, multicast or cloud metadata addresses (untrusted sources only).\n\
         # TYPE gatehouse_endpoints_dropped_total counter\n\
         gatehouse_endpoints_dropped_total {}\n",
        crate::compile::DROPPED_LOCAL_ENDPOINTS.load(std::sync::atomic::Ordering::Relaxed)
    );
    out
}

fn source_metrics(out: &mut String, h: &crate::source::kube::SourceHealth) {
    use std::fmt::Write as _;
    use std::sync::atomic::Ordering::Relaxed;
    let _ = write!(
        out,
        "# HELP gatehouse_source_synced 1 once every kind has been listed from the API server.\n\
         # TYPE gatehouse_source_synced gauge\n\
         gatehouse_source_synced {}\n\
         # HELP gatehouse_source_stale 1 while a watch cannot reach the API server: the table is the last complete one.\n\
         # TYPE gatehouse_source_stale gauge\n\
         gatehouse_source_stale {}\n\
         # HELP gatehouse_source_watch_errors_total Watch errors (each retried with back-off).\n\
         # TYPE gatehouse_source_watch_errors_total counter\n\
         gatehouse_source_watch_errors_total {}\n\
         # HELP gatehouse_source_relists_total Lists after the first (410 Gone, reconnects).\n\
         # TYPE gatehouse_source_relists_total counter\n\
         gatehouse_source_relists_total {}\n\
         # HELP gatehouse_source_rejected_objects_total Objects from the API server that could not be decoded.\n\
         # TYPE gatehouse_source_rejected_objects_total counter\n\
         gatehouse_source_rejected_objects_total {}\n\
         # HELP gatehouse_source_last_event_timestamp_seconds Unix time of the last event from the API server.\n\
         # TYPE gatehouse_source_last_event_timestamp_seconds gauge\n\
         gatehouse_source_last_event_timestamp_seconds {}\n\
         # HELP gatehouse_source_initial_sync_seconds Time from start to the first complete view.\n\
         # TYPE gatehouse_source_initial_sync_seconds gauge\n\
         gatehouse_source_initial_sync_seconds {}\n\
         # HELP gatehouse_status_writes_total Route and Ingress status writes by result.\n\
         # TYPE gatehouse_status_writes_total counter\n\
         gatehouse_status_writes_total{{result=\"written\"}} {}\n\
         gatehouse_status_writes_total{{result=\"raced\"}} {}\n\
         gatehouse_status_writes_total{{result=\"failed\"}} {}\n",
        u8::from(h.synced.load(Relaxed)),
        u8::from(h.stale.load(Relaxed)),
        h.errors.load(Relaxed),
        h.relists.load(Relaxed),
        h.rejected_objects.load(Relaxed),
        h.last_event.load(Relaxed),
        h.initial_sync_ms.load(Relaxed) as f64 / 1000.0,
        crate::source::kube_status::WRITES[0].load(Relaxed),
        crate::source::kube_status::WRITES[1].load(Relaxed),
        crate::source::kube_status::WRITES[2].load(Relaxed),
    );
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn reply(status: StatusCode, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, http::HeaderValue::from_static(ctype));
    r
}

const DASHBOARD: &str = include_str!("dashboard.html");
