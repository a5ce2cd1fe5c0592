//! End-to-end: real `tern server` processes on loopback, spoken to over the HTTP API,
//! killed with SIGKILL and restarted. Ports are picked free; node logs are kept in the
//! scratch directory named in any failure.

mod support;

use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;
use tern_server::client::Reply;

const LONG: Duration = Duration::from_secs(60);

#[test]
fn writes_on_the_leader_and_forwarded_from_followers_are_read_at_every_level() {
    let cluster = Cluster::start("levels", 3, &[]);
    let mut leader = cluster.leader().client();
    let reply = execute(&mut leader, "", table("items"));
    assert_eq!(reply.status, 200, "{}", reply.body);

    // A write sent to a follower is forwarded to the leader transparently.
    let mut follower = cluster.nodes[1].client();
    let reply = execute(&mut follower, "", json!([["INSERT INTO items (v) VALUES (?)", "from n2"]]));
    if reply.status != 200 {
        let statuses: Vec<String> =
            cluster.nodes.iter().map(|node| node.client().get("/status").map(|reply| reply.body.to_string()).unwrap_or_default()).collect();
        panic!("{}\n{}\n{}", reply.body, statuses.join("\n"), cluster.logs());
    }
    assert_eq!(reply.body["results"][0]["rows_affected"], 1);
    let position = reply.body["position"].as_str().expect("writes carry a position").to_string();
    assert!(position.starts_with("1."), "{position}");
    let reply = execute(&mut leader, "", json!([["INSERT INTO items (v) VALUES (?)", "from n1"]]));
    assert_eq!(reply.status, 200, "{}", reply.body);

    // w=all: once acknowledged, every follower has it, so a local read sees it at once.
    let reply = execute(&mut cluster.nodes[2].client(), "?w=all", json!([["INSERT INTO items (v) VALUES (?)", "from n3, w=all"]]));
    assert_eq!(reply.status, 200, "{}", reply.body);
    for node in &cluster.nodes {
        assert_eq!(count(&mut node.client(), "SELECT count(*) FROM items", "level=none"), 3, "level=none on {}", node.id);
    }

    let after = reply.body["position"].as_str().unwrap().to_string();
    for node in &cluster.nodes {
        let mut client = node.client();
        for level in ["level=weak", "level=strong", "level=linearizable", "level=bounded&max_lag_ms=5000", &format!("level=session&after={after}")] {
            assert_eq!(count(&mut client, "SELECT count(*) FROM items", level), 3, "{level} on {}", node.id);
        }
        // rqlite clients that send no level get weak reads; POST with a JSON body works too.
        let reply = client.post_json("/db/query", &json!(["SELECT v FROM items ORDER BY id"])).unwrap();
        assert_eq!(rows(&reply), vec![json!(["from n2"]), json!(["from n1"]), json!(["from n3, w=all"])]);
        assert_eq!(reply.body["results"][0]["columns"], json!(["v"]));
        assert_eq!(reply.body["results"][0]["types"], json!(["text"]));
    }

    // /db/request takes reads and writes together.
    let reply = client_request(&mut follower, json!(["INSERT INTO items (v) VALUES ('mixed')", "SELECT count(*) FROM items"]));
    assert_eq!(reply["results"][1]["values"][0][0], 4, "{reply}");
    let reply = client_request(&mut follower, json!(["SELECT count(*) FROM items"]));
    assert_eq!(reply["results"][0]["values"][0][0], 4, "{reply}");
}

fn client_request(client: &mut tern_server::client::HttpClient, statements: Value) -> Value {
    let reply = client.post_json("/db/request?level=strong", &statements).unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

#[test]
fn session_reads_on_any_follower_see_the_sessions_own_write() {
    let cluster = Cluster::start("session", 3, &["--ack", "async"]);
    execute(&mut cluster.leader().client(), "?w=all", table("carts"));
    let mut writer = cluster.nodes[1].client();
    let mut reader = cluster.nodes[2].client();
    for round in 0..50 {
        // w=1: acknowledged before any follower has it, so only the session level promises the read.
        let reply = execute(&mut writer, "?w=1", json!([["INSERT INTO carts (v) VALUES (?)", format!("item {round}")]]));
        assert_eq!(reply.status, 200, "{}", reply.body);
        let position = reply.body["position"].as_str().unwrap();
        let seen = count(&mut reader, "SELECT count(*) FROM carts", &format!("level=session&after={position}"));
        assert_eq!(seen, round + 1, "session read after {position} missed the session's own write");
    }
    // A position this node will not reach in time is a clear 503, not a stale answer.
    let reply = query(&mut reader, "SELECT count(*) FROM carts", "level=session&after=1.999999&timeout=200ms");
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(reply.body["error"].as_str().unwrap().contains("has not applied position 1.999999"), "{}", reply.body);
}

#[test]
fn non_deterministic_functions_store_identical_values_on_every_node() {
    for format in ["statement", "row"] {
        let cluster = Cluster::start(&format!("nondeterministic-{format}"), 3, &["--log-format", format]);
        let mut leader = cluster.leader().client();
        execute(&mut leader, "", json!(["CREATE TABLE facts (id INTEGER PRIMARY KEY, r INTEGER, b BLOB, t TEXT, c TEXT, u INTEGER)"]));
        let reply = execute(
            &mut leader,
            "?w=all",
            json!([
                "INSERT INTO facts (r, b, t, c, u) VALUES (random(), randomblob(8), datetime('now'), CURRENT_TIMESTAMP, unixepoch('now'))",
                "INSERT INTO facts (r, b, t, c, u) VALUES (random(), randomblob(8), strftime('%Y-%m-%d %H:%M:%f', 'now'), CURRENT_TIME, last_insert_rowid())",
                "UPDATE facts SET t = datetime('now', '+1 day') WHERE id = 2"
            ]),
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert!(reply.body["results"].as_array().unwrap().iter().all(|result| result["error"].is_null()), "{format}: {}", reply.body);
        let contents: Vec<Vec<Value>> =
            cluster.nodes.iter().map(|node| rows(&query(&mut node.client(), "SELECT * FROM facts ORDER BY id", "level=none"))).collect();
        assert_eq!(contents[0].len(), 2);
        assert_eq!(contents[0], contents[1], "{format}: n2 differs from n1");
        assert_eq!(contents[0], contents[2], "{format}: n3 differs from n1");

        // random() evaluated per row, and random() behind a view: no literal can stand for
        // them, so the statement format ships these writes' row images.
        let reply = execute(
            &mut leader,
            "?w=all",
            json!(["UPDATE facts SET r = random()", "CREATE VIEW draw AS SELECT random() AS r", "INSERT INTO facts (r) SELECT r FROM draw"]),
        );
        assert!(reply.body["results"].as_array().unwrap().iter().all(|result| result["error"].is_null()), "{format}: {}", reply.body);
        let contents: Vec<Vec<Value>> =
            cluster.nodes.iter().map(|node| rows(&query(&mut node.client(), "SELECT * FROM facts ORDER BY id", "level=none"))).collect();
        assert_eq!(contents[0].len(), 3);
        assert!(contents.iter().all(|content| *content == contents[0]), "{format}: replicas differ after per-row random()");
    }
}

#[test]
fn bad_input_gets_clear_errors_and_changes_nothing() {
    let cluster = Cluster::start("bad-input", 3, &["--max-body-bytes", "4096"]);
    let mut leader = cluster.leader().client();
    execute(
        &mut leader,
        "?w=all",
        json!(["CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL)", "INSERT INTO accounts (name) VALUES ('ada')"]),
    );
    let mut follower = cluster.nodes[1].client();

    let reply = follower.request("POST", "/db/execute", Some(b"[\"INSERT INTO accounts (name) VALUES ('x')\"")).unwrap();
    assert_eq!(reply.status, 400);
    assert!(reply.body["error"].as_str().unwrap().contains("not valid JSON"), "{}", reply.body);

    let reply = execute(&mut follower, "", json!(["INSERT INTO acounts (name) VALUES ('x')", "INSRT INTO accounts VALUES (1)"]));
    assert_eq!(reply.status, 200);
    assert!(reply.body["results"][0]["error"].as_str().unwrap().contains("no such table: acounts"), "{}", reply.body);
    assert!(reply.body["results"][1]["error"].as_str().unwrap().contains("syntax error"), "{}", reply.body);

    let reply = query(&mut follower, "SELECT 1", "level=eventual");
    assert_eq!(reply.status, 400);
    assert!(reply.body["error"].as_str().unwrap().contains("unknown read level"), "{}", reply.body);

    let reply = execute(&mut follower, "?w=4", json!(["INSERT INTO accounts (name) VALUES ('w4')"]));
    assert_eq!(reply.status, 400, "{}", reply.body);

    let huge = "x".repeat(8192);
    let reply = execute(&mut follower, "", json!([["INSERT INTO accounts (name) VALUES (?)", huge]]));
    assert_eq!(reply.status, 413, "{}", reply.body);

    // A constraint violation inside ?transaction rolls the whole batch back.
    let reply = execute(&mut follower, "?transaction", json!(["INSERT INTO accounts (name) VALUES ('bob')", "INSERT INTO accounts (name) VALUES ('ada')"]));
    assert_eq!(reply.status, 200);
    assert!(reply.body["results"][1]["error"].as_str().unwrap().contains("UNIQUE"), "{}", reply.body);
    // Without it, only the failing statement is rolled back.
    let reply = execute(&mut follower, "?w=all", json!(["INSERT INTO accounts (name) VALUES ('cy')", "INSERT INTO accounts (name) VALUES ('ada')"]));
    assert!(reply.body["results"][1]["error"].is_string(), "{}", reply.body);

    let reply = query(&mut follower, "INSERT INTO accounts (name) VALUES ('sneaky')", "level=none");
    assert!(reply.body["results"][0]["error"].as_str().unwrap_or_default().contains("attempt to change"), "{}", reply.body);

    for node in &cluster.nodes {
        let names = rows(&query(&mut node.client(), "SELECT name FROM accounts ORDER BY id", "level=none"));
        assert_eq!(names, vec![json!(["ada"]), json!(["cy"])], "on {}", node.id);
    }
}

#[test]
fn text_in_any_script_and_hostile_statements_leave_every_replica_working_and_identical() {
    let cluster = Cluster::start("hostile", 3, &["--query-timeout-ms", "300"]);
    let mut leader = cluster.leader().client();
    let mut follower = cluster.nodes[1].client();
    let reply = execute(&mut leader, "?w=all", json!(["CREATE TABLE names (id INTEGER PRIMARY KEY, name TEXT)"]));
    assert_eq!(reply.status, 200, "{}", reply.body);
    // Non-ASCII literals once panicked the leader's storage thread; every write after
    // that got 503 until a restart.
    let texts = ["Andrés", "日本語のテキスト", "emoji 🦀", "_ternés"];
    let mut last_logged = Value::Null;
    for text in texts {
        let reply = execute(&mut follower, "?w=all", json!([format!("INSERT INTO names (name) VALUES ('{text}')")]));
        assert_eq!(reply.status, 200, "{text}: {}", reply.body);
        assert!(reply.body["results"][0]["error"].is_null(), "{text}: {}", reply.body);
        last_logged = reply.body["position"].clone();
    }
    // Escapes from the replicated transaction: refused per statement, nothing written.
    for (sql, mention) in [
        ("UPDATE sqlite_dbpage SET data = zeroblob(4096) WHERE pgno = 1", "sqlite_dbpage"),
        ("VACUUM INTO '/tmp/tern-e2e-escape.db'", "VACUUM INTO"),
        ("ATTACH '/tmp/tern-e2e-attach.db' AS other", "ATTACH"),
        ("PRAGMA writable_schema = 1", "writable_schema"),
        ("CREATE TEMP TABLE scratch (x)", "temporary"),
        ("DELETE FROM _tern_log", "_tern_"),
        ("SELECT load_extension('/tmp/x.so')", "load_extension"),
    ] {
        let reply = execute(&mut follower, "", json!([sql]));
        assert_eq!(reply.status, 200, "{sql}: {}", reply.body);
        let error = reply.body["results"][0]["error"].as_str().unwrap_or_default().to_string();
        assert!(error.contains(mention), "{sql}: {}", reply.body);
        // Nothing logged: the position is that of the state it saw, the last insert's.
        assert_eq!(reply.body["position"], last_logged, "{sql} logged something: {}", reply.body);
    }
    assert!(!std::path::Path::new("/tmp/tern-e2e-escape.db").exists());
    let reply = execute(&mut follower, "", json!(["INSERT INTO names (name) VALUES ('x')", "VACUUM"]));
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(reply.body["error"].as_str().unwrap_or_default().contains("alone"), "{}", reply.body);
    // A runaway query is stopped at --query-timeout-ms; the node answers the next one.
    let runaway = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";
    let reply = query(&mut follower, runaway, "level=none");
    assert!(reply.body["results"][0]["error"].as_str().unwrap_or_default().contains("--query-timeout-ms"), "{}", reply.body);
    let reply = execute(&mut leader, "?w=all", json!(["INSERT INTO names (name) VALUES ('still writing')"]));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let expected: Vec<Value> = texts.iter().chain(&["still writing"]).map(|text| json!([text])).collect();
    for node in &cluster.nodes {
        assert_eq!(rows(&query(&mut node.client(), "SELECT name FROM names ORDER BY id", "level=none")), expected, "on {}", node.id);
    }
}

#[test]
fn a_node_that_has_not_reached_its_leader_is_not_ready() {
    let mut cluster = Cluster::new("not-ready", 3, &[]);
    cluster.nodes[1].start();
    let mut follower = cluster.nodes[1].client();
    eventually(LONG, "n2 to answer HTTP", || follower.get("/readyz").is_ok());
    assert_eq!(follower.get("/readyz").unwrap().status, 503);
    let reply = query(&mut follower, "SELECT 1", "level=weak");
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(reply.body["error"].as_str().unwrap().contains("not ready"), "{}", reply.body);
    // level=none serves what this node holds, as promised; freshness= bounds it.
    assert_eq!(count(&mut follower, "SELECT 1", "level=none"), 1);
    let reply = query(&mut follower, "SELECT 1", "level=none&freshness=1s");
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(reply.body["error"].as_str().unwrap().contains("staler"), "{}", reply.body);
    cluster.nodes[0].start();
    wait_node_ready(&cluster.nodes[1]);
    assert_eq!(count(&mut follower, "SELECT 41 + 1", "level=none"), 42);
}

#[test]
fn status_and_nodes_report_roles_positions_and_followers() {
    let cluster = Cluster::start("status", 3, &["--ack", "sync"]);
    let mut leader = cluster.leader().client();
    execute(&mut leader, "?w=all", table("t"));
    eventually(LONG, "both followers in sync", || {
        let status = leader.get("/status").unwrap().body;
        status["replication"]["followers"].as_array().unwrap().iter().all(|follower| follower["in_sync"] == true)
    });
    let status = leader.get("/status").unwrap().body;
    assert_eq!(status["node"]["role"], "leader");
    assert_eq!(status["node"]["epoch"], 1);
    assert_eq!(status["node"]["applied"], "1.1");
    assert_eq!(status["replication"]["log_format"], "row");
    assert_eq!(status["replication"]["ack"], "sync");
    let followers = status["replication"]["followers"].as_array().unwrap();
    assert_eq!(followers.len(), 2);
    assert_eq!(followers[0]["region"], "eu-west");
    assert_eq!(followers[0]["position"], "1.1");

    let follower_status = cluster.nodes[2].client().get("/status").unwrap().body;
    assert_eq!(follower_status["node"]["role"], "follower");
    assert_eq!(follower_status["node"]["leader"], "n1");
    assert_eq!(follower_status["node"]["applied"], "1.1");

    let nodes = cluster.nodes[2].client().get("/nodes").unwrap().body;
    assert_eq!(nodes["n1"]["leader"], true);
    assert_eq!(nodes["n1"]["api_addr"], format!("http://{}", cluster.nodes[0].http));
    assert_eq!(nodes["n2"]["leader"], false);
}

#[test]
fn a_restarted_node_reports_every_live_peer_in_nodes() {
    let mut cluster = Cluster::start("nodes-restart", 3, &[]);
    execute(&mut cluster.leader().client(), "?w=all", table("t"));
    // The old leader restarts while the other two follow a new leader: neither follower
    // has anything to send it, yet it must know they are up and where to reach them.
    cluster.nodes[0].kill();
    eventually(LONG, "a new leader among n2 and n3", || {
        cluster.nodes[1..].iter().any(|node| node.client().get("/status").is_ok_and(|reply| reply.body["node"]["role"] == "leader"))
    });
    cluster.nodes[0].start();
    wait_node_ready(&cluster.nodes[0]);
    let mut last = Value::Null;
    eventually(LONG, "the restarted n1 to report n2 and n3 reachable, with addresses and regions", || {
        last = cluster.nodes[0].client().get("/nodes").map(|reply| reply.body).unwrap_or_default();
        (1..3).all(|index| {
            let peer = &last[format!("n{}", index + 1)];
            peer["reachable"] == true
                && peer["api_addr"] == format!("http://{}", cluster.nodes[index].http)
                && peer["region"].as_str().is_some_and(|region| !region.is_empty())
        })
    });
    let leaders = (1..=3).filter(|number| last[format!("n{number}")]["leader"] == true).count();
    assert_eq!(leaders, 1, "{last}");
}

/// Writes rows `first..first+count` one request at a time, recording which were
/// acknowledged; stops early when `stop` is set.
fn write_rows(node_http: &str, first: u64, count: u64, acknowledged: &Mutex<Vec<u64>>, stop: &AtomicBool, progress: &AtomicU64) {
    let mut client = tern_server::client::HttpClient::new(node_http).with_timeout(Duration::from_secs(15));
    for id in first..first + count {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let outcome = client.post_json("/db/execute", &json!([["INSERT INTO ledger (id, v) VALUES (?, ?)", id, format!("row {id}")]]));
        if let Ok(reply) = outcome {
            if reply.status == 200 && reply.body["results"][0]["error"].is_null() {
                acknowledged.lock().unwrap().push(id);
            } else {
                eprintln!("write {id} not acknowledged: {} {}", reply.status, reply.body);
            }
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
        progress.fetch_add(1, Ordering::Relaxed);
    }
}

fn ledger_rows(node: &ServerNode) -> Vec<Value> {
    rows(&query(&mut node.client(), "SELECT id, v FROM ledger ORDER BY id", "level=none"))
}

#[test]
fn a_follower_killed_during_1000_writes_catches_up_to_identical_content() {
    for format in ["row", "statement", "physical"] {
        a_follower_killed_during_1000_writes_catches_up_to_identical_content_in(format);
    }
}

fn a_follower_killed_during_1000_writes_catches_up_to_identical_content_in(format: &str) {
    let mut cluster = Cluster::start(&format!("follower-kill-{format}"), 3, &["--log-format", format]);
    execute(&mut cluster.leader().client(), "?w=all", json!(["CREATE TABLE ledger (id INTEGER PRIMARY KEY, v TEXT)"]));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicU64::new(0));
    let writer = {
        let (http, acknowledged, stop, progress) = (cluster.leader().http.clone(), acknowledged.clone(), stop.clone(), progress.clone());
        std::thread::spawn(move || write_rows(&http, 1, 1000, &acknowledged, &stop, &progress))
    };
    eventually(LONG, "200 writes", || progress.load(Ordering::Relaxed) >= 200);
    cluster.nodes[2].kill();
    eventually(LONG, "600 writes", || progress.load(Ordering::Relaxed) >= 600);
    cluster.nodes[2].start();
    writer.join().unwrap();
    assert_eq!(acknowledged.lock().unwrap().len(), 1000, "semi-sync writes go on with one follower down");

    let target = applied_index(&mut cluster.leader().client());
    // Both followers: once n3 is back, a write may be acknowledged by n3 alone, and n2
    // receives it a moment later.
    for node in &cluster.nodes[1..] {
        let mut client = node.client();
        eventually(LONG, &format!("{} to catch up to {target}", node.id), || applied_index(&mut client) == target);
    }
    let expected = ledger_rows(&cluster.nodes[0]);
    assert_eq!(expected.len(), 1000);
    for node in &cluster.nodes[1..] {
        assert_eq!(ledger_rows(node), expected, "{} differs from the leader", node.id);
    }
}

#[test]
fn a_leader_killed_and_restarted_keeps_every_acknowledged_write() {
    for format in ["row", "statement", "physical"] {
        a_leader_killed_and_restarted_keeps_every_acknowledged_write_in(format);
    }
}

fn a_leader_killed_and_restarted_keeps_every_acknowledged_write_in(format: &str) {
    let mut cluster = Cluster::start(&format!("leader-kill-{format}"), 3, &["--log-format", format]);
    execute(&mut cluster.leader().client(), "?w=all", json!(["CREATE TABLE ledger (id INTEGER PRIMARY KEY, v TEXT)"]));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..4u64)
        .map(|writer| {
            let (http, acknowledged, stop, progress) = (cluster.leader().http.clone(), acknowledged.clone(), stop.clone(), progress.clone());
            std::thread::spawn(move || write_rows(&http, writer * 100_000 + 1, 100_000, &acknowledged, &stop, &progress))
        })
        .collect();
    eventually(LONG, "300 writes", || progress.load(Ordering::Relaxed) >= 300);
    cluster.nodes[0].kill();
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.join().unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= 300, "{} acknowledged", acknowledged.len());

    cluster.nodes[0].start();
    wait_node_ready(&cluster.nodes[0]);
    // With automatic failover another node may lead by now and n1 catches up from it
    // (rolling back what it wrote but never replicated): every node must end up with
    // every acknowledged write.
    let missing_on = |node: &ServerNode| -> Vec<u64> {
        let present: std::collections::HashSet<i64> = ledger_rows(node).iter().map(|row| row[0].as_i64().unwrap()).collect();
        acknowledged.iter().copied().filter(|id| !present.contains(&(*id as i64))).collect()
    };
    let settled = std::time::Instant::now() + LONG;
    for node in &cluster.nodes {
        while !missing_on(node).is_empty() && std::time::Instant::now() < settled {
            std::thread::sleep(Duration::from_millis(50));
        }
        let missing = missing_on(node);
        assert!(missing.is_empty(), "acknowledged writes missing on {} after the leader's restart: {missing:?}\n{}", node.id, cluster.logs());
    }

    // Writes resume, and the followers converge on the restarted leader's content.
    let reply = execute(&mut cluster.nodes[1].client(), "?w=all", json!([["INSERT INTO ledger (id, v) VALUES (?, ?)", 999_999_999, "after restart"]]));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let expected = ledger_rows(&cluster.nodes[1]);
    for node in &cluster.nodes {
        let rows = ledger_rows(node);
        let only_here: Vec<&Value> = rows.iter().filter(|row| !expected.contains(row)).collect();
        let only_there: Vec<&Value> = expected.iter().filter(|row| !rows.contains(row)).collect();
        assert!(
            only_here.is_empty() && only_there.is_empty(),
            "{} differs from n2: only on {0}: {only_here:?}; only on n2: {only_there:?}\n{}",
            node.id,
            cluster.logs()
        );
    }
}

#[test]
fn a_new_empty_node_catches_up_from_a_snapshot_when_the_log_was_compacted() {
    for format in ["row", "statement", "physical"] {
        a_new_empty_node_catches_up_from_a_snapshot_when_the_log_was_compacted_in(format);
    }
}

/// n1 and n2 of a 3-node cluster keeping 20 log entries, 300 rows written to `ledger`, and
/// n1 restarted: its in-memory cache of recent entries is empty, so what n3 (not started)
/// needs can only come from the durable log, which no longer holds entry 1. n3 must be
/// sent a snapshot.
fn cluster_whose_log_was_compacted_past_n3(name: &str, format: &str) -> Cluster {
    let mut cluster = Cluster::new(name, 3, &["--log-retain", "20", "--log-format", format]);
    cluster.nodes[0].start();
    cluster.nodes[1].start();
    wait_node_ready(&cluster.nodes[0]);
    wait_node_ready(&cluster.nodes[1]);
    let mut leader = cluster.leader().client();
    execute(&mut leader, "", json!(["CREATE TABLE ledger (id INTEGER PRIMARY KEY, v TEXT)"]));
    for id in 1..=300 {
        let reply = execute(&mut leader, "", json!([["INSERT INTO ledger (id, v) VALUES (?, ?)", id, format!("row {id}")]]));
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    cluster.nodes[0].kill();
    cluster.nodes[0].start();
    wait_node_ready(&cluster.nodes[0]);
    cluster
}

fn a_new_empty_node_catches_up_from_a_snapshot_when_the_log_was_compacted_in(format: &str) {
    let mut cluster = cluster_whose_log_was_compacted_past_n3(&format!("snapshot-{format}"), format);
    let mut leader = cluster.leader().client();
    // n3 starts empty, so it must get a snapshot first.
    cluster.nodes[2].start();
    wait_node_ready(&cluster.nodes[2]);
    let target = applied_index(&mut leader);
    let mut newcomer = cluster.nodes[2].client();
    eventually(LONG, "n3 to catch up from a snapshot", || applied_index(&mut newcomer) >= target);
    // And it keeps following after the snapshot.
    let reply = execute(&mut leader, "?w=all", json!([["INSERT INTO ledger (id, v) VALUES (?, ?)", 301, "after snapshot"]]));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(ledger_rows(&cluster.nodes[2]), ledger_rows(&cluster.nodes[0]));
    assert!(cluster.nodes[2].log_text().contains("snapshot installed"), "n3 caught up without a snapshot?\n{}", cluster.logs());
}

#[test]
fn several_statements_in_one_string_and_last_insert_rowid_across_requests_replicate_identically() {
    for format in ["statement", "row", "physical"] {
        let cluster = Cluster::start(&format!("multi-{format}"), 3, &["--log-format", format]);
        let mut leader = cluster.leader().client();
        let reply =
            execute(&mut leader, "?w=all", json!(["CREATE TABLE a (x); CREATE TABLE b (y); INSERT INTO a VALUES ('one'); INSERT INTO a VALUES ('two')"]));
        assert_eq!(reply.status, 200, "{format}: {}", reply.body);
        assert!(reply.body["results"][0]["error"].is_null(), "{format}: {}", reply.body);
        assert_eq!(reply.body["results"][0]["last_insert_id"], 2, "{format}: {}", reply.body);
        // A later request sees the client's last row id, not tern's log row.
        let reply = execute(&mut leader, "?w=all", json!(["INSERT INTO b VALUES (last_insert_rowid())"]));
        assert_eq!(reply.status, 200, "{format}: {}", reply.body);
        let expected = vec![json!([1, "one"]), json!([2, "two"])];
        for node in &cluster.nodes {
            assert_eq!(rows(&query(&mut node.client(), "SELECT rowid, x FROM a ORDER BY rowid", "level=none")), expected, "{format} on {}", node.id);
            assert_eq!(rows(&query(&mut node.client(), "SELECT y FROM b", "level=none")), vec![json!([2])], "{format} on {}", node.id);
        }
    }
}

/// A node stopped (as by `kill -9`) once a snapshot it needed is received and fsynced but
/// not yet installed restarts on its old database, is sent a new snapshot, and ends
/// identical to the leader.
#[test]
fn a_node_killed_between_receiving_and_installing_a_snapshot_catches_up_after_restart() {
    let mut cluster = cluster_whose_log_was_compacted_past_n3("snapshot-crash", "row");
    let mut leader = cluster.leader().client();
    cluster.nodes[2].start_with_env(&[("TERN_FAILPOINTS", "snapshot-received-before-install")]);
    let status = cluster.nodes[2].wait_exit(LONG);
    assert_eq!(status.code(), Some(75), "stopped at the failpoint\n{}", cluster.nodes[2].log_text());
    cluster.nodes[2].start();
    wait_node_ready(&cluster.nodes[2]);
    let reply = execute(&mut leader, "?w=all", json!([["INSERT INTO ledger (id, v) VALUES (?, ?)", 301, "after the restart"]]));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(ledger_rows(&cluster.nodes[2]), ledger_rows(&cluster.nodes[0]));
}

/// Issue 11's statements through the HTTP API, in every format: VACUUM renumbering rowids,
/// a table named `changes` and a CTE named `random`, `changes()` in a later request,
/// SQLite's random rowids once the largest is taken, and TEMP tables (refused). Every
/// replica ends with the same rows and rowids, and `tern verify` agrees.
#[test]
fn statements_that_once_split_replicas_replicate_identically_in_every_format() {
    for format in ["statement", "row", "physical"] {
        let cluster = Cluster::start(&format!("fidelity-{format}"), 3, &["--log-format", format]);
        let mut leader = cluster.leader().client();
        let ok = |reply: Reply| {
            assert_eq!(reply.status, 200, "{format}: {}", reply.body);
            assert!(reply.body["results"].as_array().unwrap().iter().all(|result| result["error"].is_null()), "{format}: {}", reply.body);
        };
        ok(execute(&mut leader, "", json!(["CREATE TABLE vac (x)", "INSERT INTO vac VALUES (1), (2), (3), (4)", "DELETE FROM vac WHERE x IN (1, 3)"])));
        ok(execute(&mut leader, "", json!(["VACUUM"])));
        ok(execute(&mut leader, "", json!(["UPDATE vac SET x = x * 10 WHERE rowid = 2"])));
        ok(execute(&mut leader, "", json!(["CREATE TABLE changes (x)", "WITH random(x) AS (SELECT 2) INSERT INTO changes SELECT x FROM random"])));
        ok(execute(&mut leader, "", json!(["INSERT INTO changes VALUES (3)", "UPDATE changes SET x = x + 1"])));
        ok(execute(&mut leader, "", json!(["INSERT INTO changes VALUES (changes())"])));
        ok(execute(&mut leader, "", json!(["CREATE TABLE full_up (v)", "INSERT INTO full_up (rowid, v) VALUES (9223372036854775807, 'top')"])));
        ok(execute(&mut leader, "?w=all", json!(["INSERT INTO full_up (v) VALUES ('a'), ('b'), ('c')"])));
        let temp = execute(&mut leader, "", json!(["CREATE TEMP TABLE scratch (x)"]));
        assert!(temp.body["results"][0]["error"].as_str().is_some_and(|error| error.contains("temporary")), "{format}: {}", temp.body);

        for node in &cluster.nodes {
            let mut client = node.client();
            eventually(Duration::from_secs(20), "the node applies every write", || count(&mut client, "SELECT count(*) FROM full_up", "level=none") == 4);
            let vac = rows(&query(&mut client, "SELECT rowid, x FROM vac ORDER BY rowid", "level=none"));
            assert_eq!(vac, vec![json!([1, 2]), json!([2, 40])], "{format} on {}: VACUUM renumbered the same way", node.id);
            let changes = rows(&query(&mut client, "SELECT x FROM changes ORDER BY rowid", "level=none"));
            assert_eq!(changes, vec![json!([3]), json!([4]), json!([2])], "{format} on {}: changes() saw the client's UPDATE of 2 rows", node.id);
        }
        let full: Vec<Vec<Value>> =
            cluster.nodes.iter().map(|node| rows(&query(&mut node.client(), "SELECT rowid, v FROM full_up ORDER BY rowid", "level=none"))).collect();
        assert!(full.iter().all(|rows| *rows == full[0]), "{format}: SQLite's random rowids differ between replicas: {full:?}");
        let verdict = leader.get("/db/verify").expect("leader answers").body;
        assert_eq!(verdict["agree"], json!(true), "{format}: {verdict}");
    }
}

/// A write that changes nothing (its row already holds what it writes) is acknowledged
/// as any write is: once the state it saw is on as many nodes as it asked for. It used to
/// be answered at once from the leader alone, so a rewrite of a value no follower held
/// yet was acknowledged though a leader crash could still lose that value.
#[test]
fn a_write_that_changes_nothing_waits_for_the_copies_of_what_it_saw() {
    let cluster = Cluster::start("unchanged-write", 3, &["--write-timeout-ms", "800"]);
    let leader_index = cluster.nodes.iter().position(|node| node.id == cluster.leader().id).expect("a leader");
    let mut leader = cluster.nodes[leader_index].client();
    let reply = execute(&mut leader, "", json!(["CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT)"]));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let put = |client: &mut tern_server::client::HttpClient, query: &str, value: &str| {
        execute(client, query, json!([["INSERT OR REPLACE INTO kv VALUES (1, ?)", value]]))
    };

    // Every node up: the rewrite is acknowledged with the position of the write whose
    // state it saw, so a session read after it sees that state anywhere.
    let first = put(&mut leader, "?w=all", "a");
    assert_eq!(first.status, 200, "{}", first.body);
    let again = put(&mut leader, "?w=all", "a");
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["position"], first.body["position"], "the rewrite carries the position of the state it saw: {}", again.body);

    // One follower paused: a w=all write of "b" cannot be acknowledged, and neither can a
    // rewrite of "b", which changes nothing on the leader but is on no follower's disk.
    let paused = (leader_index + 1) % 3;
    cluster.nodes[paused].signal("STOP");
    let changed = put(&mut leader, "?w=all", "b");
    assert_ne!(changed.status, 200, "w=all with a follower paused: {}", changed.body);
    let unchanged = put(&mut leader, "?w=all", "b");
    assert_ne!(unchanged.status, 200, "a rewrite of a value not on every node was acknowledged for w=all: {}", unchanged.body);
    // What the leader and the live follower hold is enough for a majority.
    let majority = put(&mut leader, "", "b");
    assert_eq!(majority.status, 200, "{}", majority.body);
    assert!(majority.body["position"].is_string(), "{}", majority.body);
    cluster.nodes[paused].signal("CONT");
    eventually(LONG, "the rewrite to be acknowledged by every node once the follower is back", || put(&mut leader, "?w=all", "b").status == 200);
}

/// After answering a read a node polls for the next request for `--idle-poll-us` (here
/// the default, 100 us), then sleeps: one that served a burst of reads uses next to no
/// CPU once they stop. A poller that never stopped would use a whole core.
#[test]
fn a_node_stops_polling_for_requests_once_reads_stop() {
    let cluster = Cluster::start("idle-poll", 1, &[]);
    let node = &cluster.nodes[0];
    let mut client = node.client();
    let reply = execute(&mut client, "", json!(["CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT)", "INSERT INTO kv VALUES (1, 'one')"]));
    assert_eq!(reply.status, 200, "{}", reply.body);
    for _ in 0..500 {
        assert_eq!(rows(&query(&mut client, "SELECT v FROM kv WHERE k = 1", "level=none")), vec![json!(["one"])]);
    }
    std::thread::sleep(Duration::from_millis(500));
    let before = node.cpu_ticks().expect("the node's CPU time is readable");
    std::thread::sleep(Duration::from_secs(2));
    let used = node.cpu_ticks().expect("the node's CPU time is readable") - before;
    // Idle, a node uses about 2 ticks in 2 s (its timers); polling without end, 200.
    assert!(used < 40, "an idle node used {used} ticks of CPU in 2 s after serving reads");
}

/// One bulk insert of 400,000 rows makes a log entry of about 108 MB, which takes a few
/// hundred milliseconds to cross even loopback and seconds to apply. The leader must
/// keep its leadership through it and the write must be answered: raft's heartbeats
/// queued behind the entry made the followers campaign, the leader resent the entry
/// while its followers were still applying it, and it heard nothing from them
/// meanwhile, so the client got "outcome unknown" and a new leader.
#[test]
fn a_bulk_insert_of_100_mb_keeps_its_leader_and_is_answered() {
    let cluster = Cluster::start("bulk-insert", 3, &[]);
    let leader = cluster.leader();
    let before = leader.client().get("/status").expect("status").body;
    let epoch = before["node"]["epoch"].as_u64().expect("an epoch");
    let mut client = leader.client().with_timeout(LONG);
    let reply = execute(&mut client, "", json!(["CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT)"]));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let bulk = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 400000) \
                INSERT INTO kv SELECT x, substr(hex(zeroblob(128)), 1, 256) FROM c";
    let reply = execute(&mut client, "?w=all", json!([bulk]));
    assert_eq!(reply.status, 200, "{}\n{}", reply.body, cluster.logs());
    assert!(reply.body["position"].is_string(), "{}", reply.body);
    for node in &cluster.nodes {
        let status = node.client().get("/status").expect("status").body;
        assert_eq!(status["node"]["epoch"].as_u64(), Some(epoch), "{} is in another epoch: an election ran during the insert\n{}", node.id, cluster.logs());
        assert_eq!(count(&mut node.client(), "SELECT count(*) FROM kv", "level=none"), 400_000, "{}", node.id);
    }
}
