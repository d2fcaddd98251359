//! Ingress → routes, as OpenShift's ingress-to-route controller does it: one
//! route per rule × path, `*.x` hosts as Subdomain wildcards, TLS hosts with a
//! secret become edge routes that redirect plain HTTP, and
//! `route.openshift.io/termination` overrides the termination.

use super::admission::Candidate;
use super::objects::*;
use super::store::Objects;
use std::sync::Arc;

/// The IngressClass controller name gatehouse answers to by default.
pub const DEFAULT_CONTROLLER: &str = "gatehouse.io/ingress-controller";
/// OpenShift's ingress-to-route controller: Ingresses of its classes are
/// served too, so clusters moving from the OpenShift router need no change.
pub const OPENSHIFT_CONTROLLER: &str = "openshift.io/ingress-to-route";
const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// Routes derived from every Ingress this router serves. Ingresses of other
/// classes are skipped silently: they belong to another controller.
pub fn candidates(objs: &Objects, controller: &str) -> Vec<Candidate> {
    let mut out = Vec::new();
    for ((ns, _), ing) in &objs.ingresses {
        if !is_ours(ing, objs, controller) {
            continue;
        }
        for rule in &ing.spec.rules {
            let Some(raw_host) = rule.host.as_deref().filter(|h| !h.is_empty()) else {
                continue;
            };
            let (host, wildcard) = match raw_host.strip_prefix("*.") {
                Some(rest) => (format!("wildcard.{rest}"), true),
                None => (raw_host.to_owned(), false),
            };
            let Some(http) = &rule.http else { continue };
            for p in &http.paths {
                let Some(svc) = &p.backend.service else {
                    continue;
                };
                let path = p.path.clone().filter(|p| !p.is_empty());
                let exact = p.path_type.as_deref() == Some("Exact");
                out.push(Candidate {
                    route: Arc::new(to_route(
                        ing, ns, &host, wildcard, path, svc, raw_host, objs,
                    )),
                    path_exact: exact,
                    from_ingress: Some(ing.metadata.name.clone()),
                });
            }
        }
    }
    out
}

/// Whether this router serves an Ingress: its class (`ingressClassName`, or
/// the legacy annotation naming a class) is handled by our controller; an
/// Ingress without a class is ours when our class is the cluster default, or
/// when no class is marked default at all.
pub fn is_ours(ing: &Ingress, objs: &Objects, controller: &str) -> bool {
    let ours = |c: &IngressClass| {
        c.spec.controller == controller || c.spec.controller == OPENSHIFT_CONTROLLER
    };
    let legacy = ing.metadata.annotations.get("kubernetes.io/ingress.class");
    match (ing.spec.ingress_class_name.as_deref(), legacy) {
        (Some(class), _) => Objects::get(&objs.ingress_classes, "", class).is_some_and(|c| ours(c)),
        (None, Some(l)) if !l.is_empty() => {
            matches!(l.as_str(), "openshift-default" | "gatehouse")
                || Objects::get(&objs.ingress_classes, "", l).is_some_and(|c| ours(c))
        }
        _ => {
            let mut defaults = objs.ingress_classes.values().filter(|c| {
                c.metadata
                    .annotations
                    .get(DEFAULT_CLASS_ANNOTATION)
                    .is_some_and(|v| v == "true")
            });
            match defaults.next() {
                None => true,
                Some(first) => ours(first) || defaults.any(|c| ours(c)),
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn to_route(
    ing: &Ingress,
    ns: &str,
    host: &str,
    wildcard: bool,
    path: Option<String>,
    svc: &IngressServiceBackend,
    raw_host: &str,
    objs: &Objects,
) -> Route {
    let service = Objects::get(&objs.services, ns, &svc.name);
    // Endpoint ports carry the Service port's name; unnamed ports are matched
    // by their target number.
    let target_port = service.and_then(|s| {
        s.spec
            .ports
            .iter()
            .find(|p| match (&svc.port.name, svc.port.number) {
                (Some(n), _) => p.name.as_deref() == Some(n),
                (None, Some(num)) => p.port == num,
                _ => false,
            })
            .map(|p| match (&p.name, &p.target_port) {
                (Some(n), _) if !n.is_empty() => IntOrString::Str(n.clone()),
                (_, Some(t)) => t.clone(),
                _ => IntOrString::Int(p.port),
            })
    });
    let target_port = target_port.or_else(|| match (&svc.port.name, svc.port.number) {
        (Some(n), _) => Some(IntOrString::Str(n.clone())),
        (None, Some(n)) => Some(IntOrString::Int(n)),
        _ => None,
    });
    let secret = ing
        .spec
        .tls
        .iter()
        .filter(|t| t.hosts.is_empty() || t.hosts.iter().any(|h| h == raw_host))
        .find_map(|t| {
            t.secret_name
                .as_deref()
                .and_then(|s| Objects::get(&objs.secrets, ns, s))
        });
    let has_tls_secret = secret.is_some();
    // kubernetes.io/tls: tls.crt + tls.key, base64 in `data` or plain in
    // `stringData`. Undecodable material leaves the route on the default
    // certificate; admission reports bad PEM.
    let pem = |k: &str| -> Option<String> {
        let s = secret?;
        if let Some(v) = s.string_data.get(k) {
            return Some(v.clone());
        }
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(s.data.get(k)?.trim())
            .ok()?;
        String::from_utf8(raw).ok()
    };
    let termination = ing
        .metadata
        .annotations
        .get("route.openshift.io/termination")
        .cloned()
        .or_else(|| has_tls_secret.then(|| "edge".to_owned()));
    let tls = termination.map(|t| RouteTls {
        insecure_edge_termination_policy: (t != "passthrough").then(|| "Redirect".to_owned()),
        certificate: (t != "passthrough").then(|| pem("tls.crt")).flatten(),
        key: (t != "passthrough").then(|| pem("tls.key")).flatten(),
        termination: t,
        ..Default::default()
    });
    let mut metadata = ing.metadata.clone();
    metadata.namespace = Some(ns.to_owned());
    metadata.name = format!(
        "{}-{:08x}",
        ing.metadata.name,
        fnv1a(&[host, path.as_deref().unwrap_or("")])
    );
    // Distinct uids keep the age order deterministic among siblings.
    metadata.uid = Some(format!(
        "{}-{}",
        ing.metadata.uid.as_deref().unwrap_or(""),
        metadata.name
    ));
    Route {
        metadata,
        spec: RouteSpec {
            host: Some(host.to_owned()),
            path,
            to: RouteTarget {
                kind: Some("Service".into()),
                name: svc.name.clone(),
                weight: None,
            },
            alternate_backends: Vec::new(),
            port: target_port.map(|target_port| RoutePort { target_port }),
            tls,
            wildcard_policy: wildcard.then(|| "Subdomain".to_owned()),
        },
    }
}

/// A stable 32-bit hash for derived names (FNV-1a).
pub fn fnv1a(parts: &[&str]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= b as u32;
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parse::parse_text;

    fn objs(text: &str) -> Objects {
        let (o, e) = parse_text(text, false);
        assert!(e.is_empty(), "{e:?}");
        let mut s = Objects::default();
        for x in o {
            s.insert(x);
        }
        s
    }

    #[test]
    fn rules_and_paths_become_routes() {
        let o = objs(
            r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Secret
metadata: {name: tls, namespace: shop}
type: kubernetes.io/tls
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: shop, namespace: shop}
spec:
  tls: [{hosts: [secure.example.com], secretName: tls}]
  rules:
  - host: www.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
      - {path: /exact, pathType: Exact, backend: {service: {name: web, port: {name: http}}}}
  - host: "*.apps.example.com"
    http: {paths: [{backend: {service: {name: web, port: {number: 80}}}}]}
  - host: secure.example.com
    http: {paths: [{backend: {service: {name: web, port: {number: 80}}}}]}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: other, namespace: shop}
spec:
  ingressClassName: nginx
  rules: [{host: x.example.com, http: {paths: [{backend: {service: {name: web, port: {number: 80}}}}]}}]
"#,
        );
        let c = candidates(&o, DEFAULT_CONTROLLER);
        assert_eq!(c.len(), 4);
        let r0 = &c[0].route;
        assert_eq!(r0.spec.host.as_deref(), Some("www.example.com"));
        assert_eq!(
            r0.spec.port.as_ref().unwrap().target_port,
            IntOrString::Str("http".into())
        );
        assert!(c[1].path_exact);
        assert_eq!(
            c[2].route.spec.host.as_deref(),
            Some("wildcard.apps.example.com")
        );
        assert_eq!(
            c[2].route.spec.wildcard_policy.as_deref(),
            Some("Subdomain")
        );
        let tls = c[3].route.spec.tls.as_ref().unwrap();
        assert_eq!(tls.termination, "edge");
        assert_eq!(
            tls.insecure_edge_termination_policy.as_deref(),
            Some("Redirect")
        );
        assert_ne!(c[0].route.metadata.name, c[1].route.metadata.name);
    }
}
