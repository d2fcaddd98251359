//! TLS on the router's :443 with certificates made here (rcgen): SNI
//! selection, default certificate, ALPN, passthrough, re-encrypt, rotation,
//! client certificates, admission of bad certificates, garbage input.

use crate::support::*;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::client::TlsStream;

/// A test certificate authority.
pub(crate) struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A leaf certificate and its key, PEM.
pub(crate) struct Leaf {
    pub cert: String,
    pub key: String,
    pub der: Vec<u8>,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    pub(crate) fn leaf(&self, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    pub(crate) fn roots(&self) -> rustls::RootCertStore {
        gatehouse::tls::certs::root_store(&self.pem).unwrap()
    }
}

/// YAML block scalar lines for a PEM text, indented for `spec.tls`.
fn block(pem: &str) -> String {
    let mut s = String::from("|\n");
    for l in pem.lines() {
        s.push_str("      ");
        s.push_str(l);
        s.push('\n');
    }
    s
}

pub(crate) fn tls_route(
    name: &str,
    host: &str,
    svc: &str,
    termination: &str,
    fields: &[(&str, &str)],
    extra: &str,
) -> String {
    let mut tls = format!("  tls:\n    termination: {termination}\n");
    for (k, v) in fields {
        tls.push_str(&format!("    {k}: {v}\n"));
    }
    format!(
        "---\napiVersion: route.openshift.io/v1\nkind: Route\nmetadata: {{name: {name}, namespace: default, creationTimestamp: \"2024-01-01T00:00:00Z\"}}\nspec:\n  host: {host}\n  to: {{kind: Service, name: {svc}}}\n  port: {{targetPort: http}}\n{extra}{tls}"
    )
}

pub(crate) fn edge(name: &str, host: &str, svc: &str, leaf: Option<&Leaf>) -> String {
    match leaf {
        Some(l) => tls_route(
            name,
            host,
            svc,
            "edge",
            &[("certificate", &block(&l.cert)), ("key", &block(&l.key))],
            "",
        ),
        None => tls_route(name, host, svc, "edge", &[], ""),
    }
}

pub(crate) fn client_config(roots: rustls::RootCertStore, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut c = rustls::ClientConfig::builder_with_provider(gatehouse::tls::certs::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    c
}

/// Connect with TLS, SNI = `name`; returns the stream and the leaf the
/// server presented.
pub(crate) async fn connect(
    addr: SocketAddr,
    cfg: rustls::ClientConfig,
    name: &str,
) -> std::io::Result<(TlsStream<tokio::net::TcpStream>, Vec<u8>)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let s = connector
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await?;
    let leaf = s.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    Ok((s, leaf))
}

/// One HTTP/1.1 GET over an established TLS stream.
pub(crate) async fn get_over(
    stream: TlsStream<tokio::net::TcpStream>,
    host: &str,
    path: &str,
) -> Reply {
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    reply(&mut send, host, path).await
}

async fn reply(
    send: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: &str,
    path: &str,
) -> Reply {
    let req = http::Request::get(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

pub(crate) async fn https_router(
    files: &[(&str, &str)],
    tweak: impl FnOnce(&mut gatehouse::config::RouterConfig),
) -> TestRouter {
    TestRouter::start_with(files, |c| {
        c.https = Some("127.0.0.1:0".parse().unwrap());
        tweak(c)
    })
    .await
}

#[tokio::test]
async fn sni_picks_the_route_certificate_wildcards_and_the_default() {
    let ca = Ca::new("test CA");
    let a = ca.leaf(&["a.example.com"]);
    let b = ca.leaf(&["b.example.com"]);
    let w = ca.leaf(&["*.w.example.com"]);
    let up = Upstream::start("web").await;
    let wild = tls_route(
        "wild",
        "www.w.example.com",
        "web",
        "edge",
        &[("certificate", &block(&w.cert)), ("key", &block(&w.key))],
        "  wildcardPolicy: Subdomain\n",
    );
    let text = [
        service("default", "web", &[up.port()]),
        edge("a", "a.example.com", "web", Some(&a)),
        edge("b", "b.example.com", "web", Some(&b)),
        edge("plain-default", "d.example.com", "web", None),
        wild,
    ]
    .concat();
    let r = https_router(&[("t.yaml", &text)], |c| c.allow_wildcard_routes = true).await;
    let addr = r.https.unwrap();

    for (host, leaf) in [
        ("a.example.com", &a),
        ("b.example.com", &b),
        ("x.w.example.com", &w),
    ] {
        let (s, presented) = connect(addr, client_config(ca.roots(), &[]), host)
            .await
            .unwrap();
        assert_eq!(presented, leaf.der, "{host}");
        let reply = get_over(s, host, "/hello").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.echoed("x-forwarded-proto"), Some("https"));
    }

    // No SNI (an IP address): the router's default certificate.
    let mut insecure = client_config(rustls::RootCertStore::empty(), &[]);
    insecure.enable_sni = false;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let res = tokio_rustls::TlsConnector::from(Arc::new(insecure))
        .connect(ServerName::try_from("a.example.com").unwrap(), tcp)
        .await;
    assert!(
        res.is_err(),
        "the generated default certificate is not trusted by our CA"
    );

    // A route on the default certificate: served, but http/1.1 only.
    let text = s_client(addr, "b.example.com").await;
    assert!(
        text.contains("CN = b.example.com") || text.contains("CN=b.example.com"),
        "{text}"
    );
    assert!(text.contains("ALPN protocol: h2"), "{text}");
    r.stop().await;
}

#[tokio::test]
async fn alpn_h2_for_own_certificates_http11_for_the_default() {
    let ca = Ca::new("test CA");
    let a = ca.leaf(&["a.example.com"]);
    let up = Upstream::start("web").await;
    let text = [
        service("default", "web", &[up.port()]),
        edge("a", "a.example.com", "web", Some(&a)),
        edge("d", "d.example.com", "web", None),
    ]
    .concat();
    let r = https_router(&[("t.yaml", &text)], |_| {}).await;
    let addr = r.https.unwrap();
    let (s, _) = connect(
        addr,
        client_config(ca.roots(), &[b"h2", b"http/1.1"]),
        "a.example.com",
    )
    .await
    .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(s),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let resp = send
        .send_request(
            http::Request::get("https://a.example.com/h2")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
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
    assert!(body.contains("x-forwarded-proto: https"), "{body}");
    // Idle past PARK_AFTER: the connection frees its h2 buffers under TLS
    // too (vendor/h2/PATCH.md) and serves the next request.
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let resp = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        send.send_request(
            http::Request::get("https://a.example.com/again")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        ),
    )
    .await
    .expect("answered within 10 s after the idle pause")
    .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(
        String::from_utf8_lossy(&body).contains("uri=/again"),
        "{body:?}"
    );

    // Default certificate: only http/1.1 is offered (no coalescing).
    let text = s_client(addr, "d.example.com").await;
    assert!(text.contains("ALPN protocol: http/1.1"), "{text}");
    r.stop().await;
}

/// An upstream that terminates TLS itself with `leaf` and answers HTTP/1.1
/// with its name.
async fn tls_upstream(leaf: &Leaf, name: &'static str) -> SocketAddr {
    let acceptor =
        tokio_rustls::TlsAcceptor::from(tls_server_config(&leaf.cert, &leaf.key, &[b"http/1.1"]));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                if !read_request_head(&mut tls).await {
                    return;
                }
                let body = format!("name={name}\n");
                let _ = tls
                    .write_all(format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()).as_bytes())
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

trait PemCompat {
    fn from_pem_slice_compat(pem: &str) -> Self;
}

impl PemCompat for rustls::pki_types::PrivateKeyDer<'static> {
    fn from_pem_slice_compat(pem: &str) -> Self {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
    }
}

#[tokio::test]
async fn passthrough_reaches_the_backend_certificate() {
    let ca = Ca::new("backend CA");
    let leaf = ca.leaf(&["pt.example.com"]);
    let up = tls_upstream(&leaf, "passthrough-backend").await;
    let text = [
        service("default", "pt", &[up.port()]),
        tls_route("pt", "pt.example.com", "pt", "passthrough", &[], ""),
    ]
    .concat();
    let r = https_router(&[("t.yaml", &text)], |_| {}).await;
    let (s, presented) = connect(
        r.https.unwrap(),
        client_config(ca.roots(), &[]),
        "pt.example.com",
    )
    .await
    .unwrap();
    assert_eq!(
        presented, leaf.der,
        "the client sees the backend's own certificate"
    );
    let reply = get_over(s, "pt.example.com", "/").await;
    assert_eq!(reply.body, "name=passthrough-backend\n");
    r.stop().await;
}

#[tokio::test]
async fn reencrypt_verifies_the_endpoint_against_the_destination_ca() {
    let front = Ca::new("front CA");
    let back = Ca::new("service CA");
    let wrong = Ca::new("some other CA");
    let site = front.leaf(&["re.example.com", "wrong.example.com"]);
    let backend_leaf = back.leaf(&["secure.default.svc"]);
    let up = tls_upstream(&backend_leaf, "reencrypt-backend").await;
    let fields = |dest: &Ca| {
        vec![
            ("certificate", block(&site.cert)),
            ("key", block(&site.key)),
            ("destinationCACertificate", block(&dest.pem)),
        ]
    };
    let ok_fields = fields(&back);
    let bad_fields = fields(&wrong);
    let as_ref = |v: &Vec<(&'static str, String)>| {
        v.iter().map(|(k, v)| (*k, v.clone())).collect::<Vec<_>>()
    };
    let okf = as_ref(&ok_fields);
    let badf = as_ref(&bad_fields);
    let text = [
        service("default", "secure", &[up.port()]),
        tls_route(
            "re",
            "re.example.com",
            "secure",
            "reencrypt",
            &okf.iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect::<Vec<_>>(),
            "",
        ),
        tls_route(
            "wrong",
            "wrong.example.com",
            "secure",
            "reencrypt",
            &badf
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect::<Vec<_>>(),
            "",
        ),
    ]
    .concat();
    let r = https_router(&[("t.yaml", &text)], |_| {}).await;
    let addr = r.https.unwrap();
    let (s, _) = connect(addr, client_config(front.roots(), &[]), "re.example.com")
        .await
        .unwrap();
    let ok = get_over(s, "re.example.com", "/").await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert_eq!(ok.body, "name=reencrypt-backend\n");
    let (s, _) = connect(addr, client_config(front.roots(), &[]), "wrong.example.com")
        .await
        .unwrap();
    let bad = get_over(s, "wrong.example.com", "/").await;
    assert_eq!(
        bad.status,
        StatusCode::BAD_GATEWAY,
        "verification failure never reaches the backend: {}",
        bad.body
    );
    r.stop().await;
}

#[tokio::test]
async fn certificate_rotation_keeps_open_connections() {
    let ca = Ca::new("test CA");
    let first = ca.leaf(&["rot.example.com"]);
    let second = ca.leaf(&["rot.example.com"]);
    let up = Upstream::start("rot").await;
    let svc = service("default", "web", &[up.port()]);
    let r = https_router(
        &[
            ("svc.yaml", &svc),
            (
                "r.yaml",
                &edge("rot", "rot.example.com", "web", Some(&first)),
            ),
        ],
        |_| {},
    )
    .await;
    let addr = r.https.unwrap();
    let (s, presented) = connect(addr, client_config(ca.roots(), &[]), "rot.example.com")
        .await
        .unwrap();
    assert_eq!(presented, first.der);
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    assert_eq!(
        reply(&mut send, "rot.example.com", "/1").await.status,
        StatusCode::OK
    );

    r.write(
        "r.yaml",
        &edge("rot", "rot.example.com", "web", Some(&second)),
    )
    .await;
    // The open keep-alive connection goes on…
    assert_eq!(
        reply(&mut send, "rot.example.com", "/2").await.status,
        StatusCode::OK
    );
    // …and new handshakes get the new certificate.
    let (_, presented) = connect(addr, client_config(ca.roots(), &[]), "rot.example.com")
        .await
        .unwrap();
    assert_eq!(presented, second.der);
    r.stop().await;
}

#[tokio::test]
async fn bad_certificates_are_rejected_at_admission_and_others_serve() {
    let ca = Ca::new("test CA");
    let good = ca.leaf(&["good.example.com"]);
    let other = ca.leaf(&["other.example.com"]);
    let up = Upstream::start("web").await;
    let text = [
        service("default", "web", &[up.port()]),
        edge("good", "good.example.com", "web", Some(&good)),
        tls_route(
            "garbage",
            "g.example.com",
            "web",
            "edge",
            &[("certificate", "not-a-pem"), ("key", "nope")],
            "",
        ),
        tls_route(
            "mismatch",
            "m.example.com",
            "web",
            "edge",
            &[
                ("certificate", &block(&good.cert)),
                ("key", &block(&other.key)),
            ],
            "",
        ),
        tls_route(
            "pt-cert",
            "p.example.com",
            "web",
            "passthrough",
            &[("certificate", &block(&good.cert))],
            "",
        ),
        tls_route(
            "edge-dest",
            "e.example.com",
            "web",
            "edge",
            &[("destinationCACertificate", &block(&ca.pem))],
            "",
        ),
    ]
    .concat();
    let r = https_router(&[("t.yaml", &text)], |_| {}).await;
    let routes = r.routes().await;
    for name in ["garbage", "mismatch", "pt-cert", "edge-dest"] {
        let s = routes["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap();
        assert_eq!(s["admitted"], false, "{name}");
        assert_eq!(s["reason"], "ExtendedValidationFailed", "{name}: {s}");
    }
    let mismatch = routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "mismatch")
        .unwrap();
    assert!(
        mismatch["message"]
            .as_str()
            .unwrap()
            .contains("does not match"),
        "{mismatch}"
    );
    let (s, _) = connect(
        r.https.unwrap(),
        client_config(ca.roots(), &[]),
        "good.example.com",
    )
    .await
    .unwrap();
    assert_eq!(
        get_over(s, "good.example.com", "/").await.status,
        StatusCode::OK
    );
    r.stop().await;
}

#[tokio::test]
async fn client_certificates_required_optional() {
    let ca = Ca::new("test CA");
    let clients = Ca::new("client CA");
    let site = ca.leaf(&["m.example.com"]);
    let alice = clients.leaf(&["alice"]);
    let up = Upstream::start("web").await;
    let text = [
        service("default", "web", &[up.port()]),
        edge("m", "m.example.com", "web", Some(&site)),
    ]
    .concat();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("clients.pem");
    std::fs::write(&ca_file, &clients.pem).unwrap();
    let r = https_router(&[("t.yaml", &text)], |c| {
        c.tls.client_auth = gatehouse::tls::server::ClientAuthMode::Required;
        c.tls.client_ca = Some(ca_file.clone());
    })
    .await;
    let addr = r.https.unwrap();

    // Without a certificate: the handshake fails with an alert, the backend
    // is never reached.
    let no_cert = async {
        let (s, _) = connect(addr, client_config(ca.roots(), &[]), "m.example.com").await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        let req = http::Request::get("/")
            .header("host", "m.example.com")
            .body(Full::new(Bytes::new()))
            .unwrap();
        send.send_request(req).await.map_err(std::io::Error::other)
    }
    .await;
    assert!(
        no_cert.is_err(),
        "a client without a certificate must not get a response"
    );

    // With one: the backend learns who it is, and a forged header is replaced.
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice_compat(&alice.key);
    let chain = vec![CertificateDer::from(alice.der.clone())];
    let cfg = rustls::ClientConfig::builder_with_provider(gatehouse::tls::certs::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(ca.roots())
        .with_client_auth_cert(chain, key)
        .unwrap();
    let (s, _) = connect(addr, cfg, "m.example.com").await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/")
        .header("host", "m.example.com")
        .header("x-ssl-client-dn", "CN=mallory")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
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
    assert!(body.contains("x-ssl-client-dn: CN=alice"), "{body}");
    assert!(body.contains("x-ssl-client-verify: SUCCESS"), "{body}");
    assert!(!body.contains("mallory"), "{body}");
    r.stop().await;

    // Optional: no certificate is fine, and the backend is told so.
    let r = https_router(&[("t.yaml", &text)], |c| {
        c.tls.client_auth = gatehouse::tls::server::ClientAuthMode::Optional;
        c.tls.client_ca = Some(ca_file.clone());
    })
    .await;
    let (s, _) = connect(
        r.https.unwrap(),
        client_config(ca.roots(), &[]),
        "m.example.com",
    )
    .await
    .unwrap();
    let reply = get_over(s, "m.example.com", "/").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.echoed("x-ssl-client-verify"), Some("NONE"));
    assert_eq!(reply.echoed("x-ssl-client-dn"), None);
    r.stop().await;
}

#[tokio::test]
async fn garbage_on_443_is_closed_and_nothing_else_is_disturbed() {
    let ca = Ca::new("test CA");
    let a = ca.leaf(&["a.example.com"]);
    let up = Upstream::start("web").await;
    let text = [
        service("default", "web", &[up.port()]),
        edge("a", "a.example.com", "web", Some(&a)),
    ]
    .concat();
    let r = https_router(&[("t.yaml", &text)], |c| {
        c.tls.handshake_timeout = std::time::Duration::from_millis(500)
    })
    .await;
    let addr = r.https.unwrap();
    let hostile: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n".to_vec(),
        vec![0x16, 3, 1, 0x40, 0],                   // truncated record
        vec![0x16, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff], // a 16 MB ClientHello
        vec![0x16, 3, 1, 0xff, 0xff],                // an oversized record
    ];
    for bytes in hostile {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(std::time::Duration::from_secs(3), s.read(&mut buf))
            .await
            .expect("closed promptly (or after the handshake timeout)");
        assert!(
            matches!(n, Ok(0) | Err(_)),
            "{bytes:?}: expected close, got {n:?}"
        );
    }
    // A silent client is cut after the handshake timeout.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 8];
    let n = tokio::time::timeout(std::time::Duration::from_secs(3), silent.read(&mut buf))
        .await
        .expect("cut");
    assert!(matches!(n, Ok(0) | Err(_)));

    let (s, _) = connect(addr, client_config(ca.roots(), &[]), "a.example.com")
        .await
        .unwrap();
    assert_eq!(
        get_over(s, "a.example.com", "/").await.status,
        StatusCode::OK
    );
    // Each refusal was counted.
    let metrics = get(r.admin, "admin", "/metrics", &[]).await.body;
    let failures: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("gatehouse_tls_handshake_failures_total{reason="))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum();
    assert!(failures >= 5, "{failures}");
    r.stop().await;
}

#[tokio::test]
async fn hsts_and_plain_routes_on_443() {
    let ca = Ca::new("test CA");
    let a = ca.leaf(&["a.example.com", "p.example.com"]);
    let up = Upstream::start("web").await;
    let hsts = "---\napiVersion: route.openshift.io/v1\nkind: Route\nmetadata:\n  name: h\n  annotations: {haproxy.router.openshift.io/hsts_header: \"max-age=31536000;includeSubDomains\"}\nspec:\n  host: a.example.com\n  to: {name: web}\n  port: {targetPort: http}\n  tls:\n    termination: edge\n";
    let hsts = format!(
        "{hsts}    certificate: {}    key: {}",
        block(&a.cert),
        block(&a.key)
    );
    let text = [
        service("default", "web", &[up.port()]),
        hsts,
        simple_route("default", "plain", "p.example.com", "", "web"),
    ]
    .concat();
    let r = https_router(&[("t.yaml", &text)], |_| {}).await;
    let (s, _) = connect(
        r.https.unwrap(),
        client_config(ca.roots(), &[]),
        "a.example.com",
    )
    .await
    .unwrap();
    let reply = get_over(s, "a.example.com", "/").await;
    assert_eq!(
        reply.headers["strict-transport-security"],
        "max-age=31536000;includeSubDomains"
    );
    // Edge without Allow: the sticky cookie is Secure, SameSite=None.
    let cookie = reply.headers["set-cookie"].to_str().unwrap();
    assert!(
        cookie.contains("HttpOnly")
            && cookie.contains("Secure")
            && cookie.contains("SameSite=None"),
        "{cookie}"
    );
    // A plain-HTTP route is not served over TLS.
    let mut cfg = client_config(rustls::RootCertStore::empty(), &[]);
    cfg.dangerous().set_certificate_verifier(Arc::new(AnyCert));
    let (s, _) = connect(r.https.unwrap(), cfg, "p.example.com")
        .await
        .unwrap();
    assert_eq!(
        get_over(s, "p.example.com", "/").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    r.stop().await;
}

/// Trusts anything: for reaching routes on the generated default certificate.
#[derive(Debug)]
struct AnyCert;

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        gatehouse::tls::certs::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[tokio::test]
async fn reencrypt_speaks_h2_to_backends_that_offer_it_and_uses_the_default_ca() {
    let front = Ca::new("front CA");
    let service_ca = Ca::new("service CA");
    let site = front.leaf(&["h2re.example.com"]);
    let backend = service_ca.leaf(&["grpcish.default.svc"]);
    let up = Upstream::start_tls("h2-backend", &backend.cert, &backend.key).await;
    let text = [
        service("default", "grpcish", &[up.port()]),
        // No destinationCACertificate: the router's default destination CA.
        tls_route(
            "h2re",
            "h2re.example.com",
            "grpcish",
            "reencrypt",
            &[
                ("certificate", &block(&site.cert)),
                ("key", &block(&site.key)),
            ],
            "",
        ),
    ]
    .concat();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("service-ca.pem");
    std::fs::write(&ca_file, &service_ca.pem).unwrap();
    let r = https_router(&[("t.yaml", &text)], |c| {
        c.tls.default_destination_ca = Some(ca_file.clone())
    })
    .await;
    for _ in 0..3 {
        let (s, _) = connect(
            r.https.unwrap(),
            client_config(front.roots(), &[]),
            "h2re.example.com",
        )
        .await
        .unwrap();
        let reply = get_over(s, "h2re.example.com", "/x").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(reply.echoed("name"), Some("h2-backend"));
        assert_eq!(
            reply.echoed("version"),
            Some("HTTP/2.0"),
            "h2 negotiated with the backend by ALPN"
        );
        assert_eq!(reply.echoed("x-forwarded-proto"), Some("https"));
    }
    r.stop().await;
}

#[tokio::test]
async fn ingress_tls_secrets_serve_their_hosts() {
    use base64::Engine as _;
    let ca = Ca::new("test CA");
    let leaf = ca.leaf(&["ing.example.com"]);
    let up = Upstream::start("ingress-backend").await;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let text = format!(
        "{}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: ing-tls, namespace: default}}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: ing, namespace: default}}\nspec:\n  tls: [{{hosts: [ing.example.com], secretName: ing-tls}}]\n  rules:\n  - host: ing.example.com\n    http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}]}}\n",
        service("default", "web", &[up.port()]),
        b64(&leaf.cert),
        b64(&leaf.key)
    );
    let r = https_router(&[("ing.yaml", &text)], |_| {}).await;
    let (s, presented) = connect(
        r.https.unwrap(),
        client_config(ca.roots(), &[]),
        "ing.example.com",
    )
    .await
    .unwrap();
    assert_eq!(presented, leaf.der);
    let reply = get_over(s, "ing.example.com", "/").await;
    assert_eq!(reply.echoed("name"), Some("ingress-backend"));
    // Plain HTTP redirects, as OpenShift's ingress-to-route does.
    let plain = r.get("ing.example.com", "/p?q=1").await;
    assert_eq!(plain.status, StatusCode::FOUND);
    assert_eq!(plain.headers["location"], "https://ing.example.com/p?q=1");
    r.stop().await;
}

#[tokio::test]
async fn shutdown_drains_requests_in_flight_over_tls() {
    let ca = Ca::new("test CA");
    let a = ca.leaf(&["a.example.com"]);
    let up = Upstream::start("slow").await;
    let text = [
        service("default", "web", &[up.port()]),
        edge("a", "a.example.com", "web", Some(&a)),
    ]
    .concat();
    let r = https_router(&[("t.yaml", &text)], |_| {}).await;
    let (s, _) = connect(
        r.https.unwrap(),
        client_config(ca.roots(), &[]),
        "a.example.com",
    )
    .await
    .unwrap();
    let in_flight = tokio::spawn(async move { get_over(s, "a.example.com", "/delay/600").await });
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    let addr = r.https.unwrap();
    r.stop().await;
    let reply = in_flight.await.unwrap();
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "the request in flight finished"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn websockets_through_reencrypt_to_a_backend_that_prefers_h2() {
    use futures_util::{SinkExt, StreamExt};
    let front = Ca::new("front CA");
    let service_ca = Ca::new("service CA");
    let site = front.leaf(&["wss.example.com"]);
    let backend = service_ca.leaf(&["ws.default.svc"]);
    // A TLS backend offering h2 first, speaking WebSocket over HTTP/1.1.
    let acceptor = tokio_rustls::TlsAcceptor::from(tls_server_config(
        &backend.cert,
        &backend.key,
        &[b"h2", b"http/1.1"],
    ));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let text = [
        service("default", "ws", &[port]),
        tls_route(
            "wss",
            "wss.example.com",
            "ws",
            "reencrypt",
            &[
                ("certificate", &block(&site.cert)),
                ("key", &block(&site.key)),
                ("destinationCACertificate", &block(&service_ca.pem)),
            ],
            "",
        ),
    ]
    .concat();
    let r = https_router(&[("t.yaml", &text)], |_| {}).await;
    let (s, _) = connect(
        r.https.unwrap(),
        client_config(front.roots(), &[b"http/1.1"]),
        "wss.example.com",
    )
    .await
    .unwrap();
    let (mut ws, resp) = tokio_tungstenite::client_async("wss://wss.example.com/chat", s)
        .await
        .expect("upgrade through re-encrypt");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        "over tls twice",
    ))
    .await
    .unwrap();
    let m = ws.next().await.unwrap().unwrap();
    assert_eq!(m.into_text().unwrap().as_str(), "over tls twice");
    r.stop().await;
}

/// `openssl s_client` against `addr` with SNI `name`, offering h2 and
/// http/1.1: a real client's view of the handshake.
async fn s_client(addr: SocketAddr, name: &str) -> String {
    let out = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            name,
            "-alpn",
            "h2,http/1.1",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("openssl is installed (.ci/run installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
