//! The `gatehouse` command line.

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use gatehouse::config::{AccessLogMode, RouterConfig};
use gatehouse::source::manifests::ManifestsDir;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

mod alloc;

// mimalloc: cheaper small allocations on the request path and no glibc
// consolidation storms when a 10k-route table is freed (benches/table).
#[global_allocator]
static ALLOC: alloc::MiMalloc = alloc::MiMalloc;

extern "C" {
    // mimalloc's own API (libmimalloc-sys links it; its Rust declaration is
    // behind a feature that brings nothing else we use).
    fn mi_collect(force: bool);
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    // libc's: std::env allocates, and this must run before any allocation.
    fn getenv(name: *const std::ffi::c_char) -> *const std::ffi::c_char;
}

/// `mi_option_arena_eager_commit` in mimalloc.h's `mi_option_t`
/// (libmimalloc-sys 0.1.49, mimalloc v3). Check it when mimalloc is bumped:
/// a reordered enum would set another option, and the test
/// (`mimalloc_commits_arenas_on_demand_unless_told_otherwise`) only notices
/// that the arena is committed up front again.
#[cfg(target_os = "linux")]
const MI_OPTION_ARENA_EAGER_COMMIT: std::ffi::c_int = 4;

/// Commit mimalloc's arenas on demand instead of up front (its default on
/// Linux, where overcommit makes that look free), unless
/// `MIMALLOC_ARENA_EAGER_COMMIT` says otherwise. Measured with the PGO
/// build, one worker: an idle HTTP/2 connection held 46 KB of RSS with
/// eager arenas, 27 KB without (as with glibc's malloc); the process starts
/// at 11 MB instead of 18 MB; h1 keep-alive, close and 64 KiB CPU per
/// request and the mmap/madvise/mprotect calls under load unchanged (see
/// the commit). The first allocation reserves the first arena and Rust's
/// start-up allocates before `main`, so this runs as a constructor, before
/// Rust's start-up (called from `main` it changed nothing: the arena was
/// already there). mimalloc's own constructor reads the environment for
/// every option; `mi_option_set` before or after it wins either way.
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static LAZY_ARENA_COMMIT: extern "C" fn() = lazy_arena_commit;

#[cfg(target_os = "linux")]
extern "C" fn lazy_arena_commit() {
    // SAFETY: a NUL-terminated name; constructors run on the one thread
    // there is, so nothing changes the environment meanwhile.
    // mi_option_set only stores the value; mimalloc reads it when it
    // reserves an arena.
    unsafe {
        if getenv(c"MIMALLOC_ARENA_EAGER_COMMIT".as_ptr()).is_null() {
            mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0);
        }
    }
}

/// Let mimalloc give free memory back to the system now. It purges freed
/// pages lazily, when the thread that freed them allocates again, so a
/// thread that then waits holds them as RSS (measured: 154 MB at start with
/// 10k routes, 72 MB with immediate purging). Unforced, only purges already
/// due (freed longer than the purge delay ago); forced, also the rest and
/// every thread's free arena memory, which busy threads would fault back in.
fn collect(force: bool) {
    // SAFETY: mi_collect takes no pointers and may be called from any
    // thread at any time.
    unsafe { mi_collect(force) }
}

/// A proxy thread with nothing to do: at most once a second, run the
/// purges it has due, which otherwise wait for its next allocation (memory
/// freed when a burst of connections ends, or when they park and drop
/// their buffers, stayed resident while the router was quiet). One clock
/// read per park; under load a worker rarely parks.
fn collect_when_parked() {
    use std::cell::Cell;
    use std::time::{Duration, Instant};
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    let now = Instant::now();
    LAST.with(|last| {
        if last
            .get()
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            last.set(Some(now));
            collect(false);
        }
    });
}

#[derive(Parser, Debug)]
#[command(
    name = "gatehouse",
    version,
    about = "An ingress router for Kubernetes and OpenShift that never reloads"
)]
struct Cli {
    /// Operational log format on stderr (the access log is always JSON).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the edge router (or a shard, with selectors).
    Run(RunArgs),
    /// Run the egress gateway.
    Egress(EgressArgs),
    /// Validate config and manifests; list what would be admitted.
    Check(CheckArgs),
    /// A working router with bundled upstreams, for a first look.
    Demo(DemoArgs),
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Router config file (YAML).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Directory of manifests (Routes, Services, Endpoints, …), watched.
    #[arg(long, conflicts_with = "kube")]
    manifests: Option<PathBuf>,
    /// Read objects from the Kubernetes API server.
    #[arg(long)]
    kube: bool,
    /// Kubeconfig for --kube (default: KUBECONFIG, ~/.kube/config, then the
    /// in-cluster service account).
    #[arg(long, requires = "kube")]
    kubeconfig: Option<PathBuf>,
    /// Plain HTTP listener, e.g. 0.0.0.0:80.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// TLS listener, e.g. 0.0.0.0:443.
    #[arg(long)]
    https: Option<SocketAddr>,
    /// Admin listener (health, /api/routes, /metrics, dashboard).
    #[arg(long)]
    admin: Option<SocketAddr>,
    #[arg(long, env = "ROUTER_SERVICE_NAME")]
    router_name: Option<String>,
    /// Serve only routes matching this label selector.
    #[arg(long, env = "ROUTE_LABELS")]
    route_selector: Option<String>,
    /// Serve only routes in namespaces matching this label selector.
    #[arg(long, env = "NAMESPACE_LABELS")]
    namespace_selector: Option<String>,
    /// Access log on stdout.
    #[arg(long, value_enum)]
    access_log: Option<AccessLogMode>,
    /// Bearer token file for the admin API.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Admit `wildcardPolicy: Subdomain` routes.
    #[arg(long, env = "ROUTER_ALLOW_WILDCARD_ROUTES")]
    allow_wildcard_routes: Option<bool>,
    /// Expect PROXY protocol v1/v2 headers from the trusted sources.
    #[arg(long, env = "ROUTER_USE_PROXY_PROTOCOL")]
    accept_proxy: Option<bool>,
    /// Load balancer networks that may send PROXY headers (comma-separated CIDRs).
    #[arg(long, value_delimiter = ',')]
    proxy_trusted_sources: Vec<String>,
    /// Time for a request head, from its first byte (e.g. 10s).
    #[arg(long, env = "ROUTER_SLOWLORIS_TIMEOUT", value_parser = duration)]
    http_request_timeout: Option<std::time::Duration>,
    /// Idle time allowed between requests on a client connection (e.g. 300s).
    #[arg(long, env = "ROUTER_SLOWLORIS_HTTP_KEEPALIVE", value_parser = duration)]
    keep_alive_timeout: Option<std::time::Duration>,
    /// Time a client may stay silent mid-body (e.g. 30s).
    #[arg(long, env = "ROUTER_DEFAULT_CLIENT_TIMEOUT", value_parser = duration)]
    client_timeout: Option<std::time::Duration>,
}

/// An OpenShift duration (`10s`, `5m`, `300ms`; a bare number is ms).
fn duration(s: &str) -> Result<std::time::Duration, String> {
    gatehouse::model::duration::parse(s).ok_or_else(|| format!("not a duration: {s:?}"))
}

#[derive(Args, Debug)]
struct EgressArgs {
    /// Egress config file (YAML; config/egress.yaml documents every field).
    #[arg(long)]
    config: Option<PathBuf>,
    /// File of EGRESS_DESTINATION rules (re-read when it changes). Without
    /// it, the rules are taken from the EGRESS_DESTINATION variable itself.
    #[arg(long)]
    destinations: Option<PathBuf>,
    /// Address the local ports listen on (default 0.0.0.0).
    #[arg(long)]
    listen: Option<std::net::IpAddr>,
    /// Outgoing connections come from this address.
    #[arg(long, env = "EGRESS_SOURCE")]
    source: Option<std::net::IpAddr>,
    /// Client networks allowed to use the gateway (repeat or comma-separate).
    #[arg(long, env = "EGRESS_ALLOW", value_delimiter = ',')]
    allow: Vec<String>,
    /// Ports the fallback IP serves, e.g. 5432,9000-9010.
    #[arg(long, env = "EGRESS_FALLBACK_PORTS")]
    fallback_ports: Option<String>,
    /// HTTP proxy mode listener, e.g. 0.0.0.0:8080.
    #[arg(long)]
    http_proxy: Option<SocketAddr>,
    /// File of EGRESS_HTTP_PROXY_DESTINATION rules; without it, the variable.
    #[arg(long)]
    http_proxy_destinations: Option<PathBuf>,
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Connection log on stdout.
    #[arg(long, value_enum)]
    access_log: Option<AccessLogMode>,
}

#[derive(Args, Debug)]
struct CheckArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    manifests: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct DemoArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin: SocketAddr,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A control-plane thread gone quiet (a second after its last compile or
    // scan): what it freed then is past the purge delay, so an unforced
    // collect returns it.
    gatehouse::priority::set_on_quiet(|| collect(false));
    gatehouse::telemetry::init_logging(matches!(cli.log_format, LogFormat::Json));
    let result = match cli.cmd {
        Cmd::Run(a) => load_run_config(a).and_then(|cfg| {
            runtime(cfg.worker_threads)?.block_on(async move {
                let running = gatehouse::app::start(cfg).await?;
                // Start-up ran on this thread (with --manifests, the first
                // parse of every object), which now only waits for a signal.
                // Its garbage was freed just now, not yet due: forced, once;
                // nothing is serving yet.
                collect(true);
                gatehouse::app_signal::wait().await;
                tracing::info!("signal received; draining");
                running.shutdown().await;
                tracing::info!("stopped");
                Ok(())
            })
        }),
        Cmd::Demo(a) => {
            let cfg = RouterConfig {
                http: Some(a.http),
                admin: Some(a.admin),
                ..RouterConfig::default()
            };
            runtime(None).and_then(|rt| rt.block_on(gatehouse::demo::run(cfg)))
        }
        Cmd::Check(a) => return check(a),
        Cmd::Egress(a) => load_egress_config(a).and_then(|cfg| {
            runtime(None)?.block_on(async move {
                let running = gatehouse::egress::start(cfg).await?;
                gatehouse::app_signal::wait().await;
                tracing::info!("signal received; stopping");
                running.shutdown().await;
                Ok(())
            })
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatehouse: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn runtime(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let workers = std::env::var("GATEHOUSE_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .or(workers);
    // One worker: the current-thread scheduler does the same work without
    // the work-stealing machinery (measured faster in benches/load).
    let mut b = if workers == Some(1) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if let Some(n) = workers.filter(|n| *n > 1) {
        b.worker_threads(n);
    }
    b.on_thread_park(collect_when_parked)
        .enable_all()
        .build()
        .context("starting the runtime")
}

fn load_run_config(a: RunArgs) -> anyhow::Result<RouterConfig> {
    let mut cfg = match &a.config {
        Some(p) => RouterConfig::load(p)?,
        None => RouterConfig::default(),
    };
    if a.kube {
        cfg.kube.enabled = true;
        cfg.manifests = None;
    }
    if let Some(k) = a.kubeconfig {
        cfg.kube.kubeconfig = Some(k);
    }
    if let Some(s) = a.route_selector {
        cfg.route_selector = s;
    }
    if let Some(s) = a.namespace_selector {
        cfg.namespace_selector = s;
    }
    // A shard that silently served every route would expose what it must not.
    cfg.shard().map_err(anyhow::Error::msg)?;
    if let Some(m) = a.manifests {
        cfg.manifests = Some(m);
    }
    if a.http.is_some() {
        cfg.http = a.http;
    }
    if a.https.is_some() {
        cfg.https = a.https;
    }
    if a.admin.is_some() {
        cfg.admin = a.admin;
    }
    if let Some(n) = a.router_name {
        cfg.router_name = n;
    }
    if let Some(m) = a.access_log {
        cfg.access_log = m;
    }
    if let Some(f) = a.admin_token_file {
        cfg.admin_token_file = Some(f);
    }
    if let Some(w) = a.allow_wildcard_routes {
        cfg.allow_wildcard_routes = w;
    }
    if let Some(p) = a.accept_proxy {
        cfg.accept_proxy = p;
    }
    if !a.proxy_trusted_sources.is_empty() {
        cfg.proxy_trusted_sources = a.proxy_trusted_sources;
    }
    if let Some(d) = a.http_request_timeout {
        cfg.timeouts.http_request = d;
    }
    if let Some(d) = a.keep_alive_timeout {
        cfg.timeouts.http_keep_alive = d;
    }
    if let Some(d) = a.client_timeout {
        cfg.timeouts.client = d;
    }
    Ok(cfg)
}

fn load_egress_config(a: EgressArgs) -> anyhow::Result<gatehouse::egress::EgressConfig> {
    let mut cfg = match &a.config {
        Some(p) => gatehouse::egress::EgressConfig::load(p)?,
        None => gatehouse::egress::EgressConfig::default(),
    };
    if let Some(f) = a.destinations {
        cfg.destinations_file = Some(f);
    } else if cfg.destinations_file.is_none() {
        if let Ok(t) = std::env::var("EGRESS_DESTINATION") {
            cfg.destinations = Some(t);
        }
    }
    if let Some(f) = a.http_proxy_destinations {
        cfg.http_proxy_destinations_file = Some(f);
    } else if cfg.http_proxy_destinations_file.is_none() {
        if let Ok(t) = std::env::var("EGRESS_HTTP_PROXY_DESTINATION") {
            cfg.http_proxy_destinations = Some(t);
        }
    }
    if let Some(l) = a.listen {
        cfg.listen = l;
    }
    if a.source.is_some() {
        cfg.source = a.source;
    }
    if !a.allow.is_empty() {
        cfg.allow = a.allow;
    }
    if let Some(p) = a.fallback_ports {
        cfg.fallback_ports = p;
    }
    if a.http_proxy.is_some() {
        cfg.http_proxy = a.http_proxy;
    }
    if a.admin.is_some() {
        cfg.admin = a.admin;
    }
    if let Some(m) = a.access_log {
        cfg.access_log = m;
    }
    Ok(cfg)
}

fn check(a: CheckArgs) -> ExitCode {
    let cfg = match &a.config {
        Some(p) => match RouterConfig::load(p) {
            Ok(c) => c,
            Err(e) => {
                println!("ERROR     {:#}", anyhow::Error::from(e));
                return ExitCode::from(1);
            }
        },
        None => RouterConfig::default(),
    };
    let Some(dir) = a.manifests.or(cfg.manifests.clone()) else {
        println!("config is valid; no manifests directory given (--manifests DIR)");
        return ExitCode::SUCCESS;
    };
    let mut m = ManifestsDir::new(dir);
    m.scan();
    let objs = m.objects();
    let compiled = gatehouse::compile::compile(&objs, &cfg.compile_config(), 1);
    let mut problems = 0;
    for e in m.errors() {
        println!("ERROR     {e}");
        problems += 1;
    }
    for d in &compiled.diagnostics {
        println!("WARNING   {}: {}", d.object, d.message);
    }
    let mut admitted = 0;
    for s in compiled.table.statuses.iter() {
        let term = s
            .termination
            .map(|t| format!(" ({t:?})").to_lowercase())
            .unwrap_or_default();
        if s.admitted {
            admitted += 1;
            println!(
                "ADMITTED  {}/{}  {}{}{term}",
                s.namespace, s.name, s.host, s.path
            );
        } else {
            problems += 1;
            println!(
                "REJECTED  {}/{}  {}{}  {}: {}",
                s.namespace,
                s.name,
                s.host,
                s.path,
                s.reason.map(|r| r.to_string()).unwrap_or_default(),
                s.message.as_deref().unwrap_or("")
            );
        }
    }
    let rejected = compiled.table.statuses.len() - admitted;
    println!(
        "{admitted} admitted, {rejected} rejected, {} file errors",
        m.errors().len()
    );
    if problems == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
