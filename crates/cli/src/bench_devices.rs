//! `tern bench --devices`: an offline device's sync cost. A real `tern server` process
//! (multi-leader, one region); per count, a device makes that many writes offline (one
//! row each), syncs them up, and a second, fresh device pulls them down: the time and
//! the bytes each way.

use crate::cluster::{scratch_dir, start_processes_in_regions, wait_ready};
use serde_json::json;
use std::time::{Duration, Instant};
use tern_server::client::HttpClient;
use tern_server::device::Device;

/// One count's figures.
struct DevicePoint {
    writes: usize,
    made: Duration,
    push: tern_server::device::SyncReport,
    pull: tern_server::device::SyncReport,
}

pub fn run(counts: &[usize]) -> Result<(), String> {
    let data_dir = scratch_dir("bench-devices")?;
    let processes = start_processes_in_regions(&["us-east"], true, &data_dir, &["--topology".to_string(), "multi-leader".to_string()])?;
    let server = processes[0].http.clone();
    wait_ready(std::slice::from_ref(&server), Duration::from_secs(30))?;
    let reply = HttpClient::new(&server)
        .post_json("/db/execute", &json!(["CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT NOT NULL)"]))
        .map_err(|error| format!("cannot create the table: {error}"))?;
    if reply.status != 200 {
        return Err(format!("cannot create the table: {}", reply.body));
    }
    println!("tern bench --devices: one tern server process (multi-leader, one region) on loopback; a device writes N rows offline");
    println!("(one write each, a 100-byte note), syncs them up; a fresh device pulls them down");
    let body = "n".repeat(100);
    let mut points = Vec::new();
    for (round, count) in counts.iter().enumerate() {
        let writer_dir = data_dir.join(format!("writer-{round}"));
        let reader_dir = data_dir.join(format!("reader-{round}"));
        let mut writer = Device::open(&writer_dir, Some(&format!("writer-{round}")))?;
        writer.sync(&server)?;
        let started = Instant::now();
        for number in 0..*count {
            let statement = tern_storage::Statement {
                sql: "INSERT INTO notes VALUES (?, ?)".to_string(),
                params: tern_storage::Params::Positional(vec![
                    tern_storage::SqlValue::Text(format!("{round}-{number}")),
                    tern_storage::SqlValue::Text(body.clone()),
                ]),
            };
            writer.execute_statements(vec![statement])?;
        }
        let made = started.elapsed();
        let push = writer.sync(&server)?;
        let mut reader = Device::open(&reader_dir, Some(&format!("reader-{round}")))?;
        let pull = reader.sync(&server)?;
        println!("  {count} writes: made offline in {} ms, pushed in {} ms, pulled in {} ms", made.as_millis(), push.took.as_millis(), pull.took.as_millis());
        points.push(DevicePoint { writes: *count, made, push, pull });
    }
    println!("\n{:>10}{:>14}{:>12}{:>16}{:>12}{:>16}{:>16}", "writes", "made (ms)", "push (ms)", "push bytes", "pull (ms)", "pull bytes", "pulled writes");
    for point in &points {
        println!(
            "{:>10}{:>14}{:>12}{:>16}{:>12}{:>16}{:>16}",
            point.writes,
            point.made.as_millis(),
            point.push.took.as_millis(),
            point.push.bytes_sent,
            point.pull.took.as_millis(),
            point.pull.bytes_received,
            point.pull.pulled
        );
    }
    println!("(pull bytes and writes include the table and every earlier round's writes: a fresh device pulls everything)");
    drop(processes);
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(())
}
