//! Leaderless simulation (issue 16): nodes running the core's `LeaderlessNode` over a
//! network that loses, delays and reorders messages, with partitions and crashes (a node
//! keeps its durable versions and hints and loses the rest). Clients write and read a few
//! keys at random nodes with random `w`, `r` and strictness; nodes run anti-entropy on
//! demand now and then. The run then goes through phases, each checked in `checks.rs`:
//!
//! 1. heal, with no reads and no anti-entropy: every hint must reach its replica;
//! 2. read half the keys at `r=all`: read repair must leave their replicas identical;
//! 3. anti-entropy on every node: every replica of every key identical, no acknowledged
//!    write gone;
//! 4. wipe one node's storage and repair it from the others: it comes back complete.
//!
//! During the fault phase, every read with `R + W > N` must see every write acknowledged
//! by `W` strict replicas before the read began.

mod checks;

use crate::rng::Rng;
use crate::SeedReport;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use tern_core::leaderless::{
    write_locally, Answer, Count, Dot, Key, KeyVersions, LeaderlessNode, Levels, MerkleTree, NodeConfig, NodeEvent, NodeMessage, NodeOutput, Placement,
    Request, Ring, RingNode,
};
use tern_core::{Micros, Protocol};

const KEYS: usize = 6;
const STEP: Micros = 10_000;

/// A deliberate bug, to show the checkers catch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    NoReadRepair,
    NoHints,
    /// Nodes count hinted copies toward a strict `w`.
    SloppyStrict,
}

impl Mutation {
    pub fn name(self) -> &'static str {
        match self {
            Mutation::NoReadRepair => "no-read-repair",
            Mutation::NoHints => "no-hints",
            Mutation::SloppyStrict => "sloppy-strict",
        }
    }
}

#[derive(Clone, Debug)]
pub struct LeaderlessOptions {
    pub nodes: usize,
    pub replicas: usize,
    /// Steps of 10 ms in the fault phase.
    pub steps: usize,
    pub mutation: Option<Mutation>,
}

impl Default for LeaderlessOptions {
    fn default() -> LeaderlessOptions {
        LeaderlessOptions { nodes: 5, replicas: 3, steps: 300, mutation: None }
    }
}

impl LeaderlessOptions {
    /// The command that replays `seed` alone.
    pub fn replay_command(&self, seed: u64) -> String {
        let mutation = self.mutation.map(|mutation| format!(" --mutate {}", mutation.name())).unwrap_or_default();
        format!("tern sim --topology leaderless --seed {seed} --seeds 1 --nodes {} --replicas {} --steps {}{mutation}", self.nodes, self.replicas, self.steps)
    }
}

pub(crate) struct SimNode {
    pub(crate) name: String,
    node: Option<LeaderlessNode>,
    incarnation: u64,
    /// Durable: each key's versions, and hints kept for others.
    pub(crate) store: BTreeMap<Key, KeyVersions>,
    pub(crate) hints: BTreeMap<(String, Key), KeyVersions>,
    down_until: Micros,
}

/// A client's request in flight.
struct Invocation {
    key: Key,
    levels: Levels,
    write: bool,
    invoked: Micros,
}

#[derive(Clone, Debug)]
pub(crate) struct AckedWrite {
    pub(crate) key: Key,
    pub(crate) dot: Dot,
    pub(crate) acked: Micros,
    pub(crate) w: usize,
    pub(crate) strict: bool,
}

#[derive(Clone, Debug)]
pub(crate) struct CompletedRead {
    pub(crate) key: Key,
    pub(crate) invoked: Micros,
    pub(crate) r: usize,
    pub(crate) versions: KeyVersions,
}

pub(crate) struct LeaderlessWorld {
    pub(crate) options: LeaderlessOptions,
    rng: Rng,
    now: Micros,
    pub(crate) placement: Placement,
    pub(crate) nodes: Vec<SimNode>,
    in_flight: Vec<(Micros, usize, usize, NodeMessage)>,
    cut: Vec<Vec<Micros>>,
    faults: bool,
    next_request: u64,
    invocations: BTreeMap<u64, Invocation>,
    pub(crate) writes: Vec<AckedWrite>,
    pub(crate) reads: Vec<CompletedRead>,
    /// Every hint stored: (fallback, target, key, versions).
    pub(crate) hints_stored: Vec<(String, String, Key, KeyVersions)>,
    pub(crate) refused: usize,
    pub(crate) repairs_done: usize,
    pub(crate) wiped: Option<usize>,
    trace: Option<String>,
}

pub(crate) fn keys() -> Vec<Key> {
    (0..KEYS).map(|key| Key::new("t", vec![key as u8])).collect()
}

impl LeaderlessWorld {
    fn new(options: &LeaderlessOptions, seed: u64, keep_trace: bool) -> LeaderlessWorld {
        let regions = ["us", "eu", "ap"];
        let ring_nodes: Vec<RingNode> =
            (0..options.nodes).map(|index| RingNode { id: format!("n{}", index + 1), region: regions[index % regions.len()].to_string() }).collect();
        let placement = Placement::new(Ring::new(ring_nodes.clone(), 16), options.replicas);
        let nodes = ring_nodes
            .iter()
            .map(|ring_node| SimNode { name: ring_node.id.clone(), node: None, incarnation: 1, store: BTreeMap::new(), hints: BTreeMap::new(), down_until: 0 })
            .collect();
        LeaderlessWorld {
            options: options.clone(),
            rng: Rng::new(seed),
            now: 0,
            placement,
            nodes,
            in_flight: Vec::new(),
            cut: vec![vec![0; options.nodes]; options.nodes],
            faults: true,
            next_request: 1,
            invocations: BTreeMap::new(),
            writes: Vec::new(),
            reads: Vec::new(),
            hints_stored: Vec::new(),
            refused: 0,
            repairs_done: 0,
            wiped: None,
            trace: keep_trace.then(String::new),
        }
    }

    fn note(&mut self, line: impl FnOnce(&LeaderlessWorld) -> String) {
        if self.trace.is_some() {
            let (text, now) = (line(self), self.now);
            if let Some(trace) = &mut self.trace {
                let _ = writeln!(trace, "{now:>10} {text}");
            }
        }
    }

    fn config(&self, index: usize) -> NodeConfig {
        let node = &self.nodes[index];
        let mut config = NodeConfig::new(node.name.clone(), format!("{}.{}", node.name, node.incarnation), self.placement.clone());
        config.request_timeout_us = 1_000_000;
        config.ping_interval_us = 50_000;
        config.down_after_us = 200_000;
        config.hint_interval_us = 100_000;
        config.anti_entropy_interval_us = 0;
        config.merkle_depth = 4;
        // Numbers a previous start of this node never gave out (as the server's clock does).
        config.first_op = self.now * 1_000 + 1;
        config.read_repair = self.options.mutation != Some(Mutation::NoReadRepair);
        config.deliver_hints = self.options.mutation != Some(Mutation::NoHints);
        config
    }

    fn index_of(&self, name: &str) -> usize {
        self.nodes.iter().position(|node| node.name == name).expect("a known node")
    }

    fn handle(&mut self, index: usize, event: NodeEvent) {
        let now = self.now;
        let Some(node) = self.nodes[index].node.as_mut() else { return };
        node.handle(event, now);
        self.drain(index);
    }

    /// Carries out a node's outputs in order, storage synchronously (durable at once).
    fn drain(&mut self, index: usize) {
        loop {
            let Some(output) = self.nodes[index].node.as_mut().and_then(LeaderlessNode::poll_output) else { return };
            match output {
                NodeOutput::Send { to, message } => {
                    let to = self.index_of(&to);
                    let lost = self.faults && (self.rng.chance(5) || self.now < self.cut[index][to]);
                    if !lost {
                        let at = self.now + self.rng.range(1_000, 30_000);
                        self.in_flight.push((at, index, to, message));
                    }
                }
                NodeOutput::Answer { id, answer } => self.answered(index, id, answer),
                NodeOutput::Repaired { .. } => self.repairs_done += 1,
                NodeOutput::WriteLocal { op, key, value, context } => {
                    let dot_name = format!("{}.{}", self.nodes[index].name, self.nodes[index].incarnation);
                    let stored = self.nodes[index].store.entry(key).or_default();
                    let dot = write_locally(stored, &dot_name, context.as_ref(), value);
                    let versions = stored.clone();
                    self.nodes[index].node.as_mut().expect("drained node").handle(NodeEvent::LocalWritten { op, dot, versions }, self.now);
                }
                NodeOutput::Load { op, key } => {
                    let versions = self.nodes[index].store.get(&key).cloned().unwrap_or_default();
                    self.nodes[index].node.as_mut().expect("drained node").handle(NodeEvent::Loaded { op, versions }, self.now);
                }
                NodeOutput::Merge { key, versions } => self.nodes[index].store.entry(key).or_default().merge(&versions),
                NodeOutput::StoreHint { target, key, versions } => {
                    let fallback = self.nodes[index].name.clone();
                    self.hints_stored.push((fallback, target.clone(), key.clone(), versions.clone()));
                    self.nodes[index].hints.insert((target, key), versions);
                }
                NodeOutput::DropHint { target, key } => {
                    self.nodes[index].hints.remove(&(target, key));
                }
                NodeOutput::BuildTree { op, peer, depth } => {
                    let tree = self.tree(index, &peer, depth);
                    self.nodes[index].node.as_mut().expect("drained node").handle(NodeEvent::TreeBuilt { op, tree }, self.now);
                }
                NodeOutput::LoadTables { op, tables } => {
                    let entries: Vec<(Key, KeyVersions)> = self.nodes[index]
                        .store
                        .iter()
                        .filter(|(key, _)| tables.contains(&key.table))
                        .map(|(key, versions)| (key.clone(), versions.clone()))
                        .collect();
                    self.nodes[index].node.as_mut().expect("drained node").handle(NodeEvent::TablesLoaded { op, entries }, self.now);
                }
                NodeOutput::LoadRanges { op, peer, ranges } => {
                    let me = self.nodes[index].name.clone();
                    let entries: Vec<(Key, KeyVersions)> = self.nodes[index]
                        .store
                        .iter()
                        .filter(|(key, _)| {
                            let token = key.token();
                            self.placement.shares(token, &me, &peer) && ranges.iter().any(|(start, end)| (*start..=*end).contains(&token))
                        })
                        .map(|(key, versions)| (key.clone(), versions.clone()))
                        .collect();
                    self.nodes[index].node.as_mut().expect("drained node").handle(NodeEvent::RangesLoaded { op, entries }, self.now);
                }
            }
        }
    }

    fn tree(&self, index: usize, peer: &str, depth: u32) -> MerkleTree {
        let me = &self.nodes[index].name;
        let shared = self.nodes[index].store.iter().filter(|(key, _)| self.placement.shares(key.token(), me, peer));
        MerkleTree::build(depth, shared.map(|(key, versions)| (key.token(), tern_core::leaderless::digest(versions))))
    }

    fn answered(&mut self, index: usize, id: u64, answer: Answer) {
        let Some(invocation) = self.invocations.remove(&id) else { return };
        let node = self.nodes[index].name.clone();
        match answer {
            Answer::Written { dot, acks, .. } => {
                debug_assert!(invocation.write);
                self.note(|_| format!("{node} acks write {}#{} on {:?} with {acks} copies", dot.0, dot.1, invocation.key.key));
                let w = invocation.levels.w.of(self.options.replicas);
                self.writes.push(AckedWrite { key: invocation.key, dot, acked: self.now, w, strict: invocation.levels.strict });
            }
            Answer::Read { versions, answered } => {
                let r = invocation.levels.r.of(self.options.replicas);
                self.note(|_| format!("{node} answers read of {:?} from {answered}: {:?}", invocation.key.key, versions.context()));
                self.reads.push(CompletedRead { key: invocation.key, invoked: invocation.invoked, r, versions });
            }
            Answer::Scanned { entries, answered } => {
                let r = invocation.levels.r.of(self.options.replicas);
                self.note(|_| format!("{node} answers a scan from {answered} nodes with {} keys", entries.len()));
                // A scan reads every key: each is checked as a read of its own.
                for key in keys() {
                    let versions = entries.iter().find(|(found, _)| *found == key).map(|(_, versions)| versions.clone()).unwrap_or_default();
                    self.reads.push(CompletedRead { key, invoked: invocation.invoked, r, versions });
                }
            }
            Answer::Refused(refusal) => {
                self.refused += 1;
                self.note(|_| format!("{node} refuses: {refusal}"));
            }
        }
    }

    fn invoke(&mut self, index: usize, key: Key, levels: Levels, request: Request) {
        let id = self.next_request;
        self.next_request += 1;
        let write = matches!(request, Request::Write { .. });
        self.invocations.insert(id, Invocation { key: key.clone(), levels, write, invoked: self.now });
        let levels = if self.options.mutation == Some(Mutation::SloppyStrict) { Levels { strict: false, ..levels } } else { levels };
        self.handle(index, NodeEvent::Request { id, key, request, levels });
    }

    fn client_request(&mut self) {
        let index = self.rng.range(0, self.nodes.len() as u64 - 1) as usize;
        if self.nodes[index].node.is_none() {
            return;
        }
        let key = keys()[self.rng.range(0, KEYS as u64 - 1) as usize].clone();
        let counts = [Count::One, Count::Quorum, Count::All];
        let levels = Levels { w: *self.rng.pick(&counts), r: *self.rng.pick(&counts), strict: self.rng.chance(50) };
        if self.rng.chance(50) {
            let value = if self.rng.chance(10) { None } else { Some(self.next_request.to_le_bytes().to_vec()) };
            self.note(|world| format!("client writes {:?} at {} w={} strict={}", key.key, world.nodes[index].name, levels.w.name(), levels.strict));
            self.invoke(index, key, levels, Request::Write { value, context: None });
        } else if self.rng.chance(20) {
            self.note(|world| format!("client scans at {} r={}", world.nodes[index].name, levels.r.name()));
            self.invoke(index, key, levels, Request::Scan { tables: vec!["t".to_string()] });
        } else {
            self.note(|world| format!("client reads {:?} at {} r={}", key.key, world.nodes[index].name, levels.r.name()));
            self.invoke(index, key, levels, Request::Read);
        }
    }

    fn step(&mut self) {
        self.now += STEP;
        for index in 0..self.nodes.len() {
            if self.nodes[index].node.is_none() && self.now >= self.nodes[index].down_until {
                let hints: Vec<(String, Key, KeyVersions)> =
                    self.nodes[index].hints.iter().map(|((target, key), versions)| (target.clone(), key.clone(), versions.clone())).collect();
                self.nodes[index].node = Some(LeaderlessNode::new(self.config(index), hints, self.now));
                self.note(|world| format!("{} starts", world.nodes[index].name));
            }
        }
        if self.faults {
            self.inject_fault();
            if self.rng.chance(60) {
                self.client_request();
            }
            if self.rng.chance(3) {
                let index = self.rng.range(0, self.nodes.len() as u64 - 1) as usize;
                self.note(|world| format!("{} runs anti-entropy", world.nodes[index].name));
                self.handle(index, NodeEvent::Repair { id: 0 });
            }
        }
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) = self.in_flight.drain(..).partition(|(at, ..)| *at <= now);
        self.in_flight = later;
        for (_, from, to, message) in due {
            let from = self.nodes[from].name.clone();
            self.handle(to, NodeEvent::Message { from, message });
        }
        for index in 0..self.nodes.len() {
            if self.nodes[index].node.as_ref().and_then(LeaderlessNode::poll_timeout).is_some_and(|at| at <= now) {
                self.handle(index, NodeEvent::Tick);
            }
        }
    }

    fn inject_fault(&mut self) {
        let count = self.nodes.len() as u64;
        match self.rng.range(0, 29) {
            0 => {
                let index = self.rng.range(0, count - 1) as usize;
                self.nodes[index].node = None;
                self.nodes[index].down_until = self.now + self.rng.range(0, 800_000);
                self.note(|world| format!("crash {}", world.nodes[index].name));
            }
            1 => {
                let (a, b) = (self.rng.range(0, count - 1) as usize, self.rng.range(0, count - 1) as usize);
                let until = self.now + self.rng.range(0, 1_000_000);
                self.cut[a][b] = until;
                self.cut[b][a] = until;
                self.note(|world| format!("cut {} from {} until {until}", world.nodes[a].name, world.nodes[b].name));
            }
            _ => {}
        }
    }

    fn run_for(&mut self, micros: Micros) {
        let end = self.now + micros;
        while self.now < end {
            self.step();
        }
    }

    /// Every phase; returns the violations found along the way.
    fn run(&mut self) -> Vec<String> {
        for _ in 0..self.options.steps {
            self.step();
        }
        self.faults = false;
        for node in &mut self.nodes {
            node.down_until = 0;
        }
        self.cut = vec![vec![0; self.nodes.len()]; self.nodes.len()];
        self.note(|_| "heal".to_string());
        // Requests still in flight finish or time out (1 s), and hints go home.
        self.run_for(2_000_000);
        let mut violations = checks::hints_delivered(self);
        self.note(|_| "read repair phase".to_string());
        let read_keys: Vec<Key> = keys().into_iter().step_by(2).collect();
        for key in &read_keys {
            let index = self.rng.range(0, self.nodes.len() as u64 - 1) as usize;
            let levels = Levels { w: Count::Quorum, r: Count::All, strict: true };
            self.invoke(index, key.clone(), levels, Request::Read);
        }
        self.run_for(1_500_000);
        violations.extend(checks::replicas_identical(self, &read_keys, "after every replica answered a read at r=all (read repair)"));
        self.note(|_| "anti-entropy phase".to_string());
        for index in 0..self.nodes.len() {
            self.handle(index, NodeEvent::Repair { id: 1 });
        }
        self.run_for(1_500_000);
        violations.extend(checks::replicas_identical(self, &keys(), "after anti-entropy"));
        violations.extend(checks::nothing_lost(self));
        let wiped = self.rng.range(0, self.nodes.len() as u64 - 1) as usize;
        self.note(|world| format!("wipe {}", world.nodes[wiped].name));
        let node = &mut self.nodes[wiped];
        node.store.clear();
        node.hints.clear();
        node.incarnation += 1;
        node.node = None;
        self.wiped = Some(wiped);
        self.step();
        self.run_for(500_000);
        self.handle(wiped, NodeEvent::Repair { id: 2 });
        self.run_for(1_500_000);
        violations.extend(checks::replicas_identical(self, &keys(), "after the wiped node repaired itself"));
        violations.extend(checks::nothing_lost(self));
        violations
    }
}

/// For `tern lab`: runs one seed and, for each `(r, w)`, counts the pairs of a read and a
/// write of its key acknowledged by `w` strict replicas before the read began, and how
/// many of those writes the read missed (saw neither it nor a write that saw it).
pub fn quorum_misses(options: &LeaderlessOptions, seed: u64) -> BTreeMap<(usize, usize), (usize, usize)> {
    let mut world = LeaderlessWorld::new(options, seed, false);
    world.run();
    let mut counts: BTreeMap<(usize, usize), (usize, usize)> = BTreeMap::new();
    for read in &world.reads {
        for write in world.writes.iter().filter(|write| write.key == read.key && write.strict && write.acked < read.invoked) {
            let entry = counts.entry((read.r, write.w)).or_default();
            entry.0 += 1;
            entry.1 += usize::from(!checks::covers(&read.versions, &write.dot));
        }
    }
    counts
}

/// Runs one leaderless seed and every checker on it.
pub fn run_leaderless_seed(options: &LeaderlessOptions, seed: u64, keep_trace: bool) -> SeedReport {
    let mut world = LeaderlessWorld::new(options, seed, keep_trace);
    let mut violations = world.run();
    violations.extend(checks::strict_reads_see_acknowledged_writes(&world));
    violations.truncate(8);
    SeedReport {
        seed,
        violations,
        lost_async: 0,
        operations: world.writes.len() + world.reads.len(),
        destroyed_disks: usize::from(world.wiped.is_some()),
        replaced_nodes: 0,
        leader_below_top_at_heal: false,
        rewrites_acknowledged: 0,
        trace: world.trace.take(),
    }
}
