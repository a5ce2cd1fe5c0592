//! The properties a multi-leader run must show, judged after healing: every region holds
//! every write made anywhere and the same rows; no write vanished unless a write that
//! saw it replaced it; what each row shows is what the policy says, computed here from
//! the history alone (not by the registers under test); and no `w=regions` wait was
//! answered before every region held its write.

use super::{RegionWorld, COLUMNS, KEYS};
use tern_core::multi_leader::{Policy, RowWrite};

pub(super) fn check(world: &RegionWorld) -> Vec<String> {
    let mut violations: Vec<String> = world.premature.iter().take(3).cloned().collect();
    let first = &world.regions[0];
    for region in &world.regions {
        if region.holds() != world.made {
            violations.push(format!("{} holds {:?} after healing, but the regions made {:?}", region.name, region.holds(), world.made));
        }
        for key in 0..KEYS {
            if region.rows[key] != first.rows[key] {
                violations.push(format!("key {key}: {} and {} differ after healing", first.name, region.name));
            }
        }
    }
    if world.options.homes {
        let conflicts: usize = (0..KEYS).map(|key| first.rows[key].conflicts().len()).sum();
        if conflicts > 0 {
            violations.push(format!("{conflicts} conflict(s) on homed keys after {} move(s): two regions wrote one key at once", world.moves));
        }
        if let Some(other) = world.regions.iter().find(|region| (0..KEYS).any(|key| region.homes.home_of(&key) != first.homes.home_of(&key))) {
            violations.push(format!("{} and {} disagree on which region is each key's home after healing", first.name, other.name));
        }
    }
    for (key, write) in &world.history {
        let held = first.rows[*key].held_dots().contains(&write.dot);
        let replaced = world.history.iter().any(|(other_key, other)| other_key == key && other.dot != write.dot && other.seen.contains(&write.dot));
        if !held && !replaced {
            violations.push(format!("write {} on key {key} vanished: neither shown, nor on record, nor replaced by a write that saw it", write.dot));
        }
    }
    for key in 0..KEYS {
        let writes: Vec<&RowWrite<u64>> = world.history.iter().filter(|(other, _)| *other == key).map(|(_, write)| write).collect();
        let (expected, losers) = expected_row(world.options.policy, &writes);
        let shown = first.rows[key].visible();
        if shown != expected {
            violations.push(format!("key {key} shows {shown:?}, but the {} policy gives {expected:?}", world.options.policy.name()));
        }
        let recorded = first.rows[key].conflicts().len();
        if recorded != losers {
            violations.push(format!("key {key} keeps {recorded} conflict record(s), but {losers} concurrent version(s) lost"));
        }
    }
    violations.truncate(5);
    violations
}

/// Of `writes`, those no other of them had seen: the concurrent survivors.
fn maximal<'a>(writes: &[&'a RowWrite<u64>]) -> Vec<&'a RowWrite<u64>> {
    writes.iter().filter(|write| !writes.iter().any(|other| other.dot != write.dot && other.seen.contains(&write.dot))).copied().collect()
}

/// What the policy makes the row show, and how many losing versions it keeps.
fn expected_row(policy: Policy, writes: &[&RowWrite<u64>]) -> (Option<Vec<Option<u64>>>, usize) {
    match policy {
        Policy::LastWriterWins | Policy::KeepBoth => {
            let survivors = maximal(writes);
            let winner = survivors.iter().max_by(|a, b| a.stamp.cmp(&b.stamp));
            (winner.and_then(|write| write.values.clone()), survivors.len().saturating_sub(1))
        }
        Policy::ColumnMerge => {
            let mut losers = 0;
            let mut winners: Vec<Option<(&RowWrite<u64>, Option<u64>)>> = Vec::new();
            for column in 0..COLUMNS {
                // A write touches a column if it set it or deleted the row.
                let touching: Vec<&RowWrite<u64>> =
                    writes.iter().filter(|write| write.values.as_ref().is_none_or(|values| values[column].is_some())).copied().collect();
                let survivors = maximal(&touching);
                losers += survivors.len().saturating_sub(1);
                let winner = survivors.into_iter().max_by(|a, b| a.stamp.cmp(&b.stamp));
                winners.push(winner.map(|write| (write, write.values.as_ref().and_then(|values| values[column]))));
            }
            let newest = winners.iter().flatten().max_by(|a, b| a.0.stamp.cmp(&b.0.stamp));
            let shown = match newest {
                Some((write, _)) if write.values.is_some() => Some(winners.iter().map(|winner| winner.and_then(|(_, value)| value)).collect()),
                _ => None,
            };
            (shown, losers)
        }
    }
}
