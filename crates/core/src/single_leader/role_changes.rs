//! The only place one role's state becomes another's: following a new leader, stepping
//! down, starting and concluding a recovery round, and acting on what raft's election
//! produced.

use super::*;

impl Replica {
    /// A leader of `epoch` (or a node raft elected for it) spoke: adopt it.
    pub(super) fn follow(&mut self, now: Micros, epoch: u64, leader: &NodeId) {
        if epoch > self.shared.epoch || self.shared.leader.as_ref() != Some(leader) {
            if !matches!(self.role, Role::Follower(_)) {
                self.step_down(Some(leader.clone()));
            }
            self.shared.epoch = self.shared.epoch.max(epoch);
            self.shared.leader = Some(leader.clone());
        }
        self.leader_contact_at = Some(now);
    }

    /// Stops leading (or recovering) and follows `leader` (`None`: unknown yet), with a
    /// fresh follower's state: a leader's pending writes and reads fail (see
    /// [`Leader::step_down`]).
    pub(super) fn step_down(&mut self, leader: Option<NodeId>) {
        self.shared.leader = leader;
        if let Role::Leader(leader) = std::mem::replace(&mut self.role, Role::Follower(Follower::new())) {
            leader.step_down(&mut self.shared);
        }
    }

    /// Raft elected this node for `epoch`: before leading it learns the durable position
    /// of a majority, so that it leads only if it holds every write a majority acked.
    pub(super) fn start_recovery(&mut self, now: Micros, epoch: u64) {
        self.step_down(None);
        self.shared.epoch = self.shared.epoch.max(epoch);
        let recovery = Recovery::start(&mut self.shared, now, epoch);
        self.role = Role::Recovering { recovery, follower: Follower::new() };
        self.conclude_recovery(now);
    }

    /// Leads, or hands leadership to a node that is ahead, once the round allows.
    pub(super) fn conclude_recovery(&mut self, now: Micros) {
        let Some(election) = &self.election else { return };
        let timeout = election.config().election_timeout_min_us();
        let Role::Recovering { recovery, .. } = &mut self.role else { return };
        match recovery.conclude(&self.shared, now, timeout, self.leader_contact_at) {
            Conclusion::Wait => {}
            Conclusion::TransferTo(best) => {
                if let Some(election) = &mut self.election {
                    election.transfer_leadership(&best);
                }
                self.drain_election(now);
            }
            Conclusion::Lead { epoch, lease_until } => {
                self.shared.epoch = epoch;
                self.shared.leader = Some(self.shared.config.id.clone());
                let mut leader = Leader::new(&self.shared, now, lease_until);
                leader.broadcast_heartbeat(&mut self.shared, now);
                self.role = Role::Leader(leader);
            }
        }
    }

    /// Another node's recovery round asks where our log ends.
    pub(super) fn on_recover(&mut self, now: Micros, from: &NodeId, epoch: u64) {
        // A node still joining (perhaps added back empty after its disk was replaced)
        // does not answer: its position would hide writes its earlier self acknowledged.
        if epoch < self.shared.epoch || *from == self.shared.config.id || !self.shared.membership.contains(&self.shared.config.id) {
            return;
        }
        self.follow(now, epoch, from);
        let last = self.shared.last;
        self.shared.send(from.clone(), Message::RecoverAck { epoch, last });
    }

    /// Handles what raft produced, then follows any change of leadership it shows.
    pub(super) fn drain_election(&mut self, now: Micros) {
        let Some(election) = &mut self.election else { return };
        let mut produced = Vec::new();
        election.drain(&mut produced);
        let leadership = election.leadership();
        let membership = election.take_membership_change().then(|| election.membership());
        // Raft messages produced after a save depend on it (a vote, a new term): they
        // travel inside the save's output, to leave only once it is durable.
        let mut saving: Option<(SavedElection, Vec<(NodeId, Message)>)> = None;
        for output in produced {
            match output {
                ElectionOutput::Save(state) => {
                    if let Some((state, then)) = saving.replace((state, Vec::new())) {
                        self.shared.outputs.push_back(Output::SaveElection { state, then });
                    }
                }
                ElectionOutput::Send { to, bytes } => match &mut saving {
                    Some((_, then)) => then.push((to, Message::Raft { bytes })),
                    None => self.shared.send(to, Message::Raft { bytes }),
                },
            }
        }
        if let Some((state, then)) = saving {
            self.shared.outputs.push_back(Output::SaveElection { state, then });
        }
        if let Some(membership) = membership {
            self.apply_membership(now, membership);
        }
        if leadership.is_self {
            let this_term = match &self.role {
                Role::Leader(_) => self.shared.epoch == leadership.term,
                Role::Recovering { recovery, .. } => recovery.epoch == leadership.term,
                Role::Follower(_) => false,
            };
            if !this_term {
                self.start_recovery(now, leadership.term);
            }
        } else if !matches!(self.role, Role::Follower(_)) {
            self.step_down(leadership.leader.clone());
            self.shared.epoch = self.shared.epoch.max(leadership.term);
        } else if leadership.term > self.shared.epoch {
            // A new term: fence the old leader's appends; learn the new one if known.
            self.shared.epoch = leadership.term;
            self.shared.leader = leadership.leader.clone();
        } else if leadership.leader.is_some() && self.shared.leader.is_none() {
            self.shared.leader = leadership.leader.clone();
        }
    }

    /// Whether this node may vote in an election now: not while a leader it heard from
    /// recently may still hold a lease, nor (after a restart) before an election timeout
    /// has passed, since it cannot remember whom it heard from.
    pub(super) fn may_vote(&self, now: Micros) -> bool {
        let Some(election) = &self.election else { return false };
        let timeout = election.config().election_timeout_min_us();
        if self.is_leader() && self.accepting_writes(now).is_ok() {
            return false;
        }
        if self.restarted && now < self.started_at + timeout {
            return false;
        }
        self.leader_contact_at.is_none_or(|at| now >= at + timeout)
    }
}
