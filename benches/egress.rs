//! The egress gateway against a direct connection on the same machine:
//! bulk throughput (1 GiB through one connection) and connection rate
//! (connect, 64-byte exchange, close). The gateway is the release binary in
//! its own process; client and server are in this one. Rounds alternate
//! direct / gateway; medians and the ratio are printed.
//!
//! Run: `cargo build --release && cargo bench --bench egress`.
//! GATEHOUSE_BENCH_BYTES (default 1 GiB), GATEHOUSE_BENCH_CONNS (20000),
//! GATEHOUSE_BENCH_ROUNDS (5), GATEHOUSE_BIN (target/release/gatehouse; e.g.
//! target/pgo/gatehouse for the profile-guided build).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn env_num(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// Sink for bulk (reads until EOF, then answers the byte count) and echo
/// for small exchanges.
async fn server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                let mut total = 0u64;
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            total += n as u64;
                            if n == 64 && total == 64 {
                                // small exchange: echo and close
                                let _ = s.write_all(&buf[..64]).await;
                                return;
                            }
                        }
                    }
                }
                let _ = s.write_all(&total.to_le_bytes()).await;
            });
        }
    });
    addr
}

async fn bulk(to: SocketAddr, bytes: u64) -> f64 {
    let mut s = TcpStream::connect(to).await.unwrap();
    let chunk = vec![7u8; 256 * 1024];
    let t = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n]).await.unwrap();
        left -= n as u64;
    }
    s.shutdown().await.unwrap();
    let mut ack = [0u8; 8];
    s.read_exact(&mut ack).await.unwrap();
    assert_eq!(u64::from_le_bytes(ack), bytes);
    bytes as f64 / t.elapsed().as_secs_f64() / (1u64 << 30) as f64
}

async fn conns(to: SocketAddr, n: u64) -> f64 {
    let t = Instant::now();
    let per = n / 32;
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            tokio::spawn(async move {
                for _ in 0..per {
                    let mut s = TcpStream::connect(to).await.unwrap();
                    s.write_all(&[1u8; 64]).await.unwrap();
                    let mut b = [0u8; 64];
                    s.read_exact(&mut b).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    (per * 32) as f64 / t.elapsed().as_secs_f64()
}

/// CPU seconds (user + system) a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let bytes = env_num("GATEHOUSE_BENCH_BYTES", 1 << 30);
    let n = env_num("GATEHOUSE_BENCH_CONNS", 20_000);
    let rounds = env_num("GATEHOUSE_BENCH_ROUNDS", 5);
    // GATEHOUSE_BIN: another build, e.g. target/pgo/gatehouse.
    let bin = std::env::var_os("GATEHOUSE_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/gatehouse"));
    assert!(
        bin.exists(),
        "{} missing: cargo build --release first",
        bin.display()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let srv = server().await;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut gw = Command::new(&bin)
            .args(["egress", "--listen", "127.0.0.1", "--allow", "127.0.0.0/8"])
            .args(["--admin", "127.0.0.1:0", "--access-log", "off"])
            .env("EGRESS_DESTINATION", format!("{port} tcp 127.0.0.1 {}\n", srv.port()))
            .env("GATEHOUSE_WORKER_THREADS", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let via: SocketAddr = ([127, 0, 0, 1], port).into();
        let t = Instant::now();
        while TcpStream::connect(via).await.is_err() {
            assert!(t.elapsed() < Duration::from_secs(10), "gateway not up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (mut bd, mut bg, mut cd, mut cg) = (vec![], vec![], vec![], vec![]);
        let (mut gw_bulk_cpu, mut gw_conn_cpu) = (0.0, 0.0);
        let me = std::process::id();
        let (mut self_direct_cpu, mut self_gw_cpu) = (0.0, 0.0);
        for _ in 0..rounds {
            let c0 = cpu_seconds(me);
            bd.push(bulk(srv, bytes).await);
            let c1 = cpu_seconds(me);
            let g0 = cpu_seconds(gw.id());
            bg.push(bulk(via, bytes).await);
            gw_bulk_cpu += cpu_seconds(gw.id()) - g0;
            self_direct_cpu += c1 - c0;
            self_gw_cpu += cpu_seconds(me) - c1;
            cd.push(conns(srv, n).await);
            let g0 = cpu_seconds(gw.id());
            cg.push(conns(via, n).await);
            gw_conn_cpu += cpu_seconds(gw.id()) - g0;
        }
        let gib = (bytes * rounds) as f64 / (1u64 << 30) as f64;
        println!(
            "CPU per GiB: gateway process {:.3} s; load generator (client+server, one thread) {:.3} s direct, {:.3} s through the gateway",
            gw_bulk_cpu / gib,
            self_direct_cpu / gib,
            self_gw_cpu / gib
        );
        println!(
            "gateway CPU per connection: {:.1} µs",
            gw_conn_cpu / (n * rounds) as f64 * 1e6
        );
        let (bd, bg, cd, cg) = (median(bd), median(bg), median(cd), median(cg));
        println!(
            "bulk {} MiB, one connection: direct {bd:.2} GiB/s, gateway {bg:.2} GiB/s, ratio {:.2}",
            bytes >> 20,
            bg / bd
        );
        println!(
            "connection rate (64 B exchange, 32 concurrent): direct {cd:.0}/s, gateway {cg:.0}/s, ratio {:.2}",
            cg / cd
        );
        let _ = gw.kill();
        let _ = gw.wait();
    });
}
