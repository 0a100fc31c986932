//! Micro-benchmarks of the hot paths: a store lookup (alone, and while other threads read and
//! the scheduler swaps in new maps), REF parsing, and a template render.
//!
//! `cargo bench --bench core` (figures in BENCHMARKS.md).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use sidekey::cache::{Cache, Settings, Target};
use sidekey::refs::{RefKind, parse};
use sidekey::render::template::{Syntax, render};
use sidekey::source::fake::FakeSource;
use sidekey::source::{Key, SecretKey};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const ITEMS: usize = 1000;

/// sidekey's defaults, without jitter or batch window (every item is prefetched at once).
fn settings() -> Settings {
    Settings {
        jitter: 0.0,
        batch_window: Duration::ZERO,
        ..Settings::default()
    }
}

fn key(i: usize) -> Key {
    Key::Secret(SecretKey::current(format!("app/secret-{i:04}")))
}

/// A cache holding `ITEMS` prefetched 4 KB secrets, on its own runtime.
fn loaded() -> (tokio::runtime::Runtime, Cache, CancellationToken) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let fake = Arc::new(FakeSource::new());
    let value = format!("{{\"password\":\"{}\"}}", "x".repeat(4080));
    for i in 0..ITEMS {
        fake.put_secret(&format!("app/secret-{i:04}"), &value);
    }
    let stop = CancellationToken::new();
    let cache = rt.block_on(async {
        let cache = Cache::start(fake, settings(), stop.clone(), &TaskTracker::new());
        let targets = (0..ITEMS)
            .map(|i| Target {
                key: key(i),
                interval: Duration::from_secs(300),
            })
            .collect();
        cache.configure(targets).await.expect("prefetch");
        cache
    });
    (rt, cache, stop)
}

fn store_lookup(c: &mut Criterion) {
    let (rt, cache, stop) = loaded();
    let probe = key(417);
    let mut g = c.benchmark_group("store_get");
    g.bench_function("alone", |b| {
        b.iter(|| black_box(cache.store().get(black_box(&probe))));
    });
    // Another thread reading the same entry (shared refcounts) the whole time.
    let busy = Arc::new(AtomicBool::new(true));
    let reader = {
        let (cache, busy, probe) = (cache.clone(), busy.clone(), probe.clone());
        std::thread::spawn(move || {
            while busy.load(Ordering::Relaxed) {
                black_box(cache.store().get(&probe));
            }
        })
    };
    g.bench_function("with_a_reader_thread", |b| {
        b.iter(|| black_box(cache.store().get(black_box(&probe))));
    });
    busy.store(false, Ordering::Relaxed);
    let _ = reader.join();
    // The scheduler re-fetching all 1,000 items and swapping maps in a loop.
    let busy = Arc::new(AtomicBool::new(true));
    let writer = {
        let (cache, busy) = (cache.clone(), busy.clone());
        rt.spawn(async move {
            while busy.load(Ordering::Relaxed) {
                let _ = cache.refresh_all().await;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    g.bench_function("while_the_scheduler_swaps_maps", |b| {
        b.iter(|| black_box(cache.store().get(black_box(&probe))));
    });
    busy.store(false, Ordering::Relaxed);
    let _ = rt.block_on(writer);
    g.finish();
    stop.cancel();
}

fn ref_parsing(c: &mut Criterion) {
    let mut g = c.benchmark_group("ref_parse");
    for (name, input, kind) in [
        ("name", "prod/db", RefKind::Secret),
        (
            "ecs_value_from",
            "arn:aws:secretsmanager:us-east-1:111122223333:secret:prod/db-AbCdEf:password::",
            RefKind::Any,
        ),
        (
            "cloudformation",
            "{{resolve:secretsmanager:prod/db:SecretString:password:AWSCURRENT}}",
            RefKind::Any,
        ),
        ("parameter", "/prod/app/url:3", RefKind::Parameter),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| black_box(parse(black_box(input), kind, true)));
        });
    }
    g.finish();
}

fn template_render(c: &mut Criterion) {
    let (_rt, cache, stop) = loaded();
    let snapshot = cache.store().snapshot();
    let env = BTreeMap::from([("HOME".to_owned(), "/root".to_owned())]);
    let jinja = "{% for i in range(10) %}S{{ i }}={{ secret(\"app/secret-000\" ~ i) | json_key(\"password\") | length }}\n{% endfor %}HOME={{ env(\"HOME\") }}\n";
    let cfn =
        "a: {{resolve:secretsmanager:app/secret-0001:SecretString:password}}\nb: plain text\n";
    let mut g = c.benchmark_group("template_render");
    g.bench_function("jinja_10_secrets", |b| {
        b.iter(|| {
            black_box(render(
                "bench",
                jinja,
                Syntax::Jinja,
                snapshot.clone(),
                &env,
            ))
        });
    });
    g.bench_function("cloudformation_1_ref", |b| {
        b.iter(|| {
            black_box(render(
                "bench",
                cfn,
                Syntax::CloudFormation,
                snapshot.clone(),
                &env,
            ))
        });
    });
    g.finish();
    stop.cancel();
}

criterion_group!(benches, store_lookup, ref_parsing, template_render);
criterion_main!(benches);
