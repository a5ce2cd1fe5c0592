//! `/metrics` scraped from real `tern server` processes during a workload, a paused
//! follower and a leader failover: the counters move as they must.

mod support;

use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;
use support::*;

/// One scrape: every sample, keyed by its series (`name{labels}` as rendered).
fn scrape(node: &ServerNode) -> BTreeMap<String, f64> {
    let (status, body) = node.client().request_raw("GET", "/metrics", None).expect("metrics answer");
    assert_eq!(status, 200);
    let text = String::from_utf8(body.to_vec()).expect("metrics are text");
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("a sample line: {line:?}"));
            (series.to_string(), value.parse().unwrap_or_else(|_| panic!("a number: {line:?}")))
        })
        .collect()
}

/// The sum of a metric's samples whose series contains every one of `labels`.
fn total(samples: &BTreeMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| series.split('{').next() == Some(name) && labels.iter().all(|label| series.contains(label)))
        .map(|(_, value)| value)
        .sum()
}

/// The sum over the cluster's nodes, leaving out the one at `dead` (killed).
fn cluster_total(cluster: &Cluster, dead: Option<usize>, name: &str, labels: &[&str]) -> f64 {
    cluster.nodes.iter().enumerate().filter(|(index, _)| Some(*index) != dead).map(|(_, node)| total(&scrape(node), name, labels)).sum()
}

#[test]
fn metrics_count_writes_once_show_a_paused_followers_lag_and_count_a_failover() {
    let mut cluster = Cluster::start("metrics", 3, &["--write-timeout-ms", "1000"]);
    let leader_index = cluster.nodes.iter().position(|node| node.id == cluster.leader().id).expect("a leader");
    let follower_index = (leader_index + 1) % 3;
    let mut client = cluster.nodes[follower_index].client();
    assert_eq!(execute(&mut client, "", json!(["CREATE TABLE m (id INTEGER PRIMARY KEY, v TEXT)"])).status, 200);
    let before = cluster_total(&cluster, None, "tern_writes_total", &["outcome=\"ok\""]);
    let reads_before = cluster_total(&cluster, None, "tern_reads_total", &["level=\"strong\""]);

    // 20 writes through a follower (forwarded to the leader), 10 at the leader, 5 reads.
    for number in 0..20 {
        assert_eq!(execute(&mut client, "", json!([["INSERT INTO m(v) VALUES (?)", format!("f{number}")]])).status, 200);
    }
    let mut at_leader = cluster.nodes[leader_index].client();
    for number in 0..10 {
        assert_eq!(execute(&mut at_leader, "", json!([["INSERT INTO m(v) VALUES (?)", format!("l{number}")]])).status, 200);
    }
    for _ in 0..5 {
        assert_eq!(query(&mut client, "SELECT count(*) FROM m", "level=strong").status, 200);
    }
    let after = cluster_total(&cluster, None, "tern_writes_total", &["outcome=\"ok\""]);
    assert_eq!(after - before, 30.0, "each write is counted once, at the node the client sent it to");
    assert!(total(&scrape(&cluster.nodes[follower_index]), "tern_writes_total", &["outcome=\"ok\""]) >= 20.0);
    assert_eq!(cluster_total(&cluster, None, "tern_reads_total", &["level=\"strong\""]) - reads_before, 5.0);
    let leader_samples = scrape(&cluster.nodes[leader_index]);
    assert_eq!(total(&leader_samples, "tern_is_leader", &[]), 1.0);
    assert!(total(&leader_samples, "tern_group_commit_requests_count", &[]) >= 31.0, "every write was a group commit on the leader");
    assert!(total(&leader_samples, "tern_write_duration_seconds_count", &[]) >= 10.0);

    // A paused follower falls behind, and the leader's lag gauge for it says so.
    let paused = (leader_index + 2) % 3;
    let paused_id = cluster.nodes[paused].id.clone();
    cluster.nodes[paused].signal("STOP");
    for number in 0..5 {
        let reply = execute(&mut at_leader, "?w=1", json!([["INSERT INTO m(v) VALUES (?)", format!("p{number}")]]));
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let lag_label = format!("peer=\"{paused_id}\"");
    eventually(Duration::from_secs(30), "the leader's lag gauge to show the paused follower behind", || {
        total(&scrape(&cluster.nodes[leader_index]), "tern_follower_lag_entries", &[&lag_label]) >= 5.0
    });
    cluster.nodes[paused].signal("CONT");
    eventually(Duration::from_secs(30), "the resumed follower to catch up", || {
        total(&scrape(&cluster.nodes[leader_index]), "tern_follower_lag_entries", &[&lag_label]) == 0.0
    });

    // The leader dies: a survivor counts itself elected, and both see the leader change.
    let elections = cluster_total(&cluster, Some(leader_index), "tern_leader_elections_total", &[]);
    let changes = cluster_total(&cluster, Some(leader_index), "tern_leader_changes_total", &[]);
    let old_leader = cluster.nodes[leader_index].id.clone();
    cluster.nodes[leader_index].kill();
    eventually(Duration::from_secs(30), "a new leader", || {
        cluster.nodes.iter().any(|node| node.id != old_leader && total(&scrape(node), "tern_is_leader", &[]) == 1.0)
    });
    assert!(cluster_total(&cluster, Some(leader_index), "tern_leader_elections_total", &[]) >= elections + 1.0, "the failover is counted");
    eventually(Duration::from_secs(30), "both survivors to see the leader change", || {
        cluster_total(&cluster, Some(leader_index), "tern_leader_changes_total", &[]) >= changes + 2.0
    });
    let epochs: Vec<f64> =
        cluster.nodes.iter().enumerate().filter(|(index, _)| *index != leader_index).map(|(_, node)| total(&scrape(node), "tern_epoch", &[])).collect();
    assert!(epochs.iter().all(|epoch| *epoch >= 2.0), "a new epoch: {epochs:?}");
}
