//! A fault-injecting HTTP proxy between sidekey and moto. Every request is read whole, logged
//! with its operation (`X-Amz-Target`) and then, depending on the current [`Fault`], forwarded
//! (on a fresh upstream connection, `Connection: close`) or failed in one of the ways a real
//! backend fails: refused, hung, slow, cut mid-response, 500, throttled.

#![allow(
    clippy::disallowed_types,
    reason = "real processes and sockets run on real time"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the proxy treats the next request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forward unchanged.
    Pass,
    /// Stop listening: connections are refused (`ECONNREFUSED`), so the proxy never sees them.
    Refuse,
    /// Read the request, never answer (until the fault changes).
    Hang,
    /// Forward after a delay.
    Delay(Duration),
    /// Forward, but send only the first half of the response, then close.
    Cut,
    /// Answer `500 InternalFailure`.
    Status500,
    /// Answer `400 ThrottlingException`.
    Throttle,
}

/// One request the proxy saw.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: Instant,
    /// `X-Amz-Target` operation, e.g. `GetParameters` (`Action=` for STS).
    pub op: String,
    pub fault: Fault,
    /// Access key id the request was signed with.
    pub access_key: String,
    /// Region of the signature's scope.
    pub region: String,
}

struct Shared {
    upstream: SocketAddr,
    fault: Mutex<Fault>,
    /// Faults for requests signed for one region (override `fault`).
    region_faults: Mutex<std::collections::HashMap<String, Fault>>,
    seen: Mutex<Vec<Seen>>,
    stop: AtomicBool,
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    pub url: String,
    shared: Arc<Shared>,
}

impl FaultProxy {
    /// A proxy in front of `upstream_url` (`http://127.0.0.1:PORT`).
    pub fn start(upstream_url: &str) -> Self {
        let upstream = upstream_url
            .trim_start_matches("http://")
            .parse()
            .expect("upstream address");
        // Below the ephemeral range, so nothing takes the port while it is closed for `Refuse`.
        let addr = SocketAddr::from(([127, 0, 0, 1], super::free_port()));
        let listener = TcpListener::bind(addr).unwrap();
        let shared = Arc::new(Shared {
            upstream,
            fault: Mutex::new(Fault::Pass),
            region_faults: Mutex::default(),
            seen: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        std::thread::spawn(move || accept_loop(&s, addr, Some(listener)));
        FaultProxy {
            url: format!("http://{addr}"),
            shared,
        }
    }

    pub fn set(&self, fault: Fault) {
        *self.shared.fault.lock().unwrap() = fault;
    }

    /// A fault only for requests signed for `region` (`Pass` clears it).
    pub fn set_region(&self, region: &str, fault: Fault) {
        self.shared
            .region_faults
            .lock()
            .unwrap()
            .insert(region.to_owned(), fault);
    }

    /// Requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// Requests for `op` seen in `[from, to)`.
    pub fn calls(&self, op: &str, from: Instant, to: Instant) -> Vec<Instant> {
        self.seen()
            .into_iter()
            .filter(|s| s.op == op && s.at >= from && s.at < to)
            .map(|s| s.at)
            .collect()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.set(Fault::Pass);
    }
}

impl Shared {
    fn fault(&self) -> Fault {
        *self.fault.lock().unwrap()
    }
}

/// Accepts until stopped; closes the port while the fault is [`Fault::Refuse`] and binds it again
/// afterwards (`SO_REUSEADDR`, set by std, makes the re-bind immediate).
fn accept_loop(s: &Arc<Shared>, addr: SocketAddr, mut listener: Option<TcpListener>) {
    while !s.stop.load(Ordering::SeqCst) {
        if s.fault() == Fault::Refuse {
            listener = None;
        } else if listener.is_none() {
            listener = TcpListener::bind(addr).ok();
        }
        let Some(l) = &listener else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        l.set_nonblocking(true).unwrap();
        match l.accept() {
            Ok((conn, _)) => {
                conn.set_nonblocking(false).unwrap();
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(&s, conn);
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn serve(s: &Shared, client: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;
    loop {
        let Some((head, body)) = read_request(&mut reader)? else {
            return Ok(());
        };
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
        };
        let op = header("x-amz-target")
            .map(|t| t.rsplit('.').next().unwrap_or_default().to_owned())
            .or_else(|| {
                let body = String::from_utf8_lossy(&body);
                body.split('&')
                    .find_map(|p| p.strip_prefix("Action=").map(str::to_owned))
            })
            .unwrap_or_default();
        // `Credential=AKID/DATE/REGION/SERVICE/aws4_request`
        let scope: Vec<String> = header("authorization")
            .and_then(|a| {
                let c = a.split("Credential=").nth(1)?;
                Some(
                    c.split([',', ' '])
                        .next()?
                        .split('/')
                        .map(str::to_owned)
                        .collect(),
                )
            })
            .unwrap_or_default();
        let region = scope.get(2).cloned().unwrap_or_default();
        let fault = s
            .region_faults
            .lock()
            .unwrap()
            .get(&region)
            .copied()
            .unwrap_or_else(|| s.fault());
        s.seen.lock().unwrap().push(Seen {
            at: Instant::now(),
            op,
            fault,
            access_key: scope.first().cloned().unwrap_or_default(),
            region,
        });
        match fault {
            // Accepted just before the port closed: as good as refused.
            Fault::Refuse => return Ok(()),
            Fault::Hang => {
                while (s.fault() == Fault::Hang
                    || s.region_faults
                        .lock()
                        .unwrap()
                        .values()
                        .any(|f| *f == Fault::Hang))
                    && !s.stop.load(Ordering::SeqCst)
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                return Ok(());
            }
            Fault::Status500 => canned(
                &mut client,
                "500 Internal Server Error",
                r#"{"__type":"InternalFailure","message":"injected"}"#,
            )?,
            Fault::Throttle => canned(
                &mut client,
                "400 Bad Request",
                r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#,
            )?,
            Fault::Pass | Fault::Delay(_) | Fault::Cut => {
                if let Fault::Delay(d) = fault {
                    std::thread::sleep(d);
                }
                let resp = forward(s.upstream, &head, &body)?;
                if fault == Fault::Cut {
                    client.write_all(&resp[..resp.len() / 2])?;
                    client.shutdown(Shutdown::Both)?;
                    return Ok(());
                }
                client.write_all(&resp)?;
                // The upstream closed after one response; so do we.
                return Ok(());
            }
        }
    }
}

/// Reads one request: the head (without the final blank line) and a `Content-Length` body.
fn read_request(r: &mut impl BufRead) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok(Some((head, body)))
}

/// Sends the request upstream with `Connection: close` and returns the whole response.
fn forward(upstream: SocketAddr, head: &str, body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut up = TcpStream::connect(upstream)?;
    let mut req = String::new();
    for line in head.lines() {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            req.push_str(line);
            req.push_str("\r\n");
        }
    }
    req.push_str("Connection: close\r\n\r\n");
    up.write_all(req.as_bytes())?;
    up.write_all(body)?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp)?;
    Ok(resp)
}

fn canned(client: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    write!(
        client,
        "HTTP/1.1 {status}\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\nx-amzn-RequestId: injected\r\n\r\n{body}",
        body.len()
    )
}
