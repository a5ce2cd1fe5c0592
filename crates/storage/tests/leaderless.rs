//! A leaderless node's storage: client writes captured as one row's change and rolled
//! back, versions stored with the user table showing the visible one, SELECTs run over
//! merged versions, and key lookups found in SELECT text (any text: never a panic).

use tern_core::leaderless::{write_locally, Key, KeyVersions, Stamped};
use tern_core::Timestamp;
use tern_storage::leaderless::{decode_row, encode_key, encode_row, key_lookup, LeaderlessStore};
use tern_storage::{Limits, Params, SqlValue, Statement};

fn store() -> (tempfile_dir::Dir, LeaderlessStore) {
    let dir = tempfile_dir::Dir::new();
    let mut store = LeaderlessStore::open(dir.path(), Limits::default()).unwrap();
    let made = store.apply_schema("n1.1:1", &Statement::new("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL, visits INTEGER DEFAULT 0)"));
    assert_eq!(made.error, None);
    (dir, store)
}

mod tempfile_dir {
    pub struct Dir(std::path::PathBuf);
    impl Dir {
        pub fn new() -> Dir {
            use std::sync::atomic::{AtomicU64, Ordering};
            static NEXT: AtomicU64 = AtomicU64::new(0);
            let path = std::env::temp_dir().join(format!("tern-ll-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
            let _ = std::fs::remove_dir_all(&path);
            Dir(path)
        }
        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn query(store: &LeaderlessStore, sql: &str, rows: &[(Key, KeyVersions)]) -> Vec<Vec<SqlValue>> {
    let result = store.evaluate(&Statement::new(sql), rows, false);
    assert_eq!(result.error, None, "{sql}");
    result.values
}

#[test]
fn a_write_is_captured_as_its_one_row_and_leaves_nothing_behind() {
    let (_dir, mut store) = store();
    let captured = store.capture(&Statement::new("INSERT INTO people (id, name) VALUES (7, 'Andrés')"));
    assert_eq!(captured.result.error, None);
    assert_eq!(captured.result.rows_affected, 1);
    let (key, row) = captured.row.expect("one row");
    assert_eq!(key, Key::new("people", encode_key(&[SqlValue::Integer(7)])));
    let row = row.expect("inserted, not deleted");
    assert_eq!(row, vec![("id".into(), SqlValue::Integer(7)), ("name".into(), SqlValue::Text("Andrés".into())), ("visits".into(), SqlValue::Integer(0))]);
    assert!(store.table_entries(&["people".into()]).unwrap().is_empty(), "nothing is stored by a capture");
    let keyless = store.capture(&Statement::new("INSERT INTO people (name) VALUES ('no key')"));
    assert!(keyless.result.error.as_deref().unwrap_or("").contains("gives no key"), "{keyless:?}");
    let bad = store.capture(&Statement::new("INSERT INTO nowhere VALUES (1)"));
    assert!(bad.result.error.as_deref().unwrap_or("").contains("no such table"), "{bad:?}");
}

#[test]
fn versions_show_the_newest_row_and_selects_run_over_merged_versions() {
    let (_dir, mut store) = store();
    let key = Key::new("people", encode_key(&[SqlValue::Integer(1)]));
    let row = |name: &str, visits: i64| {
        encode_row(&vec![("id".into(), SqlValue::Integer(1)), ("name".into(), SqlValue::Text(name.into())), ("visits".into(), SqlValue::Integer(visits))])
    };
    let (dot, _) = store.write_local(&key, "n1.1", None, Stamped { stamp: Timestamp::new(10, 0), value: Some(row("ann", 1)) }).unwrap();
    assert_eq!(dot, ("n1.1".to_string(), 1));
    // A concurrent write from another node, newer by hybrid time.
    let mut theirs = KeyVersions::new();
    write_locally(&mut theirs, "n2.1", None, Stamped { stamp: Timestamp::new(20, 0), value: Some(row("anna", 2)) });
    assert_eq!(store.merge(&[(key.clone(), theirs.clone())]).unwrap(), 1);
    assert_eq!(store.merge(&[(key.clone(), theirs)]).unwrap(), 0, "merging again changes nothing");
    let stored = store.load(&key).unwrap();
    assert_eq!(stored.siblings().len(), 2, "both concurrent versions stand");
    assert_eq!(store.sibling_counts().unwrap(), vec![("people".to_string(), 1)]);
    // UPDATE computes from the shown row: the newest.
    let captured = store.capture(&Statement::new("UPDATE people SET visits = visits + 1 WHERE id = 1"));
    let (_, image) = captured.row.expect("one row");
    assert_eq!(image.unwrap()[2], ("visits".to_string(), SqlValue::Integer(3)));
    let entries = vec![(key.clone(), stored.clone())];
    assert_eq!(query(&store, "SELECT name, visits FROM people", &entries), vec![vec![SqlValue::Text("anna".into()), SqlValue::Integer(2)]]);
    let every = store.evaluate(&Statement::new("SELECT name FROM people WHERE id = 1"), &entries, true);
    let mut names: Vec<SqlValue> = every.values.into_iter().flatten().collect();
    names.sort_by_key(|value| format!("{value:?}"));
    assert_eq!(names, vec![SqlValue::Text("ann".into()), SqlValue::Text("anna".into())], "siblings read together");
    // A delete that saw both versions replaces them.
    let seen = stored.context();
    store.write_local(&key, "n1.1", Some(&seen), Stamped { stamp: Timestamp::new(30, 0), value: None }).unwrap();
    assert!(query(&store, "SELECT * FROM people", &[(key.clone(), store.load(&key).unwrap())]).is_empty());
    let multi = store.capture(&Statement::new("UPDATE people SET visits = 0"));
    assert_eq!(multi.result.error, None, "no rows stored, so nothing changes: {multi:?}");
    assert_eq!(decode_row(&row("x", 1)).unwrap().len(), 3);
}

#[test]
fn a_statement_changing_several_rows_is_refused_with_the_reason() {
    let (_dir, mut store) = store();
    for id in [1, 2] {
        let key = Key::new("people", encode_key(&[SqlValue::Integer(id)]));
        let row = encode_row(&vec![("id".into(), SqlValue::Integer(id)), ("name".into(), SqlValue::Text("x".into()))]);
        store.write_local(&key, "n1.1", None, Stamped { stamp: Timestamp::new(5, 0), value: Some(row) }).unwrap();
    }
    let captured = store.capture(&Statement::new("UPDATE people SET visits = 9"));
    assert!(captured.result.error.as_deref().unwrap_or("").contains("changes 2 rows"), "{captured:?}");
}

#[test]
fn key_lookups_are_found_in_select_text_and_nothing_else_is() {
    let positional = |sql: &str, value: SqlValue| Statement { sql: sql.into(), params: Params::Positional(vec![value]) };
    let found = |statement: &Statement| key_lookup(statement);
    assert_eq!(found(&Statement::new("SELECT * FROM people WHERE id = 5")), Some(("people".into(), "id".into(), SqlValue::Integer(5))));
    assert_eq!(found(&Statement::new("select name from \"peo ple\" where id = -5;")), Some(("peo ple".into(), "id".into(), SqlValue::Integer(-5))));
    assert_eq!(found(&Statement::new("SELECT * FROM t WHERE k = 'Andrés'")), Some(("t".into(), "k".into(), SqlValue::Text("Andrés".into()))));
    assert_eq!(found(&positional("SELECT * FROM t WHERE k = ?", SqlValue::Integer(3))), Some(("t".into(), "k".into(), SqlValue::Integer(3))));
    for other in [
        "SELECT * FROM t",
        "SELECT * FROM t WHERE k > 5",
        "SELECT * FROM t, u WHERE k = 5",
        "SELECT * FROM t WHERE k = 5 OR 1",
        "SELECT (SELECT 1) FROM t WHERE k = 1",
    ] {
        assert_eq!(found(&Statement::new(other)), None, "{other}");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, failure_persistence: None, ..Default::default() })]

    /// Any text, in any script: a key lookup or none, never a panic.
    #[test]
    fn any_select_text_is_looked_at_without_a_panic(tail in "\\PC{0,60}", raw in proptest::prelude::any::<String>()) {
        for sql in [format!("SELECT * FROM t WHERE k = {tail}"), format!("SELECT {tail}"), raw.clone(), format!("SELECT * FROM {raw} WHERE {tail}")] {
            let _ = key_lookup(&Statement::new(sql));
        }
    }
}
