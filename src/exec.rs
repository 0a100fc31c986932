//! Exec mode: `sidekey exec [--env NAME=REF]… -- CMD ARGS…` resolves every reference, starts
//! CMD with the values in its environment, and supervises it as a proper PID 1: signals are
//! forwarded, every exited child (orphans included) is reaped, and sidekey exits with CMD's
//! code (128 + signal when it was killed). When a referenced value changes, CMD is restarted
//! (stop signal, grace, kill, start with fresh values), signalled, or left alone — debounced so
//! a burst of rotations acts once. A reference that cannot be resolved aborts before CMD starts;
//! a restart that fails later (a value deleted, the program gone) is retried with backoff while
//! the API keeps serving. No value is ever printed.

use std::collections::BTreeMap;
use std::process::{Child, Command};
use std::time::Duration;

use rustix::process::{Pid, Signal, kill_process};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::Listeners;
use crate::app::{self, AppError, Setup};
use crate::cache::{Cache, Target, store::Map};
use crate::config::{Config, SourceConfig};
use crate::control::Control;
use crate::reaper;
use crate::refs::{self, Ref, RefKind, Select};
use crate::render::{Renderer, debounce};

/// The supervised child's pid (0: none), for templates whose action signals "the exec child".
static CHILD: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The pid of the command `sidekey exec` supervises, if one is running.
pub fn current_child() -> Option<i32> {
    let pid = CHILD.load(std::sync::atomic::Ordering::Acquire);
    i32::try_from(pid).ok().filter(|p| *p > 0)
}

/// What to do with the child when a referenced value changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnChange {
    /// Stop it (signal, grace, kill) and start it again with fresh values.
    Restart,
    /// Send it this signal.
    Signal(i32),
    /// Nothing.
    None,
}

/// Everything exec mode needs.
#[derive(Clone, Debug)]
pub struct ExecSpec {
    /// `NAME=REF` pairs, in order.
    pub env: Vec<(String, String)>,
    /// `PREFIX=REF`: one variable per key of a JSON secret (`PREFIX` + upper-cased key).
    pub expand: Vec<(String, String)>,
    /// Resolve inherited variables whose values are references (ARNs, `{{resolve:…}}`, …).
    pub resolve_env: bool,
    /// Program and arguments.
    pub command: Vec<String>,
    /// Reaction to changes.
    pub on_change: OnChange,
    /// Time between the stop signal and SIGKILL on restart.
    pub grace: Duration,
    /// Quiet period before acting on a change.
    pub wait: Duration,
    /// Longest delay of the action after the first change of a burst.
    pub wait_max: Duration,
}

/// Why exec mode stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// A `NAME=REF` argument or env-file line is malformed.
    #[error("invalid --env {0:?}: expected NAME=REF")]
    BadPair(String),
    /// An option value is malformed.
    #[error("invalid {0}")]
    BadOption(String),
    /// A reference is malformed.
    #[error("{name}: {message}")]
    BadRef {
        /// Variable.
        name: String,
        /// Parse error.
        message: String,
    },
    /// A reference could not be resolved.
    #[error("cannot resolve {name} ({key}): {code}")]
    Unresolved {
        /// Variable.
        name: String,
        /// What was asked for.
        key: String,
        /// Backend error code or selection problem (never a value).
        code: String,
    },
    /// The command could not be started.
    #[error("cannot start {program}: {error}")]
    Spawn {
        /// Program.
        program: String,
        /// OS error.
        error: std::io::Error,
    },
}

/// Parses `NAME=REF`.
pub fn parse_pair(s: &str) -> Result<(String, String), ExecError> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() && !k.contains(char::is_whitespace) => {
            Ok((k.to_owned(), v.to_owned()))
        }
        _ => Err(ExecError::BadPair(s.to_owned())),
    }
}

/// Reads an env file: `NAME=REF` per line; blank lines and `#` comments ignored.
pub fn read_env_file(path: &std::path::Path) -> Result<Vec<(String, String)>, AppError> {
    let text = std::fs::read_to_string(path).map_err(AppError::Io)?;
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| parse_pair(l).map_err(AppError::Exec))
        .collect()
}

/// A value to put in the child's environment.
struct Binding {
    name: String,
    reference: Ref,
    /// `Some(prefix)`: expand a JSON object into one variable per key.
    expand: Option<String>,
}

/// Runs exec mode to completion; returns the exit code to use.
/// With `serve`, the HTTP API (on the configured listeners) and templates run alongside, as in
/// `sidekey run`; otherwise only configured templates do, and no token is needed.
pub async fn run(setup: Setup, serve: Option<Listeners>, spec: ExecSpec) -> Result<i32, AppError> {
    let env = setup.load.env.clone();
    let config = setup.config.clone();
    let bindings = bindings(&spec, &env)?;
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    // An edit of the local values file refreshes every value, as under `sidekey run`. Watched
    // before the first fetch, so an edit made while templates render is not missed.
    let edits = match &config.source {
        SourceConfig::File(values) => {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            crate::watch::keep_watching(values, Control::RefreshNow, tx, &stop, &tracker);
            Some(rx)
        }
        _ => None,
    };
    let (cache, core) = match serve {
        Some(listeners) => {
            let core = app::start(setup, listeners, None)?;
            let report = core.cache.configure(config.targets.clone()).await;
            if let Err(e) = core.settle_prefetch(report) {
                core.stop(true).await;
                return Err(e);
            }
            // Templates in place before the child starts.
            core.wait_ready().await;
            (core.cache.clone(), Some(core))
        }
        None => {
            let cache = Cache::start(setup.source, config.cache.clone(), stop.clone(), &tracker);
            if !config.templates.is_empty() {
                let interval = config.raw.cache.refresh_interval.0;
                let renderer = Renderer::new(
                    config.templates.clone(),
                    cache.clone(),
                    env.clone(),
                    interval,
                );
                // Files first, so the child starts with them in place.
                renderer.render_all().await?;
                tracker.spawn(renderer.watch(stop.clone()));
            }
            (cache, None)
        }
    };
    if let Some(mut rx) = edits {
        let cache = cache.clone();
        tracker.spawn(async move {
            while rx.recv().await.is_some() {
                let _ = cache.refresh_all().await;
            }
        });
    }
    let result = pin_and_supervise(&cache, &config, &env, &bindings, &spec).await;
    if let Some(core) = core {
        core.stop(false).await;
    }
    stop.cancel();
    tracker.close();
    tracker.wait().await;
    result
}

async fn pin_and_supervise(
    cache: &Cache,
    config: &Config,
    env: &BTreeMap<String, String>,
    bindings: &[Binding],
    spec: &ExecSpec,
) -> Result<i32, AppError> {
    let interval = config.raw.cache.refresh_interval.0;
    let targets: Vec<Target> = bindings
        .iter()
        .map(|b| Target {
            key: b.reference.key.clone(),
            interval,
        })
        .collect();
    let report = cache
        .pin(targets)
        .await
        .map_err(|e| AppError::Io(std::io::Error::other(e.to_string())))?;
    if let Some((key, err)) = report.failed.first() {
        let name = bindings
            .iter()
            .find(|b| &b.reference.key == key)
            .map(|b| b.name.clone())
            .unwrap_or_default();
        return Err(AppError::Exec(ExecError::Unresolved {
            name,
            key: key.to_string(),
            code: err.code.clone(),
        }));
    }
    supervise(cache, env, bindings, spec).await
}

fn bindings(spec: &ExecSpec, env: &BTreeMap<String, String>) -> Result<Vec<Binding>, AppError> {
    let parse = |name: &str, r: &str| {
        refs::parse(r, RefKind::Infer, true).map_err(|e| {
            AppError::Exec(ExecError::BadRef {
                name: name.to_owned(),
                message: e.to_string(),
            })
        })
    };
    let mut out = Vec::new();
    if spec.resolve_env {
        for (name, value) in env {
            if looks_like_ref(value) {
                out.push(Binding {
                    name: name.clone(),
                    reference: parse(name, value)?,
                    expand: None,
                });
            }
        }
    }
    for (name, r) in &spec.env {
        out.push(Binding {
            name: name.clone(),
            reference: parse(name, r)?,
            expand: None,
        });
    }
    for (prefix, r) in &spec.expand {
        out.push(Binding {
            name: prefix.clone(),
            reference: parse(prefix, r)?,
            expand: Some(prefix.clone()),
        });
    }
    Ok(out)
}

/// Inherited values sidekey resolves with `--resolve-env` (as secrets-init and ECS do).
fn looks_like_ref(v: &str) -> bool {
    v.starts_with("arn:aws:secretsmanager:")
        || v.starts_with("arn:aws-cn:secretsmanager:")
        || v.starts_with("arn:aws-us-gov:secretsmanager:")
        || (v.starts_with("arn:aws") && v.contains(":ssm:") && v.contains(":parameter/"))
        || v.starts_with("{{resolve:")
        || v.starts_with("sm://")
        || v.starts_with("ssm://")
}

/// The child's extra variables from one snapshot.
fn resolve(snapshot: &Map, bindings: &[Binding]) -> Result<Vec<(String, String)>, ExecError> {
    let mut vars = Vec::new();
    for b in bindings {
        let unresolved = |code: &str| ExecError::Unresolved {
            name: b.name.clone(),
            key: b.reference.key.to_string(),
            code: code.to_owned(),
        };
        let entry = snapshot
            .get(&b.reference.key)
            .ok_or_else(|| unresolved("not fetched"))?;
        let text = entry
            .value
            .expose_text()
            .ok_or_else(|| unresolved("a path is not a single value"))?;
        let text = match &b.reference.select {
            None => text,
            Some(sel) => match refs::select(&text, sel).map_err(|e| unresolved(&e.to_string()))? {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            },
        };
        match &b.expand {
            None => vars.push((b.name.clone(), text)),
            Some(prefix) => {
                let doc = refs::select(&text, &Select::Pointer(String::new()))
                    .map_err(|e| unresolved(&e.to_string()))?;
                let Some(obj) = doc.as_object() else {
                    return Err(unresolved("not a JSON object"));
                };
                for (k, v) in obj {
                    let key: String = k
                        .chars()
                        .map(|c| {
                            if c.is_ascii_alphanumeric() {
                                c.to_ascii_uppercase()
                            } else {
                                '_'
                            }
                        })
                        .collect();
                    let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                    vars.push((format!("{prefix}{key}"), v));
                }
            }
        }
    }
    Ok(vars)
}

fn start(
    spec: &ExecSpec,
    env: &BTreeMap<String, String>,
    vars: &[(String, String)],
) -> Result<Child, ExecError> {
    let (program, args) = spec.command.split_first().ok_or_else(|| ExecError::Spawn {
        program: String::new(),
        error: std::io::Error::other("no command"),
    })?;
    let child = Command::new(program)
        .args(args)
        .env_clear()
        .envs(env)
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .spawn()
        .map_err(|error| ExecError::Spawn {
            program: program.clone(),
            error,
        })?;
    CHILD.store(child.id(), std::sync::atomic::Ordering::Release);
    Ok(child)
}

fn send(pid: u32, sig: i32) {
    let pid = i32::try_from(pid).ok().and_then(Pid::from_raw);
    if let (Some(pid), Some(sig)) = (pid, Signal::from_named_raw(sig)) {
        let _ = kill_process(pid, sig);
    }
}

async fn supervise(
    cache: &Cache,
    env: &BTreeMap<String, String>,
    bindings: &[Binding],
    spec: &ExecSpec,
) -> Result<i32, AppError> {
    let store = cache.store();
    let versions = |snap: &Map| -> Vec<u64> {
        bindings
            .iter()
            .map(|b| snap.get(&b.reference.key).map_or(0, |e| e.changed))
            .collect()
    };
    let snapshot = store.view();
    let mut seen = versions(&snapshot);
    let vars = resolve(&snapshot, bindings).map_err(AppError::Exec)?;
    // Listen for SIGCHLD before the child exists, so a fast exit is not missed.
    let io = AppError::Io;
    let mut chld = signal(SignalKind::child()).map_err(io)?;
    reaper::become_subreaper();
    let child = start(spec, env, &vars).map_err(AppError::Exec)?;
    let mut forwarded = Vec::new();
    for kind in [
        SignalKind::terminate(),
        SignalKind::interrupt(),
        SignalKind::hangup(),
        SignalKind::quit(),
        SignalKind::user_defined1(),
        SignalKind::user_defined2(),
        SignalKind::window_change(),
    ] {
        forwarded.push((kind.as_raw_value(), signal(kind).map_err(io)?));
    }
    let mut changes = store.subscribe();
    let mut act_at: Option<(Instant, Instant)> = None;
    // A restart that failed (a value went missing, the program vanished) leaves no child; the
    // API and templates keep serving while the start is retried with backoff.
    let mut child = Some(child);
    let mut retry: Option<(Instant, u32)> = None;
    loop {
        let forward = futures_any(&mut forwarded);
        tokio::select! {
            _ = chld.recv() => {
                let pid = child.as_ref().map_or(0, Child::id);
                if let Some(code) = reaper::reap_all(pid) {
                    return Ok(code);
                }
            }
            sig = forward => match &child {
                Some(c) => send(c.id(), sig),
                // Nothing to forward to: a stop signal ends the wait for a restart.
                None if STOP_SIGNALS.contains(&sig) => return Ok(128 + sig),
                None => {}
            },
            r = changes.changed() => {
                if r.is_err() { continue; }
                let now = versions(&store.view());
                if now != seen && spec.on_change != OnChange::None {
                    seen = now;
                    act_at = Some(debounce(act_at, Instant::now(), spec.wait, spec.wait_max));
                }
            }
            () = sleep_until(act_at.map_or_else(Instant::now, |(at, _)| at)), if act_at.is_some() => {
                act_at = None;
                match (spec.on_change, &child) {
                    (OnChange::Signal(sig), Some(c)) => {
                        tracing::info!(signal = sig, "A referenced value changed; signalling the child.");
                        send(c.id(), sig);
                    }
                    (OnChange::Restart, _) => {
                        tracing::info!("A referenced value changed; restarting the child.");
                        if let Some(mut c) = child.take()
                            && let Some(code) = stop_child(&mut c, spec.grace, &mut chld).await
                        {
                            tracing::debug!(code, "Child stopped for restart.");
                        }
                        CHILD.store(0, std::sync::atomic::Ordering::Release);
                        retry = Some((Instant::now(), 0));
                    }
                    _ => {}
                }
            }
            () = sleep_until(retry.map_or_else(Instant::now, |(at, _)| at)), if retry.is_some() => {
                let failures = retry.map_or(0, |(_, n)| n);
                let started = resolve(&store.view(), bindings)
                    .and_then(|vars| start(spec, env, &vars));
                match started {
                    Ok(c) => {
                        child = Some(c);
                        retry = None;
                    }
                    Err(e) => {
                        let delay = restart_delay(failures);
                        tracing::error!(
                            error = %e,
                            retry_in_ms = delay.as_millis(),
                            "Cannot restart the child; the API keeps serving and the start is retried.",
                        );
                        retry = Some((Instant::now() + delay, failures.saturating_add(1)));
                    }
                }
            }
        }
    }
}

/// Signals that end sidekey when no child is running to forward them to.
const STOP_SIGNALS: [i32; 3] = [15, 2, 3];

/// Delay before restart attempt `failures + 1`: 1 s, doubling, at most 30 s.
fn restart_delay(failures: u32) -> Duration {
    Duration::from_secs(1 << failures.min(5)).min(Duration::from_secs(30))
}

/// SIGTERM, wait up to `grace`, then SIGKILL; returns the exit code.
async fn stop_child(
    child: &mut Child,
    grace: Duration,
    chld: &mut tokio::signal::unix::Signal,
) -> Option<i32> {
    send(child.id(), 15);
    let deadline = Instant::now() + grace;
    loop {
        if let Some(code) = reaper::reap_all(child.id()) {
            return Some(code);
        }
        tokio::select! {
            _ = chld.recv() => {}
            () = sleep_until(deadline) => {
                send(child.id(), 9);
                let _ = chld.recv().await;
                return reaper::reap_all(child.id());
            }
        }
    }
}

/// The first of several signal streams to fire; yields its signal number.
async fn futures_any(streams: &mut [(i32, tokio::signal::unix::Signal)]) -> i32 {
    std::future::poll_fn(|cx| {
        for (num, s) in streams.iter_mut() {
            if s.poll_recv(cx).is_ready() {
                return std::task::Poll::Ready(*num);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_and_inherited_references() {
        assert_eq!(
            parse_pair("A=db:password").unwrap(),
            ("A".into(), "db:password".into())
        );
        assert!(parse_pair("=x").is_err() && parse_pair("A=").is_err() && parse_pair("A").is_err());
        assert!(looks_like_ref(
            "arn:aws:secretsmanager:us-east-1:1:secret:db-AbCdEf"
        ));
        assert!(looks_like_ref("arn:aws:ssm:us-east-1:1:parameter/a/b"));
        assert!(looks_like_ref("{{resolve:ssm:/a}}"));
        assert!(!looks_like_ref("/usr/bin:/bin") && !looks_like_ref("arn:aws:s3:::bucket"));
    }
}
