//! The change stream (`/db/changes`): the log's entries read back as events, one per
//! changed row (row format: from the row images the entry ships) or per statement (SQL
//! the entry ships: the statement format's writes, and schema changes in both logical
//! formats). The physical format ships pages, which name no rows: it has no stream.
//!
//! Events are ordered by log index, then by their number within the entry; a cursor
//! (index, number) names the last event a consumer saw, so it can resume exactly after it.

use super::*;
use crate::capture::row::{changed_rows, RowChange};
use std::collections::HashMap;

/// Where a consumer stands: after event `number` of entry `index` (`number: None`: after
/// the whole entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChangeCursor {
    pub index: u64,
    pub number: Option<u32>,
}

impl ChangeCursor {
    fn passed(&self, index: u64, number: u32) -> bool {
        index < self.index || (index == self.index && self.number.is_none_or(|seen| number <= seen))
    }
}

/// One change, as the stream reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct ChangeEvent {
    pub position: Position,
    /// Its number within its entry, from 0.
    pub number: u32,
    /// `insert`, `update`, `delete`, or `statement` (SQL the entry ships).
    pub op: &'static str,
    /// The row's table (`None` for a statement).
    pub table: Option<String>,
    /// The row's key columns' values (for a table without a primary key, its rowid).
    pub key: Vec<SqlValue>,
    /// Column values before and after, as `(column, value)` in table order: an update
    /// carries its key and the columns it set.
    pub before: Option<Vec<(String, SqlValue)>>,
    pub after: Option<Vec<(String, SqlValue)>>,
    /// A statement event's SQL and parameters.
    pub sql: Option<(String, Params)>,
    /// The region and time (Unix milliseconds) the entry was written in, when recorded.
    pub origin: Option<(String, u64)>,
}

/// A page of the stream.
#[derive(Clone, Debug, PartialEq)]
pub struct ChangePage {
    pub events: Vec<ChangeEvent>,
    /// Where the next page starts (the cursor after the last event read, or after the
    /// last entry read when it had none left).
    pub next: ChangeCursor,
}

/// Why a page cannot be read.
#[derive(Clone, Debug, PartialEq)]
pub enum ChangesError {
    /// The entries after the cursor were compacted away; the oldest still held is this.
    Compacted {
        oldest: Position,
    },
    Storage(String),
}

impl Reader {
    /// Events after `after`, from entries up to `through` (the commit index: only entries
    /// that can never be rolled back), at most `max_events` (a page ends at an entry's
    /// end unless one entry alone holds more).
    ///
    /// # Errors
    /// The cursor is before the log's start, or a SQLite failure.
    pub fn change_page(&self, after: ChangeCursor, through: u64, max_events: usize) -> std::result::Result<ChangePage, ChangesError> {
        let storage = |error: StorageError| ChangesError::Storage(error.to_string());
        self.in_read_transaction(|| {
            let oldest: Option<(u64, u64)> = self
                .connection
                .query_row("SELECT idx, epoch FROM _tern_log ORDER BY idx LIMIT 1", [], |row| Ok((row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64)))
                .optional()
                .map_err(|error| storage(error.into()))?;
            let first_wanted = if after.number.is_some() { after.index } else { after.index + 1 };
            match oldest {
                Some((index, epoch)) if first_wanted < index && index > 1 => {
                    return Err(ChangesError::Compacted { oldest: Position::new(epoch, index) });
                }
                _ => {}
            }
            let mut columns: HashMap<String, Vec<String>> = HashMap::new();
            let mut page = ChangePage { events: Vec::new(), next: after };
            let mut statement = self
                .connection
                .prepare("SELECT idx, epoch, payload FROM _tern_log WHERE idx >= ?1 AND idx <= ?2 ORDER BY idx LIMIT 256")
                .map_err(|error| storage(error.into()))?;
            let mut rows = statement.query(params![first_wanted as i64, through as i64]).map_err(|error| storage(error.into()))?;
            while let Some(row) = rows.next().map_err(|error| storage(error.into()))? {
                let (index, epoch): (i64, i64) = (row.get(0).map_err(|error| storage(error.into()))?, row.get(1).map_err(|error| storage(error.into()))?);
                let payload: Vec<u8> = row.get(2).map_err(|error| storage(error.into()))?;
                let position = Position::new(epoch as u64, index as u64);
                let events = entry_events(&self.connection, position, &Payload::decode(&payload).map_err(storage)?, &mut columns).map_err(storage)?;
                let fresh: Vec<ChangeEvent> = events.into_iter().filter(|event| !after.passed(position.index, event.number)).collect();
                if !page.events.is_empty() && page.events.len() + fresh.len() > max_events {
                    break;
                }
                page.next = ChangeCursor { index: position.index, number: None };
                page.events.extend(fresh);
                if page.events.len() >= max_events {
                    break;
                }
            }
            Ok(page)
        })
        .map_err(storage)?
    }
}

/// The events of one entry, numbered from 0.
fn entry_events(connection: &Connection, position: Position, payload: &Payload, columns: &mut HashMap<String, Vec<String>>) -> Result<Vec<ChangeEvent>> {
    // The changes after an origin marker are its: an entry of a multi-leader region that
    // applies other regions' writes holds one marker per write.
    let mut origin: Option<(String, u64)> = None;
    let mut events: Vec<ChangeEvent> = Vec::new();
    for change in &payload.changes {
        let mut push = |op: &'static str, table: Option<String>, key, before, after, sql| {
            let number = events.len() as u32;
            events.push(ChangeEvent { position, number, op, table, key, before, after, sql, origin: origin.clone() });
        };
        match change {
            Change::Sql { sql, params } => push("statement", None, Vec::new(), None, None, Some((sql.clone(), params.clone()))),
            Change::Vacuum => push("statement", None, Vec::new(), None, None, Some(("VACUUM".to_string(), Params::None))),
            Change::Rows(changeset) => {
                for row in changed_rows(changeset)? {
                    let names = match columns.get(&row.table) {
                        Some(names) => names.clone(),
                        None => {
                            let names = column_names(connection, &row.table)?;
                            columns.insert(row.table.clone(), names.clone());
                            names
                        }
                    };
                    let named = |values: &[Option<SqlValue>]| -> Vec<(String, SqlValue)> {
                        values
                            .iter()
                            .enumerate()
                            .filter_map(|(column, value)| {
                                let name = names.get(column).cloned().unwrap_or_else(|| format!("column{column}"));
                                value.clone().map(|value| (name, value))
                            })
                            .collect()
                    };
                    let (op, before, after) = match row.change {
                        RowChange::Insert => ("insert", None, Some(named(&row.new))),
                        RowChange::Update { .. } => ("update", Some(named(&row.old)), Some(named(&row.new))),
                        RowChange::Delete => ("delete", Some(named(&row.old)), None),
                    };
                    push(op, Some(row.table), row.key, before, after, None);
                }
            }
            Change::Origin { region, unix_ms } => origin = Some((region.clone(), *unix_ms)),
            Change::Pages { .. } | Change::Rowids(_) => {}
        }
    }
    Ok(events)
}

/// A table's column names in table order, as it is now (a table dropped since has none:
/// its values are then named by position).
fn column_names(connection: &Connection, table: &str) -> Result<Vec<String>> {
    let mut statement = connection.prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")?;
    let names = statement.query_map([table], |row| row.get(0))?.collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_passes_what_was_seen() {
        let whole = ChangeCursor { index: 5, number: None };
        assert!(whole.passed(5, 0) && whole.passed(4, 9) && !whole.passed(6, 0));
        let partway = ChangeCursor { index: 5, number: Some(1) };
        assert!(partway.passed(5, 1) && !partway.passed(5, 2) && !partway.passed(6, 0));
    }
}
