//! What the replica core expects of a node's durable storage, and a conformance suite
//! that checks an implementation against it.
//!
//! Two implementations exist: the SQLite engine (`tern-storage`), which the server
//! drives, and the simulator's disk model (`tern-sim`), which stands in for it in
//! deterministic runs. Whatever the simulator proves holds for the real system only as
//! far as the model answers as the engine does, so both run this one suite (as raft-rs and
//! openraft test their storage traits): a rule the two disagree on shows up as a case one
//! of them fails.
//!
//! The operations are those of the driving contract in [`crate::single_leader`]: a
//! leader commits its own entries (`Event::LeaderAppended`), a follower persists the
//! leader's (`Output::Persist`, then `Event::Persisted`), the leader reads its log
//! (`Output::ReadLog`) or learns it was compacted, a follower installs a snapshot
//! (`Event::SnapshotInstalled`) or rolls back and installs one (`Event::RolledBack`), and
//! a restarted node recovers `last` and `epoch_starts` for `Replica::start`.
//!
//! Payloads are opaque to the core and differ between implementations (the engine's is
//! an encoded list of SQL changes, the model's a write id and key), so the suite never
//! makes one: a [`Harness`] turns "write number n" into what a leader executes, and tells
//! which write numbers a node's database reflects. Entries a follower persists are always
//! ones another node of the same implementation logged as leader.
//!
//! Nothing here does I/O: implementations bring their own files.

use crate::types::{Entry, Position};
use std::fmt;

mod suite;

pub use suite::cases;

/// A node's durable storage, as the replica core relies on it. Every method that changes
/// something is durable when it returns: a crash afterwards loses none of it.
pub trait ReplicaStorage {
    /// What a leader executes to make an entry: a client's write.
    type Write;
    /// A copy of a node's whole state (data and log) made to be installed on another node.
    type Snapshot;
    type Error: fmt::Debug;

    /// The durable end of the log (`Position::ZERO` before the first entry): `last` for
    /// `Replica::start`, and what the database reflects.
    fn last(&self) -> Position;

    /// The lowest index `read_log` can still return (entries below were compacted away
    /// or lie under an installed snapshot; their effects remain).
    fn first_index(&self) -> u64;

    /// Where each epoch starts in the log, `(epoch, first index)`, ascending: recovered
    /// from the log for `Replica::start`.
    ///
    /// # Errors
    /// If the storage cannot be read.
    fn epoch_starts(&self) -> Result<Vec<(u64, u64)>, Self::Error>;

    /// Leader: executes `write` and commits it, with its log entry at `(epoch, index)`,
    /// in one durable step, and returns that entry (handed to `Event::LeaderAppended` and
    /// shipped to followers). Only if `index` continues the log (`last().index + 1`):
    /// otherwise the write is not executed, nothing changes, and `None` is returned.
    ///
    /// # Errors
    /// If the write cannot be committed; nothing changed then.
    fn append_own(&mut self, epoch: u64, index: u64, write: Self::Write) -> Result<Option<Entry>, Self::Error>;

    /// Follower (`Output::Persist`): applies the leader's entries and logs them in one
    /// durable step; returns the new durable end (for `Event::Persisted`). Entries it
    /// already holds (a snapshot installed meanwhile covered them) are skipped. A persist
    /// that would leave a gap, or whose held part is another epoch's entry, is refused
    /// whole: nothing changes.
    ///
    /// # Errors
    /// The refusal, or a failure to write; nothing changed then.
    fn persist(&mut self, entries: &[Entry]) -> Result<Position, Self::Error>;

    /// Up to `max_entries` entries from `from_index` on (fewer at the end of the log),
    /// or `None` if `from_index` is below `first_index` (the reader needs a snapshot).
    ///
    /// # Errors
    /// If the log cannot be read.
    fn read_log(&self, from_index: u64, max_entries: usize) -> Result<Option<Vec<Entry>>, Self::Error>;

    /// Drops log entries so that only the newest `retain` (at least one) remain to read,
    /// but never one after `committed` (see `Replica::compactable_through`): an entry not
    /// yet on a majority may still be rolled back, and the rollback store needs it. Never
    /// moves `first_index` backwards. The database keeps their effects.
    ///
    /// # Errors
    /// If the log cannot be written.
    fn compact(&mut self, retain: u64, committed: u64) -> Result<(), Self::Error>;

    /// A copy of this node's whole state, for another node to install.
    ///
    /// # Errors
    /// If the copy cannot be made.
    fn snapshot(&mut self) -> Result<Self::Snapshot, Self::Error>;

    /// Follower: replaces the whole state with `snapshot` if it is ahead of the durable
    /// end; otherwise drops it (installing would undo acknowledged writes). Returns the
    /// durable end afterwards, for `Event::SnapshotInstalled`.
    ///
    /// # Errors
    /// If the snapshot cannot be installed; the state is as it was then.
    fn install_snapshot(&mut self, snapshot: Self::Snapshot) -> Result<Position, Self::Error>;

    /// Follower whose log diverged after `common`: moves its log entries beyond `common`
    /// to the rollback store, then replaces the whole state with `snapshot` whatever its
    /// position (the local data holds effects of entries no other replica keeps).
    /// Returns the snapshot's position, for `Event::RolledBack`.
    ///
    /// # Errors
    /// If either step fails; the state is one the node had then.
    fn roll_back_and_install(&mut self, common: u64, snapshot: Self::Snapshot) -> Result<Position, Self::Error>;

    /// The positions of every entry ever moved to the rollback store, oldest first.
    ///
    /// # Errors
    /// If the store cannot be read.
    fn rolled_back(&self) -> Result<Vec<Position>, Self::Error>;
}

/// What the suite needs besides the trait: fresh nodes, crashes, and a view of payloads.
pub trait Harness {
    type Storage: ReplicaStorage;

    /// A new node's empty storage (each call a different node).
    fn create(&mut self) -> Self::Storage;

    /// The node crashes and restarts: whatever it kept in memory is gone, and the
    /// storage is opened again from what is durable.
    fn reopen(&mut self, storage: Self::Storage) -> Self::Storage;

    /// What a leader executes as write number `number` (1 to 200; each a different one).
    fn write(&self, number: u64) -> <Self::Storage as ReplicaStorage>::Write;

    /// The write numbers whose effects the node's database holds, ascending.
    fn writes_reflected(&self, storage: &Self::Storage) -> Vec<u64>;
}

/// One case of the suite: its name, and `Err` saying what differed from the contract.
pub type Case<H> = (&'static str, fn(&mut H) -> Result<(), String>);

/// Runs every case of the suite, each on nodes of its own, and returns their outcomes.
pub fn run<H: Harness>(harness: &mut H) -> Vec<(&'static str, Result<(), String>)> {
    cases::<H>().into_iter().map(|(name, case)| (name, case(harness))).collect()
}

/// Runs the suite and panics unless exactly the cases in `known_differences` fail, each
/// `(case, why this implementation differs)`: a difference stays written down, and one
/// that disappears (or a new failure) fails the test until the list is brought up to date.
///
/// # Panics
/// On an unexpected failure, an unexpected pass, or a name that is not a case.
pub fn assert_conforms<H: Harness>(harness: &mut H, known_differences: &[(&str, &str)]) {
    let names: Vec<&str> = cases::<H>().into_iter().map(|(name, _)| name).collect();
    let mut problems = Vec::new();
    for (name, _) in known_differences {
        if !names.contains(name) {
            problems.push(format!("{name}: listed as a known difference but no such case exists"));
        }
    }
    for (name, outcome) in run(harness) {
        let known = known_differences.iter().any(|(known, _)| *known == name);
        match (outcome, known) {
            (Ok(()), true) => problems.push(format!("{name}: listed as a known difference but passes now; remove it from the list")),
            (Err(failure), false) => problems.push(format!("{name}: {failure}")),
            _ => {}
        }
    }
    assert!(problems.is_empty(), "storage conformance:\n  {}", problems.join("\n  "));
}
