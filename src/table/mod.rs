//! The routing table: one immutable value per generation, published with
//! `ArcSwap` so the data path reads it with one atomic load and never waits
//! for a writer.
//!
//! Owns lookup (host, then path on segment boundaries). Must not know where
//! objects come from or how they were admitted: that is `model`/`compile`.

mod live;
mod lookup;
mod sharded;
mod stats;
mod store;

pub use stats::{RouteCounters, StatsRegistry, UpstreamError, CLASS_LABELS, STICKY_LABELS};

pub use live::{ActiveGuard, EndpointCounters, EndpointLive, HealthPolicy, LiveRegistry};

pub use lookup::{path_matches, precedence as path_precedence};
pub(crate) use sharded::{Shard, ShardedMap};
pub use store::TableStore;

use crate::model::admission::{InsecurePolicy, RouteStatus, Termination};
use crate::model::Key;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use rustls::sign::CertifiedKey;

/// How to open TLS to a re-encrypt route's endpoints: the verifier built
/// from `destinationCACertificate` (or the router default) and the name the
/// endpoint's certificate must carry (`<service>.<namespace>.svc`).
#[derive(Debug)]
pub struct UpstreamTls {
    /// ALPN h2 + http/1.1.
    pub config: Arc<rustls::ClientConfig>,
    /// ALPN http/1.1 only: for upgrades (WebSocket), which need HTTP/1.1.
    pub config_h1: Arc<rustls::ClientConfig>,
    pub server_name: rustls::pki_types::ServerName<'static>,
    /// Unique per verifier, so pooled connections verified under one CA are
    /// never handed to a route that trusts another.
    pub id: u64,
}

impl UpstreamTls {
    pub fn new(
        config: Arc<rustls::ClientConfig>,
        server_name: rustls::pki_types::ServerName<'static>,
    ) -> Self {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let mut h1 = (*config).clone();
        h1.alpn_protocols = vec![b"http/1.1".to_vec()];
        UpstreamTls {
            config,
            config_h1: Arc::new(h1),
            server_name,
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// Everything the data path needs to route, for one generation.
#[derive(Debug, Default, Clone)]
pub struct RoutingTable {
    pub generation: u64,
    /// By host. The maps by host are sharded so that a table made from
    /// the previous one shares what did not change (see `sharded`).
    pub(crate) exact: ShardedMap<Arc<HostRoutes>>,
    /// Keyed by the domain a `Subdomain` route covers (`example.com` for
    /// `*.example.com`).
    pub(crate) wildcard: ShardedMap<Arc<HostRoutes>>,
    /// One row per candidate route, admitted or not, for `/api/routes`, in
    /// admission order. A persistent vector: a change to a few routes
    /// copies a few nodes, not every row's pointer.
    pub statuses: imbl::Vector<Arc<RouteStatus>>,
    /// How many of `statuses` are admitted (kept, not counted per change).
    pub admitted_routes: usize,
    /// service → the host entries whose routes send to it, so an
    /// endpoint-only change rebuilds just those.
    /// A persistent hash map: a change to a few hosts copies a few nodes
    /// (a persistent B-tree compared keys' strings on every insert).
    pub(crate) by_service: ServiceIndex,
    /// Serving certificates by exact host (route or Ingress TLS).
    pub(crate) certs: ShardedMap<Arc<CertifiedKey>>,
    /// Serving certificates of Subdomain routes, by the domain they cover.
    pub(crate) wildcard_certs: ShardedMap<Arc<CertifiedKey>>,
    /// Host → the Routes (in the shard, not Ingress-derived) that claim it,
    /// admitted or not: what a change to one of them re-admits.
    pub(crate) claimants: imbl::OrdMap<String, Arc<[Key]>>,
}

/// Service → the host entries whose routes send to it.
pub(crate) type ServiceIndex = imbl::GenericHashMap<
    Arc<Key>,
    Arc<[HostRef]>,
    crate::pool::fxhash::Build,
    imbl::shared_ptr::DefaultSharedPtr,
>;

/// Points at one entry of `exact` or `wildcard`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum HostRef {
    Exact(Arc<str>),
    Wildcard(Arc<str>),
}

/// The routes of one host, most specific path first.
#[derive(Debug, Default)]
pub struct HostRoutes {
    pub routes: Box<[Arc<RouteEntry>]>,
}

/// One admitted route, ready to serve.
#[derive(Debug, Clone)]
pub struct RouteEntry {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub host: Arc<str>,
    /// "" for no path.
    pub path: Box<str>,
    pub path_exact: bool,
    pub termination: Option<Termination>,
    pub insecure: InsecurePolicy,
    pub settings: Arc<RouteSettings>,
    /// What the route sends to, as written (kept to re-resolve endpoints).
    pub targets: Arc<[Target]>,
    pub backends: Arc<BackendSet>,
    /// Re-encrypt routes: TLS towards the endpoints.
    pub upstream_tls: Option<Arc<UpstreamTls>>,
    /// Request counters, shared across tables.
    pub stats: Arc<RouteCounters>,
    /// The route this entry was compiled from, when the entry is a pure
    /// function of it (every target service found, nothing to warn
    /// about): a later compile that finds the same route, and the same
    /// services and endpoints, reuses the entry as is.
    pub source: Option<Arc<crate::model::Route>>,
}

/// Per-route behaviour from annotations, with router defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSettings {
    /// `haproxy.router.openshift.io/timeout`: the server timeout.
    pub timeout: Duration,
    /// `haproxy.router.openshift.io/timeout-tunnel`: WebSocket / upgraded.
    pub tunnel_timeout: Duration,
    /// Idle limit of a passthrough connection: `timeout-tunnel`, else
    /// `timeout`, else the default tunnel timeout (as OpenShift).
    pub passthrough_idle: Duration,
    pub forwarded: ForwardedPolicy,
    /// `haproxy.router.openshift.io/hsts_header`, when valid.
    pub hsts: Option<http::HeaderValue>,
    /// `haproxy.router.openshift.io/balance` as asked (the backend set may
    /// force roundrobin across several services).
    pub algorithm: Algorithm,
    /// Sticky sessions; `None` when disabled or for passthrough.
    pub cookie: Option<CookieSpec>,
    /// `haproxy.router.openshift.io/rewrite-target`.
    pub rewrite_target: Option<Box<str>>,
    /// `haproxy.router.openshift.io/ip_allowlist`: only these clients.
    pub allowlist: Option<Box<[crate::model::ipnet::IpNet]>>,
    /// `haproxy.router.openshift.io/rate-limit-connections*`.
    pub rate_limits: Option<RateLimits>,
    /// `haproxy.router.openshift.io/pod-concurrent-connections`: requests in
    /// flight per endpoint; more wait briefly, then 503.
    pub pod_max_conn: Option<u32>,
    /// `router.openshift.io/haproxy.health.check.interval`: TCP checks of
    /// each endpoint, only when the route has more than one.
    pub check_interval: Duration,
}

/// Per-client limits of a route (OpenShift's rate-limit-connections).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimits {
    /// `.concurrent-tcp`: requests in flight per client address.
    pub concurrent: Option<u32>,
    /// `.rate-tcp`: new connections per client within 3 s.
    pub rate_tcp: Option<u32>,
    /// `.rate-http`: HTTP requests per client within 10 s.
    pub rate_http: Option<u32>,
}

/// The sticky cookie of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieSpec {
    pub name: Box<str>,
    /// `; path=/; HttpOnly` (+ `; Secure; SameSite=…` on TLS-only routes).
    pub attributes: Box<str>,
}

/// `haproxy.router.openshift.io/set-forwarded-headers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedPolicy {
    #[default]
    Append,
    Replace,
    IfNone,
    Never,
}

impl ForwardedPolicy {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "append" => Self::Append,
            "replace" => Self::Replace,
            "if-none" => Self::IfNone,
            "never" => Self::Never,
            _ => return None,
        })
    }
}

/// One `spec.to` / `alternateBackends` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub service: Key,
    pub weight: u32,
    pub port: Option<crate::model::IntOrString>,
}

/// `haproxy.router.openshift.io/balance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    RoundRobin,
    LeastConn,
    Source,
    #[default]
    Random,
}

impl Algorithm {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "roundrobin" => Self::RoundRobin,
            "leastconn" => Self::LeastConn,
            "source" => Self::Source,
            "random" => Self::Random,
            _ => return None,
        })
    }
}

/// One endpoint of a backend set, as the balancer sees it.
#[derive(Debug)]
pub struct Member {
    pub group: u32,
    /// Index into the group's `endpoints`.
    pub index: u32,
    /// Effective weight, 0–256 (0: no new sessions).
    pub weight: u32,
    pub live: Arc<EndpointLive>,
    /// The sticky-cookie value naming this endpoint (a keyed hash: it does
    /// not reveal the address).
    pub cookie: Arc<str>,
    /// Stable identity hash for consistent hashing.
    pub id: u64,
}

/// The endpoints a route may send to, grouped by service, and flattened
/// into weighted members for the balancer.
#[derive(Debug, Default)]
pub struct BackendSet {
    pub groups: Box<[BackendGroup]>,
    pub members: Box<[Member]>,
    pub algorithm: Algorithm,
    /// Smooth weighted round-robin's current values, one per member.
    pub(crate) rr: std::sync::Mutex<Box<[i64]>>,
}

impl BackendSet {
    /// Flatten `groups` into members with OpenShift's weights: each
    /// service's weight divided among its endpoints, scaled so the largest
    /// is 256 (25/75 over one endpoint each → 85/256). More than one
    /// service in use forces roundrobin, as in OpenShift.
    pub fn new(
        groups: Vec<BackendGroup>,
        algorithm: Algorithm,
        live: &LiveRegistry,
        cookie_key: &[u8],
    ) -> Self {
        let per: Vec<f64> = groups
            .iter()
            .map(|g| {
                if g.endpoints.is_empty() {
                    0.0
                } else {
                    g.weight as f64 / g.endpoints.len() as f64
                }
            })
            .collect();
        let max = per.iter().cloned().fold(0.0, f64::max);
        let mut members = Vec::new();
        for (gi, g) in groups.iter().enumerate() {
            let w = if max > 0.0 && g.weight > 0 {
                ((per[gi] * 256.0 / max) as u32).clamp(1, 256)
            } else {
                0
            };
            for (ei, ep) in g.endpoints.iter().enumerate() {
                let live = live.get(ep, cookie_key);
                members.push(Member {
                    group: gi as u32,
                    index: ei as u32,
                    weight: w,
                    cookie: live.cookie.clone(),
                    id: live.id,
                    live,
                });
            }
        }
        let in_use = groups
            .iter()
            .filter(|g| g.weight > 0 && !g.endpoints.is_empty())
            .count();
        let algorithm = if in_use > 1 {
            Algorithm::RoundRobin
        } else {
            algorithm
        };
        let rr = std::sync::Mutex::new(vec![0i64; members.len()].into_boxed_slice());
        BackendSet {
            groups: groups.into_boxed_slice(),
            members: members.into_boxed_slice(),
            algorithm,
            rr,
        }
    }

    /// True when no endpoint can take traffic (none ready, or all weights 0).
    pub fn is_empty(&self) -> bool {
        self.members.iter().all(|m| m.weight == 0)
    }
}

/// The ready endpoints of one service for one route.
#[derive(Debug)]
pub struct BackendGroup {
    pub service: Key,
    pub weight: u32,
    pub protocol: UpstreamProtocol,
    pub endpoints: Box<[Endpoint]>,
}

impl BackendGroup {
    pub fn new(
        service: Key,
        weight: u32,
        protocol: UpstreamProtocol,
        endpoints: Vec<Endpoint>,
    ) -> Self {
        BackendGroup {
            service,
            weight,
            protocol,
            endpoints: endpoints.into_boxed_slice(),
        }
    }
}

/// How to speak to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    /// HTTP/2 cleartext (Service port `appProtocol: h2c`), for gRPC.
    H2c,
}

/// Where an endpoint is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    Socket(SocketAddr),
    /// An `ExternalName` service: resolved by DNS when connecting.
    Dns {
        host: Arc<str>,
        port: u16,
        /// Refuse addresses the name resolves to that are node-local
        /// (loopback, link-local, metadata…): set for untrusted sources, so
        /// an ExternalName cannot point a route at the node.
        public_only: bool,
    },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Socket(a) => write!(f, "{a}"),
            Endpoint::Dns { host, port, .. } => write!(f, "{host}:{port}"),
        }
    }
}

impl RoutingTable {
    /// Number of hosts with at least one route.
    pub fn host_count(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    /// The shards of the exact and wildcard host maps, in a fixed order:
    /// a shard this table shares with another holds the same routes.
    pub(crate) fn host_shards(&self) -> impl Iterator<Item = &Arc<Shard<Arc<HostRoutes>>>> {
        self.exact.shards().iter().chain(self.wildcard.shards())
    }

    /// Every admitted route, in no particular order.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<RouteEntry>> {
        self.exact
            .values()
            .chain(self.wildcard.values())
            .flat_map(|h| h.routes.iter())
    }

    /// The certificate to present for a TLS server name: the route's own
    /// (exact host, then a Subdomain route's domain), else none (the
    /// listener's default).
    pub fn cert_for(&self, sni: &str) -> Option<&Arc<CertifiedKey>> {
        self.certs.get(sni).or_else(|| {
            let (_, domain) = sni.split_once('.')?;
            self.wildcard_certs.get(domain)
        })
    }

    /// Asserts the table's invariants; tests and debug builds call it.
    pub fn check_invariants(&self) {
        for h in self.exact.values().chain(self.wildcard.values()) {
            assert!(!h.routes.is_empty(), "empty host entry");
            for w in h.routes.windows(2) {
                assert!(
                    lookup::precedence(&w[0]) <= lookup::precedence(&w[1]),
                    "routes out of order: {} before {}",
                    w[0].path,
                    w[1].path
                );
            }
        }
    }
}
