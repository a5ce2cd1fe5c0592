//! tern's SQLite engine.
//!
//! Layout:
//! - [`client_state`]: `last_insert_rowid()`, `changes()`, `total_changes()` as a client would see them.
//! - [`engine`]: the writer (execute + capture on the leader, apply on followers), the
//!   durable replication log kept in the same database, snapshots, and read-only readers.
//! - [`guard`]: what a client statement may do: text checks and the SQLite authorizer, deadline and limits.
//! - [`failpoint`]: named crash points inside multi-step storage operations, for tests.
//! - [`capture`]: one module per log format: `statement` (making statements
//!   deterministic), `row` (SQLite's session extension, the crate's only unsafe code) and
//!   `physical` (tailing the WAL).
//! - [`leaderless`]: a leaderless node's storage: versions per key, the user tables
//!   showing the visible ones, hints, schema; client writes captured as one row's change.
//! - [`region_log`]: multi-leader's durable per-origin log of writes and its cursors (not
//!   used by the server yet).
//! - [`row_versions`]: multi-leader's kept versions per row, applied under each table's
//!   conflict policy with the user table showing the visible one (not used by the server yet).
//! - [`schema_view`]: client reads of `sqlite_master` see the user's objects, not `_tern_*`.
//! - [`sql`]: requests and results in rqlite's shapes.

pub mod capture;
pub mod client_state;
pub mod engine;
pub mod failpoint;
pub mod guard;
pub mod leaderless;
pub mod region_log;
pub mod row_versions;
pub mod schema_view;
pub mod sql;
pub mod sync;

pub use engine::{
    all_read_only, changes_schema, dump_to_statements, is_maintenance, page_hashes, request_shape_error, write_logical_snapshot, write_snapshot_of, Batch,
    Change, ChangeCursor, ChangeEvent, ChangePage, ChangesError, Engine, Executed, Payload, Reader, RegionPayload, RollbackStore, RolledBack, StorageError,
    StorageErrorKind, TableConflicts, WriteRequest, DATABASE_FILE,
};
pub use guard::Limits;

/// The version of SQLite this build carries.
pub fn sqlite_version() -> &'static str {
    rusqlite::version()
}
pub use sql::{parse_statements, JsonStyle, Params, SqlValue, Statement, StatementResult};
