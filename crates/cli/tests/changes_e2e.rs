//! The change stream on real processes: a consumer that reads a page at a time,
//! disconnecting between pages and asking another node each time, sees every change
//! exactly once, in log order, across a leader failover; `tern changes` prints the same.

mod support;

use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;
use support::*;

/// One page of events after `cursor`, from `node`; `None` if the node does not answer 200.
fn page(node: &ServerNode, cursor: &str, limit: usize) -> Option<Vec<Value>> {
    let (status, body) = node.client().request_raw("GET", &format!("/db/changes?from={cursor}&limit={limit}"), None).ok()?;
    (status == 200).then(|| String::from_utf8_lossy(&body).lines().map(|line| serde_json::from_str(line).expect("a JSON event")).collect())
}

/// Writes row `id` until some node takes it (INSERT OR IGNORE: a retry of a write whose
/// outcome was unknown changes nothing the second time, so it yields no second event).
fn write_row(cluster: &Cluster, alive: &[usize], id: i64) {
    let started = std::time::Instant::now();
    loop {
        for index in alive {
            let reply =
                cluster.nodes[*index].client().post_json("/db/execute", &json!([["INSERT OR IGNORE INTO events VALUES (?, ?)", id, format!("row {id}")]]));
            if reply.is_ok_and(|reply| reply.status == 200 && reply.body["results"][0]["error"].is_null()) {
                return;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no node took write {id} within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_resuming_consumer_sees_every_change_once_in_order_across_a_failover() {
    let mut cluster = Cluster::start("changes", 3, &[]);
    let leader = cluster.nodes.iter().position(|node| node.id == cluster.leader().id).expect("a leader");
    let all = [0, 1, 2];
    let reply = execute(&mut cluster.nodes[leader].client(), "", json!(["CREATE TABLE events (id INTEGER PRIMARY KEY, what TEXT)"]));
    assert_eq!(reply.status, 200, "{}", reply.body);
    for id in 1..=30 {
        write_row(&cluster, &all, id);
    }

    // Read 7 at a time, from a different node each page, until ids 1..=30 are seen.
    let mut seen: Vec<Value> = Vec::new();
    let mut cursor = "0".to_string();
    let mut turn = 0;
    let mut read_until = |cluster: &Cluster, alive: &[usize], last_id: i64, seen: &mut Vec<Value>, cursor: &mut String| {
        let started = std::time::Instant::now();
        while !seen.iter().any(|event| event["key"] == json!([last_id])) {
            assert!(started.elapsed() < Duration::from_secs(60), "row {last_id} never reached the stream; seen {}", seen.len());
            turn += 1;
            let node = &cluster.nodes[alive[turn % alive.len()]];
            let Some(events) = page(node, cursor, 7) else { continue };
            assert!(events.len() <= 7, "a page holds at most limit events");
            for event in events {
                *cursor = event["cursor"].as_str().expect("every event has a cursor").to_string();
                seen.push(event);
            }
            if seen.is_empty() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    read_until(&cluster, &all, 30, &mut seen, &mut cursor);

    // The leader dies; 30 more rows are written through the survivors, and reading goes on
    // from the cursor on them.
    cluster.nodes[leader].kill();
    let alive: Vec<usize> = all.iter().copied().filter(|index| *index != leader).collect();
    for id in 31..=60 {
        write_row(&cluster, &alive, id);
    }
    read_until(&cluster, &alive, 60, &mut seen, &mut cursor);

    let inserted: Vec<i64> = seen.iter().filter(|event| event["op"] == "insert").map(|event| event["key"][0].as_i64().expect("an integer key")).collect();
    assert_eq!(inserted, (1..=60).collect::<Vec<_>>(), "every row once, in the order written");
    assert_eq!(seen[0]["op"], "statement", "the CREATE TABLE comes first: {}", seen[0]);
    let row = seen.iter().find(|event| event["key"] == json!([7])).expect("row 7");
    assert_eq!(row["after"], json!({"id": 7, "what": "row 7"}), "{row}");
    assert_eq!(row["table"], "events");
    assert!(row["time_ms"].as_u64().is_some_and(|ms| ms > 1_600_000_000_000), "{row}");
    let positions: Vec<(u64, u64)> = seen
        .iter()
        .map(|event| {
            let cursor: Vec<u64> = event["cursor"].as_str().unwrap().split('.').map(|part| part.parse().unwrap()).collect();
            (cursor[1], cursor[2])
        })
        .collect();
    assert!(positions.windows(2).all(|pair| pair[0] < pair[1]), "cursors strictly increase: {positions:?}");

    // `tern changes` from the 30th row's cursor prints rows 31..=60, then stops.
    let after_30 = seen.iter().find(|event| event["key"] == json!([30])).expect("row 30")["cursor"].as_str().unwrap().to_string();
    // (A node streams what it knows committed: a follower learns the newest commit with
    // the leader's next message, so wait until both have row 60.)
    for index in &alive {
        eventually(Duration::from_secs(30), "every survivor to stream row 60", || {
            page(&cluster.nodes[*index], &after_30, 100).is_some_and(|events| events.iter().any(|event| event["key"] == json!([60])))
        });
    }
    let nodes: Vec<String> = alive.iter().map(|index| cluster.nodes[*index].http.clone()).collect();
    let output =
        Command::new(env!("CARGO_BIN_EXE_tern")).args(["changes", "--http", &nodes.join(","), "--from", &after_30]).output().expect("tern changes runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let printed: Vec<i64> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).expect("a JSON line"))
        .filter(|event| event["op"] == "insert")
        .map(|event| event["key"][0].as_i64().unwrap())
        .collect();
    assert_eq!(printed, (31..=60).collect::<Vec<_>>());

    // A cursor that is not one, and the physical format, are refused with a reason.
    let reply = cluster.nodes[alive[0]].client().get("/db/changes?from=soon").expect("answers");
    assert_eq!(reply.status, 400, "{}", reply.body);
}

#[test]
fn a_cursor_older_than_the_log_is_gone_with_the_oldest_position() {
    let cluster = Cluster::start("changes-compacted", 1, &["--log-retain", "10"]);
    let mut client = cluster.nodes[0].client();
    assert_eq!(execute(&mut client, "", json!(["CREATE TABLE t (id INTEGER PRIMARY KEY)"])).status, 200);
    for id in 0..200 {
        assert_eq!(execute(&mut client, "", json!([["INSERT INTO t VALUES (?)", id]])).status, 200);
    }
    eventually(Duration::from_secs(30), "the log to be compacted", || client.get("/db/changes?from=0&limit=1").is_ok_and(|reply| reply.status == 410));
    let reply = client.get("/db/changes?from=0&limit=1").expect("answers");
    assert!(reply.body["oldest"].is_string() && reply.body["error"].as_str().unwrap_or("").contains("compacted"), "{}", reply.body);
    let oldest = reply.body["oldest"].as_str().unwrap().to_string();
    let (epoch, index) = oldest.split_once('.').unwrap();
    let resume = format!("{epoch}.{}", index.parse::<u64>().unwrap() - 1);
    let (status, _) = client.request_raw("GET", &format!("/db/changes?from={resume}&limit=5"), None).expect("answers");
    assert_eq!(status, 200, "resuming just before the oldest entry works");
}

/// Multi-leader: a region's stream carries the other regions' writes as it applied them,
/// each named by the region that made it.
#[test]
fn a_regions_stream_names_the_region_each_write_came_from() {
    let cluster = Cluster::start_multi_leader("changes-regions", &["us-east", "eu-west", "antarctica"], &[]);
    let reply = execute(&mut cluster.nodes[0].client(), "?w=regions:all", json!(["CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT)"]));
    assert_eq!(reply.status, 200, "{}", reply.body);
    for (index, region) in [(0, "us-east"), (1, "eu-west"), (2, "antarctica")] {
        let reply = execute(&mut cluster.nodes[index].client(), "", json!([["INSERT INTO notes VALUES (?, 'hello')", region]]));
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    eventually(Duration::from_secs(30), "us-east's stream to hold every region's row, each with its origin", || {
        let Some(events) = page(&cluster.nodes[0], "0", 1000) else { return false };
        ["us-east", "eu-west", "antarctica"]
            .iter()
            .all(|region| events.iter().any(|event| event["op"] == "insert" && event["key"] == json!([region]) && event["region"] == *region))
    });
}
