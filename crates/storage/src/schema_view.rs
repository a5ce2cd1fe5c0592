//! What a client's read of `sqlite_master` (or `sqlite_schema`) sees: the user's objects,
//! not tern's own.
//!
//! tern keeps its log and bookkeeping (`_tern_*`) in the same database file as the user's
//! tables, so that a write and its log entry commit together. They are not the user's
//! schema, and the tools that list a schema (rqlite's shell `.tables` and `.schema`, GUI
//! browsers, ORMs' introspection) read `sqlite_master`. So on the read path a table source
//! naming it is replaced with a subquery that leaves tern's objects out.
//!
//! Only read-only statements are rewritten: a write's text is what followers replay, and
//! it must run the same everywhere.

use crate::capture::statement::{tokenize, Token, TokenKind};
use std::borrow::Cow;

/// The user's part of the schema table. `LIKE` is ASCII-case-insensitive, as is the
/// `_tern_` prefix rule ([`crate::guard`]).
const USER_SCHEMA: &str = "SELECT * FROM main.sqlite_master \
     WHERE name NOT LIKE '\\_tern\\_%' ESCAPE '\\' AND tbl_name NOT LIKE '\\_tern\\_%' ESCAPE '\\'";

/// The same with the schema table's rowid as a column, for statements that order or filter
/// by it (rqlite's `.schema` orders by rowid; a subquery has no rowid of its own).
const USER_SCHEMA_WITH_ROWID: &str = "SELECT rowid AS rowid, * FROM main.sqlite_master \
     WHERE name NOT LIKE '\\_tern\\_%' ESCAPE '\\' AND tbl_name NOT LIKE '\\_tern\\_%' ESCAPE '\\'";

/// Words that may follow a table source and are not an alias for it.
const CLAUSE_WORDS: &[&str] = &[
    "WHERE",
    "ORDER",
    "GROUP",
    "LIMIT",
    "JOIN",
    "LEFT",
    "RIGHT",
    "FULL",
    "INNER",
    "CROSS",
    "NATURAL",
    "OUTER",
    "ON",
    "USING",
    "UNION",
    "EXCEPT",
    "INTERSECT",
    "HAVING",
    "WINDOW",
    "AS",
    "INDEXED",
    "NOT",
    "RETURNING",
];

/// `sql` with every table source that names the main schema table (`sqlite_master`,
/// `sqlite_schema`, `main.` or not, quoted or not) replaced by the user's part of it.
/// Other uses of the names (a column qualifier, `temp.sqlite_master`, text in a string)
/// are left alone.
pub fn hide_internal_schema(sql: &str) -> Cow<'_, str> {
    if !sql.as_bytes().windows(7).any(|window| window.eq_ignore_ascii_case(b"sqlite_")) {
        return Cow::Borrowed(sql);
    }
    let tokens: Vec<Token> = tokenize(sql).into_iter().filter(|token| token.kind != TokenKind::Space).collect();
    let text = |index: usize| tokens.get(index).map_or("", |token: &Token| &sql[token.start..token.end]);
    let names_rowid = tokens
        .iter()
        .any(|token| token.kind == TokenKind::Word && ["rowid", "oid", "_rowid_"].iter().any(|name| sql[token.start..token.end].eq_ignore_ascii_case(name)));
    let source = if names_rowid { USER_SCHEMA_WITH_ROWID } else { USER_SCHEMA };
    let mut rewritten = String::with_capacity(sql.len() + source.len());
    let mut copied = 0;
    for (index, token) in tokens.iter().enumerate() {
        let name = unquoted(text(index));
        if !(name.eq_ignore_ascii_case("sqlite_master") || name.eq_ignore_ascii_case("sqlite_schema")) {
            continue;
        }
        if matches!(text(index + 1), "." | "(") {
            continue;
        }
        // `main.sqlite_master` is the same table; `temp.sqlite_master` is another.
        let (start, before) = if index >= 2 && text(index - 1) == "." {
            if !unquoted(text(index - 2)).eq_ignore_ascii_case("main") {
                continue;
            }
            (tokens[index - 2].start, index.checked_sub(3))
        } else {
            (token.start, index.checked_sub(1))
        };
        let previous = before.map_or("", text);
        if !(previous.eq_ignore_ascii_case("FROM") || previous.eq_ignore_ascii_case("JOIN") || previous == ",") {
            continue;
        }
        let next = text(index + 1);
        let aliased = tokens.get(index + 1).is_some_and(|token| token.kind == TokenKind::Word)
            && !CLAUSE_WORDS.iter().any(|word| next.eq_ignore_ascii_case(word))
            || next.eq_ignore_ascii_case("AS");
        rewritten.push_str(&sql[copied..start]);
        rewritten.push('(');
        rewritten.push_str(source);
        rewritten.push(')');
        if !aliased {
            rewritten.push_str(" AS ");
            rewritten.push_str(name);
        }
        copied = token.end;
    }
    if copied == 0 {
        return Cow::Borrowed(sql);
    }
    rewritten.push_str(&sql[copied..]);
    Cow::Owned(rewritten)
}

/// An identifier without its quotes (`"x"`, `` `x` ``, `[x]`); other text as it is.
fn unquoted(word: &str) -> &str {
    for (open, close) in [('"', '"'), ('`', '`'), ('[', ']')] {
        if let Some(inner) = word.strip_prefix(open).and_then(|rest| rest.strip_suffix(close)) {
            return inner;
        }
    }
    word
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn names(connection: &Connection, sql: &str) -> Vec<String> {
        let sql = hide_internal_schema(sql);
        let mut statement = connection.prepare(&sql).unwrap_or_else(|error| panic!("{sql}: {error}"));
        let rows = statement.query_map([], |row| row.get::<_, Option<String>>(0)).expect("query");
        rows.map(|row| row.expect("row").unwrap_or_else(|| "NULL".into())).collect()
    }

    fn database() -> Connection {
        let connection = Connection::open_in_memory().expect("open");
        connection
            .execute_batch(
                "CREATE TABLE _tern_log (idx INTEGER PRIMARY KEY); CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT);
                 CREATE TABLE _TERN_meta (k); CREATE INDEX t_name ON t(name); CREATE TABLE \"Andrés\" (x);",
            )
            .expect("schema");
        connection
    }

    #[test]
    fn the_schema_table_lists_only_the_users_objects() {
        let connection = database();
        // rqlite's shell: .tables, .schema, .indexes.
        assert_eq!(names(&connection, r#"SELECT name FROM sqlite_master WHERE type="table" ORDER BY name ASC"#), ["Andrés", "t"]);
        assert_eq!(names(&connection, "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid ASC").len(), 3);
        assert_eq!(names(&connection, r#"SELECT sql FROM sqlite_master WHERE type="index""#), ["CREATE INDEX t_name ON t(name)"]);
        for sql in [
            "select name from main.sqlite_schema order by 1",
            "SELECT m.name FROM \"sqlite_master\" m WHERE m.type = 'table' ORDER BY 1",
            "SELECT name FROM sqlite_schema AS s WHERE s.type='table' ORDER BY name",
            "SELECT x.name FROM (SELECT name FROM sqlite_master) x WHERE x.name LIKE '%' ORDER BY 1",
            "SELECT sqlite_master.name FROM sqlite_master WHERE sqlite_master.type = 'table' ORDER BY 1",
        ] {
            let listed = names(&connection, sql);
            assert!(!listed.iter().any(|name| name.to_ascii_lowercase().starts_with("_tern_")), "{sql}: {listed:?}");
            assert!(listed.contains(&"t".to_string()), "{sql}: {listed:?}");
        }
        let sql = hide_internal_schema("SELECT count(*) FROM sqlite_master, sqlite_master AS b JOIN main.sqlite_schema");
        let count: i64 = connection.query_row(&sql, [], |row| row.get(0)).expect("count");
        assert_eq!(count, 27, "three user objects in each of three sources");
    }

    #[test]
    fn other_uses_of_the_names_are_left_alone() {
        for sql in [
            "SELECT 'FROM sqlite_master'",
            "SELECT * FROM temp.sqlite_master",
            "SELECT * FROM t",
            "SELECT * FROM pragma_table_info('sqlite_master')",
            "SELECT name FROM sqlite_temp_master",
        ] {
            assert_eq!(hide_internal_schema(sql), sql);
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, failure_persistence: None, ..Default::default() })]

        /// Any text, however broken, is rewritten without a panic.
        #[test]
        fn any_text_is_rewritten_without_panic(prefix in ".{0,20}", suffix in ".{0,20}", raw in proptest::prelude::any::<String>()) {
            let _ = hide_internal_schema(&raw);
            let _ = hide_internal_schema(&format!("{prefix} FROM main . sqlite_master{suffix}"));
            let _ = hide_internal_schema(&format!("{prefix}sqlite_schema"));
        }
    }
}
