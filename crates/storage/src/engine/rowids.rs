//! Rowids the row images cannot carry by themselves: the leader's rowids for tables keyed beside their rowid, and what is refused.

use super::*;

impl Engine {
    /// The tables `sql` inserts into or updates (directly or through triggers) whose
    /// rows a changeset names by a declared key beside the rowid, with whether it sets
    /// rowids there; see `rowid_change_refusal` and `null_key_refusal`.
    pub(super) fn keyed_tables_written(&self, sql: &str) -> Vec<KeyedTable> {
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
    pub(super) fn rowid_change_refusal(tables: &[KeyedTable]) -> Option<String> {
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
    pub(super) fn null_key_refusal(&self, tables: &[KeyedTable]) -> Result<Option<String>> {
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
    pub(super) fn picks_random_rowids(&self, table: &str) -> bool {
        let sql = format!("SELECT max(rowid) = 9223372036854775807 FROM {}", quote_identifier(table));
        let taken = self.connection.prepare_cached(&sql).and_then(|mut statement| statement.query_row([], |row| row.get::<_, Option<bool>>(0)));
        matches!(taken, Ok(Some(true)))
    }
}

/// The declared primary-key columns of `table` (in column order) if it also has a rowid
/// that is not one of them; `None` otherwise (no declared key: the changeset addresses
/// rows by rowid; an INTEGER PRIMARY KEY is the rowid; WITHOUT ROWID has none).
pub(super) fn keys_beside_rowid(connection: &Connection, table: &str) -> Result<Option<Vec<String>>> {
    let columns: Vec<(String, String)> = connection
        .prepare_cached("SELECT name, type FROM pragma_table_info(?1) WHERE pk > 0 ORDER BY cid")?
        .query_map([table], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let rowid_alias = matches!(columns.as_slice(), [(_, declared)] if declared.eq_ignore_ascii_case("INTEGER"));
    if columns.is_empty() || rowid_alias {
        return Ok(None);
    }
    // Asked of SQLite's catalogue with one cached statement: this runs for every table a
    // row-format write touches.
    let without_rowid: bool = connection
        .prepare_cached("SELECT wr FROM pragma_table_list(?1) WHERE schema = 'main'")?
        .query_row([table], |row| row.get(0))
        .optional()?
        .unwrap_or(true);
    Ok((!without_rowid).then(|| columns.into_iter().map(|(name, _)| name).collect()))
}

/// `WHERE` over key columns, `IS` so that NULL keys (allowed in rowid tables) match.
pub(super) fn key_condition(columns: &[String], first_parameter: usize) -> String {
    let terms: Vec<String> = columns.iter().enumerate().map(|(at, column)| format!("{} IS ?{}", quote_identifier(column), first_parameter + at)).collect();
    terms.join(" AND ")
}

/// Leader, row format: the rowids of the rows `changeset` writes in tables whose rows it
/// addresses by a declared key (see `Change::Rowids`), or `None` if there are none.
pub(super) fn rowids_of_keyed_rows(connection: &Connection, changeset: &[u8]) -> Result<Option<Change>> {
    let mut shapes: std::collections::HashMap<String, Option<Vec<String>>> = std::collections::HashMap::new();
    let mut tables: Vec<(String, Vec<(Vec<SqlValue>, i64)>)> = Vec::new();
    for row in crate::capture::row::written_rows(changeset)? {
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
pub(super) fn set_rowids(connection: &Connection, tables: &[(String, Vec<(Vec<SqlValue>, i64)>)]) -> Result<()> {
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
        let mut unpark = connection.prepare_cached(&format!("UPDATE {name} SET _rowid_ = ?1 WHERE _rowid_ = ?2"))?;
        for (at, (_, rowid)) in moves.iter().enumerate() {
            unpark.execute(params![rowid, parked(at)?])?;
        }
    }
    Ok(())
}

/// A table written as row images whose rows are named by a declared key beside the rowid.
pub(super) struct KeyedTable {
    name: String,
    key: Vec<String>,
    sets_rowid: bool,
}
