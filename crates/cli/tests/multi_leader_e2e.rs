//! Multi-leader on real `tern server` processes: three regions (and a region of three
//! nodes) taking writes everywhere, concurrent edits settled per table policy with the
//! losers on record, a region cut off that keeps taking writes and converges after heal,
//! and nodes killed mid-stream that resume without losing or repeating a write.

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::*;

const LONG: Duration = Duration::from_secs(60);

/// Drops all traffic between `node` and every other node (`heal`: none).
fn isolate(cluster: &Cluster, node: usize, heal: bool) {
    let others: Vec<String> = cluster.nodes.iter().enumerate().filter(|(index, _)| *index != node).map(|(_, other)| other.id.clone()).collect();
    let drop = if heal { String::new() } else { others.join(",") };
    let reply = cluster.nodes[node].client().post_json(&format!("/debug/partition?drop={drop}"), &json!({})).expect("node answers");
    assert_eq!(reply.status, 200, "{}", reply.body);
}

fn ok(reply: &tern_server::client::Reply) {
    assert_eq!(reply.status, 200, "{}", reply.body);
    for result in reply.body["results"].as_array().into_iter().flatten() {
        assert!(result["error"].is_null(), "{}", reply.body);
    }
}

fn post(cluster: &Cluster, node: usize, path: &str, body: Value) -> tern_server::client::Reply {
    cluster.nodes[node].client().post_json(path, &body).expect("node answers")
}

fn table_rows(cluster: &Cluster, node: usize, sql: &str) -> Vec<Value> {
    rows(&query(&mut cluster.nodes[node].client(), sql, ""))
}

fn conflicts(cluster: &Cluster, node: usize) -> Vec<Value> {
    let reply = cluster.nodes[node].client().get("/db/conflicts").expect("node answers");
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["conflicts"].as_array().cloned().unwrap_or_default()
}

/// Waits until every running node shows `expected` for `sql`.
fn converges(cluster: &Cluster, nodes: &[usize], sql: &str, expected: &Value) {
    let shows = |node: usize| {
        let reply = cluster.nodes[node].client().get(&format!("/db/query?q={}", tern_server::client::encode_query_value(sql)));
        reply.is_ok_and(|reply| reply.body["results"][0]["values"] == *expected)
    };
    eventually(LONG, &format!("every region to show {expected} for {sql}"), || nodes.iter().all(|node| shows(*node)));
}

fn region_holds(cluster: &Cluster, node: usize) -> Value {
    cluster.nodes[node].client().get("/status").expect("node answers").body["regions"]["holds"].clone()
}

/// Runs the `tern` binary; its standard output (it must succeed).
fn tern(args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tern")).args(args).output().expect("tern runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "tern {args:?} failed: {text}{}", String::from_utf8_lossy(&output.stderr));
    text
}

#[test]
fn concurrent_edits_in_two_regions_are_settled_by_each_tables_policy_with_the_losers_on_record() {
    let cluster = Cluster::start_multi_leader("ml-policies", &["us-east", "eu-west", "antarctica"], &[]);
    let (us, eu, antarctica) = (0, 1, 2);
    ok(&execute(
        &mut cluster.nodes[us].client(),
        "?w=regions:all",
        json!(["CREATE TABLE products (sku TEXT PRIMARY KEY, price INTEGER, colour TEXT)", "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"]),
    ));
    let set = post(&cluster, us, "/db/conflicts/policy", json!({"table": "products", "policy": "column-merge"}));
    assert_eq!(set.status, 200, "{}", set.body);
    let refused = post(&cluster, us, "/db/conflicts/policy", json!({"table": "products", "policy": "newest"}));
    assert_eq!(refused.status, 400, "an unknown policy is refused: {}", refused.body);
    // Behind the policy in us-east's stream, so every region has both when this returns.
    ok(&execute(&mut cluster.nodes[us].client(), "?w=regions:all", json!(["INSERT INTO products VALUES ('pen', 10, 'red')"])));

    // eu-west is cut off; both sides edit the same rows.
    isolate(&cluster, eu, false);
    ok(&execute(
        &mut cluster.nodes[us].client(),
        "",
        json!(["UPDATE products SET price = 11 WHERE sku = 'pen'", "INSERT INTO notes VALUES (1, 'from us-east')"]),
    ));
    std::thread::sleep(Duration::from_millis(5));
    ok(&execute(
        &mut cluster.nodes[eu].client(),
        "",
        json!(["UPDATE products SET colour = 'blue' WHERE sku = 'pen'", "INSERT INTO notes VALUES (1, 'from eu-west')"]),
    ));
    assert_eq!(table_rows(&cluster, eu, "SELECT * FROM notes"), vec![json!([1, "from eu-west"])], "eu-west answers from its own writes");
    isolate(&cluster, eu, true);

    // column-merge: both edits survive; lww: the later insert shows, the other is on record.
    let all = [us, eu, antarctica];
    converges(&cluster, &all, "SELECT * FROM products", &json!([["pen", 11, "blue"]]));
    converges(&cluster, &all, "SELECT * FROM notes", &json!([[1, "from eu-west"]]));
    for node in all {
        let found = conflicts(&cluster, node);
        assert_eq!(found.len(), 1, "one conflict on record at {}: {found:?}", cluster.nodes[node].id);
        assert_eq!(found[0]["table"], "notes");
        assert_eq!(found[0]["kept"]["values"], json!([1, "from eu-west"]));
        assert_eq!(found[0]["lost"]["values"], json!([1, "from us-east"]));
        assert_eq!(found[0]["lost"]["region"], "us-east");
    }

    // Listed and settled with `tern conflicts`, from antarctica, for everyone.
    let listed = tern(&["conflicts", "list", "--http", &cluster.nodes[antarctica].http]);
    assert!(listed.contains("1 conflicts on record in region antarctica"), "{listed}");
    assert!(listed.contains("lost: us-east#") && listed.contains("[1,\"from us-east\"]"), "{listed}");
    let resolved =
        tern(&["conflicts", "resolve", "--http", &cluster.nodes[antarctica].http, "--table", "notes", "--key", "[1]", "--values", "[1, \"from both\"]"]);
    assert!(resolved.contains("every region follows"), "{resolved}");
    converges(&cluster, &all, "SELECT * FROM notes", &json!([[1, "from both"]]));
    eventually(LONG, "the conflict to be settled everywhere", || all.iter().all(|node| conflicts(&cluster, *node).is_empty()));
    let bad = post(&cluster, antarctica, "/db/conflicts/resolve", json!({"table": "notes", "key": "1"}));
    assert_eq!(bad.status, 400, "{}", bad.body);

    // Two regions give different rows one UNIQUE value: every region keeps the same one,
    // the other is on record, and the stream goes on.
    ok(&execute(&mut cluster.nodes[us].client(), "?w=regions:all", json!(["CREATE TABLE customers (id TEXT PRIMARY KEY, email TEXT UNIQUE)"])));
    isolate(&cluster, eu, false);
    ok(&execute(&mut cluster.nodes[us].client(), "", json!(["INSERT INTO customers VALUES ('us-1', 'ann@example.com')"])));
    ok(&execute(&mut cluster.nodes[eu].client(), "", json!(["INSERT INTO customers VALUES ('eu-1', 'ann@example.com')"])));
    isolate(&cluster, eu, true);
    ok(&execute(&mut cluster.nodes[eu].client(), "?w=regions:all", json!(["INSERT INTO customers VALUES ('eu-2', 'bo@example.com')"])));
    eventually(LONG, "every region to keep the same customers, one clash on record", || {
        let kept: Vec<Vec<Value>> = all.iter().map(|node| table_rows(&cluster, *node, "SELECT * FROM customers ORDER BY id")).collect();
        let clashes = all.iter().all(|node| conflicts(&cluster, *node).iter().filter(|conflict| conflict["kind"] == "unique").count() == 1);
        kept[0].len() == 2 && kept.iter().all(|rows| *rows == kept[0]) && clashes
    });

    // A node of another topology is refused at the handshake, with the reason.
    let mut stranger = cluster.stray_node("stranger", &format!("n1={}", cluster.nodes[us].peer));
    stranger.start();
    eventually(LONG, "us-east to refuse the single-leader node", || cluster.nodes[us].log_text().contains("runs --topology single-leader"));
}

#[test]
fn a_region_cut_off_keeps_taking_writes_and_every_region_converges_after_a_node_restarts_mid_stream() {
    // The region logs keep only 2 writes per origin beyond what every region holds: what
    // a cut-off region lacks must stay all the same.
    let cluster =
        Cluster::start_multi_leader("ml-partition", &["us-east", "eu-west", "antarctica"], &["--write-timeout-ms", "1500", "--region-log-retain", "2"]);
    let mut cluster = cluster;
    let (us, eu, antarctica) = (0, 1, 2);
    ok(&execute(
        &mut cluster.nodes[us].client(),
        "?w=regions:all",
        json!(["CREATE TABLE orders (id INTEGER PRIMARY KEY, placed_in TEXT)", "CREATE TABLE events (id INTEGER PRIMARY KEY, what TEXT)"]),
    ));

    isolate(&cluster, antarctica, false);
    // Rows given no key: each region picks rowids no other region picks.
    for number in 0..5 {
        for node in [us, antarctica] {
            let reply =
                execute(&mut cluster.nodes[node].client(), "", json!([format!("INSERT INTO events (what) VALUES ('{number} at {}')", cluster.nodes[node].id)]));
            ok(&reply);
            assert!(reply.body["results"][0]["last_insert_id"].as_i64().is_some_and(|id| id > 0), "{}", reply.body);
        }
    }
    for id in 0..40 {
        ok(&execute(&mut cluster.nodes[antarctica].client(), "", json!([format!("INSERT INTO orders VALUES ({}, 'antarctica')", 1000 + id)])));
        ok(&execute(&mut cluster.nodes[us].client(), "", json!([format!("INSERT INTO orders VALUES ({id}, 'us-east')")])));
    }
    // us-east's /status shows antarctica silent and lacking us-east's recent writes, while
    // eu-west catches up. (Waited for, not read once: on a quiet machine the writes above
    // take less time than any silence worth calling one.)
    let mut status = Value::Null;
    eventually(LONG, "us-east's /status to show antarctica silent and behind, eu-west caught up", || {
        status = cluster.nodes[us].client().get("/status").expect("node answers").body;
        let seen = status["regions"]["regions"].as_array().cloned().unwrap_or_default();
        let region = |name: &str| seen.iter().find(|region| region["region"] == name).cloned().unwrap_or_default();
        let (away, near) = (region("antarctica"), region("eu-west"));
        away["missing_there"].as_u64().unwrap_or(0) >= 40 && away["last_heard_ms_ago"].as_f64().unwrap_or(0.0) > 1000.0 && near["missing_there"] == 0
    });
    assert_eq!(status["replication"]["topology"], "multi-leader", "{status}");

    // Cross-region durability on request: refused honestly while a region is away.
    let lonely = execute(&mut cluster.nodes[antarctica].client(), "?w=regions:all", json!(["INSERT INTO orders VALUES (2000, 'antarctica')"]));
    assert_eq!(lonely.status, 503, "{}", lonely.body);
    assert!(lonely.body["error"].as_str().unwrap_or_default().contains("1 of the 3"), "{}", lonely.body);
    ok(&execute(&mut cluster.nodes[us].client(), "?w=regions:2", json!(["INSERT INTO orders VALUES (2001, 'us-east')"])));
    let too_many = execute(&mut cluster.nodes[us].client(), "?w=regions:4", json!(["INSERT INTO orders VALUES (2002, 'us-east')"]));
    assert_eq!(too_many.status, 400, "{}", too_many.body);
    // Schema changes: only in the schema region (us-east, first in --cluster), and not
    // while a region is away; nothing is changed either way.
    let elsewhere = execute(&mut cluster.nodes[antarctica].client(), "", json!(["CREATE TABLE audit (id INTEGER PRIMARY KEY)"]));
    assert_eq!(elsewhere.status, 400, "{}", elsewhere.body);
    assert!(elsewhere.body["error"].as_str().unwrap_or_default().contains("made in region us-east"), "{}", elsewhere.body);
    let away = execute(&mut cluster.nodes[us].client(), "", json!(["INSERT INTO orders VALUES (2003, 'us-east'); DROP TABLE orders"]));
    assert_eq!(away.status, 503, "{}", away.body);
    assert!(away.body["error"].as_str().unwrap_or_default().contains("antarctica"), "{}", away.body);
    assert_eq!(rows(&query(&mut cluster.nodes[us].client(), "SELECT count(*) FROM orders WHERE id = 2003", "")), vec![json!([0])]);

    // A session token from us-east: antarctica, still cut off, says it lacks the write.
    let written = execute(&mut cluster.nodes[us].client(), "", json!(["INSERT INTO orders VALUES (3000, 'us-east')"]));
    ok(&written);
    let token = written.body["token"].as_str().expect("a multi-leader write answers with a token").to_string();
    assert!(token.starts_with("us-east:"), "{token}");
    let session = format!("level=session&after={}&timeout=200ms", tern_server::client::encode_query_value(&token));
    let behind = query(&mut cluster.nodes[antarctica].client(), "SELECT count(*) FROM orders WHERE id = 3000", &session);
    assert_eq!(behind.status, 503, "{}", behind.body);
    assert!(behind.body["error"].as_str().unwrap_or_default().contains(&token), "{}", behind.body);

    // Heal, and kill eu-west while the catch-up streams in; it comes back from its cursors.
    isolate(&cluster, antarctica, true);
    let session = format!("level=session&after={}&timeout=30s", tern_server::client::encode_query_value(&token));
    let caught_up = query(&mut cluster.nodes[antarctica].client(), "SELECT count(*) FROM orders WHERE id = 3000", &session);
    assert_eq!(rows(&caught_up), vec![json!([1])], "read-your-writes across regions with the token");
    let seen: tern_core::multi_leader::VersionVector = caught_up.body["token"].as_str().expect("reads answer with a token").parse().expect("a token");
    assert!(seen.get("us-east") >= 47 && seen.get("antarctica") >= 46, "{seen}");
    cluster.nodes[eu].kill();
    for id in 40..60 {
        ok(&execute(&mut cluster.nodes[us].client(), "", json!([format!("INSERT INTO orders VALUES ({id}, 'us-east')")])));
    }
    cluster.nodes[eu].start();
    wait_node_ready(&cluster.nodes[eu]);
    let expected = json!([[103]]);
    converges(&cluster, &[us, eu, antarctica], "SELECT count(*) FROM orders", &expected);
    let reference = table_rows(&cluster, us, "SELECT * FROM orders ORDER BY id");
    for node in [eu, antarctica] {
        assert_eq!(table_rows(&cluster, node, "SELECT * FROM orders ORDER BY id"), reference);
    }
    eventually(LONG, "every region to hold the same writes", || {
        let holds = region_holds(&cluster, us);
        holds == region_holds(&cluster, eu) && holds == region_holds(&cluster, antarctica)
    });
    let holds = region_holds(&cluster, us);
    assert_eq!(holds, json!({"us-east": 68, "antarctica": 46}), "one write per transaction, none twice");
    eventually(LONG, "the region logs to be compacted once every region holds the writes", || {
        let compacted = cluster.nodes[us].client().get("/status").map(|reply| reply.body["regions"]["log_compacted_through"].clone());
        compacted.is_ok_and(|compacted| compacted["us-east"].as_u64().unwrap_or(0) >= 60)
    });
    converges(&cluster, &[us, eu, antarctica], "SELECT count(*) FROM events", &json!([[10]]));
    assert!(conflicts(&cluster, eu).is_empty(), "no two regions picked one rowid");
    // With every region back, a schema change is made, and answered once all hold it.
    ok(&execute(&mut cluster.nodes[us].client(), "", json!(["CREATE TABLE audit (id INTEGER PRIMARY KEY)"])));
    for node in [eu, antarctica] {
        assert_eq!(rows(&query(&mut cluster.nodes[node].client(), "SELECT count(*) FROM audit", "")), vec![json!([0])]);
    }
}

#[test]
fn a_region_of_three_nodes_fails_over_and_its_new_leader_carries_on_the_exchange() {
    let mut cluster = Cluster::start_multi_leader("ml-group", &["us-east", "us-east", "us-east", "eu-west"], &[]);
    let eu = 3;
    // Through a follower of us-east (forwarded to its leader), to eu-west.
    ok(&execute(
        &mut cluster.nodes[1].client(),
        "?w=regions:all",
        json!(["CREATE TABLE orders (id INTEGER PRIMARY KEY, placed_in TEXT)", "INSERT INTO orders VALUES (1, 'us-east')"]),
    ));
    converges(&cluster, &[0, 1, 2, eu], "SELECT count(*) FROM orders", &json!([[1]]));

    cluster.nodes[0].kill();
    let mut new_leader = None;
    eventually(LONG, "us-east to elect a new leader", || {
        new_leader = [1, 2].into_iter().find(|node| {
            cluster.nodes[*node]
                .client()
                .get("/status")
                .is_ok_and(|reply| reply.body["node"]["role"] == "leader" && reply.body["node"]["accepting_writes"] == true)
        });
        new_leader.is_some()
    });
    let leader = new_leader.expect("checked by eventually");
    ok(&execute(&mut cluster.nodes[leader].client(), "", json!(["INSERT INTO orders VALUES (2, 'us-east')"])));
    ok(&execute(&mut cluster.nodes[eu].client(), "", json!(["INSERT INTO orders VALUES (3, 'eu-west')"])));
    converges(&cluster, &[1, 2, eu], "SELECT count(*) FROM orders", &json!([[3]]));

    cluster.nodes[0].start();
    wait_node_ready(&cluster.nodes[0]);
    converges(&cluster, &[0, 1, 2, eu], "SELECT * FROM orders ORDER BY id", &json!([[1, "us-east"], [2, "us-east"], [3, "eu-west"]]));
}

#[test]
fn a_regions_writes_reach_every_region_through_another_after_it_is_gone_for_good() {
    let mut cluster = Cluster::start_multi_leader("ml-relay", &["us-east", "eu-west", "antarctica"], &[]);
    let (us, eu, antarctica) = (0, 1, 2);
    ok(&execute(&mut cluster.nodes[us].client(), "?w=regions:all", json!(["CREATE TABLE orders (id INTEGER PRIMARY KEY, placed_in TEXT)"])));
    // Antarctica is cut off; us-east's orders reach eu-west alone.
    isolate(&cluster, antarctica, false);
    for id in 1..=5 {
        ok(&execute(&mut cluster.nodes[us].client(), "?w=regions:2", json!([format!("INSERT INTO orders (placed_in) VALUES ('us-east {id}')")])));
    }
    assert_eq!(rows(&query(&mut cluster.nodes[antarctica].client(), "SELECT count(*) FROM orders", "")), vec![json!([0])], "not there yet");
    // us-east is gone for good before antarctica is back; eu-west relays its orders.
    cluster.nodes[us].kill();
    isolate(&cluster, antarctica, true);
    converges(&cluster, &[eu, antarctica], "SELECT count(*) FROM orders", &json!([[5]]));
    assert_eq!(region_holds(&cluster, antarctica)["us-east"], 6, "the table and five orders, from eu-west");
}

#[test]
fn only_a_rows_home_region_writes_it_and_a_customer_moves_without_a_conflict() {
    let cluster = Cluster::start_multi_leader("ml-homes", &["us-east", "eu-west", "antarctica"], &[]);
    let (us, antarctica) = (0, 2);
    ok(&execute(&mut cluster.nodes[us].client(), "?w=regions:all", json!(["CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, home TEXT)"])));
    let rule = post(&cluster, us, "/db/homes/rule", json!({"table": "customers", "column": "home"}));
    assert_eq!(rule.status, 200, "{}", rule.body);
    assert_eq!(post(&cluster, us, "/db/homes/rule", json!({"table": "customers", "column": "nowhere"})).status, 400);
    ok(&execute(&mut cluster.nodes[us].client(), "?w=regions:all", json!(["INSERT INTO customers VALUES (42, 'Ann', 'us-east')"])));

    // Written from antarctica: sent to us-east, Ann's home, and answered from there.
    let forwarded = execute(&mut cluster.nodes[antarctica].client(), "", json!(["UPDATE customers SET name = 'Ann A' WHERE id = 42"]));
    ok(&forwarded);
    assert!(forwarded.body["token"].as_str().unwrap_or_default().starts_with("us-east:"), "made in us-east: {}", forwarded.body);
    let refused = execute(&mut cluster.nodes[antarctica].client(), "?home=local", json!(["UPDATE customers SET name = 'Ann in the south' WHERE id = 42"]));
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(refused.body["error"].as_str().unwrap_or_default().contains("home is region us-east"), "{}", refused.body);

    // Ann moves: her home region writes the move; antarctica takes her row once it has it.
    ok(&execute(&mut cluster.nodes[us].client(), "?w=regions:all", json!(["UPDATE customers SET home = 'antarctica' WHERE id = 42"])));
    let local = execute(&mut cluster.nodes[antarctica].client(), "?home=local", json!(["UPDATE customers SET name = 'Ann in the south' WHERE id = 42"]));
    ok(&local);
    assert!(local.body["token"].as_str().unwrap_or_default().starts_with("antarctica:"), "{}", local.body);
    let late = execute(&mut cluster.nodes[us].client(), "?home=local", json!(["UPDATE customers SET name = 'Ann in the north' WHERE id = 42"]));
    assert_eq!(late.status, 409, "{}", late.body);
    assert!(late.body["error"].as_str().unwrap_or_default().contains("home is region antarctica"), "{}", late.body);
    converges(&cluster, &[0, 1, 2], "SELECT name, home FROM customers", &json!([["Ann in the south", "antarctica"]]));

    // And back, with `tern rehome` asked of eu-west (the move is made at her home).
    let moved = tern(&["rehome", "--http", &cluster.nodes[1].http, "--table", "customers", "--key", "[42]", "--to", "us-east"]);
    assert!(moved.contains("now has its home in us-east"), "{moved}");
    ok(&execute(&mut cluster.nodes[us].client(), "?home=local", json!(["UPDATE customers SET name = 'Ann back north' WHERE id = 42"])));
    let homes = cluster.nodes[antarctica].client().get("/db/homes").expect("node answers").body;
    assert_eq!(homes["tables"][0]["rows_per_home"]["us-east"], 1, "{homes}");
    let nowhere = post(&cluster, us, "/db/homes/move", json!({"table": "customers", "key": [7], "to": "eu-west"}));
    assert_eq!(nowhere.status, 404, "{}", nowhere.body);
    assert_eq!(post(&cluster, us, "/db/homes/move", json!({"table": "customers", "key": [42], "to": "mars"})).status, 400);
    converges(&cluster, &[0, 1, 2], "SELECT name, home FROM customers", &json!([["Ann back north", "us-east"]]));
    for node in 0..3 {
        assert!(conflicts(&cluster, node).is_empty(), "no conflict anywhere");
    }
}

/// A visit of customer 42, counted in her row of `visits` (both tables are homed through
/// the directory by their `customer` column).
const VISIT: &str = "UPDATE visits SET count = count + 1 WHERE customer = 42";

/// Three regions, `visits` and `orders` homed through the directory by `customer`, and
/// customer 42 at home in us-east with no visits yet.
fn start_with_customer_42(name: &str, extra: &[&str]) -> Cluster {
    let cluster = Cluster::start_multi_leader(name, &["us-east", "eu-west", "antarctica"], extra);
    let tables = json!([
        "CREATE TABLE visits (customer INTEGER PRIMARY KEY, count INTEGER NOT NULL)",
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer INTEGER NOT NULL, made_in TEXT NOT NULL)"
    ]);
    ok(&execute(&mut cluster.nodes[0].client(), "?w=regions:all", tables));
    for table in ["visits", "orders"] {
        let said = tern(&["homes", "rule", "--http", &cluster.nodes[0].http, "--table", table, "--column", "customer", "--directory"]);
        assert!(said.contains("home directory"), "{said}");
    }
    // 42 is added to the directory in us-east (asked of antarctica), once every region has the rules.
    let added = tern(&["rehome", "--http", &cluster.nodes[2].http, "--key", "42", "--to", "us-east"]);
    assert!(added.contains("now has its home in us-east"), "{added}");
    ok(&execute(&mut cluster.nodes[0].client(), "?w=regions:all", json!(["INSERT INTO visits VALUES (42, 0)"])));
    cluster
}

/// What became of a write: acknowledged, refused (nothing changed), or outcome unknown.
#[derive(Debug, Default, Clone, Copy)]
struct Outcomes {
    acked: u64,
    refused: u64,
    unknown: u64,
}

impl Outcomes {
    fn count(&mut self, reply: &tern_server::client::Reply) {
        let results = reply.body["results"].as_array().cloned().unwrap_or_default();
        let errors: Vec<String> = std::iter::once(&reply.body["error"])
            .chain(results.iter().map(|result| &result["error"]))
            .filter_map(|error| error.as_str().map(str::to_string))
            .collect();
        if reply.status == 200 && errors.is_empty() {
            self.acked += 1;
        } else if errors.iter().any(|error| error.contains("unknown")) {
            self.unknown += 1;
        } else {
            self.refused += 1;
        }
    }
}

#[test]
fn a_customer_moves_around_the_regions_while_two_of_them_write_her_rows_and_no_write_is_lost() {
    let cluster = start_with_customer_42("ml-moves", &[]);
    let regions = ["us-east", "eu-west", "antarctica"];
    let stop = std::sync::atomic::AtomicBool::new(false);
    let outcomes: Vec<Outcomes> = std::thread::scope(|scope| {
        let writers: Vec<_> = [0, 2]
            .into_iter()
            .map(|node| {
                let (stop, cluster) = (&stop, &cluster);
                scope.spawn(move || {
                    let mut client = cluster.nodes[node].client();
                    let mut outcomes = Outcomes::default();
                    let order = format!("INSERT INTO orders (customer, made_in) VALUES (42, '{}')", regions[node]);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        outcomes.count(&execute(&mut client, "?transaction", json!([VISIT, order])));
                    }
                    outcomes
                })
            })
            .collect();
        // 42 goes around the regions twice, each move asked of another node; each is made
        // at her home of the moment and answered once every region holds it.
        for (step, to) in ["antarctica", "eu-west", "us-east", "antarctica", "us-east", "eu-west", "us-east"].into_iter().enumerate() {
            std::thread::sleep(Duration::from_millis(300));
            let reply = cluster.nodes[step % 3].client().post_json("/db/homes/move", &json!({"key": [42], "to": to})).expect("node answers");
            assert_eq!(reply.status, 200, "move {step} to {to}: {}", reply.body);
        }
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writers.into_iter().map(|writer| writer.join().expect("writer runs")).collect()
    });
    let acked: u64 = outcomes.iter().map(|outcomes| outcomes.acked).sum();
    let unknown: u64 = outcomes.iter().map(|outcomes| outcomes.unknown).sum();
    assert!(outcomes.iter().all(|outcomes| outcomes.acked > 0), "both regions' writes were taken: {outcomes:?}");
    // Every region ends with the same count; a move that let two regions write her row at
    // once would lose increments to last-writer-wins and show fewer than were acknowledged.
    let count_in = |node: usize| table_rows(&cluster, node, "SELECT count, (SELECT count(*) FROM orders) FROM visits")[0].clone();
    eventually(LONG, "every region to hold every visit", || (0..3).all(|node| count_in(node) == count_in(0)));
    let shown = count_in(0);
    let (visits, orders) = (shown[0].as_u64().unwrap_or(0), shown[1].as_u64().unwrap_or(0));
    assert!(acked <= visits && visits <= acked + unknown, "{visits} visits shown, {acked} acknowledged, {unknown} unknown: {outcomes:?}");
    assert_eq!(visits, orders, "a visit and its order are one transaction");
    for (node, region) in regions.iter().enumerate() {
        assert!(conflicts(&cluster, node).is_empty(), "no conflict in {region}");
        let homes = cluster.nodes[node].client().get("/status").expect("node answers").body["regions"]["homes"].clone();
        assert_eq!(homes["moves_in_progress"], json!([]), "{homes}");
        let directory = homes["tables"].as_array().into_iter().flatten().find(|table| table["table"] == "tern_homes").cloned();
        assert_eq!(directory.map(|table| table["rows_per_home"].clone()), Some(json!({"us-east": 1})), "{homes}");
    }
}

#[test]
fn a_move_waits_for_a_cut_off_old_home_and_a_cut_off_new_home_takes_over_only_once_it_has_the_move() {
    let cluster = start_with_customer_42("ml-move-cut", &["--write-timeout-ms", "1500"]);
    let (us, eu, antarctica) = (0, 1, 2);
    let write_locally = |node: usize| execute(&mut cluster.nodes[node].client(), "?home=local", json!([VISIT]));
    let refused_for = |reply: &tern_server::client::Reply, home: &str| {
        reply.status == 409 && reply.body["error"].as_str().unwrap_or_default().contains(&format!("home is region {home}"))
    };

    // The old home cut off: only it can make the move, so the move cannot be made; it is
    // listed while it waits, then fails with the reason, and antarctica never takes 42's rows.
    isolate(&cluster, us, false);
    std::thread::scope(|scope| {
        let mover = scope.spawn(|| cluster.nodes[antarctica].client().post_json("/db/homes/move", &json!({"key": [42], "to": "antarctica"})));
        eventually(LONG, "antarctica to list the move", || {
            let homes = cluster.nodes[antarctica].client().get("/db/homes").expect("node answers").body;
            homes["moves_in_progress"][0]["from"] == "us-east" && homes["moves_in_progress"][0]["to"] == "antarctica"
        });
        let reply = mover.join().expect("mover runs").expect("node answers");
        assert_eq!(reply.status, 503, "{}", reply.body);
        assert!(reply.body["error"].as_str().unwrap_or_default().contains("us-east"), "names the unreachable home: {}", reply.body);
    });
    let refused = write_locally(antarctica);
    assert!(refused_for(&refused, "us-east"), "{}", refused.body);
    for _ in 0..3 {
        ok(&write_locally(us));
    }
    isolate(&cluster, us, true);
    converges(&cluster, &[us, eu, antarctica], "SELECT count FROM visits", &json!([[3]]));

    // Healed, the move is made; then the new home is cut off as 42 moves there. The old
    // home stops at once; the new one starts only when the move reaches it.
    let moved = post(&cluster, eu, "/db/homes/move", json!({"key": [42], "to": "antarctica"}));
    assert_eq!(moved.status, 200, "{}", moved.body);
    ok(&write_locally(antarctica));
    isolate(&cluster, eu, false);
    let cut_move = post(&cluster, antarctica, "/db/homes/move", json!({"key": [42], "to": "eu-west"}));
    assert_eq!(cut_move.status, 503, "{}", cut_move.body);
    assert!(cut_move.body["error"].as_str().unwrap_or_default().contains("it stays"), "committed, not yet everywhere: {}", cut_move.body);
    assert!(refused_for(&write_locally(antarctica), "eu-west"), "the old home stopped");
    eventually(LONG, "us-east to learn the move", || refused_for(&write_locally(us), "eu-west"));
    let early = write_locally(eu);
    assert!(refused_for(&early, "antarctica"), "eu-west, cut off, has not got the move: {}", early.body);
    isolate(&cluster, eu, true);
    eventually(LONG, "eu-west to take 42's rows once the move reaches it", || write_locally(eu).status == 200);
    converges(&cluster, &[us, eu, antarctica], "SELECT count, (SELECT region FROM tern_homes) FROM visits", &json!([[5, "eu-west"]]));
    for node in 0..3 {
        assert!(conflicts(&cluster, node).is_empty(), "no conflict");
    }
}

/// A home rule (or a policy) is answered only once every region holds it: a region that
/// lacked it would write the table's homed rows as its own, and a client starting on the
/// answer would make the very conflicts the rule is for (found by `tern lab --real`).
#[test]
fn a_home_rule_is_answered_once_every_region_holds_it() {
    let wan = "us-east:eu-west=60,us-east:antarctica=150,eu-west:antarctica=150";
    let cluster = Cluster::start_multi_leader("ml-rule-everywhere", &["us-east", "eu-west", "antarctica"], &["--wan", wan]);
    let us = 0;
    ok(&execute(
        &mut cluster.nodes[us].client(),
        "?w=regions:all",
        json!(["CREATE TABLE customers (id INTEGER PRIMARY KEY, home TEXT)", "CREATE TABLE notes (id INTEGER PRIMARY KEY)"]),
    ));
    let rule = post(&cluster, us, "/db/homes/rule", json!({"table": "customers", "column": "home"}));
    assert_eq!(rule.status, 200, "{}", rule.body);
    for node in [2, 1] {
        let homes = cluster.nodes[node].client().get("/db/homes").expect("node answers").body;
        assert!(
            homes["tables"].as_array().is_some_and(|tables| tables.iter().any(|table| table["table"] == "customers")),
            "node {node} lacks the rule: {homes}"
        );
    }
    // Antarctica already forwards a write of a us-east customer to us-east.
    let forwarded = execute(&mut cluster.nodes[2].client(), "", json!(["INSERT INTO customers VALUES (1, 'us-east')"]));
    ok(&forwarded);
    assert!(forwarded.body["token"].as_str().unwrap_or_default().starts_with("us-east:"), "made in us-east: {}", forwarded.body);
    let policy = post(&cluster, us, "/db/conflicts/policy", json!({"table": "notes", "policy": "keep-both"}));
    assert_eq!(policy.status, 200, "{}", policy.body);
}
