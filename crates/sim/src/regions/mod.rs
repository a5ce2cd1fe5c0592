//! Multi-leader simulation (issue 13): regions, each running the core's `Exchange` over a
//! simulated WAN that loses, delays and reorders messages, with partitions between
//! regions and regions that crash (keeping only their durable log, rows and cursors)
//! and restart. Every region writes rows of a few keys under one conflict policy. After
//! the fault phase everything heals, and the checkers in `checks.rs` judge the run.
//!
//! A region is one node here: the region group's own single-leader replication is
//! simulated by `world/`. What this adds is the cross-region exchange and the conflict
//! policies, driven exactly as a region leader will drive them.

mod checks;

use crate::rng::Rng;
use crate::SeedReport;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use tern_core::multi_leader::{
    Dot, Exchange, ExchangeConfig, ExchangeEvent, ExchangeOutput, Handover, Homes, Policy, RegionMessage, Row, RowWrite, Shipment, Stamp, VersionVector,
};
use tern_core::{Micros, Protocol, Timestamp};

/// Keys and columns of the simulated table: few, so that conflicts are common.
const KEYS: usize = 3;
const COLUMNS: usize = 2;
const STEP: Micros = 10_000;

/// A deliberate bug, to show the checkers catch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// Regions keep only each row's winning version: conflicts go unrecorded.
    DropConflicts,
    /// Regions never ship a write again after a loss.
    NoResend,
    /// With `--homes`: a key moves the naive way, the region taking it declaring itself
    /// its home while the old home goes on writing until that reaches it.
    NaiveRehome,
}

#[derive(Clone, Debug)]
pub struct RegionOptions {
    pub regions: usize,
    pub policy: Policy,
    /// Steps of 10 ms in the fault phase.
    pub steps: usize,
    pub mutation: Option<Mutation>,
    /// Every key has a home region, the only one that writes it; keys move between
    /// regions by fenced handovers (issue 14).
    pub homes: bool,
}

impl RegionOptions {
    /// The command that replays `seed` alone.
    pub fn replay_command(&self, seed: u64) -> String {
        let mutation = match self.mutation {
            Some(Mutation::DropConflicts) => " --mutate drop-conflicts",
            Some(Mutation::NoResend) => " --mutate no-resend",
            Some(Mutation::NaiveRehome) => " --mutate naive-rehome",
            None => "",
        };
        format!(
            "tern sim --topology multi-leader --seed {seed} --seeds 1 --nodes {} --policy {} --steps {}{}{mutation}",
            self.regions,
            self.policy.name(),
            self.steps,
            if self.homes { " --homes" } else { "" }
        )
    }
}

/// A row write of the simulated table: key, then the write.
pub(crate) type Write = (usize, RowWrite<u64>);

/// What a region's stream carries: row writes, and keys changing home.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Item {
    Row(Write),
    Handover(Handover<usize>),
}

struct Region {
    name: String,
    exchange: Option<Exchange<Item>>,
    /// Durable, like the rows: which region each key's home is, as applied here.
    homes: Homes<usize>,
    /// Durable: every write held (own and applied) and the rows.
    log: BTreeMap<Dot, Shipment<Item>>,
    rows: Vec<Row<u64>>,
    down_until: Micros,
    clock: Micros,
}

impl Region {
    fn holds(&self) -> VersionVector {
        let mut holds = VersionVector::new();
        for dot in self.log.keys() {
            holds.advance(dot);
        }
        holds
    }
}

pub(crate) struct RegionWorld {
    options: RegionOptions,
    rng: Rng,
    now: Micros,
    regions: Vec<Region>,
    in_flight: Vec<(Micros, usize, usize, RegionMessage<Item>)>,
    /// `cut[a][b]`: messages from a to b are lost until then.
    cut: Vec<Vec<Micros>>,
    faults: bool,
    pub(crate) made: VersionVector,
    pub(crate) history: Vec<Write>,
    pub(crate) reached: usize,
    /// Handovers made (`--homes`).
    pub(crate) moves: usize,
    pub(crate) premature: Vec<String>,
    trace: Option<String>,
}

impl RegionWorld {
    fn new(options: &RegionOptions, seed: u64, keep_trace: bool) -> RegionWorld {
        let names: Vec<String> = (1..=options.regions).map(|number| format!("r{number}")).collect();
        // Every key starts at home in one region, the same in every region's view.
        let homes: BTreeMap<usize, String> =
            if options.homes { (0..KEYS).map(|key| (key, names[key % names.len()].clone())).collect() } else { BTreeMap::new() };
        let regions = names
            .iter()
            .map(|name| Region {
                name: name.clone(),
                exchange: None,
                homes: Homes::new(name.clone(), homes.clone()),
                log: BTreeMap::new(),
                rows: (0..KEYS).map(|_| Row::new(options.policy, COLUMNS)).collect(),
                down_until: 0,
                clock: 0,
            })
            .collect();
        RegionWorld {
            options: options.clone(),
            rng: Rng::new(seed),
            now: 0,
            regions,
            in_flight: Vec::new(),
            cut: vec![vec![0; options.regions]; options.regions],
            faults: true,
            made: VersionVector::new(),
            history: Vec::new(),
            reached: 0,
            moves: 0,
            premature: Vec::new(),
            trace: keep_trace.then(String::new),
        }
    }

    fn note(&mut self, line: impl FnOnce(&RegionWorld) -> String) {
        if self.trace.is_some() {
            let (text, now) = (line(self), self.now);
            if let Some(trace) = &mut self.trace {
                let _ = writeln!(trace, "{now:>10} {text}");
            }
        }
    }

    fn config(&self, region: usize) -> ExchangeConfig {
        let resend_us = if self.options.mutation == Some(Mutation::NoResend) { Micros::MAX / 4 } else { 100_000 };
        ExchangeConfig {
            region: self.regions[region].name.clone(),
            regions: self.regions.iter().map(|region| region.name.clone()).collect(),
            status_interval_us: 20_000,
            resend_us,
        }
    }

    fn index_of(&self, name: &str) -> usize {
        self.regions.iter().position(|region| region.name == name).expect("a known region")
    }

    fn handle(&mut self, region: usize, event: ExchangeEvent<Item>) {
        let now = self.now;
        if let Some(exchange) = self.regions[region].exchange.as_mut() {
            exchange.handle(event, now);
        }
        self.drain(region);
    }

    fn apply_row(&mut self, region: usize, key: usize, write: &RowWrite<u64>) {
        let row = &mut self.regions[region].rows[key];
        row.apply(write).expect("the simulator writes rows of the right shape");
        if self.options.mutation == Some(Mutation::DropConflicts) {
            row.discard_conflicts();
        }
    }

    fn drain(&mut self, region: usize) {
        loop {
            let Some(output) = self.regions[region].exchange.as_mut().and_then(Exchange::poll_output) else { return };
            match output {
                ExchangeOutput::Send { to, message } => {
                    let to = self.index_of(&to);
                    let lost = self.faults && (self.rng.chance(10) || self.now < self.cut[region][to]);
                    if !lost {
                        let at = self.now + self.rng.range(1_000, 61_000);
                        self.in_flight.push((at, region, to, message));
                    }
                }
                ExchangeOutput::Apply(shipment) => {
                    match shipment.write.clone() {
                        Item::Row((key, write)) => self.apply_row(region, key, &write),
                        Item::Handover(handover) => self.regions[region].homes.apply(&handover),
                    }
                    let dot = shipment.dot.clone();
                    self.note(|world| format!("{} applies {dot}", world.regions[region].name));
                    self.regions[region].log.insert(dot.clone(), shipment);
                    let now = self.now;
                    if let Some(exchange) = self.regions[region].exchange.as_mut() {
                        exchange.handle(ExchangeEvent::Applied { dot }, now);
                    }
                }
                ExchangeOutput::ReadWrites { to, origin, after, up_to } => {
                    let writes: Vec<Shipment<Item>> = self.regions[region]
                        .log
                        .range(Dot::new(origin.clone(), after + 1)..=Dot::new(origin, up_to))
                        .map(|(_, shipment)| shipment.clone())
                        .collect();
                    let now = self.now;
                    if let Some(exchange) = self.regions[region].exchange.as_mut() {
                        exchange.handle(ExchangeEvent::WritesRead { to, writes }, now);
                    }
                }
                ExchangeOutput::Reached { tag, result } => {
                    let dot = Dot::new(self.regions[region].name.clone(), tag);
                    let holding = self.regions.iter().filter(|state| state.log.contains_key(&dot)).count();
                    if result.is_ok() && holding < self.regions.len() {
                        self.premature.push(format!("{dot} was reported held by every region while {holding} held it"));
                    }
                    self.reached += 1;
                }
            }
        }
    }

    fn write(&mut self, region: usize) {
        let Some(exchange) = &self.regions[region].exchange else { return };
        let (dot, seen) = exchange.next_local();
        let key = self.rng.range(0, KEYS as u64 - 1) as usize;
        if self.options.homes {
            if self.rng.chance(5) {
                return self.move_home(region, key, dot, seen);
            }
            // A write to a key homed elsewhere goes to its home (which writes its own keys
            // here too): this region does not write it.
            if self.regions[region].homes.may_write(&key).is_err() {
                return;
            }
        }
        let values = if self.rng.chance(15) {
            None
        } else {
            let partial = self.options.policy == Policy::ColumnMerge;
            let mut values: Vec<Option<u64>> = (0..COLUMNS).map(|_| (!partial || self.rng.chance(50)).then(|| self.rng.range(0, 999))).collect();
            if values.iter().all(Option::is_none) {
                values[0] = Some(self.rng.range(0, 999));
            }
            Some(values)
        };
        let state = &mut self.regions[region];
        state.clock = state.clock.max(self.now) + 1;
        let write = RowWrite { dot: dot.clone(), stamp: Stamp::new(Timestamp::new(state.clock, 0), state.name.clone()), seen: seen.clone(), values };
        self.apply_row(region, key, &write);
        self.regions[region].log.insert(dot.clone(), Shipment { dot: dot.clone(), seen, write: Item::Row((key, write.clone())) });
        self.made.advance(&dot);
        self.history.push((key, write));
        self.note(|world| format!("{} writes {dot} on key {key}", world.regions[region].name));
        self.handle(region, ExchangeEvent::Committed { dot: dot.clone() });
        if self.rng.chance(25) {
            let deadline = self.now + 2_000_000;
            let regions = self.regions.len();
            self.handle(region, ExchangeEvent::WaitForRegions { tag: dot.seq, dot, regions, deadline });
        }
    }

    /// Moves `key`: its home hands it to another region (fenced); under the naive
    /// mutation, this region takes it while the old home goes on.
    fn move_home(&mut self, region: usize, key: usize, dot: Dot, seen: VersionVector) {
        let handover = if self.options.mutation == Some(Mutation::NaiveRehome) {
            if self.regions[region].homes.may_write(&key).is_ok() {
                return;
            }
            self.regions[region].homes.claim(&key)
        } else {
            let count = self.regions.len() as u64;
            let to = self.regions[self.rng.range(0, count - 1) as usize].name.clone();
            match self.regions[region].homes.hand_over(&key, &to) {
                Ok(handover) => handover,
                Err(_) => return,
            }
        };
        self.note(|world| format!("{} writes {dot}: key {key} to {}", world.regions[region].name, handover.to));
        self.regions[region].log.insert(dot.clone(), Shipment { dot: dot.clone(), seen, write: Item::Handover(handover) });
        self.made.advance(&dot);
        self.moves += 1;
        self.handle(region, ExchangeEvent::Committed { dot });
    }

    fn step(&mut self) {
        self.now += STEP;
        for region in 0..self.regions.len() {
            if self.regions[region].exchange.is_none() && self.now >= self.regions[region].down_until {
                let holds = self.regions[region].holds();
                let exchange = Exchange::new(self.config(region), holds, self.now);
                self.regions[region].exchange = Some(exchange);
                self.note(|world| format!("{} starts", world.regions[region].name));
            }
        }
        if self.faults {
            self.inject_fault();
            for region in 0..self.regions.len() {
                if self.rng.chance(33) {
                    self.write(region);
                }
            }
        }
        let now = self.now;
        let (due, later): (Vec<_>, Vec<_>) = self.in_flight.drain(..).partition(|(at, ..)| *at <= now);
        self.in_flight = later;
        for (_, from, to, message) in due {
            if self.regions[to].exchange.is_some() {
                let from = self.regions[from].name.clone();
                self.handle(to, ExchangeEvent::Message { from, message });
            }
        }
        for region in 0..self.regions.len() {
            self.handle(region, ExchangeEvent::Tick);
        }
    }

    fn inject_fault(&mut self) {
        let count = self.regions.len() as u64;
        match self.rng.range(0, 39) {
            0 => {
                let region = self.rng.range(0, count - 1) as usize;
                self.regions[region].exchange = None;
                self.regions[region].down_until = self.now + self.rng.range(0, 500_000);
                self.in_flight.retain(|(_, _, to, _)| *to != region);
                self.note(|world| format!("crash {}", world.regions[region].name));
            }
            1 => {
                let (a, b) = (self.rng.range(0, count - 1) as usize, self.rng.range(0, count - 1) as usize);
                let until = self.now + self.rng.range(0, 1_000_000);
                self.cut[a][b] = until;
                self.cut[b][a] = until;
                self.note(|world| format!("cut {} from {} until {until}", world.regions[a].name, world.regions[b].name));
            }
            _ => {}
        }
    }

    fn run(&mut self) {
        for _ in 0..self.options.steps {
            self.step();
        }
        self.faults = false;
        for region in &mut self.regions {
            region.down_until = 0;
        }
        self.note(|_| "heal".to_string());
        // Long enough for every region to confirm everything after the last resend.
        for _ in 0..1_000 {
            self.step();
        }
    }
}

/// What one multi-leader run left behind once healed, for `tern lab`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConflictCounts {
    /// Row writes made, in every region.
    pub writes: usize,
    /// Conflicts the rows hold (every region holds the same ones once healed).
    pub conflicts: usize,
    /// Keys that changed home region (`homes`).
    pub moves: usize,
    /// What the checkers found wrong.
    pub violations: usize,
}

/// Runs one multi-leader seed and counts its writes, conflicts and moves.
pub fn count_conflicts(options: &RegionOptions, seed: u64) -> ConflictCounts {
    let mut world = RegionWorld::new(options, seed, false);
    world.run();
    let conflicts = world.regions.first().map_or(0, |region| (0..KEYS).map(|key| region.rows[key].conflicts().len()).sum());
    ConflictCounts { writes: world.history.len(), conflicts, moves: world.moves, violations: checks::check(&world).len() }
}

/// Runs one multi-leader seed and every checker on it.
pub fn run_regions_seed(options: &RegionOptions, seed: u64, keep_trace: bool) -> SeedReport {
    let mut world = RegionWorld::new(options, seed, keep_trace);
    world.run();
    let violations = checks::check(&world);
    SeedReport {
        seed,
        violations,
        lost_async: 0,
        operations: world.history.len(),
        destroyed_disks: 0,
        replaced_nodes: 0,
        leader_below_top_at_heal: false,
        rewrites_acknowledged: 0,
        trace: world.trace.take(),
    }
}
