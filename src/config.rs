//! The router's own configuration file (YAML). Command-line flags override
//! it; every field has a default so an empty file is valid.

use crate::compile::CompileConfig;
use crate::model::admission::AdmissionPolicy;
use crate::model::duration;
use crate::model::selector::{Selector, Shard};
use crate::table::ForwardedPolicy;
use serde::{Deserialize, Deserializer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `gatehouse run` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// Plain HTTP listener (HAProxy's :80).
    pub http: Option<SocketAddr>,
    /// TLS listener (HAProxy's :443); TLS arrives with the TLS issue.
    pub https: Option<SocketAddr>,
    /// Admin listener: health, routes API, metrics, dashboard.
    pub admin: Option<SocketAddr>,
    pub router_name: String,
    /// Manifests directory (relative to the config file).
    pub manifests: Option<PathBuf>,
    /// ROUTER_ALLOW_WILDCARD_ROUTES.
    pub allow_wildcard_routes: bool,
    /// ROUTER_SUBDOMAIN: host template for routes without one.
    pub route_subdomain: Option<String>,
    pub denied_domains: Vec<String>,
    pub allowed_domains: Vec<String>,
    /// Default for `haproxy.router.openshift.io/set-forwarded-headers`.
    pub forwarded_headers: ForwardedPolicy,
    /// Balance for HTTP routes without the annotation (passthrough: source).
    pub balance: crate::table::Algorithm,
    /// ROUTER_COOKIE_NAME: sticky cookie name for routes without one.
    pub cookie_name: Option<String>,
    /// Key for sticky-cookie values. Give every replica the same key so they
    /// make the same choices; without one a random key is made at start.
    pub cookie_key: Option<String>,
    /// File holding the cookie key (a mounted Secret); read at start.
    pub cookie_key_file: Option<PathBuf>,
    pub health: HealthSettings,
    pub timeouts: Timeouts,
    pub tls: TlsSettings,
    pub access_log: AccessLogMode,
    /// Share of requests logged when the access log is on (0.0–1.0; 1.0
    /// logs every request, 0.01 one in a hundred).
    pub access_log_sample: f64,
    /// Lines the access log queue holds before dropping (stdout stalled).
    pub access_log_queue: usize,
    pub admin_token_file: Option<PathBuf>,
    /// Client connections open at once, both listeners (OpenShift's
    /// ROUTER_MAX_CONNECTIONS, 50000); beyond, new ones are closed at once.
    pub max_connections: usize,
    /// Client connections from one address (0: no cap). Trusted PROXY
    /// balancers are not capped as one source.
    pub max_connections_per_source: u32,
    /// Send a PROXY protocol v2 header (client and listener addresses)
    /// ahead of the ClientHello to passthrough backends, which terminate TLS
    /// themselves and would otherwise see only the router's address. The
    /// backends must expect it.
    pub proxy_protocol_to_passthrough: bool,
    /// Send a PROXY v2 header (client and listener address) at the start
    /// of every upstream connection of HTTP routes (HAProxy
    /// `send-proxy-v2`). Such a connection carries one client connection's
    /// requests only, so pooling shrinks to per client connection.
    pub proxy_protocol_to_upstreams: bool,
    /// SO_REUSEPORT on the public listeners: a new process binds the same
    /// ports while the old one drains (rolling restarts; see
    /// net.ipv4.tcp_migrate_req). Off: a second process on the port is an
    /// "address in use" error.
    pub reuse_port: bool,
    /// Request line and headers, in bytes (HAProxy's tune.bufsize bounds
    /// them the same way): beyond, 414 (request line) or 431 (headers).
    pub max_header_bytes: usize,
    /// PROXY protocol v1/v2 on both listeners (ROUTER_USE_PROXY_PROTOCOL):
    /// connections from `proxy_trusted_sources` must start with a header
    /// naming the real client; others are direct clients.
    pub accept_proxy: bool,
    /// CIDRs of the load balancers allowed to send PROXY headers (required
    /// with `accept_proxy`).
    pub proxy_trusted_sources: Vec<String>,
    /// Tokio worker threads (default: one per core).
    pub worker_threads: Option<usize>,
    /// ROUTE_LABELS: serve only routes (and Ingresses) with matching labels.
    pub route_selector: String,
    /// NAMESPACE_LABELS: serve only routes in namespaces with matching labels.
    pub namespace_selector: String,
    /// IngressClass `spec.controller` this router answers to (besides
    /// OpenShift's `openshift.io/ingress-to-route`).
    pub ingress_controller: String,
    /// The Kubernetes API source (`--kube`).
    pub kube: KubeSettings,
}

/// `--kube` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubeSettings {
    /// Read from the API server (the `--kube` flag).
    pub enabled: bool,
    /// Kubeconfig file; without one: KUBECONFIG, ~/.kube/config, then the
    /// in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// Keep endpoints on loopback, link-local, multicast and cloud metadata
    /// addresses. Off: a tenant must not be able to point a route at the node.
    pub allow_local_endpoints: bool,
    /// Write this router's entry in Route `status.ingress[]`.
    pub write_status: bool,
    /// `routerCanonicalHostname` in route status (ROUTER_CANONICAL_HOSTNAME).
    pub canonical_hostname: Option<String>,
    /// Addresses (IPs or host names) written to the `status.loadBalancer` of
    /// the Ingresses this router serves: the F5/keepalived VIP.
    pub ingress_status: Vec<String>,
}

impl Default for KubeSettings {
    fn default() -> Self {
        KubeSettings {
            enabled: false,
            kubeconfig: None,
            allow_local_endpoints: false,
            write_status: true,
            canonical_hostname: None,
            ingress_status: Vec::new(),
        }
    }
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            http: Some(SocketAddr::from(([0, 0, 0, 0], 8080))),
            https: None,
            admin: Some(SocketAddr::from(([127, 0, 0, 1], 1936))),
            router_name: "default".into(),
            manifests: None,
            allow_wildcard_routes: false,
            route_subdomain: None,
            denied_domains: Vec::new(),
            allowed_domains: Vec::new(),
            forwarded_headers: ForwardedPolicy::Append,
            balance: crate::table::Algorithm::Random,
            cookie_name: None,
            cookie_key: None,
            cookie_key_file: None,
            health: HealthSettings::default(),
            timeouts: Timeouts::default(),
            tls: TlsSettings::default(),
            access_log: AccessLogMode::Json,
            access_log_sample: 1.0,
            accept_proxy: false,
            reuse_port: true,
            proxy_protocol_to_passthrough: false,
            proxy_protocol_to_upstreams: false,
            max_connections: 50_000,
            max_connections_per_source: 0,
            max_header_bytes: 32 * 1024,
            proxy_trusted_sources: Vec::new(),
            access_log_queue: 8192,
            admin_token_file: None,
            worker_threads: None,
            route_selector: String::new(),
            namespace_selector: String::new(),
            ingress_controller: crate::model::ingress::DEFAULT_CONTROLLER.to_owned(),
            kube: KubeSettings::default(),
        }
    }
}

/// Access log destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogMode {
    /// One JSON line per request on stdout.
    Json,
    Off,
}

/// The HAProxy timeouts the OpenShift router sets, same defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    #[serde(deserialize_with = "de_duration")]
    pub connect: Duration,
    /// Waiting for the upstream's response (route annotation overrides).
    #[serde(deserialize_with = "de_duration")]
    pub server: Duration,
    /// Reading the request headers (slowloris guard), from the first byte
    /// of a request (HAProxy `timeout http-request`).
    #[serde(deserialize_with = "de_duration")]
    pub http_request: Duration,
    /// A client connection with no request in progress (HAProxy `timeout
    /// http-keep-alive`; OpenShift's ROUTER_SLOWLORIS_HTTP_KEEPALIVE).
    #[serde(deserialize_with = "de_duration")]
    pub http_keep_alive: Duration,
    /// A client silent in the middle of its request body (HAProxy
    /// `timeout client`; ROUTER_DEFAULT_CLIENT_TIMEOUT): 408.
    #[serde(deserialize_with = "de_duration")]
    pub client: Duration,
    /// Idle upgraded connections (WebSocket).
    #[serde(deserialize_with = "de_duration")]
    pub tunnel: Duration,
    /// Idle pooled upstream connections.
    #[serde(deserialize_with = "de_duration")]
    pub upstream_idle: Duration,
    /// Every this often, half of an endpoint's pooled connections idle at
    /// least this long are closed, never its most recent one (after
    /// HAProxy's `pool-purge-delay`, 5 s); 0: only `upstream_idle` closes
    /// them.
    #[serde(deserialize_with = "de_duration_or_zero")]
    pub upstream_pool_purge: Duration,
    /// How long SIGTERM waits for in-flight requests.
    #[serde(deserialize_with = "de_duration")]
    pub drain: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            server: Duration::from_secs(30),
            http_request: Duration::from_secs(10),
            http_keep_alive: Duration::from_secs(300),
            client: Duration::from_secs(30),
            tunnel: Duration::from_secs(3600),
            upstream_idle: Duration::from_secs(90),
            upstream_pool_purge: Duration::from_secs(5),
            drain: Duration::from_secs(30),
        }
    }
}

/// Passive health: endpoints that keep failing are taken out for a while.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthSettings {
    /// Consecutive failures before ejection (0: never eject).
    pub eject_after: u32,
    /// Count 5xx responses as failures too.
    pub eject_on_5xx: bool,
    #[serde(deserialize_with = "de_duration")]
    pub base_ejection: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub max_ejection: Duration,
}

impl Default for HealthSettings {
    fn default() -> Self {
        let p = crate::table::HealthPolicy::default();
        HealthSettings {
            eject_after: p.eject_after,
            eject_on_5xx: p.eject_on_5xx,
            base_ejection: p.base_ejection,
            max_ejection: p.max_ejection,
        }
    }
}

impl HealthSettings {
    pub fn policy(&self) -> crate::table::HealthPolicy {
        crate::table::HealthPolicy {
            eject_after: self.eject_after,
            eject_on_5xx: self.eject_on_5xx,
            base_ejection: self.base_ejection,
            max_ejection: self.max_ejection,
        }
    }
}

/// The HTTPS listener's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM file with the default certificate chain and its private key
    /// (served without SNI and for routes without their own). Without one,
    /// a self-signed certificate is generated at start.
    pub default_certificate: Option<PathBuf>,
    /// CA bundle that verifies re-encrypt endpoints of routes without a
    /// `destinationCACertificate` (OpenShift's service CA).
    pub default_destination_ca: Option<PathBuf>,
    /// Opt-in: re-encrypt without verifying endpoints that have no CA.
    pub insecure_skip_reencrypt_verify: bool,
    /// Time allowed for the ClientHello and the handshake.
    #[serde(deserialize_with = "de_duration")]
    pub handshake_timeout: Duration,
    /// Client certificates: off, optional, required (ROUTER_MUTUAL_TLS_AUTH).
    pub client_auth: crate::tls::server::ClientAuthMode,
    /// CA bundle for client certificates (ROUTER_MUTUAL_TLS_AUTH_CA).
    pub client_ca: Option<PathBuf>,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            default_certificate: None,
            default_destination_ca: None,
            insecure_skip_reencrypt_verify: false,
            handshake_timeout: Duration::from_secs(10),
            client_auth: crate::tls::server::ClientAuthMode::Off,
            client_ca: None,
        }
    }
}

pub(crate) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    duration::parse(&s).ok_or_else(|| {
        serde::de::Error::custom(format!("{s:?} is not a duration like 30s, 500ms or 2m"))
    })
}

/// A duration where zero means "off" (`0`, or zero with a unit, `0s`);
/// otherwise as [`de_duration`], whose OpenShift syntax has no zero.
pub(crate) fn de_duration_or_zero<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    let t = s.trim();
    let unit = t.trim_start_matches('0');
    if unit.len() < t.len() && matches!(unit, "" | "us" | "ms" | "s" | "m" | "h" | "d") {
        return Ok(Duration::ZERO);
    }
    duration::parse(t).ok_or_else(|| {
        serde::de::Error::custom(format!(
            "{s:?} is not a duration like 30s, 500ms or 2m, or 0"
        ))
    })
}

/// Why a config file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The cause is the error's source, not in its text: `{:#}` printed
    // it twice.
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}")]
    Parse {
        path: PathBuf,
        source: serde_yaml::Error,
    },
}

impl RouterConfig {
    /// Load a YAML file; relative paths in it are taken from its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut cfg: RouterConfig = if text.trim().is_empty() {
            RouterConfig::default()
        } else {
            serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse {
                path: path.to_owned(),
                source,
            })?
        };
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut cfg.manifests,
            &mut cfg.admin_token_file,
            &mut cfg.tls.default_certificate,
            &mut cfg.tls.default_destination_ca,
            &mut cfg.tls.client_ca,
            &mut cfg.kube.kubeconfig,
            &mut cfg.cookie_key_file,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(p) = &cfg.cookie_key_file {
            let k = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.clone(),
                source,
            })?;
            cfg.cookie_key = Some(k.trim().to_owned());
        }
        Ok(cfg)
    }

    /// The shard the selectors define; an unparsable selector is an error
    /// (a shard that silently served every route would expose what it must
    /// not).
    pub fn shard(&self) -> Result<Shard, String> {
        Ok(Shard {
            routes: Selector::parse(&self.route_selector)
                .map_err(|e| format!("route selector: {e}"))?,
            namespaces: Selector::parse(&self.namespace_selector)
                .map_err(|e| format!("namespace selector: {e}"))?,
        })
    }

    /// What compile needs from this. Selectors must have been checked with
    /// [`RouterConfig::shard`]; here an invalid one selects nothing.
    pub fn compile_config(&self) -> CompileConfig {
        CompileConfig {
            shard: self.shard().unwrap_or_else(|_| Shard {
                routes: Selector::parse("gatehouse.invalid/never").unwrap_or_default(),
                namespaces: Selector::default(),
            }),
            ingress_controller: self.ingress_controller.clone(),
            admission: AdmissionPolicy {
                allow_wildcard_routes: self.allow_wildcard_routes,
                route_subdomain: self.route_subdomain.clone(),
                denied_domains: self.denied_domains.clone(),
                allowed_domains: self.allowed_domains.clone(),
            },
            default_timeout: self.timeouts.server,
            default_tunnel_timeout: self.timeouts.tunnel,
            forwarded: self.forwarded_headers,
            cert_cache: Default::default(),
            destination_trust: Default::default(),
            live: Default::default(),
            stats: Default::default(),
            cookie_key: match &self.cookie_key {
                Some(k) => std::sync::Arc::from(k.as_bytes()),
                None => {
                    let mut k = [0u8; 32];
                    // Random when not configured: replicas will not agree.
                    let _ = aws_lc_rs::rand::SecureRandom::fill(
                        &aws_lc_rs::rand::SystemRandom::new(),
                        &mut k,
                    );
                    std::sync::Arc::from(&k[..])
                }
            },
            default_cookie_name: self.cookie_name.clone(),
            default_balance: self.balance,
            // The manifests directory is written by the operator; in the
            // cluster tenants write EndpointSlices.
            allow_local_endpoints: !self.kube.enabled || self.kube.allow_local_endpoints,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects_unknown_fields() {
        let cfg: RouterConfig = serde_yaml::from_str(
            "http: 127.0.0.1:80\nallow_wildcard_routes: true\nforwarded_headers: if-none\ntimeouts: {server: 2m, drain: 5s}\n",
        )
        .unwrap();
        assert_eq!(cfg.timeouts.server, Duration::from_secs(120));
        assert_eq!(cfg.timeouts.connect, Duration::from_secs(5));
        assert_eq!(cfg.forwarded_headers, ForwardedPolicy::IfNone);
        assert!(serde_yaml::from_str::<RouterConfig>("htp: 1").is_err());
        assert!(serde_yaml::from_str::<RouterConfig>("timeouts: {server: 1d12h}").is_err());
    }

    /// `upstream_pool_purge` documents 0 as "off"; other durations have no
    /// zero (the OpenShift syntax).
    #[test]
    fn pool_purge_takes_zero() {
        for zero in ["0", "0s", "00ms"] {
            let cfg: RouterConfig =
                serde_yaml::from_str(&format!("timeouts: {{upstream_pool_purge: {zero}}}"))
                    .unwrap();
            assert_eq!(cfg.timeouts.upstream_pool_purge, Duration::ZERO, "{zero}");
        }
        let cfg: RouterConfig =
            serde_yaml::from_str("timeouts: {upstream_pool_purge: 10s}").unwrap();
        assert_eq!(cfg.timeouts.upstream_pool_purge, Duration::from_secs(10));
        for bad in ["0x", "-0", "0.5s", "01s"] {
            assert!(
                serde_yaml::from_str::<RouterConfig>(&format!(
                    "timeouts: {{upstream_pool_purge: {bad}}}"
                ))
                .is_err(),
                "{bad}"
            );
        }
        assert!(serde_yaml::from_str::<RouterConfig>("timeouts: {server: 0}").is_err());
    }

    /// The bundled example and every router config embedded in the
    /// deployment's ConfigMaps parse, and their selectors are valid.
    #[test]
    fn bundled_configs_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let cfg = RouterConfig::load(&root.join("config/router.yaml")).unwrap();
        cfg.shard().unwrap();
        crate::egress::EgressConfig::load(&root.join("config/egress.yaml")).unwrap();
        let mut seen = 0;
        for f in std::fs::read_dir(root.join("config/kubernetes")).unwrap() {
            let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let v = serde_yaml::Value::deserialize(doc).unwrap();
                if v["kind"].as_str() != Some("ConfigMap") {
                    continue;
                }
                let data = v["data"].as_mapping().unwrap();
                if v["metadata"]["name"].as_str() == Some("gatehouse-egress") {
                    let e: crate::egress::EgressConfig =
                        serde_yaml::from_str(data["egress.yaml"].as_str().unwrap()).unwrap();
                    assert!(!e.allow.is_empty());
                    let d = crate::egress::rules::parse_destinations(
                        data["destinations"].as_str().unwrap(),
                    )
                    .unwrap();
                    assert_eq!(d.rules.len(), 3);
                    continue;
                }
                for (k, body) in data {
                    let cfg: RouterConfig = serde_yaml::from_str(body.as_str().unwrap())
                        .unwrap_or_else(|e| panic!("{k:?}: {e}"));
                    assert!(cfg.kube.enabled, "{k:?}");
                    cfg.shard().unwrap();
                    seen += 1;
                }
            }
        }
        assert_eq!(seen, 3, "router.yaml, dmz.yaml, intranet.yaml");
    }
}
