//! The replica loop: the tokio task that drives the sans-IO core with events and time, and carries out its outputs (election state saved before any vote leaves).

use super::*;
use tern_core::single_leader::Event as ReplicaEvent;
use tern_core::Protocol;

pub(super) const ELECTION_FILE: &str = "election.json";

/// Loads the election state saved by `save_election` (none on a fresh node).
pub(super) fn load_election(directory: &std::path::Path) -> Result<Option<SavedElection>, String> {
    match std::fs::read(directory.join(ELECTION_FILE)) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|error| format!("{ELECTION_FILE} is damaged: {error}")),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(format!("cannot read {ELECTION_FILE}: {error}")),
    }
}

/// Durably replaces the election state (term and vote must survive a crash, or this
/// node could vote twice in one term): write, fsync, rename, fsync the directory.
pub(super) fn save_election(directory: &std::path::Path, state: &SavedElection) -> std::io::Result<()> {
    use std::io::Write;
    let temporary = directory.join(format!("{ELECTION_FILE}.tmp"));
    let written = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&serde_json::to_vec(state).map_err(std::io::Error::other)?)?;
        file.sync_all()
    })();
    if let Err(error) = written {
        // A full disk: give back what the partial file took; the old state stays whole.
        let _ = std::fs::remove_file(&temporary);
        return Err(error);
    }
    std::fs::rename(&temporary, directory.join(ELECTION_FILE))?;
    std::fs::File::open(directory)?.sync_all()
}

/// The shortest sleep of the replica loop: a deadline already due waits this long at most
/// for other events to join it, and a core that kept naming a past deadline could not spin.
const MIN_WAKE: Duration = Duration::from_millis(1);

/// The longest: the core always names a deadline (at most a heartbeat away); this bounds
/// the sleep if it did not.
const IDLE_WAKE: Duration = Duration::from_secs(1);

/// The replica loop: the only place the core lives. It turns events into core calls and
/// core outputs into sends, storage commands and replies.
pub(super) async fn run_replica(node: Arc<Node>, mut replica: Replica, mut events: mpsc::UnboundedReceiver<Event>, published: watch::Sender<Published>) {
    let mut writes: HashMap<u64, PendingWrite> = HashMap::new();
    let mut reads: HashMap<u64, oneshot::Sender<Result<(), ReadError>>> = HashMap::new();
    let mut next_tag: u64 = 1;
    let mut heard_from_leader = replica.is_leader();
    // Election state the disk refused (it is full): until a save succeeds, this node
    // sends no raft message, so it never casts a vote it could forget on a restart.
    let mut unsaved_election: Option<tern_core::SavedElection> = None;
    let mut last_save_error_log: Option<Instant> = None;
    let mut last_handover_for_disk: Option<Instant> = None;
    // The timer, armed for the core's next deadline. It is moved only to an earlier
    // time: one armed too early just hands in a tick that finds nothing due, and leaving
    // it keeps timer-wheel work out of the loop under a stream of events.
    let wake = tokio::time::sleep(IDLE_WAKE);
    tokio::pin!(wake);
    // Multi-leader: the exchange with the other regions, run while this node leads its own.
    let mut regions = RegionLink::new();
    loop {
        // A deadline already due is handled after a short pause, never in a busy loop.
        let deadline = match (replica.poll_timeout(), regions.poll_timeout()) {
            (Some(replica_due), Some(regions_due)) => Some(replica_due.min(regions_due)),
            (replica_due, regions_due) => replica_due.or(regions_due),
        };
        let due_in = deadline.map_or(IDLE_WAKE, |deadline| Duration::from_micros(deadline.saturating_sub(node.now_us())));
        let due_at = tokio::time::Instant::now() + due_in.clamp(MIN_WAKE, IDLE_WAKE);
        if wake.is_elapsed() || due_at < wake.deadline() {
            wake.as_mut().reset(due_at);
        }
        let event = tokio::select! {
            event = events.recv() => match event {
                Some(event) => Some(event),
                None => return,
            },
            () = &mut wake => None,
        };
        let mut now = node.now_us();
        match event {
            None => replica.handle(ReplicaEvent::Tick, now),
            Some(event) => {
                let mut next = Some(event);
                // Handle everything already queued before draining outputs once.
                while let Some(event) = next.take() {
                    match event {
                        Event::Peer { from, message } => {
                            if matches!(message, Message::Append { .. }) {
                                heard_from_leader = true;
                            }
                            replica.handle(ReplicaEvent::Message { from, message }, now);
                        }
                        Event::PeerConnected(peer) => replica.handle(ReplicaEvent::PeerConnected(peer), now),
                        Event::Wrote { entries } => replica.handle(ReplicaEvent::LeaderWrote { entries }, now),
                        Event::Appended { entries, writes: new_writes, region_writes } => {
                            if let Some(entry) = entries.last() {
                                for write in region_writes {
                                    regions.on_appended(entry.index, write);
                                }
                            }
                            let mut waiters = Vec::with_capacity(new_writes.len());
                            for write in new_writes {
                                let tag = next_tag;
                                next_tag += 1;
                                waiters.push((tag, write.index, write.requirement));
                                writes.insert(tag, write);
                            }
                            replica.handle(ReplicaEvent::LeaderAppended { entries, waiters }, now);
                        }
                        Event::Persisted(position) => replica.handle(ReplicaEvent::Persisted(position), now),
                        Event::PersistFailed => replica.handle(ReplicaEvent::PersistFailed, now),
                        Event::LogRead { to, from_index, entries } => {
                            let event = match entries {
                                Some(entries) if entries.first().is_some_and(|entry| entry.index == from_index) => ReplicaEvent::LogRead { to, entries },
                                Some(_) => ReplicaEvent::LogRead { to, entries: Vec::new() },
                                None => ReplicaEvent::LogCompacted { to },
                            };
                            replica.handle(event, now);
                        }
                        Event::SnapshotReady { to, path, position, rollback_after } => {
                            tokio::spawn(transport::stream_snapshot(node.clone(), to, path, position, rollback_after));
                        }
                        Event::SnapshotSent { to, position } => replica.handle(ReplicaEvent::SnapshotFinished { to, sent: position }, now),
                        Event::SnapshotInstalled(position) => replica.handle(ReplicaEvent::SnapshotInstalled(position), now),
                        Event::RolledBack { position } => replica.handle(ReplicaEvent::RolledBack(position), now),
                        Event::DiskFull => {
                            // Keep refusing writes with the error, and hand leadership to a
                            // healthy node so the cluster goes on writing.
                            let due = last_handover_for_disk.is_none_or(|at: Instant| at.elapsed() > Duration::from_secs(5));
                            if let (true, Some(successor)) = (due, replica.best_successor()) {
                                last_handover_for_disk = Some(Instant::now());
                                match replica.transfer_leadership(now, &successor) {
                                    Ok(()) => tracing::warn!("disk full: handing leadership to {successor}"),
                                    Err(error) => tracing::warn!("disk full, but cannot hand leadership to {successor}: {error}"),
                                }
                            }
                        }
                        Event::ReadBarrier { observed_index, reply } => {
                            let tag = next_tag;
                            next_tag += 1;
                            reads.insert(tag, reply);
                            replica.handle(ReplicaEvent::ReadBarrier { tag, observed_index }, now);
                        }
                        Event::Status { reply } => {
                            let _ = reply.send(replica.status(now));
                        }
                        Event::Region { region, message } => regions.on_message(&region, message, now),
                        Event::RegionHolds(holds) => regions.on_holds(&node, holds, replica.accepting_writes(now).is_ok(), now),
                        Event::RegionWritesRead { to, writes } => regions.on_writes_read(to, writes, now),
                        Event::RegionApplyFailed(why) => regions.restart(&why),
                        Event::WaitForRegions { dot, regions: wanted, deadline, reply } => regions.wait_for_regions(dot, wanted, deadline, reply, now),
                        Event::DevicePush { shipments, deadline, reply } => regions.device_push(shipments, deadline, reply, now),
                        Event::RegionStatus { reply } => {
                            let _ = reply.send(regions.status(&node));
                        }
                        Event::TransferLeader { to, reply } => {
                            let _ = reply.send(replica.transfer_leadership(now, &to));
                        }
                        Event::ChangeMembership { request, reply } => {
                            let _ = reply.send(replica.change_membership(now, request));
                        }
                    }
                    if let Ok(event) = events.try_recv() {
                        next = Some(event);
                        // Each event at its own time: a long burst handled with the
                        // burst's first instant would see a lease still held after it ran out.
                        now = node.now_us();
                    }
                }
                // Under a steady stream of events the sleep never fires: deadlines that
                // came due meanwhile (heartbeats, the lease's renewal, timeouts) are met here.
                if replica.poll_timeout().is_some_and(|deadline| deadline <= now) {
                    replica.handle(ReplicaEvent::Tick, now);
                }
            }
        }
        if let Some(state) = &unsaved_election {
            if crate::blocking(|| save_election(&node.config.data_dir, state)).is_ok() {
                tracing::info!("election state saved again: this node takes part in elections again");
                unsaved_election = None;
            }
        }
        while let Some(output) = replica.poll_output() {
            match output {
                Output::Send { message: Message::Raft { .. }, .. } if unsaved_election.is_some() => {}
                Output::Send { to, message } => node.send_to(&to, Frame::Replica(message)),
                Output::Persist { entries } => {
                    node.storage_send(StorageCommand::Apply { entries });
                }
                Output::ReadLog { to, from_index } => {
                    node.storage_send(StorageCommand::ReadLog { to, from_index });
                }
                Output::SendSnapshot { to, rollback_after } => {
                    node.storage_send(StorageCommand::MakeSnapshot { to, rollback_after });
                }
                Output::SaveElection { state, then } => {
                    // Small and rare (a term or vote change): written here, and the raft
                    // messages that depend on it leave only once it is durable. If the disk
                    // refuses it (full), they are dropped and later raft messages held back
                    // until a save succeeds: the node neither votes nor campaigns, and the
                    // others carry on.
                    match crate::blocking(|| save_election(&node.config.data_dir, &state)) {
                        Ok(()) => {
                            unsaved_election = None;
                            for (to, message) in then {
                                node.send_to(&to, Frame::Replica(message));
                            }
                        }
                        Err(error) => {
                            if last_save_error_log.is_none_or(|at| at.elapsed() > Duration::from_secs(5)) {
                                tracing::error!("cannot save the election state: {error}; not voting or campaigning until it can be saved");
                                last_save_error_log = Some(Instant::now());
                            }
                            unsaved_election = Some(state);
                        }
                    }
                }
                Output::MembershipChanged { membership } => {
                    let names = |set: &std::collections::BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>().join(", ");
                    tracing::info!("membership: voters [{}], learners [{}]", names(&membership.voters), names(&membership.learners));
                    node.connect_members(&membership);
                }
                Output::WriteDone { tag, result } => {
                    let Some(write) = writes.remove(&tag) else { continue };
                    let reply = match result {
                        Ok(position) => WriteReply { results: write.results, position: Some(position), error: None, region_write: write.region_write },
                        Err(error) => {
                            let status = match error {
                                WriteError::Unsatisfiable { .. } => 400,
                                WriteError::Timeout { .. } | WriteError::NotLeader { .. } => 503,
                            };
                            WriteReply { results: write.results, position: None, error: Some(RequestError::new(status, error.to_string())), region_write: None }
                        }
                    };
                    let _ = write.reply.send(reply);
                }
                Output::ReadDone { tag, result } => {
                    if let Some(reply) = reads.remove(&tag) {
                        let _ = reply.send(result);
                    }
                }
            }
        }
        if node.config.topology == tern_core::Topology::MultiLeader {
            regions.drive(&node, &replica, now);
        }
        let lag = replica.lag_us(now);
        let accepting_writes = replica.accepting_writes(now).is_ok();
        node.write_lease.publish(&replica, now);
        if replica.leader().is_none() {
            heard_from_leader = false;
        } else if replica.is_leader() {
            heard_from_leader = true;
        }
        let next_published = Published {
            last: replica.last(),
            epoch_starts: replica.epoch_starts().to_vec(),
            is_leader: replica.is_leader(),
            accepting_writes,
            leader: replica.leader().cloned(),
            epoch: replica.epoch(),
            fresh_as_of_us: lag.map(|lag| now.saturating_sub(lag)),
            ready: heard_from_leader,
            membership: replica.membership().clone(),
        };
        published.send_if_modified(|current| {
            if (current.is_leader, current.epoch, &current.leader) != (next_published.is_leader, next_published.epoch, &next_published.leader) {
                let epoch = next_published.epoch;
                if next_published.is_leader && !current.is_leader {
                    crate::metrics::count("tern_leader_elections_total", &node.config.id);
                }
                if next_published.leader.is_some() && current.leader != next_published.leader {
                    crate::metrics::count("tern_leader_changes_total", &node.config.id);
                }
                match (&next_published.is_leader, &next_published.leader) {
                    (true, _) => tracing::info!("leading epoch {epoch}"),
                    (false, Some(leader)) => tracing::info!("following {leader} in epoch {epoch}"),
                    (false, None) => tracing::info!("no leader known in epoch {epoch} (election under way)"),
                }
            }
            if *current != next_published {
                *current = next_published;
                true
            } else {
                false
            }
        });
    }
}
