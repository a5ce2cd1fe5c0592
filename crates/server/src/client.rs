//! A blocking HTTP client for tern's API, for end-to-end tests, the demo workload,
//! benchmarks and `tern verify`: hyper's HTTP/1.1 client on a single-threaded tokio
//! runtime of its own, one kept-alive connection per client, every status a reply.
//!
//! Not `ureq`: `ureq` 3.5 sends a POST's head and body in two writes with a `setsockopt`
//! before each, and as `tern bench`'s load generator (sharing two cores with the servers
//! it measures) it halved the 32-client semi-sync figure (docs/restructuring.md). hyper
//! writes a request at once.
//!
//! Call it from plain threads (or `spawn_blocking`), not from inside an async task: it
//! blocks on its own runtime.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::time::{Duration, Instant};

pub struct HttpClient {
    addr: String,
    timeout: Duration,
    runtime: tokio::runtime::Runtime,
    connection: Option<SendRequest<Full<Bytes>>>,
    /// Sent as the `Authorization` header of every request.
    authorization: Option<String>,
}

/// A response: status code and body parsed as JSON (or a string if it is not JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl HttpClient {
    /// `addr` is `host:port` (an `http://` prefix is accepted).
    ///
    /// # Panics
    /// If the operating system refuses the runtime's timer or I/O driver.
    pub fn new(addr: &str) -> HttpClient {
        let addr = addr.trim_start_matches("http://").trim_end_matches('/').to_string();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a single-threaded tokio runtime");
        HttpClient { addr, timeout: Duration::from_secs(30), runtime, connection: None, authorization: None }
    }

    /// Sends HTTP basic auth with every request.
    pub fn with_basic_auth(self, user: &str, password: &str) -> HttpClient {
        use base64::Engine;
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.with_authorization(Some(format!("Basic {encoded}")))
    }

    /// Sends HTTP basic auth as `TERN_USER` and `TERN_PASSWORD` say, when both are set
    /// (tern's own tools against a node started with `--auth`).
    pub fn with_env_credentials(self) -> HttpClient {
        match (std::env::var("TERN_USER"), std::env::var("TERN_PASSWORD")) {
            (Ok(user), Ok(password)) => self.with_basic_auth(&user, &password),
            _ => self,
        }
    }

    /// Sends this `Authorization` header with every request (`None`: none).
    pub fn with_authorization(mut self, header: Option<String>) -> HttpClient {
        self.authorization = header;
        self
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// How long one request may take, connecting included.
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

    /// Sends one request on the kept-alive connection; a request that fails on a reused
    /// connection (closed by the server meanwhile) is retried once on a new one.
    ///
    /// # Errors
    /// If the server cannot be reached, answers with something that is not HTTP, or does
    /// not answer within the timeout.
    pub fn request(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> std::io::Result<Reply> {
        let (status, bytes) = self.request_raw(method, path, body)?;
        Ok(Reply { status, body: parse_body(&bytes) })
    }

    /// The status and the body's bytes as they came (a file, or JSON to parse oneself).
    pub fn request_raw(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> std::io::Result<(u16, Bytes)> {
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

    fn try_request(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> std::io::Result<(u16, Bytes)> {
        let mut builder =
            hyper::Request::builder().method(method).uri(path).header(hyper::header::HOST, &self.addr).header(hyper::header::CONTENT_TYPE, "application/json");
        if let Some(authorization) = &self.authorization {
            builder = builder.header(hyper::header::AUTHORIZATION, authorization);
        }
        let request = builder
            .body(Full::new(Bytes::copy_from_slice(body.unwrap_or_default())))
            .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidInput, error))?;
        let (addr, connection) = (&self.addr, &mut self.connection);
        let exchange = async move {
            if connection.as_ref().is_none_or(SendRequest::is_closed) {
                let stream = tokio::net::TcpStream::connect(addr.as_str()).await?;
                stream.set_nodelay(true)?;
                let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(std::io::Error::other)?;
                // The connection's I/O runs while this runtime is blocked on a request.
                tokio::spawn(driver);
                *connection = Some(sender);
            }
            let sender = connection.as_mut().expect("connected above");
            sender.ready().await.map_err(std::io::Error::other)?;
            let response = sender.send_request(request).await.map_err(std::io::Error::other)?;
            let status = response.status().as_u16();
            let bytes = response.into_body().collect().await.map_err(std::io::Error::other)?.to_bytes();
            Ok::<_, std::io::Error>((status, bytes))
        };
        let timeout = self.timeout;
        let outcome = self.runtime.block_on(async { tokio::time::timeout(timeout, exchange).await });
        let outcome = outcome.unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer within {timeout:?}"))));
        if outcome.is_err() {
            self.connection = None;
        }
        outcome
    }
}

/// A response body as JSON, or as a string if it is not JSON.
pub fn parse_body(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
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
