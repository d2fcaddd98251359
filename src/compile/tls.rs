//! TLS material for the table: serving certificates parsed and checked at
//! admission (cached across compiles by their PEM text), HSTS values, and
//! the client side of re-encrypt routes.

use crate::model::admission::Candidate;
use crate::model::{Route, RouteTls};
use crate::table::{CertifiedKey, UpstreamTls};
use crate::tls::certs;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Parsed certificates by their PEM text. Each compile keeps only what the
/// new table uses, so the cache never outgrows the cluster.
#[derive(Debug, Default)]
pub struct CertCache {
    map: Mutex<HashMap<String, Result<Arc<CertifiedKey>, String>>>,
}

impl CertCache {
    /// Certificates held (parsed or refused).
    pub fn len(&self) -> usize {
        self.map.lock().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn key(tls: &RouteTls) -> String {
        let f = |s: &Option<String>| s.as_deref().unwrap_or("").to_owned();
        format!(
            "{}\0{}\0{}",
            f(&tls.certificate),
            f(&tls.key),
            f(&tls.ca_certificate)
        )
    }
}

/// Per-compile state: the cache to read, the entries to keep.
pub(super) struct CertPass<'a> {
    cache: &'a CertCache,
    used: RefCell<HashMap<String, Result<Arc<CertifiedKey>, String>>>,
    /// Route (by address of its Arc) → its parsed certificate.
    by_route: RefCell<HashMap<usize, Arc<CertifiedKey>>>,
}

impl<'a> CertPass<'a> {
    pub(super) fn new(cache: &'a CertCache) -> Self {
        CertPass {
            cache,
            used: RefCell::default(),
            by_route: RefCell::default(),
        }
    }

    /// The extended validation OpenShift does on certificates.
    pub(super) fn validate(&self, c: &Candidate) -> Result<(), String> {
        let Some(tls) = &c.route.spec.tls else {
            return Ok(());
        };
        let term = tls.termination.to_ascii_lowercase();
        if term == "reencrypt" {
            if let Some(ca) = tls
                .destination_ca_certificate
                .as_deref()
                .filter(|c| !c.trim().is_empty())
            {
                certs::root_store(ca).map_err(|e| format!("destinationCACertificate: {e}"))?;
            }
        }
        if term == "passthrough" {
            return Ok(());
        }
        match (&tls.certificate, &tls.key) {
            (None, None) => Ok(()),
            (Some(_), None) => Err("certificate without key".into()),
            (None, Some(_)) => Err("key without certificate".into()),
            (Some(_), Some(_)) => {
                let key = CertCache::key(tls);
                let cached = self
                    .cache
                    .map
                    .lock()
                    .ok()
                    .and_then(|m| m.get(&key).cloned());
                let parsed = cached.unwrap_or_else(|| {
                    certs::certified_key(
                        tls.certificate.as_deref().unwrap_or(""),
                        tls.key.as_deref().unwrap_or(""),
                        tls.ca_certificate.as_deref(),
                    )
                });
                self.used.borrow_mut().insert(key, parsed.clone());
                let ck = parsed?;
                self.by_route.borrow_mut().insert(route_id(&c.route), ck);
                Ok(())
            }
        }
    }

    /// The certificate admission parsed for `route`.
    pub(super) fn cert_of(&self, route: &Arc<Route>) -> Option<Arc<CertifiedKey>> {
        self.by_route.borrow().get(&route_id(route)).cloned()
    }

    /// Keep what this compile used; drop the rest.
    pub(super) fn finish(self) {
        if let Ok(mut m) = self.cache.map.lock() {
            *m = self.used.into_inner();
        }
    }

    /// Add what this compile used to the cache and keep the rest: a compile
    /// of a few hosts sees only their routes' certificates. The next full
    /// compile drops what no route uses any more.
    pub(super) fn finish_partial(self) {
        if let Ok(mut m) = self.cache.map.lock() {
            m.extend(self.used.into_inner());
        }
    }
}

fn route_id(r: &Arc<Route>) -> usize {
    Arc::as_ptr(r) as usize
}

/// `haproxy.router.openshift.io/hsts_header`: `max-age=N` required,
/// `includeSubDomains` and `preload` allowed, `;`-separated,
/// case-insensitive.
pub(super) fn hsts(value: &str) -> Option<http::HeaderValue> {
    let mut max_age = false;
    for part in value.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let lower = part.to_ascii_lowercase();
        if let Some(n) = lower.strip_prefix("max-age=") {
            let n = n.trim_matches('"');
            if max_age || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            max_age = true;
        } else if lower != "includesubdomains" && lower != "preload" {
            return None;
        }
    }
    if !max_age {
        return None;
    }
    http::HeaderValue::from_str(value.trim()).ok()
}

/// How re-encrypt routes verify their endpoints when they bring no CA.
#[derive(Debug, Clone, Default)]
pub enum DestinationTrust {
    /// No default: such routes fail verification (502) and say why.
    #[default]
    None,
    /// A router-wide CA bundle (OpenShift's service CA).
    Ca(Arc<RootCertStore>),
    /// Opt-in: skip verification entirely (logged at start).
    InsecureSkipVerify,
}

/// Client configs by destination CA text, built once per compile, each
/// with the warning every route using it gets.
pub(super) struct UpstreamTlsBuilder<'a> {
    default: &'a DestinationTrust,
    by_ca: HashMap<String, (Arc<ClientConfig>, Option<String>)>,
}

impl<'a> UpstreamTlsBuilder<'a> {
    pub(super) fn new(default: &'a DestinationTrust) -> Self {
        UpstreamTlsBuilder {
            default,
            by_ca: HashMap::new(),
        }
    }

    /// The TLS client side for a re-encrypt route to `service` in `ns`, and
    /// a warning when it cannot verify anything.
    pub(super) fn for_route(
        &mut self,
        tls: &RouteTls,
        ns: &str,
        service: &str,
    ) -> (Option<Arc<UpstreamTls>>, Option<String>) {
        let ca = tls
            .destination_ca_certificate
            .as_deref()
            .filter(|c| !c.trim().is_empty());
        let key = ca.unwrap_or("").to_owned();
        let (config, warning) = match self.by_ca.get(&key) {
            Some(c) => c.clone(),
            None => {
                let mut warning = None;
                let cfg = match (ca, self.default) {
                    (Some(pem), _) => match certs::root_store(pem) {
                        Ok(roots) => client_config(Arc::new(roots)),
                        Err(e) => return (None, Some(format!("destinationCACertificate: {e}"))),
                    },
                    (None, DestinationTrust::Ca(roots)) => client_config(roots.clone()),
                    (None, DestinationTrust::InsecureSkipVerify) => insecure_client_config(),
                    (None, DestinationTrust::None) => {
                        warning = Some(
                            "re-encrypt route has no destinationCACertificate and the router has no default destination CA: endpoints cannot be verified and requests will fail with 502".to_owned(),
                        );
                        client_config(Arc::new(RootCertStore::empty()))
                    }
                };
                self.by_ca.insert(key, (cfg.clone(), warning.clone()));
                (cfg, warning)
            }
        };
        let name = format!("{service}.{ns}.svc");
        match ServerName::try_from(name) {
            Ok(n) => (Some(Arc::new(UpstreamTls::new(config, n))), warning),
            Err(_) => (
                None,
                Some("service name is not a valid TLS server name".into()),
            ),
        }
    }
}

fn alpn(mut cfg: ClientConfig) -> Arc<ClientConfig> {
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(cfg)
}

fn client_config(roots: Arc<RootCertStore>) -> Arc<ClientConfig> {
    let b = ClientConfig::builder_with_provider(certs::provider())
        .with_safe_default_protocol_versions()
        .expect("the crypto provider supports the default protocol versions");
    alpn(b.with_root_certificates(roots).with_no_client_auth())
}

fn insecure_client_config() -> Arc<ClientConfig> {
    let b = ClientConfig::builder_with_provider(certs::provider())
        .with_safe_default_protocol_versions()
        .expect("the crypto provider supports the default protocol versions");
    alpn(
        b.dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify))
            .with_no_client_auth(),
    )
}

/// Accepts any server certificate (signatures are still checked). Only for
/// the explicit `insecure_skip_reencrypt_verify` opt-in.
#[derive(Debug)]
struct NoVerify;

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &certs::provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &certs::provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        certs::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hsts_values() {
        assert!(hsts("max-age=31536000").is_some());
        assert!(hsts("max-age=31536000;includeSubDomains;preload").is_some());
        assert!(hsts("Max-Age=0 ; includesubdomains").is_some());
        for bad in [
            "",
            "includeSubDomains",
            "max-age=",
            "max-age=abc",
            "max-age=1;max-age=2",
            "max-age=1;sometimes",
        ] {
            assert!(hsts(bad).is_none(), "{bad:?}");
        }
    }
}
