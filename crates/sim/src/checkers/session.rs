//! Checker 3, session guarantees (Terry et al., "Session Guarantees for Weakly
//! Consistent Replicated Data", 1994): a `level=session` read carrying the client's
//! position observes the client's own earlier writes (read-your-writes) and never an
//! older version than an earlier read of the same client saw, at any level (monotonic
//! reads: every read advances the client's position token).
//!
//! Versions are compared by the log index of the write that produced them. Only writes
//! that survived to the end count: a write lost with a destroyed leader (possible under
//! async) cannot be read back by anyone, and checker 1 judges whether losing it was allowed.

use crate::history::{Op, OpKind, Outcome};
use std::collections::{BTreeMap, BTreeSet};

pub fn check(history: &[Op], surviving: &BTreeSet<u64>) -> Vec<String> {
    let mut violations = Vec::new();
    // (client, key) → newest surviving version the session must see.
    let mut floor: BTreeMap<(usize, u8), (u64, u64)> = BTreeMap::new();
    let mut ops: Vec<(usize, &Op)> = history.iter().enumerate().collect();
    ops.sort_by_key(|(index, op)| (op.client, op.invoked, *index));
    for (index, op) in ops {
        match (&op.kind, &op.outcome) {
            (OpKind::Write { write_id, key, .. }, Outcome::WriteOk(position)) if surviving.contains(write_id) => {
                let entry = floor.entry((op.client, *key)).or_insert((0, 0));
                if position.index > entry.0 {
                    *entry = (position.index, *write_id);
                }
            }
            (OpKind::Read { key, level, .. }, Outcome::ReadOk { write_id, write_index, .. }) => {
                let seen = if write_id.is_some_and(|id| surviving.contains(&id)) { *write_index } else { 0 };
                let checked = *level == tern_core::ReadLevel::Session;
                if let (true, Some((required, required_write))) = (checked, floor.get(&(op.client, *key))) {
                    if seen < *required && write_id.is_none_or(|id| surviving.contains(&id)) {
                        violations.push(format!(
                            "op {index}: client {} session read of key {key} saw version {seen} (write {write_id:?}) but had already written or read version {required} (write {required_write})",
                            op.client
                        ));
                    }
                }
                if let Some(id) = write_id.filter(|id| surviving.contains(id)) {
                    let entry = floor.entry((op.client, *key)).or_insert((0, 0));
                    if *write_index > entry.0 {
                        *entry = (*write_index, id);
                    }
                }
            }
            _ => {}
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_core::{AckRequirement, Position, ReadLevel};

    fn write(client: usize, at: u64, write_id: u64, index: u64) -> Op {
        Op {
            client,
            kind: OpKind::Write { write_id, key: 0, requirement: AckRequirement::Majority },
            invoked: at,
            completed: Some(at + 1),
            outcome: Outcome::WriteOk(Position::new(1, index)),
        }
    }

    fn read(client: usize, at: u64, level: ReadLevel, write_id: Option<u64>, write_index: u64) -> Op {
        Op {
            client,
            kind: OpKind::Read { key: 0, level, after: Position::ZERO },
            invoked: at,
            completed: Some(at + 1),
            outcome: Outcome::ReadOk { write_id, write_index, node_last: Position::new(1, write_index) },
        }
    }

    #[test]
    fn a_session_read_missing_its_own_write_is_reported() {
        let surviving: BTreeSet<u64> = [7].into();
        let history = [write(0, 10, 7, 5), read(0, 20, ReadLevel::Session, None, 0)];
        assert_eq!(check(&history, &surviving).len(), 1);
        // Another client promised nothing about client 0's writes.
        let history = [write(0, 10, 7, 5), read(1, 20, ReadLevel::Session, None, 0)];
        assert!(check(&history, &surviving).is_empty());
    }

    #[test]
    fn a_session_read_going_back_after_any_read_is_reported() {
        let surviving: BTreeSet<u64> = [7, 8].into();
        let history = [read(0, 10, ReadLevel::Strong, Some(8), 6), read(0, 20, ReadLevel::Session, Some(7), 5)];
        assert_eq!(check(&history, &surviving).len(), 1);
        // Unless what was seen first did not survive (lost with a destroyed leader).
        let surviving: BTreeSet<u64> = [7].into();
        assert!(check(&history, &surviving).is_empty());
    }
}
