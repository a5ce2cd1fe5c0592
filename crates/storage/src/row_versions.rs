//! Multi-leader's row versions (issue 13; the server does not use them yet): for each
//! row written under multi-leader, the versions the conflict policy keeps
//! (`tern_core::multi_leader::Row`), beside the user table, which always shows the
//! visible version. Applying a write updates both in the caller's transaction; the rows
//! holding losing versions are the conflicts an operator lists.

use crate::capture::row::{changed_rows, RowChange};
use crate::engine::{quote_identifier, StorageError};
use crate::sql::SqlValue;
use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};
use tern_core::multi_leader::{Conflict, Dot, Policy, Row, RowWrite, Stamp, VersionVector};

type Result<T> = std::result::Result<T, StorageError>;

/// A user table as multi-leader writes it: its columns in order, which of them make the
/// primary key (in column order, as changesets list key values), and the conflict policy
/// its new rows are written under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableShape {
    pub name: String,
    pub columns: Vec<String>,
    pub key: Vec<usize>,
    pub policy: Policy,
}

impl TableShape {
    /// The columns, quoted, in table order.
    fn quoted_columns(&self) -> Vec<String> {
        self.columns.iter().map(|column| quote_identifier(column)).collect()
    }

    /// `key1 IS ?1 AND key2 IS ?2 …`: the row whose key values are bound in key order.
    fn key_condition(&self) -> String {
        let matches: Vec<String> =
            self.key.iter().enumerate().map(|(place, column)| format!("{} IS ?{}", quote_identifier(&self.columns[*column]), place + 1)).collect();
        matches.join(" AND ")
    }
}

/// Each table's shape, read once per transaction.
fn cached_shape<'a>(shapes: &'a mut Vec<TableShape>, connection: &Connection, table: &str) -> Result<&'a TableShape> {
    let index = match shapes.iter().position(|shape| shape.name == table) {
        Some(index) => index,
        None => {
            shapes.push(shape(connection, table)?);
            shapes.len() - 1
        }
    };
    Ok(&shapes[index])
}

/// Creates the versions and policy tables if they are missing.
///
/// # Errors
/// On a SQLite failure.
pub fn create(connection: &Connection) -> Result<()> {
    connection.execute_batch(
        "CREATE TABLE IF NOT EXISTS _tern_row_versions (
            tbl TEXT NOT NULL, key BLOB NOT NULL, state BLOB NOT NULL, losers INTEGER NOT NULL,
            PRIMARY KEY (tbl, key)) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS _tern_conflict_policy (tbl TEXT PRIMARY KEY, policy TEXT NOT NULL)",
    )?;
    Ok(())
}

/// Sets `table`'s conflict policy (before any multi-leader write reaches it: rows keep
/// the policy they were first written under).
///
/// # Errors
/// On a SQLite failure.
pub fn set_policy(connection: &Connection, table: &str, policy: Policy) -> Result<()> {
    connection.execute("INSERT OR REPLACE INTO _tern_conflict_policy (tbl, policy) VALUES (?1, ?2)", params![table, policy.name()])?;
    Ok(())
}

/// `table`'s conflict policy: last writer wins unless an operator chose another.
///
/// # Errors
/// If the stored name is not a policy, or on a SQLite failure.
pub fn policy(connection: &Connection, table: &str) -> Result<Policy> {
    let name: Option<String> = connection.query_row("SELECT policy FROM _tern_conflict_policy WHERE tbl = ?1", [table], |row| row.get(0)).optional()?;
    name.map_or(Ok(Policy::LastWriterWins), |name| Policy::parse(&name).map_err(StorageError::new))
}

/// `table`'s columns and primary key, as SQLite declares them, and its policy.
///
/// # Errors
/// If the table does not exist or has no primary key (multi-leader addresses rows by
/// key), or on a SQLite failure.
pub fn shape(connection: &Connection, table: &str) -> Result<TableShape> {
    let mut statement = connection.prepare("SELECT name, pk FROM pragma_table_info(?1) ORDER BY cid")?;
    let columns: Vec<(String, i64)> = statement.query_map([table], |row| Ok((row.get(0)?, row.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
    if columns.is_empty() {
        return Err(StorageError::new(format!("no such table: {table}")));
    }
    let key: Vec<usize> = columns.iter().enumerate().filter(|(_, (_, pk))| *pk > 0).map(|(index, _)| index).collect();
    if key.is_empty() {
        return Err(StorageError::new(format!("table {table} has no PRIMARY KEY: multi-leader replication addresses rows by key")));
    }
    Ok(TableShape { name: table.to_string(), columns: columns.into_iter().map(|(name, _)| name).collect(), key, policy: policy(connection, table)? })
}

/// Applies `write` to the row of `shape` whose key is `key` (the key columns' values, in
/// column order) under the table's policy, in the caller's transaction: the versions are
/// updated and the user table made to show the visible version (or not to hold the row).
/// Returns how many losing versions the row now keeps.
///
/// # Errors
/// If the write does not fit the table or the policy (nothing is changed), a stored
/// state is damaged, or on a SQLite failure.
pub fn apply(connection: &Connection, shape: &TableShape, key: &[SqlValue], write: &RowWrite<SqlValue>) -> Result<usize> {
    apply_showing(connection, shape, key, write, true)
}

/// Records a write made here (the user table already shows it: the write had seen every
/// version the row keeps, so it replaced them all) in the row's versions only.
///
/// # Errors
/// As [`apply`].
fn record(connection: &Connection, shape: &TableShape, key: &[SqlValue], write: &RowWrite<SqlValue>) -> Result<usize> {
    apply_showing(connection, shape, key, write, false)
}

fn apply_showing(connection: &Connection, shape: &TableShape, key: &[SqlValue], write: &RowWrite<SqlValue>, show: bool) -> Result<usize> {
    if key.len() != shape.key.len() {
        return Err(StorageError::new(format!("a key of {} values for {}, whose key has {}", key.len(), shape.name, shape.key.len())));
    }
    let key_bytes = postcard::to_allocvec(key).map_err(|error| StorageError::new(format!("cannot encode a key of {}: {error}", shape.name)))?;
    let stored: Option<Vec<u8>> = connection
        .prepare_cached("SELECT state FROM _tern_row_versions WHERE tbl = ?1 AND key = ?2")?
        .query_row(params![shape.name, key_bytes], |row| row.get(0))
        .optional()?;
    let mut row: Row<SqlValue> = match stored {
        Some(bytes) => {
            postcard::from_bytes(&bytes).map_err(|error| StorageError::new(format!("the versions of a row of {} are damaged: {error}", shape.name)))?
        }
        None => Row::new(shape.policy, shape.columns.len()),
    };
    row.apply(write).map_err(|error| StorageError::new(format!("{}: {error}", shape.name)))?;
    let table = quote_identifier(&shape.name);
    match row.visible() {
        _ if !show => {}
        None => {
            connection.execute(&format!("DELETE FROM {table} WHERE {}", shape.key_condition()), params_from_iter(key.iter().map(Value::from)))?;
        }
        Some(mut values) => {
            for (place, column) in shape.key.iter().enumerate() {
                values[*column] = Some(key[place].clone());
            }
            // An upsert, not a replace: the row keeps its rowid.
            let names = shape.quoted_columns();
            let slots: Vec<String> = (1..=values.len()).map(|slot| format!("?{slot}")).collect();
            let key_names: Vec<&str> = shape.key.iter().map(|column| names[*column].as_str()).collect();
            let updates: Vec<String> =
                names.iter().enumerate().filter(|(index, _)| !shape.key.contains(index)).map(|(_, name)| format!("{name} = excluded.{name}")).collect();
            let on_conflict = if updates.is_empty() { "DO NOTHING".to_string() } else { format!("DO UPDATE SET {}", updates.join(", ")) };
            let sql = format!("INSERT INTO {table} ({}) VALUES ({}) ON CONFLICT ({}) {on_conflict}", names.join(", "), slots.join(", "), key_names.join(", "));
            connection.execute(&sql, params_from_iter(values.iter().map(|value| value.as_ref().map_or(Value::Null, Value::from))))?;
        }
    }
    let losers = row.conflicts().len();
    let state = postcard::to_allocvec(&row).map_err(|error| StorageError::new(format!("cannot encode the versions of a row of {}: {error}", shape.name)))?;
    connection.prepare_cached("INSERT OR REPLACE INTO _tern_row_versions (tbl, key, state, losers) VALUES (?1, ?2, ?3, ?4)")?.execute(params![
        shape.name,
        key_bytes,
        state,
        losers as i64
    ])?;
    Ok(losers)
}

/// Every row of `table` holding losing versions, with its key and its conflicts.
///
/// # Errors
/// If a stored state is damaged, or on a SQLite failure.
pub fn conflicts(connection: &Connection, table: &str) -> Result<Vec<(Vec<SqlValue>, Vec<Conflict<SqlValue>>)>> {
    let mut statement = connection.prepare_cached("SELECT key, state FROM _tern_row_versions WHERE tbl = ?1 AND losers > 0 ORDER BY key")?;
    let rows = statement.query_map([table], |row| Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, Vec<u8>>(1)?)))?;
    let mut found = Vec::new();
    for stored in rows {
        let (key, state) = stored?;
        let damaged = |error: postcard::Error| StorageError::new(format!("the versions of a row of {table} are damaged: {error}"));
        let key: Vec<SqlValue> = postcard::from_bytes(&key).map_err(damaged)?;
        let row: Row<SqlValue> = postcard::from_bytes(&state).map_err(damaged)?;
        found.push((key, row.conflicts()));
    }
    Ok(found)
}

/// One row write of a transaction from another region: the table, the row's key (key
/// columns in column order) and the write.
pub type RemoteRowWrite = (String, Vec<SqlValue>, RowWrite<SqlValue>);

/// Applies every row write of one transaction from another region, in the caller's
/// transaction, with user triggers off: they ran at the origin, and what they wrote is
/// among the transaction's row writes. Triggers are back on afterwards, error or not.
/// Returns how many losing versions the touched rows keep in all.
///
/// # Errors
/// As [`apply`]; the caller's transaction then rolls back whole.
pub fn apply_transaction(connection: &Connection, writes: &[RemoteRowWrite]) -> Result<usize> {
    use rusqlite::config::DbConfig;
    connection.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false)?;
    let applied = (|| {
        let mut shapes = Vec::new();
        let mut losers = 0;
        for (table, key, write) in writes {
            losers += apply(connection, cached_shape(&mut shapes, connection, table)?, key, write)?;
        }
        Ok(losers)
    })();
    connection.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, true)?;
    applied
}

/// Records the row writes of a transaction made here (see [`local_writes`]) in the rows'
/// versions, in the caller's transaction; the user tables already show them.
///
/// # Errors
/// As [`apply`].
pub fn record_local(connection: &Connection, writes: &[RemoteRowWrite]) -> Result<()> {
    let mut shapes = Vec::new();
    for (table, key, write) in writes {
        record(connection, cached_shape(&mut shapes, connection, table)?, key, write)?;
    }
    Ok(())
}

/// Every table with rows holding losing versions, and how many such rows each has.
///
/// # Errors
/// On a SQLite failure.
pub fn tables_in_conflict(connection: &Connection) -> Result<Vec<(String, u64)>> {
    let mut statement = connection.prepare_cached("SELECT tbl, count(*) FROM _tern_row_versions WHERE losers > 0 GROUP BY tbl ORDER BY tbl")?;
    let rows = statement.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)))?;
    let mut tables = Vec::new();
    for row in rows {
        let (table, count) = row?;
        tables.push((table, u64::try_from(count).unwrap_or(0)));
    }
    Ok(tables)
}

/// Turns a transaction made here (its changeset, taken before its commit) into its row
/// writes, named `dot`, stamped `stamp` and having seen `seen`: each changed row as the
/// transaction left it (every column for the whole-row policies; the columns it set for
/// column merge), or its deletion. tern's own tables are left out.
///
/// # Errors
/// If a changed table has no primary key, the changeset cannot be read, or on a SQLite
/// failure.
pub fn local_writes(connection: &Connection, changeset: &[u8], dot: &Dot, stamp: &Stamp, seen: &VersionVector) -> Result<Vec<RemoteRowWrite>> {
    let mut shapes = Vec::new();
    let mut writes = Vec::new();
    for changed in changed_rows(changeset)? {
        if changed.table.starts_with("_tern_") {
            continue;
        }
        let shape = cached_shape(&mut shapes, connection, &changed.table)?;
        let values = match &changed.change {
            RowChange::Delete => None,
            change => {
                let row = current_row(connection, shape, &changed.key)?;
                Some(match change {
                    RowChange::Update { columns } if shape.policy == Policy::ColumnMerge => {
                        row.into_iter().zip(columns).map(|(value, set)| if *set { Some(value) } else { None }).collect()
                    }
                    _ => row.into_iter().map(Some).collect(),
                })
            }
        };
        writes.push((changed.table.clone(), changed.key, RowWrite { dot: dot.clone(), stamp: stamp.clone(), seen: seen.clone(), values }));
    }
    Ok(writes)
}

/// The row of `shape` with key `key`, every column, as the connection sees it now.
///
/// # Errors
/// If there is no such row, or on a SQLite failure.
pub fn current_row(connection: &Connection, shape: &TableShape, key: &[SqlValue]) -> Result<Vec<SqlValue>> {
    let names = shape.quoted_columns();
    let sql = format!("SELECT {} FROM {} WHERE {}", names.join(", "), quote_identifier(&shape.name), shape.key_condition());
    let row = connection.query_row(&sql, params_from_iter(key.iter().map(Value::from)), |row| {
        (0..names.len()).map(|index| row.get::<_, Value>(index).map(SqlValue::from)).collect::<rusqlite::Result<Vec<SqlValue>>>()
    });
    row.map_err(|error| StorageError::new(format!("reading a changed row of {}: {error}", shape.name)))
}
