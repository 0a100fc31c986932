//! Listeners and the accept loops: TCP (loopback by default, IP TTL 1 on every accepted socket
//! so replies cannot leave the host) and a Unix socket created with its final mode from the
//! first instant. One hyper HTTP/1.1 connection task per client, a connection cap answered with
//! 429, a request-head deadline, and a graceful drain on shutdown.

use std::convert::Infallible;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

use super::dto;
use super::routes::Api;
use crate::config::{ListenConfig, UnixConfig};
use crate::metrics::{METRICS, Route};

/// Largest request head hyper buffers (WCP allows 321 KiB; 64 KiB is plenty for a GET).
const MAX_HEAD: usize = 64 * 1024;
/// `/ping` is still answered on this many connections beyond the cap (as WCP).
const PING_EXTRA: usize = 2;

/// Bound listeners, ready to serve.
pub struct Listeners {
    /// TCP listener.
    pub tcp: Option<TcpListener>,
    /// Unix socket listener.
    pub unix: Option<UnixSocket>,
}

/// A Unix listener that removes its socket file on cleanup if the file is still ours.
pub struct UnixSocket {
    listener: UnixListener,
    path: PathBuf,
    ino: u64,
}

struct ConnLimit {
    active: AtomicUsize,
    max: usize,
}

struct ConnGuard(Arc<ConnLimit>);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Admission {
    Normal,
    PingOnly,
    Refused,
    /// A Unix socket peer outside `listen.unix_allow_*`.
    Forbidden,
}

// === Listeners ===

impl Listeners {
    /// Binds every configured listener.
    pub async fn bind(cfg: &ListenConfig) -> io::Result<Self> {
        let tcp = match cfg.tcp {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        let unix = cfg.unix.as_ref().map(bind_unix).transpose()?;
        Ok(Self { tcp, unix })
    }

    /// The lines announced on stdout, e.g. `sidekey listening on 127.0.0.1:2773`.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(addr) = self.tcp.as_ref().and_then(|l| l.local_addr().ok()) {
            out.push(format!("sidekey listening on {addr}"));
        }
        if let Some(u) = &self.unix {
            out.push(format!("sidekey listening on unix:{}", u.path.display()));
        }
        out
    }
}

/// Binds at a temporary path inside a fresh 0700 directory, sets mode and owner, then renames
/// into place: nobody can connect before the permissions are final, with no process-wide umask.
fn bind_unix(cfg: &UnixConfig) -> io::Result<UnixSocket> {
    let path = &cfg.path;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is in use by a live process", path.display()),
                ));
            }
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = parent.join(format!(
        ".sidekey-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    let result = (|| {
        let tmp = dir.join("s");
        let listener = std::os::unix::net::UnixListener::bind(&tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(cfg.mode))?;
        if cfg.owner.is_some() || cfg.group.is_some() {
            std::os::unix::fs::chown(&tmp, cfg.owner, cfg.group)?;
        }
        std::fs::rename(&tmp, path)?;
        listener.set_nonblocking(true)?;
        Ok::<_, io::Error>(listener)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    let listener = UnixListener::from_std(result?)?;
    let ino = std::fs::symlink_metadata(path)?.ino();
    Ok(UnixSocket {
        listener,
        path: path.clone(),
        ino,
    })
}

impl UnixSocket {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cleanup(&self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

// === serving ===

/// Serves until `shutdown`, then drains open connections for up to `cfg.grace`.
/// Returns whether the drain finished in time.
pub async fn serve(
    listeners: Listeners,
    api: Arc<Api>,
    cfg: &ListenConfig,
    shutdown: CancellationToken,
) -> bool {
    let graceful = GracefulShutdown::new();
    let limit = Arc::new(ConnLimit {
        active: AtomicUsize::new(0),
        max: cfg.max_connections.get(),
    });
    let ctx = Ctx {
        api,
        limit,
        header_timeout: cfg.header_timeout,
        graceful: &graceful,
        shutdown: &shutdown,
    };
    let tcp = async {
        if let Some(l) = &listeners.tcp {
            ctx.accept_loop(|| async {
                let (s, _) = l.accept().await?;
                // As the AWS agent does: replies must not cross a router.
                s.set_ttl(1)?;
                s.set_nodelay(true)?;
                Ok((s, true))
            })
            .await;
        }
    };
    let unix = async {
        if let Some(u) = &listeners.unix {
            let allow = cfg.unix.as_ref().and_then(|c| c.allow.as_ref());
            ctx.accept_loop(|| async {
                let (s, _) = u.listener.accept().await?;
                let permitted = match allow {
                    None => true,
                    Some(allow) => {
                        let cred = s.peer_cred()?;
                        let ok = allow.permits(cred.uid(), cred.gid());
                        if !ok {
                            tracing::warn!(uid = cred.uid(), gid = cred.gid(), pid = ?cred.pid(), "Unix socket peer not allowed.");
                        }
                        ok
                    }
                };
                Ok((s, permitted))
            })
            .await;
        }
    };
    tokio::join!(tcp, unix);
    let drained = tokio::time::timeout(cfg.grace, graceful.shutdown())
        .await
        .is_ok();
    if let Some(u) = &listeners.unix {
        u.cleanup();
    }
    drained
}

struct Ctx<'a> {
    api: Arc<Api>,
    limit: Arc<ConnLimit>,
    header_timeout: Duration,
    graceful: &'a GracefulShutdown,
    shutdown: &'a CancellationToken,
}

impl Ctx<'_> {
    async fn accept_loop<F, Fut, S>(&self, accept: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = io::Result<(S, bool)>>,
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        loop {
            let stream = tokio::select! {
                () = self.shutdown.cancelled() => return,
                r = accept() => r,
            };
            match stream {
                Ok((s, permitted)) => self.spawn_connection(s, permitted),
                Err(e) => {
                    // E.g. EMFILE: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "Accept failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn spawn_connection<S>(&self, stream: S, permitted: bool)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (guard, mut admission) = self.limit.admit();
        if !permitted {
            admission = Admission::Forbidden;
        }
        let api = self.api.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let api = api.clone();
            async move {
                let resp = match admission {
                    Admission::Normal => api.handle(&req).await,
                    Admission::PingOnly if req.uri().path() == "/ping" => api.handle(&req).await,
                    Admission::Forbidden => {
                        METRICS.request(Route::Other, 403);
                        dto::json(
                            StatusCode::FORBIDDEN,
                            &dto::NativeError {
                                code: "peer_not_allowed",
                                message: "this user may not use the socket",
                            },
                        )
                    }
                    _ => {
                        METRICS.request(Route::Other, 429);
                        dto::text(StatusCode::TOO_MANY_REQUESTS, "Connection limit exceeded")
                    }
                };
                Ok::<_, Infallible>(resp)
            }
        });
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_timeout)
            .max_buf_size(MAX_HEAD)
            .max_header_size(MAX_HEAD);
        let conn = self
            .graceful
            .watch(builder.serve_connection(TokioIo::new(stream), svc));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "Connection ended with an error.");
            }
            drop(guard);
        });
    }
}

impl ConnLimit {
    fn admit(self: &Arc<Self>) -> (ConnGuard, Admission) {
        let n = self.active.fetch_add(1, Ordering::AcqRel);
        let admission = if n < self.max {
            Admission::Normal
        } else if n < self.max + PING_EXTRA {
            Admission::PingOnly
        } else {
            Admission::Refused
        };
        (ConnGuard(self.clone()), admission)
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}
