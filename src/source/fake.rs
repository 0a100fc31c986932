//! A programmable in-memory [`Source`] for tests: values, injected errors, latency (tokio time,
//! so paused-time tests stay deterministic) and call counts.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::memory::{Catalog, PayloadData};
use super::{
    FetchResult, Key, PARAMETERS_PER_CALL, Revalidation, SecretFilter, SecretKey, Source,
    SourceError, SourceFuture,
};

/// The fake. All knobs take `&self` so tests can share it behind an `Arc`.
#[derive(Default)]
pub struct FakeSource {
    catalog: Mutex<Catalog>,
    failure: Mutex<Option<SourceError>>,
    latency: Mutex<Duration>,
    fetch_calls: AtomicUsize,
    keys_fetched: AtomicUsize,
    parameter_calls: AtomicUsize,
    describe_calls: AtomicUsize,
    rotations: Mutex<std::collections::HashMap<String, tokio::time::Instant>>,
}

/// Call counters, read with [`FakeSource::calls`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Calls {
    /// `fetch` invocations (one per batch).
    pub fetches: usize,
    /// Keys across all fetches.
    pub keys: usize,
    /// GetParameters calls the AWS source would make for those fetches (10 names per call).
    pub parameter_calls: usize,
    /// `secret_unchanged` invocations.
    pub describes: usize,
}

// === FakeSource ===

impl FakeSource {
    /// An empty fake.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts a new text version of a secret (becomes `AWSCURRENT`); returns its version id.
    pub fn put_secret(&self, name: &str, value: &str) -> String {
        self.catalog()
            .put_secret(name, PayloadData::Text(value.to_owned()))
    }

    /// Puts a new binary version of a secret.
    pub fn put_secret_binary(&self, name: &str, value: &[u8]) -> String {
        self.catalog()
            .put_secret(name, PayloadData::Binary(value.to_vec()))
    }

    /// Puts a new `String` parameter version; returns the version number.
    pub fn put_parameter(&self, name: &str, value: &str) -> i64 {
        self.catalog().put_parameter(name, "String", value, &[])
    }

    /// Puts a parameter version of a given type with labels.
    pub fn put_parameter_typed(&self, name: &str, kind: &str, value: &str, labels: &[&str]) -> i64 {
        let labels: Vec<String> = labels.iter().map(|l| (*l).to_owned()).collect();
        self.catalog().put_parameter(name, kind, value, &labels)
    }

    /// Deletes a secret.
    pub fn delete_secret(&self, name: &str) {
        self.catalog().delete_secret(name);
    }

    /// Deletes a parameter.
    pub fn delete_parameter(&self, name: &str) {
        self.catalog().delete_parameter(name);
    }

    /// Reports `at` as the secret's next rotation date (rotation enabled). In tokio time, so
    /// paused-time tests agree with it; answers convert it to a wall-clock date.
    pub fn set_next_rotation(&self, name: &str, at: tokio::time::Instant) {
        lock(&self.rotations).insert(name.to_owned(), at);
    }

    /// Makes every call fail with `error` (or succeed again with `None`).
    pub fn fail_with(&self, error: Option<SourceError>) {
        *lock(&self.failure) = error;
    }

    /// Delays every call by `latency` (tokio time).
    pub fn set_latency(&self, latency: Duration) {
        *lock(&self.latency) = latency;
    }

    /// Call counters so far.
    pub fn calls(&self) -> Calls {
        Calls {
            fetches: self.fetch_calls.load(Ordering::SeqCst),
            keys: self.keys_fetched.load(Ordering::SeqCst),
            parameter_calls: self.parameter_calls.load(Ordering::SeqCst),
            describes: self.describe_calls.load(Ordering::SeqCst),
        }
    }

    fn catalog(&self) -> std::sync::MutexGuard<'_, Catalog> {
        lock(&self.catalog)
    }

    async fn delay(&self) -> Result<(), SourceError> {
        let latency = *lock(&self.latency);
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        match lock(&self.failure).clone() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Source for FakeSource {
    fn fetch<'a>(&'a self, keys: &'a [Key]) -> SourceFuture<'a, Vec<FetchResult>> {
        self.fetch_calls.fetch_add(1, Ordering::SeqCst);
        self.keys_fetched.fetch_add(keys.len(), Ordering::SeqCst);
        let params = keys
            .iter()
            .filter(|k| matches!(k, Key::Parameter(_)))
            .count();
        self.parameter_calls
            .fetch_add(params.div_ceil(PARAMETERS_PER_CALL), Ordering::SeqCst);
        Box::pin(async move {
            if let Err(e) = self.delay().await {
                return keys.iter().map(|_| Err(e.clone())).collect();
            }
            let catalog = self.catalog();
            keys.iter().map(|k| catalog.get(k)).collect()
        })
    }

    fn revalidate<'a>(
        &'a self,
        key: &'a SecretKey,
        version_id: &'a str,
    ) -> SourceFuture<'a, Result<Revalidation, SourceError>> {
        self.describe_calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            self.delay().await?;
            let unchanged = self.catalog().secret_unchanged(key, version_id)?;
            let next_rotation = lock(&self.rotations).get(&key.id).map(|at| {
                let ahead = at.saturating_duration_since(tokio::time::Instant::now());
                std::time::SystemTime::now() + ahead
            });
            Ok(Revalidation {
                unchanged,
                next_rotation,
            })
        })
    }

    fn discover<'a>(
        &'a self,
        filter: &'a SecretFilter,
    ) -> SourceFuture<'a, Result<Vec<String>, SourceError>> {
        Box::pin(async move {
            self.delay().await?;
            Ok(self.catalog().secret_names(filter))
        })
    }
}

/// Locks a mutex, recovering from poisoning: the fake's state stays usable after a test panic.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
