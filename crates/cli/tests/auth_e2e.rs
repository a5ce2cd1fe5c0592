//! `--auth` on real processes: requests without credentials, with a wrong password, or
//! without the permission their endpoint needs are refused (401, 401, 403) and change
//! nothing, through the leader and through a follower; health endpoints stay open where
//! the file says so. Passwords are hashed by `tern auth hash`.

mod support;

use serde_json::json;
use std::io::Write;
use std::process::{Command, Stdio};
use support::*;
use tern_server::client::HttpClient;

fn hash(password: &str) -> String {
    let mut child =
        Command::new(env!("CARGO_BIN_EXE_tern")).args(["auth", "hash"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("tern auth hash runs");
    child.stdin.take().expect("stdin").write_all(password.as_bytes()).expect("password written");
    let output = child.wait_with_output().expect("tern auth hash ends");
    assert!(output.status.success());
    let hash = String::from_utf8(output.stdout).expect("text").trim().to_string();
    assert!(hash.starts_with("$2") && !hash.contains(password), "a bcrypt hash, not the password: {hash}");
    hash
}

/// A scratch directory holding an auth file: `admin` may do anything, `reader` may
/// query, and anyone may ask `/readyz` and `/status`.
fn users_file(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let scratch = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let file = scratch.join("users.json");
    let users = json!([
        {"username": "admin", "password": hash("admin-pw"), "perms": ["all"]},
        {"username": "reader", "password": hash("reader-pw"), "perms": ["query"]},
        {"username": "*", "perms": ["ready", "status"]}
    ]);
    std::fs::write(&file, users.to_string()).expect("auth file written");
    (scratch, file)
}

#[test]
fn credentials_and_permissions_guard_every_node() {
    let (scratch, file) = users_file("tern-auth");
    let cluster = Cluster::start("auth", 3, &["--auth", &file.display().to_string()]);
    let leader = cluster.leader();
    let follower = cluster.nodes.iter().find(|node| node.id != leader.id).expect("a follower");
    let as_user = |node: &ServerNode, user: &str, password: &str| HttpClient::new(&node.http).with_basic_auth(user, password);

    let mut admin = as_user(follower, "admin", "admin-pw");
    let reply = admin.post_json("/db/execute", &json!(["CREATE TABLE secrets (v TEXT)", "INSERT INTO secrets VALUES ('one')"])).expect("answers");
    assert_eq!(reply.status, 200, "admin writes through a follower: {}", reply.body);

    let insert = json!(["INSERT INTO secrets VALUES ('intruder')"]);
    for node in [leader, follower] {
        let reply = node.client().post_json("/db/execute", &insert).expect("answers");
        assert_eq!(reply.status, 401, "no credentials on {}: {}", node.id, reply.body);
        let reply = as_user(node, "admin", "guess").post_json("/db/execute", &insert).expect("answers");
        assert_eq!(reply.status, 401, "a wrong password on {}: {}", node.id, reply.body);
        let reply = as_user(node, "nobody", "admin-pw").post_json("/db/execute", &insert).expect("answers");
        assert_eq!(reply.status, 401, "an unknown user on {}: {}", node.id, reply.body);
        let mut reader = as_user(node, "reader", "reader-pw");
        let reply = reader.post_json("/db/execute", &insert).expect("answers");
        assert_eq!(reply.status, 403, "a reader's write on {}: {}", node.id, reply.body);
        assert!(reply.body["error"].as_str().unwrap_or("").contains("execute"), "{}", reply.body);
        let reply = reader.post_json("/db/request", &insert).expect("answers");
        assert_eq!(reply.status, 403, "a reader's write through /db/request on {}: {}", node.id, reply.body);
        let reply = reader.post_json("/db/request", &json!(["SELECT count(*) FROM secrets"])).expect("answers");
        assert_eq!(reply.status, 200, "a reader's read through /db/request on {}: {}", node.id, reply.body);
        let reply = reader.get("/db/query?q=SELECT%20v%20FROM%20secrets&level=strong").expect("answers");
        assert_eq!(reply.body["results"][0]["values"], json!([["one"]]), "a reader reads on {}: {}", node.id, reply.body);
        for (method, path) in
            [("GET", "/db/backup"), ("POST", "/db/load"), ("POST", "/cluster/remove?id=n3"), ("POST", "/cluster/transfer-leader?to=n2"), ("DELETE", "/remove")]
        {
            let reply = reader.request(method, path, Some(b"{\"id\": \"n3\"}")).expect("answers");
            assert_eq!(reply.status, 403, "{method} {path} as a reader on {}: {}", node.id, reply.body);
            let reply = node.client().request(method, path, Some(b"{\"id\": \"n3\"}")).expect("answers");
            assert_eq!(reply.status, 401, "{method} {path} without credentials on {}: {}", node.id, reply.body);
        }
        // Left open by the "*" entry.
        assert_eq!(node.client().get("/readyz").expect("answers").status, 200);
        assert_eq!(node.client().get("/status").expect("answers").status, 200);
        assert_eq!(node.client().get("/db/query?q=SELECT%201").expect("answers").status, 401);
    }
    let reply = as_user(leader, "admin", "admin-pw").get("/db/query?q=SELECT%20count(*)%20FROM%20secrets&level=strong").expect("answers");
    assert_eq!(reply.body["results"][0]["values"], json!([[1]]), "nothing refused was written: {}", reply.body);
    // tern's own tools send TERN_USER and TERN_PASSWORD.
    let shell = |user: Option<(&str, &str)>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tern"));
        command.args(["shell", &follower.http, "-c", "SELECT count(*) AS n FROM secrets"]).env_remove("TERN_USER").env_remove("TERN_PASSWORD");
        if let Some((user, password)) = user {
            command.env("TERN_USER", user).env("TERN_PASSWORD", password);
        }
        let output = command.output().expect("tern shell runs");
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
    };
    let allowed = shell(Some(("reader", "reader-pw")));
    assert!(allowed.contains('1') && !allowed.contains("401"), "{allowed}");
    let refused = shell(None);
    assert!(refused.contains("credentials"), "{refused}");
    let reply = as_user(leader, "admin", "admin-pw").get("/cluster").expect("answers");
    assert_eq!(reply.body["voters"].as_array().map(Vec::len), Some(3), "nobody was removed: {}", reply.body);
    let _ = std::fs::remove_dir_all(scratch);
}

/// psql and the PostgreSQL door: a password is asked for and checked against the same
/// users; a reader reads and cannot write.
#[test]
fn the_postgresql_door_checks_passwords_and_permissions() {
    if !psql_available() {
        println!("SKIPPED: psql is not installed and apt-get could not install it");
        return;
    }
    let (scratch, file) = users_file("tern-auth-pg");
    let pg = free_port_addr();
    let mut cluster = Cluster::new("auth-pg", 1, &["--auth", &file.display().to_string(), "--pg", &pg]);
    cluster.start_all();
    let (host, port) = pg.rsplit_once(':').expect("host:port");
    let psql = |user: &str, password: &str, sql: &str| {
        let output = Command::new("psql")
            .args(["-h", host, "-p", port, "-U", user, "-d", "tern", "-X", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .expect("psql runs");
        (output.status.success(), format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)))
    };
    let (ok, text) = psql("admin", "admin-pw", "CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('one')");
    assert!(ok, "{text}");
    let (ok, text) = psql("admin", "wrong", "SELECT 1");
    assert!(!ok && text.to_lowercase().contains("password authentication failed"), "a wrong password: {text}");
    let (ok, text) = psql("reader", "reader-pw", "INSERT INTO t VALUES ('intruder')");
    assert!(!ok && text.contains("execute"), "a reader's write: {text}");
    let (ok, text) = psql("reader", "reader-pw", "SELECT count(*) FROM t");
    assert!(ok && text.contains(" 1\n"), "a reader reads one row: {text}");
    let _ = std::fs::remove_dir_all(scratch);
}

/// The leaderless topology's API is guarded the same way.
#[test]
fn a_leaderless_cluster_checks_credentials_too() {
    let (scratch, file) = users_file("tern-auth-leaderless");
    let cluster = Cluster::start_leaderless("auth-leaderless", &["us-east", "eu-west", "antarctica"], &["--auth", &file.display().to_string()]);
    let node = &cluster.nodes[1];
    let mut admin = HttpClient::new(&node.http).with_basic_auth("admin", "admin-pw");
    let reply = admin.post_json("/db/execute", &json!(["CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT)"])).expect("answers");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let insert = json!([["INSERT INTO kv VALUES (?, ?)", "a", "1"]]);
    assert_eq!(node.client().post_json("/db/execute", &insert).expect("answers").status, 401);
    let mut reader = HttpClient::new(&node.http).with_basic_auth("reader", "reader-pw");
    assert_eq!(reader.post_json("/db/execute", &insert).expect("answers").status, 403);
    assert_eq!(reader.post_json("/db/repair", &json!({})).expect("answers").status, 403);
    assert_eq!(node.client().get("/readyz").expect("answers").status, 200);
    let reply = reader.get("/db/query?q=SELECT%20count(*)%20FROM%20kv").expect("answers");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["results"][0]["values"], json!([[0]]), "nothing refused was written: {}", reply.body);
    let _ = std::fs::remove_dir_all(scratch);
}

#[test]
fn an_auth_file_with_plain_passwords_is_refused_at_start() {
    let scratch = std::env::temp_dir().join(format!("tern-auth-plain-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let file = scratch.join("users.json");
    std::fs::write(&file, r#"[{"username": "ann", "password": "plain", "perms": ["all"]}]"#).expect("written");
    let output = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args([
            "server",
            "--data",
            &scratch.join("n1").display().to_string(),
            "--http",
            &free_port_addr(),
            "--peer",
            &free_port_addr(),
            "--auth",
            &file.display().to_string(),
        ])
        .output()
        .expect("tern server runs");
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && text.contains("bcrypt"), "{text}");
    let _ = std::fs::remove_dir_all(scratch);
}

/// A forwarded request names its user, and the leader checks that user against its own
/// file: a follower whose file is laxer (here it lets `reader` execute) cannot lend the
/// permission by forwarding.
#[test]
fn the_leader_checks_the_user_a_follower_forwards_for() {
    let (scratch, strict) = users_file("tern-auth-forwarded");
    let lax = scratch.join("lax.json");
    let users = json!([
        {"username": "admin", "password": hash("admin-pw"), "perms": ["all"]},
        {"username": "reader", "password": hash("reader-pw"), "perms": ["query", "execute"]},
        {"username": "*", "perms": ["ready", "status"]}
    ]);
    std::fs::write(&lax, users.to_string()).expect("lax file written");
    let mut cluster = Cluster::new("auth-forwarded", 3, &[]);
    for node in &mut cluster.nodes {
        let file = if node.id == "n1" { &strict } else { &lax };
        node.push_args(&["--auth", &file.display().to_string()]);
    }
    cluster.start_all();
    let follower = &cluster.nodes[1];
    let mut admin = HttpClient::new(&follower.http).with_basic_auth("admin", "admin-pw");
    let reply = admin.post_json("/db/execute", &json!(["CREATE TABLE t (v TEXT)", "INSERT INTO t VALUES ('admin')"])).expect("answers");
    assert_eq!(reply.status, 200, "admin writes through the follower: {}", reply.body);
    let mut reader = HttpClient::new(&follower.http).with_basic_auth("reader", "reader-pw");
    let reply = reader.post_json("/db/execute", &json!(["INSERT INTO t VALUES ('reader')"])).expect("answers");
    assert_eq!(reply.status, 403, "the leader refuses the reader's forwarded write: {}", reply.body);
    assert!(reply.body.to_string().contains("on the leader"), "{}", reply.body);
    let reply = reader.get("/db/query?q=SELECT%20v%20FROM%20t&level=strong").expect("answers");
    assert_eq!(reply.body["results"][0]["values"], json!([["admin"]]), "the reader's forwarded read is served, and nothing else was written: {}", reply.body);
    assert!(cluster.nodes[0].log_text().contains("forwarded for user \"reader\""), "the leader logs whom it refused");
    let _ = std::fs::remove_dir_all(scratch);
}
