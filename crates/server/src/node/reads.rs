//! The read path: every read level, pooled read-only connections, and what `tern verify` compares.

use super::*;

impl Node {
    /// Serves a read at the requested consistency level.
    pub async fn read(&self, statements: Vec<Statement>, options: ReadOptions) -> ReadReply {
        let started = Instant::now();
        let level = options.level;
        let reply = self.read_at_level(statements, options).await;
        let failed = reply.results.iter().any(|result| result.error.is_some());
        crate::metrics::read_answered(&self.config.id, level.name(), crate::metrics::outcome(reply.error.as_ref(), failed), started.elapsed());
        reply
    }

    async fn read_at_level(&self, statements: Vec<Statement>, options: ReadOptions) -> ReadReply {
        match options.level {
            ReadLevel::None => {
                if let Some(freshness) = options.freshness {
                    let lag = self.lag();
                    if lag.is_none_or(|lag| lag > freshness) {
                        return read_error(503, format!("this node's data is staler than freshness={freshness:?} (lag {lag:?})"));
                    }
                }
                self.read_here(statements, false).await.0
            }
            ReadLevel::Bounded => {
                let bound = options.max_lag.unwrap_or(Duration::from_secs(1));
                if self.lag().is_some_and(|lag| lag <= bound) {
                    self.read_here(statements, false).await.0
                } else {
                    self.read_at_leader(statements, ReadLevel::Weak).await
                }
            }
            ReadLevel::Session if options.after_regions.is_some() => {
                let wanted = options.after_regions.unwrap_or_default();
                let deadline = Instant::now() + options.timeout;
                loop {
                    let holds = self.region_token().await;
                    if holds.as_ref().is_some_and(|holds| holds.dominates(&wanted)) {
                        return self.read_here(statements, false).await.0;
                    }
                    if Instant::now() >= deadline {
                        let held = holds.map_or_else(|| "unknown".to_string(), |holds| holds.to_string());
                        return read_error(
                            503,
                            format!(
                                "region {} has not applied the writes of token {wanted} within {:?} (it holds {held}); retry, or read with level=weak",
                                self.config.region, options.timeout
                            ),
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            ReadLevel::Session => {
                let after = options.after.unwrap_or(Position::ZERO);
                let mut watcher = self.published.clone();
                let holds = |published: &Published| tern_core::log_holds(&published.epoch_starts, published.last, after);
                let reached = tokio::time::timeout(options.timeout, watcher.wait_for(holds)).await.is_ok_and(|waited| waited.is_ok());
                match reached {
                    true => self.read_here(statements, false).await.0,
                    false => read_error(
                        503,
                        format!(
                            "this node has not applied position {after} within {:?} (it is at {}); retry, or read with level=weak",
                            options.timeout,
                            self.published().last
                        ),
                    ),
                }
            }
            ReadLevel::Weak | ReadLevel::Strong | ReadLevel::Linearizable => {
                if self.with_published(|published| published.is_leader) {
                    self.read_as_leader(statements, options.level).await
                } else {
                    self.read_at_leader(statements, options.level).await
                }
            }
        }
    }

    pub(super) async fn read_at_leader(&self, statements: Vec<Statement>, level: ReadLevel) -> ReadReply {
        let published = self.published();
        let leader = match &published.leader {
            Some(leader) if *leader != self.config.id => leader.clone(),
            _ => return self.read_as_leader(statements, level).await,
        };
        let user = crate::auth::acting_user();
        match self.forward(&leader, Duration::from_secs(10), |id| Frame::ForwardRead { id, statements, level, user }).await {
            Some(ForwardReply::Read(reply)) => reply,
            _ => read_error(503, format!("leader {leader} did not answer the forwarded read in time")),
        }
    }

    pub(crate) async fn read_as_leader(&self, statements: Vec<Statement>, level: ReadLevel) -> ReadReply {
        let published = self.published();
        if !published.is_leader {
            let error = self.not_accepting(&published);
            return ReadReply { results: Vec::new(), error: Some(error) };
        }
        let (reply, observed_index) = self.read_here(statements, level != ReadLevel::Weak).await;
        if reply.error.is_some() || matches!(level, ReadLevel::Weak) {
            return reply;
        }
        let (tx, rx) = oneshot::channel();
        self.post(Event::ReadBarrier { observed_index, reply: tx });
        match rx.await {
            Ok(Ok(())) => reply,
            Ok(Err(error)) => read_error(503, format!("linearizable read refused: {error}")),
            Err(_) => read_error(503, "replica loop stopped"),
        }
    }

    /// Runs the statements on a local read-only connection; returns the reply and, with
    /// `position`, the log index the read's snapshot contained (else 0: most levels need
    /// no index, and a read by key then runs one statement instead of four).
    pub(super) async fn read_here(&self, statements: Vec<Statement>, position: bool) -> (ReadReply, u64) {
        if let Some(answered) = self.read_inline(&statements, position) {
            return answered;
        }
        match self.with_reader(move |reader| reader.query(&statements).map_err(|error| error.to_string())).await {
            Ok(Ok((results, observed))) => (ReadReply { results, error: None }, observed),
            Ok(Err(error)) | Err(error) => (read_error(500, error), 0),
        }
    }

    /// Serves a short read on this async worker, with no hop to a blocking thread (which
    /// costs more than a read by key itself): on a pooled reader, within
    /// `INLINE_READ_BUDGET`. `None` when no reader is pooled, when these statements ran
    /// over the budget lately (they go to a blocking thread for a while, see
    /// `SlowReads`), or when they do now (then they are run again there: a read changes
    /// nothing). A worker is thus held at most about the budget by any read.
    fn read_inline(&self, statements: &[Statement], position: bool) -> Option<(ReadReply, u64)> {
        if self.slow_reads.lock().expect("slow reads lock").demoted(statements, Instant::now()) {
            return None;
        }
        let generation = self.reader_generation.load(Ordering::Acquire);
        let reader = self.pooled_reader(generation)?;
        let outcome = reader.query_within(statements, INLINE_READ_BUDGET, position);
        self.return_reader(generation, reader);
        match outcome {
            Ok(Some((results, observed))) => Some((ReadReply { results, error: None }, observed)),
            Ok(None) => {
                self.slow_reads.lock().expect("slow reads lock").demote(statements, Instant::now());
                None
            }
            Err(error) => Some((read_error(500, error.to_string()), 0)),
        }
    }

    /// Runs `work` on a pooled read-only connection (opened with the configured limits),
    /// off the async workers, and returns the connection to the pool.
    pub(super) async fn with_reader<T: Send + 'static>(&self, work: impl FnOnce(&Reader) -> T + Send + 'static) -> Result<T, String> {
        let generation = self.reader_generation.load(Ordering::Acquire);
        let pooled = self.pooled_reader(generation);
        let directory = self.config.data_dir.clone();
        let limits = self.config.limits;
        let outcome = tokio::task::spawn_blocking(move || {
            let reader = match pooled {
                Some(reader) => reader,
                None => Reader::open_with_limits(&directory, limits).map_err(|error| error.to_string())?,
            };
            let done = work(&reader);
            Ok::<_, String>((reader, done))
        })
        .await
        .map_err(|join_error| join_error.to_string())?;
        let (reader, done) = outcome?;
        self.return_reader(generation, reader);
        Ok(done)
    }

    /// A pooled reader opened in `generation`; older ones are dropped (a connection
    /// opened before a snapshot replaced the file still reads the old one).
    fn pooled_reader(&self, generation: u64) -> Option<Reader> {
        let mut readers = self.readers.lock().expect("readers lock");
        readers.retain(|(opened_in, _)| *opened_in == generation);
        readers.pop().map(|(_, reader)| reader)
    }

    /// Back to the pool (at most 16 kept), unless a snapshot replaced the file since it
    /// was taken.
    fn return_reader(&self, generation: u64, reader: Reader) {
        if self.reader_generation.load(Ordering::Acquire) == generation {
            let mut readers = self.readers.lock().expect("readers lock");
            if readers.len() < 16 {
                readers.push((generation, reader));
            }
        }
    }

    /// A copy of the user's database as this node holds it, in one snapshot: a SQLite
    /// file, or (`Some(tables)`) an SQL text dump of those tables (all when empty).
    pub async fn backup(&self, dump_tables: Option<Vec<String>>) -> Result<Vec<u8>, String> {
        let scratch = self.scratch_file("backup");
        self.with_reader(move |reader| match dump_tables {
            Some(tables) => reader.dump_sql(&tables).map(String::into_bytes).map_err(|error| error.to_string()),
            None => {
                let copied =
                    reader.backup_file(&scratch).map_err(|error| error.to_string()).and_then(|()| std::fs::read(&scratch).map_err(|error| error.to_string()));
                let _ = std::fs::remove_file(&scratch);
                copied
            }
        })
        .await?
    }

    /// The statements of one write that make this database hold what the SQLite file
    /// `file` holds (`/db/load`).
    pub async fn load_statements(&self, file: Vec<u8>) -> Result<Vec<String>, String> {
        let scratch = self.scratch_file("load");
        self.with_reader(move |reader| {
            let statements = std::fs::write(&scratch, &file)
                .map_err(|error| format!("cannot stage the uploaded file: {error}"))
                .and_then(|()| reader.load_statements(&scratch).map_err(|error| format!("the uploaded file cannot be read as a SQLite database: {error}")));
            let _ = std::fs::remove_file(&scratch);
            statements
        })
        .await?
    }

    /// A page of the change stream after `after`, from entries this node knows committed.
    pub async fn change_page(&self, after: tern_storage::ChangeCursor, max_events: usize) -> Result<tern_storage::ChangePage, tern_storage::ChangesError> {
        let through = self.status().await.map_or(0, |status| status.commit_index);
        self.with_reader(move |reader| reader.change_page(after, through, max_events)).await.map_err(tern_storage::ChangesError::Storage)?
    }

    /// A path in the data directory for a file that lives for one request.
    fn scratch_file(&self, purpose: &str) -> std::path::PathBuf {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        self.config.data_dir.join(format!("{purpose}-{}.tmp", NEXT.fetch_add(1, Ordering::Relaxed)))
    }

    /// Multi-leader: every write this node's database holds, per origin region (what a
    /// read here has seen, as a session token).
    pub async fn region_token(&self) -> Option<VersionVector> {
        self.with_reader(|reader| reader.region_holds().ok()).await.ok().flatten()
    }

    /// True if every statement only reads (so `/db/request` can take the read path).
    pub async fn all_read_only(&self, statements: Vec<Statement>) -> bool {
        self.with_reader(move |reader| tern_storage::all_read_only(reader, &statements)).await.unwrap_or(false)
    }

    /// How many entries the rollback store holds (0 if it cannot be read).
    pub async fn rollback_count(&self) -> u64 {
        let directory = self.config.data_dir.clone();
        if !directory.join(tern_storage::engine::ROLLBACK_FILE).exists() {
            return 0;
        }
        tokio::task::spawn_blocking(move || RollbackStore::open(&directory).and_then(|store| store.count()).unwrap_or(0)).await.unwrap_or(0)
    }

    /// The entries this node rolled back (its rollback store), oldest first.
    pub async fn rollback_entries(&self) -> Result<Vec<RolledBack>, String> {
        let directory = self.config.data_dir.clone();
        tokio::task::spawn_blocking(move || RollbackStore::open(&directory).and_then(|store| store.list()).map_err(|error| error.to_string()))
            .await
            .map_err(|error| error.to_string())?
    }

    /// What `tern verify` compares: this node's position and, read in the same
    /// transaction, per-table checksums (logical formats) or page hashes (physical).
    pub async fn verify_local(&self) -> Result<serde_json::Value, String> {
        let directory = self.config.data_dir.clone();
        let physical = self.config.log_format == tern_core::LogFormat::Physical;
        let id = self.config.id.clone();
        tokio::task::spawn_blocking(move || {
            let reader = Reader::open(&directory).map_err(|error| error.to_string())?;
            let (position, tables) = reader.checksums_at_position().map_err(|error| error.to_string())?;
            let tables: Vec<serde_json::Value> =
                tables.into_iter().map(|(name, rows, sum)| serde_json::json!({"table": name, "rows": rows, "checksum": format!("{sum:016x}")})).collect();
            let mut report = serde_json::json!({"id": id, "position": position.to_string(), "tables": tables});
            if physical {
                let (page_position, hashes) = reader.page_hashes().map_err(|error| error.to_string())?;
                report["page_position"] = serde_json::json!(page_position.to_string());
                report["pages"] = serde_json::json!(hashes.iter().map(|hash| format!("{hash:016x}")).collect::<Vec<_>>());
            }
            Ok(report)
        })
        .await
        .map_err(|error| error.to_string())?
    }

    /// Per-table `(name, rows, checksum)` of this node's data.
    pub async fn checksums(&self) -> Result<Vec<(String, u64, u64)>, String> {
        let (reply, rx) = oneshot::channel();
        if !self.storage_send(StorageCommand::Checksums { reply }) {
            return Err("storage stopped".into());
        }
        rx.await.map_err(|_| "storage stopped".to_string())?
    }

    // ---- frames from peers ----
}

pub(super) fn read_error(status: u16, message: impl Into<String>) -> ReadReply {
    ReadReply { results: Vec::new(), error: Some(RequestError::new(status, message)) }
}

/// How long a read may run on an async worker before it is handed to a blocking thread
/// (a read by key takes a few microseconds; a scan of thousands of rows, milliseconds).
const INLINE_READ_BUDGET: Duration = Duration::from_micros(500);

/// Reads that ran over `INLINE_READ_BUDGET`, by their SQL texts, each with the time it
/// may be tried inline again.
///
/// A demotion lasts `SLOW_READ_RETRY`, not for good: the budget is wall-clock time, and
/// a worker preempted in the middle of a read by key (common on a busy 2-core machine)
/// overruns it as surely as a scan does. A permanent demotion sent a hot read by key to a
/// blocking thread for the rest of the process's life, at 40% of its throughput (32k
/// reads/s before one `perf record` on the follower, 13k after). A read that really is
/// slow costs a worker one budget per `SLOW_READ_RETRY` this way.
#[derive(Default)]
pub(super) struct SlowReads {
    until: HashMap<String, Instant>,
}

const SLOW_READ_RETRY: Duration = Duration::from_secs(1);

impl SlowReads {
    /// Whether `statements` go to a blocking thread now; an expired demotion is forgotten.
    fn demoted(&mut self, statements: &[Statement], now: Instant) -> bool {
        // The key is built only when some read has been slow: most nodes never see one.
        if self.until.is_empty() {
            return false;
        }
        let key = inline_key(statements);
        match self.until.get(&key) {
            Some(until) if now < *until => true,
            Some(_) => {
                self.until.remove(&key);
                false
            }
            None => false,
        }
    }

    fn demote(&mut self, statements: &[Statement], now: Instant) {
        // Bounded: a client sending ever new slow texts only resets the memory.
        if self.until.len() >= 4096 {
            self.until.retain(|_, until| now < *until);
            if self.until.len() >= 4096 {
                self.until.clear();
            }
        }
        self.until.insert(inline_key(statements), now + SLOW_READ_RETRY);
    }
}

/// What identifies a read for `SlowReads`: its SQL texts, in order.
fn inline_key(statements: &[Statement]) -> String {
    let mut key = String::new();
    for statement in statements {
        key.push_str(&statement.sql);
        key.push('\0');
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_read_goes_to_a_blocking_thread_for_a_while_not_for_good() {
        let scan = [Statement::new("SELECT count(*) FROM t")];
        let by_key = [Statement::new("SELECT v FROM t WHERE k = ?")];
        let start = Instant::now();
        let mut slow = SlowReads::default();
        assert!(!slow.demoted(&scan, start));
        slow.demote(&scan, start);
        assert!(slow.demoted(&scan, start));
        assert!(slow.demoted(&scan, start + SLOW_READ_RETRY - Duration::from_millis(1)));
        assert!(!slow.demoted(&by_key, start), "only the texts that ran over");
        assert!(!slow.demoted(&scan, start + SLOW_READ_RETRY), "tried inline again after the retry period");
        assert!(slow.until.is_empty(), "an expired demotion is forgotten");
    }

    #[test]
    fn the_memory_of_slow_reads_is_bounded() {
        let start = Instant::now();
        let mut slow = SlowReads::default();
        for n in 0..5000 {
            slow.demote(&[Statement::new(format!("SELECT {n}"))], start);
            assert!(slow.until.len() <= 4096);
        }
        slow.demote(&[Statement::new("SELECT 'late'")], start + SLOW_READ_RETRY);
        assert!(slow.until.len() <= 4096);
        assert!(slow.demoted(&[Statement::new("SELECT 'late'")], start + SLOW_READ_RETRY));
    }
}
