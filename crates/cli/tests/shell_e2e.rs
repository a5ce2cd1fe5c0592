//! `tern shell` against a real node: `-c` commands, a script on a pipe, errors.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use support::*;

fn shell(url: &str, args: &[&str], input: Option<&str>) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("shell")
        .arg(url)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tern starts");
    let mut stdin = child.stdin.take().expect("stdin");
    if let Some(input) = input {
        stdin.write_all(input.as_bytes()).expect("script written");
    }
    drop(stdin);
    let output = child.wait_with_output().expect("tern runs");
    (output.status.success(), format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)))
}

#[test]
fn the_shell_runs_commands_and_scripts_and_reports_errors() {
    let cluster = Cluster::start("shell", 1, &[]);
    let url = format!("http://{}", cluster.nodes[0].http);
    let (ok, output) = shell(
        &url,
        &[
            "-c",
            "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT)",
            "-c",
            "INSERT INTO people (name) VALUES ('Andrés'), ('日本')",
            "-c",
            ".level session",
            "-c",
            "SELECT * FROM people ORDER BY id",
        ],
        None,
    );
    assert!(ok, "{output}");
    for expected in ["ok: 2 row(s) affected, last insert id 2, position ", " id | name   \n----+--------\n 1  | Andrés \n 2  | 日本   \n(2 rows)"] {
        assert!(output.contains(expected), "shell output lacks {expected:?}:\n{output}");
    }

    // A script on a pipe: statements over several lines, dot commands, in order.
    let (ok, output) = shell(&url, &[], Some(".tables\nSELECT count(*)\n  FROM people;\n.schema people\n.status\n"));
    assert!(ok, "{output}");
    for expected in [" people \n", " 2        \n", "CREATE TABLE people", "n1 (us-east): leader"] {
        assert!(output.contains(expected), "shell output lacks {expected:?}:\n{output}");
    }

    // The first failing statement ends a script with the database's message, non-zero.
    let (ok, output) = shell(&url, &[], Some("SELEC 1;\nINSERT INTO people (name) VALUES ('never');\n"));
    assert!(!ok && output.contains("syntax error"), "{output}");
    let (_, output) = shell(&url, &["-c", "SELECT count(*) FROM people WHERE name = 'never'"], None);
    assert!(output.contains(" 0        \n"), "the statement after the error ran:\n{output}");
    let (ok, output) = shell(&url, &["-c", ".level sometimes"], None);
    assert!(!ok && output.contains("unknown read level"), "{output}");
}
