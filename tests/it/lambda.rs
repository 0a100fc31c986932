//! The binary as a Lambda extension against the strict fake Extensions API.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use crate::server::VALUES;
use crate::support::lambda::FakeLambda;
use crate::support::{TOKEN, free_port, get, wait_until};

struct Ext {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
    values: std::path::PathBuf,
}

/// Starts sidekey the way Lambda does: no arguments, configured by environment only.
fn start(fake: &FakeLambda, port: u16, config: &str, extra_env: &[(&str, &str)]) -> Ext {
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("values.toml");
    std::fs::write(&values, VALUES).unwrap();
    let cfg = dir.path().join("sidekey.toml");
    std::fs::write(
        &cfg,
        format!(
            "[source]\nkind = \"file\"\nfile = {:?}\n{config}",
            values.display().to_string()
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_sidekey"))
        .env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", fake.runtime_api())
        .env("PARAMETERS_SECRETS_EXTENSION_HTTP_PORT", port.to_string())
        .env("AWS_SESSION_TOKEN", TOKEN)
        .env("SIDEKEY_CONFIG", &cfg)
        .envs(extra_env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Ext {
        child,
        port,
        _dir: dir,
        values,
    }
}

impl Ext {
    fn get(&self, uri: &str) -> crate::support::Resp {
        get(
            ([127, 0, 0, 1], self.port).into(),
            uri,
            &[("X-Aws-Parameters-Secrets-Token", TOKEN)],
        )
    }

    /// Waits for exit (the fake's SIGKILL deadline), returning the code and stderr.
    fn wait_exit(mut self, limit: Duration) -> (Option<i32>, String) {
        let start = SystemTime::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break Some(s);
            }
            if start.elapsed().unwrap_or_default() > limit {
                let _ = self.child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut err = String::new();
        let _ = self
            .child
            .stderr
            .take()
            .map(|mut e| e.read_to_string(&mut err));
        let _ = self.child.wait();
        (status.and_then(|s| s.code()), err)
    }
}

const PREFETCH: &str = "[[secrets]]\nid = \"app/db\"\n[[parameters]]\npath = \"/app\"\n";
const PROBE: &str = "/secretsmanager/get?secretId=app%2Fdb";

#[test]
fn serves_prefetched_values_before_register_and_shuts_down_in_time() {
    let port = free_port();
    let fake = FakeLambda::start("sidekey", port, PROBE, 0);
    let ext = start(&fake, port, PREFETCH, &[]);
    wait_until(Duration::from_secs(10), || fake.next_calls() == 1);
    let reg = &fake.registrations()[0];
    assert_eq!(reg.name, "sidekey");
    assert!(reg.elapsed < Duration::from_secs(10));
    assert_eq!(reg.readyz, Some(200), "ready before Register");
    let (status, body) = reg.probe.clone().unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("Pa55-w0rd-XYZZY"),
        "value served before Register"
    );

    fake.invoke();
    wait_until(Duration::from_secs(5), || fake.next_calls() == 2);
    let r = ext.get("/systemsmanager/parameters/get?name=%2Fapp%2Furl");
    assert_eq!(r.json()["Parameter"]["Value"], "https://example.internal");
    let denied = get(
        ([127, 0, 0, 1], port).into(),
        PROBE,
        &[("X-Aws-Parameters-Secrets-Token", "other")],
    );
    assert_eq!(denied.status, 403, "the token is AWS_SESSION_TOKEN");

    let deadline = fake.shutdown();
    let (code, _) = ext.wait_exit(Duration::from_millis(2000));
    assert!(
        SystemTime::now() <= deadline + Duration::from_millis(50),
        "exited before the SHUTDOWN deadline"
    );
    assert_eq!(code, Some(0));
    assert!(fake.errors().is_empty());
}

#[test]
fn refreshes_on_invoke_after_a_freeze() {
    let port = free_port();
    let fake = FakeLambda::start("sidekey", port, "", 0);
    let ext = start(
        &fake,
        port,
        &format!("[cache]\nrefresh_interval = \"1s\"\njitter = 0.0\n{PREFETCH}"),
        &[],
    );
    wait_until(Duration::from_secs(10), || fake.next_calls() == 1);
    let uri = "/secret?id=app/db:password&raw=true";
    assert_eq!(ext.get(uri).body, "Pa55-w0rd-XYZZY");
    // Frozen between invokes: no CPU, no timers.
    let pid = ext.child.id().to_string();
    Command::new("kill").args(["-STOP", &pid]).status().unwrap();
    std::fs::write(
        &ext.values,
        VALUES.replace("Pa55-w0rd-XYZZY", "rotated-KEY"),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    Command::new("kill").args(["-CONT", &pid]).status().unwrap();
    fake.invoke();
    wait_until(Duration::from_secs(5), || {
        ext.get(uri).body == "rotated-KEY"
    });
    wait_until(Duration::from_secs(5), || fake.next_calls() == 2);
    fake.shutdown();
    assert_eq!(ext.wait_exit(Duration::from_secs(2)).0, Some(0));
}

#[test]
fn snapstart_defers_prefetch_to_the_first_invoke() {
    let port = free_port();
    let fake = FakeLambda::start("sidekey", port, "", 0);
    let ext = start(
        &fake,
        port,
        PREFETCH,
        &[("AWS_LAMBDA_INITIALIZATION_TYPE", "snap-start")],
    );
    wait_until(Duration::from_secs(10), || fake.next_calls() == 1);
    assert_eq!(
        fake.registrations()[0].readyz,
        Some(503),
        "nothing fetched into the snapshot"
    );
    fake.invoke();
    wait_until(Duration::from_secs(5), || ext.get("/readyz").status == 200);
    fake.shutdown();
    assert_eq!(ext.wait_exit(Duration::from_secs(2)).0, Some(0));
}

#[test]
fn register_refusals_end_the_process_with_the_reason() {
    for (expected, others, reason) in [
        ("other-name", 0, "Extension.InvalidName"),
        ("sidekey", 10, "Extension.TooManyExtensions"),
    ] {
        let port = free_port();
        let fake = FakeLambda::start(expected, port, "", others);
        let ext = start(&fake, port, "", &[("SIDEKEY_LISTEN__TCP", "127.0.0.1:0")]);
        let (code, stderr) = ext.wait_exit(Duration::from_secs(10));
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains(reason), "{stderr}");
    }
}

#[test]
fn failed_init_is_reported_through_init_error() {
    let port = free_port();
    let fake = FakeLambda::start("sidekey", port, "", 0);
    let cfg = "[cache]\non_prefetch_error = \"abort\"\n[[secrets]]\nid = \"app/missing\"\n";
    let (code, _) = start(&fake, port, cfg, &[]).wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(1));
    let errors = fake.errors();
    assert_eq!(
        (errors[0].0.as_str(), errors[0].1.as_str()),
        ("init", "Extension.PrefetchFailed")
    );
    assert!(errors[0].2.contains("errorMessage"));

    let port = free_port();
    let fake = FakeLambda::start("sidekey", port, "", 0);
    let (code, _) =
        start(&fake, port, "[cache]\njitter = 9\n", &[]).wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(64));
    assert_eq!(fake.errors()[0].1, "Extension.ConfigError");
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn end_to_end_under_the_cargo_lambda_emulator() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo_lambda = root.join(".venv/bin/cargo-lambda");
    assert!(
        cargo_lambda.exists(),
        "run scripts/test: it installs cargo-lambda into .venv"
    );
    let m = crate::support::moto();
    let (sm, _) = crate::support::clients(&m.url);
    let secret = crate::support::unique("lambda/db");
    crate::support::block_on(
        sm.create_secret()
            .name(&secret)
            .secret_string("from-moto-via-sidekey")
            .send(),
    )
    .unwrap();

    let api_port = free_port();
    let emulator = Proc(
        Command::new(&cargo_lambda)
            .args([
                "lambda",
                "watch",
                "--only-lambda-apis",
                "--ignore-changes",
                "-P",
                &api_port.to_string(),
            ])
            .current_dir(root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until(Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", api_port)).is_ok()
    });

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let common = [
        ("PARAMETERS_SECRETS_EXTENSION_HTTP_PORT", port.to_string()),
        ("AWS_SESSION_TOKEN", TOKEN.to_owned()),
        ("PATH", std::env::var("PATH").unwrap_or_default()),
    ];
    let extension = Proc(
        Command::new(env!("CARGO_BIN_EXE_sidekey"))
            .env_clear()
            .envs(common.iter().map(|(k, v)| (*k, v.as_str())))
            // The form cargo-lambda prints: a URL with a path prefix.
            .env(
                "AWS_LAMBDA_RUNTIME_API",
                format!("http://[::]:{api_port}/.rt"),
            )
            // No config file at all: configured like the AWS layer, by environment only.
            .env("SIDEKEY_LOG__LEVEL", "debug")
            .envs([
                ("AWS_ENDPOINT_URL", m.url.as_str()),
                ("AWS_ACCESS_KEY_ID", "testing"),
                ("AWS_SECRET_ACCESS_KEY", "testing"),
                ("AWS_REGION", "us-east-1"),
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("sidekey.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let sidekey = ([127, 0, 0, 1], port).into();
    wait_until(Duration::from_secs(20), || {
        std::net::TcpStream::connect(sidekey).is_ok()
            && get(
                sidekey,
                "/readyz",
                &[("X-Aws-Parameters-Secrets-Token", TOKEN)],
            )
            .status
                == 200
    });
    let function = Proc(
        Command::new("python3")
            .arg(root.join("examples/lambda/function.py"))
            .env_clear()
            .envs(common.iter().map(|(k, v)| (*k, v.as_str())))
            .env(
                "AWS_LAMBDA_RUNTIME_API",
                format!("http://127.0.0.1:{api_port}/.rt"),
            )
            .env("SECRET_ID", &secret)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let invoke = Command::new(&cargo_lambda)
        .args([
            "lambda",
            "invoke",
            "-P",
            &api_port.to_string(),
            "--data-ascii",
            "{}",
            "_",
        ])
        .current_dir(root)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&invoke.stdout);
    assert!(
        invoke.status.success(),
        "{out} {}",
        String::from_utf8_lossy(&invoke.stderr)
    );
    assert!(out.contains("from-moto-via-sidekey"), "{out}");
    wait_until(Duration::from_secs(5), || {
        let log = std::fs::read_to_string(dir.path().join("sidekey.log")).unwrap_or_default();
        log.contains("Registered as a Lambda extension") && log.contains("Fetching a batch")
    });
    drop((function, extension, emulator));
}
