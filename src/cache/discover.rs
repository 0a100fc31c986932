//! Discovery: secrets found by name prefix and tags instead of listed by hand. Each rule is
//! listed (ListSecrets, through the scheduler) and what it finds becomes prefetch targets, read
//! in batches like any other; the listing repeats on the rule's interval (jittered), so new
//! secrets appear and deleted ones disappear without a config change. A failed listing keeps
//! the last set: an outage must not unschedule everything.

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::backoff::jittered;
use super::{Cache, CacheError, PrefetchReport, Target};
use crate::config::Discover;
use crate::source::{Key, SecretKey};

/// Runs every rule's first listing (and the prefetch of what it found), then keeps listing on
/// `tracker` until `shutdown`. Returns the merged report of the first round.
pub async fn start(
    cache: &Cache,
    rules: &[Discover],
    jitter: f64,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> PrefetchReport {
    let mut total = PrefetchReport::default();
    for (i, rule) in rules.iter().enumerate() {
        match round(cache, i, rule).await {
            Ok(r) => {
                total.ok += r.ok;
                total.failed.extend(r.failed);
            }
            Err(e) => tracing::error!(rule = i, error = %e, "Discovery failed; retrying."),
        }
    }
    for (i, rule) in rules.iter().cloned().enumerate() {
        let (cache, stop) = (cache.clone(), shutdown.clone());
        tracker.spawn(async move {
            loop {
                let wait = jittered(rule.interval, jitter, fastrand::f64());
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                if let Err(e) = round(&cache, i, &rule).await {
                    if matches!(e, CacheError::Stopped) {
                        return;
                    }
                    tracing::warn!(rule = i, error = %e, "Discovery failed; keeping what it found last.");
                }
            }
        });
    }
    total
}

/// One listing of `rule`, handed to the cache as its targets.
async fn round(cache: &Cache, i: usize, rule: &Discover) -> Result<PrefetchReport, CacheError> {
    let names = cache.list(rule.filter.clone()).await?;
    let targets = names
        .into_iter()
        .map(|id| Target {
            key: Key::Secret(SecretKey {
                via: rule.filter.via.clone(),
                ..SecretKey::current(id)
            }),
            interval: rule.interval,
        })
        .collect();
    cache.discovered(i, targets).await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::cache::Settings;
    use crate::source::fake::FakeSource;
    use crate::source::{SecretFilter, Via};

    /// New secrets are picked up and deleted ones dropped on the next listing; a failed listing
    /// keeps the last set.
    #[tokio::test(start_paused = true)]
    async fn listings_add_and_drop_secrets_and_outages_keep_them() {
        let fake = Arc::new(FakeSource::new());
        fake.put_secret("team/a", "a");
        fake.put_secret("other/x", "x");
        let (stop, tracker) = (CancellationToken::new(), TaskTracker::new());
        let cache = Cache::start(fake.clone(), Settings::default(), stop.clone(), &tracker);
        let rule = Discover {
            filter: SecretFilter {
                name_prefix: Some("team/".into()),
                tags: vec![],
                via: Via::default(),
            },
            interval: Duration::from_secs(60),
        };
        let report = start(&cache, &[rule], 0.0, &stop, &tracker).await;
        assert_eq!((report.ok, report.failed.len()), (1, 0));
        let names = || {
            let mut n: Vec<String> = cache.store().snapshot().keys().map(|k| k.name()).collect();
            n.sort();
            n
        };
        assert_eq!(names(), ["team/a"]);
        fake.put_secret("team/b", "b");
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert_eq!(names(), ["team/a", "team/b"]);
        fake.delete_secret("team/a");
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(names(), ["team/b"]);
        fake.fail_with(Some(crate::source::SourceError::new(
            crate::source::ErrorKind::Transient,
            "InternalServiceError",
            "down",
        )));
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(names(), ["team/b"], "an outage drops nothing");
        stop.cancel();
    }
}
