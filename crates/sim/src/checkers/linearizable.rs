//! Checker 2, linearizability (Herlihy & Wing 1990) of `strong`/`linearizable` reads and
//! writes, per key, each key a register. The search is Wing & Gong's, with Lowe's
//! memoization of (linearized set, register value) ("Testing for linearizability", 2017).
//!
//! Writes acknowledged with a majority requirement must take effect between invocation
//! and response. Writes with an unknown outcome, or acknowledged with fewer copies (which
//! may be lost with the leader), may take effect at any point after invocation, or never.
//! Failed writes never happened; reads at weaker levels promise nothing here.

use crate::history::{is_durable_requirement, Op, OpKind, Outcome};
use std::collections::{BTreeMap, HashSet};
use tern_core::{Micros, ReadLevel};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Write(u64),
    Read(Option<u64>),
}

/// One operation on a register.
#[derive(Clone, Debug)]
pub struct RegisterOp {
    pub invoked: Micros,
    /// `None`: may linearize any time after invocation, or not at all.
    pub completed: Option<Micros>,
    pub action: Action,
}

/// Whether some order of the operations, respecting real time, explains every read.
pub fn is_linearizable(ops: &[RegisterOp]) -> bool {
    assert!(ops.len() <= 4096, "history too long for the search");
    let mut done = vec![false; ops.len()];
    let mut seen = HashSet::new();
    search(ops, &mut done, None, &mut seen)
}

fn search(ops: &[RegisterOp], done: &mut Vec<bool>, value: Option<u64>, seen: &mut HashSet<(Vec<bool>, Option<u64>)>) -> bool {
    // Every operation that must happen has happened.
    if ops.iter().zip(done.iter()).all(|(op, done)| *done || op.completed.is_none()) {
        return true;
    }
    if !seen.insert((done.clone(), value)) {
        return false;
    }
    // An op can go next only if it was invoked before every pending definite op completed.
    let horizon =
        ops.iter().zip(done.iter()).filter(|(op, done)| !**done && op.completed.is_some()).filter_map(|(op, _)| op.completed).min().unwrap_or(Micros::MAX);
    for index in 0..ops.len() {
        if done[index] || ops[index].invoked > horizon {
            continue;
        }
        let next_value = match ops[index].action {
            Action::Write(written) => Some(written),
            Action::Read(read) if read == value => value,
            Action::Read(_) => continue,
        };
        done[index] = true;
        if search(ops, done, next_value, seen) {
            return true;
        }
        done[index] = false;
    }
    false
}

pub fn check(history: &[Op], members: usize) -> Vec<String> {
    let mut per_key: BTreeMap<u8, Vec<RegisterOp>> = BTreeMap::new();
    for op in history {
        match (&op.kind, &op.outcome) {
            (OpKind::Write { .. }, Outcome::Failed) => {}
            (OpKind::Write { write_id, key, requirement }, outcome) => {
                let definite = matches!(outcome, Outcome::WriteOk(_)) && is_durable_requirement(*requirement, members);
                let completed = if definite { op.completed } else { None };
                per_key.entry(*key).or_default().push(RegisterOp { invoked: op.invoked, completed, action: Action::Write(*write_id) });
            }
            (OpKind::Read { key, level: ReadLevel::Strong | ReadLevel::Linearizable, .. }, Outcome::ReadOk { write_id, .. }) => {
                per_key.entry(*key).or_default().push(RegisterOp { invoked: op.invoked, completed: op.completed, action: Action::Read(*write_id) });
            }
            _ => {}
        }
    }
    per_key
        .into_iter()
        .filter(|(_, ops)| !is_linearizable(ops))
        .map(|(key, ops)| format!("strong/linearizable history of key {key} ({} operations) is not linearizable", ops.len()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(invoked: Micros, completed: Micros, action: Action) -> RegisterOp {
        RegisterOp { invoked, completed: Some(completed), action }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let ops = [op(0, 1, Action::Read(None)), op(2, 3, Action::Write(1)), op(4, 5, Action::Read(Some(1)))];
        assert!(is_linearizable(&ops));
    }

    #[test]
    fn reading_a_value_before_it_was_written_is_not() {
        let ops = [op(0, 1, Action::Read(Some(1))), op(2, 3, Action::Write(1))];
        assert!(!is_linearizable(&ops));
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_not() {
        let ops = [op(0, 1, Action::Write(1)), op(2, 3, Action::Write(2)), op(4, 5, Action::Read(Some(1)))];
        assert!(!is_linearizable(&ops));
    }

    #[test]
    fn concurrent_operations_may_take_either_order() {
        // The read overlaps both writes, so it may see either.
        let ops = [op(0, 10, Action::Write(1)), op(1, 11, Action::Write(2)), op(2, 12, Action::Read(Some(1))), op(13, 14, Action::Read(Some(1)))];
        assert!(is_linearizable(&ops));
        // Two later reads cannot disagree once both writes completed.
        let ops = [op(0, 10, Action::Write(1)), op(1, 11, Action::Write(2)), op(20, 21, Action::Read(Some(1))), op(22, 23, Action::Read(Some(2)))];
        assert!(!is_linearizable(&ops));
    }

    #[test]
    fn an_unknown_write_may_happen_late_or_never() {
        let unknown = RegisterOp { invoked: 0, completed: None, action: Action::Write(9) };
        assert!(is_linearizable(&[unknown.clone(), op(5, 6, Action::Read(None)), op(7, 8, Action::Read(Some(9)))]));
        assert!(is_linearizable(&[unknown.clone(), op(5, 6, Action::Read(None))]));
        // But once seen it cannot be unseen.
        assert!(!is_linearizable(&[unknown, op(5, 6, Action::Read(Some(9))), op(7, 8, Action::Read(None))]));
    }
}
