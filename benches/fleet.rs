//! Fleet model: N sidecars, each running sidekey's real cache and scheduler (batching, jitter,
//! backoff, serve-stale), against one shared account quota, in simulated (paused tokio) time.
//!
//! The account is a token bucket (default 40 calls/s, burst 40: SSM standard throughput);
//! a call beyond it fails with `ThrottlingException`, as SSM answers. Each sidecar prefetches P
//! parameters (GetParameters, 10 names per call, as the AWS source batches) and refreshes them
//! on `interval`. Two scenarios: a rolling start spread over one interval, and every sidecar
//! (re)started at the same instant. Reported per phase (start-up until every sidecar holds
//! every value; steady state after that): peak calls/s, throttled calls, worst staleness of a
//! served value, and reads that would have failed (an item missing after its sidecar was up).
//!
//! `cargo bench --bench fleet` (defaults: 1000 sidecars × 50 parameters, 5 min refresh, 40
//! TPS, 40 simulated minutes); `-- --sidecars 200 --minutes 20 --tps 40 --interval 300
//! --backoff-max 300 --only all` (`--only rolling|all` runs one scenario).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sidekey::cache::{Cache, Settings, Target};
use sidekey::source::fake::FakeSource;
use sidekey::source::{
    ErrorKind, FetchResult, Key, ParamKey, Revalidation, SecretFilter, SecretKey, Source,
    SourceError, SourceFuture,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Per-call service latency.
const LATENCY: Duration = Duration::from_millis(40);
/// GetParameters accepts 10 names.
const BATCH: usize = 10;

struct Args {
    sidecars: usize,
    params: usize,
    interval: u64,
    tps: f64,
    minutes: u64,
    /// Longest retry delay (`cache.backoff_max`), seconds.
    backoff_max: u64,
    /// Run only the scenario whose name starts with this (`rolling`, `all`).
    only: Option<String>,
}

/// The shared account: a token bucket and a per-second call log.
struct Account {
    bucket: Mutex<(f64, Instant)>,
    rate: f64,
    /// Second → (calls, throttled).
    log: Mutex<BTreeMap<u64, (u64, u64)>>,
    epoch: Instant,
}

impl Account {
    fn call(&self) -> bool {
        let now = Instant::now();
        let ok = {
            let mut b = self.bucket.lock().expect("bucket");
            let refill = now.duration_since(b.1).as_secs_f64() * self.rate;
            b.0 = (b.0 + refill).min(self.rate);
            b.1 = now;
            if b.0 >= 1.0 {
                b.0 -= 1.0;
                true
            } else {
                false
            }
        };
        let sec = now.duration_since(self.epoch).as_secs();
        let mut log = self.log.lock().expect("log");
        let e = log.entry(sec).or_default();
        e.0 += 1;
        e.1 += u64::from(!ok);
        ok
    }
}

/// One sidecar's view of the account: SSM with the shared quota in front.
struct Quota {
    account: Arc<Account>,
    values: Arc<FakeSource>,
}

impl Source for Quota {
    fn fetch<'a>(&'a self, keys: &'a [Key]) -> SourceFuture<'a, Vec<FetchResult>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(BATCH) {
                tokio::time::sleep(LATENCY).await;
                if self.account.call() {
                    out.extend(self.values.fetch(chunk).await);
                } else {
                    let e = SourceError::new(
                        ErrorKind::Throttled,
                        "ThrottlingException",
                        "Rate exceeded",
                    )
                    .with_status(400);
                    out.extend(chunk.iter().map(|_| Err(e.clone())));
                }
            }
            out
        })
    }

    fn revalidate<'a>(
        &'a self,
        _key: &'a SecretKey,
        _version_id: &'a str,
    ) -> SourceFuture<'a, Result<Revalidation, SourceError>> {
        Box::pin(async { Ok(Revalidation::default()) })
    }

    fn discover<'a>(
        &'a self,
        filter: &'a SecretFilter,
    ) -> SourceFuture<'a, Result<Vec<String>, SourceError>> {
        self.values.discover(filter)
    }
}

fn name(i: usize) -> String {
    format!("/app/config/p{i:03}")
}

fn key(i: usize) -> Key {
    Key::Parameter(ParamKey {
        name: name(i),
        selector: None,
        decrypt: true,
        via: Default::default(),
    })
}

#[derive(Default)]
struct Phase {
    peak_tps: u64,
    calls: u64,
    throttled: u64,
    worst_staleness: Duration,
    failed_reads: u64,
}

struct Outcome {
    settled_at: Option<Duration>,
    startup: Phase,
    steady: Phase,
    prefetch_failures: usize,
}

async fn simulate(a: &Args, simultaneous: bool) -> Outcome {
    let epoch = Instant::now();
    let account = Arc::new(Account {
        bucket: Mutex::new((a.tps, epoch)),
        rate: a.tps,
        log: Mutex::new(BTreeMap::new()),
        epoch,
    });
    let values = Arc::new(FakeSource::new());
    for i in 0..a.params {
        values.put_parameter(&name(i), "v");
    }
    let interval = Duration::from_secs(a.interval);
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let up: Arc<Mutex<Vec<Cache>>> = Arc::default();
    let prefetch_failures = Arc::new(Mutex::new(0usize));
    for n in 0..a.sidecars {
        let start = if simultaneous {
            Duration::ZERO
        } else {
            interval.mul_f64(n as f64 / a.sidecars as f64)
        };
        let source = Arc::new(Quota {
            account: account.clone(),
            values: values.clone(),
        });
        let (stop, up, failures, tracker2) = (
            stop.clone(),
            up.clone(),
            prefetch_failures.clone(),
            tracker.clone(),
        );
        let params = a.params;
        let mut settings = Settings::default();
        settings.backoff.max = Duration::from_secs(a.backoff_max);
        tracker.spawn(async move {
            tokio::time::sleep(start).await;
            let cache = Cache::start(source, settings, stop, &tracker2);
            let targets = (0..params)
                .map(|i| Target {
                    key: key(i),
                    interval,
                })
                .collect();
            if let Ok(report) = cache.configure(targets).await {
                *failures.lock().expect("failures") += report.failed.len();
            }
            up.lock().expect("up").push(cache);
        });
    }
    let keys: Vec<Key> = (0..a.params).map(key).collect();
    let end = Duration::from_secs(a.minutes * 60);
    let (mut startup, mut steady) = (Phase::default(), Phase::default());
    let mut settled_at = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while epoch.elapsed() < end {
        tick.tick().await;
        let now = Instant::now();
        let (mut missing, mut worst) = (0u64, Duration::ZERO);
        let caches = up.lock().expect("up").clone();
        for cache in &caches {
            for k in &keys {
                match cache.store().get(k) {
                    Some(e) => worst = worst.max(e.age(now)),
                    None => missing += 1,
                }
            }
        }
        let phase = if settled_at.is_some() {
            &mut steady
        } else {
            &mut startup
        };
        phase.failed_reads += missing;
        phase.worst_staleness = phase.worst_staleness.max(worst);
        if settled_at.is_none() && missing == 0 && caches.len() == a.sidecars {
            settled_at = Some(epoch.elapsed());
        }
    }
    stop.cancel();
    // Attribute each second's calls to its phase.
    let settled = settled_at.map_or(u64::MAX, |d| d.as_secs());
    for (sec, (calls, throttled)) in account.log.lock().expect("log").iter() {
        let p = if *sec <= settled {
            &mut startup
        } else {
            &mut steady
        };
        p.peak_tps = p.peak_tps.max(*calls);
        p.calls += calls;
        p.throttled += throttled;
    }
    let prefetch_failures = *prefetch_failures.lock().expect("failures");
    Outcome {
        settled_at,
        startup,
        steady,
        prefetch_failures,
    }
}

fn parse_args() -> Args {
    let mut a = Args {
        sidecars: 1000,
        params: 50,
        interval: 300,
        tps: 40.0,
        minutes: 40,
        backoff_max: Settings::default().backoff.max.as_secs(),
        only: None,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        if flag == "--only" {
            a.only = it.next().cloned();
            continue;
        }
        let mut value = || it.next().and_then(|v| v.parse::<f64>().ok());
        match flag.as_str() {
            "--sidecars" => a.sidecars = value().map_or(a.sidecars, |v| v as usize),
            "--params" => a.params = value().map_or(a.params, |v| v as usize),
            "--interval" => a.interval = value().map_or(a.interval, |v| v as u64),
            "--tps" => a.tps = value().unwrap_or(a.tps),
            "--minutes" => a.minutes = value().map_or(a.minutes, |v| v as u64),
            "--backoff-max" => a.backoff_max = value().map_or(a.backoff_max, |v| v as u64),
            _ => {} // cargo bench passes `--bench`.
        }
    }
    a
}

fn main() {
    let a = parse_args();
    println!(
        "fleet model: {} sidecars × {} parameters, refresh {} s (sidekey defaults: jitter 0.1, batch window 5 s, backoff 1 s…{} s), quota {} calls/s, {} simulated minutes",
        a.sidecars, a.params, a.interval, a.backoff_max, a.tps, a.minutes
    );
    println!(
        "ideal steady state: {:.1} calls/s",
        (a.sidecars * a.params.div_ceil(BATCH)) as f64 / a.interval as f64
    );
    for (name, simultaneous) in [("rolling start", false), ("all at once", true)] {
        if a.only
            .as_ref()
            .is_some_and(|o| !name.starts_with(o.as_str()))
        {
            continue;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        #[allow(clippy::disallowed_types)] // Real time spent simulating, outside the runtime.
        let wall = std::time::Instant::now();
        let o = rt.block_on(simulate(&a, simultaneous));
        println!(
            "\n{name}  (simulated in {:.1} s)",
            wall.elapsed().as_secs_f64()
        );
        println!(
            "  settled (every sidecar holds every value) after: {}",
            o.settled_at
                .map_or_else(|| "never".to_owned(), |d| format!("{} s", d.as_secs()))
        );
        println!(
            "  items that failed their first prefetch: {}",
            o.prefetch_failures
        );
        for (phase, p) in [("start-up", &o.startup), ("steady", &o.steady)] {
            println!(
                "  {phase:9} peak {:>5} calls/s | calls {:>7} | throttled {:>6} | worst staleness {:>4} s | failed reads (item-seconds missing) {}",
                p.peak_tps,
                p.calls,
                p.throttled,
                p.worst_staleness.as_secs(),
                p.failed_reads
            );
        }
    }
}
