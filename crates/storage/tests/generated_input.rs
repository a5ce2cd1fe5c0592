//! Generated input at every door of the storage layer: any UTF-8 as SQL (through the text
//! checks, the statement rewriter, the write path of every log format and the read path),
//! any bytes as a request body and as a log entry. Never a panic, never a storage failure
//! for a client's mistake, and the engine keeps working afterwards.

use proptest::prelude::*;
use tern_core::{Entry, LogFormat};
use tern_storage::capture::statement as rewrite;
use tern_storage::{guard, parse_statements, Engine, Limits, Payload, Reader, Statement, WriteRequest};

/// SQL-shaped text: keywords, names (tern's own, SQLite's, non-ASCII), literals, quotes
/// and punctuation, in any order, so the generator reaches past the parser's first error.
fn sqlish() -> impl Strategy<Value = String> {
    let pieces = prop::sample::select(vec![
        "SELECT",
        "INSERT INTO",
        "UPDATE",
        "DELETE FROM",
        "VALUES",
        "CREATE TABLE",
        "DROP TABLE",
        "WITH RECURSIVE",
        "AS",
        "FROM",
        "WHERE",
        "SET",
        "VACUUM",
        "INTO",
        "ATTACH",
        "PRAGMA",
        "BEGIN",
        "COMMIT",
        "SAVEPOINT",
        "TEMP",
        "TRIGGER",
        "VIEW",
        "random()",
        "datetime('now')",
        "changes()",
        "last_insert_rowid()",
        "load_extension('x')",
        "t",
        "_tern_log",
        "_tern_meta",
        "sqlite_dbpage",
        "sqlite_schema",
        "Andrés",
        "日本",
        "🦀",
        "'",
        "\"",
        "`",
        "[",
        "]",
        "(",
        ")",
        ",",
        ";",
        "=",
        "*",
        "?",
        ":a",
        "1",
        "-1",
        "x'00ff'",
        "'é'",
        "--",
        "/*",
        "*/",
        " ",
        "\n",
    ]);
    prop::collection::vec(pieces, 0..24).prop_map(|pieces| pieces.join(" "))
}

fn any_sql() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), sqlish()]
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn text_checks_never_panic(sql in any_sql()) {
        let _ = guard::first_keyword(&sql);
        let _ = guard::refusal(&sql);
        let _ = guard::vacuum_into_refusal(&sql);
        let _ = rewrite::creates_table_from_select(&sql);
        let _ = rewrite::reads_the_clock(&sql);
    }

    #[test]
    fn the_statement_rewriter_never_panics(sql in any_sql(), clock_parameter in any::<bool>()) {
        let connection = rusqlite::Connection::open_in_memory().unwrap();
        connection.execute_batch("CREATE TABLE t (a, b)").unwrap();
        let _ = rewrite::make_deterministic(&connection, &sql, clock_parameter);
    }

    #[test]
    fn any_bytes_as_a_request_body_are_parsed_or_explained(body in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Err(message) = parse_statements(&body) {
            prop_assert!(!message.is_empty());
        }
    }

    #[test]
    fn any_json_shaped_body_is_parsed_or_explained(body in "[\\[\\]{}\",:0-9a-zé ]{0,64}") {
        if let Err(message) = parse_statements(body.as_bytes()) {
            prop_assert!(!message.is_empty());
        }
    }

    #[test]
    fn any_bytes_as_a_log_entry_are_refused_without_changing_the_follower(payload in prop::collection::vec(any::<u8>(), 0..128)) {
        let directory = std::env::temp_dir().join(format!("tern-generated-entry-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        let mut follower = Engine::open(&directory, LogFormat::Row).unwrap();
        let before = follower.last();
        // Bytes that happen to decode to a well-formed entry may apply; anything else is refused whole.
        if Payload::decode(&payload).is_err() {
            let entry = Entry { index: 1, epoch: 1, payload: payload.into() };
            prop_assert!(follower.apply(&[entry]).is_err());
            prop_assert_eq!(follower.last(), before);
        }
        let _ = std::fs::remove_dir_all(&directory);
    }
}

/// Many generated statements against one engine per format: each is a per-statement
/// result (an error at worst), never a storage failure, and a known write still lands
/// at the next log position afterwards.
#[test]
fn any_sql_on_the_write_and_read_paths_is_answered_and_leaves_the_engine_working() {
    for format in [LogFormat::Statement, LogFormat::Row, LogFormat::Physical] {
        let directory = std::env::temp_dir().join(format!("tern-generated-sql-{}-{}", std::process::id(), format.name()));
        let _ = std::fs::remove_dir_all(&directory);
        let mut engine = Engine::open(&directory, format).unwrap();
        // Generated recursive CTEs may never end: bound them.
        let limits = Limits { statement_timeout: std::time::Duration::from_millis(500), ..Limits::default() };
        engine.set_limits(limits);
        engine.execute_batch(1, &[WriteRequest { statements: vec![Statement::new("CREATE TABLE t (a, b)")], transaction: false }]).unwrap();
        let reader = Reader::open_with_limits(&directory, limits).unwrap();
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() });
        let engine = std::cell::RefCell::new(engine);
        let statements_run = std::cell::Cell::new(0);
        runner
            .run(&(prop::collection::vec(any_sql(), 1..4), any::<bool>()), |(sqls, transaction)| {
                let statements: Vec<Statement> = sqls.iter().map(Statement::new).collect();
                let request = WriteRequest { statements: statements.clone(), transaction };
                if tern_storage::request_shape_error(&request).is_none() {
                    let batch = engine
                        .borrow_mut()
                        .execute_batch(1, &[request])
                        .map_err(|error| TestCaseError::fail(format!("storage failure on {sqls:?}: {error}")))?;
                    prop_assert_eq!(batch.results[0].len() <= sqls.len(), true);
                }
                reader.query(&statements).map_err(|error| TestCaseError::fail(format!("read failure on {sqls:?}: {error}")))?;
                statements_run.set(statements_run.get() + sqls.len());
                Ok(())
            })
            .unwrap_or_else(|failure| panic!("{format:?}: {failure}"));
        let mut engine = engine.into_inner();
        let statements_run = statements_run.get();
        let before = engine.last();
        let batch = engine
            .execute_batch(1, &[WriteRequest { statements: vec![Statement::new("CREATE TABLE known_after_generated (x)")], transaction: false }])
            .unwrap();
        assert_eq!(
            batch.entry.map(|entry| entry.index),
            Some(before.index + 1),
            "{format:?}: the engine still writes after {statements_run} generated statements"
        );
        let _ = std::fs::remove_dir_all(&directory);
    }
}
