//! `tern bench --leaderless`: leaderless clusters of real processes, one node per region
//! on the emulated WAN, measured for several (N, R, W): read and write latency per
//! region, and how often a read made t ms after a write was acknowledged returns an
//! older value (probabilistically bounded staleness, after Bailis et al., "Probabilistically
//! Bounded Staleness for Practical Partial Quorums", VLDB 2012), for t = 0, 10, 100 and
//! 1000 ms. The write is made in one region and read in another.

use crate::cluster::{scratch_dir, start_processes_in_regions, wait_ready};
use crate::stats::Samples;
use serde_json::json;
use std::time::{Duration, Instant};
use tern_server::client::HttpClient;

const REGIONS: [&str; 3] = ["us-east", "eu-west", "antarctica"];
/// (N, R, W): partial quorums first, then the strict ones (R + W > N).
const CONFIGS: [(usize, &[(usize, usize)]); 2] = [(3, &[(1, 1), (1, 2), (2, 2), (1, 3), (3, 1)]), (2, &[(1, 1), (2, 1), (1, 2)])];
pub(crate) const DELAYS_MS: [u64; 4] = [0, 10, 100, 1000];
/// Concurrent staleness probes, each writing then reading its own rows.
pub(crate) const PROBES: usize = 24;

pub(crate) struct Figures {
    pub n: usize,
    pub r: usize,
    pub w: usize,
    /// Per region.
    pub writes: Vec<Samples>,
    pub reads: Vec<Samples>,
    /// Per delay of `DELAYS_MS`: (stale reads, reads).
    pub stale: Vec<(usize, usize)>,
    pub errors: u64,
}

pub fn run(wan: &str, duration: Duration) -> Result<(), String> {
    println!("leaderless on the emulated WAN ({wan}), one node per region: {}", REGIONS.join(", "));
    println!(
        "each (N, R, W): every region writes and reads for {:.0} s, then {PROBES} probes per delay write in one region and read in another\n",
        duration.as_secs_f64()
    );
    let mut all = Vec::new();
    for (n, quorums) in CONFIGS {
        all.extend(measure_cluster(wan, n, quorums, duration, |r, w| println!("  N={n} R={r} W={w}: measuring..."))?);
    }
    print_figures(&all);
    Ok(())
}

/// A leaderless cluster of `n`-way replicated real processes, one per region on the
/// emulated WAN `wan`, measured at each (R, W) of `quorums` for `duration` (then the
/// staleness probes); `starting` is told each (R, W) as it starts.
pub(crate) fn measure_cluster(
    wan: &str,
    n: usize,
    quorums: &[(usize, usize)],
    duration: Duration,
    starting: impl Fn(usize, usize),
) -> Result<Vec<Figures>, String> {
    let data_dir = scratch_dir(&format!("bench-leaderless-{n}"))?;
    let extra: Vec<String> = ["--wan", wan, "--topology", "leaderless", "--replicas", &n.to_string()].iter().map(|arg| arg.to_string()).collect();
    let processes = start_processes_in_regions(&REGIONS, true, &data_dir, &extra)?;
    let addresses: Vec<String> = processes.iter().map(|process| process.http.clone()).collect();
    let measured = (|| {
        wait_ready(&addresses, Duration::from_secs(30))?;
        // The nodes find each other (a second of pings) before the first write.
        std::thread::sleep(Duration::from_millis(1500));
        let reply = HttpClient::new(&addresses[0])
            .post_json("/db/execute", &json!(["CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT NOT NULL)"]))
            .map_err(|error| format!("cannot create the table: {error}"))?;
        if reply.status != 200 {
            return Err(format!("cannot create the table: {}", reply.body));
        }
        let mut figures = Vec::new();
        for &(r, w) in quorums {
            starting(r, w);
            figures.push(measure(&addresses, n, r, w, duration)?);
        }
        Ok(figures)
    })();
    drop(processes);
    let _ = std::fs::remove_dir_all(&data_dir);
    measured
}

fn measure(addresses: &[String], n: usize, r: usize, w: usize, duration: Duration) -> Result<Figures, String> {
    let tag = format!("{n}{r}{w}");
    let end = Instant::now() + duration;
    let loads: Vec<_> = addresses
        .iter()
        .enumerate()
        .map(|(region, address)| {
            let (address, tag) = (address.clone(), tag.clone());
            std::thread::spawn(move || load(&address, &format!("{tag}-{region}"), r, w, end))
        })
        .collect();
    let mut writes = Vec::new();
    let mut reads = Vec::new();
    let mut errors = 0;
    for load in loads {
        let (wrote, read, failed) = load.join().map_err(|_| "a bench client panicked".to_string())?;
        writes.push(wrote);
        reads.push(read);
        errors += failed;
    }
    let probes: Vec<_> = (0..PROBES)
        .map(|probe| {
            let (addresses, tag) = (addresses.to_vec(), tag.clone());
            std::thread::spawn(move || staleness_probe(&addresses, &format!("{tag}-p{probe}"), probe, r, w))
        })
        .collect();
    let mut stale = vec![(0, 0); DELAYS_MS.len()];
    for probe in probes {
        let (seen, failed) = probe.join().map_err(|_| "a probe panicked".to_string())?;
        for (total, one) in stale.iter_mut().zip(seen) {
            total.0 += one.0;
            total.1 += one.1;
        }
        errors += failed;
    }
    Ok(Figures { n, r, w, writes, reads, stale, errors })
}

fn write(client: &mut HttpClient, key: &str, value: &str, w: &str) -> bool {
    client.post_json(&format!("/db/execute?w={w}"), &json!([["INSERT OR REPLACE INTO kv VALUES (?, ?)", key, value]])).is_ok_and(|reply| reply.status == 200)
}

/// The row's value read at `r`, `Ok(None)` if no replica asked has it.
fn read(client: &mut HttpClient, key: &str, r: usize) -> Result<Option<String>, ()> {
    let reply = client.post_json(&format!("/db/query?r={r}"), &json!([["SELECT v FROM kv WHERE k = ?", key]])).map_err(|_| ())?;
    if reply.status != 200 || !reply.body["results"][0]["error"].is_null() {
        return Err(());
    }
    Ok(reply.body["results"][0]["values"][0][0].as_str().map(str::to_string))
}

/// One client in one region: a write then a read of one of its recent rows, until `end`.
fn load(address: &str, prefix: &str, r: usize, w: usize, end: Instant) -> (Samples, Samples, u64) {
    let mut client = HttpClient::new(address).with_timeout(Duration::from_secs(10));
    let (mut writes, mut reads, mut errors) = (Samples::default(), Samples::default(), 0u64);
    let mut number = 0u64;
    while Instant::now() < end {
        number += 1;
        let key = format!("{prefix}-{}", number % 50);
        let started = Instant::now();
        if write(&mut client, &key, &number.to_string(), &w.to_string()) {
            writes.push(started.elapsed());
        } else {
            errors += 1;
        }
        let started = Instant::now();
        match read(&mut client, &format!("{prefix}-{}", number.wrapping_mul(7) % 50), r) {
            Ok(_) => reads.push(started.elapsed()),
            Err(()) => errors += 1,
        }
    }
    (writes, reads, errors)
}

/// For each delay: writes a new value in one region, waits that long after the write is
/// acknowledged, reads in another region; (stale, reads) per delay.
fn staleness_probe(addresses: &[String], prefix: &str, probe: usize, r: usize, w: usize) -> (Vec<(usize, usize)>, u64) {
    let from = probe % addresses.len();
    let to = (from + 1 + probe / addresses.len() % (addresses.len() - 1)) % addresses.len();
    let mut writer = HttpClient::new(&addresses[from]).with_timeout(Duration::from_secs(10));
    let mut reader = HttpClient::new(&addresses[to]).with_timeout(Duration::from_secs(10));
    let mut seen = Vec::new();
    let mut errors = 0;
    for (round, delay) in DELAYS_MS.iter().enumerate() {
        let key = format!("{prefix}-{round}");
        // The row exists with an old value first, so a stale read finds the old one.
        if !write(&mut writer, &key, "old", "all") {
            errors += 1;
            seen.push((0, 0));
            continue;
        }
        std::thread::sleep(Duration::from_millis(1200));
        if !write(&mut writer, &key, "new", &w.to_string()) {
            errors += 1;
            seen.push((0, 0));
            continue;
        }
        std::thread::sleep(Duration::from_millis(*delay));
        match read(&mut reader, &key, r) {
            Ok(value) => seen.push((usize::from(value.as_deref() != Some("new")), 1)),
            Err(()) => {
                errors += 1;
                seen.push((0, 0));
            }
        }
    }
    (seen, errors)
}

fn print_figures(all: &[Figures]) {
    println!(
        "\n  N R W  strict | write p50/p99 ms: {:<38} | read p50/p99 ms: {:<38} | P(stale read) t after the write: 0 / 10 / 100 / 1000 ms",
        REGIONS.join(" "),
        REGIONS.join(" ")
    );
    for figures in all {
        let column = |samples: &[Samples]| samples.iter().map(Samples::p50_p99).collect::<Vec<_>>().join("  ");
        let stale: Vec<String> =
            figures.stale.iter().map(|(stale, total)| if *total == 0 { "-".to_string() } else { format!("{:.2}", *stale as f64 / *total as f64) }).collect();
        println!(
            "  {} {} {}  {:<6} | {:<56} | {:<55} | {}   ({} probes each{})",
            figures.n,
            figures.r,
            figures.w,
            if figures.r + figures.w > figures.n { "yes" } else { "no" },
            column(&figures.writes),
            column(&figures.reads),
            stale.join(" / "),
            figures.stale.first().map_or(0, |(_, total)| *total),
            if figures.errors > 0 { format!(", {} errors", figures.errors) } else { String::new() }
        );
    }
    println!("\nstrict (R + W > N): a read overlaps every acknowledged write in a replica, so it is never stale here; partial quorums trade that for latency.");
}
