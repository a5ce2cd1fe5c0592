//! Simulated clients: issuing writes and reads, and recording what each was told in the history.

use super::*;

impl World {
    pub(super) fn client_issue(&mut self, client: usize) {
        if !self.clients_on || self.clients[client].current.is_some() {
            return;
        }
        if self.faults_on && self.issued >= self.options.steps {
            return;
        }
        self.issued += 1;
        let leader = self.current_leader();
        // w=all counts voters: non-voters never acknowledge a write.
        let members = self.nodes.len() - self.non_voters.len();
        let default = self.options.ack.requirement();
        let state = &mut self.clients[client];
        let rng = &mut state.rng;
        let (kind, target, request) = if rng.chance(40) {
            let write_id = self.next_write_id;
            self.next_write_id += 1;
            let key = rng.range(0, KEYS - 1) as u8;
            // Writes use the cluster default or a per-request w=; w=1 only where the
            // cluster itself promises no more (--ack async).
            let roll = rng.range(0, 99);
            let requirement = match roll {
                0..=59 => default,
                60..=74 if default == AckRequirement::Nodes(1) => AckRequirement::Nodes(1),
                60..=89 => AckRequirement::Majority,
                _ => AckRequirement::Nodes(members),
            };
            if self.options.rewrites && rng.chance(20) {
                (OpKind::Rewrite { requirement }, leader, Request::Rewrite { requirement })
            } else {
                (OpKind::Write { write_id, key, requirement }, leader, Request::Write { write_id, key, requirement })
            }
        } else {
            let key = rng.range(0, KEYS - 1) as u8;
            let level = *rng.pick(&[ReadLevel::None, ReadLevel::Bounded, ReadLevel::Session, ReadLevel::Weak, ReadLevel::Strong, ReadLevel::Linearizable]);
            let after = state.session;
            let max_lag_us = rng.range(5, 300) * MS;
            (OpKind::Read { key, level, after }, state.home, Request::Read { key, level, after, max_lag_us })
        };
        let op = self.history.len();
        self.history.push(Op { client, kind, invoked: self.now, completed: None, outcome: Outcome::Pending });
        self.clients[client].current = Some(op);
        trace!(self, "client {client} invokes op {op} {:?} at n{}", self.history[op].kind, target + 1);
        self.send(Addr::Client(client), Addr::Node(target), Payload::Request { op, client, request });
        self.schedule(CLIENT_TIMEOUT, Event::ClientTimeout { client, op });
    }

    pub(super) fn complete_op(&mut self, client: usize, op: usize, outcome: Outcome) {
        trace!(self, "client {client} completes op {op}: {outcome:?}");
        match &outcome {
            Outcome::WriteOk(position) => {
                self.clients[client].session = self.clients[client].session.max(*position);
                if let OpKind::Write { requirement, .. } = self.history[op].kind {
                    if crate::history::is_durable_requirement(requirement, self.nodes.len()) {
                        self.max_durable_acked_index = self.max_durable_acked_index.max(position.index);
                    }
                }
            }
            Outcome::ReadOk { node_last, .. } => {
                // Positions order by (epoch, index): a node still holding an old leader's
                // entries may be longer but is not ahead.
                let session = &mut self.clients[client].session;
                *session = (*session).max(*node_last);
            }
            _ => {}
        }
        self.history[op].completed = Some(self.now);
        self.history[op].outcome = outcome;
        self.clients[client].current = None;
        let think = self.clients[client].rng.range(0, 20 * MS);
        self.schedule(think, Event::ClientWake { client });
    }

    // ---- faults ----
}

pub(super) struct Client {
    pub(super) region: usize,
    pub(super) home: usize,
    pub(super) rng: Rng,
    pub(super) session: Position,
    pub(super) current: Option<usize>,
}
