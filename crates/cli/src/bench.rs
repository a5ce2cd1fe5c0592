//! `tern bench`: three real `tern server` processes on loopback; single-row writes of a
//! fixed-size value to the leader over HTTP, per ack mode and client count.

use crate::args::{AckArg, LogFormatArg};
use crate::cluster::{scratch_dir, start_processes, wait_ready, ServerProcess};
use crate::stats::{millis, Samples};
use clap::Args;
use serde_json::json;
use std::time::{Duration, Instant};
use tern_core::{AckMode, LogFormat};
use tern_server::client::HttpClient;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Seconds measured per point (after a one-second warm-up).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Client counts to measure, comma separated.
    #[arg(long, default_value = "1,32")]
    clients: String,
    /// Ack modes to measure, comma separated (async = w=1, semi-sync = w=majority, sync = every in-sync follower).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "async,semi-sync,sync")]
    acks: Vec<AckArg>,
    /// Bytes per written value.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Log format of the cluster.
    #[arg(long, value_enum, default_value_t = LogFormatArg::Row)]
    log_format: LogFormatArg,
    /// Instead: compare the log formats (statement, row, physical) on three workloads
    /// (single-row insert, UPDATE of 10,000 rows, bulk insert of 10,000 rows), reporting
    /// bytes shipped per transaction and transactions per second.
    #[arg(long)]
    formats: bool,
    /// Instead: SIGKILL the leader this many times under a write load (restarting it
    /// each time) and report the time from each kill to the next acknowledged write.
    #[arg(long, default_value_t = 0)]
    failover: usize,
    /// Instead: three regions on an emulated WAN (--wan), single-leader (semi-sync, leader
    /// in us-east) against multi-leader in one run: write latency per region, the delay
    /// until a write is readable in the other regions, and throughput with every region
    /// writing (--clients: the first count, per region); then leader placement: us-east
    /// writes with the three voters spread over the regions against three voters in
    /// us-east and far non-voters, and the far non-voters' local reads.
    #[arg(long)]
    geo: bool,
    /// Instead: offline devices' sync, for each count of writes made offline (comma
    /// separated): the time and bytes to push them, and for a fresh device to pull them.
    #[arg(long)]
    devices: Option<String>,
    /// Instead: leaderless clusters (one node per region on the emulated WAN) for several
    /// (N, R, W): read and write latency per region, and the probability that a read t ms
    /// after a write returns an older value, for t = 0, 10, 100, 1000 ms.
    #[arg(long)]
    leaderless: bool,
    /// Instead: the cost of TLS. The same cluster and writes (each --acks mode, each
    /// --clients count) with plain TCP and HTTP, then with TLS between nodes and HTTPS to
    /// the leader (`tern certs`, `--tls-dir`), in one run: writes/s and p50 of each, and
    /// their ratio. Clients keep their connections, as real ones do.
    #[arg(long)]
    tls: bool,
    /// Instead: the costs a cluster is sized by: resident memory per node idle and under
    /// load, a follower's catch-up speed from the log and from a snapshot, level=none read
    /// throughput with 1 to 5 nodes, and write throughput as values grow from 64 B to 64 KiB.
    #[arg(long)]
    sizing: bool,
    /// One-way WAN latency per region pair for --geo, milliseconds.
    #[arg(long, default_value = "us-east:eu-west=40,us-east:antarctica=75,eu-west:antarctica=90")]
    wan: String,
}

fn format_name(format: LogFormatArg) -> String {
    LogFormat::from(format).name().to_string()
}

pub(crate) struct Point {
    ack: String,
    clients: usize,
    writes: u64,
    errors: u64,
    elapsed: Duration,
    latency: Samples,
}

impl Point {
    pub(crate) fn writes(&self) -> u64 {
        self.writes
    }

    pub(crate) fn writes_per_second(&self) -> f64 {
        self.writes as f64 / self.elapsed.as_secs_f64()
    }

    pub(crate) fn percentile_ms(&self, percent: f64) -> String {
        self.latency.percentile(percent).map_or("-".into(), millis)
    }
}

pub fn run(args: BenchArgs) -> Result<(), String> {
    if args.formats {
        return compare_formats(&args);
    }
    if args.failover > 0 {
        return measure_failover(&args);
    }
    if args.tls {
        return measure_tls(&args);
    }
    if args.sizing {
        return crate::bench_sizing::run(Duration::from_secs(args.duration));
    }
    if let Some(counts) = &args.devices {
        let counts: Vec<usize> =
            counts.split(',').map(|count| count.trim().parse().map_err(|_| format!("bad --devices item {count:?}"))).collect::<Result<_, _>>()?;
        return crate::bench_devices::run(&counts);
    }
    if args.leaderless {
        return crate::bench_leaderless::run(&args.wan, Duration::from_secs(args.duration));
    }
    if args.geo {
        let clients = args.clients.split(',').next().and_then(|count| count.trim().parse().ok()).unwrap_or(4);
        return crate::bench_geo::run(&args.wan, clients, Duration::from_secs(args.duration));
    }
    let clients: Vec<usize> =
        args.clients.split(',').map(|count| count.trim().parse().map_err(|_| format!("bad --clients item {count:?}"))).collect::<Result<_, _>>()?;
    let acks: Vec<&str> = args.acks.iter().map(|ack| AckMode::from(*ack).name()).collect();
    let data_dir = scratch_dir("bench")?;
    let processes = start_processes(3, &data_dir, &["--log-format".to_string(), format_name(args.log_format)])?;
    let addresses: Vec<String> = processes.iter().map(|process| process.http.clone()).collect();
    wait_ready(&addresses, Duration::from_secs(30))?;
    let leader = addresses[0].clone();
    let mut client = HttpClient::new(&leader);
    let reply = client
        .post_json("/db/execute?w=all", &json!(["CREATE TABLE bench (id INTEGER PRIMARY KEY, v TEXT NOT NULL)"]))
        .map_err(|error| format!("cannot create the bench table: {error}"))?;
    if reply.status != 200 {
        return Err(format!("cannot create the bench table: {}", reply.body));
    }

    println!(
        "tern bench: 3 tern server processes on loopback, {} log, single-row INSERTs of {} bytes to the leader over HTTP, {} s per point",
        format_name(args.log_format),
        args.value_size,
        args.duration
    );
    let mut points = Vec::new();
    for ack in &acks {
        let w = ack_query(ack);
        for &count in &clients {
            let point = measure(&leader, ack, w, count, args.value_size, Duration::from_secs(args.duration));
            println!(
                "  {:<10} {:>3} client(s): {:>8.0} writes/s  p50 {:>6} ms  p99 {:>6} ms  ({} writes, {} errors)",
                point.ack,
                point.clients,
                point.writes_per_second(),
                point.percentile_ms(50.0),
                point.percentile_ms(99.0),
                point.writes,
                point.errors
            );
            points.push(point);
        }
    }
    println!("\n| ack | clients | writes/s | p50 ms | p99 ms |\n|---|---|---|---|---|");
    for point in &points {
        println!("| {} | {} | {:.0} | {} | {} |", point.ack, point.clients, point.writes_per_second(), point.percentile_ms(50.0), point.percentile_ms(99.0));
    }
    drop(processes);
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(())
}

/// The plain cluster, then the TLS one, the same points on each.
fn measure_tls(args: &BenchArgs) -> Result<(), String> {
    let clients: Vec<usize> =
        args.clients.split(',').map(|count| count.trim().parse().map_err(|_| format!("bad --clients item {count:?}"))).collect::<Result<_, _>>()?;
    let acks: Vec<&str> = args.acks.iter().map(|ack| AckMode::from(*ack).name()).collect();
    let data_dir = scratch_dir("bench-tls")?;
    let certs = data_dir.join("certs");
    crate::cluster::make_certificates(&certs, "bench", &["n1".to_string(), "n2".to_string(), "n3".to_string()], &["127.0.0.1".to_string()])?;
    println!(
        "tern bench --tls: 3 tern server processes on loopback, {} log, single-row INSERTs of {} bytes to the leader, {} s per point; plain TCP/HTTP, then TLS between nodes and HTTPS (TLS 1.3, ring), in this run",
        format_name(args.log_format),
        args.value_size,
        args.duration
    );
    // Both clusters run for the whole bench, and each point is measured on one right after
    // the other: drift on a shared machine then touches both alike.
    let mut clusters = Vec::new();
    for tls in [false, true] {
        let mut extra = vec!["--log-format".to_string(), format_name(args.log_format)];
        if tls {
            extra.extend(["--tls-dir".to_string(), certs.display().to_string()]);
        }
        let run_dir = data_dir.join(if tls { "tls" } else { "plain" });
        let processes = start_processes(3, &run_dir, &extra)?;
        let scheme = if tls { "https://" } else { "" };
        let addresses: Vec<String> = processes.iter().map(|process| format!("{scheme}{}", process.http)).collect();
        wait_ready(&addresses, Duration::from_secs(30))?;
        let leader = addresses[0].clone();
        let reply = HttpClient::new(&leader)
            .post_json("/db/execute?w=all", &json!(["CREATE TABLE bench (id INTEGER PRIMARY KEY, v TEXT NOT NULL)"]))
            .map_err(|error| format!("cannot create the bench table: {error}"))?;
        if reply.status != 200 {
            return Err(format!("cannot create the bench table: {}", reply.body));
        }
        clusters.push((tls, leader, processes));
    }
    let mut results: Vec<(bool, Point)> = Vec::new();
    for ack in &acks {
        let w = ack_query(ack);
        for &count in &clients {
            for (tls, leader, _) in &clusters {
                let tls = *tls;
                let point = measure(leader, ack, w, count, args.value_size, Duration::from_secs(args.duration));
                println!(
                    "  {:<5} {:<10} {:>3} client(s): {:>8.0} writes/s  p50 {:>6} ms  ({} errors)",
                    if tls { "tls" } else { "plain" },
                    point.ack,
                    point.clients,
                    point.writes_per_second(),
                    point.percentile_ms(50.0),
                    point.errors
                );
                results.push((tls, point));
            }
        }
    }
    drop(clusters);
    println!("\n| ack | clients | plain writes/s | TLS writes/s | TLS/plain | plain p50 ms | TLS p50 ms |\n|---|---|---|---|---|---|---|");
    for (_, plain) in results.iter().filter(|(tls, _)| !tls) {
        let Some((_, tls)) = results.iter().find(|(tls, point)| *tls && point.ack == plain.ack && point.clients == plain.clients) else { continue };
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.2} | {} | {} |",
            plain.ack,
            plain.clients,
            plain.writes_per_second(),
            tls.writes_per_second(),
            tls.writes_per_second() / plain.writes_per_second().max(1e-9),
            plain.percentile_ms(50.0),
            tls.percentile_ms(50.0)
        );
    }
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(())
}

/// The `w=` of an ack mode's name.
fn ack_query(ack: &str) -> &'static str {
    match ack {
        "async" => "1",
        "semi-sync" => "majority",
        _ => "sync",
    }
}

pub(crate) fn measure(leader: &str, ack: &str, w: &str, clients: usize, value_size: usize, duration: Duration) -> Point {
    let warmup_end = Instant::now() + Duration::from_secs(1);
    let end = warmup_end + duration;
    let value = "x".repeat(value_size);
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let leader = leader.to_string();
            let value = value.clone();
            let path = format!("/db/execute?w={w}");
            std::thread::spawn(move || {
                let mut client = HttpClient::new(&leader);
                let body = json!([["INSERT INTO bench (v) VALUES (?)", value]]);
                let mut latency = Samples::default();
                let (mut writes, mut errors) = (0u64, 0u64);
                loop {
                    let started = Instant::now();
                    if started >= end {
                        break;
                    }
                    let ok = client.post_json(&path, &body).is_ok_and(|reply| reply.status == 200);
                    if started < warmup_end {
                        continue;
                    }
                    if ok {
                        writes += 1;
                        latency.push(started.elapsed());
                    } else {
                        errors += 1;
                    }
                }
                (writes, errors, latency)
            })
        })
        .collect();
    let mut point = Point { ack: ack.to_string(), clients, writes: 0, errors: 0, elapsed: duration, latency: Samples::default() };
    for worker in workers {
        let (writes, errors, latency) = worker.join().expect("bench client thread does not panic");
        point.writes += writes;
        point.errors += errors;
        point.latency.extend(latency);
    }
    point
}

/// One workload of the format comparison: a setup and the request each client repeats.
struct Workload {
    name: &'static str,
    setup: serde_json::Value,
    request: serde_json::Value,
    clients: usize,
}

fn format_workloads() -> Vec<Workload> {
    let value = "x".repeat(256);
    vec![
        Workload {
            name: "single-row insert (8 clients)",
            setup: json!(["CREATE TABLE single (id INTEGER PRIMARY KEY, v TEXT)"]),
            request: json!([["INSERT INTO single (v) VALUES (?)", value]]),
            clients: 8,
        },
        Workload {
            name: "UPDATE of 10,000 rows",
            setup: json!([
                "CREATE TABLE wide (id INTEGER PRIMARY KEY, qty INTEGER, name TEXT)",
                "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 10000) INSERT INTO wide (qty, name) SELECT x, 'item ' || x FROM n"
            ]),
            request: json!(["UPDATE wide SET qty = qty + 1"]),
            clients: 1,
        },
        Workload {
            name: "bulk insert of 10,000 rows",
            setup: json!(["CREATE TABLE bulk (id INTEGER PRIMARY KEY, qty INTEGER, name TEXT)"]),
            request: json!([
                "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 10000) INSERT INTO bulk (qty, name) SELECT x, 'item ' || x FROM n"
            ]),
            clients: 1,
        },
    ]
}

fn log_counters(client: &mut HttpClient) -> Result<(u64, u64), String> {
    let status = client.get("/status").map_err(|error| format!("status: {error}"))?.body;
    Ok((status["log"]["entries"].as_u64().unwrap_or(0), status["log"]["bytes"].as_u64().unwrap_or(0)))
}

fn compare_formats(args: &BenchArgs) -> Result<(), String> {
    let duration = Duration::from_secs(args.duration);
    println!("tern bench --formats: 3 tern server processes on loopback per format, semi-sync, {} s per workload", args.duration);
    let mut rows = Vec::new();
    for format in ["statement", "row", "physical"] {
        let data_dir = scratch_dir(&format!("bench-{format}"))?;
        let processes = start_processes(3, &data_dir, &["--log-format".to_string(), format.to_string()])?;
        let addresses: Vec<String> = processes.iter().map(|process| process.http.clone()).collect();
        wait_ready(&addresses, Duration::from_secs(30))?;
        let leader = addresses[0].clone();
        let mut client = HttpClient::new(&leader);
        for workload in format_workloads() {
            let reply = client.post_json("/db/execute?w=all", &workload.setup).map_err(|error| error.to_string())?;
            if reply.status != 200 {
                return Err(format!("setup of {} failed: {}", workload.name, reply.body));
            }
            let (entries_before, bytes_before) = log_counters(&mut client)?;
            let started = Instant::now();
            let workers: Vec<_> = (0..workload.clients)
                .map(|_| {
                    let (leader, request) = (leader.clone(), workload.request.clone());
                    std::thread::spawn(move || {
                        let mut client = HttpClient::new(&leader);
                        let mut done = 0u64;
                        while started.elapsed() < duration {
                            if client.post_json("/db/execute", &request).is_ok_and(|reply| reply.status == 200) {
                                done += 1;
                            }
                        }
                        done
                    })
                })
                .collect();
            let transactions: u64 = workers.into_iter().map(|worker| worker.join().unwrap_or(0)).sum();
            let elapsed = started.elapsed();
            let (entries_after, bytes_after) = log_counters(&mut client)?;
            let entries = (entries_after - entries_before).max(1);
            let bytes_per_transaction = (bytes_after - bytes_before) as f64 / transactions.max(1) as f64;
            let per_second = transactions as f64 / elapsed.as_secs_f64();
            println!(
                "  {format:<9} {:<32} {per_second:>9.1} transactions/s  {bytes_per_transaction:>11.0} bytes shipped per transaction ({entries} entries)",
                workload.name
            );
            rows.push((workload.name, format, per_second, bytes_per_transaction));
        }
        // The comparison only counts if the replicas ended up identical.
        std::thread::sleep(Duration::from_millis(500));
        let verdict = client.get("/db/verify").map_err(|error| format!("verify: {error}"))?.body;
        println!(
            "  {format:<9} replicas agree: {} {}",
            verdict["agree"],
            if verdict["agree"] == true { String::new() } else { verdict["differences"].to_string() }
        );
        drop(processes);
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    println!("\n| workload | format | transactions/s | bytes shipped per transaction |\n|---|---|---|---|");
    for workload in format_workloads() {
        for (name, format, per_second, bytes) in rows.iter().filter(|row| row.0 == workload.name) {
            println!("| {name} | {format} | {per_second:.1} | {bytes:.0} |");
        }
    }
    Ok(())
}

/// One failover, timed: `write` (one write through the client it is given; true when
/// acknowledged) runs against the leader for `before`, the leader is SIGKILLed, and
/// `write` is retried on every node in turn (from the first) until one is acknowledged.
/// The killed node then restarts from its data directory and the cluster is ready again.
/// Returns the killed node's index and the time from the kill to that acknowledgement.
/// Each attempt is given up after `attempt_timeout` (a node that forwards to the dead
/// leader may hold a write until its own, longer timeout).
pub(crate) fn time_a_failover(
    processes: &mut [ServerProcess],
    addresses: &[String],
    before: Duration,
    attempt_timeout: Duration,
    mut write: impl FnMut(&mut HttpClient) -> bool,
) -> Result<(usize, Duration), String> {
    let leader = find_leader(addresses, Duration::from_secs(30))?;
    let mut client = HttpClient::new(&addresses[leader]).with_timeout(Duration::from_secs(2));
    let until = Instant::now() + before;
    while Instant::now() < until {
        write(&mut client);
    }
    let killed_at = Instant::now();
    processes[leader].kill();
    let mut attempt = 0usize;
    let recovered = loop {
        let address = &addresses[attempt % addresses.len()];
        attempt += 1;
        let mut client = HttpClient::new(address).with_timeout(attempt_timeout);
        if write(&mut client) {
            break killed_at.elapsed();
        }
        if killed_at.elapsed() > Duration::from_secs(30) {
            return Err("no write acknowledged within 30 s of the kill".to_string());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    processes[leader].restart()?;
    wait_ready(addresses, Duration::from_secs(30))?;
    Ok((leader, recovered))
}

/// The address of the node that reports itself leader and accepting writes.
pub(crate) fn find_leader(addresses: &[String], timeout: Duration) -> Result<usize, String> {
    let deadline = Instant::now() + timeout;
    loop {
        for (index, address) in addresses.iter().enumerate() {
            let mut client = HttpClient::new(address).with_timeout(Duration::from_millis(500));
            if client.get("/status").is_ok_and(|reply| reply.body["node"]["role"] == "leader" && reply.body["node"]["accepting_writes"] == true) {
                return Ok(index);
            }
        }
        if Instant::now() > deadline {
            return Err(format!("no leader accepted writes within {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// As `../shared/bench/peers/rqlite_3node.sh` measures rqlite: one client writes to the
/// leader for two seconds, the leader is SIGKILLed, and the client retries on every node
/// (from the first, in order) until a write is acknowledged. The killed node restarts
/// from its data directory before the next round.
fn measure_failover(args: &BenchArgs) -> Result<(), String> {
    let data_dir = scratch_dir("bench-failover")?;
    let mut processes = start_processes(3, &data_dir, &["--log-format".to_string(), format_name(args.log_format)])?;
    let addresses: Vec<String> = processes.iter().map(|process| process.http.clone()).collect();
    wait_ready(&addresses, Duration::from_secs(30))?;
    let leader = find_leader(&addresses, Duration::from_secs(30))?;
    let mut client = HttpClient::new(&addresses[leader]);
    let reply = client
        .post_json("/db/execute?w=all", &json!(["CREATE TABLE bench (id INTEGER PRIMARY KEY, v TEXT NOT NULL)"]))
        .map_err(|error| format!("cannot create the bench table: {error}"))?;
    if reply.status != 200 {
        return Err(format!("cannot create the bench table: {}", reply.body));
    }
    println!("tern failover: 3 processes on loopback, {} log, default settings (--ack semi-sync, 25 ms election tick)", format_name(args.log_format));
    let value = "x".repeat(args.value_size);
    let mut next_id: u64 = 1;
    let write = |client: &mut HttpClient, id: u64| {
        client
            .post_json("/db/execute", &json!([["INSERT INTO bench (id, v) VALUES (?, ?)", id, value]]))
            .is_ok_and(|reply| reply.status == 200 && reply.body["results"][0]["error"].is_null())
    };
    let mut samples = Samples::default();
    for round in 1..=args.failover {
        let (leader, recovered) = time_a_failover(&mut processes, &addresses, Duration::from_secs(2), Duration::from_secs(2), |client| {
            next_id += 1;
            write(client, next_id)
        })
        .map_err(|error| format!("round {round}: {error}"))?;
        println!("  round {round:>2}: killed n{}, first acknowledged write after {} ms", leader + 1, millis(recovered));
        samples.push(recovered);
    }
    println!(
        "kill -> first acknowledged write over {} kills: p50 {} ms, max {} ms",
        args.failover,
        samples.percentile(50.0).map_or("-".into(), millis),
        samples.percentile(100.0).map_or("-".into(), millis)
    );
    Ok(())
}
