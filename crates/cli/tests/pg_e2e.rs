//! The PostgreSQL door on real `tern server` processes, driven by real clients: psql,
//! psycopg 3 and pgbench (each installed when missing; a test that cannot get its client
//! says why and skips), and by hostile bytes on the wire.

mod support;

use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;
use support::*;

const LONG: Duration = Duration::from_secs(60);

/// A 3-node cluster, each node also speaking PostgreSQL; returns it and the pg addresses.
fn cluster_with_pg(name: &str) -> (Cluster, Vec<String>) {
    let mut cluster = Cluster::new(name, 3, &[]);
    let addresses: Vec<String> = cluster
        .nodes
        .iter_mut()
        .map(|node| {
            let address = free_port_addr();
            node.push_args(&["--pg", &address]);
            address
        })
        .collect();
    cluster.start_all();
    (cluster, addresses)
}

fn installed(program: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {program}")]).output().is_ok_and(|output| output.status.success())
}

/// psql and pgbench, from Debian's postgresql-client when missing (CI runs as root).
fn postgresql_client() -> Result<(), String> {
    if installed("psql") && installed("pgbench") {
        return Ok(());
    }
    let script = "(apt-get install -y -q postgresql-client || (apt-get update -q && apt-get install -y -q postgresql-client)) >/dev/null 2>&1";
    let status = Command::new("sh").args(["-c", script]).status().map_err(|error| format!("cannot run apt-get: {error}"))?;
    if status.success() && installed("psql") && installed("pgbench") {
        Ok(())
    } else {
        Err("postgresql-client (psql, pgbench) is not installed and apt-get could not install it".to_string())
    }
}

fn psycopg() -> Result<(), String> {
    let importable = || Command::new("python3").args(["-c", "import psycopg"]).output().is_ok_and(|output| output.status.success());
    if importable() {
        return Ok(());
    }
    let _ = Command::new("python3").args(["-m", "pip", "install", "-q", "psycopg[binary]"]).output();
    if importable() {
        Ok(())
    } else {
        Err("python3 with psycopg 3 is not available and pip could not install psycopg[binary]".to_string())
    }
}

fn psql(address: &str, script: &str) -> (bool, String) {
    let (host, port) = address.rsplit_once(':').expect("host:port");
    let mut child = Command::new("psql")
        .args(["-h", host, "-p", port, "-U", "tern", "-d", "tern", "-X", "-v", "VERBOSITY=verbose", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("psql starts");
    child.stdin.take().expect("stdin").write_all(script.as_bytes()).expect("script written");
    let output = child.wait_with_output().expect("psql runs");
    (output.status.success(), format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)))
}

#[test]
fn psql_writes_reads_and_blocks_through_any_node() {
    if let Err(reason) = postgresql_client() {
        println!("SKIPPED: {reason}");
        return;
    }
    let (cluster, pg) = cluster_with_pg("pg-psql");
    // Through a follower: writes are forwarded to the leader, as over HTTP.
    let (ok, output) = psql(
        &pg[1],
        "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, score REAL, pic BLOB);
         INSERT INTO people VALUES (1, 'Andrés', 1.5, x'00ff');
         INSERT INTO people (name) VALUES ('it''s'), ('日本語 🦀');
         SET tern.read_level = 'session';
         SELECT id, name, score, pic FROM people ORDER BY id;
         SELECT version();
         SHOW tern.position;",
    );
    assert!(ok, "{output}");
    for expected in ["CREATE TABLE", "INSERT 0 1", "INSERT 0 2", "Andrés", "it's", "日本語 🦀", "\\x00ff", "(3 rows)", "PostgreSQL 16.6 (tern"] {
        assert!(output.contains(expected), "psql output lacks {expected:?}:\n{output}");
    }

    // BEGIN … COMMIT is all or nothing: a duplicate key fails the whole block.
    let (_, output) = psql(
        &pg[2],
        "BEGIN;
         INSERT INTO people (id, name) VALUES (10, 'block one');
         INSERT INTO people (id, name) VALUES (1, 'duplicate of Andrés');
         COMMIT;
         ROLLBACK;
         BEGIN;
         INSERT INTO people (id, name) VALUES (11, 'block two');
         INSERT INTO people (id, name) VALUES (12, 'block two');
         COMMIT;",
    );
    assert!(output.contains("23505"), "a duplicate key reports SQLSTATE 23505:\n{output}");
    let mut client = cluster.nodes[0].client();
    eventually(LONG, "the second block everywhere", || {
        cluster.nodes.iter().all(|node| count(&mut node.client(), "SELECT count(*) FROM people WHERE id >= 11", "level=none") == 2)
    });
    assert_eq!(count(&mut client, "SELECT count(*) FROM people WHERE id = 10", "level=strong"), 0, "the failed block left nothing behind");

    // psql's own catalog commands.
    let (ok, output) = psql(&pg[1], "\\dt\n\\d people\n\\d nope\n");
    assert!(ok, "{output}");
    for expected in [
        "List of relations",
        "public | people | table | tern",
        "Table \"public.people\"",
        "double precision",
        "bytea",
        "not null",
        "Did not find any relation named \"nope\"",
    ] {
        assert!(output.contains(expected), "psql's \\dt / \\d output lacks {expected:?}:\n{output}");
    }

    // SQL that only looks like the catalog is run as written; casts become SQLite's;
    // savepoints are refused rather than half-applied.
    let (_, output) = psql(
        &pg[0],
        "INSERT INTO people (id, name) VALUES (50, 'see pg_class');
         SELECT name FROM people WHERE id = 50;
         SELECT 5::float / 2 AS half, '7'::int + 1 AS eight;
         BEGIN;
         INSERT INTO people (id, name) VALUES (51, 'in a block');
         SAVEPOINT s;
         ROLLBACK;
         SELECT count(*) AS after_block FROM people WHERE id = 51;",
    );
    for expected in ["see pg_class", "2.5", " 8\n", "0A000", "after_block \n-------------\n           0"] {
        assert!(output.contains(expected), "psql output lacks {expected:?}:\n{output}");
    }

    // Errors come back with the SQLSTATE clients act on, and the session goes on.
    let (ok, output) = psql(&pg[0], "SELECT nope FROM people;\nSELEC 1;\nSET tern.read_level = 'sometimes';\nSELECT count(*) FROM people;");
    assert!(!ok || output.contains("ERROR"), "{output}");
    for code in ["42703", "42601", "22023", "        6\n(1 row)"] {
        assert!(output.contains(code), "psql output lacks {code:?}:\n{output}");
    }
}

#[test]
fn psycopg_runs_parameterized_queries_in_text_and_binary_and_pgbench_runs_a_script() {
    if let Err(reason) = postgresql_client().and_then(|()| psycopg()) {
        println!("SKIPPED: {reason}");
        return;
    }
    let (cluster, pg) = cluster_with_pg("pg-clients");
    let (host, port) = pg[0].rsplit_once(':').expect("host:port");
    let (_, follower_port) = pg[1].rsplit_once(':').expect("host:port");
    let script = format!(
        r#"
import psycopg
dsn = "host={host} port={{}} user=tern dbname=tern"
with psycopg.connect(dsn.format({port})) as conn:
    cur = conn.cursor()
    cur.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER, f REAL, b BLOB)")
    cur.execute("INSERT INTO kv VALUES (%s, %s, %s, %s)", ("Andrés", 42, 0.25, b"\x00\x01"))
    cur.execute("INSERT INTO kv VALUES (%s, %s, %s, %s)", ("it's", -7, None, None))
    conn.commit()
    cur.execute("SELECT k, v, f, b FROM kv WHERE v = %s", (42,))
    assert cur.fetchall() == [("Andrés", 42, 0.25, b"\x00\x01")]
    # Many unnamed portals in a row, of different shapes: a column list described for one
    # is never used for another (a stale one once broke "D" messages here).
    for i in range(200):
        cur.execute("SELECT k FROM kv WHERE v = %s", (i,))
        cur.fetchall()
        cur.execute("SELECT k, v, f FROM kv WHERE v > %s LIMIT 1", (-100,))
        assert len(cur.fetchall()[0]) == 3
    cur.execute("SELECT k, v FROM kv WHERE k = %s", ("it's",), binary=True)
    assert cur.fetchall() == [("it's", -7)]
    try:
        cur.execute("INSERT INTO kv VALUES (%s, 1, 1, NULL)", ("Andrés",))
        conn.commit()
        raise SystemExit("a duplicate key was accepted")
    except psycopg.errors.UniqueViolation:
        conn.rollback()
with psycopg.connect(dsn.format({follower_port}), autocommit=True) as conn:
    cur = conn.cursor()
    cur.execute("SET tern.read_level = 'session'")
    cur.execute("INSERT INTO kv VALUES (%s, %s, NULL, NULL)", ("session", 1))
    cur.execute("SHOW tern.position")
    assert cur.fetchone()[0] != ""
    cur.execute("SELECT v FROM kv WHERE k = %s", ("session",))
    assert cur.fetchall() == [(1,)], "read-your-writes on a follower"
print("psycopg ok")
"#
    );
    let output = Command::new("python3").args(["-c", &script]).output().expect("python3 runs");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && text.contains("psycopg ok"), "{text}");

    let dir = cluster.dir.join("pgbench.sql");
    std::fs::write(&dir, "\\set id random(1, 1000000000)\nINSERT INTO kv (k, v) VALUES ('bench' || :id, :id) ON CONFLICT DO NOTHING;\nSELECT v FROM kv WHERE k = 'bench' || :id;\n").expect("script written");
    for mode in ["simple", "extended"] {
        let output = Command::new("pgbench")
            .args(["-h", host, "-p", port, "-U", "tern", "-n", "-T", "2", "-c", "2", "-M", mode, "-f", &dir.display().to_string(), "tern"])
            .output()
            .expect("pgbench runs");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success() && text.contains("number of failed transactions: 0"), "pgbench -M {mode}:\n{text}");
        println!("pgbench -M {mode}: {}", text.lines().find(|line| line.starts_with("tps")).unwrap_or("?"));
    }
}

/// A minimal client: the startup packet, then simple queries, reading until ReadyForQuery.
struct Raw {
    stream: TcpStream,
}

impl Raw {
    fn connect(address: &str) -> Raw {
        let mut stream = TcpStream::connect(address).expect("pg port answers");
        stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout set");
        let body = b"\x00\x03\x00\x00user\x00tern\x00database\x00tern\x00\x00";
        let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        packet.extend_from_slice(body);
        stream.write_all(&packet).expect("startup sent");
        let mut raw = Raw { stream };
        raw.until_ready();
        raw
    }

    /// Reads messages until ReadyForQuery; returns the message types seen.
    fn until_ready(&mut self) -> Vec<u8> {
        let mut kinds = Vec::new();
        loop {
            let mut header = [0u8; 5];
            self.stream.read_exact(&mut header).expect("a message from the server");
            let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
            let mut body = vec![0u8; length.saturating_sub(4)];
            self.stream.read_exact(&mut body).expect("the message body");
            kinds.push(header[0]);
            if header[0] == b'Z' {
                return kinds;
            }
        }
    }

    fn query(&mut self, sql: &str) -> Vec<u8> {
        let mut message = vec![b'Q'];
        message.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
        message.extend_from_slice(sql.as_bytes());
        message.push(0);
        self.stream.write_all(&message).expect("query sent");
        self.until_ready()
    }
}

/// node-postgres (npm `pg`), installed into the temp directory when missing.
fn node_postgres() -> Result<std::path::PathBuf, String> {
    let directory = std::env::temp_dir().join("tern-test-node-postgres");
    if directory.join("node_modules/pg/package.json").exists() && installed("node") {
        return Ok(directory);
    }
    if !installed("npm") {
        let script = "(apt-get install -y -q nodejs npm || (apt-get update -q && apt-get install -y -q nodejs npm)) >/dev/null 2>&1";
        let _ = Command::new("sh").args(["-c", script]).status();
    }
    let _ = Command::new("npm").args(["install", "--prefix", &directory.display().to_string(), "--no-audit", "--no-fund", "pg@8"]).output();
    if directory.join("node_modules/pg/package.json").exists() && installed("node") {
        Ok(directory)
    } else {
        Err("node with node-postgres is not available, and neither npm nor apt-get could install it".to_string())
    }
}

#[test]
fn node_postgres_runs_parameterized_queries_and_transactions() {
    let modules = match node_postgres() {
        Ok(modules) => modules,
        Err(reason) => {
            println!("SKIPPED: {reason}");
            return;
        }
    };
    let (_cluster, pg) = cluster_with_pg("pg-node");
    let (host, port) = pg[0].rsplit_once(':').expect("host:port");
    let (_, follower_port) = pg[2].rsplit_once(':').expect("host:port");
    let script = format!(
        r#"
const {{ Client }} = require("pg");
const assert = require("assert");
(async () => {{
  const leader = new Client({{ host: "{host}", port: {port}, user: "tern", database: "tern" }});
  await leader.connect();
  await leader.query("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT, balance INTEGER, photo BLOB)");
  await leader.query("INSERT INTO accounts VALUES ($1, $2, $3, $4)", [1, "Andrés", 100, Buffer.from([0, 255])]);
  await leader.query("INSERT INTO accounts VALUES ($1, $2, $3, NULL)", [2, "日本", 50]);
  let result = await leader.query("SELECT owner, balance, photo FROM accounts WHERE id = $1", [1]);
  assert.deepStrictEqual(result.rows, [{{ owner: "Andrés", balance: 100, photo: Buffer.from([0, 255]) }}]);
  // A transfer in one block: all of it, or (on a failure) none of it.
  await leader.query("BEGIN");
  await leader.query("UPDATE accounts SET balance = balance - 30 WHERE id = 1");
  await leader.query("UPDATE accounts SET balance = balance + 30 WHERE id = 2");
  await leader.query("COMMIT");
    // A block's writes run at COMMIT as one request: the duplicate key fails the COMMIT,
  // and the update before it is not applied either.
  await leader.query("BEGIN");
  await leader.query("UPDATE accounts SET balance = balance - 1000 WHERE id = 1");
  await leader.query("INSERT INTO accounts VALUES (1, 'again', 0, NULL)");
  await assert.rejects(leader.query("COMMIT"), (error) => error.code === "23505");
  result = await leader.query("SELECT id, balance FROM accounts ORDER BY id");
  assert.deepStrictEqual(result.rows, [{{ id: 1, balance: 70 }}, {{ id: 2, balance: 80 }}]);
  await assert.rejects(leader.query("SELEC 1"), (error) => error.code === "42601");
  await leader.end();
  const follower = new Client({{ host: "{host}", port: {follower_port}, user: "tern", database: "tern" }});
  await follower.connect();
  await follower.query("SET tern.read_level = 'session'");
  await follower.query("INSERT INTO accounts VALUES ($1, $2, $3, NULL)", [3, "session", 1]);
  result = await follower.query("SELECT owner FROM accounts WHERE id = $1", [3]);
  assert.deepStrictEqual(result.rows, [{{ owner: "session" }}], "read-your-writes on a follower");
  await follower.end();
  console.log("node-postgres ok");
}})().catch((error) => {{ console.error(error); process.exit(1); }});
"#
    );
    let output = Command::new("node").args(["-e", &script]).env("NODE_PATH", modules.join("node_modules")).output().expect("node runs");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && text.contains("node-postgres ok"), "{text}");
}

#[test]
fn hostile_bytes_and_any_text_never_take_the_door_down_or_change_data() {
    let (cluster, pg) = cluster_with_pg("pg-hostile");
    let mut setup = Raw::connect(&pg[0]);
    assert!(!setup.query("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)").contains(&b'E'));
    assert!(!setup.query("INSERT INTO t VALUES (1, 'one'), (2, 'two')").contains(&b'E'));

    // Garbage instead of a startup packet, a giant declared length, a cut-off message.
    let garbage: [&[u8]; 4] = [b"GET / HTTP/1.1\r\n\r\n", &[0xff; 64], &[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0], &[0, 0, 0, 8, 0, 3]];
    for bytes in garbage {
        if let Ok(mut stream) = TcpStream::connect(&pg[0]) {
            let _ = stream.write_all(bytes);
            let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
            let _ = stream.read(&mut [0u8; 256]);
        }
    }

    // Any text as a query: every one is answered (rows or an error) and the session goes on.
    let pieces = ["SELECT", "'", "\"", ";", "--", "/*", "*/", "$1", "::", "é", "🦀", "\u{0}", "(", ")", " ", "t", "FROM", "\\", "DROP", "1e999", "%", "\n"];
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut session = Raw::connect(&pg[1]);
    for _ in 0..300 {
        let mut text = String::new();
        for _ in 0..(seed % 12) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            text.push_str(pieces[(seed % pieces.len() as u64) as usize]);
        }
        // A NUL ends a query string on the wire: the client library would refuse it.
        let text = text.replace('\u{0}', "");
        let kinds = session.query(&text);
        assert_eq!(kinds.last(), Some(&b'Z'), "query {text:?} was not answered");
    }

    // Messages over the size limit (--max-body-bytes, 8 MiB by default): one declaring
    // 1 GB, and one that really is 9 MiB. Each is refused with a FATAL 54000 as its header
    // arrives, and the connection closes; the door serves the next client as before.
    let oversized = |declared: u32, body: usize| {
        let mut stream = Raw::connect(&pg[0]).stream;
        let mut message = vec![b'Q'];
        message.extend_from_slice(&declared.to_be_bytes());
        let _ = stream.write_all(&message);
        let _ = stream.write_all(&vec![b' '; body]);
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply);
        let text = String::from_utf8_lossy(&reply).to_string();
        assert!(reply.first() == Some(&b'E') && text.contains("54000") && text.contains("max-body-bytes"), "{text:?}");
    };
    oversized(1 << 30, 1024);
    oversized(9 << 20, 9 << 20);
    assert!(!Raw::connect(&pg[0]).query("SELECT count(*) FROM t").contains(&b'E'), "the door still serves");

    let reply = cluster.nodes[2].client().get("/db/query?level=strong&q=SELECT%20count(*)%20FROM%20t").expect("HTTP answers");
    assert_eq!(reply.body["results"][0]["values"], json!([[2]]), "the table changed: {}", reply.body);
}
