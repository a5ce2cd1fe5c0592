//! The dashboard: a page compiled into the binary (`/`), and the one JSON document it
//! polls (`/dashboard/state`): every member with its role, epoch, health and lag, and the
//! counters behind rates and latencies. Any node serves it: it asks every member's HTTP
//! API itself (each with a short timeout), so the browser talks to one origin only.

use super::*;

const PAGE: &str = include_str!("dashboard.html");

pub(super) async fn dashboard_page() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response()
}

pub(super) async fn dashboard_state(State(node): State<Arc<Node>>, headers: axum::http::HeaderMap) -> Response {
    // With --auth, the members are asked with the caller's own credentials.
    let authorization = headers.get(axum::http::header::AUTHORIZATION).and_then(|value| value.to_str().ok()).map(str::to_string);
    let published = node.published();
    let peers = node.peers.lock().expect("peers lock").clone();
    let own_http = node.http_addr.lock().expect("http addr lock").clone();
    // Every member: (id, HTTP address if known, region).
    let members: Vec<(String, Option<String>, String)> = published
        .membership
        .members()
        .map(|id| {
            if *id == node.config.id {
                (id.clone(), Some(own_http.clone()), node.config.region.clone())
            } else {
                let info = peers.get(id).cloned().unwrap_or_default();
                (id.clone(), (!info.http_addr.is_empty()).then_some(info.http_addr), info.region)
            }
        })
        .collect();
    let asking = node.clone();
    let asked = tokio::task::spawn_blocking(move || {
        members
            .into_iter()
            .map(|(id, http, region)| {
                let answers = http.map(|address| {
                    let mut client = asking.config.member_client(&address).with_timeout(Duration::from_millis(800)).with_authorization(authorization.clone());
                    let status = client.get("/status").ok().filter(|reply| reply.status == 200).map(|reply| reply.body);
                    let metrics = client
                        .request_raw("GET", "/metrics", None)
                        .ok()
                        .filter(|(code, _)| *code == 200)
                        .map(|(_, body)| String::from_utf8_lossy(&body).into_owned());
                    (status, metrics)
                });
                let (status, metrics) = answers.unwrap_or((None, None));
                (id, region, status, metrics)
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    // Lag as the leader measures it.
    let leader_status = asked
        .iter()
        .find(|(_, _, status, _)| status.as_ref().is_some_and(|status| status["node"]["role"] == "leader"))
        .and_then(|(_, _, status, _)| status.clone());
    let followers = leader_status.as_ref().and_then(|status| status["replication"]["followers"].as_array().cloned()).unwrap_or_default();
    let nodes: Vec<Value> = asked
        .iter()
        .map(|(id, region, status, metrics)| {
            let follower = followers.iter().find(|follower| follower["id"] == id.as_str());
            let metrics = metrics.as_deref().unwrap_or("");
            let sum = |name: &str| prometheus_sum(metrics, name, id);
            json!({
                "id": id,
                "region": status.as_ref().map_or(json!(region), |status| status["node"]["region"].clone()),
                "reachable": status.is_some(),
                "role": status.as_ref().map(|status| status["node"]["role"].clone()),
                "member": status.as_ref().map(|status| status["node"]["member"].clone()),
                "epoch": status.as_ref().map(|status| status["node"]["epoch"].clone()),
                "applied_index": status.as_ref().map(|status| status["node"]["applied_index"].clone()),
                "lag_ms": follower.map(|follower| follower["lag_ms"].clone()),
                "in_sync": follower.map(|follower| follower["in_sync"].clone()),
                "writes_total": sum("tern_writes_total"),
                "reads_total": sum("tern_reads_total"),
                "write_seconds_sum": sum("tern_write_duration_seconds_sum"),
                "write_seconds_count": sum("tern_write_duration_seconds_count"),
                "read_seconds_sum": sum("tern_read_duration_seconds_sum"),
                "read_seconds_count": sum("tern_read_duration_seconds_count"),
                "elections_total": sum("tern_leader_elections_total"),
            })
        })
        .collect();
    let conflicts: f64 = asked.iter().map(|(id, _, _, metrics)| prometheus_sum(metrics.as_deref().unwrap_or(""), "tern_conflicts", id)).sum();
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64);
    Json(json!({
        "node": node.config.id,
        "topology": node.config.topology.name(),
        "leader": published.leader,
        "time_ms": now_ms,
        "nodes": nodes,
        "conflicts": conflicts,
    }))
    .into_response()
}

/// The sum of the samples of metric `name` labelled `node="<node>"` in Prometheus text (a
/// process serving several nodes, as the demo does, renders them all).
fn prometheus_sum(text: &str, name: &str, node: &str) -> f64 {
    let label = format!("node=\"{node}\"");
    text.lines()
        .filter(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') && rest.contains(&label)))
        .filter_map(|line| line.rsplit_once(' ').and_then(|(_, value)| value.parse::<f64>().ok()))
        // An empty sum of floats is -0.0, which JSON would show as such.
        .fold(0.0, |total, value| total + value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_samples_are_summed_per_node() {
        let text = "# HELP tern_writes_total x\ntern_writes_total{node=\"n1\",ack=\"1\",outcome=\"ok\"} 3\ntern_writes_total{node=\"n1\",ack=\"majority\",outcome=\"ok\"} 4\n\
                    tern_writes_total{node=\"n2\",ack=\"1\",outcome=\"ok\"} 100\ntern_writes_total_other{node=\"n1\"} 9\ngarbage\n";
        assert_eq!(prometheus_sum(text, "tern_writes_total", "n1"), 7.0);
        assert_eq!(prometheus_sum(text, "tern_writes_total", "n3"), 0.0);
    }
}
