//! What a replica is configured with: identity, members, ack mode, timers.

use super::*;

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
    /// This node's leader priority (`--leader-priority`, default 1): with elections,
    /// leadership moves to a healthy, caught-up voter of higher priority than the
    /// leader's. 0 is never handed leadership and campaigns only as a last resort (no
    /// leader for 10 election timeouts), handing over as soon as another voter can lead.
    pub leader_priority: u8,
    /// Permanent non-voting replicas (`--non-voters`): at first start they are raft
    /// learners instead of voters (every node must be given the same set, as with
    /// `members`), and a node in this set asks never to be promoted, also when it joins.
    pub non_voters: BTreeSet<NodeId>,
    /// How long a member of higher priority than the leader's must stay connected and
    /// caught up before leadership moves to it (a flapping link does not move it back and
    /// forth). A leader of priority 0 hands over without waiting.
    pub leader_return_settle_us: Micros,
    /// A node that handed leadership away by `transfer_leadership` (an operator's, or off
    /// a full disk) does not have it moved back to it for its priority for this long.
    pub leader_yield_us: Micros,
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
            leader_priority: 1,
            non_voters: BTreeSet::new(),
            leader_return_settle_us: 3_000_000,
            leader_yield_us: 60_000_000,
        }
    }

    /// What this node asks of leader placement, as its acks tell the leader.
    pub fn preference(&self) -> Preference {
        Preference { leader_priority: self.leader_priority, voter: !self.non_voters.contains(&self.id), yielding: false }
    }
}
