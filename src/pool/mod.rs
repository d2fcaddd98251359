//! Upstream connections: HTTP/1.1 keep-alive and HTTP/2 cleartext (h2c)
//! pools, keyed by endpoint address, shared by every route.
//!
//! Owns connecting and reuse; must not choose endpoints (that is `balance`)
//! or look at routes.

mod body;

pub use body::{RetryBody, RetrySlot};

use crate::table::{Endpoint, UpstreamProtocol};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::time::Duration;

/// Pool settings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_endpoint: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(90),
            max_idle_per_endpoint: 256,
        }
    }
}

/// Why an upstream exchange failed, and whether another endpoint may be
/// tried.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Nothing was sent: the next endpoint may be tried.
    #[error("connect to {endpoint} failed: {source}")]
    Connect {
        endpoint: String,
        source: hyper_util::client::legacy::Error,
    },
    /// The request may have reached the endpoint: not retried.
    #[error("upstream {endpoint}: {source}")]
    Exchange {
        endpoint: String,
        source: hyper_util::client::legacy::Error,
    },
    #[error("bad upstream address {0}")]
    BadAddress(String),
}

/// Both pools.
#[derive(Clone, Debug)]
pub struct Upstreams {
    http1: Client<HttpConnector, RetryBody>,
    h2c: Client<HttpConnector, RetryBody>,
}

impl Upstreams {
    pub fn new(cfg: &PoolConfig) -> Self {
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(cfg.connect_timeout));
        conn.set_nodelay(true);
        conn.enforce_http(true);
        let mut b = Client::builder(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(cfg.idle_timeout)
            .pool_max_idle_per_host(cfg.max_idle_per_endpoint)
            .set_host(false)
            .retry_canceled_requests(true);
        let http1 = b.build(conn.clone());
        b.http2_only(true)
            .http2_keep_alive_interval(Duration::from_secs(30));
        let h2c = b.build(conn);
        Upstreams { http1, h2c }
    }

    /// Send `req` (whose URI holds only path and query) to `endpoint`.
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        authority: &Authority,
        protocol: UpstreamProtocol,
        mut req: Request<RetryBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|_| UpstreamError::BadAddress(endpoint.to_string()))?;
        let client = match protocol {
            UpstreamProtocol::Http1 => {
                *req.version_mut() = http::Version::HTTP_11;
                &self.http1
            }
            UpstreamProtocol::H2c => {
                *req.version_mut() = http::Version::HTTP_2;
                &self.h2c
            }
        };
        client.request(req).await.map_err(|source| {
            if source.is_connect() {
                UpstreamError::Connect {
                    endpoint: endpoint.to_string(),
                    source,
                }
            } else {
                UpstreamError::Exchange {
                    endpoint: endpoint.to_string(),
                    source,
                }
            }
        })
    }
}
