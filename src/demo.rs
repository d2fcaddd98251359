//! `gatehouse demo`: a working router for a first look, no cluster needed.
//! Starts three tiny upstream "pods", writes manifests for them into a
//! temporary directory and runs the router on it. Edit the files there and
//! watch routing change without a restart.

use crate::app;
use crate::config::RouterConfig;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use tokio::net::TcpListener;

/// Start a demo upstream that answers with its name and what it received.
pub async fn upstream(name: &'static str) -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| async move {
                    let mut body = format!(
                        "hello from {name} ({addr})\n{} {}\n",
                        req.method(),
                        req.uri()
                    );
                    for (k, v) in req.headers() {
                        body.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// The demo manifests for upstreams at the given ports.
pub fn manifests(stable: [u16; 2], canary: u16) -> String {
    format!(
        r#"# Written by `gatehouse demo`. Edit me: routing follows within a second.
apiVersion: route.openshift.io/v1
kind: Route
metadata:
  name: hello
  namespace: demo
  annotations:
    haproxy.router.openshift.io/timeout: 10s
spec:
  host: hello.demo.local
  to: {{kind: Service, name: hello, weight: 3}}
  alternateBackends:
  - {{kind: Service, name: hello-canary, weight: 1}}
  port: {{targetPort: http}}
---
apiVersion: route.openshift.io/v1
kind: Route
metadata: {{name: hello-api, namespace: demo}}
spec:
  host: hello.demo.local
  path: /api
  to: {{kind: Service, name: hello-canary}}
---
apiVersion: v1
kind: Service
metadata: {{name: hello, namespace: demo}}
spec:
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: hello, namespace: demo}}
subsets:
- addresses: [{{ip: 127.0.0.1}}]
  ports: [{{name: http, port: {a}}}]
- addresses: [{{ip: 127.0.0.1}}]
  ports: [{{name: http, port: {b}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: hello-canary, namespace: demo}}
spec:
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: hello-canary, namespace: demo}}
subsets:
- addresses: [{{ip: 127.0.0.1}}]
  ports: [{{name: http, port: {canary}}}]
"#,
        a = stable[0],
        b = stable[1],
    )
}

/// Run the demo until SIGINT/SIGTERM.
pub async fn run(mut cfg: RouterConfig) -> anyhow::Result<()> {
    let a = upstream("hello-1").await?;
    let b = upstream("hello-2").await?;
    let c = upstream("hello-canary").await?;
    let dir: PathBuf = std::env::temp_dir().join(format!("gatehouse-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("demo.yaml");
    std::fs::write(&file, manifests([a.port(), b.port()], c.port()))?;
    cfg.manifests = Some(dir.clone());
    let running = app::start(cfg).await?;
    let http = running.http.map(|a| a.to_string()).unwrap_or_default();
    let admin = running.admin.map(|a| a.to_string()).unwrap_or_default();
    eprintln!(
        "\ngatehouse demo is running.\n\n  curl -H 'Host: hello.demo.local' http://{http}/\n  curl -H 'Host: hello.demo.local' http://{http}/api/x\n  curl http://{admin}/api/routes\n  open http://{admin}/ for the dashboard\n\nManifests: {} (edit it; changes apply within a second)\nCtrl-C to stop.\n",
        file.display()
    );
    crate::app_signal::wait().await;
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
