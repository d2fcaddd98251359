use super::*;
use crate::table::{BackendGroup, HealthPolicy, LiveRegistry, UpstreamProtocol};
use std::net::Ipv4Addr;

fn group(weight: u32, ports: std::ops::Range<u16>) -> BackendGroup {
    BackendGroup::new(
        ("ns".into(), format!("s{}", ports.start)),
        weight,
        UpstreamProtocol::Http1,
        ports
            .map(|p| Endpoint::Socket(([127, 0, 0, 1], p).into()))
            .collect(),
    )
}

fn set(groups: Vec<BackendGroup>, algorithm: Algorithm) -> BackendSet {
    BackendSet::new(groups, algorithm, &LiveRegistry::default(), b"test key")
}

fn client(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
}

fn shares(s: &BackendSet, n: usize, mut f: impl FnMut(usize) -> Option<Pick>) -> Vec<f64> {
    let mut c = vec![0usize; s.members.len()];
    for i in 0..n {
        c[f(i).expect("a pick").0] += 1;
    }
    c.into_iter().map(|x| x as f64 / n as f64).collect()
}

#[test]
fn openshift_weight_scaling() {
    let s = set(vec![group(25, 1..2), group(75, 2..3)], Algorithm::Random);
    assert_eq!(
        s.members.iter().map(|m| m.weight).collect::<Vec<_>>(),
        vec![85, 256]
    );
    // One service's weight is divided among its endpoints.
    let s = set(vec![group(1, 1..3), group(1, 3..4)], Algorithm::Random);
    assert_eq!(
        s.members.iter().map(|m| m.weight).collect::<Vec<_>>(),
        vec![128, 128, 256]
    );
    assert_eq!(
        s.algorithm,
        Algorithm::RoundRobin,
        "several services force roundrobin"
    );
    let zero = set(vec![group(0, 1..3)], Algorithm::Random);
    assert!(zero.is_empty());
    assert_eq!(pick(&zero, client(1), &[]), None);
}

#[test]
fn weights_split_within_three_percent() {
    for alg in [Algorithm::Random, Algorithm::RoundRobin] {
        seed_thread_rng(42);
        let s = set(vec![group(25, 1..2), group(75, 2..4)], alg);
        // Service shares 25% / 75%.
        let sh = shares(&s, 10_000, |_| pick(&s, client(1), &[]));
        let a = sh[0];
        let b = sh[1] + sh[2];
        assert!(
            (a - 0.25).abs() < 0.03 && (b - 0.75).abs() < 0.03,
            "{alg:?}: {sh:?}"
        );
    }
}

#[test]
fn smooth_round_robin_interleaves() {
    let s = set(vec![group(1, 1..4)], Algorithm::RoundRobin);
    let seq: Vec<usize> = (0..6)
        .map(|_| pick(&s, client(1), &[]).unwrap().0)
        .collect();
    assert_eq!(seq, vec![0, 1, 2, 0, 1, 2]);
}

#[test]
fn source_hash_is_stable_when_an_endpoint_goes() {
    let s10 = set(vec![group(1, 1..11)], Algorithm::Source);
    let s9 = set(vec![group(1, 1..10)], Algorithm::Source);
    let port = |s: &BackendSet, c| {
        let p = pick(s, c, &[]).unwrap();
        p.resolve(s).1.clone()
    };
    let mut moved = 0;
    let mut spread = std::collections::HashSet::new();
    for i in 0..2000 {
        let c = client(i * 7919);
        let before = port(&s10, c);
        spread.insert(before.clone());
        assert_eq!(port(&s10, c), before, "deterministic");
        if port(&s9, c) != before {
            moved += 1;
        }
    }
    assert!(
        moved as f64 / 2000.0 <= 0.15,
        "{moved} of 2000 clients moved"
    );
    assert_eq!(spread.len(), 10, "clients spread over all endpoints");
}

#[test]
fn leastconn_prefers_the_idle_endpoint() {
    seed_thread_rng(7);
    let s = set(vec![group(1, 1..3)], Algorithm::LeastConn);
    let _busy = s.members[0].live.begin();
    for _ in 0..100 {
        assert_eq!(pick(&s, client(1), &[]), Some(Pick(1)));
    }
}

#[test]
fn two_choices_avoid_the_busy_endpoint() {
    seed_thread_rng(9);
    let s = set(vec![group(1, 1..3)], Algorithm::Random);
    let _busy: Vec<_> = (0..5).map(|_| s.members[0].live.begin()).collect();
    let sh = shares(&s, 2000, |_| pick(&s, client(1), &[]));
    // The busy one only wins when both draws hit it (~25%).
    assert!(sh[0] < 0.3, "{sh:?}");
}

#[test]
fn retries_skip_tried_and_ejected_endpoints() {
    let s = set(vec![group(1, 1..4)], Algorithm::Random);
    let mut tried = Vec::new();
    while let Some(p) = pick(&s, client(1), &tried) {
        assert!(!tried.contains(&p));
        tried.push(p);
    }
    assert_eq!(tried.len(), 3);

    let policy = HealthPolicy {
        eject_after: 1,
        ..Default::default()
    };
    s.members[0].live.record_failure(&policy);
    for _ in 0..200 {
        assert_ne!(pick(&s, client(1), &[]), Some(Pick(0)), "ejected");
    }
    // Everyone ejected: still try rather than refuse.
    s.members[1].live.record_failure(&policy);
    s.members[2].live.record_failure(&policy);
    assert!(pick(&s, client(1), &[]).is_some());
}

#[test]
fn sticky_cookies_name_endpoints_even_at_weight_zero() {
    let s = set(vec![group(0, 1..2), group(1, 2..3)], Algorithm::Random);
    let c0 = s.members[0].cookie.to_string();
    assert_eq!(
        sticky(&s, &c0),
        Some(Pick(0)),
        "existing sessions survive weight 0"
    );
    assert_eq!(sticky(&s, "nope"), None);
    assert!(
        !c0.contains("127.0.0.1") && c0.len() == 16,
        "the value hides the address: {c0}"
    );
    // Same key, same endpoint → same value (replicas agree).
    let again = set(vec![group(0, 1..2)], Algorithm::Random);
    assert_eq!(again.members[0].cookie, s.members[0].cookie);
}
