//! Desired objects → one immutable `RoutingTable`. Pure: no I/O, no clock.
//!
//! `compile` does everything (admission, annotations, endpoints);
//! `update_endpoints` rebuilds only the hosts whose services' endpoints
//! changed, sharing everything else with the previous table.

mod endpoints;
mod incremental;
pub mod tls;

use crate::model::admission::{
    self, Admission, AdmissionPolicy, Admitted, Candidate, InsecurePolicy, Reason, Termination,
};
use crate::model::selector::Shard;
use crate::model::{duration, ingress, Key, Objects};
use crate::pool::fxhash::FxHashMap;
use crate::table::{
    Algorithm, BackendGroup, BackendSet, CookieSpec, ForwardedPolicy, HostRef, HostRoutes,
    LiveRegistry, RouteEntry, RouteSettings, RoutingTable, Target,
};
pub use endpoints::{is_node_local, resolve, Resolved, SliceIndex};
pub use incremental::compile_changed_routes;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// Router-wide settings that shape the table.
#[derive(Debug, Clone)]
pub struct CompileConfig {
    pub admission: AdmissionPolicy,
    /// Server timeout when a route sets none (HAProxy `timeout server`).
    pub default_timeout: Duration,
    /// Tunnel timeout when a route sets none (HAProxy `timeout tunnel`).
    pub default_tunnel_timeout: Duration,
    pub forwarded: ForwardedPolicy,
    /// Parsed serving certificates, kept between compiles.
    pub cert_cache: Arc<tls::CertCache>,
    /// Re-encrypt routes without their own destination CA.
    pub destination_trust: tls::DestinationTrust,
    /// Live endpoint state shared across tables.
    pub live: Arc<LiveRegistry>,
    /// Per-route request counters shared across tables.
    pub stats: Arc<crate::table::StatsRegistry>,
    /// Key of the sticky-cookie values (same key on every replica → same
    /// choices).
    pub cookie_key: Arc<[u8]>,
    /// Cookie name for routes without `router.openshift.io/cookie_name`.
    pub default_cookie_name: Option<String>,
    /// Balance for HTTP routes without the annotation (OpenShift: random).
    pub default_balance: Algorithm,
    /// Keep endpoints on loopback, link-local, multicast and metadata
    /// addresses. True for operator-written manifests (the demo and tests
    /// use loopback); a tenant-facing source (`--kube`) must set it false.
    pub allow_local_endpoints: bool,
    /// Which routes this router serves (route and namespace selectors).
    pub shard: Shard,
    /// IngressClass controller name this router answers to.
    pub ingress_controller: String,
}

impl Default for CompileConfig {
    fn default() -> Self {
        CompileConfig {
            admission: AdmissionPolicy::default(),
            default_timeout: Duration::from_secs(30),
            default_tunnel_timeout: Duration::from_secs(3600),
            forwarded: ForwardedPolicy::Append,
            cert_cache: Arc::default(),
            destination_trust: tls::DestinationTrust::None,
            live: Arc::default(),
            stats: Arc::default(),
            cookie_key: Arc::from(&b"gatehouse"[..]),
            default_cookie_name: None,
            default_balance: Algorithm::Random,
            allow_local_endpoints: true,
            shard: Shard::default(),
            ingress_controller: ingress::DEFAULT_CONTROLLER.to_owned(),
        }
    }
}

/// Endpoint addresses dropped as node-local (loopback, link-local, multicast,
/// metadata), counted once per new diagnostic by the compile loop.
pub static DROPPED_LOCAL_ENDPOINTS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);

/// Something worth one log line: which object, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Diagnostic {
    /// `Kind namespace/name`.
    pub object: String,
    pub message: String,
}

/// A table and what was noticed building it.
#[derive(Debug)]
pub struct Compiled {
    pub table: RoutingTable,
    pub diagnostics: Vec<Diagnostic>,
    /// Objects (`Kind namespace/name`) whose problems this compile states
    /// afresh while the rest of the table was kept: the changed routes of
    /// a scoped compile. Problems logged for them earlier no longer stand.
    pub renewed: Vec<String>,
}

const ANN_TIMEOUT: &str = "haproxy.router.openshift.io/timeout";
const ANN_TUNNEL: &str = "haproxy.router.openshift.io/timeout-tunnel";
const ANN_BALANCE: &str = "haproxy.router.openshift.io/balance";
const ANN_DISABLE_COOKIES: &str = "haproxy.router.openshift.io/disable_cookies";
const ANN_COOKIE_NAME: &str = "router.openshift.io/cookie_name";
const ANN_SAME_SITE: &str = "router.openshift.io/cookie-same-site";
const ANN_REWRITE: &str = "haproxy.router.openshift.io/rewrite-target";
const ANN_ALLOWLIST: &str = "haproxy.router.openshift.io/ip_allowlist";
const ANN_WHITELIST: &str = "haproxy.router.openshift.io/ip_whitelist";
const ANN_RATE_LIMIT: &str = "haproxy.router.openshift.io/rate-limit-connections";
const ANN_POD_CONN: &str = "haproxy.router.openshift.io/pod-concurrent-connections";
const ANN_CHECK_INTERVAL: &str = "router.openshift.io/haproxy.health.check.interval";
/// OpenShift's default check interval.
const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_millis(5000);
const ANN_HSTS: &str = "haproxy.router.openshift.io/hsts_header";
const ANN_FORWARDED: &str = "haproxy.router.openshift.io/set-forwarded-headers";

/// Every candidate route of `objs` in this router's shard: Routes plus those
/// derived from Ingresses. Routes outside the shard do not exist for this
/// router (no status, no host claims), as with OpenShift's ROUTE_LABELS and
/// NAMESPACE_LABELS.
pub fn candidates(objs: &Objects, cfg: &CompileConfig) -> Vec<Candidate> {
    let mut c: Vec<Candidate> = objs
        .routes
        .values()
        .filter(|r| in_shard(objs, &cfg.shard, &r.metadata))
        .cloned()
        .map(Candidate::of)
        .collect();
    c.extend(
        ingress::candidates(objs, &cfg.ingress_controller)
            .into_iter()
            .filter(|c| in_shard(objs, &cfg.shard, &c.route.metadata)),
    );
    c
}

/// Whether the shard selects an object by its labels and its namespace's.
pub fn in_shard(objs: &Objects, shard: &Shard, meta: &crate::model::ObjectMeta) -> bool {
    if shard.is_everything() {
        return true;
    }
    let ns = Objects::get(&objs.namespaces, "", meta.ns()).map(|n| &n.metadata.labels);
    shard.selects(&meta.labels, ns)
}

/// Build the whole table.
pub fn compile(objs: &Objects, cfg: &CompileConfig, generation: u64) -> Compiled {
    compile_reusing(objs, cfg, generation, None)
}

/// Build the whole table; with `prev`, reuse its entry of every route that
/// is unchanged and admitted the same way. Only valid when nothing but
/// Routes and Ingresses changed since `prev` was compiled
/// ([`crate::model::store::Change::RoutesOnly`]): an entry's backends are a
/// function of its route and of the services and endpoints it sends to.
/// Admission, host maps and statuses are always rebuilt.
pub fn compile_reusing(
    objs: &Objects,
    cfg: &CompileConfig,
    generation: u64,
    prev: Option<&RoutingTable>,
) -> Compiled {
    let candidates = candidates(objs, cfg);
    let certs = tls::CertPass::new(&cfg.cert_cache);
    let Admission {
        admitted,
        mut statuses,
        claimed,
    } = admission::admit_with(&candidates, &cfg.admission, &|c| certs.validate(c));
    let reuse = prev
        .map(|t| {
            reusable(
                t.exact
                    .values()
                    .map(|h| (h, false))
                    .chain(t.wildcard.values().map(|h| (h, true))),
            )
        })
        .unwrap_or_default();
    let mut b = Builder::new(objs, cfg, &certs, reuse);
    for a in &admitted {
        b.add(a, &mut statuses);
    }
    let Builder {
        cert_map,
        wildcard_certs,
        exact,
        wildcard,
        by_service,
        diagnostics,
        ..
    } = b;
    certs.finish();
    let table = RoutingTable {
        generation,
        claimants: claimants(&statuses, &claimed).collect(),
        certs: cert_map.into_iter().collect(),
        wildcard_certs: wildcard_certs.into_iter().collect(),
        exact: exact
            .into_iter()
            .map(|(k, v)| (k, host_routes(v)))
            .collect(),
        wildcard: wildcard
            .into_iter()
            .map(|(k, v)| (k, host_routes(v)))
            .collect(),
        admitted_routes: statuses.iter().filter(|s| s.admitted).count(),
        statuses: statuses.into_iter().map(Arc::new).collect(),
        by_service: by_service
            .into_iter()
            .map(|(k, v)| (Arc::new(k), v.into_iter().collect::<Arc<[HostRef]>>()))
            .collect(),
    };
    Compiled {
        table,
        diagnostics,
        renewed: Vec::new(),
    }
}

/// (namespace, name) → a previous table's entry of that route and whether
/// it was a wildcard route: the entries a compile may reuse.
type Reusable<'t> = FxHashMap<(&'t str, &'t str), (&'t Arc<RouteEntry>, bool)>;

/// The reusable entries of some host entries (`true`: wildcard): those of
/// routes built without problems.
fn reusable<'t>(hosts: impl Iterator<Item = (&'t Arc<HostRoutes>, bool)>) -> Reusable<'t> {
    hosts
        .flat_map(|(h, w)| h.routes.iter().map(move |r| (r, w)))
        .filter(|(r, _)| r.source.is_some())
        .map(|(r, w)| ((&*r.namespace, &*r.name), (r, w)))
        .collect()
}

/// The entries of admitted routes, by host, with their certificates and
/// the services they send to: what one compile adds to a table.
struct Builder<'a> {
    objs: &'a Objects,
    cfg: &'a CompileConfig,
    certs: &'a tls::CertPass<'a>,
    slices: SliceIndex<'a>,
    upstream_tls: tls::UpstreamTlsBuilder<'a>,
    reuse: Reusable<'a>,
    cert_map: FxHashMap<Arc<str>, Arc<crate::table::CertifiedKey>>,
    wildcard_certs: FxHashMap<Arc<str>, Arc<crate::table::CertifiedKey>>,
    exact: FxHashMap<Arc<str>, Vec<Arc<RouteEntry>>>,
    wildcard: FxHashMap<Arc<str>, Vec<Arc<RouteEntry>>>,
    by_service: FxHashMap<Key, BTreeSet<HostRef>>,
    /// Hosts repeat across routes; one allocation per host.
    interned: FxHashMap<String, Arc<str>>,
    diagnostics: Vec<Diagnostic>,
}

impl<'a> Builder<'a> {
    fn new(
        objs: &'a Objects,
        cfg: &'a CompileConfig,
        certs: &'a tls::CertPass<'a>,
        reuse: Reusable<'a>,
    ) -> Self {
        Builder {
            objs,
            cfg,
            certs,
            slices: SliceIndex::new(objs),
            upstream_tls: tls::UpstreamTlsBuilder::new(&cfg.destination_trust),
            reuse,
            cert_map: FxHashMap::default(),
            wildcard_certs: FxHashMap::default(),
            exact: FxHashMap::default(),
            wildcard: FxHashMap::default(),
            by_service: FxHashMap::default(),
            interned: FxHashMap::default(),
            diagnostics: Vec::new(),
        }
    }

    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.interned.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.interned.insert(s.to_owned(), a.clone());
        a
    }

    /// Add one admitted route: the previous table's entry when the route
    /// and its admission are unchanged, else one built now (problems noted
    /// on its status row in `statuses`).
    fn add(&mut self, a: &Admitted, statuses: &mut [admission::RouteStatus]) {
        let r = &a.route;
        let ns = r.metadata.ns();
        let previous = self
            .reuse
            .get(&(ns, r.metadata.name.as_str()))
            .filter(|(e, wild)| {
                *wild == a.wildcard_domain.is_some()
                    && e.source
                        .as_ref()
                        .is_some_and(|src| Arc::ptr_eq(src, r) || **src == **r)
                    && *e.host == *a.host
                    && *e.path == *a.path
                    && e.path_exact == a.path_exact
                    && e.termination == a.termination
                    && e.insecure == a.insecure
            })
            .map(|(e, _)| *e);
        let diagnostics_before = self.diagnostics.len();
        let object = route_object(ns, &r.metadata.name);
        let parts = match previous {
            Some(e) => Parts::Reused(e),
            None => Parts::Built(route_parts(
                a,
                self.objs,
                &self.slices,
                self.cfg,
                &object,
                statuses,
                &mut self.diagnostics,
            )),
        };
        let targets = match &parts {
            Parts::Reused(e) => e.targets.clone(),
            Parts::Built(b) => b.targets.clone(),
        };
        let (key, href) = match &a.wildcard_domain {
            Some(d) => {
                let k = self.intern(d);
                (k.clone(), HostRef::Wildcard(k))
            }
            None => {
                let k = self.intern(&a.host);
                (k.clone(), HostRef::Exact(k))
            }
        };
        for t in targets.iter() {
            self.by_service
                .entry(t.service.clone())
                .or_default()
                .insert(href.clone());
        }
        let terminates = matches!(
            a.termination,
            Some(Termination::Edge | Termination::Reencrypt)
        );
        if let Some(ck) = self.certs.cert_of(r).filter(|_| terminates) {
            if crate::tls::certs::seconds_left(&ck).is_some_and(|s| s < 0) {
                self.diagnostics.push(Diagnostic {
                    object: object.clone(),
                    message: "certificate has expired; still served".into(),
                });
            }
            match &a.wildcard_domain {
                Some(d) => {
                    let d = self.intern(d);
                    self.wildcard_certs.insert(d, ck)
                }
                None => self.cert_map.insert(key.clone(), ck),
            };
        }
        let up_tls = match (&parts, a.termination, &r.spec.tls) {
            (Parts::Reused(e), ..) => e.upstream_tls.clone(),
            (Parts::Built(_), Some(Termination::Reencrypt), Some(t)) => {
                let (u, warning) = self.upstream_tls.for_route(t, ns, &r.spec.to.name);
                if let Some(message) = warning {
                    self.diagnostics.push(Diagnostic {
                        object: object.clone(),
                        message,
                    });
                }
                u
            }
            _ => None,
        };
        let entry = match parts {
            Parts::Reused(e) => e.clone(),
            Parts::Built(b) => {
                let clean = self.diagnostics.len() == diagnostics_before;
                Arc::new(RouteEntry {
                    stats: self.cfg.stats.get(ns, &r.metadata.name),
                    upstream_tls: up_tls,
                    namespace: Arc::from(ns),
                    name: Arc::from(r.metadata.name.as_str()),
                    host: self.intern(&a.host),
                    path: a.path.clone().into_boxed_str(),
                    path_exact: a.path_exact,
                    termination: a.termination,
                    insecure: a.insecure,
                    settings: b.settings,
                    targets,
                    backends: Arc::new(b.backends),
                    source: clean.then(|| r.clone()),
                })
            }
        };
        match href {
            HostRef::Exact(_) => self.exact.entry(key).or_default().push(entry),
            HostRef::Wildcard(_) => self.wildcard.entry(key).or_default().push(entry),
        }
    }
}

/// How diagnostics name a Route (`Diagnostic::object`, `Compiled::renewed`).
fn route_object(namespace: &str, name: &str) -> String {
    format!("Route {namespace}/{name}")
}

/// Host → the Routes that claim it (admitted or not), from an admission's
/// status rows and claimed hosts, for [`RoutingTable::claimants`].
/// Ingress-derived rows are left out: a compile with any takes no scoped
/// path.
fn claimants<'s>(
    statuses: &'s [admission::RouteStatus],
    claimed: &'s [Option<String>],
) -> impl Iterator<Item = (String, Arc<[Key]>)> + use<'s> {
    let mut claims: std::collections::BTreeMap<&str, Vec<Key>> = Default::default();
    for (s, h) in statuses.iter().zip(claimed) {
        if let (Some(h), None) = (h, &s.ingress) {
            claims
                .entry(h)
                .or_default()
                .push((s.namespace.clone(), s.name.clone()));
        }
    }
    claims
        .into_iter()
        .map(|(h, keys)| (h.to_owned(), keys.into()))
}

/// A route's entry this compile: the previous table's, or built anew.
enum Parts<'e> {
    Reused(&'e Arc<RouteEntry>),
    Built(RouteParts),
}

/// What a route's entry is built from: its settings, targets and backends
/// (missing services noted on its status).
struct RouteParts {
    settings: Arc<RouteSettings>,
    targets: Arc<[Target]>,
    backends: BackendSet,
}

fn route_parts(
    a: &crate::model::admission::Admitted,
    objs: &Objects,
    slices: &SliceIndex<'_>,
    cfg: &CompileConfig,
    object: &str,
    statuses: &mut [crate::model::admission::RouteStatus],
    diagnostics: &mut Vec<Diagnostic>,
) -> RouteParts {
    let r = &a.route;
    let ns = r.metadata.ns();
    let settings = Arc::new(settings(a, cfg, object, diagnostics));
    let targets: Arc<[Target]> = std::iter::once(&r.spec.to)
        .chain(&r.spec.alternate_backends)
        .map(|t| Target {
            service: (ns.to_owned(), t.name.clone()),
            weight: t.weight.unwrap_or(1).clamp(0, 256) as u32,
            port: r.spec.port.as_ref().map(|p| p.target_port.clone()),
        })
        .collect();
    let (backends, missing) = backend_set(
        objs,
        slices,
        &targets,
        object,
        settings.algorithm,
        cfg,
        diagnostics,
    );
    if !missing.is_empty() {
        let status = &mut statuses[a.status_index];
        let msg = format!("service {} not found", missing.join(", "));
        if missing.len() == targets.len() {
            status.admitted = false;
            status.reason = Some(Reason::ServiceNotFound);
        }
        status.message = Some(msg.clone());
        diagnostics.push(Diagnostic {
            object: object.to_owned(),
            message: msg,
        });
    }
    RouteParts {
        settings,
        targets,
        backends,
    }
}

/// Rebuild only the hosts that send to `services`, re-resolving their
/// endpoints; everything else is shared with `prev`.
pub fn update_endpoints(
    prev: &RoutingTable,
    objs: &Objects,
    services: &BTreeSet<Key>,
    generation: u64,
    cfg: &CompileConfig,
) -> Compiled {
    // Routes rebuilt here also send to services whose endpoints did not
    // change: index every slice, not just the changed services' ones.
    let slices = SliceIndex::new(objs);
    let mut diagnostics = Vec::new();
    let mut table = RoutingTable {
        generation,
        ..prev.clone()
    };
    let hosts: BTreeSet<&HostRef> = services
        .iter()
        .filter_map(|s| prev.by_service.get(s))
        .flat_map(|refs| refs.iter())
        .collect();
    for href in hosts {
        let (map, key) = match href {
            HostRef::Exact(k) => (&mut table.exact, k),
            HostRef::Wildcard(k) => (&mut table.wildcard, k),
        };
        let Some(old) = map.get(key) else { continue };
        let routes = old
            .routes
            .iter()
            .map(|r| {
                if !r.targets.iter().any(|t| services.contains(&t.service)) {
                    return r.clone();
                }
                let object = route_object(&r.namespace, &r.name);
                let (backends, _) = backend_set(
                    objs,
                    &slices,
                    &r.targets,
                    &object,
                    r.settings.algorithm,
                    cfg,
                    &mut diagnostics,
                );
                Arc::new(RouteEntry {
                    backends: Arc::new(backends),
                    ..RouteEntry::clone(r)
                })
            })
            .collect();
        map.insert(key.clone(), Arc::new(HostRoutes { routes }));
    }
    Compiled {
        table,
        diagnostics,
        renewed: Vec::new(),
    }
}

fn host_routes(mut v: Vec<Arc<RouteEntry>>) -> Arc<HostRoutes> {
    v.sort_by(|a, b| {
        crate::table::path_precedence(a)
            .cmp(&crate::table::path_precedence(b))
            .then_with(|| a.path.cmp(&b.path))
    });
    Arc::new(HostRoutes {
        routes: v.into_boxed_slice(),
    })
}

#[allow(clippy::too_many_arguments)]
fn backend_set(
    objs: &Objects,
    slices: &SliceIndex<'_>,
    targets: &[Target],
    object: &str,
    algorithm: Algorithm,
    cfg: &CompileConfig,
    diagnostics: &mut Vec<Diagnostic>,
) -> (BackendSet, Vec<String>) {
    let mut missing = Vec::new();
    let mut groups = Vec::with_capacity(targets.len());
    for t in targets {
        match resolve(
            objs,
            slices,
            &t.service,
            t.port.as_ref(),
            cfg.allow_local_endpoints,
        ) {
            Some(Resolved {
                endpoints,
                protocol,
                problems,
            }) => {
                diagnostics.extend(problems.into_iter().map(|message| Diagnostic {
                    object: object.to_owned(),
                    message,
                }));
                groups.push(BackendGroup::new(
                    t.service.clone(),
                    t.weight,
                    protocol,
                    endpoints,
                ));
            }
            None => missing.push(format!("{}/{}", t.service.0, t.service.1)),
        }
    }
    (
        BackendSet::new(groups, algorithm, &cfg.live, &cfg.cookie_key),
        missing,
    )
}

fn settings(
    a: &admission::Admitted,
    cfg: &CompileConfig,
    object: &str,
    diagnostics: &mut Vec<Diagnostic>,
) -> RouteSettings {
    let ann = &a.route.metadata.annotations;
    let mut warn = |key: &str, value: &str, why: &str| {
        diagnostics.push(Diagnostic {
            object: object.to_owned(),
            message: format!("annotation {key}={value:?} ignored: {why}"),
        })
    };
    let mut dur = |key: &str, default: Duration| match ann.get(key) {
        None => default,
        Some(v) => duration::parse(v).unwrap_or_else(|| {
            warn(key, v, "not a duration like 30s, 500ms or 2m");
            default
        }),
    };
    let timeout = dur(ANN_TIMEOUT, cfg.default_timeout);
    let tunnel_timeout = dur(ANN_TUNNEL, cfg.default_tunnel_timeout);
    // Passthrough has only a tunnel: OpenShift uses `timeout-tunnel`, else
    // `timeout`, else the default tunnel timeout.
    let passthrough_idle = match (
        ann.contains_key(ANN_TUNNEL),
        ann.get(ANN_TIMEOUT).and_then(|v| duration::parse(v)),
    ) {
        (false, Some(t)) => t,
        _ => tunnel_timeout,
    };
    let forwarded = match ann.get(ANN_FORWARDED) {
        None => cfg.forwarded,
        Some(v) => ForwardedPolicy::parse(v).unwrap_or_else(|| {
            diagnostics.push(Diagnostic {
                object: object.to_owned(),
                message: format!(
                    "annotation {ANN_FORWARDED}={v:?} ignored: expected append, replace, if-none or never"
                ),
            });
            cfg.forwarded
        }),
    };
    let hsts = ann.get(ANN_HSTS).and_then(|v| {
        let h = tls::hsts(v);
        if h.is_none() {
            diagnostics.push(Diagnostic {
                object: object.to_owned(),
                message: format!("annotation {ANN_HSTS}={v:?} ignored: needs max-age=<seconds>"),
            });
        }
        h
    });
    let passthrough = a.termination == Some(Termination::Passthrough);
    let mut note = |key: &str, value: &str, why: &str| {
        diagnostics.push(Diagnostic {
            object: object.to_owned(),
            message: format!("annotation {key}={value:?} ignored: {why}"),
        })
    };
    let default_algorithm = if passthrough {
        Algorithm::Source
    } else {
        cfg.default_balance
    };
    let algorithm = match ann.get(ANN_BALANCE) {
        None => default_algorithm,
        Some(v) => Algorithm::parse(v.trim()).unwrap_or_else(|| {
            note(
                ANN_BALANCE,
                v,
                "expected roundrobin, leastconn, source or random",
            );
            default_algorithm
        }),
    };
    let cookies_off = ann.get(ANN_DISABLE_COOKIES).is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "true" | "1" | "yes" | "on" | ""
        )
    });
    let cookie = (!passthrough && !cookies_off).then(|| {
        let valid = |n: &str| {
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        let name = match ann.get(ANN_COOKIE_NAME) {
            Some(n) if valid(n) => n.clone(),
            other => {
                if let Some(n) = other {
                    note(ANN_COOKIE_NAME, n, "cookie names are [A-Za-z0-9_-]+");
                }
                match &cfg.default_cookie_name {
                    Some(d) => d.clone(),
                    // Stable across replicas: derived from the route's identity.
                    None => {
                        // A name, not a secret: a cheap stable hash will do
                        // (OpenShift uses md5 of the same identity).
                        let ns = a.route.metadata.ns();
                        let name = &a.route.metadata.name;
                        let h1 = crate::model::ingress::fnv1a(&[ns, name]);
                        let h2 = crate::model::ingress::fnv1a(&[name, ns]);
                        format!("{h1:08x}{h2:08x}")
                    }
                }
            }
        };
        let mut attributes = String::from("; path=/; HttpOnly");
        if matches!(
            a.termination,
            Some(Termination::Edge | Termination::Reencrypt)
        ) && a.insecure != InsecurePolicy::Allow
        {
            let same_site = match ann.get(ANN_SAME_SITE).map(|s| s.trim()) {
                None => "None",
                Some(s) if s.eq_ignore_ascii_case("lax") => "Lax",
                Some(s) if s.eq_ignore_ascii_case("strict") => "Strict",
                Some(s) if s.eq_ignore_ascii_case("none") => "None",
                Some(s) => {
                    note(ANN_SAME_SITE, s, "expected Lax, Strict or None");
                    "None"
                }
            };
            attributes.push_str("; Secure; SameSite=");
            attributes.push_str(same_site);
        }
        CookieSpec {
            name: name.into_boxed_str(),
            attributes: attributes.into_boxed_str(),
        }
    });
    let rewrite_target = ann.get(ANN_REWRITE).and_then(|v| {
        let v = v.trim();
        if v.starts_with('/')
            && !v
                .bytes()
                .any(|b| b <= b' ' || b == b'?' || b == b'#' || b == 0x7f)
        {
            Some(v.to_owned().into_boxed_str())
        } else {
            note(ANN_REWRITE, v, "must be a path starting with /");
            None
        }
    });
    let allowlist = ann
        .get(ANN_ALLOWLIST)
        .or_else(|| ann.get(ANN_WHITELIST))
        .and_then(|v| {
            let mut nets = Vec::new();
            for item in v.split_whitespace() {
                match item.parse::<crate::model::ipnet::IpNet>() {
                    Ok(n) => nets.push(n),
                    Err(e) => note(ANN_ALLOWLIST, item, &e),
                }
            }
            (!nets.is_empty()).then(|| nets.into_boxed_slice())
        });
    let mut count = |key: &str| -> Option<u32> {
        let v = ann.get(key)?;
        match v.trim().parse::<u32>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                note(key, v, "expected a positive whole number");
                None
            }
        }
    };
    let rate_limits = ann
        .get(ANN_RATE_LIMIT)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        .then(|| crate::table::RateLimits {
            concurrent: count(&format!("{ANN_RATE_LIMIT}.concurrent-tcp")),
            rate_tcp: count(&format!("{ANN_RATE_LIMIT}.rate-tcp")),
            rate_http: count(&format!("{ANN_RATE_LIMIT}.rate-http")),
        })
        .filter(|l| l.concurrent.is_some() || l.rate_tcp.is_some() || l.rate_http.is_some());
    let pod_max_conn = count(ANN_POD_CONN);
    let check_interval = match ann.get(ANN_CHECK_INTERVAL) {
        None => DEFAULT_CHECK_INTERVAL,
        Some(v) => duration::parse(v).unwrap_or_else(|| {
            note(ANN_CHECK_INTERVAL, v, "not a duration like 5s or 500ms");
            DEFAULT_CHECK_INTERVAL
        }),
    };
    RouteSettings {
        timeout,
        tunnel_timeout,
        passthrough_idle,
        forwarded,
        hsts,
        algorithm,
        cookie,
        rewrite_target,
        allowlist,
        rate_limits,
        pod_max_conn,
        check_interval,
    }
}

#[cfg(test)]
mod tests;
