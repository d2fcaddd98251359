//! Any bytes as the start of a connection from a trusted balancer: the
//! PROXY header parser never panics, never claims more bytes than it got,
//! and a header it accepts parses the same from exactly its own bytes.
#![no_main]
use gatehouse::proxy::proxy_protocol::{encode_v2, parse, Header, MAX_V2_PAYLOAD};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(Some((h, n))) => {
            assert!(n <= data.len() && n <= 16 + MAX_V2_PAYLOAD);
            assert_eq!(parse(&data[..n]), Ok(Some((h, n))));
            if let Header::Proxied { source, destination } = h {
                if source.is_ipv4() == destination.is_ipv4() {
                    let wire = encode_v2(source, destination);
                    assert_eq!(parse(&wire), Ok(Some((h, wire.len()))));
                }
            }
        }
        // Needs more: every shorter prefix needs more too (or is refused
        // the same way once complete), never a different header.
        Ok(None) => assert!(data.len() < 16 + MAX_V2_PAYLOAD),
        Err(_) => {}
    }
});
