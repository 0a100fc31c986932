//! An in-memory catalog of secret versions and parameters with the services' selection rules.
//! It backs both the local file source and the programmable fake.

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::prelude::{BASE64_STANDARD, Engine as _};
use secrecy::{ExposeSecret, SecretBox, SecretString};

use super::{
    FetchResult, Fetched, Key, ParamKey, ParamSelector, ParameterValue, PathKey, Payload,
    SecretFilter, SecretKey, SecretValue, SourceError, Timestamp,
};

const REGION: &str = "local";
const ACCOUNT: &str = "000000000000";
const CURRENT: &str = "AWSCURRENT";
const PREVIOUS: &str = "AWSPREVIOUS";

/// Secrets (with versions and stages) and parameters (with versions and labels).
#[derive(Default)]
pub struct Catalog {
    secrets: BTreeMap<String, Vec<Stored>>,
    params: BTreeMap<String, ParamEntry>,
}

/// One secret version to store.
pub struct SecretVersion {
    /// Version id.
    pub id: String,
    /// Text or binary payload.
    pub payload: PayloadData,
    /// Staging labels.
    pub stages: Vec<String>,
}

/// A stored secret version. The payload is built once and shared with every value handed out,
/// so a cached value costs no second copy (and sits in zeroizing types from the start).
struct Stored {
    id: String,
    payload: Arc<Payload>,
    stages: Vec<String>,
}

impl From<SecretVersion> for Stored {
    fn from(v: SecretVersion) -> Self {
        let payload = match v.payload {
            PayloadData::Text(t) => Payload::Text(SecretString::from(t)),
            PayloadData::Binary(b) => Payload::Binary(SecretBox::new(b.into_boxed_slice())),
        };
        Self {
            id: v.id,
            payload: Arc::new(payload),
            stages: v.stages,
        }
    }
}

/// A payload before it is wrapped for the cache.
#[derive(Clone)]
pub enum PayloadData {
    /// Text.
    Text(String),
    /// Bytes.
    Binary(Vec<u8>),
}

struct ParamEntry {
    kind: String,
    /// Index `i` holds version `i + 1`.
    versions: Vec<ParamVersion>,
}

struct ParamVersion {
    value: Arc<SecretString>,
    labels: Vec<String>,
}

// === Catalog ===

impl Catalog {
    /// Adds a version that becomes `AWSCURRENT`; the old current becomes `AWSPREVIOUS`
    /// (what PutSecretValue does).
    pub fn put_secret(&mut self, name: &str, payload: PayloadData) -> String {
        let versions = self.secrets.entry(name.to_owned()).or_default();
        let id = format!("{name}-v{}", versions.len() + 1);
        for v in versions.iter_mut() {
            v.stages.retain(|s| s != PREVIOUS);
            for s in v.stages.iter_mut().filter(|s| *s == CURRENT) {
                *s = PREVIOUS.to_owned();
            }
        }
        versions.push(
            SecretVersion {
                id: id.clone(),
                payload,
                stages: vec![CURRENT.to_owned()],
            }
            .into(),
        );
        id
    }

    /// Adds a secret version with explicit stages (the file source's long form).
    pub fn insert_secret_version(&mut self, name: &str, version: SecretVersion) {
        self.secrets
            .entry(name.to_owned())
            .or_default()
            .push(version.into());
    }

    /// Removes a secret entirely.
    pub fn delete_secret(&mut self, name: &str) {
        self.secrets.remove(name);
    }

    /// Adds a parameter version (what PutParameter with overwrite does); returns the version.
    pub fn put_parameter(&mut self, name: &str, kind: &str, value: &str, labels: &[String]) -> i64 {
        let entry = self
            .params
            .entry(name.to_owned())
            .or_insert_with(|| ParamEntry {
                kind: kind.to_owned(),
                versions: Vec::new(),
            });
        entry.kind = kind.to_owned();
        for v in &mut entry.versions {
            v.labels.retain(|l| !labels.contains(l));
        }
        entry.versions.push(ParamVersion {
            value: Arc::new(SecretString::from(value)),
            labels: labels.to_vec(),
        });
        entry.versions.len() as i64
    }

    /// Removes a parameter entirely.
    pub fn delete_parameter(&mut self, name: &str) {
        self.params.remove(name);
    }

    /// Answers one key with the services' semantics.
    /// Secret names `filter` matches (the catalog has no tags, so a filter naming tags
    /// matches nothing), sorted.
    pub fn secret_names(&self, filter: &SecretFilter) -> Vec<String> {
        self.secrets
            .keys()
            .filter(|n| filter.matches(n, &[]))
            .cloned()
            .collect()
    }

    pub fn get(&self, key: &Key) -> FetchResult {
        match key {
            Key::Secret(k) => self.secret(k).map(Fetched::Secret),
            Key::Parameter(k) => self.parameter(k).map(Fetched::Parameter),
            Key::Path(k) => Ok(Fetched::Path(self.path(k).into())),
        }
    }

    /// DescribeSecret-style check: does the key still select `version_id`?
    pub fn secret_unchanged(&self, key: &SecretKey, version_id: &str) -> Result<bool, SourceError> {
        let versions = self.secret_versions(key)?;
        Ok(select_version(versions, key).is_some_and(|v| v.id == version_id))
    }

    fn secret_versions(&self, key: &SecretKey) -> Result<&[Stored], SourceError> {
        let name = key.id.rsplit(":secret:").next().unwrap_or(&key.id);
        self.secrets
            .get(name)
            .map(Vec::as_slice)
            .ok_or_else(|| SourceError::not_found(&Key::Secret(key.clone())))
    }

    fn secret(&self, key: &SecretKey) -> Result<Arc<SecretValue>, SourceError> {
        let versions = self.secret_versions(key)?;
        let v = select_version(versions, key)
            .ok_or_else(|| SourceError::not_found(&Key::Secret(key.clone())))?;
        let name = key.id.rsplit(":secret:").next().unwrap_or(&key.id);
        Ok(Arc::new(SecretValue {
            arn: format!("arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:{name}"),
            name: name.to_owned(),
            version_id: v.id.clone(),
            version_stages: v.stages.clone(),
            created_date: Some(Timestamp::new(0, 0)),
            payload: v.payload.clone(),
            region: None,
        }))
    }

    fn parameter(&self, key: &ParamKey) -> Result<Arc<ParameterValue>, SourceError> {
        let name = key
            .name
            .split_once(":parameter")
            .map_or(key.name.as_str(), |(_, n)| n);
        let not_found = || SourceError::not_found(&Key::Parameter(key.clone()));
        let entry = self.params.get(name).ok_or_else(not_found)?;
        let (index, v) = match &key.selector {
            None => entry.versions.iter().enumerate().next_back(),
            Some(ParamSelector::Version(n)) => {
                let i = usize::try_from(*n).ok().and_then(|n| n.checked_sub(1));
                i.and_then(|i| entry.versions.get(i).map(|v| (i, v)))
            }
            Some(ParamSelector::Label(l)) => entry
                .versions
                .iter()
                .enumerate()
                .find(|(_, v)| v.labels.contains(l)),
        }
        .ok_or_else(not_found)?;
        Ok(Arc::new(param_value(name, entry, index, v, key)))
    }

    fn path(&self, key: &PathKey) -> Vec<Arc<ParameterValue>> {
        let prefix = if key.path.ends_with('/') {
            key.path.clone()
        } else {
            format!("{}/", key.path)
        };
        self.params
            .range(prefix.clone()..)
            .take_while(|(name, _)| name.starts_with(&prefix))
            .filter(|(name, _)| key.recursive || !name[prefix.len()..].contains('/'))
            .filter_map(|(name, entry)| {
                let (i, v) = entry.versions.iter().enumerate().next_back()?;
                let pk = ParamKey {
                    name: name.clone(),
                    selector: None,
                    decrypt: key.decrypt,
                    via: key.via.clone(),
                };
                Some(Arc::new(param_value(name, entry, i, v, &pk)))
            })
            .collect()
    }
}

fn select_version<'a>(versions: &'a [Stored], key: &SecretKey) -> Option<&'a Stored> {
    let stage = key.version_stage.as_deref();
    versions.iter().find(|v| {
        key.version_id.as_deref().is_none_or(|id| v.id == id)
            && match stage {
                Some(s) => v.stages.iter().any(|x| x == s),
                None => key.version_id.is_some() || v.stages.iter().any(|x| x == CURRENT),
            }
    })
}

fn param_value(
    name: &str,
    entry: &ParamEntry,
    index: usize,
    v: &ParamVersion,
    key: &ParamKey,
) -> ParameterValue {
    let value = if entry.kind == "SecureString" && !key.decrypt {
        // No KMS here: an opaque stand-in marks the value as not decrypted.
        let sealed = BASE64_STANDARD.encode(v.value.expose_secret().as_bytes());
        Arc::new(SecretString::from(format!("encrypted:{sealed}")))
    } else {
        v.value.clone()
    };
    ParameterValue {
        arn: format!(
            "arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/{}",
            name.trim_start_matches('/')
        ),
        name: name.to_owned(),
        kind: entry.kind.clone(),
        value,
        version: index as i64 + 1,
        last_modified: Some(Timestamp::new(0, 0)),
        data_type: Some("text".to_owned()),
        selector: key.selector_suffix(),
        source_result: None,
        region: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: FetchResult) -> String {
        match f {
            Ok(Fetched::Secret(s)) => match &*s.payload {
                Payload::Text(t) => t.expose_secret().to_owned(),
                Payload::Binary(_) => "binary".into(),
            },
            Ok(Fetched::Parameter(p)) => p.value.expose_secret().to_owned(),
            Ok(Fetched::Path(ps)) => ps
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(","),
            Err(e) => e.code,
        }
    }

    #[test]
    fn secret_stages_follow_put_semantics() {
        let mut c = Catalog::default();
        let v1 = c.put_secret("s", PayloadData::Text("one".into()));
        c.put_secret("s", PayloadData::Text("two".into()));
        let key = |stage: Option<&str>, id: Option<&str>| {
            Key::Secret(SecretKey {
                id: "s".into(),
                version_stage: stage.map(Into::into),
                version_id: id.map(Into::into),
                via: Default::default(),
            })
        };
        assert_eq!(text(c.get(&key(None, None))), "two");
        assert_eq!(text(c.get(&key(Some(PREVIOUS), None))), "one");
        assert_eq!(text(c.get(&key(None, Some(&v1)))), "one");
        assert_eq!(
            text(c.get(&key(Some(CURRENT), Some(&v1)))),
            "ResourceNotFoundException"
        );
        assert!(
            !c.secret_unchanged(&SecretKey::current("s"), &v1)
                .unwrap_or(true)
        );
    }

    #[test]
    fn parameters_versions_labels_and_paths() {
        let mut c = Catalog::default();
        c.put_parameter("/app/a", "String", "a1", &["prod".into()]);
        c.put_parameter("/app/a", "String", "a2", &[]);
        c.put_parameter("/app/sub/b", "SecureString", "b", &[]);
        c.put_parameter("/apple", "String", "x", &[]);
        let p = |name: &str, selector, decrypt| {
            Key::Parameter(ParamKey {
                name: name.into(),
                selector,
                decrypt,
                via: Default::default(),
            })
        };
        assert_eq!(text(c.get(&p("/app/a", None, false))), "a2");
        assert_eq!(
            text(c.get(&p("/app/a", Some(ParamSelector::Version(1)), false))),
            "a1"
        );
        let prod = Some(ParamSelector::Label("prod".into()));
        assert_eq!(text(c.get(&p("/app/a", prod, false))), "a1");
        assert_eq!(
            text(c.get(&p("/app/a", Some(ParamSelector::Version(9)), false))),
            "ParameterVersionNotFound"
        );
        assert_eq!(text(c.get(&p("/app/sub/b", None, true))), "b");
        assert!(text(c.get(&p("/app/sub/b", None, false))).starts_with("encrypted:"));
        let path = |recursive| {
            Key::Path(PathKey {
                path: "/app".into(),
                recursive,
                decrypt: true,
                via: Default::default(),
            })
        };
        assert_eq!(text(c.get(&path(false))), "/app/a");
        assert_eq!(text(c.get(&path(true))), "/app/a,/app/sub/b");
    }

    #[test]
    fn values_handed_out_share_the_stored_payload() {
        let mut c = Catalog::default();
        c.put_secret("db", PayloadData::Text("s3cret".into()));
        c.put_parameter("/p", "String", "v", &[]);
        let key = Key::Secret(SecretKey::current("db"));
        let (Ok(Fetched::Secret(a)), Ok(Fetched::Secret(b))) = (c.get(&key), c.get(&key)) else {
            panic!("db is a secret");
        };
        assert!(Arc::ptr_eq(&a.payload, &b.payload), "no copy per read");
        let key = Key::Parameter(ParamKey {
            name: "/p".into(),
            selector: None,
            decrypt: true,
            via: crate::source::Via::default(),
        });
        let (Ok(Fetched::Parameter(a)), Ok(Fetched::Parameter(b))) = (c.get(&key), c.get(&key))
        else {
            panic!("/p is a parameter");
        };
        assert!(Arc::ptr_eq(&a.value, &b.value), "no copy per read");
    }
}
