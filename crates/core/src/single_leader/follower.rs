//! The follower: accepting the leader's entries in order, persisting before acknowledging,
//! backing off when its disk refuses, and knowing how fresh its copy is. Its handlers
//! take the [`Shared`] context; nothing here calls another role.

use super::*;

impl Follower {
    /// An append from the leader this node follows (the dispatcher has checked it is not
    /// stale and adopted its epoch and leader).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_append(
        &mut self,
        s: &mut Shared,
        now: Micros,
        epoch: u64,
        leader_id: &NodeId,
        (prev_index, prev_epoch): (u64, u64),
        entries: Vec<Entry>,
        commit_index: u64,
        leader_last: u64,
        read_seq: u64,
    ) {
        s.epoch = epoch;
        self.leader_heard_at = Some(now);
        self.commit_index = self.commit_index.max(commit_index);
        self.read_seq = self.read_seq.max(read_seq);
        if leader_last <= s.last.index {
            self.fresh_as_of = Some(now);
        } else {
            if self.pending_fresh.len() == PENDING_FRESH_LIMIT {
                self.pending_fresh.pop_front();
            }
            self.pending_fresh.push_back((leader_last, now));
        }
        if self.persist_backoff.is_some_and(|backoff| now < backoff.until) {
            // Backing off after a failed persist: no entries, no resend requests. The
            // leader resends on its own timer; the heartbeat has been noted above.
            return;
        }
        if prev_index > s.accepted.index {
            // A gap: something before these entries was lost in transit.
            self.send_ack(s, true);
            return;
        }
        // Log matching: the entry before the new ones, and any we already hold, must be
        // the leader's (same epoch at the same index); else our log has entries the
        // leader lacks, written by an older leader and never on a majority.
        // Entries of another epoch beyond the leader's end are also doomed: the leader
        // will write its own there. Saying so now gets them rolled back (and counted)
        // before a snapshot, which cannot tell which of our entries it replaces.
        let conflict = s.epoch_at(prev_index).is_some_and(|held| held != prev_epoch)
            || entries.iter().any(|entry| s.epoch_at(entry.index).is_some_and(|held| held != entry.epoch))
            || s.epoch_at(leader_last + 1).is_some_and(|held| held != epoch);
        if conflict {
            let starts = s.epoch_starts.clone();
            s.send_ack_to(leader_id, self.read_seq, true, Some(starts));
            return;
        }
        // Our log is the leader's up to the end of this append, and the leader's entries
        // up to `commit_index` are on a majority: ours up to both are committed.
        let matched = entries.last().map_or(prev_index, |entry| entry.index.max(prev_index));
        s.committed = s.committed.max(commit_index.min(matched));
        let new_entries: Vec<Entry> = entries.into_iter().filter(|entry| entry.index > s.accepted.index).collect();
        if new_entries.is_empty() {
            // Answered even while a persist is outstanding: a large entry can take seconds
            // to apply, and a leader that heard nothing meanwhile let its lease run out
            // and resent the entry. The ack names the entries received (`next_index`) and
            // what is durable; the persist's own ack follows when it completes.
            self.send_ack(s, false);
            return;
        }
        for (offset, entry) in new_entries.iter().enumerate() {
            if entry.index != s.accepted.index + 1 + offset as u64 {
                // A malformed append; ask for a resend rather than trust it.
                self.send_ack(s, true);
                return;
            }
        }
        self.ack_owed = true;
        for entry in &new_entries {
            s.note_epoch_start(entry);
        }
        s.accepted = new_entries.last().expect("checked non-empty").position();
        s.outputs.push_back(Output::Persist { entries: new_entries });
    }

    /// The entries of every `Persist` up to `durable` are on disk and applied.
    pub(super) fn on_persisted(&mut self, s: &mut Shared, durable: Position) {
        if durable.index <= s.last.index {
            return;
        }
        // A persist issued before a failed one may still complete after `accepted` was
        // wound back: what the disk holds is the truth.
        if durable.index > s.accepted.index {
            s.accepted = durable;
        }
        s.last = durable;
        self.persist_backoff = None;
        while let Some(&(leader_last, heard_at)) = self.pending_fresh.front() {
            if leader_last > s.last.index {
                break;
            }
            self.fresh_as_of = Some(self.fresh_as_of.map_or(heard_at, |at| at.max(heard_at)));
            self.pending_fresh.pop_front();
        }
        if self.ack_owed {
            self.ack_owed = s.accepted.index > s.last.index;
            self.send_ack(s, false);
        }
    }

    /// A `Persist` could not be applied (it did not continue the local log, or the disk
    /// failed). Everything accepted beyond the durable end is forgotten. New entries are
    /// ignored for a while (doubling with each failure in a row); then the leader's next
    /// resend is tried again.
    pub(super) fn on_persist_failed(&mut self, s: &mut Shared, now: Micros) {
        s.accepted = s.last;
        self.ack_owed = false;
        let wait = self.persist_backoff.map_or(FIRST_PERSIST_BACKOFF_US, |backoff| (backoff.wait * 2).min(MAX_PERSIST_BACKOFF_US));
        self.persist_backoff = Some(PersistBackoff { until: now + wait, wait });
        s.forget_epoch_starts_after(s.last.index);
    }

    /// A snapshot was installed (or rolled back to): the leader is acknowledged at once.
    pub(super) fn after_snapshot(&mut self, s: &mut Shared, now: Micros) {
        self.pending_fresh.clear();
        self.leader_heard_at = Some(now);
        // The snapshot may cover entries whose persist was pending; an ack owed for
        // them is paid by this one (else heartbeats would go unanswered).
        self.ack_owed = s.accepted.index > s.last.index;
        self.send_ack(s, false);
    }

    pub(super) fn send_ack(&self, s: &mut Shared, rejected: bool) {
        s.send_ack(self.read_seq, rejected);
    }

    /// How long since this follower last knew it had everything the leader had.
    pub(super) fn lag_us(&self, now: Micros) -> Option<Micros> {
        self.fresh_as_of.map(|at| now.saturating_sub(at))
    }
}

#[derive(Debug)]
pub(super) struct Follower {
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

/// Most leader ends a follower remembers while waiting to reach them (for `lag_us`).
pub(super) const PENDING_FRESH_LIMIT: usize = 4096;

pub(super) const FIRST_PERSIST_BACKOFF_US: Micros = 100_000;

pub(super) const MAX_PERSIST_BACKOFF_US: Micros = 2_000_000;

impl Follower {
    pub(super) fn new() -> Follower {
        Follower {
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
