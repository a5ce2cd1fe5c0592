//! The engine's contract, checked for both logical log formats: what the leader executes
//! and logs, a follower applying the same entries ends identical to; the log and the data
//! survive reopening; compaction and snapshots hand over a consistent state.

use tern_core::{Entry, LogFormat, Position};
use tern_storage::{Engine, Params, SqlValue, Statement, WriteRequest};

const FORMATS: [LogFormat; 2] = [LogFormat::Statement, LogFormat::Row];

fn request(statements: &[&str]) -> WriteRequest {
    WriteRequest { statements: statements.iter().map(|sql| Statement::new(*sql)).collect(), transaction: false }
}

fn scratch(name: &str) -> std::path::PathBuf {
    let directory = std::env::temp_dir().join(format!("tern-engine-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&directory);
    directory
}

/// A fresh scratch directory holding a leader's and a follower's engine.
fn leader_and_follower(name: &str, format: LogFormat) -> (std::path::PathBuf, Engine, Engine) {
    let root = scratch(name);
    let leader = Engine::open(&root.join("leader"), format).unwrap();
    let follower = Engine::open(&root.join("follower"), format).unwrap();
    (root, leader, follower)
}

/// A workload touching every kind of change the formats must carry.
fn workload() -> Vec<WriteRequest> {
    vec![
        request(&[
            "CREATE TABLE products (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE, price REAL, stamp TEXT, token BLOB)",
            "CREATE TABLE audit (what TEXT)",
            "CREATE TRIGGER log_price AFTER UPDATE ON products BEGIN INSERT INTO audit VALUES ('price ' || new.name); END",
        ]),
        WriteRequest {
            statements: vec![
                Statement {
                    sql: "INSERT INTO products (name, price) VALUES (?, ?)".into(),
                    params: Params::Positional(vec![SqlValue::Text("kayak".into()), SqlValue::Real(999.5)]),
                },
                Statement {
                    sql: "INSERT INTO products (name, price) VALUES (:name, :price)".into(),
                    params: Params::Named(vec![("name".into(), SqlValue::Text("parka".into())), ("price".into(), SqlValue::Integer(250))]),
                },
            ],
            transaction: false,
        },
        // A constraint violation in the middle: only that statement is rolled back.
        request(&[
            "INSERT INTO products (name) VALUES ('sled')",
            "INSERT INTO products (name) VALUES ('kayak')",
            "INSERT INTO products (name) VALUES ('tent')",
        ]),
        // Same in a transaction: the whole request is rolled back.
        WriteRequest {
            statements: request(&["INSERT INTO products (name) VALUES ('stove')", "INSERT INTO products (name) VALUES ('parka')"]).statements,
            transaction: true,
        },
        request(&[
            "UPDATE products SET price = price * 2 WHERE name = 'parka'",
            "INSERT INTO products (name, stamp, token) VALUES ('gps', datetime('now'), randomblob(8))",
        ]),
        request(&["DELETE FROM products WHERE name = 'sled'", "ALTER TABLE products ADD COLUMN stock INTEGER DEFAULT 0", "UPDATE products SET stock = 3"]),
    ]
}

/// Executes each request as its own batch (one entry each) and applies them on the follower.
fn replay(leader: &mut Engine, follower: &mut Engine, requests: &[WriteRequest]) -> Vec<Entry> {
    let entries = execute_each(leader, requests);
    follower.apply(&entries).unwrap();
    entries
}

fn execute_each(leader: &mut Engine, requests: &[WriteRequest]) -> Vec<Entry> {
    requests.iter().filter_map(|request| leader.execute_batch(1, std::slice::from_ref(request)).unwrap().entry).collect()
}

#[test]
fn followers_applying_the_log_end_identical_to_the_leader() {
    for format in FORMATS {
        let (root, mut leader, mut follower) = leader_and_follower(&format!("identical-{}", format.name()), format);
        let entries = replay(&mut leader, &mut follower, &workload());

        // The rolled-back transaction logged nothing; every other request one entry.
        assert_eq!(entries.len(), 5, "{format:?}");
        assert_eq!(leader.last(), Position::new(1, 5));
        assert_eq!(follower.last(), Position::new(1, 5));
        let sums = leader.table_checksums().unwrap();
        assert_eq!(sums, follower.table_checksums().unwrap(), "{format:?}");
        let products = sums.iter().find(|(table, _, _)| table == "products").unwrap();
        assert_eq!(products.1, 4, "kayak, parka, tent, gps remain ({format:?})");
        // The trigger fired once per updated row on the leader, and not again on apply.
        let audit = sums.iter().find(|(table, _, _)| table == "audit").unwrap();
        assert_eq!(audit.1, 5, "1 price update + 4 stock updates ({format:?})");
        let _ = std::fs::remove_dir_all(root);
    }
}

#[test]
fn one_batch_of_many_requests_is_one_entry_with_each_requests_own_outcome() {
    for format in FORMATS {
        let (root, mut leader, mut follower) = leader_and_follower(&format!("batch-{}", format.name()), format);
        // The whole workload in one group commit: a failed transaction in the middle and a
        // schema change after it must not disturb the other requests' changes.
        let batch = leader.execute_batch(1, &workload()).unwrap();
        assert_eq!(batch.changed, vec![true, true, true, false, true, true], "{format:?}");
        let entry = batch.entry.unwrap();
        assert_eq!(entry.position(), Position::new(1, 1));
        follower.apply(&[entry]).unwrap();
        assert_eq!(leader.table_checksums().unwrap(), follower.table_checksums().unwrap(), "{format:?}");
        let _ = std::fs::remove_dir_all(root);
    }
}

#[test]
fn statement_results_report_errors_per_statement() {
    let root = scratch("results");
    let mut leader = Engine::open(&root, LogFormat::Statement).unwrap();
    let batch = leader
        .execute_batch(
            1,
            &[request(&[
                "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)",
                "INSERT INTO t (v) VALUES ('a')",
                "INSERT INTO t (v) VALUES (NULL)",
                "INSRT INTO t",
                "SELECT v FROM t",
                "UPDATE t SET v = random() WHERE id = 1",
            ])],
        )
        .unwrap();
    let results = &batch.results[0];
    assert_eq!(results[1].last_insert_id, 1);
    assert_eq!(results[1].rows_affected, 1);
    assert!(results[2].error.as_deref().unwrap().contains("NOT NULL"), "{:?}", results[2]);
    assert!(results[3].error.as_deref().unwrap().contains("syntax error"), "{:?}", results[3]);
    assert!(results[4].is_query);
    assert_eq!(results[4].values, vec![vec![SqlValue::Text("a".into())]]);
    // random() per row cannot be one literal: the statement format ships its row images.
    assert_eq!((results[5].error.as_deref(), results[5].rows_affected), (None, 1), "{:?}", results[5]);
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn reopening_recovers_the_position_and_the_data() {
    for format in FORMATS {
        let root = scratch(&format!("reopen-{}", format.name()));
        {
            let mut leader = Engine::open(&root, format).unwrap();
            for request in workload() {
                leader.execute_batch(3, &[request]).unwrap();
            }
        }
        let leader = Engine::open(&root, format).unwrap();
        assert_eq!(leader.last(), Position::new(3, 5));
        assert_eq!(leader.read_log(1, 100, 1 << 20).unwrap().unwrap().len(), 5);
        let _ = std::fs::remove_dir_all(root);
    }
}

#[test]
fn compaction_forces_a_snapshot_that_hands_over_a_consistent_state() {
    for format in FORMATS {
        let root = scratch(&format!("snapshot-{}", format.name()));
        let mut leader = Engine::open(&root.join("leader"), format).unwrap();
        execute_each(&mut leader, &workload());
        leader.compact(2, u64::MAX).unwrap();
        assert_eq!(leader.first_index(), 4);
        assert!(leader.read_log(1, 100, 1 << 20).unwrap().is_none(), "compacted entries are gone");
        assert_eq!(leader.read_log(4, 100, 1 << 20).unwrap().unwrap().len(), 2);

        let snapshot = root.join("snapshot.db");
        let position = leader.write_snapshot(&snapshot).unwrap();
        assert_eq!(position, Position::new(1, 5));
        let mut follower = Engine::open(&root.join("follower"), format).unwrap();
        assert_eq!(follower.install_snapshot(&snapshot, false).unwrap(), position);
        assert_eq!(follower.table_checksums().unwrap(), leader.table_checksums().unwrap());

        // Shipping continues from the snapshot's position.
        let more = leader.execute_batch(1, &[request(&["INSERT INTO products (name) VALUES ('rope')"])]).unwrap();
        follower.apply(&[more.entry.unwrap()]).unwrap();
        assert_eq!(follower.last(), Position::new(1, 6));
        assert_eq!(follower.table_checksums().unwrap(), leader.table_checksums().unwrap());
        let _ = std::fs::remove_dir_all(root);
    }
}

#[test]
fn an_entry_that_does_not_continue_the_log_is_refused_whole() {
    let (root, mut leader, mut follower) = leader_and_follower("gap", LogFormat::Row);
    let entries = execute_each(&mut leader, &workload());
    assert!(follower.apply(&entries[1..]).is_err());
    assert_eq!(follower.last(), Position::ZERO);
    assert!(follower.table_checksums().unwrap().is_empty());
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn a_snapshot_behind_the_follower_is_dropped_and_held_entries_are_skipped() {
    for format in [LogFormat::Row, LogFormat::Physical] {
        let (root, mut leader, mut follower) = leader_and_follower(&format!("behind-{}", format.name()), format);
        let entries = execute_each(&mut leader, &workload()[..3]);
        let snapshot = root.join("snapshot.db");
        leader.write_snapshot(&snapshot).unwrap();
        let later = execute_each(&mut leader, &workload()[4..5]);
        assert_eq!(later.len(), 1);
        follower.apply(&entries).unwrap();
        follower.apply(&later).unwrap();
        let before = follower.table_checksums().unwrap();
        // The snapshot (at 3) arrives after the follower reached 4: nothing changes.
        assert_eq!(follower.install_snapshot(&snapshot, false).unwrap(), Position::new(1, 4), "{format:?}");
        assert_eq!(follower.table_checksums().unwrap(), before);
        // Entries it already holds are skipped, not refused.
        assert_eq!(follower.apply(&later).unwrap(), Position::new(1, 4));
        let _ = std::fs::remove_dir_all(root);
    }
}

#[test]
fn statements_that_would_escape_the_logged_transaction_are_refused() {
    for format in FORMATS {
        let (root, mut leader, mut follower) = leader_and_follower(&format!("guard-{}", format.name()), format);
        let refused =
            ["COMMIT", "BEGIN", "SAVEPOINT s", "PRAGMA synchronous=OFF", "PRAGMA query_only=1", "DELETE FROM _tern_log", "ATTACH ':memory:' AS other"];
        let mut statements = vec!["CREATE TABLE t (v)"];
        statements.extend(refused);
        // Led by a comment, random() still ships as row images in the row format (the
        // statement format rewrites it): the follower must not run it again.
        statements.push("-- a client's comment\nINSERT INTO t VALUES (random())");
        let batch = leader.execute_batch(1, &[request(&statements)]).unwrap();
        for (sql, result) in refused.iter().zip(&batch.results[0][1..]) {
            assert!(result.error.is_some(), "{sql} must be refused ({format:?})");
        }
        assert_eq!(batch.results[0].last().unwrap().error, None, "{format:?}");
        follower.apply(&[batch.entry.unwrap()]).unwrap();
        assert_eq!(leader.table_checksums().unwrap(), follower.table_checksums().unwrap(), "{format:?}");
        // The log is intact and the engine keeps going.
        let next = leader.execute_batch(1, &[request(&["INSERT INTO t VALUES (2)"])]).unwrap();
        assert_eq!(next.entry.unwrap().position(), Position::new(1, 2), "{format:?}");
        let _ = std::fs::remove_dir_all(root);
    }
}

#[test]
fn create_table_as_select_with_the_clock_gives_every_replica_the_same_values() {
    // Row format ships schema statements as SQL, and the session extension does not see
    // rows of a table without a primary key: CREATE TABLE ... AS SELECT travels as SQL in
    // both formats, so its clock calls must be fixed on the leader.
    for format in FORMATS {
        let (root, mut leader, mut follower) = leader_and_follower(&format!("ctas-{}", format.name()), format);
        let entries =
            execute_each(&mut leader, &[request(&["CREATE TABLE stamps AS SELECT julianday('now') AS at, datetime('2024-06-01', 'localtime') AS local"])]);
        std::thread::sleep(std::time::Duration::from_millis(5));
        follower.apply(&entries).unwrap();
        assert_eq!(leader.table_checksums().unwrap(), follower.table_checksums().unwrap(), "{format:?}");
        // A value drawn per row cannot be fixed: refused, nothing logged.
        let batch = leader.execute_batch(1, &[request(&["CREATE TABLE draws AS SELECT random() AS n"])]).unwrap();
        assert!(batch.entry.is_none(), "{format:?}");
        let _ = std::fs::remove_dir_all(root);
    }
}

/// `/db/backup` and `/db/load`: a binary backup holds the user's tables and not tern's; the
/// statements a load of it makes, run as one write on another node, rebuild the same rows
/// there (replacing what it held), and a text dump does the same.
#[test]
fn a_backup_file_and_a_dump_rebuild_the_same_rows_elsewhere() {
    for format in FORMATS {
        let (root, mut leader, mut other) = leader_and_follower(&format!("backup-{format:?}"), format);
        for request in workload() {
            leader.execute_batch(1, &[request]).unwrap();
        }
        other.execute_batch(1, &[request(&["CREATE TABLE stale (x)", "INSERT INTO stale VALUES (1)"])]).unwrap();
        let reader = tern_storage::Reader::open(&root.join("leader")).unwrap();
        let file = root.join("backup.db");
        reader.backup_file(&file).unwrap();
        let copy = rusqlite::Connection::open(&file).unwrap();
        let tables: Vec<String> = copy
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(tables, ["audit", "products", "sqlite_sequence"], "{format:?}: tern's tables are not in a backup");
        drop(copy);

        let target_reader = tern_storage::Reader::open(&root.join("follower")).unwrap();
        let statements = target_reader.load_statements(&file).unwrap();
        let load = WriteRequest { statements: statements.iter().map(|sql| Statement::new(sql.as_str())).collect(), transaction: true };
        let batch = other.execute_batch(1, &[load]).unwrap();
        assert!(batch.results[0].iter().all(|result| result.error.is_none()), "{format:?}: {:?}", batch.results);
        let dump_here = reader.dump_sql(&[]).unwrap();
        let dump_there = target_reader.dump_sql(&[]).unwrap();
        assert_eq!(dump_here, dump_there, "{format:?}: the loaded node holds what the backup held, and nothing else");
        assert!(!dump_there.contains("stale"));

        // The text dump, loaded the same way, gives the same again.

        let mut statements = vec!["DROP TABLE products".to_string(), "DROP TABLE audit".to_string()];
        statements.extend(tern_storage::dump_to_statements(&dump_here));
        let load = WriteRequest { statements: statements.iter().map(|sql| Statement::new(sql.as_str())).collect(), transaction: true };
        let batch = other.execute_batch(1, &[load]).unwrap();
        assert!(batch.results[0].iter().all(|result| result.error.is_none()), "{format:?}: {:?}", batch.results);
        assert_eq!(target_reader.dump_sql(&[]).unwrap(), dump_here, "{format:?}");
    }
}

/// A read given a budget (the node's inline reads) answers as `query` does when it fits,
/// gives up when a statement runs past it, and leaves the connection as it was: the same
/// reader then runs the slow statement to the end under its own limits.
#[test]
fn a_read_over_its_budget_gives_up_and_the_reader_still_serves_it_in_full() {
    let root = scratch("query-within");
    let mut engine = Engine::open(&root, LogFormat::Row).unwrap();
    engine.execute_batch(1, &[request(&["CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT)", "INSERT INTO kv VALUES (1, 'one')"])]).unwrap();
    let reader = tern_storage::Reader::open(&root).unwrap();
    let by_key = [Statement::new("SELECT v FROM kv WHERE k = 1")];
    let (results, observed) = reader.query_within(&by_key, std::time::Duration::from_secs(1), true).unwrap().expect("a read by key fits in a second");
    assert_eq!(results[0].values, vec![vec![SqlValue::Text("one".into())]]);
    assert_eq!(observed, reader.query(&by_key).unwrap().1, "the same position as an ordinary read");
    assert!(observed > 0);
    // Without the position: the same answer, outside any explicit transaction.
    let (results, unread) = reader.query_within(&by_key, std::time::Duration::from_secs(1), false).unwrap().expect("fits");
    assert_eq!((results[0].values.clone(), unread), (vec![vec![SqlValue::Text("one".into())]], 0));
    assert!(reader.connection_is_idle(), "no transaction left open");
    // About ten million steps of the VM: far more than 1 µs.
    let slow = [Statement::new("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) SELECT count(*) FROM c")];
    assert!(reader.query_within(&slow, std::time::Duration::from_micros(1), true).unwrap().is_none(), "over its budget, the read gives up");
    assert!(reader.query_within(&slow, std::time::Duration::from_micros(1), false).unwrap().is_none(), "also without a position");
    assert!(reader.connection_is_idle(), "an interrupted lone statement leaves no transaction open");
    let (results, _) = reader.query(&slow).unwrap();
    assert!(results[0].error.is_none(), "the reader's own limits are back: {:?}", results[0].error);
    assert_eq!(results[0].values, vec![vec![SqlValue::Integer(3_000_000)]]);
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn a_leaders_commit_is_synced_by_sync_commits_once_and_nothing_else_goes_unsynced() {
    for format in FORMATS {
        let root = scratch(&format!("sync-{}", format.name()));
        let mut leader = Engine::open(&root, format).unwrap();
        assert!(!leader.sync_commits().unwrap(), "{format:?}: nothing committed yet");
        let executed = leader.execute_batch_while(1, &[request(&["CREATE TABLE t (v)"])], &|| true).unwrap();
        assert!(matches!(executed, tern_storage::Executed::Committed(_)), "{format:?}");
        assert!(leader.sync_commits().unwrap(), "{format:?}: the commit waited for its sync");
        assert!(!leader.sync_commits().unwrap(), "{format:?}: and needs it once");
        // A batch that does not commit leaves nothing to sync, and the next commit is
        // deferred again (the connection went back to FULL in between, else the
        // setting would stay NORMAL for a follower's applies).
        let stopped = leader.execute_batch_while(1, &[request(&["INSERT INTO t VALUES (1)"])], &|| false).unwrap();
        assert!(matches!(stopped, tern_storage::Executed::StoppedLeading), "{format:?}");
        assert!(!leader.sync_commits().unwrap(), "{format:?}");
        // execute_batch syncs on its own: durable on return, as it promises.
        leader.execute_batch(1, &[request(&["INSERT INTO t VALUES (2)"])]).unwrap();
        assert!(!leader.sync_commits().unwrap(), "{format:?}");
        drop(leader);
        let leader = Engine::open(&root, format).unwrap();
        assert_eq!(leader.last(), Position::new(1, 2), "{format:?}: both commits survive reopening");
        let _ = std::fs::remove_dir_all(root);
    }
}

#[test]
fn foreign_key_actions_run_once_on_the_leader_and_are_not_run_again_on_apply() {
    for format in FORMATS {
        let (root, mut leader, mut follower) = leader_and_follower(&format!("fk-{}", format.name()), format);
        let requests = [
            // First a schema without actions: applying needs no special care.
            request(&[
                "CREATE TABLE plain_parent (id INTEGER PRIMARY KEY)",
                "CREATE TABLE plain_child (id INTEGER PRIMARY KEY, parent REFERENCES plain_parent(id))",
            ]),
            request(&["INSERT INTO plain_parent VALUES (1)", "INSERT INTO plain_child VALUES (10, 1)"]),
            // Then actions: deleting a station cascades to its readings, renumbering one
            // renumbers its readings, and its sensors' station goes NULL.
            request(&[
                "CREATE TABLE stations (id INTEGER PRIMARY KEY, name TEXT)",
                "CREATE TABLE readings (id INTEGER PRIMARY KEY, station INTEGER REFERENCES stations(id) ON DELETE CASCADE ON UPDATE CASCADE, value REAL)",
                "CREATE TABLE sensors (id INTEGER PRIMARY KEY, station INTEGER REFERENCES stations(id) ON UPDATE SET NULL)",
            ]),
            request(&[
                "INSERT INTO stations VALUES (1, 'McMurdo'), (2, 'Palmer')",
                "INSERT INTO readings VALUES (1, 1, -20.5), (2, 1, -21.0), (3, 2, -3.5)",
                "INSERT INTO sensors VALUES (1, 2)",
            ]),
            request(&["DELETE FROM stations WHERE id = 1"]),
            request(&["UPDATE stations SET id = 3 WHERE id = 2"]),
            request(&["INSERT INTO plain_child VALUES (11, 1)"]),
        ];
        for request in &requests {
            let batch = leader.execute_batch(1, std::slice::from_ref(request)).unwrap();
            assert!(batch.results[0].iter().all(|result| result.error.is_none()), "{format:?}: {:?}", batch.results);
            follower.apply(&[batch.entry.expect("every request changes something")]).unwrap();
        }
        let sums = leader.table_checksums().unwrap();
        assert_eq!(sums, follower.table_checksums().unwrap(), "{format:?}");
        let rows = |table: &str| sums.iter().find(|(name, _, _)| name == table).map(|(_, rows, _)| *rows);
        assert_eq!(rows("readings"), Some(1), "{format:?}: the cascade removed McMurdo's two readings, once");
        assert_eq!(rows("plain_child"), Some(2), "{format:?}");
        let reader = tern_storage::Reader::open(&root.join("follower")).unwrap();
        let (results, _) = reader.query(&[Statement::new("SELECT station FROM sensors"), Statement::new("SELECT station FROM readings")]).unwrap();
        assert_eq!(results[0].values, vec![vec![SqlValue::Null]], "{format:?}: the update's SET NULL reached the follower");
        assert_eq!(results[1].values, vec![vec![SqlValue::Integer(3)]], "{format:?}: and its cascade");
        let _ = std::fs::remove_dir_all(root);
    }
}
