//! Comparing replicas: per-table checksums and page hashes.

use super::*;
use tern_core::Fnv1a;

impl Engine {
    /// Physical format: a hash of every page of the database (FNV-1a), in page order.
    ///
    /// # Errors
    /// On a SQLite failure.
    pub fn page_hashes(&self) -> Result<Vec<u64>> {
        page_hashes(&self.connection)
    }

    /// Per-table checksums of user tables, for comparing replicas in tests and tooling.
    ///
    /// # Errors
    /// On a SQLite failure.
    pub fn table_checksums(&self) -> Result<Vec<(String, u64, u64)>> {
        if self.format == LogFormat::Physical {
            // The applying connection does not notice schema changes that arrive as pages.
            let fresh = Connection::open_with_flags(self.database_path(), OpenFlags::SQLITE_OPEN_READ_ONLY)?;
            return table_checksums(&fresh);
        }
        table_checksums(&self.connection)
    }
}

/// FNV-1a of each page of the database, in page order, read in one transaction.
///
/// # Errors
/// On a SQLite failure.
pub fn page_hashes(connection: &Connection) -> Result<Vec<u64>> {
    let mut statement = connection.prepare("SELECT data FROM sqlite_dbpage ORDER BY pgno")?;
    let mut rows = statement.query([])?;
    let mut hashes = Vec::new();
    while let Some(row) = rows.next()? {
        hashes.push(Fnv1a::hash(row.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?));
    }
    Ok(hashes)
}

/// `(table, rows, checksum)` per user table.
pub type TableChecksums = Vec<(String, u64, u64)>;

/// `(table, rows, checksum)` for every user table, in name order. The checksum is
/// order-independent over rows (FNV-1a of each row's rendered values, summed), and covers
/// each row's rowid too (tables without rowids: their columns only): a client can read
/// and address rows by rowid, so replicas must agree on them. Under multi-leader, a
/// table whose rows are named by a declared key beside the rowid gets its rowids from
/// each region's own order of inserts, so there only its columns count.
///
/// # Errors
/// On a SQLite failure.
pub fn table_checksums(connection: &Connection) -> Result<Vec<(String, u64, u64)>> {
    let tables: Vec<String> = connection
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' AND substr(name, 1, 7) <> 'sqlite_' AND substr(name, 1, 6) <> '_tern_' ORDER BY name")?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let multi_leader = has_table(connection, "_tern_region_log")?;
    let mut sums = Vec::new();
    for table in tables {
        let quoted = quote_identifier(&table);
        let rowids_are_regional = multi_leader && keys_beside_rowid(connection, &table)?.is_some();
        let columns = if rowids_are_regional { "*" } else { "_rowid_, *" };
        let mut statement = match connection.prepare(&format!("SELECT {columns} FROM {quoted}")) {
            Ok(statement) => statement,
            // WITHOUT ROWID (or a table whose columns hide every rowid name).
            Err(_) => connection.prepare(&format!("SELECT * FROM {quoted}"))?,
        };
        let columns = statement.column_count();
        let mut rows = statement.query([])?;
        let (mut count, mut sum) = (0u64, 0u64);
        while let Some(row) = rows.next()? {
            let mut hash = Fnv1a::default();
            for index in 0..columns {
                let value: Value = row.get(index)?;
                hash.write(format!("{value:?}|").as_bytes());
            }
            count += 1;
            sum = sum.wrapping_add(hash.finish());
        }
        sums.push((table, count, sum));
    }
    Ok(sums)
}
