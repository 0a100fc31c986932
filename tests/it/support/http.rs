//! A minimal HTTP/1.1 client: one request per connection (`Connection: close`), over TCP or a
//! Unix socket, so tests see exactly the bytes the server sent.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

pub fn get(addr: SocketAddr, uri: &str, headers: &[(&str, &str)]) -> Resp {
    request(
        TcpStream::connect(addr).expect("connect"),
        "GET",
        uri,
        headers,
    )
}

pub fn get_unix(path: &Path, uri: &str, headers: &[(&str, &str)]) -> Resp {
    request(
        UnixStream::connect(path).expect("connect unix"),
        "GET",
        uri,
        headers,
    )
}

pub fn request<S: Read + Write>(
    mut s: S,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
) -> Resp {
    let mut req = format!("{method} {uri} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    parse(&raw)
}

pub fn parse(raw: &[u8]) -> Resp {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {text:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Resp {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// A read timeout for raw stream tests.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
