//! Causal delivery between regions: a write is applied only after everything its origin
//! had applied when it was made, so no region ever holds a version without the versions
//! it replaced having been there first.

use super::register::Dot;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How far a region has applied each region's stream of writes: every write of `region`
/// up to `self[region]` (they are applied in order, so one number per region says it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionVector {
    applied: BTreeMap<String, u64>,
}

impl VersionVector {
    pub fn new() -> VersionVector {
        VersionVector::default()
    }

    /// How far `region`'s writes are covered (0: none).
    pub fn get(&self, region: &str) -> u64 {
        self.applied.get(region).copied().unwrap_or(0)
    }

    /// Whether the write `dot` is covered.
    pub fn contains(&self, dot: &Dot) -> bool {
        dot.seq <= self.get(&dot.region)
    }

    /// Covers `dot` (and, streams being in order, everything before it in its region).
    pub fn advance(&mut self, dot: &Dot) {
        let entry = self.applied.entry(dot.region.clone()).or_insert(0);
        *entry = (*entry).max(dot.seq);
    }

    /// Covers every write `other` covers too.
    pub fn merge(&mut self, other: &VersionVector) {
        for (region, seq) in &other.applied {
            let entry = self.applied.entry(region.clone()).or_insert(0);
            *entry = (*entry).max(*seq);
        }
    }

    /// Whether every write `other` covers is covered here.
    pub fn dominates(&self, other: &VersionVector) -> bool {
        other.applied.iter().all(|(region, seq)| self.get(region) >= *seq)
    }

    /// `(region, how far)` for every region named, in region order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.applied.iter().map(|(region, seq)| (region.as_str(), *seq))
    }
}

/// `us-east:4,eu-west:2`: a session token under multi-leader (empty: nothing).
impl std::fmt::Display for VersionVector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.iter().map(|(region, seq)| format!("{region}:{seq}")).collect();
        f.write_str(&parts.join(","))
    }
}

impl std::str::FromStr for VersionVector {
    type Err = String;

    fn from_str(text: &str) -> Result<VersionVector, String> {
        let mut vector = VersionVector::new();
        for part in text.split(',').map(str::trim).filter(|part| !part.is_empty()) {
            let parsed = part.rsplit_once(':').and_then(|(region, seq)| Some((region.trim(), seq.trim().parse::<u64>().ok()?)));
            match parsed {
                Some((region, seq)) if !region.is_empty() => {
                    if vector.get(region) != 0 {
                        return Err(format!("region {region:?} appears twice in {text:?}"));
                    }
                    vector.merge(&std::iter::once((region, seq)).collect());
                }
                _ => return Err(format!("bad region token part {part:?}: expected REGION:NUMBER")),
            }
        }
        Ok(vector)
    }
}

impl<S: Into<String>> FromIterator<(S, u64)> for VersionVector {
    fn from_iter<I: IntoIterator<Item = (S, u64)>>(entries: I) -> VersionVector {
        VersionVector { applied: entries.into_iter().map(|(region, seq)| (region.into(), seq)).filter(|(_, seq)| *seq > 0).collect() }
    }
}

/// What became of a write handed to [`CausalQueue::receive`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// Applied already or waiting already (a resend after a reconnect): dropped.
    Duplicate,
    /// Waiting until what it depends on is applied (perhaps already ready).
    Queued,
}

/// A region's incoming writes from the others, released in causal order. `W` is the
/// write itself (a changeset, in the server). The applied vector is the region's durable
/// per-origin cursors: a driver restores it at start and the senders resend from there.
#[derive(Clone, Debug)]
pub struct CausalQueue<W> {
    applied: VersionVector,
    waiting: BTreeMap<Dot, (VersionVector, W)>,
}

impl<W> CausalQueue<W> {
    pub fn new(applied: VersionVector) -> CausalQueue<W> {
        CausalQueue { applied, waiting: BTreeMap::new() }
    }

    /// What this region has applied of each region's writes.
    pub fn applied(&self) -> &VersionVector {
        &self.applied
    }

    /// Writes received and not yet released.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// A write `dot` from another region, made after its region had applied `seen`.
    pub fn receive(&mut self, dot: Dot, seen: VersionVector, write: W) -> Received {
        if self.applied.contains(&dot) || self.waiting.contains_key(&dot) {
            return Received::Duplicate;
        }
        self.waiting.insert(dot, (seen, write));
        Received::Queued
    }

    /// The next write that may be applied now (its region's previous write and all it
    /// had seen are applied), counted as applied; the lowest such dot first, so every
    /// region releases ready writes in one order. The caller applies it durably with the
    /// new cursor in one transaction.
    pub fn release(&mut self) -> Option<(Dot, VersionVector, W)> {
        let ready = self.waiting.iter().find(|(dot, (seen, _))| self.ready(dot, seen)).map(|(dot, _)| dot.clone())?;
        let (seen, write) = self.waiting.remove(&ready).expect("found above");
        self.applied.advance(&ready);
        Some((ready, seen, write))
    }

    /// Records a write made here (its own region's stream), returning the vector it was
    /// made after: what the write had seen.
    pub fn record_local(&mut self, dot: &Dot) -> VersionVector {
        let seen = self.applied.clone();
        self.applied.advance(dot);
        seen
    }

    fn ready(&self, dot: &Dot, seen: &VersionVector) -> bool {
        self.applied.get(&dot.region) + 1 == dot.seq && seen.iter().all(|(region, seq)| region == dot.region || self.applied.get(region) >= seq)
    }
}
