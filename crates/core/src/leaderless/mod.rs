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
//! Not built yet (issue 16): the node protocol that drives these (requests, messages,
//! timers, hints kept and handed over, the anti-entropy exchange), its simulation, the
//! server (docs/design/leaderless.md).

pub mod coordination;
pub mod dvv;
pub mod merkle;
pub mod ring;

pub use coordination::{merge_answers, plan_write, Destination, WriteOutcome, WriteTally};
pub use dvv::{Context, Versions};
pub use merkle::MerkleTree;
pub use ring::{Ring, RingNode};
