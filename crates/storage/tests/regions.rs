//! Multi-leader in the engine: a region leader's writes become its region's stream (held
//! by its followers too), and two regions applying each other's concurrent writes end
//! with the same tables and the same conflicts on record.

use tern_core::multi_leader::{Dot, Policy};
use tern_core::LogFormat;
use tern_storage::region_log::LoggedWrite;
use tern_storage::{Batch, Engine, Executed, SqlValue, Statement, WriteRequest};

fn request(statements: &[&str]) -> WriteRequest {
    WriteRequest { statements: statements.iter().map(|sql| Statement::new(*sql)).collect(), transaction: false }
}

fn region_engine(root: &std::path::Path, name: &str, region: &str) -> Engine {
    let mut engine = Engine::open(&root.join(name), LogFormat::Row).unwrap();
    engine.set_region(region, &["us-east".to_string(), "eu-west".to_string()]).unwrap();
    engine
}

fn execute(engine: &mut Engine, statements: &[&str]) -> Batch {
    let batch = engine.execute_batch(1, &[request(statements)]).unwrap();
    for result in batch.results.iter().flatten() {
        assert_eq!(result.error, None, "{statements:?}");
    }
    batch
}

/// Ships every write of `origin` that `to` lacks, as the exchange would.
fn ship(from: &Engine, to: &mut Engine, origin: &str) -> Vec<LoggedWrite> {
    let after = to.region_holds().unwrap().get(origin);
    let writes = from.read_region_writes(origin, after, u64::MAX).unwrap();
    for write in &writes {
        match to.apply_region_writes(1, std::slice::from_ref(write), &|| true).unwrap() {
            Executed::Committed(batch) => assert_eq!(batch.region_writes, std::slice::from_ref(write)),
            Executed::StoppedLeading => panic!("always leading here"),
        }
    }
    writes
}

fn dots(batch: &Batch) -> Vec<Dot> {
    batch.region_writes.iter().map(|write| write.dot.clone()).collect()
}

fn rows(engine: &Engine) -> Vec<(String, u64, u64)> {
    engine.table_checksums().unwrap()
}

#[test]
fn region_writes_reach_the_followers_and_other_regions_and_concurrent_edits_converge_on_record() {
    let root = std::env::temp_dir().join(format!("tern-regions-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let mut us = region_engine(&root, "us", "us-east");
    let mut us_follower = region_engine(&root, "us-follower", "us-east");
    let mut eu = region_engine(&root, "eu", "eu-west");

    let batch =
        execute(&mut us, &["CREATE TABLE products (sku TEXT PRIMARY KEY, price INTEGER, colour TEXT)", "INSERT INTO products VALUES ('pen', 10, 'red')"]);
    assert_eq!(dots(&batch), [Dot::new("us-east", 1)]);
    us_follower.apply(&[batch.entry.unwrap()]).unwrap();
    assert_eq!(us_follower.region_holds().unwrap(), us.region_holds().unwrap(), "the follower holds the region's stream");
    assert_eq!(rows(&us_follower), rows(&us));

    // Shipped to eu: the schema and the row arrive as one write.
    assert_eq!(ship(&us, &mut eu, "us-east").len(), 1);
    assert_eq!(rows(&eu), rows(&us));
    assert_eq!(eu.region_holds().unwrap().get("us-east"), 1);

    // Concurrent edits of one row, then exchanged both ways.
    let us_edit = execute(&mut us, &["UPDATE products SET price = 11 WHERE sku = 'pen'"]);
    assert_eq!(dots(&us_edit), [Dot::new("us-east", 2)]);
    let eu_edit = execute(&mut eu, &["UPDATE products SET colour = 'blue' WHERE sku = 'pen'"]);
    assert_eq!(dots(&eu_edit), [Dot::new("eu-west", 1)]);
    ship(&us, &mut eu, "us-east");
    ship(&eu, &mut us, "eu-west");
    assert_eq!(rows(&eu), rows(&us), "both regions show the same row");
    let (us_conflicts, eu_conflicts) = (us.region_conflicts().unwrap(), eu.region_conflicts().unwrap());
    assert_eq!(us_conflicts, eu_conflicts, "the same conflict on record in both regions");
    assert_eq!(us_conflicts.len(), 1);
    assert_eq!(us_conflicts[0].table, "products");
    assert_eq!(us_conflicts[0].columns, ["sku", "price", "colour"]);
    assert_eq!(us_conflicts[0].rows[0].1.len(), 1, "one losing version");

    // A write that saw the conflict settles it everywhere.
    execute(&mut eu, &["UPDATE products SET price = 12 WHERE sku = 'pen'"]);
    ship(&eu, &mut us, "eu-west");
    assert_eq!(rows(&eu), rows(&us));
    assert!(us.region_conflicts().unwrap().is_empty() && eu.region_conflicts().unwrap().is_empty());

    // A write never applies twice, and never out of its stream's order.
    let again = us.read_region_writes("eu-west", 0, 1).unwrap();
    assert!(us.apply_region_writes(1, &again, &|| true).is_err());
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_policy_and_a_resolution_set_in_one_region_hold_in_every_region() {
    let root = std::env::temp_dir().join(format!("tern-regions-policy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let mut us = region_engine(&root, "us", "us-east");
    let mut eu = region_engine(&root, "eu", "eu-west");
    execute(&mut us, &["CREATE TABLE products (sku TEXT PRIMARY KEY, price INTEGER, colour TEXT)"]);
    let set = us.set_conflict_policy(1, "products", Policy::KeepBoth, &|| true).unwrap();
    assert!(matches!(set, Executed::Committed(Batch { ref region_writes, .. }) if region_writes.len() == 1));
    assert!(us.set_conflict_policy(1, "missing", Policy::KeepBoth, &|| true).is_err());
    ship(&us, &mut eu, "us-east");
    execute(&mut us, &["INSERT INTO products VALUES ('pen', 10, 'red')"]);
    execute(&mut eu, &["INSERT INTO products VALUES ('pen', 20, 'blue')"]);
    ship(&us, &mut eu, "us-east");
    ship(&eu, &mut us, "eu-west");
    assert_eq!(rows(&eu), rows(&us));
    assert_eq!(us.region_conflicts().unwrap().len(), 1, "keep-both keeps the other insert on record");

    // Resolved in eu by keeping a chosen row: cleared in both regions, same row.
    let chosen = vec![SqlValue::Text("pen".into()), SqlValue::Integer(15), SqlValue::Text("green".into())];
    eu.resolve_conflict(1, "products", &[SqlValue::Text("pen".into())], Some(chosen), &|| true).unwrap();
    assert!(eu.resolve_conflict(1, "products", &[], None, &|| true).is_err(), "a key of the wrong length");
    ship(&eu, &mut us, "eu-west");
    assert_eq!(rows(&eu), rows(&us));
    assert!(us.region_conflicts().unwrap().is_empty() && eu.region_conflicts().unwrap().is_empty());
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn two_regions_giving_different_rows_one_unique_value_agree_on_which_keeps_it_and_the_stream_goes_on() {
    let root = std::env::temp_dir().join(format!("tern-regions-unique-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let mut us = region_engine(&root, "us", "us-east");
    let mut eu = region_engine(&root, "eu", "eu-west");
    execute(&mut us, &["CREATE TABLE customers (id TEXT PRIMARY KEY, email TEXT UNIQUE, name TEXT)"]);
    ship(&us, &mut eu, "us-east");
    execute(&mut us, &["INSERT INTO customers VALUES ('us-1', 'ann@example.com', 'Ann in us-east')"]);
    execute(&mut eu, &["INSERT INTO customers VALUES ('eu-1', 'ann@example.com', 'Ann in eu-west')"]);
    ship(&us, &mut eu, "us-east");
    ship(&eu, &mut us, "eu-west");
    assert_eq!(rows(&eu), rows(&us), "both regions keep the same row");
    for engine in [&us, &eu] {
        let conflicts = engine.region_conflicts().unwrap();
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].unique.len(), 1, "the row taken out is on record: {conflicts:?}");
        let clash = &conflicts[0].unique[0];
        assert_ne!(clash.key, clash.held_by);
        assert!(clash.values.as_ref().is_some_and(|values| values[1] == SqlValue::Text("ann@example.com".into())));
    }
    // The stream goes on, and the row taken out comes back once it no longer clashes.
    let hidden = us.region_conflicts().unwrap()[0].unique[0].clone();
    let mut values = hidden.values.clone().unwrap();
    values[1] = SqlValue::Text("ann+2@example.com".into());
    us.resolve_conflict(1, "customers", &hidden.key, Some(values), &|| true).unwrap();
    execute(&mut us, &["INSERT INTO customers VALUES ('us-2', 'bo@example.com', 'Bo')"]);
    ship(&us, &mut eu, "us-east");
    assert_eq!(rows(&eu), rows(&us));
    assert_eq!(rows(&us)[0].1, 3, "three customers shown");
    assert!(us.region_conflicts().unwrap().is_empty() && eu.region_conflicts().unwrap().is_empty());
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn multi_leader_needs_the_row_format_and_tables_with_a_key() {
    let root = std::env::temp_dir().join(format!("tern-regions-refusals-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let mut made = Engine::open(&root.join("made"), LogFormat::Row).unwrap();
    made.settle_topology(tern_core::Topology::SingleLeader).unwrap();
    drop(made);
    let mut reopened = Engine::open(&root.join("made"), LogFormat::Row).unwrap();
    reopened.settle_topology(tern_core::Topology::SingleLeader).unwrap();
    let refused = reopened.settle_topology(tern_core::Topology::MultiLeader).unwrap_err().to_string();
    assert!(refused.contains("belongs to a single-leader cluster"), "{refused}");
    let mut statement = Engine::open(&root.join("statement"), LogFormat::Statement).unwrap();
    assert!(statement.set_region("us-east", &["us-east".to_string()]).unwrap_err().to_string().contains("row log format"));
    let mut us = region_engine(&root, "us", "us-east");
    let refused = us.execute_batch(1, &[request(&["CREATE TABLE notes (body TEXT)"])]).unwrap();
    let error = refused.results[0][0].error.clone().unwrap_or_default();
    assert!(error.contains("has no PRIMARY KEY"), "{error}");
    assert!(refused.entry.is_none(), "nothing was created");
    execute(&mut us, &["CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"]);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn schema_changes_are_told_apart_from_writes_that_only_mention_them() {
    let changes = |sql: &str| tern_storage::changes_schema(&request(&[sql]));
    for sql in ["CREATE TABLE t (id INTEGER PRIMARY KEY)", "  drop table t", "/* why */ ALTER TABLE t ADD c", "INSERT INTO t VALUES (1); DROP TABLE t"] {
        assert!(changes(sql), "{sql}");
    }
    for sql in ["INSERT INTO t VALUES ('CREATE TABLE x')", "UPDATE t SET drop_count = 1", "SELECT 1 -- ALTER TABLE t", "INSERT INTO created VALUES (1)", ""] {
        assert!(!changes(sql), "{sql}");
    }
}

#[test]
fn rows_given_no_key_get_rowids_no_other_region_picks_and_keys_given_are_kept() {
    let root = std::env::temp_dir().join(format!("tern-regions-rowids-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    // Two regions: eu-west gives even rowids, us-east odd ones (name order).
    let mut us = region_engine(&root, "us", "us-east");
    let mut us_follower = region_engine(&root, "us-follower", "us-east");
    let mut eu = region_engine(&root, "eu", "eu-west");
    let created = execute(&mut us, &["CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"]);
    ship(&us, &mut eu, "us-east");
    let single = execute(&mut us, &["INSERT INTO notes (body) VALUES ('us one')"]);
    let given = single.results[0][0].last_insert_id;
    let more = execute(&mut us, &["INSERT INTO notes (body) VALUES ('us two'), ('us three')", "INSERT INTO notes VALUES (100, 'us given')"]);
    let entries: Vec<_> = [created, single, more].into_iter().filter_map(|batch| batch.entry).collect();
    us_follower.apply(&entries).unwrap();
    assert_eq!(rows(&us_follower), rows(&us), "the region's followers hold the rowids its leader placed");
    execute(&mut eu, &["INSERT INTO notes (body) VALUES ('eu one')", "INSERT INTO notes DEFAULT VALUES", "INSERT INTO notes VALUES (NULL, 'eu null')"]);
    ship(&us, &mut eu, "us-east");
    ship(&eu, &mut us, "eu-west");
    assert_eq!(rows(&eu), rows(&us));
    assert!(us.region_conflicts().unwrap().is_empty(), "no two inserts met on one key");
    let reader = tern_storage::Reader::open(&root.join("eu")).unwrap();
    let (results, _) = reader.query(&[Statement::new("SELECT id, body FROM notes ORDER BY id")]).unwrap();
    let ids: Vec<(i64, Option<String>)> = results[0]
        .values
        .iter()
        .map(|row| {
            let SqlValue::Integer(id) = row[0] else { panic!("integer ids") };
            let body = match &row[1] {
                SqlValue::Text(text) => Some(text.clone()),
                _ => None,
            };
            (id, body)
        })
        .collect();
    assert_eq!(ids.len(), 7, "{ids:?}");
    for (id, body) in &ids {
        match body.as_deref() {
            Some("us given") => assert_eq!(*id, 100, "a key given is kept"),
            Some(text) if text.starts_with("us") => assert_eq!(id.rem_euclid(2), 1, "{text} got {id}"),
            _ => assert_eq!(id.rem_euclid(2), 0, "{body:?} got {id}"),
        }
    }
    assert!(ids.iter().any(|(id, body)| *id == given && body.as_deref() == Some("us one")), "the client was told the rowid kept: {given}, {ids:?}");

    // A follower that catches up by snapshot, then leads: its rowids still get placed.
    let snapshot = root.join("us-snapshot.db");
    tern_storage::write_snapshot_of(LogFormat::Row, &us.database_path(), &snapshot).unwrap();
    let mut late = region_engine(&root, "us-late", "us-east");
    late.install_snapshot(&snapshot, false).unwrap();
    let placed = execute(&mut late, &["INSERT INTO notes (body) VALUES ('after the snapshot')"]).results[0][0].last_insert_id;
    assert_eq!(placed.rem_euclid(2), 1, "{placed}");
    let mut expected = us.region_holds().unwrap();
    expected.advance(&Dot::new("us-east", expected.get("us-east") + 1));
    assert_eq!(late.region_holds().unwrap(), expected, "the snapshot's stream, and the next write of it");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn no_client_names_a_table_view_or_trigger_as_tern_does() {
    let root = std::env::temp_dir().join(format!("tern-regions-names-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let mut us = region_engine(&root, "us", "us-east");
    execute(&mut us, &["CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"]);
    for sql in [
        "CREATE TRIGGER _tern_rowid_b_notes AFTER INSERT ON notes BEGIN DELETE FROM notes; END",
        "CREATE TABLE _tern_region_log (x)",
        "CREATE VIEW _tern_rowid_view AS SELECT 1",
    ] {
        let batch = us.execute_batch(1, &[request(&[sql])]).unwrap();
        let error = batch.results[0][0].error.clone().unwrap_or_default();
        assert!(error.contains("_tern_"), "{sql}: {error:?}");
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn only_a_rows_home_writes_it_and_a_row_moves_by_an_update_made_at_its_home() {
    let root = std::env::temp_dir().join(format!("tern-regions-homes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let mut us = region_engine(&root, "us", "us-east");
    let mut eu = region_engine(&root, "eu", "eu-west");
    execute(&mut us, &["CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, home TEXT)"]);
    us.set_home_rule(1, "customers", "home", false, &|| true).unwrap();
    assert!(us.set_home_rule(1, "customers", "nowhere", false, &|| true).is_err());
    execute(&mut us, &["INSERT INTO customers VALUES (1, 'Ann', 'us-east')", "INSERT INTO customers VALUES (3, 'Cy', NULL)"]);
    ship(&us, &mut eu, "us-east");
    let homed_elsewhere = |engine: &mut Engine, sql: &str| {
        let batch = engine.execute_batch(1, &[request(&[sql])]).unwrap();
        let refused = batch.results[0][0].error.clone();
        assert_eq!(batch.homed_elsewhere[0].is_some(), refused.is_some(), "{sql}");
        batch.homed_elsewhere[0].clone()
    };
    // eu-west may not write Ann's row, nor insert a row homed in us-east; rows without a home are anyone's.
    assert_eq!(homed_elsewhere(&mut eu, "UPDATE customers SET name = 'Ann B' WHERE id = 1"), Some("us-east".to_string()));
    assert_eq!(homed_elsewhere(&mut eu, "INSERT INTO customers VALUES (2, 'Bo', 'us-east')"), Some("us-east".to_string()));
    assert_eq!(homed_elsewhere(&mut eu, "DELETE FROM customers WHERE id = 1"), Some("us-east".to_string()));
    assert_eq!(homed_elsewhere(&mut eu, "UPDATE customers SET name = 'Cy B' WHERE id = 3"), None);
    // Ann moves to eu-west: an update of her home made at her home.
    assert_eq!(homed_elsewhere(&mut us, "UPDATE customers SET home = 'eu-west' WHERE id = 1"), None);
    assert_eq!(homed_elsewhere(&mut us, "UPDATE customers SET name = 'late' WHERE id = 1"), Some("eu-west".to_string()), "the old home stops at once");
    assert_eq!(homed_elsewhere(&mut eu, "UPDATE customers SET name = 'early' WHERE id = 1"), Some("us-east".to_string()), "the new home waits for the move");
    ship(&us, &mut eu, "us-east");
    assert_eq!(homed_elsewhere(&mut eu, "UPDATE customers SET name = 'Ann in Europe' WHERE id = 1"), None);
    ship(&eu, &mut us, "eu-west");
    assert_eq!(rows(&eu), rows(&us));
    assert!(us.region_conflicts().unwrap().is_empty() && eu.region_conflicts().unwrap().is_empty(), "no conflict");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn rows_homed_through_the_directory_follow_their_key_and_move_with_it() {
    let root = std::env::temp_dir().join(format!("tern-regions-directory-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let mut us = region_engine(&root, "us", "us-east");
    let mut eu = region_engine(&root, "eu", "eu-west");
    execute(&mut us, &["CREATE TABLE orders (id INTEGER PRIMARY KEY, customer INTEGER, item TEXT)"]);
    us.set_home_rule(1, "orders", "customer", true, &|| true).unwrap();
    assert!(us.set_home_rule(1, "tern_homes", "home_key", true, &|| true).is_err(), "the directory is homed by its own region column");
    // Customer 42 is homed in us-east: the key is added at its home, like any homed row.
    execute(&mut us, &["INSERT INTO tern_homes VALUES (42, 'us-east')", "INSERT INTO orders VALUES (1, 42, 'pen'), (2, 7, 'ink')"]);
    ship(&us, &mut eu, "us-east");
    let homed_elsewhere = |engine: &mut Engine, sql: &str| {
        let batch = engine.execute_batch(1, &[request(&[sql])]).unwrap();
        assert_eq!(batch.homed_elsewhere[0].is_some(), batch.results[0][0].error.is_some(), "{sql}");
        batch.homed_elsewhere[0].clone()
    };
    let us_east = Some("us-east".to_string());
    assert_eq!(homed_elsewhere(&mut eu, "INSERT INTO orders VALUES (3, 42, 'cap')"), us_east, "a new order of 42 is 42's home's to write");
    assert_eq!(homed_elsewhere(&mut eu, "UPDATE orders SET item = 'nib' WHERE id = 1"), us_east);
    assert_eq!(homed_elsewhere(&mut eu, "UPDATE tern_homes SET region = 'eu-west' WHERE home_key = 42"), us_east, "only the home moves a key");
    assert_eq!(homed_elsewhere(&mut eu, "UPDATE orders SET item = 'quill' WHERE id = 2"), None, "customer 7 has no home");
    assert_eq!(homed_elsewhere(&mut eu, "INSERT INTO orders VALUES (9, '42', 'cap')"), us_east, "'42' is customer 42 too, as SQLite compares them");
    // 42 moves to eu-west, with the statement `POST /db/homes/move` makes, at its home.
    let reader = tern_storage::Reader::open(&root.join("us")).unwrap();
    let (statement, from) = reader.home_move("tern_homes", &[SqlValue::Integer(42)], "eu-west").unwrap();
    assert_eq!(from, us_east);
    assert!(reader.home_move("orders", &[SqlValue::Integer(1)], "eu-west").is_err(), "orders move with their key");
    let batch = us.execute_batch(1, &[WriteRequest { statements: vec![statement], transaction: false }]).unwrap();
    assert_eq!((batch.homed_elsewhere[0].clone(), batch.results[0][0].error.clone()), (None, None));
    let eu_west = Some("eu-west".to_string());
    assert_eq!(homed_elsewhere(&mut us, "UPDATE orders SET item = 'late' WHERE id = 1"), eu_west, "the old home stops at once");
    assert_eq!(homed_elsewhere(&mut eu, "UPDATE orders SET item = 'early' WHERE id = 1"), us_east, "the new home waits for the move");
    ship(&us, &mut eu, "us-east");
    assert_eq!(homed_elsewhere(&mut eu, "INSERT INTO orders VALUES (3, 42, 'cap')"), None);
    assert_eq!(homed_elsewhere(&mut eu, "UPDATE orders SET item = 'nib' WHERE id = 1"), None);
    ship(&eu, &mut us, "eu-west");
    assert_eq!(rows(&eu), rows(&us));
    let counts = reader.home_counts().unwrap();
    let orders = counts.iter().find(|(table, _)| table == "orders").map(|(_, counts)| counts.clone());
    assert_eq!(orders, Some(vec![(None, 1), (eu_west.clone(), 2)]), "order 2's customer has no home; 1 and 3 are 42's");
    let keys = counts.iter().find(|(table, _)| table == "tern_homes").map(|(_, counts)| counts.clone());
    assert_eq!(keys, Some(vec![(eu_west, 1)]));
    assert!(us.region_conflicts().unwrap().is_empty() && eu.region_conflicts().unwrap().is_empty(), "no conflict");
    let _ = std::fs::remove_dir_all(&root);
}
