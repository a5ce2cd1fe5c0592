//! The fault schedule: partitions, crashes, pauses, disk stalls, and a destroyed leader disk replaced by promoting the most up-to-date survivor.

use super::*;

impl World {
    pub(super) fn inject_fault(&mut self) {
        if !self.faults_on {
            return;
        }
        let next = self.rng.range(300 * MS, 1_500 * MS);
        self.schedule(next, Event::Fault);
        let count = self.nodes.len();
        let node = self.rng.range(0, count as u64 - 1) as usize;
        let crash_faults = matches!(self.options.faults, Faults::Crash | Faults::All);
        let network_faults = matches!(self.options.faults, Faults::Partition | Faults::All);
        let all = matches!(self.options.faults, Faults::All);
        let roll = self.rng.range(0, 99);
        match roll {
            0..=24 if crash_faults && self.nodes[node].is_running() => {
                self.crash_node(node);
                let delay = self.rng.range(100 * MS, 3 * SECOND);
                self.schedule(delay, Event::Restart { node });
            }
            25..=39 if crash_faults && self.nodes[node].is_running() && self.nodes[node].paused_until.is_none() => {
                let pause = self.rng.range(50 * MS, 2 * SECOND);
                self.nodes[node].paused_until = Some(self.now + pause);
                trace!(self, "pause {} for {pause} us", self.nodes[node].id);
                self.schedule(pause, Event::Resume { node });
            }
            40..=69 if network_faults => {
                let partition = self.next_partition;
                self.next_partition += 1;
                let shape = self.rng.range(0, 2);
                // With failover, isolating the leader with a minority matters most.
                let node = if self.options.failover && shape == 2 && self.rng.chance(60) { self.current_leader() } else { node };
                let other = (node + 1 + self.rng.range(0, count as u64 - 2) as usize) % count;
                match shape {
                    0 => {
                        self.blocked.insert((node, other), partition);
                        self.blocked.insert((other, node), partition);
                    }
                    1 => {
                        self.blocked.insert((node, other), partition);
                    }
                    _ => {
                        for peer in (0..count).filter(|peer| *peer != node) {
                            self.blocked.insert((node, peer), partition);
                            self.blocked.insert((peer, node), partition);
                        }
                    }
                }
                trace!(self, "partition {partition}: shape {shape} around n{} / n{}", node + 1, other + 1);
                let duration = self.rng.range(100 * MS, 3 * SECOND);
                self.schedule(duration, Event::Heal { partition });
            }
            70..=79 if all => {
                let stall = self.rng.range(50 * MS, 800 * MS);
                self.nodes[node].disk_stalled_until = self.now + stall;
                trace!(self, "disk stall on {} for {stall} us", self.nodes[node].id);
            }
            80..=87 if all && count >= 3 && !self.options.failover => self.destroy_leader_and_promote(),
            80..=87 if all && count >= 3 && self.replacement.is_none() && node != self.current_leader() => {
                trace!(self, "replace {}: remove it, wipe its disk, add it back", self.nodes[node].id);
                self.replacement = Some((node, ReplaceStage::Removing));
                self.schedule(0, Event::Replace);
            }
            _ => {}
        }
    }

    /// The leader's disk is lost for good; the operator promotes the most up-to-date
    /// other node (by durable log) in a new epoch and restarts every node with it.
    pub(super) fn destroy_leader_and_promote(&mut self) {
        let old = self.current_leader();
        // One lost disk at a time: the last rebuilt disk must again hold every write that
        // was acknowledged with a majority requirement when it was lost. Two disks lost
        // together can take all of a write's copies, which no ack mode of a 3-node cluster
        // promises to survive. Nodes that are merely down keep their disks and count.
        if let Some((rebuilt, required)) = self.rebuilding {
            if self.nodes[rebuilt].last().index < required {
                return;
            }
        }
        self.rebuilding = Some((old, self.max_durable_acked_index));
        self.crash_node(old);
        self.nodes[old].wipe_disk();
        self.destroyed_disks += 1;
        let chosen = (0..self.nodes.len())
            .filter(|candidate| *candidate != old)
            .max_by_key(|candidate| (self.nodes[*candidate].last().index, std::cmp::Reverse(*candidate)))
            .expect("at least two nodes");
        let epoch = self.nodes.iter().map(|node| node.epoch).max().unwrap_or(1) + 1;
        let leader = self.nodes[chosen].id.clone();
        trace!(self, "destroy disk of {}; promote {leader} (at {}) in epoch {epoch}", self.nodes[old].id, self.nodes[chosen].last());
        for node in 0..self.nodes.len() {
            self.nodes[node].leader = leader.clone();
            self.nodes[node].epoch = epoch;
            if node != old && self.nodes[node].is_running() {
                self.crash_node(node);
                self.start_node(node);
            }
        }
        let delay = self.rng.range(200 * MS, 2 * SECOND);
        self.schedule(delay, Event::Restart { node: old });
    }

    /// One step of the replacement under way; repeats every 200 ms until done, through
    /// faults and elections, as an operator's script would.
    pub(super) fn continue_replacement(&mut self) {
        let Some((node, stage)) = self.replacement else { return };
        let id = self.nodes[node].id.clone();
        let leader = self.current_leader();
        let now = self.node_now(leader);
        // Only a leader whose lease holds speaks for the cluster: an old one cut off may
        // still think it leads, with a membership from before the change.
        // Nor one whose membership may be out of date (a change not yet applied).
        let may_lead: BTreeSet<String> =
            self.nodes.iter().zip(&self.priorities).filter(|(_, priority)| **priority > 0).map(|(node, _)| node.id.clone()).collect();
        let Some(replica) = self.nodes[leader].replica.as_mut().filter(|replica| replica.accepting_writes(now).is_ok() && !replica.membership_change_pending())
        else {
            let why = self.nodes[leader].replica.as_ref().map(|replica| (replica.accepting_writes(now).is_ok(), replica.membership_change_pending()));
            trace!(self, "replacement of {id} waits: n{} (accepting writes, change pending) = {why:?}", leader + 1);
            self.schedule(200 * MS, Event::Replace);
            return;
        };
        match stage {
            ReplaceStage::Removing if leader == node => {
                // It leads now: as an operator must, hand leadership to another voter first.
                let to = replica.membership().voters.iter().find(|voter| **voter != id && may_lead.contains(*voter)).cloned();
                if let Some(to) = to {
                    let outcome = replica.transfer_leadership(now, &to);
                    trace!(self, "{id} leads: transfer to {to}: {outcome:?}");
                    self.drain(leader);
                }
            }
            ReplaceStage::Removing if !replica.membership().contains(&id) => {
                // Applied by the leader, so committed: the disk may go.
                self.crash_node(node);
                let state = &mut self.nodes[node];
                let disk = state.wipe_disk();
                state.wiped.extend(disk);
                // The rollback store is archived by the operator, not lost with the disk.
                state.saved_election = None;
                state.joining = true;
                self.replaced_disks += 1;
                self.replacement = Some((node, ReplaceStage::Joining));
                trace!(self, "removal of {id} applied; its disk is wiped");
            }
            ReplaceStage::Removing => {
                let outcome = replica.change_membership(now, MembershipRequest::Remove { id: id.clone() });
                trace!(self, "ask n{} to remove {id}: {outcome:?}", leader + 1);
                self.drain(leader);
            }
            ReplaceStage::Joining => {
                if !self.nodes[node].is_running() {
                    self.start_node(node);
                }
                let Some(replica) = self.nodes[leader].replica.as_mut() else { return };
                let non_voter_back = self.non_voters.contains(&id) && replica.membership().learners.contains(&id);
                if replica.membership().voters.contains(&id) || non_voter_back {
                    trace!(self, "{id} is a member again");
                    self.nodes[node].joining = false;
                    self.replacement = None;
                    return;
                }
                if !replica.membership().contains(&id) {
                    let outcome = replica.change_membership(now, MembershipRequest::Add { id: id.clone(), address: id.clone() });
                    trace!(self, "ask n{} to add {id}: {outcome:?}", leader + 1);
                    self.drain(leader);
                }
            }
        }
        self.schedule(200 * MS, Event::Replace);
    }

    // ---- network ----
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ReplaceStage {
    Removing,
    Joining,
}
