//! The binary's command line: exit codes, check-config, compat configuration.

use std::process::{Command, Output};

use crate::server::VALUES;
use crate::support::{TOKEN, free_port, get, wait_until};

fn sidekey(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sidekey"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn bad_config_exits_64_naming_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key) in [
        ("[cache]\njitter = 7", "cache.jitter"),
        ("[cache]\nbogus = 1", "bogus"),
        ("ttl_seconds = 99999", "ttl_seconds"),
        ("[listen]\ntcp = \"10.1.2.3:2773\"", "listen.tcp"),
    ] {
        let cfg = write(&dir, "bad.toml", text);
        for cmd in ["run", "check-config"] {
            let out = sidekey(&[cmd, "--config", &cfg], &[("AWS_TOKEN", "x")]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(64), "{cmd} {text}: {err}");
            assert!(err.contains(key) && err.contains("bad.toml"), "{err}");
        }
    }
    let out = sidekey(&["run", "--config", "/nonexistent.toml"], &[]);
    assert_eq!(out.status.code(), Some(64));
    let out = sidekey(
        &["run"],
        &[("PARAMETERS_SECRETS_EXTENSION_CACHE_SIZE", "5000")],
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PARAMETERS_SECRETS_EXTENSION_CACHE_SIZE")
    );
}

#[test]
fn check_config_prints_the_effective_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        &dir,
        "ok.toml",
        "[cache]\nttl = \"42s\"\n[aws]\nendpoint_url = \"http://u:hunter2@localhost:1\"\n",
    );
    let out = sidekey(
        &["check-config", "--config", &cfg],
        &[("SECRETS_MANAGER_TTL", "999")],
    );
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ttl = \"42s\"") && text.contains("[listen]"),
        "{text}"
    );
    assert!(!text.contains("hunter2"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Setting Secrets Manger TTL to 5m0s"));
}

#[test]
fn version_and_help() {
    let out = sidekey(&["--version"], &[]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("sidekey {}", env!("CARGO_PKG_VERSION"))
    );
    let out = sidekey(&["--help"], &[]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("check-config") && help.contains("get"));
}

#[test]
fn prefetch_failure_aborts_only_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let values = write(&dir, "v.toml", VALUES);
    let cfg = write(
        &dir,
        "c.toml",
        "[cache]\non_prefetch_error = \"abort\"\n[[secrets]]\nid = \"app/missing\"\n",
    );
    let out = sidekey(
        &[
            "run",
            "--config",
            &cfg,
            "--listen",
            "127.0.0.1:0",
            "--source-file",
            &values,
        ],
        &[("AWS_TOKEN", "t")],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("prefetch failed for 1 item"));
}

#[test]
fn refuses_to_start_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let values = write(&dir, "v.toml", VALUES);
    let out = sidekey(
        &["run", "--listen", "127.0.0.1:0", "--source-file", &values],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no token source is set"));
}

/// Starts the binary with `args`/`env` and waits until `port` answers `/ping`.
fn serve(args: &[&str], env: &[(&str, &str)], port: u16) -> std::process::Child {
    let child = Command::new(env!("CARGO_BIN_EXE_sidekey"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    wait_until(std::time::Duration::from_secs(10), || {
        std::net::TcpStream::connect(addr).is_ok()
    });
    child
}

#[test]
fn lambda_extension_environment_alone_configures_a_drop_in() {
    let dir = tempfile::tempdir().unwrap();
    let values = write(&dir, "v.toml", VALUES);
    let port = free_port();
    let port_s = port.to_string();
    let mut child = serve(
        &["--source-file", &values],
        &[
            ("PARAMETERS_SECRETS_EXTENSION_HTTP_PORT", &port_s),
            ("AWS_SESSION_TOKEN", "session-token"),
            ("SECRETS_MANAGER_TTL", "30"),
        ],
        port,
    );
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let r = get(
        addr,
        "/secretsmanager/get?secretId=app%2Fkey",
        &[("X-Aws-Parameters-Secrets-Token", "session-token")],
    );
    assert_eq!(
        (r.status, r.json()["SecretString"].as_str()),
        (200, Some("api-key-PLUGH-42"))
    );
    assert_eq!(
        get(
            addr,
            "/secretsmanager/get?secretId=app%2Fkey",
            &[("X-Aws-Parameters-Secrets-Token", TOKEN)]
        )
        .status,
        403
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn agent_flat_config_is_a_drop_in() {
    let dir = tempfile::tempdir().unwrap();
    let values = write(&dir, "v.toml", VALUES);
    let port = free_port();
    let token_file = write(&dir, "token", "file-token\n");
    let cfg = write(
        &dir,
        "agent.toml",
        &format!(
            "http_port = \"{port}\"\nttl_seconds = 60\ncache_size = 10\nmax_conn = 10\npath_prefix = \"/secret/\"\nlog_level = \"INFO\"\nlog_to_file = false\nssrf_env_variables = [\"MY_TOKEN\"]\nssrf_headers = [\"X-Custom\"]\n[source]\nkind = \"file\"\nfile = {values:?}\n"
        ),
    );
    let file_ref = format!("file://{token_file}");
    let mut child = serve(&["--config", &cfg], &[("MY_TOKEN", &file_ref)], port);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let r = get(addr, "/secret/app%2Fkey", &[("X-Custom", "file-token")]);
    assert_eq!(
        (r.status, r.json()["SecretString"].as_str()),
        (200, Some("api-key-PLUGH-42"))
    );
    assert_eq!(
        get(
            addr,
            "/secret/app%2Fkey",
            &[("X-Aws-Parameters-Secrets-Token", "file-token")]
        )
        .status,
        403
    );
    // Token file rotation is picked up without a restart.
    std::fs::write(&token_file, "rotated-token").unwrap();
    wait_until(std::time::Duration::from_secs(10), || {
        get(addr, "/secret/app%2Fkey", &[("X-Custom", "rotated-token")]).status == 200
    });
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn shipped_example_configs_validate() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let out = Command::new(env!("CARGO_BIN_EXE_sidekey"))
            .args(["check-config", "--config"])
            .arg(&path)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_clear()
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        n += 1;
    }
    assert!(n >= 3);
}
