//! Leader placement on real `tern server` processes with the emulated WAN: permanent
//! non-voting replicas in far regions that serve local reads and never hold up a write,
//! and leader priorities that bring leadership back to the home region by itself.

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::*;

const LONG: Duration = Duration::from_secs(60);

/// One way, as `tern demo` has it.
const WAN: &str = "us-east:eu-west=40,us-east:antarctica=75,eu-west:antarctica=90";

fn status(node: &ServerNode) -> Value {
    node.client().with_timeout(Duration::from_secs(5)).get("/status").map(|reply| reply.body).unwrap_or(Value::Null)
}

/// Which node leads and accepts writes, as that node says.
fn leader_index(cluster: &Cluster, live: &[bool]) -> Option<usize> {
    (0..cluster.nodes.len()).filter(|index| live[*index]).find(|index| {
        let node = &status(&cluster.nodes[*index])["node"];
        node["role"] == "leader" && node["accepting_writes"] == true
    })
}

fn insert(node: &ServerNode, id: u64, w: &str) -> tern_server::client::Reply {
    let mut client = node.client();
    execute(&mut client, &format!("?w={w}"), json!([["INSERT INTO orders (id, v) VALUES (?, ?)", id, format!("order {id}")]]))
}

/// Rows of `orders` on this node as it stands (`None` before the table reached it).
fn local_count(client: &mut tern_server::client::HttpClient) -> Option<i64> {
    let reply = query(client, "SELECT COUNT(*) FROM orders", "level=none");
    reply.body["results"][0]["values"][0][0].as_i64()
}

fn assert_written(reply: &tern_server::client::Reply, what: &str) {
    assert_eq!(reply.status, 200, "{what}: {}", reply.body);
    assert!(reply.body["results"][0]["error"].is_null(), "{what}: {}", reply.body);
}

/// The `/nodes` entry of every member, as `node` sees them: (part it plays, priority).
fn parts(node: &ServerNode) -> Vec<(String, String, Option<u64>)> {
    let body = node.client().get("/nodes?nonvoters").expect("nodes answers").body;
    let mut parts: Vec<(String, String, Option<u64>)> = body
        .as_object()
        .into_iter()
        .flatten()
        .map(|(id, entry)| (id.clone(), entry["member"].as_str().unwrap_or("?").to_string(), entry["leader_priority"].as_u64()))
        .collect();
    parts.sort();
    parts
}

#[test]
fn far_non_voters_serve_local_reads_and_never_hold_up_a_write() {
    // Three voters in us-east; one non-voting replica in eu-west, one in antarctica.
    let regions = ["us-east", "us-east", "us-east", "eu-west", "antarctica"];
    let mut cluster = Cluster::new_in_regions("placement-non-voters", &regions, &["--wan", WAN, "--non-voters", "n4,n5"]);
    cluster.start_all();
    let (leader, antarctica) = (0, 4);
    assert_written(&execute(&mut cluster.nodes[leader].client(), "", table("orders")), "create the table");

    // Every node names every member's part, wherever it is asked.
    eventually(LONG, "every node to see n4 and n5 as non-voters", || {
        cluster.nodes.iter().all(|node| {
            let parts = parts(node);
            parts.len() == 5 && parts.iter().all(|(id, part, _)| part == if id == "n4" || id == "n5" { "non-voter" } else { "voter" })
        })
    });
    let followers = status(&cluster.nodes[leader])["replication"]["followers"].clone();
    for follower in followers.as_array().expect("the leader lists its followers") {
        let expected = if follower["id"] == "n4" || follower["id"] == "n5" { "non-voter" } else { "voter" };
        assert_eq!(follower["member"], expected, "the leader's /status: {followers}");
    }

    // Writes in us-east: each waits for the default ack (a majority of voters), all in
    // the leader's region. Timed for the report only (these machines are shared).
    let mut latencies = Vec::new();
    for id in 1..=30 {
        let started = Instant::now();
        assert_written(&insert(&cluster.nodes[leader], id, "majority"), "a write in us-east");
        latencies.push(started.elapsed());
    }
    latencies.sort();
    println!("write p50 in us-east with far non-voters: {:?} (a round trip to eu-west alone is 80 ms)", latencies[latencies.len() / 2]);

    // Local reads in the far regions: at once where the session's write has arrived.
    let mut far = cluster.nodes[antarctica].client();
    eventually(LONG, "antarctica to hold every order", || local_count(&mut far) == Some(30));
    let reply = insert(&cluster.nodes[leader], 31, "majority");
    assert_written(&reply, "a write whose position the session carries");
    let position = reply.body["position"].as_str().expect("a write reports its position").to_string();
    assert_eq!(count(&mut far, "SELECT COUNT(*) FROM orders", &format!("level=session&after={position}")), 31, "session read in antarctica");
    assert_eq!(count(&mut far, "SELECT COUNT(*) FROM orders", "level=linearizable"), 31, "a linearizable read asked of antarctica");

    // Neither non-voter counts toward any ack: with both stopped (SIGSTOP), writes at
    // every voter-counting level go on, w=all included.
    cluster.nodes[3].signal("STOP");
    cluster.nodes[4].signal("STOP");
    for (id, w) in [(100, "majority"), (101, "all"), (102, "3")] {
        assert_written(&insert(&cluster.nodes[leader], id, w), &format!("w={w} with both non-voters stopped"));
    }
    cluster.nodes[3].signal("CONT");
    cluster.nodes[4].signal("CONT");

    // Killing the far replica changes nothing for writes; back, it catches up, and it is
    // still a non-voter: the voters are the same three.
    cluster.nodes[antarctica].kill();
    for id in 200..210 {
        assert_written(&insert(&cluster.nodes[leader], id, "all"), "a write with antarctica down");
    }
    cluster.nodes[antarctica].start();
    wait_node_ready(&cluster.nodes[antarctica]);
    let mut far = cluster.nodes[antarctica].client();
    eventually(LONG, "antarctica to catch up after its restart", || local_count(&mut far) == Some(44));
    let cluster_view = cluster.nodes[leader].client().get("/cluster").expect("cluster answers").body;
    assert_eq!(cluster_view["voters"], json!(["n1", "n2", "n3"]), "{cluster_view}");
    assert_eq!(cluster_view["learners"], json!(["n4", "n5"]), "{cluster_view}");

    // Leadership is never handed to a non-voter.
    let refused = cluster.nodes[leader].client().post_json("/cluster/transfer-leader?to=n5", &json!({})).expect("node answers");
    assert_eq!(refused.status, 400, "{}", refused.body);

    // `tern cluster show` names each member's part and priority.
    let output =
        std::process::Command::new(env!("CARGO_BIN_EXE_tern")).args(["cluster", "show", "--http", &cluster.nodes[2].http]).output().expect("tern runs");
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{shown}");
    for line in ["n5", "non-voter", "priority 1", "antarctica"] {
        assert!(shown.contains(line), "`tern cluster show` lacks {line:?}:\n{shown}");
    }
}

#[test]
fn leadership_returns_to_the_highest_priority_member_once_it_is_back() {
    // n1 (priority 2) is the home of leadership, n2 may lead (1), n3 never leads (0).
    let mut cluster = Cluster::new_in_regions("placement-priority", &["us-east", "eu-west", "antarctica"], &[]);
    cluster.nodes[0].push_args(&["--leader-priority", "2"]);
    cluster.nodes[2].push_args(&["--leader-priority", "0"]);
    cluster.start_all();
    let mut live = vec![true; 3];
    assert_written(&execute(&mut cluster.nodes[0].client(), "", table("orders")), "create the table");
    eventually(LONG, "n2 to know every member's priority", || {
        parts(&cluster.nodes[1]).iter().map(|(_, _, priority)| *priority).collect::<Vec<_>>() == vec![Some(2), Some(1), Some(0)]
    });

    // Priority 0 is never handed leadership.
    let refused = cluster.nodes[0].client().post_json("/cluster/transfer-leader?to=n3", &json!({})).expect("node answers");
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body.to_string().contains("priority 0"), "{}", refused.body);

    // n1 dies: n2 takes over (n3 never campaigns), and writes go on through it.
    cluster.nodes[0].kill();
    live[0] = false;
    let mut acknowledged = Vec::new();
    let mut next = 1;
    let mut took_over = None;
    eventually(LONG, "a leader after n1 died", || {
        took_over = leader_index(&cluster, &live);
        took_over.is_some()
    });
    assert_eq!(took_over, Some(1), "n2 leads: n3 has priority 0");
    for _ in 0..20 {
        assert_written(&insert(&cluster.nodes[1], next, "majority"), "a write while n1 is down");
        acknowledged.push(next);
        next += 1;
    }

    // n1 comes back: leadership returns to it by itself, and no acknowledged write is lost.
    cluster.nodes[0].start();
    live[0] = true;
    let back = Instant::now();
    eventually(LONG, "leadership to return to n1", || {
        // Keep writing through whoever leads, as clients would.
        if let Some(index) = leader_index(&cluster, &live) {
            if insert(&cluster.nodes[index], next, "majority").status == 200 {
                acknowledged.push(next);
                next += 1;
            }
        }
        leader_index(&cluster, &live) == Some(0)
    });
    println!("leadership returned to n1 {:?} after its restart", back.elapsed());
    let mut client = cluster.nodes[0].client();
    let held = rows(&query(&mut client, "SELECT id FROM orders ORDER BY id", "level=strong"));
    let held: Vec<u64> = held.iter().filter_map(|row| row[0].as_u64()).collect();
    for id in &acknowledged {
        assert!(held.contains(id), "acknowledged write {id} is missing after leadership returned; held {held:?}");
    }
    assert!(acknowledged.len() >= 20, "writes went on");
}
