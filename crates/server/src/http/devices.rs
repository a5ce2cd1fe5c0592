//! Device sync over HTTP (issue 15; the protocol: docs/sync-protocol.md).
//! `POST /db/sync/pull` `{"holds": {origin: n}, "max_writes": n, "max_bytes": n}` answers
//! `{"writes": [..], "holds": {..}, "more": bool}`: the writes the device lacks, in an
//! order it can apply them in. `POST /db/sync/push` `{"device": id, "writes": [..]}`
//! answers once the node's region holds them all.

use super::*;
use tern_storage::sync::{vector_from_json, vector_to_json, write_from_json, write_to_json};

/// A pull page's default and largest sizes.
const PULL_WRITES: usize = 1_000;
const MAX_PULL_WRITES: usize = 10_000;
const PULL_BYTES: usize = 4 << 20;

fn size_field(object: &serde_json::Map<String, Value>, name: &str, default: usize, largest: usize) -> Result<usize, Response> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(value) => match value.as_u64() {
            Some(size) if size >= 1 => Ok((size as usize).min(largest)),
            _ => Err(bad_request(format!("\"{name}\" must be a whole number from 1"))),
        },
    }
}

/// What a pull asks: the device's holds and the page's limits.
pub(super) fn parse_pull(body: &[u8]) -> Result<(tern_core::multi_leader::VersionVector, usize, usize), Response> {
    let object = object_body(body)?;
    let holds = vector_from_json(object.get("holds").unwrap_or(&json!({}))).map_err(|error| bad_request(format!("holds: {error}")))?;
    Ok((holds, size_field(&object, "max_writes", PULL_WRITES, MAX_PULL_WRITES)?, size_field(&object, "max_bytes", PULL_BYTES, 64 << 20)?))
}

/// What a push carries: the device and its writes.
pub(super) fn parse_push(body: &[u8]) -> Result<(String, Vec<tern_storage::region_log::LoggedWrite>), Response> {
    let object = object_body(body)?;
    let device = match object.get("device") {
        Some(Value::String(device)) => device.clone(),
        _ => return Err(bad_request("missing \"device\": the device's id")),
    };
    crate::device::valid_id(&device).map_err(bad_request)?;
    let Some(Value::Array(items)) = object.get("writes") else { return Err(bad_request("missing \"writes\": an array of the device's writes")) };
    let writes = items
        .iter()
        .enumerate()
        .map(|(index, item)| write_from_json(item).map_err(|error| bad_request(format!("write {index}: {error}"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((device, writes))
}

pub(super) async fn sync_pull(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    let (holds, max_writes, max_bytes) = match parse_pull(&body) {
        Ok(parsed) => parsed,
        Err(response) => return response,
    };
    match node.device_pull(holds, max_writes, max_bytes).await {
        Ok(page) => {
            let writes: Result<Vec<Value>, _> = page.writes.iter().map(write_to_json).collect();
            match writes {
                Ok(writes) => Json(json!({
                    "region": node.config.region,
                    "writes": writes,
                    "holds": vector_to_json(&page.holds),
                    "more": page.more,
                    "snapshot": page.snapshot,
                }))
                .into_response(),
                Err(error) => error_response(&RequestError::new(500, error.to_string())),
            }
        }
        Err(error) => error_response(&error),
    }
}

/// `GET /db/sync/snapshot`: a copy of the node's database (a SQLite file), for a device
/// whose pull answered `"snapshot": true`.
pub(super) async fn sync_snapshot(State(node): State<Arc<Node>>) -> Response {
    match node.device_snapshot().await {
        Ok(bytes) => ([(axum::http::header::CONTENT_TYPE, "application/vnd.sqlite3")], bytes).into_response(),
        Err(error) => error_response(&error),
    }
}

pub(super) async fn sync_push(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    let (device, writes) = match parse_push(&body) {
        Ok(parsed) => parsed,
        Err(response) => return response,
    };
    let count = writes.len();
    let reply = node.device_push(device, writes).await;
    match reply.error {
        Some(error) => error_response(&error),
        None => Json(json!({ "region": node.config.region, "pushed": count })).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sync_bodies_are_read_or_refused_with_the_reason() {
        let (holds, max_writes, _) = parse_pull(br#"{"holds": {"us-east": 3}, "max_writes": 99999}"#).unwrap_or_else(|_| panic!("read"));
        assert_eq!((holds.get("us-east"), max_writes), (3, MAX_PULL_WRITES));
        assert!(parse_pull(b"{}").is_ok(), "a new device holds nothing");
        assert!(parse_push(br#"{"device": "phone", "writes": []}"#).is_ok());
        for body in [&b"[]"[..], b"{\"holds\": [1]}", b"{\"holds\": {\"a\": -1}}", b"{\"max_writes\": 0}", b"nope"] {
            assert_eq!(parse_pull(body).err().map(|response| response.status()), Some(StatusCode::BAD_REQUEST), "{}", String::from_utf8_lossy(body));
        }
        for body in [&b"{}"[..], b"{\"device\": \"\", \"writes\": []}", b"{\"device\": \"p\"}", b"{\"device\": \"p\", \"writes\": [{}]}"] {
            assert_eq!(parse_push(body).err().map(|response| response.status()), Some(StatusCode::BAD_REQUEST), "{}", String::from_utf8_lossy(body));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        /// Any bytes, and any JSON-ish text, posted to the sync endpoints: read or refused
        /// with a 400, never a panic.
        #[test]
        fn any_sync_body_is_read_or_refused(bytes in prop::collection::vec(any::<u8>(), 0..256), text in "[{}\\[\\]\"a-z:,0-9 é]{0,80}") {
            for body in [bytes.as_slice(), text.as_bytes()] {
                if let Err(response) = parse_pull(body) {
                    prop_assert_eq!(response.status(), StatusCode::BAD_REQUEST);
                }
                if let Err(response) = parse_push(body) {
                    prop_assert_eq!(response.status(), StatusCode::BAD_REQUEST);
                }
            }
        }
    }
}
