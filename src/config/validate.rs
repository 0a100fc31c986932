//! Validation: the merged [`RawConfig`] → the typed [`Config`]. Every error names the key and
//! the layer its value came from (figment metadata).

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use figment::{Figment, Metadata};

use super::raw::{Dur, RawCache, RawConfig, RawListen};
use super::{
    ApiConfig, AuthConfig, AwsConfig, Config, ConfigError, Discover, LambdaConfig, ListenConfig,
    LogConfig, PeerAllow, RetryMode, SourceConfig, TokenSource, UnixConfig,
};
use crate::api::allow::{AllowList, Pattern};
use crate::cache::{Backoff, Settings, Target};
use crate::refs::{self, RefKind};
use crate::render::{Action, Destination, SignalTarget, Syntax, TemplateSource, TemplateSpec};
use crate::source::{Key, PathKey};
use crate::source::{Role, SecretFilter, Via};

struct Check<'a> {
    fig: &'a Figment,
}

impl Check<'_> {
    /// For a constraint between `low` and `high`: blames the key someone set rather than a
    /// default (`high` when both were set), with the message written from its side.
    fn err_order(&self, low: &str, high: &str) -> ConfigError {
        let set = |k: &str| {
            self.fig
                .find_metadata(k)
                .is_some_and(|m| m.name != "built-in defaults")
        };
        if set(high) || !set(low) {
            self.err(high, format!("must not be below {low}"))
        } else {
            self.err(low, format!("must not exceed {high}"))
        }
    }

    fn err(&self, key: &str, message: impl Into<String>) -> ConfigError {
        // Array elements have no metadata of their own: fall back to the nearest parent key.
        let mut probe = key;
        let md = loop {
            match self.fig.find_metadata(probe) {
                Some(md) => break Some(md),
                None => match probe.rsplit_once('.') {
                    Some((parent, _)) => probe = parent,
                    None => break None,
                },
            }
        };
        let origin = match md {
            Some(Metadata {
                name,
                source: Some(src),
                ..
            }) => format!("{name} {src}"),
            Some(md) => md.name.to_string(),
            None => "defaults".to_owned(),
        };
        ConfigError::Invalid {
            key: key.to_owned(),
            origin,
            message: message.into(),
        }
    }
}

pub(super) fn validate(raw: RawConfig, fig: &Figment) -> Result<Config, ConfigError> {
    let c = Check { fig };
    Ok(Config {
        listen: listen(&raw, &c)?,
        api: api(&raw, &c)?,
        auth: auth(&raw, &c)?,
        cache: cache(&raw, &c)?,
        abort_on_prefetch_error: match raw.cache.on_prefetch_error.as_str() {
            "abort" => true,
            "degrade" => false,
            _ => return Err(c.err("cache.on_prefetch_error", "expected `degrade` or `abort`")),
        },
        aws: aws(&raw, &c)?,
        source: match (raw.source.kind.as_str(), &raw.source.file) {
            ("aws", None) => SourceConfig::Aws,
            ("file", Some(p)) => SourceConfig::File(p.clone()),
            ("file", None) => return Err(c.err("source.kind", "`file` needs source.file = PATH")),
            ("aws", Some(_)) => {
                return Err(c.err("source.file", "only valid with source.kind = \"file\""));
            }
            _ => return Err(c.err("source.kind", "expected `aws` or `file`")),
        },
        targets: targets(&raw, &c)?,
        log: log(&raw, &c)?,
        lambda: LambdaConfig {
            prefetch_timeout: positive(&c, "lambda.prefetch_timeout", raw.lambda.prefetch_timeout)?,
            prefetch_on_snapstart: raw.lambda.prefetch_on_snapstart,
        },
        templates: templates(&raw, &c)?,
        discover: discover(&raw, &c)?,
        warnings: Vec::new(),
        raw,
    })
}

fn listen(raw: &RawConfig, c: &Check<'_>) -> Result<ListenConfig, ConfigError> {
    let l = &raw.listen;
    let tcp = match l.tcp.as_str() {
        "" => None,
        s => {
            let addr: SocketAddr = s
                .parse()
                .map_err(|_| c.err("listen.tcp", format!("{s:?} is not an IP:port address")))?;
            if !addr.ip().is_loopback() && !l.allow_non_loopback {
                return Err(c.err(
                    "listen.tcp",
                    format!("{addr} is not a loopback address; set listen.allow_non_loopback = true to expose secrets beyond this host"),
                ));
            }
            Some(addr)
        }
    };
    let unix = match &l.unix {
        None => None,
        Some(path) => Some(UnixConfig {
            path: path.clone(),
            mode: u32::from_str_radix(&l.unix_mode, 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| {
                    c.err(
                        "listen.unix_mode",
                        "expected an octal mode such as \"0660\"",
                    )
                })?,
            owner: l
                .unix_owner
                .as_deref()
                .map(|o| lookup_id(Path::new("/etc/passwd"), o))
                .transpose()
                .map_err(|m| c.err("listen.unix_owner", m))?,
            group: l
                .unix_group
                .as_deref()
                .map(|g| lookup_id(Path::new("/etc/group"), g))
                .transpose()
                .map_err(|m| c.err("listen.unix_group", m))?,
            allow: peer_allow(l, c)?,
        }),
    };
    if tcp.is_none() && unix.is_none() {
        return Err(c.err("listen.tcp", "no listener: set listen.tcp or listen.unix"));
    }
    Ok(ListenConfig {
        tcp,
        unix,
        max_connections: usize::try_from(l.max_connections)
            .ok()
            .and_then(NonZeroUsize::new)
            .ok_or_else(|| c.err("listen.max_connections", "must be at least 1"))?,
        header_timeout: positive(c, "listen.header_timeout", l.header_timeout)?,
        grace: l.grace.0,
    })
}

fn peer_allow(l: &RawListen, c: &Check<'_>) -> Result<Option<PeerAllow>, ConfigError> {
    if l.unix_allow_users.is_empty() && l.unix_allow_groups.is_empty() {
        return Ok(None);
    }
    let ids = |key: &str, file: &str, names: &[String]| {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                lookup_id(Path::new(file), n).map_err(|m| c.err(&format!("{key}.{i}"), m))
            })
            .collect::<Result<Vec<u32>, _>>()
    };
    Ok(Some(PeerAllow {
        uids: ids(
            "listen.unix_allow_users",
            "/etc/passwd",
            &l.unix_allow_users,
        )?,
        gids: ids(
            "listen.unix_allow_groups",
            "/etc/group",
            &l.unix_allow_groups,
        )?,
    }))
}

/// Resolves a user or group name (or number) through an `/etc/passwd`-style file.
fn lookup_id(file: &Path, name: &str) -> Result<u32, String> {
    if let Ok(id) = name.parse() {
        return Ok(id);
    }
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(':');
            let n = f.next()?;
            let id = f.nth(1)?.parse().ok()?;
            (n == name).then_some(id)
        })
        .next()
        .ok_or_else(|| format!("{name:?} not found in {}", file.display()))
}

fn api(raw: &RawConfig, c: &Check<'_>) -> Result<ApiConfig, ConfigError> {
    let p = &raw.api.path_prefix;
    if !p.starts_with('/') || p.contains(['?', '#']) {
        return Err(c.err(
            "api.path_prefix",
            "must start with `/` and hold no `?` or `#`",
        ));
    }
    let path_prefix = if p.ends_with('/') {
        p.clone()
    } else {
        format!("{p}/")
    };
    let patterns = |key: &str, list: &Option<Vec<String>>| {
        list.as_ref()
            .map(|l| {
                l.iter()
                    .enumerate()
                    .map(|(i, s)| {
                        Pattern::parse(s).ok_or_else(|| {
                            c.err(
                                &format!("{key}.{i}"),
                                "expected a name, or a prefix ending in a single `*`",
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()
    };
    Ok(ApiConfig {
        path_prefix,
        strict_query: raw.api.strict_query,
        metrics_token: raw.api.metrics_token,
        metrics_item_labels: raw.api.metrics_item_labels,
        allow: AllowList {
            secrets: patterns("api.allow_secrets", &raw.api.allow_secrets)?,
            parameters: patterns("api.allow_parameters", &raw.api.allow_parameters)?,
        },
        max_roles: usize::try_from(raw.api.max_roles)
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| c.err("api.max_roles", "must be between 1 and 100"))?,
        allow_roles: patterns("api.allow_roles", &raw.api.allow_roles)?,
        failover: match raw.aws.failover_region.as_deref() {
            None => None,
            Some(r) if is_region(r) => Some(Arc::from(r)),
            Some(_) => {
                return Err(c.err("aws.failover_region", "expected a region such as eu-west-1"));
            }
        },
    })
}

fn auth(raw: &RawConfig, c: &Check<'_>) -> Result<AuthConfig, ConfigError> {
    if raw.auth.headers.is_empty() {
        return Err(c.err("auth.headers", "must name at least one header"));
    }
    if raw.auth.tokens.is_empty() {
        return Err(c.err("auth.tokens", "must name at least one token source"));
    }
    let headers = raw
        .auth
        .headers
        .iter()
        .map(|h| {
            http::HeaderName::from_bytes(h.as_bytes())
                .map_err(|_| c.err("auth.headers", format!("{h:?} is not a valid header name")))
        })
        .collect::<Result<_, _>>()?;
    let tokens = raw
        .auth
        .tokens
        .iter()
        .map(|t| match t.strip_prefix("file://") {
            Some("") => Err(c.err("auth.tokens", "file:// needs a path")),
            Some(p) => Ok(TokenSource::File(PathBuf::from(p))),
            None if !t.is_empty()
                && t.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_') =>
            {
                Ok(TokenSource::Env(t.clone()))
            }
            None => Err(c.err(
                "auth.tokens",
                format!("{t:?} is neither an env var name nor file://PATH"),
            )),
        })
        .collect::<Result<_, _>>()?;
    Ok(AuthConfig { headers, tokens })
}

fn cache(raw: &RawConfig, c: &Check<'_>) -> Result<Settings, ConfigError> {
    let r = &raw.cache;
    if !(0.0..=1.0).contains(&r.jitter) {
        return Err(c.err("cache.jitter", "must be between 0 and 1"));
    }
    let backoff = Backoff {
        min: positive(c, "cache.backoff_min", r.backoff_min)?,
        max: positive(c, "cache.backoff_max", r.backoff_max)?,
    };
    if backoff.max < backoff.min {
        return Err(c.err_order("cache.backoff_min", "cache.backoff_max"));
    }
    Ok(settings(r, backoff))
}

fn settings(r: &RawCache, backoff: Backoff) -> Settings {
    Settings {
        secrets_ttl: r.secrets_ttl.unwrap_or(r.ttl).0,
        parameters_ttl: r.parameters_ttl.unwrap_or(r.ttl).0,
        max_entries: r.max_entries as usize,
        serve_stale: r.serve_stale,
        max_stale: r.max_stale.0,
        jitter: r.jitter,
        backoff,
        batch_window: r.batch_window.0,
    }
}

/// sidekey's defaults: what a config without a `[cache]` table gets.
impl Default for Settings {
    fn default() -> Self {
        let r = RawCache::default();
        let backoff = Backoff {
            min: r.backoff_min.0,
            max: r.backoff_max.0,
        };
        settings(&r, backoff)
    }
}

fn aws(raw: &RawConfig, c: &Check<'_>) -> Result<AwsConfig, ConfigError> {
    let a = &raw.aws;
    let nonzero_timeout = |d: Option<Dur>| d.map(|d| d.0).filter(|d| !d.is_zero());
    if let Some(url) = &a.endpoint_url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        return Err(c.err("aws.endpoint_url", "must be an http:// or https:// URL"));
    }
    Ok(AwsConfig {
        region: a.region.clone().filter(|r| !r.is_empty()),
        endpoint_url: a.endpoint_url.clone(),
        timeout: nonzero_timeout(a.timeout),
        attempt_timeout: nonzero_timeout(a.attempt_timeout),
        connect_timeout: positive(c, "aws.connect_timeout", a.connect_timeout)?,
        secrets_manager_timeout: nonzero_timeout(a.secrets_manager_timeout),
        ssm_timeout: nonzero_timeout(a.ssm_timeout),
        retry_mode: match a.retry_mode.as_str() {
            "standard" => RetryMode::Standard,
            "adaptive" => RetryMode::Adaptive,
            _ => return Err(c.err("aws.retry_mode", "expected `standard` or `adaptive`")),
        },
        max_attempts: NonZeroU32::new(a.max_attempts)
            .ok_or_else(|| c.err("aws.max_attempts", "must be at least 1"))?,
        max_connections: usize::try_from(a.max_connections)
            .ok()
            .and_then(NonZeroUsize::new)
            .ok_or_else(|| c.err("aws.max_connections", "must be at least 1"))?,
        validate_credentials: a.validate_credentials,
    })
}

fn targets(raw: &RawConfig, c: &Check<'_>) -> Result<Vec<Target>, ConfigError> {
    let default = positive(c, "cache.refresh_interval", raw.cache.refresh_interval)?;
    let interval = |key: &str, d: Option<Dur>| match d {
        Some(d) if d.0 < Duration::from_secs(1) => Err(c.err(key, "must be at least 1s")),
        Some(d) => Ok(d.0),
        None => Ok(default),
    };
    let mut out = Vec::new();
    for (i, s) in raw.secrets.iter().enumerate() {
        let at = |f: &str| format!("secrets.{i}.{f}");
        let r = refs::parse(&s.id, RefKind::Secret, true)
            .map_err(|e| c.err(&at("id"), e.to_string()))?;
        let Key::Secret(mut key) = r.key else {
            return Err(c.err(&at("id"), "is not a Secrets Manager reference"));
        };
        if s.version_stage.is_some() && key.version_stage.is_some()
            || s.version_id.is_some() && key.version_id.is_some()
        {
            return Err(c.err(
                &at("id"),
                "version given both in the id suffix and as a field",
            ));
        }
        key.version_stage = key.version_stage.or_else(|| s.version_stage.clone());
        key.version_id = key.version_id.or_else(|| s.version_id.clone());
        let interval = interval(&at("refresh_interval"), s.refresh_interval)?;
        let via = via(
            c,
            &at,
            [
                &s.role_arn,
                &s.external_id,
                &s.session_name,
                &s.region,
                &s.failover_region,
            ],
            &raw.aws.failover_region,
        )?;
        out.push(Target {
            key: Key::Secret(key).with_via(via),
            interval,
        });
    }
    for (i, p) in raw.parameters.iter().enumerate() {
        let at = |f: &str| format!("parameters.{i}.{f}");
        let key = match (&p.name, &p.path) {
            (Some(name), None) => {
                if p.recursive {
                    return Err(c.err(&at("recursive"), "only valid with `path`"));
                }
                refs::parse(name, RefKind::Parameter, p.with_decryption)
                    .map_err(|e| c.err(&at("name"), e.to_string()))?
                    .key
            }
            (None, Some(path)) => {
                refs::check_path(path).map_err(|e| c.err(&at("path"), e.to_string()))?;
                Key::Path(PathKey::new(path, p.recursive, p.with_decryption))
            }
            _ => {
                return Err(c.err(
                    &format!("parameters.{i}"),
                    "set exactly one of `name` and `path`",
                ));
            }
        };
        let interval = interval(&at("refresh_interval"), p.refresh_interval)?;
        let via = via(
            c,
            &at,
            [
                &p.role_arn,
                &p.external_id,
                &p.session_name,
                &p.region,
                &p.failover_region,
            ],
            &raw.aws.failover_region,
        )?;
        out.push(Target {
            key: key.with_via(via),
            interval,
        });
    }
    Ok(out)
}

/// An item's region and identity from its `role_arn`, `external_id`, `session_name`,
/// `region` and `failover_region` fields (in that order); `failover` is the global default.
fn via(
    c: &Check<'_>,
    at: &dyn Fn(&str) -> String,
    [role_arn, external_id, session_name, region, failover_region]: [&Option<String>; 5],
    failover: &Option<String>,
) -> Result<Via, ConfigError> {
    let role = match role_arn {
        Some(arn) if refs::is_role_arn(arn) => Some(Arc::new(Role {
            arn: arn.clone(),
            external_id: external_id.clone(),
            session_name: session_name.clone(),
        })),
        Some(_) => {
            return Err(c.err(
                &at("role_arn"),
                "expected arn:aws:iam::ACCOUNT:role/NAME (or aws-cn, aws-us-gov)",
            ));
        }
        None if external_id.is_some() => {
            return Err(c.err(&at("external_id"), "only valid with `role_arn`"));
        }
        None if session_name.is_some() => {
            return Err(c.err(&at("session_name"), "only valid with `role_arn`"));
        }
        None => None,
    };
    let region_of = |key: &str, r: &Option<String>| match r.as_deref() {
        None => Ok(None),
        Some(r) if is_region(r) => Ok(Some(Arc::<str>::from(r))),
        Some(_) => Err(c.err(key, "expected a region such as eu-west-1")),
    };
    let region = region_of(&at("region"), region)?;
    let failover = match failover_region {
        Some(_) => region_of(&at("failover_region"), failover_region)?,
        None => region_of("aws.failover_region", failover)?,
    };
    if failover.is_some() && failover == region {
        return Err(c.err(&at("failover_region"), "must differ from `region`"));
    }
    Ok(Via {
        region,
        role,
        failover,
    })
}

/// `xx-name-N` (`us-east-1`, `eu-central-2`, `us-gov-west-1`, `cn-north-1`, …).
fn is_region(r: &str) -> bool {
    let parts: Vec<&str> = r.split('-').collect();
    parts.len() >= 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric()))
        && parts
            .last()
            .is_some_and(|p| p.chars().all(|c| c.is_ascii_digit()))
        && r.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn discover(raw: &RawConfig, c: &Check<'_>) -> Result<Vec<Discover>, ConfigError> {
    let default = positive(c, "cache.refresh_interval", raw.cache.refresh_interval)?;
    raw.discover
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let at = |f: &str| format!("discover.{i}.{f}");
            if d.name_prefix.as_deref().is_none_or(str::is_empty) && d.tags.is_empty() {
                return Err(c.err(
                    &format!("discover.{i}"),
                    "set `name_prefix` and/or `tags` (listing every secret is not discovery)",
                ));
            }
            let interval = match d.refresh_interval {
                Some(d) if d.0 < Duration::from_secs(1) => {
                    return Err(c.err(&at("refresh_interval"), "must be at least 1s"));
                }
                Some(d) => d.0,
                None => default,
            };
            Ok(Discover {
                filter: SecretFilter {
                    name_prefix: d.name_prefix.clone().filter(|p| !p.is_empty()),
                    tags: d.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    via: via(
                        c,
                        &at,
                        [
                            &d.role_arn,
                            &d.external_id,
                            &d.session_name,
                            &d.region,
                            &d.failover_region,
                        ],
                        &raw.aws.failover_region,
                    )?,
                },
                interval,
            })
        })
        .collect()
}

fn log(raw: &RawConfig, c: &Check<'_>) -> Result<LogConfig, ConfigError> {
    let level = raw.log.level.to_ascii_lowercase();
    // A bare `debug`/`trace` raises only sidekey's own logs: SDK and HTTP internals at those
    // levels may print request and response bodies, i.e. secret values. A full directive
    // (e.g. `trace,aws_smithy_runtime=trace`) is taken as the operator's explicit choice.
    let filter = match level.as_str() {
        "none" => "off".to_owned(),
        "warning" => "warn".to_owned(),
        "debug" | "trace" => format!("info,sidekey={level}"),
        _ => level,
    };
    tracing_subscriber::EnvFilter::try_new(&filter)
        .map_err(|e| c.err("log.level", e.to_string()))?;
    Ok(LogConfig {
        filter,
        json: match raw.log.format.as_str() {
            "text" => false,
            "json" => true,
            _ => return Err(c.err("log.format", "expected `text` or `json`")),
        },
        file: raw.log.file.clone(),
    })
}

fn positive(c: &Check<'_>, key: &str, d: Dur) -> Result<Duration, ConfigError> {
    if d.0.is_zero() {
        return Err(c.err(key, "must be greater than zero"));
    }
    Ok(d.0)
}

fn templates(raw: &RawConfig, c: &Check<'_>) -> Result<Vec<TemplateSpec>, ConfigError> {
    raw.templates
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let at = |f: &str| format!("templates.{i}.{f}");
            let source = match (&t.source, &t.contents) {
                (Some(p), None) => TemplateSource::File(p.clone()),
                (None, Some(text)) => TemplateSource::Inline(text.clone()),
                _ => return Err(c.err(&at("source"), "set exactly one of `source` and `contents`")),
            };
            let syntax = match t.syntax.as_str() {
                "jinja" => Syntax::Jinja,
                "cloudformation" => Syntax::CloudFormation,
                _ => return Err(c.err(&at("syntax"), "expected `jinja` or `cloudformation`")),
            };
            // A template that cannot parse fails the load (exit 64, or a rejected reload), not
            // every render after it.
            let (key, name, text) = match &source {
                TemplateSource::File(p) => (
                    "source",
                    p.display().to_string(),
                    std::fs::read_to_string(p).map_err(|e| {
                        c.err(&at("source"), format!("cannot read {}: {e}", p.display()))
                    })?,
                ),
                TemplateSource::Inline(text) => ("contents", "contents".to_owned(), text.clone()),
            };
            crate::render::template::check(&name, &text, syntax)
                .map_err(|m| c.err(&at(key), format!("{name}: {m}")))?;
            let id = |key: &str, file: &str, v: &Option<String>| {
                v.as_deref()
                    .map(|name| lookup_id(Path::new(file), name))
                    .transpose()
                    .map_err(|m| c.err(&at(key), m))
            };
            // A destination names its file plainly: `..` could climb out of a mounted
            // directory in ways the config's reader would not see at a glance.
            let plain = t.destination.file_name().is_some()
                && !t
                    .destination
                    .components()
                    .any(|p| p == std::path::Component::ParentDir);
            if !plain {
                return Err(c.err(
                    &at("destination"),
                    "must name a file, without `..` components",
                ));
            }
            let destination = Destination {
                path: t.destination.clone(),
                mode: u32::from_str_radix(&t.mode, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| c.err(&at("mode"), "expected an octal mode such as \"0640\""))?,
                owner: id("owner", "/etc/passwd", &t.owner)?,
                group: id("group", "/etc/group", &t.group)?,
                create_dirs: t.create_dirs,
                in_place: t.in_place,
            };
            let action = match (&t.command, &t.signal) {
                (Some(_), Some(_)) => {
                    return Err(c.err(&at("signal"), "use either `command` or `signal`"));
                }
                (Some(argv), None) if argv.is_empty() || argv[0].is_empty() => {
                    return Err(c.err(&at("command"), "must name a program"));
                }
                (Some(argv), None) => Action::Command {
                    argv: argv.clone(),
                    timeout: positive(c, &at("command_timeout"), t.command_timeout)?,
                },
                (None, Some(sig)) => Action::Signal {
                    signal: signal_number(sig)
                        .ok_or_else(|| c.err(&at("signal"), format!("unknown signal {sig:?}")))?,
                    target: match (t.pid, &t.pid_file) {
                        (Some(pid), None) if pid > 0 => SignalTarget::Pid(pid),
                        (None, Some(f)) => SignalTarget::PidFile(f.clone()),
                        // Under `sidekey exec`: the supervised command.
                        (None, None) => SignalTarget::ExecChild,
                        _ => {
                            return Err(c.err(
                                &at("pid"),
                                "give at most one of `pid` (> 0) and `pid_file`",
                            ));
                        }
                    },
                },
                (None, None) => Action::None,
            };
            if t.wait.max.0 < t.wait.min.0 {
                return Err(c.err_order(&at("wait.min"), &at("wait.max")));
            }
            Ok(TemplateSpec {
                source,
                syntax,
                destination,
                action,
                wait_min: t.wait.min.0,
                wait_max: t.wait.max.0,
            })
        })
        .collect()
}

/// `HUP`, `SIGHUP` or a number → the signal number.
pub fn signal_number(name: &str) -> Option<i32> {
    if let Ok(n) = name.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = name.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    Some(match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "KILL" => 9,
        "USR1" => 10,
        "USR2" => 12,
        "TERM" => 15,
        "CONT" => 18,
        "STOP" => 19,
        "WINCH" => 28,
        _ => return None,
    })
}
