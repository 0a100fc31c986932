//! Config files (sidekey's TOML and the agent's compatible keys), through the same loader the
//! binary uses: no input may panic; every rejection names its file.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sidekey::config::{LoadOptions, load_text};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = load_text(
        &LoadOptions::default(),
        Some((Path::new("sidekey.toml"), text)),
    );
});
