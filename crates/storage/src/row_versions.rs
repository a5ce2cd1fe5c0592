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
         CREATE TABLE IF NOT EXISTS _tern_conflict_policy (tbl TEXT PRIMARY KEY, policy TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS _tern_home_rule (tbl TEXT PRIMARY KEY, home_column TEXT NOT NULL, directory INTEGER NOT NULL DEFAULT 0);
         CREATE TABLE IF NOT EXISTS _tern_unique_conflicts (
            tbl TEXT NOT NULL, key BLOB NOT NULL, held_by BLOB NOT NULL, PRIMARY KEY (tbl, key)) WITHOUT ROWID",
    )?;
    // Databases made before directory homes existed: their rules are all by column.
    let has_directory: bool =
        connection.query_row("SELECT EXISTS (SELECT 1 FROM pragma_table_info('_tern_home_rule') WHERE name = 'directory')", [], |row| row.get(0))?;
    if !has_directory {
        connection.execute_batch("ALTER TABLE _tern_home_rule ADD COLUMN directory INTEGER NOT NULL DEFAULT 0")?;
    }
    Ok(())
}

/// The directory of homes tern keeps for tables homed by key (`POST /db/homes/rule` with
/// `"directory": true`): one row per key, naming its home region. It is an ordinary table,
/// homed by its own `region` column, so a key moves the way a row does: by an update made
/// at its home.
pub const HOME_DIRECTORY: &str = "tern_homes";

/// How a homed table's rows find their home region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HomeRule {
    pub table: String,
    pub column: String,
    /// `false`: the column names the home region; `true`: the column holds a key of the
    /// directory ([`HOME_DIRECTORY`]), whose row names it.
    pub directory: bool,
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
    let key_bytes = encode_key(&shape.name, key)?;
    let mut row = stored_row(connection, shape, &key_bytes)?.unwrap_or_else(|| Row::new(shape.policy, shape.columns.len()));
    row.apply(write).map_err(|error| StorageError::new(format!("{}: {error}", shape.name)))?;
    let table = quote_identifier(&shape.name);
    match row.visible() {
        // Made here: the table shows it (a row taken out by a UNIQUE clash is back).
        _ if !show => forget_unique_clash(connection, shape, &key_bytes)?,
        None => {
            connection.execute(&format!("DELETE FROM {table} WHERE {}", shape.key_condition()), params_from_iter(key.iter().map(Value::from)))?;
            forget_unique_clash(connection, shape, &key_bytes)?;
        }
        Some(mut values) => {
            for (place, column) in shape.key.iter().enumerate() {
                values[*column] = Some(key[place].clone());
            }
            show_row(connection, shape, key, &key_bytes, &values, row.newest_stamp())?;
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

/// Makes the user table show `values` as the row `key`, by an upsert (the row keeps its
/// rowid). Two regions may give different rows one UNIQUE value: the row with the newer
/// version (then the greater key) keeps it, in every region alike, and the other row is
/// taken out of the table, its versions kept and the clash on record
/// (`_tern_unique_conflicts`), until a write shows it again.
fn show_row(connection: &Connection, shape: &TableShape, key: &[SqlValue], key_bytes: &[u8], values: &[Option<SqlValue>], stamp: Option<&Stamp>) -> Result<()> {
    let table = quote_identifier(&shape.name);
    let names = shape.quoted_columns();
    let slots: Vec<String> = (1..=values.len()).map(|slot| format!("?{slot}")).collect();
    let key_names: Vec<&str> = shape.key.iter().map(|column| names[*column].as_str()).collect();
    let updates: Vec<String> =
        names.iter().enumerate().filter(|(index, _)| !shape.key.contains(index)).map(|(_, name)| format!("{name} = excluded.{name}")).collect();
    let on_conflict = if updates.is_empty() { "DO NOTHING".to_string() } else { format!("DO UPDATE SET {}", updates.join(", ")) };
    let sql = format!("INSERT INTO {table} ({}) VALUES ({}) ON CONFLICT ({}) {on_conflict}", names.join(", "), slots.join(", "), key_names.join(", "));
    // Each round takes one clashing row out (or this one): a few rounds at most.
    for _ in 0..=unique_indexes(connection, shape)?.len() {
        let shown = connection.execute(&sql, params_from_iter(values.iter().map(|value| value.as_ref().map_or(Value::Null, Value::from))));
        match shown {
            Ok(_) => return forget_unique_clash(connection, shape, key_bytes),
            Err(rusqlite::Error::SqliteFailure(error, _)) if error.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE => {
                let Some(holder) = unique_holder(connection, shape, key, values)? else {
                    return Err(StorageError::new(format!("a row of {} breaks a UNIQUE constraint no other row explains", shape.name)));
                };
                let holder_bytes = encode_key(&shape.name, &holder)?;
                let holder_stamp = stored_row(connection, shape, &holder_bytes)?.and_then(|row| row.newest_stamp().cloned());
                let (loser, winner) = if (stamp, key_bytes) > (holder_stamp.as_ref(), holder_bytes.as_slice()) {
                    (holder.clone(), key.to_vec())
                } else {
                    (key.to_vec(), holder.clone())
                };
                connection.execute(&format!("DELETE FROM {table} WHERE {}", shape.key_condition()), params_from_iter(loser.iter().map(Value::from)))?;
                connection.prepare_cached("INSERT OR REPLACE INTO _tern_unique_conflicts (tbl, key, held_by) VALUES (?1, ?2, ?3)")?.execute(params![
                    shape.name,
                    encode_key(&shape.name, &loser)?,
                    encode_key(&shape.name, &winner)?
                ])?;
                if loser == key {
                    return Ok(());
                }
            }
            Err(error) => return Err(error.into()),
        }
    }
    Err(StorageError::new(format!("a row of {} still breaks a UNIQUE constraint after every clashing row was taken out", shape.name)))
}

fn forget_unique_clash(connection: &Connection, shape: &TableShape, key_bytes: &[u8]) -> Result<()> {
    connection.prepare_cached("DELETE FROM _tern_unique_conflicts WHERE tbl = ?1 AND key = ?2")?.execute(params![shape.name, key_bytes])?;
    Ok(())
}

fn encode_key(table: &str, key: &[SqlValue]) -> Result<Vec<u8>> {
    postcard::to_allocvec(key).map_err(|error| StorageError::new(format!("cannot encode a key of {table}: {error}")))
}

/// The stored versions of `table`'s row with the encoded key.
fn stored_row(connection: &Connection, shape: &TableShape, key_bytes: &[u8]) -> Result<Option<Row<SqlValue>>> {
    let stored: Option<Vec<u8>> = connection
        .prepare_cached("SELECT state FROM _tern_row_versions WHERE tbl = ?1 AND key = ?2")?
        .query_row(params![shape.name, key_bytes], |row| row.get(0))
        .optional()?;
    stored
        .map(|bytes| postcard::from_bytes(&bytes).map_err(|error| StorageError::new(format!("the versions of a row of {} are damaged: {error}", shape.name))))
        .transpose()
}

/// The columns (by position) of each UNIQUE index of the table other than its key.
fn unique_indexes(connection: &Connection, shape: &TableShape) -> Result<Vec<Vec<usize>>> {
    let mut statement = connection.prepare_cached("SELECT name FROM pragma_index_list(?1) WHERE \"unique\" = 1 AND origin <> 'pk'")?;
    let names: Vec<String> = statement.query_map([&shape.name], |row| row.get(0))?.collect::<rusqlite::Result<_>>()?;
    let mut indexes = Vec::new();
    for name in names {
        let mut columns = connection.prepare_cached("SELECT name FROM pragma_index_info(?1) ORDER BY seqno")?;
        let named: Vec<Option<String>> = columns.query_map([&name], |row| row.get(0))?.collect::<rusqlite::Result<_>>()?;
        // An index on an expression has no column name: no row can be found by it here.
        let positions: Option<Vec<usize>> =
            named.iter().map(|column| column.as_ref().and_then(|column| shape.columns.iter().position(|known| known == column))).collect();
        if let Some(positions) = positions {
            indexes.push(positions);
        }
    }
    Ok(indexes)
}

/// Another row holding one of this row's UNIQUE values: its key.
fn unique_holder(connection: &Connection, shape: &TableShape, key: &[SqlValue], values: &[Option<SqlValue>]) -> Result<Option<Vec<SqlValue>>> {
    let names = shape.quoted_columns();
    let key_names: Vec<&str> = shape.key.iter().map(|column| names[*column].as_str()).collect();
    for index in unique_indexes(connection, shape)? {
        let bound: Option<Vec<SqlValue>> = index.iter().map(|column| values[*column].clone().filter(|value| *value != SqlValue::Null)).collect();
        // NULLs never clash under UNIQUE.
        let Some(bound) = bound else { continue };
        let matches: Vec<String> = index.iter().enumerate().map(|(place, column)| format!("{} = ?{}", names[*column], place + 1)).collect();
        let sql = format!("SELECT {} FROM {} WHERE {}", key_names.join(", "), quote_identifier(&shape.name), matches.join(" AND "));
        let mut statement = connection.prepare(&sql)?;
        let mut rows = statement.query(params_from_iter(bound.iter().map(Value::from)))?;
        while let Some(row) = rows.next()? {
            let holder: Vec<SqlValue> = (0..key_names.len()).map(|place| row.get::<_, Value>(place).map(SqlValue::from)).collect::<rusqlite::Result<_>>()?;
            if holder != key {
                return Ok(Some(holder));
            }
        }
    }
    Ok(None)
}

/// `table`'s rows taken out of it because another row holds a UNIQUE value they claim:
/// each one's key, the key of the row holding the value, and the versions it keeps.
///
/// # Errors
/// If a stored state is damaged, or on a SQLite failure.
pub fn unique_conflicts(connection: &Connection, table: &str) -> Result<Vec<UniqueConflict>> {
    let mut statement = connection.prepare_cached(
        "SELECT u.key, u.held_by, v.state FROM _tern_unique_conflicts u LEFT JOIN _tern_row_versions v ON v.tbl = u.tbl AND v.key = u.key WHERE u.tbl = ?1 ORDER BY u.key",
    )?;
    let rows = statement.query_map([table], |row| Ok((row.get::<_, Vec<u8>>(0)?, row.get::<_, Vec<u8>>(1)?, row.get::<_, Option<Vec<u8>>>(2)?)))?;
    let damaged = |error: postcard::Error| StorageError::new(format!("a UNIQUE clash of {table} is damaged on record: {error}"));
    let mut found = Vec::new();
    for stored in rows {
        let (key, held_by, state) = stored?;
        let row: Option<Row<SqlValue>> = state.map(|state| postcard::from_bytes(&state)).transpose().map_err(damaged)?;
        found.push(UniqueConflict {
            key: postcard::from_bytes(&key).map_err(damaged)?,
            held_by: postcard::from_bytes(&held_by).map_err(damaged)?,
            values: row.and_then(|row| row.visible()).map(|values| values.into_iter().map(|value| value.unwrap_or(SqlValue::Null)).collect()),
        });
    }
    Ok(found)
}

/// A row taken out of its table because another row holds a UNIQUE value it claims.
#[derive(Clone, Debug, PartialEq)]
pub struct UniqueConflict {
    pub key: Vec<SqlValue>,
    /// The key of the row that keeps the value.
    pub held_by: Vec<SqlValue>,
    /// What the row taken out would show.
    pub values: Option<Vec<SqlValue>>,
}

/// Each homed table's rule, in table order.
///
/// # Errors
/// On a SQLite failure.
pub fn home_rules(connection: &Connection) -> Result<Vec<HomeRule>> {
    let mut statement = connection.prepare_cached("SELECT tbl, home_column, directory FROM _tern_home_rule ORDER BY tbl")?;
    let rules = statement
        .query_map([], |row| Ok(HomeRule { table: row.get(0)?, column: row.get(1)?, directory: row.get::<_, i64>(2)? != 0 }))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rules)
}

/// The home region the directory gives `key` (`None`: the key has none).
///
/// # Errors
/// On a SQLite failure.
pub fn directory_home(connection: &Connection, key: &SqlValue) -> Result<Option<String>> {
    if matches!(key, SqlValue::Null) {
        return Ok(None);
    }
    // A key column's value and the directory's key may differ in type (42 and '42', as
    // SQLite's column affinity would have them equal): the same value in the other
    // type matches too, the exact one first.
    let alternate = match key {
        SqlValue::Integer(number) => SqlValue::Text(number.to_string()),
        SqlValue::Text(text) => text.parse::<i64>().ok().filter(|number| number.to_string() == *text).map_or(SqlValue::Null, SqlValue::Integer),
        _ => SqlValue::Null,
    };
    let sql = format!("SELECT region FROM {HOME_DIRECTORY} WHERE home_key = ?1 OR home_key = ?2 ORDER BY home_key = ?1 DESC LIMIT 1");
    let home = connection.prepare_cached(&sql)?.query_row([Value::from(key), Value::from(&alternate)], |row| row.get::<_, Option<String>>(0)).optional()?;
    Ok(home.flatten())
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

/// Every table with rows holding losing versions or taken out by a UNIQUE clash, and how
/// many such rows each has.
///
/// # Errors
/// On a SQLite failure.
pub fn tables_in_conflict(connection: &Connection) -> Result<Vec<(String, u64)>> {
    let mut statement = connection.prepare_cached(
        "SELECT tbl, sum(rows) FROM (SELECT tbl, count(*) AS rows FROM _tern_row_versions WHERE losers > 0 GROUP BY tbl
         UNION ALL SELECT tbl, count(*) FROM _tern_unique_conflicts GROUP BY tbl) GROUP BY tbl ORDER BY tbl",
    )?;
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
