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
