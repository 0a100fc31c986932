//! Malformed and hostile requests against the real binary, while a well-behaved client keeps
//! reading: every request gets a 4xx in its route's error shape (native JSON, or the compatible
//! routes' documented bodies), requests hyper cannot parse get its bare 4xx and a closed
//! connection, slowloris connections are closed, and nothing panics.

#![allow(
    clippy::disallowed_types,
    reason = "real processes and sockets run on real time"
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::server::VALUES;
use crate::support::{Spawn, http::parse};

/// The error shape a request must be answered in.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    /// `{"code","message"}` JSON.
    Native,
    /// The peers' shapes: their fixed texts, or `{"__type","message"}` JSON.
    Compat,
    /// Rejected by hyper before routing: a bodiless 4xx, then the connection closes.
    Bare,
}

struct Case {
    what: String,
    raw: Vec<u8>,
    shape: Shape,
}

const TOK: &str = "X-Aws-Parameters-Secrets-Token: test-token-abc123\r\n";

fn get(target: &str, shape: Shape) -> Case {
    with("GET", target, &format!("{TOK}Connection: close\r\n"), shape)
}

fn with(method: &str, target: &str, headers: &str, shape: Shape) -> Case {
    Case {
        what: format!("{method} {}", target.chars().take(80).collect::<String>()),
        raw: format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\n{headers}\r\n").into_bytes(),
        shape,
    }
}

fn bytes(what: &str, raw: &[u8], shape: Shape) -> Case {
    Case {
        what: what.to_owned(),
        raw: raw.to_vec(),
        shape,
    }
}

fn cases() -> Vec<Case> {
    use Shape::{Bare, Compat, Native};
    let mut c = Vec::new();
    // Bad percent-encoding and invalid UTF-8, on every route that takes a value.
    for bad in ["%zz", "%", "%4", "%C3%28", "%FF%FE", "a%2", "%%41"] {
        for route in ["/secret?id=", "/parameter?name=", "/parameters?path="] {
            c.push(get(&format!("{route}{bad}"), Native));
        }
        for route in [
            "/secretsmanager/get?secretId=",
            "/systemsmanager/parameters/get?name=",
            "/v1/",
        ] {
            c.push(get(&format!("{route}{bad}"), Compat));
        }
    }
    // Duplicate and unknown parameters (native routes are strict).
    for target in [
        "/secret?id=app/key&id=app/key",
        "/secret?id=app/db&key=user&key=password",
        "/secret?id=app/key&raw=true&raw=false",
        "/parameter?name=/app/url&name=/app/url",
        "/parameters?path=/app&path=/app",
        "/parameters?path=/app&recursive=true&recursive=false",
        "/secret?id=app/key&foo=1",
        "/secret?id=app/key&=x",
        "/secret?id=app/key&ID=x",
        "/parameter?name=/app/url&withdecryption=true",
        "/parameters?path=/app&recurse=1",
        "/watch?ids=app/key&bogus=1",
        "/watch?ids=app/key&timeout=abc",
        "/watch?ids=app/key&timeout=999999s",
        "/watch?ids=app/key&since=not-a-cursor",
        "/watch?ids=",
        "/secret?id=app/key&refreshNow=maybe",
        "/parameter?name=/app/url&withDecryption=2",
        "/secret?id=app/db&pointer=no-slash",
        "/secret?id=app/key&key=x",
        "/secret?id=app/db&key=missing",
        "/secret?id=app/db&key=a&pointer=/b",
    ] {
        c.push(get(target, Native));
    }
    for target in [
        "/secretsmanager/get",
        "/secretsmanager/get?secretId=",
        "/secretsmanager/get?secretId=app/key&refreshNow=maybe",
        "/systemsmanager/parameters/get",
        "/systemsmanager/parameters/get?name=/app/url&withDecryption=perhaps",
        "/v1/",
    ] {
        c.push(get(target, Compat));
    }
    // Invalid references.
    let long = "x".repeat(3000);
    for r in [
        "",
        "{{resolve:ssm:}}",
        "{{resolve:foo:bar}}",
        "{{resolve:secretsmanager:db:SecretBinary}}",
        "{{resolve:secretsmanager:}}",
        "arn:aws:secretsmanager:",
        "arn:aws:ssm:us-east-1:1:parameter",
        "arn:aws:iam::123456789012:role/x",
        "arn:nope:secretsmanager:us-east-1:123456789012:secret:x",
        "sm://",
        "ssm://",
        ":::::",
        "%00",
        "%0d%0aX-Injected:%201",
        "a%09b",
        "app/db:password:AWSCURRENT:some-id",
        "/app/url:",
        long.as_str(),
    ] {
        c.push(get(&format!("/secret?id={r}"), Native));
        c.push(get(&format!("/parameter?name={r}"), Native));
    }
    // Path traversal in ids and paths: names, never files.
    for target in [
        "/secret?id=../../etc/passwd",
        "/secret?id=..%2F..%2Fetc%2Fpasswd",
        "/secret?id=file:///etc/passwd",
        "/parameter?name=/app/../../etc/passwd",
        "/parameters?path=/../..",
        "/parameters?path=..",
    ] {
        c.push(get(target, Native));
    }
    for target in [
        "/v1/..%2F..%2Fetc%2Fpasswd",
        "/v1/../../etc/passwd",
        "/secretsmanager/get?secretId=../../etc/passwd",
        "/systemsmanager/parameters/get?name=/../../etc/passwd",
        "/../../etc/passwd",
        "/etc/passwd",
    ] {
        c.push(get(target, Compat));
    }
    // Wrong methods.
    for method in [
        "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO", "HEAD",
    ] {
        let h = format!("{TOK}Connection: close\r\n");
        c.push(with(method, "/secret?id=app/key", &h, Native));
        c.push(with(
            method,
            "/secretsmanager/get?secretId=app/key",
            &h,
            Compat,
        ));
    }
    // No, wrong or forwarded tokens.
    for (headers, target, shape) in [
        ("", "/secret?id=app/key", Native),
        ("", "/secretsmanager/get?secretId=app/key", Compat),
        (
            "X-Aws-Parameters-Secrets-Token: wrong\r\n",
            "/secret?id=app/key",
            Native,
        ),
        (
            "X-Aws-Parameters-Secrets-Token: \r\n",
            "/parameter?name=/app/url",
            Native,
        ),
        ("X-Vault-Token: test-token-abc12\r\n", "/v1/app/key", Compat),
        (
            "X-Aws-Parameters-Secrets-Token: test-token-abc123x\r\n",
            "/status",
            Native,
        ),
        ("", "/metrics", Native),
        ("", "/watch?ids=app/key", Native),
        (
            &format!("{TOK}X-Forwarded-For: 10.0.0.1\r\n"),
            "/secret?id=app/key",
            Native,
        ),
        (
            &format!("{TOK}X-Forwarded-For: 10.0.0.1\r\n"),
            "/secretsmanager/get?secretId=app/key",
            Compat,
        ),
    ] {
        c.push(with(
            "GET",
            target,
            &format!("{headers}Connection: close\r\n"),
            shape,
        ));
    }
    // Overlong URIs and headers, header floods.
    let huge = "a".repeat(9 * 1024);
    c.push(get(&format!("/secret?id={huge}"), Native));
    c.push(get(&format!("/parameters?path=/{huge}"), Native));
    c.push(get(&format!("/secretsmanager/get?secretId={huge}"), Compat));
    c.push(get(&format!("/v1/{huge}"), Compat));
    for (kib, shape) in [(20, Native), (70, Bare)] {
        c.push(with(
            "GET",
            "/secret?id=app/key",
            &format!("{TOK}X-Big: {}\r\n", "b".repeat(kib * 1024)),
            shape,
        ));
    }
    c.push(with(
        "GET",
        "/v1/app/key",
        &format!("{TOK}X-Big: {}\r\n", "b".repeat(20 * 1024)),
        Compat,
    ));
    let flood: String = (0..150).map(|i| format!("X-Flood-{i}: v\r\n")).collect();
    c.push(with(
        "GET",
        "/secret?id=app/key",
        &format!("{TOK}{flood}"),
        Bare,
    ));
    // Bytes that are not HTTP/1.1.
    for (what, raw) in [
        ("binary", &b"\x00\x01\x02\x03garbage\r\n\r\n"[..]),
        ("HTTP/9.9", b"GET /ping HTTP/9.9\r\n\r\n"),
        ("no version", b"GET /ping\r\n\r\n"),
        ("not a request", b"HELLO WORLD\r\n\r\n"),
        ("h2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        ("TLS hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
        (
            "space in header name",
            b"GET /ping HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n",
        ),
        (
            "no colon",
            b"GET /ping HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n",
        ),
        (
            "folded header",
            b"GET /ping HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n  folded\r\n\r\n",
        ),
        (
            "negative length",
            b"GET /ping HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        ),
        (
            "two lengths",
            b"GET /ping HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        ),
        (
            "huge length",
            b"GET /ping HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        ),
        (
            "control in target",
            b"GET /pi\x01ng HTTP/1.1\r\nHost: a\r\n\r\n",
        ),
        (
            "NUL in header",
            b"GET /ping HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n",
        ),
    ] {
        c.push(bytes(what, raw, Bare));
    }
    // A head hyper accepts with a body it cannot decode: answered (here 403) before the body.
    c.push(bytes(
        "bad chunk",
        b"GET /secret?id=app/key HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
        Native,
    ));
    c
}

/// Sends one case on a fresh connection and checks the answer.
fn check(addr: SocketAddr, case: &Case) -> Result<(), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(&case.raw);
    let mut raw = Vec::new();
    // A reset after hyper's answer is fine: what arrived is what counts.
    let _ = s.read_to_end(&mut raw);
    if raw.is_empty() {
        // Closing without a word is a fair answer to bytes that are not HTTP/1.1 at all.
        return if case.shape == Shape::Bare {
            Ok(())
        } else {
            Err("no answer".into())
        };
    }
    let r = parse(&raw);
    if !(400..500).contains(&r.status) {
        return Err(format!("status {}: {}", r.status, r.body));
    }
    let json = serde_json::from_str::<serde_json::Value>(&r.body).ok();
    let ok = match case.shape {
        Shape::Native => json.is_some_and(|j| j["code"].is_string() && j["message"].is_string()),
        Shape::Compat => {
            json.is_some_and(|j| j["__type"].is_string())
                || (!r.body.is_empty()
                    && r.header("content-type") == Some("text/plain; charset=utf-8"))
        }
        Shape::Bare => r.body.is_empty() && r.header("connection") == Some("close"),
    };
    // HEAD answers carry no body by definition.
    if ok || (case.raw.starts_with(b"HEAD ") && r.status == 405) {
        Ok(())
    } else {
        Err(format!(
            "{:?} shape expected, got {}: {:?}",
            case.shape, r.status, r.body
        ))
    }
}

#[test]
fn a_hundred_hostile_requests_get_4xx_in_their_shape_while_others_are_served() {
    let (spawn, _values) = Spawn::file(VALUES, "[listen]\nheader_timeout = \"1s\"\n");
    let sk = spawn.start();
    let addr = sk.addr;
    // A well-behaved client, reading all along.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let good = {
        let (stop, served) = (stop.clone(), served.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let mut s = TcpStream::connect(addr).unwrap();
                write!(s, "GET /secret?id=app/key&raw=true HTTP/1.1\r\nHost: a\r\n{TOK}Connection: close\r\n\r\n").unwrap();
                let mut raw = Vec::new();
                if let Err(e) = s.read_to_end(&mut raw) {
                    panic!(
                        "good read failed after {} reads: {e}; got {:?}",
                        served.load(Ordering::SeqCst),
                        String::from_utf8_lossy(&raw)
                    );
                }
                let r = parse(&raw);
                assert_eq!((r.status, r.body.as_str()), (200, "api-key-PLUGH-42"));
                served.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    // Slowloris: heads trickled a byte at a time are cut off by header_timeout.
    let slow: Vec<_> = (0..20)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                let started = Instant::now();
                for b in b"GET /secret?id=app/key HTTP/1.1\r\nHost: x\r\nX-Slow: "
                    .iter()
                    .cycle()
                {
                    if s.write_all(&[*b]).is_err() {
                        break;
                    }
                    let mut buf = [0; 64];
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => break,
                    }
                    assert!(started.elapsed() < Duration::from_secs(10), "never cut off");
                }
                started.elapsed()
            })
        })
        .collect();

    let cases = cases();
    assert!(cases.len() >= 100, "{} cases", cases.len());
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|c| check(addr, c).err().map(|e| format!("{}: {e}", c.what)))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // HTTP/1.0 and pipelining are served properly.
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET /secret?id=app/key&raw=true HTTP/1.0\r\n{TOK}\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let r = parse(&raw);
    assert_eq!((r.status, r.body.as_str()), (200, "api-key-PLUGH-42"));
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /ping HTTP/1.1\r\nHost: a\r\n\r\nGET /secret?id=%zz HTTP/1.1\r\nHost: a\r\n{TOK}\r\n\
         GET /secret?id=app/key&raw=true HTTP/1.1\r\nHost: a\r\n{TOK}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    let statuses: Vec<&str> = text
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "400", "200"], "{text}");
    assert!(text.ends_with("api-key-PLUGH-42"));

    let cut: Vec<Duration> = slow.into_iter().map(|t| t.join().unwrap()).collect();
    stop.store(true, Ordering::SeqCst);
    good.join().unwrap();
    assert!(served.load(Ordering::SeqCst) > 10);
    let err = sk.stderr();
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(sk.get("/healthz").status, 200);
    eprintln!(
        "hostile: {} requests answered in shape; 20 slowloris connections cut after {:.1}–{:.1} s; \
         {} good reads served meanwhile",
        cases.len(),
        cut.iter().min().unwrap().as_secs_f64(),
        cut.iter().max().unwrap().as_secs_f64(),
        served.load(Ordering::SeqCst)
    );
}
