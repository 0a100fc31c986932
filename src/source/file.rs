//! The local file source: secrets and parameters from a TOML or JSON file, for development,
//! demos and offline use. The file is re-read whenever its modification time or size changes,
//! so editing it behaves like a rotation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use base64::prelude::{BASE64_STANDARD, Engine as _};
use serde::Deserialize;

use super::memory::{Catalog, PayloadData, SecretVersion};
use super::{
    ErrorKind, FetchResult, Key, Revalidation, SecretFilter, SecretKey, Source, SourceError,
    SourceFuture,
};

/// Serves values from a file.
pub struct FileSource {
    path: PathBuf,
    loaded: Mutex<Option<Loaded>>,
}

struct Loaded {
    stamp: (SystemTime, u64),
    catalog: Arc<Catalog>,
}

/// The file's shape.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileData {
    #[serde(default)]
    secrets: BTreeMap<String, SecretDef>,
    #[serde(default)]
    parameters: BTreeMap<String, ParamDef>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SecretDef {
    Text(String),
    Full(SecretFull),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretFull {
    value: Option<String>,
    binary: Option<String>,
    #[serde(default)]
    versions: Vec<VersionDef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionDef {
    id: String,
    value: Option<String>,
    binary: Option<String>,
    stages: Vec<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ParamDef {
    Text(String),
    Full(ParamFull),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ParamFull {
    value: String,
    #[serde(rename = "type", default = "string_type")]
    kind: String,
    #[serde(default)]
    labels: Vec<String>,
}

fn string_type() -> String {
    "String".to_owned()
}

// === FileSource ===

impl FileSource {
    /// A source reading `path` (`.json` is JSON, anything else TOML).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            loaded: Mutex::new(None),
        }
    }

    /// Loads and validates the file now, so a broken file fails at startup with its path.
    pub fn check(&self) -> Result<(), SourceError> {
        self.catalog().map(drop)
    }

    fn catalog(&self) -> Result<Arc<Catalog>, SourceError> {
        let io = |e: std::io::Error| {
            SourceError::new(
                ErrorKind::Transient,
                "FileReadError",
                format!("{}: {e}", self.path.display()),
            )
        };
        let meta = std::fs::metadata(&self.path).map_err(io)?;
        let stamp = (meta.modified().map_err(io)?, meta.len());
        let mut loaded = self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(l) = loaded.as_ref().filter(|l| l.stamp == stamp) {
            return Ok(l.catalog.clone());
        }
        let text = std::fs::read_to_string(&self.path).map_err(io)?;
        let catalog = Arc::new(parse(&self.path, &text)?);
        *loaded = Some(Loaded {
            stamp,
            catalog: catalog.clone(),
        });
        Ok(catalog)
    }
}

impl Source for FileSource {
    fn fetch<'a>(&'a self, keys: &'a [Key]) -> SourceFuture<'a, Vec<FetchResult>> {
        Box::pin(async move {
            match self.catalog() {
                Ok(c) => keys.iter().map(|k| c.get(k)).collect(),
                Err(e) => keys.iter().map(|_| Err(e.clone())).collect(),
            }
        })
    }

    fn revalidate<'a>(
        &'a self,
        key: &'a SecretKey,
        version_id: &'a str,
    ) -> SourceFuture<'a, Result<Revalidation, SourceError>> {
        Box::pin(async move {
            let unchanged = self.catalog()?.secret_unchanged(key, version_id)?;
            Ok(Revalidation {
                unchanged,
                next_rotation: None,
            })
        })
    }

    fn discover<'a>(
        &'a self,
        filter: &'a SecretFilter,
    ) -> SourceFuture<'a, Result<Vec<String>, SourceError>> {
        Box::pin(async move { Ok(self.catalog()?.secret_names(filter)) })
    }
}

/// A single `AWSCURRENT` version whose id is derived from the content, so an edited value gets
/// a new version id and revalidation notices the "rotation".
fn current_version(catalog: &mut Catalog, name: &str, payload: PayloadData) {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    match &payload {
        PayloadData::Text(t) => t.hash(&mut h),
        PayloadData::Binary(b) => b.hash(&mut h),
    }
    let version = SecretVersion {
        id: format!("{:016x}", h.finish()),
        payload,
        stages: vec!["AWSCURRENT".to_owned()],
    };
    catalog.insert_secret_version(name, version);
}

/// Parses file text into a catalog. Errors name the file and, for TOML, the line.
fn parse(path: &Path, text: &str) -> Result<Catalog, SourceError> {
    let invalid = |msg: String| {
        SourceError::new(
            ErrorKind::Invalid,
            "InvalidSourceFile",
            format!("{}: {msg}", path.display()),
        )
    };
    let data: FileData = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?
    } else {
        toml::from_str(text).map_err(|e| invalid(e.message().to_owned()))?
    };
    let payload = |name: &str, value: Option<String>, binary: Option<String>| match (value, binary)
    {
        (Some(v), None) => Ok(PayloadData::Text(v)),
        (None, Some(b)) => BASE64_STANDARD
            .decode(b.as_bytes())
            .map(PayloadData::Binary)
            .map_err(|_| invalid(format!("secret {name:?}: `binary` is not valid base64"))),
        _ => Err(invalid(format!(
            "secret {name:?}: set exactly one of `value` and `binary`"
        ))),
    };
    let mut catalog = Catalog::default();
    for (name, def) in data.secrets {
        match def {
            SecretDef::Text(v) => current_version(&mut catalog, &name, PayloadData::Text(v)),
            SecretDef::Full(f) if f.versions.is_empty() => {
                current_version(&mut catalog, &name, payload(&name, f.value, f.binary)?);
            }
            SecretDef::Full(f) => {
                if f.value.is_some() || f.binary.is_some() {
                    return Err(invalid(format!(
                        "secret {name:?}: use either `versions` or `value`/`binary`"
                    )));
                }
                for v in f.versions {
                    let version = SecretVersion {
                        id: v.id,
                        payload: payload(&name, v.value, v.binary)?,
                        stages: v.stages,
                    };
                    catalog.insert_secret_version(&name, version);
                }
            }
        }
    }
    for (name, def) in data.parameters {
        let (value, kind, labels) = match def {
            ParamDef::Text(v) => (v, string_type(), Vec::new()),
            ParamDef::Full(f) => (f.value, f.kind, f.labels),
        };
        if !matches!(kind.as_str(), "String" | "StringList" | "SecureString") {
            return Err(invalid(format!(
                "parameter {name:?}: unknown type {kind:?}"
            )));
        }
        catalog.put_parameter(&name, &kind, &value, &labels);
    }
    Ok(catalog)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{Fetched, Payload};
    use secrecy::ExposeSecret;

    const TOML: &str = r#"
[secrets]
"demo/db" = '{"user":"admin"}'
"demo/bin" = { binary = "AAEC" }
[[secrets."demo/rotated".versions]]
id = "old"
value = "v1"
stages = ["AWSPREVIOUS"]
[[secrets."demo/rotated".versions]]
id = "new"
value = "v2"
stages = ["AWSCURRENT"]

[parameters]
"/demo/url" = "https://example.com"
"/demo/key" = { value = "k", type = "SecureString", labels = ["prod"] }
"#;

    #[tokio::test]
    async fn reads_toml_and_picks_up_edits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("values.toml");
        std::fs::write(&path, TOML).unwrap();
        let src = FileSource::new(&path);
        let keys = [
            Key::Secret(SecretKey::current("demo/db")),
            Key::Secret(SecretKey::current("demo/bin")),
            Key::Secret(SecretKey {
                id: "demo/rotated".into(),
                version_stage: Some("AWSPREVIOUS".into()),
                version_id: None,
                via: Default::default(),
            }),
        ];
        let got = src.fetch(&keys).await;
        let text = |f: &FetchResult| match f {
            Ok(Fetched::Secret(s)) => match &*s.payload {
                Payload::Text(t) => t.expose_secret().to_owned(),
                Payload::Binary(b) => format!("{:?}", b.expose_secret()),
            },
            _ => "error".into(),
        };
        assert_eq!(text(&got[0]), r#"{"user":"admin"}"#);
        assert_eq!(text(&got[1]), "[0, 1, 2]");
        assert_eq!(text(&got[2]), "v1");
        assert!(
            src.revalidate(&SecretKey::current("demo/rotated"), "new")
                .await
                .unwrap()
                .unchanged
        );

        let Key::Secret(db) = &keys[0] else {
            unreachable!()
        };
        let Ok(Fetched::Secret(old)) = &got[0] else {
            panic!("no secret")
        };
        assert!(src.revalidate(db, &old.version_id).await.unwrap().unchanged);
        std::fs::write(&path, "[secrets]\n\"demo/db\" = 'changed!'\n").unwrap();
        assert!(
            !src.revalidate(db, &old.version_id).await.unwrap().unchanged,
            "an edit is a new version"
        );
        let got = src.fetch(&keys[..1]).await;
        assert_eq!(text(&got[0]), "changed!");
    }

    #[test]
    fn bad_files_name_the_file_and_problem() {
        let check = |text: &str, want: &str| {
            let err = parse(Path::new("v.toml"), text).err().unwrap();
            assert!(
                err.message.contains("v.toml") && err.message.contains(want),
                "{err}"
            );
        };
        check("[secrets]\nx = { binary = \"!!\" }", "base64");
        check(
            "[secrets]\nx = { value = \"a\", binary = \"AA==\" }",
            "exactly one",
        );
        check(
            "[parameters]\nx = { value = \"a\", type = \"Int\" }",
            "unknown type",
        );
        check("[other]\n", "unknown field");
        let err = parse(Path::new("v.json"), "{").err().unwrap();
        assert_eq!(err.kind, ErrorKind::Invalid);
    }
}
