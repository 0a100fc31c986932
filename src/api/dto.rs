//! Wire shapes. These are the only `Serialize` types that can carry a secret value; values are
//! exposed from their `SecretString` only here, at the moment a response body is built.

use base64::prelude::{BASE64_STANDARD, Engine as _};
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use secrecy::ExposeSecret;
use serde::Serialize;

use crate::cache::store::Rendered;
use crate::source::{ParameterValue, Payload, SecretValue};

/// A response body: a full buffer, or a stream (the change stream's server-sent events).
pub type Body = BoxBody<Bytes, std::convert::Infallible>;

/// The response type of every route.
pub type Resp = Response<Body>;

/// An empty JSON object, PSLE's `ResultMetadata`.
#[derive(Serialize)]
pub struct Empty {}

/// PSLE / GetSecretValue shape.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SecretDto<'a> {
    #[serde(rename = "ARN")]
    arn: &'a str,
    created_date: Option<String>,
    name: &'a str,
    secret_binary: Option<String>,
    secret_string: Option<&'a str>,
    version_id: &'a str,
    version_stages: &'a [String],
    result_metadata: Empty,
}

/// PSLE / GetParameter shape.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ParameterEnvelope<'a> {
    parameter: ParameterDto<'a>,
    result_metadata: Empty,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ParameterDto<'a> {
    #[serde(rename = "ARN")]
    arn: &'a str,
    data_type: Option<&'a str>,
    last_modified_date: Option<String>,
    name: &'a str,
    selector: Option<&'a str>,
    source_result: Option<&'a str>,
    #[serde(rename = "Type")]
    kind: &'a str,
    value: &'a str,
    version: i64,
}

/// AWS-style error body used on compatible routes.
#[derive(Serialize)]
pub struct AwsError<'a> {
    #[serde(rename = "__type")]
    kind: &'a str,
    message: &'a str,
}

/// sidekey's own error body: a stable `code` and a human message.
#[derive(Serialize)]
pub struct NativeError<'a> {
    /// Stable machine-readable code.
    pub code: &'a str,
    /// Human-readable explanation (never a value).
    pub message: &'a str,
}

/// Native secret body.
#[derive(Serialize)]
pub struct NativeSecret<'a> {
    /// Secret name.
    pub name: &'a str,
    /// Full ARN.
    pub arn: &'a str,
    /// Version id.
    pub version_id: &'a str,
    /// Stages of this version.
    pub version_stages: &'a [String],
    /// Creation time.
    pub created_date: Option<String>,
    /// The value, or the selected part of it.
    pub value: serde_json::Value,
    /// `base64` for binary secrets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoding: Option<&'static str>,
}

/// Native parameter body.
#[derive(Serialize)]
pub struct NativeParameter<'a> {
    /// Name.
    pub name: &'a str,
    /// Full ARN.
    pub arn: &'a str,
    /// `String`, `StringList`, `SecureString`.
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// Version number.
    pub version: i64,
    /// Selector used.
    pub selector: Option<&'a str>,
    /// Last modification time.
    pub last_modified_date: Option<String>,
    /// The value, or the selected part of it.
    pub value: serde_json::Value,
}

impl<'a> SecretDto<'a> {
    /// The PSLE shape of a secret version.
    pub fn new(s: &'a SecretValue) -> Self {
        let (string, binary) = match &*s.payload {
            Payload::Text(t) => (Some(t.expose_secret()), None),
            Payload::Binary(b) => (None, Some(BASE64_STANDARD.encode(b.expose_secret()))),
        };
        Self {
            arn: &s.arn,
            created_date: s.created_date.map(|t| t.to_string()),
            name: &s.name,
            secret_binary: binary,
            secret_string: string,
            version_id: &s.version_id,
            version_stages: &s.version_stages,
            result_metadata: Empty {},
        }
    }
}

impl<'a> ParameterEnvelope<'a> {
    /// The PSLE shape of a parameter.
    pub fn new(p: &'a ParameterValue) -> Self {
        Self {
            parameter: ParameterDto {
                arn: &p.arn,
                data_type: p.data_type.as_deref(),
                last_modified_date: p.last_modified.map(|t| t.to_string()),
                name: &p.name,
                selector: p.selector.as_deref(),
                source_result: p.source_result.as_ref().map(|s| s.expose_secret()),
                kind: &p.kind,
                value: p.value.expose_secret(),
                version: p.version,
            },
            result_metadata: Empty {},
        }
    }
}

impl<'a> AwsError<'a> {
    /// An AWS-style error body.
    pub fn new(kind: &'a str, message: &'a str) -> Self {
        Self { kind, message }
    }
}

/// A JSON response.
pub fn json<T: Serialize>(status: StatusCode, body: &T) -> Resp {
    match serde_json::to_vec(body) {
        Ok(bytes) => build(status, "application/json", wiped(bytes)),
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "serialization failed"),
    }
}

/// A 200 JSON response whose body is made once per cache entry: the first read serialises
/// `body()` into `cell`, later reads of the same entry share those bytes.
pub fn json_once<T: Serialize>(cell: &Rendered, body: impl FnOnce() -> T) -> Resp {
    let bytes = match cell.get() {
        Some(bytes) => bytes,
        None => match serde_json::to_vec(&body()) {
            Ok(bytes) => cell.set(wiped(bytes)),
            Err(_) => return text(StatusCode::INTERNAL_SERVER_ERROR, "serialization failed"),
        },
    };
    build(StatusCode::OK, "application/json", bytes)
}

/// A plain-text response.
pub fn text(status: StatusCode, body: &str) -> Resp {
    build(
        status,
        "text/plain; charset=utf-8",
        wiped(body.as_bytes().to_vec()),
    )
}

/// Response bytes that are zeroed when the last reference to them is dropped: bodies carry
/// secret values, and freed memory is not ours to leave them in.
pub fn wiped(bytes: Vec<u8>) -> Bytes {
    Bytes::from_owner(Wiped(bytes))
}

struct Wiped(Vec<u8>);

impl AsRef<[u8]> for Wiped {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Wiped {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

/// A response with the given content type. Secrets must never be cached by intermediaries.
pub fn build(status: StatusCode, content_type: &'static str, body: Bytes) -> Resp {
    let mut resp = Response::new(Full::new(body).boxed());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
