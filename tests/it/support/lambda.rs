//! A strict fake of the Lambda Extensions API (contracts.md §6.3). It enforces what emulators
//! do not: the executable name, the identifier on every call, at most 10 extensions, SHUTDOWN
//! registration, the 10 s init deadline, and no calls after `init/error` / `exit/error`. At
//! Register it probes sidekey's port, recording whether sidekey already served and was ready
//! (Lambda starts the function's init once every extension has registered).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use super::{TOKEN, get};

/// What the fake saw at Register.
#[derive(Clone, Debug)]
pub struct Registration {
    pub name: String,
    pub elapsed: Duration,
    pub readyz: Option<u16>,
    pub probe: Option<(u16, String)>,
}

#[derive(Default)]
struct State {
    expected_name: String,
    sidekey_port: u16,
    probe_uri: String,
    others: usize,
    registrations: Vec<Registration>,
    next_calls: usize,
    errors: Vec<(String, String, String)>,
    dead: bool,
}

/// The running fake. Events are queued with [`FakeLambda::invoke`] / [`FakeLambda::shutdown`].
pub struct FakeLambda {
    pub addr: SocketAddr,
    started: SystemTime,
    state: Arc<Mutex<State>>,
    events: mpsc::UnboundedSender<String>,
    _runtime: tokio::runtime::Runtime,
}

const ID: &str = "4a5b7c7e-0000-4000-8000-000000000001";

impl FakeLambda {
    /// A fake expecting the extension `expected_name`, probing `probe_uri` on `sidekey_port`
    /// at Register; `others` extensions are already registered.
    pub fn start(expected_name: &str, sidekey_port: u16, probe_uri: &str, others: usize) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let state = Arc::new(Mutex::new(State {
            expected_name: expected_name.into(),
            sidekey_port,
            probe_uri: probe_uri.into(),
            others,
            ..State::default()
        }));
        let (events, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let started = SystemTime::now();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let st = state.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (st, rx) = (st.clone(), rx.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(req, st.clone(), rx.clone(), started));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FakeLambda {
            addr,
            started,
            state,
            events,
            _runtime: runtime,
        }
    }

    /// The value for `AWS_LAMBDA_RUNTIME_API`.
    pub fn runtime_api(&self) -> String {
        self.addr.to_string()
    }

    pub fn invoke(&self) {
        let deadline = epoch_ms() + 3000;
        let body = format!(
            r#"{{"eventType":"INVOKE","deadlineMs":{deadline},"requestId":"r-1","invokedFunctionArn":"arn:aws:lambda:us-east-1:1:function:f","tracing":{{"type":"X-Amzn-Trace-Id","value":"Root=1"}}}}"#
        );
        let _ = self.events.send(body);
    }

    /// Queues SHUTDOWN with the usual 2 s deadline; returns the deadline.
    pub fn shutdown(&self) -> SystemTime {
        let deadline = epoch_ms() + 2000;
        let _ = self.events.send(format!(
            r#"{{"eventType":"SHUTDOWN","shutdownReason":"spindown","deadlineMs":{deadline}}}"#
        ));
        UNIX_EPOCH + Duration::from_millis(deadline)
    }

    pub fn registrations(&self) -> Vec<Registration> {
        self.state.lock().unwrap().registrations.clone()
    }

    pub fn next_calls(&self) -> usize {
        self.state.lock().unwrap().next_calls
    }

    /// `(call, error type header, body)` of every init/exit error report.
    pub fn errors(&self) -> Vec<(String, String, String)> {
        self.state.lock().unwrap().errors.clone()
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed().unwrap_or_default()
    }
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn reply(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())));
    *r.status_mut() = status;
    r
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response<Full<Bytes>> {
    reply(
        status,
        &format!(r#"{{"errorType":"{kind}","errorMessage":"{message}"}}"#),
    )
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    events: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>>,
    started: SystemTime,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let name = header("lambda-extension-name");
    let id = header("lambda-extension-identifier");
    let error_type = header("lambda-extension-function-error-type");
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body = String::from_utf8_lossy(&body).into_owned();
    if state.lock().unwrap().dead {
        return Ok(error(
            StatusCode::FORBIDDEN,
            "Extension.Forbidden",
            "environment failed",
        ));
    }
    let authorized = id.as_deref() == Some(ID) && !state.lock().unwrap().registrations.is_empty();
    Ok(match path.as_str() {
        "/2020-01-01/extension/register" => register(&state, name, &body, started).await,
        _ if !authorized => error(
            StatusCode::FORBIDDEN,
            "Extension.Unauthorized",
            "missing or unknown identifier",
        ),
        "/2020-01-01/extension/event/next" => {
            state.lock().unwrap().next_calls += 1;
            match events.lock().await.recv().await {
                Some(event) => {
                    let mut r = reply(StatusCode::OK, &event);
                    r.headers_mut()
                        .insert("lambda-extension-event-identifier", "e-1".parse().unwrap());
                    r
                }
                None => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Extension.Closed",
                    "no more events",
                ),
            }
        }
        "/2020-01-01/extension/init/error" | "/2020-01-01/extension/exit/error" => {
            let Some(kind) = error_type else {
                return Ok(error(
                    StatusCode::BAD_REQUEST,
                    "Extension.MissingHeader",
                    "error type",
                ));
            };
            let mut s = state.lock().unwrap();
            s.errors.push((
                path.rsplit('/').nth(1).unwrap_or_default().to_owned(),
                kind,
                body,
            ));
            s.dead = true;
            reply(StatusCode::ACCEPTED, r#"{"status":"OK"}"#)
        }
        _ => error(StatusCode::NOT_FOUND, "Extension.NotFound", "no such route"),
    })
}

async fn register(
    state: &Arc<Mutex<State>>,
    name: Option<String>,
    body: &str,
    started: SystemTime,
) -> Response<Full<Bytes>> {
    let elapsed = started.elapsed().unwrap_or_default();
    let (expected, port, probe_uri, others) = {
        let s = state.lock().unwrap();
        (
            s.expected_name.clone(),
            s.sidekey_port,
            s.probe_uri.clone(),
            s.others,
        )
    };
    if name.as_deref() != Some(expected.as_str()) {
        return error(
            StatusCode::FORBIDDEN,
            "Extension.InvalidName",
            "name does not match the executable",
        );
    }
    if others + state.lock().unwrap().registrations.len() >= 10 {
        return error(
            StatusCode::BAD_REQUEST,
            "Extension.TooManyExtensions",
            "at most 10 extensions",
        );
    }
    if !body.contains("SHUTDOWN") || !body.contains("INVOKE") {
        return error(
            StatusCode::BAD_REQUEST,
            "Extension.InvalidEvents",
            "external extensions register SHUTDOWN",
        );
    }
    if elapsed > Duration::from_secs(10) {
        return error(
            StatusCode::FORBIDDEN,
            "Extension.InitTimeout",
            "init took over 10 s",
        );
    }
    // What the function's init code would see right now.
    let (readyz, probe) = tokio::task::spawn_blocking(move || {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if std::net::TcpStream::connect(addr).is_err() {
            return (None, None);
        }
        let h = [("X-Aws-Parameters-Secrets-Token", TOKEN)];
        let ready = get(addr, "/readyz", &h).status;
        let probe = (!probe_uri.is_empty()).then(|| {
            let r = get(addr, &probe_uri, &h);
            (r.status, r.body)
        });
        (Some(ready), probe)
    })
    .await
    .unwrap_or((None, None));
    state.lock().unwrap().registrations.push(Registration {
        name: expected,
        elapsed,
        readyz,
        probe,
    });
    let mut r = reply(
        StatusCode::OK,
        r#"{"functionName":"fake-fn","functionVersion":"$LATEST","handler":"index.handler"}"#,
    );
    r.headers_mut()
        .insert("lambda-extension-identifier", ID.parse().unwrap());
    r
}
