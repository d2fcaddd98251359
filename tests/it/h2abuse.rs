//! HTTP/2 abuse, in raw frames on a socket against the h2c listener: rapid
//! reset (batched and paced), CONTINUATION floods, SETTINGS and PING floods
//! from a client that never reads, and the RFC 9113 field rules. Each must
//! cost the upstream nothing (or next to nothing) and leave the router
//! serving everyone else.

use crate::support::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK: every field as a literal without indexing, new name, no Huffman
/// (names and values here are all shorter than 127 bytes).
fn hpack(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, v) in fields {
        out.push(0);
        out.push(n.len() as u8);
        out.extend_from_slice(n.as_bytes());
        out.push(v.len() as u8);
        out.extend_from_slice(v.as_bytes());
    }
    out
}

fn get_fields(host: &str, path: &'static str) -> Vec<(&'static str, String)> {
    vec![
        (":method", "GET".into()),
        (":scheme", "http".into()),
        (":authority", host.into()),
        (":path", path.into()),
    ]
}

fn block(fields: &[(&str, String)]) -> Vec<u8> {
    let f: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
    hpack(&f)
}

/// A connection with the preface and an empty SETTINGS sent.
async fn open(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    s.write_all(&hello).await.unwrap();
    s
}

#[derive(Debug, Default)]
struct Seen {
    /// (stream, error code) of every RST_STREAM.
    resets: Vec<(u32, u32)>,
    /// GOAWAY error code, if any.
    goaway: Option<u32>,
    /// Streams that got a response HEADERS frame.
    responses: Vec<u32>,
    /// The server closed the connection.
    closed: bool,
}

/// Read frames for up to `wait`, or until the connection closes or
/// `done` says enough.
async fn read_frames<R: tokio::io::AsyncRead + Unpin>(
    s: &mut R,
    wait: Duration,
    done: impl Fn(&Seen) -> bool,
) -> Seen {
    let mut seen = Seen::default();
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while buf.len() >= 9 {
            let len = (buf[0] as usize) << 16 | (buf[1] as usize) << 8 | buf[2] as usize;
            if buf.len() < 9 + len {
                break;
            }
            let kind = buf[3];
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            let p = &buf[9..9 + len];
            match kind {
                RST_STREAM if len == 4 => seen
                    .resets
                    .push((stream, u32::from_be_bytes([p[0], p[1], p[2], p[3]]))),
                GOAWAY if len >= 8 => {
                    seen.goaway = Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]))
                }
                HEADERS => seen.responses.push(stream),
                _ => {}
            }
            buf.drain(..9 + len);
        }
        if done(&seen) {
            return seen;
        }
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return seen,
            Ok(Ok(0)) | Ok(Err(_)) => {
                seen.closed = true;
                return seen;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// One GET over a fresh h2c connection: did it get a response?
async fn h2_get_works(addr: SocketAddr, host: &str) -> bool {
    let mut s = open(addr).await;
    let b = block(&get_fields(host, "/"));
    s.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &b))
        .await
        .unwrap();
    let seen = read_frames(&mut s, Duration::from_secs(5), |x| x.responses.contains(&1)).await;
    seen.responses.contains(&1)
}

/// An upstream that counts request heads and answers each after `delay`
/// (so a request is still in flight when the client resets it).
async fn counting_upstream(delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let c = c.clone();
            tokio::spawn(async move {
                while read_request_head(&mut s).await {
                    c.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, count)
}

async fn router(port: u16) -> TestRouter {
    let text = format!(
        "{}{}",
        service("default", "s", &[port]),
        simple_route("default", "web", "h.example.com", "", "s")
    );
    TestRouter::start(&[("r.yaml", &text)]).await
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn scrape(admin: SocketAddr) -> String {
    get(admin, "localhost", "/metrics", &[]).await.body
}

/// CVE-2023-44487 in one burst: thousands of HEADERS + RST_STREAM pairs in
/// a few writes. h2 sees streams reset before they were accepted and sends
/// GOAWAY (ENHANCE_YOUR_CALM); the upstream sees a handful of requests.
#[tokio::test]
async fn rapid_reset_in_one_burst_is_cut_off() {
    let (up, requests) = counting_upstream(Duration::from_millis(300)).await;
    let r = router(up.port()).await;
    let mut s = open(r.http).await;
    let b = block(&get_fields("h.example.com", "/"));
    let mut burst = Vec::new();
    for i in 0..5000u32 {
        let id = 2 * i + 1;
        burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &b));
        burst.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    let (mut rd, mut wr) = s.split();
    let writer = async {
        let _ = tokio::time::timeout(Duration::from_secs(5), wr.write_all(&burst)).await;
    };
    let reader = async {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), rd.read_to_end(&mut out)).await;
        out
    };
    let (_, out) = tokio::join!(writer, reader);
    drop(s);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let n = requests.load(Ordering::SeqCst);
    assert!(n < 500, "{n} of 5000 reset requests reached the upstream");
    // The connection ended with a GOAWAY (ENHANCE_YOUR_CALM = 0xb) or was
    // closed by the cancel limit.
    let goaway = out.windows(4).any(|w| w == [0, 0, 0, 0xb]);
    let m = scrape(r.admin).await;
    assert!(
        goaway || metric(&m, "gatehouse_connections_closed_for_cancels_total") >= 1.0,
        "neither GOAWAY(ENHANCE_YOUR_CALM) nor a cancel close ({} bytes back)",
        out.len()
    );
    assert!(h2_get_works(r.http, "h.example.com").await);
    r.stop().await;
}

/// Rapid reset paced so that every stream is accepted before its reset
/// arrives (h2's own pre-accept counter never fires): each request reaches
/// the handler; gatehouse closes the connection once it has cancelled 100
/// requests and more than half of what it asked.
#[tokio::test]
async fn paced_rapid_reset_is_closed_after_the_cancel_limit() {
    let (up, requests) = counting_upstream(Duration::from_millis(300)).await;
    let r = router(up.port()).await;
    let mut s = open(r.http).await;
    let b = block(&get_fields("h.example.com", "/"));
    let mut sent = 0u32;
    let mut closed = false;
    for i in 0..2000u32 {
        let id = 2 * i + 1;
        if s.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, id, &b))
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        // Let the router accept the stream and start the upstream request.
        tokio::time::sleep(Duration::from_millis(3)).await;
        if s.write_all(&frame(RST_STREAM, 0, id, &8u32.to_be_bytes()))
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        sent += 1;
        // Drain what the server sent so a close shows as EOF.
        let mut buf = [0u8; 4096];
        match tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    assert!(closed, "the connection survived {sent} reset requests");
    assert!(
        (100..400).contains(&sent),
        "closed after {sent} reset requests"
    );
    let n = requests.load(Ordering::SeqCst);
    assert!(n <= sent as usize, "{n} upstream requests");
    let m = scrape(r.admin).await;
    assert_eq!(
        metric(&m, "gatehouse_connections_closed_for_cancels_total"),
        1.0
    );
    assert!(h2_get_works(r.http, "h.example.com").await);
    r.stop().await;
}

/// Endless CONTINUATION frames after a HEADERS without END_HEADERS: the
/// connection is closed long before the header block could exhaust memory
/// (h2 bounds the frames per block by max_header_list_size), and nothing
/// reaches the upstream.
#[tokio::test]
async fn continuation_flood_is_closed() {
    let (up, requests) = counting_upstream(Duration::ZERO).await;
    let r = router(up.port()).await;
    let mut s = open(r.http).await;
    let mut b = block(&get_fields("h.example.com", "/"));
    b.truncate(b.len() - 1);
    let mut flood = frame(HEADERS, END_STREAM, 1, &b);
    // 100k frames × 100 bytes of a header value that never ends: 10 MB.
    let junk = hpack(&[("x-junk", &"j".repeat(90))]);
    for _ in 0..100_000 {
        flood.extend(frame(CONTINUATION, 0, 1, &junk));
    }
    let (mut rd, mut wr) = s.split();
    let writer = async {
        tokio::time::timeout(Duration::from_secs(10), wr.write_all(&flood))
            .await
            .map(|r| r.is_ok())
    };
    let reader = read_frames(&mut rd, Duration::from_secs(10), |_| false);
    let (_, seen) = tokio::join!(writer, reader);
    // GOAWAY with an error (not NO_ERROR) came back, then the close.
    assert!(
        seen.closed && matches!(seen.goaway, Some(c) if c != 0),
        "{seen:?}"
    );
    drop(s);
    assert_eq!(requests.load(Ordering::SeqCst), 0);
    assert!(h2_get_works(r.http, "h.example.com").await);
    r.stop().await;
}

/// SETTINGS and PING floods from a client that never reads the ACKs: the
/// router answers each before reading the next frame, so when the client
/// does not read, the router stops reading too (TCP backpressure) instead
/// of queueing acknowledgements without bound. Others are served
/// meanwhile.
#[tokio::test]
async fn settings_and_ping_floods_meet_backpressure() {
    let (up, _requests) = counting_upstream(Duration::ZERO).await;
    let r = router(up.port()).await;
    for (name, f) in [
        ("SETTINGS", frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100])),
        ("PING", frame(PING, 0, 0, &[7; 8])),
    ] {
        let mut s = open(r.http).await;
        // 64 MB of frames: far beyond what the socket buffers hold.
        let flood: Vec<u8> = f
            .iter()
            .copied()
            .cycle()
            .take((64 << 20) / f.len() * f.len())
            .collect();
        let wrote = tokio::time::timeout(Duration::from_secs(3), s.write_all(&flood)).await;
        assert!(
            wrote.is_err(),
            "{name} flood: the router read 64 MB without anyone reading its ACKs"
        );
        assert!(
            h2_get_works(r.http, "h.example.com").await,
            "{name} flood starved others"
        );
        drop(s);
    }
    r.stop().await;
}

/// RFC 9113 §8.2–8.3 field rules: each malformed request is refused with
/// RST_STREAM or GOAWAY (PROTOCOL_ERROR) and reaches no upstream.
#[tokio::test]
async fn malformed_h2_requests_never_reach_the_upstream() {
    let (up, requests) = counting_upstream(Duration::ZERO).await;
    let r = router(up.port()).await;
    let base = get_fields("h.example.com", "/");
    let with = |extra: (&'static str, &'static str)| {
        let mut f = base.clone();
        f.push((extra.0, extra.1.to_string()));
        f
    };
    let without = |name: &str| {
        base.iter()
            .filter(|(n, _)| *n != name)
            .cloned()
            .collect::<Vec<_>>()
    };
    let mut pseudo_after = base.clone();
    pseudo_after.insert(3, ("x-a", "b".into()));
    let cases: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("uppercase name", with(("X-Upper", "a"))),
        ("connection header", with(("connection", "keep-alive"))),
        ("keep-alive header", with(("keep-alive", "timeout=5"))),
        ("transfer-encoding", with(("transfer-encoding", "chunked"))),
        ("te other than trailers", with(("te", "gzip"))),
        ("upgrade header", with(("upgrade", "websocket"))),
        ("unknown pseudo-header", with((":foo", "bar"))),
        ("pseudo-header after a field", pseudo_after),
        ("missing :method", without(":method")),
        ("missing :path", without(":path")),
        ("missing :scheme", without(":scheme")),
        ("duplicate :path", with((":path", "/again"))),
        ("empty :path", {
            let mut f = without(":path");
            f.push((":path", String::new()));
            f
        }),
        ("CR in a value", with(("x-a", "a\rb"))),
        ("NUL in a value", with(("x-a", "a\0b"))),
        ("space in a name", with(("x a", "b"))),
    ];
    let mut failures = Vec::new();
    for (name, fields) in &cases {
        let mut s = open(r.http).await;
        s.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block(fields)))
            .await
            .unwrap();
        let seen = read_frames(&mut s, Duration::from_secs(3), |x| {
            !x.resets.is_empty() || x.goaway.is_some() || !x.responses.is_empty()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let reached = requests.swap(0, Ordering::SeqCst);
        let refused =
            seen.resets.iter().any(|(id, code)| *id == 1 && *code == 1) || seen.goaway == Some(1);
        if !refused || reached != 0 || !seen.responses.is_empty() {
            failures.push(format!("{name}: {seen:?}, upstream saw {reached}"));
        }
    }
    // A DATA frame longer than the declared content-length: the stream is
    // reset (the head may have been forwarded; the body never completes).
    let mut s = open(r.http).await;
    let mut f = base.clone();
    f[0].1 = "POST".into();
    f.push(("content-length", "3".into()));
    s.write_all(&frame(HEADERS, END_HEADERS, 1, &block(&f)))
        .await
        .unwrap();
    s.write_all(&frame(DATA, END_STREAM, 1, b"too long"))
        .await
        .unwrap();
    let seen = read_frames(&mut s, Duration::from_secs(3), |x| {
        !x.resets.is_empty() || x.goaway.is_some()
    })
    .await;
    if !seen.resets.iter().any(|(id, code)| *id == 1 && *code == 1) {
        failures.push(format!("content-length exceeded: {seen:?}"));
    }
    drop(s);
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(h2_get_works(r.http, "h.example.com").await);
    r.stop().await;
}

/// An idle HTTP/2 connection (no stream open) is closed at the keep-alive
/// timeout, counted from its last response — not at the header timeout,
/// although the client sent frames meanwhile.
#[tokio::test]
async fn idle_h2_connections_close_at_the_keep_alive_timeout() {
    let (up, _requests) = counting_upstream(Duration::ZERO).await;
    let text = format!(
        "{}{}",
        service("default", "s", &[up.port()]),
        simple_route("default", "web", "h.example.com", "", "s")
    );
    let r = TestRouter::start_with(&[("r.yaml", &text)], |c| {
        c.timeouts.http_request = Duration::from_secs(1);
        c.timeouts.http_keep_alive = Duration::from_secs(3);
    })
    .await;
    let mut s = open(r.http).await;
    let b = block(&get_fields("h.example.com", "/"));
    s.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &b))
        .await
        .unwrap();
    let seen = read_frames(&mut s, Duration::from_secs(5), |x| x.responses.contains(&1)).await;
    assert!(seen.responses.contains(&1));
    let idle_from = std::time::Instant::now();
    // A PING while idle is not a request head.
    s.write_all(&frame(PING, 0, 0, &[1; 8])).await.unwrap();
    let seen = read_frames(&mut s, Duration::from_secs(6), |_| false).await;
    let idle = idle_from.elapsed();
    assert!(seen.closed, "{seen:?}");
    assert!(
        idle >= Duration::from_millis(2700) && idle < Duration::from_secs(5),
        "closed after {idle:?} idle"
    );
    r.stop().await;
}
