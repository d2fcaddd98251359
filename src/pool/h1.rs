//! gatehouse's own HTTP/1.1 client, for requests without a body over plain
//! TCP (most traffic: GET, HEAD, bodyless DELETE).
//!
//! With hyper's client every request crossed tasks twice: into the upstream
//! connection's task through its dispatch channel (a 296-byte request and a
//! callback written into a slot per connection), and back through a oneshot
//! and a body channel; every idle connection kept that task, an 8 KiB read
//! buffer, a write buffer and its channel block. With hundreds of upstream
//! connections in flight that state no longer fits in L2 (measured:
//! benches/load, h2 scenario). Here the exchange runs in the request's own
//! task: the head is written with one `send`, the answer read into a buffer
//! taken for this exchange, and the response body is read by whoever polls
//! it; an idle connection is just its socket.
//!
//! Requests with a body, upgrades, TLS and h2c upstreams go through hyper
//! (`super`), which may take over an idle connection made here.

use super::{ExchangeError, Inner, PoolKey, RequestBody};
use crate::table::Endpoint;
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

/// Longest response head (status line and headers) accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Most response headers accepted (hyper's limit too).
const MAX_HEADERS: usize = 100;
/// Longest chunk-size line (with extensions).
const MAX_CHUNK_LINE: usize = 4096;
/// Chunk extensions (ignored) accepted over one body, as hyper's client: a
/// body of 1-byte chunks each with a 4 KiB extension is refused early.
const MAX_CHUNK_EXTENSIONS: usize = 16 * 1024;
/// First read of an exchange; doubled while reads fill it, up to `MAX_READ`.
const FIRST_READ: usize = 8 * 1024;
/// Response heads with up to this many headers note where each sits in a
/// stack array; more (up to `MAX_HEADERS`) in a `Vec`.
const FEW_HEADERS: usize = 24;
const MAX_READ: usize = 256 * 1024;
/// Interim (1xx) responses skipped before the final one.
const MAX_INTERIM: usize = 16;

/// Why an exchange on this client failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("connection closed before a complete response head")]
    Closed,
    #[error("malformed response head: {0}")]
    Parse(String),
    #[error("response head larger than 64 KiB")]
    HeadTooLarge,
    #[error("malformed chunked response body")]
    Chunked,
    #[error("connection closed mid-body")]
    Incomplete,
}

impl H1Error {
    /// Nothing of a response arrived before it (closed, reset).
    fn before_response(&self) -> bool {
        match self {
            H1Error::Closed => true,
            H1Error::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            ),
            _ => false,
        }
    }
}

/// Whether an idle connection was closed (or spoke out of turn) while in
/// the pool. `try_read` looks at the socket only when the I/O driver has
/// seen it become readable since its last read (an idle connection has
/// nothing to say), and unlike `poll_read_ready` it neither spends the
/// task's coop budget (which would answer "not ready" unchecked) nor
/// registers a waker.
pub(crate) fn closed(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    !matches!(stream.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// Header lines a request's head carries after those in its map, written
/// straight into the head (the router's forwarded headers: rendering them
/// costs less than hashing them into the map and out again).
pub trait ExtraHead: std::fmt::Debug + Sync {
    /// At least the bytes `write` appends.
    fn size_hint(&self) -> usize;
    /// Append whole `name: value\r\n` lines.
    fn write(&self, out: &mut Vec<u8>);
}

/// The request head, as HTTP/1.1 sends it (origin-form target, headers in
/// map order, names lowercase as stored, then `extra`'s lines).
pub(crate) fn encode_head<B>(req: &Request<B>, extra: Option<&dyn ExtraHead>) -> Vec<u8> {
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let method = req.method().as_str();
    let len = method.len()
        + target.len()
        + 13
        + req
            .headers()
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 4)
            .sum::<usize>()
        + extra.map_or(0, |e| e.size_hint())
        + 2;
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(e) = extra {
        e.write(&mut out);
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Where the connection goes when the body has been read to its end.
pub(crate) struct Back {
    pub(crate) pool: Arc<Inner>,
    pub(crate) key: PoolKey,
}

/// Send `req` (no body) on `stream` and read the response head. `reused`:
/// the connection came from the pool (a failure before any response byte
/// then most likely means the upstream closed it while idle).
pub(crate) async fn exchange(
    mut stream: TcpStream,
    req: Request<RequestBody>,
    reused: bool,
    endpoint: &Endpoint,
    back: Back,
    extra: Option<&dyn ExtraHead>,
) -> Result<Response<RawBody>, ExchangeError> {
    let head = encode_head(&req, extra);
    // `unsent`: nothing was written; else the request goes back as `sent`
    // (its body dropped), for the handler to send again if it may.
    let err = |e: H1Error, req: Request<RequestBody>, unsent: bool| {
        let before_response = e.before_response();
        let req = Some(req.map(|_| RequestBody::Empty));
        let (unsent, sent) = if unsent { (req, None) } else { (None, req) };
        ExchangeError {
            endpoint: endpoint.to_string(),
            source: Box::new(e),
            stale: reused && before_response,
            before_response,
            unsent,
            sent,
        }
    };
    // A first write that fails wrote nothing: the request may go anywhere.
    let written = match stream.try_write(&head) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(err(e.into(), req, true)),
    };
    if written < head.len() {
        if let Err(e) = stream.write_all(&head[written..]).await {
            return Err(err(e.into(), req, false));
        }
    }
    drop(head);
    let head_only = req.method() == http::Method::HEAD;
    let mut buf = BytesMut::with_capacity(FIRST_READ);
    let mut interim = 0;
    let (parts, framing, keep_alive) = loop {
        // (Nothing read yet on the first turn: no parse of an empty buffer.)
        let parsed = if buf.is_empty() {
            Ok(None)
        } else {
            parse_head(&mut buf, head_only, &mut interim)
        };
        let failed = match parsed {
            Ok(Some(head)) => break head,
            Ok(None) if buf.len() >= MAX_HEAD => H1Error::HeadTooLarge,
            Ok(None) => {
                if buf.capacity() - buf.len() < 1024 {
                    buf.reserve(FIRST_READ);
                }
                match std::future::poll_fn(|cx| {
                    tokio_util::io::poll_read_buf(Pin::new(&mut stream), cx, &mut buf)
                })
                .await
                {
                    Ok(0) => H1Error::Closed,
                    Ok(_) => continue,
                    Err(e) => e.into(),
                }
            }
            Err(e) => e,
        };
        return Err(err(failed, req, false));
    };
    drop(req);
    let mut body = RawBody {
        io: Some(stream),
        buf,
        framing,
        keep_alive,
        back: Some(back),
        next_read: FIRST_READ,
        failed: None,
        ext_left: MAX_CHUNK_EXTENSIONS,
    };
    if body.framing == Framing::Length(0) {
        body.finish();
    }
    Ok(Response::from_parts(parts, body))
}

/// A final response head: its parts, how its body is framed, and whether
/// the connection may be reused after it.
type Head = (http::response::Parts, Framing, bool);

/// Parse the final response head from the front of `buf` (removed from it
/// when complete), skipping interim 1xx ones other than 101 as hyper's
/// client does; `interim` counts them over the exchange (at most
/// `MAX_INTERIM`). `None`: incomplete.
fn parse_head(
    buf: &mut BytesMut,
    head_only: bool,
    interim: &mut usize,
) -> Result<Option<Head>, H1Error> {
    loop {
        // Left uninitialised: httparse writes only the headers it finds
        // (an EMPTY_HEADER array is 3.2 KB of stores per response).
        let mut headers =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut r = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut r,
            buf,
            &mut headers,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(H1Error::Parse(e.to_string())),
        };
        let code = r.code.unwrap_or(0);
        let status = StatusCode::from_u16(code)
            .map_err(|_| H1Error::Parse(format!("status code {code}")))?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            if *interim >= MAX_INTERIM {
                return Err(H1Error::Parse("too many interim responses".into()));
            }
            *interim += 1;
            buf.advance(len);
            continue;
        }
        let version = if r.version == Some(1) {
            Version::HTTP_11
        } else {
            Version::HTTP_10
        };
        // Where each header's name and value sit in the head, so the values
        // can share its bytes instead of being copied one by one.
        // (On the stack for the usual few headers, not zeroed for all 100.)
        let base = buf.as_ptr() as usize;
        let n = r.headers.len();
        let mut few = [(0u32, 0u32, 0u32, 0u32); FEW_HEADERS];
        let mut many = Vec::new();
        let at = if n <= FEW_HEADERS {
            &mut few[..n]
        } else {
            many.resize(n, (0, 0, 0, 0));
            &mut many[..]
        };
        for (slot, h) in at.iter_mut().zip(r.headers.iter()) {
            let name = h.name.as_ptr() as usize - base;
            let value = h.value.as_ptr() as usize - base;
            *slot = (
                name as u32,
                (name + h.name.len()) as u32,
                value as u32,
                (value + h.value.len()) as u32,
            );
        }
        let head = buf.split_to(len).freeze();
        let mut map = HeaderMap::with_capacity(n);
        let mut seen = Seen::default();
        for &(n0, n1, v0, v1) in at.iter() {
            let name = header_name(&head[n0 as usize..n1 as usize])
                .ok_or_else(|| H1Error::Parse("invalid header name".into()))?;
            let value = HeaderValue::from_maybe_shared(head.slice(v0 as usize..v1 as usize))
                .map_err(|_| H1Error::Parse("invalid header value".into()))?;
            if seen.note(&name, value.as_bytes()) {
                map.append(name, value);
            }
        }
        let (framing, keep_alive) = framing(&seen, &mut map, status, version, head_only)?;
        let mut parts = Response::new(()).into_parts().0;
        parts.status = status;
        parts.version = version;
        parts.headers = map;
        return Ok(Some((parts, framing, keep_alive)));
    }
}

/// A response header's name. The names servers send most, spelled as they
/// send them (canonical case, or lower case), are matched whole: that is a
/// length switch and a compare or two, where `HeaderName::from_bytes`
/// lower-cases the name into a buffer and then looks it up among every
/// standard header (~140 instructions each; five headers from nginx).
fn header_name(name: &[u8]) -> Option<HeaderName> {
    use http::header::*;
    let known = match name {
        b"Date" | b"date" => DATE,
        b"Server" | b"server" => SERVER,
        b"Content-Type" | b"content-type" => CONTENT_TYPE,
        b"Content-Length" | b"content-length" => CONTENT_LENGTH,
        b"Connection" | b"connection" => CONNECTION,
        b"Transfer-Encoding" | b"transfer-encoding" => TRANSFER_ENCODING,
        b"Cache-Control" | b"cache-control" => CACHE_CONTROL,
        b"Last-Modified" | b"last-modified" => LAST_MODIFIED,
        b"ETag" | b"Etag" | b"etag" => ETAG,
        b"Accept-Ranges" | b"accept-ranges" => ACCEPT_RANGES,
        b"Set-Cookie" | b"set-cookie" => SET_COOKIE,
        b"Location" | b"location" => LOCATION,
        b"Vary" | b"vary" => VARY,
        b"Expires" | b"expires" => EXPIRES,
        b"Content-Encoding" | b"content-encoding" => CONTENT_ENCODING,
        _ => return HeaderName::from_bytes(name).ok(),
    };
    Some(known)
}

/// What a head's headers say about framing and reuse, noted as they are
/// read (one pass; looking each up in the map afterwards was three hash
/// lookups per response).
#[derive(Default)]
struct Seen {
    /// `Connection` tokens.
    close: bool,
    keep: bool,
    /// A `Transfer-Encoding`, and whether its last coding is chunked.
    coded: bool,
    chunked: bool,
    length: Option<u64>,
    bad_length: Option<&'static str>,
}

impl Seen {
    /// Note what the header says; `false` when it has no business beyond
    /// this hop and nothing else to say: a `Connection` of only `close` and
    /// `keep-alive` (the one hop-by-hop header most upstreams send, left
    /// out of the map instead of hashed in and removed again).
    fn note(&mut self, name: &HeaderName, value: &[u8]) -> bool {
        if name == http::header::CONNECTION {
            let mut names_others = false;
            for t in value.split(|&b| b == b',') {
                let t = t.trim_ascii();
                let close = t.eq_ignore_ascii_case(b"close");
                let keep = t.eq_ignore_ascii_case(b"keep-alive");
                self.close |= close;
                self.keep |= keep;
                names_others |= !(close || keep || t.is_empty());
            }
            return names_others;
        } else if name == http::header::TRANSFER_ENCODING {
            // The last header's last coding decides.
            self.coded = true;
            self.chunked = value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name == http::header::CONTENT_LENGTH {
            for part in value.split(|&b| b == b',') {
                let part = part.trim_ascii();
                // Digits only (`+5` parses as a u64 but is no length).
                let n = (!part.is_empty() && part.iter().all(u8::is_ascii_digit))
                    .then(|| std::str::from_utf8(part).ok()?.parse::<u64>().ok())
                    .flatten();
                match n {
                    None => self.bad_length = Some("invalid content-length"),
                    Some(n) if self.length.is_some_and(|l| l != n) => {
                        self.bad_length = Some("conflicting content-length")
                    }
                    Some(n) => self.length = Some(n),
                }
            }
        }
        true
    }
}

/// How the body is delimited (RFC 9112 §6.3), and whether the connection
/// may carry another request afterwards.
fn framing(
    seen: &Seen,
    headers: &mut HeaderMap,
    status: StatusCode,
    version: Version,
    head_only: bool,
) -> Result<(Framing, bool), H1Error> {
    // `close` wins wherever it appears; HTTP/1.0 keeps the connection only
    // when asked to.
    let mut keep_alive = !seen.close && (version == Version::HTTP_11 || seen.keep);
    if status == StatusCode::SWITCHING_PROTOCOLS {
        // Not asked for (upgrades go through hyper): nothing more on it.
        return Ok((Framing::Length(0), false));
    }
    if head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((Framing::Length(0), keep_alive));
    }
    if seen.coded {
        if headers.remove(http::header::CONTENT_LENGTH).is_some() || version == Version::HTTP_10 {
            // Both: the length is ignored, and the connection is not
            // trusted with another request (RFC 9112 §6.3, smuggling);
            // nor after a transfer coding from HTTP/1.0, which has none
            // (§6.1).
            keep_alive = false;
        }
        return Ok(if seen.chunked {
            (Framing::Chunked(Chunked::Size), keep_alive)
        } else {
            (Framing::Close, false)
        });
    }
    if let Some(e) = seen.bad_length {
        return Err(H1Error::Parse(e.into()));
    }
    Ok(match seen.length {
        Some(n) => (Framing::Length(n), keep_alive),
        None => (Framing::Close, false),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// This many bytes still to come.
    Length(u64),
    Chunked(Chunked),
    /// Until the upstream closes.
    Close,
    /// Read to its end.
    Done,
    /// Broken off: the error is (or was) the body's last frame.
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunked {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
}

/// What the chunked decoder can give from the bytes at hand.
enum Step {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    More,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `ext_left`: the body's remaining allowance of chunk-extension bytes.
fn chunk_step(
    state: &mut Chunked,
    buf: &mut BytesMut,
    ext_left: &mut usize,
) -> Result<Step, H1Error> {
    loop {
        match *state {
            Chunked::Size => {
                let Some(eol) = find(&buf[..buf.len().min(MAX_CHUNK_LINE)], b"\r\n") else {
                    return if buf.len() >= MAX_CHUNK_LINE {
                        Err(H1Error::Chunked)
                    } else {
                        Ok(Step::More)
                    };
                };
                let line = &buf[..eol];
                // Extensions are skipped, but a bare CR or LF or another
                // control byte in them is no chunk line.
                if line.iter().any(|&b| b < 0x20 && b != b'\t' || b == 0x7f) {
                    return Err(H1Error::Chunked);
                }
                // The size, then any extensions (ignored, but counted).
                let semi = line.iter().position(|&b| b == b';').unwrap_or(line.len());
                *ext_left = ext_left
                    .checked_sub(line.len() - semi)
                    .ok_or(H1Error::Chunked)?;
                let digits = line[..semi].trim_ascii();
                if digits.is_empty() {
                    return Err(H1Error::Chunked);
                }
                let mut n: u64 = 0;
                for &d in digits {
                    let v = (d as char).to_digit(16).ok_or(H1Error::Chunked)?;
                    n = n
                        .checked_mul(16)
                        .and_then(|n| n.checked_add(u64::from(v)))
                        .ok_or(H1Error::Chunked)?;
                }
                buf.advance(eol + 2);
                *state = if n == 0 {
                    Chunked::Trailers
                } else {
                    Chunked::Data(n)
                };
            }
            Chunked::Data(rem) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let k = rem.min(buf.len() as u64);
                let data = buf.split_to(k as usize).freeze();
                *state = if k == rem {
                    Chunked::DataEnd
                } else {
                    Chunked::Data(rem - k)
                };
                return Ok(Step::Data(data));
            }
            Chunked::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Step::More);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(H1Error::Chunked);
                }
                buf.advance(2);
                *state = Chunked::Size;
            }
            Chunked::Trailers => {
                if buf.starts_with(b"\r\n") {
                    buf.advance(2);
                    return Ok(Step::End);
                }
                let Some(end) = find(&buf[..buf.len().min(MAX_HEAD)], b"\r\n\r\n") else {
                    return if buf.len() >= MAX_HEAD {
                        Err(H1Error::Chunked)
                    } else {
                        Ok(Step::More)
                    };
                };
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut map = HeaderMap::new();
                if let Ok(httparse::Status::Complete((_, hs))) =
                    httparse::parse_headers(&buf[..end + 4], &mut headers)
                {
                    for h in hs {
                        if let (Ok(n), Ok(v)) = (
                            HeaderName::from_bytes(h.name.as_bytes()),
                            HeaderValue::from_bytes(h.value),
                        ) {
                            map.append(n, v);
                        }
                    }
                } else {
                    return Err(H1Error::Chunked);
                }
                buf.advance(end + 4);
                return Ok(Step::Trailers(map));
            }
        }
    }
}

/// A response body read from the upstream connection by whoever polls it
/// (the client's connection task). At its end the connection goes back to
/// the pool, when the upstream allows and sent nothing past the response.
pub struct RawBody {
    io: Option<TcpStream>,
    buf: BytesMut,
    framing: Framing,
    keep_alive: bool,
    back: Option<Back>,
    next_read: usize,
    /// An error held back for one poll (see [`RawBody::poll_frame`]).
    failed: Option<H1Error>,
    /// Chunk-extension bytes still accepted (`MAX_CHUNK_EXTENSIONS`).
    ext_left: usize,
}

impl std::fmt::Debug for RawBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawBody")
            .field("framing", &self.framing)
            .finish()
    }
}

impl RawBody {
    /// The body has been read to its end: give the connection back.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        let io = self.io.take();
        if let (Some(io), Some(back), true, true) =
            (io, self.back.take(), self.keep_alive, self.buf.is_empty())
        {
            back.pool.put_idle(&back.key, super::Idle::Raw(io));
        }
        self.buf = BytesMut::new();
    }

    /// The next frame. An error is held back for one poll, with a wake-up:
    /// what the body already gave sits in the client connection's write
    /// buffer, and hyper drops that buffer when a body fails. Answering
    /// `Pending` first lets it flush, so the client gets the head and the
    /// bytes that came before the break, then the abort (as with hyper's
    /// client, whose body crossed tasks and so always paused).
    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        if let Some(e) = self.failed.take() {
            return Poll::Ready(Some(Err(e)));
        }
        match self.poll_read_frame(cx) {
            Poll::Ready(Some(Err(e))) => {
                self.failed = Some(e);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            other => other,
        }
    }

    fn poll_read_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        loop {
            match &mut self.framing {
                Framing::Done | Framing::Failed => return Poll::Ready(None),
                Framing::Length(0) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(rem) if !self.buf.is_empty() => {
                    let k = (*rem).min(self.buf.len() as u64);
                    *rem -= k;
                    let data = self.buf.split_to(k as usize).freeze();
                    if *rem == 0 {
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Length(_) => {}
                Framing::Chunked(state) => {
                    match chunk_step(state, &mut self.buf, &mut self.ext_left) {
                        Ok(Step::Data(d)) => return Poll::Ready(Some(Ok(Frame::data(d)))),
                        Ok(Step::Trailers(t)) => {
                            self.finish();
                            return Poll::Ready(Some(Ok(Frame::trailers(t))));
                        }
                        Ok(Step::End) => {
                            self.finish();
                            return Poll::Ready(None);
                        }
                        Ok(Step::More) => {}
                        Err(e) => {
                            self.fail();
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                }
                Framing::Close if !self.buf.is_empty() => {
                    let data = self.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Close => {}
            }
            let Some(io) = self.io.as_mut() else {
                return Poll::Ready(None);
            };
            // The rest of a known length that fits in one read is read at
            // once (a 64 KiB body: one read after the head's, not four);
            // beyond that, reads grow as they fill.
            let want = match self.framing {
                Framing::Length(rem) if rem <= MAX_READ as u64 => rem as usize,
                _ => self.next_read,
            };
            if self.buf.capacity() - self.buf.len() < want.div_ceil(2) {
                self.buf.reserve(want);
            }
            let room = self.buf.capacity() - self.buf.len();
            match std::task::ready!(tokio_util::io::poll_read_buf(
                Pin::new(io),
                cx,
                &mut self.buf
            )) {
                Ok(0) if self.framing == Framing::Close => {
                    self.framing = Framing::Done;
                    self.io = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    self.fail();
                    return Poll::Ready(Some(Err(H1Error::Incomplete)));
                }
                Ok(n) => {
                    // A read that filled its room: the body is large, read
                    // more at once (fewer syscalls, fewer frames).
                    if n == room && self.next_read < MAX_READ {
                        self.next_read *= 2;
                    }
                }
                Err(e) => {
                    self.fail();
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn fail(&mut self) {
        self.framing = Framing::Failed;
        self.io = None;
        self.back = None;
        self.buf = BytesMut::new();
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done | Framing::Length(0))
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            Framing::Chunked(_) | Framing::Close | Framing::Failed => SizeHint::default(),
        }
    }
}

/// A response as this client reads it, from bytes at hand (no I/O): the
/// final status and the body decoded from what `data` holds. `None`: the
/// head is incomplete. For fuzzing the parsers with upstream bytes.
#[doc(hidden)]
pub fn decode_response(data: &[u8], head_only: bool) -> Result<Option<(u16, Vec<u8>)>, H1Error> {
    let mut buf = BytesMut::from(data);
    let Some((parts, framing, _)) = parse_head(&mut buf, head_only, &mut 0)? else {
        return Ok(None);
    };
    let mut body = Vec::new();
    match framing {
        Framing::Length(n) => {
            body.extend_from_slice(&buf[..buf.len().min(n.try_into().unwrap_or(usize::MAX))])
        }
        Framing::Chunked(mut st) => {
            let mut ext_left = MAX_CHUNK_EXTENSIONS;
            while let Step::Data(d) = chunk_step(&mut st, &mut buf, &mut ext_left)? {
                body.extend_from_slice(&d);
            }
        }
        Framing::Close => body.extend_from_slice(&buf),
        Framing::Done | Framing::Failed => {}
    }
    Ok(Some((parts.status.as_u16(), body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_names_match_what_http_parses_in_any_spelling() {
        for name in [
            "Date",
            "date",
            "DATE",
            "Server",
            "Content-Type",
            "content-type",
            "CONTENT-LENGTH",
            "Content-length",
            "Connection",
            "transfer-encoding",
            "ETag",
            "Etag",
            "Vary",
            "X-Request-Id",
            "x-custom",
            "Keep-Alive",
            "Set-Cookie",
            "content-encoding",
        ] {
            let expect = HeaderName::from_bytes(name.as_bytes()).unwrap();
            assert_eq!(header_name(name.as_bytes()), Some(expect), "{name}");
        }
        for bad in ["", "Bad Name", "Dat\u{e9}", "a:b", "Content-Type\0"] {
            assert_eq!(header_name(bad.as_bytes()), None, "{bad:?}");
        }
    }

    fn chunks(input: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>, bool), H1Error> {
        let mut buf = BytesMut::from(input);
        let mut st = Chunked::Size;
        let mut ext_left = MAX_CHUNK_EXTENSIONS;
        let (mut data, mut trailers) = (Vec::new(), None);
        loop {
            match chunk_step(&mut st, &mut buf, &mut ext_left)? {
                Step::Data(d) => data.extend_from_slice(&d),
                Step::Trailers(t) => {
                    trailers = Some(t);
                    return Ok((data, trailers, true));
                }
                Step::End => return Ok((data, trailers, true)),
                Step::More => return Ok((data, trailers, false)),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let (d, t, end) = chunks(b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n").unwrap();
        assert_eq!(
            (d.as_slice(), t.is_none(), end),
            (&b"hello world"[..], true, true)
        );
        let (d, t, end) = chunks(b"3\r\nabc\r\n0\r\nx-sum: 9\r\n\r\n").unwrap();
        assert_eq!((d.as_slice(), end), (&b"abc"[..], true));
        assert_eq!(t.unwrap()["x-sum"], "9");
        // Cut anywhere: more is needed, nothing is lost.
        let (d, _, end) = chunks(b"A\r\n01234").unwrap();
        assert_eq!((d.as_slice(), end), (&b"01234"[..], false));
        assert!(chunks(b"zz\r\n").is_err(), "not hex");
        assert!(chunks(b"3\r\nabcX\r\n").is_err(), "no CRLF after the data");
        assert!(chunks(b"ffffffffffffffffff\r\n").is_err(), "size overflows");
        let (d, ..) = chunks(b"0000000000000003\r\nabc\r\n0\r\n\r\n").unwrap();
        assert_eq!(d, b"abc", "leading zeros are fine");
        assert!(
            chunks(b"5;a\nb\r\nhello\r\n").is_err(),
            "LF inside an extension"
        );
        // 1-byte chunks with 1 KiB extensions: refused past 16 KiB of them.
        let ext = format!(";{}", "e".repeat(1023));
        let many: String = (0..20).map(|_| format!("1{ext}\r\nx\r\n")).collect();
        assert!(
            chunks(many.as_bytes()).is_err(),
            "extension allowance spent"
        );
        let few: String = (0..15).map(|_| format!("1{ext}\r\nx\r\n")).collect();
        assert_eq!(chunks(few.as_bytes()).unwrap().0.len(), 15, "within it");
        assert!(chunks(&[b'1'; 5000]).is_err(), "endless size line");
    }

    fn head(
        input: &[u8],
        head_only: bool,
    ) -> Result<(http::response::Parts, Framing, bool), H1Error> {
        let mut buf = BytesMut::from(input);
        parse_head(&mut buf, head_only, &mut 0)?.ok_or(H1Error::Closed)
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let (p, f, k) = head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!((p.status, f, k), (StatusCode::OK, Framing::Length(5), true));
        assert_eq!(p.headers["x-a"], "b");
        let (_, f, k) = head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true).unwrap();
        assert_eq!((f, k), (Framing::Length(0), true), "HEAD: no body");
        let (_, f, k) = head(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!((f, k), (Framing::Length(0), true));
        let (p, f, k) = head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(
            (f, k),
            (Framing::Chunked(Chunked::Size), false),
            "TE wins, no reuse"
        );
        assert!(!p.headers.contains_key("content-length"));
        let (_, f, k) = head(b"HTTP/1.1 200 OK\r\n\r\n", false).unwrap();
        assert_eq!((f, k), (Framing::Close, false), "no length: until close");
        let (_, f, k) = head(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false).unwrap();
        assert_eq!((f, k), (Framing::Length(1), false), "1.0 closes by default");
        let (_, _, k) = head(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(k);
        let (_, _, k) = head(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(!k);
        let (p, ..) = head(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(
            p.status,
            StatusCode::CREATED,
            "interim responses are skipped"
        );
        assert!(head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            false
        )
        .is_err());
        assert!(head(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", false).is_err());
        assert!(head(b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n", false).is_err());
        let (_, _, k) = head(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(!k, "close wins");
        // `Connection` of only close / keep-alive never reaches the map;
        // one that names a header stays, for the handler to strip both.
        let (p, _, k) = head(
            b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, ,\r\nX-A: b\r\nContent-Length: 1\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(k);
        assert!(!p.headers.contains_key("connection"), "{:?}", p.headers);
        assert_eq!(p.headers["x-a"], "b");
        let (p, _, k) = head(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, x-a\r\nX-A: b\r\nContent-Length: 1\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(k);
        assert_eq!(p.headers["connection"], "keep-alive, x-a");
        let (f, k) = head(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\nContent-Length: 1\r\n\r\n",
            false,
        )
        .map(|(p, f, k)| {
            assert!(!p.headers.contains_key("connection"));
            (f, k)
        })
        .unwrap();
        assert_eq!((f, k), (Framing::Length(1), false));
        let (_, f, k) = head(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        )
        .unwrap();
        assert_eq!(
            (f, k),
            (Framing::Chunked(Chunked::Size), false),
            "1.0 with a coding: no reuse"
        );
        assert!(head(b"HTTP/1.1 999x OK\r\n\r\n", false).is_err());
        assert!(head(b"garbage\r\n\r\n", false).is_err());
        assert!(
            matches!(
                head(b"HTTP/1.1 200 OK\r\nContent-", false),
                Err(H1Error::Closed)
            ),
            "partial"
        );
    }

    #[test]
    fn the_head_is_origin_form_http_1_1() {
        let req = Request::builder()
            .method("GET")
            .uri("/a?b=c")
            .header("host", "example.com")
            .header("x-forwarded-for", "10.0.0.1")
            .body(())
            .unwrap();
        assert_eq!(
            encode_head(&req, None),
            b"GET /a?b=c HTTP/1.1\r\nhost: example.com\r\nx-forwarded-for: 10.0.0.1\r\n\r\n"
        );
        #[derive(Debug)]
        struct Via;
        impl ExtraHead for Via {
            fn size_hint(&self) -> usize {
                12
            }
            fn write(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(b"via: 1.1 g\r\n");
            }
        }
        assert_eq!(
            encode_head(&req, Some(&Via)),
            b"GET /a?b=c HTTP/1.1\r\nhost: example.com\r\nx-forwarded-for: 10.0.0.1\r\nvia: 1.1 g\r\n\r\n"
        );
    }
}
