//! What the replica asks its driver to do, and the waiters behind writes and reads.

use super::*;

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
    /// Store this election state durably, and only then send `then`: the raft messages
    /// that carry the vote or term it records. Persist before send is in the type: a
    /// driver that cannot store the state drops `then` (the node neither votes nor
    /// campaigns until a later save succeeds).
    SaveElection {
        state: SavedElection,
        then: Vec<(NodeId, Message)>,
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
pub(super) struct WriteWaiter {
    pub(super) tag: u64,
    pub(super) position: Position,
    pub(super) requirement: AckRequirement,
    pub(super) deadline: Micros,
}

/// A read waiting for a quorum to confirm leadership and for what it saw to be committed.
#[derive(Clone, Debug)]
pub(super) struct ReadWaiter {
    pub(super) tag: u64,
    /// Heartbeat round started after the read arrived; a majority acking it proves
    /// that no other leader had taken over when the read was served.
    pub(super) read_seq: u64,
    /// The last index the read's snapshot contained; it must be majority-durable.
    pub(super) observed_index: u64,
    pub(super) deadline: Micros,
}

pub(super) fn requirement_text(requirement: AckRequirement) -> String {
    match requirement {
        AckRequirement::Nodes(count) => format!("w={count}"),
        AckRequirement::Majority => "a majority".to_string(),
        AckRequirement::All => "every member".to_string(),
        AckRequirement::AllInSync => "every in-sync follower".to_string(),
    }
}
