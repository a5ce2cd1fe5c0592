//! `tern conflicts`: multi-leader's conflicts on record, settling one, and a table's
//! conflict policy; `tern homes` and `tern rehome`: home regions. Over HTTP (changes go to
//! the region's leader).

use crate::admin::{get, post_json_to_leader};
use clap::Subcommand;
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum ConflictsCommand {
    /// List every losing version on record in the node's region, beside the version shown.
    List {
        /// HTTP address of any node.
        #[arg(long, default_value = "127.0.0.1:4001")]
        http: String,
    },
    /// Settle the conflicts of one row in every region: keep the version shown now, or
    /// the whole row given with --values.
    Resolve {
        /// HTTP address of any node of a region; the change goes to its leader.
        #[arg(long, default_value = "127.0.0.1:4001")]
        http: String,
        #[command(flatten)]
        row: RowToSettle,
    },
    /// Set how concurrent writes of a table's rows are settled, in every region: lww (the
    /// default: the newest write shows), column-merge (each column's newest write), or
    /// keep-both (the newest shows, every other version waits for a person). Set it
    /// before the table's rows are written: a row keeps the policy it was first written under.
    /// Leaderless: siblings (every read by key returns every concurrent version) or lww.
    Policy {
        /// HTTP address of any node of a region; the change goes to its leader.
        #[arg(long, default_value = "127.0.0.1:4001")]
        http: String,
        #[arg(long)]
        table: String,
        #[arg(long)]
        policy: String,
    },
}

/// The row whose conflicts are settled, and what it keeps.
#[derive(clap::Args)]
pub struct RowToSettle {
    #[arg(long)]
    pub table: String,
    /// The row's key: one value ('pen', 42) or a JSON array in column order ('["pen", 1]').
    #[arg(long)]
    pub key: String,
    /// The row to keep as a JSON array of every column's value (default: the version shown).
    #[arg(long)]
    pub values: Option<String>,
}

pub(crate) fn json_array(flag: &str, text: &str) -> Result<Value, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(value @ Value::Array(_)) => Ok(value),
        Ok(_) => Err(format!("{flag} must be a JSON array, like '[\"pen\"]'")),
        Err(error) => Err(format!("{flag} is not JSON ({error}): write it like '[\"pen\", 1]'")),
    }
}

fn version(version: &Value) -> String {
    format!(
        "{} from {} at {} µs: {}",
        version["write"].as_str().unwrap_or("?"),
        version["region"].as_str().unwrap_or("?"),
        version["time_us"],
        if version["values"].is_null() { "deleted".to_string() } else { version["values"].to_string() }
    )
}

/// A key given on the command line: a JSON array of the key's values ('[42]', '["pen", 1]'),
/// one JSON value (42), or else one text value (pen).
pub(crate) fn key_values(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(array @ Value::Array(_)) => array,
        Ok(value @ (Value::Number(_) | Value::String(_))) => json!([value]),
        _ => json!([text]),
    }
}

/// `tern rehome`: moves one row of a homed table, or one key of the home directory, to
/// another home region.
#[derive(clap::Args)]
pub struct RehomeArgs {
    /// HTTP address of any node; the move is made at the row's current home.
    #[arg(long, default_value = "127.0.0.1:4001")]
    http: String,
    /// The homed table (homed by a column); left out: a key of the home directory.
    #[arg(long)]
    table: Option<String>,
    /// The row's key: one value (42, pen) or a JSON array in column order ('["pen", 1]').
    #[arg(long)]
    key: String,
    /// The region that becomes the row's home.
    #[arg(long)]
    to: String,
}

/// `tern homes`: home regions.
#[derive(Subcommand)]
pub enum HomesCommand {
    /// Per homed table, how many rows each region is home to, and moves in progress.
    Show {
        /// HTTP address of any node.
        #[arg(long, default_value = "127.0.0.1:4001")]
        http: String,
    },
    /// Give a table's rows a home region, in every region: the one their --column names,
    /// or with --directory, the one the home directory (tern_homes) gives the key their
    /// --column holds (so one customer's rows in many tables move together).
    Rule {
        /// HTTP address of any node of a region; the change goes to its leader.
        #[arg(long, default_value = "127.0.0.1:4001")]
        http: String,
        #[arg(long)]
        table: String,
        #[arg(long)]
        column: String,
        #[arg(long)]
        directory: bool,
    },
}

pub fn run_homes(command: HomesCommand) -> Result<(), String> {
    match command {
        HomesCommand::Show { http } => {
            let body = get(&http, "/db/homes")?;
            println!("homes as region {} sees them", body["region"].as_str().unwrap_or("?"));
            for table in body["tables"].as_array().into_iter().flatten() {
                let counts: Vec<String> = table["rows_per_home"].as_object().into_iter().flatten().map(|(region, count)| format!("{region} {count}")).collect();
                println!("  {}: {}", table["table"].as_str().unwrap_or("?"), counts.join(", "));
            }
            for moving in body["moves_in_progress"].as_array().into_iter().flatten() {
                println!(
                    "  moving {} {} from {} to {} for {:.0} ms",
                    moving["table"].as_str().unwrap_or("?"),
                    moving["key"],
                    moving["from"].as_str().unwrap_or("(no home)"),
                    moving["to"].as_str().unwrap_or("?"),
                    moving["for_ms"].as_f64().unwrap_or(0.0)
                );
            }
            Ok(())
        }
        HomesCommand::Rule { http, table, column, directory } => {
            let body = json!({ "table": table, "column": column, "directory": directory });
            let (leader, reply) = post_json_to_leader(&http, "/db/homes/rule", &body)?;
            let by = if directory { format!("the home directory's entry for its {column}") } else { format!("its column {column}") };
            println!(
                "{table}: each row's home is the region {by} names, set by the leader at {leader} (position {})",
                reply["position"].as_str().unwrap_or("?")
            );
            Ok(())
        }
    }
}

pub fn run_rehome(args: RehomeArgs) -> Result<(), String> {
    let key = key_values(&args.key);
    let mut body = json!({ "key": key, "to": args.to });
    if let Some(table) = &args.table {
        body["table"] = json!(table);
    }
    let started = std::time::Instant::now();
    let reply = tern_server::client::HttpClient::new(&args.http)
        .with_env_credentials()
        .post_json("/db/homes/move", &body)
        .map_err(|error| format!("cannot reach {}: {error}", args.http))?;
    if reply.status != 200 {
        return Err(format!("the move was refused ({}): {}", reply.status, reply.body["error"].as_str().unwrap_or(&reply.body.to_string())));
    }
    println!(
        "{} {} now has its home in {} (every region holds the move; {} ms; write {})",
        args.table.as_deref().unwrap_or("directory key"),
        key,
        args.to,
        started.elapsed().as_millis(),
        reply.body["token"].as_str().unwrap_or("?")
    );
    Ok(())
}

pub fn run_conflicts(command: ConflictsCommand) -> Result<(), String> {
    match command {
        ConflictsCommand::List { http } => {
            let body = get(&http, "/db/conflicts")?;
            let conflicts = body["conflicts"].as_array().cloned().unwrap_or_default();
            println!("{} conflicts on record in region {}", conflicts.len(), body["region"].as_str().unwrap_or("?"));
            for conflict in conflicts {
                if conflict["kind"] == "unique" {
                    println!(
                        "  {} {}: taken out of the table, {} holds a UNIQUE value it claims",
                        conflict["table"].as_str().unwrap_or("?"),
                        conflict["key"],
                        conflict["held_by"]
                    );
                    println!("    its row: {}", conflict["values"]);
                    continue;
                }
                let column = conflict["column"].as_str().map(|column| format!(" column {column}")).unwrap_or_default();
                println!("  {} {}{column}", conflict["table"].as_str().unwrap_or("?"), conflict["key"]);
                println!("    kept: {}", version(&conflict["kept"]));
                println!("    lost: {}", version(&conflict["lost"]));
            }
            Ok(())
        }
        ConflictsCommand::Resolve { http, row: RowToSettle { table, key, values } } => {
            let mut body = json!({ "table": table, "key": key_values(&key) });
            if let Some(values) = values {
                body["values"] = json_array("--values", &values)?;
            }
            let (leader, reply) = post_json_to_leader(&http, "/db/conflicts/resolve", &body)?;
            println!("settled by the leader at {leader} (position {}); every region follows", reply["position"].as_str().unwrap_or("?"));
            Ok(())
        }
        ConflictsCommand::Policy { http, table, policy } => {
            let (leader, reply) = post_json_to_leader(&http, "/db/conflicts/policy", &json!({ "table": table, "policy": policy }))?;
            println!("{table}: policy {policy}, set by the leader at {leader} (position {}); every region follows", reply["position"].as_str().unwrap_or("?"));
            Ok(())
        }
    }
}

/// `tern repair`: anti-entropy of one leaderless node with every peer, now.
#[derive(clap::Args)]
pub struct RepairArgs {
    /// HTTP address of the node to repair (it compares with every peer).
    #[arg(long, default_value = "127.0.0.1:4001")]
    http: String,
}

pub fn run_repair(args: RepairArgs) -> Result<(), String> {
    let started = std::time::Instant::now();
    let reply = tern_server::client::HttpClient::new(&args.http)
        .with_env_credentials()
        .post_json("/db/repair", &json!({}))
        .map_err(|error| format!("cannot reach {}: {error}", args.http))?;
    if reply.status != 200 {
        return Err(format!("the repair was refused ({}): {}", reply.status, reply.body["error"].as_str().unwrap_or(&reply.body.to_string())));
    }
    let report = &reply.body;
    let number = |name: &str| report[name].as_u64().unwrap_or(0);
    println!(
        "compared Merkle trees with {} peer(s) in {:.1} s: {} already in sync, {} range(s) differed, {} row version(s) received, {} sent",
        number("peers_compared"),
        started.elapsed().as_secs_f64(),
        number("peers_in_sync"),
        number("ranges_differing"),
        number("keys_received"),
        number("keys_sent")
    );
    if let Some(unreachable) = report["peers_unreachable"].as_array().filter(|peers| !peers.is_empty()) {
        let names: Vec<&str> = unreachable.iter().filter_map(|peer| peer.as_str()).collect();
        println!("not reachable, not compared: {} (run tern repair again once they are up)", names.join(", "));
    }
    Ok(())
}
