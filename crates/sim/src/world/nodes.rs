//! Simulated nodes: starting and crashing them, and their disks (persists that take time, are lost in a crash, and complete in order).

use super::*;

impl World {
    pub(super) fn config_for(&self, node: usize) -> Config {
        let state = &self.nodes[node];
        let mut config = Config::new(state.id.clone(), members(self.nodes.len()), state.leader.clone(), self.options.ack);
        config.epoch = state.epoch;
        config.join = state.joining;
        config.addresses = members(self.nodes.len()).into_iter().map(|id| (id.clone(), id)).collect();
        config.tail_cache_bytes = self.tail_cache_bytes;
        config.snapshot_timeout_us = 3 * SECOND;
        config.leader_priority = self.priorities[node];
        config.non_voters = self.non_voters.clone();
        if self.options.failover {
            // Slower than the server's loopback default: one-way latencies here reach 90 ms.
            config.elections = Some(ElectionConfig { tick_us: 50 * MS, election_ticks: 10, heartbeat_ticks: 2, seed: self.seed });
        }
        config
    }

    pub(super) fn start_node(&mut self, node: usize) {
        let config = self.config_for(node);
        let now = self.node_now(node);
        let state = &mut self.nodes[node];
        state.incarnation += 1;
        state.disk.recover();
        let last = state.last();
        state.next_index = last.index + 1;
        let epoch_starts = state.disk.epoch_starts();
        state.replica = Some(Replica::start(config, last, epoch_starts, state.saved_election.as_ref(), now));
        state.armed_at = None;
        trace!(self, "start {} at {last}", self.nodes[node].id);
        self.drain(node);
        self.arm_timer(node);
    }

    pub(super) fn crash_node(&mut self, node: usize) {
        let state = &mut self.nodes[node];
        state.replica = None;
        state.incarnation += 1;
        state.armed_at = None;
        state.persists.clear();
        state.sessions.clear();
        state.write_tags.clear();
        state.read_tags.clear();
        state.paused_until = None;
        trace!(self, "crash {} (durable at {})", self.nodes[node].id, self.nodes[node].last());
    }

    pub(super) fn enqueue_persist(&mut self, node: usize, persist: Persist) {
        let stalled = self.nodes[node].disk_stalled_until;
        let fsync = self.rng.range(200, 1_500);
        let previous = self.nodes[node].persists.back().map_or(0, |(done, _)| *done);
        // A stalled disk still takes writes (a leader's commit lands in the page cache
        // and ships) but its syncs wait out the stall.
        let starts_at = previous.max(self.now);
        let done_at = starts_at.max(stalled) + fsync;
        let incarnation = self.nodes[node].incarnation;
        if matches!(persist, Persist::LeaderWrite { .. }) {
            self.schedule(starts_at - self.now, Event::LeaderCommit { node, incarnation });
        }
        self.nodes[node].persists.push_back((done_at, persist));
        self.schedule(done_at - self.now, Event::PersistDone { node, incarnation });
    }

    pub(super) fn complete_persist(&mut self, node: usize) {
        let Some((_, persist)) = self.nodes[node].persists.pop_front() else { return };
        let now = self.node_now(node);
        match persist {
            Persist::LeaderWrite { entry, stage: WriteStage::Written, requirement, client, op } => {
                // Committed and shipped at `commit_leader_write`; now synced. Nothing
                // else reached the disk meanwhile (it works in order), so it continues the log.
                let Some(entry) = self.nodes[node].disk.append_own(entry.epoch, entry.index, entry.payload.to_vec()) else {
                    self.observations.mismatched_applies.push(format!("{} could not sync its own written entry {}", self.nodes[node].id, entry.position()));
                    return;
                };
                self.compact_if_due(node);
                let state = &mut self.nodes[node];
                let tag = state.next_tag;
                state.next_tag += 1;
                state.write_tags.insert(tag, (client, op));
                let index = entry.index;
                state
                    .replica
                    .as_mut()
                    .expect("persists only complete on running nodes")
                    .handle(ReplicaEvent::LeaderAppended { entries: vec![entry], waiters: vec![(tag, index, requirement)] }, now);
            }
            Persist::LeaderWrite { .. } => {
                // Refused at commit (and answered then).
            }
            Persist::LeaderRewrite { client, op, requirement } => {
                // It changed nothing: no entry, and it waits for the copies of the last
                // entry on this disk, the state it saw.
                let seen = self.nodes[node].last().index;
                let state = &mut self.nodes[node];
                let tag = state.next_tag;
                state.next_tag += 1;
                state.write_tags.insert(tag, (client, op));
                state
                    .replica
                    .as_mut()
                    .expect("persists only complete on running nodes")
                    .handle(ReplicaEvent::LeaderAppended { entries: Vec::new(), waiters: vec![(tag, seen, requirement)] }, now);
            }
            Persist::Follower { entries } => {
                // The disk skips entries it already holds (a snapshot covered them); the
                // rest must be what the leader created there.
                let held = self.nodes[node].last().index;
                for entry in entries.iter().filter(|entry| entry.index > held) {
                    match self.observations.created.get(&(entry.epoch, entry.index)) {
                        Some(write_id) if *write_id == decode(&entry.payload).0 => {}
                        other => self.observations.mismatched_applies.push(format!(
                            "{} persisted entry {} (write {}) but the leader created {:?} there",
                            self.nodes[node].id,
                            entry.position(),
                            decode(&entry.payload).0,
                            other
                        )),
                    }
                }
                let last = match self.nodes[node].disk.persist(&entries) {
                    Ok(last) => last,
                    Err(refused) => {
                        // The core must never hand the driver a persist the disk refuses.
                        self.observations.mismatched_applies.push(format!("{} {refused}", self.nodes[node].id));
                        return;
                    }
                };
                self.compact_if_due(node);
                self.nodes[node].replica.as_mut().expect("running").handle(ReplicaEvent::Persisted(last), now);
            }
            Persist::Snapshot { entries, position, rollback_after: Some(common) } => {
                let (rolled_back, position) = self.nodes[node].disk.roll_back_and_install(common, SimSnapshot { entries, position });
                trace!(self, "{} rolls back {rolled_back} entries after {common}, installs snapshot at {position}", self.nodes[node].id);
                self.nodes[node].replica.as_mut().expect("running").handle(ReplicaEvent::RolledBack(position), now);
            }
            Persist::Snapshot { entries, position, rollback_after: None } => match self.nodes[node].disk.install_snapshot(SimSnapshot { entries, position }) {
                Installed::Dropped(last) => {
                    trace!(self, "{} dropped snapshot at {position}: already at {last}", self.nodes[node].id);
                    self.nodes[node].replica.as_mut().expect("running").handle(ReplicaEvent::SnapshotInstalled(last), now);
                }
                Installed::Replaced(position) => {
                    trace!(self, "{} installed snapshot at {position}", self.nodes[node].id);
                    self.nodes[node].replica.as_mut().expect("running").handle(ReplicaEvent::SnapshotInstalled(position), now);
                }
            },
        }
        self.answer_sessions(node);
        self.drain(node);
    }

    /// The disk starts on the first queued leader write: the storage commits it only
    /// under the rule the server's storage thread applies (`may_commit`: the lease of the
    /// epoch it was started in still holds), and only if it continues the log (the
    /// disk's rule). Committed, it ships at once (`LeaderWrote`) while its sync runs; a
    /// crash before the sync ends loses it here (the model's power loss), though
    /// followers may hold it.
    pub(super) fn commit_leader_write(&mut self, node: usize) {
        let now = self.node_now(node);
        let last = self.nodes[node].disk.last();
        let Some(replica) = self.nodes[node].replica.as_ref() else { return };
        let lease = replica.published_lease(now);
        let state = &mut self.nodes[node];
        let Some(Persist::LeaderWrite { entry, stage, client, op, .. }) =
            state.persists.iter_mut().map(|(_, persist)| persist).find(|persist| matches!(persist, Persist::LeaderWrite { stage: WriteStage::Queued, .. }))
        else {
            return;
        };
        let (client, op) = (*client, *op);
        let commits = tern_core::single_leader::may_commit(lease, entry.epoch, now) && entry.index == last.index + 1;
        if !commits {
            *stage = WriteStage::Refused;
            let (write, position) = (decode(&entry.payload).0, entry.position());
            trace!(self, "{} drops write {write} at {position}: no longer leading", self.nodes[node].id);
            self.reply(node, client, op, Reply::WriteFailed);
            return;
        }
        *stage = WriteStage::Written;
        let entry = entry.clone();
        state.replica.as_mut().expect("running").handle(ReplicaEvent::LeaderWrote { entries: vec![entry] }, now);
        self.drain(node);
    }

    /// Compaction keeps the newest COMPACTION_KEEP entries shippable, once twice as many
    /// are, and every entry not yet committed (as the server compacts its engine now and then).
    fn compact_if_due(&mut self, node: usize) {
        let Some(committed) = self.nodes[node].replica.as_ref().map(Replica::compactable_through) else { return };
        let disk = &mut self.nodes[node].disk;
        if disk.last().index >= disk.first_index() + 2 * COMPACTION_KEEP {
            disk.compact(COMPACTION_KEEP, committed);
        }
    }

    // ---- core outputs ----
}

/// Where a leader's write stands on its disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum WriteStage {
    /// Waiting for the disk.
    Queued,
    /// Committed and shipped; its sync runs until the persist completes.
    Written,
    /// Not committed: the lease had run out, or it no longer continued the log.
    Refused,
}

/// A persist in the disk's queue, completed in order.
pub(super) enum Persist {
    /// Leader: a client's write, shipped once committed and acknowledged by the core once
    /// durable.
    LeaderWrite {
        entry: Entry,
        client: usize,
        op: usize,
        requirement: AckRequirement,
        stage: WriteStage,
    },
    /// Leader: a client's write that changed nothing (`--rewrites`), answered once the
    /// entries before it are durable here and copied as far as it asked.
    LeaderRewrite {
        client: usize,
        op: usize,
        requirement: AckRequirement,
    },
    Follower {
        entries: Vec<Entry>,
    },
    /// A snapshot from the leader: its whole state up to `position` (in this storage model,
    /// its log), replacing the local one; with `rollback_after`, local entries beyond that
    /// index move to the rollback store first.
    Snapshot {
        entries: Vec<Entry>,
        position: Position,
        rollback_after: Option<u64>,
    },
}

pub(super) struct PendingRead {
    pub(super) client: usize,
    pub(super) op: usize,
    pub(super) key: u8,
    pub(super) after: Position,
    pub(super) deadline: Micros,
}

pub struct Node {
    pub id: String,
    pub(super) region: usize,
    pub(super) replica: Option<Replica>,
    /// Durable storage: the log, the database rebuilt from it, the rollback store.
    pub disk: SimDisk,
    /// Bumped when the disk is destroyed.
    pub disk_generation: u64,
    /// Bumped on every crash or restart; events for an older incarnation are dropped.
    pub(super) incarnation: u64,
    /// The node's timer: which one is armed (older ones are stale), and for when.
    pub(super) timer: u64,
    pub(super) armed_at: Option<Micros>,
    pub(super) persists: VecDeque<(Micros, Persist)>,
    pub(super) disk_stalled_until: Micros,
    /// Leader: index for the next write it executes.
    pub(super) next_index: u64,
    pub(super) paused_until: Option<Micros>,
    pub(super) skew: Micros,
    pub(super) sessions: Vec<PendingRead>,
    pub(super) next_tag: u64,
    pub(super) write_tags: BTreeMap<u64, (usize, usize)>,
    pub(super) read_tags: BTreeMap<u64, (usize, usize, Reply)>,
    /// Config used at the next (re)start: leader and epoch change on promotion.
    pub(super) leader: String,
    pub(super) epoch: u64,
    /// Durable election state (automatic failover).
    pub(super) saved_election: Option<SavedElection>,
    /// The epoch in which `next_index` was last reset (a new leadership).
    pub(super) leading_epoch: u64,
    /// Started outside the cluster, waiting to be added (after its disk was replaced).
    pub(super) joining: bool,
    /// Entries on this node's disks that a replacement wiped (after its removal): the
    /// async checker accepts a lost `w=1` write found here, as it does the rollback store.
    pub wiped: Vec<Entry>,
}

impl Node {
    /// The running replica (`None` while crashed).
    pub fn replica(&self) -> Option<&Replica> {
        self.replica.as_ref()
    }

    pub fn last(&self) -> Position {
        self.disk.last()
    }

    /// The disk is lost (the node must be down): returns what it held.
    pub(super) fn wipe_disk(&mut self) -> Vec<Entry> {
        self.disk_generation += 1;
        self.disk.wipe()
    }

    pub(super) fn is_running(&self) -> bool {
        self.replica.is_some()
    }
}
