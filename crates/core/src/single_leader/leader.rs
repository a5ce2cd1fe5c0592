//! The leader: per-follower progress, shipping entries, counting acknowledgements (`w=`),
//! resend backoff, feeding followers that need a snapshot, read rounds and the write lease.
//! Its handlers take the [`Shared`] context; nothing here calls another role.

use super::*;
use crate::quorum::{self, Settled};

/// Most append times a leader keeps for measuring follower lag.
const APPEND_TIMES_LIMIT: usize = 65_536;

impl Leader {
    pub(super) fn new(s: &Shared, now: Micros, lease_until: Micros) -> Leader {
        let progress = Progress::new(s.accepted, now);
        let peers = s.membership.members().filter(|member| **member != s.config.id).map(|member| (member.clone(), progress.clone())).collect();
        Leader {
            peers,
            tail: VecDeque::new(),
            tail_bytes: 0,
            append_times: VecDeque::new(),
            writes: Vec::new(),
            reads: Vec::new(),
            // Rounds are numbered above every round of earlier epochs: a follower still
            // echoing an older leader's round must not confirm this leader's.
            // (Without elections a new leader only comes with restarted followers.)
            read_seq: if s.config.elections.is_some() { s.epoch << 32 } else { 0 },
            rounds: VecDeque::new(),
            lease_until,
            next_heartbeat_at: now,
            commit_index: 0,
            handover: None,
            preferred_since: None,
            next_return_at: now,
            return_attempts: 0,
        }
    }

    /// `entries` of this leader's epoch committed locally and are being synced: they join
    /// the log and ship now; the leader's own copy counts once they are durable
    /// (`append`, or `on_persisted`).
    ///
    /// # Panics
    /// If the entries do not continue the log (a driver bug).
    pub(super) fn wrote(&mut self, s: &mut Shared, now: Micros, entries: Vec<Entry>) {
        self.extend_log(s, now, entries);
        self.replicate_to_all(s, now);
    }

    /// `entries` of this leader's epoch committed durably here, whether or not `wrote`
    /// shipped them before. Each waiter is acknowledged once enough copies of its entry
    /// are durable.
    ///
    /// # Panics
    /// If the entries do not continue the log (a driver bug).
    pub(super) fn append(&mut self, s: &mut Shared, now: Micros, entries: Vec<Entry>, waiters: Vec<(u64, u64, AckRequirement)>) {
        let durable = entries.last().map(Entry::position);
        let unseen: Vec<Entry> = entries.into_iter().filter(|entry| entry.index > s.accepted.index).collect();
        self.extend_log(s, now, unseen);
        if let Some(durable) = durable {
            assert!(s.epoch_at(durable.index) == Some(durable.epoch), "a durable entry {durable} the leader's log does not hold");
            s.last = s.last.max(durable);
        }
        let members = s.membership.voters.len();
        for (tag, index, requirement) in waiters {
            assert!(index <= s.last.index, "waiter for an entry not yet durable");
            if let AckRequirement::Nodes(requested) = requirement {
                if requested > members {
                    s.outputs.push_back(Output::WriteDone { tag, result: Err(WriteError::Unsatisfiable { requested, members }) });
                    continue;
                }
            }
            // A write that changed nothing waits for the entry it saw, which may be an
            // earlier epoch's.
            let position = Position::new(s.epoch_at(index).unwrap_or(s.epoch), index);
            self.writes.push(WriteWaiter { tag, position, requirement, deadline: now + s.config.write_timeout_us });
        }
        self.replicate_to_all(s, now);
        self.advance(s, now);
    }

    /// The storage made the log durable up to `durable` (entries a follower's persist left
    /// pending when this node was elected, say).
    pub(super) fn on_persisted(&mut self, s: &mut Shared, now: Micros, durable: Position) {
        if durable.index > s.last.index && durable.index <= s.accepted.index {
            s.last = durable;
            self.advance(s, now);
        }
    }

    /// Adds entries after `accepted` to the log's end and the shipping tail.
    fn extend_log(&mut self, s: &mut Shared, now: Micros, entries: Vec<Entry>) {
        if let Some(first) = entries.first() {
            s.note_epoch_start(first);
        }
        for entry in entries {
            assert_eq!(entry.index, s.accepted.index + 1, "leader log must be contiguous");
            assert_eq!(entry.epoch, s.epoch, "leader writes entries in its own epoch");
            s.accepted = entry.position();
            self.append_times.push_back((entry.index, now));
            if self.append_times.len() > APPEND_TIMES_LIMIT {
                // A follower this far behind (or gone) is reported as lagging since the
                // oldest write still timed: bounded memory, an understated lag.
                self.append_times.pop_front();
            }
            self.tail_bytes += entry.payload.len();
            self.tail.push_back(entry);
        }
        while self.tail_bytes > s.config.tail_cache_bytes && self.tail.len() > 1 {
            let dropped = self.tail.pop_front().expect("tail has more than one entry");
            self.tail_bytes -= dropped.payload.len();
        }
    }

    fn replicate_to_all(&mut self, s: &mut Shared, now: Micros) {
        let peers: Vec<NodeId> = self.peers.keys().cloned().collect();
        for peer in peers {
            self.replicate_to(s, &peer, now);
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_append_ack(
        &mut self,
        s: &mut Shared,
        now: Micros,
        from: &NodeId,
        epoch: u64,
        durable: Position,
        next_index: u64,
        read_seq: u64,
        rejected: bool,
        diverged: Option<Vec<(u64, u64)>>,
    ) {
        if epoch != s.epoch {
            // An ack from another epoch says nothing about this leader's log.
            return;
        }
        let last_index = s.accepted.index;
        // A durable end counts only if it is our entry (same epoch at that index; log
        // matching then covers everything before it). A follower may hold an older
        // leader's entry at the same index, which must not count as a copy of ours.
        // (A durable end beyond our last entry is never ours: it is another epoch's.)
        let durable_is_ours = durable.index == 0 || (durable.index <= last_index && s.epoch_at(durable.index).is_none_or(|epoch| epoch == durable.epoch));
        let common = diverged.as_ref().map(|starts| common_prefix(&s.epoch_starts, last_index, starts, durable.index.max(next_index - 1)));
        let Some(progress) = self.peers.get_mut(from) else { return };
        progress.last_ack_at = Some(now);
        // A rejecting follower holds nothing beyond what it names as durable.
        progress.received = if rejected { 0 } else { next_index.saturating_sub(1).min(last_index) };
        // A round not yet started cannot have been seen (a stale or corrupt echo).
        progress.acked_read_seq = progress.acked_read_seq.max(read_seq.min(self.read_seq));
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
                s.outputs.push_back(Output::SendSnapshot { to: from.clone(), rollback_after: Some(common) });
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
        self.replicate_to(s, from, now);
        self.advance(s, now);
    }

    /// Timers: followers silent too long leave the in-sync set, lost entries are resent
    /// (backing off while resends achieve nothing), heartbeats go out when due.
    pub(super) fn on_tick(&mut self, s: &mut Shared, now: Micros) {
        let in_sync_timeout = s.config.in_sync_timeout_us;
        let resend_timeout = s.config.resend_timeout_us;
        let mut resend = Vec::new();
        for (id, progress) in self.peers.iter_mut() {
            let silent = progress.last_ack_at.is_none_or(|at| now.saturating_sub(at) > in_sync_timeout);
            if silent {
                progress.in_sync = false;
            }
            if progress.snapshot_wait.is_some_and(|(_, deadline)| now >= deadline) {
                progress.snapshot_wait = None;
                progress.snapshotting = false;
            }
            let waiting = progress.lost_in_flight();
            let backoff = resend_timeout << progress.fruitless_resends.min(MAX_RESEND_BACKOFF_SHIFT);
            if waiting && !progress.fetching && !progress.snapshotting && now.saturating_sub(progress.last_sent_at) > backoff {
                progress.fruitless_resends = if progress.matched == progress.matched_at_resend { progress.fruitless_resends + 1 } else { 0 };
                progress.matched_at_resend = progress.matched;
                progress.next = progress.matched + 1;
                resend.push(id.clone());
            }
        }
        for peer in resend {
            self.send_append(s, &peer, now, true);
        }
        if now >= self.next_heartbeat_at {
            self.next_heartbeat_at = now + s.config.heartbeat_interval_us;
            self.broadcast_heartbeat(s, now);
        }
        self.advance(s, now);
    }

    pub(super) fn broadcast_heartbeat(&mut self, s: &mut Shared, now: Micros) {
        self.next_heartbeat_at = now + s.config.heartbeat_interval_us;
        // Every broadcast is a new round: acks of it confirm leadership (linearizable
        // reads) and extend the lease from the moment it started.
        self.read_seq += 1;
        self.rounds.push_back((self.read_seq, now));
        if self.rounds.len() > 1024 {
            self.rounds.pop_front();
        }
        let peers: Vec<NodeId> = self.peers.keys().cloned().collect();
        for peer in peers {
            self.send_append(s, &peer, now, true);
        }
    }

    /// A linearizable read saw the database up to `observed_index`. It completes once a
    /// majority confirms leadership in a fresh heartbeat round and that index is
    /// majority-durable, so the read neither misses acknowledged writes nor returns
    /// writes that could still be lost.
    pub(super) fn add_read_barrier(&mut self, s: &mut Shared, now: Micros, tag: u64, observed_index: u64) {
        // A round that starts after the read arrived.
        self.broadcast_heartbeat(s, now);
        let deadline = now + s.config.read_timeout_us;
        self.reads.push(ReadWaiter { tag, read_seq: self.read_seq, observed_index, deadline });
        self.advance(s, now);
    }

    /// Sends what the follower is missing, if anything (and the flow-control window allows).
    pub(super) fn replicate_to(&mut self, s: &mut Shared, peer: &NodeId, now: Micros) {
        self.send_append(s, peer, now, false);
    }

    /// Sends one append to `peer`: entries from its `next` if any are due, else (when
    /// `heartbeat`) an empty append that carries lag, commit and read-round information.
    pub(super) fn send_append(&mut self, s: &mut Shared, peer: &NodeId, now: Micros, heartbeat: bool) {
        let Some(progress) = self.peers.get_mut(peer) else { return };
        let mut entries = Vec::new();
        // An empty append claims only what was already sent: claiming `last` would make a
        // follower still receiving the window reject it as a gap and cause a resend.
        let mut prev_index = s.accepted.index.min(progress.next - 1);
        let probe = divergence_probe(&s.epoch_starts, s.accepted.index, progress);
        let window_open = progress.next <= progress.matched + s.config.max_inflight_entries;
        if progress.next <= s.accepted.index && window_open && !progress.fetching && !progress.snapshotting {
            let tail_start = self.tail.front().map_or(s.accepted.index + 1, |entry| entry.index);
            if progress.next < tail_start {
                progress.fetching = true;
                s.outputs.push_back(Output::ReadLog { to: peer.clone(), from_index: progress.next });
            } else {
                let mut bytes = 0;
                let offset = (progress.next - tail_start) as usize;
                for entry in self.tail.iter().skip(offset) {
                    if entries.len() >= s.config.max_entries_per_append || (!entries.is_empty() && bytes + entry.payload.len() > s.config.max_bytes_per_append)
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
            epoch: s.epoch,
            leader: s.config.id.clone(),
            prev_index,
            prev_epoch: if prev_index == 0 { 0 } else { epoch_in(&s.epoch_starts, prev_index).unwrap_or(0) },
            entries,
            commit_index: self.commit_index,
            leader_last: s.accepted.index,
            read_seq: self.read_seq,
        };
        s.send(peer.clone(), message);
        // Keep going while the window allows: one append per message keeps messages bounded.
        let more_due = self.peers.get(peer).is_some_and(|progress| {
            progress.next <= s.accepted.index
                && !progress.fetching
                && !progress.snapshotting
                && progress.next <= progress.matched + s.config.max_inflight_entries
        });
        if more_due {
            self.send_append(s, peer, now, false);
        }
    }

    /// Recomputes the commit index and completes every write and read that is now satisfied
    /// or past its deadline; with elections, extends the lease by the newest round a
    /// majority acknowledged.
    pub(super) fn advance(&mut self, s: &mut Shared, now: Micros) {
        let election_timeout = s.election_timeout();
        let voters = &s.membership.voters;
        let members = voters.len();
        let majority = s.membership.majority();
        let last_index = s.last.index;
        // Learners' copies and acks count for nothing until they are promoted.
        let counted = |(id, _): &(&NodeId, &Progress)| voters.contains(*id);

        let mut durable: Vec<u64> = self.peers.iter().filter(counted).map(|(_, progress)| progress.matched).collect();
        durable.push(last_index);
        self.commit_index = self.commit_index.max(quorum::reached_by(durable, majority));
        s.committed = s.committed.max(self.commit_index);

        let peers = &self.peers;
        let copies = |index: u64| 1 + peers.iter().filter(counted).filter(|(_, progress)| progress.matched >= index).count();
        let satisfied = |waiter: &WriteWaiter| -> bool {
            let index = waiter.position.index;
            quorum::requirement_met(waiter.requirement, copies(index), majority, members, || {
                peers.iter().filter(counted).all(|(_, progress)| !progress.in_sync || progress.matched >= index)
            })
        };
        for settled in quorum::settle(&mut self.writes, now, |waiter| waiter.deadline, satisfied) {
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
            s.outputs.push_back(Output::WriteDone { tag, result });
        }

        if let Some(timeout) = election_timeout {
            // The newest round a majority (this node included) has acknowledged.
            let mut acked: Vec<u64> = peers.iter().filter(counted).map(|(_, progress)| progress.acked_read_seq).collect();
            acked.push(self.read_seq);
            let round = quorum::reached_by(acked, majority);
            while self.rounds.len() > 1 && self.rounds.front().is_some_and(|(seq, _)| *seq < round) {
                self.rounds.pop_front();
            }
            if let Some((seq, started)) = self.rounds.front() {
                if *seq == round {
                    self.lease_until = self.lease_until.max(started + lease_us(timeout));
                }
            }
        }
        let commit_index = self.commit_index;
        let confirmed = |read_seq: u64| 1 + peers.iter().filter(counted).filter(|(_, progress)| progress.acked_read_seq >= read_seq).count();
        let read_done = |read: &ReadWaiter| confirmed(read.read_seq) >= majority && commit_index >= read.observed_index;
        for settled in quorum::settle(&mut self.reads, now, |read| read.deadline, read_done) {
            let (tag, result) = match settled {
                Settled::Done(read) => (read.tag, Ok(())),
                Settled::Expired(read) => (read.tag, Err(ReadError::Timeout)),
            };
            s.outputs.push_back(Output::ReadDone { tag, result });
        }

        // Append times are only needed for indexes some follower still lacks.
        let slowest = peers.values().map(|progress| progress.matched).min().unwrap_or(last_index);
        while self.append_times.len() > 1 && self.append_times.front().is_some_and(|(index, _)| *index <= slowest) {
            self.append_times.pop_front();
        }
    }

    /// Entries requested by `Output::ReadLog` (may be empty if none exist).
    pub(super) fn on_log_read(&mut self, s: &mut Shared, now: Micros, to: &NodeId, entries: Vec<Entry>) {
        let prev_epoch = entries.first().and_then(|first| s.epoch_at(first.index - 1)).unwrap_or(0);
        let Some(progress) = self.peers.get_mut(to) else { return };
        progress.fetching = false;
        let Some(first) = entries.first() else { return };
        if first.index != progress.next {
            // The follower's position moved while we read; the next tick resends.
            return;
        }
        let prev_index = first.index - 1;
        let count = (entries.len() as u64).min(s.config.max_inflight_entries);
        progress.next = first.index + count;
        progress.last_sent_at = now;
        let entries: Vec<Entry> = entries.into_iter().take(count as usize).collect();
        let message = Message::Append {
            epoch: s.epoch,
            leader: s.config.id.clone(),
            prev_index,
            prev_epoch,
            entries,
            commit_index: self.commit_index,
            leader_last: s.accepted.index,
            read_seq: self.read_seq,
        };
        s.send(to.clone(), message);
        self.replicate_to(s, to, now);
    }

    /// The entries a follower needs were compacted away.
    pub(super) fn on_log_compacted(&mut self, s: &mut Shared, to: &NodeId) {
        let Some(progress) = self.peers.get_mut(to) else { return };
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
        s.outputs.push_back(Output::SendSnapshot { to: to.clone(), rollback_after });
    }

    /// The snapshot for `to` was handed to the transport (`Some(position)`) or could not
    /// be made (`None`). Shipping resumes once the follower acknowledges the snapshot's
    /// position, or after `snapshot_timeout_us` if it never does.
    pub(super) fn on_snapshot_finished(&mut self, s: &Shared, now: Micros, to: &NodeId, sent: Option<Position>) {
        let Some(progress) = self.peers.get_mut(to) else { return };
        progress.last_sent_at = now;
        match sent {
            Some(position) => progress.snapshot_wait = Some((position.index, now + s.config.snapshot_timeout_us)),
            None => progress.snapshotting = false,
        }
    }

    /// The transport (re)connected to `peer`: anything in flight may be gone.
    pub(super) fn on_peer_connected(&mut self, s: &mut Shared, now: Micros, peer: &NodeId) {
        let Some(progress) = self.peers.get_mut(peer) else { return };
        progress.next = progress.matched + 1;
        progress.received = 0;
        if progress.snapshot_wait.is_some() {
            // A snapshot sent before the connection dropped may never have been installed
            // (the peer restarted, say): do not wait out its deadline before sending another.
            progress.snapshot_wait = None;
            progress.snapshotting = false;
        }
        self.send_append(s, peer, now, true);
    }

    /// The membership changed: ship to new members, stop counting removed ones.
    pub(super) fn adopt_membership(&mut self, s: &mut Shared, now: Micros) {
        let membership = &s.membership;
        self.peers.retain(|id, _| membership.contains(id));
        let mut added = Vec::new();
        for id in membership.members() {
            if *id != s.config.id && !self.peers.contains_key(id) {
                self.peers.insert(id.clone(), Progress::new(s.accepted, now));
                added.push(id.clone());
            }
        }
        for peer in added {
            self.send_append(s, &peer, now, true);
        }
        self.advance(s, now);
    }

    /// This node stops leading: pending writes end with "outcome unknown" (they are
    /// durable here and may or may not survive), pending reads fail, naming the leader
    /// now followed (`s.leader`).
    pub(super) fn step_down(self, s: &mut Shared) {
        let copies = |index: u64| 1 + self.peers.values().filter(|progress| progress.matched >= index).count();
        for waiter in &self.writes {
            let error = WriteError::Timeout {
                position: waiter.position,
                acked_by: copies(waiter.position.index),
                needed: format!("{} (this node stopped leading)", requirement_text(waiter.requirement)),
            };
            s.outputs.push_back(Output::WriteDone { tag: waiter.tag, result: Err(error) });
        }
        for read in &self.reads {
            s.outputs.push_back(Output::ReadDone { tag: read.tag, result: Err(ReadError::NotLeader { leader: s.leader.clone() }) });
        }
    }

    /// Whether the lease lets this leader start writes at `now`, and no handover is under way.
    pub(super) fn may_write(&self, now: Micros) -> bool {
        now < self.lease_until && self.handover.is_none()
    }

    /// The voter best placed to take over (in sync; one that may lead before one of
    /// priority 0; furthest along).
    pub(super) fn best_successor(&self, voters: &BTreeSet<NodeId>) -> Option<NodeId> {
        self.peers
            .iter()
            .filter(|(id, progress)| progress.in_sync && voters.contains(*id))
            .max_by_key(|(id, progress)| (progress.preference.unwrap_or_default().may_lead(), progress.matched, std::cmp::Reverse((*id).clone())))
            .map(|(id, _)| id.clone())
    }

    /// The voter leadership should move to: of a higher priority than `own`, in sync,
    /// and the highest such priority (ties: furthest along, then by name).
    pub(super) fn preferred_voter(&self, voters: &BTreeSet<NodeId>, own: u8) -> Option<NodeId> {
        self.peers
            .iter()
            .filter_map(|(id, progress)| Some((id, progress, progress.preference?)))
            .filter(|(id, progress, preference)| {
                progress.in_sync && voters.contains(*id) && preference.may_lead() && !preference.yielding && preference.leader_priority > own
            })
            .max_by_key(|(id, progress, preference)| (preference.leader_priority, progress.matched, std::cmp::Reverse((*id).clone())))
            .map(|(id, _, _)| id.clone())
    }

    /// The lines of `/status` about each follower.
    pub(super) fn follower_status(&self, last_index: u64, now: Micros) -> Vec<FollowerStatus> {
        self.peers
            .iter()
            .map(|(id, progress)| FollowerStatus {
                id: id.clone(),
                matched: progress.matched,
                lag_us: self.follower_lag_us(last_index, progress, now),
                in_sync: progress.in_sync,
                last_ack_ago_us: progress.last_ack_at.map(|at| now.saturating_sub(at)),
                preference: progress.preference,
            })
            .collect()
    }

    fn follower_lag_us(&self, last_index: u64, progress: &Progress, now: Micros) -> Micros {
        if progress.matched >= last_index {
            return 0;
        }
        let oldest_missing = progress.matched + 1;
        match self.append_times.iter().find(|(index, _)| *index >= oldest_missing) {
            Some((_, appended_at)) => now.saturating_sub(*appended_at),
            // Older than anything we timed (e.g. written before this leader started).
            None => self.append_times.front().map_or(0, |(_, at)| now.saturating_sub(*at)),
        }
    }

    /// The deadlines this leader tracks, for `poll_timeout`: the next heartbeat, each
    /// write's and read's timeout, each snapshot's and the handover's deadline, when an
    /// in-sync follower's silence drops it from the in-sync set, when a follower's lost
    /// entries are due to be resent, and (if still ahead, `after`) when the lease ends.
    pub(super) fn deadlines<'a>(&'a self, s: &Shared, after: Micros) -> impl Iterator<Item = Micros> + 'a {
        let (in_sync_timeout, resend_timeout) = (s.config.in_sync_timeout_us, s.config.resend_timeout_us);
        let writes = self.writes.iter().map(|waiter| waiter.deadline);
        let reads = self.reads.iter().map(|read| read.deadline);
        let handover = self.handover.as_ref().map(|(_, until)| *until);
        let lease = Some(self.lease_until).filter(|until| *until > after && *until != Micros::MAX);
        let per_follower = self.peers.values().flat_map(move |progress| {
            let snapshot = progress.snapshot_wait.map(|(_, deadline)| deadline);
            // `on_tick` acts once the time since is *more* than the timeout.
            let silent = progress.last_ack_at.filter(|_| progress.in_sync).map(|at| at + in_sync_timeout + 1);
            let waiting = progress.lost_in_flight() && !progress.fetching && !progress.snapshotting;
            let backoff = resend_timeout << progress.fruitless_resends.min(MAX_RESEND_BACKOFF_SHIFT);
            let resend = waiting.then_some(progress.last_sent_at + backoff + 1);
            [snapshot, silent, resend].into_iter().flatten()
        });
        std::iter::once(self.next_heartbeat_at).chain(writes).chain(reads).chain(handover).chain(lease).chain(per_follower)
    }

    /// `matched < next` for every follower.
    pub(super) fn check_invariants(&self) -> Result<(), String> {
        for (id, progress) in &self.peers {
            if progress.matched >= progress.next {
                return Err(format!("progress of {id}: matched {} is not below next {}", progress.matched, progress.next));
            }
        }
        Ok(())
    }
}

/// Entries a node committed after it stopped leading (or for an epoch it no longer
/// leads): they are kept as local entries of their epoch (a later leader rolls them back
/// if it lacks them) and their waiters end with "outcome unknown".
pub(super) fn settle_unled_writes(s: &mut Shared, entries: Vec<Entry>, waiters: Vec<(u64, u64, AckRequirement)>) {
    for entry in &entries {
        if entry.index == s.last.index + 1 {
            // The disk now holds this entry after `last`: anything accepted from
            // another leader beyond `last` will not apply there (the storage
            // refuses it) and is asked for again, then found to diverge.
            s.forget_epoch_starts_after(s.last.index);
            s.note_epoch_start(entry);
            s.last = entry.position();
            s.accepted = s.last;
        }
    }
    for (tag, index, requirement) in waiters {
        let epoch = entries.iter().find(|entry| entry.index == index).map_or(s.epoch, |entry| entry.epoch);
        let error = WriteError::Timeout {
            position: Position::new(epoch, index),
            acked_by: 1,
            needed: format!("{} (this node stopped leading)", requirement_text(requirement)),
        };
        s.outputs.push_back(Output::WriteDone { tag, result: Err(error) });
    }
}

/// The index a heartbeat should name to make a follower with a foreign durable end
/// report its divergence: that end, if our log has an entry of another epoch there.
fn divergence_probe(epoch_starts: &[(u64, u64)], last_index: u64, progress: &Progress) -> Option<u64> {
    let foreign = progress.foreign_durable?;
    let ours = epoch_in(epoch_starts, foreign.index).filter(|_| foreign.index <= last_index)?;
    (ours != foreign.epoch).then_some(foreign.index)
}

/// A fruitless resend waits at most `resend_timeout_us` times 2 to this power.
pub(super) const MAX_RESEND_BACKOFF_SHIFT: u32 = 4;

#[derive(Debug)]
pub(super) struct Leader {
    pub(super) peers: BTreeMap<NodeId, Progress>,
    /// Recent entries, contiguous, ending at `Shared::last`.
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
    /// An operator asked to hand leadership to this node; writes pause until it has
    /// caught up and raft transferred, or the deadline passes.
    pub(super) handover: Option<(NodeId, Micros)>,
    /// A voter of higher priority than this leader's, connected and caught up since
    /// this time: leadership moves to it once that has lasted the settle time.
    pub(super) preferred_since: Option<(NodeId, Micros)>,
    /// No move to a preferred member starts before this (set after each attempt, so one
    /// that fails does not pause writes again at once).
    pub(super) next_return_at: Micros,
    /// Moves to a preferred member tried in this leadership: each failed one doubles the
    /// wait before the next (the move's target may be unable to win an election).
    pub(super) return_attempts: u32,
}
