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
        /// The index just before `entries[0]` (or the leader's last index for a heartbeat).
        prev_index: u64,
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
    },
}

impl Message {
    pub fn epoch(&self) -> u64 {
        match self {
            Message::Append { epoch, .. } | Message::AppendAck { epoch, .. } => *epoch,
        }
    }
}
