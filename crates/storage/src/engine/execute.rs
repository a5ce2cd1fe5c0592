//! The leader's write path: group commits, requests, statements, and capturing them as a log entry.

use super::*;

impl Engine {
    /// Leader: executes `requests` in one durable transaction (group commit), each in its
    /// own savepoint, and appends one log entry holding the changes of the whole batch.
    ///
    /// # Errors
    /// If the transaction cannot commit; then nothing of the batch happened.
    pub fn execute_batch(&mut self, epoch: u64, requests: &[WriteRequest]) -> Result<Batch> {
        match self.execute_batch_while(epoch, requests, &|| true)? {
            Executed::Committed(batch) => {
                self.sync_commits()?;
                Ok(batch)
            }
            Executed::StoppedLeading => unreachable!("the condition is always true"),
        }
    }

    /// `execute_batch`, committing only if `still_leading()` holds just before the commit:
    /// a leader whose lease ran out while the batch executed must not extend its log.
    /// In the logical formats the commit is not synced yet: the caller ships the entry,
    /// then calls `sync_commits` before counting it durable here.
    ///
    /// # Errors
    /// If the transaction cannot commit; then nothing of the batch happened.
    pub fn execute_batch_while(&mut self, epoch: u64, requests: &[WriteRequest], still_leading: &dyn Fn() -> bool) -> Result<Executed> {
        self.finish_logged_vacuum()?;
        if let [request] = requests {
            if is_maintenance(request) {
                return self.execute_maintenance(epoch, request).map(Executed::Committed);
            }
        }
        if requests.iter().any(is_maintenance) {
            return Err(StorageError::new("VACUUM must be executed alone, not in a group commit"));
        }
        let mut batch = {
            // Logical formats commit to the WAL without its sync: the entry ships while
            // `sync_commits` makes it durable (the caller's next step). The setting cannot
            // change inside a transaction, so it is made before and restored after.
            let deferred = (self.format != LogFormat::Physical).then(|| SyncDeferred::new(&self.connection)).transpose()?;
            let transaction = begin_immediate(&self.connection)?;
            if self.format == LogFormat::Physical {
                crate::capture::row::pages_written(&self.connection, true);
            }
            let batch = self.execute_in_transaction(epoch, requests).map_err(|error| self.explain_batch_failure(error))?;
            if self.format == LogFormat::Physical {
                self.check_physical_entry_size()?;
            }
            if !still_leading() {
                return Ok(Executed::StoppedLeading);
            }
            transaction.commit()?;
            self.unsynced = deferred.is_some();
            drop(deferred);
            batch
        };
        if self.format == LogFormat::Physical && batch.changed.iter().any(|changed| *changed) {
            forget_cached_pages(&self.connection)?;
            batch.entry = Some(self.log_committed_pages(epoch)?);
        }
        if let Some(entry) = &batch.entry {
            self.last = entry.position();
        }
        Ok(Executed::Committed(batch))
    }

    /// Makes the last commit durable if it was made without its sync (`execute_batch_while`,
    /// logical formats): the WAL file is synced as `synchronous=FULL` would have at commit.
    /// Returns whether anything needed syncing.
    ///
    /// # Errors
    /// If the sync fails. The commit's durability is then unknown (its pages may be
    /// gone from the OS cache), so the caller must stop the node, not retry.
    pub fn sync_commits(&mut self) -> Result<bool> {
        if !std::mem::take(&mut self.unsynced) {
            return Ok(false);
        }
        let wal = self.directory.join(format!("{DATABASE_FILE}-wal"));
        match std::fs::File::open(&wal) {
            Ok(file) => file.sync_data().map_err(|error| StorageError::new(format!("cannot sync {}: {error}", wal.display())))?,
            // No WAL file: a checkpoint moved everything into the database file, and
            // synced it.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(StorageError::new(format!("cannot open {} to sync it: {error}", wal.display()))),
        }
        Ok(true)
    }

    /// Physical format, before commit: the entry will hold every page the transaction
    /// changed, and one too large for a peer frame could never be shipped. The pages
    /// spilled to the WAL so far, plus a full page cache of dirty pages, bound it; over the
    /// limit, the transaction is rolled back (by its guard) with the reason.
    pub(super) fn check_physical_entry_size(&self) -> Result<()> {
        let page_size: i64 = self.connection.query_row("PRAGMA page_size", [], |row| row.get(0))?;
        let cache: i64 = self.connection.query_row("PRAGMA cache_size", [], |row| row.get(0))?;
        // A negative cache size is in KiB, a positive one in pages.
        let cache_bytes = if cache < 0 { cache.unsigned_abs() * 1024 } else { cache as u64 * page_size as u64 };
        let spilled = crate::capture::row::pages_written(&self.connection, false) * page_size as u64;
        if spilled + cache_bytes > self.max_entry_bytes as u64 {
            return Err(StorageError::with_kind(
                StorageErrorKind::EntryTooLarge,
                format!(
                    "this write changes more than {} bytes of pages, over the {}-byte limit of one physical log entry: nothing was applied; \
                 split it into smaller writes",
                    spilled, self.max_entry_bytes
                ),
            ));
        }
        Ok(())
    }

    /// A client write interrupted by its deadline makes SQLite roll back the whole
    /// transaction, so the batch it shared fails as a whole: say so, so clients retry.
    pub(super) fn explain_batch_failure(&self, error: StorageError) -> StorageError {
        if self.policy.interrupted() {
            StorageError::with_kind(
                StorageErrorKind::StatementTimedOut,
                format!(
                    "a statement in this group commit ran longer than {} ms (--query-timeout-ms) and was stopped; \
                 nothing in the group was applied: retry ({error})",
                    self.policy.limits().statement_timeout.as_millis()
                ),
            )
        } else {
            error
        }
    }

    /// Physical format, leader: reads the transactions just committed from the WAL and
    /// appends them to the log as one entry (durably, before anyone is told about it).
    pub(super) fn log_committed_pages(&mut self, epoch: u64) -> Result<Entry> {
        let committed = self
            .wal
            .as_mut()
            .expect("physical engines tail their WAL")
            .read_committed()?
            .ok_or_else(|| StorageError::new("a committed transaction is missing from the WAL"))?;
        let change = Change::Pages { page_size: committed.page_size, database_pages: committed.database_pages, pages: committed.pages.into_iter().collect() };
        let entry = Entry { index: self.last.index + 1, epoch, payload: Payload { changes: vec![change] }.encode().into() };
        let transaction = begin_immediate(self.log())?;
        append_log(&transaction, &entry)?;
        transaction.commit()?;
        self.commits_since_checkpoint += 1;
        if self.commits_since_checkpoint >= CHECKPOINT_EVERY_COMMITS {
            self.checkpoint_if_free()?;
        }
        Ok(entry)
    }

    pub(super) fn run_cached(&self, sql: &str) -> Result<()> {
        self.connection.prepare_cached(sql)?.execute([])?;
        Ok(())
    }

    pub(super) fn execute_in_transaction(&self, epoch: u64, requests: &[WriteRequest]) -> Result<Batch> {
        // The row-format session starts lazily, before the first statement that changes rows.
        let mut capture = Capture::new();
        let mut results = Vec::with_capacity(requests.len());
        let mut changed = Vec::with_capacity(requests.len());
        let mut homed_elsewhere = Vec::with_capacity(requests.len());
        // Multi-leader: tables whose rows have a home region (and its column).
        let home_rules = self.home_rules()?;
        for request in requests {
            if !home_rules.is_empty() {
                // This request's rows alone, to see whose home they are.
                capture.flush_rows()?;
            }
            // Statement format: any statement may flush rows that a MIXED statement of an
            // earlier request left in the session.
            if self.format == LogFormat::Statement
                || (self.format == LogFormat::Row && request.statements.iter().any(|statement| !changes_rows(&statement.sql)))
            {
                // Close off earlier requests' row images so that rolling this request
                // back can drop exactly its own changes.
                capture.flush_rows()?;
            }
            let mark = capture.changes.len();
            self.run_cached("SAVEPOINT request")?;
            let (request_results, wrote) = self.execute_request(request, &mut capture)?;
            let failed = request_results.iter().any(|result| result.error.is_some());
            let elsewhere = if home_rules.is_empty() || (request.transaction && failed) {
                None
            } else {
                capture.flush_rows()?;
                self.home_elsewhere(&capture.changes[mark..], &home_rules)?
            };
            homed_elsewhere.push(elsewhere.clone());
            if let Some(home) = elsewhere {
                self.run_cached("ROLLBACK TO request")?;
                self.run_cached("RELEASE request")?;
                capture.changes.truncate(mark);
                changed.push(false);
                let refusal = format!("this request writes rows whose home is region {home}: only {home} writes them; send it to a node of {home}");
                results.push(request.statements.iter().map(|_| StatementResult::error(refusal.clone())).collect());
                continue;
            }
            if request.transaction && failed {
                self.run_cached("ROLLBACK TO request")?;
                self.run_cached("RELEASE request")?;
                capture.changes.truncate(mark);
                changed.push(false);
            } else {
                self.run_cached("RELEASE request")?;
                changed.push(wrote);
            }
            results.push(request_results);
        }
        capture.flush_rows()?;
        let region_write = self.record_region_write(&mut capture)?;
        if self.format == LogFormat::Physical {
            // The entry is made from the WAL after commit; the position goes into the
            // transaction itself so the data file always knows where it stands.
            if changed.iter().any(|changed| *changed) {
                record_position(&self.connection, Position::new(epoch, self.last.index + 1))?;
            }
            return Ok(Batch { results, changed, entry: None, region_writes: region_write.into_iter().collect(), homed_elsewhere });
        }
        let entry = if capture.changes.is_empty() {
            None
        } else {
            let mut changes = vec![self.origin()];
            changes.extend(capture.changes);
            let entry = Entry { index: self.last.index + 1, epoch, payload: Payload { changes }.encode().into() };
            if entry.payload.len() > self.max_entry_bytes {
                // Nothing could ship it to a follower: refuse it before it is committed.
                return Err(StorageError::with_kind(
                    StorageErrorKind::EntryTooLarge,
                    format!(
                        "the changes of this write take {} bytes, over the {}-byte limit of one log entry: split it into smaller writes",
                        entry.payload.len(),
                        self.max_entry_bytes
                    ),
                ));
            }
            append_log(&self.connection, &entry)?;
            Some(entry)
        };
        Ok(Batch { results, changed, entry, region_writes: region_write.into_iter().collect(), homed_elsewhere })
    }

    /// Executes one request's statements, returning per-statement results and whether
    /// any statement that writes succeeded. Client errors are results; only storage
    /// failures are `Err`.
    pub(super) fn execute_request<'connection>(
        &'connection self,
        request: &WriteRequest,
        capture: &mut Capture<'connection>,
    ) -> Result<(Vec<StatementResult>, bool)> {
        let mut results: Vec<StatementResult> = Vec::with_capacity(request.statements.len());
        let mut wrote = false;
        for statement in &request.statements {
            if request.transaction && results.iter().any(|result| result.error.is_some()) {
                break;
            }
            let pieces = {
                let _client = self.policy.scope(&self.connection)?;
                split_statements(&self.connection, &statement.sql)
            };
            let (result, piece_wrote) = match pieces.as_slice() {
                [_] | [] => self.execute_statement(&statement.sql, &statement.params, capture)?,
                _ if statement.params != Params::None => (StatementResult::error(PARAMETERS_NEED_ONE_STATEMENT), false),
                pieces => self.execute_pieces(pieces, capture)?,
            };
            wrote |= piece_wrote;
            results.push(result);
        }
        Ok((results, wrote))
    }

    /// Several statements in one string, run in order as SQLite would: each keeps its
    /// effects, the first that fails stops the rest, and the result is the last one's
    /// with every statement's `rows_affected` added up (or the failing one's error).
    pub(super) fn execute_pieces<'connection>(&'connection self, pieces: &[String], capture: &mut Capture<'connection>) -> Result<(StatementResult, bool)> {
        let mut wrote = false;
        let mut rows_affected = 0;
        let mut last = StatementResult::default();
        for piece in pieces {
            let (result, piece_wrote) = self.execute_statement(piece, &Params::None, capture)?;
            wrote |= piece_wrote;
            if result.error.is_some() {
                return Ok((result, wrote));
            }
            rows_affected += result.rows_affected;
            last = result;
        }
        if !last.is_query {
            last.rows_affected = rows_affected;
        }
        Ok((last, wrote))
    }

    /// One client statement on the write path: its result, and whether it changed the
    /// database. Client errors are results; only storage failures are `Err`.
    pub(super) fn execute_statement<'connection>(
        &'connection self,
        original: &str,
        params: &Params,
        capture: &mut Capture<'connection>,
    ) -> Result<(StatementResult, bool)> {
        if let Some(refusal) = guard::refusal(original) {
            return Ok((StatementResult::error(refusal), false));
        }
        // Row format ships schema statements as SQL too; of those only CREATE TABLE ...
        // AS SELECT stores values a replica would compute differently.
        let ships_values_as_sql = match self.format {
            LogFormat::Statement => self.rewrite_statements,
            LogFormat::Row => creates_table_from_select(original),
            LogFormat::Physical => false,
        };
        // Statement format: SQL is shipped only when it is deterministic once rewritten;
        // a data change that still calls a function whose value depends on when or where
        // it runs (through a view or trigger, per row, or with a computed time argument) is
        // shipped as its row images instead, as MySQL's MIXED format does.
        let mut needs_rows = false;
        let sql = if ships_values_as_sql {
            let called = self.policy.touched(&self.connection, original).map(|touched| touched.functions);
            // The client's text is evaluated in parts here, so under the client rules.
            let _client = self.policy.scope(&self.connection)?;
            match make_deterministic_calling(&self.connection, original, parameters_read_the_clock(params), called.as_deref()) {
                Ok(Some(rewritten)) => rewritten,
                Ok(None) => original.to_owned(),
                Err(_) if self.format == LogFormat::Statement && changes_rows(original) => {
                    needs_rows = true;
                    original.to_owned()
                }
                Err(refusal) => return Ok((StatementResult::error(refusal.to_string()), false)),
            }
        } else {
            original.to_owned()
        };
        if self.format == LogFormat::Statement && self.rewrite_statements && !needs_rows && changes_rows(&sql) {
            let remaining = self.policy.touched(&self.connection, &sql).unwrap_or_default();
            needs_rows = remaining.functions.iter().any(|function| is_nondeterministic_function(function))
                || remaining.inserts_into.iter().any(|table| self.picks_random_rowids(table));
        }
        // Client rules (authorizer, defensive mode, deadline) hold only while the
        // client's statement is prepared and run: tern's own statements on this
        // connection, re-prepared after a schema change, must never be refused.
        let read_only = {
            let _client = self.policy.scope(&self.connection)?;
            is_read_only(&self.connection, &sql)
        };
        if read_only {
            let _client = self.policy.scope(&self.connection)?;
            return Ok((run_client_statement(&self.connection, &self.policy, &crate::schema_view::hide_internal_schema(&sql), params), false));
        }
        let ships_as_sql = match self.format {
            LogFormat::Statement => !needs_rows,
            LogFormat::Row => !changes_rows(&sql),
            LogFormat::Physical => false,
        };
        let ships_rows = !ships_as_sql && self.format != LogFormat::Physical;
        // Tables whose rows the images would name by a declared key.
        let keyed_tables = if ships_rows { self.keyed_tables_written(&sql) } else { Vec::new() };
        if let Some(refusal) = Self::rowid_change_refusal(&keyed_tables) {
            return Ok((StatementResult::error(refusal), false));
        }
        if ships_as_sql {
            // Row images must not span a schema change: close them off first.
            capture.flush_rows()?;
        } else if self.format != LogFormat::Physical && capture.session.is_none() {
            capture.session = Some(Session::start(&self.connection)?);
        }
        if ships_rows && self.region.is_some() && changes_rows(&sql) {
            self.prepare_region_rowids(&sql)?;
        }
        // Each statement gets a savepoint so a failing one leaves no partial effects.
        self.run_cached("SAVEPOINT statement")?;
        let rowid_before = self.connection.last_insert_rowid();
        let mut result = {
            let _client = self.policy.scope(&self.connection)?;
            run_client_statement(&self.connection, &self.policy, &sql, params)
        };
        if result.error.is_none() {
            if let Some(refusal) = self.null_key_refusal(&keyed_tables)? {
                result = StatementResult::error(refusal);
            } else if ships_as_sql && self.region.is_some() {
                if let Some(refusal) = self.keyless_table_refusal()? {
                    result = StatementResult::error(refusal);
                }
            }
        }
        if result.error.is_some() {
            self.run_cached("ROLLBACK TO statement")?;
            self.run_cached("RELEASE statement")?;
            return Ok((result, false));
        }
        // Read now, before tern's own writes on this connection change them.
        let keyword = first_keyword(&sql);
        let kind = WriteKind {
            inserts: matches!(keyword.as_str(), "INSERT" | "REPLACE"),
            changes_rows: matches!(keyword.as_str(), "INSERT" | "UPDATE" | "DELETE" | "REPLACE" | "WITH"),
        };
        let counters = self.client.record_write(&self.connection, rowid_before, &kind);
        result.last_insert_id = counters.last_insert_rowid;
        if self.region.is_some() {
            for (_, picked, placed) in self.place_region_rowids()? {
                if kind.inserts && picked == result.last_insert_id {
                    result.last_insert_id = placed;
                    self.client.set_last_insert_rowid(placed);
                }
            }
        }
        result.rows_affected = counters.changes;
        self.run_cached("RELEASE statement")?;
        if ships_as_sql {
            capture.changes.push(Change::Sql { sql, params: params.clone() });
        }
        Ok((result, true))
    }
}

/// Changes captured so far in a batch: finished ones, and the open session recording rows.
pub(super) struct Capture<'connection> {
    pub(super) session: Option<Session<'connection>>,
    pub(super) changes: Vec<Change>,
}

impl<'connection> Capture<'connection> {
    pub(super) fn new() -> Capture<'connection> {
        Capture { session: None, changes: Vec::new() }
    }

    /// Closes off the rows recorded so far and starts recording anew.
    pub(super) fn start_rows(&mut self, connection: &'connection Connection) -> Result<()> {
        self.flush_rows()?;
        self.session = Some(Session::start(connection)?);
        Ok(())
    }

    /// Moves the rows recorded so far into `changes`; the caller starts a new session
    /// when more rows are to be recorded.
    pub(super) fn flush_rows(&mut self) -> Result<()> {
        if let Some(session) = self.session.take() {
            let rows = session.changeset()?;
            if !rows.is_empty() {
                let rowids = rowids_of_keyed_rows(session.connection(), &rows)?;
                self.changes.push(Change::Rows(rows));
                self.changes.extend(rowids);
            }
        }
        Ok(())
    }
}

/// `synchronous=NORMAL` for one commit: in WAL mode it writes the commit's frames without
/// syncing them (checkpoints still sync). Dropping it goes back to `FULL`, whether the
/// commit succeeded or not, so no other commit goes unsynced.
struct SyncDeferred<'a> {
    connection: &'a Connection,
}

impl<'a> SyncDeferred<'a> {
    fn new(connection: &'a Connection) -> Result<SyncDeferred<'a>> {
        // Cached statements: this runs around every group commit.
        connection.prepare_cached("PRAGMA synchronous = NORMAL")?.execute([])?;
        Ok(SyncDeferred { connection })
    }
}

impl Drop for SyncDeferred<'_> {
    fn drop(&mut self) {
        // Not an error to return: the commit may already have happened, and a later
        // commit left unsynced would break every durability promise.
        if let Err(error) = self.connection.prepare_cached("PRAGMA synchronous = FULL").and_then(|mut statement| statement.execute([])) {
            panic!("cannot restore synchronous=FULL after a commit: {error}");
        }
    }
}
