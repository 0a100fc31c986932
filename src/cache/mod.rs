//! The cache: a lock-free [`Store`] read by everyone and written by one scheduler task that owns
//! every backend call (batching, coalescing, jitter, backoff, serve-stale).
//!
//! Protocol: readers call [`Cache::get`]. A fresh entry is answered from the store without any
//! message. A miss, an expired on-demand entry or `refreshNow` sends one `Command::Get` to the
//! scheduler; the scheduler joins it to an in-flight fetch of the same key or starts one, so N
//! concurrent misses cost one backend call. Fetches run as tasks; their results come back to the
//! scheduler, which swaps a new map into the store and only then answers the waiters.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::METRICS;
use crate::source::{Key, SecretFilter, SharedSource, SourceError};

pub mod backoff;
pub mod discover;
mod scheduler;
pub mod store;
#[cfg(test)]
pub(crate) mod tests;

pub use backoff::Backoff;
pub use store::{Entry, Failure, Origin, Store};

/// Cache behaviour, validated from config.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How long an on-demand secret is served before a read revalidates it.
    pub secrets_ttl: Duration,
    /// How long an on-demand parameter or path is served before a read re-fetches it.
    pub parameters_ttl: Duration,
    /// Bound on on-demand entries (LRU); 0 disables on-demand caching.
    pub max_entries: usize,
    /// Serve the last good value on throttling, timeouts, 5xx and credential errors.
    pub serve_stale: bool,
    /// How long past its last successful refresh a stale value may still be served.
    pub max_stale: Duration,
    /// Fraction of a refresh interval used to spread refreshes (0 = none).
    pub jitter: f64,
    /// Retry delays after failed refreshes.
    pub backoff: Backoff,
    /// Keys due within this window of a due key are refreshed in the same batch.
    pub batch_window: Duration,
}

/// A key the scheduler keeps fresh on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// What to fetch.
    pub key: Key,
    /// Refresh interval (before jitter).
    pub interval: Duration,
}

/// Handle to the store and the scheduler. Cheap to clone.
#[derive(Clone)]
pub struct Cache {
    store: Arc<Store>,
    tx: mpsc::Sender<Command>,
    settings: Arc<Settings>,
}

/// A readable value.
#[derive(Debug)]
pub struct Hit {
    /// The entry.
    pub entry: Arc<Entry>,
    /// True when served in place of a failed refresh.
    pub stale: bool,
}

/// Outcome of [`Cache::configure`]: how the prefetch went.
#[derive(Debug, Default)]
pub struct PrefetchReport {
    /// Keys fetched successfully.
    pub ok: usize,
    /// Keys that failed, with their errors.
    pub failed: Vec<(Key, SourceError)>,
    /// How long it took (set by [`Cache::configure`]).
    pub took: Duration,
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The backend failed and no usable stale value exists.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A stale value exists but is older than `max_stale`.
    #[error("cached value is {}s old, over max_stale; last error: {error}", age.as_secs())]
    StaleLimit {
        /// Age of the stale value.
        age: Duration,
        /// The refresh error that keeps it stale.
        error: SourceError,
    },
    /// The scheduler has stopped (shutdown).
    #[error("cache is shutting down")]
    Stopped,
}

enum Command {
    Get {
        key: Key,
        force: bool,
        reply: oneshot::Sender<Result<Arc<Entry>, SourceError>>,
    },
    Configure {
        targets: Vec<Target>,
        reply: oneshot::Sender<PrefetchReport>,
    },
    Pin {
        targets: Vec<Target>,
        reply: oneshot::Sender<PrefetchReport>,
    },
    Discovered {
        rule: usize,
        targets: Vec<Target>,
        reply: oneshot::Sender<PrefetchReport>,
    },
    List {
        filter: SecretFilter,
        reply: oneshot::Sender<Result<Vec<String>, SourceError>>,
    },
    RefreshDue,
    RefreshAll,
    Plan {
        reply: oneshot::Sender<HashMap<Arc<Key>, Planned>>,
    },
}

/// The scheduler's plan for one scheduled key (for `/status`).
#[derive(Clone, Copy, Debug)]
pub struct Planned {
    /// When it is refreshed next.
    pub next_refresh: Instant,
    /// Its refresh interval.
    pub interval: Duration,
    /// The secret's next scheduled rotation, when known.
    pub next_rotation: Option<Instant>,
}

// === Cache ===

impl Cache {
    /// Starts the scheduler on `tracker`; it stops when `shutdown` is cancelled.
    pub fn start(
        source: SharedSource,
        settings: Settings,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) -> Self {
        let store = Arc::new(Store::default());
        let settings = Arc::new(settings);
        let (tx, rx) = mpsc::channel(4096);
        let sched = scheduler::Scheduler::new(source, store.clone(), settings.clone(), rx);
        tracker.spawn(sched.run(shutdown));
        Self {
            store,
            tx,
            settings,
        }
    }

    /// The store, for snapshots and status.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Reads a key: from the store when fresh, else through the scheduler (coalesced).
    /// `force` skips the cache and reports a backend error even when a cached value exists.
    pub async fn get(&self, key: &Key, force: bool) -> Result<Hit, CacheError> {
        let key = &*self.store.resolve(key);
        let now = Instant::now();
        if !force && let Some(e) = self.store.get(key).filter(|e| e.is_fresh(now)) {
            METRICS.hit();
            return self.hit(e, now);
        }
        METRICS.miss();
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Get {
            key: key.clone(),
            force,
            reply,
        };
        self.tx.send(cmd).await.map_err(|_| CacheError::Stopped)?;
        match rx.await.map_err(|_| CacheError::Stopped)? {
            Ok(entry) => self.hit(entry, Instant::now()),
            Err(e) if !force && e.kind.serves_stale() => match self.store.get(key) {
                Some(old) if old.failure.is_some() => self.hit(old, Instant::now()),
                _ => Err(e.into()),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces the set of scheduled keys and waits until every new key was fetched once.
    pub async fn configure(&self, targets: Vec<Target>) -> Result<PrefetchReport, CacheError> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Configure { targets, reply };
        let started = Instant::now();
        self.tx.send(cmd).await.map_err(|_| CacheError::Stopped)?;
        let mut report = rx.await.map_err(|_| CacheError::Stopped)?;
        report.took = started.elapsed();
        METRICS.prefetch(report.took);
        Ok(report)
    }

    /// Replaces what discovery rule `rule` found (kept across `configure`); waits until the new
    /// ones were fetched once.
    pub async fn discovered(
        &self,
        rule: usize,
        targets: Vec<Target>,
    ) -> Result<PrefetchReport, CacheError> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Discovered {
            rule,
            targets,
            reply,
        };
        self.tx.send(cmd).await.map_err(|_| CacheError::Stopped)?;
        rx.await.map_err(|_| CacheError::Stopped)
    }

    /// Secret names `filter` matches, listed by the source (through the scheduler, like every
    /// backend call).
    pub async fn list(&self, filter: SecretFilter) -> Result<Vec<String>, CacheError> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::List { filter, reply };
        self.tx.send(cmd).await.map_err(|_| CacheError::Stopped)?;
        Ok(rx.await.map_err(|_| CacheError::Stopped)??)
    }

    /// Adds targets that later `configure` calls keep (keys templates reference); waits until
    /// the new ones were fetched once.
    pub async fn pin(&self, mut targets: Vec<Target>) -> Result<PrefetchReport, CacheError> {
        for t in &mut targets {
            t.key = self.store.resolve(&t.key).into_owned();
        }
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Pin { targets, reply };
        self.tx.send(cmd).await.map_err(|_| CacheError::Stopped)?;
        rx.await.map_err(|_| CacheError::Stopped)
    }

    /// Wakes the scheduler to refresh everything past its deadline now. Lambda calls this on
    /// each INVOKE: timers do not run while the environment is frozen between invokes.
    pub async fn refresh_due(&self) -> Result<(), CacheError> {
        self.tx
            .send(Command::RefreshDue)
            .await
            .map_err(|_| CacheError::Stopped)
    }

    /// Re-fetches every cached and scheduled key now, in one batch (the values changed at the
    /// source, e.g. the local file was edited).
    pub async fn refresh_all(&self) -> Result<(), CacheError> {
        self.tx
            .send(Command::RefreshAll)
            .await
            .map_err(|_| CacheError::Stopped)
    }

    /// Every scheduled key's next refresh.
    pub async fn plan(&self) -> Result<HashMap<Arc<Key>, Planned>, CacheError> {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Plan { reply };
        self.tx.send(cmd).await.map_err(|_| CacheError::Stopped)?;
        rx.await.map_err(|_| CacheError::Stopped)
    }

    fn hit(&self, entry: Arc<Entry>, now: Instant) -> Result<Hit, CacheError> {
        let Some(failure) = &entry.failure else {
            return Ok(Hit {
                entry,
                stale: false,
            });
        };
        if !self.settings.serve_stale {
            return Err(failure.error.clone().into());
        }
        let age = entry.age(now);
        if age > self.settings.max_stale {
            return Err(CacheError::StaleLimit {
                age,
                error: failure.error.clone(),
            });
        }
        METRICS.stale();
        Ok(Hit { entry, stale: true })
    }
}

impl Settings {
    /// The on-demand TTL for a key.
    pub fn ttl(&self, key: &Key) -> Duration {
        match key {
            Key::Secret(_) => self.secrets_ttl,
            Key::Parameter(_) | Key::Path(_) => self.parameters_ttl,
        }
    }
}
