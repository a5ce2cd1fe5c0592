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
//!   those entries committed durably (fsync): the leader's copy is the first of the
//!   copies counted for `w=`.
//! - Every event goes through `Protocol::handle` (the `on_*` handlers are private to
//!   the crate); the timer event (`Event::Tick`) comes no later than `poll_timeout()`.

use crate::election::{Election, ElectionConfig, ElectionOutput, MemberChange, Membership, SavedElection};
use crate::message::Message;
use crate::types::{AckMode, AckRequirement, Entry, Micros, NodeId, Position};
use std::collections::{BTreeMap, VecDeque};

mod config;
mod errors;
mod events;
mod follower;
mod leader;
mod log_match;
mod membership;
mod output;
mod reads;
mod recovery;
mod transfer;

pub use config::*;
pub use errors::*;
pub use events::*;
use follower::*;
use leader::*;
pub use log_match::*;
pub use output::*;
pub use reads::may_commit;
use reads::*;
use recovery::*;

#[derive(Debug)]
enum Role {
    Leader(LeaderState),
    Follower(FollowerState),
}

/// A per-follower line of `/status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FollowerStatus {
    pub id: NodeId,
    pub matched: u64,
    pub lag_us: Micros,
    pub in_sync: bool,
    pub last_ack_ago_us: Option<Micros>,
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
}

/// Most append times a leader keeps for measuring follower lag.
const APPEND_TIMES_LIMIT: usize = 65_536;

pub struct Replica {
    config: Config,
    /// Voters and learners (with elections, as raft last applied them; without, `members`).
    membership: Membership,
    /// This node has been a member (a joining node is not yet): leaving the membership
    /// after that means it was removed.
    was_member: bool,
    /// The leader this node follows (itself when leading); `None` while unknown.
    leader: Option<NodeId>,
    election: Option<Election>,
    recovery: Option<Recovery>,
    /// Leader: an operator asked to hand leadership to this node; writes pause until it
    /// has caught up and raft transferred, or the deadline passes.
    handover: Option<(NodeId, Micros)>,
    /// When this replica started, and whether it restarted with saved election state
    /// (it then waits an election timeout before voting: it may have promised a lease).
    started_at: Micros,
    restarted: bool,
    /// Last time an append or recovery request from another leader was accepted.
    leader_contact_at: Option<Micros>,
    /// Where each epoch starts in the local log, `(epoch, first index)`, ascending, up to
    /// `accepted`. Entries below the first start (compacted or under a snapshot) are
    /// taken to match any leader's.
    epoch_starts: Vec<(u64, u64)>,
    epoch: u64,
    /// Durable end of the local log (leader: committed locally; follower: persisted).
    last: Position,
    /// Follower: end of what was handed to `Persist` (>= `last`). Leader: equals `last`.
    accepted: Position,
    role: Role,
    outputs: VecDeque<Output>,
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
        let preferred = config.leader == config.id && !config.join;
        let election =
            config.elections.clone().map(|timing| Election::new(&config.id, (&config.members, &config.addresses), config.join, preferred, saved, timing, now));
        let membership = match &election {
            Some(election) => election.membership(),
            None => Membership { voters: config.members.iter().cloned().collect(), learners: Default::default(), addresses: config.addresses.clone() },
        };
        let restarted = saved.is_some_and(|saved| saved.term() > 0);
        let epoch = config.epoch.max(last.epoch).max(election.as_ref().map_or(0, Election::term));
        let (role, leader) = match &election {
            None if config.leader == config.id => {
                (Role::Leader(LeaderState::new(&config, &membership, epoch, last, now, Micros::MAX)), Some(config.id.clone()))
            }
            None => (Role::Follower(FollowerState::new()), Some(config.leader.clone())),
            Some(_) => (Role::Follower(FollowerState::new()), None),
        };
        let was_member = membership.contains(&config.id);
        let mut replica = Replica {
            config,
            membership,
            was_member,
            leader,
            election,
            recovery: None,
            handover: None,
            started_at: now,
            restarted,
            leader_contact_at: None,
            epoch_starts,
            epoch,
            last,
            accepted: last,
            role,
            outputs: VecDeque::new(),
            handled_at: now,
        };
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
        &self.config
    }

    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader(_))
    }

    /// The leader this node follows (itself when leading), if one is known.
    pub fn leader(&self) -> Option<&NodeId> {
        self.leader.as_ref()
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Durable end of the local log.
    pub fn last(&self) -> Position {
        self.last
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    pub fn status(&self, now: Micros) -> Status {
        let (commit_index, followers) = match &self.role {
            Role::Leader(leader) => {
                let followers = leader
                    .peers
                    .iter()
                    .map(|(id, progress)| FollowerStatus {
                        id: id.clone(),
                        matched: progress.matched,
                        lag_us: self.follower_lag_us(leader, progress, now),
                        in_sync: progress.in_sync,
                        last_ack_ago_us: progress.last_ack_at.map(|at| now.saturating_sub(at)),
                    })
                    .collect();
                (leader.commit_index, followers)
            }
            Role::Follower(follower) => (follower.commit_index, Vec::new()),
        };
        Status {
            is_leader: self.is_leader(),
            leader: self.leader.clone(),
            epoch: self.epoch,
            term: self.election.as_ref().map_or(0, Election::term),
            recovering: self.recovery.is_some(),
            accepting_writes: self.accepting_writes(now).is_ok(),
            last: self.last,
            commit_index,
            lag_us: if self.is_leader() { None } else { self.lag_us(now) },
            followers,
            membership: self.membership.clone(),
            membership_change_pending: self.membership_change_pending(),
        }
    }

    pub(crate) fn on_message(&mut self, now: Micros, from: &NodeId, message: Message) {
        match message {
            Message::Append { epoch, leader, prev_index, prev_epoch, entries, commit_index, leader_last, read_seq } => {
                self.on_append(now, epoch, leader, (prev_index, prev_epoch), entries, commit_index, leader_last, read_seq)
            }
            Message::AppendAck { epoch, durable, next_index, read_seq, rejected, diverged } => {
                self.on_append_ack(now, from, epoch, durable, next_index, read_seq, rejected, diverged)
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
                if let Some(recovery) = &mut self.recovery {
                    // Only voters' answers make the majority (and a learner cannot lead).
                    if recovery.epoch == epoch && self.membership.voters.contains(from) {
                        recovery.answers.insert(from.clone(), last);
                        self.conclude_recovery(now);
                    }
                }
            }
        }
    }

    /// Timers: heartbeats, resends, in-sync membership and deadlines.
    pub(crate) fn on_tick(&mut self, now: Micros) {
        if let Some(election) = &mut self.election {
            election.on_tick(now);
            self.drain_election(now);
            let transfer_failed = self.recovery.as_ref().and_then(|recovery| recovery.transfer.as_ref()).is_some_and(|(_, until)| now >= *until);
            if transfer_failed {
                // The most up-to-date node did not take over: ask everyone again.
                let epoch = self.recovery.as_ref().map_or(self.epoch, |recovery| recovery.epoch);
                self.start_recovery(now, epoch);
            } else {
                self.resend_recovery_requests(now);
                self.conclude_recovery(now);
            }
        }
        self.continue_handover(now);
        self.promote_caught_up_learner(now);
        let in_sync_timeout = self.config.in_sync_timeout_us;
        let resend_timeout = self.config.resend_timeout_us;
        let Role::Leader(leader) = &mut self.role else { return };
        let mut resend = Vec::new();
        for (id, progress) in leader.peers.iter_mut() {
            let silent = progress.last_ack_at.is_none_or(|at| now.saturating_sub(at) > in_sync_timeout);
            if silent {
                progress.in_sync = false;
            }
            if progress.snapshot_wait.is_some_and(|(_, deadline)| now >= deadline) {
                progress.snapshot_wait = None;
                progress.snapshotting = false;
            }
            let waiting = progress.next > progress.matched + 1;
            let backoff = resend_timeout << progress.fruitless_resends.min(MAX_RESEND_BACKOFF_SHIFT);
            if waiting && !progress.fetching && !progress.snapshotting && now.saturating_sub(progress.last_sent_at) > backoff {
                progress.fruitless_resends = if progress.matched == progress.matched_at_resend { progress.fruitless_resends + 1 } else { 0 };
                progress.matched_at_resend = progress.matched;
                progress.next = progress.matched + 1;
                resend.push(id.clone());
            }
        }
        for peer in resend {
            self.send_append(&peer, now, true);
        }
        let Role::Leader(leader) = &mut self.role else { unreachable!() };
        if now >= leader.next_heartbeat_at {
            leader.next_heartbeat_at = now + self.config.heartbeat_interval_us;
            self.broadcast_heartbeat(now);
        }
        self.advance(now);
    }

    // ---- leader internals ----
}
