//! Cache and scheduler behaviour against the fake source, in paused tokio time.

use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::*;
use crate::source::fake::{Calls, FakeSource};
use crate::source::{ErrorKind, Fetched, ParamKey, PathKey, Payload, SecretKey, SourceError};

const MIN: Duration = Duration::from_secs(60);

/// Deterministic settings for tests: no jitter, 1 s…60 s backoff, 1 min TTLs.
pub(crate) fn settings() -> Settings {
    Settings {
        secrets_ttl: MIN,
        parameters_ttl: MIN,
        max_entries: 100,
        serve_stale: true,
        max_stale: Duration::from_secs(3600),
        jitter: 0.0,
        backoff: Backoff {
            min: Duration::from_secs(1),
            max: Duration::from_secs(60),
        },
        batch_window: Duration::from_secs(5),
    }
}

struct Harness {
    cache: Cache,
    fake: Arc<FakeSource>,
    stop: CancellationToken,
}

impl Harness {
    fn new(settings: Settings) -> Self {
        let fake = Arc::new(FakeSource::new());
        let stop = CancellationToken::new();
        let cache = Cache::start(fake.clone(), settings, stop.clone(), &TaskTracker::new());
        Self { cache, fake, stop }
    }

    async fn text(&self, key: &Key) -> Result<(String, bool), CacheError> {
        let hit = self.cache.get(key, false).await?;
        Ok((value_text(&hit.entry.value), hit.stale))
    }

    fn calls(&self) -> Calls {
        self.fake.calls()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn value_text(v: &Fetched) -> String {
    match v {
        Fetched::Secret(s) => match &*s.payload {
            Payload::Text(t) => t.expose_secret().to_owned(),
            Payload::Binary(_) => "<binary>".into(),
        },
        Fetched::Parameter(p) => p.value.expose_secret().to_owned(),
        Fetched::Path(ps) => ps
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(","),
    }
}

fn secret(id: &str) -> Key {
    Key::Secret(SecretKey::current(id))
}

fn param(name: &str) -> Key {
    Key::Parameter(ParamKey {
        name: name.into(),
        selector: None,
        decrypt: true,
        via: Default::default(),
    })
}

fn target(key: Key) -> Target {
    Target { key, interval: MIN }
}

fn outage() -> SourceError {
    SourceError::new(ErrorKind::Transient, "InternalServiceError", "down").with_status(500)
}

#[tokio::test(start_paused = true)]
async fn prefetched_reads_never_reach_the_source() {
    let h = Harness::new(settings());
    h.fake.put_secret("db", "s3cret");
    h.fake.put_parameter("/app/url", "u");
    let report = h
        .cache
        .configure(vec![target(secret("db")), target(param("/app/url"))])
        .await
        .unwrap();
    assert_eq!((report.ok, report.failed.len()), (2, 0));
    let before = h.calls();
    for _ in 0..10 {
        assert_eq!(
            h.text(&secret("db")).await.unwrap(),
            ("s3cret".into(), false)
        );
        assert_eq!(h.text(&param("/app/url")).await.unwrap().0, "u");
    }
    assert_eq!(h.calls(), before);
    assert_eq!(before.fetches, 1, "prefetch is one batch");
}

#[tokio::test(start_paused = true)]
async fn concurrent_misses_cost_one_backend_call() {
    let h = Harness::new(settings());
    h.fake.put_secret("db", "v");
    h.fake.set_latency(Duration::from_millis(100));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let cache = h.cache.clone();
            tokio::spawn(async move { cache.get(&secret("db"), false).await.map(|h| h.stale) })
        })
        .collect();
    for t in tasks {
        assert!(!t.await.unwrap().unwrap());
    }
    assert_eq!(h.calls().fetches, 1);
    assert_eq!(h.calls().keys, 1);
}

#[tokio::test(start_paused = true)]
async fn unchanged_secrets_are_revalidated_not_refetched() {
    let h = Harness::new(settings());
    h.fake.put_secret("db", "v1");
    h.cache.configure(vec![target(secret("db"))]).await.unwrap();
    sleep(MIN + Duration::from_secs(1)).await;
    assert_eq!(
        h.calls(),
        Calls {
            fetches: 1,
            keys: 1,
            parameter_calls: 0,
            describes: 1
        }
    );
    h.fake.put_secret("db", "v2");
    sleep(MIN).await;
    assert_eq!(
        h.calls(),
        Calls {
            fetches: 2,
            keys: 2,
            parameter_calls: 0,
            describes: 2
        }
    );
    assert_eq!(h.text(&secret("db")).await.unwrap().0, "v2");
}

#[tokio::test(start_paused = true)]
async fn stale_values_are_served_until_max_stale_then_fail_clearly() {
    let mut s = settings();
    s.max_stale = Duration::from_secs(600);
    let h = Harness::new(s);
    h.fake.put_secret("db", "v1");
    h.cache.configure(vec![target(secret("db"))]).await.unwrap();
    h.fake.fail_with(Some(outage()));
    sleep(MIN * 2).await;
    assert_eq!(h.text(&secret("db")).await.unwrap(), ("v1".into(), true));
    sleep(Duration::from_secs(600)).await;
    match h.text(&secret("db")).await {
        Err(CacheError::StaleLimit { error, .. }) => assert_eq!(error.code, "InternalServiceError"),
        other => panic!("expected StaleLimit, got {other:?}"),
    }
    h.fake.fail_with(None);
    sleep(MIN).await;
    assert_eq!(h.text(&secret("db")).await.unwrap(), ("v1".into(), false));
}

#[tokio::test(start_paused = true)]
async fn an_outage_costs_a_bounded_backed_off_number_of_calls() {
    let mut s = settings();
    s.jitter = 0.1;
    let h = Harness::new(s);
    h.fake.put_secret("db", "v1");
    let t = Target {
        key: secret("db"),
        interval: Duration::from_secs(300),
    };
    h.cache.configure(vec![t]).await.unwrap();
    h.fake.fail_with(Some(outage()));
    let before = h.calls().describes;
    sleep(Duration::from_secs(300 + 600)).await;
    let during = h.calls().describes - before;
    // Delays 0.5–1, 1–2, …, 32–60, then ≥ 30 s each: at most 7 + 600/30 calls in 10 minutes.
    assert!(
        (6..=27).contains(&during),
        "{during} calls during a 10 minute outage"
    );
}

#[tokio::test(start_paused = true)]
async fn deleted_values_stop_being_served() {
    let h = Harness::new(settings());
    h.fake.put_secret("db", "v1");
    h.cache.configure(vec![target(secret("db"))]).await.unwrap();
    h.fake.delete_secret("db");
    sleep(MIN * 2).await;
    match h.text(&secret("db")).await {
        Err(CacheError::Source(e)) => assert_eq!(e.kind, ErrorKind::NotFound),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn on_demand_entries_expire_after_ttl_and_are_bounded_lru() {
    let mut s = settings();
    s.max_entries = 2;
    let h = Harness::new(s);
    for n in ["a", "b", "c"] {
        h.fake.put_parameter(&format!("/{n}"), n);
    }
    h.text(&param("/a")).await.unwrap();
    h.text(&param("/b")).await.unwrap();
    h.text(&param("/a")).await.unwrap();
    h.text(&param("/c")).await.unwrap();
    assert_eq!(h.calls().fetches, 3);
    h.text(&param("/a")).await.unwrap();
    assert_eq!(h.calls().fetches, 3, "/a was recently used and stays");
    h.text(&param("/b")).await.unwrap();
    assert_eq!(
        h.calls().fetches,
        4,
        "/b was least recently used and was evicted"
    );
    sleep(MIN).await;
    h.text(&param("/b")).await.unwrap();
    assert_eq!(h.calls().fetches, 5, "TTL expired");
}

#[tokio::test(start_paused = true)]
async fn refresh_now_bypasses_the_cache_and_reports_errors() {
    let h = Harness::new(settings());
    h.fake.put_secret("db", "v1");
    h.text(&secret("db")).await.unwrap();
    h.fake.put_secret("db", "v2");
    let hit = h.cache.get(&secret("db"), true).await.unwrap();
    assert_eq!(value_text(&hit.entry.value), "v2");
    h.fake.fail_with(Some(outage()));
    assert!(matches!(
        h.cache.get(&secret("db"), true).await,
        Err(CacheError::Source(_))
    ));
    assert_eq!(h.text(&secret("db")).await.unwrap(), ("v2".into(), true));
}

#[tokio::test(start_paused = true)]
async fn ttl_zero_revalidates_every_read() {
    let mut s = settings();
    s.secrets_ttl = Duration::ZERO;
    let h = Harness::new(s);
    h.fake.put_secret("db", "v1");
    for _ in 0..3 {
        h.text(&secret("db")).await.unwrap();
    }
    assert_eq!(
        h.calls(),
        Calls {
            fetches: 1,
            keys: 1,
            parameter_calls: 0,
            describes: 2
        }
    );
}

#[tokio::test(start_paused = true)]
async fn paths_serve_their_parameters_and_track_additions_and_removals() {
    let h = Harness::new(settings());
    h.fake.put_parameter("/app/a", "1");
    h.fake.put_parameter("/app/b", "2");
    let path = Key::Path(PathKey {
        path: "/app".into(),
        recursive: true,
        decrypt: true,
        via: Default::default(),
    });
    h.cache.configure(vec![target(path.clone())]).await.unwrap();
    let before = h.calls();
    assert_eq!(h.text(&param("/app/b")).await.unwrap().0, "2");
    assert_eq!(
        h.calls(),
        before,
        "children of a prefetched path are cached"
    );
    h.fake.delete_parameter("/app/b");
    h.fake.put_parameter("/app/c", "3");
    sleep(MIN + Duration::from_secs(1)).await;
    assert_eq!(h.text(&path).await.unwrap().0, "/app/a,/app/c");
    let before = h.calls();
    assert_eq!(h.text(&param("/app/c")).await.unwrap().0, "3");
    assert_eq!(h.calls(), before);
    assert!(h.text(&param("/app/b")).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn due_keys_batch_within_the_window() {
    let h = Harness::new(settings());
    for n in 0..10 {
        h.fake.put_parameter(&format!("/p{n}"), "v");
    }
    let targets = (0..10)
        .map(|n| Target {
            key: param(&format!("/p{n}")),
            interval: MIN + Duration::from_secs(n),
        })
        .collect();
    h.cache.configure(targets).await.unwrap();
    sleep(MIN + Duration::from_secs(1)).await;
    // Intervals 60..69 s: the first due key pulls those due within 5 s into its batch.
    assert_eq!(h.calls().fetches, 2);
    sleep(Duration::from_secs(10)).await;
    assert_eq!(h.calls().fetches, 3);
    assert_eq!(h.calls().keys, 20);
}

#[tokio::test(start_paused = true)]
async fn reconfigure_drops_old_targets() {
    let h = Harness::new(settings());
    h.fake.put_secret("a", "1");
    h.fake.put_secret("b", "2");
    h.cache.configure(vec![target(secret("a"))]).await.unwrap();
    let report = h.cache.configure(vec![target(secret("b"))]).await.unwrap();
    assert_eq!(report.ok, 1);
    assert!(h.cache.store().get(&secret("a")).is_none());
    assert!(h.cache.store().get(&secret("b")).is_some());
}

#[tokio::test(start_paused = true)]
async fn reads_during_an_outage_without_a_cached_value_do_not_hammer_the_backend() {
    let h = Harness::new(settings());
    h.fake.put_secret("db", "v1");
    h.fake.fail_with(Some(outage()));
    for _ in 0..20 {
        assert!(matches!(
            h.text(&secret("db")).await,
            Err(CacheError::Source(_))
        ));
    }
    assert_eq!(
        h.calls().fetches,
        1,
        "one call, then the error is remembered for the backoff"
    );
    sleep(Duration::from_secs(1)).await;
    assert!(h.text(&secret("db")).await.is_err());
    assert_eq!(h.calls().fetches, 2);
    h.fake.fail_with(None);
    assert!(
        h.cache.get(&secret("db"), true).await.is_ok(),
        "refreshNow bypasses the memory"
    );
    assert_eq!(h.text(&secret("db")).await.unwrap().0, "v1");
}

#[tokio::test(start_paused = true)]
async fn refresh_all_refetches_scheduled_and_on_demand_keys_in_one_batch() {
    let h = Harness::new(settings());
    h.fake.put_secret("a", "1");
    h.fake.put_parameter("/p/x", "1");
    let path = Key::Path(PathKey {
        path: "/p".into(),
        recursive: false,
        decrypt: true,
        via: Default::default(),
    });
    h.cache
        .configure(vec![target(secret("a")), target(path)])
        .await
        .unwrap();
    h.fake.put_secret("b", "1");
    h.text(&secret("b")).await.unwrap();
    h.fake.put_secret("a", "2");
    h.fake.put_secret("b", "2");
    h.fake.put_parameter("/p/x", "2");
    let before = h.calls().fetches;
    h.cache.refresh_all().await.unwrap();
    sleep(Duration::from_millis(1)).await;
    assert_eq!(h.calls().fetches, before + 1, "one batch");
    assert_eq!(h.text(&secret("a")).await.unwrap().0, "2");
    assert_eq!(h.text(&secret("b")).await.unwrap().0, "2");
    assert_eq!(h.text(&param("/p/x")).await.unwrap().0, "2");
}

#[tokio::test(start_paused = true)]
async fn a_scheduled_rotation_is_picked_up_within_seconds_without_faster_polling() {
    let h = Harness::new(settings());
    let hour = Duration::from_secs(3600);
    h.fake.put_secret("db", "before");
    // Rotates 90 min from now; the refresh interval is an hour.
    let rotates = tokio::time::Instant::now() + hour + 30 * MIN;
    h.fake.set_next_rotation("db", rotates);
    let t = |key| Target {
        key,
        interval: hour,
    };
    h.cache.configure(vec![t(secret("db"))]).await.unwrap();
    // The first hourly revalidation learns the rotation date.
    sleep(hour + Duration::from_secs(1)).await;
    assert_eq!(h.calls().describes, 1);
    // The rotation happens on time; sidekey reads it within seconds, not at the next hour.
    sleep(30 * MIN - Duration::from_secs(1)).await;
    h.fake.put_secret("db", "after");
    assert_eq!(h.text(&secret("db")).await.unwrap().0, "before");
    sleep(2 * scheduler::ROTATION_LAG).await;
    assert_eq!(h.text(&secret("db")).await.unwrap().0, "after");
    assert_eq!(h.calls().describes, 2, "one extra check, at the rotation");
    // Then back to the hourly rhythm.
    sleep(hour - 2 * scheduler::ROTATION_LAG - MIN).await;
    assert_eq!(h.calls().describes, 2);
}

#[tokio::test(start_paused = true)]
async fn a_throttled_prefetch_waits_for_its_retry_instead_of_starting_empty() {
    let h = Harness::new(settings());
    h.fake.put_secret("db", "v");
    h.fake.fail_with(Some(
        SourceError::new(ErrorKind::Throttled, "ThrottlingException", "Rate exceeded")
            .with_status(400),
    ));
    let cache = h.cache.clone();
    let prefetch = tokio::spawn(async move { cache.configure(vec![target(secret("db"))]).await });
    sleep(Duration::from_secs(10)).await;
    assert!(!prefetch.is_finished(), "still waiting out the throttling");
    assert!(h.calls().fetches > 2, "retried on backoff");
    h.fake.fail_with(None);
    let report = prefetch.await.unwrap().unwrap();
    assert_eq!((report.ok, report.failed.len()), (1, 0));
    assert_eq!(h.text(&secret("db")).await.unwrap().0, "v");
}

#[tokio::test(start_paused = true)]
async fn refresh_calls_spread_out_but_each_stays_one_call() {
    fastrand::seed(7);
    let mut s = settings();
    s.jitter = 0.1;
    let h = Harness::new(s);
    let interval = Duration::from_secs(300);
    let mut targets: Vec<Target> = (0..100)
        .map(|i| {
            let name = format!("/app/p{i:03}");
            h.fake.put_parameter(&name, "v");
            Target {
                key: param(&name),
                interval,
            }
        })
        .collect();
    h.fake.put_secret("db", "v");
    targets.push(Target {
        key: secret("db"),
        interval,
    });
    h.cache.configure(targets).await.unwrap();
    assert_eq!(
        h.calls().parameter_calls,
        10,
        "prefetch: ten GetParameters calls"
    );
    let before = h.calls();
    let rounds = 10;
    sleep(interval * rounds).await;
    let (calls, fetches) = (
        h.calls().parameter_calls - before.parameter_calls,
        h.calls().fetches - before.fetches,
    );
    // Each call's ten keys refresh together every 270–300 s (the first refresh anywhere in
    // the first interval): 10 × (10…11) calls if groups never split.
    assert!(
        (100..=110).contains(&calls),
        "{calls} GetParameters calls in {rounds} intervals"
    );
    // One jitter draw per batch would refresh all 100 together: one fetch per interval.
    assert!(
        fetches >= 3 * rounds as usize,
        "{fetches} fetches in {rounds} intervals: the calls did not spread out"
    );
}
