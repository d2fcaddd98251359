//! Desired objects → one immutable `RoutingTable`. Pure: no I/O, no clock.
//!
//! `compile` does everything (admission, annotations, endpoints);
//! `update_endpoints` rebuilds only the hosts whose services' endpoints
//! changed, sharing everything else with the previous table.

mod endpoints;
pub mod tls;

use crate::model::admission::{self, Admission, AdmissionPolicy, Candidate, Reason, Termination};
use crate::model::{duration, ingress, Key, Objects};
use crate::table::{
    BackendGroup, BackendSet, ForwardedPolicy, HostRef, HostRoutes, RouteEntry, RouteSettings,
    RoutingTable, Target,
};
pub use endpoints::{resolve, Resolved, SliceIndex};
use std::collections::{BTreeSet, HashMap};
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
        }
    }
}

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
}

const ANN_TIMEOUT: &str = "haproxy.router.openshift.io/timeout";
const ANN_TUNNEL: &str = "haproxy.router.openshift.io/timeout-tunnel";
const ANN_HSTS: &str = "haproxy.router.openshift.io/hsts_header";
const ANN_FORWARDED: &str = "haproxy.router.openshift.io/set-forwarded-headers";

/// Every candidate route of `objs`: Routes plus those derived from Ingresses.
pub fn candidates(objs: &Objects) -> Vec<Candidate> {
    let mut c: Vec<Candidate> = objs.routes.values().cloned().map(Candidate::of).collect();
    c.extend(ingress::candidates(objs));
    c
}

/// Build the whole table.
pub fn compile(objs: &Objects, cfg: &CompileConfig, generation: u64) -> Compiled {
    let candidates = candidates(objs);
    let certs = tls::CertPass::new(&cfg.cert_cache);
    let Admission {
        admitted,
        mut statuses,
    } = {
        let pass = &certs;
        admission::admit_with(&candidates, &cfg.admission, &|c| pass.validate(c))
    };
    let slices = SliceIndex::new(objs);
    let mut upstream_tls = tls::UpstreamTlsBuilder::new(&cfg.destination_trust);
    let mut cert_map: HashMap<Arc<str>, Arc<crate::table::CertifiedKey>> = HashMap::new();
    let mut wildcard_certs: HashMap<Arc<str>, Arc<crate::table::CertifiedKey>> = HashMap::new();
    let mut diagnostics = Vec::new();
    let mut exact: HashMap<Arc<str>, Vec<Arc<RouteEntry>>> = HashMap::new();
    let mut wildcard: HashMap<Arc<str>, Vec<Arc<RouteEntry>>> = HashMap::new();
    let mut by_service: HashMap<Key, BTreeSet<HostRef>> = HashMap::new();
    // Hosts repeat across routes; share one allocation per host.
    let mut interned: HashMap<String, Arc<str>> = HashMap::new();
    let mut intern = |s: &str| -> Arc<str> {
        if let Some(a) = interned.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        interned.insert(s.to_owned(), a.clone());
        a
    };

    for a in &admitted {
        let r = &a.route;
        let ns = r.metadata.ns();
        let object = format!("Route {ns}/{}", r.metadata.name);
        let settings = Arc::new(settings(
            &r.metadata.annotations,
            cfg,
            &object,
            &mut diagnostics,
        ));
        let targets: Arc<[Target]> = std::iter::once(&r.spec.to)
            .chain(&r.spec.alternate_backends)
            .map(|t| Target {
                service: (ns.to_owned(), t.name.clone()),
                weight: t.weight.unwrap_or(1).clamp(0, 256) as u32,
                port: r.spec.port.as_ref().map(|p| p.target_port.clone()),
            })
            .collect();
        let (backends, missing) = backend_set(objs, &slices, &targets, &object, &mut diagnostics);
        if !missing.is_empty() {
            let status = &mut statuses[a.status_index];
            let msg = format!("service {} not found", missing.join(", "));
            if missing.len() == targets.len() {
                status.admitted = false;
                status.reason = Some(Reason::ServiceNotFound);
            }
            status.message = Some(msg.clone());
            diagnostics.push(Diagnostic {
                object: object.clone(),
                message: msg,
            });
        }
        let (key, href) = match &a.wildcard_domain {
            Some(d) => {
                let k = intern(d);
                (k.clone(), HostRef::Wildcard(k))
            }
            None => {
                let k = intern(&a.host);
                (k.clone(), HostRef::Exact(k))
            }
        };
        for t in targets.iter() {
            by_service
                .entry(t.service.clone())
                .or_default()
                .insert(href.clone());
        }
        let terminates = matches!(
            a.termination,
            Some(Termination::Edge | Termination::Reencrypt)
        );
        if let Some(ck) = certs.cert_of(r).filter(|_| terminates) {
            if crate::tls::certs::seconds_left(&ck).is_some_and(|s| s < 0) {
                diagnostics.push(Diagnostic {
                    object: object.clone(),
                    message: "certificate has expired; still served".into(),
                });
            }
            match &a.wildcard_domain {
                Some(d) => wildcard_certs.insert(intern(d), ck),
                None => cert_map.insert(intern(&a.host), ck),
            };
        }
        let up_tls = match (a.termination, &r.spec.tls) {
            (Some(Termination::Reencrypt), Some(t)) => {
                let (u, warning) = upstream_tls.for_route(t, ns, &r.spec.to.name);
                if let Some(message) = warning {
                    diagnostics.push(Diagnostic {
                        object: object.clone(),
                        message,
                    });
                }
                u
            }
            _ => None,
        };
        let entry = Arc::new(RouteEntry {
            upstream_tls: up_tls,
            namespace: Arc::from(ns),
            name: Arc::from(r.metadata.name.as_str()),
            host: intern(&a.host),
            path: a.path.clone().into_boxed_str(),
            path_exact: a.path_exact,
            termination: a.termination,
            insecure: a.insecure,
            settings,
            targets,
            backends: Arc::new(backends),
        });
        match href {
            HostRef::Exact(_) => exact.entry(key).or_default().push(entry),
            HostRef::Wildcard(_) => wildcard.entry(key).or_default().push(entry),
        }
    }

    certs.finish();
    let table = RoutingTable {
        generation,
        certs: cert_map,
        wildcard_certs,
        exact: exact
            .into_iter()
            .map(|(k, v)| (k, host_routes(v)))
            .collect(),
        wildcard: wildcard
            .into_iter()
            .map(|(k, v)| (k, host_routes(v)))
            .collect(),
        statuses: Arc::new(statuses),
        by_service: Arc::new(
            by_service
                .into_iter()
                .map(|(k, v)| (k, v.into_iter().collect()))
                .collect(),
        ),
    };
    Compiled { table, diagnostics }
}

/// Rebuild only the hosts that send to `services`, re-resolving their
/// endpoints; everything else is shared with `prev`.
pub fn update_endpoints(
    prev: &RoutingTable,
    objs: &Objects,
    services: &BTreeSet<Key>,
    generation: u64,
) -> Compiled {
    let slices = SliceIndex::for_services(objs, services);
    let mut diagnostics = Vec::new();
    let mut table = RoutingTable {
        generation,
        ..prev.clone()
    };
    let hosts: BTreeSet<&HostRef> = services
        .iter()
        .filter_map(|s| prev.by_service.get(s))
        .flatten()
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
                let object = format!("Route {}/{}", r.namespace, r.name);
                let (backends, _) =
                    backend_set(objs, &slices, &r.targets, &object, &mut diagnostics);
                Arc::new(RouteEntry {
                    backends: Arc::new(backends),
                    ..RouteEntry::clone(r)
                })
            })
            .collect();
        map.insert(key.clone(), Arc::new(HostRoutes { routes }));
    }
    Compiled { table, diagnostics }
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

fn backend_set(
    objs: &Objects,
    slices: &SliceIndex<'_>,
    targets: &[Target],
    object: &str,
    diagnostics: &mut Vec<Diagnostic>,
) -> (BackendSet, Vec<String>) {
    let mut missing = Vec::new();
    let mut groups = Vec::with_capacity(targets.len());
    for t in targets {
        match resolve(objs, slices, &t.service, t.port.as_ref()) {
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
        BackendSet {
            groups: groups.into_boxed_slice(),
        },
        missing,
    )
}

fn settings(
    ann: &std::collections::BTreeMap<String, String>,
    cfg: &CompileConfig,
    object: &str,
    diagnostics: &mut Vec<Diagnostic>,
) -> RouteSettings {
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
    RouteSettings {
        timeout,
        tunnel_timeout,
        forwarded,
        hsts,
    }
}

#[cfg(test)]
mod tests;
