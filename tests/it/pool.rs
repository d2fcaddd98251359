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
