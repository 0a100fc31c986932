//! Drop-in compatibility layers: the PSLE environment variables (with their clamping) and the
//! WCP flat TOML keys, each translated into sidekey keys inside a named figment layer.

use std::collections::BTreeMap;
use std::path::Path;

use figment::value::Value;
use serde::Deserialize;

use super::{ConfigError, Layer};

/// Highest TTL the Lambda extension accepts; larger values are clamped with a warning.
const PSLE_MAX_TTL: u64 = 300;
const PSLE: &str = "Lambda extension environment variables";

/// Translates the PSLE variables present in `env`. Returns the layer and warnings to log.
pub(super) fn psle_layer(
    env: &BTreeMap<String, String>,
) -> Result<(Layer, Vec<String>), ConfigError> {
    let mut layer = Layer::new(PSLE);
    let mut warnings = Vec::new();
    let get = |name: &str| env.get(name).map(|v| v.trim());
    let bad = |var: &str, message: &str| ConfigError::Invalid {
        key: var.to_owned(),
        origin: "environment".to_owned(),
        message: message.to_owned(),
    };
    let num = |var: &str, v: &str| {
        v.parse::<u64>()
            .map_err(|_| bad(var, "expected a whole number"))
    };

    if let Some(v) = get("PARAMETERS_SECRETS_EXTENSION_HTTP_PORT") {
        let var = "PARAMETERS_SECRETS_EXTENSION_HTTP_PORT";
        let port = num(var, v)?;
        if !(1..=65535).contains(&port) {
            return Err(bad(var, "must be in the range 1 to 65535"));
        }
        layer.set("listen.tcp", format!("127.0.0.1:{port}"));
    }
    if let Some(v) = get("PARAMETERS_SECRETS_EXTENSION_CACHE_SIZE") {
        let var = "PARAMETERS_SECRETS_EXTENSION_CACHE_SIZE";
        let size = num(var, v)?;
        if size > 1000 {
            return Err(bad(var, "must be in the range 0 to 1000"));
        }
        layer.set("cache.max_entries", size);
    }
    if let Some(v) = get("PARAMETERS_SECRETS_EXTENSION_CACHE_ENABLED") {
        let var = "PARAMETERS_SECRETS_EXTENSION_CACHE_ENABLED";
        match v.to_ascii_lowercase().as_str() {
            "true" => {}
            "false" => {
                layer.set("cache.max_entries", 0u64);
                layer.set("cache.ttl", "0s");
            }
            _ => return Err(bad(var, "expected TRUE or FALSE")),
        }
    }
    if let Some(v) = get("PARAMETERS_SECRETS_EXTENSION_MAX_CONNECTIONS") {
        let var = "PARAMETERS_SECRETS_EXTENSION_MAX_CONNECTIONS";
        let n = num(var, v)?;
        if n == 0 {
            return Err(bad(var, "must be at least 1"));
        }
        layer.set("aws.max_connections", n);
    }
    if let Some(v) = get("PARAMETERS_SECRETS_EXTENSION_LOG_LEVEL") {
        let level = v.to_ascii_lowercase();
        if !matches!(level.as_str(), "debug" | "info" | "warn" | "error" | "none") {
            return Err(bad(
                "PARAMETERS_SECRETS_EXTENSION_LOG_LEVEL",
                "expected DEBUG, INFO, WARN, ERROR or NONE",
            ));
        }
        layer.set("log.level", level);
    }
    for (var, key, service) in [
        ("SECRETS_MANAGER_TTL", "cache.secrets_ttl", "Secrets Manger"),
        (
            "SSM_PARAMETER_STORE_TTL",
            "cache.parameters_ttl",
            "SSM Parameter Store",
        ),
    ] {
        if let Some(v) = get(var) {
            let mut ttl = num(var, v)?;
            if ttl > PSLE_MAX_TTL {
                // The layer's own message, typo included, so log searches keep working.
                warnings.push(format!(
                    "{var} exceeds max limit. Setting {service} TTL to 5m0s"
                ));
                ttl = PSLE_MAX_TTL;
            }
            layer.set(key, format!("{ttl}s"));
        }
    }
    for (var, key) in [
        (
            "SECRETS_MANAGER_TIMEOUT_MILLIS",
            "aws.secrets_manager_timeout",
        ),
        ("SSM_PARAMETER_STORE_TIMEOUT_MILLIS", "aws.ssm_timeout"),
    ] {
        if let Some(v) = get(var) {
            layer.set(key, format!("{}ms", num(var, v)?));
        }
    }
    for name in env
        .keys()
        .filter(|k| k.starts_with("PARAMETERS_AND_SECRETS_EXTENSION_"))
    {
        warnings.push(format!(
            "{name} is ignored: the Lambda extension reads PARAMETERS_SECRETS_EXTENSION_* (aws/aws-cdk#26011)"
        ));
    }
    Ok((layer, warnings))
}

/// The config file as a layer: sidekey keys pass through, WCP flat keys are translated.
pub(super) fn file_layer(path: &Path, text: &str) -> Result<Layer, ConfigError> {
    let origin = format!("config file {}", path.display());
    let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Invalid {
        key: "(syntax)".to_owned(),
        origin: origin.clone(),
        message: e.to_string(),
    })?;
    let mut layer = Layer::new(origin.clone());
    for (key, value) in table {
        let bad = |message: &str| ConfigError::Invalid {
            key: key.clone(),
            origin: origin.clone(),
            message: message.to_owned(),
        };
        if wcp_key(&mut layer, &key, &value).map_err(bad)? {
            continue;
        }
        let v = <Value as Deserialize>::deserialize(value).map_err(|e| bad(&e.to_string()))?;
        layer.set_path(std::slice::from_ref(&key), v);
    }
    Ok(layer)
}

/// Translates one WCP flat key; `Ok(false)` when `key` is not one of them.
fn wcp_key(layer: &mut Layer, key: &str, v: &toml::Value) -> Result<bool, &'static str> {
    match key {
        "log_level" => {
            let level = string(v)?.to_ascii_lowercase();
            if !matches!(level.as_str(), "debug" | "info" | "warn" | "error" | "none") {
                return Err(
                    "The log level specified in the configuration isn't valid: expected DEBUG, INFO, WARN, ERROR or NONE.",
                );
            }
            layer.set("log.level", level);
        }
        "log_to_file" => {
            if boolean(v)? {
                layer.set("log.file", "logs/secrets_manager_agent.log");
            }
        }
        "http_port" => {
            let port = int(v)?;
            if port != 0 && !(1024..=65535).contains(&port) {
                return Err("The HTTP port must be in the range 1024 to 65535.");
            }
            layer.set("listen.tcp", format!("127.0.0.1:{port}"));
        }
        "region" => layer.set("aws.region", string(v)?.to_owned()),
        "ttl_seconds" => {
            let ttl = int(v)?;
            if ttl > 3600 {
                return Err("The TTL in seconds must be in the range 0 to 3600.");
            }
            layer.set("cache.ttl", format!("{ttl}s"));
        }
        "cache_size" => {
            let n = int(v)?;
            if !(1..=1000).contains(&n) {
                return Err("The cache size must be in the range 1 to 1000.");
            }
            layer.set("cache.max_entries", n);
        }
        "max_conn" => {
            let n = int(v)?;
            if !(1..=1000).contains(&n) {
                return Err("The maximum number of connections must be in the range 1 to 1000.");
            }
            layer.set("listen.max_connections", n);
        }
        "path_prefix" => {
            let p = string(v)?;
            if !p.starts_with('/') {
                return Err("The path prefix must start with /.");
            }
            layer.set("api.path_prefix", p.to_owned());
        }
        "ssrf_headers" => layer.set("auth.headers", strings(v)?),
        "ssrf_env_variables" => layer.set("auth.tokens", strings(v)?),
        "ignore_transient_errors" => layer.set("cache.serve_stale", boolean(v)?),
        "validate_credentials" => layer.set("aws.validate_credentials", boolean(v)?),
        _ => return Ok(false),
    }
    Ok(true)
}

/// WCP accepts numbers quoted or unquoted.
fn int(v: &toml::Value) -> Result<u64, &'static str> {
    match v {
        toml::Value::Integer(i) => u64::try_from(*i).map_err(|_| "expected a non-negative number"),
        toml::Value::String(s) => s.trim().parse().map_err(|_| "expected a number"),
        _ => Err("expected a number"),
    }
}

fn boolean(v: &toml::Value) -> Result<bool, &'static str> {
    match v {
        toml::Value::Boolean(b) => Ok(*b),
        toml::Value::String(s) => s
            .trim()
            .to_ascii_lowercase()
            .parse()
            .map_err(|_| "expected true or false"),
        _ => Err("expected true or false"),
    }
}

fn string(v: &toml::Value) -> Result<&str, &'static str> {
    v.as_str().ok_or("expected a string")
}

fn strings(v: &toml::Value) -> Result<Vec<String>, &'static str> {
    let list = v.as_array().ok_or("expected a list of strings")?;
    let out: Vec<String> = list
        .iter()
        .map(|x| {
            x.as_str()
                .map(str::to_owned)
                .ok_or("expected a list of strings")
        })
        .collect::<Result<_, _>>()?;
    if out.is_empty() {
        return Err("must not be empty");
    }
    Ok(out)
}
