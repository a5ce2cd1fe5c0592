//! `tern bench --geo`: the same three regions on an emulated WAN, run as single-leader
//! (semi-sync, leader in us-east) and then as multi-leader, each as real `tern server`
//! processes: write latency per region (each region's clients write to their own
//! region's node), the delay from a write's acknowledgement to it being readable in each
//! other region (a session read with the write's position or token), and the throughput
//! with every region writing. Ratios between the two are printed beside the figures.
//! Then, on the multi-leader cluster, home regions: a write from each region to a row
//! homed in each region (local, or sent to its home), and the duration of a move.
//! Last, leader placement under single-leader: us-east clients' write latency with the
//! three voters spread over the regions, against three voters in us-east and permanent
//! non-voters in eu-west and antarctica, and what the far non-voters serve locally.

use crate::cluster::{scratch_dir, start_processes_in_regions, wait_ready};
use crate::stats::Samples;
use serde_json::json;
use std::time::{Duration, Instant};
use tern_server::client::{encode_query_value, HttpClient};

pub(crate) const REGIONS: [&str; 3] = ["us-east", "eu-west", "antarctica"];

/// What one topology measured.
pub(crate) struct GeoResult {
    name: &'static str,
    /// Write latencies of each region's clients (the order of `REGIONS`).
    pub(crate) writes: Vec<Samples>,
    delays: Vec<Samples>,
    throughput: f64,
    pub(crate) errors: u64,
    /// Multi-leader only: home regions' figures.
    homes: Option<HomeFigures>,
}

/// Home regions, measured on the multi-leader cluster.
struct HomeFigures {
    /// Per client region, per home region: the latency of a write to a row homed there.
    writes: Vec<Vec<Samples>>,
    /// Per ordered pair of regions (`pairs()`): a move from the first to the second,
    /// asked of the second, answered once every region holds it.
    moves: Vec<Samples>,
}

/// Writes per (client region, home region) cell, and moves per pair of regions.
const HOME_WRITES: usize = 20;
const HOME_MOVES: usize = 4;

pub fn run(wan: &str, clients: usize, duration: Duration) -> Result<(), String> {
    tern_server::WanLatency::parse(wan)?;
    println!(
        "tern bench --geo: 3 tern server processes in us-east, eu-west and antarctica (one-way WAN {wan} ms), {clients} client(s) per \
         region writing to their own region's node, {} s per topology",
        duration.as_secs()
    );
    let single = measure("single-leader", wan, clients, duration, true)?;
    let multi = measure("multi-leader", wan, clients, duration, true)?;
    println!("\nwrite latency p50/p99 in ms, per region:");
    println!("  {:<15}{:>16}{:>16}{:>16}", "topology", REGIONS[0], REGIONS[1], REGIONS[2]);
    for result in [&single, &multi] {
        print!("  {:<15}", result.name);
        for samples in &result.writes {
            print!("{:>16}", samples.p50_p99());
        }
        println!();
    }
    print!("  {:<15}", "ratio of p50s");
    for (one, many) in single.writes.iter().zip(&multi.writes) {
        let ratio = match (one.percentile(50.0), many.percentile(50.0)) {
            (Some(one), Some(many)) if !many.is_zero() => format!("{:.1}x", one.as_secs_f64() / many.as_secs_f64()),
            _ => "-".to_string(),
        };
        print!("{ratio:>16}");
    }
    println!();
    let latency = tern_server::WanLatency::parse(wan)?;
    println!("\nwrite acknowledged in a region -> readable in another, p50/p99 in ms:");
    println!("  {:<26}{:>12}{:>16}{:>16}", "from -> to", "one-way WAN", single.name, multi.name);
    for (pair, ((from, to), one)) in pairs().into_iter().zip(&single.delays).enumerate() {
        let many = &multi.delays[pair];
        let one_way = latency.one_way(REGIONS[from], REGIONS[to]).as_millis();
        println!("  {:<26}{:>12}{:>16}{:>16}", format!("{} -> {}", REGIONS[from], REGIONS[to]), one_way, one.p50_p99(), many.p50_p99());
    }
    println!("\nthroughput with every region writing:");
    for result in [&single, &multi] {
        println!("  {:<15}{:>10.0} writes/s   ({} errors)", result.name, result.throughput, result.errors);
    }
    if single.throughput > 0.0 {
        println!("  {:<15}{:>10.1}x", "ratio", multi.throughput / single.throughput);
    }
    if let Some(homes) = &multi.homes {
        print_homes(homes, &latency);
    }
    measure_placement(wan, clients, duration)
}

/// The two layouts of leader placement, by node: its region; `--non-voters` for the last.
const SPREAD_VOTERS: [&str; 3] = ["us-east", "eu-west", "antarctica"];
const HOME_VOTERS: [&str; 5] = ["us-east", "us-east", "us-east", "eu-west", "antarctica"];

/// Writes from us-east clients at `w=majority` and `w=all` with far voters, then with far
/// non-voters; local reads and replication delay in antarctica with the non-voters.
fn measure_placement(wan: &str, clients: usize, duration: Duration) -> Result<(), String> {
    println!(
        "
  leader placement: measuring 3 voters spread over the regions, then 3 voters in us-east with 2 far non-voters..."
    );
    let half = duration / 2;
    let mut rows = Vec::new();
    for (layout, regions, non_voters) in
        [("3 voters, one per region", &SPREAD_VOTERS[..], None), ("3 voters in us-east + 2 far non-voters", &HOME_VOTERS[..], Some("n4,n5"))]
    {
        let data_dir = scratch_dir("bench-geo-placement")?;
        let mut extra: Vec<String> = ["--wan", wan, "--election-tick-ms", "60", "--ack", "semi-sync"].iter().map(|arg| arg.to_string()).collect();
        if let Some(non_voters) = non_voters {
            extra.extend(["--non-voters".to_string(), non_voters.to_string()]);
        }
        let processes = start_processes_in_regions(regions, false, &data_dir, &extra)?;
        let addresses: Vec<String> = processes.iter().map(|process| process.http.clone()).collect();
        wait_ready(&addresses, Duration::from_secs(30))?;
        let create = json!(["CREATE TABLE bench (id TEXT PRIMARY KEY, v TEXT NOT NULL)"]);
        let reply = HttpClient::new(&addresses[0]).post_json("/db/execute?w=all", &create).map_err(|error| format!("placement: {error}"))?;
        if reply.status != 200 {
            return Err(format!("placement: cannot create the bench table: {}", reply.body));
        }
        let mut figures = Vec::new();
        for w in ["majority", "all"] {
            let warmup_end = Instant::now() + Duration::from_millis(500);
            let end = warmup_end + half;
            let writers: Vec<_> = (0..clients)
                .map(|client| {
                    let address = addresses[0].clone();
                    std::thread::spawn(move || write_load(&address, &format!("/db/execute?w={w}"), &format!("{w}-{client}"), warmup_end, end))
                })
                .collect();
            let mut samples = Samples::default();
            for writer in writers {
                samples.extend(writer.join().map_err(|_| "a bench client panicked".to_string())?.0);
            }
            figures.push(samples);
        }
        let far = (non_voters.is_some()).then(|| far_reads(&addresses[0], addresses.last().expect("five nodes")));
        rows.push((layout, figures, far));
        drop(processes);
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    println!(
        "
leader placement (single-leader, {clients} client(s) in us-east writing to the leader there), write p50/p99 in ms:"
    );
    println!("  {:<42}{:>16}{:>16}", "voters", "w=majority", "w=all");
    for (layout, figures, _) in &rows {
        println!("  {:<42}{:>16}{:>16}", layout, figures[0].p50_p99(), figures[1].p50_p99());
    }
    print!("  {:<42}", "ratio of p50s (spread / in us-east)");
    for column in 0..2 {
        let ratio = match (rows[0].1[column].percentile(50.0), rows[1].1[column].percentile(50.0)) {
            (Some(spread), Some(home)) if !home.is_zero() => format!("{:.1}x", spread.as_secs_f64() / home.as_secs_f64()),
            _ => "-".to_string(),
        };
        print!("{ratio:>16}");
    }
    println!();
    if let Some((_, _, Some((reads, delays)))) = rows.get(1) {
        println!("  with the non-voters: a local read in antarctica (level=none) {} ms p50/p99;", reads.p50_p99());
        println!("  a write acknowledged in us-east is readable in antarctica after {} ms p50/p99 (one-way WAN 75 ms)", delays.p50_p99());
    }
    Ok(())
}

/// On the far non-voter: local reads, and how long after a leader's acknowledgement a
/// write is readable there (a session read with the write's position).
fn far_reads(leader: &str, far: &str) -> (Samples, Samples) {
    let (mut reads, mut delays) = (Samples::default(), Samples::default());
    let mut far_client = HttpClient::new(far).with_timeout(Duration::from_secs(10));
    let mut leader_client = HttpClient::new(leader).with_timeout(Duration::from_secs(10));
    let read = format!("/db/query?level=none&q={}", encode_query_value("SELECT COUNT(*) FROM bench"));
    for round in 0..40 {
        let started = Instant::now();
        if far_client.get(&read).is_ok_and(|reply| reply.status == 200) {
            reads.push(started.elapsed());
        }
        let body = json!([["INSERT INTO bench VALUES (?, 'probe')", format!("far-probe-{round}")]]);
        let Ok(reply) = leader_client.post_json("/db/execute", &body) else { continue };
        let acknowledged = Instant::now();
        let Some(after) = reply.body["position"].as_str() else { continue };
        let path = format!("/db/query?level=session&after={}&timeout=10s&q={}", encode_query_value(after), encode_query_value("SELECT 1"));
        if far_client.get(&path).is_ok_and(|reply| reply.status == 200) {
            delays.push(acknowledged.elapsed());
        }
    }
    (reads, delays)
}

fn print_homes(homes: &HomeFigures, latency: &tern_server::WanLatency) {
    println!(
        "
home regions (multi-leader): a write from a region (row) to a row homed in a region (column), p50/p99 in ms:"
    );
    println!("  {:<15}{:>16}{:>16}{:>16}", "written from", REGIONS[0], REGIONS[1], REGIONS[2]);
    for (from, cells) in homes.writes.iter().enumerate() {
        print!("  {:<15}", REGIONS[from]);
        for cell in cells {
            print!("{:>16}", cell.p50_p99());
        }
        println!();
    }
    println!(
        "
a move (made at the old home, answered once every region holds it), asked in the new home, p50/p99 in ms:"
    );
    println!("  {:<26}{:>12}{:>16}", "old home -> new home", "one-way WAN", "move");
    for ((from, to), samples) in pairs().into_iter().zip(&homes.moves) {
        let one_way = latency.one_way(REGIONS[from], REGIONS[to]).as_millis();
        println!("  {:<26}{:>12}{:>16}", format!("{} -> {}", REGIONS[from], REGIONS[to]), one_way, samples.p50_p99());
    }
}

/// Home regions on a running multi-leader cluster: a table homed by a column, one row
/// homed in each region; each region writes every row (its own locally, the others'
/// sent to their home), then rows are moved between every pair of regions.
fn measure_homes(addresses: &[String]) -> Result<HomeFigures, String> {
    let post = |address: &str, path: &str, body: &serde_json::Value| -> Result<serde_json::Value, String> {
        let reply = HttpClient::new(address).with_timeout(Duration::from_secs(30)).post_json(path, body).map_err(|error| format!("homes: {error}"))?;
        let failed = reply.status != 200 || reply.body["results"].as_array().into_iter().flatten().any(|result| !result["error"].is_null());
        if failed {
            return Err(format!("homes: {path} answered {}: {}", reply.status, reply.body));
        }
        Ok(reply.body)
    };
    post(&addresses[0], "/db/execute?w=regions:all", &json!(["CREATE TABLE accounts (id INTEGER PRIMARY KEY, home TEXT, v INTEGER NOT NULL)"]))?;
    post(&addresses[0], "/db/homes/rule", &json!({"table": "accounts", "column": "home"}))?;
    for (home, address) in addresses.iter().enumerate() {
        post(address, "/db/execute?w=regions:all", &json!([["INSERT INTO accounts VALUES (?, ?, 0)", home, REGIONS[home]]]))?;
    }
    println!("  multi-leader: measuring home regions...");
    let writers: Vec<_> = addresses
        .iter()
        .map(|address| {
            let address = address.clone();
            std::thread::spawn(move || {
                let mut client = HttpClient::new(&address).with_timeout(Duration::from_secs(30));
                (0..REGIONS.len())
                    .map(|home| {
                        let mut samples = Samples::default();
                        for _ in 0..HOME_WRITES {
                            let started = Instant::now();
                            let body = json!([["UPDATE accounts SET v = v + 1 WHERE id = ?", home]]);
                            if client.post_json("/db/execute", &body).is_ok_and(|reply| reply.status == 200 && reply.body["results"][0]["error"].is_null()) {
                                samples.push(started.elapsed());
                            }
                        }
                        samples
                    })
                    .collect::<Vec<Samples>>()
            })
        })
        .collect();
    let writes = writers.into_iter().map(|writer| writer.join().map_err(|_| "a home writer panicked".to_string())).collect::<Result<_, _>>()?;
    // Row 0 moves around: each move from its home of the moment to the next region.
    let mut moves: Vec<Samples> = pairs().iter().map(|_| Samples::default()).collect();
    for _ in 0..HOME_MOVES {
        for (pair, (from, to)) in pairs().into_iter().enumerate() {
            post(&addresses[0], "/db/homes/move", &json!({"table": "accounts", "key": [0], "to": REGIONS[from]}))?;
            let started = Instant::now();
            post(&addresses[to], "/db/homes/move", &json!({"table": "accounts", "key": [0], "to": REGIONS[to]}))?;
            moves[pair].push(started.elapsed());
        }
    }
    Ok(HomeFigures { writes, moves })
}

/// Runs `name` ("single-leader" or "multi-leader") as 3 processes in `REGIONS` on the
/// emulated WAN, `clients` writers per region for `duration`; `homes`: then home
/// regions' figures too (multi-leader).
pub(crate) fn measure(name: &'static str, wan: &str, clients: usize, duration: Duration, homes: bool) -> Result<GeoResult, String> {
    let data_dir = scratch_dir(&format!("bench-geo-{name}"))?;
    let multi = name == "multi-leader";
    let mut extra: Vec<String> = ["--wan", wan, "--election-tick-ms", "60", "--ack", "semi-sync"].iter().map(|arg| arg.to_string()).collect();
    if multi {
        extra.extend(["--topology".to_string(), "multi-leader".to_string()]);
    }
    let processes = start_processes_in_regions(&REGIONS, multi, &data_dir, &extra)?;
    let addresses: Vec<String> = processes.iter().map(|process| process.http.clone()).collect();
    wait_ready(&addresses, Duration::from_secs(30))?;
    let create = json!(["CREATE TABLE bench (id TEXT PRIMARY KEY, v TEXT NOT NULL)"]);
    let w = if multi { "regions:all" } else { "all" };
    let reply = HttpClient::new(&addresses[0]).post_json(&format!("/db/execute?w={w}"), &create).map_err(|error| format!("{name}: {error}"))?;
    if reply.status != 200 {
        return Err(format!("{name}: cannot create the bench table: {}", reply.body));
    }
    println!("  {name}: measuring...");
    let warmup_end = Instant::now() + Duration::from_secs(1);
    let end = warmup_end + duration;
    let writers: Vec<_> = (0..REGIONS.len())
        .flat_map(|region| (0..clients).map(move |client| (region, client)))
        .map(|(region, client)| {
            let address = addresses[region].clone();
            std::thread::spawn(move || write_load(&address, "/db/execute", &format!("{}-{client}", REGIONS[region]), warmup_end, end))
        })
        .collect();
    let probe = {
        let addresses = addresses.clone();
        std::thread::spawn(move || probe_delays(&addresses, multi, warmup_end, end))
    };
    let mut writes: Vec<Samples> = (0..REGIONS.len()).map(|_| Samples::default()).collect();
    let mut errors = 0;
    for (index, writer) in writers.into_iter().enumerate() {
        let (samples, failed) = writer.join().map_err(|_| "a bench client panicked".to_string())?;
        writes[index / clients].extend(samples);
        errors += failed;
    }
    let delays = probe.join().map_err(|_| "the delay probe panicked".to_string())?;
    let total: usize = writes.iter().map(Samples::len).sum();
    let homes = if multi && homes { Some(measure_homes(&addresses)?) } else { None };
    drop(processes);
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(GeoResult { name, writes, delays, throughput: total as f64 / duration.as_secs_f64(), errors, homes })
}

fn write_load(address: &str, path: &str, prefix: &str, warmup_end: Instant, end: Instant) -> (Samples, u64) {
    let mut client = HttpClient::new(address).with_timeout(Duration::from_secs(10));
    let (mut samples, mut errors, mut number) = (Samples::default(), 0u64, 0u64);
    loop {
        let started = Instant::now();
        if started >= end {
            return (samples, errors);
        }
        number += 1;
        let ok = client.post_json(path, &json!([["INSERT INTO bench VALUES (?, 'x')", format!("{prefix}-{number}")]])).is_ok_and(|reply| reply.status == 200);
        if started < warmup_end {
            continue;
        }
        if ok {
            samples.push(started.elapsed());
        } else {
            errors += 1;
        }
    }
}

/// Per origin region: writes a row there, then times how long until each other region
/// serves a session read after it (its position, or under multi-leader its token).
/// Every ordered pair of distinct regions, by index.
fn pairs() -> Vec<(usize, usize)> {
    (0..REGIONS.len()).flat_map(|from| (0..REGIONS.len()).filter(move |to| *to != from).map(move |to| (from, to))).collect()
}

fn probe_delays(addresses: &[String], multi: bool, warmup_end: Instant, end: Instant) -> Vec<Samples> {
    let mut delays: Vec<Samples> = pairs().iter().map(|_| Samples::default()).collect();
    let mut round = 0u64;
    std::thread::sleep(warmup_end.saturating_duration_since(Instant::now()));
    while Instant::now() < end {
        round += 1;
        for (from, address) in addresses.iter().enumerate() {
            let body = json!([["INSERT INTO bench VALUES (?, 'probe')", format!("probe-{from}-{round}")]]);
            let Ok(reply) = HttpClient::new(address).post_json("/db/execute", &body) else { continue };
            let acknowledged = Instant::now();
            let after = if multi { reply.body["token"].as_str() } else { reply.body["position"].as_str() };
            let Some(after) = after.map(str::to_string) else { continue };
            // Each other region is asked at once, in its own thread: one slow answer must
            // not add to another pair's delay.
            let readers: Vec<_> = addresses
                .iter()
                .enumerate()
                .filter(|(to, _)| *to != from)
                .map(|(to, other)| {
                    let path = format!("/db/query?level=session&after={}&timeout=10s&q={}", encode_query_value(&after), encode_query_value("SELECT 1"));
                    let other = other.clone();
                    (to, std::thread::spawn(move || HttpClient::new(&other).get(&path).is_ok_and(|reply| reply.status == 200).then(|| acknowledged.elapsed())))
                })
                .collect();
            for (to, reader) in readers {
                let pair = pairs().iter().position(|pair| *pair == (from, to)).expect("every pair is listed");
                if let Ok(Some(delay)) = reader.join() {
                    delays[pair].push(delay);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    delays
}
