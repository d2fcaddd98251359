//! UDP rules: a datagram relay with one flow per client address. Each flow
//! has its own socket bound to the source address and connected to the
//! destination; replies go back to the client from the local port. A flow
//! without a datagram either way for `udp_idle_timeout` is forgotten.

use super::rules::{Host, Proto};
use super::Shared;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::net::UdpSocket;
use tracing::warn;

/// Flows per local port before new clients are refused.
const MAX_FLOWS: usize = 4096;
const MAX_DATAGRAM: usize = 65_535;

struct Flow {
    sock: Arc<UdpSocket>,
    up: Arc<AtomicU64>,
}

pub(crate) async fn serve(listen: UdpSocket, port: u16, shared: Arc<Shared>) {
    let listen = Arc::new(listen);
    let flows: Arc<Mutex<HashMap<SocketAddr, Flow>>> = Arc::default();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, peer) = match listen.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP errors from earlier sends surface here; keep serving.
                tracing::debug!(port, error = %e, "udp receive error");
                continue;
            }
        };
        if !shared.allowed(peer.ip()) {
            shared
                .counters
                .refused_not_allowed
                .fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let existing = flows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&peer)
            .map(|f| (f.sock.clone(), f.up.clone()));
        let (sock, up) = match existing {
            Some(x) => x,
            None => {
                if flows.lock().unwrap_or_else(|e| e.into_inner()).len() >= MAX_FLOWS {
                    continue;
                }
                let Some(rule) = shared.rules.load().get(&(port, Proto::Udp)).cloned() else {
                    continue;
                };
                match open(&shared, &rule.host, rule.port).await {
                    Ok(sock) => {
                        let sock = Arc::new(sock);
                        let up = Arc::new(AtomicU64::new(0));
                        flows.lock().unwrap_or_else(|e| e.into_inner()).insert(
                            peer,
                            Flow {
                                sock: sock.clone(),
                                up: up.clone(),
                            },
                        );
                        tokio::spawn(replies(
                            sock.clone(),
                            up.clone(),
                            listen.clone(),
                            peer,
                            port,
                            rule.destination(),
                            flows.clone(),
                            shared.clone(),
                        ));
                        (sock, up)
                    }
                    Err(e) => {
                        warn!(client = %peer, destination = %rule.destination(), error = %e, "udp flow could not be opened");
                        shared
                            .stats(&rule.destination())
                            .connect_errors
                            .fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
            }
        };
        if sock.send(&buf[..n]).await.is_ok() {
            up.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

async fn open(shared: &Shared, host: &Host, port: u16) -> std::io::Result<UdpSocket> {
    let to: SocketAddr = match host {
        Host::Ip(ip) => SocketAddr::new(*ip, port),
        Host::Name(n) => tokio::net::lookup_host((n.as_str(), port))
            .await?
            .next()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?,
    };
    let bind = match shared.cfg.source {
        Some(src) => SocketAddr::new(src, 0),
        None if to.is_ipv4() => SocketAddr::from(([0, 0, 0, 0], 0)),
        None => SocketAddr::from(([0u16; 8], 0)),
    };
    let s = UdpSocket::bind(bind).await?;
    s.connect(to).await?;
    Ok(s)
}

/// Relay the destination's datagrams back to the client until the flow is
/// idle; then log it and forget it.
#[allow(clippy::too_many_arguments)]
async fn replies(
    sock: Arc<UdpSocket>,
    up: Arc<AtomicU64>,
    listen: Arc<UdpSocket>,
    peer: SocketAddr,
    port: u16,
    dest: String,
    flows: Arc<Mutex<HashMap<SocketAddr, Flow>>>,
    shared: Arc<Shared>,
) {
    let started = Instant::now();
    let stats = shared.stats(&dest);
    stats.total.fetch_add(1, Ordering::Relaxed);
    stats.active.fetch_add(1, Ordering::Relaxed);
    let mut down = 0u64;
    let mut last_up = 0u64;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let idle = shared.cfg.udp_idle_timeout;
    loop {
        match tokio::time::timeout(idle, sock.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                if listen.send_to(&buf[..n], peer).await.is_ok() {
                    down += n as u64;
                }
            }
            Ok(Err(_)) => {} // ICMP unreachable etc.: keep the flow until idle
            Err(_) => {
                // Idle only if the client sent nothing either.
                let now_up = up.load(Ordering::Relaxed);
                if now_up == last_up {
                    break;
                }
                last_up = now_up;
            }
        }
    }
    flows
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&peer);
    let up = up.load(Ordering::Relaxed);
    stats.active.fetch_sub(1, Ordering::Relaxed);
    stats.bytes_up.fetch_add(up, Ordering::Relaxed);
    stats.bytes_down.fetch_add(down, Ordering::Relaxed);
    shared.log(serde_json::json!({
        "time": super::unix_now(),
        "kind": "egress",
        "client": peer.to_string(),
        "local_port": port,
        "proto": "udp",
        "destination": dest,
        "bytes_up": up,
        "bytes_down": down,
        "duration_ms": started.elapsed().as_millis() as u64,
        "close": "idle",
    }));
}
