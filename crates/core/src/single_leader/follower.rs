//! The follower: accepting the leader's entries in order, persisting before acknowledging, and backing off when its disk refuses.

use super::*;

impl Replica {
    /// A leader of `epoch` (or a node raft elected for it) spoke: adopt it.
    pub(super) fn follow(&mut self, now: Micros, epoch: u64, leader: &NodeId) {
        if epoch > self.epoch || self.leader.as_ref() != Some(leader) {
            if self.is_leader() || self.recovery.is_some() {
                self.step_down(Some(leader.clone()));
            }
            self.epoch = self.epoch.max(epoch);
            self.leader = Some(leader.clone());
        }
        self.leader_contact_at = Some(now);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_append(
        &mut self,
        now: Micros,
        epoch: u64,
        leader_id: NodeId,
        (prev_index, prev_epoch): (u64, u64),
        entries: Vec<Entry>,
        commit_index: u64,
        leader_last: u64,
        read_seq: u64,
    ) {
        let stale = epoch < self.epoch || (self.election.is_none() && leader_id != self.config.leader);
        if stale || leader_id == self.config.id {
            // A stale or unknown leader: tell it our epoch, change nothing.
            self.send_ack_to(&leader_id, true, None);
            return;
        }
        if self.election.is_some() {
            self.follow(now, epoch, &leader_id);
        }
        let Role::Follower(follower) = &mut self.role else {
            // Two leaders in one epoch would be a configuration error; refuse the entries.
            return;
        };
        self.epoch = epoch;
        follower.leader_heard_at = Some(now);
        follower.commit_index = follower.commit_index.max(commit_index);
        follower.read_seq = follower.read_seq.max(read_seq);
        if leader_last <= self.last.index {
            follower.fresh_as_of = Some(now);
        } else {
            if follower.pending_fresh.len() == PENDING_FRESH_LIMIT {
                follower.pending_fresh.pop_front();
            }
            follower.pending_fresh.push_back((leader_last, now));
        }
        if follower.persist_backoff.is_some_and(|backoff| now < backoff.until) {
            // Backing off after a failed persist: no entries, no resend requests. The
            // leader resends on its own timer; the heartbeat has been noted above.
            return;
        }
        if prev_index > self.accepted.index {
            // A gap: something before these entries was lost in transit.
            self.send_ack(true);
            return;
        }
        // Log matching: the entry before the new ones, and any we already hold, must be
        // the leader's (same epoch at the same index); else our log has entries the
        // leader lacks, written by an older leader and never on a majority.
        // Entries of another epoch beyond the leader's end are also doomed: the leader
        // will write its own there. Saying so now gets them rolled back (and counted)
        // before a snapshot, which cannot tell which of our entries it replaces.
        let conflict = self.epoch_at(prev_index).is_some_and(|held| held != prev_epoch)
            || entries.iter().any(|entry| self.epoch_at(entry.index).is_some_and(|held| held != entry.epoch))
            || self.epoch_at(leader_last + 1).is_some_and(|held| held != epoch);
        if conflict {
            let starts = self.epoch_starts.clone();
            self.send_ack_to(&leader_id, true, Some(starts));
            return;
        }
        let Role::Follower(follower) = &mut self.role else { unreachable!() };
        let new_entries: Vec<Entry> = entries.into_iter().filter(|entry| entry.index > self.accepted.index).collect();
        if new_entries.is_empty() {
            if !follower.ack_owed {
                self.send_ack(false);
            }
            return;
        }
        for (offset, entry) in new_entries.iter().enumerate() {
            if entry.index != self.accepted.index + 1 + offset as u64 {
                // A malformed append; ask for a resend rather than trust it.
                self.send_ack(true);
                return;
            }
        }
        follower.ack_owed = true;
        for entry in &new_entries {
            self.note_epoch_start(entry);
        }
        self.accepted = new_entries.last().expect("checked non-empty").position();
        self.outputs.push_back(Output::Persist { entries: new_entries });
    }

    /// Follower: the entries of every `Persist` up to `durable` are on disk and applied.
    pub(crate) fn on_persisted(&mut self, _now: Micros, durable: Position) {
        let Role::Follower(follower) = &mut self.role else { return };
        if durable.index <= self.last.index {
            return;
        }
        // A persist issued before a failed one may still complete after `accepted` was
        // wound back: what the disk holds is the truth.
        if durable.index > self.accepted.index {
            self.accepted = durable;
        }
        self.last = durable;
        follower.persist_backoff = None;
        while let Some(&(leader_last, heard_at)) = follower.pending_fresh.front() {
            if leader_last > self.last.index {
                break;
            }
            follower.fresh_as_of = Some(follower.fresh_as_of.map_or(heard_at, |at| at.max(heard_at)));
            follower.pending_fresh.pop_front();
        }
        if follower.ack_owed {
            follower.ack_owed = self.accepted.index > self.last.index;
            self.send_ack(false);
        }
    }

    /// Follower: a `Persist` could not be applied (it did not continue the local log, or
    /// the disk failed). Everything accepted beyond the durable end is forgotten. New
    /// entries are ignored for a while (doubling with each failure in a row); then the
    /// leader's next resend is tried again.
    pub(crate) fn on_persist_failed(&mut self, now: Micros) {
        let Role::Follower(follower) = &mut self.role else { return };
        self.accepted = self.last;
        follower.ack_owed = false;
        let wait = follower.persist_backoff.map_or(FIRST_PERSIST_BACKOFF_US, |backoff| (backoff.wait * 2).min(MAX_PERSIST_BACKOFF_US));
        follower.persist_backoff = Some(PersistBackoff { until: now + wait, wait });
        self.forget_epoch_starts_after(self.last.index);
    }

    /// Follower: the local database now holds everything up to `position`, after a
    /// snapshot was installed (or found not to be ahead of what was already durable, in
    /// which case the driver passes its durable position). Never moves backwards: a
    /// durable position already acknowledged must stay true.
    pub(crate) fn on_snapshot_installed(&mut self, now: Micros, position: Position) {
        if position.index > self.last.index {
            self.last = position;
        }
        if position.index > self.accepted.index {
            self.accepted = position;
            self.epoch_starts = vec![(position.epoch, position.index)];
        }
        self.after_snapshot(now);
    }

    /// Follower: after `Output::SendSnapshot` with `rollback_after`, the entries the
    /// leader lacks went to the rollback store and the leader's snapshot at `position`
    /// replaced the database. The one way the durable position moves backwards: what was
    /// rolled back was never on a majority of the leader's epoch.
    pub(crate) fn on_rolled_back(&mut self, now: Micros, position: Position) {
        self.last = position;
        self.accepted = position;
        self.epoch_starts = vec![(position.epoch, position.index)];
        self.after_snapshot(now);
    }

    pub(super) fn after_snapshot(&mut self, now: Micros) {
        if let Role::Follower(follower) = &mut self.role {
            follower.pending_fresh.clear();
            follower.leader_heard_at = Some(now);
            // The snapshot may cover entries whose persist was pending; an ack owed for
            // them is paid by this one (else heartbeats would go unanswered).
            follower.ack_owed = self.accepted.index > self.last.index;
        }
        self.send_ack(false);
    }

    // ---- both ----

    pub(super) fn send_ack(&mut self, rejected: bool) {
        if let Some(leader) = self.leader.clone() {
            if leader != self.config.id {
                self.send_ack_to(&leader, rejected, None);
            }
        }
    }

    pub(super) fn send_ack_to(&mut self, to: &NodeId, rejected: bool, diverged: Option<Vec<(u64, u64)>>) {
        let read_seq = match &self.role {
            Role::Follower(follower) => follower.read_seq,
            Role::Leader(_) => 0,
        };
        let message = Message::AppendAck { epoch: self.epoch, durable: self.last, next_index: self.accepted.index + 1, read_seq, rejected, diverged };
        self.outputs.push_back(Output::Send { to: to.clone(), message });
    }

    // ---- elections ----
}

#[derive(Debug)]
pub(super) struct FollowerState {
    pub(super) leader_heard_at: Option<Micros>,
    pub(super) commit_index: u64,
    /// Latest time at which this follower had applied everything the leader had.
    pub(super) fresh_as_of: Option<Micros>,
    /// (leader's last index, when we heard it) not yet reached by our durable index.
    pub(super) pending_fresh: VecDeque<(u64, Micros)>,
    /// Highest heartbeat round seen, echoed in acks.
    pub(super) read_seq: u64,
    /// An ack is owed once the current persist completes.
    pub(super) ack_owed: bool,
    /// After a failed persist (a full disk, say): new entries are ignored until `until`,
    /// and the next failure waits twice as long (up to `MAX_PERSIST_BACKOFF_US`). Without
    /// it, the leader's resend and the failing apply spin in a tight loop.
    pub(super) persist_backoff: Option<PersistBackoff>,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct PersistBackoff {
    pub(super) until: Micros,
    pub(super) wait: Micros,
}

pub(super) const FIRST_PERSIST_BACKOFF_US: Micros = 100_000;

pub(super) const MAX_PERSIST_BACKOFF_US: Micros = 2_000_000;

impl FollowerState {
    pub(super) fn new() -> FollowerState {
        FollowerState {
            leader_heard_at: None,
            commit_index: 0,
            fresh_as_of: None,
            pending_fresh: VecDeque::new(),
            read_seq: 0,
            ack_owed: false,
            persist_backoff: None,
        }
    }
}
