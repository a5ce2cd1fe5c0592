//! tern's own operations: leadership transfer, membership, the rollback store, replica verification.

use super::*;

/// `POST /cluster/transfer-leader?to=ID` on the leader: hand leadership to `ID`.
pub(super) async fn transfer_leader(State(node): State<Arc<Node>>, RawQuery(raw): RawQuery) -> Response {
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
pub(super) async fn cluster(State(node): State<Arc<Node>>) -> Response {
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
            let preference =
                if *id == node.config.id { Some(status.preference) } else { progress.and_then(|follower| follower.preference).or(info.preference) };
            json!({
                "id": id,
                "addr": membership.addresses.get(id),
                "voter": membership.voters.contains(id),
                "member": super::rqlite::member_kind(membership, id, preference),
                "leader_priority": preference.map(|preference| preference.leader_priority),
                "region": if *id == node.config.id { node.config.region.clone() } else { info.region },
                "connected": *id == node.config.id || info.connected,
                "applied_index": applied_index,
                "lag_ms": progress.map(|follower| follower.lag_us as f64 / 1000.0),
                "in_sync": progress.map(|follower| follower.in_sync),
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
pub(super) async fn add_member(State(node): State<Arc<Node>>, RawQuery(raw): RawQuery) -> Response {
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
pub(super) async fn remove_member(State(node): State<Arc<Node>>, RawQuery(raw): RawQuery) -> Response {
    let params = Params::parse(raw);
    let Some(id) = params.get("id") else {
        return error_response(&RequestError::new(400, "missing ?id=<node id>"));
    };
    remove(&node, id).await
}

async fn remove(node: &Node, id: &str) -> Response {
    match node.change_membership(tern_core::MembershipRequest::Remove { id: id.to_string() }).await {
        Ok(()) => Json(json!({"removing": id, "leader": node.config.id})).into_response(),
        Err(error) => error_response(&error),
    }
}

/// rqlite's `DELETE /remove` with `{"id": "<node id>"}`: the same as `/cluster/remove`.
pub(super) async fn remove_node(State(node): State<Arc<Node>>, body: Bytes) -> Response {
    let object = match object_body(&body) {
        Ok(object) => object,
        Err(response) => return response,
    };
    let Some(id) = object.get("id").and_then(Value::as_str) else {
        return bad_request("expected {\"id\": \"<node id>\"}");
    };
    remove(&node, id).await
}

/// Prometheus metrics: what was counted, with this node's state read now.
pub(super) async fn metrics(State(node): State<Arc<Node>>) -> Response {
    use crate::metrics::{gauge, gauge_of};
    let Some(handle) = crate::metrics::install() else {
        return error_response(&RequestError::new(503, "metrics are off: another metrics recorder was installed in this process"));
    };
    let id = node.config.id.as_str();
    let stats = &node.log_stats;
    gauge("tern_log_entries", id, stats.entries.load(std::sync::atomic::Ordering::Relaxed) as f64);
    gauge("tern_log_bytes", id, stats.bytes.load(std::sync::atomic::Ordering::Relaxed) as f64);
    gauge("tern_rollback_entries", id, node.rollback_count().await as f64);
    if let Some(status) = node.status().await {
        gauge("tern_is_leader", id, f64::from(u8::from(status.is_leader)));
        gauge("tern_epoch", id, status.epoch as f64);
        for follower in &status.followers {
            let behind = status.last.index.saturating_sub(follower.matched);
            gauge_of("tern_follower_lag_entries", id, "peer", &follower.id, behind as f64);
            gauge_of("tern_follower_lag_seconds", id, "peer", &follower.id, follower.lag_us as f64 / 1e6);
            gauge_of("tern_follower_in_sync", id, "peer", &follower.id, f64::from(u8::from(follower.in_sync)));
        }
    }
    if node.config.topology == tern_core::Topology::MultiLeader {
        for table in node.conflicts().await.unwrap_or_default() {
            gauge_of("tern_conflicts", id, "table", &table.table, (table.rows.len() + table.unique.len()) as f64);
        }
        let regions = node.region_status().await.unwrap_or_default();
        for (region, holds, _) in &regions.regions {
            gauge_of("tern_region_lag_seconds", id, "region", region, regions.behind_ms.get(region).copied().unwrap_or(0.0) / 1000.0);
            let missing = regions.holds.get(&node.config.region).saturating_sub(holds.get(&node.config.region));
            gauge_of("tern_region_missing_writes", id, "region", region, missing as f64);
        }
    }
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response()
}

/// rqlite's `/debug/vars` (Go's expvar): the command line and tern's own counters.
pub(super) async fn debug_vars(State(node): State<Arc<Node>>) -> Response {
    Json(json!({
        "cmdline": std::env::args().collect::<Vec<String>>(),
        "log": {
            "entries": node.log_stats.entries.load(std::sync::atomic::Ordering::Relaxed),
            "bytes": node.log_stats.bytes.load(std::sync::atomic::Ordering::Relaxed),
        },
    }))
    .into_response()
}

/// This node's rollback store: entries it removed from its log because the leader of a
/// later epoch lacked them.
pub(super) async fn rollback(State(node): State<Arc<Node>>) -> Response {
    match node.rollback_entries().await {
        Ok(entries) => Json(json!({"node": node.config.id, "count": entries.len(), "entries": entries})).into_response(),
        Err(error) => error_response(&RequestError::new(500, format!("cannot read the rollback store: {error}"))),
    }
}

/// `?local`: this node's report. Otherwise every node's report, compared.
pub(super) async fn verify(State(node): State<Arc<Node>>, RawQuery(raw): RawQuery) -> Response {
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
        let asking = node.clone();
        let report = tokio::task::spawn_blocking(move || {
            if address.is_empty() {
                return json!({"id": id, "error": "HTTP address unknown (no handshake yet)"});
            }
            let mut client = asking.config.member_client(&address).with_timeout(Duration::from_secs(30));
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
