//! Enumerated command-line values, as clap `ValueEnum`s: clap lists them in `--help`,
//! refuses anything else with the list, and hands over a typed value.

use clap::ValueEnum;
use tern_core::{AckMode, LogFormat};

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    /// SQL text, non-deterministic calls made literal (rows where they cannot be).
    Statement,
    /// Row images from SQLite's session extension.
    Row,
    /// SQLite's WAL pages.
    Physical,
}

impl From<LogFormatArg> for LogFormat {
    fn from(format: LogFormatArg) -> LogFormat {
        match format {
            LogFormatArg::Statement => LogFormat::Statement,
            LogFormatArg::Row => LogFormat::Row,
            LogFormatArg::Physical => LogFormat::Physical,
        }
    }
}

/// `--ack`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AckArg {
    /// The leader's own fsync.
    Async,
    /// The leader and a majority.
    SemiSync,
    /// Every in-sync follower (never fewer than a majority).
    Sync,
}

impl From<AckArg> for AckMode {
    fn from(ack: AckArg) -> AckMode {
        match ack {
            AckArg::Async => AckMode::Async,
            AckArg::SemiSync => AckMode::SemiSync,
            AckArg::Sync => AckMode::Sync,
        }
    }
}

/// An `on`/`off` flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

impl Switch {
    pub fn is_on(self) -> bool {
        self == Switch::On
    }
}

/// `tern sim --faults`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FaultsArg {
    None,
    /// Crashes with restarts, and pauses.
    Crash,
    /// Partitions, message loss and duplication.
    Partition,
    /// Everything, plus clock skew, disk stalls and destroyed disks.
    All,
}

impl From<FaultsArg> for tern_sim::Faults {
    fn from(faults: FaultsArg) -> tern_sim::Faults {
        match faults {
            FaultsArg::None => tern_sim::Faults::None,
            FaultsArg::Crash => tern_sim::Faults::Crash,
            FaultsArg::Partition => tern_sim::Faults::Partition,
            FaultsArg::All => tern_sim::Faults::All,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_spelled_as_the_documentation_spells_them() {
        assert_eq!(AckArg::from_str("semi-sync", false), Ok(AckArg::SemiSync));
        assert_eq!(AckMode::from(AckArg::SemiSync).name(), "semi-sync");
        assert_eq!(LogFormat::from(LogFormatArg::from_str("physical", false).unwrap()).name(), "physical");
        assert_eq!(tern_sim::Faults::from(FaultsArg::All).name(), "all");
        assert!(Switch::from_str("maybe", false).is_err());
    }
}

/// `--topology`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TopologyArg {
    /// One leader elected by quorum vote.
    SingleLeader,
    /// A leader per region (elected by the region's nodes), the regions exchanging
    /// writes asynchronously, conflicts settled per row by each table's policy.
    MultiLeader,
    /// No leader: each row on --replicas nodes by consistent hashing, w=/r= quorums,
    /// read repair, hinted handoff and anti-entropy.
    Leaderless,
}

impl From<TopologyArg> for tern_core::Topology {
    fn from(topology: TopologyArg) -> tern_core::Topology {
        match topology {
            TopologyArg::SingleLeader => tern_core::Topology::SingleLeader,
            TopologyArg::MultiLeader => tern_core::Topology::MultiLeader,
            TopologyArg::Leaderless => tern_core::Topology::Leaderless,
        }
    }
}

/// `--policy`: how concurrent writes of one row are settled (multi-leader).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PolicyArg {
    /// The newest whole row wins; the others are kept on record.
    Lww,
    /// Each column's newest value wins; edits of different columns both survive.
    ColumnMerge,
    /// The newest row shows, and the row waits for a person to resolve it.
    KeepBoth,
}

impl From<PolicyArg> for tern_core::multi_leader::Policy {
    fn from(policy: PolicyArg) -> tern_core::multi_leader::Policy {
        match policy {
            PolicyArg::Lww => tern_core::multi_leader::Policy::LastWriterWins,
            PolicyArg::ColumnMerge => tern_core::multi_leader::Policy::ColumnMerge,
            PolicyArg::KeepBoth => tern_core::multi_leader::Policy::KeepBoth,
        }
    }
}

/// `tern sim --mutate`: a deliberate bug, to show the multi-leader checkers catch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum MutationArg {
    /// Keep only each row's winning version (conflicts unrecorded).
    DropConflicts,
    /// Never ship a write again after a loss.
    NoResend,
    /// With --homes: move keys the naive way (the new region declares itself home while
    /// the old one goes on writing), which the conflict checker must report.
    NaiveRehome,
    /// Leaderless: reads never repair the stale replicas they saw.
    NoReadRepair,
    /// Leaderless: fallback nodes keep hints and never deliver them.
    NoHints,
    /// Leaderless: hinted copies count toward a strict w.
    SloppyStrict,
}

impl MutationArg {
    /// The multi-leader mutation, if this is one.
    pub fn regions(self) -> Option<tern_sim::regions::Mutation> {
        match self {
            MutationArg::DropConflicts => Some(tern_sim::regions::Mutation::DropConflicts),
            MutationArg::NoResend => Some(tern_sim::regions::Mutation::NoResend),
            MutationArg::NaiveRehome => Some(tern_sim::regions::Mutation::NaiveRehome),
            _ => None,
        }
    }

    /// The leaderless mutation, if this is one.
    pub fn leaderless(self) -> Option<tern_sim::leaderless::Mutation> {
        match self {
            MutationArg::NoReadRepair => Some(tern_sim::leaderless::Mutation::NoReadRepair),
            MutationArg::NoHints => Some(tern_sim::leaderless::Mutation::NoHints),
            MutationArg::SloppyStrict => Some(tern_sim::leaderless::Mutation::SloppyStrict),
            _ => None,
        }
    }
}
