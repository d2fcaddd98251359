//! Responses the router writes itself: short, plain text, one line that says
//! what happened (the OpenShift router's 503 page is a full HTML page; a line
//! is friendlier to curl and to logs).

use super::body::ProxyBody;
use http::{header, HeaderValue, Response, StatusCode};

/// A local error or notice response.
pub fn text(status: StatusCode, detail: &str) -> Response<ProxyBody> {
    let body = format!(
        "{} {}: {detail}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut r = Response::new(ProxyBody::local(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// 302 to the same URL over https, port dropped (as the OpenShift router).
pub fn redirect_https(host: &str, path_and_query: &str) -> Response<ProxyBody> {
    let host = crate::model::host::strip(host);
    let mut r = text(StatusCode::FOUND, "this route is served over https");
    match HeaderValue::try_from(format!("https://{host}{path_and_query}")) {
        Ok(v) => {
            r.headers_mut().insert(header::LOCATION, v);
        }
        Err(_) => return text(StatusCode::BAD_REQUEST, "host cannot be redirected"),
    }
    r
}

/// A local error after which the client connection is closed (the request
/// cannot be trusted to have ended where it seems to).
pub fn close(status: StatusCode, detail: &str) -> Response<ProxyBody> {
    let mut r = text(status, detail);
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}
