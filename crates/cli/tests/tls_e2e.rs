//! TLS on real processes (`tern certs`, `--tls-dir`): a cluster with TLS on every door
//! serves, fails over and catches up as before; a peer without a certificate, with one
//! from another CA, or with one that names another node, cannot connect, and the frame it
//! sends is never processed (a control with the right certificate shows the same frame
//! would be); an impostor node never joins.

mod support;

use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use support::*;
use tern_server::wire::{write_frame, Frame, Hello};
use tokio::io::AsyncWriteExt;

/// `tern certs DIR --nodes IDS` (a CA already in DIR signs them).
fn certs(dir: &Path, nodes: &str) {
    let output = Command::new(env!("CARGO_BIN_EXE_tern")).args(["certs", &dir.display().to_string(), "--nodes", nodes]).output().expect("tern certs runs");
    assert!(output.status.success(), "tern certs: {}", String::from_utf8_lossy(&output.stderr));
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// One cluster CA for the whole test process: what `https://` clients trust is
/// process-wide, and the tests run in parallel.
fn shared_certs() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch("tern-tls-certs");
        certs(&dir, "n1,n2,n3,n4");
        let config = tern_server::tls::client_config_from(&dir.join("ca.pem"), None).expect("the CA loads");
        tern_server::client::trust_for_https(config);
        dir
    })
    .clone()
}

/// A 3-node cluster with `--tls-dir` (and any `extra`), its nodes addressed as
/// `https://`, this process trusting the cluster CA.
fn tls_cluster(name: &str, certs_dir: &Path, extra: &[&str]) -> Cluster {
    tls_cluster_of(name, 3, certs_dir, extra)
}

fn tls_cluster_of(name: &str, count: usize, certs_dir: &Path, extra: &[&str]) -> Cluster {
    let dir = certs_dir.display().to_string();
    let mut flags = vec!["--tls-dir", dir.as_str()];
    flags.extend_from_slice(extra);
    serve_https(Cluster::new(name, count, &flags))
}

/// Starts a cluster made with TLS flags, its nodes addressed as `https://`.
fn serve_https(mut cluster: Cluster) -> Cluster {
    for node in &mut cluster.nodes {
        node.http = format!("https://{}", node.http);
    }
    cluster.start_all();
    cluster
}

#[test]
fn a_cluster_with_tls_everywhere_serves_fails_over_and_catches_up() {
    let certs_dir = shared_certs();
    let mut cluster = tls_cluster("tls-failover", &certs_dir, &[]);
    let mut follower = cluster.nodes[1].client();
    let reply = execute(&mut follower, "", json!(["CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT)"]));
    assert_eq!(reply.status, 200, "{}", reply.body);
    for id in 0..20 {
        let reply = execute(&mut follower, "", json!([["INSERT INTO orders VALUES (?, ?)", id, format!("item {id}")]]));
        assert_eq!(reply.status, 200, "write {id} through a follower over HTTPS: {}", reply.body);
    }
    // Plain HTTP to a TLS port gets no HTTP answer.
    let plain = cluster.nodes[0].http.trim_start_matches("https://").to_string();
    assert!(tern_server::client::HttpClient::new(&plain).with_timeout(Duration::from_secs(5)).get("/status").is_err(), "plain HTTP must not be served");

    // The dashboard's view of the cluster is gathered over HTTPS from every member.
    let state = cluster.nodes[2].client().get("/dashboard/state").expect("dashboard answers");
    let nodes = state.body["nodes"].as_array().cloned().unwrap_or_default();
    assert_eq!(nodes.len(), 3, "{}", state.body);
    assert!(nodes.iter().all(|node| node["applied_index"].as_u64().is_some()), "every member answered over HTTPS: {}", state.body);

    cluster.nodes[0].kill();
    let mut new_leader = None;
    eventually(Duration::from_secs(30), "a new leader over TLS", || {
        let reply = cluster.nodes[1].client().with_timeout(Duration::from_secs(5)).get("/status");
        new_leader = reply.ok().and_then(|reply| reply.body["node"]["leader"].as_str().map(String::from)).filter(|leader| leader != "n1");
        new_leader.is_some()
    });
    let mut survivor = cluster.nodes[2].client();
    for id in 20..40 {
        let mut written = false;
        eventually(Duration::from_secs(30), "a write after failover", || {
            let reply = execute(&mut survivor, "", json!([["INSERT INTO orders VALUES (?, ?)", id, format!("item {id}")]]));
            written = reply.status == 200 || reply.body.to_string().contains("UNIQUE");
            written
        });
    }
    cluster.nodes[0].start();
    wait_node_ready(&cluster.nodes[0]);
    let mut old_leader = cluster.nodes[0].client();
    eventually(Duration::from_secs(30), "the old leader to catch up over TLS", || count(&mut old_leader, "SELECT count(*) FROM orders", "level=none") == 40);
    let logs = cluster.logs();
    assert!(!logs.contains("refused a peer connection"), "members refused each other:\n{logs}");
}

/// Connects to `peer` as a rogue would: over plain TCP (`tls: None`) or TLS presenting
/// `identity` (certificate and key), says Hello as `claimed`, and sends a forwarded write
/// of `INSERT INTO t VALUES (marker)`. Returns once the frames are written or refused.
async fn send_as(peer: &str, tls: Option<(&Path, &Path, &Path)>, claimed: &str, marker: &str) -> Result<(), String> {
    let stream = tokio::net::TcpStream::connect(peer).await.map_err(|error| error.to_string())?;
    let hello = Frame::Hello(Hello {
        id: claimed.to_string(),
        region: "us-east".to_string(),
        http_addr: String::new(),
        peer_addr: "127.0.0.1:9".to_string(),
        topology: tern_core::Topology::SingleLeader,
        preference: tern_core::Preference::default(),
    });
    let request =
        tern_storage::WriteRequest { statements: vec![tern_storage::Statement::new(format!("INSERT INTO t VALUES ('{marker}')"))], transaction: false };
    let write = Frame::ForwardWrite { id: 1, request, requirement: None, regions: None, to_home: false, user: None };
    let send = |mut writer: Box<dyn tokio::io::AsyncWrite + Send + Unpin>| async move {
        write_frame(&mut writer, &hello).await?;
        write_frame(&mut writer, &write).await?;
        writer.flush().await?;
        // Long enough for a node that accepted the frames to have handled them.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok::<(), std::io::Error>(())
    };
    match tls {
        None => send(Box::new(stream)).await.map_err(|error| error.to_string()),
        Some((ca, cert, key)) => {
            let config = tern_server::tls::client_config_from(ca, Some((cert, key)))?;
            let name = rustls::pki_types::ServerName::try_from("n1").expect("a DNS name");
            let stream = tokio_rustls::TlsConnector::from(Arc::clone(&config)).connect(name, stream).await.map_err(|error| error.to_string())?;
            send(Box::new(stream)).await.map_err(|error| error.to_string())
        }
    }
}

#[test]
fn a_peer_without_the_clusters_certificate_cannot_connect_and_its_frames_are_never_processed() {
    let certs_dir = shared_certs();
    let mut cluster = tls_cluster("tls-peers", &certs_dir, &[]);
    let mut leader = cluster.nodes[0].client();
    let reply = execute(&mut leader, "", json!(["CREATE TABLE t (v TEXT)"]));
    assert_eq!(reply.status, 200, "{}", reply.body);
    // Another CA's certificate for n3; and the cluster CA's for n4, which claims to be n3.
    let other = scratch("tern-tls-other-ca");
    certs(&other, "n3");
    let (ca, other_ca) = (certs_dir.join("ca.pem"), other.join("ca.pem"));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let peer = cluster.nodes[0].peer.clone();
    let attempts: [(&str, Option<(&Path, &Path, &Path)>, &str); 4] = [
        ("plain", None, "n3"),
        ("other-ca", Some((&other_ca, &other.join("n3.pem"), &other.join("n3.key"))), "n3"),
        // It trusts the cluster CA itself, so only the server's check refuses it.
        ("other-ca-trusting", Some((&ca, &other.join("n3.pem"), &other.join("n3.key"))), "n3"),
        ("misnamed", Some((&ca, &certs_dir.join("n4.pem"), &certs_dir.join("n4.key"))), "n3"),
    ];
    for (marker, tls, claimed) in attempts {
        let outcome = runtime.block_on(send_as(&peer, tls, claimed, marker));
        eprintln!("{marker}: {outcome:?}");
    }
    // The control: n3's own certificate, the same frames: processed.
    runtime.block_on(send_as(&peer, Some((&ca, &certs_dir.join("n3.pem"), &certs_dir.join("n3.key"))), "n3", "control")).expect("n3's certificate is accepted");
    eventually(Duration::from_secs(10), "the control's write", || count(&mut leader, "SELECT count(*) FROM t WHERE v = 'control'", "level=strong") == 1);
    let values = rows(&query(&mut leader, "SELECT v FROM t ORDER BY v", "level=strong"));
    assert_eq!(values, vec![json!(["control"])], "only the control's frame may be processed");
    let log = cluster.nodes[0].log_text();
    assert!(log.matches("refused a peer connection").count() >= 4, "each rogue connection is refused and logged:\n{log}");
    assert!(log.contains("its certificate does not name \"n3\""), "the misnamed certificate is refused for its name:\n{log}");

    // An impostor n3 process, with another CA's certificate, never joins.
    cluster.nodes[2].kill();
    let impostor_dir = other.display().to_string();
    let mut impostor_args = Vec::new();
    let mut skip = false;
    // Same flags as n3 but another --tls-dir.
    for arg in cluster.nodes[2].args().to_vec() {
        if skip {
            impostor_args.push(impostor_dir.clone());
            skip = false;
        } else {
            skip = arg == "--tls-dir";
            impostor_args.push(arg);
        }
    }
    let impostor_log = cluster.dir.join("impostor.log");
    let mut impostor = Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("server")
        .args(&impostor_args)
        .env("TERN_LOG", "info")
        .stderr(std::fs::File::create(&impostor_log).expect("log file"))
        .spawn()
        .expect("impostor starts");
    std::thread::sleep(Duration::from_secs(3));
    let nodes = leader.get("/nodes").expect("nodes answers").body;
    assert_eq!(nodes["n3"]["reachable"], json!(false), "the impostor must not be a reachable member: {nodes}");
    let reply = execute(&mut leader, "?w=all&timeout=3s", json!(["INSERT INTO t VALUES ('needs everyone')"]));
    assert_ne!(reply.status, 200, "w=all cannot be acknowledged by an impostor: {}", reply.body);
    let _ = impostor.kill();
    let _ = impostor.wait();
    let impostor_text = std::fs::read_to_string(&impostor_log).unwrap_or_default();
    assert!(impostor_text.contains("TLS with"), "the impostor's handshakes fail:\n{impostor_text}");
    let _ = std::fs::remove_dir_all(&other);
}

/// The PostgreSQL door with a certificate: psql verifies it and speaks TLS; a client
/// that does not ask for TLS is refused before it can send a password.
#[test]
fn the_postgresql_door_speaks_tls_and_refuses_plain_text() {
    if !psql_available() {
        println!("SKIPPED: psql is not installed and apt-get could not install it");
        return;
    }
    let certs_dir = shared_certs();
    let pg = free_port_addr();
    let _cluster = tls_cluster_of("tls-pg", 1, &certs_dir, &["--pg", &pg]);
    let port = pg.rsplit_once(':').expect("host:port").1;
    let ca = certs_dir.join("ca.pem").display().to_string();
    let psql = |sslmode: &str, sql: &str| {
        let connection = format!("host=localhost port={port} dbname=tern user=tern sslmode={sslmode} sslrootcert={ca} connect_timeout=10");
        let output = Command::new("psql").args([connection.as_str(), "-X", "-v", "ON_ERROR_STOP=1", "-c", sql]).output().expect("psql runs");
        (output.status.success(), format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)))
    };
    let (ok, text) = psql("verify-full", "CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('over tls')");
    assert!(ok, "psql with sslmode=verify-full: {text}");
    let (ok, text) = psql("verify-full", "\\conninfo");
    assert!(ok && text.contains("SSL connection"), "the connection is encrypted: {text}");
    let (ok, text) = psql("verify-full", "SELECT v FROM t");
    assert!(ok && text.contains("over tls"), "{text}");
    let (ok, text) = psql("disable", "SELECT 1");
    assert!(!ok && text.contains("requires TLS"), "plain text is refused: {text}");
}

/// Leaderless peer links use the same mutual TLS: a row written at one node with `w=all`
/// is read at another with `r=all`, every copy having crossed TLS.
#[test]
fn a_leaderless_cluster_replicates_over_tls() {
    let certs_dir = shared_certs();
    let dir = certs_dir.display().to_string();
    let cluster = serve_https(Cluster::new_leaderless("tls-leaderless", &["us-east", "eu-west", "antarctica"], &["--replicas", "3", "--tls-dir", &dir]));
    let reply = execute(&mut cluster.nodes[0].client(), "", json!(["CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT)"]));
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = execute(&mut cluster.nodes[0].client(), "?w=all", json!([["INSERT INTO kv VALUES (?, ?)", "a", "over tls"]]));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body["results"][0]["error"].is_null(), "w=all: every replica acknowledged over TLS: {}", reply.body);
    let reply = query(&mut cluster.nodes[2].client(), "SELECT v FROM kv WHERE k = 'a'", "r=all");
    assert_eq!(rows(&reply), vec![json!(["over tls"])], "{}", reply.body);
    let logs = cluster.logs();
    assert!(!logs.contains("refused a peer connection") && !logs.contains("TLS with"), "members refused each other:\n{logs}");
}

/// The explicit flags, and client certificates for the API (`--http-ca`): a client
/// without one gets no answer, a client with one signed by the CA is served.
#[test]
fn the_api_can_require_client_certificates() {
    let certs_dir = shared_certs();
    let file = |name: &str| certs_dir.join(name).display().to_string();
    let flags = [
        "--node-cert".to_string(),
        file("n1.pem"),
        "--node-key".to_string(),
        file("n1.key"),
        "--node-ca".to_string(),
        file("ca.pem"),
        "--http-cert".to_string(),
        file("n1.pem"),
        "--http-key".to_string(),
        file("n1.key"),
        "--http-ca".to_string(),
        file("ca.pem"),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut cluster = Cluster::new("tls-client-certs", 1, &flags);
    let address = format!("https://{}", cluster.nodes[0].http);
    cluster.nodes[0].http = address.clone();
    cluster.nodes[0].start();
    let with_certificate =
        tern_server::tls::client_config_from(&certs_dir.join("ca.pem"), Some((&certs_dir.join("n4.pem"), &certs_dir.join("n4.key")))).expect("loads");
    let mut client = tern_server::client::HttpClient::new(&address).with_tls(Some(with_certificate)).with_timeout(Duration::from_secs(5));
    eventually(Duration::from_secs(30), "the node to answer a client with a certificate", || client.get("/readyz").is_ok_and(|reply| reply.status == 200));
    let reply = client.post_json("/db/execute", &json!(["CREATE TABLE t (v)"])).expect("answers");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let without = tern_server::client::HttpClient::new(&address).with_timeout(Duration::from_secs(5)).get("/readyz");
    assert!(without.is_err(), "a client without a certificate is not served: {without:?}");
}
