//! Test parts: real upstream servers on 127.0.0.1:0, a router started on a
//! manifests directory, manifest builders and an HTTP client.

#![allow(dead_code)]

use bytes::Bytes;
use gatehouse::app::{self, Running};
use gatehouse::config::{AccessLogMode, RouterConfig};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// An upstream HTTP server ("pod") that answers with its name and what it
/// saw. Paths: `/delay/<ms>`, `/bytes/<n>` (streams n bytes), `/sink`
/// (counts the request body), anything else echoes.
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: &'static str,
}

impl Upstream {
    pub async fn start(name: &'static str) -> Upstream {
        Self::start_with(name, false).await
    }

    /// The same, speaking HTTP/2 cleartext only (a gRPC-like server that
    /// sends trailers).
    pub async fn start_h2c(name: &'static str) -> Upstream {
        Self::start_with(name, true).await
    }

    /// The echo server on all addresses (reachable at the node's own
    /// address, as a pod would be: the API server refuses loopback
    /// endpoints).
    pub async fn start_public(name: &'static str) -> Upstream {
        Self::start_on(name, false, "0.0.0.0:0").await
    }

    async fn start_with(name: &'static str, h2_only: bool) -> Upstream {
        Self::start_on(name, h2_only, "127.0.0.1:0").await
    }

    async fn start_on(name: &'static str, h2_only: bool, bind: &str) -> Upstream {
        let l = TcpListener::bind(bind).await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(name, req));
                    let b = auto::Builder::new(TokioExecutor::new());
                    let b = if h2_only { b.http2_only() } else { b };
                    let _ = b.serve_connection_with_upgrades(TokioIo::new(s), svc).await;
                });
            }
        });
        Upstream { addr, name }
    }

    /// The echo server behind TLS with `cert`/`key` (PEM), offering ALPN h2
    /// and http/1.1: a re-encrypt backend.
    pub async fn start_tls(name: &'static str, cert: &str, key: &str) -> Upstream {
        let cfg = tls_server_config(cert, key, &[b"h2", b"http/1.1"]);
        let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(s).await else {
                        return;
                    };
                    let svc = service_fn(move |req| handle(name, req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Upstream { addr, name }
    }

    /// The echo server with a kill switch: once killed, it refuses new
    /// connections and closes kept-alive ones on their next request, as a
    /// crashed pod does.
    pub async fn start_killable(
        name: &'static str,
    ) -> (Upstream, std::sync::Arc<std::sync::atomic::AtomicBool>) {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dead = std::sync::Arc::new(AtomicBool::new(false));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let flag = dead.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    r = l.accept() => r,
                    _ = async { while !flag.load(Ordering::SeqCst) { tokio::time::sleep(Duration::from_millis(5)).await } } => return,
                };
                let Ok((s, _)) = accepted else { return };
                let flag = flag.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let flag = flag.clone();
                        async move {
                            if flag.load(Ordering::SeqCst) {
                                return Err(std::io::Error::other("killed"));
                            }
                            handle(name, req).await.map_err(|e| match e {})
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        (Upstream { addr, name }, dead)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn handle(
    name: &'static str,
    req: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    let path = req.uri().path().to_owned();
    if let Some(ms) = path.strip_prefix("/delay/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        let n: usize = n.parse().unwrap_or(0);
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let stream = futures_util::stream::unfold(n, move |left| {
            let chunk = chunk.clone();
            async move {
                if left == 0 {
                    return None;
                }
                let take = left.min(chunk.len());
                Some((
                    Ok::<_, Infallible>(http_body::Frame::data(chunk.slice(..take))),
                    left - take,
                ))
            }
        });
        let body = http_body_util::StreamBody::new(stream).boxed();
        return Ok(Response::builder()
            .header("content-length", n.to_string())
            .body(body)
            .unwrap());
    }
    if path == "/stall" {
        // Ten bytes of a promised hundred, then silence.
        let stream = futures_util::stream::unfold(0u8, |step| async move {
            if step == 0 {
                Some((
                    Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(b"0123456789"))),
                    1,
                ))
            } else {
                tokio::time::sleep(Duration::from_secs(30)).await;
                None
            }
        });
        return Ok(Response::builder()
            .header("content-length", "100")
            .body(http_body_util::StreamBody::new(stream).boxed())
            .unwrap());
    }
    if path == "/sink" {
        let mut body = req.into_body();
        let mut total = 0usize;
        while let Some(f) = body.frame().await {
            match f {
                Ok(f) => total += f.data_ref().map_or(0, |d| d.len()),
                Err(_) => break,
            }
        }
        return Ok(Response::new(
            Full::new(Bytes::from(total.to_string())).boxed(),
        ));
    }
    if path == "/grpc" {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("grpc-message", "ok".parse().unwrap());
        let frames = vec![
            Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(
                b"\0\0\0\0\x02hi",
            ))),
            Ok(http_body::Frame::trailers(trailers)),
        ];
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed();
        return Ok(Response::builder()
            .header("content-type", "application/grpc")
            .body(body)
            .unwrap());
    }
    let mut text = format!(
        "name={name}\nversion={:?}\nmethod={}\nuri={}\n",
        req.version(),
        req.method(),
        req.uri()
    );
    for (k, v) in req.headers() {
        text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
    }
    Ok(Response::new(Full::new(Bytes::from(text)).boxed()))
}

/// A TCP server that accepts, reads a little and resets the connection.
pub async fn resetting_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            // Linger 0 makes close send RST; with 0 it cannot block.
            #[allow(deprecated)]
            let _ = s.set_linger(Some(Duration::ZERO));
            drop(s);
        }
    });
    addr
}

/// A port nothing listens on (bound, then released).
pub async fn dead_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// YAML for a Service with one named port `http` and ready endpoints on
/// 127.0.0.1 at `ports`.
pub fn service(ns: &str, name: &str, ports: &[u16]) -> String {
    let subsets: String = ports
        .iter()
        .map(|p| {
            format!("- addresses: [{{ip: 127.0.0.1}}]\n  ports: [{{name: http, port: {p}}}]\n")
        })
        .collect();
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\napiVersion: v1\nkind: Endpoints\nmetadata: {{name: {name}, namespace: {ns}}}\nsubsets:{}",
        if subsets.is_empty() { " []\n".to_owned() } else { format!("\n{subsets}") }
    )
}

#[allow(clippy::too_many_arguments)] // mirrors the fields of a Route
/// YAML for a Route. `extra` is appended under `spec:` (two-space indent)
/// and `annotations` as `key: value` lines.
pub fn route(
    ns: &str,
    name: &str,
    created: &str,
    host: &str,
    path: &str,
    svc: &str,
    annotations: &[(&str, &str)],
    extra: &str,
) -> String {
    let ann: String = annotations
        .iter()
        .map(|(k, v)| format!("    {k}: {v:?}\n"))
        .collect();
    let ann = if ann.is_empty() {
        String::new()
    } else {
        format!("  annotations:\n{ann}")
    };
    let path = if path.is_empty() {
        String::new()
    } else {
        format!("  path: {path}\n")
    };
    format!(
        "---\napiVersion: route.openshift.io/v1\nkind: Route\nmetadata:\n  name: {name}\n  namespace: {ns}\n  creationTimestamp: \"{created}\"\n{ann}spec:\n  host: {host}\n{path}  to: {{kind: Service, name: {svc}}}\n  port: {{targetPort: http}}\n{extra}"
    )
}

/// A simple route with no annotations, created at a fixed time.
pub fn simple_route(ns: &str, name: &str, host: &str, path: &str, svc: &str) -> String {
    route(ns, name, "2024-01-01T00:00:00Z", host, path, svc, &[], "")
}

/// A router running in this process on a temp manifests directory.
pub struct TestRouter {
    pub dir: tempfile::TempDir,
    pub running: Option<Running>,
    pub http: SocketAddr,
    pub https: Option<SocketAddr>,
    pub admin: SocketAddr,
}

impl TestRouter {
    /// Write `files` (name → YAML) and start a router on them.
    pub async fn start(files: &[(&str, &str)]) -> TestRouter {
        Self::start_with(files, |_| {}).await
    }

    pub async fn start_with(
        files: &[(&str, &str)],
        tweak: impl FnOnce(&mut RouterConfig),
    ) -> TestRouter {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let mut cfg = RouterConfig {
            http: Some("127.0.0.1:0".parse().unwrap()),
            admin: Some("127.0.0.1:0".parse().unwrap()),
            manifests: Some(dir.path().to_owned()),
            access_log: AccessLogMode::Off,
            ..RouterConfig::default()
        };
        tweak(&mut cfg);
        let running = app::start(cfg).await.expect("router starts");
        TestRouter {
            http: running.http.unwrap(),
            https: running.https,
            admin: running.admin.unwrap(),
            dir,
            running: Some(running),
        }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    pub fn generation(&self) -> u64 {
        self.running.as_ref().unwrap().store.load().generation
    }

    /// Write a manifest file and wait until a new table is published.
    pub async fn write(&self, file: &str, text: &str) {
        let before = self.generation();
        std::fs::write(self.path(file), text).unwrap();
        self.wait_generation_after(before).await;
    }

    pub async fn remove(&self, file: &str) {
        let before = self.generation();
        std::fs::remove_file(self.path(file)).unwrap();
        self.wait_generation_after(before).await;
    }

    /// Wait (up to 1 s, the promise of the manifests source) for a table
    /// newer than `gen`. Returns how long it took.
    pub async fn wait_generation_after(&self, gen: u64) -> Duration {
        let start = Instant::now();
        while self.generation() <= gen {
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "no new table within 1 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        start.elapsed()
    }

    pub async fn get(&self, host: &str, path: &str) -> Reply {
        get(self.http, host, path, &[]).await
    }

    pub async fn routes(&self) -> serde_json::Value {
        let r = get(self.admin, "admin", "/api/routes", &[]).await;
        assert_eq!(r.status, StatusCode::OK);
        serde_json::from_str(&r.body).unwrap()
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

/// A response, body read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    /// The value of `key: value` in an echo body.
    pub fn echoed(&self, key: &str) -> Option<&str> {
        let prefix = format!("{key}: ");
        let eq = format!("{key}=");
        self.body
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).or_else(|| l.strip_prefix(&eq)))
    }
}

pub fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// GET with a Host header over HTTP/1.1.
pub async fn get(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut b = Request::get(format!("http://{addr}{path}")).header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(&client(), b.body(Full::new(Bytes::new())).unwrap()).await
}

pub async fn send(
    c: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Reply {
    let resp = c.request(req).await.expect("router answers");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Path of the built binary.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_gatehouse"))
}

/// A raw HTTP/1.1 upstream that answers each request with keep-alive
/// semantics and then closes the connection after `linger` (an upstream
/// whose keep-alive timeout is shorter than the router's pool idle time).
/// Returns its address and a counter of accepted connections.
pub async fn closing_upstream(
    linger: Duration,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncWriteExt;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if !read_request_head(&mut s).await {
                    return;
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(linger).await;
            });
        }
    });
    (addr, accepted)
}

/// Counts the connections an upstream accepts by sitting in front of it.
pub async fn counting_front(
    target: SocketAddr,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut up) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
                }
            });
        }
    });
    (addr, accepted)
}

/// A TLS server configuration for a test backend: `cert`/`key` PEM, ALPN
/// protocols in preference order.
pub fn tls_server_config(
    cert: &str,
    key: &str,
    alpn: &[&[u8]],
) -> std::sync::Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    let ck = gatehouse::tls::certs::certified_key(cert, key, None).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let mut cfg = rustls::ServerConfig::builder_with_provider(gatehouse::tls::certs::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(ck.cert.clone(), key)
        .unwrap();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    std::sync::Arc::new(cfg)
}

/// Read until the end of an HTTP request head; false if the peer closed or
/// failed first (for hand-written test upstreams).
pub async fn read_request_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> bool {
    let mut buf = vec![0u8; 8192];
    let mut have = 0;
    while have < buf.len() {
        match s.read(&mut buf[have..]).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => have += n,
        }
        if buf[..have].windows(4).any(|w| w == b"\r\n\r\n") {
            return true;
        }
    }
    false
}

/// A manifests directory with one Service (endpoint 127.0.0.1:`port`) and
/// one Route for `host`.
pub fn manifests_dir(host: &str, port: u16) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("r.yaml"),
        format!(
            "{}{}",
            service("default", "s", &[port]),
            simple_route("default", "r", host, "", "s")
        ),
    )
    .unwrap();
    dir
}

/// Read from `s` until a whole response with a `content-length` body has
/// arrived (or the connection closes): the bytes read.
pub async fn read_response(s: &mut tokio::net::TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if out.len() >= end + 4 + len {
                return text;
            }
        }
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => return String::from_utf8_lossy(&out).into_owned(),
        }
    }
}

/// When the server closed `s` (EOF or reset), waiting up to `limit`.
pub async fn closed_within(
    s: &mut tokio::net::TcpStream,
    limit: Duration,
) -> Option<std::time::Instant> {
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(limit, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(std::time::Instant::now()),
            Ok(Ok(_)) => {}
        }
    }
}
