//! The peer transport: one outbound TCP connection per peer for what this node sends,
//! inbound connections for what peers send. Each connection opens with a `Hello`, which is
//! how nodes learn each other's regions and HTTP addresses.
//!
//! WAN emulation lives here (these machines have no `tc netem`): every frame is held
//! until its enqueue time plus the one-way latency between the two regions, which keeps
//! frames in order and lets many be in flight at once, as on a real long link.

use crate::node::{Event, IncomingSnapshot, Node};
use crate::tls::PeerWriter;
use crate::wire::{read_frame, read_frame_up_to, write_frame, Frame, Hello, MAX_HELLO_BYTES};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_core::Position;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const RECONNECT_DELAY: Duration = Duration::from_millis(100);

/// A frame waiting for a peer: when it was queued, the frame, its weight in bytes.
pub(crate) type Queued = (Instant, Frame, usize);
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// A forwarded client request (or its reply) older than this when a connection comes up
/// is dropped: the node that forwarded it has given up or will soon.
const STALE_FRAME: Duration = Duration::from_secs(2);

/// Which of a peer's two outbound connections a loop keeps (see `PeerQueue`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Link {
    /// Everything but raft's messages: entries, tern's heartbeats and acks, forwarded
    /// requests, snapshots. Its reconnection tells the core that frames may be lost.
    Data,
    /// Raft's messages alone (votes, raft's heartbeats, membership), so that no entry
    /// being shipped delays them.
    Raft,
}

/// Keeps a connection to `peer` open and writes every frame queued for it. While the
/// peer is unreachable, the core's messages are dropped (it resends what matters, and a
/// backlog of appends to a dead follower would flood it when it returns), but forwarded
/// client requests and replies wait, up to `STALE_FRAME`: each is sent once, and losing
/// one during a reconnect left a client waiting out its whole timeout.
pub(crate) async fn outbound_loop(
    node: Arc<Node>,
    peer: String,
    addr: SocketAddr,
    mut frames: mpsc::UnboundedReceiver<Queued>,
    queued: Arc<AtomicUsize>,
    link: Link,
) {
    let mut waiting: std::collections::VecDeque<Queued> = std::collections::VecDeque::new();
    // Every frame leaving the queue, written or dropped, gives its weight back.
    let release = |weight: usize| {
        queued.fetch_sub(weight, Ordering::AcqRel);
    };
    let hold = |waiting: &mut std::collections::VecDeque<Queued>, frames: &mut mpsc::UnboundedReceiver<Queued>| {
        while let Ok(frame) = frames.try_recv() {
            if matches!(frame.1, Frame::ForwardWrite { .. } | Frame::ForwardRead { .. } | Frame::ForwardWriteReply { .. } | Frame::ForwardReadReply { .. }) {
                waiting.push_back(frame);
            } else {
                release(frame.2);
            }
        }
        while waiting.front().is_some_and(|(enqueued, _, _)| enqueued.elapsed() > STALE_FRAME) {
            if let Some((_, _, weight)) = waiting.pop_front() {
                release(weight);
            }
        }
    };
    let mut refused = RepeatedWarning::default();
    loop {
        let stream = match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            _ => {
                if frames.is_closed() {
                    // The peer left the membership: stop trying.
                    return;
                }
                hold(&mut waiting, &mut frames);
                tokio::time::sleep(RECONNECT_DELAY).await;
                hold(&mut waiting, &mut frames);
                continue;
            }
        };
        let Some((read_half, write_half)) = open_peer_link(node.config.peer_tls.as_deref(), stream, &peer, addr, &mut refused).await else {
            hold(&mut waiting, &mut frames);
            tokio::time::sleep(RECONNECT_DELAY).await;
            continue;
        };
        let mut writer = BufWriter::with_capacity(256 << 10, write_half);
        if write_frame(&mut writer, &Frame::Hello(own_hello(&node))).await.is_err() || writer.flush().await.is_err() {
            tokio::time::sleep(RECONNECT_DELAY).await;
            continue;
        }
        // The peer answers with its own Hello: this is how a node that restarted learns
        // the region, HTTP address and liveness of peers that have nothing to send it
        // (a follower of another leader never writes to it, so it never dials it).
        let mut reader = BufReader::new(read_half);
        let mut buffer = Vec::new();
        match tokio::time::timeout(Duration::from_secs(10), read_frame_up_to(&mut reader, &mut buffer, MAX_HELLO_BYTES)).await {
            Ok(Ok(Some(Frame::Hello(hello)))) if hello.id == peer => record_hello(&node, hello),
            _ => {
                tracing::debug!("{peer} at {addr} did not answer our hello");
                tokio::time::sleep(RECONNECT_DELAY).await;
                continue;
            }
        }
        tracing::debug!("connected to {peer} at {addr} ({link:?} link)");
        refused = RepeatedWarning::default();
        if link == Link::Data {
            // What was in flight on the old connection may be lost: the core resends.
            node.post(Event::PeerConnected(peer.clone()));
        }
        hold(&mut waiting, &mut frames);
        let mut failed = false;
        while let Some((_, frame, weight)) = waiting.pop_front() {
            release(weight);
            if write_frame(&mut writer, &frame).await.is_err() {
                failed = true;
                break;
            }
        }
        if failed || writer.flush().await.is_err() || pump(&node, &peer, &mut writer, &mut frames, &release).await.is_err() {
            tracing::debug!("connection to {peer} lost ({link:?} link)");
            if link == Link::Data {
                set_connected(&node, &peer, false);
            }
            tokio::time::sleep(RECONNECT_DELAY).await;
        } else {
            return;
        }
    }
}

/// Writes frames until the channel closes (`Ok`) or the socket fails (`Err`).
async fn pump(
    node: &Node,
    peer: &str,
    writer: &mut BufWriter<PeerWriter>,
    frames: &mut mpsc::UnboundedReceiver<Queued>,
    release: &(dyn Fn(usize) + Sync),
) -> std::io::Result<()> {
    loop {
        let Some(queued) = frames.recv().await else { return Ok(()) };
        write_when_due(node, peer, writer, queued, release).await?;
        // Flush only when nothing else is ready: consecutive frames share a syscall.
        while let Ok(queued) = frames.try_recv() {
            write_when_due(node, peer, writer, queued, release).await?;
        }
        writer.flush().await?;
    }
}

/// Writes one queued frame once its emulated WAN delay has passed (flushing what is
/// buffered before waiting), and releases its weight from the peer's queue bound.
async fn write_when_due(
    node: &Node,
    peer: &str,
    writer: &mut BufWriter<PeerWriter>,
    (enqueued, frame, weight): Queued,
    release: &(dyn Fn(usize) + Sync),
) -> std::io::Result<()> {
    release(weight);
    let due = enqueued + node.wan_delay(peer);
    if due > Instant::now() {
        writer.flush().await?;
        tokio::time::sleep_until(due.into()).await;
    }
    write_frame(writer, &frame).await
}

fn own_hello(node: &Node) -> Hello {
    Hello {
        id: node.config.id.clone(),
        region: node.config.region.clone(),
        http_addr: node.http_addr.lock().expect("http addr lock").clone(),
        peer_addr: node.config.peer_addr.to_string(),
        topology: node.config.topology,
        preference: node.config.preference(),
    }
}

/// What a peer's Hello says about it: its region, HTTP address, and that it is up.
fn record_hello(node: &Node, hello: Hello) {
    let mut peers = node.peers.lock().expect("peers lock");
    let info = peers.entry(hello.id).or_default();
    info.region = hello.region;
    info.http_addr = hello.http_addr;
    info.preference = Some(hello.preference);
    info.connected = true;
}

fn set_connected(node: &Node, peer: &str, connected: bool) {
    if let Some(info) = node.peers.lock().expect("peers lock").get_mut(peer) {
        info.connected = connected;
    }
}

pub(crate) async fn accept_loop(node: Arc<Node>, listener: TcpListener) {
    accept_each(listener, "peer", |stream, _| {
        tokio::spawn(inbound(node.clone(), stream));
    })
    .await;
}

/// Accepts connections (`what`: peer, HTTPS, PostgreSQL) for ever, handing each to
/// `serve` with its remote address; a failed accept is retried after a pause (a full
/// file table clears as connections close).
pub(crate) async fn accept_each(listener: TcpListener, what: &str, mut serve: impl FnMut(TcpStream, SocketAddr)) {
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => serve(stream, remote),
            Err(error) => {
                tracing::warn!("accepting a {what} connection failed: {error}");
                tokio::time::sleep(RECONNECT_DELAY).await;
            }
        }
    }
}

/// Sets up an outgoing peer connection: no Nagle delay, and TLS when configured (a failed
/// handshake is warned about once through `refused`, then at debug level).
pub(crate) async fn open_peer_link(
    tls: Option<&crate::tls::PeerTls>,
    stream: TcpStream,
    peer: &str,
    addr: SocketAddr,
    refused: &mut RepeatedWarning,
) -> Option<(crate::tls::PeerReader, PeerWriter)> {
    let _ = stream.set_nodelay(true);
    match crate::tls::dial(tls, stream, peer).await {
        Ok(halves) => Some(halves),
        Err(error) => {
            refused.note(&format!("TLS with {peer} at {addr} failed: {error}"));
            None
        }
    }
}

/// An incoming peer connection, set up: no Nagle delay, TLS when configured (a failed
/// handshake is refused and logged). Its halves, the certificate the peer presented, and
/// its remote address for log lines.
pub(crate) async fn accept_peer_link(
    tls: Option<&crate::tls::PeerTls>,
    stream: TcpStream,
) -> Option<(crate::tls::PeerReader, PeerWriter, Option<rustls::pki_types::CertificateDer<'static>>, String)> {
    let _ = stream.set_nodelay(true);
    let remote = stream.peer_addr().map_or_else(|_| "?".to_string(), |address| address.to_string());
    match crate::tls::accept(tls, stream).await {
        Ok((reader, writer, certificate)) => Some((reader, writer, certificate, remote)),
        Err(error) => {
            tracing::warn!("refused a peer connection from {remote}: TLS: {error}");
            None
        }
    }
}

/// With TLS between nodes, a peer may only speak as the node its certificate names.
pub(crate) fn check_claim(tls: bool, certificate: Option<&rustls::pki_types::CertificateDer<'static>>, claimed: &str, remote: &str) -> Result<(), String> {
    if !tls {
        return Ok(());
    }
    match certificate {
        Some(certificate) if crate::tls::certificate_names(certificate, claimed) => Ok(()),
        _ => Err(format!("refused a peer connection from {remote}: it says it is {claimed:?}, and its certificate does not name {claimed:?}")),
    }
}

/// A warning said once until things change, then at debug level (a peer that keeps
/// refusing our handshake is retried every 100 ms).
#[derive(Default)]
pub(crate) struct RepeatedWarning {
    said: bool,
}

impl RepeatedWarning {
    pub(crate) fn note(&mut self, message: &str) {
        if self.said {
            tracing::debug!("{message}");
        } else {
            tracing::warn!("{message}");
            self.said = true;
        }
    }
}

/// Reads one peer's frames. The first must be a `Hello` from a member of the cluster.
async fn inbound(node: Arc<Node>, stream: TcpStream) {
    let Some((read_half, mut write_half, certificate, remote)) = accept_peer_link(node.config.peer_tls.as_deref(), stream).await else { return };
    let mut reader = BufReader::with_capacity(256 << 10, read_half);
    let mut buffer = Vec::new();
    let first = tokio::time::timeout(Duration::from_secs(10), read_frame_up_to(&mut reader, &mut buffer, MAX_HELLO_BYTES)).await;
    let hello = match first {
        Ok(Ok(Some(Frame::Hello(hello)))) => hello,
        _ => return,
    };
    if hello.topology != node.config.topology {
        tracing::error!(
            "refused a peer connection from {:?}: it runs --topology {}, and this cluster runs --topology {} (a cluster's topology is fixed when it is created)",
            hello.id,
            hello.topology.name(),
            node.config.topology.name()
        );
        return;
    }
    if !node.accepts_peer(&hello.id) {
        tracing::warn!("refused a peer connection from {:?}: not a member of this cluster", hello.id);
        return;
    }
    if let Err(refusal) = check_claim(node.config.peer_tls.is_some(), certificate.as_ref(), &hello.id, &remote) {
        tracing::warn!("{refusal}");
        return;
    }
    let from = hello.id.clone();
    node.connect_back(&from, &hello.peer_addr);
    record_hello(&node, hello);
    if write_frame(&mut write_half, &Frame::Hello(own_hello(&node))).await.is_err() || write_half.flush().await.is_err() {
        return;
    }
    let mut snapshot: Option<IncomingSnapshot> = None;
    loop {
        match read_frame(&mut reader, &mut buffer).await {
            // File writes and the final fsync run off the async workers, one chunk at a
            // time, in order, before the next frame is read.
            Ok(Some(Frame::SnapshotChunk { offset, bytes, done, rollback_after })) if !node.is_cut_off(&from) => {
                let receiver = node.clone();
                let state = snapshot.take();
                snapshot = tokio::task::spawn_blocking(move || receiver.on_snapshot_chunk(state, offset, &bytes, done, rollback_after)).await.unwrap_or(None);
            }
            Ok(Some(frame)) => node.on_frame(&from, frame),
            Ok(None) => return,
            Err(error) => {
                tracing::debug!("connection from {from} ended: {error}");
                return;
            }
        }
    }
}

/// Sends a snapshot file to `to` in chunks, read from the file only as fast as the peer's
/// queue drains (a snapshot is never held in memory whole), then deletes the file and
/// tells the replica loop it is done.
pub(crate) async fn stream_snapshot(node: Arc<Node>, to: String, path: PathBuf, position: Position, rollback_after: Option<u64>) {
    let sent = match send_snapshot_file(&node, &to, &path, position, rollback_after).await {
        Ok(bytes) => {
            tracing::info!("snapshot at {position} ({bytes} bytes) queued for {to}");
            Some(position)
        }
        Err(error) => {
            tracing::error!("cannot send snapshot {} to {to}: {error}", path.display());
            None
        }
    };
    let file = path.clone();
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(file)).await;
    node.post(Event::SnapshotSent { to, position: sent });
}

async fn send_snapshot_file(node: &Node, to: &str, path: &std::path::Path, position: Position, rollback_after: Option<u64>) -> std::io::Result<u64> {
    let mut offset = 0u64;
    loop {
        let file = path.to_path_buf();
        let chunk = tokio::task::spawn_blocking(move || -> std::io::Result<(Vec<u8>, bool)> {
            use std::os::unix::fs::FileExt;
            let handle = std::fs::File::open(&file)?;
            let length = handle.metadata()?.len();
            let mut chunk = vec![0u8; (length.saturating_sub(offset)).min(SNAPSHOT_CHUNK_BYTES as u64) as usize];
            handle.read_exact_at(&mut chunk, offset)?;
            Ok((chunk, offset + SNAPSHOT_CHUNK_BYTES as u64 >= length))
        })
        .await
        .map_err(|error| std::io::Error::other(error.to_string()))??;
        let (bytes, last) = chunk;
        let size = bytes.len() as u64;
        let frame = Frame::SnapshotChunk { offset, bytes, done: last.then_some(position), rollback_after };
        if !node.send_to_when_room(to, frame).await {
            return Err(std::io::Error::other(format!("{to} is no longer a member")));
        }
        offset += size;
        if last {
            return Ok(offset);
        }
    }
}
