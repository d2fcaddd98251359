//! Hot swaps under load: the table changes hundreds of times while a client
//! keeps sending, and not one request fails.

use crate::support::*;
use gatehouse::config::{AccessLogMode, RouterConfig};
use gatehouse::model::parse::parse_text;
use gatehouse::model::Objects;
use http::StatusCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn objects(text: &str) -> Objects {
    let (objs, errs) = parse_text(text, false);
    assert!(errs.is_empty(), "{errs:?}");
    let mut o = Objects::default();
    for x in objs {
        o.insert(x);
    }
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_failed_requests_across_hundreds_of_swaps() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let base = format!(
        "{}{}{}",
        service("default", "a", &[a.port()]),
        service("default", "b", &[b.port()]),
        simple_route("default", "live", "live.example.com", "", "a"),
    );
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(objects(&base)));
    let cfg = RouterConfig {
        http: Some("127.0.0.1:0".parse().unwrap()),
        admin: None,
        access_log: AccessLogMode::Off,
        ..RouterConfig::default()
    };
    let running = gatehouse::app::start_with_source(cfg, rx).await.unwrap();
    let http = running.http.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, ok) = (stop.clone(), ok.clone());
        clients.push(tokio::spawn(async move {
            let c = client();
            while !stop.load(Ordering::Relaxed) {
                let req = http::Request::get(format!("http://{http}/x"))
                    .header("host", "live.example.com")
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap();
                let reply = send(&c, req).await;
                assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
                ok.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // Alternate: filler routes come and go (full compiles: the service
    // change before each is undone), the live route flips between services
    // (compiles scoped to the changed routes' hosts), and endpoints move
    // (endpoint-only updates).
    let start_gen = running.store.load().generation;
    let scoped = || gatehouse::telemetry::metrics::TABLE.compiles[2].load(Ordering::Relaxed);
    let scoped_before = scoped();
    let mut gen_rx = running.store.subscribe();
    for i in 0..240u32 {
        let mut text = base.clone();
        match i % 3 {
            0 => text.push_str(&simple_route(
                "default",
                &format!("filler{i}"),
                &format!("f{i}.example.com"),
                "",
                "a",
            )),
            1 => {
                text = text.replace(
                    "live.example.com\n  to: {kind: Service, name: a}",
                    "live.example.com\n  to: {kind: Service, name: b}",
                )
            }
            _ => text.push_str(&service("default", "a", &[a.port(), b.port()])),
        }
        let before = running.store.load().generation;
        tx.send(Arc::new(objects(&text))).unwrap();
        // Wait for this change to be live before making the next one.
        tokio::time::timeout(Duration::from_secs(5), gen_rx.wait_for(|g| *g > before))
            .await
            .expect("table published")
            .unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("no client saw a failure");
    }
    let swaps = running.store.load().generation - start_gen;
    assert!(swaps >= 200, "only {swaps} swaps");
    // Each flip (also dropping the last filler; 80 of them) is a
    // routes-only change: it rebuilds only those routes' hosts. Metrics
    // are process-wide, so at least that many.
    let scoped = scoped() - scoped_before;
    assert!(scoped >= 80, "only {scoped} scoped compiles");
    assert!(
        ok.load(Ordering::Relaxed) > 200,
        "clients sent too little: {}",
        ok.load(Ordering::Relaxed)
    );
    running.shutdown().await;
}
