//! `--kube` at scale against a real kube-apiserver (scripts/kube-testenv.sh):
//!
//! 1. initial sync: 10k Routes + 10k Services + 10k EndpointSlices with 5
//!    endpoints each (50k endpoints) are written, then the release binary
//!    starts with `--kube`; we time start → `/readyz` 200 and read its
//!    memory from /proc;
//! 2. propagation: while a background writer changes 100 EndpointSlices per
//!    second, new Routes are written one at a time and we time write → first
//!    request routed (p50/p99).
//!
//! Run: `cargo bench --bench kube_sync` (builds the release binary first if
//! needed: `cargo build --release`). Sizes: GATEHOUSE_BENCH_ROUTES (10000),
//! GATEHOUSE_BENCH_SAMPLES (100); GATEHOUSE_BIN (target/release/gatehouse)
//! runs another build, e.g. target/pgo/gatehouse.

use futures::StreamExt;
use gatehouse::source::kube::{KindSpec, ENDPOINT_SLICE, NAMESPACE, ROUTE, SERVICE};
use kube::api::{Api, DynamicObject, PostParams};
use kube::Client;
use serde_json::{json, Value};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NAMESPACES: usize = 100;

fn main() {
    let routes: usize = env_num("GATEHOUSE_BENCH_ROUTES", 10_000);
    let samples: usize = env_num("GATEHOUSE_BENCH_SAMPLES", 100);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(routes, samples));
}

fn env_num(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

struct Env(PathBuf);

impl Drop for Env {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(root().join("scripts/kube-testenv.sh"))
            .arg("stop")
            .arg(&self.0)
            .status();
    }
}

async fn create(api: &Api<DynamicObject>, v: Value) {
    let o: DynamicObject = serde_json::from_value(v).unwrap();
    if let Err(e) = api.create(&PostParams::default(), &o).await {
        panic!("create {:?}: {e}", o.metadata.name);
    }
}

fn api(c: &Client, spec: &KindSpec, ns: Option<&str>) -> Api<DynamicObject> {
    match ns {
        Some(ns) => Api::namespaced_with(c.clone(), ns, &spec.api_resource()),
        None => Api::all_with(c.clone(), &spec.api_resource()),
    }
}

fn node_ip() -> Ipv4Addr {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .expect("a global IPv4 address")
}

fn service(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
           "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
}

fn slice(ns: &str, svc: &str, ips: &[String], port: u16) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("{svc}-x"), "namespace": ns,
                        "labels": {"kubernetes.io/service-name": svc}},
           "addressType": "IPv4",
           "endpoints": ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect::<Vec<_>>(),
           "ports": [{"name": "http", "port": port, "protocol": "TCP"}]})
}

fn route(ns: &str, name: &str, host: &str, svc: &str) -> Value {
    json!({"apiVersion": "route.openshift.io/v1", "kind": "Route",
           "metadata": {"name": name, "namespace": ns},
           "spec": {"host": host, "to": {"kind": "Service", "name": svc}, "port": {"targetPort": "http"}}})
}

/// A tiny HTTP/1.1 responder (keep-alive) that is never the bottleneck; its
/// body is `tag`.
async fn upstream(tag: &'static str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{tag}",
                        tag.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// The body of a 200 answer to `GET /` for `host` (None otherwise).
async fn body(addr: SocketAddr, host: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut all = String::new();
    s.read_to_string(&mut all).await.ok()?;
    if !all.starts_with("HTTP/1.1 200") {
        return None;
    }
    all.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}

/// Status code of `GET /` for `host` (0 when the connection fails).
async fn status(addr: SocketAddr, host: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return 0;
    };
    let req = format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return 0;
    }
    let mut buf = [0u8; 12];
    if s.read_exact(&mut buf).await.is_err() {
        return 0;
    }
    std::str::from_utf8(&buf[9..12])
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn proc_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

async fn run(routes: usize, samples: usize) {
    // GATEHOUSE_BIN: another build, e.g. target/pgo/gatehouse.
    let bin = std::env::var_os("GATEHOUSE_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root().join("target/release/gatehouse"));
    assert!(
        bin.exists(),
        "{} missing: cargo build --release first",
        bin.display()
    );
    let script = root().join("scripts/kube-testenv.sh");
    assert!(Command::new("bash")
        .arg(&script)
        .arg("build")
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success());
    let dir = std::env::temp_dir().join(format!("gatehouse-kube-bench-{}", std::process::id()));
    let out = Command::new("bash")
        .arg(&script)
        .arg("start")
        .arg(&dir)
        .env("GATEHOUSE_KUBE_OWNER_PID", std::process::id().to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _env = Env(dir.clone());
    let kubeconfig = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let c = gatehouse::source::kube::client(Some(&kubeconfig))
        .await
        .unwrap();

    // The Route CRD, then the objects.
    let crd_text =
        std::fs::read_to_string(root().join("config/kubernetes/00-route-crd.yaml")).unwrap();
    let crd: Value = serde_yaml::from_str(&crd_text).unwrap();
    let crd_spec = KindSpec {
        kind: "CustomResourceDefinition",
        group: "apiextensions.k8s.io",
        version: "v1",
        plural: "customresourcedefinitions",
        namespaced: false,
    };
    create(&api(&c, &crd_spec, None), crd).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while api(&c, &ROUTE, None)
        .list(&Default::default())
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "Route CRD not served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in 0..NAMESPACES {
        create(
            &api(&c, &NAMESPACE, None),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("ns-{n}")}}),
        )
        .await;
    }
    let ip = node_ip();
    let port = upstream("a").await;
    let port_b = upstream("b").await;
    let t = Instant::now();
    let objects = (0..routes).flat_map(|i| {
        let ns = format!("ns-{}", i % NAMESPACES);
        let svc = format!("svc-{i}");
        // Five endpoints per service; addresses are not dialled here.
        let ips: Vec<String> = (0..5)
            .map(|k| format!("10.{}.{}.{}", (i >> 8) & 0xff, i & 0xff, k + 1))
            .collect();
        [
            (SERVICE, ns.clone(), service(&ns, &svc)),
            (ENDPOINT_SLICE, ns.clone(), slice(&ns, &svc, &ips, 8080)),
            (
                ROUTE,
                ns.clone(),
                route(
                    &ns,
                    &format!("r-{i}"),
                    &format!("r{i}.bench.example.com"),
                    &svc,
                ),
            ),
        ]
    });
    futures::stream::iter(objects)
        .map(|(spec, ns, v)| {
            let a = api(&c, &spec, Some(&ns));
            async move { create(&a, v).await }
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
    let written = t.elapsed();
    println!(
        "wrote {routes} routes + {routes} services + {routes} slices ({} endpoints) in {:.1} s",
        routes * 5,
        written.as_secs_f64()
    );

    // Initial sync of the release binary.
    let (http_port, admin_port) = (free_port(), free_port());
    let t = Instant::now();
    let mut child = Command::new(&bin)
        .args(["run", "--kube", "--kubeconfig"])
        .arg(&kubeconfig)
        .args(["--http", &format!("127.0.0.1:{http_port}")])
        .args(["--admin", &format!("127.0.0.1:{admin_port}")])
        .args(["--access-log", "off"])
        .stdout(Stdio::null())
        .stderr(match std::env::var_os("GATEHOUSE_BENCH_LOG") {
            Some(f) => Stdio::from(std::fs::File::create(f).unwrap()),
            None => Stdio::null(),
        })
        .spawn()
        .unwrap();
    let pid = child.id();
    let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
    let http: SocketAddr = ([127, 0, 0, 1], http_port).into();
    loop {
        if readyz(admin).await {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(300), "not ready in 300 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sync = t.elapsed();
    // Give the freeing of the bootstrap state a moment, then read memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss, hwm) = (proc_kib(pid, "VmRSS:"), proc_kib(pid, "VmHWM:"));
    let cpu_sync = cpu_seconds(pid);
    println!(
        "initial sync: ready after {:.2} s; RSS {:.1} MiB (peak {:.1} MiB); CPU {:.2} s",
        sync.as_secs_f64(),
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        cpu_sync
    );

    // Status: one entry per route, written in the background after the
    // sync. Wait until it settles so the propagation figures are steady
    // state, and say how long it took.
    let t = Instant::now();
    let mut last = (0.0, Instant::now());
    loop {
        let w = metric(admin, "gatehouse_status_writes_total{result=\"written\"}").await;
        if w != last.0 {
            last = (w, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(3) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "status never settled"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "status: {} route entries written in {:.1} s after ready",
        last.0,
        (last.1 - t).as_secs_f64()
    );

    // Propagation under endpoint churn (100 slice updates per second).
    let churn = {
        let c = c.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut i = 0usize;
            loop {
                tick.tick().await;
                let n = i % routes;
                let ns = format!("ns-{}", n % NAMESPACES);
                let svc = format!("svc-{n}");
                let a = api(&c, &ENDPOINT_SLICE, Some(&ns));
                let ips: Vec<String> = (0..5)
                    .map(|k| {
                        format!(
                            "10.{}.{}.{}",
                            (n >> 8) & 0xff,
                            n & 0xff,
                            (k + i / routes) % 250 + 1
                        )
                    })
                    .collect();
                let v = slice(&ns, &svc, &ips, 8080 + (i % 2) as u16);
                let name = format!("{svc}-x");
                tokio::spawn(async move {
                    let _ = a
                        .patch(
                            &name,
                            &kube::api::PatchParams::apply("bench").force(),
                            &kube::api::Patch::Apply(&v),
                        )
                        .await;
                });
                i += 1;
            }
        })
    };
    // The probe routes' service points at the real upstream.
    create(&api(&c, &SERVICE, Some("ns-0")), service("ns-0", "probe")).await;
    create(
        &api(&c, &ENDPOINT_SLICE, Some("ns-0")),
        slice("ns-0", "probe", &[ip.to_string()], port),
    )
    .await;
    let cpu0 = cpu_seconds(pid);
    let t_all = Instant::now();
    let mut delays = Vec::with_capacity(samples);
    for s in 0..samples {
        let host = format!("probe{s}.bench.example.com");
        let t = Instant::now();
        create(
            &api(&c, &ROUTE, Some("ns-0")),
            route("ns-0", &format!("probe-{s}"), &host, "probe"),
        )
        .await;
        loop {
            if status(http, &host).await == 200 {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "{host} never routed");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        delays.push(t.elapsed());
    }
    // Endpoint moves of one service: slice written → first answer from the
    // new endpoint.
    let mut moves = Vec::with_capacity(samples);
    let slices = api(&c, &ENDPOINT_SLICE, Some("ns-0"));
    for s in 0..samples {
        let (to, want) = if s % 2 == 0 {
            (port_b, "b")
        } else {
            (port, "a")
        };
        let t = Instant::now();
        slices
            .patch(
                "probe-x",
                &kube::api::PatchParams::apply("bench").force(),
                &kube::api::Patch::Apply(&slice("ns-0", "probe", &[ip.to_string()], to)),
            )
            .await
            .unwrap();
        loop {
            if body(http, "probe0.bench.example.com").await.as_deref() == Some(want) {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "endpoint move never routed"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        moves.push(t.elapsed());
    }
    let cpu_churn = (cpu_seconds(pid) - cpu0) / t_all.elapsed().as_secs_f64();
    churn.abort();
    let report = |what: &str, d: &mut Vec<Duration>| {
        d.sort();
        let pct = |p: f64| d[((d.len() as f64 * p).ceil() as usize).clamp(1, d.len()) - 1];
        println!(
            "propagation ({what}) under 100 endpoint updates/s, {routes} routes: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            pct(0.50).as_secs_f64() * 1000.0,
            pct(0.99).as_secs_f64() * 1000.0,
            d.last().unwrap().as_secs_f64() * 1000.0,
        );
    };
    report("new route written → first request routed", &mut delays);
    report("endpoint moved → first request to it", &mut moves);
    println!(
        "router CPU during the propagation runs: {:.0}% of a core",
        cpu_churn * 100.0
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// One sample from the admin /metrics page (NaN when absent).
async fn metric(admin: SocketAddr, name: &str) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(admin).await else {
        return f64::NAN;
    };
    let _ = s
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
        .await;
    let mut body = String::new();
    let _ = s.read_to_string(&mut body).await;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

async fn readyz(admin: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(admin).await else {
        return false;
    };
    let _ = s
        .write_all(b"GET /readyz HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
        .await;
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).await.is_ok() && &buf[9..12] == b"200"
}
