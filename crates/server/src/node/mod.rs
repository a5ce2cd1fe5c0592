//! One running node: the replica loop (a tokio task driving the sans-IO core), the storage
//! thread (the only writer to SQLite), a pool of read-only connections, and the request
//! paths the HTTP API calls.
//!
//! Write path on the leader: HTTP handler → storage thread (group commit: every request
//! queued while the previous commit was fsyncing goes into the next transaction) →
//! `Event::Wrote` as soon as it committed → core (ships the entry) while the storage
//! thread syncs it → `Event::Appended` (durable here; the core counts this copy and acks)
//! → `Output::WriteDone` → reply.
//! On a follower the same request is forwarded to the leader over the peer link.
//!
//! By concern: `driver` (the replica loop), `storage_thread`, `writes`, `reads`, `peers`.

use crate::config::NodeConfig;
use crate::transport;
use crate::wire::{Frame, ReadReply, RequestError, WriteReply};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::{Duration, Instant};
use tern_core::multi_leader::{Dot, RegionMessage, Shipment, VersionVector};
use tern_core::{
    AckRequirement, Config, ElectionConfig, Entry, Membership, MembershipError, MembershipRequest, Message, Output, Position, ReadError, ReadLevel, Replica,
    SavedElection, Status, TransferError, WriteError,
};
use tern_storage::{Engine, Executed, Reader, RollbackStore, RolledBack, Statement, StatementResult, WriteRequest};
use tokio::sync::{mpsc, oneshot, watch};

mod devices;
mod driver;
mod peers;
mod queue;
mod reads;
mod regions;
mod storage_thread;
mod writes;

use driver::*;
pub(crate) use peers::*;
use regions::RegionLink;
pub use regions::{RegionChange, RegionStatus};
pub use storage_thread::*;

/// What the replica loop reacts to.
pub(crate) enum Event {
    Peer {
        from: String,
        message: Message,
    },
    PeerConnected(String),
    /// The leader's storage could not write a batch: its disk is full.
    DiskFull,
    /// Leader: entries committed and still syncing: they ship now (`Appended` follows
    /// once they are durable).
    Wrote {
        entries: Vec<Entry>,
    },
    Appended {
        entries: Vec<Entry>,
        writes: Vec<PendingWrite>,
        /// Multi-leader: the region writes the (single) entry holds.
        region_writes: Vec<tern_storage::region_log::LoggedWrite>,
    },
    /// Multi-leader: a message from another region's leader.
    Region {
        region: String,
        message: RegionMessage<Vec<u8>>,
    },
    /// Multi-leader: the region's durable cursors, read for a new exchange.
    RegionHolds(VersionVector),
    RegionWritesRead {
        to: String,
        writes: Vec<Shipment<Vec<u8>>>,
    },
    /// Multi-leader: a write from another region could not be applied here.
    RegionApplyFailed(String),
    RegionStatus {
        reply: oneshot::Sender<RegionStatus>,
    },
    /// Device sync: a device's own writes, for this region's exchange; answered once this
    /// region holds the last (`Err`: not by the deadline, or no exchange runs here).
    DevicePush {
        shipments: Vec<Shipment<Vec<u8>>>,
        deadline: u64,
        reply: oneshot::Sender<Result<(), usize>>,
    },
    /// Multi-leader, `w=regions:k`: answer once `regions` regions hold `dot` (or, at the
    /// deadline, with how many did).
    WaitForRegions {
        dot: Dot,
        regions: usize,
        deadline: u64,
        reply: oneshot::Sender<Result<(), usize>>,
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
    region_write: Option<Dot>,
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
    /// Multi-leader: the region's cursors (answered with `Event::RegionHolds`).
    RegionHolds,
    ReadRegionWrites {
        to: String,
        origin: String,
        after: u64,
        up_to: u64,
    },
    /// Multi-leader, region leader: apply writes from other regions (in this order) in
    /// `epoch`.
    ApplyRegionWrites {
        shipments: Vec<Shipment<Vec<u8>>>,
        epoch: u64,
    },
    /// Multi-leader, region leader: set a table's policy or settle a row's conflicts, in
    /// `epoch`; answered with the entry's position and the change's region write.
    RegionAdmin {
        change: RegionChange,
        epoch: u64,
        reply: oneshot::Sender<Result<(Position, Option<tern_core::multi_leader::Dot>), RequestError>>,
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
    /// Its leader priority and whether it votes, from its Hello.
    pub preference: Option<tern_core::Preference>,
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
    /// Multi-leader `level=session`: the region writes to wait for (a token).
    pub after_regions: Option<VersionVector>,
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
    /// SQL texts of reads that ran over the inline budget lately (see `read_inline`).
    slow_reads: Mutex<reads::SlowReads>,
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
    /// Multi-leader: per other region, the node that last spoke for it (its leader) and
    /// when: where the exchange and writes homed there are sent.
    region_leaders: Mutex<BTreeMap<String, (String, Instant)>>,
    /// Multi-leader: the nodes of the other regions, with their regions (fixed at start;
    /// asked of every incoming frame).
    remote_regions: BTreeMap<String, String>,
    /// Multi-leader: moves of homed rows asked of this node and not yet answered.
    pub(crate) moves: Mutex<Vec<regions::MoveInProgress>>,
    /// rqlite's queued writes, started by the first one.
    write_queue: std::sync::OnceLock<queue::WriteQueue>,
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
        crate::metrics::install();
        let mut engine =
            Engine::open(&config.data_dir, config.log_format).map_err(|error| format!("cannot open database in {}: {error}", config.data_dir.display()))?;
        engine.set_statement_rewrite(config.statement_rewrite);
        engine.set_origin_region(&config.region);
        engine.settle_topology(config.topology).map_err(|error| format!("cannot start: {error}"))?;
        if config.topology == tern_core::Topology::MultiLeader {
            engine.set_region(&config.region, &config.all_regions()).map_err(|error| format!("cannot run multi-leader: {error}"))?;
        }
        engine.set_limits(config.limits);
        let recovered = engine.last();
        let epoch_starts = engine.epoch_starts().map_err(|error| format!("cannot read the log: {error}"))?;
        let saved_election = if config.failover { load_election(&config.data_dir)? } else { None };
        let started = Instant::now();

        if config.join && !config.failover {
            return Err("--join needs automatic failover (--failover on): membership is agreed by quorum vote".to_string());
        }
        check_placement(&config)?;
        let mut core_config = Config::new(config.id.clone(), config.members(), config.leader.clone(), config.ack);
        core_config.addresses = config.addresses();
        core_config.leader_priority = config.leader_priority;
        core_config.non_voters = config.non_voters.clone();
        core_config.join = config.join;
        core_config.heartbeat_interval_us = config.heartbeat_interval.as_micros() as u64;
        core_config.in_sync_timeout_us = config.in_sync_timeout.as_micros() as u64;
        core_config.write_timeout_us = config.write_timeout.as_micros() as u64;
        core_config.tail_cache_bytes = config.tail_cache_bytes;
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
        let write_lease =
            Arc::new(WriteLease { epoch: AtomicU64::new(0), until_us: AtomicU64::new(0), clock: started, compactable_through: AtomicU64::new(0) });
        write_lease.publish(&replica, 0);
        let remote_regions = config.remote_nodes().into_iter().map(|(id, _, region)| (id, region)).collect();
        let node = Arc::new(Node {
            write_queue: std::sync::OnceLock::new(),
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
            slow_reads: Mutex::new(reads::SlowReads::default()),
            reader_generation: reader_generation.clone(),
            forwards: Mutex::new(HashMap::new()),
            next_forward_id: AtomicU64::new(1),
            log_stats: Arc::new(LogStats::default()),
            write_lease: write_lease.clone(),
            cut_off: Mutex::new(std::collections::BTreeSet::new()),
            region_leaders: Mutex::new(BTreeMap::new()),
            remote_regions,
            moves: Mutex::new(Vec::new()),
        });

        let storage_context = StorageContext {
            engine,
            stats: node.log_stats.clone(),
            events: events_tx,
            write_lease,
            log_retain: node.config.log_retain,
            reader_generation,
            node_id: node.config.id.clone(),
            // TERN_SHIP_AFTER_SYNC=1: the leader's entries ship only once durable here,
            // as before the sync overlapped (for measuring what the overlap gives).
            ship_before_sync: std::env::var_os("TERN_SHIP_AFTER_SYNC").is_none_or(|value| value != "1"),
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

    /// One look at what the replica loop last published, without copying it (a copy
    /// holds the membership: allocations a read by key should not pay for).
    pub fn with_published<T>(&self, look: impl FnOnce(&Published) -> T) -> T {
        look(&self.published.borrow())
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
}

/// `--leader-priority` and `--non-voters` make sense together with the rest of the
/// configuration: both need elections, a non-voter is a member (or the joining node
/// itself), and the first leader is a voter that may lead.
fn check_placement(config: &NodeConfig) -> Result<(), String> {
    let placed = config.leader_priority != 1 || !config.non_voters.is_empty();
    if placed && !config.failover {
        return Err("--leader-priority and --non-voters need automatic failover (--failover on): without it the leader is fixed by --leader".to_string());
    }
    let members = config.members();
    for id in &config.non_voters {
        let known = members.contains(id) || (config.join && *id == config.id);
        if !known {
            return Err(format!("--non-voters names {id}, which is not a member in --cluster"));
        }
    }
    if !config.join {
        if members.iter().all(|id| config.non_voters.contains(id)) {
            return Err("--non-voters names every member: a cluster needs at least one voter".to_string());
        }
        if config.non_voters.contains(&config.leader) {
            return Err(format!("{} is the first leader (--leader, or first in --cluster) and cannot be a non-voter", config.leader));
        }
    }
    Ok(())
}
