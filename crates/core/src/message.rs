//! Messages between replicas on the data path. The drivers carry them (TCP in the
//! server, a simulated network in the simulator); the core only produces and consumes them.

use crate::types::{Entry, NodeId, Position};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Leader to follower: entries after `prev_index` (none for a heartbeat).
    Append {
        epoch: u64,
        leader: NodeId,
        /// The index just before `entries[0]` (for a heartbeat, the last one already sent).
        prev_index: u64,
        /// The epoch of the leader's entry at `prev_index`: a follower holding another
        /// epoch there has entries the leader lacks (log matching, as in Raft).
        prev_epoch: u64,
        entries: Vec<Entry>,
        /// Highest index a majority has durably; lets followers report what is committed.
        commit_index: u64,
        /// The leader's last index when it sent this; a follower that has applied it
        /// was fully caught up at the moment the message left (used to measure lag).
        leader_last: u64,
        /// Heartbeat round for confirming leadership; echoed back in the ack.
        read_seq: u64,
    },
    /// Follower to leader.
    AppendAck {
        epoch: u64,
        /// Everything up to here is durable (and applied) on the follower.
        durable: Position,
        /// The index the follower expects next (after entries it is still persisting).
        next_index: u64,
        /// The highest heartbeat round this follower has seen from the leader.
        read_seq: u64,
        /// The append did not connect to the follower's log; resend from `next_index`.
        rejected: bool,
        /// The follower's log has entries the leader's lacks: where each epoch starts in
        /// it, `(epoch, first index)`, so the leader can find the common prefix.
        diverged: Option<Vec<(u64, u64)>>,
        /// What the follower asks to be (its leader priority, whether it may vote): every
        /// ack carries it, so a leader knows it before it could promote or hand over to it.
        preference: Preference,
    },
    /// Raft's metadata group (votes, heartbeats, membership), as raft-rs protobuf bytes.
    Raft {
        #[serde(with = "crate::byte_buf")]
        bytes: Vec<u8>,
    },
    /// A node raft elected for `epoch` asks for every node's durable position before it
    /// leads; a node that answers refuses appends from older epochs from then on.
    Recover {
        epoch: u64,
    },
    RecoverAck {
        epoch: u64,
        last: Position,
    },
}

/// What a member asks of the cluster's leader placement, from its own configuration
/// (`--leader-priority`, `--non-voters`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preference {
    /// Leadership moves by itself to a healthy, caught-up voter of a higher priority than
    /// the leader's. 0: this member is never handed leadership and campaigns only as a
    /// last resort (see `election.rs`), handing over at once when it leads.
    pub leader_priority: u8,
    /// `false`: a permanent non-voting replica (a learner never promoted): it receives the
    /// log and serves reads, and counts for no majority, election or ack.
    pub voter: bool,
    /// It handed leadership away by a transfer (an operator's, or off a full disk) within
    /// the last minute: leadership does not move back to it for its priority meanwhile.
    #[serde(default)]
    pub yielding: bool,
}

impl Default for Preference {
    fn default() -> Preference {
        Preference { leader_priority: 1, voter: true, yielding: false }
    }
}

impl Preference {
    /// This member may be handed leadership (it may still lead when it alone holds
    /// acknowledged writes after a failure: see `docs/design/placement.md`).
    pub fn may_lead(&self) -> bool {
        self.voter && self.leader_priority > 0
    }
}

impl Message {
    pub fn epoch(&self) -> u64 {
        match self {
            Message::Append { epoch, .. } | Message::AppendAck { epoch, .. } | Message::Recover { epoch } | Message::RecoverAck { epoch, .. } => *epoch,
            Message::Raft { .. } => 0,
        }
    }
}
