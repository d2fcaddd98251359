//! Any bytes as the start of a TLS connection: the ClientHello peek must
//! never panic, and any prefix of input that parses must parse the same.
#![no_main]
use gatehouse::tls::client_hello::{peek, Peek};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Peek::Hello(h) = peek(data) {
        if let Some(sni) = &h.sni {
            assert!(sni.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
            assert!(!sni.bytes().any(|b| b.is_ascii_uppercase()));
        }
    }
});
