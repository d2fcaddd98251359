//! Arbitrary bytes from a client, through the whole HTTP path of an
//! in-memory router (hyper's parser, routing, header rules, the handler,
//! the upstream pool): never a panic, always an answer or a close, within a
//! second. The route's endpoint refuses connections (port 9 on loopback),
//! so well-formed requests end in 503 without leaving the machine.
#![no_main]
use gatehouse::compile::{compile, CompileConfig};
use gatehouse::model::parse::parse_text;
use gatehouse::model::Objects;
use gatehouse::pool::{PoolConfig, Upstreams};
use gatehouse::proxy::{serve_one, Proxy};
use gatehouse::table::TableStore;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MANIFEST: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: s, namespace: fuzz}
spec: {ports: [{port: 80, targetPort: 9}]}
---
apiVersion: v1
kind: Endpoints
metadata: {name: s, namespace: fuzz}
subsets: [{addresses: [{ip: 127.0.0.1}], ports: [{port: 9}]}]
---
apiVersion: route.openshift.io/v1
kind: Route
metadata:
  name: r
  namespace: fuzz
  annotations: {haproxy.router.openshift.io/rewrite-target: /x}
spec: {host: fuzz.example.com, path: /p, to: {kind: Service, name: s}}
---
apiVersion: route.openshift.io/v1
kind: Route
metadata:
  name: root
  namespace: fuzz
  annotations: {router.openshift.io/cookie_name: sess}
spec: {host: fuzz.example.com, to: {kind: Service, name: s}}
"#;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

fn proxy() -> Arc<Proxy> {
    static P: OnceLock<Arc<Proxy>> = OnceLock::new();
    P.get_or_init(|| {
        runtime().block_on(async {
            let (objs, _) = parse_text(MANIFEST, false);
            let mut store = Objects::default();
            for o in objs {
                store.insert(o);
            }
            let tables = Arc::new(TableStore::new());
            let _ = tables.publish(compile(&store, &CompileConfig::default(), 1).table);
            Arc::new(Proxy {
                store: tables,
                upstreams: Upstreams::new(&PoolConfig {
                    connect_timeout: Duration::from_millis(100),
                    ..PoolConfig::default()
                }),
                access_log: None,
                log_sample: 1.0,
                health: Default::default(),
                retry_budget: Default::default(),
                limits: Default::default(),
                proxy_protocol: None,
                conn_limits: Default::default(),
                proxy_to_passthrough: false,
                client_timeout: Duration::from_secs(1),
                proxy_to_upstreams: false,
            })
        })
    })
    .clone()
}

fuzz_target!(|data: &[u8]| {
    let proxy = proxy();
    runtime().block_on(async move {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let serve = serve_one(server, "192.0.2.1:40000".parse().unwrap(), proxy);
        let talk = async {
            let _ = client.write_all(data).await;
            let _ = client.shutdown().await;
            let mut out = Vec::new();
            let _ = client.read_to_end(&mut out).await;
            out
        };
        let done = tokio::time::timeout(Duration::from_secs(5), async {
            let (_, out) = tokio::join!(serve, talk);
            out
        })
        .await;
        let out = done.expect("the router answers or closes in time");
        // HTTP/1 in, HTTP/1 out (the h2 preface switches to HTTP/2 frames).
        if !out.is_empty() && !data.starts_with(b"PRI * HTTP/2.0") {
            assert!(out.starts_with(b"HTTP/1.1 ") || out.starts_with(b"HTTP/1.0 "), "{:?}", String::from_utf8_lossy(&out[..out.len().min(64)]));
        }
    });
});
