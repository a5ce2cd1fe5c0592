//! What clients did and saw: one record per operation, from invocation to completion.

use tern_core::{AckRequirement, Micros, Position, ReadLevel};

#[derive(Clone, Debug)]
pub enum OpKind {
    Write {
        write_id: u64,
        key: u8,
        requirement: AckRequirement,
    },
    /// A write that changes nothing (`--rewrites`): the leader's rows already hold what
    /// it writes, so it makes no entry; acknowledged, its position is the last entry the
    /// leader had written when it ran, which must then survive as a write's would.
    Rewrite {
        requirement: AckRequirement,
    },
    Read {
        key: u8,
        level: ReadLevel,
        after: Position,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Still in flight when the run ended (treated like `Unknown`).
    Pending,
    WriteOk(Position),
    /// Definitely did not happen (refused before execution).
    Failed,
    /// May or may not have happened (timeout, lost connection).
    Unknown,
    /// The value read: the id of the write that produced it (or none) and the log index
    /// that write landed at; `node_last` is the serving node's position.
    ReadOk {
        write_id: Option<u64>,
        write_index: u64,
        node_last: Position,
    },
}

#[derive(Clone, Debug)]
pub struct Op {
    pub client: usize,
    pub kind: OpKind,
    pub invoked: Micros,
    pub completed: Option<Micros>,
    pub outcome: Outcome,
}

/// Does this requirement promise survival of the leader's loss (a majority of copies)?
pub fn is_durable_requirement(requirement: AckRequirement, members: usize) -> bool {
    match requirement {
        AckRequirement::Nodes(count) => count > members / 2,
        AckRequirement::Majority | AckRequirement::AllInSync | AckRequirement::All => true,
    }
}
