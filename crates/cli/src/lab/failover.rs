//! Nodes dying, on real processes, one per region, on tern's emulated WAN: the leader
//! (the second half of claim 5 of the issue: failover time, and how it grows with the
//! distance between replicas) and a follower (the second half of claim 3: what each ack
//! mode does with writes while it is down).

use super::plot::Plot;
use super::{Finding, Scale};
use crate::bench::time_a_failover;
use crate::bench_geo::REGIONS;
use crate::cluster::{scratch_dir, start_processes_in_regions, wait_ready};
use crate::stats::Samples;
use serde_json::json;
use std::time::{Duration, Instant};
use tern_server::client::HttpClient;

/// The election tick every latency runs with (tern bench --geo's): 10 ticks without a
/// leader start an election.
const ELECTION_TICK_MS: u64 = 60;

/// The kill-to-first-acknowledged-write times of `rounds` failovers with every pair of
/// regions `one_way_ms` apart.
fn failovers(one_way_ms: u64, rounds: usize) -> Result<Samples, String> {
    let wan = format!("us-east:eu-west={one_way_ms},us-east:antarctica={one_way_ms},eu-west:antarctica={one_way_ms}");
    let data_dir = scratch_dir("lab-failover")?;
    let extra: Vec<String> =
        ["--wan", &wan, "--election-tick-ms", &ELECTION_TICK_MS.to_string(), "--ack", "semi-sync"].iter().map(|arg| arg.to_string()).collect();
    let mut processes = start_processes_in_regions(&REGIONS, false, &data_dir, &extra)?;
    let addresses: Vec<String> = processes.iter().map(|process| process.http.clone()).collect();
    let measured = (|| {
        wait_ready(&addresses, Duration::from_secs(30))?;
        let created = HttpClient::new(&addresses[0])
            .post_json("/db/execute?w=all", &json!(["CREATE TABLE ticks (id INTEGER PRIMARY KEY)"]))
            .map_err(|error| format!("cannot create the table: {error}"))?;
        if created.status != 200 {
            return Err(format!("cannot create the table: {}", created.body));
        }
        let mut next = 0u64;
        let mut samples = Samples::default();
        for _ in 0..rounds {
            // Long enough for a forwarded write's two round trips, short enough that an
            // attempt stuck behind the dead leader does not hide when the new one took over.
            let attempt_timeout = Duration::from_millis(300 + 6 * one_way_ms);
            let (_, took) = time_a_failover(&mut processes, &addresses, Duration::from_millis(500), attempt_timeout, |client| {
                next += 1;
                client
                    .post_json("/db/execute", &json!([["INSERT INTO ticks VALUES (?)", next]]))
                    .is_ok_and(|reply| reply.status == 200 && reply.body["results"][0]["error"].is_null())
            })?;
            samples.push(took);
        }
        Ok(samples)
    })();
    drop(processes);
    let _ = std::fs::remove_dir_all(&data_dir);
    measured
}

pub fn failover_over_the_wan(scale: &Scale) -> Result<Finding, String> {
    let latencies: Vec<u64> = if scale.quick { vec![0, 100] } else { vec![0, 25, 50, 100] };
    let rounds = scale.pick(1, 3);
    let mut medians = Vec::new();
    let mut rows = Vec::new();
    for &one_way in &latencies {
        let samples = failovers(one_way, rounds)?;
        let ms = |percent: f64| samples.percentile(percent).map_or(0.0, |took| took.as_secs_f64() * 1000.0);
        medians.push(ms(50.0));
        rows.push(vec![one_way.to_string(), (2 * one_way).to_string(), format!("{:.0}", ms(50.0)), format!("{:.0} – {:.0}", ms(0.0), ms(100.0))]);
    }
    let (near, far) = (medians[0], medians[medians.len() - 1]);
    let farthest = latencies[latencies.len() - 1] as f64;
    // The new leader needs at least a vote and a write's round trip across the WAN more.
    let holds = far >= near + 2.0 * farthest;
    let verdict = format!(
        "from the kill to the first acknowledged write: {near:.0} ms with the regions on one machine's loopback, {far:.0} ms with them \
         {farthest:.0} ms apart one way"
    );
    Ok(Finding {
        setup: format!(
            "Real `tern server` processes on this machine, one per region (us-east, eu-west, antarctica), with tern's emulated WAN \
             putting every pair of regions the same one-way latency apart; semi-sync, election tick {ELECTION_TICK_MS} ms (an election \
             after {} ms without a leader), the same at every latency. A client writes to the leader for 0.5 s, the leader is \
             SIGKILLed, and the client tries every node in turn (each forwards to the leader it knows; an attempt is given up \
             after 300 ms plus 6 one-way latencies) until a write is acknowledged. {rounds} kill(s) per latency; the killed node restarts between them.",
            10 * ELECTION_TICK_MS
        ),
        headers: vec!["one-way latency ms", "round trip ms", "failover p50 ms", "min – max ms"],
        rows,
        plots: vec![Plot {
            title: "Failover time as the replicas move apart".to_string(),
            x_label: "one-way latency between regions (ms)".to_string(),
            y_label: "kill to first acknowledged write (ms)".to_string(),
            cases: latencies.iter().map(u64::to_string).collect(),
            series: vec![("failover p50".to_string(), medians)],
        }],
        holds,
        verdict: if holds { verdict } else { format!("{verdict}: not even a round trip longer") },
        not_measured: None,
    })
}

/// What one ack mode did while a follower was down.
struct FollowerDown {
    acknowledged: usize,
    failed: usize,
    /// The longest time without an acknowledged write, from the kill on.
    longest_stall: Duration,
    latency: Samples,
}

/// Writes one row at a time to the leader; `down_for` after the first `before`, the
/// follower nearest the leader is SIGKILLed (and stays down).
fn follower_down(ack: &str, w: Option<&str>, before: Duration, down_for: Duration) -> Result<FollowerDown, String> {
    use super::real::{post, Cluster};
    let mut cluster = Cluster::start("lab-follower-down", ack, &[])?;
    let leader = cluster.leader()?;
    let mut client = cluster.client(leader);
    post(&mut client, "/db/execute?w=all", &json!(["CREATE TABLE ticks (id INTEGER PRIMARY KEY)"]))?;
    // The follower nearest the leader: semi-sync then waits for the far one instead.
    let wan = tern_server::WanLatency::parse(super::real::WAN)?;
    let nearest = (0..REGIONS.len()).filter(|node| *node != leader).min_by_key(|node| wan.one_way(REGIONS[leader], REGIONS[*node])).unwrap_or(0);
    // A write waits at most 3 s for its copies, then is answered 503 (outcome unknown).
    let path = format!("/db/execute?timeout=3s{}", w.map_or(String::new(), |w| format!("&w={w}")));
    let started = Instant::now();
    let mut killed_at = None;
    let mut figures = FollowerDown { acknowledged: 0, failed: 0, longest_stall: Duration::ZERO, latency: Samples::default() };
    let mut last_ack = started;
    for id in 1u64.. {
        let now = Instant::now();
        if killed_at.is_none() && now >= started + before {
            cluster.processes[nearest].kill();
            killed_at = Some(now);
            last_ack = now;
        }
        let Some(killed) = killed_at else {
            post(&mut client, &path, &json!([["INSERT INTO ticks VALUES (?)", id]]))?;
            continue;
        };
        if now >= killed + down_for {
            break;
        }
        let ok = post(&mut client, &path, &json!([["INSERT INTO ticks VALUES (?)", id]])).is_ok();
        let answered = Instant::now();
        if ok {
            figures.acknowledged += 1;
            figures.latency.push(answered - now);
            figures.longest_stall = figures.longest_stall.max(answered - last_ack);
            last_ack = answered;
        } else {
            figures.failed += 1;
        }
    }
    figures.longest_stall = figures.longest_stall.max(Instant::now() - last_ack);
    Ok(figures)
}

pub fn writes_while_a_follower_is_down(scale: &Scale) -> Result<Finding, String> {
    let before = Duration::from_secs(1);
    let down_for = Duration::from_secs(scale.pick(3, 6) as u64);
    let cases = [("async", "async", None), ("semi-sync", "semi-sync", None), ("sync", "sync", None), ("w=all", "semi-sync", Some("all"))];
    let mut measured = Vec::new();
    for (_, ack, w) in cases {
        measured.push(follower_down(ack, w, before, down_for)?);
    }
    let stall_ms = |figures: &FollowerDown| figures.longest_stall.as_secs_f64() * 1000.0;
    let rows = cases
        .iter()
        .zip(&measured)
        .map(|((name, _, _), figures)| {
            vec![
                format!("`{name}`"),
                figures.acknowledged.to_string(),
                figures.failed.to_string(),
                format!("{:.0}", stall_ms(figures)),
                figures.latency.percentile(50.0).map_or("-".to_string(), crate::stats::millis),
            ]
        })
        .collect();
    let [none, semi, sync, all] = [&measured[0], &measured[1], &measured[2], &measured[3]];
    // Async and semi-sync go on (no failure, no stall longer than a few round trips); sync
    // stalls until the dead follower leaves its in-sync set (1 s) and then goes on; w=all
    // completes nothing.
    let holds = none.failed + semi.failed + sync.failed == 0
        && stall_ms(none).max(stall_ms(semi)) < 500.0
        && stall_ms(sync) >= 800.0
        && sync.acknowledged > 0
        && all.acknowledged == 0;
    let verdict = format!(
        "with a follower down, async and semi-sync writes went on (longest pause {:.0} and {:.0} ms); sync writes stopped for {:.0} ms, \
         until the dead follower left the in-sync set, then went on; writes asking for every node (w=all) completed {} of {}",
        stall_ms(none),
        stall_ms(semi),
        stall_ms(sync),
        all.acknowledged,
        all.acknowledged + all.failed
    );
    Ok(Finding {
        setup: format!(
            "{} Per case a fresh cluster; a client beside the leader writes one row at a time, each write waiting at most 3 s for \
             its copies (`timeout=3s`, then answered 503, outcome unknown). After {} s the follower nearest the leader is SIGKILLed \
             and stays down; the table covers the {} s after the kill. A follower silent for 1 s leaves the in-sync set \
             (`--in-sync-timeout-ms`, the default).",
            super::real::REAL_SETUP,
            before.as_secs(),
            down_for.as_secs()
        ),
        headers: vec!["writes wait for", "acknowledged after the kill", "failed (timed out)", "longest pause ms", "latency p50 ms"],
        rows,
        plots: vec![Plot {
            title: "Writes acknowledged while a follower is down".to_string(),
            x_label: "what a write waits for".to_string(),
            y_label: format!("writes acknowledged in {} s", down_for.as_secs()),
            cases: cases.iter().map(|(name, _, _)| name.to_string()).collect(),
            series: vec![("acknowledged".to_string(), measured.iter().map(|figures| figures.acknowledged as f64).collect())],
        }],
        holds,
        verdict,
        not_measured: None,
    })
}
