//! Backends that produce values: AWS Secrets Manager, SSM Parameter Store, a local file, and a
//! programmable fake. Everything above this module sees only [`Key`], [`Fetched`] and
//! [`SourceError`]; no other module knows the AWS SDK.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use secrecy::{SecretBox, SecretString};

/// GetParameters accepts at most 10 names; GetParametersByPath pages hold at most 10.
pub const PARAMETERS_PER_CALL: usize = 10;

pub mod aws;
pub mod fake;
pub mod file;
pub mod memory;

/// A boxed future, so [`Source`] stays object-safe without a macro crate.
pub type SourceFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The result of fetching one key.
pub type FetchResult = Result<Fetched, SourceError>;

/// A backend that can fetch values. Implementations decide how to batch a slice of keys.
pub trait Source: Send + Sync + 'static {
    /// Fetches every key; the result vector is parallel to `keys`.
    fn fetch<'a>(&'a self, keys: &'a [Key]) -> SourceFuture<'a, Vec<FetchResult>>;

    /// Cheap change check for a cached secret (DescribeSecret): whether the version the key
    /// selects is still `version_id`, so the cached value can be kept without re-reading it,
    /// and when the secret next rotates.
    fn revalidate<'a>(
        &'a self,
        key: &'a SecretKey,
        version_id: &'a str,
    ) -> SourceFuture<'a, Result<Revalidation, SourceError>>;

    /// Names of the secrets `filter` matches (discovery), sorted.
    fn discover<'a>(
        &'a self,
        filter: &'a SecretFilter,
    ) -> SourceFuture<'a, Result<Vec<String>, SourceError>>;
}

/// Which secrets a discovery rule lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretFilter {
    /// Names starting with this.
    pub name_prefix: Option<String>,
    /// Tags a secret must carry (`key`, `value`); an empty value matches any value.
    pub tags: Vec<(String, String)>,
    /// Region and identity to list with (and to read what is found).
    pub via: Via,
}

impl SecretFilter {
    /// Whether a secret with `name` and `tags` matches.
    pub fn matches(&self, name: &str, tags: &[(&str, &str)]) -> bool {
        self.name_prefix
            .as_deref()
            .is_none_or(|p| name.starts_with(p))
            && self.tags.iter().all(|(k, v)| {
                tags.iter()
                    .any(|(tk, tv)| tk == k && (v.is_empty() || tv == v))
            })
    }
}

/// What a revalidation learned about a cached secret.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Revalidation {
    /// The key still selects the cached version.
    pub unchanged: bool,
    /// The secret's next scheduled rotation, when rotation is enabled.
    pub next_rotation: Option<std::time::SystemTime>,
}

/// A shared, dynamically chosen source.
pub type SharedSource = Arc<dyn Source>;

/// What can be cached: a secret version, one parameter, or a whole parameter path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// A Secrets Manager secret version.
    Secret(SecretKey),
    /// One SSM parameter.
    Parameter(ParamKey),
    /// Every parameter under an SSM path.
    Path(PathKey),
}

/// A secret as the client named it: name or ARN, plus an optional version selector.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretKey {
    /// Name or ARN, exactly as requested (name and ARN are distinct cache entries, as in WCP).
    pub id: String,
    /// `VersionId` selector.
    pub version_id: Option<String>,
    /// `VersionStage` selector; `None` means the service default (`AWSCURRENT`).
    pub version_stage: Option<String>,
    /// Region and identity.
    pub via: Via,
}

/// Where and as whom a key is read; the default is the SDK chain's credentials in its region
/// (or, for an ARN, the ARN's region). Part of every key, so two identities or regions never
/// share a cache entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Via {
    /// Region to read in.
    pub region: Option<Arc<str>>,
    /// Role to assume first.
    pub role: Option<Arc<Role>>,
    /// Region to read when the primary one fails with a transient error.
    pub failover: Option<Arc<str>>,
}

/// An IAM role to assume with STS.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Role {
    /// Role ARN.
    pub arn: String,
    /// `ExternalId`, when the role's trust policy asks for one.
    pub external_id: Option<String>,
    /// `RoleSessionName`; default `sidekey`.
    pub session_name: Option<String>,
}

/// One SSM parameter, with its selector and decryption flag.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamKey {
    /// Name (with leading `/` when hierarchical) or ARN.
    pub name: String,
    /// `:version` or `:label` selector.
    pub selector: Option<ParamSelector>,
    /// `WithDecryption`; SecureString values differ with and without it.
    pub decrypt: bool,
    /// Region and identity.
    pub via: Via,
}

/// The part after the colon in `name:selector`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ParamSelector {
    /// A numeric version.
    Version(u64),
    /// A parameter label.
    Label(String),
}

/// A parameter path walk.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathKey {
    /// Path, starting with `/`.
    pub path: String,
    /// Include all descendants, not only direct children.
    pub recursive: bool,
    /// `WithDecryption`.
    pub decrypt: bool,
    /// Region and identity.
    pub via: Via,
}

/// A fetched value. Values are [`SecretString`]/[`SecretBox`] so `Debug` never prints them.
#[derive(Clone, Debug)]
pub enum Fetched {
    /// A secret version.
    Secret(Arc<SecretValue>),
    /// One parameter.
    Parameter(Arc<ParameterValue>),
    /// All parameters under a path, sorted by name.
    Path(Arc<[Arc<ParameterValue>]>),
}

/// A secret version as returned by GetSecretValue.
#[derive(Debug)]
pub struct SecretValue {
    /// Full ARN.
    pub arn: String,
    /// Secret name.
    pub name: String,
    /// Version id (UUID).
    pub version_id: String,
    /// Staging labels attached to this version.
    pub version_stages: Vec<String>,
    /// Creation time of this version.
    pub created_date: Option<Timestamp>,
    /// AWS region it was read in (`None`: not from AWS).
    pub region: Option<Arc<str>>,
    /// The payload; shared, not copied, by sources that keep it (the local file source).
    pub payload: Arc<Payload>,
}

/// `SecretString` or `SecretBinary`.
#[derive(Debug)]
pub enum Payload {
    /// Text secret.
    Text(SecretString),
    /// Binary secret (raw bytes; base64 only on the wire).
    Binary(SecretBox<[u8]>),
}

/// One parameter as returned by GetParameter.
#[derive(Debug)]
pub struct ParameterValue {
    /// Full ARN.
    pub arn: String,
    /// Name as stored.
    pub name: String,
    /// `String`, `StringList` or `SecureString`.
    pub kind: String,
    /// Value (decrypted only when asked); shared like [`SecretValue::payload`].
    pub value: Arc<SecretString>,
    /// Version number.
    pub version: i64,
    /// Last modification time.
    pub last_modified: Option<Timestamp>,
    /// `text`, `aws:ec2:image`, …
    pub data_type: Option<String>,
    /// The `:version`/`:label` selector used, if any.
    pub selector: Option<String>,
    /// Raw Secrets Manager result for `/aws/reference/secretsmanager/…` names.
    pub source_result: Option<SecretString>,
    /// AWS region it was read in (`None`: not from AWS).
    pub region: Option<Arc<str>>,
}

/// A UTC instant with nanosecond precision, formatted as Go's RFC 3339 nano (PSLE shape).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp {
    /// Seconds since the Unix epoch.
    pub secs: i64,
    /// Sub-second nanoseconds.
    pub nanos: u32,
}

/// Why a fetch failed: the kind alone decides HTTP status class, retry and stale serving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The secret, parameter or version does not exist.
    NotFound,
    /// Missing IAM or KMS permission.
    AccessDenied,
    /// Rate exceeded.
    Throttled,
    /// Timeouts, IO, 5xx, unparseable responses.
    Transient,
    /// Missing, expired or rejected credentials; clock skew.
    Credentials,
    /// A request the backend rejected as malformed.
    Invalid,
}

/// A classified backend error. Carries the backend's code and message (never a value).
#[derive(Clone, Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct SourceError {
    /// Classification.
    pub kind: ErrorKind,
    /// Backend error code, e.g. `ResourceNotFoundException`.
    pub code: String,
    /// Backend message.
    pub message: String,
    /// HTTP status the backend answered with, when there was one.
    pub status: Option<u16>,
}

// === Key ===

impl Key {
    /// Region and identity the key is read with.
    pub fn via(&self) -> &Via {
        match self {
            Key::Secret(k) => &k.via,
            Key::Parameter(k) => &k.via,
            Key::Path(k) => &k.via,
        }
    }

    /// The same key read with `via`.
    pub fn with_via(mut self, via: Via) -> Self {
        match &mut self {
            Key::Secret(k) => k.via = via,
            Key::Parameter(k) => k.via = via,
            Key::Path(k) => k.via = via,
        }
        self
    }

    /// How many keys like this one a refresh reads in one call: parameters share a
    /// GetParameters call, while a cached secret is revalidated by its own DescribeSecret and a
    /// path is its own paged listing.
    pub fn per_refresh_call(&self) -> usize {
        match self {
            Key::Parameter(_) => PARAMETERS_PER_CALL,
            Key::Secret(_) | Key::Path(_) => 1,
        }
    }

    /// The kind of backend object as a short word, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Key::Secret(_) => "secret",
            Key::Parameter(_) => "parameter",
            Key::Path(_) => "path",
        }
    }
}

impl Key {
    /// The id as a client names it, without the kind: secret id (with its selector),
    /// parameter name (with `:version` or `:label`), or path.
    pub fn name(&self) -> String {
        let mut out = String::new();
        let _ = self.write_name(&mut out);
        out
    }

    fn write_name(&self, f: &mut impl fmt::Write) -> fmt::Result {
        match self {
            Key::Secret(k) => {
                f.write_str(&k.id)?;
                if let Some(stage) = &k.version_stage {
                    write!(f, " stage {stage}")?;
                }
                if let Some(id) = &k.version_id {
                    write!(f, " version {id}")?;
                }
                Ok(())
            }
            Key::Parameter(k) => {
                f.write_str(&k.name)?;
                match &k.selector {
                    Some(ParamSelector::Version(v)) => write!(f, ":{v}"),
                    Some(ParamSelector::Label(l)) => write!(f, ":{l}"),
                    None => Ok(()),
                }
            }
            Key::Path(k) => f.write_str(&k.path),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.kind())?;
        self.write_name(f)?;
        if let Key::Path(k) = self {
            write!(f, " recursive={}", k.recursive)?;
        }
        let via = self.via();
        if let Some(role) = &via.role {
            write!(f, " as {}", role.arn)?;
        }
        if let Some(region) = &via.region {
            write!(f, " in {region}")?;
        }
        Ok(())
    }
}

impl SecretKey {
    /// A key for the current version of `id`.
    pub fn current(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            version_id: None,
            version_stage: None,
            via: Via::default(),
        }
    }
}

impl PathKey {
    /// A path key with trailing slashes dropped (`/app/` and `/app` are one walk; `/` stays).
    pub fn new(path: &str, recursive: bool, decrypt: bool) -> Self {
        let trimmed = path.trim_end_matches('/');
        Self {
            path: if trimmed.is_empty() {
                "/".into()
            } else {
                trimmed.into()
            },
            recursive,
            decrypt,
            via: Via::default(),
        }
    }
}

impl ParamKey {
    /// `name:selector` as GetParameter expects it.
    pub fn selector_name(&self) -> String {
        match &self.selector {
            None => self.name.clone(),
            Some(ParamSelector::Version(v)) => format!("{}:{v}", self.name),
            Some(ParamSelector::Label(l)) => format!("{}:{l}", self.name),
        }
    }

    /// The selector suffix (`:3`, `:prod`) as PSLE reports it in `Selector`.
    pub fn selector_suffix(&self) -> Option<String> {
        match &self.selector {
            None => None,
            Some(ParamSelector::Version(v)) => Some(format!(":{v}")),
            Some(ParamSelector::Label(l)) => Some(format!(":{l}")),
        }
    }
}

// === Fetched ===

impl Fetched {
    /// The AWS region the value was read in, when it came from AWS.
    pub fn region(&self) -> Option<&str> {
        match self {
            Fetched::Secret(s) => s.region.as_deref(),
            Fetched::Parameter(p) => p.region.as_deref(),
            Fetched::Path(ps) => ps.first().and_then(|p| p.region.as_deref()),
        }
    }

    /// A version marker used to detect changes (never the value itself).
    pub fn version(&self) -> String {
        match self {
            Fetched::Secret(s) => s.version_id.clone(),
            Fetched::Parameter(p) => p.version.to_string(),
            Fetched::Path(ps) => {
                let mut v = String::new();
                for p in ps.iter() {
                    v.push_str(&p.name);
                    v.push('=');
                    v.push_str(&p.version.to_string());
                    v.push(';');
                }
                v
            }
        }
    }

    /// The value as text to hand to an app (a file, an environment variable): the string,
    /// a binary secret as base64; `None` for a path (many values).
    pub fn expose_text(&self) -> Option<String> {
        use base64::prelude::{BASE64_STANDARD, Engine as _};
        use secrecy::ExposeSecret;
        match self {
            Fetched::Secret(s) => Some(match &*s.payload {
                Payload::Text(t) => t.expose_secret().to_owned(),
                Payload::Binary(b) => BASE64_STANDARD.encode(b.expose_secret()),
            }),
            Fetched::Parameter(p) => Some(p.value.expose_secret().to_owned()),
            Fetched::Path(_) => None,
        }
    }

    /// Approximate heap size of the value, for the on-demand byte budget.
    pub fn weight(&self) -> usize {
        use secrecy::ExposeSecret;
        match self {
            Fetched::Secret(s) => match &*s.payload {
                Payload::Text(t) => t.expose_secret().len(),
                Payload::Binary(b) => b.expose_secret().len(),
            },
            Fetched::Parameter(p) => p.value.expose_secret().len(),
            Fetched::Path(ps) => ps.iter().map(|p| p.value.expose_secret().len()).sum(),
        }
    }
}

// === Timestamp ===

impl Timestamp {
    /// From whole and fractional epoch seconds.
    pub fn new(secs: i64, nanos: u32) -> Self {
        Self { secs, nanos }
    }
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC with trailing fractional zeros trimmed, as Go's `RFC3339Nano`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.secs.div_euclid(86_400);
        let rem = self.secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )?;
        if self.nanos > 0 {
            let frac = format!("{:09}", self.nanos);
            write!(f, ".{}", frac.trim_end_matches('0'))?;
        }
        f.write_str("Z")
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

// === ErrorKind ===

impl ErrorKind {
    /// Whether the scheduler retries with backoff (rather than at the normal interval).
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Throttled | ErrorKind::Transient | ErrorKind::Credentials
        )
    }

    /// Whether a cached value may be served in place of this error (up to `max_stale`).
    pub fn serves_stale(self) -> bool {
        !matches!(self, ErrorKind::NotFound | ErrorKind::Invalid)
    }

    /// Stable lower-case name for native error bodies and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::AccessDenied => "access_denied",
            ErrorKind::Throttled => "throttled",
            ErrorKind::Transient => "transient",
            ErrorKind::Credentials => "credentials",
            ErrorKind::Invalid => "invalid",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === SourceError ===

impl SourceError {
    /// A classified error with a backend code and message.
    pub fn new(kind: ErrorKind, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind,
            code: code.into(),
            message: message.into(),
            status: None,
        }
    }

    /// Attaches the backend's HTTP status.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// A not-found error in the style of the service that owns `key`.
    pub fn not_found(key: &Key) -> Self {
        let code = match key {
            Key::Secret(_) => "ResourceNotFoundException",
            Key::Parameter(k) if k.selector.is_some() => "ParameterVersionNotFound",
            Key::Parameter(_) | Key::Path(_) => "ParameterNotFound",
        };
        Self::new(ErrorKind::NotFound, code, format!("{key} not found")).with_status(400)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_format_like_go_rfc3339_nano() {
        let check = |secs, nanos, want: &str| {
            assert_eq!(Timestamp::new(secs, nanos).to_string(), want);
        };
        check(0, 0, "1970-01-01T00:00:00Z");
        check(1_703_775_451, 359_000_000, "2023-12-28T14:57:31.359Z");
        check(1_711_110_598, 791_000_000, "2024-03-22T12:29:58.791Z");
        check(951_782_400, 1, "2000-02-29T00:00:00.000000001Z");
        check(-1, 500_000_000, "1969-12-31T23:59:59.5Z");
    }

    #[test]
    fn error_kinds_decide_retry_and_stale() {
        assert!(ErrorKind::Throttled.retryable() && ErrorKind::Throttled.serves_stale());
        assert!(!ErrorKind::NotFound.retryable() && !ErrorKind::NotFound.serves_stale());
        assert!(!ErrorKind::AccessDenied.retryable() && ErrorKind::AccessDenied.serves_stale());
    }

    #[test]
    fn debug_output_redacts_values() {
        let s = Fetched::Secret(Arc::new(SecretValue {
            arn: "arn".into(),
            name: "n".into(),
            version_id: "v".into(),
            version_stages: vec![],
            created_date: None,
            payload: Arc::new(Payload::Text(SecretString::from("hunter2-value"))),
            region: None,
        }));
        let b = Payload::Binary(SecretBox::new(b"bin-value".to_vec().into()));
        let printed = format!("{s:?} {b:?}");
        assert!(
            !printed.contains("hunter2-value") && !printed.contains("bin-value"),
            "{printed}"
        );
        assert!(printed.contains("REDACTED"), "{printed}");
    }

    #[test]
    fn path_version_lists_names_and_versions() {
        let p = |name: &str, version| {
            Arc::new(ParameterValue {
                arn: String::new(),
                name: name.into(),
                kind: "String".into(),
                value: Arc::new(SecretString::from("v")),
                version,
                last_modified: None,
                data_type: None,
                selector: None,
                source_result: None,
                region: None,
            })
        };
        let f = Fetched::Path(vec![p("/a", 1), p("/b", 2)].into());
        assert_eq!(f.version(), "/a=1;/b=2;");
    }
}
