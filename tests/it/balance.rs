//! Balancing over real sockets: sticky cookies, cookie attributes per
//! termination, weights, roundrobin, ejection of a dead endpoint,
//! ip_allowlist and rewrite-target.

use crate::support::*;
use http::StatusCode;
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn set_cookie(r: &Reply) -> Option<String> {
    r.headers
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn sticky_cookie_keeps_a_client_on_one_endpoint() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let text = format!(
        "{}{}",
        service("default", "web", &[a.port(), b.port()]),
        route(
            "default",
            "s",
            "2024-01-01T00:00:00Z",
            "s.example.com",
            "",
            "web",
            &[("router.openshift.io/cookie_name", "shop_session")],
            ""
        )
    );
    let r = TestRouter::start(&[("s.yaml", &text)]).await;

    // Without cookies both endpoints are used.
    let mut seen = HashMap::new();
    for _ in 0..40 {
        let reply = r.get("s.example.com", "/").await;
        *seen
            .entry(reply.echoed("name").unwrap().to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");

    // The first answer sets the cookie; sent back, it pins the endpoint.
    let first = r.get("s.example.com", "/").await;
    let cookie = set_cookie(&first).expect("a sticky cookie");
    assert!(cookie.starts_with("shop_session="), "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && !cookie.contains("Secure"),
        "plain route: {cookie}"
    );
    assert_eq!(first.headers["cache-control"], "private");
    let pair = cookie.split(';').next().unwrap().to_owned();
    let pinned = first.echoed("name").unwrap().to_owned();
    for _ in 0..10 {
        let reply = get(
            r.http,
            "s.example.com",
            "/",
            &[("cookie", &format!("other=1; {pair}"))],
        )
        .await;
        assert_eq!(reply.echoed("name"), Some(pinned.as_str()));
        assert!(
            set_cookie(&reply).is_none(),
            "no new cookie while it is honoured"
        );
        // The application never sees the router's cookie.
        assert_eq!(reply.echoed("cookie"), Some("other=1"));
    }

    // The endpoint goes away: the client is re-balanced and gets a new cookie.
    let gone = if pinned == "a" { a.port() } else { b.port() };
    let kept = if pinned == "a" { b.port() } else { a.port() };
    let _ = gone;
    r.write(
        "s.yaml",
        &text.replace(
            &service("default", "web", &[a.port(), b.port()]),
            &service("default", "web", &[kept]),
        ),
    )
    .await;
    let moved = get(r.http, "s.example.com", "/", &[("cookie", &pair)]).await;
    assert_eq!(moved.status, StatusCode::OK);
    assert_ne!(moved.echoed("name"), Some(pinned.as_str()));
    assert!(
        set_cookie(&moved).is_some(),
        "a new cookie for the new endpoint"
    );
    r.stop().await;
}

#[tokio::test]
async fn cookie_attributes_follow_termination_and_can_be_disabled() {
    let up = Upstream::start("web").await;
    let tls =
        |p: &str| format!("  tls: {{termination: edge, insecureEdgeTerminationPolicy: {p}}}\n");
    let text = [
        service("default", "web", &[up.port()]),
        route(
            "default",
            "allow",
            "2024-01-01T00:00:00Z",
            "allow.example.com",
            "",
            "web",
            &[],
            &tls("Allow"),
        ),
        route(
            "default",
            "off",
            "2024-01-01T00:00:00Z",
            "off.example.com",
            "",
            "web",
            &[("haproxy.router.openshift.io/disable_cookies", "true")],
            "",
        ),
    ]
    .concat();
    let r = TestRouter::start(&[("t.yaml", &text)]).await;
    // Edge + Allow served on :80: no Secure (the cookie must work over http).
    let c = set_cookie(&r.get("allow.example.com", "/").await).unwrap();
    assert!(c.contains("HttpOnly") && !c.contains("Secure"), "{c}");
    assert!(set_cookie(&r.get("off.example.com", "/").await).is_none());
    r.stop().await;
}

#[tokio::test]
async fn roundrobin_and_weights_over_real_requests() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let c = Upstream::start("c").await;
    let alt = "  alternateBackends: [{kind: Service, name: canary, weight: 25}]\n";
    let text = [
        service("default", "web", &[a.port(), b.port()]),
        service("default", "canary", &[c.port()]),
        route(
            "default",
            "rr",
            "2024-01-01T00:00:00Z",
            "rr.example.com",
            "",
            "web",
            &[
                ("haproxy.router.openshift.io/balance", "roundrobin"),
                ("haproxy.router.openshift.io/disable_cookies", "true"),
            ],
            "",
        ),
        route(
            "default",
            "split",
            "2024-01-01T00:00:00Z",
            "split.example.com",
            "",
            "web",
            &[("haproxy.router.openshift.io/disable_cookies", "true")],
            alt,
        )
        .replace("name: web}", "name: web, weight: 75}"),
    ]
    .concat();
    let r = TestRouter::start(&[("w.yaml", &text)]).await;
    let names: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            v.push(
                r.get("rr.example.com", "/")
                    .await
                    .echoed("name")
                    .unwrap()
                    .to_owned(),
            );
        }
        v
    };
    for w in names.windows(2) {
        assert_ne!(w[0], w[1], "roundrobin alternates: {names:?}");
    }
    // 75/25 between services (each web endpoint gets 37.5%).
    let mut n = HashMap::new();
    const N: usize = 800;
    for _ in 0..N {
        let name = r
            .get("split.example.com", "/")
            .await
            .echoed("name")
            .unwrap()
            .to_owned();
        *n.entry(name).or_insert(0usize) += 1;
    }
    let canary = *n.get("c").unwrap_or(&0) as f64 / N as f64;
    assert!((canary - 0.25).abs() < 0.04, "canary share {canary}: {n:?}");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_is_ejected_without_failed_gets_and_comes_back() {
    let a = Upstream::start("a").await;
    let b_port = dead_port().await;
    let text = format!(
        "{}{}",
        service("default", "web", &[a.port(), b_port]),
        route(
            "default",
            "h",
            "2024-01-01T00:00:00Z",
            "h.example.com",
            "",
            "web",
            &[
                ("haproxy.router.openshift.io/balance", "roundrobin"),
                ("haproxy.router.openshift.io/disable_cookies", "true"),
            ],
            ""
        )
    );
    let r = TestRouter::start_with(&[("h.yaml", &text)], |c| {
        c.health.eject_after = 2;
        c.health.base_ejection = Duration::from_millis(300);
        c.health.max_ejection = Duration::from_millis(300);
    })
    .await;
    // The dead endpoint fails its connects: every GET still succeeds (retry
    // on the other endpoint) and within a second it is out of rotation.
    let start = Instant::now();
    for _ in 0..50 {
        assert_eq!(r.get("h.example.com", "/").await.status, StatusCode::OK);
    }
    assert!(start.elapsed() < Duration::from_secs(5));

    // It comes back: start a server on the dead port.
    let l = tokio::net::TcpListener::bind(("127.0.0.1", b_port))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nname=b\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut back = false;
    for _ in 0..20 {
        let reply = r.get("h.example.com", "/").await;
        assert_eq!(reply.status, StatusCode::OK);
        if reply.body.starts_with("name=b") {
            back = true;
            break;
        }
    }
    assert!(back, "the recovered endpoint is used again");
    r.stop().await;
}

#[tokio::test]
async fn ip_allowlist_and_rewrite_target() {
    let up = Upstream::start("web").await;
    let text = [
        service("default", "web", &[up.port()]),
        route(
            "default",
            "open",
            "2024-01-01T00:00:00Z",
            "open.example.com",
            "",
            "web",
            &[(
                "haproxy.router.openshift.io/ip_allowlist",
                "10.0.0.0/8 127.0.0.1 ::1",
            )],
            "",
        ),
        route(
            "default",
            "closed",
            "2024-01-01T00:00:00Z",
            "closed.example.com",
            "",
            "web",
            &[(
                "haproxy.router.openshift.io/ip_whitelist",
                "192.0.2.0/24 2001:db8::/32",
            )],
            "",
        ),
        route(
            "default",
            "rw",
            "2024-01-01T00:00:00Z",
            "rw.example.com",
            "/foo",
            "web",
            &[("haproxy.router.openshift.io/rewrite-target", "/bar")],
            "",
        ),
    ]
    .concat();
    let r = TestRouter::start(&[("a.yaml", &text)]).await;
    assert_eq!(r.get("open.example.com", "/").await.status, StatusCode::OK);
    let closed = r.get("closed.example.com", "/").await;
    assert_eq!(closed.status, StatusCode::FORBIDDEN);
    assert_eq!(
        r.get("rw.example.com", "/foo/x?y=1").await.echoed("uri"),
        Some("/bar/x?y=1")
    );
    assert_eq!(
        r.get("rw.example.com", "/foo").await.echoed("uri"),
        Some("/bar")
    );
    r.stop().await;
}

#[tokio::test]
async fn safe_requests_survive_an_endpoint_that_resets_and_it_gets_ejected() {
    let good = Upstream::start("good").await;
    let bad = resetting_upstream().await;
    let (front, accepted) = counting_front(bad).await;
    let text = format!(
        "{}{}",
        service("default", "web", &[good.port(), front.port()]),
        route(
            "default",
            "r",
            "2024-01-01T00:00:00Z",
            "r.example.com",
            "",
            "web",
            &[
                ("haproxy.router.openshift.io/balance", "roundrobin"),
                ("haproxy.router.openshift.io/disable_cookies", "true"),
            ],
            ""
        )
    );
    let r = TestRouter::start_with(&[("r.yaml", &text)], |c| {
        c.health.eject_after = 2;
        c.health.base_ejection = Duration::from_secs(30);
    })
    .await;
    for i in 0..40 {
        let reply = r.get("r.example.com", "/").await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "GET {i} failed: {}",
            reply.body
        );
    }
    // Two resets eject it: of 40 round-robin requests only the first few
    // ever reached the resetting endpoint.
    let hits = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (2..=4).contains(&hits),
        "{hits} connections to the bad endpoint"
    );
    // A POST is never replayed: its failure is the client's to see.
    let c = client();
    let mut failed = 0;
    for _ in 0..4 {
        let req = http::Request::post(format!("http://{}/sink", r.http))
            .header("host", "r.example.com")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"x")))
            .unwrap();
        if send(&c, req).await.status != StatusCode::OK {
            failed += 1;
        }
    }
    assert_eq!(
        failed, 0,
        "the bad endpoint is ejected, so POSTs go to the good one"
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_pod_concurrent_connections() {
    let up = Upstream::start("web").await;
    let rl = "haproxy.router.openshift.io/rate-limit-connections";
    let text = [
        service("default", "web", &[up.port()]),
        route(
            "default",
            "rate",
            "2024-01-01T00:00:00Z",
            "rate.example.com",
            "",
            "web",
            &[(rl, "true"), (&format!("{rl}.rate-http"), "5")],
            "",
        ),
        route(
            "default",
            "conc",
            "2024-01-01T00:00:00Z",
            "conc.example.com",
            "",
            "web",
            &[(rl, "true"), (&format!("{rl}.concurrent-tcp"), "1")],
            "",
        ),
        route(
            "default",
            "pod",
            "2024-01-01T00:00:00Z",
            "pod.example.com",
            "",
            "web",
            &[(
                "haproxy.router.openshift.io/pod-concurrent-connections",
                "1",
            )],
            "",
        ),
    ]
    .concat();
    let r = TestRouter::start(&[("l.yaml", &text)]).await;
    for i in 0..5 {
        assert_eq!(
            r.get("rate.example.com", "/").await.status,
            StatusCode::OK,
            "request {i}"
        );
    }
    assert_eq!(
        r.get("rate.example.com", "/").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );

    let http = r.http;
    let slow = tokio::spawn(async move {
        get(http, "conc.example.com", "/delay/1500", &[])
            .await
            .status
    });
    // Give the slow request time to be in flight, even on a loaded machine.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        r.get("conc.example.com", "/").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(slow.await.unwrap(), StatusCode::OK);
    assert_eq!(
        r.get("conc.example.com", "/").await.status,
        StatusCode::OK,
        "the slot is free again"
    );

    // One request at a time per endpoint. A short request in flight: the
    // next one waits in line (well under the 1 s queue limit) and is served.
    let first =
        tokio::spawn(async move { get(http, "pod.example.com", "/delay/300", &[]).await.status });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        r.get("pod.example.com", "/").await.status,
        StatusCode::OK,
        "queued behind a short request"
    );
    assert_eq!(first.await.unwrap(), StatusCode::OK);
    // A long request in flight: the next one would wait far longer than the
    // queue allows and gets 503 (the margins are wide so a loaded machine
    // cannot flip the outcome).
    let long = tokio::spawn(async move {
        get(http, "pod.example.com", "/delay/2500", &[])
            .await
            .status
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        r.get("pod.example.com", "/").await.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "queued behind a long request"
    );
    assert_eq!(long.await.unwrap(), StatusCode::OK);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_mark_endpoints_down_and_up() {
    let a = Upstream::start("a").await;
    let dead = dead_port().await;
    let text = format!(
        "{}{}",
        service("default", "web", &[a.port(), dead]),
        route(
            "default",
            "c",
            "2024-01-01T00:00:00Z",
            "c.example.com",
            "",
            "web",
            &[("router.openshift.io/haproxy.health.check.interval", "100ms")],
            ""
        )
    );
    let r = TestRouter::start(&[("c.yaml", &text)]).await;
    let state = |r: &TestRouter| {
        let admin = r.admin;
        async move {
            let v: serde_json::Value =
                serde_json::from_str(&get(admin, "admin", "/api/backends", &[]).await.body)
                    .unwrap();
            let eps = v["backends"][0]["endpoints"].as_array().unwrap().clone();
            eps.into_iter()
                .find(|e| {
                    e["address"]
                        .as_str()
                        .unwrap()
                        .ends_with(&format!(":{dead}"))
                })
                .unwrap()
        }
    };
    let wait_for = |want_down: bool| {
        let r = &r;
        async move {
            let start = Instant::now();
            loop {
                let e = state(r).await;
                if e["down"] == want_down {
                    return start.elapsed();
                }
                assert!(
                    start.elapsed() < Duration::from_secs(3),
                    "endpoint never became down={want_down}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let took = wait_for(true).await;
    assert!(took < Duration::from_secs(1), "marked down after {took:?}");
    for _ in 0..10 {
        assert_eq!(r.get("c.example.com", "/").await.echoed("name"), Some("a"));
    }
    let _l = tokio::net::TcpListener::bind(("127.0.0.1", dead))
        .await
        .unwrap();
    wait_for(false).await;
    r.stop().await;
}

/// The checker rebuilds its list after a table change from the host-map
/// shards the change copied, reusing what it found in the shards the new
/// table shares: a route added later gets its endpoints checked, and the
/// first route's checks go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_follow_routes_added_after_a_table_change() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let (dead1, dead2) = (dead_port().await, dead_port().await);
    let check = [("router.openshift.io/haproxy.health.check.interval", "100ms")];
    let file = |svc: &str, ports: &[u16], name: &str, host: &str| {
        format!(
            "{}{}",
            service("default", svc, ports),
            route(
                "default",
                name,
                "2024-01-01T00:00:00Z",
                host,
                "",
                svc,
                &check,
                ""
            )
        )
    };
    let r = TestRouter::start(&[(
        "c.yaml",
        &file("web", &[a.port(), dead1], "c", "c.example.com"),
    )])
    .await;
    let down = |port: u16| {
        let admin = r.admin;
        async move {
            let v: serde_json::Value =
                serde_json::from_str(&get(admin, "admin", "/api/backends", &[]).await.body)
                    .unwrap();
            let suffix = format!(":{port}");
            v["backends"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|b| b["endpoints"].as_array().unwrap().iter())
                .find(|e| e["address"].as_str().unwrap().ends_with(&suffix))
                .map(|e| e["down"] == true)
        }
    };
    let wait = |port: u16, want: bool| {
        let down = &down;
        async move {
            let start = Instant::now();
            while down(port).await != Some(want) {
                assert!(
                    start.elapsed() < Duration::from_secs(4),
                    "endpoint :{port} never became down={want}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait(dead1, true).await;
    // A second route, in a table that shares most shards with the first.
    r.write(
        "d.yaml",
        &file("web2", &[b.port(), dead2], "d", "d.example.com"),
    )
    .await;
    wait(dead2, true).await;
    // The first route's endpoint is still checked: it comes back up.
    let _l = tokio::net::TcpListener::bind(("127.0.0.1", dead1))
        .await
        .unwrap();
    wait(dead1, false).await;
    assert_eq!(r.get("d.example.com", "/").await.echoed("name"), Some("b"));
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_killed_mid_load_costs_no_get() {
    let a = Upstream::start("a").await;
    let (b, kill) = Upstream::start_killable("b").await;
    let text = format!(
        "{}{}",
        service("default", "web", &[a.port(), b.port()]),
        route(
            "default",
            "k",
            "2024-01-01T00:00:00Z",
            "k.example.com",
            "",
            "web",
            &[
                ("haproxy.router.openshift.io/balance", "roundrobin"),
                ("haproxy.router.openshift.io/disable_cookies", "true"),
            ],
            ""
        )
    );
    let r = TestRouter::start(&[("k.yaml", &text)]).await;
    let http = r.http;
    let load = tokio::spawn(async move {
        let c = client();
        let mut names = Vec::new();
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(1500) {
            let req = http::Request::get(format!("http://{http}/"))
                .header("host", "k.example.com")
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            let reply = send(&c, req).await;
            assert_eq!(reply.status, StatusCode::OK, "a GET failed: {}", reply.body);
            names.push((start.elapsed(), reply.echoed("name").unwrap().to_owned()));
        }
        names
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    kill.store(true, std::sync::atomic::Ordering::SeqCst);
    let killed_at = Duration::from_millis(400);
    let names = load.await.expect("no GET failed");
    assert!(
        names.iter().any(|(_, n)| n == "b"),
        "b served before it died"
    );
    // A second after the kill, b is out of rotation.
    let late_b = names
        .iter()
        .filter(|(t, n)| *t > killed_at + Duration::from_secs(1) && n == "b")
        .count();
    assert_eq!(late_b, 0);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_concurrent_connections_holds_for_a_cold_burst() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    // An upstream that records how many requests it serves at once.
    let now = Arc::new(AtomicUsize::new(0));
    let max = Arc::new(AtomicUsize::new(0));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (n2, m2) = (now.clone(), max.clone());
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (n, m) = (n2.clone(), m2.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let (n, m) = (n.clone(), m.clone());
                    async move {
                        let c = n.fetch_add(1, Ordering::SeqCst) + 1;
                        m.fetch_max(c, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(150)).await;
                        n.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let text = format!(
        "{}{}",
        service("default", "web", &[port]),
        route(
            "default",
            "cap",
            "2024-01-01T00:00:00Z",
            "cap.example.com",
            "",
            "web",
            &[(
                "haproxy.router.openshift.io/pod-concurrent-connections",
                "2"
            )],
            ""
        )
    );
    let r = TestRouter::start(&[("c.yaml", &text)]).await;
    let http = r.http;
    let tasks: Vec<_> = (0..6)
        .map(|_| tokio::spawn(async move { get(http, "cap.example.com", "/", &[]).await.status }))
        .collect();
    for t in tasks {
        assert_eq!(
            t.await.unwrap(),
            StatusCode::OK,
            "all served within the queue time"
        );
    }
    assert!(
        max.load(Ordering::SeqCst) <= 2,
        "upstream saw {} at once",
        max.load(Ordering::SeqCst)
    );
    r.stop().await;
}
