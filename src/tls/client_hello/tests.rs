use super::*;

/// A ClientHello as a real client (rustls) writes it.
fn real_hello(sni: Option<&str>, alpn: &[&[u8]]) -> Vec<u8> {
    use std::sync::Arc;
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    if sni.is_none() {
        cfg.enable_sni = false;
    }
    let name =
        rustls::pki_types::ServerName::try_from(sni.unwrap_or("example.com").to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

#[test]
fn reads_sni_and_alpn_from_a_real_client() {
    let b = real_hello(Some("Shop.Example.COM"), &[b"h2", b"http/1.1"]);
    let Peek::Hello(h) = peek(&b) else {
        panic!("{:?}", peek(&b))
    };
    assert_eq!(h.sni.as_deref(), Some("shop.example.com"));
    assert_eq!(h.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
}

#[test]
fn no_sni() {
    let b = real_hello(None, &[]);
    assert_eq!(peek(&b), Peek::Hello(ClientHello::default()));
}

#[test]
fn every_prefix_needs_more_and_never_panics() {
    let b = real_hello(Some("a.example.com"), &[b"h2"]);
    for i in 0..b.len() {
        assert_eq!(peek(&b[..i]), Peek::NeedMore, "prefix {i}");
    }
}

#[test]
fn split_across_records() {
    let b = real_hello(Some("split.example.com"), &[]);
    let body = &b[5..];
    let (x, y) = body.split_at(40);
    let mut two = Vec::new();
    for part in [x, y] {
        two.extend_from_slice(&[0x16, 3, 1]);
        two.extend_from_slice(&(part.len() as u16).to_be_bytes());
        two.extend_from_slice(part);
    }
    let Peek::Hello(h) = peek(&two) else { panic!() };
    assert_eq!(h.sni.as_deref(), Some("split.example.com"));
}

#[test]
fn garbage_and_hostile_input() {
    assert_eq!(peek(b"GET / HTTP/1.1\r\n\r\n"), Peek::NotTls);
    assert_eq!(peek(&[0x16, 9, 9, 0, 5]), Peek::NotTls);
    assert!(matches!(peek(&[0x16, 3, 1, 0, 0]), Peek::Invalid(_)));
    // A handshake claiming 16 MB.
    assert!(matches!(
        peek(&[0x16, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff]),
        Peek::Invalid(_)
    ));
    // Not a ClientHello.
    assert!(matches!(
        peek(&[0x16, 3, 1, 0, 4, 2, 0, 0, 0]),
        Peek::Invalid(_)
    ));
    // Invalid characters in SNI.
    let mut b = real_hello(Some("abc.example.com"), &[]);
    let pos = b.windows(3).position(|w| w == b"abc").unwrap();
    b[pos] = b' ';
    assert!(matches!(peek(&b), Peek::Invalid(_)));
    // Lengths that overrun: flip every byte in turn and make sure nothing panics.
    let base = real_hello(Some("x.example.com"), &[b"h2"]);
    for i in 0..base.len() {
        for v in [0u8, 0x7f, 0xff] {
            let mut m = base.clone();
            m[i] = v;
            let _ = peek(&m);
        }
    }
}
