//! `VACUUM` and checkpoints: the operations that run outside any transaction.

use super::*;

impl Engine {
    /// Logical formats: commits `entry` (a `VACUUM`) to the log together with a marker
    /// saying it has not run yet, then runs it. The marker makes the pair crash-safe:
    /// `VACUUM` cannot share a transaction with the log row, so a crash after the log
    /// commit leaves the marker, and the next open runs the VACUUM again (running it
    /// twice gives the same rows and rowids as once). Logging first means no replica can
    /// ever hold a renumbered table without the entry that every other replica follows.
    pub(super) fn log_and_run_vacuum(&mut self, entry: &Entry) -> Result<()> {
        let transaction = begin_immediate(&self.connection)?;
        append_log(&transaction, entry)?;
        write_meta(&transaction, VACUUM_PENDING, entry.index)?;
        transaction.commit()?;
        self.last = entry.position();
        self.vacuum_pending = true;
        crate::failpoint::hit("vacuum-logged-before-run")?;
        self.finish_logged_vacuum()
    }

    /// Runs a logged `VACUUM` that has not finished here, if any. Everything that changes
    /// the database calls this first, so no later change can see the old rowids.
    pub(super) fn finish_logged_vacuum(&mut self) -> Result<()> {
        if !self.vacuum_pending {
            return Ok(());
        }
        self.connection.execute_batch("VACUUM")?;
        self.connection.execute("DELETE FROM _tern_meta WHERE key = ?1", [VACUUM_PENDING])?;
        self.vacuum_pending = false;
        Ok(())
    }

    /// `VACUUM` (alone in its request): runs outside any transaction. The physical format
    /// ships its page images; the logical formats log it as a `Change::Vacuum` that every
    /// replica runs itself (see `log_and_run_vacuum`).
    pub(super) fn execute_maintenance(&mut self, epoch: u64, request: &WriteRequest) -> Result<Batch> {
        let refused = |error: String| {
            Ok(Batch {
                results: vec![vec![StatementResult::error(error)]],
                changed: vec![false],
                entry: None,
                region_writes: Vec::new(),
                homed_elsewhere: Vec::new(),
            })
        };
        let statement = match request.statements.as_slice() {
            [statement] => statement,
            _ => return refused(request_shape_error(request).unwrap_or_else(|| "VACUUM must be sent alone in its request".to_owned())),
        };
        if let Some(refusal) = guard::vacuum_into_refusal(&statement.sql) {
            return refused(refusal);
        }
        // Whatever SQLite would say of the text itself (an unknown schema name, a syntax
        // error) is the client's answer; nothing is logged then.
        let prepared = {
            let _client = self.policy.scope(&self.connection)?;
            self.connection.prepare(&statement.sql).map(|_| ()).map_err(|error| self.policy.explain(&error))
        };
        if let Err(error) = prepared {
            return refused(error);
        }
        if self.format != LogFormat::Physical {
            let entry = Entry { index: self.last.index + 1, epoch, payload: vacuum_payload().into() };
            let result = match self.log_and_run_vacuum(&entry) {
                Ok(()) => StatementResult::default(),
                // Logged: it is part of the log now and ships as such; this node runs it
                // again before its next change.
                Err(error) => {
                    StatementResult::error(format!("VACUUM is logged but did not finish on this node ({error}); it runs again before the next write"))
                }
            };
            return Ok(Batch { results: vec![vec![result]], changed: vec![true], entry: Some(entry), region_writes: Vec::new(), homed_elsewhere: Vec::new() });
        }
        // The whole rewritten file becomes one entry: it must fit one peer frame.
        let bytes: i64 = self.connection.query_row("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()", [], |row| row.get(0))?;
        if bytes as usize > self.max_entry_bytes {
            return refused(format!(
                "VACUUM is refused: the physical format ships the rewritten file as one log entry, and this database ({bytes} bytes) \
                 is over the {}-byte limit of one entry",
                self.max_entry_bytes
            ));
        }
        let result = run_statement(&self.connection, &statement.sql, &statement.params);
        if result.error.is_some() {
            return Ok(Batch { results: vec![vec![result]], changed: vec![false], entry: None, region_writes: Vec::new(), homed_elsewhere: Vec::new() });
        }
        let next = Position::new(epoch, self.last.index + 1);
        let transaction = begin_immediate(&self.connection)?;
        record_position(&transaction, next)?;
        transaction.commit()?;
        forget_cached_pages(&self.connection)?;
        let entry = self.log_committed_pages(epoch)?;
        self.last = entry.position();
        Ok(Batch { results: vec![vec![result]], changed: vec![true], entry: Some(entry), region_writes: Vec::new(), homed_elsewhere: Vec::new() })
    }

    /// Copies the WAL into the database file and truncates it (physical format: only
    /// called once every committed frame is durable in the log).
    ///
    /// # Errors
    /// On a SQLite failure.
    pub fn checkpoint(&mut self) -> Result<()> {
        self.connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        self.commits_since_checkpoint = 0;
        Ok(())
    }

    /// The periodic checkpoint: like `checkpoint`, but it never waits for readers (a
    /// snapshot being copied, a long query). If one holds the WAL, SQLite copies what it
    /// can and the WAL is truncated at a later try; the writer is not held up.
    pub(super) fn checkpoint_if_free(&mut self) -> Result<()> {
        self.connection.busy_timeout(std::time::Duration::ZERO)?;
        let outcome = self.connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        self.connection.busy_timeout(std::time::Duration::from_secs(10))?;
        match outcome {
            Ok(()) => {}
            Err(error) if error.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => {}
            Err(error) => return Err(error.into()),
        }
        self.commits_since_checkpoint = 0;
        Ok(())
    }
}

/// `_tern_meta` key: the index of a logged `VACUUM` that has not finished on this node.
pub(super) const VACUUM_PENDING: &str = "vacuum_pending";

/// The payload of a logged `VACUUM`, compared byte for byte to spot one without decoding.
pub(super) fn vacuum_payload() -> Vec<u8> {
    Payload { changes: vec![Change::Vacuum] }.encode()
}
