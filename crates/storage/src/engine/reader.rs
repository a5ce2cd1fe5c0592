//! Read-only connections that serve queries beside the writer.

use super::*;

/// A read-only connection for serving queries while the writer works (WAL readers see
/// the last committed state and never block the writer).
pub struct Reader {
    pub(super) connection: Connection,
    policy: ClientPolicy,
}

impl Reader {
    /// # Errors
    /// If the database cannot be opened.
    pub fn open(directory: &Path) -> Result<Reader> {
        Reader::open_with_limits(directory, Limits::default())
    }

    /// # Errors
    /// If the database cannot be opened.
    pub fn open_with_limits(directory: &Path, limits: Limits) -> Result<Reader> {
        // No SQLITE_OPEN_URI: a client's ATTACH (refused anyway) could otherwise pass
        // `file:` options.
        let mut connection = Connection::open_with_flags(directory.join(DATABASE_FILE), OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        connection.busy_timeout(std::time::Duration::from_secs(10))?;
        // Up to 16 MiB of pages per reader (SQLite's default is 2 MiB): a follower's reads by
        // key then mostly skip the pread of each page. The pool hands out the most recently
        // used reader first, so the warm ones serve. (docs/performance.md: the read path.)
        connection.pragma_update(None, "cache_size", -16384)?;
        let policy = ClientPolicy::install(&mut connection, false, limits)?;
        Ok(Reader { connection, policy })
    }

    /// Does `sql` only read? A statement that fails to prepare (or that the client rules
    /// refuse) counts as a read when it begins like one (`SELECT`, `VALUES`, `EXPLAIN`), so
    /// its error comes from the read path; any other goes to the write path. (A write that
    /// names a table this replica has not received yet fails to prepare here, and must
    /// still reach the leader.)
    pub(super) fn reads_only(&self, sql: &str) -> bool {
        self.read_only_pieces(sql).is_some()
    }

    /// The statements of `sql` (see [`split_statements`]) if every one only reads.
    pub(super) fn read_only_pieces(&self, sql: &str) -> Option<Vec<String>> {
        let _client = self.policy.scope(&self.connection).ok()?;
        let pieces = split_statements(&self.connection, sql);
        let reads_when_unprepared = |piece: &str| matches!(first_keyword(piece).as_str(), "SELECT" | "VALUES" | "EXPLAIN" | "");
        pieces
            .iter()
            .all(|piece| is_read_only(&self.connection, piece) || (reads_when_unprepared(piece) && self.connection.prepare(piece).is_err()))
            .then_some(pieces)
    }

    /// Why `sql` is not served on the read path: its own error where one of its statements
    /// does not prepare (a refused ATTACH, a table this replica lacks), else that it writes.
    fn why_not_a_read(&self, sql: &str) -> StatementResult {
        if let Ok(_client) = self.policy.scope(&self.connection) {
            for piece in split_statements(&self.connection, sql) {
                if let Err(error) = self.connection.prepare(&piece) {
                    return StatementResult::error(self.policy.explain(&error));
                }
            }
        }
        StatementResult::error("attempt to change the database in a query: send writes to /db/execute or /db/request")
    }

    /// One statement string on the read path: several statements in it run in order, and
    /// the last one's result (or the first error) is the answer.
    pub(super) fn query_one(&self, statement: &Statement) -> StatementResult {
        let Some(pieces) = self.read_only_pieces(&statement.sql) else {
            return self.why_not_a_read(&statement.sql);
        };
        if pieces.len() > 1 && statement.params != Params::None {
            return StatementResult::error(PARAMETERS_NEED_ONE_STATEMENT);
        }
        let mut last = StatementResult::default();
        for piece in &pieces {
            last = match self.policy.scope(&self.connection) {
                Ok(_client) => run_client_statement(&self.connection, &self.policy, &crate::schema_view::hide_internal_schema(piece), &statement.params),
                Err(error) => StatementResult::error(describe(&error)),
            };
            if last.error.is_some() {
                break;
            }
        }
        last
    }

    /// Runs the statements in one read transaction (one consistent snapshot) and returns
    /// their results with the log index that snapshot contains.
    ///
    /// # Errors
    /// On a SQLite failure outside the statements themselves.
    pub fn query(&self, statements: &[Statement]) -> Result<(Vec<StatementResult>, u64)> {
        let (observed, results) = self.in_read_transaction(|| {
            let observed = database_position(&self.connection).map(|position| position.index);
            (observed, statements.iter().map(|statement| self.query_one(statement)).collect())
        })?;
        Ok((results, observed?))
    }

    /// Like [`Reader::query`], but gives up as soon as one statement runs longer than
    /// `budget` (`Ok(None)`): for serving short reads on the caller's own thread, and
    /// handing the rest to a thread that may block. Reads change nothing, so the caller
    /// can run the same statements again elsewhere.
    ///
    /// With `position: false` the log index is not read (it is 0) and a lone statement
    /// with no `;` runs in its own implicit snapshot: no `BEGIN`, no position query, no
    /// `ROLLBACK`, three of the four statements a read by key otherwise runs.
    ///
    /// # Errors
    /// On a SQLite failure outside the statements themselves.
    pub fn query_within(&self, statements: &[Statement], budget: std::time::Duration, position: bool) -> Result<Option<(Vec<StatementResult>, u64)>> {
        let limits = self.policy.limits();
        self.policy.set_limits(Limits { statement_timeout: budget.min(limits.statement_timeout), ..limits });
        let run_all = || {
            let mut results = Vec::with_capacity(statements.len());
            for statement in statements {
                results.push(self.query_one(statement));
                if self.policy.interrupted() {
                    return None;
                }
            }
            Some(results)
        };
        let outcome = match statements {
            [only] if !position && !only.sql.contains(';') => Ok(run_all().map(|results| (Ok(0), results))),
            _ => self.in_read_transaction(|| {
                let observed = if position { database_position(&self.connection).map(|position| position.index) } else { Ok(0) };
                run_all().map(|results| (observed, results))
            }),
        };
        self.policy.set_limits(limits);
        match outcome? {
            Some((observed, results)) => Ok(Some((results, observed?))),
            None => Ok(None),
        }
    }

    /// Whether no transaction is open on this connection (as between reads).
    pub fn connection_is_idle(&self) -> bool {
        self.connection.is_autocommit()
    }

    /// Runs `read` in one read transaction (one snapshot of the database), ended by a
    /// guard whatever happens inside.
    pub(super) fn in_read_transaction<T>(&self, read: impl FnOnce() -> T) -> Result<T> {
        /// Ends the transaction however `read` ends (a panic included). Nothing was
        /// written: a rollback is the same as a commit, and does nothing if SQLite already
        /// ended the transaction after an error.
        struct End<'connection>(&'connection Connection);
        impl Drop for End<'_> {
            fn drop(&mut self) {
                if !self.0.is_autocommit() {
                    let _ = self.0.prepare_cached("ROLLBACK").and_then(|mut statement| statement.execute([]));
                }
            }
        }
        // Cached statements: parsing BEGIN and ROLLBACK on every read cost more than
        // the read by key itself.
        self.connection.prepare_cached("BEGIN")?.execute([])?;
        let end = End(&self.connection);
        let outcome = read();
        drop(end);
        Ok(outcome)
    }

    /// Multi-leader: every write this database holds, per origin region (empty when it
    /// holds none, or does not run multi-leader).
    ///
    /// # Errors
    /// On a SQLite failure.
    pub fn region_holds(&self) -> Result<tern_core::multi_leader::VersionVector> {
        if !has_table(&self.connection, "_tern_region_log")? {
            return Ok(tern_core::multi_leader::VersionVector::new());
        }
        crate::region_log::holds(&self.connection)
    }

    /// Multi-leader: the statement that moves `table`'s row `key` to region `to` (an
    /// update of its home column, to be made at its home) and the row's home as this
    /// replica sees it, or why there is none. In the home directory, a key not there yet
    /// is added (an insert, made at its new home).
    ///
    /// # Errors
    /// The table has no home rule, the key does not fit it, or a SQLite failure.
    pub fn home_move(&self, table: &str, key: &[SqlValue], to: &str) -> Result<(Statement, Option<String>)> {
        let rules = if has_table(&self.connection, "_tern_home_rule")? { crate::row_versions::home_rules(&self.connection)? } else { Vec::new() };
        let directory = crate::row_versions::HOME_DIRECTORY;
        let Some(rule) = rules.into_iter().find(|rule| rule.table == table) else {
            if table == directory {
                return Err(StorageError::new(
                    "there is no home directory yet: give a table a directory rule first (POST /db/homes/rule with \"directory\": true)",
                ));
            }
            return Err(StorageError::new(format!("table {table} has no home rule (POST /db/homes/rule)")));
        };
        if rule.directory {
            return Err(StorageError::new(format!(
                "{table}'s rows take their home from the directory key in their column {}: move that key (POST /db/homes/move with no \"table\")",
                rule.column
            )));
        }
        if table == directory {
            let [home_key] = key else { return Err(StorageError::new("a directory key is one value, like [42]")) };
            let sql = format!("INSERT INTO {directory} (home_key, region) VALUES (?2, ?1) ON CONFLICT (home_key) DO UPDATE SET region = excluded.region");
            let from = crate::row_versions::directory_home(&self.connection, home_key)?;
            return Ok((Statement { sql, params: Params::Positional(vec![SqlValue::Text(to.to_string()), home_key.clone()]) }, from));
        }
        let column = rule.column;
        let shape = crate::row_versions::shape(&self.connection, table)?;
        if key.len() != shape.key.len() {
            return Err(StorageError::new(format!("{table}'s key has {} column(s), not {}", shape.key.len(), key.len())));
        }
        let matches: Vec<String> =
            shape.key.iter().enumerate().map(|(place, column)| format!("{} IS ?{}", quote_identifier(&shape.columns[*column]), place + 2)).collect();
        let sql = format!("UPDATE {} SET {} = ?1 WHERE {}", quote_identifier(table), quote_identifier(&column), matches.join(" AND "));
        let position = shape.columns.iter().position(|known| *known == column);
        let from = crate::row_versions::current_row(&self.connection, &shape, key)
            .ok()
            .and_then(|values| position.and_then(|position| values.get(position).cloned()))
            .and_then(|home| if let SqlValue::Text(home) = home { Some(home) } else { None });
        let mut values = vec![SqlValue::Text(to.to_string())];
        values.extend(key.iter().cloned());
        Ok((Statement { sql, params: Params::Positional(values) }, from))
    }

    /// Device sync (issue 15): the writes this database holds that a device holding
    /// `holds` lacks, in an order it can apply them in, at most `max_writes` and about
    /// `max_bytes` of them, read in one transaction; with what this database holds, and
    /// whether more remain after this page.
    ///
    /// # Errors
    /// If the database does not run multi-leader, or on a SQLite failure.
    pub fn sync_pull(&self, holds: &tern_core::multi_leader::VersionVector, max_writes: usize, max_bytes: usize) -> Result<SyncPage> {
        if !has_table(&self.connection, "_tern_region_log")? {
            return Err(StorageError::new("this cluster does not run multi-leader: devices sync only with --topology multi-leader"));
        }
        self.in_read_transaction(|| {
            let here = crate::region_log::holds(&self.connection)?;
            let lacking: u64 = here.iter().map(|(origin, seq)| seq.saturating_sub(holds.get(origin))).sum();
            let mut candidates = Vec::new();
            for (origin, seq) in here.iter() {
                let after = holds.get(origin);
                if seq > after && crate::region_log::first_kept(&self.connection, origin)? > after + 1 {
                    // Compacted away: only a snapshot brings the device up to date.
                    return Ok(SyncPage { writes: Vec::new(), holds: here.clone(), more: false, snapshot: true });
                }
                if seq > after {
                    candidates.extend(crate::region_log::read(&self.connection, origin, after, seq.min(after.saturating_add(max_writes as u64)))?);
                }
            }
            let mut writes = crate::sync::causal_order(holds, candidates);
            let mut bytes = 0;
            let fits = writes.iter().take_while(|write| {
                bytes += write.payload.len();
                bytes <= max_bytes
            });
            let keep = fits.count().clamp(1, max_writes.max(1));
            writes.truncate(keep);
            let more = (writes.len() as u64) < lacking;
            Ok(SyncPage { writes, holds: here, more, snapshot: false })
        })?
    }

    /// Device sync: whether a device's pushed writes may enter the cluster's streams
    /// (see [`crate::sync`]).
    ///
    /// # Errors
    /// The first thing wrong with them.
    pub fn check_device_writes(&self, device: &str, writes: &[crate::region_log::LoggedWrite]) -> Result<()> {
        crate::sync::check_device_writes(&self.connection, device, writes)
    }

    /// Multi-leader: per homed table, how many rows each region is home to.
    ///
    /// # Errors
    /// On a SQLite failure.
    pub fn home_counts(&self) -> Result<Vec<(String, Vec<(Option<String>, u64)>)>> {
        if !has_table(&self.connection, "_tern_home_rule")? {
            return Ok(Vec::new());
        }
        let rules = crate::row_versions::home_rules(&self.connection)?;
        let mut counts = Vec::new();
        for rule in rules {
            let (column, table) = (quote_identifier(&rule.column), quote_identifier(&rule.table));
            let sql = if rule.directory {
                let directory = crate::row_versions::HOME_DIRECTORY;
                format!("SELECT h.region, count(*) FROM {table} t LEFT JOIN {directory} h ON h.home_key = t.{column} GROUP BY 1 ORDER BY 1")
            } else {
                format!("SELECT {column}, count(*) FROM {table} GROUP BY 1 ORDER BY 1")
            };
            let table = rule.table;
            let per_region: Vec<(Option<String>, u64)> = self
                .connection
                .prepare(&sql)?
                .query_map([], |row| Ok((row.get::<_, Option<String>>(0).ok().flatten(), row.get::<_, i64>(1)? as u64)))?
                .collect::<rusqlite::Result<_>>()?;
            counts.push((table, per_region));
        }
        Ok(counts)
    }

    /// Multi-leader: every conflict on record, read in one transaction (none if the
    /// database does not run multi-leader).
    ///
    /// # Errors
    /// If a stored state is damaged, or on a SQLite failure.
    pub fn region_conflicts(&self) -> Result<Vec<super::TableConflicts>> {
        self.in_read_transaction(|| super::regions::conflicts_in(&self.connection))?
    }

    /// # Errors
    /// On a SQLite failure.
    pub fn table_checksums(&self) -> Result<Vec<(String, u64, u64)>> {
        table_checksums(&self.connection)
    }

    /// The position this reader's database holds and the hash of each of its pages, read
    /// in one transaction.
    ///
    /// # Errors
    /// On a SQLite failure.
    pub fn page_hashes(&self) -> Result<(Position, Vec<u64>)> {
        self.in_read_transaction(|| database_position(&self.connection).and_then(|position| Ok((position, page_hashes(&self.connection)?))))?
    }

    /// The position and per-table checksums, read in one transaction.
    ///
    /// # Errors
    /// On a SQLite failure.
    pub fn checksums_at_position(&self) -> Result<(Position, TableChecksums)> {
        self.in_read_transaction(|| database_position(&self.connection).and_then(|position| Ok((position, table_checksums(&self.connection)?))))?
    }
}

/// True if every statement only reads (decided by SQLite's own `sqlite3_stmt_readonly`).
/// A statement that fails to prepare counts as a read only when it begins like one (see `Reader::reads_only`).
pub fn all_read_only(reader: &Reader, statements: &[Statement]) -> bool {
    statements.iter().all(|statement| reader.reads_only(&statement.sql))
}

/// One page of a device's pull: writes in an order it can apply them in, what the
/// cluster's node holds, and whether more remain.
#[derive(Clone, Debug)]
pub struct SyncPage {
    pub writes: Vec<crate::region_log::LoggedWrite>,
    pub holds: tern_core::multi_leader::VersionVector,
    pub more: bool,
    /// The device lacks writes this database no longer keeps (compacted): it needs a
    /// snapshot (`writes` is then empty).
    pub snapshot: bool,
}
