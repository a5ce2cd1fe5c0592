//! Device sync (issue 15): the JSON form of region writes, as the sync endpoints carry
//! them (documented in docs/sync-protocol.md, so clients in any language can speak it),
//! and the causal order a page of pulled writes is handed out in.
//!
//! A write in JSON:
//! `{"origin": "alice-phone", "seq": 3, "seen": {"us-east": 10, "alice-phone": 2},
//!   "time": {"wall_us": 1764000000000000, "logical": 0},
//!   "schema": [{"sql": "CREATE TABLE ..", "params": [..]}],
//!   "rows": [{"table": "bookings", "key": [..], "values": [..] | null, "unset": [2]}]}`
//! Values are JSON null, numbers (an integer, or a real written with a point or an
//! exponent), strings, `{"base64": ".."}` for a blob and `{"real": "inf"}` / `"-inf"`.
//! `values: null` deletes the row; `unset` lists the columns a column-merge write leaves.

use crate::engine::{RegionPayload, StorageError};
use crate::region_log::LoggedWrite;
use crate::sql::{blob_text, Params, SqlValue};
use base64::Engine as _;
use serde_json::{json, Map, Value};
use tern_core::multi_leader::{CausalQueue, Dot, Stamp, VersionVector};
use tern_core::Timestamp;

type Result<T> = std::result::Result<T, String>;

/// A value, typed so that it comes back as it went (a blob stays a blob, 1.0 a real).
pub fn value_to_json(value: &SqlValue) -> Value {
    match value {
        SqlValue::Null => Value::Null,
        SqlValue::Integer(number) => json!(number),
        SqlValue::Real(number) if number.is_finite() => json!(number),
        SqlValue::Real(number) => json!({ "real": if *number > 0.0 { "inf" } else { "-inf" } }),
        SqlValue::Text(text) => Value::String(text.clone()),
        SqlValue::Blob(bytes) => json!({ "base64": blob_text(bytes) }),
    }
}

/// # Errors
/// If `value` is none of the forms [`value_to_json`] writes.
pub fn value_from_json(value: &Value) -> Result<SqlValue> {
    Ok(match value {
        Value::Null => SqlValue::Null,
        Value::Number(number) if number.is_f64() => SqlValue::Real(number.as_f64().ok_or_else(|| format!("{number} is not a real"))?),
        Value::Number(number) => SqlValue::Integer(number.as_i64().ok_or_else(|| format!("integer {number} is out of range"))?),
        Value::String(text) => SqlValue::Text(text.clone()),
        Value::Object(object) if object.len() == 1 => match (object.get("base64"), object.get("real")) {
            (Some(Value::String(text)), _) => {
                SqlValue::Blob(base64::engine::general_purpose::STANDARD.decode(text).map_err(|error| format!("a blob's base64 is invalid: {error}"))?)
            }
            (_, Some(Value::String(text))) if text == "inf" => SqlValue::Real(f64::INFINITY),
            (_, Some(Value::String(text))) if text == "-inf" => SqlValue::Real(f64::NEG_INFINITY),
            _ => return Err(format!("{value} is not a value (expected {{\"base64\": ..}} or {{\"real\": \"inf\"}})")),
        },
        other => return Err(format!("{other} is not a value")),
    })
}

pub fn vector_to_json(vector: &VersionVector) -> Value {
    Value::Object(vector.iter().map(|(origin, seq)| (origin.to_string(), json!(seq))).collect())
}

/// # Errors
/// If `value` is not an object of origin → whole number.
pub fn vector_from_json(value: &Value) -> Result<VersionVector> {
    let Value::Object(object) = value else { return Err(format!("a vector is an object of origin -> number, not {value}")) };
    let mut vector = VersionVector::new();
    for (origin, seq) in object {
        let seq = seq.as_u64().ok_or_else(|| format!("{origin}: {seq} is not a whole number"))?;
        if seq > 0 {
            vector.advance(&Dot::new(origin.clone(), seq));
        }
    }
    Ok(vector)
}

fn params_to_json(params: &Params) -> Option<Value> {
    match params {
        Params::None => None,
        Params::Positional(values) => Some(Value::Array(values.iter().map(value_to_json).collect())),
        Params::Named(values) => Some(Value::Object(values.iter().map(|(name, value)| (name.clone(), value_to_json(value))).collect())),
    }
}

fn params_from_json(value: Option<&Value>) -> Result<Params> {
    Ok(match value {
        None | Some(Value::Null) => Params::None,
        Some(Value::Array(values)) => Params::Positional(values.iter().map(value_from_json).collect::<Result<_>>()?),
        Some(Value::Object(values)) => Params::Named(values.iter().map(|(name, value)| Ok((name.clone(), value_from_json(value)?))).collect::<Result<_>>()?),
        Some(other) => return Err(format!("params {other} are neither an array nor an object")),
    })
}

/// A logged write in its JSON form.
///
/// # Errors
/// If its payload is not a region write (a damaged log).
pub fn write_to_json(write: &LoggedWrite) -> std::result::Result<Value, StorageError> {
    let payload = RegionPayload::decode(&write.payload)?;
    let schema: Vec<Value> = payload
        .schema
        .iter()
        .map(|(sql, params)| {
            let mut statement = json!({ "sql": sql });
            if let Some(params) = params_to_json(params) {
                statement["params"] = params;
            }
            statement
        })
        .collect();
    let rows: Vec<Value> = payload
        .rows
        .iter()
        .map(|(table, key, values)| {
            let mut row = json!({
                "table": table,
                "key": key.iter().map(value_to_json).collect::<Vec<_>>(),
                "values": values.as_ref().map(|values| values.iter().map(|value| value.as_ref().map_or(Value::Null, value_to_json)).collect::<Vec<_>>()),
            });
            let unset: Vec<usize> = values.iter().flatten().enumerate().filter(|(_, value)| value.is_none()).map(|(index, _)| index).collect();
            if !unset.is_empty() {
                row["unset"] = json!(unset);
            }
            row
        })
        .collect();
    Ok(json!({
        "origin": write.dot.region,
        "seq": write.dot.seq,
        "seen": vector_to_json(&write.seen),
        "time": { "wall_us": payload.stamp.time.wall_us, "logical": payload.stamp.time.logical },
        "schema": schema,
        "rows": rows,
    }))
}

fn field<'a>(object: &'a Map<String, Value>, name: &str) -> Result<&'a Value> {
    object.get(name).ok_or_else(|| format!("a write needs \"{name}\""))
}

fn text(value: &Value, what: &str) -> Result<String> {
    value.as_str().map(str::to_string).ok_or_else(|| format!("{what} must be a string"))
}

fn array<'a>(value: &'a Value, what: &str) -> Result<&'a Vec<Value>> {
    value.as_array().ok_or_else(|| format!("{what} must be an array"))
}

/// A write from its JSON form; its payload re-encoded as the log keeps it.
///
/// # Errors
/// Whatever does not fit the form, said plainly.
pub fn write_from_json(value: &Value) -> Result<LoggedWrite> {
    let object = value.as_object().ok_or("a write must be a JSON object")?;
    let origin = text(field(object, "origin")?, "origin")?;
    if origin.is_empty() || origin.len() > 128 {
        return Err("origin must be 1 to 128 bytes".to_string());
    }
    let seq = field(object, "seq")?.as_u64().filter(|seq| *seq > 0 && *seq <= i64::MAX as u64).ok_or("seq must be a whole number from 1")?;
    let seen = vector_from_json(field(object, "seen")?)?;
    let time = field(object, "time")?;
    let wall_us = time["wall_us"].as_u64().ok_or("time.wall_us must be a whole number")?;
    let logical = time["logical"].as_u64().and_then(|logical| u32::try_from(logical).ok()).ok_or("time.logical must be a whole number")?;
    let mut schema = Vec::new();
    for statement in array(object.get("schema").unwrap_or(&json!([])), "schema")? {
        schema.push((text(&statement["sql"], "a schema statement's sql")?, params_from_json(statement.get("params"))?));
    }
    let mut rows = Vec::new();
    for row in array(object.get("rows").unwrap_or(&json!([])), "rows")? {
        let table = text(&row["table"], "a row's table")?;
        let key = array(&row["key"], "a row's key")?.iter().map(value_from_json).collect::<Result<Vec<_>>>()?;
        if key.is_empty() {
            return Err(format!("a row of {table} has an empty key"));
        }
        let unset: Vec<u64> = match row.get("unset") {
            None | Some(Value::Null) => Vec::new(),
            Some(unset) => {
                array(unset, "unset")?.iter().map(|index| index.as_u64().ok_or_else(|| "unset lists column numbers".to_string())).collect::<Result<_>>()?
            }
        };
        let values = match &row["values"] {
            Value::Null => None,
            values => Some(
                array(values, "a row's values")?
                    .iter()
                    .enumerate()
                    .map(|(index, value)| if unset.contains(&(index as u64)) { Ok(None) } else { value_from_json(value).map(Some) })
                    .collect::<Result<Vec<_>>>()?,
            ),
        };
        rows.push((table, key, values));
    }
    let dot = Dot::new(origin.clone(), seq);
    let payload = RegionPayload { stamp: Stamp::new(Timestamp { wall_us, logical }, origin), schema, rows };
    let payload = postcard::to_allocvec(&payload).map_err(|error| format!("cannot encode write {dot}: {error}"))?;
    Ok(LoggedWrite { dot, seen, payload })
}

/// Whether `writes`, pushed by device `device`, may go into the cluster's streams: each
/// is the device's own, changes no schema, and sets rows of existing user tables with
/// whole keys and rows. (Every region will apply them: one that cannot fit would stop
/// the exchange.)
///
/// # Errors
/// The first thing wrong, said plainly.
pub(crate) fn check_device_writes(connection: &rusqlite::Connection, device: &str, writes: &[LoggedWrite]) -> std::result::Result<(), StorageError> {
    let homed: Vec<String> = if crate::engine::has_table(connection, "_tern_home_rule")? {
        crate::row_versions::home_rules(connection)?.into_iter().map(|rule| rule.table).collect()
    } else {
        Vec::new()
    };
    let mut tables: Vec<TableCheck> = Vec::new();
    for write in writes {
        let refuse = |why: String| Err(StorageError::new(format!("write {}: {why}", write.dot)));
        if write.dot.region != device {
            return refuse(format!("not device {device}'s own: a device pushes only its own writes"));
        }
        let payload = RegionPayload::decode(&write.payload)?;
        if !payload.schema.is_empty() {
            return refuse("it changes the schema: devices take the schema from the cluster".to_string());
        }
        for (table, key, values) in &payload.rows {
            if crate::guard::is_internal_table(table) || table.to_ascii_lowercase().starts_with("sqlite_") {
                return refuse(format!("it sets a row of {table}, which is tern's or SQLite's own"));
            }
            if homed.contains(table) || table == crate::row_versions::HOME_DIRECTORY {
                return refuse(format!("{table}'s rows have home regions, and only a row's home writes it"));
            }
            if !tables.iter().any(|known| known.shape.name == *table) {
                tables.push(TableCheck::of(connection, table).map_err(|error| StorageError::new(format!("write {}: {error}", write.dot)))?);
            }
            let check = tables.iter().find(|known| known.shape.name == *table).expect("just added");
            if let Some(why) = check.refusal(key, values.as_deref()) {
                return refuse(format!("a row of {table} {why}"));
            }
        }
    }
    Ok(())
}

/// What a pushed row must fit in one table: every region applies it, and one that does
/// not fit would stop a region's exchange.
struct TableCheck {
    shape: crate::row_versions::TableShape,
    /// The key is the rowid: its value must be an integer.
    rowid_key: bool,
    not_null: Vec<bool>,
}

impl TableCheck {
    fn of(connection: &rusqlite::Connection, table: &str) -> std::result::Result<TableCheck, StorageError> {
        let shape = crate::row_versions::shape(connection, table)?;
        let rowid_key = crate::engine::has_rowid_key(connection, table)?;
        let not_null = connection
            .prepare("SELECT \"notnull\" FROM pragma_table_info(?1) ORDER BY cid")?
            .query_map([table], |row| row.get::<_, bool>(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(TableCheck { shape, rowid_key, not_null })
    }

    /// Why the row `key` set to `values` (`None`: deleted) does not fit, if it does not.
    fn refusal(&self, key: &[SqlValue], values: Option<&[Option<SqlValue>]>) -> Option<String> {
        if key.len() != self.shape.key.len() {
            return Some(format!("has a key of {} values; the table's has {}", key.len(), self.shape.key.len()));
        }
        if self.rowid_key && !matches!(key, [SqlValue::Integer(_)]) {
            return Some("has a key that is not an integer (its key is an INTEGER PRIMARY KEY)".to_string());
        }
        let values = values?;
        if values.len() != self.shape.columns.len() {
            return Some(format!("has {} columns; the table has {}", values.len(), self.shape.columns.len()));
        }
        if self.shape.policy != tern_core::multi_leader::Policy::ColumnMerge && values.iter().any(Option::is_none) {
            return Some(format!("leaves columns unset, which only column-merge tables take (this one is {})", self.shape.policy.name()));
        }
        for (place, column) in self.shape.key.iter().enumerate() {
            if values[*column].as_ref() != Some(&key[place]) {
                return Some(format!("has key column {} set to other than its key", self.shape.columns[*column]));
            }
        }
        let null_in_not_null = values.iter().zip(&self.not_null).position(|(value, not_null)| *not_null && matches!(value, Some(SqlValue::Null)));
        null_in_not_null.map(|column| format!("sets NOT NULL column {} to null", self.shape.columns[column]))
    }
}

/// Of `candidates` (writes a device lacks, any order), those it can apply given that it
/// holds `holds`, in an order that applies each after everything it had seen: the
/// order a page of pulled writes is handed out in. Writes waiting for others not among
/// the candidates are left out (a later page brings them).
pub fn causal_order(holds: &VersionVector, candidates: Vec<LoggedWrite>) -> Vec<LoggedWrite> {
    let mut queue = CausalQueue::new(holds.clone());
    for write in candidates {
        queue.receive(write.dot, write.seen, write.payload);
    }
    let mut ordered = Vec::new();
    while let Some((dot, seen, payload)) = queue.release() {
        ordered.push(LoggedWrite { dot, seen, payload });
    }
    ordered
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample_write() -> LoggedWrite {
        let mut seen = VersionVector::new();
        seen.advance(&Dot::new("us-east", 10));
        let rows = vec![
            (
                "bookings".to_string(),
                vec![SqlValue::Text("r1-9am".into())],
                Some(vec![Some(SqlValue::Text("r1-9am".into())), None, Some(SqlValue::Blob(vec![0, 255]))]),
            ),
            ("bookings".to_string(), vec![SqlValue::Integer(7)], None),
        ];
        let payload = RegionPayload {
            stamp: Stamp::new(Timestamp { wall_us: 5, logical: 2 }, "phone"),
            schema: vec![
                ("CREATE TABLE t (id INTEGER PRIMARY KEY)".into(), Params::None),
                ("INSERT INTO t VALUES (?1)".into(), Params::Positional(vec![SqlValue::Real(1.0)])),
            ],
            rows,
        };
        LoggedWrite { dot: Dot::new("phone", 3), seen, payload: postcard::to_allocvec(&payload).unwrap() }
    }

    #[test]
    fn a_write_comes_back_from_json_as_it_went() {
        let write = sample_write();
        let json = write_to_json(&write).unwrap();
        assert_eq!(json["rows"][0]["unset"], json!([1]));
        assert_eq!(json["rows"][0]["values"][2], json!({"base64": "AP8="}));
        assert_eq!(json["schema"][1]["params"], json!([1.0]));
        assert_eq!(write_from_json(&json).unwrap(), write);
        let text = serde_json::to_string(&json).unwrap();
        assert_eq!(write_from_json(&serde_json::from_str(&text).unwrap()).unwrap(), write, "through text too");
    }

    #[test]
    fn values_keep_their_types_through_json() {
        for value in [
            SqlValue::Null,
            SqlValue::Integer(-3),
            SqlValue::Real(1.0),
            SqlValue::Real(f64::NEG_INFINITY),
            SqlValue::Text("Andrés".into()),
            SqlValue::Blob(vec![]),
        ] {
            let text = serde_json::to_string(&value_to_json(&value)).unwrap();
            assert_eq!(value_from_json(&serde_json::from_str(&text).unwrap()).unwrap(), value, "{text}");
        }
    }

    #[test]
    fn a_page_is_ordered_so_each_write_follows_what_it_saw_and_waits_for_what_is_missing() {
        let write = |origin: &str, seq: u64, saw: &[(&str, u64)]| {
            let mut seen = VersionVector::new();
            for (region, seq) in saw {
                seen.advance(&Dot::new(*region, *seq));
            }
            LoggedWrite { dot: Dot::new(origin, seq), seen, payload: Vec::new() }
        };
        let candidates = vec![write("b", 1, &[("a", 2)]), write("a", 2, &[("a", 1)]), write("a", 1, &[]), write("c", 1, &[("d", 1)])];
        let order: Vec<String> = causal_order(&VersionVector::new(), candidates).iter().map(|write| write.dot.to_string()).collect();
        assert_eq!(order, ["a#1", "a#2", "b#1"], "c:1 waits for d:1, which is not in the page");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        /// Any JSON-ish text: a write or a plain error, never a panic.
        #[test]
        fn any_text_is_a_write_or_an_error(text in "[{}\\[\\]\"a-z:,0-9 .é-]{0,80}", bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            for input in [text.as_bytes(), bytes.as_slice()] {
                if let Ok(value) = serde_json::from_slice::<Value>(input) {
                    let _ = write_from_json(&value);
                    let _ = vector_from_json(&value);
                    let _ = value_from_json(&value);
                }
            }
        }
    }
}
