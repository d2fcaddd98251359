//! Arbitrary bytes from an upstream, as the router's own HTTP/1.1 client
//! reads them (response head, then a body by content-length, chunked or
//! until close): never a panic, and a decoded body is never longer than
//! the bytes it came from.
#![no_main]
use gatehouse::pool::decode_response;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for head_only in [false, true] {
        if let Ok(Some((status, body))) = decode_response(data, head_only) {
            assert!((100..1000).contains(&status));
            assert!(body.len() <= data.len());
            if head_only {
                assert!(body.is_empty(), "a HEAD answer has no body");
            }
        }
    }
});
