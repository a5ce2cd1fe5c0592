//! Claim 12 of the issue: offline devices. A device (`tern device`: a local SQLite copy
//! that takes writes offline) is away for some hours while its team edits the same rows
//! on the server; then it syncs. Real processes: one `tern server` (multi-leader, one
//! region) and devices opened in the lab's own process. Hours are emulated: what a span
//! means is how many edits each side made in it.

use super::plot::Plot;
use super::{Finding, Scale};
use crate::cluster::{scratch_dir, start_processes_in_regions, wait_ready};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;
use tern_server::client::HttpClient;
use tern_server::device::Device;
use tern_sim::rng::Rng;
use tern_storage::{Params, SqlValue, Statement};

/// Rows the team shares (notes, say).
const ROWS: u64 = 200;
/// Edits per hour: the device's user, and everyone else together on the server.
const DEVICE_EDITS_PER_HOUR: u64 = 6;
const TEAM_EDITS_PER_HOUR: u64 = 30;

/// One span offline, measured.
struct Span {
    hours: u64,
    device_edits: u64,
    team_edits: u64,
    /// Rows both sides edited while apart: the conflicts there must be.
    both_edited: usize,
    conflicted_on_device: usize,
    conflicted_on_server: usize,
    sync: tern_server::device::SyncReport,
    converged: bool,
}

fn check(reply: std::io::Result<tern_server::client::Reply>, what: &str) -> Result<serde_json::Value, String> {
    let reply = reply.map_err(|error| format!("{what}: {error}"))?;
    if reply.status != 200 || !reply.body["results"][0]["error"].is_null() {
        return Err(format!("{what}: {} {}", reply.status, reply.body));
    }
    Ok(reply.body)
}

/// `UPDATE <table> SET body = ? WHERE id = ?`, bound.
fn edit(update: &str, id: u64, body: String) -> Statement {
    Statement { sql: update.to_string(), params: Params::Positional(vec![SqlValue::Text(body), SqlValue::Integer(id as i64)]) }
}

fn offline_for(server: &str, directory: &std::path::Path, hours: u64, rng: &mut Rng) -> Result<Span, String> {
    let table = format!("notes_{hours}h");
    let mut client = HttpClient::new(server);
    check(
        client.post_json(
            "/db/execute",
            &json!([
                format!("CREATE TABLE {table} (id INTEGER PRIMARY KEY, body TEXT NOT NULL)"),
                format!("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<{ROWS}) INSERT INTO {table} SELECT x, 'first draft' FROM c")
            ]),
        ),
        "create the notes",
    )?;
    let mut device = Device::open(&directory.join(&table), Some(&format!("laptop-{hours}h")))?;
    device.sync(server)?;
    let update = format!("UPDATE {table} SET body = ? WHERE id = ?");
    let (device_edits, team_edits) = (DEVICE_EDITS_PER_HOUR * hours, TEAM_EDITS_PER_HOUR * hours);
    let (mut on_device, mut on_server) = (BTreeSet::new(), BTreeSet::new());
    // Interleaved, as the hours pass: the team's edits reach the server, the device's stay on it.
    for step in 0..device_edits.max(team_edits) {
        if step < device_edits {
            let id = rng.range(1, ROWS);
            on_device.insert(id);
            device.execute_statements(vec![edit(&update, id, format!("laptop edit {step}"))])?;
        }
        if step < team_edits {
            let id = rng.range(1, ROWS);
            on_server.insert(id);
            check(client.post_json("/db/execute", &json!([[update, format!("team edit {step}"), id]])), "a team edit")?;
        }
    }
    let sync = device.sync(server)?;
    let conflicted_on_device = device.conflicts()?.iter().filter(|conflicts| conflicts.table == table).map(|conflicts| conflicts.rows.len()).sum();
    let listed = client.get("/db/conflicts").map_err(|error| format!("/db/conflicts: {error}"))?;
    let conflicted_on_server = listed.body["conflicts"].as_array().map_or(0, |all| {
        all.iter().filter(|conflict| conflict["table"] == table.as_str()).map(|conflict| conflict["key"].to_string()).collect::<BTreeSet<_>>().len()
    });
    let select = format!("SELECT id, body FROM {table} ORDER BY id");
    let here: Vec<Vec<serde_json::Value>> = device.execute(&[&select])?[0].values.iter().map(|row| row.iter().map(SqlValue::to_json).collect()).collect();
    let there = check(client.post_json("/db/query", &json!([select])), "read the server's notes")?;
    let converged = json!(here) == there["results"][0]["values"];
    Ok(Span {
        hours,
        device_edits,
        team_edits,
        both_edited: on_device.intersection(&on_server).count(),
        conflicted_on_device,
        conflicted_on_server,
        sync,
        converged,
    })
}

pub fn offline_devices(scale: &Scale) -> Result<Finding, String> {
    let spans: Vec<u64> = if scale.quick { vec![1, 12] } else { vec![1, 4, 12, 48] };
    let data_dir = scratch_dir("lab-devices")?;
    let processes = start_processes_in_regions(&["us-east"], true, &data_dir, &["--topology".to_string(), "multi-leader".to_string()])?;
    let server = processes[0].http.clone();
    wait_ready(std::slice::from_ref(&server), Duration::from_secs(30))?;
    let mut rng = Rng::new(scale.seed);
    let measured: Result<Vec<Span>, String> = spans.iter().map(|&hours| offline_for(&server, &data_dir.join("devices"), hours, &mut rng)).collect();
    drop(processes);
    let _ = std::fs::remove_dir_all(&data_dir);
    let measured = measured?;
    let right = |span: &Span| span.conflicted_on_device == span.both_edited && span.conflicted_on_server == span.both_edited && span.converged;
    let holds = measured.iter().all(right)
        && measured.windows(2).all(|pair| pair[0].both_edited <= pair[1].both_edited && pair[0].sync.bytes_sent < pair[1].sync.bytes_sent);
    let rows = measured
        .iter()
        .map(|span| {
            vec![
                span.hours.to_string(),
                format!("{} / {}", span.device_edits, span.team_edits),
                span.both_edited.to_string(),
                format!("{} / {}", span.conflicted_on_device, span.conflicted_on_server),
                format!("{} / {}", span.sync.pushed, span.sync.pulled),
                format!("{:.1} / {:.1}", span.sync.bytes_sent as f64 / 1024.0, span.sync.bytes_received as f64 / 1024.0),
                span.sync.took.as_millis().to_string(),
                if span.converged { "yes" } else { "NO" }.to_string(),
            ]
        })
        .collect();
    let (first, last) = (&measured[0], &measured[measured.len() - 1]);
    let verdict = format!(
        "after {} hour(s) offline the device's sync had {} conflict(s) and sent {:.1} KiB; after {} hours, {} and {:.1} KiB; every \
         conflict was one both sides' edits made, on record on the device and the server, and both ended with the same rows",
        first.hours,
        first.conflicted_on_device,
        first.sync.bytes_sent as f64 / 1024.0,
        last.hours,
        last.conflicted_on_device,
        last.sync.bytes_sent as f64 / 1024.0
    );
    let cases: Vec<String> = measured.iter().map(|span| format!("{} h", span.hours)).collect();
    Ok(Finding {
        setup: format!(
            "A real `tern server` process (multi-leader, one region) on this machine's loopback, and devices (`tern device`: a local \
             SQLite copy that takes writes offline) opened in the lab's own process. For each span, a fresh table of {ROWS} notes; \
             a device syncs it, goes offline, and its user edits {DEVICE_EDITS_PER_HOUR} notes an hour while the team edits \
             {TEAM_EDITS_PER_HOUR} an hour on the server (random notes, seed {}); then the device syncs once. Hours are emulated by \
             the number of edits, not waited for. A conflict is a note both sides edited while apart: last writer wins, and the \
             losing version stays on record. The sync pushes the device's edits and pulls the team's.",
            scale.seed
        ),
        headers: vec![
            "hours offline",
            "edits (device / team)",
            "notes both edited",
            "conflicted notes (device / server)",
            "writes (pushed / pulled)",
            "KiB (sent / received)",
            "sync ms",
            "same rows after",
        ],
        rows,
        plots: vec![
            Plot {
                title: "Conflicts after a device's time offline".to_string(),
                x_label: "hours offline".to_string(),
                y_label: "conflicted notes".to_string(),
                cases: cases.clone(),
                series: vec![("on the device after its sync".to_string(), measured.iter().map(|span| span.conflicted_on_device as f64).collect())],
            },
            Plot {
                title: "What the sync after time offline exchanged".to_string(),
                x_label: "hours offline".to_string(),
                y_label: "KiB".to_string(),
                cases,
                series: vec![
                    ("sent (the device's edits)".to_string(), measured.iter().map(|span| span.sync.bytes_sent as f64 / 1024.0).collect()),
                    ("received (the team's)".to_string(), measured.iter().map(|span| span.sync.bytes_received as f64 / 1024.0).collect()),
                ],
            },
        ],
        holds,
        verdict: if holds { verdict } else { format!("{verdict}; but the conflicts or the rows were not as expected (see the table)") },
        not_measured: None,
    })
}
