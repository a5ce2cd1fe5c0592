//! What every role reads and writes: the configuration, the membership view, the local
//! log's shape (durable end, accepted end, where each epoch starts) and the output queue.
//! Plain data and small helpers; this file imports no role.

use super::*;

pub(super) struct Shared {
    pub(super) config: Config,
    /// Voters and learners (with elections, as raft last applied them; without, `members`).
    pub(super) membership: Membership,
    pub(super) epoch: u64,
    /// The leader this node follows (itself when leading); `None` while unknown.
    pub(super) leader: Option<NodeId>,
    /// Where each epoch starts in the local log, `(epoch, first index)`, ascending, up to
    /// `accepted`. Entries below the first start (compacted or under a snapshot) are
    /// taken to match any leader's.
    pub(super) epoch_starts: Vec<(u64, u64)>,
    /// Durable end of the local log (leader: committed and synced locally; follower:
    /// persisted).
    pub(super) last: Position,
    /// End of the local log including what is not durable yet (>= `last`). Follower: what
    /// was handed to `Persist`. Leader: what its storage committed and is still syncing
    /// (`Event::LeaderWrote`), shipped already; its own copy counts only up to `last`.
    pub(super) accepted: Position,
    pub(super) outputs: VecDeque<Output>,
    /// Entries up to here are on a majority in the current history (a leader counted the
    /// copies, or a follower matched a leader's log that far and the leader said so):
    /// they can never be rolled back, so compaction may drop them. Only ever grows.
    pub(super) committed: u64,
    /// This node handed leadership away by a transfer and asks not to have it moved back
    /// for its priority before this time (see `Config::leader_yield_us`).
    pub(super) yielding_until: Option<Micros>,
}

impl Shared {
    /// The shortest election timeout, with elections on (leases are measured from it).
    pub(super) fn election_timeout(&self) -> Option<Micros> {
        self.config.elections.as_ref().map(ElectionConfig::election_timeout_min_us)
    }

    pub(super) fn send(&mut self, to: NodeId, message: Message) {
        self.outputs.push_back(Output::Send { to, message });
    }

    /// Tells `to` where this node's log stands. `read_seq` is the newest heartbeat round
    /// this node saw as a follower (0 otherwise); `diverged` carries our epoch starts when
    /// our log holds entries the leader lacks.
    pub(super) fn send_ack_to(&mut self, to: &NodeId, read_seq: u64, rejected: bool, diverged: Option<Vec<(u64, u64)>>) {
        let preference = self.preference();
        let message =
            Message::AppendAck { epoch: self.epoch, durable: self.last, next_index: self.accepted.index + 1, read_seq, rejected, diverged, preference };
        self.send(to.clone(), message);
    }

    /// What this node asks of leader placement now: its configuration's, and whether it
    /// is yielding after handing leadership away.
    pub(super) fn preference(&self) -> Preference {
        Preference { yielding: self.yielding_until.is_some(), ..self.config.preference() }
    }

    /// Acknowledges to the leader this node follows, if it is another node.
    pub(super) fn send_ack(&mut self, read_seq: u64, rejected: bool) {
        if let Some(leader) = self.leader.clone() {
            if leader != self.config.id {
                self.send_ack_to(&leader, read_seq, rejected, None);
            }
        }
    }

    /// The epoch of the local entry at `index`: `None` for index 0 or below what is
    /// recorded (taken to match), and beyond `accepted` (not held).
    pub(super) fn epoch_at(&self, index: u64) -> Option<u64> {
        if index == 0 || index > self.accepted.index {
            return None;
        }
        epoch_in(&self.epoch_starts, index)
    }

    pub(super) fn note_epoch_start(&mut self, entry: &Entry) {
        if self.epoch_starts.last().is_none_or(|(epoch, _)| *epoch != entry.epoch) {
            self.epoch_starts.push((entry.epoch, entry.index));
        }
    }

    pub(super) fn forget_epoch_starts_after(&mut self, index: u64) {
        self.epoch_starts.retain(|(_, first)| *first <= index);
    }

    /// The local database now holds everything up to `position` from a snapshot (never
    /// moving backwards: a durable position already acknowledged must stay true).
    pub(super) fn snapshot_installed(&mut self, position: Position) {
        if position.index > self.last.index {
            self.last = position;
        }
        if position.index > self.accepted.index {
            self.accepted = position;
            self.epoch_starts = vec![(position.epoch, position.index)];
        }
    }

    /// The log was rolled back to `position` and a snapshot installed over it: the one way
    /// the durable position moves backwards.
    pub(super) fn rolled_back(&mut self, position: Position) {
        self.last = position;
        self.accepted = position;
        self.epoch_starts = vec![(position.epoch, position.index)];
    }
}

/// How long after a heartbeat round starts a leader may accept writes on its strength:
/// less than the shortest election timeout, with room for clocks that run at slightly
/// different rates.
pub(super) fn lease_us(election_timeout_min_us: Micros) -> Micros {
    election_timeout_min_us * 3 / 4
}
