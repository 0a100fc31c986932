//! The real binary on the local file source: security checks, limits, the Unix socket,
//! shutdown, and secret hygiene in logs.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};

use std::time::Duration;

use crate::support::{Spawn, TOKEN, get, get_unix, hold, wait_until};

pub const VALUES: &str = r#"
[secrets]
"app/db" = '{"user":"admin","password":"Pa55-w0rd-XYZZY"}'
"app/key" = "api-key-PLUGH-42"
[parameters]
"/app/url" = "https://example.internal"
"/app/secure" = { value = "secure-QUUX-7", type = "SecureString" }
"#;

const SEEDED: [&str; 4] = [
    "Pa55-w0rd-XYZZY",
    "api-key-PLUGH-42",
    "secure-QUUX-7",
    "example.internal",
];

#[test]
fn token_forwarding_and_method_checks() {
    let (spawn, _values) = Spawn::file(VALUES, "");
    let sk = spawn.start();
    let tok = ("X-Aws-Parameters-Secrets-Token", TOKEN);
    let r = sk.raw("/secretsmanager/get?secretId=app%2Fkey", &[]);
    assert_eq!((r.status, r.body.as_str()), (403, "Bad Token"));
    let r = sk.raw(
        "/secretsmanager/get?secretId=app%2Fkey",
        &[("X-Aws-Parameters-Secrets-Token", "wrong")],
    );
    assert_eq!(r.status, 403);
    let r = sk.raw(
        "/secretsmanager/get?secretId=app%2Fkey",
        &[tok, ("X-Forwarded-For", "10.0.0.1")],
    );
    assert_eq!((r.status, r.body.as_str()), (400, "Forwarded"));
    let r = sk.raw("/secret?id=app/key", &[("X-Vault-Token", TOKEN)]);
    assert_eq!(r.status, 200);
    let r = sk.raw("/secret?id=app/key", &[]);
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (403, Some("bad_token"))
    );
    let r = sk.raw("/ping", &[]);
    assert_eq!((r.status, r.body.as_str()), (200, "healthy"));
    assert_eq!(sk.raw("/healthz", &[]).status, 200);
    assert_eq!(sk.raw("/readyz", &[]).status, 403);
    assert_eq!(sk.get("/readyz").status, 200);
    let post = crate::support::request(
        std::net::TcpStream::connect(sk.addr).unwrap(),
        "POST",
        "/secret?id=x",
        &[],
    );
    assert_eq!(
        post.status, 403,
        "an unauthenticated POST is refused before the method check"
    );
    let post = crate::support::request(
        std::net::TcpStream::connect(sk.addr).unwrap(),
        "POST",
        "/secret?id=x",
        &[tok],
    );
    assert_eq!(post.status, 405);
    let long = format!("/secret?id={}", "a".repeat(10_000));
    assert!(
        matches!(sk.get(&long).status, 414 | 431),
        "overlong URIs are refused"
    );
}

#[test]
fn connection_limit_answers_429_but_keeps_ping() {
    let (spawn, _values) = Spawn::file(VALUES, "[listen]\nmax_connections = 1\n");
    let sk = spawn.start();
    let _held = hold(sk.addr);
    let r = sk.get("/secret?id=app/key");
    assert_eq!(
        (r.status, r.body.as_str()),
        (429, "Connection limit exceeded")
    );
    assert_eq!(sk.raw("/ping", &[]).status, 200);
    drop(_held);
    crate::support::wait_until(std::time::Duration::from_secs(5), || {
        sk.get("/secret?id=app/key").status == 200
    });
}

#[test]
fn unix_socket_is_private_and_removed_on_shutdown() {
    let (spawn, _values) = Spawn::file(VALUES, "");
    let sk = spawn.start();
    let meta = std::fs::symlink_metadata(&sk.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        sk.get_unix("/secret?id=app/key&raw=true").body,
        "api-key-PLUGH-42"
    );
    assert_eq!(get_unix(&sk.socket, "/secret?id=app/key", &[]).status, 403);
    let socket = sk.socket.clone();
    let (code, _) = sk.terminate();
    assert_eq!(code, Some(0));
    assert!(!socket.exists(), "socket file removed on shutdown");
}

#[test]
fn a_path_that_is_not_a_socket_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("not-a-socket");
    std::fs::write(&path, "precious").unwrap();
    let (spawn, values) = Spawn::file(VALUES, "");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sidekey"))
        .args(["run", "--listen", "127.0.0.1:0", "--unix-socket"])
        .arg(&path)
        .arg("--source-file")
        .arg(values.path().join("values.toml"))
        .env_clear()
        .envs(&spawn.env)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
}

/// Every feature at trace level — prefetch, paths, every route and error, templates with a
/// command, the change stream, status and metrics, a rotation, a reload, then exec mode — and
/// no seeded value reaches stdout, stderr or the log file.
#[test]
fn secret_values_never_reach_logs_even_at_trace() {
    let dir = tempfile::tempdir().unwrap();
    let (log, out) = (dir.path().join("sidekey.log"), dir.path().join("rendered"));
    let (mut spawn, values) = Spawn::file(
        VALUES,
        &format!(
            "[log]\nlevel = \"trace\"\nfile = {log:?}\n[cache]\nrefresh_interval = \"1s\"\n\
             [[secrets]]\nid = \"app/db\"\n[[parameters]]\npath = \"/app\"\n\
             [[templates]]\ncontents = '{{{{ secret(\"app/db:password\") }}}} {{{{ parameter(\"/app/secure\") }}}}'\n\
             destination = {out:?}\ncommand = [\"true\"]\nwait = {{ min = \"10ms\" }}\n"
        ),
    );
    spawn.env.insert("RUST_LOG".into(), "trace".into());
    let sk = spawn.start();
    for uri in [
        "/secret?id=app/db&key=password&raw=true",
        "/secret?id=app/db&key=missing",
        "/secret?id=app/key&pointer=/x",
        "/secretsmanager/get?secretId=app%2Fdb",
        "/v1/app/key?refreshNow=true",
        "/systemsmanager/parameters/get?name=%2Fapp%2Fsecure&withDecryption=true",
        "/parameter?name=/app/url&key=x",
        "/parameters?path=/app",
        "/secret?id=nope",
        "/watch?ids=app/db,/app/secure",
        "/watch?ids=app/db&since=0&timeout=1s",
        "/status",
        "/metrics",
        "/readyz",
    ] {
        let _ = sk.get(uri);
    }
    assert_eq!(
        sk.get("/secret?id=app/db&key=password&raw=true").body,
        "Pa55-w0rd-XYZZY"
    );
    // A rotation, picked up and rendered, then a reload.
    let rotated = VALUES.replace("Pa55-w0rd-XYZZY", "r0tated-WALDO-5");
    std::fs::write(values.path().join("values.toml"), &rotated).unwrap();
    wait_until(Duration::from_secs(10), || {
        let o = std::fs::read_to_string(&out);
        o.is_ok_and(|o| o.starts_with("r0tated-WALDO-5"))
    });
    sk.signal("HUP");
    wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("Reloading"))
    });
    let mut child_out = String::new();
    let stdout_lines = sk.stdout_lines.join("\n");
    let (code, stderr) = {
        let mut sk = sk;
        let _ = sk
            .child
            .stdout
            .take()
            .map(|mut o| o.read_to_string(&mut child_out));
        sk.terminate()
    };
    assert_eq!(code, Some(0));
    let file_log = std::fs::read_to_string(&log).unwrap();
    assert!(file_log.contains("TRACE"), "trace logging reaches the file");
    // Exec mode at trace, injecting a value into a child.
    let exec = std::process::Command::new(env!("CARGO_BIN_EXE_sidekey"))
        .args(["exec", "--log-level", "trace", "--source-file"])
        .arg(values.path().join("values.toml"))
        .args([
            "--env",
            "PW=app/db:password",
            "--",
            "sh",
            "-c",
            "test -n \"$PW\"",
        ])
        .env_clear()
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    assert_eq!(exec.status.code(), Some(0));
    let exec_out = format!(
        "{}{}",
        String::from_utf8_lossy(&exec.stdout),
        String::from_utf8_lossy(&exec.stderr)
    );
    assert!(
        exec_out.contains("TRACE") || exec_out.contains("DEBUG"),
        "{exec_out}"
    );
    for value in SEEDED.iter().chain(&["r0tated-WALDO-5"]) {
        assert!(!stderr.contains(value), "{value} leaked to stderr");
        assert!(
            !child_out.contains(value) && !stdout_lines.contains(value),
            "{value} leaked to stdout"
        );
        assert!(!file_log.contains(value), "{value} leaked to the log file");
        assert!(!exec_out.contains(value), "{value} leaked by exec mode");
    }
}

#[test]
fn tcp_requests_get_loopback_only_replies() {
    let (spawn, _values) = Spawn::file(VALUES, "");
    let sk = spawn.start();
    assert!(sk.addr.ip().is_loopback());
    let r = get(sk.addr, "/ping", &[]);
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
}

#[test]
fn config_changes_reload_prefetch_lists_and_reject_restart_only_sections() {
    let (spawn, _values) = Spawn::file(VALUES, "[[secrets]]\nid = \"app/db\"\n");
    let sk = spawn.start();
    let wait_for = |needle: &str| {
        crate::support::wait_until(std::time::Duration::from_secs(15), || {
            sk.stderr().contains(needle)
        });
    };
    let base = sk.config_text.clone();
    std::fs::write(&sk.config, format!("{base}[[secrets]]\nid = \"app/key\"\n")).unwrap();
    wait_for("Reload applied.");
    std::fs::write(&sk.config, format!("{base}[listen]\nmax_connections = 5\n")).unwrap();
    wait_for("Reload rejected: these sections need a restart");
    std::fs::write(&sk.config, "not = [valid").unwrap();
    wait_for("Reload rejected: invalid config");
    sk.signal("HUP");
    crate::support::wait_until(std::time::Duration::from_secs(15), || {
        sk.stderr()
            .matches("Reload rejected: invalid config")
            .count()
            >= 2
    });
    assert_eq!(
        sk.get("/secret?id=app/key&raw=true").body,
        "api-key-PLUGH-42",
        "the old config keeps serving"
    );
    let (code, _) = sk.terminate();
    assert_eq!(code, Some(0));
}

#[test]
fn health_subcommand_checks_readiness_over_tcp_or_the_socket() {
    let (spawn, _values) = Spawn::file(VALUES, "");
    let sk = spawn.start();
    let health = |args: &[&str], token: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sidekey"))
            .arg("health")
            .args(args)
            .env_clear()
            .env("AWS_TOKEN", token)
            .output()
            .unwrap()
            .status
            .code()
    };
    let addr = sk.addr.to_string();
    assert_eq!(health(&["--listen", &addr], TOKEN), Some(0));
    assert_eq!(health(&["--listen", &addr], "wrong"), Some(1));
    let socket = sk.socket.display().to_string();
    assert_eq!(
        health(&["--listen", "", "--unix-socket", &socket], TOKEN),
        Some(0)
    );
    let closed = format!("127.0.0.1:{}", crate::support::free_port());
    assert_eq!(health(&["--listen", &closed], TOKEN), Some(1));
}

#[test]
fn editing_the_local_values_file_updates_values_at_once() {
    let (spawn, values) = Spawn::file(
        VALUES,
        "[cache]\nrefresh_interval = \"1h\"\n[[secrets]]\nid = \"app/db\"\n",
    );
    let sk = spawn.start();
    let uri = "/secret?id=app/db:password&raw=true";
    assert_eq!(sk.get(uri).body, "Pa55-w0rd-XYZZY");
    assert_eq!(
        sk.get("/secret?id=app/key&raw=true").body,
        "api-key-PLUGH-42"
    );
    let file = values.path().join("values.toml");
    let edited = VALUES
        .replace("Pa55-w0rd-XYZZY", "edited-pw")
        .replace("api-key-PLUGH-42", "edited-key");
    std::fs::write(&file, edited).unwrap();
    crate::support::wait_until(std::time::Duration::from_secs(10), || {
        sk.get(uri).body == "edited-pw"
    });
    assert_eq!(
        sk.get("/secret?id=app/key&raw=true").body,
        "edited-key",
        "on-demand entries too"
    );
}

#[test]
fn change_stream_sends_an_event_per_rotation() {
    use std::io::{BufRead, BufReader, Write};
    let (spawn, values) = Spawn::file(
        VALUES,
        "[cache]\nrefresh_interval = \"1h\"\n[[secrets]]\nid = \"app/db\"\n",
    );
    let sk = spawn.start();
    let mut stream = std::net::TcpStream::connect(sk.addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(15)))
        .unwrap();
    write!(
        stream,
        "GET /watch?ids=app/db,/app/url HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nX-Aws-Parameters-Secrets-Token: {TOKEN}\r\n\r\n"
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut next_event = || {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(reader.read_line(&mut line).unwrap() > 0, "stream ended");
            if let Some(data) = line.trim_end().strip_prefix("data: ") {
                return serde_json::from_str::<serde_json::Value>(data).unwrap();
            }
        }
    };
    let first = next_event();
    let version = first["items"]["app/db"]["version"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(first["items"]["/app/url"]["version"], "1");
    assert!(
        !first.to_string().contains("Pa55"),
        "versions, never values"
    );
    std::fs::write(
        values.path().join("values.toml"),
        VALUES.replace("Pa55-w0rd-XYZZY", "rotated"),
    )
    .unwrap();
    let second = next_event();
    assert_eq!(second["changed"], serde_json::json!(["app/db"]));
    assert_ne!(
        second["items"]["app/db"]["version"].as_str().unwrap(),
        version
    );
    // Shutdown ends the stream instead of waiting out the grace period.
    let (code, _) = sk.terminate();
    assert_eq!(code, Some(0));
}

/// `listen.unix_allow_*`: a peer whose uid and gid are not listed gets a JSON 403 on every
/// request (checked with SO_PEERCRED), a listed group gets in. Needs root to act as another
/// user; elsewhere it says so and checks only the config path.
#[test]
fn unix_socket_peers_outside_the_allow_list_are_refused() {
    use std::os::unix::process::CommandExt;
    let (spawn, _values) = Spawn::file(
        VALUES,
        "[listen]\nunix_mode = \"0666\"\nunix_allow_groups = [\"12345\"]\n",
    );
    let sk = spawn.start();
    assert_eq!(
        sk.get_unix("/healthz").status,
        200,
        "sidekey's own user always may"
    );
    if !rustix::process::getuid().is_root() {
        eprintln!("not root: cannot connect as another user; peer checks not exercised");
        return;
    }
    // Run a copy of the binary (the build tree may not be readable by others) as `nobody`.
    let dir = sk.socket.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.join("sidekey-client");
    std::fs::copy(env!("CARGO_BIN_EXE_sidekey"), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let health_as = |gid: u32| {
        let out = std::process::Command::new(&bin)
            .args(["health", "--listen", "", "--unix-socket"])
            .arg(&sk.socket)
            .env_clear()
            .env("AWS_TOKEN", TOKEN)
            .uid(65534)
            .gid(gid)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = health_as(65534);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("403"), "{err}");
    assert_eq!(health_as(12345).0, Some(0));
    assert!(
        sk.stderr()
            .contains("Unix socket peer not allowed. uid=65534 gid=65534")
    );
}

/// `api.allow_*`: only listed names are served, on every route; the rest is a 403 before any
/// backend call, including secrets read through Parameter Store and paths.
#[test]
fn the_allow_list_limits_what_any_route_serves() {
    let (spawn, _values) = Spawn::file(
        VALUES,
        "[api]\nallow_secrets = [\"app/key\"]\nallow_parameters = [\"/app/url\"]\n",
    );
    let sk = spawn.start();
    for ok in [
        "/secret?id=app/key&raw=true",
        "/secretsmanager/get?secretId=app/key",
        "/v1/app/key",
        "/parameter?name=/app/url",
        "/systemsmanager/parameters/get?name=/app/url",
        "/watch?ids=app/key",
    ] {
        assert_eq!(sk.get(ok).status, 200, "{ok}");
    }
    for native in [
        "/secret?id=app/db",
        "/secret?id=app/db:password",
        "/parameter?name=/app/secure",
        "/parameters?path=/app",
        "/watch?ids=app/key,app/db",
    ] {
        let r = sk.get(native);
        assert_eq!(
            (r.status, r.json()["code"].as_str()),
            (403, Some("access_denied")),
            "{native}"
        );
    }
    for compat in [
        "/secretsmanager/get?secretId=app/db",
        "/v1/app/db",
        "/systemsmanager/parameters/get?name=/app/secure",
        "/systemsmanager/parameters/get?name=/aws/reference/secretsmanager/app/db",
    ] {
        let r = sk.get(compat);
        assert_eq!(
            (r.status, r.json()["__type"].as_str()),
            (403, Some("AccessDeniedException")),
            "{compat}"
        );
    }
}

/// Core dumps are off unless `process.core_dumps = true`; so are transparent huge pages.
#[test]
fn core_dumps_and_huge_pages_are_off_by_default() {
    let core_limit = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/limits"))
            .unwrap()
            .lines()
            .find(|l| l.starts_with("Max core file size"))
            .map(|l| {
                l.split_whitespace()
                    .skip(4)
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap()
    };
    let (spawn, _values) = Spawn::file(VALUES, "");
    let sk = spawn.start();
    assert_eq!(core_limit(sk.child.id()), "0 0");
    // Transparent huge pages are off for the server (small arenas stay small).
    if let Some(ours) = crate::support::thp_enabled(std::process::id()) {
        assert_eq!(ours, "1", "the test runs with THP allowed");
        assert_eq!(
            crate::support::thp_enabled(sk.child.id()).as_deref(),
            Some("0")
        );
    }
    let (spawn, _values) = Spawn::file(VALUES, "[process]\ncore_dumps = true\n");
    let sk = spawn.start();
    assert_eq!(
        core_limit(sk.child.id()),
        core_limit(std::process::id()),
        "inherited unchanged"
    );
}
