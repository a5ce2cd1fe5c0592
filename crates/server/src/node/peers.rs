//! Peer links: bounded outbound queues, connecting and cutting off peers, emulated WAN delay, and incoming frames (snapshot chunks included).

use super::*;

impl Node {
    /// Queues `frame` for `to`, or drops it if that peer's queue is full: the protocol
    /// resends what matters, and a peer that reads nothing (paused, on a dead link) must
    /// not make this node buffer without bound.
    /// Per peer: bytes queued for it now, and frames dropped because its queue was full.
    pub fn peer_queues(&self) -> BTreeMap<String, (usize, u64)> {
        let outbound = self.outbound.lock().expect("outbound lock");
        outbound.iter().map(|(id, queue)| (id.clone(), (queue.queued.load(Ordering::Relaxed), queue.dropped.load(Ordering::Relaxed)))).collect()
    }

    pub(crate) fn send_to(&self, to: &str, frame: Frame) {
        if self.is_cut_off(to) {
            return;
        }
        if let Some(queue) = self.outbound.lock().expect("outbound lock").get(to) {
            queue.offer(frame);
        }
    }

    /// Queues `frame` for `to` once its queue has room (snapshot chunks: none may be
    /// dropped, and the file is read only as fast as the peer takes it). `false` if the
    /// peer left the membership.
    pub(crate) async fn send_to_when_room(&self, to: &str, frame: Frame) -> bool {
        let weight = frame_weight(&frame);
        loop {
            if self.is_cut_off(to) {
                return true;
            }
            let queue = match self.outbound.lock().expect("outbound lock").get(to) {
                Some(queue) => queue.clone(),
                None => return false,
            };
            if queue.has_room(weight) {
                queue.push(frame, weight);
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Opens a connection to every member not yet connected and closes those to nodes
    /// that left the membership.
    /// Multi-leader: the nodes of the other regions stay connected too.
    pub(super) fn connect_members(self: &Arc<Node>, membership: &Membership) {
        self.outbound.lock().expect("outbound lock").retain(|id, _| membership.contains(id) || self.is_remote_node(id));
        self.peers.lock().expect("peers lock").retain(|id, _| membership.contains(id) || self.is_remote_node(id));
        for (id, address) in &membership.addresses {
            self.connect_peer(id, address);
        }
        for (id, address, _) in self.config.remote_nodes() {
            self.connect_peer(&id, &address.to_string());
        }
    }

    pub(super) fn connect_peer(self: &Arc<Node>, id: &str, address: &str) {
        let mut outbound = self.outbound.lock().expect("outbound lock");
        if id == self.config.id || outbound.contains_key(id) {
            return;
        }
        let addr = match address.parse::<std::net::SocketAddr>() {
            Ok(addr) => addr,
            Err(error) => {
                tracing::warn!("cannot reach member {id}: bad peer address {address:?}: {error}");
                return;
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let (raft_tx, raft_rx) = mpsc::unbounded_channel();
        let raft_queued = Arc::new(AtomicUsize::new(0));
        let queue =
            PeerQueue { frames: tx, queued: queued.clone(), dropped: Arc::new(AtomicU64::new(0)), raft_frames: raft_tx, raft_queued: raft_queued.clone() };
        outbound.insert(id.to_string(), queue);
        let region = self.config.regions.get(id).cloned().unwrap_or_default();
        self.peers.lock().expect("peers lock").entry(id.to_string()).or_insert(PeerInfo { region, ..PeerInfo::default() });
        tokio::spawn(transport::outbound_loop(self.clone(), id.to_string(), addr, rx, queued, transport::Link::Data));
        tokio::spawn(transport::outbound_loop(self.clone(), id.to_string(), addr, raft_rx, raft_queued, transport::Link::Raft));
    }

    /// A node not yet in any membership (joining) answers whoever contacts it: the
    /// leader adding it, before the leader's snapshot names every member.
    pub(crate) fn connect_back(self: &Arc<Node>, id: &str, peer_addr: &str) {
        let member = self.published.borrow().membership.contains(&self.config.id);
        if !member {
            self.connect_peer(id, peer_addr);
        }
    }

    /// Emulates a partition: from now on every frame to or from these peers is dropped
    /// (an empty set heals). Connections stay up, as they do behind a DROP rule. Needs
    /// `fault_injection` in the configuration.
    pub fn cut_off_from(&self, peers: std::collections::BTreeSet<String>) {
        if !self.config.fault_injection {
            tracing::warn!("fault injection is off: not cutting anything off");
            return;
        }
        if !peers.is_empty() {
            tracing::warn!("fault injection: dropping all traffic to and from {peers:?}");
        } else {
            tracing::warn!("fault injection: partition healed");
        }
        *self.cut_off.lock().expect("cut-off lock") = peers;
    }

    pub(crate) fn is_cut_off(&self, peer: &str) -> bool {
        // Every frame passes here: without fault injection, no lock is taken.
        self.config.fault_injection && self.cut_off.lock().expect("cut-off lock").contains(peer)
    }

    /// Whether a peer connection from `id` is welcome: from members, and from anyone
    /// while this node is not yet a member (it waits for a leader to add it).
    pub(crate) fn accepts_peer(&self, id: &str) -> bool {
        let membership = &self.published.borrow().membership;
        id != self.config.id && (membership.contains(id) || !membership.contains(&self.config.id) || self.is_remote_node(id))
    }

    /// Emulated one-way latency to `peer`, from the regions of both ends.
    pub(crate) fn wan_delay(&self, peer: &str) -> Duration {
        if self.config.wan.is_empty() {
            return Duration::ZERO;
        }
        let peers = self.peers.lock().expect("peers lock");
        let region = peers.get(peer).map(|info| info.region.clone()).unwrap_or_default();
        self.config.wan.one_way(&self.config.region, &region)
    }

    // ---- writes ----

    /// A request forwarded in a user's name is checked again here, against this node's
    /// own `--auth` file: a follower with a laxer file (or a bug) cannot lend a user a
    /// permission this node would not give. `None` (no login where it was sent from, or
    /// that node's own work) is served, as the authenticated peer's.
    fn refuse_forwarded(&self, from: &str, user: Option<&str>, permission: crate::auth::Permission) -> Option<RequestError> {
        let (Some(users), Some(user)) = (&self.config.auth, user) else { return None };
        if users.permits(user, permission) {
            return None;
        }
        tracing::warn!("refused a request {from} forwarded for user {user:?}: this node's --auth gives that user no {} permission", permission.name());
        Some(RequestError::new(403, format!("user {user:?} lacks the {} permission (on the leader, {})", permission.name(), self.config.id)))
    }

    pub(crate) fn on_frame(self: &Arc<Node>, from: &str, frame: Frame) {
        if self.is_cut_off(from) {
            return;
        }
        match frame {
            // A leaderless node's frames: the handshake already refused its topology.
            Frame::Hello(_) | Frame::Leaderless(_) => {}
            Frame::Replica(message) if !self.is_remote_node(from) => self.post(Event::Peer { from: from.to_string(), message }),
            // Another region's node has no say in this region's replication.
            Frame::Replica(_) => {}
            Frame::Region(message) => {
                if let Some(region) = self.region_of_remote(from) {
                    // Only a region's leader speaks for it: where to send its rows' writes.
                    self.region_leaders.lock().expect("region leaders lock").insert(region.clone(), (from.to_string(), Instant::now()));
                    self.post(Event::Region { region, message });
                }
            }
            Frame::ForwardWrite { id, request, requirement, regions, to_home, user } => {
                if let Some(refusal) = self.refuse_forwarded(from, user.as_deref(), crate::auth::Permission::Execute) {
                    let reply = WriteReply { results: Vec::new(), position: None, error: Some(refusal), region_write: None };
                    self.send_to(from, Frame::ForwardWriteReply { id, reply });
                    return;
                }
                let node = self.clone();
                let origin = from.to_string();
                tokio::spawn(crate::auth::acting_as(user, async move {
                    // From another region, to this one as the rows' home: to its leader.
                    let reply =
                        if to_home { node.write_in_region(request, requirement, regions).await } else { node.write_local(request, requirement, regions).await };
                    node.send_to(&origin, Frame::ForwardWriteReply { id, reply });
                }));
            }
            Frame::ForwardDevicePush { id, writes } => {
                let node = self.clone();
                let origin = from.to_string();
                tokio::spawn(async move {
                    let writes = writes.into_iter().map(|(dot, seen, payload)| tern_storage::region_log::LoggedWrite { dot, seen, payload }).collect();
                    let reply = node.device_push_here(writes).await;
                    node.send_to(&origin, Frame::ForwardWriteReply { id, reply });
                });
            }
            Frame::ForwardRead { id, statements, level, user } => {
                if let Some(refusal) = self.refuse_forwarded(from, user.as_deref(), crate::auth::Permission::Query) {
                    self.send_to(from, Frame::ForwardReadReply { id, reply: ReadReply { results: Vec::new(), error: Some(refusal) } });
                    return;
                }
                let node = self.clone();
                let origin = from.to_string();
                tokio::spawn(async move {
                    let reply = node.read_as_leader(statements, level).await;
                    node.send_to(&origin, Frame::ForwardReadReply { id, reply });
                });
            }
            Frame::ForwardWriteReply { id, reply } => {
                if let Some(waiter) = self.forwards.lock().expect("forwards lock").remove(&id) {
                    let _ = waiter.send(ForwardReply::Write(reply));
                }
            }
            Frame::ForwardReadReply { id, reply } => {
                if let Some(waiter) = self.forwards.lock().expect("forwards lock").remove(&id) {
                    let _ = waiter.send(ForwardReply::Read(reply));
                }
            }
            // The transport writes snapshot chunks itself, off the async workers.
            Frame::SnapshotChunk { .. } => {}
        }
    }

    pub(super) fn incoming_snapshot_path(&self) -> PathBuf {
        self.config.data_dir.join("snapshot-incoming.db")
    }

    /// Writes one chunk of an incoming snapshot (blocking: called off the async workers)
    /// and returns the state to pass with the next one. A chunk that does not continue
    /// the file exactly (a lost or repeated chunk) abandons the snapshot; the leader sends
    /// another when this one times out.
    pub(crate) fn on_snapshot_chunk(
        &self,
        state: Option<IncomingSnapshot>,
        offset: u64,
        bytes: &[u8],
        done: Option<Position>,
        rollback_after: Option<u64>,
    ) -> Option<IncomingSnapshot> {
        use std::io::Write;
        let path = self.incoming_snapshot_path();
        let mut state = if offset == 0 {
            match std::fs::File::create(&path) {
                Ok(file) => IncomingSnapshot { file, written: 0 },
                Err(error) => {
                    tracing::error!("cannot create {}: {error}", path.display());
                    return None;
                }
            }
        } else {
            state?
        };
        if offset != state.written {
            tracing::warn!("snapshot chunk at {offset} does not continue the {} bytes received: abandoning it", state.written);
            return None;
        }
        if let Err(error) = state.file.write_all(bytes) {
            tracing::error!("cannot write incoming snapshot to {}: {error}", path.display());
            return None;
        }
        state.written += bytes.len() as u64;
        let position = match done {
            Some(position) => position,
            None => return Some(state),
        };
        if let Err(error) = state.file.sync_all() {
            tracing::error!("cannot sync incoming snapshot {}: {error}", path.display());
            return None;
        }
        if tern_storage::failpoint::hit("snapshot-received-before-install").is_err() {
            return None;
        }
        tracing::info!("snapshot at {position} received ({} bytes); installing", state.written);
        self.storage_send(StorageCommand::InstallSnapshot { path, rollback_after });
        None
    }
}

/// Bytes of frames a node holds for one peer before it drops new ones.
pub(crate) const PEER_QUEUE_BYTES: usize = 32 << 20;

/// Frames at most this large count as control frames, which may use the reserve.
pub(super) const CONTROL_FRAME_BYTES: usize = 4 << 10;

pub(super) const CONTROL_RESERVE_BYTES: usize = 4 << 20;

/// Bytes of raft messages a node holds for one peer (votes, heartbeats, membership:
/// small) before it drops new ones.
const RAFT_QUEUE_BYTES: usize = 4 << 20;

/// Frames waiting for one peer's connections, with their weight in bytes counted so the
/// queues stay bounded: `queued` goes up here and down as the transport writes them.
///
/// Raft's messages have a connection of their own (`raft_frames`): an entry of tens of
/// megabytes takes a while to cross a link (300 ms for 81 MB on loopback here, seconds
/// on a long one), and raft's heartbeats queued behind it made followers campaign and
/// the leader give up its quorum in the middle of a bulk insert. The core takes
/// messages in any order (the simulator's network reorders them), so the two
/// connections need no ordering between them.
#[derive(Clone)]
pub(crate) struct PeerQueue {
    pub(super) frames: mpsc::UnboundedSender<(Instant, Frame, usize)>,
    pub(super) queued: Arc<AtomicUsize>,
    /// Frames dropped because the queue was full.
    pub(super) dropped: Arc<AtomicU64>,
    pub(super) raft_frames: mpsc::UnboundedSender<(Instant, Frame, usize)>,
    pub(super) raft_queued: Arc<AtomicUsize>,
}

impl PeerQueue {
    pub(super) fn has_room(&self, weight: usize) -> bool {
        let queued = self.queued.load(Ordering::Acquire);
        queued == 0 || queued + weight <= PEER_QUEUE_BYTES
    }

    pub(super) fn push(&self, frame: Frame, weight: usize) {
        self.queued.fetch_add(weight, Ordering::AcqRel);
        if self.frames.send((Instant::now(), frame, weight)).is_err() {
            self.queued.fetch_sub(weight, Ordering::AcqRel);
        }
    }

    pub(super) fn offer(&self, frame: Frame) {
        let weight = frame_weight(&frame);
        if matches!(frame, Frame::Replica(Message::Raft { .. })) {
            if self.raft_queued.load(Ordering::Acquire) + weight <= RAFT_QUEUE_BYTES {
                self.raft_queued.fetch_add(weight, Ordering::AcqRel);
                if self.raft_frames.send((Instant::now(), frame, weight)).is_err() {
                    self.raft_queued.fetch_sub(weight, Ordering::AcqRel);
                }
            } else {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        // Small frames (raft heartbeats and votes, acks, empty appends) may use a reserve
        // beyond the budget: a queue full of resent entries must not starve the peer of
        // the messages that keep it from campaigning.
        let control = weight <= CONTROL_FRAME_BYTES && self.queued.load(Ordering::Acquire) + weight <= PEER_QUEUE_BYTES + CONTROL_RESERVE_BYTES;
        if control || self.has_room(weight) {
            self.push(frame, weight);
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// About how many bytes a frame holds in memory (and on the wire): what its queue counts.
pub(crate) fn frame_weight(frame: &Frame) -> usize {
    const OVERHEAD: usize = 128;
    OVERHEAD
        + match frame {
            Frame::Replica(Message::Append { entries, .. }) => entries.iter().map(|entry| entry.payload.len() + 32).sum(),
            Frame::Replica(Message::Raft { bytes }) => bytes.len(),
            Frame::Replica(_) | Frame::Hello(_) => 0,
            Frame::Region(tern_core::multi_leader::RegionMessage::Ship { writes }) => writes.iter().map(|shipment| shipment.write.len() + 64).sum(),
            Frame::SnapshotChunk { bytes, .. } => bytes.len(),
            // Client requests and results: rarer, and of any shape; measure them exactly.
            other => postcard::experimental::serialized_size(other).unwrap_or(0),
        }
}

/// A snapshot being received: the file so far and how many bytes it holds.
pub(crate) struct IncomingSnapshot {
    pub(super) file: std::fs::File,
    pub(super) written: u64,
}
