//! Offline-first devices against real `tern server` processes (issue 15): devices that
//! write offline in two regions and converge with their conflicts on record everywhere,
//! and syncs interrupted by killing the device or the server mid-transfer, resumed
//! without a write lost or applied twice.

mod support;

use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::*;
use tern_server::device::Device;

const LONG: Duration = Duration::from_secs(60);

fn ok(reply: &tern_server::client::Reply) {
    assert_eq!(reply.status, 200, "{}", reply.body);
    for result in reply.body["results"].as_array().into_iter().flatten() {
        assert!(result["error"].is_null(), "{}", reply.body);
    }
}

/// Runs `tern device` to completion; its standard output (it must succeed).
fn tern_device(data: &std::path::Path, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_tern")).arg("device").arg("--data").arg(data).args(args).output().expect("tern runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "tern device {args:?} failed: {text}{}", String::from_utf8_lossy(&output.stderr));
    text
}

/// Starts `tern device sync` in the background, to be killed mid-transfer.
fn background_sync(data: &std::path::Path, server: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["device", "--data"])
        .arg(data)
        .args(["sync", "--to", server])
        .stdout(Stdio::null())
        .spawn()
        .expect("tern runs")
}

/// How far a node's region holds `origin`'s stream.
fn held(cluster: &Cluster, node: usize, origin: &str) -> u64 {
    cluster.nodes[node].client().get("/status").map_or(0, |reply| reply.body["regions"]["holds"][origin].as_u64().unwrap_or(0))
}

fn shown(cluster: &Cluster, node: usize, sql: &str) -> Value {
    Value::Array(rows(&query(&mut cluster.nodes[node].client(), sql, "")))
}

fn device_rows(device: &mut Device, sql: &str) -> Value {
    let results = device.execute(&[sql]).expect("the device reads");
    json!(results[0].values.iter().map(|row| row.iter().map(tern_storage::SqlValue::to_json).collect::<Vec<_>>()).collect::<Vec<_>>())
}

fn conflicted(cluster: &Cluster, node: usize) -> usize {
    cluster.nodes[node].client().get("/db/conflicts").expect("node answers").body["conflicts"].as_array().map_or(0, Vec::len)
}

#[test]
fn devices_write_offline_in_two_regions_and_converge_with_their_conflicts_on_record_everywhere() {
    let cluster = Cluster::start_multi_leader("dev-regions", &["us-east", "antarctica"], &[]);
    let (us, antarctica) = (0, 1);
    ok(&execute(&mut cluster.nodes[us].client(), "?w=regions:all", json!(["CREATE TABLE bookings (slot TEXT PRIMARY KEY, who TEXT NOT NULL)"])));
    let policy = cluster.nodes[us].client().post_json("/db/conflicts/policy", &json!({"table": "bookings", "policy": "keep-both"})).expect("node answers");
    assert_eq!(policy.status, 200, "{}", policy.body);
    let dir = cluster.dir.join("devices");
    let (phone_dir, laptop_dir) = (dir.join("phone"), dir.join("laptop"));
    let mut phone = Device::open(&phone_dir, Some("alice-phone")).expect("opens");
    let mut laptop = Device::open(&laptop_dir, Some("bob-laptop")).expect("opens");
    phone.sync(&cluster.nodes[us].http).expect("phone syncs with us-east");
    laptop.sync(&cluster.nodes[antarctica].http).expect("laptop syncs with antarctica");
    eventually(LONG, "antarctica to hold the policy", || held(&cluster, antarctica, "us-east") >= 2);
    laptop.sync(&cluster.nodes[antarctica].http).expect("laptop syncs again");

    // Offline: both book 09:00; each books a slot of its own; the schema stays the cluster's.
    assert!(phone.execute(&["CREATE TABLE mine (x INTEGER PRIMARY KEY)"]).is_err(), "a device takes its schema from the cluster");
    phone.execute(&["INSERT INTO bookings VALUES ('09:00', 'alice')", "INSERT INTO bookings VALUES ('11:00', 'alice')"]).expect("offline write");
    std::thread::sleep(Duration::from_millis(5));
    laptop.execute(&["INSERT INTO bookings VALUES ('09:00', 'bob')"]).expect("offline write");
    // From here the laptop is driven from the command line (one program at a time has a device).
    let in_use = std::process::Command::new(env!("CARGO_BIN_EXE_tern")).arg("device").arg("--data").arg(&laptop_dir).arg("status").output().expect("runs");
    assert!(!in_use.status.success() && String::from_utf8_lossy(&in_use.stderr).contains("in use"), "a device open in one program is refused to another");
    drop(laptop);
    let said = tern_device(&laptop_dir, &["exec", "INSERT INTO bookings VALUES ('12:00', 'bob')"]);
    assert!(said.contains("1 row(s) changed"), "{said}");
    let status = tern_device(&laptop_dir, &["status"]);
    assert!(status.contains("writes made here: 2 (2 not yet pushed"), "{status}");

    // Back online, each with its own region; the regions exchange; each syncs again.
    phone.sync(&cluster.nodes[us].http).expect("phone syncs");
    tern_device(&laptop_dir, &["sync", "--to", &format!("http://{}", cluster.nodes[antarctica].http)]);
    eventually(LONG, "both regions to hold both devices' writes", || {
        (0..2).all(|node| held(&cluster, node, "alice-phone") == 1 && held(&cluster, node, "bob-laptop") == 2)
    });
    phone.sync(&cluster.nodes[us].http).expect("phone syncs");
    let mut laptop = Device::open(&laptop_dir, None).expect("opens");
    laptop.sync(&cluster.nodes[antarctica].http).expect("laptop syncs");

    let expected = json!([["09:00", "bob"], ["11:00", "alice"], ["12:00", "bob"]]);
    let sql = "SELECT slot, who FROM bookings ORDER BY slot";
    for node in [us, antarctica] {
        assert_eq!(shown(&cluster, node, sql), expected, "node {node}");
        assert_eq!(conflicted(&cluster, node), 1, "alice's 09:00 waits for a person in every region");
    }
    for device in [&mut phone, &mut laptop] {
        assert_eq!(device_rows(device, sql), expected, "{}", device.id());
        let conflicts = device.conflicts().expect("reads");
        assert_eq!(conflicts.iter().map(|table| table.rows.len()).sum::<usize>(), 1, "{} has the conflict too", device.id());
        assert_eq!(device.status().expect("reads").pending, 0);
    }
    // The phone from the command line now: the conflict, then settled there, the flag clears everywhere.
    drop(phone);
    let listed = tern_device(&phone_dir, &["conflicts"]);
    assert!(listed.contains("lost: alice-phone") && listed.contains("kept: bob-laptop"), "{listed}");
    let settled = tern_device(&phone_dir, &["resolve", "--table", "bookings", "--key", "09:00"]);
    assert!(settled.contains("settled"), "{settled}");
    tern_device(&phone_dir, &["sync", "--to", &cluster.nodes[us].http]);
    eventually(LONG, "the resolution to reach antarctica", || conflicted(&cluster, antarctica) == 0 && conflicted(&cluster, us) == 0);
    laptop.sync(&cluster.nodes[antarctica].http).expect("laptop syncs");
    assert!(laptop.conflicts().expect("reads").is_empty(), "the laptop has the resolution");
}

#[test]
fn a_sync_killed_mid_transfer_on_either_side_resumes_without_a_write_lost_or_applied_twice() {
    let mut cluster = Cluster::start_multi_leader("dev-kill", &["us-east"], &[]);
    ok(&execute(&mut cluster.nodes[0].client(), "", json!(["CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT NOT NULL)"])));
    let server = cluster.nodes[0].http.clone();
    let dir = cluster.dir.join("devices");
    let writer_dir = dir.join("writer");
    const ROUND: usize = 3_000;
    let mut writer = Device::open(&writer_dir, Some("writer")).expect("opens");
    writer.sync(&server).expect("the schema reaches the device");
    drop(writer);
    let write_offline = |round: usize| {
        let mut writer = Device::open(&writer_dir, Some("writer")).expect("opens");
        for number in 0..ROUND {
            let results = writer.execute(&[&format!("INSERT INTO notes VALUES ('{round}-{number}', 'a note')")]).expect("offline write");
            assert_eq!(results[0].error, None);
        }
    };
    let caught_mid_push = |cluster: &Cluster, from: u64| {
        eventually(LONG, "the push to be under way", || held(cluster, 0, "writer") > from);
        held(cluster, 0, "writer")
    };

    // The device killed while pushing: the node keeps the pages it took; the next sync sends the rest.
    write_offline(0);
    let mut syncing = background_sync(&writer_dir, &server);
    let at_kill = caught_mid_push(&cluster, 0);
    syncing.kill().expect("kills");
    let _ = syncing.wait();
    println!("device killed with {at_kill} of {ROUND} writes held by the cluster");
    tern_device(&writer_dir, &["sync", "--to", &server]);
    assert_eq!(held(&cluster, 0, "writer"), ROUND as u64);

    // The server killed while the device pushes: the sync fails; after a restart it completes.
    write_offline(1);
    let mut syncing = background_sync(&writer_dir, &server);
    let at_kill = caught_mid_push(&cluster, ROUND as u64);
    cluster.nodes[0].kill();
    let failed = syncing.wait().expect("the sync ends");
    println!("server killed with {at_kill} of {} writes held; the sync ended with {failed}", 2 * ROUND);
    cluster.nodes[0].start();
    wait_node_ready(&cluster.nodes[0]);
    tern_device(&writer_dir, &["sync", "--to", &server]);
    assert_eq!(held(&cluster, 0, "writer"), 2 * ROUND as u64);
    assert_eq!(count(&mut cluster.nodes[0].client(), "SELECT count(*) FROM notes", ""), 2 * ROUND as i64, "every write once");

    // A device away for all of it pulls everything; killed mid-pull, it goes on from what it applied.
    let reader_dir = dir.join("reader");
    let mut pulling = background_sync(&reader_dir, &server);
    std::thread::sleep(Duration::from_millis(300));
    pulling.kill().expect("kills");
    let _ = pulling.wait();
    tern_device(&reader_dir, &["sync", "--to", &server]);
    let mut reader = Device::open(&reader_dir, None).expect("opens");
    assert_eq!(device_rows(&mut reader, "SELECT count(*), count(DISTINCT id) FROM notes"), json!([[2 * ROUND, 2 * ROUND]]));
    assert_eq!(reader.holds().expect("reads").get("writer"), 2 * ROUND as u64);
    let writer = Device::open(&writer_dir, None).expect("opens");
    let status = writer.status().expect("reads");
    assert_eq!((status.own_writes, status.pending), (2 * ROUND as u64, 0));
    assert_eq!(conflicted(&cluster, 0), 0, "no write was applied twice (a second copy would be a conflict or a refusal)");
}

#[test]
fn a_device_away_longer_than_the_cluster_keeps_its_log_gets_a_snapshot_and_keeps_its_own_writes() {
    let cluster = Cluster::start_multi_leader("dev-away", &["us-east"], &["--region-log-retain", "50"]);
    ok(&execute(&mut cluster.nodes[0].client(), "", json!(["CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT NOT NULL)"])));
    let server = cluster.nodes[0].http.clone();
    let tablet_dir = cluster.dir.join("tablet");
    let mut tablet = Device::open(&tablet_dir, Some("tablet")).expect("opens");
    tablet.sync(&server).expect("the schema reaches the tablet");
    let away = tablet.holds().expect("reads");
    for number in 0..3 {
        let results = tablet.execute(&[&format!("INSERT INTO notes VALUES ('tablet-{number}', 'written away')")]).expect("offline write");
        assert_eq!(results[0].error, None);
    }
    drop(tablet);
    for number in 0..200 {
        ok(&execute(&mut cluster.nodes[0].client(), "", json!([format!("INSERT INTO notes VALUES ('hq-{number}', 'at the office')")])));
    }
    let pull = json!({ "holds": tern_storage::sync::vector_to_json(&away) });
    eventually(LONG, "the region log to be compacted past what the tablet holds", || {
        cluster.nodes[0].client().post_json("/db/sync/pull", &pull).is_ok_and(|reply| reply.body["snapshot"] == json!(true))
    });
    let said = tern_device(&tablet_dir, &["sync", "--to", &server]);
    assert!(said.contains("took a snapshot") && said.contains("pushed 3"), "{said}");
    let mut tablet = Device::open(&tablet_dir, None).expect("opens");
    assert_eq!(device_rows(&mut tablet, "SELECT count(*) FROM notes"), json!([[203]]));
    assert_eq!(device_rows(&mut tablet, "SELECT count(*) FROM notes WHERE id LIKE 'tablet-%'"), json!([[3]]), "its own writes kept over the snapshot");
    assert_eq!(count(&mut cluster.nodes[0].client(), "SELECT count(*) FROM notes", ""), 203);
    assert_eq!(held(&cluster, 0, "tablet"), 3);
    assert_eq!(tablet.status().expect("reads").pending, 0);
    // It goes on as any device: a write made after the snapshot reaches the cluster.
    tablet.execute(&["UPDATE notes SET body = 'edited on the tablet' WHERE id = 'hq-0'"]).expect("writes");
    tablet.sync(&server).expect("syncs");
    assert_eq!(shown(&cluster, 0, "SELECT body FROM notes WHERE id = 'hq-0'"), json!([["edited on the tablet"]]));
}

#[test]
fn a_device_syncs_through_a_follower_and_a_second_device_under_the_same_id_is_refused() {
    let cluster = Cluster::start_multi_leader("dev-follower", &["us-east", "us-east"], &[]);
    let (leader, follower) = (0, 1);
    ok(&execute(&mut cluster.nodes[leader].client(), "?w=all", json!(["CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT NOT NULL)"])));
    let follower_http = cluster.nodes[follower].http.clone();
    let mut phone = Device::open(&cluster.dir.join("phone"), Some("phone")).expect("opens");
    phone.sync(&follower_http).expect("pulls the schema from the follower");
    phone.execute(&["INSERT INTO notes VALUES ('a', 'one')", "INSERT INTO notes VALUES ('b', 'two')"]).expect("writes");
    let report = phone.sync(&follower_http).expect("the follower passes the push to its leader");
    assert_eq!(report.pushed, 1, "one transaction, one write");
    assert_eq!(held(&cluster, leader, "phone"), 1);
    eventually(LONG, "the follower to show the phone's notes", || shown(&cluster, follower, "SELECT count(*) FROM notes") == json!([[2]]));

    // Another device given the same id would have its writes taken for the phone's: refused, with the reason.
    let mut twin = Device::open(&cluster.dir.join("twin"), Some("phone")).expect("opens");
    let refused = twin.sync(&follower_http).expect_err("the cluster holds writes of phone the twin never made");
    assert!(refused.contains("another device uses this id"), "{refused}");
}
