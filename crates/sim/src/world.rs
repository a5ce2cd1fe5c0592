//! The simulated world: nodes driving `tern_core::Replica`, a network, disks, clients and
//! a fault schedule, all advanced by one discrete-event loop on a simulated clock.
//!
//! Fault model (what can happen, and nothing else):
//! - network (node to node): latency per region pair plus jitter (which reorders), loss,
//!   duplication, partitions (symmetric, one-way, or one node isolated). Client links only
//!   have latency.
//! - process: crash (everything not fsynced is lost) and restart from the disk; pause
//!   (no event is handled until resumed, as under SIGSTOP); constant clock skew per node.
//! - disk: fsync takes time, sometimes a long stall; a crash loses queued, incomplete
//!   persists; "destroy" erases the leader's disk for good, after which the operator
//!   promotes the most up-to-date surviving node (new epoch) — the manual failover of a
//!   single-leader cluster, until automatic failover exists. Only one disk is lost at a
//!   time: another may be destroyed only once the rebuilt node holds every write that was
//!   acknowledged with a majority requirement when its disk was lost.

use crate::history::{Op, OpKind, Outcome};
use crate::rng::Rng;
use crate::{Faults, Options};
use std::cmp::Ordering as CmpOrdering;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::fmt::Write as _;
use tern_core::single_leader::Event as ReplicaEvent;
use tern_core::{
    AckRequirement, Config, ElectionConfig, Entry, MembershipRequest, Message, Micros, Output, Position, Protocol, ReadLevel, Replica, SavedElection,
    WriteError,
};

/// Appends a line to the trace, formatting it only when a trace is kept.
macro_rules! trace {
    ($world:expr, $($argument:tt)*) => {
        if $world.trace.is_some() {
            let line = format!($($argument)*);
            $world.push_trace(line);
        }
    };
}

const MS: Micros = 1_000;
const SECOND: Micros = 1_000_000;
const TICK: Micros = 10 * MS;
const KEYS: u64 = 4;
/// No seed needs this many events (a normal one handles well under a million).
const MAX_EVENTS: u64 = 3_000_000;
const COMPACTION_KEEP: u64 = 20;
const CLIENT_TIMEOUT: Micros = 12 * SECOND;
const SESSION_WAIT: Micros = 5 * SECOND;
/// One-way latency between the simulated regions (us-east, eu-west, antarctica).
const REGION_LATENCY_MS: [[u64; 3]; 3] = [[0, 40, 75], [40, 0, 90], [75, 90, 0]];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Addr {
    Node(usize),
    Client(usize),
}

#[derive(Clone, Debug)]
enum Request {
    Write { write_id: u64, key: u8, requirement: AckRequirement },
    Read { key: u8, level: ReadLevel, after: Position, max_lag_us: Micros },
}

#[derive(Clone, Debug)]
enum Reply {
    WriteOk(Position),
    WriteFailed,
    WriteUnknown,
    ReadOk { write_id: Option<u64>, write_index: u64, node_last: Position },
    ReadFailed,
}

#[derive(Clone, Debug)]
enum Payload {
    Replica(Message),
    Request { op: usize, client: usize, request: Request },
    Reply { op: usize, reply: Reply },
    Snapshot { entries: Vec<Entry>, position: Position, rollback_after: Option<u64> },
}

#[derive(Clone, Debug)]
enum Event {
    Deliver {
        from: Addr,
        to: Addr,
        payload: Payload,
    },
    PersistDone {
        node: usize,
        incarnation: u64,
    },
    Tick {
        node: usize,
        incarnation: u64,
    },
    ClientWake {
        client: usize,
    },
    ClientTimeout {
        client: usize,
        op: usize,
    },
    Fault,
    Restart {
        node: usize,
    },
    Resume {
        node: usize,
    },
    Heal {
        partition: u64,
    },
    /// Advance the node replacement under way (see `World::replacement`).
    Replace,
}

struct Scheduled {
    at: Micros,
    sequence: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.sequence) == (other.at, other.sequence)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    /// Earliest first (the heap is a max-heap); ties broken by scheduling order.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (other.at, other.sequence).cmp(&(self.at, self.sequence))
    }
}

/// A persist in the disk's queue, completed in order.
enum Persist {
    /// Leader: a client's write, acknowledged by the core once durable.
    LeaderWrite {
        entry: Entry,
        client: usize,
        op: usize,
        requirement: AckRequirement,
    },
    Follower {
        entries: Vec<Entry>,
    },
    /// A snapshot from the leader: its whole state up to `position` (in this storage model,
    /// its log), replacing the local one; with `rollback_after`, local entries beyond that
    /// index move to the rollback store first.
    Snapshot {
        entries: Vec<Entry>,
        position: Position,
        rollback_after: Option<u64>,
    },
}

struct PendingRead {
    client: usize,
    op: usize,
    key: u8,
    after: Position,
    deadline: Micros,
}

pub struct Node {
    pub id: String,
    region: usize,
    replica: Option<Replica>,
    /// Durable log: what survives a crash. Invariants: contiguous from index 1.
    pub disk: Vec<Entry>,
    /// Bumped when the disk is destroyed.
    pub disk_generation: u64,
    /// Lowest index the log can still ship (older entries were compacted; their effects
    /// remain). A follower needing older entries gets a snapshot.
    first_index: u64,
    /// Bumped on every crash or restart; events for an older incarnation are dropped.
    incarnation: u64,
    persists: VecDeque<(Micros, Persist)>,
    disk_stalled_until: Micros,
    /// Leader: index for the next write it executes.
    next_index: u64,
    /// key → (write id, index of that write): the database.
    kv: BTreeMap<u8, (u64, u64)>,
    paused_until: Option<Micros>,
    skew: Micros,
    sessions: Vec<PendingRead>,
    next_tag: u64,
    write_tags: BTreeMap<u64, (usize, usize)>,
    read_tags: BTreeMap<u64, (usize, usize, Reply)>,
    /// Config used at the next (re)start: leader and epoch change on promotion.
    leader: String,
    epoch: u64,
    /// Durable election state (automatic failover).
    saved_election: Option<SavedElection>,
    /// Durable rollback store: entries removed because the leader of a later epoch
    /// lacked them.
    pub rollback: Vec<Entry>,
    /// The epoch in which `next_index` was last reset (a new leadership).
    leading_epoch: u64,
    /// Started outside the cluster, waiting to be added (after its disk was replaced).
    joining: bool,
    /// Entries on this node's disks that a replacement wiped (after its removal): the
    /// async checker accepts a lost `w=1` write found here, as it does the rollback store.
    pub wiped: Vec<Entry>,
}

impl Node {
    /// The database is a function of the log: rebuilt from the disk.
    fn rebuild_kv(&mut self) {
        self.kv.clear();
        for entry in &self.disk {
            let (write_id, key) = decode(&entry.payload);
            self.kv.insert(key, (write_id, entry.index));
        }
    }

    /// A snapshot from the leader replaces the whole local state.
    fn install_snapshot(&mut self, entries: Vec<Entry>, position: Position) {
        self.disk = entries;
        self.first_index = position.index + 1;
        self.rebuild_kv();
    }

    pub fn last(&self) -> Position {
        self.disk.last().map_or(Position::ZERO, Entry::position)
    }

    /// The disk is lost (the node must be down): returns what it held.
    fn wipe_disk(&mut self) -> Vec<Entry> {
        self.kv.clear();
        self.first_index = 1;
        self.disk_generation += 1;
        std::mem::take(&mut self.disk)
    }

    fn is_running(&self) -> bool {
        self.replica.is_some()
    }
}

struct Client {
    region: usize,
    home: usize,
    rng: Rng,
    session: Position,
    current: Option<usize>,
}

/// Whatever the checkers need besides the history.
pub struct Observations {
    /// (epoch, index) → write id of the entry the leader of that epoch created there.
    pub created: BTreeMap<(u64, u64), u64>,
    /// Epoch → every node seen acting as leader in it.
    pub leaders: BTreeMap<u64, Vec<String>>,
    /// Followers persisting something other than what the leader created at that position.
    pub mismatched_applies: Vec<String>,
    /// Moments at which two nodes would both have accepted a write.
    pub overlapping_leases: Vec<String>,
    /// A replica's structural invariant broken after a step (`Replica::check_invariants`).
    pub broken_invariants: Vec<String>,
}

pub struct World {
    options: Options,
    rng: Rng,
    now: Micros,
    sequence: u64,
    queue: BinaryHeap<Scheduled>,
    pub nodes: Vec<Node>,
    clients: Vec<Client>,
    pub history: Vec<Op>,
    pub observations: Observations,
    seed: u64,
    /// Events handled so far; a seed that needs absurdly many is a message storm.
    events: u64,
    /// Each node's role as last traced, to trace changes.
    roles: Vec<String>,
    /// Blocked directed links (from, to) with the partition that blocks them.
    blocked: BTreeMap<(usize, usize), u64>,
    next_partition: u64,
    loss_percent: u64,
    duplicate_percent: u64,
    next_write_id: u64,
    issued: usize,
    faults_on: bool,
    clients_on: bool,
    trace: Option<String>,
    pub destroyed_disks: usize,
    /// In-memory tail the leader keeps for shipping (small, so catch-up reads the log
    /// and, past compaction, sends snapshots).
    tail_cache_bytes: usize,
    /// Highest log index of a write acknowledged to a client with a majority requirement.
    max_durable_acked_index: u64,
    /// The node whose disk was last destroyed and the acknowledged index it must hold
    /// again before another disk may be lost.
    rebuilding: Option<(usize, u64)>,
    /// With failover: a node being replaced as an operator would, one at a time: removed
    /// from the membership, its disk wiped once the removal applied, then added back
    /// empty, caught up as a learner and promoted.
    replacement: Option<(usize, ReplaceStage)>,
    pub replaced_disks: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReplaceStage {
    Removing,
    Joining,
}

fn members(count: usize) -> Vec<String> {
    (1..=count).map(|number| format!("n{number}")).collect()
}

impl World {
    pub fn new(options: &Options, seed: u64, trace: bool) -> World {
        let mut rng = Rng::new(seed);
        let count = options.nodes;
        let skewed = matches!(options.faults, Faults::All);
        let nodes: Vec<Node> = members(count)
            .into_iter()
            .enumerate()
            .map(|(index, id)| Node {
                id,
                region: index % 3,
                replica: None,
                disk: Vec::new(),
                disk_generation: 0,
                first_index: 1,
                incarnation: 0,
                persists: VecDeque::new(),
                disk_stalled_until: 0,
                next_index: 1,
                kv: BTreeMap::new(),
                paused_until: None,
                skew: if skewed { rng.range(0, 2 * SECOND) } else { 0 },
                sessions: Vec::new(),
                next_tag: 1,
                write_tags: BTreeMap::new(),
                read_tags: BTreeMap::new(),
                leader: "n1".to_string(),
                epoch: 1,
                saved_election: None,
                rollback: Vec::new(),
                leading_epoch: 0,
                joining: false,
                wiped: Vec::new(),
            })
            .collect();
        let clients =
            (0..count + 1).map(|number| Client { region: number % 3, home: number % count, rng: rng.fork(), session: Position::ZERO, current: None }).collect();
        let (loss_percent, duplicate_percent) = match options.faults {
            Faults::Partition | Faults::All => (rng.range(0, 5), rng.range(0, 5)),
            Faults::None | Faults::Crash => (0, 0),
        };
        let mut world = World {
            options: options.clone(),
            rng,
            now: 0,
            sequence: 0,
            queue: BinaryHeap::new(),
            nodes,
            clients,
            history: Vec::new(),
            observations: Observations {
                created: BTreeMap::new(),
                leaders: BTreeMap::new(),
                mismatched_applies: Vec::new(),
                overlapping_leases: Vec::new(),
                broken_invariants: Vec::new(),
            },
            seed,
            events: 0,
            roles: vec![String::new(); count],
            blocked: BTreeMap::new(),
            next_partition: 1,
            loss_percent,
            duplicate_percent,
            next_write_id: 1,
            issued: 0,
            faults_on: !matches!(options.faults, Faults::None),
            clients_on: true,
            trace: trace.then(String::new),
            destroyed_disks: 0,
            tail_cache_bytes: 0,
            max_durable_acked_index: 0,
            rebuilding: None,
            replacement: None,
            replaced_disks: 0,
        };
        world.tail_cache_bytes = world.rng.range(0, 400) as usize;
        trace!(world, "seed {seed} nodes {count} ack {} faults {:?} loss {loss_percent}% dup {duplicate_percent}%", options.ack.name(), options.faults);
        for node in 0..count {
            world.start_node(node);
        }
        for client in 0..world.clients.len() {
            let delay = world.rng.range(0, 50 * MS);
            world.schedule(delay, Event::ClientWake { client });
        }
        if world.faults_on {
            let delay = world.rng.range(200 * MS, SECOND);
            world.schedule(delay, Event::Fault);
        }
        world
    }

    pub fn trace(&self) -> Option<&str> {
        self.trace.as_deref()
    }

    fn push_trace(&mut self, line: String) {
        if let Some(trace) = &mut self.trace {
            let _ = writeln!(trace, "{:>12} {line}", self.now);
        }
    }

    fn schedule(&mut self, delay: Micros, event: Event) {
        self.sequence += 1;
        self.queue.push(Scheduled { at: self.now + delay, sequence: self.sequence, event });
    }

    fn node_now(&self, node: usize) -> Micros {
        self.now + self.nodes[node].skew
    }

    fn config_for(&self, node: usize) -> Config {
        let state = &self.nodes[node];
        let mut config = Config::new(state.id.clone(), members(self.nodes.len()), state.leader.clone(), self.options.ack);
        config.epoch = state.epoch;
        config.join = state.joining;
        config.addresses = members(self.nodes.len()).into_iter().map(|id| (id.clone(), id)).collect();
        config.tail_cache_bytes = self.tail_cache_bytes;
        config.snapshot_timeout_us = 3 * SECOND;
        if self.options.failover {
            // Slower than the server's loopback default: one-way latencies here reach 90 ms.
            config.elections = Some(ElectionConfig { tick_us: 50 * MS, election_ticks: 10, heartbeat_ticks: 2, seed: self.seed });
        }
        config
    }

    fn start_node(&mut self, node: usize) {
        let config = self.config_for(node);
        let now = self.node_now(node);
        let state = &mut self.nodes[node];
        state.incarnation += 1;
        state.rebuild_kv();
        let last = state.last();
        state.next_index = last.index + 1;
        let mut epoch_starts: Vec<(u64, u64)> = Vec::new();
        for entry in &state.disk {
            if epoch_starts.last().is_none_or(|(epoch, _)| *epoch != entry.epoch) {
                epoch_starts.push((entry.epoch, entry.index));
            }
        }
        state.replica = Some(Replica::start(config, last, epoch_starts, state.saved_election.as_ref(), now));
        let incarnation = state.incarnation;
        trace!(self, "start {} at {last}", self.nodes[node].id);
        self.drain(node);
        self.schedule(TICK, Event::Tick { node, incarnation });
    }

    fn crash_node(&mut self, node: usize) {
        let state = &mut self.nodes[node];
        state.replica = None;
        state.incarnation += 1;
        state.persists.clear();
        state.sessions.clear();
        state.write_tags.clear();
        state.read_tags.clear();
        state.paused_until = None;
        trace!(self, "crash {} (durable at {})", self.nodes[node].id, self.nodes[node].last());
    }

    /// The configured leader (every node is always configured with the same one); with
    /// failover, the running leader of the highest epoch (else node 0: clients then get
    /// refusals, as they would during an election).
    fn current_leader(&self) -> usize {
        if self.options.failover {
            let leading = self
                .nodes
                .iter()
                .enumerate()
                .filter_map(|(index, node)| node.replica.as_ref().filter(|replica| replica.is_leader()).map(|replica| (replica.epoch(), index)));
            return leading.max().map_or(0, |(_, index)| index);
        }
        let leader = &self.nodes[0].leader;
        self.nodes.iter().position(|node| node.id == *leader).expect("the leader is a member")
    }

    /// Runs the fault phase until `steps` client operations were issued, heals every
    /// fault, runs a fault-free liveness phase, stops clients and lets the cluster settle.
    /// Returns whether it settled (every node holding the leader's whole log).
    pub fn run(&mut self) -> bool {
        let hard_stop = 3_600 * SECOND;
        while self.issued < self.options.steps && self.now < hard_stop {
            if !self.step() {
                break;
            }
        }
        self.heal_everything();
        let liveness_end = self.now + 3 * SECOND;
        while self.now < liveness_end && self.step() {}
        self.clients_on = false;
        let settle_deadline = self.now + 60 * SECOND;
        while self.now < settle_deadline {
            if self.settled() {
                return true;
            }
            if !self.step() {
                break;
            }
        }
        self.settled()
    }

    fn settled(&self) -> bool {
        let leader = &self.nodes[self.current_leader()];
        if !leader.replica.as_ref().is_some_and(Replica::is_leader) {
            return false;
        }
        let clients_idle = self.clients.iter().all(|client| client.current.is_none());
        clients_idle && self.nodes.iter().all(|node| node.is_running() && node.persists.is_empty() && node.disk.len() == leader.disk.len())
    }

    fn heal_everything(&mut self) {
        self.faults_on = false;
        self.blocked.clear();
        self.loss_percent = 0;
        self.duplicate_percent = 0;
        for node in 0..self.nodes.len() {
            self.nodes[node].disk_stalled_until = 0;
            if self.nodes[node].paused_until.is_some() {
                self.nodes[node].paused_until = Some(self.now);
                self.schedule(0, Event::Resume { node });
            }
            if !self.nodes[node].is_running() {
                self.start_node(node);
            }
        }
        trace!(self, "heal everything");
    }

    /// Handles the next event; false when nothing is left to do.
    fn step(&mut self) -> bool {
        self.events += 1;
        if self.events == MAX_EVENTS {
            self.observations.mismatched_applies.push(format!("event storm: {MAX_EVENTS} events handled by {} us, {} queued", self.now, self.queue.len()));
        }
        if self.events >= MAX_EVENTS {
            return false;
        }
        let Some(Scheduled { at, event, .. }) = self.queue.pop() else { return false };
        self.now = at;
        if let Some(node) = self.target_node(&event) {
            if let Some(until) = self.nodes[node].paused_until {
                if until > self.now {
                    // A paused process handles nothing; its events wait for the resume.
                    self.sequence += 1;
                    self.queue.push(Scheduled { at: until, sequence: self.sequence, event });
                    return true;
                }
            }
        }
        trace!(self, "{event:?}");
        self.handle(event);
        self.check_invariants();
        self.observe_leaders();
        true
    }

    /// Every running replica's invariants, after every step (as TigerBeetle checks its
    /// replicas); the first few broken ones are kept for the report.
    fn check_invariants(&mut self) {
        for node in &self.nodes {
            if let Some(Err(broken)) = node.replica.as_ref().map(Replica::check_invariants) {
                if self.observations.broken_invariants.len() < 10 {
                    self.observations.broken_invariants.push(format!("{} at {} us: {broken}", node.id, self.now));
                }
            }
        }
    }

    fn target_node(&self, event: &Event) -> Option<usize> {
        match event {
            Event::Deliver { to: Addr::Node(node), .. } | Event::PersistDone { node, .. } | Event::Tick { node, .. } => Some(*node),
            _ => None,
        }
    }

    fn observe_leaders(&mut self) {
        if self.trace.is_some() {
            for node in 0..self.nodes.len() {
                let now = self.now + self.nodes[node].skew;
                let role = self.nodes[node].replica.as_ref().map_or("down".to_string(), |replica| {
                    let status = replica.status(now);
                    format!(
                        "epoch {} term {} leader {:?}{}{}",
                        status.epoch,
                        status.term,
                        status.leader,
                        if status.recovering { " recovering" } else { "" },
                        if status.accepting_writes { " accepting" } else { "" }
                    )
                });
                if role != self.roles[node] {
                    trace!(self, "{} is now {role}", self.nodes[node].id);
                    self.roles[node] = role;
                }
            }
        }
        if self.options.failover {
            let accepting: Vec<&str> = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(index, node)| node.replica.as_ref().is_some_and(|replica| replica.accepting_writes(self.now + self.nodes[*index].skew).is_ok()))
                .map(|(_, node)| node.id.as_str())
                .collect();
            if accepting.len() > 1 && self.observations.overlapping_leases.len() < 5 {
                let line = format!("at {} us, {} would all accept writes", self.now, accepting.join(" and "));
                self.observations.overlapping_leases.push(line);
            }
        }
        for node in &self.nodes {
            if let Some(replica) = &node.replica {
                if replica.is_leader() {
                    let leaders = self.observations.leaders.entry(replica.epoch()).or_default();
                    if !leaders.contains(&node.id) {
                        leaders.push(node.id.clone());
                    }
                }
            }
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver { from, to, payload } => self.deliver(from, to, payload),
            Event::PersistDone { node, incarnation } => {
                if self.nodes[node].incarnation == incarnation {
                    self.complete_persist(node);
                }
            }
            Event::Tick { node, incarnation } => {
                if self.nodes[node].incarnation != incarnation {
                    return;
                }
                let now = self.node_now(node);
                if let Some(replica) = &mut self.nodes[node].replica {
                    replica.handle(ReplicaEvent::Tick, now);
                }
                self.expire_sessions(node);
                self.drain(node);
                self.schedule(TICK, Event::Tick { node, incarnation });
            }
            Event::ClientWake { client } => self.client_issue(client),
            Event::ClientTimeout { client, op } => {
                if self.clients[client].current == Some(op) {
                    let outcome = match self.history[op].kind {
                        OpKind::Write { .. } => Outcome::Unknown,
                        OpKind::Read { .. } => Outcome::Failed,
                    };
                    self.complete_op(client, op, outcome);
                }
            }
            Event::Fault => self.inject_fault(),
            Event::Restart { node } => {
                if !self.nodes[node].is_running() {
                    self.start_node(node);
                }
            }
            Event::Resume { node } => {
                if self.nodes[node].paused_until.is_some_and(|until| until <= self.now) {
                    self.nodes[node].paused_until = None;
                    trace!(self, "resume {}", self.nodes[node].id);
                }
            }
            Event::Heal { partition } => {
                self.blocked.retain(|_, blocking| *blocking != partition);
                trace!(self, "heal partition {partition}");
            }
            Event::Replace => self.continue_replacement(),
        }
    }

    /// One step of the replacement under way; repeats every 200 ms until done, through
    /// faults and elections, as an operator's script would.
    fn continue_replacement(&mut self) {
        let Some((node, stage)) = self.replacement else { return };
        let id = self.nodes[node].id.clone();
        let leader = self.current_leader();
        let now = self.node_now(leader);
        // Only a leader whose lease holds speaks for the cluster: an old one cut off may
        // still think it leads, with a membership from before the change.
        // Nor one whose membership may be out of date (a change not yet applied).
        let Some(replica) = self.nodes[leader].replica.as_mut().filter(|replica| replica.accepting_writes(now).is_ok() && !replica.membership_change_pending())
        else {
            let why = self.nodes[leader].replica.as_ref().map(|replica| (replica.accepting_writes(now).is_ok(), replica.membership_change_pending()));
            trace!(self, "replacement of {id} waits: n{} (accepting writes, change pending) = {why:?}", leader + 1);
            self.schedule(200 * MS, Event::Replace);
            return;
        };
        match stage {
            ReplaceStage::Removing if leader == node => {
                // It leads now: as an operator must, hand leadership to another voter first.
                let to = replica.membership().voters.iter().find(|voter| **voter != id).cloned();
                if let Some(to) = to {
                    let outcome = replica.transfer_leadership(now, &to);
                    trace!(self, "{id} leads: transfer to {to}: {outcome:?}");
                    self.drain(leader);
                }
            }
            ReplaceStage::Removing if !replica.membership().contains(&id) => {
                // Applied by the leader, so committed: the disk may go.
                self.crash_node(node);
                let state = &mut self.nodes[node];
                let disk = state.wipe_disk();
                state.wiped.extend(disk);
                // The rollback store is archived by the operator, not lost with the disk.
                state.saved_election = None;
                state.joining = true;
                self.replaced_disks += 1;
                self.replacement = Some((node, ReplaceStage::Joining));
                trace!(self, "removal of {id} applied; its disk is wiped");
            }
            ReplaceStage::Removing => {
                let outcome = replica.change_membership(now, MembershipRequest::Remove { id: id.clone() });
                trace!(self, "ask n{} to remove {id}: {outcome:?}", leader + 1);
                self.drain(leader);
            }
            ReplaceStage::Joining => {
                if !self.nodes[node].is_running() {
                    self.start_node(node);
                }
                let Some(replica) = self.nodes[leader].replica.as_mut() else { return };
                if replica.membership().voters.contains(&id) {
                    trace!(self, "{id} is a voter again");
                    self.nodes[node].joining = false;
                    self.replacement = None;
                    return;
                }
                if !replica.membership().contains(&id) {
                    let outcome = replica.change_membership(now, MembershipRequest::Add { id: id.clone(), address: id.clone() });
                    trace!(self, "ask n{} to add {id}: {outcome:?}", leader + 1);
                    self.drain(leader);
                }
            }
        }
        self.schedule(200 * MS, Event::Replace);
    }

    // ---- network ----

    fn send(&mut self, from: Addr, to: Addr, payload: Payload) {
        let region = |world: &World, addr: Addr| match addr {
            Addr::Node(node) => world.nodes[node].region,
            Addr::Client(client) => world.clients[client].region,
        };
        let base = REGION_LATENCY_MS[region(self, from)][region(self, to)] * MS;
        if let (Addr::Node(source), Addr::Node(target)) = (from, to) {
            if self.blocked.contains_key(&(source, target)) || self.rng.chance(self.loss_percent) {
                return;
            }
            if self.rng.chance(self.duplicate_percent) {
                let delay = base + self.rng.range(100, base / 10 + 3 * MS);
                self.schedule(delay, Event::Deliver { from, to, payload: payload.clone() });
            }
        }
        let delay = base + self.rng.range(50, base / 10 + 2 * MS);
        self.schedule(delay, Event::Deliver { from, to, payload });
    }

    fn deliver(&mut self, from: Addr, to: Addr, payload: Payload) {
        match (to, payload) {
            (Addr::Node(node), Payload::Replica(message)) => {
                let Addr::Node(source) = from else { return };
                let now = self.node_now(node);
                let from_id = self.nodes[source].id.clone();
                if let Some(replica) = &mut self.nodes[node].replica {
                    replica.handle(ReplicaEvent::Message { from: from_id, message }, now);
                    self.drain(node);
                }
            }
            (Addr::Node(node), Payload::Request { op, client, request }) => self.serve(node, client, op, request),
            (Addr::Node(node), Payload::Snapshot { entries, position, rollback_after }) if self.nodes[node].is_running() => {
                self.enqueue_persist(node, Persist::Snapshot { entries, position, rollback_after });
            }
            (Addr::Client(client), Payload::Reply { op, reply }) => {
                if self.clients[client].current != Some(op) {
                    return;
                }
                let outcome = match reply {
                    Reply::WriteOk(position) => Outcome::WriteOk(position),
                    Reply::WriteFailed | Reply::ReadFailed => Outcome::Failed,
                    Reply::WriteUnknown => Outcome::Unknown,
                    Reply::ReadOk { write_id, write_index, node_last } => Outcome::ReadOk { write_id, write_index, node_last },
                };
                self.complete_op(client, op, outcome);
            }
            _ => {}
        }
    }

    // ---- a node serving clients ----

    fn reply(&mut self, node: usize, client: usize, op: usize, reply: Reply) {
        self.send(Addr::Node(node), Addr::Client(client), Payload::Reply { op, reply });
    }

    fn read_local(&self, node: usize, key: u8) -> Reply {
        let state = &self.nodes[node];
        let (write_id, write_index) = match state.kv.get(&key) {
            Some((write_id, index)) => (Some(*write_id), *index),
            None => (None, 0),
        };
        Reply::ReadOk { write_id, write_index, node_last: state.last() }
    }

    fn forward_to_leader(&mut self, node: usize, client: usize, op: usize, request: Request) {
        let leader = self.current_leader();
        if leader == node {
            // No leader is known (an election is under way): the client hears a refusal.
            let reply = match request {
                Request::Write { .. } => Reply::WriteFailed,
                Request::Read { .. } => Reply::ReadFailed,
            };
            self.reply(node, client, op, reply);
            return;
        }
        self.send(Addr::Node(node), Addr::Node(leader), Payload::Request { op, client, request });
    }

    fn serve(&mut self, node: usize, client: usize, op: usize, request: Request) {
        let now = self.node_now(node);
        let Some(replica) = &self.nodes[node].replica else { return };
        let is_leader = replica.is_leader();
        let lag = replica.lag_us(now);
        match request {
            Request::Write { write_id, key, requirement } => {
                if replica.accepting_writes(now).is_err() {
                    self.reply(node, client, op, Reply::WriteFailed);
                    return;
                }
                let epoch = replica.epoch();
                let state = &mut self.nodes[node];
                if state.leading_epoch != epoch {
                    state.leading_epoch = epoch;
                    state.next_index = state.last().index + 1;
                }
                let entry = Entry { index: state.next_index, epoch, payload: encode(write_id, key) };
                state.next_index += 1;
                self.observations.created.insert((entry.epoch, entry.index), write_id);
                self.enqueue_persist(node, Persist::LeaderWrite { entry, client, op, requirement });
            }
            Request::Read { key, level, after, max_lag_us } => match level {
                ReadLevel::None => {
                    let reply = self.read_local(node, key);
                    self.reply(node, client, op, reply);
                }
                ReadLevel::Bounded => {
                    if lag.is_some_and(|lag| lag <= max_lag_us) {
                        let reply = self.read_local(node, key);
                        self.reply(node, client, op, reply);
                    } else {
                        self.forward_to_leader(node, client, op, Request::Read { key, level: ReadLevel::Weak, after, max_lag_us });
                    }
                }
                ReadLevel::Session => {
                    if replica.holds(after) {
                        let reply = self.read_local(node, key);
                        self.reply(node, client, op, reply);
                    } else {
                        let deadline = self.now + SESSION_WAIT;
                        self.nodes[node].sessions.push(PendingRead { client, op, key, after, deadline });
                    }
                }
                ReadLevel::Weak | ReadLevel::Strong | ReadLevel::Linearizable => {
                    if !is_leader {
                        self.forward_to_leader(node, client, op, Request::Read { key, level, after, max_lag_us });
                    } else if level == ReadLevel::Weak {
                        let reply = self.read_local(node, key);
                        self.reply(node, client, op, reply);
                    } else {
                        let reply = self.read_local(node, key);
                        let observed = self.nodes[node].last().index;
                        let state = &mut self.nodes[node];
                        let tag = state.next_tag;
                        state.next_tag += 1;
                        state.read_tags.insert(tag, (client, op, reply));
                        state.replica.as_mut().expect("running").handle(ReplicaEvent::ReadBarrier { tag, observed_index: observed }, now);
                        self.drain(node);
                    }
                }
            },
        }
    }

    fn answer_sessions(&mut self, node: usize) {
        let Some(replica) = &self.nodes[node].replica else { return };
        let held: Vec<bool> = self.nodes[node].sessions.iter().map(|read| replica.holds(read.after)).collect();
        let ready: Vec<PendingRead> = {
            let sessions = &mut self.nodes[node].sessions;
            let mut held = held.into_iter();
            let (ready, waiting): (Vec<_>, Vec<_>) = sessions.drain(..).partition(|_| held.next().unwrap_or(false));
            *sessions = waiting;
            ready
        };
        for read in ready {
            let reply = self.read_local(node, read.key);
            self.reply(node, read.client, read.op, reply);
        }
    }

    fn expire_sessions(&mut self, node: usize) {
        let now = self.now;
        let expired: Vec<PendingRead> = {
            let sessions = &mut self.nodes[node].sessions;
            let (expired, waiting): (Vec<_>, Vec<_>) = sessions.drain(..).partition(|read| read.deadline <= now);
            *sessions = waiting;
            expired
        };
        for read in expired {
            self.reply(node, read.client, read.op, Reply::ReadFailed);
        }
    }

    // ---- disk ----

    fn enqueue_persist(&mut self, node: usize, persist: Persist) {
        let stalled = self.nodes[node].disk_stalled_until;
        let fsync = self.rng.range(200, 1_500);
        let previous = self.nodes[node].persists.back().map_or(0, |(done, _)| *done);
        let done_at = previous.max(self.now).max(stalled) + fsync;
        let incarnation = self.nodes[node].incarnation;
        self.nodes[node].persists.push_back((done_at, persist));
        self.schedule(done_at - self.now, Event::PersistDone { node, incarnation });
    }

    fn complete_persist(&mut self, node: usize) {
        let Some((_, persist)) = self.nodes[node].persists.pop_front() else { return };
        let now = self.node_now(node);
        match persist {
            Persist::LeaderWrite { entry, client, op, requirement } => {
                // The storage commits a write only while this node still leads the epoch
                // it was started in and it continues the log.
                let replica = self.nodes[node].replica.as_ref().expect("persists only complete on running nodes");
                let still_leading = replica.is_leader() && replica.epoch() == entry.epoch && entry.index == self.nodes[node].last().index + 1;
                if !still_leading {
                    trace!(self, "{} drops write {} at {}: no longer leading", self.nodes[node].id, decode(&entry.payload).0, entry.position());
                    self.reply(node, client, op, Reply::WriteFailed);
                    return;
                }
                self.append_to_disk(node, std::slice::from_ref(&entry));
                let state = &mut self.nodes[node];
                let tag = state.next_tag;
                state.next_tag += 1;
                state.write_tags.insert(tag, (client, op));
                let index = entry.index;
                state
                    .replica
                    .as_mut()
                    .expect("persists only complete on running nodes")
                    .handle(ReplicaEvent::LeaderAppended { entries: vec![entry], waiters: vec![(tag, index, requirement)] }, now);
            }
            Persist::Follower { mut entries } => {
                // As the engine does: entries already held (a snapshot covered them) are skipped.
                let held = self.nodes[node].last().index;
                entries.retain(|entry| entry.index > held);
                for entry in &entries {
                    match self.observations.created.get(&(entry.epoch, entry.index)) {
                        Some(write_id) if *write_id == decode(&entry.payload).0 => {}
                        other => self.observations.mismatched_applies.push(format!(
                            "{} persisted entry {} (write {}) but the leader created {:?} there",
                            self.nodes[node].id,
                            entry.position(),
                            decode(&entry.payload).0,
                            other
                        )),
                    }
                }
                let expected = self.nodes[node].last().index + 1;
                if entries.first().is_some_and(|entry| entry.index != expected) {
                    // The core must never hand the driver a persist that leaves a gap.
                    self.observations.mismatched_applies.push(format!(
                        "{} was asked to persist from {} at {}",
                        self.nodes[node].id,
                        entries[0].index,
                        expected - 1
                    ));
                    return;
                }
                self.append_to_disk(node, &entries);
                let last = self.nodes[node].last();
                self.nodes[node].replica.as_mut().expect("running").handle(ReplicaEvent::Persisted(last), now);
            }
            Persist::Snapshot { entries, position, rollback_after: Some(common) } => {
                let state = &mut self.nodes[node];
                let diverged: Vec<Entry> = state.disk.iter().filter(|entry| entry.index > common).cloned().collect();
                trace!(self, "{} rolls back {} entries after {common}, installs snapshot at {position}", self.nodes[node].id, diverged.len());
                let state = &mut self.nodes[node];
                state.rollback.extend(diverged);
                state.install_snapshot(entries, position);
                state.replica.as_mut().expect("running").handle(ReplicaEvent::RolledBack(position), now);
            }
            Persist::Snapshot { entries, position, rollback_after: None } => {
                let state = &mut self.nodes[node];
                if position.index <= state.last().index {
                    // As the engine does: a snapshot not ahead of the durable state is dropped.
                    let last = state.last();
                    trace!(self, "{} dropped snapshot at {position}: already at {last}", self.nodes[node].id);
                    self.nodes[node].replica.as_mut().expect("running").handle(ReplicaEvent::SnapshotInstalled(last), now);
                    self.answer_sessions(node);
                    self.drain(node);
                    return;
                }
                state.install_snapshot(entries, position);
                trace!(self, "{} installed snapshot at {position}", self.nodes[node].id);
                self.nodes[node].replica.as_mut().expect("running").handle(ReplicaEvent::SnapshotInstalled(position), now);
            }
        }
        self.answer_sessions(node);
        self.drain(node);
    }

    fn append_to_disk(&mut self, node: usize, entries: &[Entry]) {
        let state = &mut self.nodes[node];
        for entry in entries {
            let (write_id, key) = decode(&entry.payload);
            state.kv.insert(key, (write_id, entry.index));
            state.disk.push(entry.clone());
        }
        // Compaction keeps the newest COMPACTION_KEEP entries shippable.
        let last = state.last().index;
        if last >= state.first_index + 2 * COMPACTION_KEEP {
            state.first_index = last + 1 - COMPACTION_KEEP;
        }
    }

    // ---- core outputs ----

    fn drain(&mut self, node: usize) {
        loop {
            let Some(output) = self.nodes[node].replica.as_mut().and_then(Replica::poll_output) else { return };
            match output {
                Output::Send { to, message } => {
                    let Some(target) = self.nodes.iter().position(|candidate| candidate.id == to) else { continue };
                    self.send(Addr::Node(node), Addr::Node(target), Payload::Replica(message));
                }
                Output::Persist { entries } => self.enqueue_persist(node, Persist::Follower { entries }),
                Output::ReadLog { to, from_index } => {
                    let now = self.node_now(node);
                    if from_index < self.nodes[node].first_index {
                        self.nodes[node].replica.as_mut().expect("running").handle(ReplicaEvent::LogCompacted { to }, now);
                    } else {
                        let entries: Vec<Entry> = self.nodes[node].disk.iter().filter(|entry| entry.index >= from_index).take(512).cloned().collect();
                        self.nodes[node].replica.as_mut().expect("running").handle(ReplicaEvent::LogRead { to, entries }, now);
                    }
                }
                Output::SaveElection { state } => self.nodes[node].saved_election = Some(state),
                Output::MembershipChanged { .. } => {}
                Output::SendSnapshot { to, rollback_after } => {
                    // As the server does: the snapshot is handed to the transport and the
                    // core told at once; it may still be lost or partitioned away.
                    let now = self.node_now(node);
                    let (entries, position) = (self.nodes[node].disk.clone(), self.nodes[node].last());
                    self.nodes[node].replica.as_mut().expect("running").handle(ReplicaEvent::SnapshotFinished { to: to.clone(), sent: Some(position) }, now);
                    if let Some(target) = self.nodes.iter().position(|candidate| candidate.id == to) {
                        trace!(self, "snapshot at {position} from n{} to {to}", node + 1);
                        self.send(Addr::Node(node), Addr::Node(target), Payload::Snapshot { entries, position, rollback_after });
                    }
                }
                Output::WriteDone { tag, result } => {
                    let Some((client, op)) = self.nodes[node].write_tags.remove(&tag) else { continue };
                    let reply = match result {
                        Ok(position) => Reply::WriteOk(position),
                        Err(WriteError::Timeout { .. } | WriteError::Unsatisfiable { .. }) => Reply::WriteUnknown,
                        Err(WriteError::NotLeader { .. }) => Reply::WriteFailed,
                    };
                    self.reply(node, client, op, reply);
                }
                Output::ReadDone { tag, result } => {
                    let Some((client, op, reply)) = self.nodes[node].read_tags.remove(&tag) else { continue };
                    let reply = if result.is_ok() { reply } else { Reply::ReadFailed };
                    self.reply(node, client, op, reply);
                }
            }
        }
    }

    // ---- clients ----

    fn client_issue(&mut self, client: usize) {
        if !self.clients_on || self.clients[client].current.is_some() {
            return;
        }
        if self.faults_on && self.issued >= self.options.steps {
            return;
        }
        self.issued += 1;
        let leader = self.current_leader();
        let members = self.nodes.len();
        let default = self.options.ack.requirement();
        let state = &mut self.clients[client];
        let rng = &mut state.rng;
        let (kind, target, request) = if rng.chance(40) {
            let write_id = self.next_write_id;
            self.next_write_id += 1;
            let key = rng.range(0, KEYS - 1) as u8;
            // Writes use the cluster default or a per-request w=; w=1 only where the
            // cluster itself promises no more (--ack async).
            let roll = rng.range(0, 99);
            let requirement = match roll {
                0..=59 => default,
                60..=74 if default == AckRequirement::Nodes(1) => AckRequirement::Nodes(1),
                60..=89 => AckRequirement::Majority,
                _ => AckRequirement::Nodes(members),
            };
            (OpKind::Write { write_id, key, requirement }, leader, Request::Write { write_id, key, requirement })
        } else {
            let key = rng.range(0, KEYS - 1) as u8;
            let level = *rng.pick(&[ReadLevel::None, ReadLevel::Bounded, ReadLevel::Session, ReadLevel::Weak, ReadLevel::Strong, ReadLevel::Linearizable]);
            let after = state.session;
            let max_lag_us = rng.range(5, 300) * MS;
            (OpKind::Read { key, level, after }, state.home, Request::Read { key, level, after, max_lag_us })
        };
        let op = self.history.len();
        self.history.push(Op { client, kind, invoked: self.now, completed: None, outcome: Outcome::Pending });
        self.clients[client].current = Some(op);
        trace!(self, "client {client} invokes op {op} {:?} at n{}", self.history[op].kind, target + 1);
        self.send(Addr::Client(client), Addr::Node(target), Payload::Request { op, client, request });
        self.schedule(CLIENT_TIMEOUT, Event::ClientTimeout { client, op });
    }

    fn complete_op(&mut self, client: usize, op: usize, outcome: Outcome) {
        trace!(self, "client {client} completes op {op}: {outcome:?}");
        match &outcome {
            Outcome::WriteOk(position) => {
                self.clients[client].session = self.clients[client].session.max(*position);
                if let OpKind::Write { requirement, .. } = self.history[op].kind {
                    if crate::history::is_durable_requirement(requirement, self.nodes.len()) {
                        self.max_durable_acked_index = self.max_durable_acked_index.max(position.index);
                    }
                }
            }
            Outcome::ReadOk { node_last, .. } => {
                // Positions order by (epoch, index): a node still holding an old leader's
                // entries may be longer but is not ahead.
                let session = &mut self.clients[client].session;
                *session = (*session).max(*node_last);
            }
            _ => {}
        }
        self.history[op].completed = Some(self.now);
        self.history[op].outcome = outcome;
        self.clients[client].current = None;
        let think = self.clients[client].rng.range(0, 20 * MS);
        self.schedule(think, Event::ClientWake { client });
    }

    // ---- faults ----

    fn inject_fault(&mut self) {
        if !self.faults_on {
            return;
        }
        let next = self.rng.range(300 * MS, 1_500 * MS);
        self.schedule(next, Event::Fault);
        let count = self.nodes.len();
        let node = self.rng.range(0, count as u64 - 1) as usize;
        let crash_faults = matches!(self.options.faults, Faults::Crash | Faults::All);
        let network_faults = matches!(self.options.faults, Faults::Partition | Faults::All);
        let all = matches!(self.options.faults, Faults::All);
        let roll = self.rng.range(0, 99);
        match roll {
            0..=24 if crash_faults && self.nodes[node].is_running() => {
                self.crash_node(node);
                let delay = self.rng.range(100 * MS, 3 * SECOND);
                self.schedule(delay, Event::Restart { node });
            }
            25..=39 if crash_faults && self.nodes[node].is_running() && self.nodes[node].paused_until.is_none() => {
                let pause = self.rng.range(50 * MS, 2 * SECOND);
                self.nodes[node].paused_until = Some(self.now + pause);
                trace!(self, "pause {} for {pause} us", self.nodes[node].id);
                self.schedule(pause, Event::Resume { node });
            }
            40..=69 if network_faults => {
                let partition = self.next_partition;
                self.next_partition += 1;
                let shape = self.rng.range(0, 2);
                // With failover, isolating the leader with a minority matters most.
                let node = if self.options.failover && shape == 2 && self.rng.chance(60) { self.current_leader() } else { node };
                let other = (node + 1 + self.rng.range(0, count as u64 - 2) as usize) % count;
                match shape {
                    0 => {
                        self.blocked.insert((node, other), partition);
                        self.blocked.insert((other, node), partition);
                    }
                    1 => {
                        self.blocked.insert((node, other), partition);
                    }
                    _ => {
                        for peer in (0..count).filter(|peer| *peer != node) {
                            self.blocked.insert((node, peer), partition);
                            self.blocked.insert((peer, node), partition);
                        }
                    }
                }
                trace!(self, "partition {partition}: shape {shape} around n{} / n{}", node + 1, other + 1);
                let duration = self.rng.range(100 * MS, 3 * SECOND);
                self.schedule(duration, Event::Heal { partition });
            }
            70..=79 if all => {
                let stall = self.rng.range(50 * MS, 800 * MS);
                self.nodes[node].disk_stalled_until = self.now + stall;
                trace!(self, "disk stall on {} for {stall} us", self.nodes[node].id);
            }
            80..=87 if all && count >= 3 && !self.options.failover => self.destroy_leader_and_promote(),
            80..=87 if all && count >= 3 && self.replacement.is_none() && node != self.current_leader() => {
                trace!(self, "replace {}: remove it, wipe its disk, add it back", self.nodes[node].id);
                self.replacement = Some((node, ReplaceStage::Removing));
                self.schedule(0, Event::Replace);
            }
            _ => {}
        }
    }

    /// The leader's disk is lost for good; the operator promotes the most up-to-date
    /// other node (by durable log) in a new epoch and restarts every node with it.
    fn destroy_leader_and_promote(&mut self) {
        let old = self.current_leader();
        // One lost disk at a time: the last rebuilt disk must again hold every write that
        // was acknowledged with a majority requirement when it was lost. Two disks lost
        // together can take all of a write's copies, which no ack mode of a 3-node cluster
        // promises to survive. Nodes that are merely down keep their disks and count.
        if let Some((rebuilt, required)) = self.rebuilding {
            if self.nodes[rebuilt].last().index < required {
                return;
            }
        }
        self.rebuilding = Some((old, self.max_durable_acked_index));
        self.crash_node(old);
        self.nodes[old].wipe_disk();
        self.destroyed_disks += 1;
        let chosen = (0..self.nodes.len())
            .filter(|candidate| *candidate != old)
            .max_by_key(|candidate| (self.nodes[*candidate].last().index, std::cmp::Reverse(*candidate)))
            .expect("at least two nodes");
        let epoch = self.nodes.iter().map(|node| node.epoch).max().unwrap_or(1) + 1;
        let leader = self.nodes[chosen].id.clone();
        trace!(self, "destroy disk of {}; promote {leader} (at {}) in epoch {epoch}", self.nodes[old].id, self.nodes[chosen].last());
        for node in 0..self.nodes.len() {
            self.nodes[node].leader = leader.clone();
            self.nodes[node].epoch = epoch;
            if node != old && self.nodes[node].is_running() {
                self.crash_node(node);
                self.start_node(node);
            }
        }
        let delay = self.rng.range(200 * MS, 2 * SECOND);
        self.schedule(delay, Event::Restart { node: old });
    }
}

/// A simulated entry carries one write: its id and key (the id is also the value).
fn encode(write_id: u64, key: u8) -> Vec<u8> {
    let mut bytes = write_id.to_le_bytes().to_vec();
    bytes.push(key);
    bytes
}

fn decode(payload: &[u8]) -> (u64, u8) {
    let mut id = [0u8; 8];
    id.copy_from_slice(&payload[..8]);
    (u64::from_le_bytes(id), payload[8])
}
