//! `tern bench --sizing`: the costs a user sizes a cluster by, on real processes:
//! resident memory per node idle and under load, how fast a follower catches up (from
//! the log and from a snapshot), read throughput as nodes are added, and write
//! throughput as the value grows.

use crate::cluster::{scratch_dir, start_processes, wait_ready, ServerProcess};
use crate::stats::{millis, Samples};
use serde_json::json;
use std::time::{Duration, Instant};
use tern_server::client::HttpClient;

/// Rows written to make a follower fall behind.
const CATCH_UP_WRITES: u64 = 20_000;
/// Rows per write request while it is behind (batched, so the setup is quick).
const CATCH_UP_BATCH: u64 = 100;
/// `--log-retain` of the snapshot case.
const SNAPSHOT_RETAIN: u64 = 50;

pub fn run(duration: Duration) -> Result<(), String> {
    println!("tern bench --sizing: real tern server processes on loopback, {} s per point", duration.as_secs());
    memory_and_catch_up(duration)?;
    reads_as_nodes_are_added(duration)?;
    writes_as_values_grow(duration)?;
    Ok(())
}

/// `count` server processes in a fresh scratch directory, once every one is ready: the
/// directory, the processes and their HTTP addresses.
pub(crate) fn start_ready(purpose: &str, count: usize, extra: &[String]) -> Result<(std::path::PathBuf, Vec<ServerProcess>, Vec<String>), String> {
    let data_dir = scratch_dir(purpose)?;
    let processes = start_processes(count, &data_dir, extra)?;
    let addresses: Vec<String> = processes.iter().map(|process| process.http.clone()).collect();
    wait_ready(&addresses, Duration::from_secs(30))?;
    Ok((data_dir, processes, addresses))
}

/// Resident memory of a process, from /proc (Linux), in MiB.
fn rss_mib(process: &ServerProcess) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", process.child.id())).ok()?;
    let kib: f64 = status.lines().find(|line| line.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Bytes a process has handed to the storage layer so far (Linux `/proc/<pid>/io`: the
/// page-cache pages it dirtied, which the kernel then writes to the disk).
fn disk_write_bytes(process: &ServerProcess) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{}/io", process.child.id())).ok()?;
    io.lines().find_map(|line| line.strip_prefix("write_bytes:"))?.trim().parse().ok()
}

/// What every node together has handed to the disk so far (`None` where /proc cannot say).
fn cluster_disk_write_bytes(processes: &[ServerProcess]) -> Option<u64> {
    processes.iter().map(disk_write_bytes).sum()
}

/// Disk bytes the whole cluster wrote per client write, in KiB, between two readings.
fn disk_kib_per_write(before: Option<u64>, after: Option<u64>, writes: u64) -> String {
    match (before, after) {
        (Some(before), Some(after)) if writes > 0 => format!("{:.1}", after.saturating_sub(before) as f64 / writes as f64 / 1024.0),
        _ => "-".to_string(),
    }
}

fn rss_line(processes: &[ServerProcess]) -> String {
    processes
        .iter()
        .enumerate()
        .map(|(index, process)| format!("n{} {}", index + 1, rss_mib(process).map_or("?".to_string(), |mib| format!("{mib:.0} MiB"))))
        .collect::<Vec<_>>()
        .join(", ")
}

fn post(client: &mut HttpClient, path: &str, body: &serde_json::Value) -> Result<(), String> {
    let reply = client.post_json(path, body).map_err(|error| format!("{path}: {error}"))?;
    if reply.status != 200 || !reply.body["results"][0]["error"].is_null() {
        return Err(format!("{path}: {} {}", reply.status, reply.body));
    }
    Ok(())
}

pub(crate) fn applied_index(address: &str) -> Option<u64> {
    HttpClient::new(address).with_timeout(Duration::from_secs(2)).get("/status").ok()?.body["node"]["applied_index"].as_u64()
}

/// Bytes of a node's data directory (database, WAL, and whatever else it keeps).
fn directory_bytes(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path).map_or(0, |entries| {
        entries
            .flatten()
            .map(|entry| match entry.metadata() {
                Ok(metadata) if metadata.is_dir() => directory_bytes(&entry.path()),
                Ok(metadata) => metadata.len(),
                Err(_) => 0,
            })
            .sum()
    })
}

/// How a restarted follower caught up.
pub struct CatchUp {
    /// Rows and log entries it had missed.
    pub rows: u64,
    pub entries: u64,
    /// How long writing them took on the leader.
    pub written_in: Duration,
    /// From its restart to holding the leader's applied index.
    pub took: Duration,
    /// Growth of its data directory meanwhile.
    pub bytes: u64,
    /// Whether it then held the leader's rows (count and total bytes of the table).
    pub same_rows: bool,
    /// Snapshots it installed meanwhile (its `tern_snapshots_installed_total`).
    pub snapshots: u64,
}

/// The sum of a counter over its labels, from a node's `/metrics`.
fn counter(address: &str, name: &str) -> u64 {
    let Ok((200, text)) = HttpClient::new(address).request_raw("GET", "/metrics", None) else { return 0 };
    String::from_utf8_lossy(&text)
        .lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A 3-node cluster started with `extra` flags: n3 is killed, `rows` rows of 256 B are
/// written in requests of `batch` rows (one log entry each), n3 is restarted and timed
/// until it holds the leader's applied index. `before_kill` runs on the fresh cluster
/// first (its processes and HTTP addresses).
pub fn catch_up(
    rows: u64,
    batch: u64,
    extra: &[String],
    before_kill: impl FnOnce(&[ServerProcess], &[String]) -> Result<(), String>,
) -> Result<CatchUp, String> {
    let (data_dir, mut processes, addresses) = start_ready("catch-up", 3, extra)?;
    let outcome = (|| {
        let mut leader = HttpClient::new(&addresses[0]);
        post(&mut leader, "/db/execute?w=all", &json!(["CREATE TABLE bench (id INTEGER PRIMARY KEY, v TEXT NOT NULL)"]))?;
        before_kill(&processes, &addresses)?;
        processes[2].kill();
        let value = "x".repeat(256);
        let started = Instant::now();
        for request in 0..rows / batch {
            let statements: Vec<serde_json::Value> =
                (0..batch).map(|offset| json!(["INSERT OR REPLACE INTO bench (id, v) VALUES (?, ?)", 1_000_000 + request * batch + offset, value])).collect();
            post(&mut leader, "/db/execute", &serde_json::Value::Array(statements))?;
        }
        let written_in = started.elapsed();
        let target = applied_index(&addresses[0]).ok_or("the leader does not answer /status")?;
        let bytes_before = directory_bytes(&data_dir.join("n3"));
        let restarted = Instant::now();
        processes[2].restart()?;
        while applied_index(&addresses[2]).is_none_or(|index| index < target) {
            if restarted.elapsed() > Duration::from_secs(120) {
                return Err(format!("n3 did not catch up (flags {extra:?}) within 120 s"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let took = restarted.elapsed();
        let bytes = directory_bytes(&data_dir.join("n3")).saturating_sub(bytes_before);
        let table = |address: &str| {
            HttpClient::new(address)
                .get("/db/query?level=none&q=SELECT%20count(*),%20sum(length(v))%20FROM%20bench")
                .ok()
                .map(|reply| reply.body["results"][0]["values"].clone())
        };
        let same_rows = table(&addresses[0]).is_some_and(|leader| Some(leader) == table(&addresses[2]));
        let snapshots = counter(&addresses[2], "tern_snapshots_installed_total");
        Ok(CatchUp { rows, entries: rows / batch, written_in, took, bytes, same_rows, snapshots })
    })();
    drop(processes);
    let _ = std::fs::remove_dir_all(&data_dir);
    outcome
}

/// Memory idle, under 32 clients of writes, and a follower's catch-up from the log and
/// from a snapshot (a cluster keeping few log entries).
fn memory_and_catch_up(duration: Duration) -> Result<(), String> {
    println!("\nresident memory and catch-up (3 nodes, semi-sync, row log, 256-byte values):");
    // Each write request is one log entry: keeping 50 of the 200 puts a follower that
    // missed them all past the log, so it gets a snapshot.
    for (label, retain) in [("from the log", 1_000_000u64), ("from a snapshot", SNAPSHOT_RETAIN)] {
        let measure_memory = |processes: &[ServerProcess], addresses: &[String]| -> Result<(), String> {
            if retain <= SNAPSHOT_RETAIN {
                return Ok(());
            }
            std::thread::sleep(Duration::from_secs(1));
            println!("  idle: {}", rss_line(processes));
            let (point, during) = std::thread::scope(|scope| {
                let writing = scope.spawn(|| crate::bench::measure(&addresses[0], "semi-sync", "majority", 32, 256, duration));
                std::thread::sleep(duration / 2 + Duration::from_secs(1));
                let during = rss_line(processes);
                (writing.join(), during)
            });
            let point = point.map_err(|_| "the load thread panicked".to_string())?;
            println!("  under 32 clients of writes ({:.0} writes/s): {during}", point.writes_per_second());
            Ok(())
        };
        // A 1 MiB tail cache: what n3 missed is read from the log, or is gone from it.
        let extra = ["--log-retain".to_string(), retain.to_string(), "--tail-cache-mib".to_string(), "1".to_string()];
        let caught = catch_up(CATCH_UP_WRITES, CATCH_UP_BATCH, &extra, measure_memory)?;
        let megabytes = caught.bytes as f64 / 1e6;
        let how = if retain <= SNAPSHOT_RETAIN { " (the leader's log keeps 50 entries: a snapshot)" } else { "" };
        println!(
            "  catch-up {label}: {} rows of 256 B ({} entries, written in {} ms) applied by a restarted follower in {} ms: {:.0} rows/s, {:.1} MB/s of data directory growth ({:.1} MB){}{}; {} snapshot(s) installed",
            caught.rows,
            caught.entries,
            caught.written_in.as_millis(),
            caught.took.as_millis(),
            caught.rows as f64 / caught.took.as_secs_f64(),
            megabytes / caught.took.as_secs_f64(),
            megabytes,
            how,
            if caught.same_rows { "" } else { "; ITS ROWS DIFFER FROM THE LEADER'S" },
            caught.snapshots
        );
    }
    Ok(())
}

/// `level=none` reads by key, 16 clients spread over every node, for 1 to 5 nodes.
fn reads_as_nodes_are_added(duration: Duration) -> Result<(), String> {
    println!("\nlevel=none reads by key (16 clients spread over the nodes; every node on these same 2 cores):");
    println!("| nodes | reads/s | p50 ms | p99 ms |\n|---|---|---|---|");
    for nodes in 1..=5usize {
        let (data_dir, processes, addresses) = start_ready("bench-reads", nodes, &[])?;
        fill_kv(&addresses, READ_ROWS)?;
        let latency = read_by_key(&addresses, 16, READ_ROWS, Duration::from_secs(1), duration)?;
        println!(
            "| {nodes} | {:.0} | {} | {} |",
            latency.len() as f64 / duration.as_secs_f64(),
            latency.percentile(50.0).map_or("-".into(), millis),
            latency.percentile(99.0).map_or("-".into(), millis)
        );
        drop(processes);
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    Ok(())
}

/// Rows of the table the read measurements read by key.
pub(crate) const READ_ROWS: u64 = 10_000;

/// Creates `kv (k INTEGER PRIMARY KEY, v TEXT)` with `rows` rows of 256 bytes through the
/// first address (the leader), and waits until every node has applied them (`w=all`
/// waits for the voters to hold them, not to apply them).
pub(crate) fn fill_kv(addresses: &[String], rows: u64) -> Result<(), String> {
    let mut leader = HttpClient::new(&addresses[0]);
    // Idempotent, and retried: a cluster just started may still be settling its leader.
    let fill = json!([
        "CREATE TABLE IF NOT EXISTS kv (k INTEGER PRIMARY KEY, v TEXT)",
        format!("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<{rows}) INSERT OR REPLACE INTO kv SELECT x, substr(hex(zeroblob(128)),1,256) FROM c")
    ]);
    let mut attempts = 0;
    while let Err(error) = post(&mut leader, "/db/execute?w=all", &fill) {
        attempts += 1;
        if attempts == 10 {
            return Err(error);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let target = applied_index(&addresses[0]).unwrap_or(0);
    for address in addresses {
        let deadline = Instant::now() + Duration::from_secs(30);
        while applied_index(address).is_none_or(|index| index < target) {
            if Instant::now() > deadline {
                return Err(format!("{address} did not apply the kv rows within 30 s"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}

/// `clients` threads in this process, spread round robin over `addresses`, each reading
/// `kv` by key (`level=none`, keys 1..=`rows`) as fast as it is answered; the latency of
/// each answered read after `warmup`, over `duration`.
pub(crate) fn read_by_key(addresses: &[String], clients: usize, rows: u64, warmup: Duration, duration: Duration) -> Result<Samples, String> {
    let warmup_end = Instant::now() + warmup;
    let end = warmup_end + duration;
    let workers: Vec<_> = (0..clients)
        .map(|worker| {
            let address = addresses[worker % addresses.len()].clone();
            std::thread::spawn(move || {
                let mut client = HttpClient::new(&address);
                let mut latency = Samples::default();
                let mut key = worker as u64 * 7919;
                loop {
                    let started = Instant::now();
                    if started >= end {
                        break;
                    }
                    key = (key * 48_271 + 1) % rows;
                    let ok =
                        client.post_json("/db/query?level=none", &json!([["SELECT v FROM kv WHERE k = ?", key + 1]])).is_ok_and(|reply| reply.status == 200);
                    if ok && started >= warmup_end {
                        latency.push(started.elapsed());
                    }
                }
                latency
            })
        })
        .collect();
    let mut latency = Samples::default();
    for worker in workers {
        latency.extend(worker.join().map_err(|_| "a read client panicked".to_string())?);
    }
    Ok(latency)
}

/// Semi-sync writes of one row, 1 and 32 clients, values of 64 B to 64 KiB.
fn writes_as_values_grow(duration: Duration) -> Result<(), String> {
    println!("\nsemi-sync single-row INSERTs to the leader as the value grows (3 nodes, row log):");
    // The disk column is what the three nodes together wrote to the disk per client write
    // (WAL, checkpoints, log): SQLite's WAL holds whole pages, so it is many times the value.
    println!(
        "| value | 1 client writes/s (p50 ms) | 32 clients writes/s (p50 ms) | 32 clients MB/s | disk KiB per write, 1 / 32 clients (3 nodes) |\n|---|---|---|---|---|"
    );
    let (data_dir, processes, addresses) = start_ready("bench-values", 3, &[])?;
    post(&mut HttpClient::new(&addresses[0]), "/db/execute?w=all", &json!(["CREATE TABLE bench (id INTEGER PRIMARY KEY, v TEXT NOT NULL)"]))?;
    for size in [64usize, 1024, 16 * 1024, 64 * 1024] {
        let before_one = cluster_disk_write_bytes(&processes);
        let one = crate::bench::measure(&addresses[0], "semi-sync", "majority", 1, size, duration);
        let before_many = cluster_disk_write_bytes(&processes);
        let many = crate::bench::measure(&addresses[0], "semi-sync", "majority", 32, size, duration);
        let after_many = cluster_disk_write_bytes(&processes);
        let label = if size >= 1024 { format!("{} KiB", size / 1024) } else { format!("{size} B") };
        println!(
            "| {label} | {:.0} ({}) | {:.0} ({}) | {:.1} | {} / {} |",
            one.writes_per_second(),
            one.percentile_ms(50.0),
            many.writes_per_second(),
            many.percentile_ms(50.0),
            many.writes_per_second() * size as f64 / 1e6,
            disk_kib_per_write(before_one, before_many, one.writes()),
            disk_kib_per_write(before_many, after_many, many.writes()),
        );
    }
    drop(processes);
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::disk_kib_per_write;

    #[test]
    fn disk_bytes_per_write_are_the_difference_over_the_writes() {
        assert_eq!(disk_kib_per_write(Some(1 << 20), Some(3 << 20), 512), "4.0");
        assert_eq!(disk_kib_per_write(None, Some(3 << 20), 512), "-", "unknown before");
        assert_eq!(disk_kib_per_write(Some(1 << 20), Some(3 << 20), 0), "-", "no writes");
        assert_eq!(disk_kib_per_write(Some(3 << 20), Some(1 << 20), 10), "0.0", "a counter that went back never underflows");
    }
}
