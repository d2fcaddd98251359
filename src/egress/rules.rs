//! OpenShift's egress router configuration languages, parsed strictly.
//!
//! `EGRESS_DESTINATION` (redirect mode), one rule per line:
//!
//! ```text
//! # comment
//! 80   tcp 203.0.113.25            # local port 80 → 203.0.113.25:80
//! 8080 tcp 203.0.113.26 80         # local port 8080 → 203.0.113.26:80
//! 5432 tcp db.intranet.example     # host names are resolved per connection
//! 53   udp 203.0.113.53
//! 203.0.113.27                     # fallback: must be the last line
//! ```
//!
//! The fallback IP: OpenShift's iptables egress router sends every port no
//! rule names to it. A user-space gateway cannot listen on every port, so
//! here the fallback serves the ports of `fallback_ports` (config) that no
//! rule claims, each to the same port on the fallback IP, over TCP. A
//! fallback line without `fallback_ports` is an error: it would do nothing.
//!
//! `EGRESS_HTTP_PROXY_DESTINATION` (HTTP proxy mode), one per line: an IP,
//! a CIDR, a host name, `*.domain` (the domain's subdomains), each optionally
//! prefixed with `!` to deny, and `*` (allow everything else) as the last
//! line. First match wins; no match is denied.

use crate::model::ipnet::IpNet;
use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// Where traffic goes: an address or a name resolved when connecting.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(n) => f.write_str(n),
        }
    }
}

/// One forwarding rule: `local_port/proto` → `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    pub local_port: u16,
    pub proto: Proto,
    pub host: Host,
    pub port: u16,
    /// 1-based line in the destinations text (0 for fallback-derived).
    pub line: usize,
}

impl Rule {
    /// `host:port` for logs and metric labels.
    pub fn destination(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// A parsed `EGRESS_DESTINATION`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Destinations {
    pub rules: Vec<Rule>,
    pub fallback: Option<IpAddr>,
}

/// A problem in the text, naming its line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct RuleError {
    pub line: usize,
    pub message: String,
}

/// Lines longer than this are refused (bounds the parser, never reached by
/// a real rule).
const MAX_LINE: usize = 1024;
const MAX_RULES: usize = 4096;

pub fn parse_destinations(text: &str) -> Result<Destinations, RuleError> {
    let mut out = Destinations::default();
    let mut used: BTreeSet<(u16, Proto)> = BTreeSet::new();
    let mut fallback_line = 0;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |message: String| RuleError { line, message };
        if raw.len() > MAX_LINE {
            return Err(err(format!("longer than {MAX_LINE} bytes")));
        }
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        if out.fallback.is_some() {
            return Err(RuleError {
                line: fallback_line,
                message: "fallback IP must be the last line".into(),
            });
        }
        let words: Vec<&str> = content.split_whitespace().collect();
        if words.len() == 1 {
            let ip: IpAddr = words[0].parse().map_err(|_| {
                err(format!(
                    "{:?} is neither a rule (<local port> <tcp|udp> <destination> [<port>]) nor a fallback IP",
                    words[0]
                ))
            })?;
            out.fallback = Some(ip);
            fallback_line = line;
            continue;
        }
        if !(3..=4).contains(&words.len()) {
            return Err(err(format!(
                "expected <local port> <tcp|udp> <destination> [<destination port>], got {content:?}"
            )));
        }
        let local_port = port(words[0]).map_err(|e| err(format!("local port: {e}")))?;
        let proto = match words[1] {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            other => return Err(err(format!("protocol {other:?} is not tcp or udp"))),
        };
        let host = host(words[2]).map_err(err)?;
        let dport = match words.get(3) {
            Some(p) => port(p).map_err(|e| err(format!("destination port: {e}")))?,
            None => local_port,
        };
        if !used.insert((local_port, proto)) {
            return Err(err(format!("localport {local_port} is already used")));
        }
        if out.rules.len() >= MAX_RULES {
            return Err(err(format!("more than {MAX_RULES} rules")));
        }
        out.rules.push(Rule {
            local_port,
            proto,
            host,
            port: dport,
            line,
        });
    }
    Ok(out)
}

fn port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{s:?} is not a port (1-65535)")),
        Ok(p) => Ok(p),
    }
}

fn host(s: &str) -> Result<Host, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(Host::Ip(ip));
    }
    let name = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
    if crate::model::host::is_valid_dns_subdomain(&name, false) {
        Ok(Host::Name(name))
    } else {
        Err(format!("{s:?} is not an IP address or host name"))
    }
}

/// An address literal that did not parse as a network (cannot happen:
/// `IpNet` parses bare addresses); an error rather than a panic.
fn unreachable_ip(pat: &str) -> Result<Pattern, String> {
    Err(format!("{pat:?} is not a valid address"))
}

/// Parse `fallback_ports`: `5432`, `9000-9010`, comma or whitespace
/// separated.
pub fn parse_port_ranges(s: &str) -> Result<Vec<u16>, String> {
    let mut out = BTreeSet::new();
    for part in s.split(|c: char| c == ',' || c.is_whitespace()) {
        if part.is_empty() {
            continue;
        }
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(part)?;
                (p, p)
            }
        };
        if a > b {
            return Err(format!("range {part:?} is backwards"));
        }
        if (b - a) as usize + out.len() > MAX_RULES {
            return Err(format!("more than {MAX_RULES} fallback ports"));
        }
        out.extend(a..=b);
    }
    Ok(out.into_iter().collect())
}

impl Destinations {
    /// Every rule, with the fallback expanded over `fallback_ports` (ports a
    /// TCP rule already uses are skipped).
    pub fn expand(&self, fallback_ports: &[u16]) -> Result<Vec<Rule>, String> {
        let mut rules = self.rules.clone();
        if let Some(ip) = self.fallback {
            if fallback_ports.is_empty() {
                return Err(format!(
                    "fallback IP {ip} given but no fallback_ports configured: a user-space gateway listens only on the ports it is told"
                ));
            }
            for &p in fallback_ports {
                if rules
                    .iter()
                    .any(|r| r.local_port == p && r.proto == Proto::Tcp)
                {
                    continue;
                }
                rules.push(Rule {
                    local_port: p,
                    proto: Proto::Tcp,
                    host: Host::Ip(ip),
                    port: p,
                    line: 0,
                });
            }
        }
        Ok(rules)
    }
}

/// One `EGRESS_HTTP_PROXY_DESTINATION` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Net(IpNet),
    Host(String),
    /// `*.domain`: every name below `domain` (not `domain` itself).
    Suffix(String),
    All,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ProxyRule {
    allow: bool,
    pattern: Pattern,
}

/// The HTTP proxy's destination policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyPolicy {
    rules: Vec<ProxyRule>,
}

pub fn parse_proxy_destinations(text: &str) -> Result<ProxyPolicy, RuleError> {
    let mut rules = Vec::new();
    let mut star_line = 0;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |message: String| RuleError { line, message };
        if raw.len() > MAX_LINE {
            return Err(err(format!("longer than {MAX_LINE} bytes")));
        }
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        if star_line != 0 {
            return Err(RuleError {
                line: star_line,
                message: "\"*\" must be the last line".into(),
            });
        }
        if rules.len() >= MAX_RULES {
            return Err(err(format!("more than {MAX_RULES} rules")));
        }
        let (allow, pat) = match content.strip_prefix('!') {
            Some(rest) => (false, rest.trim()),
            None => (true, content),
        };
        let pattern = if pat == "*" {
            if !allow {
                return Err(err("\"!*\" is the default already; remove it".into()));
            }
            star_line = line;
            Pattern::All
        } else if let Some(d) = pat.strip_prefix("*.") {
            match host(d) {
                Ok(Host::Name(n)) => Pattern::Suffix(n),
                _ => return Err(err(format!("{pat:?} is not *.<domain>"))),
            }
        } else if let Ok(net) = pat.parse::<IpNet>() {
            Pattern::Net(net)
        } else {
            match host(pat) {
                Ok(Host::Name(n)) => Pattern::Host(n),
                Ok(Host::Ip(_)) => unreachable_ip(pat).map_err(err)?,
                Err(e) => return Err(err(e)),
            }
        };
        rules.push(ProxyRule { allow, pattern });
    }
    Ok(ProxyPolicy { rules })
}

impl ProxyPolicy {
    /// Whether a request for `host` (a name or an address literal) is
    /// allowed. `resolved` are the addresses the name resolved to: CIDR
    /// rules also apply to them, so a name cannot be used to reach a denied
    /// network.
    pub fn allows(&self, host: &str, resolved: &[IpAddr]) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let literal: Option<IpAddr> = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok();
        for r in &self.rules {
            let hit = match &r.pattern {
                Pattern::All => true,
                Pattern::Host(h) => *h == host,
                Pattern::Suffix(d) => host.len() > d.len() + 1 && host.ends_with(&format!(".{d}")),
                Pattern::Net(n) => {
                    literal.is_some_and(|ip| n.contains(ip))
                        || resolved.iter().any(|ip| n.contains(*ip))
                }
            };
            // First match wins, as in squid's ACL order: put denied
            // networks first.
            if hit {
                return r.allow;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_as_openshift_writes_them() {
        let d = parse_destinations(
            "# db and web\n80 tcp 203.0.113.25\n8080 tcp 203.0.113.26 80\n\n5432 tcp DB.intranet.example.\n53 udp 203.0.113.53\n53 tcp 203.0.113.53 # same port, other protocol\n203.0.113.27\n",
        )
        .unwrap();
        assert_eq!(d.rules.len(), 5);
        assert_eq!(d.rules[0].port, 80);
        assert_eq!(d.rules[1].destination(), "203.0.113.26:80");
        assert_eq!(d.rules[2].host, Host::Name("db.intranet.example".into()));
        assert_eq!(d.rules[3].proto, Proto::Udp);
        assert_eq!(d.fallback, Some("203.0.113.27".parse().unwrap()));
        let all = d
            .expand(&parse_port_ranges("80-82, 9000").unwrap())
            .unwrap();
        let fb: Vec<u16> = all
            .iter()
            .filter(|r| r.line == 0)
            .map(|r| r.local_port)
            .collect();
        assert_eq!(fb, [81, 82, 9000], "80 is taken by a rule");
        assert!(d.expand(&[]).unwrap_err().contains("fallback_ports"));
    }

    #[test]
    fn errors_name_the_line_as_specified() {
        let e = parse_destinations("80 tcp 203.0.113.25\n80 tcp 203.0.113.26\n").unwrap_err();
        assert_eq!(e.to_string(), "line 2: localport 80 is already used");
        let e = parse_destinations("203.0.113.27\n80 tcp 203.0.113.25\n").unwrap_err();
        assert_eq!(e.to_string(), "line 1: fallback IP must be the last line");
        for (bad, want) in [
            ("80 sctp 1.2.3.4", "protocol"),
            ("0 tcp 1.2.3.4", "local port"),
            ("80 tcp 1.2.3.4 70000", "destination port"),
            ("80 tcp bad_host!", "not an IP address or host name"),
            ("80 tcp", "expected"),
            ("not-an-ip", "neither a rule"),
        ] {
            let e = parse_destinations(bad).unwrap_err();
            assert!(e.to_string().contains(want), "{bad}: {e}");
            assert_eq!(e.line, 1);
        }
        assert!(parse_port_ranges("10-5").is_err());
        assert!(parse_port_ranges("1-65535").is_err(), "bounded");
    }

    #[test]
    fn proxy_policy_first_match_default_deny() {
        let p = parse_proxy_destinations(
            "!10.0.0.0/8\n!*.internal.example.com\nwww.example.com\n*.example.org\n192.0.2.0/24\n",
        )
        .unwrap();
        assert!(p.allows("www.example.com", &[]));
        assert!(p.allows("WWW.EXAMPLE.COM.", &[]));
        assert!(p.allows("api.example.org", &[]));
        assert!(!p.allows("example.org", &[]), "*.d is subdomains only");
        assert!(p.allows("192.0.2.7", &[]));
        assert!(!p.allows("10.1.2.3", &[]));
        assert!(!p.allows("db.internal.example.com", &[]));
        assert!(!p.allows("other.example.net", &[]), "default deny");
        assert!(
            !p.allows("www.example.com", &["10.9.9.9".parse().unwrap()]),
            "a name resolving into a denied network"
        );
        let star = parse_proxy_destinations("!bad.example.com\n*\n").unwrap();
        assert!(star.allows("anything.example.net", &[]));
        assert!(!star.allows("bad.example.com", &[]));
        let e = parse_proxy_destinations("*\nx.example.com\n").unwrap_err();
        assert_eq!(e.to_string(), "line 1: \"*\" must be the last line");
    }
}
