//! rqlite's query-string options and endpoint variants, as rqlite renders them.

mod support;

use serde_json::json;
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
