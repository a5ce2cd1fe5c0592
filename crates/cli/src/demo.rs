//! `tern demo`: an in-process cluster in three regions with emulated WAN latency, an
//! e-commerce workload from customers in every region, and a report of what it cost.

use crate::args::{AckArg, LogFormatArg, TopologyArg};
use crate::cluster::{scratch_dir, start_in_process, ClusterSpec, Member};
use crate::stats::{millis, Samples};
use clap::Args;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tern_server::client::{encode_query_value, HttpClient};
use tern_server::WanLatency;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// single-leader: one leader (us-east) for the three regions, with a failover drill.
    /// multi-leader: every region leads itself; shows local write latency, cross-region
    /// delay, a conflict and how it is settled, and a region cut off that keeps working.
    #[arg(long, value_enum, default_value_t = TopologyArg::SingleLeader)]
    topology: TopologyArg,
    /// After the report, keep serving this many seconds and exit with code 0 (default: until Ctrl-C).
    #[arg(long)]
    pub(crate) exit_after: Option<u64>,
    /// How long the workload runs, seconds.
    #[arg(long, default_value_t = 8)]
    pub(crate) duration: u64,
    /// Concurrent customers per region.
    #[arg(long, default_value_t = 4)]
    pub(crate) customers: usize,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormatArg::Row)]
    log_format: LogFormatArg,
    /// Default ack mode (the workload also sets w= per write).
    #[arg(long, value_enum, default_value_t = AckArg::SemiSync)]
    pub(crate) ack: AckArg,
    /// One-way WAN latency per region pair, milliseconds.
    #[arg(long, default_value = "us-east:eu-west=40,us-east:antarctica=75,eu-west:antarctica=90")]
    wan: String,
    /// Skip the failover drill (cutting the leader's region off) after the workload.
    #[arg(long)]
    no_failover_drill: bool,
    /// TLS everywhere: certificates made for the three nodes (in the data directory's
    /// certs/), mutual TLS between them, HTTPS, and TLS for the PostgreSQL door.
    #[arg(long)]
    pub(crate) tls: bool,
}

/// A node's URL as a person would paste it (addresses under --tls carry `https://`).
pub(crate) fn url(address: &str) -> String {
    if address.starts_with("https://") {
        address.to_string()
    } else {
        format!("http://{address}")
    }
}

const REGIONS: [(&str, &str); 3] = [("n1", "us-east"), ("n2", "eu-west"), ("n3", "antarctica")];
const READ_LEVELS: [&str; 5] = ["none", "bounded", "session", "weak", "strong"];
const WRITE_ACKS: [(&str, &str); 3] = [("1", "w=1 (async)"), ("majority", "w=majority (semi-sync)"), ("all", "w=all (sync)")];
const PRODUCTS: u64 = 50;

/// What one region's customers measured.
#[derive(Default)]
struct RegionReport {
    reads: BTreeMap<&'static str, Samples>,
    writes: BTreeMap<&'static str, Samples>,
    stale_reads: u64,
    stale_checks: u64,
    errors: u64,
}

pub fn run(args: DemoArgs) -> Result<(), String> {
    let wan = WanLatency::parse(&args.wan)?;
    if args.topology == TopologyArg::MultiLeader {
        if args.log_format != LogFormatArg::Row {
            return Err("--topology multi-leader needs --log-format row: regions settle conflicts per row".to_string());
        }
        return crate::demo_multi::run(&args, wan);
    }
    let data_dir = scratch_dir("demo")?;
    let logs = crate::log_to_file(&data_dir.join("nodes.log")).map(std::path::Path::to_path_buf);
    let (runtime, nodes, addresses) =
        start_demo_regions(tern_core::Topology::SingleLeader, args.log_format.into(), args.ack.into(), &wan, &data_dir, args.tls)?;
    let (log_format, ack): (tern_core::LogFormat, tern_core::AckMode) = (args.log_format.into(), args.ack.into());
    println!("tern demo: 3 nodes, single leader in us-east, {} log, --ack {}", log_format.name(), ack.name());
    print_wan(&wan);
    for ((id, region), address) in REGIONS.iter().zip(&addresses) {
        let role = if *id == "n1" { "leader" } else { "follower" };
        println!("  {id} {region:<11} {role:<9} leader priority {}  {}", home_priority(id), url(address));
    }
    println!("data: {}", data_dir.display());
    print_logs(logs.as_deref());
    println!("dashboard: {}/ (live while the drill runs)", url(&addresses[0]));
    if args.tls {
        println!("TLS everywhere: certificates in {}/certs (curl --cacert {}/certs/ca.pem; TERN_CA for tern's tools)", data_dir.display(), data_dir.display());
    }
    print_pg(&nodes);
    crate::cluster::wait_ready(&addresses, Duration::from_secs(30))?;

    setup_schema(&addresses[0])?;
    println!(
        "\nrunning the workload for {} s: {} customers per region browse products (reads at levels {}) and place orders \
         (writes with w=1, majority, all), each from their own region's node...",
        args.duration,
        args.customers,
        READ_LEVELS.join(", ")
    );

    let stop = Arc::new(AtomicBool::new(false));
    let lag_samples: Arc<Mutex<BTreeMap<String, Samples>>> = Arc::default();
    let monitor = {
        let stop = stop.clone();
        let lag_samples = lag_samples.clone();
        let leader = addresses[0].clone();
        std::thread::spawn(move || monitor_lag(&leader, &stop, &lag_samples))
    };
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let mut workers = Vec::new();
    for (region_number, address) in addresses.iter().enumerate() {
        for customer in 0..args.customers {
            let address = address.clone();
            let region = REGIONS[region_number].1;
            let seed = (region_number * 1000 + customer + 1) as u64;
            workers.push((region_number, std::thread::spawn(move || customer_session(&address, region, seed, deadline))));
        }
    }
    let mut reports: Vec<RegionReport> = (0..REGIONS.len()).map(|_| RegionReport::default()).collect();
    for (region_number, worker) in workers {
        let report = worker.join().map_err(|_| "a customer thread panicked".to_string())?;
        let total = &mut reports[region_number];
        for (level, samples) in report.reads {
            total.reads.entry(level).or_default().extend(samples);
        }
        for (ack, samples) in report.writes {
            total.writes.entry(ack).or_default().extend(samples);
        }
        total.stale_reads += report.stale_reads;
        total.stale_checks += report.stale_checks;
        total.errors += report.errors;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = monitor.join();
    print_report(&reports, &lag_samples.lock().expect("lag lock"));
    verify_convergence(&runtime, &nodes);
    if !args.no_failover_drill {
        failover_drill(&runtime, &nodes, &addresses)?;
        verify_convergence(&runtime, &nodes);
    }

    serve_until_done(&runtime, args.exit_after, &addresses[2]);
    runtime.shutdown_timeout(Duration::from_secs(1));
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(())
}

/// The demo's three regions (n1 us-east, n2 eu-west, n3 antarctica), started in this
/// process: its runtime, the nodes and their HTTP addresses.
pub(crate) fn start_demo_regions(
    topology: tern_core::Topology,
    log_format: tern_core::LogFormat,
    ack: tern_core::AckMode,
    wan: &WanLatency,
    data_dir: &std::path::Path,
    tls: bool,
) -> Result<(tokio::runtime::Runtime, Vec<Arc<tern_server::Node>>, Vec<String>), String> {
    let spec = ClusterSpec {
        topology,
        // Under single-leader, us-east is the company's home: leadership returns there.
        members: REGIONS
            .iter()
            .map(|(id, region)| {
                let leader_priority = if topology == tern_core::Topology::SingleLeader { home_priority(id) } else { 1 };
                Member { id: id.to_string(), region: region.to_string(), leader_priority }
            })
            .collect(),
        log_format,
        ack,
        wan: wan.clone(),
        data_dir: data_dir.to_path_buf(),
        tls,
    };
    let runtime = crate::runtime()?;
    let nodes = runtime.block_on(start_in_process(&spec))?;
    let scheme = if tls { "https://" } else { "" };
    let addresses = nodes.iter().map(|node| format!("{scheme}{}", node.http_addr.lock().expect("http addr lock"))).collect();
    Ok((runtime, nodes, addresses))
}

/// The demo's leader priorities: 2 for n1 (us-east, the company's home), 1 elsewhere.
fn home_priority(id: &str) -> u8 {
    if id == "n1" {
        2
    } else {
        1
    }
}

/// How to reach each node with a PostgreSQL client.
/// Where the nodes' log lines went (or that they stay on stderr, as TERN_LOG asked).
pub(crate) fn print_logs(path: Option<&std::path::Path>) {
    match path {
        Some(path) => println!("node logs: {} (TERN_LOG=info to see them here instead)", path.display()),
        None => println!("node logs: on stderr (TERN_LOG is set)"),
    }
}

pub(crate) fn print_pg(nodes: &[Arc<tern_server::Node>]) {
    for node in nodes {
        if let Some(address) = node.config.pg_addr {
            println!("  psql -h {} -p {} -U tern   # {} ({}), PostgreSQL protocol", address.ip(), address.port(), node.config.id, node.config.region);
        }
    }
}

pub(crate) fn print_wan(wan: &WanLatency) {
    println!(
        "emulated one-way WAN latency: us-east<->eu-west {} ms, us-east<->antarctica {} ms, eu-west<->antarctica {} ms",
        wan.one_way("us-east", "eu-west").as_millis(),
        wan.one_way("us-east", "antarctica").as_millis(),
        wan.one_way("eu-west", "antarctica").as_millis()
    );
}

/// After the report: serve `exit_after` seconds more, or until Ctrl-C.
pub(crate) fn serve_until_done(runtime: &tokio::runtime::Runtime, exit_after: Option<u64>, example: &str) {
    match exit_after {
        Some(seconds) => {
            println!("\nserving for {seconds} more s (--exit-after)...");
            runtime.block_on(async {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(seconds)) => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            });
        }
        None => {
            println!(
                "\nthe cluster keeps serving; try: curl -s{} '{}/db/query?level=none&q=SELECT+count(*)+FROM+orders'",
                if example.starts_with("https://") { " --cacert <data>/certs/ca.pem" } else { "" },
                url(example)
            );
            println!("press Ctrl-C to stop.");
            runtime.block_on(async {
                let _ = tokio::signal::ctrl_c().await;
            });
        }
    }
}

fn setup_schema(leader: &str) -> Result<(), String> {
    let mut client = HttpClient::new(leader);
    let mut statements = vec![
        json!("CREATE TABLE IF NOT EXISTS products (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL NOT NULL, stock INTEGER NOT NULL)"),
        json!("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, product_id INTEGER NOT NULL REFERENCES products(id), qty INTEGER NOT NULL, region TEXT NOT NULL, placed_at TEXT NOT NULL)"),
    ];
    for product in 1..=PRODUCTS {
        statements.push(json!([
            "INSERT OR IGNORE INTO products (id, name, price, stock) VALUES (?, ?, ?, ?)",
            product,
            format!("product {product}"),
            5.0 + product as f64,
            1_000_000
        ]));
    }
    let reply = client.post_json("/db/execute?transaction&w=all", &Value::Array(statements)).map_err(|error| format!("schema setup: {error}"))?;
    if reply.status != 200 {
        return Err(format!("schema setup failed: {}", reply.body));
    }
    Ok(())
}

/// A tiny deterministic generator (xorshift), so runs with the same flags are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn customer_session(address: &str, region: &'static str, seed: u64, deadline: Instant) -> RegionReport {
    let mut client = HttpClient::new(address);
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut report = RegionReport::default();
    let mut position = String::from("0.0");
    let customer = format!("{region}-customer-{seed}");
    let mut iteration = 0usize;
    while Instant::now() < deadline {
        iteration += 1;
        let product = rng.next() % PRODUCTS + 1;
        let level = READ_LEVELS[iteration % READ_LEVELS.len()];
        let sql = encode_query_value(&format!("SELECT id, name, price, stock FROM products WHERE id = {product}"));
        let path = match level {
            "bounded" => format!("/db/query?level=bounded&max_lag_ms=100&q={sql}"),
            "session" => format!("/db/query?level=session&after={position}&q={sql}"),
            other => format!("/db/query?level={other}&q={sql}"),
        };
        let started = Instant::now();
        match client.get(&path) {
            Ok(reply) if reply.status == 200 => report.reads.entry(level).or_default().push(started.elapsed()),
            _ => report.errors += 1,
        }

        if iteration.is_multiple_of(3) {
            let (w, label) = WRITE_ACKS[(iteration / 3) % WRITE_ACKS.len()];
            let body = json!([
                ["INSERT INTO orders (customer, product_id, qty, region, placed_at) VALUES (?, ?, 1, ?, datetime('now'))", customer, product, region],
                ["UPDATE products SET stock = stock - 1 WHERE id = ?", product]
            ]);
            let started = Instant::now();
            let reply = client.post_json(&format!("/db/execute?transaction&w={w}"), &body);
            let Ok(reply) = reply.map_err(|_| report.errors += 1) else { continue };
            if reply.status != 200 {
                report.errors += 1;
                continue;
            }
            report.writes.entry(label).or_default().push(started.elapsed());
            if let Some(written) = reply.body["position"].as_str() {
                position = written.to_string();
            }
            // Read the order back at level=none from this region's node right away: on a
            // follower it may not be there yet. That is a stale read.
            let order_id = reply.body["results"][0]["last_insert_id"].as_i64().unwrap_or(0);
            let check = encode_query_value(&format!("SELECT count(*) FROM orders WHERE id = {order_id}"));
            if let Ok(reply) = client.get(&format!("/db/query?level=none&q={check}")) {
                report.stale_checks += 1;
                if reply.body["results"][0]["values"][0][0].as_i64() != Some(1) {
                    report.stale_reads += 1;
                }
            }
        }
    }
    report
}

/// Samples each follower's lag from the leader's `/status` every 100 ms.
fn monitor_lag(leader: &str, stop: &AtomicBool, samples: &Mutex<BTreeMap<String, Samples>>) {
    let mut client = HttpClient::new(leader);
    while !stop.load(Ordering::Relaxed) {
        if let Ok(reply) = client.get("/status") {
            if let Some(followers) = reply.body["replication"]["followers"].as_array() {
                let mut samples = samples.lock().expect("lag lock");
                for follower in followers {
                    let id = follower["id"].as_str().unwrap_or("?").to_string();
                    let lag_ms = follower["lag_ms"].as_f64().unwrap_or(0.0);
                    samples.entry(id).or_default().push(Duration::from_secs_f64(lag_ms / 1000.0));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn print_report(reports: &[RegionReport], lag: &BTreeMap<String, Samples>) {
    println!("\nread latency p50/p99 in ms, by read level (served where the level allows):");
    print!("  {:<12}", "region");
    for level in READ_LEVELS {
        print!("{level:>14}");
    }
    println!();
    for ((_, region), report) in REGIONS.iter().zip(reports) {
        print!("  {region:<12}");
        for level in READ_LEVELS {
            print!("{:>14}", report.reads.get(level).map_or("-".to_string(), Samples::p50_p99));
        }
        println!();
    }
    println!("\nwrite latency p50/p99 in ms, by ack (writes from followers are forwarded to us-east):");
    print!("  {:<12}", "region");
    for (_, label) in WRITE_ACKS {
        print!("{label:>24}");
    }
    println!();
    for ((_, region), report) in REGIONS.iter().zip(reports) {
        print!("  {region:<12}");
        for (_, label) in WRITE_ACKS {
            print!("{:>24}", report.writes.get(label).map_or("-".to_string(), Samples::p50_p99));
        }
        println!();
    }
    println!("\nreplication, per region:");
    println!("  {:<12}{:>22}{:>34}{:>10}", "region", "follower lag p50/max", "stale reads (own order at none)", "errors");
    for ((id, region), report) in REGIONS.iter().zip(reports) {
        let lag_text = match lag.get(*id) {
            Some(samples) => format!("{}/{} ms", samples.percentile(50.0).map_or("-".into(), millis), samples.percentile(100.0).map_or("-".into(), millis)),
            None => "leader".to_string(),
        };
        let stale = format!("{} of {}", report.stale_reads, report.stale_checks);
        println!("  {region:<12}{lag_text:>22}{stale:>34}{:>10}", report.errors);
    }
}

fn region_of(id: &str) -> &'static str {
    REGIONS.iter().find(|(known, _)| *known == id).map_or("?", |(_, region)| *region)
}

/// Polls `condition` every 5 ms for up to 30 s; the time it took, if it came true.
fn time_until(started: Instant, mut condition: impl FnMut() -> bool) -> Option<Duration> {
    while started.elapsed() < Duration::from_secs(30) {
        if condition() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// Cuts the leader's region off from the others (every frame between them dropped, as
/// a network partition would), while a customer in eu-west keeps ordering; reports how
/// long the election took, when writes resumed and when the old leader stopped writing;
/// then heals, shows the old leader rejoin as a follower, and leadership return to it
/// (its priority is the highest) once it has been caught up for the settle time.
fn failover_drill(runtime: &tokio::runtime::Runtime, nodes: &[Arc<tern_server::Node>], addresses: &[String]) -> Result<(), String> {
    let Some(old) = nodes.iter().position(|node| node.published().is_leader) else {
        return Err("failover drill: no leader to cut off".to_string());
    };
    let old_id = nodes[old].config.id.clone();
    let old_epoch = nodes[old].published().epoch;
    println!(
        "
failover drill: cutting {} ({old_id}, the leader) off from both other regions while a customer in another region keeps ordering...",
        region_of(&old_id)
    );
    let writer_node = (old + 1) % nodes.len();
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let writer = {
        let (stop, acknowledged, address) = (stop.clone(), acknowledged.clone(), addresses[writer_node].clone());
        std::thread::spawn(move || {
            let mut client = HttpClient::new(&address).with_timeout(Duration::from_secs(3));
            let mut refused = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let body = json!([["INSERT INTO orders (customer, product_id, qty, region, placed_at) VALUES ('drill', 1, 1, 'drill', datetime('now'))"]]);
                match client.post_json("/db/execute?w=majority", &body) {
                    Ok(reply) if reply.status == 200 => acknowledged.lock().expect("drill lock").push(Instant::now()),
                    _ => {
                        refused += 1;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
            refused
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let cut_at = Instant::now();
    for (index, node) in nodes.iter().enumerate() {
        let peers = if index == old {
            nodes.iter().map(|other| other.config.id.clone()).filter(|id| *id != old_id).collect()
        } else {
            std::iter::once(old_id.clone()).collect()
        };
        node.cut_off_from(peers);
    }
    let stopped_writing = time_until(cut_at, || !nodes[old].published().accepting_writes);
    let mut new_leader = None;
    let elected = time_until(cut_at, || {
        new_leader = nodes.iter().position(|node| node.published().is_leader && node.published().accepting_writes && node.config.id != old_id);
        new_leader.is_some()
    });
    let resumed = time_until(cut_at, || acknowledged.lock().expect("drill lock").iter().any(|at| *at > cut_at));
    let (Some(new), Some(elected), Some(resumed)) = (new_leader, elected, resumed) else {
        stop.store(true, Ordering::Relaxed);
        let _ = writer.join();
        return Err("failover drill: no new leader accepted writes within 30 s".to_string());
    };
    let new_id = nodes[new].config.id.clone();
    let new_epoch = nodes[new].published().epoch;
    let ms = |duration: Option<Duration>| duration.map_or("never".to_string(), |duration| format!("{} ms", duration.as_millis()));
    println!(
        "  {} ({old_id}) stopped accepting writes {} after the cut (its lease ran out; it cannot reach a majority)",
        region_of(&old_id),
        ms(stopped_writing)
    );
    println!("  {} ({new_id}) was elected leader of epoch {new_epoch} {} after the cut", region_of(&new_id), ms(Some(elected)));
    println!("  the first order placed after the cut was acknowledged {} after it", ms(Some(resumed)));
    std::thread::sleep(Duration::from_millis(500));
    for node in nodes {
        node.cut_off_from(Default::default());
    }
    let healed_at = Instant::now();
    let rejoined = time_until(healed_at, || {
        let published = nodes[old].published();
        !published.is_leader && published.epoch > old_epoch && published.leader.as_deref() == Some(new_id.as_str())
    });
    let rolled_back = runtime.block_on(nodes[old].rollback_count());
    println!(
        "  healed: {} ({old_id}) rejoined as a follower of {new_id} {} after the heal; it rolled back {rolled_back} entries the new leader lacked",
        region_of(&old_id),
        ms(rejoined)
    );
    let returned = time_until(healed_at, || nodes[old].published().is_leader && nodes[old].published().accepting_writes);
    stop.store(true, Ordering::Relaxed);
    let refused = writer.join().map_err(|_| "the drill's writer panicked".to_string())?;
    match returned {
        Some(returned) => println!(
            "  leadership returned to {} ({old_id}, leader priority {}) {} after the heal: {new_id} handed it over once {old_id} had been caught up for 3 s",
            region_of(&old_id),
            home_priority(&old_id),
            ms(Some(returned))
        ),
        None => return Err(format!("failover drill: leadership did not return to {} ({old_id}) within 30 s of the heal", region_of(&old_id))),
    }
    println!(
        "  {} orders acknowledged during the drill; {refused} attempts refused or timed out while no leader could take them",
        acknowledged.lock().expect("drill lock").len()
    );
    Ok(())
}

fn verify_convergence(runtime: &tokio::runtime::Runtime, nodes: &[Arc<tern_server::Node>]) {
    // Give followers a moment to apply the last async writes, then compare content.
    let sums = runtime.block_on(async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut sums = Vec::new();
        for node in nodes {
            sums.push(node.checksums().await);
        }
        sums
    });
    let first = &sums[0];
    if sums.iter().all(|sum| sum == first) {
        let orders = first.as_ref().ok().and_then(|tables| tables.iter().find(|(name, _, _)| name == "orders").map(|(_, rows, _)| *rows)).unwrap_or(0);
        println!("\nreplicas converged: identical table checksums on all 3 nodes ({orders} orders).");
    } else {
        println!("\nWARNING: replicas differ: {sums:?}");
    }
}
