//! Config loading: layers, compat translation, validation messages.

use std::time::Duration;

use super::*;
use crate::source::{Key, PathKey};

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect()
}

/// Loads with a config file holding `toml` (if any), env pairs and CLI pairs.
fn load_with(
    toml: Option<&str>,
    e: &[(&str, &str)],
    cli: &[(&str, &str)],
) -> (Result<Config, ConfigError>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = toml.map(|t| {
        let p = dir.path().join("sidekey.toml");
        std::fs::write(&p, t).unwrap();
        p
    });
    let opts = LoadOptions {
        file,
        env: env(e),
        cli: cli
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
    };
    (load(&opts), dir)
}

fn ok(toml: Option<&str>, e: &[(&str, &str)]) -> Config {
    let (r, _dir) = load_with(toml, e, &[]);
    r.unwrap()
}

fn err(toml: Option<&str>, e: &[(&str, &str)]) -> String {
    let (r, _dir) = load_with(toml, e, &[]);
    r.expect_err("config should be rejected").to_string()
}

#[test]
fn defaults_behave_like_the_lambda_extension() {
    let c = ok(None, &[]);
    assert_eq!(c.listen.tcp, Some("127.0.0.1:2773".parse().unwrap()));
    assert_eq!(c.cache.secrets_ttl, Duration::from_secs(300));
    assert_eq!(c.cache.max_entries, 1000);
    assert_eq!(c.auth.headers[0], "x-aws-parameters-secrets-token");
    assert_eq!(
        c.auth.tokens[1],
        TokenSource::Env("AWS_SESSION_TOKEN".into())
    );
    assert_eq!(c.api.path_prefix, "/v1/");
    assert_eq!(c.source, SourceConfig::Aws);
    assert!(c.targets.is_empty() && c.warnings.is_empty());
}

#[test]
fn psle_variables_translate_with_clamping() {
    let c = ok(
        None,
        &[
            ("PARAMETERS_SECRETS_EXTENSION_HTTP_PORT", "2999"),
            ("PARAMETERS_SECRETS_EXTENSION_CACHE_SIZE", "50"),
            ("PARAMETERS_SECRETS_EXTENSION_MAX_CONNECTIONS", "3"),
            ("PARAMETERS_SECRETS_EXTENSION_LOG_LEVEL", "NONE"),
            ("SECRETS_MANAGER_TTL", "900"),
            ("SSM_PARAMETER_STORE_TTL", "60"),
            ("SECRETS_MANAGER_TIMEOUT_MILLIS", "1500"),
            ("SSM_PARAMETER_STORE_TIMEOUT_MILLIS", "0"),
            ("PARAMETERS_AND_SECRETS_EXTENSION_CACHE_SIZE", "5"),
        ],
    );
    assert_eq!(c.listen.tcp, Some("127.0.0.1:2999".parse().unwrap()));
    assert_eq!(c.cache.max_entries, 50);
    assert_eq!(c.aws.max_connections.get(), 3);
    assert_eq!(c.log.filter, "off");
    assert_eq!(c.cache.secrets_ttl, Duration::from_secs(300));
    assert_eq!(c.cache.parameters_ttl, Duration::from_secs(60));
    assert_eq!(
        c.aws.secrets_manager_timeout,
        Some(Duration::from_millis(1500))
    );
    assert_eq!(c.aws.ssm_timeout, None);
    assert!(
        c.warnings
            .iter()
            .any(|w| w
                == "SECRETS_MANAGER_TTL exceeds max limit. Setting Secrets Manger TTL to 5m0s")
    );
    assert!(
        c.warnings
            .iter()
            .any(|w| w.starts_with("PARAMETERS_AND_SECRETS_EXTENSION_CACHE_SIZE is ignored"))
    );
}

#[test]
fn psle_cache_disabled_bypasses_the_cache() {
    let c = ok(
        None,
        &[
            ("PARAMETERS_SECRETS_EXTENSION_CACHE_ENABLED", "false"),
            ("PARAMETERS_SECRETS_EXTENSION_CACHE_SIZE", "10"),
        ],
    );
    assert_eq!(
        (c.cache.max_entries, c.cache.secrets_ttl),
        (0, Duration::ZERO)
    );
}

#[test]
fn bad_psle_variables_name_the_variable() {
    for (var, value) in [
        ("PARAMETERS_SECRETS_EXTENSION_HTTP_PORT", "70000"),
        ("PARAMETERS_SECRETS_EXTENSION_CACHE_SIZE", "1001"),
        ("PARAMETERS_SECRETS_EXTENSION_CACHE_ENABLED", "maybe"),
        ("PARAMETERS_SECRETS_EXTENSION_MAX_CONNECTIONS", "0"),
        ("PARAMETERS_SECRETS_EXTENSION_LOG_LEVEL", "LOUD"),
        ("SECRETS_MANAGER_TTL", "-1"),
        ("SSM_PARAMETER_STORE_TIMEOUT_MILLIS", "soon"),
    ] {
        let e = err(None, &[(var, value)]);
        assert!(e.contains(var), "{e}");
    }
}

#[test]
fn wcp_flat_keys_translate() {
    let c = ok(
        Some(
            r#"
log_level = "DEBUG"
http_port = "4000"
region = "eu-west-1"
ttl_seconds = 600
cache_size = "10"
max_conn = 5
path_prefix = "/secrets"
ssrf_headers = ["X-Token"]
ssrf_env_variables = ["MY_TOKEN"]
ignore_transient_errors = false
validate_credentials = true
"#,
        ),
        &[],
    );
    assert_eq!(c.listen.tcp, Some("127.0.0.1:4000".parse().unwrap()));
    assert_eq!(c.aws.region.as_deref(), Some("eu-west-1"));
    assert_eq!(c.cache.secrets_ttl, Duration::from_secs(600));
    assert_eq!(c.cache.max_entries, 10);
    assert_eq!(c.listen.max_connections.get(), 5);
    assert_eq!(c.api.path_prefix, "/secrets/");
    assert_eq!(
        c.auth.headers,
        vec![http::HeaderName::from_static("x-token")]
    );
    assert_eq!(c.auth.tokens, vec![TokenSource::Env("MY_TOKEN".into())]);
    assert!(!c.cache.serve_stale && c.aws.validate_credentials);
    assert_eq!(c.log.filter, "info,sidekey=debug");
}

#[test]
fn wcp_ranges_are_enforced_with_key_and_file() {
    for (line, key) in [
        ("ttl_seconds = 3601", "ttl_seconds"),
        ("cache_size = 0", "cache_size"),
        ("max_conn = 1001", "max_conn"),
        ("http_port = 80", "http_port"),
        ("path_prefix = \"v1\"", "path_prefix"),
        ("ssrf_headers = []", "ssrf_headers"),
        ("log_level = \"LOUD\"", "log_level"),
        ("validate_credentials = \"perhaps\"", "validate_credentials"),
    ] {
        let e = err(Some(line), &[]);
        assert!(e.contains(key) && e.contains("sidekey.toml"), "{e}");
    }
}

#[test]
fn layers_override_in_order() {
    let file = "[cache]\nttl = \"10s\"\nmax_entries = 5\njitter = 0.2\n";
    let (r, _d) = load_with(
        Some(file),
        &[
            ("SIDEKEY_CACHE__MAX_ENTRIES", "7"),
            ("SIDEKEY_CACHE__JITTER", "0.3"),
            ("SSM_PARAMETER_STORE_TTL", "1"),
        ],
        &[("cache.jitter", "0.4")],
    );
    let c = r.unwrap();
    assert_eq!(c.cache.secrets_ttl, Duration::from_secs(10));
    assert_eq!(
        c.cache.parameters_ttl,
        Duration::from_secs(1),
        "PSLE per-service TTL beats the generic ttl"
    );
    assert_eq!(c.cache.max_entries, 7);
    assert!((c.cache.jitter - 0.4).abs() < f64::EPSILON);
}

#[test]
fn invalid_values_name_key_and_origin() {
    let check = |toml: &str, e: &[(&str, &str)], key: &str, origin: &str| {
        let msg = err(Some(toml), e);
        assert!(msg.contains(key) && msg.contains(origin), "{msg}");
    };
    check("[cache]\njitter = 2.0", &[], "cache.jitter", "sidekey.toml");
    check("[cache]\nttl = \"soon\"", &[], "cache.ttl", "sidekey.toml");
    check("[cache]\nttl_secs = 1", &[], "ttl_secs", "sidekey.toml");
    check("nonsense = 1", &[], "nonsense", "sidekey.toml");
    check(
        "[listen]\ntcp = \"0.0.0.0:2773\"",
        &[],
        "listen.tcp",
        "sidekey.toml",
    );
    check(
        "[listen]\nunix = \"/tmp/s\"\nunix_mode = \"999\"",
        &[],
        "listen.unix_mode",
        "sidekey.toml",
    );
    check(
        "",
        &[("SIDEKEY_AWS__RETRY_MODE", "turbo")],
        "aws.retry_mode",
        "SIDEKEY_",
    );
    check(
        "[source]\nkind = \"file\"",
        &[],
        "source.kind",
        "sidekey.toml",
    );
    check(
        "",
        &[("SIDEKEY_CACHE__JITTER", "-1")],
        "cache.jitter",
        "SIDEKEY_",
    );
    check(
        "[[secrets]]\nid = \"a b\"",
        &[],
        "secrets.0.id",
        "sidekey.toml",
    );
    check(
        "[[parameters]]\nname = \"/a\"\npath = \"/b\"",
        &[],
        "parameters.0",
        "sidekey.toml",
    );
    check(
        "[[parameters]]\npath = \"a\"",
        &[],
        "parameters.0.path",
        "sidekey.toml",
    );
    check(
        "[auth]\ntokens = [\"not a var\"]",
        &[],
        "auth.tokens",
        "sidekey.toml",
    );
    check("this is not toml", &[], "(syntax)", "sidekey.toml");
}

#[test]
fn non_loopback_needs_an_explicit_opt_in() {
    let c = ok(
        Some("[listen]\ntcp = \"0.0.0.0:2773\"\nallow_non_loopback = true"),
        &[],
    );
    assert_eq!(c.listen.tcp, Some("0.0.0.0:2773".parse().unwrap()));
}

#[test]
fn targets_from_secrets_and_parameters() {
    let c = ok(
        Some(
            r#"
[cache]
refresh_interval = "2m"
[[secrets]]
id = "db::AWSPREVIOUS"
[[secrets]]
id = "arn:aws:secretsmanager:us-east-1:1:secret:x-AbCdEf"
version_id = "v1"
refresh_interval = 30
[[parameters]]
name = "/app/url:3"
[[parameters]]
path = "/app/prod/"
recursive = true
with_decryption = false
"#,
        ),
        &[],
    );
    let t = &c.targets;
    assert_eq!(t.len(), 4);
    assert_eq!(t[0].interval, Duration::from_secs(120));
    assert!(
        matches!(&t[0].key, Key::Secret(k) if k.version_stage.as_deref() == Some("AWSPREVIOUS"))
    );
    assert!(matches!(&t[1].key, Key::Secret(k) if k.version_id.as_deref() == Some("v1")));
    assert_eq!(t[1].interval, Duration::from_secs(30));
    assert!(matches!(&t[2].key, Key::Parameter(k) if k.decrypt && k.selector.is_some()));
    assert_eq!(
        t[3].key,
        Key::Path(PathKey {
            path: "/app/prod".into(),
            recursive: true,
            decrypt: false,
            via: Default::default(),
        })
    );
}

#[test]
fn reload_classifies_sections() {
    let a = ok(Some("[[secrets]]\nid = \"a\""), &[]);
    let b = ok(Some("[[secrets]]\nid = \"b\""), &[]);
    assert!(restart_required(&a.raw, &b.raw).is_empty());
    let c = ok(Some("[listen]\ntcp = \"127.0.0.1:1\""), &[]);
    assert_eq!(restart_required(&a.raw, &c.raw), vec!["listen"]);
}

#[test]
fn effective_config_round_trips_and_redacts_endpoint_credentials() {
    let c = ok(
        Some("[aws]\nendpoint_url = \"http://user:pw@localhost:5000\""),
        &[],
    );
    let text = render_effective(&c).unwrap();
    assert!(
        text.contains("<redacted>@localhost:5000") && !text.contains("pw"),
        "{text}"
    );
    let again: RawConfig = toml::from_str(&text).unwrap();
    assert_eq!(again.cache, c.raw.cache);
}

#[test]
fn numeric_looking_strings_from_env_are_accepted() {
    let c = ok(
        None,
        &[
            ("SIDEKEY_LISTEN__UNIX", "/tmp/s.sock"),
            ("SIDEKEY_LISTEN__UNIX_MODE", "0660"),
            ("SIDEKEY_LISTEN__UNIX_GROUP", "0"),
        ],
    );
    let unix = c.listen.unix.unwrap();
    assert_eq!((unix.mode, unix.group), (0o660, Some(0)));
}

#[test]
fn signal_names() {
    use super::validate::signal_number;
    assert_eq!(signal_number("HUP"), Some(1));
    assert_eq!(signal_number("sigusr1"), Some(10));
    assert_eq!(signal_number("15"), Some(15));
    assert_eq!(signal_number("NOPE"), None);
    assert_eq!(signal_number("0"), None);
}

#[test]
fn templates_validate_each_field() {
    let check = |toml: &str, key: &str| {
        let msg = err(Some(toml), &[]);
        assert!(msg.contains(key), "{msg}");
    };
    let base = "[[templates]]\ndestination = \"/tmp/x\"\n";
    check(base, "templates.0.source");
    check(
        &format!("{base}source = \"a\"\ncontents = \"b\""),
        "templates.0.source",
    );
    check(
        &format!("{base}contents = \"b\"\nsyntax = \"go\""),
        "templates.0.syntax",
    );
    check(
        &format!("{base}contents = \"b\"\nmode = \"999\""),
        "templates.0.mode",
    );
    check(
        &format!("{base}contents = \"b\"\ncommand = []"),
        "templates.0.command",
    );
    check(
        &format!("{base}contents = \"b\"\nsignal = \"HUP\"\npid = 0"),
        "templates.0.pid",
    );
    check(
        &format!("{base}contents = \"b\"\nsignal = \"BOGUS\"\npid = 1"),
        "templates.0.signal",
    );
    check(
        &format!("{base}contents = \"b\"\nwait = {{ min = \"5s\", max = \"1s\" }}"),
        "templates.0.wait.max",
    );
    for dest in ["/run/app/../../etc/cron.d/x", "../x", "/"] {
        check(
            &format!("[[templates]]\ndestination = {dest:?}\ncontents = \"b\""),
            "templates.0.destination",
        );
    }
    let c = ok(
        Some(&format!(
            "{base}contents = \"b\"\nsignal = \"USR1\"\npid_file = \"/run/app.pid\"\nmode = 640"
        )),
        &[],
    );
    assert_eq!(c.templates[0].destination.mode, 0o640);
    assert!(matches!(
        c.templates[0].action,
        crate::render::Action::Signal { signal: 10, .. }
    ));
}

/// Every key, given a value of the wrong type (an inline table fits none of them): the load
/// fails with a message naming the key and the file.
#[test]
fn every_key_with_a_malformed_value_is_named() {
    fn leaves(v: &toml::Value, at: &str, out: &mut Vec<String>) {
        match v {
            toml::Value::Table(t) if !t.is_empty() => {
                for (k, v) in t {
                    let key = if at.is_empty() {
                        k.clone()
                    } else {
                        format!("{at}.{k}")
                    };
                    leaves(v, &key, out);
                }
            }
            _ => out.push(at.to_owned()),
        }
    }
    let mut keys = Vec::new();
    leaves(
        &toml::Value::try_from(raw::RawConfig::default()).unwrap(),
        "",
        &mut keys,
    );
    // Optional keys (absent from the defaults) and fields of array entries.
    keys.extend(
        [
            "listen.unix",
            "listen.unix_owner",
            "listen.unix_group",
            "cache.secrets_ttl",
            "cache.parameters_ttl",
            "aws.region",
            "aws.failover_region",
            "api.allow_secrets",
            "api.allow_parameters",
            "api.allow_roles",
            "aws.endpoint_url",
            "aws.secrets_manager_timeout",
            "aws.ssm_timeout",
            "source.file",
            "log.file",
        ]
        .map(String::from),
    );
    assert!(keys.len() >= 50, "{keys:?}");
    let bogus = "{ bogus = true }";
    let mut docs: Vec<(String, String)> = keys
        .iter()
        .map(|key| {
            let doc = match key.rsplit_once('.') {
                Some((section, leaf)) => format!("[{section}]\n{leaf} = {bogus}\n"),
                None => format!("{key} = {bogus}\n"),
            };
            (key.clone(), doc)
        })
        .collect();
    let entries = [
        (
            "secrets",
            "id = \"a\"",
            &[
                "id",
                "version_stage",
                "version_id",
                "refresh_interval",
                "role_arn",
                "external_id",
                "session_name",
                "region",
                "failover_region",
            ][..],
        ),
        (
            "parameters",
            "name = \"/a\"",
            &[
                "name",
                "path",
                "recursive",
                "with_decryption",
                "refresh_interval",
                "role_arn",
                "external_id",
                "session_name",
                "region",
                "failover_region",
            ],
        ),
        (
            "discover",
            "name_prefix = \"a/\"",
            &[
                "name_prefix",
                "tags",
                "refresh_interval",
                "role_arn",
                "external_id",
                "session_name",
                "region",
                "failover_region",
            ],
        ),
        (
            "templates",
            "contents = \"x\"\ndestination = \"/tmp/x\"",
            &[
                "source",
                "contents",
                "destination",
                "syntax",
                "mode",
                "owner",
                "group",
                "create_dirs",
                "in_place",
                "command",
                "command_timeout",
                "signal",
                "pid",
                "pid_file",
                "wait",
            ],
        ),
    ];
    for (array, base, fields) in entries {
        for field in fields {
            let base: String = base
                .lines()
                .filter(|l| !l.starts_with(&format!("{field} ")))
                .map(|l| format!("{l}\n"))
                .collect();
            docs.push((
                format!("{array}.0.{field}"),
                format!("[[{array}]]\n{base}{field} = {bogus}\n"),
            ));
        }
    }
    for (key, doc) in docs {
        let msg = err(Some(&doc), &[]);
        assert!(
            msg.contains(&key) && msg.contains("sidekey.toml"),
            "{key}: {msg}\n{doc}"
        );
    }
}

#[test]
fn malformed_templates_fail_the_load_with_their_line() {
    let check = |body: &str, want: &[&str]| {
        let msg = err(Some(body), &[]);
        for w in want {
            assert!(msg.contains(w), "{w}: {msg}");
        }
    };
    check(
        "[[templates]]\ndestination = \"/tmp/x\"\ncontents = \"a\\n{{ secret('x' }}\"",
        &["templates.0.contents", "line 2"],
    );
    check(
        "[[templates]]\ndestination = \"/tmp/x\"\nsyntax = \"cloudformation\"\ncontents = \"a\\nb\\n{{resolve:ssm:/x\"",
        &["templates.0.contents", "line 3", "unclosed"],
    );
    check(
        "[[templates]]\ndestination = \"/tmp/x\"\nsyntax = \"cloudformation\"\ncontents = \"{{resolve:nope:x}}\"",
        &["templates.0.contents", "line 1"],
    );
    check(
        "[[templates]]\ndestination = \"/tmp/x\"\nsource = \"/nonexistent/t.tpl\"",
        &["templates.0.source", "cannot read /nonexistent/t.tpl"],
    );
}

#[test]
fn regions_roles_and_discovery_validate() {
    let check = |toml: &str, key: &str| {
        let msg = err(Some(toml), &[]);
        assert!(msg.contains(key), "{key}: {msg}");
    };
    check(
        "[[secrets]]\nid = \"a\"\nrole_arn = \"arn:aws:iam::1:role/x\"",
        "secrets.0.role_arn",
    );
    check(
        "[[secrets]]\nid = \"a\"\nexternal_id = \"x\"",
        "secrets.0.external_id",
    );
    check(
        "[[parameters]]\nname = \"/a\"\nregion = \"Mars\"",
        "parameters.0.region",
    );
    check(
        "[[secrets]]\nid = \"a\"\nregion = \"eu-west-1\"\nfailover_region = \"eu-west-1\"",
        "secrets.0.failover_region",
    );
    check(
        "[aws]\nfailover_region = \"nowhere\"",
        "aws.failover_region",
    );
    check("[[discover]]\nrefresh_interval = \"1m\"", "discover.0");
    check("[api]\nmax_roles = 0", "api.max_roles");
    check("[api]\nallow_roles = [\"a*b\"]", "api.allow_roles.0");
    let c = ok(
        Some(
            "[aws]\nfailover_region = \"us-west-2\"\n\
             [[secrets]]\nid = \"a\"\nrole_arn = \"arn:aws-cn:iam::123456789012:role/path/r\"\nexternal_id = \"x\"\nregion = \"cn-north-1\"\n\
             [[discover]]\ntags = { team = \"blue\" }\n",
        ),
        &[],
    );
    let via = c.targets[0].key.via();
    assert_eq!(via.region.as_deref(), Some("cn-north-1"));
    assert_eq!(
        via.failover.as_deref(),
        Some("us-west-2"),
        "the global failover applies"
    );
    let role = via.role.as_ref().unwrap();
    assert_eq!(
        (role.arn.as_str(), role.external_id.as_deref()),
        ("arn:aws-cn:iam::123456789012:role/path/r", Some("x"))
    );
    assert_eq!(
        c.discover[0].filter.tags,
        [("team".to_owned(), "blue".to_owned())]
    );
}
