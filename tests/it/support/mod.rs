//! Test support: a moto server on loopback, the real `sidekey` binary on port 0 and a temp Unix
//! socket, and a tiny HTTP/1.1 client over TCP or a Unix socket.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

pub mod fault;
pub mod http;
pub mod lambda;

pub use http::{Resp, get, get_unix, request};

/// A moto server. Dies with the test process: it runs under a shell that kills it when our
/// end of its stdin pipe closes.
pub struct Moto {
    pub url: String,
    _guard: ChildStdin,
    child: Child,
}

/// The moto server shared by every test in this binary (tests use unique names).
pub fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(Moto::start)
}

impl Moto {
    /// Starts a private moto server (for tests that stop it).
    pub fn start() -> Self {
        let bin = std::env::var_os("SIDEKEY_MOTO_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server"));
        assert!(
            bin.exists(),
            "moto_server not found at {} — run scripts/test, which installs it into .venv",
            bin.display()
        );
        let port = free_port();
        let script = format!(
            "'{}' -H 127.0.0.1 -p {port} >/dev/null 2>&1 & m=$!; read _; kill $m",
            bin.display()
        );
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn moto");
        let guard = child.stdin.take().expect("moto stdin");
        let url = format!("http://127.0.0.1:{port}");
        wait_until(Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Moto {
            url,
            _guard: guard,
            child,
        }
    }

    /// Stops the server (outage simulation).
    pub fn stop(mut self) {
        drop(self._guard);
        let _ = self.child.wait();
    }
}

/// A fresh unique name fragment.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A free port for servers that must be told their port in advance (moto, the PSLE port
/// variable). Picked below Linux's ephemeral range (32768+), so no `bind(0)` or outgoing
/// connection elsewhere in the parallel test run can be handed the same port meanwhile; never
/// handed out twice in this process.
pub fn free_port() -> u16 {
    use std::hash::BuildHasher;
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let random = std::collections::hash_map::RandomState::new();
    for attempt in 0u64.. {
        let port = 20_000 + (random.hash_one(attempt) % 12_000) as u16;
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    unreachable!("the loop only ends by returning")
}

/// Polls `f` every 20 ms until it holds or `limit` passes (readiness of real processes only).
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) {
    let start = std::time::SystemTime::now();
    while !f() {
        assert!(
            start.elapsed().unwrap_or_default() < limit,
            "condition not reached within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `THP_enabled` field of a process's status (`None` on kernels without it).
pub fn thp_enabled(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(|v| v.trim().to_owned())
}

/// The TCP address in sidekey's `sidekey listening on ADDR` start-up line.
pub fn listening_addr(line: &str) -> SocketAddr {
    line.trim()
        .strip_prefix("sidekey listening on ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("not a listening line: {line:?}"))
}

/// The token every spawned sidekey expects.
pub const TOKEN: &str = "test-token-abc123";

/// A running `sidekey` binary.
pub struct Sidekey {
    pub child: Child,
    pub config: PathBuf,
    pub config_text: String,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
    pub addr: SocketAddr,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
    pub stdout_lines: Vec<String>,
}

/// How to start sidekey.
pub struct Spawn {
    pub config: String,
    pub env: BTreeMap<String, String>,
    pub args: Vec<String>,
}

impl Spawn {
    /// A config against `moto_url` with dummy credentials.
    pub fn aws(moto_url: &str, config: &str) -> Self {
        let mut env = BTreeMap::new();
        for (k, v) in [
            ("AWS_ENDPOINT_URL", moto_url),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_TOKEN", TOKEN),
        ] {
            env.insert(k.to_owned(), v.to_owned());
        }
        Spawn {
            config: config.to_owned(),
            env,
            args: Vec::new(),
        }
    }

    /// A config with the local file source.
    pub fn file(values_toml: &str, config: &str) -> (Self, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let values = dir.path().join("values.toml");
        std::fs::write(&values, values_toml).unwrap();
        let config = format!(
            "[source]\nkind = \"file\"\nfile = {:?}\n{config}",
            values.display().to_string()
        );
        let mut s = Spawn::aws("http://127.0.0.1:9", &config);
        s.env.remove("AWS_ENDPOINT_URL");
        (s, dir)
    }

    pub fn start(self) -> Sidekey {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("sidekey.toml");
        std::fs::write(&cfg, &self.config).unwrap();
        let socket = dir.path().join("sidekey.sock");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sidekey"));
        cmd.arg("run")
            .arg("--config")
            .arg(&cfg)
            .args(["--listen", "127.0.0.1:0", "--unix-socket"])
            .arg(&socket)
            .args(&self.args)
            .env_clear()
            .envs(&self.env)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn sidekey");
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut lines = Vec::new();
        let mut addr = None;
        while lines.len() < 2 {
            let mut line = String::new();
            if out.read_line(&mut line).unwrap_or(0) == 0 {
                let mut err = String::new();
                let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
                panic!("sidekey exited before listening: {err}");
            }
            let line = line.trim().to_owned();
            if let Some(a) = line
                .strip_prefix("sidekey listening on ")
                .and_then(|a| a.parse().ok())
            {
                addr = Some(a);
            }
            lines.push(line);
        }
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut err_pipe = BufReader::new(child.stderr.take().expect("stderr"));
        let stderr_reader = Some(std::thread::spawn(move || {
            let mut line = String::new();
            while err_pipe.read_line(&mut line).unwrap_or(0) > 0 {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        }));
        let sk = Sidekey {
            child,
            config: cfg,
            config_text: self.config,
            stderr,
            stderr_reader,
            addr: addr.expect("tcp address"),
            socket,
            dir,
            stdout_lines: lines,
        };
        wait_until(Duration::from_secs(30), || sk.get("/readyz").status != 503);
        sk
    }
}

impl Sidekey {
    pub fn get(&self, uri: &str) -> Resp {
        get(self.addr, uri, &[("X-Aws-Parameters-Secrets-Token", TOKEN)])
    }

    pub fn get_unix(&self, uri: &str) -> Resp {
        get_unix(
            &self.socket,
            uri,
            &[("X-Aws-Parameters-Secrets-Token", TOKEN)],
        )
    }

    pub fn raw(&self, uri: &str, headers: &[(&str, &str)]) -> Resp {
        get(self.addr, uri, headers)
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The `/status` item for `id`.
    pub fn status_item(&self, id: &str) -> serde_json::Value {
        let status = self.get("/status").json();
        status["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["id"] == id)
            .unwrap_or_else(|| panic!("{id} not in /status: {status}"))
            .clone()
    }

    /// AWS call attempts of `operation` so far (all outcomes), from `/metrics`.
    pub fn aws_calls(&self, operation: &str) -> u64 {
        let text = self.get("/metrics").body;
        let label = format!("operation=\"{operation}\"");
        text.lines()
            .filter(|l| l.starts_with("sidekey_aws_calls_total{") && l.contains(&label))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    }

    /// Sends a signal by name (`HUP`, `TERM`, …).
    pub fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status();
    }

    /// Sends SIGTERM and returns (exit code, stderr).
    pub fn terminate(mut self) -> (Option<i32>, String) {
        self.signal("TERM");
        let status = self.child.wait().expect("wait");
        if let Some(t) = self.stderr_reader.take() {
            let _ = t.join();
        }
        (status.code(), self.stderr())
    }
}

impl Drop for Sidekey {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs an async block on a fresh runtime (for SDK seeding).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// SDK clients pointed at `moto_url`.
pub fn clients(moto_url: &str) -> (aws_sdk_secretsmanager::Client, aws_sdk_ssm::Client) {
    let creds =
        aws_sdk_secretsmanager::config::Credentials::new("testing", "testing", None, None, "test");
    let shared = block_on(
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(moto_url)
            .credentials_provider(creds)
            .load(),
    );
    (
        aws_sdk_secretsmanager::Client::new(&shared),
        aws_sdk_ssm::Client::new(&shared),
    )
}

/// Writes to a stream and keeps it open (connection-limit tests).
pub fn hold(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 256];
    let _ = s.read(&mut buf);
    s
}

pub fn unix_connect(path: &Path) -> UnixStream {
    UnixStream::connect(path).unwrap()
}

/// A spawned process (sidekey exec, mostly) stopped when the test ends, passing or not:
/// SIGTERM first, so a supervisor takes its child down too, SIGKILL after 5 s. Its stderr is
/// collected as it comes.
pub struct Reap {
    pub child: Child,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Reap {
    pub fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd.stderr(Stdio::piped()).spawn().expect("spawn");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut pipe = BufReader::new(child.stderr.take().expect("stderr"));
        std::thread::spawn(move || {
            let mut line = String::new();
            while pipe.read_line(&mut line).unwrap_or(0) > 0 {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        Reap { child, stderr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends SIGTERM and returns the exit code.
    pub fn terminate(mut self) -> Option<i32> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        self.child.wait().expect("wait").code()
    }
}

impl Drop for Reap {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.pid().to_string()])
                .status();
            for _ in 0..250 {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
