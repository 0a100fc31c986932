//! Every shipped example is exercised: client programs run against sidekey on the local file
//! source; deployment manifests parse and their embedded sidekey configs pass `check-config`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{Spawn, TOKEN};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn client_examples_read_a_secret_a_parameter_and_a_path() {
    let values = std::fs::read_to_string(root().join("examples/values.toml")).unwrap();
    let (spawn, _dir) = Spawn::file(&values, "");
    let sk = spawn.start();
    let url = format!("http://{}", sk.addr);
    let clients = root().join("examples/clients");
    let go = root().join(".venv/bin/go").display().to_string();
    for (program, args, script) in [
        ("sh", &[][..], "read.sh"),
        ("python3", &[], "read.py"),
        ("node", &[], "read.mjs"),
        (go.as_str(), &["run"], "read.go"),
    ] {
        let out = Command::new(program)
            .args(args)
            .arg(clients.join(script))
            // Go's build cache inside target/, so CI needs no home directory.
            .env("GOCACHE", root().join("target/go-cache"))
            .env("SIDEKEY_URL", &url)
            .env("AWS_TOKEN", TOKEN)
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{script}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("secret: correct-horse-battery-staple"),
            "{script}: {stdout}"
        );
        assert!(
            stdout.contains("parameter: https://example.com"),
            "{script}: {stdout}"
        );
        assert!(stdout.contains("path: 4 parameters"), "{script}: {stdout}");
    }
}

/// `sidekey check-config` with `args` and `env` must pass.
fn check_config(args: &[&str], env: &[(String, String)]) {
    let out = Command::new(env!("CARGO_BIN_EXE_sidekey"))
        .arg("check-config")
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// YAML documents as JSON, through PyYAML from the test venv.
fn yaml(path: &Path) -> Vec<serde_json::Value> {
    let python = root().join(".venv/bin/python");
    let out = Command::new(python)
        .args([
            "-c",
            "import json,sys,yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn ecs_task_definition_is_valid_and_its_sidekey_env_passes_check_config() {
    let text = std::fs::read_to_string(root().join("examples/ecs/task-definition.json")).unwrap();
    let task: serde_json::Value = serde_json::from_str(&text).unwrap();
    let containers = task["containerDefinitions"].as_array().unwrap();
    let sidekey = containers.iter().find(|c| c["name"] == "sidekey").unwrap();
    let app = containers.iter().find(|c| c["name"] == "app").unwrap();
    assert_eq!(app["dependsOn"][0]["condition"], "HEALTHY");
    assert_eq!(sidekey["healthCheck"]["command"][2], "health");
    let mut env: Vec<(String, String)> = sidekey["environment"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    env.push(("AWS_TOKEN".into(), "from-secrets".into()));
    check_config(&[], &env);
}

#[test]
fn kubernetes_and_compose_manifests_parse_and_embedded_configs_pass() {
    let docs = yaml(&root().join("examples/kubernetes/pod.yaml"));
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["ServiceAccount", "ConfigMap", "Pod"]);
    let config = docs[1]["data"]["sidekey.toml"].as_str().unwrap();
    let pod = &docs[2]["spec"];
    assert_eq!(
        pod["initContainers"][0]["restartPolicy"], "Always",
        "native sidecar"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sidekey.toml");
    std::fs::write(&path, config).unwrap();
    check_config(&["--config", path.to_str().unwrap()], &[]);

    let compose = yaml(&root().join("docker-compose.yml"));
    let sidekey = &compose[0]["services"]["sidekey"];
    let env: Vec<(String, String)> = sidekey["environment"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    check_config(&["--listen", "0.0.0.0:2773"], &env);
}

#[test]
fn systemd_example_config_passes_check_config() {
    let unit = std::fs::read_to_string(root().join("examples/systemd/sidekey.service")).unwrap();
    for directive in [
        "ExecReload=/bin/kill -HUP $MAINPID",
        "RuntimeDirectory=sidekey",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
    ] {
        assert!(unit.contains(directive), "{directive}");
    }
    let config = root().join("examples/systemd/sidekey.toml");
    // The group exists on the target host, not necessarily here.
    check_config(
        &["--config", config.to_str().unwrap()],
        &[("SIDEKEY_LISTEN__UNIX_GROUP".into(), "0".into())],
    );
}
