//! The leader: per-follower progress, shipping entries, counting acknowledgements (`w=`), resend backoff, and feeding followers that need a snapshot.

use super::*;
use crate::quorum::{self, Settled};

impl Replica {
    /// Leader: `entries` were executed and durably committed locally. Each waiter is
    /// acknowledged once enough copies of its entry are durable.
    ///
    /// If this node stopped leading while the entries were committing, they are kept as
    /// local entries of their epoch (a later leader rolls them back if it lacks them) and
    /// the waiters end with "outcome unknown".
    ///
    /// # Panics
    /// If a leader's entries do not continue its log (a driver bug).
    pub(crate) fn on_leader_appended(&mut self, now: Micros, entries: Vec<Entry>, waiters: Vec<(u64, u64, AckRequirement)>) {
        if !self.is_leader() || entries.first().is_some_and(|entry| entry.epoch != self.epoch) {
            for entry in &entries {
                if entry.index == self.last.index + 1 {
                    // The disk now holds this entry after `last`: anything accepted from
                    // another leader beyond `last` will not apply there (the storage
                    // refuses it) and is asked for again, then found to diverge.
                    self.forget_epoch_starts_after(self.last.index);
                    self.note_epoch_start(entry);
                    self.last = entry.position();
                    self.accepted = self.last;
                }
            }
            for (tag, index, requirement) in waiters {
                let epoch = entries.iter().find(|entry| entry.index == index).map_or(self.epoch, |entry| entry.epoch);
                let error = WriteError::Timeout {
                    position: Position::new(epoch, index),
                    acked_by: 1,
                    needed: format!("{} (this node stopped leading)", requirement_text(requirement)),
                };
                self.outputs.push_back(Output::WriteDone { tag, result: Err(error) });
            }
            return;
        }
        if let Some(first) = entries.first() {
            self.note_epoch_start(first);
        }
        let Role::Leader(leader) = &mut self.role else { unreachable!() };
        for entry in entries {
            assert_eq!(entry.index, self.last.index + 1, "leader log must be contiguous");
            assert_eq!(entry.epoch, self.epoch, "leader writes entries in its own epoch");
            self.last = entry.position();
            leader.append_times.push_back((entry.index, now));
            if leader.append_times.len() > APPEND_TIMES_LIMIT {
                // A follower this far behind (or gone) is reported as lagging since the
                // oldest write still timed: bounded memory, an understated lag.
                leader.append_times.pop_front();
            }
            leader.tail_bytes += entry.payload.len();
            leader.tail.push_back(entry);
        }
        self.accepted = self.last;
        while leader.tail_bytes > self.config.tail_cache_bytes && leader.tail.len() > 1 {
            let dropped = leader.tail.pop_front().expect("tail has more than one entry");
            leader.tail_bytes -= dropped.payload.len();
        }
        let members = self.membership.voters.len();
        for (tag, index, requirement) in waiters {
            assert!(index <= self.last.index, "waiter for an entry not yet appended");
            if let AckRequirement::Nodes(requested) = requirement {
                if requested > members {
                    self.outputs.push_back(Output::WriteDone { tag, result: Err(WriteError::Unsatisfiable { requested, members }) });
                    continue;
                }
            }
            let position = Position::new(self.epoch, index);
            leader.writes.push(WriteWaiter { tag, position, requirement, deadline: now + self.config.write_timeout_us });
        }
        let peers: Vec<NodeId> = leader.peers.keys().cloned().collect();
        for peer in peers {
            self.replicate_to(&peer, now);
        }
        self.advance(now);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_append_ack(
        &mut self,
        now: Micros,
        from: &NodeId,
        epoch: u64,
        durable: Position,
        next_index: u64,
        read_seq: u64,
        rejected: bool,
        diverged: Option<Vec<(u64, u64)>>,
    ) {
        if epoch != self.epoch {
            // An ack from another epoch says nothing about this leader's log.
            return;
        }
        let last_index = self.last.index;
        // A durable end counts only if it is our entry (same epoch at that index; log
        // matching then covers everything before it). A follower may hold an older
        // leader's entry at the same index, which must not count as a copy of ours.
        // (A durable end beyond our last entry is never ours: it is another epoch's.)
        let durable_is_ours = durable.index == 0 || (durable.index <= last_index && self.epoch_at(durable.index).is_none_or(|epoch| epoch == durable.epoch));
        let common = diverged.as_ref().map(|starts| common_prefix(&self.epoch_starts, last_index, starts, durable.index.max(next_index - 1)));
        let Role::Leader(leader) = &mut self.role else { return };
        let Some(progress) = leader.peers.get_mut(from) else { return };
        progress.last_ack_at = Some(now);
        // A round not yet started cannot have been seen (a stale or corrupt echo).
        progress.acked_read_seq = progress.acked_read_seq.max(read_seq.min(leader.read_seq));
        if durable_is_ours {
            progress.foreign_durable = None;
            progress.diverged_after = None;
        } else {
            progress.foreign_durable = Some(durable);
        }
        if common.is_some() {
            progress.diverged_after = common;
        }
        if let Some(common) = common {
            // Its data holds effects of entries we lack and cannot be undone in place:
            // it rolls them back and takes a snapshot of ours.
            progress.matched = progress.matched.min(common);
            if !progress.snapshotting {
                progress.snapshotting = true;
                progress.fetching = false;
                self.outputs.push_back(Output::SendSnapshot { to: from.clone(), rollback_after: Some(common) });
            }
            return;
        }
        if !durable_is_ours {
            // Its log diverges at or before `durable`; the append path finds where.
        } else if durable.index > progress.matched {
            progress.matched = durable.index.min(last_index);
        } else if rejected && durable.index < progress.matched {
            // The follower holds less than it once acknowledged: its disk was lost and
            // rebuilt. Counting the old copies would overstate durability, and resending
            // from the old mark would leave a gap it rejects forever.
            progress.matched = durable.index;
        }
        if progress.matched >= last_index {
            progress.in_sync = true;
        }
        if progress.snapshot_wait.is_some_and(|(index, _)| durable.index >= index) {
            progress.snapshot_wait = None;
            progress.snapshotting = false;
        }
        if rejected {
            progress.next = next_index.max(progress.matched + 1).min(last_index + 1);
        } else if progress.next <= progress.matched {
            progress.next = progress.matched + 1;
        }
        self.replicate_to(&from.clone(), now);
        self.advance(now);
    }

    pub(super) fn broadcast_heartbeat(&mut self, now: Micros) {
        let Role::Leader(leader) = &mut self.role else { return };
        leader.next_heartbeat_at = now + self.config.heartbeat_interval_us;
        // Every broadcast is a new round: acks of it confirm leadership (linearizable
        // reads) and extend the lease from the moment it started.
        leader.read_seq += 1;
        leader.rounds.push_back((leader.read_seq, now));
        if leader.rounds.len() > 1024 {
            leader.rounds.pop_front();
        }
        let peers: Vec<NodeId> = leader.peers.keys().cloned().collect();
        for peer in peers {
            self.send_append(&peer, now, true);
        }
    }

    /// Sends what the follower is missing, if anything (and the flow-control window allows).
    pub(super) fn replicate_to(&mut self, peer: &NodeId, now: Micros) {
        self.send_append(peer, now, false);
    }

    /// Sends one append to `peer`: entries from its `next` if any are due, else (when
    /// `heartbeat`) an empty append that carries lag, commit and read-round information.
    pub(super) fn send_append(&mut self, peer: &NodeId, now: Micros, heartbeat: bool) {
        let Role::Leader(leader) = &mut self.role else { return };
        let Some(progress) = leader.peers.get_mut(peer) else { return };
        let mut entries = Vec::new();
        // An empty append claims only what was already sent: claiming `last` would make a
        // follower still receiving the window reject it as a gap and cause a resend.
        let mut prev_index = self.last.index.min(progress.next - 1);
        let probe = Self::divergence_probe_in(&self.epoch_starts, self.last.index, progress);
        let epoch_starts = &self.epoch_starts;
        let window_open = progress.next <= progress.matched + self.config.max_inflight_entries;
        if progress.next <= self.last.index && window_open && !progress.fetching && !progress.snapshotting {
            let tail_start = leader.tail.front().map_or(self.last.index + 1, |entry| entry.index);
            if progress.next < tail_start {
                progress.fetching = true;
                self.outputs.push_back(Output::ReadLog { to: peer.clone(), from_index: progress.next });
            } else {
                let mut bytes = 0;
                let offset = (progress.next - tail_start) as usize;
                for entry in leader.tail.iter().skip(offset) {
                    if entries.len() >= self.config.max_entries_per_append
                        || (!entries.is_empty() && bytes + entry.payload.len() > self.config.max_bytes_per_append)
                    {
                        break;
                    }
                    bytes += entry.payload.len();
                    entries.push(entry.clone());
                }
                prev_index = progress.next - 1;
                progress.next += entries.len() as u64;
                progress.last_sent_at = now;
            }
        }
        if entries.is_empty() && !heartbeat {
            return;
        }
        if let (true, Some(probe)) = (entries.is_empty(), probe) {
            prev_index = probe;
        }
        let message = Message::Append {
            epoch: self.epoch,
            leader: self.config.id.clone(),
            prev_index,
            prev_epoch: if prev_index == 0 { 0 } else { epoch_in(epoch_starts, prev_index).unwrap_or(0) },
            entries,
            commit_index: leader.commit_index,
            leader_last: self.last.index,
            read_seq: leader.read_seq,
        };
        self.outputs.push_back(Output::Send { to: peer.clone(), message });
        // Keep going while the window allows: one append per message keeps messages bounded.
        let more_due = match &self.role {
            Role::Leader(leader) => leader.peers.get(peer).is_some_and(|progress| {
                progress.next <= self.last.index
                    && !progress.fetching
                    && !progress.snapshotting
                    && progress.next <= progress.matched + self.config.max_inflight_entries
            }),
            Role::Follower(_) => false,
        };
        if more_due {
            self.send_append(peer, now, false);
        }
    }

    /// The index a heartbeat should name to make a follower with a foreign durable end
    /// report its divergence: that end, if our log has an entry of another epoch there.
    pub(super) fn divergence_probe_in(epoch_starts: &[(u64, u64)], last_index: u64, progress: &Progress) -> Option<u64> {
        let foreign = progress.foreign_durable?;
        let ours = epoch_in(epoch_starts, foreign.index).filter(|_| foreign.index <= last_index)?;
        (ours != foreign.epoch).then_some(foreign.index)
    }

    /// Recomputes the commit index and completes every write and read that is now satisfied
    /// or past its deadline.
    pub(super) fn advance(&mut self, now: Micros) {
        let voters = &self.membership.voters;
        let members = voters.len();
        let majority = self.membership.majority();
        let last_index = self.last.index;
        let Role::Leader(leader) = &mut self.role else { return };
        // Learners' copies and acks count for nothing until they are promoted.
        let counted = |(id, _): &(&NodeId, &Progress)| voters.contains(*id);

        let mut durable: Vec<u64> = leader.peers.iter().filter(counted).map(|(_, progress)| progress.matched).collect();
        durable.push(last_index);
        leader.commit_index = leader.commit_index.max(quorum::reached_by(durable, majority));

        let copies = |index: u64| 1 + leader.peers.iter().filter(counted).filter(|(_, progress)| progress.matched >= index).count();
        let satisfied = |waiter: &WriteWaiter| -> bool {
            let index = waiter.position.index;
            quorum::requirement_met(waiter.requirement, copies(index), majority, members, || {
                leader.peers.iter().filter(counted).all(|(_, progress)| !progress.in_sync || progress.matched >= index)
            })
        };
        for settled in quorum::settle(&mut leader.writes, now, |waiter| waiter.deadline, satisfied) {
            let (tag, result) = match settled {
                Settled::Done(waiter) => (waiter.tag, Ok(waiter.position)),
                Settled::Expired(waiter) => (
                    waiter.tag,
                    Err(WriteError::Timeout {
                        position: waiter.position,
                        acked_by: copies(waiter.position.index),
                        needed: requirement_text(waiter.requirement),
                    }),
                ),
            };
            self.outputs.push_back(Output::WriteDone { tag, result });
        }

        if self.election.is_some() {
            // The newest round a majority (this node included) has acknowledged.
            let mut acked: Vec<u64> = leader.peers.iter().filter(counted).map(|(_, progress)| progress.acked_read_seq).collect();
            acked.push(leader.read_seq);
            let round = quorum::reached_by(acked, majority);
            while leader.rounds.len() > 1 && leader.rounds.front().is_some_and(|(seq, _)| *seq < round) {
                leader.rounds.pop_front();
            }
            if let Some((seq, started)) = leader.rounds.front() {
                if *seq == round {
                    let timeout = self.election.as_ref().map_or(0, |election| election.config().election_timeout_min_us());
                    leader.lease_until = leader.lease_until.max(started + lease_us(timeout));
                }
            }
        }
        let commit_index = leader.commit_index;
        let confirmed = |read_seq: u64| 1 + leader.peers.iter().filter(counted).filter(|(_, progress)| progress.acked_read_seq >= read_seq).count();
        let read_done = |read: &ReadWaiter| confirmed(read.read_seq) >= majority && commit_index >= read.observed_index;
        for settled in quorum::settle(&mut leader.reads, now, |read| read.deadline, read_done) {
            let (tag, result) = match settled {
                Settled::Done(read) => (read.tag, Ok(())),
                Settled::Expired(read) => (read.tag, Err(ReadError::Timeout)),
            };
            self.outputs.push_back(Output::ReadDone { tag, result });
        }

        // Append times are only needed for indexes some follower still lacks.
        let slowest = leader.peers.values().map(|progress| progress.matched).min().unwrap_or(last_index);
        while leader.append_times.len() > 1 && leader.append_times.front().is_some_and(|(index, _)| *index <= slowest) {
            leader.append_times.pop_front();
        }
    }

    // ---- follower internals ----

    /// Leader: entries requested by `Output::ReadLog` (may be empty if none exist).
    pub(crate) fn on_log_read(&mut self, now: Micros, to: &NodeId, entries: Vec<Entry>) {
        let epoch = self.epoch;
        let leader_id = self.config.id.clone();
        let max_inflight = self.config.max_inflight_entries;
        let prev_epoch = entries.first().and_then(|first| self.epoch_at(first.index - 1)).unwrap_or(0);
        let Role::Leader(leader) = &mut self.role else { return };
        let commit_index = leader.commit_index;
        let leader_last = self.last.index;
        let read_seq = leader.read_seq;
        let Some(progress) = leader.peers.get_mut(to) else { return };
        progress.fetching = false;
        let Some(first) = entries.first() else { return };
        if first.index != progress.next {
            // The follower's position moved while we read; the next tick resends.
            return;
        }
        let prev_index = first.index - 1;
        let count = (entries.len() as u64).min(max_inflight);
        progress.next = first.index + count;
        progress.last_sent_at = now;
        let entries: Vec<Entry> = entries.into_iter().take(count as usize).collect();
        let message = Message::Append { epoch, leader: leader_id, prev_index, prev_epoch, entries, commit_index, leader_last, read_seq };
        self.outputs.push_back(Output::Send { to: to.clone(), message });
        self.replicate_to(to, now);
    }

    /// Leader: the entries a follower needs were compacted away.
    pub(crate) fn on_log_compacted(&mut self, _now: Micros, to: &NodeId) {
        let Role::Leader(leader) = &mut self.role else { return };
        let Some(progress) = leader.peers.get_mut(to) else { return };
        progress.fetching = false;
        if progress.snapshotting {
            return;
        }
        let rollback_after = match progress.diverged_after {
            Some(common) => Some(common),
            // Nothing is known of its log yet (no ack in this leadership), or it holds
            // an entry we lack and the next heartbeat asks where it diverges: a snapshot
            // now would replace entries without moving them to its rollback store.
            None if progress.last_ack_at.is_none() || progress.foreign_durable.is_some() => return,
            None => None,
        };
        progress.snapshotting = true;
        self.outputs.push_back(Output::SendSnapshot { to: to.clone(), rollback_after });
    }

    /// Leader: the snapshot for `to` was handed to the transport (`Some(position)`) or
    /// could not be made (`None`). Shipping resumes once the follower acknowledges the
    /// snapshot's position, or after `snapshot_timeout_us` if it never does.
    pub(crate) fn on_snapshot_finished(&mut self, now: Micros, to: &NodeId, sent: Option<Position>) {
        let timeout = self.config.snapshot_timeout_us;
        let Role::Leader(leader) = &mut self.role else { return };
        let Some(progress) = leader.peers.get_mut(to) else { return };
        progress.last_sent_at = now;
        match sent {
            Some(position) => progress.snapshot_wait = Some((position.index, now + timeout)),
            None => progress.snapshotting = false,
        }
    }

    /// The transport (re)connected to `peer`: anything in flight may be gone.
    pub(crate) fn on_peer_connected(&mut self, now: Micros, peer: &NodeId) {
        let Role::Leader(leader) = &mut self.role else { return };
        let Some(progress) = leader.peers.get_mut(peer) else { return };
        progress.next = progress.matched + 1;
        if progress.snapshot_wait.is_some() {
            // A snapshot sent before the connection dropped may never have been installed
            // (the peer restarted, say): do not wait out its deadline before sending another.
            progress.snapshot_wait = None;
            progress.snapshotting = false;
        }
        self.send_append(peer, now, true);
    }

    // ---- follower inputs ----

    pub(super) fn follower_lag_us(&self, leader: &LeaderState, progress: &Progress, now: Micros) -> Micros {
        if progress.matched >= self.last.index {
            return 0;
        }
        let oldest_missing = progress.matched + 1;
        match leader.append_times.iter().find(|(index, _)| *index >= oldest_missing) {
            Some((_, appended_at)) => now.saturating_sub(*appended_at),
            // Older than anything we timed (e.g. written before this leader started).
            None => leader.append_times.front().map_or(0, |(_, at)| now.saturating_sub(*at)),
        }
    }

    // ---- leader inputs ----
}

/// The leader's view of one follower.
#[derive(Clone, Debug)]
pub(super) struct Progress {
    /// Highest index known durable on the follower. Invariants: `matched < next`.
    pub(super) matched: u64,
    /// Next index to send.
    pub(super) next: u64,
    pub(super) last_ack_at: Option<Micros>,
    /// When entries beyond `matched` were last sent; for resending lost ones.
    pub(super) last_sent_at: Micros,
    pub(super) acked_read_seq: u64,
    /// Counted by `--ack sync`: responsive and caught up at some point since.
    pub(super) in_sync: bool,
    /// An `Output::ReadLog` for this follower is outstanding.
    pub(super) fetching: bool,
    /// An `Output::SendSnapshot` for this follower is outstanding, or a sent snapshot
    /// has not been acknowledged yet; nothing else is shipped meanwhile.
    pub(super) snapshotting: bool,
    /// A snapshot at this index was sent; shipping resumes once the follower acks it, or
    /// at the deadline if it never does.
    pub(super) snapshot_wait: Option<(u64, Micros)>,
    /// The follower reported a durable end that is not in our log (an older leader's
    /// entry at that index): heartbeats name our entry there, so that it answers with
    /// where its log diverges, and no snapshot is sent without that (it would replace
    /// the diverged entries without moving them to the rollback store).
    pub(super) foreign_durable: Option<Position>,
    /// Where the follower's log was found to diverge from ours: every snapshot it gets
    /// until it holds our entries again rolls back what it has beyond this index.
    pub(super) diverged_after: Option<u64>,
    /// Resends in a row after which `matched` had not moved, and where it stood at the
    /// last one: each such resend waits twice as long (a follower that cannot persist,
    /// or is paused, is not sent its whole window again every `resend_timeout_us`).
    pub(super) fruitless_resends: u32,
    pub(super) matched_at_resend: u64,
}

/// A fruitless resend waits at most `resend_timeout_us` times 2 to this power.
pub(super) const MAX_RESEND_BACKOFF_SHIFT: u32 = 4;

#[derive(Debug)]
pub(super) struct LeaderState {
    pub(super) peers: BTreeMap<NodeId, Progress>,
    /// Recent entries, contiguous, ending at `Replica::last`.
    pub(super) tail: VecDeque<Entry>,
    pub(super) tail_bytes: usize,
    /// When each not-yet-fully-replicated index was appended, for follower lag.
    pub(super) append_times: VecDeque<(u64, Micros)>,
    pub(super) writes: Vec<WriteWaiter>,
    pub(super) reads: Vec<ReadWaiter>,
    pub(super) read_seq: u64,
    /// When each recent heartbeat round started: a round acknowledged by a majority
    /// extends the lease from its start.
    pub(super) rounds: VecDeque<(u64, Micros)>,
    /// With elections: new writes are accepted only before this time. No other leader
    /// can be elected before it (followers refuse votes for an election timeout after
    /// hearing from this leader, and the lease is shorter).
    pub(super) lease_until: Micros,
    pub(super) next_heartbeat_at: Micros,
    pub(super) commit_index: u64,
}

impl Progress {
    pub(super) fn new(last: Position, now: Micros) -> Progress {
        Progress {
            matched: 0,
            next: last.index + 1,
            last_ack_at: None,
            last_sent_at: now,
            acked_read_seq: 0,
            in_sync: false,
            fetching: false,
            snapshotting: false,
            snapshot_wait: None,
            foreign_durable: None,
            diverged_after: None,
            fruitless_resends: 0,
            matched_at_resend: 0,
        }
    }
}

impl LeaderState {
    pub(super) fn new(config: &Config, membership: &Membership, epoch: u64, last: Position, now: Micros, lease_until: Micros) -> LeaderState {
        let progress = Progress::new(last, now);
        let peers = membership.members().filter(|member| **member != config.id).map(|member| (member.clone(), progress.clone())).collect();
        LeaderState {
            peers,
            tail: VecDeque::new(),
            tail_bytes: 0,
            append_times: VecDeque::new(),
            writes: Vec::new(),
            reads: Vec::new(),
            // Rounds are numbered above every round of earlier epochs: a follower still
            // echoing an older leader's round must not confirm this leader's.
            // (Without elections a new leader only comes with restarted followers.)
            read_seq: if config.elections.is_some() { epoch << 32 } else { 0 },
            rounds: VecDeque::new(),
            lease_until,
            next_heartbeat_at: now,
            commit_index: 0,
        }
    }
}
