//! Plain values shared by the core, the storage engine and the drivers.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A node's name as given in `--cluster` (`n1`, `n2`, ...).
pub type NodeId = String;

/// Time as seen by the core: microseconds on the driver's monotonic clock.
///
/// The core never reads a clock; every handler receives `now` from its driver.
/// Invariants: non-decreasing across calls into one `Replica`.
pub type Micros = u64;

/// A place in the replicated log: the leader epoch that wrote the entry and its index.
///
/// Every write response carries one; `level=session&after=<position>` waits for it.
/// Index 0 is "before the first entry".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position {
    pub epoch: u64,
    pub index: u64,
}

impl Position {
    pub const ZERO: Position = Position { epoch: 0, index: 0 };

    pub fn new(epoch: u64, index: u64) -> Position {
        Position { epoch, index }
    }
}

impl fmt::Display for Position {
    /// Rendered as `epoch.index`, the form clients pass back in `after=`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.epoch, self.index)
    }
}

impl std::str::FromStr for Position {
    type Err = String;

    /// Accepts `epoch.index` (as returned by writes) or a bare `index`.
    fn from_str(text: &str) -> Result<Position, String> {
        let bad = || format!("bad position {text:?}: expected EPOCH.INDEX, as returned in a write's \"position\"");
        match text.split_once('.') {
            Some((epoch, index)) => Ok(Position { epoch: epoch.trim().parse().map_err(|_| bad())?, index: index.trim().parse().map_err(|_| bad())? }),
            None => Ok(Position { epoch: 0, index: text.trim().parse().map_err(|_| bad())? }),
        }
    }
}

/// One replicated log entry. The payload is opaque to the core: the storage engine
/// encodes a statement batch or a row changeset into it and decodes it on apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub index: u64,
    pub epoch: u64,
    pub payload: SharedBytes,
}

/// Bytes shared, not copied, when cloned: an entry goes to the log cache, to every
/// follower's append and to the storage thread, and a bulk insert's entry can hold a
/// hundred megabytes (copying it for two followers took the replica loop 0.1–0.8 s, long
/// enough to miss its heartbeats). Serialized as a byte string (see [`crate::byte_buf`]).
#[derive(Clone, PartialEq, Eq)]
pub struct SharedBytes(std::sync::Arc<[u8]>);

impl std::ops::Deref for SharedBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for SharedBytes {
    fn from(bytes: Vec<u8>) -> SharedBytes {
        SharedBytes(bytes.into())
    }
}

impl PartialEq<Vec<u8>> for SharedBytes {
    fn eq(&self, other: &Vec<u8>) -> bool {
        *self.0 == **other
    }
}

impl std::fmt::Debug for SharedBytes {
    fn fmt(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        self.0.fmt(formatter)
    }
}

impl Serialize for SharedBytes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        crate::byte_buf::serialize(&self.0, serializer)
    }
}

impl<'de> Deserialize<'de> for SharedBytes {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<SharedBytes, D::Error> {
        crate::byte_buf::deserialize(deserializer).map(SharedBytes::from)
    }
}

impl Entry {
    pub fn position(&self) -> Position {
        Position { epoch: self.epoch, index: self.index }
    }
}

/// The cluster default for when a write is acknowledged (`--ack`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckMode {
    /// After the leader's local durable commit.
    Async,
    /// After the leader and enough followers to make a majority have it durably.
    SemiSync,
    /// After every in-sync follower (and at least a majority) has it durably.
    Sync,
}

impl AckMode {
    pub fn name(self) -> &'static str {
        match self {
            AckMode::Async => "async",
            AckMode::SemiSync => "semi-sync",
            AckMode::Sync => "sync",
        }
    }

    pub fn requirement(self) -> AckRequirement {
        match self {
            AckMode::Async => AckRequirement::Nodes(1),
            AckMode::SemiSync => AckRequirement::Majority,
            AckMode::Sync => AckRequirement::AllInSync,
        }
    }
}

impl std::str::FromStr for AckMode {
    type Err = String;
    fn from_str(text: &str) -> Result<AckMode, String> {
        match text {
            "async" => Ok(AckMode::Async),
            "semi-sync" | "semisync" | "semi" => Ok(AckMode::SemiSync),
            "sync" => Ok(AckMode::Sync),
            other => Err(format!("unknown ack mode {other:?}: expected async, semi-sync or sync")),
        }
    }
}

/// How many durable copies a single write waits for (the per-request `w=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckRequirement {
    /// This many nodes, the leader included (`w=1` is the leader alone).
    Nodes(usize),
    /// A majority of the cluster, the leader included (`w=majority`).
    Majority,
    /// Every in-sync follower, and never fewer than a majority (`--ack sync`).
    AllInSync,
    /// Every member of the cluster (`w=all`).
    All,
}

impl AckRequirement {
    /// Parses `w=`: `1`, `2`, ..., `majority`, `all`.
    pub fn parse(text: &str) -> Result<AckRequirement, String> {
        match text {
            "majority" => Ok(AckRequirement::Majority),
            "all" => Ok(AckRequirement::All),
            "sync" => Ok(AckRequirement::AllInSync),
            number => match number.parse::<usize>() {
                Ok(count) if count >= 1 => Ok(AckRequirement::Nodes(count)),
                _ => Err(format!("bad w={number:?}: expected 1, 2, ..., majority or all")),
            },
        }
    }
}

/// Read consistency, per request (`level=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadLevel {
    /// This node, however stale.
    None,
    /// This node while its measured lag is under a bound, else the leader.
    Bounded,
    /// This node once it has applied the session's position (read-your-writes).
    Session,
    /// The leader, without confirming it still is the leader.
    Weak,
    /// The leader, after a quorum confirms its leadership and what the read saw is committed.
    Strong,
    /// Same guarantee as `Strong` in tern (rqlite distinguishes them by mechanism).
    Linearizable,
}

impl ReadLevel {
    pub fn name(self) -> &'static str {
        match self {
            ReadLevel::None => "none",
            ReadLevel::Bounded => "bounded",
            ReadLevel::Session => "session",
            ReadLevel::Weak => "weak",
            ReadLevel::Strong => "strong",
            ReadLevel::Linearizable => "linearizable",
        }
    }
}

impl std::str::FromStr for ReadLevel {
    type Err = String;
    fn from_str(text: &str) -> Result<ReadLevel, String> {
        match text {
            "none" => Ok(ReadLevel::None),
            "bounded" => Ok(ReadLevel::Bounded),
            "session" => Ok(ReadLevel::Session),
            "weak" => Ok(ReadLevel::Weak),
            "strong" => Ok(ReadLevel::Strong),
            "linearizable" => Ok(ReadLevel::Linearizable),
            other => Err(format!("unknown read level {other:?}: expected none, bounded, session, weak, strong or linearizable")),
        }
    }
}

/// How a cluster's regions share writes (`--topology`), fixed when the cluster is made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Topology {
    /// One leader for the whole cluster, elected by quorum vote.
    #[default]
    SingleLeader,
    /// A leader in every region (elected among that region's nodes), the regions
    /// exchanging their writes asynchronously and settling conflicts per row.
    MultiLeader,
    /// No leader: every row on N nodes chosen by consistent hashing, any node
    /// coordinating any request, `w=`/`r=` quorums, read repair, hints, anti-entropy.
    Leaderless,
}

impl Topology {
    pub fn name(self) -> &'static str {
        match self {
            Topology::SingleLeader => "single-leader",
            Topology::MultiLeader => "multi-leader",
            Topology::Leaderless => "leaderless",
        }
    }
}

/// Replication log format (`--log-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogFormat {
    /// SQL text plus parameters, non-deterministic functions rewritten to literals.
    Statement,
    /// Per-transaction row images (SQLite session changesets), DDL as statements.
    Row,
    /// SQLite's own write-ahead-log page images, one whole transaction per entry;
    /// followers' database files become byte-identical to the leader's.
    Physical,
}

impl LogFormat {
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Statement => "statement",
            LogFormat::Row => "row",
            LogFormat::Physical => "physical",
        }
    }
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(text: &str) -> Result<LogFormat, String> {
        match text {
            "statement" => Ok(LogFormat::Statement),
            "row" => Ok(LogFormat::Row),
            "physical" => Ok(LogFormat::Physical),
            other => Err(format!("unknown log format {other:?}: expected statement, row or physical")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_round_trips_through_text() {
        let position = Position::new(3, 1234);
        assert_eq!(position.to_string(), "3.1234");
        assert_eq!("3.1234".parse::<Position>().unwrap(), position);
        assert_eq!("17".parse::<Position>().unwrap(), Position::new(0, 17));
        assert!("x.1".parse::<Position>().is_err());
    }

    #[test]
    fn w_parses_every_documented_form() {
        assert_eq!(AckRequirement::parse("1").unwrap(), AckRequirement::Nodes(1));
        assert_eq!(AckRequirement::parse("majority").unwrap(), AckRequirement::Majority);
        assert_eq!(AckRequirement::parse("all").unwrap(), AckRequirement::All);
        assert!(AckRequirement::parse("0").is_err());
        assert!(AckRequirement::parse("most").is_err());
    }
}

/// FNV-1a, 64-bit: a small stable hash (the same on every node and across versions),
/// for raft ids derived from node names and for comparing replicas' contents.
#[derive(Clone, Copy, Debug)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Fnv1a {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    pub fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    pub fn finish(self) -> u64 {
        self.0
    }

    pub fn hash(bytes: &[u8]) -> u64 {
        let mut hasher = Fnv1a::default();
        hasher.write(bytes);
        hasher.finish()
    }
}

#[cfg(test)]
mod fnv_tests {
    use super::Fnv1a;

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        assert_eq!(Fnv1a::hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(Fnv1a::hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(Fnv1a::hash(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
