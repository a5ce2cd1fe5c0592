//! A room calendar on offline-first devices (issue 15), the primer's example of
//! multi-leader replication: every device's database acts as a leader.
//!
//! Alice's phone and Bob's laptop both book the 09:00 slot while offline, then sync. In
//! the room whose table keeps both versions (`keep-both`), both bookings are visible and
//! the slot is flagged until a person settles it; in the room whose table lets the last
//! writer win (`lww`), one booking wins and the other is on record in the conflicts
//! table. Carol's tablet, offline all along while 500 more bookings were made, catches up.
//!
//! `cargo run --release -p calendar` runs it against a one-node multi-leader cluster it
//! starts in this process; `cargo run --release -p calendar -- HOST:PORT` uses a running
//! cluster's node instead (started with `--topology multi-leader`).

use serde_json::{json, Value};
use std::path::Path;
use tern_server::client::HttpClient;
use tern_server::device::Device;
use tern_storage::StatementResult;

const SLOT: &str = "Dec 3 09:00";
const LATER_BOOKINGS: usize = 500;

/// What the run showed, for the test to check.
#[derive(Debug)]
#[cfg_attr(not(test), allow(dead_code))]
struct Summary {
    /// Per device (alice, bob): the keep-both room's 09:00 booking shown, and how many
    /// versions wait for a person there, before the slot was settled.
    keep_both: Vec<(String, usize)>,
    /// The same after Alice settled it (both devices synced).
    keep_both_settled: Vec<(String, usize)>,
    /// Per device: the lww room's 09:00 booking shown; and the losing booking the cluster keeps on record.
    lww: Vec<String>,
    lww_lost: Option<String>,
    /// Carol's catch-up: writes pulled, and bookings she then sees.
    carol_pulled: u64,
    carol_bookings: i64,
}

fn main() {
    let server = std::env::args().nth(1);
    if let Err(error) = run(server.as_deref(), &std::env::temp_dir().join(format!("tern-calendar-{}", std::process::id())), true) {
        eprintln!("calendar: {error}");
        std::process::exit(1);
    }
}

fn say(verbose: bool, text: String) {
    if verbose {
        println!("{text}");
    }
}

/// A one-node multi-leader cluster in this process, kept running by the returned runtime.
fn start_cluster(directory: &Path) -> Result<(tokio::runtime::Runtime, String), String> {
    let runtime = tokio::runtime::Runtime::new().map_err(|error| error.to_string())?;
    let peer = tern_server::client::free_local_addr()?;
    let mut config = tern_server::NodeConfig::new("hq", "us-east", directory.join("hq"), peer);
    config.topology = tern_core::Topology::MultiLeader;
    let node = runtime.block_on(tern_server::serve(config))?;
    let address = node.http_addr.lock().map_err(|_| "the node's address is unreadable")?.clone();
    tern_server::client::wait_ready(std::slice::from_ref(&address), std::time::Duration::from_secs(30))?;
    Ok((runtime, address))
}

fn post(server: &str, path: &str, body: &Value) -> Result<Value, String> {
    let reply = HttpClient::new(server).post_json(path, body).map_err(|error| format!("cannot reach {server}: {error}"))?;
    let failed = reply.body["results"].as_array().into_iter().flatten().any(|result| !result["error"].is_null());
    if reply.status != 200 || failed {
        return Err(format!("{path} failed ({}): {}", reply.status, reply.body));
    }
    Ok(reply.body)
}

fn rows(results: &[StatementResult]) -> Vec<Vec<Value>> {
    results.first().map(|result| result.values.iter().map(|row| row.iter().map(tern_storage::SqlValue::to_json).collect()).collect()).unwrap_or_default()
}

/// Who a device shows in `room`'s 09:00 slot, and how many versions of it wait there
/// (keep-both) or were lost (lww).
fn slot_view(device: &mut Device, room: &str) -> Result<(String, usize), String> {
    let shown = rows(&device.execute(&[&format!("SELECT who FROM {room} WHERE slot = '{SLOT}'")])?);
    let who = shown.first().and_then(|row| row[0].as_str()).unwrap_or("nobody").to_string();
    let waiting = device
        .conflicts()?
        .iter()
        .filter(|table| table.table == room)
        .map(|table| table.rows.iter().map(|(_, conflicts)| conflicts.len()).sum::<usize>())
        .sum();
    Ok((who, waiting))
}

fn book(device: &mut Device, room: &str, slot: &str, who: &str) -> Result<(), String> {
    let results = device.execute(&[&format!("INSERT INTO {room} (slot, who) VALUES ('{slot}', '{who}')")])?;
    match results.iter().find_map(|result| result.error.clone()) {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

fn run(server: Option<&str>, directory: &Path, verbose: bool) -> Result<Summary, String> {
    let _ = std::fs::remove_dir_all(directory);
    let started = match server {
        Some(_) => None,
        None => Some(start_cluster(directory)?),
    };
    let server = server.map_or_else(|| started.as_ref().map(|(_, address)| address.clone()).unwrap_or_default(), str::to_string);
    say(verbose, format!("the cluster: {server} (multi-leader); devices in {}", directory.display()));
    post(
        &server,
        "/db/execute?w=regions:all",
        &json!([
            "CREATE TABLE IF NOT EXISTS room_keep_both (slot TEXT PRIMARY KEY, who TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS room_lww (slot TEXT PRIMARY KEY, who TEXT NOT NULL)"
        ]),
    )?;
    post(&server, "/db/conflicts/policy", &json!({"table": "room_keep_both", "policy": "keep-both"}))?;

    let mut alice = Device::open(&directory.join("alice-phone"), Some("alice-phone"))?;
    let mut bob = Device::open(&directory.join("bob-laptop"), Some("bob-laptop"))?;
    let mut carol = Device::open(&directory.join("carol-tablet"), Some("carol-tablet"))?;
    for device in [&mut alice, &mut bob, &mut carol] {
        device.sync(&server)?;
    }
    say(verbose, "alice-phone, bob-laptop and carol-tablet have the calendar; now they go offline".to_string());

    for room in ["room_keep_both", "room_lww"] {
        book(&mut alice, room, SLOT, "alice")?;
    }
    std::thread::sleep(std::time::Duration::from_millis(5));
    for room in ["room_keep_both", "room_lww"] {
        book(&mut bob, room, SLOT, "bob")?;
    }
    say(verbose, format!("offline, alice and bob both book {SLOT} in both rooms; back online, they sync"));
    alice.sync(&server)?;
    bob.sync(&server)?;
    alice.sync(&server)?;

    let keep_both = vec![slot_view(&mut alice, "room_keep_both")?, slot_view(&mut bob, "room_keep_both")?];
    say(
        verbose,
        format!(
            "room_keep_both (keep-both): alice's phone shows {:?}, bob's laptop {:?} (booking shown, versions flagged for a person)",
            keep_both[0], keep_both[1]
        ),
    );
    for table in alice.conflicts()?.iter().filter(|table| table.table == "room_keep_both") {
        for (_, conflicts) in &table.rows {
            for conflict in conflicts {
                let who = |values: &Option<Vec<tern_storage::SqlValue>>| values.as_ref().and_then(|values| values.get(1)).map(|who| who.to_json().to_string());
                say(
                    verbose,
                    format!(
                        "  flagged {SLOT}: shown {} (from {}), waiting {} (from {})",
                        who(&conflict.winner.2).unwrap_or_default(),
                        conflict.winner.0.region,
                        who(&conflict.loser.2).unwrap_or_default(),
                        conflict.loser.0.region
                    ),
                );
            }
        }
    }
    let lww = vec![slot_view(&mut alice, "room_lww")?.0, slot_view(&mut bob, "room_lww")?.0];
    let on_record = HttpClient::new(&server).get("/db/conflicts").map_err(|error| error.to_string())?.body;
    let lww_lost = on_record["conflicts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|conflict| conflict["table"] == "room_lww")
        .and_then(|conflict| conflict["lost"]["values"][1].as_str().map(str::to_string));
    say(
        verbose,
        format!("room_lww (lww): both show {lww:?}; the cluster's conflicts table keeps {}'s booking as lost", lww_lost.as_deref().unwrap_or("nobody")),
    );

    // A person settles the keep-both slot on her phone: 09:00 stays Bob's, Alice takes 10:00.
    alice.resolve("room_keep_both", &[tern_storage::SqlValue::Text(SLOT.to_string())], None)?;
    book(&mut alice, "room_keep_both", "Dec 3 10:00", "alice")?;
    alice.sync(&server)?;
    bob.sync(&server)?;
    let keep_both_settled = vec![slot_view(&mut alice, "room_keep_both")?, slot_view(&mut bob, "room_keep_both")?];
    say(verbose, format!("alice settles it (09:00 stays bob's, she takes 10:00): alice {:?}, bob {:?}", keep_both_settled[0], keep_both_settled[1]));

    // Carol's tablet stayed offline while Bob booked 500 more slots, one write each.
    for number in 0..LATER_BOOKINGS {
        book(&mut bob, "room_lww", &format!("Dec 4 #{number}"), "bob")?;
    }
    let pushed = bob.sync(&server)?;
    let caught_up = carol.sync(&server)?;
    let carol_bookings = rows(&carol.execute(&["SELECT count(*) FROM room_lww"])?).first().and_then(|row| row[0].as_i64()).unwrap_or(0);
    say(
        verbose,
        format!(
            "bob pushed {} writes in {} ms; carol's tablet, offline all along, pulled {} writes ({} bytes) in {} ms and sees {carol_bookings} bookings in room_lww",
            pushed.pushed,
            pushed.took.as_millis(),
            caught_up.pulled,
            caught_up.bytes_received,
            caught_up.took.as_millis()
        ),
    );
    let status = carol.status()?;
    say(verbose, format!("carol-tablet: {} own writes, {} pending, holds {}", status.own_writes, status.pending, status.holds));
    Ok(Summary { keep_both, keep_both_settled, lww, lww_lost, carol_pulled: caught_up.pulled, carol_bookings })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_people_book_one_slot_offline_and_each_policy_settles_it_and_a_long_offline_device_catches_up() {
        let directory = std::env::temp_dir().join(format!("tern-calendar-test-{}", std::process::id()));
        let summary = run(None, &directory, false).unwrap();
        // Bob booked last: the newest shows everywhere; under keep-both Alice's waits, flagged, until she settles it.
        assert_eq!(summary.keep_both, vec![("bob".to_string(), 1), ("bob".to_string(), 1)], "{summary:?}");
        assert_eq!(summary.keep_both_settled, vec![("bob".to_string(), 0), ("bob".to_string(), 0)], "{summary:?}");
        assert_eq!(summary.lww, vec!["bob".to_string(), "bob".to_string()], "{summary:?}");
        assert_eq!(summary.lww_lost.as_deref(), Some("alice"), "{summary:?}");
        assert!(summary.carol_pulled >= LATER_BOOKINGS as u64, "{summary:?}");
        assert_eq!(summary.carol_bookings, 1 + LATER_BOOKINGS as i64, "{summary:?}");
        let _ = std::fs::remove_dir_all(&directory);
    }
}
