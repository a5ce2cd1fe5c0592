//! Multi-leader's pure parts: conflict policies with exact outcomes, causal delivery, and
//! a seeded check that regions applying the same writes in any (causal) order end with
//! the same rows and the same conflict records, and that no write vanishes unless a
//! write that saw it replaced it.

use tern_core::multi_leader::{CausalQueue, Dot, Policy, Received, Row, RowError, RowWrite, Stamp, VersionVector};
use tern_core::{Protocol, Timestamp};

fn stamp(time: u64, region: &str) -> Stamp {
    Stamp::new(Timestamp::new(time, 0), region)
}

fn seen(entries: &[(&str, u64)]) -> VersionVector {
    entries.iter().map(|(region, seq)| (*region, *seq)).collect()
}

fn write(region: &str, seq: u64, time: u64, had_seen: &[(&str, u64)], values: Option<Vec<Option<&'static str>>>) -> RowWrite<&'static str> {
    RowWrite { dot: Dot::new(region, seq), stamp: stamp(time, region), seen: seen(had_seen), values }
}

fn full(values: &[&'static str]) -> Option<Vec<Option<&'static str>>> {
    Some(values.iter().map(|value| Some(*value)).collect())
}

/// The row after applying `writes` in this order.
fn applied(policy: Policy, columns: usize, writes: &[&RowWrite<&'static str>]) -> Row<&'static str> {
    let mut row = Row::new(policy, columns);
    for write in writes {
        row.apply(write).unwrap();
    }
    row
}

fn shown(row: &Row<&'static str>) -> Option<Vec<&'static str>> {
    row.visible().map(|values| values.into_iter().map(|value| value.unwrap_or("NULL")).collect())
}

#[test]
fn a_write_that_saw_the_current_version_replaces_it_without_a_conflict() {
    let insert = write("us", 1, 100, &[], full(&["pen", "2"]));
    let update = write("eu", 1, 90, &[("us", 1)], full(&["pen", "3"]));
    let row = applied(Policy::LastWriterWins, 2, &[&insert, &update]);
    assert_eq!(shown(&row), Some(vec!["pen", "3"]), "it saw the insert: it wins even with an older clock");
    assert!(row.conflicts().is_empty());
}

#[test]
fn concurrent_updates_show_the_newest_and_record_the_other_in_either_order() {
    let insert = write("us", 1, 100, &[], full(&["pen", "2"]));
    let eu = write("eu", 1, 200, &[("us", 1)], full(&["pen", "3"]));
    let ap = write("ap", 1, 150, &[("us", 1)], full(&["pencil", "2"]));
    let one = applied(Policy::LastWriterWins, 2, &[&insert, &eu, &ap]);
    let other = applied(Policy::LastWriterWins, 2, &[&insert, &ap, &eu]);
    assert_eq!(one, other, "the same state whatever the arrival order");
    assert_eq!(shown(&one), Some(vec!["pen", "3"]));
    let conflicts = one.conflicts();
    assert_eq!(conflicts.len(), 1);
    assert_eq!((conflicts[0].column, &conflicts[0].loser.0, &conflicts[0].winner.0), (None, &Dot::new("ap", 1), &Dot::new("eu", 1)));
    assert_eq!(conflicts[0].loser.2, Some(vec!["pencil", "2"]), "the losing version is kept whole");
    assert!(!one.needs_resolution(), "lww decides alone");
}

#[test]
fn equal_hybrid_times_are_ordered_by_region() {
    let eu = write("eu", 1, 100, &[], full(&["a"]));
    let us = write("us", 1, 100, &[], full(&["b"]));
    assert_eq!(shown(&applied(Policy::LastWriterWins, 1, &[&eu, &us])), Some(vec!["b"]), "us > eu");
    assert_eq!(shown(&applied(Policy::LastWriterWins, 1, &[&us, &eu])), Some(vec!["b"]));
}

#[test]
fn concurrent_inserts_of_one_key_keep_the_newest_and_record_the_other() {
    let us = write("us", 1, 100, &[], full(&["from us"]));
    let eu = write("eu", 1, 101, &[], full(&["from eu"]));
    let row = applied(Policy::LastWriterWins, 1, &[&us, &eu]);
    assert_eq!(shown(&row), Some(vec!["from eu"]));
    assert_eq!(row.conflicts()[0].loser.2, Some(vec!["from us"]));
}

#[test]
fn column_merge_keeps_concurrent_edits_of_different_columns() {
    let insert = write("us", 1, 100, &[], full(&["pen", "2", "blue"]));
    let price = write("eu", 1, 200, &[("us", 1)], Some(vec![None, Some("3"), None]));
    let colour = write("ap", 1, 150, &[("us", 1)], Some(vec![None, None, Some("red")]));
    let one = applied(Policy::ColumnMerge, 3, &[&insert, &price, &colour]);
    let other = applied(Policy::ColumnMerge, 3, &[&insert, &colour, &price]);
    assert_eq!(one, other);
    assert_eq!(shown(&one), Some(vec!["pen", "3", "red"]), "both edits survive");
    assert!(one.conflicts().is_empty(), "different columns do not conflict");
}

#[test]
fn column_merge_records_concurrent_edits_of_one_column() {
    let insert = write("us", 1, 100, &[], full(&["pen", "2"]));
    let eu = write("eu", 1, 200, &[("us", 1)], Some(vec![None, Some("3")]));
    let ap = write("ap", 1, 150, &[("us", 1)], Some(vec![None, Some("4")]));
    let row = applied(Policy::ColumnMerge, 2, &[&insert, &ap, &eu]);
    assert_eq!(shown(&row), Some(vec!["pen", "3"]));
    let conflicts = row.conflicts();
    assert_eq!(conflicts.len(), 1);
    assert_eq!((conflicts[0].column, conflicts[0].loser.2.clone(), conflicts[0].winner.2.clone()), (Some(1), Some(vec!["4"]), Some(vec!["3"])));
}

#[test]
fn an_update_newer_than_a_concurrent_delete_brings_the_row_back_and_records_the_delete() {
    let insert = write("us", 1, 100, &[], full(&["pen"]));
    let delete = write("eu", 1, 150, &[("us", 1)], None);
    let update = write("ap", 1, 200, &[("us", 1)], full(&["pencil"]));
    let row = applied(Policy::LastWriterWins, 1, &[&insert, &delete, &update]);
    assert_eq!(row, applied(Policy::LastWriterWins, 1, &[&insert, &update, &delete]));
    assert_eq!(shown(&row), Some(vec!["pencil"]));
    assert_eq!(row.conflicts()[0].loser, (Dot::new("eu", 1), stamp(150, "eu"), None), "the delete is on record");
}

#[test]
fn an_update_older_than_a_concurrent_delete_is_recorded_not_dropped() {
    let insert = write("us", 1, 100, &[], full(&["pen"]));
    let delete = write("eu", 1, 200, &[("us", 1)], None);
    let update = write("ap", 1, 150, &[("us", 1)], full(&["pencil"]));
    for policy in [Policy::LastWriterWins, Policy::ColumnMerge] {
        let row = applied(policy, 1, &[&insert, &update, &delete]);
        assert_eq!(row, applied(policy, 1, &[&insert, &delete, &update]), "{policy:?}");
        assert_eq!(shown(&row), None, "{policy:?}: the row stays deleted");
        assert_eq!(row.conflicts().len(), 1, "{policy:?}: the update is on record");
        assert_eq!(row.conflicts()[0].loser.0, Dot::new("ap", 1));
    }
}

#[test]
fn keep_both_flags_the_row_until_a_write_that_saw_both_resolves_it() {
    let eu = write("eu", 1, 200, &[], full(&["a"]));
    let ap = write("ap", 1, 150, &[], full(&["b"]));
    let mut row = applied(Policy::KeepBoth, 1, &[&eu, &ap]);
    assert!(row.needs_resolution());
    assert_eq!(shown(&row), Some(vec!["a"]), "a deterministic winner shows meanwhile");
    let resolution = write("us", 1, 300, &[("eu", 1), ("ap", 1)], full(&["a and b"]));
    row.apply(&resolution).unwrap();
    assert!(!row.needs_resolution());
    assert!(row.conflicts().is_empty());
    assert_eq!(shown(&row), Some(vec!["a and b"]));
}

#[test]
fn applying_a_write_twice_changes_nothing() {
    let insert = write("us", 1, 100, &[], full(&["pen"]));
    let update = write("eu", 1, 200, &[], full(&["pencil"]));
    let once = applied(Policy::LastWriterWins, 1, &[&insert, &update]);
    assert_eq!(applied(Policy::LastWriterWins, 1, &[&insert, &update, &insert, &update]), once);
}

#[test]
fn malformed_writes_are_refused_and_change_nothing() {
    let mut row = applied(Policy::LastWriterWins, 2, &[&write("us", 1, 100, &[], full(&["pen", "2"]))]);
    let before = row.clone();
    let partial = write("eu", 1, 200, &[("us", 1)], Some(vec![None, Some("3")]));
    assert_eq!(row.apply(&partial), Err(RowError::PartialImage { policy: Policy::LastWriterWins, dot: Dot::new("eu", 1) }));
    let wide = write("eu", 1, 200, &[("us", 1)], full(&["pen", "2", "extra"]));
    assert_eq!(row.apply(&wide), Err(RowError::ColumnCount { expected: 2, got: 3, dot: Dot::new("eu", 1) }));
    assert_eq!(row, before);
    assert_eq!(Policy::parse("column-merge"), Ok(Policy::ColumnMerge));
    assert!(Policy::parse("newest").unwrap_err().contains("use lww, column-merge or keep-both"));
}

#[test]
fn a_write_waits_until_what_it_had_seen_is_applied() {
    let mut queue: CausalQueue<&str> = CausalQueue::new(VersionVector::new());
    // eu#1 was made after eu had applied us#1; it arrives first.
    assert_eq!(queue.receive(Dot::new("eu", 1), seen(&[("us", 1)]), "eu#1"), Received::Queued);
    assert_eq!(queue.release(), None, "us#1 has not arrived");
    assert_eq!(queue.receive(Dot::new("us", 2), seen(&[("us", 1)]), "us#2"), Received::Queued);
    assert_eq!(queue.release(), None, "us#2 needs us#1 before it");
    queue.receive(Dot::new("us", 1), VersionVector::new(), "us#1");
    let order: Vec<&str> = std::iter::from_fn(|| queue.release().map(|(_, _, write)| write)).collect();
    // us#1 is the only one ready; then eu#1 and us#2 both are, and the lowest dot leaves first.
    assert_eq!(order, vec!["us#1", "eu#1", "us#2"]);
    assert_eq!(queue.receive(Dot::new("us", 1), VersionVector::new(), "again"), Received::Duplicate);
    assert_eq!(queue.applied(), &seen(&[("eu", 1), ("us", 2)]));
}

/// A small deterministic generator (splitmix64), so a failing seed replays exactly.
struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % bound
    }
}

const REGIONS: [&str; 3] = ["ap", "eu", "us"];
const KEYS: usize = 2;
const COLUMNS: usize = 2;
const VALUES: [&str; 4] = ["a", "b", "c", "d"];

type Shipped = (usize, RowWrite<&'static str>);

struct Region {
    queue: CausalQueue<Shipped>,
    rows: Vec<Row<&'static str>>,
    written: u64,
    clock: u64,
}

/// Three regions write two keys and ship every write to the others, delivered in a
/// random order (reordered, delayed, across regions); each region applies what its causal
/// queue releases. Afterwards every region must hold the same rows, conflict records
/// included, and every write must still be held or have been replaced by a write that saw it.
fn converges(seed: u64, policy: Policy) -> Result<(), String> {
    let mut rng = Rng(seed);
    let mut regions: Vec<Region> = REGIONS
        .iter()
        .map(|_| Region { queue: CausalQueue::new(VersionVector::new()), rows: (0..KEYS).map(|_| Row::new(policy, COLUMNS)).collect(), written: 0, clock: 0 })
        .collect();
    let mut in_flight: Vec<(usize, Dot, VersionVector, Shipped)> = Vec::new();
    let mut history: Vec<Shipped> = Vec::new();
    for _ in 0..60 {
        if in_flight.is_empty() || rng.below(2) == 0 {
            let origin = rng.below(REGIONS.len() as u64) as usize;
            let key = rng.below(KEYS as u64) as usize;
            let region = &mut regions[origin];
            region.written += 1;
            region.clock += 1 + rng.below(3);
            let dot = Dot::new(REGIONS[origin], region.written);
            let seen = region.queue.record_local(&dot);
            let values = if rng.below(5) == 0 {
                None
            } else {
                let partial = policy == Policy::ColumnMerge;
                let mut values: Vec<Option<&str>> =
                    (0..COLUMNS).map(|_| (!partial || rng.below(2) == 0).then(|| VALUES[rng.below(VALUES.len() as u64) as usize])).collect();
                if values.iter().all(Option::is_none) {
                    values[0] = Some(VALUES[0]);
                }
                Some(values)
            };
            let write = RowWrite { dot: dot.clone(), stamp: Stamp::new(Timestamp::new(region.clock, 0), REGIONS[origin]), seen: seen.clone(), values };
            region.rows[key].apply(&write).map_err(|error| error.to_string())?;
            for other in (0..REGIONS.len()).filter(|other| *other != origin) {
                in_flight.push((other, dot.clone(), seen.clone(), (key, write.clone())));
            }
            history.push((key, write));
        } else {
            deliver_one(&mut rng, &mut regions, &mut in_flight)?;
        }
    }
    while !in_flight.is_empty() {
        deliver_one(&mut rng, &mut regions, &mut in_flight)?;
    }
    let first = &regions[0];
    for (index, region) in regions.iter().enumerate().skip(1) {
        if region.queue.applied() != first.queue.applied() {
            return Err(format!("{} applied {:?}, {} applied {:?}", REGIONS[index], region.queue.applied(), REGIONS[0], first.queue.applied()));
        }
        for key in 0..KEYS {
            if region.rows[key] != first.rows[key] {
                return Err(format!("key {key} differs: {}: {:?}; {}: {:?}", REGIONS[0], first.rows[key], REGIONS[index], region.rows[key]));
            }
        }
    }
    for (key, write) in &history {
        let held = first.rows[*key].held_dots().contains(&write.dot);
        let replaced = history.iter().any(|(other_key, other)| other_key == key && other.dot != write.dot && other.seen.contains(&write.dot));
        if !held && !replaced {
            return Err(format!("write {} on key {key} vanished: not held, and no write that saw it replaced it", write.dot));
        }
    }
    Ok(())
}

fn deliver_one(rng: &mut Rng, regions: &mut [Region], in_flight: &mut Vec<(usize, Dot, VersionVector, Shipped)>) -> Result<(), String> {
    let (to, dot, seen, shipped) = in_flight.swap_remove(rng.below(in_flight.len() as u64) as usize);
    let region = &mut regions[to];
    region.queue.receive(dot, seen, shipped);
    while let Some((_, _, (key, write))) = region.queue.release() {
        region.rows[key].apply(&write).map_err(|error| error.to_string())?;
    }
    Ok(())
}

/// 3,000 seeds per policy; `TERN_ML_SEED=N` runs one.
#[test]
fn regions_applying_the_same_writes_in_any_causal_order_converge_and_lose_nothing() {
    let seeds: Vec<u64> = match std::env::var("TERN_ML_SEED") {
        Ok(seed) => vec![seed.parse().expect("TERN_ML_SEED is a number")],
        Err(_) => (0..3_000).collect(),
    };
    for policy in [Policy::LastWriterWins, Policy::ColumnMerge, Policy::KeepBoth] {
        for seed in &seeds {
            if let Err(problem) = converges(*seed, policy) {
                panic!(
                    "seed {seed}, policy {}: {problem}\nreplay: TERN_ML_SEED={seed} cargo test --release -p tern-core --test multi_leader regions_applying",
                    policy.name()
                );
            }
        }
    }
}

fn exchange_config(region: &str) -> tern_core::multi_leader::ExchangeConfig {
    tern_core::multi_leader::ExchangeConfig {
        region: region.to_string(),
        regions: REGIONS.iter().map(|name| name.to_string()).collect(),
        status_interval_us: 1_000_000,
        resend_us: 100_000,
    }
}

fn outputs(exchange: &mut tern_core::multi_leader::Exchange<&'static str>) -> Vec<tern_core::multi_leader::ExchangeOutput<&'static str>> {
    std::iter::from_fn(|| exchange.poll_output()).collect()
}

/// A write made in us is read from the log and shipped to both other regions; eu applies
/// it and relays it to ap (which us may not reach); us ships it again to whoever has not
/// confirmed it after `resend_us`.
#[test]
fn the_exchange_ships_relays_and_resends_a_write() {
    use tern_core::multi_leader::{Exchange, ExchangeEvent as In, ExchangeOutput as Out, RegionMessage, Shipment};
    let mut us: Exchange<&str> = Exchange::new(exchange_config("us"), VersionVector::new(), 0);
    let (dot, had_seen) = us.next_local();
    assert_eq!((dot.clone(), had_seen.clone()), (Dot::new("us", 1), VersionVector::new()));
    us.handle(In::Committed { dot: dot.clone() }, 10);
    let read = |to: &str| Out::ReadWrites { to: to.to_string(), origin: "us".to_string(), after: 0, up_to: 1 };
    assert_eq!(outputs(&mut us), vec![read("ap"), read("eu")]);
    let shipment = Shipment { dot: dot.clone(), seen: had_seen, write: "the write" };
    us.handle(In::WritesRead { to: "eu".to_string(), writes: vec![shipment.clone()] }, 11);
    let ship = RegionMessage::Ship { writes: vec![shipment.clone()] };
    assert_eq!(outputs(&mut us), vec![Out::Send { to: "eu".to_string(), message: ship.clone() }]);

    let mut eu: Exchange<&str> = Exchange::new(exchange_config("eu"), VersionVector::new(), 0);
    eu.handle(In::Message { from: "us".to_string(), message: ship.clone() }, 20);
    assert_eq!(outputs(&mut eu), vec![Out::Apply(shipment.clone())]);
    eu.handle(In::Applied { dot: dot.clone() }, 21);
    assert_eq!(outputs(&mut eu), vec![read("ap")], "relayed to ap; not back to us, which holds it");
    eu.handle(In::Message { from: "us".to_string(), message: ship }, 22);
    assert_eq!(outputs(&mut eu), Vec::new(), "a resent copy is a duplicate");

    us.handle(In::Message { from: "eu".to_string(), message: RegionMessage::Status { holds: eu.holds().clone() } }, 30);
    assert_eq!(outputs(&mut us), Vec::new());
    us.handle(In::Tick, 100_010);
    let status = |to: &str| Out::Send { to: to.to_string(), message: RegionMessage::Status { holds: [("us", 1)].into_iter().collect() } };
    assert_eq!(outputs(&mut us), vec![status("ap"), status("eu"), read("ap")], "ap never confirmed: asked for again; eu did");
    assert_eq!(us.poll_timeout(), Some(200_010), "the next resend to ap comes before the next status (1,100,010)");
    us.handle(In::WaitForRegions { tag: 7, dot: dot.clone(), regions: 2, deadline: 500_000 }, 100_020);
    assert_eq!(outputs(&mut us), vec![Out::Reached { tag: 7, result: Ok(()) }], "us and eu hold it");
    us.handle(In::WaitForRegions { tag: 8, dot, regions: 3, deadline: 150_000 }, 100_030);
    assert_eq!(us.poll_timeout(), Some(150_000));
    us.handle(In::Tick, 150_000);
    assert_eq!(outputs(&mut us), vec![Out::Reached { tag: 8, result: Err(2) }], "ap still lacks it at the deadline");
}

/// A device's pushed writes are released in causal order (the second waits for the
/// first), never a region's writes passed off as a device's, and once applied they are
/// shipped on to every region like any write held here.
#[test]
fn a_devices_writes_are_applied_in_causal_order_and_shipped_on_to_every_region() {
    use tern_core::multi_leader::{Exchange, ExchangeEvent as In, ExchangeOutput as Out, Shipment};
    let mut us: Exchange<&str> = Exchange::new(exchange_config("us"), VersionVector::new(), 0);
    let second = Shipment { dot: Dot::new("phone", 2), seen: seen(&[("phone", 1)]), write: "second" };
    let forged = Shipment { dot: Dot::new("eu", 1), seen: VersionVector::new(), write: "not the phone's" };
    us.handle(In::FromDevice { writes: vec![second.clone(), forged] }, 1);
    assert_eq!(outputs(&mut us), Vec::new(), "phone:2 waits for phone:1; eu's write is eu's to send");
    let first = Shipment { dot: Dot::new("phone", 1), seen: VersionVector::new(), write: "first" };
    us.handle(In::FromDevice { writes: vec![first.clone()] }, 2);
    assert_eq!(outputs(&mut us), vec![Out::Apply(first.clone()), Out::Apply(second.clone())]);
    us.handle(In::FromDevice { writes: vec![first] }, 3);
    assert_eq!(outputs(&mut us), Vec::new(), "pushed again after an interrupted sync: a duplicate");
    us.handle(In::Applied { dot: Dot::new("phone", 2) }, 4);
    let read = |to: &str| Out::ReadWrites { to: to.to_string(), origin: "phone".to_string(), after: 0, up_to: 2 };
    assert_eq!(outputs(&mut us), vec![read("ap"), read("eu")]);
    assert_eq!(us.holds().get("phone"), 2);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 1024, failure_persistence: None, ..proptest::prelude::ProptestConfig::default() })]

    /// A token is client input: any text parses or is refused, and what parses prints back as itself.
    #[test]
    fn any_token_text_parses_or_is_refused(text in "\\PC{0,40}", near in "[a-z:,0-9 é-]{0,30}") {
        for candidate in [text.as_str(), near.as_str()] {
            if let Ok(token) = candidate.parse::<VersionVector>() {
                proptest::prop_assert_eq!(token.to_string().parse::<VersionVector>().unwrap(), token);
            }
        }
    }
}

#[test]
fn a_session_token_is_a_version_vector_written_region_by_region() {
    let token: VersionVector = "us-east:4, eu-west:2".parse().unwrap();
    assert_eq!((token.get("us-east"), token.get("eu-west"), token.get("antarctica")), (4, 2, 0));
    assert_eq!(token.to_string(), "eu-west:2,us-east:4");
    assert_eq!(token.to_string().parse::<VersionVector>().unwrap(), token);
    assert_eq!("".parse::<VersionVector>().unwrap(), VersionVector::new());
    for bad in ["us-east", "us-east:x", ":3", "a:1,a:2", "a:-1"] {
        assert!(bad.parse::<VersionVector>().is_err(), "{bad:?} is refused");
    }
}

#[test]
fn a_key_changes_home_only_by_a_handover_from_its_home() {
    use std::collections::BTreeMap;
    use tern_core::multi_leader::{Handover, HomeError, Homes};
    let start: BTreeMap<u32, String> = [(1, "us-east".to_string()), (2, "eu-west".to_string())].into_iter().collect();
    let mut us = Homes::new("us-east", start.clone());
    let mut antarctica = Homes::new("antarctica", start);
    assert_eq!(us.may_write(&1), Ok(()));
    assert_eq!(us.may_write(&2), Err(HomeError::HomedElsewhere { home: "eu-west".into() }));
    assert_eq!(us.may_write(&3), Ok(()), "a key without a home is written anywhere");
    assert_eq!(us.hand_over(&2, "antarctica"), Err(HomeError::HomedElsewhere { home: "eu-west".into() }), "only the home hands a key over");
    assert_eq!(us.hand_over(&1, "us-east"), Err(HomeError::AlreadyHome { home: "us-east".into() }));

    let handover = us.hand_over(&1, "antarctica").unwrap();
    assert_eq!(handover, Handover { key: 1, from: "us-east".into(), to: "antarctica".into() });
    assert!(us.may_write(&1).is_err(), "the old home stops at once");
    assert!(antarctica.may_write(&1).is_err(), "the new home waits for the handover");
    antarctica.apply(&handover);
    assert_eq!(antarctica.may_write(&1), Ok(()));
    assert_eq!(antarctica.counts().get("antarctica"), Some(&1));

    // The naive move: a region declares itself home while the old home still writes.
    let mut eu = Homes::new("eu-west", [(1, "antarctica".to_string())].into_iter().collect());
    let claim = eu.claim(&1);
    assert_eq!((eu.may_write(&1), antarctica.may_write(&1)), (Ok(()), Ok(())), "two regions write key 1: the window the naive move opens");
    antarctica.apply(&claim);
    assert!(antarctica.may_write(&1).is_err());
}
