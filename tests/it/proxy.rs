//! The HTTP data path: path precedence, error statuses, retries, forwarded
//! headers, the insecure-edge policy.

use crate::support::*;
use http::StatusCode;

#[tokio::test]
async fn longest_path_wins_on_segment_boundaries() {
    let root = Upstream::start("root").await;
    let sub = Upstream::start("sub").await;
    let deep = Upstream::start("deep").await;
    let text = [
        service("default", "root", &[root.port()]),
        service("default", "sub", &[sub.port()]),
        service("default", "deep", &[deep.port()]),
        simple_route("default", "root", "p.example.com", "/", "root"),
        simple_route("default", "sub", "p.example.com", "/sub", "sub"),
        simple_route("default", "deep", "p.example.com", "/sub/deep", "deep"),
    ]
    .concat();
    let r = TestRouter::start(&[("p.yaml", &text)]).await;
    for (path, want) in [
        ("/", "root"),
        ("/sub", "sub"),
        ("/sub/", "sub"),
        ("/sub/x?y=1", "sub"),
        ("/subpar", "root"),
        ("/sub/deep/er", "deep"),
        ("/sub/deeper", "sub"),
        ("/SUB", "root"),
    ] {
        assert_eq!(
            r.get("P.Example.COM:80", path).await.echoed("name"),
            Some(want),
            "{path}"
        );
    }
    // The query string reaches the upstream untouched.
    assert_eq!(
        r.get("p.example.com", "/sub/x?y=1").await.echoed("uri"),
        Some("/sub/x?y=1")
    );
    r.stop().await;
}

#[tokio::test]
async fn unknown_host_no_endpoints_reset_and_timeout() {
    let slow = Upstream::start("slow").await;
    let reset = resetting_upstream().await;
    let text = [
        service("default", "empty", &[]),
        service("default", "reset", &[reset.port()]),
        service("default", "slow", &[slow.port()]),
        simple_route("default", "empty", "empty.example.com", "", "empty"),
        simple_route("default", "reset", "reset.example.com", "", "reset"),
        route(
            "default",
            "slow",
            "2024-01-01T00:00:00Z",
            "slow.example.com",
            "",
            "slow",
            &[("haproxy.router.openshift.io/timeout", "300ms")],
            "",
        ),
    ]
    .concat();
    let r = TestRouter::start(&[("e.yaml", &text)]).await;

    let unknown = r.get("nobody.example.com", "/").await;
    assert_eq!(unknown.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(unknown.body.contains("no route"), "{}", unknown.body);

    let empty = r.get("empty.example.com", "/").await;
    assert_eq!(empty.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(empty.body.contains("no ready endpoints"), "{}", empty.body);

    let reset = r.get("reset.example.com", "/").await;
    assert_eq!(reset.status, StatusCode::BAD_GATEWAY, "{}", reset.body);

    let t = std::time::Instant::now();
    let slow_reply = r.get("slow.example.com", "/delay/3000").await;
    assert_eq!(slow_reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(t.elapsed() < std::time::Duration::from_millis(2500));
    // Within the timeout it works.
    assert_eq!(
        r.get("slow.example.com", "/delay/10").await.status,
        StatusCode::OK
    );
    r.stop().await;
}

#[tokio::test]
async fn connect_failure_goes_to_the_next_endpoint() {
    let alive = Upstream::start("alive").await;
    let dead = dead_port().await;
    let text = format!(
        "{}{}",
        service("default", "mixed", &[dead, alive.port()]),
        simple_route("default", "m", "m.example.com", "", "mixed")
    );
    let r = TestRouter::start(&[("m.yaml", &text)]).await;
    for _ in 0..30 {
        let reply = r.get("m.example.com", "/").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.echoed("name"), Some("alive"));
    }
    // A POST with a body survives the retry too: the body was never sent.
    let c = client();
    for _ in 0..10 {
        let req = http::Request::post(format!("http://{}/sink", r.http))
            .header("host", "m.example.com")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"0123456789",
            )))
            .unwrap();
        let reply = send(&c, req).await;
        assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "10"));
    }
    // Only dead endpoints: 503.
    r.write(
        "m.yaml",
        &format!(
            "{}{}",
            service("default", "mixed", &[dead]),
            simple_route("default", "m", "m.example.com", "", "mixed")
        ),
    )
    .await;
    assert_eq!(
        r.get("m.example.com", "/").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    r.stop().await;
}

#[tokio::test]
async fn a_safe_request_goes_to_another_endpoint_when_one_dies_before_answering() {
    // One endpoint accepts, reads the request and resets: nothing of an
    // answer. A GET is sent again to the other endpoint; a DELETE is not
    // (it may have been acted on), and its client gets 502.
    let alive = Upstream::start("alive").await;
    let resetter = resetting_upstream().await;
    let text = format!(
        "{}{}",
        service("default", "s", &[resetter.port(), alive.port()]),
        route(
            "default",
            "r",
            "2024-01-01T00:00:00Z",
            "x.example.com",
            "",
            "s",
            &[("haproxy.router.openshift.io/balance", "roundrobin")],
            ""
        )
    );
    let r = TestRouter::start(&[("r.yaml", &text)]).await;
    let c = client();
    let req = |method: &str| {
        http::Request::builder()
            .method(method)
            .uri(format!("http://{}/item", r.http))
            .header("host", "x.example.com")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    // Round robin: of two DELETEs one meets the resetting endpoint.
    let mut codes = Vec::new();
    for _ in 0..2 {
        codes.push(send(&c, req("DELETE")).await.status.as_u16());
    }
    codes.sort_unstable();
    assert_eq!(codes, [200, 502], "a DELETE is never sent twice");
    for i in 0..10 {
        let reply = send(&c, req("GET")).await;
        assert_eq!(reply.status, StatusCode::OK, "GET {i}: {}", reply.body);
        assert_eq!(reply.echoed("name"), Some("alive"));
    }
    let m = get(r.admin, "admin", "/metrics", &[]).await.body;
    let retries: f64 = m
        .lines()
        .filter(|l| l.starts_with("gatehouse_route_retries_total") && l.contains("route=\"r\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(retries >= 1.0, "the GETs were retried: {retries}");
    r.stop().await;
}

#[tokio::test]
async fn forwarded_headers_follow_the_route_annotation() {
    let up = Upstream::start("fw").await;
    let ann = "haproxy.router.openshift.io/set-forwarded-headers";
    let mut text = service("default", "fw", &[up.port()]);
    for policy in ["append", "replace", "if-none", "never"] {
        text.push_str(&route(
            "default",
            policy,
            "2024-01-01T00:00:00Z",
            &format!("{policy}.example.com"),
            "",
            "fw",
            &[(ann, policy)],
            "",
        ));
    }
    text.push_str(&simple_route(
        "default",
        "default",
        "default.example.com",
        "",
        "fw",
    ));
    let r = TestRouter::start(&[("fw.yaml", &text)]).await;
    let sent = [
        ("x-forwarded-for", "203.0.113.9"),
        ("x-forwarded-proto", "https"),
    ];
    let port = r.http.port().to_string();

    for host in ["append.example.com", "default.example.com"] {
        let a = get(r.http, host, "/", &sent).await;
        assert_eq!(
            a.echoed("x-forwarded-for"),
            Some("203.0.113.9, 127.0.0.1"),
            "{host}"
        );
        assert_eq!(a.echoed("x-forwarded-proto"), Some("http"));
        assert_eq!(a.echoed("x-forwarded-host"), Some(host));
        assert_eq!(a.echoed("x-forwarded-port"), Some(port.as_str()));
        assert_eq!(
            a.echoed("forwarded"),
            Some(format!("for=127.0.0.1;host={host};proto=http").as_str())
        );
    }
    let rep = get(r.http, "replace.example.com", "/", &sent).await;
    assert_eq!(rep.echoed("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(rep.echoed("x-forwarded-proto"), Some("http"));

    let ifn = get(r.http, "if-none.example.com", "/", &sent).await;
    assert_eq!(ifn.echoed("x-forwarded-for"), Some("203.0.113.9"));
    assert_eq!(ifn.echoed("x-forwarded-proto"), Some("https"));
    assert_eq!(ifn.echoed("x-forwarded-host"), Some("if-none.example.com"));

    let never = get(r.http, "never.example.com", "/", &sent).await;
    assert_eq!(never.echoed("x-forwarded-for"), Some("203.0.113.9"));
    assert_eq!(never.echoed("x-forwarded-host"), None);
    assert_eq!(never.echoed("forwarded"), None);

    // A request with none of them gets each once under every policy but
    // `never`: a GET goes through the router's own HTTP/1.1 client (the
    // headers written into the head), a POST with a body through hyper's
    // (the headers in the map).
    let c = client();
    for host in [
        "append.example.com",
        "replace.example.com",
        "if-none.example.com",
        "default.example.com",
        "never.example.com",
    ] {
        let never = host.starts_with("never");
        let post = http::Request::post(format!("http://{}/", r.http))
            .header("host", host)
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"a body",
            )))
            .unwrap();
        for a in [get(r.http, host, "/", &[]).await, send(&c, post).await] {
            assert_eq!(a.status, StatusCode::OK, "{host}: {}", a.body);
            let expected = [
                ("x-forwarded-for", "127.0.0.1".to_string()),
                ("x-forwarded-host", host.to_string()),
                ("x-forwarded-port", port.clone()),
                ("x-forwarded-proto", "http".to_string()),
                ("forwarded", format!("for=127.0.0.1;host={host};proto=http")),
            ];
            for (name, value) in expected {
                let lines: Vec<&str> = a
                    .body
                    .lines()
                    .filter_map(|l| l.strip_prefix(&format!("{name}: ")))
                    .collect();
                if never {
                    assert!(lines.is_empty(), "{host} {name}: {lines:?}");
                } else {
                    assert_eq!(lines, [value.as_str()], "{host} {name}:\n{}", a.body);
                }
            }
        }
    }
    r.stop().await;
}

/// A drain (shutdown, a rolling restart's old process) closes idle
/// keep-alive connections at once, whether hyper still holds them or they
/// are parked (idle past a second), instead of waiting for the drain
/// deadline (30 s here).
#[tokio::test]
async fn a_drain_closes_idle_keep_alive_connections_at_once() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start("dr").await;
    let text = format!(
        "{}{}",
        service("default", "dr", &[up.port()]),
        simple_route("default", "dr", "dr.example.com", "", "dr")
    );
    let r = TestRouter::start(&[("dr.yaml", &text)]).await;
    // One request each, answered, then the connection left open.
    async fn answered(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: dr.example.com\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("name=dr") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before answering");
            got.extend_from_slice(&buf[..n]);
        }
        s
    }
    let mut parked = answered(r.http).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut held = answered(r.http).await;
    let started = std::time::Instant::now();
    let stop = tokio::spawn(r.stop());
    for (name, s) in [("held", &mut held), ("parked", &mut parked)] {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("the {name} idle connection stayed open"));
        assert!(matches!(n, Ok(0) | Err(_)), "{name}: {n:?}");
    }
    tokio::time::timeout(Duration::from_secs(5), stop)
        .await
        .expect("the drain ended early")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn hop_by_hop_headers_do_not_reach_the_upstream() {
    let up = Upstream::start("h").await;
    let text = format!(
        "{}{}",
        service("default", "h", &[up.port()]),
        simple_route("default", "h", "h.example.com", "", "h")
    );
    let r = TestRouter::start(&[("h.yaml", &text)]).await;
    let reply = get(
        r.http,
        "h.example.com",
        "/",
        &[
            ("connection", "x-private"),
            ("x-private", "secret"),
            ("keep-alive", "timeout=1"),
            ("x-public", "ok"),
        ],
    )
    .await;
    assert_eq!(reply.echoed("x-public"), Some("ok"));
    assert_eq!(reply.echoed("x-private"), None);
    assert_eq!(reply.echoed("keep-alive"), None);
    r.stop().await;
}

#[tokio::test]
async fn insecure_edge_termination_policy_on_the_plain_port() {
    let up = Upstream::start("tls").await;
    let tls = |policy: &str| {
        format!("  tls: {{termination: edge, insecureEdgeTerminationPolicy: {policy}}}\n")
    };
    let text = [
        service("default", "s", &[up.port()]),
        route(
            "default",
            "allow",
            "2024-01-01T00:00:00Z",
            "allow.example.com",
            "",
            "s",
            &[],
            &tls("Allow"),
        ),
        route(
            "default",
            "redirect",
            "2024-01-01T00:00:00Z",
            "redirect.example.com",
            "",
            "s",
            &[],
            &tls("Redirect"),
        ),
        route(
            "default",
            "none",
            "2024-01-01T00:00:00Z",
            "none.example.com",
            "",
            "s",
            &[],
            &tls("None"),
        ),
    ]
    .concat();
    let r = TestRouter::start(&[("t.yaml", &text)]).await;
    assert_eq!(r.get("allow.example.com", "/").await.status, StatusCode::OK);
    let red = r.get("redirect.example.com:8080", "/a/b?c=d").await;
    assert_eq!(red.status, StatusCode::FOUND);
    assert_eq!(
        red.headers["location"],
        "https://redirect.example.com/a/b?c=d"
    );
    assert_eq!(
        r.get("none.example.com", "/").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    r.stop().await;
}

#[tokio::test]
async fn external_name_services_resolve_by_dns() {
    let up = Upstream::start("external").await;
    let svc = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: ext}}\nspec:\n  type: ExternalName\n  externalName: localhost\n  ports: [{{name: http, port: 80, targetPort: {}}}]\n",
        up.port()
    );
    let text = format!(
        "{svc}{}",
        simple_route("default", "ext", "ext.example.com", "", "ext")
    );
    let r = TestRouter::start(&[("ext.yaml", &text)]).await;
    let reply = r.get("ext.example.com", "/").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.echoed("name"), Some("external"));
    r.stop().await;
}

#[tokio::test]
async fn request_ids_are_kept_or_made() {
    let up = Upstream::start("id").await;
    let text = format!(
        "{}{}",
        service("default", "s", &[up.port()]),
        simple_route("default", "r", "id.example.com", "", "s")
    );
    let r = TestRouter::start(&[("r.yaml", &text)]).await;
    let made = r.get("id.example.com", "/").await;
    let id = made.echoed("x-request-id").expect("an id is added");
    assert_eq!(id.len(), 16);
    let other = r.get("id.example.com", "/").await;
    assert_ne!(other.echoed("x-request-id"), Some(id), "ids differ");
    let kept = get(
        r.http,
        "id.example.com",
        "/",
        &[("x-request-id", "abc-123")],
    )
    .await;
    assert_eq!(kept.echoed("x-request-id"), Some("abc-123"));
    r.stop().await;
}

#[tokio::test]
async fn an_upstream_silent_mid_body_is_cut_after_the_route_timeout() {
    let up = Upstream::start("staller").await;
    let text = format!(
        "{}{}",
        service("default", "s", &[up.port()]),
        route(
            "default",
            "r",
            "2024-01-01T00:00:00Z",
            "stall.example.com",
            "",
            "s",
            &[("haproxy.router.openshift.io/timeout", "300ms")],
            ""
        )
    );
    let r = TestRouter::start(&[("r.yaml", &text)]).await;
    let req = http::Request::get(format!("http://{}/stall", r.http))
        .header("host", "stall.example.com")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let start = std::time::Instant::now();
    let body = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        http_body_util::BodyExt::collect(resp.into_body()),
    )
    .await
    .expect("the router cuts the stalled body instead of waiting");
    assert!(body.is_err(), "a truncated body is an error for the client");
    assert!(start.elapsed() < std::time::Duration::from_secs(2));
    r.stop().await;
}

/// A client that half-closes after sending its request (`nc -N`, scripts,
/// some HTTP/1.0 tools) still gets its answer, as from HAProxy without
/// `option abortonclose`: the end of its input is not a cancel, with or
/// without a request body. The router closes the connection after that
/// answer, since nothing more can come.
#[tokio::test]
async fn a_client_that_half_closes_after_its_request_gets_the_answer() {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::start("hc").await;
    let text = [
        service("default", "hc", &[up.port()]),
        simple_route("default", "hc", "hc.example.com", "", "hc"),
    ]
    .concat();
    let r = TestRouter::start(&[("hc.yaml", &text)]).await;
    // A GET answered at once and one answered late, and a POST whose
    // body ends just before the FIN (the upstream echoes its length).
    for (req, want) in [
        ("GET / HTTP/1.1\r\nHost: hc.example.com\r\n\r\n", "name=hc"),
        (
            "GET /delay/300 HTTP/1.1\r\nHost: hc.example.com\r\n\r\n",
            "name=hc",
        ),
        (
            "POST /sink HTTP/1.1\r\nHost: hc.example.com\r\nContent-Length: 5\r\n\r\nhello",
            "\r\n\r\n5",
        ),
    ] {
        let path = req.split(' ').nth(1).unwrap_or("");
        let mut s = tokio::net::TcpStream::connect(r.http).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        s.shutdown().await.unwrap();
        let resp = read_response(&mut s).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{path}: {resp:?}");
        assert!(resp.contains(want), "{path}: {resp}");
        assert!(
            closed_within(&mut s, std::time::Duration::from_secs(5))
                .await
                .is_some(),
            "{path}: the router keeps a half-closed connection open"
        );
    }
    r.stop().await;
}
