//! Fault injection for tests (`--fault-injection on` only): partitions and a storage panic.

use super::*;

/// `POST /debug/partition?drop=ID,ID` (only with `--fault-injection on`): drop all
/// traffic to and from those peers; `drop=` with no ids heals.
pub(super) async fn partition(State(node): State<Arc<Node>>, RawQuery(raw): RawQuery) -> Response {
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
pub(super) async fn panic_storage(State(node): State<Arc<Node>>) -> Response {
    if !node.config.fault_injection {
        return error_response(&RequestError::new(404, "fault injection is off (start the node with --fault-injection on)"));
    }
    node.inject_storage_panic();
    Json(json!({"node": node.config.id, "panicking": "storage thread"})).into_response()
}
