//! Multi-leader in the engine (issue 13). On a region's leader, a transaction made here
//! becomes the next write of the region's stream: its row writes go into the rows'
//! versions and, with what the region had seen, into the region log, all in the same
//! transaction and captured in the same log entry, so the region's followers hold the
//! region's state too. A write from another region is applied under the tables' conflict
//! policies, and logged, as one transaction of its own.

use super::execute::Capture;
use super::*;
use crate::capture::row::RowChange;
use crate::guard::ROWID_TRIGGER_PREFIX;
use crate::region_log::{self, LoggedWrite};
use crate::row_versions::{self, RemoteRowWrite};
use std::cell::RefCell;
use tern_core::multi_leader::{Conflict, Dot, Policy, RowWrite, Stamp, VersionVector};
use tern_core::HybridClock;

/// A remote stamp further ahead of this node's clock than this is not adopted (the write
/// still applies; only this region's clock does not jump forward with it).
const MAX_CLOCK_DRIFT_US: u64 = 60_000_000;

/// This engine's region, once it runs multi-leader.
pub(super) struct RegionState {
    name: String,
    /// Rowids this region gives rows of `INTEGER PRIMARY KEY` tables when the client
    /// leaves the key to SQLite: those equal to `.1` modulo `.0` (the number of regions,
    /// and this region's place among them), so regions never pick the same one. `None`:
    /// a device (issue 15), one of any number, which picks a free rowid at random from
    /// [`DEVICE_ROWIDS`], far above the regions' (which count up from 1).
    rowid_class: Option<(i64, i64)>,
    /// Stamps this region's writes; a `RefCell` because the write path borrows the engine
    /// shared while it runs a transaction.
    clock: RefCell<HybridClock>,
}

/// The rowids a device picks from at random (2^52 to 2^62): with many devices and many
/// rows each, two picking the same one is as likely as a UUID collision's cousin, and the
/// regions' own rowids (counting up past the largest row) have 2^62 left above them.
const DEVICE_ROWIDS: (i64, i64) = (1 << 52, 1 << 62);

/// A device's own unsynced writes, kept beside its database while a snapshot replaces it.
const UNSYNCED_FILE: &str = "unsynced-writes.bin";

/// `_tern_meta`'s key for the cluster's topology (0 single-leader, 1 multi-leader).
const TOPOLOGY: &str = "topology";

/// One row a region write sets: its table, its key values (key columns in column order)
/// and its values (`None`: deleted; a `None` column: not set, under column merge).
pub type RowValues = (String, Vec<SqlValue>, Option<Vec<Option<SqlValue>>>);

/// What one region write carries to the other regions (its dot and what it had seen
/// travel beside it): its stamp, the schema statements it ran (in order, before its
/// rows) and the rows it set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegionPayload {
    pub stamp: Stamp,
    pub schema: Vec<(String, Params)>,
    pub rows: Vec<RowValues>,
}

impl RegionPayload {
    /// # Errors
    /// If the bytes are not a region payload.
    pub fn decode(bytes: &[u8]) -> Result<RegionPayload> {
        postcard::from_bytes(bytes).map_err(|error| StorageError::new(format!("undecodable region write: {error}")))
    }

    /// The row writes of the write `dot`, which had seen `seen`.
    pub fn row_writes(&self, dot: &Dot, seen: &VersionVector) -> Vec<RemoteRowWrite> {
        self.rows
            .iter()
            .map(|(table, key, values)| {
                (table.clone(), key.clone(), RowWrite { dot: dot.clone(), stamp: self.stamp.clone(), seen: seen.clone(), values: values.clone() })
            })
            .collect()
    }
}

/// One table's rows holding losing versions: each row's key and its conflicts.
#[derive(Clone, Debug, PartialEq)]
pub struct TableConflicts {
    pub table: String,
    /// The table's columns, in order (a conflict's `column` indexes them).
    pub columns: Vec<String>,
    pub rows: Vec<(Vec<SqlValue>, Vec<Conflict<SqlValue>>)>,
    /// Rows taken out of the table because another row holds a UNIQUE value they claim.
    pub unique: Vec<row_versions::UniqueConflict>,
}

/// Every row holding losing versions or taken out by a UNIQUE clash, per table, as
/// `connection` sees the database (none if it does not run multi-leader).
pub(super) fn conflicts_in(connection: &Connection) -> Result<Vec<TableConflicts>> {
    if !has_table(connection, "_tern_row_versions")? {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for (table, _) in row_versions::tables_in_conflict(connection)? {
        let rows = row_versions::conflicts(connection, &table)?;
        let columns = row_versions::shape(connection, &table).map(|shape| shape.columns).unwrap_or_default();
        let unique = row_versions::unique_conflicts(connection, &table)?;
        found.push(TableConflicts { table, columns, rows, unique });
    }
    Ok(found)
}

/// Whether `table` keeps its rows by rowid under an `INTEGER PRIMARY KEY` (its key is
/// the rowid, so a row inserted without one gets a rowid SQLite picks).
pub(crate) fn has_rowid_key(connection: &Connection, table: &str) -> Result<bool> {
    let key: Vec<String> = connection
        .prepare_cached("SELECT type FROM main.pragma_table_info(?1) WHERE pk > 0")?
        .query_map([table], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let without_rowid: bool =
        connection.prepare_cached("SELECT count(*) > 0 FROM main.pragma_table_list(?1) WHERE wr = 1")?.query_row([table], |row| row.get(0))?;
    Ok(!without_rowid && matches!(key.as_slice(), [declared] if declared.eq_ignore_ascii_case("INTEGER")))
}

fn wall_clock_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_micros() as u64)
}

/// Whether a schema statement from another region failed only because this region
/// already has what it creates (both regions created the same table).
fn already_exists(error: &str) -> bool {
    error.contains("already exists")
}

impl Engine {
    /// Runs this engine as `region`'s replica under multi-leader: creates the region log
    /// and the row versions tables if missing. Row format only: conflicts are settled
    /// per row.
    ///
    /// # Errors
    /// Under another log format, or on a SQLite failure.
    pub fn set_region(&mut self, region: &str, regions: &[String]) -> Result<()> {
        if self.format != LogFormat::Row {
            return Err(StorageError::new(format!("multi-leader needs the row log format (regions settle conflicts per row), not {}", self.format.name())));
        }
        let mut sorted: Vec<&String> = regions.iter().collect();
        sorted.sort();
        sorted.dedup();
        let place = sorted.iter().position(|known| *known == region).ok_or_else(|| StorageError::new(format!("region {region} is not among {regions:?}")))?;
        let rowid_class = Some((sorted.len() as i64, place as i64));
        self.region = Some(RegionState { name: region.to_string(), rowid_class, clock: RefCell::new(HybridClock::new(MAX_CLOCK_DRIFT_US)) });
        self.prepare_region_connection()
    }

    /// Runs this engine as an offline-first device (issue 15): an origin of its own named
    /// `device`, whose writes become its stream (as a region's do) and which applies the
    /// cluster's writes, pulled when it syncs, under the tables' policies.
    ///
    /// # Errors
    /// Under another log format, or on a SQLite failure.
    pub fn set_device(&mut self, device: &str) -> Result<()> {
        if self.format != LogFormat::Row {
            return Err(StorageError::new("a device needs the row log format"));
        }
        self.region = Some(RegionState { name: device.to_string(), rowid_class: None, clock: RefCell::new(HybridClock::new(MAX_CLOCK_DRIFT_US)) });
        self.prepare_region_connection()?;
        // A snapshot install interrupted before the device's own writes were applied on top.
        self.apply_kept_device_writes()
    }

    /// The topology this database's cluster was made with: recorded on first start and
    /// checked on every later one, so a node restarted with the other topology is refused
    /// before it touches anything.
    ///
    /// # Errors
    /// If the database was made under the other topology, or on a SQLite failure.
    pub fn settle_topology(&mut self, topology: tern_core::Topology) -> Result<()> {
        let code = |topology: tern_core::Topology| match topology {
            tern_core::Topology::SingleLeader => 0,
            tern_core::Topology::MultiLeader => 1,
            tern_core::Topology::Leaderless => 2,
        };
        // In the log's own database: a physical follower's data file takes only its leader's pages.
        match read_meta(self.log(), TOPOLOGY)? {
            None => write_meta(self.log(), TOPOLOGY, code(topology)),
            Some(recorded) if recorded == code(topology) => Ok(()),
            Some(recorded) => {
                let other = [tern_core::Topology::SingleLeader, tern_core::Topology::MultiLeader, tern_core::Topology::Leaderless]
                    .into_iter()
                    .find(|other| code(*other) == recorded)
                    .unwrap_or(tern_core::Topology::SingleLeader);
                Err(StorageError::new(format!(
                    "this data directory belongs to a {} cluster, and this node was started with --topology {}: a cluster's topology is fixed \
                     when it is made (start it with --topology {})",
                    other.name(),
                    topology.name(),
                    other.name()
                )))
            }
        }
    }

    /// Multi-leader: creates the region's tables if missing and the writer connection's
    /// temporary tables (again after a snapshot replaced the connection).
    pub(super) fn prepare_region_connection(&self) -> Result<()> {
        if self.region.is_none() {
            return Ok(());
        }
        let transaction = begin_immediate(&self.connection)?;
        region_log::create(&self.connection)?;
        row_versions::create(&self.connection)?;
        transaction.commit()?;
        self.connection.execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS _tern_rowid_pending (tbl TEXT PRIMARY KEY);
             CREATE TEMP TABLE IF NOT EXISTS _tern_rowid_auto (tbl TEXT NOT NULL, rid INTEGER NOT NULL);",
        )?;
        Ok(())
    }

    /// After a schema statement under multi-leader: a table without a PRIMARY KEY is
    /// refused (regions name rows by their key), so the statement is undone.
    pub(super) fn keyless_table_refusal(&self) -> Result<Option<String>> {
        let keyless: Option<String> = self
            .connection
            .prepare_cached(
                "SELECT name FROM main.sqlite_schema s WHERE type = 'table' AND substr(name, 1, 7) <> 'sqlite_' AND substr(name, 1, 6) <> '_tern_'
                 AND NOT EXISTS (SELECT 1 FROM main.pragma_table_info(s.name) WHERE pk > 0) LIMIT 1",
            )?
            .query_row([], |row| row.get(0))
            .optional()?;
        Ok(keyless.map(|table| {
            format!("table {table} has no PRIMARY KEY: under multi-leader, regions name rows by their key (declare one, e.g. id INTEGER PRIMARY KEY)")
        }))
    }

    /// Before a client statement that may insert rows (region leader): the tables it
    /// inserts into whose key is the rowid get tern's temporary triggers, which note each
    /// row whose rowid SQLite picked (in a BEFORE INSERT trigger such a row's rowid reads
    /// -1; one given by the client reads as given).
    pub(super) fn prepare_region_rowids(&self, sql: &str) -> Result<()> {
        let Some(touched) = self.policy.touched(&self.connection, sql) else { return Ok(()) };
        self.connection.execute_batch("DELETE FROM temp._tern_rowid_pending; DELETE FROM temp._tern_rowid_auto;")?;
        for table in touched.inserts_into.iter().filter(|table| !table.starts_with("_tern_")) {
            if !has_rowid_key(&self.connection, table)? {
                continue;
            }
            let name = quote_identifier(table);
            let literal = format!("'{}'", table.replace('\'', "''"));
            let before = quote_identifier(&format!("{ROWID_TRIGGER_PREFIX}b_{table}"));
            let after = quote_identifier(&format!("{ROWID_TRIGGER_PREFIX}a_{table}"));
            self.connection.execute_batch(&format!(
                "CREATE TEMP TRIGGER IF NOT EXISTS {before} BEFORE INSERT ON main.{name} BEGIN
                    DELETE FROM temp._tern_rowid_pending WHERE tbl = {literal};
                    INSERT INTO temp._tern_rowid_pending SELECT {literal} WHERE NEW.rowid = -1;
                 END;
                 CREATE TEMP TRIGGER IF NOT EXISTS {after} AFTER INSERT ON main.{name} BEGIN
                    INSERT INTO temp._tern_rowid_auto SELECT {literal}, NEW.rowid
                        WHERE NEW.rowid <> -1 AND EXISTS (SELECT 1 FROM temp._tern_rowid_pending WHERE tbl = {literal});
                    DELETE FROM temp._tern_rowid_pending WHERE tbl = {literal};
                 END;"
            ))?;
        }
        Ok(())
    }

    /// After a client statement (region leader): moves each row whose rowid SQLite picked
    /// to the next free rowid of this region's class, with triggers off (the row is the
    /// statement's own, just inserted). Returns `(table, picked, placed)` per row.
    pub(super) fn place_region_rowids(&self) -> Result<Vec<(String, i64, i64)>> {
        let Some(region) = &self.region else { return Ok(Vec::new()) };
        let picked: Vec<(String, i64)> = self
            .connection
            .prepare_cached("SELECT tbl, rid FROM temp._tern_rowid_auto ORDER BY rowid")?
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        if picked.is_empty() {
            return Ok(Vec::new());
        }
        self.run_cached("DELETE FROM temp._tern_rowid_auto")?;
        self.without_triggers(|| {
            let mut placed = Vec::new();
            let Some((regions, place)) = region.rowid_class else {
                for (table, rowid) in picked {
                    let target = self.free_device_rowid(&table)?;
                    let name = quote_identifier(&table);
                    self.connection.execute(&format!("UPDATE main.{name} SET rowid = ?1 WHERE rowid = ?2"), rusqlite::params![target, rowid])?;
                    placed.push((table, rowid, target));
                }
                return Ok(placed);
            };
            for (table, rowid) in picked {
                if rowid.rem_euclid(regions) == place {
                    continue;
                }
                let name = quote_identifier(&table);
                let largest: i64 = self.connection.query_row(&format!("SELECT max(rowid) FROM main.{name}"), [], |row| row.get(0))?;
                // The smallest rowid above every row's that is in this region's class.
                let Some(base) = largest.checked_sub(largest.rem_euclid(regions)).and_then(|base| base.checked_add(place)) else { continue };
                let Some(target) = (if base > largest { Some(base) } else { base.checked_add(regions) }) else { continue };
                self.connection.execute(&format!("UPDATE main.{name} SET rowid = ?1 WHERE rowid = ?2"), rusqlite::params![target, rowid])?;
                placed.push((table, rowid, target));
            }
            Ok(placed)
        })
    }

    /// A device: a rowid of [`DEVICE_ROWIDS`] no row of `table` has, picked at random.
    fn free_device_rowid(&self, table: &str) -> Result<i64> {
        let name = quote_identifier(table);
        let (low, high) = DEVICE_ROWIDS;
        for _ in 0..16 {
            let candidate: i64 = self.connection.query_row("SELECT ?1 + abs(random() % (?2 - ?1))", rusqlite::params![low, high], |row| row.get(0))?;
            let taken: bool =
                self.connection.query_row(&format!("SELECT EXISTS (SELECT 1 FROM main.{name} WHERE rowid = ?1)"), [candidate], |row| row.get(0))?;
            if !taken {
                return Ok(candidate);
            }
        }
        Err(StorageError::new(format!("no free rowid found for a row of {table}: give its key yourself")))
    }

    /// Every write this database holds, per origin region (the durable cursors).
    ///
    /// # Errors
    /// On a SQLite failure.
    pub fn region_holds(&self) -> Result<VersionVector> {
        region_log::holds(&self.connection)
    }

    /// `origin`'s writes numbered `after + 1 ..= up_to`, for shipping.
    ///
    /// # Errors
    /// As [`region_log::read`].
    pub fn read_region_writes(&self, origin: &str, after: u64, up_to: u64) -> Result<Vec<LoggedWrite>> {
        region_log::read(&self.connection, origin, after, up_to)
    }

    /// Every row holding losing versions, per table, with its key and its conflicts.
    ///
    /// # Errors
    /// If a stored state is damaged, or on a SQLite failure.
    pub fn region_conflicts(&self) -> Result<Vec<TableConflicts>> {
        conflicts_in(&self.connection)
    }

    /// Leader, inside a batch's transaction after its requests ran: makes the batch's
    /// changes the next write of this region's stream (see the module comment). Returns
    /// its dot, or `None` if the batch changed nothing or the engine is not multi-leader.
    pub(super) fn record_region_write<'connection>(&'connection self, capture: &mut Capture<'connection>) -> Result<Option<LoggedWrite>> {
        if self.region.is_none() {
            return Ok(None);
        }
        let schema: Vec<(String, Params)> = capture
            .changes
            .iter()
            .filter_map(|change| match change {
                Change::Sql { sql, params } => Some((sql.clone(), params.clone())),
                _ => None,
            })
            .collect();
        let (dot, seen, stamp) = self.next_own_write()?;
        let mut rows: Vec<RemoteRowWrite> = Vec::new();
        for change in &capture.changes {
            if let Change::Rows(changeset) = change {
                for write in row_versions::local_writes(&self.connection, changeset.as_slice(), &dot, &stamp, &seen)? {
                    // A row written on both sides of a schema change in one batch: one
                    // write, as the transaction left it.
                    rows.retain(|(table, key, _)| !(*table == write.0 && *key == write.1));
                    rows.push(write);
                }
            }
        }
        if rows.is_empty() && schema.is_empty() {
            return Ok(None);
        }
        capture.start_rows(&self.connection)?;
        row_versions::record_local(&self.connection, &rows)?;
        let write = self.log_own_write(capture, LoggedWrite { dot, seen, payload: Vec::new() }, RegionPayload { stamp, schema, rows: values_of(rows) })?;
        Ok(Some(write))
    }

    /// Records this region's write `write` (its payload made of `payload`) in the region
    /// log, and closes off the rows captured since `capture.start_rows`.
    fn log_own_write<'connection>(
        &'connection self,
        capture: &mut Capture<'connection>,
        mut write: LoggedWrite,
        payload: RegionPayload,
    ) -> Result<LoggedWrite> {
        write.payload = postcard::to_allocvec(&payload).map_err(|error| StorageError::new(format!("cannot encode a region write: {error}")))?;
        region_log::record(&self.connection, &write)?;
        capture.flush_rows()?;
        Ok(write)
    }

    /// This region's next write: its dot, what it saw, and its stamp.
    fn next_own_write(&self) -> Result<(Dot, VersionVector, Stamp)> {
        let region = self.region.as_ref().ok_or_else(|| StorageError::new("this node does not run multi-leader"))?;
        let seen = region_log::holds(&self.connection)?;
        let dot = Dot::new(region.name.clone(), seen.get(&region.name) + 1);
        let stamp = Stamp::new(region.clock.borrow_mut().now(wall_clock_us()), region.name.clone());
        Ok((dot, seen, stamp))
    }

    /// Leader: runs `body` in one transaction whose changes (`Sql` statements it pushes,
    /// and rows recorded by the session it starts) become one log entry, committed only
    /// while `still_leading()`. `body` names the region writes the entry holds.
    fn logged_transaction(
        &mut self,
        epoch: u64,
        still_leading: &dyn Fn() -> bool,
        body: &dyn for<'connection> Fn(&'connection Engine, &mut Capture<'connection>) -> Result<Vec<LoggedWrite>>,
    ) -> Result<Executed> {
        self.finish_logged_vacuum()?;
        let batch = {
            let transaction = begin_immediate(&self.connection)?;
            let mut capture = Capture::new();
            let region_writes = body(self, &mut capture)?;
            capture.flush_rows()?;
            let mut changes = vec![self.origin()];
            changes.extend(capture.changes);
            let entry = Entry { index: self.last.index + 1, epoch, payload: Payload { changes }.encode().into() };
            append_log(&self.connection, &entry)?;
            if !still_leading() {
                return Ok(Executed::StoppedLeading);
            }
            transaction.commit()?;
            Batch { results: Vec::new(), changed: Vec::new(), entry: Some(entry), region_writes, homed_elsewhere: Vec::new() }
        };
        if let Some(entry) = &batch.entry {
            self.last = entry.position();
        }
        Ok(Executed::Committed(batch))
    }

    /// Leader of a region: applies `writes`, made in other regions (in causal order),
    /// under the conflict policies, records each in the region log (its cursor), and
    /// logs the whole as one entry for this region's followers (one fsync for many
    /// writes), committed only while `still_leading()`.
    ///
    /// # Errors
    /// If a write does not continue its origin's stream or does not fit this database,
    /// or on a SQLite failure; then none of them is applied.
    pub fn apply_region_writes(&mut self, epoch: u64, writes: &[LoggedWrite], still_leading: &dyn Fn() -> bool) -> Result<Executed> {
        if self.region.is_none() {
            return Err(StorageError::new("this node does not run multi-leader"));
        }
        let payloads = writes.iter().map(|write| RegionPayload::decode(&write.payload)).collect::<Result<Vec<_>>>()?;
        let executed = self.logged_transaction(epoch, still_leading, &|engine, capture| {
            for (write, payload) in writes.iter().zip(&payloads) {
                // Each write's rows in a changeset of their own, after a marker of where
                // and when it was made: the change stream names its origin region.
                capture.flush_rows()?;
                capture.changes.push(Change::Origin { region: write.dot.region.clone(), unix_ms: payload.stamp.time.wall_us / 1000 });
                for (sql, params) in &payload.schema {
                    let result = run_statement(&engine.connection, sql, params);
                    match result.error {
                        None => capture.changes.push(Change::Sql { sql: sql.clone(), params: params.clone() }),
                        Some(error) if already_exists(&error) => {}
                        Some(error) => return Err(StorageError::new(format!("schema change of {} failed here ({error}): {sql}", write.dot))),
                    }
                }
                if capture.session.is_none() {
                    capture.start_rows(&engine.connection)?;
                }
                row_versions::apply_transaction(&engine.connection, &payload.row_writes(&write.dot, &write.seen))?;
                region_log::record(&engine.connection, write)?;
            }
            Ok(writes.to_vec())
        })?;
        // This region's next stamps come after what it has seen.
        if let (Some(region), Some(newest)) = (&self.region, payloads.iter().map(|payload| payload.stamp.time).max()) {
            let _ = region.clock.borrow_mut().observe(newest, wall_clock_us());
        }
        Ok(executed)
    }

    /// Leader of a region: sets `table`'s conflict policy in every region (it travels as
    /// a schema statement of this region's stream). Rows keep the policy they were first
    /// written under.
    ///
    /// # Errors
    /// If the table does not exist or has no primary key, or on a SQLite failure.
    pub fn set_conflict_policy(&mut self, epoch: u64, table: &str, policy: Policy, still_leading: &dyn Fn() -> bool) -> Result<Executed> {
        row_versions::shape(&self.connection, table)?;
        let sql = "INSERT OR REPLACE INTO _tern_conflict_policy (tbl, policy) VALUES (?1, ?2)".to_string();
        let params = Params::Positional(vec![SqlValue::Text(table.to_string()), SqlValue::Text(policy.name().to_string())]);
        self.log_schema_statement(epoch, vec![(sql, params)], still_leading)
    }

    /// Leader of a region: runs tern's own statements (on its bookkeeping tables, or
    /// creating the home directory) and logs them as schema statements of this region's
    /// stream, so every region runs them.
    fn log_schema_statement(&mut self, epoch: u64, statements: Vec<(String, Params)>, still_leading: &dyn Fn() -> bool) -> Result<Executed> {
        self.logged_transaction(epoch, still_leading, &|engine, capture| {
            for (sql, params) in &statements {
                let result = run_statement(&engine.connection, sql, params);
                if let Some(error) = result.error {
                    return Err(StorageError::new(format!("{error}: {sql}")));
                }
                capture.changes.push(Change::Sql { sql: sql.clone(), params: params.clone() });
            }
            let (dot, seen, stamp) = engine.next_own_write()?;
            capture.start_rows(&engine.connection)?;
            let payload = RegionPayload { stamp, schema: statements.clone(), rows: Vec::new() };
            Ok(vec![engine.log_own_write(capture, LoggedWrite { dot: dot.clone(), seen, payload: Vec::new() }, payload)?])
        })
    }

    /// Leader of a region: gives `table`'s rows a home region in every region (it travels
    /// as a schema statement of this region's stream): the region their `column` names,
    /// or with `directory`, the region the home directory ([`row_versions::HOME_DIRECTORY`],
    /// created with the first such rule) gives the key their `column` holds. From then on
    /// only a row's home writes it; a row (or a directory key) moves by an update made at
    /// its home, which the region streams carry in order, so no two regions write it at once.
    ///
    /// # Errors
    /// If the table or column does not exist, or on a SQLite failure.
    pub fn set_home_rule(&mut self, epoch: u64, table: &str, column: &str, directory: bool, still_leading: &dyn Fn() -> bool) -> Result<Executed> {
        if directory && table == row_versions::HOME_DIRECTORY {
            return Err(StorageError::new(format!("{table} is the home directory itself: its rows are homed by their region column")));
        }
        let shape = row_versions::shape(&self.connection, table)?;
        if !shape.columns.iter().any(|known| known == column) {
            return Err(StorageError::new(format!("table {table} has no column {column:?}")));
        }
        let rule = |table: &str, column: &str, directory: bool| {
            let sql = "INSERT OR REPLACE INTO _tern_home_rule (tbl, home_column, directory) VALUES (?1, ?2, ?3)".to_string();
            (sql, Params::Positional(vec![SqlValue::Text(table.to_string()), SqlValue::Text(column.to_string()), SqlValue::Integer(i64::from(directory))]))
        };
        let mut statements = Vec::new();
        if directory {
            let create = format!("CREATE TABLE IF NOT EXISTS {} (home_key NOT NULL PRIMARY KEY, region TEXT NOT NULL)", row_versions::HOME_DIRECTORY);
            statements.push((create, Params::None));
            statements.push(rule(row_versions::HOME_DIRECTORY, "region", false));
        }
        statements.push(rule(table, column, directory));
        self.log_schema_statement(epoch, statements, still_leading)
    }

    /// Multi-leader: each homed table's rule, with the position of its column.
    pub(super) fn home_rules(&self) -> Result<Vec<(row_versions::HomeRule, usize)>> {
        if self.region.is_none() {
            return Ok(Vec::new());
        }
        let mut found = Vec::new();
        for rule in row_versions::home_rules(&self.connection)? {
            if let Ok(shape) = row_versions::shape(&self.connection, &rule.table) {
                if let Some(position) = shape.columns.iter().position(|known| *known == rule.column) {
                    found.push((rule, position));
                }
            }
        }
        Ok(found)
    }

    /// The home region, other than this one, of a row `changes` wrote: an inserted row's
    /// home as inserted; an updated or deleted row's home before the change (an update
    /// of the home column made at the home is how a row moves). Under a directory rule,
    /// the home the directory gives the row's key, as it stands after the request.
    pub(super) fn home_elsewhere(&self, changes: &[Change], rules: &[(row_versions::HomeRule, usize)]) -> Result<Option<String>> {
        let Some(region) = &self.region else { return Ok(None) };
        for change in changes {
            let Change::Rows(changeset) = change else { continue };
            for row in crate::capture::row::changed_rows(changeset)? {
                let Some((rule, column)) = rules.iter().find(|(rule, _)| rule.table == row.table) else { continue };
                let named = match &row.change {
                    RowChange::Delete => row.old.get(*column).cloned().flatten(),
                    RowChange::Update { columns } if columns.get(*column) == Some(&true) => row.old.get(*column).cloned().flatten(),
                    _ => {
                        let shape = row_versions::shape(&self.connection, &row.table)?;
                        row_versions::current_row(&self.connection, &shape, &row.key).ok().and_then(|values| values.get(*column).cloned())
                    }
                };
                let home = match named {
                    Some(key) if rule.directory => row_versions::directory_home(&self.connection, &key)?.map(SqlValue::Text),
                    named => named,
                };
                let home = match home {
                    None | Some(SqlValue::Null) => continue,
                    Some(SqlValue::Text(text)) => text,
                    Some(other) => format!("{other:?}"),
                };
                if home != region.name {
                    return Ok(Some(home));
                }
            }
        }
        Ok(None)
    }

    /// Leader of a region: drops from the region log each origin's writes up to its
    /// floor (`floors`: every region holds them, so no exchange needs them again), in a
    /// logged entry so the region's followers drop the same. A device lacking them gets a
    /// snapshot when it syncs. Each origin's newest write is always kept.
    ///
    /// # Errors
    /// On a SQLite failure.
    pub fn compact_region_log(&mut self, epoch: u64, floors: &[(String, u64)], still_leading: &dyn Fn() -> bool) -> Result<Executed> {
        self.logged_transaction(epoch, still_leading, &|engine, capture| {
            for (origin, through) in floors {
                let params = Params::Positional(vec![SqlValue::Text(origin.clone()), SqlValue::Integer(i64::try_from(*through).unwrap_or(i64::MAX))]);
                let result = run_statement(&engine.connection, region_log::COMPACT, &params);
                if let Some(error) = result.error {
                    return Err(StorageError::new(format!("compacting the region log: {error}")));
                }
                capture.changes.push(Change::Sql { sql: region_log::COMPACT.to_string(), params });
            }
            Ok(Vec::new())
        })
    }

    /// A device (issue 15) away so long that the cluster compacted writes it lacks:
    /// replaces its database with `snapshot` (a copy of a node's), keeping the device's own
    /// writes the snapshot lacks, which are applied again on top (they reach the cluster
    /// at the next push).
    ///
    /// # Errors
    /// If the file is not a tern database, or on a SQLite or file system failure.
    pub fn install_device_snapshot(&mut self, snapshot: &Path) -> Result<()> {
        let Some(device) = self.region.as_ref().map(|region| region.name.clone()) else {
            return Err(StorageError::new("only a device installs a device snapshot"));
        };
        let in_snapshot = {
            let check = Connection::open_with_flags(snapshot, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
            region_log::holds(&check)?.get(&device)
        };
        let own_held = self.region_holds()?.get(&device);
        if in_snapshot > own_held {
            return Err(StorageError::new(format!(
                "the snapshot holds writes of device {device} this device never made: another device uses this id (or this one lost its \
                 data); give each device its own id"
            )));
        }
        let unsynced = region_log::read(&self.connection, &device, in_snapshot, own_held)?;
        // Kept durably beside the database until they are applied on top of the snapshot:
        // a crash between the install and the apply must not lose them.
        let kept: Vec<(Dot, VersionVector, Vec<u8>)> = unsynced.into_iter().map(|write| (write.dot, write.seen, write.payload)).collect();
        let bytes = postcard::to_allocvec(&kept).map_err(|error| StorageError::new(format!("cannot keep the unsynced writes: {error}")))?;
        let side = self.directory.join(UNSYNCED_FILE);
        let staged = self.directory.join(format!("{UNSYNCED_FILE}.new"));
        std::fs::write(&staged, &bytes)?;
        std::fs::File::open(&staged)?.sync_all()?;
        std::fs::rename(&staged, &side)?;
        self.install_snapshot(snapshot, true)?;
        self.reset_log_after(self.last.index)?;
        self.apply_kept_device_writes()
    }

    /// A device: applies its own writes kept aside while a snapshot was installed (after
    /// a crash, at the next open), those the database does not hold yet, then drops the file.
    fn apply_kept_device_writes(&mut self) -> Result<()> {
        let side = self.directory.join(UNSYNCED_FILE);
        let bytes = match std::fs::read(&side) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(error.into()),
        };
        let kept: Vec<(Dot, VersionVector, Vec<u8>)> =
            postcard::from_bytes(&bytes).map_err(|error| StorageError::new(format!("{} is damaged: {error}", side.display())))?;
        let held = self.region_holds()?;
        let writes: Vec<LoggedWrite> =
            kept.into_iter().filter(|(dot, _, _)| !held.contains(dot)).map(|(dot, seen, payload)| LoggedWrite { dot, seen, payload }).collect();
        if !writes.is_empty() {
            self.apply_region_writes(self.last.epoch, &writes, &|| true).map_err(|error| {
                StorageError::new(format!("this device's own writes do not apply over the cluster's snapshot (kept in {}): {error}", side.display()))
            })?;
        }
        std::fs::remove_file(&side)?;
        Ok(())
    }

    /// Leader of a region: settles the conflicts of `table`'s row `key` in every region,
    /// keeping `values` (the whole row; `None`: the version shown now) as a write that
    /// has seen every version the row keeps.
    ///
    /// # Errors
    /// If the row does not exist, the values do not fit the table, or on a SQLite failure.
    pub fn resolve_conflict(
        &mut self,
        epoch: u64,
        table: &str,
        key: &[SqlValue],
        values: Option<Vec<SqlValue>>,
        still_leading: &dyn Fn() -> bool,
    ) -> Result<Executed> {
        let shape = row_versions::shape(&self.connection, table)?;
        if key.len() != shape.key.len() {
            return Err(StorageError::new(format!("{table}'s key has {} columns, not {}", shape.key.len(), key.len())));
        }
        if values.as_ref().is_some_and(|values| values.len() != shape.columns.len()) {
            return Err(StorageError::new(format!("{table} has {} columns: give a value for each", shape.columns.len())));
        }
        self.logged_transaction(epoch, still_leading, &|engine, capture| {
            let values = match &values {
                Some(values) => values.clone(),
                None => row_versions::current_row(&engine.connection, &shape, key)?,
            };
            let (dot, seen, stamp) = engine.next_own_write()?;
            capture.start_rows(&engine.connection)?;
            let write = RowWrite { dot: dot.clone(), stamp: stamp.clone(), seen: seen.clone(), values: Some(values.into_iter().map(Some).collect()) };
            row_versions::apply(&engine.connection, &shape, key, &write)?;
            let payload = RegionPayload { stamp, schema: Vec::new(), rows: vec![(table.to_string(), key.to_vec(), write.values)] };
            Ok(vec![engine.log_own_write(capture, LoggedWrite { dot: dot.clone(), seen, payload: Vec::new() }, payload)?])
        })
    }
}

/// Row writes as a payload carries them (dot, stamp and what was seen travel once).
fn values_of(rows: Vec<RemoteRowWrite>) -> Vec<RowValues> {
    rows.into_iter().map(|(table, key, write)| (table, key, write.values)).collect()
}
