//! The replica state machine: leader-side log shipping and ack accounting, follower-side
//! acceptance, lag measurement and read barriers.
//!
//! Driving contract (the server and the simulator both follow it):
//! - `now` passed to handlers never goes backwards.
//! - After every handler call, drain `poll_output()` until it returns `None`.
//! - `Output::Persist` must be made durable (entries applied to the database and
//!   logged in one transaction) before `Event::Persisted` is handed in for it;
//!   acknowledgements to the leader are only sent on `Event::Persisted`, so an ack always
//!   means "on disk".
//! - A leader hands in `Event::LeaderAppended` only after its own transaction holding
//!   those entries committed durably (fsync): only then is the leader's copy counted for
//!   `w=` and the commit index. It may hand in `Event::LeaderWrote` for them earlier,
//!   once they committed but while the sync is still running: they ship at once, so the
//!   leader's sync and the followers' overlap (Raft's parallel leader append). Entries
//!   handed to `LeaderWrote` must then be made durable (or the node stop) in order, each
//!   followed by its `LeaderAppended`. Without elections `LeaderWrote` is ignored (a
//!   restarted leader keeps its epoch and could reuse an index its followers hold).
//! - Every event goes through `Protocol::handle` (the `on_*` handlers are private to
//!   the crate); the timer event (`Event::Tick`) comes no later than `poll_timeout()`.

use crate::election::{Election, ElectionConfig, ElectionOutput, MemberChange, Membership, SavedElection};
use crate::message::{Message, Preference};
use crate::types::{AckMode, AckRequirement, Entry, Micros, NodeId, Position};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

mod config;
mod errors;
mod events;
mod follower;
mod leader;
mod log_match;
mod membership;
mod output;
mod progress;
mod reads;
mod recovery;
mod role_changes;
mod shared;
mod transfer;

pub use config::*;
pub use errors::*;
pub use events::*;
use follower::*;
use leader::*;
pub use log_match::*;
pub use output::*;
use progress::*;
pub use reads::may_commit;
use recovery::*;
use shared::*;

/// What this node is doing now. Only `role_changes.rs` turns one role into another.
#[derive(Debug)]
enum Role {
    Leader(Leader),
    Follower(Follower),
    /// Raft elected this node; it asks the voters who holds more of the log before it
    /// leads (`recovery.rs`). It still finishes persisting what an earlier leader sent
    /// (`follower` starts fresh, as on every role change).
    Recovering {
        recovery: Recovery,
        follower: Follower,
    },
}

impl Role {
    /// The follower's state, also kept while recovering.
    fn follower(&self) -> Option<&Follower> {
        match self {
            Role::Follower(follower) | Role::Recovering { follower, .. } => Some(follower),
            Role::Leader(_) => None,
        }
    }

    fn follower_mut(&mut self) -> Option<&mut Follower> {
        match self {
            Role::Follower(follower) | Role::Recovering { follower, .. } => Some(follower),
            Role::Leader(_) => None,
        }
    }
}

/// A per-follower line of `/status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FollowerStatus {
    pub id: NodeId,
    pub matched: u64,
    pub lag_us: Micros,
    pub in_sync: bool,
    pub last_ack_ago_us: Option<Micros>,
    /// What the follower asked of leader placement in its latest ack.
    pub preference: Option<Preference>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub is_leader: bool,
    /// The leader this node follows (itself if leader); `None` during an election.
    pub leader: Option<NodeId>,
    pub epoch: u64,
    /// Raft's term (equals `epoch` once an elected leader has recovered); 0 without elections.
    pub term: u64,
    /// This node won the vote and is collecting positions before it leads.
    pub recovering: bool,
    /// Leader with elections: whether its lease lets it accept writes now.
    pub accepting_writes: bool,
    pub last: Position,
    pub commit_index: u64,
    /// Follower only: how long since this node last knew it had everything the leader had.
    pub lag_us: Option<Micros>,
    pub followers: Vec<FollowerStatus>,
    /// Voters and learners as this node last applied them.
    pub membership: Membership,
    /// A membership change is proposed and not yet applied here.
    pub membership_change_pending: bool,
    /// What this node asks of leader placement (its priority, whether it votes).
    pub preference: Preference,
}

/// The single-leader replica: a thin dispatcher over its role, the context every role
/// shares, and raft's election (which decides role changes).
pub struct Replica {
    shared: Shared,
    role: Role,
    election: Option<Election>,
    /// This node has been a member (a joining node is not yet): leaving the membership
    /// after that means it was removed.
    was_member: bool,
    /// When this replica started, and whether it restarted with saved election state
    /// (it then waits an election timeout before voting: it may have promised a lease).
    started_at: Micros,
    restarted: bool,
    /// Last time an append or recovery request from another leader was accepted.
    leader_contact_at: Option<Micros>,
    /// The newest `now` an event was handled at (for `poll_timeout`).
    handled_at: Micros,
}

impl Replica {
    /// Starts a replica whose durable log ends at `last` (recovered by the driver), with
    /// no record of where earlier epochs start and no saved election state.
    ///
    /// # Panics
    /// If the configuration breaks its invariants (a bug in the caller).
    pub fn new(config: Config, last: Position, now: Micros) -> Replica {
        Replica::start(config, last, Vec::new(), None, now)
    }

    /// Starts a replica from what the driver recovered: the durable end of the log, where
    /// each epoch starts in it (`(epoch, first index)`, ascending), and the election state
    /// last saved through `Output::SaveElection`.
    pub fn start(config: Config, last: Position, mut epoch_starts: Vec<(u64, u64)>, saved: Option<&SavedElection>, now: Micros) -> Replica {
        assert!(config.join || config.members.contains(&config.id), "members must include this node");
        assert!(config.join || config.members.contains(&config.leader), "members must include the leader");
        assert!(!config.join || config.elections.is_some(), "joining a cluster needs elections");
        epoch_starts.retain(|(_, first)| *first <= last.index && *first > 0);
        if epoch_starts.last().is_none_or(|(epoch, _)| *epoch != last.epoch) && last.index > 0 {
            epoch_starts.push((last.epoch, last.index));
        }
        let preferred = config.leader == config.id && !config.join && config.preference().may_lead();
        let election = config.elections.clone().map(|timing| {
            let start = (&config.members[..], &config.addresses, &config.non_voters);
            Election::new(&config.id, start, config.leader_priority == 0, config.join, preferred, saved, timing, now)
        });
        let membership = match &election {
            Some(election) => election.membership(),
            None => Membership { voters: config.members.iter().cloned().collect(), learners: Default::default(), addresses: config.addresses.clone() },
        };
        let restarted = saved.is_some_and(|saved| saved.term() > 0);
        let epoch = config.epoch.max(last.epoch).max(election.as_ref().map_or(0, Election::term));
        let was_member = membership.contains(&config.id);
        let leader = match &election {
            None if config.leader == config.id => Some(config.id.clone()),
            None => Some(config.leader.clone()),
            Some(_) => None,
        };
        let shared =
            Shared { config, membership, epoch, leader, epoch_starts, last, accepted: last, outputs: VecDeque::new(), committed: 0, yielding_until: None };
        let role = match &election {
            None if shared.config.leader == shared.config.id => Role::Leader(Leader::new(&shared, now, Micros::MAX)),
            _ => Role::Follower(Follower::new()),
        };
        let mut replica = Replica { shared, role, election, was_member, started_at: now, restarted, leader_contact_at: None, handled_at: now };
        if let Some(election) = &mut replica.election {
            // The preferred first leader does not wait out a timeout on a fresh cluster.
            if election.term() == 0 && preferred {
                election.campaign();
            }
        }
        replica.on_tick(now);
        replica
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader(_))
    }

    /// The leader this node follows (itself when leading), if one is known.
    pub fn leader(&self) -> Option<&NodeId> {
        self.shared.leader.as_ref()
    }

    pub fn epoch(&self) -> u64 {
        self.shared.epoch
    }

    /// Durable end of the local log.
    pub fn last(&self) -> Position {
        self.shared.last
    }

    /// How far the local log may be compacted: entries up to here are durable here and on
    /// a majority, so no leader can make this node roll them back. Entries beyond it must
    /// stay in the log, for the rollback store to keep if they turn out to diverge.
    pub fn compactable_through(&self) -> u64 {
        self.shared.committed.min(self.shared.last.index)
    }

    /// How far the log is known committed (durable on as many nodes as a majority).
    pub fn commit_index(&self) -> u64 {
        match &self.role {
            Role::Leader(leader) => leader.commit_index,
            Role::Follower(follower) | Role::Recovering { follower, .. } => follower.commit_index,
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.shared.outputs.pop_front()
    }

    pub fn status(&self, now: Micros) -> Status {
        let commit_index = self.commit_index();
        let followers = match &self.role {
            Role::Leader(leader) => leader.follower_status(self.shared.last.index, now),
            Role::Follower(_) | Role::Recovering { .. } => Vec::new(),
        };
        Status {
            is_leader: self.is_leader(),
            leader: self.shared.leader.clone(),
            epoch: self.shared.epoch,
            term: self.election.as_ref().map_or(0, Election::term),
            recovering: matches!(self.role, Role::Recovering { .. }),
            accepting_writes: self.accepting_writes(now).is_ok(),
            last: self.shared.last,
            commit_index,
            lag_us: if self.is_leader() { None } else { self.lag_us(now) },
            followers,
            membership: self.shared.membership.clone(),
            membership_change_pending: self.membership_change_pending(),
            preference: self.shared.preference(),
        }
    }

    pub(crate) fn on_message(&mut self, now: Micros, from: &NodeId, message: Message) {
        match message {
            Message::Append { epoch, leader, prev_index, prev_epoch, entries, commit_index, leader_last, read_seq } => {
                self.on_append(now, epoch, leader, (prev_index, prev_epoch), entries, commit_index, leader_last, read_seq)
            }
            Message::AppendAck { epoch, durable, next_index, read_seq, rejected, diverged, preference } => {
                if let Role::Leader(leader) = &mut self.role {
                    if let Some(progress) = leader.peers.get_mut(from) {
                        progress.preference = Some(preference);
                    }
                    leader.on_append_ack(&mut self.shared, now, from, epoch, durable, next_index, read_seq, rejected, diverged);
                }
            }
            Message::Raft { bytes } => {
                let may_vote = self.may_vote(now);
                if let Some(election) = &mut self.election {
                    election.on_message(from, &bytes, may_vote);
                    self.drain_election(now);
                }
            }
            Message::Recover { epoch } => self.on_recover(now, from, epoch),
            Message::RecoverAck { epoch, last } => {
                if let Role::Recovering { recovery, .. } = &mut self.role {
                    if recovery.on_answer(&self.shared, from, epoch, last) {
                        self.conclude_recovery(now);
                    }
                }
            }
        }
    }

    /// An append from a leader: refused (with our epoch) if stale, else its sender is
    /// followed and the entries go to the follower.
    #[allow(clippy::too_many_arguments)]
    fn on_append(
        &mut self,
        now: Micros,
        epoch: u64,
        leader_id: NodeId,
        previous: (u64, u64),
        entries: Vec<Entry>,
        commit_index: u64,
        leader_last: u64,
        read_seq: u64,
    ) {
        let stale = epoch < self.shared.epoch || (self.election.is_none() && leader_id != self.shared.config.leader);
        if stale || leader_id == self.shared.config.id {
            // A stale or unknown leader: tell it our epoch, change nothing.
            let seen = self.role.follower().map_or(0, |follower| follower.read_seq);
            self.shared.send_ack_to(&leader_id, seen, true, None);
            return;
        }
        if self.election.is_some() {
            self.follow(now, epoch, &leader_id);
        }
        // Two leaders in one epoch would be a configuration error; a leader refuses the entries.
        if let Some(follower) = self.role.follower_mut() {
            follower.on_append(&mut self.shared, now, epoch, &leader_id, previous, entries, commit_index, leader_last, read_seq);
        }
    }

    /// Timers: elections, recovery resends, handover, learner promotion, and the leader's
    /// heartbeats, resends, in-sync membership and deadlines.
    pub(crate) fn on_tick(&mut self, now: Micros) {
        if self.shared.yielding_until.is_some_and(|until| now >= until) {
            self.shared.yielding_until = None;
        }
        if let Some(election) = &mut self.election {
            election.on_tick(now);
            self.drain_election(now);
            let failed_transfer = match &self.role {
                Role::Recovering { recovery, .. } if recovery.transfer_failed(now) => Some(recovery.epoch),
                _ => None,
            };
            if let Some(epoch) = failed_transfer {
                // The most up-to-date node did not take over: ask everyone again.
                self.start_recovery(now, epoch);
            } else {
                if let Role::Recovering { recovery, .. } = &mut self.role {
                    recovery.resend(&mut self.shared, now);
                }
                self.conclude_recovery(now);
            }
        }
        self.continue_handover(now);
        self.return_leadership_to_preferred(now);
        self.promote_caught_up_learner(now);
        if let Role::Leader(leader) = &mut self.role {
            leader.on_tick(&mut self.shared, now);
        }
    }

    /// A snapshot was installed or rolled back to: a follower acknowledges it at once.
    fn after_snapshot(&mut self, now: Micros) {
        match self.role.follower_mut() {
            Some(follower) => follower.after_snapshot(&mut self.shared, now),
            None => self.shared.send_ack(0, false),
        }
    }
}
