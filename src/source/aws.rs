//! The AWS backends: Secrets Manager and SSM Parameter Store through the official SDK. This
//! module (with `secretsmanager` and `ssm` below it) is the only code that knows the SDK; it
//! batches (20 secrets / 10 parameters per call), pages path walks to the end, caps concurrent
//! calls per client and classifies every error.

use std::collections::HashMap;
use std::sync::Arc;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{AppName, BehaviorVersion, Region, SdkConfig};
use aws_sdk_secretsmanager::config::SharedCredentialsProvider;
use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_secretsmanager::primitives::DateTime;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{
    ErrorKind, FetchResult, Key, PARAMETERS_PER_CALL, ParamKey, Revalidation, Role, SecretFilter,
    SecretKey, Source, SourceError, SourceFuture, Timestamp, Via,
};
use crate::config::{AwsConfig, RetryMode};
use ssm::batchable_param;

mod metered;
mod secretsmanager;
mod ssm;

/// BatchGetSecretValue accepts at most 20 ids.
const SECRET_BATCH: usize = 20;

/// The AWS source: clients per (region, role), built on first use and kept. Keys read with the
/// default identity in the default region share one set.
pub struct AwsSource {
    base: SdkConfig,
    cfg: AwsConfig,
    default: Clients,
    others: tokio::sync::Mutex<HashMap<Identity, Built>>,
}

/// Clients for an identity, or the AssumeRole failure that is answered (without asking STS
/// again) until `until`.
#[derive(Clone)]
enum Built {
    Ready(Clients),
    Refused(tokio::time::Instant, SourceError),
}

/// How long a role that could not be assumed is not tried again: requests naming it then
/// cannot turn into a stream of STS calls.
const ASSUME_HOLD_OFF: std::time::Duration = std::time::Duration::from_secs(30);

/// Which clients a key needs: the region it is read in and the role assumed for it.
type Identity = (Option<Arc<str>>, Option<Arc<Role>>);

/// Both service clients for one region and identity, each behind its own concurrency cap.
#[derive(Clone)]
pub(crate) struct Clients {
    sm: aws_sdk_secretsmanager::Client,
    ssm: aws_sdk_ssm::Client,
    sm_slots: Arc<Semaphore>,
    ssm_slots: Arc<Semaphore>,
    /// The region called, reported with every value read here.
    region: Option<Arc<str>>,
}

// === AwsSource ===

impl AwsSource {
    /// Builds the clients from the SDK default chain plus `cfg` overrides. Makes no AWS call.
    pub async fn new(cfg: &AwsConfig) -> Self {
        let base = shared_config(cfg).await;
        let default = Clients::new(&base, cfg);
        Self {
            base,
            cfg: cfg.clone(),
            default,
            others: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Checks the credentials with STS GetCallerIdentity (no permission needed).
    pub async fn validate_credentials(cfg: &AwsConfig) -> Result<(), SourceError> {
        let shared = shared_config(cfg).await;
        let sts = aws_sdk_sts::config::Builder::from(&shared).interceptor(metered::Metered);
        aws_sdk_sts::Client::from_conf(sts.build())
            .get_caller_identity()
            .send()
            .await
            .map(drop)
            .map_err(|e| classify(&e))
    }

    /// The clients for `key`: its `via` region, else the region in its ARN, else the default
    /// (the failover region with `failover`).
    async fn clients(&self, key: &Key, failover: bool) -> Result<Clients, SourceError> {
        let via = key.via();
        let region = if failover {
            via.failover.clone()
        } else {
            via.region
                .clone()
                .or_else(|| arn_region(key).map(Arc::from))
        };
        self.clients_in(region, via).await
    }

    /// The clients for `region` (`None`: the default) and `via`'s role, assumed with STS:
    /// checked once when the clients are built, so a role that cannot be assumed is one clear
    /// error; the provider then refreshes before expiry.
    async fn clients_in(
        &self,
        region: Option<Arc<str>>,
        via: &Via,
    ) -> Result<Clients, SourceError> {
        let region = region.filter(|r| Some(r.as_ref()) != self.default.region.as_deref());
        if region.is_none() && via.role.is_none() {
            return Ok(self.default.clone());
        }
        let id = (region, via.role.clone());
        let mut others = self.others.lock().await;
        match others.get(&id) {
            Some(Built::Ready(c)) => return Ok(c.clone()),
            Some(Built::Refused(until, e)) if tokio::time::Instant::now() < *until => {
                return Err(e.clone());
            }
            _ => {}
        }
        let in_region = || {
            let b = self.base.to_builder();
            match &id.0 {
                Some(r) => b.region(Region::new(r.to_string())),
                None => b,
            }
        };
        let conf = match &id.1 {
            Some(role) => match self.assume(role, in_region().build()).await {
                Ok(creds) => in_region().credentials_provider(creds).build(),
                Err(e) => {
                    let until = tokio::time::Instant::now() + ASSUME_HOLD_OFF;
                    others.insert(id, Built::Refused(until, e.clone()));
                    return Err(e);
                }
            },
            None => in_region().build(),
        };
        let clients = Clients::new(&conf, &self.cfg);
        others.insert(id, Built::Ready(clients.clone()));
        Ok(clients)
    }

    async fn assume(
        &self,
        role: &Role,
        conf: SdkConfig,
    ) -> Result<SharedCredentialsProvider, SourceError> {
        use aws_sdk_secretsmanager::config::ProvideCredentials;
        let mut b = aws_config::sts::AssumeRoleProvider::builder(&role.arn)
            .session_name(role.session_name.as_deref().unwrap_or("sidekey"))
            .configure(&conf);
        if let Some(x) = &role.external_id {
            b = b.external_id(x);
        }
        let provider = b.build().await;
        provider.provide_credentials().await.map_err(|e| {
            SourceError::new(
                ErrorKind::AccessDenied,
                "AssumeRoleFailed",
                format!(
                    "cannot assume {}: {}",
                    role.arn,
                    aws_sdk_secretsmanager::error::DisplayErrorContext(&e)
                ),
            )
            .with_status(403)
        })?;
        Ok(SharedCredentialsProvider::new(provider))
    }

    /// Fetches `keys` with `failover` clients or the primary ones, grouped per client set.
    async fn fetch_grouped(&self, keys: &[Key], failover: bool) -> Vec<FetchResult> {
        let mut groups: Vec<(Clients, Vec<usize>)> = Vec::new();
        let mut results: Vec<Option<FetchResult>> = keys.iter().map(|_| None).collect();
        for (i, key) in keys.iter().enumerate() {
            match self.clients(key, failover).await {
                Ok(c) => match groups.iter_mut().find(|(g, _)| g.same(&c)) {
                    Some((_, idx)) => idx.push(i),
                    None => groups.push((c, vec![i])),
                },
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        for (clients, idx) in groups {
            let group: Vec<Key> = idx.iter().map(|&i| keys[i].clone()).collect();
            for (i, r) in idx.into_iter().zip(clients.fetch(&group).await) {
                results[i] = Some(r);
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(lost())))
            .collect()
    }
}

impl Source for AwsSource {
    fn fetch<'a>(&'a self, keys: &'a [Key]) -> SourceFuture<'a, Vec<FetchResult>> {
        Box::pin(async move {
            let mut results = self.fetch_grouped(keys, false).await;
            // Transient failures of keys with a failover region are read there; a 4xx (not
            // found, access denied, throttled) never fails over.
            let retry: Vec<usize> = (0..keys.len())
                .filter(|&i| keys[i].via().failover.is_some())
                .filter(|&i| matches!(&results[i], Err(e) if e.kind == ErrorKind::Transient))
                .collect();
            if !retry.is_empty() {
                let again: Vec<Key> = retry.iter().map(|&i| keys[i].clone()).collect();
                for (i, r) in retry
                    .into_iter()
                    .zip(self.fetch_grouped(&again, true).await)
                {
                    if let Err(e) = &results[i] {
                        tracing::warn!(key = %keys[i], error = %e, "Primary region failed; read the failover region.");
                    }
                    results[i] = r;
                }
            }
            results
        })
    }

    fn revalidate<'a>(
        &'a self,
        key: &'a SecretKey,
        version_id: &'a str,
    ) -> SourceFuture<'a, Result<Revalidation, SourceError>> {
        Box::pin(async move {
            let k = Key::Secret(key.clone());
            let primary = match self.clients(&k, false).await {
                Ok(c) => c.describe(key, version_id).await,
                Err(e) => Err(e),
            };
            match primary {
                Err(e) if e.kind == ErrorKind::Transient && key.via.failover.is_some() => {
                    self.clients(&k, true)
                        .await?
                        .describe(key, version_id)
                        .await
                }
                r => r,
            }
        })
    }

    fn discover<'a>(
        &'a self,
        filter: &'a SecretFilter,
    ) -> SourceFuture<'a, Result<Vec<String>, SourceError>> {
        Box::pin(self.list(filter))
    }
}

impl AwsSource {
    /// ListSecrets (100 per page, paged to the end) with the name prefix and tag keys as
    /// server-side filters; tag values are checked here, since the service matches keys and
    /// values independently. Secrets scheduled for deletion are not listed.
    async fn list(&self, filter: &SecretFilter) -> Result<Vec<String>, SourceError> {
        use aws_sdk_secretsmanager::types::{Filter, FilterNameStringType};
        let clients = self
            .clients_in(filter.via.region.clone(), &filter.via)
            .await?;
        let mut filters = Vec::new();
        if let Some(prefix) = &filter.name_prefix {
            filters.push(
                Filter::builder()
                    .key(FilterNameStringType::Name)
                    .values(prefix)
                    .build(),
            );
        }
        for (key, _) in &filter.tags {
            filters.push(
                Filter::builder()
                    .key(FilterNameStringType::TagKey)
                    .values(key)
                    .build(),
            );
        }
        let mut names = Vec::new();
        let mut token = None;
        loop {
            let _slot = clients.sm_slots.acquire().await;
            let out = clients
                .sm
                .list_secrets()
                .set_filters(Some(filters.clone()))
                .max_results(100)
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| classify(&e))?;
            for s in out.secret_list() {
                let tags: Vec<(&str, &str)> = s
                    .tags()
                    .iter()
                    .map(|t| (t.key().unwrap_or_default(), t.value().unwrap_or_default()))
                    .collect();
                if let Some(name) = s.name()
                    && filter.matches(name, &tags)
                {
                    names.push(name.to_owned());
                }
            }
            token = out.next_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        names.sort();
        names.dedup();
        Ok(names)
    }
}

fn lost() -> SourceError {
    SourceError::new(ErrorKind::Transient, "InternalFailure", "fetch task failed")
}

/// The region named in a key's ARN, if it is one.
fn arn_region(key: &Key) -> Option<&str> {
    let id = match key {
        Key::Secret(k) => &k.id,
        Key::Parameter(k) => &k.name,
        Key::Path(_) => return None,
    };
    id.strip_prefix("arn:")
        .and_then(|rest| rest.split(':').nth(2))
        .filter(|r| !r.is_empty())
}

// === Clients ===

impl Clients {
    fn new(shared: &SdkConfig, cfg: &AwsConfig) -> Self {
        let mut sm =
            aws_sdk_secretsmanager::config::Builder::from(shared).interceptor(metered::Metered);
        if let Some(t) = cfg.secrets_manager_timeout {
            sm = sm.timeout_config(timeouts(cfg).operation_timeout(t).build());
        }
        let mut ssm = aws_sdk_ssm::config::Builder::from(shared).interceptor(metered::Metered);
        if let Some(t) = cfg.ssm_timeout {
            ssm = ssm.timeout_config(timeouts(cfg).operation_timeout(t).build());
        }
        let slots = || Arc::new(Semaphore::new(cfg.max_connections.get()));
        Self {
            sm: aws_sdk_secretsmanager::Client::from_conf(sm.build()),
            ssm: aws_sdk_ssm::Client::from_conf(ssm.build()),
            sm_slots: slots(),
            ssm_slots: slots(),
            region: shared.region().map(|r| Arc::from(r.as_ref())),
        }
    }

    /// The same clients (one identity and region).
    fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.sm_slots, &other.sm_slots)
    }

    async fn fetch(&self, keys: &[Key]) -> Vec<FetchResult> {
        let mut results: Vec<Option<FetchResult>> = keys.iter().map(|_| None).collect();
        self.fetch_batches(keys, &mut results).await;
        self.fetch_singles(keys, results).await
    }
}

impl Clients {
    /// Fills `results` for every key a batch API can answer.
    async fn fetch_batches(&self, keys: &[Key], results: &mut [Option<FetchResult>]) {
        let batchable_secret = |k: &Key| match k {
            Key::Secret(s) => s.version_id.is_none() && s.version_stage.is_none(),
            _ => false,
        };
        let secret_idx: Vec<usize> = (0..keys.len())
            .filter(|&i| batchable_secret(&keys[i]))
            .collect();
        if secret_idx.len() > 1 {
            for chunk in secret_idx.chunks(SECRET_BATCH) {
                let ids: Vec<&str> = chunk
                    .iter()
                    .filter_map(|&i| match &keys[i] {
                        Key::Secret(s) => Some(s.id.as_str()),
                        _ => None,
                    })
                    .collect();
                for (&i, r) in chunk.iter().zip(self.batch_secrets(&ids).await) {
                    results[i] = r;
                }
            }
        }
        for decrypt in [false, true] {
            let idx: Vec<usize> = (0..keys.len())
                .filter(|&i| match &keys[i] {
                    Key::Parameter(p) => p.decrypt == decrypt && batchable_param(p),
                    _ => false,
                })
                .collect();
            if idx.len() < 2 {
                continue;
            }
            for chunk in idx.chunks(PARAMETERS_PER_CALL) {
                let ps: Vec<ParamKey> = chunk
                    .iter()
                    .filter_map(|&i| match &keys[i] {
                        Key::Parameter(p) => Some(p.clone()),
                        _ => None,
                    })
                    .collect();
                for (&i, r) in chunk.iter().zip(self.batch_parameters(&ps).await) {
                    results[i] = r;
                }
            }
        }
    }

    /// Fetches every key still unanswered with its single-item API, concurrently.
    async fn fetch_singles(
        &self,
        keys: &[Key],
        results: Vec<Option<FetchResult>>,
    ) -> Vec<FetchResult> {
        let mut set = JoinSet::new();
        for (i, key) in keys.iter().enumerate() {
            if results[i].is_some() {
                continue;
            }
            let this = self.clone();
            let key = key.clone();
            set.spawn(async move {
                let r = match key {
                    Key::Secret(k) => this.get_secret(k).await,
                    Key::Parameter(k) => this.get_parameter(k).await,
                    Key::Path(k) => this.walk_path(k).await,
                };
                (i, r)
            });
        }
        let mut results = results;
        while let Some(joined) = set.join_next().await {
            if let Ok((i, r)) = joined {
                results[i] = Some(r);
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(lost())))
            .collect()
    }
}

async fn shared_config(cfg: &AwsConfig) -> SdkConfig {
    let retry = match cfg.retry_mode {
        RetryMode::Standard => RetryConfig::standard(),
        RetryMode::Adaptive => RetryConfig::adaptive(),
    }
    .with_max_attempts(cfg.max_attempts.get());
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(retry)
        .timeout_config(timeouts(cfg).build());
    if let Ok(name) = AppName::new(concat!("sidekey-", env!("CARGO_PKG_VERSION"))) {
        loader = loader.app_name(name);
    }
    if let Some(region) = &cfg.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(url) = &cfg.endpoint_url {
        loader = loader.endpoint_url(url.clone());
    }
    loader.load().await
}

fn timeouts(cfg: &AwsConfig) -> aws_config::timeout::TimeoutConfigBuilder {
    let mut b = TimeoutConfig::builder().connect_timeout(cfg.connect_timeout);
    if let Some(t) = cfg.timeout {
        b = b.operation_timeout(t);
    }
    if let Some(t) = cfg.attempt_timeout {
        b = b.operation_attempt_timeout(t);
    }
    b
}

fn timestamp(d: &DateTime) -> Timestamp {
    Timestamp::new(d.secs(), d.subsec_nanos())
}

/// Maps any SDK error to a [`SourceError`]: service errors by code, the rest by failure mode.
fn classify<E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static>(
    err: &SdkError<E, HttpResponse>,
) -> SourceError {
    match err {
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or("InternalFailure");
            let raw = se.raw().status().as_u16();
            let kind = classify_code(code, raw);
            // moto answers some client errors with 404; AWS uses 400 for every client error.
            let status = if raw >= 500 { raw } else { 400 };
            SourceError::new(kind, code, se.err().message().unwrap_or_default()).with_status(status)
        }
        SdkError::TimeoutError(_) => {
            SourceError::new(ErrorKind::Transient, "TimeoutError", "Timeout").with_status(504)
        }
        SdkError::DispatchFailure(d) if d.is_timeout() => {
            SourceError::new(ErrorKind::Transient, "TimeoutError", "Timeout").with_status(504)
        }
        // IO, and "other" transport failures such as a connection closed mid-response.
        SdkError::DispatchFailure(d) if !d.is_user() => {
            SourceError::new(ErrorKind::Transient, "ConnectionError", "Read Error").with_status(502)
        }
        SdkError::ResponseError(_) => {
            SourceError::new(ErrorKind::Transient, "ConnectionError", "Response Error")
                .with_status(502)
        }
        // Identity resolution (no or broken credentials) and request construction end here.
        _ => SourceError::new(
            ErrorKind::Credentials,
            "InternalFailure",
            aws_sdk_secretsmanager::error::DisplayErrorContext(err).to_string(),
        )
        .with_status(500),
    }
}

/// The error-code table of contracts.md §3.4.
fn classify_code(code: &str, status: u16) -> ErrorKind {
    match code {
        "ThrottlingException"
        | "Throttling"
        | "TooManyRequestsException"
        | "RequestLimitExceeded"
        | "TooManyUpdates" => ErrorKind::Throttled,
        "AccessDeniedException"
        | "DecryptionFailure"
        | "InvalidKeyId"
        | "KMSAccessDeniedException" => ErrorKind::AccessDenied,
        "ExpiredTokenException"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "InvalidClientTokenId"
        | "MissingAuthenticationToken"
        | "SignatureDoesNotMatch" => ErrorKind::Credentials,
        "ResourceNotFoundException" | "ParameterNotFound" | "ParameterVersionNotFound" => {
            ErrorKind::NotFound
        }
        "InternalServiceError"
        | "InternalServerError"
        | "InternalFailure"
        | "ServiceUnavailable" => ErrorKind::Transient,
        _ if status >= 500 => ErrorKind::Transient,
        _ => ErrorKind::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_classify_per_contract() {
        let check = |code, status, want| assert_eq!(classify_code(code, status), want, "{code}");
        check("ThrottlingException", 400, ErrorKind::Throttled);
        check("AccessDeniedException", 400, ErrorKind::AccessDenied);
        check("DecryptionFailure", 400, ErrorKind::AccessDenied);
        check("ExpiredTokenException", 400, ErrorKind::Credentials);
        check("ResourceNotFoundException", 404, ErrorKind::NotFound);
        check("ParameterVersionNotFound", 400, ErrorKind::NotFound);
        check("InternalServiceError", 500, ErrorKind::Transient);
        check("SomethingNew", 503, ErrorKind::Transient);
        check("ValidationException", 400, ErrorKind::Invalid);
        check("InvalidRequestException", 400, ErrorKind::Invalid);
    }

    #[test]
    fn batching_skips_selectors_arns_and_references() {
        let p = |name: &str| ParamKey {
            name: name.into(),
            selector: None,
            decrypt: false,
            via: Default::default(),
        };
        assert!(batchable_param(&p("/a/b")));
        assert!(!batchable_param(&p("arn:aws:ssm:r:1:parameter/a")));
        assert!(!batchable_param(&p("/aws/reference/secretsmanager/x")));
    }
}
