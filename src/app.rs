//! Wiring: source → compiler task → table store → listeners, and shutdown.

use crate::admin::{self, AdminState};
use crate::compile::{self, CompileConfig};
use crate::config::{AccessLogMode, RouterConfig};
use crate::model::store::Change;
use crate::model::Objects;
use crate::pool::{PoolConfig, Upstreams};
use crate::proxy::{self, Proxy, ServerSettings};
use crate::source::manifests::{self, ManifestsDir};
use crate::table::TableStore;
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::metrics::CompileKind;
use anyhow::Context as _;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// A started router.
#[derive(Debug)]
pub struct Running {
    /// Where the plain HTTP listener is bound (port 0 resolved).
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub store: Arc<TableStore>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Kept alive while the router runs (dropping it stops the watchers).
    source: Option<crate::source::kube::KubeSource>,
    /// Flushed at shutdown, after the drain.
    access_log: Option<Arc<AccessLog>>,
}

impl Running {
    /// Stop accepting, drain in-flight requests (up to the drain deadline)
    /// and return when every listener is done.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        if let Some(log) = &self.access_log {
            log.flush(Duration::from_secs(2)).await;
        }
    }
}

/// How long a burst of source changes may take to settle into one compile.
const COALESCE: Duration = Duration::from_millis(10);

/// Start the router: load the source, publish the first table, bind.
pub async fn start(cfg: RouterConfig) -> anyhow::Result<Running> {
    if cfg.kube.enabled {
        return start_kube(cfg).await;
    }
    let dir = cfg
        .manifests
        .clone()
        .context("no source: pass --manifests DIR or --kube")?;
    let objects = manifests::spawn_watch(ManifestsDir::new(dir));
    start_with_source(cfg, objects).await
}

/// `--kube`: watch the API server, and write route status back.
async fn start_kube(cfg: RouterConfig) -> anyhow::Result<Running> {
    use crate::source::{kube, kube_status};
    cfg.shard().map_err(anyhow::Error::msg)?;
    let client = kube::client(cfg.kube.kubeconfig.as_deref()).await?;
    let source = kube::spawn(
        client.clone(),
        kube::KubeOptions {
            route_selector: cfg.route_selector.clone(),
        },
    )
    .await;
    let status = cfg.kube.write_status.then(|| kube_status::StatusConfig {
        router_name: cfg.router_name.clone(),
        canonical_hostname: cfg.kube.canonical_hostname.clone(),
        ingress_addresses: cfg.kube.ingress_status.clone(),
    });
    let mut running = start_inner(cfg, source.objects.clone(), Some(source.health.clone())).await?;
    if let Some(status) = status {
        running.tasks.push(tokio::spawn(kube_status::run(
            client,
            running.store.clone(),
            source.observations.clone(),
            status,
            running.shutdown.subscribe(),
        )));
    }
    running.source = Some(source);
    Ok(running)
}

/// Start with any source that publishes `Objects` snapshots.
pub async fn start_with_source(
    cfg: RouterConfig,
    objects: watch::Receiver<Arc<Objects>>,
) -> anyhow::Result<Running> {
    start_inner(cfg, objects, None).await
}

async fn start_inner(
    cfg: RouterConfig,
    objects: watch::Receiver<Arc<Objects>>,
    source_health: Option<Arc<crate::source::kube::SourceHealth>>,
) -> anyhow::Result<Running> {
    let store = Arc::new(TableStore::new());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();

    // Bind first: a port conflict is a startup error, not a log line later.
    let http = match cfg.http {
        Some(a) => Some(
            bind_public(a, cfg.reuse_port).with_context(|| format!("binding http listener {a}"))?,
        ),
        None => None,
    };
    let admin = match cfg.admin {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .with_context(|| format!("binding admin listener {a}"))?,
        ),
        None => None,
    };
    let https = match cfg.https {
        Some(a) => Some(
            bind_public(a, cfg.reuse_port)
                .with_context(|| format!("binding https listener {a}"))?,
        ),
        None => None,
    };
    if cfg.reuse_port && (cfg.http.is_some() || cfg.https.is_some()) {
        warn_if_no_migration();
    }
    // Read before binding anything public: a missing or empty token file is
    // a startup error, never an open admin API.
    let admin_token = match &cfg.admin_token_file {
        Some(p) => {
            let t = std::fs::read_to_string(p)
                .with_context(|| format!("reading admin token file {}", p.display()))?;
            let t = t.trim().to_owned();
            anyhow::ensure!(!t.is_empty(), "admin token file {} is empty", p.display());
            Some(Arc::<str>::from(t))
        }
        None => None,
    };
    let mut compile_cfg = cfg.compile_config();
    compile_cfg.destination_trust = destination_trust(&cfg.tls)?;
    let server_tls = match &https {
        Some(_) => Some(Arc::new(server_tls(&cfg.tls, store.clone())?)),
        None => None,
    };

    // The manifests source's first value is the directory's contents; the
    // Kubernetes source's first value is a placeholder until every kind is
    // listed, and must not become a (ready, empty) table.
    let wait_for_first = source_health.is_some();
    tasks.push(tokio::spawn(compile_loop(
        objects,
        store.clone(),
        compile_cfg,
        shutdown_rx.clone(),
        wait_for_first,
    )));
    // Routes are served only once the first table is live (/readyz says so).
    let mut gen = store.subscribe();
    let _ = tokio::time::timeout(Duration::from_secs(30), gen.wait_for(|_| store.is_ready())).await;

    let http_addr = http.as_ref().and_then(|l| l.local_addr().ok());
    let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
    let https_addr = https.as_ref().and_then(|l| l.local_addr().ok());
    let proxy_protocol = proxy_trusted(&cfg)?;
    // One proxy (pools, access log) for both listeners.
    let proxy = Arc::new(Proxy {
        store: store.clone(),
        upstreams: Upstreams::new(&PoolConfig {
            connect_timeout: cfg.timeouts.connect,
            idle_timeout: cfg.timeouts.upstream_idle,
            purge_delay: cfg.timeouts.upstream_pool_purge,
            ..PoolConfig::default()
        }),
        access_log: (cfg.access_log == AccessLogMode::Json)
            .then(|| Arc::new(AccessLog::spawn(cfg.access_log_queue.max(1)))),
        log_sample: cfg.access_log_sample.clamp(0.0, 1.0),
        health: cfg.health.policy(),
        retry_budget: Default::default(),
        limits: Default::default(),
        proxy_protocol,
        proxy_to_passthrough: cfg.proxy_protocol_to_passthrough,
        client_timeout: cfg.timeouts.client,
        proxy_to_upstreams: cfg.proxy_protocol_to_upstreams,
        conn_limits: crate::proxy::conn_limits::ConnLimits::new(
            cfg.max_connections,
            cfg.max_connections_per_source,
        ),
    });
    let settings = ServerSettings {
        header_timeout: cfg.timeouts.http_request,
        keep_alive_timeout: cfg.timeouts.http_keep_alive,
        send_timeout: cfg.timeouts.client,
        max_header_bytes: cfg.max_header_bytes.max(1024),
        drain: cfg.timeouts.drain,
    };
    if let Some(l) = http {
        tasks.push(tokio::spawn(proxy::serve_http(
            l,
            proxy.clone(),
            settings.clone(),
            shutdown_rx.clone(),
        )));
    }
    if let (Some(l), Some(tls)) = (https, server_tls) {
        tasks.push(tokio::spawn(crate::tls::listener::serve_https(
            l,
            proxy.clone(),
            tls,
            settings,
            shutdown_rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(crate::balance::checks::run(
        store.clone(),
        cfg.timeouts.connect,
        shutdown_rx.clone(),
    )));
    if let Some(l) = admin {
        let state = AdminState {
            store: store.clone(),
            router_name: cfg.router_name.clone(),
            token: admin_token,
            source: source_health,
        };
        tasks.push(tokio::spawn(admin::serve(l, state, shutdown_rx.clone())));
    }
    info!(
        http = %http_addr.map(|a| a.to_string()).unwrap_or_default(),
        https = %https_addr.map(|a| a.to_string()).unwrap_or_default(),
        admin = %admin_addr.map(|a| a.to_string()).unwrap_or_default(),
        router = %cfg.router_name,
        "gatehouse listening"
    );
    Ok(Running {
        http: http_addr,
        https: https_addr,
        admin: admin_addr,
        store,
        shutdown,
        tasks,
        source: None,
        access_log: proxy.access_log.clone(),
    })
}

/// Publishes between two sweeps of the live-state and counter registries
/// (always after a full compile).
const PRUNE_EVERY: u64 = 16;

/// Turn every source snapshot into a published table: a full compile when
/// routes or services changed, an endpoint-only update otherwise.
async fn compile_loop(
    mut objects: watch::Receiver<Arc<Objects>>,
    store: Arc<TableStore>,
    cfg: CompileConfig,
    mut shutdown: watch::Receiver<bool>,
    wait_for_first: bool,
) {
    let cfg = Arc::new(cfg);
    let mut prev: Option<Arc<Objects>> = None;
    let mut generation = 0u64;
    let mut logged: HashSet<compile::Diagnostic> = HashSet::new();
    if !wait_for_first {
        objects.mark_changed();
    }
    // After a compile that took T, the next one starts no sooner than T
    // later: however fast the source changes, compiling takes at most half
    // a core, and changes arriving meanwhile fold into one compile (the
    // OpenShift router reloads at most every 5 s). Small tables and
    // endpoint-only updates take a millisecond, so they barely wait.
    let mut next_allowed = tokio::time::Instant::now();
    // Compiles and releases run in order on one control-plane thread.
    let mut worker: Option<crate::priority::Worker> = None;
    loop {
        tokio::select! {
            r = objects.changed() => if r.is_err() { return },
            _ = crate::app_signal::stopped(&mut shutdown) => return,
        }
        tokio::time::sleep_until(next_allowed.max(tokio::time::Instant::now() + COALESCE)).await;
        let current = objects.borrow_and_update().clone();
        let change = match &prev {
            Some(p) => current.change_from(p),
            None => Change::Full,
        };
        if change == Change::None {
            continue;
        }
        crate::telemetry::metrics::TABLE.last_change_ms.store(
            crate::telemetry::metrics::unix_ms(),
            std::sync::atomic::Ordering::Relaxed,
        );
        generation += 1;
        let started = Instant::now();
        let table = store.load_full();
        let (cfg2, cur2, prev2) = (cfg.clone(), current.clone(), prev.clone());
        // On the control-plane thread, at a lower CPU priority: when the
        // proxy is saturated, requests come first and the table change
        // waits (nice 10 still gets ~10 % of a contended core).
        let (done, compiled) = tokio::sync::oneshot::channel();
        if worker.is_none() {
            worker = crate::priority::Worker::spawn("table-compile")
                .map_err(
                    |e| warn!(error = %e, "no control-plane thread; the next change tries again"),
                )
                .ok();
        }
        let job = move || {
            let c = match (change, &prev2) {
                (Change::EndpointsOnly(services), _) => (
                    compile::update_endpoints(&table, &cur2, &services, generation, &cfg2),
                    CompileKind::Endpoints,
                ),
                // A few routes changed: rebuild their hosts only; else
                // everything, reusing unchanged routes' entries.
                (Change::RoutesOnly, Some(p)) => {
                    match compile::compile_changed_routes(p, &cur2, &cfg2, generation, &table) {
                        Some(c) => (c, CompileKind::Routes),
                        None => (
                            compile::compile_reusing(&cur2, &cfg2, generation, Some(&table)),
                            CompileKind::Full,
                        ),
                    }
                }
                _ => (
                    compile::compile(&cur2, &cfg2, generation),
                    CompileKind::Full,
                ),
            };
            let _ = done.send(c);
        };
        let spawned = match &worker {
            Some(w) => w.run(job).map_err(|_| "the control-plane thread is gone"),
            None => Err("no control-plane thread"),
        };
        if spawned.is_err() {
            worker = None;
        }
        let compiled = match spawned {
            Ok(()) => compiled
                .await
                .map_err(|_| "the compile panicked".to_owned()),
            Err(e) => Err(e.to_owned()),
        };
        let (compiled, kind) = match compiled {
            Ok(c) => c,
            Err(e) => {
                // A bug in compile must not take the router down: keep the
                // last table and say so.
                crate::telemetry::metrics::TABLE
                    .failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                warn!(error = %e, "compile failed; keeping the previous table");
                continue;
            }
        };
        // Log each problem once, not on every recompile; a changed route's
        // problems again.
        if !compiled.renewed.is_empty() {
            let renewed: HashSet<&str> = compiled.renewed.iter().map(String::as_str).collect();
            logged.retain(|d| !renewed.contains(d.object.as_str()));
        }
        let now: HashSet<_> = compiled.diagnostics.iter().cloned().collect();
        for d in now.difference(&logged) {
            if d.message.contains("cloud metadata address; dropped") {
                compile::DROPPED_LOCAL_ENDPOINTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let file = current.origins.get(&d.object).map(|f| &**f).unwrap_or("");
            warn!(object = %d.object, file, problem = %d.message, "route problem");
        }
        if kind == CompileKind::Full {
            logged = now;
        } else {
            logged.extend(now);
        }
        let t = compiled.table;
        let (hosts, routes) = (t.host_count(), t.admitted_routes);
        let rejected = t.statuses.len() - routes;
        let old_table = store.publish(t);
        let took = started.elapsed();
        crate::telemetry::metrics::TABLE.record(kind, took);
        next_allowed = tokio::time::Instant::now() + took;
        let old_objects = prev.replace(current);
        // Freeing a 10k-route table takes milliseconds: not on a thread that
        // serves requests, and at the control plane's priority (a blocking
        // pool thread would run it at the workers' own).
        let (live, stats) = (cfg.live.clone(), cfg.stats.clone());
        // Endpoints and routes no table refers to any more lose their live
        // state and counters at once (their registries hold them weakly);
        // the registries' dead entries are swept after a full compile and
        // every PRUNE_EVERY publishes, not after each: a sweep visits every
        // endpoint and route (10k), which at 10 changes a second was a
        // large share of a change's CPU.
        let prune = kind == CompileKind::Full || generation.is_multiple_of(PRUNE_EVERY);
        let release = move || {
            drop((old_table, old_objects));
            if prune {
                live.prune();
                stats.prune();
            }
        };
        // Queued behind nothing (the compile is done): runs now, and the
        // next compile waits for it on the same thread.
        if let Some(Err(job)) = worker.as_ref().map(|w| w.run(release)) {
            warn!("no control-plane thread to release the previous table; freed here instead");
            drop(job);
            worker = None;
        }
        info!(
            generation,
            kind = kind.as_str(),
            hosts,
            admitted = routes,
            rejected,
            micros = started.elapsed().as_micros() as u64,
            "table published"
        );
    }
}

/// A public listener. With `reuse_port` (SO_REUSEPORT) a new process can
/// bind the same port while the old one drains: a rolling restart never
/// refuses a connection.
fn bind_public(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Connections already queued on a listener when it closes are reset,
/// unless the kernel migrates them to another listener of the port
/// (net.ipv4.tcp_migrate_req, Linux 5.14+). Say so once at start.
fn warn_if_no_migration() {
    match std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req") {
        Ok(v) if v.trim() == "1" => {}
        Ok(_) => warn!("net.ipv4.tcp_migrate_req is 0: on a rolling restart, connections queued on the old process when it closes its listeners are reset; set it to 1 for zero-loss restarts"),
        Err(_) => warn!("this kernel cannot migrate queued connections between listeners (net.ipv4.tcp_migrate_req): a rolling restart may reset a few connections"),
    }
}

/// `accept_proxy` with its trusted ranges, parsed (a typo must not open
/// the router to forged client addresses, nor silently turn it off).
fn proxy_trusted(cfg: &RouterConfig) -> anyhow::Result<Option<Arc<[crate::model::ipnet::IpNet]>>> {
    if !cfg.accept_proxy {
        return Ok(None);
    }
    anyhow::ensure!(
        !cfg.proxy_trusted_sources.is_empty(),
        "accept_proxy needs proxy_trusted_sources: the networks of the load balancers that send PROXY headers"
    );
    let nets = cfg
        .proxy_trusted_sources
        .iter()
        .map(|s| {
            s.trim()
                .parse::<crate::model::ipnet::IpNet>()
                .map_err(|e| anyhow::anyhow!("proxy_trusted_sources: {s:?}: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    info!(trusted = ?cfg.proxy_trusted_sources, "PROXY protocol on: headers accepted from the trusted sources only");
    Ok(Some(nets.into()))
}

/// How re-encrypt routes without their own CA verify endpoints.
fn destination_trust(
    t: &crate::config::TlsSettings,
) -> anyhow::Result<crate::compile::tls::DestinationTrust> {
    use crate::compile::tls::DestinationTrust;
    if let Some(p) = &t.default_destination_ca {
        let pem = std::fs::read_to_string(p)
            .with_context(|| format!("reading default destination CA {}", p.display()))?;
        let roots = crate::tls::certs::root_store(&pem)
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        return Ok(DestinationTrust::Ca(Arc::new(roots)));
    }
    if t.insecure_skip_reencrypt_verify {
        warn!("insecure_skip_reencrypt_verify is on: re-encrypt routes without destinationCACertificate do NOT verify their endpoints");
        return Ok(DestinationTrust::InsecureSkipVerify);
    }
    Ok(DestinationTrust::None)
}

/// The HTTPS listener's TLS: the default certificate (configured or
/// generated) and the client-certificate policy.
fn server_tls(
    t: &crate::config::TlsSettings,
    store: Arc<TableStore>,
) -> anyhow::Result<crate::tls::server::ServerTls> {
    use crate::tls::certs;
    let default = match &t.default_certificate {
        Some(p) => {
            let pem = std::fs::read_to_string(p)
                .with_context(|| format!("reading default certificate {}", p.display()))?;
            certs::certified_key(&pem, &pem, None)
                .map_err(|e| anyhow::anyhow!("default certificate {}: {e}", p.display()))?
        }
        None => {
            warn!("no tls.default_certificate configured: generated a self-signed default certificate");
            certs::self_signed(&["gatehouse.invalid"])
                .map_err(|e| anyhow::anyhow!("generating a default certificate: {e}"))?
        }
    };
    let client_ca = match &t.client_ca {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading client CA {}", p.display()))?,
        ),
        None => None,
    };
    crate::tls::server::ServerTls::new(
        store,
        default,
        t.client_auth,
        client_ca.as_deref(),
        t.handshake_timeout,
    )
    .map_err(|e| anyhow::anyhow!("TLS settings: {e}"))
}
