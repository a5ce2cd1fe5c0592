//! `tern bench`: three real `tern server` processes on loopback; single-row writes of a
//! fixed-size value to the leader over HTTP, per ack mode and client count.

use crate::cluster::{scratch_dir, start_processes, wait_ready};
use crate::stats::{millis, Samples};
use clap::Args;
use serde_json::json;
use std::time::{Duration, Instant};
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
    #[arg(long, default_value = "async,semi-sync,sync")]
    acks: String,
    /// Bytes per written value.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Log format of the cluster: statement or row.
    #[arg(long, default_value = "row")]
    log_format: String,
}

struct Point {
    ack: String,
    clients: usize,
    writes: u64,
    errors: u64,
    elapsed: Duration,
    latency: Samples,
}

impl Point {
    fn writes_per_second(&self) -> f64 {
        self.writes as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&self, percent: f64) -> String {
        self.latency.percentile(percent).map_or("-".into(), millis)
    }
}

pub fn run(args: BenchArgs) -> Result<(), String> {
    let clients: Vec<usize> = args
        .clients
        .split(',')
        .map(|count| count.trim().parse().map_err(|_| format!("bad --clients item {count:?}")))
        .collect::<Result<_, _>>()?;
    let acks: Vec<String> = args.acks.split(',').map(|ack| ack.trim().to_string()).collect();
    for ack in &acks {
        crate::parse_ack(ack)?;
    }
    crate::parse_log_format(&args.log_format)?;
    let data_dir = scratch_dir("bench")?;
    let processes = start_processes(3, &data_dir, &["--log-format".to_string(), args.log_format.clone()])?;
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
        args.log_format, args.value_size, args.duration
    );
    let mut points = Vec::new();
    for ack in &acks {
        let w = match ack.as_str() {
            "async" => "1",
            "semi-sync" => "majority",
            _ => "sync",
        };
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

fn measure(leader: &str, ack: &str, w: &str, clients: usize, value_size: usize, duration: Duration) -> Point {
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
