//! Memory on real processes: a leader's resident memory while one follower is paused
//! under a heavy write load. A test binary of its own, so its 32 writers do not starve
//! the failover tests that would otherwise run beside it.

mod support;

use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

const LONG: Duration = Duration::from_secs(60);

/// The leader's resident memory, sampled while 32 clients write and one follower is
/// SIGSTOPped for 60 s (its socket buffers fill, the leader keeps resending its window):
/// it must stay under `RSS_BOUND`, and the follower must catch up after SIGCONT.
#[test]
fn leader_memory_stays_bounded_while_a_follower_is_paused_under_load() {
    const RSS_BOUND: u64 = 384 << 20;
    let pause = Duration::from_secs(std::env::var("TERN_RSS_PAUSE_SECS").ok().and_then(|secs| secs.parse().ok()).unwrap_or(60));
    let cluster = start_with_ledger("rss-paused-follower", &["--failover", "off"]);
    let leader = &cluster.nodes[0];
    let paused = &cluster.nodes[2];
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(0u64));
    let writers: Vec<_> = (0..32u64)
        .map(|writer| {
            let (stop, acknowledged, address) = (stop.clone(), acknowledged.clone(), leader.http.clone());
            std::thread::spawn(move || {
                let mut client = tern_server::client::HttpClient::new(&address).with_timeout(Duration::from_secs(10));
                let mut id = writer * 100_000_000 + 1;
                // 1 KiB values: the follower's backlog grows fast.
                let value = "v".repeat(1024);
                while !stop.load(Ordering::Relaxed) {
                    let statement = json!([["INSERT INTO ledger (id, v) VALUES (?, ?)", id, value]]);
                    if client.post_json("/db/execute", &statement).is_ok_and(|reply| reply.status == 200) {
                        *acknowledged.lock().unwrap() += 1;
                    }
                    id += 1;
                }
            })
        })
        .collect();
    let baseline = leader.rss_bytes().expect("leader RSS readable");
    paused.signal("STOP");
    let started = Instant::now();
    let mut peak = baseline;
    while started.elapsed() < pause {
        std::thread::sleep(Duration::from_millis(500));
        peak = peak.max(leader.rss_bytes().unwrap_or(0));
    }
    let during = *acknowledged.lock().unwrap();
    let queues: Vec<String> = leader.client().get("/status").unwrap().body["replication"]["followers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|follower| format!("{}: {} bytes queued, {} frames dropped", follower["id"], follower["queued_bytes"], follower["dropped_frames"]))
        .collect();
    eprintln!("leader's peer queues at the end of the pause: {}", queues.join("; "));
    paused.signal("CONT");
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.join().unwrap();
    }
    let leader_count = count(&mut leader.client(), "SELECT count(*) FROM ledger", "level=none");
    eventually(LONG * 2, "the paused follower to catch up after SIGCONT", || {
        count(&mut paused.client(), "SELECT count(*) FROM ledger", "level=none") == leader_count
    });
    eprintln!(
        "leader RSS: {} MiB before the pause, peak {} MiB over a {pause:?} pause of one follower under 32 writers ({during} writes acknowledged, {leader_count} rows); bound {} MiB",
        baseline >> 20,
        peak >> 20,
        RSS_BOUND >> 20
    );
    assert!(during > 0, "writes went on while one follower was paused");
    assert!(peak < RSS_BOUND, "leader RSS peaked at {} MiB, over the {} MiB bound\n{}", peak >> 20, RSS_BOUND >> 20, cluster.logs());
}
