//! ns per pick for each algorithm at 10, 100 and 1000 endpoints, and the
//! sticky cookie's encode (computed once per endpoint at compile) and
//! decode (per request: find the member a cookie names).
//!
//!   cargo bench --bench balance

// The binary's allocator, so that the figures are the router's.
#[path = "../src/alloc.rs"]
mod alloc;

#[global_allocator]
static ALLOC: alloc::MiMalloc = alloc::MiMalloc;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use gatehouse::balance::{pick, sticky};
use gatehouse::table::{
    Algorithm, BackendGroup, BackendSet, Endpoint, LiveRegistry, UpstreamProtocol,
};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

fn set(n: u16, algorithm: Algorithm) -> BackendSet {
    let endpoints = (0..n)
        .map(|i| Endpoint::Socket((Ipv4Addr::new(10, 0, (i >> 8) as u8, i as u8), 8080).into()))
        .collect();
    let g = BackendGroup::new(
        ("ns".into(), "svc".into()),
        1,
        UpstreamProtocol::Http1,
        endpoints,
    );
    BackendSet::new(vec![g], algorithm, &LiveRegistry::default(), b"bench key")
}

fn pickers(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    for alg in [
        Algorithm::RoundRobin,
        Algorithm::LeastConn,
        Algorithm::Source,
        Algorithm::Random,
    ] {
        for n in [10u16, 100, 1000] {
            let s = set(n, alg);
            let mut i = 0u32;
            g.bench_function(format!("{alg:?}/{n}").to_lowercase(), |b| {
                b.iter(|| {
                    i = i.wrapping_add(1);
                    let client = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 ^ i));
                    black_box(pick(black_box(&s), client, &[]))
                })
            });
        }
    }
    g.finish();
}

fn cookies(c: &mut Criterion) {
    let mut g = c.benchmark_group("cookie");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    // Encode: what compile pays per endpoint (HMAC-SHA256 of the address).
    g.bench_function("encode/100-endpoints", |b| {
        b.iter(|| black_box(set(100, Algorithm::Random)))
    });
    for n in [10u16, 100, 1000] {
        let s = set(n, Algorithm::Random);
        let last = s.members.last().unwrap().cookie.to_string();
        g.bench_function(format!("decode/{n}"), |b| {
            b.iter(|| black_box(sticky(black_box(&s), black_box(&last))))
        });
    }
    g.finish();
}

criterion_group!(benches, pickers, cookies);
criterion_main!(benches);
