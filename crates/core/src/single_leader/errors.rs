//! Why a write, read, membership change or transfer was refused.

use super::*;

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
            WriteError::NotLeader { leader: Some(leader) } => f.write_str(&not_leader(Some(leader))),
            WriteError::NotLeader { leader: None } => f.write_str(&not_leader(None)),
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
            MembershipError::NotLeader { leader: Some(leader) } => f.write_str(&not_leader(Some(leader))),
            MembershipError::NotLeader { leader: None } => f.write_str(&not_leader(None)),
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
    NotLeader {
        leader: Option<NodeId>,
    },
    NotAnotherMember {
        id: NodeId,
    },
    /// The member's leader priority is 0.
    NeverLeads {
        id: NodeId,
    },
    /// No ack from the member since this node began leading: its priority is not known.
    NotHeardFrom {
        id: NodeId,
    },
}

impl std::fmt::Display for TransferError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransferError::FailoverOff => write!(f, "automatic failover is off: the leader is fixed by --leader"),
            TransferError::NotLeader { leader } => f.write_str(&not_leader(leader.as_deref())),
            TransferError::NotAnotherMember { id } => write!(f, "{id} is not another voting member of the cluster"),
            TransferError::NotHeardFrom { id } => write!(f, "{id} has not acknowledged this leader yet (it may be down or cut off): retry once it has"),
            TransferError::NeverLeads { id } => write!(f, "{id} has leader priority 0: it never leads (restart it with --leader-priority 1 or more)"),
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
            ReadError::NotLeader { leader: Some(leader) } => f.write_str(&not_leader(Some(leader))),
            ReadError::NotLeader { leader: None } => f.write_str(&not_leader(None)),
            ReadError::Timeout => write!(f, "a quorum did not confirm leadership in time"),
        }
    }
}

/// What a node that is not the leader answers: the leader's name, or that an election is
/// under way. One wording for writes, reads and membership changes, on every path.
pub fn not_leader(leader: Option<&str>) -> String {
    match leader {
        Some(leader) => format!("not the leader; leader is {leader}"),
        None => "no leader is known (an election is under way): retry shortly".to_owned(),
    }
}
