//! The PROXY protocol (v1 text and v2 binary, haproxy.org's
//! proxy-protocol.txt): the real client address sent by a load balancer in
//! front of the router (an F5, a cloud LB) ahead of the connection's bytes.
//!
//! Accepted only from configured trusted source ranges: a connection from a
//! trusted address must start with a header; anyone else is a direct client
//! whose own address counts (a PROXY line from them is not HTTP and is
//! refused by the HTTP parser).

use crate::model::ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// v2 signature.
const SIG_V2: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line, CRLF included (spec: 107).
const MAX_V1: usize = 107;
/// The most v2 address + TLV bytes accepted (TLVs carry TLS details; a
/// bigger header is refused, memory per connection stays bounded).
pub const MAX_V2_PAYLOAD: usize = 2048;

/// What the header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A proxied connection: the client's address and the one it reached.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// LOCAL (v2) or UNKNOWN (v1): the balancer's own connection (health
    /// checks); the peer address stands.
    Local,
}

/// A header that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("malformed PROXY v1 line: {0}")]
    BadV1(&'static str),
    #[error("malformed PROXY v2 header: {0}")]
    BadV2(&'static str),
    #[error("PROXY header longer than allowed")]
    TooLong,
    #[error("connection closed inside the PROXY header")]
    Truncated,
    #[error("no PROXY header within the time allowed")]
    Timeout,
}

/// Parse a header at the start of `buf`: `Ok(None)` needs more bytes;
/// `Ok(Some((header, n)))` consumed `n` bytes.
pub fn parse(buf: &[u8]) -> Result<Option<(Header, usize)>, Error> {
    if buf.is_empty() {
        return Ok(None);
    }
    let n = buf.len().min(SIG_V2.len());
    if buf[..n] == SIG_V2[..n] {
        return if buf.len() < 16 {
            Ok(None)
        } else {
            parse_v2(buf)
        };
    }
    let n = buf.len().min(6);
    if buf[..n] == b"PROXY "[..n] {
        return parse_v1(buf);
    }
    Err(Error::NotProxy)
}

fn parse_v1(buf: &[u8]) -> Result<Option<(Header, usize)>, Error> {
    let Some(end) = buf.iter().take(MAX_V1).position(|b| *b == b'\n') else {
        return if buf.len() >= MAX_V1 {
            Err(Error::TooLong)
        } else {
            Ok(None)
        };
    };
    if end == 0 || buf[end - 1] != b'\r' {
        return Err(Error::BadV1("line does not end in CRLF"));
    }
    let line = std::str::from_utf8(&buf[..end - 1]).map_err(|_| Error::BadV1("not ASCII"))?;
    let mut parts = line.split(' ');
    let (_, proto) = (parts.next(), parts.next());
    let header = match proto {
        Some("UNKNOWN") => Header::Local,
        Some(p @ ("TCP4" | "TCP6")) => {
            let fields: Vec<&str> = parts.collect();
            let [src, dst, sport, dport] = fields[..] else {
                return Err(Error::BadV1("expected four address fields"));
            };
            let ip = |s: &str| -> Result<IpAddr, Error> {
                match p {
                    "TCP4" => s
                        .parse::<Ipv4Addr>()
                        .map(IpAddr::V4)
                        .map_err(|_| Error::BadV1("bad IPv4 address")),
                    _ => s
                        .parse::<Ipv6Addr>()
                        .map(IpAddr::V6)
                        .map_err(|_| Error::BadV1("bad IPv6 address")),
                }
            };
            let port = |s: &str| -> Result<u16, Error> {
                // Decimal, no sign, no leading zeros (except "0").
                if s.is_empty()
                    || s.len() > 5
                    || !s.bytes().all(|b| b.is_ascii_digit())
                    || (s.len() > 1 && s.starts_with('0'))
                {
                    return Err(Error::BadV1("bad port"));
                }
                s.parse().map_err(|_| Error::BadV1("bad port"))
            };
            Header::Proxied {
                source: SocketAddr::new(ip(src)?, port(sport)?),
                destination: SocketAddr::new(ip(dst)?, port(dport)?),
            }
        }
        _ => return Err(Error::BadV1("unknown protocol")),
    };
    Ok(Some((header, end + 1)))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(Header, usize)>, Error> {
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(Error::BadV2("version is not 2"));
    }
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > MAX_V2_PAYLOAD {
        return Err(Error::TooLong);
    }
    if buf.len() < 16 + len {
        return Ok(None);
    }
    let body = &buf[16..16 + len];
    let total = 16 + len;
    match ver_cmd & 0x0f {
        0 => return Ok(Some((Header::Local, total))),
        1 => {}
        _ => return Err(Error::BadV2("unknown command")),
    }
    let header = match buf[13] {
        // TCP over IPv4 (and UDP: same layout; the router is TCP only).
        0x11 | 0x12 => {
            if body.len() < 12 {
                return Err(Error::BadV2("address block too short for IPv4"));
            }
            let ip = |o: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    body[o],
                    body[o + 1],
                    body[o + 2],
                    body[o + 3],
                ))
            };
            let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
            Header::Proxied {
                source: SocketAddr::new(ip(0), port(8)),
                destination: SocketAddr::new(ip(4), port(10)),
            }
        }
        0x21 | 0x22 => {
            if body.len() < 36 {
                return Err(Error::BadV2("address block too short for IPv6"));
            }
            let ip = |o: usize| {
                let mut a = [0u8; 16];
                a.copy_from_slice(&body[o..o + 16]);
                IpAddr::V6(Ipv6Addr::from(a))
            };
            let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
            Header::Proxied {
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            }
        }
        // UNSPEC or unix sockets: keep the peer address.
        _ => Header::Local,
    };
    Ok(Some((header, total)))
}

/// Read a header from the start of `stream`, within `timeout`. Returns the
/// header and the bytes read after it (the start of the client's data, to be
/// replayed).
pub async fn read<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<(Header, Vec<u8>), Error> {
    let mut buf = Vec::with_capacity(256);
    let work = async {
        loop {
            match parse(&buf)? {
                Some((h, n)) => {
                    let rest = buf.split_off(n);
                    return Ok((h, rest));
                }
                None => {
                    if buf.len() >= 16 + MAX_V2_PAYLOAD {
                        return Err(Error::TooLong);
                    }
                    buf.reserve(512);
                    let n = stream
                        .read_buf(&mut buf)
                        .await
                        .map_err(|_| Error::Truncated)?;
                    if n == 0 {
                        return Err(Error::Truncated);
                    }
                }
            }
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| Error::Timeout)?
}

/// A v2 header for `source` → `destination` (to passthrough backends and
/// upstreams that want the client address; also used by tests).
pub fn encode_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(52);
    out.extend_from_slice(SIG_V2);
    out.push(0x21);
    match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.ip().octets());
            out.extend_from_slice(&d.ip().octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
        (s, d) => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
            out.extend_from_slice(&s.port().to_be_bytes());
            out.extend_from_slice(&d.port().to_be_bytes());
        }
    }
    out
}

/// Whether `peer` may send a PROXY header.
pub fn trusted(peer: IpAddr, ranges: &[IpNet]) -> bool {
    let peer = peer.to_canonical();
    ranges.iter().any(|n| n.contains(peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_lines() {
        let (h, n) = parse(b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\nGET /")
            .unwrap()
            .unwrap();
        assert_eq!(n, 41);
        assert_eq!(
            h,
            Header::Proxied {
                source: addr("192.0.2.7:56324"),
                destination: addr("10.0.0.1:443")
            }
        );
        let (h, _) = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 80\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            h,
            Header::Proxied {
                source: addr("[2001:db8::1]:1"),
                destination: addr("[2001:db8::2]:80")
            }
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n")
                .unwrap()
                .unwrap()
                .0,
            Header::Local
        );
        // Incomplete: more bytes needed, at every prefix.
        let line = b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\n";
        for i in 0..line.len() {
            assert_eq!(parse(&line[..i]), Ok(None), "prefix {i}");
        }
    }

    #[test]
    fn v1_refusals() {
        for bad in [
            &b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\n"[..],
            b"PROXY TCP4 192.0.2.7 10.0.0.1 56324\r\n",
            b"PROXY TCP4 ::1 10.0.0.1 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 1\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 1 extra\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(Error::BadV1(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(Error::NotProxy));
        assert_eq!(parse(&[b'P'; 200]), Err(Error::NotProxy));
        let mut long = b"PROXY TCP4 ".to_vec();
        long.extend(std::iter::repeat_n(b'1', 200));
        assert_eq!(parse(&long), Err(Error::TooLong));
    }

    #[test]
    fn v2_round_trips_and_refusals() {
        for (s, d) in [
            ("198.51.100.4:40000", "10.0.0.1:443"),
            ("[2001:db8::7]:1234", "[2001:db8::1]:80"),
        ] {
            let mut wire = encode_v2(addr(s), addr(d));
            let len = wire.len();
            wire.extend_from_slice(b"\x16\x03\x01");
            let (h, n) = parse(&wire).unwrap().unwrap();
            assert_eq!(n, len);
            assert_eq!(
                h,
                Header::Proxied {
                    source: addr(s),
                    destination: addr(d)
                }
            );
            for i in 0..len {
                assert_eq!(parse(&wire[..i]), Ok(None), "prefix {i}");
            }
        }
        // LOCAL with TLVs.
        let mut local = SIG_V2.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x03, 1, 2, 3]);
        assert_eq!(parse(&local).unwrap().unwrap(), (Header::Local, 19));
        // Version 1 in a v2 frame, unknown command, short address block,
        // oversized payload.
        let mut v = encode_v2(addr("1.2.3.4:1"), addr("5.6.7.8:2"));
        v[12] = 0x11;
        assert!(matches!(parse(&v), Err(Error::BadV2(_))));
        v[12] = 0x2f;
        assert!(matches!(parse(&v), Err(Error::BadV2(_))));
        let mut short = SIG_V2.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0x00, 0x04, 1, 2, 3, 4]);
        assert!(matches!(parse(&short), Err(Error::BadV2(_))));
        let mut huge = SIG_V2.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&huge), Err(Error::TooLong));
    }

    #[test]
    fn trust_is_by_range() {
        let nets: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert!(trusted("10.1.2.3".parse().unwrap(), &nets));
        assert!(trusted("::ffff:10.1.2.3".parse().unwrap(), &nets));
        assert!(!trusted("192.0.2.1".parse().unwrap(), &nets));
    }
}
