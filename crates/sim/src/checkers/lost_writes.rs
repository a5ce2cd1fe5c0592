//! Checker 1, "no acknowledged write lost": every write acknowledged with a requirement
//! that promises a majority of durable copies (`semi-sync`, `sync`, `w=majority`,
//! `w=all`) is in every node's log once the cluster has healed and settled; so is the
//! entry an acknowledged write that changed nothing saw (`--rewrites`).
//!
//! Checker 6, "async honesty", reads the same data: writes acknowledged with fewer copies
//! (`w=1`, the `async` default) that are missing are counted separately. They may be lost
//! when the leader is lost; a simulator that can never find such a loss would prove that
//! checker 1 is vacuous. With automatic failover no leader's disk is destroyed, so every
//! such missing write must be in some node's rollback store, or on the disk of a node an
//! operator removed and then wiped: counted, never silently dropped.

use crate::history::{is_durable_requirement, Op, OpKind, Outcome};
use crate::world::Node;
use std::collections::BTreeSet;
use tern_core::{Entry, Position};

pub struct LostWrites {
    /// Durable-requirement writes missing somewhere: violations.
    pub violations: Vec<String>,
    /// Acknowledged `w=1`-style writes missing somewhere: expected under async.
    pub lost_async: Vec<u64>,
}

pub fn check(history: &[Op], nodes: &[Node], rollbacks_keep_everything: bool) -> LostWrites {
    let rolled_back: BTreeSet<u64> = nodes.iter().flat_map(|node| node.disk.rollback.iter().chain(&node.wiped).map(|entry| write_id(&entry.payload))).collect();
    let members = nodes.len();
    let held: Vec<BTreeSet<u64>> = nodes.iter().map(|node| node.disk.entries().iter().map(|entry| write_id(&entry.payload)).collect()).collect();
    // Entries by position (the same epoch at an index), for what writes that changed nothing saw.
    let positions: Vec<BTreeSet<Position>> = nodes.iter().map(|node| node.disk.entries().iter().map(Entry::position).collect()).collect();
    let mut result = LostWrites { violations: Vec::new(), lost_async: Vec::new() };
    for op in history {
        if let (OpKind::Rewrite { requirement }, Outcome::WriteOk(position)) = (&op.kind, &op.outcome) {
            // What it saw must survive as a write acknowledged there would.
            let missing: Vec<&str> = nodes.iter().zip(&positions).filter(|(_, held)| !held.contains(position)).map(|(node, _)| node.id.as_str()).collect();
            if position.index > 0 && !missing.is_empty() && is_durable_requirement(*requirement, members) {
                result.violations.push(format!(
                    "an acknowledged write that changed nothing ({requirement:?}) saw entry {position}, which is missing on {}",
                    missing.join(", ")
                ));
            }
            continue;
        }
        let (OpKind::Write { write_id: id, requirement, .. }, Outcome::WriteOk(position)) = (&op.kind, &op.outcome) else { continue };
        let missing: Vec<&str> = nodes.iter().zip(&held).filter(|(_, ids)| !ids.contains(id)).map(|(node, _)| node.id.as_str()).collect();
        if missing.is_empty() {
            continue;
        }
        if is_durable_requirement(*requirement, members) {
            result.violations.push(format!("lost acknowledged write {id} ({requirement:?}, acknowledged at {position}): missing on {}", missing.join(", ")));
        } else {
            if rollbacks_keep_everything && !rolled_back.contains(id) {
                result.violations.push(format!(
                    "acknowledged w=1 write {id} (at {position}) is missing on {} and in no rollback store (nor on a wiped disk)",
                    missing.join(", ")
                ));
            }
            result.lost_async.push(*id);
        }
    }
    result
}

pub fn write_id(payload: &[u8]) -> u64 {
    let mut id = [0u8; 8];
    id.copy_from_slice(&payload[..8]);
    u64::from_le_bytes(id)
}
