//! The simulated network and request handling: sending with latency, loss and duplication, delivering, serving client requests, and carrying out the replica's outputs.

use super::*;

impl World {
    pub(super) fn send(&mut self, from: Addr, to: Addr, payload: Payload) {
        let region = |world: &World, addr: Addr| match addr {
            Addr::Node(node) => world.nodes[node].region,
            Addr::Client(client) => world.clients[client].region,
        };
        let base = REGION_LATENCY_MS[region(self, from)][region(self, to)] * MS;
        if let (Addr::Node(source), Addr::Node(target)) = (from, to) {
            if self.blocked.contains_key(&(source, target)) || self.rng.chance(self.loss_percent) {
                return;
            }
            if self.rng.chance(self.duplicate_percent) {
                let delay = base + self.rng.range(100, base / 10 + 3 * MS);
                self.schedule(delay, Event::Deliver { from, to, payload: payload.clone() });
            }
        }
        let delay = base + self.rng.range(50, base / 10 + 2 * MS);
        self.schedule(delay, Event::Deliver { from, to, payload });
    }

    pub(super) fn deliver(&mut self, from: Addr, to: Addr, payload: Payload) {
        match (to, payload) {
            (Addr::Node(node), Payload::Replica(message)) => {
                let Addr::Node(source) = from else { return };
                let now = self.node_now(node);
                let from_id = self.nodes[source].id.clone();
                if let Some(replica) = &mut self.nodes[node].replica {
                    replica.handle(ReplicaEvent::Message { from: from_id, message }, now);
                    self.drain(node);
                }
            }
            (Addr::Node(node), Payload::Request { op, client, request }) => self.serve(node, client, op, request),
            (Addr::Node(node), Payload::Snapshot { entries, position, rollback_after }) if self.nodes[node].is_running() => {
                self.enqueue_persist(node, Persist::Snapshot { entries, position, rollback_after });
            }
            (Addr::Client(client), Payload::Reply { op, reply }) => {
                if self.clients[client].current != Some(op) {
                    return;
                }
                let outcome = match reply {
                    Reply::WriteOk(position) => Outcome::WriteOk(position),
                    Reply::WriteFailed | Reply::ReadFailed => Outcome::Failed,
                    Reply::WriteUnknown => Outcome::Unknown,
                    Reply::ReadOk { write_id, write_index, node_last } => Outcome::ReadOk { write_id, write_index, node_last },
                };
                self.complete_op(client, op, outcome);
            }
            _ => {}
        }
    }

    // ---- a node serving clients ----

    pub(super) fn reply(&mut self, node: usize, client: usize, op: usize, reply: Reply) {
        self.send(Addr::Node(node), Addr::Client(client), Payload::Reply { op, reply });
    }

    pub(super) fn drain(&mut self, node: usize) {
        loop {
            let Some(output) = self.nodes[node].replica.as_mut().and_then(Replica::poll_output) else { return };
            match output {
                Output::Send { to, message } => {
                    let Some(target) = self.nodes.iter().position(|candidate| candidate.id == to) else { continue };
                    self.send(Addr::Node(node), Addr::Node(target), Payload::Replica(message));
                }
                Output::Persist { entries } => self.enqueue_persist(node, Persist::Follower { entries }),
                Output::ReadLog { to, from_index } => {
                    let now = self.node_now(node);
                    let event = match self.nodes[node].disk.read_log(from_index, 512) {
                        Some(entries) => ReplicaEvent::LogRead { to, entries },
                        None => ReplicaEvent::LogCompacted { to },
                    };
                    self.nodes[node].replica.as_mut().expect("running").handle(event, now);
                }
                Output::SaveElection { state, then } => {
                    // The simulated disk stores it at once; then its messages leave.
                    self.nodes[node].saved_election = Some(state);
                    for (to, message) in then {
                        let Some(target) = self.nodes.iter().position(|candidate| candidate.id == to) else { continue };
                        self.send(Addr::Node(node), Addr::Node(target), Payload::Replica(message));
                    }
                }
                Output::MembershipChanged { .. } => {}
                Output::SendSnapshot { to, rollback_after } => {
                    // As the server does: the snapshot is handed to the transport and the
                    // core told at once; it may still be lost or partitioned away.
                    let now = self.node_now(node);
                    let SimSnapshot { entries, position } = self.nodes[node].disk.snapshot();
                    self.nodes[node].replica.as_mut().expect("running").handle(ReplicaEvent::SnapshotFinished { to: to.clone(), sent: Some(position) }, now);
                    if let Some(target) = self.nodes.iter().position(|candidate| candidate.id == to) {
                        trace!(self, "snapshot at {position} from n{} to {to}", node + 1);
                        self.send(Addr::Node(node), Addr::Node(target), Payload::Snapshot { entries, position, rollback_after });
                    }
                }
                Output::WriteDone { tag, result } => {
                    let Some((client, op)) = self.nodes[node].write_tags.remove(&tag) else { continue };
                    let reply = match result {
                        Ok(position) => Reply::WriteOk(position),
                        Err(WriteError::Timeout { .. } | WriteError::Unsatisfiable { .. }) => Reply::WriteUnknown,
                        Err(WriteError::NotLeader { .. }) => Reply::WriteFailed,
                    };
                    self.reply(node, client, op, reply);
                }
                Output::ReadDone { tag, result } => {
                    let Some((client, op, reply)) = self.nodes[node].read_tags.remove(&tag) else { continue };
                    let reply = if result.is_ok() { reply } else { Reply::ReadFailed };
                    self.reply(node, client, op, reply);
                }
            }
        }
    }

    // ---- clients ----

    pub(super) fn read_local(&self, node: usize, key: u8) -> Reply {
        let state = &self.nodes[node];
        let (write_id, write_index) = match state.disk.read(key) {
            Some((write_id, index)) => (Some(write_id), index),
            None => (None, 0),
        };
        Reply::ReadOk { write_id, write_index, node_last: state.last() }
    }

    pub(super) fn forward_to_leader(&mut self, node: usize, client: usize, op: usize, request: Request) {
        let leader = self.current_leader();
        if leader == node {
            // No leader is known (an election is under way): the client hears a refusal.
            let reply = match request {
                Request::Write { .. } | Request::Rewrite { .. } => Reply::WriteFailed,
                Request::Read { .. } => Reply::ReadFailed,
            };
            self.reply(node, client, op, reply);
            return;
        }
        self.send(Addr::Node(node), Addr::Node(leader), Payload::Request { op, client, request });
    }

    pub(super) fn serve(&mut self, node: usize, client: usize, op: usize, request: Request) {
        let now = self.node_now(node);
        let Some(replica) = &self.nodes[node].replica else { return };
        let is_leader = replica.is_leader();
        let lag = replica.lag_us(now);
        match request {
            Request::Write { write_id, key, requirement } => {
                if replica.accepting_writes(now).is_err() {
                    self.reply(node, client, op, Reply::WriteFailed);
                    return;
                }
                let epoch = replica.epoch();
                let state = &mut self.nodes[node];
                if state.leading_epoch != epoch {
                    state.leading_epoch = epoch;
                    state.next_index = state.last().index + 1;
                }
                let entry = Entry { index: state.next_index, epoch, payload: encode(write_id, key).into() };
                state.next_index += 1;
                self.observations.created.insert((entry.epoch, entry.index), write_id);
                self.enqueue_persist(node, Persist::LeaderWrite { entry, client, op, requirement, stage: WriteStage::Queued });
            }
            Request::Rewrite { requirement } => {
                if replica.accepting_writes(now).is_err() {
                    self.reply(node, client, op, Reply::WriteFailed);
                    return;
                }
                // Runs after the writes queued before it, as the server's storage thread
                // runs batches in order.
                self.enqueue_persist(node, Persist::LeaderRewrite { client, op, requirement });
            }
            Request::Read { key, level, after, max_lag_us } => match level {
                ReadLevel::None => {
                    let reply = self.read_local(node, key);
                    self.reply(node, client, op, reply);
                }
                ReadLevel::Bounded => {
                    if lag.is_some_and(|lag| lag <= max_lag_us) {
                        let reply = self.read_local(node, key);
                        self.reply(node, client, op, reply);
                    } else {
                        self.forward_to_leader(node, client, op, Request::Read { key, level: ReadLevel::Weak, after, max_lag_us });
                    }
                }
                ReadLevel::Session => {
                    if replica.holds(after) {
                        let reply = self.read_local(node, key);
                        self.reply(node, client, op, reply);
                    } else {
                        let deadline = self.now + SESSION_WAIT;
                        self.nodes[node].sessions.push(PendingRead { client, op, key, after, deadline });
                    }
                }
                ReadLevel::Weak | ReadLevel::Strong | ReadLevel::Linearizable => {
                    if !is_leader {
                        self.forward_to_leader(node, client, op, Request::Read { key, level, after, max_lag_us });
                    } else if level == ReadLevel::Weak {
                        let reply = self.read_local(node, key);
                        self.reply(node, client, op, reply);
                    } else {
                        let reply = self.read_local(node, key);
                        let observed = self.nodes[node].last().index;
                        let state = &mut self.nodes[node];
                        let tag = state.next_tag;
                        state.next_tag += 1;
                        state.read_tags.insert(tag, (client, op, reply));
                        state.replica.as_mut().expect("running").handle(ReplicaEvent::ReadBarrier { tag, observed_index: observed }, now);
                        self.drain(node);
                    }
                }
            },
        }
    }

    pub(super) fn answer_sessions(&mut self, node: usize) {
        let Some(replica) = &self.nodes[node].replica else { return };
        let held: Vec<bool> = self.nodes[node].sessions.iter().map(|read| replica.holds(read.after)).collect();
        let ready: Vec<PendingRead> = {
            let sessions = &mut self.nodes[node].sessions;
            let mut held = held.into_iter();
            let (ready, waiting): (Vec<_>, Vec<_>) = sessions.drain(..).partition(|_| held.next().unwrap_or(false));
            *sessions = waiting;
            ready
        };
        for read in ready {
            let reply = self.read_local(node, read.key);
            self.reply(node, read.client, read.op, reply);
        }
    }

    pub(super) fn expire_sessions(&mut self, node: usize) {
        let now = self.now;
        let expired: Vec<PendingRead> = {
            let sessions = &mut self.nodes[node].sessions;
            let (expired, waiting): (Vec<_>, Vec<_>) = sessions.drain(..).partition(|read| read.deadline <= now);
            *sessions = waiting;
            expired
        };
        for read in expired {
            self.reply(node, read.client, read.op, Reply::ReadFailed);
        }
    }

    // ---- disk ----
}
