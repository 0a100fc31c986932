//! Request → response handlers. Pure functions of the request head and the cache: no sockets,
//! so tests call [`Api::handle`] directly.
//!
//! Check order follows WCP: (connection limit, in the listener) → `X-Forwarded-For` and token →
//! method → route → query → cache. So an unauthenticated `POST` gets 403, not 405. Compatible
//! routes answer errors in the peers' shapes; native routes use `{"code","message"}` JSON.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{HeaderValue, Method, Request, StatusCode};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::allow::{AllowList, Pattern};
use super::auth::Auth;
use super::dto::{self, AwsError, NativeError, ParameterEnvelope, Resp, SecretDto};
use super::query::{self, flag};
use crate::cache::{Cache, CacheError, Hit};
use crate::config::ApiConfig;
use crate::metrics::{METRICS, Route};
use crate::refs::{self, RefKind};
use crate::source::{ErrorKind, Fetched, Key, ParamSelector, Role, SecretKey, Via};

/// Longest accepted request target (path + query).
const MAX_URI: usize = 8 * 1024;
/// Most header bytes (names and values) a request may carry; hyper cuts off at `MAX_HEAD`.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The HTTP API.
pub struct Api {
    cache: Cache,
    auth: Arc<Auth>,
    prefix: String,
    strict: bool,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
    metrics_token: bool,
    metrics_item_labels: bool,
    allow: AllowList,
    allow_roles: Option<Vec<Pattern>>,
    max_roles: usize,
    /// Roles requests have named so far (bounded by `max_roles`).
    roles: std::sync::Mutex<std::collections::HashSet<String>>,
    failover: Option<Arc<str>>,
}

/// Which error dialect a path speaks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Compat,
    Native,
}

/// A local (non-backend) error with both dialects' wording.
struct Reject {
    status: StatusCode,
    code: &'static str,
    message: String,
}

type Pairs = Vec<(String, String)>;

// === Api ===

impl Api {
    /// An API over `cache`, guarded by `auth`; `/readyz` reports `ready`. Long polls and
    /// event streams end when `shutdown` is cancelled, so they never hold up a drain.
    pub fn new(
        cache: Cache,
        auth: Arc<Auth>,
        cfg: &ApiConfig,
        ready: Arc<AtomicBool>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            cache,
            auth,
            prefix: cfg.path_prefix.clone(),
            strict: cfg.strict_query,
            ready,
            shutdown,
            metrics_token: cfg.metrics_token,
            metrics_item_labels: cfg.metrics_item_labels,
            allow: cfg.allow.clone(),
            allow_roles: cfg.allow_roles.clone(),
            max_roles: cfg.max_roles,
            roles: std::sync::Mutex::default(),
            failover: cfg.failover.clone(),
        }
    }

    /// Reads `key` through the cache, unless the allow-list refuses it (no backend call then).
    /// Keys without a failover region get the global one, as configured items do.
    async fn read(&self, key: &Key, force: bool) -> Result<Hit, CacheError> {
        if !self.allow.permits(key) {
            return Err(CacheError::Source(not_allowed(key)));
        }
        let key = &*self.cache.store().resolve(key);
        match &self.failover {
            Some(region) if key.via().failover.is_none() => {
                let via = Via {
                    failover: Some(region.clone()),
                    ..key.via().clone()
                };
                self.cache.get(&key.clone().with_via(via), force).await
            }
            _ => self.cache.get(key, force).await,
        }
    }

    /// The identity for a request's `roleArn` (agent parity): 400 for a malformed ARN or once
    /// `api.max_roles` distinct roles were named, 403 outside `api.allow_roles`.
    fn role_via(&self, role_arn: Option<&str>) -> Result<Via, Reject> {
        let Some(arn) = role_arn else {
            return Ok(Via::default());
        };
        if !refs::is_role_arn(arn) {
            return Err(Reject::new(
                StatusCode::BAD_REQUEST,
                "invalid_parameter",
                "invalid roleArn",
            ));
        }
        if let Some(allowed) = &self.allow_roles
            && !allowed.iter().any(|p| p.matches(arn))
        {
            return Err(Reject::new(
                StatusCode::FORBIDDEN,
                "access_denied",
                format!("role {arn} is not in api.allow_roles"),
            ));
        }
        let mut roles = self
            .roles
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !roles.contains(arn) {
            if roles.len() >= self.max_roles {
                return Err(Reject::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_parameter",
                    "max_roles reached",
                ));
            }
            roles.insert(arn.to_owned());
        }
        Ok(Via {
            role: Some(Arc::new(Role {
                arn: arn.to_owned(),
                external_id: None,
                session_name: None,
            })),
            ..Via::default()
        })
    }

    /// The `route` label of a path.
    fn route_label(&self, path: &str) -> Route {
        match path {
            "/secretsmanager/get" => Route::SecretsManagerGet,
            "/systemsmanager/parameters/get" | "/systemsmanager/parameters/get/" => {
                Route::ParametersGet
            }
            "/secret" => Route::Secret,
            "/parameter" => Route::Parameter,
            "/parameters" => Route::Parameters,
            "/watch" => Route::Watch,
            "/status" => Route::Status,
            "/metrics" => Route::Metrics,
            "/ping" | "/healthz" | "/readyz" => Route::Health,
            p if p.starts_with(self.prefix.as_str()) => Route::PathStyle,
            _ => Route::Other,
        }
    }

    /// Handles one request.
    pub async fn handle<B>(&self, req: &Request<B>) -> Resp {
        let path = req.uri().path();
        tracing::trace!(method = %req.method(), path, "Request.");
        let family = if matches!(
            path,
            "/secret"
                | "/parameter"
                | "/parameters"
                | "/watch"
                | "/readyz"
                | "/healthz"
                | "/status"
                | "/metrics"
        ) {
            Family::Native
        } else {
            Family::Compat
        };
        let route = self.route_label(path);
        let resp = match self.route(req).await {
            Ok(resp) => resp,
            Err(r) => r.into_response(family),
        };
        METRICS.request(route, resp.status().as_u16());
        resp
    }

    async fn route<B>(&self, req: &Request<B>) -> Result<Resp, Reject> {
        let path = req.uri().path();
        let target_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
        if target_len > MAX_URI {
            return Err(Reject::new(
                StatusCode::URI_TOO_LONG,
                "uri_too_long",
                "URI too long",
            ));
        }
        let header_bytes: usize = req
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len())
            .sum();
        if header_bytes > MAX_HEADER_BYTES {
            return Err(Reject::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                "Request header fields too large",
            ));
        }
        let get = req.method() == Method::GET;
        match (path, get) {
            ("/ping", true) => return Ok(dto::text(StatusCode::OK, "healthy")),
            ("/healthz", true) => return Ok(status_body(StatusCode::OK, "ok")),
            ("/metrics", true) if !self.metrics_token => return Ok(self.metrics()),
            ("/ping" | "/healthz", false) => return Err(Reject::method()),
            _ => {}
        }
        if req.headers().contains_key("x-forwarded-for") {
            return Err(Reject::new(
                StatusCode::BAD_REQUEST,
                "forwarded",
                "Forwarded",
            ));
        }
        if !self.auth.check(req.headers()) {
            return Err(Reject::new(StatusCode::FORBIDDEN, "bad_token", "Bad Token"));
        }
        if !get {
            return Err(Reject::method());
        }
        let query = req.uri().query().unwrap_or("");
        match path {
            "/secretsmanager/get" => self.psle_secret(query).await,
            "/systemsmanager/parameters/get" | "/systemsmanager/parameters/get/" => {
                self.psle_parameter(query).await
            }
            "/secret" => self.native_secret(query).await,
            "/parameter" => self.native_parameter(query).await,
            "/parameters" => self.native_path(query).await,
            "/watch" => self.watch(req, query).await,
            "/status" => self.status().await,
            "/metrics" => Ok(self.metrics()),
            "/readyz" if self.ready.load(Ordering::Acquire) => {
                Ok(status_body(StatusCode::OK, "ready"))
            }
            "/readyz" => Ok(status_body(StatusCode::SERVICE_UNAVAILABLE, "starting")),
            p => match p.strip_prefix(self.prefix.as_str()) {
                Some(id) => self.wcp_path(id, query).await,
                None => Err(Reject::new(StatusCode::NOT_FOUND, "not_found", "Not found")),
            },
        }
    }

    // --- compatible routes ---

    async fn psle_secret(&self, query: &str) -> Result<Resp, Reject> {
        let pairs = parse_query(query)?;
        let id = last(&pairs, "secretId")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Reject::bad("missing parameter secretId"))?;
        self.compat_secret(id.to_owned(), &pairs, &["secretId"])
            .await
    }

    async fn wcp_path(&self, raw_id: &str, query: &str) -> Result<Resp, Reject> {
        let pairs = parse_query(query)?;
        let id = query::decode(raw_id, false).map_err(|e| Reject::bad(e.to_string()))?;
        if id.is_empty() {
            return Err(Reject::bad("missing secret ID"));
        }
        self.compat_secret(id, &pairs, &[]).await
    }

    async fn compat_secret(
        &self,
        id: String,
        pairs: &Pairs,
        extra: &[&str],
    ) -> Result<Resp, Reject> {
        self.check_known(
            pairs,
            extra,
            &["versionId", "versionStage", "refreshNow", "roleArn"],
            true,
        )?;
        let key = Key::Secret(SecretKey {
            id,
            version_id: last(pairs, "versionId").map(str::to_owned),
            version_stage: last(pairs, "versionStage").map(str::to_owned),
            via: self.role_via(last(pairs, "roleArn"))?,
        });
        let force = refresh_now(pairs)?;
        Ok(compat_answer(self.read(&key, force).await))
    }

    async fn psle_parameter(&self, query: &str) -> Result<Resp, Reject> {
        let pairs = parse_query(query)?;
        self.check_known(
            &pairs,
            &["name", "version", "label", "withDecryption", "refreshNow"],
            &[],
            true,
        )?;
        let name = last(&pairs, "name")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Reject::bad("missing parameter name"))?;
        let decrypt = bool_param(&pairs, "withDecryption", false)?;
        // PSLE: "either a version or a label"; if both are sent, the first one wins.
        let selector = pairs.iter().find(|(k, _)| k == "version" || k == "label");
        let key = param_key(name, decrypt, selector)?;
        let force = refresh_now(&pairs)?;
        Ok(compat_answer(self.read(&key, force).await))
    }

    /// Unknown parameters: ignored (debug log) unless strict; native routes are always strict
    /// and refuse a parameter given twice (compatible routes let the last one win, as WCP).
    fn check_known(
        &self,
        pairs: &Pairs,
        a: &[&str],
        b: &[&str],
        compat: bool,
    ) -> Result<(), Reject> {
        for (i, (k, _)) in pairs.iter().enumerate() {
            if a.contains(&k.as_str()) || b.contains(&k.as_str()) {
                // Quadratic only up to the first repeat, so at most a + b known names deep.
                if !compat && pairs[..i].iter().any(|(p, _)| p == k) {
                    return Err(Reject::new(
                        StatusCode::BAD_REQUEST,
                        "duplicate_parameter",
                        format!("parameter {k} given twice"),
                    ));
                }
                continue;
            }
            if compat && !self.strict {
                tracing::debug!(parameter = %k, "Ignoring unknown query parameter.");
                continue;
            }
            return Err(Reject::new(
                StatusCode::BAD_REQUEST,
                "unknown_parameter",
                format!("unknown parameter: {k}"),
            ));
        }
        Ok(())
    }
}

// === helpers ===

/// The answer to a key outside `api.allow_*`: access denied, as AWS would say it.
fn not_allowed(key: &Key) -> crate::source::SourceError {
    crate::source::SourceError::new(
        ErrorKind::AccessDenied,
        "AccessDeniedException",
        format!("{key} is not in this sidecar's allow-list"),
    )
    .with_status(403)
}

fn parse_query(q: &str) -> Result<Pairs, Reject> {
    query::parse(q).map_err(|e| Reject::bad(e.to_string()))
}

/// The last value of `name` (duplicates: last wins, as WCP).
fn last<'a>(pairs: &'a Pairs, name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn required<'a>(pairs: &'a Pairs, name: &str) -> Result<&'a str, Reject> {
    last(pairs, name).filter(|s| !s.is_empty()).ok_or_else(|| {
        Reject::new(
            StatusCode::BAD_REQUEST,
            "missing_parameter",
            format!("missing parameter {name}"),
        )
    })
}

fn bool_param(pairs: &Pairs, name: &str, default: bool) -> Result<bool, Reject> {
    match last(pairs, name) {
        None => Ok(default),
        Some(v) => flag(v).ok_or_else(|| {
            Reject::new(
                StatusCode::BAD_REQUEST,
                "invalid_parameter",
                format!("invalid {name} value"),
            )
        }),
    }
}

fn refresh_now(pairs: &Pairs) -> Result<bool, Reject> {
    bool_param(pairs, "refreshNow", false)
}

/// A parameter key from a name REF plus an optional `version`/`label` query parameter.
fn param_key(
    name: &str,
    decrypt: bool,
    selector: Option<&(String, String)>,
) -> Result<Key, Reject> {
    let r = refs::parse(name, RefKind::Parameter, decrypt)
        .map_err(|e| Reject::invalid_ref(e.to_string()))?;
    let Key::Parameter(mut key) = r.key else {
        return Err(Reject::invalid_ref(
            "not a Parameter Store reference".into(),
        ));
    };
    key.decrypt = decrypt;
    if let Some((kind, v)) = selector {
        if key.selector.is_some() {
            return Err(Reject::invalid_ref("selector given twice".into()));
        }
        key.selector = Some(if kind == "version" {
            ParamSelector::Version(
                v.parse()
                    .map_err(|_| Reject::bad("invalid version value"))?,
            )
        } else {
            ParamSelector::Label(v.clone())
        });
    }
    Ok(Key::Parameter(key))
}

fn status_body(status: StatusCode, word: &str) -> Resp {
    dto::json(status, &serde_json::json!({ "status": word }))
}

/// Adds `Age` and, for stale values, `X-Sidekey-Stale: true`.
fn fresh(mut resp: Resp, hit: &Hit) -> Resp {
    let h = resp.headers_mut();
    h.insert(
        http::header::AGE,
        HeaderValue::from(hit.entry.age(Instant::now()).as_secs()),
    );
    if hit.stale {
        h.insert("x-sidekey-stale", HeaderValue::from_static("true"));
    }
    if let Some(region) = hit
        .entry
        .value
        .region()
        .and_then(|r| HeaderValue::from_str(r).ok())
    {
        h.insert("x-sidekey-region", region);
    }
    resp
}

fn compat_answer(result: Result<Hit, CacheError>) -> Resp {
    let hit = match result {
        Ok(hit) => hit,
        Err(CacheError::Source(e)) => {
            let status = e
                .status
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(match e.kind {
                    ErrorKind::Transient | ErrorKind::Credentials => {
                        StatusCode::INTERNAL_SERVER_ERROR
                    }
                    _ => StatusCode::BAD_REQUEST,
                });
            return dto::json(status, &AwsError::new(&e.code, &e.message));
        }
        Err(e @ CacheError::StaleLimit { .. }) => {
            return dto::json(
                StatusCode::SERVICE_UNAVAILABLE,
                &AwsError::new("StaleValueExpired", &e.to_string()),
            );
        }
        Err(e @ CacheError::Stopped) => {
            return dto::json(
                StatusCode::SERVICE_UNAVAILABLE,
                &AwsError::new("ServiceUnavailable", &e.to_string()),
            );
        }
    };
    let resp = match &hit.entry.value {
        Fetched::Secret(s) => dto::json_once(&hit.entry.rendered, || SecretDto::new(s)),
        Fetched::Parameter(p) => dto::json_once(&hit.entry.rendered, || ParameterEnvelope::new(p)),
        Fetched::Path(_) => return Reject::internal().into_response(Family::Compat),
    };
    fresh(resp, &hit)
}

// === Reject ===

impl Reject {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn invalid_ref(message: String) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_reference", message)
    }

    fn method() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Not allowed",
        )
    }

    fn stopping() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopping",
            "sidekey is shutting down",
        )
    }

    fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "unexpected cache entry type",
        )
    }

    fn into_response(self, family: Family) -> Resp {
        match family {
            Family::Compat => dto::text(self.status, &self.message),
            Family::Native => dto::json(
                self.status,
                &NativeError {
                    code: self.code,
                    message: &self.message,
                },
            ),
        }
    }
}

mod native;
mod status;
#[cfg(test)]
mod tests;
mod watch;
