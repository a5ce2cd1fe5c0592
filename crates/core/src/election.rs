//! Leader election by quorum vote, delegated to raft-rs.
//!
//! tern does not write Raft: every node runs a `raft::RawNode` for a small metadata group
//! whose log holds only raft's own no-op entries (and, later, membership changes). The
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

use crate::types::{Micros, NodeId};
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry as RaftEntry, HardState, Message as RaftMessage, MessageType};
use raft::storage::MemStorage;
use raft::{RawNode, StateRole};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
}

/// What must survive a restart for votes to stay single per term: raft's hard state
/// (term, vote, commit), its membership and its (tiny) log, as protobuf bytes. Drivers
/// store it durably whenever `Output::SaveElection` asks, before anything after it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedElection {
    pub hard_state: Vec<u8>,
    pub conf_state: Vec<u8>,
    pub entries: Vec<Vec<u8>>,
}

impl SavedElection {
    pub fn term(&self) -> u64 {
        HardState::parse_from_bytes(&self.hard_state).map(|state| state.term).unwrap_or(0)
    }
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
}

/// Raft needs non-zero numeric ids; tern's are names. FNV-1a of the name, stable across
/// restarts and membership changes without coordination.
pub(crate) fn raft_id(name: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash.max(1)
}

impl Election {
    pub(crate) fn new(id: &NodeId, members: &[NodeId], preferred: bool, saved: Option<&SavedElection>, config: ElectionConfig, now: Micros) -> Election {
        let names: BTreeMap<u64, NodeId> = members.iter().map(|name| (raft_id(name), name.clone())).collect();
        assert_eq!(names.len(), members.len(), "member names must hash to distinct raft ids");
        let storage = MemStorage::new();
        let mut applied = 0;
        match saved {
            Some(saved) if !saved.hard_state.is_empty() => {
                let hard_state = HardState::parse_from_bytes(&saved.hard_state).expect("saved raft hard state decodes");
                let conf_state = ConfState::parse_from_bytes(&saved.conf_state).expect("saved raft membership decodes");
                let entries: Vec<RaftEntry> =
                    saved.entries.iter().map(|bytes| RaftEntry::parse_from_bytes(bytes).expect("saved raft entry decodes")).collect();
                applied = hard_state.commit;
                let mut core = storage.wl();
                core.set_conf_state(conf_state);
                core.append(&entries).expect("saved raft entries are contiguous");
                core.set_hardstate(hard_state);
            }
            _ => storage.initialize_with_conf_state((names.keys().copied().collect::<Vec<u64>>(), Vec::<u64>::new())),
        }
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
        let mut election =
            Election { raw, names, next_tick_at: now, rng: rng.max(1), stretch_term: u64::MAX, stretch_permille: 0, config, hold_until };
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
        let is_vote = matches!(message.get_msg_type(), MessageType::MsgRequestVote | MessageType::MsgRequestPreVote);
        if is_vote && !may_vote && message.context[..] != *raft::CAMPAIGN_TRANSFER {
            return;
        }
        let _ = self.raw.step(message);
        self.restretch();
    }

    /// Campaign now (the preferred first leader does, instead of waiting a timeout).
    pub(crate) fn campaign(&mut self) {
        let _ = self.raw.campaign();
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
                self.raw.mut_store().wl().apply_snapshot(snapshot).expect("raft snapshot ahead of the log");
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
    }

    fn apply_committed(&mut self, entries: Vec<RaftEntry>) {
        // The metadata log holds only raft's no-op entries so far; membership changes
        // will be applied here.
        let _ = entries;
    }

    fn send_all(&self, messages: Vec<RaftMessage>, out: &mut Vec<ElectionOutput>) {
        for message in messages {
            if let Some(to) = self.names.get(&message.to) {
                let bytes = message.write_to_bytes().expect("raft messages encode");
                out.push(ElectionOutput::Send { to: to.clone(), bytes });
            }
        }
    }

    fn saved(&self) -> SavedElection {
        use raft::Storage as _;
        let store = self.raw.store();
        let state = store.initial_state().expect("memory storage");
        let first = store.first_index().expect("memory storage");
        let last = store.last_index().expect("memory storage");
        let entries = if last >= first {
            store.entries(first, last + 1, None, raft::GetEntriesContext::empty(false))
                .expect("memory storage holds its own entries")
        } else {
            Vec::new()
        };
        SavedElection {
            hard_state: state.hard_state.write_to_bytes().expect("encodes"),
            conf_state: state.conf_state.write_to_bytes().expect("encodes"),
            entries: entries.iter().map(|entry| entry.write_to_bytes().expect("encodes")).collect(),
        }
    }
}
