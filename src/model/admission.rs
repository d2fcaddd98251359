//! Route admission as the OpenShift router does it: validation, then host
//! claims with the oldest route winning.
//!
//! Input is every candidate route (Routes and routes derived from
//! Ingresses); output is the admitted set plus one status per candidate.
//! Admission is recomputed from scratch on every change, so a rejected route
//! is admitted again as soon as whatever blocked it goes away.

use super::host;
use super::objects::Route;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

/// How TLS is handled for a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Termination {
    Edge,
    Passthrough,
    Reencrypt,
}

/// `insecureEdgeTerminationPolicy`: what the plain-HTTP port does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InsecurePolicy {
    #[default]
    None,
    Allow,
    Redirect,
}

/// The OpenShift reasons a route is not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Reason {
    HostAlreadyClaimed,
    InvalidHost,
    NoHostValue,
    RouteNotAdmitted,
    ExtendedValidationFailed,
    /// Every service the route names is missing (gatehouse-specific).
    ServiceNotFound,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A route before admission.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub route: Arc<Route>,
    /// Ingress `pathType: Exact`: the path matches only itself.
    pub path_exact: bool,
    /// The Ingress this route was derived from, if any.
    pub from_ingress: Option<String>,
}

impl Candidate {
    pub fn of(route: Arc<Route>) -> Self {
        Candidate {
            route,
            path_exact: false,
            from_ingress: None,
        }
    }
}

/// A route that holds its host (and path) claim.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub route: Arc<Route>,
    /// Normalised host: lowercase, no port, no trailing dot.
    pub host: String,
    /// `Some(domain)` for `wildcardPolicy: Subdomain`: serves `<label>.domain`.
    pub wildcard_domain: Option<String>,
    /// "" when the route has no path (or "/").
    pub path: String,
    pub path_exact: bool,
    pub termination: Option<Termination>,
    pub insecure: InsecurePolicy,
    /// Index into the status list, so compile can add a message.
    pub status_index: usize,
}

/// One row of `GET /api/routes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteStatus {
    pub namespace: String,
    pub name: String,
    pub host: String,
    pub path: String,
    pub termination: Option<Termination>,
    pub admitted: bool,
    pub reason: Option<Reason>,
    pub message: Option<String>,
    /// The Ingress this route was derived from (its status is the Ingress's
    /// `loadBalancer`, not a Route status).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress: Option<String>,
}

/// Router-wide admission settings (ROUTER_* in OpenShift).
#[derive(Debug, Clone, Default)]
pub struct AdmissionPolicy {
    /// ROUTER_ALLOW_WILDCARD_ROUTES.
    pub allow_wildcard_routes: bool,
    /// ROUTER_SUBDOMAIN: routes without a host get `<name>-<namespace>.<subdomain>`.
    pub route_subdomain: Option<String>,
    /// ROUTER_DENIED_DOMAINS: hosts in these domains are not admitted.
    pub denied_domains: Vec<String>,
    /// ROUTER_ALLOWED_DOMAINS: when non-empty, only hosts in these domains.
    pub allowed_domains: Vec<String>,
}

/// The result of admission.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    pub admitted: Vec<Admitted>,
    pub statuses: Vec<RouteStatus>,
    /// Per status row, the host the route claims when it passed the checks
    /// before claims ([`claimed_host`]), admitted or not.
    pub claimed: Vec<Option<String>>,
}

/// Admit candidates. Deterministic: the same input gives the same output on
/// every replica.
pub fn admit(candidates: &[Candidate], policy: &AdmissionPolicy) -> Admission {
    admit_with(candidates, policy, &|_| Ok(()))
}

/// `admit` with an extra check run after the built-in validation and
/// before host claims (certificate parsing, which needs crypto and lives in
/// `compile`): a route failing it is `ExtendedValidationFailed` and claims
/// nothing.
pub fn admit_with(
    candidates: &[Candidate],
    policy: &AdmissionPolicy,
    extended: &dyn Fn(&Candidate) -> Result<(), String>,
) -> Admission {
    let mut order: Vec<&Candidate> = candidates.iter().collect();
    order.sort_by(|a, b| age_key(&a.route).cmp(&age_key(&b.route)));

    let mut out = Admission::default();
    let mut claims = Claims::default();
    for c in order {
        let status_index = out.statuses.len();
        let r = &c.route;
        let mut status = RouteStatus {
            namespace: r.metadata.ns().to_owned(),
            name: r.metadata.name.clone(),
            host: r.spec.host.clone().unwrap_or_default(),
            path: r.spec.path.clone().unwrap_or_default(),
            termination: None,
            admitted: false,
            reason: None,
            message: None,
            ingress: c.from_ingress.clone(),
        };
        let validated = validate(c, policy);
        out.claimed
            .push(validated.as_ref().ok().map(|a| a.host.clone()));
        let checked = validated.and_then(|a| match extended(c) {
            Ok(()) => Ok(a),
            Err(m) => Err((Reason::ExtendedValidationFailed, m)),
        });
        match checked.and_then(|a| claims.claim(a, c)) {
            Ok(mut a) => {
                status.host = a.host.clone();
                status.termination = a.termination;
                status.admitted = true;
                a.status_index = status_index;
                out.admitted.push(a);
            }
            Err((reason, message)) => {
                status.reason = Some(reason);
                status.message = Some(message);
            }
        }
        out.statuses.push(status);
    }
    out
}

/// The host (lowercase, no port) a candidate would claim if admitted, or
/// None when it fails the checks that come before claims (an invalid or
/// missing host, a denied domain, a bad TLS setting): such a route claims
/// nothing.
pub fn claimed_host(c: &Candidate, policy: &AdmissionPolicy) -> Option<String> {
    validate(c, policy).ok().map(|a| a.host)
}

/// creationTimestamp, then uid, then namespace/name. Objects without a
/// timestamp (hand-written manifests) count as newest. Admission takes
/// candidates in this order; statuses are listed in it.
pub fn age_key(r: &Route) -> (&str, &str, &str, &str) {
    let m = &r.metadata;
    (
        m.creation_timestamp.as_deref().unwrap_or("~"),
        m.uid.as_deref().unwrap_or(""),
        m.ns(),
        &m.name,
    )
}

type Rejection = (Reason, String);

fn validate(c: &Candidate, policy: &AdmissionPolicy) -> Result<Admitted, Rejection> {
    let r = &c.route;
    let spec = &r.spec;
    let ext = |m: &str| (Reason::ExtendedValidationFailed, m.to_owned());

    let raw_host = match spec.host.as_deref().map(str::trim) {
        Some(h) if !h.is_empty() => h.to_owned(),
        _ => match &policy.route_subdomain {
            Some(sub) => format!("{}-{}.{}", r.metadata.name, r.metadata.ns(), sub),
            None => {
                return Err((
                    Reason::NoHostValue,
                    "no host value was defined for the route".into(),
                ))
            }
        },
    };
    let wildcard = match spec.wildcard_policy.as_deref() {
        None | Some("") | Some("None") => false,
        Some("Subdomain") => true,
        Some(other) => return Err(ext(&format!("unknown wildcardPolicy {other:?}"))),
    };
    let host = host::normalize(&raw_host)
        .filter(|h| host::is_valid_dns_subdomain(h, wildcard))
        .ok_or_else(|| {
            (
                Reason::InvalidHost,
                format!("host {raw_host:?} must conform to DNS 1123 naming conventions"),
            )
        })?;
    let wildcard_domain = if wildcard {
        if !policy.allow_wildcard_routes {
            return Err((
                Reason::RouteNotAdmitted,
                "wildcard routes are not allowed".into(),
            ));
        }
        match host::parent_domain(&host).filter(|d| d.contains('.')) {
            Some(d) => Some(d.to_owned()),
            None => {
                return Err((
                    Reason::InvalidHost,
                    format!("wildcard host {host:?} needs at least three labels"),
                ))
            }
        }
    } else {
        if host.starts_with("*.") {
            return Err((
                Reason::InvalidHost,
                "a host with * needs wildcardPolicy Subdomain".into(),
            ));
        }
        None
    };
    let in_domain = |d: &str| {
        let d = d
            .trim_start_matches("*.")
            .trim_end_matches('.')
            .to_ascii_lowercase();
        host == d || host.ends_with(&format!(".{d}"))
    };
    if policy.denied_domains.iter().any(|d| in_domain(d)) {
        return Err((
            Reason::RouteNotAdmitted,
            format!("host {host} is in a denied domain"),
        ));
    }
    if !policy.allowed_domains.is_empty() && !policy.allowed_domains.iter().any(|d| in_domain(d)) {
        return Err((
            Reason::RouteNotAdmitted,
            format!("host {host} is not in an allowed domain"),
        ));
    }

    let path = match spec.path.as_deref() {
        None | Some("") | Some("/") => String::new(),
        Some(p) if !p.starts_with('/') => return Err(ext("path must begin with /")),
        Some(p)
            if p.bytes()
                .any(|b| b <= b' ' || b == b'?' || b == b'#' || b == 0x7f) =>
        {
            return Err(ext(
                "path must not contain spaces, control characters, ? or #",
            ))
        }
        Some(p) => p.to_owned(),
    };

    if !matches!(spec.to.kind.as_deref(), None | Some("") | Some("Service")) {
        return Err(ext("spec.to.kind must be Service"));
    }
    if spec.to.name.trim().is_empty() {
        return Err(ext("spec.to.name is required"));
    }
    for t in std::iter::once(&spec.to).chain(&spec.alternate_backends) {
        if let Some(w) = t.weight {
            if !(0..=256).contains(&w) {
                return Err(ext(&format!(
                    "weight {w} of {} must be between 0 and 256",
                    t.name
                )));
            }
        }
        if t.name.trim().is_empty() {
            return Err(ext("alternateBackends need a name"));
        }
    }

    let (termination, insecure) = match &spec.tls {
        None => (None, InsecurePolicy::Allow),
        Some(tls) => {
            let term = match tls.termination.to_ascii_lowercase().as_str() {
                "edge" => Termination::Edge,
                "passthrough" => Termination::Passthrough,
                "reencrypt" => Termination::Reencrypt,
                other => return Err(ext(&format!("invalid termination {other:?}"))),
            };
            let insecure = match tls.insecure_edge_termination_policy.as_deref() {
                None | Some("") | Some("None") => InsecurePolicy::None,
                Some("Allow") => InsecurePolicy::Allow,
                Some("Redirect") => InsecurePolicy::Redirect,
                Some(o) => {
                    return Err(ext(&format!("invalid insecureEdgeTerminationPolicy {o:?}")))
                }
            };
            match term {
                Termination::Passthrough => {
                    if insecure == InsecurePolicy::Allow {
                        return Err(ext("passthrough termination does not support insecureEdgeTerminationPolicy Allow"));
                    }
                    if tls.certificate.is_some()
                        || tls.key.is_some()
                        || tls.ca_certificate.is_some()
                        || tls.destination_ca_certificate.is_some()
                    {
                        return Err(ext("passthrough termination does not support certificates"));
                    }
                    if !path.is_empty() {
                        return Err(ext("passthrough termination does not support paths"));
                    }
                }
                Termination::Edge if tls.destination_ca_certificate.is_some() => {
                    return Err(ext(
                        "edge termination does not support destinationCACertificate",
                    ));
                }
                _ => {}
            }
            (Some(term), insecure)
        }
    };

    Ok(Admitted {
        route: c.route.clone(),
        host,
        wildcard_domain,
        path,
        path_exact: c.path_exact,
        termination,
        insecure,
        status_index: 0,
    })
}

/// Who holds a host or a wildcard domain.
#[derive(Debug)]
struct Claim {
    namespace: String,
    /// `namespace/name` of the oldest route, for messages.
    owner: String,
    /// path → `namespace/name` that holds it.
    paths: HashMap<String, String>,
    passthrough: bool,
    tls_paths: bool,
}

#[derive(Debug, Default)]
struct Claims {
    exact: HashMap<String, Claim>,
    wildcard: HashMap<String, Claim>,
    /// domain → namespaces with admitted exact hosts directly inside it.
    exact_namespaces: HashMap<String, HashSet<String>>,
}

impl Claims {
    fn claim(&mut self, a: Admitted, c: &Candidate) -> Result<Admitted, Rejection> {
        let ns = c.route.metadata.ns();
        let me = format!("{ns}/{}", c.route.metadata.name);
        let taken = |owner: &str, what: &str| {
            (
                Reason::HostAlreadyClaimed,
                format!("route {owner} already exposes {what} and is older"),
            )
        };
        let parent = host::parent_domain(&a.host).map(str::to_owned);
        if let Some(domain) = &a.wildcard_domain {
            if let Some(w) = self.wildcard.get(domain) {
                if w.namespace != ns {
                    return Err(taken(&w.owner, &format!("*.{domain}")));
                }
            }
            if let Some(others) = self.exact_namespaces.get(domain) {
                if let Some(other) = others.iter().find(|o| o.as_str() != ns) {
                    return Err((
                        Reason::HostAlreadyClaimed,
                        format!("namespace {other} already exposes hosts in {domain} and is older"),
                    ));
                }
            }
        } else if let Some(w) = parent.as_ref().and_then(|p| self.wildcard.get(p)) {
            if w.namespace != ns {
                return Err(taken(
                    &w.owner,
                    &format!("*.{}", parent.as_deref().unwrap_or("")),
                ));
            }
        }
        let map = if let Some(d) = &a.wildcard_domain {
            self.wildcard.entry(d.clone())
        } else {
            self.exact.entry(a.host.clone())
        };
        let claim = map.or_insert_with(|| Claim {
            namespace: ns.to_owned(),
            owner: me.clone(),
            paths: HashMap::new(),
            passthrough: false,
            tls_paths: false,
        });
        let shown = if a.path.is_empty() {
            a.host.clone()
        } else {
            format!("{}{}", a.host, a.path)
        };
        if claim.namespace != ns {
            return Err(taken(&claim.owner, &a.host));
        }
        if let Some(holder) = claim.paths.get(&a.path) {
            return Err(taken(holder, &shown));
        }
        let is_passthrough = a.termination == Some(Termination::Passthrough);
        let tls_path = !a.path.is_empty()
            && matches!(
                a.termination,
                Some(Termination::Edge | Termination::Reencrypt)
            );
        if (is_passthrough && claim.tls_paths) || (tls_path && claim.passthrough) {
            return Err((
                Reason::HostAlreadyClaimed,
                format!(
                    "{} is served by passthrough and TLS path routes; an older route wins",
                    a.host
                ),
            ));
        }
        claim.passthrough |= is_passthrough;
        claim.tls_paths |= tls_path;
        claim.paths.insert(a.path.clone(), me);
        if a.wildcard_domain.is_none() {
            if let Some(p) = parent {
                self.exact_namespaces
                    .entry(p)
                    .or_default()
                    .insert(ns.to_owned());
            }
        }
        Ok(a)
    }
}

#[cfg(test)]
mod tests;
