//! Operator- and tenant-written text: OpenShift durations (timeouts in
//! route annotations), label selectors (--route-selector, namespace
//! selectors), EGRESS_DESTINATION and EGRESS_HTTP_PROXY_DESTINATION rules,
//! port ranges. None may panic, whatever the bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = gatehouse::model::duration::parse(text);
    if let Ok(sel) = gatehouse::model::selector::Selector::parse(text) {
        let _ = sel.matches(&Default::default());
    }
    let _ = gatehouse::egress::rules::parse_destinations(text);
    let _ = gatehouse::egress::rules::parse_proxy_destinations(text);
    if let Ok(ports) = gatehouse::egress::rules::parse_port_ranges(text) {
        assert!(ports.len() <= 65536);
    }
});
