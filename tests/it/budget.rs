//! The API budget, counted: every AWS call attempt sidekey makes against moto, read from its
//! `/metrics` (an SDK interceptor counts each attempt, retries included).

use std::time::Duration;

use aws_sdk_ssm::types::ParameterType;

use crate::support::{Spawn, block_on, clients, moto, unique, wait_until};

fn seed_secrets(url: &str, prefix: &str, n: usize) -> Vec<String> {
    let (sm, _) = clients(url);
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}/s{i:02}")).collect();
    block_on(async {
        for name in &names {
            sm.create_secret()
                .name(name)
                .secret_string(format!("value of {name}"))
                .send()
                .await
                .unwrap();
        }
    });
    names
}

fn seed_parameters(url: &str, names: &[String]) {
    let (_, ssm) = clients(url);
    block_on(async {
        for name in names {
            ssm.put_parameter()
                .name(name)
                .value("v")
                .r#type(ParameterType::String)
                .send()
                .await
                .unwrap();
        }
    });
}

#[test]
fn prefetch_batches_to_each_api_limit() {
    let m = moto();
    let base = unique("budget");
    let secrets = seed_secrets(&m.url, &base, 45);
    let singles: Vec<String> = (0..25).map(|i| format!("/{base}/one/p{i:02}")).collect();
    let under_path: Vec<String> = (0..25).map(|i| format!("/{base}/tree/p{i:02}")).collect();
    seed_parameters(&m.url, &singles);
    seed_parameters(&m.url, &under_path);
    let mut config = String::new();
    for s in &secrets {
        config.push_str(&format!("[[secrets]]\nid = \"{s}\"\n"));
    }
    for p in &singles {
        config.push_str(&format!("[[parameters]]\nname = \"{p}\"\n"));
    }
    config.push_str(&format!("[[parameters]]\npath = \"/{base}/tree\"\n"));
    let sk = Spawn::aws(&m.url, &config).start();
    let calls = |op| sk.aws_calls(op);
    assert_eq!(calls("BatchGetSecretValue"), 3, "⌈45/20⌉");
    assert_eq!(calls("GetParameters"), 3, "⌈25/10⌉");
    assert_eq!(calls("GetParametersByPath"), 3, "⌈25/10⌉ pages");
    for op in ["GetSecretValue", "GetParameter", "DescribeSecret"] {
        assert_eq!(calls(op), 0, "{op}");
    }
    let err = sk.stderr();
    assert!(
        err.contains("Prefetch progress: 45/45 secrets, 25/25 parameters, 1/1 paths."),
        "{err}"
    );
    assert!(err.contains("Prefetch finished."), "{err}");
}

#[test]
fn refreshing_unchanged_secrets_costs_one_describe_each_and_misses_coalesce() {
    let m = moto();
    let base = unique("budget");
    let secrets = seed_secrets(&m.url, &base, 3);
    let config = format!(
        "[cache]\nrefresh_interval = \"1s\"\njitter = 0\n[[secrets]]\nid = \"{}\"\n[[secrets]]\nid = \"{}\"\n",
        secrets[0], secrets[1]
    );
    let sk = Spawn::aws(&m.url, &config).start();
    assert_eq!(sk.aws_calls("BatchGetSecretValue"), 1);
    wait_until(Duration::from_secs(15), || {
        sk.aws_calls("DescribeSecret") >= 4
    });
    assert_eq!(sk.aws_calls("BatchGetSecretValue"), 1, "no re-read");
    assert_eq!(sk.aws_calls("GetSecretValue"), 0, "no re-read");
    // 100 clients miss the third secret at once: one call.
    let uri = format!("/secret?id={}&raw=true", secrets[2]);
    let barrier = std::sync::Barrier::new(100);
    std::thread::scope(|s| {
        for _ in 0..100 {
            s.spawn(|| {
                barrier.wait();
                assert_eq!(sk.get(&uri).status, 200);
            });
        }
    });
    assert_eq!(sk.aws_calls("GetSecretValue"), 1);
    let status = sk.get("/status").json();
    let third = status["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == secrets[2].as_str())
        .unwrap()
        .clone();
    assert_eq!(third["origin"], "on_demand");
}
