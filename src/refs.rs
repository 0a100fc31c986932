//! REF syntaxes users already write, parsed into a [`Key`] plus an optional JSON selection:
//! bare names with the ECS `:json-key:version-stage:version-id` suffix, ARNs (`aws`, `aws-cn`,
//! `aws-us-gov`), CloudFormation `{{resolve:…}}` references and `sm://` / `ssm://` schemes.

use crate::source::{Key, ParamKey, ParamSelector, SecretKey};

/// Longest REF accepted; real ARNs and names are far shorter.
const MAX_REF_LEN: usize = 2048;

/// Which backend a bare name refers to; the route or context decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefKind {
    /// Bare names are secrets.
    Secret,
    /// Bare names are parameters.
    Parameter,
    /// Bare names are ambiguous; the REF must say (ARN, `{{resolve:…}}`, `sm://`, `ssm://`).
    Any,
    /// Bare names starting with `/` are parameters, others secrets (for lists of mixed REFs).
    Infer,
}

/// A parsed reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ref {
    /// What to fetch.
    pub key: Key,
    /// Which part of a JSON value to return, if any.
    pub select: Option<Select>,
}

/// A part of a JSON value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Select {
    /// A top-level key (ECS / CloudFormation `json-key`).
    Key(String),
    /// An RFC 6901 JSON pointer.
    Pointer(String),
}

/// Why a REF could not be parsed. Messages quote only the REF, which is a name, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    /// Empty input.
    #[error("reference is empty")]
    Empty,
    /// Over [`MAX_REF_LEN`].
    #[error("reference is longer than {MAX_REF_LEN} bytes")]
    TooLong,
    /// Whitespace or control characters.
    #[error("reference contains whitespace or control characters")]
    BadChar,
    /// Structure does not match any accepted form.
    #[error("malformed reference {0:?}: {1}")]
    Malformed(String, &'static str),
    /// A bare name where the kind cannot be inferred.
    #[error("ambiguous reference {0:?}: use an ARN, sm://NAME or ssm://NAME")]
    Ambiguous(String),
}

/// Why a JSON selection failed. Messages never include the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// The value is not a JSON document.
    #[error("value is not a JSON document")]
    NotJson,
    /// A pointer that is neither empty nor starts with `/`.
    #[error("pointer must be empty or start with /")]
    BadPointer,
    /// The key or pointer matches nothing.
    #[error("the selected JSON key does not exist")]
    Missing,
}

/// Selects a key (ECS `json-key`) or RFC 6901 pointer from a JSON text value.
pub fn select(text: &str, select: &Select) -> Result<serde_json::Value, SelectError> {
    let doc: serde_json::Value = serde_json::from_str(text).map_err(|_| SelectError::NotJson)?;
    let found = match select {
        Select::Key(k) => doc.get(k),
        Select::Pointer(p) if p.is_empty() || p.starts_with('/') => doc.pointer(p),
        Select::Pointer(_) => return Err(SelectError::BadPointer),
    };
    found.cloned().ok_or(SelectError::Missing)
}

/// Whether `arn` names an IAM role: `arn:PARTITION:iam::ACCOUNT:role/[PATH/]NAME`.
pub fn is_role_arn(arn: &str) -> bool {
    let mut f = arn.splitn(6, ':');
    let (Some("arn"), Some(partition), Some("iam"), Some(""), Some(account), Some(res)) =
        (f.next(), f.next(), f.next(), f.next(), f.next(), f.next())
    else {
        return false;
    };
    matches!(partition, "aws" | "aws-cn" | "aws-us-gov")
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && res.strip_prefix("role/").is_some_and(|n| {
            !n.is_empty()
                && n.len() <= 512
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-/".contains(&b))
        })
}

/// Checks a Parameter Store path (`GetParametersByPath`): `/`-rooted, no whitespace or control
/// characters, no `:` (selectors), and no `.` or `..` segment, which would read like a file path
/// that escapes its hierarchy.
pub fn check_path(path: &str) -> Result<(), RefError> {
    if path.is_empty() {
        return Err(RefError::Empty);
    }
    if path.len() > MAX_REF_LEN {
        return Err(RefError::TooLong);
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(RefError::BadChar);
    }
    let bad = |why| Err(RefError::Malformed(path.to_owned(), why));
    if !path.starts_with('/') {
        return bad("a path starts with /");
    }
    if path.contains(':') {
        return bad("a path takes no version or label");
    }
    if path.split('/').any(|s| s == "." || s == "..") {
        return bad("a path has no . or .. segments");
    }
    Ok(())
}

/// Parses `input` as a REF of `kind`. `decrypt` is the default `WithDecryption` for parameters.
pub fn parse(input: &str, kind: RefKind, decrypt: bool) -> Result<Ref, RefError> {
    if input.is_empty() {
        return Err(RefError::Empty);
    }
    if input.len() > MAX_REF_LEN {
        return Err(RefError::TooLong);
    }
    if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(RefError::BadChar);
    }
    let bad = |why| RefError::Malformed(input.to_owned(), why);
    if let Some(inner) = input.strip_prefix("{{resolve:") {
        let inner = inner
            .strip_suffix("}}")
            .ok_or_else(|| bad("missing closing }}"))?;
        return parse_resolve(inner).ok_or_else(|| bad("not a {{resolve:service:…}} reference"));
    }
    if input.starts_with("arn:") {
        return parse_arn(input, decrypt).ok_or_else(|| bad("not a secretsmanager or ssm ARN"));
    }
    if let Some(rest) = input.strip_prefix("sm://") {
        return secret_ref(rest).ok_or_else(|| bad("bad secret reference"));
    }
    if let Some(rest) = input.strip_prefix("ssm://") {
        return param_ref(rest, decrypt).ok_or_else(|| bad("bad parameter reference"));
    }
    match kind {
        RefKind::Secret => secret_ref(input).ok_or_else(|| bad("bad secret reference")),
        RefKind::Parameter => {
            param_ref(input, decrypt).ok_or_else(|| bad("bad parameter reference"))
        }
        RefKind::Any => Err(RefError::Ambiguous(input.to_owned())),
        RefKind::Infer if input.starts_with('/') => {
            param_ref(input, decrypt).ok_or_else(|| bad("bad parameter reference"))
        }
        RefKind::Infer => secret_ref(input).ok_or_else(|| bad("bad secret reference")),
    }
}

/// `id[:json-key[:version-stage[:version-id]]]`, where `id` is a name or a 7-segment ARN.
fn secret_ref(input: &str) -> Option<Ref> {
    let (id, suffix) = split_id(input, 7)?;
    secret_with_suffix(id, suffix)
}

fn secret_with_suffix(id: &str, suffix: Option<&str>) -> Option<Ref> {
    let mut fields = suffix
        .map(|s| s.split(':').collect::<Vec<_>>())
        .unwrap_or_default();
    if fields.len() > 3 {
        return None;
    }
    fields.resize(3, "");
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    Some(Ref {
        key: Key::Secret(SecretKey {
            id: id.to_owned(),
            version_stage: opt(fields[1]),
            version_id: opt(fields[2]),
            via: Default::default(),
        }),
        select: opt(fields[0]).map(Select::Key),
    })
}

/// `name[:version|:label]`, where `name` is a name or a 6-segment ARN.
fn param_ref(input: &str, decrypt: bool) -> Option<Ref> {
    let (name, suffix) = split_id(input, 6)?;
    let selector = match suffix {
        None => None,
        Some(s) if s.is_empty() || s.contains(':') => return None,
        Some(s) => Some(match s.parse::<u64>() {
            Ok(v) => ParamSelector::Version(v),
            Err(_) => ParamSelector::Label(s.to_owned()),
        }),
    };
    Some(Ref {
        key: Key::Parameter(ParamKey {
            name: name.to_owned(),
            selector,
            decrypt,
            via: Default::default(),
        }),
        select: None,
    })
}

/// Splits an id (bare name, or an ARN of `arn_segments` colon-separated segments) from the
/// optional suffix after the next colon.
fn split_id(input: &str, arn_segments: usize) -> Option<(&str, Option<&str>)> {
    let cut = if input.starts_with("arn:") {
        let mut colons = input.match_indices(':').map(|(i, _)| i);
        match colons.nth(arn_segments - 1) {
            Some(i) => Some(i),
            None if input.split(':').count() == arn_segments => None,
            None => return None,
        }
    } else {
        input.find(':')
    };
    let (id, suffix) = match cut {
        Some(i) => (&input[..i], Some(&input[i + 1..])),
        None => (input, None),
    };
    (!id.is_empty() && !id.ends_with(':')).then_some((id, suffix))
}

fn parse_arn(input: &str, decrypt: bool) -> Option<Ref> {
    let parts: Vec<&str> = input.splitn(7, ':').collect();
    if parts.len() < 6 || !matches!(parts[1], "aws" | "aws-cn" | "aws-us-gov") {
        return None;
    }
    match parts[2] {
        "secretsmanager" if parts[5] == "secret" => secret_ref(input),
        "ssm" if parts[5].starts_with("parameter/") => param_ref(input, decrypt),
        _ => None,
    }
}

/// The inside of `{{resolve:…}}`.
fn parse_resolve(inner: &str) -> Option<Ref> {
    let (service, rest) = inner.split_once(':')?;
    match service {
        "ssm" => param_ref(rest, false),
        "ssm-secure" => param_ref(rest, true),
        "secretsmanager" => {
            let (id, suffix) = split_id(rest, 7)?;
            match suffix {
                None => secret_with_suffix(id, None),
                Some(s) => {
                    let (field, tail) = s.split_once(':').unwrap_or((s, ""));
                    if field != "SecretString" {
                        return None;
                    }
                    secret_with_suffix(id, (!tail.is_empty()).then_some(tail))
                }
            }
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_rooted_and_never_climb() {
        for ok in ["/", "/app", "/app/prod/", "/a.b/c..d/.e"] {
            assert_eq!(check_path(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "app",
            "/app/../etc",
            "/./x",
            "/app/..",
            "/a:1",
            "/a b",
            "/a\u{0}",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
    }

    fn secret(id: &str, stage: Option<&str>, vid: Option<&str>, key: Option<&str>) -> Ref {
        Ref {
            key: Key::Secret(SecretKey {
                id: id.into(),
                version_stage: stage.map(Into::into),
                version_id: vid.map(Into::into),
                via: Default::default(),
            }),
            select: key.map(|k| Select::Key(k.into())),
        }
    }

    fn param(name: &str, selector: Option<ParamSelector>, decrypt: bool) -> Ref {
        Ref {
            key: Key::Parameter(ParamKey {
                name: name.into(),
                selector,
                decrypt,
                via: Default::default(),
            }),
            select: None,
        }
    }

    const ARN: &str = "arn:aws:secretsmanager:us-east-1:111122223333:secret:app-AbCdEf";

    #[test]
    fn secret_forms() {
        let check = |input: &str, want: Ref| {
            assert_eq!(parse(input, RefKind::Secret, true), Ok(want), "{input}");
        };
        check("db", secret("db", None, None, None));
        check(
            "a/b+c=d.e@f-g_h",
            secret("a/b+c=d.e@f-g_h", None, None, None),
        );
        check("db:password", secret("db", None, None, Some("password")));
        check(
            "db::AWSPREVIOUS",
            secret("db", Some("AWSPREVIOUS"), None, None),
        );
        check("db:::v1", secret("db", None, Some("v1"), None));
        check(ARN, secret(ARN, None, None, None));
        check(
            &format!("{ARN}:DB_URL::"),
            secret(ARN, None, None, Some("DB_URL")),
        );
        check(
            &format!("sm://{ARN}:k:S:"),
            secret(ARN, Some("S"), None, Some("k")),
        );
        check(
            "{{resolve:secretsmanager:db:SecretString:password:AWSPREVIOUS}}",
            secret("db", Some("AWSPREVIOUS"), None, Some("password")),
        );
        check(
            "{{resolve:secretsmanager:db}}",
            secret("db", None, None, None),
        );
        check(
            &format!("{{{{resolve:secretsmanager:{ARN}:SecretString:k}}}}"),
            secret(ARN, None, None, Some("k")),
        );
        let gov = "arn:aws-us-gov:secretsmanager:us-gov-west-1:1:secret:x-AbCdEf";
        check(gov, secret(gov, None, None, None));
    }

    #[test]
    fn parameter_forms() {
        let check = |input: &str, want: Ref| {
            assert_eq!(parse(input, RefKind::Parameter, false), Ok(want), "{input}");
        };
        check("/a/b", param("/a/b", None, false));
        check(
            "/a/b:3",
            param("/a/b", Some(ParamSelector::Version(3)), false),
        );
        check(
            "/a/b:prod",
            param("/a/b", Some(ParamSelector::Label("prod".into())), false),
        );
        let arn = "arn:aws-cn:ssm:cn-north-1:111122223333:parameter/a/b";
        check(arn, param(arn, None, false));
        check(
            &format!("{arn}:7"),
            param(arn, Some(ParamSelector::Version(7)), false),
        );
        check(
            "{{resolve:ssm:/a/b:2}}",
            param("/a/b", Some(ParamSelector::Version(2)), false),
        );
        check("{{resolve:ssm-secure:/a/b}}", param("/a/b", None, true));
        check("ssm:///a", param("/a", None, false));
    }

    #[test]
    fn any_kind_needs_an_explicit_form() {
        assert!(matches!(
            parse("db", RefKind::Any, true),
            Err(RefError::Ambiguous(_))
        ));
        assert!(parse("ssm:///x", RefKind::Any, true).is_ok());
        assert!(parse(ARN, RefKind::Any, true).is_ok());
    }

    #[test]
    fn json_selection() {
        let doc = r#"{"user":"u","db":{"port":5432},"a/b":1}"#;
        let key = |k: &str| Select::Key(k.into());
        let ptr = |p: &str| Select::Pointer(p.into());
        assert_eq!(select(doc, &key("user")), Ok(serde_json::json!("u")));
        assert_eq!(select(doc, &ptr("/db/port")), Ok(serde_json::json!(5432)));
        assert_eq!(select(doc, &ptr("/a~1b")), Ok(serde_json::json!(1)));
        assert_eq!(select(doc, &key("nope")), Err(SelectError::Missing));
        assert_eq!(select(doc, &ptr("db")), Err(SelectError::BadPointer));
        assert_eq!(select("not json", &key("x")), Err(SelectError::NotJson));
    }

    #[test]
    fn malformed_refs_are_rejected() {
        for input in [
            "",
            " db",
            "db\n",
            ":x",
            "db:a:b:c:d",
            "arn:aws:s3:::bucket",
            "arn:evil:secretsmanager:r:a:secret:x",
            "arn:aws:secretsmanager:r:a",
            "arn:aws:ssm:r:a:document/x",
            "{{resolve:ssm:/a",
            "{{resolve:secretsmanager:db:SecretBinary}}",
            "{{resolve:kms:x}}",
            "sm://",
        ] {
            assert!(parse(input, RefKind::Secret, false).is_err(), "{input:?}");
        }
        for input in ["/a:1:2", "/a:", "ssm:///a:b:c"] {
            assert!(
                parse(input, RefKind::Parameter, false).is_err(),
                "{input:?}"
            );
        }
        assert_eq!(
            parse(&"a".repeat(3000), RefKind::Secret, false),
            Err(RefError::TooLong)
        );
    }
}
