//! Handing leadership to a chosen member without losing acknowledged writes.

use super::*;

/// The shortest pause between a failed move of leadership to a preferred member and the
/// next attempt (it doubles with each failure in one leadership).
const MIN_RETURN_PAUSE_US: Micros = 5_000_000;

impl Replica {
    /// Leader: hand leadership to `to` (an operator's transfer). Writes pause at once; once
    /// `to` holds everything, raft's leadership transfer makes it campaign, and it
    /// recovers and leads as after any election. Writes resume here if that has not
    /// happened within `ElectionConfig::handover_timeout_us`.
    ///
    /// # Errors
    /// If this node does not lead, elections are off, or `to` is not another member.
    pub fn transfer_leadership(&mut self, now: Micros, to: &NodeId) -> Result<(), TransferError> {
        let Some(election) = &self.election else { return Err(TransferError::FailoverOff) };
        let deadline = now + election.config().handover_timeout_us();
        let Role::Leader(leader) = &mut self.role else { return Err(TransferError::NotLeader { leader: self.shared.leader.clone() }) };
        if *to == self.shared.config.id || !self.shared.membership.voters.contains(to) {
            return Err(TransferError::NotAnotherMember { id: to.clone() });
        }
        match leader.peers.get(to).and_then(|progress| progress.preference) {
            None => return Err(TransferError::NotHeardFrom { id: to.clone() }),
            Some(preference) if preference.leader_priority == 0 => return Err(TransferError::NeverLeads { id: to.clone() }),
            Some(_) => {}
        }
        leader.handover = Some((to.clone(), deadline));
        // Its priority must not bring leadership straight back (a maintenance, a full disk).
        self.shared.yielding_until = Some(now + self.shared.config.leader_yield_us);
        self.continue_handover(now);
        Ok(())
    }

    pub(super) fn continue_handover(&mut self, now: Micros) {
        let Role::Leader(leader) = &mut self.role else { return };
        let Some((to, deadline)) = leader.handover.clone() else { return };
        let caught_up = leader.peers.get(&to).is_some_and(|progress| progress.matched >= self.shared.accepted.index);
        if now >= deadline {
            leader.handover = None;
            return;
        }
        if let Some(election) = &mut self.election {
            if caught_up && !election.transferring() {
                election.transfer_leadership(&to);
                self.drain_election(now);
            }
        }
    }

    /// Leader: hands leadership to the voter of highest priority above this node's own
    /// once it has been connected and caught up for the settle time (at once when this
    /// node's priority is 0: it leads only when it alone held acknowledged writes). The
    /// handover is the operator's transfer: writes pause until the target holds
    /// everything, and resume here if it does not take over.
    pub(super) fn return_leadership_to_preferred(&mut self, now: Micros) {
        let Some(election) = &self.election else { return };
        let give_up_after = election.config().handover_timeout_us();
        let may_write = self.accepting_writes(now).is_ok();
        let Role::Leader(leader) = &mut self.role else { return };
        let own = self.shared.config.leader_priority;
        let Some(preferred) = leader.preferred_voter(&self.shared.membership.voters, own) else {
            leader.preferred_since = None;
            return;
        };
        let since = match &leader.preferred_since {
            Some((id, since)) if *id == preferred => *since,
            _ => {
                leader.preferred_since = Some((preferred.clone(), now));
                now
            }
        };
        let settle = if own == 0 { 0 } else { self.shared.config.leader_return_settle_us };
        if !may_write || now < since + settle || now < leader.next_return_at {
            return;
        }
        // Should this attempt fail, the next waits out this one, then a pause (at least
        // 5 s, doubling with every failure) in which writes go on here.
        let pause = settle.max(MIN_RETURN_PAUSE_US) << leader.return_attempts.min(6);
        leader.return_attempts += 1;
        leader.next_return_at = now + give_up_after + pause;
        leader.preferred_since = None;
        leader.handover = Some((preferred, now + give_up_after));
        self.continue_handover(now);
    }

    /// Leader: the voter best placed to take over (in sync, furthest along), for handing
    /// leadership away when this node cannot go on writing (its disk is full).
    pub fn best_successor(&self) -> Option<NodeId> {
        match &self.role {
            Role::Leader(leader) => leader.best_successor(&self.shared.membership.voters),
            Role::Follower(_) | Role::Recovering { .. } => None,
        }
    }
}
