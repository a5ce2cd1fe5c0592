//! Requests and results in the shapes of rqlite's HTTP API, plus the conversions between
//! them, JSON and SQLite. These cross the peer link when a follower forwards a request,
//! so they are plain serde types (postcard-friendly: no untagged or skipped fields).

use rusqlite::types::Value;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value as Json};

/// A SQL value as carried in parameters, results and the statement log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SqlValue {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl From<Value> for SqlValue {
    fn from(value: Value) -> SqlValue {
        match value {
            Value::Null => SqlValue::Null,
            Value::Integer(number) => SqlValue::Integer(number),
            Value::Real(number) => SqlValue::Real(number),
            Value::Text(text) => SqlValue::Text(text),
            Value::Blob(bytes) => SqlValue::Blob(bytes),
        }
    }
}

impl From<&SqlValue> for Value {
    fn from(value: &SqlValue) -> Value {
        match value {
            SqlValue::Null => Value::Null,
            SqlValue::Integer(number) => Value::Integer(*number),
            SqlValue::Real(number) => Value::Real(*number),
            SqlValue::Text(text) => Value::Text(text.clone()),
            SqlValue::Blob(bytes) => Value::Blob(bytes.clone()),
        }
    }
}

/// How results are rendered as JSON, from rqlite's query-string flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JsonStyle {
    /// `associative`: rows as objects keyed by column, and types as one object.
    pub associative: bool,
    /// `blob_array`: BLOBs as arrays of byte values instead of base64 strings.
    pub blob_array: bool,
    /// `timings`: each result's `time`, in seconds.
    pub timings: bool,
}

impl SqlValue {
    /// JSON as rqlite renders it: blobs as base64 strings.
    pub fn to_json(&self) -> Json {
        self.to_json_styled(JsonStyle::default())
    }

    pub fn to_json_styled(&self, style: JsonStyle) -> Json {
        match self {
            SqlValue::Null => Json::Null,
            SqlValue::Integer(number) => json!(number),
            SqlValue::Real(number) => serde_json::Number::from_f64(*number).map_or(Json::Null, Json::Number),
            SqlValue::Text(text) => Json::String(text.clone()),
            SqlValue::Blob(bytes) if style.blob_array => json!(bytes),
            SqlValue::Blob(bytes) => Json::String(blob_text(bytes)),
        }
    }

    /// A parameter from JSON. Booleans become 0/1 as in SQLite; an array of byte values
    /// (0 to 255) is a BLOB, as rqlite takes them.
    ///
    /// # Errors
    /// Objects and other arrays, which have no SQL value, and integers from 2^63 to
    /// 2^64 - 1, beyond SQLite's signed 64 bits (which would otherwise silently become
    /// inexact reals). Larger numbers reach here as reals already (JSON numbers are parsed
    /// as 64-bit floats beyond the integer types) and are taken as reals.
    pub fn from_json(value: &Json) -> Result<SqlValue, String> {
        Ok(match value {
            Json::Null => SqlValue::Null,
            Json::Bool(flag) => SqlValue::Integer(i64::from(*flag)),
            Json::Number(number) => match number.as_i64() {
                Some(integer) => SqlValue::Integer(integer),
                None if number.is_u64() => return Err(format!("integer {number} is beyond SQLite's 64-bit signed range (at most 9223372036854775807)")),
                None => SqlValue::Real(number.as_f64().ok_or_else(|| format!("number {number} is out of range"))?),
            },
            Json::String(text) => SqlValue::Text(text.clone()),
            Json::Array(items) => {
                let bytes: Option<Vec<u8>> = items.iter().map(|item| item.as_u64().and_then(|byte| u8::try_from(byte).ok())).collect();
                SqlValue::Blob(bytes.ok_or_else(|| format!("parameter {value} is not a SQL value: an array must hold byte values 0 to 255 (a BLOB)"))?)
            }
            other => return Err(format!("parameter {other} is not a SQL value (expected null, number, string, boolean or an array of bytes)")),
        })
    }
}

/// Standard base64 with padding, as rqlite uses for BLOB values.
pub fn blob_text(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Params {
    None,
    Positional(Vec<SqlValue>),
    Named(Vec<(String, SqlValue)>),
}

/// One SQL statement with its parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    pub sql: String,
    pub params: Params,
}

impl Statement {
    pub fn new(sql: impl Into<String>) -> Statement {
        Statement { sql: sql.into(), params: Params::None }
    }
}

/// Parses an rqlite request body: a JSON array whose items are SQL strings or
/// `[sql, param, ...]` / `[sql, {"name": value}]` arrays.
///
/// # Errors
/// A message saying what is wrong with the body, for a 400 response.
pub fn parse_statements(body: &[u8]) -> Result<Vec<Statement>, String> {
    let json: Json = serde_json::from_slice(body).map_err(|error| format!("request body is not valid JSON: {error}"))?;
    let Json::Array(items) = json else {
        return Err("request body must be a JSON array of statements, e.g. [\"SELECT 1\"]".to_string());
    };
    items.iter().enumerate().map(|(position, item)| statement_from_json(item).map_err(|error| format!("statement {position}: {error}"))).collect()
}

fn statement_from_json(item: &Json) -> Result<Statement, String> {
    match item {
        Json::String(sql) => Ok(Statement::new(sql.clone())),
        Json::Array(parts) => {
            let Some(Json::String(sql)) = parts.first() else {
                return Err("a parameterized statement is an array whose first item is the SQL string".to_string());
            };
            let params = match &parts[1..] {
                [] => Params::None,
                [Json::Object(named)] => {
                    Params::Named(named.iter().map(|(name, value)| Ok((name.clone(), SqlValue::from_json(value)?))).collect::<Result<_, String>>()?)
                }
                positional => Params::Positional(positional.iter().map(SqlValue::from_json).collect::<Result<_, String>>()?),
            };
            Ok(Statement { sql: sql.clone(), params })
        }
        other => Err(format!("expected a SQL string or [sql, params...] array, got {other}")),
    }
}

/// The outcome of one statement, as rqlite reports it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StatementResult {
    /// Set for statements that return rows (queries).
    pub is_query: bool,
    pub columns: Vec<String>,
    pub types: Vec<String>,
    pub values: Vec<Vec<SqlValue>>,
    pub last_insert_id: i64,
    pub rows_affected: i64,
    pub error: Option<String>,
    /// How long the statement ran, in seconds (rqlite's per-result `time` with `timings`).
    #[serde(default)]
    pub time_s: f64,
}

/// Two results are equal when they say the same: how long each took is not compared.
impl PartialEq for StatementResult {
    fn eq(&self, other: &StatementResult) -> bool {
        let StatementResult { is_query, columns, types, values, last_insert_id, rows_affected, error, time_s: _ } = self;
        *is_query == other.is_query
            && *columns == other.columns
            && *types == other.types
            && *values == other.values
            && *last_insert_id == other.last_insert_id
            && *rows_affected == other.rows_affected
            && *error == other.error
    }
}

impl StatementResult {
    pub fn error(message: impl Into<String>) -> StatementResult {
        StatementResult { error: Some(message.into()), ..StatementResult::default() }
    }

    pub fn to_json(&self) -> Json {
        self.to_json_styled(JsonStyle::default())
    }

    /// rqlite's shape: `columns`, `types`, `values`; with `associative`, `types` as an
    /// object and `rows` as objects keyed by column.
    pub fn to_json_styled(&self, style: JsonStyle) -> Json {
        let mut object = Map::new();
        if let Some(error) = &self.error {
            object.insert("error".into(), Json::String(error.clone()));
        } else if self.is_query && style.associative {
            let types: Map<String, Json> = self.columns.iter().cloned().zip(self.types.iter().map(|kind| json!(kind))).collect();
            object.insert("types".into(), Json::Object(types));
            let rows: Vec<Json> = self
                .values
                .iter()
                .map(|row| Json::Object(self.columns.iter().cloned().zip(row.iter().map(|value| value.to_json_styled(style))).collect()))
                .collect();
            object.insert("rows".into(), Json::Array(rows));
        } else if self.is_query {
            object.insert("columns".into(), json!(self.columns));
            object.insert("types".into(), json!(self.types));
            if !self.values.is_empty() {
                let rows: Vec<Json> = self.values.iter().map(|row| Json::Array(row.iter().map(|value| value.to_json_styled(style)).collect())).collect();
                object.insert("values".into(), Json::Array(rows));
            }
        } else {
            object.insert("last_insert_id".into(), json!(self.last_insert_id));
            object.insert("rows_affected".into(), json!(self.rows_affected));
        }
        if style.timings && self.error.is_none() {
            object.insert("time".into(), json!(self.time_s));
        }
        Json::Object(object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_rqlite_statement_form() {
        let body = br#"["CREATE TABLE t (a)", ["INSERT INTO t VALUES (?, ?)", 1, "x"], ["INSERT INTO t VALUES (:a)", {"a": 2.5}], ["SELECT 1"]]"#;
        let statements = parse_statements(body).unwrap();
        assert_eq!(statements[0], Statement::new("CREATE TABLE t (a)"));
        assert_eq!(statements[1].params, Params::Positional(vec![SqlValue::Integer(1), SqlValue::Text("x".into())]));
        assert_eq!(statements[2].params, Params::Named(vec![("a".into(), SqlValue::Real(2.5))]));
        assert_eq!(statements[3].params, Params::None);
    }

    #[test]
    fn malformed_bodies_are_explained() {
        assert!(parse_statements(b"[\"SELECT 1\"").unwrap_err().contains("not valid JSON"));
        assert!(parse_statements(b"{\"q\": 1}").unwrap_err().contains("JSON array"));
        assert!(parse_statements(b"[[1, 2]]").unwrap_err().starts_with("statement 0:"));
        assert!(parse_statements(b"[[\"SELECT ?\", [1, 300]]]").unwrap_err().contains("byte values 0 to 255"));
        assert!(parse_statements(b"[[\"SELECT ?\", 18446744073709551615]]").unwrap_err().contains("64-bit signed range"));
    }

    #[test]
    fn blobs_go_in_as_byte_arrays_and_come_out_as_rqlite_renders_them() {
        let statements = parse_statements(b"[[\"SELECT ?\", [0, 255, 16]]]").unwrap();
        assert_eq!(statements[0].params, Params::Positional(vec![SqlValue::Blob(vec![0, 255, 16])]));
        let result = StatementResult {
            is_query: true,
            columns: vec!["b".into(), "n".into()],
            types: vec!["blob".into(), "integer".into()],
            values: vec![vec![SqlValue::Blob(vec![0, 255]), SqlValue::Integer(7)]],
            ..StatementResult::default()
        };
        assert_eq!(result.to_json()["values"], json!([["AP8=", 7]]));
        let style = JsonStyle { associative: true, blob_array: true, timings: false };
        assert_eq!(result.to_json_styled(style), json!({"types": {"b": "blob", "n": "integer"}, "rows": [{"b": [0, 255], "n": 7}]}));
    }

    #[test]
    fn blobs_are_standard_base64() {
        assert_eq!(blob_text(b""), "");
        assert_eq!(blob_text(b"f"), "Zg==");
        assert_eq!(blob_text(b"fo"), "Zm8=");
        assert_eq!(blob_text(b"foobar"), "Zm9vYmFy");
        assert_eq!(blob_text(&[0xff, 0xfe]), "//4=");
    }

    #[test]
    fn results_render_like_rqlite() {
        let write = StatementResult { last_insert_id: 3, rows_affected: 1, ..Default::default() };
        assert_eq!(write.to_json(), json!({"last_insert_id": 3, "rows_affected": 1}));
        let query = StatementResult {
            is_query: true,
            columns: vec!["id".into()],
            types: vec!["integer".into()],
            values: vec![vec![SqlValue::Integer(1)]],
            ..Default::default()
        };
        assert_eq!(query.to_json(), json!({"columns": ["id"], "types": ["integer"], "values": [[1]]}));
        assert_eq!(StatementResult::error("boom").to_json(), json!({"error": "boom"}));
    }
}
