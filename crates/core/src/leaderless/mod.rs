//! Leaderless replication (issue 16), its pure parts, Dynamo-style: any replica takes
//! writes for the keys it holds, each key lives on N nodes chosen by consistent hashing,
//! and replicas that missed writes are repaired by merging their versions.
//!
//! - [`dvv`]: one key's versions as a dotted version vector set: writes arrive in any
//!   order, more than once, or late through repair, and every replica converges to the
//!   same siblings; a version is dropped only under a write that had seen it.
//! - [`ring`]: consistent hashing with virtual nodes, replicas spread over regions, and
//!   the fallback nodes of a sloppy quorum.
//! - [`merkle`]: Merkle trees over token ranges, for anti-entropy: replicas compare
//!   trees and exchange only the keys of the ranges that differ.
//! - [`coordination`]: a coordinator's decisions for one request: where a write's copies
//!   go when replicas are down (hints on fallbacks), when `w` is met (strict or not), and
//!   after a read, the merged versions and the replicas to repair.
//!
//! - [`node`]: the node protocol that drives these: coordinating requests (forwarded
//!   to a replica for writes), counting acknowledgements, read repair, hints kept and
//!   handed over, failure detection by pings, the anti-entropy exchange of Merkle trees.

pub mod coordination;
pub mod dvv;
pub mod merkle;
pub mod node;
pub mod ring;

pub use coordination::{merge_answers, plan_write, Destination, WriteOutcome, WriteTally};
pub use dvv::{Context, Versions};
pub use merkle::MerkleTree;
pub use node::{
    digest, visible, write_locally, Answer, Count, Dot, Key, KeyVersions, LeaderlessNode, Levels, NodeConfig, NodeEvent, NodeMessage, NodeOutput, Placement,
    Refusal, RepairReport, Request, Stamped,
};
pub use ring::{Ring, RingNode};
