//! Membership changes, one member at a time through raft, and learners promoted once caught up.

use super::*;

impl Replica {
    /// Voters and learners as this node last applied them.
    pub fn membership(&self) -> &Membership {
        &self.shared.membership
    }

    /// A membership change may be under way: proposed and not yet applied here, or (on
    /// a new leader) entries from earlier terms are not yet applied. Until it clears, a
    /// leader's membership may be out of date.
    pub fn membership_change_pending(&self) -> bool {
        self.election.as_ref().is_some_and(Election::change_pending)
    }

    /// Adopts the membership raft applied: a leader starts shipping to new members and
    /// stops counting removed ones; a node that was removed stops taking part.
    pub(super) fn apply_membership(&mut self, now: Micros, membership: Membership) {
        self.shared.membership = membership;
        self.shared.outputs.push_back(Output::MembershipChanged { membership: self.shared.membership.clone() });
        let member = self.shared.membership.contains(&self.shared.config.id);
        if self.was_member && !member {
            self.step_down(None);
        }
        self.was_member |= member;
        if let Role::Leader(leader) = &mut self.role {
            leader.adopt_membership(&mut self.shared, now);
        }
    }

    /// Leader: asks raft to add or remove a member (see [`MembershipRequest`]).
    ///
    /// # Errors
    /// If elections are off, this node does not lead, another change is under way, or
    /// the request makes no sense for the current membership.
    pub fn change_membership(&mut self, now: Micros, request: MembershipRequest) -> Result<(), MembershipError> {
        if self.election.is_none() {
            return Err(MembershipError::FailoverOff);
        }
        if self.accepting_writes(now).is_err() {
            return Err(MembershipError::NotLeader { leader: self.shared.leader.clone().filter(|leader| *leader != self.shared.config.id) });
        }
        // Also while a new leader has not yet applied its whole metadata log: until then
        // its membership may be out of date (raft counts that as pending).
        if self.membership_change_pending() {
            return Err(MembershipError::ChangePending);
        }
        let change = match request {
            MembershipRequest::Add { id, address } => {
                check_member_name(&id, &address)?;
                if self.shared.membership.contains(&id) {
                    return Err(MembershipError::AlreadyMember { id });
                }
                MemberChange::AddLearner { id, address }
            }
            MembershipRequest::Remove { id } => {
                if !self.shared.membership.contains(&id) {
                    return Err(MembershipError::NotMember { id });
                }
                if id == self.shared.config.id {
                    return Err(MembershipError::RemovingLeader { id });
                }
                if self.shared.membership.voters.len() == 1 && self.shared.membership.voters.contains(&id) {
                    return Err(MembershipError::LastVoter { id });
                }
                MemberChange::Remove { id }
            }
        };
        let election = self.election.as_mut().expect("checked above");
        election.propose(&change).map_err(|()| MembershipError::ChangePending)?;
        self.drain_election(now);
        Ok(())
    }

    /// Leader: promotes the first learner that has caught up on the data log (it held
    /// everything this leader had at some point: `in_sync`) and on the metadata log, one
    /// change at a time. A learner that asks to stay a non-voter (its acks say so, and it
    /// cannot be in sync before it acked) is never promoted.
    pub(super) fn promote_caught_up_learner(&mut self, now: Micros) {
        if self.accepting_writes(now).is_err() {
            return;
        }
        let Role::Leader(leader) = &self.role else { return };
        let Some(election) = &mut self.election else { return };
        if election.change_pending() {
            return;
        }
        let caught_up = self.shared.membership.learners.iter().find(|id| {
            let asks_to_vote = leader.peers.get(*id).is_some_and(|progress| progress.in_sync && progress.preference.is_some_and(|preference| preference.voter));
            // Every node is given the same `--non-voters`: a non-voter restarted without
            // the flag is not promoted either.
            asks_to_vote && !self.shared.config.non_voters.contains(*id) && election.holds_metadata(id)
        });
        if let Some(id) = caught_up.cloned() {
            if election.propose(&MemberChange::Promote { id }).is_ok() {
                self.drain_election(now);
            }
        }
    }
}

/// Names and addresses travel through raft as text lines (see `election.rs`).
pub(super) fn check_member_name(id: &str, address: &str) -> Result<(), MembershipError> {
    let bad = |text: &str| text.chars().any(|c| c.is_control() || c.is_whitespace());
    if id.is_empty() || id.len() > 64 || bad(id) || id.contains(['=', ',']) {
        return Err(MembershipError::BadName { reason: format!("bad node id {id:?}: 1 to 64 characters, no spaces, '=' or ','") });
    }
    if address.is_empty() || address.len() > 256 || bad(address) {
        return Err(MembershipError::BadName { reason: format!("bad peer address {address:?} for {id}") });
    }
    Ok(())
}
