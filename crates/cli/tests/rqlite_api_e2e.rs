//! rqlite's query-string options and endpoint variants, as rqlite renders them, and its
//! backup and load endpoints.

mod support;

use serde_json::json;
use std::time::Duration;
use support::*;

#[test]
fn rqlite_options_render_results_as_rqlite_does() {
    let cluster = Cluster::start("rqlite-api", 3, &[]);
    let mut client = cluster.leader().client();
    let reply = execute(&mut client, "", json!(["CREATE TABLE files (id INTEGER PRIMARY KEY, name TEXT, data BLOB)"]));
    assert_eq!(reply.status, 200, "{}", reply.body);
    // A BLOB parameter as an array of byte values; an integer beyond 64 bits refused.
    let reply = execute(&mut client, "", json!([["INSERT INTO files VALUES (?, ?, ?)", 1, "Andrés", [0, 255, 16]]]));
    assert_eq!(reply.body["results"][0]["rows_affected"], 1, "{}", reply.body);
    let reply =
        client.post_json("/db/execute", &serde_json::from_str(r#"[["INSERT INTO files VALUES (?, 'big', NULL)", 18446744073709551615]]"#).unwrap()).unwrap();
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(reply.body["error"].as_str().unwrap_or("").contains("64-bit"), "{}", reply.body);

    let sql = "q=SELECT%20id,%20name,%20data%20FROM%20files";
    let plain = client.get(&format!("/db/query?{sql}")).unwrap().body;
    assert_eq!(plain["results"][0]["values"], json!([[1, "Andrés", "AP8Q"]]));
    let associative = client.get(&format!("/db/query?{sql}&associative&blob_array")).unwrap().body;
    assert_eq!(associative["results"][0]["rows"], json!([{"id": 1, "name": "Andrés", "data": [0, 255, 16]}]));
    assert_eq!(associative["results"][0]["types"]["name"], "text");
    let pretty = client.get(&format!("/db/query?{sql}&pretty&timings")).unwrap();
    assert!(pretty.body["time"].is_number(), "{}", pretty.body);

    // Go durations and rqlite's read levels.
    for options in ["level=none&freshness=1m30s", "level=none&freshness=500ms&freshness_strict", "level=auto", "level=weak&timeout=1m"] {
        let reply = client.get(&format!("/db/query?{sql}&{options}")).unwrap();
        assert_eq!(reply.status, 200, "{options}: {}", reply.body);
    }
    let reply = client.get(&format!("/db/query?{sql}&freshness=1m30")).unwrap();
    assert_eq!(reply.status, 400, "a unit is missing: {}", reply.body);

    // /db/request at level=none; /readyz?noleader; /nodes?ver=2.
    let reply = client.post_json("/db/request?level=none", &json!(["SELECT count(*) FROM files"])).unwrap();
    assert_eq!(reply.body["results"][0]["values"], json!([[1]]), "{}", reply.body);
    assert_eq!(client.get("/readyz?noleader").unwrap().status, 200);
    let nodes = client.get("/nodes?ver=2").unwrap().body;
    assert_eq!(nodes["nodes"].as_array().map(Vec::len), Some(3), "{nodes}");
}

/// `/db/backup` (a SQLite file, an SQL dump, gzipped) and `/db/load` (either, gzipped or
/// not): a load is one replicated all-or-nothing write, reaching every node; bad bodies
/// are refused with nothing changed.
#[test]
fn backups_load_back_onto_every_node_and_bad_loads_change_nothing() {
    use std::io::Read;
    let cluster = Cluster::start("rqlite-backup", 3, &[]);
    let mut client = cluster.leader().client();
    let reply = execute(
        &mut client,
        "",
        json!([
            "CREATE TABLE notes (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT, weight REAL, raw BLOB)",
            ["INSERT INTO notes(body, weight, raw) VALUES (?, ?, ?)", "it's Andrés 日本", 0.1, [0, 1, 255]],
            "CREATE VIEW heavy AS SELECT * FROM notes WHERE weight > 0"
        ]),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let (status, file) = client.request_raw("GET", "/db/backup", None).expect("backup");
    assert_eq!(status, 200);
    assert!(file.starts_with(b"SQLite format 3\0"), "a binary backup is a SQLite file");
    let (status, gzipped) = client.request_raw("GET", "/db/backup?compress", None).expect("backup");
    assert_eq!(status, 200);
    let mut unzipped = Vec::new();
    flate2::read::GzDecoder::new(&gzipped[..]).read_to_end(&mut unzipped).expect("compress is gzip");
    assert!(unzipped.starts_with(b"SQLite format 3\0"));
    let (status, dump) = client.request_raw("GET", "/db/backup?fmt=sql", None).expect("dump");
    assert_eq!(status, 200);
    let dump = String::from_utf8(dump.to_vec()).expect("a dump is text");
    assert!(dump.contains("INSERT INTO \"notes\" VALUES(1,'it''s Andrés 日本',0.1,X'0001FF');"), "{dump}");
    assert!(!dump.contains("_tern_"), "{dump}");
    let reply = client.get("/db/query?q=SELECT%20name%20FROM%20sqlite_master%20ORDER%20BY%20name").unwrap();
    assert_eq!(reply.body["results"][0]["values"], json!([["heavy"], ["notes"], ["sqlite_sequence"]]), "{}", reply.body);

    // Change things, then load the file back (gzipped): every node ends with what it held.
    let reply = execute(&mut client, "", json!(["DELETE FROM notes", "CREATE TABLE stale (x)"]));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = client.request("POST", "/db/load", Some(&gzipped)).expect("load");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body["results"][0]["error"].is_null(), "{}", reply.body);
    for node in &cluster.nodes {
        let mut client = node.client();
        eventually(Duration::from_secs(30), &format!("{} holds the loaded backup", node.id), || {
            let (status, there) = client.request_raw("GET", "/db/backup?fmt=sql", None).expect("dump");
            status == 200 && there == dump.as_bytes()
        });
    }

    // A text dump that fails part-way changes nothing; one that works adds its rows.
    let failing = "BEGIN TRANSACTION;\nINSERT INTO notes(body) VALUES ('half');\nINSERT INTO missing VALUES (1);\nCOMMIT;";
    let reply = client.request("POST", "/db/load", Some(failing.as_bytes())).expect("load");
    assert!(reply.body["results"][0]["error"].as_str().unwrap_or("").contains("missing"), "{}", reply.body);
    assert_eq!(count(&mut client, "SELECT count(*) FROM notes WHERE body = 'half'", ""), 0, "all or nothing");
    let reply = client.request("POST", "/db/load", Some(b"INSERT INTO notes(body) VALUES ('whole');")).expect("load");
    assert_eq!(reply.body["results"][0]["rows_affected"], 1, "{}", reply.body);

    // Bodies that are neither SQL nor a database are refused, and nothing changes.
    let before = client.request_raw("GET", "/db/backup?fmt=sql", None).expect("dump").1;
    for body in [&b"SQLite format 3\0 but not really a database"[..], &[0x1f, 0x8b, 0, 1, 2][..], &[0xff, 0xfe, 0x00][..], b"  "] {
        let reply = client.request("POST", "/db/load", Some(body)).expect("load");
        assert_eq!(reply.status, 400, "{body:?}: {}", reply.body);
        assert!(reply.body["error"].as_str().is_some_and(|message| !message.is_empty()), "{}", reply.body);
    }
    assert_eq!(client.request_raw("GET", "/db/backup?fmt=sql", None).expect("dump").1, before, "nothing changed");
    assert_eq!(client.request_raw("GET", "/db/backup?fmt=xml", None).expect("backup").0, 400);

    // rqlite's shell reads these.
    let status = client.get("/status").unwrap().body;
    assert_eq!(status["store"]["sqlite3"]["fk_constraints"], "disabled", "{status}");
    assert!(status["build"]["version"].as_str().is_some_and(|version| version.starts_with("tern-")), "{status}");
    let reply = client.request("DELETE", "/remove", Some(b"{\"id\": \"n9\"}")).expect("remove");
    assert!(reply.status >= 400 && reply.body["error"].is_string(), "an unknown node: {}", reply.body);
    assert_eq!(client.request("DELETE", "/remove", Some(b"[]")).expect("remove").status, 400);
}

/// `redirect`, `queue` (with and without `wait`), a write's own `timeout`, and `timings`
/// per result.
#[test]
fn redirects_queued_writes_write_timeouts_and_timings() {
    let cluster = Cluster::start("rqlite-queue", 3, &[]);
    let leader = cluster.leader();
    let follower = cluster.nodes.iter().find(|node| node.id != leader.id).expect("a follower");
    let mut client = follower.client();
    let reply = execute(&mut client, "", json!(["CREATE TABLE q (id INTEGER PRIMARY KEY, n INTEGER)"]));
    assert_eq!(reply.status, 200, "{}", reply.body);

    // A follower asked to redirect names the leader instead of forwarding; nothing is written.
    let (status, _) = client.request_raw("POST", "/db/execute?redirect&w=1", Some(br#"["INSERT INTO q(n) VALUES (-1)"]"#)).expect("redirect");
    assert_eq!(status, 301);
    let reply = client.request("POST", "/db/execute?redirect", Some(br#"["INSERT INTO q(n) VALUES (-1)"]"#)).expect("redirect");
    assert_eq!(reply.body["leader"], leader.id.as_str(), "{}", reply.body);
    assert_eq!(client.request_raw("GET", "/db/query?q=SELECT%201&redirect&level=strong", None).expect("redirect").0, 301);
    assert_eq!(client.request_raw("GET", "/db/query?q=SELECT%201&redirect&level=none", None).expect("local").0, 200, "a local read stays");
    assert_eq!(leader.client().request_raw("POST", "/db/execute?redirect", Some(br#"["SELECT 1"]"#)).expect("leader").0, 200, "the leader serves it");

    // Queued writes: answered at once with increasing sequence numbers, written in order.
    let mut sequences = Vec::new();
    for n in 0..50 {
        let reply = execute(&mut client, "?queue", json!([["INSERT INTO q(n) VALUES (?)", n]]));
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body["results"], json!([]), "{}", reply.body);
        sequences.push(reply.body["sequence_number"].as_u64().expect("a sequence number"));
    }
    assert!(sequences.windows(2).all(|pair| pair[0] < pair[1]), "{sequences:?}");
    let reply = execute(&mut client, "?queue&wait", json!([["INSERT INTO q(n) VALUES (?)", 50]]));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let written = rows(&query(&mut leader.client(), "SELECT n FROM q ORDER BY id", "level=strong"));
    assert_eq!(written, (0..=50).map(|n| json!([n])).collect::<Vec<_>>(), "with wait, every earlier queued write is in, in order");
    assert_eq!(execute(&mut client, "?queue&transaction", json!(["INSERT INTO q(n) VALUES (1)"])).status, 400);

    // A write's own timeout, here one that cannot be met: the leader is paused, so the
    // forwarded write hangs and its outcome is unknown (503). (Unpaused, a write can finish
    // inside the timer's 1 ms granularity, however short the timeout.)
    leader.signal("STOP");
    let reply = execute(&mut client, "?timeout=50ms", json!(["INSERT INTO q(n) VALUES (100)"]));
    leader.signal("CONT");
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(reply.body["error"].as_str().unwrap_or("").contains("outcome is unknown"), "{}", reply.body);
    assert_eq!(execute(&mut client, "?timeout=soon", json!(["INSERT INTO q(n) VALUES (100)"])).status, 400);
    assert_eq!(execute(&mut client, "?timeout=30s", json!(["INSERT INTO q(n) VALUES (101)"])).status, 200);

    // timings: the request's time and each result's.
    let reply = execute(&mut client, "?timings", json!(["INSERT INTO q(n) VALUES (102)", "INSERT INTO q(n) VALUES (103)"]));
    assert!(reply.body["time"].is_number(), "{}", reply.body);
    assert!(
        reply.body["results"].as_array().is_some_and(|results| results.iter().all(|result| result["time"].as_f64().is_some_and(|time| time >= 0.0))),
        "{}",
        reply.body
    );
    let reply = query(&mut client, "SELECT count(*) FROM q", "timings");
    assert!(reply.body["results"][0]["time"].is_number(), "{}", reply.body);
    assert!(query(&mut client, "SELECT count(*) FROM q", "").body["results"][0].get("time").is_none(), "only when asked");
}
