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

use crate::cache::{Settings, Target};

mod compat;
pub mod raw;
#[cfg(test)]
mod tests;
mod validate;

pub use validate::signal_number;

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
    /// Lambda extension mode.
    pub lambda: LambdaConfig,
    /// Rendered files.
    pub templates: Vec<crate::render::TemplateSpec>,
    /// Secret discovery rules.
    pub discover: Vec<Discover>,
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
    /// Peers allowed to connect, checked with `SO_PEERCRED`; `None`: any peer.
    pub allow: Option<PeerAllow>,
}

/// Unix socket peers that may connect: by uid, or by primary gid. sidekey's own uid always
/// may (`sidekey health`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerAllow {
    /// Allowed uids.
    pub uids: Vec<u32>,
    /// Allowed gids.
    pub gids: Vec<u32>,
}

impl PeerAllow {
    /// Whether a peer with these credentials may connect.
    pub fn permits(&self, uid: u32, gid: u32) -> bool {
        uid == rustix::process::getuid().as_raw()
            || self.uids.contains(&uid)
            || self.gids.contains(&gid)
    }
}

/// HTTP API settings.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// WCP path-style prefix, starts and ends with `/`.
    pub path_prefix: String,
    /// Reject unknown query parameters on compatible routes.
    pub strict_query: bool,
    /// `/metrics` needs the token.
    pub metrics_token: bool,
    /// `/metrics` labels per-item ages with ids.
    pub metrics_item_labels: bool,
    /// What requests may read at all.
    pub allow: crate::api::allow::AllowList,
    /// Distinct `roleArn` values requests may name.
    pub max_roles: usize,
    /// Role ARNs requests may name; `None`: any.
    pub allow_roles: Option<Vec<crate::api::allow::Pattern>>,
    /// `aws.failover_region`, for keys requests name.
    pub failover: Option<std::sync::Arc<str>>,
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
    /// Per-attempt timeout.
    pub attempt_timeout: Option<Duration>,
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

/// Lambda extension settings.
#[derive(Clone, Debug)]
pub struct LambdaConfig {
    /// Longest prefetch before Register; on expiry register anyway and keep fetching.
    pub prefetch_timeout: Duration,
    /// Prefetch during init under SnapStart.
    pub prefetch_on_snapstart: bool,
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
    let file = match &opts.file {
        None => None,
        Some(path) => Some((
            path.as_path(),
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?,
        )),
    };
    load_text(opts, file.as_ref().map(|(p, t)| (*p, t.as_str())))
}

/// [`load`] with the config file's text already read (`path` names it in messages): the entry
/// point for property tests and fuzzing.
pub fn load_text(opts: &LoadOptions, file: Option<(&Path, &str)>) -> Result<Config, ConfigError> {
    let (psle, mut warnings) = compat::psle_layer(&opts.env)?;
    let mut fig = Figment::from(Layer::defaults()).merge(psle);
    if let Some((path, text)) = file {
        fig = fig.merge(compat::file_layer(path, text)?);
    }
    fig = fig.merge(env_layer(&opts.env)).merge(cli_layer(&opts.cli));
    let raw: RawConfig = fig
        .extract()
        .map_err(|e| ConfigError::Figment(Box::new(e)))?;
    let mut config = validate::validate(raw, &fig)?;
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
    check("lambda", old.lambda == new.lambda);
    check("process", old.process == new.process);
    check("discover", old.discover == new.discover);
    out
}

/// `SIDEKEY_A__B=v` → `a.b = v`.
fn env_layer(env: &BTreeMap<String, String>) -> Layer {
    let mut layer = Layer::new("environment variables SIDEKEY_*");
    for (name, value) in env {
        // SIDEKEY_CONFIG names the file (a CLI flag's env form), not a key.
        if name == "SIDEKEY_CONFIG" {
            continue;
        }
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

/// A discovery rule: list secrets by name prefix and tags, prefetch what matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discover {
    /// What to list.
    pub filter: crate::source::SecretFilter,
    /// Listing and refresh interval.
    pub interval: Duration,
}
