//! Any bytes as a manifest file: parse, admit, compile. Must never panic.
#![no_main]
use gatehouse::compile::{compile, CompileConfig};
use gatehouse::model::parse::parse_text;
use gatehouse::model::Objects;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for json in [false, true] {
        let (objs, _) = parse_text(text, json);
        let mut store = Objects::default();
        for o in objs {
            store.insert(o);
        }
        let t = compile(&store, &CompileConfig::default(), 1).table;
        t.check_invariants();
    }
});
