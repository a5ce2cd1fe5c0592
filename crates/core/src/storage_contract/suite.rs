//! The cases of the conformance suite: each builds its nodes from nothing through the
//! trait alone, and checks exact positions, log contents and reflected writes.

use super::{Harness, ReplicaStorage};
use crate::types::{Entry, Position};
use std::fmt::Debug;
use std::ops::RangeInclusive;

type Outcome = Result<(), String>;

/// Every case, in the order they run.
pub fn cases<H: Harness>() -> Vec<super::Case<H>> {
    vec![
        ("an_empty_storage_starts_before_the_first_entry", an_empty_storage_starts_before_the_first_entry),
        ("a_leader_appends_only_entries_that_continue_its_log", a_leader_appends_only_entries_that_continue_its_log),
        ("a_follower_persists_the_leaders_entries_as_they_are", a_follower_persists_the_leaders_entries_as_they_are),
        ("a_follower_skips_entries_it_already_holds", a_follower_skips_entries_it_already_holds),
        ("a_persist_that_would_leave_a_gap_is_refused_and_changes_nothing", a_persist_that_would_leave_a_gap_is_refused_and_changes_nothing),
        ("a_held_entry_of_another_epoch_is_refused_not_skipped", a_held_entry_of_another_epoch_is_refused_not_skipped),
        ("epoch_starts_are_recovered_from_the_log", epoch_starts_are_recovered_from_the_log),
        ("the_log_is_read_from_any_retained_index", the_log_is_read_from_any_retained_index),
        ("compaction_keeps_the_newest_entries_and_every_effect", compaction_keeps_the_newest_entries_and_every_effect),
        ("epoch_starts_describe_only_the_retained_log", epoch_starts_describe_only_the_retained_log),
        ("a_snapshot_ahead_of_the_durable_end_replaces_the_state", a_snapshot_ahead_of_the_durable_end_replaces_the_state),
        ("a_snapshot_not_ahead_of_the_durable_end_is_dropped", a_snapshot_not_ahead_of_the_durable_end_is_dropped),
        ("after_a_snapshot_the_log_starts_after_it", after_a_snapshot_the_log_starts_after_it),
        ("epoch_starts_after_a_snapshot_are_those_of_its_log", epoch_starts_after_a_snapshot_are_those_of_its_log),
        ("rollback_moves_diverged_entries_aside_and_installs_the_snapshot", rollback_moves_diverged_entries_aside_and_installs_the_snapshot),
        ("compaction_keeps_entries_a_rollback_may_need", compaction_keeps_entries_a_rollback_may_need),
        ("everything_durable_survives_a_crash", everything_durable_survives_a_crash),
        ("a_snapshot_and_the_rollback_store_survive_a_crash", a_snapshot_and_the_rollback_store_survive_a_crash),
    ]
}

fn expect<T: PartialEq + Debug>(what: &str, actual: T, expected: T) -> Outcome {
    if actual == expected {
        Ok(())
    } else {
        Err(format!("{what}: expected {expected:?}, got {actual:?}"))
    }
}

fn ok<T, E: Debug>(what: &str, result: Result<T, E>) -> Result<T, String> {
    result.map_err(|error| format!("{what} failed: {error:?}"))
}

fn at(epoch: u64, index: u64) -> Position {
    Position::new(epoch, index)
}

fn numbers(range: RangeInclusive<u64>) -> Vec<u64> {
    range.collect()
}

fn positions(entries: &[Entry]) -> Vec<Position> {
    entries.iter().map(Entry::position).collect()
}

/// The positions `read_log` returns from `from_index` (`None`: compacted away).
fn logged<S: ReplicaStorage>(storage: &S, from_index: u64) -> Result<Option<Vec<Position>>, String> {
    Ok(ok("reading the log", storage.read_log(from_index, 1_000))?.map(|entries| positions(&entries)))
}

/// `storage`, leading in `epoch`, executes the writes `numbers`, each continuing its log.
fn lead<H: Harness>(harness: &H, storage: &mut H::Storage, epoch: u64, numbers: RangeInclusive<u64>) -> Result<Vec<Entry>, String> {
    let mut entries = Vec::new();
    for number in numbers {
        let index = storage.last().index + 1;
        let Some(entry) = ok("a leader's write", storage.append_own(epoch, index, harness.write(number)))? else {
            return Err(format!("write {number} at {epoch}.{index}, continuing the log, was refused"));
        };
        expect("the position of the entry a leader logged", entry.position(), at(epoch, index))?;
        entries.push(entry);
    }
    Ok(entries)
}

/// A node whose log diverged: `old` led epoch 1 through writes 1..=`old_writes`, of which
/// only the first two reached `new`, which then led epoch 2 with write 100. Returns them
/// and `new`'s snapshot at 2.3.
fn diverged<H: Harness>(harness: &mut H, old_writes: u64) -> Result<(H::Storage, H::Storage, <H::Storage as ReplicaStorage>::Snapshot), String> {
    let mut old = harness.create();
    let mut new = harness.create();
    let entries = lead(harness, &mut old, 1, 1..=old_writes)?;
    ok("persisting", new.persist(&entries[..2]))?;
    lead(harness, &mut new, 2, 100..=100)?;
    let snapshot = ok("a snapshot", new.snapshot())?;
    Ok((old, new, snapshot))
}

fn an_empty_storage_starts_before_the_first_entry<H: Harness>(harness: &mut H) -> Outcome {
    let storage = harness.create();
    expect("last", storage.last(), Position::ZERO)?;
    expect("first index", storage.first_index(), 1)?;
    expect("epoch starts", ok("epoch starts", storage.epoch_starts())?, vec![])?;
    expect("the log from 1", logged(&storage, 1)?, Some(vec![]))?;
    expect("writes reflected", harness.writes_reflected(&storage), vec![])?;
    expect("rolled back", ok("the rollback store", storage.rolled_back())?, vec![])
}

fn a_leader_appends_only_entries_that_continue_its_log<H: Harness>(harness: &mut H) -> Outcome {
    let mut leader = harness.create();
    expect("a first write at index 2", ok("a leader's write", leader.append_own(1, 2, harness.write(1)))?, None)?;
    expect("writes reflected after the refusal", harness.writes_reflected(&leader), vec![])?;
    let first = ok("a leader's write", leader.append_own(1, 1, harness.write(1)))?;
    expect("the first entry", first.as_ref().map(Entry::position), Some(at(1, 1)))?;
    expect("a second write at the index taken", ok("a leader's write", leader.append_own(1, 1, harness.write(2)))?, None)?;
    expect("a second write at index 3", ok("a leader's write", leader.append_own(1, 3, harness.write(2)))?, None)?;
    expect("last after the refusals", leader.last(), at(1, 1))?;
    expect("writes reflected after the refusals", harness.writes_reflected(&leader), vec![1])?;
    let second = ok("a leader's write", leader.append_own(1, 2, harness.write(2)))?;
    expect("the second entry", second.as_ref().map(Entry::position), Some(at(1, 2)))?;
    expect("last", leader.last(), at(1, 2))?;
    expect("writes reflected", harness.writes_reflected(&leader), vec![1, 2])?;
    let written: Vec<Entry> = first.into_iter().chain(second).collect();
    expect("the log holds the entries returned", ok("reading the log", leader.read_log(1, 10))?, Some(written))
}

fn a_follower_persists_the_leaders_entries_as_they_are<H: Harness>(harness: &mut H) -> Outcome {
    let mut leader = harness.create();
    let mut follower = harness.create();
    let entries = lead(harness, &mut leader, 1, 1..=3)?;
    expect("persisted", ok("persisting", follower.persist(&entries))?, at(1, 3))?;
    expect("last", follower.last(), at(1, 3))?;
    expect("writes reflected", harness.writes_reflected(&follower), vec![1, 2, 3])?;
    expect("the follower's log", ok("reading the log", follower.read_log(1, 10))?, Some(entries))?;
    expect("epoch starts", ok("epoch starts", follower.epoch_starts())?, vec![(1, 1)])
}

fn a_follower_skips_entries_it_already_holds<H: Harness>(harness: &mut H) -> Outcome {
    let mut leader = harness.create();
    let mut follower = harness.create();
    let entries = lead(harness, &mut leader, 1, 1..=4)?;
    ok("persisting", follower.persist(&entries[..2]))?;
    expect("persisted, overlapping what is held", ok("persisting", follower.persist(&entries[..4]))?, at(1, 4))?;
    expect("persisted, all held", ok("persisting", follower.persist(&entries[1..3]))?, at(1, 4))?;
    expect("the log holds each entry once", ok("reading the log", follower.read_log(1, 10))?, Some(entries))?;
    expect("writes reflected", harness.writes_reflected(&follower), vec![1, 2, 3, 4])
}

fn a_persist_that_would_leave_a_gap_is_refused_and_changes_nothing<H: Harness>(harness: &mut H) -> Outcome {
    let mut leader = harness.create();
    let mut follower = harness.create();
    let entries = lead(harness, &mut leader, 1, 1..=4)?;
    ok("persisting", follower.persist(&entries[..1]))?;
    let refusals = [
        ("a persist starting past the end", vec![entries[2].clone(), entries[3].clone()]),
        ("a persist with a hole inside", vec![entries[1].clone(), entries[3].clone()]),
    ];
    for (what, persist) in refusals {
        if follower.persist(&persist).is_ok() {
            return Err(format!("{what} was accepted"));
        }
        expect(&format!("last after {what}"), follower.last(), at(1, 1))?;
        expect(&format!("writes reflected after {what}"), harness.writes_reflected(&follower), vec![1])?;
        expect(&format!("the log after {what}"), logged(&follower, 1)?, Some(vec![at(1, 1)]))?;
    }
    expect("the missing entries, persisted after the refusals", ok("persisting", follower.persist(&entries[1..]))?, at(1, 4))?;
    expect("writes reflected", harness.writes_reflected(&follower), vec![1, 2, 3, 4])
}

fn a_held_entry_of_another_epoch_is_refused_not_skipped<H: Harness>(harness: &mut H) -> Outcome {
    let mut old = harness.create();
    let mut new = harness.create();
    let old_entries = lead(harness, &mut old, 1, 1..=2)?;
    ok("persisting", new.persist(&old_entries[..1]))?;
    let new_entries = lead(harness, &mut new, 2, 3..=3)?;
    // `old` holds 1.2 where the leader of epoch 2 wrote 2.2: skipping it as "held" would
    // keep a write no majority has and call it the leader's.
    if old.persist(&new_entries).is_ok() {
        return Err("entry 2.2 over a held 1.2 was accepted".to_string());
    }
    expect("last", old.last(), at(1, 2))?;
    expect("writes reflected", harness.writes_reflected(&old), vec![1, 2])
}

fn epoch_starts_are_recovered_from_the_log<H: Harness>(harness: &mut H) -> Outcome {
    let mut leader = harness.create();
    let mut follower = harness.create();
    let mut entries = lead(harness, &mut leader, 1, 1..=2)?;
    entries.extend(lead(harness, &mut leader, 2, 3..=4)?);
    entries.extend(lead(harness, &mut leader, 4, 5..=5)?);
    let expected = vec![(1, 1), (2, 3), (4, 5)];
    expect("the leader's epoch starts", ok("epoch starts", leader.epoch_starts())?, expected.clone())?;
    ok("persisting", follower.persist(&entries))?;
    expect("the follower's epoch starts", ok("epoch starts", follower.epoch_starts())?, expected)
}

fn the_log_is_read_from_any_retained_index<H: Harness>(harness: &mut H) -> Outcome {
    let mut leader = harness.create();
    let entries = lead(harness, &mut leader, 1, 1..=5)?;
    expect("two entries from 2", ok("reading the log", leader.read_log(2, 2))?, Some(entries[1..3].to_vec()))?;
    expect("the log from 4", ok("reading the log", leader.read_log(4, 100))?, Some(entries[3..].to_vec()))?;
    expect("the log past its end", logged(&leader, 6)?, Some(vec![]))
}

fn compaction_keeps_the_newest_entries_and_every_effect<H: Harness>(harness: &mut H) -> Outcome {
    let mut leader = harness.create();
    lead(harness, &mut leader, 1, 1..=10)?;
    ok("compacting", leader.compact(4, u64::MAX))?;
    expect("first index after keeping 4", leader.first_index(), 7)?;
    expect("the log from 6", logged(&leader, 6)?, None)?;
    expect("the log from 7", logged(&leader, 7)?, Some((7..=10).map(|index| at(1, index)).collect()))?;
    expect("last", leader.last(), at(1, 10))?;
    expect("writes reflected", harness.writes_reflected(&leader), numbers(1..=10))?;
    ok("compacting", leader.compact(8, u64::MAX))?;
    expect("first index after keeping more than it holds", leader.first_index(), 7)?;
    ok("compacting", leader.compact(2, u64::MAX))?;
    expect("first index after keeping 2", leader.first_index(), 9)?;
    expect("the log from 9", logged(&leader, 9)?, Some(vec![at(1, 9), at(1, 10)]))
}

fn epoch_starts_describe_only_the_retained_log<H: Harness>(harness: &mut H) -> Outcome {
    let mut leader = harness.create();
    lead(harness, &mut leader, 1, 1..=5)?;
    lead(harness, &mut leader, 2, 6..=10)?;
    ok("compacting", leader.compact(3, u64::MAX))?;
    // The core takes entries below the first start to match any leader's.
    expect("epoch starts", ok("epoch starts", leader.epoch_starts())?, vec![(2, 8)])
}

fn a_snapshot_ahead_of_the_durable_end_replaces_the_state<H: Harness>(harness: &mut H) -> Outcome {
    let mut leader = harness.create();
    let mut follower = harness.create();
    let entries = lead(harness, &mut leader, 1, 1..=5)?;
    ok("persisting", follower.persist(&entries[..2]))?;
    ok("compacting", leader.compact(2, u64::MAX))?;
    let snapshot = ok("a snapshot", leader.snapshot())?;
    expect("installed", ok("installing", follower.install_snapshot(snapshot))?, at(1, 5))?;
    expect("last", follower.last(), at(1, 5))?;
    expect("writes reflected", harness.writes_reflected(&follower), numbers(1..=5))?;
    let next = lead(harness, &mut leader, 1, 6..=6)?;
    expect("the next entry, persisted", ok("persisting", follower.persist(&next))?, at(1, 6))?;
    expect("writes reflected after it", harness.writes_reflected(&follower), numbers(1..=6))
}

fn a_snapshot_not_ahead_of_the_durable_end_is_dropped<H: Harness>(harness: &mut H) -> Outcome {
    let mut leader = harness.create();
    let mut follower = harness.create();
    let mut entries = lead(harness, &mut leader, 1, 1..=3)?;
    let snapshot = ok("a snapshot", leader.snapshot())?;
    entries.extend(lead(harness, &mut leader, 1, 4..=5)?);
    ok("persisting", follower.persist(&entries))?;
    expect("the durable end reported", ok("installing", follower.install_snapshot(snapshot))?, at(1, 5))?;
    expect("last", follower.last(), at(1, 5))?;
    expect("writes reflected", harness.writes_reflected(&follower), numbers(1..=5))?;
    expect("the log", ok("reading the log", follower.read_log(1, 10))?, Some(entries))
}

fn after_a_snapshot_the_log_starts_after_it<H: Harness>(harness: &mut H) -> Outcome {
    let mut leader = harness.create();
    let mut follower = harness.create();
    lead(harness, &mut leader, 1, 1..=5)?;
    let snapshot = ok("a snapshot", leader.snapshot())?;
    ok("installing", follower.install_snapshot(snapshot))?;
    expect("first index", follower.first_index(), 6)?;
    expect("the log from 5", logged(&follower, 5)?, None)?;
    let next = lead(harness, &mut leader, 1, 6..=6)?;
    ok("persisting", follower.persist(&next))?;
    expect("the log from 6", logged(&follower, 6)?, Some(vec![at(1, 6)]))
}

fn epoch_starts_after_a_snapshot_are_those_of_its_log<H: Harness>(harness: &mut H) -> Outcome {
    let mut leader = harness.create();
    let mut follower = harness.create();
    lead(harness, &mut leader, 1, 1..=3)?;
    lead(harness, &mut leader, 2, 4..=5)?;
    let snapshot = ok("a snapshot", leader.snapshot())?;
    ok("installing", follower.install_snapshot(snapshot))?;
    expect("epoch starts", ok("epoch starts", follower.epoch_starts())?, vec![(1, 1), (2, 4)])
}

fn rollback_moves_diverged_entries_aside_and_installs_the_snapshot<H: Harness>(harness: &mut H) -> Outcome {
    // The old leader is ahead of the snapshot (1.4 against 2.3): installed all the same.
    let (mut old, mut new, snapshot) = diverged(harness, 4)?;
    expect("rolled back to", ok("rolling back", old.roll_back_and_install(2, snapshot))?, at(2, 3))?;
    expect("last", old.last(), at(2, 3))?;
    expect("rolled back", ok("the rollback store", old.rolled_back())?, vec![at(1, 3), at(1, 4)])?;
    expect("writes reflected", harness.writes_reflected(&old), vec![1, 2, 100])?;
    let next = lead(harness, &mut new, 2, 101..=101)?;
    expect("the next entry, persisted", ok("persisting", old.persist(&next))?, at(2, 4))?;
    expect("writes reflected after it", harness.writes_reflected(&old), vec![1, 2, 100, 101])
}

fn compaction_keeps_entries_a_rollback_may_need<H: Harness>(harness: &mut H) -> Outcome {
    let mut old = harness.create();
    let mut new = harness.create();
    let entries = lead(harness, &mut old, 1, 1..=6)?;
    ok("persisting", new.persist(&entries[..2]))?;
    // Only 1 and 2 are on a majority: 3 to 6 stay in the log however little is retained.
    ok("compacting", old.compact(2, 2))?;
    expect("the first index after compacting", old.first_index(), 3)?;
    lead(harness, &mut new, 2, 100..=100)?;
    let snapshot = ok("a snapshot", new.snapshot())?;
    ok("rolling back", old.roll_back_and_install(2, snapshot))?;
    // Writes 3 to 6 may have been acknowledged (under async): the rollback store is now
    // the only record of them.
    expect("rolled back", ok("the rollback store", old.rolled_back())?, (3..=6).map(|index| at(1, index)).collect())?;
    expect("writes reflected", harness.writes_reflected(&old), vec![1, 2, 100])
}

fn everything_durable_survives_a_crash<H: Harness>(harness: &mut H) -> Outcome {
    let mut leader = harness.create();
    let mut follower = harness.create();
    let mut entries = lead(harness, &mut leader, 1, 1..=3)?;
    entries.extend(lead(harness, &mut leader, 2, 4..=5)?);
    ok("compacting", leader.compact(3, u64::MAX))?;
    ok("persisting", follower.persist(&entries))?;
    for (role, storage, first_index) in [("leader", leader, 3), ("follower", follower, 1)] {
        expect(&format!("the {role}'s first index"), storage.first_index(), first_index)?;
        let (starts, log) = (ok("epoch starts", storage.epoch_starts())?, logged(&storage, first_index)?);
        let mut storage = harness.reopen(storage);
        expect(&format!("the {role}'s last after a crash"), storage.last(), at(2, 5))?;
        expect(&format!("the {role}'s writes after a crash"), harness.writes_reflected(&storage), numbers(1..=5))?;
        expect(&format!("the {role}'s first index after a crash"), storage.first_index(), first_index)?;
        expect(&format!("the {role}'s epoch starts after a crash"), ok("epoch starts", storage.epoch_starts())?, starts)?;
        expect(&format!("the {role}'s log after a crash"), logged(&storage, first_index)?, log)?;
        let next = ok("a leader's write", storage.append_own(2, 6, harness.write(6)))?;
        expect(&format!("the {role}'s next write after a crash"), next.as_ref().map(Entry::position), Some(at(2, 6)))?;
    }
    Ok(())
}

fn a_snapshot_and_the_rollback_store_survive_a_crash<H: Harness>(harness: &mut H) -> Outcome {
    let (mut old, mut new, snapshot) = diverged(harness, 4)?;
    ok("rolling back", old.roll_back_and_install(2, snapshot))?;
    let old = harness.reopen(old);
    expect("last after a crash", old.last(), at(2, 3))?;
    expect("rolled back after a crash", ok("the rollback store", old.rolled_back())?, vec![at(1, 3), at(1, 4)])?;
    expect("writes reflected after a crash", harness.writes_reflected(&old), vec![1, 2, 100])?;
    let mut fresh = harness.create();
    ok("installing", fresh.install_snapshot(ok("a snapshot", new.snapshot())?))?;
    let fresh = harness.reopen(fresh);
    expect("last of a node that installed a snapshot, after a crash", fresh.last(), at(2, 3))?;
    expect("its writes after a crash", harness.writes_reflected(&fresh), vec![1, 2, 100])
}
