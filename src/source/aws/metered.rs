//! An SDK interceptor that counts every AWS call attempt (retries included: each one costs API
//! quota) by service, operation and outcome, for `/metrics` and the API-budget tests.

use aws_sdk_secretsmanager::config::interceptors::FinalizerInterceptorContextRef;
use aws_sdk_secretsmanager::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;

use super::classify_code;
use crate::metrics::{CallOutcome, METRICS};

/// Counts attempts into [`METRICS`].
#[derive(Debug)]
pub(super) struct Metered;

impl Intercept for Metered {
    fn name(&self) -> &'static str {
        "sidekey-metered"
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(meta) = cfg.load::<Metadata>() else {
            return Ok(());
        };
        let outcome = match context.response() {
            None => CallOutcome::NoResponse,
            Some(r) if r.status().is_success() => CallOutcome::Ok,
            Some(r) => {
                let status = r.status().as_u16();
                let code = r.body().bytes().and_then(error_code).unwrap_or_default();
                CallOutcome::Error(classify_code(&code, status))
            }
        };
        METRICS.aws_call(meta.name(), outcome);
        Ok(())
    }
}

/// The error code of an AWS JSON error body (`__type`, possibly `namespace#Code`).
fn error_code(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(rename = "__type")]
        kind: Option<String>,
    }
    let kind = serde_json::from_slice::<Body>(body).ok()?.kind?;
    Some(kind.rsplit('#').next().unwrap_or_default().to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_codes_come_from_the_json_body() {
        let code = |b: &str| super::error_code(b.as_bytes());
        assert_eq!(
            code(r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#).as_deref(),
            Some("ThrottlingException")
        );
        assert_eq!(
            code(r#"{"__type":"com.amazonaws.ssm#ParameterNotFound"}"#).as_deref(),
            Some("ParameterNotFound")
        );
        assert_eq!(code("<xml/>"), None);
    }
}
