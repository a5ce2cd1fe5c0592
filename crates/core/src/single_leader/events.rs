//! The single-leader replica under the [`Protocol`] contract: one event type for
//! everything that happens to it, the next deadline, and the invariants checked after
//! every event (in debug builds, and by the simulator after every step).

use super::*;
use crate::protocol::Protocol;

/// Everything that happens to a replica. Requests that answer at once
/// (`transfer_leadership`, `change_membership`) stay methods.
#[derive(Debug)]
pub enum Event {
    /// Timers: heartbeats, resends, elections, deadlines.
    Tick,
    Message {
        from: NodeId,
        message: Message,
    },
    /// A peer link (re)connected.
    PeerConnected(NodeId),
    /// Leader: these entries committed here but are not durable yet (the storage is
    /// syncing them): they ship to the followers now, so the leader's sync and theirs
    /// overlap, and the leader's own copy counts only once `LeaderAppended` says it is
    /// durable. Optional: a driver may hand in `LeaderAppended` alone.
    LeaderWrote {
        entries: Vec<Entry>,
    },
    /// Leader: these entries committed durably here (whether or not `LeaderWrote` handed
    /// them in before); `waiters` are `(tag, index, requirement)`. A waiter's index may be
    /// an earlier entry's, with no entries handed in: a write that changed nothing waits
    /// for the last entry it saw.
    LeaderAppended {
        entries: Vec<Entry>,
        waiters: Vec<(u64, u64, AckRequirement)>,
    },
    /// Follower: everything up to this position is durable.
    Persisted(Position),
    /// Follower: the last `Output::Persist` could not be made durable.
    PersistFailed,
    SnapshotInstalled(Position),
    RolledBack(Position),
    /// Leader: a linearizable read observed `observed_index`.
    ReadBarrier {
        tag: u64,
        observed_index: u64,
    },
    /// Leader: the entries asked for by `Output::ReadLog`.
    LogRead {
        to: NodeId,
        entries: Vec<Entry>,
    },
    /// Leader: what `Output::ReadLog` asked for was compacted away.
    LogCompacted {
        to: NodeId,
    },
    /// Leader: a snapshot for `to` was sent (its position) or could not be.
    SnapshotFinished {
        to: NodeId,
        sent: Option<Position>,
    },
}

impl Protocol for Replica {
    type Event = Event;
    type Output = Output;

    fn handle(&mut self, event: Event, now: Micros) {
        let s = &mut self.shared;
        match event {
            Event::Tick => self.on_tick(now),
            Event::Message { from, message } => self.on_message(now, &from, message),
            Event::ReadBarrier { tag, observed_index } => self.on_read_barrier(now, tag, observed_index),
            Event::SnapshotInstalled(position) => {
                s.snapshot_installed(position);
                self.after_snapshot(now);
            }
            Event::RolledBack(position) => {
                s.rolled_back(position);
                self.after_snapshot(now);
            }
            Event::LeaderWrote { entries } => {
                // Shipping before the leader's sync is safe only if every leadership has
                // an epoch of its own: a leader that crashes before its sync ends then
                // never writes another entry at that (epoch, index), which its followers
                // may hold. Without elections a restarted leader keeps its epoch, so the
                // entries wait for `LeaderAppended`. Nor does a node that no longer leads
                // that epoch ship them: `LeaderAppended` settles them once durable.
                if let Role::Leader(leader) = &mut self.role {
                    if s.config.elections.is_some() && entries.first().is_none_or(|entry| entry.epoch == s.epoch) {
                        leader.wrote(s, now, entries);
                    }
                }
            }
            Event::LeaderAppended { entries, waiters } => match &mut self.role {
                Role::Leader(leader) if entries.first().is_none_or(|entry| entry.epoch == s.epoch) => leader.append(s, now, entries, waiters),
                _ => settle_unled_writes(s, entries, waiters),
            },
            Event::Persisted(position) => match &mut self.role {
                Role::Leader(leader) => leader.on_persisted(s, now, position),
                Role::Follower(follower) | Role::Recovering { follower, .. } => follower.on_persisted(s, position),
            },
            Event::PersistFailed => {
                if let Some(follower) = self.role.follower_mut() {
                    follower.on_persist_failed(s, now);
                }
            }
            Event::PeerConnected(peer) => {
                if let Role::Leader(leader) = &mut self.role {
                    leader.on_peer_connected(s, now, &peer);
                }
            }
            Event::LogRead { to, entries } => {
                if let Role::Leader(leader) = &mut self.role {
                    leader.on_log_read(s, now, &to, entries);
                }
            }
            Event::LogCompacted { to } => {
                if let Role::Leader(leader) = &mut self.role {
                    leader.on_log_compacted(s, &to);
                }
            }
            Event::SnapshotFinished { to, sent } => {
                if let Role::Leader(leader) = &mut self.role {
                    leader.on_snapshot_finished(s, now, &to, sent);
                }
            }
        }
        self.handled_at = self.handled_at.max(now);
        debug_assert_eq!(self.check_invariants(), Ok(()), "after an event at {now}");
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.shared.outputs.pop_front()
    }

    /// The earliest deadline the replica tracks (election tick, heartbeat, a write's or
    /// read's timeout, a snapshot's or handover's deadline, a follower leaving the in-sync
    /// set or due a resend, the lease's end, a persist backoff), and never later than one
    /// heartbeat interval after the last event. It may be in the past (something is due
    /// now): a driver then hands in `Event::Tick` at once.
    fn poll_timeout(&self) -> Option<Micros> {
        let mut earliest = self.handled_at + self.shared.config.heartbeat_interval_us;
        if let Some(election) = &self.election {
            earliest = earliest.min(election.next_tick_at());
        }
        let role_deadline = match &self.role {
            Role::Leader(leader) => leader.deadlines(&self.shared, self.handled_at).min(),
            Role::Recovering { recovery, .. } => recovery.deadline(),
            Role::Follower(_) => None,
        };
        let backoff = self.role.follower().and_then(|follower| follower.persist_backoff.as_ref()).map(|backoff| backoff.until);
        Some([role_deadline, backoff].into_iter().flatten().fold(earliest, Micros::min))
    }
}

impl Replica {
    /// The replica's structural invariants, each a rule other code relies on: `Err` names
    /// the first one broken.
    ///
    /// # Errors
    /// The broken invariant, for the simulator's report.
    pub fn check_invariants(&self) -> Result<(), String> {
        let s = &self.shared;
        if s.accepted.index < s.last.index {
            return Err(format!("accepted {} is behind the durable end {}", s.accepted, s.last));
        }
        for pair in s.epoch_starts.windows(2) {
            let ((earlier_epoch, earlier_index), (later_epoch, later_index)) = (pair[0], pair[1]);
            if later_epoch <= earlier_epoch || later_index < earlier_index {
                return Err(format!("epoch starts not ascending: {:?}", s.epoch_starts));
            }
        }
        if let Role::Leader(leader) = &self.role {
            leader.check_invariants()?;
        }
        Ok(())
    }
}
