//! Snapshots: made on their own connection, installed crash-atomically, and rollback before install.

use super::*;

impl Engine {
    /// Keeps the log entries after `index` in the rollback store, then installs `snapshot`
    /// in place of the database (whose log it replaces); returns how many entries were
    /// rolled back and the snapshot's position.
    ///
    /// Crash-atomic: until the snapshot's rename, the database is untouched (its diverged
    /// entries and their effects together), so a crash at any step restarts the node in a
    /// state it had, and the store keeps each entry once however often this is retried.
    ///
    /// # Errors
    /// On a SQLite or file system failure; the database is then as it was.
    pub fn roll_back_and_install(&mut self, index: u64, snapshot: &Path) -> Result<(u64, Position)> {
        let rolled_back = self.keep_entries_after(index)?;
        crate::failpoint::hit("rollback-kept-before-install")?;
        let position = self.install_snapshot(snapshot, true)?;
        Ok((rolled_back, position))
    }

    /// Copies the log entries after `index` into the rollback store (`rollback.db` beside
    /// the database), durably, and returns how many there are.
    pub(super) fn keep_entries_after(&mut self, index: u64) -> Result<u64> {
        let mut entries = Vec::new();
        {
            let mut statement = self.log().prepare("SELECT idx, epoch, payload FROM _tern_log WHERE idx > ?1 ORDER BY idx")?;
            let mut rows = statement.query([index as i64])?;
            while let Some(row) = rows.next()? {
                entries.push(Entry { index: row.get::<_, i64>(0)? as u64, epoch: row.get::<_, i64>(1)? as u64, payload: row.get::<_, Vec<u8>>(2)?.into() });
            }
        }
        let store = RollbackStore::open(&self.directory)?;
        store.keep(&entries, self.format)?;
        Ok(entries.len() as u64)
    }

    /// Writes a consistent copy of the whole database (data, log and position) to `target`
    /// and returns the position it holds.
    ///
    /// # Errors
    /// On a SQLite or file system failure.
    pub fn write_snapshot(&self, target: &Path) -> Result<Position> {
        write_snapshot_of(self.format, &self.database_path(), target)
    }

    /// Replaces this node's database with a snapshot file received from the leader.
    ///
    /// # Errors
    /// If the file is not a tern database or cannot be moved into place.
    /// `after_rollback`: this node's log diverged and its entries beyond the common
    /// prefix went to the rollback store; the snapshot is installed even if it is not
    /// ahead, since the local data holds effects of entries no replica keeps.
    pub fn install_snapshot(&mut self, snapshot: &Path, after_rollback: bool) -> Result<Position> {
        {
            let check = Connection::open_with_flags(snapshot, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
            let position = database_position(&check)?;
            if position == Position::ZERO {
                return Err(StorageError::new("snapshot holds no tern log position"));
            }
            if position.index <= self.last.index && !after_rollback {
                // Entries applied since the snapshot was requested already took this node
                // past it; installing would move the node backwards and undo writes it
                // has acknowledged.
                drop(check);
                let _ = std::fs::remove_file(snapshot);
                return Ok(self.last);
            }
        }
        let database = self.database_path();
        // Fold the WAL into the file first: the WAL is deleted below, and a crash between
        // that and the rename must leave the old database whole (its acknowledged writes
        // included), not the file without its newest commits.
        self.connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        // Close our connection before the file is replaced under it.
        let placeholder = Connection::open_in_memory()?;
        let old = std::mem::replace(&mut self.connection, placeholder);
        old.close().map_err(|(_, error)| StorageError::from(error))?;
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", database.display()));
        }
        crate::failpoint::hit("snapshot-install-before-rename")?;
        std::fs::rename(snapshot, &database)?;
        if let Ok(directory) = std::fs::File::open(&self.directory) {
            let _ = directory.sync_all();
        }
        self.connection = Connection::open(&database)?;
        self.policy = ClientPolicy::install(&mut self.connection, self.format == LogFormat::Physical, self.policy.limits())?;
        self.client = ClientCounters::install(&self.connection)?;
        if self.format == LogFormat::Physical {
            configure_physical_data(&self.connection)?;
            if let Some(wal) = &mut self.wal {
                wal.reset();
            }
            let position = database_position(&self.connection)?;
            crate::failpoint::hit("snapshot-install-before-log-reset")?;
            self.reset_log_after(position.index)?;
        } else {
            configure_writer(&self.connection)?;
            self.connection.set_prepared_statement_cache_capacity(256);
        }
        self.load_position()?;
        // Multi-leader's tables and temporary tables, on the new connection.
        self.prepare_region_connection()?;
        Ok(self.last)
    }
}

/// A consistent copy of the database at `database`, made on a connection of its own so
/// the writer goes on committing meanwhile; returns the position the copy holds. Safe to
/// call from any thread.
///
/// # Errors
/// On a SQLite or file system failure.
pub fn write_snapshot_of(format: LogFormat, database: &Path, target: &Path) -> Result<Position> {
    if format == LogFormat::Physical {
        write_physical_snapshot(database, target)
    } else {
        write_logical_snapshot(database, target)
    }
}

/// Physical format: the follower's file must be the leader's, page for page, so the
/// snapshot is the raw pages, read with the position they hold in one read transaction
/// (from the WAL and the file) on a connection of its own.
pub(super) fn write_physical_snapshot(database: &Path, target: &Path) -> Result<Position> {
    use std::io::Write;
    let _ = std::fs::remove_file(target);
    let source = Connection::open_with_flags(database, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    source.busy_timeout(std::time::Duration::from_secs(10))?;
    let mut file = std::io::BufWriter::new(std::fs::File::create(target)?);
    let read = source.unchecked_transaction()?;
    let position = database_position(&read)?;
    {
        let mut statement = read.prepare("SELECT data FROM sqlite_dbpage ORDER BY pgno")?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            file.write_all(row.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?)?;
        }
    }
    drop(read);
    file.into_inner().map_err(|error| StorageError::new(error.to_string()))?.sync_all()?;
    Ok(position)
}

/// Logical formats: a consistent copy of the database at `database` (data and log) made
/// on a connection of its own, so the writer goes on committing meanwhile; returns the
/// position the copy holds (its newest log row). Safe to call from any thread.
///
/// # Errors
/// On a SQLite or file system failure.
pub fn write_logical_snapshot(database: &Path, target: &Path) -> Result<Position> {
    let _ = std::fs::remove_file(target);
    let source = Connection::open_with_flags(database, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    source.busy_timeout(std::time::Duration::from_secs(10))?;
    source.execute("VACUUM INTO ?1", [target.to_string_lossy()])?;
    drop(source);
    let copy = Connection::open_with_flags(target, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let position = database_position(&copy)?;
    drop(copy);
    std::fs::File::open(target)?.sync_all()?;
    Ok(position)
}
