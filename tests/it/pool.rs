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
