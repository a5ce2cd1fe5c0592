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
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct HttpClient {
    addr: String,
    timeout: Duration,
    runtime: tokio::runtime::Runtime,
    connection: Option<SendRequest<Full<Bytes>>>,
    /// Sent as the `Authorization` header of every request.
    authorization: Option<String>,
    /// HTTPS (an `https://` address): whom to trust, and what to present.
    tls: Option<Arc<rustls::ClientConfig>>,
    https: bool,
}

/// What `https://` addresses are trusted with when a client is not given its own
/// configuration: set by [`trust_for_https`], else read once from `TERN_CA` (a PEM CA
/// file), with `TERN_CERT` and `TERN_KEY` as a client certificate when both are set.
static HTTPS_TRUST: std::sync::Mutex<Option<Arc<rustls::ClientConfig>>> = std::sync::Mutex::new(None);

/// Makes `config` what `https://` clients of this process trust (tern's own tools after
/// reading `--ca`; the demo with `--tls`).
pub fn trust_for_https(config: Arc<rustls::ClientConfig>) {
    *HTTPS_TRUST.lock().expect("https trust lock") = Some(config);
}

fn default_https_trust() -> Result<Arc<rustls::ClientConfig>, String> {
    let mut trust = HTTPS_TRUST.lock().expect("https trust lock");
    if let Some(config) = trust.as_ref() {
        return Ok(config.clone());
    }
    let ca = std::env::var("TERN_CA").map_err(|_| "an https:// address needs a CA to trust: set TERN_CA to the cluster's ca.pem".to_string())?;
    let identity = match (std::env::var("TERN_CERT"), std::env::var("TERN_KEY")) {
        (Ok(cert), Ok(key)) => Some((std::path::PathBuf::from(cert), std::path::PathBuf::from(key))),
        _ => None,
    };
    let config = crate::tls::client_config_from(std::path::Path::new(&ca), identity.as_ref().map(|(cert, key)| (cert.as_path(), key.as_path())))?;
    *trust = Some(config.clone());
    Ok(config)
}

/// A response: status code and body parsed as JSON (or a string if it is not JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl HttpClient {
    /// `addr` is `host:port`, `http://host:port`, or `https://host:port` (TLS, trusting
    /// what [`trust_for_https`] or `TERN_CA` says unless [`HttpClient::with_tls`] is used).
    ///
    /// # Panics
    /// If the operating system refuses the runtime's timer or I/O driver.
    pub fn new(addr: &str) -> HttpClient {
        let https = addr.starts_with("https://");
        let addr = addr.trim_start_matches("http://").trim_start_matches("https://").trim_end_matches('/').to_string();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a single-threaded tokio runtime");
        HttpClient { addr, timeout: Duration::from_secs(30), runtime, connection: None, authorization: None, tls: None, https }
    }

    /// Speaks HTTPS with this configuration (`None`: plain HTTP).
    pub fn with_tls(mut self, config: Option<Arc<rustls::ClientConfig>>) -> HttpClient {
        self.https = config.is_some();
        self.tls = config;
        self
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
        if self.https && self.tls.is_none() {
            self.tls = Some(default_https_trust().map_err(std::io::Error::other)?);
        }
        let (addr, connection, tls) = (&self.addr, &mut self.connection, &self.tls);
        let exchange = async move {
            if connection.as_ref().is_none_or(SendRequest::is_closed) {
                let stream = tokio::net::TcpStream::connect(addr.as_str()).await?;
                stream.set_nodelay(true)?;
                // The connection's I/O runs while this runtime is blocked on a request.
                let sender = match tls {
                    None => {
                        let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(std::io::Error::other)?;
                        tokio::spawn(driver);
                        sender
                    }
                    Some(config) => {
                        let host = addr.rsplit_once(':').map_or(addr.as_str(), |(host, _)| host).trim_start_matches('[').trim_end_matches(']');
                        let name = rustls::pki_types::ServerName::try_from(host.to_string())
                            .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidInput, error))?;
                        let stream = tokio_rustls::TlsConnector::from(config.clone()).connect(name, stream).await?;
                        let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(std::io::Error::other)?;
                        tokio::spawn(driver);
                        sender
                    }
                };
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
