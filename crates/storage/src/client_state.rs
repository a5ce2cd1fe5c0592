//! The client's view of connection state.
//!
//! `last_insert_rowid()`, `changes()` and `total_changes()` describe the connection's
//! most recent writes. On a leader, tern writes its own log row (and metadata) on the
//! same connection after the clients' statements, so SQLite's answers would describe
//! tern's bookkeeping: after two inserts into `a`, `INSERT INTO b VALUES
//! (last_insert_rowid())` would store the log's row id. tern keeps the values a client
//! would see if it had the connection to itself, and registers functions of the same
//! names on the writer connection that answer with them. In the statement format the
//! rewriter evaluates them through the same functions, so followers store the same values.

use rusqlite::functions::FunctionFlags;
use rusqlite::Connection;
use std::sync::{Arc, Mutex, PoisonError};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub last_insert_rowid: i64,
    pub changes: i64,
    pub total_changes: i64,
}

/// The counters, shared with the functions registered on the connection.
#[derive(Clone, Default)]
pub struct ClientCounters {
    counters: Arc<Mutex<Counters>>,
}

/// What a client write statement was, for the counters it moves.
pub struct WriteKind {
    /// INSERT or REPLACE: sets the last row id.
    pub inserts: bool,
    /// INSERT, UPDATE, DELETE or REPLACE: sets `changes()`.
    pub changes_rows: bool,
}

impl ClientCounters {
    /// Registers `last_insert_rowid()`, `changes()` and `total_changes()` on `connection`,
    /// answering from these counters.
    ///
    /// # Errors
    /// If SQLite refuses the functions.
    pub fn install(connection: &Connection) -> rusqlite::Result<ClientCounters> {
        let client = ClientCounters::default();
        let flags = FunctionFlags::SQLITE_UTF8;
        for (name, read) in [
            ("last_insert_rowid", (|counters: &Counters| counters.last_insert_rowid) as fn(&Counters) -> i64),
            ("changes", |counters: &Counters| counters.changes),
            ("total_changes", |counters: &Counters| counters.total_changes),
        ] {
            let shared = client.counters.clone();
            connection.create_scalar_function(name, 0, flags, move |_| Ok(read(&shared.lock().unwrap_or_else(PoisonError::into_inner))))?;
        }
        Ok(client)
    }

    /// The row id a client sees as last inserted, once tern moved that row (multi-leader
    /// gives each region its own rowids).
    pub fn set_last_insert_rowid(&self, rowid: i64) {
        self.counters.lock().unwrap_or_else(PoisonError::into_inner).last_insert_rowid = rowid;
    }

    pub fn get(&self) -> Counters {
        *self.counters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records what a client write statement that succeeded did, read from the connection
    /// right after it (before tern writes anything of its own); `rowid_before` is the
    /// connection's last row id just before the statement ran.
    pub fn record_write(&self, connection: &Connection, rowid_before: i64, kind: &WriteKind) -> Counters {
        let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        let rowid_after = connection.last_insert_rowid();
        if kind.inserts || rowid_after != rowid_before {
            counters.last_insert_rowid = rowid_after;
        }
        if kind.changes_rows {
            counters.changes = connection.changes() as i64;
            counters.total_changes += counters.changes;
        }
        *counters
    }
}
