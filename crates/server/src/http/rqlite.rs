//! rqlite's API, so its clients work unmodified: `/db/execute`, `/db/query`, `/db/request`, `/status`, `/readyz`, `/nodes`, with tern's extensions (`w=`, `position`, `level=session`/`bounded`).

use super::*;

pub(super) fn not_ready(node: &Node) -> Option<Response> {
    let message = node.with_published(|published| {
        (!published.ready).then(|| match &published.leader {
            Some(leader) => format!("node {} is not ready: it has not heard from leader {leader} yet", node.config.id),
            None => format!("node {} is not ready: no leader is known (an election is under way); retry shortly", node.config.id),
        })
    })?;
    Some(error_response(&RequestError::new(503, message)))
}

/// What a write's `w=` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum WriteWait {
    /// Copies within this node's cluster or region (`w=1`, `majority`, `all`, `sync`).
    Copies(AckRequirement),
    /// Multi-leader: this many regions, this one included (`w=regions:2`); `None`: all.
    Regions(Option<usize>),
}

pub(super) fn write_options(params: &Params) -> Result<Option<WriteWait>, String> {
    let Some(text) = params.get("w") else { return Ok(None) };
    match text.strip_prefix("regions:") {
        Some("all") => Ok(Some(WriteWait::Regions(None))),
        Some(count) => match count.parse::<usize>() {
            Ok(count) if count >= 1 => Ok(Some(WriteWait::Regions(Some(count)))),
            _ => Err(format!("bad w={text:?}: expected regions:1, regions:2, ... or regions:all")),
        },
        None => AckRequirement::parse(text).map(|requirement| Some(WriteWait::Copies(requirement))),
    }
}

/// How many regions a `w=regions:` write waits for, checked against this cluster.
fn regions_wanted(node: &Node, wanted: Option<usize>) -> Result<usize, String> {
    if node.config.topology != tern_core::Topology::MultiLeader {
        return Err("w=regions:k needs --topology multi-leader: under single-leader every write goes to one leader (use w=majority or w=all)".to_string());
    }
    let regions = node.config.all_regions().len();
    match wanted {
        None => Ok(regions),
        Some(count) if count <= regions => Ok(count),
        Some(count) => Err(format!("w=regions:{count} asks for more regions than this cluster has ({regions})")),
    }
}

pub(super) fn write_response(reply: WriteReply, started: Instant, params: &Params) -> Response {
    if let Some(error) = &reply.error {
        if reply.results.is_empty() {
            return error_response(error);
        }
    }
    let mut body = json!({ "results": results_json(&reply.results, params) });
    if let Some(position) = reply.position {
        body["position"] = json!(position.to_string());
    }
    if let Some(dot) = &reply.region_write {
        // Multi-leader: read this write anywhere with level=session&after=<token>.
        body["token"] = json!(format!("{}:{}", dot.region, dot.seq));
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
pub(super) fn with_timings(mut body: Value, started: Instant, params: &Params) -> Response {
    if params.flag("timings") {
        body["time"] = json!(started.elapsed().as_secs_f64());
    }
    if params.flag("pretty") {
        let text = serde_json::to_string_pretty(&body).unwrap_or_default();
        return ([(axum::http::header::CONTENT_TYPE, "application/json")], text).into_response();
    }
    Json(body).into_response()
}

/// The write half shared by `/db/execute` and `/db/request`.
pub(super) async fn write_path(node: &Node, statements: Vec<Statement>, params: &Params, started: Instant) -> Response {
    let (requirement, regions) = match write_options(params) {
        Ok(None) => (None, None),
        Ok(Some(WriteWait::Copies(requirement))) => (Some(requirement), None),
        Ok(Some(WriteWait::Regions(wanted))) => match regions_wanted(node, wanted) {
            Ok(regions) => (None, Some(regions)),
            Err(message) => return bad_request(message),
        },
        Err(message) => return bad_request(message),
    };
    let request = WriteRequest { statements, transaction: params.flag("transaction") };
    if let Some(message) = tern_storage::request_shape_error(&request) {
        return bad_request(message);
    }
    let limit = match write_timeout(params) {
        Ok(limit) => limit,
        Err(response) => return response,
    };
    // Multi-leader: rows homed in another region are written there, unless ?home=local.
    let write = node.write(request, requirement, regions, !matches!(params.get("home"), Some("local")));
    match limit {
        None => write_response(write.await, started, params),
        Some(limit) => match tokio::time::timeout(limit, write).await {
            Ok(reply) => write_response(reply, started, params),
            Err(_) => timed_out(limit),
        },
    }
}

/// A write's own `timeout=` (rqlite's per-request timeout): how long this request waits
/// for its write. It can shorten the node's `--write-timeout-ms`, not lengthen it.
fn write_timeout(params: &Params) -> Result<Option<Duration>, Response> {
    params.get("timeout").map(parse_duration).transpose().map_err(bad_request)
}

fn timed_out(limit: Duration) -> Response {
    error_response(&RequestError::new(
        503,
        format!("the write did not finish within timeout={limit:?}: its outcome is unknown (it may still be applied; read before retrying)"),
    ))
}

/// rqlite's `queue`: the statements are accepted at once and written with others in a
/// batch; the answer is a sequence number. With `wait`, it comes once the batch is written.
async fn queued_write(node: &Arc<Node>, statements: Vec<Statement>, params: &Params, started: Instant) -> Response {
    if params.flag("transaction") {
        return bad_request("?queue cannot be combined with ?transaction: a queued request is written in one batch with others (send it without ?queue)");
    }
    let requirement = match write_options(params) {
        Ok(None) => None,
        Ok(Some(WriteWait::Copies(requirement))) => Some(requirement),
        Ok(Some(WriteWait::Regions(_))) => return bad_request("?queue cannot be combined with w=regions: (send it without ?queue)"),
        Err(message) => return bad_request(message),
    };
    let limit = match write_timeout(params) {
        Ok(limit) => limit.unwrap_or(node.config.write_timeout * 2 + Duration::from_secs(5)),
        Err(response) => return response,
    };
    let (sequence, outcome) = match node.enqueue(statements, requirement, params.flag("wait")) {
        Ok(queued) => queued,
        Err(error) => return error_response(&error),
    };
    if let Some(outcome) = outcome {
        match tokio::time::timeout(limit, outcome).await {
            Ok(Ok(None)) => {}
            Ok(Ok(Some(error))) => return error_response(&error),
            Ok(Err(_)) => return error_response(&RequestError::new(503, "this node's write queue stopped: the outcome is unknown")),
            Err(_) => return timed_out(limit),
        }
    }
    with_timings(json!({ "results": [], "sequence_number": sequence }), started, params)
}

/// rqlite's `redirect`: a node that does not lead answers 301 with the same request at
/// its leader's address, instead of forwarding the request there. `None`: serve it here
/// (this node leads, or no leader is known and the request's own path says so).
fn redirect_to_leader(node: &Node, uri: &Uri) -> Option<Response> {
    let leader = node.published().leader.filter(|leader| *leader != node.config.id)?;
    let address = node.peers.lock().expect("peers lock").get(&leader).map(|info| info.http_addr.clone()).filter(|address| !address.is_empty());
    let Some(address) = address else {
        let mut error = RequestError::new(503, format!("the leader is {leader}, but this node does not know its HTTP address yet: retry shortly"));
        error.leader = Some(leader);
        return Some(error_response(&error));
    };
    let location = format!("{}://{address}{}", node.config.http_scheme(), uri.path_and_query().map_or(uri.path(), |path| path.as_str()));
    Some((StatusCode::MOVED_PERMANENTLY, [(axum::http::header::LOCATION, location)], Json(json!({ "leader": leader }))).into_response())
}

/// What `/db/execute` and `/db/request` share before they differ: the query string, a
/// readiness check and the statements of the body.
pub(super) fn accept_statements(node: &Node, raw: Option<String>, body: &[u8]) -> Result<(Params, Vec<Statement>), Response> {
    let params = Params::parse(raw);
    if let Some(response) = not_ready(node) {
        return Err(response);
    }
    let statements = parse_statements(body).map_err(bad_request)?;
    Ok((params, statements))
}

pub(super) async fn execute(State(node): State<Arc<Node>>, uri: Uri, RawQuery(raw): RawQuery, body: Bytes) -> Response {
    let started = Instant::now();
    let (params, statements) = match accept_statements(&node, raw, &body) {
        Ok(accepted) => accepted,
        Err(response) => return response,
    };
    if statements.is_empty() {
        return Json(json!({ "results": [] })).into_response();
    }
    if params.flag("redirect") {
        if let Some(response) = redirect_to_leader(&node, &uri) {
            return response;
        }
    }
    if params.flag("queue") {
        return queued_write(&node, statements, &params, started).await;
    }
    write_path(&node, statements, &params, started).await
}

pub(super) fn read_options(params: &Params) -> Result<ReadOptions, String> {
    let level = match params.get("level") {
        // rqlite's `auto` is `none` on a read-only (non-voting) node and `weak` elsewhere:
        // the handler knows which this node is (`auto_level`).
        Some("auto") => ReadLevel::Weak,
        Some(level) => level.parse::<ReadLevel>()?,
        // rqlite's default is weak; a read naming a position is a session read.
        None if params.get("after").is_some() => ReadLevel::Session,
        None => ReadLevel::Weak,
    };
    // A multi-leader token names region writes (`us-east:4,eu-west:2`), a position does not.
    let (after, after_regions) = match params.get("after") {
        Some(token) if token.contains(':') => (None, Some(token.parse::<tern_core::multi_leader::VersionVector>()?)),
        Some(position) => (Some(position.parse::<Position>()?), None),
        None => (None, None),
    };
    if level == ReadLevel::Session && after.is_none() && after_regions.is_none() {
        return Err("level=session needs after=<position> (the \"position\" of a write response)".to_string());
    }
    let max_lag = params
        .get("max_lag_ms")
        .map(|ms| ms.parse::<u64>().map(Duration::from_millis).map_err(|_| format!("bad max_lag_ms={ms:?}: expected milliseconds")))
        .transpose()?;
    let freshness = params.get("freshness").map(parse_duration).transpose()?;
    let timeout = params.get("timeout").map(parse_duration).transpose()?.unwrap_or(Duration::from_secs(5));
    Ok(ReadOptions { level, after, after_regions, max_lag, freshness, timeout })
}

pub(super) fn read_response(reply: ReadReply, token: Option<String>, started: Instant, params: &Params) -> Response {
    if let Some(error) = &reply.error {
        return error_response(error);
    }
    let mut body = json!({ "results": results_json(&reply.results, params) });
    if let Some(token) = token {
        body["token"] = json!(token);
    }
    with_timings(body, started, params)
}

pub(super) async fn query(State(node): State<Arc<Node>>, uri: Uri, RawQuery(raw): RawQuery, body: Bytes) -> Response {
    let started = Instant::now();
    let params = Params::parse(raw);
    let options = match read_options(&params) {
        Ok(options) => auto_level(&node, &params, options),
        Err(message) => return bad_request(message),
    };
    if params.flag("redirect") && served_by_leader(options.level) {
        if let Some(response) = redirect_to_leader(&node, &uri) {
            return response;
        }
    }
    // `level=none` is served from whatever this node holds, as the level promises (bound
    // it with `freshness=`): also before it has heard from a leader, and during elections.
    if options.level != ReadLevel::None {
        if let Some(response) = not_ready(&node) {
            return response;
        }
    }
    let statements = match query_statements(&params, &body) {
        Ok(statements) => statements,
        Err(response) => return response,
    };
    let reply = node.read(statements, options).await;
    let token = region_token_of(&node, &reply).await;
    read_response(reply, token, started, &params)
}

/// Multi-leader: what a successful read's region held (at least what the read saw), as
/// a token for `level=session&after=` in any region.
pub(super) async fn region_token_of(node: &Node, reply: &ReadReply) -> Option<String> {
    if node.config.topology != tern_core::Topology::MultiLeader || reply.error.is_some() {
        return None;
    }
    node.region_token().await.map(|token| token.to_string())
}

/// rqlite's unified endpoint: reads take the read path at `level=`; anything that writes
/// goes to the leader as one request (its reads run there too).
pub(super) async fn request(
    State(node): State<Arc<Node>>,
    caller: Option<axum::Extension<crate::auth::Caller>>,
    uri: Uri,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let params = Params::parse(raw);
    let statements = match parse_statements(&body) {
        Ok(statements) => statements,
        Err(message) => return bad_request(message),
    };
    let read_only = node.all_read_only(statements.clone()).await;
    // The middleware let a `query` caller in; a write needs `execute` too.
    if let Some(axum::Extension(caller)) = &caller {
        if !read_only && !caller.may(crate::auth::Permission::Execute) {
            return refusal_response(&caller.refusal(crate::auth::Permission::Execute));
        }
    }
    if params.flag("redirect") && (!read_only || read_options(&params).is_ok_and(|options| served_by_leader(options.level))) {
        if let Some(response) = redirect_to_leader(&node, &uri) {
            return response;
        }
    }
    if read_only {
        let options = match read_options(&params) {
            Ok(options) => auto_level(&node, &params, options),
            Err(message) => return bad_request(message),
        };
        // As on /db/query: `level=none` reads whatever this node holds, ready or not.
        if options.level != ReadLevel::None {
            if let Some(response) = not_ready(&node) {
                return response;
            }
        }
        let reply = node.read(statements, options).await;
        let token = region_token_of(&node, &reply).await;
        return read_response(reply, token, started, &params);
    }
    if let Some(response) = not_ready(&node) {
        return response;
    }
    write_path(&node, statements, &params, started).await
}

/// Is a read at `level` answered by the leader (so `redirect` sends it there)?
fn served_by_leader(level: ReadLevel) -> bool {
    matches!(level, ReadLevel::Weak | ReadLevel::Strong | ReadLevel::Linearizable)
}

/// rqlite's `level=auto`: `none` on a read-only (non-voting) node, else `weak`. (rqlite's
/// `freshness_strict` flag needs nothing here: tern's `freshness=` already measures how far
/// behind this node's data is, not how long since it heard from the leader.)
fn auto_level(node: &Node, params: &Params, mut options: ReadOptions) -> ReadOptions {
    if params.get("level") == Some("auto")
        && node.config.non_voters.contains(&node.config.id)
        && node.with_published(|published| published.membership.learners.contains(&node.config.id))
    {
        options.level = ReadLevel::None;
    }
    options
}

pub(super) async fn status(State(node): State<Arc<Node>>) -> Response {
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
                "member": member_kind(&status.membership, &follower.id, follower.preference.or(info.preference)),
                "leader_priority": follower.preference.or(info.preference).map(|preference| preference.leader_priority),
            })
        })
        .collect();
    let published = node.published();
    let mut body = json!({
        "node": {
            "id": node.config.id,
            "region": node.config.region,
            "role": if status.is_leader { "leader" } else if status.recovering { "candidate" } else { "follower" },
            "member": member_kind(&status.membership, &node.config.id, Some(status.preference)),
            "leader_priority": status.preference.leader_priority,
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
            // rqlite's node section.
            "start_time": rfc3339(std::time::SystemTime::now() - Duration::from_micros(node.now_us())),
            "current_time": rfc3339(std::time::SystemTime::now()),
            "uptime": format!("{:.3}s", node.now_us() as f64 / 1e6),
        },
        // rqlite's sections, which its tools read (the shell's .restore reads store.sqlite3).
        "store": {
            "node_id": node.config.id,
            "dir": node.config.data_dir.display().to_string(),
            "leader": { "node_id": status.leader, "addr": status.leader.as_ref().and_then(|leader| published.membership.addresses.get(leader)) },
            "sqlite3": {
                "version": tern_storage::sqlite_version(),
                "path": node.config.data_dir.join(tern_storage::DATABASE_FILE).display().to_string(),
                "db_size": std::fs::metadata(node.config.data_dir.join(tern_storage::DATABASE_FILE)).map(|metadata| metadata.len()).unwrap_or(0),
                "fk_constraints": "disabled",
            },
            "raft": {
                "state": if status.is_leader { "Leader" } else if status.recovering { "Candidate" } else { "Follower" },
                "term": status.term,
                "commit_index": status.commit_index,
                "applied_index": status.last.index,
            },
        },
        "http": { "bind_addr": node.http_addr.lock().expect("http addr lock").clone(), "auth": "disabled" },
        "build": { "version": concat!("tern-", env!("CARGO_PKG_VERSION")), "compiler": "rustc" },
        "log": {
            "entries": node.log_stats.entries.load(std::sync::atomic::Ordering::Relaxed),
            "bytes": node.log_stats.bytes.load(std::sync::atomic::Ordering::Relaxed),
        },
        "replication": {
            "topology": node.config.topology.name(),
            "failover": if node.config.failover { "automatic" } else { "manual" },
            "log_format": node.config.log_format.name(),
            "ack": node.config.ack.name(),
            "followers": followers,
        },
    });
    if node.config.topology == tern_core::Topology::MultiLeader {
        body["regions"] = regions_status(&node).await;
    }
    Json(body).into_response()
}

/// A time as RFC 3339 in UTC with seconds (`2026-12-02T10:04:05Z`), as rqlite's status shows.
pub(super) fn rfc3339(time: std::time::SystemTime) -> String {
    let seconds = time.duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_secs()) as i64;
    let (days, of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", of_day / 3600, of_day % 3600 / 60, of_day % 60)
}

pub(super) async fn readyz(State(node): State<Arc<Node>>, RawQuery(raw): RawQuery) -> Response {
    if Params::parse(raw).flag("noleader") {
        // rqlite's `noleader`: ready once the node runs, leader or not.
        return (StatusCode::OK, format!("[+]node {} ok\n", node.config.id)).into_response();
    }
    match not_ready(&node) {
        Some(_) => (StatusCode::SERVICE_UNAVAILABLE, format!("[-]node {} not ready\n", node.config.id)).into_response(),
        None => (StatusCode::OK, format!("[+]node {} ok\n[+]leader {} ok\n", node.config.id, node.published().leader.unwrap_or_default())).into_response(),
    }
}

/// rqlite's `/nodes` shape: one object per node, keyed by id; `ver=2`, a `nodes` array.
/// Non-voters are listed with `nonvoters`, as rqlite does.
pub(super) async fn nodes(State(node): State<Arc<Node>>, RawQuery(raw): RawQuery) -> Response {
    let params = Params::parse(raw);
    let published = node.published();
    let peers = node.peers.lock().expect("peers lock").clone();
    let mut body = serde_json::Map::new();
    let membership = &published.membership;
    for id in membership.members().filter(|id| params.flag("nonvoters") || membership.voters.contains(*id)) {
        let addr = membership.addresses.get(id).cloned().unwrap_or_default();
        let (api_addr, region, reachable, preference) = if *id == node.config.id {
            (node.http_addr.lock().expect("http addr lock").clone(), node.config.region.clone(), true, Some(node.config.preference()))
        } else {
            let info = peers.get(id).cloned().unwrap_or_default();
            (info.http_addr, info.region, info.connected, info.preference)
        };
        body.insert(
            id.clone(),
            json!({
                "id": id,
                "api_addr": if api_addr.is_empty() { Value::Null } else { json!(format!("{}://{api_addr}", node.config.http_scheme())) },
                "addr": addr,
                "region": region,
                "reachable": reachable,
                "leader": published.leader.as_ref() == Some(id),
                "voter": membership.voters.contains(id),
                "member": member_kind(membership, id, preference),
                "leader_priority": preference.map(|preference| preference.leader_priority),
            }),
        );
    }
    if params.get("ver") == Some("2") {
        return Json(json!({ "nodes": body.into_iter().map(|(_, entry)| entry).collect::<Vec<Value>>() })).into_response();
    }
    Json(Value::Object(body)).into_response()
}

/// What part a member plays: `voter`, `non-voter` (a permanent learner), `learner` (still
/// catching up, to be promoted), or `none` (not a member as this node last applied it).
pub(super) fn member_kind(membership: &tern_core::Membership, id: &str, preference: Option<tern_core::Preference>) -> &'static str {
    if membership.voters.contains(id) {
        "voter"
    } else if !membership.learners.contains(id) {
        "none"
    } else if preference.is_some_and(|preference| !preference.voter) {
        "non-voter"
    } else {
        "learner"
    }
}
