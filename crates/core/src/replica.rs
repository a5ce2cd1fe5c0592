//! The replica state machine: leader-side log shipping and ack accounting, follower-side
//! acceptance, lag measurement and read barriers.
//!
//! Driving contract (the server and the simulator both follow it):
//! - `now` passed to handlers never goes backwards.
//! - After every handler call, drain `poll_output()` until it returns `None`.
//! - `Output::Persist` must be made durable (entries applied to the database and
//!   logged in one transaction) before `on_persisted` is called for it; acknowledgements
//!   to the leader are only sent from `on_persisted`, so an ack always means "on disk".
//! - A leader calls `on_leader_appended` only after its own transaction holding those
//!   entries committed durably (fsync): the leader's copy is the first of the copies
//!   counted for `w=`.
//! - `on_tick` is called at least every `Config::tick_interval_us`.

use crate::election::{Election, ElectionConfig, ElectionOutput, MemberChange, Membership, SavedElection};
use crate::message::Message;
use crate::types::{AckMode, AckRequirement, Entry, Micros, NodeId, Position};
use std::collections::{BTreeMap, VecDeque};

/// Static configuration of one replica.
#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    /// Every member at first start, this node included. Invariants: non-empty, contains
    /// `id` and `leader` (unless `join`). Later, saved election state knows the members.
    pub members: Vec<NodeId>,
    /// Peer address of each of `members` (opaque to the core): handed to nodes that join.
    pub addresses: BTreeMap<NodeId, String>,
    /// This node starts outside the cluster and waits for a leader to add it; `members`
    /// is not used. Needs elections.
    pub join: bool,
    /// Without elections, the leader; with them, the node that campaigns first on a
    /// fresh cluster (a preference for the first election only).
    pub leader: NodeId,
    /// Automatic failover by quorum vote; `None` keeps `leader` fixed.
    pub elections: Option<ElectionConfig>,
    pub epoch: u64,
    pub ack: AckMode,
    /// How often the leader sends heartbeats (which also carry lag and commit information).
    pub heartbeat_interval_us: Micros,
    /// A follower that has not acknowledged for this long leaves the in-sync set.
    pub in_sync_timeout_us: Micros,
    /// A write not acknowledged by enough copies after this long fails with "outcome unknown".
    pub write_timeout_us: Micros,
    /// A linearizable read not confirmed after this long fails.
    pub read_timeout_us: Micros,
    /// Entries sent but unacknowledged for this long are assumed lost and resent.
    pub resend_timeout_us: Micros,
    pub max_entries_per_append: usize,
    pub max_bytes_per_append: usize,
    /// Most entries a follower may have in flight (sent, not acknowledged).
    pub max_inflight_entries: u64,
    /// How long to wait for a follower to acknowledge a snapshot before sending another.
    pub snapshot_timeout_us: Micros,
    /// Bytes of recent entries kept in memory for shipping; older ones are read back
    /// from the durable log through `Output::ReadLog`.
    pub tail_cache_bytes: usize,
}

impl Config {
    pub fn new(id: impl Into<NodeId>, members: Vec<NodeId>, leader: impl Into<NodeId>, ack: AckMode) -> Config {
        Config {
            id: id.into(),
            members,
            addresses: BTreeMap::new(),
            join: false,
            leader: leader.into(),
            elections: None,
            epoch: 1,
            ack,
            heartbeat_interval_us: 50_000,
            in_sync_timeout_us: 1_000_000,
            write_timeout_us: 10_000_000,
            read_timeout_us: 5_000_000,
            resend_timeout_us: 500_000,
            max_entries_per_append: 512,
            max_bytes_per_append: 1 << 20,
            max_inflight_entries: 4_096,
            snapshot_timeout_us: 60_000_000,
            tail_cache_bytes: 64 << 20,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteError {
    /// This node is not the leader (the driver forwards instead of getting here), or is
    /// one that may not accept writes now (recovering, transferring, lease expired).
    /// `leader` is the leader if one is known.
    NotLeader { leader: Option<NodeId> },
    /// The write is durable on the leader but not yet on enough copies; it may still
    /// replicate, or be lost if the leader is lost. Its outcome is unknown.
    Timeout { position: Position, acked_by: usize, needed: String },
    /// `w=` asked for more copies than there are members.
    Unsatisfiable { requested: usize, members: usize },
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::NotLeader { leader: Some(leader) } => write!(f, "not the leader; leader is {leader}"),
            WriteError::NotLeader { leader: None } => write!(f, "no leader is known (an election is under way): retry shortly"),
            WriteError::Timeout { position, acked_by, needed } => write!(
                f,
                "write at position {position} is durable on {acked_by} node(s) but {needed} did not \
                 acknowledge in time: outcome unknown (it may still replicate)"
            ),
            WriteError::Unsatisfiable { requested, members } => {
                write!(f, "w={requested} asks for more copies than the {members} members of the cluster")
            }
        }
    }
}

/// Why leadership cannot be handed over.
/// Why a membership change was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipError {
    FailoverOff,
    NotLeader {
        leader: Option<NodeId>,
    },
    /// An earlier change is not yet applied (one at a time).
    ChangePending,
    AlreadyMember {
        id: NodeId,
    },
    NotMember {
        id: NodeId,
    },
    /// The leader cannot remove itself: transfer leadership first.
    RemovingLeader {
        id: NodeId,
    },
    LastVoter {
        id: NodeId,
    },
    BadName {
        reason: String,
    },
}

impl std::fmt::Display for MembershipError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MembershipError::FailoverOff => write!(f, "membership changes need automatic failover (--failover on)"),
            MembershipError::NotLeader { leader: Some(leader) } => write!(f, "not the leader; leader is {leader}"),
            MembershipError::NotLeader { leader: None } => write!(f, "no leader is known (an election is under way): retry shortly"),
            MembershipError::ChangePending => write!(f, "another membership change is still under way: retry shortly"),
            MembershipError::AlreadyMember { id } => write!(f, "{id} is already a member"),
            MembershipError::NotMember { id } => write!(f, "{id} is not a member"),
            MembershipError::RemovingLeader { id } => {
                write!(f, "{id} is the leader and cannot remove itself: transfer leadership first (tern cluster transfer-leader)")
            }
            MembershipError::LastVoter { id } => write!(f, "{id} is the only voter; a cluster cannot remove its last voter"),
            MembershipError::BadName { reason } => write!(f, "{reason}"),
        }
    }
}

/// A membership change an operator asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipRequest {
    /// Add `id`, reachable at `address`: it joins as a learner, catches up on the data
    /// log, then the leader promotes it to voter.
    Add {
        id: NodeId,
        address: String,
    },
    Remove {
        id: NodeId,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransferError {
    FailoverOff,
    NotLeader { leader: Option<NodeId> },
    NotAnotherMember { id: NodeId },
}

impl std::fmt::Display for TransferError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransferError::FailoverOff => write!(f, "automatic failover is off: the leader is fixed by --leader"),
            TransferError::NotLeader { leader: Some(leader) } => write!(f, "this node does not lead; the leader is {leader}"),
            TransferError::NotLeader { leader: None } => write!(f, "this node does not lead and no leader is known: retry shortly"),
            TransferError::NotAnotherMember { id } => write!(f, "{id} is not another member of the cluster"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadError {
    NotLeader {
        leader: Option<NodeId>,
    },
    /// A quorum did not confirm this node's leadership in time.
    Timeout,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::NotLeader { leader: Some(leader) } => write!(f, "not the leader; leader is {leader}"),
            ReadError::NotLeader { leader: None } => write!(f, "no leader is known (an election is under way): retry shortly"),
            ReadError::Timeout => write!(f, "a quorum did not confirm leadership in time"),
        }
    }
}

/// What the core asks its driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Send {
        to: NodeId,
        message: Message,
    },
    /// Follower: apply and log these entries in one durable transaction, then call `on_persisted`.
    Persist {
        entries: Vec<Entry>,
    },
    /// Leader: entries from `from_index` are no longer cached; read them from the durable
    /// log and call `on_log_read` (or `on_log_compacted` if they are gone).
    ReadLog {
        to: NodeId,
        from_index: u64,
    },
    /// Leader: the follower needs entries the log no longer holds: stream it a snapshot.
    /// With `rollback_after`, the follower's log diverged after that index: it moves its
    /// entries beyond it to its rollback store, installs the snapshot whatever its
    /// position, and calls `on_rolled_back`.
    SendSnapshot {
        to: NodeId,
        rollback_after: Option<u64>,
    },
    /// Store this election state durably before handling any later output.
    SaveElection {
        state: SavedElection,
    },
    /// Members were added, promoted or removed (or first learned, on a joining node):
    /// the driver connects to new members and stops talking to removed ones.
    MembershipChanged {
        membership: Membership,
    },
    /// A write registered with `on_leader_appended` is acknowledged or failed.
    WriteDone {
        tag: u64,
        result: Result<Position, WriteError>,
    },
    /// A linearizable read barrier registered with `on_read_barrier` completed.
    ReadDone {
        tag: u64,
        result: Result<(), ReadError>,
    },
}

/// A write waiting for its copies.
#[derive(Clone, Debug)]
struct WriteWaiter {
    tag: u64,
    position: Position,
    requirement: AckRequirement,
    deadline: Micros,
}

/// A read waiting for a quorum to confirm leadership and for what it saw to be committed.
#[derive(Clone, Debug)]
struct ReadWaiter {
    tag: u64,
    /// Heartbeat round started after the read arrived; a majority acking it proves
    /// that no other leader had taken over when the read was served.
    read_seq: u64,
    /// The last index the read's snapshot contained; it must be majority-durable.
    observed_index: u64,
    deadline: Micros,
}

/// The leader's view of one follower.
#[derive(Clone, Debug)]
struct Progress {
    /// Highest index known durable on the follower. Invariants: `matched < next`.
    matched: u64,
    /// Next index to send.
    next: u64,
    last_ack_at: Option<Micros>,
    /// When entries beyond `matched` were last sent; for resending lost ones.
    last_sent_at: Micros,
    acked_read_seq: u64,
    /// Counted by `--ack sync`: responsive and caught up at some point since.
    in_sync: bool,
    /// An `Output::ReadLog` for this follower is outstanding.
    fetching: bool,
    /// An `Output::SendSnapshot` for this follower is outstanding, or a sent snapshot
    /// has not been acknowledged yet; nothing else is shipped meanwhile.
    snapshotting: bool,
    /// A snapshot at this index was sent; shipping resumes once the follower acks it, or
    /// at the deadline if it never does.
    snapshot_wait: Option<(u64, Micros)>,
    /// The follower reported a durable end that is not in our log (an older leader's
    /// entry at that index): heartbeats name our entry there, so that it answers with
    /// where its log diverges, and no snapshot is sent without that (it would replace
    /// the diverged entries without moving them to the rollback store).
    foreign_durable: Option<Position>,
    /// Where the follower's log was found to diverge from ours: every snapshot it gets
    /// until it holds our entries again rolls back what it has beyond this index.
    diverged_after: Option<u64>,
    /// Resends in a row after which `matched` had not moved, and where it stood at the
    /// last one: each such resend waits twice as long (a follower that cannot persist,
    /// or is paused, is not sent its whole window again every `resend_timeout_us`).
    fruitless_resends: u32,
    matched_at_resend: u64,
}

/// A fruitless resend waits at most `resend_timeout_us` times 2 to this power.
const MAX_RESEND_BACKOFF_SHIFT: u32 = 4;

#[derive(Debug)]
struct LeaderState {
    peers: BTreeMap<NodeId, Progress>,
    /// Recent entries, contiguous, ending at `Replica::last`.
    tail: VecDeque<Entry>,
    tail_bytes: usize,
    /// When each not-yet-fully-replicated index was appended, for follower lag.
    append_times: VecDeque<(u64, Micros)>,
    writes: Vec<WriteWaiter>,
    reads: Vec<ReadWaiter>,
    read_seq: u64,
    /// When each recent heartbeat round started: a round acknowledged by a majority
    /// extends the lease from its start.
    rounds: VecDeque<(u64, Micros)>,
    /// With elections: new writes are accepted only before this time. No other leader
    /// can be elected before it (followers refuse votes for an election timeout after
    /// hearing from this leader, and the lease is shorter).
    lease_until: Micros,
    next_heartbeat_at: Micros,
    commit_index: u64,
}

#[derive(Debug)]
struct FollowerState {
    leader_heard_at: Option<Micros>,
    commit_index: u64,
    /// Latest time at which this follower had applied everything the leader had.
    fresh_as_of: Option<Micros>,
    /// (leader's last index, when we heard it) not yet reached by our durable index.
    pending_fresh: VecDeque<(u64, Micros)>,
    /// Highest heartbeat round seen, echoed in acks.
    read_seq: u64,
    /// An ack is owed once the current persist completes.
    ack_owed: bool,
    /// After a failed persist (a full disk, say): new entries are ignored until `until`,
    /// and the next failure waits twice as long (up to `MAX_PERSIST_BACKOFF_US`). Without
    /// it, the leader's resend and the failing apply spin in a tight loop.
    persist_backoff: Option<PersistBackoff>,
}

#[derive(Clone, Copy, Debug)]
struct PersistBackoff {
    until: Micros,
    wait: Micros,
}

const FIRST_PERSIST_BACKOFF_US: Micros = 100_000;
const MAX_PERSIST_BACKOFF_US: Micros = 2_000_000;

impl Progress {
    fn new(last: Position, now: Micros) -> Progress {
        Progress {
            matched: 0,
            next: last.index + 1,
            last_ack_at: None,
            last_sent_at: now,
            acked_read_seq: 0,
            in_sync: false,
            fetching: false,
            snapshotting: false,
            snapshot_wait: None,
            foreign_durable: None,
            diverged_after: None,
            fruitless_resends: 0,
            matched_at_resend: 0,
        }
    }
}

impl LeaderState {
    fn new(config: &Config, membership: &Membership, epoch: u64, last: Position, now: Micros, lease_until: Micros) -> LeaderState {
        let progress = Progress::new(last, now);
        let peers = membership.members().filter(|member| **member != config.id).map(|member| (member.clone(), progress.clone())).collect();
        LeaderState {
            peers,
            tail: VecDeque::new(),
            tail_bytes: 0,
            append_times: VecDeque::new(),
            writes: Vec::new(),
            reads: Vec::new(),
            // Rounds are numbered above every round of earlier epochs: a follower still
            // echoing an older leader's round must not confirm this leader's.
            // (Without elections a new leader only comes with restarted followers.)
            read_seq: if config.elections.is_some() { epoch << 32 } else { 0 },
            rounds: VecDeque::new(),
            lease_until,
            next_heartbeat_at: now,
            commit_index: 0,
        }
    }
}

impl FollowerState {
    fn new() -> FollowerState {
        FollowerState {
            leader_heard_at: None,
            commit_index: 0,
            fresh_as_of: None,
            pending_fresh: VecDeque::new(),
            read_seq: 0,
            ack_owed: false,
            persist_backoff: None,
        }
    }
}

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

const PENDING_FRESH_LIMIT: usize = 4096;
/// Most append times a leader keeps for measuring follower lag.
const APPEND_TIMES_LIMIT: usize = 65_536;

/// A node raft elected, collecting durable positions before it leads (module docs of
/// `election.rs` and docs/design/failover.md).
#[derive(Debug)]
struct Recovery {
    epoch: u64,
    answers: BTreeMap<NodeId, Position>,
    /// When the first requests went out (the lease of a leader that emerges counts
    /// from here) and when they were last repeated to nodes that did not answer.
    sent_at: Micros,
    resent_at: Micros,
    /// Leadership is being handed to the most up-to-date node, until this time.
    transfer: Option<(NodeId, Micros)>,
}

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

    /// Voters and learners as this node last applied them.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// A membership change may be under way: proposed and not yet applied here, or (on
    /// a new leader) entries from earlier terms are not yet applied. Until it clears, a
    /// leader's membership may be out of date.
    pub fn membership_change_pending(&self) -> bool {
        self.election.as_ref().is_some_and(Election::change_pending)
    }

    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader(_))
    }

    /// The leader this node follows (itself when leading), if one is known.
    pub fn leader(&self) -> Option<&NodeId> {
        self.leader.as_ref()
    }

    /// Whether a new write may start here now; the error says where to go instead.
    /// With elections a leader accepts writes only while its lease holds and it is not
    /// handing leadership over.
    pub fn accepting_writes(&self, now: Micros) -> Result<(), WriteError> {
        match &self.role {
            Role::Leader(leader) if now < leader.lease_until && self.handover.is_none() && !self.election.as_ref().is_some_and(Election::transferring) => {
                Ok(())
            }
            Role::Leader(_) => Err(WriteError::NotLeader { leader: None }),
            Role::Follower(_) => Err(WriteError::NotLeader { leader: self.leader.clone() }),
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

    /// Until when this node may accept writes, if it may now: the end of its write lease.
    pub fn write_lease_until(&self, now: Micros) -> Option<Micros> {
        match &self.role {
            Role::Leader(leader) if self.accepting_writes(now).is_ok() => Some(leader.lease_until),
            _ => None,
        }
    }

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

    fn continue_handover(&mut self, now: Micros) {
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

    /// Whether this node may vote in an election now: not while a leader it heard from
    /// recently may still hold a lease, nor (after a restart) before an election timeout
    /// has passed, since it cannot remember whom it heard from.
    fn may_vote(&self, now: Micros) -> bool {
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

    /// Whether the local durable log holds the entry at `position` (same index, same
    /// epoch): a session token is satisfied only then. A log that is merely as long may
    /// hold another epoch's entry there, written by an old leader and due for rollback.
    pub fn holds(&self, position: Position) -> bool {
        log_holds(&self.epoch_starts, self.last, position)
    }

    /// Where each epoch starts in the local log (for drivers that answer session reads
    /// outside the replica loop: see [`log_holds`]).
    pub fn epoch_starts(&self) -> &[(u64, u64)] {
        &self.epoch_starts
    }

    /// The epoch of the local entry at `index`: `None` for index 0 or below what is
    /// recorded (taken to match), and beyond `accepted` (not held).
    fn epoch_at(&self, index: u64) -> Option<u64> {
        if index == 0 || index > self.accepted.index {
            return None;
        }
        epoch_in(&self.epoch_starts, index)
    }

    fn note_epoch_start(&mut self, entry: &Entry) {
        if self.epoch_starts.last().is_none_or(|(epoch, _)| *epoch != entry.epoch) {
            self.epoch_starts.push((entry.epoch, entry.index));
        }
    }

    fn forget_epoch_starts_after(&mut self, index: u64) {
        self.epoch_starts.retain(|(_, first)| *first <= index);
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

    /// How long since this node last knew it had everything the leader had. A leader
    /// holding its lease is never behind; one whose lease ran out may have been deposed
    /// without knowing it, so its data is known current only up to the lease's end.
    /// `None` on a follower before first contact.
    pub fn lag_us(&self, now: Micros) -> Option<Micros> {
        match &self.role {
            Role::Leader(leader) => Some(now.saturating_sub(leader.lease_until)),
            Role::Follower(follower) => follower.fresh_as_of.map(|at| now.saturating_sub(at)),
        }
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

    fn follower_lag_us(&self, leader: &LeaderState, progress: &Progress, now: Micros) -> Micros {
        if progress.matched >= self.last.index {
            return 0;
        }
        let oldest_missing = progress.matched + 1;
        match leader.append_times.iter().find(|(index, _)| *index >= oldest_missing) {
            Some((_, appended_at)) => now.saturating_sub(*appended_at),
            // Older than anything we timed (e.g. written before this leader started).
            None => leader.append_times.front().map_or(0, |(_, at)| now.saturating_sub(*at)),
        }
    }

    // ---- leader inputs ----

    /// Leader: `entries` were executed and durably committed locally. Each waiter is
    /// acknowledged once enough copies of its entry are durable.
    ///
    /// If this node stopped leading while the entries were committing, they are kept as
    /// local entries of their epoch (a later leader rolls them back if it lacks them) and
    /// the waiters end with "outcome unknown".
    ///
    /// # Panics
    /// If a leader's entries do not continue its log (a driver bug).
    pub fn on_leader_appended(&mut self, now: Micros, entries: Vec<Entry>, waiters: Vec<(u64, u64, AckRequirement)>) {
        if !self.is_leader() || entries.first().is_some_and(|entry| entry.epoch != self.epoch) {
            for entry in &entries {
                if entry.index == self.last.index + 1 {
                    // The disk now holds this entry after `last`: anything accepted from
                    // another leader beyond `last` will not apply there (the storage
                    // refuses it) and is asked for again, then found to diverge.
                    self.forget_epoch_starts_after(self.last.index);
                    self.note_epoch_start(entry);
                    self.last = entry.position();
                    self.accepted = self.last;
                }
            }
            for (tag, index, requirement) in waiters {
                let epoch = entries.iter().find(|entry| entry.index == index).map_or(self.epoch, |entry| entry.epoch);
                let error = WriteError::Timeout {
                    position: Position::new(epoch, index),
                    acked_by: 1,
                    needed: format!("{} (this node stopped leading)", requirement_text(requirement)),
                };
                self.outputs.push_back(Output::WriteDone { tag, result: Err(error) });
            }
            return;
        }
        if let Some(first) = entries.first() {
            self.note_epoch_start(first);
        }
        let Role::Leader(leader) = &mut self.role else { unreachable!() };
        for entry in entries {
            assert_eq!(entry.index, self.last.index + 1, "leader log must be contiguous");
            assert_eq!(entry.epoch, self.epoch, "leader writes entries in its own epoch");
            self.last = entry.position();
            leader.append_times.push_back((entry.index, now));
            if leader.append_times.len() > APPEND_TIMES_LIMIT {
                // A follower this far behind (or gone) is reported as lagging since the
                // oldest write still timed: bounded memory, an understated lag.
                leader.append_times.pop_front();
            }
            leader.tail_bytes += entry.payload.len();
            leader.tail.push_back(entry);
        }
        self.accepted = self.last;
        while leader.tail_bytes > self.config.tail_cache_bytes && leader.tail.len() > 1 {
            let dropped = leader.tail.pop_front().expect("tail has more than one entry");
            leader.tail_bytes -= dropped.payload.len();
        }
        let members = self.membership.voters.len();
        for (tag, index, requirement) in waiters {
            assert!(index <= self.last.index, "waiter for an entry not yet appended");
            if let AckRequirement::Nodes(requested) = requirement {
                if requested > members {
                    self.outputs.push_back(Output::WriteDone { tag, result: Err(WriteError::Unsatisfiable { requested, members }) });
                    continue;
                }
            }
            let position = Position::new(self.epoch, index);
            leader.writes.push(WriteWaiter { tag, position, requirement, deadline: now + self.config.write_timeout_us });
        }
        let peers: Vec<NodeId> = leader.peers.keys().cloned().collect();
        for peer in peers {
            self.replicate_to(&peer, now);
        }
        self.advance(now);
    }

    /// Leader: a linearizable read saw the database up to `observed_index`. Completes
    /// once a majority confirms leadership in a fresh heartbeat round and that index is
    /// majority-durable, so the read neither misses acknowledged writes nor returns
    /// writes that could still be lost.
    pub fn on_read_barrier(&mut self, now: Micros, tag: u64, observed_index: u64) {
        if !self.is_leader() {
            let leader = self.leader.clone();
            self.outputs.push_back(Output::ReadDone { tag, result: Err(ReadError::NotLeader { leader }) });
            return;
        }
        // A round that starts after the read arrived.
        self.broadcast_heartbeat(now);
        let deadline = now + self.config.read_timeout_us;
        let Role::Leader(leader) = &mut self.role else { unreachable!() };
        let read_seq = leader.read_seq;
        leader.reads.push(ReadWaiter { tag, read_seq, observed_index, deadline });
        self.advance(now);
    }

    /// Leader: entries requested by `Output::ReadLog` (may be empty if none exist).
    pub fn on_log_read(&mut self, now: Micros, to: &NodeId, entries: Vec<Entry>) {
        let epoch = self.epoch;
        let leader_id = self.config.id.clone();
        let max_inflight = self.config.max_inflight_entries;
        let prev_epoch = entries.first().and_then(|first| self.epoch_at(first.index - 1)).unwrap_or(0);
        let Role::Leader(leader) = &mut self.role else { return };
        let commit_index = leader.commit_index;
        let leader_last = self.last.index;
        let read_seq = leader.read_seq;
        let Some(progress) = leader.peers.get_mut(to) else { return };
        progress.fetching = false;
        let Some(first) = entries.first() else { return };
        if first.index != progress.next {
            // The follower's position moved while we read; the next tick resends.
            return;
        }
        let prev_index = first.index - 1;
        let count = (entries.len() as u64).min(max_inflight);
        progress.next = first.index + count;
        progress.last_sent_at = now;
        let entries: Vec<Entry> = entries.into_iter().take(count as usize).collect();
        let message = Message::Append { epoch, leader: leader_id, prev_index, prev_epoch, entries, commit_index, leader_last, read_seq };
        self.outputs.push_back(Output::Send { to: to.clone(), message });
        self.replicate_to(to, now);
    }

    /// Leader: the entries a follower needs were compacted away.
    pub fn on_log_compacted(&mut self, _now: Micros, to: &NodeId) {
        let Role::Leader(leader) = &mut self.role else { return };
        let Some(progress) = leader.peers.get_mut(to) else { return };
        progress.fetching = false;
        if progress.snapshotting {
            return;
        }
        let rollback_after = match progress.diverged_after {
            Some(common) => Some(common),
            // Nothing is known of its log yet (no ack in this leadership), or it holds
            // an entry we lack and the next heartbeat asks where it diverges: a snapshot
            // now would replace entries without moving them to its rollback store.
            None if progress.last_ack_at.is_none() || progress.foreign_durable.is_some() => return,
            None => None,
        };
        progress.snapshotting = true;
        self.outputs.push_back(Output::SendSnapshot { to: to.clone(), rollback_after });
    }

    /// Leader: the snapshot for `to` was handed to the transport (`Some(position)`) or
    /// could not be made (`None`). Shipping resumes once the follower acknowledges the
    /// snapshot's position, or after `snapshot_timeout_us` if it never does.
    pub fn on_snapshot_finished(&mut self, now: Micros, to: &NodeId, sent: Option<Position>) {
        let timeout = self.config.snapshot_timeout_us;
        let Role::Leader(leader) = &mut self.role else { return };
        let Some(progress) = leader.peers.get_mut(to) else { return };
        progress.last_sent_at = now;
        match sent {
            Some(position) => progress.snapshot_wait = Some((position.index, now + timeout)),
            None => progress.snapshotting = false,
        }
    }

    /// The transport (re)connected to `peer`: anything in flight may be gone.
    pub fn on_peer_connected(&mut self, now: Micros, peer: &NodeId) {
        let Role::Leader(leader) = &mut self.role else { return };
        let Some(progress) = leader.peers.get_mut(peer) else { return };
        progress.next = progress.matched + 1;
        if progress.snapshot_wait.is_some() {
            // A snapshot sent before the connection dropped may never have been installed
            // (the peer restarted, say): do not wait out its deadline before sending another.
            progress.snapshot_wait = None;
            progress.snapshotting = false;
        }
        self.send_append(peer, now, true);
    }

    // ---- follower inputs ----

    /// Follower: the entries of every `Persist` up to `durable` are on disk and applied.
    pub fn on_persisted(&mut self, _now: Micros, durable: Position) {
        let Role::Follower(follower) = &mut self.role else { return };
        if durable.index <= self.last.index {
            return;
        }
        // A persist issued before a failed one may still complete after `accepted` was
        // wound back: what the disk holds is the truth.
        if durable.index > self.accepted.index {
            self.accepted = durable;
        }
        self.last = durable;
        follower.persist_backoff = None;
        while let Some(&(leader_last, heard_at)) = follower.pending_fresh.front() {
            if leader_last > self.last.index {
                break;
            }
            follower.fresh_as_of = Some(follower.fresh_as_of.map_or(heard_at, |at| at.max(heard_at)));
            follower.pending_fresh.pop_front();
        }
        if follower.ack_owed {
            follower.ack_owed = self.accepted.index > self.last.index;
            self.send_ack(false);
        }
    }

    /// Follower: a `Persist` could not be applied (it did not continue the local log, or
    /// the disk failed). Everything accepted beyond the durable end is forgotten. New
    /// entries are ignored for a while (doubling with each failure in a row); then the
    /// leader's next resend is tried again.
    pub fn on_persist_failed(&mut self, now: Micros) {
        let Role::Follower(follower) = &mut self.role else { return };
        self.accepted = self.last;
        follower.ack_owed = false;
        let wait = follower.persist_backoff.map_or(FIRST_PERSIST_BACKOFF_US, |backoff| (backoff.wait * 2).min(MAX_PERSIST_BACKOFF_US));
        follower.persist_backoff = Some(PersistBackoff { until: now + wait, wait });
        self.forget_epoch_starts_after(self.last.index);
    }

    /// Follower: the local database now holds everything up to `position`, after a
    /// snapshot was installed (or found not to be ahead of what was already durable, in
    /// which case the driver passes its durable position). Never moves backwards: a
    /// durable position already acknowledged must stay true.
    pub fn on_snapshot_installed(&mut self, now: Micros, position: Position) {
        if position.index > self.last.index {
            self.last = position;
        }
        if position.index > self.accepted.index {
            self.accepted = position;
            self.epoch_starts = vec![(position.epoch, position.index)];
        }
        self.after_snapshot(now);
    }

    /// Follower: after `Output::SendSnapshot` with `rollback_after`, the entries the
    /// leader lacks went to the rollback store and the leader's snapshot at `position`
    /// replaced the database. The one way the durable position moves backwards: what was
    /// rolled back was never on a majority of the leader's epoch.
    pub fn on_rolled_back(&mut self, now: Micros, position: Position) {
        self.last = position;
        self.accepted = position;
        self.epoch_starts = vec![(position.epoch, position.index)];
        self.after_snapshot(now);
    }

    fn after_snapshot(&mut self, now: Micros) {
        if let Role::Follower(follower) = &mut self.role {
            follower.pending_fresh.clear();
            follower.leader_heard_at = Some(now);
            // The snapshot may cover entries whose persist was pending; an ack owed for
            // them is paid by this one (else heartbeats would go unanswered).
            follower.ack_owed = self.accepted.index > self.last.index;
        }
        self.send_ack(false);
    }

    // ---- both ----

    pub fn on_message(&mut self, now: Micros, from: &NodeId, message: Message) {
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

    /// Stops leading (or recovering): pending writes end with "outcome unknown" (they
    /// are durable here and may or may not survive), pending reads fail.
    fn step_down(&mut self, leader: Option<NodeId>) {
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

    /// A leader of `epoch` (or a node raft elected for it) spoke: adopt it.
    fn follow(&mut self, now: Micros, epoch: u64, leader: &NodeId) {
        if epoch > self.epoch || self.leader.as_ref() != Some(leader) {
            if self.is_leader() || self.recovery.is_some() {
                self.step_down(Some(leader.clone()));
            }
            self.epoch = self.epoch.max(epoch);
            self.leader = Some(leader.clone());
        }
        self.leader_contact_at = Some(now);
    }

    fn on_recover(&mut self, now: Micros, from: &NodeId, epoch: u64) {
        // A node still joining (perhaps added back empty after its disk was replaced)
        // does not answer: its position would hide writes its earlier self acknowledged.
        if epoch < self.epoch || *from == self.config.id || !self.membership.contains(&self.config.id) {
            return;
        }
        self.follow(now, epoch, from);
        let last = self.last;
        self.outputs.push_back(Output::Send { to: from.clone(), message: Message::RecoverAck { epoch, last } });
    }

    #[allow(clippy::too_many_arguments)]
    fn on_append(
        &mut self,
        now: Micros,
        epoch: u64,
        leader_id: NodeId,
        (prev_index, prev_epoch): (u64, u64),
        entries: Vec<Entry>,
        commit_index: u64,
        leader_last: u64,
        read_seq: u64,
    ) {
        let stale = epoch < self.epoch || (self.election.is_none() && leader_id != self.config.leader);
        if stale || leader_id == self.config.id {
            // A stale or unknown leader: tell it our epoch, change nothing.
            self.send_ack_to(&leader_id, true, None);
            return;
        }
        if self.election.is_some() {
            self.follow(now, epoch, &leader_id);
        }
        let Role::Follower(follower) = &mut self.role else {
            // Two leaders in one epoch would be a configuration error; refuse the entries.
            return;
        };
        self.epoch = epoch;
        follower.leader_heard_at = Some(now);
        follower.commit_index = follower.commit_index.max(commit_index);
        follower.read_seq = follower.read_seq.max(read_seq);
        if leader_last <= self.last.index {
            follower.fresh_as_of = Some(now);
        } else {
            if follower.pending_fresh.len() == PENDING_FRESH_LIMIT {
                follower.pending_fresh.pop_front();
            }
            follower.pending_fresh.push_back((leader_last, now));
        }
        if follower.persist_backoff.is_some_and(|backoff| now < backoff.until) {
            // Backing off after a failed persist: no entries, no resend requests. The
            // leader resends on its own timer; the heartbeat has been noted above.
            return;
        }
        if prev_index > self.accepted.index {
            // A gap: something before these entries was lost in transit.
            self.send_ack(true);
            return;
        }
        // Log matching: the entry before the new ones, and any we already hold, must be
        // the leader's (same epoch at the same index); else our log has entries the
        // leader lacks, written by an older leader and never on a majority.
        // Entries of another epoch beyond the leader's end are also doomed: the leader
        // will write its own there. Saying so now gets them rolled back (and counted)
        // before a snapshot, which cannot tell which of our entries it replaces.
        let conflict = self.epoch_at(prev_index).is_some_and(|held| held != prev_epoch)
            || entries.iter().any(|entry| self.epoch_at(entry.index).is_some_and(|held| held != entry.epoch))
            || self.epoch_at(leader_last + 1).is_some_and(|held| held != epoch);
        if conflict {
            let starts = self.epoch_starts.clone();
            self.send_ack_to(&leader_id, true, Some(starts));
            return;
        }
        let Role::Follower(follower) = &mut self.role else { unreachable!() };
        let new_entries: Vec<Entry> = entries.into_iter().filter(|entry| entry.index > self.accepted.index).collect();
        if new_entries.is_empty() {
            if !follower.ack_owed {
                self.send_ack(false);
            }
            return;
        }
        for (offset, entry) in new_entries.iter().enumerate() {
            if entry.index != self.accepted.index + 1 + offset as u64 {
                // A malformed append; ask for a resend rather than trust it.
                self.send_ack(true);
                return;
            }
        }
        follower.ack_owed = true;
        for entry in &new_entries {
            self.note_epoch_start(entry);
        }
        self.accepted = new_entries.last().expect("checked non-empty").position();
        self.outputs.push_back(Output::Persist { entries: new_entries });
    }

    #[allow(clippy::too_many_arguments)]
    fn on_append_ack(
        &mut self,
        now: Micros,
        from: &NodeId,
        epoch: u64,
        durable: Position,
        next_index: u64,
        read_seq: u64,
        rejected: bool,
        diverged: Option<Vec<(u64, u64)>>,
    ) {
        if epoch != self.epoch {
            // An ack from another epoch says nothing about this leader's log.
            return;
        }
        let last_index = self.last.index;
        // A durable end counts only if it is our entry (same epoch at that index; log
        // matching then covers everything before it). A follower may hold an older
        // leader's entry at the same index, which must not count as a copy of ours.
        // (A durable end beyond our last entry is never ours: it is another epoch's.)
        let durable_is_ours = durable.index == 0 || (durable.index <= last_index && self.epoch_at(durable.index).is_none_or(|epoch| epoch == durable.epoch));
        let common = diverged.as_ref().map(|starts| common_prefix(&self.epoch_starts, last_index, starts, durable.index.max(next_index - 1)));
        let Role::Leader(leader) = &mut self.role else { return };
        let Some(progress) = leader.peers.get_mut(from) else { return };
        progress.last_ack_at = Some(now);
        // A round not yet started cannot have been seen (a stale or corrupt echo).
        progress.acked_read_seq = progress.acked_read_seq.max(read_seq.min(leader.read_seq));
        if durable_is_ours {
            progress.foreign_durable = None;
            progress.diverged_after = None;
        } else {
            progress.foreign_durable = Some(durable);
        }
        if common.is_some() {
            progress.diverged_after = common;
        }
        if let Some(common) = common {
            // Its data holds effects of entries we lack and cannot be undone in place:
            // it rolls them back and takes a snapshot of ours.
            progress.matched = progress.matched.min(common);
            if !progress.snapshotting {
                progress.snapshotting = true;
                progress.fetching = false;
                self.outputs.push_back(Output::SendSnapshot { to: from.clone(), rollback_after: Some(common) });
            }
            return;
        }
        if !durable_is_ours {
            // Its log diverges at or before `durable`; the append path finds where.
        } else if durable.index > progress.matched {
            progress.matched = durable.index.min(last_index);
        } else if rejected && durable.index < progress.matched {
            // The follower holds less than it once acknowledged: its disk was lost and
            // rebuilt. Counting the old copies would overstate durability, and resending
            // from the old mark would leave a gap it rejects forever.
            progress.matched = durable.index;
        }
        if progress.matched >= last_index {
            progress.in_sync = true;
        }
        if progress.snapshot_wait.is_some_and(|(index, _)| durable.index >= index) {
            progress.snapshot_wait = None;
            progress.snapshotting = false;
        }
        if rejected {
            progress.next = next_index.max(progress.matched + 1).min(last_index + 1);
        } else if progress.next <= progress.matched {
            progress.next = progress.matched + 1;
        }
        self.replicate_to(&from.clone(), now);
        self.advance(now);
    }

    /// Timers: heartbeats, resends, in-sync membership and deadlines.
    pub fn on_tick(&mut self, now: Micros) {
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

    fn broadcast_heartbeat(&mut self, now: Micros) {
        let Role::Leader(leader) = &mut self.role else { return };
        leader.next_heartbeat_at = now + self.config.heartbeat_interval_us;
        // Every broadcast is a new round: acks of it confirm leadership (linearizable
        // reads) and extend the lease from the moment it started.
        leader.read_seq += 1;
        leader.rounds.push_back((leader.read_seq, now));
        if leader.rounds.len() > 1024 {
            leader.rounds.pop_front();
        }
        let peers: Vec<NodeId> = leader.peers.keys().cloned().collect();
        for peer in peers {
            self.send_append(&peer, now, true);
        }
    }

    /// Sends what the follower is missing, if anything (and the flow-control window allows).
    fn replicate_to(&mut self, peer: &NodeId, now: Micros) {
        self.send_append(peer, now, false);
    }

    /// Sends one append to `peer`: entries from its `next` if any are due, else (when
    /// `heartbeat`) an empty append that carries lag, commit and read-round information.
    fn send_append(&mut self, peer: &NodeId, now: Micros, heartbeat: bool) {
        let Role::Leader(leader) = &mut self.role else { return };
        let Some(progress) = leader.peers.get_mut(peer) else { return };
        let mut entries = Vec::new();
        // An empty append claims only what was already sent: claiming `last` would make a
        // follower still receiving the window reject it as a gap and cause a resend.
        let mut prev_index = self.last.index.min(progress.next - 1);
        let probe = Self::divergence_probe_in(&self.epoch_starts, self.last.index, progress);
        let epoch_starts = &self.epoch_starts;
        let window_open = progress.next <= progress.matched + self.config.max_inflight_entries;
        if progress.next <= self.last.index && window_open && !progress.fetching && !progress.snapshotting {
            let tail_start = leader.tail.front().map_or(self.last.index + 1, |entry| entry.index);
            if progress.next < tail_start {
                progress.fetching = true;
                self.outputs.push_back(Output::ReadLog { to: peer.clone(), from_index: progress.next });
            } else {
                let mut bytes = 0;
                let offset = (progress.next - tail_start) as usize;
                for entry in leader.tail.iter().skip(offset) {
                    if entries.len() >= self.config.max_entries_per_append
                        || (!entries.is_empty() && bytes + entry.payload.len() > self.config.max_bytes_per_append)
                    {
                        break;
                    }
                    bytes += entry.payload.len();
                    entries.push(entry.clone());
                }
                prev_index = progress.next - 1;
                progress.next += entries.len() as u64;
                progress.last_sent_at = now;
            }
        }
        if entries.is_empty() && !heartbeat {
            return;
        }
        if let (true, Some(probe)) = (entries.is_empty(), probe) {
            prev_index = probe;
        }
        let message = Message::Append {
            epoch: self.epoch,
            leader: self.config.id.clone(),
            prev_index,
            prev_epoch: if prev_index == 0 { 0 } else { epoch_in(epoch_starts, prev_index).unwrap_or(0) },
            entries,
            commit_index: leader.commit_index,
            leader_last: self.last.index,
            read_seq: leader.read_seq,
        };
        self.outputs.push_back(Output::Send { to: peer.clone(), message });
        // Keep going while the window allows: one append per message keeps messages bounded.
        let more_due = match &self.role {
            Role::Leader(leader) => leader.peers.get(peer).is_some_and(|progress| {
                progress.next <= self.last.index
                    && !progress.fetching
                    && !progress.snapshotting
                    && progress.next <= progress.matched + self.config.max_inflight_entries
            }),
            Role::Follower(_) => false,
        };
        if more_due {
            self.send_append(peer, now, false);
        }
    }

    /// The index a heartbeat should name to make a follower with a foreign durable end
    /// report its divergence: that end, if our log has an entry of another epoch there.
    fn divergence_probe_in(epoch_starts: &[(u64, u64)], last_index: u64, progress: &Progress) -> Option<u64> {
        let foreign = progress.foreign_durable?;
        let ours = epoch_in(epoch_starts, foreign.index).filter(|_| foreign.index <= last_index)?;
        (ours != foreign.epoch).then_some(foreign.index)
    }

    /// Recomputes the commit index and completes every write and read that is now satisfied
    /// or past its deadline.
    fn advance(&mut self, now: Micros) {
        let voters = &self.membership.voters;
        let members = voters.len();
        let majority = self.membership.majority();
        let last_index = self.last.index;
        let Role::Leader(leader) = &mut self.role else { return };
        // Learners' copies and acks count for nothing until they are promoted.
        let counted = |(id, _): &(&NodeId, &Progress)| voters.contains(*id);

        let mut durable: Vec<u64> = leader.peers.iter().filter(counted).map(|(_, progress)| progress.matched).collect();
        durable.push(last_index);
        durable.sort_unstable_by(|a, b| b.cmp(a));
        leader.commit_index = leader.commit_index.max(durable[majority - 1]);

        let copies = |index: u64| 1 + leader.peers.iter().filter(counted).filter(|(_, progress)| progress.matched >= index).count();
        let satisfied = |waiter: &WriteWaiter| -> bool {
            let index = waiter.position.index;
            match waiter.requirement {
                AckRequirement::Nodes(count) => copies(index) >= count,
                AckRequirement::Majority => copies(index) >= majority,
                AckRequirement::All => copies(index) >= members,
                AckRequirement::AllInSync => {
                    copies(index) >= majority && leader.peers.iter().filter(counted).all(|(_, progress)| !progress.in_sync || progress.matched >= index)
                }
            }
        };
        let mut index = 0;
        while index < leader.writes.len() {
            let waiter = &leader.writes[index];
            if satisfied(waiter) {
                let waiter = leader.writes.swap_remove(index);
                self.outputs.push_back(Output::WriteDone { tag: waiter.tag, result: Ok(waiter.position) });
            } else if now >= waiter.deadline {
                let waiter = leader.writes.swap_remove(index);
                let error =
                    WriteError::Timeout { position: waiter.position, acked_by: copies(waiter.position.index), needed: requirement_text(waiter.requirement) };
                self.outputs.push_back(Output::WriteDone { tag: waiter.tag, result: Err(error) });
            } else {
                index += 1;
            }
        }

        if self.election.is_some() {
            // The newest round a majority (this node included) has acknowledged.
            let mut acked: Vec<u64> = leader.peers.iter().filter(counted).map(|(_, progress)| progress.acked_read_seq).collect();
            acked.push(leader.read_seq);
            acked.sort_unstable_by(|a, b| b.cmp(a));
            let round = acked[majority - 1];
            while leader.rounds.len() > 1 && leader.rounds.front().is_some_and(|(seq, _)| *seq < round) {
                leader.rounds.pop_front();
            }
            if let Some((seq, started)) = leader.rounds.front() {
                if *seq == round {
                    let timeout = self.election.as_ref().map_or(0, |election| election.config().election_timeout_min_us());
                    leader.lease_until = leader.lease_until.max(started + lease_us(timeout));
                }
            }
        }
        let commit_index = leader.commit_index;
        let confirmed = |read_seq: u64| 1 + leader.peers.iter().filter(counted).filter(|(_, progress)| progress.acked_read_seq >= read_seq).count();
        let mut index = 0;
        while index < leader.reads.len() {
            let read = &leader.reads[index];
            if confirmed(read.read_seq) >= majority && commit_index >= read.observed_index {
                let read = leader.reads.swap_remove(index);
                self.outputs.push_back(Output::ReadDone { tag: read.tag, result: Ok(()) });
            } else if now >= read.deadline {
                let read = leader.reads.swap_remove(index);
                self.outputs.push_back(Output::ReadDone { tag: read.tag, result: Err(ReadError::Timeout) });
            } else {
                index += 1;
            }
        }

        // Append times are only needed for indexes some follower still lacks.
        let slowest = leader.peers.values().map(|progress| progress.matched).min().unwrap_or(last_index);
        while leader.append_times.len() > 1 && leader.append_times.front().is_some_and(|(index, _)| *index <= slowest) {
            leader.append_times.pop_front();
        }
    }

    // ---- follower internals ----

    fn send_ack(&mut self, rejected: bool) {
        if let Some(leader) = self.leader.clone() {
            if leader != self.config.id {
                self.send_ack_to(&leader, rejected, None);
            }
        }
    }

    fn send_ack_to(&mut self, to: &NodeId, rejected: bool, diverged: Option<Vec<(u64, u64)>>) {
        let read_seq = match &self.role {
            Role::Follower(follower) => follower.read_seq,
            Role::Leader(_) => 0,
        };
        let message = Message::AppendAck { epoch: self.epoch, durable: self.last, next_index: self.accepted.index + 1, read_seq, rejected, diverged };
        self.outputs.push_back(Output::Send { to: to.clone(), message });
    }

    // ---- elections ----

    /// Handles what raft produced, then follows any change of leadership it shows.
    fn drain_election(&mut self, now: Micros) {
        let Some(election) = &mut self.election else { return };
        let mut produced = Vec::new();
        election.drain(&mut produced);
        let leadership = election.leadership();
        let membership = election.take_membership_change().then(|| election.membership());
        for output in produced {
            match output {
                ElectionOutput::Save(state) => self.outputs.push_back(Output::SaveElection { state }),
                ElectionOutput::Send { to, bytes } => self.outputs.push_back(Output::Send { to, message: Message::Raft { bytes } }),
            }
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

    /// Adopts the membership raft applied: a leader starts shipping to new members and
    /// stops counting removed ones; a node that was removed stops taking part.
    fn apply_membership(&mut self, now: Micros, membership: Membership) {
        self.membership = membership;
        self.outputs.push_back(Output::MembershipChanged { membership: self.membership.clone() });
        let member = self.membership.contains(&self.config.id);
        if self.was_member && !member {
            self.step_down(None);
        }
        self.was_member |= member;
        let Role::Leader(leader) = &mut self.role else { return };
        let membership = &self.membership;
        leader.peers.retain(|id, _| membership.contains(id));
        let mut added = Vec::new();
        for id in membership.members() {
            if *id != self.config.id && !leader.peers.contains_key(id) {
                leader.peers.insert(id.clone(), Progress::new(self.last, now));
                added.push(id.clone());
            }
        }
        for peer in added {
            self.send_append(&peer, now, true);
        }
        self.advance(now);
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
            return Err(MembershipError::NotLeader { leader: self.leader.clone().filter(|leader| *leader != self.config.id) });
        }
        // Also while a new leader has not yet applied its whole metadata log: until then
        // its membership may be out of date (raft counts that as pending).
        if self.membership_change_pending() {
            return Err(MembershipError::ChangePending);
        }
        let change = match request {
            MembershipRequest::Add { id, address } => {
                check_member_name(&id, &address)?;
                if self.membership.contains(&id) {
                    return Err(MembershipError::AlreadyMember { id });
                }
                MemberChange::AddLearner { id, address }
            }
            MembershipRequest::Remove { id } => {
                if !self.membership.contains(&id) {
                    return Err(MembershipError::NotMember { id });
                }
                if id == self.config.id {
                    return Err(MembershipError::RemovingLeader { id });
                }
                if self.membership.voters.len() == 1 && self.membership.voters.contains(&id) {
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
    /// change at a time.
    fn promote_caught_up_learner(&mut self, now: Micros) {
        if self.accepting_writes(now).is_err() {
            return;
        }
        let Role::Leader(leader) = &self.role else { return };
        let Some(election) = &mut self.election else { return };
        if election.change_pending() {
            return;
        }
        let caught_up =
            self.membership.learners.iter().find(|id| leader.peers.get(*id).is_some_and(|progress| progress.in_sync) && election.holds_metadata(id));
        if let Some(id) = caught_up.cloned() {
            if election.propose(&MemberChange::Promote { id }).is_ok() {
                self.drain_election(now);
            }
        }
    }

    /// Raft elected this node for `epoch`: before leading it learns the durable position
    /// of a majority, so that it leads only if it holds every write a majority acked.
    fn start_recovery(&mut self, now: Micros, epoch: u64) {
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
    fn resend_recovery_requests(&mut self, now: Micros) {
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
    fn conclude_recovery(&mut self, now: Micros) {
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
}

/// Names and addresses travel through raft as text lines (see `election.rs`).
fn check_member_name(id: &str, address: &str) -> Result<(), MembershipError> {
    let bad = |text: &str| text.chars().any(|c| c.is_control() || c.is_whitespace());
    if id.is_empty() || id.len() > 64 || bad(id) || id.contains(['=', ',']) {
        return Err(MembershipError::BadName { reason: format!("bad node id {id:?}: 1 to 64 characters, no spaces, '=' or ','") });
    }
    if address.is_empty() || address.len() > 256 || bad(address) {
        return Err(MembershipError::BadName { reason: format!("bad peer address {address:?} for {id}") });
    }
    Ok(())
}

/// Whether a durable log ending at `last`, whose epochs start as `epoch_starts` says,
/// holds the entry at `position` (see [`Replica::holds`]).
pub fn log_holds(epoch_starts: &[(u64, u64)], last: Position, position: Position) -> bool {
    if position.index == 0 {
        return true;
    }
    if position.index > last.index {
        return false;
    }
    epoch_in(epoch_starts, position.index).is_none_or(|epoch| epoch == position.epoch)
}

/// The epoch of the entry at `index` in a log whose epochs start as `starts` says
/// (`(epoch, first index)`, ascending); `None` below the first recorded start.
fn epoch_in(starts: &[(u64, u64)], index: u64) -> Option<u64> {
    starts.iter().rev().find(|(_, first)| *first <= index).map(|(epoch, _)| *epoch)
}

/// How long after a heartbeat round starts a leader may accept writes on its strength:
/// less than the shortest election timeout, with room for clocks that run at slightly
/// different rates.
fn lease_us(election_timeout_min_us: Micros) -> Micros {
    election_timeout_min_us * 3 / 4
}

/// The last index at which two logs, described by where each epoch starts, hold the
/// same epoch everywhere before (log matching makes them identical up to there).
/// Indices below a log's first recorded start are taken to match.
fn common_prefix(leader: &[(u64, u64)], leader_last: u64, follower: &[(u64, u64)], follower_last: u64) -> u64 {
    let end = leader_last.min(follower_last);
    if end == 0 {
        return 0;
    }
    let mut points: Vec<u64> = leader.iter().chain(follower).map(|(_, first)| *first).filter(|first| (1..=end).contains(first)).collect();
    points.push(1);
    points.sort_unstable();
    points.dedup();
    let mut common = 0;
    for (position, start) in points.iter().enumerate() {
        if let (Some(ours), Some(theirs)) = (epoch_in(leader, *start), epoch_in(follower, *start)) {
            if ours != theirs {
                return start - 1;
            }
        }
        common = points.get(position + 1).map_or(end, |next| next - 1);
    }
    common
}

fn requirement_text(requirement: AckRequirement) -> String {
    match requirement {
        AckRequirement::Nodes(count) => format!("w={count}"),
        AckRequirement::Majority => "a majority".to_string(),
        AckRequirement::All => "every member".to_string(),
        AckRequirement::AllInSync => "every in-sync follower".to_string(),
    }
}
