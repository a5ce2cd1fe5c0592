//! Copies of the user's database (`/db/backup`): a SQLite file or an SQL text dump, neither
//! holding tern's own tables; and the statements that rebuild the database from a SQLite
//! file (`/db/load`), so that a load is one replicated write like any other.

use super::*;
use rusqlite::types::ValueRef;
use std::fmt::Write as _;

/// One value as an SQL literal that reads back as the same value and type.
fn push_literal(out: &mut String, value: ValueRef<'_>) {
    match value {
        ValueRef::Null => out.push_str("NULL"),
        ValueRef::Integer(integer) => {
            let _ = write!(out, "{integer}");
        }
        // `{:?}` is the shortest text that parses back to the same f64, and keeps a `.0`
        // or an exponent so SQLite reads a REAL, not an INTEGER.
        ValueRef::Real(real) if real.is_nan() => out.push_str("NULL"),
        ValueRef::Real(real) if real.is_infinite() => out.push_str(if real > 0.0 { "1e999" } else { "-1e999" }),
        ValueRef::Real(real) => {
            let _ = write!(out, "{real:?}");
        }
        ValueRef::Text(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) if !text.contains('\0') => {
                out.push('\'');
                out.push_str(&text.replace('\'', "''"));
                out.push('\'');
            }
            // Text that is not UTF-8, or holds a NUL, cannot be written as a literal.
            _ => {
                out.push_str("CAST(");
                push_blob(out, bytes);
                out.push_str(" AS TEXT)");
            }
        },
        ValueRef::Blob(bytes) => push_blob(out, bytes),
    }
}

fn push_blob(out: &mut String, bytes: &[u8]) {
    out.push_str("X'");
    for byte in bytes {
        let _ = write!(out, "{byte:02X}");
    }
    out.push('\'');
}

/// Is this schema object the user's (not SQLite's own, not tern's)?
fn is_user_object(name: &str) -> bool {
    !crate::guard::is_internal_table(name) && !name.get(..7).is_some_and(|prefix| prefix.eq_ignore_ascii_case("sqlite_"))
}

/// The user's objects of `connection`'s main database: `(type, name, table, sql)` in the
/// order they were created.
fn user_objects(connection: &Connection) -> Result<Vec<(String, String, String, Option<String>)>> {
    let mut statement = connection.prepare("SELECT type, name, tbl_name, sql FROM main.sqlite_schema ORDER BY rowid")?;
    let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)))?;
    let mut objects = Vec::new();
    for row in rows {
        let (kind, name, table, sql): (String, String, String, Option<String>) = row?;
        if is_user_object(&name) && is_user_object(&table) {
            objects.push((kind, name, table, sql));
        }
    }
    Ok(objects)
}

/// The statements that recreate the user's objects of `connection` and their rows, as
/// sqlite3's `.dump` writes them (without its `BEGIN`/`COMMIT` framing). `tables`, if not
/// empty, limits the dump to those tables and their indexes and triggers.
fn dump_statements(connection: &Connection, tables: &[String], mut emit: impl FnMut(String)) -> Result<()> {
    let wanted = |table: &str| tables.is_empty() || tables.iter().any(|wanted| wanted.eq_ignore_ascii_case(table));
    let objects = user_objects(connection)?;
    for (_, name, _, sql) in objects.iter().filter(|(kind, _, table, _)| kind == "table" && wanted(table)) {
        let Some(sql) = sql else { continue };
        emit(format!("{sql};"));
        if sql.get(..20).is_some_and(|start| start.eq_ignore_ascii_case("CREATE VIRTUAL TABLE")) {
            continue;
        }

        // Generated columns cannot be inserted: name the columns when the table has any.
        let mut columns = Vec::new();
        let mut generated = false;
        let mut info = connection.prepare(&format!("SELECT name, hidden FROM pragma_table_xinfo({})", quote_literal(name)))?;
        for row in info.query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)))? {
            let (column, hidden) = row?;
            if hidden == 0 {
                columns.push(quote_identifier(&column));
            } else {
                generated = true;
            }
        }
        let target = if generated { format!("{}({})", quote_identifier(name), columns.join(",")) } else { quote_identifier(name) };
        let mut rows = connection.prepare(&format!("SELECT {} FROM main.{}", columns.join(","), quote_identifier(name)))?;
        let mut cursor = rows.query([])?;
        while let Some(row) = cursor.next()? {
            let mut insert = format!("INSERT INTO {target} VALUES(");
            for index in 0..columns.len() {
                if index > 0 {
                    insert.push(',');
                }
                push_literal(&mut insert, row.get_ref(index)?);
            }
            insert.push_str(");");
            emit(insert);
        }
    }
    // AUTOINCREMENT counters, which live in SQLite's own table.
    if has_table(connection, "sqlite_sequence")? {
        let mut sequence = connection.prepare("SELECT name, seq FROM main.sqlite_sequence")?;
        let counters: Vec<(String, i64)> = sequence.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?.collect::<rusqlite::Result<_>>()?;
        let counters: Vec<_> = counters.into_iter().filter(|(table, _)| is_user_object(table) && wanted(table)).collect();
        if !counters.is_empty() {
            emit("DELETE FROM sqlite_sequence;".to_string());
            for (table, seq) in counters {
                emit(format!("INSERT INTO sqlite_sequence VALUES({},{seq});", quote_literal(&table)));
            }
        }
    }
    for (_, _, _, sql) in objects.iter().filter(|(kind, _, table, _)| kind != "table" && wanted(table)) {
        if let Some(sql) = sql {
            emit(format!("{sql};"));
        }
    }
    Ok(())
}

fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A `.dump`'s framing, as sqlite3 writes it: `/db/load` leaves it out, sqlite3 runs it.
const DUMP_HEAD: &str = "PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\n";
const DUMP_TAIL: &str = "COMMIT;\n";

impl Reader {
    /// A SQL text dump of the user's objects at one snapshot, as sqlite3's `.dump` writes
    /// it. `tables`, if not empty, limits it to those tables.
    ///
    /// # Errors
    /// On a SQLite failure.
    pub fn dump_sql(&self, tables: &[String]) -> Result<String> {
        self.in_read_transaction(|| {
            let mut dump = String::from(DUMP_HEAD);
            dump_statements(&self.connection, tables, |statement| {
                dump.push_str(&statement);
                dump.push('\n');
            })?;
            dump.push_str(DUMP_TAIL);
            Ok(dump)
        })?
    }

    /// Writes a SQLite file at `path` (which must not exist) holding the user's objects at
    /// one snapshot: `VACUUM INTO`, then tern's own tables dropped from the copy.
    ///
    /// # Errors
    /// On a SQLite or file failure.
    pub fn backup_file(&self, path: &Path) -> Result<()> {
        let target = path.to_str().ok_or_else(|| StorageError::new("the backup path is not UTF-8"))?;
        self.connection.execute("VACUUM INTO ?1", [target])?;
        let copy = Connection::open(path)?;
        // The copy keeps the source's WAL mode; a backup is one self-contained file.
        copy.pragma_update(None, "journal_mode", "DELETE")?;

        let objects: Vec<(String, String)> = copy
            .prepare("SELECT type, name FROM sqlite_schema WHERE type IN ('table', 'view', 'trigger') ORDER BY type = 'table'")?
            .query_map([], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let internal: Vec<(String, String)> = objects.into_iter().filter(|(_, name)| crate::guard::is_internal_table(name)).collect();
        for (kind, name) in internal {
            copy.execute_batch(&format!("DROP {} IF EXISTS {};", kind.to_ascii_uppercase(), quote_identifier(&name)))?;
        }
        copy.execute_batch("VACUUM")?;
        Ok(())
    }

    /// The statements of one write request that make this database hold what the SQLite
    /// file at `path` holds: the user's objects here are dropped, then the file's are
    /// created and filled. The file is opened read-only and distrusted (its schema runs no
    /// functions with side effects).
    ///
    /// # Errors
    /// If the file is not a SQLite database, or on a SQLite failure.
    pub fn load_statements(&self, path: &Path) -> Result<Vec<String>> {
        let source = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        source.pragma_update(None, "trusted_schema", "OFF")?;
        source.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
        let mut statements = Vec::new();
        // Views and triggers first: a table's drop takes its indexes and triggers with it.
        let existing = self.in_read_transaction(|| user_objects(&self.connection))??;
        for (kind, name, _, _) in existing.iter().filter(|(kind, ..)| kind == "view") {
            statements.push(format!("DROP {} IF EXISTS {}", kind.to_ascii_uppercase(), quote_identifier(name)));
        }
        for (_, name, _, _) in existing.iter().filter(|(kind, ..)| kind == "table") {
            statements.push(format!("DROP TABLE IF EXISTS {}", quote_identifier(name)));
        }
        let transaction = source.unchecked_transaction()?;
        dump_statements(&source, &[], |statement| statements.push(statement))?;
        transaction.finish()?;
        Ok(statements)
    }
}

/// The statements of an SQL script, split where sqlite3's shell would (`sqlite3_complete`):
/// at each `;` outside strings and comments, except inside a `CREATE TRIGGER` body, which
/// ends at `END ;`. No connection is needed, so a dump's statements can be split before
/// the tables they name exist.
fn split_script(text: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut start = 0;
    let mut words: Vec<&str> = Vec::new();
    for token in tokenize(text) {
        let piece = &text[token.start..token.end];
        if token.kind == TokenKind::Space {
            continue;
        }
        if piece != ";" {
            words.push(piece);
            continue;
        }
        let significant: Vec<&str> =
            words.iter().copied().filter(|word| !word.eq_ignore_ascii_case("TEMP") && !word.eq_ignore_ascii_case("TEMPORARY")).collect();
        let trigger = significant.len() >= 2 && significant[0].eq_ignore_ascii_case("CREATE") && significant[1].eq_ignore_ascii_case("TRIGGER");
        if trigger && !words.last().is_some_and(|word| word.eq_ignore_ascii_case("END")) {
            words.push(piece);
            continue;
        }
        if !words.is_empty() {
            statements.push(text[start..token.end].trim().to_owned());
        }
        start = token.end;
        words.clear();
    }
    if !words.is_empty() {
        statements.push(text[start..].trim().to_owned());
    }
    statements
}

/// The statements of an SQL text dump, for `/db/load`, with the framing that tern's own
/// transaction replaces (`BEGIN`, `COMMIT`, `PRAGMA foreign_keys`) left out.
pub fn dump_to_statements(text: &str) -> Vec<String> {
    split_script(text)
        .into_iter()
        .filter(|statement| {
            let keyword = first_keyword(statement);
            let framing = matches!(keyword.as_str(), "BEGIN" | "COMMIT" | "END")
                || (keyword == "PRAGMA" && statement.to_ascii_lowercase().split_whitespace().collect::<String>().starts_with("pragmaforeign_keys"));
            !framing
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_read_back_as_the_same_values() {
        let connection = Connection::open_in_memory().expect("open");
        for (sql, expected) in [
            ("SELECT 1.0", "1.0"),
            ("SELECT -0.1", "-0.1"),
            ("SELECT 1e300", "1e300"),
            ("SELECT 9007199254740993", "9007199254740993"),
            ("SELECT 'it''s Andrés'", "'it''s Andrés'"),
            ("SELECT x'00ff'", "X'00FF'"),
            ("SELECT NULL", "NULL"),
            ("SELECT 1e999", "1e999"),
            ("SELECT CAST(x'610062' AS TEXT)", "CAST(X'610062' AS TEXT)"),
        ] {
            let literal = connection
                .query_row(sql, [], |row| {
                    let mut out = String::new();
                    push_literal(&mut out, row.get_ref(0)?);
                    Ok(out)
                })
                .expect(sql);
            assert_eq!(literal, expected, "{sql}");
            let (same, same_type): (bool, bool) = connection
                .query_row(&format!("SELECT ({sql}) IS ({literal}), typeof(({sql})) = typeof({literal})"), [], |row| Ok((row.get(0)?, row.get(1)?)))
                .expect("compare");
            assert!(same && same_type, "{literal} does not read back as {sql}");
        }
    }

    #[test]
    fn a_dump_rebuilds_the_users_objects_only() {
        let source = Connection::open_in_memory().expect("open");
        source
            .execute_batch(
                "CREATE TABLE _tern_log (idx INTEGER PRIMARY KEY, payload BLOB);
                 INSERT INTO _tern_log VALUES (1, x'00');
                 CREATE TABLE \"Andrés\" (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, doubled INTEGER GENERATED ALWAYS AS (id * 2));
                 INSERT INTO \"Andrés\"(name) VALUES ('O''Brien'), ('日本'), (NULL);
                 CREATE INDEX by_name ON \"Andrés\"(name);
                 CREATE VIEW names AS SELECT name FROM \"Andrés\";",
            )
            .expect("source");
        let mut statements = Vec::new();
        dump_statements(&source, &[], |statement| statements.push(statement)).expect("dump");
        assert!(!statements.iter().any(|statement| statement.contains("_tern_")), "{statements:#?}");
        let target = Connection::open_in_memory().expect("open");
        target.execute_batch(&statements.join("\n")).expect("the dump runs");
        let rows: Vec<(i64, Option<String>, i64)> = target
            .prepare("SELECT id, name, doubled FROM \"Andrés\" ORDER BY id")
            .expect("prepare")
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        assert_eq!(rows, vec![(1, Some("O'Brien".into()), 2), (2, Some("日本".into()), 4), (3, None, 6)]);
        let next: i64 = {
            target.execute("INSERT INTO \"Andrés\"(name) VALUES ('next')", []).expect("insert");
            target.last_insert_rowid()
        };
        assert_eq!(next, 4, "the AUTOINCREMENT counter came along");
        let view: i64 = target.query_row("SELECT count(*) FROM names", [], |row| row.get(0)).expect("view");
        assert_eq!(view, 4);
        let mut only = Vec::new();
        dump_statements(&source, &["nothing".to_string()], |statement| only.push(statement)).expect("dump");
        assert!(only.is_empty(), "{only:?}");
    }

    #[test]
    fn a_dumps_framing_is_left_out_when_loaded() {
        let statements = dump_to_statements(
            "PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\nCREATE TABLE t(x);\nINSERT INTO t VALUES('a;b');\nCOMMIT;\nPRAGMA foreign_keys = ON;",
        );
        assert_eq!(statements, ["CREATE TABLE t(x);", "INSERT INTO t VALUES('a;b');"]);
        let trigger = "CREATE TEMP TRIGGER g AFTER INSERT ON t BEGIN INSERT INTO u VALUES (1); DELETE FROM u; END;";
        assert_eq!(dump_to_statements(&format!("{trigger} /* ; */ SELECT 1 -- ;\n;SELECT 2")), [trigger, "/* ; */ SELECT 1 -- ;\n;", "SELECT 2"]);
    }
}
