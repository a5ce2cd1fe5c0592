//! What a client or a failing step can do to one node's storage: text in any script,
//! statements that would escape the replicated transaction or write raw pages, runaway
//! queries, huge results, and crashes inside multi-step operations. Each case checks the
//! answer and that nothing else changed.

use std::time::Duration;
use tern_core::{Entry, LogFormat, Position};
use tern_storage::{failpoint, Engine, Limits, Reader, SqlValue, Statement, WriteRequest};

const ALL_FORMATS: [LogFormat; 3] = [LogFormat::Statement, LogFormat::Row, LogFormat::Physical];

fn request(statements: &[&str]) -> WriteRequest {
    WriteRequest { statements: statements.iter().map(|sql| Statement::new(*sql)).collect(), transaction: false }
}

fn scratch(name: &str) -> std::path::PathBuf {
    let directory = std::env::temp_dir().join(format!("tern-hostile-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&directory);
    directory
}

/// Executes one request alone; returns each statement's error (None if it succeeded).
fn errors(engine: &mut Engine, statements: &[&str]) -> (Vec<Option<String>>, Option<Entry>) {
    let batch = engine.execute_batch(1, &[request(statements)]).expect("no storage failure");
    (batch.results[0].iter().map(|result| result.error.clone()).collect(), batch.entry)
}

/// A leader and a follower in `root`: requests run on the leader one at a time, and the
/// entries they log are kept for the follower.
struct Pair {
    root: std::path::PathBuf,
    leader: Engine,
    follower: Engine,
    entries: Vec<Entry>,
}

impl Pair {
    fn open(name: &str, format: LogFormat) -> Pair {
        let root = scratch(name);
        let leader = Engine::open(&root.join("leader"), format).unwrap();
        let follower = Engine::open(&root.join("follower"), format).unwrap();
        Pair { root, leader, follower, entries: Vec::new() }
    }

    /// One request holding one statement string; its results.
    fn run_all(&mut self, sql: &str) -> Vec<tern_storage::StatementResult> {
        let batch = self.leader.execute_batch(1, &[request(&[sql])]).unwrap();
        self.entries.extend(batch.entry);
        batch.results[0].clone()
    }

    /// One request holding one statement string; its (first) result.
    fn run(&mut self, sql: &str) -> tern_storage::StatementResult {
        self.run_all(sql)[0].clone()
    }

    /// The follower applies everything logged; its tables must equal the leader's.
    fn replicate(&mut self, what: &str) {
        self.follower.apply(&self.entries).unwrap();
        self.entries.clear();
        assert_eq!(self.leader.table_checksums().unwrap(), self.follower.table_checksums().unwrap(), "{what}: the follower differs");
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

#[test]
fn text_in_any_script_is_written_replicated_and_read_back() {
    let texts = ["Andrés", "日本語のテキスト", "emoji 🦀🐧", "ÅÄÖ åäö", "\u{202e}rtl", "zero\u{200b}width", "_ternés"];
    for format in ALL_FORMATS {
        let root = scratch(&format!("utf8-{}", format.name()));
        let mut leader = Engine::open(&root.join("leader"), format).unwrap();
        let mut follower = Engine::open(&root.join("follower"), format).unwrap();
        let mut entries = Vec::new();
        let (outcome, entry) = errors(&mut leader, &["CREATE TABLE t (v TEXT)", "CREATE TABLE \"Andrés_tabelle\" (v)"]);
        assert_eq!(outcome, vec![None, None], "{format:?}");
        entries.extend(entry);
        for text in texts {
            let sql = format!("INSERT INTO t VALUES ('{text}')");
            let (outcome, entry) = errors(&mut leader, &[&sql, &format!("INSERT INTO \"Andrés_tabelle\" VALUES ('{text}')")]);
            assert_eq!(outcome, vec![None, None], "{format:?} {text}");
            entries.extend(entry);
        }
        follower.apply(&entries).unwrap();
        assert_eq!(leader.table_checksums().unwrap(), follower.table_checksums().unwrap(), "{format:?}");
        let reader = Reader::open(&root.join("follower")).unwrap();
        let (results, _) = reader.query(&[Statement::new("SELECT v FROM t ORDER BY rowid")]).unwrap();
        let read: Vec<SqlValue> = results[0].values.iter().map(|row| row[0].clone()).collect();
        let expected: Vec<SqlValue> = texts.iter().map(|text| SqlValue::Text((*text).to_owned())).collect();
        assert_eq!(read, expected, "{format:?}");
        let _ = std::fs::remove_dir_all(root);
    }
}

/// Statements a client may not run, what the refusal must mention, in every format.
const REFUSED: &[(&str, &str)] = &[
    ("INSERT INTO sqlite_dbpage (pgno, data) VALUES (1, zeroblob(4096))", "sqlite_dbpage"),
    ("UPDATE sqlite_dbpage SET data = zeroblob(4096) WHERE pgno = 1", "sqlite_dbpage"),
    ("DELETE FROM sqlite_dbpage", "sqlite_dbpage"),
    ("CREATE VIRTUAL TABLE pages USING sqlite_dbpage", "sqlite_dbpage"),
    ("VACUUM INTO '/tmp/tern-hostile-escape.db'", "VACUUM INTO"),
    ("ATTACH '/tmp/tern-hostile-attach.db' AS other", "ATTACH"),
    ("SELECT load_extension('/tmp/x.so')", "load_extension"),
    ("PRAGMA writable_schema = 1", "writable_schema"),
    ("PRAGMA journal_mode = DELETE", "journal_mode"),
    ("PRAGMA synchronous(0)", "synchronous"),
    ("PRAGMA foreign_keys = ON", "foreign_keys"),
    ("CREATE TEMP TABLE scratch (x)", "temporary"),
    ("CREATE TEMPORARY VIEW tv AS SELECT 1", "temporary"),
    ("DELETE FROM _tern_log", "_tern_"),
    ("UPDATE \"_TERN_META\" SET value = 0", "_tern_"),
    ("DROP TABLE [_tern_log]", "_tern_"),
    ("CREATE INDEX sneaky ON _tern_log (epoch)", "_tern_"),
    ("WITH x AS (SELECT 1) INSERT INTO _tern_meta SELECT 'k', 1 FROM x", "_tern_"),
    ("BEGIN", "transaction"),
    ("SAVEPOINT s", "transaction"),
];

#[test]
fn statements_that_escape_the_replicated_transaction_are_refused_and_change_nothing() {
    for format in ALL_FORMATS {
        let root = scratch(&format!("refused-{}", format.name()));
        let mut leader = Engine::open(&root, format).unwrap();
        let (outcome, _) = errors(&mut leader, &["CREATE TABLE t (v TEXT)", "INSERT INTO t VALUES ('kept')"]);
        assert_eq!(outcome, vec![None, None]);
        let position = leader.last();
        let sums = leader.table_checksums().unwrap();
        for (sql, mention) in REFUSED {
            let (outcome, entry) = errors(&mut leader, &[sql]);
            let error = outcome[0].clone().unwrap_or_else(|| panic!("{format:?}: {sql} must be refused"));
            assert!(error.to_lowercase().contains(&mention.to_lowercase()), "{format:?}: {sql}: error {error:?} should mention {mention}");
            assert!(entry.is_none(), "{format:?}: {sql} logged an entry");
            assert_eq!(leader.last(), position, "{format:?}: {sql} moved the log");
            assert_eq!(leader.table_checksums().unwrap(), sums, "{format:?}: {sql} changed data");
        }
        assert!(!std::path::Path::new("/tmp/tern-hostile-escape.db").exists(), "VACUUM INTO wrote a file");
        // A trigger's body is authorized when a statement fires it: the trigger may be
        // created, but the client write that would run it is refused, so it never runs.
        let _ = errors(&mut leader, &["CREATE TRIGGER wipe AFTER INSERT ON t BEGIN DELETE FROM _tern_log; END"]);
        let position = leader.last();
        let (outcome, entry) = errors(&mut leader, &["INSERT INTO t VALUES ('fires the trigger')"]);
        assert!(outcome[0].as_deref().is_some_and(|error| error.contains("_tern_")), "{format:?}: {outcome:?}");
        assert!(entry.is_none() && leader.last() == position, "{format:?}");
        assert_eq!(leader.table_checksums().unwrap(), sums, "{format:?}: the trigger changed nothing");
        errors(&mut leader, &["DROP TRIGGER IF EXISTS wipe"]);
        let position = leader.last();
        // The engine still writes, and its own bookkeeping still works after all that.
        let (outcome, entry) = errors(&mut leader, &["INSERT INTO t VALUES ('after')", "CREATE TABLE u (x)", "INSERT INTO u VALUES (1)"]);
        assert_eq!(outcome, vec![None, None, None], "{format:?}");
        assert_eq!(entry.map(|entry| entry.position()), Some(Position::new(1, position.index + 1)), "{format:?}");
        let _ = std::fs::remove_dir_all(root);
    }
}

#[test]
fn readers_refuse_attach_and_connection_pragmas_and_still_read_tern_tables() {
    let root = scratch("reader");
    let mut leader = Engine::open(&root, LogFormat::Row).unwrap();
    errors(&mut leader, &["CREATE TABLE t (v)", "INSERT INTO t VALUES (1)"]);
    let reader = Reader::open(&root).unwrap();
    for (sql, mention) in [
        ("ATTACH '/etc/hostname' AS h", "ATTACH"),
        ("PRAGMA query_only = 0", "query_only"),
        ("SELECT load_extension('x')", "load_extension"),
        ("PRAGMA wal_checkpoint", "wal_checkpoint"),
    ] {
        let (results, _) = reader.query(&[Statement::new(sql)]).unwrap();
        let error = results[0].error.clone().unwrap_or_else(|| panic!("{sql} must be refused"));
        assert!(error.contains(mention), "{sql}: {error}");
    }
    let (results, _) =
        reader.query(&[Statement::new("SELECT count(*) FROM _tern_log"), Statement::new("PRAGMA table_info(t)"), Statement::new("SELECT v FROM t")]).unwrap();
    assert!(results.iter().all(|result| result.error.is_none()), "{results:?}");
    let _ = std::fs::remove_dir_all(root);
}

const RUNAWAY: &str = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";

#[test]
fn a_runaway_query_is_stopped_at_its_deadline_and_the_reader_serves_the_next() {
    let root = scratch("runaway-read");
    let mut leader = Engine::open(&root, LogFormat::Statement).unwrap();
    errors(&mut leader, &["CREATE TABLE t (v)", "INSERT INTO t VALUES (1)"]);
    let limits = Limits { statement_timeout: Duration::from_millis(200), ..Limits::default() };
    let reader = Reader::open_with_limits(&root, limits).unwrap();
    let (results, _) = reader.query(&[Statement::new(RUNAWAY), Statement::new("SELECT v FROM t")]).unwrap();
    let error = results[0].error.clone().expect("the runaway query is stopped");
    assert!(error.contains("200 ms") && error.contains("--query-timeout-ms"), "{error}");
    assert!(results[1].error.is_none(), "the next statement runs: {:?}", results[1]);
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn a_runaway_write_fails_its_group_commit_without_wedging_the_writer() {
    for format in ALL_FORMATS {
        let root = scratch(&format!("runaway-write-{}", format.name()));
        let mut leader = Engine::open(&root, format).unwrap();
        errors(&mut leader, &["CREATE TABLE t (v)"]);
        leader.set_limits(Limits { statement_timeout: Duration::from_millis(200), ..Limits::default() });
        let position = leader.last();
        let sums = leader.table_checksums().unwrap();
        let runaway = "INSERT INTO t WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c";
        let error = leader.execute_batch(1, &[request(&["INSERT INTO t VALUES ('other request')"]), request(&[runaway])]).unwrap_err().to_string();
        assert!(error.contains("--query-timeout-ms") && error.contains("retry"), "{format:?}: {error}");
        assert_eq!(leader.last(), position, "{format:?}");
        assert_eq!(leader.table_checksums().unwrap(), sums, "{format:?}: nothing of the group was kept");
        // Not wedged: no transaction was left open.
        let (outcome, entry) = errors(&mut leader, &["INSERT INTO t VALUES ('next')"]);
        assert_eq!(outcome, vec![None], "{format:?}");
        assert_eq!(entry.map(|entry| entry.position()), Some(Position::new(1, position.index + 1)), "{format:?}");
        let _ = std::fs::remove_dir_all(root);
    }
}

#[test]
fn results_over_the_size_limit_are_refused_with_a_clear_error() {
    let root = scratch("result-size");
    let mut leader = Engine::open(&root, LogFormat::Row).unwrap();
    errors(
        &mut leader,
        &["CREATE TABLE t (v)", "INSERT INTO t WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000) SELECT x FROM c"],
    );
    let reader = Reader::open_with_limits(&root, Limits { max_result_bytes: 4096, ..Limits::default() }).unwrap();
    let (results, _) = reader.query(&[Statement::new("SELECT v, 'padding padding' FROM t"), Statement::new("SELECT v FROM t LIMIT 10")]).unwrap();
    let error = results[0].error.clone().expect("too large");
    assert!(error.contains("--max-result-bytes") && error.contains("LIMIT"), "{error}");
    assert_eq!(results[1].values.len(), 10);
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn vacuum_with_other_statements_is_one_clear_error_and_nothing_runs() {
    for format in ALL_FORMATS {
        let root = scratch(&format!("vacuum-batch-{}", format.name()));
        let mut leader = Engine::open(&root, format).unwrap();
        errors(&mut leader, &["CREATE TABLE t (v)"]);
        let position = leader.last();
        let shaped = request(&["INSERT INTO t VALUES (1)", "VACUUM"]);
        assert!(tern_storage::request_shape_error(&shaped).is_some_and(|error| error.contains("alone")));
        let (outcome, entry) = errors(&mut leader, &["INSERT INTO t VALUES (1)", "VACUUM"]);
        assert!(outcome.iter().all(|error| error.as_deref().is_some_and(|error| error.contains("alone"))), "{format:?}: {outcome:?}");
        assert!(entry.is_none(), "{format:?}: nothing is logged");
        assert_eq!(leader.last(), position, "{format:?}");
        let _ = std::fs::remove_dir_all(root);
    }
}

/// An old leader's node (`stale`) wrote entries 3 and 4 in epoch 1 that the new leader
/// never had; the new leader wrote its own 3 and 4 in epoch 2. Rolling `stale` back to 2
/// and installing the new leader's snapshot is cut short after the rollback store is
/// written, as a crash there would: reopened, the node is as it was (diverged entries and
/// their effects together), and the retry keeps each rolled-back entry once.
#[test]
fn a_crash_between_rollback_and_snapshot_install_restarts_consistent() {
    for format in [LogFormat::Statement, LogFormat::Row] {
        let root = scratch(&format!("rollback-crash-{}", format.name()));
        let mut leader = Engine::open(&root.join("leader"), format).unwrap();
        let mut stale = Engine::open(&root.join("stale"), format).unwrap();
        let common: Vec<Entry> = [request(&["CREATE TABLE t (v)"]), request(&["INSERT INTO t VALUES ('both')"])]
            .iter()
            .map(|request| leader.execute_batch(1, std::slice::from_ref(request)).unwrap().entry.unwrap())
            .collect();
        stale.apply(&common).unwrap();
        for text in ["stale a", "stale b"] {
            stale.execute_batch(1, &[request(&[&format!("INSERT INTO t VALUES ('{text}')")])]).unwrap();
        }
        for text in ["new a", "new b"] {
            leader.execute_batch(2, &[request(&[&format!("INSERT INTO t VALUES ('{text}')")])]).unwrap();
        }
        let stale_sums = stale.table_checksums().unwrap();
        let snapshot = root.join("snapshot.db");
        assert_eq!(leader.write_snapshot(&snapshot).unwrap(), Position::new(2, 4));

        failpoint::arm("rollback-kept-before-install");
        let outcome = stale.roll_back_and_install(2, &snapshot);
        failpoint::disarm_all();
        assert!(outcome.is_err(), "{format:?}: the failpoint stops the operation");
        drop(stale);
        let mut stale = Engine::open(&root.join("stale"), format).unwrap();
        assert_eq!(stale.last(), Position::new(1, 4), "{format:?}: reopened as it was");
        assert_eq!(stale.table_checksums().unwrap(), stale_sums, "{format:?}: data and log still agree");

        let (rolled_back, position) = stale.roll_back_and_install(2, &snapshot).unwrap();
        assert_eq!((rolled_back, position), (2, Position::new(2, 4)), "{format:?}");
        assert_eq!(stale.table_checksums().unwrap(), leader.table_checksums().unwrap(), "{format:?}");
        let kept = tern_storage::RollbackStore::open(&root.join("stale")).unwrap().list().unwrap();
        let kept: Vec<(u64, u64)> = kept.iter().map(|entry| (entry.epoch, entry.index)).collect();
        assert_eq!(kept, vec![(1, 3), (1, 4)], "{format:?}: each rolled-back entry kept once");
        let _ = std::fs::remove_dir_all(root);
    }
}

/// Physical format: a follower commits an entry's pages, then the entry to its log. A
/// crash between the two leaves the data ahead of the log; reopened, the log restarts
/// after the data's position and later entries apply.
#[test]
fn a_physical_crash_between_data_and_log_commit_restarts_consistent() {
    let root = scratch("physical-crash");
    let mut leader = Engine::open(&root.join("leader"), LogFormat::Physical).unwrap();
    let mut follower = Engine::open(&root.join("follower"), LogFormat::Physical).unwrap();
    let entries: Vec<Entry> = ["CREATE TABLE t (v)", "INSERT INTO t VALUES (1)", "INSERT INTO t VALUES (2)"]
        .iter()
        .map(|sql| leader.execute_batch(1, &[request(&[sql])]).unwrap().entry.unwrap())
        .collect();
    follower.apply(&entries[..1]).unwrap();
    failpoint::arm("physical-apply-between-data-and-log");
    assert!(follower.apply(&entries[1..2]).is_err());
    failpoint::disarm_all();
    drop(follower);
    let mut follower = Engine::open(&root.join("follower"), LogFormat::Physical).unwrap();
    assert_eq!(follower.last(), Position::new(1, 2), "the data's own position");
    assert_eq!(follower.first_index(), 3, "the log restarts after the data");
    follower.apply(&entries[2..]).unwrap();
    assert_eq!(follower.last(), Position::new(1, 3));
    assert_eq!(follower.page_hashes().unwrap(), leader.page_hashes().unwrap(), "byte-identical to the leader");
    let _ = std::fs::remove_dir_all(root);
}

#[test]
fn a_batch_whose_leader_stopped_leading_before_commit_changes_nothing() {
    for format in ALL_FORMATS {
        let root = scratch(&format!("lease-lost-{}", format.name()));
        let mut leader = Engine::open(&root, format).unwrap();
        errors(&mut leader, &["CREATE TABLE t (v)"]);
        let position = leader.last();
        let sums = leader.table_checksums().unwrap();
        let outcome = leader.execute_batch_while(1, &[request(&["INSERT INTO t VALUES (1)"])], &|| false).unwrap();
        assert!(matches!(outcome, tern_storage::Executed::StoppedLeading), "{format:?}: {outcome:?}");
        assert_eq!(leader.last(), position, "{format:?}");
        assert_eq!(leader.table_checksums().unwrap(), sums, "{format:?}");
        let (outcome, entry) = errors(&mut leader, &["INSERT INTO t VALUES (2)"]);
        assert_eq!(outcome, vec![None], "{format:?}: not wedged");
        assert_eq!(entry.map(|entry| entry.index), Some(position.index + 1), "{format:?}");
        let _ = std::fs::remove_dir_all(root);
    }
}

/// A follower behind the leader, and the leader's snapshot file, in `root`.
fn follower_behind_a_snapshot(root: &std::path::Path, format: LogFormat) -> (Engine, Engine, std::path::PathBuf) {
    let mut leader = Engine::open(&root.join("leader"), format).unwrap();
    let mut follower = Engine::open(&root.join("follower"), format).unwrap();
    let first = leader.execute_batch(1, &[request(&["CREATE TABLE t (v)", "INSERT INTO t VALUES ('old')"])]).unwrap().entry.unwrap();
    follower.apply(&[first]).unwrap();
    for text in ["a", "b", "c"] {
        leader.execute_batch(1, &[request(&[&format!("INSERT INTO t VALUES ('{text}')")])]).unwrap();
    }
    let snapshot = root.join("snapshot.db");
    assert_eq!(leader.write_snapshot(&snapshot).unwrap(), Position::new(1, 4));
    (leader, follower, snapshot)
}

/// Snapshot install, cut short after the old WAL is folded in and removed but before the
/// snapshot is renamed into place: reopened, the follower holds its old state whole.
#[test]
fn a_crash_before_the_snapshot_rename_restarts_on_the_old_database() {
    for format in ALL_FORMATS {
        let root = scratch(&format!("install-crash-{}", format.name()));
        let (leader, follower, snapshot) = follower_behind_a_snapshot(&root, format);
        let before = (follower.last(), follower.table_checksums().unwrap());
        let mut follower = follower;
        failpoint::arm("snapshot-install-before-rename");
        assert!(follower.install_snapshot(&snapshot, false).is_err());
        failpoint::disarm_all();
        drop(follower);
        let mut follower = Engine::open(&root.join("follower"), format).unwrap();
        assert_eq!((follower.last(), follower.table_checksums().unwrap()), before, "{format:?}: the old database, whole");
        assert_eq!(follower.install_snapshot(&snapshot, false).unwrap(), Position::new(1, 4), "{format:?}: the retry installs");
        assert_eq!(follower.table_checksums().unwrap(), leader.table_checksums().unwrap(), "{format:?}");
        let _ = std::fs::remove_dir_all(root);
    }
}

/// Physical format: the snapshot is in place but the old log is not yet reset; reopened,
/// the log restarts after the snapshot's position and the next entry applies.
#[test]
fn a_physical_crash_before_the_log_reset_restarts_at_the_snapshot() {
    let root = scratch("install-log-crash");
    let (mut leader, mut follower, snapshot) = follower_behind_a_snapshot(&root, LogFormat::Physical);
    failpoint::arm("snapshot-install-before-log-reset");
    assert!(follower.install_snapshot(&snapshot, false).is_err());
    failpoint::disarm_all();
    drop(follower);
    let mut follower = Engine::open(&root.join("follower"), LogFormat::Physical).unwrap();
    assert_eq!(follower.last(), Position::new(1, 4), "the snapshot's own position");
    assert_eq!(follower.first_index(), 5, "the old log was reset at open");
    let next = leader.execute_batch(1, &[request(&["INSERT INTO t VALUES ('after')"])]).unwrap().entry.unwrap();
    follower.apply(&[next]).unwrap();
    assert_eq!(follower.page_hashes().unwrap(), leader.page_hashes().unwrap(), "byte-identical to the leader");
    let _ = std::fs::remove_dir_all(root);
}

/// `last_insert_rowid()`, `changes()` and `total_changes()` in later requests answer as
/// SQLite would a client alone on the connection, not with tern's log bookkeeping; and
/// followers store the same values.
#[test]
fn connection_state_functions_see_the_clients_writes_not_terns_bookkeeping() {
    for format in ALL_FORMATS {
        let mut pair = Pair::open(&format!("connection-state-{}", format.name()), format);
        pair.run("CREATE TABLE a (x)");
        pair.run("CREATE TABLE b (x)");
        assert_eq!(pair.run("INSERT INTO a VALUES (1)").last_insert_id, 1, "{format:?}");
        assert_eq!(pair.run("INSERT INTO a VALUES (2)").last_insert_id, 2, "{format:?}");
        pair.run("INSERT INTO b VALUES (last_insert_rowid())");
        let update = pair.run("UPDATE a SET x = x + 10");
        assert_eq!((update.rows_affected, update.last_insert_id), (2, 1), "{format:?}: 2 rows; the last insert was b's row 1");
        let state = pair.run("SELECT changes(), last_insert_rowid(), total_changes()");
        assert_eq!(state.values, vec![vec![SqlValue::Integer(2), SqlValue::Integer(1), SqlValue::Integer(5)]], "{format:?}");
        let stored = pair.run("SELECT x FROM b");
        assert_eq!(stored.values, vec![vec![SqlValue::Integer(2)]], "{format:?}: a's last row id, not the log's");
        pair.replicate(&format!("{format:?}"));
    }
}

/// Several statements in one string run in order, as SQLite and rqlite run them, in
/// every format; trigger bodies keep their semicolons; followers end identical.
#[test]
fn several_statements_in_one_string_run_in_order_and_replicate() {
    for format in ALL_FORMATS {
        let mut pair = Pair::open(&format!("multi-{}", format.name()), format);
        let results = pair.run_all("CREATE TABLE m (x); INSERT INTO m VALUES (1);\n INSERT INTO m VALUES (2) -- two rows");
        assert_eq!(results.len(), 1, "{format:?}: one result per statement string");
        assert_eq!((results[0].error.clone(), results[0].rows_affected, results[0].last_insert_id), (None, 2, 2), "{format:?}");
        let trigger = "CREATE TABLE log (v); \
             CREATE TRIGGER tr AFTER INSERT ON m BEGIN \
               INSERT INTO log VALUES (CASE WHEN new.x > 1 THEN 'big; really' END); INSERT INTO log VALUES ('x'); \
             END; INSERT INTO m VALUES (5);";
        assert_eq!(pair.run(trigger).error, None, "{format:?}");
        let failing = pair.run("INSERT INTO m VALUES (7); INSERT INTO nope VALUES (1); INSERT INTO m VALUES (8)");
        assert!(failing.error.as_deref().is_some_and(|error| error.contains("no such table: nope")), "{format:?}: {failing:?}");
        let with_params = WriteRequest {
            statements: vec![Statement {
                sql: "INSERT INTO m VALUES (?); INSERT INTO m VALUES (?)".into(),
                params: tern_storage::Params::Positional(vec![SqlValue::Integer(1), SqlValue::Integer(2)]),
            }],
            transaction: false,
        };
        let refused = pair.leader.execute_batch(1, &[with_params]).unwrap();
        assert!(refused.results[0][0].error.as_deref().is_some_and(|error| error.contains("one statement")), "{format:?}");
        let rows = pair.run("SELECT x FROM m ORDER BY rowid");
        let expected: Vec<Vec<SqlValue>> = [1, 2, 5, 7].iter().map(|x| vec![SqlValue::Integer(*x)]).collect();
        assert_eq!(rows.values, expected, "{format:?}: 7 ran before the failure, 8 did not");
        pair.replicate(&format!("{format:?}"));
        let reader = Reader::open(&pair.root.join("follower")).unwrap();
        let (results, _) = reader.query(&[Statement::new("SELECT 1; SELECT count(*) FROM log")]).unwrap();
        assert_eq!(results[0].values, vec![vec![SqlValue::Integer(4)]], "{format:?}: the last statement's rows (the trigger fired for 5 and 7)");
        let (results, _) = reader.query(&[Statement::new("SELECT 1; DELETE FROM m")]).unwrap();
        assert!(results[0].error.as_deref().is_some_and(|error| error.contains("attempt to change")), "{format:?}");
    }
}

/// `SELECT rowid, x FROM vac` on `engine`, in rowid order.
fn vac_rows(engine: &Engine) -> Vec<Vec<SqlValue>> {
    let reader = Reader::open(engine.directory()).unwrap();
    reader.query(&[Statement::new("SELECT rowid, x FROM vac ORDER BY rowid")]).unwrap().0[0].values.clone()
}

fn integers(rows: &[[i64; 2]]) -> Vec<Vec<SqlValue>> {
    rows.iter().map(|row| row.iter().map(|value| SqlValue::Integer(*value)).collect()).collect()
}

/// Issue 11's case: VACUUM renumbers the rowids of a table without an INTEGER PRIMARY KEY
/// once rows were deleted. Logical formats log it and every replica runs it, so a later
/// `WHERE rowid = 2` means the same row everywhere.
#[test]
fn vacuum_is_replicated_with_the_rowids_it_renumbers_in_logical_formats() {
    for format in [LogFormat::Statement, LogFormat::Row] {
        let mut pair = Pair::open(&format!("vacuum-rowids-{}", format.name()), format);
        pair.run("CREATE TABLE vac (x)");
        pair.run("CREATE TABLE keyed (id INTEGER PRIMARY KEY, x)");
        pair.run("INSERT INTO vac VALUES (1), (2), (3), (4)");
        pair.run("INSERT INTO keyed (x) VALUES (1), (2), (3)");
        pair.run("DELETE FROM keyed WHERE id = 2");
        pair.run("DELETE FROM vac WHERE x IN (1, 3)");
        pair.replicate(&format!("{format:?} before VACUUM"));
        assert_eq!(pair.run("VACUUM").error, None, "{format:?}");
        assert_eq!(pair.entries.len(), 1, "{format:?}: VACUUM is one log entry");
        assert_eq!(vac_rows(&pair.leader), integers(&[[1, 2], [2, 4]]), "{format:?}: the leader renumbered vac");
        assert_eq!(pair.run("UPDATE vac SET x = x * 10 WHERE rowid = 2").error, None);
        pair.replicate(&format!("{format:?} after VACUUM"));
        assert_eq!(vac_rows(&pair.leader), integers(&[[1, 2], [2, 40]]), "{format:?}");
        assert_eq!(vac_rows(&pair.follower), vac_rows(&pair.leader), "{format:?}: rowids identical on the follower");
        assert_eq!(pair.follower.last(), pair.leader.last(), "{format:?}");
        // Not VACUUM's business: a bad schema name is SQLite's error, and nothing is logged.
        let refused = pair.run("VACUUM nowhere");
        assert!(refused.error.as_deref().is_some_and(|error| error.contains("nowhere")), "{format:?}: {refused:?}");
        assert!(pair.entries.is_empty(), "{format:?}: nothing logged for a VACUUM that does not prepare");
    }
}

/// A crash between a VACUUM's log commit and its run (on the leader, or on a follower
/// applying it): the reopened node runs it, so its rowids match the log it holds.
#[test]
fn a_crash_between_logging_a_vacuum_and_running_it_restarts_vacuumed() {
    for format in [LogFormat::Statement, LogFormat::Row] {
        let mut pair = Pair::open(&format!("vacuum-crash-{}", format.name()), format);
        pair.run("CREATE TABLE vac (x)");
        pair.run("INSERT INTO vac VALUES (1), (2), (3), (4)");
        pair.run("DELETE FROM vac WHERE x IN (1, 3)");
        pair.replicate(&format!("{format:?}"));
        failpoint::arm("vacuum-logged-before-run");
        let interrupted = pair.run("VACUUM");
        failpoint::disarm_all();
        assert!(interrupted.error.as_deref().is_some_and(|error| error.contains("logged")), "{format:?}: {interrupted:?}");
        assert_eq!(vac_rows(&pair.leader), integers(&[[2, 2], [4, 4]]), "{format:?}: not run yet");
        let leader_at = pair.root.join("leader");
        pair.leader = Engine::open(&pair.root.join("scratch-leader"), format).unwrap();
        let leader = Engine::open(&leader_at, format).unwrap();
        assert_eq!(vac_rows(&leader), integers(&[[1, 2], [2, 4]]), "{format:?}: the reopened leader ran the logged VACUUM");
        pair.leader = leader;

        failpoint::arm("vacuum-logged-before-run");
        assert!(pair.follower.apply(&pair.entries).is_err(), "{format:?}");
        failpoint::disarm_all();
        let follower_at = pair.root.join("follower");
        pair.follower = Engine::open(&pair.root.join("scratch-follower"), format).unwrap();
        pair.follower = Engine::open(&follower_at, format).unwrap();
        assert_eq!(pair.follower.last(), pair.leader.last(), "{format:?}: the VACUUM entry is in the follower's log");
        // Applying the same entries again is a no-op: they are held.
        pair.replicate(&format!("{format:?} after restarts"));
        assert_eq!(vac_rows(&pair.follower), integers(&[[1, 2], [2, 4]]), "{format:?}");
    }
}

/// Statement format: what the text rewriter cannot see (a view's random(), a time read
/// without 'now', random() per row) ships as row images, so followers store the leader's
/// values; a table named `changes` and a CTE named `random` are names, not calls.
#[test]
fn statement_format_ships_rows_for_what_text_cannot_make_deterministic() {
    let mut pair = Pair::open("mixed", LogFormat::Statement);
    for sql in [
        "CREATE TABLE t (v)",
        "CREATE VIEW rv AS SELECT random() AS r",
        "INSERT INTO t SELECT r FROM rv",
        "INSERT INTO t VALUES (strftime('%Y-%m-%d %H:%M:%f'))",
        "INSERT INTO t VALUES (julianday('n' || 'ow'))",
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5) INSERT INTO t SELECT random() FROM c",
        "UPDATE t SET v = randomblob(4) WHERE rowid > 6",
        "CREATE TABLE changes (x)",
        "INSERT INTO changes (x) VALUES (1)",
        "WITH random(x) AS (SELECT 2) INSERT INTO changes SELECT x FROM random",
        // Once the largest rowid is taken, SQLite picks new rowids at random.
        "CREATE TABLE full_up (v)",
        "INSERT INTO full_up (rowid, v) VALUES (9223372036854775807, 'top')",
        "INSERT INTO full_up (v) VALUES ('a'), ('b'), ('c')",
    ] {
        assert_eq!(pair.run(sql).error, None, "{sql}");
    }
    let shipped_rows = pair
        .entries
        .iter()
        .filter(|entry| tern_storage::Payload::decode(&entry.payload).unwrap().changes.iter().any(|change| matches!(change, tern_storage::Change::Rows(_))))
        .count();
    assert_eq!(shipped_rows, 6, "the view, the two computed times, the per-row random(), randomblob() and the random rowids went as rows");
    pair.replicate("the follower stores the leader's values");
}

/// Rowids are part of what replicas agree on, also for tables keyed by a non-integer
/// primary key (the row format ships those rows by key, not by rowid).
#[test]
fn rowids_match_on_followers_for_tables_with_any_key() {
    for format in ALL_FORMATS {
        let mut pair = Pair::open(&format!("rowids-{}", format.name()), format);
        pair.run("CREATE TABLE p (k TEXT PRIMARY KEY, v)");
        pair.run("CREATE TABLE loose (v)");
        // Keyed, but without a rowid: its key is its identity, nothing to carry.
        pair.run("CREATE TABLE bare (k TEXT PRIMARY KEY, v) WITHOUT ROWID");
        assert_eq!(pair.run("INSERT INTO bare VALUES ('b', 1), ('a', 2)").error, None, "{format:?}");
        for batch in ["('m', 1), ('b', 2), ('z', 3), ('a', 4)", "('q', 5), ('c', 6)"] {
            pair.run(&format!("INSERT INTO p VALUES {batch}"));
        }
        pair.run("INSERT INTO loose VALUES ('x'), ('y')");
        pair.run("DELETE FROM p WHERE k = 'b'");
        pair.run("INSERT INTO p VALUES ('n', 7)");
        pair.replicate(&format!("{format:?}"));
        for sql in ["UPDATE p SET rowid = 100 WHERE k = 'm'", "UPDATE p SET oid = oid + 1000, v = v * 2"] {
            let outcome = pair.run(sql);
            if format == LogFormat::Row {
                assert!(outcome.error.as_deref().is_some_and(|error| error.contains("PRIMARY KEY")), "{format:?}: {sql}: {outcome:?}");
            } else {
                assert_eq!(outcome.error, None, "{format:?}: {sql}");
            }
            pair.replicate(&format!("{format:?} after {sql}"));
        }
        for sql in ["UPDATE loose SET rowid = 7 WHERE v = 'x'", "UPDATE p SET v = v + 1", "VACUUM", "INSERT INTO p VALUES ('zz', 9)"] {
            assert_eq!(pair.run(sql).error, None, "{format:?}: {sql}");
            pair.replicate(&format!("{format:?} after {sql}"));
        }
        // A NULL key: SQLite allows it in a rowid table; row images would drop the row.
        for sql in ["INSERT INTO p VALUES (NULL, 10), (NULL, 11)", "UPDATE p SET k = NULL WHERE k = 'zz'"] {
            let outcome = pair.run(sql);
            if format == LogFormat::Row {
                assert!(outcome.error.as_deref().is_some_and(|error| error.contains("NULL in its PRIMARY KEY")), "{format:?}: {sql}: {outcome:?}");
            } else {
                assert_eq!(outcome.error, None, "{format:?}: {sql}");
            }
            pair.replicate(&format!("{format:?} after {sql}"));
        }
        let rowids = |engine: &Engine| {
            let reader = Reader::open(engine.directory()).unwrap();
            reader.query(&[Statement::new("SELECT rowid, k FROM p ORDER BY rowid")]).unwrap().0[0].values.clone()
        };
        assert_eq!(rowids(&pair.follower), rowids(&pair.leader), "{format:?}");
    }
}

/// Replica checksums cover every user table: `_` is a LIKE wildcard, so a filter on
/// `LIKE '_tern_%'` would also have hidden tables such as `eternity` from comparison.
#[test]
fn checksums_cover_tables_whose_names_only_look_like_terns() {
    let mut pair = Pair::open("checksum-names", LogFormat::Row);
    pair.run("CREATE TABLE eternity (v)");
    pair.run("CREATE TABLE sqlitely (v)");
    pair.replicate("row");
    let tables: Vec<String> = pair.leader.table_checksums().unwrap().into_iter().map(|(table, _, _)| table).collect();
    assert_eq!(tables, vec!["eternity".to_owned(), "sqlitely".to_owned()]);
}

/// A full disk is known by SQLite's result code (and the OS error), not by message text.
#[test]
fn a_full_database_is_a_typed_disk_full_error() {
    let connection = rusqlite::Connection::open_in_memory().unwrap();
    connection.execute_batch("PRAGMA max_page_count = 3; CREATE TABLE t (v)").unwrap();
    let full = connection.execute("INSERT INTO t VALUES (randomblob(100000))", []).unwrap_err();
    assert!(tern_storage::StorageError::from(full).is_disk_full());
    let no_space = std::io::Error::from(std::io::ErrorKind::StorageFull);
    assert_eq!(tern_storage::StorageError::from(no_space).kind(), tern_storage::StorageErrorKind::DiskFull);
    let other = tern_storage::StorageError::from(connection.execute("INSERT INTO missing VALUES (1)", []).unwrap_err());
    assert!(!other.is_disk_full(), "{other}");
}
