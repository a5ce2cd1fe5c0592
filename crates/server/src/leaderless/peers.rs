//! Leaderless peer links: one outbound connection per peer for what this node sends,
//! inbound connections for what peers send, each opened with a `Hello` naming the sender
//! and its topology. Frames queued while a peer is unreachable are dropped: the protocol
//! is built for loss (a write's copy goes to a hint, a read asks the others, pings mark
//! the peer down). The emulated WAN delay holds each frame until its enqueue time plus the
//! one-way latency between the two regions, as the single-leader transport does.

use super::{Command, Leaderless, LeaderlessFrame};
use crate::wire::{read_frame, read_frame_up_to, write_frame, Frame, Hello, MAX_HELLO_BYTES};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const RECONNECT_DELAY: Duration = Duration::from_millis(100);

fn hello(node: &Leaderless) -> Hello {
    Hello {
        id: node.config.id.clone(),
        region: node.config.region.clone(),
        http_addr: node.http_addr.lock().expect("http addr lock").clone(),
        peer_addr: node.config.peer_addr.to_string(),
        topology: tern_core::Topology::Leaderless,
        preference: node.config.preference(),
    }
}

/// Frames older than this when the link comes up are dropped; younger ones (a schema
/// change or a forwarded write sent just before a peer's link was up) are written.
const STALE_FRAME: Duration = Duration::from_secs(2);

pub(super) async fn outbound_loop(node: Arc<Leaderless>, peer: String, addr: SocketAddr, mut frames: mpsc::UnboundedReceiver<(Instant, LeaderlessFrame)>) {
    let mut waiting: std::collections::VecDeque<(Instant, LeaderlessFrame)> = std::collections::VecDeque::new();
    // While the link is down, frames wait; those past `STALE_FRAME` are dropped (the
    // protocol resends what matters: pings, hints, anti-entropy).
    let hold = |waiting: &mut std::collections::VecDeque<(Instant, LeaderlessFrame)>, frames: &mut mpsc::UnboundedReceiver<(Instant, LeaderlessFrame)>| {
        while let Ok(frame) = frames.try_recv() {
            waiting.push_back(frame);
        }
        while waiting.front().is_some_and(|(queued, _)| queued.elapsed() > STALE_FRAME) {
            waiting.pop_front();
        }
    };
    let mut refused = crate::transport::RepeatedWarning::default();
    loop {
        let delay = node.wan_delay(&peer);
        let stream = match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            _ => {
                hold(&mut waiting, &mut frames);
                if frames.is_closed() && waiting.is_empty() {
                    return;
                }
                tokio::time::sleep(RECONNECT_DELAY).await;
                continue;
            }
        };
        let Some((_reader, writer)) = crate::transport::open_peer_link(node.config.peer_tls.as_deref(), stream, &peer, addr, &mut refused).await else {
            hold(&mut waiting, &mut frames);
            tokio::time::sleep(RECONNECT_DELAY).await;
            continue;
        };
        let mut writer = BufWriter::with_capacity(256 << 10, writer);
        if write_frame(&mut writer, &Frame::Hello(hello(&node))).await.is_err() || writer.flush().await.is_err() {
            tokio::time::sleep(RECONNECT_DELAY).await;
            continue;
        }
        tracing::debug!("connected to {peer} at {addr}");
        refused = crate::transport::RepeatedWarning::default();
        hold(&mut waiting, &mut frames);
        let written: std::io::Result<()> = async {
            loop {
                let next = match waiting.pop_front() {
                    Some(frame) => Some(frame),
                    None => frames.recv().await,
                };
                let Some((queued, frame)) = next else { return Ok(()) };
                let due = queued + delay;
                if due > Instant::now() {
                    writer.flush().await?;
                    tokio::time::sleep_until(due.into()).await;
                }
                write_frame(&mut writer, &Frame::Leaderless(frame)).await?;
                // Flush only when nothing else is ready: consecutive frames share a syscall.
                if waiting.is_empty() && frames.is_empty() {
                    writer.flush().await?;
                }
            }
        }
        .await;
        if written.is_ok() {
            return;
        }
        tracing::debug!("connection to {peer} lost");
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

pub(super) async fn accept_loop(node: Arc<Leaderless>, listener: TcpListener) {
    crate::transport::accept_each(listener, "peer", |stream, _| {
        tokio::spawn(inbound(node.clone(), stream));
    })
    .await;
}

/// Reads one peer's frames. The first must be a `Hello` from a member of the cluster
/// running leaderless; anything else closes the connection.
async fn inbound(node: Arc<Leaderless>, stream: TcpStream) {
    let Some((reader, _writer, certificate, remote)) = crate::transport::accept_peer_link(node.config.peer_tls.as_deref(), stream).await else { return };
    let mut reader = BufReader::with_capacity(256 << 10, reader);
    let mut buffer = Vec::new();
    let first = tokio::time::timeout(Duration::from_secs(10), read_frame_up_to(&mut reader, &mut buffer, MAX_HELLO_BYTES)).await;
    let Ok(Ok(Some(Frame::Hello(hello)))) = first else { return };
    if hello.topology != tern_core::Topology::Leaderless {
        tracing::error!(
            "refused a peer connection from {:?}: it runs --topology {}, and this cluster runs --topology leaderless",
            hello.id,
            hello.topology.name()
        );
        return;
    }
    if hello.id == node.config.id || !node.is_member(&hello.id) {
        tracing::warn!("refused a peer connection from {:?}: not a member of this cluster", hello.id);
        return;
    }
    if let Err(refusal) = crate::transport::check_claim(node.config.peer_tls.is_some(), certificate.as_ref(), &hello.id, &remote) {
        tracing::warn!("{refusal}");
        return;
    }
    let from = hello.id;
    loop {
        match read_frame(&mut reader, &mut buffer).await {
            Ok(Some(Frame::Leaderless(frame))) => node.post(Command::Frame { from: from.clone(), frame }),
            Ok(Some(_)) => {
                tracing::warn!("{from} sent a frame of another topology: closing the connection");
                return;
            }
            Ok(None) => return,
            Err(error) => {
                tracing::debug!("connection from {from} ended: {error}");
                return;
            }
        }
    }
}
