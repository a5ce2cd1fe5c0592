//! `tern conflicts`: multi-leader's conflicts on record, settling one, and a table's
//! conflict policy, over HTTP (changes go to the region's leader).

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
        #[arg(long)]
        table: String,
        /// The row's key values as a JSON array, in column order: '["pen"]', '[1]'.
        #[arg(long)]
        key: String,
        /// The row to keep as a JSON array of every column's value (default: the version shown).
        #[arg(long)]
        values: Option<String>,
    },
    /// Set how concurrent writes of a table's rows are settled, in every region: lww (the
    /// default: the newest write shows), column-merge (each column's newest write), or
    /// keep-both (the newest shows, every other version waits for a person). Set it
    /// before the table's rows are written: a row keeps the policy it was first written under.
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

fn json_array(flag: &str, text: &str) -> Result<Value, String> {
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

/// `tern rehome`: moves one row of a homed table to another home region.
#[derive(clap::Args)]
pub struct RehomeArgs {
    /// HTTP address of any node; the move is made at the row's current home.
    #[arg(long, default_value = "127.0.0.1:4001")]
    http: String,
    #[arg(long)]
    table: String,
    /// The row's key values as a JSON array, in column order: '[42]'.
    #[arg(long)]
    key: String,
    /// The region that becomes the row's home.
    #[arg(long)]
    to: String,
}

pub fn run_rehome(args: RehomeArgs) -> Result<(), String> {
    let body = json!({ "table": args.table, "key": json_array("--key", &args.key)?, "to": args.to });
    let started = std::time::Instant::now();
    let reply =
        tern_server::client::HttpClient::new(&args.http).post_json("/db/homes/move", &body).map_err(|error| format!("cannot reach {}: {error}", args.http))?;
    if reply.status != 200 {
        return Err(format!("the move was refused ({}): {}", reply.status, reply.body["error"].as_str().unwrap_or(&reply.body.to_string())));
    }
    println!(
        "{} {} now has its home in {} (every region holds the move; {} ms; write {})",
        args.table,
        args.key,
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
        ConflictsCommand::Resolve { http, table, key, values } => {
            let mut body = json!({ "table": table, "key": json_array("--key", &key)? });
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
