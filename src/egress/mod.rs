//! The egress gateway (`gatehouse egress`): a fixed, audited exit from the
//! cluster. Clients inside connect to a local port; the gateway connects to
//! the rule's destination from one source address (`--source`), so the
//! intranet firewall only needs to admit that address.
//!
//! Per connection: allow-list of client networks, per-destination
//! connection limit, connect with timeout and bounded retries over every
//! address the name resolves to (names are resolved per connection, so a DNS
//! change is followed as soon as the resolver's TTL lets it), both
//! directions copied with half-close and an idle timeout, one JSON log line
//! at the end. The destinations file is re-read when it changes (a ConfigMap
//! update): new ports open, removed ports stop accepting, changed
//! destinations apply to new connections; open connections are untouched.

pub mod proxy;
pub mod rules;
mod udp;

use crate::model::ipnet::IpNet;
use anyhow::Context as _;
use arc_swap::ArcSwap;
use rules::{Destinations, Host, Proto, Rule};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// `gatehouse egress` settings (config file; flags and env override).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EgressConfig {
    /// Address the local ports listen on.
    pub listen: IpAddr,
    /// EGRESS_SOURCE: outgoing connections are bound to this address.
    pub source: Option<IpAddr>,
    /// File with EGRESS_DESTINATION rules (watched).
    pub destinations_file: Option<PathBuf>,
    /// EGRESS_DESTINATION rules given inline (env), used when no file is.
    pub destinations: Option<String>,
    /// Ports the fallback IP line serves (`5432,9000-9010`).
    pub fallback_ports: String,
    /// Client networks allowed to use the gateway; everything else is
    /// refused. Empty: everything is refused (and the log says so).
    pub allow: Vec<String>,
    /// Open connections per destination before new ones are refused.
    pub max_connections_per_destination: u64,
    #[serde(deserialize_with = "crate::config::de_duration")]
    pub connect_timeout: Duration,
    /// Connection attempts over the destination's addresses (≥ 1).
    pub connect_attempts: u32,
    /// Close a TCP connection after this long without a byte either way.
    #[serde(deserialize_with = "crate::config::de_duration")]
    pub idle_timeout: Duration,
    /// Forget a UDP flow after this long without a datagram.
    #[serde(deserialize_with = "crate::config::de_duration")]
    pub udp_idle_timeout: Duration,
    /// HTTP proxy mode: listen here (CONNECT and absolute-URI requests).
    pub http_proxy: Option<SocketAddr>,
    /// EGRESS_HTTP_PROXY_DESTINATION policy file (watched).
    pub http_proxy_destinations_file: Option<PathBuf>,
    /// The policy inline (env), used when no file is.
    pub http_proxy_destinations: Option<String>,
    /// Health, readiness and metrics.
    pub admin: Option<SocketAddr>,
    /// One JSON line per connection on stdout.
    pub access_log: crate::config::AccessLogMode,
    /// How often the rule files are checked for changes.
    #[serde(deserialize_with = "crate::config::de_duration")]
    pub reload_interval: Duration,
}

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig {
            listen: IpAddr::from([0, 0, 0, 0]),
            source: None,
            destinations_file: None,
            destinations: None,
            fallback_ports: String::new(),
            allow: Vec::new(),
            max_connections_per_destination: 1024,
            connect_timeout: Duration::from_secs(5),
            connect_attempts: 3,
            idle_timeout: Duration::from_secs(3600),
            udp_idle_timeout: Duration::from_secs(60),
            http_proxy: None,
            http_proxy_destinations_file: None,
            http_proxy_destinations: None,
            admin: Some(SocketAddr::from(([127, 0, 0, 1], 1937))),
            access_log: crate::config::AccessLogMode::Json,
            reload_interval: Duration::from_secs(1),
        }
    }
}

impl EgressConfig {
    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut cfg: EgressConfig = if text.trim().is_empty() {
            EgressConfig::default()
        } else {
            serde_yaml::from_str(&text).with_context(|| format!("{}", path.display()))?
        };
        let base = path.parent().unwrap_or(std::path::Path::new("."));
        for p in [
            &mut cfg.destinations_file,
            &mut cfg.http_proxy_destinations_file,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(cfg)
    }

    fn destinations_text(&self) -> anyhow::Result<Option<String>> {
        file_or_inline(&self.destinations_file, &self.destinations)
    }

    fn proxy_text(&self) -> anyhow::Result<Option<String>> {
        file_or_inline(
            &self.http_proxy_destinations_file,
            &self.http_proxy_destinations,
        )
    }

    /// Parse and check the rules: the same checks at start and on reload.
    fn rules(&self, text: &str) -> anyhow::Result<Vec<Rule>> {
        let d: Destinations = rules::parse_destinations(text)
            .map_err(|e| anyhow::anyhow!("EGRESS_DESTINATION {e}"))?;
        let ports = rules::parse_port_ranges(&self.fallback_ports).map_err(anyhow::Error::msg)?;
        d.expand(&ports).map_err(anyhow::Error::msg)
    }
}

/// Rules from a file when one is given (re-read on every call), else the
/// inline text (an environment variable).
fn file_or_inline(
    file: &Option<PathBuf>,
    inline: &Option<String>,
) -> anyhow::Result<Option<String>> {
    match (file, inline) {
        (Some(f), _) => Ok(Some(
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
        )),
        (None, t) => Ok(t.clone()),
    }
}

/// Copy buffer per direction: database dumps and bulk loads go through here;
/// 64 KiB moves them in an eighth of the system calls of tokio's default.
pub(crate) const BULK_BUF: usize = 64 * 1024;

/// Counters per destination (`host:port` of a rule), for /metrics.
#[derive(Debug, Default)]
pub struct DestStats {
    pub active: AtomicU64,
    pub total: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    pub connect_errors: AtomicU64,
    pub refused_limit: AtomicU64,
}

/// Gateway-wide counters.
#[derive(Debug, Default)]
pub struct Counters {
    pub refused_not_allowed: AtomicU64,
    pub reloads: AtomicU64,
    pub reload_errors: AtomicU64,
    pub proxy_denied: AtomicU64,
}

pub(crate) struct Shared {
    cfg: EgressConfig,
    allow: Vec<IpNet>,
    /// Current rule per (local port, protocol).
    rules: ArcSwap<HashMap<(u16, Proto), Rule>>,
    stats: Mutex<HashMap<String, Arc<DestStats>>>,
    pub(crate) counters: Counters,
    log: Option<crate::telemetry::access_log::AccessLog>,
    proxy_policy: ArcSwap<rules::ProxyPolicy>,
}

impl Shared {
    pub(crate) fn allowed(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|n| n.contains(ip))
    }

    pub(crate) fn stats(&self, dest: &str) -> Arc<DestStats> {
        let mut m = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(dest.to_owned()).or_default().clone()
    }

    pub(crate) fn log(&self, v: serde_json::Value) {
        if let Some(l) = &self.log {
            l.push_json(v.to_string());
        }
    }

    /// Connect to `host:port` from the source address: every resolved
    /// address in turn, `connect_attempts` rounds, each connect bounded by
    /// `connect_timeout`. Names are resolved on every call.
    pub(crate) async fn connect(&self, host: &Host, port: u16) -> std::io::Result<TcpStream> {
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
        let attempts = self.cfg.connect_attempts.max(1);
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
            }
            let addrs: Vec<SocketAddr> = match host {
                Host::Ip(ip) => vec![SocketAddr::new(*ip, port)],
                Host::Name(n) => match tokio::time::timeout(
                    self.cfg.connect_timeout,
                    tokio::net::lookup_host((n.as_str(), port)),
                )
                .await
                {
                    Ok(Ok(a)) => a.collect(),
                    Ok(Err(e)) => {
                        last = e;
                        continue;
                    }
                    Err(_) => {
                        last = std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "name resolution timed out",
                        );
                        continue;
                    }
                },
            };
            for a in addrs {
                match self.connect_one(a).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last = e,
                }
            }
        }
        Err(last)
    }

    async fn connect_one(&self, to: SocketAddr) -> std::io::Result<TcpStream> {
        let sock = if to.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(src) = self.cfg.source {
            sock.bind(SocketAddr::new(src, 0))?;
        }
        let s = tokio::time::timeout(self.cfg.connect_timeout, sock.connect(to))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        let _ = s.set_nodelay(true);
        Ok(s)
    }
}

/// A running gateway.
pub struct Running {
    pub admin: Option<SocketAddr>,
    pub http_proxy: Option<SocketAddr>,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("admin", &self.admin)
            .finish()
    }
}

impl Running {
    /// The rules now in force, sorted by port.
    pub fn rules(&self) -> Vec<Rule> {
        let mut r: Vec<Rule> = self.shared.rules.load().values().cloned().collect();
        r.sort_by_key(|r| (r.local_port, r.proto));
        r
    }

    pub fn reloads(&self) -> u64 {
        self.shared.counters.reloads.load(Ordering::Relaxed)
    }

    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

/// Start the gateway: parse everything (errors are startup errors), bind
/// every port, then serve.
pub async fn start(cfg: EgressConfig) -> anyhow::Result<Running> {
    let allow = cfg
        .allow
        .iter()
        .map(|s| s.parse::<IpNet>().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()
        .context("allow")?;
    if allow.is_empty() {
        warn!("no allowed client networks (allow: [...]): every connection will be refused");
    }
    let text = cfg.destinations_text()?;
    if text.is_none() && cfg.http_proxy.is_none() {
        anyhow::bail!(
            "no destinations: give --destinations FILE, EGRESS_DESTINATION, or an HTTP proxy"
        );
    }
    let rules = match &text {
        Some(t) => cfg.rules(t)?,
        None => Vec::new(),
    };
    let proxy_policy = match cfg.proxy_text()? {
        Some(t) => rules::parse_proxy_destinations(&t)
            .map_err(|e| anyhow::anyhow!("EGRESS_HTTP_PROXY_DESTINATION {e}"))?,
        None => rules::ProxyPolicy::default(),
    };
    let log = (cfg.access_log == crate::config::AccessLogMode::Json)
        .then(|| crate::telemetry::access_log::AccessLog::spawn(8192));
    let shared = Arc::new(Shared {
        allow,
        rules: ArcSwap::from_pointee(HashMap::new()),
        stats: Mutex::default(),
        counters: Counters::default(),
        log,
        proxy_policy: ArcSwap::from_pointee(proxy_policy),
        cfg: cfg.clone(),
    });
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut listeners = Listeners::default();
    listeners.apply(&shared, rules).await?;
    let mut tasks = Vec::new();
    let admin = match cfg.admin {
        Some(a) => {
            let l = TcpListener::bind(a)
                .await
                .with_context(|| format!("binding admin listener {a}"))?;
            let addr = l.local_addr().ok();
            tasks.push(tokio::spawn(admin(l, shared.clone(), shutdown_rx.clone())));
            addr
        }
        None => None,
    };
    let http_proxy = match cfg.http_proxy {
        Some(a) => {
            let l = TcpListener::bind(a)
                .await
                .with_context(|| format!("binding HTTP proxy listener {a}"))?;
            let addr = l.local_addr().ok();
            tasks.push(tokio::spawn(proxy::serve(
                l,
                shared.clone(),
                shutdown_rx.clone(),
            )));
            addr
        }
        None => None,
    };
    info!(
        ports = shared.rules.load().len(),
        source = %cfg.source.map(|s| s.to_string()).unwrap_or_else(|| "(kernel's choice)".into()),
        http_proxy = %http_proxy.map(|a| a.to_string()).unwrap_or_default(),
        "egress gateway listening"
    );
    tasks.push(tokio::spawn(reload_loop(
        shared.clone(),
        listeners,
        shutdown_rx,
    )));
    Ok(Running {
        admin,
        http_proxy,
        shared,
        shutdown,
        tasks,
    })
}

/// The listener task of every (port, protocol).
#[derive(Default)]
struct Listeners {
    running: HashMap<(u16, Proto), JoinHandle<()>>,
}

impl Drop for Listeners {
    fn drop(&mut self) {
        for t in self.running.values() {
            t.abort();
        }
    }
}

impl Listeners {
    /// Make the listeners match `rules`: bind new ports first (a bind error
    /// leaves everything as it was), then publish the rules, then stop the
    /// ports no rule names. Connections in progress are separate tasks and
    /// keep running.
    async fn apply(&mut self, shared: &Arc<Shared>, rules: Vec<Rule>) -> anyhow::Result<()> {
        let want: HashMap<(u16, Proto), Rule> = rules
            .into_iter()
            .map(|r| ((r.local_port, r.proto), r))
            .collect();
        let mut new = Vec::new();
        for key in want.keys() {
            if self.running.contains_key(key) {
                continue;
            }
            let addr = SocketAddr::new(shared.cfg.listen, key.0);
            match key.1 {
                Proto::Tcp => {
                    let l = TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("binding tcp {addr}"))?;
                    new.push((*key, Bound::Tcp(l)));
                }
                Proto::Udp => {
                    let s = tokio::net::UdpSocket::bind(addr)
                        .await
                        .with_context(|| format!("binding udp {addr}"))?;
                    new.push((*key, Bound::Udp(s)));
                }
            }
        }
        shared.rules.store(Arc::new(want));
        for (key, b) in new {
            let task = match b {
                Bound::Tcp(l) => tokio::spawn(accept_tcp(l, key.0, shared.clone())),
                Bound::Udp(s) => tokio::spawn(udp::serve(s, key.0, shared.clone())),
            };
            self.running.insert(key, task);
        }
        let rules = shared.rules.load();
        self.running.retain(|key, task| {
            let keep = rules.contains_key(key);
            if !keep {
                task.abort();
                info!(port = key.0, proto = %key.1, "port no longer in the rules; stopped accepting");
            }
            keep
        });
        Ok(())
    }
}

enum Bound {
    Tcp(TcpListener),
    Udp(tokio::net::UdpSocket),
}

async fn accept_tcp(l: TcpListener, port: u16, shared: Arc<Shared>) {
    loop {
        match l.accept().await {
            Ok((s, peer)) => {
                tokio::spawn(handle_tcp(s, peer, port, shared.clone()));
            }
            Err(e) => {
                warn!(port, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

async fn handle_tcp(client: TcpStream, peer: SocketAddr, port: u16, shared: Arc<Shared>) {
    let started = Instant::now();
    let Some(rule) = shared.rules.load().get(&(port, Proto::Tcp)).cloned() else {
        return;
    };
    let dest = rule.destination();
    let line = |close: &str, upstream: Option<SocketAddr>, up: u64, down: u64| {
        serde_json::json!({
            "time": unix_now(),
            "kind": "egress",
            "client": peer.to_string(),
            "local_port": port,
            "proto": "tcp",
            "destination": dest,
            "upstream": upstream.map(|a| a.to_string()),
            "bytes_up": up,
            "bytes_down": down,
            "duration_ms": started.elapsed().as_millis() as u64,
            "close": close,
        })
    };
    if !shared.allowed(peer.ip()) {
        shared
            .counters
            .refused_not_allowed
            .fetch_add(1, Ordering::Relaxed);
        shared.log(line("refused: client not in the allow-list", None, 0, 0));
        return;
    }
    let stats = shared.stats(&dest);
    if stats.active.fetch_add(1, Ordering::Relaxed) >= shared.cfg.max_connections_per_destination {
        stats.active.fetch_sub(1, Ordering::Relaxed);
        stats.refused_limit.fetch_add(1, Ordering::Relaxed);
        shared.log(line("refused: destination connection limit", None, 0, 0));
        return;
    }
    stats.total.fetch_add(1, Ordering::Relaxed);
    let upstream = match shared.connect(&rule.host, rule.port).await {
        Ok(u) => u,
        Err(e) => {
            stats.connect_errors.fetch_add(1, Ordering::Relaxed);
            stats.active.fetch_sub(1, Ordering::Relaxed);
            warn!(client = %peer, destination = %dest, error = %e, "egress connect failed");
            shared.log(line(&format!("connect failed: {e}"), None, 0, 0));
            return;
        }
    };
    let to = upstream.peer_addr().ok();
    let r = crate::proxy::tunnel::pipe_counted(client, upstream, shared.cfg.idle_timeout, BULK_BUF)
        .await;
    stats.bytes_up.fetch_add(r.a_to_b, Ordering::Relaxed);
    stats.bytes_down.fetch_add(r.b_to_a, Ordering::Relaxed);
    stats.active.fetch_sub(1, Ordering::Relaxed);
    shared.log(line(&r.reason, to, r.a_to_b, r.b_to_a));
}

/// Re-read the rule files when they change; apply what parses, keep the
/// rest and say why.
async fn reload_loop(
    shared: Arc<Shared>,
    mut listeners: Listeners,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last_rules = shared.cfg.destinations_text().ok().flatten();
    let mut last_proxy = shared.cfg.proxy_text().ok().flatten();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(shared.cfg.reload_interval) => {}
            _ = crate::app_signal::stopped(&mut shutdown) => return,
        }
        if shared.cfg.destinations_file.is_some() {
            match shared.cfg.destinations_text() {
                Ok(Some(t)) if Some(&t) != last_rules.as_ref() => {
                    let result = match shared.cfg.rules(&t) {
                        Ok(r) => listeners.apply(&shared, r).await,
                        Err(e) => Err(e),
                    };
                    match result {
                        Ok(()) => {
                            shared.counters.reloads.fetch_add(1, Ordering::Relaxed);
                            info!(
                                ports = shared.rules.load().len(),
                                "egress destinations reloaded"
                            );
                        }
                        Err(e) => {
                            shared
                                .counters
                                .reload_errors
                                .fetch_add(1, Ordering::Relaxed);
                            warn!(error = %format!("{e:#}"), "egress destinations not reloaded; keeping the previous rules");
                        }
                    }
                    last_rules = Some(t);
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "egress destinations unreadable; keeping the previous rules")
                }
            }
        }
        if shared.cfg.http_proxy_destinations_file.is_some() {
            if let Ok(Some(t)) = shared.cfg.proxy_text() {
                if Some(&t) != last_proxy.as_ref() {
                    match rules::parse_proxy_destinations(&t) {
                        Ok(p) => {
                            shared.proxy_policy.store(Arc::new(p));
                            shared.counters.reloads.fetch_add(1, Ordering::Relaxed);
                            info!("HTTP proxy destinations reloaded");
                        }
                        Err(e) => {
                            shared
                                .counters
                                .reload_errors
                                .fetch_add(1, Ordering::Relaxed);
                            warn!(error = %e, "HTTP proxy destinations not reloaded; keeping the previous policy");
                        }
                    }
                    last_proxy = Some(t);
                }
            }
        }
    }
}

async fn admin(l: TcpListener, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    use http::{Response, StatusCode};
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    loop {
        let s = tokio::select! {
            r = l.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
            _ = crate::app_signal::stopped(&mut shutdown) => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let shared = shared.clone();
                async move {
                    let (code, body) = match req.uri().path() {
                        "/healthz" | "/readyz" => (StatusCode::OK, "ok\n".to_owned()),
                        "/metrics" => (StatusCode::OK, metrics(&shared)),
                        _ => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
                    };
                    let mut r = Response::new(Full::new(bytes::Bytes::from(body)));
                    *r.status_mut() = code;
                    Ok::<_, std::convert::Infallible>(r)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}

fn metrics(shared: &Shared) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let c = &shared.counters;
    let _ = write!(
        out,
        "# HELP gatehouse_egress_refused_total Connections refused before connecting, by reason.\n\
         # TYPE gatehouse_egress_refused_total counter\n\
         gatehouse_egress_refused_total{{reason=\"not_allowed\"}} {}\n\
         gatehouse_egress_refused_total{{reason=\"proxy_denied\"}} {}\n\
         # HELP gatehouse_egress_reloads_total Rule reloads applied and refused.\n\
         # TYPE gatehouse_egress_reloads_total counter\n\
         gatehouse_egress_reloads_total{{result=\"applied\"}} {}\n\
         gatehouse_egress_reloads_total{{result=\"refused\"}} {}\n",
        c.refused_not_allowed.load(Ordering::Relaxed),
        c.proxy_denied.load(Ordering::Relaxed),
        c.reloads.load(Ordering::Relaxed),
        c.reload_errors.load(Ordering::Relaxed),
    );
    let stats = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
    let mut dests: Vec<_> = stats.iter().collect();
    dests.sort_by(|a, b| a.0.cmp(b.0));
    for (name, help, f) in [
        (
            "gatehouse_egress_connections_active",
            "Open connections per destination.",
            (|s: &DestStats| s.active.load(Ordering::Relaxed)) as fn(&DestStats) -> u64,
        ),
        (
            "gatehouse_egress_connections_total",
            "Connections accepted per destination.",
            |s| s.total.load(Ordering::Relaxed),
        ),
        (
            "gatehouse_egress_bytes_up_total",
            "Bytes from clients to the destination.",
            |s| s.bytes_up.load(Ordering::Relaxed),
        ),
        (
            "gatehouse_egress_bytes_down_total",
            "Bytes from the destination to clients.",
            |s| s.bytes_down.load(Ordering::Relaxed),
        ),
        (
            "gatehouse_egress_connect_errors_total",
            "Connections whose destination could not be reached.",
            |s| s.connect_errors.load(Ordering::Relaxed),
        ),
        (
            "gatehouse_egress_limit_refused_total",
            "Connections refused by the per-destination limit.",
            |s| s.refused_limit.load(Ordering::Relaxed),
        ),
    ] {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (d, s) in &dests {
            let _ = writeln!(
                out,
                "{name}{{destination=\"{}\"}} {}",
                d.replace('"', ""),
                f(s)
            );
        }
    }
    out
}
