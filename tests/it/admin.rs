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

/// Private keys and the admin token never leave the process: not in the
/// admin API, the metrics, the dashboard, the access log or the logs — also
/// when a key is bad and the route is rejected (the message names the route,
/// not the material).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_any_output_or_log() {
    use crate::tls::Ca;
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let up = Upstream::start("app").await;
    let ca = Ca::new("secrets test CA");
    let good = ca.leaf(&["good.example.com"]);
    let other = ca.leaf(&["bad.example.com"]);
    let block = |pem: &str| {
        let mut s = String::from("|\n");
        for l in pem.lines() {
            s.push_str("      ");
            s.push_str(l);
            s.push('\n');
        }
        s
    };
    let tls_route = |name: &str, host: &str, cert: &str, key: &str| {
        format!(
            "---\napiVersion: route.openshift.io/v1\nkind: Route\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  host: {host}\n  to: {{kind: Service, name: web}}\n  port: {{targetPort: http}}\n  tls:\n    termination: edge\n    certificate: {}\n    key: {}\n",
            block(cert),
            block(key)
        )
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("apps.yaml"),
        [
            service("shop", "web", &[up.port()]),
            tls_route("good", "good.example.com", &good.cert, &good.key),
            // A key that does not match its certificate: rejected.
            tls_route("bad", "bad.example.com", &other.cert, &good.key),
        ]
        .concat(),
    )
    .unwrap();
    let token = "tok-3f9a1c0e5b7d2468";
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).unwrap();

    let mut child = Command::new(bin())
        .args(["--log-format", "json", "run", "--manifests"])
        .arg(dir.path())
        .args([
            "--http",
            "127.0.0.1:0",
            "--https",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ])
        .args(["--access-log", "json", "--admin-token-file"])
        .arg(&token_file)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    for pipe in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let mut lines = Vec::new();
    let (http, admin) = loop {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("listening");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        lines.push(line);
        if v["message"] == "gatehouse listening" {
            break (
                v["http"]
                    .as_str()
                    .unwrap()
                    .parse::<std::net::SocketAddr>()
                    .unwrap(),
                v["admin"]
                    .as_str()
                    .unwrap()
                    .parse::<std::net::SocketAddr>()
                    .unwrap(),
            );
        }
    };
    let auth = format!("Bearer {token}");
    let mut outputs = Vec::new();
    for path in [
        "/api/routes",
        "/api/backends",
        "/metrics",
        "/",
        "/healthz",
        "/readyz",
    ] {
        let r = get(admin, "admin", path, &[("authorization", &auth)]).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        outputs.push((path.to_string(), r.body));
    }
    let routes = &outputs[0].1;
    assert!(
        routes.contains("ExtendedValidationFailed"),
        "the bad route is rejected: {routes}"
    );
    get(http, "good.example.com", "/", &[]).await;
    get(http, "bad.example.com", "/", &[]).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let _ = child.kill();
    let _ = child.wait();
    while let Ok(l) = rx.try_recv() {
        lines.push(l);
    }
    outputs.push(("logs".into(), lines.join("\n")));
    assert!(
        outputs.last().unwrap().1.contains("bad"),
        "the rejection is logged"
    );
    // A line from the middle of the key's base64 body.
    let key_line = good.key.lines().nth(2).unwrap().to_owned();
    for (what, text) in &outputs {
        for secret in ["PRIVATE KEY", key_line.as_str(), token] {
            assert!(!text.contains(secret), "{what} shows {secret:?}");
        }
    }
}

/// Parse a Prometheus text exposition strictly: every sample line is
/// `name{labels} value` with a float value, and every sample's family has a
/// `# TYPE` line before it. Returns `name{labels}` → value.
pub fn parse_exposition(text: &str) -> std::collections::HashMap<String, f64> {
    let mut typed: Vec<String> = Vec::new();
    let mut out = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.push(rest.split(' ').next().unwrap().to_owned());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let name = series.split('{').next().unwrap();
        assert!(
            typed.iter().any(|t| name == t
                || name.strip_suffix("_bucket") == Some(t)
                || name.strip_suffix("_sum") == Some(t)
                || name.strip_suffix("_count") == Some(t)),
            "{name} has no TYPE line"
        );
        assert!(
            out.insert(series.to_owned(), value).is_none(),
            "duplicate series {series}"
        );
    }
    out
}

/// Known traffic, exact counters: requests by class, bytes each way,
/// latency and connect histograms, upstream errors, retries, endpoint
/// totals, listener and table metrics, rejected routes by reason.
#[tokio::test]
async fn metrics_after_known_traffic_are_exact() {
    let up = Upstream::start("m").await;
    let dead = dead_port().await;
    let text = format!(
        "{}{}{}{}{}",
        service("default", "s", &[up.port()]),
        service("default", "gone", &[dead]),
        simple_route("default", "counted", "m.example.com", "", "s"),
        simple_route("default", "broken", "b.example.com", "", "gone"),
        simple_route("other", "late", "m.example.com", "", "s"),
    );
    let r = TestRouter::start(&[("m.yaml", &text)]).await;
    for _ in 0..3 {
        let reply = get(r.http, "m.example.com", "/bytes/1000", &[]).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body.len(), 1000);
    }
    let post = http::Request::post(format!("http://{}/sink", r.http))
        .header("host", "m.example.com")
        .body(http_body_util::Full::new(bytes::Bytes::from(vec![
            b'y';
            5000
        ])))
        .unwrap();
    let reply = send(&client(), post).await;
    assert_eq!(reply.body, "5000");
    assert_eq!(
        get(r.http, "b.example.com", "/", &[]).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // The last response body is counted when it ends: give the server a
    // moment to finish the exchange.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    let m = parse_exposition(&get(r.admin, "admin", "/metrics", &[]).await.body);
    let v = |k: &str| *m.get(k).unwrap_or_else(|| panic!("{k} missing"));
    let route = "namespace=\"default\",route=\"counted\"";
    assert_eq!(
        v(&format!(
            "gatehouse_route_requests_total{{{route},code=\"2xx\"}}"
        )),
        4.0
    );
    assert_eq!(
        v(&format!(
            "gatehouse_route_requests_total{{{route},code=\"5xx\"}}"
        )),
        0.0
    );
    assert_eq!(
        v(&format!("gatehouse_route_bytes_in_total{{{route}}}")),
        5000.0
    );
    assert_eq!(
        v(&format!("gatehouse_route_bytes_out_total{{{route}}}")),
        3000.0 + 4.0
    );
    assert_eq!(
        v(&format!("gatehouse_route_active_requests{{{route}}}")),
        0.0
    );
    assert_eq!(
        v(&format!(
            "gatehouse_route_request_duration_seconds_count{{{route}}}"
        )),
        4.0
    );
    assert_eq!(
        v(&format!(
            "gatehouse_route_request_duration_seconds_bucket{{{route},le=\"+Inf\"}}"
        )),
        4.0
    );
    let connects = v(&format!(
        "gatehouse_route_upstream_connect_seconds_count{{{route}}}"
    ));
    assert!((1.0..=4.0).contains(&connects), "{connects}");
    assert_eq!(
        v(&format!(
            "gatehouse_route_upstream_errors_total{{{route},kind=\"connect\"}}"
        )),
        0.0
    );
    let endpoint = format!(
        "namespace=\"default\",service=\"s\",endpoint=\"127.0.0.1:{}\"",
        up.port()
    );
    assert_eq!(
        v(&format!(
            "gatehouse_endpoint_requests_total{{{endpoint},code=\"2xx\"}}"
        )),
        4.0
    );
    assert_eq!(
        v(&format!("gatehouse_endpoint_bytes_out_total{{{endpoint}}}")),
        3004.0
    );
    assert_eq!(v(&format!("gatehouse_endpoint_up{{{endpoint}}}")), 1.0);

    let broken = "namespace=\"default\",route=\"broken\"";
    assert_eq!(
        v(&format!(
            "gatehouse_route_requests_total{{{broken},code=\"5xx\"}}"
        )),
        1.0
    );
    assert_eq!(
        v(&format!(
            "gatehouse_route_upstream_errors_total{{{broken},kind=\"connect\"}}"
        )),
        1.0
    );
    assert_eq!(
        v(&format!("gatehouse_route_retries_total{{{broken}}}")),
        0.0
    );
    let gone = format!("namespace=\"default\",service=\"gone\",endpoint=\"127.0.0.1:{dead}\"");
    assert_eq!(
        v(&format!("gatehouse_endpoint_failures_total{{{gone}}}")),
        1.0
    );

    assert_eq!(v("gatehouse_routes{state=\"admitted\"}"), 2.0);
    assert_eq!(v("gatehouse_routes{state=\"rejected\"}"), 1.0);
    assert_eq!(
        v("gatehouse_routes_rejected{reason=\"HostAlreadyClaimed\"}"),
        1.0
    );
    assert!(v("gatehouse_listener_connections_total{listener=\"http\"}") >= 5.0);
    assert!(v("gatehouse_table_compiles_total{kind=\"full\"}") >= 1.0);
    assert!(v("gatehouse_table_compile_duration_seconds_count") >= 1.0);
    assert!(v("gatehouse_table_last_swap_timestamp_seconds") > 1.7e9);
    assert!(v("gatehouse_table_generation") >= 1.0);
    assert_eq!(v("gatehouse_source_synced"), 1.0);
    assert_eq!(v("gatehouse_ready"), 1.0);
    assert_eq!(
        v("gatehouse_tls_handshake_failures_total{reason=\"not_tls\"}"),
        0.0
    );
    r.stop().await;
}
