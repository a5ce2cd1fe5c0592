//! `tern shell [URL]`: an interactive SQL shell over the HTTP API, with line editing and
//! history (rustyline), aligned tables, each write's position, and dot commands for the
//! read level, `w=`, timing, tables, schema and status. With `-c SQL` (repeatable) or a
//! pipe on standard input it runs the statements and exits, non-zero if one failed.

use clap::Args;
use serde_json::{json, Value};
use std::io::{IsTerminal, Read};
use std::time::{Duration, Instant};
use tern_server::client::{encode_query_value, HttpClient};
use tern_server::pg::{first_keyword, split_statements};

#[derive(Args, Debug)]
pub struct ShellArgs {
    /// Any node's HTTP address (`http://` optional).
    #[arg(default_value = "127.0.0.1:4001")]
    url: String,
    /// Run this SQL (or dot command) and exit; repeat for more.
    #[arg(short = 'c', long = "command")]
    commands: Vec<String>,
}

/// What the session keeps between statements.
struct Shell {
    client: HttpClient,
    level: String,
    w: Option<String>,
    timing: bool,
    /// The position of this session's last write: reads at `session` wait for it.
    position: Option<String>,
}

pub fn run(args: ShellArgs) -> Result<(), String> {
    let address = args.url.trim_start_matches("http://").trim_end_matches('/').to_string();
    let mut shell = Shell {
        client: HttpClient::new(&address).with_timeout(Duration::from_secs(60)).with_env_credentials(),
        level: "weak".to_string(),
        w: None,
        timing: false,
        position: None,
    };
    for command in &args.commands {
        shell.run_all(command)?;
    }
    if !args.commands.is_empty() {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        let mut input = String::new();
        std::io::stdin().read_to_string(&mut input).map_err(|error| format!("cannot read standard input: {error}"))?;
        return shell.run_all(&input);
    }
    shell.interactive(&address)
}

impl Shell {
    /// Runs every statement and dot command of `text` in order; the first failure ends it.
    fn run_all(&mut self, text: &str) -> Result<(), String> {
        for item in items(text) {
            self.run_one(&item)?;
        }
        Ok(())
    }

    fn interactive(&mut self, address: &str) -> Result<(), String> {
        let config = rustyline::Config::builder().auto_add_history(true).build();
        let mut editor: rustyline::Editor<(), rustyline::history::DefaultHistory> =
            rustyline::Editor::with_config(config).map_err(|error| format!("cannot start line editing: {error}"))?;
        let history = std::env::var_os("HOME").map(|home| std::path::PathBuf::from(home).join(".tern_history"));
        if let Some(path) = &history {
            let _ = editor.load_history(path);
        }
        println!("tern shell on {address}: SQL ends with ';'. .help lists the dot commands; Ctrl-D quits.");
        let mut buffer = String::new();
        loop {
            let prompt = if buffer.is_empty() { "tern> " } else { "  ... " };
            let line = match editor.readline(prompt) {
                Ok(line) => line,
                Err(rustyline::error::ReadlineError::Interrupted) => {
                    buffer.clear();
                    continue;
                }
                Err(_) => break,
            };
            if buffer.is_empty() && line.trim_start().starts_with('.') {
                if matches!(line.trim(), ".quit" | ".exit") {
                    break;
                }
                report(self.dot(line.trim()));
                continue;
            }
            buffer.push_str(&line);
            buffer.push('\n');
            if complete(&buffer) {
                for statement in split_statements(&buffer) {
                    report(self.sql(statement));
                }
                buffer.clear();
            }
        }
        if let Some(path) = &history {
            let _ = editor.save_history(path);
        }
        Ok(())
    }

    fn run_one(&mut self, item: &str) -> Result<(), String> {
        if item.starts_with('.') {
            self.dot(item)
        } else {
            self.sql(item)
        }
    }

    fn dot(&mut self, command: &str) -> Result<(), String> {
        let mut words = command.trim_end_matches(';').split_whitespace();
        let name = words.next().unwrap_or_default();
        let argument = words.next();
        match (name, argument) {
            (".help", _) => {
                println!(
                    ".tables               list the tables\n.schema [TABLE]        the CREATE statements\n.level [LEVEL]         read level: none, bounded, session, weak, strong, linearizable\n.w [N|majority|all]    copies a write waits for (default: the cluster's --ack)\n.timing [on|off]       show how long each statement took\n.status                this node's role, leader and position\n.quit                  leave (or Ctrl-D)"
                );
                Ok(())
            }
            (".tables", _) => self.sql("SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '\\_tern\\_%' ESCAPE '\\' ORDER BY name"),
            (".schema", table) => {
                let filter = table.map_or(String::new(), |table| format!(" AND name = '{}'", table.replace('\'', "''")));
                self.sql(&format!("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '\\_tern\\_%' ESCAPE '\\'{filter} ORDER BY rowid"))
            }
            (".level", None) => {
                println!("{}", self.level);
                Ok(())
            }
            (".level", Some(level)) => {
                let known = ["none", "bounded", "session", "weak", "strong", "linearizable"];
                if !known.contains(&level) {
                    return Err(format!("unknown read level {level:?}: one of {}", known.join(", ")));
                }
                self.level = level.to_string();
                Ok(())
            }
            (".w", None) => {
                println!("{}", self.w.as_deref().unwrap_or("(the cluster's --ack)"));
                Ok(())
            }
            (".w", Some(w)) => {
                tern_core::AckRequirement::parse(w)?;
                self.w = Some(w.to_string());
                Ok(())
            }
            (".timing", setting) => {
                self.timing = setting.is_none_or(|setting| setting == "on");
                println!("timing {}", if self.timing { "on" } else { "off" });
                Ok(())
            }
            (".status", _) => {
                let status = self.client.get("/status").map_err(|error| format!("cannot reach the node: {error}"))?.body;
                let node = &status["node"];
                println!(
                    "{} ({}): {}, leader {}, epoch {}, applied {}, {} topology, --ack {}",
                    node["id"].as_str().unwrap_or("?"),
                    node["region"].as_str().unwrap_or("?"),
                    node["role"].as_str().unwrap_or("?"),
                    node["leader"].as_str().unwrap_or("unknown"),
                    node["epoch"],
                    node["applied"].as_str().unwrap_or("?"),
                    status["replication"]["topology"].as_str().unwrap_or("?"),
                    status["replication"]["ack"].as_str().unwrap_or("?"),
                );
                Ok(())
            }
            _ => Err(format!("unknown command {name:?}: .help lists them")),
        }
    }

    /// Runs one SQL statement: reads through `/db/query` at the session's level, anything
    /// else through `/db/execute` with its `w=`.
    fn sql(&mut self, statement: &str) -> Result<(), String> {
        let started = Instant::now();
        let keyword = first_keyword(statement);
        let read = matches!(keyword.as_str(), "SELECT" | "VALUES" | "EXPLAIN" | "PRAGMA" | "WITH") && !statement.to_uppercase().contains("RETURNING");
        let reply = if read {
            let mut path = format!("/db/query?level={}", self.level);
            if self.level == "session" {
                match &self.position {
                    Some(position) => path.push_str(&format!("&after={position}")),
                    None => path = "/db/query?level=none".to_string(),
                }
            }
            path.push_str(&format!("&q={}", encode_query_value(statement)));
            self.client.get(&path)
        } else {
            let path = self.w.as_ref().map_or_else(|| "/db/execute".to_string(), |w| format!("/db/execute?w={w}"));
            self.client.post_json(&path, &json!([statement]))
        }
        .map_err(|error| format!("cannot reach the node: {error}"))?;
        let elapsed = started.elapsed();
        if let Some(message) = reply.body["error"].as_str() {
            return Err(message.to_string());
        }
        let result = &reply.body["results"][0];
        if let Some(message) = result["error"].as_str() {
            return Err(message.to_string());
        }
        if reply.status != 200 {
            return Err(format!("the node answered {}: {}", reply.status, reply.body));
        }
        if let Some(position) = reply.body["position"].as_str() {
            self.position = Some(position.to_string());
        }
        if result.get("columns").is_some() {
            print!("{}", table(result));
        } else {
            let position = reply.body["position"].as_str().map_or(String::new(), |position| format!(", position {position}"));
            println!(
                "ok: {} row(s) affected, last insert id {}{position}",
                result["rows_affected"].as_i64().unwrap_or(0),
                result["last_insert_id"].as_i64().unwrap_or(0)
            );
        }
        if self.timing {
            println!("time: {:.3} ms", elapsed.as_secs_f64() * 1000.0);
        }
        Ok(())
    }
}

fn report(outcome: Result<(), String>) {
    if let Err(message) = outcome {
        eprintln!("error: {message}");
    }
}

/// Whether an interactive buffer holds whole statements: it ends with `;` in plain SQL.
fn complete(buffer: &str) -> bool {
    let trimmed = buffer.trim_end();
    trimmed.ends_with(';') && split_statements(&format!("{trimmed} x")).last().is_none_or(|last| last.trim() == "x")
}

/// The statements and dot commands of a script: a line starting with '.' is a command.
fn items(text: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut sql = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with('.') && sql.trim().is_empty() {
            items.push(line.trim().to_string());
        } else {
            sql.push_str(line);
            sql.push('\n');
            if complete(&sql) {
                items.extend(split_statements(&sql).into_iter().map(str::to_string));
                sql.clear();
            }
        }
    }
    items.extend(split_statements(&sql).into_iter().map(str::to_string));
    items
}

/// A query result as an aligned table, then its row count.
fn table(result: &Value) -> String {
    let columns: Vec<String> = result["columns"].as_array().into_iter().flatten().map(|column| column.as_str().unwrap_or("").to_string()).collect();
    let rows: Vec<Vec<String>> =
        result["values"].as_array().into_iter().flatten().map(|row| row.as_array().into_iter().flatten().map(cell).collect()).collect();
    let shown = |text: &str| unicode_width::UnicodeWidthStr::width(text);
    let width = |column: usize| rows.iter().map(|row| row.get(column).map_or(0, |text| shown(text))).chain([shown(&columns[column])]).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns.len()).map(width).collect();
    let line = |cells: &[String]| {
        cells.iter().zip(&widths).map(|(text, width)| format!(" {text}{} ", " ".repeat(width.saturating_sub(shown(text))))).collect::<Vec<_>>().join("|")
    };
    let mut out = format!("{}\n{}\n", line(&columns), widths.iter().map(|width| "-".repeat(width + 2)).collect::<Vec<_>>().join("+"));
    for row in &rows {
        out.push_str(&line(row));
        out.push('\n');
    }
    out.push_str(&format!("({} row{})\n", rows.len(), if rows.len() == 1 { "" } else { "s" }));
    out
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => "NULL".to_string(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_split_into_statements_and_dot_commands() {
        let script = ".tables\nSELECT 'a;b'\n  FROM t;\n.level strong\nINSERT INTO t VALUES (1); SELECT 2";
        assert_eq!(items(script), vec![".tables", "SELECT 'a;b'\n  FROM t", ".level strong", "INSERT INTO t VALUES (1)", "SELECT 2"]);
        assert!(complete("SELECT 1;\n"));
        assert!(!complete("SELECT ';\n"));
        assert!(!complete("SELECT 1\n"));
    }

    #[test]
    fn tables_are_aligned_by_the_width_text_shows() {
        let result = json!({"columns": ["id", "name"], "values": [[1, "Andrés"], [22, null], [3, "日本"]]});
        assert_eq!(table(&result), " id | name   \n----+--------\n 1  | Andrés \n 22 | NULL   \n 3  | 日本   \n(3 rows)\n");
    }
}
