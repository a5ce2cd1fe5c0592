//! The follower's path: applying the leader's entries.

use super::*;

impl Engine {
    /// Follower: applies entries and appends them to the log durably. The logical formats
    /// apply the whole batch in one transaction; the physical format commits each entry
    /// on its own (one leader commit each), so a batch that fails part way keeps the
    /// entries before the failing one: [`Engine::last`] tells what is durable.
    ///
    /// # Errors
    /// If an entry does not continue the log, cannot be decoded or does not apply (the
    /// replicas diverged); in the logical formats nothing of the batch is applied then.
    pub fn apply(&mut self, entries: &[Entry]) -> Result<Position> {
        // Entries this node already holds (a snapshot installed meanwhile covered them)
        // are skipped: within one epoch the leader's entry at an index is the only one.
        let held = entries.iter().take_while(|entry| entry.index <= self.last.index).count();
        if let Some(last_held) = entries[..held].last() {
            // Held means the same entry: another epoch's entry at that index is a
            // divergence (this node wrote it as an old leader), never to be skipped.
            if let Some(epoch) = self.logged_epoch(last_held.index)? {
                if epoch != last_held.epoch {
                    return Err(StorageError::new(format!("entry {} conflicts with the local entry of epoch {epoch} at that index", last_held.position())));
                }
            }
        }
        let entries = &entries[held..];
        self.finish_logged_vacuum()?;
        // Logical formats only: a physical node ships VACUUM as pages, and a VACUUM entry
        // reaching one is refused whole by `apply_payload` below.
        let vacuum = vacuum_payload();
        let logged_vacuum = if self.format == LogFormat::Physical { None } else { entries.iter().position(|entry| entry.payload == vacuum) };
        if let Some(at) = logged_vacuum {
            // A VACUUM runs outside any transaction: apply what comes before it, then it
            // alone (logged first, as on the leader), then the rest.
            let (before, rest) = entries.split_at(at);
            self.apply(before)?;
            if rest[0].index != self.last.index + 1 {
                return Err(StorageError::new(format!("entry {} does not continue the log at {}", rest[0].index, self.last.index)));
            }
            self.log_and_run_vacuum(&rest[0])?;
            return self.apply(&rest[1..]);
        }
        if self.format == LogFormat::Physical && entries.len() > 1 {
            // One commit per leader commit: SQLite moves page 1's change counter once per
            // commit, so merging the leader's transactions would leave the follower's
            // counter behind and the files no longer byte-identical.
            for entry in entries {
                self.apply(std::slice::from_ref(entry))?;
            }
            return Ok(self.last);
        }
        let Some(last_entry) = entries.last() else { return Ok(self.last) };
        let transaction = begin_immediate(&self.connection)?;
        // Any early return drops `transaction`, which rolls the whole batch back.
        for (expected, entry) in (self.last.index + 1..).zip(entries) {
            if entry.index != expected {
                return Err(StorageError::new(format!("entry {} does not continue the log at {}", entry.index, expected - 1)));
            }
            self.apply_payload(&Payload::decode(&entry.payload)?)?;
            if self.separate_log.is_none() {
                append_log(&self.connection, entry)?;
            }
        }
        transaction.commit()?;
        self.last = last_entry.position();
        if self.format == LogFormat::Physical {
            forget_cached_pages(&self.connection)?;
        }
        if let Some(log) = &self.separate_log {
            // Physical: the data file already records its position; a crash before
            // this commit only shortens the log (load_position then resets it).
            crate::failpoint::hit("physical-apply-between-data-and-log")?;
            let transaction = begin_immediate(log)?;
            for entry in entries {
                append_log(&transaction, entry)?;
            }
            transaction.commit()?;
            self.commits_since_checkpoint += 1;
            if self.commits_since_checkpoint >= CHECKPOINT_EVERY_COMMITS {
                self.checkpoint_if_free()?;
            }
        }
        Ok(self.last)
    }

    pub(super) fn apply_payload(&self, payload: &Payload) -> Result<()> {
        for change in &payload.changes {
            match change {
                Change::Sql { sql, params } => {
                    let result = run_statement(&self.connection, sql, params);
                    if let Some(error) = result.error {
                        return Err(StorageError::new(format!("replicated statement failed on this replica ({error}): {sql}")));
                    }
                }
                Change::Pages { page_size, database_pages, pages } => {
                    if self.format != LogFormat::Physical {
                        return Err(StorageError::new("a physical entry reached a node running a logical log format"));
                    }
                    let local_page_size: u32 = self.connection.query_row("PRAGMA page_size", [], |row| row.get(0))?;
                    if local_page_size != *page_size {
                        return Err(StorageError::new(format!("page size {page_size} from the leader, {local_page_size} here")));
                    }
                    let count: u32 = self.connection.query_row("PRAGMA page_count", [], |row| row.get(0))?;
                    let mut write = self.connection.prepare_cached("INSERT INTO sqlite_dbpage (pgno, data) VALUES (?1, ?2)")?;
                    // Page 1 (the schema and its cookie) goes last: a statement that starts
                    // after a new schema is in place but before the pages it names are would
                    // reload it and find root pages that do not exist yet.
                    for (page, image) in pages.iter().filter(|(page, _)| *page != 1) {
                        write.execute(params![page, image])?;
                    }
                    if let Some((_, image)) = pages.iter().find(|(page, _)| *page == 1) {
                        write.execute(params![1, image])?;
                    }
                    if count > *database_pages {
                        // Inserting NULL at page N truncates the file to N-1 pages (VACUUM
                        // shrank it). It must come after every page write of the transaction.
                        write.execute(params![database_pages + 1, rusqlite::types::Null])?;
                    }
                }
                Change::Origin { .. } => {}
                Change::Rowids(tables) => self.without_triggers(|| set_rowids(&self.connection, tables))?,
                Change::Vacuum => {
                    return Err(StorageError::new(if self.format == LogFormat::Physical {
                        "a logical VACUUM entry reached a node running the physical log format"
                    } else {
                        "a VACUUM entry must be applied alone, outside any transaction"
                    }));
                }
                Change::Rows(changeset) => {
                    // The leader's triggers and foreign-key actions already ran, and their
                    // effects are in the changeset.
                    let fk_actions = self.has_foreign_key_actions()?;
                    self.without_triggers(|| Ok(apply_changeset(&self.connection, changeset, fk_actions)?))?;
                }
            }
        }
        Ok(())
    }

    /// Runs `apply` with triggers off, if the schema has any. Switching them expires every
    /// prepared statement of the connection (SQLite does so on any change of its flags),
    /// so a schema without triggers is left as it is.
    pub(super) fn without_triggers<T>(&self, apply: impl FnOnce() -> Result<T>) -> Result<T> {
        let any: bool = self
            .connection
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM main.sqlite_schema WHERE type = 'trigger') \
                 OR EXISTS (SELECT 1 FROM temp.sqlite_schema WHERE type = 'trigger')",
            )?
            .query_row([], |row| row.get(0))?;
        if !any {
            return apply();
        }
        self.connection.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, false)?;
        let applied = apply();
        self.connection.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_TRIGGER, true)?;
        applied
    }

    /// Whether some foreign key of the schema has an action (`ON DELETE CASCADE`, say),
    /// which a changeset must be applied without. Asking SQLite to leave actions out
    /// makes it reload the whole schema at the next statement, so it is asked only when
    /// there are some. Remembered per schema version.
    fn has_foreign_key_actions(&self) -> Result<bool> {
        let version: i64 = self.connection.prepare_cached("PRAGMA main.schema_version")?.query_row([], |row| row.get(0))?;
        if let Some((known, actions)) = self.foreign_key_actions.get() {
            if known == version {
                return Ok(actions);
            }
        }
        let actions: bool = self.connection.query_row(
            "SELECT EXISTS (SELECT 1 FROM main.sqlite_schema AS s, pragma_foreign_key_list(s.name) AS f \
             WHERE s.type = 'table' AND (f.on_delete NOT IN ('NO ACTION', 'RESTRICT') OR f.on_update NOT IN ('NO ACTION', 'RESTRICT')))",
            [],
            |row| row.get(0),
        )?;
        self.foreign_key_actions.set(Some((version, actions)));
        Ok(actions)
    }
}
