//! End-to-end for the physical (WAL) log format and replica verification, on real
//! processes: followers end byte-identical to the leader through DDL, a 10,000-row
//! update, VACUUM, a follower killed mid-stream and a follower added empty.

mod support;

use serde_json::json;
use std::process::Command;
use std::time::Duration;
use support::*;

const LONG: Duration = Duration::from_secs(60);

fn sha256(path: &std::path::Path) -> String {
    let output = Command::new("sha256sum").arg(path).output().expect("sha256sum runs");
    String::from_utf8_lossy(&output.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

fn tern_verify(http: &str) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tern")).args(["verify", "--http", http]).output().expect("tern runs");
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr))
}

fn ok(reply: tern_server::client::Reply) {
    assert_eq!(reply.status, 200, "{}", reply.body);
    for result in reply.body["results"].as_array().unwrap() {
        assert!(result["error"].is_null(), "{}", reply.body);
    }
}

#[test]
fn physical_followers_are_byte_identical_through_ddl_bulk_updates_vacuum_kills_and_newcomers() {
    let mut cluster = Cluster::new("physical", 3, &["--log-format", "physical"]);
    cluster.nodes[0].start();
    cluster.nodes[1].start();
    wait_node_ready(&cluster.nodes[0]);
    wait_node_ready(&cluster.nodes[1]);
    let mut leader = cluster.leader().client();
    ok(execute(&mut leader, "", json!(["CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER)", "CREATE INDEX items_name ON items (name)"])));
    ok(execute(
        &mut leader,
        "",
        json!(["WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 10000) INSERT INTO items (name, qty) SELECT 'item ' || x, x FROM n"]),
    ));
    let reply = execute(&mut leader, "", json!(["UPDATE items SET qty = qty + 1"]));
    ok(reply.clone());
    assert_eq!(reply.body["results"][0]["rows_affected"], 10000);

    // n3 joins empty and catches up.
    cluster.nodes[2].start();
    wait_node_ready(&cluster.nodes[2]);

    // n2 is killed in the middle of a stream of writes, then restarted.
    let writer = {
        let http = cluster.leader().http.clone();
        std::thread::spawn(move || {
            let mut client = tern_server::client::HttpClient::new(&http);
            for id in 0..300 {
                let reply = client.post_json("/db/execute", &json!([["INSERT INTO items (name, qty) VALUES (?, ?)", format!("stream {id}"), id]])).unwrap();
                assert_eq!(reply.status, 200, "{}", reply.body);
            }
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    cluster.nodes[1].kill();
    std::thread::sleep(Duration::from_millis(200));
    cluster.nodes[1].start();
    writer.join().unwrap();

    ok(execute(&mut leader, "", json!(["DELETE FROM items WHERE id > 1000"])));
    let pages_before = count(&mut leader, "SELECT page_count FROM pragma_page_count()", "level=weak");
    ok(execute(&mut leader, "", json!(["VACUUM"])));
    let pages_after = count(&mut leader, "SELECT page_count FROM pragma_page_count()", "level=weak");
    assert!(pages_after < pages_before, "VACUUM shrank the leader ({pages_before} -> {pages_after} pages)");
    ok(execute(&mut leader, "?w=all", json!(["ALTER TABLE items ADD COLUMN note TEXT", "UPDATE items SET note = 'done' WHERE id < 10"])));

    let target = applied_index(&mut leader);
    for node in &cluster.nodes[1..] {
        let mut client = node.client();
        eventually(LONG, &format!("{} to catch up", node.id), || applied_index(&mut client) >= target);
    }
    let (agree, report) = tern_verify(&cluster.nodes[2].http);
    assert!(agree, "{report}\n{}", cluster.logs());
    assert!(report.contains("replicas agree (physical format)"), "{report}");

    for node in &mut cluster.nodes {
        node.terminate();
    }
    let hashes: Vec<String> = cluster.nodes.iter().map(|node| sha256(&node.data.join("data.db"))).collect();
    assert!(!hashes[0].is_empty());
    assert_eq!(hashes[0], hashes[1], "n2's data.db differs from the leader's");
    assert_eq!(hashes[0], hashes[2], "n3's data.db differs from the leader's");
}

#[test]
fn a_reader_on_a_physical_follower_keeps_a_consistent_snapshot_across_applies() {
    let cluster = Cluster::start("physical-reader", 3, &["--log-format", "physical"]);
    let mut leader = cluster.leader().client();
    ok(execute(&mut leader, "?w=all", json!(["CREATE TABLE t (v INTEGER)", "INSERT INTO t VALUES (1)"])));
    let reader = rusqlite::Connection::open_with_flags(cluster.nodes[1].data.join("data.db"), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let count_rows = |connection: &rusqlite::Connection| -> i64 { connection.query_row("SELECT count(*) + sum(v) FROM t", [], |row| row.get(0)).unwrap() };
    reader.execute_batch("BEGIN").unwrap();
    assert_eq!(count_rows(&reader), 2);
    ok(execute(&mut leader, "?w=all", json!(["INSERT INTO t VALUES (2)", "UPDATE t SET v = v * 10"])));
    assert_eq!(count_rows(&reader), 2, "the open read transaction still sees its snapshot");
    reader.execute_batch("COMMIT").unwrap();
    assert_eq!(count_rows(&reader), 32);
}

#[test]
fn without_statement_rewriting_verify_finds_the_divergence_the_primer_warns_about() {
    for (rewrite, expect_agreement) in [("off", false), ("on", true)] {
        let cluster = Cluster::start(&format!("rewrite-{rewrite}"), 3, &["--log-format", "statement", "--statement-rewrite", rewrite]);
        let mut leader = cluster.leader().client();
        ok(execute(
            &mut leader,
            "?w=all",
            json!([
                "CREATE TABLE draws (id INTEGER PRIMARY KEY, r INTEGER, at TEXT)",
                "INSERT INTO draws (r, at) VALUES (random(), strftime('%Y-%m-%d %H:%M:%f', 'now'))"
            ]),
        ));
        let (agree, report) = tern_verify(&cluster.nodes[1].http);
        assert_eq!(agree, expect_agreement, "--statement-rewrite {rewrite}: {report}");
        if !expect_agreement {
            assert!(report.contains("DIFFERENCE: table draws"), "{report}");
        }
    }
}

/// A real follower process stopped by a failpoint between committing an entry's pages and
/// logging it (as a `kill -9` there would), then restarted without it: it resumes from the
/// data's own position and ends byte-identical to the leader.
#[test]
fn a_follower_killed_between_its_data_and_log_commits_restarts_consistent() {
    let mut cluster = Cluster::new("physical-failpoint", 3, &["--log-format", "physical"]);
    cluster.nodes[0].start();
    cluster.nodes[1].start();
    wait_node_ready(&cluster.nodes[0]);
    let mut leader = cluster.leader().client();
    ok(execute(&mut leader, "", json!(["CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)"])));
    cluster.nodes[2].start_with_env(&[("TERN_FAILPOINTS", "physical-apply-between-data-and-log")]);
    let status = cluster.nodes[2].wait_exit(LONG);
    assert_eq!(status.code(), Some(75), "stopped at the failpoint\n{}", cluster.nodes[2].log_text());
    for id in 0..50 {
        ok(execute(&mut leader, "", json!([["INSERT INTO items (name) VALUES (?)", format!("while n3 is down {id}")]])));
    }
    cluster.nodes[2].start();
    wait_node_ready(&cluster.nodes[2]);
    ok(execute(&mut leader, "?w=all", json!(["INSERT INTO items (name) VALUES ('after the restart')"])));
    eventually(LONG, "tern verify to find every replica identical", || tern_verify(&cluster.nodes[0].http).0);
}
