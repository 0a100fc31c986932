//! sidekey's own routes: `/secret`, `/parameter`, `/parameters`. Any REF syntax, JSON key or
//! pointer selection, `raw=true` for shell use, one JSON error shape with a stable `code`.

use http::StatusCode;
use secrecy::ExposeSecret;
use serde_json::Value;

use super::{
    Api, Pairs, Reject, bool_param, fresh, last, param_key, parse_query, refresh_now, required,
};
use crate::api::dto::{self, NativeParameter, NativeSecret, Resp};
use crate::cache::{CacheError, Hit};
use crate::refs::{self, RefKind, Select, SelectError};
use crate::source::{ErrorKind, Fetched, Key, PathKey, Payload};

impl Api {
    pub(super) async fn native_secret(&self, query: &str) -> Result<Resp, Reject> {
        let pairs = parse_query(query)?;
        self.check_known(
            &pairs,
            &["id", "versionStage", "versionId"],
            SELECT_PARAMS,
            false,
        )?;
        let id = required(&pairs, "id")?;
        let r = refs::parse(id, RefKind::Secret, true)
            .map_err(|e| Reject::invalid_ref(e.to_string()))?;
        let Key::Secret(mut key) = r.key else {
            return Err(Reject::invalid_ref(
                "not a Secrets Manager reference; use /parameter".into(),
            ));
        };
        for (param, slot) in [
            ("versionStage", &mut key.version_stage),
            ("versionId", &mut key.version_id),
        ] {
            if let Some(v) = last(&pairs, param) {
                if slot.is_some() {
                    return Err(Reject::invalid_ref(format!("{param} given twice")));
                }
                *slot = Some(v.to_owned());
            }
        }
        let select = selection(&pairs, r.select)?;
        let raw = bool_param(&pairs, "raw", false)?;
        let hit = self.native_get(&Key::Secret(key), &pairs).await?;
        let Fetched::Secret(s) = &hit.entry.value else {
            return Err(Reject::internal());
        };
        let (value, encoding) = match &*s.payload {
            Payload::Text(t) => (select_value(t.expose_secret(), select.as_ref())?, None),
            Payload::Binary(b) if select.is_none() => {
                if raw {
                    let body = dto::wiped(b.expose_secret().to_vec());
                    return Ok(fresh(
                        dto::build(StatusCode::OK, "application/octet-stream", body),
                        &hit,
                    ));
                }
                let b64 =
                    base64::Engine::encode(&base64::prelude::BASE64_STANDARD, b.expose_secret());
                (Value::String(b64), Some("base64"))
            }
            Payload::Binary(_) => {
                return Err(Reject::new(
                    StatusCode::BAD_REQUEST,
                    "not_json",
                    "cannot select from a binary secret",
                ));
            }
        };
        if raw {
            return Ok(fresh(raw_body(&value), &hit));
        }
        let body = NativeSecret {
            name: &s.name,
            arn: &s.arn,
            version_id: &s.version_id,
            version_stages: &s.version_stages,
            created_date: s.created_date.map(|t| t.to_string()),
            value,
            encoding,
        };
        Ok(fresh(dto::json(StatusCode::OK, &body), &hit))
    }

    pub(super) async fn native_parameter(&self, query: &str) -> Result<Resp, Reject> {
        let pairs = parse_query(query)?;
        self.check_known(
            &pairs,
            &["name", "version", "label", "withDecryption"],
            SELECT_PARAMS,
            false,
        )?;
        let name = required(&pairs, "name")?;
        let decrypt = bool_param(&pairs, "withDecryption", true)?;
        let selector = pairs.iter().find(|(k, _)| k == "version" || k == "label");
        let key = param_key(name, decrypt, selector)?;
        let select = selection(&pairs, None)?;
        let raw = bool_param(&pairs, "raw", false)?;
        let hit = self.native_get(&key, &pairs).await?;
        let Fetched::Parameter(p) = &hit.entry.value else {
            return Err(Reject::internal());
        };
        let value = select_value(p.value.expose_secret(), select.as_ref())?;
        if raw {
            return Ok(fresh(raw_body(&value), &hit));
        }
        let body = NativeParameter {
            name: &p.name,
            arn: &p.arn,
            kind: &p.kind,
            version: p.version,
            selector: p.selector.as_deref(),
            last_modified_date: p.last_modified.map(|t| t.to_string()),
            value,
        };
        Ok(fresh(dto::json(StatusCode::OK, &body), &hit))
    }

    pub(super) async fn native_path(&self, query: &str) -> Result<Resp, Reject> {
        let pairs = parse_query(query)?;
        self.check_known(
            &pairs,
            &["path", "recursive", "withDecryption", "refreshNow"],
            &[],
            false,
        )?;
        let path = required(&pairs, "path")?;
        refs::check_path(path).map_err(|e| Reject::invalid_ref(e.to_string()))?;
        let key = Key::Path(PathKey::new(
            path,
            bool_param(&pairs, "recursive", false)?,
            bool_param(&pairs, "withDecryption", true)?,
        ));
        let hit = self.native_get(&key, &pairs).await?;
        let Fetched::Path(params) = &hit.entry.value else {
            return Err(Reject::internal());
        };
        let map: serde_json::Map<String, Value> = params
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    Value::String(p.value.expose_secret().to_owned()),
                )
            })
            .collect();
        Ok(fresh(dto::json(StatusCode::OK, &map), &hit))
    }

    async fn native_get(&self, key: &Key, pairs: &Pairs) -> Result<Hit, Reject> {
        let force = refresh_now(pairs)?;
        self.read(key, force).await.map_err(native_error)
    }
}

const SELECT_PARAMS: &[&str] = &["key", "pointer", "raw", "refreshNow"];

fn selection(pairs: &Pairs, from_ref: Option<Select>) -> Result<Option<Select>, Reject> {
    let mut found: Vec<Select> = from_ref.into_iter().collect();
    found.extend(last(pairs, "key").map(|k| Select::Key(k.to_owned())));
    found.extend(last(pairs, "pointer").map(|p| Select::Pointer(p.to_owned())));
    if found.len() > 1 {
        return Err(Reject::invalid_ref(
            "give at most one of a REF json-key, key= and pointer=".into(),
        ));
    }
    Ok(found.pop())
}

/// The whole value as a JSON string, or the selected part of it.
fn select_value(text: &str, select: Option<&Select>) -> Result<Value, Reject> {
    let Some(select) = select else {
        return Ok(Value::String(text.to_owned()));
    };
    refs::select(text, select).map_err(|e| match e {
        SelectError::NotJson => Reject::new(StatusCode::BAD_REQUEST, "not_json", e.to_string()),
        SelectError::BadPointer => Reject::invalid_ref(e.to_string()),
        SelectError::Missing => {
            Reject::new(StatusCode::NOT_FOUND, "json_key_not_found", e.to_string())
        }
    })
}

/// `raw=true`: strings bare, anything else as compact JSON.
fn raw_body(v: &Value) -> Resp {
    match v {
        Value::String(s) => dto::text(StatusCode::OK, s),
        other => dto::text(StatusCode::OK, &other.to_string()),
    }
}

fn native_error(e: CacheError) -> Reject {
    match e {
        CacheError::Source(e) => {
            let status = match e.kind {
                ErrorKind::NotFound => StatusCode::NOT_FOUND,
                ErrorKind::AccessDenied => StatusCode::FORBIDDEN,
                ErrorKind::Invalid => StatusCode::BAD_REQUEST,
                ErrorKind::Throttled => StatusCode::SERVICE_UNAVAILABLE,
                ErrorKind::Transient if e.code == "TimeoutError" => StatusCode::GATEWAY_TIMEOUT,
                ErrorKind::Transient | ErrorKind::Credentials => StatusCode::BAD_GATEWAY,
            };
            Reject::new(
                status,
                e.kind.as_str(),
                format!("{}: {}", e.code, e.message),
            )
        }
        e @ CacheError::StaleLimit { .. } => Reject::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "stale_limit_exceeded",
            e.to_string(),
        ),
        e @ CacheError::Stopped => Reject::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            e.to_string(),
        ),
    }
}
