//! Making statements deterministic for the statement log format.
//!
//! A follower re-executes the leader's SQL, so anything whose value depends on when or
//! where it runs must be fixed on the leader first: `random()`, `randomblob(n)`, the date
//! and time functions with `'now'` (or no argument) or with the `'localtime'`/`'utc'`
//! modifiers (they read the node's time zone), `CURRENT_TIMESTAMP/DATE/TIME`, and
//! connection state (`last_insert_rowid()`, `changes()`, `total_changes()`). Each such call
//! is evaluated once on the leader and replaced by its literal value. Where one literal
//! cannot stand for the call, because it would run once per row (`random()` in an
//! `UPDATE`, or in an `INSERT ... SELECT`), the statement is refused with an error naming
//! the function.
//!
//! The scanner knows SQLite's lexical rules for strings, quoted identifiers, blobs and
//! comments, so text inside them is never rewritten.

use rusqlite::types::Value;
use rusqlite::Connection;

/// Why a statement could not be made deterministic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonDeterministic {
    pub function: String,
    pub reason: String,
}

impl std::fmt::Display for NonDeterministic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "non-deterministic function {}() cannot be replicated in statement format: {} \
             (pass the value as a parameter, or run the cluster with --log-format row)",
            self.function, self.reason
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenKind {
    Word,
    Text,
    Other,
    Open,
    Close,
    Space,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Token {
    pub(crate) kind: TokenKind,
    pub(crate) start: usize,
    pub(crate) end: usize,
}

/// The text between a string literal's quotes (an unterminated literal has no closing one).
fn string_contents(literal: &str) -> &str {
    let inner = literal.strip_prefix('\'').unwrap_or(literal);
    inner.strip_suffix('\'').unwrap_or(inner)
}

/// Splits SQL into tokens. Unterminated strings or comments run to the end; SQLite will
/// report the syntax error itself when the statement is prepared.
pub(crate) fn tokenize(sql: &str) -> Vec<Token> {
    let bytes = sql.as_bytes();
    let mut tokens = Vec::new();
    let mut position = 0;
    while position < bytes.len() {
        let start = position;
        let byte = bytes[position];
        let kind = match byte {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => {
                while position < bytes.len() && bytes[position].is_ascii_whitespace() {
                    position += 1;
                }
                TokenKind::Space
            }
            b'-' if bytes.get(position + 1) == Some(&b'-') => {
                while position < bytes.len() && bytes[position] != b'\n' {
                    position += 1;
                }
                TokenKind::Space
            }
            b'/' if bytes.get(position + 1) == Some(&b'*') => {
                position += 2;
                while position < bytes.len() && !(bytes[position] == b'*' && bytes.get(position + 1) == Some(&b'/')) {
                    position += 1;
                }
                position = (position + 2).min(bytes.len());
                TokenKind::Space
            }
            b'\'' | b'"' | b'`' | b'[' => {
                let close = if byte == b'[' { b']' } else { byte };
                position += 1;
                loop {
                    if position >= bytes.len() {
                        break;
                    }
                    if bytes[position] == close {
                        // A doubled quote is an escaped quote inside the string.
                        if close != b']' && bytes.get(position + 1) == Some(&close) {
                            position += 2;
                            continue;
                        }
                        position += 1;
                        break;
                    }
                    position += 1;
                }
                if byte == b'\'' {
                    TokenKind::Text
                } else {
                    TokenKind::Other
                }
            }
            b'(' => {
                position += 1;
                TokenKind::Open
            }
            b')' => {
                position += 1;
                TokenKind::Close
            }
            _ if byte.is_ascii_alphanumeric() || byte == b'_' || byte >= 0x80 => {
                // x'ABCD' blob literals are one token.
                if (byte == b'x' || byte == b'X') && bytes.get(position + 1) == Some(&b'\'') {
                    position += 2;
                    while position < bytes.len() && bytes[position] != b'\'' {
                        position += 1;
                    }
                    position = (position + 1).min(bytes.len());
                    TokenKind::Other
                } else {
                    while position < bytes.len()
                        && (bytes[position].is_ascii_alphanumeric() || bytes[position] == b'_' || bytes[position] == b'$' || bytes[position] >= 0x80)
                    {
                        position += 1;
                    }
                    TokenKind::Word
                }
            }
            _ => {
                position += 1;
                TokenKind::Other
            }
        };
        tokens.push(Token { kind, start, end: position });
    }
    tokens
}

/// Functions whose result depends on when, where or after what they run.
/// Is `name` a function whose value depends on when, where or after what it runs?
pub fn is_nondeterministic_function(name: &str) -> bool {
    classify(name).is_some()
}

fn classify(name: &str) -> Option<Call> {
    match name.to_ascii_lowercase().as_str() {
        "random" | "randomblob" => Some(Call::Random),
        "date" | "time" | "datetime" | "julianday" | "unixepoch" | "strftime" | "timediff" => Some(Call::Clock),
        "last_insert_rowid" | "changes" | "total_changes" => Some(Call::Session),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    /// A new value at every evaluation.
    Random,
    /// Depends on the time only when an argument is `'now'` (or there is none);
    /// SQLite fixes `'now'` for the whole statement, so one literal is exact.
    Clock,
    /// Depends on the connection's history.
    Session,
}

/// The non-deterministic function or keyword used in a `DEFAULT` clause, if any.
fn nondeterministic_default(sql: &str, tokens: &[Token]) -> Option<String> {
    let significant: Vec<&Token> = tokens.iter().filter(|token| token.kind != TokenKind::Space).collect();
    for (position, token) in significant.iter().enumerate() {
        if token.kind != TokenKind::Word || !sql[token.start..token.end].eq_ignore_ascii_case("DEFAULT") {
            continue;
        }
        // The default is one term, or a parenthesised expression.
        let mut depth = 0usize;
        for next in &significant[position + 1..] {
            let text = &sql[next.start..next.end];
            match next.kind {
                TokenKind::Open => depth += 1,
                TokenKind::Close if depth == 0 => break,
                TokenKind::Close => depth -= 1,
                TokenKind::Word => {
                    let upper = text.to_ascii_uppercase();
                    if matches!(upper.as_str(), "CURRENT_TIMESTAMP" | "CURRENT_DATE" | "CURRENT_TIME") || classify(text).is_some() {
                        return Some(if classify(text).is_some() { text.to_ascii_lowercase() } else { upper });
                    }
                }
                _ => {}
            }
            if depth == 0 {
                break;
            }
        }
    }
    None
}

/// `CREATE TABLE ... AS SELECT`: it stores values, not expressions, so its SELECT must be
/// made deterministic like an `INSERT ... SELECT`.
pub fn creates_table_from_select(sql: &str) -> bool {
    let tokens = tokenize(sql);
    let mut words = tokens.iter().filter(|token| token.kind == TokenKind::Word).map(|token| &sql[token.start..token.end]);
    words.next().is_some_and(|first| first.eq_ignore_ascii_case("CREATE"))
        && words.clone().take(6).any(|word| word.eq_ignore_ascii_case("TABLE"))
        && words.any(|word| word.eq_ignore_ascii_case("SELECT"))
}

/// A string argument that makes a date and time function read the node's clock or time
/// zone.
pub fn reads_the_clock(text: &str) -> bool {
    ["now", "localtime", "utc"].iter().any(|word| text.trim().eq_ignore_ascii_case(word))
}

/// A word that is a statement or clause keyword showing per-row evaluation.
fn is_per_row_keyword(word: &str) -> bool {
    matches!(word.to_ascii_uppercase().as_str(), "SELECT" | "UPDATE" | "DELETE" | "FROM" | "WHERE")
}

/// Returns `sql` with its non-deterministic calls replaced by values computed on
/// `connection` now, or the reason it cannot be made deterministic. `Ok(None)` means the
/// statement is deterministic as written. `parameters_read_the_clock`: a bound parameter
/// is `'now'`, `'localtime'` or `'utc'` (the caller knows the values, this text does not).
///
/// # Errors
/// [`NonDeterministic`] naming the first function that cannot be fixed to a literal.
pub fn make_deterministic(connection: &Connection, sql: &str, parameters_read_the_clock: bool) -> Result<Option<String>, NonDeterministic> {
    make_deterministic_calling(connection, sql, parameters_read_the_clock, None)
}

/// `make_deterministic`, told which functions SQLite says the statement calls
/// (`called`, lower case): a word followed by `(` that names one of tern's functions but
/// is not called (a table named `changes`, a CTE named `random`) is left alone.
///
/// # Errors
/// As `make_deterministic`.
pub fn make_deterministic_calling(
    connection: &Connection,
    sql: &str,
    parameters_read_the_clock: bool,
    called: Option<&[String]>,
) -> Result<Option<String>, NonDeterministic> {
    let is_called = |name: &str| called.is_none_or(|called| called.iter().any(|function| function.eq_ignore_ascii_case(name)));
    let tokens = tokenize(sql);
    let words: Vec<&str> = tokens.iter().filter(|token| token.kind == TokenKind::Word).map(|token| &sql[token.start..token.end]).collect();
    let first_word = words.first().map(|word| word.to_ascii_uppercase()).unwrap_or_default();
    let is_trigger = first_word == "CREATE" && words.iter().take(4).any(|word| word.eq_ignore_ascii_case("TRIGGER"));
    let schema_only = first_word == "CREATE" && !is_trigger && !creates_table_from_select(sql);
    if schema_only || matches!(first_word.as_str(), "DROP" | "ALTER" | "PRAGMA") {
        // Schema statements store expressions (defaults, views) rather than values. A
        // column DEFAULT that reads the clock or draws a random number would be evaluated
        // by each replica's own INSERTs, so it cannot be used with this format.
        if let Some(function) = nondeterministic_default(sql, &tokens) {
            return Err(NonDeterministic {
                function,
                reason: "a column DEFAULT is evaluated by every replica at its own INSERT; give the value explicitly".to_string(),
            });
        }
        return Ok(None);
    }
    let per_row = words.iter().any(|word| is_per_row_keyword(word));

    let mut output = String::with_capacity(sql.len());
    let mut copied_to = 0;
    let mut changed = false;
    let mut index = 0;
    while index < tokens.len() {
        let token = tokens[index];
        let text = &sql[token.start..token.end];
        if token.kind != TokenKind::Word {
            index += 1;
            continue;
        }
        let upper = text.to_ascii_uppercase();
        let keyword_now = matches!(upper.as_str(), "CURRENT_TIMESTAMP" | "CURRENT_DATE" | "CURRENT_TIME");
        let next_significant = tokens[index + 1..].iter().position(|next| next.kind != TokenKind::Space).map(|offset| index + 1 + offset);
        let called = next_significant.is_some_and(|next| tokens[next].kind == TokenKind::Open);

        let (call_end, kind) = if keyword_now && !called {
            (index + 1, Call::Clock)
        } else if let (true, Some(kind)) = (called, classify(text).filter(|_| is_called(text))) {
            let open = next_significant.expect("called implies an opening parenthesis");
            let mut depth = 0;
            let mut close = None;
            for (offset, inner) in tokens[open..].iter().enumerate() {
                match inner.kind {
                    TokenKind::Open => depth += 1,
                    TokenKind::Close => {
                        depth -= 1;
                        if depth == 0 {
                            close = Some(open + offset);
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let Some(close) = close else {
                // Unbalanced: leave it for SQLite to reject as a syntax error.
                return Ok(None);
            };
            if kind == Call::Clock {
                let arguments = &tokens[open + 1..close];
                let significant: Vec<&Token> = arguments.iter().filter(|token| token.kind != TokenKind::Space).collect();
                let mentions_now =
                    arguments.iter().any(|token| token.kind == TokenKind::Text && reads_the_clock(string_contents(&sql[token.start..token.end])));
                let takes_parameter = arguments.iter().any(|token| matches!(sql.as_bytes()[token.start], b'?' | b':' | b'@' | b'$'));
                if takes_parameter && parameters_read_the_clock && !mentions_now {
                    return Err(NonDeterministic {
                        function: text.to_ascii_lowercase(),
                        reason: "a parameter passes 'now', 'localtime' or 'utc', which every replica would read from its own clock; pass the time itself"
                            .into(),
                    });
                }
                if !mentions_now && !significant.is_empty() {
                    index += 1;
                    continue;
                }
            }
            (close + 1, kind)
        } else {
            index += 1;
            continue;
        };

        let function = if keyword_now { upper.clone() } else { text.to_ascii_lowercase() };
        if is_trigger {
            return Err(NonDeterministic { function, reason: "a trigger body would run it again on every replica".into() });
        }
        if kind == Call::Random && per_row {
            return Err(NonDeterministic { function, reason: "it is evaluated once per row here, so no single value can stand for it".into() });
        }
        let call_text = &sql[token.start..tokens[call_end - 1].end];
        let value: Value = connection
            .query_row(&format!("SELECT {call_text}"), [], |row| row.get(0))
            .map_err(|error| NonDeterministic { function: function.clone(), reason: format!("its arguments are not constants ({error})") })?;
        output.push_str(&sql[copied_to..token.start]);
        output.push_str(&literal(&value));
        copied_to = tokens[call_end - 1].end;
        changed = true;
        index = call_end;
    }
    if !changed {
        return Ok(None);
    }
    output.push_str(&sql[copied_to..]);
    Ok(Some(output))
}

/// SQL literal text for a value, exact for every storage class.
pub fn literal(value: &Value) -> String {
    match value {
        Value::Null => "NULL".to_string(),
        Value::Integer(number) => number.to_string(),
        Value::Real(number) if number.is_finite() => format!("{number:?}"),
        Value::Real(number) if number.is_nan() => "NULL".to_string(),
        Value::Real(number) => if *number > 0.0 { "9e999" } else { "-9e999" }.to_string(),
        Value::Text(text) => format!("'{}'", text.replace('\'', "''")),
        Value::Blob(bytes) => {
            let mut hex = String::with_capacity(bytes.len() * 2 + 3);
            hex.push_str("X'");
            for byte in bytes {
                hex.push_str(&format!("{byte:02X}"));
            }
            hex.push('\'');
            hex
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(sql: &str) -> Result<Option<String>, NonDeterministic> {
        let connection = Connection::open_in_memory().unwrap();
        connection.execute_batch("CREATE TABLE t (a, b); INSERT INTO t VALUES (1, 2);").unwrap();
        make_deterministic(&connection, sql, false)
    }

    fn is_datetime_literal(text: &str) -> bool {
        text.len() == 21 && text.starts_with("'20") && text.ends_with('\'')
    }

    #[test]
    fn deterministic_statements_are_left_alone() {
        assert_eq!(rewrite("INSERT INTO t VALUES (1, 'random()')").unwrap(), None);
        assert_eq!(rewrite("UPDATE t SET a = datetime('2020-01-01', '+1 day') WHERE b = 2").unwrap(), None);
        assert_eq!(rewrite("SELECT \"random\" FROM t -- random()\n").unwrap(), None);
        // A view is evaluated where it is read; reads are not replicated.
        assert_eq!(rewrite("CREATE VIEW v AS SELECT datetime('now') AS at").unwrap(), None);
    }

    #[test]
    fn now_and_random_become_literals() {
        let rewritten = rewrite("INSERT INTO t VALUES (datetime('now'), random())").unwrap().unwrap();
        let inner = rewritten.strip_prefix("INSERT INTO t VALUES (").unwrap().strip_suffix(')').unwrap();
        let (time, number) = inner.split_once(", ").unwrap();
        assert!(is_datetime_literal(time), "{rewritten}");
        assert!(number.parse::<i64>().is_ok(), "{rewritten}");

        let rewritten = rewrite("INSERT INTO t VALUES (CURRENT_TIMESTAMP, randomblob(4))").unwrap().unwrap();
        assert!(rewritten.contains(", X'") && !rewritten.contains("CURRENT"), "{rewritten}");
    }

    #[test]
    fn clock_functions_are_rewritten_even_in_per_row_statements() {
        let rewritten = rewrite("UPDATE t SET b = unixepoch('now') WHERE a = 1").unwrap().unwrap();
        let value = rewritten.strip_prefix("UPDATE t SET b = ").unwrap().strip_suffix(" WHERE a = 1").unwrap();
        assert!(value.parse::<i64>().unwrap() > 1_700_000_000);
    }

    #[test]
    fn random_per_row_is_refused_with_the_function_name() {
        let error = rewrite("UPDATE t SET a = random() WHERE b > 0").unwrap_err();
        assert_eq!(error.function, "random");
        assert!(error.to_string().contains("random()"));
        let error = rewrite("INSERT INTO t SELECT randomblob(8), 1 FROM t").unwrap_err();
        assert_eq!(error.function, "randomblob");
    }

    #[test]
    fn calls_with_row_dependent_arguments_are_refused() {
        let error = rewrite("INSERT INTO t VALUES (datetime('now', ?), 1)").unwrap_err();
        assert_eq!(error.function, "datetime");
    }

    #[test]
    fn clock_and_random_column_defaults_are_refused() {
        for (sql, function) in [
            ("CREATE TABLE t (id INTEGER PRIMARY KEY, at TEXT DEFAULT CURRENT_TIMESTAMP)", "CURRENT_TIMESTAMP"),
            ("create table t (token BLOB default (randomblob(8)))", "randomblob"),
            ("ALTER TABLE t ADD COLUMN d TEXT DEFAULT (datetime('now'))", "datetime"),
        ] {
            let refusal = rewrite(sql).expect_err(sql);
            assert_eq!(refusal.function, function, "{sql}");
        }
        assert_eq!(rewrite("CREATE TABLE t (n INTEGER DEFAULT 0, s TEXT DEFAULT 'now')").unwrap(), None);
    }

    #[test]
    fn create_table_as_select_is_made_deterministic_like_insert_select() {
        let error = rewrite("CREATE TABLE r AS SELECT random() AS n FROM t").unwrap_err();
        assert_eq!(error.function, "random");
        let rewritten = rewrite("create table c as select datetime('now') as at, a from t").unwrap().unwrap();
        assert!(!rewritten.contains("datetime("), "{rewritten}");
        assert!(creates_table_from_select("CREATE TEMP TABLE x AS SELECT 1"));
        assert!(!creates_table_from_select("CREATE VIEW v AS SELECT 1"));
    }

    #[test]
    fn time_zone_modifiers_are_evaluated_on_the_leader() {
        let rewritten = rewrite("INSERT INTO t VALUES (datetime('2024-01-01 12:00:00', 'localtime'), 1)").unwrap().unwrap();
        assert!(is_datetime_literal(rewritten.strip_prefix("INSERT INTO t VALUES (").unwrap().split(", ").next().unwrap()), "{rewritten}");
        assert!(rewrite("INSERT INTO t SELECT datetime(a, 'utc'), b FROM t").is_err(), "a per-row argument cannot be fixed");
    }

    #[test]
    fn a_parameter_that_reads_the_clock_is_refused() {
        let connection = Connection::open_in_memory().unwrap();
        connection.execute_batch("CREATE TABLE t (a, b)").unwrap();
        let sql = "INSERT INTO t VALUES (datetime(?), 1)";
        let error = make_deterministic(&connection, sql, true).unwrap_err();
        assert_eq!(error.function, "datetime");
        assert!(error.reason.contains("pass the time itself"), "{error}");
        assert_eq!(make_deterministic(&connection, sql, false).unwrap(), None, "a fixed date parameter is deterministic");
    }

    #[test]
    fn literals_round_trip_through_sqlite() {
        let connection = Connection::open_in_memory().unwrap();
        for value in [Value::Null, Value::Integer(i64::MIN), Value::Real(0.1), Value::Real(-1.5e300), Value::Text("it's".into()), Value::Blob(vec![0, 255, 16])]
        {
            let back: Value = connection.query_row(&format!("SELECT {}", literal(&value)), [], |row| row.get(0)).unwrap();
            assert_eq!(back, value);
        }
    }
}
