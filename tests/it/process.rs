//! The real binary: graceful drain on SIGTERM, `gatehouse check`, and
//! streaming 50 MB both ways with flat memory.

use crate::support::*;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `gatehouse run` child process on a manifests directory.
struct Proc {
    child: Child,
    http: SocketAddr,
    admin: SocketAddr,
}

impl Proc {
    fn start(dir: &std::path::Path, extra: &[&str]) -> Proc {
        let mut child = Command::new(bin())
            .args(["--log-format", "json", "run", "--manifests"])
            .arg(dir)
            .args([
                "--http",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--access-log",
                "off",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("binary starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["message"] == "gatehouse listening" {
                        let _ = tx.send((
                            v["http"].as_str().unwrap().parse().unwrap(),
                            v["admin"].as_str().unwrap().parse().unwrap(),
                        ));
                    }
                }
            }
        });
        let (http, admin) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("listening line on stderr");
        Proc { child, http, admin }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory (VmHWM) in KiB.
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_then_exits_zero() {
    let up = Upstream::start("slow").await;
    let dir = manifests_dir("d.example.com", up.port());
    let mut p = Proc::start(dir.path(), &[]);
    let http = p.http;
    assert_eq!(
        get(p.admin, "admin", "/readyz", &[]).await.status,
        StatusCode::OK
    );
    let in_flight =
        tokio::spawn(async move { get(http, "d.example.com", "/delay/1000", &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    p.sigterm();
    let reply = in_flight.await.unwrap();
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "the in-flight request completes"
    );
    assert_eq!(reply.echoed("name"), Some("slow"));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "did not exit after draining"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    assert!(
        tokio::net::TcpStream::connect(http).await.is_err(),
        "listener closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways_with_flat_memory() {
    let up = Upstream::start("bulk").await;
    let dir = manifests_dir("bulk.example.com", up.port());
    let p = Proc::start(dir.path(), &[]);
    // Warm up pools and buffers with a small round trip, then stream far
    // more than the allocator's slack: a router that buffered a body whole
    // would add at least SIZE to its peak.
    const SIZE: usize = 128 * 1024 * 1024;
    round_trip(p.http, 1024 * 1024).await;
    let base = p.peak_rss_kib();
    round_trip(p.http, SIZE).await;
    round_trip(p.http, 50 * 1024 * 1024).await;
    let grown = p.peak_rss_kib().saturating_sub(base);
    assert!(
        grown < 48 * 1024,
        "peak RSS grew by {grown} KiB while streaming 128 MB and 50 MB each way"
    );
}

/// Download `size` bytes and upload `size` bytes through the router,
/// counting them as they pass, never holding them.
async fn round_trip(http: SocketAddr, size: usize) {
    let c = client();
    let req = http::Request::get(format!("http://{http}/bytes/{size}"))
        .header("host", "bulk.example.com")
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut got = 0usize;
    while let Some(f) = body.frame().await {
        got += f.unwrap().data_ref().map_or(0, |d| d.len());
    }
    assert_eq!(got, size);

    let chunk = Bytes::from(vec![b'y'; 64 * 1024]);
    let stream =
        futures_util::stream::iter((0..size / chunk.len()).map(move |_| {
            Ok::<_, std::convert::Infallible>(http_body::Frame::data(chunk.clone()))
        }));
    let tcp = tokio::net::TcpStream::connect(http).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("/sink")
        .header("host", "bulk.example.com")
        .body(http_body_util::StreamBody::new(stream))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let n = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(std::str::from_utf8(&n).unwrap(), size.to_string());
}

#[test]
fn check_lists_admitted_and_rejected_and_sets_the_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let ok = format!(
        "{}{}",
        service("default", "s", &[8080]),
        simple_route("default", "good", "good.example.com", "", "s")
    );
    std::fs::write(dir.path().join("ok.yaml"), &ok).unwrap();
    let out = Command::new(bin())
        .args(["check", "--manifests"])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("ADMITTED  default/good  good.example.com"),
        "{text}"
    );

    std::fs::write(dir.path().join("bad.yaml"), "kind: [\n").unwrap();
    std::fs::write(
        dir.path().join("dup.yaml"),
        route(
            "other",
            "dup",
            "2030-01-01T00:00:00Z",
            "good.example.com",
            "",
            "s",
            &[],
            "",
        ),
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["check", "--manifests"])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("REJECTED  other/dup"), "{text}");
    assert!(text.contains("HostAlreadyClaimed"), "{text}");
    assert!(
        text.contains("ERROR") && text.contains("bad.yaml"),
        "{text}"
    );
}

#[test]
fn a_bad_config_or_missing_source_is_a_clear_startup_error() {
    let out = Command::new(bin())
        .args(["run", "--http", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--manifests"));
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(&cfg, "timeouts: {server: 1d12h}\n").unwrap();
    let out = Command::new(bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a duration"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_writes_one_json_line_per_request() {
    use tokio::io::AsyncBufReadExt;
    let up = Upstream::start("logged").await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("r.yaml"),
        format!(
            "{}{}",
            service("shop", "s", &[up.port()]),
            simple_route("shop", "web", "log.example.com", "", "s")
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(bin())
        .args(["--log-format", "json", "run", "--manifests"])
        .arg(dir.path())
        .args([
            "--http",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--access-log",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (_err, http, _admin) = listening(&mut child).await;
    let reply = get(
        http,
        "log.example.com",
        "/a/b?c=d",
        &[("x-request-id", "trace-42")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(5), out.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(v["status"], 200);
    assert_eq!(v["method"], "GET");
    assert_eq!(v["host"], "log.example.com");
    assert_eq!(v["path"], "/a/b");
    assert_eq!(v["namespace"], "shop");
    assert_eq!(v["route"], "web");
    assert_eq!(v["request_id"], "trace-42");
    assert_eq!(v["endpoint"], format!("127.0.0.1:{}", up.port()));
    // The line is written when the body is done: it knows its size.
    assert_eq!(v["bytes"], reply.body.len() as u64);
    assert_eq!(v["complete"], true);
    // RFC 3339 UTC with milliseconds, as Elasticsearch maps it.
    let time = v["time"].as_str().unwrap();
    assert!(
        time.len() == 24 && time.ends_with('Z') && &time[10..11] == "T",
        "{time}"
    );
    assert!(v["upstream_connect_ms"].as_f64().unwrap() >= 0.0);
    assert!(v["upstream_response_ms"].as_f64().unwrap() <= v["duration_ms"].as_f64().unwrap());
    assert_eq!(v["sticky"], "new", "no cookie yet: one is set");
    assert_eq!(v["tls"], false);
    assert!(v["termination"].is_null() && v["tls_version"].is_null());
    // With the cookie it was given, the same endpoint: a hit.
    let cookie = reply.headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    get(http, "log.example.com", "/", &[("cookie", &cookie)]).await;
    let line = tokio::time::timeout(Duration::from_secs(5), out.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["sticky"], "hit");
    let _ = child.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_sampling_zero_writes_nothing() {
    use tokio::io::AsyncBufReadExt;
    let up = Upstream::start("quiet").await;
    let dir = manifests_dir("quiet.example.com", up.port());
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("router.yaml");
    std::fs::write(&cfg, "access_log: json\naccess_log_sample: 0.0\n").unwrap();
    let mut child = with_config(&cfg, dir.path());
    let (_err, http, _admin) = listening(&mut child).await;
    for _ in 0..20 {
        assert_eq!(
            get(http, "quiet.example.com", "/", &[]).await.status,
            StatusCode::OK
        );
    }
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let none = tokio::time::timeout(Duration::from_millis(500), out.next_line()).await;
    assert!(none.is_err(), "no access line at sample 0: {none:?}");
    let _ = child.kill().await;
}

/// stdout stalls (nobody reads it): lines queue up to `access_log_queue`,
/// then are dropped and counted, and requests go on at full speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_access_log_drops_and_counts_lines_and_never_slows_requests() {
    let up = Upstream::start("busy").await;
    let dir = manifests_dir("busy.example.com", up.port());
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("router.yaml");
    std::fs::write(&cfg, "access_log: json\naccess_log_queue: 16\n").unwrap();
    // stdout is never read: the pipe fills, the writer blocks.
    let mut child = with_config(&cfg, dir.path());
    let (_err, http, admin) = listening(&mut child).await;
    // A long path makes lines big, so the 64 KiB pipe fills fast.
    let path = format!("/{}", "p".repeat(2000));
    for _ in 0..400 {
        // A request waiting on the stalled log would hang here.
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            get(http, "busy.example.com", &path, &[]),
        )
        .await
        .expect("requests never wait for the access log");
        assert_eq!(r.status, StatusCode::OK);
    }
    let m = get(admin, "admin", "/metrics", &[]).await.body;
    let dropped: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("gatehouse_access_log_dropped_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(dropped > 200, "dropped {dropped}");
    let _ = child.kill().await;
}

/// With `RUST_LOG=gatehouse=debug` every log line inside a request carries
/// its connection and request spans (peer, method, path, request id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_carry_connection_and_request_spans() {
    let dead = dead_port().await;
    let dir = manifests_dir("spans.example.com", dead);
    let mut child = tokio::process::Command::new(bin())
        .args(["--log-format", "json", "run", "--manifests"])
        .arg(dir.path())
        .args([
            "--http",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--access-log",
            "off",
        ])
        .env("RUST_LOG", "gatehouse=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (mut err, http, _admin) = listening(&mut child).await;
    let r = get(
        http,
        "spans.example.com",
        "/traced",
        &[("x-request-id", "span-77")],
    )
    .await;
    assert!(r.status.is_server_error(), "{}", r.status);
    let found = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let line = err.next_line().await.unwrap().expect("a log line");
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["message"] == "upstream connect failed" {
                return v;
            }
        }
    })
    .await
    .expect("the connect failure is logged");
    let spans = found["spans"].as_array().expect("spans in JSON logs");
    let conn = spans
        .iter()
        .find(|s| s["name"] == "conn")
        .expect("conn span");
    assert!(conn["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    let req = spans
        .iter()
        .find(|s| s["name"] == "request")
        .expect("request span");
    assert_eq!(req["method"], "GET");
    assert_eq!(req["path"], "/traced");
    assert_eq!(req["id"], "span-77");
    let _ = child.kill().await;
}

type StderrLines = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>;

/// Take the child's JSON stderr and read it up to the "gatehouse listening"
/// line: the lines (to read on) and the http and admin addresses.
pub(crate) async fn listening(
    child: &mut tokio::process::Child,
) -> (StderrLines, SocketAddr, SocketAddr) {
    use tokio::io::AsyncBufReadExt;
    let mut err = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let line = err.next_line().await.unwrap().expect("listening line");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["message"] == "gatehouse listening" {
            let http = v["http"].as_str().unwrap().parse().unwrap();
            let admin = v["admin"].as_str().unwrap().parse().unwrap();
            return (err, http, admin);
        }
    }
}

/// The binary on `manifests` with the router config `cfg`, JSON logs,
/// stdout and stderr piped.
fn with_config(cfg: &std::path::Path, manifests: &std::path::Path) -> tokio::process::Child {
    tokio::process::Command::new(bin())
        .args(["--log-format", "json", "run", "--config"])
        .arg(cfg)
        .arg("--manifests")
        .arg(manifests)
        .args(["--http", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// `gatehouse_parked_connections` from the admin endpoint.
async fn parked(admin: SocketAddr) -> u64 {
    let m = get(admin, "admin", "/metrics", &[]).await.body;
    m.lines()
        .find_map(|l| {
            l.strip_prefix("gatehouse_parked_connections ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no parked_connections gauge in {m}"))
}

/// Idle HTTP/1 keep-alive connections park after a second — hyper's
/// connection and its buffers are dropped, the stream stays open (HAProxy
/// frees an idle connection's buffers the same way) — and the next request
/// on the same connection, or a pipelined pair, is served as if nothing
/// happened. SIGTERM closes parked connections at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_park_and_resume() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start("park").await;
    let dir = manifests_dir("p.example.com", up.port());
    let mut p = Proc::start(dir.path(), &[]);
    let get1 = b"GET / HTTP/1.1\r\nHost: p.example.com\r\n\r\n";
    let mut conns = Vec::new();
    for _ in 0..20 {
        let mut s = tokio::net::TcpStream::connect(p.http).await.unwrap();
        s.write_all(get1).await.unwrap();
        assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
        conns.push(s);
    }
    assert_eq!(parked(p.admin).await, 0, "parked while just used");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(parked(p.admin).await, 20, "idle connections park");
    // The same connections serve again, and stop being parked.
    for s in &mut conns {
        s.write_all(get1).await.unwrap();
        let resp = read_response(s).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "after parking: {resp:?}");
        assert!(resp.contains("park"), "{resp:?}");
    }
    assert_eq!(
        parked(p.admin).await,
        0,
        "resumed connections are not parked"
    );
    // Parked again, then a pipelined pair: both answered, in order.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(parked(p.admin).await, 20);
    let s = &mut conns[0];
    s.write_all(b"GET /a HTTP/1.1\r\nHost: p.example.com\r\n\r\nGET /b HTTP/1.1\r\nHost: p.example.com\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    let (a, b) = (text.find("/a").unwrap(), text.find("/b").unwrap());
    assert!(a < b, "answered in order: {text}");
    // SIGTERM: parked connections are closed right away, and the process
    // exits well inside the 30 s drain.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let start = Instant::now();
    p.sigterm();
    for s in &mut conns {
        assert!(
            closed_within(s, Duration::from_secs(5)).await.is_some(),
            "parked connection left open by the drain"
        );
    }
    let status = loop {
        if let Some(st) = p.child.try_wait().unwrap() {
            break st;
        }
        assert!(start.elapsed() < Duration::from_secs(8), "did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

/// mimalloc's statistics at exit (`MIMALLOC_SHOW_STATS`), the `commits`
/// count: how many times it committed arena memory on demand.
fn mimalloc_commits(eager: Option<&str>) -> u64 {
    let mut cmd = Command::new(bin());
    cmd.arg("--version").env("MIMALLOC_SHOW_STATS", "1");
    match eager {
        Some(v) => cmd.env("MIMALLOC_ARENA_EAGER_COMMIT", v),
        None => cmd.env_remove("MIMALLOC_ARENA_EAGER_COMMIT"),
    };
    let out = cmd.output().unwrap();
    assert!(out.status.success());
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("commits"))
        .unwrap_or_else(|| panic!("no commits line in mimalloc's statistics: {text}"));
    line.split(':').nth(1).unwrap().trim().parse().unwrap()
}

/// The binary commits mimalloc's arenas on demand (an idle HTTP/2
/// connection: 27 KB of RSS instead of 46 KB; see main.rs), from its first
/// allocation on; `MIMALLOC_ARENA_EAGER_COMMIT` still overrides it.
#[cfg(target_os = "linux")]
#[test]
fn mimalloc_commits_arenas_on_demand_unless_told_otherwise() {
    assert!(
        mimalloc_commits(None) > 0,
        "the arena was committed up front"
    );
    assert_eq!(
        mimalloc_commits(Some("1")),
        0,
        "the environment no longer wins"
    );
}
