//! Multi-leader's durable per-origin log (issue 13; the server does not use it yet):
//! every write this region made or applied, by origin and number, with what its origin
//! had seen, in the database's own file. The per-origin cursors are this log's ends, so
//! recording a remote write in the same transaction as its effects makes a restart
//! neither skip nor re-apply one; the exchange reads shipments back from it, for other
//! regions (relaying included).

use crate::engine::StorageError;
use rusqlite::{params, Connection, OptionalExtension};
use tern_core::multi_leader::{Dot, VersionVector};

type Result<T> = std::result::Result<T, StorageError>;

/// One write as the log keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedWrite {
    pub dot: Dot,
    pub seen: VersionVector,
    pub payload: Vec<u8>,
}

/// Creates the log's table if it is missing.
///
/// # Errors
/// On a SQLite failure.
pub fn create(connection: &Connection) -> Result<()> {
    connection.execute_batch(
        "CREATE TABLE IF NOT EXISTS _tern_region_log (
            origin TEXT NOT NULL, seq INTEGER NOT NULL, seen BLOB NOT NULL, payload BLOB NOT NULL,
            PRIMARY KEY (origin, seq)) WITHOUT ROWID",
    )?;
    Ok(())
}

/// Records `write` on `connection` (inside the caller's transaction, beside the write's
/// effects). Only the next write of its origin's stream is taken: a gap or a duplicate is
/// refused with nothing written.
///
/// # Errors
/// If the write does not continue its origin's stream, or on a SQLite failure.
pub fn record(connection: &Connection, write: &LoggedWrite) -> Result<()> {
    let held = held_of(connection, &write.dot.region)?;
    if write.dot.seq != held + 1 {
        return Err(StorageError::new(format!("write {} does not continue {}'s stream, which ends at {held}", write.dot, write.dot.region)));
    }
    let seen = postcard::to_allocvec(&write.seen).map_err(|error| StorageError::new(format!("cannot encode what {} had seen: {error}", write.dot)))?;
    let seq = i64::try_from(write.dot.seq).map_err(|_| StorageError::new(format!("write number {} is out of range", write.dot.seq)))?;
    connection.prepare_cached("INSERT INTO _tern_region_log (origin, seq, seen, payload) VALUES (?1, ?2, ?3, ?4)")?.execute(params![
        write.dot.region,
        seq,
        seen,
        write.payload
    ])?;
    Ok(())
}

/// How far each origin's stream is held: the cursors.
///
/// # Errors
/// On a SQLite failure.
pub fn holds(connection: &Connection) -> Result<VersionVector> {
    // One index seek per origin (a skip scan), not a scan of the whole log: this runs
    // for every write a region or a device makes.
    let mut statement = connection.prepare_cached(
        "WITH RECURSIVE origins (name) AS (
            SELECT min(origin) FROM _tern_region_log
            UNION ALL
            SELECT (SELECT min(origin) FROM _tern_region_log WHERE origin > name) FROM origins WHERE name IS NOT NULL)
         SELECT name, (SELECT max(seq) FROM _tern_region_log WHERE origin = name) FROM origins WHERE name IS NOT NULL",
    )?;
    let rows = statement.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)))?;
    let mut holds = Vec::new();
    for row in rows {
        let (origin, seq) = row?;
        holds.push((origin, u64::try_from(seq).unwrap_or(0)));
    }
    Ok(holds.into_iter().collect())
}

/// `origin`'s writes numbered `after + 1 ..= up_to` that the log holds, in order.
///
/// # Errors
/// If a stored write is damaged, or on a SQLite failure.
pub fn read(connection: &Connection, origin: &str, after: u64, up_to: u64) -> Result<Vec<LoggedWrite>> {
    let bound = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
    let mut statement =
        connection.prepare_cached("SELECT seq, seen, payload FROM _tern_region_log WHERE origin = ?1 AND seq > ?2 AND seq <= ?3 ORDER BY seq")?;
    let rows = statement
        .query_map(params![origin, bound(after), bound(up_to)], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?, row.get::<_, Vec<u8>>(2)?)))?;
    let mut writes = Vec::new();
    for row in rows {
        let (seq, seen, payload) = row?;
        let dot = Dot::new(origin, u64::try_from(seq).unwrap_or(0));
        let seen = postcard::from_bytes(&seen).map_err(|error| StorageError::new(format!("the region log's record of {dot} is damaged: {error}")))?;
        writes.push(LoggedWrite { dot, seen, payload });
    }
    Ok(writes)
}

/// The oldest write of `origin` the log still holds (0: none): older ones were compacted
/// away, and a device lacking them needs a snapshot.
///
/// # Errors
/// On a SQLite failure.
pub fn first_kept(connection: &Connection, origin: &str) -> Result<u64> {
    let seq: Option<i64> =
        connection.prepare_cached("SELECT min(seq) FROM _tern_region_log WHERE origin = ?1")?.query_row([origin], |row| row.get(0)).optional()?.flatten();
    Ok(seq.map_or(0, |seq| u64::try_from(seq).unwrap_or(0)))
}

/// The statement that drops `origin`'s writes up to `through` from the log, always
/// keeping its newest (the log's end is the origin's cursor).
pub const COMPACT: &str = "DELETE FROM _tern_region_log WHERE origin = ?1 AND seq <= ?2 AND seq < (SELECT max(seq) FROM _tern_region_log WHERE origin = ?1)";

fn held_of(connection: &Connection, origin: &str) -> Result<u64> {
    let seq: Option<i64> =
        connection.prepare_cached("SELECT max(seq) FROM _tern_region_log WHERE origin = ?1")?.query_row([origin], |row| row.get(0)).optional()?.flatten();
    Ok(seq.map_or(0, |seq| u64::try_from(seq).unwrap_or(0)))
}
