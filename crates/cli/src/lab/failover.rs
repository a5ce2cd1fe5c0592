//! The second half of claim 5 of the issue: failover time, and how it grows with the
//! distance between replicas. Real processes, one per region, on tern's emulated WAN.

use super::plot::Plot;
use super::{Finding, Scale};
use crate::bench::time_a_failover;
use crate::bench_geo::REGIONS;
use crate::cluster::{scratch_dir, start_processes_in_regions, wait_ready};
use crate::stats::Samples;
use serde_json::json;
use std::time::Duration;
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
