//! Kubernetes label selectors (`--route-selector`, `--namespace-selector`,
//! `ROUTE_LABELS`, `NAMESPACE_LABELS`) and the shard they define.
//!
//! Syntax as `kubectl -l` and the API server's `labelSelector` take it:
//! comma-separated requirements, each one of `k=v`, `k==v`, `k!=v`,
//! `k in (a,b)`, `k notin (a,b)`, `k` (exists) and `!k` (does not exist).
//! Parsing is bounded and never panics; errors name the offending part.

use std::collections::BTreeMap;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

/// A parsed label selector. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    reqs: Vec<Requirement>,
    /// The text as given (normalised whitespace), for the API server.
    text: String,
}

/// Selectors longer than this are refused (the API server's own limits are
/// far below it; this only bounds the parser).
const MAX_LEN: usize = 8192;

impl Selector {
    /// Parse `text`; empty or blank text is the match-everything selector.
    pub fn parse(text: &str) -> Result<Selector, String> {
        if text.len() > MAX_LEN {
            return Err(format!("selector longer than {MAX_LEN} bytes"));
        }
        let mut reqs = Vec::new();
        for part in split_top(text)? {
            let part = part.trim();
            if part.is_empty() {
                if text.trim().is_empty() {
                    continue;
                }
                return Err(format!("empty requirement in {text:?}"));
            }
            reqs.push(requirement(part)?);
        }
        let text = reqs.iter().map(|r| r.to_string()).collect::<Vec<_>>();
        Ok(Selector {
            reqs,
            text: text.join(","),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Whether an object with these labels is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.reqs.iter().all(|r| {
            let v = labels.get(&r.key);
            match &r.op {
                Op::Eq(x) => v == Some(x),
                Op::NotEq(x) => v != Some(x),
                Op::In(xs) => v.is_some_and(|v| xs.contains(v)),
                Op::NotIn(xs) => !v.is_some_and(|v| xs.contains(v)),
                Op::Exists => v.is_some(),
                Op::DoesNotExist => v.is_none(),
            }
        })
    }
}

impl fmt::Display for Selector {
    /// The canonical form, as the API server's `labelSelector` takes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = &self.key;
        match &self.op {
            Op::Eq(v) => write!(f, "{k}={v}"),
            Op::NotEq(v) => write!(f, "{k}!={v}"),
            Op::In(vs) => write!(f, "{k} in ({})", vs.join(",")),
            Op::NotIn(vs) => write!(f, "{k} notin ({})", vs.join(",")),
            Op::Exists => write!(f, "{k}"),
            Op::DoesNotExist => write!(f, "!{k}"),
        }
    }
}

/// Split on commas outside parentheses.
fn split_top(text: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0u32, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => {
                depth += 1;
                if depth > 1 {
                    return Err(format!("nested parentheses in {text:?}"));
                }
            }
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| format!("unbalanced ')' in {text:?}"))?;
            }
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("unclosed '(' in {text:?}"));
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn requirement(part: &str) -> Result<Requirement, String> {
    if let Some(k) = part.strip_prefix('!') {
        let key = key(k.trim())?;
        return Ok(Requirement {
            key,
            op: Op::DoesNotExist,
        });
    }
    for (sep, ctor) in [
        ("!=", Op::NotEq as fn(String) -> Op),
        ("==", Op::Eq),
        ("=", Op::Eq),
    ] {
        if let Some((k, v)) = part.split_once(sep) {
            return Ok(Requirement {
                key: key(k.trim())?,
                op: ctor(value(v.trim())?),
            });
        }
    }
    // `k in (…)` / `k notin (…)`: the key is the first word.
    let (k, rest) = match part.find(char::is_whitespace) {
        Some(i) => (&part[..i], part[i..].trim_start()),
        None => (part, ""),
    };
    let key = key(k)?;
    if rest.is_empty() {
        return Ok(Requirement {
            key,
            op: Op::Exists,
        });
    }
    let (word, set) = match rest.find(|c: char| c.is_whitespace() || c == '(') {
        Some(i) => (&rest[..i], rest[i..].trim()),
        None => (rest, ""),
    };
    let values = set
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| format!("expected (values) after {word:?} in {part:?}"))?;
    let values = values
        .split(',')
        .map(|v| value(v.trim()))
        .collect::<Result<Vec<_>, _>>()?;
    let op = match word {
        "in" => Op::In(values),
        "notin" => Op::NotIn(values),
        other => return Err(format!("unknown operator {other:?} in {part:?}")),
    };
    Ok(Requirement { key, op })
}

/// A label key: optional DNS-subdomain prefix and `/`, then a name of at most
/// 63 characters.
fn key(k: &str) -> Result<String, String> {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix {
        let ok = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !ok {
            return Err(format!("invalid label key prefix {p:?}"));
        }
    }
    if name.is_empty() || !is_name(name) {
        return Err(format!("invalid label key {k:?}"));
    }
    Ok(k.to_owned())
}

/// A label value: empty, or a name of at most 63 characters.
fn value(v: &str) -> Result<String, String> {
    if v.is_empty() || is_name(v) {
        Ok(v.to_owned())
    } else {
        Err(format!("invalid label value {v:?}"))
    }
}

fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() <= 63
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Which routes this router serves: those whose labels match `routes` and
/// whose namespace's labels match `namespaces` (OpenShift's ROUTE_LABELS and
/// NAMESPACE_LABELS).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shard {
    pub routes: Selector,
    pub namespaces: Selector,
}

impl Shard {
    pub fn is_everything(&self) -> bool {
        self.routes.is_empty() && self.namespaces.is_empty()
    }

    /// `ns_labels` is `None` when the Namespace object is unknown: then only
    /// a selector that matches an empty label set selects it.
    pub fn selects(
        &self,
        labels: &BTreeMap<String, String>,
        ns_labels: Option<&BTreeMap<String, String>>,
    ) -> bool {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.routes.matches(labels) && self.namespaces.matches(ns_labels.unwrap_or(&EMPTY))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_operator() {
        let s = Selector::parse("env in (dmz, prod), tier!=db,!legacy, team,zone==a").unwrap();
        assert_eq!(
            s.to_string(),
            "env in (dmz,prod),tier!=db,!legacy,team,zone=a"
        );
        let ok = labels(&[("env", "dmz"), ("team", "x"), ("zone", "a")]);
        assert!(s.matches(&ok));
        let mut l = ok.clone();
        l.insert("legacy".into(), "".into());
        assert!(!s.matches(&l), "!legacy");
        let mut l = ok.clone();
        l.insert("tier".into(), "db".into());
        assert!(!s.matches(&l), "tier!=db");
        let mut l = ok.clone();
        l.remove("team");
        assert!(!s.matches(&l), "team exists");
        let mut l = ok.clone();
        l.insert("env".into(), "intranet".into());
        assert!(!s.matches(&l), "env in");
        let n = Selector::parse("env notin (dmz)").unwrap();
        assert!(n.matches(&labels(&[])));
        assert!(n.matches(&labels(&[("env", "x")])));
        assert!(!n.matches(&labels(&[("env", "dmz")])));
        assert!(Selector::parse("").unwrap().matches(&labels(&[])));
        assert!(Selector::parse("  ").unwrap().is_empty());
        let p = Selector::parse("example.com/shard=dmz").unwrap();
        assert!(p.matches(&labels(&[("example.com/shard", "dmz")])));
    }

    #[test]
    fn bad_selectors_are_errors_not_panics() {
        for bad in [
            "env in dmz",
            "env in (dmz",
            "env)",
            "env in ((a))",
            "a,,b",
            "env=bad value",
            "-env=x",
            "env between (a)",
            "Exa_mple/x=y",
            "x=",
            "=x",
            "!",
            "é=1",
        ] {
            match Selector::parse(bad) {
                Err(e) => assert!(!e.is_empty()),
                Ok(s) if bad == "x=" => assert!(s.matches(&labels(&[("x", "")]))),
                Ok(s) => panic!("{bad:?} parsed as {s:?}"),
            }
        }
    }

    #[test]
    fn shard_needs_both() {
        let shard = Shard {
            routes: Selector::parse("type=public").unwrap(),
            namespaces: Selector::parse("zone=dmz").unwrap(),
        };
        let r = labels(&[("type", "public")]);
        assert!(shard.selects(&r, Some(&labels(&[("zone", "dmz")]))));
        assert!(!shard.selects(&r, Some(&labels(&[("zone", "intranet")]))));
        assert!(!shard.selects(&r, None));
        assert!(!shard.selects(&labels(&[]), Some(&labels(&[("zone", "dmz")]))));
        assert!(Shard::default().selects(&labels(&[]), None));
    }
}
