//! Native Lambda extension mode (`AWS_LAMBDA_RUNTIME_API` set): the Extensions API client and
//! the extension lifecycle.
//!
//! Order matters. Lambda starts the function's runtime once every extension has called
//! Register, so sidekey first starts serving and prefetches (bounded by
//! `lambda.prefetch_timeout`), then registers: the function's own init code can already read
//! values. A task long-polls `event/next` and forwards events; it calls `next` again at once, so
//! sidekey never holds an invoke open. The environment is frozen between invokes and timers do
//! not run, so every INVOKE wakes the scheduler to refresh whatever is past its deadline, in the
//! background. SHUTDOWN drains within its deadline (2 s with an external extension).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::api::Listeners;
use crate::app::{self, AppError, Setup};
use crate::cache::{CacheError, PrefetchReport};
use crate::control::Control;

const API_VERSION: &str = "2020-01-01";
/// Kept back from SHUTDOWN's deadline for process exit.
const SHUTDOWN_MARGIN: Duration = Duration::from_millis(300);

/// A client of the Extensions API for one registered extension.
pub struct ExtensionClient {
    authority: String,
    prefix: String,
    name: String,
    id: Option<String>,
}

/// What `event/next` delivers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "eventType")]
pub enum Event {
    /// The function is being invoked.
    #[serde(rename = "INVOKE")]
    Invoke {
        /// Invocation deadline, epoch milliseconds.
        #[serde(rename = "deadlineMs")]
        deadline_ms: u64,
    },
    /// The environment is shutting down.
    #[serde(rename = "SHUTDOWN")]
    Shutdown {
        /// `spindown`, `timeout` or `failure`.
        #[serde(rename = "shutdownReason")]
        reason: String,
        /// Kill deadline, epoch milliseconds.
        #[serde(rename = "deadlineMs")]
        deadline_ms: u64,
    },
}

/// Failures talking to the Extensions API.
#[derive(Debug, thiserror::Error)]
pub enum LambdaError {
    /// `AWS_LAMBDA_RUNTIME_API` is unusable.
    #[error("AWS_LAMBDA_RUNTIME_API {0:?} is neither host:port nor an http:// URL")]
    BadAddress(String),
    /// Connecting failed.
    #[error("cannot reach the Extensions API at {0}: {1}")]
    Connect(String, #[source] std::io::Error),
    /// HTTP-level failure.
    #[error("Extensions API request failed: {0}")]
    Http(#[from] hyper::Error),
    /// A non-success answer.
    #[error("Extensions API {call} answered {status}: {body}")]
    Status {
        /// Which call.
        call: &'static str,
        /// HTTP status.
        status: u16,
        /// Response body (error type and message from Lambda).
        body: String,
    },
    /// Register answered without an identifier.
    #[error("register answered without a Lambda-Extension-Identifier")]
    NoIdentifier,
    /// An event body that does not parse.
    #[error("unreadable event: {0}")]
    Event(#[source] serde_json::Error),
}

// === ExtensionClient ===

impl ExtensionClient {
    /// A client for `runtime_api` (`host:port` as in Lambda, or an `http://` URL with a path
    /// prefix as cargo-lambda sets it) registering under `name`.
    pub fn new(runtime_api: &str, name: impl Into<String>) -> Result<Self, LambdaError> {
        let rest = runtime_api.strip_prefix("http://").unwrap_or(runtime_api);
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() || runtime_api.starts_with("https://") || !authority.contains(':') {
            return Err(LambdaError::BadAddress(runtime_api.to_owned()));
        }
        Ok(Self {
            authority: authority.to_owned(),
            prefix: prefix.to_owned(),
            name: name.into(),
            id: None,
        })
    }

    /// Registers for INVOKE and SHUTDOWN; returns the function name Lambda reports.
    pub async fn register(&mut self) -> Result<String, LambdaError> {
        let body = br#"{"events":["INVOKE","SHUTDOWN"]}"#.to_vec();
        let headers = [("lambda-extension-name", self.name.clone())];
        let (status, resp_headers, bytes) =
            self.call(Method::POST, "register", &headers, body).await?;
        check("register", status, &bytes)?;
        let id = resp_headers
            .get("lambda-extension-identifier")
            .and_then(|v| v.to_str().ok())
            .ok_or(LambdaError::NoIdentifier)?;
        self.id = Some(id.to_owned());
        let info: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        Ok(info["functionName"].as_str().unwrap_or_default().to_owned())
    }

    /// Blocks until the next event. No client-side timeout: it is a long poll by design.
    pub async fn next(&self) -> Result<Event, LambdaError> {
        let headers = self.id_header();
        let (status, _, bytes) = self
            .call(Method::GET, "event/next", &headers, Vec::new())
            .await?;
        check("event/next", status, &bytes)?;
        serde_json::from_slice(&bytes).map_err(LambdaError::Event)
    }

    /// Reports a failed init (`kind` like `Extension.PrefetchFailed`); Lambda then restarts.
    pub async fn init_error(&self, kind: &str, message: &str) -> Result<(), LambdaError> {
        self.report("init/error", kind, message).await
    }

    /// Reports a failure after init, before exiting.
    pub async fn exit_error(&self, kind: &str, message: &str) -> Result<(), LambdaError> {
        self.report("exit/error", kind, message).await
    }

    async fn report(
        &self,
        call: &'static str,
        kind: &str,
        message: &str,
    ) -> Result<(), LambdaError> {
        let mut headers = self.id_header();
        headers.push(("lambda-extension-function-error-type", kind.to_owned()));
        let body =
            serde_json::json!({"errorMessage": message, "errorType": kind, "stackTrace": []});
        let (status, _, bytes) = self
            .call(Method::POST, call, &headers, body.to_string().into_bytes())
            .await?;
        check(call, status, &bytes)
    }

    fn id_header(&self) -> Vec<(&'static str, String)> {
        self.id
            .iter()
            .map(|id| ("lambda-extension-identifier", id.clone()))
            .collect()
    }

    /// One request on a fresh connection (the API is local; long polls need no pooling).
    async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&'static str, String)],
        body: Vec<u8>,
    ) -> Result<(StatusCode, http::HeaderMap, Bytes), LambdaError> {
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| LambdaError::Connect(self.authority.clone(), e))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}/{API_VERSION}/extension/{path}", self.prefix))
            .header(header::HOST, &self.authority)
            .header(header::CONTENT_TYPE, "application/json");
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| LambdaError::BadAddress(self.authority.clone()))?;
        let resp = sender.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await?.to_bytes();
        Ok((parts.status, parts.headers, bytes))
    }
}

fn check(call: &'static str, status: StatusCode, body: &Bytes) -> Result<(), LambdaError> {
    if status.is_success() {
        return Ok(());
    }
    Err(LambdaError::Status {
        call,
        status: status.as_u16(),
        body: String::from_utf8_lossy(body).chars().take(512).collect(),
    })
}

/// The name Lambda launched us under (`/opt/extensions/<name>`), which Register must repeat.
pub fn extension_name() -> String {
    std::env::args_os()
        .next()
        .as_deref()
        .and_then(|a| Path::new(a).file_name())
        .map_or_else(
            || "sidekey".to_owned(),
            |n| n.to_string_lossy().into_owned(),
        )
}

/// Runs sidekey as an external Lambda extension until SHUTDOWN.
pub async fn run(
    setup: Setup,
    listeners: Listeners,
    mut control: mpsc::Receiver<Control>,
    runtime_api: &str,
) -> Result<(), AppError> {
    let mut client = ExtensionClient::new(runtime_api, extension_name())?;
    let app = match app::start(setup, listeners, None) {
        Ok(app) => app,
        Err(e) => {
            report_init_failure(&mut client, &e).await;
            return Err(e);
        }
    };
    let snapstart = app
        .load
        .env
        .get("AWS_LAMBDA_INITIALIZATION_TYPE")
        .is_some_and(|t| t == "snap-start");
    let defer = snapstart && !app.config.lambda.prefetch_on_snapstart;
    // `waiting` guards `prefetch`: a receiver is only polled while its prefetch runs.
    let (mut prefetch, mut waiting) = if defer {
        tracing::info!(
            "SnapStart: prefetch waits for the first INVOKE so no value is snapshotted."
        );
        (oneshot::channel().1, false)
    } else {
        (spawn_prefetch(&app), true)
    };

    // Bounded wait: init shares 10 s with the function. On expiry register anyway; requests
    // then join the in-flight fetches instead of failing.
    let mut init_failure = None;
    if waiting {
        match tokio::time::timeout(app.config.lambda.prefetch_timeout, &mut prefetch).await {
            Ok(report) => {
                waiting = false;
                init_failure = app.settle_prefetch(flatten(report)).err();
            }
            Err(_) => tracing::warn!(
                "Prefetch exceeds lambda.prefetch_timeout; registering now, fetches continue."
            ),
        }
    }
    let function = match client.register().await {
        Ok(f) => f,
        Err(e) => {
            app.stop(true).await;
            return Err(AppError::Lambda(e));
        }
    };
    tracing::info!(function = %function, "Registered as a Lambda extension.");
    if let Some(e) = init_failure {
        report_init_failure(&mut client, &e).await;
        app.stop(true).await;
        return Err(e);
    }

    let (events_tx, mut events) = mpsc::channel(1);
    let client = std::sync::Arc::new(client);
    let poller = tokio::spawn(poll_events(client.clone(), events_tx));
    let mut deferred = defer;
    let grace = loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(Ok(Event::Invoke { .. })) => {
                    if std::mem::take(&mut deferred) {
                        prefetch = spawn_prefetch(&app);
                        waiting = true;
                    }
                    let _ = app.cache.refresh_due().await;
                }
                Some(Ok(Event::Shutdown { reason, deadline_ms })) => {
                    tracing::info!(reason = %reason, "SHUTDOWN received.");
                    break until(deadline_ms).saturating_sub(SHUTDOWN_MARGIN).min(app.config.listen.grace);
                }
                Some(Err(e)) => {
                    tracing::error!(error = %e, "Extensions API failed; exiting.");
                    let _ = client.exit_error("Extension.ApiFailure", &e.to_string()).await;
                    app.stop(true).await;
                    return Err(AppError::Lambda(e));
                }
                None => break app.config.listen.grace,
            },
            report = &mut prefetch, if waiting => {
                waiting = false;
                if let Err(e) = app.settle_prefetch(flatten(report)) {
                    let _ = client.exit_error("Extension.PrefetchFailed", &e.to_string()).await;
                    app.stop(true).await;
                    return Err(e);
                }
            }
            c = control.recv() => match c {
                Some(Control::Reload | Control::RefreshNow) => {}
                Some(Control::Quit) => break Duration::ZERO,
                Some(Control::Shutdown) | None => break app.config.listen.grace,
            },
        }
    };
    poller.abort();
    app.stop_within(grace.is_zero(), grace).await;
    Ok(())
}

/// Registers (if possible) and reports `err` through `init/error`, so a failed start shows up
/// in the function's logs and Lambda restarts the environment instead of waiting on us.
pub async fn report_startup_failure(runtime_api: &str, err: &AppError) {
    if let Ok(mut client) = ExtensionClient::new(runtime_api, extension_name()) {
        report_init_failure(&mut client, err).await;
    }
}

async fn report_init_failure(client: &mut ExtensionClient, err: &AppError) {
    let kind = match err {
        AppError::Config(_) => "Extension.ConfigError",
        AppError::Prefetch(_) => "Extension.PrefetchFailed",
        _ => "Extension.StartupFailed",
    };
    if client.id.is_none() && client.register().await.is_err() {
        return;
    }
    if let Err(e) = client.init_error(kind, &err.to_string()).await {
        tracing::warn!(error = %e, "Cannot report the init failure.");
    }
}

type PrefetchRx = oneshot::Receiver<Result<PrefetchReport, CacheError>>;

fn spawn_prefetch(app: &app::Running) -> PrefetchRx {
    let (tx, rx) = oneshot::channel();
    let cache = app.cache.clone();
    let targets = app.config.targets.clone();
    tokio::spawn(async move {
        let _ = tx.send(cache.configure(targets).await);
    });
    rx
}

fn flatten(
    r: Result<Result<PrefetchReport, CacheError>, oneshot::error::RecvError>,
) -> Result<PrefetchReport, CacheError> {
    r.unwrap_or(Err(CacheError::Stopped))
}

/// Long-polls `event/next` and forwards each event; asks again at once so an invoke is never
/// held open by sidekey.
async fn poll_events(
    client: std::sync::Arc<ExtensionClient>,
    tx: mpsc::Sender<Result<Event, LambdaError>>,
) {
    loop {
        let event = client.next().await;
        let stop = !matches!(event, Ok(Event::Invoke { .. }));
        if tx.send(event).await.is_err() || stop {
            return;
        }
    }
}

/// Time left until an epoch-milliseconds deadline.
fn until(deadline_ms: u64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_millis(deadline_ms).saturating_sub(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_api_addresses() {
        let c = ExtensionClient::new("127.0.0.1:9001", "x").unwrap();
        assert_eq!(
            (c.authority.as_str(), c.prefix.as_str()),
            ("127.0.0.1:9001", "")
        );
        let c = ExtensionClient::new("http://[::]:9000/.rt", "x").unwrap();
        assert_eq!(
            (c.authority.as_str(), c.prefix.as_str()),
            ("[::]:9000", "/.rt")
        );
        for bad in ["", "https://x:1", "http:///path", "nohost"] {
            assert!(ExtensionClient::new(bad, "x").is_err(), "{bad}");
        }
    }

    #[test]
    fn events_parse() {
        let invoke = r#"{"eventType":"INVOKE","deadlineMs":5,"requestId":"r","invokedFunctionArn":"a","tracing":{"type":"X","value":"v"}}"#;
        assert_eq!(
            serde_json::from_str::<Event>(invoke).unwrap(),
            Event::Invoke { deadline_ms: 5 }
        );
        let shutdown = r#"{"eventType":"SHUTDOWN","shutdownReason":"spindown","deadlineMs":7}"#;
        assert_eq!(
            serde_json::from_str::<Event>(shutdown).unwrap(),
            Event::Shutdown {
                reason: "spindown".into(),
                deadline_ms: 7
            }
        );
        assert!(serde_json::from_str::<Event>(r#"{"eventType":"OTHER"}"#).is_err());
    }

    #[test]
    fn deadlines_in_the_past_leave_no_time() {
        assert_eq!(until(0), Duration::ZERO);
    }
}
