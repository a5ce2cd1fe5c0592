//! Checker 4, convergence: after healing and settling, every replica holds the same log
//! and therefore the same database (compared entry by entry, then key by key).

use crate::world::Node;

pub fn check(nodes: &[Node], settled: bool) -> Vec<String> {
    let mut violations = Vec::new();
    if !settled {
        let positions: Vec<String> = nodes.iter().map(|node| format!("{} at {}", node.id, node.last())).collect();
        violations.push(format!("cluster did not settle within the liveness phase: {}", positions.join(", ")));
    }
    let reference = &nodes[0];
    for node in &nodes[1..] {
        let (log, reference_log) = (node.disk.entries(), reference.disk.entries());
        if log != reference_log {
            let first_difference = log.iter().zip(reference_log).position(|(a, b)| a != b).unwrap_or(log.len().min(reference_log.len()));
            violations.push(format!(
                "{} and {} differ from log index {} ({} vs {} entries)",
                node.id,
                reference.id,
                first_difference + 1,
                log.len(),
                reference_log.len()
            ));
        }
    }
    violations
}
