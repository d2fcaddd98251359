//! HTTP/2 from clients, h2c to upstreams with trailers, WebSocket upgrades.

use crate::support::*;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn h2c_prior_knowledge_clients_reach_http1_upstreams() {
    let up = Upstream::start("h1").await;
    let text = format!(
        "{}{}",
        service("default", "s", &[up.port()]),
        simple_route("default", "r", "h2.example.com", "", "s")
    );
    let r = TestRouter::start(&[("r.yaml", &text)]).await;
    let mut h2 = h2_connect(r.http).await;
    // Many concurrent streams on one connection, :authority names the route.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let req = http::Request::get(format!("http://h2.example.com/s/{i}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        tasks.push(h2.send_request(req));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let resp = t.await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = String::from_utf8(
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap();
        assert!(body.contains(&format!("uri=/s/{i}\n")), "{body}");
        assert!(body.contains("host: h2.example.com"), "{body}");
    }
    let req = http::Request::get("http://h2.example.com/s/1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    let body = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(body.contains("version=HTTP/1.1"), "{body}");
    r.stop().await;
}

#[tokio::test]
async fn curl_speaks_h2c_through_the_router() {
    let up = Upstream::start("curl").await;
    let text = format!(
        "{}{}",
        service("default", "s", &[up.port()]),
        simple_route("default", "r", "c.example.com", "", "s")
    );
    let r = TestRouter::start(&[("r.yaml", &text)]).await;
    let url = format!("http://{}/hello", r.http);
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--http2-prior-knowledge",
            "-H",
            "Host: c.example.com",
            "-w",
            "\n%{http_version} %{http_code}",
            &url,
        ])
        .output()
        .await
        .expect("curl is installed (.ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("2 200"), "{text}");
    assert!(text.contains("name=curl"), "{text}");
    r.stop().await;
}

/// An HTTP/2 connection idle for a second (`PARK_AFTER`) frees its read,
/// write and HPACK buffers (the patch in vendor/h2), and its HPACK tables
/// keep copies, not slices of those buffers. One client connection goes
/// idle four times; after each pause it must still serve: a 3 kB header
/// with fields the client indexed on the first request and now sends by
/// index, a 40 kB answer written through the reallocated write buffer, and
/// a 100 kB upload read through the reallocated read buffer. (curl 7.88's
/// h2c prior knowledge cannot reuse a connection: its second transfer
/// fails with "Error in the HTTP2 framing layer", against nginx too.)
#[tokio::test]
async fn an_idle_h2_connection_answers_again_after_freeing_its_buffers() {
    let up = Upstream::start("idle").await;
    let text = format!(
        "{}{}",
        service("default", "s", &[up.port()]),
        simple_route("default", "r", "idle.example.com", "", "s")
    );
    let r = TestRouter::start(&[("r.yaml", &text)]).await;
    let mut h2 = h2_connect(r.http).await;
    let big = "v".repeat(3000);
    let pause = || tokio::time::sleep(Duration::from_millis(1300));
    // A connection stuck without a write buffer would hang, not fail.
    async fn answered<F: std::future::Future<Output = hyper::Result<R>>, R>(f: F) -> R {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .expect("answered within 10 s")
            .unwrap()
    }
    for uri in ["/a", "/b"] {
        pause().await;
        let req = http::Request::get(format!("http://idle.example.com{uri}"))
            .header("x-big", big.as_str())
            .header("x-indexed", "same-every-time")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = answered(h2.send_request(req)).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains(&format!("uri={uri}\n")), "{body}");
        assert!(body.contains("host: idle.example.com\n"), "{body}");
        assert!(body.contains(&format!("x-big: {big}\n")), "{body}");
        assert!(body.contains("x-indexed: same-every-time\n"), "{body}");
    }
    pause().await;
    let req = http::Request::get("http://idle.example.com/bytes/40000")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = answered(h2.send_request(req)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 40000);
    assert!(body.iter().all(|&b| b == b'x'));
    pause().await;
    let req = http::Request::post("http://idle.example.com/sink")
        .body(Full::new(Bytes::from(vec![b'u'; 100_000])))
        .unwrap();
    let resp = answered(h2.send_request(req)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"100000");
    r.stop().await;
}

#[tokio::test]
async fn grpc_over_h2c_keeps_trailers_end_to_end() {
    let up = Upstream::start_h2c("grpc").await;
    let svc = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: g}}\nspec:\n  ports: [{{name: grpc, port: 50051, appProtocol: kubernetes.io/h2c}}]\n---\napiVersion: v1\nkind: Endpoints\nmetadata: {{name: g}}\nsubsets: [{{addresses: [{{ip: 127.0.0.1}}], ports: [{{name: grpc, port: {}}}]}}]\n",
        up.port()
    );
    let rt = "---\napiVersion: route.openshift.io/v1\nkind: Route\nmetadata: {name: g}\nspec: {host: grpc.example.com, to: {name: g}, port: {targetPort: grpc}}\n";
    let r = TestRouter::start(&[("g.yaml", &format!("{svc}{rt}"))]).await;
    let mut h2 = h2_connect(r.http).await;
    let req = http::Request::post("http://grpc.example.com/grpc")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers arrive");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x02hi");
    r.stop().await;
}

#[tokio::test]
async fn websocket_echo_through_the_router() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let text = format!(
        "{}{}",
        service("default", "ws", &[port]),
        simple_route("default", "ws", "ws.example.com", "", "ws")
    );
    // Short client deadlines: an upgraded connection is a tunnel, bound by
    // the tunnel timeout only, not by the header or keep-alive timeouts.
    let r = TestRouter::start_with(&[("ws.yaml", &text)], |c| {
        c.timeouts.http_request = Duration::from_millis(500);
        c.timeouts.http_keep_alive = Duration::from_millis(800);
    })
    .await;
    let tcp = tokio::net::TcpStream::connect(r.http).await.unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("ws://ws.example.com/chat", tcp)
        .await
        .expect("upgrade through the router");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws.send(Message::text("first")).await.unwrap();
    assert_eq!(
        ws.next()
            .await
            .unwrap()
            .unwrap()
            .into_text()
            .unwrap()
            .as_str(),
        "first"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for i in 0..5 {
        ws.send(Message::text(format!("ping {i}"))).await.unwrap();
        let m = ws.next().await.unwrap().unwrap();
        assert_eq!(m.into_text().unwrap().as_str(), format!("ping {i}"));
    }
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().into_data().as_ref(),
        &[0u8, 1, 2, 255]
    );
    ws.close(None).await.unwrap();
    r.stop().await;
}

/// An HTTP/2 prior-knowledge connection to `addr`.
async fn h2_connect(
    addr: std::net::SocketAddr,
) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}
