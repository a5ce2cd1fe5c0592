//! A small safe wrapper over SQLite's session extension: record row changes made on a
//! connection as a changeset, and apply a changeset on another database.
//!
//! rusqlite's own `session` feature needs bindgen and libclang at build time, which a
//! fresh machine lacks, so the handful of C functions are declared here by hand. The
//! bundled SQLite is compiled with `SQLITE_ENABLE_SESSION` and
//! `SQLITE_ENABLE_PREUPDATE_HOOK` (see `.cargo/config.toml`). All unsafe code of the
//! row format lives in this file, and the one other C call rusqlite does not wrap
//! (`sqlite3_db_status`, for the physical format's entry size limit).

use crate::sql::SqlValue;
use rusqlite::ffi;
use rusqlite::Connection;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;

#[repr(C)]
struct RawSession {
    _private: [u8; 0],
}

#[repr(C)]
struct RawChangesetIter {
    _private: [u8; 0],
}

const SQLITE_SESSION_OBJCONFIG_ROWID: c_int = 2;
const SQLITE_CHANGESET_ABORT: c_int = 2;
const SQLITE_CHANGESETAPPLY_FKNOACTION: c_int = 0x0008;

type TableFilter = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;
type ConflictHandler = unsafe extern "C" fn(*mut c_void, c_int, *mut RawChangesetIter) -> c_int;

/// `sqlite3changeset_old` or `sqlite3changeset_new`: one column's value of the current change.
type ValueReader = unsafe extern "C" fn(*mut RawChangesetIter, c_int, *mut *mut ffi::sqlite3_value) -> c_int;

extern "C" {
    fn sqlite3session_create(db: *mut ffi::sqlite3, db_name: *const c_char, session: *mut *mut RawSession) -> c_int;
    fn sqlite3session_delete(session: *mut RawSession);
    fn sqlite3session_object_config(session: *mut RawSession, op: c_int, arg: *mut c_void) -> c_int;
    fn sqlite3session_attach(session: *mut RawSession, table: *const c_char) -> c_int;
    fn sqlite3session_table_filter(session: *mut RawSession, filter: Option<TableFilter>, context: *mut c_void);
    fn sqlite3session_changeset(session: *mut RawSession, size: *mut c_int, changeset: *mut *mut c_void) -> c_int;
    fn sqlite3changeset_start(iter: *mut *mut RawChangesetIter, size: c_int, changeset: *mut c_void) -> c_int;
    fn sqlite3changeset_next(iter: *mut RawChangesetIter) -> c_int;
    fn sqlite3changeset_op(iter: *mut RawChangesetIter, table: *mut *const c_char, columns: *mut c_int, op: *mut c_int, indirect: *mut c_int) -> c_int;
    fn sqlite3changeset_pk(iter: *mut RawChangesetIter, key_columns: *mut *mut u8, columns: *mut c_int) -> c_int;
    fn sqlite3changeset_new(iter: *mut RawChangesetIter, column: c_int, value: *mut *mut ffi::sqlite3_value) -> c_int;
    fn sqlite3changeset_old(iter: *mut RawChangesetIter, column: c_int, value: *mut *mut ffi::sqlite3_value) -> c_int;
    fn sqlite3changeset_finalize(iter: *mut RawChangesetIter) -> c_int;
    fn sqlite3changeset_apply_v2(
        db: *mut ffi::sqlite3,
        size: c_int,
        changeset: *mut c_void,
        filter: Option<TableFilter>,
        conflict: Option<ConflictHandler>,
        context: *mut c_void,
        rebase: *mut *mut c_void,
        rebase_size: *mut c_int,
        flags: c_int,
    ) -> c_int;
}

/// Tables whose changes are never replicated as rows: SQLite's own bookkeeping
/// (`sqlite_sequence` is maintained by the follower's own inserts) and tern's log/meta.
fn is_replicated_table(name: &CStr) -> bool {
    let bytes = name.to_bytes();
    // Multi-leader's own tables are the region's state: its followers hold them too.
    let region_state = matches!(bytes, b"_tern_region_log" | b"_tern_row_versions" | b"_tern_conflict_policy" | b"_tern_unique_conflicts" | b"_tern_home_rule");
    region_state || !(bytes.starts_with(b"sqlite_") || bytes.starts_with(b"_tern_"))
}

unsafe extern "C" fn replicated_tables_only(_context: *mut c_void, table: *const c_char) -> c_int {
    // SAFETY: SQLite passes a valid NUL-terminated table name for the duration of the call.
    let name = unsafe { CStr::from_ptr(table) };
    c_int::from(is_replicated_table(name))
}

unsafe extern "C" fn abort_on_conflict(_context: *mut c_void, _kind: c_int, _iter: *mut RawChangesetIter) -> c_int {
    // Followers apply changesets to a database identical to the one they were recorded
    // on; a conflict means the replicas diverged, and applying anyway would hide it.
    SQLITE_CHANGESET_ABORT
}

fn sqlite_error(connection: &Connection, code: c_int, what: &str) -> rusqlite::Error {
    // SAFETY: the handle is valid while `connection` lives; errmsg returns a NUL-terminated string.
    let message = unsafe { CStr::from_ptr(ffi::sqlite3_errmsg(connection.handle())) }.to_string_lossy().into_owned();
    rusqlite::Error::SqliteFailure(ffi::Error::new(code), Some(format!("{what}: {message}")))
}

/// Records every row change made on `connection` to replicated tables while it lives.
///
/// Tables without a primary key are recorded by rowid, so they replicate too.
pub struct Session<'connection> {
    connection: &'connection Connection,
    raw: *mut RawSession,
}

impl<'connection> Session<'connection> {
    /// # Errors
    /// If SQLite cannot create or configure the session (out of memory).
    pub fn start(connection: &'connection Connection) -> rusqlite::Result<Session<'connection>> {
        let mut raw = ptr::null_mut();
        // SAFETY: the handle is valid for 'connection; "main" is NUL-terminated; `raw` is an out-pointer.
        let code = unsafe { sqlite3session_create(connection.handle(), c"main".as_ptr(), &mut raw) };
        if code != ffi::SQLITE_OK {
            return Err(sqlite_error(connection, code, "sqlite3session_create"));
        }
        let session = Session { connection, raw };
        let mut enable_rowid: c_int = 1;
        // SAFETY: `raw` is a live session with no tables attached yet, as the option requires.
        let code = unsafe { sqlite3session_object_config(session.raw, SQLITE_SESSION_OBJCONFIG_ROWID, (&mut enable_rowid as *mut c_int).cast()) };
        if code != ffi::SQLITE_OK {
            return Err(sqlite_error(connection, code, "sqlite3session_object_config(ROWID)"));
        }
        // SAFETY: the filter is a plain function that ignores its context pointer.
        unsafe { sqlite3session_table_filter(session.raw, Some(replicated_tables_only), ptr::null_mut()) };
        // SAFETY: a null table name attaches every table, as documented.
        let code = unsafe { sqlite3session_attach(session.raw, ptr::null()) };
        if code != ffi::SQLITE_OK {
            return Err(sqlite_error(connection, code, "sqlite3session_attach"));
        }
        Ok(session)
    }

    pub fn connection(&self) -> &'connection Connection {
        self.connection
    }

    /// The changes recorded so far, as a changeset (empty if nothing changed).
    ///
    /// # Errors
    /// If SQLite cannot produce the changeset (out of memory, schema changed under it).
    pub fn changeset(&self) -> rusqlite::Result<Vec<u8>> {
        let mut size: c_int = 0;
        let mut buffer: *mut c_void = ptr::null_mut();
        // SAFETY: `raw` is live; size and buffer are out-pointers SQLite fills.
        let code = unsafe { sqlite3session_changeset(self.raw, &mut size, &mut buffer) };
        if code != ffi::SQLITE_OK {
            return Err(sqlite_error(self.connection, code, "sqlite3session_changeset"));
        }
        let changeset = if buffer.is_null() || size <= 0 {
            Vec::new()
        } else {
            // SAFETY: SQLite returned `size` readable bytes at `buffer`.
            unsafe { std::slice::from_raw_parts(buffer.cast::<u8>(), size as usize) }.to_vec()
        };
        // SAFETY: the buffer was allocated by SQLite and is freed exactly once (null is allowed).
        unsafe { ffi::sqlite3_free(buffer) };
        Ok(changeset)
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        // SAFETY: `raw` was created by sqlite3session_create and is deleted once, here.
        unsafe { sqlite3session_delete(self.raw) };
    }
}

/// Applies a changeset recorded on another replica. Any conflict (a row missing, present
/// or different from what the changeset expects) aborts the whole changeset, since it
/// means the replicas diverged. With `fk_actions` (the schema has foreign keys with
/// actions), those actions are not re-run: their effects were recorded too. (Saying so
/// costs a reload of the schema, so callers say it only when there are some.) The caller
/// disables triggers for the same reason.
///
/// # Errors
/// A conflict (`SQLITE_ABORT`) or any other SQLite error; nothing is applied then.
pub fn apply_changeset(connection: &Connection, changeset: &[u8], fk_actions: bool) -> rusqlite::Result<()> {
    if changeset.is_empty() {
        return Ok(());
    }
    let size = c_int::try_from(changeset.len()).map_err(|_| rusqlite::Error::ToSqlConversionFailure("changeset over 2 GiB".into()))?;
    // SAFETY: SQLite only reads the changeset buffer during the call; the handlers are
    // plain functions that ignore their context; no rebase buffer is requested.
    let code = unsafe {
        sqlite3changeset_apply_v2(
            connection.handle(),
            size,
            changeset.as_ptr() as *mut c_void,
            Some(replicated_tables_only),
            Some(abort_on_conflict),
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
            if fk_actions { SQLITE_CHANGESETAPPLY_FKNOACTION } else { 0 },
        )
    };
    if code != ffi::SQLITE_OK {
        return Err(sqlite_error(connection, code, "applying row changeset (replica diverged?)"));
    }
    Ok(())
}

/// A row a changeset inserts or updates: its table and the values of its key columns
/// (in column order; for a table without a primary key, its rowid).
#[derive(Clone, Debug, PartialEq)]
pub struct WrittenRow {
    pub table: String,
    pub key: Vec<SqlValue>,
}

/// The rows `changeset` inserts or updates, in changeset order.
///
/// # Errors
/// If the bytes are not a changeset.
pub fn written_rows(changeset: &[u8]) -> rusqlite::Result<Vec<WrittenRow>> {
    Ok(changed_rows(changeset)?.into_iter().filter(|row| row.change != RowChange::Delete).map(|row| WrittenRow { table: row.table, key: row.key }).collect())
}

/// What a changeset did to one row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RowChange {
    Insert,
    /// `true` for each column (in table order) the update set.
    Update {
        columns: Vec<bool>,
    },
    Delete,
}

/// A row a changeset changed: its table, its key columns' values (in column order; for a
/// table without a primary key, its rowid) and what was done to it.
#[derive(Clone, Debug, PartialEq)]
pub struct ChangedRow {
    pub table: String,
    pub key: Vec<SqlValue>,
    pub change: RowChange,
    /// Updates and deletes: each column's value before the change, where the changeset
    /// carries it (a delete: every column; an update: the key and the columns it set).
    pub old: Vec<Option<SqlValue>>,
    /// Inserts and updates: each column's value after the change, where the changeset
    /// carries it (an insert: every column; an update: the columns it set).
    pub new: Vec<Option<SqlValue>>,
}

/// Every row `changeset` inserts, updates or deletes, in changeset order.
///
/// # Errors
/// If the bytes are not a changeset.
pub fn changed_rows(changeset: &[u8]) -> rusqlite::Result<Vec<ChangedRow>> {
    let mut rows = Vec::new();
    if changeset.is_empty() {
        return Ok(rows);
    }
    let failed = |code: c_int, what: &str| rusqlite::Error::SqliteFailure(ffi::Error::new(code), Some(format!("reading a changeset: {what}")));
    let size = c_int::try_from(changeset.len()).map_err(|_| rusqlite::Error::ToSqlConversionFailure("changeset over 2 GiB".into()))?;
    let mut iter = ptr::null_mut();
    // SAFETY: SQLite only reads the buffer, which outlives the iterator (finalized below).
    let code = unsafe { sqlite3changeset_start(&mut iter, size, changeset.as_ptr() as *mut c_void) };
    if code != ffi::SQLITE_OK {
        return Err(failed(code, "sqlite3changeset_start"));
    }
    let outcome = (|| {
        loop {
            // SAFETY: `iter` is live until finalized after this loop.
            let code = unsafe { sqlite3changeset_next(iter) };
            if code == ffi::SQLITE_DONE {
                return Ok(());
            }
            if code != ffi::SQLITE_ROW {
                return Err(failed(code, "sqlite3changeset_next"));
            }
            let (mut table, mut columns, mut op, mut indirect) = (ptr::null(), 0, 0, 0);
            // SAFETY: the iterator points at a change; all four are out-pointers.
            let code = unsafe { sqlite3changeset_op(iter, &mut table, &mut columns, &mut op, &mut indirect) };
            if code != ffi::SQLITE_OK || table.is_null() {
                return Err(failed(code, "sqlite3changeset_op"));
            }
            let (mut flags, mut flag_count) = (ptr::null_mut(), 0);
            // SAFETY: out-pointers; SQLite returns an array of `flag_count` flags owned by the iterator.
            let code = unsafe { sqlite3changeset_pk(iter, &mut flags, &mut flag_count) };
            if code != ffi::SQLITE_OK || flags.is_null() {
                return Err(failed(code, "sqlite3changeset_pk"));
            }
            // SAFETY: as above; valid until the next call on the iterator.
            let flags = unsafe { std::slice::from_raw_parts(flags, flag_count.max(0) as usize) };
            let mut key = Vec::new();
            for (column, _) in flags.iter().enumerate().filter(|(_, flag)| **flag != 0) {
                let mut value = ptr::null_mut();
                // Inserts carry new values; an update's key columns are in its old values
                // (a key change is recorded as a delete and an insert).
                // SAFETY: `column` is below the table's column count; `value` is an out-pointer.
                let code = unsafe {
                    if op == ffi::SQLITE_INSERT {
                        sqlite3changeset_new(iter, column as c_int, &mut value)
                    } else {
                        sqlite3changeset_old(iter, column as c_int, &mut value)
                    }
                };
                if code != ffi::SQLITE_OK {
                    return Err(failed(code, "reading a key value"));
                }
                key.push(sql_value(value));
            }
            // Each column's value where the change carries it (SQLite gives a null pointer
            // for one it does not: an update's unchanged columns).
            let values = |read: ValueReader, what: &str| -> rusqlite::Result<Vec<Option<SqlValue>>> {
                (0..columns)
                    .map(|column| {
                        let mut value = ptr::null_mut();
                        // SAFETY: `column` is below the table's column count; `value` is an out-pointer.
                        let code = unsafe { read(iter, column, &mut value) };
                        if code != ffi::SQLITE_OK {
                            return Err(failed(code, what));
                        }
                        Ok((!value.is_null()).then(|| sql_value(value)))
                    })
                    .collect()
            };
            let old = if op == ffi::SQLITE_INSERT { Vec::new() } else { values(sqlite3changeset_old, "reading an old value")? };
            let new = if op == ffi::SQLITE_DELETE { Vec::new() } else { values(sqlite3changeset_new, "reading a new value")? };
            let change = match op {
                ffi::SQLITE_INSERT => RowChange::Insert,
                ffi::SQLITE_DELETE => RowChange::Delete,
                _ => RowChange::Update { columns: new.iter().map(Option::is_some).collect() },
            };
            // SAFETY: SQLite's NUL-terminated table name, valid while the iterator is here.
            let table = unsafe { CStr::from_ptr(table) }.to_string_lossy().into_owned();
            rows.push(ChangedRow { table, key, change, old, new });
        }
    })();
    // SAFETY: created above, finalized once.
    unsafe { sqlite3changeset_finalize(iter) };
    outcome.map(|()| rows)
}

/// A changeset value as an owned `SqlValue` (a null pointer, a value the change does not
/// carry, is NULL).
fn sql_value(value: *mut ffi::sqlite3_value) -> SqlValue {
    if value.is_null() {
        return SqlValue::Null;
    }
    // SAFETY: a live value from the iterator; text and blob pointers are read for the
    // byte count SQLite reports, before any other call on the value.
    unsafe {
        match ffi::sqlite3_value_type(value) {
            ffi::SQLITE_INTEGER => SqlValue::Integer(ffi::sqlite3_value_int64(value)),
            ffi::SQLITE_FLOAT => SqlValue::Real(ffi::sqlite3_value_double(value)),
            ffi::SQLITE_TEXT => {
                let text = ffi::sqlite3_value_text(value);
                let length = ffi::sqlite3_value_bytes(value).max(0) as usize;
                let bytes = if text.is_null() { &[][..] } else { std::slice::from_raw_parts(text, length) };
                SqlValue::Text(String::from_utf8_lossy(bytes).into_owned())
            }
            ffi::SQLITE_BLOB => {
                let blob = ffi::sqlite3_value_blob(value).cast::<u8>();
                let length = ffi::sqlite3_value_bytes(value).max(0) as usize;
                SqlValue::Blob(if blob.is_null() { Vec::new() } else { std::slice::from_raw_parts(blob, length).to_vec() })
            }
            _ => SqlValue::Null,
        }
    }
}

/// Pages this connection's pager has written to the WAL since the last reset (SQLite's
/// `SQLITE_DBSTATUS_CACHE_WRITE`); `reset` starts the count again. Inside a write
/// transaction, before its commit, these are the pages spilled from a full page cache:
/// a lower bound on what the transaction will commit.
pub fn pages_written(connection: &Connection, reset: bool) -> u64 {
    let (mut current, mut highest): (c_int, c_int) = (0, 0);
    // SAFETY: the handle is valid while `connection` lives; both counters are out-pointers.
    let code = unsafe { ffi::sqlite3_db_status(connection.handle(), ffi::SQLITE_DBSTATUS_CACHE_WRITE, &mut current, &mut highest, c_int::from(reset)) };
    if code == ffi::SQLITE_OK {
        current.max(0) as u64
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_dump(connection: &Connection, table: &str) -> Vec<String> {
        let mut statement = connection.prepare(&format!("SELECT rowid, * FROM {table} ORDER BY rowid")).unwrap();
        let columns = statement.column_count();
        let rows = statement
            .query_map([], |row| {
                let mut line = Vec::new();
                for index in 0..columns {
                    let value: rusqlite::types::Value = row.get(index)?;
                    line.push(format!("{value:?}"));
                }
                Ok(line.join(","))
            })
            .unwrap();
        rows.map(Result::unwrap).collect()
    }

    #[test]
    fn changeset_replays_inserts_updates_deletes_including_tables_without_primary_key() {
        let schema = "CREATE TABLE keyed (id INTEGER PRIMARY KEY, name TEXT); CREATE TABLE loose (a TEXT, b INT);";
        let source = Connection::open_in_memory().unwrap();
        let target = Connection::open_in_memory().unwrap();
        source.execute_batch(schema).unwrap();
        target.execute_batch(schema).unwrap();

        let session = Session::start(&source).unwrap();
        source
            .execute_batch(
                "INSERT INTO keyed VALUES (1, 'ada'), (2, 'bob'), (3, 'cy');
                 UPDATE keyed SET name = 'bobby' WHERE id = 2; DELETE FROM keyed WHERE id = 3;
                 INSERT INTO loose VALUES ('x', 1), ('x', 1), ('y', 2); DELETE FROM loose WHERE b = 2;
                 UPDATE loose SET b = 5 WHERE rowid = 2;",
            )
            .unwrap();
        let changeset = session.changeset().unwrap();
        drop(session);
        assert!(!changeset.is_empty());

        apply_changeset(&target, &changeset, true).unwrap();
        assert_eq!(table_dump(&target, "keyed"), table_dump(&source, "keyed"));
        assert_eq!(table_dump(&target, "loose"), table_dump(&source, "loose"));
        assert_eq!(table_dump(&target, "loose"), vec!["Integer(1),Text(\"x\"),Integer(1)", "Integer(2),Text(\"x\"),Integer(5)"]);
    }

    #[test]
    fn a_conflict_aborts_and_applies_nothing() {
        let source = Connection::open_in_memory().unwrap();
        let target = Connection::open_in_memory().unwrap();
        source.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)").unwrap();
        target.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (2, 'other');").unwrap();
        let session = Session::start(&source).unwrap();
        source.execute_batch("INSERT INTO t VALUES (1, 'a'), (2, 'b')").unwrap();
        let changeset = session.changeset().unwrap();
        drop(session);
        assert!(apply_changeset(&target, &changeset, false).is_err());
        assert_eq!(table_dump(&target, "t"), vec!["Integer(2),Integer(2),Text(\"other\")"]);
    }

    #[test]
    fn written_rows_name_each_inserted_or_updated_row_by_its_key() {
        let source = Connection::open_in_memory().unwrap();
        source
            .execute_batch("CREATE TABLE p (a, b TEXT, c, PRIMARY KEY (c, b)); CREATE TABLE loose (v); INSERT INTO p VALUES (1, 'x', 2), (3, 'y', 4);")
            .unwrap();
        let session = Session::start(&source).unwrap();
        source
            .execute_batch(
                "INSERT INTO p VALUES (5, 'é', 6.5); UPDATE p SET a = 9 WHERE b = 'x'; DELETE FROM p WHERE b = 'y'; INSERT INTO loose VALUES (x'01');",
            )
            .unwrap();
        let mut rows = written_rows(&session.changeset().unwrap()).unwrap();
        rows.sort_by(|left, right| format!("{left:?}").cmp(&format!("{right:?}")));
        let row = |table: &str, key: Vec<SqlValue>| WrittenRow { table: table.to_owned(), key };
        assert_eq!(
            rows,
            vec![
                row("loose", vec![SqlValue::Integer(1)]),
                row("p", vec![SqlValue::Text("x".into()), SqlValue::Integer(2)]),
                row("p", vec![SqlValue::Text("é".into()), SqlValue::Real(6.5)]),
            ]
        );
        assert!(written_rows(b"not a changeset").is_err());
    }

    #[test]
    fn tern_and_sqlite_tables_are_not_recorded() {
        let source = Connection::open_in_memory().unwrap();
        source.execute_batch("CREATE TABLE _tern_log (i INTEGER PRIMARY KEY, p BLOB)").unwrap();
        let session = Session::start(&source).unwrap();
        source.execute_batch("INSERT INTO _tern_log VALUES (1, x'00')").unwrap();
        assert!(session.changeset().unwrap().is_empty());
    }
}
