//! Property tests over everything that parses untrusted text: REFs, query strings, allow-list
//! patterns, parameter paths and config files. The fuzz targets in `fuzz/` drive the same
//! entry points with coverage guidance; these run in CI on every change.

use std::path::Path;

use proptest::prelude::*;

use crate::api::allow::Pattern;
use crate::api::query;
use crate::config::{LoadOptions, load_text};
use crate::refs::{self, RefKind, Select};
use crate::source::{Key, ParamSelector};

/// Characters Secrets Manager allows in names.
fn secret_name() -> impl Strategy<Value = String> {
    let chars: Vec<char> = ('a'..='z')
        .chain('A'..='Z')
        .chain('0'..='9')
        .chain("/_+=.@-".chars())
        .collect();
    prop::collection::vec(prop::sample::select(chars), 1..64)
        .prop_map(|v| v.into_iter().collect::<String>())
        .prop_filter("not a scheme or ARN", |s| {
            !s.contains("//") && !s.starts_with("arn") && !s.starts_with('/')
        })
}

fn kind() -> impl Strategy<Value = RefKind> {
    prop_oneof![
        Just(RefKind::Secret),
        Just(RefKind::Parameter),
        Just(RefKind::Any),
        Just(RefKind::Infer)
    ]
}

/// Percent-encodes every byte outside the unreserved set.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

proptest! {
    #[test]
    fn refs_never_panic(s in any::<String>(), k in kind(), decrypt in any::<bool>()) {
        let _ = refs::parse(&s, k, decrypt);
        let _ = refs::check_path(&s);
        let _ = Pattern::parse(&s);
    }

    #[test]
    fn secret_refs_keep_their_name_and_json_key(name in secret_name(), key in "[a-zA-Z0-9_]{1,16}") {
        let r = refs::parse(&format!("sm://{name}"), RefKind::Any, true).unwrap();
        prop_assert!(matches!(&r.key, Key::Secret(s) if s.id == name));
        let r = refs::parse(&format!("{name}:{key}"), RefKind::Secret, true).unwrap();
        prop_assert!(matches!(&r.key, Key::Secret(s) if s.id == name));
        prop_assert_eq!(r.select, Some(Select::Key(key)));
    }

    #[test]
    fn parameter_refs_keep_their_version(segments in prop::collection::vec("[a-zA-Z0-9_.-]{1,8}", 1..5), v in 1u64..1_000_000) {
        let name = format!("/{}", segments.join("/"));
        let r = refs::parse(&format!("{name}:{v}"), RefKind::Parameter, true).unwrap();
        prop_assert!(matches!(&r.key, Key::Parameter(p) if p.name == name && p.selector == Some(ParamSelector::Version(v))));
    }

    #[test]
    fn queries_never_panic_and_round_trip(
        raw in any::<String>(),
        pairs in prop::collection::vec((".{1,12}", ".{0,12}"), 0..8),
    ) {
        let _ = query::parse(&raw);
        let q: Vec<String> = pairs.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect();
        prop_assert_eq!(query::parse(&q.join("&")).unwrap(), pairs);
    }

    #[test]
    fn decoding_inverts_encoding(s in any::<String>()) {
        prop_assert_eq!(query::decode(&encode(&s), true).unwrap(), s);
    }

    #[test]
    fn config_text_never_panics(text in any::<String>()) {
        let _ = load_text(&LoadOptions::default(), Some((Path::new("sidekey.toml"), &text)));
    }

    #[test]
    fn configs_from_known_keys_load_or_name_the_problem(
        lines in prop::collection::vec((prop::sample::select(KEYS), prop::sample::select(VALUES)), 1..6)
    ) {
        let mut sections: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
        for (key, value) in &lines {
            let (section, leaf) = key.split_once('.').unwrap_or(("", key));
            sections.entry(section).or_default().push(format!("{leaf} = {value}"));
        }
        let text: String = sections
            .iter()
            .map(|(s, l)| format!("[{s}]\n{}\n", l.join("\n")))
            .collect();
        if let Err(e) = load_text(&LoadOptions::default(), Some((Path::new("sidekey.toml"), &text))) {
            let msg = e.to_string();
            prop_assert!(msg.contains("sidekey.toml") || msg.contains("duplicate key"), "{msg}\n{text}");
        }
    }
}

const KEYS: &[&str] = &[
    "listen.tcp",
    "listen.unix_mode",
    "listen.max_connections",
    "listen.header_timeout",
    "api.path_prefix",
    "api.allow_secrets",
    "cache.ttl",
    "cache.jitter",
    "cache.refresh_interval",
    "cache.backoff_min",
    "cache.max_entries",
    "aws.max_attempts",
    "aws.retry_mode",
    "aws.timeout",
    "log.level",
    "source.kind",
];

const VALUES: &[&str] = &[
    "\"\"",
    "\"10s\"",
    "\"0s\"",
    "\"-1s\"",
    "\"999999999999h\"",
    "0",
    "-1",
    "4294967296",
    "0.5",
    "1e308",
    "true",
    "[]",
    "[\"a*\", \"\"]",
    "{}",
    "\"127.0.0.1:0\"",
    "\"0.0.0.0:1\"",
    "\"0777\"",
    "\"/\"",
    "\"adaptive\"",
    "\"file\"",
];
