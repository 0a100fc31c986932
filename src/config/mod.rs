//! Configuration: figment layers → [`RawConfig`] (unknown keys denied) → validated [`Config`].
//!
//! Layers, lowest first: built-in defaults < the PSLE environment variables (compat) < the
//! config file (sidekey keys and WCP flat keys) < `SIDEKEY_*` environment (`__` nests) < CLI
//! flags. The environment arrives as a map, never read here from the process, so tests feed
//! strings. Loading never binds sockets. Errors name the key and the layer it came from.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use crate::cache::{Backoff, Settings, Target};
use crate::refs::{self, RefKind};
use crate::source::{Key, PathKey};

mod compat;
pub mod raw;
#[cfg(test)]
mod tests;

pub use raw::{Dur, RawConfig};

/// Exit code for bad configuration (`EX_USAGE`).
pub const EXIT_CONFIG: u8 = 64;

/// What to load.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Config file (`--config`).
    pub file: Option<PathBuf>,
    /// Process environment snapshot.
    pub env: BTreeMap<String, String>,
    /// CLI overrides as dotted keys (`listen.tcp`) → TOML-like values.
    pub cli: Vec<(String, String)>,
}

/// The validated configuration. Holds no secret values: tokens are read at startup.
#[derive(Clone, Debug)]
pub struct Config {
    /// Listeners and connection limits.
    pub listen: ListenConfig,
    /// HTTP API behaviour.
    pub api: ApiConfig,
    /// Token headers and sources.
    pub auth: AuthConfig,
    /// Cache behaviour.
    pub cache: Settings,
    /// Abort startup when prefetch fails.
    pub abort_on_prefetch_error: bool,
    /// AWS clients.
    pub aws: AwsConfig,
    /// Where values come from.
    pub source: SourceConfig,
    /// Keys to prefetch and keep fresh.
    pub targets: Vec<Target>,
    /// Logging.
    pub log: LogConfig,
    /// Compat notices to log once tracing is up (e.g. a clamped PSLE TTL).
    pub warnings: Vec<String>,
    /// The merged raw config, for `check-config`.
    pub raw: RawConfig,
}

/// Listener settings.
#[derive(Clone, Debug)]
pub struct ListenConfig {
    /// TCP address, if enabled.
    pub tcp: Option<SocketAddr>,
    /// Unix socket, if enabled.
    pub unix: Option<UnixConfig>,
    /// Concurrent client connections.
    pub max_connections: NonZeroUsize,
    /// Time allowed for a request head.
    pub header_timeout: Duration,
    /// Drain limit on shutdown.
    pub grace: Duration,
}

/// Unix socket settings.
#[derive(Clone, Debug)]
pub struct UnixConfig {
    /// Socket path.
    pub path: PathBuf,
    /// Permission bits.
    pub mode: u32,
    /// Owner uid.
    pub owner: Option<u32>,
    /// Group gid.
    pub group: Option<u32>,
}

/// HTTP API settings.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// WCP path-style prefix, starts and ends with `/`.
    pub path_prefix: String,
    /// Reject unknown query parameters on compatible routes.
    pub strict_query: bool,
}

/// Authentication settings.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// Header names (lower-case) that may carry the token.
    pub headers: Vec<http::HeaderName>,
    /// Ordered token sources; the first that is set wins.
    pub tokens: Vec<TokenSource>,
}

/// Where the expected token comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// An environment variable (its value may itself be `file://PATH`).
    Env(String),
    /// A file, re-read when it changes.
    File(PathBuf),
}

/// AWS client settings.
#[derive(Clone, Debug)]
pub struct AwsConfig {
    /// Region override.
    pub region: Option<String>,
    /// Endpoint override.
    pub endpoint_url: Option<String>,
    /// Operation timeout.
    pub timeout: Option<Duration>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Secrets Manager operation timeout.
    pub secrets_manager_timeout: Option<Duration>,
    /// Parameter Store operation timeout.
    pub ssm_timeout: Option<Duration>,
    /// SDK retry mode.
    pub retry_mode: RetryMode,
    /// Attempts per call.
    pub max_attempts: NonZeroU32,
    /// Concurrent calls per client.
    pub max_connections: NonZeroUsize,
    /// STS identity check at startup.
    pub validate_credentials: bool,
}

/// SDK retry strategy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryMode {
    /// Exponential backoff with jitter.
    Standard,
    /// Standard plus client-side rate limiting.
    Adaptive,
}

/// Value backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceConfig {
    /// AWS Secrets Manager and Parameter Store.
    Aws,
    /// A local TOML/JSON file.
    File(PathBuf),
}

/// Logging settings.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// Env-filter directive.
    pub filter: String,
    /// JSON lines instead of text.
    pub json: bool,
    /// Log file instead of stderr.
    pub file: Option<PathBuf>,
}

/// Why config could not be loaded. Messages name the key and the layer it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Type or structure error found by figment (boxed: figment's error is large).
    #[error("{0}")]
    Figment(Box<figment::Error>),
    /// A value that parsed but is not valid.
    #[error("invalid `{key}` (from {origin}): {message}")]
    Invalid {
        /// Dotted key.
        key: String,
        /// Layer name.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// File path.
        path: PathBuf,
        /// IO error.
        source: std::io::Error,
    },
}

/// A named in-memory figment layer, so errors say where a value came from.
pub(crate) struct Layer {
    name: String,
    dict: Dict,
}

// === loading ===

/// Loads and validates the configuration.
pub fn load(opts: &LoadOptions) -> Result<Config, ConfigError> {
    let (psle, mut warnings) = compat::psle_layer(&opts.env)?;
    let mut fig = Figment::from(Layer::defaults()).merge(psle);
    if let Some(path) = &opts.file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        fig = fig.merge(compat::file_layer(path, &text)?);
    }
    fig = fig.merge(env_layer(&opts.env)).merge(cli_layer(&opts.cli));
    let raw: RawConfig = fig
        .extract()
        .map_err(|e| ConfigError::Figment(Box::new(e)))?;
    let mut config = validate(raw, &fig)?;
    config.warnings.append(&mut warnings);
    Ok(config)
}

/// The effective config as TOML, for `check-config`. Config holds no secret values (tokens are
/// read at startup); credentials embedded in an endpoint URL are redacted.
pub fn render_effective(config: &Config) -> Result<String, toml::ser::Error> {
    let mut raw = config.raw.clone();
    if let Some(url) = raw.aws.endpoint_url.as_mut()
        && let Some((scheme, rest)) = url.split_once("://")
        && let Some((_, host)) = rest.split_once('@')
    {
        *url = format!("{scheme}://<redacted>@{host}");
    }
    toml::to_string_pretty(&raw)
}

/// Top-level sections whose change needs a restart (everything but what to prefetch).
pub fn restart_required(old: &RawConfig, new: &RawConfig) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut check = |name, same: bool| {
        if !same {
            out.push(name);
        }
    };
    check("listen", old.listen == new.listen);
    check("api", old.api == new.api);
    check("auth", old.auth == new.auth);
    check("cache", old.cache == new.cache);
    check("aws", old.aws == new.aws);
    check("source", old.source == new.source);
    check("log", old.log == new.log);
    out
}

/// `SIDEKEY_A__B=v` → `a.b = v`.
fn env_layer(env: &BTreeMap<String, String>) -> Layer {
    let mut layer = Layer::new("environment variables SIDEKEY_*");
    for (name, value) in env {
        if let Some(key) = name.strip_prefix("SIDEKEY_") {
            let path: Vec<String> = key.split("__").map(str::to_lowercase).collect();
            layer.set_path(&path, parse_value(value));
        }
    }
    layer
}

fn cli_layer(cli: &[(String, String)]) -> Layer {
    let mut layer = Layer::new("command-line flags");
    for (key, value) in cli {
        let path: Vec<String> = key.split('.').map(str::to_owned).collect();
        layer.set_path(&path, parse_value(value));
    }
    layer
}

/// Parses an env/CLI string like figment's `Env` provider does (numbers, bools, arrays).
fn parse_value(s: &str) -> Value {
    s.parse()
        .unwrap_or_else(|never: std::convert::Infallible| match never {})
}

// === validation ===

struct Check<'a> {
    fig: &'a Figment,
}

impl Check<'_> {
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

fn validate(raw: RawConfig, fig: &Figment) -> Result<Config, ConfigError> {
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
    Ok(ApiConfig {
        path_prefix,
        strict_query: raw.api.strict_query,
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
        return Err(c.err("cache.backoff_max", "must not be below cache.backoff_min"));
    }
    Ok(Settings {
        secrets_ttl: r.secrets_ttl.unwrap_or(r.ttl).0,
        parameters_ttl: r.parameters_ttl.unwrap_or(r.ttl).0,
        max_entries: r.max_entries as usize,
        serve_stale: r.serve_stale,
        max_stale: r.max_stale.0,
        jitter: r.jitter,
        backoff,
        batch_window: r.batch_window.0,
    })
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
        out.push(Target {
            key: Key::Secret(key),
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
                if !path.starts_with('/') || path.contains(':') {
                    return Err(c.err(&at("path"), "must start with `/`"));
                }
                let trimmed = path.trim_end_matches('/');
                Key::Path(PathKey {
                    path: if trimmed.is_empty() {
                        "/".into()
                    } else {
                        trimmed.into()
                    },
                    recursive: p.recursive,
                    decrypt: p.with_decryption,
                })
            }
            _ => {
                return Err(c.err(
                    &format!("parameters.{i}"),
                    "set exactly one of `name` and `path`",
                ));
            }
        };
        let interval = interval(&at("refresh_interval"), p.refresh_interval)?;
        out.push(Target { key, interval });
    }
    Ok(out)
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

// === Layer ===

impl Layer {
    /// The built-in defaults, so errors can say "built-in defaults".
    fn defaults() -> Self {
        let dict = match Value::serialize(RawConfig::default()) {
            Ok(Value::Dict(_, d)) => d,
            _ => Dict::new(),
        };
        Self {
            name: "built-in defaults".to_owned(),
            dict,
        }
    }

    pub(crate) fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            dict: Dict::new(),
        }
    }

    /// Sets a nested key, creating tables on the way.
    pub(crate) fn set_path(&mut self, path: &[String], value: Value) {
        let Some((last, parents)) = path.split_last() else {
            return;
        };
        let mut dict = &mut self.dict;
        for p in parents {
            let slot = dict
                .entry(p.clone())
                .or_insert_with(|| Value::from(Dict::new()));
            if !matches!(slot, Value::Dict(..)) {
                *slot = Value::from(Dict::new());
            }
            let Value::Dict(_, inner) = slot else {
                return;
            };
            dict = inner;
        }
        dict.insert(last.clone(), value);
    }

    pub(crate) fn set(&mut self, dotted: &str, value: impl Into<Value>) {
        let path: Vec<String> = dotted.split('.').map(str::to_owned).collect();
        self.set_path(&path, value.into());
    }
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.clone()).interpolater(|_: &Profile, keys: &[&str]| keys.join("."))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}
