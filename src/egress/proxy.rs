//! HTTP proxy mode (OpenShift's squid egress router): `CONNECT host:port`
//! tunnels and absolute-URI `http://` requests, each checked against the
//! `EGRESS_HTTP_PROXY_DESTINATION` policy (403 when denied) and connected
//! from the source address.

use super::rules::Host;
use super::Shared;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;
use tokio::sync::watch;

type Body = BoxBody<Bytes, hyper::Error>;

pub(crate) async fn serve(
    l: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (s, peer) = tokio::select! {
            r = l.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = crate::app_signal::stopped(&mut shutdown) => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, peer, shared.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .with_upgrades()
                .await;
        });
    }
}

fn text(code: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from(format!("{msg}\n")))
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = code;
    r
}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    shared: Arc<Shared>,
) -> Result<Response<Body>, std::convert::Infallible> {
    if !shared.allowed(peer.ip()) {
        shared
            .counters
            .refused_not_allowed
            .fetch_add(1, Ordering::Relaxed);
        return Ok(text(StatusCode::FORBIDDEN, "client not allowed"));
    }
    let connect = req.method() == Method::CONNECT;
    let (host, port) = match (req.uri().authority(), req.uri().scheme_str(), connect) {
        (Some(a), _, true) => match a.port_u16() {
            Some(p) => (a.host().to_owned(), p),
            None => return Ok(text(StatusCode::BAD_REQUEST, "CONNECT needs host:port")),
        },
        (Some(a), Some("http"), false) => (a.host().to_owned(), a.port_u16().unwrap_or(80)),
        (Some(_), Some(_), false) => {
            return Ok(text(
                StatusCode::BAD_REQUEST,
                "only http:// URIs are forwarded; use CONNECT for TLS",
            ))
        }
        _ => {
            return Ok(text(
                StatusCode::BAD_REQUEST,
                "this is a forward proxy: send CONNECT or an absolute http:// URI",
            ))
        }
    };
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let target = match bare.parse::<IpAddr>() {
        Ok(ip) => Host::Ip(ip),
        Err(_) => Host::Name(bare.to_ascii_lowercase()),
    };
    // Resolve first so network rules apply to what the name points at.
    let resolved: Vec<IpAddr> = match &target {
        Host::Ip(ip) => vec![*ip],
        Host::Name(n) => tokio::net::lookup_host((n.as_str(), port))
            .await
            .map(|a| a.map(|s| s.ip()).collect())
            .unwrap_or_default(),
    };
    let dest = format!("{target}:{port}");
    let started = Instant::now();
    let policy = shared.proxy_policy.load();
    if !policy.allows(&bare, &resolved) {
        shared.counters.proxy_denied.fetch_add(1, Ordering::Relaxed);
        shared.log(serde_json::json!({
            "time": super::unix_now(), "kind": "egress-proxy", "client": peer.to_string(),
            "method": req.method().as_str(), "destination": dest, "status": 403,
            "close": "denied by policy",
        }));
        return Ok(text(StatusCode::FORBIDDEN, "destination denied by policy"));
    }
    let stats = shared.stats(&dest);
    stats.total.fetch_add(1, Ordering::Relaxed);
    let upstream = match shared.connect(&target, port).await {
        Ok(u) => u,
        Err(e) => {
            stats.connect_errors.fetch_add(1, Ordering::Relaxed);
            shared.log(serde_json::json!({
                "time": super::unix_now(), "kind": "egress-proxy", "client": peer.to_string(),
                "method": req.method().as_str(), "destination": dest, "status": 502,
                "close": format!("connect failed: {e}"),
            }));
            return Ok(text(StatusCode::BAD_GATEWAY, "destination unreachable"));
        }
    };
    if connect {
        let idle = shared.cfg.idle_timeout;
        tokio::spawn(async move {
            stats.active.fetch_add(1, Ordering::Relaxed);
            if let Ok(up) = hyper::upgrade::on(req).await {
                let r = crate::proxy::tunnel::pipe_counted(
                    TokioIo::new(up),
                    upstream,
                    idle,
                    super::BULK_BUF,
                )
                .await;
                stats.bytes_up.fetch_add(r.a_to_b, Ordering::Relaxed);
                stats.bytes_down.fetch_add(r.b_to_a, Ordering::Relaxed);
                shared.log(serde_json::json!({
                    "time": super::unix_now(), "kind": "egress-proxy", "client": peer.to_string(),
                    "method": "CONNECT", "destination": dest, "status": 200,
                    "bytes_up": r.a_to_b, "bytes_down": r.b_to_a,
                    "duration_ms": started.elapsed().as_millis() as u64, "close": r.reason,
                }));
            }
            stats.active.fetch_sub(1, Ordering::Relaxed);
        });
        return Ok(Response::new(
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed(),
        ));
    }
    // Absolute URI: send it on in origin form over a fresh connection.
    let (mut parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    parts.uri = match pq.parse() {
        Ok(u) => u,
        Err(_) => return Ok(text(StatusCode::BAD_REQUEST, "bad request target")),
    };
    for h in [
        "proxy-connection",
        "proxy-authorization",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
    ] {
        parts.headers.remove(h);
    }
    if !parts.headers.contains_key(http::header::HOST) {
        if let Ok(v) = http::HeaderValue::from_str(&host) {
            parts.headers.insert(http::header::HOST, v);
        }
    }
    let (mut send, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await
    {
        Ok(x) => x,
        Err(_) => {
            return Ok(text(
                StatusCode::BAD_GATEWAY,
                "destination handshake failed",
            ))
        }
    };
    tokio::spawn(conn);
    let method = parts.method.clone();
    match send.send_request(Request::from_parts(parts, body)).await {
        Ok(resp) => {
            shared.log(serde_json::json!({
                "time": super::unix_now(), "kind": "egress-proxy", "client": peer.to_string(),
                "method": method.as_str(), "destination": dest, "status": resp.status().as_u16(),
                "duration_ms": started.elapsed().as_millis() as u64,
            }));
            Ok(resp.map(|b| b.boxed()))
        }
        Err(_) => Ok(text(
            StatusCode::BAD_GATEWAY,
            "destination failed to answer",
        )),
    }
}
