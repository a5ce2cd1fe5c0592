//! The SQLite engine of one node: executes writes and captures them as log entries
//! (leader), applies entries (follower), keeps the replication log, makes and installs
//! snapshots, and serves reads.
//!
//! Architecture invariant: the replication log (`_tern_log`) and the data live in the same
//! SQLite database and change in the same transaction. After any crash the database holds
//! exactly the entries of `_tern_log` and their effects, no more, no less.
//! Every write transaction commits with `synchronous=FULL` in WAL mode, so a commit that
//! returned is on disk; many client requests share one commit (group commit).

use crate::client_state::{ClientCounters, WriteKind};
use crate::guard::{self, describe, first_keyword, ClientPolicy, Limits};
use crate::rewrite::{creates_table_from_select, is_nondeterministic_function, make_deterministic_calling, reads_the_clock, tokenize, TokenKind};
use crate::session::{apply_changeset, Session};
use crate::sql::{Params, SqlValue, Statement, StatementResult};
use crate::wal::WalTail;
use rusqlite::types::Value;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tern_core::{Entry, LogFormat, Position};

pub const DATABASE_FILE: &str = "data.db";

/// A storage failure that is an operating condition (disk, corruption, divergence),
/// not a problem with a client's SQL (those are per-statement results).
#[derive(Debug)]
pub struct StorageError {
    message: String,
    kind: StorageErrorKind,
}

/// What a storage failure means for the node, decided from SQLite's result code or the
/// operating system's error, never from message text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageErrorKind {
    /// No room to write (SQLITE_FULL, ENOSPC): the node stops accepting writes and
    /// hands leadership on, and retries with backoff.
    DiskFull,
    /// A client statement in a group commit ran past its deadline and the group failed:
    /// the others in it may retry.
    StatementTimedOut,
    /// The changes of a write would not fit one log entry (so no follower could ever
    /// receive them): nothing was applied; the client must split the write.
    EntryTooLarge,
    Other,
}

impl StorageError {
    pub fn new(message: impl Into<String>) -> StorageError {
        StorageError { message: message.into(), kind: StorageErrorKind::Other }
    }

    pub fn with_kind(kind: StorageErrorKind, message: impl Into<String>) -> StorageError {
        StorageError { message: message.into(), kind }
    }

    pub fn kind(&self) -> StorageErrorKind {
        self.kind
    }

    /// No room to write: the disk, or `max_page_count`.
    pub fn is_disk_full(&self) -> bool {
        self.kind == StorageErrorKind::DiskFull
    }
}

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StorageError {}

impl From<rusqlite::Error> for StorageError {
    fn from(error: rusqlite::Error) -> StorageError {
        let kind = match error.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => StorageErrorKind::DiskFull,
            _ => StorageErrorKind::Other,
        };
        StorageError::with_kind(kind, format!("sqlite: {error}"))
    }
}

impl From<std::io::Error> for StorageError {
    fn from(error: std::io::Error) -> StorageError {
        let kind = if error.kind() == std::io::ErrorKind::StorageFull { StorageErrorKind::DiskFull } else { StorageErrorKind::Other };
        StorageError::with_kind(kind, format!("io: {error}"))
    }
}

pub type Result<T> = std::result::Result<T, StorageError>;

/// One change inside a log entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Change {
    /// Re-executed on followers: every statement in the statement format, and schema or
    /// other non-row statements in the row format.
    Sql { sql: String, params: Params },
    /// Row images recorded by SQLite's session extension (row format).
    Rows(Vec<u8>),
    /// Page images of committed transactions, read from the leader's WAL (physical format).
    Pages { page_size: u32, database_pages: u32, pages: Vec<(u32, Vec<u8>)> },
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
}

/// The outcome of a leader's batch that is committed only while the node still leads.
#[derive(Debug)]
pub enum Executed {
    Committed(Batch),
    /// The lease or leadership was lost before the commit; nothing was applied.
    StoppedLeading,
}

/// Changes captured so far in a batch: finished ones, and the open session recording rows.
struct Capture<'connection> {
    session: Option<Session<'connection>>,
    changes: Vec<Change>,
}

impl Capture<'_> {
    /// Moves the rows recorded so far into `changes`; the caller starts a new session
    /// when more rows are to be recorded.
    fn flush_rows(&mut self) -> Result<()> {
        if let Some(session) = self.session.take() {
            let rows = session.changeset()?;
            if !rows.is_empty() {
                let rowids = rowids_of_keyed_rows(session.connection(), &rows)?;
                self.changes.push(Change::Rows(rows));
                self.changes.extend(rowids);
            }
        }
        Ok(())
    }
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
}

pub const LOG_FILE: &str = "log.db";

/// The largest log entry a leader commits (logical formats; physical: a VACUUM): far below the peer frame
/// limit, so every committed entry can be shipped.
pub const MAX_ENTRY_BYTES: usize = 128 << 20;

/// Physical format: checkpoint the WAL into the database file after this many commits
/// (only ever after their frames are durable in the log).
const CHECKPOINT_EVERY_COMMITS: u64 = 256;

/// A request that must run outside any transaction (`VACUUM`); it is executed alone.
pub fn is_maintenance(request: &WriteRequest) -> bool {
    request.statements.iter().any(|statement| first_keyword(&statement.sql) == "VACUUM")
}

/// Why a write request's shape is invalid as a whole (a 400 before anything is queued),
/// or `None`: `VACUUM` runs outside any transaction, so it must be the request's only
/// statement.
pub fn request_shape_error(request: &WriteRequest) -> Option<String> {
    (is_maintenance(request) && request.statements.len() > 1)
        .then(|| "VACUUM must be sent alone in its request: it runs outside any transaction, so it cannot share one with other statements".to_owned())
}

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
    let recorded = connection
        .query_row("SELECT (SELECT value FROM _tern_meta WHERE key = 'applied_epoch'), (SELECT value FROM _tern_meta WHERE key = 'applied_index')", [], |row| {
            Ok((row.get::<_, Option<i64>>(0)?, row.get::<_, Option<i64>>(1)?))
        })
        .optional();
    match recorded {
        Ok(Some((Some(epoch), Some(index)))) => Ok(Position::new(epoch as u64, index as u64)),
        _ => {
            let has_log: bool = connection.query_row("SELECT count(*) FROM sqlite_schema WHERE name = '_tern_log'", [], |row| row.get::<_, i64>(0))? > 0;
            if has_log {
                last_logged(connection)
            } else {
                Ok(Position::ZERO)
            }
        }
    }
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

fn read_meta(connection: &Connection, key: &str) -> Result<Option<u64>> {
    Ok(connection.query_row("SELECT value FROM _tern_meta WHERE key = ?1", [key], |row| row.get::<_, i64>(0)).optional()?.map(|value| value as u64))
}

fn write_meta(connection: &Connection, key: &str, value: u64) -> Result<()> {
    connection
        .execute("INSERT INTO _tern_meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value", params![key, value as i64])?;
    Ok(())
}

/// The position of the newest log entry. Compaction always keeps the newest entries, so
/// the log's last row is the database's position (no separate counter to keep in step).
fn last_logged(connection: &Connection) -> Result<Position> {
    let last = connection
        .prepare_cached("SELECT epoch, idx FROM _tern_log ORDER BY idx DESC LIMIT 1")?
        .query_row([], |row| Ok(Position::new(row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64)))
        .optional()?;
    Ok(last.unwrap_or(Position::ZERO))
}

fn append_log(log: &Connection, entry: &Entry) -> Result<()> {
    log.prepare_cached("INSERT INTO _tern_log (idx, epoch, payload) VALUES (?1, ?2, ?3)")?.execute(params![
        entry.index as i64,
        entry.epoch as i64,
        entry.payload
    ])?;
    Ok(())
}

/// Physical format: the leader writes its position into every transaction it ships.
/// The declared primary-key columns of `table` (in column order) if it also has a rowid
/// that is not one of them; `None` otherwise (no declared key: the changeset addresses
/// rows by rowid; an INTEGER PRIMARY KEY is the rowid; WITHOUT ROWID has none).
fn keys_beside_rowid(connection: &Connection, table: &str) -> Result<Option<Vec<String>>> {
    let columns: Vec<(String, String)> = connection
        .prepare_cached("SELECT name, type FROM pragma_table_info(?1) WHERE pk > 0 ORDER BY cid")?
        .query_map([table], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let rowid_alias = matches!(columns.as_slice(), [(_, declared)] if declared.eq_ignore_ascii_case("INTEGER"));
    let has_rowid = connection.prepare(&format!("SELECT _rowid_ FROM {} LIMIT 0", quote_identifier(table))).is_ok();
    Ok((!columns.is_empty() && !rowid_alias && has_rowid).then(|| columns.into_iter().map(|(name, _)| name).collect()))
}

fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `WHERE` over key columns, `IS` so that NULL keys (allowed in rowid tables) match.
fn key_condition(columns: &[String], first_parameter: usize) -> String {
    let terms: Vec<String> = columns.iter().enumerate().map(|(at, column)| format!("{} IS ?{}", quote_identifier(column), first_parameter + at)).collect();
    terms.join(" AND ")
}

/// Leader, row format: the rowids of the rows `changeset` writes in tables whose rows it
/// addresses by a declared key (see `Change::Rowids`), or `None` if there are none.
fn rowids_of_keyed_rows(connection: &Connection, changeset: &[u8]) -> Result<Option<Change>> {
    let mut shapes: std::collections::HashMap<String, Option<Vec<String>>> = std::collections::HashMap::new();
    let mut tables: Vec<(String, Vec<(Vec<SqlValue>, i64)>)> = Vec::new();
    for row in crate::session::written_rows(changeset)? {
        if !shapes.contains_key(&row.table) {
            shapes.insert(row.table.clone(), keys_beside_rowid(connection, &row.table)?);
        }
        let Some(Some(columns)) = shapes.get(&row.table) else { continue };
        let sql = format!("SELECT _rowid_ FROM {} WHERE {}", quote_identifier(&row.table), key_condition(columns, 1));
        let values: Vec<Value> = row.key.iter().map(Value::from).collect();
        let rowid: i64 = connection.prepare_cached(&sql)?.query_row(rusqlite::params_from_iter(values), |found| found.get(0))?;
        match tables.iter_mut().find(|(table, _)| *table == row.table) {
            Some((_, rows)) => rows.push((row.key, rowid)),
            None => tables.push((row.table, vec![(row.key, rowid)])),
        }
    }
    Ok((!tables.is_empty()).then_some(Change::Rowids(tables)))
}

/// Follower: gives each listed row the leader's rowid. Rows to move go first to fresh
/// rowids below every one in use, then to their own, so no move meets another row.
fn set_rowids(connection: &Connection, tables: &[(String, Vec<(Vec<SqlValue>, i64)>)]) -> Result<()> {
    for (table, rows) in tables {
        let Some(columns) = keys_beside_rowid(connection, table)? else {
            return Err(StorageError::new(format!("rowids for table {table:?}, which has no key beside its rowid here (replica diverged?)")));
        };
        let name = quote_identifier(table);
        let find = format!("SELECT _rowid_ FROM {name} WHERE {}", key_condition(columns.as_slice(), 1));
        let set = format!("UPDATE {name} SET _rowid_ = ?1 WHERE {}", key_condition(columns.as_slice(), 2));
        let mut moves = Vec::new();
        for (key, rowid) in rows {
            let values: Vec<Value> = key.iter().map(Value::from).collect();
            let current: Option<i64> = connection.prepare_cached(&find)?.query_row(rusqlite::params_from_iter(&values), |row| row.get(0)).optional()?;
            match current {
                Some(current) if current == *rowid => {}
                Some(_) => moves.push((values, *rowid)),
                None => return Err(StorageError::new(format!("a row of {table:?} the leader wrote is missing here (replica diverged?)"))),
            }
        }
        if moves.is_empty() {
            continue;
        }
        let lowest: i64 = connection.query_row(&format!("SELECT min(min(_rowid_), 0) FROM {name}"), [], |row| row.get(0))?;
        let parked = |at: usize| lowest.checked_sub(1 + at as i64).ok_or_else(|| StorageError::new(format!("no free rowid left in {table:?}")));
        let mut update = connection.prepare_cached(&set)?;
        for (at, (key, _)) in moves.iter().enumerate() {
            update.execute(rusqlite::params_from_iter(std::iter::once(Value::Integer(parked(at)?)).chain(key.iter().cloned())))?;
        }
        for (at, (_, rowid)) in moves.iter().enumerate() {
            let parked_key = [Value::Integer(parked(at)?)];
            connection.execute(
                &format!("UPDATE {name} SET _rowid_ = ?1 WHERE _rowid_ = ?2"),
                rusqlite::params_from_iter([Value::Integer(*rowid)].iter().chain(parked_key.iter())),
            )?;
        }
    }
    Ok(())
}

/// A table written as row images whose rows are named by a declared key beside the rowid.
struct KeyedTable {
    name: String,
    key: Vec<String>,
    sets_rowid: bool,
}

/// `_tern_meta` key: the index of a logged `VACUUM` that has not finished on this node.
const VACUUM_PENDING: &str = "vacuum_pending";

/// The payload of a logged `VACUUM`, compared byte for byte to spot one without decoding.
fn vacuum_payload() -> Vec<u8> {
    Payload { changes: vec![Change::Vacuum] }.encode()
}

fn record_position(connection: &Connection, position: Position) -> Result<()> {
    connection.execute_batch("CREATE TABLE IF NOT EXISTS _tern_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")?;
    write_meta(connection, "applied_index", position.index)?;
    write_meta(connection, "applied_epoch", position.epoch)?;
    Ok(())
}

/// Keywords that begin statements whose effect is rows (recorded by the session
/// extension in the row format); anything else is shipped as SQL.
/// A bound text parameter that makes a date and time function read the clock or time zone.
fn parameters_read_the_clock(params: &Params) -> bool {
    let reads = |value: &SqlValue| matches!(value, SqlValue::Text(text) if reads_the_clock(text));
    match params {
        Params::None => false,
        Params::Positional(values) => values.iter().any(reads),
        Params::Named(pairs) => pairs.iter().any(|(_, value)| reads(value)),
    }
}

fn changes_rows(sql: &str) -> bool {
    matches!(first_keyword(sql).as_str(), "INSERT" | "UPDATE" | "DELETE" | "REPLACE" | "WITH" | "SELECT" | "VALUES")
}

fn bind(statement: &mut rusqlite::Statement<'_>, params: &Params) -> rusqlite::Result<()> {
    match params {
        Params::None => {}
        Params::Positional(values) => {
            for (position, value) in values.iter().enumerate() {
                statement.raw_bind_parameter(position + 1, Value::from(value))?;
            }
        }
        Params::Named(values) => {
            for (name, value) in values {
                let index = [":", "@", "$", ""]
                    .iter()
                    .find_map(|prefix| statement.parameter_index(&format!("{prefix}{name}")).ok().flatten())
                    .ok_or_else(|| rusqlite::Error::InvalidParameterName(name.clone()))?;
                statement.raw_bind_parameter(index, Value::from(value))?;
            }
        }
    }
    Ok(())
}

/// Starts a write transaction that rolls back when dropped unless committed: an error
/// path that returns early can never leave `BEGIN` open and wedge every later write.
fn begin_immediate(connection: &Connection) -> rusqlite::Result<Transaction<'_>> {
    Transaction::new_unchecked(connection, TransactionBehavior::Immediate)
}

/// Roughly what a value costs in a JSON result, for the result size limit.
fn result_bytes(value: &Value) -> usize {
    match value {
        Value::Null | Value::Integer(_) | Value::Real(_) => 8,
        Value::Text(text) => text.len() + 2,
        Value::Blob(bytes) => bytes.len() * 4 / 3 + 4,
    }
}

/// Runs one client statement under `policy` (its authorizer, deadline and result limit)
/// and reports it the way rqlite does.
fn run_client_statement(connection: &Connection, policy: &ClientPolicy, sql: &str, params: &Params) -> StatementResult {
    run_statement_with(connection, Some(policy), sql, params)
}

/// Runs one statement and reports it the way rqlite does. Statements that return rows
/// produce a query result; others report rows affected and the last rowid.
pub fn run_statement(connection: &Connection, sql: &str, params: &Params) -> StatementResult {
    run_statement_with(connection, None, sql, params)
}

fn run_statement_with(connection: &Connection, policy: Option<&ClientPolicy>, sql: &str, params: &Params) -> StatementResult {
    let max_bytes = policy.map_or(usize::MAX, |policy| policy.limits().max_result_bytes);
    let mut too_large = false;
    let outcome = (|| -> rusqlite::Result<StatementResult> {
        let mut statement = connection.prepare_cached(sql)?;
        bind(&mut statement, params)?;
        if statement.column_count() > 0 {
            let columns: Vec<String> = statement.column_names().map(|name| name.to_string()).collect();
            let types: Vec<String> = statement.columns().map(|column| column.decl_type().map(str::to_ascii_lowercase).unwrap_or_default()).collect();
            let count = columns.len();
            let mut values = Vec::new();
            let mut bytes = 0usize;
            let mut rows = statement.raw_query();
            while let Some(row) = rows.next()? {
                let mut line = Vec::with_capacity(count);
                for index in 0..count {
                    let value = row.get::<_, Value>(index)?;
                    bytes = bytes.saturating_add(result_bytes(&value));
                    line.push(SqlValue::from(value));
                }
                values.push(line);
                if bytes > max_bytes {
                    too_large = true;
                    return Ok(StatementResult::default());
                }
            }
            Ok(StatementResult { is_query: true, columns, types, values, ..StatementResult::default() })
        } else {
            statement.raw_execute()?;
            Ok(StatementResult { last_insert_id: connection.last_insert_rowid(), rows_affected: connection.changes() as i64, ..StatementResult::default() })
        }
    })();
    if too_large {
        return StatementResult::error(format!(
            "the result is larger than {max_bytes} bytes (--max-result-bytes): select fewer rows or columns, e.g. with LIMIT and OFFSET"
        ));
    }
    outcome.unwrap_or_else(|error| StatementResult::error(policy.map_or_else(|| describe(&error), |policy| policy.explain(&error))))
}

const PARAMETERS_NEED_ONE_STATEMENT: &str = "a statement string with parameters must hold one statement: send each as its own [sql, params...] item";

/// The statements of `sql` in order, each with its closing `;`, as SQLite's parser sees
/// them: a candidate end is every `;` outside strings and comments, and it ends a
/// statement unless SQLite says the text so far is incomplete (inside a trigger body,
/// say). Prepare with the client rules in force: a refused statement still ends there.
/// One item, the text unchanged, when it holds one statement (or none).
pub fn split_statements(connection: &Connection, sql: &str) -> Vec<String> {
    let tokens = tokenize(sql);
    let semicolons: Vec<usize> =
        tokens.iter().filter(|token| token.kind == TokenKind::Other && &sql[token.start..token.end] == ";").map(|token| token.end).collect();
    if semicolons.is_empty() {
        return vec![sql.to_owned()];
    }
    let mut pieces = Vec::new();
    let mut start = 0;
    for end in semicolons {
        let piece = &sql[start..end];
        let significant = tokenize(piece).iter().any(|token| token.kind != TokenKind::Space && &piece[token.start..token.end] != ";");
        if !significant {
            start = end;
            continue;
        }
        let incomplete = matches!(connection.prepare(piece), Err(rusqlite::Error::SqliteFailure(_, Some(message))) if message.contains("incomplete input"));
        if !incomplete {
            pieces.push(piece.to_owned());
            start = end;
        }
    }
    let rest = &sql[start..];
    if tokenize(rest).iter().any(|token| token.kind != TokenKind::Space) {
        pieces.push(rest.to_owned());
    }
    if pieces.len() <= 1 {
        return vec![sql.to_owned()];
    }
    pieces
}

fn is_read_only(connection: &Connection, sql: &str) -> bool {
    connection.prepare_cached(sql).map(|statement| statement.readonly()).unwrap_or(false)
}

impl Engine {
    /// Opens (or creates) the database in `directory` and recovers the log position.
    ///
    /// # Errors
    /// If the directory or database cannot be created or read.
    pub fn open(directory: &Path, format: LogFormat) -> Result<Engine> {
        std::fs::create_dir_all(directory)?;
        let mut connection = Connection::open(directory.join(DATABASE_FILE))?;
        let policy = ClientPolicy::install(&mut connection, true, Limits::default())?;
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

    fn log(&self) -> &Connection {
        self.separate_log.as_ref().unwrap_or(&self.connection)
    }

    fn load_position(&mut self) -> Result<()> {
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

    /// Logical formats: commits `entry` (a `VACUUM`) to the log together with a marker
    /// saying it has not run yet, then runs it. The marker makes the pair crash-safe:
    /// `VACUUM` cannot share a transaction with the log row, so a crash after the log
    /// commit leaves the marker, and the next open runs the VACUUM again (running it
    /// twice gives the same rows and rowids as once). Logging first means no replica can
    /// ever hold a renumbered table without the entry that every other replica follows.
    fn log_and_run_vacuum(&mut self, entry: &Entry) -> Result<()> {
        let transaction = begin_immediate(&self.connection)?;
        append_log(&transaction, entry)?;
        write_meta(&transaction, VACUUM_PENDING, entry.index)?;
        transaction.commit()?;
        self.last = entry.position();
        self.vacuum_pending = true;
        crate::failpoint::hit("vacuum-logged-before-run")?;
        self.finish_logged_vacuum()
    }

    /// Runs a logged `VACUUM` that has not finished here, if any. Everything that changes
    /// the database calls this first, so no later change can see the old rowids.
    fn finish_logged_vacuum(&mut self) -> Result<()> {
        if !self.vacuum_pending {
            return Ok(());
        }
        self.connection.execute_batch("VACUUM")?;
        self.connection.execute("DELETE FROM _tern_meta WHERE key = ?1", [VACUUM_PENDING])?;
        self.vacuum_pending = false;
        Ok(())
    }

    fn reset_log_after(&mut self, index: u64) -> Result<()> {
        let transaction = begin_immediate(self.log())?;
        transaction.execute("DELETE FROM _tern_log", [])?;
        write_meta(&transaction, "first_index", index + 1)?;
        transaction.commit()?;
        self.first_index = index + 1;
        Ok(())
    }

    /// Copies the WAL into the database file and truncates it (physical format: only
    /// called once every committed frame is durable in the log).
    ///
    /// # Errors
    /// On a SQLite failure.
    pub fn checkpoint(&mut self) -> Result<()> {
        self.connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        self.commits_since_checkpoint = 0;
        Ok(())
    }

    /// The periodic checkpoint: like `checkpoint`, but it never waits for readers (a
    /// snapshot being copied, a long query). If one holds the WAL, SQLite copies what it
    /// can and the WAL is truncated at a later try; the writer is not held up.
    fn checkpoint_if_free(&mut self) -> Result<()> {
        self.connection.busy_timeout(std::time::Duration::ZERO)?;
        let outcome = self.connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        self.connection.busy_timeout(std::time::Duration::from_secs(10))?;
        match outcome {
            Ok(()) => {}
            Err(error) if error.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => {}
            Err(error) => return Err(error.into()),
        }
        self.commits_since_checkpoint = 0;
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

    /// Leader: executes `requests` in one durable transaction (group commit), each in its
    /// own savepoint, and appends one log entry holding the changes of the whole batch.
    ///
    /// # Errors
    /// If the transaction cannot commit; then nothing of the batch happened.
    pub fn execute_batch(&mut self, epoch: u64, requests: &[WriteRequest]) -> Result<Batch> {
        match self.execute_batch_while(epoch, requests, &|| true)? {
            Executed::Committed(batch) => Ok(batch),
            Executed::StoppedLeading => unreachable!("the condition is always true"),
        }
    }

    /// `execute_batch`, committing only if `still_leading()` holds just before the commit:
    /// a leader whose lease ran out while the batch executed must not extend its log.
    ///
    /// # Errors
    /// If the transaction cannot commit; then nothing of the batch happened.
    pub fn execute_batch_while(&mut self, epoch: u64, requests: &[WriteRequest], still_leading: &dyn Fn() -> bool) -> Result<Executed> {
        self.finish_logged_vacuum()?;
        if let [request] = requests {
            if is_maintenance(request) {
                return self.execute_maintenance(epoch, request).map(Executed::Committed);
            }
        }
        if requests.iter().any(is_maintenance) {
            return Err(StorageError::new("VACUUM must be executed alone, not in a group commit"));
        }
        let mut batch = {
            let transaction = begin_immediate(&self.connection)?;
            if self.format == LogFormat::Physical {
                crate::session::pages_written(&self.connection, true);
            }
            let batch = self.execute_in_transaction(epoch, requests).map_err(|error| self.explain_batch_failure(error))?;
            if self.format == LogFormat::Physical {
                self.check_physical_entry_size()?;
            }
            if !still_leading() {
                return Ok(Executed::StoppedLeading);
            }
            transaction.commit()?;
            batch
        };
        if self.format == LogFormat::Physical && batch.changed.iter().any(|changed| *changed) {
            forget_cached_pages(&self.connection)?;
            batch.entry = Some(self.log_committed_pages(epoch)?);
        }
        if let Some(entry) = &batch.entry {
            self.last = entry.position();
        }
        Ok(Executed::Committed(batch))
    }

    /// The tables `sql` inserts into or updates (directly or through triggers) whose
    /// rows a changeset names by a declared key beside the rowid, with whether it sets
    /// rowids there; see `rowid_change_refusal` and `null_key_refusal`.
    fn keyed_tables_written(&self, sql: &str) -> Vec<KeyedTable> {
        let Some(touched) = self.policy.touched(&self.connection, sql) else { return Vec::new() };
        let mut tables: Vec<KeyedTable> = Vec::new();
        for table in touched.inserts_into.iter().chain(&touched.updates) {
            if tables.iter().any(|known| known.name == *table) {
                continue;
            }
            if let Ok(Some(key)) = keys_beside_rowid(&self.connection, table) {
                tables.push(KeyedTable { name: table.clone(), key, sets_rowid: touched.sets_rowid_of.contains(table) });
            }
        }
        tables
    }

    /// Row images address the rows of a table with a declared key (beside its rowid) by
    /// that key, so a change of such a row's rowid alone is not in them: refused, with the
    /// reason, rather than lost.
    fn rowid_change_refusal(tables: &[KeyedTable]) -> Option<String> {
        let table = tables.iter().find(|table| table.sets_rowid)?;
        Some(format!(
            "setting the rowid of a row of {:?} is refused: this write is replicated as row images, which name its rows by their \
             PRIMARY KEY and do not carry the rowid (give the table an INTEGER PRIMARY KEY, or use the statement or physical log format)",
            table.name
        ))
    }

    /// SQLite's session extension leaves out rows with a NULL in a primary-key column (a
    /// rowid table allows them), so row images would silently lose them: a write that
    /// leaves such a row is refused instead.
    fn null_key_refusal(&self, tables: &[KeyedTable]) -> Result<Option<String>> {
        for table in tables {
            let any_null: Vec<String> = table.key.iter().map(|column| format!("{} IS NULL", quote_identifier(column))).collect();
            let sql = format!("SELECT EXISTS (SELECT 1 FROM {} WHERE {})", quote_identifier(&table.name), any_null.join(" OR "));
            let found: bool = self.connection.prepare_cached(&sql)?.query_row([], |row| row.get(0))?;
            if found {
                return Ok(Some(format!(
                    "a row of {:?} would have NULL in its PRIMARY KEY ({}), which row images cannot carry, so replicas would lose it: \
                     give the key a value (or declare its columns NOT NULL)",
                    table.name,
                    table.key.join(", ")
                )));
            }
        }
        Ok(None)
    }

    /// Once a table's largest rowid is taken (i64::MAX), SQLite picks the rowid of a new
    /// row at random: an INSERT shipped as text would store other rowids on followers.
    /// False for tables without rowids and for views.
    fn picks_random_rowids(&self, table: &str) -> bool {
        let sql = format!("SELECT max(rowid) = 9223372036854775807 FROM \"{}\"", table.replace('"', "\"\""));
        let taken = self.connection.prepare_cached(&sql).and_then(|mut statement| statement.query_row([], |row| row.get::<_, Option<bool>>(0)));
        matches!(taken, Ok(Some(true)))
    }

    /// Physical format, before commit: the entry will hold every page the transaction
    /// changed, and one too large for a peer frame could never be shipped. The pages
    /// spilled to the WAL so far, plus a full page cache of dirty pages, bound it; over the
    /// limit, the transaction is rolled back (by its guard) with the reason.
    fn check_physical_entry_size(&self) -> Result<()> {
        let page_size: i64 = self.connection.query_row("PRAGMA page_size", [], |row| row.get(0))?;
        let cache: i64 = self.connection.query_row("PRAGMA cache_size", [], |row| row.get(0))?;
        // A negative cache size is in KiB, a positive one in pages.
        let cache_bytes = if cache < 0 { cache.unsigned_abs() * 1024 } else { cache as u64 * page_size as u64 };
        let spilled = crate::session::pages_written(&self.connection, false) * page_size as u64;
        if spilled + cache_bytes > self.max_entry_bytes as u64 {
            return Err(StorageError::with_kind(
                StorageErrorKind::EntryTooLarge,
                format!(
                    "this write changes more than {} bytes of pages, over the {}-byte limit of one physical log entry: nothing was applied; \
                 split it into smaller writes",
                    spilled, self.max_entry_bytes
                ),
            ));
        }
        Ok(())
    }

    /// A client write interrupted by its deadline makes SQLite roll back the whole
    /// transaction, so the batch it shared fails as a whole: say so, so clients retry.
    fn explain_batch_failure(&self, error: StorageError) -> StorageError {
        if self.policy.interrupted() {
            StorageError::with_kind(
                StorageErrorKind::StatementTimedOut,
                format!(
                    "a statement in this group commit ran longer than {} ms (--query-timeout-ms) and was stopped; \
                 nothing in the group was applied: retry ({error})",
                    self.policy.limits().statement_timeout.as_millis()
                ),
            )
        } else {
            error
        }
    }

    /// `VACUUM` (alone in its request): runs outside any transaction. The physical format
    /// ships its page images; the logical formats log it as a `Change::Vacuum` that every
    /// replica runs itself (see `log_and_run_vacuum`).
    fn execute_maintenance(&mut self, epoch: u64, request: &WriteRequest) -> Result<Batch> {
        let refused = |error: String| Ok(Batch { results: vec![vec![StatementResult::error(error)]], changed: vec![false], entry: None });
        let statement = match request.statements.as_slice() {
            [statement] => statement,
            _ => return refused(request_shape_error(request).unwrap_or_else(|| "VACUUM must be sent alone in its request".to_owned())),
        };
        if let Some(refusal) = guard::vacuum_into_refusal(&statement.sql) {
            return refused(refusal);
        }
        // Whatever SQLite would say of the text itself (an unknown schema name, a syntax
        // error) is the client's answer; nothing is logged then.
        let prepared = {
            let _client = self.policy.scope(&self.connection)?;
            self.connection.prepare(&statement.sql).map(|_| ()).map_err(|error| self.policy.explain(&error))
        };
        if let Err(error) = prepared {
            return refused(error);
        }
        if self.format != LogFormat::Physical {
            let entry = Entry { index: self.last.index + 1, epoch, payload: vacuum_payload() };
            let result = match self.log_and_run_vacuum(&entry) {
                Ok(()) => StatementResult::default(),
                // Logged: it is part of the log now and ships as such; this node runs it
                // again before its next change.
                Err(error) => {
                    StatementResult::error(format!("VACUUM is logged but did not finish on this node ({error}); it runs again before the next write"))
                }
            };
            return Ok(Batch { results: vec![vec![result]], changed: vec![true], entry: Some(entry) });
        }
        // The whole rewritten file becomes one entry: it must fit one peer frame.
        let bytes: i64 = self.connection.query_row("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()", [], |row| row.get(0))?;
        if bytes as usize > self.max_entry_bytes {
            return refused(format!(
                "VACUUM is refused: the physical format ships the rewritten file as one log entry, and this database ({bytes} bytes) \
                 is over the {}-byte limit of one entry",
                self.max_entry_bytes
            ));
        }
        let result = run_statement(&self.connection, &statement.sql, &statement.params);
        if result.error.is_some() {
            return Ok(Batch { results: vec![vec![result]], changed: vec![false], entry: None });
        }
        let next = Position::new(epoch, self.last.index + 1);
        let transaction = begin_immediate(&self.connection)?;
        record_position(&transaction, next)?;
        transaction.commit()?;
        forget_cached_pages(&self.connection)?;
        let entry = self.log_committed_pages(epoch)?;
        self.last = entry.position();
        Ok(Batch { results: vec![vec![result]], changed: vec![true], entry: Some(entry) })
    }

    /// Physical format, leader: reads the transactions just committed from the WAL and
    /// appends them to the log as one entry (durably, before anyone is told about it).
    fn log_committed_pages(&mut self, epoch: u64) -> Result<Entry> {
        let committed = self
            .wal
            .as_mut()
            .expect("physical engines tail their WAL")
            .read_committed()?
            .ok_or_else(|| StorageError::new("a committed transaction is missing from the WAL"))?;
        let change = Change::Pages { page_size: committed.page_size, database_pages: committed.database_pages, pages: committed.pages.into_iter().collect() };
        let entry = Entry { index: self.last.index + 1, epoch, payload: Payload { changes: vec![change] }.encode() };
        let transaction = begin_immediate(self.log())?;
        append_log(&transaction, &entry)?;
        transaction.commit()?;
        self.commits_since_checkpoint += 1;
        if self.commits_since_checkpoint >= CHECKPOINT_EVERY_COMMITS {
            self.checkpoint_if_free()?;
        }
        Ok(entry)
    }

    fn run_cached(&self, sql: &str) -> Result<()> {
        self.connection.prepare_cached(sql)?.execute([])?;
        Ok(())
    }

    fn execute_in_transaction(&self, epoch: u64, requests: &[WriteRequest]) -> Result<Batch> {
        // The row-format session starts lazily, before the first statement that changes rows.
        let mut capture = Capture { session: None, changes: Vec::new() };
        let mut results = Vec::with_capacity(requests.len());
        let mut changed = Vec::with_capacity(requests.len());
        for request in requests {
            // Statement format: any statement may flush rows that a MIXED statement of an
            // earlier request left in the session.
            if self.format == LogFormat::Statement
                || (self.format == LogFormat::Row && request.statements.iter().any(|statement| !changes_rows(&statement.sql)))
            {
                // Close off earlier requests' row images so that rolling this request
                // back can drop exactly its own changes.
                capture.flush_rows()?;
            }
            let mark = capture.changes.len();
            self.run_cached("SAVEPOINT request")?;
            let (request_results, wrote) = self.execute_request(request, &mut capture)?;
            let failed = request_results.iter().any(|result| result.error.is_some());
            if request.transaction && failed {
                self.run_cached("ROLLBACK TO request")?;
                self.run_cached("RELEASE request")?;
                capture.changes.truncate(mark);
                changed.push(false);
            } else {
                self.run_cached("RELEASE request")?;
                changed.push(wrote);
            }
            results.push(request_results);
        }
        capture.flush_rows()?;
        if self.format == LogFormat::Physical {
            // The entry is made from the WAL after commit; the position goes into the
            // transaction itself so the data file always knows where it stands.
            if changed.iter().any(|changed| *changed) {
                record_position(&self.connection, Position::new(epoch, self.last.index + 1))?;
            }
            return Ok(Batch { results, changed, entry: None });
        }
        let entry = if capture.changes.is_empty() {
            None
        } else {
            let entry = Entry { index: self.last.index + 1, epoch, payload: Payload { changes: capture.changes }.encode() };
            if entry.payload.len() > self.max_entry_bytes {
                // Nothing could ship it to a follower: refuse it before it is committed.
                return Err(StorageError::with_kind(
                    StorageErrorKind::EntryTooLarge,
                    format!(
                        "the changes of this write take {} bytes, over the {}-byte limit of one log entry: split it into smaller writes",
                        entry.payload.len(),
                        self.max_entry_bytes
                    ),
                ));
            }
            append_log(&self.connection, &entry)?;
            Some(entry)
        };
        Ok(Batch { results, changed, entry })
    }

    /// Executes one request's statements, returning per-statement results and whether
    /// any statement that writes succeeded. Client errors are results; only storage
    /// failures are `Err`.
    fn execute_request<'connection>(&'connection self, request: &WriteRequest, capture: &mut Capture<'connection>) -> Result<(Vec<StatementResult>, bool)> {
        let mut results: Vec<StatementResult> = Vec::with_capacity(request.statements.len());
        let mut wrote = false;
        for statement in &request.statements {
            if request.transaction && results.iter().any(|result| result.error.is_some()) {
                break;
            }
            let pieces = {
                let _client = self.policy.scope(&self.connection)?;
                split_statements(&self.connection, &statement.sql)
            };
            let (result, piece_wrote) = match pieces.as_slice() {
                [_] | [] => self.execute_statement(&statement.sql, &statement.params, capture)?,
                _ if statement.params != Params::None => (StatementResult::error(PARAMETERS_NEED_ONE_STATEMENT), false),
                pieces => self.execute_pieces(pieces, capture)?,
            };
            wrote |= piece_wrote;
            results.push(result);
        }
        Ok((results, wrote))
    }

    /// Several statements in one string, run in order as SQLite would: each keeps its
    /// effects, the first that fails stops the rest, and the result is the last one's
    /// with every statement's `rows_affected` added up (or the failing one's error).
    fn execute_pieces<'connection>(&'connection self, pieces: &[String], capture: &mut Capture<'connection>) -> Result<(StatementResult, bool)> {
        let mut wrote = false;
        let mut rows_affected = 0;
        let mut last = StatementResult::default();
        for piece in pieces {
            let (result, piece_wrote) = self.execute_statement(piece, &Params::None, capture)?;
            wrote |= piece_wrote;
            if result.error.is_some() {
                return Ok((result, wrote));
            }
            rows_affected += result.rows_affected;
            last = result;
        }
        if !last.is_query {
            last.rows_affected = rows_affected;
        }
        Ok((last, wrote))
    }

    /// One client statement on the write path: its result, and whether it changed the
    /// database. Client errors are results; only storage failures are `Err`.
    fn execute_statement<'connection>(
        &'connection self,
        original: &str,
        params: &Params,
        capture: &mut Capture<'connection>,
    ) -> Result<(StatementResult, bool)> {
        if let Some(refusal) = guard::refusal(original) {
            return Ok((StatementResult::error(refusal), false));
        }
        // Row format ships schema statements as SQL too; of those only CREATE TABLE ...
        // AS SELECT stores values a replica would compute differently.
        let ships_values_as_sql = match self.format {
            LogFormat::Statement => self.rewrite_statements,
            LogFormat::Row => creates_table_from_select(original),
            LogFormat::Physical => false,
        };
        // Statement format: SQL is shipped only when it is deterministic once rewritten;
        // a data change that still calls a function whose value depends on when or where
        // it runs (through a view or trigger, per row, or with a computed time argument) is
        // shipped as its row images instead, as MySQL's MIXED format does.
        let mut needs_rows = false;
        let sql = if ships_values_as_sql {
            let called = self.policy.touched(&self.connection, original).map(|touched| touched.functions);
            // The client's text is evaluated in parts here, so under the client rules.
            let _client = self.policy.scope(&self.connection)?;
            match make_deterministic_calling(&self.connection, original, parameters_read_the_clock(params), called.as_deref()) {
                Ok(Some(rewritten)) => rewritten,
                Ok(None) => original.to_owned(),
                Err(_) if self.format == LogFormat::Statement && changes_rows(original) => {
                    needs_rows = true;
                    original.to_owned()
                }
                Err(refusal) => return Ok((StatementResult::error(refusal.to_string()), false)),
            }
        } else {
            original.to_owned()
        };
        if self.format == LogFormat::Statement && self.rewrite_statements && !needs_rows && changes_rows(&sql) {
            let remaining = self.policy.touched(&self.connection, &sql).unwrap_or_default();
            needs_rows = remaining.functions.iter().any(|function| is_nondeterministic_function(function))
                || remaining.inserts_into.iter().any(|table| self.picks_random_rowids(table));
        }
        // Client rules (authorizer, defensive mode, deadline) hold only while the
        // client's statement is prepared and run: tern's own statements on this
        // connection, re-prepared after a schema change, must never be refused.
        let read_only = {
            let _client = self.policy.scope(&self.connection)?;
            is_read_only(&self.connection, &sql)
        };
        if read_only {
            let _client = self.policy.scope(&self.connection)?;
            return Ok((run_client_statement(&self.connection, &self.policy, &sql, params), false));
        }
        let ships_as_sql = match self.format {
            LogFormat::Statement => !needs_rows,
            LogFormat::Row => !changes_rows(&sql),
            LogFormat::Physical => false,
        };
        let ships_rows = !ships_as_sql && self.format != LogFormat::Physical;
        // Tables whose rows the images would name by a declared key.
        let keyed_tables = if ships_rows { self.keyed_tables_written(&sql) } else { Vec::new() };
        if let Some(refusal) = Self::rowid_change_refusal(&keyed_tables) {
            return Ok((StatementResult::error(refusal), false));
        }
        if ships_as_sql {
            // Row images must not span a schema change: close them off first.
            capture.flush_rows()?;
        } else if self.format != LogFormat::Physical && capture.session.is_none() {
            capture.session = Some(Session::start(&self.connection)?);
        }
        // Each statement gets a savepoint so a failing one leaves no partial effects.
        self.run_cached("SAVEPOINT statement")?;
        let rowid_before = self.connection.last_insert_rowid();
        let mut result = {
            let _client = self.policy.scope(&self.connection)?;
            run_client_statement(&self.connection, &self.policy, &sql, params)
        };
        if result.error.is_none() {
            if let Some(refusal) = self.null_key_refusal(&keyed_tables)? {
                result = StatementResult::error(refusal);
            }
        }
        if result.error.is_some() {
            self.run_cached("ROLLBACK TO statement")?;
            self.run_cached("RELEASE statement")?;
            return Ok((result, false));
        }
        // Read now, before tern's own writes on this connection change them.
        let keyword = first_keyword(&sql);
        let kind = WriteKind {
            inserts: matches!(keyword.as_str(), "INSERT" | "REPLACE"),
            changes_rows: matches!(keyword.as_str(), "INSERT" | "UPDATE" | "DELETE" | "REPLACE" | "WITH"),
        };
        let counters = self.client.record_write(&self.connection, rowid_before, &kind);
        result.last_insert_id = counters.last_insert_rowid;
        result.rows_affected = counters.changes;
        self.run_cached("RELEASE statement")?;
        if ships_as_sql {
            capture.changes.push(Change::Sql { sql, params: params.clone() });
        }
        Ok((result, true))
    }

    /// Follower: applies entries and appends them to the log in one durable transaction.
    ///
    /// # Errors
    /// If an entry does not continue the log, cannot be decoded or does not apply (the
    /// replicas diverged); nothing of the batch is applied then.
    pub fn apply(&mut self, entries: &[Entry]) -> Result<Position> {
        // Entries this node already holds (a snapshot installed meanwhile covered them)
        // are skipped: within one epoch the leader's entry at an index is the only one.
        let held = entries.iter().take_while(|entry| entry.index <= self.last.index).count();
        if let Some(last_held) = entries[..held].last() {
            // Held means the same entry: another epoch's entry at that index is a
            // divergence (this node wrote it as an old leader), never to be skipped.
            if let Some(epoch) = self.logged_epoch(last_held.index)? {
                if epoch != last_held.epoch {
                    return Err(StorageError::new(format!("entry {} conflicts with the local entry of epoch {epoch} at that index", last_held.position())));
                }
            }
        }
        let entries = &entries[held..];
        self.finish_logged_vacuum()?;
        let vacuum = vacuum_payload();
        if let Some(at) = entries.iter().position(|entry| entry.payload == vacuum) {
            // A VACUUM runs outside any transaction: apply what comes before it, then it
            // alone (logged first, as on the leader), then the rest.
            let (before, rest) = entries.split_at(at);
            self.apply(before)?;
            if rest[0].index != self.last.index + 1 {
                return Err(StorageError::new(format!("entry {} does not continue the log at {}", rest[0].index, self.last.index)));
            }
            self.log_and_run_vacuum(&rest[0])?;
            return self.apply(&rest[1..]);
        }
        if self.format == LogFormat::Physical && entries.len() > 1 {
            // One commit per leader commit: SQLite moves page 1's change counter once per
            // commit, so merging the leader's transactions would leave the follower's
            // counter behind and the files no longer byte-identical.
            for entry in entries {
                self.apply(std::slice::from_ref(entry))?;
            }
            return Ok(self.last);
        }
        let Some(last_entry) = entries.last() else { return Ok(self.last) };
        let transaction = begin_immediate(&self.connection)?;
        // Any early return drops `transaction`, which rolls the whole batch back.
        for (expected, entry) in (self.last.index + 1..).zip(entries) {
            if entry.index != expected {
                return Err(StorageError::new(format!("entry {} does not continue the log at {}", entry.index, expected - 1)));
            }
            self.apply_payload(&Payload::decode(&entry.payload)?)?;
            if self.separate_log.is_none() {
                append_log(&self.connection, entry)?;
            }
        }
        transaction.commit()?;
        self.last = last_entry.position();
        if self.format == LogFormat::Physical {
            forget_cached_pages(&self.connection)?;
        }
        if let Some(log) = &self.separate_log {
            // Physical: the data file already records its position; a crash before
            // this commit only shortens the log (load_position then resets it).
            crate::failpoint::hit("physical-apply-between-data-and-log")?;
            let transaction = begin_immediate(log)?;
            for entry in entries {
                append_log(&transaction, entry)?;
            }
            transaction.commit()?;
            self.commits_since_checkpoint += 1;
            if self.commits_since_checkpoint >= CHECKPOINT_EVERY_COMMITS {
                self.checkpoint_if_free()?;
            }
        }
        Ok(self.last)
    }

    fn apply_payload(&self, payload: &Payload) -> Result<()> {
        for change in &payload.changes {
            match change {
                Change::Sql { sql, params } => {
                    let result = run_statement(&self.connection, sql, params);
                    if let Some(error) = result.error {
                        return Err(StorageError::new(format!("replicated statement failed on this replica ({error}): {sql}")));
                    }
                }
                Change::Pages { page_size, database_pages, pages } => {
                    if self.format != LogFormat::Physical {
                        return Err(StorageError::new("a physical entry reached a node running a logical log format"));
                    }
                    let local_page_size: u32 = self.connection.query_row("PRAGMA page_size", [], |row| row.get(0))?;
                    if local_page_size != *page_size {
                        return Err(StorageError::new(format!("page size {page_size} from the leader, {local_page_size} here")));
                    }
                    let count: u32 = self.connection.query_row("PRAGMA page_count", [], |row| row.get(0))?;
                    let mut write = self.connection.prepare_cached("INSERT INTO sqlite_dbpage (pgno, data) VALUES (?1, ?2)")?;
                    // Page 1 (the schema and its cookie) goes last: a statement that starts
                    // after a new schema is in place but before the pages it names are would
                    // reload it and find root pages that do not exist yet.
                    for (page, image) in pages.iter().filter(|(page, _)| *page != 1) {
                        write.execute(params![page, image])?;
                    }
                    if let Some((_, image)) = pages.iter().find(|(page, _)| *page == 1) {
                        write.execute(params![1, image])?;
                    }
                    if count > *database_pages {
                        // Inserting NULL at page N truncates the file to N-1 pages (VACUUM
                        // shrank it). It must come after every page write of the transaction.
                        write.execute(params![database_pages + 1, rusqlite::types::Null])?;
                    }
                }
                Change::Rowids(tables) => {
                    self.connection.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false)?;
                    let set = set_rowids(&self.connection, tables);
                    self.connection.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, true)?;
                    set?;
                }
                Change::Vacuum => {
                    return Err(StorageError::new("a VACUUM entry must be applied alone, outside any transaction"));
                }
                Change::Rows(changeset) => {
                    // The leader's triggers already ran and their effects are in the changeset.
                    self.connection.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false)?;
                    let applied = apply_changeset(&self.connection, changeset);
                    self.connection.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, true)?;
                    applied?;
                }
            }
        }
        Ok(())
    }

    /// Reads up to `max_entries` / about `max_bytes` of entries from `from_index`.
    /// `None` if `from_index` was compacted away (the reader needs a snapshot).
    ///
    /// # Errors
    /// On a SQLite failure.
    pub fn read_log(&self, from_index: u64, max_entries: usize, max_bytes: usize) -> Result<Option<Vec<Entry>>> {
        if from_index < self.first_index {
            return Ok(None);
        }
        let mut statement = self.log().prepare_cached("SELECT idx, epoch, payload FROM _tern_log WHERE idx >= ?1 ORDER BY idx LIMIT ?2")?;
        let mut rows = statement.query(params![from_index as i64, max_entries as i64])?;
        let mut entries = Vec::new();
        let mut bytes = 0;
        while let Some(row) = rows.next()? {
            let entry = Entry { index: row.get::<_, i64>(0)? as u64, epoch: row.get::<_, i64>(1)? as u64, payload: row.get(2)? };
            bytes += entry.payload.len();
            entries.push(entry);
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(Some(entries))
    }

    /// Drops log entries so that only the newest `retain` remain. Followers that need
    /// older ones get a snapshot instead.
    ///
    /// # Errors
    /// On a SQLite failure.
    pub fn compact(&mut self, retain: u64) -> Result<()> {
        let first_kept = self.last.index.saturating_sub(retain.max(1)) + 1;
        if first_kept <= self.first_index {
            return Ok(());
        }
        let transaction = begin_immediate(self.log())?;
        transaction.execute("DELETE FROM _tern_log WHERE idx < ?1", [first_kept as i64])?;
        write_meta(&transaction, "first_index", first_kept)?;
        transaction.commit()?;
        self.first_index = first_kept;
        Ok(())
    }

    pub fn first_index(&self) -> u64 {
        self.first_index
    }

    fn logged_epoch(&self, index: u64) -> Result<Option<u64>> {
        let epoch: Option<i64> =
            self.log().prepare_cached("SELECT epoch FROM _tern_log WHERE idx = ?1")?.query_row([index as i64], |row| row.get(0)).optional()?;
        Ok(epoch.map(|epoch| epoch as u64))
    }

    /// Where each epoch starts in the retained log, `(epoch, first index)`, ascending.
    ///
    /// # Errors
    /// On a SQLite failure.
    pub fn epoch_starts(&self) -> Result<Vec<(u64, u64)>> {
        let mut statement = self.log().prepare("SELECT epoch, MIN(idx) FROM _tern_log GROUP BY epoch ORDER BY MIN(idx)")?;
        let starts = statement.query_map([], |row| Ok((row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64)))?;
        Ok(starts.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Keeps the log entries after `index` in the rollback store, then installs `snapshot`
    /// in place of the database (whose log it replaces); returns how many entries were
    /// rolled back and the snapshot's position.
    ///
    /// Crash-atomic: until the snapshot's rename, the database is untouched (its diverged
    /// entries and their effects together), so a crash at any step restarts the node in a
    /// state it had, and the store keeps each entry once however often this is retried.
    ///
    /// # Errors
    /// On a SQLite or file system failure; the database is then as it was.
    pub fn roll_back_and_install(&mut self, index: u64, snapshot: &Path) -> Result<(u64, Position)> {
        let rolled_back = self.keep_entries_after(index)?;
        crate::failpoint::hit("rollback-kept-before-install")?;
        let position = self.install_snapshot(snapshot, true)?;
        Ok((rolled_back, position))
    }

    /// Copies the log entries after `index` into the rollback store (`rollback.db` beside
    /// the database), durably, and returns how many there are.
    fn keep_entries_after(&mut self, index: u64) -> Result<u64> {
        let mut entries = Vec::new();
        {
            let mut statement = self.log().prepare("SELECT idx, epoch, payload FROM _tern_log WHERE idx > ?1 ORDER BY idx")?;
            let mut rows = statement.query([index as i64])?;
            while let Some(row) = rows.next()? {
                entries.push(Entry { index: row.get::<_, i64>(0)? as u64, epoch: row.get::<_, i64>(1)? as u64, payload: row.get(2)? });
            }
        }
        let store = RollbackStore::open(&self.directory)?;
        store.keep(&entries, self.format)?;
        Ok(entries.len() as u64)
    }

    /// Writes a consistent copy of the whole database (data, log and position) to `target`
    /// and returns the position it holds.
    ///
    /// # Errors
    /// On a SQLite or file system failure.
    pub fn write_snapshot(&self, target: &Path) -> Result<Position> {
        write_snapshot_of(self.format, &self.database_path(), target)
    }

    /// Physical format: a hash of every page of the database (FNV-1a), in page order.
    ///
    /// # Errors
    /// On a SQLite failure.
    pub fn page_hashes(&self) -> Result<Vec<u64>> {
        page_hashes(&self.connection)
    }

    /// Replaces this node's database with a snapshot file received from the leader.
    ///
    /// # Errors
    /// If the file is not a tern database or cannot be moved into place.
    /// `after_rollback`: this node's log diverged and its entries beyond the common
    /// prefix went to the rollback store; the snapshot is installed even if it is not
    /// ahead, since the local data holds effects of entries no replica keeps.
    pub fn install_snapshot(&mut self, snapshot: &Path, after_rollback: bool) -> Result<Position> {
        {
            let check = Connection::open_with_flags(snapshot, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
            let position = database_position(&check)?;
            if position == Position::ZERO {
                return Err(StorageError::new("snapshot holds no tern log position"));
            }
            if position.index <= self.last.index && !after_rollback {
                // Entries applied since the snapshot was requested already took this node
                // past it; installing would move the node backwards and undo writes it
                // has acknowledged.
                drop(check);
                let _ = std::fs::remove_file(snapshot);
                return Ok(self.last);
            }
        }
        let database = self.database_path();
        // Fold the WAL into the file first: the WAL is deleted below, and a crash between
        // that and the rename must leave the old database whole (its acknowledged writes
        // included), not the file without its newest commits.
        self.connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        // Close our connection before the file is replaced under it.
        let placeholder = Connection::open_in_memory()?;
        let old = std::mem::replace(&mut self.connection, placeholder);
        old.close().map_err(|(_, error)| StorageError::from(error))?;
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", database.display()));
        }
        crate::failpoint::hit("snapshot-install-before-rename")?;
        std::fs::rename(snapshot, &database)?;
        if let Ok(directory) = std::fs::File::open(&self.directory) {
            let _ = directory.sync_all();
        }
        self.connection = Connection::open(&database)?;
        self.policy = ClientPolicy::install(&mut self.connection, true, self.policy.limits())?;
        self.client = ClientCounters::install(&self.connection)?;
        if self.format == LogFormat::Physical {
            configure_physical_data(&self.connection)?;
            if let Some(wal) = &mut self.wal {
                wal.reset();
            }
            let position = database_position(&self.connection)?;
            crate::failpoint::hit("snapshot-install-before-log-reset")?;
            self.reset_log_after(position.index)?;
        } else {
            configure_writer(&self.connection)?;
            self.connection.set_prepared_statement_cache_capacity(256);
        }
        self.load_position()?;
        Ok(self.last)
    }

    /// Per-table checksums of user tables, for comparing replicas in tests and tooling.
    ///
    /// # Errors
    /// On a SQLite failure.
    pub fn table_checksums(&self) -> Result<Vec<(String, u64, u64)>> {
        if self.format == LogFormat::Physical {
            // The applying connection does not notice schema changes that arrive as pages.
            let fresh = Connection::open_with_flags(self.database_path(), OpenFlags::SQLITE_OPEN_READ_ONLY)?;
            return table_checksums(&fresh);
        }
        table_checksums(&self.connection)
    }
}

/// A consistent copy of the database at `database`, made on a connection of its own so
/// the writer goes on committing meanwhile; returns the position the copy holds. Safe to
/// call from any thread.
///
/// # Errors
/// On a SQLite or file system failure.
pub fn write_snapshot_of(format: LogFormat, database: &Path, target: &Path) -> Result<Position> {
    if format == LogFormat::Physical {
        write_physical_snapshot(database, target)
    } else {
        write_logical_snapshot(database, target)
    }
}

/// Physical format: the follower's file must be the leader's, page for page, so the
/// snapshot is the raw pages, read with the position they hold in one read transaction
/// (from the WAL and the file) on a connection of its own.
fn write_physical_snapshot(database: &Path, target: &Path) -> Result<Position> {
    use std::io::Write;
    let _ = std::fs::remove_file(target);
    let source = Connection::open_with_flags(database, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    source.busy_timeout(std::time::Duration::from_secs(10))?;
    let mut file = std::io::BufWriter::new(std::fs::File::create(target)?);
    let read = source.unchecked_transaction()?;
    let position = database_position(&read)?;
    {
        let mut statement = read.prepare("SELECT data FROM sqlite_dbpage ORDER BY pgno")?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            file.write_all(row.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?)?;
        }
    }
    drop(read);
    file.into_inner().map_err(|error| StorageError::new(error.to_string()))?.sync_all()?;
    Ok(position)
}

/// Logical formats: a consistent copy of the database at `database` (data and log) made
/// on a connection of its own, so the writer goes on committing meanwhile; returns the
/// position the copy holds (its newest log row). Safe to call from any thread.
///
/// # Errors
/// On a SQLite or file system failure.
pub fn write_logical_snapshot(database: &Path, target: &Path) -> Result<Position> {
    let _ = std::fs::remove_file(target);
    let source = Connection::open_with_flags(database, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    source.busy_timeout(std::time::Duration::from_secs(10))?;
    source.execute("VACUUM INTO ?1", [target.to_string_lossy()])?;
    drop(source);
    let copy = Connection::open_with_flags(target, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let position = database_position(&copy)?;
    drop(copy);
    std::fs::File::open(target)?.sync_all()?;
    Ok(position)
}

/// FNV-1a of each page of the database, in page order, read in one transaction.
///
/// # Errors
/// On a SQLite failure.
pub fn page_hashes(connection: &Connection) -> Result<Vec<u64>> {
    let mut statement = connection.prepare("SELECT data FROM sqlite_dbpage ORDER BY pgno")?;
    let mut rows = statement.query([])?;
    let mut hashes = Vec::new();
    while let Some(row) = rows.next()? {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in row.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)? {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x100_0000_01b3);
        }
        hashes.push(hash);
    }
    Ok(hashes)
}

/// `(table, rows, checksum)` per user table.
pub type TableChecksums = Vec<(String, u64, u64)>;

/// `(table, rows, checksum)` for every user table, in name order. The checksum is
/// order-independent over rows (FNV-1a of each row's rendered values, summed), and covers
/// each row's rowid too (tables without rowids: their columns only): a client can read
/// and address rows by rowid, so replicas must agree on them.
///
/// # Errors
/// On a SQLite failure.
pub fn table_checksums(connection: &Connection) -> Result<Vec<(String, u64, u64)>> {
    let tables: Vec<String> = connection
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND substr(name, 1, 7) <> 'sqlite_' AND substr(name, 1, 6) <> '_tern_' ORDER BY name")?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut sums = Vec::new();
    for table in tables {
        let quoted = format!("\"{}\"", table.replace('"', "\"\""));
        let mut statement = match connection.prepare(&format!("SELECT _rowid_, * FROM {quoted}")) {
            Ok(statement) => statement,
            // WITHOUT ROWID (or a table whose columns hide every rowid name).
            Err(_) => connection.prepare(&format!("SELECT * FROM {quoted}"))?,
        };
        let columns = statement.column_count();
        let mut rows = statement.query([])?;
        let (mut count, mut sum) = (0u64, 0u64);
        while let Some(row) = rows.next()? {
            let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
            for index in 0..columns {
                let value: Value = row.get(index)?;
                for byte in format!("{value:?}|").bytes() {
                    hash ^= u64::from(byte);
                    hash = hash.wrapping_mul(0x100_0000_01b3);
                }
            }
            count += 1;
            sum = sum.wrapping_add(hash);
        }
        sums.push((table, count, sum));
    }
    Ok(sums)
}

/// A read-only connection for serving queries while the writer works (WAL readers see
/// the last committed state and never block the writer).
pub struct Reader {
    connection: Connection,
    policy: ClientPolicy,
}

impl Reader {
    /// # Errors
    /// If the database cannot be opened.
    pub fn open(directory: &Path) -> Result<Reader> {
        Reader::open_with_limits(directory, Limits::default())
    }

    /// # Errors
    /// If the database cannot be opened.
    pub fn open_with_limits(directory: &Path, limits: Limits) -> Result<Reader> {
        // No SQLITE_OPEN_URI: a client's ATTACH (refused anyway) could otherwise pass
        // `file:` options.
        let mut connection = Connection::open_with_flags(directory.join(DATABASE_FILE), OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        connection.busy_timeout(std::time::Duration::from_secs(10))?;
        let policy = ClientPolicy::install(&mut connection, false, limits)?;
        Ok(Reader { connection, policy })
    }

    /// Does `sql` only read? Statements that fail to prepare (or that the client rules
    /// refuse) count as reads, so their error comes from the read path.
    fn reads_only(&self, sql: &str) -> bool {
        self.read_only_pieces(sql).is_some()
    }

    /// The statements of `sql` (see [`split_statements`]) if every one only reads.
    fn read_only_pieces(&self, sql: &str) -> Option<Vec<String>> {
        let _client = self.policy.scope(&self.connection).ok()?;
        let pieces = split_statements(&self.connection, sql);
        pieces.iter().all(|piece| is_read_only(&self.connection, piece) || self.connection.prepare(piece).is_err()).then_some(pieces)
    }

    /// One statement string on the read path: several statements in it run in order, and
    /// the last one's result (or the first error) is the answer.
    fn query_one(&self, statement: &Statement) -> StatementResult {
        let Some(pieces) = self.read_only_pieces(&statement.sql) else {
            return StatementResult::error("attempt to change the database in a query: send writes to /db/execute or /db/request");
        };
        if pieces.len() > 1 && statement.params != Params::None {
            return StatementResult::error(PARAMETERS_NEED_ONE_STATEMENT);
        }
        let mut last = StatementResult::default();
        for piece in &pieces {
            last = match self.policy.scope(&self.connection) {
                Ok(_client) => run_client_statement(&self.connection, &self.policy, piece, &statement.params),
                Err(error) => StatementResult::error(describe(&error)),
            };
            if last.error.is_some() {
                break;
            }
        }
        last
    }

    /// Runs the statements in one read transaction (one consistent snapshot) and returns
    /// their results with the log index that snapshot contains.
    ///
    /// # Errors
    /// On a SQLite failure outside the statements themselves.
    pub fn query(&self, statements: &[Statement]) -> Result<(Vec<StatementResult>, u64)> {
        self.connection.execute_batch("BEGIN")?;
        let observed = database_position(&self.connection).map(|position| position.index);
        let results = statements.iter().map(|statement| self.query_one(statement)).collect();
        self.connection.execute_batch("COMMIT")?;
        Ok((results, observed?))
    }

    /// # Errors
    /// On a SQLite failure.
    pub fn table_checksums(&self) -> Result<Vec<(String, u64, u64)>> {
        table_checksums(&self.connection)
    }

    /// The position this reader's database holds and the hash of each of its pages, read
    /// in one transaction.
    ///
    /// # Errors
    /// On a SQLite failure.
    pub fn page_hashes(&self) -> Result<(Position, Vec<u64>)> {
        self.connection.execute_batch("BEGIN")?;
        let outcome = database_position(&self.connection).and_then(|position| Ok((position, page_hashes(&self.connection)?)));
        self.connection.execute_batch("COMMIT")?;
        outcome
    }

    /// The position and per-table checksums, read in one transaction.
    ///
    /// # Errors
    /// On a SQLite failure.
    pub fn checksums_at_position(&self) -> Result<(Position, TableChecksums)> {
        self.connection.execute_batch("BEGIN")?;
        let outcome = database_position(&self.connection).and_then(|position| Ok((position, table_checksums(&self.connection)?)));
        self.connection.execute_batch("COMMIT")?;
        outcome
    }
}

/// True if every statement only reads (decided by SQLite's own `sqlite3_stmt_readonly`).
/// Statements that fail to prepare count as reads, so their error comes from the read path.
pub fn all_read_only(reader: &Reader, statements: &[Statement]) -> bool {
    statements.iter().all(|statement| reader.reads_only(&statement.sql))
}

/// Entries a node removed from its log because the leader of a later epoch lacked them:
/// writes an old leader accepted that never reached a majority (under `async`, some were
/// acknowledged). Kept in `rollback.db` for inspection, never silently dropped.
pub struct RollbackStore {
    connection: Connection,
}

/// One rolled-back entry, as `GET /db/rollback` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolledBack {
    pub epoch: u64,
    pub index: u64,
    /// Milliseconds since the Unix epoch when it was rolled back.
    pub rolled_back_at_ms: u64,
    pub format: String,
    /// The statements (statement format) or a summary of the row or page images.
    pub description: String,
    pub payload_bytes: u64,
}

pub const ROLLBACK_FILE: &str = "rollback.db";

impl RollbackStore {
    /// # Errors
    /// If the store cannot be opened or created.
    pub fn open(directory: &Path) -> Result<RollbackStore> {
        let connection = Connection::open(directory.join(ROLLBACK_FILE))?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.execute_batch(
            "CREATE TABLE IF NOT EXISTS rolled_back (
                 id INTEGER PRIMARY KEY, epoch INTEGER NOT NULL, idx INTEGER NOT NULL,
                 rolled_back_at_ms INTEGER NOT NULL, format TEXT NOT NULL,
                 description TEXT NOT NULL, payload BLOB NOT NULL)",
        )?;
        Ok(RollbackStore { connection })
    }

    fn keep(&self, entries: &[Entry], format: LogFormat) -> Result<()> {
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as i64);
        let transaction = begin_immediate(&self.connection)?;
        for entry in entries {
            // Kept once: a crash after this commit but before the snapshot replaced the
            // log makes the node roll the same entries back again after restarting.
            transaction.execute(
                "INSERT INTO rolled_back (epoch, idx, rolled_back_at_ms, format, description, payload)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE NOT EXISTS (SELECT 1 FROM rolled_back WHERE epoch = ?1 AND idx = ?2)",
                params![entry.epoch as i64, entry.index as i64, now_ms, format.name(), describe_entry(&entry.payload), entry.payload],
            )?;
        }
        transaction.commit()?;
        Ok(())
    }

    /// Every rolled-back entry, oldest first.
    ///
    /// # Errors
    /// On a SQLite failure.
    pub fn list(&self) -> Result<Vec<RolledBack>> {
        let mut statement =
            self.connection.prepare("SELECT epoch, idx, rolled_back_at_ms, format, description, length(payload) FROM rolled_back ORDER BY id")?;
        let rows = statement.query_map([], |row| {
            Ok(RolledBack {
                epoch: row.get::<_, i64>(0)? as u64,
                index: row.get::<_, i64>(1)? as u64,
                rolled_back_at_ms: row.get::<_, i64>(2)? as u64,
                format: row.get(3)?,
                description: row.get(4)?,
                payload_bytes: row.get::<_, i64>(5)? as u64,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// # Errors
    /// On a SQLite failure.
    pub fn count(&self) -> Result<u64> {
        Ok(self.connection.query_row("SELECT count(*) FROM rolled_back", [], |row| row.get::<_, i64>(0))? as u64)
    }
}

/// A readable account of a log entry's changes.
fn describe_entry(payload: &[u8]) -> String {
    let Ok(payload) = Payload::decode(payload) else { return "undecodable entry".to_string() };
    let parts: Vec<String> = payload
        .changes
        .iter()
        .map(|change| match change {
            Change::Sql { sql, params } => match params {
                Params::None => sql.clone(),
                params => format!("{sql} -- params {params:?}"),
            },
            Change::Rows(bytes) => format!("row images ({} bytes)", bytes.len()),
            Change::Pages { pages, .. } => format!("{} page images", pages.len()),
            Change::Vacuum => "VACUUM".to_string(),
            Change::Rowids(tables) => format!("rowids of {} rows", tables.iter().map(|(_, rows)| rows.len()).sum::<usize>()),
        })
        .collect();
    parts.join("; ")
}
