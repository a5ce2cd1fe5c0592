//! SQLite's values as PostgreSQL clients expect them: a column type for each result
//! column, rows encoded in the format the client asked for, parameters decoded from
//! either format, and SQLite's error messages given SQLSTATE codes.

use pgwire::api::portal::{Format, Portal};
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo, QueryResponse};
use pgwire::api::Type;
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use std::sync::Arc;
use tern_storage::{SqlValue, StatementResult};

/// An error for the client, with its SQLSTATE code.
pub fn error(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".to_string(), code.to_string(), message.into())))
}

/// The SQLSTATE of a SQLite error message (SQLite has codes, but tern's results carry the
/// message; these are the ones clients act on).
pub fn sqlstate_of(message: &str) -> &'static str {
    let lower = message.to_lowercase();
    let has = |needle: &str| lower.contains(needle);
    if has("syntax error") || has("incomplete input") || has("unrecognized token") {
        "42601"
    } else if has("no such table") {
        "42P01"
    } else if has("no such column") {
        "42703"
    } else if has("no such function") {
        "42883"
    } else if has("already exists") {
        "42P07"
    } else if has("unique constraint failed") || has("primary key must be unique") {
        "23505"
    } else if has("not null constraint failed") {
        "23502"
    } else if has("foreign key constraint failed") {
        "23503"
    } else if has("check constraint failed") {
        "23514"
    } else if has("datatype mismatch") {
        "42804"
    } else if has("interrupted") || has("timed out") || has("time limit") {
        "57014"
    } else if has("too big") || has("too large") || has("exceed") {
        "54000"
    } else {
        "XX000"
    }
}

/// The format of result column or parameter `index`, Text unless the client asked for
/// binary (a client sending fewer format codes than columns gets text, not a panic).
pub fn format_at(format: &Format, index: usize) -> FieldFormat {
    match format {
        Format::UnifiedBinary => FieldFormat::Binary,
        Format::Individual(codes) if codes.get(index) == Some(&1) => FieldFormat::Binary,
        _ => FieldFormat::Text,
    }
}

/// A result column's PostgreSQL type: [`value_type`], with integers as `int4` when every
/// one fits and the column is not declared `BIGINT`/`INT8` (SQLite's INTEGER is 64-bit,
/// but PostgreSQL's `integer` is `int4`, and clients such as node-postgres give `int8` as
/// strings).
fn column_type(result: &StatementResult, column: usize) -> Type {
    let kind = value_type(result, column);
    let declared = result.types.get(column).map(|kind| kind.to_uppercase()).unwrap_or_default();
    let fits = || result.values.iter().all(|row| !matches!(row.get(column), Some(SqlValue::Integer(number)) if i32::try_from(*number).is_err()));
    if kind == Type::INT8 && !declared.contains("BIGINT") && !declared.contains("INT8") && fits() {
        Type::INT4
    } else {
        kind
    }
}

/// A result column's type from its values when they agree (SQLite columns hold any type),
/// else from its declared type, else text.
fn value_type(result: &StatementResult, column: usize) -> Type {
    let mut seen: Option<Type> = None;
    for row in &result.values {
        let here = match row.get(column) {
            Some(SqlValue::Integer(_)) => Type::INT8,
            Some(SqlValue::Real(_)) => Type::FLOAT8,
            Some(SqlValue::Text(_)) => Type::TEXT,
            Some(SqlValue::Blob(_)) => Type::BYTEA,
            Some(SqlValue::Null) | None => continue,
        };
        seen = Some(match seen {
            None => here,
            Some(earlier) if earlier == here => earlier,
            // Integers and reals mix as numbers; anything else mixed shows as text.
            Some(earlier) if [&earlier, &here].iter().all(|kind| **kind == Type::INT8 || **kind == Type::FLOAT8) => Type::FLOAT8,
            Some(_) => return Type::TEXT,
        });
    }
    seen.unwrap_or_else(|| {
        let declared = result.types.get(column).map(|kind| kind.to_uppercase()).unwrap_or_default();
        if declared.contains("INT") {
            Type::INT8
        } else if declared.contains("REAL") || declared.contains("FLOA") || declared.contains("DOUB") {
            Type::FLOAT8
        } else if declared.contains("BLOB") {
            Type::BYTEA
        } else {
            Type::TEXT
        }
    })
}

/// A value as text, as PostgreSQL prints it (bytea as `\x` and hex).
fn as_text(value: &SqlValue) -> Option<String> {
    match value {
        SqlValue::Null => None,
        SqlValue::Integer(number) => Some(number.to_string()),
        SqlValue::Real(number) => Some(float_text(*number)),
        SqlValue::Text(text) => Some(text.clone()),
        SqlValue::Blob(bytes) => Some(format!("\\x{}", bytes.iter().map(|byte| format!("{byte:02x}")).collect::<String>())),
    }
}

fn float_text(number: f64) -> String {
    if number.is_nan() {
        "NaN".to_string()
    } else if number.is_infinite() {
        if number > 0.0 { "Infinity" } else { "-Infinity" }.to_string()
    } else {
        number.to_string()
    }
}

/// Rows of a query result, encoded up front (the result is already in memory).
pub fn query_response(result: &StatementResult, format: &Format) -> PgWireResult<QueryResponse> {
    let fields: Vec<FieldInfo> = result
        .columns
        .iter()
        .enumerate()
        .map(|(index, name)| FieldInfo::new(name.clone(), None, None, column_type(result, index), format_at(format, index)))
        .collect();
    let schema = Arc::new(fields);
    let mut encoder = DataRowEncoder::new(schema.clone());
    let mut rows: Vec<PgWireResult<DataRow>> = Vec::with_capacity(result.values.len());
    for row in &result.values {
        for (index, field) in schema.iter().enumerate() {
            let value = row.get(index).unwrap_or(&SqlValue::Null);
            match (field.datatype(), value) {
                (_, SqlValue::Null) => encoder.encode_field(&None::<String>)?,
                (&Type::INT8, SqlValue::Integer(number)) => encoder.encode_field(number)?,
                (&Type::INT4, SqlValue::Integer(number)) => encoder.encode_field(&i32::try_from(*number).unwrap_or_default())?,
                (&Type::FLOAT8, SqlValue::Integer(number)) => encoder.encode_field(&(*number as f64))?,
                (&Type::FLOAT8, SqlValue::Real(number)) => encoder.encode_field(number)?,
                (&Type::BYTEA, SqlValue::Blob(bytes)) => encoder.encode_field(bytes)?,
                (_, value) => encoder.encode_field(&as_text(value))?,
            }
        }
        rows.push(Ok(encoder.take_row()));
    }
    Ok(QueryResponse::new(schema, futures::stream::iter(rows)))
}

/// The bound parameters of a portal as SQLite values. Text-format values of unknown type
/// go in as text (SQLite's affinity makes '42' a number where a column wants one).
pub fn parameters(portal: &Portal<String>) -> PgWireResult<Vec<SqlValue>> {
    (0..portal.parameter_len()).map(|index| parameter(portal, index)).collect()
}

fn parameter(portal: &Portal<String>, index: usize) -> PgWireResult<SqlValue> {
    let Some(raw) = portal.parameters.get(index).and_then(Option::as_ref) else { return Ok(SqlValue::Null) };
    let declared = portal.statement.parameter_types.get(index).cloned().flatten();
    let bad = |what: &str| error("22P02", format!("parameter ${} is not a valid {what}", index + 1));
    if format_at(&portal.parameter_format, index) == FieldFormat::Text {
        let text = std::str::from_utf8(raw).map_err(|_| error("22021", format!("parameter ${} is not valid UTF-8", index + 1)))?;
        return Ok(match declared {
            Some(Type::INT2 | Type::INT4 | Type::INT8 | Type::OID) => SqlValue::Integer(text.trim().parse().map_err(|_| bad("integer"))?),
            Some(Type::FLOAT4 | Type::FLOAT8 | Type::NUMERIC) => SqlValue::Real(text.trim().parse().map_err(|_| bad("number"))?),
            Some(Type::BOOL) => match text.trim().to_lowercase().as_str() {
                "t" | "true" | "1" | "on" | "yes" | "y" => SqlValue::Integer(1),
                "f" | "false" | "0" | "off" | "no" | "n" => SqlValue::Integer(0),
                _ => return Err(bad("boolean")),
            },
            Some(Type::BYTEA) => SqlValue::Blob(hex_bytes(text).ok_or_else(|| bad("bytea (\\x and hex digits)"))?),
            _ => SqlValue::Text(text.to_string()),
        });
    }
    let kind = declared.unwrap_or(Type::UNKNOWN);
    let value = match kind {
        Type::INT2 => portal.parameter::<i16>(index, &kind)?.map(|number| SqlValue::Integer(number.into())),
        Type::INT4 => portal.parameter::<i32>(index, &kind)?.map(|number| SqlValue::Integer(number.into())),
        Type::INT8 => portal.parameter::<i64>(index, &kind)?.map(SqlValue::Integer),
        Type::FLOAT4 => portal.parameter::<f32>(index, &kind)?.map(|number| SqlValue::Real(number.into())),
        Type::FLOAT8 => portal.parameter::<f64>(index, &kind)?.map(SqlValue::Real),
        Type::BOOL => portal.parameter::<bool>(index, &kind)?.map(|flag| SqlValue::Integer(flag.into())),
        // Binary bytes of no declared type are bytes: node-postgres sends a Buffer so.
        Type::BYTEA | Type::UNKNOWN => Some(SqlValue::Blob(raw.to_vec())),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
            Some(SqlValue::Text(String::from_utf8(raw.to_vec()).map_err(|_| error("22021", format!("parameter ${} is not valid UTF-8", index + 1)))?))
        }
        other => {
            return Err(error("0A000", format!("parameter ${} has type {}, which tern does not take in binary; send it as text", index + 1, other.name())))
        }
    };
    Ok(value.unwrap_or(SqlValue::Null))
}

/// `\x` followed by hex digit pairs.
fn hex_bytes(text: &str) -> Option<Vec<u8>> {
    let digits = text.strip_prefix("\\x")?;
    if digits.len() % 2 != 0 || !digits.is_ascii() {
        return None;
    }
    (0..digits.len()).step_by(2).map(|at| u8::from_str_radix(&digits[at..at + 2], 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(values: Vec<Vec<SqlValue>>, types: &[&str]) -> StatementResult {
        StatementResult {
            is_query: true,
            columns: types.iter().enumerate().map(|(index, _)| format!("c{index}")).collect(),
            types: types.iter().map(|kind| kind.to_string()).collect(),
            values,
            ..StatementResult::default()
        }
    }

    #[test]
    fn column_types_follow_the_values_then_the_declaration() {
        let mixed = result(
            vec![
                vec![SqlValue::Integer(1), SqlValue::Integer(1), SqlValue::Text("a".into()), SqlValue::Null],
                vec![SqlValue::Null, SqlValue::Real(0.5), SqlValue::Integer(2), SqlValue::Null],
            ],
            &["INTEGER", "", "TEXT", "BLOB"],
        );
        let kinds: Vec<Type> = (0..4).map(|column| column_type(&mixed, column)).collect();
        assert_eq!(kinds, vec![Type::INT4, Type::FLOAT8, Type::TEXT, Type::BYTEA]);
        // Integers are int8 when one does not fit in 32 bits, or the column says BIGINT.
        let wide = result(vec![vec![SqlValue::Integer(1 << 40), SqlValue::Integer(1)]], &["INTEGER", "BIGINT"]);
        assert_eq!([column_type(&wide, 0), column_type(&wide, 1)], [Type::INT8, Type::INT8]);
        let empty = result(Vec::new(), &["INT"]);
        assert_eq!(column_type(&empty, 0), Type::INT4);
    }

    #[test]
    fn errors_get_the_sqlstate_clients_act_on() {
        assert_eq!(sqlstate_of("near \"SELEC\": syntax error"), "42601");
        assert_eq!(sqlstate_of("UNIQUE constraint failed: t.id"), "23505");
        assert_eq!(sqlstate_of("no such table: nope"), "42P01");
        assert_eq!(sqlstate_of("something else"), "XX000");
    }

    #[test]
    fn bytea_text_is_backslash_x_and_hex() {
        assert_eq!(as_text(&SqlValue::Blob(vec![0, 255, 16])).as_deref(), Some("\\x00ff10"));
        assert_eq!(hex_bytes("\\x00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(hex_bytes("\\x0"), None);
        assert_eq!(hex_bytes("\\xé1"), None);
        assert_eq!(float_text(f64::NEG_INFINITY), "-Infinity");
    }
}
