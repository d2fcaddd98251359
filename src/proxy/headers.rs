//! Header rules at the proxy boundary: hop-by-hop removal (RFC 9110 §7.6.1)
//! and the forwarded headers the OpenShift router sets.

use crate::table::ForwardedPolicy;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use std::net::IpAddr;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Remove hop-by-hop headers, including those the Connection header names.
/// `te: trailers` survives (gRPC needs it). Returns whether the message
/// asked for a protocol upgrade (`Connection: upgrade` + `Upgrade`).
pub fn strip_hop_by_hop(h: &mut HeaderMap) -> bool {
    // One pass over the names finds which hop-by-hop headers are present
    // (most messages carry none, and an HTTP/1.1 upstream's response
    // usually only `connection: keep-alive`); only those are looked up and
    // removed. Measured with callgrind: a hash lookup per hop-by-hop name
    // was 3.3k instructions per request for both directions.
    let present = h.keys().fold(0u8, |m, n| m | hop_bit(n));
    strip_present(h, present)
}

/// What one pass over a request's header names found (each name once):
/// the hop-by-hop headers, and the families the request path handles.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Names {
    /// The hop-by-hop headers present, as [`hop_bit`]s.
    hop: u8,
    pub cookie: bool,
    /// A name starting `x-ssl-client-`.
    pub ssl_client: bool,
    /// A forwarded header ([`is_forwarded_name`]).
    pub forwarded: bool,
}

impl Names {
    pub fn of(h: &HeaderMap) -> Names {
        h.keys().fold(Names::default(), |mut s, n| {
            s.hop |= hop_bit(n);
            s.cookie |= n == header::COOKIE;
            s.ssl_client |= n.as_str().starts_with("x-ssl-client-");
            s.forwarded |= is_forwarded_name(n);
            s
        })
    }

    /// An `Upgrade` header is present.
    pub fn upgrade(&self) -> bool {
        self.hop & UPGRADE_BIT != 0
    }

    /// A `Connection` header is present (the names it lists are removed).
    pub fn connection(&self) -> bool {
        self.hop & CONNECTION_BIT != 0
    }
}

/// [`strip_hop_by_hop`] for a request whose names were already looked at
/// (before anything but cookies was changed).
pub fn strip_hop_by_hop_named(h: &mut HeaderMap, names: &Names) -> bool {
    strip_present(h, names.hop)
}

fn strip_present(h: &mut HeaderMap, present: u8) -> bool {
    if present == 0 {
        return false;
    }
    let mut upgrade = false;
    if present & CONNECTION_BIT != 0 {
        let mut named: Vec<HeaderName> = Vec::new();
        for v in h.get_all(header::CONNECTION) {
            let Ok(v) = v.to_str() else { continue };
            for t in v.split(',') {
                let t = t.trim();
                if t.eq_ignore_ascii_case("upgrade") {
                    upgrade = true;
                } else if t.eq_ignore_ascii_case("keep-alive") || t.eq_ignore_ascii_case("close") {
                    // `keep-alive` is removed below when present; `close`
                    // names no header.
                } else if let Ok(n) = HeaderName::from_bytes(t.as_bytes()) {
                    named.push(n);
                }
            }
        }
        for n in named {
            if n != header::TE {
                h.remove(&n);
            }
        }
        h.remove(header::CONNECTION);
    }
    upgrade &= present & hop_bit(&header::UPGRADE) != 0;
    for (name, bit) in REMOVED.iter() {
        if present & bit != 0 && !(upgrade && *name == header::UPGRADE) {
            h.remove(name);
        }
    }
    if present & TE_BIT != 0 {
        if let Some(te) = h.get(header::TE) {
            let trailers = te
                .to_str()
                .map(|v| {
                    v.split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
                })
                .unwrap_or(false);
            h.remove(header::TE);
            if trailers {
                h.insert(header::TE, HeaderValue::from_static("trailers"));
            }
        }
    }
    upgrade
}

const CONNECTION_BIT: u8 = 1;
const TE_BIT: u8 = 2;
const UPGRADE_BIT: u8 = 4;

/// The hop-by-hop headers removed whenever present, with their bits.
static REMOVED: [(HeaderName, u8); 6] = [
    (header::UPGRADE, UPGRADE_BIT),
    (header::TRANSFER_ENCODING, 8),
    (header::TRAILER, 16),
    (header::PROXY_AUTHENTICATE, 32),
    (HeaderName::from_static("keep-alive"), 64),
    (HeaderName::from_static("proxy-connection"), 128),
];

/// The bit of a header this hop consumes (plus `te`, kept only as `te:
/// trailers`); 0 for end-to-end headers.
fn hop_bit(n: &HeaderName) -> u8 {
    // One match on the name (a length switch, then one comparison) instead
    // of comparing against each of the eight names in turn.
    match n.as_str() {
        "connection" => CONNECTION_BIT,
        "te" => TE_BIT,
        "upgrade" => UPGRADE_BIT,
        "transfer-encoding" => 8,
        "trailer" => 16,
        "proxy-authenticate" => 32,
        "keep-alive" => 64,
        "proxy-connection" => 128,
        _ => 0,
    }
}

/// What the router knows about the client side of a request.
#[derive(Debug, Clone)]
pub struct ClientSide<'a> {
    pub ip: IpAddr,
    /// The client's IP, pre-rendered once per connection.
    pub ip_value: &'a HeaderValue,
    /// The listener's port, pre-rendered.
    pub port_value: &'a HeaderValue,
    pub proto: &'static str,
    pub host: &'a str,
    /// `host` as the client sent it, reused for X-Forwarded-Host.
    pub host_value: &'a HeaderValue,
}

/// Apply `set-forwarded-headers` to a request going upstream.
pub fn set_forwarded(h: &mut HeaderMap, policy: ForwardedPolicy, c: &ClientSide<'_>) {
    let set = |h: &mut HeaderMap, name: &HeaderName, v: HeaderValue| match policy {
        ForwardedPolicy::IfNone if h.contains_key(name) => {}
        _ => {
            h.insert(name.clone(), v);
        }
    };
    match policy {
        ForwardedPolicy::Never => return,
        // One hash of the name (the entry), not a lookup and an insert.
        ForwardedPolicy::Append => match h.entry(&X_FORWARDED_FOR) {
            Entry::Vacant(v) => {
                v.insert(c.ip_value.clone());
            }
            Entry::Occupied(mut o) => {
                let existing: Vec<&[u8]> = o.iter().map(|v| v.as_bytes()).collect();
                let mut joined = existing.join(&b", "[..]);
                joined.extend_from_slice(b", ");
                joined.extend_from_slice(c.ip_value.as_bytes());
                if let Ok(v) = HeaderValue::from_bytes(&joined) {
                    o.insert(v);
                }
            }
        },
        ForwardedPolicy::Replace | ForwardedPolicy::IfNone => {
            set(h, &X_FORWARDED_FOR, c.ip_value.clone())
        }
    }
    set(h, &X_FORWARDED_HOST, c.host_value.clone());
    set(h, &X_FORWARDED_PORT, c.port_value.clone());
    set(h, &X_FORWARDED_PROTO, HeaderValue::from_static(c.proto));
    // `for=1.2.3.4;host=example.com;proto=http` (RFC 7239), built in one
    // buffer from the pre-rendered address: no formatting per request.
    match policy {
        ForwardedPolicy::Append => match h.entry(header::FORWARDED) {
            Entry::Vacant(v) => {
                if let Some(f) = forwarded(None, c) {
                    v.insert(f);
                }
            }
            Entry::Occupied(mut o) => {
                if let Some(f) = forwarded(Some(o.get()), c) {
                    o.insert(f);
                }
            }
        },
        _ => {
            if let Some(f) = forwarded(None, c) {
                set(h, &header::FORWARDED, f);
            }
        }
    }
}

/// The `Forwarded` element for this hop, after `prev` when appending.
fn forwarded(prev: Option<&HeaderValue>, c: &ClientSide<'_>) -> Option<HeaderValue> {
    let mut e: Vec<u8> = Vec::with_capacity(prev.map_or(0, |p| p.len() + 2) + c.host.len() + 48);
    if let Some(p) = prev {
        e.extend_from_slice(p.as_bytes());
        e.extend_from_slice(b", ");
    }
    forwarded_element(&mut e, c);
    HeaderValue::from_maybe_shared(bytes::Bytes::from(e)).ok()
}

/// `for=1.2.3.4;host=example.com;proto=http`: visible ASCII only (the
/// address and port are header values already, the host is quoted and
/// stripped of quotes and backslashes when it is no token).
fn forwarded_element(e: &mut Vec<u8>, c: &ClientSide<'_>) {
    match c.ip {
        IpAddr::V4(_) => {
            e.extend_from_slice(b"for=");
            e.extend_from_slice(c.ip_value.as_bytes());
        }
        IpAddr::V6(_) => {
            e.extend_from_slice(b"for=\"[");
            e.extend_from_slice(c.ip_value.as_bytes());
            e.extend_from_slice(b"]\"");
        }
    }
    e.extend_from_slice(b";host=");
    if c.host
        .bytes()
        .all(|b| matches!(b, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.'))
    {
        e.extend_from_slice(c.host.as_bytes());
    } else {
        e.push(b'"');
        e.extend(c.host.bytes().filter(|b| *b != b'"' && *b != b'\\'));
        e.push(b'"');
    }
    e.extend_from_slice(b";proto=");
    e.extend_from_slice(c.proto.as_bytes());
}

/// Whether a header of this name is one `set_forwarded` reads or sets
/// (`x-forwarded-*` by prefix: a stray one only costs the map path).
pub fn is_forwarded_name(n: &HeaderName) -> bool {
    let n = n.as_str();
    n.starts_with("x-forwarded-") || n == "forwarded"
}

/// The forwarded headers of a request that carried none, written straight
/// into an HTTP/1.1 head: what [`set_forwarded`] puts in the map under any
/// policy but `Never` when none is present, in the same order, without
/// hashing five names into the map, growing it, and building the
/// `Forwarded` value in a buffer of its own (callgrind: ~2,400
/// instructions per request through the map).
impl crate::pool::ExtraHead for ClientSide<'_> {
    fn size_hint(&self) -> usize {
        // The names, separators and line ends (105), the values, and room
        // for the `Forwarded` element's own quoting.
        120 + 2 * (self.ip_value.len() + self.host_value.len())
            + self.port_value.len()
            + 2 * self.proto.len()
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"x-forwarded-for: ");
        out.extend_from_slice(self.ip_value.as_bytes());
        out.extend_from_slice(b"\r\nx-forwarded-host: ");
        out.extend_from_slice(self.host_value.as_bytes());
        out.extend_from_slice(b"\r\nx-forwarded-port: ");
        out.extend_from_slice(self.port_value.as_bytes());
        out.extend_from_slice(b"\r\nx-forwarded-proto: ");
        out.extend_from_slice(self.proto.as_bytes());
        out.extend_from_slice(b"\r\nforwarded: ");
        forwarded_element(out, self);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hm(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_bits_name_the_removed_headers() {
        for (name, bit) in REMOVED.iter() {
            assert_eq!(hop_bit(name), *bit, "{name}");
        }
        assert_eq!(hop_bit(&header::CONNECTION), CONNECTION_BIT);
        assert_eq!(hop_bit(&header::TE), TE_BIT);
        for n in ["host", "x-forwarded-for", "trailers", "connections", "t"] {
            assert_eq!(hop_bit(&HeaderName::from_static(n)), 0, "{n}");
        }
    }

    #[test]
    fn one_pass_over_the_names_finds_each_family() {
        let plain = Names::of(&hm(&[("host", "a"), ("accept", "*/*")]));
        assert_eq!(plain, Names::default());
        let n = Names::of(&hm(&[
            ("upgrade", "websocket"),
            ("cookie", "a=1"),
            ("cookie", "b=2"),
            ("x-ssl-client-dn", "CN=evil"),
            ("forwarded", "for=1.2.3.4"),
        ]));
        assert!(
            n.upgrade() && n.cookie && n.ssl_client && n.forwarded,
            "{n:?}"
        );
        assert!(!n.connection());
        assert!(Names::of(&hm(&[("x-forwarded-proto", "https")])).forwarded);
        assert!(!Names::of(&hm(&[("x-forwarded", "1"), ("x-ssl-client", "1")])).forwarded);
        // The same removal as looking at the names again.
        let mut h = hm(&[
            ("connection", "upgrade"),
            ("upgrade", "h2c"),
            ("te", "gzip"),
        ]);
        let names = Names::of(&h);
        assert!(names.connection());
        assert!(strip_hop_by_hop_named(&mut h, &names));
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("upgrade"));
    }

    #[test]
    fn hop_by_hop_goes_trailers_stay() {
        let mut h = hm(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers, deflate"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-keep", "yes"),
        ]);
        assert!(!strip_hop_by_hop(&mut h));
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["x-keep"], "yes");

        let mut h = hm(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(strip_hop_by_hop(&mut h));
        assert_eq!(h["upgrade"], "websocket");

        // Every other hop-by-hop name, and `te` without trailers.
        let mut h = hm(&[
            ("proxy-connection", "keep-alive"),
            ("trailer", "x-sum"),
            ("proxy-authenticate", "Basic"),
            ("te", "gzip"),
            ("connection", "close"),
            ("content-type", "text/plain"),
        ]);
        assert!(!strip_hop_by_hop(&mut h));
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["content-type"], "text/plain");

        // An upstream's usual `connection: keep-alive`, nothing else.
        let mut h = hm(&[("connection", "keep-alive"), ("server", "nginx")]);
        assert!(!strip_hop_by_hop(&mut h));
        assert_eq!(h.len(), 1, "{h:?}");
        // Upgrade without `connection: upgrade` is dropped.
        let mut h = hm(&[("upgrade", "websocket")]);
        assert!(!strip_hop_by_hop(&mut h));
        assert!(h.is_empty());
    }

    fn side<'a>(ip: IpAddr, ipv: &'a HeaderValue, port: &'a HeaderValue) -> ClientSide<'a> {
        static HOST: HeaderValue = HeaderValue::from_static("www.example.com");
        ClientSide {
            host_value: &HOST,
            ip,
            ip_value: ipv,
            port_value: port,
            proto: "http",
            host: "www.example.com",
        }
    }

    #[test]
    fn forwarded_policies() {
        let ipv = HeaderValue::from_static("192.0.2.7");
        let port = HeaderValue::from_static("80");
        let c = side("192.0.2.7".parse().unwrap(), &ipv, &port);
        let orig = [
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "https"),
        ];

        let mut h = hm(&orig);
        set_forwarded(&mut h, ForwardedPolicy::Append, &c);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "www.example.com");
        assert_eq!(h["x-forwarded-port"], "80");
        assert_eq!(
            h["forwarded"],
            "for=192.0.2.7;host=www.example.com;proto=http"
        );

        let mut h = hm(&orig);
        set_forwarded(&mut h, ForwardedPolicy::Replace, &c);
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");

        let mut h = hm(&orig);
        set_forwarded(&mut h, ForwardedPolicy::IfNone, &c);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "www.example.com");

        let mut h = hm(&orig);
        set_forwarded(&mut h, ForwardedPolicy::Never, &c);
        assert_eq!(h, hm(&orig));

        let ipv6 = HeaderValue::from_static("2001:db8::1");
        let c6 = side("2001:db8::1".parse().unwrap(), &ipv6, &port);
        let mut h = HeaderMap::new();
        set_forwarded(&mut h, ForwardedPolicy::Append, &c6);
        assert_eq!(
            h["forwarded"],
            "for=\"[2001:db8::1]\";host=www.example.com;proto=http"
        );
    }

    #[test]
    fn forwarded_appends_and_quotes_hosts() {
        let ipv = HeaderValue::from_static("192.0.2.7");
        let port = HeaderValue::from_static("8080");
        let mut c = side("192.0.2.7".parse().unwrap(), &ipv, &port);
        // A host with a port (":" is not a token character) is quoted;
        // quotes and backslashes in it are dropped.
        c.host = "www.example.com:8080";
        let prev = HeaderValue::from_static("for=10.0.0.1");
        let f = forwarded(Some(&prev), &c).unwrap();
        assert_eq!(
            f,
            "for=10.0.0.1, for=192.0.2.7;host=\"www.example.com:8080\";proto=http"
        );
        c.host = "a\"b\\c";
        assert_eq!(
            forwarded(None, &c).unwrap(),
            "for=192.0.2.7;host=\"abc\";proto=http"
        );
    }

    /// The lines written straight into an HTTP/1.1 head are the ones the
    /// map gets, in the map's order, for a request that carried none, under
    /// every policy that sets them.
    #[test]
    fn written_forwarded_lines_match_the_map() {
        use crate::pool::ExtraHead;
        let port = HeaderValue::from_static("8443");
        let v4 = HeaderValue::from_static("192.0.2.7");
        let v6 = HeaderValue::from_static("2001:db8::1");
        let hosts = ["www.example.com", "www.example.com:8443", "a\"b\\c", ""];
        for (ip, ipv) in [("192.0.2.7", &v4), ("2001:db8::1", &v6)] {
            for host in hosts {
                let host_value = HeaderValue::from_str(host).unwrap();
                for proto in ["http", "https"] {
                    let c = ClientSide {
                        ip: ip.parse().unwrap(),
                        ip_value: ipv,
                        port_value: &port,
                        proto,
                        host,
                        host_value: &host_value,
                    };
                    let mut written = Vec::new();
                    c.write(&mut written);
                    assert!(written.len() <= c.size_hint(), "{host:?}");
                    for policy in [
                        ForwardedPolicy::Append,
                        ForwardedPolicy::Replace,
                        ForwardedPolicy::IfNone,
                    ] {
                        let mut h = hm(&[("host", host), ("accept", "*/*")]);
                        let before = h.len();
                        set_forwarded(&mut h, policy, &c);
                        let mut lines = Vec::new();
                        for (n, v) in h.iter().skip(before) {
                            lines.extend_from_slice(n.as_str().as_bytes());
                            lines.extend_from_slice(b": ");
                            lines.extend_from_slice(v.as_bytes());
                            lines.extend_from_slice(b"\r\n");
                        }
                        assert_eq!(
                            String::from_utf8_lossy(&written),
                            String::from_utf8_lossy(&lines),
                            "{policy:?} {host:?} {ip}"
                        );
                    }
                }
            }
        }
        let names = [
            "x-forwarded-for",
            "X-Forwarded-Port",
            "forwarded",
            "x-forwarded-client",
        ];
        for n in names {
            assert!(
                is_forwarded_name(&HeaderName::from_bytes(n.as_bytes()).unwrap()),
                "{n}"
            );
        }
        for n in ["forwarded-for", "x-forwarded", "host"] {
            assert!(!is_forwarded_name(&HeaderName::from_static(n)), "{n}");
        }
    }
}
