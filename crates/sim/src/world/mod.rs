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

use crate::disk::{decode, encode, Installed, SimDisk, SimSnapshot};
use crate::history::{Op, OpKind, Outcome};
use crate::rng::Rng;
use crate::{Faults, Options};
use std::cmp::Ordering as CmpOrdering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
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

mod clients;
mod faults;
mod network;
mod nodes;

use clients::*;
use faults::*;
pub use nodes::*;

const MS: Micros = 1_000;

const SECOND: Micros = 1_000_000;

/// The soonest a node's timer fires after it is armed: a core that kept naming a deadline
/// already past would otherwise never let simulated time advance.
const MIN_WAKE: Micros = 1;

const KEYS: u64 = 4;

/// No seed needs this many events (a normal one handles well under a million).
const MAX_EVENTS: u64 = 3_000_000;

const COMPACTION_KEEP: u64 = 20;

const CLIENT_TIMEOUT: Micros = 12 * SECOND;

const SESSION_WAIT: Micros = 5 * SECOND;

/// The simulated regions, in the order of `REGION_LATENCY_MS`.
pub const REGIONS: [&str; 3] = ["us-east", "eu-west", "antarctica"];

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
    Rewrite { requirement: AckRequirement },
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
    /// The disk starts on a leader's queued write: it commits (unsynced) and ships it,
    /// and the sync runs until the write's `PersistDone`.
    LeaderCommit {
        node: usize,
        incarnation: u64,
    },
    /// A node's timer, armed for the replica's `poll_timeout` (or a pending session
    /// read's deadline); `timer` tells the armed one from those it replaced.
    Tick {
        node: usize,
        incarnation: u64,
        timer: u64,
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
    /// Placement: each node's leader priority (all 1 without `--placement`).
    pub priorities: Vec<u8>,
    /// Placement: the permanent non-voters (learners never promoted).
    pub non_voters: BTreeSet<String>,
    /// Placement: when everything healed, no voter of the highest priority led.
    pub leader_below_top_at_heal: bool,
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
                disk: SimDisk::new(),
                disk_generation: 0,
                incarnation: 0,
                timer: 0,
                armed_at: None,
                persists: VecDeque::new(),
                disk_stalled_until: 0,
                next_index: 1,
                paused_until: None,
                skew: if skewed { rng.range(0, 2 * SECOND) } else { 0 },
                sessions: Vec::new(),
                next_tag: 1,
                write_tags: BTreeMap::new(),
                read_tags: BTreeMap::new(),
                leader: "n1".to_string(),
                epoch: 1,
                saved_election: None,
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
            priorities: vec![1; count],
            non_voters: BTreeSet::new(),
            leader_below_top_at_heal: false,
        };
        world.tail_cache_bytes = world.rng.range(0, 400) as usize;
        if options.placement && options.failover {
            world.place_leaders();
        }
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

    /// Arms the node's timer for its next deadline, as the server's replica loop sleeps
    /// until `poll_timeout`: the replica's (on the node's clock), or a pending session
    /// read's. A timer already armed for that time or sooner stands (it re-arms when it fires).
    pub(super) fn arm_timer(&mut self, node: usize) {
        let state = &self.nodes[node];
        let Some(replica) = &state.replica else { return };
        let replica_due = replica.poll_timeout().map(|deadline| deadline.saturating_sub(state.skew));
        let session_due = state.sessions.iter().map(|read| read.deadline).min();
        let Some(due) = replica_due.into_iter().chain(session_due).min() else { return };
        let at = due.max(self.now + MIN_WAKE);
        if state.armed_at.is_some_and(|armed| armed <= at) {
            return;
        }
        let state = &mut self.nodes[node];
        state.timer += 1;
        state.armed_at = Some(at);
        let (incarnation, timer) = (state.incarnation, state.timer);
        self.schedule(at - self.now, Event::Tick { node, incarnation, timer });
    }

    fn node_now(&self, node: usize) -> Micros {
        self.now + self.nodes[node].skew
    }

    /// The region (0 us-east, 1 eu-west, 2 antarctica) a client sits in, for reports.
    pub fn client_region(&self, client: usize) -> usize {
        self.clients[client].region
    }

    /// The region of the node that leads now (see `current_leader`), for reports.
    pub fn leader_region(&self) -> usize {
        self.nodes[self.current_leader()].region
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
        self.leader_below_top_at_heal = self.options.placement && !self.top_priority_leads();
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

    /// Draws the leader priorities and non-voters of a `--placement` run: every voter a
    /// priority from 0 to 3 (n1, the first leader, and n2, to which a replaced leader
    /// hands over, at least 1), and with 4 or more nodes one or two of the last ones
    /// non-voters, always leaving 3 voters or more.
    fn place_leaders(&mut self) {
        let count = self.nodes.len();
        for (index, priority) in self.priorities.iter_mut().enumerate() {
            *priority = self.rng.range(if index < 2 { 1 } else { 0 }, 3) as u8;
        }
        let most = count.saturating_sub(3).min(2) as u64;
        let non_voters = if most == 0 { 0 } else { self.rng.range(1, most) as usize };
        self.non_voters = self.nodes[count - non_voters..].iter().map(|node| node.id.clone()).collect();
        trace!(self, "placement: priorities {:?}, non-voters {:?}", self.priorities, self.non_voters);
    }

    /// Placement: with clients stopped and every fault healed, runs on until the leader
    /// is a voter of the highest priority among the voters, for at most 30 s. How long
    /// that took, or who led at the end.
    pub fn await_preferred_leader(&mut self) -> Result<Micros, String> {
        let (started, deadline) = (self.now, self.now + 30 * SECOND);
        loop {
            if self.top_priority_leads() {
                return Ok(self.now - started);
            }
            let leader = self.current_leader();
            let led = match &self.nodes[leader].replica {
                Some(replica) if replica.is_leader() => format!("{} (priority {})", self.nodes[leader].id, self.priorities[leader]),
                _ => "nobody".to_string(),
            };
            if self.now >= deadline || !self.step() {
                return Err(format!("{led} leads; priorities {:?}, non-voters {:?}", self.priorities, self.non_voters));
            }
        }
    }

    /// A voter of the highest priority among the voters (as the leader applied them) leads.
    fn top_priority_leads(&self) -> bool {
        let leader = self.current_leader();
        let Some(replica) = self.nodes[leader].replica.as_ref().filter(|replica| replica.is_leader()) else { return false };
        let voters = &replica.membership().voters;
        let top = self.nodes.iter().zip(&self.priorities).filter(|(node, _)| voters.contains(&node.id)).map(|(_, priority)| *priority).max();
        top == Some(self.priorities[leader])
    }

    fn settled(&self) -> bool {
        let leader = &self.nodes[self.current_leader()];
        if !leader.replica.as_ref().is_some_and(Replica::is_leader) {
            return false;
        }
        let clients_idle = self.clients.iter().all(|client| client.current.is_none());
        clients_idle && self.nodes.iter().all(|node| node.is_running() && node.persists.is_empty() && node.disk.entries().len() == leader.disk.entries().len())
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
        let target = self.target_node(&event);
        self.handle(event);
        if let Some(node) = target {
            self.arm_timer(node);
        }
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
            Event::Deliver { to: Addr::Node(node), .. } | Event::PersistDone { node, .. } | Event::LeaderCommit { node, .. } | Event::Tick { node, .. } => {
                Some(*node)
            }
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
            Event::LeaderCommit { node, incarnation } => {
                if self.nodes[node].incarnation == incarnation {
                    self.commit_leader_write(node);
                }
            }
            Event::Tick { node, incarnation, timer } => {
                if self.nodes[node].incarnation != incarnation || self.nodes[node].timer != timer {
                    return;
                }
                self.nodes[node].armed_at = None;
                let now = self.node_now(node);
                if let Some(replica) = &mut self.nodes[node].replica {
                    replica.handle(ReplicaEvent::Tick, now);
                }
                self.expire_sessions(node);
                self.drain(node);
            }
            Event::ClientWake { client } => self.client_issue(client),
            Event::ClientTimeout { client, op } => {
                if self.clients[client].current == Some(op) {
                    let outcome = match self.history[op].kind {
                        OpKind::Write { .. } | OpKind::Rewrite { .. } => Outcome::Unknown,
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
}
