//! The HTTP API of a leaderless node: rqlite's `/db/execute` and `/db/query` with
//! `w=`, `r=` (`one`, `quorum`, `all` or a number), `strict` (only the row's own
//! replicas count toward `w`), `context=` (a write replacing exactly what a read saw) and
//! `siblings` (a read returning every concurrent version); each result says how many
//! replicas answered. Plus `/status`, `/readyz`, `/db/repair` and `/db/conflicts`.

use super::*;
use crate::leaderless::{Leaderless, Member, MemberChange, Outcome};
use tern_core::leaderless::{Count, Levels};

pub fn leaderless_router(node: Arc<Leaderless>) -> Router {
    let limit = node.config.max_body_bytes;
    Router::new()
        .route("/db/execute", post(execute))
        .route("/db/query", get(query).post(query))
        .route("/db/repair", post(repair))
        .route("/db/conflicts", get(conflicts))
        .route("/db/conflicts/policy", post(set_policy))
        .route("/cluster", get(cluster))
        .route("/cluster/add", post(add_member))
        .route("/cluster/remove", post(remove_member))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/readyz", get(|| async { "[+]node ok\n" }))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(node.clone(), authorize_leaderless))
        .layer(axum::middleware::from_fn_with_state(crate::idle_poll::IdlePoll::start(node.config.idle_poll), super::after_read))
        .with_state(node)
}

/// `--auth`, as on the other topologies' API.
async fn authorize_leaderless(State(node): State<Arc<Leaderless>>, request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    authorize_with(node.config.auth.clone(), request, next).await
}

fn levels(settings: &crate::config::LeaderlessSettings, params: &Params) -> Result<Levels, String> {
    let count = |name: &str, default: Count| -> Result<Count, String> {
        match params.get(name) {
            None => Ok(default),
            Some(text) => text.parse::<Count>().map_err(|error| format!("bad {name}=: {error}")),
        }
    };
    let levels = Levels { w: count("w", settings.w)?, r: count("r", settings.r)?, strict: params.flag("strict") };
    for (name, asked) in [("w", levels.w), ("r", levels.r)] {
        if let Count::Exactly(number) = asked {
            if number > settings.replicas {
                return Err(format!("{name}={number} asks for more copies than a row has (--replicas {})", settings.replicas));
            }
        }
    }
    Ok(levels)
}

fn outcomes_response(outcomes: Vec<Outcome>, started: Instant, params: &Params) -> Response {
    let unavailable = outcomes.iter().any(|outcome| outcome.unavailable);
    let results: Vec<Value> = outcomes
        .iter()
        .map(|outcome| {
            let mut result = outcome.result.to_json();
            if let Some(replicas) = outcome.replicas {
                result["replicas"] = json!(replicas);
            }
            if let Some(hinted) = outcome.hinted.filter(|hinted| *hinted > 0) {
                result["hinted"] = json!(hinted);
            }
            if let Some(context) = &outcome.context {
                result["context"] = json!(context);
            }
            result
        })
        .collect();
    let body = json!({ "results": results });
    if unavailable {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    with_timings(body, started, params)
}

async fn execute(State(node): State<Arc<Leaderless>>, RawQuery(raw): RawQuery, body: Bytes) -> Response {
    let started = Instant::now();
    let params = Params::parse(raw);
    let statements = match parse_statements(&body) {
        Ok(statements) => statements,
        Err(message) => return bad_request(message),
    };
    let levels = match levels(&node.config.leaderless, &params) {
        Ok(levels) => levels,
        Err(message) => return bad_request(message),
    };
    if params.flag("transaction") && statements.len() > 1 {
        return bad_request(
            "?transaction with several statements: under --topology leaderless each statement writes one row on that row's replicas, and no transaction spans \
             rows on different replicas; send the statements without ?transaction (each is then its own write), or choose --topology single-leader",
        );
    }
    // A write that computes from the row (UPDATE … SET n = n + 1) reads it first from
    // r= replicas when r= is given.
    let pre_read = params.get("r").and_then(|text| text.parse::<Count>().ok());
    let context = params.get("context").map(str::to_string);
    let outcomes = node.execute(statements, levels, pre_read, context).await;
    outcomes_response(outcomes, started, &params)
}

async fn query(State(node): State<Arc<Leaderless>>, RawQuery(raw): RawQuery, body: Bytes) -> Response {
    let started = Instant::now();
    let params = Params::parse(raw);
    let levels = match levels(&node.config.leaderless, &params) {
        Ok(levels) => levels,
        Err(message) => return bad_request(message),
    };
    let statements = match query_statements(&params, &body) {
        Ok(statements) => statements,
        Err(response) => return response,
    };
    let outcomes = node.query(statements, levels, params.flag("siblings")).await;
    outcomes_response(outcomes, started, &params)
}

async fn cluster(State(node): State<Arc<Leaderless>>) -> Response {
    Json(json!({ "node": node.config.id, "topology": "leaderless", "membership": node.members() })).into_response()
}

/// `POST /cluster/add?id=ID&addr=PEER_ADDR&region=REGION` on any node: every node takes
/// the new member, and the keys it becomes a replica of move to it by anti-entropy.
async fn add_member(State(node): State<Arc<Leaderless>>, RawQuery(raw): RawQuery) -> Response {
    let params = Params::parse(raw);
    let (Some(id), Some(address)) = (params.get("id"), params.get("addr")) else {
        return bad_request("missing ?id=<node id>&addr=<peer host:port>[&region=<region>]");
    };
    let addr = match address.parse::<std::net::SocketAddr>() {
        Ok(addr) => addr,
        Err(error) => return bad_request(format!("bad peer address {address:?}: {error} (expected HOST:PORT, as the node's --peer)")),
    };
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return bad_request(format!("bad node id {id:?}: letters, digits, '-', '_' and '.', at most 64"));
    }
    let member = Member { id: id.to_string(), region: params.get("region").unwrap_or("local").to_string(), addr };
    match node.change_members(MemberChange::Add(member)).await {
        Ok(membership) => Json(json!({ "added": id, "membership": membership })).into_response(),
        Err(message) => bad_request(message),
    }
}

/// `POST /cluster/remove?id=ID`: the keys it held move to their new replicas.
async fn remove_member(State(node): State<Arc<Leaderless>>, RawQuery(raw): RawQuery) -> Response {
    let params = Params::parse(raw);
    let Some(id) = params.get("id") else { return bad_request("missing ?id=<node id>") };
    match node.change_members(MemberChange::Remove(id.to_string())).await {
        Ok(membership) => Json(json!({ "removed": id, "membership": membership })).into_response(),
        Err(message) => bad_request(message),
    }
}

async fn repair(State(node): State<Arc<Leaderless>>) -> Response {
    match node.repair().await {
        Some(report) => Json(json!(report)).into_response(),
        None => error_response(&RequestError::new(503, "the node is stopping")),
    }
}

async fn status(State(node): State<Arc<Leaderless>>) -> Response {
    match node.status().await {
        Some(status) => {
            Json(json!({ "topology": "leaderless", "leaderless": status, "http_addr": node.http_addr.lock().expect("http addr lock").clone() })).into_response()
        }
        None => error_response(&RequestError::new(503, "the node is stopping")),
    }
}

/// Prometheus metrics under leaderless: hints pending per node, keys, peers down, rows
/// with siblings per table, and the merges and repairs counted as they happen.
async fn metrics(State(node): State<Arc<Leaderless>>) -> Response {
    use crate::metrics::{gauge, gauge_of};
    let Some(handle) = crate::metrics::install() else {
        return error_response(&RequestError::new(503, "metrics are off: another metrics recorder was installed in this process"));
    };
    let Some(status) = node.status().await else {
        return error_response(&RequestError::new(503, "the node is stopping"));
    };
    let id = node.config.id.as_str();
    for (target, count) in &status.hints {
        gauge_of("tern_leaderless_hints_pending", id, "for_node", target, *count as f64);
    }
    gauge("tern_leaderless_keys", id, status.keys_stored as f64);
    gauge("tern_leaderless_peers_down", id, status.peers_down.len() as f64);
    gauge("tern_leaderless_requests_in_flight", id, status.requests_in_flight as f64);
    for (table, keys) in &status.keys_with_siblings {
        gauge_of("tern_leaderless_keys_with_siblings", id, "table", table, *keys as f64);
    }
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response()
}

/// Rows this node holds with concurrent versions: each version's writer, hybrid time and
/// row (the newest is the one shown), and the context a resolving write passes.
async fn conflicts(State(node): State<Arc<Leaderless>>) -> Response {
    let (Some(status), Ok(rows)) = (node.status().await, node.conflicts().await) else {
        return error_response(&RequestError::new(503, "the node is stopping"));
    };
    let listed: Vec<Value> = rows
        .iter()
        .map(|(key, versions)| {
            let shown = tern_core::leaderless::visible(versions).map(|(dot, _)| dot);
            let versions: Vec<Value> = versions
                .siblings()
                .into_iter()
                .map(|(dot, value)| {
                    let row = value.value.as_deref().and_then(|bytes| tern_storage::leaderless::decode_row(bytes).ok());
                    let row: Option<serde_json::Map<String, Value>> = row.map(|row| row.into_iter().map(|(name, value)| (name, value.to_json())).collect());
                    json!({ "writer": dot.0, "number": dot.1, "hybrid_time": value.stamp.to_string(), "row": row, "shown": Some(&dot) == shown.as_ref() })
                })
                .collect();
            let values: Vec<Value> = tern_storage::leaderless::decode_key(&key.key).unwrap_or_default().iter().map(tern_storage::SqlValue::to_json).collect();
            json!({ "table": key.table, "key": values, "versions": versions })
        })
        .collect();
    Json(json!({
        "keys_with_siblings": status.keys_with_siblings,
        "conflicts": listed,
        "note": "concurrent writes to one row stand side by side until a write that saw them replaces them; a read shows the newest by hybrid time, ?siblings (or a table's siblings policy) shows them all with the context a resolving write passes as context=",
    }))
    .into_response()
}

/// `POST /db/conflicts/policy {"table": T, "policy": "siblings" | "lww"}`: reads of T by key
/// return every concurrent version (siblings, also `keep-both`), or the newest (lww).
async fn set_policy(State(node): State<Arc<Leaderless>>, body: Bytes) -> Response {
    let object = match object_body(&body) {
        Ok(object) => object,
        Err(response) => return response,
    };
    let (Some(table), Some(policy)) = (object.get("table").and_then(Value::as_str), object.get("policy").and_then(Value::as_str)) else {
        return bad_request("expected {\"table\": \"name\", \"policy\": \"siblings\" or \"lww\"}");
    };
    let siblings = match policy {
        "siblings" | "keep-both" => true,
        "lww" => false,
        other => return bad_request(format!("unknown policy {other:?} under --topology leaderless: siblings (or keep-both) or lww")),
    };
    let outcome = node.set_policy(table.to_string(), siblings).await;
    if let Some(error) = &outcome.result.error {
        let status = if outcome.unavailable { 503 } else { 400 };
        return error_response(&RequestError::new(status, error.clone()));
    }
    Json(json!({ "table": table, "policy": if siblings { "siblings" } else { "lww" }, "nodes": outcome.replicas })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_come_from_the_query_string_or_the_cluster_defaults() {
        let settings = crate::config::LeaderlessSettings::default();
        let parsed = |text: &str| levels(&settings, &Params::parse(Some(text.into())));
        assert_eq!(parsed("").unwrap(), Levels { w: Count::Quorum, r: Count::Quorum, strict: false });
        assert_eq!(parsed("w=all&r=one&strict").unwrap(), Levels { w: Count::All, r: Count::One, strict: true });
        assert_eq!(parsed("w=2").unwrap().w, Count::Exactly(2));
        assert!(parsed("w=4").unwrap_err().contains("--replicas 3"));
        assert!(parsed("r=0").unwrap_err().contains("not a replica count"));
        assert!(parsed("w=lots").unwrap_err().contains("bad w="));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 1000, failure_persistence: None, ..Default::default() })]

        /// Any query string, any script: levels or a reason, never a panic; and any
        /// `context=` text is a context or a reason.
        #[test]
        fn any_levels_and_context_text_is_parsed_or_explained(raw in proptest::prelude::any::<String>(), tail in "[%&=+a-z0-9é日]{0,30}") {
            let settings = crate::config::LeaderlessSettings::default();
            for text in [raw.clone(), format!("w={tail}&r={tail}"), format!("strict={tail}&w={raw}")] {
                if let Err(message) = levels(&settings, &Params::parse(Some(text))) {
                    proptest::prop_assert!(!message.is_empty());
                }
            }
            for text in [raw.clone(), tail.clone(), format!("01{tail}"), "é1".to_string()] {
                let _ = crate::leaderless::decode_context(&text);
            }
        }
    }
}
