//! Upstream connection reuse: keep-alive connections are pooled, and an
//! upstream that closes idle connections costs no failed request.

use crate::support::*;
use http::StatusCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[tokio::test]
async fn sequential_requests_reuse_one_upstream_connection() {
    let up = Upstream::start("kept").await;
    let (front, accepted) = counting_front(up.addr).await;
    let text = format!(
        "{}{}",
        service("default", "s", &[front.port()]),
        simple_route("default", "r", "k.example.com", "", "s")
    );
    let r = TestRouter::start(&[("r.yaml", &text)]).await;
    for i in 0..50 {
        let reply = r.get("k.example.com", &format!("/n/{i}")).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    // Streamed bodies give their connection back too.
    for _ in 0..5 {
        let reply = r.get("k.example.com", "/bytes/300000").await;
        assert_eq!(reply.body.len(), 300_000);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one keep-alive connection for 55 sequential requests"
    );
    r.stop().await;
}

#[tokio::test]
async fn upstreams_that_close_idle_connections_cost_no_request() {
    // Closes 1 ms after answering: pooled connections are usually dead by
    // the next request, sometimes dying while it is sent.
    let (addr, accepted) = closing_upstream(Duration::from_millis(1)).await;
    let text = format!(
        "{}{}",
        service("default", "s", &[addr.port()]),
        simple_route("default", "r", "c.example.com", "", "s")
    );
    let r = TestRouter::start(&[("r.yaml", &text)]).await;
    for i in 0..60 {
        let reply = r.get("c.example.com", "/").await;
        assert_eq!(reply.status, StatusCode::OK, "request {i}: {}", reply.body);
        assert_eq!(reply.body, "ok");
        if i % 3 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert!(
        accepted.load(Ordering::SeqCst) >= 30,
        "the upstream really closed connections"
    );
    r.stop().await;
}

/// A TCP front to `target` counting the connections open through it now.
async fn open_counting_front(
    target: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let open = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = open.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let count = count.clone();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut up) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
                }
                count.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, open)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bursts_extra_connections_are_closed_gradually_after_it() {
    let up = Upstream::start("burst").await;
    let (front, open) = open_counting_front(up.addr).await;
    let text = format!(
        "{}{}",
        service("default", "s", &[front.port()]),
        simple_route("default", "r", "b.example.com", "", "s")
    );
    // HAProxy's pool-purge-delay, shortened; the idle timeout stays long,
    // so only the purge can close them.
    let r = TestRouter::start_with(&[("r.yaml", &text)], |c| {
        c.timeouts.upstream_pool_purge = Duration::from_millis(300);
        c.timeouts.upstream_idle = Duration::from_secs(600);
    })
    .await;
    let http = r.http;
    // 12 requests in flight at once: 12 upstream connections.
    let burst: Vec<_> = (0..12)
        .map(|_| tokio::spawn(async move { get(http, "b.example.com", "/delay/300", &[]).await }))
        .collect();
    for t in burst {
        assert_eq!(t.await.unwrap().status, StatusCode::OK);
    }
    let after_burst = open.load(Ordering::SeqCst);
    assert!(
        after_burst >= 10,
        "the burst opened its connections ({after_burst})"
    );
    // A trickle of sequential requests keeps one connection warm while the
    // rest are purged, half of the cold ones per period.
    let started = std::time::Instant::now();
    let mut seen = vec![after_burst];
    while started.elapsed() < Duration::from_secs(8) && open.load(Ordering::SeqCst) > 1 {
        assert_eq!(r.get("b.example.com", "/").await.status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = open.load(Ordering::SeqCst);
        if seen.last() != Some(&now) {
            seen.push(now);
        }
    }
    assert_eq!(
        open.load(Ordering::SeqCst),
        1,
        "only the warm connection is left (open counts over time: {seen:?})"
    );
    assert!(
        seen.len() >= 3,
        "closed in steps, not all at once: {seen:?}"
    );
    // Quiet now: the most recently used connection is never purged (a
    // route used every few seconds keeps it until upstream_idle).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(open.load(Ordering::SeqCst), 1, "the last one stays");
    r.stop().await;
}

/// A hand-written HTTP/1.1 upstream answering by path with the exact bytes
/// of `answer` (then closing when `close` says so), reading any request
/// body by its content-length. Counts accepted connections.
async fn scripted_upstream(
    answer: fn(&str, &str) -> (&'static [u8], bool),
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let mut words = head.split_whitespace();
                    let (method, path) = (
                        words.next().unwrap_or("").to_string(),
                        words.next().unwrap_or("").to_string(),
                    );
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap_or(0));
                    while buf.len() < end + len {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..end + len);
                    let (bytes, close) = answer(&method, &path);
                    if s.write_all(bytes).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn every_response_framing_arrives_whole_and_decides_reuse() {
    let (addr, accepted) = scripted_upstream(|method, path| match (method, path) {
        ("head", "/len") => (b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n", false),
        (_, "/len") => (b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc", false),
        (_, "/chunked") => (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nx-check: 7\r\n\r\n",
            false,
        ),
        (_, "/interim") => (
            b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            false,
        ),
        (_, "/nocontent") => (b"HTTP/1.1 204 No Content\r\n\r\n", false),
        (_, "/post") => (b"HTTP/1.1 201 Created\r\ncontent-length: 4\r\n\r\ndone", false),
        (_, "/http10") => (b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n10", true),
        (_, "/close") => (b"HTTP/1.1 200 OK\r\n\r\nuntil close", true),
        _ => (b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n", false),
    })
    .await;
    let text = format!(
        "{}{}",
        service("default", "s", &[addr.port()]),
        simple_route("default", "r", "f.example.com", "", "s")
    );
    let r = TestRouter::start(&[("r.yaml", &text)]).await;
    let c = client();
    let req = |method: &str, path: &str, body: &'static str| {
        http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", r.http))
            .header("host", "f.example.com")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                body.as_bytes(),
            )))
            .unwrap()
    };
    let expect = [
        ("GET", "/len", "", 200, "abc"),
        ("GET", "/chunked", "", 200, "hello world"),
        ("GET", "/interim", "", 200, "ok"),
        ("GET", "/nocontent", "", 204, ""),
        ("HEAD", "/len", "", 200, ""),
        // A body: hyper's client takes the idle connection over.
        ("POST", "/post", "payload", 201, "done"),
        ("GET", "/len", "", 200, "abc"),
        ("DELETE", "/len", "", 200, "abc"),
    ];
    for (method, path, body, status, want) in expect {
        let reply = send(&c, req(method, path, body)).await;
        assert_eq!(reply.status.as_u16(), status, "{method} {path}");
        assert_eq!(reply.body, want, "{method} {path}");
        if method == "HEAD" {
            assert_eq!(
                reply.headers["content-length"], "3",
                "HEAD keeps the length"
            );
        }
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "keep-alive answers of every framing leave the connection reusable"
    );
    // An HTTP/1.0 answer and one delimited by the close end their
    // connection: the next request opens a new one, and nothing is lost.
    for (path, want) in [
        ("/http10", "10"),
        ("/len", "abc"),
        ("/close", "until close"),
        ("/len", "abc"),
    ] {
        let reply = send(&c, req("GET", path, "")).await;
        assert_eq!(
            (reply.status.as_u16(), reply.body.as_str()),
            (200, want),
            "{path}"
        );
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    r.stop().await;
}

#[tokio::test]
async fn an_unsafe_request_never_meets_a_connection_the_upstream_closed_while_idle() {
    // Closes 1 ms after answering. A DELETE cannot be replayed, so it must
    // not be sent on a pooled connection that is already closed.
    let (addr, accepted) = closing_upstream(Duration::from_millis(1)).await;
    let text = format!(
        "{}{}",
        service("default", "s", &[addr.port()]),
        simple_route("default", "r", "d.example.com", "", "s")
    );
    let r = TestRouter::start(&[("r.yaml", &text)]).await;
    let c = client();
    for i in 0..30 {
        let req = http::Request::delete(format!("http://{}/item/{i}", r.http))
            .header("host", "d.example.com")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let reply = send(&c, req).await;
        assert_eq!(reply.status, StatusCode::OK, "DELETE {i}: {}", reply.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        accepted.load(Ordering::SeqCst) >= 25,
        "the upstream closed them"
    );
    r.stop().await;
}
