//! rqlite's `/db/backup` and `/db/load`: a copy of the user's database as a SQLite file or
//! an SQL dump (gzipped with `compress`), and loading either back. A load is one write
//! request with `transaction`, so it is replicated, acknowledged and all-or-nothing like
//! any other write; loading a SQLite file replaces the user's tables with the file's.

use super::*;
use std::io::{Read, Write};

/// The first bytes of every SQLite database file.
const SQLITE_HEADER: &[u8] = b"SQLite format 3\0";
/// The first bytes of a gzip stream.
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];

pub(super) async fn backup(State(node): State<Arc<Node>>, RawQuery(raw): RawQuery) -> Response {
    let params = Params::parse(raw);
    let dump_tables = match params.get("fmt") {
        None | Some("binary") | Some("sqlite") => None,
        Some("sql") => {
            Some(params.get("tables").map(|tables| tables.split(',').filter(|name| !name.is_empty()).map(str::to_owned).collect()).unwrap_or_default())
        }
        Some(other) => return bad_request(format!("unknown backup format fmt={other:?}: use fmt=sql for an SQL dump, or leave it out for a SQLite file")),
    };
    let sql = dump_tables.is_some();
    let copy = match node.backup(dump_tables).await {
        Ok(copy) => copy,
        Err(message) => return error_response(&RequestError::new(500, format!("backup failed: {message}"))),
    };
    let (copy, encoding) = if params.flag("compress") {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        match encoder.write_all(&copy).and_then(|()| encoder.finish()) {
            Ok(compressed) => (compressed, Some("gzip")),
            Err(error) => return error_response(&RequestError::new(500, format!("backup failed while compressing: {error}"))),
        }
    } else {
        (copy, None)
    };
    let content_type = match (encoding, sql) {
        (Some(_), _) => "application/gzip",
        (None, true) => "text/plain; charset=utf-8",
        (None, false) => "application/octet-stream",
    };
    ([(axum::http::header::CONTENT_TYPE, content_type)], copy).into_response()
}

pub(super) async fn load(State(node): State<Arc<Node>>, RawQuery(raw): RawQuery, body: Bytes) -> Response {
    let started = Instant::now();
    let params = Params::parse(raw);
    if let Some(response) = not_ready(&node) {
        return response;
    }
    let body = if body.starts_with(GZIP_MAGIC) {
        // Decompressed size is capped like the body itself: a small bomb must not exhaust memory.
        let limit = node.config.max_body_bytes as u64;
        let mut decompressed = Vec::new();
        match flate2::read::GzDecoder::new(&body[..]).take(limit + 1).read_to_end(&mut decompressed) {
            Ok(_) if decompressed.len() as u64 > limit => {
                return error_response(&RequestError::new(413, format!("the decompressed body is over --max-body-bytes ({limit} bytes)")))
            }
            Ok(_) => decompressed,
            Err(error) => return bad_request(format!("the body starts like gzip but cannot be decompressed: {error}")),
        }
    } else {
        body.to_vec()
    };
    let statements = if body.starts_with(SQLITE_HEADER) {
        match node.load_statements(body).await {
            Ok(statements) => statements,
            Err(message) => return bad_request(message),
        }
    } else {
        match String::from_utf8(body) {
            Ok(text) => tern_storage::dump_to_statements(&text),
            Err(_) => return bad_request("the body is neither a SQLite database file nor UTF-8 SQL text"),
        }
    };
    if statements.is_empty() {
        return bad_request("nothing to load: the body holds no SQL statements");
    }
    let count = statements.len();
    let request = WriteRequest { statements: statements.into_iter().map(Statement::new).collect(), transaction: true };
    if let Some(message) = tern_storage::request_shape_error(&request) {
        return bad_request(message);
    }
    let reply = node.write(request, None, None, true).await;
    if let Some(error) = &reply.error {
        if reply.results.is_empty() {
            return error_response(error);
        }
    }
    // One result for the whole load, as rqlite gives: the first error, or the rows it wrote.
    let summary = match reply.results.iter().find(|result| result.error.is_some()) {
        Some(failed) => json!({ "error": failed.error }),
        None => json!({
            "last_insert_id": reply.results.iter().rev().find(|result| result.last_insert_id != 0).map_or(0, |result| result.last_insert_id),
            "rows_affected": reply.results.iter().map(|result| result.rows_affected).sum::<i64>(),
        }),
    };
    let mut body = json!({ "results": [summary], "statements": count });
    if let Some(position) = reply.position {
        body["position"] = json!(position.to_string());
    }
    if let Some(error) = &reply.error {
        body["error"] = json!(error.message);
        let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return (status, Json(body)).into_response();
    }
    with_timings(body, started, &params)
}
