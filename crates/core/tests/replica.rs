//! The replica state machine, fed events one at a time, with the exact outputs it must
//! produce. Each test names the rule it checks.

use tern_core::single_leader::Event;
use tern_core::{AckMode, AckRequirement, Config, Entry, Message, Output, Position, Preference, Protocol, ReadError, Replica, WriteError};

fn members() -> Vec<String> {
    vec!["n1".into(), "n2".into(), "n3".into()]
}

fn entry(index: u64) -> Entry {
    Entry { index, epoch: 1, payload: vec![index as u8].into() }
}

fn drain(replica: &mut Replica) -> Vec<Output> {
    std::iter::from_fn(|| replica.poll_output()).collect()
}

fn leader(ack: AckMode) -> Replica {
    let mut replica = Replica::new(Config::new("n1", members(), "n1", ack), Position::ZERO, 0);
    drain(&mut replica); // initial heartbeats
    replica
}

fn follower(id: &str) -> Replica {
    let mut replica = Replica::new(Config::new(id, members(), "n1", AckMode::SemiSync), Position::ZERO, 0);
    assert!(drain(&mut replica).is_empty(), "a follower says nothing until the leader does");
    replica
}

fn append(prev_index: u64, entries: Vec<Entry>, leader_last: u64, read_seq: u64) -> Message {
    Message::Append {
        epoch: 1,
        leader: "n1".into(),
        prev_index,
        prev_epoch: if prev_index == 0 { 0 } else { 1 },
        entries,
        commit_index: 0,
        leader_last,
        read_seq,
    }
}

/// A follower's answer after it restarted with nothing: it expects index 1.
fn empty_log_ack() -> Message {
    Message::AppendAck { epoch: 1, durable: Position::ZERO, next_index: 1, read_seq: 0, rejected: true, diverged: None, preference: Preference::default() }
}

fn ack(durable: u64, read_seq: u64) -> Message {
    ack_holding(Position::new(1, durable), durable + 1, read_seq)
}

/// An accepting ack: `durable` on disk, entries before `next_index` received.
fn ack_holding(durable: Position, next_index: u64, read_seq: u64) -> Message {
    Message::AppendAck { epoch: 1, durable, next_index, read_seq, rejected: false, diverged: None, preference: Preference::default() }
}

fn send(to: &str, message: Message) -> Output {
    Output::Send { to: to.into(), message }
}

#[test]
fn leader_ships_each_new_entry_to_every_follower() {
    let mut replica = leader(AckMode::SemiSync);
    replica.handle(Event::LeaderAppended { entries: vec![entry(1)], waiters: vec![(7, 1, AckRequirement::Majority)] }, 10);
    assert_eq!(drain(&mut replica), vec![send("n2", append(0, vec![entry(1)], 1, 1)), send("n3", append(0, vec![entry(1)], 1, 1))]);
}

#[test]
fn without_elections_a_written_entry_ships_only_once_durable() {
    // A restarted leader keeps its epoch here: had the entry shipped before its sync and the
    // leader crashed, it could write another entry at the same (epoch, index).
    let mut replica = leader(AckMode::SemiSync);
    replica.handle(Event::LeaderWrote { entries: vec![entry(1)] }, 10);
    assert_eq!(drain(&mut replica), vec![]);
    replica.handle(Event::LeaderAppended { entries: vec![entry(1)], waiters: vec![(7, 1, AckRequirement::Majority)] }, 20);
    assert_eq!(drain(&mut replica), vec![send("n2", append(0, vec![entry(1)], 1, 1)), send("n3", append(0, vec![entry(1)], 1, 1))]);
}

#[test]
fn semi_sync_acknowledges_when_one_follower_of_three_has_it_durably() {
    let mut replica = leader(AckMode::SemiSync);
    replica.handle(Event::LeaderAppended { entries: vec![entry(1)], waiters: vec![(7, 1, AckMode::SemiSync.requirement())] }, 10);
    drain(&mut replica);
    replica.handle(Event::Message { from: "n3".into(), message: ack(1, 0) }, 20);
    assert_eq!(drain(&mut replica), vec![Output::WriteDone { tag: 7, result: Ok(Position::new(1, 1)) }]);
    // The second copy changes nothing further.
    replica.handle(Event::Message { from: "n2".into(), message: ack(1, 0) }, 21);
    assert_eq!(drain(&mut replica), vec![]);
}

#[test]
fn a_write_that_changed_nothing_waits_for_the_copies_of_the_entry_it_saw() {
    // Entry 1 is on the leader alone when a write that changed nothing saw it: the write
    // is handed in with no entry of its own, and is done only once a follower holds 1.
    let mut replica = leader(AckMode::SemiSync);
    replica.handle(Event::LeaderAppended { entries: vec![entry(1)], waiters: vec![(7, 1, AckRequirement::Majority)] }, 10);
    drain(&mut replica);
    replica.handle(Event::LeaderAppended { entries: vec![], waiters: vec![(8, 1, AckRequirement::Majority), (9, 1, AckRequirement::Nodes(1))] }, 15);
    assert_eq!(drain(&mut replica), vec![Output::WriteDone { tag: 9, result: Ok(Position::new(1, 1)) }], "w=1: the leader's own copy is enough");
    replica.handle(Event::Message { from: "n2".into(), message: ack(1, 0) }, 20);
    assert_eq!(
        drain(&mut replica),
        vec![Output::WriteDone { tag: 7, result: Ok(Position::new(1, 1)) }, Output::WriteDone { tag: 8, result: Ok(Position::new(1, 1)) }]
    );
    // Once a majority holds it, a later write that changes nothing is done at once.
    replica.handle(Event::LeaderAppended { entries: vec![], waiters: vec![(10, 1, AckRequirement::Majority)] }, 30);
    assert_eq!(drain(&mut replica), vec![Output::WriteDone { tag: 10, result: Ok(Position::new(1, 1)) }]);
}

#[test]
fn async_acknowledges_on_the_leaders_own_durable_commit() {
    let mut replica = leader(AckMode::Async);
    replica.handle(Event::LeaderAppended { entries: vec![entry(1)], waiters: vec![(7, 1, AckMode::Async.requirement())] }, 10);
    let outputs = drain(&mut replica);
    assert_eq!(outputs.last(), Some(&Output::WriteDone { tag: 7, result: Ok(Position::new(1, 1)) }));
}

#[test]
fn w_all_waits_for_every_member() {
    let mut replica = leader(AckMode::Async);
    replica.handle(Event::LeaderAppended { entries: vec![entry(1)], waiters: vec![(7, 1, AckRequirement::All)] }, 10);
    drain(&mut replica);
    replica.handle(Event::Message { from: "n2".into(), message: ack(1, 0) }, 20);
    assert_eq!(drain(&mut replica), vec![]);
    replica.handle(Event::Message { from: "n3".into(), message: ack(1, 0) }, 30);
    assert_eq!(drain(&mut replica), vec![Output::WriteDone { tag: 7, result: Ok(Position::new(1, 1)) }]);
}

#[test]
fn w_beyond_the_cluster_size_is_refused_at_once() {
    let mut replica = leader(AckMode::Async);
    replica.handle(Event::LeaderAppended { entries: vec![entry(1)], waiters: vec![(7, 1, AckRequirement::Nodes(4))] }, 10);
    let outputs = drain(&mut replica);
    assert_eq!(outputs[0], Output::WriteDone { tag: 7, result: Err(WriteError::Unsatisfiable { requested: 4, members: 3 }) });
}

#[test]
fn sync_waits_for_every_in_sync_follower_and_drops_a_silent_one() {
    let mut replica = leader(AckMode::Sync);
    // Both followers catch up, so both are in sync.
    replica.handle(Event::LeaderAppended { entries: vec![entry(1)], waiters: vec![] }, 10);
    drain(&mut replica);
    replica.handle(Event::Message { from: "n2".into(), message: ack(1, 0) }, 20);
    replica.handle(Event::Message { from: "n3".into(), message: ack(1, 0) }, 20);
    drain(&mut replica);

    replica.handle(Event::LeaderAppended { entries: vec![entry(2)], waiters: vec![(8, 2, AckRequirement::AllInSync)] }, 30);
    drain(&mut replica);
    replica.handle(Event::Message { from: "n2".into(), message: ack(2, 0) }, 40);
    assert_eq!(drain(&mut replica), vec![], "n3 is in sync and has not acknowledged");

    // n3 stays silent past the in-sync timeout (1 s): it leaves the set, the write completes.
    replica.handle(Event::Message { from: "n2".into(), message: ack(2, 0) }, 1_000_000);
    drain(&mut replica);
    replica.handle(Event::Tick, 40 + 1_000_001);
    let outputs = drain(&mut replica);
    assert!(outputs.contains(&Output::WriteDone { tag: 8, result: Ok(Position::new(1, 2)) }), "{outputs:?}");
    let status = replica.status(40 + 1_000_001);
    assert!(status.followers.iter().any(|follower| follower.id == "n2" && follower.in_sync));
    assert!(status.followers.iter().any(|follower| follower.id == "n3" && !follower.in_sync));
}

#[test]
fn sync_never_counts_fewer_than_a_majority() {
    let mut replica = leader(AckMode::Sync);
    // No follower has ever been in sync; a sync write still needs a majority.
    replica.handle(Event::LeaderAppended { entries: vec![entry(1)], waiters: vec![(9, 1, AckRequirement::AllInSync)] }, 10);
    let outputs = drain(&mut replica);
    assert!(!outputs.iter().any(|output| matches!(output, Output::WriteDone { .. })));
    replica.handle(Event::Message { from: "n2".into(), message: ack(1, 0) }, 20);
    assert_eq!(drain(&mut replica), vec![Output::WriteDone { tag: 9, result: Ok(Position::new(1, 1)) }]);
}

#[test]
fn a_write_not_replicated_in_time_reports_an_unknown_outcome() {
    let mut replica = leader(AckMode::SemiSync);
    replica.handle(Event::LeaderAppended { entries: vec![entry(1)], waiters: vec![(7, 1, AckRequirement::Majority)] }, 10);
    drain(&mut replica);
    replica.handle(Event::Tick, 10 + 10_000_000);
    let outputs = drain(&mut replica);
    let done = outputs.iter().find(|output| matches!(output, Output::WriteDone { .. })).unwrap();
    assert_eq!(
        done,
        &Output::WriteDone { tag: 7, result: Err(WriteError::Timeout { position: Position::new(1, 1), acked_by: 1, needed: "a majority".into() }) }
    );
}

#[test]
fn follower_persists_before_it_acknowledges() {
    let mut replica = follower("n2");
    replica.handle(Event::Message { from: "n1".into(), message: append(0, vec![entry(1), entry(2)], 2, 0) }, 5);
    assert_eq!(drain(&mut replica), vec![Output::Persist { entries: vec![entry(1), entry(2)] }]);
    replica.handle(Event::Persisted(Position::new(1, 2)), 6);
    assert_eq!(
        drain(&mut replica),
        vec![send(
            "n1",
            Message::AppendAck {
                epoch: 1,
                durable: Position::new(1, 2),
                next_index: 3,
                read_seq: 0,
                rejected: false,
                diverged: None,
                preference: Preference::default()
            }
        )]
    );
}

#[test]
fn follower_skips_duplicates_and_rejects_gaps() {
    let mut replica = follower("n2");
    replica.handle(Event::Message { from: "n1".into(), message: append(0, vec![entry(1)], 1, 0) }, 5);
    drain(&mut replica);
    // Entry 1 again plus entry 2: only entry 2 is new.
    replica.handle(Event::Message { from: "n1".into(), message: append(0, vec![entry(1), entry(2)], 2, 0) }, 6);
    assert_eq!(drain(&mut replica), vec![Output::Persist { entries: vec![entry(2)] }]);
    // Entry 5 after 2: entries 3 and 4 were lost in transit.
    replica.handle(Event::Message { from: "n1".into(), message: append(4, vec![entry(5)], 5, 0) }, 7);
    assert_eq!(
        drain(&mut replica),
        vec![send(
            "n1",
            Message::AppendAck {
                epoch: 1,
                durable: Position::ZERO,
                next_index: 3,
                read_seq: 0,
                rejected: true,
                diverged: None,
                preference: Preference::default()
            }
        )]
    );
}

#[test]
fn leader_resends_from_what_a_rejecting_follower_expects() {
    let mut replica = leader(AckMode::SemiSync);
    replica.handle(Event::LeaderAppended { entries: vec![entry(1), entry(2), entry(3)], waiters: vec![] }, 10);
    drain(&mut replica);
    replica.handle(
        Event::Message {
            from: "n2".into(),
            message: Message::AppendAck {
                epoch: 1,
                durable: Position::new(1, 1),
                next_index: 2,
                read_seq: 0,
                rejected: true,
                diverged: None,
                preference: Preference::default(),
            },
        },
        20,
    );
    assert_eq!(drain(&mut replica), vec![send("n2", append(1, vec![entry(2), entry(3)], 3, 1))]);
}

#[test]
fn follower_stale_epoch_leader_is_told_and_ignored() {
    let mut replica = Replica::new(Config { epoch: 2, ..Config::new("n2", members(), "n1", AckMode::SemiSync) }, Position::ZERO, 0);
    replica.handle(Event::Message { from: "n1".into(), message: append(0, vec![entry(1)], 1, 0) }, 5);
    assert_eq!(
        drain(&mut replica),
        vec![send(
            "n1",
            Message::AppendAck {
                epoch: 2,
                durable: Position::ZERO,
                next_index: 1,
                read_seq: 0,
                rejected: true,
                diverged: None,
                preference: Preference::default()
            }
        )]
    );
}

#[test]
fn linearizable_read_waits_for_a_quorum_round_and_for_what_it_saw_to_be_committed() {
    let mut replica = leader(AckMode::Async);
    replica.handle(Event::LeaderAppended { entries: vec![entry(1)], waiters: vec![] }, 10);
    drain(&mut replica);
    replica.handle(Event::ReadBarrier { tag: 99, observed_index: 1 }, 20);
    // A heartbeat round (read_seq 2; round 1 was the first heartbeat) goes to both followers.
    assert_eq!(drain(&mut replica), vec![send("n2", append(1, vec![], 1, 2)), send("n3", append(1, vec![], 1, 2))]);
    // An ack of an older round proves nothing about leadership now.
    replica.handle(Event::Message { from: "n2".into(), message: ack(0, 1) }, 30);
    assert_eq!(drain(&mut replica), vec![]);
    // A current-round ack that lacks entry 1: leadership confirmed but the read saw an uncommitted write.
    replica.handle(Event::Message { from: "n3".into(), message: ack(0, 2) }, 31);
    assert_eq!(drain(&mut replica), vec![]);
    replica.handle(Event::Message { from: "n2".into(), message: ack(1, 2) }, 32);
    assert_eq!(drain(&mut replica), vec![Output::ReadDone { tag: 99, result: Ok(()) }]);
}

#[test]
fn linearizable_read_on_a_follower_is_refused_with_the_leader() {
    let mut replica = follower("n2");
    replica.handle(Event::ReadBarrier { tag: 5, observed_index: 0 }, 1);
    assert_eq!(drain(&mut replica), vec![Output::ReadDone { tag: 5, result: Err(ReadError::NotLeader { leader: Some("n1".into()) }) }]);
}

#[test]
fn entries_evicted_from_the_cache_are_read_back_or_replaced_by_a_snapshot() {
    let config = Config { tail_cache_bytes: 2, ..Config::new("n1", members(), "n1", AckMode::SemiSync) };
    let mut replica = Replica::new(config, Position::ZERO, 0);
    drain(&mut replica);
    for index in 1..=3 {
        replica.handle(Event::LeaderAppended { entries: vec![entry(index)], waiters: vec![] }, 10);
    }
    drain(&mut replica);
    // n2 restarted with nothing: the leader must resend from 1, which left the cache.
    replica.handle(Event::Message { from: "n2".into(), message: empty_log_ack() }, 20);
    assert_eq!(drain(&mut replica), vec![Output::ReadLog { to: "n2".into(), from_index: 1 }]);
    replica.handle(Event::LogRead { to: "n2".into(), entries: vec![entry(1), entry(2)] }, 21);
    assert_eq!(drain(&mut replica), vec![send("n2", append(0, vec![entry(1), entry(2)], 3, 1)), send("n2", append(2, vec![entry(3)], 3, 1))]);

    replica.handle(Event::Message { from: "n3".into(), message: empty_log_ack() }, 30);
    assert_eq!(drain(&mut replica), vec![Output::ReadLog { to: "n3".into(), from_index: 1 }]);
    replica.handle(Event::LogCompacted { to: "n3".into() }, 31);
    assert_eq!(drain(&mut replica), vec![Output::SendSnapshot { to: "n3".into(), rollback_after: None }]);
}

#[test]
fn follower_lag_is_the_time_since_it_last_had_everything() {
    let mut replica = follower("n2");
    assert_eq!(replica.lag_us(0), None, "no contact yet");
    replica.handle(Event::Message { from: "n1".into(), message: append(0, vec![], 0, 0) }, 1_000);
    drain(&mut replica);
    assert_eq!(replica.lag_us(1_500), Some(500));
    // The leader is at 1 now; we only get there once persisted.
    replica.handle(Event::Message { from: "n1".into(), message: append(0, vec![entry(1)], 1, 0) }, 2_000);
    drain(&mut replica);
    assert_eq!(replica.lag_us(2_500), Some(1_500));
    replica.handle(Event::Persisted(Position::new(1, 1)), 3_000);
    drain(&mut replica);
    assert_eq!(replica.lag_us(3_000), Some(1_000), "fresh as of when the leader said 1");
}

#[test]
fn leader_reports_per_follower_lag_from_the_oldest_missing_write() {
    let mut replica = leader(AckMode::Async);
    replica.handle(Event::LeaderAppended { entries: vec![entry(1)], waiters: vec![] }, 1_000);
    replica.handle(Event::LeaderAppended { entries: vec![entry(2)], waiters: vec![] }, 2_000);
    replica.handle(Event::Message { from: "n2".into(), message: ack(2, 0) }, 2_100);
    replica.handle(Event::Message { from: "n3".into(), message: ack(1, 0) }, 2_100);
    let status = replica.status(5_000);
    let lag: Vec<(String, u64)> = status.followers.iter().map(|follower| (follower.id.clone(), follower.lag_us)).collect();
    assert_eq!(lag, vec![("n2".into(), 0), ("n3".into(), 3_000)]);
    assert_eq!(status.commit_index, 2);
}

#[test]
fn acks_from_another_epoch_count_for_nothing() {
    let mut replica = leader(AckMode::SemiSync);
    replica.handle(Event::LeaderAppended { entries: vec![entry(1)], waiters: vec![(7, 1, AckRequirement::Majority)] }, 10);
    drain(&mut replica);
    // A follower still answering an older leader's append says nothing about this log.
    let stale = Message::AppendAck {
        epoch: 0,
        durable: Position::new(0, 1),
        next_index: 2,
        read_seq: 9,
        rejected: false,
        diverged: None,
        preference: Preference::default(),
    };
    replica.handle(Event::Message { from: "n2".into(), message: stale }, 20);
    assert_eq!(drain(&mut replica), vec![]);
    assert_eq!(replica.status(20).followers[0].matched, 0);
}

#[test]
fn an_installed_snapshot_never_moves_the_durable_position_backwards() {
    let mut replica = follower("n2");
    replica.handle(Event::Message { from: "n1".into(), message: append(0, vec![entry(1), entry(2), entry(3)], 3, 0) }, 5);
    drain(&mut replica);
    replica.handle(Event::Persisted(Position::new(1, 3)), 6);
    drain(&mut replica);
    // A snapshot requested earlier, at index 2, lands after entries up to 3 were applied.
    replica.handle(Event::SnapshotInstalled(Position::new(1, 2)), 7);
    assert_eq!(replica.last(), Position::new(1, 3));
    assert_eq!(
        drain(&mut replica),
        vec![send(
            "n1",
            Message::AppendAck {
                epoch: 1,
                durable: Position::new(1, 3),
                next_index: 4,
                read_seq: 0,
                rejected: false,
                diverged: None,
                preference: Preference::default()
            }
        )]
    );
}

#[test]
fn a_heartbeat_during_catch_up_claims_only_what_was_sent() {
    // A window of one entry: entries 2 and 3 wait until entry 1 is acknowledged.
    let config = Config { max_inflight_entries: 1, max_entries_per_append: 1, ..Config::new("n1", members(), "n1", AckMode::SemiSync) };
    let mut replica = Replica::new(config, Position::ZERO, 0);
    drain(&mut replica);
    replica.handle(Event::LeaderAppended { entries: vec![entry(1), entry(2), entry(3)], waiters: vec![] }, 10);
    assert_eq!(drain(&mut replica), vec![send("n2", append(0, vec![entry(1)], 3, 1)), send("n3", append(0, vec![entry(1)], 3, 1))]);
    // The heartbeat claims entry 1 as the previous one, not 3, which a follower that
    // has only entry 1 would reject as a gap (and the leader would resend the window).
    replica.handle(Event::Tick, 10 + 50_000);
    assert_eq!(drain(&mut replica), vec![send("n2", append(1, vec![], 3, 2)), send("n3", append(1, vec![], 3, 2))]);
}

#[test]
fn a_follower_that_lost_its_disk_is_resent_everything_and_counts_for_nothing_meanwhile() {
    let mut replica = leader(AckMode::SemiSync);
    replica.handle(Event::LeaderAppended { entries: vec![entry(1), entry(2)], waiters: vec![] }, 10);
    drain(&mut replica);
    replica.handle(Event::Message { from: "n2".into(), message: ack(2, 0) }, 20);
    drain(&mut replica);
    // n2 comes back empty and rejects the next append as a gap.
    replica.handle(Event::Message { from: "n2".into(), message: empty_log_ack() }, 30);
    let commit_2 = Message::Append {
        epoch: 1,
        leader: "n1".into(),
        prev_index: 0,
        prev_epoch: 0,
        entries: vec![entry(1), entry(2)],
        commit_index: 2,
        leader_last: 2,
        read_seq: 1,
    };
    assert_eq!(drain(&mut replica), vec![send("n2", commit_2)]);
    // Its old acknowledgement no longer counts: a new write needs a fresh copy.
    replica.handle(Event::LeaderAppended { entries: vec![entry(3)], waiters: vec![(9, 3, AckRequirement::Majority)] }, 40);
    drain(&mut replica);
    replica.handle(Event::Message { from: "n2".into(), message: ack(1, 0) }, 50);
    assert_eq!(drain(&mut replica), vec![], "n2 holds only entry 1 now");
    replica.handle(Event::Message { from: "n2".into(), message: ack(3, 0) }, 60);
    assert_eq!(drain(&mut replica), vec![Output::WriteDone { tag: 9, result: Ok(Position::new(1, 3)) }]);
}

#[test]
fn an_ack_of_another_epochs_entries_is_not_a_copy_of_ours() {
    // Elected leader of epoch 2 (static configuration for the test) with one entry;
    // a follower that holds an old leader's entries 1..3 of epoch 1 acknowledges them.
    let config = Config { epoch: 2, ..Config::new("n1", members(), "n1", AckMode::SemiSync) };
    let mut replica = Replica::new(config, Position::ZERO, 0);
    drain(&mut replica);
    let ours = Entry { index: 1, epoch: 2, payload: vec![1].into() };
    replica.handle(Event::LeaderAppended { entries: vec![ours], waiters: vec![(5, 1, AckRequirement::Majority)] }, 10);
    drain(&mut replica);
    let theirs = Message::AppendAck {
        epoch: 2,
        durable: Position::new(1, 3),
        next_index: 4,
        read_seq: 0,
        rejected: false,
        diverged: None,
        preference: Preference::default(),
    };
    replica.handle(Event::Message { from: "n2".into(), message: theirs }, 20);
    assert!(drain(&mut replica).iter().all(|output| !matches!(output, Output::WriteDone { .. })), "n2's entry 1 is not ours");
    replica.handle(
        Event::Message {
            from: "n3".into(),
            message: Message::AppendAck {
                epoch: 2,
                durable: Position::new(2, 1),
                next_index: 2,
                read_seq: 0,
                rejected: false,
                diverged: None,
                preference: Preference::default(),
            },
        },
        30,
    );
    assert!(drain(&mut replica).contains(&Output::WriteDone { tag: 5, result: Ok(Position::new(2, 1)) }));
}

#[test]
fn a_dead_followers_lag_is_measured_from_the_oldest_write_still_timed() {
    // The leader times each write until every follower has it; with a follower gone for
    // good that record is capped, and the lag is counted from its oldest entry.
    let mut replica = leader(AckMode::Async);
    for index in 1..=70_000u64 {
        replica.handle(Event::LeaderAppended { entries: vec![entry(index)], waiters: vec![] }, index);
        drain(&mut replica);
    }
    let status = replica.status(100_000);
    let oldest_timed = 70_000 - 65_536 + 1;
    for follower in &status.followers {
        assert_eq!(follower.matched, 0);
        assert_eq!(follower.lag_us, 100_000 - oldest_timed, "{}", follower.id);
    }
}

/// `poll_timeout` is the earliest deadline the replica tracks (heartbeat, a write's
/// timeout), and never more than one heartbeat interval after the last event.
#[test]
fn poll_timeout_is_the_earliest_deadline_and_never_past_a_heartbeat() {
    let mut config = Config::new("n1", members(), "n1", AckMode::SemiSync);
    config.write_timeout_us = 20_000;
    let mut leader = Replica::new(config, Position::ZERO, 0);
    drain(&mut leader);
    assert_eq!(leader.poll_timeout(), Some(50_000), "the next heartbeat, one interval after the first");
    leader.handle(Event::Tick, 20_000);
    drain(&mut leader);
    assert_eq!(leader.poll_timeout(), Some(50_000), "a tick before anything is due moves nothing");
    leader.handle(Event::LeaderAppended { entries: vec![entry(1)], waiters: vec![(7, 1, AckRequirement::Majority)] }, 25_000);
    drain(&mut leader);
    assert_eq!(leader.poll_timeout(), Some(45_000), "the write's timeout comes before the heartbeat");
    leader.handle(Event::Tick, 45_000);
    assert!(drain(&mut leader).iter().any(|output| matches!(output, Output::WriteDone { tag: 7, result: Err(_) })), "the write timed out when asked");
    assert_eq!(leader.poll_timeout(), Some(50_000));

    let mut follower = follower("n2");
    follower.handle(Event::Tick, 30_000);
    assert_eq!(follower.poll_timeout(), Some(80_000), "a follower with nothing pending is woken a heartbeat after its last event");
}

/// With a heartbeat interval too long to hide them, `poll_timeout` names the moment lost
/// entries are resent (`resend_timeout_us` after they went out, 500 ms by default) and the
/// moment a silent follower leaves the in-sync set (`in_sync_timeout_us` after its last
/// ack, 1 s by default): a driver that sleeps until `poll_timeout` misses neither.
#[test]
fn poll_timeout_names_the_resend_and_the_in_sync_deadlines() {
    let mut config = Config::new("n1", members(), "n1", AckMode::Sync);
    config.heartbeat_interval_us = 60_000_000;
    config.write_timeout_us = 60_000_000;
    let mut leader = Replica::new(config, Position::ZERO, 0);
    drain(&mut leader);
    leader.handle(Event::LeaderAppended { entries: vec![entry(1)], waiters: Vec::new() }, 1_000);
    drain(&mut leader);
    assert_eq!(leader.poll_timeout(), Some(501_001), "entry 1 went out at 1 ms unacknowledged: resent after 500 ms");
    leader.handle(Event::Message { from: "n2".into(), message: ack(1, 0) }, 100_000);
    leader.handle(Event::Message { from: "n3".into(), message: ack(1, 0) }, 200_000);
    drain(&mut leader);
    assert_eq!(leader.poll_timeout(), Some(1_100_001), "both acked: n2, heard last at 100 ms, is the first to fall silent");
    leader.handle(Event::Tick, 1_100_001);
    drain(&mut leader);
    assert_eq!(leader.status(1_100_001).followers.iter().map(|follower| follower.in_sync).collect::<Vec<_>>(), vec![false, true]);
    assert_eq!(leader.poll_timeout(), Some(1_200_001), "then n3");
}

/// A follower still writing a large entry acknowledges heartbeats with the entry received
/// (`next_index` past it) but not durable: the leader does not send it again however long
/// the write takes (a resent bulk entry held the follower's link for seconds more, and
/// the heartbeats behind it made the followers elect a new leader). An entry a follower
/// never reports receiving is still resent after `resend_timeout_us`.
#[test]
fn an_entry_the_follower_reports_received_is_not_resent_while_it_persists() {
    let mut config = Config::new("n1", members(), "n1", AckMode::SemiSync);
    config.heartbeat_interval_us = 100_000;
    let mut leader = Replica::new(config, Position::ZERO, 0);
    drain(&mut leader);
    leader.handle(Event::LeaderAppended { entries: vec![entry(1)], waiters: Vec::new() }, 1_000);
    drain(&mut leader);
    // n2 holds entry 1 but is still writing it; n3 never got it.
    let received_not_durable = ack_holding(Position::ZERO, 2, 0);
    // It answered a heartbeat: it expects index 1 and refused nothing.
    let holds_nothing = ack_holding(Position::ZERO, 1, 0);
    leader.handle(Event::Message { from: "n2".into(), message: received_not_durable.clone() }, 50_000);
    leader.handle(Event::Message { from: "n3".into(), message: holds_nothing.clone() }, 50_000);
    drain(&mut leader);
    let mut resent_to = Vec::new();
    let mut now = 50_000;
    while now < 3_000_000 {
        now += 100_000;
        leader.handle(Event::Message { from: "n2".into(), message: received_not_durable.clone() }, now);
        leader.handle(Event::Message { from: "n3".into(), message: holds_nothing.clone() }, now);
        leader.handle(Event::Tick, now);
        for output in drain(&mut leader) {
            if let Output::Send { to, message: Message::Append { entries, .. } } = output {
                if !entries.is_empty() {
                    resent_to.push((to, now));
                }
            }
        }
    }
    assert!(resent_to.iter().all(|(to, _)| to == "n3"), "entry 1 was resent to n2, which holds it: {resent_to:?}");
    assert_eq!(resent_to.first(), Some(&("n3".to_string(), 550_000)), "entry 1 went to n3 at 1 ms and is resent once 500 ms passed with no report of it");
}

/// A follower still persisting entries answers heartbeats meanwhile: the ack echoes the
/// heartbeat round (the leader's lease and linearizable reads go on) and names the
/// entries received (`next_index`) with only what is durable as `durable`.
#[test]
fn a_follower_answers_heartbeats_while_it_persists() {
    let mut replica = follower("n2");
    replica.handle(Event::Message { from: "n1".into(), message: append(0, vec![entry(1), entry(2)], 2, 4) }, 5);
    assert_eq!(drain(&mut replica), vec![Output::Persist { entries: vec![entry(1), entry(2)] }]);
    replica.handle(Event::Message { from: "n1".into(), message: append(2, Vec::new(), 2, 5) }, 50_000);
    let received_not_durable = ack_holding(Position::ZERO, 3, 5);
    assert_eq!(drain(&mut replica), vec![send("n1", received_not_durable)]);
    replica.handle(Event::Persisted(Position::new(1, 2)), 60_000);
    let durable = ack_holding(Position::new(1, 2), 3, 5);
    assert_eq!(drain(&mut replica), vec![send("n1", durable)], "and the persist's own ack when it completes");
}
