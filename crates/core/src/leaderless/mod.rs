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
//!
//! Not built yet (issue 16): coordinators with `w=`/`r=`, read repair, hinted handoff,
//! the anti-entropy exchange, their simulation, the server (docs/design/leaderless.md).

pub mod dvv;
pub mod merkle;
pub mod ring;

pub use dvv::{Context, Versions};
pub use merkle::MerkleTree;
pub use ring::{Ring, RingNode};
