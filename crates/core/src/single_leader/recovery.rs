//! The candidate's round before it leads: raft elected this node, and it first asks the
//! voters who holds more of the log, so that it leads only if it holds every write a
//! majority acknowledged (else it hands leadership to the node that does).

use super::*;

/// A node raft elected, collecting durable positions before it leads (module docs of
/// `election.rs` and docs/design/failover.md).
#[derive(Debug)]
pub(super) struct Recovery {
    pub(super) epoch: u64,
    pub(super) answers: BTreeMap<NodeId, Position>,
    /// When the first requests went out (the lease of a leader that emerges counts
    /// from here) and when they were last repeated to nodes that did not answer.
    pub(super) sent_at: Micros,
    pub(super) resent_at: Micros,
    /// Leadership is being handed to the most up-to-date node, until this time.
    pub(super) transfer: Option<(NodeId, Micros)>,
}

/// What a recovery round decided.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Conclusion {
    /// Not enough answers yet, a transfer is under way, or a leader this node heard from
    /// may still hold its lease.
    Wait,
    /// Another voter is ahead: raft should hand it leadership.
    TransferTo(NodeId),
    /// No voter of a majority is ahead: lead `epoch`, with a lease until `lease_until`.
    Lead { epoch: u64, lease_until: Micros },
}

impl Recovery {
    /// Asks every other voter for its durable position.
    pub(super) fn start(s: &mut Shared, now: Micros, epoch: u64) -> Recovery {
        let mut answers = BTreeMap::new();
        answers.insert(s.config.id.clone(), s.last);
        for peer in s.membership.voters.clone() {
            if peer != s.config.id {
                s.send(peer, Message::Recover { epoch });
            }
        }
        Recovery { epoch, answers, sent_at: now, resent_at: now, transfer: None }
    }

    /// Requests or answers may be lost: ask the silent nodes again every heartbeat interval.
    pub(super) fn resend(&mut self, s: &mut Shared, now: Micros) {
        if now < self.resent_at + s.config.heartbeat_interval_us {
            return;
        }
        self.resent_at = now;
        let silent: Vec<NodeId> = s.membership.voters.iter().filter(|member| !self.answers.contains_key(*member)).cloned().collect();
        for peer in silent {
            s.send(peer, Message::Recover { epoch: self.epoch });
        }
    }

    /// A voter's durable position; returns whether it counts (right round, a voter: a
    /// learner's answer makes no majority, and a learner cannot lead).
    pub(super) fn on_answer(&mut self, s: &Shared, from: &NodeId, epoch: u64, last: Position) -> bool {
        let counts = self.epoch == epoch && s.membership.voters.contains(from);
        if counts {
            self.answers.insert(from.clone(), last);
        }
        counts
    }

    /// With answers from a majority: lead if no answer is ahead of ours, else hand
    /// leadership to the most up-to-date node (raft's leadership transfer). Not before a
    /// leader this node itself heard from (at `leader_contact_at`) may still hold its lease.
    pub(super) fn conclude(&mut self, s: &Shared, now: Micros, election_timeout: Micros, leader_contact_at: Option<Micros>) -> Conclusion {
        if self.answers.len() < s.membership.majority() || self.transfer.is_some() {
            return Conclusion::Wait;
        }
        let best = self
            .answers
            .iter()
            .max_by_key(|(id, last)| (last.epoch, last.index, **id == s.config.id, std::cmp::Reverse((*id).clone())))
            .map(|(id, _)| id.clone())
            .expect("answers include our own");
        if best != s.config.id {
            debug_assert!((s.last.epoch, s.last.index) <= (self.answers[&best].epoch, self.answers[&best].index));
            self.transfer = Some((best.clone(), now + 2 * election_timeout));
            return Conclusion::TransferTo(best);
        }
        if leader_contact_at.is_some_and(|at| now < at + election_timeout) {
            return Conclusion::Wait;
        }
        Conclusion::Lead { epoch: self.epoch, lease_until: self.sent_at + lease_us(election_timeout) }
    }

    /// The node chosen to take over did not within its deadline.
    pub(super) fn transfer_failed(&self, now: Micros) -> bool {
        self.transfer.as_ref().is_some_and(|(_, until)| now >= *until)
    }

    pub(super) fn deadline(&self) -> Option<Micros> {
        self.transfer.as_ref().map(|(_, until)| *until)
    }
}
