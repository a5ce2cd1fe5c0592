//! A blocking HTTP client for tern's API, for end-to-end tests, the demo workload,
//! benchmarks and `tern verify`: a thin layer over `ureq` that keeps one connection
//! alive per client and returns non-2xx answers as replies, not errors.

use serde_json::Value;
use std::time::{Duration, Instant};

pub struct HttpClient {
    addr: String,
    agent: ureq::Agent,
}

/// A response: status code and body parsed as JSON (or a string if it is not JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

/// The largest reply body read (a whole-table query can be large).
const MAX_REPLY_BYTES: u64 = 1 << 30;

impl HttpClient {
    /// `addr` is `host:port` (an `http://` prefix is accepted).
    pub fn new(addr: &str) -> HttpClient {
        let addr = addr.trim_start_matches("http://").trim_end_matches('/').to_string();
        HttpClient { addr, agent: agent(Duration::from_secs(30)) }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// How long one request may take, connecting included.
    pub fn with_timeout(mut self, timeout: Duration) -> HttpClient {
        self.agent = agent(timeout);
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

    /// Sends one request (`GET` or `POST`; a `POST` body is sent as JSON) on the
    /// kept-alive connection.
    ///
    /// # Errors
    /// If the server cannot be reached, answers with something that is not HTTP, or the
    /// method is neither.
    pub fn request(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> std::io::Result<Reply> {
        let url = format!("http://{}{path}", self.addr);
        let response = match method {
            "GET" => self.agent.get(&url).call(),
            "POST" => self.agent.post(&url).header("Content-Type", "application/json").send(body.unwrap_or(&[])),
            other => return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("method {other} is not supported"))),
        };
        let mut response = response.map_err(ureq::Error::into_io)?;
        let status = response.status().as_u16();
        let bytes = response.body_mut().with_config().limit(MAX_REPLY_BYTES).read_to_vec().map_err(ureq::Error::into_io)?;
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok(Reply { status, body })
    }
}

/// One connection per client, kept alive; every status is a reply; never through a proxy
/// named in the environment (tern is reached on its own addresses).
fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder().proxy(None).timeout_global(Some(timeout)).http_status_as_error(false).max_idle_connections_per_host(1).build().into()
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
