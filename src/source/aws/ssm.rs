//! Parameter Store calls: GetParameter, GetParameters (10 names per call) and
//! GetParametersByPath (paged until no NextToken; pages may be empty).

use std::sync::Arc;

use aws_sdk_ssm::types::Parameter;
use secrecy::SecretString;

use super::{Clients, classify, timestamp};
use crate::source::{
    FetchResult, Fetched, Key, PARAMETERS_PER_CALL, ParamKey, ParameterValue, PathKey, SourceError,
};

impl Clients {
    pub(super) async fn get_parameter(&self, key: ParamKey) -> FetchResult {
        let _slot = self.ssm_slots.acquire().await;
        let out = self
            .ssm
            .get_parameter()
            .name(key.selector_name())
            .with_decryption(key.decrypt)
            .send()
            .await
            .map_err(|e| classify(&e))?;
        let p = out
            .parameter()
            .ok_or_else(|| SourceError::not_found(&Key::Parameter(key.clone())))?;
        Ok(Fetched::Parameter(Arc::new(parameter_value(
            p,
            &key,
            &self.region,
        ))))
    }

    /// GetParameters for up to 10 unselected names with the same decryption flag. Names missing
    /// from both result lists come back as `None` and are fetched one by one.
    pub(super) async fn batch_parameters(&self, keys: &[ParamKey]) -> Vec<Option<FetchResult>> {
        let _slot = self.ssm_slots.acquire().await;
        let out = self
            .ssm
            .get_parameters()
            .set_names(Some(keys.iter().map(|k| k.name.clone()).collect()))
            .with_decryption(keys.first().is_some_and(|k| k.decrypt))
            .send()
            .await;
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                let err = classify(&e);
                return keys.iter().map(|_| Some(Err(err.clone()))).collect();
            }
        };
        keys.iter()
            .map(|k| {
                if let Some(p) = out.parameters().iter().find(|p| p.name() == Some(&k.name)) {
                    Some(Ok(Fetched::Parameter(Arc::new(parameter_value(
                        p,
                        k,
                        &self.region,
                    )))))
                } else if out.invalid_parameters().contains(&k.name) {
                    Some(Err(SourceError::not_found(&Key::Parameter(k.clone()))))
                } else {
                    None
                }
            })
            .collect()
    }

    /// GetParametersByPath until no NextToken; pages may be empty and still carry a token.
    pub(super) async fn walk_path(&self, key: PathKey) -> FetchResult {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let _slot = self.ssm_slots.acquire().await;
            let out = self
                .ssm
                .get_parameters_by_path()
                .path(&key.path)
                .recursive(key.recursive)
                .with_decryption(key.decrypt)
                .max_results(PARAMETERS_PER_CALL as i32)
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| classify(&e))?;
            for p in out.parameters() {
                let pk = ParamKey {
                    name: p.name().unwrap_or_default().to_owned(),
                    selector: None,
                    decrypt: key.decrypt,
                    via: key.via.clone(),
                };
                all.push(Arc::new(parameter_value(p, &pk, &self.region)));
            }
            token = out.next_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Fetched::Path(all.into()))
    }
}

pub(super) fn batchable_param(p: &ParamKey) -> bool {
    p.selector.is_none() && !p.name.starts_with("arn:") && !p.name.starts_with("/aws/reference/")
}

fn parameter_value(p: &Parameter, key: &ParamKey, region: &Option<Arc<str>>) -> ParameterValue {
    ParameterValue {
        arn: p.arn().unwrap_or_default().to_owned(),
        name: p.name().unwrap_or_default().to_owned(),
        kind: p.r#type().map_or("String", |t| t.as_str()).to_owned(),
        value: Arc::new(SecretString::from(p.value().unwrap_or_default())),
        version: p.version(),
        last_modified: p.last_modified_date().map(timestamp),
        data_type: p.data_type().map(str::to_owned),
        // moto omits Selector; fill it from the request as the real service does.
        selector: p
            .selector()
            .map(str::to_owned)
            .or_else(|| key.selector_suffix()),
        source_result: p.source_result().map(SecretString::from),
        region: region.clone(),
    }
}
