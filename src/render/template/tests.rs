//! Rendering against hand-built snapshots.

use std::sync::Arc;

use secrecy::SecretString;
use tokio::time::Instant;

use super::*;
use crate::cache::{Entry, Origin};
use crate::source::{ParamKey, ParameterValue, SecretKey, SecretValue};

fn secret(map: &mut Map, id: &str, value: &str) {
    let v = Fetched::Secret(Arc::new(SecretValue {
        arn: format!("arn:{id}"),
        name: id.into(),
        version_id: "v1".into(),
        version_stages: vec!["AWSCURRENT".into()],
        created_date: None,
        payload: Arc::new(Payload::Text(SecretString::from(value))),
        region: None,
    }));
    let key = Key::Secret(SecretKey::current(id));
    map.insert(
        Arc::new(key),
        Arc::new(Entry::new(v, Origin::Prefetch, Instant::now(), None, None)),
    );
}

fn param(name: &str, value: &str) -> Arc<ParameterValue> {
    Arc::new(ParameterValue {
        arn: String::new(),
        name: name.into(),
        kind: "String".into(),
        value: Arc::new(SecretString::from(value)),
        version: 1,
        last_modified: None,
        data_type: None,
        selector: None,
        source_result: None,
        region: None,
    })
}

fn snapshot() -> Arc<Map> {
    let mut map = Map::new();
    secret(
        &mut map,
        "db",
        r#"{"user":"admin","password":"pw","port":5432}"#,
    );
    let p = param("/app/url", "https://x");
    let key = Key::Parameter(ParamKey {
        name: "/app/url".into(),
        selector: None,
        decrypt: true,
        via: Default::default(),
    });
    let entry = Entry::new(
        Fetched::Parameter(p.clone()),
        Origin::Prefetch,
        Instant::now(),
        None,
        None,
    );
    map.insert(Arc::new(key), Arc::new(entry));
    let path = Key::Path(PathKey {
        path: "/app".into(),
        recursive: false,
        decrypt: true,
        via: Default::default(),
    });
    let v = Fetched::Path(vec![p, param("/app/mode", "prod")].into());
    map.insert(
        Arc::new(path),
        Arc::new(Entry::new(v, Origin::Prefetch, Instant::now(), None, None)),
    );
    Arc::new(map)
}

fn jinja(src: &str) -> Result<Rendered, RenderError> {
    let env = [("HOME".to_owned(), "/home/app".to_owned())].into();
    render("t.tmpl", src, Syntax::Jinja, snapshot(), &env)
}

#[test]
fn functions_and_filters() {
    let check = |src: &str, want: &str| assert_eq!(jinja(src).unwrap().output, want, "{src}");
    check(r#"{{ secret("db:password") }}"#, "pw");
    check(r#"{{ secret("db") | json_key("user") }}"#, "admin");
    check(r#"{{ secret("db") | json_pointer("/port") }}"#, "5432");
    check(
        r#"{{ secret("{{resolve:secretsmanager:db:SecretString:user}}") }}"#,
        "admin",
    );
    check(r#"{{ parameter("/app/url") }}"#, "https://x");
    check(
        r#"{% for k, v in parameters("/app/") | items %}{{ k }}={{ v }};{% endfor %}"#,
        "/app/mode=prod;/app/url=https://x;",
    );
    check(r#"{{ env("HOME") }}"#, "/home/app");
    check("keep\n", "keep\n");
}

#[test]
fn missing_values_are_reported_not_fetched() {
    let r =
        jinja(r#"{{ secret("db:user") }} {{ secret("other") }} {{ parameter("/x") }}"#).unwrap();
    assert_eq!(r.keys.len(), 3);
    assert_eq!(r.missing.len(), 2);
    assert_eq!(r.missing[0], Key::Secret(SecretKey::current("other")));
}

#[test]
fn errors_name_the_line_and_never_show_values() {
    for (src, want) in [
        ("ok\n{{ nope }}", "line 2"),
        (r#"{{ env("NOT_SET") }}"#, "NOT_SET"),
        (
            r#"{{ secret("db") | json_key("missing") }}"#,
            "does not exist",
        ),
        (r#"{{ secret("a b") }}"#, "whitespace"),
        (
            "{% for i in range(1000) %}{% for j in range(1000) %}x{% endfor %}{% endfor %}",
            "fuel",
        ),
        ("{{ unclosed", "line 1"),
    ] {
        let e = jinja(src)
            .err()
            .unwrap_or_else(|| panic!("{src} rendered"))
            .to_string();
        assert!(e.contains(want), "{src}: {e}");
        assert!(!e.contains("pw") && !e.contains("admin"), "{e}");
    }
}

#[test]
fn cloudformation_references_render_in_place() {
    let src = "user: {{resolve:secretsmanager:db:SecretString:user}}\nurl: {{resolve:ssm:/app/url}}\nother: {{ not a ref }}\n";
    let r = render(
        "cfn.yaml",
        src,
        Syntax::CloudFormation,
        snapshot(),
        &BTreeMap::new(),
    )
    .unwrap();
    assert_eq!(
        r.output,
        "user: admin\nurl: https://x\nother: {{ not a ref }}\n"
    );
    let e = render(
        "cfn.yaml",
        "a\n{{resolve:ssm:/x",
        Syntax::CloudFormation,
        snapshot(),
        &BTreeMap::new(),
    );
    assert!(e.err().unwrap().to_string().contains("line 2"));
}
