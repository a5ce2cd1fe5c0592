//! A small safe wrapper over SQLite's session extension: record row changes made on a
//! connection as a changeset, and apply a changeset on another database.
//!
//! rusqlite's own `session` feature needs bindgen and libclang at build time, which a
//! fresh machine lacks, so the handful of C functions are declared here by hand. The
//! bundled SQLite is compiled with `SQLITE_ENABLE_SESSION` and
//! `SQLITE_ENABLE_PREUPDATE_HOOK` (see `.cargo/config.toml`). All unsafe code of the
//! row format lives in this file.

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

extern "C" {
    fn sqlite3session_create(db: *mut ffi::sqlite3, db_name: *const c_char, session: *mut *mut RawSession) -> c_int;
    fn sqlite3session_delete(session: *mut RawSession);
    fn sqlite3session_object_config(session: *mut RawSession, op: c_int, arg: *mut c_void) -> c_int;
    fn sqlite3session_attach(session: *mut RawSession, table: *const c_char) -> c_int;
    fn sqlite3session_table_filter(session: *mut RawSession, filter: Option<TableFilter>, context: *mut c_void);
    fn sqlite3session_changeset(session: *mut RawSession, size: *mut c_int, changeset: *mut *mut c_void) -> c_int;
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
    !(bytes.starts_with(b"sqlite_") || bytes.starts_with(b"_tern_"))
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
/// means the replicas diverged. Foreign-key actions are not re-run (their effects were
/// recorded too); the caller disables triggers for the same reason.
///
/// # Errors
/// A conflict (`SQLITE_ABORT`) or any other SQLite error; nothing is applied then.
pub fn apply_changeset(connection: &Connection, changeset: &[u8]) -> rusqlite::Result<()> {
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
            SQLITE_CHANGESETAPPLY_FKNOACTION,
        )
    };
    if code != ffi::SQLITE_OK {
        return Err(sqlite_error(connection, code, "applying row changeset (replica diverged?)"));
    }
    Ok(())
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

        apply_changeset(&target, &changeset).unwrap();
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
        assert!(apply_changeset(&target, &changeset).is_err());
        assert_eq!(table_dump(&target, "t"), vec!["Integer(2),Integer(2),Text(\"other\")"]);
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
