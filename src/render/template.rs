//! Template rendering against one consistent store snapshot. Templates never trigger a fetch:
//! a reference to something not cached yet renders as a placeholder and is reported in
//! `missing`, so the caller can add it to the refresh set and render again.
//!
//! Two syntaxes: minijinja (`{{ secret("prod/db:password") }}`, strict undefined, bounded by
//! fuel) and CloudFormation dynamic references (`{{resolve:secretsmanager:…}}`,
//! `{{resolve:ssm:…}}`, `{{resolve:ssm-secure:…}}`), so existing files render unchanged.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use minijinja::value::{Kwargs, Serde, Value};
use minijinja::{Environment, Error, ErrorKind, UndefinedBehavior};
use secrecy::ExposeSecret;

use crate::cache::store::Map;
use crate::refs::{self, RefKind, Select};
use crate::source::{Fetched, Key, PathKey, Payload};

/// Instruction budget for one render: stops runaway loops.
const FUEL: u64 = 200_000;

/// Template language.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Syntax {
    /// minijinja.
    Jinja,
    /// Only `{{resolve:…}}` references are replaced; everything else is copied.
    CloudFormation,
}

/// A finished render.
pub struct Rendered {
    /// The output (holds secret values: written to the destination, never logged).
    pub output: String,
    /// Every key the template referenced.
    pub keys: Vec<Key>,
    /// Referenced keys not in the snapshot; when non-empty, `output` is incomplete.
    pub missing: Vec<Key>,
}

/// Why a template could not be rendered. Messages carry names and lines, never values.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// Syntax error, undefined variable, failed function, fuel exhausted…
    #[error("template {name}: {message}")]
    Template {
        /// Template name (its file).
        name: String,
        /// Engine message with line number.
        message: String,
    },
    /// Reading the template or writing the output failed.
    #[error("{0}")]
    Io(String),
}

/// What functions record while a template renders.
#[derive(Default)]
struct Seen {
    keys: Vec<Key>,
    missing: Vec<Key>,
}

/// Renders `source` against `snapshot`. `env` backs the `env(name)` function.
pub fn render(
    name: &str,
    source: &str,
    syntax: Syntax,
    snapshot: Arc<Map>,
    env: &BTreeMap<String, String>,
) -> Result<Rendered, RenderError> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let output = match syntax {
        Syntax::Jinja => jinja(name, source, &snapshot, env, &seen)?,
        Syntax::CloudFormation => cloudformation(name, source, &snapshot, &seen)?,
    };
    let seen = std::mem::take(
        &mut *seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    Ok(Rendered {
        output,
        keys: seen.keys,
        missing: seen.missing,
    })
}

/// Checks a template's syntax without rendering it (config validation): the first error, with
/// its line.
pub fn check(name: &str, source: &str, syntax: Syntax) -> Result<(), String> {
    match syntax {
        Syntax::Jinja => Environment::new()
            .template_from_named_str(name, source)
            .map(drop)
            .map_err(|e| describe(&e)),
        Syntax::CloudFormation => {
            let mut rest = source;
            while let Some(start) = rest.find("{{resolve:") {
                let after = &rest[start..];
                let line = line_of(source, after);
                let end = after
                    .find("}}")
                    .ok_or_else(|| format!("line {line}: unclosed {{{{resolve:"))?
                    + 2;
                refs::parse(&after[..end], RefKind::Any, true)
                    .map_err(|e| format!("line {line}: {e}"))?;
                rest = &after[end..];
            }
            Ok(())
        }
    }
}

fn jinja(
    name: &str,
    source: &str,
    snapshot: &Arc<Map>,
    env: &BTreeMap<String, String>,
    seen: &Arc<Mutex<Seen>>,
) -> Result<String, RenderError> {
    let mut jenv = Environment::new();
    jenv.set_undefined_behavior(UndefinedBehavior::Strict);
    jenv.set_fuel(Some(FUEL));
    // Config files end in a newline; keep it.
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build()
    {
        jenv.set_syntax(syntax);
    }
    let lookup = |kind: RefKind| {
        let (snapshot, seen) = (snapshot.clone(), seen.clone());
        move |reference: String| -> Result<Value, Error> {
            let r = refs::parse(&reference, kind, true)
                .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
            value_of(&snapshot, &seen, &r.key, r.select.as_ref())
        }
    };
    jenv.add_function("secret", lookup(RefKind::Secret));
    jenv.add_function("parameter", lookup(RefKind::Parameter));
    let (snap, rec) = (snapshot.clone(), seen.clone());
    jenv.add_function(
        "parameters",
        move |path: String, kwargs: Kwargs| -> Result<Value, Error> {
            let recursive: Option<bool> = kwargs.get("recursive")?;
            kwargs.assert_all_used()?;
            let key = Key::Path(PathKey::new(&path, recursive.unwrap_or(false), true));
            value_of(&snap, &rec, &key, None)
        },
    );
    let env = env.clone();
    jenv.add_function("env", move |var: String| -> Result<Value, Error> {
        env.get(&var)
            .map(|v| Value::from(v.clone()))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::UndefinedError,
                    format!("environment variable {var} is not set"),
                )
            })
    });
    jenv.add_filter("json_key", |value: String, key: String| {
        select(&value, &Select::Key(key))
    });
    jenv.add_filter("json_pointer", |value: String, ptr: String| {
        select(&value, &Select::Pointer(ptr))
    });
    jenv.render_named_str(name, source, ())
        .map_err(|e| RenderError::Template {
            name: name.to_owned(),
            message: describe(&e),
        })
}

/// Engine errors without their debug context (which could show variable values).
fn describe(e: &Error) -> String {
    match e.line() {
        Some(line) => format!(
            "line {line}: {}",
            e.detail().unwrap_or(&e.kind().to_string())
        ),
        None => e
            .detail()
            .map_or_else(|| e.kind().to_string(), str::to_owned),
    }
}

fn select(text: &str, sel: &Select) -> Result<Value, Error> {
    refs::select(text, sel)
        .map(|v| Value::from(Serde(&v)))
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))
}

/// The value for `key` from the snapshot, recorded as referenced (and missing if absent).
fn value_of(
    snapshot: &Map,
    seen: &Mutex<Seen>,
    key: &Key,
    sel: Option<&Select>,
) -> Result<Value, Error> {
    // Templates always read decrypted parameters (`{{resolve:ssm:…}}` included).
    let decrypted;
    let key = match key {
        Key::Parameter(p) if !p.decrypt => {
            decrypted = Key::Parameter(crate::source::ParamKey {
                decrypt: true,
                ..p.clone()
            });
            &decrypted
        }
        k => k,
    };
    let mut s = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !s.keys.contains(key) {
        s.keys.push(key.clone());
    }
    let Some(entry) = snapshot.get(key) else {
        if !s.missing.contains(key) {
            s.missing.push(key.clone());
        }
        return Ok(Value::from(""));
    };
    drop(s);
    match (&entry.value, sel) {
        (Fetched::Path(ps), _) => Ok(Value::from_pairs(ps.iter().map(|p| {
            (
                p.name.clone(),
                Value::from(p.value.expose_secret().to_owned()),
            )
        }))),
        (Fetched::Secret(sv), _) if matches!(*sv.payload, Payload::Binary(_)) && sel.is_some() => {
            Err(Error::new(
                ErrorKind::InvalidOperation,
                "cannot select a key from a binary secret",
            ))
        }
        (v, sel) => {
            let text = v.expose_text().unwrap_or_default();
            match sel {
                Some(sel) => select(&text, sel),
                None => Ok(Value::from(text)),
            }
        }
    }
}

fn cloudformation(
    name: &str,
    source: &str,
    snapshot: &Map,
    seen: &Mutex<Seen>,
) -> Result<String, RenderError> {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{{resolve:") {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        let end = after.find("}}").ok_or_else(|| RenderError::Template {
            name: name.to_owned(),
            message: format!("line {}: unclosed {{{{resolve:", line_of(source, after)),
        })? + 2;
        let r =
            refs::parse(&after[..end], RefKind::Any, true).map_err(|e| RenderError::Template {
                name: name.to_owned(),
                message: format!("line {}: {e}", line_of(source, after)),
            })?;
        let value = value_of(snapshot, seen, &r.key, r.select.as_ref()).map_err(|e| {
            RenderError::Template {
                name: name.to_owned(),
                message: format!("line {}: {}", line_of(source, after), describe(&e)),
            }
        })?;
        match value.as_str() {
            Some(s) => out.push_str(s),
            None => out.push_str(&value.to_string()),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    Ok(out)
}

/// 1-based line of `tail` (a suffix of `source`).
fn line_of(source: &str, tail: &str) -> usize {
    source[..source.len() - tail.len()].matches('\n').count() + 1
}

#[cfg(test)]
mod tests;
