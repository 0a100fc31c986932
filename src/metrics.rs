//! Prometheus metrics. Every metric name lives in this module; recording is a relaxed atomic
//! add into fixed arrays (no locks, no allocation on the request path), and the text
//! exposition is built only when `/metrics` is scraped.
//!
//! Labels are closed sets (routes, status codes, AWS operations, outcomes), so no secret name
//! ever becomes a label; per-item ages carry ids only when the operator opts in.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;

use crate::cache::store::{Map, Origin};
use crate::source::ErrorKind;

/// The process-wide registry.
pub static METRICS: Metrics = Metrics::new();

/// Routes, as the `route` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// PSLE / agent `GET /secretsmanager/get`.
    SecretsManagerGet,
    /// PSLE `GET /systemsmanager/parameters/get`.
    ParametersGet,
    /// WCP path style `/v1/NAME`.
    PathStyle,
    /// Native `/secret`.
    Secret,
    /// Native `/parameter`.
    Parameter,
    /// Native `/parameters`.
    Parameters,
    /// `/watch`.
    Watch,
    /// `/status`.
    Status,
    /// `/metrics`.
    Metrics,
    /// `/ping`, `/healthz`, `/readyz`.
    Health,
    /// Refused before routing (connection limit) or not found.
    Other,
}

const ROUTES: [&str; 11] = [
    "secretsmanager_get",
    "parameters_get",
    "path_style",
    "secret",
    "parameter",
    "parameters",
    "watch",
    "status",
    "metrics",
    "health",
    "other",
];

/// Status codes sidekey answers with; anything else is counted as `other`.
const STATUSES: [u16; 14] = [
    200, 400, 401, 403, 404, 405, 408, 413, 414, 429, 500, 502, 503, 504,
];

/// AWS operations, as (`service`, `operation`) labels; the last row counts anything else.
const OPERATIONS: [(&str, &str); 10] = [
    ("secretsmanager", "BatchGetSecretValue"),
    ("secretsmanager", "GetSecretValue"),
    ("secretsmanager", "DescribeSecret"),
    ("secretsmanager", "ListSecrets"),
    ("ssm", "GetParameter"),
    ("ssm", "GetParameters"),
    ("ssm", "GetParametersByPath"),
    ("sts", "GetCallerIdentity"),
    ("sts", "AssumeRole"),
    ("other", "other"),
];

/// Outcomes of one AWS call attempt: success, each error kind, or no response at all.
const OUTCOMES: [&str; 8] = [
    "ok",
    "not_found",
    "access_denied",
    "throttled",
    "transient",
    "credentials",
    "invalid",
    "no_response",
];

/// Outcome of one AWS call attempt, for [`Metrics::aws_call`].
#[derive(Clone, Copy, Debug)]
pub enum CallOutcome {
    /// A 2xx answer.
    Ok,
    /// An error answer, classified.
    Error(ErrorKind),
    /// Timeout or connection failure.
    NoResponse,
}

/// Upper bounds (seconds) of the latency histograms' buckets.
const BOUNDS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

struct Histogram {
    /// Per-bucket counts (not cumulative); the last slot is `+Inf`.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_micros: AtomicU64,
}

/// Every counter sidekey keeps.
pub struct Metrics {
    requests: [[AtomicU64; STATUSES.len() + 1]; ROUTES.len()],
    hits: AtomicU64,
    misses: AtomicU64,
    stale: AtomicU64,
    aws: [[AtomicU64; OUTCOMES.len()]; OPERATIONS.len()],
    refresh: Histogram,
    refresh_batches: AtomicU64,
    prefetch_micros: AtomicU64,
    renders: AtomicU64,
    render_failures: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)] // Array seeds only; each slot is its own atomic.
const ZERO: AtomicU64 = AtomicU64::new(0);

impl Histogram {
    const fn new() -> Self {
        Self {
            buckets: [ZERO; BOUNDS.len() + 1],
            sum_micros: ZERO,
        }
    }

    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BOUNDS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str) {
        let mut cumulative = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Relaxed);
            let le = BOUNDS
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), f64::to_string);
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum = secs(self.sum_micros.load(Relaxed));
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

impl Metrics {
    const fn new() -> Self {
        #[allow(clippy::declare_interior_mutable_const)]
        const STATUS_ROW: [AtomicU64; STATUSES.len() + 1] = [ZERO; STATUSES.len() + 1];
        #[allow(clippy::declare_interior_mutable_const)]
        const OUTCOME_ROW: [AtomicU64; OUTCOMES.len()] = [ZERO; OUTCOMES.len()];
        Self {
            requests: [STATUS_ROW; ROUTES.len()],
            hits: ZERO,
            misses: ZERO,
            stale: ZERO,
            aws: [OUTCOME_ROW; OPERATIONS.len()],
            refresh: Histogram::new(),
            refresh_batches: ZERO,
            prefetch_micros: ZERO,
            renders: ZERO,
            render_failures: ZERO,
        }
    }

    /// One answered request.
    pub fn request(&self, route: Route, status: u16) {
        let i = STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(STATUSES.len());
        self.requests[route as usize][i].fetch_add(1, Relaxed);
    }

    /// A read answered from the store.
    pub fn hit(&self) {
        self.hits.fetch_add(1, Relaxed);
    }

    /// A read that had to go through the scheduler.
    pub fn miss(&self) {
        self.misses.fetch_add(1, Relaxed);
    }

    /// A read answered with a stale value (in place of a failed refresh).
    pub fn stale(&self) {
        self.stale.fetch_add(1, Relaxed);
    }

    /// One AWS call attempt (retries count: each costs API quota). Operation names are
    /// unique across the services sidekey calls.
    pub fn aws_call(&self, operation: &str, outcome: CallOutcome) {
        let op = OPERATIONS
            .iter()
            .position(|(_, o)| *o == operation)
            .unwrap_or(OPERATIONS.len() - 1);
        let out = match outcome {
            CallOutcome::Ok => 0,
            CallOutcome::Error(kind) => 1 + kind as usize,
            CallOutcome::NoResponse => OUTCOMES.len() - 1,
        };
        self.aws[op][out].fetch_add(1, Relaxed);
    }

    /// AWS call attempts so far for one operation (all outcomes).
    #[cfg(test)]
    fn aws_calls(&self, operation: &str) -> u64 {
        OPERATIONS
            .iter()
            .zip(&self.aws)
            .filter(|((_, o), _)| *o == operation)
            .flat_map(|(_, row)| row.iter())
            .map(|c| c.load(Relaxed))
            .sum()
    }

    /// One fetch batch of the scheduler took `d`.
    pub fn refresh(&self, d: Duration) {
        self.refresh_batches.fetch_add(1, Relaxed);
        self.refresh.observe(d);
    }

    /// The last start-up (or reload) prefetch took `d`.
    pub fn prefetch(&self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.prefetch_micros.store(micros, Relaxed);
    }

    /// One template render that wrote a file (`ok`) or failed.
    pub fn render(&self, ok: bool) {
        if ok {
            self.renders.fetch_add(1, Relaxed);
        } else {
            self.render_failures.fetch_add(1, Relaxed);
        }
    }

    /// The Prometheus text exposition, with gauges over the current store snapshot.
    /// `item_labels` adds one age gauge per item labelled with its id (opt-in: ids can be
    /// sensitive).
    pub fn render_text(&self, store: &Map, item_labels: bool) -> String {
        let mut out = String::with_capacity(4096);
        let mut family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(
            &mut out,
            "sidekey_requests_total",
            "counter",
            "HTTP requests answered, by route and status.",
        );
        for (route, row) in ROUTES.iter().zip(&self.requests) {
            for (i, c) in row.iter().enumerate() {
                let n = c.load(Relaxed);
                if n > 0 {
                    let status = STATUSES
                        .get(i)
                        .map_or_else(|| "other".to_owned(), u16::to_string);
                    let _ = writeln!(
                        out,
                        "sidekey_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                    );
                }
            }
        }
        family(
            &mut out,
            "sidekey_cache_reads_total",
            "counter",
            "Cache reads: hit (from the store), miss (through the scheduler), stale (a hit served in place of a failed refresh).",
        );
        for (result, c) in [
            ("hit", &self.hits),
            ("miss", &self.misses),
            ("stale", &self.stale),
        ] {
            let n = c.load(Relaxed);
            let _ = writeln!(out, "sidekey_cache_reads_total{{result=\"{result}\"}} {n}");
        }
        family(
            &mut out,
            "sidekey_aws_calls_total",
            "counter",
            "AWS API call attempts (each retry counts), by service, operation and outcome.",
        );
        for ((service, op), row) in OPERATIONS.iter().zip(&self.aws) {
            for (outcome, c) in OUTCOMES.iter().zip(row) {
                let n = c.load(Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "sidekey_aws_calls_total{{service=\"{service}\",operation=\"{op}\",outcome=\"{outcome}\"}} {n}"
                    );
                }
            }
        }
        family(
            &mut out,
            "sidekey_refresh_duration_seconds",
            "histogram",
            "Duration of one backend fetch batch (prefetch, refresh or miss).",
        );
        self.refresh
            .render(&mut out, "sidekey_refresh_duration_seconds");
        family(
            &mut out,
            "sidekey_prefetch_duration_seconds",
            "gauge",
            "Duration of the last start-up or reload prefetch.",
        );
        let prefetch = secs(self.prefetch_micros.load(Relaxed));
        let _ = writeln!(out, "sidekey_prefetch_duration_seconds {prefetch}");
        family(
            &mut out,
            "sidekey_template_renders_total",
            "counter",
            "Template renders that wrote a file, and failed renders.",
        );
        for (result, c) in [("ok", &self.renders), ("failed", &self.render_failures)] {
            let n = c.load(Relaxed);
            let _ = writeln!(
                out,
                "sidekey_template_renders_total{{result=\"{result}\"}} {n}"
            );
        }
        self.render_store(&mut out, store, item_labels, &mut family);
        out
    }

    fn render_store(
        &self,
        out: &mut String,
        store: &Map,
        item_labels: bool,
        family: &mut impl FnMut(&mut String, &str, &str, &str),
    ) {
        let now = Instant::now();
        let mut counts = [0u64; 3];
        let (mut stale, mut oldest) = (0u64, Duration::ZERO);
        for e in store.values() {
            counts[match e.origin {
                Origin::Prefetch => 0,
                Origin::Path(_) => 1,
                Origin::OnDemand => 2,
            }] += 1;
            stale += u64::from(e.failure.is_some());
            oldest = oldest.max(e.age(now));
        }
        family(
            out,
            "sidekey_cache_items",
            "gauge",
            "Cached items by origin: prefetch (configured), path (under a configured path), on_demand.",
        );
        for (origin, n) in ["prefetch", "path", "on_demand"].iter().zip(counts) {
            let _ = writeln!(out, "sidekey_cache_items{{origin=\"{origin}\"}} {n}");
        }
        family(
            out,
            "sidekey_cache_stale_items",
            "gauge",
            "Items whose last refresh failed (served stale).",
        );
        let _ = writeln!(out, "sidekey_cache_stale_items {stale}");
        family(
            out,
            "sidekey_cache_oldest_item_age_seconds",
            "gauge",
            "Age of the least recently fetched or confirmed item.",
        );
        let _ = writeln!(
            out,
            "sidekey_cache_oldest_item_age_seconds {}",
            oldest.as_secs_f64()
        );
        if item_labels {
            family(
                out,
                "sidekey_item_age_seconds",
                "gauge",
                "Age of each cached item (metrics.item_labels = true).",
            );
            let mut items: Vec<(&str, String, f64)> = store
                .iter()
                .map(|(k, e)| (k.kind(), k.name(), e.age(now).as_secs_f64()))
                .collect();
            items.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
            for (kind, id, age) in items {
                let id = id
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = writeln!(
                    out,
                    "sidekey_item_age_seconds{{kind=\"{kind}\",id=\"{id}\"}} {age}"
                );
            }
        }
    }
}

fn secs(micros: u64) -> f64 {
    Duration::from_micros(micros).as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_as_prometheus_text() {
        let m = Metrics::new();
        m.request(Route::Secret, 200);
        m.request(Route::Secret, 200);
        m.request(Route::Other, 418);
        m.hit();
        m.miss();
        m.stale();
        m.aws_call("DescribeSecret", CallOutcome::Ok);
        m.aws_call("GetParameters", CallOutcome::Error(ErrorKind::Throttled));
        m.aws_call("Unheard", CallOutcome::NoResponse);
        m.refresh(Duration::from_millis(30));
        m.render(false);
        let text = m.render_text(&Map::new(), false);
        for line in [
            "sidekey_requests_total{route=\"secret\",status=\"200\"} 2",
            "sidekey_requests_total{route=\"other\",status=\"other\"} 1",
            "sidekey_cache_reads_total{result=\"hit\"} 1",
            "sidekey_cache_reads_total{result=\"stale\"} 1",
            "sidekey_cache_reads_total{result=\"miss\"} 1",
            "sidekey_aws_calls_total{service=\"secretsmanager\",operation=\"DescribeSecret\",outcome=\"ok\"} 1",
            "sidekey_aws_calls_total{service=\"ssm\",operation=\"GetParameters\",outcome=\"throttled\"} 1",
            "sidekey_aws_calls_total{service=\"other\",operation=\"other\",outcome=\"no_response\"} 1",
            "sidekey_refresh_duration_seconds_bucket{le=\"0.025\"} 0",
            "sidekey_refresh_duration_seconds_bucket{le=\"0.05\"} 1",
            "sidekey_refresh_duration_seconds_bucket{le=\"+Inf\"} 1",
            "sidekey_refresh_duration_seconds_count 1",
            "sidekey_template_renders_total{result=\"failed\"} 1",
            "sidekey_cache_items{origin=\"prefetch\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        assert_eq!(m.aws_calls("GetParameters"), 1);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
