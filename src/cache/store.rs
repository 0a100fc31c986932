//! The value store: `Key → Arc<Entry>` in one copy-on-write map behind an `ArcSwap`.
//!
//! Readers load the current map with one atomic pointer read and never block: they cannot
//! queue behind each other, behind a writer, or behind an AWS call. The scheduler is the only
//! writer; it builds a new map per batch of results and swaps it in, so a reader (or a template
//! render) always sees one consistent snapshot.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::source::{Fetched, Key, PathKey, SourceError, Via};

/// The map type; keys are `Arc` so copy-on-write clones only bump reference counts.
pub type Map = HashMap<Arc<Key>, Arc<Entry>>;

/// Lock-free readable store of cached values.
pub struct Store {
    map: ArcSwap<Map>,
    /// Plain keys (default region and identity) of configured items that name a region or a
    /// role, mapped to those items: a client asking for `db` reads the `db` the config
    /// reads in eu-west-1 as the cross-account role.
    aliases: ArcSwap<HashMap<Key, Arc<Key>>>,
    clock: AtomicU64,
    /// Bumped (and broadcast) whenever some value's version changes or a value disappears.
    generation: watch::Sender<u64>,
}

/// One cached value and its freshness bookkeeping. Immutable except the LRU stamp.
#[derive(Debug)]
pub struct Entry {
    /// The value.
    pub value: Fetched,
    /// Why the entry is cached; decides eviction and who refreshes it.
    pub origin: Origin,
    /// When the value was last fetched or confirmed unchanged.
    pub fetched_at: Instant,
    /// When a read must go back to the backend; `None` for scheduler-refreshed entries.
    pub expires_at: Option<Instant>,
    /// The refresh failure that made this value stale, if any.
    pub failure: Option<Failure>,
    /// The store generation in which this version of the value appeared.
    pub changed: u64,
    /// The value's compatible-route response body, made by the first read that needs it.
    pub rendered: Rendered,
    last_used: AtomicU64,
}

/// A response body made once from an entry's value and shared by every later read of that
/// entry (entries are immutable, so it cannot go out of date). It holds the secret: its
/// `Debug` shows only whether it is set.
#[derive(Default)]
pub struct Rendered(OnceLock<Bytes>);

impl Rendered {
    /// The body, if a read has made it.
    pub fn get(&self) -> Option<Bytes> {
        self.0.get().cloned()
    }

    /// Keeps `body` unless another read got there first; returns the one kept.
    pub fn set(&self, body: Bytes) -> Bytes {
        self.0.get_or_init(|| body).clone()
    }
}

impl fmt::Debug for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.0.get().is_some() {
            "set"
        } else {
            "unset"
        };
        write!(f, "Rendered({state})")
    }
}

/// Why an entry is in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Configured for prefetch: refreshed on a schedule, never evicted.
    Prefetch,
    /// A parameter found under a scheduled path walk; refreshed and removed by that walk.
    Path(Arc<PathKey>),
    /// Read through on a miss: expires after its TTL, evicted least-recently-used.
    OnDemand,
}

/// A refresh failure while a previous value is kept.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The backend error.
    pub error: SourceError,
    /// First failure in the current run of failures.
    pub since: Instant,
    /// Consecutive failures so far.
    pub count: u32,
}

// === Store ===

impl Default for Store {
    fn default() -> Self {
        Self {
            map: ArcSwap::from_pointee(Map::new()),
            aliases: ArcSwap::from_pointee(HashMap::new()),
            clock: AtomicU64::new(0),
            generation: watch::Sender::new(0),
        }
    }
}

impl Store {
    /// Looks a key up and marks it used. Never blocks.
    pub fn get(&self, key: &Key) -> Option<Arc<Entry>> {
        let entry = self.map.load().get(key).cloned()?;
        // Only on-demand entries are evicted by recency; configured ones skip the shared
        // clock, which every core would otherwise write on every read.
        if entry.origin == Origin::OnDemand {
            entry.last_used.store(self.tick(), Ordering::Relaxed);
        }
        Some(entry)
    }

    /// The key a read of `key` should use: the configured item it names when it names one
    /// with a region or role of its own, else `key` itself.
    pub fn resolve<'a>(&self, key: &'a Key) -> std::borrow::Cow<'a, Key> {
        let aliases = self.aliases.load();
        if aliases.is_empty() || *key.via() != Via::default() {
            return std::borrow::Cow::Borrowed(key);
        }
        match aliases.get(key) {
            Some(k) => std::borrow::Cow::Owned((**k).clone()),
            None => std::borrow::Cow::Borrowed(key),
        }
    }

    /// A snapshot in which the plain keys of configured items with their own region or role
    /// find those items too, for readers that look keys up themselves (templates, exec).
    pub fn view(&self) -> Arc<Map> {
        let map = self.snapshot();
        let aliases = self.aliases.load();
        if aliases.is_empty() {
            return map;
        }
        let mut view = (*map).clone();
        for (plain, key) in aliases.iter() {
            if let Some(e) = map.get(key) {
                view.insert(Arc::new(plain.clone()), e.clone());
            }
        }
        Arc::new(view)
    }

    /// Replaces the alias table (the scheduler, on every reconfiguration).
    pub(crate) fn set_aliases(&self, aliases: HashMap<Key, Arc<Key>>) {
        self.aliases.store(Arc::new(aliases));
    }

    /// The next LRU stamp.
    pub(crate) fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    /// A consistent snapshot of every entry.
    pub fn snapshot(&self) -> Arc<Map> {
        self.map.load_full()
    }

    /// Replaces the map. Only the scheduler calls this, so there is no lost-update race.
    pub(crate) fn replace(&self, map: Map) {
        self.map.store(Arc::new(map));
    }

    /// The current change generation (a cursor for change streams).
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Wakes on every new generation.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Announces generation `gen` after the map that carries it was swapped in.
    pub(crate) fn publish(&self, generation: u64) {
        self.generation.send_replace(generation);
    }
}

// === Entry ===

impl Entry {
    /// A new entry (LRU stamp 0 until [`Entry::stamped`]).
    pub fn new(
        value: Fetched,
        origin: Origin,
        fetched_at: Instant,
        expires_at: Option<Instant>,
        failure: Option<Failure>,
    ) -> Self {
        Self {
            value,
            origin,
            fetched_at,
            expires_at,
            failure,
            changed: 0,
            rendered: Rendered::default(),
            last_used: AtomicU64::new(0),
        }
    }

    /// Sets the generation this version appeared in.
    pub(crate) fn changed_in(mut self, generation: u64) -> Self {
        self.changed = generation;
        self
    }

    /// Sets the LRU stamp.
    pub(crate) fn stamped(self, tick: u64) -> Self {
        self.last_used.store(tick, Ordering::Relaxed);
        self
    }

    /// Whether a read may use this entry without asking the backend.
    pub fn is_fresh(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|t| now < t)
    }

    /// Time since the value was last confirmed by the backend.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.fetched_at)
    }

    /// LRU stamp: higher is more recent.
    pub fn last_used(&self) -> u64 {
        self.last_used.load(Ordering::Relaxed)
    }
}
