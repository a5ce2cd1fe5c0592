//! The leader's view of one follower: how far it holds the log, what was sent, and
//! whether it is in sync, waiting for a snapshot, or diverged.

use super::*;

/// The leader's view of one follower.
#[derive(Clone, Debug)]
pub(super) struct Progress {
    /// Highest index known durable on the follower. Invariants: `matched < next`.
    pub(super) matched: u64,
    /// Next index to send.
    pub(super) next: u64,
    /// Highest index the follower said it holds, durable or still being written (its
    /// latest ack's `next_index - 1`). Entries up to here reached it: they are not resent
    /// while it persists them, however long that takes (a bulk insert's entry can take
    /// seconds to apply, and resending it held the follower's link for as long again).
    pub(super) received: u64,
    pub(super) last_ack_at: Option<Micros>,
    /// When entries beyond `matched` were last sent; for resending lost ones.
    pub(super) last_sent_at: Micros,
    pub(super) acked_read_seq: u64,
    /// Counted by `--ack sync`: responsive and caught up at some point since.
    pub(super) in_sync: bool,
    /// An `Output::ReadLog` for this follower is outstanding.
    pub(super) fetching: bool,
    /// An `Output::SendSnapshot` for this follower is outstanding, or a sent snapshot
    /// has not been acknowledged yet; nothing else is shipped meanwhile.
    pub(super) snapshotting: bool,
    /// A snapshot at this index was sent; shipping resumes once the follower acks it, or
    /// at the deadline if it never does.
    pub(super) snapshot_wait: Option<(u64, Micros)>,
    /// The follower reported a durable end that is not in our log (an older leader's
    /// entry at that index): heartbeats name our entry there, so that it answers with
    /// where its log diverges, and no snapshot is sent without that (it would replace
    /// the diverged entries without moving them to the rollback store).
    pub(super) foreign_durable: Option<Position>,
    /// Where the follower's log was found to diverge from ours: every snapshot it gets
    /// until it holds our entries again rolls back what it has beyond this index.
    pub(super) diverged_after: Option<u64>,
    /// Resends in a row after which `matched` had not moved, and where it stood at the
    /// last one: each such resend waits twice as long (a follower that cannot persist,
    /// or is paused, is not sent its whole window again every `resend_timeout_us`).
    pub(super) fruitless_resends: u32,
    pub(super) matched_at_resend: u64,
    /// What the follower asks of leader placement, from its latest ack (`None` before
    /// the first): a non-voter is never promoted, and leadership moves by priority.
    pub(super) preference: Option<Preference>,
}

impl Progress {
    pub(super) fn new(last: Position, now: Micros) -> Progress {
        Progress {
            matched: 0,
            next: last.index + 1,
            received: 0,
            last_ack_at: None,
            last_sent_at: now,
            acked_read_seq: 0,
            in_sync: false,
            fetching: false,
            snapshotting: false,
            snapshot_wait: None,
            foreign_durable: None,
            diverged_after: None,
            fruitless_resends: 0,
            matched_at_resend: 0,
            preference: None,
        }
    }

    /// Entries were sent that the follower neither holds durably nor reported receiving:
    /// lost on the way, if no ack reports them within the resend timeout.
    pub(super) fn lost_in_flight(&self) -> bool {
        self.next > self.matched.max(self.received) + 1
    }
}
