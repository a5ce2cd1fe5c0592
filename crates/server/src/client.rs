//! A small blocking HTTP/1.1 client with keep-alive, enough to talk to tern's API from
//! end-to-end tests, the demo workload and benchmarks.
//!
//! Kept rather than `ureq` on measurement: `ureq` 3.5 sends a POST's head and body in two
//! writes with a `setsockopt` before each, and as `tern bench`'s load generator (sharing
//! two cores with the servers it measures) it halved the 32-client semi-sync figure
//! (2,574-4,123 writes/s against 4,841-5,340 with this client and the same servers; see
//! docs/restructuring.md). This one writes each request once and sets its timeout once
//! per connection.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

pub struct HttpClient {
    addr: String,
    connection: Option<BufReader<TcpStream>>,
    timeout: Duration,
}

/// A response: status code and body parsed as JSON (or a string if it is not JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl HttpClient {
    /// `addr` is `host:port` (an `http://` prefix is accepted).
    pub fn new(addr: &str) -> HttpClient {
        let addr = addr.trim_start_matches("http://").trim_end_matches('/').to_string();
        HttpClient { addr, connection: None, timeout: Duration::from_secs(30) }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn with_timeout(mut self, timeout: Duration) -> HttpClient {
        self.timeout = timeout;
        self
    }

    /// # Errors
    /// If the server cannot be reached or answers with something that is not HTTP.
    pub fn get(&mut self, path: &str) -> std::io::Result<Reply> {
        self.request("GET", path, None)
    }

    /// # Errors
    /// If the server cannot be reached or answers with something that is not HTTP.
    pub fn post_json(&mut self, path: &str, body: &Value) -> std::io::Result<Reply> {
        let bytes = serde_json::to_vec(body).expect("JSON values always serialize");
        self.request("POST", path, Some(&bytes))
    }

    /// Sends one request, reusing the kept-alive connection; a request that fails on a
    /// reused connection (closed by the server meanwhile) is retried once on a new one.
    ///
    /// # Errors
    /// If the server cannot be reached or answers with something that is not HTTP.
    pub fn request(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> std::io::Result<Reply> {
        let reused = self.connection.is_some();
        match self.try_request(method, path, body) {
            Ok(reply) => Ok(reply),
            Err(_) if reused => {
                self.connection = None;
                self.try_request(method, path, body)
            }
            Err(error) => Err(error),
        }
    }

    fn try_request(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> std::io::Result<Reply> {
        if self.connection.is_none() {
            let stream = TcpStream::connect(&self.addr)?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(self.timeout))?;
            self.connection = Some(BufReader::new(stream));
        }
        let outcome = self.exchange(method, path, body);
        if outcome.is_err() {
            self.connection = None;
        }
        outcome
    }

    fn exchange(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> std::io::Result<Reply> {
        let connection = self.connection.as_mut().expect("connected above");
        let body = body.unwrap_or(&[]);
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n", self.addr, body.len());
        if !body.is_empty() {
            head.push_str("Content-Type: application/json\r\n");
        }
        head.push_str("\r\n");
        let mut message = head.into_bytes();
        message.extend_from_slice(body);
        connection.get_mut().write_all(&message)?;

        let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        let mut line = String::new();
        if connection.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        let status: u16 = line.split_whitespace().nth(1).and_then(|code| code.parse().ok()).ok_or_else(|| invalid("bad status line"))?;
        let mut length = None;
        let mut chunked = false;
        let mut close = false;
        loop {
            line.clear();
            connection.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim();
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.parse::<usize>().ok(),
                    "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                    "connection" => close = value.eq_ignore_ascii_case("close"),
                    _ => {}
                }
            }
        }
        let mut bytes = Vec::new();
        if chunked {
            loop {
                line.clear();
                connection.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim(), 16).map_err(|_| invalid("bad chunk size"))?;
                if size == 0 {
                    line.clear();
                    connection.read_line(&mut line)?;
                    break;
                }
                let start = bytes.len();
                bytes.resize(start + size, 0);
                connection.read_exact(&mut bytes[start..])?;
                line.clear();
                connection.read_line(&mut line)?;
            }
        } else if let Some(length) = length {
            bytes.resize(length, 0);
            connection.read_exact(&mut bytes)?;
        } else {
            connection.read_to_end(&mut bytes)?;
            close = true;
        }
        if close {
            self.connection = None;
        }
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok(Reply { status, body })
    }
}

/// Percent-encodes a query-string value.
pub fn encode_query_value(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// A free TCP address on loopback (bound, then released for a node to take). Ports come
/// from below Linux's ephemeral range (32768+), so an outgoing connection cannot take
/// the port between this check and the node's bind; a per-process counter keeps
/// parallel tests and benchmarks apart.
///
/// # Errors
/// If no port between 10000 and 32000 is free.
pub fn free_local_addr() -> Result<std::net::SocketAddr, String> {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 400) as u16 * 30;
    for _ in 0..22_000 {
        let offset = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = 10_000 + (base - 10_000 + offset) % 22_000;
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return listener.local_addr().map_err(|error| error.to_string());
        }
    }
    Err("no free port on 127.0.0.1 between 10000 and 32000".to_string())
}

/// Waits until every address answers `/readyz` with 200.
///
/// # Errors
/// If one does not become ready within `timeout`.
pub fn wait_ready(addresses: &[String], timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    for address in addresses {
        let mut client = HttpClient::new(address).with_timeout(Duration::from_secs(2));
        while !client.get("/readyz").is_ok_and(|reply| reply.status == 200) {
            if Instant::now() > deadline {
                return Err(format!("node at {address} did not become ready within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}
