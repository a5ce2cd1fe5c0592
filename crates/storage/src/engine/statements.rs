//! Running one client statement: parameters, results, splitting a string into statements, read-only checks.

use super::*;

/// A request that must run outside any transaction (`VACUUM`); it is executed alone.
pub fn is_maintenance(request: &WriteRequest) -> bool {
    request.statements.iter().any(|statement| first_keyword(&statement.sql) == "VACUUM")
}

/// Whether a request changes the schema: a statement (or a piece of one string of
/// several) starting with CREATE, DROP or ALTER. Multi-leader makes such writes in one
/// region only.
pub fn changes_schema(request: &WriteRequest) -> bool {
    request.statements.iter().any(|statement| {
        let mut at_start = true;
        for token in tokenize(&statement.sql) {
            let text = &statement.sql[token.start..token.end];
            match token.kind {
                TokenKind::Space => {}
                TokenKind::Other if text == ";" => at_start = true,
                TokenKind::Word if at_start => {
                    if ["CREATE", "DROP", "ALTER"].iter().any(|keyword| text.eq_ignore_ascii_case(keyword)) {
                        return true;
                    }
                    at_start = false;
                }
                _ => at_start = false,
            }
        }
        false
    })
}

/// Why a write request's shape is invalid as a whole (a 400 before anything is queued),
/// or `None`: `VACUUM` runs outside any transaction, so it must be the request's only
/// statement.
pub fn request_shape_error(request: &WriteRequest) -> Option<String> {
    (is_maintenance(request) && request.statements.len() > 1)
        .then(|| "VACUUM must be sent alone in its request: it runs outside any transaction, so it cannot share one with other statements".to_owned())
}

/// Keywords that begin statements whose effect is rows (recorded by the session
/// extension in the row format); anything else is shipped as SQL.
/// A bound text parameter that makes a date and time function read the clock or time zone.
pub(super) fn parameters_read_the_clock(params: &Params) -> bool {
    let reads = |value: &SqlValue| matches!(value, SqlValue::Text(text) if reads_the_clock(text));
    match params {
        Params::None => false,
        Params::Positional(values) => values.iter().any(reads),
        Params::Named(pairs) => pairs.iter().any(|(_, value)| reads(value)),
    }
}

pub(super) fn changes_rows(sql: &str) -> bool {
    matches!(first_keyword(sql).as_str(), "INSERT" | "UPDATE" | "DELETE" | "REPLACE" | "WITH" | "SELECT" | "VALUES")
}

pub(super) fn bind(statement: &mut rusqlite::Statement<'_>, params: &Params) -> rusqlite::Result<()> {
    match params {
        Params::None => {}
        Params::Positional(values) => {
            for (position, value) in values.iter().enumerate() {
                statement.raw_bind_parameter(position + 1, Value::from(value))?;
            }
        }
        Params::Named(values) => {
            for (name, value) in values {
                let index = [":", "@", "$", ""]
                    .iter()
                    .find_map(|prefix| statement.parameter_index(&format!("{prefix}{name}")).ok().flatten())
                    .ok_or_else(|| rusqlite::Error::InvalidParameterName(name.clone()))?;
                statement.raw_bind_parameter(index, Value::from(value))?;
            }
        }
    }
    Ok(())
}

/// Roughly what a value costs in a JSON result, for the result size limit.
pub(super) fn result_bytes(value: &Value) -> usize {
    match value {
        Value::Null | Value::Integer(_) | Value::Real(_) => 8,
        Value::Text(text) => text.len() + 2,
        Value::Blob(bytes) => bytes.len() * 4 / 3 + 4,
    }
}

/// Runs one client statement under `policy` (its authorizer, deadline and result limit)
/// and reports it the way rqlite does.
pub(super) fn run_client_statement(connection: &Connection, policy: &ClientPolicy, sql: &str, params: &Params) -> StatementResult {
    run_statement_with(connection, Some(policy), sql, params)
}

/// Runs one statement and reports it the way rqlite does. Statements that return rows
/// produce a query result; others report rows affected and the last rowid.
pub fn run_statement(connection: &Connection, sql: &str, params: &Params) -> StatementResult {
    run_statement_with(connection, None, sql, params)
}

pub(crate) fn run_statement_with(connection: &Connection, policy: Option<&ClientPolicy>, sql: &str, params: &Params) -> StatementResult {
    let started = std::time::Instant::now();
    let max_bytes = policy.map_or(usize::MAX, |policy| policy.limits().max_result_bytes);
    let mut too_large = false;
    let outcome = (|| -> rusqlite::Result<StatementResult> {
        let mut statement = connection.prepare_cached(sql)?;
        bind(&mut statement, params)?;
        if statement.column_count() > 0 {
            let columns: Vec<String> = statement.column_names().map(|name| name.to_string()).collect();
            let types: Vec<String> = statement.columns().map(|column| column.decl_type().map(str::to_ascii_lowercase).unwrap_or_default()).collect();
            let count = columns.len();
            let mut values = Vec::new();
            let mut bytes = 0usize;
            let mut rows = statement.raw_query();
            while let Some(row) = rows.next()? {
                let mut line = Vec::with_capacity(count);
                for index in 0..count {
                    let value = row.get::<_, Value>(index)?;
                    bytes = bytes.saturating_add(result_bytes(&value));
                    line.push(SqlValue::from(value));
                }
                values.push(line);
                if bytes > max_bytes {
                    too_large = true;
                    return Ok(StatementResult::default());
                }
            }
            Ok(StatementResult { is_query: true, columns, types, values, ..StatementResult::default() })
        } else {
            statement.raw_execute()?;
            Ok(StatementResult { last_insert_id: connection.last_insert_rowid(), rows_affected: connection.changes() as i64, ..StatementResult::default() })
        }
    })();
    if too_large {
        return StatementResult::error(format!(
            "the result is larger than {max_bytes} bytes (--max-result-bytes): select fewer rows or columns, e.g. with LIMIT and OFFSET"
        ));
    }
    let mut result = outcome.unwrap_or_else(|error| StatementResult::error(policy.map_or_else(|| describe(&error), |policy| policy.explain(&error))));
    result.time_s = started.elapsed().as_secs_f64();
    result
}

pub(super) const PARAMETERS_NEED_ONE_STATEMENT: &str = "a statement string with parameters must hold one statement: send each as its own [sql, params...] item";

/// The statements of `sql` in order, each with its closing `;`, as SQLite's parser sees
/// them: a candidate end is every `;` outside strings and comments, and it ends a
/// statement unless SQLite says the text so far is incomplete (inside a trigger body,
/// say). Prepare with the client rules in force: a refused statement still ends there.
/// One item, the text unchanged, when it holds one statement (or none).
pub fn split_statements(connection: &Connection, sql: &str) -> Vec<String> {
    // No semicolon anywhere (not even in a literal): one statement, with no tokenizing.
    if !sql.contains(';') {
        return vec![sql.to_owned()];
    }
    let tokens = tokenize(sql);
    let semicolons: Vec<usize> =
        tokens.iter().filter(|token| token.kind == TokenKind::Other && &sql[token.start..token.end] == ";").map(|token| token.end).collect();
    if semicolons.is_empty() {
        return vec![sql.to_owned()];
    }
    let mut pieces = Vec::new();
    let mut start = 0;
    for end in semicolons {
        let piece = &sql[start..end];
        let significant = tokenize(piece).iter().any(|token| token.kind != TokenKind::Space && &piece[token.start..token.end] != ";");
        if !significant {
            start = end;
            continue;
        }
        let incomplete = matches!(connection.prepare(piece), Err(rusqlite::Error::SqliteFailure(_, Some(message))) if message.contains("incomplete input"));
        if !incomplete {
            pieces.push(piece.to_owned());
            start = end;
        }
    }
    let rest = &sql[start..];
    if tokenize(rest).iter().any(|token| token.kind != TokenKind::Space) {
        pieces.push(rest.to_owned());
    }
    if pieces.len() <= 1 {
        return vec![sql.to_owned()];
    }
    pieces
}

pub(super) fn is_read_only(connection: &Connection, sql: &str) -> bool {
    connection.prepare_cached(sql).map(|statement| statement.readonly()).unwrap_or(false)
}
