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
    /// Leader: these entries committed durably here; `waiters` are `(tag, index, requirement)`.
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
        match event {
            Event::Tick => self.on_tick(now),
            Event::Message { from, message } => self.on_message(now, &from, message),
            Event::PeerConnected(peer) => self.on_peer_connected(now, &peer),
            Event::LeaderAppended { entries, waiters } => self.on_leader_appended(now, entries, waiters),
            Event::Persisted(position) => self.on_persisted(now, position),
            Event::PersistFailed => self.on_persist_failed(now),
            Event::SnapshotInstalled(position) => self.on_snapshot_installed(now, position),
            Event::RolledBack(position) => self.on_rolled_back(now, position),
            Event::ReadBarrier { tag, observed_index } => self.on_read_barrier(now, tag, observed_index),
            Event::LogRead { to, entries } => self.on_log_read(now, &to, entries),
            Event::LogCompacted { to } => self.on_log_compacted(now, &to),
            Event::SnapshotFinished { to, sent } => self.on_snapshot_finished(now, &to, sent),
        }
        self.handled_at = self.handled_at.max(now);
        debug_assert_eq!(self.check_invariants(), Ok(()), "after an event at {now}");
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The earliest deadline the replica tracks (election tick, heartbeat, a write's or
    /// read's timeout, a snapshot's or handover's deadline, a persist backoff), and never
    /// later than one heartbeat interval after the last event: resends and the in-sync
    /// check are made on ticks.
    fn poll_timeout(&self) -> Option<Micros> {
        let mut deadlines = vec![self.handled_at + self.config.heartbeat_interval_us];
        if let Some(election) = &self.election {
            deadlines.push(election.next_tick_at());
        }
        deadlines.extend(self.handover.as_ref().map(|(_, until)| *until));
        deadlines.extend(self.recovery.as_ref().and_then(|recovery| recovery.transfer.as_ref()).map(|(_, until)| *until));
        match &self.role {
            Role::Leader(leader) => {
                deadlines.push(leader.next_heartbeat_at);
                deadlines.extend(leader.writes.iter().map(|waiter| waiter.deadline));
                deadlines.extend(leader.reads.iter().map(|read| read.deadline));
                deadlines.extend(leader.peers.values().filter_map(|progress| progress.snapshot_wait.map(|(_, deadline)| deadline)));
            }
            Role::Follower(follower) => deadlines.extend(follower.persist_backoff.as_ref().map(|backoff| backoff.until)),
        }
        deadlines.into_iter().min()
    }
}

impl Replica {
    /// The replica's structural invariants, each a rule other code relies on: `Err` names
    /// the first one broken.
    ///
    /// # Errors
    /// The broken invariant, for the simulator's report.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.accepted.index < self.last.index {
            return Err(format!("accepted {} is behind the durable end {}", self.accepted, self.last));
        }
        for pair in self.epoch_starts.windows(2) {
            let ((earlier_epoch, earlier_index), (later_epoch, later_index)) = (pair[0], pair[1]);
            if later_epoch <= earlier_epoch || later_index < earlier_index {
                return Err(format!("epoch starts not ascending: {:?}", self.epoch_starts));
            }
        }
        if let Role::Leader(leader) = &self.role {
            if self.accepted != self.last {
                return Err(format!("a leader's accepted {} differs from its durable end {}", self.accepted, self.last));
            }
            for (id, progress) in &leader.peers {
                if progress.matched >= progress.next {
                    return Err(format!("progress of {id}: matched {} is not below next {}", progress.matched, progress.next));
                }
            }
        }
        Ok(())
    }
}
