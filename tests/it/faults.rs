//! Upstream faults through a fault-injecting TCP proxy that sits between
//! the router and a real upstream: a pod killed mid-response (FIN or RST),
//! killed before its head, one that accepts and never answers, one that
//! resets at accept, one that is slow. The client — curl, over HTTP/1.1 and
//! HTTP/2 — must see an aborted response, never a truncated one passed off
//! as complete, or the right status; and the router keeps serving.

use crate::support::*;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the fault proxy does to the next connection it accepts.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Forward both ways.
    Pass,
    /// Forward the request; forward `n` bytes of the response, then close
    /// both sides (the pod died, its kernel sent FIN).
    CutAfter(usize),
    /// The same, then RST.
    ResetAfter(usize),
    /// Accept and read, never answer, never close.
    Blackhole,
    /// Accept, then RST at once.
    ResetOnAccept,
    /// Hold the response for this long, then forward.
    Delay(Duration),
}

struct FaultProxy {
    addr: SocketAddr,
    fault: Arc<Mutex<Fault>>,
    accepted: Arc<AtomicUsize>,
}

impl FaultProxy {
    async fn start(target: SocketAddr) -> FaultProxy {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let fault = Arc::new(Mutex::new(Fault::Pass));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (f, a) = (fault.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = l.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let fault = *f.lock().unwrap();
                tokio::spawn(run(client, target, fault));
            }
        });
        FaultProxy {
            addr,
            fault,
            accepted,
        }
    }

    fn set(&self, f: Fault) {
        *self.fault.lock().unwrap() = f;
    }
}

async fn run(client: TcpStream, target: SocketAddr, fault: Fault) {
    if let Fault::ResetOnAccept | Fault::ResetAfter(_) = fault {
        // Closing with linger 0 sends RST.
        let _ = client.set_zero_linger();
    }
    if let Fault::ResetOnAccept = fault {
        return;
    }
    let (mut cr, mut cw) = client.into_split();
    if let Fault::Blackhole = fault {
        let mut sink = [0u8; 4096];
        while matches!(cr.read(&mut sink).await, Ok(n) if n > 0) {}
        // Keep the write half open until the router gives up.
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(cw);
        return;
    }
    let Ok(up) = TcpStream::connect(target).await else {
        return;
    };
    let (mut ur, mut uw) = up.into_split();
    let upward = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut cr, &mut uw).await;
    });
    let budget = match fault {
        Fault::CutAfter(n) | Fault::ResetAfter(n) => n,
        _ => usize::MAX,
    };
    if let Fault::Delay(d) = fault {
        tokio::time::sleep(d).await;
    }
    let mut left = budget;
    let mut buf = vec![0u8; 16 * 1024];
    while left > 0 {
        let n = match ur.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n.min(left),
        };
        if cw.write_all(&buf[..n]).await.is_err() {
            break;
        }
        left -= n;
    }
    // Both halves go: FIN, or RST with linger 0.
    upward.abort();
    let _ = upward.await;
    drop(cw);
}

/// A raw HTTP/1.1 upstream: `/chunked` answers 100 chunks of 1000 bytes,
/// anything else 100,000 bytes with a Content-Length. Keep-alive.
async fn raw_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                loop {
                    let mut head = Vec::new();
                    let mut b = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match s.read(&mut b).await {
                            Ok(1) => head.push(b[0]),
                            _ => return,
                        }
                    }
                    let chunked = head.windows(8).any(|w| w == b"/chunked");
                    let mut out = Vec::new();
                    if chunked {
                        out.extend_from_slice(
                            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                        );
                        for _ in 0..100 {
                            out.extend_from_slice(b"3e8\r\n");
                            out.extend_from_slice(&[b'c'; 1000]);
                            out.extend_from_slice(b"\r\n");
                        }
                        out.extend_from_slice(b"0\r\n\r\n");
                    } else {
                        out.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n");
                        out.extend_from_slice(&[b'l'; 100_000]);
                    }
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// curl's view of one request: exit code, status, body bytes.
#[derive(Debug)]
struct Curl {
    code: i32,
    status: String,
    bytes: usize,
    took: Duration,
}

async fn curl(router: SocketAddr, path: &str, h2: bool) -> Curl {
    let start = Instant::now();
    let url = format!("http://h.example.com:{}{path}", router.port());
    let resolve = format!("h.example.com:{}:127.0.0.1", router.port());
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "--max-time", "10"])
        .args(["--resolve", &resolve])
        .arg(if h2 {
            "--http2-prior-knowledge"
        } else {
            "--http1.1"
        })
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let out = cmd.output().await.expect("curl runs");
    let stdout = out.stdout;
    let cut = stdout.iter().rposition(|b| *b == b'\n').unwrap_or(0);
    Curl {
        code: out.status.code().unwrap_or(-1),
        status: String::from_utf8_lossy(&stdout[cut..]).trim().to_owned(),
        bytes: cut,
        took: start.elapsed(),
    }
}

#[tokio::test]
async fn upstream_faults_are_seen_by_the_client_as_what_they_are() {
    let up = raw_upstream().await;
    let fp = FaultProxy::start(up).await;
    let text = format!(
        "{}{}",
        service("default", "s", &[fp.addr.port()]),
        route(
            "default",
            "web",
            "2024-01-01T00:00:00Z",
            "h.example.com",
            "",
            "s",
            &[("haproxy.router.openshift.io/timeout", "1s")],
            ""
        )
    );
    let r = TestRouter::start(&[("r.yaml", &text)]).await;
    // curl exit codes: 18 partial file, 56 receive error, 92 HTTP/2 stream
    // not closed cleanly. Any of them says "aborted"; 0 would be a
    // truncated body passed off as complete.
    const ABORTED: &[i32] = &[18, 56, 92];
    struct Case {
        name: &'static str,
        fault: Fault,
        path: &'static str,
        h2: bool,
        /// Some(status) when a complete answer is expected; None: aborted.
        want: Option<&'static str>,
    }
    let cases = [
        Case {
            name: "FIN mid-body, content-length, h1",
            fault: Fault::CutAfter(30_000),
            path: "/cl",
            h2: false,
            want: None,
        },
        Case {
            name: "FIN mid-body, chunked, h1",
            fault: Fault::CutAfter(30_000),
            path: "/chunked",
            h2: false,
            want: None,
        },
        Case {
            name: "RST mid-body, content-length, h1",
            fault: Fault::ResetAfter(30_000),
            path: "/cl",
            h2: false,
            want: None,
        },
        Case {
            name: "RST mid-body, chunked, h1",
            fault: Fault::ResetAfter(30_000),
            path: "/chunked",
            h2: false,
            want: None,
        },
        Case {
            name: "FIN mid-body, content-length, h2",
            fault: Fault::CutAfter(30_000),
            path: "/cl",
            h2: true,
            want: None,
        },
        Case {
            name: "RST mid-body, chunked, h2",
            fault: Fault::ResetAfter(30_000),
            path: "/chunked",
            h2: true,
            want: None,
        },
        Case {
            name: "FIN inside the head",
            fault: Fault::CutAfter(20),
            path: "/cl",
            h2: false,
            want: Some("502"),
        },
        Case {
            name: "FIN before the head",
            fault: Fault::CutAfter(0),
            path: "/cl",
            h2: false,
            want: Some("502"),
        },
        Case {
            name: "RST at accept",
            fault: Fault::ResetOnAccept,
            path: "/cl",
            h2: false,
            want: Some("502"),
        },
        Case {
            name: "accepts, never answers",
            fault: Fault::Blackhole,
            path: "/cl",
            h2: false,
            want: Some("504"),
        },
        Case {
            name: "accepts, never answers, h2",
            fault: Fault::Blackhole,
            path: "/cl",
            h2: true,
            want: Some("504"),
        },
        Case {
            name: "slow but within the timeout",
            fault: Fault::Delay(Duration::from_millis(300)),
            path: "/chunked",
            h2: false,
            want: Some("200"),
        },
        Case {
            name: "healthy",
            fault: Fault::Pass,
            path: "/cl",
            h2: true,
            want: Some("200"),
        },
    ];
    let mut failures = Vec::new();
    for c in &cases {
        fp.set(c.fault);
        let got = curl(r.http, c.path, c.h2).await;
        let ok = match c.want {
            None => ABORTED.contains(&got.code) && got.bytes < 100_000,
            Some("200") => got.code == 0 && got.status == "200" && got.bytes == 100_000,
            Some(s) => got.code == 0 && got.status == s,
        };
        // Timeouts answer at the route timeout, not the client's.
        let slow = c.want == Some("504") && got.took > Duration::from_secs(3);
        if !ok || slow {
            failures.push(format!("{}: {got:?}", c.name));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // Every aborted body is counted against the route.
    let m = get(r.admin, "admin", "/metrics", &[]).await.body;
    let body_errors: f64 = m
        .lines()
        .filter(|l| {
            l.starts_with("gatehouse_route_upstream_errors_total")
                && l.contains("route=\"web\"")
                && l.contains("kind=\"body\"")
        })
        .filter_map(|l| l.rsplit(" ").next()?.parse::<f64>().ok())
        .sum();
    assert!(body_errors >= 6.0, "body errors counted: {body_errors}");
    // No faulty connection was reused: each case but the last (which may
    // reuse the slow case's healthy keep-alive connection) opened its own.
    assert!(fp.accepted.load(Ordering::SeqCst) >= cases.len() - 1);
    r.stop().await;
}
