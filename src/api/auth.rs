//! Request authentication: the SSRF token. The expected token comes from the first configured
//! source that is set (env var, whose value may be `file://PATH`, or a file); a file token is
//! re-read when the file changes, so rotation needs no restart. Comparison is constant-time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderName};
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{AuthConfig, TokenSource};

/// How often a token file is checked for changes.
const FILE_POLL: Duration = Duration::from_secs(1);

/// The token check, shared by every connection.
pub struct Auth {
    headers: Vec<HeaderName>,
    token: ArcSwap<SecretString>,
    file: Option<PathBuf>,
}

/// Why no usable token could be found at startup.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// None of the sources is set.
    #[error("no token source is set (tried {0}); refusing to serve without a token")]
    NoSource(String),
    /// A token file could not be read.
    #[error("cannot read token file {}: {source}", path.display())]
    Read {
        /// File.
        path: PathBuf,
        /// IO error.
        source: std::io::Error,
    },
    /// The token is empty.
    #[error("token from {0} is empty; refusing to serve without a token")]
    Empty(String),
}

impl Auth {
    /// Resolves the token from the first source that is set.
    pub fn resolve(cfg: &AuthConfig, env: &BTreeMap<String, String>) -> Result<Self, AuthError> {
        for source in &cfg.tokens {
            let (token, file) = match source {
                TokenSource::Env(name) => match env.get(name) {
                    None => continue,
                    Some(v) => match v.strip_prefix("file://") {
                        Some(path) => (read_token(Path::new(path))?, Some(PathBuf::from(path))),
                        None => (v.trim().to_owned(), None),
                    },
                },
                TokenSource::File(path) => match read_token(path) {
                    Err(AuthError::Read { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        continue;
                    }
                    r => (r?, Some(path.clone())),
                },
            };
            if token.is_empty() {
                return Err(AuthError::Empty(describe(source)));
            }
            return Ok(Self {
                headers: cfg.headers.clone(),
                token: ArcSwap::from_pointee(SecretString::from(token)),
                file,
            });
        }
        let tried: Vec<String> = cfg.tokens.iter().map(describe).collect();
        Err(AuthError::NoSource(tried.join(", ")))
    }

    /// The token in effect and the first accepted header, for a local client (`sidekey health`).
    pub fn credentials(&self) -> (HeaderName, SecretString) {
        let token = self.token.load();
        let header = self
            .headers
            .first()
            .cloned()
            .unwrap_or(HeaderName::from_static("x-aws-parameters-secrets-token"));
        (header, SecretString::from(token.expose_secret()))
    }

    /// True when any accepted header carries the token.
    pub fn check(&self, headers: &HeaderMap) -> bool {
        let token = self.token.load();
        let expected = token.expose_secret().as_bytes();
        self.headers
            .iter()
            .flat_map(|h| headers.get_all(h))
            .any(|v| constant_time_eq(v.as_bytes(), expected))
    }

    /// Watches a token file for changes until `shutdown`.
    pub fn spawn_reloader(self: &Arc<Self>, shutdown: CancellationToken, tracker: &TaskTracker) {
        let Some(path) = self.file.clone() else {
            return;
        };
        let this = self.clone();
        tracker.spawn(async move {
            let mut last = stamp(&path);
            let mut tick = tokio::time::interval(FILE_POLL);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let now = stamp(&path);
                if now == last {
                    continue;
                }
                last = now;
                match read_token(&path) {
                    Ok(t) if !t.is_empty() => {
                        this.token.store(Arc::new(SecretString::from(t)));
                        tracing::info!(path = %path.display(), "Token file changed; new token in effect.");
                    }
                    Ok(_) => tracing::warn!(path = %path.display(), "Token file is empty; keeping the previous token."),
                    Err(e) => tracing::warn!(error = %e, "Cannot re-read the token file; keeping the previous token."),
                }
            }
        });
    }
}

fn describe(s: &TokenSource) -> String {
    match s {
        TokenSource::Env(n) => format!("${n}"),
        TokenSource::File(p) => format!("file://{}", p.display()),
    }
}

fn read_token(path: &Path) -> Result<String, AuthError> {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_owned())
        .map_err(|source| AuthError::Read {
            path: path.to_owned(),
            source,
        })
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Compares without an early exit, so timing reveals at most the length.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(tokens: Vec<TokenSource>) -> AuthConfig {
        AuthConfig {
            headers: vec![HeaderName::from_static("x-aws-parameters-secrets-token")],
            tokens,
        }
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("X-AWS-Parameters-Secrets-Token", v.parse().unwrap());
        h
    }

    #[test]
    fn first_set_source_wins_and_compare_is_exact() {
        let c = cfg(vec![
            TokenSource::Env("A".into()),
            TokenSource::Env("B".into()),
        ]);
        let auth = Auth::resolve(&c, &env(&[("B", "tb"), ("A", "ta")])).unwrap();
        assert!(auth.check(&headers("ta")));
        assert!(!auth.check(&headers("tb")));
        assert!(!auth.check(&headers("ta ")));
        assert!(!auth.check(&HeaderMap::new()));
        let auth = Auth::resolve(&c, &env(&[("B", "tb")])).unwrap();
        assert!(auth.check(&headers("tb")));
    }

    #[test]
    fn missing_or_empty_tokens_refuse_to_start() {
        let c = cfg(vec![
            TokenSource::Env("A".into()),
            TokenSource::File("/nonexistent/t".into()),
        ]);
        let err = Auth::resolve(&c, &env(&[])).err().unwrap().to_string();
        assert!(
            err.contains("$A") && err.contains("file:///nonexistent/t"),
            "{err}"
        );
        assert!(matches!(
            Auth::resolve(&c, &env(&[("A", " ")])),
            Err(AuthError::Empty(_))
        ));
    }

    #[test]
    fn env_value_may_point_to_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "from-file\n").unwrap();
        let c = cfg(vec![TokenSource::Env("AWS_TOKEN".into())]);
        let auth = Auth::resolve(
            &c,
            &env(&[("AWS_TOKEN", &format!("file://{}", p.display()))]),
        )
        .unwrap();
        assert!(auth.check(&headers("from-file")));
    }

    #[tokio::test(start_paused = true)]
    async fn file_token_rotation_is_picked_up() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "one").unwrap();
        let auth =
            Arc::new(Auth::resolve(&cfg(vec![TokenSource::File(p.clone())]), &env(&[])).unwrap());
        let (stop, tracker) = (CancellationToken::new(), TaskTracker::new());
        auth.spawn_reloader(stop.clone(), &tracker);
        tokio::time::sleep(Duration::from_millis(10)).await;
        std::fs::write(&p, "second-token").unwrap();
        tokio::time::sleep(FILE_POLL * 2).await;
        assert!(auth.check(&headers("second-token")));
        assert!(!auth.check(&headers("one")));
        stop.cancel();
        tracker.close();
        tracker.wait().await;
    }
}
