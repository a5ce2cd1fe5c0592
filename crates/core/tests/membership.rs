//! Membership changes, driven through a small in-memory cluster: messages are delivered
//! at once and in order, persists complete at once, and time moves in 5 ms steps. What is
//! checked is the protocol, not timing: who is a voter, who holds the data, which
//! requests are refused and why.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use tern_core::single_leader::Event;
use tern_core::{AckMode, AckRequirement, Config, ElectionConfig, Entry, Membership, MembershipError, MembershipRequest, Output, Position, Protocol, Replica};

struct Cluster {
    now: u64,
    nodes: BTreeMap<String, Replica>,
    logs: BTreeMap<String, Vec<Entry>>,
    network: VecDeque<(String, String, tern_core::Message)>,
    acknowledged: BTreeSet<u64>,
    /// The last membership each node reported through `Output::MembershipChanged`.
    reported: BTreeMap<String, Membership>,
}

fn config(id: &str, join: bool) -> Config {
    let members = vec!["a".to_string(), "b".to_string(), "c".to_string()];
    // A joining node names itself as leader, as `tern server --join` does (it has no
    // --cluster): it must still not campaign.
    let mut config = Config::new(id, members, if join { id } else { "a" }, AckMode::SemiSync);
    config.addresses = [("a", "10.0.0.1:7000"), ("b", "10.0.0.2:7000"), ("c", "10.0.0.3:7000")]
        .into_iter()
        .map(|(id, address)| (id.to_string(), address.to_string()))
        .collect();
    config.join = join;
    config.elections = Some(ElectionConfig { tick_us: 10_000, election_ticks: 10, heartbeat_ticks: 2, seed: 7 });
    config
}

impl Cluster {
    fn new() -> Cluster {
        let mut cluster = Cluster {
            now: 0,
            nodes: BTreeMap::new(),
            logs: BTreeMap::new(),
            network: VecDeque::new(),
            acknowledged: BTreeSet::new(),
            reported: BTreeMap::new(),
        };
        for id in ["a", "b", "c"] {
            cluster.start(id, false);
        }
        cluster.run_until("a leads", |cluster| cluster.nodes["a"].accepting_writes(cluster.now).is_ok());
        cluster
    }

    fn start(&mut self, id: &str, join: bool) {
        self.nodes.insert(id.to_string(), Replica::start(config(id, join), Position::ZERO, Vec::new(), None, self.now));
        self.logs.insert(id.to_string(), Vec::new());
        self.pump();
    }

    /// Handles every output and delivers every message until the cluster is quiet.
    fn pump(&mut self) {
        loop {
            let mut busy = false;
            let ids: Vec<String> = self.nodes.keys().cloned().collect();
            for id in ids {
                while let Some(output) = self.nodes.get_mut(&id).expect("known").poll_output() {
                    busy = true;
                    self.handle(&id, output);
                }
            }
            while let Some((from, to, message)) = self.network.pop_front() {
                busy = true;
                if let Some(node) = self.nodes.get_mut(&to) {
                    node.handle(Event::Message { from: from.clone(), message }, self.now);
                }
            }
            if !busy {
                return;
            }
        }
    }

    fn handle(&mut self, id: &str, output: Output) {
        let now = self.now;
        match output {
            Output::Send { to, message } => self.network.push_back((id.to_string(), to, message)),
            Output::Persist { entries } => {
                let log = self.logs.get_mut(id).expect("known");
                log.retain(|entry| entry.index < entries[0].index);
                log.extend(entries);
                let last = log.last().expect("just appended").position();
                self.nodes.get_mut(id).expect("known").handle(Event::Persisted(last), now);
            }
            Output::ReadLog { to, from_index } => {
                let entries: Vec<Entry> = self.logs[id].iter().filter(|entry| entry.index >= from_index).cloned().collect();
                self.nodes.get_mut(id).expect("known").handle(Event::LogRead { to: to.clone(), entries }, now);
            }
            Output::SendSnapshot { to, .. } => {
                let log = self.logs[id].clone();
                let position = log.last().map_or(Position::ZERO, Entry::position);
                self.logs.insert(to.clone(), log);
                if let Some(node) = self.nodes.get_mut(&to) {
                    node.handle(Event::SnapshotInstalled(position), now);
                }
                self.nodes.get_mut(id).expect("known").handle(Event::SnapshotFinished { to: to.clone(), sent: Some(position) }, now);
            }
            Output::WriteDone { tag, result } => {
                if result.is_ok() {
                    self.acknowledged.insert(tag);
                }
            }
            Output::MembershipChanged { membership } => {
                self.reported.insert(id.to_string(), membership);
            }
            Output::SaveElection { then, .. } => {
                for (to, message) in then {
                    self.network.push_back((id.to_string(), to, message));
                }
            }
            Output::ReadDone { .. } => {}
        }
    }

    fn run_until(&mut self, what: &str, done: impl Fn(&Cluster) -> bool) {
        for _ in 0..4_000 {
            if done(self) {
                return;
            }
            self.now += 5_000;
            let now = self.now;
            for node in self.nodes.values_mut() {
                node.handle(Event::Tick, now);
            }
            self.pump();
        }
        panic!("{what}: not reached in 20 s of cluster time");
    }

    /// The leader writes entry `index` and waits for `requirement`.
    fn write(&mut self, index: u64, requirement: AckRequirement) {
        let epoch = self.nodes["a"].epoch();
        let entry = Entry { index, epoch, payload: vec![index as u8] };
        self.logs.get_mut("a").expect("known").push(entry.clone());
        self.nodes.get_mut("a").expect("known").handle(Event::LeaderAppended { entries: vec![entry], waiters: vec![(index, index, requirement)] }, self.now);
        self.pump();
    }

    /// The leader `a` adds `d` (started with `join`) at 10.0.0.4:7000.
    fn add_d(&mut self) {
        let now = self.now;
        let leader = self.nodes.get_mut("a").expect("known");
        leader.change_membership(now, MembershipRequest::Add { id: "d".into(), address: "10.0.0.4:7000".into() }).expect("leader adds d");
    }

    fn voters(&self, id: &str) -> Vec<String> {
        self.nodes[id].status(self.now).membership.voters.into_iter().collect()
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|name| name.to_string()).collect()
}

#[test]
fn an_added_node_catches_up_as_a_learner_then_votes_and_counts_for_acks() {
    let mut cluster = Cluster::new();
    for index in 1..=30 {
        cluster.write(index, AckRequirement::Majority);
    }
    cluster.start("d", true);
    assert!(cluster.voters("d").is_empty(), "a joining node knows no members until the leader adds it");
    cluster.add_d();
    cluster.run_until("d is a voter everywhere", |cluster| ["a", "b", "c", "d"].iter().all(|id| cluster.voters(id).len() == 4));
    assert_eq!(cluster.logs["d"], cluster.logs["a"], "d holds the leader's whole log");
    let learned = &cluster.reported["d"];
    assert_eq!(learned.addresses.get("a").map(String::as_str), Some("10.0.0.1:7000"), "d learned every member's address from the leader");
    assert_eq!(learned.addresses.get("d").map(String::as_str), Some("10.0.0.4:7000"));

    // Four voters: a write that needs every member needs d's copy too.
    cluster.write(31, AckRequirement::All);
    assert!(cluster.acknowledged.contains(&31));
    assert_eq!(cluster.logs["d"].len(), 31);
}

#[test]
fn a_removed_node_stops_counting_and_receives_nothing_more() {
    let mut cluster = Cluster::new();
    cluster.write(1, AckRequirement::All);
    let now = cluster.now;
    let leader = cluster.nodes.get_mut("a").expect("known");
    leader.change_membership(now, MembershipRequest::Remove { id: "c".into() }).expect("leader removes c");
    assert_eq!(leader.change_membership(now, MembershipRequest::Remove { id: "b".into() }), Err(MembershipError::ChangePending), "one change at a time");
    cluster.run_until("c removed everywhere", |cluster| ["a", "b"].iter().all(|id| cluster.voters(id) == names(&["a", "b"])));
    // Two voters now: `All` is satisfied without c, which no longer receives anything.
    cluster.write(2, AckRequirement::All);
    assert!(cluster.acknowledged.contains(&2));
    assert_eq!(cluster.logs["c"].len(), 1);
}

#[test]
fn requests_that_make_no_sense_are_refused_with_the_reason() {
    let mut cluster = Cluster::new();
    let now = cluster.now;
    let leader = cluster.nodes.get_mut("a").expect("known");
    assert_eq!(leader.change_membership(now, MembershipRequest::Remove { id: "a".into() }), Err(MembershipError::RemovingLeader { id: "a".into() }));
    assert_eq!(leader.change_membership(now, MembershipRequest::Remove { id: "x".into() }), Err(MembershipError::NotMember { id: "x".into() }));
    assert_eq!(
        leader.change_membership(now, MembershipRequest::Add { id: "b".into(), address: "10.0.0.9:1".into() }),
        Err(MembershipError::AlreadyMember { id: "b".into() })
    );
    assert!(matches!(
        leader.change_membership(now, MembershipRequest::Add { id: "bad name".into(), address: "10.0.0.9:1".into() }),
        Err(MembershipError::BadName { .. })
    ));
    let follower = cluster.nodes.get_mut("b").expect("known");
    assert_eq!(follower.change_membership(now, MembershipRequest::Remove { id: "c".into() }), Err(MembershipError::NotLeader { leader: Some("a".into()) }));
}

#[test]
fn after_a_failover_the_new_leader_knows_the_added_member() {
    let mut cluster = Cluster::new();
    cluster.write(1, AckRequirement::Majority);
    cluster.start("d", true);
    cluster.add_d();
    cluster.run_until("d is a voter", |cluster| cluster.voters("b").len() == 4);
    // The leader dies; b, c and d elect one of themselves (3 of 4 voters).
    cluster.nodes.remove("a");
    cluster.run_until("a new leader", |cluster| cluster.nodes.values().any(|node| node.accepting_writes(cluster.now).is_ok()));
    let (new_leader, _) = cluster.nodes.iter().find(|(_, node)| node.is_leader()).expect("one leads");
    assert_ne!(new_leader, "a");
    assert_eq!(cluster.voters(&new_leader.clone()), names(&["a", "b", "c", "d"]));
}

#[test]
fn a_leader_cut_off_past_its_lease_stops_writing_and_no_longer_claims_to_be_current() {
    let mut cluster = Cluster::new();
    let now = cluster.now;
    let leader = cluster.nodes.get_mut("a").expect("a runs");
    let until = leader.write_lease_until(now).expect("the leader holds a write lease");
    assert!(until > now);
    assert_eq!(leader.lag_us(now), Some(0), "within its lease a leader is current");
    // Paused or cut off past its lease, and asked before it has handled any event since:
    // it may have been deposed meanwhile without knowing it.
    let later = until + 500_000;
    assert_eq!(leader.write_lease_until(later), None, "no writes after the lease");
    assert!(leader.accepting_writes(later).is_err());
    assert_eq!(leader.lag_us(later), Some(500_000), "current only up to its lease's end");
    leader.handle(Event::Tick, later);
    while leader.poll_output().is_some() {}
    assert!(leader.lag_us(later).is_none_or(|lag| lag >= 500_000), "never current again by itself: {:?}", leader.lag_us(later));
}
