//! How each log format captures a leader's writes (and, for the row and physical
//! formats, applies them on followers): one module per format.
//!
//! - `statement`: SQL text made deterministic by rewriting non-deterministic calls to the
//!   leader's values (and telling which statements cannot be, so they ship as rows).
//! - `row`: SQLite's session extension (row images, changesets), by hand-declared C
//!   functions; all of the crate's unsafe code is here.
//! - `physical`: tailing the leader's WAL for the page images of each committed
//!   transaction.

pub mod physical;
pub mod row;
pub mod statement;
