//! Checker 5, election safety and log matching (Raft §5.2, §5.3): at most one node acts
//! as leader in any epoch, and no follower ever persists an entry that differs from the
//! one its epoch's leader created at that position.

use crate::world::Observations;

pub fn check(observations: &Observations) -> Vec<String> {
    let mut violations: Vec<String> = observations
        .leaders
        .iter()
        .filter(|(_, leaders)| leaders.len() > 1)
        .map(|(epoch, leaders)| format!("epoch {epoch} had {} leaders: {}", leaders.len(), leaders.join(", ")))
        .collect();
    violations.extend(observations.mismatched_applies.iter().cloned());
    violations.extend(observations.broken_invariants.iter().map(|broken| format!("invariant broken: {broken}")));
    violations.extend(observations.overlapping_leases.iter().cloned());
    violations
}
