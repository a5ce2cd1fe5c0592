//! A multi-value register: the versions of one value that no write has seen past.

use super::causal::VersionVector;
use crate::hlc::Timestamp;
use serde::{Deserialize, Serialize};

/// Names one write: the region it was made in and its place in that region's stream of
/// writes (1, 2, 3, ...).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    pub region: String,
    pub seq: u64,
}

impl Dot {
    pub fn new(region: impl Into<String>, seq: u64) -> Dot {
        Dot { region: region.into(), seq }
    }
}

impl std::fmt::Display for Dot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.region, self.seq)
    }
}

/// When a write was made, in hybrid time, with its region to break ties: the order in
/// which concurrent versions are ranked (the highest is visible).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    pub time: Timestamp,
    pub region: String,
}

impl Stamp {
    pub fn new(time: Timestamp, region: impl Into<String>) -> Stamp {
        Stamp { time, region: region.into() }
    }
}

/// One version of a value: which write made it, when, and the value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version<T> {
    pub dot: Dot,
    pub stamp: Stamp,
    pub value: T,
}

/// The versions of one value that are not in the past of any other (siblings), in no
/// particular order of arrival. With causal delivery (see `causal.rs`), applying the same
/// writes in any order leaves the same set: a write removes exactly the versions it had
/// seen, and a version is never applied after one that had seen it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register<T> {
    siblings: Vec<Version<T>>,
}

impl<T> Default for Register<T> {
    fn default() -> Register<T> {
        Register { siblings: Vec::new() }
    }
}

impl<T> Register<T> {
    /// A write of `value` by `dot` at `stamp`, made by a region that had seen `seen`: the
    /// versions it had seen are replaced; concurrent ones stay beside it. Applying the
    /// same write twice changes nothing.
    pub fn write(&mut self, dot: Dot, stamp: Stamp, seen: &VersionVector, value: T) {
        if self.siblings.iter().any(|version| version.dot == dot) {
            return;
        }
        self.siblings.retain(|version| !seen.contains(&version.dot));
        self.siblings.push(Version { dot, stamp, value });
        // Kept ranked, newest first, so every region lists siblings in one order.
        self.siblings.sort_by(|a, b| b.stamp.cmp(&a.stamp).then_with(|| a.dot.cmp(&b.dot)));
    }

    /// The version shown: the newest by hybrid time (region breaking ties).
    pub fn winner(&self) -> Option<&Version<T>> {
        self.siblings.first()
    }

    /// The concurrent versions that lost to the winner, newest first: a conflict's record
    /// until a write that saw them replaces them.
    pub fn losers(&self) -> &[Version<T>] {
        self.siblings.get(1..).unwrap_or_default()
    }

    /// Drops the losers (see `Row::discard_conflicts`, its only caller).
    pub(crate) fn keep_winner_only(&mut self) {
        self.siblings.truncate(1);
    }

    pub fn is_empty(&self) -> bool {
        self.siblings.is_empty()
    }

    /// Every version held (the winner first).
    pub fn versions(&self) -> &[Version<T>] {
        &self.siblings
    }
}
