//! `tern demo --topology multi-leader`: the same three regions, each leading itself.
//! Customers order from their own region and are answered there; the demo measures
//! per-region write latency and how long a write takes to reach the other regions, shows
//! a product edited in two regions at once (both versions on record, then settled), and
//! cuts antarctica off while its customers keep ordering, then heals and checks that
//! every region holds the same tables.

use crate::cluster::scratch_dir;
use crate::demo::DemoArgs;
use crate::stats::{millis, Samples};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_server::client::{encode_query_value, HttpClient};
use tern_server::{Node, WanLatency};

const REGIONS: [(&str, &str); 3] = [("n1", "us-east"), ("n2", "eu-west"), ("n3", "antarctica")];
const PRODUCTS: u64 = 20;

/// Between one customer's orders.
const THINK_TIME: Duration = Duration::from_millis(20);

pub fn run(args: &DemoArgs, wan: WanLatency) -> Result<(), String> {
    let data_dir = scratch_dir("demo-multi")?;
    let logs = crate::log_to_file(&data_dir.join("nodes.log")).map(std::path::Path::to_path_buf);
    let ack: tern_core::AckMode = args.ack.into();
    let (runtime, nodes, addresses) =
        crate::demo::start_demo_regions(tern_core::Topology::MultiLeader, tern_core::LogFormat::Row, ack, &wan, &data_dir, args.tls)?;
    println!("tern demo: 3 regions, multi-leader (each region leads itself and takes writes), row log, --ack {}", ack.name());
    crate::demo::print_wan(&wan);
    for ((id, region), address) in REGIONS.iter().zip(&addresses) {
        println!("  {id} {region:<11} leader of {region:<11} {}", crate::demo::url(address));
    }
    println!("data: {}", data_dir.display());
    crate::demo::print_logs(logs.as_deref());
    println!("dashboard: {}/ (live while the drill runs)", crate::demo::url(&addresses[0]));
    crate::demo::print_pg(&nodes);
    crate::cluster::wait_ready(&addresses, Duration::from_secs(30))?;
    setup_schema(&addresses[0])?;

    let deadline = Instant::now() + Duration::from_secs(args.duration);
    println!(
        "\nrunning the workload for {} s: {} customers per region place orders in their own region (default ack, {} ms between \
         a customer's orders), and a probe times how long each region's writes take to be readable in the others (session tokens)...",
        args.duration,
        args.customers,
        THINK_TIME.as_millis()
    );
    let workers: Vec<_> = addresses
        .iter()
        .enumerate()
        .flat_map(|(region, address)| {
            (0..args.customers).map(move |customer| {
                let address = address.clone();
                std::thread::spawn(move || place_orders(&address, REGIONS[region].1, customer, deadline))
            })
        })
        .collect();
    let delays = measure_delays(&addresses, deadline);
    let mut writes: Vec<Samples> = (0..REGIONS.len()).map(|_| Samples::default()).collect();
    let mut errors = vec![0u64; REGIONS.len()];
    for (index, worker) in workers.into_iter().enumerate() {
        let (samples, failed) = worker.join().map_err(|_| "a customer thread panicked".to_string())?;
        writes[index / args.customers].extend(samples);
        errors[index / args.customers] += failed;
    }
    println!("\nwrite latency p50/p99 in ms, answered in the customer's own region:");
    for (((_, region), samples), failed) in REGIONS.iter().zip(&writes).zip(&errors) {
        if samples.is_empty() {
            println!("  {region:<12}{:>14}   (no order acknowledged, {failed} errors)", "-");
            continue;
        }
        println!("  {region:<12}{:>14}   ({} orders, {failed} errors)", samples.p50_p99(), samples.len());
    }
    println!("\ncross-region delay p50/p99 in ms (write acknowledged in one region -> readable in another):");
    for ((from, to), samples) in &delays {
        let one_way = wan.one_way(from, to).as_millis();
        println!("  {from:>10} -> {to:<11}{:>14}   (one-way WAN {one_way} ms)", samples.p50_p99());
    }

    conflict_scene(&nodes, &addresses)?;
    home_scene(&addresses)?;
    partition_scene(&runtime, &nodes, &addresses)?;
    crate::demo::serve_until_done(&runtime, args.exit_after, &addresses[2]);
    runtime.shutdown_timeout(Duration::from_secs(1));
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(())
}

fn post(address: &str, path: &str, body: &Value) -> Result<Value, String> {
    let reply = HttpClient::new(address).post_json(path, body).map_err(|error| format!("{path}: {error}"))?;
    if reply.status != 200 || reply.body["results"].as_array().is_some_and(|results| results.iter().any(|result| !result["error"].is_null())) {
        return Err(format!("{path} failed ({}): {}", reply.status, reply.body));
    }
    Ok(reply.body)
}

fn setup_schema(us_east: &str) -> Result<(), String> {
    let mut statements = vec![
        json!("CREATE TABLE IF NOT EXISTS products (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL NOT NULL)"),
        // Order ids are left to SQLite: each region picks rowids no other region picks.
        json!("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, product_id INTEGER NOT NULL, region TEXT NOT NULL)"),
    ];
    for product in 1..=PRODUCTS {
        statements.push(json!(["INSERT OR IGNORE INTO products VALUES (?, ?, ?)", product, format!("product {product}"), 5.0 + product as f64]));
    }
    // w=regions:all: answered once every region holds the schema and the catalogue.
    post(us_east, "/db/execute?transaction&w=regions:all", &Value::Array(statements))?;
    Ok(())
}

fn place_orders(address: &str, region: &str, customer: usize, deadline: Instant) -> (Samples, u64) {
    let mut client = HttpClient::new(address).with_timeout(Duration::from_secs(5));
    let (mut samples, mut errors) = (Samples::default(), 0);
    let mut number = 0u64;
    while Instant::now() < deadline {
        number += 1;
        let body = json!([[
            "INSERT INTO orders (customer, product_id, region) VALUES (?, ?, ?)",
            format!("{region}-customer-{customer}"),
            number % PRODUCTS + 1,
            region
        ]]);
        let started = Instant::now();
        match client.post_json("/db/execute", &body) {
            Ok(reply) if reply.status == 200 && reply.body["results"][0]["error"].is_null() => samples.push(started.elapsed()),
            Ok(reply) => {
                if errors == 0 {
                    eprintln!("an order failed in {region}: {}", reply.body);
                }
                errors += 1;
            }
            Err(_) => errors += 1,
        }
        // A customer, not a load generator: the latency measured is the path's, not a queue's.
        std::thread::sleep(THINK_TIME);
    }
    (samples, errors)
}

type Delays = Vec<((&'static str, &'static str), Samples)>;

/// Writes a probe row in each region in turn and times how long until every other region
/// answers a session read carrying the write's token.
fn measure_delays(addresses: &[String], deadline: Instant) -> Delays {
    let mut delays: Delays = Vec::new();
    for (_, from_region) in REGIONS {
        for (_, to_region) in REGIONS.iter().filter(|(_, to_region)| *to_region != from_region) {
            delays.push(((from_region, to_region), Samples::default()));
        }
    }
    while Instant::now() < deadline {
        for (from, (_, from_region)) in REGIONS.iter().enumerate() {
            let body = json!([["INSERT INTO orders (customer, product_id, region) VALUES ('probe', 1, ?)", from_region]]);
            let Ok(reply) = HttpClient::new(&addresses[from]).post_json("/db/execute", &body) else { continue };
            let acknowledged = Instant::now();
            let Some(token) = reply.body["token"].as_str().map(str::to_string) else { continue };
            for (to, (_, to_region)) in REGIONS.iter().enumerate().filter(|(to, _)| *to != from) {
                let path = format!("/db/query?level=session&after={}&timeout=10s&q={}", encode_query_value(&token), encode_query_value("SELECT 1"));
                if let Ok(reply) = HttpClient::new(&addresses[to]).get(&path) {
                    if reply.status == 200 {
                        if let Some((_, samples)) = delays.iter_mut().find(|((a, b), _)| a == from_region && b == to_region) {
                            samples.push(acknowledged.elapsed());
                        }
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    delays
}

/// Cuts `region` off from the other regions (`heal`: joins them again).
fn cut_off(nodes: &[Arc<Node>], region: usize, heal: bool) {
    for (index, node) in nodes.iter().enumerate() {
        let peers = match (heal, index == region) {
            (true, _) => Default::default(),
            (false, true) => nodes.iter().filter(|other| other.config.id != node.config.id).map(|other| other.config.id.clone()).collect(),
            (false, false) => std::iter::once(nodes[region].config.id.clone()).collect(),
        };
        node.cut_off_from(peers);
    }
}

/// Polls every `step` for up to 30 s until `condition` holds; how long it took.
fn time_until(mut condition: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if condition() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

fn rows(address: &str, sql: &str) -> Value {
    let path = format!("/db/query?level=none&q={}", encode_query_value(sql));
    HttpClient::new(address).get(&path).map(|reply| reply.body["results"][0]["values"].clone()).unwrap_or(Value::Null)
}

fn conflict_scene(nodes: &[Arc<Node>], addresses: &[String]) -> Result<(), String> {
    println!("\na conflict: product 1's price is changed in us-east and in eu-west while eu-west is cut off (policy lww)...");
    cut_off(nodes, 1, false);
    post(&addresses[0], "/db/execute", &json!(["UPDATE products SET price = 19.99 WHERE id = 1"]))?;
    std::thread::sleep(Duration::from_millis(2));
    post(&addresses[1], "/db/execute", &json!(["UPDATE products SET price = 24.50 WHERE id = 1"]))?;
    println!(
        "  us-east shows {}, eu-west shows {}",
        rows(&addresses[0], "SELECT price FROM products WHERE id = 1"),
        rows(&addresses[1], "SELECT price FROM products WHERE id = 1")
    );
    cut_off(nodes, 1, true);
    let agreed = time_until(|| {
        let shown: Vec<Value> = addresses.iter().map(|address| rows(address, "SELECT price FROM products WHERE id = 1")).collect();
        shown.iter().all(|price| *price == shown[0]) && addresses.iter().all(|address| conflict_count(address) == 1)
    });
    let Some(agreed) = agreed else { return Err("the regions did not agree on product 1 within 30 s".to_string()) };
    println!(
        "  healed: all 3 regions show {} within {} ms, and each keeps the losing version on record:",
        rows(&addresses[2], "SELECT price FROM products WHERE id = 1"),
        agreed.as_millis()
    );
    let listed = HttpClient::new(&addresses[2]).get("/db/conflicts").map_err(|error| error.to_string())?;
    for conflict in listed.body["conflicts"].as_array().into_iter().flatten() {
        for side in ["kept", "lost"] {
            let version = &conflict[side];
            println!("    {side}: {} from {}: {}", version["write"].as_str().unwrap_or("?"), version["region"].as_str().unwrap_or("?"), version["values"]);
        }
    }
    post(&addresses[2], "/db/conflicts/resolve", &json!({"table": "products", "key": [1], "values": [1, "product 1", 22.0]}))?;
    let settled = time_until(|| {
        addresses.iter().all(|address| conflict_count(address) == 0 && rows(address, "SELECT price FROM products WHERE id = 1") == json!([[22.0]]))
    });
    match settled {
        Some(took) => println!("  settled from antarctica (price 22.0): every region shows it and has no conflict left {} ms later", took.as_millis()),
        None => println!("  WARNING: the resolution did not reach every region within 30 s"),
    }
    Ok(())
}

/// A customer homed in us-east, written from antarctica (sent to us-east) and from
/// us-east, then moved to antarctica, where her writes become local; no conflict opens.
fn home_scene(addresses: &[String]) -> Result<(), String> {
    println!("\nconflict avoidance: customer 42's home is us-east; she writes from antarctica, then moves there...");
    post(&addresses[0], "/db/execute?w=regions:all", &json!(["CREATE TABLE IF NOT EXISTS customers (id INTEGER PRIMARY KEY, name TEXT, home TEXT)"]))?;
    HttpClient::new(&addresses[0])
        .post_json("/db/homes/rule", &json!({"table": "customers", "column": "home"}))
        .map_err(|error| format!("home rule: {error}"))
        .and_then(|reply| if reply.status == 200 { Ok(()) } else { Err(format!("home rule: {}", reply.body)) })?;
    post(&addresses[0], "/db/execute?w=regions:all", &json!(["INSERT OR REPLACE INTO customers VALUES (42, 'Ann', 'us-east')"]))?;
    let timed = |address: &str, count: usize| -> Result<Samples, String> {
        let mut samples = Samples::default();
        for number in 0..count {
            let started = Instant::now();
            post(address, "/db/execute", &json!([["UPDATE customers SET name = ? WHERE id = 42", format!("Ann {number}")]]))?;
            samples.push(started.elapsed());
        }
        Ok(samples)
    };
    let from_antarctica = timed(&addresses[2], 20)?;
    let at_home = timed(&addresses[0], 20)?;
    println!("  writes to her row from antarctica, sent to us-east: p50/p99 {} ms; from us-east itself: {} ms", from_antarctica.p50_p99(), at_home.p50_p99());
    let started = Instant::now();
    let moved = HttpClient::new(&addresses[2]).post_json("/db/homes/move", &json!({"table": "customers", "key": [42], "to": "antarctica"}));
    match moved {
        Ok(reply) if reply.status == 200 => {
            println!("  moved to antarctica (made in us-east, held by every region) in {} ms", started.elapsed().as_millis());
        }
        Ok(reply) => return Err(format!("the move failed: {}", reply.body)),
        Err(error) => return Err(format!("the move failed: {error}")),
    }
    let after = timed(&addresses[2], 20)?;
    let conflicts: usize = addresses.iter().map(|address| conflict_count(address)).sum();
    println!("  her writes from antarctica are now local: p50/p99 {} ms; conflicts in all regions: {conflicts}", after.p50_p99());
    Ok(())
}

fn conflict_count(address: &str) -> usize {
    HttpClient::new(address).get("/db/conflicts").ok().and_then(|reply| reply.body["conflicts"].as_array().map(Vec::len)).unwrap_or(usize::MAX)
}

fn partition_scene(runtime: &tokio::runtime::Runtime, nodes: &[Arc<Node>], addresses: &[String]) -> Result<(), String> {
    println!("\nantarctica is cut off from both other regions; its customers keep ordering, and so do us-east's...");
    cut_off(nodes, 2, false);
    let mut latencies = Samples::default();
    for number in 0..50 {
        for (address, region) in [(&addresses[2], "antarctica"), (&addresses[0], "us-east")] {
            let started = Instant::now();
            post(
                address,
                "/db/execute",
                &json!([["INSERT INTO orders (customer, product_id, region) VALUES ('offline-drill', ?, ?)", number % PRODUCTS + 1, region]]),
            )?;
            if region == "antarctica" {
                latencies.push(started.elapsed());
            }
        }
    }
    println!("  antarctica took 50 orders while cut off (p50/p99 {} ms); us-east took 50", latencies.p50_p99());
    cut_off(nodes, 2, true);
    let count = "SELECT count(*) FROM orders WHERE customer = 'offline-drill'";
    let converged = time_until(|| addresses.iter().all(|address| rows(address, count) == json!([[100]])));
    match converged {
        Some(took) => println!("  healed: every region holds all 100 orders {} ms later", millis(took)),
        None => println!("  WARNING: the regions did not converge within 30 s"),
    }
    let sums = runtime.block_on(async {
        let mut sums = Vec::new();
        for node in nodes {
            sums.push(node.checksums().await);
        }
        sums
    });
    if sums.iter().all(|sum| *sum == sums[0]) {
        println!("\nregions converged: identical table checksums in all 3 regions.");
    } else {
        println!("\nWARNING: regions differ: {sums:?}");
    }
    Ok(())
}
