//! Checker 7, leader placement (`--placement`): after healing, leadership moves by itself
//! to a voter of the highest leader priority; a non-voter is never promoted to voter and
//! never leads.

use crate::world::World;
use tern_core::Micros;

pub fn check(world: &World, preferred_leader: Result<Micros, String>) -> Vec<String> {
    let mut violations = Vec::new();
    if let Err(end) = preferred_leader {
        violations.push(format!("30 s after healing, leadership had not moved to a voter of the highest priority: {end}"));
    }
    for node in &world.nodes {
        let Some(replica) = node.replica() else { continue };
        let promoted: Vec<&String> = replica.membership().voters.iter().filter(|voter| world.non_voters.contains(*voter)).collect();
        if !promoted.is_empty() {
            violations.push(format!("{} counts non-voters {promoted:?} among its voters", node.id));
        }
    }
    for (epoch, leaders) in &world.observations.leaders {
        if let Some(non_voter) = leaders.iter().find(|leader| world.non_voters.contains(*leader)) {
            violations.push(format!("non-voter {non_voter} led epoch {epoch}"));
        }
    }
    violations
}
