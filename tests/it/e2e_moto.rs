//! Every route against moto, compared with what the AWS SDK gets from the same moto.

use std::time::Duration;

use aws_sdk_secretsmanager::primitives::Blob;
use aws_sdk_ssm::types::ParameterType;

use crate::support::{Moto, Reap, Sidekey, Spawn, block_on, clients, moto, unique, wait_until};

struct Seeded {
    db: String,
    other: String,
    bin: String,
    p: String,
}

const V1: &str = r#"{"user":"u1","password":"p1"}"#;
const V2: &str = r#"{"user":"u2","password":"p2","db":{"port":5432}}"#;

fn seed(url: &str) -> Seeded {
    let (sm, ssm) = clients(url);
    let s = Seeded {
        db: unique("e2e/db"),
        other: unique("e2e/other"),
        bin: unique("e2e/bin"),
        p: unique("/e2e"),
    };
    block_on(async {
        sm.create_secret()
            .name(&s.db)
            .secret_string(V1)
            .send()
            .await
            .unwrap();
        sm.put_secret_value()
            .secret_id(&s.db)
            .secret_string(V2)
            .send()
            .await
            .unwrap();
        sm.create_secret()
            .name(&s.other)
            .secret_string("plain")
            .send()
            .await
            .unwrap();
        sm.create_secret()
            .name(&s.bin)
            .secret_binary(Blob::new(vec![0u8, 1, 2, 255]))
            .send()
            .await
            .unwrap();
        let put = |name: String, value: &str, kind: ParameterType| {
            ssm.put_parameter()
                .name(name)
                .value(value)
                .r#type(kind)
                .overwrite(true)
                .send()
        };
        put(format!("{}/str", s.p), "hello", ParameterType::String)
            .await
            .unwrap();
        put(format!("{}/str", s.p), "hello2", ParameterType::String)
            .await
            .unwrap();
        put(
            format!("{}/secure", s.p),
            "s3cure",
            ParameterType::SecureString,
        )
        .await
        .unwrap();
        put(format!("{}/list", s.p), "a,b,c", ParameterType::StringList)
            .await
            .unwrap();
        ssm.label_parameter_version()
            .name(format!("{}/str", s.p))
            .parameter_version(1)
            .labels("stable")
            .send()
            .await
            .unwrap();
        for i in 0..12 {
            let depth = if i % 3 == 0 { "/deep" } else { "" };
            put(
                format!("{}/tree{depth}/p{i:02}", s.p),
                &format!("v{i}"),
                ParameterType::String,
            )
            .await
            .unwrap();
        }
    });
    s
}

fn start(url: &str, s: &Seeded, extra: &str) -> Sidekey {
    let config = format!(
        r#"
[cache]
refresh_interval = "1s"
{extra}
[[secrets]]
id = "{db}"
[[secrets]]
id = "{other}"
[[parameters]]
name = "{p}/str"
[[parameters]]
name = "{p}/list"
[[parameters]]
path = "{p}/tree"
recursive = true
"#,
        db = s.db,
        other = s.other,
        p = s.p
    );
    Spawn::aws(url, &config).start()
}

fn enc(s: &str) -> String {
    s.replace('/', "%2F")
}

#[test]
fn secrets_manager_routes_match_the_sdk() {
    let m = moto();
    let s = seed(&m.url);
    let sk = start(&m.url, &s, "");
    let (sm, _) = clients(&m.url);
    let sdk = block_on(sm.get_secret_value().secret_id(&s.db).send()).unwrap();

    let r = sk.get(&format!("/secretsmanager/get?secretId={}", enc(&s.db)));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["ARN"], sdk.arn().unwrap());
    assert_eq!(v["Name"], sdk.name().unwrap());
    assert_eq!(v["VersionId"], sdk.version_id().unwrap());
    assert_eq!(v["SecretString"], V2);
    assert_eq!(v["SecretBinary"], serde_json::Value::Null);
    assert_eq!(v["VersionStages"], serde_json::json!(sdk.version_stages()));
    let created = sdk.created_date().unwrap();
    let want = sidekey::source::Timestamp::new(created.secs(), created.subsec_nanos()).to_string();
    assert_eq!(v["CreatedDate"], want);
    assert_eq!(v["ResultMetadata"], serde_json::json!({}));

    let by_arn = sk.get(&format!(
        "/secretsmanager/get?secretId={}",
        sdk.arn().unwrap()
    ));
    assert_eq!(by_arn.json()["SecretString"], V2);
    let prev = sk.get(&format!(
        "/secretsmanager/get?secretId={}&versionStage=AWSPREVIOUS",
        enc(&s.db)
    ));
    assert_eq!(prev.json()["SecretString"], V1);
    let by_id = sk.get(&format!(
        "/secretsmanager/get?secretId={}&versionId={}",
        enc(&s.db),
        sdk.version_id().unwrap()
    ));
    assert_eq!(by_id.json()["SecretString"], V2);
    let bin = sk.get(&format!("/secretsmanager/get?secretId={}", enc(&s.bin)));
    assert_eq!(bin.json()["SecretBinary"], "AAEC/w==");
    assert_eq!(bin.json()["SecretString"], serde_json::Value::Null);
    let path_style = sk.get(&format!("/v1/{}", s.db));
    assert_eq!(path_style.json()["SecretString"], V2);
    let missing = sk.get("/secretsmanager/get?secretId=does-not-exist");
    assert_eq!(
        (missing.status, missing.json()["__type"].as_str()),
        (400, Some("ResourceNotFoundException"))
    );

    // Native routes and every REF syntax.
    assert_eq!(
        sk.get(&format!("/secret?id={}:password&raw=true", s.db))
            .body,
        "p2"
    );
    assert_eq!(
        sk.get(&format!(
            "/secret?id={}:password:AWSPREVIOUS&raw=true",
            s.db
        ))
        .body,
        "p1"
    );
    assert_eq!(
        sk.get(&format!("/secret?id={}&pointer=/db/port&raw=true", s.db))
            .body,
        "5432"
    );
    assert_eq!(
        sk.get(&format!(
            "/secret?id={}:user::&raw=true",
            sdk.arn().unwrap()
        ))
        .body,
        "u2"
    );
    let cfn = format!("{{{{resolve:secretsmanager:{}:SecretString:user}}}}", s.db);
    assert_eq!(sk.get(&format!("/secret?id={cfn}&raw=true")).body, "u2");
    let native = sk.get(&format!("/secret?id={}", s.other)).json();
    assert_eq!(
        (native["value"].as_str(), native["name"].as_str()),
        (Some("plain"), Some(s.other.as_str()))
    );

    // The Unix socket serves the same bytes.
    let uri = format!("/secretsmanager/get?secretId={}", enc(&s.db));
    assert_eq!(sk.get_unix(&uri).body, sk.get(&uri).body);
}

#[test]
fn parameter_store_routes_match_the_sdk() {
    let m = moto();
    let s = seed(&m.url);
    let sk = start(&m.url, &s, "");
    let (_, ssm) = clients(&m.url);
    let sdk = block_on(ssm.get_parameter().name(format!("{}/str", s.p)).send()).unwrap();
    let sdk = sdk.parameter().unwrap();

    let r = sk.get(&format!(
        "/systemsmanager/parameters/get?name={}",
        enc(&format!("{}/str", s.p))
    ));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = &r.json()["Parameter"];
    assert_eq!(v["Name"], sdk.name().unwrap());
    assert_eq!(v["Value"], "hello2");
    assert_eq!(v["Version"], 2);
    assert_eq!(v["Type"], "String");
    assert_eq!(v["ARN"], sdk.arn().unwrap());
    assert_eq!(v["Selector"], serde_json::Value::Null);
    assert_eq!(r.json()["ResultMetadata"], serde_json::json!({}));

    let name = enc(&format!("{}/str", s.p));
    let v1 = sk
        .get(&format!(
            "/systemsmanager/parameters/get?name={name}&version=1"
        ))
        .json();
    assert_eq!(
        (
            v1["Parameter"]["Value"].as_str(),
            v1["Parameter"]["Selector"].as_str()
        ),
        (Some("hello"), Some(":1"))
    );
    let label = sk
        .get(&format!(
            "/systemsmanager/parameters/get/?name={name}&label=stable"
        ))
        .json();
    assert_eq!(label["Parameter"]["Value"], "hello");
    let list = sk
        .get(&format!(
            "/systemsmanager/parameters/get?name={}",
            enc(&format!("{}/list", s.p))
        ))
        .json();
    assert_eq!(
        (
            list["Parameter"]["Type"].as_str(),
            list["Parameter"]["Value"].as_str()
        ),
        (Some("StringList"), Some("a,b,c"))
    );

    let secure = enc(&format!("{}/secure", s.p));
    let enc_v = sk
        .get(&format!("/systemsmanager/parameters/get?name={secure}"))
        .json();
    assert_ne!(
        enc_v["Parameter"]["Value"], "s3cure",
        "not decrypted without withDecryption"
    );
    let dec = sk
        .get(&format!(
            "/systemsmanager/parameters/get?name={secure}&withDecryption=true"
        ))
        .json();
    assert_eq!(
        (
            dec["Parameter"]["Value"].as_str(),
            dec["Parameter"]["Type"].as_str()
        ),
        (Some("s3cure"), Some("SecureString"))
    );

    let bridge = enc(&format!("/aws/reference/secretsmanager/{}", s.other));
    let b = sk.get(&format!(
        "/systemsmanager/parameters/get?name={bridge}&withDecryption=true"
    ));
    assert_eq!(b.json()["Parameter"]["Value"], "plain", "{}", b.body);

    let tree = sk
        .get(&format!("/parameters?path={}/tree&recursive=true", s.p))
        .json();
    let tree = tree.as_object().unwrap();
    assert_eq!(tree.len(), 12, "more than one page of GetParametersByPath");
    assert_eq!(tree[&format!("{}/tree/deep/p03", s.p)], "v3");
    let shallow = sk.get(&format!("/parameters?path={}/tree", s.p)).json();
    assert_eq!(shallow.as_object().unwrap().len(), 8);

    assert_eq!(
        sk.get(&format!("/parameter?name={}/str:1&raw=true", s.p))
            .body,
        "hello"
    );
    let cfn = format!("{{{{resolve:ssm:{}/str:1}}}}", s.p);
    assert_eq!(
        sk.get(&format!("/parameter?name={cfn}&raw=true")).body,
        "hello"
    );
    assert_eq!(
        sk.get(&format!(
            "/parameter?name={{{{resolve:ssm-secure:{}/secure}}}}&raw=true",
            s.p
        ))
        .body,
        "s3cure"
    );
    let missing = sk.get("/systemsmanager/parameters/get?name=%2Fno%2Fsuch");
    assert_eq!(
        (missing.status, missing.json()["__type"].as_str()),
        (400, Some("ParameterNotFound"))
    );
}

#[test]
fn rotation_is_picked_up_by_refresh_and_refresh_now() {
    let m = moto();
    let s = seed(&m.url);
    let sk = start(&m.url, &s, "");
    let (sm, ssm) = clients(&m.url);
    let uri = format!("/secret?id={}:password&raw=true", s.db);
    assert_eq!(sk.get(&uri).body, "p2");
    // An app long-polls the change stream instead of polling values.
    let watch = sk.get(&format!("/watch?ids={}", s.db)).json();
    let cursor = watch["cursor"].as_str().unwrap().to_owned();
    let (addr, watch_uri) = (
        sk.addr,
        format!("/watch?ids={}&since={cursor}&timeout=20s", s.db),
    );
    let watcher = std::thread::spawn(move || {
        let token = [("X-Aws-Parameters-Secrets-Token", crate::support::TOKEN)];
        crate::support::get(addr, &watch_uri, &token)
    });
    block_on(
        sm.put_secret_value()
            .secret_id(&s.db)
            .secret_string(r#"{"password":"p3"}"#)
            .send(),
    )
    .unwrap();
    let woke = watcher.join().unwrap().json();
    assert_eq!(woke["changed"], serde_json::json!([s.db]), "{woke}");
    assert_eq!(sk.get(&uri).body, "p3");
    // A new parameter under a prefetched path appears after the next walk.
    let added = format!("{}/tree/added", s.p);
    block_on(
        ssm.put_parameter()
            .name(&added)
            .value("new")
            .r#type(ParameterType::String)
            .send(),
    )
    .unwrap();
    wait_until(Duration::from_secs(15), || {
        sk.get(&format!("/parameter?name={added}&raw=true")).body == "new"
    });
    // refreshNow bypasses the TTL of an on-demand item.
    let lazy = format!("/secretsmanager/get?secretId={}", enc(&s.bin));
    assert_eq!(sk.get(&lazy).status, 200);
    block_on(
        sm.put_secret_value()
            .secret_id(&s.bin)
            .secret_string("now-text")
            .send(),
    )
    .unwrap();
    assert_eq!(
        sk.get(&lazy).json()["SecretString"],
        serde_json::Value::Null,
        "cached for the TTL"
    );
    assert_eq!(
        sk.get(&format!("{lazy}&refreshNow=true")).json()["SecretString"],
        "now-text"
    );
}

#[test]
fn stale_values_are_served_while_the_backend_is_down() {
    let m = Moto::start();
    let s = seed(&m.url);
    let sk = start(
        &m.url,
        &s,
        "max_stale = \"1h\"\n[aws]\nmax_attempts = 1\nconnect_timeout = \"200ms\"\ntimeout = \"1s\"\n",
    );
    let uri = format!("/secret?id={}:password&raw=true", s.db);
    let fresh = sk.get(&uri);
    assert_eq!((fresh.status, fresh.header("x-sidekey-stale")), (200, None));
    m.stop();
    wait_until(Duration::from_secs(20), || {
        sk.get(&uri).header("x-sidekey-stale") == Some("true")
    });
    let stale = sk.get(&uri);
    assert_eq!((stale.status, stale.body.as_str()), (200, "p2"));
    assert!(stale.header("age").is_some());
    let compat = sk.get(&format!("/secretsmanager/get?secretId={}", enc(&s.db)));
    assert_eq!(
        (compat.status, compat.header("x-sidekey-stale")),
        (200, Some("true"))
    );
    assert_eq!(sk.get("/readyz").status, 200);
    let down = sk.get(&format!(
        "/secretsmanager/get?secretId={}&refreshNow=true",
        enc(&s.db)
    ));
    assert!(
        down.status >= 500,
        "refreshNow reports the outage: {} {}",
        down.status,
        down.body
    );
}

#[test]
fn sdk_traffic_at_trace_level_does_not_leak_values() {
    let m = moto();
    let s = seed(&m.url);
    let mut spawn = Spawn::aws(
        &m.url,
        &format!("[log]\nlevel = \"trace\"\n[[secrets]]\nid = \"{}\"\n", s.db),
    );
    spawn.env.insert("RUST_LOG".into(), "trace".into());
    let sk = spawn.start();
    assert_eq!(
        sk.get(&format!("/secret?id={}:password&raw=true", s.db))
            .body,
        "p2"
    );
    let _ = sk.get(&format!(
        "/systemsmanager/parameters/get?name={}&withDecryption=true",
        enc(&format!("{}/secure", s.p))
    ));
    let (code, stderr) = sk.terminate();
    assert_eq!(code, Some(0));
    assert!(
        stderr.contains("TRACE") && stderr.contains("DEBUG"),
        "trace logging is on"
    );
    for value in ["p2", "u2", "s3cure"] {
        assert!(
            !stderr.contains(&format!("\"{value}\"")) && !stderr.contains(&format!("={value}")),
            "{value} leaked"
        );
    }
    assert!(!stderr.contains("s3cure"));
}

#[test]
fn get_prints_one_value_for_scripts() {
    let m = moto();
    let s = seed(&m.url);
    let run = |reference: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sidekey"))
            .args(["get", reference])
            .env_clear()
            .envs([
                ("AWS_ENDPOINT_URL", m.url.as_str()),
                ("AWS_ACCESS_KEY_ID", "testing"),
                ("AWS_SECRET_ACCESS_KEY", "testing"),
                ("AWS_REGION", "us-east-1"),
            ])
            .output()
            .unwrap()
    };
    let out = run(&format!("sm://{}:user", s.db));
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).as_ref()
        ),
        (Some(0), "u2")
    );
    let out = run(&format!("ssm://{}/str:1", s.p));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello");
    let out = run("sm://missing-secret");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ResourceNotFoundException"));
    let out = run("ambiguous-name");
    assert!(String::from_utf8_lossy(&out.stderr).contains("ambiguous"));
}

#[test]
fn credentials_are_checked_at_startup_when_asked() {
    let m = moto();
    let sk = Spawn::aws(&m.url, "[aws]\nvalidate_credentials = true\n").start();
    assert_eq!(sk.get("/readyz").status, 200);
    let dead = format!("http://127.0.0.1:{}", crate::support::free_port());
    let spawn = Spawn::aws(&dead, "");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sidekey"))
        .args(["run", "--listen", "127.0.0.1:0"])
        .env_clear()
        .envs(&spawn.env)
        .env("SIDEKEY_AWS__VALIDATE_CREDENTIALS", "true")
        .env("SIDEKEY_AWS__MAX_ATTEMPTS", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).is_empty(),
        "no listening line before the check"
    );
}

/// `sidekey exec ARGS` against moto, refreshing every second.
fn exec(m: &Moto, args: &[&str]) -> Reap {
    Reap::spawn(
        std::process::Command::new(env!("CARGO_BIN_EXE_sidekey"))
            .arg("exec")
            .args(args)
            .env_clear()
            .envs([
                ("AWS_ENDPOINT_URL", m.url.as_str()),
                ("AWS_ACCESS_KEY_ID", "testing"),
                ("AWS_SECRET_ACCESS_KEY", "testing"),
                ("AWS_REGION", "us-east-1"),
                ("SIDEKEY_CACHE__REFRESH_INTERVAL", "1s"),
                ("SIDEKEY_CACHE__JITTER", "0"),
                ("PATH", "/usr/bin:/bin"),
            ]),
    )
}

fn rotate(m: &Moto, id: &str, value: &str) {
    let (sm, _) = clients(&m.url);
    block_on(
        sm.put_secret_value()
            .secret_id(id)
            .secret_string(value)
            .send(),
    )
    .unwrap();
}

#[test]
fn exec_restarts_the_child_when_the_secret_rotates() {
    let m = moto();
    let s = seed(&m.url);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let script = format!(
        "echo \"$PW\" >> {}; trap 'exit 0' TERM; while :; do sleep 0.05; done",
        log.display()
    );
    let env = format!("PW={}:password", s.db);
    let child = exec(
        m,
        &[
            "--env",
            &env,
            "--on-change",
            "restart",
            "--wait",
            "100ms",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    let lines = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until(Duration::from_secs(15), || lines() == "p2\n");
    rotate(m, &s.db, r#"{"password":"p3"}"#);
    wait_until(Duration::from_secs(15), || lines() == "p2\np3\n");
    assert_eq!(child.terminate(), Some(0));
}

#[test]
fn exec_and_templates_signal_the_child_when_the_secret_rotates() {
    let m = moto();
    let s = seed(&m.url);
    let dir = tempfile::tempdir().unwrap();
    let (log, out, cfg) = (
        dir.path().join("log"),
        dir.path().join("out"),
        dir.path().join("sidekey.toml"),
    );
    std::fs::write(
        &cfg,
        format!(
            "[[templates]]\ncontents = '{{{{ secret(\"{}:password\") }}}}'\ndestination = {:?}\nsignal = \"HUP\"\nwait = {{ min = \"100ms\" }}\n",
            s.db,
            out.display().to_string()
        ),
    )
    .unwrap();
    // The traps are set before the first line, so a signal never finds the default action.
    let script = format!(
        "trap 'echo hup >> {0}' HUP; trap 'echo usr1 >> {0}' USR1; trap 'exit 0' TERM; \
         echo \"start $PW\" >> {0}; while :; do sleep 0.05; done",
        log.display()
    );
    let env = format!("PW={}:password", s.db);
    let child = exec(
        m,
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--env",
            &env,
            "--on-change",
            "signal:USR1",
            "--wait",
            "100ms",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    let lines = || {
        let mut l: Vec<String> = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect();
        l.sort();
        l
    };
    wait_until(Duration::from_secs(15), || lines() == ["start p2"]);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "p2");
    rotate(m, &s.db, r#"{"password":"p3"}"#);
    wait_until(Duration::from_secs(15), || {
        lines() == ["hup", "start p2", "usr1"]
    });
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "p3");
    assert_eq!(child.terminate(), Some(0), "signalled, never restarted");
}
