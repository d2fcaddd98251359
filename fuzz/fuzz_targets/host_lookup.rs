//! Any Host header and path against a small table. Must never panic.
#![no_main]
use gatehouse::compile::{compile, CompileConfig};
use gatehouse::model::parse::parse_text;
use gatehouse::model::Objects;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

static TABLE: OnceLock<gatehouse::table::RoutingTable> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let t = TABLE.get_or_init(|| {
        let text = "apiVersion: route.openshift.io/v1\nkind: Route\nmetadata: {name: a}\nspec: {host: a.example.com, path: /p, to: {name: s}}\n";
        let mut o = Objects::default();
        for x in parse_text(text, false).0 {
            o.insert(x);
        }
        compile(&o, &CompileConfig::default(), 1).table
    });
    let s = String::from_utf8_lossy(data);
    let (host, path) = s.split_once('\n').unwrap_or((&s, "/"));
    let _ = t.lookup(host, path);
    let _ = gatehouse::model::host::normalize(host);
});
