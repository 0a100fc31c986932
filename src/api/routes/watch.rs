//! The change stream: `GET /watch?ids=REF,REF[&since=CURSOR][&timeout=30s]`.
//!
//! Without `since` it answers at once with each item's current version and a `cursor` (the
//! store's change generation). With `since` it long-polls until one of the items changed after
//! that cursor, or `timeout` passes, and answers the same shape with `changed` listing what
//! moved. With `Accept: text/event-stream` it streams one `change` event per change instead.
//! Versions only, never values. Items not prefetched are read through and re-read when their
//! TTL runs out, so rotation of those is seen with TTL granularity.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Frame;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use super::{Api, Pairs, Reject, last, parse_query};
use crate::api::dto::{self, Resp};
use crate::cache::{Cache, CacheError};
use crate::config::Dur;
use crate::refs::{self, RefKind};
use crate::source::{Fetched, Key};

/// Most items one watch may name.
const MAX_ITEMS: usize = 100;
/// Longest long-poll.
const MAX_TIMEOUT: Duration = Duration::from_secs(300);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// One watched item's state.
#[derive(Clone, Serialize, PartialEq, Eq)]
struct Item {
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stale: bool,
    #[serde(skip)]
    changed: u64,
}

/// The answer: a cursor, what changed since the request's cursor, and every item's state.
#[derive(Serialize)]
struct Answer<'a> {
    cursor: String,
    changed: Vec<&'a str>,
    items: BTreeMap<&'a str, &'a Item>,
}

struct Watch {
    refs: Vec<(String, Key)>,
    since: Option<u64>,
    timeout: Duration,
}

/// A body fed by a channel: each message is one server-sent event.
struct EventBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}

impl Api {
    pub(super) async fn watch<B>(&self, req: &Request<B>, query: &str) -> Result<Resp, Reject> {
        let w = parse_watch(&parse_query(query)?)?;
        if let Some((_, key)) = w.refs.iter().find(|(_, k)| !self.allow.permits(k)) {
            return Err(Reject::new(
                StatusCode::FORBIDDEN,
                "access_denied",
                format!("{key} is not in this sidecar's allow-list"),
            ));
        }
        let sse = req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/event-stream"));
        if sse {
            return Ok(self.stream(w));
        }
        let deadline = Instant::now() + w.timeout;
        let mut changes = self.cache.store().subscribe();
        loop {
            let cursor = self.cache.store().generation();
            let (items, next_expiry) = items(&self.cache, &w.refs).await;
            let since = w.since.unwrap_or(u64::MAX);
            let moved = items.iter().any(|i| i.changed > since);
            if w.since.is_none() || moved || Instant::now() >= deadline {
                return Ok(answer(&w.refs, &items, cursor, w.since));
            }
            let wake = next_expiry.map_or(deadline, |t| t.min(deadline));
            tokio::select! {
                _ = changes.changed() => {}
                () = sleep_until(wake) => {}
                () = self.shutdown.cancelled() => return Ok(answer(&w.refs, &items, cursor, w.since)),
            }
        }
    }

    /// Server-sent events: the current state, then one event per change, until the client goes
    /// away or the server shuts down.
    fn stream(&self, w: Watch) -> Resp {
        let (tx, rx) = mpsc::channel::<Bytes>(8);
        let (cache, shutdown) = (self.cache.clone(), self.shutdown.clone());
        tokio::spawn(async move {
            let mut changes = cache.store().subscribe();
            let mut since = w.since;
            loop {
                let cursor = cache.store().generation();
                let (items, next_expiry) = items(&cache, &w.refs).await;
                let moved = since.is_none_or(|s| items.iter().any(|i| i.changed > s));
                if moved {
                    let cursor = items.iter().map(|i| i.changed).fold(cursor, u64::max);
                    let body = answer_json(&w.refs, &items, cursor, since);
                    let event = format!("event: change\nid: {cursor}\ndata: {body}\n\n");
                    if tx.send(Bytes::from(event)).await.is_err() {
                        return;
                    }
                    since = Some(cursor);
                }
                let wake = next_expiry.unwrap_or_else(|| Instant::now() + MAX_TIMEOUT);
                tokio::select! {
                    _ = changes.changed() => {}
                    () = sleep_until(wake) => {}
                    () = tx.closed() => return,
                    () = shutdown.cancelled() => return,
                }
            }
        });
        let mut resp = http::Response::new(EventBody(rx).boxed());
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }
}

/// Reads every item (through the cache, so unknown items are fetched once and expired
/// on-demand items refreshed); returns their states and the earliest on-demand expiry.
async fn items(cache: &Cache, refs: &[(String, Key)]) -> (Vec<Item>, Option<Instant>) {
    let mut items = Vec::with_capacity(refs.len());
    let mut next_expiry: Option<Instant> = None;
    for (_, key) in refs {
        let item = match cache.get(key, false).await {
            Ok(hit) => {
                if let Some(t) = hit.entry.expires_at {
                    next_expiry = Some(next_expiry.map_or(t, |n| n.min(t)));
                }
                Item {
                    version: Some(public_version(&hit.entry.value)),
                    error: None,
                    stale: hit.stale,
                    changed: hit.entry.changed,
                }
            }
            Err(e) => Item {
                version: None,
                error: Some(match &e {
                    CacheError::Source(s) => s.kind.as_str(),
                    CacheError::StaleLimit { .. } => "stale_limit_exceeded",
                    CacheError::Stopped => "shutting_down",
                }),
                stale: false,
                changed: 0,
            },
        };
        items.push(item);
    }
    (items, next_expiry)
}

fn parse_watch(pairs: &Pairs) -> Result<Watch, Reject> {
    for (k, _) in pairs {
        if !matches!(k.as_str(), "ids" | "id" | "since" | "timeout") {
            return Err(Reject::new(
                StatusCode::BAD_REQUEST,
                "unknown_parameter",
                format!("unknown parameter: {k}"),
            ));
        }
    }
    let names: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "ids" || k == "id")
        .flat_map(|(k, v)| match k.as_str() {
            "ids" => v.split(',').map(str::to_owned).collect::<Vec<_>>(),
            _ => vec![v.clone()],
        })
        .filter(|s| !s.is_empty())
        .collect();
    if names.is_empty() || names.len() > MAX_ITEMS {
        return Err(Reject::new(
            StatusCode::BAD_REQUEST,
            "missing_parameter",
            format!("name 1 to {MAX_ITEMS} items with ids=REF,REF"),
        ));
    }
    let refs = names
        .into_iter()
        .map(|n| {
            let r = refs::parse(&n, RefKind::Infer, true)
                .map_err(|e| Reject::invalid_ref(e.to_string()))?;
            Ok((n, r.key))
        })
        .collect::<Result<Vec<_>, Reject>>()?;
    let since = match last(pairs, "since") {
        None => None,
        Some(s) => Some(s.parse().map_err(|_| {
            Reject::new(
                StatusCode::BAD_REQUEST,
                "invalid_parameter",
                "invalid since value",
            )
        })?),
    };
    let timeout = match last(pairs, "timeout") {
        None => DEFAULT_TIMEOUT,
        Some(t) => Dur::parse(t)
            .map(|d| d.0)
            .filter(|d| *d <= MAX_TIMEOUT)
            .ok_or_else(|| {
                Reject::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_parameter",
                    "invalid timeout value (at most 300s)",
                )
            })?,
    };
    Ok(Watch {
        refs,
        since,
        timeout,
    })
}

/// A version marker that never reveals a value: version ids and numbers as they are; a path's
/// composite version hashed.
fn public_version(v: &Fetched) -> String {
    match v {
        Fetched::Path(_) => {
            use std::hash::{Hash, Hasher};
            let mut h = std::hash::DefaultHasher::new();
            v.version().hash(&mut h);
            format!("{:016x}", h.finish())
        }
        _ => v.version(),
    }
}

/// The cursor is the generation read *before* the items, raised to the newest item read: every
/// later change gets a higher generation, and nothing already returned is reported again.
fn answer_json(refs: &[(String, Key)], items: &[Item], cursor: u64, since: Option<u64>) -> String {
    let cursor = items.iter().map(|i| i.changed).fold(cursor, u64::max);
    let changed = refs
        .iter()
        .zip(items)
        .filter(|(_, i)| since.is_some_and(|s| i.changed > s))
        .map(|((name, _), _)| name.as_str())
        .collect();
    let body = Answer {
        cursor: cursor.to_string(),
        changed,
        items: refs.iter().map(|(n, _)| n.as_str()).zip(items).collect(),
    };
    serde_json::to_string(&body).unwrap_or_default()
}

fn answer(refs: &[(String, Key)], items: &[Item], cursor: u64, since: Option<u64>) -> Resp {
    dto::build(
        StatusCode::OK,
        "application/json",
        Bytes::from(answer_json(refs, items, cursor, since)),
    )
}
