//! The HTTPS listener: peek the ClientHello, then either splice the raw
//! connection to a passthrough route's endpoint or terminate TLS and serve
//! HTTP over it.

use super::client_hello::{self, Peek, MAX_HELLO};
use super::server::ServerTls;
use super::PrefixedIo;
use crate::model::admission::Termination;
use crate::proxy::{self, ConnInfo, Proxy, ServerSettings};
use crate::telemetry::metrics::{self, TlsRefusal};
use http::HeaderValue;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, warn};

/// Serve TLS on `listener` until `shutdown`, then drain.
pub async fn serve_https(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    tls: Arc<ServerTls>,
    settings: ServerSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let builder = Arc::new(proxy::builder(&settings));
    let graceful = proxy::conn::Drain::new();
    let local = listener.local_addr().ok();
    let mut last_accept = None;
    let set_nodelay = proxy::prepare_listener(&listener);
    while let Some((stream, peer)) = proxy::accept(&listener, set_nodelay, &mut shutdown).await {
        last_accept = Some(std::time::Instant::now());
        // Watching starts at accept, so a drain also waits for connections
        // still in their handshake.
        let (proxy, tls, builder, watcher) = (
            proxy.clone(),
            tls.clone(),
            builder.clone(),
            graceful.watcher(),
        );
        let local = local.unwrap_or(peer);
        let Some(open) = proxy.admit(&metrics::HTTPS, peer) else {
            debug!(%peer, "connection refused: over the connection caps");
            continue;
        };
        tokio::spawn(async move {
            if let Err((reason, why)) =
                accept(stream, peer, local, &proxy, &tls, &builder, watcher, open).await
            {
                metrics::tls_refused(reason);
                debug!(%peer, why, "TLS connection refused");
            }
        });
    }
    drop(listener);
    proxy::drain(graceful, local, settings.drain, last_accept).await;
}

/// Why a connection was refused, for the metric and the debug log.
type Refused = (TlsRefusal, &'static str);

#[allow(clippy::too_many_arguments)]
async fn accept(
    mut stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    proxy: &Arc<Proxy>,
    tls: &ServerTls,
    builder: &Arc<proxy::conn::ConnServer>,
    watcher: proxy::conn::DrainWatch,
    open: crate::proxy::conn_limits::ConnSlot,
) -> Result<(), Refused> {
    // Behind a balancer that speaks the PROXY protocol, the header comes
    // first; the real client address is the one allow-lists, balancing and
    // logs see.
    let (peer, mut buf) = match proxy
        .proxy_header(&mut stream, peer, tls.handshake_timeout)
        .await
    {
        Ok(Some((client, rest))) => (client, rest),
        Ok(None) => (peer, Vec::with_capacity(1024)),
        Err(_) => return Err((TlsRefusal::ProxyHeader, "bad or missing PROXY header")),
    };
    let hello = tokio::time::timeout(tls.handshake_timeout, read_hello(&mut stream, &mut buf))
        .await
        .map_err(|_| (TlsRefusal::HelloTimeout, "ClientHello timed out"))??;

    // Passthrough: the route's own backend terminates TLS.
    if let Some(sni) = hello.sni.as_deref() {
        let route = proxy.store.load().lookup(sni, "").cloned();
        if let Some(route) = route.filter(|r| r.termination == Some(Termination::Passthrough)) {
            if let Some(allow) = &route.settings.allowlist {
                if !allow.iter().any(|n| n.contains(peer.ip())) {
                    return Err((
                        TlsRefusal::Passthrough,
                        "client address not in the route's ip_allowlist",
                    ));
                }
            }
            // The route's algorithm (source by default), with failover:
            // nothing has been sent yet, so another endpoint is safe.
            let mut tried = Vec::new();
            let mut up = loop {
                let Some(pick) = crate::balance::pick(&route.backends, peer.ip(), &tried) else {
                    return Err((
                        TlsRefusal::Passthrough,
                        "passthrough route has no endpoint that accepts connections",
                    ));
                };
                let (_, endpoint) = pick.resolve(&route.backends);
                match proxy.upstreams.connect_tcp(endpoint).await {
                    Ok(s) => {
                        pick.member(&route.backends).live.record_success();
                        break s;
                    }
                    Err(e) => {
                        warn!(route = %route.name, namespace = %route.namespace, %endpoint, error = %e.source, "passthrough connect failed");
                        pick.member(&route.backends)
                            .live
                            .record_failure(&proxy.health);
                        tried.push(pick);
                        if tried.len() >= 3 {
                            return Err((TlsRefusal::Passthrough, "passthrough connect failed"));
                        }
                    }
                }
            };
            // The backend learns the client's address from a PROXY v2
            // header ahead of the ClientHello (when configured).
            let first = if proxy.proxy_to_passthrough {
                let mut v = crate::proxy::proxy_protocol::encode_v2(peer, local);
                v.extend_from_slice(&buf);
                v
            } else {
                buf
            };
            up.write_all(&first)
                .await
                .map_err(|_| (TlsRefusal::Passthrough, "passthrough write failed"))?;
            let buf = first;
            drop(buf);
            metrics::PASSTHROUGH_CONNECTIONS.fetch_add(1, Ordering::Relaxed);
            crate::proxy::tunnel::pipe(stream, up, route.settings.passthrough_idle).await;
            return Ok(());
        }
    }

    // Terminate. Hosts with their own certificate may speak h2; hosts on the
    // default certificate get http/1.1 only (no cross-route coalescing).
    let own_cert = hello
        .sni
        .as_deref()
        .is_some_and(|s| proxy.store.load().cert_for(s).is_some());
    let cfg = if own_cert {
        tls.h2.clone()
    } else {
        tls.h1.clone()
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    let io = PrefixedIo::new(buf, crate::io::Flat(stream));
    let tls_stream = tokio::time::timeout(tls.handshake_timeout, acceptor.accept(io))
        .await
        .map_err(|_| (TlsRefusal::HandshakeTimeout, "TLS handshake timed out"))?
        .map_err(|_| (TlsRefusal::Handshake, "TLS handshake failed"))?;
    metrics::TLS_HANDSHAKES.fetch_add(1, Ordering::Relaxed);
    let mut info = ConnInfo::new(peer, local, true);
    info.tls_version = match tls_stream.get_ref().1.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => Some("TLSv1.3"),
        Some(rustls::ProtocolVersion::TLSv1_2) => Some("TLSv1.2"),
        _ => None,
    };
    if let Some(cert) = tls_stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
    {
        info.client_dn = super::certs::subject(cert)
            .and_then(|s| HeaderValue::try_from(s).ok())
            .map(Box::new);
    }
    proxy::serve_conn(
        builder,
        watcher,
        tls_stream,
        Arc::new(info),
        proxy.clone(),
        open,
    );
    Ok(())
}

/// Read until the ClientHello is complete (bounded by `MAX_HELLO`).
async fn read_hello(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<client_hello::ClientHello, Refused> {
    loop {
        match client_hello::peek(buf) {
            Peek::Hello(h) => return Ok(h),
            Peek::NotTls => return Err((TlsRefusal::NotTls, "not TLS")),
            Peek::Invalid(why) => return Err((TlsRefusal::BadHello, why)),
            Peek::NeedMore => {
                if buf.len() >= MAX_HELLO {
                    return Err((TlsRefusal::BadHello, "ClientHello too large"));
                }
                buf.reserve(4096.min(MAX_HELLO - buf.len()));
                let n = stream
                    .read_buf(buf)
                    .await
                    .map_err(|_| (TlsRefusal::Closed, "read failed"))?;
                if n == 0 {
                    return Err((TlsRefusal::Closed, "closed during ClientHello"));
                }
            }
        }
    }
}
