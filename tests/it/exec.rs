//! `sidekey exec` with real child processes on the local file source.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::server::VALUES;
use crate::support::{Reap, wait_until};

fn sidekey_exec(dir: &tempfile::TempDir, args: &[&str], env: &[(&str, &str)]) -> Command {
    let values = dir.path().join("values.toml");
    if !values.exists() {
        std::fs::write(&values, VALUES).unwrap();
    }
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sidekey"));
    cmd.arg("exec")
        .arg("--source-file")
        .arg(&values)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied());
    cmd
}

fn output(cmd: &mut Command) -> (Option<i32>, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().unwrap();
    (
        status.code(),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

#[test]
fn injects_values_and_mirrors_the_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = output(&mut sidekey_exec(
        &dir,
        &[
            "--env",
            "PW=app/db:password",
            "--env",
            "URL=/app/url",
            "--expand",
            "DB_=app/db",
            "--resolve-env",
            "--",
            "sh",
            "-c",
            "echo \"$PW|$URL|$DB_USER|$INHERITED|$PLAIN\"; exit 7",
        ],
        &[("INHERITED", "sm://app/key"), ("PLAIN", "unchanged")],
    ));
    assert_eq!(code, Some(7), "{err}");
    assert_eq!(
        out.trim(),
        "Pa55-w0rd-XYZZY|https://example.internal|admin|api-key-PLUGH-42|unchanged"
    );
}

#[test]
fn an_unresolvable_reference_aborts_before_the_child_starts() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = output(&mut sidekey_exec(
        &dir,
        &[
            "--env",
            "PW=app/db:password",
            "--env",
            "X=app/nope",
            "--",
            "sh",
            "-c",
            "echo started",
        ],
        &[],
    ));
    assert_eq!(code, Some(1));
    assert!(out.is_empty(), "the child never ran");
    assert!(
        err.contains("X") && err.contains("ResourceNotFoundException"),
        "{err}"
    );
    assert!(!err.contains("Pa55"), "no value in messages");
    let (code, _, err) = output(&mut sidekey_exec(
        &dir,
        &["--env", "bad", "--", "true"],
        &[],
    ));
    assert_eq!(code, Some(64), "{err}");
}

#[test]
fn a_killed_child_exits_with_128_plus_the_signal() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, _) = output(&mut sidekey_exec(
        &dir,
        &["--", "sh", "-c", "kill -TERM $$"],
        &[],
    ));
    assert_eq!(code, Some(143));
}

#[test]
fn signals_are_forwarded_to_the_child() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ready");
    let script = format!(
        "trap 'echo got-hup; exit 3' HUP; touch {}; while :; do sleep 0.05; done",
        marker.display()
    );
    let child = sidekey_exec(&dir, &["--", "sh", "-c", &script], &[])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(10), || marker.exists());
    Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "got-hup");
}

#[test]
fn a_rotation_restarts_the_child_with_the_new_value() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let script = format!(
        "echo \"$PW\" >> {}; trap 'exit 0' TERM; while :; do sleep 0.05; done",
        log.display()
    );
    let mut child = sidekey_exec(
        &dir,
        &[
            "--env",
            "PW=app/db:password",
            "--on-change",
            "restart",
            "--wait",
            "100ms",
            "--grace",
            "2s",
            "--",
            "sh",
            "-c",
            &script,
        ],
        &[
            ("SIDEKEY_CACHE__REFRESH_INTERVAL", "1s"),
            ("SIDEKEY_CACHE__JITTER", "0"),
        ],
    )
    .spawn()
    .unwrap();
    wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.lines().count() == 1)
    });
    std::fs::write(
        dir.path().join("values.toml"),
        VALUES.replace("Pa55-w0rd-XYZZY", "rotated"),
    )
    .unwrap();
    wait_until(Duration::from_secs(15), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.lines().count() == 2)
    });
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "Pa55-w0rd-XYZZY\nrotated\n"
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(
        child.wait().unwrap().code(),
        Some(0),
        "SIGTERM reaches the child, whose code is mirrored"
    );
}

#[test]
fn serves_the_api_and_renders_templates_alongside_the_child() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.txt");
    let cfg = dir.path().join("sidekey.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[templates]]\ncontents = \"pw={{{{ secret(\\\"app/db:password\\\") }}}}\"\ndestination = {:?}\n",
            out.display().to_string()
        ),
    )
    .unwrap();
    let script = format!("cat {}; echo; while :; do sleep 0.05; done", out.display());
    let mut child = sidekey_exec(
        &dir,
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--serve",
            "--listen",
            "127.0.0.1:0",
            "--",
            "sh",
            "-c",
            &script,
        ],
        &[("AWS_TOKEN", crate::support::TOKEN)],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let stdout = child.stdout.take().unwrap();
    // Never leave the process behind when an assertion fails.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Kill(child);
    let mut lines = BufReader::new(stdout).lines();
    let addr = crate::support::listening_addr(&lines.next().unwrap().unwrap());
    assert_eq!(
        lines.next().unwrap().unwrap(),
        "pw=Pa55-w0rd-XYZZY",
        "the file is rendered before the child starts"
    );
    let r = crate::support::get(
        addr,
        "/secret?id=app/key&raw=true",
        &[("X-Aws-Parameters-Secrets-Token", crate::support::TOKEN)],
    );
    assert_eq!((r.status, r.body.as_str()), (200, "api-key-PLUGH-42"));
    Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(
        child.0.wait().unwrap().code(),
        Some(143),
        "the child's death by SIGTERM is mirrored"
    );
}

/// The parent pid and state of a process, from /proc.
fn ppid_and_state(pid: &str) -> Option<(u32, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    Some((fields.next()?.parse().ok()?, state))
}

#[test]
fn orphans_are_adopted_and_reaped() {
    let dir = tempfile::tempdir().unwrap();
    let gc = dir.path().join("gc.pid");
    // The inner shell exits at once, orphaning its background sleep.
    let script = format!(
        "sh -c 'sleep 0.3 & echo $! > {}'; while :; do sleep 0.05; done",
        gc.display()
    );
    let child = Reap::spawn(&mut sidekey_exec(&dir, &["--", "sh", "-c", &script], &[]));
    wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&gc).is_ok_and(|s| s.ends_with('\n'))
    });
    let pid = std::fs::read_to_string(&gc).unwrap().trim().to_owned();
    let (ppid, _) = ppid_and_state(&pid).expect("the orphan is still running");
    assert_eq!(ppid, child.pid(), "sidekey adopted the orphan");
    wait_until(Duration::from_secs(10), || ppid_and_state(&pid).is_none());
}

#[test]
fn template_commands_keep_their_exit_status_under_exec() {
    let dir = tempfile::tempdir().unwrap();
    let (out, cfg) = (dir.path().join("out"), dir.path().join("sidekey.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[[templates]]\ncontents = '{{{{ secret(\"app/db:password\") }}}}'\ndestination = {:?}\ncommand = [\"sh\", \"-c\", \"exit 3\"]\nwait = {{ min = \"10ms\" }}\n",
            out.display().to_string()
        ),
    )
    .unwrap();
    let child = Reap::spawn(&mut sidekey_exec(
        &dir,
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "while :; do sleep 0.05; done",
        ],
        &[],
    ));
    wait_until(Duration::from_secs(10), || out.exists());
    std::fs::write(
        dir.path().join("values.toml"),
        VALUES.replace("Pa55-w0rd-XYZZY", "rotated"),
    )
    .unwrap();
    wait_until(Duration::from_secs(10), || {
        child.stderr().contains("Change command")
    });
    let err = child.stderr();
    assert!(err.contains("exit status: 3"), "{err}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "rotated");
}

/// The server turns transparent huge pages off for itself; the flag survives `execve`, so exec
/// mode must leave it alone for the command.
#[test]
fn the_command_keeps_the_huge_page_setting_it_would_have_had() {
    let Some(ours) = crate::support::thp_enabled(std::process::id()) else {
        return; // a kernel without THP_enabled in /proc/PID/status
    };
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = output(&mut sidekey_exec(
        &dir,
        &["--", "sh", "-c", "grep THP_enabled /proc/self/status"],
        &[],
    ));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.split_whitespace().nth(1), Some(ours.as_str()), "{out}");
}
