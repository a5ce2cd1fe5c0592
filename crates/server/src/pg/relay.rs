//! A size limit in front of pgwire. pgwire takes client messages of up to 1 GB and buffers
//! each whole before handing it on, so a client could make a node hold gigabytes. Each
//! connection is therefore relayed: the client's bytes are read here, every message's
//! length is checked against `--max-body-bytes` (the HTTP body limit) as its header
//! arrives, and pgwire reads them from one end of a socket pair. A message over the limit
//! ends the connection with a FATAL error (SQLSTATE 54000) before its body is read.
//!
//! The relay also answers the TLS and GSS encryption requests a client may send first,
//! which pgwire does only on its TCP path. With a certificate (`--http-cert`), a TLS
//! request is answered 'S' and the connection continues encrypted; a client that does not
//! ask for TLS is then refused, so no password crosses in the clear. Without one, 'N':
//! this door speaks plain text. GSS encryption is always declined.

use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::Mutex;

/// The request codes of the messages that may open a connection (PostgreSQL's protocol).
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
/// PostgreSQL's own limit on a startup packet.
const MAX_STARTUP_BYTES: usize = 10_000;
/// A client that has not finished its startup packet by then is dropped.
const STARTUP_WAIT: Duration = Duration::from_secs(60);

/// Serves one client connection: pgwire on one end of a socket pair, the relay between
/// it and the client.
pub async fn serve<H: pgwire::api::PgWireServerHandlers + Send + Sync + 'static>(
    client: TcpStream,
    handlers: H,
    max_message_bytes: usize,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> io::Result<()> {
    let (ours, theirs) = UnixStream::pair()?;
    let server = tokio::spawn(pgwire::tokio::process_socket_unix(theirs, handlers));
    let outcome = relay(client, ours, max_message_bytes, tls).await;
    server.abort();
    outcome
}

/// How a connection's opening went.
enum Opened {
    /// The startup packet went to pgwire.
    Started,
    /// The client asked for TLS and was told yes.
    WantsTls,
    /// The client did not ask for TLS where it is required, and was told so.
    Refused,
}

/// Reads the packets that open a connection (no type byte), answering encryption
/// requests, until the startup packet, which goes to pgwire.
async fn open<S: AsyncRead + AsyncWrite + Unpin>(client: &mut S, to_server: &mut tokio::net::unix::OwnedWriteHalf, tls: TlsStage) -> io::Result<Opened> {
    loop {
        let length = client.read_u32().await? as usize;
        if !(8..=MAX_STARTUP_BYTES).contains(&length) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("startup packet of {length} bytes")));
        }
        let mut body = vec![0; length - 4];
        client.read_exact(&mut body).await?;
        let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        if code == SSL_REQUEST && tls == TlsStage::Offered {
            client.write_all(b"S").await?;
            return Ok(Opened::WantsTls);
        }
        if code == SSL_REQUEST || code == GSSENC_REQUEST {
            client.write_all(b"N").await?;
            continue;
        }
        if tls == TlsStage::Offered {
            let message = "this node's PostgreSQL door requires TLS: connect with sslmode=require (or prefer)";
            let _ = client.write_all(&fatal("28000", message)).await;
            let _ = client.shutdown().await;
            return Ok(Opened::Refused);
        }
        to_server.write_all(&(length as u32).to_be_bytes()).await?;
        to_server.write_all(&body).await?;
        return Ok(Opened::Started);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum TlsStage {
    /// No certificate: plain text only.
    Plain,
    /// A certificate: the client must ask for TLS.
    Offered,
    /// Inside TLS already.
    Encrypted,
}

type ClientReader = Box<dyn AsyncRead + Send + Unpin>;
type ClientWriter = Arc<Mutex<Box<dyn AsyncWrite + Send + Unpin>>>;

fn split_client<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S) -> (ClientReader, ClientWriter) {
    let (reader, writer) = tokio::io::split(stream);
    (Box::new(reader), Arc::new(Mutex::new(Box::new(writer))))
}

async fn relay(mut client: TcpStream, server: UnixStream, max_message_bytes: usize, tls: Option<tokio_rustls::TlsAcceptor>) -> io::Result<()> {
    let _ = client.set_nodelay(true);
    let (mut from_server, mut to_server) = server.into_split();
    let opening = async {
        let stage = if tls.is_some() { TlsStage::Offered } else { TlsStage::Plain };
        match open(&mut client, &mut to_server, stage).await? {
            Opened::Started => Ok(Some(split_client(client))),
            Opened::Refused => Ok(None),
            Opened::WantsTls => {
                let acceptor = tls.expect("TLS is offered only with an acceptor");
                let mut encrypted = acceptor.accept(client).await?;
                match open(&mut encrypted, &mut to_server, TlsStage::Encrypted).await? {
                    Opened::Started => Ok(Some(split_client(encrypted))),
                    _ => Ok(None),
                }
            }
        }
    };
    let (mut from_client, to_client) = match tokio::time::timeout(STARTUP_WAIT, opening).await {
        Ok(Ok(Some(halves))) => halves,
        Ok(Ok(None)) | Err(_) => return Ok(()),
        Ok(Err(error)) => return Err(error),
    };

    let replies = {
        let to_client = to_client.clone();
        tokio::spawn(async move {
            let mut buffer = vec![0; 64 * 1024];
            loop {
                let read = from_server.read(&mut buffer).await?;
                if read == 0 {
                    let _ = to_client.lock().await.shutdown().await;
                    return Ok::<(), io::Error>(());
                }
                to_client.lock().await.write_all(&buffer[..read]).await?;
            }
        })
    };
    let requests = forward_checked(&mut from_client, &mut to_server, &to_client, max_message_bytes).await;
    // The client is gone or was refused: pgwire's side ends when its socket closes.
    drop(to_server);
    let _ = replies.await;
    requests
}

/// Forwards typed messages (a type byte, a 4-byte length, the body), checking each
/// length as its header arrives.
async fn forward_checked(
    from_client: &mut ClientReader,
    to_server: &mut tokio::net::unix::OwnedWriteHalf,
    to_client: &Mutex<Box<dyn AsyncWrite + Send + Unpin>>,
    max_message_bytes: usize,
) -> io::Result<()> {
    let mut buffer = vec![0; 64 * 1024];
    let mut header = [0u8; 5];
    let mut header_filled = 0;
    // Bytes of the current message's body still to pass.
    let mut body_left = 0usize;
    loop {
        let read = from_client.read(&mut buffer).await?;
        if read == 0 {
            return Ok(());
        }
        let mut position = 0;
        while position < read {
            if body_left > 0 {
                let take = body_left.min(read - position);
                body_left -= take;
                position += take;
                continue;
            }
            let take = (header.len() - header_filled).min(read - position);
            header[header_filled..header_filled + take].copy_from_slice(&buffer[position..position + take]);
            header_filled += take;
            position += take;
            if header_filled == header.len() {
                header_filled = 0;
                let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
                if length > max_message_bytes.saturating_add(4) {
                    refuse(to_client, header[0], length).await;
                    // Read what the client still sends, for a while: closing with unread
                    // bytes resets the connection, and the client could lose the error.
                    let _ =
                        tokio::time::timeout(Duration::from_secs(2), async { while from_client.read(&mut buffer).await.is_ok_and(|read| read > 0) {} }).await;
                    return Ok(());
                }
                // A length under 4 is malformed: pgwire reports it.
                body_left = length.saturating_sub(4);
            }
        }
        to_server.write_all(&buffer[..read]).await?;
    }
}

/// Tells the client its message is over the limit, as a FATAL error, and closes.
async fn refuse(to_client: &Mutex<Box<dyn AsyncWrite + Send + Unpin>>, kind: u8, length: usize) {
    let kind = if kind.is_ascii_graphic() { (kind as char).to_string() } else { format!("0x{kind:02x}") };
    let message = format!("message '{kind}' of {length} bytes is over this node's limit (--max-body-bytes): send less at once");
    let mut writer = to_client.lock().await;
    let _ = writer.write_all(&fatal("54000", &message)).await;
    let _ = writer.shutdown().await;
}

/// A FATAL ErrorResponse message.
fn fatal(sqlstate: &str, message: &str) -> Vec<u8> {
    let mut fields = Vec::new();
    for (code, value) in [(b'S', "FATAL"), (b'V', "FATAL"), (b'C', sqlstate), (b'M', message)] {
        fields.push(code);
        fields.extend_from_slice(value.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut frame = vec![b'E'];
    frame.extend_from_slice(&((fields.len() + 4) as u32).to_be_bytes());
    frame.extend_from_slice(&fields);
    frame
}
