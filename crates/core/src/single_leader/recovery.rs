//! Becoming leader: the new leader asks who holds more of the log before it accepts writes; stepping down; raft-rs election outputs.

use super::*;

impl Replica {
    /// Raft elected this node for `epoch`: before leading it learns the durable position
    /// of a majority, so that it leads only if it holds every write a majority acked.
    pub(super) fn start_recovery(&mut self, now: Micros, epoch: u64) {
        self.step_down(None);
        self.epoch = self.epoch.max(epoch);
        let mut answers = BTreeMap::new();
        answers.insert(self.config.id.clone(), self.last);
        self.recovery = Some(Recovery { epoch, answers, sent_at: now, resent_at: now, transfer: None });
        for peer in self.membership.voters.clone() {
            if peer != self.config.id {
                self.outputs.push_back(Output::Send { to: peer, message: Message::Recover { epoch } });
            }
        }
        self.conclude_recovery(now);
    }

    /// Requests or answers may be lost: ask the silent nodes again every heartbeat interval.
    pub(super) fn resend_recovery_requests(&mut self, now: Micros) {
        let interval = self.config.heartbeat_interval_us;
        let Some(recovery) = &mut self.recovery else { return };
        if now < recovery.resent_at + interval {
            return;
        }
        recovery.resent_at = now;
        let epoch = recovery.epoch;
        let silent: Vec<NodeId> = self.membership.voters.iter().filter(|member| !recovery.answers.contains_key(*member)).cloned().collect();
        for peer in silent {
            self.outputs.push_back(Output::Send { to: peer, message: Message::Recover { epoch } });
        }
    }

    /// With answers from a majority: lead if no answer is ahead of ours, else hand
    /// leadership to the most up-to-date node (raft's leadership transfer).
    pub(super) fn conclude_recovery(&mut self, now: Micros) {
        let majority = self.membership.majority();
        let Some(election) = &mut self.election else { return };
        let timeout = election.config().election_timeout_min_us();
        let Some(recovery) = &mut self.recovery else { return };
        if recovery.answers.len() < majority || recovery.transfer.is_some() {
            return;
        }
        let own = self.last;
        let best = recovery
            .answers
            .iter()
            .max_by_key(|(id, last)| (last.epoch, last.index, **id == self.config.id, std::cmp::Reverse((*id).clone())))
            .map(|(id, _)| id.clone())
            .expect("answers include our own");
        if best != self.config.id {
            debug_assert!((own.epoch, own.index) <= (recovery.answers[&best].epoch, recovery.answers[&best].index));
            election.transfer_leadership(&best);
            recovery.transfer = Some((best, now + 2 * timeout));
            self.drain_election(now);
            return;
        }
        // Not before a leader this node itself heard from may still hold its lease.
        if self.leader_contact_at.is_some_and(|at| now < at + timeout) {
            return;
        }
        let recovery = self.recovery.take().expect("checked above");
        let lease_until = recovery.sent_at + lease_us(timeout);
        let epoch = recovery.epoch;
        self.epoch = epoch;
        self.leader = Some(self.config.id.clone());
        self.role = Role::Leader(LeaderState::new(&self.config, &self.membership, epoch, self.last, now, lease_until));
        self.broadcast_heartbeat(now);
    }

    pub(super) fn on_recover(&mut self, now: Micros, from: &NodeId, epoch: u64) {
        // A node still joining (perhaps added back empty after its disk was replaced)
        // does not answer: its position would hide writes its earlier self acknowledged.
        if epoch < self.epoch || *from == self.config.id || !self.membership.contains(&self.config.id) {
            return;
        }
        self.follow(now, epoch, from);
        let last = self.last;
        self.outputs.push_back(Output::Send { to: from.clone(), message: Message::RecoverAck { epoch, last } });
    }

    /// Stops leading (or recovering): pending writes end with "outcome unknown" (they
    /// are durable here and may or may not survive), pending reads fail.
    pub(super) fn step_down(&mut self, leader: Option<NodeId>) {
        self.recovery = None;
        self.handover = None;
        self.leader = leader;
        let Role::Leader(state) = std::mem::replace(&mut self.role, Role::Follower(FollowerState::new())) else { return };
        let copies = |index: u64| 1 + state.peers.values().filter(|progress| progress.matched >= index).count();
        for waiter in state.writes {
            let error = WriteError::Timeout {
                position: waiter.position,
                acked_by: copies(waiter.position.index),
                needed: format!("{} (this node stopped leading)", requirement_text(waiter.requirement)),
            };
            self.outputs.push_back(Output::WriteDone { tag: waiter.tag, result: Err(error) });
        }
        for read in state.reads {
            self.outputs.push_back(Output::ReadDone { tag: read.tag, result: Err(ReadError::NotLeader { leader: self.leader.clone() }) });
        }
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
                        self.outputs.push_back(Output::SaveElection { state, then });
                    }
                }
                ElectionOutput::Send { to, bytes } => match &mut saving {
                    Some((_, then)) => then.push((to, Message::Raft { bytes })),
                    None => self.outputs.push_back(Output::Send { to, message: Message::Raft { bytes } }),
                },
            }
        }
        if let Some((state, then)) = saving {
            self.outputs.push_back(Output::SaveElection { state, then });
        }
        if let Some(membership) = membership {
            self.apply_membership(now, membership);
        }
        if leadership.is_self {
            let leading_this_term = self.is_leader() && self.epoch == leadership.term;
            let recovering_this_term = self.recovery.as_ref().is_some_and(|recovery| recovery.epoch == leadership.term);
            if !leading_this_term && !recovering_this_term {
                self.start_recovery(now, leadership.term);
            }
        } else if self.is_leader() || self.recovery.is_some() {
            self.step_down(leadership.leader.clone());
            self.epoch = self.epoch.max(leadership.term);
        } else if leadership.term > self.epoch {
            // A new term: fence the old leader's appends; learn the new one if known.
            self.epoch = leadership.term;
            self.leader = leadership.leader.clone();
        } else if leadership.leader.is_some() && self.leader.is_none() {
            self.leader = leadership.leader.clone();
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

/// A node raft elected, collecting durable positions before it leads (module docs of
/// `election.rs` and docs/design/failover.md).
#[derive(Debug)]
pub(super) struct Recovery {
    pub(super) epoch: u64,
    pub(super) answers: BTreeMap<NodeId, Position>,
    /// When the first requests went out (the lease of a leader that emerges counts
    /// from here) and when they were last repeated to nodes that did not answer.
    pub(super) sent_at: Micros,
    pub(super) resent_at: Micros,
    /// Leadership is being handed to the most up-to-date node, until this time.
    pub(super) transfer: Option<(NodeId, Micros)>,
}
