//! `tern lab --real`: the simulated experiments again on real `tern server` processes,
//! one per region on tern's emulated WAN (the same one-way delays the simulator uses),
//! so a user can check that the simulator and real processes agree. Each function here
//! answers the claim of the simulated experiment of the same name.

use super::plot::Plot;
use super::{Finding, Scale};
use crate::bench::find_leader;
use crate::bench_geo::REGIONS;
use crate::bench_sizing::{applied_index, fill_kv};
use crate::cluster::{scratch_dir, start_processes_in_regions, wait_ready, ServerProcess};
use crate::stats::Samples;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tern_server::client::HttpClient;

/// The simulator's WAN (`tern_sim::world`): us-east–eu-west 40 ms, us-east–antarctica 75,
/// eu-west–antarctica 90, one way.
pub(super) const WAN: &str = "us-east:eu-west=40,us-east:antarctica=75,eu-west:antarctica=90";

/// The same regions a tenth as far apart (rounded up).
const NEAR_WAN: &str = "us-east:eu-west=4,us-east:antarctica=8,eu-west:antarctica=9";

/// Three processes, one per region in `REGIONS`, on the emulated WAN; removed with
/// their data when dropped.
pub(super) struct Cluster {
    directory: std::path::PathBuf,
    pub(super) processes: Vec<ServerProcess>,
    pub(super) addresses: Vec<String>,
}

impl Cluster {
    /// Single-leader, acknowledging writes by `ack`, with `extra` flags.
    pub(super) fn start(purpose: &str, ack: &str, extra: &[&str]) -> Result<Cluster, String> {
        let mut flags = vec!["--ack", ack];
        flags.extend(extra);
        Cluster::launch(purpose, WAN, false, &flags)
    }

    /// A leader in every region, the regions `wan` apart.
    fn start_multi_leader(purpose: &str, wan: &str) -> Result<Cluster, String> {
        Cluster::launch(purpose, wan, true, &["--topology", "multi-leader"])
    }

    pub(super) fn launch(purpose: &str, wan: &str, name_regions: bool, extra: &[&str]) -> Result<Cluster, String> {
        let directory = scratch_dir(purpose)?;
        let mut flags: Vec<String> = ["--wan", wan, "--election-tick-ms", "60"].iter().map(|flag| flag.to_string()).collect();
        flags.extend(extra.iter().map(|flag| flag.to_string()));
        let processes = start_processes_in_regions(&REGIONS, name_regions, &directory, &flags)?;
        let addresses: Vec<String> = processes.iter().map(|process| process.http.clone()).collect();
        let cluster = Cluster { directory, processes, addresses };
        wait_ready(&cluster.addresses, Duration::from_secs(30))?;
        Ok(cluster)
    }

    pub(super) fn client(&self, node: usize) -> HttpClient {
        HttpClient::new(&self.addresses[node]).with_timeout(Duration::from_secs(10))
    }

    pub(super) fn leader(&self) -> Result<usize, String> {
        find_leader(&self.addresses, Duration::from_secs(30))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.processes.clear();
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

/// Posts `body` to `path` and returns the reply's body, or why it failed.
pub(super) fn post(client: &mut HttpClient, path: &str, body: &Value) -> Result<Value, String> {
    let reply = client.post_json(path, body).map_err(|error| format!("{path}: {error}"))?;
    if reply.status != 200 || !reply.body["results"][0]["error"].is_null() {
        return Err(format!("{path}: {} {}", reply.status, reply.body));
    }
    Ok(reply.body)
}

fn p50_ms(samples: &Samples) -> f64 {
    samples.percentile(50.0).map_or(0.0, |p50| p50.as_secs_f64() * 1000.0)
}

/// Times `count` calls of `request`, each with the client it is given; errors fail the run.
fn timed(count: usize, client: &mut HttpClient, mut request: impl FnMut(&mut HttpClient) -> Result<(), String>) -> Result<Samples, String> {
    let mut samples = Samples::default();
    for _ in 0..count {
        let started = Instant::now();
        request(client)?;
        samples.push(started.elapsed());
    }
    Ok(samples)
}

pub(super) const REAL_SETUP: &str = "Real `tern server` processes on this machine, one in each of us-east, eu-west and antarctica, with tern's \
     emulated WAN between them (one-way 40 ms us-east–eu-west, 75 ms us-east–antarctica, 90 ms eu-west–antarctica: the simulator's), \
     election tick 60 ms.";

pub fn local_replica_reads(scale: &Scale) -> Result<Finding, String> {
    let reads = scale.pick(10, 40);
    let cluster = Cluster::start("lab-real-reads", "semi-sync", &[])?;
    let leader = cluster.leader()?;
    fill_kv(&cluster.addresses, 100)?;
    let per_region: Vec<std::thread::JoinHandle<Result<(Samples, Samples), String>>> = (0..REGIONS.len())
        .map(|region| {
            let mut client = cluster.client(region);
            std::thread::spawn(move || {
                let read = |level: &'static str| {
                    move |client: &mut HttpClient| post(client, &format!("/db/query?level={level}"), &json!(["SELECT v FROM kv WHERE k = 7"])).map(drop)
                };
                Ok((timed(reads, &mut client, read("none"))?, timed(reads, &mut client, read("weak"))?))
            })
        })
        .collect();
    let mut rows = Vec::new();
    let (mut local, mut remote) = (Vec::new(), Vec::new());
    for (region, handle) in REGIONS.iter().zip(per_region) {
        let (here, at_leader) = handle.join().map_err(|_| "a read client panicked".to_string())??;
        local.push(p50_ms(&here));
        remote.push(p50_ms(&at_leader));
        rows.push(vec![
            region.to_string(),
            format!("{:.1} ({} reads)", p50_ms(&here), here.len()),
            format!("{:.1} ({} reads)", p50_ms(&at_leader), at_leader.len()),
        ]);
    }
    let far: Vec<usize> = (0..REGIONS.len()).filter(|region| *region != leader).collect();
    // As the simulated verdict: far from the leader the local replica is at least 10×
    // faster, and everywhere it is as fast as anywhere else (within 1 ms).
    let holds = far.iter().all(|&region| local[region] * 10.0 < remote[region]) && local.iter().all(|p50| (p50 - local[leader]).abs() < 1.0);
    let verdict = format!(
        "local reads p50 {:.1} / {:.1} / {:.1} ms in us-east / eu-west / antarctica; reads from the leader in {} {:.1} / {:.1} / {:.1} ms",
        local[0], local[1], local[2], REGIONS[leader], remote[0], remote[1], remote[2]
    );
    Ok(Finding {
        setup: format!(
            "{REAL_SETUP} Semi-sync, the leader in {}. A client in each region sends {reads} reads by key to its own region's node \
             at `level=none` (answered there) and {reads} at `level=weak` (forwarded to the leader), one after another.",
            REGIONS[leader]
        ),
        headers: vec!["client region", "local replica read p50 ms", "leader read p50 ms"],
        rows,
        plots: vec![Plot {
            title: format!("Read latency by client region, real processes (leader in {})", REGIONS[leader]),
            x_label: "client region".to_string(),
            y_label: "read latency p50 (ms)".to_string(),
            cases: REGIONS.iter().map(|region| region.to_string()).collect(),
            series: vec![("local replica".to_string(), local), ("leader".to_string(), remote)],
        }],
        holds,
        verdict,
        not_measured: None,
    })
}

pub fn sync_waits_for_the_slowest(scale: &Scale) -> Result<Finding, String> {
    let writes = scale.pick(10, 40);
    let cluster = Cluster::start("lab-real-acks", "semi-sync", &[])?;
    let leader = cluster.leader()?;
    post(&mut cluster.client(leader), "/db/execute?w=all", &json!(["CREATE TABLE ticks (id INTEGER PRIMARY KEY AUTOINCREMENT, w TEXT)"]))?;
    let cases = [("w=1 (async)", "1"), ("majority (semi-sync)", "majority"), ("every in-sync follower (sync)", "sync"), ("w=all (all nodes)", "all")];
    let mut client = cluster.client(leader);
    let mut rows = Vec::new();
    let (mut p50s, mut p99s) = (Vec::new(), Vec::new());
    for (name, w) in cases {
        let samples =
            timed(writes, &mut client, |client| post(client, &format!("/db/execute?w={w}"), &json!([["INSERT INTO ticks (w) VALUES (?)", w]])).map(drop))?;
        let p99 = samples.percentile(99.0).map_or(0.0, |p99| p99.as_secs_f64() * 1000.0);
        p50s.push(p50_ms(&samples));
        p99s.push(p99);
        rows.push(vec![name.to_string(), samples.len().to_string(), format!("{:.1}", p50_ms(&samples)), format!("{p99:.1}")]);
    }
    drop(cluster);
    let (one, majority, in_sync, all) = (p50s[0], p50s[1], p50s[2], p50s[3]);
    // Then Antarctica, the slowest follower, farther and farther away.
    // From 50 ms on, eu-west (40 ms) stays the nearest follower: a majority waits for it.
    let distances: Vec<u64> = if scale.quick { vec![50, 200] } else { vec![50, 100, 200, 300] };
    let moving_cases = [("w=1", "1"), ("majority", "majority"), ("sync", "sync")];
    let mut by_distance: Vec<Vec<f64>> = vec![Vec::new(); moving_cases.len()];
    for &distance in &distances {
        let wan = format!("us-east:eu-west=40,us-east:antarctica={distance},eu-west:antarctica={distance}");
        let cluster = Cluster::launch("lab-real-acks-far", &wan, false, &["--ack", "semi-sync"])?;
        let leader = cluster.leader()?;
        if REGIONS[leader] == "antarctica" {
            return Err("the leader was elected in antarctica, the follower this measurement moves away: run it again".to_string());
        }
        let mut client = cluster.client(leader);
        post(&mut client, "/db/execute?w=all", &json!(["CREATE TABLE ticks (id INTEGER PRIMARY KEY AUTOINCREMENT, w TEXT)"]))?;
        let mut cells = vec![format!("antarctica {distance} ms away")];
        for (index, (_, w)) in moving_cases.iter().enumerate() {
            let samples = timed(writes / 2, &mut client, |client| {
                post(client, &format!("/db/execute?w={w}"), &json!([["INSERT INTO ticks (w) VALUES (?)", w]])).map(drop)
            })?;
            by_distance[index].push(p50_ms(&samples));
            cells.push(format!("{:.1}", p50_ms(&samples)));
        }
        rows.push(vec![
            cells[0].clone(),
            format!("{} per w", writes / 2),
            format!("w=1 {} · majority {} · sync {}", cells[1], cells[2], cells[3]),
            "-".to_string(),
        ]);
    }
    let (nearest, farthest) = (distances[0] as f64, distances[distances.len() - 1] as f64);
    let grew = |series: &[f64]| series[series.len() - 1] - series[0];
    // sync follows the slowest follower (two crossings more per ms it moves away); a
    // majority (the nearest follower, eu-west) and one copy do not (within 20 ms).
    let follows_the_slowest = grew(&by_distance[2]) >= farthest - nearest && grew(&by_distance[1]).abs() < 20.0 && grew(&by_distance[0]).abs() < 20.0;
    let holds = one < majority && majority < in_sync && majority < all && follows_the_slowest;
    Ok(Finding {
        setup: format!(
            "{REAL_SETUP} The leader in {}; a client beside it sends {writes} single-row writes per case, one after another, each \
             asking with `w=` for the copies it waits for. Then, on a cluster per distance, Antarctica (the slowest follower) is \
             put {} ms one way from us-east, and {} writes per `w=` are timed the same way.",
            REGIONS[leader],
            distances.iter().map(u64::to_string).collect::<Vec<_>>().join(" / "),
            writes / 2
        ),
        headers: vec!["a write waits for", "writes", "latency p50 ms", "latency p99 ms"],
        rows,
        plots: vec![
            Plot {
                title: "Write latency by the copies a write waits for, real processes".to_string(),
                x_label: "copies waited for".to_string(),
                y_label: "latency (ms)".to_string(),
                cases: cases.iter().map(|(_, w)| format!("w={w}")).collect(),
                series: vec![("p50".to_string(), p50s), ("p99".to_string(), p99s)],
            },
            Plot {
                title: "Write latency as the slowest follower moves away (real processes)".to_string(),
                x_label: "one-way latency from the leader to Antarctica (ms)".to_string(),
                y_label: "write latency p50 (ms)".to_string(),
                cases: distances.iter().map(u64::to_string).collect(),
                series: moving_cases.iter().zip(by_distance.iter()).map(|((name, _), series)| (name.to_string(), series.clone())).collect(),
            },
        ],
        holds,
        verdict: format!(
            "p50 {one:.1} ms with one copy, {majority:.1} ms with a majority, {in_sync:.1} ms with every in-sync follower, {all:.1} ms \
             with all three; as Antarctica moved from {nearest:.0} to {farthest:.0} ms away, sync writes went from {:.1} to {:.1} ms, \
             majority writes from {:.1} to {:.1} ms",
            by_distance[2][0],
            by_distance[2][by_distance[2].len() - 1],
            by_distance[1][0],
            by_distance[1][by_distance[1].len() - 1]
        ),
        not_measured: None,
    })
}

/// The value a read at `level` on `client`'s node returns for the one counter row.
fn counter(client: &mut HttpClient, level: &str) -> Result<i64, String> {
    let body = post(client, &format!("/db/query?level={level}"), &json!(["SELECT v FROM counter WHERE id = 1"]))?;
    body["results"][0]["values"][0][0].as_i64().ok_or_else(|| format!("no counter in {body}"))
}

pub fn stale_follower_reads(scale: &Scale) -> Result<Finding, String> {
    let rounds = scale.pick(10, 50);
    // Async: a write is acknowledged once the leader holds it. (Under semi-sync here the far
    // follower, 75 ms from the leader, holds each write before the 80 ms round trip to the
    // nearest one acknowledges it: a follower applies what it receives.)
    let cluster = Cluster::start("lab-real-stale", "async", &[])?;
    let leader = cluster.leader()?;
    // The follower farthest from the leader.
    let far = if REGIONS[leader] == "antarctica" { 1 } else { 2 };
    let mut writer = cluster.client(leader);
    post(&mut writer, "/db/execute?w=all", &json!(["CREATE TABLE counter (id INTEGER PRIMARY KEY, v INTEGER)", "INSERT INTO counter VALUES (1, 0)"]))?;
    let target = applied_index(&cluster.addresses[leader]).unwrap_or(0);
    while applied_index(&cluster.addresses[far]).is_none_or(|index| index < target) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let levels = ["none", "strong", "linearizable"];
    let mut reader = cluster.client(far);
    let mut stale = [0usize; 3];
    let mut latency: [Samples; 3] = Default::default();
    for value in 1..=rounds as i64 {
        post(&mut writer, "/db/execute", &json!([["UPDATE counter SET v = ? WHERE id = 1", value]]))?;
        // Right after the write is acknowledged, from the far follower, at each level.
        for (index, level) in levels.iter().enumerate() {
            let started = Instant::now();
            let seen = counter(&mut reader, level)?;
            latency[index].push(started.elapsed());
            stale[index] += usize::from(seen < value);
        }
    }
    let holds = stale[0] > 0 && stale[1] == 0 && stale[2] == 0;
    let mut rows: Vec<Vec<String>> = levels
        .iter()
        .enumerate()
        .map(|(index, level)| vec![format!("`{level}` at once"), rounds.to_string(), stale[index].to_string(), format!("{:.1}", p50_ms(&latency[index]))])
        .collect();
    // How long a follower stays behind: `none` reads made a while after the write.
    let delays = [0u64, 25, 50, 100, 200];
    let per_delay = scale.pick(5, 20);
    let mut share = Vec::new();
    let mut value = rounds as i64;
    for delay in delays {
        let mut behind = 0;
        for _ in 0..per_delay {
            value += 1;
            post(&mut writer, "/db/execute", &json!([["UPDATE counter SET v = ? WHERE id = 1", value]]))?;
            std::thread::sleep(Duration::from_millis(delay));
            behind += usize::from(counter(&mut reader, "none")? < value);
        }
        share.push(behind as f64 * 100.0 / per_delay as f64);
        rows.push(vec![format!("`none` {delay} ms after"), per_delay.to_string(), behind.to_string(), "-".to_string()]);
    }
    Ok(Finding {
        setup: format!(
            "{REAL_SETUP} Async, the leader in {}. {rounds} times: a client beside the leader sets a counter to the next value \
             and, once that write is acknowledged, a client in {} reads it at each level, `none` first. A read is stale when it \
             returns an older value. Then {per_delay} writes per delay, each read at `none` that long after its acknowledgement: \
             how long the follower stays behind. (Under semi-sync on this WAN no read here is stale: the far follower holds each \
             write before the nearer one's acknowledgement reaches the leader, and a follower applies what it receives.)",
            REGIONS[leader], REGIONS[far]
        ),
        headers: vec!["read level", "reads", "stale", "latency p50 ms"],
        rows,
        plots: vec![
            Plot {
                title: format!("Stale reads right after a write, from {} (real processes)", REGIONS[far]),
                x_label: "read level".to_string(),
                y_label: "stale reads".to_string(),
                cases: levels.iter().map(|level| level.to_string()).collect(),
                series: vec![("stale".to_string(), stale.iter().map(|count| *count as f64).collect())],
            },
            Plot {
                title: format!("Stale `none` reads from {} by time since the write", REGIONS[far]),
                x_label: "time since the write was acknowledged (ms)".to_string(),
                y_label: "stale reads (%)".to_string(),
                cases: delays.iter().map(u64::to_string).collect(),
                series: vec![("stale".to_string(), share.clone())],
            },
        ],
        holds,
        verdict: format!(
            "{} of {rounds} `none` reads were stale, {} `strong` and {} `linearizable`; `none` reads were stale {:.0}% of the time at \
             once, {:.0}% 100 ms after the write and {:.0}% 200 ms after",
            stale[0], stale[1], stale[2], share[0], share[3], share[4]
        ),
        not_measured: None,
    })
}

/// One leader crash under `ack`: writes acknowledged, of them missing once the cluster
/// has a new leader and the old one is back, and of those in the old leader's rollback
/// store.
fn crash_the_leader(ack: &str, writing_for: Duration) -> Result<(usize, usize, usize), String> {
    // The statement log: the rollback store then shows each write's SQL, so a lost write
    // can be found in it by its id.
    let mut cluster = Cluster::start("lab-real-crash", ack, &["--log-format", "statement"])?;
    let leader = cluster.leader()?;
    post(&mut cluster.client(leader), "/db/execute?w=all", &json!(["CREATE TABLE ticks (id INTEGER PRIMARY KEY)"]))?;
    let address = cluster.addresses[leader].clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut client = HttpClient::new(&address).with_timeout(Duration::from_secs(2));
            let mut acknowledged = Vec::new();
            for id in 1u64.. {
                if stop.load(std::sync::atomic::Ordering::Acquire) {
                    break;
                }
                // A literal, not a parameter: the rollback store's description shows it.
                if post(&mut client, "/db/execute", &json!([format!("INSERT INTO ticks VALUES ({id})")])).is_ok() {
                    acknowledged.push(id);
                }
            }
            acknowledged
        })
    };
    std::thread::sleep(writing_for);
    cluster.processes[leader].kill();
    stop.store(true, std::sync::atomic::Ordering::Release);
    let acknowledged = writer.join().map_err(|_| "the writer panicked".to_string())?;
    let survivors: Vec<String> = cluster.addresses.iter().enumerate().filter(|(node, _)| *node != leader).map(|(_, address)| address.clone()).collect();
    let new_leader = find_leader(&survivors, Duration::from_secs(30))?;
    cluster.processes[leader].restart()?;
    wait_ready(&cluster.addresses, Duration::from_secs(30))?;
    // The old leader is back once it holds the new leader's applied index.
    let target = applied_index(&survivors[new_leader]).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while applied_index(&cluster.addresses[leader]).is_none_or(|index| index < target) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let held = post(&mut HttpClient::new(&survivors[new_leader]), "/db/query?level=strong", &json!(["SELECT id FROM ticks"]))?;
    let present: BTreeSet<u64> = held["results"][0]["values"].as_array().into_iter().flatten().filter_map(|row| row[0].as_u64()).collect();
    let lost: Vec<u64> = acknowledged.iter().copied().filter(|id| !present.contains(id)).collect();
    let rolled_back = cluster.client(leader).get("/db/rollback").map_err(|error| format!("/db/rollback: {error}"))?.body;
    let described: String =
        rolled_back["entries"].as_array().into_iter().flatten().filter_map(|entry| entry["description"].as_str()).collect::<Vec<_>>().join("\n");
    let kept = lost.iter().filter(|id| described.contains(&format!("VALUES ({id})"))).count();
    Ok((acknowledged.len(), lost.len(), kept))
}

pub fn async_loses_writes(scale: &Scale) -> Result<Finding, String> {
    let crashes = scale.pick(1, 3);
    let writing_for = Duration::from_millis(scale.pick(1_000, 2_000) as u64);
    let modes = ["async", "semi-sync", "sync"];
    let mut rows = Vec::new();
    let mut lost_by_mode = Vec::new();
    let mut unkept = 0;
    for ack in modes {
        let (mut acknowledged, mut lost, mut kept, mut losing) = (0, 0, 0, 0);
        for _ in 0..crashes {
            let (acked, missing, in_store) = crash_the_leader(ack, writing_for)?;
            acknowledged += acked;
            lost += missing;
            kept += in_store;
            losing += usize::from(missing > 0);
        }
        unkept += lost - kept;
        lost_by_mode.push(lost);
        rows.push(vec![format!("`{ack}`"), format!("{losing} of {crashes}"), acknowledged.to_string(), lost.to_string(), kept.to_string()]);
    }
    let holds = lost_by_mode[0] > 0 && lost_by_mode[1] + lost_by_mode[2] == 0 && unkept == 0;
    Ok(Finding {
        setup: format!(
            "{REAL_SETUP} Statement log. Per ack mode, {crashes} time(s): a client beside the leader writes one row at a time for \
             {:.1} s (the cluster default `w`), the leader is SIGKILLed, a new leader is elected, and the old one restarts and \
             rejoins. A write is lost when it was acknowledged and the new leader does not hold it; the old leader's rollback \
             store (`/db/rollback`) is searched for it.",
            writing_for.as_secs_f64()
        ),
        headers: vec!["ack mode", "crashes that lost writes", "writes acknowledged", "lost", "lost ones in the old leader's rollback store"],
        rows,
        plots: vec![Plot {
            title: "Acknowledged writes lost to a leader crash, real processes".to_string(),
            x_label: "ack mode".to_string(),
            y_label: "writes lost".to_string(),
            cases: modes.iter().map(|mode| mode.to_string()).collect(),
            series: vec![("lost".to_string(), lost_by_mode.iter().map(|lost| *lost as f64).collect())],
        }],
        holds,
        verdict: format!(
            "async lost {} acknowledged write(s) ({} of them not found in a rollback store); semi-sync lost {}, sync {}",
            lost_by_mode[0], unkept, lost_by_mode[1], lost_by_mode[2]
        ),
        not_measured: None,
    })
}

pub fn leaderless_quorums(scale: &Scale) -> Result<Finding, String> {
    use crate::bench_leaderless::{measure_cluster, DELAYS_MS, PROBES};
    let quorums: &[(usize, usize)] = if scale.quick { &[(1, 1), (2, 2)] } else { &[(1, 1), (1, 2), (2, 2), (1, 3), (3, 1)] };
    let duration = Duration::from_millis(scale.pick(500, 2_000) as u64);
    let measured = measure_cluster(WAN, 3, quorums, duration, |_, _| {})?;
    let mut rows = Vec::new();
    let (mut cases, mut shares) = (Vec::new(), Vec::new());
    let (mut overlapping_stale, mut smaller_stale, mut errors) = (0, 0, 0);
    // A write that waits for a second copy crosses the WAN and back at least: faster means
    // the emulated delay was missing from a link, and the run measured no WAN at all.
    let wan = tern_server::config::WanLatency::parse(WAN)?;
    let round_trip_ms = |region: &str| {
        let nearest = REGIONS.iter().filter(|other| **other != region).map(|other| wan.one_way(region, other)).min().unwrap_or_default();
        2.0 * nearest.as_secs_f64() * 1_000.0
    };
    let mut too_fast = Vec::new();
    for figures in &measured {
        for (region, writes) in REGIONS.iter().zip(&figures.writes).filter(|_| figures.w >= 2) {
            let (p50, floor) = (p50_ms(writes), round_trip_ms(region));
            if p50 < floor {
                too_fast.push(format!("W={} in {region}: {p50:.1} ms, under the {floor:.0}-ms round trip", figures.w));
            }
        }
        let (stale, reads) = figures.stale.iter().fold((0, 0), |(stale, reads), (s, r)| (stale + s, reads + r));
        let strict = figures.r + figures.w > figures.n;
        if strict {
            overlapping_stale += stale;
        } else {
            smaller_stale += stale;
        }
        errors += figures.errors;
        let at_once = figures.stale[0];
        cases.push(format!("R={} W={}", figures.r, figures.w));
        shares.push(at_once.0 as f64 * 100.0 / at_once.1.max(1) as f64);
        let by_delay: Vec<String> = figures.stale.iter().map(|(stale, reads)| format!("{stale}/{reads}")).collect();
        let p50s = |samples: &[Samples]| samples.iter().map(|samples| format!("{:.1}", p50_ms(samples))).collect::<Vec<_>>().join(" · ");
        rows.push(vec![
            format!("R={}, W={}", figures.r, figures.w),
            if strict { "yes" } else { "no" }.to_string(),
            p50s(&figures.writes),
            p50s(&figures.reads),
            by_delay.join(" · "),
            format!("{stale} of {reads}"),
        ]);
    }
    if !too_fast.is_empty() {
        return Err(format!("the emulated WAN was not in effect: {}", too_fast.join("; ")));
    }
    let holds = overlapping_stale == 0 && smaller_stale > 0;
    Ok(Finding {
        setup: format!(
            "{REAL_SETUP} Leaderless, N=3 (every node holds every row). Per (R, W): each region writes and reads its own rows for \
             {:.1} s (the latencies), then {PROBES} probes each write a new value in one region with `w=W` and, {} ms after the acknowledgement, read \
             it in another with `r=R`. A read is stale when it does not return that value.",
            duration.as_secs_f64(),
            DELAYS_MS.iter().map(u64::to_string).collect::<Vec<_>>().join(" / ")
        ),
        headers: vec![
            "quorums",
            "R + W > N",
            "write p50 ms (us-east · eu-west · antarctica)",
            "read p50 ms (same)",
            "stale reads per delay (0 · 10 · 100 · 1000 ms)",
            "stale in all",
        ],
        rows,
        plots: vec![Plot {
            title: "Stale reads right after a write, by quorums (N=3, real processes)".to_string(),
            x_label: "read and write quorums".to_string(),
            y_label: "reads stale at 0 ms (%)".to_string(),
            cases,
            series: vec![("stale at once".to_string(), shares)],
        }],
        holds,
        verdict: format!("reads with R+W>N were stale {overlapping_stale} time(s); reads with R+W≤N {smaller_stale} ({errors} failed requests)"),
        not_measured: None,
    })
}

/// Rows of each table the conflicts experiment writes, and the pause between one
/// client's writes (so that conflicts do not saturate at one per row).
const CONFLICT_ROWS: u64 = 20;
const CONFLICT_PAUSE: Duration = Duration::from_millis(2);

/// `writers` (region indexes) update random rows of `table` for `duration`, each from its
/// own region's node; with `move_homes`, a row's home moves (fenced) every 100 ms too.
fn contend(cluster: &Cluster, table: &str, writers: &[usize], duration: Duration, move_homes: bool, seed: u64) -> Result<usize, String> {
    let end = Instant::now() + duration;
    let threads: Vec<_> = writers
        .iter()
        .map(|&region| {
            let (address, table) = (cluster.addresses[region].clone(), table.to_string());
            std::thread::spawn(move || {
                let mut client = HttpClient::new(&address).with_timeout(Duration::from_secs(10));
                let mut rng = tern_sim::rng::Rng::new(seed * 31 + region as u64);
                let mut written = 0;
                while Instant::now() < end {
                    let id = rng.range(1, CONFLICT_ROWS);
                    let sql = format!("UPDATE {table} SET v = ? WHERE id = ?");
                    if post(&mut client, "/db/execute", &json!([[sql, format!("{}-{written}", REGIONS[region]), id]])).is_ok() {
                        written += 1;
                    }
                    std::thread::sleep(CONFLICT_PAUSE);
                }
                written
            })
        })
        .collect();
    if move_homes {
        let mut client = cluster.client(0);
        let mut rng = tern_sim::rng::Rng::new(seed);
        while Instant::now() < end {
            let (id, to) = (rng.range(1, CONFLICT_ROWS), REGIONS[rng.range(0, 2) as usize]);
            let reply =
                client.post_json("/db/homes/move", &json!({"table": table, "key": [id], "to": to})).map_err(|error| format!("/db/homes/move: {error}"))?;
            if reply.status != 200 {
                return Err(format!("/db/homes/move: {} {}", reply.status, reply.body));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    threads.into_iter().map(|thread| thread.join().map_err(|_| "a writer panicked".to_string())).sum()
}

/// Once every region holds the same rows of `table`: the conflicts on record for it
/// (losing versions), per region.
fn settled_conflicts(cluster: &Cluster, table: &str) -> Result<Vec<usize>, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows: Vec<Value> = (0..REGIONS.len())
            .map(|region| {
                post(&mut cluster.client(region), "/db/query", &json!([format!("SELECT * FROM {table} ORDER BY id")]))
                    .map(|body| body["results"][0]["values"].clone())
            })
            .collect::<Result<_, _>>()?;
        let counts: Vec<usize> = (0..REGIONS.len())
            .map(|region| {
                let listed = cluster.client(region).get("/db/conflicts").map_err(|error| format!("/db/conflicts: {error}"))?;
                Ok(listed.body["conflicts"].as_array().map_or(0, |all| all.iter().filter(|conflict| conflict["table"] == table).count()))
            })
            .collect::<Result<_, String>>()?;
        if rows.iter().all(|held| *held == rows[0]) && counts.iter().all(|count| *count == counts[0]) {
            return Ok(counts);
        }
        if Instant::now() > deadline {
            return Err(format!("the regions did not converge on {table} within 30 s (conflicts {counts:?})"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn conflicts_and_home_regions(scale: &Scale) -> Result<Finding, String> {
    let duration = Duration::from_millis(scale.pick(1_500, 4_000) as u64);
    let cluster = Cluster::start_multi_leader("lab-real-conflicts", WAN)?;
    let fill = |cluster: &Cluster, table: &str, homed: bool| -> Result<(), String> {
        let create = if homed {
            format!("CREATE TABLE {table} (id INTEGER PRIMARY KEY, home TEXT NOT NULL, v TEXT)")
        } else {
            format!("CREATE TABLE {table} (id INTEGER PRIMARY KEY, v TEXT)")
        };
        // Homes dealt round the regions.
        let rows = if homed {
            format!("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<{CONFLICT_ROWS}) INSERT INTO {table} SELECT x, CASE x % 3 WHEN 0 THEN 'us-east' WHEN 1 THEN 'eu-west' ELSE 'antarctica' END, '' FROM c")
        } else {
            format!("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<{CONFLICT_ROWS}) INSERT INTO {table} SELECT x, '' FROM c")
        };
        // The rows first: once the rule holds, each region may write only its own.
        post(&mut cluster.client(0), "/db/execute?w=regions:all", &json!([create, rows]))?;
        if homed {
            let reply = cluster
                .client(0)
                .post_json("/db/homes/rule", &json!({"table": table, "column": "home"}))
                .map_err(|error| format!("/db/homes/rule: {error}"))?;
            if reply.status != 200 {
                return Err(format!("/db/homes/rule: {} {}", reply.status, reply.body));
            }
        }
        Ok(())
    };
    // (case, table, writing regions, homed, moves)
    let cases: [(&str, &str, &[usize], bool, bool); 4] = [
        ("2 regions write every row", "two_regions", &[0, 1], false, false),
        ("3 regions write every row", "three_regions", &[0, 1, 2], false, false),
        ("home regions", "homed", &[0, 1, 2], true, false),
        ("home regions, rows moving (fenced)", "moving", &[0, 1, 2], true, true),
    ];
    let mut rows = Vec::new();
    let mut counted = Vec::new();
    let mut agreed = true;
    for (number, (name, table, writers, homed, moves)) in cases.iter().enumerate() {
        fill(&cluster, table, *homed)?;
        let written = contend(&cluster, table, writers, duration, *moves, scale.seed + number as u64)?;
        let conflicts = settled_conflicts(&cluster, table)?;
        agreed &= conflicts.iter().all(|count| *count == conflicts[0]);
        counted.push(conflicts[0]);
        rows.push(vec![name.to_string(), written.to_string(), conflicts[0].to_string(), "yes".to_string()]);
    }
    drop(cluster);
    // The 3-region case again with the regions a tenth as far apart.
    let near = Cluster::start_multi_leader("lab-real-conflicts-near", NEAR_WAN)?;
    fill(&near, "near", false)?;
    let written = contend(&near, "near", &[0, 1, 2], duration, false, scale.seed + cases.len() as u64)?;
    let conflicts = settled_conflicts(&near, "near")?;
    agreed &= conflicts.iter().all(|count| *count == conflicts[0]);
    rows.push(vec![
        "3 regions write every row, a tenth as far apart (4 / 8 / 9 ms)".to_string(),
        written.to_string(),
        conflicts[0].to_string(),
        "yes".to_string(),
    ]);
    let near_conflicts = conflicts[0];
    let holds = agreed && counted[0] > 0 && counted[1] > counted[0] && counted[2] == 0 && counted[3] == 0;
    Ok(Finding {
        setup: format!(
            "{REAL_SETUP} A leader in every region, the regions exchanging writes asynchronously. Per case a table of              {CONFLICT_ROWS} rows; a client in each writing region updates random rows through its own region's node, a write              every {} ms, for {:.1} s; then the regions converge (the same rows everywhere) and the losing versions on record              (`/db/conflicts`, last writer wins) are counted. With home regions (`/db/homes/rule`) a row is written only by its              home, writes from elsewhere being forwarded there; rows move by `/db/homes/move` (fenced) every 100 ms in the last              case. The naive move of the simulated experiment cannot be made on real processes: a write of a row's home column              goes to its current home like any other write of the row.",
            CONFLICT_PAUSE.as_millis(),
            duration.as_secs_f64()
        ),
        headers: vec!["case", "writes acknowledged", "conflicts on record after converging", "same count in every region"],
        rows,
        plots: vec![Plot {
            title: "Conflicts on record after converging (real processes)".to_string(),
            x_label: "case".to_string(),
            y_label: "conflicts".to_string(),
            cases: vec!["2 regions".to_string(), "3 regions".to_string(), "homes".to_string(), "homes, moving".to_string(), "3 regions, near".to_string()],
            series: vec![("conflicts".to_string(), counted.iter().chain([&near_conflicts]).map(|count| *count as f64).collect())],
        }],
        holds,
        verdict: format!(
            "{} conflict(s) with 2 regions writing every row, {} with 3 ({near_conflicts} with the regions a tenth as far apart); {} with \
             home regions, {} with rows moving home (fenced)",
            counted[0], counted[1], counted[2], counted[3]
        ),
        not_measured: None,
    })
}
