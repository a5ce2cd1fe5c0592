//! `tern changes`: the change stream (`/db/changes`) printed as newline-delimited JSON,
//! one event per line. It keeps its place by each event's cursor, so when a node stops
//! answering it goes on from the next node given, where it left off.

use std::io::Write;
use std::time::Duration;
use tern_server::client::HttpClient;

#[derive(clap::Args)]
pub struct ChangesArgs {
    /// Nodes' HTTP addresses, comma separated: when one does not answer, the next is asked.
    #[arg(long, default_value = "127.0.0.1:4001")]
    http: String,
    /// Start after this position (`epoch.index`) or event cursor (`epoch.index.number`);
    /// default: the oldest change the log holds.
    #[arg(long)]
    from: Option<String>,
    /// Keep waiting for new changes instead of stopping at the newest.
    #[arg(long)]
    follow: bool,
}

pub fn run(args: ChangesArgs) -> Result<(), String> {
    let nodes: Vec<String> = args.http.split(',').map(|node| node.trim().trim_start_matches("http://").to_string()).filter(|node| !node.is_empty()).collect();
    if nodes.is_empty() {
        return Err("--http names no node".to_string());
    }
    let mut cursor = args.from;
    let mut node = 0;
    let mut failures = 0;
    let stdout = std::io::stdout();
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/db/changes?limit=1000&from={cursor}"),
            None => "/db/changes?limit=1000".to_string(),
        };
        let mut client = HttpClient::new(&nodes[node]).with_timeout(Duration::from_secs(30)).with_env_credentials();
        match client.request_raw("GET", &path, None) {
            Ok((200, body)) => {
                failures = 0;
                let text = String::from_utf8_lossy(&body);
                let mut out = stdout.lock();
                let mut events = 0;
                for line in text.lines().filter(|line| !line.is_empty()) {
                    let event: serde_json::Value =
                        serde_json::from_str(line).map_err(|error| format!("{}: not a JSON event ({error}): {line}", nodes[node]))?;
                    if let Some(error) = event["error"].as_str() {
                        return Err(format!("{}: {error}", nodes[node]));
                    }
                    writeln!(out, "{line}").map_err(|error| error.to_string())?;
                    cursor = event["cursor"].as_str().map(str::to_string).or(cursor);
                    events += 1;
                }
                out.flush().map_err(|error| error.to_string())?;
                if events == 0 {
                    if !args.follow {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            Ok((status, body)) if status == 400 || status == 410 => {
                let reply = tern_server::client::parse_body(&body);
                return Err(format!("{}: {}", nodes[node], reply["error"].as_str().unwrap_or("refused")));
            }
            outcome => {
                let why = match outcome {
                    Ok((status, _)) => format!("answered {status}"),
                    Err(error) => error.to_string(),
                };
                failures += 1;
                if failures >= nodes.len() * 3 && !args.follow {
                    return Err(format!("no node answers (last: {} {why})", nodes[node]));
                }
                eprintln!("{} {why}: trying {}", nodes[node], nodes[(node + 1) % nodes.len()]);
                node = (node + 1) % nodes.len();
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}
