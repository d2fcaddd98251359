//! The admin listener: bearer-token auth for everything except health.

use crate::support::*;
use http::StatusCode;

#[tokio::test]
async fn admin_api_needs_the_bearer_token_health_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let text = simple_route("default", "r", "r.example.com", "", "missing");
    let r = TestRouter::start_with(&[("r.yaml", &text)], |c| {
        c.admin_token_file = Some(token_file.clone())
    })
    .await;
    for path in ["/healthz", "/readyz", "/"] {
        assert_eq!(
            get(r.admin, "admin", path, &[]).await.status,
            StatusCode::OK,
            "{path}"
        );
    }
    for path in ["/api/routes", "/api/backends", "/metrics"] {
        let no = get(r.admin, "admin", path, &[]).await;
        assert_eq!(no.status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(no.headers.contains_key("www-authenticate"));
        let wrong = get(
            r.admin,
            "admin",
            path,
            &[("authorization", "Bearer s3cret-tokeN")],
        )
        .await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{path}");
        let ok = get(
            r.admin,
            "admin",
            path,
            &[("authorization", "Bearer s3cret-token")],
        )
        .await;
        assert_eq!(ok.status, StatusCode::OK, "{path}");
        assert!(
            !ok.body.contains("s3cret"),
            "the token never appears in output"
        );
    }
    r.stop().await;
}

#[tokio::test]
async fn metrics_count_requests_per_route_and_class() {
    let up = Upstream::start("m").await;
    let text = format!(
        "{}{}",
        service("default", "s", &[up.port()]),
        simple_route("default", "counted", "m.example.com", "", "s")
    );
    let r = TestRouter::start(&[("m.yaml", &text)]).await;
    for _ in 0..3 {
        assert_eq!(r.get("m.example.com", "/").await.status, StatusCode::OK);
    }
    let _ = r.get("nobody.example.com", "/").await;
    let m = get(r.admin, "admin", "/metrics", &[]).await.body;
    assert!(
        m.contains("gatehouse_route_requests_total{namespace=\"default\",route=\"counted\",code=\"2xx\"} 3"),
        "{m}"
    );
    let unrouted: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("gatehouse_unrouted_requests_total "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(unrouted >= 1);
    // A table swap does not reset the counters.
    r.write(
        "extra.yaml",
        &simple_route("default", "other", "o.example.com", "", "s"),
    )
    .await;
    let m = get(r.admin, "admin", "/metrics", &[]).await.body;
    assert!(m.contains("route=\"counted\",code=\"2xx\"} 3"), "{m}");
    r.stop().await;
}
