//! The optional allow-list of what this sidecar may serve at all (`api.allow_secrets`,
//! `api.allow_parameters`): a compromised app in the same task can then read only what its
//! config names, not everything its IAM role allows. Checked before the cache, so a refused
//! request never reaches AWS.

use crate::source::Key;

/// Prefix of the SSM names that read Secrets Manager secrets.
const SM_REFERENCE: &str = "/aws/reference/secretsmanager/";

/// One entry: an exact name, or a prefix when it ends in `*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// Exactly this name.
    Exact(String),
    /// Every name starting with this.
    Prefix(String),
}

/// Which secrets and parameters may be served; `None` for a kind means no restriction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList {
    /// Secret names (or name prefixes).
    pub secrets: Option<Vec<Pattern>>,
    /// Parameter names and path prefixes.
    pub parameters: Option<Vec<Pattern>>,
}

impl Pattern {
    /// Parses `name` or `prefix*`; `None` for an empty pattern or a `*` anywhere but the end.
    pub fn parse(s: &str) -> Option<Self> {
        match s.strip_suffix('*') {
            Some(p) if !p.contains('*') => Some(Self::Prefix(p.to_owned())),
            None if !s.is_empty() && !s.contains('*') => Some(Self::Exact(s.to_owned())),
            _ => None,
        }
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Self::Exact(n) => n == name,
            Self::Prefix(p) => name.starts_with(p.as_str()),
        }
    }

    /// Whether every parameter under `path` matches: only a prefix can cover a path.
    fn covers_path(&self, path: &str) -> bool {
        let Self::Prefix(p) = self else { return false };
        let dir = format!("{}/", path.trim_end_matches('/'));
        dir.starts_with(p.as_str())
    }
}

impl AllowList {
    /// Whether `key` may be served.
    pub fn permits(&self, key: &Key) -> bool {
        let any = |list: &Option<Vec<Pattern>>, f: &dyn Fn(&Pattern) -> bool| {
            list.as_ref().is_none_or(|l| l.iter().any(f))
        };
        match key {
            Key::Secret(s) => any(&self.secrets, &|p| {
                secret_names(&s.id).any(|n| p.matches(n))
            }),
            Key::Parameter(p) => {
                let name = parameter_name(&p.name);
                match name.strip_prefix(SM_REFERENCE) {
                    // A secret read through Parameter Store is a secret read.
                    Some(secret) => any(&self.secrets, &|p| {
                        secret_names(secret).any(|n| p.matches(n))
                    }),
                    None => any(&self.parameters, &|p| p.matches(name)),
                }
            }
            Key::Path(p) => any(&self.parameters, &|pat| pat.covers_path(&p.path)),
        }
    }
}

/// The names a secret id may be matched by: the id, and for an ARN the name in it with and
/// without the random `-XXXXXX` suffix Secrets Manager appends.
fn secret_names(id: &str) -> impl Iterator<Item = &str> {
    let from_arn = id
        .starts_with("arn:")
        .then(|| id.split_once(":secret:").map(|(_, n)| n))
        .flatten();
    let unsuffixed = from_arn.and_then(|n| {
        let (base, suffix) = n.rsplit_once('-')?;
        (suffix.len() == 6 && suffix.chars().all(|c| c.is_ascii_alphanumeric())).then_some(base)
    });
    std::iter::once(id).chain(from_arn).chain(unsuffixed)
}

/// A parameter's name, from an ARN when given one (`…:parameter/app/x` → `/app/x`).
fn parameter_name(name: &str) -> &str {
    match name.split_once(":parameter") {
        Some((_, rest)) if name.starts_with("arn:") => match rest.strip_prefix('/') {
            Some(flat) if !flat.starts_with('/') && !rest[1..].contains('/') => flat,
            _ => rest,
        },
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{ParamKey, PathKey, SecretKey};

    fn list(secrets: &[&str], parameters: &[&str]) -> AllowList {
        let parse = |v: &[&str]| Some(v.iter().map(|s| Pattern::parse(s).unwrap()).collect());
        AllowList {
            secrets: parse(secrets),
            parameters: parse(parameters),
        }
    }

    fn secret(id: &str) -> Key {
        Key::Secret(SecretKey {
            id: id.into(),
            version_id: None,
            version_stage: None,
            via: Default::default(),
        })
    }

    fn parameter(name: &str) -> Key {
        Key::Parameter(ParamKey {
            name: name.into(),
            selector: None,
            decrypt: true,
            via: Default::default(),
        })
    }

    #[test]
    fn patterns_are_names_or_trailing_prefixes() {
        assert_eq!(Pattern::parse("a"), Some(Pattern::Exact("a".into())));
        assert_eq!(Pattern::parse("a/*"), Some(Pattern::Prefix("a/".into())));
        assert_eq!(Pattern::parse("*"), Some(Pattern::Prefix(String::new())));
        for bad in ["", "a*b", "**", "*a"] {
            assert_eq!(Pattern::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_listed_names_arns_and_paths_pass() {
        let l = list(&["prod/db", "prod/app/*"], &["/prod/app/*", "/shared/url"]);
        assert!(l.permits(&secret("prod/db")));
        assert!(l.permits(&secret("prod/app/key")));
        assert!(l.permits(&secret(
            "arn:aws:secretsmanager:eu-west-1:111122223333:secret:prod/db-AbCdEf"
        )));
        assert!(!l.permits(&secret("prod/db2")));
        assert!(!l.permits(&secret("prod/other")));
        assert!(!l.permits(&secret(
            "arn:aws:secretsmanager:eu-west-1:111122223333:secret:prod/other-AbCdEf"
        )));
        assert!(l.permits(&parameter("/prod/app/url")));
        assert!(l.permits(&parameter("/shared/url")));
        assert!(l.permits(&parameter(
            "arn:aws:ssm:eu-west-1:111122223333:parameter/shared/url"
        )));
        assert!(!l.permits(&parameter("/shared/other")));
        assert!(!l.permits(&parameter(
            "arn:aws:ssm:eu-west-1:111122223333:parameter/shared/other"
        )));
        // Secrets through Parameter Store follow the secret list.
        assert!(l.permits(&parameter("/aws/reference/secretsmanager/prod/db")));
        assert!(!l.permits(&parameter("/aws/reference/secretsmanager/prod/other")));
        let path = |p: &str| Key::Path(PathKey::new(p, true, true));
        assert!(l.permits(&path("/prod/app")));
        assert!(l.permits(&path("/prod/app/sub/")));
        assert!(!l.permits(&path("/prod")));
        assert!(
            !l.permits(&path("/shared/url")),
            "an exact name covers no path"
        );
        assert!(!l.permits(&path("/")));
    }

    #[test]
    fn an_unset_list_restricts_nothing_and_an_empty_one_everything() {
        let open = AllowList::default();
        assert!(open.permits(&secret("x")) && open.permits(&parameter("/x")));
        let closed = list(&[], &[]);
        assert!(!closed.permits(&secret("x")) && !closed.permits(&parameter("/x")));
    }
}
