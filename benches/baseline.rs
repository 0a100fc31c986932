//! Tools for `scripts/bench-http`, built with sidekey's own hyper and tokio:
//!
//! - `serve tcp:ADDR|unix:PATH BODY_FILE CONTENT_TYPE` — the practical limit: a bare hyper
//!   HTTP/1.1 server (multi-thread runtime, as sidekey) answering every request with the same
//!   bytes sidekey would (body, content type, `Cache-Control: no-store`, `Age`);
//! - `load tcp:ADDR|unix:PATH CONNS SECS URI HEADER` — a closed-loop keep-alive load generator
//!   on one thread that speaks to TCP and Unix sockets alike (wrk has no Unix sockets), printing
//!   `req/s p50_us p99_us`.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::time::Instant;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args.first().map(String::as_str) {
        Some("serve") if args.len() == 4 => serve(&args[1], &args[2], &args[3]),
        Some("load") if args.len() == 6 => load(&args[1], &args[2], &args[3], &args[4], &args[5]),
        _ => {
            eprintln!(
                "usage: baseline serve ENDPOINT BODY_FILE CONTENT_TYPE | load ENDPOINT CONNS SECS URI HEADER"
            );
            Ok(())
        }
    }
}

fn serve(endpoint: &str, body_file: &str, content_type: &str) -> Result<(), Error> {
    let body = Bytes::from(std::fs::read(body_file)?);
    let content_type = content_type.to_owned();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let respond = move |_req: Request<hyper::body::Incoming>| {
            let resp = Response::builder()
                .header("content-type", content_type.as_str())
                .header("cache-control", "no-store")
                .header("age", "0")
                .body(Full::new(body.clone()));
            async move { Ok::<_, Infallible>(resp.unwrap_or_default()) }
        };
        if let Some(path) = endpoint.strip_prefix("unix:") {
            let _ = std::fs::remove_file(path);
            let listener = UnixListener::bind(path)?;
            println!("serving");
            loop {
                let (stream, _) = listener.accept().await?;
                let respond = respond.clone();
                tokio::spawn(async move {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service_fn(respond))
                        .await;
                });
            }
        } else {
            let addr = endpoint.strip_prefix("tcp:").unwrap_or(endpoint);
            let listener = TcpListener::bind(addr).await?;
            println!("serving");
            loop {
                let (stream, _) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                let respond = respond.clone();
                tokio::spawn(async move {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service_fn(respond))
                        .await;
                });
            }
        }
    })
}

fn load(endpoint: &str, conns: &str, secs: &str, uri: &str, header: &str) -> Result<(), Error> {
    let conns: usize = conns.parse()?;
    let until = Instant::now() + Duration::from_secs(secs.parse()?);
    let request = Bytes::from(format!(
        "GET {uri} HTTP/1.1\r\nHost: localhost\r\n{header}\r\n\r\n"
    ));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let mut latencies: Vec<u32> = rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..conns {
            let (endpoint, request) = (endpoint.to_owned(), request.clone());
            tasks.push(tokio::spawn(async move {
                if let Some(path) = endpoint.strip_prefix("unix:") {
                    let s = UnixStream::connect(path).await?;
                    drive(s, &request, until).await
                } else {
                    let s = TcpStream::connect(endpoint.trim_start_matches("tcp:")).await?;
                    s.set_nodelay(true)?;
                    drive(s, &request, until).await
                }
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await??);
        }
        Ok::<_, Error>(all)
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{:.0} {} {}",
        latencies.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99)
    );
    Ok(())
}

/// Sends `request` again and again on one connection until `until`; returns latencies (µs).
async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    request: &[u8],
    until: Instant,
) -> Result<Vec<u32>, Error> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut latencies = Vec::new();
    while Instant::now() < until {
        let t = Instant::now();
        s.write_all(request).await?;
        let mut have = 0;
        loop {
            let n = s.read(&mut buf[have..]).await?;
            if n == 0 {
                return Err("connection closed".into());
            }
            have += n;
            if response_len(&buf[..have]).is_some_and(|total| have >= total) {
                break;
            }
        }
        latencies.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    Ok(latencies)
}

/// Head length + Content-Length, once the head is complete.
fn response_len(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let len = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    })?;
    Some(head_end + len)
}
