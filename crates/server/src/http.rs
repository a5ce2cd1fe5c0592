//! The HTTP API, compatible with rqlite's so its clients work unmodified, plus tern's
//! extensions: `w=` per write, a `position` in every write response, `level=session`
//! with `after=`, and `level=bounded` with `max_lag_ms=`.

use crate::node::{Node, ReadOptions};
use crate::wire::{ReadReply, RequestError, WriteReply};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_core::{AckRequirement, Position, ReadLevel};
use tern_storage::{parse_statements, Statement, StatementResult, WriteRequest};

pub fn router(node: Arc<Node>) -> Router {
    let limit = node.config.max_body_bytes;
    Router::new()
        .route("/db/execute", post(execute))
        .route("/db/query", get(query).post(query))
        .route("/db/request", post(request))
        .route("/status", get(status))
        .route("/readyz", get(readyz))
        .route("/nodes", get(nodes))
        .route("/db/verify", get(verify))
        .route("/db/rollback", get(rollback))
        .route("/cluster/transfer-leader", post(transfer_leader))
        .route("/cluster", get(cluster))
        .route("/cluster/add", post(add_member))
        .route("/cluster/remove", post(remove_member))
        .route("/debug/partition", post(partition))
        .route("/debug/panic", post(panic_storage))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(node)
}

/// Query-string parameters; flags like `?transaction` have an empty value.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(raw: Option<String>) -> Params {
        let raw = raw.unwrap_or_default();
        Params(
            raw.split('&')
                .filter(|part| !part.is_empty())
                .map(|part| {
                    let (key, value) = part.split_once('=').unwrap_or((part, ""));
                    (percent_decode(key), percent_decode(value))
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(name, _)| name == key).map(|(_, value)| value.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        self.get(key).is_some_and(|value| !matches!(value, "false" | "0"))
    }
}

fn percent_decode(text: &str) -> String {
    let hex = |byte: u8| (byte as char).to_digit(16).map(|digit| digit as u8);
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => decoded.push(b' '),
            b'%' if index + 2 < bytes.len() => match (hex(bytes[index + 1]), hex(bytes[index + 2])) {
                (Some(high), Some(low)) => {
                    decoded.push(high * 16 + low);
                    index += 2;
                }
                _ => decoded.push(b'%'),
            },
            byte => decoded.push(byte),
        }
        index += 1;
    }
    String::from_utf8_lossy(&decoded).into_owned()
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

fn results_json(results: &[StatementResult]) -> Vec<Value> {
    results.iter().map(StatementResult::to_json).collect()
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("bad duration {text:?}: expected e.g. 500ms, 2s, 1.5s or 1m");
    let (number, unit) = match text.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(split) => text.split_at(split),
        None => (text, "s"),
    };
    let value: f64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "us" | "µs" => value / 1_000_000.0,
        _ => return Err(bad()),
    };
    // Waits longer than an hour are a mistake, and huge values would overflow `Duration`.
    if !seconds.is_finite() || !(0.0..=3600.0).contains(&seconds) {
        return Err(format!("bad duration {text:?}: must be between 0 and 1h"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn not_ready(node: &Node) -> Option<Response> {
    let published = node.published();
    (!published.ready).then(|| {
        let message = match &published.leader {
            Some(leader) => format!("node {} is not ready: it has not heard from leader {leader} yet", node.config.id),
            None => format!("node {} is not ready: no leader is known (an election is under way); retry shortly", node.config.id),
        };
        error_response(&RequestError::new(503, message))
    })
}

fn write_options(params: &Params) -> Result<Option<AckRequirement>, String> {
    params.get("w").map(AckRequirement::parse).transpose()
}

fn write_response(reply: WriteReply, started: Instant, params: &Params) -> Response {
    if let Some(error) = &reply.error {
        if reply.results.is_empty() {
            return error_response(error);
        }
    }
    let mut body = json!({ "results": results_json(&reply.results) });
    if let Some(position) = reply.position {
        body["position"] = json!(position.to_string());
    }
    if let Some(error) = &reply.error {
        // Executed on the leader, but not acknowledged as asked: the outcome is unknown.
        body["error"] = json!(error.message);
        let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return (status, Json(body)).into_response();
    }
    with_timings(body, started, params)
}

/// rqlite's `?timings`: the request's duration in seconds.
fn with_timings(mut body: Value, started: Instant, params: &Params) -> Response {
    if params.flag("timings") {
        body["time"] = json!(started.elapsed().as_secs_f64());
    }
    Json(body).into_response()
}

/// The write half shared by `/db/execute` and `/db/request`.
async fn write_path(node: &Node, statements: Vec<Statement>, params: &Params, started: Instant) -> Response {
    let requirement = match write_options(params) {
        Ok(requirement) => requirement,
        Err(message) => return bad_request(message),
    };
    let request = WriteRequest { statements, transaction: params.flag("transaction") };
    if let Some(message) = tern_storage::request_shape_error(&request) {
        return bad_request(message);
    }
    let reply = node.write(request, requirement).await;
    write_response(reply, started, params)
}

/// What `/db/execute` and `/db/request` share before they differ: the query string, a
/// readiness check and the statements of the body.
fn accept_statements(node: &Node, raw: Option<String>, body: &[u8]) -> Result<(Params, Vec<Statement>), Response> {
    let params = Params::parse(raw);
    if let Some(response) = not_ready(node) {
        return Err(response);
    }
    let statements = parse_statements(body).map_err(bad_request)?;
    Ok((params, statements))
}

async fn execute(State(node): State<Arc<Node>>, RawQuery(raw): RawQuery, body: Bytes) -> Response {
    let started = Instant::now();
    let (params, statements) = match accept_statements(&node, raw, &body) {
        Ok(accepted) => accepted,
        Err(response) => return response,
    };
    if statements.is_empty() {
        return Json(json!({ "results": [] })).into_response();
    }
    write_path(&node, statements, &params, started).await
}

fn read_options(params: &Params) -> Result<ReadOptions, String> {
    let level = match params.get("level") {
        Some(level) => level.parse::<ReadLevel>()?,
        // rqlite's default is weak; a read naming a position is a session read.
        None if params.get("after").is_some() => ReadLevel::Session,
        None => ReadLevel::Weak,
    };
    let after = params.get("after").map(str::parse::<Position>).transpose()?;
    if level == ReadLevel::Session && after.is_none() {
        return Err("level=session needs after=<position> (the \"position\" of a write response)".to_string());
    }
    let max_lag = params
        .get("max_lag_ms")
        .map(|ms| ms.parse::<u64>().map(Duration::from_millis).map_err(|_| format!("bad max_lag_ms={ms:?}: expected milliseconds")))
        .transpose()?;
    let freshness = params.get("freshness").map(parse_duration).transpose()?;
    let timeout = params.get("timeout").map(parse_duration).transpose()?.unwrap_or(Duration::from_secs(5));
    Ok(ReadOptions { level, after, max_lag, freshness, timeout })
}

fn read_response(reply: ReadReply, started: Instant, params: &Params) -> Response {
    if let Some(error) = &reply.error {
        return error_response(error);
    }
    with_timings(json!({ "results": results_json(&reply.results) }), started, params)
}

async fn query(State(node): State<Arc<Node>>, RawQuery(raw): RawQuery, body: Bytes) -> Response {
    let started = Instant::now();
    let params = Params::parse(raw);
    let options = match read_options(&params) {
        Ok(options) => options,
        Err(message) => return bad_request(message),
    };
    // `level=none` is served from whatever this node holds, as the level promises (bound
    // it with `freshness=`): also before it has heard from a leader, and during elections.
    if options.level != ReadLevel::None {
        if let Some(response) = not_ready(&node) {
            return response;
        }
    }
    let statements = if let Some(sql) = params.get("q") {
        vec![Statement::new(sql)]
    } else if body.is_empty() {
        return bad_request("no query: pass q=<SQL> or a JSON array of statements in the body");
    } else {
        match parse_statements(&body) {
            Ok(statements) => statements,
            Err(message) => return bad_request(message),
        }
    };
    let reply = node.read(statements, options).await;
    read_response(reply, started, &params)
}

/// rqlite's unified endpoint: reads take the read path at `level=`; anything that writes
/// goes to the leader as one request (its reads run there too).
async fn request(State(node): State<Arc<Node>>, RawQuery(raw): RawQuery, body: Bytes) -> Response {
    let started = Instant::now();
    let (params, statements) = match accept_statements(&node, raw, &body) {
        Ok(accepted) => accepted,
        Err(response) => return response,
    };
    if node.all_read_only(statements.clone()).await {
        let options = match read_options(&params) {
            Ok(options) => options,
            Err(message) => return bad_request(message),
        };
        let reply = node.read(statements, options).await;
        return read_response(reply, started, &params);
    }
    write_path(&node, statements, &params, started).await
}

async fn status(State(node): State<Arc<Node>>) -> Response {
    let Some(status) = node.status().await else {
        return error_response(&RequestError::new(503, "replica loop stopped"));
    };
    let peers = node.peers.lock().expect("peers lock").clone();
    let queues = node.peer_queues();
    let followers: Vec<Value> = status
        .followers
        .iter()
        .map(|follower| {
            let info = peers.get(&follower.id).cloned().unwrap_or_default();
            let (queued_bytes, dropped_frames) = queues.get(&follower.id).copied().unwrap_or_default();
            json!({
                "queued_bytes": queued_bytes,
                "dropped_frames": dropped_frames,
                "id": follower.id,
                "region": info.region,
                "connected": info.connected,
                "position": Position::new(status.epoch, follower.matched).to_string(),
                "applied_index": follower.matched,
                "lag_ms": follower.lag_us as f64 / 1000.0,
                "in_sync": follower.in_sync,
                "last_ack_ms_ago": follower.last_ack_ago_us.map(|us| us as f64 / 1000.0),
            })
        })
        .collect();
    let published = node.published();
    let body = json!({
        "node": {
            "id": node.config.id,
            "region": node.config.region,
            "role": if status.is_leader { "leader" } else if status.recovering { "candidate" } else { "follower" },
            "leader": status.leader,
            "epoch": status.epoch,
            "term": status.term,
            "accepting_writes": status.accepting_writes,
            "rolled_back_entries": node.rollback_count().await,
            "applied": status.last.to_string(),
            "applied_index": status.last.index,
            "commit_index": status.commit_index,
            "ready": published.ready,
            "lag_ms": status.lag_us.map(|us| us as f64 / 1000.0),
            "http_addr": node.http_addr.lock().expect("http addr lock").clone(),
            "peer_addr": node.config.peer_addr.to_string(),
        },
        "log": {
            "entries": node.log_stats.entries.load(std::sync::atomic::Ordering::Relaxed),
            "bytes": node.log_stats.bytes.load(std::sync::atomic::Ordering::Relaxed),
        },
        "replication": {
            "topology": "single-leader",
            "failover": if node.config.failover { "automatic" } else { "manual" },
            "log_format": node.config.log_format.name(),
            "ack": node.config.ack.name(),
            "followers": followers,
        },
    });
    Json(body).into_response()
}

async fn readyz(State(node): State<Arc<Node>>) -> Response {
    match not_ready(&node) {
        Some(_) => (StatusCode::SERVICE_UNAVAILABLE, format!("[-]node {} not ready\n", node.config.id)).into_response(),
        None => (StatusCode::OK, format!("[+]node {} ok\n[+]leader {} ok\n", node.config.id, node.published().leader.unwrap_or_default())).into_response(),
    }
}

/// `POST /cluster/transfer-leader?to=ID` on the leader: hand leadership to `ID`.
async fn transfer_leader(State(node): State<Arc<Node>>, RawQuery(raw): RawQuery) -> Response {
    let params = Params::parse(raw);
    let Some(to) = params.get("to").map(str::to_string) else {
        return error_response(&RequestError::new(400, "missing ?to=<node id>"));
    };
    match node.transfer_leadership(to.clone()).await {
        Ok(()) => Json(json!({"transferring_to": to, "from": node.config.id})).into_response(),
        Err(error) => error_response(&error),
    }
}

/// `GET /cluster`: the membership as this node applied it; on the leader, with how far
/// each member has got.
async fn cluster(State(node): State<Arc<Node>>) -> Response {
    let Some(status) = node.status().await else {
        return error_response(&RequestError::new(503, "replica loop stopped"));
    };
    let peers = node.peers.lock().expect("peers lock").clone();
    let membership = &status.membership;
    let members: Vec<Value> = membership
        .members()
        .map(|id| {
            let info = peers.get(id).cloned().unwrap_or_default();
            let progress = status.followers.iter().find(|follower| follower.id == *id);
            let applied_index = if *id == node.config.id { Some(status.last.index) } else { progress.map(|follower| follower.matched) };
            json!({
                "id": id,
                "addr": membership.addresses.get(id),
                "voter": membership.voters.contains(id),
                "region": if *id == node.config.id { node.config.region.clone() } else { info.region },
                "connected": *id == node.config.id || info.connected,
                "applied_index": applied_index,
                "lag_ms": progress.map(|follower| follower.lag_us as f64 / 1000.0),
            })
        })
        .collect();
    Json(json!({
        "node": node.config.id,
        "leader": status.leader,
        "epoch": status.epoch,
        "leader_last_index": status.is_leader.then_some(status.last.index),
        "voters": membership.voters,
        "learners": membership.learners,
        "change_pending": status.membership_change_pending,
        "members": members,
    }))
    .into_response()
}

/// `POST /cluster/add?id=ID&addr=HOST:PORT` on the leader: add a node started with
/// `--join`; it becomes a learner at once and a voter once caught up.
async fn add_member(State(node): State<Arc<Node>>, RawQuery(raw): RawQuery) -> Response {
    let params = Params::parse(raw);
    let (Some(id), Some(address)) = (params.get("id"), params.get("addr")) else {
        return error_response(&RequestError::new(400, "missing ?id=<node id>&addr=<peer host:port>"));
    };
    if let Err(error) = address.parse::<std::net::SocketAddr>() {
        return error_response(&RequestError::new(400, format!("bad peer address {address:?}: {error} (expected HOST:PORT, as the node's --peer)")));
    }
    let request = tern_core::MembershipRequest::Add { id: id.to_string(), address: address.to_string() };
    match node.change_membership(request).await {
        Ok(()) => Json(json!({"adding": id, "as": "learner", "leader": node.config.id})).into_response(),
        Err(error) => error_response(&error),
    }
}

/// `POST /cluster/remove?id=ID` on the leader.
async fn remove_member(State(node): State<Arc<Node>>, RawQuery(raw): RawQuery) -> Response {
    let params = Params::parse(raw);
    let Some(id) = params.get("id") else {
        return error_response(&RequestError::new(400, "missing ?id=<node id>"));
    };
    match node.change_membership(tern_core::MembershipRequest::Remove { id: id.to_string() }).await {
        Ok(()) => Json(json!({"removing": id, "leader": node.config.id})).into_response(),
        Err(error) => error_response(&error),
    }
}

/// `POST /debug/partition?drop=ID,ID` (only with `--fault-injection on`): drop all
/// traffic to and from those peers; `drop=` with no ids heals.
async fn partition(State(node): State<Arc<Node>>, RawQuery(raw): RawQuery) -> Response {
    if !node.config.fault_injection {
        return error_response(&RequestError::new(404, "fault injection is off (start the node with --fault-injection on)"));
    }
    let params = Params::parse(raw);
    let Some(list) = params.get("drop") else {
        return error_response(&RequestError::new(400, "missing ?drop=<node id>,... (empty to heal)"));
    };
    let peers: std::collections::BTreeSet<String> = list.split(',').map(str::trim).filter(|id| !id.is_empty()).map(str::to_string).collect();
    node.cut_off_from(peers.clone());
    Json(json!({"node": node.config.id, "dropping": peers})).into_response()
}

/// `POST /debug/panic` (only with `--fault-injection on`): make the storage thread panic.
async fn panic_storage(State(node): State<Arc<Node>>) -> Response {
    if !node.config.fault_injection {
        return error_response(&RequestError::new(404, "fault injection is off (start the node with --fault-injection on)"));
    }
    node.inject_storage_panic();
    Json(json!({"node": node.config.id, "panicking": "storage thread"})).into_response()
}

/// This node's rollback store: entries it removed from its log because the leader of a
/// later epoch lacked them.
async fn rollback(State(node): State<Arc<Node>>) -> Response {
    match node.rollback_entries().await {
        Ok(entries) => Json(json!({"node": node.config.id, "count": entries.len(), "entries": entries})).into_response(),
        Err(error) => error_response(&RequestError::new(500, format!("cannot read the rollback store: {error}"))),
    }
}

/// `?local`: this node's report. Otherwise every node's report, compared.
async fn verify(State(node): State<Arc<Node>>, RawQuery(raw): RawQuery) -> Response {
    let params = Params::parse(raw);
    let local = match node.verify_local().await {
        Ok(report) => report,
        Err(error) => return error_response(&RequestError::new(500, format!("cannot read this node's data: {error}"))),
    };
    if params.flag("local") {
        return Json(local).into_response();
    }
    let peers = node.peers.lock().expect("peers lock").clone();
    let mut reports = vec![local];
    let membership = node.published().membership;
    for id in membership.members() {
        if *id == node.config.id {
            continue;
        }
        let address = peers.get(id).map(|info| info.http_addr.clone()).unwrap_or_default();
        let id = id.clone();
        let report = tokio::task::spawn_blocking(move || {
            if address.is_empty() {
                return json!({"id": id, "error": "HTTP address unknown (no handshake yet)"});
            }
            let mut client = crate::client::HttpClient::new(&address).with_timeout(Duration::from_secs(30));
            match client.get("/db/verify?local") {
                Ok(reply) if reply.status == 200 => reply.body,
                Ok(reply) => json!({"id": id, "error": format!("answered {}: {}", reply.status, reply.body)}),
                Err(error) => json!({"id": id, "error": format!("unreachable: {error}")}),
            }
        })
        .await
        .unwrap_or_else(|error| json!({"error": error.to_string()}));
        reports.push(report);
    }
    let mut verdict = crate::verify::compare(&reports);
    verdict["log_format"] = json!(node.config.log_format.name());
    Json(verdict).into_response()
}

/// rqlite's `/nodes` shape: one object per node, keyed by id.
async fn nodes(State(node): State<Arc<Node>>) -> Response {
    let published = node.published();
    let peers = node.peers.lock().expect("peers lock").clone();
    let mut body = serde_json::Map::new();
    let membership = &published.membership;
    for id in membership.members() {
        let addr = membership.addresses.get(id).cloned().unwrap_or_default();
        let (api_addr, region, reachable) = if *id == node.config.id {
            (node.http_addr.lock().expect("http addr lock").clone(), node.config.region.clone(), true)
        } else {
            let info = peers.get(id).cloned().unwrap_or_default();
            (info.http_addr, info.region, info.connected)
        };
        body.insert(
            id.clone(),
            json!({
                "id": id,
                "api_addr": if api_addr.is_empty() { Value::Null } else { json!(format!("http://{api_addr}")) },
                "addr": addr,
                "region": region,
                "reachable": reachable,
                "leader": published.leader.as_ref() == Some(id),
                "voter": membership.voters.contains(id),
            }),
        );
    }
    Json(Value::Object(body)).into_response()
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
            let _ = percent_decode(&raw);
        }
    }
}
