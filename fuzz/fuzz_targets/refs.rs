//! REFs in every kind, parameter paths, allow-list patterns and JSON selection: no input may
//! panic. The first line is the REF; the rest, if any, a JSON document to select from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidekey::api::allow::Pattern;
use sidekey::refs::{self, RefKind, Select};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (reference, doc) = text.split_once('\n').unwrap_or((text, ""));
    for kind in [
        RefKind::Secret,
        RefKind::Parameter,
        RefKind::Any,
        RefKind::Infer,
    ] {
        if let Ok(r) = refs::parse(reference, kind, true)
            && let Some(select) = &r.select
        {
            let _ = refs::select(doc, select);
        }
    }
    let _ = refs::check_path(reference);
    let _ = Pattern::parse(reference);
    let _ = refs::select(doc, &Select::Pointer(reference.to_owned()));
});
