//! The real server in-process over real sockets, backed by the fake source so backend calls
//! can be counted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sidekey::api::Listeners;
use sidekey::app::{self, Setup};
use sidekey::config::{self, LoadOptions};
use sidekey::control::Control;
use sidekey::source::fake::FakeSource;

use crate::support::{TOKEN, get, get_unix};

#[test]
fn concurrent_misses_reach_the_backend_once_and_shutdown_drains() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    let env: BTreeMap<String, String> = [("AWS_TOKEN".to_owned(), TOKEN.to_owned())].into();
    let load = LoadOptions {
        file: None,
        env,
        cli: vec![
            ("listen.tcp".into(), "\"127.0.0.1:0\"".into()),
            (
                "listen.unix".into(),
                format!("{:?}", socket.display().to_string()),
            ),
        ],
    };
    let config = config::load(&load).unwrap();
    let fake = Arc::new(FakeSource::new());
    fake.put_secret("hot", "value");
    // Long enough that all clients are queued behind the first fetch.
    fake.set_latency(Duration::from_secs(1));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listeners = rt.block_on(Listeners::bind(&config.listen)).unwrap();
    let addr = listeners.tcp.as_ref().unwrap().local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let setup = Setup {
        config,
        load,
        source: fake.clone(),
    };
    let server = rt.spawn(app::run(setup, listeners, rx, None));

    let clients: Vec<_> = (0..50)
        .map(|i| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let h = [("X-Aws-Parameters-Secrets-Token", TOKEN)];
                let r = if i % 2 == 0 {
                    get(addr, "/secret?id=hot&raw=true", &h)
                } else {
                    get_unix(&socket, "/secret?id=hot&raw=true", &h)
                };
                (r.status, r.body)
            })
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), (200, "value".to_owned()));
    }
    assert_eq!(
        fake.calls().fetches,
        1,
        "50 concurrent misses, one backend call"
    );

    rt.block_on(tx.send(Control::Shutdown)).unwrap();
    assert!(rt.block_on(server).unwrap().is_ok());
    assert!(!socket.exists());
}
