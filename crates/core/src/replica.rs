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

use crate::message::Message;
use crate::types::{AckMode, AckRequirement, Entry, Micros, NodeId, Position};
use std::collections::{BTreeMap, VecDeque};

/// Static configuration of one replica.
#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    /// Every member, this node included. Invariants: non-empty, contains `id` and `leader`.
    pub members: Vec<NodeId>,
    pub leader: NodeId,
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
            leader: leader.into(),
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

    pub fn majority(&self) -> usize {
        self.members.len() / 2 + 1
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteError {
    /// This node is not the leader (the driver forwards instead of getting here).
    NotLeader { leader: NodeId },
    /// The write is durable on the leader but not yet on enough copies; it may still
    /// replicate, or be lost if the leader is lost. Its outcome is unknown.
    Timeout { position: Position, acked_by: usize, needed: String },
    /// `w=` asked for more copies than there are members.
    Unsatisfiable { requested: usize, members: usize },
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::NotLeader { leader } => write!(f, "not the leader; leader is {leader}"),
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

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadError {
    NotLeader { leader: NodeId },
    /// A quorum did not confirm this node's leadership in time.
    Timeout,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::NotLeader { leader } => write!(f, "not the leader; leader is {leader}"),
            ReadError::Timeout => write!(f, "a quorum did not confirm leadership in time"),
        }
    }
}

/// What the core asks its driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    Send { to: NodeId, message: Message },
    /// Follower: apply and log these entries in one durable transaction, then call `on_persisted`.
    Persist { entries: Vec<Entry> },
    /// Leader: entries from `from_index` are no longer cached; read them from the durable
    /// log and call `on_log_read` (or `on_log_compacted` if they are gone).
    ReadLog { to: NodeId, from_index: u64 },
    /// Leader: the follower needs entries the log no longer holds: stream it a snapshot.
    SendSnapshot { to: NodeId },
    /// A write registered with `on_leader_appended` is acknowledged or failed.
    WriteDone { tag: u64, result: Result<Position, WriteError> },
    /// A linearizable read barrier registered with `on_read_barrier` completed.
    ReadDone { tag: u64, result: Result<(), ReadError> },
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
}

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
    pub leader: NodeId,
    pub epoch: u64,
    pub last: Position,
    pub commit_index: u64,
    /// Follower only: how long since this node last knew it had everything the leader had.
    pub lag_us: Option<Micros>,
    pub followers: Vec<FollowerStatus>,
}

const PENDING_FRESH_LIMIT: usize = 4096;

pub struct Replica {
    config: Config,
    epoch: u64,
    /// Durable end of the local log (leader: committed locally; follower: persisted).
    last: Position,
    /// Follower: end of what was handed to `Persist` (>= `last`). Leader: equals `last`.
    accepted: Position,
    role: Role,
    outputs: VecDeque<Output>,
}

impl Replica {
    /// Starts a replica whose durable log ends at `last` (recovered by the driver).
    ///
    /// # Panics
    /// If the configuration breaks its invariants (a bug in the caller).
    pub fn new(config: Config, last: Position, now: Micros) -> Replica {
        assert!(config.members.contains(&config.id), "members must include this node");
        assert!(config.members.contains(&config.leader), "members must include the leader");
        let epoch = config.epoch.max(last.epoch);
        let role = if config.leader == config.id {
            let peers = config
                .members
                .iter()
                .filter(|member| **member != config.id)
                .map(|member| {
                    let progress = Progress {
                        matched: 0,
                        next: last.index + 1,
                        last_ack_at: None,
                        last_sent_at: now,
                        acked_read_seq: 0,
                        in_sync: false,
                        fetching: false,
                        snapshotting: false,
                        snapshot_wait: None,
                    };
                    (member.clone(), progress)
                })
                .collect();
            Role::Leader(LeaderState {
                peers,
                tail: VecDeque::new(),
                tail_bytes: 0,
                append_times: VecDeque::new(),
                writes: Vec::new(),
                reads: Vec::new(),
                read_seq: 0,
                next_heartbeat_at: now,
                commit_index: 0,
            })
        } else {
            Role::Follower(FollowerState {
                leader_heard_at: None,
                commit_index: 0,
                fresh_as_of: None,
                pending_fresh: VecDeque::new(),
                read_seq: 0,
                ack_owed: false,
            })
        };
        let mut replica = Replica { config, epoch, last, accepted: last, role, outputs: VecDeque::new() };
        replica.on_tick(now);
        replica
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader(_))
    }

    pub fn leader(&self) -> &NodeId {
        &self.config.leader
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

    /// Follower: how long since this node last knew it had everything the leader had.
    /// `None` on the leader (it is never behind itself) or before first contact.
    pub fn lag_us(&self, now: Micros) -> Option<Micros> {
        match &self.role {
            Role::Leader(_) => Some(0),
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
            leader: self.config.leader.clone(),
            epoch: self.epoch,
            last: self.last,
            commit_index,
            lag_us: if self.is_leader() { None } else { self.lag_us(now) },
            followers,
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
    /// # Panics
    /// If called on a follower or with entries that do not continue the log (driver bugs).
    pub fn on_leader_appended(&mut self, now: Micros, entries: Vec<Entry>, waiters: Vec<(u64, u64, AckRequirement)>) {
        let Role::Leader(leader) = &mut self.role else {
            panic!("on_leader_appended on a follower");
        };
        for entry in entries {
            assert_eq!(entry.index, self.last.index + 1, "leader log must be contiguous");
            assert_eq!(entry.epoch, self.epoch, "leader writes entries in its own epoch");
            self.last = entry.position();
            leader.append_times.push_back((entry.index, now));
            leader.tail_bytes += entry.payload.len();
            leader.tail.push_back(entry);
        }
        self.accepted = self.last;
        while leader.tail_bytes > self.config.tail_cache_bytes && leader.tail.len() > 1 {
            let dropped = leader.tail.pop_front().expect("tail has more than one entry");
            leader.tail_bytes -= dropped.payload.len();
        }
        let members = self.config.members.len();
        for (tag, index, requirement) in waiters {
            assert!(index <= self.last.index, "waiter for an entry not yet appended");
            if let AckRequirement::Nodes(requested) = requirement {
                if requested > members {
                    self.outputs
                        .push_back(Output::WriteDone { tag, result: Err(WriteError::Unsatisfiable { requested, members }) });
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
        let Role::Leader(leader) = &mut self.role else {
            let leader = self.config.leader.clone();
            self.outputs.push_back(Output::ReadDone { tag, result: Err(ReadError::NotLeader { leader }) });
            return;
        };
        leader.read_seq += 1;
        let read_seq = leader.read_seq;
        leader.reads.push(ReadWaiter { tag, read_seq, observed_index, deadline: now + self.config.read_timeout_us });
        self.broadcast_heartbeat(now);
        self.advance(now);
    }

    /// Leader: entries requested by `Output::ReadLog` (may be empty if none exist).
    pub fn on_log_read(&mut self, now: Micros, to: &NodeId, entries: Vec<Entry>) {
        let epoch = self.epoch;
        let leader_id = self.config.id.clone();
        let max_inflight = self.config.max_inflight_entries;
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
        let message = Message::Append {
            epoch,
            leader: leader_id,
            prev_index,
            entries,
            commit_index,
            leader_last,
            read_seq,
        };
        self.outputs.push_back(Output::Send { to: to.clone(), message });
        self.replicate_to(to, now);
    }

    /// Leader: the entries a follower needs were compacted away.
    pub fn on_log_compacted(&mut self, _now: Micros, to: &NodeId) {
        let Role::Leader(leader) = &mut self.role else { return };
        let Some(progress) = leader.peers.get_mut(to) else { return };
        progress.fetching = false;
        if !progress.snapshotting {
            progress.snapshotting = true;
            self.outputs.push_back(Output::SendSnapshot { to: to.clone() });
        }
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
    /// the disk failed). Everything accepted beyond the durable end is forgotten and the
    /// leader is asked to resend from there.
    pub fn on_persist_failed(&mut self, _now: Micros) {
        let Role::Follower(follower) = &mut self.role else { return };
        self.accepted = self.last;
        follower.ack_owed = false;
        self.send_ack(true);
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
        }
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
            Message::Append { epoch, leader, prev_index, entries, commit_index, leader_last, read_seq } => {
                self.on_append(now, epoch, leader, prev_index, entries, commit_index, leader_last, read_seq)
            }
            Message::AppendAck { epoch, durable, next_index, read_seq, rejected } => {
                self.on_append_ack(now, from, epoch, durable, next_index, read_seq, rejected)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_append(
        &mut self,
        now: Micros,
        epoch: u64,
        leader_id: NodeId,
        prev_index: u64,
        entries: Vec<Entry>,
        commit_index: u64,
        leader_last: u64,
        read_seq: u64,
    ) {
        if epoch < self.epoch || leader_id != self.config.leader {
            // A stale or unknown leader: tell it our epoch, change nothing.
            self.send_ack_to(&leader_id, true);
            return;
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
        if prev_index > self.accepted.index {
            // A gap: something before these entries was lost in transit.
            self.send_ack(true);
            return;
        }
        let new_entries: Vec<Entry> = entries.into_iter().filter(|entry| entry.index > self.accepted.index).collect();
        if new_entries.is_empty() {
            if !follower.ack_owed {
                self.send_ack(false);
            }
            return;
        }
        for (offset, entry) in new_entries.iter().enumerate() {
            assert_eq!(entry.index, self.accepted.index + 1 + offset as u64, "append entries are contiguous");
        }
        self.accepted = new_entries.last().expect("checked non-empty").position();
        follower.ack_owed = true;
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
    ) {
        if epoch != self.epoch {
            // An ack from another epoch says nothing about this leader's log.
            return;
        }
        let last_index = self.last.index;
        let Role::Leader(leader) = &mut self.role else { return };
        let Some(progress) = leader.peers.get_mut(from) else { return };
        progress.last_ack_at = Some(now);
        progress.acked_read_seq = progress.acked_read_seq.max(read_seq);
        if durable.index > progress.matched {
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
            if waiting && !progress.fetching && !progress.snapshotting && now.saturating_sub(progress.last_sent_at) > resend_timeout {
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
        let message = Message::Append {
            epoch: self.epoch,
            leader: self.config.id.clone(),
            prev_index,
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

    /// Recomputes the commit index and completes every write and read that is now satisfied
    /// or past its deadline.
    fn advance(&mut self, now: Micros) {
        let members = self.config.members.len();
        let majority = self.config.majority();
        let last_index = self.last.index;
        let Role::Leader(leader) = &mut self.role else { return };

        let mut durable: Vec<u64> = leader.peers.values().map(|progress| progress.matched).collect();
        durable.push(last_index);
        durable.sort_unstable_by(|a, b| b.cmp(a));
        leader.commit_index = leader.commit_index.max(durable[majority - 1]);

        let copies = |index: u64| 1 + leader.peers.values().filter(|progress| progress.matched >= index).count();
        let satisfied = |waiter: &WriteWaiter| -> bool {
            let index = waiter.position.index;
            match waiter.requirement {
                AckRequirement::Nodes(count) => copies(index) >= count,
                AckRequirement::Majority => copies(index) >= majority,
                AckRequirement::All => copies(index) >= members,
                AckRequirement::AllInSync => {
                    copies(index) >= majority
                        && leader.peers.values().all(|progress| !progress.in_sync || progress.matched >= index)
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
                let error = WriteError::Timeout {
                    position: waiter.position,
                    acked_by: copies(waiter.position.index),
                    needed: requirement_text(waiter.requirement),
                };
                self.outputs.push_back(Output::WriteDone { tag: waiter.tag, result: Err(error) });
            } else {
                index += 1;
            }
        }

        let commit_index = leader.commit_index;
        let confirmed = |read_seq: u64| 1 + leader.peers.values().filter(|progress| progress.acked_read_seq >= read_seq).count();
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
        let leader = self.config.leader.clone();
        self.send_ack_to(&leader, rejected);
    }

    fn send_ack_to(&mut self, to: &NodeId, rejected: bool) {
        let read_seq = match &self.role {
            Role::Follower(follower) => follower.read_seq,
            Role::Leader(_) => 0,
        };
        let message = Message::AppendAck {
            epoch: self.epoch,
            durable: self.last,
            next_index: self.accepted.index + 1,
            read_seq,
            rejected,
        };
        self.outputs.push_back(Output::Send { to: to.clone(), message });
    }
}

fn requirement_text(requirement: AckRequirement) -> String {
    match requirement {
        AckRequirement::Nodes(count) => format!("w={count}"),
        AckRequirement::Majority => "a majority".to_string(),
        AckRequirement::All => "every member".to_string(),
        AckRequirement::AllInSync => "every in-sync follower".to_string(),
    }
}
