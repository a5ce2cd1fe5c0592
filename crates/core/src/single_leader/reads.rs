//! Reads and leases: read barriers for linearizable reads, the write lease, lag for bounded reads.

use super::*;

impl Replica {
    /// Leader: a linearizable read saw the database up to `observed_index`. Completes
    /// once a majority confirms leadership in a fresh heartbeat round and that index is
    /// majority-durable, so the read neither misses acknowledged writes nor returns
    /// writes that could still be lost.
    pub(crate) fn on_read_barrier(&mut self, now: Micros, tag: u64, observed_index: u64) {
        match &mut self.role {
            Role::Leader(leader) => leader.add_read_barrier(&mut self.shared, now, tag, observed_index),
            Role::Follower(_) | Role::Recovering { .. } => {
                let leader = self.shared.leader.clone();
                self.shared.outputs.push_back(Output::ReadDone { tag, result: Err(ReadError::NotLeader { leader }) });
            }
        }
    }

    /// Until when this node may accept writes, if it may now: the end of its write lease.
    pub fn write_lease_until(&self, now: Micros) -> Option<Micros> {
        match &self.role {
            Role::Leader(leader) if self.accepting_writes(now).is_ok() => Some(leader.lease_until),
            _ => None,
        }
    }

    /// What the storage checks a commit against (see `may_commit`): this node's epoch and
    /// the end of its write lease, while it may accept writes.
    pub fn published_lease(&self, now: Micros) -> Option<(u64, Micros)> {
        self.write_lease_until(now).map(|until| (self.shared.epoch, until))
    }

    /// Whether a new write may start here now; the error says where to go instead.
    /// With elections a leader accepts writes only while its lease holds and it is not
    /// handing leadership over.
    pub fn accepting_writes(&self, now: Micros) -> Result<(), WriteError> {
        match &self.role {
            Role::Leader(leader) if leader.may_write(now) && !self.election.as_ref().is_some_and(Election::transferring) => Ok(()),
            Role::Leader(_) => Err(WriteError::NotLeader { leader: None }),
            Role::Follower(_) | Role::Recovering { .. } => Err(WriteError::NotLeader { leader: self.shared.leader.clone() }),
        }
    }

    /// How long since this node last knew it had everything the leader had. A leader
    /// holding its lease is never behind; one whose lease ran out may have been deposed
    /// without knowing it, so its data is known current only up to the lease's end.
    /// `None` on a follower before first contact.
    pub fn lag_us(&self, now: Micros) -> Option<Micros> {
        match &self.role {
            Role::Leader(leader) => Some(now.saturating_sub(leader.lease_until)),
            Role::Follower(follower) | Role::Recovering { follower, .. } => follower.lag_us(now),
        }
    }
}

/// The rule a write's commit obeys, the same in the server's storage thread and in the
/// simulator: a write started in `epoch` commits at `now` only while the lease the
/// replica last published (`published_lease`) is for that epoch and still covers `now`.
/// A leader whose lease ran out while the write executed may have been replaced; its
/// write must not extend the log.
pub fn may_commit(lease: Option<(u64, Micros)>, epoch: u64, now: Micros) -> bool {
    lease.is_some_and(|(leased, until)| leased == epoch && now < until)
}
