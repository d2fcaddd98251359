//! `gatehouse egress`: TCP and UDP forwarding, allow-list, reload, the HTTP
//! proxy, syntax errors; and the seed's network built with namespaces: a DMZ
//! client, the gateway, and an intranet whose firewall admits only the
//! gateway's address, in front of a real Redis.

use crate::support::*;
use gatehouse::config::AccessLogMode;
use gatehouse::egress::{self, EgressConfig};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// A TCP server that answers every connection with `name:` then echoes
/// what it reads, and closes its side after the client closes its own.
async fn echo_server(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(format!("{name}:").as_bytes()).await;
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(rules: &str) -> EgressConfig {
    EgressConfig {
        listen: "127.0.0.1".parse().unwrap(),
        destinations: Some(rules.to_owned()),
        allow: vec!["127.0.0.0/8".into()],
        admin: Some("127.0.0.1:0".parse().unwrap()),
        access_log: AccessLogMode::Off,
        connect_timeout: Duration::from_millis(500),
        connect_attempts: 2,
        reload_interval: Duration::from_millis(100),
        ..EgressConfig::default()
    }
}

/// Send `msg`, half-close, read everything until the gateway closes.
async fn exchange(port: u16, msg: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(msg).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("gateway closes after the exchange")
        .unwrap_or(0);
    out
}

async fn metrics(admin: SocketAddr) -> String {
    get(admin, "admin", "/metrics", &[]).await.body
}

#[tokio::test]
async fn egress_forwards_tcp_with_half_close_and_refuses_what_it_must() {
    let db = echo_server("db").await;
    let (p_db, p_down) = (free_port(), free_port());
    let rules = format!(
        "# the database\n{p_db} tcp 127.0.0.1 {}\n{p_down} tcp 127.0.0.1 {}\n",
        db.port(),
        dead_port().await
    );
    let gw = egress::start(config(&rules)).await.unwrap();
    // Half-close: the request is complete at the client's FIN, the answer
    // still arrives.
    let big = vec![b'x'; 3 << 20];
    let got = exchange(p_db, &big).await;
    assert_eq!(&got[..3], b"db:");
    assert_eq!(got.len(), 3 + big.len());

    // Destination down: the client's connection ends cleanly, quickly.
    let t = Instant::now();
    assert!(exchange(p_down, b"hello").await.is_empty());
    assert!(t.elapsed() < Duration::from_secs(5));
    // …and the gateway is unharmed.
    assert_eq!(&exchange(p_db, b"again").await, b"db:again");

    let m = metrics(gw.admin.unwrap()).await;
    let dest = format!("127.0.0.1:{}", db.port());
    assert!(
        m.contains(&format!(
            "gatehouse_egress_bytes_up_total{{destination=\"{dest}\"}} {}",
            big.len() + 5
        )),
        "{m}"
    );
    assert!(
        m.contains("gatehouse_egress_connect_errors_total{destination=\"127.0.0.1:"),
        "{m}"
    );
    gw.shutdown().await;

    // Allow-list: only 10.0.0.0/8 may use this one.
    let mut cfg = config(&rules);
    cfg.allow = vec!["10.0.0.0/8".into()];
    let gw = egress::start(cfg).await.unwrap();
    assert!(exchange(p_db, b"hello").await.is_empty(), "refused");
    let m = metrics(gw.admin.unwrap()).await;
    assert!(
        m.contains("gatehouse_egress_refused_total{reason=\"not_allowed\"} 1"),
        "{m}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn egress_reload_keeps_open_sessions_and_refuses_bad_rules() {
    let (one, two) = (echo_server("one").await, echo_server("two").await);
    let (p, p_new) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("destinations");
    std::fs::write(&file, format!("{p} tcp 127.0.0.1 {}\n", one.port())).unwrap();
    let mut cfg = config("");
    cfg.destinations = None;
    cfg.destinations_file = Some(file.clone());
    let gw = egress::start(cfg).await.unwrap();

    // An open session to `one`…
    let mut open = TcpStream::connect(("127.0.0.1", p)).await.unwrap();
    open.write_all(b"a").await.unwrap();
    let mut buf = [0u8; 5];
    open.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"one:a");

    // …survives the rules moving the port to `two` and adding a port.
    std::fs::write(
        &file,
        format!(
            "{p} tcp 127.0.0.1 {}\n{p_new} tcp 127.0.0.1 {}\n",
            two.port(),
            one.port()
        ),
    )
    .unwrap();
    let t = Instant::now();
    while gw.reloads() < 1 {
        assert!(t.elapsed() < Duration::from_secs(5), "no reload");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    open.write_all(b"b").await.unwrap();
    let mut one_more = [0u8; 1];
    open.read_exact(&mut one_more).await.unwrap();
    assert_eq!(&one_more, b"b", "the open session still reaches one");
    assert_eq!(
        &exchange(p, b"c").await,
        b"two:c",
        "new sessions follow the rule"
    );
    assert_eq!(&exchange(p_new, b"d").await, b"one:d");

    // A broken file is reported and changes nothing.
    std::fs::write(&file, format!("{p} tcp 127.0.0.1 1\n{p} tcp 127.0.0.1 2\n")).unwrap();
    let admin = gw.admin.unwrap();
    let t = Instant::now();
    while !metrics(admin)
        .await
        .contains("gatehouse_egress_reloads_total{result=\"refused\"} 1")
    {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "bad rules not noticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(&exchange(p, b"e").await, b"two:e");
    assert_eq!(gw.rules().len(), 2);
    drop(open);
    gw.shutdown().await;
}

#[tokio::test]
async fn egress_relays_udp_per_client() {
    let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            let mut reply = b"pong:".to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = echo.send_to(&reply, from).await;
        }
    });
    let p = free_port();
    let gw = egress::start(config(&format!("{p} udp 127.0.0.1 {}\n", echo_addr.port())))
        .await
        .unwrap();
    for who in ["a", "b"] {
        let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        c.connect(("127.0.0.1", p)).await.unwrap();
        for i in 0..3 {
            c.send(format!("{who}{i}").as_bytes()).await.unwrap();
            let mut buf = [0u8; 64];
            let n = tokio::time::timeout(Duration::from_secs(5), c.recv(&mut buf))
                .await
                .expect("udp reply")
                .unwrap();
            assert_eq!(&buf[..n], format!("pong:{who}{i}").as_bytes());
        }
    }
    let m = metrics(gw.admin.unwrap()).await;
    let dest = format!("127.0.0.1:{}", echo_addr.port());
    assert!(
        m.contains(&format!(
            "gatehouse_egress_connections_active{{destination=\"{dest}\"}} 2"
        )),
        "one flow per client: {m}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn egress_http_proxy_connect_and_absolute_uris_by_policy() {
    let up = Upstream::start("intranet-web").await;
    let mut cfg = config("");
    cfg.destinations = None;
    cfg.http_proxy = Some("127.0.0.1:0".parse().unwrap());
    cfg.http_proxy_destinations = Some("!127.0.0.2\n127.0.0.0/8\n".into());
    let gw = egress::start(cfg).await.unwrap();
    let proxy = gw.http_proxy.unwrap();
    let raw = |req: String| async move {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut out))
            .await
            .unwrap()
            .unwrap();
        (s, String::from_utf8_lossy(&out[..n]).into_owned())
    };
    // Absolute URI, allowed.
    let port = up.port();
    let (_, r) = raw(format!(
        "GET http://127.0.0.1:{port}/x?y=1 HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\n\r\n"
    ))
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(
        r.contains("name=intranet-web") && r.contains("uri=/x?y=1"),
        "{r}"
    );
    // Denied destination: 403, nothing connected.
    let (_, r) = raw(format!(
        "GET http://127.0.0.2:{port}/ HTTP/1.1\r\nhost: 127.0.0.2\r\n\r\n"
    ))
    .await;
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    let (_, r) = raw("CONNECT 192.0.2.1:443 HTTP/1.1\r\nhost: 192.0.2.1:443\r\n\r\n".into()).await;
    assert!(r.starts_with("HTTP/1.1 403"), "default deny: {r}");
    // CONNECT, allowed: a tunnel carrying plain HTTP.
    let (mut s, r) = raw(format!(
        "CONNECT 127.0.0.1:{port} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n\r\n"
    ))
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    s.write_all(b"GET /through HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    assert!(body.contains("uri=/through"), "{body}");
    let m = metrics(gw.admin.unwrap()).await;
    assert!(
        m.contains("gatehouse_egress_refused_total{reason=\"proxy_denied\"} 2"),
        "{m}"
    );
    gw.shutdown().await;
}

#[test]
fn egress_syntax_errors_name_the_line_and_stop_the_process() {
    for (rules, want) in [
        (
            "80 tcp 203.0.113.25\n80 tcp 203.0.113.26\n",
            "line 2: localport 80 is already used",
        ),
        (
            "203.0.113.27\n80 tcp 203.0.113.25\n",
            "line 1: fallback IP must be the last line",
        ),
        (
            "80 tcp 203.0.113.25\n203.0.113.27\n",
            "no fallback_ports configured",
        ),
    ] {
        let out = Command::new(bin())
            .args(["egress", "--listen", "127.0.0.1", "--admin", "127.0.0.1:0"])
            .env("EGRESS_DESTINATION", rules)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{rules}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{rules:?}: {err}");
    }
}

/// The seed's network: namespaces dmz → gateway → intranet; the intranet
/// firewall (nftables) admits the Redis port only from the gateway's source
/// address. Real Redis, real redis-cli, the real binary.
#[test]
fn egress_netns_dmz_reaches_intranet_redis_only_through_the_gateway() {
    let net = Netns::build();
    let run = |ns: &str, args: &[&str]| {
        let out = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    // Redis in the intranet.
    let redis_on = |port: &str| {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &net.intra,
                "redis-server",
                "--bind",
                "10.231.2.2",
            ])
            .args([
                "--port",
                port,
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)")
    };
    let mut redis = redis_on("6379");
    // The gateway: listens on the DMZ side, connects from its intranet side.
    let mut gw = Command::new("ip")
        .args(["netns", "exec", &net.gw])
        .arg(bin())
        .args([
            "egress",
            "--listen",
            "10.231.1.1",
            "--source",
            "10.231.2.1",
            "--allow",
            "10.231.1.0/24",
            "--admin",
            "127.0.0.1:1937",
        ])
        .env(
            "EGRESS_DESTINATION",
            "# the intranet database\n6379 tcp 10.231.2.2\n",
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut other = redis_on("6380");
    let guard = Kill(vec![redis.id(), gw.id(), other.id()]);
    // Wait for both.
    let t = Instant::now();
    loop {
        let (ok, out) = run(
            &net.dmz,
            &["redis-cli", "-h", "10.231.1.1", "-p", "6379", "PING"],
        );
        if ok && out.contains("PONG") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "gateway/redis not up: {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Real data through the gateway: 1 MiB in, 1 MiB out.
    let value: String = (0..(1 << 20))
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let mut set = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.dmz,
            "redis-cli",
            "-h",
            "10.231.1.1",
            "-p",
            "6379",
            "-x",
            "SET",
            "blob",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    set.stdin.take().unwrap().write_all_sync(value.as_bytes());
    let out = set.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
    let (ok, got) = run(
        &net.dmz,
        &[
            "redis-cli",
            "-h",
            "10.231.1.1",
            "-p",
            "6379",
            "--no-raw",
            "STRLEN",
            "blob",
        ],
    );
    assert!(
        ok && got.contains(&format!("(integer) {}", value.len())),
        "{got}"
    );
    let (_, got) = run(
        &net.dmz,
        &[
            "redis-cli",
            "-h",
            "10.231.1.1",
            "-p",
            "6379",
            "GETRANGE",
            "blob",
            "0",
            "25",
        ],
    );
    assert!(got.contains("abcdefghijklmnopqrstuvwxyz"), "{got}");

    // Directly from the DMZ: routed through the gateway namespace, refused
    // by the intranet firewall.
    let (ok, got) = run(
        &net.dmz,
        &[
            "timeout",
            "5",
            "redis-cli",
            "-h",
            "10.231.2.2",
            "-p",
            "6379",
            "PING",
        ],
    );
    assert!(
        !got.contains("PONG"),
        "direct access must be refused: {ok} {got}"
    );
    // The firewall is what refuses: another Redis in the intranet, on a
    // port the firewall leaves open, answers the DMZ directly (routing
    // works; only the database port is closed to everyone but the gateway).
    let t = Instant::now();
    loop {
        let (ok, got) = run(
            &net.dmz,
            &[
                "timeout",
                "5",
                "redis-cli",
                "-h",
                "10.231.2.2",
                "-p",
                "6380",
                "PING",
            ],
        );
        if ok && got.contains("PONG") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "open port not reachable directly: {got}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The connection log names destination and bytes.
    drop(guard);
    let _ = gw.wait();
    let _ = redis.wait();
    let _ = other.wait();
    let mut log = String::new();
    std::io::Read::read_to_string(gw.stdout.as_mut().unwrap(), &mut log).unwrap();
    let big = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| {
            v["destination"] == "10.231.2.2:6379" && v["bytes_up"].as_u64().unwrap_or(0) > 1 << 20
        });
    assert!(big.is_some(), "a log line for the 1 MiB SET: {log}");
}

trait WriteAllSync {
    fn write_all_sync(self, b: &[u8]);
}

impl WriteAllSync for std::process::ChildStdin {
    fn write_all_sync(mut self, b: &[u8]) {
        std::io::Write::write_all(&mut self, b).unwrap();
    }
}

/// SIGTERM these processes on drop.
struct Kill(Vec<u32>);

impl Drop for Kill {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    }
}

/// Three namespaces joined by two veth pairs; removed on drop.
struct Netns {
    dmz: String,
    gw: String,
    intra: String,
}

impl Netns {
    fn build() -> Netns {
        let id = std::process::id() % 100_000;
        let n = Netns {
            dmz: format!("ghd{id}"),
            gw: format!("ghg{id}"),
            intra: format!("ghi{id}"),
        };
        let sh = |cmd: String| {
            let st = Command::new("sh").arg("-ec").arg(&cmd).status().unwrap();
            assert!(
                st.success(),
                "network setup failed (root, iproute2 and nftables needed): {cmd}"
            );
        };
        let (d, g, i) = (&n.dmz, &n.gw, &n.intra);
        sh(format!(
            "ip netns add {d}; ip netns add {g}; ip netns add {i}"
        ));
        sh(format!(
            "ip link add {d}a type veth peer name {g}a; ip link set {d}a netns {d}; ip link set {g}a netns {g}; \
             ip link add {g}b type veth peer name {i}b; ip link set {g}b netns {g}; ip link set {i}b netns {i}"
        ));
        sh(format!(
            "ip -n {d} addr add 10.231.1.2/24 dev {d}a; ip -n {d} link set {d}a up; ip -n {d} link set lo up; \
             ip -n {d} route add default via 10.231.1.1; \
             ip -n {g} addr add 10.231.1.1/24 dev {g}a; ip -n {g} link set {g}a up; ip -n {g} link set lo up; \
             ip -n {g} addr add 10.231.2.1/24 dev {g}b; ip -n {g} link set {g}b up; \
             ip netns exec {g} sysctl -qw net.ipv4.ip_forward=1; \
             ip -n {i} addr add 10.231.2.2/24 dev {i}b; ip -n {i} link set {i}b up; ip -n {i} link set lo up; \
             ip -n {i} route add default via 10.231.2.1"
        ));
        // The intranet firewall: the Redis port only from the gateway.
        sh(format!(
            "ip netns exec {i} nft -f - <<'EOF'\n\
             table inet intranet {{\n\
               chain input {{\n\
                 type filter hook input priority 0; policy accept;\n\
                 tcp dport 6379 ip saddr != 10.231.2.1 reject with tcp reset\n\
               }}\n\
             }}\n\
             EOF"
        ));
        n
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in [&self.dmz, &self.gw, &self.intra] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[tokio::test]
async fn egress_per_destination_limit_refuses_the_extra_connection() {
    let db = echo_server("db").await;
    let p = free_port();
    let mut cfg = config(&format!("{p} tcp 127.0.0.1 {}\n", db.port()));
    cfg.max_connections_per_destination = 1;
    let gw = egress::start(cfg).await.unwrap();
    let mut first = TcpStream::connect(("127.0.0.1", p)).await.unwrap();
    let mut hello = [0u8; 3];
    first.read_exact(&mut hello).await.unwrap();
    assert_eq!(&hello, b"db:");
    // The second is closed without reaching the destination.
    assert!(exchange(p, b"x").await.is_empty());
    let m = metrics(gw.admin.unwrap()).await;
    assert!(
        m.contains("gatehouse_egress_limit_refused_total{destination=\"127.0.0.1:"),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "gatehouse_egress_limit_refused_total{{destination=\"127.0.0.1:{}\"}} 1",
            db.port()
        )),
        "{m}"
    );
    // Once the first closes, there is room again.
    drop(first);
    let t = Instant::now();
    loop {
        if exchange(p, b"y").await == b"db:y" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "slot never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.shutdown().await;
}
