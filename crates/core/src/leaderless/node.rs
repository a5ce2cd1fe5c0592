//! A leaderless node: the sans-IO state machine every node of a leaderless cluster runs
//! (Dynamo's design, as Cassandra and Riak run it). Any node takes any request. Writes
//! are coordinated by a replica of their key, which numbers the new version, stores it
//! and sends it to the other replicas (a replica known to be down gets its copy through
//! the next node of the ring, as a hint), answering after `w` copies are durable. Reads
//! ask the key's replicas, answer after `r` of them, and bring the stale ones up to date
//! (read repair). Hints are delivered when their replica answers again. Anti-entropy
//! compares Merkle trees of the keys two nodes share and exchanges only the keys of the
//! leaves that differ.
//!
//! The node keeps no rows: it asks its driver to write, load and merge a key's versions
//! (`NodeOutput::WriteLocal`, `Load`, `Merge`), so the same code runs on SQLite and in
//! the simulator. The driver carries outputs out in order, each storage output durable
//! before any later `Send`: that is what makes an acknowledgement mean a durable copy.
//! Hints are the one thing kept in memory too (a copy of what the driver stores): the
//! driver hands them back at start.

use super::coordination::{merge_answers, plan_write, Destination, WriteOutcome, WriteTally};
use super::dvv::{Context, Versions};
use super::merkle::MerkleTree;
use super::ring::Ring;
use crate::hlc::{HybridClock, Timestamp};
use crate::protocol::Protocol;
use crate::types::{Fnv1a, Micros};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// A row's address: its table and its primary key, encoded.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Key {
    pub table: String,
    pub key: Vec<u8>,
}

impl Key {
    pub fn new(table: impl Into<String>, key: impl Into<Vec<u8>>) -> Key {
        Key { table: table.into(), key: key.into() }
    }

    pub fn token(&self) -> u64 {
        Ring::token_of(&self.table, &self.key)
    }
}

/// One version of a row: its value (`None`: deleted) and the hybrid time it was written
/// at, which decides the visible one among concurrent versions (last writer wins).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamped {
    pub stamp: Timestamp,
    pub value: Option<Vec<u8>>,
}

/// A key's versions: every write no later write has seen past.
pub type KeyVersions = Versions<Stamped>;

/// A write's name: its coordinator's incarnation and its number there.
pub type Dot = (String, u64);

/// The version a read shows: the newest by hybrid time, ties broken by dot. The others
/// (siblings) are concurrent writes that lost.
pub fn visible(versions: &KeyVersions) -> Option<(Dot, Stamped)> {
    versions.siblings().into_iter().max_by(|(dot_a, a), (dot_b, b)| (a.stamp, dot_a).cmp(&(b.stamp, dot_b))).map(|(dot, value)| (dot, value.clone()))
}

/// A digest of a key's versions, for Merkle trees: equal exactly when the versions are.
pub fn digest(versions: &KeyVersions) -> u64 {
    let mut hash = Fnv1a::default();
    for (node, counter) in versions.context() {
        hash.write(node.as_bytes());
        hash.write(&[0]);
        hash.write(&counter.to_le_bytes());
    }
    let mut siblings = versions.siblings();
    siblings.sort_by(|a, b| a.0.cmp(&b.0));
    for ((node, counter), value) in siblings {
        hash.write(node.as_bytes());
        hash.write(&[1]);
        hash.write(&counter.to_le_bytes());
        hash.write(&value.stamp.wall_us.to_le_bytes());
        hash.write(&value.stamp.logical.to_le_bytes());
        match &value.value {
            Some(bytes) => {
                hash.write(&[2]);
                hash.write(&(bytes.len() as u64).to_le_bytes());
                hash.write(bytes);
            }
            None => hash.write(&[3]),
        }
    }
    hash.finish()
}

/// What a coordinator's driver does for `NodeOutput::WriteLocal`, in one step on the
/// stored versions: a new version numbered after what this incarnation has written,
/// replacing the versions `context` saw (the stored ones for a blind write: Riak's
/// choice). Returns the new version's dot.
pub fn write_locally(stored: &mut KeyVersions, dot_name: &str, context: Option<&Context>, value: Stamped) -> Dot {
    let mut context = context.cloned().unwrap_or_else(|| stored.context());
    // No one can have seen more of this coordinator's writes than it made: a client's
    // context claiming so would make it number a write again.
    let made = stored.seen_of(dot_name);
    if let Some(seen) = context.get_mut(dot_name) {
        *seen = (*seen).min(made);
    }
    let counter = stored.write(dot_name, &context, value);
    (dot_name.to_string(), counter)
}

/// How many replicas a request waits for: `w=` and `r=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Count {
    One,
    Quorum,
    All,
    Exactly(usize),
}

impl Count {
    /// The number of copies out of `replicas`, at least 1 and at most `replicas`.
    pub fn of(self, replicas: usize) -> usize {
        let wanted = match self {
            Count::One => 1,
            Count::Quorum => replicas / 2 + 1,
            Count::All => replicas,
            Count::Exactly(count) => count,
        };
        wanted.clamp(1, replicas.max(1))
    }

    pub fn name(self) -> String {
        match self {
            Count::One => "one".to_string(),
            Count::Quorum => "quorum".to_string(),
            Count::All => "all".to_string(),
            Count::Exactly(count) => count.to_string(),
        }
    }
}

impl std::str::FromStr for Count {
    type Err = String;
    fn from_str(text: &str) -> Result<Count, String> {
        match text {
            "one" => Ok(Count::One),
            "quorum" => Ok(Count::Quorum),
            "all" => Ok(Count::All),
            number => match number.parse::<usize>() {
                Ok(count) if count >= 1 => Ok(Count::Exactly(count)),
                _ => Err(format!("{number:?} is not a replica count: expected one, quorum, all or a number from 1")),
            },
        }
    }
}

/// A request's `w=`, `r=` and whether only the key's own replicas count toward `w`
/// (`strict`: a hinted copy on a fallback node does not).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Levels {
    pub w: Count,
    pub r: Count,
    pub strict: bool,
}

impl Default for Levels {
    fn default() -> Levels {
        Levels { w: Count::Quorum, r: Count::Quorum, strict: false }
    }
}

/// Where keys live: the ring and how many replicas each key has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub ring: Ring,
    pub replicas: usize,
}

impl Placement {
    pub fn new(ring: Ring, replicas: usize) -> Placement {
        let replicas = replicas.clamp(1, ring.nodes().len().max(1));
        Placement { ring, replicas }
    }

    /// Every node in the order `key` uses them: its replicas, then the fallbacks.
    pub fn preference(&self, key: &Key) -> Vec<String> {
        self.ring.preference(key.token(), self.replicas).into_iter().map(str::to_string).collect()
    }

    pub fn replicas(&self, key: &Key) -> Vec<String> {
        self.replicas_at(key.token())
    }

    pub fn replicas_at(&self, token: u64) -> Vec<String> {
        self.ring.replicas(token, self.replicas).into_iter().map(str::to_string).collect()
    }

    pub fn is_replica(&self, token: u64, node: &str) -> bool {
        self.ring.replicas(token, self.replicas).contains(&node)
    }

    /// Whether `a` and `b` are both replicas of the key at `token`: the keys two nodes
    /// compare in anti-entropy.
    pub fn shares(&self, token: u64, a: &str, b: &str) -> bool {
        let replicas = self.ring.replicas(token, self.replicas);
        replicas.contains(&a) && replicas.contains(&b)
    }

    pub fn nodes(&self) -> Vec<String> {
        self.ring.nodes().iter().map(|node| node.id.clone()).collect()
    }

    /// Whether the nodes in `answered` include at least `r` replicas of every arc of the
    /// ring: a scan that heard from them has read every key `r` times.
    pub fn covers(&self, answered: &BTreeSet<String>, r: usize) -> bool {
        let mut arcs: Vec<u64> = self.ring.tokens().collect();
        arcs.dedup();
        arcs.iter().all(|token| self.ring.replicas(*token, self.replicas).iter().filter(|node| answered.contains(**node)).count() >= r)
    }
}

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub name: String,
    /// This node's incarnation, naming the versions it writes. A node whose storage was
    /// wiped must come back with a new one, or it would number writes again from 1.
    pub dot_name: String,
    pub placement: Placement,
    pub request_timeout_us: Micros,
    pub ping_interval_us: Micros,
    /// A peer not heard from for this long is taken as down: writes go around it.
    pub down_after_us: Micros,
    pub hint_interval_us: Micros,
    /// 0: anti-entropy only on demand (`NodeEvent::Repair`).
    pub anti_entropy_interval_us: Micros,
    pub merkle_depth: u32,
    pub max_clock_drift_us: Micros,
    /// The first number this node gives a request or message exchange: different on
    /// every start (the driver passes the wall clock), so a peer's late answer to a
    /// previous run never lands on a new request.
    pub first_op: u64,
    /// Off only to show the checkers notice (the simulator's mutations).
    pub read_repair: bool,
    pub deliver_hints: bool,
}

impl NodeConfig {
    pub fn new(name: impl Into<String>, dot_name: impl Into<String>, placement: Placement) -> NodeConfig {
        NodeConfig {
            name: name.into(),
            dot_name: dot_name.into(),
            placement,
            request_timeout_us: 5_000_000,
            ping_interval_us: 200_000,
            down_after_us: 1_000_000,
            hint_interval_us: 500_000,
            anti_entropy_interval_us: 10_000_000,
            merkle_depth: 10,
            max_clock_drift_us: 500_000,
            first_op: 1,
            read_repair: true,
            deliver_hints: true,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Read,
    /// `value: None` deletes. `context`: the versions the client saw (a read's context);
    /// `None` replaces whatever the coordinator holds.
    Write {
        value: Option<Vec<u8>>,
        context: Option<Context>,
    },
    /// Every key of these tables, read from at least `r` replicas of every range.
    Scan {
        tables: Vec<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// The merged versions of the replicas that answered (at least `r`).
    Read {
        versions: KeyVersions,
        answered: usize,
    },
    /// `acks` durable copies counted toward `w`, of which `hinted` are hints.
    Written {
        dot: Dot,
        versions: KeyVersions,
        acks: usize,
        hinted: usize,
    },
    /// Every key of the scanned tables, merged from the nodes that answered.
    Scanned {
        entries: Vec<(Key, KeyVersions)>,
        answered: usize,
    },
    Refused(Refusal),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// Fewer nodes are up than the request needs; nothing was written.
    Unavailable { wanted: usize, up: usize, level: String },
    /// The request ran out of time with `got` of `wanted` answers: a write may be on
    /// some replicas (outcome unknown).
    TimedOut { wanted: usize, got: usize },
    /// A write was refused by enough replicas that `w` cannot be reached.
    Short { wanted: usize, got: usize },
    /// A forwarded write reached a node that is not a replica: the two disagree on the
    /// ring (a membership change in progress).
    NotAReplica { node: String },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Unavailable { wanted, up, level } => {
                write!(f, "{level} needs {wanted} replica(s) of this key and only {up} are up: nothing was written; retry, or ask for fewer")
            }
            Refusal::TimedOut { wanted, got } => {
                write!(f, "timed out with {got} of the {wanted} answers wanted; a write may still be on some replicas (outcome unknown)")
            }
            Refusal::Short { wanted, got } => write!(f, "only {got} of the {wanted} copies wanted could be made; a write may be on some replicas"),
            Refusal::NotAReplica { node } => write!(f, "{node} is not a replica of this key: the nodes disagree on the ring; retry"),
        }
    }
}

/// What one on-demand anti-entropy pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairReport {
    pub peers_compared: usize,
    pub peers_in_sync: usize,
    pub ranges_differing: usize,
    pub keys_received: usize,
    pub keys_sent: usize,
    pub peers_unreachable: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeMessage {
    /// A write for a key this node is a replica of, from a node that is not one.
    Coordinate {
        req: u64,
        key: Key,
        request: Request,
        levels: Levels,
    },
    Coordinated {
        req: u64,
        answer: Answer,
    },
    Replicate {
        op: u64,
        key: Key,
        versions: KeyVersions,
        hint_for: Option<String>,
    },
    Replicated {
        op: u64,
        stored: bool,
    },
    Read {
        op: u64,
        key: Key,
    },
    /// `None`: not a replica of the key.
    ReadAnswer {
        op: u64,
        versions: Option<KeyVersions>,
    },
    Repair {
        key: Key,
        versions: KeyVersions,
    },
    Scan {
        op: u64,
        tables: Vec<String>,
    },
    ScanAnswer {
        op: u64,
        entries: Vec<(Key, KeyVersions)>,
    },
    Hint {
        key: Key,
        versions: KeyVersions,
    },
    HintTaken {
        key: Key,
        versions: KeyVersions,
    },
    Ping,
    Pong,
    TreeOffer {
        round: u64,
        tree: MerkleTree,
    },
    InSync {
        round: u64,
    },
    Differ {
        round: u64,
        ranges: Vec<(u64, u64)>,
        entries: Vec<(Key, KeyVersions)>,
    },
    Entries {
        round: u64,
        entries: Vec<(Key, KeyVersions)>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeEvent {
    Request {
        id: u64,
        key: Key,
        request: Request,
        levels: Levels,
    },
    Message {
        from: String,
        message: NodeMessage,
    },
    LocalWritten {
        op: u64,
        dot: Dot,
        versions: KeyVersions,
    },
    Loaded {
        op: u64,
        versions: KeyVersions,
    },
    TreeBuilt {
        op: u64,
        tree: MerkleTree,
    },
    RangesLoaded {
        op: u64,
        entries: Vec<(Key, KeyVersions)>,
    },
    TablesLoaded {
        op: u64,
        entries: Vec<(Key, KeyVersions)>,
    },
    /// Anti-entropy with every peer now (`tern repair`).
    Repair {
        id: u64,
    },
    /// The cluster's members changed: keys move to their new replicas by anti-entropy,
    /// started at once with every peer; hints for nodes gone are dropped (their writes
    /// have other copies, which anti-entropy spreads).
    Placement(Placement),
    Tick,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeOutput {
    Send {
        to: String,
        message: NodeMessage,
    },
    Answer {
        id: u64,
        answer: Answer,
    },
    Repaired {
        id: u64,
        report: RepairReport,
    },
    /// Answer with `LocalWritten`: `write_locally` on the stored versions, durably.
    WriteLocal {
        op: u64,
        key: Key,
        value: Stamped,
        context: Option<Context>,
    },
    /// Answer with `Loaded`.
    Load {
        op: u64,
        key: Key,
    },
    /// Merge `versions` into the key's stored ones, durably.
    Merge {
        key: Key,
        versions: KeyVersions,
    },
    /// Keep, durably, this hint for `target` (replacing the one for the same key).
    StoreHint {
        target: String,
        key: Key,
        versions: KeyVersions,
    },
    DropHint {
        target: String,
        key: Key,
    },
    /// Answer with `TreeBuilt`: the tree of the stored keys this node and `peer` are
    /// both replicas of (`Placement::shares`), each as `(token, digest)`.
    BuildTree {
        op: u64,
        peer: String,
        depth: u32,
    },
    /// Answer with `RangesLoaded`: the stored keys shared with `peer` whose tokens fall
    /// in `ranges` (inclusive).
    LoadRanges {
        op: u64,
        peer: String,
        ranges: Vec<(u64, u64)>,
    },
    /// Answer with `TablesLoaded`: every stored key of `tables`.
    LoadTables {
        op: u64,
        tables: Vec<String>,
    },
}

/// Keys per anti-entropy message: far below the peer frame limit for rows of a few KB.
const ENTRIES_PER_MESSAGE: usize = 2_000;

/// A peer's ranges, sorted, overlapping ones joined, at most `most` of them.
fn merge_ranges(mut ranges: Vec<(u64, u64)>, most: usize) -> Vec<(u64, u64)> {
    ranges.retain(|(start, end)| start <= end);
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1.saturating_add(1) => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged.truncate(most);
    merged
}

impl NodeMessage {
    /// Whether every key's versions in the message are well formed.
    fn is_well_formed(&self) -> bool {
        match self {
            NodeMessage::Replicate { versions, .. }
            | NodeMessage::Repair { versions, .. }
            | NodeMessage::Hint { versions, .. }
            | NodeMessage::HintTaken { versions, .. } => versions.is_well_formed(),
            NodeMessage::ReadAnswer { versions, .. } => versions.as_ref().is_none_or(KeyVersions::is_well_formed),
            NodeMessage::ScanAnswer { entries, .. } | NodeMessage::Differ { entries, .. } | NodeMessage::Entries { entries, .. } => {
                entries.iter().all(|(_, versions)| versions.is_well_formed())
            }
            NodeMessage::Coordinated { answer: Answer::Read { versions, .. } | Answer::Written { versions, .. }, .. } => versions.is_well_formed(),
            _ => true,
        }
    }
}

/// Who waits for a request's answer.
#[derive(Clone, Debug)]
enum Client {
    Local(u64),
    Remote { node: String, req: u64 },
}

#[derive(Debug)]
enum Pending {
    LocalWrite {
        client: Client,
        key: Key,
        levels: Levels,
        deadline: Micros,
    },
    Write {
        client: Option<Client>,
        copies: Vec<Destination>,
        answered: BTreeSet<String>,
        tally: WriteTally,
        dot: Dot,
        versions: KeyVersions,
        deadline: Micros,
    },
    Read {
        client: Option<Client>,
        key: Key,
        wanted: usize,
        replicas: Vec<String>,
        answers: Vec<(String, KeyVersions)>,
        deadline: Micros,
    },
    Forwarded {
        client: Client,
        deadline: Micros,
    },
    Scan {
        client: Client,
        wanted: usize,
        answers: BTreeMap<String, Vec<(Key, KeyVersions)>>,
        deadline: Micros,
    },
    /// Our tree for a round we start with `peer`.
    OwnTree {
        peer: String,
    },
    /// Our tree, to compare with `peer`'s offer.
    AnswerTree {
        peer: String,
        round: u64,
        theirs: MerkleTree,
    },
    /// Our keys of the differing ranges, for `peer`.
    DifferingKeys {
        peer: String,
        round: u64,
        ranges: Vec<(u64, u64)>,
        /// Sending back what we hold after merging theirs: the round's last message.
        closing: bool,
    },
}

impl Pending {
    fn deadline(&self) -> Option<Micros> {
        match self {
            Pending::LocalWrite { deadline, .. }
            | Pending::Write { deadline, .. }
            | Pending::Read { deadline, .. }
            | Pending::Forwarded { deadline, .. }
            | Pending::Scan { deadline, .. } => Some(*deadline),
            _ => None,
        }
    }
}

/// An anti-entropy round this node started.
#[derive(Debug)]
struct Round {
    peer: String,
    deadline: Micros,
    repair: Option<u64>,
}

pub struct LeaderlessNode {
    config: NodeConfig,
    clock: HybridClock,
    now: Micros,
    next_op: u64,
    pending: BTreeMap<u64, Pending>,
    rounds: BTreeMap<u64, Round>,
    repairs: BTreeMap<u64, (BTreeSet<u64>, RepairReport)>,
    /// Hints this node keeps for others, as stored: `(target, key)` → versions.
    hints: BTreeMap<(String, Key), KeyVersions>,
    /// Loads for peers' reads: our load → (peer, its read).
    remote_loads: BTreeMap<u64, (String, u64)>,
    last_heard: BTreeMap<String, Micros>,
    next_ping: Micros,
    next_hints: Micros,
    next_anti_entropy: Micros,
    /// The peer the next periodic anti-entropy round goes to, by index.
    anti_entropy_turn: usize,
    outputs: VecDeque<NodeOutput>,
}

impl LeaderlessNode {
    /// A node starting at `now` with the hints its storage kept.
    pub fn new(config: NodeConfig, hints: Vec<(String, Key, KeyVersions)>, now: Micros) -> LeaderlessNode {
        let last_heard = config.placement.nodes().into_iter().filter(|node| *node != config.name).map(|node| (node, now)).collect();
        let first_anti_entropy = if config.anti_entropy_interval_us == 0 { Micros::MAX } else { now + config.anti_entropy_interval_us };
        LeaderlessNode {
            clock: HybridClock::new(config.max_clock_drift_us),
            now,
            next_op: config.first_op.max(1),
            pending: BTreeMap::new(),
            rounds: BTreeMap::new(),
            repairs: BTreeMap::new(),
            hints: hints.into_iter().map(|(target, key, versions)| ((target, key), versions)).collect(),
            remote_loads: BTreeMap::new(),
            last_heard,
            next_ping: now,
            next_hints: now + config.hint_interval_us,
            next_anti_entropy: first_anti_entropy,
            anti_entropy_turn: 0,
            outputs: VecDeque::new(),
            config,
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn placement(&self) -> &Placement {
        &self.config.placement
    }

    /// Peers taken as down now (not heard from within `down_after`).
    pub fn down_peers(&self) -> Vec<String> {
        self.last_heard.keys().filter(|peer| self.is_down(peer)).cloned().collect()
    }

    /// Hints kept for others: `(target, count)`.
    pub fn hint_counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for (target, _) in self.hints.keys() {
            *counts.entry(target.clone()).or_insert(0) += 1;
        }
        counts
    }

    pub fn requests_in_flight(&self) -> usize {
        self.pending.len()
    }

    fn is_down(&self, node: &str) -> bool {
        node != self.config.name && self.last_heard.get(node).is_none_or(|heard| self.now.saturating_sub(*heard) > self.config.down_after_us)
    }

    fn op(&mut self) -> u64 {
        let op = self.next_op;
        self.next_op += 1;
        op
    }

    fn send(&mut self, to: &str, message: NodeMessage) {
        self.outputs.push_back(NodeOutput::Send { to: to.to_string(), message });
    }

    fn answer(&mut self, client: Client, answer: Answer) {
        match client {
            Client::Local(id) => self.outputs.push_back(NodeOutput::Answer { id, answer }),
            Client::Remote { node, req } => self.send(&node, NodeMessage::Coordinated { req, answer }),
        }
    }

    fn request(&mut self, client: Client, key: Key, request: Request, levels: Levels) {
        let deadline = self.now + self.config.request_timeout_us;
        let replicas = self.config.placement.replicas(&key);
        match request {
            Request::Read => self.start_read(client, key, levels, replicas, deadline),
            Request::Scan { tables } => self.start_scan(client, tables, levels, deadline),
            Request::Write { value, context } => {
                let n = replicas.len();
                let wanted = levels.w.of(n);
                let up = if levels.strict {
                    replicas.iter().filter(|node| !self.is_down(node)).count()
                } else {
                    // Any node up can hold a copy: a replica's own, or a hint.
                    self.config.placement.nodes().iter().filter(|node| !self.is_down(node)).count().min(n)
                };
                if up < wanted {
                    let level = format!("w={}{}", levels.w.name(), if levels.strict { " (strict)" } else { "" });
                    return self.answer(client, Answer::Refused(Refusal::Unavailable { wanted, up, level }));
                }
                if replicas.contains(&self.config.name) {
                    let op = self.op();
                    let stamp = self.clock.now(self.now);
                    self.outputs.push_back(NodeOutput::WriteLocal { op, key: key.clone(), value: Stamped { stamp, value }, context });
                    self.pending.insert(op, Pending::LocalWrite { client, key, levels, deadline });
                    return;
                }
                if matches!(client, Client::Remote { .. }) {
                    // Forwarded here by a node that takes this one for a replica.
                    let refusal = Refusal::NotAReplica { node: self.config.name.clone() };
                    return self.answer(client, Answer::Refused(refusal));
                }
                // The first replica up coordinates; this node relays its answer.
                let Some(coordinator) = replicas.iter().find(|node| !self.is_down(node)).cloned() else {
                    let level = format!("w={}", levels.w.name());
                    return self.answer(client, Answer::Refused(Refusal::Unavailable { wanted, up: 0, level }));
                };
                let req = self.op();
                self.send(&coordinator, NodeMessage::Coordinate { req, key, request: Request::Write { value, context }, levels });
                self.pending.insert(req, Pending::Forwarded { client, deadline });
            }
        }
    }

    fn start_read(&mut self, client: Client, key: Key, levels: Levels, replicas: Vec<String>, deadline: Micros) {
        let wanted = levels.r.of(replicas.len());
        let up = replicas.iter().filter(|node| !self.is_down(node)).count();
        if up < wanted {
            let level = format!("r={}", levels.r.name());
            return self.answer(client, Answer::Refused(Refusal::Unavailable { wanted, up, level }));
        }
        let op = self.op();
        for replica in &replicas {
            if *replica == self.config.name {
                self.outputs.push_back(NodeOutput::Load { op, key: key.clone() });
            } else {
                self.send(replica, NodeMessage::Read { op, key: key.clone() });
            }
        }
        self.pending.insert(op, Pending::Read { client: Some(client), key, wanted, replicas, answers: Vec::new(), deadline });
    }

    fn start_scan(&mut self, client: Client, tables: Vec<String>, levels: Levels, deadline: Micros) {
        let wanted = levels.r.of(self.config.placement.replicas);
        let up: BTreeSet<String> = self.config.placement.nodes().into_iter().filter(|node| !self.is_down(node)).collect();
        if !self.config.placement.covers(&up, wanted) {
            let level = format!("r={} (every range)", levels.r.name());
            let answer = Answer::Refused(Refusal::Unavailable { wanted, up: up.len(), level });
            return self.answer(client, answer);
        }
        let op = self.op();
        for node in &up {
            if *node == self.config.name {
                self.outputs.push_back(NodeOutput::LoadTables { op, tables: tables.clone() });
            } else {
                self.send(node, NodeMessage::Scan { op, tables: tables.clone() });
            }
        }
        self.pending.insert(op, Pending::Scan { client, wanted, answers: BTreeMap::new(), deadline });
    }

    fn scan_answer(&mut self, from: String, op: u64, entries: Vec<(Key, KeyVersions)>) {
        let Some(Pending::Scan { wanted, answers, .. }) = self.pending.get_mut(&op) else { return };
        // Only keys the answering node is a replica of: a leftover copy does not count.
        let placement = &self.config.placement;
        let entries = entries.into_iter().filter(|(key, _)| placement.is_replica(key.token(), &from)).collect();
        answers.insert(from, entries);
        let answered: BTreeSet<String> = answers.keys().cloned().collect();
        if !placement.covers(&answered, *wanted) {
            return;
        }
        let Some(Pending::Scan { client, answers, .. }) = self.pending.remove(&op) else { return };
        let mut merged: BTreeMap<Key, KeyVersions> = BTreeMap::new();
        let count = answers.len();
        for (key, versions) in answers.into_values().flatten() {
            merged.entry(key).or_default().merge(&versions);
        }
        self.answer(client, Answer::Scanned { entries: merged.into_iter().collect(), answered: count });
    }

    fn local_written(&mut self, op: u64, dot: Dot, versions: KeyVersions) {
        let Some(Pending::LocalWrite { client, key, levels, deadline }) = self.pending.remove(&op) else { return };
        let preference = self.config.placement.preference(&key);
        let preference: Vec<&str> = preference.iter().map(String::as_str).collect();
        let copies = plan_write(&preference, self.config.placement.replicas, &|node| self.is_down(node));
        let wanted = levels.w.of(self.config.placement.replicas);
        let mut tally = WriteTally::new(wanted, levels.strict, &copies);
        let mut answered = BTreeSet::new();
        for copy in &copies {
            if copy.node == self.config.name {
                tally.answered(false, true);
                answered.insert(copy.node.clone());
            } else {
                let message = NodeMessage::Replicate { op, key: key.clone(), versions: versions.clone(), hint_for: copy.hint_for.clone() };
                self.send(&copy.node, message);
            }
        }
        self.pending.insert(op, Pending::Write { client: Some(client), copies, answered, tally, dot, versions, deadline });
        self.settle_write(op);
    }

    /// Answers a write once `w` is reached or out of reach; forgets it once every copy
    /// answered.
    fn settle_write(&mut self, op: u64) {
        let Some(Pending::Write { client, copies, answered, tally, dot, versions, .. }) = self.pending.get_mut(&op) else { return };
        let outcome = tally.outcome();
        let hinted = if tally.strict() { 0 } else { tally.counted() - tally.replicas_stored() };
        let finished = answered.len() == copies.len();
        let reply = match outcome {
            WriteOutcome::Done => {
                client.take().map(|client| (client, Answer::Written { dot: dot.clone(), versions: versions.clone(), acks: tally.counted(), hinted }))
            }
            WriteOutcome::Short => client.take().map(|client| (client, Answer::Refused(Refusal::Short { wanted: tally.wanted(), got: tally.counted() }))),
            WriteOutcome::Waiting => None,
        };
        if finished {
            self.pending.remove(&op);
        }
        if let Some((client, answer)) = reply {
            self.answer(client, answer);
        }
    }

    fn replicated(&mut self, from: &str, op: u64, stored: bool) {
        let Some(Pending::Write { copies, answered, tally, .. }) = self.pending.get_mut(&op) else { return };
        let Some(copy) = copies.iter().find(|copy| copy.node == from) else { return };
        if !answered.insert(from.to_string()) {
            return;
        }
        tally.answered(copy.hint_for.is_some(), stored);
        self.settle_write(op);
    }

    fn read_answer(&mut self, from: &str, op: u64, versions: KeyVersions) {
        let Some(Pending::Read { client, wanted, replicas, answers, .. }) = self.pending.get_mut(&op) else { return };
        if !replicas.iter().any(|replica| replica == from) || answers.iter().any(|(node, _)| node == from) {
            return;
        }
        answers.push((from.to_string(), versions));
        let (ready, finished) = (answers.len() >= *wanted, answers.len() == replicas.len());
        if ready {
            if let Some(client) = client.take() {
                let (merged, _) = merge_answers(answers);
                let answered = answers.len();
                self.answer(client, Answer::Read { versions: merged, answered });
            }
        }
        if finished {
            self.finish_read(op);
        }
    }

    /// Read repair: every replica whose answer lacked something gets the merged versions.
    fn finish_read(&mut self, op: u64) {
        let Some(Pending::Read { key, answers, .. }) = self.pending.remove(&op) else { return };
        if !self.config.read_repair || answers.len() < 2 {
            return;
        }
        let (merged, stale) = merge_answers(&answers);
        for node in stale {
            if node == self.config.name {
                self.outputs.push_back(NodeOutput::Merge { key: key.clone(), versions: merged.clone() });
            } else {
                self.send(&node, NodeMessage::Repair { key: key.clone(), versions: merged.clone() });
            }
        }
    }

    fn expire(&mut self) {
        let now = self.now;
        let expired: Vec<u64> =
            self.pending.iter().filter(|(_, pending)| pending.deadline().is_some_and(|deadline| deadline <= now)).map(|(op, _)| *op).collect();
        for op in expired {
            match self.pending.remove(&op) {
                Some(Pending::Scan { client, wanted, answers, .. }) => {
                    self.answer(client, Answer::Refused(Refusal::TimedOut { wanted, got: answers.len() }));
                }
                Some(Pending::LocalWrite { client, .. }) | Some(Pending::Forwarded { client, .. }) => {
                    self.answer(client, Answer::Refused(Refusal::TimedOut { wanted: 1, got: 0 }));
                }
                Some(Pending::Write { client: Some(client), tally, .. }) => {
                    self.answer(client, Answer::Refused(Refusal::TimedOut { wanted: tally.wanted(), got: tally.counted() }));
                }
                // Answered already: the copies that did not answer are forgotten.
                Some(Pending::Write { client: None, .. }) => {}
                Some(Pending::Read { client, key, wanted, replicas, answers, deadline }) => {
                    if let Some(client) = client {
                        self.answer(client, Answer::Refused(Refusal::TimedOut { wanted, got: answers.len() }));
                    }
                    self.pending.insert(op, Pending::Read { client: None, key, wanted, replicas, answers, deadline });
                    self.finish_read(op);
                }
                Some(other) => {
                    self.pending.insert(op, other);
                }
                None => {}
            }
        }
        let late: Vec<u64> = self.rounds.iter().filter(|(_, round)| round.deadline <= now).map(|(round, _)| *round).collect();
        for round in late {
            if let Some(Round { peer, repair: Some(id), .. }) = self.rounds.remove(&round) {
                if let Some((_, report)) = self.repairs.get_mut(&id) {
                    report.peers_unreachable.push(peer);
                }
                self.round_over(id, round);
            }
        }
    }

    // --- anti-entropy ---

    fn start_round(&mut self, peer: String, repair: Option<u64>) -> u64 {
        let round = self.op();
        let deadline = self.now + self.config.request_timeout_us.max(10 * self.config.ping_interval_us);
        self.rounds.insert(round, Round { peer: peer.clone(), deadline, repair });
        self.outputs.push_back(NodeOutput::BuildTree { op: round, peer: peer.clone(), depth: self.config.merkle_depth });
        self.pending.insert(round, Pending::OwnTree { peer });
        round
    }

    fn round_over(&mut self, repair: u64, round: u64) {
        let Some((waiting, _)) = self.repairs.get_mut(&repair) else { return };
        waiting.remove(&round);
        if waiting.is_empty() {
            if let Some((_, report)) = self.repairs.remove(&repair) {
                self.outputs.push_back(NodeOutput::Repaired { id: repair, report });
            }
        }
    }

    fn end_round(&mut self, round: u64, update: impl FnOnce(&mut RepairReport)) {
        if let Some(Round { repair: Some(id), .. }) = self.rounds.remove(&round) {
            if let Some((_, report)) = self.repairs.get_mut(&id) {
                update(report);
            }
            self.round_over(id, round);
        }
    }

    fn tree_built(&mut self, op: u64, tree: MerkleTree) {
        match self.pending.remove(&op) {
            Some(Pending::OwnTree { peer }) if self.rounds.contains_key(&op) => self.send(&peer, NodeMessage::TreeOffer { round: op, tree }),
            Some(Pending::OwnTree { .. }) => {}
            Some(Pending::AnswerTree { peer, round, theirs }) => {
                if tree.same_as(&theirs) {
                    return self.send(&peer, NodeMessage::InSync { round });
                }
                let ranges = tree.differing_ranges(&theirs);
                let load = self.op();
                self.outputs.push_back(NodeOutput::LoadRanges { op: load, peer: peer.clone(), ranges: ranges.clone() });
                self.pending.insert(load, Pending::DifferingKeys { peer, round, ranges, closing: false });
            }
            Some(other) => {
                self.pending.insert(op, other);
            }
            None => {}
        }
    }

    fn ranges_loaded(&mut self, op: u64, mut entries: Vec<(Key, KeyVersions)>) {
        let Some(Pending::DifferingKeys { peer, round, ranges, closing }) = self.pending.remove(&op) else { return };
        let sent = entries.len();
        // Many keys go in several messages (a wiped node's whole share), the earlier ones
        // only merged; the link keeps them in order.
        let last = entries.split_off(entries.len().saturating_sub(1) / ENTRIES_PER_MESSAGE * ENTRIES_PER_MESSAGE);
        for chunk in entries.chunks(ENTRIES_PER_MESSAGE) {
            self.send(&peer, NodeMessage::Entries { round, entries: chunk.to_vec() });
        }
        if closing {
            self.send(&peer, NodeMessage::Entries { round, entries: last });
            self.end_round(round, |report| report.keys_sent += sent);
        } else {
            self.send(&peer, NodeMessage::Differ { round, ranges, entries: last });
        }
    }

    /// Merges keys a peer sent, keeping only those both nodes are replicas of.
    fn merge_shared(&mut self, from: &str, entries: Vec<(Key, KeyVersions)>) -> usize {
        let mut merged = 0;
        for (key, versions) in entries {
            if self.config.placement.shares(key.token(), &self.config.name, from) {
                self.outputs.push_back(NodeOutput::Merge { key, versions });
                merged += 1;
            }
        }
        merged
    }

    fn on_message(&mut self, from: String, message: NodeMessage) {
        if from == self.config.name || !self.last_heard.contains_key(&from) {
            return; // not a member: nothing it says is taken
        }
        self.last_heard.insert(from.clone(), self.now);
        if !message.is_well_formed() {
            return; // versions no node makes: a bug or garbage, never merged
        }
        match message {
            NodeMessage::Ping => self.send(&from, NodeMessage::Pong),
            NodeMessage::Pong => {}
            NodeMessage::Coordinate { req, key, request, levels } => self.request(Client::Remote { node: from, req }, key, request, levels),
            NodeMessage::Coordinated { req, answer } => {
                if matches!(self.pending.get(&req), Some(Pending::Forwarded { .. })) {
                    if let Some(Pending::Forwarded { client, .. }) = self.pending.remove(&req) {
                        self.answer(client, answer);
                    }
                }
            }
            NodeMessage::Replicate { op, key, versions, hint_for } => {
                let stored = match hint_for {
                    None => {
                        let replica = self.config.placement.is_replica(key.token(), &self.config.name);
                        if replica {
                            self.outputs.push_back(NodeOutput::Merge { key, versions });
                        }
                        replica
                    }
                    Some(target) if target != self.config.name && self.last_heard.contains_key(&target) => {
                        let slot = self.hints.entry((target.clone(), key.clone())).or_default();
                        slot.merge(&versions);
                        let versions = slot.clone();
                        self.outputs.push_back(NodeOutput::StoreHint { target, key, versions });
                        true
                    }
                    Some(_) => false,
                };
                self.send(&from, NodeMessage::Replicated { op, stored });
            }
            NodeMessage::Replicated { op, stored } => self.replicated(&from, op, stored),
            NodeMessage::Read { op, key } => {
                if self.config.placement.is_replica(key.token(), &self.config.name) {
                    // Answered when loaded: remember whom for.
                    let load = self.op();
                    self.outputs.push_back(NodeOutput::Load { op: load, key });
                    self.remote_loads.insert(load, (from, op));
                } else {
                    self.send(&from, NodeMessage::ReadAnswer { op, versions: None });
                }
            }
            NodeMessage::ReadAnswer { op, versions } => match versions {
                Some(versions) => self.read_answer(&from, op, versions),
                None => {
                    let Some(Pending::Read { client, wanted, replicas, answers, .. }) = self.pending.get_mut(&op) else { return };
                    // Not a replica after all: wait for the others only, or say now that
                    // `r` cannot be reached.
                    replicas.retain(|node| *node != from);
                    let (short, finished) = (replicas.len() < *wanted, answers.len() >= replicas.len());
                    let refusal = Refusal::Short { wanted: *wanted, got: answers.len() };
                    if let Some(client) = client.take_if(|_| short) {
                        self.answer(client, Answer::Refused(refusal));
                    }
                    if finished {
                        self.finish_read(op);
                    }
                }
            },
            NodeMessage::Scan { op, tables } => {
                let load = self.op();
                self.outputs.push_back(NodeOutput::LoadTables { op: load, tables });
                self.remote_loads.insert(load, (from, op));
            }
            NodeMessage::ScanAnswer { op, entries } => self.scan_answer(from, op, entries),
            NodeMessage::Repair { key, versions } => {
                if self.config.placement.is_replica(key.token(), &self.config.name) {
                    self.outputs.push_back(NodeOutput::Merge { key, versions });
                }
            }
            NodeMessage::Hint { key, versions } => {
                // A node no longer a replica of the key (the ring changed) takes the hint
                // all the same and passes it to the key's replicas now.
                if self.config.placement.is_replica(key.token(), &self.config.name) {
                    self.outputs.push_back(NodeOutput::Merge { key: key.clone(), versions: versions.clone() });
                } else {
                    for replica in self.config.placement.replicas(&key) {
                        self.send(&replica, NodeMessage::Repair { key: key.clone(), versions: versions.clone() });
                    }
                }
                self.send(&from, NodeMessage::HintTaken { key, versions });
            }
            NodeMessage::HintTaken { key, versions } => {
                let slot = (from, key);
                if self.hints.get(&slot) == Some(&versions) {
                    self.hints.remove(&slot);
                    let (target, key) = slot;
                    self.outputs.push_back(NodeOutput::DropHint { target, key });
                }
            }
            NodeMessage::TreeOffer { round, tree } => {
                if tree.is_well_formed() {
                    let op = self.op();
                    self.outputs.push_back(NodeOutput::BuildTree { op, peer: from.clone(), depth: tree.depth() });
                    self.pending.insert(op, Pending::AnswerTree { peer: from, round, theirs: tree });
                }
            }
            NodeMessage::InSync { round } => {
                if self.rounds.get(&round).is_some_and(|open| open.peer == from) {
                    self.end_round(round, |report| report.peers_in_sync += 1);
                }
            }
            NodeMessage::Differ { round, ranges, entries } => {
                if self.rounds.get(&round).is_none_or(|open| open.peer != from) {
                    return;
                }
                let ranges = merge_ranges(ranges, 1usize << self.config.merkle_depth.min(20));
                let received = self.merge_shared(&from, entries);
                if let Some(Round { repair: Some(id), .. }) = self.rounds.get(&round) {
                    if let Some((_, report)) = self.repairs.get_mut(id) {
                        report.ranges_differing += ranges.len();
                        report.keys_received += received;
                    }
                }
                let load = self.op();
                self.outputs.push_back(NodeOutput::LoadRanges { op: load, peer: from.clone(), ranges: ranges.clone() });
                self.pending.insert(load, Pending::DifferingKeys { peer: from, round, ranges, closing: true });
            }
            NodeMessage::Entries { entries, .. } => {
                self.merge_shared(&from, entries);
            }
        }
    }

    fn loaded(&mut self, op: u64, versions: KeyVersions) {
        if let Some((from, remote_op)) = self.remote_loads.remove(&op) {
            return self.send(&from, NodeMessage::ReadAnswer { op: remote_op, versions: Some(versions) });
        }
        let name = self.config.name.clone();
        self.read_answer(&name, op, versions);
    }

    fn tick(&mut self) {
        self.expire();
        if self.now >= self.next_ping {
            self.next_ping = self.now + self.config.ping_interval_us;
            let peers: Vec<String> = self.last_heard.keys().cloned().collect();
            for peer in peers {
                self.send(&peer, NodeMessage::Ping);
            }
        }
        if self.now >= self.next_hints {
            self.next_hints = self.now + self.config.hint_interval_us;
            if self.config.deliver_hints {
                self.deliver_hints();
            }
        }
        if self.now >= self.next_anti_entropy {
            self.next_anti_entropy = self.now + self.config.anti_entropy_interval_us;
            let peers: Vec<String> = self.last_heard.keys().filter(|peer| !self.is_down(peer)).cloned().collect();
            if !peers.is_empty() {
                let peer = peers[self.anti_entropy_turn % peers.len()].clone();
                self.anti_entropy_turn += 1;
                self.start_round(peer, None);
            }
        }
    }

    /// Sends each reachable target up to a batch of the hints kept for it.
    fn deliver_hints(&mut self) {
        const BATCH: usize = 256;
        let mut sent: BTreeMap<String, usize> = BTreeMap::new();
        let due: Vec<(String, Key, KeyVersions)> = self
            .hints
            .iter()
            .filter(|((target, _), _)| !self.is_down(target))
            .filter(|((target, _), _)| {
                let count = sent.entry(target.clone()).or_insert(0);
                *count += 1;
                *count <= BATCH
            })
            .map(|((target, key), versions)| (target.clone(), key.clone(), versions.clone()))
            .collect();
        for (target, key, versions) in due {
            self.send(&target, NodeMessage::Hint { key, versions });
        }
    }

    fn change_placement(&mut self, placement: Placement) {
        let nodes = placement.nodes();
        self.config.placement = placement;
        self.last_heard.retain(|peer, _| nodes.contains(peer));
        for node in nodes {
            if node != self.config.name {
                self.last_heard.entry(node).or_insert(self.now);
            }
        }
        let gone: Vec<(String, Key)> = self.hints.keys().filter(|(target, _)| !self.last_heard.contains_key(target)).cloned().collect();
        for slot in gone {
            self.hints.remove(&slot);
            let (target, key) = slot;
            self.outputs.push_back(NodeOutput::DropHint { target, key });
        }
        let peers: Vec<String> = self.last_heard.keys().cloned().collect();
        for peer in peers {
            self.start_round(peer, None);
        }
    }

    fn repair(&mut self, id: u64) {
        let peers: Vec<String> = self.last_heard.keys().cloned().collect();
        let mut report = RepairReport::default();
        let mut waiting = BTreeSet::new();
        for peer in peers {
            if self.is_down(&peer) {
                report.peers_unreachable.push(peer);
            } else {
                report.peers_compared += 1;
                waiting.insert(self.start_round(peer, Some(id)));
            }
        }
        if waiting.is_empty() {
            self.outputs.push_back(NodeOutput::Repaired { id, report });
        } else {
            self.repairs.insert(id, (waiting, report));
        }
    }
}

impl Protocol for LeaderlessNode {
    type Event = NodeEvent;
    type Output = NodeOutput;

    fn handle(&mut self, event: NodeEvent, now: Micros) {
        self.now = self.now.max(now);
        match event {
            NodeEvent::Request { id, key, request, levels } => self.request(Client::Local(id), key, request, levels),
            NodeEvent::Message { from, message } => self.on_message(from, message),
            NodeEvent::LocalWritten { op, dot, versions } => self.local_written(op, dot, versions),
            NodeEvent::Loaded { op, versions } => self.loaded(op, versions),
            NodeEvent::TreeBuilt { op, tree } => self.tree_built(op, tree),
            NodeEvent::RangesLoaded { op, entries } => self.ranges_loaded(op, entries),
            NodeEvent::TablesLoaded { op, entries } => {
                if let Some((from, remote_op)) = self.remote_loads.remove(&op) {
                    self.send(&from, NodeMessage::ScanAnswer { op: remote_op, entries });
                } else {
                    let name = self.config.name.clone();
                    self.scan_answer(name, op, entries);
                }
            }
            NodeEvent::Repair { id } => self.repair(id),
            NodeEvent::Placement(placement) => self.change_placement(placement),
            NodeEvent::Tick => self.tick(),
        }
    }

    fn poll_output(&mut self) -> Option<NodeOutput> {
        self.outputs.pop_front()
    }

    fn poll_timeout(&self) -> Option<Micros> {
        let deadlines = self.pending.values().filter_map(Pending::deadline).chain(self.rounds.values().map(|round| round.deadline));
        deadlines.chain([self.next_ping, self.next_hints, self.next_anti_entropy]).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leaderless::RingNode;

    fn placement(nodes: usize, replicas: usize) -> Placement {
        let nodes = (1..=nodes).map(|number| RingNode { id: format!("n{number}"), region: format!("r{number}") }).collect();
        Placement::new(Ring::new(nodes, 16), replicas)
    }

    fn drain(node: &mut LeaderlessNode) -> Vec<NodeOutput> {
        std::iter::from_fn(|| node.poll_output()).collect()
    }

    fn stamped(wall_us: u64, value: &str) -> Stamped {
        Stamped { stamp: Timestamp::new(wall_us, 0), value: Some(value.as_bytes().to_vec()) }
    }

    #[test]
    fn a_write_goes_around_a_down_replica_as_a_hint_and_is_answered_at_w() {
        let placement = placement(4, 3);
        let key = Key::new("t", b"k".to_vec());
        let preference = placement.preference(&key);
        let (me, down, up, fallback) = (&preference[0], &preference[1], &preference[2], &preference[3]);
        let mut node = LeaderlessNode::new(NodeConfig::new(me.clone(), format!("{me}.1"), placement), Vec::new(), 0);
        // Everyone answers pings but `down`, which is silent past `down_after`.
        for peer in [up, fallback] {
            node.handle(NodeEvent::Message { from: peer.clone(), message: NodeMessage::Pong }, 1_500_000);
        }
        drain(&mut node);
        let levels = Levels { w: Count::Quorum, r: Count::Quorum, strict: false };
        node.handle(NodeEvent::Request { id: 7, key: key.clone(), request: Request::Write { value: Some(b"v".to_vec()), context: None }, levels }, 1_500_000);
        let outputs = drain(&mut node);
        let [NodeOutput::WriteLocal { op, value, context: None, .. }] = outputs.as_slice() else { panic!("{outputs:?}") };
        let mut stored = KeyVersions::new();
        let dot = write_locally(&mut stored, &format!("{me}.1"), None, value.clone());
        assert_eq!(dot, (format!("{me}.1"), 1));
        node.handle(NodeEvent::LocalWritten { op: *op, dot: dot.clone(), versions: stored.clone() }, 1_500_000);
        let replicate = |hint_for: Option<&String>| NodeMessage::Replicate { op: *op, key: key.clone(), versions: stored.clone(), hint_for: hint_for.cloned() };
        assert_eq!(
            drain(&mut node),
            [NodeOutput::Send { to: fallback.clone(), message: replicate(Some(down)) }, NodeOutput::Send { to: up.clone(), message: replicate(None) }]
        );
        node.handle(NodeEvent::Message { from: fallback.clone(), message: NodeMessage::Replicated { op: *op, stored: true } }, 1_500_100);
        let answer = Answer::Written { dot, versions: stored, acks: 2, hinted: 1 };
        assert_eq!(drain(&mut node), [NodeOutput::Answer { id: 7, answer }], "the coordinator's copy and the hint make w=quorum");
    }

    #[test]
    fn a_peers_ranges_are_joined_and_bounded() {
        assert_eq!(merge_ranges(vec![(10, 20), (0, u64::MAX), (5, 1), (0, u64::MAX)], 8), [(0, u64::MAX)]);
        assert_eq!(merge_ranges(vec![(30, 40), (10, 20), (21, 25)], 8), [(10, 25), (30, 40)]);
        assert_eq!(merge_ranges((0..100u64).map(|leaf| (leaf * 10, leaf * 10 + 5)).collect(), 4).len(), 4);
    }

    #[test]
    fn a_context_claiming_more_of_the_coordinators_writes_than_it_made_cannot_renumber_a_write() {
        let mut stored = KeyVersions::new();
        assert_eq!(write_locally(&mut stored, "n1.1", None, stamped(1, "a")), ("n1.1".to_string(), 1));
        let inflated: Context = [("n1.1".to_string(), u64::MAX)].into_iter().collect();
        assert_eq!(write_locally(&mut stored, "n1.1", Some(&inflated), stamped(2, "b")), ("n1.1".to_string(), 2));
        assert!(stored.is_well_formed());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 1000, failure_persistence: None, ..Default::default() })]

        /// Any text is a replica count or a reason, and a count is always 1..=replicas.
        #[test]
        fn any_count_text_is_parsed_or_explained(text in proptest::prelude::any::<String>(), replicas in 1usize..9) {
            match text.parse::<Count>() {
                Ok(count) => proptest::prop_assert!((1..=replicas).contains(&count.of(replicas))),
                Err(message) => proptest::prop_assert!(message.contains("not a replica count")),
            }
        }
    }

    #[test]
    fn a_read_answers_at_r_with_the_merged_versions_and_repairs_the_stale_replica() {
        let placement = placement(3, 3);
        let key = Key::new("t", b"k".to_vec());
        let mut node = LeaderlessNode::new(NodeConfig::new("n1", "n1.1", placement), Vec::new(), 0);
        drain(&mut node);
        let levels = Levels { w: Count::One, r: Count::All, strict: true };
        node.handle(NodeEvent::Request { id: 1, key: key.clone(), request: Request::Read, levels }, 10);
        let outputs = drain(&mut node);
        assert_eq!(outputs.len(), 3, "loads its own copy and asks both others: {outputs:?}");
        let Some(op) = outputs.iter().find_map(|output| if let NodeOutput::Load { op, .. } = output { Some(*op) } else { None }) else { panic!("{outputs:?}") };
        let op = &op;
        let mut old = KeyVersions::new();
        write_locally(&mut old, "n2.1", None, stamped(5, "old"));
        let mut new = old.clone();
        write_locally(&mut new, "n3.1", None, stamped(9, "new"));
        node.handle(NodeEvent::Loaded { op: *op, versions: old.clone() }, 20);
        node.handle(NodeEvent::Message { from: "n2".into(), message: NodeMessage::ReadAnswer { op: *op, versions: Some(old.clone()) } }, 30);
        assert_eq!(drain(&mut node), [], "r=all waits for the third");
        node.handle(NodeEvent::Message { from: "n3".into(), message: NodeMessage::ReadAnswer { op: *op, versions: Some(new.clone()) } }, 40);
        assert_eq!(
            drain(&mut node),
            [
                NodeOutput::Answer { id: 1, answer: Answer::Read { versions: new.clone(), answered: 3 } },
                NodeOutput::Merge { key: key.clone(), versions: new.clone() },
                NodeOutput::Send { to: "n2".into(), message: NodeMessage::Repair { key, versions: new.clone() } },
            ]
        );
        assert_eq!(visible(&new).map(|(_, value)| value.value), Some(Some(b"new".to_vec())));
    }
}
