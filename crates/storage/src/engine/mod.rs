//! The SQLite engine of one node: executes writes and captures them as log entries
//! (leader), applies entries (follower), keeps the replication log, makes and installs
//! snapshots, and serves reads.
//!
//! Architecture invariant: the replication log (`_tern_log`) and the data live in the same
//! SQLite database and change in the same transaction. After any crash the database holds
//! exactly the entries of `_tern_log` and their effects, no more, no less.
//! Every write transaction commits with `synchronous=FULL` in WAL mode, so a commit that
//! returned is on disk; many client requests share one commit (group commit). One
//! exception, the leader's client writes in the logical formats: they commit without the
//! sync, their entry ships, and `Engine::sync_commits` syncs the WAL while the followers
//! persist; the leader counts its own copy only after that sync.
//!
//! Here: the entry and request types, the `Engine` itself and opening it. By concern:
//! `execute` (the leader's write path), `statements` (one client statement), `rowids` and
//! `maintenance` (`VACUUM`, checkpoints), `backup` (`/db/backup` and `/db/load`), `apply` (followers), `log`, `snapshot`,
//! `checksums`, `reader`, `rollback` (the rollback store) and `error`.

use crate::capture::physical::WalTail;
use crate::capture::row::{apply_changeset, Session};
use crate::capture::statement::{creates_table_from_select, is_nondeterministic_function, make_deterministic_calling, reads_the_clock, tokenize, TokenKind};
use crate::client_state::{ClientCounters, WriteKind};
use crate::guard::{self, describe, first_keyword, ClientPolicy, Limits};
use crate::sql::{Params, SqlValue, Statement, StatementResult};
use rusqlite::types::Value;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tern_core::{Entry, LogFormat, Position};

mod apply;
mod backup;
mod changes;
mod checksums;
mod error;
mod execute;
mod log;
mod maintenance;
mod reader;
mod regions;
mod rollback;
mod rowids;
mod snapshot;
mod statements;

pub use backup::*;
pub use changes::*;
pub use checksums::*;
pub use error::*;
use log::*;
use maintenance::*;
pub use reader::*;
pub(crate) use regions::has_rowid_key;
use regions::RegionState;
pub use regions::{RegionPayload, RowValues, TableConflicts};
pub use rollback::*;
use rowids::*;
pub use snapshot::*;
pub(crate) use statements::run_statement_with;
pub use statements::*;

pub const DATABASE_FILE: &str = "data.db";

/// One change inside a log entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Change {
    /// Re-executed on followers: every statement in the statement format, and schema or
    /// other non-row statements in the row format.
    Sql { sql: String, params: Params },
    /// Row images recorded by SQLite's session extension (row format).
    Rows(#[serde(with = "tern_core::byte_buf")] Vec<u8>),
    /// Page images of committed transactions, read from the leader's WAL (physical format).
    Pages {
        page_size: u32,
        database_pages: u32,
        #[serde(with = "tern_core::byte_buf::numbered")]
        pages: Vec<(u32, Vec<u8>)>,
    },
    /// `VACUUM` (logical formats), run by every replica. It renumbers the rowids of tables
    /// without an INTEGER PRIMARY KEY, but as a function of the rows alone (it copies them
    /// in rowid order), so replicas that hold the same rows renumber them the same way.
    /// Always alone in its entry.
    Vacuum,
    /// The rowids the leader gave rows that `Rows` address by a declared primary key
    /// (tables with a rowid and a key that is not it): per table, each written row's key
    /// values (in column order) and rowid. A follower inserting such rows picks rowids of
    /// its own, in changeset order; this sets them to the leader's.
    Rowids(Vec<(String, Vec<(Vec<SqlValue>, i64)>)>),
    /// Where and when the changes after it were written (the leader's region, milliseconds
    /// since the Unix epoch by its clock; under multi-leader, before each other region's
    /// write an entry applies, that write's region and time): what a change stream
    /// reports. Applying it does nothing. First in the entries of logical formats since
    /// stop 30; older entries lack it.
    Origin { region: String, unix_ms: u64 },
}

/// What one log entry carries: the changes of one client request, in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    pub changes: Vec<Change>,
}

impl Payload {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("encoding a payload to memory cannot fail")
    }

    /// # Errors
    /// If the bytes are not a payload (corruption or version mismatch).
    pub fn decode(bytes: &[u8]) -> Result<Payload> {
        postcard::from_bytes(bytes).map_err(|error| StorageError::new(format!("undecodable log entry: {error}")))
    }
}

/// A client write: statements executed in order; with `transaction`, all or nothing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WriteRequest {
    pub statements: Vec<Statement>,
    pub transaction: bool,
}

impl WriteRequest {
    /// About how many bytes the request's SQL and parameters hold: what a group commit
    /// counts so that one log entry stays far below a peer frame's limit.
    pub fn approximate_bytes(&self) -> usize {
        let value_bytes = |value: &SqlValue| match value {
            SqlValue::Text(text) => text.len(),
            SqlValue::Blob(bytes) => bytes.len(),
            _ => 8,
        };
        self.statements
            .iter()
            .map(|statement| {
                statement.sql.len()
                    + match &statement.params {
                        Params::None => 0,
                        Params::Positional(values) => values.iter().map(value_bytes).sum(),
                        Params::Named(pairs) => pairs.iter().map(|(name, value)| name.len() + value_bytes(value)).sum(),
                    }
            })
            .sum()
    }
}

/// What executing a batch of requests produced on the leader.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Per request, per statement.
    pub results: Vec<Vec<StatementResult>>,
    /// Per request: did it change the database (so its reply waits for the entry's acks)?
    pub changed: Vec<bool>,
    /// The log entry holding the whole batch's changes; `None` if nothing changed.
    pub entry: Option<Entry>,
    /// Multi-leader: the writes of regions' streams the entry holds (the one made here,
    /// or those from other regions applied here).
    pub region_writes: Vec<crate::region_log::LoggedWrite>,
    /// Multi-leader, per request: the home region of rows it would have written here
    /// though another region is their home (the request was undone; send it there).
    pub homed_elsewhere: Vec<Option<String>>,
}

/// The outcome of a leader's batch that is committed only while the node still leads.
#[derive(Debug)]
pub enum Executed {
    Committed(Batch),
    /// The lease or leadership was lost before the commit; nothing was applied.
    StoppedLeading,
}

pub struct Engine {
    connection: Connection,
    directory: PathBuf,
    format: LogFormat,
    /// Last entry applied. Invariants: logical formats: the newest `_tern_log` row in the
    /// database; physical: `_tern_meta.applied_index/epoch` inside the database's own pages.
    last: Position,
    /// Lowest index still held in the log (entries below were compacted away).
    first_index: u64,
    /// Physical format only: the log lives in `log.db`, since the data file's pages are
    /// the leader's and may hold nothing of the follower's own.
    separate_log: Option<Connection>,
    /// Physical format only: where reading the leader's WAL stands.
    wal: Option<WalTail>,
    /// Statement format: rewrite non-deterministic functions to literals (default on;
    /// off only to demonstrate the divergence it prevents).
    rewrite_statements: bool,
    /// WAL frames written since the last checkpoint (physical format).
    commits_since_checkpoint: u64,
    /// What client statements may do on this connection (authorizer, deadline, limits).
    policy: ClientPolicy,
    /// `last_insert_rowid()`, `changes()`, `total_changes()` as clients see them.
    client: ClientCounters,
    /// The largest log entry this engine commits (`MAX_ENTRY_BYTES` unless a test lowers it).
    max_entry_bytes: usize,
    /// Logical formats: a logged `VACUUM` has not finished here yet; it must run before
    /// anything else changes the database (mirrors `_tern_meta.vacuum_pending`).
    vacuum_pending: bool,
    /// Multi-leader: this engine's region (see `regions`); `None` under single-leader.
    region: Option<RegionState>,
    /// The region written into each entry's `Change::Origin`.
    origin_region: String,
    /// Logical formats: the leader's last commit went to the WAL without its sync, for
    /// `sync_commits` to make durable after the entry shipped (see `execute`).
    unsynced: bool,
    /// Row format: whether the schema's foreign keys have actions, as of a schema version
    /// (see `apply`).
    foreign_key_actions: std::cell::Cell<Option<(i64, bool)>>,
}

pub const LOG_FILE: &str = "log.db";

/// The largest log entry a leader commits (logical formats; physical: a VACUUM): far below the peer frame
/// limit, so every committed entry can be shipped.
pub const MAX_ENTRY_BYTES: usize = 128 << 20;

/// Physical format: checkpoint the WAL into the database file after this many commits
/// (only ever after their frames are durable in the log).
const CHECKPOINT_EVERY_COMMITS: u64 = 256;

fn configure_physical_data(connection: &Connection) -> Result<()> {
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.pragma_update(None, "wal_autocheckpoint", 0)?;
    connection.busy_timeout(std::time::Duration::from_secs(10))?;
    connection.set_prepared_statement_cache_capacity(256);
    Ok(())
}

/// Physical format: after every commit, drop this connection's page cache so the next
/// transaction reads page 1 afresh. SQLite sets the file change counter (header bytes
/// 24..28) of a committed page 1 to one more than the counter it last *read*; with fresh
/// reads on leader and followers alike, each commit that writes page 1 moves the counter
/// by exactly one on both sides, and the files stay byte-identical.
fn forget_cached_pages(connection: &Connection) -> Result<()> {
    connection.execute_batch("PRAGMA shrink_memory")?;
    Ok(())
}

/// The position a database holds: physical databases record it in their own pages,
/// logical ones are at their newest log row.
fn database_position(connection: &Connection) -> Result<Position> {
    // Cached: every read asks it, and parsing it cost more than the read by key itself.
    let recorded = connection
        .prepare_cached("SELECT (SELECT value FROM _tern_meta WHERE key = 'applied_epoch'), (SELECT value FROM _tern_meta WHERE key = 'applied_index')")
        .and_then(|mut statement| statement.query_row([], |row| Ok((row.get::<_, Option<i64>>(0)?, row.get::<_, Option<i64>>(1)?))))
        .optional();
    match recorded {
        Ok(Some((Some(epoch), Some(index)))) => Ok(Position::new(epoch as u64, index as u64)),
        _ => {
            if has_table(connection, "_tern_log")? {
                last_logged(connection)
            } else {
                Ok(Position::ZERO)
            }
        }
    }
}

/// Whether the database holds a table (or other object) named `name`.
pub(crate) fn has_table(connection: &Connection, name: &str) -> Result<bool> {
    Ok(connection.prepare_cached("SELECT count(*) > 0 FROM sqlite_schema WHERE name = ?1")?.query_row([name], |row| row.get(0))?)
}

fn configure_writer(connection: &Connection) -> Result<()> {
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.busy_timeout(std::time::Duration::from_secs(10))?;
    connection.execute_batch(
        "CREATE TABLE IF NOT EXISTS _tern_log (idx INTEGER PRIMARY KEY, epoch INTEGER NOT NULL, payload BLOB NOT NULL);
         CREATE TABLE IF NOT EXISTS _tern_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);",
    )?;
    Ok(())
}

/// `name` as a quoted SQL identifier (a table or column name of any spelling).
pub(crate) fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Starts a write transaction that rolls back when dropped unless committed: an error
/// path that returns early can never leave `BEGIN` open and wedge every later write.
fn begin_immediate(connection: &Connection) -> rusqlite::Result<Transaction<'_>> {
    Transaction::new_unchecked(connection, TransactionBehavior::Immediate)
}

impl Engine {
    /// Opens (or creates) the database in `directory` and recovers the log position.
    ///
    /// # Errors
    /// If the directory or database cannot be created or read.
    pub fn open(directory: &Path, format: LogFormat) -> Result<Engine> {
        std::fs::create_dir_all(directory)?;
        let mut connection = Connection::open(directory.join(DATABASE_FILE))?;
        let policy = ClientPolicy::install(&mut connection, format == LogFormat::Physical, Limits::default())?;
        let client = ClientCounters::install(&connection)?;
        let (separate_log, wal) = if format == LogFormat::Physical {
            configure_physical_data(&connection)?;
            let log = Connection::open(directory.join(LOG_FILE))?;
            configure_writer(&log)?;
            log.set_prepared_statement_cache_capacity(64);
            (Some(log), Some(WalTail::new(&directory.join(DATABASE_FILE))))
        } else {
            configure_writer(&connection)?;
            connection.set_prepared_statement_cache_capacity(256);
            (None, None)
        };
        let mut engine = Engine {
            connection,
            directory: directory.to_path_buf(),
            format,
            last: Position::ZERO,
            first_index: 1,
            separate_log,
            wal,
            rewrite_statements: true,
            commits_since_checkpoint: 0,
            policy,
            client,
            vacuum_pending: false,
            max_entry_bytes: MAX_ENTRY_BYTES,
            region: None,
            origin_region: String::new(),
            unsynced: false,
            foreign_key_actions: std::cell::Cell::new(None),
        };
        engine.load_position()?;
        if engine.format == LogFormat::Physical {
            // Everything in the WAL is accounted for (logged, or cut off by the log reset
            // in load_position), so start each run with an empty WAL.
            engine.checkpoint()?;
        }
        Ok(engine)
    }

    /// Statement format: turn the rewriting of non-deterministic functions off (on by
    /// default). Off lets replicas diverge; it exists to demonstrate that.
    /// The region this node runs in, recorded in the entries it writes as leader.
    pub fn set_origin_region(&mut self, region: &str) {
        self.origin_region = region.to_string();
    }

    /// Where and when an entry written now comes from.
    pub(super) fn origin(&self) -> Change {
        let unix_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64);
        Change::Origin { region: self.origin_region.clone(), unix_ms }
    }

    pub fn set_statement_rewrite(&mut self, enabled: bool) {
        self.rewrite_statements = enabled;
    }

    /// Lowers the largest entry this engine commits (tests: to show the refusal without
    /// writing 128 MiB).
    pub fn set_max_entry_bytes(&mut self, bytes: usize) {
        self.max_entry_bytes = bytes.min(MAX_ENTRY_BYTES);
    }

    /// Sets the limits on client statements (timeout, result size).
    pub fn set_limits(&mut self, limits: Limits) {
        self.policy.set_limits(limits);
    }

    pub(super) fn log(&self) -> &Connection {
        self.separate_log.as_ref().unwrap_or(&self.connection)
    }

    pub(super) fn load_position(&mut self) -> Result<()> {
        self.last = database_position(&self.connection)?;
        if self.format != LogFormat::Physical {
            // A crash (or a snapshot copied) between a VACUUM's log commit and its end.
            self.vacuum_pending = read_meta(&self.connection, VACUUM_PENDING)?.is_some();
            self.finish_logged_vacuum()?;
        }
        self.first_index = read_meta(self.log(), "first_index")?.unwrap_or(1);
        if self.format == LogFormat::Physical {
            let logged = last_logged(self.log())?;
            // The log must end exactly where the data stands, with the data's entry: a
            // crash after a snapshot replaced the data but before the log was reset
            // leaves the old log (perhaps another epoch's entries) beside the new data.
            let same_entry = self.last.index < self.first_index || self.logged_epoch(self.last.index)? == Some(self.last.epoch);
            if logged.index != self.last.index || !same_entry || self.first_index > self.last.index + 1 {
                // The data committed entries the log did not record (a crash between the
                // two commits): the log restarts after the data's position, so a follower
                // that needs earlier entries receives a snapshot.
                self.reset_log_after(self.last.index)?;
            }
        }
        Ok(())
    }

    pub fn last(&self) -> Position {
        self.last
    }

    pub fn format(&self) -> LogFormat {
        self.format
    }

    pub fn directory(&self) -> &Path {
        &self.directory
    }

    pub fn database_path(&self) -> PathBuf {
        self.directory.join(DATABASE_FILE)
    }
}
