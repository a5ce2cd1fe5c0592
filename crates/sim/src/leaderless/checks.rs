//! The properties a leaderless run must show. Each is judged from the history and the
//! nodes' durable storage, never from the protocol's own bookkeeping.

use super::{keys, LeaderlessWorld};
use tern_core::leaderless::{Dot, Key, KeyVersions};

/// Whether `versions` hold the write `dot` or something that replaced it.
pub(super) fn covers(versions: &KeyVersions, dot: &Dot) -> bool {
    versions.context().get(&dot.0).is_some_and(|seen| *seen >= dot.1)
}

fn stored<'a>(world: &'a LeaderlessWorld, node: &str, key: &Key) -> Option<&'a KeyVersions> {
    world.nodes.iter().find(|candidate| candidate.name == node).and_then(|holder| holder.store.get(key))
}

/// With `R + W > N` and `W` strict replicas, a read overlaps every write acknowledged
/// before it began in at least one replica, so it sees the write or a newer one.
pub(super) fn strict_reads_see_acknowledged_writes(world: &LeaderlessWorld) -> Vec<String> {
    let n = world.options.replicas;
    let mut violations = Vec::new();
    for read in &world.reads {
        for write in world.writes.iter().filter(|write| write.key == read.key && write.strict && write.acked < read.invoked && read.r + write.w > n) {
            if !covers(&read.versions, &write.dot) {
                violations.push(format!(
                    "a read of {:?} at r={} begun at {} µs missed write {}#{} acknowledged at {} µs by w={} strict replicas (N={n})",
                    read.key.key, read.r, read.invoked, write.dot.0, write.dot.1, write.acked, write.w
                ));
            }
        }
    }
    violations
}

/// After healing, with neither reads nor anti-entropy: every hint stored reached its
/// replica (or its write got there another way).
pub(super) fn hints_delivered(world: &LeaderlessWorld) -> Vec<String> {
    let mut violations = Vec::new();
    for (fallback, target, key, versions) in &world.hints_stored {
        let held = stored(world, target, key);
        let reached = held.is_some_and(|held| held.covers(versions));
        if !reached {
            violations.push(format!("a hint for {target} on {fallback} (key {:?}) never reached {target} after healing", key.key));
        }
    }
    for node in &world.nodes {
        if !node.hints.is_empty() {
            violations.push(format!("{} still keeps {} hint(s) after healing", node.name, node.hints.len()));
        }
    }
    violations
}

/// Every replica of each of `keys` holds the same versions.
pub(super) fn replicas_identical(world: &LeaderlessWorld, keys: &[Key], when: &str) -> Vec<String> {
    let mut violations = Vec::new();
    for key in keys {
        let replicas = world.placement.replicas(key);
        let copies: Vec<(String, KeyVersions)> = replicas.iter().map(|node| (node.clone(), stored(world, node, key).cloned().unwrap_or_default())).collect();
        if let Some((first, versions)) = copies.first() {
            for (other, theirs) in &copies[1..] {
                if theirs != versions {
                    violations.push(format!(
                        "key {:?}: replicas {first} and {other} differ {when}: {:?} vs {:?}",
                        key.key,
                        versions.context(),
                        theirs.context()
                    ));
                }
            }
        }
    }
    violations
}

/// No acknowledged write is gone from any replica of its key: each holds it, or a write
/// that replaced it.
pub(super) fn nothing_lost(world: &LeaderlessWorld) -> Vec<String> {
    let mut violations = Vec::new();
    for key in keys() {
        for node in world.placement.replicas(&key) {
            let versions = stored(world, &node, &key).cloned().unwrap_or_default();
            for write in world.writes.iter().filter(|write| write.key == key) {
                if !covers(&versions, &write.dot) {
                    violations
                        .push(format!("write {}#{} on {:?}, acknowledged at w={}, is gone from replica {node}", write.dot.0, write.dot.1, key.key, write.w));
                }
            }
        }
    }
    violations
}
