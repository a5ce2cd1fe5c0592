//! Prometheus metrics (`GET /metrics`), through the `metrics` facade and its Prometheus
//! renderer. Events are counted where they happen (writes, reads, commits, elections,
//! snapshots); readings of state (lag per follower, log size, epoch, conflicts) are set
//! when scraped. Every series carries a `node` label: the demo runs several nodes in one
//! process, and they share its one recorder.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

/// Latency buckets in seconds: 100 µs to 30 s, for local commits and WAN round trips alike.
const SECONDS: &[f64] = &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Requests per group commit.
const REQUESTS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process's recorder (once; later calls return the same handle). `None` if
/// another recorder was installed first (an embedding program's): then nothing is rendered.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_string()), SECONDS)
                .and_then(|builder| builder.set_buckets_for_metric(Matcher::Suffix("_requests".to_string()), REQUESTS))
                .ok()?;
            let handle = builder.install_recorder().ok()?;
            describe();
            Some(handle)
        })
        .as_ref()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!("tern_writes_total", "Write requests answered by this node (the one the client sent it to), by ack and outcome");
    describe_histogram!("tern_write_duration_seconds", Unit::Seconds, "Write request latency, as the client sees it");
    describe_counter!("tern_reads_total", "Read requests answered by this node, by level and outcome");
    describe_histogram!("tern_read_duration_seconds", Unit::Seconds, "Read request latency, by level");
    describe_histogram!("tern_commit_duration_seconds", Unit::Seconds, "One group commit on the leader: executing, logging and fsync");
    describe_histogram!("tern_group_commit_requests", "Requests per group commit");
    describe_counter!("tern_log_compactions_total", "Times this node compacted its log");
    describe_gauge!("tern_log_entries", "Log entries this node appended or applied since it started");
    describe_gauge!("tern_log_bytes", Unit::Bytes, "Bytes of the log entries this node appended or applied since it started");
    describe_gauge!("tern_follower_lag_entries", "On the leader: log entries a follower lacks");
    describe_gauge!("tern_follower_lag_seconds", Unit::Seconds, "On the leader: how far behind a follower is, in time");
    describe_gauge!("tern_follower_in_sync", "On the leader: 1 if a follower is in sync");
    describe_gauge!("tern_is_leader", "1 if this node leads (its region, under multi-leader)");
    describe_gauge!("tern_epoch", "The epoch (leadership term) this node is in");
    describe_counter!("tern_leader_elections_total", "Times this node became leader");
    describe_counter!("tern_leader_changes_total", "Times this node saw the leader change");
    describe_counter!("tern_snapshots_sent_total", "Snapshots this node made for a follower");
    describe_counter!("tern_snapshots_installed_total", "Snapshots this node installed");
    describe_gauge!("tern_rollback_entries", "Entries in this node's rollback store");
    describe_gauge!("tern_conflicts", "Multi-leader: rows with losing versions on record, per table");
    describe_gauge!("tern_region_lag_seconds", Unit::Seconds, "Multi-leader: how long this region has lacked some of another region's writes");
    describe_gauge!("tern_region_missing_writes", "Multi-leader: writes of this region another region still lacks");
    describe_counter!("tern_leaderless_merges_total", "Leaderless: row versions from peers merged here (anti-entropy, read repair, hints)");
    describe_counter!("tern_leaderless_repairs_total", "Leaderless: repairs (Merkle comparisons with every peer) asked of this node");
    describe_gauge!("tern_leaderless_hints_pending", "Leaderless: hints kept for another node, by node");
    describe_gauge!("tern_leaderless_keys", "Leaderless: keys this node stores");
    describe_gauge!("tern_leaderless_peers_down", "Leaderless: peers this node cannot reach");
    describe_gauge!("tern_leaderless_requests_in_flight", "Leaderless: requests this node coordinates now");
    describe_gauge!("tern_leaderless_keys_with_siblings", "Leaderless: keys holding concurrent versions, by table");
}

/// What a request came to, as a label.
pub fn outcome(error: Option<&crate::wire::RequestError>, statement_failed: bool) -> &'static str {
    match error {
        None if statement_failed => "failed",
        None => "ok",
        // The request ran, or may have: its outcome is not known to the client.
        Some(error) if error.status == 503 || error.status == 504 => "unavailable",
        Some(error) if (400..500).contains(&error.status) => "refused",
        Some(_) => "failed",
    }
}

/// The acknowledgement a write waited for, as a label (`w=2`, `w=3`, … are one: `n`).
pub fn ack_label(requirement: tern_core::AckRequirement) -> &'static str {
    match requirement {
        tern_core::AckRequirement::Nodes(1) => "1",
        tern_core::AckRequirement::Nodes(_) => "n",
        tern_core::AckRequirement::Majority => "majority",
        tern_core::AckRequirement::AllInSync => "sync",
        tern_core::AckRequirement::All => "all",
    }
}

pub fn write_answered(node: &str, ack: &'static str, outcome: &'static str, took: Duration) {
    metrics::counter!("tern_writes_total", "node" => node.to_string(), "ack" => ack, "outcome" => outcome).increment(1);
    metrics::histogram!("tern_write_duration_seconds", "node" => node.to_string()).record(took.as_secs_f64());
}

pub fn read_answered(node: &str, level: &'static str, outcome: &'static str, took: Duration) {
    metrics::counter!("tern_reads_total", "node" => node.to_string(), "level" => level, "outcome" => outcome).increment(1);
    metrics::histogram!("tern_read_duration_seconds", "node" => node.to_string(), "level" => level).record(took.as_secs_f64());
}

pub fn committed(node: &str, requests: usize, took: Duration) {
    metrics::histogram!("tern_commit_duration_seconds", "node" => node.to_string()).record(took.as_secs_f64());
    metrics::histogram!("tern_group_commit_requests", "node" => node.to_string()).record(requests as f64);
}

pub fn count(name: &'static str, node: &str) {
    metrics::counter!(name, "node" => node.to_string()).increment(1);
}

pub fn gauge(name: &'static str, node: &str, value: f64) {
    metrics::gauge!(name, "node" => node.to_string()).set(value);
}

pub fn gauge_of(name: &'static str, node: &str, key: &'static str, of: &str, value: f64) {
    metrics::gauge!(name, "node" => node.to_string(), key => of.to_string()).set(value);
}
