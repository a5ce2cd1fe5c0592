//! Conflict avoidance (issue 14): each homed key has one home region, the only region
//! that writes it (others send their writes there). A key moves by a *handover*, a write
//! of the old home's own stream: the old home stops writing the key when it makes the
//! handover, and the new home starts only once it has applied it, and with it (regions
//! apply each other's writes in causal order) every write the old home made to the key.
//! So no instant exists at which two regions write one key, and homed keys never conflict.
//!
//! The naive alternative, the new region claiming the key by a write of its own while the
//! old home goes on writing until that claim reaches it, is what [`Homes::claim`] does:
//! the simulator runs it to count the conflicts it opens.

use std::collections::BTreeMap;

/// A key changing home, as a write of a region's stream carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handover<K> {
    pub key: K,
    /// The region that wrote the handover (the old home, or a naive claimant).
    pub from: String,
    pub to: String,
}

/// Why this region may not write, or move, a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HomeError {
    /// The key's home is another region: send the write there.
    HomedElsewhere { home: String },
    /// A move to the region that is already the key's home.
    AlreadyHome { home: String },
}

impl std::fmt::Display for HomeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HomeError::HomedElsewhere { home } => write!(f, "this key's home is region {home}: only {home} writes it"),
            HomeError::AlreadyHome { home } => write!(f, "this key's home is already region {home}"),
        }
    }
}

impl std::error::Error for HomeError {}

/// One region's view of which region is each key's home, as its stream has applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Homes<K: Ord + Clone> {
    region: String,
    homes: BTreeMap<K, String>,
}

impl<K: Ord + Clone> Homes<K> {
    /// `region`'s view, starting from `homes` (every region starts from the same).
    pub fn new(region: impl Into<String>, homes: BTreeMap<K, String>) -> Homes<K> {
        Homes { region: region.into(), homes }
    }

    pub fn home_of(&self, key: &K) -> Option<&str> {
        self.homes.get(key).map(String::as_str)
    }

    /// Whether this region may write `key` now: it is the key's home (or the key has none).
    ///
    /// # Errors
    /// The key's home is another region.
    pub fn may_write(&self, key: &K) -> Result<(), HomeError> {
        match self.homes.get(key) {
            Some(home) if *home != self.region => Err(HomeError::HomedElsewhere { home: home.clone() }),
            _ => Ok(()),
        }
    }

    /// This region, the key's home, hands it to `to`: returns the handover to write in
    /// this region's stream, and stops writing the key at once.
    ///
    /// # Errors
    /// This region is not the key's home, or `to` already is.
    pub fn hand_over(&mut self, key: &K, to: &str) -> Result<Handover<K>, HomeError> {
        self.may_write(key)?;
        if to == self.region {
            return Err(HomeError::AlreadyHome { home: to.to_string() });
        }
        self.homes.insert(key.clone(), to.to_string());
        Ok(Handover { key: key.clone(), from: self.region.clone(), to: to.to_string() })
    }

    /// The naive move: this region declares itself the key's home without the old home
    /// stopping first (what an application does by updating a home column where the user
    /// now is). Kept to measure the conflicts it opens; tern never does this.
    pub fn claim(&mut self, key: &K) -> Handover<K> {
        self.homes.insert(key.clone(), self.region.clone());
        Handover { key: key.clone(), from: self.region.clone(), to: self.region.clone() }
    }

    /// A handover from another region's stream, applied in causal order.
    pub fn apply(&mut self, handover: &Handover<K>) {
        self.homes.insert(handover.key.clone(), handover.to.clone());
    }

    /// How many keys each region is home to, in this view.
    pub fn counts(&self) -> BTreeMap<&str, usize> {
        let mut counts = BTreeMap::new();
        for home in self.homes.values() {
            *counts.entry(home.as_str()).or_insert(0) += 1;
        }
        counts
    }
}
