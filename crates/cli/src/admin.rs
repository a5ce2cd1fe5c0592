//! `tern cluster`: membership changes and leadership transfer, sent to the leader over
//! HTTP, waiting (with progress) until the change has taken effect.

use clap::Subcommand;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tern_server::client::HttpClient;

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Show the members: each one's part (voter, non-voter, learner), leader priority,
    /// region, and how far it is behind the leader.
    Show {
        /// HTTP address of any node.
        #[arg(long, default_value = "127.0.0.1:4001")]
        http: String,
    },
    /// Add a node: start it first with `tern server --join`. It catches up as a learner,
    /// then the leader promotes it to voter; this waits for that (or --wait-s). A node
    /// started with `--join --non-voters ITS_ID` stays a non-voting replica: this waits
    /// until it has caught up.
    Add {
        /// HTTP address of any node; the request goes to the leader.
        #[arg(long, default_value = "127.0.0.1:4001")]
        http: String,
        /// Id of the new node (its --id).
        #[arg(long)]
        id: String,
        /// Its peer address (its --peer).
        #[arg(long)]
        addr: String,
        /// Give up waiting for the promotion after this many seconds (the change goes on).
        #[arg(long, default_value_t = 120)]
        wait_s: u64,
    },
    /// Remove a member. The leader cannot remove itself: transfer leadership first.
    /// Stop the removed node afterwards; it is not told.
    Remove {
        /// HTTP address of any node; the request goes to the leader.
        #[arg(long, default_value = "127.0.0.1:4001")]
        http: String,
        /// Id of the member to remove.
        #[arg(long)]
        id: String,
        /// Give up waiting for the removal after this many seconds.
        #[arg(long, default_value_t = 30)]
        wait_s: u64,
    },
    /// Hand leadership to another member (writes pause until it has caught up).
    TransferLeader {
        /// HTTP address of any node; the request goes to the leader.
        #[arg(long, default_value = "127.0.0.1:4001")]
        http: String,
        /// Id of the member that should lead.
        #[arg(long)]
        to: String,
    },
}

pub fn run_cluster(command: ClusterCommand) -> Result<(), String> {
    match command {
        ClusterCommand::Show { http } => show(&http),
        ClusterCommand::Add { http, id, addr, wait_s } => add(&http, &id, &addr, Duration::from_secs(wait_s)),
        ClusterCommand::Remove { http, id, wait_s } => remove(&http, &id, Duration::from_secs(wait_s)),
        ClusterCommand::TransferLeader { http, to } => transfer_leader(&http, &to),
    }
}

/// `GET path` on the node at `http`: the JSON body of a 200, else what went wrong.
pub(crate) fn get(http: &str, path: &str) -> Result<Value, String> {
    let reply = HttpClient::new(http).with_env_credentials().get(path).map_err(|error| format!("cannot reach {http}: {error}"))?;
    if reply.status != 200 {
        return Err(format!("{http} answered {}: {}", reply.status, reply.body));
    }
    Ok(reply.body)
}

/// The HTTP address of the leader, asked of the node at `http`.
fn leader_http(http: &str) -> Result<String, String> {
    let status = get(http, "/status")?;
    let node = &status["node"];
    if node["role"] == "leader" {
        return Ok(http.to_string());
    }
    let leader = node["leader"].as_str().ok_or_else(|| "no leader is known right now (an election is under way): retry".to_string())?;
    let nodes = get(http, "/nodes")?;
    let api = nodes[leader]["api_addr"].as_str().ok_or_else(|| format!("the HTTP address of leader {leader} is not known yet"))?;
    Ok(api.trim_start_matches("http://").to_string())
}

/// Posts to the leader; the reply body, or the leader's error. While an election is
/// under way (no leader known, or a 503 from a node that just stopped leading), it asks
/// again for up to 15 s.
fn post_to_leader(http: &str, path: &str) -> Result<(String, Value), String> {
    post_json_to_leader(http, path, &json!({}))
}

/// [`post_to_leader`] with a JSON body.
pub(crate) fn post_json_to_leader(http: &str, path: &str, body: &Value) -> Result<(String, Value), String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match post_to_leader_once(http, path, body) {
            Err(error) if (error.contains("(503)") || error.contains("no leader is known")) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(250));
            }
            outcome => return outcome,
        }
    }
}

fn post_to_leader_once(http: &str, path: &str, body: &Value) -> Result<(String, Value), String> {
    let leader = leader_http(http)?;
    let reply =
        HttpClient::new(&leader).with_env_credentials().post_json(path, body).map_err(|error| format!("cannot reach the leader at {leader}: {error}"))?;
    if reply.status != 200 {
        let message = reply.body["error"].as_str().map_or_else(|| reply.body.to_string(), str::to_string);
        return Err(format!("the leader at {leader} refused ({}): {message}", reply.status));
    }
    Ok((leader, reply.body))
}

fn show(http: &str) -> Result<(), String> {
    // The leader knows how far everyone has got; any node knows the membership.
    let cluster = leader_http(http).and_then(|leader| get(&leader, "/cluster")).or_else(|_| get(http, "/cluster"))?;
    println!(
        "leader {} (epoch {}){}",
        cluster["leader"].as_str().unwrap_or("unknown"),
        cluster["epoch"],
        if cluster["change_pending"] == true { ", a membership change is under way" } else { "" }
    );
    let leader_last = cluster["leader_last_index"].as_u64();
    for member in cluster["members"].as_array().into_iter().flatten() {
        let behind = match (leader_last, member["applied_index"].as_u64()) {
            (Some(last), Some(applied)) => format!("{} entries behind", last.saturating_sub(applied)),
            _ => String::new(),
        };
        let leads = if cluster["leader"] == member["id"] { "leader" } else { "" };
        let priority = member["leader_priority"].as_u64().map_or_else(|| "priority ?".to_string(), |priority| format!("priority {priority}"));
        println!(
            "  {:<12} {:<6} {:<9} {:<10} {:<22} {:<12} {}",
            member["id"].as_str().unwrap_or("?"),
            leads,
            member["member"].as_str().unwrap_or(if member["voter"] == true { "voter" } else { "learner" }),
            priority,
            member["addr"].as_str().unwrap_or("?"),
            member["region"].as_str().unwrap_or(""),
            behind
        );
    }
    Ok(())
}

/// Polls the leader's `/cluster` until `done` says so, printing each new state.
fn wait_for(http: &str, wait: Duration, what: &str, done: impl Fn(&Value) -> Option<String>) -> Result<(), String> {
    let started = Instant::now();
    let mut said = String::new();
    loop {
        if let Ok(cluster) = leader_http(http).and_then(|leader| get(&leader, "/cluster")) {
            match done(&cluster) {
                None => return Ok(()),
                Some(progress) if progress != said => {
                    println!("  {progress}");
                    said = progress;
                }
                Some(_) => {}
            }
        }
        if started.elapsed() > wait {
            return Err(format!("{what} has not happened after {} s; the change goes on: watch `tern cluster show`", wait.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn add(http: &str, id: &str, addr: &str, wait: Duration) -> Result<(), String> {
    let (leader, _) = post_to_leader(http, &format!("/cluster/add?id={id}&addr={addr}"))?;
    println!("{id} added as a learner by the leader at {leader}; it catches up, then becomes a voter (or, started with --non-voters {id}, stays a non-voter)");
    wait_for(http, wait, &format!("the promotion of {id} (or, for a non-voter, its catching up)"), |cluster| {
        let settled = cluster["change_pending"] == false;
        if settled && cluster["voters"].as_array().is_some_and(|voters| voters.iter().any(|voter| voter == id)) {
            return None;
        }
        let member = cluster["members"].as_array().and_then(|members| members.iter().find(|member| member["id"] == id).cloned());
        // A non-voter is never promoted: done once it is in sync (it held the whole log
        // and keeps acknowledging; a far one is always a round trip behind).
        if settled && member.as_ref().is_some_and(|member| member["member"] == "non-voter" && member["in_sync"] == true) {
            return None;
        }
        Some(match (member, cluster["leader_last_index"].as_u64()) {
            (Some(member), Some(last)) => match member["applied_index"].as_u64() {
                Some(applied) => format!("{id}: learner, {} of {last} entries", applied.min(last)),
                None => format!("{id}: learner, not heard from yet"),
            },
            _ => format!("{id}: waiting for the membership change to apply"),
        })
    })?;
    let cluster = leader_http(http).and_then(|leader| get(&leader, "/cluster"))?;
    let non_voter = cluster["members"].as_array().into_iter().flatten().any(|member| member["id"] == id && member["member"] == "non-voter");
    println!("{id} is {}", if non_voter { "a non-voting replica, caught up (it is never promoted)" } else { "a voter" });
    Ok(())
}

fn remove(http: &str, id: &str, wait: Duration) -> Result<(), String> {
    let (leader, _) = post_to_leader(http, &format!("/cluster/remove?id={id}"))?;
    println!("the leader at {leader} is removing {id}");
    wait_for(http, wait, &format!("the removal of {id}"), |cluster| {
        // Not listed by a leader that has applied everything: the removal is committed.
        let listed = cluster["members"].as_array().is_some_and(|members| members.iter().any(|member| member["id"] == id));
        (listed || cluster["change_pending"] != false).then(|| format!("{id}: waiting for a quorum to agree"))
    })?;
    println!("{id} is no longer a member; stop it (it is not told)");
    Ok(())
}

fn transfer_leader(http: &str, to: &str) -> Result<(), String> {
    let (_, body) = post_to_leader(http, &format!("/cluster/transfer-leader?to={to}"))?;
    println!("leadership is moving from {} to {to}; writes pause until it leads", body["from"].as_str().unwrap_or("?"));
    Ok(())
}
