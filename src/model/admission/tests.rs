use super::*;
use crate::model::objects::*;

fn route(ns: &str, name: &str, ts: &str, host: &str, path: &str) -> Route {
    Route {
        metadata: ObjectMeta {
            name: name.into(),
            namespace: Some(ns.into()),
            creation_timestamp: Some(ts.into()),
            ..Default::default()
        },
        spec: RouteSpec {
            host: Some(host.into()),
            path: (!path.is_empty()).then(|| path.into()),
            to: RouteTarget {
                name: "svc".into(),
                ..Default::default()
            },
            ..Default::default()
        },
    }
}

fn run(routes: Vec<Route>, policy: &AdmissionPolicy) -> Admission {
    let c: Vec<Candidate> = routes
        .into_iter()
        .map(|r| Candidate::of(Arc::new(r)))
        .collect();
    admit(&c, policy)
}

fn status<'a>(a: &'a Admission, ns: &str, name: &str) -> &'a RouteStatus {
    a.statuses
        .iter()
        .find(|s| s.namespace == ns && s.name == name)
        .expect("status for every candidate")
}

const T1: &str = "2024-01-01T00:00:00Z";
const T2: &str = "2024-01-02T00:00:00Z";
const T3: &str = "2024-01-03T00:00:00Z";

#[test]
fn oldest_route_claims_the_host() {
    let a = run(
        vec![
            route("b", "newer", T2, "www.example.com", ""),
            route("a", "older", T1, "WWW.Example.com.", ""),
        ],
        &AdmissionPolicy::default(),
    );
    assert!(status(&a, "a", "older").admitted);
    assert_eq!(status(&a, "a", "older").host, "www.example.com");
    let s = status(&a, "b", "newer");
    assert!(!s.admitted);
    assert_eq!(s.reason, Some(Reason::HostAlreadyClaimed));
    assert!(s.message.as_deref().unwrap().contains("a/older"), "{s:?}");
}

#[test]
fn ties_break_on_uid_then_name() {
    let mut x = route("a", "x", T1, "h.example.com", "");
    let mut y = route("a", "y", T1, "h.example.com", "");
    x.metadata.uid = Some("2".into());
    y.metadata.uid = Some("1".into());
    let a = run(vec![x.clone(), y.clone()], &AdmissionPolicy::default());
    assert!(status(&a, "a", "y").admitted);
    x.metadata.uid = None;
    y.metadata.uid = None;
    let a = run(vec![y, x], &AdmissionPolicy::default());
    assert!(status(&a, "a", "x").admitted);
}

#[test]
fn owner_namespace_adds_paths_others_cannot() {
    let a = run(
        vec![
            route("a", "root", T1, "shop.example.com", ""),
            route("a", "api", T2, "shop.example.com", "/api"),
            route("a", "api-dup", T3, "shop.example.com", "/api"),
            route("b", "steal", T3, "shop.example.com", "/other"),
        ],
        &AdmissionPolicy::default(),
    );
    assert!(status(&a, "a", "root").admitted);
    assert!(status(&a, "a", "api").admitted);
    assert_eq!(
        status(&a, "a", "api-dup").reason,
        Some(Reason::HostAlreadyClaimed)
    );
    assert_eq!(
        status(&a, "b", "steal").reason,
        Some(Reason::HostAlreadyClaimed)
    );
    assert_eq!(a.admitted.len(), 2);
}

#[test]
fn deleting_the_owner_admits_the_next_oldest() {
    let routes = vec![
        route("a", "first", T1, "h.example.com", ""),
        route("b", "second", T2, "h.example.com", ""),
        route("c", "third", T3, "h.example.com", ""),
    ];
    let a = run(routes.clone(), &AdmissionPolicy::default());
    assert!(status(&a, "a", "first").admitted);
    assert!(!status(&a, "b", "second").admitted);
    let a = run(routes[1..].to_vec(), &AdmissionPolicy::default());
    assert!(status(&a, "b", "second").admitted);
    assert!(!status(&a, "c", "third").admitted);
}

#[test]
fn wildcards_need_the_policy_and_cover_one_label() {
    let mut w = route("a", "wild", T1, "www.example.com", "");
    w.spec.wildcard_policy = Some("Subdomain".into());
    let a = run(vec![w.clone()], &AdmissionPolicy::default());
    assert_eq!(
        status(&a, "a", "wild").reason,
        Some(Reason::RouteNotAdmitted)
    );

    let allow = AdmissionPolicy {
        allow_wildcard_routes: true,
        ..Default::default()
    };
    let a = run(
        vec![
            w.clone(),
            route("b", "inside", T2, "shop.example.com", ""),
            route("b", "deeper", T2, "a.shop.example.com", ""),
            route("a", "same-ns", T2, "api.example.com", ""),
        ],
        &allow,
    );
    assert!(status(&a, "a", "wild").admitted);
    assert_eq!(
        a.admitted[0].wildcard_domain.as_deref(),
        Some("example.com")
    );
    // Another namespace cannot take a host the wildcard covers…
    assert_eq!(
        status(&a, "b", "inside").reason,
        Some(Reason::HostAlreadyClaimed)
    );
    // …but two labels down is outside it.
    assert!(status(&a, "b", "deeper").admitted);
    assert!(status(&a, "a", "same-ns").admitted);

    // An older exact host from another namespace blocks the newer wildcard.
    let mut w2 = w.clone();
    w2.metadata.creation_timestamp = Some(T3.into());
    let a = run(
        vec![w2, route("b", "inside", T2, "shop.example.com", "")],
        &allow,
    );
    assert!(status(&a, "b", "inside").admitted);
    assert_eq!(
        status(&a, "a", "wild").reason,
        Some(Reason::HostAlreadyClaimed)
    );
}

#[test]
fn invalid_and_missing_hosts() {
    let mut none = route("a", "none", T1, "", "");
    none.spec.host = None;
    let a = run(
        vec![
            none.clone(),
            route("a", "bad", T1, "bad_host.example.com", ""),
            route("a", "star", T1, "*.example.com", ""),
        ],
        &AdmissionPolicy::default(),
    );
    assert_eq!(status(&a, "a", "none").reason, Some(Reason::NoHostValue));
    assert_eq!(status(&a, "a", "bad").reason, Some(Reason::InvalidHost));
    assert_eq!(status(&a, "a", "star").reason, Some(Reason::InvalidHost));
    let sub = AdmissionPolicy {
        route_subdomain: Some("apps.example.com".into()),
        ..Default::default()
    };
    let a = run(vec![none], &sub);
    assert_eq!(status(&a, "a", "none").host, "none-a.apps.example.com");
}

#[test]
fn tls_validation() {
    let mut pt = route("a", "pt", T1, "p.example.com", "/x");
    pt.spec.tls = Some(RouteTls {
        termination: "passthrough".into(),
        ..Default::default()
    });
    let mut allow = route("a", "allow", T1, "q.example.com", "");
    allow.spec.tls = Some(RouteTls {
        termination: "passthrough".into(),
        insecure_edge_termination_policy: Some("Allow".into()),
        ..Default::default()
    });
    let mut edge = route("a", "edge", T1, "e.example.com", "");
    edge.spec.tls = Some(RouteTls {
        termination: "edge".into(),
        destination_ca_certificate: Some("x".into()),
        ..Default::default()
    });
    let mut bogus = route("a", "bogus", T1, "b.example.com", "");
    bogus.spec.tls = Some(RouteTls {
        termination: "sideways".into(),
        ..Default::default()
    });
    let mut redirect = route("a", "redirect", T1, "r.example.com", "");
    redirect.spec.tls = Some(RouteTls {
        termination: "edge".into(),
        insecure_edge_termination_policy: Some("Redirect".into()),
        ..Default::default()
    });
    let a = run(
        vec![pt, allow, edge, bogus, redirect],
        &AdmissionPolicy::default(),
    );
    for n in ["pt", "allow", "edge", "bogus"] {
        assert_eq!(
            status(&a, "a", n).reason,
            Some(Reason::ExtendedValidationFailed),
            "{n}"
        );
    }
    let r = &a.admitted[0];
    assert_eq!(r.termination, Some(Termination::Edge));
    assert_eq!(r.insecure, InsecurePolicy::Redirect);
}

#[test]
fn passthrough_and_tls_path_routes_exclude_each_other() {
    let mut pt = route("a", "pt", T1, "h.example.com", "");
    pt.spec.tls = Some(RouteTls {
        termination: "passthrough".into(),
        ..Default::default()
    });
    let mut edge = route("a", "edge", T2, "h.example.com", "/app");
    edge.spec.tls = Some(RouteTls {
        termination: "edge".into(),
        ..Default::default()
    });
    let a = run(vec![edge, pt], &AdmissionPolicy::default());
    assert!(status(&a, "a", "pt").admitted);
    assert_eq!(
        status(&a, "a", "edge").reason,
        Some(Reason::HostAlreadyClaimed)
    );
}

#[test]
fn weights_and_paths_are_validated() {
    let mut w = route("a", "w", T1, "w.example.com", "");
    w.spec.to.weight = Some(300);
    let p = route("a", "p", T1, "p.example.com", "nope");
    let slash = route("a", "slash", T1, "s.example.com", "/");
    let a = run(vec![w, p, slash], &AdmissionPolicy::default());
    assert_eq!(
        status(&a, "a", "w").reason,
        Some(Reason::ExtendedValidationFailed)
    );
    assert_eq!(
        status(&a, "a", "p").reason,
        Some(Reason::ExtendedValidationFailed)
    );
    assert!(status(&a, "a", "slash").admitted);
    assert_eq!(a.admitted[0].path, "");
}

#[test]
fn domain_allow_and_deny_lists() {
    let policy = AdmissionPolicy {
        denied_domains: vec!["internal.example.com".into()],
        allowed_domains: vec!["example.com".into()],
        ..Default::default()
    };
    let a = run(
        vec![
            route("a", "ok", T1, "www.example.com", ""),
            route("a", "denied", T1, "db.internal.example.com", ""),
            route("a", "foreign", T1, "www.example.org", ""),
        ],
        &policy,
    );
    assert!(status(&a, "a", "ok").admitted);
    assert_eq!(
        status(&a, "a", "denied").reason,
        Some(Reason::RouteNotAdmitted)
    );
    assert_eq!(
        status(&a, "a", "foreign").reason,
        Some(Reason::RouteNotAdmitted)
    );
}
