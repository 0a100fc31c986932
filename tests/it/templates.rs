//! Rendered files with real processes: render before readiness, permissions, re-render on
//! change, the change command exactly once per real change, and `render --once`.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use crate::server::VALUES;
use crate::support::{Spawn, wait_until};

const TEMPLATE: &str =
    "DB_PASSWORD={{ secret(\"app/db:password\") }}\nURL={{ parameter(\"/app/url\") }}\n";

#[test]
fn renders_before_ready_then_follows_changes_running_the_command_once() {
    let work = tempfile::tempdir().unwrap();
    let tmpl = work.path().join("app.env.tmpl");
    std::fs::write(&tmpl, TEMPLATE).unwrap();
    let out = work.path().join("out/app.env");
    let count = work.path().join("count");
    let config = format!(
        "[[templates]]\nsource = {:?}\ndestination = {:?}\nwait = {{ min = \"100ms\", max = \"1s\" }}\ncommand = [\"sh\", \"-c\", \"echo run >> {}\"]\n",
        tmpl.display().to_string(),
        out.display().to_string(),
        count.display()
    );
    let (spawn, values) = Spawn::file(VALUES, &config);
    let sk = spawn.start();
    // start() returned once /readyz stopped answering 503: the file must exist by then.
    assert_eq!(sk.get("/readyz").status, 200);
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "DB_PASSWORD=Pa55-w0rd-XYZZY\nURL=https://example.internal\n"
    );
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(!count.exists(), "the first render is not a change");

    let file = values.path().join("values.toml");
    std::fs::write(&file, VALUES.replace("Pa55-w0rd-XYZZY", "rotated-pw")).unwrap();
    wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .starts_with("DB_PASSWORD=rotated-pw\n")
    });
    wait_until(Duration::from_secs(10), || count.exists());
    // A change to a value the template does not use renders identical bytes: no command.
    std::fs::write(
        &file,
        VALUES
            .replace("Pa55-w0rd-XYZZY", "rotated-pw")
            .replace("api-key-PLUGH-42", "other"),
    )
    .unwrap();
    wait_until(Duration::from_secs(10), || {
        sk.get("/secret?id=app/key&raw=true").body == "other"
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        std::fs::read_to_string(&count).unwrap(),
        "run\n",
        "exactly one run per real change"
    );
    assert!(
        !sk.stderr().contains("rotated-pw"),
        "rendered values never reach logs"
    );
}

#[test]
fn render_once_for_init_containers() {
    let work = tempfile::tempdir().unwrap();
    let values = work.path().join("values.toml");
    std::fs::write(&values, VALUES).unwrap();
    let out = work.path().join("app.yaml");
    let run = |contents: &str, syntax: &str| {
        let cfg = work.path().join("sidekey.toml");
        std::fs::write(
            &cfg,
            format!(
                "[source]\nkind = \"file\"\nfile = {:?}\n[[templates]]\ncontents = {contents:?}\nsyntax = {syntax:?}\ndestination = {:?}\nmode = \"0640\"\n",
                values.display().to_string(),
                out.display().to_string()
            ),
        )
        .unwrap();
        Command::new(env!("CARGO_BIN_EXE_sidekey"))
            .args(["render", "--once", "--config"])
            .arg(&cfg)
            .env_clear()
            .output()
            .unwrap()
    };
    let ok = run(
        "password: {{resolve:secretsmanager:app/db:SecretString:password}}\n",
        "cloudformation",
    );
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "password: Pa55-w0rd-XYZZY\n"
    );
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o640
    );

    let bad = run("line one\n{{ undefined_thing }}\n", "jinja");
    assert_eq!(bad.status.code(), Some(1));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("line 2") && err.contains("inline template"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "password: Pa55-w0rd-XYZZY\n",
        "a failed render keeps the old file"
    );
    let missing = run("{{ secret(\"app/nope\") }}", "jinja");
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("app/nope"));
}

#[test]
fn templates_added_by_a_reload_are_rendered() {
    let (spawn, _values) = Spawn::file(VALUES, "");
    let sk = spawn.start();
    let out = sk.dir.path().join("added.txt");
    let config = format!(
        "{}[[templates]]\ncontents = \"key={{{{ secret(\\\"app/key\\\") }}}}\"\ndestination = {:?}\n",
        sk.config_text,
        out.display().to_string()
    );
    std::fs::write(&sk.config, config).unwrap();
    wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&out).is_ok_and(|s| s == "key=api-key-PLUGH-42")
    });
}
