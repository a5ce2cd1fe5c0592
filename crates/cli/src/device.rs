//! `tern device`: an offline-first device replica from the command line (issue 15): run
//! SQL against it with or without a network, sync it with a cluster, see what is pending.

use clap::Subcommand;
use std::path::PathBuf;
use tern_server::device::Device;

#[derive(clap::Args)]
pub struct DeviceArgs {
    /// The device's directory (made on first use).
    #[arg(long)]
    data: PathBuf,
    /// The device's id when it is made (default: a random one); an existing device keeps its own.
    #[arg(long)]
    id: Option<String>,
    #[command(subcommand)]
    command: DeviceCommand,
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Run SQL statements here, offline or not: reads, or writes as one transaction.
    Exec {
        /// One or more statements, each its own argument.
        #[arg(required = true)]
        sql: Vec<String>,
    },
    /// Pull what this device lacks from a node of the cluster, then push its own writes.
    Sync {
        /// Any node of a multi-leader cluster: http://HOST:PORT or HOST:PORT.
        #[arg(long)]
        to: String,
    },
    /// The device's id, its writes pending, its last sync, what it holds, its conflicts.
    Status,
    /// Conflicts on record here: each row's versions kept and lost.
    Conflicts,
    /// Settle one row's conflicts for every device and region (sent when this device
    /// syncs): keep the version shown now, or the whole row given with --values.
    Resolve {
        #[command(flatten)]
        row: crate::conflicts::RowToSettle,
    },
}

fn sql_values(json: &serde_json::Value, flag: &str) -> Result<Vec<tern_storage::SqlValue>, String> {
    let items = json.as_array().ok_or_else(|| format!("{flag} must be a JSON array"))?;
    items.iter().map(tern_storage::SqlValue::from_json).collect::<Result<_, _>>().map_err(|error| format!("{flag}: {error}"))
}

pub fn run(args: DeviceArgs) -> Result<(), String> {
    let mut device = Device::open(&args.data, args.id.as_deref())?;
    match args.command {
        DeviceCommand::Exec { sql } => {
            let statements: Vec<&str> = sql.iter().map(String::as_str).collect();
            let results = device.execute(&statements)?;
            let mut failed = None;
            for result in &results {
                if let Some(error) = &result.error {
                    failed = Some(error.clone());
                    continue;
                }
                if result.is_query {
                    println!("{}", result.columns.join("|"));
                    for row in &result.values {
                        let cells: Vec<String> = row.iter().map(|value| value.to_json().to_string()).collect();
                        println!("{}", cells.join("|"));
                    }
                } else {
                    println!("{} row(s) changed", result.rows_affected);
                }
            }
            match failed {
                Some(error) => Err(format!("{error} (nothing of this transaction was kept)")),
                None => Ok(()),
            }
        }
        DeviceCommand::Sync { to } => {
            let report = device.sync(&to)?;
            if report.snapshot {
                println!("device {} was behind what the cluster keeps of its log: it took a snapshot, its own unsynced writes kept", device.id());
            }
            println!(
                "device {} synced with {to}: pulled {} write(s), pushed {} in {} ms ({} bytes sent, {} received)",
                device.id(),
                report.pulled,
                report.pushed,
                report.took.as_millis(),
                report.bytes_sent,
                report.bytes_received
            );
            Ok(())
        }
        DeviceCommand::Status => {
            let status = device.status()?;
            println!("device {}", status.id);
            println!("  writes made here: {} ({} not yet pushed to the cluster)", status.own_writes, status.pending);
            match (status.last_sync_ms, &status.last_server) {
                (Some(at), Some(server)) => println!("  last sync: with {server}, {} s ago", tern_server::device::unix_ms().saturating_sub(at) / 1000),
                _ => println!("  last sync: never"),
            }
            println!("  holds: {}", if status.holds.iter().next().is_none() { "nothing yet".to_string() } else { status.holds.to_string() });
            println!("  conflicted rows: {}", status.conflicted_rows);
            Ok(())
        }
        DeviceCommand::Resolve { row: crate::conflicts::RowToSettle { table, key, values } } => {
            let key = sql_values(&crate::conflicts::key_values(&key), "--key")?;
            let values = values.map(|values| crate::conflicts::json_array("--values", &values).and_then(|json| sql_values(&json, "--values"))).transpose()?;
            device.resolve(&table, &key, values)?;
            println!("settled on device {}; every device and region follows once it syncs", device.id());
            Ok(())
        }
        DeviceCommand::Conflicts => {
            let tables = device.conflicts()?;
            let count: usize = tables.iter().map(|table| table.rows.len() + table.unique.len()).sum();
            println!("{count} conflicted row(s) on device {}", device.id());
            for table in &tables {
                for (key, conflicts) in &table.rows {
                    let key: Vec<String> = key.iter().map(|value| value.to_json().to_string()).collect();
                    for conflict in conflicts {
                        let show = |values: &Option<Vec<tern_storage::SqlValue>>| {
                            values
                                .as_ref()
                                .map_or("deleted".to_string(), |values| values.iter().map(|value| value.to_json().to_string()).collect::<Vec<_>>().join(", "))
                        };
                        println!("  {} [{}]", table.table, key.join(", "));
                        println!("    kept: {} from {}: {}", conflict.winner.0, conflict.winner.0.region, show(&conflict.winner.2));
                        println!("    lost: {} from {}: {}", conflict.loser.0, conflict.loser.0.region, show(&conflict.loser.2));
                    }
                }
                for clash in &table.unique {
                    println!("  {} {:?}: taken out, {:?} holds a UNIQUE value it claims", table.table, clash.key, clash.held_by);
                }
            }
            Ok(())
        }
    }
}
