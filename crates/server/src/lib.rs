//! tern's runtime: a tokio server that drives the sans-IO core (`tern-core`) and the SQLite
//! engine (`tern-storage`), the peer transport, and the rqlite-compatible HTTP API.
//!
//! Layout:
//! - [`config`]: node configuration and WAN latency emulation settings.
//! - [`node`]: the replica loop, the storage thread, and the write and read paths.
//! - [`transport`]: node-to-node TCP with handshakes, reconnects and emulated WAN latency.
//! - [`wire`]: node-to-node frames.
//! - [`http`]: the HTTP API.
//! - [`verify`]: comparing replicas for `tern verify`.
//! - [`client`]: a small blocking HTTP client for tests, the demo and benchmarks.
//! - [`leaderless`]: the leaderless topology's node: the core's `LeaderlessNode` driven
//!   on a thread of its own with its SQLite store, its peer links and its HTTP API.
//! - [`device`]: an offline-first device replica that syncs with a cluster (issue 15).

pub mod auth;
pub mod client;
pub mod config;
pub mod device;
pub mod http;
pub mod idle_poll;
pub mod leaderless;
pub mod metrics;
pub mod node;
pub mod pg;
pub mod tls;
pub mod transport;
pub mod verify;
pub mod wire;

pub use config::{parse_cluster, parse_cluster_with_regions, NodeConfig, WanLatency};
pub use node::{Node, ReadOptions};

use std::sync::Arc;

/// Starts a node and its HTTP server; returns once both are listening.
///
/// # Errors
/// If storage cannot be opened or an address cannot be bound.
pub async fn serve(mut config: NodeConfig) -> Result<Arc<Node>, String> {
    let listener = tokio::net::TcpListener::bind(config.http_addr).await.map_err(|error| format!("cannot listen for HTTP on {}: {error}", config.http_addr))?;
    // The real address (port 0 becomes a free port) goes into peer handshakes.
    config.http_addr = listener.local_addr().map_err(|error| error.to_string())?;
    let pg = match config.pg_addr {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address).await.map_err(|error| format!("cannot listen for PostgreSQL on {address}: {error}"))?;
            config.pg_addr = listener.local_addr().ok();
            Some(listener)
        }
        None => None,
    };
    let node = Node::start(config).await?;
    if let Some(listener) = pg {
        tokio::spawn(pg::serve(node.clone(), listener));
    }
    let app = http::router(node.clone());
    tls::spawn_http(listener, app, node.config.http_tls.as_deref());
    Ok(node)
}

/// Runs blocking or long work (an fsync, encoding a frame of many megabytes) from an async
/// task without holding up the other tasks scheduled on its worker thread (the replica
/// loop's heartbeats among them).
pub(crate) fn blocking<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(work),
        _ => work(),
    }
}
