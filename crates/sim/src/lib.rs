//! Deterministic simulation of a whole tern cluster.
//!
//! One thread runs 3–7 nodes, each driving the same `tern_core::Replica` the server
//! drives, over a simulated network, disks and clock, with clients issuing the real
//! request types. Every choice derives from one seed, so a seed replays byte for byte
//! (`--trace` shows it). After a fault phase, a heal and a liveness phase, the checkers in
//! [`checkers`] judge the run.
//!
//! Layout:
//! - [`rng`]: the seeded random source.
//! - [`world`]: nodes, network, disks, clients, faults; the event loop.
//! - [`disk`]: the storage model each node's disk holds, held to the storage engine's
//!   contract by the conformance suite of `tern_core::storage_contract`.
//! - [`history`]: what clients invoked and saw.
//! - [`checkers`]: one file per property.
//! - [`leaderless`]: the leaderless topology's simulation (quorums, read repair, hints,
//!   anti-entropy, a wiped node) and its checkers.
//! - [`regions`]: the multi-leader topology's simulation (regions exchanging writes under
//!   a conflict policy) and its checkers.
//!
//! The storage model is a key-value register per key with the log as its source of
//! truth; it is the same for every `--log-format`, because the formats differ only inside
//! the storage engine, which the core (what is simulated) never sees.

pub mod checkers;
pub mod disk;
pub mod history;
pub mod leaderless;
pub mod regions;
pub mod rng;
pub mod world;

use std::collections::BTreeSet;
use tern_core::AckMode;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Faults {
    None,
    /// Crashes with restarts, and pauses.
    Crash,
    /// Partitions (symmetric, one-way, isolation), message loss and duplication.
    Partition,
    /// Everything above, plus clock skew, disk stalls, and destroyed disks followed by
    /// the promotion of the most up-to-date surviving node.
    All,
}

impl std::str::FromStr for Faults {
    type Err = String;
    fn from_str(text: &str) -> Result<Faults, String> {
        match text {
            "none" => Ok(Faults::None),
            "crash" => Ok(Faults::Crash),
            "partition" => Ok(Faults::Partition),
            "all" => Ok(Faults::All),
            other => Err(format!("unknown fault set {other:?}: expected none, crash, partition or all")),
        }
    }
}

impl Faults {
    pub fn name(self) -> &'static str {
        match self {
            Faults::None => "none",
            Faults::Crash => "crash",
            Faults::Partition => "partition",
            Faults::All => "all",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub nodes: usize,
    pub ack: AckMode,
    pub faults: Faults,
    /// Client operations issued during the fault phase.
    pub steps: usize,
    pub log_format: String,
    /// Automatic failover: every node runs elections (raft-rs) and the cluster chooses
    /// its own leader. Without it the leader is fixed and a lost disk is replaced by an
    /// operator's promotion.
    pub failover: bool,
    /// With failover: leader placement. Each voter gets a random leader priority (0 to
    /// 3; n1 and n2 at least 1), and with 4 or more nodes one or two of the last ones
    /// are non-voters. A checker then requires that after healing the leader is a voter
    /// of the highest priority, and that no non-voter ever voted or led.
    pub placement: bool,
    /// One write in five changes nothing (`OpKind::Rewrite`). Off by default: drawing
    /// them changes every seed's history.
    pub rewrites: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            nodes: 3,
            ack: AckMode::SemiSync,
            faults: Faults::All,
            steps: 200,
            log_format: "row".to_string(),
            failover: false,
            placement: false,
            rewrites: false,
        }
    }
}

impl Options {
    /// The command that replays `seed` alone.
    pub fn replay_command(&self, seed: u64) -> String {
        format!(
            "tern sim --seed {seed} --seeds 1 --nodes {} --ack {} --log-format {} --faults {} --steps {}{}",
            self.nodes,
            self.ack.name(),
            self.log_format,
            self.faults.name(),
            self.steps,
            if self.failover { " --failover" } else { "" }
        ) + if self.placement { " --placement" } else { "" }
            + if self.rewrites { " --rewrites" } else { "" }
    }
}

/// What one seed showed.
#[derive(Debug)]
pub struct SeedReport {
    pub seed: u64,
    pub violations: Vec<String>,
    /// Acknowledged writes with fewer than a majority of copies that were lost.
    pub lost_async: usize,
    pub operations: usize,
    pub destroyed_disks: usize,
    /// With failover: nodes removed, wiped and added back (membership changes).
    pub replaced_nodes: usize,
    /// Placement: when every fault healed, no voter of the highest priority led (so
    /// leadership had to move back for the seed to pass).
    pub leader_below_top_at_heal: bool,
    /// With `rewrites`: writes that changed nothing and were acknowledged on an entry.
    pub rewrites_acknowledged: usize,
    pub trace: Option<String>,
}

/// Runs one seed and every checker on it.
pub fn run_seed(options: &Options, seed: u64, keep_trace: bool) -> SeedReport {
    let mut world = world::World::new(options, seed, keep_trace);
    let settled = world.run();
    let placement = (options.placement && options.failover).then(|| world.await_preferred_leader());

    let lost = checkers::lost_writes::check(&world.history, &world.nodes, options.failover);
    let surviving: BTreeSet<u64> = world.nodes[0].disk.entries().iter().map(|entry| checkers::lost_writes::write_id(&entry.payload)).collect();
    let mut violations = lost.violations;
    violations.extend(checkers::linearizable::check(&world.history, options.nodes));
    violations.extend(checkers::session::check(&world.history, &surviving));
    violations.extend(checkers::convergence::check(&world.nodes, settled));
    violations.extend(checkers::leader_safety::check(&world.observations));
    if let Some(preferred_leader) = placement {
        violations.extend(checkers::placement::check(&world, preferred_leader));
    }
    SeedReport {
        seed,
        violations,
        lost_async: lost.lost_async.len(),
        operations: world.history.len(),
        destroyed_disks: world.destroyed_disks,
        replaced_nodes: world.replaced_disks,
        leader_below_top_at_heal: world.leader_below_top_at_heal,
        rewrites_acknowledged: world
            .history
            .iter()
            .filter(|op| matches!((&op.kind, &op.outcome), (history::OpKind::Rewrite { .. }, history::Outcome::WriteOk(position)) if position.index > 0))
            .count(),
        trace: world.trace().map(str::to_string),
    }
}
