//! Handing leadership to a chosen member without losing acknowledged writes.

use super::*;

impl Replica {
    /// Leader: hand leadership to `to` (an operator's transfer). Writes pause at once; once
    /// `to` holds everything, raft's leadership transfer makes it campaign, and it
    /// recovers and leads as after any election. Writes resume here if that has not
    /// happened within two election timeouts.
    ///
    /// # Errors
    /// If this node does not lead, elections are off, or `to` is not another member.
    pub fn transfer_leadership(&mut self, now: Micros, to: &NodeId) -> Result<(), TransferError> {
        let Some(election) = &self.election else { return Err(TransferError::FailoverOff) };
        if !self.is_leader() {
            return Err(TransferError::NotLeader { leader: self.leader.clone() });
        }
        if *to == self.config.id || !self.membership.voters.contains(to) {
            return Err(TransferError::NotAnotherMember { id: to.clone() });
        }
        let deadline = now + 2 * election.config().election_timeout_min_us() + 5_000_000;
        self.handover = Some((to.clone(), deadline));
        self.continue_handover(now);
        Ok(())
    }

    pub(super) fn continue_handover(&mut self, now: Micros) {
        let Some((to, deadline)) = self.handover.clone() else { return };
        let caught_up = match &self.role {
            Role::Leader(leader) => leader.peers.get(&to).is_some_and(|progress| progress.matched >= self.last.index),
            Role::Follower(_) => {
                self.handover = None;
                return;
            }
        };
        if now >= deadline {
            self.handover = None;
            return;
        }
        if let Some(election) = &mut self.election {
            if caught_up && !election.transferring() {
                election.transfer_leadership(&to);
                self.drain_election(now);
            }
        }
    }

    /// Leader: the voter best placed to take over (in sync, furthest along), for handing
    /// leadership away when this node cannot go on writing (its disk is full).
    pub fn best_successor(&self) -> Option<NodeId> {
        let Role::Leader(leader) = &self.role else { return None };
        leader
            .peers
            .iter()
            .filter(|(id, progress)| progress.in_sync && self.membership.voters.contains(*id))
            .max_by_key(|(id, progress)| (progress.matched, std::cmp::Reverse((*id).clone())))
            .map(|(id, _)| id.clone())
    }
}
