//! Multi-leader's own endpoints: the conflicts on record (`GET /db/conflicts`), settling
//! one (`POST /db/conflicts/resolve`), a table's conflict policy
//! (`POST /db/conflicts/policy`), and the regions part of `/status`.

use super::*;
use crate::node::{RegionChange, RegionStatus};
use tern_core::multi_leader::{Conflict, Dot, Policy, Stamp, VersionVector};
use tern_storage::SqlValue;

fn vector_json(vector: &VersionVector) -> Value {
    Value::Object(vector.iter().map(|(origin, seq)| (origin.to_string(), json!(seq))).collect())
}

fn version_json(dot: &Dot, stamp: &Stamp, values: &Option<Vec<SqlValue>>) -> Value {
    json!({
        "write": dot.to_string(),
        "region": dot.region,
        "time_us": stamp.time.wall_us,
        "values": values.as_ref().map(|values| values.iter().map(SqlValue::to_json).collect::<Vec<_>>()),
    })
}

fn unique_json(table: &str, clash: &tern_storage::row_versions::UniqueConflict) -> Value {
    json!({
        "kind": "unique",
        "table": table,
        "key": clash.key.iter().map(SqlValue::to_json).collect::<Vec<_>>(),
        "held_by": clash.held_by.iter().map(SqlValue::to_json).collect::<Vec<_>>(),
        "values": clash.values.as_ref().map(|values| values.iter().map(SqlValue::to_json).collect::<Vec<_>>()),
    })
}

fn conflict_json(table: &str, columns: &[String], key: &[SqlValue], conflict: &Conflict<SqlValue>) -> Value {
    let (loser, winner) = (&conflict.loser, &conflict.winner);
    json!({
        "kind": "versions",
        "table": table,
        "key": key.iter().map(SqlValue::to_json).collect::<Vec<_>>(),
        "column": conflict.column.map(|index| columns.get(index).cloned().unwrap_or_else(|| index.to_string())),
        "kept": version_json(&winner.0, &winner.1, &winner.2),
        "lost": version_json(&loser.0, &loser.1, &loser.2),
    })
}

/// `GET /db/conflicts`: every losing version on record here, beside the version shown.
pub(super) async fn conflicts(State(node): State<Arc<Node>>) -> Response {
    if node.config.topology != tern_core::Topology::MultiLeader {
        return bad_request("conflicts exist only under --topology multi-leader");
    }
    match node.conflicts().await {
        Ok(tables) => {
            let versions = tables.iter().flat_map(|table| {
                table
                    .rows
                    .iter()
                    .flat_map(move |(key, conflicts)| conflicts.iter().map(move |conflict| conflict_json(&table.table, &table.columns, key, conflict)))
            });
            let unique = tables.iter().flat_map(|table| table.unique.iter().map(move |clash| unique_json(&table.table, clash)));
            let listed: Vec<Value> = versions.chain(unique).collect();
            Json(json!({ "region": node.config.region, "conflicts": listed })).into_response()
        }
        Err(error) => error_response(&error),
    }
}

fn text_field(object: &serde_json::Map<String, Value>, name: &str) -> Result<String, Response> {
    match object.get(name) {
        Some(Value::String(text)) => Ok(text.clone()),
        _ => Err(bad_request(format!("missing \"{name}\": a string"))),
    }
}

fn values_field(object: &serde_json::Map<String, Value>, name: &str) -> Result<Option<Vec<SqlValue>>, Response> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => {
            items.iter().map(SqlValue::from_json).collect::<Result<Vec<_>, _>>().map(Some).map_err(|error| bad_request(format!("{name}: {error}")))
        }
        Some(_) => Err(bad_request(format!("\"{name}\" must be an array of values"))),
    }
}

fn parse_resolve(body: &[u8]) -> Result<RegionChange, Response> {
    let object = object_body(body)?;
    let table = text_field(&object, "table")?;
    let key = values_field(&object, "key")?.ok_or_else(|| bad_request("missing \"key\": the row's key values, in column order"))?;
    Ok(RegionChange::Resolve { table, key, values: values_field(&object, "values")? })
}

fn parse_home_rule(body: &[u8]) -> Result<RegionChange, Response> {
    let object = object_body(body)?;
    let directory = match object.get("directory") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(directory)) => *directory,
        Some(_) => return Err(bad_request("\"directory\" must be true or false")),
    };
    Ok(RegionChange::HomeRule { table: text_field(&object, "table")?, column: text_field(&object, "column")?, directory })
}

/// `POST /db/homes/rule` with `{"table": T, "column": C}`: `T`'s rows have a home region,
/// the one their column `C` names; only it writes them (elsewhere: forwarded there, or
/// 409 with `?home=local`). A row moves by an update of `C` made at its home. With
/// `"directory": true`, `C` holds a key of the home directory (`tern_homes`, which tern
/// keeps), and the directory names the home: one customer's rows in many tables move
/// together when their key moves.
pub(super) async fn set_home_rule(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    match parse_home_rule(&body) {
        Ok(change) => change_response(&node, change).await,
        Err(response) => response,
    }
}

/// `POST /db/homes/move` with `{"table": T, "key": [..], "to": REGION}`: moves one row
/// to another home region, fenced (see `Node::move_home`). Without `"table"`, moves a key
/// of the home directory (`{"key": [42], "to": ..}`), adding it if it has no home yet.
pub(super) async fn move_home(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    let parsed = parse_move(&body);
    let (table, key, to) = match parsed {
        Ok(parsed) => parsed,
        Err(response) => return response,
    };
    match node.move_home(table, key, to).await {
        Ok(reply) => write_response(reply, Instant::now(), &Params::parse(None)),
        Err(error) => error_response(&error),
    }
}

/// Per homed table, how many rows each region is home to, and the moves asked of this
/// node that are not answered yet.
async fn homes_json(node: &Node) -> Result<Value, RequestError> {
    let counts = node.home_counts().await?;
    let tables: Vec<Value> = counts
        .iter()
        .map(|(table, per_region)| {
            let regions: serde_json::Map<String, Value> =
                per_region.iter().map(|(region, count)| (region.clone().unwrap_or_else(|| "(none)".to_string()), json!(count))).collect();
            json!({ "table": table, "rows_per_home": regions })
        })
        .collect();
    let moves: Vec<Value> = node
        .moves
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .iter()
        .map(|listed| {
            json!({
                "table": listed.table,
                "key": listed.key.iter().map(SqlValue::to_json).collect::<Vec<_>>(),
                "from": listed.from,
                "to": listed.to,
                "for_ms": listed.started.elapsed().as_secs_f64() * 1000.0,
            })
        })
        .collect();
    Ok(json!({ "tables": tables, "moves_in_progress": moves }))
}

/// `GET /db/homes`: per homed table, how many rows each region is home to (a directory
/// rule's rows counted by their key's home; `tern_homes` counts the keys), and the moves
/// asked of this node that are not answered yet.
pub(super) async fn homes(State(node): State<Arc<Node>>) -> Response {
    match homes_json(&node).await {
        Ok(mut homes) => {
            homes["region"] = json!(node.config.region);
            Json(homes).into_response()
        }
        Err(error) => error_response(&error),
    }
}

fn parse_move(body: &[u8]) -> Result<(String, Vec<SqlValue>, String), Response> {
    let object = object_body(body)?;
    let key = values_field(&object, "key")?.ok_or_else(|| bad_request("missing \"key\": the row's key values, in column order"))?;
    let table = match object.get("table") {
        None | Some(Value::Null) => tern_storage::row_versions::HOME_DIRECTORY.to_string(),
        Some(_) => text_field(&object, "table")?,
    };
    Ok((table, key, text_field(&object, "to")?))
}

fn parse_policy(body: &[u8]) -> Result<RegionChange, Response> {
    let object = object_body(body)?;
    let table = text_field(&object, "table")?;
    let policy = Policy::parse(&text_field(&object, "policy")?).map_err(bad_request)?;
    Ok(RegionChange::Policy { table, policy })
}

async fn change_response(node: &Node, change: RegionChange) -> Response {
    match node.region_change(change).await {
        Ok(position) => Json(json!({ "position": position.to_string(), "region": node.config.region })).into_response(),
        Err(error) => error_response(&error),
    }
}

/// `POST /db/conflicts/resolve` with `{"table": T, "key": [..], "values": [..]}`: keeps
/// `values` (the whole row; left out: the version shown now) as a write that saw every
/// version of the row, so its conflicts are settled in every region.
pub(super) async fn resolve_conflict(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    match parse_resolve(&body) {
        Ok(change) => change_response(&node, change).await,
        Err(response) => response,
    }
}

/// `POST /db/conflicts/policy` with `{"table": T, "policy": "lww"|"column-merge"|"keep-both"}`.
pub(super) async fn set_policy(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    match parse_policy(&body) {
        Ok(change) => change_response(&node, change).await,
        Err(response) => response,
    }
}

/// The `regions` part of `/status` (multi-leader): what this region holds of every
/// origin, and per other region what it holds, how many of its writes this region still
/// lacks, and when its leader last spoke.
pub(super) async fn regions_status(node: &Node) -> Value {
    let status: RegionStatus = node.region_status().await.unwrap_or_default();
    let conflicted_rows: usize = node.conflicts().await.map(|tables| tables.iter().map(|table| table.rows.len() + table.unique.len()).sum()).unwrap_or(0);
    let regions: Vec<Value> = status
        .regions
        .iter()
        .map(|(region, holds, heard_ms_ago)| {
            json!({
                "region": region,
                "holds": vector_json(holds),
                "missing_here": holds.get(region).saturating_sub(status.holds.get(region)),
                "missing_there": status.holds.get(&node.config.region).saturating_sub(holds.get(&node.config.region)),
                // For how long this region has lacked some of that region's writes (0: none).
                "behind_ms": status.behind_ms.get(region).copied().unwrap_or(0.0),
                "last_heard_ms_ago": heard_ms_ago,
            })
        })
        .collect();
    json!({
        "region": node.config.region,
        "exchanging": status.exchanging,
        "holds": vector_json(&status.holds),
        "conflicted_rows": conflicted_rows,
        // Per origin: its writes up to here are gone from this region's log (every region
        // holds them); a device further behind gets a snapshot.
        "log_compacted_through": status.compacted,
        "regions": regions,
        "homes": homes_json(node).await.unwrap_or_else(|error| json!({ "error": error.message })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn conflict_bodies_are_read_or_refused_with_the_reason() {
        assert!(matches!(parse_resolve(br#"{"table": "t", "key": [1], "values": [1, "x"]}"#), Ok(RegionChange::Resolve { .. })));
        assert!(matches!(parse_policy(br#"{"table": "t", "policy": "keep-both"}"#), Ok(RegionChange::Policy { .. })));
        for body in [&b"[]"[..], b"{}", b"{\"table\": 1}", b"{\"table\": \"t\", \"key\": {}}", b"not json", b"{\"table\": \"t\", \"policy\": \"newest\"}"] {
            let resolve = parse_resolve(body).err().map(|response| response.status());
            let policy = parse_policy(body).err().map(|response| response.status());
            assert_eq!((resolve, policy), (Some(StatusCode::BAD_REQUEST), Some(StatusCode::BAD_REQUEST)), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn a_move_without_a_table_moves_a_key_of_the_home_directory() {
        let (table, key, to) = parse_move(br#"{"key": [42], "to": "antarctica"}"#).unwrap_or_else(|_| panic!("read"));
        assert_eq!((table.as_str(), key, to.as_str()), ("tern_homes", vec![SqlValue::Integer(42)], "antarctica"));
        let (table, _, _) = parse_move(br#"{"table": "customers", "key": ["ann"], "to": "eu-west"}"#).unwrap_or_else(|_| panic!("read"));
        assert_eq!(table, "customers");
        for body in [&br#"{"to": "x"}"#[..], br#"{"key": [1]}"#, br#"{"key": [1], "to": "x", "table": 7}"#, br#"{"key": 1, "to": "x"}"#] {
            assert_eq!(parse_move(body).err().map(|response| response.status()), Some(StatusCode::BAD_REQUEST), "{}", String::from_utf8_lossy(body));
        }
        assert!(matches!(
            parse_home_rule(br#"{"table": "orders", "column": "customer", "directory": true}"#),
            Ok(RegionChange::HomeRule { directory: true, .. })
        ));
        assert!(parse_home_rule(br#"{"table": "orders", "column": "customer", "directory": "yes"}"#).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        /// Any bytes, and any JSON-ish text, posted to the conflict endpoints: read or
        /// refused with a 400, never a panic.
        #[test]
        fn any_conflict_body_is_read_or_refused(bytes in prop::collection::vec(any::<u8>(), 0..256), text in "[{}\\[\\]\"a-z:,0-9 é]{0,60}") {
            for body in [bytes.as_slice(), text.as_bytes()] {
                for parsed in [parse_resolve(body), parse_policy(body), parse_home_rule(body)] {
                    if let Err(response) = parsed {
                        prop_assert_eq!(response.status(), StatusCode::BAD_REQUEST);
                    }
                }
                if let Err(response) = parse_move(body) {
                    prop_assert_eq!(response.status(), StatusCode::BAD_REQUEST);
                }
            }
        }
    }
}
