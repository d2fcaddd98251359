//! Hardening: the PROXY protocol from trusted balancers only, and what an
//! edge router must refuse.

use crate::support::*;
use crate::tls::{client_config, edge, get_over, https_router, Ca};
use gatehouse::proxy::proxy_protocol::encode_v2;
use http::StatusCode;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A TCP connection to `to` from source address `from` (any port).
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{from}:0").parse().unwrap()).unwrap();
    s.connect(to).await.unwrap()
}

/// Send `bytes` then read until the server closes (or 5 s).
async fn exchange(mut s: TcpStream, bytes: &[u8]) -> String {
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn get_close(host: &str) -> String {
    format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
}

/// The echo upstream's view of the client address.
fn forwarded_for(resp: &str) -> Option<&str> {
    resp.lines()
        .find_map(|l| l.strip_prefix("x-forwarded-for: "))
        .map(str::trim)
}

#[tokio::test]
async fn proxy_protocol_from_trusted_balancers_only() {
    let up = Upstream::start("app").await;
    let allow = format!(
        "{}{}",
        service("default", "s", &[up.port()]),
        route(
            "default",
            "only-doc-net",
            "2024-01-01T00:00:00Z",
            "allow.example.com",
            "",
            "s",
            &[("haproxy.router.openshift.io/ip_allowlist", "203.0.113.0/24")],
            ""
        )
    );
    let text = format!(
        "{allow}{}",
        simple_route("default", "web", "p.example.com", "", "s")
    );
    let r = TestRouter::start_with(&[("r.yaml", &text)], |c| {
        c.accept_proxy = true;
        // 127.0.0.2 plays the F5; 127.0.0.1 is an ordinary client.
        c.proxy_trusted_sources = vec!["127.0.0.2/32".into()];
    })
    .await;

    // v1 from the balancer: the request is the client's, and the upstream
    // sees the client's address.
    let s = connect_from("127.0.0.2", r.http).await;
    let resp = exchange(
        s,
        format!(
            "PROXY TCP4 203.0.113.9 10.0.0.1 50000 80\r\n{}",
            get_close("p.example.com")
        )
        .as_bytes(),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(forwarded_for(&resp), Some("203.0.113.9"), "{resp}");

    // v2, and the allow-list judges the real client.
    let s = connect_from("127.0.0.2", r.http).await;
    let mut bytes = encode_v2("203.0.113.20:4000".parse().unwrap(), r.http);
    bytes.extend_from_slice(get_close("allow.example.com").as_bytes());
    let resp = exchange(s, &bytes).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(forwarded_for(&resp), Some("203.0.113.20"));
    let s = connect_from("127.0.0.2", r.http).await;
    let mut bytes = encode_v2("198.51.100.1:4000".parse().unwrap(), r.http);
    bytes.extend_from_slice(get_close("allow.example.com").as_bytes());
    assert!(exchange(s, &bytes).await.starts_with("HTTP/1.1 403"));

    // The balancer without a header: closed, nothing served, counted.
    let s = connect_from("127.0.0.2", r.http).await;
    let resp = exchange(s, get_close("p.example.com").as_bytes()).await;
    assert_eq!(resp, "", "no response without the header");

    // A direct client cannot forge an address: its PROXY line is not HTTP.
    let s = connect_from("127.0.0.1", r.http).await;
    let resp = exchange(
        s,
        format!(
            "PROXY TCP4 203.0.113.9 10.0.0.1 50000 80\r\n{}",
            get_close("allow.example.com")
        )
        .as_bytes(),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    // …and is itself, as it is.
    let reply = get(r.http, "p.example.com", "/", &[]).await;
    assert_eq!(reply.echoed("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(
        get(r.http, "allow.example.com", "/", &[]).await.status,
        StatusCode::FORBIDDEN
    );

    let m = get(r.admin, "admin", "/metrics", &[]).await.body;
    assert!(
        m.lines()
            .any(|l| l == "gatehouse_proxy_header_refused_total 1"),
        "{m}"
    );
    r.stop().await;
}

#[tokio::test]
async fn proxy_protocol_v2_before_tls() {
    let up = Upstream::start("tls-app").await;
    let ca = Ca::new("proxy test CA");
    let leaf = ca.leaf(&["s.example.com"]);
    let text = format!(
        "{}{}",
        service("default", "s", &[up.port()]),
        edge("secure", "s.example.com", "s", Some(&leaf))
    );
    let r = https_router(&[("r.yaml", &text)], |c| {
        c.accept_proxy = true;
        c.proxy_trusted_sources = vec!["127.0.0.2/32".into()];
    })
    .await;
    let https = r.https.unwrap();
    let mut s = connect_from("127.0.0.2", https).await;
    s.write_all(&encode_v2("192.0.2.77:5555".parse().unwrap(), https))
        .await
        .unwrap();
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(client_config(ca.roots(), &[b"http/1.1"])));
    let tls = connector
        .connect(
            rustls::pki_types::ServerName::try_from("s.example.com").unwrap(),
            s,
        )
        .await
        .expect("TLS after the PROXY header");
    let reply = get_over(tls, "s.example.com", "/").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.echoed("x-forwarded-for"), Some("192.0.2.77"));
    // A truncated header from the balancer: refused by reason.
    let mut s = connect_from("127.0.0.2", https).await;
    s.write_all(&encode_v2("192.0.2.77:5555".parse().unwrap(), https)[..10])
        .await
        .unwrap();
    drop(s);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m = get(r.admin, "admin", "/metrics", &[]).await.body;
    assert!(
        m.contains("gatehouse_tls_handshake_failures_total{reason=\"proxy_header\"} 1"),
        "{m}"
    );
    r.stop().await;
}

#[tokio::test]
async fn accept_proxy_without_trusted_sources_is_a_startup_error() {
    let cfg = gatehouse::config::RouterConfig {
        accept_proxy: true,
        manifests: Some(tempfile::tempdir().unwrap().path().to_owned()),
        http: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    };
    let Err(err) = gatehouse::app::start(cfg).await else {
        panic!("accept_proxy without trusted sources must not start");
    };
    assert!(err.to_string().contains("proxy_trusted_sources"), "{err}");
}

/// An upstream that records every byte it receives and answers each
/// request head with a small 200.
struct Recorder {
    addr: SocketAddr,
    seen: Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Recorder {
    async fn start() -> Recorder {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let mut pending = Vec::new();
                    loop {
                        let n = match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        log.lock().unwrap().extend_from_slice(&buf[..n]);
                        pending.extend_from_slice(&buf[..n]);
                        while let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            pending.drain(..i + 4);
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                                .await;
                        }
                    }
                });
            }
        });
        Recorder { addr, seen }
    }

    fn take(&self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut *self.seen.lock().unwrap())).into_owned()
    }
}

/// RFC 9112/9110 framing and field rules, as raw bytes on a socket: each
/// bad request gets its 4xx and the connection is closed, and not one byte
/// of it reaches the upstream (no smuggling, no desync).
#[tokio::test]
async fn malformed_requests_are_refused_before_the_upstream() {
    let rec = Recorder::start().await;
    let text = format!(
        "{}{}",
        service("default", "s", &[rec.addr.port()]),
        simple_route("default", "web", "h.example.com", "", "s")
    );
    let r = TestRouter::start(&[("r.yaml", &text)]).await;
    let long_uri = format!(
        "GET /{} HTTP/1.1\r\nHost: h.example.com\r\n\r\n",
        "a".repeat(20_000)
    );
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: h.example.com\r\nX-Big: {}\r\n\r\n",
        "b".repeat(70_000)
    );
    let cases: Vec<(&str, String, &str)> = vec![
        ("chunked not last", "POST / HTTP/1.1\r\nHost: h.example.com\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n".into(), "400"),
        ("TE on HTTP/1.0", "POST / HTTP/1.0\r\nHost: h.example.com\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(), "400"),
        ("CL not a number", "POST / HTTP/1.1\r\nHost: h.example.com\r\nContent-Length: abc\r\n\r\n".into(), "400"),
        ("CL negative", "POST / HTTP/1.1\r\nHost: h.example.com\r\nContent-Length: -1\r\n\r\n".into(), "400"),
        ("CLs differ", "POST / HTTP/1.1\r\nHost: h.example.com\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab".into(), "400"),
        ("CL list differs", "POST / HTTP/1.1\r\nHost: h.example.com\r\nContent-Length: 1, 2\r\n\r\nab".into(), "400"),
        ("obs-fold", "GET / HTTP/1.1\r\nHost: h.example.com\r\nX-A: a\r\n b\r\n\r\n".into(), "400"),
        ("space before colon", "GET / HTTP/1.1\r\nHost : h.example.com\r\n\r\n".into(), "400"),
        ("NUL in value", "GET / HTTP/1.1\r\nHost: h.example.com\r\nX-A: a\0b\r\n\r\n".into(), "400"),
        ("bare CR in value", "GET / HTTP/1.1\r\nHost: h.example.com\r\nX-A: a\rb\r\n\r\n".into(), "400"),
        ("non-token name", "GET / HTTP/1.1\r\nHost: h.example.com\r\nX(A): b\r\n\r\n".into(), "400"),
        ("missing Host", "GET / HTTP/1.1\r\nX-A: b\r\n\r\n".into(), "400"),
        ("duplicate Host", "GET / HTTP/1.1\r\nHost: h.example.com\r\nHost: other.example.com\r\n\r\n".into(), "400"),
        ("request line too long", long_uri, "414"),
        ("headers too large", big_header, "431"),
    ];
    let mut failures = Vec::new();
    for (name, raw, want) in &cases {
        let s = TcpStream::connect(r.http).await.unwrap();
        let resp = exchange(s, raw.as_bytes()).await;
        let status = resp.get(9..12).unwrap_or("");
        // Give a forwarded request time to arrive before looking.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let upstream = rec.take();
        if status != *want || !upstream.is_empty() {
            failures.push(format!(
                "{name}: status {status:?} (want {want}), upstream saw {} bytes",
                upstream.len()
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // Transfer-Encoding with Content-Length: hyper frames the body by the
    // chunked coding, drops Content-Length and closes the connection after
    // the exchange (RFC 9112 §6.3 allows this instead of a 400). What
    // matters for smuggling: the upstream sees one framing only, and the
    // bytes after the chunked body never become a second request.
    let resp = exchange(
        TcpStream::connect(r.http).await.unwrap(),
        b"POST / HTTP/1.1\r\nHost: h.example.com\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h.example.com\r\n\r\n",
    )
    .await;
    assert_eq!(resp.matches("HTTP/1.1").count(), 1, "one response: {resp}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let upstream = rec.take().to_ascii_lowercase();
    assert!(!upstream.contains("content-length"), "{upstream}");
    assert!(
        upstream.contains("transfer-encoding: chunked"),
        "{upstream}"
    );
    assert!(!upstream.contains("smuggled"), "{upstream}");
    // And a good request still goes through.
    let resp = exchange(
        TcpStream::connect(r.http).await.unwrap(),
        get_close("h.example.com").as_bytes(),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(rec.take().starts_with("GET / HTTP/1.1"));
    r.stop().await;
}

/// A malformed upstream response is a 502, and the connection it came on
/// is dropped, never reused for the next request.
#[tokio::test]
async fn malformed_upstream_responses_are_502_and_the_connection_is_dropped() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                loop {
                    let Ok(k) = s.read(&mut buf).await else {
                        return;
                    };
                    if k == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..k]);
                    if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        seen.clear();
                        // First connection: a broken head; later ones: fine.
                        let reply: &[u8] = if n == 0 {
                            b"HTTP/1.1 200 OK\r\nContent-Length: x1\r\n\r\nhello"
                        } else {
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                        };
                        if s.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    let text = format!(
        "{}{}",
        service("default", "s", &[port]),
        simple_route("default", "web", "u.example.com", "", "s")
    );
    let r = TestRouter::start(&[("r.yaml", &text)]).await;
    let bad = get(r.http, "u.example.com", "/", &[]).await;
    assert_eq!(bad.status, StatusCode::BAD_GATEWAY, "{}", bad.body);
    let good = get(r.http, "u.example.com", "/", &[]).await;
    assert_eq!(good.status, StatusCode::OK);
    assert_eq!(good.body, "ok");
    assert_eq!(
        conns.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the broken connection was not reused"
    );
    r.stop().await;
}

/// Net effect of a rolling restart under constant load: a new process binds
/// the same port (SO_REUSEPORT), the old one gets SIGTERM, closes its
/// listener (the kernel moves its queued connections to the new one,
/// net.ipv4.tcp_migrate_req) and drains. Not one request may fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_under_load_loses_nothing() {
    use std::process::Stdio;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    // The kernel setting zero-loss restarts rely on (documented in the
    // README); this test machine runs as root.
    let knob = "/proc/sys/net/ipv4/tcp_migrate_req";
    if std::fs::read_to_string(knob)
        .map(|v| v.trim() != "1")
        .unwrap_or(true)
    {
        std::fs::write(knob, "1").expect("set net.ipv4.tcp_migrate_req=1 (needs root)");
    }
    let up = Upstream::start("app").await;
    let dir = manifests_dir("r.example.com", up.port());
    // A fixed port both processes share.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let spawn = || {
        tokio::process::Command::new(bin())
            .args(["--log-format", "json", "run", "--manifests"])
            .arg(dir.path())
            .args([
                "--http",
                &format!("127.0.0.1:{port}"),
                "--admin",
                "127.0.0.1:0",
            ])
            .args(["--access-log", "off"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let mut old = spawn();
    let (_old_err, addr, _) = crate::process::listening(&mut old).await;

    // Eight clients, each a new connection per request, as fast as they can.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let resp = match TcpStream::connect(addr).await {
                    Ok(s) => exchange(s, get_close("r.example.com").as_bytes()).await,
                    Err(_) => String::new(),
                };
                if resp.starts_with("HTTP/1.1 200") {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut new = spawn();
    let _ = crate::process::listening(&mut new).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = ok.load(Ordering::Relaxed);
    // SIGTERM the old one; it must exit cleanly after draining.
    let pid = old.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(Duration::from_secs(20), old.wait())
        .await
        .expect("old process exits after draining")
        .unwrap();
    assert!(status.success(), "{status:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(
        ok > before && before > 100,
        "load ran throughout: {before} then {ok}"
    );
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed across the restart",
        ok + failed
    );
    let _ = new.kill().await;
}

/// Slowloris: clients that trickle their headers are cut off at the header
/// timeout, one address cannot hold more than its share of connections,
/// and everyone else is served meanwhile.
#[tokio::test]
async fn slow_and_greedy_clients_are_bounded() {
    let up = Upstream::start("app").await;
    let text = format!(
        "{}{}",
        service("default", "s", &[up.port()]),
        simple_route("default", "web", "slow.example.com", "", "s")
    );
    let r = TestRouter::start_with(&[("r.yaml", &text)], |c| {
        c.timeouts.http_request = Duration::from_secs(1);
        c.max_connections_per_source = 20;
    })
    .await;
    let started = std::time::Instant::now();
    // Twenty slow clients from 127.0.0.1, a header byte every 200 ms.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = connect_from("127.0.0.1", r.http).await;
        s.write_all(b"GET / HTTP/1.1\r\nHost: slow.example.com\r\nX-A: ")
            .await
            .unwrap();
        slow.push(tokio::spawn(async move {
            let mut buf = [0u8; 256];
            loop {
                if s.write_all(b"a").await.is_err() {
                    return std::time::Instant::now();
                }
                tokio::select! {
                    r = s.read(&mut buf) => {
                        if matches!(r, Ok(0) | Err(_)) {
                            return std::time::Instant::now();
                        }
                    }
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A 21st from the same address: closed at once, nothing served.
    let extra = connect_from("127.0.0.1", r.http).await;
    let resp = exchange(extra, get_close("slow.example.com").as_bytes()).await;
    assert_eq!(resp, "", "over the per-source cap");
    // Another address is served while the slow ones hang on.
    let s = connect_from("127.0.0.2", r.http).await;
    let resp = exchange(s, get_close("slow.example.com").as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    // Every slow client is cut off at the header timeout (1 s), well before
    // it would have finished.
    for t in slow {
        let ended = t.await.unwrap().duration_since(started);
        assert!(
            ended >= Duration::from_millis(900) && ended < Duration::from_secs(4),
            "slow client ended after {ended:?}"
        );
    }
    // Their slots are free again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = connect_from("127.0.0.1", r.http).await;
    let resp = exchange(s, get_close("slow.example.com").as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let m = get(r.admin, "admin", "/metrics", &[]).await.body;
    assert!(
        m.contains("gatehouse_connections_refused_total{reason=\"per_source\"} 1"),
        "{m}"
    );
    r.stop().await;
}

/// HAProxy's three client deadlines: `http-request` from a request's first
/// byte (and from the connection's start), `http-keep-alive` between
/// requests (longer: idle keep-alive connections are not cut at the header
/// timeout), `client` for silences mid-body (408).
#[tokio::test]
async fn header_keep_alive_and_body_deadlines_are_separate() {
    let up = Upstream::start("app").await;
    let text = format!(
        "{}{}",
        service("default", "s", &[up.port()]),
        simple_route("default", "web", "t.example.com", "", "s")
    );
    let r = TestRouter::start_with(&[("r.yaml", &text)], |c| {
        c.timeouts.http_request = Duration::from_secs(1);
        c.timeouts.http_keep_alive = Duration::from_secs(3);
        c.timeouts.client = Duration::from_secs(1);
    })
    .await;
    let get = b"GET / HTTP/1.1\r\nHost: t.example.com\r\n\r\n";
    // Idle between requests longer than the header timeout: still open.
    let mut s = TcpStream::connect(r.http).await.unwrap();
    s.write_all(get).await.unwrap();
    assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(1800)).await;
    s.write_all(get).await.unwrap();
    let resp = read_response(&mut s).await;
    assert!(
        resp.starts_with("HTTP/1.1 200"),
        "closed while idle below the keep-alive timeout: {resp:?}"
    );
    // Then idle past the keep-alive timeout: closed at ~3 s.
    let idle_from = std::time::Instant::now();
    let closed = closed_within(&mut s, Duration::from_secs(6))
        .await
        .expect("idle connection closed");
    let idle = closed - idle_from;
    assert!(
        idle >= Duration::from_millis(2700) && idle < Duration::from_secs(5),
        "closed after {idle:?} idle"
    );
    // A busy spell longer than the header timeout (a request every 100 ms
    // for 1.5 s), then idle: the keep-alive timeout runs from the last
    // answer. (Between requests the timer is not reset when it is already
    // armed earlier; it fires early and is re-armed.)
    let mut s = TcpStream::connect(r.http).await.unwrap();
    let mut last = std::time::Instant::now();
    for _ in 0..15 {
        s.write_all(get).await.unwrap();
        let resp = read_response(&mut s).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "busy spell: {resp:?}");
        last = std::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let closed = closed_within(&mut s, Duration::from_secs(6))
        .await
        .expect("idle connection closed after its busy spell");
    let idle = closed - last;
    assert!(
        idle >= Duration::from_millis(2700) && idle < Duration::from_secs(5),
        "closed {idle:?} after the last answer"
    );
    // A head started after an idle spell gets the header timeout from its
    // first byte, not what is left of the keep-alive one.
    let mut s = TcpStream::connect(r.http).await.unwrap();
    s.write_all(get).await.unwrap();
    assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: t.exa").await.unwrap();
    let first_byte = std::time::Instant::now();
    let closed = closed_within(&mut s, Duration::from_secs(5))
        .await
        .expect("slow head cut");
    let took = closed - first_byte;
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2000),
        "partial head cut after {took:?}"
    );
    // A connection that never sends anything: the header timeout.
    let mut s = TcpStream::connect(r.http).await.unwrap();
    let start = std::time::Instant::now();
    let closed = closed_within(&mut s, Duration::from_secs(5))
        .await
        .expect("silent connection cut");
    assert!(
        closed - start < Duration::from_millis(2000),
        "{:?}",
        closed - start
    );
    // A body that stalls: 408 at the client timeout, and the connection
    // closes.
    let mut s = TcpStream::connect(r.http).await.unwrap();
    s.write_all(b"POST /sink HTTP/1.1\r\nHost: t.example.com\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .unwrap();
    let start = std::time::Instant::now();
    let resp = read_response(&mut s).await;
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp:?}");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(closed_within(&mut s, Duration::from_secs(2))
        .await
        .is_some());
    // A body that keeps coming, a little at a time, each gap under the
    // client timeout, is not cut.
    let mut s = TcpStream::connect(r.http).await.unwrap();
    s.write_all(b"POST /sink HTTP/1.1\r\nHost: t.example.com\r\nContent-Length: 4\r\n\r\n")
        .await
        .unwrap();
    for b in [b"a", b"b", b"c", b"d"] {
        tokio::time::sleep(Duration::from_millis(600)).await;
        s.write_all(b).await.unwrap();
    }
    let resp = read_response(&mut s).await;
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.ends_with("4"),
        "{resp:?}"
    );
    r.stop().await;
}

/// A client that stops reading a large response (slow read) is cut after
/// the client timeout of stalled writes, not held open for as long as it
/// likes with an upstream connection behind it.
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_at_the_client_timeout() {
    let up = Upstream::start("app").await;
    let text = format!(
        "{}{}",
        service("default", "s", &[up.port()]),
        simple_route("default", "web", "sr.example.com", "", "s")
    );
    let r = TestRouter::start_with(&[("r.yaml", &text)], |c| {
        c.timeouts.client = Duration::from_secs(1);
    })
    .await;
    let s = TcpSocket::new_v4().unwrap();
    // A small receive window, so the router's writes stall quickly.
    s.set_recv_buffer_size(4096).unwrap();
    let mut s = s.connect(r.http).await.unwrap();
    s.write_all(b"GET /bytes/50000000 HTTP/1.1\r\nHost: sr.example.com\r\n\r\n")
        .await
        .unwrap();
    // Read nothing for 3 s: the router's writes stall, and at 1 s of
    // stall it gives up on the connection.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got += n,
            Err(_) => break false,
        }
    };
    assert!(closed, "connection still open after {got} bytes");
    assert!(got < 50_000_000, "the whole body arrived: {got}");
    r.stop().await;
}

/// A manifests file turned to garbage keeps its last good routes (someone
/// is mid-edit, a volume hiccup); a burst of 10k route changes is
/// absorbed while the existing route keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_files_and_route_bursts_do_not_take_routes_down() {
    let up = Upstream::start("app").await;
    let base = format!(
        "{}{}",
        service("default", "s", &[up.port()]),
        simple_route("default", "web", "g.example.com", "", "s")
    );
    let r = TestRouter::start(&[("app.yaml", &base)]).await;
    assert_eq!(
        get(r.http, "g.example.com", "/", &[]).await.status,
        StatusCode::OK
    );

    // Garbage in place of the file, and a junk file next to it.
    std::fs::write(r.path("app.yaml"), b"\x00\x9f{{{ not: [yaml\n\xff").unwrap();
    std::fs::write(r.path("junk.yaml"), b"::::\n- - - {").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        get(r.http, "g.example.com", "/", &[]).await.status,
        StatusCode::OK,
        "the last good objects of a garbled file stay"
    );

    // 10k routes written ten times in a row while a client keeps asking.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let probe = {
        let (stop, failures, addr) = (stop.clone(), failures.clone(), r.http);
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if get(addr, "g.example.com", "/", &[]).await.status != StatusCode::OK {
                    failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                n += 1;
            }
            n
        })
    };
    let gen = r.generation();
    for round in 0..10 {
        let mut burst = service("burst", "s", &[up.port()]);
        for i in 0..10_000 {
            burst.push_str(&simple_route(
                "burst",
                &format!("r{i}"),
                &format!("b{i}-{round}.example.com"),
                "",
                "s",
            ));
        }
        std::fs::write(r.path("burst.yaml"), &burst).unwrap();
    }
    // The last burst is what ends up served.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while r.generation() <= gen && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    loop {
        let reply = get(r.http, "b9999-9.example.com", "/", &[]).await;
        if reply.status != StatusCode::SERVICE_UNAVAILABLE || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let probes = probe.await.unwrap();
    assert_eq!(
        failures.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "{probes} probes during the bursts"
    );
    let reply = get(r.http, "b9999-9.example.com", "/", &[]).await;
    assert_ne!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.body
    );
    r.stop().await;
}

/// Client address end to end through passthrough: a balancer's PROXY v1
/// header in, a PROXY v2 header out to the backend that terminates TLS.
#[tokio::test]
async fn passthrough_backends_get_the_client_address_in_proxy_v2() {
    use gatehouse::proxy::proxy_protocol::{parse, Header};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        let header = loop {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed before a PROXY header");
            buf.extend_from_slice(&chunk[..n]);
            if let Some((h, used)) = parse(&buf).unwrap() {
                // A TLS handshake record follows.
                break (h, buf.get(used).copied());
            }
        };
        let _ = tx.send(header);
    });
    let text = format!(
        "{}{}",
        service("default", "pt", &[backend.port()]),
        crate::tls::tls_route("pt", "pt.example.com", "pt", "passthrough", &[], "")
    );
    let r = https_router(&[("r.yaml", &text)], |c| {
        c.accept_proxy = true;
        c.proxy_trusted_sources = vec!["127.0.0.2/32".into()];
        c.proxy_protocol_to_passthrough = true;
    })
    .await;
    let https = r.https.unwrap();
    let mut s = connect_from("127.0.0.2", https).await;
    s.write_all(b"PROXY TCP4 203.0.113.5 10.0.0.1 41000 443\r\n")
        .await
        .unwrap();
    let ca = Ca::new("unused");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(ca.roots(), &[])));
    // The backend closes after reading: the handshake fails, which is fine.
    let _ = tokio::time::timeout(
        Duration::from_secs(3),
        connector.connect(
            rustls::pki_types::ServerName::try_from("pt.example.com").unwrap(),
            s,
        ),
    )
    .await;
    let (header, next) = tokio::time::timeout(Duration::from_secs(3), rx)
        .await
        .unwrap()
        .unwrap();
    match header {
        Header::Proxied {
            source,
            destination,
        } => {
            assert_eq!(source, "203.0.113.5:41000".parse().unwrap());
            assert_eq!(destination, https);
        }
        Header::Local => panic!("expected the client's address"),
    }
    assert_eq!(next, Some(0x16), "the ClientHello follows the header");
    r.stop().await;
}

/// `proxy_protocol_to_upstreams`: every upstream connection begins with a
/// PROXY v2 header naming the real client (here from a balancer's v1
/// header), and a connection so marked carries that client connection's
/// requests only.
#[tokio::test]
async fn http_upstreams_get_the_client_address_in_proxy_v2() {
    use gatehouse::proxy::proxy_protocol::{parse, Header};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let client = loop {
                    match s.read(&mut chunk).await {
                        Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                        _ => return,
                    }
                    match parse(&buf) {
                        Ok(Some((Header::Proxied { source, .. }, used))) => {
                            buf.drain(..used);
                            break source.to_string();
                        }
                        Ok(None) => continue,
                        _ => return,
                    }
                };
                // Then plain HTTP/1.1; each answer names the PROXY client.
                loop {
                    while let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..i + 4);
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{client}",
                            client.len()
                        );
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                        _ => return,
                    }
                }
            });
        }
    });
    let text = format!(
        "{}{}",
        service("default", "s", &[up.port()]),
        simple_route("default", "web", "pp.example.com", "", "s")
    );
    let r = TestRouter::start_with(&[("r.yaml", &text)], |c| {
        c.accept_proxy = true;
        c.proxy_trusted_sources = vec!["127.0.0.2/32".into()];
        c.proxy_protocol_to_upstreams = true;
    })
    .await;
    let get = b"GET / HTTP/1.1\r\nHost: pp.example.com\r\n\r\n";
    // Two requests on one client connection behind the balancer.
    let mut a = connect_from("127.0.0.2", r.http).await;
    a.write_all(b"PROXY TCP4 203.0.113.5 10.0.0.1 41000 80\r\n")
        .await
        .unwrap();
    for _ in 0..2 {
        a.write_all(get).await.unwrap();
        let resp = read_response(&mut a).await;
        assert!(resp.ends_with("\r\n\r\n203.0.113.5:41000"), "{resp:?}");
    }
    // Another client: its own upstream connection, its own address.
    let mut b = connect_from("127.0.0.2", r.http).await;
    b.write_all(b"PROXY TCP4 198.51.100.9 10.0.0.1 52000 80\r\n")
        .await
        .unwrap();
    b.write_all(get).await.unwrap();
    let resp = read_response(&mut b).await;
    assert!(resp.ends_with("\r\n\r\n198.51.100.9:52000"), "{resp:?}");
    // A direct client (not behind the balancer): its own address.
    let mut c = connect_from("127.0.0.1", r.http).await;
    c.write_all(get).await.unwrap();
    let resp = read_response(&mut c).await;
    assert!(resp.contains("\r\n\r\n127.0.0.1:"), "{resp:?}");
    // One upstream connection per client connection: 3, not 1 or 4.
    assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 3);
    r.stop().await;
}

/// The upstream gets exactly one Host in every request form: the client's
/// field, the URI's authority (absolute form), and the field again when the
/// Connection header lists it (the hop-by-hop removal must not leave the
/// request without one).
#[tokio::test]
async fn the_upstream_gets_one_host_in_every_request_form() {
    let up = Upstream::start("host").await;
    let text = format!(
        "{}{}",
        service("default", "s", &[up.port()]),
        simple_route("default", "web", "h.example.com", "", "s")
    );
    let r = TestRouter::start(&[("r.yaml", &text)]).await;
    for (what, req) in [
        (
            "field",
            "GET / HTTP/1.1\r\nHost: h.example.com\r\nConnection: close\r\n\r\n",
        ),
        (
            "listed in Connection",
            "GET / HTTP/1.1\r\nHost: h.example.com\r\nConnection: close, Host\r\n\r\n",
        ),
        (
            "absolute form",
            "GET http://h.example.com/ HTTP/1.1\r\nHost: h.example.com\r\nConnection: close\r\n\r\n",
        ),
    ] {
        let resp = exchange(TcpStream::connect(r.http).await.unwrap(), req.as_bytes()).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{what}: {resp}");
        let hosts: Vec<&str> = resp.lines().filter(|l| l.starts_with("host: ")).collect();
        assert_eq!(hosts, ["host: h.example.com"], "{what}: {resp}");
    }
    r.stop().await;
}
