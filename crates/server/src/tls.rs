//! TLS for tern's three doors, through rustls with its pure-Rust `ring` provider:
//!
//! - **Between nodes** ([`PeerTls`]): mutual TLS against the cluster's CA. Each side
//!   presents its node certificate; a dialing node checks that the certificate it gets
//!   names the peer it meant to reach, and an accepting node checks that the certificate
//!   it got names the id the peer's `Hello` claims ([`certificate_names`]). No frame is
//!   read before the handshake is done, and none is handled before that check.
//! - **The HTTP API** ([`HttpTls`]): a server certificate, and client certificates when a
//!   CA is given for them.
//! - **The PostgreSQL door**: the HTTP API's certificate, answering a client's SSLRequest.
//!
//! [`generate`] makes a cluster CA and node certificates for `tern certs`.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A handshake that takes longer than this is abandoned (a peer that connects and says
/// nothing must not hold a task for ever).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|error| format!("cannot read certificates from {}: {error}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("{} is not a PEM certificate file: {error}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certificates)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|error| format!("cannot read a PEM private key from {}: {error}", path.display()))
}

fn read_roots(path: &Path) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for certificate in read_certificates(path)? {
        roots.add(certificate).map_err(|error| format!("{}: not a usable CA certificate: {error}", path.display()))?;
    }
    Ok(Arc::new(roots))
}

/// Where a node's certificate, key and CA are (`--node-cert`, `--node-key`, `--node-ca`
/// or `--http-cert`, `--http-key`, `--http-ca`).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
}

/// Mutual TLS between nodes: every connection, both ways, presents a certificate signed
/// by the cluster CA.
pub struct PeerTls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    /// Trusts the cluster CA and presents this node's certificate: for peer connections,
    /// and for this node's HTTPS calls to other members (the dashboard, `cluster add`).
    client: Arc<ClientConfig>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("PeerTls")
    }
}

impl PeerTls {
    /// # Errors
    /// If a file cannot be read or does not hold what it should, or the certificate does
    /// not name `id` (peers would refuse it).
    pub fn load(id: &str, cert: &Path, key: &Path, ca: &Path) -> Result<PeerTls, String> {
        let chain = read_certificates(cert)?;
        if !certificate_names(&chain[0], id) {
            return Err(format!(
                "{}: the certificate does not name this node's id {id:?}, so its peers would refuse it (tern certs makes one that does)",
                cert.display()
            ));
        }
        let key = read_key(key)?;
        let roots = read_roots(ca)?;
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider()).build().map_err(|error| format!("--node-ca: {error}"))?;
        let server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| error.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|error| format!("--node-cert/--node-key: {error}"))?;
        let client = Arc::new(
            ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|error| error.to_string())?
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)
                .map_err(|error| format!("--node-cert/--node-key: {error}"))?,
        );
        Ok(PeerTls { acceptor: TlsAcceptor::from(Arc::new(server)), connector: TlsConnector::from(client.clone()), client })
    }

    /// Trusts the cluster CA and presents this node's certificate.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }
}

fn client_config(roots: &Arc<RootCertStore>) -> Result<Arc<ClientConfig>, String> {
    Ok(Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| error.to_string())?
            .with_root_certificates(roots.clone())
            .with_no_client_auth(),
    ))
}

/// A client configuration trusting the CA certificates in `ca`, optionally presenting a
/// client certificate (`identity`: certificate and key files).
///
/// # Errors
/// If a file cannot be read or does not hold what it should.
pub fn client_config_from(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Arc<ClientConfig>, String> {
    let roots = read_roots(ca)?;
    let Some((cert, key)) = identity else { return client_config(&roots) };
    Ok(Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| error.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(read_certificates(cert)?, read_key(key)?)
            .map_err(|error| format!("{}: {error}", cert.display()))?,
    ))
}

/// TLS for the HTTP API (and the PostgreSQL door): the server's certificate, and the CA
/// client certificates must be signed by when one is given.
pub struct HttpTls {
    pub acceptor: TlsAcceptor,
}

impl std::fmt::Debug for HttpTls {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("HttpTls")
    }
}

impl HttpTls {
    /// # Errors
    /// If a file cannot be read or does not hold what it should.
    pub fn load(files: &TlsFiles) -> Result<HttpTls, String> {
        let chain = read_certificates(&files.cert)?;
        let key = read_key(&files.key)?;
        let builder = ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions().map_err(|error| error.to_string())?;
        let builder = match &files.ca {
            Some(ca) => builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(read_roots(ca)?, provider()).build().map_err(|error| format!("--http-ca: {error}"))?,
            ),
            None => builder.with_no_client_auth(),
        };
        // No ALPN: the same configuration serves HTTP/1.1 and PostgreSQL, and a server
        // without protocols of its own ignores a client's list (libpq 17 sends one).
        let server = builder.with_single_cert(chain, key).map_err(|error| format!("--http-cert/--http-key: {error}"))?;
        Ok(HttpTls { acceptor: TlsAcceptor::from(Arc::new(server)) })
    }
}

/// The node and HTTP TLS settings of node `id` from a directory `tern certs` wrote
/// (`ID.pem`, `ID.key`, `ca.pem`; the HTTP API then asks for no client certificate).
///
/// # Errors
/// If a file cannot be read or does not hold what it should.
pub fn load_dir(dir: &Path, id: &str) -> Result<(PeerTls, HttpTls), String> {
    let (cert, key) = (dir.join(format!("{id}.pem")), dir.join(format!("{id}.key")));
    let peer = PeerTls::load(id, &cert, &key, &dir.join("ca.pem"))?;
    let http = HttpTls::load(&TlsFiles { cert, key, ca: None })?;
    Ok((peer, http))
}

/// An HTTPS listener for `axum::serve`: TCP connections are accepted and their handshakes
/// run each on a task of its own (a client that stalls its handshake holds no one up);
/// those that complete are served.
pub struct TlsListener {
    local: std::net::SocketAddr,
    handshaken: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, std::net::SocketAddr)>,
}

impl TlsListener {
    /// # Errors
    /// If the listener has no local address.
    pub fn new(listener: tokio::net::TcpListener, acceptor: TlsAcceptor) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (sender, handshaken) = tokio::sync::mpsc::channel(64);
        tokio::spawn(crate::transport::accept_each(listener, "HTTPS", move |stream, remote| {
            let _ = stream.set_nodelay(true);
            let (sender, acceptor) = (sender.clone(), acceptor.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let _ = sender.send((stream, remote)).await;
                    }
                    Ok(Err(error)) => tracing::debug!("TLS handshake with HTTP client {remote} failed: {error}"),
                    Err(_) => tracing::debug!("TLS handshake with HTTP client {remote} timed out"),
                }
            });
        }));
        Ok(TlsListener { local, handshaken })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.handshaken.recv().await {
            Some(accepted) => accepted,
            // The accepting task ended only with the runtime.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Serves `app` on `listener`, over TLS when `tls` is given, until the runtime stops.
pub fn spawn_http(listener: tokio::net::TcpListener, app: axum::Router, tls: Option<&HttpTls>) {
    match tls {
        Some(tls) => match TlsListener::new(listener, tls.acceptor.clone()) {
            Ok(listener) => {
                tokio::spawn(async move {
                    if let Err(error) = axum::serve(listener, app).await {
                        tracing::error!("HTTPS server stopped: {error}");
                    }
                });
            }
            Err(error) => tracing::error!("HTTPS server cannot start: {error}"),
        },
        None => {
            tokio::spawn(async move {
                if let Err(error) = axum::serve(listener, app).await {
                    tracing::error!("HTTP server stopped: {error}");
                }
            });
        }
    }
}

/// One side of a peer connection, plain or encrypted.
pub type PeerReader = Box<dyn AsyncRead + Send + Unpin>;
pub type PeerWriter = Box<dyn AsyncWrite + Send + Unpin>;

fn split_plain(stream: TcpStream) -> (PeerReader, PeerWriter) {
    let (reader, writer) = stream.into_split();
    (Box::new(reader), Box::new(writer))
}

/// Opens a connection to `peer` over `stream`: with TLS, the peer's certificate must be
/// signed by the cluster CA and name `peer`.
///
/// # Errors
/// If the handshake fails or times out.
pub async fn dial(tls: Option<&PeerTls>, stream: TcpStream, peer: &str) -> std::io::Result<(PeerReader, PeerWriter)> {
    let Some(tls) = tls else { return Ok(split_plain(stream)) };
    let name = ServerName::try_from(peer.to_string())
        .map_err(|_| std::io::Error::other(format!("node id {peer:?} is not a DNS name: it cannot be checked against a certificate")))?;
    let stream =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.connector.connect(name, stream)).await.map_err(|_| std::io::Error::other("TLS handshake timed out"))??;
    let (reader, writer) = tokio::io::split(stream);
    Ok((Box::new(reader), Box::new(writer)))
}

/// Accepts a peer's connection: with TLS, only once it has presented a certificate signed
/// by the cluster CA, which is returned for [`certificate_names`].
///
/// # Errors
/// If the handshake fails or times out.
pub async fn accept(tls: Option<&PeerTls>, stream: TcpStream) -> std::io::Result<(PeerReader, PeerWriter, Option<CertificateDer<'static>>)> {
    let Some(tls) = tls else {
        let (reader, writer) = split_plain(stream);
        return Ok((reader, writer, None));
    };
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor.accept(stream)).await.map_err(|_| std::io::Error::other("TLS handshake timed out"))??;
    let certificate = stream.get_ref().1.peer_certificates().and_then(|chain| chain.first()).map(|certificate| certificate.clone().into_owned());
    let (reader, writer) = tokio::io::split(stream);
    Ok((Box::new(reader), Box::new(writer), certificate))
}

/// Whether `certificate` (already verified against the CA) is valid for the name `id`:
/// a node may only speak as the node its certificate names.
pub fn certificate_names(certificate: &CertificateDer<'_>, id: &str) -> bool {
    let Ok(parsed) = rustls::server::ParsedCertificate::try_from(certificate) else { return false };
    let Ok(name) = ServerName::try_from(id) else { return false };
    rustls::client::verify_server_name(&parsed, &name).is_ok()
}

/// What `tern certs` writes: a CA and, per node, a certificate that serves as both TLS
/// server and client, naming the node's id and `hosts` (addresses clients dial).
pub struct GeneratedCertificates {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
    /// (node id, certificate PEM, key PEM).
    pub nodes: Vec<(String, String, String)>,
}

/// Makes a cluster CA named `cluster` and a certificate for each node id. Ids must be DNS
/// names (letters, digits, hyphens), since that is what a certificate can name. With
/// `ca_key` (the PEM key of a CA this function made for the same `cluster`), the CA is
/// made again from its key and name, so new node certificates verify against the CA
/// certificate already handed out (a node added later).
///
/// # Errors
/// If an id or host cannot be named in a certificate, or `ca_key` is not a key.
pub fn generate(cluster: &str, ids: &[String], hosts: &[String], ca_key: Option<&str>) -> Result<GeneratedCertificates, String> {
    use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name = DistinguishedName::new();
    ca_params.distinguished_name.push(DnType::CommonName, format!("tern cluster CA {cluster}"));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = match ca_key {
        Some(pem) => KeyPair::from_pem(pem).map_err(|error| format!("the CA key is not a PEM key: {error}"))?,
        None => KeyPair::generate().map_err(|error| error.to_string())?,
    };
    let ca_cert = ca_params.self_signed(&ca_key).map_err(|error| error.to_string())?;
    let mut nodes = Vec::new();
    for id in ids {
        if ServerName::try_from(id.as_str()).map_or(true, |name| matches!(name, ServerName::IpAddress(_))) {
            return Err(format!("node id {id:?} is not a DNS name (letters, digits, hyphens and dots): a certificate cannot name it"));
        }
        let mut names = vec![id.clone()];
        names.extend(hosts.iter().filter(|host| *host != id).cloned());
        let mut params = CertificateParams::new(names).map_err(|error| format!("{id}: {error}"))?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, id.clone());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().map_err(|error| error.to_string())?;
        let certificate = params.signed_by(&key, &ca_cert, &ca_key).map_err(|error| format!("{id}: {error}"))?;
        nodes.push((id.clone(), certificate.pem(), key.serialize_pem()));
    }
    Ok(GeneratedCertificates { ca_cert_pem: ca_cert.pem(), ca_key_pem: ca_key.serialize_pem(), nodes })
}

/// Writes [`generate`]'s output into `dir`: `ca.pem`, `ca.key`, `ID.pem`, `ID.key`. Keys
/// are written readable by their owner only.
///
/// # Errors
/// If a file cannot be written.
pub fn write_certificates(dir: &Path, generated: &GeneratedCertificates, with_ca: bool) -> Result<Vec<PathBuf>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
    let write = |name: String, text: &str, private: bool| -> Result<PathBuf, String> {
        use std::io::Write;
        let path = dir.join(name);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true).mode(if private { 0o600 } else { 0o644 });
        let mut file = options.open(&path).map_err(|error| format!("cannot write {}: {error}", path.display()))?;
        file.write_all(text.as_bytes()).map_err(|error| format!("cannot write {}: {error}", path.display()))?;
        Ok(path)
    };
    let mut written = Vec::new();
    if with_ca {
        written.push(write("ca.pem".to_string(), &generated.ca_cert_pem, false)?);
        written.push(write("ca.key".to_string(), &generated.ca_key_pem, true)?);
    }
    for (id, cert, key) in &generated.nodes {
        written.push(write(format!("{id}.pem"), cert, false)?);
        written.push(write(format!("{id}.key"), key, true)?);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_certificate_names_its_node_and_hosts_and_nothing_else() {
        let generated = generate("test", &["n1".to_string(), "n2".to_string()], &["localhost".to_string(), "127.0.0.1".to_string()], None).unwrap();
        let n1 = CertificateDer::from_pem_slice(generated.nodes[0].1.as_bytes()).unwrap();
        assert!(certificate_names(&n1, "n1"));
        assert!(certificate_names(&n1, "localhost"));
        assert!(certificate_names(&n1, "127.0.0.1"));
        assert!(!certificate_names(&n1, "n2"));
        assert!(!certificate_names(&n1, "n"));
        assert!(!certificate_names(&n1, "not a name"));
    }

    /// The peer door with TLS: any bytes a stranger sends end in a refused handshake
    /// (never a panic, never a connection that reads frames).
    #[test]
    fn any_bytes_instead_of_a_handshake_are_refused() {
        let dir = std::env::temp_dir().join(format!("tern-tls-unit-{}", std::process::id()));
        write_certificates(&dir, &generate("unit", &["n1".to_string()], &[], None).unwrap(), true).unwrap();
        let tls = Arc::new(PeerTls::load("n1", &dir.join("n1.pem"), &dir.join("n1.key"), &dir.join("ca.pem")).unwrap());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let config = proptest::test_runner::Config { cases: 48, ..proptest::test_runner::Config::default() };
        proptest::proptest!(config, |(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2048))| {
            let tls = tls.clone();
            let refused = runtime.block_on(async move {
                use tokio::io::AsyncWriteExt;
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let address = listener.local_addr().unwrap();
                let sending = tokio::spawn(async move {
                    let mut stranger = TcpStream::connect(address).await.unwrap();
                    let _ = stranger.write_all(&bytes).await;
                    // Then nothing more: the handshake cannot complete.
                    let _ = stranger.shutdown().await;
                });
                let (stream, _) = listener.accept().await.unwrap();
                let outcome = accept(Some(&tls), stream).await;
                let _ = sending.await;
                outcome.is_err()
            });
            proptest::prop_assert!(refused);
        });
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_id_that_is_no_dns_name_is_refused() {
        for id in ["n 1", "", "127.0.0.1", "n_1/x"] {
            assert!(generate("test", &[id.to_string()], &[], None).is_err(), "{id:?}");
        }
    }
}
