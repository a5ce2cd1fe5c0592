//! Membership changes and other work of an elected leader (shipping before its own sync),
//! driven through a small in-memory cluster: messages are delivered at once and in order,
//! persists complete at once, and time moves in 5 ms steps. What is checked is the
//! protocol, not timing: who is a voter, who holds the data, which requests are refused
//! and why.

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
    /// Applied to every node's configuration (leader priorities, non-voters).
    placement: fn(&mut Config),
    /// Nodes cut off from the others: whatever they send or are sent is lost.
    cut: BTreeSet<String>,
    /// Nodes whose raft messages (votes, raft heartbeats, transfers) alone are lost.
    raft_cut: BTreeSet<String>,
    /// Every node seen leading (accepting writes) after a step.
    led: BTreeSet<String>,
    /// Seeds each node's election timer spread.
    seed: u64,
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
        Cluster::placed(|_| {})
    }

    /// a, b and c, each configured by `placement` too; returns once a leads.
    fn placed(placement: fn(&mut Config)) -> Cluster {
        Cluster::seeded(7, placement)
    }

    fn seeded(seed: u64, placement: fn(&mut Config)) -> Cluster {
        let mut cluster = Cluster {
            now: 0,
            nodes: BTreeMap::new(),
            logs: BTreeMap::new(),
            network: VecDeque::new(),
            acknowledged: BTreeSet::new(),
            reported: BTreeMap::new(),
            placement,
            cut: BTreeSet::new(),
            raft_cut: BTreeSet::new(),
            led: BTreeSet::new(),
            seed,
        };
        for id in ["a", "b", "c"] {
            cluster.start(id, false);
        }
        cluster.run_until("a leads", |cluster| cluster.nodes["a"].accepting_writes(cluster.now).is_ok());
        cluster
    }

    fn start(&mut self, id: &str, join: bool) {
        let mut config = config(id, join);
        if let Some(elections) = &mut config.elections {
            elections.seed = self.seed;
        }
        (self.placement)(&mut config);
        self.nodes.insert(id.to_string(), Replica::start(config, Position::ZERO, Vec::new(), None, self.now));
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
                if self.cut.contains(&from) || self.cut.contains(&to) {
                    continue;
                }
                let raft = matches!(message, tern_core::Message::Raft { .. });
                if raft && (self.raft_cut.contains(&from) || self.raft_cut.contains(&to)) {
                    continue;
                }
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
            self.led.extend(self.nodes.iter().filter(|(_, node)| node.accepting_writes(now).is_ok()).map(|(id, _)| id.clone()));
        }
        panic!("{what}: not reached in 20 s of cluster time");
    }

    /// The leader writes entry `index` and waits for `requirement`.
    fn write(&mut self, index: u64, requirement: AckRequirement) {
        let epoch = self.nodes["a"].epoch();
        let entry = Entry { index, epoch, payload: vec![index as u8].into() };
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

    /// The node that leads and accepts writes now, if one does.
    fn leader(&self) -> Option<String> {
        self.nodes.iter().find(|(_, node)| node.accepting_writes(self.now).is_ok()).map(|(id, _)| id.clone())
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

// ---- leader placement: non-voters and leader priorities ----

fn c_and_d_are_non_voters(config: &mut Config) {
    config.non_voters = names(&["c", "d"]).into_iter().collect();
}

#[test]
fn a_non_voter_gets_every_write_but_never_counts_or_is_promoted() {
    let mut cluster = Cluster::placed(c_and_d_are_non_voters);
    assert_eq!(cluster.voters("a"), names(&["a", "b"]), "c starts as a learner");
    // w=all counts the voters: with c cut off, a write that needs every member is
    // acknowledged by a and b alone.
    cluster.cut.insert("c".into());
    cluster.write(1, AckRequirement::All);
    assert!(cluster.acknowledged.contains(&1), "a non-voter's copy is not waited for");
    cluster.cut.clear();
    for index in 2..=10 {
        cluster.write(index, AckRequirement::Majority);
    }
    // Caught up and in sync for seconds, it stays a learner; d, added as one, too.
    cluster.start("d", true);
    cluster.add_d();
    cluster.run_until("c and d to hold the whole log", |cluster| ["c", "d"].iter().all(|id| cluster.logs[*id] == cluster.logs["a"]));
    let settled = cluster.now + 3_000_000;
    cluster.run_until("3 s more", |cluster| cluster.now >= settled);
    for id in ["a", "b", "c", "d"] {
        let membership = cluster.nodes[id].status(cluster.now).membership;
        assert_eq!(membership.voters.into_iter().collect::<Vec<_>>(), names(&["a", "b"]), "{id}'s voters");
        assert_eq!(membership.learners.into_iter().collect::<Vec<_>>(), names(&["c", "d"]), "{id}'s learners");
    }
    // Never handed leadership either.
    let now = cluster.now;
    let leader = cluster.nodes.get_mut("a").expect("a runs");
    assert_eq!(leader.transfer_leadership(now, &"c".to_string()), Err(tern_core::TransferError::NotAnotherMember { id: "c".into() }));

    // Nor does its vote count: with a cut off, b alone is not a majority of a and b, and
    // c and d answering b changes nothing; nobody leads.
    cluster.cut.insert("a".into());
    let until = cluster.now + 3_000_000;
    cluster.run_until("3 s with a cut off", |cluster| cluster.now >= until);
    assert_eq!(cluster.leader(), None, "with a cut off nobody may lead");
}

#[test]
fn a_member_that_handed_leadership_away_does_not_take_it_back_for_its_priority() {
    // An operator moves leadership off a (priority 2) for maintenance: b keeps it, though
    // a stays connected and caught up well past the settle time.
    let mut cluster = Cluster::placed(a_is_home_and_c_never_leads);
    let now = cluster.now;
    cluster.nodes.get_mut("a").expect("a runs").transfer_leadership(now, &"b".to_string()).expect("a hands over to b");
    cluster.pump();
    cluster.run_until("b to lead", |cluster| cluster.leader().as_deref() == Some("b"));
    let until = cluster.now + 15_000_000;
    cluster.run_until("15 s more", |cluster| cluster.now >= until);
    assert_eq!(cluster.leader().as_deref(), Some("b"), "leadership went back to a during its yield");
    // After the yield (a minute), its priority brings leadership home again.
    while cluster.leader().as_deref() != Some("a") {
        assert!(cluster.now < now + 80_000_000, "leadership did not return to a after its yield");
        let step = cluster.now + 10_000_000;
        cluster.run_until("10 s, or a leads", |cluster| cluster.now >= step || cluster.leader().as_deref() == Some("a"));
    }
    assert!(cluster.now >= now + 60_000_000, "back {} us after the transfer, before the minute's yield ended", cluster.now - now);
}

fn a_is_home_and_c_never_leads(config: &mut Config) {
    config.leader_priority = match config.id.as_str() {
        "a" => 2,
        "c" => 0,
        _ => 1,
    };
}

#[test]
fn leadership_returns_to_the_highest_priority_once_it_has_been_back_for_the_settle_time() {
    let mut cluster = Cluster::placed(a_is_home_and_c_never_leads);
    cluster.write(1, AckRequirement::Majority);
    let now = cluster.now;
    let leader = cluster.nodes.get_mut("a").expect("a runs");
    assert_eq!(leader.transfer_leadership(now, &"c".to_string()), Err(tern_core::TransferError::NeverLeads { id: "c".into() }));

    // a is cut off: b is elected, never c, however long a stays away.
    cluster.cut.insert("a".into());
    cluster.led.clear();
    cluster.run_until("a new leader", |cluster| cluster.leader().is_some_and(|leader| leader != "a"));
    let away_until = cluster.now + 5_000_000;
    cluster.run_until("a to have been away 5 s", |cluster| cluster.now >= away_until);
    assert_eq!(cluster.leader().as_deref(), Some("b"));
    assert!(!cluster.led.contains("c"), "priority 0 never leads: {:?}", cluster.led);

    // Back, a catches up; b hands leadership over once a has been in sync for 3 s, not before.
    cluster.cut.clear();
    let healed = cluster.now;
    cluster.run_until("a to lead again", |cluster| cluster.leader().as_deref() == Some("a"));
    let took = cluster.now - healed;
    assert!(took >= 3_000_000, "leadership moved back after {took} us, before the 3 s settle time");
    assert!(took < 8_000_000, "leadership took {took} us to move back");
    assert!(!cluster.led.contains("c"), "priority 0 never leads: {:?}", cluster.led);
}

#[test]
fn priority_zero_never_takes_over_whichever_timer_runs_out_first() {
    // a and b are cut off together for half a second, then b comes back: b and c have both
    // been without a leader past the timeout, so whichever asks for votes first would
    // win. The timers' spread differs per seed; c must never be the one.
    for seed in 1..=16 {
        let mut cluster = Cluster::seeded(seed, a_is_home_and_c_never_leads);
        cluster.cut.extend(names(&["a", "b"]));
        let apart_until = cluster.now + 500_000;
        cluster.run_until("half a second apart", |cluster| cluster.now >= apart_until);
        cluster.cut.remove("b");
        cluster.led.clear();
        cluster.run_until("a new leader", |cluster| cluster.leader().is_some_and(|leader| leader != "a"));
        assert_eq!(cluster.leader().as_deref(), Some("b"), "seed {seed}");
        assert!(!cluster.led.contains("c"), "seed {seed}: priority 0 led: {:?}", cluster.led);
    }
}

#[test]
fn a_preferred_member_that_cannot_win_does_not_keep_writes_paused() {
    // a (priority 2) holds the data and acknowledges b's appends, but its raft messages
    // are lost, so every handover to it fails at its deadline. Each failure pauses writes
    // for a few seconds; the pauses between attempts double, so b writes most of the time.
    let mut cluster = Cluster::placed(a_is_home_and_c_never_leads);
    cluster.cut.insert("a".into());
    cluster.run_until("b to lead", |cluster| cluster.leader().as_deref() == Some("b"));
    cluster.cut.clear();
    cluster.raft_cut.insert("a".into());
    let (start, mut writable, mut steps) = (cluster.now, 0u64, 0u64);
    while cluster.now < start + 60_000_000 {
        let step = cluster.now + 100_000;
        cluster.run_until("100 ms", |cluster| cluster.now >= step);
        steps += 1;
        writable += u64::from(cluster.nodes["b"].accepting_writes(cluster.now).is_ok());
    }
    assert!(writable * 100 >= steps * 55, "b accepted writes in only {writable} of {steps} samples over a minute");
    assert!(writable < steps, "no handover was even tried");
}

/// The leader's entry `index` of its epoch.
fn leader_entry(cluster: &Cluster, index: u64) -> Entry {
    Entry { index, epoch: cluster.nodes["a"].epoch(), payload: vec![index as u8].into() }
}

#[test]
fn an_elected_leader_ships_a_written_entry_before_its_own_sync_ends() {
    let mut cluster = Cluster::new();
    let entry = leader_entry(&cluster, 1);
    cluster.logs.get_mut("a").expect("known").push(entry.clone());
    let now = cluster.now;
    cluster.nodes.get_mut("a").expect("known").handle(Event::LeaderWrote { entries: vec![entry.clone()] }, now);
    cluster.pump();
    for follower in ["b", "c"] {
        assert_eq!(cluster.logs[follower], vec![entry.clone()], "{follower} holds the entry while the leader still syncs it");
    }
    let status = cluster.nodes["a"].status(now);
    assert_eq!(status.last, Position::ZERO, "the leader's own copy is not durable yet");
    assert_eq!(status.commit_index, 1, "two durable copies of three commit it, the leader's not among them");
    assert!(cluster.acknowledged.is_empty(), "no waiter before the leader's sync ends");
    cluster.nodes.get_mut("a").expect("known").handle(Event::LeaderAppended { entries: vec![entry.clone()], waiters: vec![(1, 1, AckRequirement::All)] }, now);
    cluster.pump();
    assert_eq!(cluster.acknowledged, BTreeSet::from([1]), "every copy is durable: done at once");
    assert_eq!(cluster.nodes["a"].status(now).last, entry.position());
}

#[test]
#[should_panic(expected = "leader log must be contiguous")]
fn a_written_entry_that_skips_an_index_is_a_driver_bug() {
    let mut cluster = Cluster::new();
    let entry = leader_entry(&cluster, 2);
    let now = cluster.now;
    cluster.nodes.get_mut("a").expect("known").handle(Event::LeaderWrote { entries: vec![entry] }, now);
}
