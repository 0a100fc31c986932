//! `GET /status` (every cached item: origin, version, age, next refresh, last error — never a
//! value) and `GET /metrics` (Prometheus text).

use bytes::Bytes;
use http::StatusCode;
use serde::Serialize;
use tokio::time::Instant;

use super::{Api, Reject};
use crate::api::dto::{self, Resp};
use crate::cache::store::Origin;
use crate::metrics::METRICS;
use crate::source::Fetched;

#[derive(Serialize)]
struct Status {
    ready: bool,
    items: Vec<Item>,
}

#[derive(Serialize)]
struct Item {
    kind: &'static str,
    id: String,
    /// `prefetch`, `path` (a parameter found under a configured path) or `on_demand`.
    origin: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    under: Option<String>,
    /// Role assumed to read it.
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<String>,
    /// Region that served the value (the failover region while the primary fails).
    #[serde(skip_serializing_if = "Option::is_none")]
    region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<usize>,
    age_seconds: u64,
    stale: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_refresh_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_rotation_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_in_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<LastError>,
}

#[derive(Serialize)]
struct LastError {
    code: String,
    message: String,
    failures: u32,
    failing_for_seconds: u64,
}

impl Api {
    pub(super) async fn status(&self) -> Result<Resp, Reject> {
        let plan = self.cache.plan().await.map_err(|_| Reject::stopping())?;
        let snapshot = self.cache.store().snapshot();
        let now = Instant::now();
        let secs = |t: Instant| t.saturating_duration_since(now).as_secs();
        let mut items: Vec<Item> = snapshot
            .iter()
            .map(|(key, e)| {
                let planned = plan.get(key);
                let (version, parameters) = match &e.value {
                    Fetched::Path(children) => (None, Some(children.len())),
                    v => (Some(v.version()), None),
                };
                let (origin, under) = match &e.origin {
                    Origin::Prefetch => ("prefetch", None),
                    Origin::Path(p) => ("path", Some(p.path.to_string())),
                    Origin::OnDemand => ("on_demand", None),
                };
                Item {
                    kind: key.kind(),
                    id: key.name(),
                    origin,
                    under,
                    role: key.via().role.as_ref().map(|r| r.arn.clone()),
                    region: e.value.region().map(str::to_owned),
                    version,
                    parameters,
                    age_seconds: e.age(now).as_secs(),
                    stale: e.failure.is_some(),
                    next_refresh_seconds: planned.map(|p| secs(p.next_refresh)),
                    interval_seconds: planned.map(|p| p.interval.as_secs()),
                    next_rotation_seconds: planned.and_then(|p| p.next_rotation).map(secs),
                    expires_in_seconds: e.expires_at.map(secs),
                    last_error: e.failure.as_ref().map(|f| LastError {
                        code: f.error.code.clone(),
                        message: f.error.message.clone(),
                        failures: f.count,
                        failing_for_seconds: now.saturating_duration_since(f.since).as_secs(),
                    }),
                }
            })
            .collect();
        items.sort_by(|a, b| (a.kind, &a.id, &a.role).cmp(&(b.kind, &b.id, &b.role)));
        let ready = self.ready.load(std::sync::atomic::Ordering::Acquire);
        Ok(dto::json(StatusCode::OK, &Status { ready, items }))
    }

    pub(super) fn metrics(&self) -> Resp {
        let snapshot = self.cache.store().snapshot();
        let text = METRICS.render_text(&snapshot, self.metrics_item_labels);
        dto::build(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            Bytes::from(text),
        )
    }
}
