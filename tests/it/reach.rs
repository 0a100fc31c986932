//! Across accounts and regions, against moto behind the fault proxy (which also tells which
//! credentials and region each call was signed with): per-item roles and `roleArn`, regions,
//! failover, discovery.

#![allow(
    clippy::disallowed_types,
    reason = "real processes and sockets run on real time"
)]

use std::time::Duration;

use aws_sdk_secretsmanager::types::Tag;

use crate::support::fault::{Fault, FaultProxy};
use crate::support::{Spawn, block_on, moto, unique, wait_until};

const ROLE: &str = "arn:aws:iam::123456789012:role/reader";

/// A Secrets Manager client for `region` straight to moto.
fn sm(url: &str, region: &str) -> aws_sdk_secretsmanager::Client {
    let creds =
        aws_sdk_secretsmanager::config::Credentials::new("testing", "testing", None, None, "test");
    let conf = block_on(
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_owned()))
            .endpoint_url(url)
            .credentials_provider(creds)
            .load(),
    );
    aws_sdk_secretsmanager::Client::new(&conf)
}

/// Creates `name` in `region` with `value` and optional tags; returns its ARN.
fn create(url: &str, region: &str, name: &str, value: &str, tags: &[(&str, &str)]) -> String {
    let tags: Vec<Tag> = tags
        .iter()
        .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
        .collect();
    let client = sm(url, region);
    block_on(async {
        client
            .create_secret()
            .name(name)
            .secret_string(value)
            .set_tags((!tags.is_empty()).then_some(tags))
            .send()
            .await
            .unwrap()
            .arn()
            .unwrap()
            .to_owned()
    })
}

#[test]
fn items_and_requests_read_through_assumed_roles() {
    let m = moto();
    let proxy = FaultProxy::start(&m.url);
    let name = unique("reach/shared");
    create(&m.url, "us-east-1", &name, "shared-value", &[]);
    let config = format!(
        "[api]\nmax_roles = 1\nallow_roles = [\"arn:aws:iam::123456789012:role/app-*\"]\n\
         [[secrets]]\nid = \"{name}\"\nrole_arn = \"{ROLE}\"\nsession_name = \"sidekey-test\"\n"
    );
    let sk = Spawn::aws(&proxy.url, &config).start();
    // The configured item was read with the role's credentials, not the default ones.
    let seen = proxy.seen();
    assert!(seen.iter().any(|s| s.op == "AssumeRole"), "{seen:?}");
    let reads: Vec<_> = seen.iter().filter(|s| s.op == "GetSecretValue").collect();
    assert!(
        !reads.is_empty() && reads.iter().all(|s| s.access_key != "testing"),
        "{seen:?}"
    );
    // A plain request for the name reads that item; /status says as whom.
    let r = sk.get(&format!("/secret?id={name}&raw=true"));
    assert_eq!((r.status, r.body.as_str()), (200, "shared-value"));
    let item = sk.status_item(&name);
    assert_eq!(item["role"], ROLE);
    assert_eq!(item["region"], "us-east-1");
    // roleArn on the agent's route: allowed role once, then the limits.
    let with_role = |role: &str| {
        sk.get(&format!(
            "/secretsmanager/get?secretId={name}&roleArn={role}"
        ))
    };
    let before = proxy.seen().len();
    let r = with_role("arn:aws:iam::123456789012:role/app-one");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["SecretString"], "shared-value");
    let new: Vec<_> = proxy.seen().split_off(before);
    assert!(new.iter().any(|s| s.op == "AssumeRole"), "{new:?}");
    assert_eq!(with_role("not-an-arn").status, 400);
    assert_eq!(
        with_role("arn:aws:iam::123456789012:user/app-x").status,
        400
    );
    let r = with_role("arn:aws:iam::123456789012:role/other");
    assert_eq!(
        (r.status, r.body.contains("allow_roles")),
        (403, true),
        "{}",
        r.body
    );
    let r = with_role("arn:aws:iam::123456789012:role/app-two");
    assert_eq!(
        (r.status, r.body.contains("max_roles")),
        (400, true),
        "{}",
        r.body
    );
    // Each role is its own cache entry: the first role's entry is still there.
    assert_eq!(
        with_role("arn:aws:iam::123456789012:role/app-one").status,
        200
    );
}

#[test]
fn a_role_that_cannot_be_assumed_is_a_403() {
    let m = moto();
    let name = unique("reach/denied");
    create(&m.url, "us-east-1", &name, "v", &[]);
    let mut spawn = Spawn::aws(&m.url, "");
    // STS unreachable: every AssumeRole fails.
    spawn
        .env
        .insert("AWS_ENDPOINT_URL_STS".into(), "http://127.0.0.1:9".into());
    let sk = spawn.start();
    let r = sk.get(&format!(
        "/secretsmanager/get?secretId={name}&roleArn={ROLE}"
    ));
    assert_eq!(
        (r.status, r.json()["__type"].as_str()),
        (403, Some("AssumeRoleFailed")),
        "{}",
        r.body
    );
    assert_eq!(
        sk.get(&format!("/secretsmanager/get?secretId={name}"))
            .status,
        200
    );
}

#[test]
fn items_read_in_their_region_and_fail_over_only_on_transient_errors() {
    let m = moto();
    let proxy = FaultProxy::start(&m.url);
    let (regional, replicated, primary_only) =
        (unique("reach/r"), unique("reach/rep"), unique("reach/gone"));
    create(&m.url, "us-east-1", &regional, "east", &[]);
    let west_arn = create(&m.url, "eu-west-1", &regional, "west", &[]);
    create(&m.url, "eu-west-1", &replicated, "rep-west", &[]);
    create(&m.url, "us-east-1", &replicated, "rep-east", &[]);
    // Exists only in the failover region: a NotFound in the primary must not fail over.
    create(&m.url, "us-east-1", &primary_only, "only-east", &[]);
    let config = format!(
        "[cache]\nrefresh_interval = \"1s\"\njitter = 0.0\nbackoff_min = \"100ms\"\nbackoff_max = \"500ms\"\n\
         [aws]\nmax_attempts = 1\ntimeout = \"1s\"\nfailover_region = \"us-east-1\"\n\
         [[secrets]]\nid = \"{regional}\"\nregion = \"eu-west-1\"\n\
         [[secrets]]\nid = \"{replicated}\"\nregion = \"eu-west-1\"\n"
    );
    let sk = Spawn::aws(&proxy.url, &config).start();
    let read = |id: &str| sk.get(&format!("/secret?id={id}&raw=true"));
    let r = read(&regional);
    assert_eq!((r.status, r.body.as_str()), (200, "west"));
    assert_eq!(r.header("x-sidekey-region"), Some("eu-west-1"));
    let r = read(&west_arn);
    assert_eq!(
        (r.body.as_str(), r.header("x-sidekey-region")),
        ("west", Some("eu-west-1"))
    );
    // eu-west-1 fails with 500s, then hangs: reads move to us-east-1 and say so.
    for fault in [Fault::Status500, Fault::Hang] {
        proxy.set_region("eu-west-1", Fault::Pass);
        wait_until(Duration::from_secs(15), || {
            read(&replicated).body == "rep-west"
        });
        proxy.set_region("eu-west-1", fault);
        wait_until(Duration::from_secs(15), || {
            read(&replicated).body == "rep-east"
        });
        let r = read(&replicated);
        assert_eq!(r.header("x-sidekey-region"), Some("us-east-1"), "{fault:?}");
    }
    assert_eq!(sk.status_item(&replicated)["region"], "us-east-1");
    proxy.set_region("eu-west-1", Fault::Pass);
    // A 404 in the primary region is an answer, not an outage.
    let r = sk.get(&format!(
        "/secretsmanager/get?secretId=arn:aws:secretsmanager:eu-west-1:123456789012:secret:{primary_only}"
    ));
    assert_eq!(
        (r.status, r.json()["__type"].as_str()),
        (400, Some("ResourceNotFoundException")),
        "{}",
        r.body
    );
    let r = sk.get(&format!("/secret?id={primary_only}&raw=true"));
    assert_eq!(r.body, "only-east", "the default region is us-east-1");
}

#[test]
fn discovery_follows_secrets_created_and_deleted_after_start() {
    let m = moto();
    let prefix = format!("{}/", unique("disc"));
    let (a, b, c) = (
        format!("{prefix}a"),
        format!("{prefix}b"),
        format!("{prefix}c"),
    );
    create(&m.url, "us-east-1", &a, "va", &[("team", "blue")]);
    create(&m.url, "us-east-1", &b, "vb", &[("team", "red")]);
    let config = format!(
        "[cache]\njitter = 0.0\n[[discover]]\nname_prefix = \"{prefix}\"\ntags = {{ team = \"blue\" }}\nrefresh_interval = \"1s\"\n"
    );
    let sk = Spawn::aws(&m.url, &config).start();
    let discovered = || -> Vec<String> {
        let status = sk.get("/status").json();
        let mut ids: Vec<String> = status["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["origin"] == "prefetch")
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(
        discovered(),
        [a.as_str()],
        "only the blue one, before ready"
    );
    create(&m.url, "us-east-1", &c, "vc", &[("team", "blue")]);
    wait_until(Duration::from_secs(10), || {
        discovered() == [a.clone(), c.clone()]
    });
    let client = sm(&m.url, "us-east-1");
    block_on(async {
        client
            .delete_secret()
            .secret_id(&a)
            .force_delete_without_recovery(true)
            .send()
            .await
            .unwrap();
    });
    wait_until(Duration::from_secs(10), || discovered() == [c.clone()]);
    let r = sk.get(&format!("/secret?id={c}&raw=true"));
    assert_eq!((r.status, r.body.as_str()), (200, "vc"));
    let listings = sk.aws_calls("ListSecrets");
    assert!((2..=30).contains(&listings), "{listings} listings");
}
