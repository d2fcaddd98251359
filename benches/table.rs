//! Routing-table micro-benchmarks (DESIGN.md, "Performance budget").
//!
//! The synthetic cluster: route `r{i}` in namespace `ns{i % 50}` with host
//! `app{i}.apps.example.com` and `spec.port.targetPort: http`, sending to its
//! own Service `svc{i}` whose Endpoints hold two ready addresses on the named
//! port `http` 8080. Every 4th host also carries a path route `r{i}-api`
//! (`/api`) from the same namespace, to the same service.
//!
//! - `lookup/{1k,10k,100k}`: `RoutingTable::lookup` over a mix of requests:
//!   path hits, hits without a path route, misses, and a Host written with
//!   uppercase letters and `:80`.
//! - `compile/full/10k`: the whole compile (admission, annotations, endpoints).
//! - `compile/endpoints_only/10k`: the Endpoints of one service change;
//!   `Objects::change_from` (must say `EndpointsOnly`) plus `update_endpoints`.
//! - `compile/update_endpoints_only/10k`: `update_endpoints` alone.
//!
//! Both endpoint benches include dropping the resulting table, which the real
//! path pays too (off the data path, when the last reader lets go).
//!
//! Run: `cargo bench --bench table` (a couple of minutes on 2 cores).

// The binary's allocator, so that the figures are the router's.
#[path = "../src/alloc.rs"]
mod alloc;

#[global_allocator]
static ALLOC: alloc::MiMalloc = alloc::MiMalloc;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use gatehouse::compile::{
    compile, compile_changed_routes, compile_reusing, update_endpoints, CompileConfig,
};
use gatehouse::model::store::Change;
use gatehouse::model::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, IntOrString, ObjectMeta, Objects,
    Route, RoutePort, RouteSpec, RouteTarget, Service, ServicePort, ServiceSpec,
};
use gatehouse::table::RoutingTable;
use std::sync::Arc;
use std::time::Duration;

const NAMESPACES: usize = 50;
/// Every `PATH_EVERY`th host also has an `/api` route.
const PATH_EVERY: usize = 4;

fn meta(ns: &str, name: String, i: usize) -> ObjectMeta {
    ObjectMeta {
        name,
        namespace: Some(ns.to_owned()),
        uid: Some(format!("uid-{i:08}")),
        creation_timestamp: Some("2024-01-02T03:04:05Z".to_owned()),
        ..ObjectMeta::default()
    }
}

fn route(ns: &str, name: String, i: usize, path: Option<&str>) -> Route {
    Route {
        metadata: meta(ns, name, i),
        spec: RouteSpec {
            host: Some(format!("app{i}.apps.example.com")),
            path: path.map(str::to_owned),
            to: RouteTarget {
                kind: Some("Service".to_owned()),
                name: format!("svc{i}"),
                weight: None,
            },
            port: Some(RoutePort {
                target_port: IntOrString::Str("http".to_owned()),
            }),
            ..RouteSpec::default()
        },
    }
}

/// Two ready addresses, unique per (`i`, `salt`), on the named port `http`.
fn endpoints(ns: &str, i: usize, salt: usize) -> Endpoints {
    let ip = |n: usize| format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255);
    let base = (i * 2) ^ (salt << 20);
    Endpoints {
        metadata: meta(ns, format!("svc{i}"), i),
        subsets: vec![EndpointSubset {
            addresses: vec![
                EndpointAddress { ip: ip(base) },
                EndpointAddress { ip: ip(base + 1) },
            ],
            not_ready_addresses: Vec::new(),
            ports: vec![EndpointPort {
                name: Some("http".to_owned()),
                port: 8080,
                protocol: Some("TCP".to_owned()),
                app_protocol: None,
            }],
        }],
    }
}

fn objects(n: usize) -> Objects {
    let mut o = Objects::default();
    for i in 0..n {
        let ns = format!("ns{}", i % NAMESPACES);
        let key = |name: String| (ns.clone(), name);
        o.routes.insert(
            key(format!("r{i}")),
            Arc::new(route(&ns, format!("r{i}"), i, None)),
        );
        if i % PATH_EVERY == 0 {
            let name = format!("r{i}-api");
            o.routes.insert(
                key(name.clone()),
                Arc::new(route(&ns, name, i, Some("/api"))),
            );
        }
        o.services.insert(
            key(format!("svc{i}")),
            Arc::new(Service {
                metadata: meta(&ns, format!("svc{i}"), i),
                spec: ServiceSpec {
                    ports: vec![ServicePort {
                        name: Some("http".to_owned()),
                        port: 80,
                        target_port: Some(IntOrString::Int(8080)),
                        protocol: Some("TCP".to_owned()),
                        app_protocol: None,
                    }],
                    ..ServiceSpec::default()
                },
            }),
        );
        o.endpoints
            .insert(key(format!("svc{i}")), Arc::new(endpoints(&ns, i, 0)));
    }
    o
}

fn compiled(objs: &Objects, cfg: &CompileConfig) -> RoutingTable {
    let c = compile(objs, cfg, 1);
    assert_eq!(
        c.table.routes().count(),
        objs.routes.len(),
        "every route admitted: {:?}",
        c.diagnostics.first()
    );
    c.table
}

/// 1024 requests spread over the table: a quarter each of path hits,
/// plain hits, misses, and uppercase Host with `:80`.
fn requests(n: usize) -> Vec<(String, &'static str)> {
    let stride = (n / 256).max(1);
    (0..1024)
        .map(|k| {
            let i = (k / 4 * stride + k * 7) % n;
            match k % 4 {
                0 => {
                    let i = i - i % PATH_EVERY;
                    (format!("app{i}.apps.example.com"), "/api/v1/items")
                }
                1 => (format!("app{i}.apps.example.com"), "/index.html"),
                2 => (format!("nope{i}.apps.example.com"), "/"),
                _ => (format!("App{i}.Apps.Example.COM:80"), "/"),
            }
        })
        .collect()
}

fn bench_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("lookup");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    for (label, n) in [("1k", 1_000), ("10k", 10_000), ("100k", 100_000)] {
        let table = compiled(&objects(n), &CompileConfig::default());
        let reqs = requests(n);
        let hits = reqs
            .iter()
            .filter(|(h, p)| table.lookup(h, p).is_some())
            .count();
        assert_eq!(
            hits,
            reqs.len() / 4 * 3,
            "misses are exactly the nope hosts"
        );
        let api = table.lookup(&reqs[0].0, reqs[0].1).expect("a path hit");
        assert_eq!(&*api.path, "/api");
        g.bench_function(BenchmarkId::from_parameter(label), |b| {
            let mut k = 0usize;
            b.iter(|| {
                let (host, path) = &reqs[k % reqs.len()];
                k = k.wrapping_add(1);
                black_box(table.lookup(black_box(host), black_box(path)))
            })
        });
    }
    g.finish();
}

fn bench_compile(c: &mut Criterion) {
    const N: usize = 10_000;
    let objs = objects(N);
    // The same configuration (and so the same endpoint registry) as the
    // live table, as in the router: the previous table is alive while the
    // next compiles, and endpoints' state is shared, not rebuilt.
    let cfg = CompileConfig::default();
    let table = compiled(&objs, &cfg);

    // The Endpoints of one service (svc4242, ns42) move to new addresses.
    let changed = 4242;
    let ns = format!("ns{}", changed % NAMESPACES);
    let mut next = objs.clone();
    next.endpoints.insert(
        (ns.clone(), format!("svc{changed}")),
        Arc::new(endpoints(&ns, changed, 1)),
    );
    let Change::EndpointsOnly(services) = next.change_from(&objs) else {
        panic!("one Endpoints changed must be an endpoint-only change")
    };
    assert_eq!(services.len(), 1);
    let updated = update_endpoints(&table, &next, &services, 2, &cfg).table;
    let host = format!("app{changed}.apps.example.com");
    let before = &table.lookup(&host, "/").unwrap().backends;
    let after = &updated.lookup(&host, "/").unwrap().backends;
    assert_ne!(before.groups[0].endpoints, after.groups[0].endpoints);
    assert_eq!(after.groups[0].endpoints.len(), 2);
    drop(updated);

    // One Route changes its path (the load bench's swap scenario): a
    // routes-only change.
    let mut moved = objs.clone();
    let r = format!("r{changed}");
    moved.routes.insert(
        (ns.clone(), r.clone()),
        Arc::new(route(&ns, r, changed, Some("/moved"))),
    );
    assert_eq!(moved.change_from(&objs), Change::RoutesOnly);

    let mut g = c.benchmark_group("compile");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    g.bench_function("full/10k", |b| {
        let mut gen = 1;
        b.iter(|| {
            gen += 1;
            compile(black_box(&objs), &cfg, gen)
        })
    });
    g.bench_function("routes_only/10k", |b| {
        b.iter(|| compile_reusing(black_box(&moved), &cfg, 2, Some(&table)))
    });
    // The same change, scoped to the changed route's hosts (what the
    // compile loop does for a few changed routes).
    assert!(compile_changed_routes(&objs, &moved, &cfg, 2, &table).is_some());
    g.bench_function("routes_changed/10k", |b| {
        b.iter(|| compile_changed_routes(black_box(&objs), black_box(&moved), &cfg, 2, &table))
    });
    g.bench_function("endpoints_only/10k", |b| {
        b.iter(|| {
            let Change::EndpointsOnly(s) = black_box(&next).change_from(black_box(&objs)) else {
                unreachable!()
            };
            update_endpoints(&table, &next, &s, 2, &cfg)
        })
    });
    g.bench_function("change_from/10k", |b| {
        b.iter(|| black_box(&next).change_from(black_box(&objs)))
    });
    g.bench_function("update_endpoints_only/10k", |b| {
        b.iter(|| update_endpoints(black_box(&table), &next, black_box(&services), 2, &cfg))
    });
    g.finish();
}

criterion_group!(benches, bench_lookup, bench_compile);
criterion_main!(benches);
