//! The admin listener: health, readiness, the routes API, a small metrics
//! page and the dashboard. Reads the table; never changes it.

mod metrics;

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

/// The state plus the metrics registry built from it once.
struct Served {
    state: Arc<AdminState>,
    registry: prometheus_client::registry::Registry,
}

impl std::ops::Deref for Served {
    type Target = AdminState;
    fn deref(&self) -> &AdminState {
        &self.state
    }
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
    let state = Arc::new(Served {
        registry: metrics::registry(state.clone()),
        state,
    });
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

fn route(state: &Served, req: Request<Incoming>) -> Response<Full<Bytes>> {
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
                    let mut v = serde_json::to_value(&**s).unwrap_or_default();
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
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics::render(&state.registry),
        ),
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

fn reply(status: StatusCode, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, http::HeaderValue::from_static(ctype));
    r
}

const DASHBOARD: &str = include_str!("dashboard.html");
