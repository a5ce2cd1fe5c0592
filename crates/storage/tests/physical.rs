//! The physical log format: followers applying the leader's WAL page images end with a
//! database file byte-identical to the leader's, through schema changes, large updates,
//! VACUUM, snapshots and crashes between the data and log commits.

use tern_core::{Entry, LogFormat, Position};
use tern_storage::{Engine, Reader, Statement, WriteRequest};

fn request(statements: &[&str]) -> WriteRequest {
    WriteRequest { statements: statements.iter().map(|sql| Statement::new(*sql)).collect(), transaction: false }
}

fn scratch(name: &str) -> std::path::PathBuf {
    let directory = std::env::temp_dir().join(format!("tern-physical-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&directory);
    directory
}

fn execute(leader: &mut Engine, statements: &[&str]) -> Entry {
    let batch = leader.execute_batch(1, &[request(statements)]).unwrap();
    for result in &batch.results[0] {
        assert!(result.error.is_none(), "{statements:?}: {:?}", result.error);
    }
    batch.entry.expect("the request changed the database")
}

fn workload() -> Vec<Vec<&'static str>> {
    vec![
        vec!["CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER)", "CREATE INDEX items_name ON items (name)"],
        vec!["WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 10000) INSERT INTO items (name, qty) SELECT 'item ' || x, x FROM n"],
        vec!["UPDATE items SET qty = qty + 1"],
        vec!["DELETE FROM items WHERE id > 2000"],
        vec!["VACUUM"],
        vec!["ALTER TABLE items ADD COLUMN note TEXT", "INSERT INTO items (name, qty, note) VALUES ('last', 1, randomblob(10))"],
    ]
}

fn file_bytes(directory: &std::path::Path) -> Vec<u8> {
    std::fs::read(directory.join("data.db")).unwrap()
}

#[test]
fn followers_become_byte_identical_through_ddl_updates_and_vacuum() {
    let root = scratch("identical");
    let (leader_dir, follower_dir) = (root.join("leader"), root.join("follower"));
    {
        let mut leader = Engine::open(&leader_dir, LogFormat::Physical).unwrap();
        let mut follower = Engine::open(&follower_dir, LogFormat::Physical).unwrap();
        let mut sizes = Vec::new();
        for statements in workload() {
            let entry = execute(&mut leader, &statements);
            sizes.push(std::fs::metadata(leader_dir.join("data.db")).map(|meta| meta.len()).unwrap_or(0));
            follower.apply(&[entry]).unwrap();
        }
        assert_eq!(leader.last(), Position::new(1, 6));
        assert_eq!(follower.last(), Position::new(1, 6));
        assert_eq!(follower.table_checksums().unwrap(), leader.table_checksums().unwrap());
        assert_eq!(follower.page_hashes().unwrap(), leader.page_hashes().unwrap());
    }
    // Closing checkpoints both WALs into the files, which must now be the same bytes.
    assert_eq!(file_bytes(&leader_dir), file_bytes(&follower_dir));
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn a_follower_catching_up_many_entries_at_once_still_matches_byte_for_byte() {
    let root = scratch("batched");
    let (leader_dir, follower_dir) = (root.join("leader"), root.join("follower"));
    {
        let mut leader = Engine::open(&leader_dir, LogFormat::Physical).unwrap();
        let entries: Vec<Entry> = workload().iter().map(|statements| execute(&mut leader, statements)).collect();
        let mut follower = Engine::open(&follower_dir, LogFormat::Physical).unwrap();
        follower.apply(&entries).unwrap();
        assert_eq!(follower.page_hashes().unwrap(), leader.page_hashes().unwrap());
    }
    assert_eq!(file_bytes(&leader_dir), file_bytes(&follower_dir));
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn vacuum_shrinks_the_follower_too() {
    let root = scratch("vacuum");
    let mut leader = Engine::open(&root.join("leader"), LogFormat::Physical).unwrap();
    let mut follower = Engine::open(&root.join("follower"), LogFormat::Physical).unwrap();
    for statements in &workload()[..4] {
        follower.apply(&[execute(&mut leader, statements)]).unwrap();
    }
    let before = follower.page_hashes().unwrap().len();
    follower.apply(&[execute(&mut leader, &["VACUUM"])]).unwrap();
    let after = follower.page_hashes().unwrap().len();
    assert!(after < before, "VACUUM after deleting 80% of rows shrinks the database ({before} -> {after} pages)");
    assert_eq!(follower.page_hashes().unwrap(), leader.page_hashes().unwrap());
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn a_follower_reader_keeps_its_snapshot_across_an_apply() {
    let root = scratch("snapshot-isolation");
    let mut leader = Engine::open(&root.join("leader"), LogFormat::Physical).unwrap();
    let mut follower = Engine::open(&root.join("follower"), LogFormat::Physical).unwrap();
    follower.apply(&[execute(&mut leader, &["CREATE TABLE t (v INTEGER)", "INSERT INTO t VALUES (1)"])]).unwrap();
    let reader = rusqlite::Connection::open(root.join("follower").join("data.db")).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let count = |connection: &rusqlite::Connection| -> i64 { connection.query_row("SELECT count(*) FROM t", [], |row| row.get(0)).unwrap() };
    assert_eq!(count(&reader), 1);
    follower.apply(&[execute(&mut leader, &["INSERT INTO t VALUES (2)", "INSERT INTO t VALUES (3)"])]).unwrap();
    assert_eq!(count(&reader), 1, "a read transaction sees one consistent snapshot");
    reader.execute_batch("COMMIT").unwrap();
    assert_eq!(count(&reader), 3);
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn snapshots_are_page_copies_and_catch_up_continues_after_them() {
    let root = scratch("snapshot");
    let (leader_dir, follower_dir) = (root.join("leader"), root.join("follower"));
    {
        let mut leader = Engine::open(&leader_dir, LogFormat::Physical).unwrap();
        for statements in &workload()[..3] {
            execute(&mut leader, statements);
        }
        leader.compact(1, u64::MAX).unwrap();
        assert!(leader.read_log(1, 10, 1 << 20).unwrap().is_none());
        let snapshot = root.join("snapshot.db");
        assert_eq!(leader.write_snapshot(&snapshot).unwrap(), Position::new(1, 3));
        let mut follower = Engine::open(&follower_dir, LogFormat::Physical).unwrap();
        assert_eq!(follower.install_snapshot(&snapshot, false).unwrap(), Position::new(1, 3));
        let entry = execute(&mut leader, &workload()[3]);
        follower.apply(&[entry]).unwrap();
        assert_eq!(follower.page_hashes().unwrap(), leader.page_hashes().unwrap());
        let reader = Reader::open(&follower_dir).unwrap();
        assert_eq!(reader.page_hashes().unwrap().0, Position::new(1, 4));
    }
    assert_eq!(file_bytes(&leader_dir), file_bytes(&follower_dir));
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn data_ahead_of_the_log_after_a_crash_resets_the_log_to_force_a_snapshot() {
    let root = scratch("ahead");
    let directory = root.join("leader");
    {
        let mut leader = Engine::open(&directory, LogFormat::Physical).unwrap();
        execute(&mut leader, &["CREATE TABLE t (v)"]);
        execute(&mut leader, &["INSERT INTO t VALUES (1)"]);
    }
    // Simulate a crash after the data commit of entry 2 but before its log commit.
    let log = rusqlite::Connection::open(directory.join("log.db")).unwrap();
    log.execute("DELETE FROM _tern_log WHERE idx = 2", []).unwrap();
    drop(log);
    let leader = Engine::open(&directory, LogFormat::Physical).unwrap();
    assert_eq!(leader.last(), Position::new(1, 2), "the data file knows its position");
    assert_eq!(leader.first_index(), 3);
    assert!(leader.read_log(1, 10, 1 << 20).unwrap().is_none(), "earlier entries now come from a snapshot");
    let _ = std::fs::remove_dir_all(root);
}

/// Regression: a new table created after the database grew (tern bench --formats) put a
/// root page beyond the follower's file in page 1; writing page 1 first made the next
/// page write reload that schema and fail with "invalid rootpage". Page 1 now goes last.
#[test]
fn schema_changes_pointing_past_the_end_of_the_file_apply() {
    let root = scratch("rootpage");
    let mut leader = Engine::open(&root.join("leader"), LogFormat::Physical).unwrap();
    let mut follower = Engine::open(&root.join("follower"), LogFormat::Physical).unwrap();
    let steps: [&[&str]; 4] = [
        &["CREATE TABLE single (id INTEGER PRIMARY KEY, v TEXT)", "INSERT INTO single (v) VALUES ('a')"],
        &[
            "CREATE TABLE wide (id INTEGER PRIMARY KEY, qty INTEGER)",
            "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 10000) INSERT INTO wide (qty) SELECT x FROM n",
        ],
        &["CREATE TABLE bulk (id INTEGER PRIMARY KEY, qty INTEGER)"],
        &["WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 10000) INSERT INTO bulk (qty) SELECT x FROM n"],
    ];
    for statements in steps {
        follower.apply(&[execute(&mut leader, statements)]).unwrap();
        assert_eq!(follower.page_hashes().unwrap(), leader.page_hashes().unwrap());
    }
    let _ = std::fs::remove_dir_all(root);
}

/// A snapshot is copied on its own thread and connection while the leader goes on
/// committing (past a periodic checkpoint, which must not wait for the copy's read): the
/// copy holds one consistent position, and a follower that installs it and applies the
/// entries after it ends byte-identical to the leader.
#[test]
fn a_snapshot_copied_beside_ongoing_writes_is_consistent() {
    let root = scratch("concurrent-snapshot");
    let mut leader = Engine::open(&root.join("leader"), LogFormat::Physical).unwrap();
    let mut entries = vec![execute(&mut leader, &["CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)"])];
    for _ in 0..50 {
        entries.push(execute(&mut leader, &["INSERT INTO t (v) VALUES (randomblob(3000))"]));
    }
    let (database, snapshot) = (leader.database_path(), root.join("snapshot.db"));
    let target = snapshot.clone();
    let copier = std::thread::spawn(move || tern_storage::write_snapshot_of(LogFormat::Physical, &database, &target).unwrap());
    for _ in 0..300 {
        entries.push(execute(&mut leader, &["INSERT INTO t (v) VALUES (randomblob(3000))"]));
    }
    let position = copier.join().unwrap();
    assert!(position.index >= 51, "the copy holds at least what was committed before it began: {position}");
    let mut follower = Engine::open(&root.join("follower"), LogFormat::Physical).unwrap();
    assert_eq!(follower.install_snapshot(&snapshot, false).unwrap(), position);
    let after: Vec<Entry> = entries.into_iter().filter(|entry| entry.index > position.index).collect();
    follower.apply(&after).unwrap();
    assert_eq!(follower.last(), leader.last());
    assert_eq!(follower.page_hashes().unwrap(), leader.page_hashes().unwrap(), "byte-identical after the snapshot and the entries after it");
    let _ = std::fs::remove_dir_all(root);
}

/// A transaction whose pages could not fit one log entry (so no follower could ever
/// receive it) is rolled back before it commits, with the reason; smaller writes before
/// and after it commit as usual.
#[test]
fn a_transaction_too_large_for_one_entry_is_refused_before_it_commits() {
    let root = scratch("entry-limit");
    let mut leader = Engine::open(&root.join("leader"), LogFormat::Physical).unwrap();
    leader.set_max_entry_bytes(8 << 20);
    execute(&mut leader, &["CREATE TABLE t (v BLOB)"]);
    execute(&mut leader, &["INSERT INTO t WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 250) SELECT randomblob(4000) FROM n"]);
    let before = (leader.last(), leader.page_hashes().unwrap());
    let refused = leader.execute_batch(
        1,
        &[request(&["INSERT INTO t WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 5000) SELECT randomblob(4000) FROM n"])],
    );
    let Err(error) = refused else { panic!("a 20 MB transaction is over an 8 MiB limit") };
    assert_eq!(error.kind(), tern_storage::StorageErrorKind::EntryTooLarge, "{error}");
    assert!(error.to_string().contains("limit of one physical log entry"), "{error}");
    assert_eq!((leader.last(), leader.page_hashes().unwrap()), before, "nothing of it was applied or logged");
    let entry = execute(&mut leader, &["INSERT INTO t VALUES (x'01')"]);
    assert_eq!(entry.index, before.0.index + 1, "the next write lands at the next position");

    // A VACUUM ships the whole rewritten file: over the limit, it is refused up front.
    leader.set_max_entry_bytes(512 << 10);
    let before = (leader.last(), leader.page_hashes().unwrap());
    let vacuum = leader.execute_batch(1, &[request(&["VACUUM"])]).unwrap();
    let refusal = vacuum.results[0][0].error.clone().unwrap_or_default();
    assert!(refusal.contains("VACUUM is refused") && vacuum.entry.is_none(), "{refusal}");
    assert_eq!((leader.last(), leader.page_hashes().unwrap()), before, "nothing of it was applied or logged");
    let _ = std::fs::remove_dir_all(root);
}

/// A logical format's VACUUM entry reaching a physical node (a misconfigured or hostile
/// peer) is refused whole; the node's file and log are untouched.
#[test]
fn a_logical_vacuum_entry_is_refused_by_a_physical_node() {
    let root = scratch("logical-vacuum");
    let mut follower = Engine::open(&root.join("follower"), LogFormat::Physical).unwrap();
    let before = (follower.last(), follower.page_hashes().unwrap());
    let vacuum = Entry { index: 1, epoch: 1, payload: tern_storage::Payload { changes: vec![tern_storage::Change::Vacuum] }.encode().into() };
    let error = follower.apply(&[vacuum]).expect_err("a physical node never runs a logged VACUUM").to_string();
    assert!(error.contains("physical"), "{error}");
    assert_eq!((follower.last(), follower.page_hashes().unwrap()), before);
    let _ = std::fs::remove_dir_all(root);
}
