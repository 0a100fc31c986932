//! Secrets Manager calls: GetSecretValue, BatchGetSecretValue (20 ids per call, paged, per-item
//! errors) and DescribeSecret revalidation.

use std::collections::HashMap;
use std::sync::Arc;

use aws_sdk_secretsmanager::primitives::{Blob, DateTime};
use secrecy::{SecretBox, SecretString};

use super::{Clients, classify, classify_code, timestamp};
use crate::source::{
    ErrorKind, FetchResult, Fetched, Payload, Revalidation, SecretKey, SecretValue, SourceError,
};

impl Clients {
    pub(super) async fn get_secret(&self, key: SecretKey) -> FetchResult {
        let _slot = self.sm_slots.acquire().await;
        let out = self
            .sm
            .get_secret_value()
            .secret_id(&key.id)
            .set_version_id(key.version_id.clone())
            .set_version_stage(key.version_stage.clone())
            .send()
            .await
            .map_err(|e| classify(&e))?;
        secret_value(SecretParts {
            arn: out.arn(),
            name: out.name(),
            version_id: out.version_id(),
            stages: out.version_stages(),
            created: out.created_date(),
            string: out.secret_string(),
            binary: out.secret_binary(),
            region: self.region.clone(),
        })
    }

    /// BatchGetSecretValue for current versions. Ids the batch cannot attribute to a result
    /// (e.g. partial ARNs) come back as `None` and are fetched one by one.
    pub(super) async fn batch_secrets(&self, ids: &[&str]) -> Vec<Option<FetchResult>> {
        let mut found: HashMap<String, FetchResult> = HashMap::new();
        let mut token = None;
        loop {
            let _slot = self.sm_slots.acquire().await;
            let out = self
                .sm
                .batch_get_secret_value()
                .set_secret_id_list(Some(ids.iter().map(|s| (*s).to_owned()).collect()))
                .set_next_token(token.take())
                .send()
                .await;
            let out = match out {
                Ok(out) => out,
                Err(e) => {
                    let err = classify(&e);
                    // A batch can fail where single reads work (no BatchGetSecretValue
                    // permission; moto fails the whole call for one bad secret): fall back.
                    let fallback = !err.kind.retryable();
                    return ids
                        .iter()
                        .map(|_| (!fallback).then(|| Err(err.clone())))
                        .collect();
                }
            };
            for e in out.secret_values() {
                let value = secret_value(SecretParts {
                    arn: e.arn(),
                    name: e.name(),
                    version_id: e.version_id(),
                    stages: e.version_stages(),
                    created: e.created_date(),
                    string: e.secret_string(),
                    binary: e.secret_binary(),
                    region: self.region.clone(),
                });
                for id in [e.name(), e.arn()].into_iter().flatten() {
                    found.insert(id.to_owned(), value.clone());
                }
            }
            for e in out.errors() {
                let code = e.error_code().unwrap_or("InternalFailure");
                let err =
                    SourceError::new(classify_code(code, 400), code, e.message().unwrap_or(""))
                        .with_status(400);
                if let Some(id) = e.secret_id() {
                    found.insert(id.to_owned(), Err(err));
                }
            }
            token = out.next_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        ids.iter().map(|id| found.remove(*id)).collect()
    }

    pub(super) async fn describe(
        &self,
        key: &SecretKey,
        version_id: &str,
    ) -> Result<Revalidation, SourceError> {
        let _slot = self.sm_slots.acquire().await;
        let out = self
            .sm
            .describe_secret()
            .secret_id(&key.id)
            .send()
            .await
            .map_err(|e| classify(&e))?;
        let next_rotation = out
            .next_rotation_date()
            .filter(|_| out.rotation_enabled() == Some(true))
            .and_then(|d| std::time::SystemTime::try_from(*d).ok());
        let Some(map) = out.version_ids_to_stages() else {
            return Ok(Revalidation {
                unchanged: false,
                next_rotation,
            });
        };
        let unchanged = match (&key.version_id, &key.version_stage) {
            (Some(id), stage) => {
                id == version_id
                    && map
                        .get(id)
                        .is_some_and(|stages| stage.as_ref().is_none_or(|s| stages.contains(s)))
            }
            (None, stage) => {
                let stage = stage.as_deref().unwrap_or("AWSCURRENT");
                map.get(version_id)
                    .is_some_and(|stages| stages.iter().any(|s| s == stage))
            }
        };
        Ok(Revalidation {
            unchanged,
            next_rotation,
        })
    }
}

pub(super) struct SecretParts<'a> {
    arn: Option<&'a str>,
    name: Option<&'a str>,
    version_id: Option<&'a str>,
    stages: &'a [String],
    created: Option<&'a DateTime>,
    string: Option<&'a str>,
    binary: Option<&'a Blob>,
    region: Option<Arc<str>>,
}

pub(super) fn secret_value(p: SecretParts<'_>) -> FetchResult {
    let payload = match (p.string, p.binary) {
        (Some(s), _) => Payload::Text(SecretString::from(s)),
        (None, Some(b)) => Payload::Binary(SecretBox::new(b.as_ref().into())),
        (None, None) => {
            return Err(SourceError::new(
                ErrorKind::Transient,
                "ResponseError",
                "secret value carries neither SecretString nor SecretBinary",
            ));
        }
    };
    Ok(Fetched::Secret(Arc::new(SecretValue {
        arn: p.arn.unwrap_or_default().to_owned(),
        name: p.name.unwrap_or_default().to_owned(),
        version_id: p.version_id.unwrap_or_default().to_owned(),
        version_stages: p.stages.to_vec(),
        created_date: p.created.map(timestamp),
        payload: Arc::new(payload),
        region: p.region,
    })))
}
