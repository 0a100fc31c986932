//! The one task that talks to the source. It owns:
//! - `inflight`: key → waiters, so concurrent requests for a key share one fetch;
//! - `scheduled` + `queue`: refresh deadlines for configured keys (a `BTreeSet` ordered by time,
//!   woken by `sleep_until` on the earliest one);
//! - `tasks`: running fetch batches, whose results come back through `join_next`.
//!
//! Nothing here awaits a backend call: fetches run in tasks, so commands are always accepted
//! promptly. Results are applied as one copy-on-write map swap per batch, then waiters are
//! answered. A due key pulls every key due within `batch_window` into the same batch, so
//! jittered deadlines still batch well. Every deadline is re-checked on each loop turn, not only
//! when the timer fires (Lambda freezes timers between invokes).
//!
//! A key that failed with a retryable error and has no value to serve stale is remembered in
//! `negative` for its backoff delay: reads in that window get the same error without a backend
//! call, so a client polling in a loop cannot turn an outage into a hot loop.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::{Id, JoinSet};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::backoff::jittered;
use super::store::{Entry, Failure, Map, Origin, Store};
use super::{Command, Planned, PrefetchReport, Settings, Target};
use crate::metrics::METRICS;
use crate::source::{ErrorKind, Fetched, Key, SharedSource, SourceError, Via};

type Waiter = oneshot::Sender<Result<Arc<Entry>, SourceError>>;

pub(super) struct Scheduler {
    source: SharedSource,
    store: Arc<Store>,
    settings: Arc<Settings>,
    rx: mpsc::Receiver<Command>,
    inflight: HashMap<Arc<Key>, Vec<Waiter>>,
    scheduled: HashMap<Arc<Key>, Schedule>,
    queue: BTreeSet<(Instant, Arc<Key>)>,
    pending: Vec<(Arc<Key>, bool)>,
    prefetches: Vec<PrefetchWait>,
    negative: HashMap<Arc<Key>, Negative>,
    /// Keys added by `pin`, kept across `configure`.
    pinned: HashSet<Arc<Key>>,
    /// The targets of the last `configure`.
    configured: HashMap<Arc<Key>, Duration>,
    /// What each discovery rule found last.
    discovered: HashMap<usize, HashMap<Arc<Key>, Duration>>,
    /// The generation results of the current batch are stamped with, if they change a value.
    next_generation: u64,
    /// Whether the current batch changed anything (then `next_generation` is published).
    bumped: bool,
    tasks: JoinSet<Done>,
    batches: HashMap<Id, Vec<Arc<Key>>>,
}

struct Schedule {
    interval: Duration,
    deadline: Instant,
    failures: u32,
    /// Fetched successfully at least once.
    confirmed: bool,
    /// The secret's next scheduled rotation, as DescribeSecret last reported it.
    rotation: Option<Instant>,
}

/// A refresh for a rotation runs this long after the rotation date, plus up to as much again
/// of jitter: the rotation function has run by then, and a fleet does not ask at once.
pub(super) const ROTATION_LAG: Duration = Duration::from_secs(15);

/// A recent retryable failure of a key with nothing to serve stale.
struct Negative {
    until: Instant,
    count: u32,
    error: SourceError,
}

struct PrefetchWait {
    remaining: HashSet<Arc<Key>>,
    report: PrefetchReport,
    reply: oneshot::Sender<PrefetchReport>,
    /// Keys to settle and keys settled, by kind (secrets, parameters, paths), for progress.
    total: [usize; 3],
    settled: [usize; 3],
    /// Whether the batch being applied settled some of its keys.
    moved: bool,
}

fn kind_index(key: &Key) -> usize {
    match key {
        Key::Secret(_) => 0,
        Key::Parameter(_) => 1,
        Key::Path(_) => 2,
    }
}

/// Jitter draws for a finished batch, one per refresh call's worth of keys (ten parameters;
/// one secret or path): keys read by one call stay together, so they are read by one call
/// again instead of drifting into many small ones, while the calls of a batch spread out — a
/// fleet's calls then arrive evenly instead of in bursts of each sidecar's whole set.
#[derive(Default)]
struct Draws {
    /// Per kind: keys seen so far, and the current draw.
    seen: [usize; 3],
    unit: [f64; 3],
}

impl Draws {
    fn next(&mut self, key: &Key) -> f64 {
        let kind = kind_index(key);
        if self.seen[kind].is_multiple_of(key.per_refresh_call()) {
            self.unit[kind] = fastrand::f64();
        }
        self.seen[kind] += 1;
        self.unit[kind]
    }
}

struct Done {
    keys: Vec<Arc<Key>>,
    outcomes: Vec<Outcome>,
    /// Next rotation dates learned while revalidating, parallel to `keys`.
    rotations: Vec<Option<std::time::SystemTime>>,
}

enum Outcome {
    Fetched(Fetched),
    Unchanged,
    Failed(SourceError),
}

impl Scheduler {
    pub(super) fn new(
        source: SharedSource,
        store: Arc<Store>,
        settings: Arc<Settings>,
        rx: mpsc::Receiver<Command>,
    ) -> Self {
        Self {
            source,
            store,
            settings,
            rx,
            inflight: HashMap::new(),
            scheduled: HashMap::new(),
            queue: BTreeSet::new(),
            pending: Vec::new(),
            prefetches: Vec::new(),
            negative: HashMap::new(),
            pinned: HashSet::new(),
            configured: HashMap::new(),
            discovered: HashMap::new(),
            next_generation: 0,
            bumped: false,
            tasks: JoinSet::new(),
            batches: HashMap::new(),
        }
    }

    pub(super) async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let next = self.queue.first().map(|(t, _)| *t);
            tokio::select! {
                () = shutdown.cancelled() => break,
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                Some(joined) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    match joined {
                        Ok((id, done)) => {
                            self.batches.remove(&id);
                            self.on_done(done);
                        }
                        Err(e) => self.on_lost(e.id()),
                    }
                }
                () = sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {}
            }
            while let Ok(cmd) = self.rx.try_recv() {
                self.on_command(cmd);
            }
            self.collect_due();
            self.dispatch();
        }
        tracing::debug!("Cache scheduler stopped.");
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Get { key, force, reply } => {
                let key = Arc::new(key);
                self.request(key, force, Some(reply));
            }
            Command::Configure { targets, reply } => {
                self.configured = wanted(targets);
                self.reconcile(reply);
            }
            Command::Discovered {
                rule,
                targets,
                reply,
            } => {
                let found = wanted(targets);
                let before = self.discovered.get(&rule);
                let added = found
                    .keys()
                    .filter(|k| before.is_none_or(|b| !b.contains_key(*k)))
                    .count();
                let removed =
                    before.map_or(0, |b| b.keys().filter(|k| !found.contains_key(*k)).count());
                if added + removed > 0 {
                    tracing::info!(
                        rule,
                        found = found.len(),
                        added,
                        removed,
                        "Discovery changed the prefetch set."
                    );
                }
                self.discovered.insert(rule, found);
                self.reconcile(reply);
            }
            Command::List { filter, reply } => {
                let source = self.source.clone();
                tokio::spawn(async move {
                    let _ = reply.send(source.discover(&filter).await);
                });
            }
            Command::Pin { targets, reply } => self.pin(targets, reply),
            // The loop re-checks deadlines after every command; nothing else to do.
            Command::RefreshDue => {}
            Command::Plan { reply } => {
                let plan = self
                    .scheduled
                    .iter()
                    .map(|(k, s)| {
                        let planned = Planned {
                            next_refresh: s.deadline,
                            interval: s.interval,
                            next_rotation: s.rotation,
                        };
                        (k.clone(), planned)
                    })
                    .collect();
                let _ = reply.send(plan);
            }
            Command::RefreshAll => {
                let cached = self.store.snapshot();
                let children: HashSet<Arc<Key>> = cached
                    .iter()
                    .filter(|(_, e)| matches!(e.origin, Origin::Path(_)))
                    .map(|(k, _)| k.clone())
                    .collect();
                let keys: HashSet<Arc<Key>> = cached
                    .keys()
                    .filter(|k| !children.contains(*k))
                    .chain(self.scheduled.keys())
                    .cloned()
                    .collect();
                for key in keys {
                    self.request(key, true, None);
                }
            }
        }
    }

    /// Joins an in-flight fetch of `key` or queues a new one.
    fn request(&mut self, key: Arc<Key>, force: bool, mut reply: Option<Waiter>) {
        let now = Instant::now();
        if !force
            && reply.is_some()
            && let Some(n) = self.negative.get(&key).filter(|n| n.until > now)
            && let Some(waiter) = reply.take()
        {
            let _ = waiter.send(Err(n.error.clone()));
            return;
        }
        match self.inflight.get_mut(&key) {
            Some(waiters) => waiters.extend(reply),
            None => {
                self.inflight
                    .insert(key.clone(), reply.into_iter().collect());
                self.pending.push((key, force));
            }
        }
    }

    /// Schedules the configured and discovered targets (pinned ones stay), dropping the rest.
    fn reconcile(&mut self, reply: oneshot::Sender<PrefetchReport>) {
        let mut wanted = self.configured.clone();
        for found in self.discovered.values() {
            for (k, i) in found {
                wanted.entry(k.clone()).or_insert(*i);
            }
        }
        // The smallest key wins when two items name one secret in different regions or roles.
        let mut aliases: HashMap<Key, Arc<Key>> = HashMap::new();
        for k in wanted.keys().filter(|k| *k.via() != Via::default()) {
            let plain = (**k).clone().with_via(Via::default());
            match aliases.get(&plain) {
                Some(other) if other <= k => {}
                _ => {
                    aliases.insert(plain, k.clone());
                }
            }
        }
        self.store.set_aliases(aliases);
        let dropped: Vec<Arc<Key>> = self
            .scheduled
            .keys()
            .filter(|k| !wanted.contains_key(*k) && !self.pinned.contains(*k))
            .cloned()
            .collect();
        if !dropped.is_empty() {
            let mut map = (*self.store.snapshot()).clone();
            for key in dropped {
                if let Some(s) = self.scheduled.remove(&key) {
                    self.queue.remove(&(s.deadline, key.clone()));
                }
                // No longer anybody's to wait for (it may have been waiting out throttling).
                for w in &mut self.prefetches {
                    w.remaining.remove(&key);
                }
                remove_with_children(&mut map, &key);
            }
            self.store.replace(map);
            self.answer_prefetches();
        }
        self.schedule(wanted, reply);
    }

    /// Adds targets that no reconfiguration drops (keys templates reference).
    fn pin(&mut self, targets: Vec<Target>, reply: oneshot::Sender<PrefetchReport>) {
        let wanted = wanted(targets);
        self.pinned.extend(wanted.keys().cloned());
        self.schedule(wanted, reply);
    }

    /// Schedules keys not yet scheduled (fetching them now) and answers `reply` once all of
    /// them settled; keys already scheduled only take the new interval.
    fn schedule(
        &mut self,
        wanted: HashMap<Arc<Key>, Duration>,
        reply: oneshot::Sender<PrefetchReport>,
    ) {
        let now = Instant::now();
        let cached = self.store.snapshot();
        let mut remaining = HashSet::new();
        for (key, interval) in wanted {
            if let Some(s) = self.scheduled.get_mut(&key) {
                s.interval = interval;
                // Already scheduled but its first fetch is still running: wait for it too.
                if !cached.contains_key(&key) && self.inflight.contains_key(&key) {
                    remaining.insert(key);
                }
                continue;
            }
            self.scheduled.insert(
                key.clone(),
                Schedule {
                    interval,
                    deadline: now,
                    failures: 0,
                    confirmed: false,
                    rotation: None,
                },
            );
            remaining.insert(key.clone());
            self.request(key, true, None);
        }
        let mut total = [0; 3];
        for key in &remaining {
            total[kind_index(key)] += 1;
        }
        let wait = PrefetchWait {
            remaining,
            report: PrefetchReport::default(),
            reply,
            total,
            settled: [0; 3],
            moved: false,
        };
        if wait.remaining.is_empty() {
            let _ = wait.reply.send(wait.report);
        } else {
            self.prefetches.push(wait);
        }
    }

    /// Moves due keys (and keys due within the batch window of them) into `pending`.
    fn collect_due(&mut self) {
        let now = Instant::now();
        if self.queue.first().is_none_or(|(t, _)| *t > now) {
            return;
        }
        let horizon = now + self.settings.batch_window;
        while let Some((t, _)) = self.queue.first() {
            if *t > horizon {
                break;
            }
            if let Some((_, key)) = self.queue.pop_first() {
                self.request(key, false, None);
            }
        }
    }

    /// Starts one fetch task for everything pending.
    fn dispatch(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let snapshot = self.store.snapshot();
        let jobs: Vec<(Arc<Key>, Option<String>)> = self
            .pending
            .drain(..)
            .map(|(key, force)| {
                let revalidate = match snapshot.get(&key).map(|e| &e.value) {
                    Some(Fetched::Secret(s)) if !force => Some(s.version_id.clone()),
                    _ => None,
                };
                (key, revalidate)
            })
            .collect();
        let keys: Vec<Arc<Key>> = jobs.iter().map(|(k, _)| k.clone()).collect();
        tracing::debug!(keys = keys.len(), "Fetching a batch.");
        let handle = self.tasks.spawn(fetch_batch(self.source.clone(), jobs));
        self.batches.insert(handle.id(), keys);
    }

    fn on_lost(&mut self, id: Id) {
        let keys = self.batches.remove(&id).unwrap_or_default();
        tracing::error!(keys = keys.len(), "A fetch task failed unexpectedly.");
        let err = SourceError::new(ErrorKind::Transient, "InternalFailure", "fetch task failed");
        let outcomes = keys.iter().map(|_| Outcome::Failed(err.clone())).collect();
        let rotations = keys.iter().map(|_| None).collect();
        self.on_done(Done {
            keys,
            outcomes,
            rotations,
        });
    }

    fn on_done(&mut self, done: Done) {
        let now = Instant::now();
        self.next_generation = self.store.generation() + 1;
        self.bumped = false;
        let mut map = (*self.store.snapshot()).clone();
        let mut replies = Vec::with_capacity(done.keys.len());
        let wall = std::time::SystemTime::now();
        let mut draws = Draws::default();
        for ((key, outcome), rotation) in
            done.keys.into_iter().zip(done.outcomes).zip(done.rotations)
        {
            let unit = draws.next(&key);
            let result = self.apply(&mut map, &key, outcome, now);
            // Wall-clock rotation date → scheduler time; a date already past is no plan.
            let rotation = rotation
                .and_then(|at| at.duration_since(wall).ok())
                .map(|d| now + d);
            self.reschedule(&key, result.as_ref().err(), rotation, now, unit);
            self.settle_prefetch(&key, result.as_ref().err());
            replies.push((key, result));
        }
        self.evict(&mut map);
        self.store.replace(map);
        if self.bumped {
            self.store.publish(self.next_generation);
        }
        self.answer_prefetches();
        // Forget failures once even the longest backoff has passed (keeps the map bounded).
        let horizon = self.settings.backoff.max;
        self.negative.retain(|_, n| n.until + horizon > now);
        for (key, result) in replies {
            for waiter in self.inflight.remove(&key).unwrap_or_default() {
                let _ = waiter.send(result.clone());
            }
        }
    }

    /// Applies one outcome to the map and returns what waiters get.
    fn apply(
        &mut self,
        map: &mut Map,
        key: &Arc<Key>,
        outcome: Outcome,
        now: Instant,
    ) -> Result<Arc<Entry>, SourceError> {
        let old = map.get(key).cloned();
        let origin = match (&old, self.scheduled.contains_key(key)) {
            (_, true) => Origin::Prefetch,
            (Some(e), false) => e.origin.clone(),
            (None, false) => Origin::OnDemand,
        };
        let ttl = self.settings.ttl(key);
        let expires = |origin: &Origin| match origin {
            Origin::OnDemand => Some(now + ttl),
            _ => None,
        };
        let value = match outcome {
            Outcome::Fetched(v) => {
                self.negative.remove(key);
                v
            }
            Outcome::Unchanged => match &old {
                Some(e) => e.value.clone(),
                None => {
                    return Err(SourceError::new(
                        ErrorKind::Transient,
                        "InternalFailure",
                        "entry vanished",
                    ));
                }
            },
            Outcome::Failed(error) => return Err(self.fail(map, key, old, error, now)),
        };
        let changed = match &old {
            Some(o) if o.value.version() == value.version() => o.changed,
            Some(_) => {
                tracing::info!(key = %key, "Value changed.");
                self.bump()
            }
            None => self.bump(),
        };
        let entry = Entry::new(value, origin.clone(), now, expires(&origin), None);
        let entry = Arc::new(entry.stamped(self.store.tick()).changed_in(changed));
        if let (Key::Path(pk), Fetched::Path(children)) = (&**key, &entry.value)
            && origin == Origin::Prefetch
        {
            set_children(map, pk, children, now, changed);
        }
        if origin != Origin::OnDemand || self.settings.max_entries > 0 {
            map.insert(key.clone(), entry.clone());
        }
        Ok(entry)
    }

    /// Records a failed fetch: keeps a stale value when the error allows it, else drops it.
    fn fail(
        &mut self,
        map: &mut Map,
        key: &Arc<Key>,
        old: Option<Arc<Entry>>,
        error: SourceError,
        now: Instant,
    ) -> SourceError {
        if self.scheduled.contains_key(key) || error.kind != ErrorKind::NotFound {
            tracing::warn!(key = %key, kind = %error.kind, code = %error.code, error = %error, "Fetch failed.");
        } else {
            tracing::debug!(key = %key, code = %error.code, "Not found.");
        }
        let Some(old) = old.filter(|_| error.kind.serves_stale()) else {
            if map.contains_key(key) {
                self.bump();
            }
            remove_with_children(map, key);
            if error.kind.retryable() {
                let count = self.negative.get(key).map_or(1, |n| n.count + 1);
                let until = now + self.settings.backoff.delay(count, fastrand::f64());
                let error = error.clone();
                self.negative.insert(
                    key.clone(),
                    Negative {
                        until,
                        count,
                        error,
                    },
                );
            }
            return error;
        };
        let count = old.failure.as_ref().map_or(1, |f| f.count + 1);
        let failure = Failure {
            error: error.clone(),
            since: old.failure.as_ref().map_or(now, |f| f.since),
            count,
        };
        // On-demand entries wait out the backoff before a read asks the backend again.
        let delay = self.settings.backoff.delay(count, fastrand::f64());
        let stale = |e: &Entry| {
            let expires = e.expires_at.map(|_| now + delay);
            let failure = Some(failure.clone());
            let entry = Entry::new(
                e.value.clone(),
                e.origin.clone(),
                e.fetched_at,
                expires,
                failure,
            );
            Arc::new(entry.stamped(e.last_used()).changed_in(e.changed))
        };
        if let Key::Path(pk) = &**key {
            let origin = Origin::Path(Arc::new(pk.clone()));
            for child in map.values_mut().filter(|e| e.origin == origin) {
                *child = stale(child);
            }
        }
        map.insert(key.clone(), stale(&old));
        error
    }

    /// Marks the current batch as changing something; returns its generation.
    fn bump(&mut self) -> u64 {
        self.bumped = true;
        self.next_generation
    }

    fn reschedule(
        &mut self,
        key: &Arc<Key>,
        error: Option<&SourceError>,
        rotation: Option<Instant>,
        now: Instant,
        unit: f64,
    ) {
        let Some(s) = self.scheduled.get_mut(key) else {
            return;
        };
        if rotation.is_some() {
            s.rotation = rotation;
        }
        self.queue.remove(&(s.deadline, key.clone()));
        let jitter = self.settings.jitter;
        let delay = match error {
            None => {
                s.failures = 0;
                // The first refresh is spread over the whole interval, so sidecars started
                // together (a deploy, a restart) do not stay in lock-step.
                let spread = if s.confirmed || jitter == 0.0 {
                    jitter
                } else {
                    1.0
                };
                s.confirmed = true;
                jittered(s.interval, spread, unit)
            }
            Some(e) => {
                s.failures = s.failures.saturating_add(1);
                if e.kind.retryable() {
                    self.settings
                        .backoff
                        .delay(s.failures, unit)
                        .min(s.interval)
                } else {
                    jittered(s.interval, jitter, unit)
                }
            }
        };
        s.deadline = now + delay;
        // Fresh within seconds of a scheduled rotation, without polling faster.
        if let Some(at) = s.rotation.filter(|at| *at > now) {
            let lag = ROTATION_LAG.mul_f64(1.0 + fastrand::f64());
            s.deadline = s.deadline.min(at + lag);
        }
        self.queue.insert((s.deadline, key.clone()));
    }

    /// Records a key's outcome in every prefetch waiting for it.
    /// A throttled key stays pending: it is retried on its backoff, and a prefetch that gave up
    /// on it would start a sidecar without values only because its fleet started together.
    fn settle_prefetch(&mut self, key: &Arc<Key>, error: Option<&SourceError>) {
        if error.is_some_and(|e| e.kind == ErrorKind::Throttled) && self.scheduled.contains_key(key)
        {
            return;
        }
        for w in &mut self.prefetches {
            if w.remaining.remove(key) {
                w.settled[kind_index(key)] += 1;
                w.moved = true;
                match error {
                    None => w.report.ok += 1,
                    Some(e) => w.report.failed.push(((**key).clone(), e.clone())),
                }
            }
        }
    }

    /// Answers finished prefetches. Called only after the store holds their values, so a
    /// caller that reads the store right after `configure`/`pin` returns sees them.
    fn answer_prefetches(&mut self) {
        for w in self.prefetches.iter_mut().filter(|w| w.moved) {
            w.moved = false;
            let progress: Vec<String> = ["secrets", "parameters", "paths"]
                .iter()
                .enumerate()
                .filter(|(i, _)| w.total[*i] > 0)
                .map(|(i, kind)| format!("{}/{} {kind}", w.settled[i], w.total[i]))
                .collect();
            tracing::info!(
                failed = w.report.failed.len(),
                "Prefetch progress: {}.",
                progress.join(", ")
            );
        }
        let (finished, open): (Vec<_>, Vec<_>) = std::mem::take(&mut self.prefetches)
            .into_iter()
            .partition(|w| w.remaining.is_empty());
        self.prefetches = open;
        for w in finished {
            let _ = w.reply.send(w.report);
        }
    }

    /// Evicts least-recently-used on-demand entries beyond `max_entries`.
    fn evict(&self, map: &mut Map) {
        let mut on_demand: Vec<(u64, Arc<Key>)> = map
            .iter()
            .filter(|(_, e)| e.origin == Origin::OnDemand)
            .map(|(k, e)| (e.last_used(), k.clone()))
            .collect();
        let excess = on_demand.len().saturating_sub(self.settings.max_entries);
        if excess == 0 {
            return;
        }
        on_demand.sort_unstable();
        for (_, key) in on_demand.into_iter().take(excess) {
            map.remove(&key);
        }
    }
}

/// Fetches a batch: secrets with a cached version are revalidated first (DescribeSecret) and
/// re-read only when their version moved; everything else is fetched in one source call.
fn wanted(targets: Vec<Target>) -> HashMap<Arc<Key>, Duration> {
    targets
        .into_iter()
        .map(|t| (Arc::new(t.key), t.interval))
        .collect()
}

async fn fetch_batch(source: SharedSource, jobs: Vec<(Arc<Key>, Option<String>)>) -> Done {
    let started = Instant::now();
    let mut outcomes: Vec<Option<Outcome>> = jobs.iter().map(|_| None).collect();
    let mut checks = JoinSet::new();
    for (i, (key, version)) in jobs.iter().enumerate() {
        if let (Key::Secret(sk), Some(v)) = (&**key, version) {
            let (source, sk, v) = (source.clone(), sk.clone(), v.clone());
            checks.spawn(async move { (i, source.revalidate(&sk, &v).await) });
        }
    }
    let mut rotations: Vec<_> = jobs.iter().map(|_| None).collect();
    while let Some(Ok((i, result))) = checks.join_next().await {
        outcomes[i] = match result {
            Ok(r) => {
                rotations[i] = r.next_rotation;
                r.unchanged.then_some(Outcome::Unchanged)
            }
            Err(e) => Some(Outcome::Failed(e)),
        };
    }
    let todo: Vec<usize> = (0..jobs.len()).filter(|&i| outcomes[i].is_none()).collect();
    if !todo.is_empty() {
        let keys: Vec<Key> = todo.iter().map(|&i| (*jobs[i].0).clone()).collect();
        let results = source.fetch(&keys).await;
        for (&i, r) in todo.iter().zip(results) {
            outcomes[i] = Some(match r {
                Ok(v) => Outcome::Fetched(v),
                Err(e) => Outcome::Failed(e),
            });
        }
    }
    let missing = || {
        Outcome::Failed(SourceError::new(
            ErrorKind::Transient,
            "InternalFailure",
            "no result",
        ))
    };
    METRICS.refresh(started.elapsed());
    Done {
        keys: jobs.into_iter().map(|(k, _)| k).collect(),
        outcomes: outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(missing))
            .collect(),
        rotations,
    }
}

/// Inserts a scheduled path's parameters as their own entries and drops those that vanished.
/// A child keeps its generation unless its own version moved; then it takes the path's.
fn set_children(
    map: &mut Map,
    pk: &crate::source::PathKey,
    children: &[Arc<crate::source::ParameterValue>],
    now: Instant,
    generation: u64,
) {
    let origin = Origin::Path(Arc::new(pk.clone()));
    let mut seen = HashSet::new();
    for child in children {
        let key = Arc::new(Key::Parameter(crate::source::ParamKey {
            name: child.name.clone(),
            selector: None,
            decrypt: pk.decrypt,
            via: pk.via.clone(),
        }));
        if map.get(&key).is_some_and(|e| e.origin == Origin::Prefetch) {
            continue;
        }
        seen.insert(key.clone());
        let changed = match map.get(&key).map(|e| &e.value) {
            Some(Fetched::Parameter(p)) if p.version == child.version => map[&key].changed,
            _ => generation,
        };
        let value = Fetched::Parameter(child.clone());
        let entry = Entry::new(value, origin.clone(), now, None, None).changed_in(changed);
        map.insert(key, Arc::new(entry));
    }
    map.retain(|k, e| e.origin != origin || seen.contains(k));
}

fn remove_with_children(map: &mut Map, key: &Arc<Key>) {
    map.remove(key);
    if let Key::Path(pk) = &**key {
        let origin = Origin::Path(Arc::new(pk.clone()));
        map.retain(|_, e| e.origin != origin);
    }
}
