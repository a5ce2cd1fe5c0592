//! The rollback store: entries removed from the log because a later leader lacked them.

use super::*;

/// Entries a node removed from its log because the leader of a later epoch lacked them:
/// writes an old leader accepted that never reached a majority (under `async`, some were
/// acknowledged). Kept in `rollback.db` for inspection, never silently dropped.
pub struct RollbackStore {
    connection: Connection,
}

/// One rolled-back entry, as `GET /db/rollback` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolledBack {
    pub epoch: u64,
    pub index: u64,
    /// Milliseconds since the Unix epoch when it was rolled back.
    pub rolled_back_at_ms: u64,
    pub format: String,
    /// The statements (statement format) or a summary of the row or page images.
    pub description: String,
    pub payload_bytes: u64,
}

pub const ROLLBACK_FILE: &str = "rollback.db";

impl RollbackStore {
    /// # Errors
    /// If the store cannot be opened or created.
    pub fn open(directory: &Path) -> Result<RollbackStore> {
        let connection = Connection::open(directory.join(ROLLBACK_FILE))?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.execute_batch(
            "CREATE TABLE IF NOT EXISTS rolled_back (
                 id INTEGER PRIMARY KEY, epoch INTEGER NOT NULL, idx INTEGER NOT NULL,
                 rolled_back_at_ms INTEGER NOT NULL, format TEXT NOT NULL,
                 description TEXT NOT NULL, payload BLOB NOT NULL)",
        )?;
        Ok(RollbackStore { connection })
    }

    pub(super) fn keep(&self, entries: &[Entry], format: LogFormat) -> Result<()> {
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as i64);
        let transaction = begin_immediate(&self.connection)?;
        for entry in entries {
            // Kept once: a crash after this commit but before the snapshot replaced the
            // log makes the node roll the same entries back again after restarting.
            transaction.execute(
                "INSERT INTO rolled_back (epoch, idx, rolled_back_at_ms, format, description, payload)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE NOT EXISTS (SELECT 1 FROM rolled_back WHERE epoch = ?1 AND idx = ?2)",
                params![entry.epoch as i64, entry.index as i64, now_ms, format.name(), describe_entry(&entry.payload), &*entry.payload],
            )?;
        }
        transaction.commit()?;
        Ok(())
    }

    /// Every rolled-back entry, oldest first.
    ///
    /// # Errors
    /// On a SQLite failure.
    pub fn list(&self) -> Result<Vec<RolledBack>> {
        let mut statement =
            self.connection.prepare("SELECT epoch, idx, rolled_back_at_ms, format, description, length(payload) FROM rolled_back ORDER BY id")?;
        let rows = statement.query_map([], |row| {
            Ok(RolledBack {
                epoch: row.get::<_, i64>(0)? as u64,
                index: row.get::<_, i64>(1)? as u64,
                rolled_back_at_ms: row.get::<_, i64>(2)? as u64,
                format: row.get(3)?,
                description: row.get(4)?,
                payload_bytes: row.get::<_, i64>(5)? as u64,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// # Errors
    /// On a SQLite failure.
    pub fn count(&self) -> Result<u64> {
        Ok(self.connection.query_row("SELECT count(*) FROM rolled_back", [], |row| row.get::<_, i64>(0))? as u64)
    }
}

/// A readable account of a log entry's changes.
pub(super) fn describe_entry(payload: &[u8]) -> String {
    let Ok(payload) = Payload::decode(payload) else { return "undecodable entry".to_string() };
    let parts: Vec<String> = payload
        .changes
        .iter()
        .map(|change| match change {
            Change::Sql { sql, params } => match params {
                Params::None => sql.clone(),
                params => format!("{sql} -- params {params:?}"),
            },
            Change::Rows(bytes) => format!("row images ({} bytes)", bytes.len()),
            Change::Pages { pages, .. } => format!("{} page images", pages.len()),
            Change::Vacuum => "VACUUM".to_string(),
            Change::Rowids(tables) => format!("rowids of {} rows", tables.iter().map(|(_, rows)| rows.len()).sum::<usize>()),
            Change::Origin { region, unix_ms } => format!("written in {region:?} at {unix_ms} ms"),
        })
        .collect();
    parts.join("; ")
}
