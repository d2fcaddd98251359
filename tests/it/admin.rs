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
