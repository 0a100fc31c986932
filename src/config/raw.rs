//! The raw, layered config schema as users write it (TOML, `SIDEKEY_*` env, CLI). Every table
//! denies unknown keys; defaults live here and nowhere else.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// Listeners.
    pub listen: RawListen,
    /// HTTP API behaviour.
    pub api: RawApi,
    /// Request authentication.
    pub auth: RawAuth,
    /// Cache and refresh.
    pub cache: RawCache,
    /// AWS clients.
    pub aws: RawAws,
    /// Where values come from.
    pub source: RawSource,
    /// Secrets to prefetch.
    pub secrets: Vec<RawSecret>,
    /// Parameters and paths to prefetch.
    pub parameters: Vec<RawParameter>,
    /// Logging.
    pub log: RawLog,
    /// Lambda extension mode.
    pub lambda: RawLambda,
    /// Process hardening.
    pub process: RawProcess,
    /// Files rendered from templates.
    pub templates: Vec<RawTemplate>,
    /// Secrets found by name prefix and tags.
    pub discover: Vec<RawDiscover>,
}

/// `[listen]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawListen {
    /// TCP address; empty string disables TCP.
    pub tcp: String,
    /// Permit a non-loopback TCP address.
    pub allow_non_loopback: bool,
    /// Unix socket path; unset disables it.
    pub unix: Option<PathBuf>,
    /// Unix socket mode, octal string.
    #[serde(deserialize_with = "text")]
    pub unix_mode: String,
    /// Unix socket owner (name or uid).
    #[serde(deserialize_with = "opt_text")]
    pub unix_owner: Option<String>,
    /// Unix socket group (name or gid).
    #[serde(deserialize_with = "opt_text")]
    pub unix_group: Option<String>,
    /// Peers (names or uids) allowed on the Unix socket; with `unix_allow_groups` empty too,
    /// everyone the socket's mode lets in.
    pub unix_allow_users: Vec<String>,
    /// Peer groups (names or gids, primary group) allowed on the Unix socket.
    pub unix_allow_groups: Vec<String>,
    /// Concurrent client connections (WCP `max_conn`).
    pub max_connections: u32,
    /// Time allowed to send a request head.
    pub header_timeout: Dur,
    /// Graceful-shutdown drain limit.
    pub grace: Dur,
}

/// `[api]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawApi {
    /// Prefix of the WCP path-style route.
    pub path_prefix: String,
    /// Reject unknown query parameters on compatible routes (WCP parity).
    pub strict_query: bool,
    /// `/metrics` asks for the token like every other route (scrapers send it as a header).
    pub metrics_token: bool,
    /// `/metrics` adds one age gauge per cached item, labelled with its id (ids may be
    /// sensitive: off by default).
    pub metrics_item_labels: bool,
    /// Secret names (`name`, or `prefix*`) requests may read; unset: any.
    pub allow_secrets: Option<Vec<String>>,
    /// Parameter names and path prefixes requests may read; unset: any.
    pub allow_parameters: Option<Vec<String>>,
    /// Distinct roles requests may name with `roleArn` (agent: `max_roles`).
    pub max_roles: u32,
    /// Role ARNs (`arn`, or `prefix*`) requests may name; unset: any.
    pub allow_roles: Option<Vec<String>>,
}

/// `[auth]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    /// Request headers that may carry the token.
    pub headers: Vec<String>,
    /// Token sources in order: env var names (values may be `file://PATH`) or `file://PATH`.
    pub tokens: Vec<String>,
}

/// `[cache]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCache {
    /// Default refresh interval for prefetched items.
    pub refresh_interval: Dur,
    /// TTL of items read on demand.
    pub ttl: Dur,
    /// Overrides `ttl` for secrets.
    pub secrets_ttl: Option<Dur>,
    /// Overrides `ttl` for parameters and paths.
    pub parameters_ttl: Option<Dur>,
    /// Bound on on-demand entries; 0 disables on-demand caching.
    pub max_entries: u32,
    /// Serve stale values on transient errors.
    pub serve_stale: bool,
    /// How long a stale value may be served.
    pub max_stale: Dur,
    /// Refresh jitter as a fraction of the interval.
    pub jitter: f64,
    /// First retry delay after a failed refresh.
    pub backoff_min: Dur,
    /// Longest retry delay.
    pub backoff_max: Dur,
    /// Keys due this close together are refreshed in one batch.
    pub batch_window: Dur,
    /// `degrade` (serve what was fetched) or `abort` (exit) when prefetch fails.
    pub on_prefetch_error: String,
}

/// `[aws]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAws {
    /// Region; the SDK chain decides when unset.
    pub region: Option<String>,
    /// Region every item without its own `failover_region` fails over to.
    pub failover_region: Option<String>,
    /// Endpoint for every service (the SDK's `AWS_ENDPOINT_URL*` also work).
    pub endpoint_url: Option<String>,
    /// Whole-operation timeout (retries included); `0s` disables.
    pub timeout: Option<Dur>,
    /// Timeout of one attempt, so a hung connection is retried; `0s` disables.
    pub attempt_timeout: Option<Dur>,
    /// TCP/TLS connect timeout.
    pub connect_timeout: Dur,
    /// Operation timeout for Secrets Manager (overrides `timeout`).
    pub secrets_manager_timeout: Option<Dur>,
    /// Operation timeout for Parameter Store (overrides `timeout`).
    pub ssm_timeout: Option<Dur>,
    /// `standard` or `adaptive` (client-side rate limiting).
    pub retry_mode: String,
    /// Attempts per call, first included.
    pub max_attempts: u32,
    /// Concurrent calls per service client.
    pub max_connections: u32,
    /// Call STS GetCallerIdentity at startup.
    pub validate_credentials: bool,
}

/// `[source]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSource {
    /// `aws` or `file`.
    pub kind: String,
    /// Values file for `kind = "file"`.
    pub file: Option<PathBuf>,
}

/// `[[secrets]]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecret {
    /// Name, ARN, or either with the `:json-key:version-stage:version-id` suffix.
    pub id: String,
    /// Staging label.
    pub version_stage: Option<String>,
    /// Version id.
    pub version_id: Option<String>,
    /// Own refresh interval.
    pub refresh_interval: Option<Dur>,
    /// IAM role to assume for this item.
    pub role_arn: Option<String>,
    /// `ExternalId` the role's trust policy asks for.
    pub external_id: Option<String>,
    /// `RoleSessionName` (default `sidekey`).
    pub session_name: Option<String>,
    /// Region to read in (default: the SDK chain's, or the one in an ARN).
    pub region: Option<String>,
    /// Region to read when the primary one fails with a transient error.
    pub failover_region: Option<String>,
}

/// `[[parameters]]`: exactly one of `name` and `path`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawParameter {
    /// Single parameter (with optional `:version`/`:label`).
    pub name: Option<String>,
    /// Path to walk.
    pub path: Option<String>,
    /// Walk the whole subtree.
    #[serde(default)]
    pub recursive: bool,
    /// Decrypt SecureString values.
    #[serde(default = "yes")]
    pub with_decryption: bool,
    /// Own refresh interval.
    pub refresh_interval: Option<Dur>,
    /// IAM role to assume for this item.
    pub role_arn: Option<String>,
    /// `ExternalId` the role's trust policy asks for.
    pub external_id: Option<String>,
    /// `RoleSessionName` (default `sidekey`).
    pub session_name: Option<String>,
    /// Region to read in (default: the SDK chain's, or the one in an ARN).
    pub region: Option<String>,
    /// Region to read when the primary one fails with a transient error.
    pub failover_region: Option<String>,
}

/// `[[discover]]`: every secret matching a name prefix and/or tags, listed again on each
/// refresh interval.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawDiscover {
    /// Secret names starting with this.
    pub name_prefix: Option<String>,
    /// Tags every match carries (`key = "value"`; an empty value matches any value).
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
    /// How often the listing is repeated (default `cache.refresh_interval`); also the
    /// refresh interval of what it finds.
    pub refresh_interval: Option<Dur>,
    /// IAM role to assume for this item.
    pub role_arn: Option<String>,
    /// `ExternalId` the role's trust policy asks for.
    pub external_id: Option<String>,
    /// `RoleSessionName` (default `sidekey`).
    pub session_name: Option<String>,
    /// Region to read in (default: the SDK chain's, or the one in an ARN).
    pub region: Option<String>,
    /// Region to read when the primary one fails with a transient error.
    pub failover_region: Option<String>,
}

/// `[log]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    /// `trace`, `debug`, `info`, `warn`, `error`, `off`, or an env-filter directive.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
    /// Append logs to this file instead of stderr.
    pub file: Option<PathBuf>,
}

/// `[[templates]]`: one rendered file.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTemplate {
    /// Template file (re-read on every render).
    pub source: Option<PathBuf>,
    /// Inline template text (instead of `source`).
    pub contents: Option<String>,
    /// Output file.
    pub destination: PathBuf,
    /// `jinja` (minijinja) or `cloudformation` (only `{{resolve:…}}` references).
    #[serde(default = "jinja")]
    pub syntax: String,
    /// Output file mode, octal.
    #[serde(default = "mode_0600", deserialize_with = "text")]
    pub mode: String,
    /// Output owner (name or uid).
    #[serde(default, deserialize_with = "opt_text")]
    pub owner: Option<String>,
    /// Output group (name or gid).
    #[serde(default, deserialize_with = "opt_text")]
    pub group: Option<String>,
    /// Create missing parent directories.
    #[serde(default = "yes")]
    pub create_dirs: bool,
    /// Overwrite in place instead of an atomic rename (bind-mounted single files).
    #[serde(default)]
    pub in_place: bool,
    /// Command (argv, no shell) run after the file changed.
    pub command: Option<Vec<String>>,
    /// Kill the command after this long.
    #[serde(default = "thirty_seconds")]
    pub command_timeout: Dur,
    /// Signal (`HUP`, `SIGUSR1`, or a number) sent after the file changed…
    pub signal: Option<String>,
    /// …to this pid…
    pub pid: Option<i32>,
    /// …or to the pid in this file.
    pub pid_file: Option<PathBuf>,
    /// Debounce window for the action.
    #[serde(default)]
    pub wait: RawWait,
}

/// `wait = { min = "2s", max = "10s" }`: act `min` after the last change, at most `max` after
/// the first.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawWait {
    /// Quiet period.
    pub min: Dur,
    /// Upper bound.
    pub max: Dur,
}

impl Default for RawWait {
    fn default() -> Self {
        Self {
            min: secs(2),
            max: secs(10),
        }
    }
}

fn jinja() -> String {
    "jinja".to_owned()
}

fn mode_0600() -> String {
    "0600".to_owned()
}

fn thirty_seconds() -> Dur {
    secs(30)
}

/// `[process]`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawProcess {
    /// Allow core dumps and same-user ptrace (off: a crash or a debugger cannot copy values
    /// out of memory).
    pub core_dumps: bool,
}

/// `[lambda]`: only read when running as a Lambda extension.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLambda {
    /// How long prefetch may delay Register (init shares a 10 s budget with the function).
    pub prefetch_timeout: Dur,
    /// Prefetch before the snapshot under SnapStart (values would be stored in it).
    pub prefetch_on_snapstart: bool,
}

/// A duration written as seconds (`300`) or with a unit (`250ms`, `30s`, `5m`, `2h`, `1d`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

/// A string that may have been written as a number (`SIDEKEY_LISTEN__UNIX_MODE=0660` parses
/// as one, as does `unix_group = 1000`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Text {
    S(String),
    N(u64),
}

impl Text {
    fn into_string(self) -> String {
        match self {
            Text::S(s) => s,
            Text::N(n) => n.to_string(),
        }
    }
}

fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Text::deserialize(d).map(Text::into_string)
}

fn opt_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<Text>::deserialize(d)?.map(Text::into_string))
}

fn yes() -> bool {
    true
}

fn secs(s: u64) -> Dur {
    Dur(Duration::from_secs(s))
}

// === defaults ===

impl Default for RawListen {
    fn default() -> Self {
        Self {
            tcp: "127.0.0.1:2773".into(),
            allow_non_loopback: false,
            unix: None,
            unix_mode: "0600".into(),
            unix_owner: None,
            unix_group: None,
            unix_allow_users: Vec::new(),
            unix_allow_groups: Vec::new(),
            max_connections: 800,
            header_timeout: secs(10),
            grace: secs(5),
        }
    }
}

impl Default for RawApi {
    fn default() -> Self {
        Self {
            path_prefix: "/v1/".into(),
            strict_query: false,
            metrics_token: true,
            metrics_item_labels: false,
            allow_secrets: None,
            allow_parameters: None,
            max_roles: 20,
            allow_roles: None,
        }
    }
}

impl Default for RawAuth {
    fn default() -> Self {
        Self {
            headers: vec![
                "X-Aws-Parameters-Secrets-Token".into(),
                "X-Vault-Token".into(),
            ],
            tokens: vec![
                "AWS_TOKEN".into(),
                "AWS_SESSION_TOKEN".into(),
                "AWS_CONTAINER_AUTHORIZATION_TOKEN".into(),
            ],
        }
    }
}

impl Default for RawCache {
    fn default() -> Self {
        Self {
            refresh_interval: secs(300),
            ttl: secs(300),
            secrets_ttl: None,
            parameters_ttl: None,
            max_entries: 1000,
            serve_stale: true,
            max_stale: secs(6 * 3600),
            jitter: 0.1,
            backoff_min: secs(1),
            // 60 s, not the 5 min refresh interval: after a fleet-wide restart the quota sat
            // idle while throttled items waited out long backoffs (fleet model, BENCHMARKS.md).
            backoff_max: secs(60),
            batch_window: secs(5),
            on_prefetch_error: "degrade".into(),
        }
    }
}

impl Default for RawAws {
    fn default() -> Self {
        Self {
            region: None,
            failover_region: None,
            endpoint_url: None,
            timeout: Some(secs(10)),
            attempt_timeout: Some(secs(4)),
            connect_timeout: secs(3),
            secrets_manager_timeout: None,
            ssm_timeout: None,
            retry_mode: "standard".into(),
            max_attempts: 3,
            max_connections: 8,
            validate_credentials: false,
        }
    }
}

impl Default for RawSource {
    fn default() -> Self {
        Self {
            kind: "aws".into(),
            file: None,
        }
    }
}

impl Default for RawLambda {
    fn default() -> Self {
        Self {
            prefetch_timeout: secs(5),
            prefetch_on_snapstart: false,
        }
    }
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
            file: None,
        }
    }
}

// === Dur ===

impl Dur {
    /// Parses `300`, `250ms`, `30s`, `5m`, `2h`, `1d`.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num.parse().ok()?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "" | "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60)?),
            "h" => Duration::from_secs(n.checked_mul(3600)?),
            "d" => Duration::from_secs(n.checked_mul(86_400)?),
            _ => return None,
        };
        Some(Self(d))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_millis() != 0 || (d.as_secs() == 0 && !d.is_zero()) {
            write!(f, "{}ms", d.as_millis())
        } else {
            write!(f, "{}s", d.as_secs())
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 300, \"250ms\", \"30s\", \"5m\", \"2h\" or \"1d\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Dur, E> {
                Ok(secs(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Dur, E> {
                u64::try_from(v)
                    .map(secs)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Dur, E> {
                Dur::parse(v).ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print() {
        let check = |s: &str, ms: Option<u64>| {
            assert_eq!(Dur::parse(s).map(|d| d.0.as_millis() as u64), ms, "{s}");
        };
        check("300", Some(300_000));
        check("250ms", Some(250));
        check("5m", Some(300_000));
        check("2h", Some(7_200_000));
        check("1d", Some(86_400_000));
        check("", None);
        check("5 minutes", None);
        check("-1s", None);
        check("99999999999999999999d", None);
        assert_eq!(Dur(Duration::from_millis(1500)).to_string(), "1500ms");
        assert_eq!(secs(300).to_string(), "300s");
    }
}
