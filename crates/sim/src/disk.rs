//! The simulator's model of a node's durable storage: the log (the source of truth), the
//! key-value database rebuilt from it, compaction, snapshots and the rollback store.
//!
//! It stands in for the storage engine (`tern_storage::Engine`) and implements the same
//! [`ReplicaStorage`] contract, so it runs the conformance suite the engine runs
//! (`tests/conformance.rs`). The world decides when each operation happens (persists
//! take simulated time, crashes lose queued ones); this decides what it does.

use std::collections::BTreeMap;
use std::fmt;
use tern_core::storage_contract::ReplicaStorage;
use tern_core::{Entry, Position};

/// A simulated entry carries one write: its id and key (the id is also the value).
pub fn encode(write_id: u64, key: u8) -> Vec<u8> {
    let mut bytes = write_id.to_le_bytes().to_vec();
    bytes.push(key);
    bytes
}

pub fn decode(payload: &[u8]) -> (u64, u8) {
    let mut id = [0u8; 8];
    id.copy_from_slice(&payload[..8]);
    (u64::from_le_bytes(id), payload[8])
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimDisk {
    /// Durable log: what survives a crash. Invariant: contiguous from index 1. Compaction
    /// only moves `first_index`: the model keeps every entry, its database is rebuilt
    /// from them.
    entries: Vec<Entry>,
    /// Lowest index the log can still ship (older entries were compacted; their effects
    /// remain). A follower needing older entries gets a snapshot.
    first_index: u64,
    /// key → (write id, index of that write): the database.
    kv: BTreeMap<u8, (u64, u64)>,
    /// Durable rollback store: entries removed because the leader of a later epoch
    /// lacked them.
    pub rollback: Vec<Entry>,
}

/// A node's whole state as shipped to another: in this model, its log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimSnapshot {
    pub entries: Vec<Entry>,
    pub position: Position,
}

/// What became of a snapshot offered to `install_snapshot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Installed {
    /// It replaced the state; the node is at this position.
    Replaced(Position),
    /// It was not ahead of the durable end (given here), so it was dropped.
    Dropped(Position),
}

/// A persist the disk refuses (the core must never ask for one): nothing changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PersistRefused {
    /// The entries would start after `at + 1`, leaving a gap.
    Gap { from: u64, at: u64 },
    /// The entries skip an index inside the batch.
    Hole { after: u64, next: u64 },
    /// The last entry at an index already held is another epoch's than the one held there.
    Conflict { entry: Position, held_epoch: u64 },
}

impl fmt::Display for PersistRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PersistRefused::Gap { from, at } => write!(f, "was asked to persist from {from} at {at}"),
            PersistRefused::Hole { after, next } => write!(f, "was asked to persist {next} right after {after}"),
            PersistRefused::Conflict { entry, held_epoch } => write!(f, "was asked to persist {entry} over its entry of epoch {held_epoch}"),
        }
    }
}

impl Default for SimDisk {
    fn default() -> SimDisk {
        SimDisk::new()
    }
}

impl SimDisk {
    pub fn new() -> SimDisk {
        SimDisk { entries: Vec::new(), first_index: 1, kv: BTreeMap::new(), rollback: Vec::new() }
    }

    /// Every entry the log holds, from index 1 (compacted ones too).
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The database: the write id and log index of the last write to `key`.
    pub fn read(&self, key: u8) -> Option<(u64, u64)> {
        self.kv.get(&key).copied()
    }

    pub fn last(&self) -> Position {
        self.entries.last().map_or(Position::ZERO, Entry::position)
    }

    pub fn first_index(&self) -> u64 {
        self.first_index
    }

    /// After a restart: the database is a function of the log, rebuilt from it.
    pub fn recover(&mut self) {
        self.kv.clear();
        for entry in &self.entries {
            let (write_id, key) = decode(&entry.payload);
            self.kv.insert(key, (write_id, entry.index));
        }
    }

    /// The disk is lost: returns the log it held.
    pub fn wipe(&mut self) -> Vec<Entry> {
        self.kv.clear();
        self.first_index = 1;
        std::mem::take(&mut self.entries)
    }

    /// Where each epoch starts in the log, from index 1 (compacted entries included).
    pub fn epoch_starts(&self) -> Vec<(u64, u64)> {
        let mut epoch_starts: Vec<(u64, u64)> = Vec::new();
        for entry in &self.entries {
            if epoch_starts.last().is_none_or(|(epoch, _)| *epoch != entry.epoch) {
                epoch_starts.push((entry.epoch, entry.index));
            }
        }
        epoch_starts
    }

    /// Leader: logs its own write as the entry at `(epoch, index)` if that continues the log.
    pub fn append_own(&mut self, epoch: u64, index: u64, payload: Vec<u8>) -> Option<Entry> {
        if index != self.last().index + 1 {
            return None;
        }
        let entry = Entry { index, epoch, payload: payload.into() };
        self.append(std::slice::from_ref(&entry));
        Some(entry)
    }

    /// Follower: applies and logs the leader's entries, skipping those already held (a
    /// snapshot covered them), as the engine does: all or nothing, refusing a batch that
    /// would leave a gap or whose held part is another epoch's.
    pub fn persist(&mut self, entries: &[Entry]) -> Result<Position, PersistRefused> {
        let held = self.last().index;
        if let Some(last_held) = entries.iter().take_while(|entry| entry.index <= held).last() {
            // Held means the same entry: another epoch's entry there is a divergence (this
            // node wrote it as an old leader), never to be skipped.
            let held_epoch = self.entries.iter().find(|entry| entry.index == last_held.index).map(|entry| entry.epoch);
            if let Some(held_epoch) = held_epoch.filter(|epoch| *epoch != last_held.epoch) {
                return Err(PersistRefused::Conflict { entry: last_held.position(), held_epoch });
            }
        }
        let new: Vec<Entry> = entries.iter().filter(|entry| entry.index > held).cloned().collect();
        if let Some(first) = new.first().filter(|first| first.index != held + 1) {
            return Err(PersistRefused::Gap { from: first.index, at: held });
        }
        if let Some(pair) = new.windows(2).find(|pair| pair[1].index != pair[0].index + 1) {
            return Err(PersistRefused::Hole { after: pair[0].index, next: pair[1].index });
        }
        self.append(&new);
        Ok(self.last())
    }

    fn append(&mut self, entries: &[Entry]) {
        for entry in entries {
            let (write_id, key) = decode(&entry.payload);
            self.kv.insert(key, (write_id, entry.index));
            self.entries.push(entry.clone());
        }
    }

    /// Up to `max_entries` from `from_index`, or `None` if it was compacted away.
    pub fn read_log(&self, from_index: u64, max_entries: usize) -> Option<Vec<Entry>> {
        if from_index < self.first_index {
            return None;
        }
        Some(self.entries.iter().filter(|entry| entry.index >= from_index).take(max_entries).cloned().collect())
    }

    /// Keeps only the newest `retain` entries shippable (as `Engine::compact`).
    pub fn compact(&mut self, retain: u64, committed: u64) {
        let first_kept = (self.last().index.saturating_sub(retain.max(1)) + 1).min(committed.saturating_add(1));
        self.first_index = self.first_index.max(first_kept);
    }

    pub fn snapshot(&self) -> SimSnapshot {
        SimSnapshot { entries: self.entries.clone(), position: self.last() }
    }

    /// Replaces the whole state with `snapshot` unless it is not ahead of the durable
    /// end: installing it would undo writes this node has acknowledged.
    pub fn install_snapshot(&mut self, snapshot: SimSnapshot) -> Installed {
        if snapshot.position.index <= self.last().index {
            return Installed::Dropped(self.last());
        }
        self.replace(snapshot);
        Installed::Replaced(self.last())
    }

    /// Moves the entries beyond `common` to the rollback store, then installs `snapshot`
    /// whatever its position; returns how many entries moved and the new position.
    pub fn roll_back_and_install(&mut self, common: u64, snapshot: SimSnapshot) -> (usize, Position) {
        let diverged: Vec<Entry> = self.entries.iter().filter(|entry| entry.index > common).cloned().collect();
        let count = diverged.len();
        self.rollback.extend(diverged);
        self.replace(snapshot);
        (count, self.last())
    }

    fn replace(&mut self, snapshot: SimSnapshot) {
        self.entries = snapshot.entries;
        self.first_index = snapshot.position.index + 1;
        self.recover();
    }
}

impl ReplicaStorage for SimDisk {
    /// A payload made by [`encode`].
    type Write = Vec<u8>;
    type Snapshot = SimSnapshot;
    type Error = PersistRefused;

    fn last(&self) -> Position {
        SimDisk::last(self)
    }

    fn first_index(&self) -> u64 {
        SimDisk::first_index(self)
    }

    fn epoch_starts(&self) -> Result<Vec<(u64, u64)>, PersistRefused> {
        Ok(SimDisk::epoch_starts(self))
    }

    fn append_own(&mut self, epoch: u64, index: u64, write: Vec<u8>) -> Result<Option<Entry>, PersistRefused> {
        Ok(SimDisk::append_own(self, epoch, index, write))
    }

    fn persist(&mut self, entries: &[Entry]) -> Result<Position, PersistRefused> {
        SimDisk::persist(self, entries)
    }

    fn read_log(&self, from_index: u64, max_entries: usize) -> Result<Option<Vec<Entry>>, PersistRefused> {
        Ok(SimDisk::read_log(self, from_index, max_entries))
    }

    fn compact(&mut self, retain: u64, committed: u64) -> Result<(), PersistRefused> {
        SimDisk::compact(self, retain, committed);
        Ok(())
    }

    fn snapshot(&mut self) -> Result<SimSnapshot, PersistRefused> {
        Ok(SimDisk::snapshot(self))
    }

    fn install_snapshot(&mut self, snapshot: SimSnapshot) -> Result<Position, PersistRefused> {
        match SimDisk::install_snapshot(self, snapshot) {
            Installed::Replaced(position) | Installed::Dropped(position) => Ok(position),
        }
    }

    fn roll_back_and_install(&mut self, common: u64, snapshot: SimSnapshot) -> Result<Position, PersistRefused> {
        Ok(SimDisk::roll_back_and_install(self, common, snapshot).1)
    }

    fn rolled_back(&self) -> Result<Vec<Position>, PersistRefused> {
        Ok(self.rollback.iter().map(Entry::position).collect())
    }
}
