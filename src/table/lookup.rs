//! Host and path matching: exact host before wildcard, longest path first,
//! paths on segment boundaries, as the OpenShift router matches.

use super::{HostRoutes, RouteEntry, RoutingTable};
use std::cmp::Reverse;
use std::sync::Arc;

impl RoutingTable {
    /// The route for a request's Host (as sent: any case, maybe a port or a
    /// trailing dot) and path (no query). Allocation-free.
    pub fn lookup(&self, host: &str, path: &str) -> Option<&Arc<RouteEntry>> {
        let host = crate::model::host::strip(host);
        let mut buf = [0u8; 253];
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            let b = buf.get_mut(..host.len())?;
            b.copy_from_slice(host.as_bytes());
            b.make_ascii_lowercase();
            std::str::from_utf8(b).ok()?
        } else {
            host
        };
        if let Some(r) = self.exact.get(host).and_then(|h| h.find(path)) {
            return Some(r);
        }
        let (_, domain) = host.split_once('.')?;
        self.wildcard.get(domain).and_then(|h| h.find(path))
    }
}

impl HostRoutes {
    fn find(&self, path: &str) -> Option<&Arc<RouteEntry>> {
        self.routes
            .iter()
            .find(|r| path_matches(&r.path, r.path_exact, path))
    }
}

/// Does a route path match a request path? `""` matches everything; `/sub`
/// matches `/sub`, `/sub/`, `/sub/x`, never `/subpar`; a route path ending in
/// `/` needs that slash. Case-sensitive.
pub fn path_matches(route: &str, exact: bool, request: &str) -> bool {
    if route.is_empty() {
        return true;
    }
    if exact {
        return request == route;
    }
    match request.strip_prefix(route) {
        Some(rest) => rest.is_empty() || route.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

/// Sort key: longer paths first, exact before prefix of the same length.
pub fn precedence(r: &RouteEntry) -> (Reverse<usize>, bool) {
    (Reverse(r.path.len()), !r.path_exact)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_boundaries() {
        assert!(path_matches("/sub", false, "/sub"));
        assert!(path_matches("/sub", false, "/sub/"));
        assert!(path_matches("/sub", false, "/sub/x"));
        assert!(!path_matches("/sub", false, "/subpar"));
        assert!(!path_matches("/sub", false, "/"));
        assert!(!path_matches("/Sub", false, "/sub"));
        assert!(path_matches("/sub/", false, "/sub/x"));
        assert!(!path_matches("/sub/", false, "/sub"));
        assert!(path_matches("", false, "/anything"));
        assert!(path_matches("/e", true, "/e"));
        assert!(!path_matches("/e", true, "/e/"));
    }
}
