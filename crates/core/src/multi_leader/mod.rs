//! Multi-leader replication (issue 13), its pure parts: how each region orders and keeps
//! concurrent row versions so that every region converges to the same tables and the
//! same record of conflicts, whatever order changes arrive in.
//!
//! - [`causal`]: every region applies another region's writes only after everything
//!   those writes had seen (version vectors of per-origin positions), so a write is never
//!   applied before one it depends on.
//! - [`register`]: a multi-value register per row (or per column): the versions no
//!   write has seen past. Under causal delivery this set is the same in every region
//!   whatever the arrival order; the newest version by hybrid time is the visible one,
//!   the others are the conflict's losers, kept until a write that saw them replaces them.
//! - [`row`]: the conflict policies (`lww`, `column-merge`, `keep-both`) over registers.
//! - [`exchange`]: what a region's leader sends and receives: every write a region lacks
//!   (own and relayed), cursors, resends, and causal release for applying.
//! - [`homes`]: conflict avoidance (issue 14): one home region per homed key, moved by
//!   a fenced handover (the server does not use it yet; the simulator does).
//!
//! The storage, the server and the simulator drive these (docs/design/multi-leader.md).

pub mod causal;
pub mod exchange;
pub mod homes;
pub mod register;
pub mod row;

pub use causal::Received;
pub use causal::{CausalQueue, VersionVector};
pub use exchange::{Exchange, ExchangeConfig, ExchangeEvent, ExchangeOutput, RegionMessage, Shipment};
pub use homes::{Handover, HomeError, Homes};
pub use register::{Dot, Register, Stamp, Version};
pub use row::{Conflict, Policy, Row, RowError, RowWrite};
