//! Wiring: source → cache (store + scheduler) → API → listeners, plus the control loop.
//!
//! Startup is "reload from an empty config": the scheduler gets the configured targets through
//! the same `configure` call a reload uses. Listeners are bound by the caller and passed in, so
//! tests bind port 0. All background tasks run on one `TaskTracker` and stop on one token.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, Api, Auth, Listeners, auth::AuthError};
use crate::cache::{Cache, CacheError, PrefetchReport, discover};
use crate::config::{self, Config, ConfigError, LoadOptions, SourceConfig};
use crate::control::Control;
use crate::refs::{self, RefKind};
use crate::render::{RenderError, Renderer};
use crate::source::aws::AwsSource;
use crate::source::file::FileSource;
use crate::source::{Fetched, Payload, SharedSource, SourceError};
use crate::watch;

/// Why the app stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Bad configuration (exit 64).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No usable token.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A listener could not be bound.
    #[error("cannot listen: {0}")]
    Bind(#[source] std::io::Error),
    /// Other I/O: the log file, stdout, the health probe.
    #[error("{0}")]
    Io(#[source] std::io::Error),
    /// The source could not be set up, or a one-shot read failed.
    #[error("{0}")]
    Source(#[from] SourceError),
    /// Prefetch failed and the config says to abort.
    #[error("prefetch failed for {0} item(s) and cache.on_prefetch_error = \"abort\"")]
    Prefetch(usize),
    /// The Lambda Extensions API failed or refused us.
    #[error(transparent)]
    Lambda(#[from] crate::lambda::LambdaError),
    /// A template could not be rendered (`render --once`).
    #[error(transparent)]
    Render(#[from] RenderError),
    /// Exec mode could not start or resolve its references.
    #[error(transparent)]
    Exec(#[from] crate::exec::ExecError),
    /// A `get` REF was malformed or its selection failed.
    #[error("{0}")]
    Ref(String),
}

/// Everything `run` needs besides listeners and control events.
pub struct Setup {
    /// Validated config.
    pub config: Config,
    /// How the config was loaded, for reloads.
    pub load: LoadOptions,
    /// The value source.
    pub source: SharedSource,
}

// === AppError ===

impl AppError {
    /// Process exit code: 64 for configuration errors, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            AppError::Config(_) => config::EXIT_CONFIG,
            _ => 1,
        }
    }
}

/// Builds the configured source. Makes no network call unless `validate_credentials` is set.
pub async fn build_source(config: &Config) -> Result<SharedSource, AppError> {
    match &config.source {
        SourceConfig::Aws => {
            if config.aws.validate_credentials {
                AwsSource::validate_credentials(&config.aws).await?;
            }
            Ok(Arc::new(AwsSource::new(&config.aws).await))
        }
        SourceConfig::File(path) => {
            let src = FileSource::new(path);
            src.check()?;
            Ok(Arc::new(src))
        }
    }
}

/// Retry delay for templates that failed to render before readiness.
const TEMPLATE_RETRY: Duration = Duration::from_secs(5);

/// The running core shared by every mode: cache, API server and background tasks.
pub(crate) struct Running {
    pub(crate) config: Config,
    pub(crate) load: LoadOptions,
    pub(crate) cache: Cache,
    ready: Arc<AtomicBool>,
    /// Woken when `ready` turns true.
    became_ready: Arc<tokio::sync::Notify>,
    tracker: TaskTracker,
    background: CancellationToken,
    /// Stops the current renderer (replaced when a reload changes the templates).
    renderer_stop: CancellationToken,
    stop_serving: CancellationToken,
    server: tokio::task::JoinHandle<bool>,
}

/// Serves until `Shutdown` (drain) or `Quit` (no drain) arrives on `control`. With
/// `reloads`, a change to the config file sends `Reload` through it (the same path as SIGHUP).
pub async fn run(
    setup: Setup,
    listeners: Listeners,
    mut control: mpsc::Receiver<Control>,
    reloads: Option<mpsc::Sender<Control>>,
) -> Result<(), AppError> {
    let mut app = start(setup, listeners, reloads)?;
    let cache = app.cache.clone();
    let targets = app.config.targets.clone();
    let (rules, jitter) = (app.config.discover.clone(), app.config.cache.jitter);
    let (background, tracker) = (app.background.clone(), app.tracker.clone());
    // Configured items, then what discovery finds: ready once both were fetched.
    let prefetch = async move {
        let mut report = cache.configure(targets).await?;
        if !rules.is_empty() {
            let found = discover::start(&cache, &rules, jitter, &background, &tracker).await;
            report.ok += found.ok;
            report.failed.extend(found.failed);
        }
        Ok(report)
    };
    tokio::pin!(prefetch);
    let mut prefetched = false;
    let quit = loop {
        tokio::select! {
            report = &mut prefetch, if !prefetched => {
                prefetched = true;
                if let Err(e) = app.settle_prefetch(report) {
                    app.stop(true).await;
                    return Err(e);
                }
            }
            event = control.recv() => match event {
                Some(Control::Reload) => app.reload(),
                Some(Control::RefreshNow) => { let _ = app.cache.refresh_all().await; }
                Some(Control::Shutdown) | None => break false,
                Some(Control::Quit) => break true,
            },
        }
    };
    app.stop(quit).await;
    Ok(())
}

/// Starts the cache, the token reloader, the config watcher and the server; announces the
/// listeners on stdout. Prefetch is the caller's move.
pub(crate) fn start(
    setup: Setup,
    listeners: Listeners,
    reloads: Option<mpsc::Sender<Control>>,
) -> Result<Running, AppError> {
    let Setup {
        config,
        load,
        source,
    } = setup;
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let auth = Arc::new(Auth::resolve(&config.auth, &load.env)?);
    let tracker = TaskTracker::new();
    let background = CancellationToken::new();
    let stop_serving = CancellationToken::new();
    auth.spawn_reloader(background.clone(), &tracker);
    let cache = Cache::start(source, config.cache.clone(), background.clone(), &tracker);
    if let Some(tx) = reloads {
        let mut watches = vec![];
        if let Some(file) = &load.file {
            watches.push((file.clone(), Control::Reload));
        }
        if let SourceConfig::File(values) = &config.source {
            watches.push((values.clone(), Control::RefreshNow));
        }
        for (file, event) in watches {
            watch::keep_watching(&file, event, tx.clone(), &background, &tracker);
        }
    }
    let ready = Arc::new(AtomicBool::new(false));
    let api = Arc::new(Api::new(
        cache.clone(),
        auth,
        &config.api,
        ready.clone(),
        stop_serving.clone(),
    ));
    for line in listeners.describe() {
        println!("{line}");
    }
    let listen_cfg = config.listen.clone();
    let server = tokio::spawn({
        let stop = stop_serving.clone();
        async move { api::serve(listeners, api, &listen_cfg, stop).await }
    });
    Ok(Running {
        config,
        load,
        cache,
        ready,
        renderer_stop: background.child_token(),
        became_ready: Arc::new(tokio::sync::Notify::new()),
        tracker,
        background,
        stop_serving,
        server,
    })
}

impl Running {
    /// Logs a prefetch outcome and turns ready, or fails when the config says to abort.
    pub(crate) fn settle_prefetch(
        &self,
        report: Result<PrefetchReport, CacheError>,
    ) -> Result<(), AppError> {
        let report = report.map_err(|_| AppError::Prefetch(self.config.targets.len()))?;
        for (key, err) in &report.failed {
            tracing::error!(key = %key, code = %err.code, error = %err, "Prefetch failed.");
        }
        if !report.failed.is_empty() && self.config.abort_on_prefetch_error {
            return Err(AppError::Prefetch(report.failed.len()));
        }
        tracing::info!(
            ok = report.ok,
            failed = report.failed.len(),
            took_ms = report.took.as_millis(),
            "Prefetch finished."
        );
        self.start_templates();
        Ok(())
    }

    /// Ready once every template rendered (retrying every few seconds until they do); the
    /// renderer then follows every change. Without templates: ready now.
    fn start_templates(&self) {
        if self.config.templates.is_empty() {
            self.ready.store(true, Ordering::Release);
            self.became_ready.notify_waiters();
            tracing::info!("Ready.");
            return;
        }
        let renderer = self.renderer();
        let (ready, stop) = (self.ready.clone(), self.renderer_stop.clone());
        let became_ready = self.became_ready.clone();
        self.tracker.spawn(async move {
            loop {
                match renderer.render_all().await {
                    Ok(n) => {
                        tracing::info!(written = n, "Templates rendered; ready.");
                        break;
                    }
                    Err(e) => tracing::error!(error = %e, "Rendering templates failed; not ready, retrying."),
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(TEMPLATE_RETRY) => {}
                }
            }
            ready.store(true, Ordering::Release);
            became_ready.notify_waiters();
            renderer.watch(stop).await;
        });
    }

    /// Waits until prefetch finished and every template rendered.
    pub(crate) async fn wait_ready(&self) {
        loop {
            let woken = self.became_ready.notified();
            tokio::pin!(woken);
            // Registered before the check, so a wake-up in between is not lost.
            woken.as_mut().enable();
            if self.ready.load(Ordering::Acquire) {
                return;
            }
            woken.await;
        }
    }

    fn renderer(&self) -> Renderer {
        let interval = self.config.raw.cache.refresh_interval.0;
        Renderer::new(
            self.config.templates.clone(),
            self.cache.clone(),
            self.load.env.clone(),
            interval,
        )
    }

    /// Stops accepting, drains (unless `quit`) within `listen.grace`, then stops background work.
    pub(crate) async fn stop(self, quit: bool) {
        let grace = self.config.listen.grace;
        self.stop_within(quit, grace).await;
    }

    /// As [`Running::stop`] with an explicit drain budget (Lambda's SHUTDOWN deadline).
    pub(crate) async fn stop_within(self, quit: bool, grace: Duration) {
        tracing::info!("Shutting down.");
        self.stop_serving.cancel();
        if !quit {
            match tokio::time::timeout(grace, self.server).await {
                Ok(Ok(true)) => tracing::info!("All connections drained."),
                _ => tracing::warn!("Grace period over; closing remaining connections."),
            }
        }
        self.background.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(grace, self.tracker.wait()).await;
    }

    fn reload(&mut self) {
        let before = self.config.templates.clone();
        reload(&mut self.config, &self.load, &self.cache, &self.tracker);
        if self.config.templates != before && self.ready.load(Ordering::Acquire) {
            // The startup path again: render the new set, then follow changes. Files of removed
            // templates stay as they are.
            tracing::info!(
                templates = self.config.templates.len(),
                "Templates changed; re-rendering."
            );
            self.renderer_stop.cancel();
            self.renderer_stop = self.background.child_token();
            self.start_templates();
        }
    }
}

/// Applies a reloaded config when only reloadable parts (what to prefetch) changed; otherwise
/// keeps the running config and says why.
fn reload(current: &mut Config, load: &LoadOptions, cache: &Cache, tracker: &TaskTracker) {
    let next = match config::load(load) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "Reload rejected: invalid config; keeping the running one.");
            return;
        }
    };
    let changed = config::restart_required(&current.raw, &next.raw);
    if !changed.is_empty() {
        tracing::error!(sections = ?changed, "Reload rejected: these sections need a restart; keeping the running config.");
        return;
    }
    tracing::info!(targets = next.targets.len(), "Reloading prefetch targets.");
    let cache = cache.clone();
    let targets = next.targets.clone();
    tracker.spawn(async move {
        if let Ok(report) = cache.configure(targets).await {
            tracing::info!(
                ok = report.ok,
                failed = report.failed.len(),
                "Reload applied."
            );
        }
    });
    *current = next;
}

/// `sidekey render --once`: renders every template (fetching what they reference) and returns;
/// for init containers. No listener is opened.
pub async fn render_once(
    config: &Config,
    env: &BTreeMap<String, String>,
) -> Result<usize, AppError> {
    let source = build_source(config).await?;
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    let cache = Cache::start(source, config.cache.clone(), stop.clone(), &tracker);
    let interval = config.raw.cache.refresh_interval.0;
    let result = Renderer::new(config.templates.clone(), cache, env.clone(), interval)
        .render_all()
        .await;
    stop.cancel();
    tracker.close();
    tracker.wait().await;
    Ok(result?)
}

/// `sidekey get`: reads one REF straight from the source and returns the bytes to print.
pub async fn get_once(
    config: &Config,
    reference: &str,
    kind: RefKind,
) -> Result<Vec<u8>, AppError> {
    let r = refs::parse(reference, kind, true).map_err(|e| AppError::Ref(e.to_string()))?;
    let source = build_source(config).await?;
    let fetched = source
        .fetch(std::slice::from_ref(&r.key))
        .await
        .pop()
        .unwrap_or_else(|| Err(SourceError::not_found(&r.key)))?;
    use secrecy::ExposeSecret;
    let text = match &fetched {
        Fetched::Secret(s) => match &*s.payload {
            Payload::Text(t) => t.expose_secret().to_owned(),
            Payload::Binary(b) if r.select.is_none() => return Ok(b.expose_secret().to_vec()),
            Payload::Binary(_) => {
                return Err(AppError::Ref("cannot select from a binary secret".into()));
            }
        },
        Fetched::Parameter(p) => p.value.expose_secret().to_owned(),
        Fetched::Path(_) => return Err(AppError::Ref("a path is not a single value".into())),
    };
    match &r.select {
        None => Ok(text.into_bytes()),
        Some(sel) => match refs::select(&text, sel).map_err(|e| AppError::Ref(e.to_string()))? {
            serde_json::Value::String(s) => Ok(s.into_bytes()),
            other => Ok(other.to_string().into_bytes()),
        },
    }
}

/// `sidekey health`: asks the running sidekey's `/readyz` (TCP, else the Unix socket) with the
/// configured token. Returns the HTTP status; no curl needed in minimal images.
pub fn health(config: &Config, env: &BTreeMap<String, String>) -> Result<u16, AppError> {
    use secrecy::ExposeSecret;
    use std::io::{Read, Write};
    let (header, token) = Auth::resolve(&config.auth, env)?.credentials();
    let request = format!(
        "GET /readyz HTTP/1.1\r\nHost: localhost\r\n{header}: {}\r\nConnection: close\r\n\r\n",
        token.expose_secret()
    );
    let timeout = Some(std::time::Duration::from_secs(3));
    let mut response = Vec::new();
    let io = AppError::Io;
    if let Some(addr) = config.listen.tcp {
        let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(3))
            .map_err(io)?;
        s.set_read_timeout(timeout).map_err(io)?;
        s.write_all(request.as_bytes())
            .and_then(|()| s.read_to_end(&mut response))
            .map_err(io)?;
    } else if let Some(unix) = &config.listen.unix {
        let mut s = std::os::unix::net::UnixStream::connect(&unix.path).map_err(io)?;
        s.set_read_timeout(timeout).map_err(io)?;
        s.write_all(request.as_bytes())
            .and_then(|()| s.read_to_end(&mut response))
            .map_err(io)?;
    }
    let status = String::from_utf8_lossy(&response)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(status)
}

/// The process environment as a map (the only place that reads it wholesale).
pub fn process_env() -> BTreeMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}
