//! One HTTP request: find the route, check the termination policy, pick an
//! endpoint, forward, retry the next endpoint on connect failure, map errors
//! to 502/503/504, tunnel upgrades.

use super::body::ProxyBody;
use super::headers::{set_forwarded, strip_hop_by_hop, ClientSide};
use super::local;
use super::{ConnInfo, Proxy};
use crate::balance::{self, Pick};
use crate::model::admission::InsecurePolicy;
use crate::pool::{RetryBody, RetrySlot, UpstreamError};
use crate::table::{Endpoint, RouteEntry, UpstreamProtocol};
use crate::telemetry::access_log::LogLine;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use hyper::body::Incoming;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tracing::{debug, warn};

/// At most this many endpoints are tried for one request.
const MAX_ATTEMPTS: usize = 3;

/// Serve one request. Never fails: every problem becomes a response.
pub async fn handle(proxy: &Proxy, conn: &ConnInfo, req: Request<Incoming>) -> Response<ProxyBody> {
    let start = Instant::now();
    let host_value = match request_host(&req) {
        Some(h) => h,
        None => return local::text(StatusCode::BAD_REQUEST, "missing Host header"),
    };
    let host = host_value.to_str().unwrap_or("");
    let route = proxy.store.load().lookup(host, req.uri().path()).cloned();
    let mut log = proxy
        .access_log
        .as_ref()
        .map(|_| LogLine::start(conn, &req, host));
    let (resp, endpoint) = match route {
        None => (
            local::text(StatusCode::SERVICE_UNAVAILABLE, "no route for this host"),
            None,
        ),
        Some(route) => {
            if let Some(l) = log.as_mut() {
                l.route = Some(route.clone());
            }
            forward(proxy, conn, req, &route, &host_value).await
        }
    };
    if let (Some(mut l), Some(sink)) = (log, proxy.access_log.as_ref()) {
        l.finish(resp.status(), endpoint, start.elapsed());
        sink.push(l);
    }
    resp
}

fn request_host(req: &Request<Incoming>) -> Option<HeaderValue> {
    // h2 (and absolute-form h1) carry the authority in the URI.
    if let Some(a) = req.uri().authority() {
        return HeaderValue::from_str(a.as_str()).ok();
    }
    req.headers()
        .get(header::HOST)
        .filter(|h| !h.is_empty())
        .cloned()
}

async fn forward(
    proxy: &Proxy,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
    route: &Arc<RouteEntry>,
    host_value: &HeaderValue,
) -> (Response<ProxyBody>, Option<Endpoint>) {
    let host = host_value.to_str().unwrap_or("");
    if route.termination.is_some() && !conn.tls {
        match route.insecure {
            InsecurePolicy::Allow => {}
            InsecurePolicy::Redirect => {
                let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
                return (local::redirect_https(host, pq), None);
            }
            InsecurePolicy::None => {
                return (
                    local::text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "this route is only served over https",
                    ),
                    None,
                )
            }
        }
    }
    if route.backends.is_empty() {
        return (
            local::text(
                StatusCode::SERVICE_UNAVAILABLE,
                "no ready endpoints for this route",
            ),
            None,
        );
    }

    let wants_upgrade =
        req.version() <= http::Version::HTTP_11 && req.headers().contains_key(header::UPGRADE);
    let client_upgrade = wants_upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    let upgrade = strip_hop_by_hop(&mut headers) && wants_upgrade;
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    headers.insert(header::HOST, host_value.clone());
    set_forwarded(
        &mut headers,
        route.settings.forwarded,
        &ClientSide {
            ip: conn.peer.ip(),
            ip_value: &conn.ip_value,
            port_value: &conn.port_value,
            proto: if conn.tls { "https" } else { "http" },
            host,
            host_value,
        },
    );

    let (slot, hint): (Option<RetrySlot>, _) = if body.is_end_stream() {
        (None, body.size_hint())
    } else {
        let hint = body.size_hint();
        (Some(Arc::new(Mutex::new(Some(body)))), hint)
    };
    let endpoints: usize = route
        .backends
        .groups
        .iter()
        .map(|g| g.endpoints.len())
        .sum();
    let mut tried: Vec<Pick> = Vec::new();
    let mut last_endpoint = None;
    let mut headers = Some(headers);
    loop {
        let Some(pick) = balance::pick(&route.backends, &tried) else {
            return (
                local::text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no endpoint accepted the connection",
                ),
                last_endpoint,
            );
        };
        let (group, endpoint, authority) = pick.resolve(&route.backends);
        last_endpoint = Some(endpoint.clone());
        let may_retry = tried.len() + 1 < MAX_ATTEMPTS.min(endpoints);
        let h = if may_retry {
            headers.clone().unwrap_or_default()
        } else {
            headers.take().unwrap_or_default()
        };
        let mut up = Request::new(match &slot {
            Some(s) => RetryBody::from_slot(s.clone(), hint),
            None => RetryBody::empty(),
        });
        *up.method_mut() = parts.method.clone();
        *up.uri_mut() = parts.uri.clone();
        *up.headers_mut() = h;
        let protocol = if upgrade {
            UpstreamProtocol::Http1
        } else {
            group.protocol
        };
        let sent = tokio::time::timeout(
            route.settings.timeout,
            proxy.upstreams.send(endpoint, authority, protocol, up),
        )
        .await;
        match sent {
            Err(_) => {
                warn!(route = %route.name, namespace = %route.namespace, %endpoint, "upstream timed out");
                return (
                    local::text(
                        StatusCode::GATEWAY_TIMEOUT,
                        "the upstream did not answer in time",
                    ),
                    last_endpoint,
                );
            }
            Ok(Ok(mut resp)) => {
                if upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    if let Some(client) = client_upgrade {
                        let upstream = hyper::upgrade::on(&mut resp);
                        super::tunnel::spawn(client, upstream, route.settings.tunnel_timeout);
                    }
                    let (parts, _) = resp.into_parts();
                    return (
                        Response::from_parts(parts, ProxyBody::empty()),
                        last_endpoint,
                    );
                }
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                return (
                    Response::from_parts(parts, ProxyBody::Upstream(body)),
                    last_endpoint,
                );
            }
            Ok(Err(UpstreamError::Connect { endpoint, source })) => {
                let retryable = slot.as_ref().is_none_or(|s| !RetryBody::slot_is_empty(s));
                warn!(route = %route.name, namespace = %route.namespace, %endpoint, error = %source, retry = retryable && may_retry, "upstream connect failed");
                if !retryable || !may_retry {
                    return (
                        local::text(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "no endpoint accepted the connection",
                        ),
                        last_endpoint,
                    );
                }
                tried.push(pick);
            }
            Ok(Err(e)) => {
                debug!(route = %route.name, namespace = %route.namespace, error = %e, "upstream exchange failed");
                let detail = if is_timeout(&e) {
                    return (
                        local::text(
                            StatusCode::GATEWAY_TIMEOUT,
                            "the upstream did not answer in time",
                        ),
                        last_endpoint,
                    );
                } else {
                    "the upstream closed or reset the connection"
                };
                return (local::text(StatusCode::BAD_GATEWAY, detail), last_endpoint);
            }
        }
    }
}

fn is_timeout(e: &UpstreamError) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(h) = s.downcast_ref::<hyper::Error>() {
            if h.is_timeout() {
                return true;
            }
        }
        src = s.source();
    }
    false
}
