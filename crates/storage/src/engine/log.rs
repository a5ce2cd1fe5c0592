//! The replication log's rows and metadata: appending, reading, compacting, epochs.

use super::*;

impl Engine {
    pub(super) fn reset_log_after(&mut self, index: u64) -> Result<()> {
        let transaction = begin_immediate(self.log())?;
        transaction.execute("DELETE FROM _tern_log", [])?;
        write_meta(&transaction, "first_index", index + 1)?;
        transaction.commit()?;
        self.first_index = index + 1;
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
            let entry = Entry { index: row.get::<_, i64>(0)? as u64, epoch: row.get::<_, i64>(1)? as u64, payload: row.get::<_, Vec<u8>>(2)?.into() };
            bytes += entry.payload.len();
            entries.push(entry);
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(Some(entries))
    }

    /// Drops log entries so that only the newest `retain` remain, but none after
    /// `committed` (the replica's `compactable_through`). Followers that need older ones
    /// get a snapshot instead.
    ///
    /// # Errors
    /// On a SQLite failure.
    pub fn compact(&mut self, retain: u64, committed: u64) -> Result<()> {
        // An entry after `committed` may still be rolled back, and the rollback store can
        // only keep what the log still holds.
        let first_kept = (self.last.index.saturating_sub(retain.max(1)) + 1).min(committed.saturating_add(1));
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

    pub(super) fn logged_epoch(&self, index: u64) -> Result<Option<u64>> {
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
}

/// The position of the newest log entry. Compaction always keeps the newest entries, so
/// the log's last row is the database's position (no separate counter to keep in step).
pub(super) fn last_logged(connection: &Connection) -> Result<Position> {
    let last = connection
        .prepare_cached("SELECT epoch, idx FROM _tern_log ORDER BY idx DESC LIMIT 1")?
        .query_row([], |row| Ok(Position::new(row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64)))
        .optional()?;
    Ok(last.unwrap_or(Position::ZERO))
}

pub(super) fn append_log(log: &Connection, entry: &Entry) -> Result<()> {
    log.prepare_cached("INSERT INTO _tern_log (idx, epoch, payload) VALUES (?1, ?2, ?3)")?.execute(params![
        entry.index as i64,
        entry.epoch as i64,
        &*entry.payload
    ])?;
    Ok(())
}

pub(super) fn read_meta(connection: &Connection, key: &str) -> Result<Option<u64>> {
    // Cached: the write path reads and writes these on every commit.
    Ok(connection
        .prepare_cached("SELECT value FROM _tern_meta WHERE key = ?1")?
        .query_row([key], |row| row.get::<_, i64>(0))
        .optional()?
        .map(|value| value as u64))
}

pub(super) fn write_meta(connection: &Connection, key: &str, value: u64) -> Result<()> {
    connection
        .prepare_cached("INSERT INTO _tern_meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value")?
        .execute(params![key, value as i64])?;
    Ok(())
}

/// Physical format: the leader writes its position into every transaction it ships.
pub(super) fn record_position(connection: &Connection, position: Position) -> Result<()> {
    connection.execute_batch("CREATE TABLE IF NOT EXISTS _tern_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")?;
    write_meta(connection, "applied_index", position.index)?;
    write_meta(connection, "applied_epoch", position.epoch)?;
    Ok(())
}
