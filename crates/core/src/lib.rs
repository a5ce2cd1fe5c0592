//! tern's sans-IO replication core.
//!
//! Everything here is a plain state machine: it never touches a socket, a file, a clock,
//! a thread or a random source. Drivers (the tokio server in `tern-server`, the
//! deterministic simulator) feed it events with the current time and drain the
//! [`single_leader::Output`]s it produces. The driving contract is written at the top
//! of [`single_leader`].
//!
//! Layout:
//! - [`types`]: positions, entries, ack modes, read levels, log formats.
//! - [`byte_buf`]: byte vectors on the wire and in the log as byte strings.
//! - [`protocol`]: the driving contract every topology implements (`handle`,
//!   `poll_output`, `poll_timeout`).
//! - [`quorum`]: quorum counting and deadline waiters, for every topology.
//! - [`message`]: what replicas say to each other on the data path.
//! - [`hlc`]: a hybrid logical clock, fed the wall clock by the driver (for row versions
//!   in the multi-leader and leaderless topologies).
//! - [`election`]: leader election by quorum vote, delegated to raft-rs (term = epoch).
//! - [`single_leader`]: the single-leader topology, one file per role and concern:
//!   leader log shipping and ack accounting (async / semi-sync / sync / `w=`), follower
//!   acceptance, recovery and transfer, reads and leases, membership, log matching.
//! - [`multi_leader`]: the multi-leader topology's pure parts so far: causal delivery
//!   between regions, multi-value registers, conflict policies.
//! - [`storage_contract`]: what the core expects of a node's durable storage, and the
//!   conformance suite the storage engine and the simulator's disk model both pass.

pub mod byte_buf;
pub mod election;
pub mod hlc;
pub mod leaderless;
pub mod message;
pub mod multi_leader;
pub mod protocol;
pub mod quorum;
pub mod single_leader;
pub mod storage_contract;
pub mod types;

pub use election::{ElectionConfig, Membership, SavedElection};
pub use hlc::{ClockDrift, HybridClock, Timestamp};
pub use message::{Message, Preference};
pub use protocol::Protocol;
pub use single_leader::{log_holds, Config, MembershipError, MembershipRequest, Output, ReadError, Replica, Status, TransferError, WriteError};
pub use types::{AckMode, AckRequirement, Entry, Fnv1a, LogFormat, Micros, NodeId, Position, ReadLevel, SharedBytes, Topology};
