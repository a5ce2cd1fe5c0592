//! The storage thread, SQLite's only writer: group commit under the write lease, applying, snapshots, compaction.

use super::*;

pub(super) fn stopped_leading() -> WriteReply {
    let error = RequestError::new(503, "this node stopped leading before the write could commit: retry (it was not applied)");
    WriteReply { results: Vec::new(), position: None, error: Some(error), region_write: None }
}

/// What the replica loop last decided about writes, for the storage thread to check
/// before executing a batch and again just before committing it: a lease that runs out
/// while a batch executes stops its commit.
pub(crate) struct WriteLease {
    /// The epoch this node may write in; 0: none.
    pub(super) epoch: AtomicU64,
    /// Node-clock microseconds (see `Node::now_us`) until which the lease holds.
    pub(super) until_us: AtomicU64,
    pub(super) clock: Instant,
    /// How far the log may be compacted (`Replica::compactable_through`): entries after it
    /// may still be rolled back and must stay for the rollback store.
    pub(super) compactable_through: AtomicU64,
}

impl WriteLease {
    pub(super) fn publish(&self, replica: &Replica, now: u64) {
        let (epoch, until) = replica.published_lease(now).unwrap_or((0, 0));
        self.until_us.store(until, Ordering::Release);
        self.epoch.store(epoch, Ordering::Release);
        self.compactable_through.store(replica.compactable_through(), Ordering::Release);
    }

    pub(super) fn allows(&self, epoch: u64) -> bool {
        let now = self.clock.elapsed().as_micros() as u64;
        let current = self.epoch.load(Ordering::Acquire);
        let lease = (current != 0).then(|| (current, self.until_us.load(Ordering::Acquire)));
        tern_core::single_leader::may_commit(lease, epoch, now)
    }
}

/// The storage thread's state: the only SQLite writer of this node.
pub(super) struct StorageContext {
    pub(super) engine: Engine,
    pub(super) stats: Arc<LogStats>,
    pub(super) events: mpsc::UnboundedSender<Event>,
    pub(super) write_lease: Arc<WriteLease>,
    pub(super) log_retain: u64,
    pub(super) reader_generation: Arc<AtomicU64>,
    pub(super) node_id: String,
    /// Ship the leader's entries while its commit syncs (`Event::Wrote`); off only to
    /// measure the difference.
    pub(super) ship_before_sync: bool,
}

/// Most requests committed in one transaction.
pub(super) const MAX_GROUP_COMMIT: usize = 1024;

/// A group commit stops taking requests once they hold this many bytes, so one log
/// entry (a group's changes) stays far below `wire::MAX_FRAME_BYTES` and can always be
/// shipped: with `--max-body-bytes` at most `MAX_BODY_BYTES_LIMIT`, an entry holds at
/// most about 16 + 64 MiB of statements.
pub(super) const MAX_GROUP_COMMIT_BYTES: usize = 16 << 20;

/// The largest `--max-body-bytes` a node accepts.
pub const MAX_BODY_BYTES_LIMIT: usize = 64 << 20;

impl StorageContext {
    pub(super) fn run(mut self, commands: std_mpsc::Receiver<StorageCommand>) {
        let mut queued: Option<StorageCommand> = None;
        loop {
            let first = match queued.take() {
                Some(command) => command,
                None => match commands.recv() {
                    Ok(command) => command,
                    Err(_) => return,
                },
            };
            match first {
                StorageCommand::Execute { request, requirement, epoch, reply } => {
                    let alone = tern_storage::is_maintenance(&request);
                    let mut bytes = request.approximate_bytes();
                    let mut batch = vec![(request, requirement, epoch, reply)];
                    while !alone && batch.len() < MAX_GROUP_COMMIT && bytes < MAX_GROUP_COMMIT_BYTES {
                        match commands.try_recv() {
                            // VACUUM runs outside any transaction, so it never joins a group.
                            Ok(StorageCommand::Execute { request, requirement, epoch, reply }) if !tern_storage::is_maintenance(&request) => {
                                bytes += request.approximate_bytes();
                                batch.push((request, requirement, epoch, reply))
                            }
                            Ok(other) => {
                                queued = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.execute(batch);
                }
                StorageCommand::Apply { mut entries } => {
                    while entries.len() < 8 * MAX_GROUP_COMMIT {
                        match commands.try_recv() {
                            Ok(StorageCommand::Apply { entries: more }) => entries.extend(more),
                            Ok(other) => {
                                queued = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    let before = self.engine.last();
                    match self.engine.apply(&entries) {
                        Ok(position) => {
                            self.stats.entries.fetch_add(entries.len() as u64, Ordering::Relaxed);
                            self.stats.bytes.fetch_add(entries.iter().map(|entry| entry.payload.len() as u64).sum(), Ordering::Relaxed);
                            let _ = self.events.send(Event::Persisted(position));
                            self.maybe_compact();
                        }
                        Err(error) => {
                            tracing::error!(node = %self.node_id, "cannot apply entries {}..: {error}", entries[0].index);
                            // The physical format commits entry by entry: those before the
                            // failing one are durable, and the core is told so first.
                            let durable = self.engine.last();
                            if durable.index > before.index {
                                let _ = self.events.send(Event::Persisted(durable));
                            }
                            let _ = self.events.send(Event::PersistFailed);
                        }
                    }
                }
                StorageCommand::ReadLog { to, from_index } => {
                    let entries = match self.engine.read_log(from_index, 512, 4 << 20) {
                        Ok(entries) => entries,
                        Err(error) => {
                            tracing::error!("cannot read the log: {error}");
                            Some(Vec::new())
                        }
                    };
                    let _ = self.events.send(Event::LogRead { to, from_index, entries });
                }
                StorageCommand::MakeSnapshot { to, rollback_after } => {
                    // Copied on a thread and connection of its own, so writes go on
                    // meanwhile (the physical format reads the pages in one read
                    // transaction; periodic checkpoints do not wait for it).
                    let path = self.engine.directory().join(format!("snapshot-for-{to}.db"));
                    let (format, database) = (self.engine.format(), self.engine.database_path());
                    let events = self.events.clone();
                    let node_id = self.node_id.clone();
                    let spawned = std::thread::Builder::new().name(format!("tern-snapshot-{to}")).spawn(move || {
                        match tern_storage::write_snapshot_of(format, &database, &path) {
                            Ok(position) => {
                                crate::metrics::count("tern_snapshots_sent_total", &node_id);
                                tracing::info!("snapshot at {position} made for {to}");
                                let _ = events.send(Event::SnapshotReady { to, path, position, rollback_after });
                            }
                            Err(error) => {
                                tracing::error!("cannot make a snapshot for {to}: {error}");
                                let _ = events.send(Event::SnapshotSent { to, position: None });
                            }
                        }
                    });
                    if let Err(error) = spawned {
                        tracing::error!("cannot start a snapshot thread: {error}");
                    }
                }
                StorageCommand::InstallSnapshot { path, rollback_after: None } => match self.engine.install_snapshot(&path, false) {
                    Ok(position) => {
                        self.reader_generation.fetch_add(1, Ordering::AcqRel);
                        crate::metrics::count("tern_snapshots_installed_total", &self.node_id);
                        tracing::info!("snapshot installed at {position}");
                        let _ = self.events.send(Event::SnapshotInstalled(position));
                    }
                    Err(error) => tracing::error!("cannot install snapshot: {error}"),
                },
                StorageCommand::InstallSnapshot { path, rollback_after: Some(common) } => {
                    let outcome = self.engine.roll_back_and_install(common, &path);
                    match outcome {
                        Ok((entries, position)) => {
                            self.reader_generation.fetch_add(1, Ordering::AcqRel);
                            crate::metrics::count("tern_snapshots_installed_total", &self.node_id);
                            tracing::warn!(
                                "log diverged after index {common}: {entries} entries moved to the rollback store; snapshot installed at {position}"
                            );
                            let _ = self.events.send(Event::RolledBack { position });
                        }
                        Err(error) => tracing::error!("cannot roll back after {common} and install the snapshot: {error}"),
                    }
                }
                StorageCommand::RegionHolds => match self.engine.region_holds() {
                    Ok(holds) => {
                        let _ = self.events.send(Event::RegionHolds(holds));
                    }
                    Err(error) => {
                        let _ = self.events.send(Event::RegionApplyFailed(format!("cannot read the region log: {error}")));
                    }
                },
                StorageCommand::ReadRegionWrites { to, origin, after, up_to } => match self.engine.read_region_writes(&origin, after, up_to) {
                    Ok(writes) => {
                        let writes = writes.into_iter().map(|write| Shipment { dot: write.dot, seen: write.seen, write: write.payload }).collect();
                        let _ = self.events.send(Event::RegionWritesRead { to, writes });
                    }
                    Err(error) => tracing::error!("cannot read {origin}'s writes from the region log: {error}"),
                },
                StorageCommand::ApplyRegionWrites { mut shipments, epoch } => {
                    // Writes released together (or queued meanwhile) share one commit.
                    while shipments.len() < MAX_GROUP_COMMIT {
                        match commands.try_recv() {
                            Ok(StorageCommand::ApplyRegionWrites { shipments: more, epoch: same }) if same == epoch => shipments.extend(more),
                            Ok(other) => {
                                queued = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.apply_region_writes(shipments, epoch);
                }
                StorageCommand::RegionAdmin { change, epoch, reply } => {
                    let _ = reply.send(self.region_admin(change, epoch));
                }
                StorageCommand::Checksums { reply } => {
                    let _ = reply.send(self.engine.table_checksums().map_err(|error| error.to_string()));
                }
                StorageCommand::Panic => panic!("fault injection: the storage thread was asked to panic (POST /debug/panic)"),
                StorageCommand::Shutdown { reply } => {
                    if let Err(error) = self.engine.checkpoint() {
                        tracing::warn!("checkpoint at shutdown failed: {error}");
                    }
                    drop(self.engine);
                    let _ = reply.send(());
                    return;
                }
            }
        }
    }

    pub(super) fn execute(&mut self, batch: Vec<(WriteRequest, AckRequirement, u64, oneshot::Sender<WriteReply>)>) {
        // Only while the replica loop still lets this node write in that epoch: a node
        // that lost its lease or leadership meanwhile must not extend its log.
        let lease = self.write_lease.clone();
        let (batch, refused): (Vec<_>, Vec<_>) = batch.into_iter().partition(|(_, _, epoch, _)| lease.allows(*epoch));
        for (_, _, _, reply) in refused {
            let _ = reply.send(stopped_leading());
        }
        if batch.is_empty() {
            return;
        }
        let epoch = batch[0].2;
        let batch: Vec<(WriteRequest, AckRequirement, oneshot::Sender<WriteReply>)> =
            batch.into_iter().map(|(request, requirement, _, reply)| (request, requirement, reply)).collect();
        let requests: Vec<WriteRequest> = batch.iter().map(|(request, _, _)| request.clone()).collect();
        let still_leading = || lease.allows(epoch);
        let started = Instant::now();
        let executed = self.engine.execute_batch_while(epoch, &requests, &still_leading);
        if let Ok(Executed::Committed(outcome)) = &executed {
            if let Some(entry) = outcome.entry.as_ref().filter(|_| self.ship_before_sync) {
                // The entry ships while the sync below runs; the core counts this node's
                // copy only once `appended` says it is durable.
                let _ = self.events.send(Event::Wrote { entries: vec![entry.clone()] });
            }
            if let Err(error) = self.engine.sync_commits() {
                // The commit's pages may be gone from the OS cache: its durability is
                // unknown, and retrying the sync would not tell. Stop, so the cluster
                // fails over and this node recovers from what its disk really holds.
                panic!("the leader's commit could not be synced: {error}");
            }
            crate::metrics::committed(&self.node_id, requests.len(), started.elapsed());
        }
        match executed {
            Ok(Executed::StoppedLeading) => {
                for (_, _, reply) in batch {
                    let _ = reply.send(stopped_leading());
                }
            }
            Ok(Executed::Committed(outcome)) => {
                // What a request that changed nothing saw: the batch's entry if the batch
                // made one, else every entry this node holds. It waits, as a write that
                // changed something does, until that is on as many nodes as it asked for:
                // answered at once, a rewrite of a value only the leader held yet was
                // acknowledged though a crash of the leader could still take it back.
                let seen = outcome.entry.as_ref().map_or(self.engine.last().index, |entry| entry.index);
                let mut writes = Vec::new();
                for (number, ((results, changed), (_, requirement, reply))) in outcome.results.into_iter().zip(outcome.changed).zip(batch).enumerate() {
                    if let Some(home) = outcome.homed_elsewhere.get(number).cloned().flatten() {
                        // Undone: its rows belong to another region.
                        let _ = reply.send(WriteReply { results, position: None, error: Some(RequestError::homed_in(&home)), region_write: None });
                        continue;
                    }
                    let region_write = if changed { outcome.region_writes.first().map(|write| write.dot.clone()) } else { None };
                    writes.push(PendingWrite { index: seen, region_write, requirement, results, reply });
                }
                match outcome.entry {
                    Some(entry) => self.appended(entry, writes, outcome.region_writes),
                    None if !writes.is_empty() => {
                        let _ = self.events.send(Event::Appended { entries: Vec::new(), writes, region_writes: Vec::new() });
                    }
                    None => {}
                }
            }
            Err(error) => {
                tracing::error!("write batch failed: {error}");
                if error.is_disk_full() {
                    let _ = self.events.send(Event::DiskFull);
                }
                // A statement stopped at its deadline failed the group: the others retry.
                let status = match error.kind() {
                    tern_storage::StorageErrorKind::StatementTimedOut => 503,
                    tern_storage::StorageErrorKind::EntryTooLarge => 413,
                    _ => 500,
                };
                for (_, _, reply) in batch {
                    let _ = reply.send(WriteReply {
                        results: Vec::new(),
                        position: None,
                        error: Some(RequestError::new(status, format!("storage failure: {error}"))),
                        region_write: None,
                    });
                }
            }
        }
    }

    fn appended(&mut self, entry: Entry, writes: Vec<PendingWrite>, region_writes: Vec<tern_storage::region_log::LoggedWrite>) {
        self.stats.entries.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes.fetch_add(entry.payload.len() as u64, Ordering::Relaxed);
        let _ = self.events.send(Event::Appended { entries: vec![entry], writes, region_writes });
        self.maybe_compact();
    }

    /// Region leader: applies writes from other regions as one entry of this region's
    /// log, while this node still leads `epoch`.
    fn apply_region_writes(&mut self, shipments: Vec<Shipment<Vec<u8>>>, epoch: u64) {
        let lease = self.write_lease.clone();
        let writes: Vec<_> = shipments
            .into_iter()
            .map(|shipment| tern_storage::region_log::LoggedWrite { dot: shipment.dot, seen: shipment.seen, payload: shipment.write })
            .collect();
        let first = writes.first().map(|write| write.dot.to_string()).unwrap_or_default();
        let failure = match self.engine.apply_region_writes(epoch, &writes, &|| lease.allows(epoch)) {
            Ok(Executed::Committed(batch)) => match batch.entry {
                Some(entry) => {
                    self.appended(entry, Vec::new(), batch.region_writes);
                    return;
                }
                None => format!("applying {} writes from {first} on logged nothing", writes.len()),
            },
            Ok(Executed::StoppedLeading) => format!("this node stopped leading before {} writes from {first} on were applied", writes.len()),
            Err(error) => {
                tracing::error!("cannot apply {} writes from other regions, {first} first: {error}", writes.len());
                format!("cannot apply {first}: {error}")
            }
        };
        let _ = self.events.send(Event::RegionApplyFailed(failure));
    }

    /// Region leader: a policy or a resolution, logged as one entry of this region while
    /// this node leads `epoch`.
    fn region_admin(&mut self, change: RegionChange, epoch: u64) -> Result<(Position, Option<tern_core::multi_leader::Dot>), RequestError> {
        let lease = self.write_lease.clone();
        let still_leading = || lease.allows(epoch);
        if !still_leading() {
            return Err(stopped_leading().error.unwrap_or_else(|| RequestError::new(503, "not leading")));
        }
        let executed = match change {
            RegionChange::Policy { table, policy } => self.engine.set_conflict_policy(epoch, &table, policy, &still_leading),
            RegionChange::HomeRule { table, column, directory } => self.engine.set_home_rule(epoch, &table, &column, directory, &still_leading),
            RegionChange::Resolve { table, key, values } => self.engine.resolve_conflict(epoch, &table, &key, values, &still_leading),
            RegionChange::CompactLog { floors } => self.engine.compact_region_log(epoch, &floors, &still_leading),
        };
        match executed {
            Ok(Executed::Committed(batch)) => match batch.entry {
                Some(entry) => {
                    let position = entry.position();
                    let dot = batch.region_writes.first().map(|write| write.dot.clone());
                    self.appended(entry, Vec::new(), batch.region_writes);
                    Ok((position, dot))
                }
                None => Err(RequestError::new(500, "nothing was logged")),
            },
            Ok(Executed::StoppedLeading) => Err(stopped_leading().error.unwrap_or_else(|| RequestError::new(503, "not leading"))),
            Err(error) => Err(RequestError::new(400, error.to_string())),
        }
    }

    /// Keeps the log near `log_retain` entries, compacting in steps so it is rare.
    pub(super) fn maybe_compact(&mut self) {
        let held = self.engine.last().index.saturating_sub(self.engine.first_index()) + 1;
        if held > self.log_retain + self.log_retain / 4 + 64 {
            let committed = self.write_lease.compactable_through.load(Ordering::Acquire);
            match self.engine.compact(self.log_retain, committed) {
                Ok(()) => crate::metrics::count("tern_log_compactions_total", &self.node_id),
                Err(error) => tracing::error!("log compaction failed: {error}"),
            }
        }
    }
}
