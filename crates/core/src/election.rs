//! Leader election by quorum vote, delegated to raft-rs.
//!
//! tern does not write Raft: every node runs a `raft::RawNode` for a small metadata group
//! whose log holds raft's own no-op entries and membership changes (each naming the node
//! and its peer address). The
//! raft leader is the candidate for tern's leader and the raft term is tern's epoch; the
//! replica (see `replica.rs`) then runs its own recovery step before it accepts writes,
//! because raft chose the leader by the metadata log, which knows nothing of the data log.
//!
//! Two things raft-rs would do with its own clock and random source are done here
//! deterministically instead, so the simulator can replay any seed:
//! - raft's randomized election timeout is pinned to `election_ticks`; the spread that
//!   keeps candidates from splitting the vote comes from stretching a non-leader's tick
//!   interval by a factor drawn from a seeded generator, redrawn every term.
//! - the vote lease (a node that heard from a leader recently does not vote) is decided
//!   by the replica from tern's own heartbeats, whose send times the leader knows: vote
//!   requests are dropped before raft sees them while the lease holds.
//!
//! Membership: one change at a time (raft's single-server changes, so any majority of the
//! old voters overlaps any majority of the new). A node is added as a raft learner and
//! promoted once the replica sees it caught up on the data log. The metadata log is
//! compacted behind what was applied, so a joining node, which starts with no membership
//! at all, is sent a raft snapshot: its metadata carries the voters and learners, and
//! its data (filled in here) the name and address of every member.

use crate::types::{Micros, NodeId};
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfState, Entry as RaftEntry, EntryType, HardState, Message as RaftMessage, MessageType, Snapshot, SnapshotMetadata,
};
use raft::storage::MemStorage;
use raft::{RawNode, StateRole};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Timing of elections.
#[derive(Clone, Debug)]
pub struct ElectionConfig {
    /// One raft tick (leaders tick at exactly this rate).
    pub tick_us: Micros,
    /// Ticks without hearing a leader before a follower campaigns (stretched by up to 2x).
    pub election_ticks: usize,
    /// Ticks between a raft leader's heartbeats.
    pub heartbeat_ticks: usize,
    /// Seed for the tick stretch; drivers pass a random one (the simulator its seed).
    pub seed: u64,
}

impl Default for ElectionConfig {
    fn default() -> ElectionConfig {
        ElectionConfig { tick_us: 25_000, election_ticks: 10, heartbeat_ticks: 2, seed: 1 }
    }
}

impl ElectionConfig {
    /// The shortest time a follower waits without a leader before it campaigns or votes.
    pub fn election_timeout_min_us(&self) -> Micros {
        self.tick_us * self.election_ticks as Micros
    }

    /// How long a leader handing leadership over waits (writes paused) for the target to
    /// take over before it resumes writes itself: two election timeouts and 5 s to catch up.
    pub fn handover_timeout_us(&self) -> Micros {
        2 * self.election_timeout_min_us() + 5_000_000
    }
}

/// What must survive a restart for votes to stay single per term: raft's hard state
/// (term, vote, commit), its membership and its (tiny) log, as protobuf bytes. Drivers
/// store it durably whenever `Output::SaveElection` asks, before anything after it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedElection {
    pub hard_state: Vec<u8>,
    pub conf_state: Vec<u8>,
    pub entries: Vec<Vec<u8>>,
    /// Where the compacted part of the metadata log ends (raft `SnapshotMetadata`); empty
    /// before the first compaction.
    #[serde(default)]
    pub compacted: Vec<u8>,
    /// Name and peer address of every node raft knows (members, and ones removed since).
    #[serde(default)]
    pub directory: Vec<(NodeId, String)>,
}

impl SavedElection {
    pub fn term(&self) -> u64 {
        HardState::parse_from_bytes(&self.hard_state).map(|state| state.term).unwrap_or(0)
    }
}

/// Who is in the cluster. Voters count for every quorum (votes, acks, leases, recovery);
/// learners receive the data log and count for nothing until promoted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    /// Peer address of each member, as given in `--cluster` or to `cluster add` (opaque
    /// to the core).
    pub addresses: BTreeMap<NodeId, String>,
}

impl Membership {
    pub fn majority(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    pub fn contains(&self, id: &str) -> bool {
        self.voters.contains(id) || self.learners.contains(id)
    }

    /// Voters, then learners.
    pub fn members(&self) -> impl Iterator<Item = &NodeId> {
        self.voters.iter().chain(&self.learners)
    }
}

/// A change raft is asked to agree on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MemberChange {
    AddLearner { id: NodeId, address: String },
    Promote { id: NodeId },
    Remove { id: NodeId },
}

/// Node names and addresses travel in raft's byte fields as `name\taddress` lines;
/// names and addresses are checked to hold neither tab nor newline before they get here.
fn encode_directory<'a>(members: impl Iterator<Item = (&'a NodeId, &'a String)>) -> Vec<u8> {
    let mut text = String::new();
    for (name, address) in members {
        text.push_str(name);
        text.push('\t');
        text.push_str(address);
        text.push('\n');
    }
    text.into_bytes()
}

fn decode_directory(bytes: &[u8]) -> Vec<(NodeId, String)> {
    String::from_utf8_lossy(bytes).lines().filter_map(|line| line.split_once('\t')).map(|(name, address)| (name.to_string(), address.to_string())).collect()
}

pub(crate) enum ElectionOutput {
    Send { to: NodeId, bytes: Vec<u8> },
    Save(SavedElection),
}

/// Who leads which term, as raft sees it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Leadership {
    pub term: u64,
    pub leader: Option<NodeId>,
    pub is_self: bool,
}

pub(crate) struct Election {
    raw: RawNode<MemStorage>,
    names: BTreeMap<u64, NodeId>,
    /// Peer address of every node in `names`.
    addresses: BTreeMap<NodeId, String>,
    /// The membership changed (a change applied or a snapshot installed) since the
    /// replica last asked.
    membership_changed: bool,
    config: ElectionConfig,
    next_tick_at: Micros,
    rng: u64,
    /// Term for which `stretch_permille` was drawn.
    stretch_term: u64,
    stretch_permille: u64,
    /// Raft's clock does not run before this: on a fresh cluster the nodes other than the
    /// preferred first leader wait, so the first election goes to the preferred one
    /// even when it starts a little later than they do.
    hold_until: Micros,
    /// Leader priority 0: raft's election timer does not make this node campaign (it
    /// still votes, and takes over when a recovering candidate hands it leadership
    /// because it alone holds acknowledged writes), except as a last resort.
    never_campaigns: bool,
    /// Priority 0: ticks in a row at which the timer would have run out. After
    /// `LAST_RESORT_TIMEOUTS` timeouts without a leader it campaigns once: the voters that
    /// may lead may all be unable to win (their metadata logs behind its own), and a
    /// cluster with no leader at all is worse than a leader that hands over at once.
    overdue_ticks: usize,
}

/// Election timeouts a priority-0 voter waits without a leader before it campaigns.
const LAST_RESORT_TIMEOUTS: usize = 10;

/// Raft needs non-zero numeric ids; tern's are names. FNV-1a of the name, stable across
/// restarts and membership changes without coordination.
pub(crate) fn raft_id(name: &str) -> u64 {
    crate::types::Fnv1a::hash(name.as_bytes()).max(1)
}

impl Election {
    /// `members` and `addresses` are the cluster as configured at start, of which
    /// `non_voters` start as learners; saved state, once there is any, knows better. A
    /// `joining` node starts with no membership: it neither votes nor campaigns until a
    /// leader's snapshot tells it the cluster it was added to.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: &NodeId,
        (members, addresses, non_voters): (&[NodeId], &BTreeMap<NodeId, String>, &BTreeSet<NodeId>),
        never_campaigns: bool,
        joining: bool,
        preferred: bool,
        saved: Option<&SavedElection>,
        config: ElectionConfig,
        now: Micros,
    ) -> Election {
        let mut directory: BTreeMap<NodeId, String> = members.iter().map(|name| (name.clone(), addresses.get(name).cloned().unwrap_or_default())).collect();
        let storage = MemStorage::new();
        let mut applied = 0;
        match saved {
            Some(saved) if !saved.hard_state.is_empty() => {
                let hard_state = HardState::parse_from_bytes(&saved.hard_state).expect("saved raft hard state decodes");
                let conf_state = ConfState::parse_from_bytes(&saved.conf_state).expect("saved raft membership decodes");
                let entries: Vec<RaftEntry> = saved.entries.iter().map(|bytes| RaftEntry::parse_from_bytes(bytes).expect("saved raft entry decodes")).collect();
                applied = hard_state.commit;
                let mut core = storage.wl();
                if !saved.compacted.is_empty() {
                    let mut snapshot = Snapshot::default();
                    snapshot.set_metadata(SnapshotMetadata::parse_from_bytes(&saved.compacted).expect("saved raft compaction point decodes"));
                    core.apply_snapshot(snapshot).expect("a fresh store takes any snapshot");
                }
                core.set_conf_state(conf_state);
                core.append(&entries).expect("saved raft entries are contiguous");
                core.set_hardstate(hard_state);
                if !saved.directory.is_empty() {
                    directory = saved.directory.iter().cloned().collect();
                }
            }
            _ if joining => directory.clear(),
            _ => {
                let ids =
                    |learners: bool| directory.keys().filter(|name| non_voters.contains(*name) == learners).map(|name| raft_id(name)).collect::<Vec<u64>>();
                storage.initialize_with_conf_state((ids(false), ids(true)));
            }
        }
        directory.entry(id.clone()).or_default();
        let names: BTreeMap<u64, NodeId> = directory.keys().map(|name| (raft_id(name), name.clone())).collect();
        assert_eq!(names.len(), directory.len(), "member names must hash to distinct raft ids");
        let raft_config = raft::Config {
            id: raft_id(id),
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            // Pinned: the spread comes from the stretched tick interval (module docs).
            min_election_tick: config.election_ticks,
            max_election_tick: config.election_ticks + 1,
            check_quorum: true,
            pre_vote: true,
            applied,
            max_inflight_msgs: 64,
            ..Default::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raw = RawNode::new(&raft_config, storage, &logger).expect("valid raft configuration");
        let rng = config.seed ^ raft_id(id) ^ 0x9e37_79b9_7f4a_7c15;
        let fresh = raw.raft.term == 0;
        let hold_until = if fresh && !preferred { now + 6 * config.election_timeout_min_us() } else { now };
        let mut election = Election {
            raw,
            names,
            addresses: directory,
            membership_changed: false,
            next_tick_at: now,
            rng: rng.max(1),
            stretch_term: u64::MAX,
            stretch_permille: 0,
            config,
            hold_until,
            never_campaigns,
            overdue_ticks: 0,
        };
        election.restretch();
        election
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: deterministic from the seed, no global state.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn restretch(&mut self) {
        let term = self.raw.raft.term;
        if term != self.stretch_term {
            self.stretch_term = term;
            self.stretch_permille = self.next_random() % 1000;
        }
    }

    fn tick_interval(&self) -> Micros {
        if self.raw.raft.state == StateRole::Leader {
            self.config.tick_us
        } else {
            self.config.tick_us + self.config.tick_us * self.stretch_permille / 1000
        }
    }

    /// When raft's clock next needs a tick (while a fresh node holds back, when it may start).
    pub(crate) fn next_tick_at(&self) -> Micros {
        if self.raw.raft.term == 0 && self.next_tick_at < self.hold_until {
            self.hold_until
        } else {
            self.next_tick_at
        }
    }

    pub(crate) fn config(&self) -> &ElectionConfig {
        &self.config
    }

    /// Advances raft's logical clock by the ticks due at `now`.
    pub(crate) fn on_tick(&mut self, now: Micros) {
        if now < self.hold_until && self.raw.raft.term == 0 {
            self.next_tick_at = now;
            return;
        }
        while now >= self.next_tick_at {
            if self.never_campaigns && self.raw.raft.state != StateRole::Leader {
                // One tick short of the timeout, so this tick cannot start a campaign.
                let limit = self.raw.raft.randomized_election_timeout().saturating_sub(2);
                let overdue = self.raw.raft.election_elapsed >= limit;
                self.overdue_ticks = if overdue { self.overdue_ticks + 1 } else { 0 };
                if self.overdue_ticks < LAST_RESORT_TIMEOUTS * self.config.election_ticks {
                    self.raw.raft.election_elapsed = self.raw.raft.election_elapsed.min(limit);
                }
            }
            self.raw.tick();
            self.restretch();
            self.next_tick_at += self.tick_interval();
        }
    }

    /// A raft message from `from`. Vote requests are dropped while `may_vote` is false
    /// (tern's vote lease), unless they come from a leadership transfer, which the old
    /// leader started after it stopped accepting writes.
    pub(crate) fn on_message(&mut self, from: &NodeId, bytes: &[u8], may_vote: bool) {
        let Ok(message) = RaftMessage::parse_from_bytes(bytes) else { return };
        if message.from != raft_id(from) {
            return;
        }
        // The name checks out against the id: replies can reach a node this one has not
        // heard of yet (a joining node, before the snapshot that names everyone).
        self.names.entry(message.from).or_insert_with(|| from.clone());
        if message.get_msg_type() == MessageType::MsgHeartbeat && message.commit > self.raw.raft.raft_log.last_index() {
            // Meant for an earlier incarnation of this node, before its state was wiped
            // (removed, then added back empty): raft-rs would panic committing entries
            // this log does not have. A leader tracking this incarnation never sends it.
            return;
        }
        let is_vote = matches!(message.get_msg_type(), MessageType::MsgRequestVote | MessageType::MsgRequestPreVote);
        if is_vote && !may_vote && message.context[..] != *raft::CAMPAIGN_TRANSFER {
            return;
        }
        if is_vote && self.never_campaigns && self.raw.raft.state != StateRole::Leader {
            // Its timer is held short of the timeout (`on_tick`), which raft would also read
            // as "heard from a leader within a timeout" and refuse every vote; tern's own
            // vote lease (`may_vote`) already decided that, so let raft see the time passed.
            let timeout = self.raw.raft.election_timeout();
            self.raw.raft.election_elapsed = self.raw.raft.election_elapsed.max(timeout);
        }
        let is_snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
        let configured = !(is_vote || is_snapshot) || self.configured();
        if is_vote && !configured {
            // A node that joins with no state (perhaps added back after its disk was
            // wiped) votes only once a leader's snapshot gave it the log up to its
            // addition: from an empty log it would forget entries (a committed removal
            // among them) that a majority once counted it for.
            return;
        }
        if is_snapshot && !configured {
            let offered = message.get_snapshot().get_metadata().get_conf_state();
            if !offered.learners.contains(&self.raw.raft.id) {
                // Joining nodes are added as learners: a snapshot naming this node a voter
                // comes from a leader of its earlier incarnation, still unaware it was removed.
                return;
            }
        }
        let _ = self.raw.step(message);
        self.restretch();
    }

    /// This node has a membership: it started with one, or a leader's snapshot gave it one.
    fn configured(&self) -> bool {
        let conf_state = self.applied_conf_state();
        !conf_state.voters.is_empty() || !conf_state.learners.is_empty()
    }

    /// Voters and learners (as raft ids) as this node last applied them.
    fn applied_conf_state(&self) -> ConfState {
        use raft::Storage as _;
        self.raw.store().initial_state().expect("memory storage").conf_state
    }

    /// Campaign now (the preferred first leader does, instead of waiting a timeout).
    pub(crate) fn campaign(&mut self) {
        // A node outside the voters (joining) must not: raft-rs would panic making it leader.
        if self.raw.raft.promotable() {
            let _ = self.raw.campaign();
        }
    }

    pub(crate) fn transfer_leadership(&mut self, to: &NodeId) {
        self.raw.transfer_leader(raft_id(to));
    }

    /// A leadership transfer started by this node is still under way.
    pub(crate) fn transferring(&self) -> bool {
        self.raw.raft.lead_transferee.is_some()
    }

    pub(crate) fn term(&self) -> u64 {
        self.raw.raft.term
    }

    pub(crate) fn leadership(&self) -> Leadership {
        let raft = &self.raw.raft;
        let leader = self.names.get(&raft.leader_id).cloned();
        Leadership { term: raft.term, leader, is_self: raft.state == StateRole::Leader }
    }

    /// Handles raft's `Ready`: state to save first, then messages, in raft-rs 0.7's order.
    pub(crate) fn drain(&mut self, out: &mut Vec<ElectionOutput>) {
        while self.raw.has_ready() {
            let mut ready = self.raw.ready();
            // A leader may send before its own append is durable (raft thesis 10.2.1).
            let messages = ready.take_messages();
            self.send_all(messages, out);
            let mut save = false;
            if !ready.snapshot().is_empty() {
                let snapshot = ready.snapshot().clone();
                // The leader put every member's name and address in the data.
                for (name, address) in decode_directory(snapshot.get_data()) {
                    self.names.insert(raft_id(&name), name.clone());
                    self.addresses.insert(name, address);
                }
                self.raw.mut_store().wl().apply_snapshot(snapshot).expect("raft snapshot ahead of the log");
                self.membership_changed = true;
                save = true;
            }
            let committed = ready.take_committed_entries();
            self.apply_committed(committed);
            if !ready.entries().is_empty() {
                let entries = ready.entries().clone();
                self.raw.mut_store().wl().append(&entries).expect("raft entries continue the log");
                save = true;
            }
            if let Some(hard_state) = ready.hs() {
                let hard_state = hard_state.clone();
                self.raw.mut_store().wl().set_hardstate(hard_state);
                save = true;
            }
            if save {
                out.push(ElectionOutput::Save(self.saved()));
            }
            let persisted = ready.take_persisted_messages();
            self.send_all(persisted, out);
            let mut light = self.raw.advance(ready);
            if let Some(commit) = light.commit_index() {
                self.raw.mut_store().wl().mut_hard_state().set_commit(commit);
            }
            let messages = light.take_messages();
            self.send_all(messages, out);
            let committed = light.take_committed_entries();
            self.apply_committed(committed);
            self.raw.advance_apply();
            self.restretch();
        }
        if self.compact() {
            out.push(ElectionOutput::Save(self.saved()));
        }
    }

    /// Applies committed membership changes (the other entries are raft's no-ops).
    fn apply_committed(&mut self, entries: Vec<RaftEntry>) {
        for entry in entries {
            if entry.get_entry_type() != EntryType::EntryConfChange {
                continue;
            }
            let Ok(change) = ConfChange::parse_from_bytes(entry.get_data()) else { continue };
            for (name, address) in decode_directory(change.get_context()) {
                if raft_id(&name) == change.node_id {
                    self.names.insert(change.node_id, name.clone());
                    if !address.is_empty() || !self.addresses.contains_key(&name) {
                        self.addresses.insert(name, address);
                    }
                }
            }
            // A change raft-rs refuses (say, removing the last voter) is refused alike on
            // every node, so the membership stays as it was everywhere.
            if let Ok(conf_state) = self.raw.apply_conf_change(&change) {
                let removed_self = !conf_state.voters.contains(&self.raw.raft.id);
                self.raw.mut_store().wl().set_conf_state(conf_state);
                self.membership_changed = true;
                if removed_self && self.raw.raft.state == StateRole::Leader {
                    // Removed while leading (proposed by an earlier leader): raft-rs
                    // would go on leading a group it is not in. Step down; the voters
                    // elect one of their own after an election timeout.
                    let term = self.raw.raft.term;
                    self.raw.raft.become_follower(term, raft::INVALID_ID);
                }
            }
        }
    }

    /// Drops the applied part of the metadata log: a node that needs it gets a raft
    /// snapshot instead, which is how a joining node learns the membership. Whether
    /// anything was dropped (the saved state then changes).
    fn compact(&mut self) -> bool {
        use raft::Storage as _;
        let applied = self.raw.raft.raft_log.applied;
        let store = self.raw.store().clone();
        let (first, last) = (store.first_index().expect("memory storage"), store.last_index().expect("memory storage"));
        // Everything applied goes, at once: a joining node must never be sent the log
        // from its start, whose first membership is not in it (nodes start with it).
        if applied < first || applied > last {
            return false;
        }
        let term = store.term(applied).expect("applied entries are in the store");
        let rest = store.entries(applied + 1, last + 1, None, raft::GetEntriesContext::empty(false)).expect("memory storage holds its own entries");
        let state = store.initial_state().expect("memory storage");
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().index = applied;
        snapshot.mut_metadata().term = term;
        snapshot.mut_metadata().set_conf_state(state.conf_state.clone());
        let mut core = store.wl();
        core.apply_snapshot(snapshot).expect("compaction point is within the store");
        core.append(&rest).expect("kept entries continue the compaction point");
        core.set_hardstate(state.hard_state);
        true
    }

    /// Asks raft to agree on a membership change (this node must lead raft).
    ///
    /// # Errors
    /// While an earlier change is not yet applied (raft takes one at a time).
    pub(crate) fn propose(&mut self, change: &MemberChange) -> Result<(), ()> {
        if self.raw.raft.has_pending_conf() || self.raw.raft.state != StateRole::Leader {
            return Err(());
        }
        let mut conf_change = ConfChange::default();
        let (kind, name, address) = match change {
            MemberChange::AddLearner { id, address } => (ConfChangeType::AddLearnerNode, id, address.clone()),
            MemberChange::Promote { id } => (ConfChangeType::AddNode, id, String::new()),
            MemberChange::Remove { id } => (ConfChangeType::RemoveNode, id, String::new()),
        };
        conf_change.set_change_type(kind);
        conf_change.node_id = raft_id(name);
        conf_change.set_context(encode_directory(std::iter::once((name, &address))).into());
        self.raw.propose_conf_change(Vec::new(), conf_change).map_err(|_| ())
    }

    /// Leader: `id` holds the whole committed metadata log, so it knows it is a member
    /// (and will accept the snapshots that name it a voter once promoted).
    pub(crate) fn holds_metadata(&self, id: &NodeId) -> bool {
        self.raw.raft.prs().get(raft_id(id)).is_some_and(|progress| progress.matched >= self.raw.raft.raft_log.committed)
    }

    /// A membership change proposed and not yet applied here.
    pub(crate) fn change_pending(&self) -> bool {
        self.raw.raft.has_pending_conf()
    }

    /// The membership as this node last applied it.
    pub(crate) fn membership(&self) -> Membership {
        let conf_state = self.applied_conf_state();
        let named = |ids: &[u64]| -> BTreeSet<NodeId> { ids.iter().filter_map(|id| self.names.get(id).cloned()).collect() };
        let voters = named(conf_state.get_voters());
        let learners = named(conf_state.get_learners());
        let addresses =
            self.addresses.iter().filter(|(name, _)| voters.contains(*name) || learners.contains(*name)).map(|(n, a)| (n.clone(), a.clone())).collect();
        Membership { voters, learners, addresses }
    }

    /// Whether the membership changed since the last call.
    pub(crate) fn take_membership_change(&mut self) -> bool {
        std::mem::take(&mut self.membership_changed)
    }

    fn send_all(&mut self, messages: Vec<RaftMessage>, out: &mut Vec<ElectionOutput>) {
        let mut snapshots_sent = Vec::new();
        for mut message in messages {
            if message.get_msg_type() == MessageType::MsgSnapshot {
                message.mut_snapshot().set_data(encode_directory(self.addresses.iter()).into());
                snapshots_sent.push(message.to);
            }
            if let Some(to) = self.names.get(&message.to) {
                let bytes = message.write_to_bytes().expect("raft messages encode");
                out.push(ElectionOutput::Send { to: to.clone(), bytes });
            }
        }
        // The snapshot is one small message, as likely lost as any other. Raft waits in
        // its snapshot state until told how sending went; told "finished", it probes
        // again, and a follower that never got it asks again.
        for to in snapshots_sent {
            self.raw.report_snapshot(to, raft::SnapshotStatus::Finish);
        }
    }

    fn saved(&self) -> SavedElection {
        use raft::Storage as _;
        let store = self.raw.store();
        let state = store.initial_state().expect("memory storage");
        let first = store.first_index().expect("memory storage");
        let last = store.last_index().expect("memory storage");
        let entries = if last >= first {
            store.entries(first, last + 1, None, raft::GetEntriesContext::empty(false)).expect("memory storage holds its own entries")
        } else {
            Vec::new()
        };
        // A compacted store restarts from its compaction point: index and term.
        let compacted = if first > 1 {
            let point = SnapshotMetadata { index: first - 1, term: store.term(first - 1).expect("the compaction point's term is kept"), ..Default::default() };
            point.write_to_bytes().expect("encodes")
        } else {
            Vec::new()
        };
        SavedElection {
            hard_state: state.hard_state.write_to_bytes().expect("encodes"),
            conf_state: state.conf_state.write_to_bytes().expect("encodes"),
            entries: entries.iter().map(|entry| entry.write_to_bytes().expect("encodes")).collect(),
            compacted,
            directory: self.addresses.iter().map(|(name, address)| (name.clone(), address.clone())).collect(),
        }
    }
}
