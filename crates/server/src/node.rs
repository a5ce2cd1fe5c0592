//! One running node: the replica loop (a tokio task driving the sans-IO core), the storage
//! thread (the only writer to SQLite), a pool of read-only connections, and the request
//! paths the HTTP API calls.
//!
//! Write path on the leader: HTTP handler → storage thread (group commit: every request
//! queued while the previous commit was fsyncing goes into the next transaction) →
//! `Event::Appended` → core (ships entries, counts acks) → `Output::WriteDone` → reply.
//! On a follower the same request is forwarded to the leader over the peer link.

use crate::config::NodeConfig;
use crate::transport;
use crate::wire::{Frame, ReadReply, RequestError, WriteReply};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use tern_core::{
    AckRequirement, Config, ElectionConfig, Entry, Membership, MembershipError, MembershipRequest, Message, Output, Position, ReadError, ReadLevel, Replica,
    SavedElection, Status, TransferError, WriteError,
};
use tern_storage::{Engine, Executed, Reader, RollbackStore, RolledBack, Statement, StatementResult, WriteRequest};
use tokio::sync::{mpsc, oneshot, watch};

/// What the replica loop reacts to.
pub(crate) enum Event {
    Peer {
        from: String,
        message: Message,
    },
    PeerConnected(String),
    /// The leader's storage could not write a batch: its disk is full.
    DiskFull,
    Appended {
        entries: Vec<Entry>,
        writes: Vec<PendingWrite>,
    },
    Persisted(Position),
    PersistFailed,
    LogRead {
        to: String,
        from_index: u64,
        entries: Option<Vec<Entry>>,
    },
    SnapshotReady {
        to: String,
        path: PathBuf,
        position: Position,
        rollback_after: Option<u64>,
    },
    SnapshotSent {
        to: String,
        position: Option<Position>,
    },
    SnapshotInstalled(Position),
    /// Entries after a divergence went to the rollback store and the leader's snapshot
    /// replaced the database.
    RolledBack {
        position: Position,
    },
    ReadBarrier {
        observed_index: u64,
        reply: oneshot::Sender<Result<(), ReadError>>,
    },
    Status {
        reply: oneshot::Sender<Status>,
    },
    TransferLeader {
        to: String,
        reply: oneshot::Sender<Result<(), TransferError>>,
    },
    ChangeMembership {
        request: MembershipRequest,
        reply: oneshot::Sender<Result<(), MembershipError>>,
    },
}

/// A write executed on the leader, waiting for its copies.
pub(crate) struct PendingWrite {
    index: u64,
    requirement: AckRequirement,
    results: Vec<StatementResult>,
    reply: oneshot::Sender<WriteReply>,
}

/// Work for the storage thread.
pub(crate) enum StorageCommand {
    /// `epoch`: the leader epoch the request was accepted in; refused if this node no
    /// longer leads it when the storage thread gets to it.
    Execute {
        request: WriteRequest,
        requirement: AckRequirement,
        epoch: u64,
        reply: oneshot::Sender<WriteReply>,
    },
    Apply {
        entries: Vec<Entry>,
    },
    ReadLog {
        to: String,
        from_index: u64,
    },
    MakeSnapshot {
        to: String,
        rollback_after: Option<u64>,
    },
    InstallSnapshot {
        path: PathBuf,
        rollback_after: Option<u64>,
    },
    Checksums {
        reply: oneshot::Sender<Result<Vec<(String, u64, u64)>, String>>,
    },
    /// Fault injection (`POST /debug/panic`): panic on the storage thread, to show that
    /// a node that cannot continue exits and the others fail over.
    Panic,
    /// Checkpoint and close the database (clean shutdown), then stop the thread.
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// Counters of what this node appended to its log (leader) or applied (follower).
#[derive(Default)]
pub struct LogStats {
    pub entries: AtomicU64,
    pub bytes: AtomicU64,
}

/// What the replica loop publishes for request handlers after every event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    pub last: Position,
    /// Where each epoch starts in the local log: with `last`, decides whether a session
    /// token's position is held here (`tern_core::log_holds`).
    pub epoch_starts: Vec<(u64, u64)>,
    pub is_leader: bool,
    /// A leader whose lease lets it start writes now.
    pub accepting_writes: bool,
    /// The leader this node follows (itself if leader); `None` during an election.
    pub leader: Option<String>,
    pub epoch: u64,
    /// Driver-clock time (µs) at which this node last knew it had everything the leader had.
    pub fresh_as_of_us: Option<u64>,
    /// Leader: always. Follower: once it has heard from the leader.
    pub ready: bool,
    /// Voters and learners, with their peer addresses (empty on a node still joining).
    pub membership: Membership,
}

/// What the HTTP layer learns about other nodes from handshakes.
#[derive(Clone, Debug, Default)]
pub struct PeerInfo {
    pub region: String,
    pub http_addr: String,
    pub connected: bool,
}

enum ForwardReply {
    Write(WriteReply),
    Read(ReadReply),
}

/// Options of a read request.
#[derive(Clone, Debug)]
pub struct ReadOptions {
    pub level: ReadLevel,
    /// `level=session`: the position to wait for.
    pub after: Option<Position>,
    /// `level=bounded`: serve locally only while lag is under this.
    pub max_lag: Option<Duration>,
    /// `level=none`: refuse if this node's lag exceeds this (rqlite's `freshness`).
    pub freshness: Option<Duration>,
    /// How long a session read may wait.
    pub timeout: Duration,
}

pub struct Node {
    pub config: NodeConfig,
    started: Instant,
    events: mpsc::UnboundedSender<Event>,
    storage: Mutex<std_mpsc::Sender<StorageCommand>>,
    published: watch::Receiver<Published>,
    pub(crate) peers: Mutex<BTreeMap<String, PeerInfo>>,
    /// One queue per member this node sends to; dropping one ends its connection.
    outbound: Mutex<BTreeMap<String, PeerQueue>>,
    /// Writes accepted by `write_local` and not yet answered (admission control).
    pending_writes: AtomicUsize,
    /// Pooled read-only connections, each with the reader generation it was opened in.
    readers: Mutex<Vec<(u64, Reader)>>,
    /// Bumped when a snapshot replaces the database file: older readers are discarded.
    reader_generation: Arc<AtomicU64>,
    forwards: Mutex<HashMap<u64, oneshot::Sender<ForwardReply>>>,
    next_forward_id: AtomicU64,
    /// The actual HTTP address (after binding port 0).
    pub http_addr: Mutex<String>,
    pub log_stats: Arc<LogStats>,
    /// The epoch the storage thread may write in (0: none). Set by the replica loop
    /// while this node leads and its lease holds; checked again when a write commits.
    write_lease: Arc<WriteLease>,
    /// Fault injection: peers whose traffic, both ways, is dropped (an emulated partition).
    cut_off: Mutex<std::collections::BTreeSet<String>>,
}

const ELECTION_FILE: &str = "election.json";

/// Loads the election state saved by `save_election` (none on a fresh node).
fn load_election(directory: &std::path::Path) -> Result<Option<SavedElection>, String> {
    match std::fs::read(directory.join(ELECTION_FILE)) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|error| format!("{ELECTION_FILE} is damaged: {error}")),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(format!("cannot read {ELECTION_FILE}: {error}")),
    }
}

/// Durably replaces the election state (term and vote must survive a crash, or this
/// node could vote twice in one term): write, fsync, rename, fsync the directory.
fn save_election(directory: &std::path::Path, state: &SavedElection) -> std::io::Result<()> {
    use std::io::Write;
    let temporary = directory.join(format!("{ELECTION_FILE}.tmp"));
    let written = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&serde_json::to_vec(state).map_err(std::io::Error::other)?)?;
        file.sync_all()
    })();
    if let Err(error) = written {
        // A full disk: give back what the partial file took; the old state stays whole.
        let _ = std::fs::remove_file(&temporary);
        return Err(error);
    }
    std::fs::rename(&temporary, directory.join(ELECTION_FILE))?;
    std::fs::File::open(directory)?.sync_all()
}

/// Runs blocking file work (an fsync) from the replica loop, an async task, without
/// holding up the other tasks scheduled on its worker thread.
fn blocking<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => tokio::task::block_in_place(work),
        _ => work(),
    }
}

fn storage_gone() -> RequestError {
    RequestError::new(503, "this node's storage has stopped")
}

impl Node {
    /// Opens storage, starts the storage thread, the replica loop and the peer transport.
    ///
    /// # Errors
    /// If the database cannot be opened or the peer address cannot be bound.
    pub async fn start(config: NodeConfig) -> Result<Arc<Node>, String> {
        let mut engine =
            Engine::open(&config.data_dir, config.log_format).map_err(|error| format!("cannot open database in {}: {error}", config.data_dir.display()))?;
        engine.set_statement_rewrite(config.statement_rewrite);
        engine.set_limits(config.limits);
        let recovered = engine.last();
        let epoch_starts = engine.epoch_starts().map_err(|error| format!("cannot read the log: {error}"))?;
        let saved_election = if config.failover { load_election(&config.data_dir)? } else { None };
        let started = Instant::now();

        if config.join && !config.failover {
            return Err("--join needs automatic failover (--failover on): membership is agreed by quorum vote".to_string());
        }
        let mut core_config = Config::new(config.id.clone(), config.members(), config.leader.clone(), config.ack);
        core_config.addresses = config.addresses();
        core_config.join = config.join;
        core_config.heartbeat_interval_us = config.heartbeat_interval.as_micros() as u64;
        core_config.in_sync_timeout_us = config.in_sync_timeout.as_micros() as u64;
        core_config.write_timeout_us = config.write_timeout.as_micros() as u64;
        if config.failover {
            let tick_us = config.election_tick.as_micros() as u64;
            let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |elapsed| elapsed.as_nanos() as u64)
                ^ u64::from(std::process::id());
            core_config.elections = Some(ElectionConfig { tick_us, election_ticks: 10, heartbeat_ticks: 2, seed });
        }
        let replica = Replica::start(core_config, recovered, epoch_starts, saved_election.as_ref(), 0);
        let epoch = replica.epoch();

        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (storage_tx, storage_rx) = std_mpsc::channel();
        let initial = Published {
            last: recovered,
            epoch_starts: replica.epoch_starts().to_vec(),
            is_leader: replica.is_leader(),
            accepting_writes: replica.accepting_writes(0).is_ok(),
            leader: replica.leader().cloned(),
            epoch,
            fresh_as_of_us: None,
            ready: replica.is_leader(),
            membership: replica.membership().clone(),
        };
        let (published_tx, published_rx) = watch::channel(initial);

        let reader_generation = Arc::new(AtomicU64::new(0));
        let write_lease = Arc::new(WriteLease { epoch: AtomicU64::new(0), until_us: AtomicU64::new(0), clock: started });
        write_lease.publish(&replica, 0);
        let node = Arc::new(Node {
            http_addr: Mutex::new(config.http_addr.to_string()),
            config,
            started,
            events: events_tx.clone(),
            storage: Mutex::new(storage_tx),
            published: published_rx,
            peers: Mutex::new(BTreeMap::new()),
            outbound: Mutex::new(BTreeMap::new()),
            pending_writes: AtomicUsize::new(0),
            readers: Mutex::new(Vec::new()),
            reader_generation: reader_generation.clone(),
            forwards: Mutex::new(HashMap::new()),
            next_forward_id: AtomicU64::new(1),
            log_stats: Arc::new(LogStats::default()),
            write_lease: write_lease.clone(),
            cut_off: Mutex::new(std::collections::BTreeSet::new()),
        });

        let storage_context = StorageContext {
            engine,
            stats: node.log_stats.clone(),
            events: events_tx,
            write_lease,
            log_retain: node.config.log_retain,
            reader_generation,
            node_id: node.config.id.clone(),
        };
        std::thread::Builder::new()
            .name(format!("tern-storage-{}", node.config.id))
            .spawn(move || storage_context.run(storage_rx))
            .map_err(|error| format!("cannot start the storage thread: {error}"))?;

        let listener = tokio::net::TcpListener::bind(node.config.peer_addr)
            .await
            .map_err(|error| format!("cannot listen for peers on {}: {error}", node.config.peer_addr))?;
        tokio::spawn(transport::accept_loop(node.clone(), listener));
        node.connect_members(replica.membership());
        tokio::spawn(run_replica(node.clone(), replica, events_rx, published_tx));
        Ok(node)
    }

    pub fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    pub fn published(&self) -> Published {
        self.published.borrow().clone()
    }

    /// This node's lag behind the leader, if known. A leader is current while its write
    /// lease holds; past it (paused, cut off, perhaps deposed without knowing) it is
    /// current only up to the lease's end. Read from the lease itself, not from what the
    /// replica loop last published, which is stale right after a pause.
    pub fn lag(&self) -> Option<Duration> {
        let published = self.published();
        let lease_until = self.write_lease.until_us.load(Ordering::Acquire);
        if published.is_leader && lease_until > 0 {
            return Some(Duration::from_micros(self.now_us().saturating_sub(lease_until)));
        }
        published.fresh_as_of_us.map(|at| Duration::from_micros(self.now_us().saturating_sub(at)))
    }

    pub(crate) fn post(&self, event: Event) {
        // The replica loop only ends with the process.
        let _ = self.events.send(event);
    }

    fn storage_send(&self, command: StorageCommand) -> bool {
        self.storage.lock().expect("storage sender lock is never poisoned").send(command).is_ok()
    }

    pub(crate) fn inject_storage_panic(&self) {
        self.storage_send(StorageCommand::Panic);
    }

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
    fn connect_members(self: &Arc<Node>, membership: &Membership) {
        self.outbound.lock().expect("outbound lock").retain(|id, _| membership.contains(id));
        self.peers.lock().expect("peers lock").retain(|id, _| membership.contains(id));
        for (id, address) in &membership.addresses {
            self.connect_peer(id, address);
        }
    }

    fn connect_peer(self: &Arc<Node>, id: &str, address: &str) {
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
        outbound.insert(id.to_string(), PeerQueue { frames: tx, queued: queued.clone(), dropped: Arc::new(AtomicU64::new(0)) });
        let region = self.config.regions.get(id).cloned().unwrap_or_default();
        self.peers.lock().expect("peers lock").entry(id.to_string()).or_insert(PeerInfo { region, ..PeerInfo::default() });
        tokio::spawn(transport::outbound_loop(self.clone(), id.to_string(), addr, rx, queued));
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
        id != self.config.id && (membership.contains(id) || !membership.contains(&self.config.id))
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

    /// Executes a write on the leader (forwarding it there from a follower) and waits
    /// for the acknowledgement the request asked for.
    pub async fn write(&self, request: WriteRequest, requirement: Option<AckRequirement>) -> WriteReply {
        let published = self.published();
        let leader = match &published.leader {
            Some(leader) if *leader != self.config.id => leader.clone(),
            _ => return self.write_local(request, requirement).await,
        };
        let wait = self.config.write_timeout + Duration::from_secs(5);
        match self.forward(&leader, wait, |id| Frame::ForwardWrite { id, request, requirement }).await {
            Some(ForwardReply::Write(reply)) => reply,
            _ => {
                let mut error = RequestError::new(503, format!("leader {leader} did not answer the forwarded write in time: its outcome is unknown"));
                error.leader = Some(leader);
                WriteReply { results: Vec::new(), position: None, error: Some(error) }
            }
        }
    }

    /// Why this node cannot start a write now, for a 503: the leader to go to, or that
    /// an election is under way.
    fn not_accepting(&self, published: &Published) -> RequestError {
        let mut error = match &published.leader {
            Some(leader) if *leader != self.config.id => RequestError::new(503, format!("not the leader; leader is {leader}")),
            Some(_) => RequestError::new(503, "this node leads but cannot confirm its lease with a majority: retry shortly"),
            None => RequestError::new(503, "no leader is known (an election is under way): retry shortly"),
        };
        error.leader = published.leader.clone().filter(|leader| *leader != self.config.id);
        error
    }

    /// Sends a request frame to `leader` and waits up to `wait` for the matching reply
    /// frame (`None` if none came; the request's outcome is then unknown).
    async fn forward(&self, leader: &str, wait: Duration, frame: impl FnOnce(u64) -> Frame) -> Option<ForwardReply> {
        let id = self.next_forward_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.forwards.lock().expect("forwards lock").insert(id, tx);
        self.send_to(leader, frame(id));
        // Give up as soon as this node stops following that leader (it died or was
        // replaced): the client hears "outcome unknown" now, not after the timeout.
        let mut watcher = self.published.clone();
        let leader_gone = watcher.wait_for(|published| published.leader.as_deref() != Some(leader));
        let reply = tokio::select! {
            reply = tokio::time::timeout(wait, rx) => reply.ok().and_then(Result::ok),
            _ = leader_gone => None,
        };
        if reply.is_none() {
            self.forwards.lock().expect("forwards lock").remove(&id);
        }
        reply
    }

    pub(crate) async fn write_local(&self, request: WriteRequest, requirement: Option<AckRequirement>) -> WriteReply {
        let published = self.published();
        if !published.accepting_writes {
            return WriteReply { results: Vec::new(), position: None, error: Some(self.not_accepting(&published)) };
        }
        let requirement = requirement.unwrap_or(self.config.ack.requirement());
        let members = published.membership.voters.len();
        if let AckRequirement::Nodes(requested) = requirement {
            if requested > members {
                let message = WriteError::Unsatisfiable { requested, members }.to_string();
                return WriteReply { results: Vec::new(), position: None, error: Some(RequestError::new(400, message)) };
            }
        }
        // Admission control: past this many writes in flight, refuse new ones at once
        // rather than queue them without bound.
        let pending = PendingCount::enter(&self.pending_writes);
        if pending.count > MAX_PENDING_WRITES {
            let message = format!("this node has {} writes in flight, over its limit of {MAX_PENDING_WRITES}: retry shortly", pending.count - 1);
            return WriteReply { results: Vec::new(), position: None, error: Some(RequestError::new(503, message)) };
        }
        let (reply, rx) = oneshot::channel();
        if !self.storage_send(StorageCommand::Execute { request, requirement, epoch: published.epoch, reply }) {
            return WriteReply { results: Vec::new(), position: None, error: Some(storage_gone()) };
        }
        rx.await.unwrap_or_else(|_| WriteReply { results: Vec::new(), position: None, error: Some(storage_gone()) })
    }

    // ---- reads ----

    /// Serves a read at the requested consistency level.
    pub async fn read(&self, statements: Vec<Statement>, options: ReadOptions) -> ReadReply {
        let published = self.published();
        match options.level {
            ReadLevel::None => {
                if let Some(freshness) = options.freshness {
                    let lag = self.lag();
                    if lag.is_none_or(|lag| lag > freshness) {
                        return read_error(503, format!("this node's data is staler than freshness={freshness:?} (lag {lag:?})"));
                    }
                }
                self.read_here(statements).await.0
            }
            ReadLevel::Bounded => {
                let bound = options.max_lag.unwrap_or(Duration::from_secs(1));
                if self.lag().is_some_and(|lag| lag <= bound) {
                    self.read_here(statements).await.0
                } else {
                    self.read_at_leader(statements, ReadLevel::Weak).await
                }
            }
            ReadLevel::Session => {
                let after = options.after.unwrap_or(Position::ZERO);
                let mut watcher = self.published.clone();
                let holds = |published: &Published| tern_core::log_holds(&published.epoch_starts, published.last, after);
                let reached = tokio::time::timeout(options.timeout, watcher.wait_for(holds)).await.is_ok_and(|waited| waited.is_ok());
                match reached {
                    true => self.read_here(statements).await.0,
                    false => read_error(
                        503,
                        format!(
                            "this node has not applied position {after} within {:?} (it is at {}); retry, or read with level=weak",
                            options.timeout,
                            self.published().last
                        ),
                    ),
                }
            }
            ReadLevel::Weak | ReadLevel::Strong | ReadLevel::Linearizable => {
                if published.is_leader {
                    self.read_as_leader(statements, options.level).await
                } else {
                    self.read_at_leader(statements, options.level).await
                }
            }
        }
    }

    async fn read_at_leader(&self, statements: Vec<Statement>, level: ReadLevel) -> ReadReply {
        let published = self.published();
        let leader = match &published.leader {
            Some(leader) if *leader != self.config.id => leader.clone(),
            _ => return self.read_as_leader(statements, level).await,
        };
        match self.forward(&leader, Duration::from_secs(10), |id| Frame::ForwardRead { id, statements, level }).await {
            Some(ForwardReply::Read(reply)) => reply,
            _ => read_error(503, format!("leader {leader} did not answer the forwarded read in time")),
        }
    }

    pub(crate) async fn read_as_leader(&self, statements: Vec<Statement>, level: ReadLevel) -> ReadReply {
        let published = self.published();
        if !published.is_leader {
            let error = self.not_accepting(&published);
            return ReadReply { results: Vec::new(), error: Some(error) };
        }
        let (reply, observed_index) = self.read_here(statements).await;
        if reply.error.is_some() || matches!(level, ReadLevel::Weak) {
            return reply;
        }
        let (tx, rx) = oneshot::channel();
        self.post(Event::ReadBarrier { observed_index, reply: tx });
        match rx.await {
            Ok(Ok(())) => reply,
            Ok(Err(error)) => read_error(503, format!("linearizable read refused: {error}")),
            Err(_) => read_error(503, "replica loop stopped"),
        }
    }

    /// Runs the statements on a local read-only connection; returns the reply and the
    /// log index the read's snapshot contained.
    async fn read_here(&self, statements: Vec<Statement>) -> (ReadReply, u64) {
        match self.with_reader(move |reader| reader.query(&statements).map_err(|error| error.to_string())).await {
            Ok(Ok((results, observed))) => (ReadReply { results, error: None }, observed),
            Ok(Err(error)) | Err(error) => (read_error(500, error), 0),
        }
    }

    /// Runs `work` on a pooled read-only connection (opened with the configured limits),
    /// off the async workers, and returns the connection to the pool.
    async fn with_reader<T: Send + 'static>(&self, work: impl FnOnce(&Reader) -> T + Send + 'static) -> Result<T, String> {
        let generation = self.reader_generation.load(Ordering::Acquire);
        // A connection opened before a snapshot replaced the file still reads the old one.
        let pooled = {
            let mut readers = self.readers.lock().expect("readers lock");
            readers.retain(|(opened_in, _)| *opened_in == generation);
            readers.pop().map(|(_, reader)| reader)
        };
        let directory = self.config.data_dir.clone();
        let limits = self.config.limits;
        let outcome = tokio::task::spawn_blocking(move || {
            let reader = match pooled {
                Some(reader) => reader,
                None => Reader::open_with_limits(&directory, limits).map_err(|error| error.to_string())?,
            };
            let done = work(&reader);
            Ok::<_, String>((reader, done))
        })
        .await
        .map_err(|join_error| join_error.to_string())?;
        let (reader, done) = outcome?;
        if self.reader_generation.load(Ordering::Acquire) == generation {
            let mut readers = self.readers.lock().expect("readers lock");
            if readers.len() < 16 {
                readers.push((generation, reader));
            }
        }
        Ok(done)
    }

    /// True if every statement only reads (so `/db/request` can take the read path).
    pub async fn all_read_only(&self, statements: Vec<Statement>) -> bool {
        self.with_reader(move |reader| tern_storage::all_read_only(reader, &statements)).await.unwrap_or(false)
    }

    /// How many entries the rollback store holds (0 if it cannot be read).
    pub async fn rollback_count(&self) -> u64 {
        let directory = self.config.data_dir.clone();
        if !directory.join(tern_storage::engine::ROLLBACK_FILE).exists() {
            return 0;
        }
        tokio::task::spawn_blocking(move || RollbackStore::open(&directory).and_then(|store| store.count()).unwrap_or(0)).await.unwrap_or(0)
    }

    /// The entries this node rolled back (its rollback store), oldest first.
    pub async fn rollback_entries(&self) -> Result<Vec<RolledBack>, String> {
        let directory = self.config.data_dir.clone();
        tokio::task::spawn_blocking(move || RollbackStore::open(&directory).and_then(|store| store.list()).map_err(|error| error.to_string()))
            .await
            .map_err(|error| error.to_string())?
    }

    /// Asks this node, which must lead, to hand leadership to `to`.
    ///
    /// # Errors
    /// Why it cannot (not the leader, unknown node, failover off).
    pub async fn transfer_leadership(&self, to: String) -> Result<(), RequestError> {
        self.ask_leader(
            |reply| Event::TransferLeader { to, reply },
            |error| match error {
                TransferError::NotLeader { leader } => (503, leader.clone()),
                TransferError::FailoverOff | TransferError::NotAnotherMember { .. } => (400, None),
            },
        )
        .await
    }

    /// Asks this node, which must lead, to add or remove a member. Returns once raft has
    /// the proposal; the change applies when a quorum agrees (watch `/cluster`).
    ///
    /// # Errors
    /// Why it cannot (not the leader, a change already under way, nonsense request).
    pub async fn change_membership(&self, request: MembershipRequest) -> Result<(), RequestError> {
        self.ask_leader(
            |reply| Event::ChangeMembership { request, reply },
            |error| match error {
                MembershipError::NotLeader { leader } => (503, leader.clone()),
                MembershipError::ChangePending => (503, None),
                MembershipError::FailoverOff | MembershipError::BadName { .. } => (400, None),
                MembershipError::AlreadyMember { .. }
                | MembershipError::NotMember { .. }
                | MembershipError::RemovingLeader { .. }
                | MembershipError::LastVoter { .. } => (409, None),
            },
        )
        .await
    }

    /// Posts a leader-only request to the replica loop and turns the core's refusal into
    /// an HTTP error: `status_of` gives its status and the leader to name, if any.
    async fn ask_leader<E: std::fmt::Display>(
        &self,
        event: impl FnOnce(oneshot::Sender<Result<(), E>>) -> Event,
        status_of: impl FnOnce(&E) -> (u16, Option<String>),
    ) -> Result<(), RequestError> {
        let (reply, rx) = oneshot::channel();
        self.post(event(reply));
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => {
                let (status, leader) = status_of(&error);
                let mut request_error = RequestError::new(status, error.to_string());
                request_error.leader = leader;
                Err(request_error)
            }
            Err(_) => Err(RequestError::new(503, "replica loop stopped")),
        }
    }

    pub async fn status(&self) -> Option<Status> {
        let (tx, rx) = oneshot::channel();
        self.post(Event::Status { reply: tx });
        rx.await.ok()
    }

    /// Clean shutdown: checkpoints the database so `data.db` is complete on its own.
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self.storage_send(StorageCommand::Shutdown { reply }) {
            let _ = tokio::time::timeout(Duration::from_secs(30), rx).await;
        }
    }

    /// What `tern verify` compares: this node's position and, read in the same
    /// transaction, per-table checksums (logical formats) or page hashes (physical).
    pub async fn verify_local(&self) -> Result<serde_json::Value, String> {
        let directory = self.config.data_dir.clone();
        let physical = self.config.log_format == tern_core::LogFormat::Physical;
        let id = self.config.id.clone();
        tokio::task::spawn_blocking(move || {
            let reader = Reader::open(&directory).map_err(|error| error.to_string())?;
            let (position, tables) = reader.checksums_at_position().map_err(|error| error.to_string())?;
            let tables: Vec<serde_json::Value> =
                tables.into_iter().map(|(name, rows, sum)| serde_json::json!({"table": name, "rows": rows, "checksum": format!("{sum:016x}")})).collect();
            let mut report = serde_json::json!({"id": id, "position": position.to_string(), "tables": tables});
            if physical {
                let (page_position, hashes) = reader.page_hashes().map_err(|error| error.to_string())?;
                report["page_position"] = serde_json::json!(page_position.to_string());
                report["pages"] = serde_json::json!(hashes.iter().map(|hash| format!("{hash:016x}")).collect::<Vec<_>>());
            }
            Ok(report)
        })
        .await
        .map_err(|error| error.to_string())?
    }

    /// Per-table `(name, rows, checksum)` of this node's data.
    pub async fn checksums(&self) -> Result<Vec<(String, u64, u64)>, String> {
        let (reply, rx) = oneshot::channel();
        if !self.storage_send(StorageCommand::Checksums { reply }) {
            return Err("storage stopped".into());
        }
        rx.await.map_err(|_| "storage stopped".to_string())?
    }

    // ---- frames from peers ----

    pub(crate) fn on_frame(self: &Arc<Node>, from: &str, frame: Frame) {
        if self.is_cut_off(from) {
            return;
        }
        match frame {
            Frame::Hello(_) => {}
            Frame::Replica(message) => self.post(Event::Peer { from: from.to_string(), message }),
            Frame::ForwardWrite { id, request, requirement } => {
                let node = self.clone();
                let origin = from.to_string();
                tokio::spawn(async move {
                    let reply = node.write_local(request, requirement).await;
                    node.send_to(&origin, Frame::ForwardWriteReply { id, reply });
                });
            }
            Frame::ForwardRead { id, statements, level } => {
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

    fn incoming_snapshot_path(&self) -> PathBuf {
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

fn read_error(status: u16, message: impl Into<String>) -> ReadReply {
    ReadReply { results: Vec::new(), error: Some(RequestError::new(status, message)) }
}

/// The replica loop: the only place the core lives. It turns events into core calls and
/// core outputs into sends, storage commands and replies.
async fn run_replica(node: Arc<Node>, mut replica: Replica, mut events: mpsc::UnboundedReceiver<Event>, published: watch::Sender<Published>) {
    let mut writes: HashMap<u64, PendingWrite> = HashMap::new();
    let mut reads: HashMap<u64, oneshot::Sender<Result<(), ReadError>>> = HashMap::new();
    let mut next_tag: u64 = 1;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard_from_leader = replica.is_leader();
    // Election state the disk refused (it is full): until a save succeeds, this node
    // sends no raft message, so it never casts a vote it could forget on a restart.
    let mut unsaved_election: Option<tern_core::SavedElection> = None;
    let mut last_save_error_log: Option<Instant> = None;
    let mut last_handover_for_disk: Option<Instant> = None;
    loop {
        let event = tokio::select! {
            event = events.recv() => match event {
                Some(event) => Some(event),
                None => return,
            },
            _ = tick.tick() => None,
        };
        let mut now = node.now_us();
        match event {
            None => replica.on_tick(now),
            Some(event) => {
                let mut next = Some(event);
                // Handle everything already queued before draining outputs once.
                while let Some(event) = next.take() {
                    match event {
                        Event::Peer { from, message } => {
                            if matches!(message, Message::Append { .. }) {
                                heard_from_leader = true;
                            }
                            replica.on_message(now, &from, message);
                        }
                        Event::PeerConnected(peer) => replica.on_peer_connected(now, &peer),
                        Event::Appended { entries, writes: new_writes } => {
                            let mut waiters = Vec::with_capacity(new_writes.len());
                            for write in new_writes {
                                let tag = next_tag;
                                next_tag += 1;
                                waiters.push((tag, write.index, write.requirement));
                                writes.insert(tag, write);
                            }
                            replica.on_leader_appended(now, entries, waiters);
                        }
                        Event::Persisted(position) => replica.on_persisted(now, position),
                        Event::PersistFailed => replica.on_persist_failed(now),
                        Event::LogRead { to, from_index, entries } => match entries {
                            Some(entries) if entries.first().is_some_and(|entry| entry.index == from_index) => replica.on_log_read(now, &to, entries),
                            Some(_) => replica.on_log_read(now, &to, Vec::new()),
                            None => replica.on_log_compacted(now, &to),
                        },
                        Event::SnapshotReady { to, path, position, rollback_after } => {
                            tokio::spawn(transport::stream_snapshot(node.clone(), to, path, position, rollback_after));
                        }
                        Event::SnapshotSent { to, position } => replica.on_snapshot_finished(now, &to, position),
                        Event::SnapshotInstalled(position) => replica.on_snapshot_installed(now, position),
                        Event::RolledBack { position } => replica.on_rolled_back(now, position),
                        Event::DiskFull => {
                            // Keep refusing writes with the error, and hand leadership to a
                            // healthy node so the cluster goes on writing.
                            let due = last_handover_for_disk.is_none_or(|at: Instant| at.elapsed() > Duration::from_secs(5));
                            if let (true, Some(successor)) = (due, replica.best_successor()) {
                                last_handover_for_disk = Some(Instant::now());
                                match replica.transfer_leadership(now, &successor) {
                                    Ok(()) => tracing::warn!("disk full: handing leadership to {successor}"),
                                    Err(error) => tracing::warn!("disk full, but cannot hand leadership to {successor}: {error}"),
                                }
                            }
                        }
                        Event::ReadBarrier { observed_index, reply } => {
                            let tag = next_tag;
                            next_tag += 1;
                            reads.insert(tag, reply);
                            replica.on_read_barrier(now, tag, observed_index);
                        }
                        Event::Status { reply } => {
                            let _ = reply.send(replica.status(now));
                        }
                        Event::TransferLeader { to, reply } => {
                            let _ = reply.send(replica.transfer_leadership(now, &to));
                        }
                        Event::ChangeMembership { request, reply } => {
                            let _ = reply.send(replica.change_membership(now, request));
                        }
                    }
                    if let Ok(event) = events.try_recv() {
                        next = Some(event);
                        // Each event at its own time: a long burst handled with the
                        // burst's first instant would see a lease still held after it ran out.
                        now = node.now_us();
                    }
                }
            }
        }
        if let Some(state) = &unsaved_election {
            if blocking(|| save_election(&node.config.data_dir, state)).is_ok() {
                tracing::info!("election state saved again: this node takes part in elections again");
                unsaved_election = None;
            }
        }
        while let Some(output) = replica.poll_output() {
            match output {
                Output::Send { message: Message::Raft { .. }, .. } if unsaved_election.is_some() => {}
                Output::Send { to, message } => node.send_to(&to, Frame::Replica(message)),
                Output::Persist { entries } => {
                    node.storage_send(StorageCommand::Apply { entries });
                }
                Output::ReadLog { to, from_index } => {
                    node.storage_send(StorageCommand::ReadLog { to, from_index });
                }
                Output::SendSnapshot { to, rollback_after } => {
                    node.storage_send(StorageCommand::MakeSnapshot { to, rollback_after });
                }
                Output::SaveElection { state } => {
                    // Small and rare (a term or vote change): written here, before any
                    // later output (a vote) can leave this node. If the disk refuses it
                    // (full), raft messages are held back until a save succeeds: the
                    // node neither votes nor campaigns, and the others carry on.
                    match blocking(|| save_election(&node.config.data_dir, &state)) {
                        Ok(()) => unsaved_election = None,
                        Err(error) => {
                            if last_save_error_log.is_none_or(|at| at.elapsed() > Duration::from_secs(5)) {
                                tracing::error!("cannot save the election state: {error}; not voting or campaigning until it can be saved");
                                last_save_error_log = Some(Instant::now());
                            }
                            unsaved_election = Some(state);
                        }
                    }
                }
                Output::MembershipChanged { membership } => {
                    let names = |set: &std::collections::BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>().join(", ");
                    tracing::info!("membership: voters [{}], learners [{}]", names(&membership.voters), names(&membership.learners));
                    node.connect_members(&membership);
                }
                Output::WriteDone { tag, result } => {
                    let Some(write) = writes.remove(&tag) else { continue };
                    let reply = match result {
                        Ok(position) => WriteReply { results: write.results, position: Some(position), error: None },
                        Err(error) => {
                            let status = match error {
                                WriteError::Unsatisfiable { .. } => 400,
                                WriteError::Timeout { .. } | WriteError::NotLeader { .. } => 503,
                            };
                            WriteReply { results: write.results, position: None, error: Some(RequestError::new(status, error.to_string())) }
                        }
                    };
                    let _ = write.reply.send(reply);
                }
                Output::ReadDone { tag, result } => {
                    if let Some(reply) = reads.remove(&tag) {
                        let _ = reply.send(result);
                    }
                }
            }
        }
        let lag = replica.lag_us(now);
        let accepting_writes = replica.accepting_writes(now).is_ok();
        node.write_lease.publish(&replica, now);
        if replica.leader().is_none() {
            heard_from_leader = false;
        } else if replica.is_leader() {
            heard_from_leader = true;
        }
        let next_published = Published {
            last: replica.last(),
            epoch_starts: replica.epoch_starts().to_vec(),
            is_leader: replica.is_leader(),
            accepting_writes,
            leader: replica.leader().cloned(),
            epoch: replica.epoch(),
            fresh_as_of_us: lag.map(|lag| now.saturating_sub(lag)),
            ready: heard_from_leader,
            membership: replica.membership().clone(),
        };
        published.send_if_modified(|current| {
            if (current.is_leader, current.epoch, &current.leader) != (next_published.is_leader, next_published.epoch, &next_published.leader) {
                let epoch = next_published.epoch;
                match (&next_published.is_leader, &next_published.leader) {
                    (true, _) => tracing::info!("leading epoch {epoch}"),
                    (false, Some(leader)) => tracing::info!("following {leader} in epoch {epoch}"),
                    (false, None) => tracing::info!("no leader known in epoch {epoch} (election under way)"),
                }
            }
            if *current != next_published {
                *current = next_published;
                true
            } else {
                false
            }
        });
    }
}

/// Bytes of frames a node holds for one peer before it drops new ones.
pub(crate) const PEER_QUEUE_BYTES: usize = 32 << 20;

/// Frames at most this large count as control frames, which may use the reserve.
const CONTROL_FRAME_BYTES: usize = 4 << 10;
const CONTROL_RESERVE_BYTES: usize = 4 << 20;

/// Frames waiting for one peer's connection, with their weight in bytes counted so the
/// queue stays bounded: `queued` goes up here and down as the transport writes them.
#[derive(Clone)]
pub(crate) struct PeerQueue {
    frames: mpsc::UnboundedSender<(Instant, Frame, usize)>,
    queued: Arc<AtomicUsize>,
    /// Frames dropped because the queue was full.
    dropped: Arc<AtomicU64>,
}

impl PeerQueue {
    fn has_room(&self, weight: usize) -> bool {
        let queued = self.queued.load(Ordering::Acquire);
        queued == 0 || queued + weight <= PEER_QUEUE_BYTES
    }

    fn push(&self, frame: Frame, weight: usize) {
        self.queued.fetch_add(weight, Ordering::AcqRel);
        if self.frames.send((Instant::now(), frame, weight)).is_err() {
            self.queued.fetch_sub(weight, Ordering::AcqRel);
        }
    }

    fn offer(&self, frame: Frame) {
        let weight = frame_weight(&frame);
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
            Frame::SnapshotChunk { bytes, .. } => bytes.len(),
            // Client requests and results: rarer, and of any shape; measure them exactly.
            other => postcard::experimental::serialized_size(other).unwrap_or(0),
        }
}

/// Most writes a node holds in flight (executing or waiting for acknowledgements).
const MAX_PENDING_WRITES: usize = 16_384;

/// One write counted in flight until dropped.
struct PendingCount<'counter> {
    counter: &'counter AtomicUsize,
    /// How many were in flight with this one.
    count: usize,
}

impl<'counter> PendingCount<'counter> {
    fn enter(counter: &'counter AtomicUsize) -> PendingCount<'counter> {
        PendingCount { counter, count: counter.fetch_add(1, Ordering::AcqRel) + 1 }
    }
}

impl Drop for PendingCount<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A snapshot being received: the file so far and how many bytes it holds.
pub(crate) struct IncomingSnapshot {
    file: std::fs::File,
    written: u64,
}

fn stopped_leading() -> WriteReply {
    let error = RequestError::new(503, "this node stopped leading before the write could commit: retry (it was not applied)");
    WriteReply { results: Vec::new(), position: None, error: Some(error) }
}

/// What the replica loop last decided about writes, for the storage thread to check
/// before executing a batch and again just before committing it: a lease that runs out
/// while a batch executes stops its commit.
pub(crate) struct WriteLease {
    /// The epoch this node may write in; 0: none.
    epoch: AtomicU64,
    /// Node-clock microseconds (see `Node::now_us`) until which the lease holds.
    until_us: AtomicU64,
    clock: Instant,
}

impl WriteLease {
    fn publish(&self, replica: &Replica, now: u64) {
        let (epoch, until) = match replica.write_lease_until(now) {
            Some(until) => (replica.epoch(), until),
            None => (0, 0),
        };
        self.until_us.store(until, Ordering::Release);
        self.epoch.store(epoch, Ordering::Release);
    }

    fn allows(&self, epoch: u64) -> bool {
        let now = self.clock.elapsed().as_micros() as u64;
        let current = self.epoch.load(Ordering::Acquire);
        current != 0 && current == epoch && now < self.until_us.load(Ordering::Acquire)
    }
}

/// The storage thread's state: the only SQLite writer of this node.
struct StorageContext {
    engine: Engine,
    stats: Arc<LogStats>,
    events: mpsc::UnboundedSender<Event>,
    write_lease: Arc<WriteLease>,
    log_retain: u64,
    reader_generation: Arc<AtomicU64>,
    node_id: String,
}

/// Most requests committed in one transaction.
const MAX_GROUP_COMMIT: usize = 1024;

/// A group commit stops taking requests once they hold this many bytes, so one log
/// entry (a group's changes) stays far below `wire::MAX_FRAME_BYTES` and can always be
/// shipped: with `--max-body-bytes` at most `MAX_BODY_BYTES_LIMIT`, an entry holds at
/// most about 16 + 64 MiB of statements.
const MAX_GROUP_COMMIT_BYTES: usize = 16 << 20;

/// The largest `--max-body-bytes` a node accepts.
pub const MAX_BODY_BYTES_LIMIT: usize = 64 << 20;

impl StorageContext {
    fn run(mut self, commands: std_mpsc::Receiver<StorageCommand>) {
        let mut queued: Option<StorageCommand> = None;
        loop {
            let first = match queued.take() {
                Some(command) => command,
                None => match commands.recv() {
                    Ok(command) => command,
                    Err(_) => return,
                },
            };
            match first {
                StorageCommand::Execute { request, requirement, epoch, reply } => {
                    let alone = tern_storage::is_maintenance(&request);
                    let mut bytes = request.approximate_bytes();
                    let mut batch = vec![(request, requirement, epoch, reply)];
                    while !alone && batch.len() < MAX_GROUP_COMMIT && bytes < MAX_GROUP_COMMIT_BYTES {
                        match commands.try_recv() {
                            // VACUUM runs outside any transaction, so it never joins a group.
                            Ok(StorageCommand::Execute { request, requirement, epoch, reply }) if !tern_storage::is_maintenance(&request) => {
                                bytes += request.approximate_bytes();
                                batch.push((request, requirement, epoch, reply))
                            }
                            Ok(other) => {
                                queued = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.execute(batch);
                }
                StorageCommand::Apply { mut entries } => {
                    while entries.len() < 8 * MAX_GROUP_COMMIT {
                        match commands.try_recv() {
                            Ok(StorageCommand::Apply { entries: more }) => entries.extend(more),
                            Ok(other) => {
                                queued = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    match self.engine.apply(&entries) {
                        Ok(position) => {
                            self.stats.entries.fetch_add(entries.len() as u64, Ordering::Relaxed);
                            self.stats.bytes.fetch_add(entries.iter().map(|entry| entry.payload.len() as u64).sum(), Ordering::Relaxed);
                            let _ = self.events.send(Event::Persisted(position));
                            self.maybe_compact();
                        }
                        Err(error) => {
                            tracing::error!(node = %self.node_id, "cannot apply entries {}..: {error}", entries[0].index);
                            let _ = self.events.send(Event::PersistFailed);
                        }
                    }
                }
                StorageCommand::ReadLog { to, from_index } => {
                    let entries = match self.engine.read_log(from_index, 512, 4 << 20) {
                        Ok(entries) => entries,
                        Err(error) => {
                            tracing::error!("cannot read the log: {error}");
                            Some(Vec::new())
                        }
                    };
                    let _ = self.events.send(Event::LogRead { to, from_index, entries });
                }
                StorageCommand::MakeSnapshot { to, rollback_after } => {
                    // Copied on a thread and connection of its own, so writes go on
                    // meanwhile (the physical format reads the pages in one read
                    // transaction; periodic checkpoints do not wait for it).
                    let path = self.engine.directory().join(format!("snapshot-for-{to}.db"));
                    let (format, database) = (self.engine.format(), self.engine.database_path());
                    let events = self.events.clone();
                    let spawned = std::thread::Builder::new().name(format!("tern-snapshot-{to}")).spawn(move || {
                        match tern_storage::write_snapshot_of(format, &database, &path) {
                            Ok(position) => {
                                tracing::info!("snapshot at {position} made for {to}");
                                let _ = events.send(Event::SnapshotReady { to, path, position, rollback_after });
                            }
                            Err(error) => {
                                tracing::error!("cannot make a snapshot for {to}: {error}");
                                let _ = events.send(Event::SnapshotSent { to, position: None });
                            }
                        }
                    });
                    if let Err(error) = spawned {
                        tracing::error!("cannot start a snapshot thread: {error}");
                    }
                }
                StorageCommand::InstallSnapshot { path, rollback_after: None } => match self.engine.install_snapshot(&path, false) {
                    Ok(position) => {
                        self.reader_generation.fetch_add(1, Ordering::AcqRel);
                        tracing::info!("snapshot installed at {position}");
                        let _ = self.events.send(Event::SnapshotInstalled(position));
                    }
                    Err(error) => tracing::error!("cannot install snapshot: {error}"),
                },
                StorageCommand::InstallSnapshot { path, rollback_after: Some(common) } => {
                    let outcome = self.engine.roll_back_and_install(common, &path);
                    match outcome {
                        Ok((entries, position)) => {
                            self.reader_generation.fetch_add(1, Ordering::AcqRel);
                            tracing::warn!(
                                "log diverged after index {common}: {entries} entries moved to the rollback store; snapshot installed at {position}"
                            );
                            let _ = self.events.send(Event::RolledBack { position });
                        }
                        Err(error) => tracing::error!("cannot roll back after {common} and install the snapshot: {error}"),
                    }
                }
                StorageCommand::Checksums { reply } => {
                    let _ = reply.send(self.engine.table_checksums().map_err(|error| error.to_string()));
                }
                StorageCommand::Panic => panic!("fault injection: the storage thread was asked to panic (POST /debug/panic)"),
                StorageCommand::Shutdown { reply } => {
                    if let Err(error) = self.engine.checkpoint() {
                        tracing::warn!("checkpoint at shutdown failed: {error}");
                    }
                    drop(self.engine);
                    let _ = reply.send(());
                    return;
                }
            }
        }
    }

    fn execute(&mut self, batch: Vec<(WriteRequest, AckRequirement, u64, oneshot::Sender<WriteReply>)>) {
        // Only while the replica loop still lets this node write in that epoch: a node
        // that lost its lease or leadership meanwhile must not extend its log.
        let lease = self.write_lease.clone();
        let (batch, refused): (Vec<_>, Vec<_>) = batch.into_iter().partition(|(_, _, epoch, _)| lease.allows(*epoch));
        for (_, _, _, reply) in refused {
            let _ = reply.send(stopped_leading());
        }
        if batch.is_empty() {
            return;
        }
        let epoch = batch[0].2;
        let batch: Vec<(WriteRequest, AckRequirement, oneshot::Sender<WriteReply>)> =
            batch.into_iter().map(|(request, requirement, _, reply)| (request, requirement, reply)).collect();
        let requests: Vec<WriteRequest> = batch.iter().map(|(request, _, _)| request.clone()).collect();
        let still_leading = || lease.allows(epoch);
        match self.engine.execute_batch_while(epoch, &requests, &still_leading) {
            Ok(Executed::StoppedLeading) => {
                for (_, _, reply) in batch {
                    let _ = reply.send(stopped_leading());
                }
            }
            Ok(Executed::Committed(outcome)) => {
                let mut writes = Vec::new();
                for ((results, changed), (_, requirement, reply)) in outcome.results.into_iter().zip(outcome.changed).zip(batch) {
                    match &outcome.entry {
                        Some(entry) if changed => writes.push(PendingWrite { index: entry.index, requirement, results, reply }),
                        _ => {
                            let _ = reply.send(WriteReply { results, position: None, error: None });
                        }
                    }
                }
                if let Some(entry) = outcome.entry {
                    self.stats.entries.fetch_add(1, Ordering::Relaxed);
                    self.stats.bytes.fetch_add(entry.payload.len() as u64, Ordering::Relaxed);
                    let _ = self.events.send(Event::Appended { entries: vec![entry], writes });
                    self.maybe_compact();
                }
            }
            Err(error) => {
                tracing::error!("write batch failed: {error}");
                if error.is_disk_full() {
                    let _ = self.events.send(Event::DiskFull);
                }
                // A statement stopped at its deadline failed the group: the others retry.
                let status = match error.kind() {
                    tern_storage::StorageErrorKind::StatementTimedOut => 503,
                    tern_storage::StorageErrorKind::EntryTooLarge => 413,
                    _ => 500,
                };
                for (_, _, reply) in batch {
                    let _ = reply.send(WriteReply {
                        results: Vec::new(),
                        position: None,
                        error: Some(RequestError::new(status, format!("storage failure: {error}"))),
                    });
                }
            }
        }
    }

    /// Keeps the log near `log_retain` entries, compacting in steps so it is rare.
    fn maybe_compact(&mut self) {
        let held = self.engine.last().index.saturating_sub(self.engine.first_index()) + 1;
        if held > self.log_retain + self.log_retain / 4 + 64 {
            if let Err(error) = self.engine.compact(self.log_retain) {
                tracing::error!("log compaction failed: {error}");
            }
        }
    }
}
