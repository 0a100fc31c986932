//! Query strings, percent-decoding and flags: no input may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidekey::api::query;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(pairs) = query::parse(text) {
        for (_, v) in &pairs {
            let _ = query::flag(v);
        }
    }
    let _ = query::decode(text, false);
});
