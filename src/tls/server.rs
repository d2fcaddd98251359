//! Server-side TLS configuration: the SNI certificate resolver over the
//! live table, ALPN variants, client-certificate verification, and the
//! Mozilla "intermediate" profile (TLS 1.2 + 1.3, AEAD suites, X25519/P-256/
//! P-384, set in `certs::provider`).

use super::certs;
use crate::table::{CertifiedKey, TableStore};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::ServerConfig;
use std::sync::Arc;
use std::time::Duration;

/// Router-wide client-certificate policy (ROUTER_MUTUAL_TLS_AUTH).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuthMode {
    #[default]
    Off,
    Optional,
    Required,
}

/// What the HTTPS listener needs.
#[derive(Debug)]
pub struct ServerTls {
    /// ALPN h2 + http/1.1: for hosts with their own certificate.
    pub h2: Arc<ServerConfig>,
    /// ALPN http/1.1 only: hosts on the default certificate, so browsers do
    /// not coalesce HTTP/2 connections across unrelated routes.
    pub h1: Arc<ServerConfig>,
    pub handshake_timeout: Duration,
    pub client_auth: ClientAuthMode,
}

/// Picks the certificate for each handshake from the table live at that
/// moment, so certificate changes need no restart and leave open
/// connections alone.
#[derive(Debug)]
struct TableResolver {
    store: Arc<TableStore>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for TableResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let table = self.store.load();
        let found = hello.server_name().and_then(|n| {
            let n = n.trim_end_matches('.').to_ascii_lowercase();
            table.cert_for(&n).cloned()
        });
        Some(found.unwrap_or_else(|| self.default.clone()))
    }
}

impl ServerTls {
    /// Build both configurations. `client_ca` is required unless
    /// `client_auth` is off.
    pub fn new(
        store: Arc<TableStore>,
        default: Arc<CertifiedKey>,
        client_auth: ClientAuthMode,
        client_ca: Option<&str>,
        handshake_timeout: Duration,
    ) -> Result<Self, String> {
        let resolver = Arc::new(TableResolver { store, default });
        let make = |alpn: &[&[u8]]| -> Result<Arc<ServerConfig>, String> {
            let b = ServerConfig::builder_with_provider(certs::provider())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .map_err(|e| e.to_string())?;
            let b = match client_auth {
                ClientAuthMode::Off => b.with_no_client_auth(),
                mode => {
                    let pem =
                        client_ca.ok_or("client certificates need a CA bundle (tls.client_ca)")?;
                    let roots = Arc::new(certs::root_store(pem)?);
                    let v = WebPkiClientVerifier::builder_with_provider(roots, certs::provider());
                    let v = if mode == ClientAuthMode::Optional {
                        v.allow_unauthenticated()
                    } else {
                        v
                    };
                    b.with_client_cert_verifier(v.build().map_err(|e| e.to_string())?)
                }
            };
            let mut cfg = b.with_cert_resolver(resolver.clone());
            cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
            cfg.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| e.to_string())?;
            Ok(Arc::new(cfg))
        };
        Ok(ServerTls {
            h2: make(&[b"h2", b"http/1.1"])?,
            h1: make(&[b"http/1.1"])?,
            handshake_timeout,
            client_auth,
        })
    }
}
