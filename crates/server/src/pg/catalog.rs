//! Answers to the `pg_catalog` queries behind psql's `\dt`, `\d` and `\d NAME` (as psql 15
//! sends them), from SQLite's own schema. Tables get made-up OIDs (16384 and up, in
//! schema order) that are stable while the schema does not change. Any other query on
//! `pg_catalog` or `information_schema` is answered with no rows, so a client's follow-up
//! questions (indexes, policies, publications, …) find nothing instead of an error.

use super::values::{error, query_response};
use crate::node::{Node, ReadOptions};
use pgwire::api::portal::Format;
use pgwire::api::results::Response;
use pgwire::error::PgWireResult;
use std::time::Duration;
use tern_core::ReadLevel;
use tern_storage::{SqlValue, Statement, StatementResult};

const FIRST_OID: i64 = 16_384;

/// A table or view of the schema, as the catalog shows it.
struct Relation {
    oid: i64,
    name: String,
    view: bool,
}

/// A SELECT whose SQL itself (not a string in it) names the catalog: answered here, and
/// left as PostgreSQL wrote it (its casts are PostgreSQL's, e.g. `::pg_catalog.regtype`).
pub fn is_catalog_query(sql: &str) -> bool {
    let lower = sql.to_lowercase();
    // The cheap test first: most statements name no catalog at all, quoted or not.
    if !(lower.contains("pg_catalog.") || lower.contains("information_schema.") || lower.contains("pg_class")) {
        return false;
    }
    let code = super::lexer::plain_code(sql).to_lowercase();
    let names_catalog = code.contains("pg_catalog.") || code.contains("information_schema.") || code.contains("pg_class");
    names_catalog && super::lexer::first_keyword(sql) == "SELECT"
}

pub async fn answer(node: &Node, sql: &str, format: &Format) -> Option<PgWireResult<Response>> {
    if !is_catalog_query(sql) {
        return None;
    }
    Some(respond(node, sql, &sql.to_lowercase(), format).await)
}

async fn respond(node: &Node, sql: &str, lower: &str, format: &Format) -> PgWireResult<Response> {
    let pattern = name_pattern(sql);
    let list = lower.contains("as \"schema\"") && lower.contains("from pg_catalog.pg_class c");
    let lookup = lower.starts_with("select c.oid,") && lower.contains("n.nspname") && pattern.is_some();
    let kind = lower.contains("c.relchecks");
    let attributes = lower.contains("from pg_catalog.pg_attribute a");
    if !(list || lookup || kind || attributes) {
        // Every other catalog question: no rows, and no need to read the schema.
        return Ok(Response::Query(query_response(&table(&["?column?"], Vec::new()), format)?));
    }
    let relations = relations(node).await?;
    let matching = |relation: &&Relation| pattern.as_ref().is_none_or(|pattern| matches(pattern, &relation.name));
    let text = |value: &str| SqlValue::Text(value.to_string());
    let result = if list {
        // \dt and \d: the relation list.
        let views = lower.contains("'v'");
        let mut listed: Vec<&Relation> = relations.iter().collect();
        listed.sort_by(|a, b| a.name.cmp(&b.name));
        let rows = listed
            .into_iter()
            .filter(|relation| !relation.view || views)
            .filter(matching)
            .map(|relation| vec![text("public"), text(&relation.name), text(if relation.view { "view" } else { "table" }), text("tern")])
            .collect();
        table(&["Schema", "Name", "Type", "Owner"], rows)
    } else if lookup {
        // \d NAME, first: which relations the name means.
        let rows = relations.iter().filter(matching).map(|relation| vec![SqlValue::Integer(relation.oid), text("public"), text(&relation.name)]).collect();
        table(&["oid", "nspname", "relname"], rows)
    } else if kind {
        // \d NAME, then: what kind of relation it is (psql 15's fifteen columns).
        let relation = relations.iter().find(|relation| lower.contains(&format!("'{}'", relation.oid)));
        let rows = relation
            .map(|relation| {
                let kind = if relation.view { "v" } else { "r" };
                let values = ["0", kind, "f", "f", "f", "f", "f", "f", "f", "", "0", "", "p", "d", "heap"];
                vec![values.iter().map(|value| text(value)).collect()]
            })
            .unwrap_or_default();
        let columns = [
            "relchecks",
            "relkind",
            "relhasindex",
            "relhasrules",
            "relhastriggers",
            "relrowsecurity",
            "relforcerowsecurity",
            "relhasoids",
            "relispartition",
            "array_to_string",
            "reltablespace",
            "reloftype",
            "relpersistence",
            "relreplident",
            "amname",
        ];
        table(&columns, rows)
    } else {
        // \d NAME, then: its columns.
        let relation = relations.iter().find(|relation| lower.contains(&format!("'{}'", relation.oid)));
        let rows = match relation {
            Some(relation) => columns_of(node, &relation.name).await?,
            None => Vec::new(),
        };
        table(&["attname", "format_type", "pg_get_expr", "attnotnull", "attcollation", "attidentity", "attgenerated"], rows)
    };
    Ok(Response::Query(query_response(&result, format)?))
}

fn table(columns: &[&str], values: Vec<Vec<SqlValue>>) -> StatementResult {
    StatementResult {
        is_query: true,
        columns: columns.iter().map(|column| column.to_string()).collect(),
        types: vec!["TEXT".to_string(); columns.len()],
        values,
        ..StatementResult::default()
    }
}

/// Runs a query on this node's copy (the schema, for the catalog).
async fn local(node: &Node, sql: &str) -> PgWireResult<StatementResult> {
    let options = ReadOptions { level: ReadLevel::None, after: None, after_regions: None, max_lag: None, freshness: None, timeout: Duration::from_secs(5) };
    let reply = node.read(vec![Statement::new(sql)], options).await;
    let result = reply.results.into_iter().next().ok_or_else(|| error("XX000", "the catalog query returned nothing"))?;
    match &result.error {
        Some(failed) => Err(error("XX000", failed.clone())),
        None => Ok(result),
    }
}

async fn relations(node: &Node) -> PgWireResult<Vec<Relation>> {
    let schema = local(node, "SELECT name, type FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '\\_tern\\_%' ESCAPE '\\' ORDER BY rowid").await?;
    Ok(schema
        .values
        .iter()
        .enumerate()
        .filter_map(|(index, row)| match (row.first(), row.get(1)) {
            (Some(SqlValue::Text(name)), Some(SqlValue::Text(kind))) => {
                Some(Relation { oid: FIRST_OID + index as i64, name: name.clone(), view: kind == "view" })
            }
            _ => None,
        })
        .collect())
}

/// Each column: name, PostgreSQL type name, default, not null, collation, identity, generated.
async fn columns_of(node: &Node, table: &str) -> PgWireResult<Vec<Vec<SqlValue>>> {
    let quoted = table.replace('\'', "''");
    let info = local(node, &format!("SELECT name, type, dflt_value, \"notnull\", pk FROM pragma_table_info('{quoted}') ORDER BY cid")).await?;
    Ok(info
        .values
        .iter()
        .map(|row| {
            let text_at = |index: usize| match row.get(index) {
                Some(SqlValue::Text(text)) => text.clone(),
                _ => String::new(),
            };
            let flag_at = |index: usize| matches!(row.get(index), Some(SqlValue::Integer(value)) if *value != 0);
            let default = match row.get(2) {
                Some(SqlValue::Text(text)) => SqlValue::Text(text.clone()),
                _ => SqlValue::Null,
            };
            // A rowid alias is never null, whatever it declares.
            let not_null = flag_at(3) || (flag_at(4) && text_at(1).eq_ignore_ascii_case("integer"));
            vec![
                SqlValue::Text(text_at(0)),
                SqlValue::Text(type_name(&text_at(1))),
                default,
                SqlValue::Text(if not_null { "t" } else { "f" }.to_string()),
                SqlValue::Null,
                SqlValue::Text(String::new()),
                SqlValue::Text(String::new()),
            ]
        })
        .collect())
}

/// A SQLite declared type in PostgreSQL's words, by SQLite's affinity rules.
fn type_name(declared: &str) -> String {
    let upper = declared.to_uppercase();
    if upper.is_empty() {
        "any".to_string()
    } else if upper == "INTEGER" || upper == "INT" || upper == "BIGINT" {
        "bigint".to_string()
    } else if upper.contains("REAL") || upper.contains("FLOA") || upper.contains("DOUB") {
        "double precision".to_string()
    } else if upper == "TEXT" {
        "text".to_string()
    } else if upper == "BLOB" {
        "bytea".to_string()
    } else {
        declared.to_lowercase()
    }
}

/// The name pattern psql sends for `\dt PATTERN` / `\d NAME`: `relname OPERATOR(pg_catalog.~) '^(…)$'`.
fn name_pattern(sql: &str) -> Option<String> {
    let start = sql.find("OPERATOR(pg_catalog.~) '^(")? + "OPERATOR(pg_catalog.~) '^(".len();
    let rest = &sql[start..];
    let end = rest.find(")$'")?;
    Some(rest[..end].replace("''", "'"))
}

/// One piece of a psql pattern.
#[derive(Clone, Copy, PartialEq)]
enum Piece {
    AnyRun,
    AnyOne,
    Literal(char),
}

/// psql's patterns are regular expressions made from a glob: literal characters, `.*`
/// for `*`, `.` for `?`, and `\` escapes. That much is matched here, in time linear in
/// pattern × name (no backtracking; longer patterns than any name are refused).
fn matches(pattern: &str, name: &str) -> bool {
    let mut pieces: Vec<Piece> = Vec::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        let piece = match c {
            '.' if chars.peek() == Some(&'*') => {
                chars.next();
                Piece::AnyRun
            }
            '.' => Piece::AnyOne,
            '\\' => Piece::Literal(chars.next().unwrap_or('\\')),
            other => Piece::Literal(other),
        };
        if !(piece == Piece::AnyRun && pieces.last() == Some(&Piece::AnyRun)) {
            pieces.push(piece);
        }
    }
    let name: Vec<char> = name.chars().collect();
    if pieces.len() > 4 * name.len() + 64 {
        return false;
    }
    // reachable[j]: the pieces so far can match name[..j].
    let mut reachable = vec![false; name.len() + 1];
    reachable[0] = true;
    for piece in pieces {
        let mut next = vec![false; name.len() + 1];
        for j in 0..=name.len() {
            match piece {
                Piece::AnyRun => next[j] = reachable[j] || (j > 0 && next[j - 1]),
                Piece::AnyOne => next[j] = j > 0 && reachable[j - 1],
                Piece::Literal(literal) => next[j] = j > 0 && reachable[j - 1] && name[j - 1] == literal,
            }
        }
        reachable = next;
    }
    reachable[name.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psql_patterns_match_as_globs() {
        let sql = "WHERE c.relname OPERATOR(pg_catalog.~) '^(peo.*)$' COLLATE pg_catalog.default";
        let pattern = name_pattern(sql).expect("a pattern");
        assert!(matches(&pattern, "people"));
        assert!(!matches(&pattern, "orders"));
        assert!(matches("a.c", "abc"));
        assert!(matches("it\\'s", "it's") || matches("it's", "it's"));
        assert!(!matches("abc", "ab"));
    }

    #[test]
    fn a_pattern_of_many_stars_is_matched_in_linear_time() {
        // psql sends `\dt ******…x` as `.*.*.*…x`: no backtracking, no deep recursion.
        assert!(matches(&format!("{}x", ".*".repeat(30)), "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaax"));
        assert!(!matches(&format!("{}y", ".*".repeat(30)), "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaax"));
        assert!(matches(&".*".repeat(100_000), "anything"));
        assert!(!matches(&".".repeat(100_000), "short"), "a pattern far longer than any name is refused at once");
    }

    #[test]
    fn declared_types_read_as_postgresql_types() {
        assert_eq!(type_name("INTEGER"), "bigint");
        assert_eq!(type_name("real"), "double precision");
        assert_eq!(type_name("VARCHAR(20)"), "varchar(20)");
        assert_eq!(type_name(""), "any");
    }
}
