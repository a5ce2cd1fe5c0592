//! One file per property. Each takes the finished run and returns violations as
//! sentences; an empty list means the property held in this run.

pub mod convergence;
pub mod leader_safety;
pub mod linearizable;
pub mod lost_writes;
pub mod placement;
pub mod session;
