//! Templates rendered to files, re-rendered when a value they use changes, with an action (a
//! command or a signal) after each real change, debounced.
//!
//! Protocol: the renderer reads store snapshots only. A first pass discovers what each template
//! references; those keys are pinned into the scheduler's refresh set (so they are prefetched
//! and kept fresh like configured items), and rendering repeats until nothing is missing. After
//! that the renderer wakes on every store generation, renders every template against one
//! snapshot, writes only files whose bytes changed, and arms that template's action: it fires
//! `wait.min` after the last change, but no later than `wait.max` after the first, so a burst of
//! rotations causes one reload. A failed render keeps the old file and is retried on the next
//! change.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::cache::{Cache, Target};
use crate::metrics::METRICS;
use crate::source::Key;

pub mod output;
pub mod template;

pub use output::Destination;
pub use template::{RenderError, Syntax};

/// One configured template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateSpec {
    /// Where the template text comes from.
    pub source: TemplateSource,
    /// Language.
    pub syntax: Syntax,
    /// Output file.
    pub destination: Destination,
    /// What to do after the file changed.
    pub action: Action,
    /// Quiet period before the action.
    pub wait_min: Duration,
    /// Longest delay of the action after the first change.
    pub wait_max: Duration,
}

/// Template text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateSource {
    /// Read from a file (re-read on every render).
    File(PathBuf),
    /// Given inline in the config.
    Inline(String),
}

/// What runs after a rendered file changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    None,
    /// Run a command (argv, no shell) with a timeout; its exit status is logged.
    Command {
        /// Program and arguments.
        argv: Vec<String>,
        /// Kill it after this long.
        timeout: Duration,
    },
    /// Send a signal to a process.
    Signal {
        /// Signal number.
        signal: i32,
        /// Which process.
        target: SignalTarget,
    },
}

/// The process a signal goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignalTarget {
    /// A fixed pid.
    Pid(i32),
    /// A pid read from a file when the signal is sent.
    PidFile(PathBuf),
    /// The command `sidekey exec` supervises.
    ExecChild,
}

/// Renders templates and keeps them current.
pub struct Renderer {
    specs: Vec<TemplateSpec>,
    cache: Cache,
    env: BTreeMap<String, String>,
    interval: Duration,
}

impl Renderer {
    /// A renderer for `specs`; referenced keys are refreshed every `interval`.
    pub fn new(
        specs: Vec<TemplateSpec>,
        cache: Cache,
        env: BTreeMap<String, String>,
        interval: Duration,
    ) -> Self {
        Self {
            specs,
            cache,
            env,
            interval,
        }
    }

    /// Renders every template once, fetching (through the scheduler) whatever they reference,
    /// and writes the files. Fails on the first template that cannot be rendered.
    pub async fn render_all(&self) -> Result<usize, RenderError> {
        let mut pinned: Vec<Key> = Vec::new();
        // Each pass can reveal references hidden behind values (`{% if secret(…) %}`).
        for _ in 0..8 {
            let snapshot = self.cache.store().view();
            let mut missing = Vec::new();
            let mut outputs = Vec::new();
            for spec in &self.specs {
                let r = self.render_one(spec, snapshot.clone())?;
                missing.extend(r.missing);
                outputs.push(r.output);
            }
            if missing.is_empty() {
                let mut written = 0;
                for (spec, out) in self.specs.iter().zip(outputs) {
                    let wrote = spec.destination.write(out.as_bytes());
                    if !matches!(wrote, Ok(false)) {
                        METRICS.render(wrote.is_ok());
                    }
                    written += usize::from(wrote?);
                }
                return Ok(written);
            }
            let before = pinned.len();
            for key in missing {
                if !pinned.contains(&key) {
                    pinned.push(key);
                }
            }
            if pinned.len() == before {
                break;
            }
            let targets = pinned
                .iter()
                .map(|key| Target {
                    key: key.clone(),
                    interval: self.interval,
                })
                .collect();
            let report = self
                .cache
                .pin(targets)
                .await
                .map_err(|e| RenderError::Io(e.to_string()))?;
            if let Some((key, err)) = report.failed.first() {
                return Err(RenderError::Io(format!("{key}: {err}")));
            }
        }
        Err(RenderError::Io(
            "templates keep referencing values that cannot be fetched".into(),
        ))
    }

    fn render_one(
        &self,
        spec: &TemplateSpec,
        snapshot: Arc<crate::cache::store::Map>,
    ) -> Result<template::Rendered, RenderError> {
        let (name, text) = match &spec.source {
            TemplateSource::File(p) => (
                p.display().to_string(),
                std::fs::read_to_string(p).map_err(|e| {
                    RenderError::Io(format!("cannot read template {}: {e}", p.display()))
                })?,
            ),
            TemplateSource::Inline(t) => (
                format!("inline template for {}", spec.destination.path.display()),
                t.clone(),
            ),
        };
        template::render(&name, &text, spec.syntax, snapshot, &self.env)
    }

    /// Re-renders on every store change until `shutdown`, running debounced actions.
    pub async fn watch(self, shutdown: CancellationToken) {
        let mut changes = self.cache.store().subscribe();
        // A change published after `render_all` but before this subscription would otherwise
        // be missed; one re-render on start writes nothing if the files are current.
        changes.mark_changed();
        let mut pending: Vec<Option<(Instant, Instant)>> = vec![None; self.specs.len()];
        loop {
            let due = pending.iter().flatten().map(|(at, _)| *at).min();
            tokio::select! {
                () = shutdown.cancelled() => return,
                r = changes.changed() => {
                    if r.is_err() { return; }
                    self.rerender(&mut pending);
                }
                () = sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    let now = Instant::now();
                    for (spec, slot) in self.specs.iter().zip(pending.iter_mut()) {
                        if slot.is_some_and(|(at, _)| at <= now) {
                            *slot = None;
                            run_action(&spec.action, &spec.destination.path).await;
                        }
                    }
                }
            }
        }
    }

    fn rerender(&self, pending: &mut [Option<(Instant, Instant)>]) {
        let snapshot = self.cache.store().view();
        let now = Instant::now();
        for (spec, slot) in self.specs.iter().zip(pending.iter_mut()) {
            let written = self.render_one(spec, snapshot.clone()).and_then(|r| {
                if r.missing.is_empty() {
                    spec.destination.write(r.output.as_bytes())
                } else {
                    Ok(false)
                }
            });
            match written {
                Ok(true) => {
                    METRICS.render(true);
                    tracing::info!(file = %spec.destination.path.display(), "Rendered.");
                    *slot = Some(debounce(*slot, now, spec.wait_min, spec.wait_max));
                }
                Ok(false) => {}
                Err(e) => {
                    METRICS.render(false);
                    tracing::error!(error = %e, "Render failed; keeping the previous file.");
                }
            }
        }
    }
}

/// Runs one action, logging its outcome. Never fails the renderer.
async fn run_action(action: &Action, file: &std::path::Path) {
    match action {
        Action::None => {}
        Action::Command { argv, timeout } => {
            let Some((program, args)) = argv.split_first() else {
                return;
            };
            let child = tokio::process::Command::new(program)
                .args(args)
                .kill_on_drop(true)
                .spawn();
            let mut child = match child {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(command = %program, error = %e, "Cannot start the change command.");
                    return;
                }
            };
            let pid = child.id();
            let waited = tokio::time::timeout(*timeout, child.wait()).await;
            // Under `sidekey exec` the supervisor may have reaped it first and kept the status.
            let waited = waited.map(|r| match r {
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::CHILD.raw_os_error()) => {
                    pid.and_then(crate::reaper::claim).ok_or(e)
                }
                r => r,
            });
            match waited {
                Ok(Ok(status)) if status.success() => {
                    tracing::info!(command = %program, file = %file.display(), "Change command succeeded.");
                }
                Ok(Ok(status)) => {
                    tracing::error!(command = %program, status = %status, "Change command failed.")
                }
                Ok(Err(e)) => {
                    tracing::error!(command = %program, error = %e, "Change command failed.")
                }
                Err(_) => {
                    let _ = child.kill().await;
                    tracing::error!(command = %program, "Change command timed out and was killed.");
                }
            }
        }
        Action::Signal { signal, target } => {
            let pid = match target {
                SignalTarget::Pid(p) => Some(*p),
                SignalTarget::PidFile(f) => std::fs::read_to_string(f)
                    .ok()
                    .and_then(|s| s.trim().parse().ok()),
                SignalTarget::ExecChild => crate::exec::current_child(),
            };
            let sent = pid
                .and_then(rustix::process::Pid::from_raw)
                .zip(rustix::process::Signal::from_named_raw(*signal))
                .map(|(pid, sig)| rustix::process::kill_process(pid, sig));
            match sent {
                Some(Ok(())) => tracing::info!(signal, pid = ?pid, "Signalled after a change."),
                Some(Err(e)) => tracing::error!(signal, pid = ?pid, error = %e, "Cannot signal."),
                None => tracing::error!(signal, "No valid pid or signal for the change action."),
            }
        }
    }
}

/// When an action armed by a change at `now` fires: `min` after the last change, but no later
/// than `max` after the first change of the burst. Returns `(fire_at, first_change)`.
pub(crate) fn debounce(
    slot: Option<(Instant, Instant)>,
    now: Instant,
    min: Duration,
    max: Duration,
) -> (Instant, Instant) {
    let first = slot.map_or(now, |(_, first)| first);
    ((now + min).min(first + max), first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_fires_once_within_the_window() {
        let (min, max) = (Duration::from_secs(2), Duration::from_secs(5));
        let t0 = Instant::now();
        let s = |secs| t0 + Duration::from_secs(secs);
        let first = debounce(None, t0, min, max);
        assert_eq!(first, (s(2), t0));
        let later = debounce(Some(first), s(1), min, max);
        assert_eq!(later, (s(3), t0), "quiet period restarts");
        let capped = debounce(Some(later), s(4), min, max);
        assert_eq!(
            capped,
            (s(5), t0),
            "never later than max after the first change"
        );
    }
}
