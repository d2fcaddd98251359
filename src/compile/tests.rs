use super::*;
use crate::model::parse::parse_text;
use crate::table::{Endpoint, UpstreamProtocol};

fn objs(text: &str) -> Objects {
    let (o, e) = parse_text(text, false);
    assert!(e.is_empty(), "{e:?}");
    let mut s = Objects::default();
    for x in o {
        s.insert(x);
    }
    s
}

const SVC: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: grpc, port: 9000, targetPort: 9000, appProtocol: kubernetes.io/h2c}
---
apiVersion: v1
kind: Endpoints
metadata: {name: web}
subsets:
- addresses: [{ip: 10.0.0.1}, {ip: 10.0.0.2}]
  notReadyAddresses: [{ip: 10.0.0.9}]
  ports: [{name: http, port: 8080}, {name: grpc, port: 9000}]
"#;

fn route(name: &str, host: &str, path: &str, port: &str) -> String {
    format!(
        "---\napiVersion: route.openshift.io/v1\nkind: Route\nmetadata: {{name: {name}}}\nspec:\n  host: {host}\n  path: {path:?}\n  to: {{kind: Service, name: web}}\n{port}\n"
    )
}

fn eps(t: &RoutingTable, host: &str, path: &str) -> Vec<String> {
    let r = t.lookup(host, path).expect("a route");
    r.backends
        .groups
        .iter()
        .flat_map(|g| g.endpoints.iter().map(|e| e.to_string()))
        .collect()
}

#[test]
fn target_port_by_name_and_number_ready_only() {
    let o = objs(&format!(
        "{SVC}{}{}{}{}",
        route("byname", "a.example.com", "", "  port: {targetPort: http}"),
        route("bynum", "b.example.com", "", "  port: {targetPort: 8080}"),
        route("bysvcport", "c.example.com", "", "  port: {targetPort: 80}"),
        route("all", "d.example.com", "", ""),
    ));
    let c = compile(&o, &CompileConfig::default(), 1);
    let t = &c.table;
    t.check_invariants();
    assert_eq!(
        eps(t, "a.example.com", "/"),
        ["10.0.0.1:8080", "10.0.0.2:8080"]
    );
    assert_eq!(
        eps(t, "B.EXAMPLE.COM:80", "/x"),
        ["10.0.0.1:8080", "10.0.0.2:8080"]
    );
    assert_eq!(
        eps(t, "c.example.com", "/"),
        ["10.0.0.1:8080", "10.0.0.2:8080"]
    );
    assert_eq!(eps(t, "d.example.com", "/").len(), 4);
    assert!(t.lookup("unknown.example.com", "/").is_none());
}

#[test]
fn h2c_app_protocol() {
    let o = objs(&format!(
        "{SVC}{}",
        route("g", "g.example.com", "", "  port: {targetPort: grpc}")
    ));
    let t = compile(&o, &CompileConfig::default(), 1).table;
    let r = t.lookup("g.example.com", "/").unwrap();
    assert_eq!(r.backends.groups[0].protocol, UpstreamProtocol::H2c);
}

#[test]
fn longest_path_first_on_segment_boundaries() {
    let o = objs(&format!(
        "{SVC}{}{}{}",
        route("root", "h.example.com", "/", ""),
        route("sub", "h.example.com", "/sub", ""),
        route("subx", "h.example.com", "/sub/x", ""),
    ));
    let t = compile(&o, &CompileConfig::default(), 1).table;
    t.check_invariants();
    let name = |p: &str| t.lookup("h.example.com", p).unwrap().name.to_string();
    assert_eq!(name("/sub/x/y"), "subx");
    assert_eq!(name("/sub/xy"), "sub");
    assert_eq!(name("/sub"), "sub");
    assert_eq!(name("/subpar"), "root");
    assert_eq!(name("/"), "root");
}

#[test]
fn slices_win_over_endpoints_and_not_ready_is_skipped() {
    let o = objs(&format!(
        "{SVC}---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nendpoints:\n- {{addresses: [10.1.0.1], conditions: {{ready: true}}}}\n- {{addresses: [10.1.0.2], conditions: {{ready: false}}}}\n- {{addresses: [10.1.0.3]}}\nports: [{{name: http, port: 8080}}]\n{}",
        route("r", "s.example.com", "", "  port: {targetPort: http}")
    ));
    let t = compile(&o, &CompileConfig::default(), 1).table;
    assert_eq!(
        eps(&t, "s.example.com", "/"),
        ["10.1.0.1:8080", "10.1.0.3:8080"]
    );
}

#[test]
fn external_name_resolves_by_dns_later() {
    let o = objs(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec: {{type: ExternalName, externalName: db.example.org., ports: [{{port: 5432}}]}}\n{}",
        route("r", "x.example.com", "", "")
    ));
    let t = compile(&o, &CompileConfig::default(), 1).table;
    let r = t.lookup("x.example.com", "/").unwrap();
    assert_eq!(
        r.backends.groups[0].endpoints[0],
        Endpoint::Dns {
            host: "db.example.org".into(),
            port: 5432,
            public_only: false,
        }
    );
}

#[test]
fn external_names_cannot_point_at_the_node_from_an_untrusted_source() {
    let o = objs(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: ip}}\nspec: {{type: ExternalName, externalName: 169.254.169.254, ports: [{{port: 80}}]}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: name}}\nspec: {{type: ExternalName, externalName: localhost, ports: [{{port: 80}}]}}\n{}{}",
        route("a", "ip.example.com", "", "").replace("name: web", "name: ip"),
        route("b", "name.example.com", "", "").replace("name: web", "name: name"),
    ));
    let cfg = CompileConfig {
        allow_local_endpoints: false,
        ..CompileConfig::default()
    };
    let c = compile(&o, &cfg, 1);
    let ip = c.table.lookup("ip.example.com", "/").unwrap();
    assert!(ip.backends.groups[0].endpoints.is_empty());
    assert!(c
        .diagnostics
        .iter()
        .any(|d| d.message.contains("169.254.169.254")));
    // A name is resolved when connecting; node-local answers are refused then.
    let name = c.table.lookup("name.example.com", "/").unwrap();
    assert_eq!(
        name.backends.groups[0].endpoints[0],
        Endpoint::Dns {
            host: "localhost".into(),
            port: 80,
            public_only: true,
        }
    );
}

#[test]
fn missing_service_is_reported_and_serves_nothing() {
    let o = objs(&route("r", "m.example.com", "", ""));
    let c = compile(&o, &CompileConfig::default(), 1);
    let s = &c.table.statuses[0];
    assert!(!s.admitted);
    assert_eq!(s.reason, Some(Reason::ServiceNotFound));
    assert!(c
        .table
        .lookup("m.example.com", "/")
        .unwrap()
        .backends
        .is_empty());
    assert!(c.diagnostics.iter().any(|d| d.object == "Route default/r"));
}

#[test]
fn bad_annotations_are_ignored_with_a_diagnostic() {
    let o = objs(&format!(
        "{SVC}---\napiVersion: route.openshift.io/v1\nkind: Route\nmetadata:\n  name: r\n  annotations:\n    haproxy.router.openshift.io/timeout: 1d12h\n    haproxy.router.openshift.io/set-forwarded-headers: sometimes\n    haproxy.router.openshift.io/timeout-tunnel: 5m\nspec: {{host: t.example.com, to: {{name: web}}}}\n"
    ));
    let c = compile(&o, &CompileConfig::default(), 1);
    let r = c.table.lookup("t.example.com", "/").unwrap();
    assert_eq!(r.settings.timeout, CompileConfig::default().default_timeout);
    assert_eq!(r.settings.tunnel_timeout, Duration::from_secs(300));
    assert_eq!(r.settings.forwarded, ForwardedPolicy::Append);
    assert_eq!(c.diagnostics.len(), 2, "{:?}", c.diagnostics);
}

#[test]
fn endpoint_update_matches_a_full_compile_and_shares_the_rest() {
    let base = format!(
        "{SVC}{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: other}}\nspec: {{ports: [{{port: 80}}]}}\n---\napiVersion: route.openshift.io/v1\nkind: Route\nmetadata: {{name: o}}\nspec: {{host: o.example.com, to: {{name: other}}}}\n",
        route("r", "u.example.com", "", "  port: {targetPort: http}")
    );
    let a = objs(&base);
    let b = objs(&base.replace("10.0.0.2", "10.0.0.3"));
    let cfg = CompileConfig::default();
    let t1 = compile(&a, &cfg, 1).table;
    let crate::model::store::Change::EndpointsOnly(svcs) = b.change_from(&a) else {
        panic!()
    };
    let t2 = update_endpoints(&t1, &b, &svcs, 2, &cfg).table;
    let full = compile(&b, &cfg, 2).table;
    assert_eq!(
        eps(&t2, "u.example.com", "/"),
        eps(&full, "u.example.com", "/")
    );
    assert_eq!(
        eps(&t2, "u.example.com", "/"),
        ["10.0.0.1:8080", "10.0.0.3:8080"]
    );
    // The untouched host is the very same allocation.
    assert!(Arc::ptr_eq(
        &t1.exact["o.example.com"],
        &t2.exact["o.example.com"]
    ));
    assert_eq!(t2.generation, 2);
}

#[test]
fn wildcard_lookup_after_exact() {
    let o = objs(&format!(
        "{SVC}---\napiVersion: route.openshift.io/v1\nkind: Route\nmetadata: {{name: w}}\nspec: {{host: www.example.com, wildcardPolicy: Subdomain, to: {{name: web}}}}\n{}",
        route("e", "api.example.com", "/v1", "")
    ));
    let cfg = CompileConfig {
        admission: AdmissionPolicy {
            allow_wildcard_routes: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let t = compile(&o, &cfg, 1).table;
    let name = |h: &str, p: &str| t.lookup(h, p).map(|r| r.name.to_string());
    assert_eq!(name("anything.example.com", "/").as_deref(), Some("w"));
    assert_eq!(name("api.example.com", "/v1/x").as_deref(), Some("e"));
    assert_eq!(name("api.example.com", "/v2").as_deref(), Some("w"));
    assert_eq!(name("a.b.example.com", "/"), None);
    assert_eq!(name("example.com", "/"), None);
}

#[test]
fn endpoint_update_keeps_the_other_services_of_a_route() {
    // Regression: the update used to index only the changed service's
    // slices, so the route's other service lost its endpoints.
    let slice = |svc: &str, ip: &str| {
        format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {svc}-x, labels: {{kubernetes.io/service-name: {svc}}}}}\naddressType: IPv4\nendpoints: [{{addresses: [{ip}]}}]\nports: [{{name: http, port: 8080}}]\n"
        )
    };
    let svc = |n: &str| {
        format!("---\napiVersion: v1\nkind: Service\nmetadata: {{name: {n}}}\nspec: {{ports: [{{name: http, port: 80}}]}}\n")
    };
    let route = "---\napiVersion: route.openshift.io/v1\nkind: Route\nmetadata: {name: ab}\nspec:\n  host: ab.example.com\n  to: {kind: Service, name: a, weight: 1}\n  alternateBackends: [{kind: Service, name: b, weight: 1}]\n  port: {targetPort: http}\n";
    let base = format!(
        "{}{}{}{}{route}",
        svc("a"),
        svc("b"),
        slice("a", "10.0.0.1"),
        slice("b", "10.0.0.2")
    );
    let a = objs(&base);
    let b = objs(&base.replace("10.0.0.1", "10.0.0.3"));
    let cfg = CompileConfig::default();
    let t1 = compile(&a, &cfg, 1).table;
    let crate::model::store::Change::EndpointsOnly(svcs) = b.change_from(&a) else {
        panic!()
    };
    let t2 = update_endpoints(&t1, &b, &svcs, 2, &cfg).table;
    assert_eq!(
        eps(&t2, "ab.example.com", "/"),
        ["10.0.0.3:8080", "10.0.0.2:8080"]
    );
}

#[test]
fn node_local_endpoints_are_dropped_when_the_source_is_untrusted() {
    let o = objs(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{name: http, port: 80}]}\n---\napiVersion: v1\nkind: Endpoints\nmetadata: {name: web}\nsubsets:\n- addresses: [{ip: 127.0.0.1}, {ip: 169.254.169.254}, {ip: 224.0.0.1}, {ip: 10.0.0.7}, {ip: '::ffff:127.0.0.1'}, {ip: 'fd00:ec2::254'}, {ip: 168.63.129.16}]\n  ports: [{name: http, port: 8080}]\n---\napiVersion: route.openshift.io/v1\nkind: Route\nmetadata: {name: r}\nspec: {host: l.example.com, to: {name: web}, port: {targetPort: http}}\n",
    );
    let trusted = compile(&o, &CompileConfig::default(), 1);
    assert_eq!(eps(&trusted.table, "l.example.com", "/").len(), 7);
    let cfg = CompileConfig {
        allow_local_endpoints: false,
        ..Default::default()
    };
    let c = compile(&o, &cfg, 1);
    assert_eq!(eps(&c.table, "l.example.com", "/"), ["10.0.0.7:8080"]);
    assert_eq!(
        c.diagnostics
            .iter()
            .filter(|d| d.message.contains("dropped"))
            .count(),
        6
    );
}

#[test]
fn route_only_changes_reuse_unchanged_entries_and_match_a_full_compile() {
    let base = format!(
        "{SVC}{}{}{}{}",
        route("keep", "k.example.com", "", "  port: {targetPort: http}"),
        route("move", "m.example.com", "/a", "  port: {targetPort: http}"),
        route("gone", "g.example.com", "", ""),
        // Sends to a service that does not exist: never reused, its status
        // still says so after a routes-only compile.
        "---\napiVersion: route.openshift.io/v1\nkind: Route\nmetadata: {name: nosvc}\nspec: {host: n.example.com, to: {name: missing}}\n",
    );
    let a = objs(&base);
    let changed = base
        .replace("path: \"/a\"", "path: \"/b\"")
        .replace("name: gone", "name: gone2");
    let b = objs(&format!(
        "{changed}{}",
        route("new", "new.example.com", "", "")
    ));
    assert_eq!(b.change_from(&a), crate::model::store::Change::RoutesOnly);
    let cfg = CompileConfig::default();
    let t1 = compile(&a, &cfg, 1).table;
    let t2 = compile_reusing(&b, &cfg, 2, Some(&t1));
    let full = compile(&b, &cfg, 2);
    t2.table.check_invariants();
    // The unchanged route's entry is the very same allocation.
    let keep1 = t1.lookup("k.example.com", "/").unwrap();
    let keep2 = t2.table.lookup("k.example.com", "/").unwrap();
    assert!(Arc::ptr_eq(keep1, keep2));
    // Changed, renamed and new routes are rebuilt, as a full compile has
    // them.
    assert!(t2.table.lookup("m.example.com", "/a").is_none());
    assert_eq!(
        eps(&t2.table, "m.example.com", "/b"),
        eps(&full.table, "m.example.com", "/b")
    );
    assert_eq!(
        &*t2.table.lookup("g.example.com", "/").unwrap().name,
        "gone2"
    );
    assert!(t2.table.lookup("new.example.com", "/").is_some());
    // Statuses and diagnostics as from scratch.
    assert_eq!(t2.table.statuses, full.table.statuses);
    assert_eq!(t2.diagnostics, full.diagnostics);
    let nosvc = t2.table.lookup("n.example.com", "/").unwrap();
    assert!(
        nosvc.source.is_none(),
        "a route with problems is never reused"
    );
    // Every host and route is in both.
    let names = |t: &RoutingTable| {
        let mut v: Vec<String> = t
            .routes()
            .map(|r| format!("{}/{}", r.host, r.name))
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&t2.table), names(&full.table));
    // A service change is not routes-only: nothing may be reused then.
    let c = objs(&changed.replace("targetPort: 8080", "targetPort: 8081"));
    assert_eq!(c.change_from(&b), crate::model::store::Change::Full);
}

/// A route for the incremental-compile tests: every field that admission
/// looks at can vary.
struct Spec {
    ns: &'static str,
    name: String,
    /// creationTimestamp second (age order); None: no timestamp.
    age: Option<u32>,
    host: &'static str,
    path: &'static str,
    tls: &'static str,
    to: &'static str,
    /// The `tier` label (a shard may select on it).
    tier: &'static str,
}

impl Spec {
    fn yaml(&self) -> String {
        let ts = self
            .age
            .map(|s| format!(", creationTimestamp: \"2024-01-01T00:00:{s:02}Z\""))
            .unwrap_or_default();
        let host = if self.host.is_empty() {
            String::new()
        } else {
            format!("  host: {}\n", self.host)
        };
        let tls = if self.tls.is_empty() {
            String::new()
        } else {
            format!("  tls: {{termination: {}}}\n", self.tls)
        };
        format!(
            "---\napiVersion: route.openshift.io/v1\nkind: Route\nmetadata: {{name: {}, namespace: {}, labels: {{tier: {}}}{ts}}}\nspec:\n{host}  path: {:?}\n{tls}  to: {{kind: Service, name: {}}}\n",
            self.name, self.ns, self.tier, self.path, self.to
        )
    }
}

const NS_SVCS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: a}
spec: {ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Endpoints
metadata: {name: web, namespace: a}
subsets: [{addresses: [{ip: 10.0.0.1}], ports: [{port: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: b}
spec: {ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Endpoints
metadata: {name: web, namespace: b}
subsets: [{addresses: [{ip: 10.0.0.2}], ports: [{port: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: a}
spec: {ports: [{port: 80, targetPort: 9090}]}
---
apiVersion: v1
kind: Endpoints
metadata: {name: api, namespace: a}
subsets: [{addresses: [{ip: 10.0.0.3}], ports: [{port: 9090}]}]
"#;

/// What a table serves, comparable: host → (namespace/name path
/// termination, endpoints) in lookup order; certificate hosts; the service
/// index.
fn served(t: &RoutingTable) -> impl PartialEq + std::fmt::Debug {
    let mut hosts: Vec<(String, Vec<String>)> = t
        .exact
        .iter()
        .map(|(h, r)| {
            let routes = r
                .routes
                .iter()
                .map(|e| {
                    let eps: Vec<String> = e
                        .backends
                        .groups
                        .iter()
                        .flat_map(|g| g.endpoints.iter().map(|x| x.to_string()))
                        .collect();
                    format!(
                        "{}/{} {:?} {:?} {eps:?}",
                        e.namespace, e.name, e.path, e.termination
                    )
                })
                .collect();
            (h.to_string(), routes)
        })
        .collect();
    hosts.sort();
    let mut certs: Vec<String> = t.certs.keys().map(|k| k.to_string()).collect();
    certs.sort();
    let mut index: Vec<(Key, Vec<HostRef>)> = t
        .by_service
        .iter()
        .map(|(k, v)| (Key::clone(k), v.to_vec()))
        .collect();
    index.sort();
    (hosts, certs, index, t.wildcard.len())
}

#[test]
fn changed_routes_rebuild_their_hosts_as_a_full_compile_would() {
    let cfg = CompileConfig {
        admission: AdmissionPolicy {
            route_subdomain: Some("apps.test".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    scoped_matches_full(&cfg, 4);
}

#[test]
fn changed_routes_match_a_full_compile_in_a_shard_with_denied_domains() {
    let cfg = CompileConfig {
        admission: AdmissionPolicy {
            // Allowed, but no route asks for a wildcard: still scoped.
            allow_wildcard_routes: true,
            denied_domains: vec!["h2.example.com".into()],
            ..Default::default()
        },
        shard: crate::model::selector::Shard {
            routes: crate::model::selector::Selector::parse("tier=a").unwrap(),
            ..Default::default()
        },
        ..Default::default()
    };
    scoped_matches_full(&cfg, 4);
}

/// Random routes-only changes, each compiled scoped (chained from the
/// previous scoped table, as the compile loop does) and in full: the same
/// statuses, entries, certificates and service index. `reasons`: how many
/// kinds of rejection the sequence must have met.
fn scoped_matches_full(cfg: &CompileConfig, reasons_met: usize) {
    // A small xorshift: the same sequence on every run.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    const HOSTS: [&str; 6] = [
        "h0.example.com",
        "H1.example.com",
        "h1.example.com:80",
        "h2.example.com",
        "bad_host!",
        "",
    ];
    const PATHS: [&str; 4] = ["", "/x", "/y", "/x"];
    const TLS: [&str; 4] = ["", "edge", "passthrough", "reencrypt"];
    const NS: [&str; 2] = ["a", "b"];
    const TO: [&str; 3] = ["web", "api", "missing"];
    let pick = |i: usize, next: &mut dyn FnMut(usize) -> usize| Spec {
        ns: NS[next(NS.len())],
        name: format!("r{i}"),
        age: (next(5) > 0).then(|| next(60) as u32),
        host: HOSTS[next(HOSTS.len())],
        path: PATHS[next(PATHS.len())],
        tls: TLS[next(TLS.len())],
        to: TO[next(TO.len())],
        tier: ["a", "a", "b"][next(3)],
    };
    let mut routes: Vec<Option<Spec>> = (0..24).map(|i| Some(pick(i, &mut next))).collect();
    let build = |routes: &[Option<Spec>]| {
        let text: String = routes.iter().flatten().map(Spec::yaml).collect();
        objs(&format!("{NS_SVCS}{text}"))
    };
    let mut prev_objs = build(&routes);
    let mut prev = compile(&prev_objs, cfg, 1).table;
    let (mut incremental, mut steps) = (0, 0);
    let mut reasons = std::collections::HashSet::new();
    for generation in 2..300 {
        // One to three routes change, appear or go.
        for _ in 0..1 + next(3) {
            let i = next(routes.len() + 2);
            if i >= routes.len() {
                let n = routes.len();
                routes.push(Some(pick(n, &mut next)));
            } else if next(4) == 0 {
                routes[i] = None;
            } else {
                let mut s = pick(i, &mut next);
                if let (Some(old), true) = (&routes[i], next(2) == 0) {
                    // Often only one field moves.
                    s = Spec {
                        ns: old.ns,
                        name: old.name.clone(),
                        age: old.age,
                        host: old.host,
                        tls: old.tls,
                        to: old.to,
                        tier: s.tier,
                        path: s.path,
                    };
                }
                routes[i] = Some(s);
            }
        }
        let objs = build(&routes);
        if objs.change_from(&prev_objs) != crate::model::store::Change::RoutesOnly {
            continue;
        }
        steps += 1;
        let full = compile(&objs, cfg, generation);
        reasons.extend(full.table.statuses.iter().filter_map(|s| s.reason));
        let next_table = match compile_changed_routes(&prev_objs, &objs, cfg, generation, &prev) {
            Some(inc) => {
                incremental += 1;
                inc.table.check_invariants();
                assert_eq!(
                    inc.table.statuses, full.table.statuses,
                    "statuses at generation {generation}"
                );
                assert_eq!(
                    inc.table.admitted_routes, full.table.admitted_routes,
                    "admitted at generation {generation}"
                );
                assert_eq!(
                    served(&inc.table),
                    served(&full.table),
                    "table at generation {generation}"
                );
                for d in &inc.diagnostics {
                    assert!(full.diagnostics.contains(d), "{d:?}");
                }
                inc.table
            }
            None => full.table,
        };
        // The next change starts from the incremental table, as in the
        // compile loop.
        prev = next_table;
        prev_objs = objs;
    }
    assert!(steps > 200, "{steps} routes-only steps");
    // The sequence did meet each way a route is turned away.
    assert!(reasons.len() >= reasons_met, "{reasons:?}");
    assert!(
        incremental * 10 > steps * 9,
        "{incremental} of {steps} changes compiled incrementally"
    );
}

#[test]
fn changed_routes_decline_what_they_cannot_scope() {
    let cfg = CompileConfig::default();
    let base = format!("{SVC}{}", route("a", "a.example.com", "", ""));
    let a = objs(&base);
    let t = compile(&a, &cfg, 1).table;
    // Nothing changed.
    assert!(compile_changed_routes(&a, &a, &cfg, 2, &t).is_none());
    // Ingresses in the table.
    let ing = "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: i}\nspec:\n  rules:\n  - host: i.example.com\n    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}\n";
    let b = objs(&format!("{base}{ing}"));
    let c = objs(&format!(
        "{base}{ing}{}",
        route("b", "b.example.com", "", "")
    ));
    let tb = compile(&b, &cfg, 2).table;
    assert!(compile_changed_routes(&b, &c, &cfg, 3, &tb).is_none());
    // Wildcard routes allowed and present.
    let wild_cfg = CompileConfig {
        admission: AdmissionPolicy {
            allow_wildcard_routes: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let w = objs(&format!(
        "{base}---\napiVersion: route.openshift.io/v1\nkind: Route\nmetadata: {{name: w}}\nspec: {{host: w.example.com, wildcardPolicy: Subdomain, to: {{name: web}}}}\n"
    ));
    let w2 = objs(&format!(
        "{base}---\napiVersion: route.openshift.io/v1\nkind: Route\nmetadata: {{name: w}}\nspec: {{host: w.example.com, wildcardPolicy: Subdomain, to: {{name: web}}}}\n{}",
        route("c", "c.example.com", "", "")
    ));
    let tw = compile(&w, &wild_cfg, 2).table;
    assert!(compile_changed_routes(&w, &w2, &wild_cfg, 3, &tw).is_none());
    // The same change without the wildcard permission is scoped.
    let tw = compile(&w, &cfg, 2).table;
    let inc = compile_changed_routes(&w, &w2, &cfg, 3, &tw).expect("scoped");
    assert_eq!(inc.table.statuses, compile(&w2, &cfg, 3).table.statuses);
    // The changed route's problems are stated afresh.
    assert_eq!(inc.renewed, ["Route default/c"]);
    // An Ingress of no class this router serves does not stop scoping.
    let other = ing.replace("spec:\n", "spec:\n  ingressClassName: other\n");
    let d = objs(&format!("{base}{other}"));
    let e = objs(&format!(
        "{base}{other}{}",
        route("b", "b.example.com", "", "")
    ));
    let td = compile(&d, &cfg, 2).table;
    assert!(compile_changed_routes(&d, &e, &cfg, 3, &td).is_some());
}
