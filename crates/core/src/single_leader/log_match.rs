//! Log matching: whether a log holds a position, and where two logs diverge (pure functions over epoch starts).

use super::*;

impl Replica {
    /// Whether the local durable log holds the entry at `position` (same index, same
    /// epoch): a session token is satisfied only then. A log that is merely as long may
    /// hold another epoch's entry there, written by an old leader and due for rollback.
    pub fn holds(&self, position: Position) -> bool {
        log_holds(&self.shared.epoch_starts, self.shared.last, position)
    }

    /// Where each epoch starts in the local log (for drivers that answer session reads
    /// outside the replica loop: see [`log_holds`]).
    pub fn epoch_starts(&self) -> &[(u64, u64)] {
        &self.shared.epoch_starts
    }
}

/// Whether a durable log ending at `last`, whose epochs start as `epoch_starts` says,
/// holds the entry at `position` (see [`Replica::holds`]).
pub fn log_holds(epoch_starts: &[(u64, u64)], last: Position, position: Position) -> bool {
    if position.index == 0 {
        return true;
    }
    if position.index > last.index {
        return false;
    }
    epoch_in(epoch_starts, position.index).is_none_or(|epoch| epoch == position.epoch)
}

/// The epoch of the entry at `index` in a log whose epochs start as `starts` says
/// (`(epoch, first index)`, ascending); `None` below the first recorded start.
pub(super) fn epoch_in(starts: &[(u64, u64)], index: u64) -> Option<u64> {
    starts.iter().rev().find(|(_, first)| *first <= index).map(|(epoch, _)| *epoch)
}

/// The last index at which two logs, described by where each epoch starts, hold the
/// same epoch everywhere before (log matching makes them identical up to there).
/// Indices below a log's first recorded start are taken to match.
pub(super) fn common_prefix(leader: &[(u64, u64)], leader_last: u64, follower: &[(u64, u64)], follower_last: u64) -> u64 {
    let end = leader_last.min(follower_last);
    if end == 0 {
        return 0;
    }
    let mut points: Vec<u64> = leader.iter().chain(follower).map(|(_, first)| *first).filter(|first| (1..=end).contains(first)).collect();
    points.push(1);
    points.sort_unstable();
    points.dedup();
    let mut common = 0;
    for (position, start) in points.iter().enumerate() {
        if let (Some(ours), Some(theirs)) = (epoch_in(leader, *start), epoch_in(follower, *start)) {
            if ours != theirs {
                return start - 1;
            }
        }
        common = points.get(position + 1).map_or(end, |next| next - 1);
    }
    common
}
