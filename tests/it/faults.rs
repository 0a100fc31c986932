//! Backend faults, injected by a proxy between sidekey and moto: refused connections, hangs,
//! slow answers, responses cut midway, 500s and throttling.

#![allow(
    clippy::disallowed_types,
    reason = "real processes and sockets run on real time"
)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ssm::types::ParameterType;

use crate::support::fault::{Fault, FaultProxy};
use crate::support::{Resp, Sidekey, Spawn, block_on, clients, moto, unique, wait_until};

/// Seeds a secret and a parameter directly in moto; returns their names.
fn seed(url: &str, secret_value: &str, parameter_value: &str) -> (String, String) {
    let secret = unique("faults/s");
    let parameter = format!("/{}/p", unique("faults"));
    put(
        url,
        &secret,
        secret_value,
        &parameter,
        parameter_value,
        true,
    );
    (secret, parameter)
}

/// Writes both values (creating them first when `create`) directly in moto, bypassing the proxy.
fn put(url: &str, secret: &str, sv: &str, parameter: &str, pv: &str, create: bool) {
    let (sm, ssm) = clients(url);
    block_on(async {
        if create {
            sm.create_secret()
                .name(secret)
                .secret_string(sv)
                .send()
                .await
                .unwrap();
        } else {
            sm.put_secret_value()
                .secret_id(secret)
                .secret_string(sv)
                .send()
                .await
                .unwrap();
        }
        ssm.put_parameter()
            .name(parameter)
            .value(pv)
            .r#type(ParameterType::String)
            .overwrite(!create)
            .send()
            .await
            .unwrap();
    });
}

/// Reads both values every 50 ms on a thread until dropped, keeping every response.
struct Reader {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<(Instant, Resp)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reader {
    fn start(sk: &Sidekey, uris: Vec<String>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr, s, l) = (sk.addr, stop.clone(), log.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                for uri in &uris {
                    let r = crate::support::get(
                        addr,
                        uri,
                        &[("X-Aws-Parameters-Secrets-Token", crate::support::TOKEN)],
                    );
                    l.lock().unwrap().push((Instant::now(), r));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Reader {
            stop,
            log,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<(Instant, Resp)> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

/// A minute of every kind of outage: cached reads all succeed (marked stale once a refresh has
/// failed), refreshes back off exponentially, and values written during the outage are served
/// within one refresh interval of the backend's return.
#[test]
fn a_minute_of_outage_serves_stale_backs_off_and_recovers() {
    let m = moto();
    let proxy = FaultProxy::start(&m.url);
    let (secret, parameter) = seed(&m.url, "before", "p-before");
    let config = format!(
        "[cache]\nrefresh_interval = \"8s\"\njitter = 0.0\nbackoff_min = \"250ms\"\nbackoff_max = \"8s\"\n\
         [aws]\nmax_attempts = 1\ntimeout = \"1s\"\n\
         [[secrets]]\nid = \"{secret}\"\n[[parameters]]\nname = \"{parameter}\"\n"
    );
    let sk = Spawn::aws(&proxy.url, &config).start();
    let uris = vec![
        format!("/secret?id={secret}&raw=true"),
        format!("/parameter?name={parameter}&raw=true"),
    ];
    assert_eq!(sk.get(&uris[0]).body, "before");
    let calls_before = sk.aws_calls("GetParameter");
    let reader = Reader::start(&sk, uris.clone());
    // Refuse last: refused connections never reach the proxy's log, so the attempt times it
    // records (for the backoff check) cover the first 50 s without a hole.
    let phases = [
        Fault::Status500,
        Fault::Throttle,
        Fault::Cut,
        Fault::Delay(Duration::from_secs(2)),
        Fault::Hang,
        Fault::Refuse,
    ];
    let outage = Instant::now();
    for (i, fault) in phases.into_iter().enumerate() {
        proxy.set(fault);
        if i == 2 {
            put(&m.url, &secret, "after", &parameter, "p-after", false);
        }
        std::thread::sleep(Duration::from_secs(10));
    }
    let back = Instant::now();
    let calls_during = sk.aws_calls("GetParameter") - calls_before;
    proxy.set(Fault::Pass);
    wait_until(Duration::from_secs(20), || {
        sk.get(&uris[0]).body == "after" && sk.get(&uris[1]).body == "p-after"
    });
    let recovered = back.elapsed();
    let reads = reader.finish();

    let during: Vec<&Resp> = reads
        .iter()
        .filter(|(at, _)| *at >= outage && *at < back)
        .map(|(_, r)| r)
        .collect();
    let failed: Vec<_> = during.iter().filter(|r| r.status != 200).collect();
    assert!(
        failed.is_empty(),
        "reads failed during the outage: {failed:?}"
    );
    assert!(
        during
            .iter()
            .all(|r| r.body == "before" || r.body == "p-before"),
        "the backend was unreachable, so only the old values can have been served"
    );
    let stale = during
        .iter()
        .filter(|r| r.header("x-sidekey-stale") == Some("true"))
        .count();
    let last_phase: Vec<_> = reads
        .iter()
        .filter(|(at, _)| *at >= back - Duration::from_secs(5) && *at < back)
        .collect();
    assert!(
        !last_phase.is_empty()
            && last_phase
                .iter()
                .all(|(_, r)| r.header("x-sidekey-stale") == Some("true")),
        "values are marked stale while refreshes fail"
    );

    // Backoff: the n-th retry waits within [d/2, d] for d = 250 ms · 2^(n-1) capped at 8 s, plus
    // the time the failed batch took: up to the 1 s timeout of the secret's call and then of
    // the parameter's.
    let attempts = proxy.calls("GetParameter", outage, back - Duration::from_secs(10));
    let gaps: Vec<f64> = attempts
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    for (n, gap) in gaps.iter().enumerate() {
        let nominal = (0.25 * f64::from(1u32 << n.min(10))).min(8.0);
        assert!(
            (nominal / 2.0 - 0.05..=nominal + 2.5).contains(gap),
            "retry {} waited {gap:.2} s, nominal {nominal} s: {gaps:.2?}",
            n + 1
        );
    }
    assert!(gaps.len() >= 6, "retries kept coming: {gaps:.2?}");
    // A retry every 250 ms without backoff would be 240 calls.
    assert!(
        (6..=20).contains(&calls_during),
        "{calls_during} GetParameter calls in 60 s"
    );
    assert!(
        recovered <= Duration::from_secs(8 + 1 + 2),
        "recovered {recovered:?} after the backend returned"
    );
    eprintln!(
        "outage: {} reads, {} stale, 0 failed; {calls_during} GetParameter calls in 60 s, gaps {gaps:.1?} s; \
         recovered {:.1} s after the backend returned",
        during.len(),
        stale,
        recovered.as_secs_f64()
    );
}

/// A template that cannot be written and a child that cannot be restarted after a rotation:
/// both are logged, the API keeps serving the new value, and the restart is retried until the
/// program is back.
#[test]
fn failed_renders_and_restarts_never_take_the_api_down() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let values = dir.path().join("values.toml");
    std::fs::write(&values, crate::server::VALUES).unwrap();
    let (out, log, app) = (
        dir.path().join("out.txt"),
        dir.path().join("log"),
        dir.path().join("app.sh"),
    );
    let script = format!(
        "#!/bin/sh\necho \"$PW\" >> {}\ntrap 'exit 0' TERM\nwhile :; do sleep 0.05; done\n",
        log.display()
    );
    std::fs::write(&app, &script).unwrap();
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = dir.path().join("sidekey.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[templates]]\ncontents = '{{{{ secret(\"app/db:password\") }}}}'\ndestination = {:?}\n",
            out.display().to_string()
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sidekey"));
    cmd.args(["exec", "--source-file"])
        .arg(&values)
        .arg("--config")
        .arg(&cfg)
        .args(["--serve", "--listen", "127.0.0.1:0"])
        .args(["--env", "PW=app/db:password", "--on-change", "restart"])
        .args(["--wait", "50ms", "--grace", "1s", "--"])
        .arg(&app)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_TOKEN", crate::support::TOKEN)
        .stdout(std::process::Stdio::piped());
    let mut sk = crate::support::Reap::spawn(&mut cmd);
    let mut stdout = BufReader::new(sk.child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = crate::support::listening_addr(&line);
    let read = |uri: &str| {
        crate::support::get(
            addr,
            uri,
            &[("X-Aws-Parameters-Secrets-Token", crate::support::TOKEN)],
        )
    };
    wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l == "Pa55-w0rd-XYZZY\n")
    });
    // The destination becomes a directory (unwritable even for root); the program disappears.
    std::fs::remove_file(&out).unwrap();
    std::fs::create_dir(&out).unwrap();
    std::fs::remove_file(&app).unwrap();
    std::fs::write(
        &values,
        crate::server::VALUES.replace("Pa55-w0rd-XYZZY", "rotated"),
    )
    .unwrap();
    wait_until(Duration::from_secs(10), || {
        let err = sk.stderr();
        err.contains("Render failed") && err.contains("Cannot restart the child")
    });
    let r = read("/secret?id=app/db:password&raw=true");
    assert_eq!((r.status, r.body.as_str()), (200, "rotated"));
    assert_eq!(read("/healthz").status, 200);
    assert_eq!(read("/readyz").status, 200);
    // The program comes back: the next retry starts it with the new value.
    std::fs::write(&app, &script).unwrap();
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o755)).unwrap();
    wait_until(Duration::from_secs(15), || {
        std::fs::read_to_string(&log).is_ok_and(|l| l == "Pa55-w0rd-XYZZY\nrotated\n")
    });
    assert!(!sk.stderr().contains("rotated"), "no value in the log");
    assert_eq!(sk.terminate(), Some(0));
}

/// Config for short fault tests: fast refreshes and retries, one attempt of at most 1 s.
fn quick(secret: &str, parameter: &str, extra: &str) -> String {
    format!(
        "[cache]\nrefresh_interval = \"1s\"\njitter = 0.0\nbackoff_min = \"100ms\"\nbackoff_max = \"500ms\"\n{extra}\n\
         [aws]\nmax_attempts = 1\ntimeout = \"1s\"\n\
         [[secrets]]\nid = \"{secret}\"\n[[parameters]]\nname = \"{parameter}\"\n"
    )
}

fn is_stale(sk: &Sidekey, uri: &str) -> bool {
    let r = sk.get(uri);
    assert_eq!(r.status, 200, "{}", r.body);
    r.header("x-sidekey-stale") == Some("true")
}

/// Each kind of fault: a cached value keeps being served (stale) and a miss gets the error the
/// contract names for it, on the native and the compatible route.
#[test]
fn every_fault_serves_stale_and_answers_misses_with_its_error() {
    let m = moto();
    let proxy = FaultProxy::start(&m.url);
    let (secret, parameter) = seed(&m.url, "s", "p");
    let sk = Spawn::aws(&proxy.url, &quick(&secret, &parameter, "")).start();
    let cached = format!("/parameter?name={parameter}&raw=true");
    let cases = [
        (Fault::Status500, 502, "transient", 500, "InternalFailure"),
        (
            Fault::Throttle,
            503,
            "throttled",
            400,
            "ThrottlingException",
        ),
        (Fault::Cut, 502, "transient", 502, "ConnectionError"),
        (
            Fault::Delay(Duration::from_secs(2)),
            504,
            "transient",
            504,
            "TimeoutError",
        ),
        (Fault::Hang, 504, "transient", 504, "TimeoutError"),
        (Fault::Refuse, 502, "transient", 502, "ConnectionError"),
    ];
    for (fault, status, code, compat_status, compat_type) in cases {
        proxy.set(Fault::Pass);
        wait_until(Duration::from_secs(10), || !is_stale(&sk, &cached));
        proxy.set(fault);
        wait_until(Duration::from_secs(10), || is_stale(&sk, &cached));
        assert_eq!(sk.get(&cached).body, "p", "{fault:?}");
        let missing = unique("faults/missing");
        let r = sk.get(&format!("/secret?id={missing}"));
        assert_eq!(
            (r.status, r.json()["code"].as_str()),
            (status, Some(code)),
            "{fault:?}: {}",
            r.body
        );
        let r = sk.get(&format!("/secretsmanager/get?secretId={missing}-compat"));
        assert_eq!(
            (r.status, r.json()["__type"].as_str()),
            (compat_status, Some(compat_type)),
            "{fault:?}: {}",
            r.body
        );
    }
    proxy.set(Fault::Pass);
    wait_until(Duration::from_secs(10), || !is_stale(&sk, &cached));
}

/// Past `max_stale` a value is no longer served: a clear 503 with a stable code, never the
/// old value; the backend's return brings it back.
#[test]
fn stale_values_expire_into_a_clear_503() {
    let m = moto();
    let proxy = FaultProxy::start(&m.url);
    let (secret, parameter) = seed(&m.url, "s-VALUE", "p-VALUE");
    let sk = Spawn::aws(
        &proxy.url,
        &quick(&secret, &parameter, "max_stale = \"3s\""),
    )
    .start();
    let native = format!("/secret?id={secret}");
    let compat = format!("/secretsmanager/get?secretId={secret}");
    proxy.set(Fault::Status500);
    wait_until(Duration::from_secs(10), || sk.get(&native).status == 503);
    let r = sk.get(&native);
    assert_eq!(r.json()["code"], "stale_limit_exceeded", "{}", r.body);
    let r = sk.get(&compat);
    assert_eq!(
        (r.status, r.json()["__type"].as_str()),
        (503, Some("StaleValueExpired"))
    );
    let r = sk.get(&format!("/parameter?name={parameter}"));
    assert_eq!(r.status, 503);
    for body in [r.body, sk.get(&native).body, sk.get(&compat).body] {
        assert!(!body.contains("VALUE"), "no stale value in {body}");
    }
    proxy.set(Fault::Pass);
    wait_until(Duration::from_secs(10), || sk.get(&native).status == 200);
}

/// A backend that accepts and never answers, under the default timeouts: cached reads,
/// readiness and health answer at once, a miss gets a 504 within the operation timeout, and
/// shutdown does not wait for the hung calls.
#[test]
fn a_hung_backend_blocks_no_read_readiness_or_shutdown() {
    let m = moto();
    let proxy = FaultProxy::start(&m.url);
    let (secret, parameter) = seed(&m.url, "s", "p");
    let config = format!(
        "[cache]\nrefresh_interval = \"1s\"\njitter = 0.0\n\
         [[secrets]]\nid = \"{secret}\"\n[[parameters]]\nname = \"{parameter}\"\n"
    );
    let sk = Spawn::aws(&proxy.url, &config).start();
    proxy.set(Fault::Hang);
    wait_until(Duration::from_secs(10), || {
        proxy.seen().iter().any(|s| s.fault == Fault::Hang)
    });
    let quick_get = |uri: &str| {
        let s = std::net::TcpStream::connect(sk.addr).unwrap();
        // A read blocked behind the hung call would wait for the 4 s attempt timeout.
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        crate::support::request(
            s,
            "GET",
            uri,
            &[("X-Aws-Parameters-Secrets-Token", crate::support::TOKEN)],
        )
    };
    for _ in 0..20 {
        assert_eq!(
            quick_get(&format!("/secret?id={secret}&raw=true")).body,
            "s"
        );
        assert_eq!(
            quick_get(&format!("/parameter?name={parameter}&raw=true")).body,
            "p"
        );
        assert_eq!(quick_get("/readyz").status, 200);
        assert_eq!(quick_get("/healthz").status, 200);
    }
    let started = Instant::now();
    let r = sk.get(&format!("/secret?id={}", unique("faults/hung")));
    let miss = started.elapsed();
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (504, Some("transient"))
    );
    assert!(miss < Duration::from_secs(15), "bounded by timeout = 10s");
    let stopping = Instant::now();
    let (code, _) = sk.terminate();
    let shutdown = stopping.elapsed();
    assert_eq!(code, Some(0));
    assert!(
        shutdown < Duration::from_secs(5),
        "shutdown took {shutdown:?}"
    );
    eprintln!(
        "hung backend: miss answered 504 in {:.1} s; shutdown took {:.2} s",
        miss.as_secs_f64(),
        shutdown.as_secs_f64()
    );
}
