//! The HTTP API, compatible with rqlite's so its clients work unmodified, plus tern's
//! extensions: `w=` per write, a `position` in every write response, `level=session`
//! with `after=`, and `level=bounded` with `max_lag_ms=`.

use crate::node::{Node, ReadOptions};
use crate::wire::{ReadReply, RequestError, WriteReply};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_core::{AckRequirement, Position, ReadLevel};
use tern_storage::{parse_statements, Statement, StatementResult, WriteRequest};

mod admin;
mod backup;
mod changes;
mod dashboard;
mod debug;
mod devices;
mod leaderless;
mod regions;
mod rqlite;

use admin::*;
use backup::*;
use changes::*;
use dashboard::*;
use debug::*;
use devices::*;
pub use leaderless::leaderless_router;
use regions::*;
use rqlite::*;

pub fn router(node: Arc<Node>) -> Router {
    let limit = node.config.max_body_bytes;
    Router::new()
        .route("/db/execute", post(execute))
        .route("/db/query", get(query).post(query))
        .route("/db/request", post(request))
        .route("/status", get(status))
        .route("/readyz", get(readyz))
        .route("/nodes", get(nodes))
        .route("/db/backup", get(backup))
        .route("/db/load", post(load))
        .route("/remove", axum::routing::delete(remove_node))
        .route("/debug/vars", get(debug_vars))
        .route("/metrics", get(metrics))
        .route("/db/changes", get(changes))
        .route("/", get(dashboard_page))
        .route("/dashboard/state", get(dashboard_state))
        .route("/db/conflicts", get(conflicts))
        .route("/db/conflicts/resolve", post(resolve_conflict))
        .route("/db/conflicts/policy", post(set_policy))
        .route("/db/homes/rule", post(set_home_rule))
        .route("/db/homes/move", post(move_home))
        .route("/db/homes", get(homes))
        .route("/db/sync/pull", post(sync_pull))
        .route("/db/sync/push", post(sync_push))
        .route("/db/sync/snapshot", get(sync_snapshot))
        .route("/db/verify", get(verify))
        .route("/db/rollback", get(rollback))
        .route("/cluster/transfer-leader", post(transfer_leader))
        .route("/cluster", get(cluster))
        .route("/cluster/add", post(add_member))
        .route("/cluster/remove", post(remove_member))
        .route("/debug/partition", post(partition))
        .route("/debug/panic", post(panic_storage))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::map_response(with_version_header))
        .layer(axum::middleware::from_fn_with_state(node.clone(), authorize))
        .layer(axum::middleware::from_fn_with_state(crate::idle_poll::IdlePoll::start(node.config.idle_poll), after_read))
        .with_state(node)
}

/// `--idle-poll-us`: after answering a read, poll for the next request a while before
/// the worker sleeps. Not after writes: a writer's next request comes a commit later,
/// and polling meanwhile only takes a core from the commit's own threads.
async fn after_read(State(poll): State<Option<Arc<crate::idle_poll::IdlePoll>>>, request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let read = request.uri().path() == "/db/query";
    let response = next.run(request).await;
    if let (true, Some(poll)) = (read, &poll) {
        poll.answered();
    }
    response
}

/// With `--auth`: who the caller is (HTTP basic auth) and whether they may make this
/// request; a 401 or 403 before any handler runs otherwise. The caller goes with the
/// request (`/db/request` checks `execute` for writes).
async fn authorize(State(node): State<Arc<Node>>, request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    authorize_with(node.config.auth.clone(), request, next).await
}

/// The check itself, for any router: `users` from the node's configuration.
async fn authorize_with(users: Option<Arc<crate::auth::Users>>, mut request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let Some(users) = users else { return next.run(request).await };
    let needed = crate::auth::needed(request.method().as_str(), request.uri().path());
    let header = request.headers().get(axum::http::header::AUTHORIZATION).map(|value| value.as_bytes().to_vec());
    // bcrypt takes milliseconds: off the async workers.
    let caller = tokio::task::spawn_blocking(move || users.caller(header.as_deref())).await;
    let refusal = match caller {
        Ok(Ok(caller)) if caller.may(needed) => {
            let user = caller.user.clone();
            request.extensions_mut().insert(caller);
            return crate::auth::acting_as(user, next.run(request)).await;
        }
        Ok(Ok(caller)) => caller.refusal(needed),
        Ok(Err(refusal)) => refusal,
        Err(_) => return error_response(&RequestError::new(500, "checking credentials failed")),
    };
    refusal_response(&refusal)
}

fn refusal_response(refusal: &crate::auth::Refusal) -> Response {
    match refusal {
        crate::auth::Refusal::Unauthenticated(message) => {
            let mut response = error_response(&RequestError::new(401, message.clone()));
            response.headers_mut().insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Basic realm=\"tern\""));
            response
        }
        crate::auth::Refusal::Forbidden(message) => error_response(&RequestError::new(403, message.clone())),
    }
}

/// rqlite's tools read the server's version from this header (its shell prints it on
/// connecting).
async fn with_version_header(mut response: Response) -> Response {
    response.headers_mut().insert("X-RQLITE-VERSION", axum::http::HeaderValue::from_static(concat!("tern-", env!("CARGO_PKG_VERSION"))));
    response
}

/// Query-string parameters; flags like `?transaction` have an empty value.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(raw: Option<String>) -> Params {
        let raw = raw.unwrap_or_default();
        // `+` is a space, as in Go's url.ParseQuery; a malformed escape is kept as written.
        Params(form_urlencoded::parse(raw.as_bytes()).map(|(key, value)| (key.into_owned(), value.into_owned())).collect())
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(name, _)| name == key).map(|(_, value)| value.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        self.get(key).is_some_and(|value| !matches!(value, "false" | "0"))
    }
}

fn error_response(error: &RequestError) -> Response {
    let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut body = json!({ "error": error.message });
    if let Some(leader) = &error.leader {
        body["leader"] = json!(leader);
    }
    (status, Json(body)).into_response()
}

fn bad_request(message: impl Into<String>) -> Response {
    error_response(&RequestError::new(400, message))
}

/// A JSON body as an object, or the response saying what is wrong with it.
fn object_body(body: &[u8]) -> Result<serde_json::Map<String, Value>, Response> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(bad_request("expected a JSON object")),
        Err(error) => Err(bad_request(format!("the body is not JSON: {error}"))),
    }
}

/// A query's statements: `q=<SQL>` or a JSON array in the body.
fn query_statements(params: &Params, body: &[u8]) -> Result<Vec<Statement>, Response> {
    if let Some(sql) = params.get("q") {
        return Ok(vec![Statement::new(sql)]);
    }
    if body.is_empty() {
        return Err(bad_request("no query: pass q=<SQL> or a JSON array of statements in the body"));
    }
    parse_statements(body).map_err(bad_request)
}

/// Results as rqlite renders them, in the style the query string asks for
/// (`associative`, `blob_array`, `timings`).
fn results_json(results: &[StatementResult], params: &Params) -> Vec<Value> {
    let style = tern_storage::JsonStyle { associative: params.flag("associative"), blob_array: params.flag("blob_array"), timings: params.flag("timings") };
    results.iter().map(|result| result.to_json_styled(style)).collect()
}

/// A duration as Go writes them (`1m30s`, `500ms`, `1.5h`, `250us`), or a bare number of
/// seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("bad duration {text:?}: expected e.g. 500ms, 2s, 1.5s, 1m30s or 1h");
    if text.is_empty() {
        return Err(bad());
    }
    if let Ok(value) = text.parse::<f64>() {
        return bounded_seconds(text, value);
    }
    let mut seconds = 0.0;
    let mut rest = text;
    while !rest.is_empty() {
        let split = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let (number, tail) = rest.split_at(split);
        let unit_end = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, after) = tail.split_at(unit_end);
        let value: f64 = number.parse().map_err(|_| bad())?;
        seconds += value
            * match unit {
                "ns" => 1e-9,
                "us" | "µs" => 1e-6,
                "ms" => 1e-3,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => return Err(bad()),
            };
        rest = after;
    }
    bounded_seconds(text, seconds)
}

fn bounded_seconds(text: &str, seconds: f64) -> Result<Duration, String> {
    // Waits longer than an hour are a mistake, and huge values would overflow `Duration`.
    if !seconds.is_finite() || !(0.0..=3600.0).contains(&seconds) {
        return Err(format!("bad duration {text:?}: must be between 0 and 1h"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode_percent_escapes_and_flags() {
        let params = Params::parse(Some("q=SELECT%20*%20FROM+t%3B&transaction&level=none&bad=%zz".into()));
        assert_eq!(params.get("q"), Some("SELECT * FROM t;"));
        assert!(params.flag("transaction"));
        assert!(!params.flag("timings"));
        assert_eq!(params.get("bad"), Some("%zz"));
    }

    #[test]
    fn durations_accept_rqlite_forms() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("1e300").is_err(), "a huge value is an error, not a panic");
        assert!(parse_duration("99999999999999999999m").is_err());
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
        assert_eq!(parse_duration("0.5h").unwrap(), Duration::from_secs(1800));
        assert!(parse_duration("1m30").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn status_times_are_rfc3339() {
        let at = |seconds: u64| rqlite::rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(seconds));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_796_256_245), "2026-12-03T00:04:05Z");
    }

    #[test]
    fn read_options_explain_what_is_wrong() {
        let options = |text: &str| read_options(&Params::parse(Some(text.into())));
        assert!(options("level=eventual").unwrap_err().contains("unknown read level"));
        assert!(options("level=session").unwrap_err().contains("after="));
        assert_eq!(options("after=1.5").unwrap().level, ReadLevel::Session);
        assert_eq!(options("").unwrap().level, ReadLevel::Weak);
        assert_eq!(options("level=bounded&max_lag_ms=20").unwrap().max_lag, Some(Duration::from_millis(20)));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, failure_persistence: None, ..Default::default() })]

        /// Any query string, in any script or byte soup, is parsed or explained; never a panic.
        #[test]
        fn any_query_string_is_parsed_or_explained(raw in proptest::prelude::any::<String>(), tail in "[%&=+a-z0-9._é日]{0,40}") {
            for text in [raw.clone(), format!("level={tail}"), format!("{tail}&after={tail}&max_lag_ms={tail}&freshness={tail}&timeout={tail}&w={tail}")] {
                let params = Params::parse(Some(text));
                if let Err(message) = read_options(&params) {
                    proptest::prop_assert!(!message.is_empty());
                }
                let _ = write_options(&params);
                let _ = params.flag("transaction");
            }
            let _ = parse_duration(&raw);
        }
    }
}
