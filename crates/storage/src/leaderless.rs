//! A leaderless node's storage (issue 16): each key's versions (`_tern_ll_versions`), the
//! user tables showing each key's visible version, hints kept for other nodes
//! (`_tern_ll_hints`), and the schema statements in the order they were made
//! (`_tern_ll_schema`), all in one SQLite database, each change one durable transaction.
//!
//! Client statements are never replicated as SQL here: a write statement runs once,
//! inside a savepoint that is rolled back, on a replica of its row, and what it did to
//! that one row (SQLite's session extension says) becomes the row's new version, which
//! the protocol stores and ships. Reads are answered from versions too: the rows a read
//! needs, merged from the replicas, are shown in an in-memory database and the client's
//! SELECT runs there.

use crate::capture::row::{changed_rows, RowChange, Session};
use crate::capture::statement::{tokenize, TokenKind};
use crate::engine::{quote_identifier, run_statement_with, StorageError};
use crate::guard::{ClientPolicy, Limits};
use crate::sql::{Params, SqlValue, Statement, StatementResult};
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};
use std::collections::BTreeMap;
use std::path::Path;
use tern_core::leaderless::{visible, write_locally, Context, Dot, Key, KeyVersions, MerkleTree, Stamped};

type Result<T> = std::result::Result<T, StorageError>;

pub const LEADERLESS_FILE: &str = "leaderless.db";

/// A row's columns, by name (a version outlives an `ALTER TABLE`).
pub type RowImage = Vec<(String, SqlValue)>;

/// What a client write statement did, run on this node's copy and rolled back.
#[derive(Clone, Debug, PartialEq)]
pub struct Captured {
    /// The statement's result as the client sees it (rows affected, last rowid).
    pub result: StatementResult,
    /// The one row it changed and that row afterwards (`None`: deleted), if any.
    pub row: Option<(Key, Option<RowImage>)>,
}

/// A table as leaderless writes it: columns and which make the key.
#[derive(Clone, Debug)]
struct Shape {
    columns: Vec<String>,
    key: Vec<usize>,
}

pub struct LeaderlessStore {
    connection: Connection,
    policy: ClientPolicy,
    shapes: BTreeMap<String, Shape>,
    incarnation: u64,
    /// Keys a merge could not keep since last asked, with why (see `take_skipped`).
    skipped: Vec<String>,
}

/// A key's bytes: its key columns' values, in column order.
pub fn encode_key(values: &[SqlValue]) -> Vec<u8> {
    postcard::to_stdvec(values).expect("encoding values to memory cannot fail")
}

/// # Errors
/// If the bytes are not an encoded key (a peer sent garbage).
pub fn decode_key(bytes: &[u8]) -> Result<Vec<SqlValue>> {
    postcard::from_bytes(bytes).map_err(|error| StorageError::new(format!("a row key that does not decode: {error}")))
}

pub fn encode_row(row: &RowImage) -> Vec<u8> {
    postcard::to_stdvec(row).expect("encoding values to memory cannot fail")
}

/// # Errors
/// If the bytes are not an encoded row.
pub fn decode_row(bytes: &[u8]) -> Result<RowImage> {
    postcard::from_bytes(bytes).map_err(|error| StorageError::new(format!("a row version that does not decode: {error}")))
}

fn encode_versions(versions: &KeyVersions) -> Vec<u8> {
    postcard::to_stdvec(versions).expect("encoding versions to memory cannot fail")
}

fn decode_versions(bytes: &[u8]) -> Result<KeyVersions> {
    postcard::from_bytes(bytes).map_err(|error| StorageError::new(format!("stored versions that do not decode: {error}")))
}

/// Tokens kept in SQLite's signed integers in ring order.
fn token_column(token: u64) -> i64 {
    (token ^ (1 << 63)) as i64
}

impl LeaderlessStore {
    /// Opens (or creates) the store in `directory`.
    ///
    /// # Errors
    /// If the database cannot be opened or created.
    pub fn open(directory: &Path, limits: Limits) -> Result<LeaderlessStore> {
        std::fs::create_dir_all(directory)?;
        let mut connection = Connection::open(directory.join(LEADERLESS_FILE))?;
        connection.busy_timeout(std::time::Duration::from_secs(10))?;
        connection.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS _tern_ll_versions (
                 tbl TEXT NOT NULL, key BLOB NOT NULL, token INTEGER NOT NULL, siblings INTEGER NOT NULL, versions BLOB NOT NULL,
                 PRIMARY KEY (tbl, key)) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS _tern_ll_versions_token ON _tern_ll_versions (token);
             CREATE TABLE IF NOT EXISTS _tern_ll_hints (
                 target TEXT NOT NULL, tbl TEXT NOT NULL, key BLOB NOT NULL, versions BLOB NOT NULL,
                 PRIMARY KEY (target, tbl, key)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS _tern_ll_schema (seq INTEGER PRIMARY KEY, origin TEXT NOT NULL UNIQUE, sql TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS _tern_ll_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS _tern_ll_policy (tbl TEXT PRIMARY KEY, siblings INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS _tern_ll_members (id INTEGER PRIMARY KEY CHECK (id = 1), members TEXT NOT NULL);",
        )?;
        let incarnation: Option<i64> = connection.query_row("SELECT value FROM _tern_ll_meta WHERE name = 'incarnation'", [], |row| row.get(0)).optional()?;
        let incarnation = match incarnation {
            Some(value) => value as u64,
            None => {
                // A new store (first start, or a wiped disk) writes under a new name.
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_micros() as u64);
                let value = (now ^ (u64::from(std::process::id()) << 40)) & (i64::MAX as u64);
                connection.execute("INSERT INTO _tern_ll_meta (name, value) VALUES ('incarnation', ?1)", [value as i64])?;
                value
            }
        };
        let policy = ClientPolicy::install(&mut connection, false, limits)?;
        Ok(LeaderlessStore { connection, policy, shapes: BTreeMap::new(), incarnation, skipped: Vec::new() })
    }

    /// This store's incarnation: it names the versions this node writes (with its id).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    fn shape(&mut self, table: &str) -> Result<Shape> {
        if let Some(shape) = self.shapes.get(table) {
            return Ok(shape.clone());
        }
        let mut statement = self.connection.prepare("SELECT name, pk FROM main.pragma_table_info(?1) ORDER BY cid")?;
        let columns: Vec<(String, i64)> = statement.query_map([table], |row| Ok((row.get(0)?, row.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
        drop(statement);
        if columns.is_empty() {
            return Err(StorageError::new(format!("no such table: {table}")));
        }
        let mut key: Vec<(i64, usize)> = columns.iter().enumerate().filter(|(_, (_, pk))| *pk > 0).map(|(index, (_, pk))| (*pk, index)).collect();
        key.sort_unstable();
        if key.is_empty() {
            return Err(StorageError::new(format!("table {table} has no PRIMARY KEY: leaderless replication places and addresses rows by their key")));
        }
        // Changesets list key values in column order; keep that order.
        let mut key: Vec<usize> = key.into_iter().map(|(_, index)| index).collect();
        key.sort_unstable();
        let shape = Shape { columns: columns.into_iter().map(|(name, _)| name).collect(), key };
        self.shapes.insert(table.to_string(), shape.clone());
        Ok(shape)
    }

    // --- client statements ---

    /// Runs a client write statement in a savepoint, notes the one row it changed, and
    /// rolls it back. A statement changing several rows, or a row of a table without a
    /// primary key, or inserting a row without giving its key, is refused: leaderless
    /// writes address one row by its key.
    pub fn capture(&mut self, statement: &Statement) -> Captured {
        match self.capture_once(statement) {
            Ok(captured) => captured,
            Err(error) => Captured { result: StatementResult::error(error.to_string()), row: None },
        }
    }

    fn capture_once(&mut self, statement: &Statement) -> Result<Captured> {
        self.connection.execute_batch("SAVEPOINT tern_capture")?;
        let outcome = self.run_captured(statement);
        self.connection.execute_batch("ROLLBACK TO tern_capture; RELEASE tern_capture")?;
        let (result, changed, rowid_table) = outcome?;
        if result.error.is_some() {
            return Ok(Captured { result, row: None });
        }
        let [(table, key_values, row)] = changed.as_slice() else {
            if changed.is_empty() {
                return Ok(Captured { result, row: None });
            }
            return Err(StorageError::new(format!(
                "this statement changes {} rows: under --topology leaderless a write changes one row, addressed by its primary key (send one statement per row)",
                changed.len()
            )));
        };
        if rowid_table && self.picked_a_rowid(statement, table)? {
            return Err(StorageError::new(format!(
                "this INSERT into {table} gives no key: under --topology leaderless every row is placed by its primary key, so give it \
                 (a rowid picked by one node would clash with another node's)"
            )));
        }
        let key = Key::new(table.clone(), encode_key(key_values));
        Ok(Captured { result, row: Some((key, row.clone())) })
    }

    /// Whether `statement` inserts a row of `table` (keyed by its rowid) without giving
    /// the key: run again, rolled back, with tern's temporary trigger noting inserted
    /// rows whose rowid SQLite is left to pick (it reads -1 before the insert).
    fn picked_a_rowid(&mut self, statement: &Statement, table: &str) -> Result<bool> {
        let trigger = quote_identifier(&format!("{}ll_{table}", crate::guard::ROWID_TRIGGER_PREFIX));
        self.connection.execute_batch("SAVEPOINT tern_rowid_check")?;
        let outcome = (|| -> Result<bool> {
            self.connection.execute_batch(&format!(
                "CREATE TEMP TABLE IF NOT EXISTS _tern_rowid_picked (rid INTEGER);
                 DELETE FROM temp._tern_rowid_picked;
                 CREATE TEMP TRIGGER {trigger} BEFORE INSERT ON main.{} BEGIN
                    INSERT INTO temp._tern_rowid_picked SELECT NEW.rowid WHERE NEW.rowid = -1;
                 END;",
                quote_identifier(table)
            ))?;
            if let Ok(_client) = self.policy.scope(&self.connection) {
                let _ = run_statement_with(&self.connection, Some(&self.policy), &statement.sql, &statement.params);
            }
            Ok(self.connection.query_row("SELECT count(*) > 0 FROM temp._tern_rowid_picked", [], |row| row.get(0))?)
        })();
        self.connection.execute_batch("ROLLBACK TO tern_rowid_check; RELEASE tern_rowid_check")?;
        outcome
    }

    #[allow(clippy::type_complexity)]
    fn run_captured(&mut self, statement: &Statement) -> Result<(StatementResult, Vec<(String, Vec<SqlValue>, Option<RowImage>)>, bool)> {
        let (result, changeset) = {
            let session = Session::start(&self.connection)?;
            let result = match self.policy.scope(&self.connection) {
                Ok(_client) => run_statement_with(&self.connection, Some(&self.policy), &statement.sql, &statement.params),
                Err(error) => StatementResult::error(error.to_string()),
            };
            (result, session.changeset()?)
        };
        if result.is_query {
            return Ok((StatementResult::error("a query on the write path: send SELECTs to /db/query"), Vec::new(), false));
        }
        let mut changed = Vec::new();
        let mut rowid_table = false;
        for row in changed_rows(&changeset)? {
            let shape = self.shape(&row.table)?;
            let image = if row.change == RowChange::Delete { None } else { Some(self.current_row(&row.table, &shape, &row.key)?) };
            if row.change == RowChange::Insert && crate::engine::has_rowid_key(&self.connection, &row.table)? {
                rowid_table = true;
            }
            changed.push((row.table, row.key, image));
        }
        Ok((result, changed, rowid_table))
    }

    fn current_row(&self, table: &str, shape: &Shape, key: &[SqlValue]) -> Result<RowImage> {
        let names: Vec<String> = shape.columns.iter().map(|column| quote_identifier(column)).collect();
        let sql = format!("SELECT {} FROM {} WHERE {}", names.join(", "), quote_identifier(table), key_condition(shape));
        let values = self.connection.query_row(&sql, params_from_iter(key.iter().map(rusqlite::types::Value::from)), |row| {
            (0..names.len()).map(|index| row.get::<_, rusqlite::types::Value>(index).map(SqlValue::from)).collect::<rusqlite::Result<Vec<SqlValue>>>()
        })?;
        Ok(shape.columns.iter().cloned().zip(values).collect())
    }

    // --- versions ---

    /// The key's stored versions (none: empty).
    ///
    /// # Errors
    /// On a SQLite failure or damaged stored versions.
    pub fn load(&self, key: &Key) -> Result<KeyVersions> {
        let bytes: Option<Vec<u8>> = self
            .connection
            .prepare_cached("SELECT versions FROM _tern_ll_versions WHERE tbl = ?1 AND key = ?2")?
            .query_row(params![key.table, key.key], |row| row.get(0))
            .optional()?;
        bytes.map_or_else(|| Ok(KeyVersions::new()), |bytes| decode_versions(&bytes))
    }

    fn store(&mut self, key: &Key, versions: &KeyVersions) -> Result<()> {
        // A peer names the table; only a user table's rows are kept.
        if crate::guard::is_internal_table(&key.table) || key.table.to_ascii_lowercase().starts_with("sqlite_") {
            return Err(StorageError::new(format!("{:?} is not a user table: its rows are not replicated", key.table)));
        }
        let siblings = versions.siblings().len() as i64;
        self.connection
            .prepare_cached("INSERT OR REPLACE INTO _tern_ll_versions (tbl, key, token, siblings, versions) VALUES (?1, ?2, ?3, ?4, ?5)")?
            .execute(params![key.table, key.key, token_column(key.token()), siblings, encode_versions(versions)])?;
        self.show(key, versions)
    }

    /// Makes the user table show the key's visible version (or not hold the row).
    fn show(&mut self, key: &Key, versions: &KeyVersions) -> Result<()> {
        let shape = match self.shape(&key.table) {
            Ok(shape) => shape,
            // A table this node has not created yet (its schema is behind): the versions
            // are kept, and shown once the table exists.
            Err(_) => return Ok(()),
        };
        let key_values = decode_key(&key.key)?;
        if key_values.len() != shape.key.len() {
            return Err(StorageError::new(format!("a key of {} values for table {} keyed by {}", key_values.len(), key.table, shape.key.len())));
        }
        let table = quote_identifier(&key.table);
        let binds = key_values.iter().map(rusqlite::types::Value::from);
        self.connection.execute(&format!("DELETE FROM {table} WHERE {}", key_condition(&shape)), params_from_iter(binds))?;
        let Some((_, Stamped { value: Some(bytes), .. })) = visible(versions) else { return Ok(()) };
        let mut shown: Vec<(String, rusqlite::types::Value)> =
            decode_row(&bytes)?.into_iter().filter(|(name, _)| shape.columns.contains(name)).map(|(name, value)| (name, (&value).into())).collect();
        // Key columns from the key itself: a version written before a column was renamed
        // still lands on its own row.
        for (place, index) in shape.key.iter().enumerate() {
            let name = &shape.columns[*index];
            if !shown.iter().any(|(column, _)| column == name) {
                shown.push((name.clone(), (&key_values[place]).into()));
            }
        }
        upsert_row(&self.connection, &key.table, &shown)?;
        Ok(())
    }

    /// A coordinator's new version of `key`: `write_locally` on the stored versions and
    /// stored, in one durable transaction.
    ///
    /// # Errors
    /// On a SQLite failure; nothing is changed.
    pub fn write_local(&mut self, key: &Key, dot_name: &str, context: Option<&Context>, value: Stamped) -> Result<(Dot, KeyVersions)> {
        self.connection.execute_batch("BEGIN IMMEDIATE")?;
        let outcome = (|| {
            let mut versions = self.load(key)?;
            let dot = write_locally(&mut versions, dot_name, context, value);
            self.store(key, &versions)?;
            Ok((dot, versions))
        })();
        self.finish(outcome)
    }

    fn finish<T>(&mut self, outcome: Result<T>) -> Result<T> {
        match outcome {
            Ok(value) => {
                self.connection.execute_batch("COMMIT")?;
                Ok(value)
            }
            Err(error) => {
                let _ = self.connection.execute_batch("ROLLBACK");
                Err(error)
            }
        }
    }

    /// Merges each key's versions into the stored ones, in one durable transaction.
    /// Returns how many keys changed.
    ///
    /// # Errors
    /// On a SQLite failure; nothing is changed.
    pub fn merge(&mut self, entries: &[(Key, KeyVersions)]) -> Result<usize> {
        self.connection.execute_batch("BEGIN IMMEDIATE")?;
        let outcome = (|| {
            let mut changed = 0;
            for (key, versions) in entries {
                // Each key on its own: one that cannot be kept (a table this node does
                // not have the shape for, a key that does not decode) is skipped, not
                // the whole batch.
                self.connection.execute_batch("SAVEPOINT tern_merge_key")?;
                let merged = (|| -> Result<bool> {
                    let mut stored = self.load(key)?;
                    let before = stored.clone();
                    stored.merge(versions);
                    if stored == before {
                        return Ok(false);
                    }
                    self.store(key, &stored)?;
                    Ok(true)
                })();
                match merged {
                    Ok(was_changed) => {
                        self.connection.execute_batch("RELEASE tern_merge_key")?;
                        changed += usize::from(was_changed);
                    }
                    Err(error) => {
                        self.connection.execute_batch("ROLLBACK TO tern_merge_key; RELEASE tern_merge_key")?;
                        self.skipped.push(format!("{}: {error}", key.table));
                    }
                }
            }
            Ok(changed)
        })();
        self.finish(outcome)
    }

    /// Why keys were skipped by merges since the last call.
    pub fn take_skipped(&mut self) -> Vec<String> {
        std::mem::take(&mut self.skipped)
    }

    // --- hints ---

    /// # Errors
    /// On a SQLite failure.
    pub fn store_hint(&mut self, target: &str, key: &Key, versions: &KeyVersions) -> Result<()> {
        self.connection.prepare_cached("INSERT OR REPLACE INTO _tern_ll_hints (target, tbl, key, versions) VALUES (?1, ?2, ?3, ?4)")?.execute(params![
            target,
            key.table,
            key.key,
            encode_versions(versions)
        ])?;
        Ok(())
    }

    /// # Errors
    /// On a SQLite failure.
    pub fn drop_hint(&mut self, target: &str, key: &Key) -> Result<()> {
        self.connection
            .prepare_cached("DELETE FROM _tern_ll_hints WHERE target = ?1 AND tbl = ?2 AND key = ?3")?
            .execute(params![target, key.table, key.key])?;
        Ok(())
    }

    /// Every hint kept, for the node at start.
    ///
    /// # Errors
    /// On a SQLite failure or damaged versions.
    pub fn hints(&self) -> Result<Vec<(String, Key, KeyVersions)>> {
        let mut statement = self.connection.prepare("SELECT target, tbl, key, versions FROM _tern_ll_hints")?;
        let rows: Vec<(String, String, Vec<u8>, Vec<u8>)> =
            statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)))?.collect::<rusqlite::Result<_>>()?;
        rows.into_iter().map(|(target, table, key, versions)| Ok((target, Key::new(table, key), decode_versions(&versions)?))).collect()
    }

    // --- anti-entropy and scans ---

    /// Every stored key (with its versions) that `keep` accepts, by token.
    fn entries_where(&self, sql_filter: &str, binds: &[i64], keep: &dyn Fn(u64) -> bool) -> Result<Vec<(Key, KeyVersions)>> {
        let sql = format!("SELECT tbl, key, versions FROM _tern_ll_versions {sql_filter}");
        let mut statement = self.connection.prepare_cached(&sql)?;
        let mut rows = statement.query(params_from_iter(binds.iter()))?;
        let mut entries = Vec::new();
        while let Some(row) = rows.next()? {
            let key = Key::new(row.get::<_, String>(0)?, row.get::<_, Vec<u8>>(1)?);
            if keep(key.token()) {
                entries.push((key, decode_versions(&row.get::<_, Vec<u8>>(2)?)?));
            }
        }
        Ok(entries)
    }

    /// The Merkle tree of the keys `shared` accepts (by token).
    ///
    /// # Errors
    /// On a SQLite failure.
    pub fn tree(&self, depth: u32, shared: &dyn Fn(u64) -> bool) -> Result<MerkleTree> {
        let entries = self.entries_where("", &[], shared)?;
        Ok(MerkleTree::build(depth, entries.iter().map(|(key, versions)| (key.token(), tern_core::leaderless::digest(versions)))))
    }

    /// The keys `shared` accepts whose tokens fall in `ranges` (inclusive).
    ///
    /// # Errors
    /// On a SQLite failure.
    pub fn entries_in(&self, ranges: &[(u64, u64)], shared: &dyn Fn(u64) -> bool) -> Result<Vec<(Key, KeyVersions)>> {
        let mut entries = Vec::new();
        for (start, end) in ranges {
            entries.extend(self.entries_where("WHERE token BETWEEN ?1 AND ?2", &[token_column(*start), token_column(*end)], shared)?);
        }
        Ok(entries)
    }

    /// Every stored key of `tables`.
    ///
    /// # Errors
    /// On a SQLite failure.
    pub fn table_entries(&self, tables: &[String]) -> Result<Vec<(Key, KeyVersions)>> {
        let mut entries = Vec::new();
        for table in tables {
            let sql = "SELECT key, versions FROM _tern_ll_versions WHERE tbl = ?1";
            let mut statement = self.connection.prepare_cached(sql)?;
            let rows: Vec<(Vec<u8>, Vec<u8>)> = statement.query_map([table], |row| Ok((row.get(0)?, row.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
            for (key, versions) in rows {
                entries.push((Key::new(table.clone(), key), decode_versions(&versions)?));
            }
        }
        Ok(entries)
    }

    /// Keys stored with more than one standing version (concurrent writes), per table.
    ///
    /// # Errors
    /// On a SQLite failure.
    pub fn sibling_counts(&self) -> Result<Vec<(String, u64)>> {
        let mut statement = self.connection.prepare("SELECT tbl, count(*) FROM _tern_ll_versions WHERE siblings > 1 GROUP BY tbl ORDER BY tbl")?;
        let rows = statement.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u64)))?.collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// How many keys this node stores.
    ///
    /// # Errors
    /// On a SQLite failure.
    pub fn key_count(&self) -> Result<u64> {
        Ok(self.connection.query_row("SELECT count(*) FROM _tern_ll_versions", [], |row| row.get::<_, i64>(0))? as u64)
    }

    // --- membership ---

    /// The cluster's members as last changed (a JSON text the server reads), if ever.
    ///
    /// # Errors
    /// On a SQLite failure.
    pub fn members(&self) -> Result<Option<String>> {
        Ok(self.connection.query_row("SELECT members FROM _tern_ll_members WHERE id = 1", [], |row| row.get(0)).optional()?)
    }

    /// # Errors
    /// On a SQLite failure.
    pub fn set_members(&mut self, members: &str) -> Result<()> {
        self.connection.execute("INSERT OR REPLACE INTO _tern_ll_members (id, members) VALUES (1, ?1)", [members])?;
        Ok(())
    }

    // --- schema ---

    /// The schema statements made so far, in order.
    ///
    /// # Errors
    /// On a SQLite failure.
    pub fn schema(&self) -> Result<Vec<(String, String)>> {
        let mut statement = self.connection.prepare("SELECT origin, sql FROM _tern_ll_schema ORDER BY seq")?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Runs a client schema statement (CREATE, DROP, ALTER) and records it. A table
    /// without a primary key is refused. Already applied (the same text is recorded):
    /// nothing is done.
    pub fn apply_schema(&mut self, origin: &str, statement: &Statement) -> StatementResult {
        if self.schema().is_ok_and(|made| made.iter().any(|(made_as, _)| made_as == origin)) {
            return StatementResult::default();
        }
        if let Err(error) = self.connection.execute_batch("BEGIN IMMEDIATE") {
            return StatementResult::error(error.to_string());
        }
        let outcome = (|| {
            let before = self.tables()?;
            let result = match self.policy.scope(&self.connection) {
                Ok(_client) => run_statement_with(&self.connection, Some(&self.policy), &statement.sql, &statement.params),
                Err(error) => StatementResult::error(error.to_string()),
            };
            if let Some(error) = result.error {
                return Err(StorageError::new(error));
            }
            self.shapes.clear();
            for table in self.tables()?.into_iter().filter(|table| !before.contains(table)) {
                self.shape(&table)?;
            }
            self.connection.execute("INSERT INTO _tern_ll_schema (origin, sql) VALUES (?1, ?2)", [origin, &statement.sql])?;
            // Versions that arrived before their table existed are shown now.
            let waiting = self.table_entries(&self.tables()?)?;
            for (key, versions) in waiting {
                if let Err(error) = self.show(&key, &versions) {
                    self.skipped.push(format!("{}: {error}", key.table));
                }
            }
            Ok(result)
        })();
        match self.finish(outcome) {
            Ok(result) => result,
            Err(error) => {
                self.shapes.clear();
                StatementResult::error(error.to_string())
            }
        }
    }

    /// Sets whether reads of `table` by key return every standing version (siblings)
    /// rather than the newest, recorded like a schema change (`origin` names it, so a node
    /// that missed it pulls it). Already applied: nothing is done.
    ///
    /// # Errors
    /// If the table does not exist, or on a SQLite failure.
    pub fn apply_policy(&mut self, origin: &str, table: &str, siblings: bool) -> Result<()> {
        if self.schema()?.iter().any(|(made_as, _)| made_as == origin) {
            return Ok(());
        }
        let table = self.table_named(table).ok_or_else(|| StorageError::new(format!("no such table: {table}")))?;
        self.connection.execute_batch("BEGIN IMMEDIATE")?;
        let outcome = (|| {
            self.connection.execute("INSERT OR REPLACE INTO _tern_ll_policy (tbl, siblings) VALUES (?1, ?2)", params![table, siblings])?;
            self.connection.execute("INSERT INTO _tern_ll_schema (origin, sql) VALUES (?1, ?2)", params![origin, policy_statement(&table, siblings)])?;
            Ok(())
        })();
        self.finish(outcome)
    }

    /// The table SQLite means by `name` (names match without case), as it was created:
    /// keys and policies use that spelling.
    fn table_named(&self, name: &str) -> Option<String> {
        let sql = "SELECT name FROM sqlite_schema WHERE type = 'table' AND name = ?1 COLLATE NOCASE";
        self.connection.query_row(sql, [name], |row| row.get(0)).ok()
    }

    /// Tables whose reads by key return siblings.
    ///
    /// # Errors
    /// On a SQLite failure.
    pub fn sibling_tables(&self) -> Result<Vec<String>> {
        let mut statement = self.connection.prepare_cached("SELECT tbl FROM _tern_ll_policy WHERE siblings = 1 ORDER BY tbl")?;
        let rows = statement.query_map([], |row| row.get(0))?.collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Up to `limit` keys holding concurrent versions, with them.
    ///
    /// # Errors
    /// On a SQLite failure or damaged versions.
    pub fn keys_with_siblings(&self, limit: usize) -> Result<Vec<(Key, KeyVersions)>> {
        let mut statement = self.connection.prepare("SELECT tbl, key, versions FROM _tern_ll_versions WHERE siblings > 1 ORDER BY tbl, key LIMIT ?1")?;
        let rows: Vec<(String, Vec<u8>, Vec<u8>)> =
            statement.query_map([limit as i64], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?.collect::<rusqlite::Result<_>>()?;
        rows.into_iter().map(|(table, key, versions)| Ok((Key::new(table, key), decode_versions(&versions)?))).collect()
    }

    fn tables(&self) -> Result<Vec<String>> {
        let mut statement = self.connection.prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE '\\_tern\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
        )?;
        let rows = statement.query_map([], |row| row.get(0))?.collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// The user tables `sql` reads (through views too), if it prepares.
    pub fn tables_read(&self, sql: &str) -> Option<Vec<String>> {
        let touched = self.policy.touched(&self.connection, sql)?;
        let mut tables: Vec<String> =
            touched.reads.into_iter().filter(|table| !crate::guard::is_internal_table(table) && !table.starts_with("sqlite_")).collect();
        tables.sort();
        tables.dedup();
        Some(tables)
    }

    /// Whether `sql` only reads (or fails to prepare: its error then comes from running it).
    pub fn reads_only(&self, sql: &str) -> bool {
        match self.policy.scope(&self.connection) {
            Ok(_client) => self.connection.prepare(sql).map(|prepared| prepared.readonly()).unwrap_or(true),
            Err(_) => true,
        }
    }

    /// Runs a client SELECT over `rows` (the visible version of each key, or with
    /// `every_sibling`, each standing version in turn) shown in an in-memory database
    /// with this node's schema.
    pub fn evaluate(&self, statement: &Statement, rows: &[(Key, KeyVersions)], every_sibling: bool) -> StatementResult {
        match self.evaluate_inner(statement, rows, every_sibling) {
            Ok(result) => result,
            Err(error) => StatementResult::error(error.to_string()),
        }
    }

    fn evaluate_inner(&self, statement: &Statement, rows: &[(Key, KeyVersions)], every_sibling: bool) -> Result<StatementResult> {
        let mut scratch = Connection::open_in_memory()?;
        let schema: Vec<(String, String)> = {
            let mut query = self.connection.prepare("SELECT type, sql FROM sqlite_schema WHERE type IN ('table', 'view') AND sql IS NOT NULL AND name NOT LIKE '\\_tern\\_%' ESCAPE '\\' ORDER BY type = 'view', rowid")?;
            let rows = query.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
            rows
        };
        for (_, sql) in &schema {
            scratch.execute_batch(sql)?;
        }
        let policy = ClientPolicy::install(&mut scratch, false, self.policy.limits())?;
        let fill = |scratch: &Connection, versions: Vec<(String, RowImage)>| -> Result<()> {
            for (table, row) in versions {
                let row: Vec<(String, rusqlite::types::Value)> = row.into_iter().map(|(name, value)| (name, (&value).into())).collect();
                // A column dropped since the version was written: show what still fits.
                if upsert_row(scratch, &table, &row).is_err() {
                    let known: Vec<String> = scratch
                        .prepare("SELECT name FROM pragma_table_info(?1)")?
                        .query_map([&table], |found| found.get(0))?
                        .collect::<rusqlite::Result<_>>()?;
                    let kept: Vec<(String, rusqlite::types::Value)> = row.into_iter().filter(|(name, _)| known.contains(name)).collect();
                    upsert_row(scratch, &table, &kept)?;
                }
            }
            Ok(())
        };
        let run = |scratch: &Connection| match policy.scope(scratch) {
            Ok(_client) => run_statement_with(scratch, Some(&policy), &statement.sql, &statement.params),
            Err(error) => StatementResult::error(error.to_string()),
        };
        if !every_sibling {
            let mut shown = Vec::new();
            for (key, versions) in rows {
                if let Some((_, Stamped { value: Some(bytes), .. })) = visible(versions) {
                    shown.push((key.table.clone(), decode_row(&bytes)?));
                }
            }
            fill(&scratch, shown)?;
            return Ok(run(&scratch));
        }
        // Siblings: the query runs once per standing version, the results concatenated.
        let mut combined: Option<StatementResult> = None;
        for (key, versions) in rows {
            for (_, value) in versions.siblings() {
                let Some(bytes) = &value.value else { continue };
                scratch.execute_batch("SAVEPOINT sibling")?;
                fill(&scratch, vec![(key.table.clone(), decode_row(bytes)?)])?;
                let result = run(&scratch);
                scratch.execute_batch("ROLLBACK TO sibling; RELEASE sibling")?;
                match &mut combined {
                    None => combined = Some(result),
                    Some(all) if result.error.is_none() => all.values.extend(result.values),
                    Some(_) => return Ok(result),
                }
            }
        }
        match combined {
            Some(result) => Ok(result),
            None => {
                fill(&scratch, Vec::new())?;
                Ok(run(&scratch))
            }
        }
    }
}

/// How a per-table siblings policy is recorded in the schema stream (never client SQL:
/// a client's schema statement starts with CREATE, DROP or ALTER).
pub fn policy_statement(table: &str, siblings: bool) -> String {
    format!("{POLICY_PREFIX}{}{table}", if siblings { "on " } else { "off " })
}

pub const POLICY_PREFIX: &str = "tern:siblings ";

/// The table and setting of a recorded policy statement.
pub fn parse_policy_statement(sql: &str) -> Option<(String, bool)> {
    let rest = sql.strip_prefix(POLICY_PREFIX)?;
    if let Some(table) = rest.strip_prefix("on ") {
        return Some((table.to_string(), true));
    }
    rest.strip_prefix("off ").map(|table| (table.to_string(), false))
}

/// `INSERT OR REPLACE` of one row of `table`: the named columns, bound in order.
fn upsert_row(connection: &Connection, table: &str, row: &[(String, rusqlite::types::Value)]) -> rusqlite::Result<usize> {
    let columns: Vec<String> = row.iter().map(|(name, _)| quote_identifier(name)).collect();
    let marks: Vec<String> = (1..=columns.len()).map(|place| format!("?{place}")).collect();
    let sql = format!("INSERT OR REPLACE INTO {} ({}) VALUES ({})", quote_identifier(table), columns.join(", "), marks.join(", "));
    connection.execute(&sql, params_from_iter(row.iter().map(|(_, value)| value)))
}

/// `key1 IS ?1 AND key2 IS ?2 …` for the key columns, bound in key order.
fn key_condition(shape: &Shape) -> String {
    let matches: Vec<String> =
        shape.key.iter().enumerate().map(|(place, column)| format!("{} IS ?{}", quote_identifier(&shape.columns[*column]), place + 1)).collect();
    matches.join(" AND ")
}

/// A SELECT of one row by its one-column primary key, `SELECT … FROM t WHERE k = v`
/// (v a literal or the statement's one parameter): its table, column and value. Any other
/// shape is `None` (it reads every replica range instead).
pub fn key_lookup(statement: &Statement) -> Option<(String, String, SqlValue)> {
    let sql = statement.sql.as_str();
    let tokens: Vec<(TokenKind, &str)> = tokenize(sql)
        .into_iter()
        .filter(|token| token.kind != TokenKind::Space)
        .filter_map(|token| Some((token.kind, sql.get(token.start..token.end)?)))
        .collect();
    let word = |index: usize, keyword: &str| tokens.get(index).is_some_and(|(kind, text)| *kind == TokenKind::Word && text.eq_ignore_ascii_case(keyword));
    if !word(0, "SELECT") {
        return None;
    }
    let mut depth = 0i32;
    let mut from = None;
    for (index, (kind, text)) in tokens.iter().enumerate() {
        match kind {
            TokenKind::Open => depth += 1,
            TokenKind::Close => depth -= 1,
            TokenKind::Word if depth == 0 && text.eq_ignore_ascii_case("FROM") => {
                from = Some(index);
                break;
            }
            TokenKind::Word if text.eq_ignore_ascii_case("SELECT") && index > 0 => return None,
            _ => {}
        }
    }
    let from = from?;
    let name = |token: &(TokenKind, &str)| -> Option<String> {
        match token.0 {
            TokenKind::Word => Some(token.1.to_string()),
            TokenKind::Other if token.1.len() >= 2 && (token.1.starts_with('"') || token.1.starts_with('`') || token.1.starts_with('[')) => {
                let inner = token.1.get(1..token.1.len() - 1)?;
                Some(if token.1.starts_with('"') { inner.replace("\"\"", "\"") } else { inner.to_string() })
            }
            _ => None,
        }
    };
    let table = name(tokens.get(from + 1)?)?;
    if !word(from + 2, "WHERE") {
        return None;
    }
    let column = name(tokens.get(from + 3)?)?;
    if !matches!(tokens.get(from + 4), Some((TokenKind::Other, "=" | "=="))) {
        return None;
    }
    let mut rest = &tokens[from + 5..];
    if let Some(((TokenKind::Other, ";"), before)) = rest.split_last() {
        rest = before;
    }
    let value = match rest {
        [(TokenKind::Text, text)] => SqlValue::Text(text.get(1..text.len() - 1)?.replace("''", "'")),
        [(TokenKind::Word, digits)] => SqlValue::Integer(digits.parse().ok()?),
        [(TokenKind::Other, "-"), (TokenKind::Word, digits)] => SqlValue::Integer(-digits.parse::<i64>().ok()?),
        [(TokenKind::Other, "?")] => match &statement.params {
            Params::Positional(values) if values.len() == 1 => values[0].clone(),
            _ => return None,
        },
        [(TokenKind::Other, mark @ (":" | "@" | "$")), (TokenKind::Word, label)] => match &statement.params {
            Params::Named(pairs) => {
                let wanted = format!("{mark}{label}");
                pairs.iter().find(|(name, _)| *name == wanted || name == label).map(|(_, value)| value.clone())?
            }
            _ => return None,
        },
        _ => return None,
    };
    let uses_parameters = !matches!(statement.params, Params::None);
    let parameter_in_value = matches!(rest.first(), Some((TokenKind::Other, "?" | ":" | "@" | "$")));
    if uses_parameters && !parameter_in_value {
        return None;
    }
    Some((table, column, value))
}

impl LeaderlessStore {
    /// The key of `table` whose one key column is `column` with `value`, converted as the
    /// column's declared type would store it; `None` if `column` is not the table's
    /// whole primary key.
    pub fn key_of(&mut self, table: &str, column: &str, value: &SqlValue) -> Option<Key> {
        // The table's own spelling: SQLite matches names without case, keys use the name.
        let table = self.table_named(table)?;
        let table = table.as_str();
        let shape = self.shape(table).ok()?;
        let [index] = shape.key.as_slice() else { return None };
        if !shape.columns[*index].eq_ignore_ascii_case(column) {
            return None;
        }
        let declared: String =
            self.connection.query_row("SELECT type FROM main.pragma_table_info(?1) WHERE pk > 0", [table], |row| row.get(0)).unwrap_or_default();
        let declared = declared.to_ascii_uppercase();
        let value = match value {
            SqlValue::Text(text) if declared.contains("INT") => text.trim().parse::<i64>().map(SqlValue::Integer).unwrap_or_else(|_| value.clone()),
            SqlValue::Integer(number) if declared.contains("CHAR") || declared.contains("TEXT") || declared.contains("CLOB") => {
                SqlValue::Text(number.to_string())
            }
            SqlValue::Integer(number) if declared.contains("REAL") || declared.contains("FLOA") || declared.contains("DOUB") => SqlValue::Real(*number as f64),
            _ => value.clone(),
        };
        Some(Key::new(table, encode_key(&[value])))
    }
}
