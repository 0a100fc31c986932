//! Route behaviour without sockets: `Api::handle` over a cache backed by the fake source.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::*;
use crate::config::{AuthConfig, TokenSource};
use crate::source::fake::FakeSource;
use crate::source::{ErrorKind, SourceError};

const TOKEN: &str = "t0k3n";
const DB: &str = r#"{"user":"admin","password":"hunter2","nested":{"port":5432}}"#;

struct T {
    api: Api,
    fake: Arc<FakeSource>,
    stop: CancellationToken,
}

impl Drop for T {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn setup(strict: bool) -> T {
    let fake = Arc::new(FakeSource::new());
    fake.put_secret("db", DB);
    fake.put_secret("db", "{\"user\":\"admin\",\"password\":\"v2\"}");
    fake.put_secret_binary("bin", &[0, 1, 2, 255]);
    fake.put_parameter("/app/url", "https://x");
    fake.put_parameter_typed("/app/key", "SecureString", "sekrit", &["prod"]);
    fake.put_parameter_typed("/app/key", "SecureString", "sekrit2", &[]);
    let stop = CancellationToken::new();
    let settings = crate::cache::tests::settings();
    let cache = Cache::start(fake.clone(), settings, stop.clone(), &TaskTracker::new());
    let auth_cfg = AuthConfig {
        headers: vec![
            http::HeaderName::from_static("x-aws-parameters-secrets-token"),
            http::HeaderName::from_static("x-vault-token"),
        ],
        tokens: vec![TokenSource::Env("AWS_SESSION_TOKEN".into())],
    };
    let env: BTreeMap<String, String> = [("AWS_SESSION_TOKEN".to_owned(), TOKEN.to_owned())].into();
    let auth = Arc::new(Auth::resolve(&auth_cfg, &env).unwrap());
    let cfg = ApiConfig {
        path_prefix: "/v1/".into(),
        strict_query: strict,
        metrics_token: true,
        metrics_item_labels: strict,
        allow: Default::default(),
        max_roles: 2,
        allow_roles: None,
        failover: None,
    };
    let api = Api::new(
        cache,
        auth,
        &cfg,
        Arc::new(AtomicBool::new(true)),
        stop.clone(),
    );
    T { api, fake, stop }
}

impl T {
    async fn call(
        &self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> (u16, String, http::HeaderMap) {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let resp = self.api.handle(&b.body(()).unwrap()).await;
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            parts.status.as_u16(),
            String::from_utf8_lossy(&bytes).into_owned(),
            parts.headers,
        )
    }

    async fn get(&self, uri: &str) -> (u16, String) {
        let (s, b, _) = self
            .call("GET", uri, &[("X-Aws-Parameters-Secrets-Token", TOKEN)])
            .await;
        (s, b)
    }
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"))
}

#[tokio::test]
async fn security_checks_come_first_in_wcp_order() {
    let t = setup(false);
    let check = |s: u16, b: &str, want_s: u16, want_b: &str| {
        assert_eq!((s, b), (want_s, want_b));
    };
    let (s, b, _) = t.call("GET", "/ping", &[]).await;
    check(s, &b, 200, "healthy");
    let (s, b, _) = t.call("GET", "/secretsmanager/get?secretId=db", &[]).await;
    check(s, &b, 403, "Bad Token");
    let (s, b, _) = t.call("POST", "/secretsmanager/get?secretId=db", &[]).await;
    check(s, &b, 403, "Bad Token");
    let tok = ("X-Aws-Parameters-Secrets-Token", TOKEN);
    let (s, b, _) = t
        .call("POST", "/secretsmanager/get?secretId=db", &[tok])
        .await;
    check(s, &b, 405, "Not allowed");
    let (s, b, _) = t
        .call(
            "GET",
            "/secretsmanager/get?secretId=db",
            &[tok, ("X-Forwarded-For", "1.2.3.4")],
        )
        .await;
    check(s, &b, 400, "Forwarded");
    let (s, b, _) = t.call("GET", "/nope", &[tok]).await;
    check(s, &b, 404, "Not found");
    let (s, _, _) = t
        .call(
            "GET",
            "/secretsmanager/get?secretId=db",
            &[("x-vault-token", TOKEN)],
        )
        .await;
    assert_eq!(s, 200);
    let (s, _, _) = t
        .call(
            "GET",
            "/secretsmanager/get?secretId=db",
            &[("X-Aws-Parameters-Secrets-Token", "t0k3")],
        )
        .await;
    assert_eq!(s, 403);
    let (s, b, _) = t.call("GET", "/secret?id=db", &[]).await;
    assert_eq!((s, json(&b)["code"].as_str()), (403, Some("bad_token")));
    let (s, b, _) = t.call("GET", "/healthz", &[]).await;
    assert_eq!((s, json(&b)["status"].as_str()), (200, Some("ok")));
    let (s, _) = t.get(&format!("/secret?id={}", "a".repeat(9000))).await;
    assert_eq!(s, 414);
}

#[tokio::test]
async fn psle_secret_route() {
    let t = setup(false);
    let (s, b, h) = t
        .call(
            "GET",
            "/secretsmanager/get?secretId=db&cachebuster=1",
            &[("X-Aws-Parameters-Secrets-Token", TOKEN)],
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["cache-control"], "no-store");
    assert!(h.contains_key("age"));
    let v = json(&b);
    assert_eq!(v["Name"], "db");
    assert_eq!(v["VersionStages"], serde_json::json!(["AWSCURRENT"]));
    assert_eq!(v["SecretBinary"], serde_json::Value::Null);
    assert_eq!(v["ResultMetadata"], serde_json::json!({}));
    assert!(b.starts_with(r#"{"ARN":"#), "{b}");
    let order = [
        "\"CreatedDate\"",
        "\"Name\"",
        "\"SecretBinary\"",
        "\"SecretString\"",
        "\"VersionId\"",
    ];
    let pos: Vec<usize> = order.iter().map(|k| b.find(k).unwrap()).collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "PSLE field order: {b}");
    assert!(
        b.ends_with(r#""VersionStages":["AWSCURRENT"],"ResultMetadata":{}}"#),
        "{b}"
    );
    let (_, b) = t
        .get("/secretsmanager/get?secretId=db&versionStage=AWSPREVIOUS")
        .await;
    assert_eq!(json(&b)["SecretString"], DB);
    let (_, b) = t
        .get("/secretsmanager/get?secretId=db&versionId=db-v1")
        .await;
    assert_eq!(json(&b)["SecretString"], DB);
    let (_, b) = t.get("/secretsmanager/get?secretId=bin").await;
    assert_eq!(json(&b)["SecretBinary"], "AAEC/w==");
    assert_eq!(
        t.get("/secretsmanager/get").await,
        (400, "missing parameter secretId".into())
    );
    assert_eq!(
        t.get("/secretsmanager/get?secretId=").await,
        (400, "missing parameter secretId".into())
    );
    assert_eq!(
        t.get("/secretsmanager/get?secretId=db&refreshNow=yes")
            .await,
        (400, "invalid refreshNow value".into())
    );
    assert_eq!(t.get("/secretsmanager/get?secretId=%ZZ").await.0, 400);
    let (s, b) = t.get("/secretsmanager/get?secretId=missing").await;
    assert_eq!(s, 400);
    assert_eq!(json(&b)["__type"], "ResourceNotFoundException");
}

#[tokio::test]
async fn wcp_path_route_and_strict_mode() {
    let t = setup(true);
    let (s, b) = t
        .get("/v1/db?versionStage=AWSPREVIOUS&refreshNow=TRUE")
        .await;
    assert_eq!(s, 200);
    assert_eq!(json(&b)["SecretString"], DB);
    assert_eq!(t.get("/v1/").await, (400, "missing secret ID".into()));
    assert_eq!(
        t.get("/secretsmanager/get?secretId=db&x=1").await,
        (400, "unknown parameter: x".into())
    );
    assert_eq!(
        t.get("/v1/d%62").await.0,
        200,
        "path ids are percent-decoded once"
    );
}

#[tokio::test]
async fn psle_parameter_route() {
    let t = setup(false);
    let (s, b) = t
        .get("/systemsmanager/parameters/get?name=%2Fapp%2Fkey")
        .await;
    assert_eq!(s, 200);
    let v = json(&b);
    assert!(
        v["Parameter"]["Value"]
            .as_str()
            .unwrap()
            .starts_with("encrypted:")
    );
    assert_eq!(v["Parameter"]["Selector"], serde_json::Value::Null);
    assert_eq!(v["ResultMetadata"], serde_json::json!({}));
    let (_, b) = t
        .get("/systemsmanager/parameters/get/?name=%2Fapp%2Fkey&withDecryption=TRUE")
        .await;
    assert_eq!(json(&b)["Parameter"]["Value"], "sekrit2");
    let (_, b) = t.get("/systemsmanager/parameters/get?name=%2Fapp%2Fkey&withDecryption=true&label=prod&version=2").await;
    assert_eq!(
        json(&b)["Parameter"]["Value"],
        "sekrit",
        "the first selector wins"
    );
    assert_eq!(json(&b)["Parameter"]["Selector"], ":prod");
    let (_, b) = t.get("/systemsmanager/parameters/get?name=%2Fapp%2Fkey&withDecryption=true&version=2&label=prod").await;
    assert_eq!(json(&b)["Parameter"]["Version"], 2);
    assert_eq!(
        t.get("/systemsmanager/parameters/get").await,
        (400, "missing parameter name".into())
    );
    assert_eq!(
        t.get("/systemsmanager/parameters/get?name=/a&version=x")
            .await,
        (400, "invalid version value".into())
    );
    let (s, b) = t.get("/systemsmanager/parameters/get?name=%2Fnope").await;
    assert_eq!(
        (s, json(&b)["__type"].as_str()),
        (400, Some("ParameterNotFound"))
    );
}

#[tokio::test]
async fn native_routes_select_and_answer_raw() {
    let t = setup(false);
    assert_eq!(
        t.get("/secret?id=db:user&raw=true").await,
        (200, "admin".into())
    );
    assert_eq!(
        t.get("/secret?id=db::AWSPREVIOUS&pointer=/nested/port&raw=1")
            .await,
        (200, "5432".into())
    );
    assert_eq!(
        t.get("/secret?id={{resolve:secretsmanager:db:SecretString:password}}&raw=true")
            .await,
        (200, "v2".into())
    );
    let (s, b) = t.get("/secret?id=db&key=password").await;
    assert_eq!((s, json(&b)["value"].as_str()), (200, Some("v2")));
    let (_, b) = t.get("/secret?id=bin").await;
    assert_eq!(
        (json(&b)["value"].as_str(), json(&b)["encoding"].as_str()),
        (Some("AAEC/w=="), Some("base64"))
    );
    let (s, b) = t.get("/parameter?name=/app/key").await;
    assert_eq!((s, json(&b)["value"].as_str()), (200, Some("sekrit2")));
    assert_eq!(
        t.get("/parameter?name=/app/key:1&raw=true").await,
        (200, "sekrit".into())
    );
    let (s, b) = t.get("/parameters?path=/app/").await;
    assert_eq!(s, 200);
    assert_eq!(
        json(&b),
        serde_json::json!({"/app/key": "sekrit2", "/app/url": "https://x"})
    );
    for (uri, status, code) in [
        ("/secret", 400, "missing_parameter"),
        ("/secret?id=db&bogus=1", 400, "unknown_parameter"),
        ("/secret?id=db:user&key=password", 400, "invalid_reference"),
        (
            "/secret?id={{resolve:ssm:/app/url}}",
            400,
            "invalid_reference",
        ),
        ("/secret?id=db&key=nope", 404, "json_key_not_found"),
        ("/secret?id=db&pointer=nested", 400, "invalid_reference"),
        ("/secret?id=bin&key=x", 400, "not_json"),
        ("/parameter?name=/app/url&key=x", 400, "not_json"),
        ("/secret?id=missing", 404, "not_found"),
        ("/parameters?path=app", 400, "invalid_reference"),
        (
            "/parameters?path=/app&recursive=maybe",
            400,
            "invalid_parameter",
        ),
    ] {
        let (s, b) = t.get(uri).await;
        assert_eq!(
            (s, json(&b)["code"].as_str()),
            (status, Some(code)),
            "{uri}: {b}"
        );
    }
}

#[tokio::test]
async fn stale_values_are_marked_and_errors_never_echo_values() {
    let t = setup(false);
    assert_eq!(t.get("/secret?id=db&key=user&raw=true").await.0, 200);
    t.fake.fail_with(Some(
        SourceError::new(ErrorKind::Throttled, "ThrottlingException", "Rate exceeded")
            .with_status(400),
    ));
    let (s, b, h) = t
        .call(
            "GET",
            "/secretsmanager/get?secretId=db&refreshNow=true",
            &[("X-Aws-Parameters-Secrets-Token", TOKEN)],
        )
        .await;
    assert_eq!(
        (s, json(&b)["__type"].as_str()),
        (400, Some("ThrottlingException")),
        "refreshNow reports the error"
    );
    assert!(!h.contains_key("x-sidekey-stale"));
    let (s, _, h) = t
        .call(
            "GET",
            "/secret?id=db&refreshNow=false",
            &[("X-Aws-Parameters-Secrets-Token", TOKEN)],
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        h["x-sidekey-stale"], "true",
        "the failed refresh marks the kept value stale"
    );
    for uri in [
        "/secret?id=db&key=nope",
        "/secret?id=db:password:x:y:z",
        "/parameter?name=/app/url&pointer=/x",
    ] {
        let (_, b) = t.get(uri).await;
        assert!(
            !b.contains("hunter2") && !b.contains("v2\"") && !b.contains("https://x"),
            "{uri}: {b}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn watch_answers_versions_then_long_polls_for_changes() {
    let t = setup(false);
    let (s, b) = t.get("/watch?ids=db,/app/url&id=missing").await;
    assert_eq!(s, 200, "{b}");
    let v = json(&b);
    assert_eq!(v["items"]["db"]["version"], "db-v2");
    assert_eq!(v["items"]["/app/url"]["version"], "1");
    assert_eq!(v["items"]["missing"]["error"], "not_found");
    assert!(
        !b.contains("admin") && !b.contains("https://x"),
        "never values: {b}"
    );
    let cursor = v["cursor"].as_str().unwrap().to_owned();

    let (_, b) = t
        .get(&format!("/watch?ids=db&since={cursor}&timeout=0s"))
        .await;
    assert_eq!(json(&b)["changed"], serde_json::json!([]), "nothing moved");

    let poll_uri = format!("/watch?ids=db,/app/url&since={cursor}&timeout=60s");
    let poll = t.get(&poll_uri);
    let rotate = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        t.fake.put_secret("db", "{\"password\":\"v3\"}");
        t.get("/secret?id=db&refreshNow=true").await
    };
    let ((s, b), _) = tokio::join!(poll, rotate);
    assert_eq!(s, 200);
    let v = json(&b);
    assert_eq!(v["changed"], serde_json::json!(["db"]));
    assert_eq!(v["items"]["db"]["version"], "db-v3");
    assert_ne!(v["cursor"], cursor.as_str());

    for (uri, code) in [
        ("/watch", "missing_parameter"),
        ("/watch?ids=db&since=x", "invalid_parameter"),
        ("/watch?ids=db&timeout=1h", "invalid_parameter"),
        ("/watch?ids=db&x=1", "unknown_parameter"),
        ("/watch?ids=a%20b", "invalid_reference"),
    ] {
        let (s, b) = t.get(uri).await;
        assert_eq!((s, json(&b)["code"].as_str()), (400, Some(code)), "{uri}");
    }
}

#[tokio::test]
async fn status_lists_items_and_metrics_count_requests_without_values() {
    let t = setup(false);
    let targets = vec![crate::cache::Target {
        key: Key::Secret(SecretKey::current("db")),
        interval: Duration::from_secs(300),
    }];
    t.api.cache.configure(targets).await.unwrap();
    assert_eq!(t.get("/parameter?name=/app/url").await.0, 200);
    let (s, body) = t.get("/status").await;
    assert_eq!(s, 200);
    let status = json(&body);
    assert_eq!(status["ready"], true);
    let items = status["items"].as_array().unwrap();
    let db = items.iter().find(|i| i["id"] == "db").unwrap();
    assert_eq!(db["kind"], "secret");
    assert_eq!(db["origin"], "prefetch");
    assert_eq!(db["interval_seconds"], 300);
    assert!(db["next_refresh_seconds"].as_u64().unwrap() <= 300);
    assert!(db["version"].is_string());
    let url = items.iter().find(|i| i["id"] == "/app/url").unwrap();
    assert_eq!(url["origin"], "on_demand");
    assert!(url["expires_in_seconds"].as_u64().is_some());
    assert!(url.get("next_refresh_seconds").is_none());
    let (s, _, _) = t.call("GET", "/metrics", &[]).await;
    assert_eq!(s, 403, "the token guards metrics by default");
    let (s, text) = t.get("/metrics").await;
    assert_eq!(s, 200);
    assert!(text.contains("sidekey_requests_total{route=\"status\",status=\"200\"}"));
    assert!(text.contains("sidekey_cache_items{origin=\"prefetch\"} 1"));
    assert!(
        !text.contains("sidekey_item_age_seconds"),
        "ids only when opted in"
    );
    for (body, what) in [(&body, "status"), (&text, "metrics")] {
        for value in ["hunter2", "https://x", "admin"] {
            assert!(!body.contains(value), "{what} leaks {value}");
        }
    }
    let strict = setup(true);
    strict.get("/secret?id=db").await;
    let (_, text) = strict.get("/metrics").await;
    assert!(
        text.contains("sidekey_item_age_seconds{kind=\"secret\",id=\"db\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn compatible_bodies_are_made_once_per_version_and_hidden_from_debug() {
    let t = setup(false);
    let uri = "/secretsmanager/get?secretId=db";
    let (s, first) = t.get(uri).await;
    assert_eq!(
        (
            s,
            json(&first)["SecretString"]
                .as_str()
                .map(|v| v.contains("v2"))
        ),
        (200, Some(true))
    );
    let key = Key::Secret(crate::source::SecretKey::current("db"));
    let entry = t.api.cache.store().get(&key).unwrap();
    let kept = entry.rendered.get().expect("the first read keeps its body");
    assert_eq!(kept, first.as_bytes());
    assert_eq!(
        t.get(uri).await,
        (200, first.clone()),
        "later reads share it"
    );
    let debug = format!("{entry:?}");
    assert!(
        debug.contains("Rendered(set)") && !debug.contains("admin"),
        "{debug}"
    );
    // A new version is a new entry with a body of its own.
    t.fake.put_secret("db", "{\"password\":\"v3\"}");
    let (s, fresh) = t.get(&format!("{uri}&refreshNow=true")).await;
    assert_eq!(s, 200);
    assert!(fresh.contains("v3") && !fresh.contains("v2"), "{fresh}");
    assert_eq!(t.get(uri).await, (200, fresh));
}
