//! Host names as the router compares them.

/// Lowercase, drop a `:port` and a trailing dot. Returns `None` for hosts
/// that cannot be normalised (empty after stripping).
pub fn normalize(host: &str) -> Option<String> {
    let h = strip(host);
    if h.is_empty() {
        return None;
    }
    Some(h.to_ascii_lowercase())
}

/// Port and trailing dot stripped, case untouched (for the request path,
/// which lowercases only when it must).
pub fn strip(host: &str) -> &str {
    let mut h = host.trim();
    if let Some(i) = h.rfind(':') {
        // "name:port" or "[v6]:port"; a bare IPv6 literal has no brackets in Host.
        let port_only = h[i + 1..].bytes().all(|b| b.is_ascii_digit());
        if port_only && (!h[..i].contains(':') || (h.starts_with('[') && h[..i].ends_with(']'))) {
            h = &h[..i];
        }
    }
    h.strip_suffix('.').unwrap_or(h)
}

/// A DNS-1123 subdomain: labels of `[a-z0-9-]`, 1..=63 long, not starting or
/// ending with `-`, at most 253 in all. `allow_star_first` accepts `*` as
/// the first label (a wildcard route written as `*.example.com`).
pub fn is_valid_dns_subdomain(host: &str, allow_star_first: bool) -> bool {
    if host.is_empty() || host.len() > 253 {
        return false;
    }
    for (i, label) in host.split('.').enumerate() {
        if i == 0 && allow_star_first && label == "*" {
            continue;
        }
        let b = label.as_bytes();
        if b.is_empty() || b.len() > 63 {
            return false;
        }
        if !b
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        {
            return false;
        }
        if b[0] == b'-' || b[b.len() - 1] == b'-' {
            return false;
        }
    }
    true
}

/// The domain a one-label wildcard covers: `www.example.com` → `example.com`.
pub fn parent_domain(host: &str) -> Option<&str> {
    let (_, rest) = host.split_once('.')?;
    if rest.is_empty() {
        None
    } else {
        Some(rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        assert_eq!(
            normalize("WWW.Example.COM.").as_deref(),
            Some("www.example.com")
        );
        assert_eq!(normalize("a.b:8080").as_deref(), Some("a.b"));
        assert_eq!(normalize("a.b.:80").as_deref(), Some("a.b"));
        assert_eq!(normalize("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(normalize(""), None);
        assert_eq!(normalize(":80"), None);
    }

    #[test]
    fn validates_dns() {
        assert!(is_valid_dns_subdomain("www.example.com", false));
        assert!(is_valid_dns_subdomain("a-b.c1", false));
        assert!(!is_valid_dns_subdomain("-a.b", false));
        assert!(!is_valid_dns_subdomain("a..b", false));
        assert!(!is_valid_dns_subdomain("a_b.c", false));
        assert!(!is_valid_dns_subdomain("*.b.c", false));
        assert!(is_valid_dns_subdomain("*.b.c", true));
        assert!(!is_valid_dns_subdomain(&"a".repeat(64), false));
        assert!(!is_valid_dns_subdomain(&"a.".repeat(130), false));
    }

    #[test]
    fn parent() {
        assert_eq!(parent_domain("www.example.com"), Some("example.com"));
        assert_eq!(parent_domain("com"), None);
    }
}
