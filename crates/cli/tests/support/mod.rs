//! A supervisor for real `tern server` processes on loopback: start, SIGKILL, SIGSTOP,
//! restart, and talk to them over HTTP. Every node logs to `<dir>/<id>.log`.

#![allow(dead_code)]

use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tern_server::client::{encode_query_value, HttpClient, Reply};

/// A loopback address whose port is free now (see `tern_server::client::free_local_addr`).
pub fn free_port_addr() -> String {
    tern_server::client::free_local_addr().expect("a free loopback port").to_string()
}

pub struct ServerNode {
    pub id: String,
    pub http: String,
    pub peer: String,
    pub data: PathBuf,
    args: Vec<String>,
    /// Runs the server through this command (`ip netns exec NS`); empty: directly.
    wrapper: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl ServerNode {
    pub fn start(&mut self) {
        self.start_with_env(&[]);
    }

    /// Starts the server with extra environment variables (`TERN_FAILPOINTS`, say).
    pub fn start_with_env(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "{} is already running", self.id);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file opens");
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(env!("CARGO_BIN_EXE_tern"));
                command
            }
            None => Command::new(env!("CARGO_BIN_EXE_tern")),
        };
        let child = command
            .arg("server")
            .args(&self.args)
            .env("TERN_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("tern binary starts");
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown code runs, only what was fsynced survives.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill succeeds");
            child.wait().expect("wait succeeds");
        }
    }

    /// Is the process still running (it has not exited by itself)?
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|child| child.try_wait().expect("wait works").is_none())
    }

    /// CPU time the process has used (user and system), from /proc (Linux), in clock
    /// ticks (1/100 s).
    pub fn cpu_ticks(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // After the command name, which may hold spaces, in parentheses.
        let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split_whitespace().collect();
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    }

    /// The process's resident memory, from /proc (Linux), in bytes.
    pub fn rss_bytes(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// Waits for the process to end by itself; its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("node is running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("wait works") {
                self.child = None;
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not exit within {timeout:?}\n{}", self.id, self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait: a clean shutdown (the database is checkpointed).
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill runs");
            assert!(status.success());
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait().expect("wait works").is_none() {
                assert!(Instant::now() < deadline, "{} did not stop within 30 s of SIGTERM", self.id);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("node is running");
        let status = Command::new("kill").args([&format!("-{signal}"), &child.id().to_string()]).status().expect("kill runs");
        assert!(status.success());
    }

    pub fn client(&self) -> HttpClient {
        HttpClient::new(&self.http).with_timeout(Duration::from_secs(30))
    }

    /// The flags it starts with.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// More flags for the next start (a leader priority, say).
    pub fn push_args(&mut self, args: &[&str]) {
        self.args.extend(args.iter().map(|arg| arg.to_string()));
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ServerNode {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Cluster {
    pub dir: PathBuf,
    pub nodes: Vec<ServerNode>,
    /// Network namespaces the nodes run in, if any (removed after the nodes stop).
    pub namespaces: Option<Namespaces>,
}

impl Cluster {
    /// `count` nodes, n1 the leader, all started, each with the same extra flags.
    pub fn start(name: &str, count: usize, extra: &[&str]) -> Cluster {
        Cluster::started(|| Cluster::new(name, count, extra))
    }

    /// Makes a cluster, starts every node and waits until each is ready. A port found free
    /// can be taken by another process before the node binds it (the node then exits with
    /// "Address already in use"): the cluster is then made again, on other ports.
    fn started(make: impl Fn() -> Cluster) -> Cluster {
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            let mut cluster = make();
            for node in &mut cluster.nodes {
                node.start();
            }
            match cluster.try_wait_ready() {
                Ok(()) => return cluster,
                Err(why) if attempt < ATTEMPTS && why.contains("Address already in use") => {
                    eprintln!("a port was taken before its node bound it; starting the cluster again on other ports: {why}");
                }
                Err(why) => panic!("{why}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Waits until every started node is ready; fails at once, with the node's log, if
    /// one exits, and after 30 s for a node otherwise.
    fn try_wait_ready(&mut self) -> Result<(), String> {
        for node in &mut self.nodes {
            if node.child.is_none() {
                continue;
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut client = HttpClient::new(&node.http).with_timeout(Duration::from_secs(2));
            while !client.get("/readyz").is_ok_and(|reply| reply.status == 200) {
                let exited = node.child.as_mut().is_some_and(|child| child.try_wait().ok().flatten().is_some());
                if exited || Instant::now() > deadline {
                    let how = if exited { "exited" } else { "did not become ready within 30 s" };
                    return Err(format!("{} at {} {how} ({})", node.id, node.http, node.log_text()));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// Like `start` but leaves every node stopped.
    pub fn new(name: &str, count: usize, extra: &[&str]) -> Cluster {
        let regions = ["us-east", "eu-west", "antarctica", "ap-south", "sa-east"];
        let node_regions: Vec<&str> = (0..count).map(|index| regions[index % regions.len()]).collect();
        Cluster::with_regions(name, &node_regions, "single-leader", extra)
    }

    /// Single-leader: node `i` (n1, n2, ...) in region `node_regions[i]`, n1 the first
    /// leader, each with `extra`; none started.
    pub fn new_in_regions(name: &str, node_regions: &[&str], extra: &[&str]) -> Cluster {
        Cluster::with_regions(name, node_regions, "single-leader", extra)
    }

    /// Starts every node that is not running, then waits until each is ready.
    pub fn start_all(&mut self) {
        for node in &mut self.nodes {
            if node.child.is_none() {
                node.start();
            }
        }
        self.wait_ready();
    }

    /// Multi-leader: node `i` (n1, n2, ...) in region `node_regions[i]`, each region's
    /// first node its first leader; all started, each with `extra` and fault injection.
    pub fn start_multi_leader(name: &str, node_regions: &[&str], extra: &[&str]) -> Cluster {
        Cluster::started(|| Cluster::with_regions(name, node_regions, "multi-leader", extra))
    }

    /// Leaderless: node `i` (n1, n2, ...) in region `node_regions[i]`; none started.
    pub fn new_leaderless(name: &str, node_regions: &[&str], extra: &[&str]) -> Cluster {
        Cluster::with_regions(name, node_regions, "leaderless", extra)
    }

    /// Leaderless: node `i` (n1, n2, ...) in region `node_regions[i]`; all started.
    pub fn start_leaderless(name: &str, node_regions: &[&str], extra: &[&str]) -> Cluster {
        Cluster::started(|| Cluster::with_regions(name, node_regions, "leaderless", extra))
    }

    fn with_regions(name: &str, node_regions: &[&str], topology: &str, extra: &[&str]) -> Cluster {
        let named_regions = topology != "single-leader";
        let dir = std::env::temp_dir().join(format!("tern-e2e-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let specs: Vec<(String, String, String)> = (1..=node_regions.len()).map(|number| (format!("n{number}"), free_port_addr(), free_port_addr())).collect();
        let members = specs
            .iter()
            .zip(node_regions)
            .map(|((id, _, peer), region)| if named_regions { format!("{id}@{region}={peer}") } else { format!("{id}={peer}") })
            .collect::<Vec<_>>()
            .join(",");
        let nodes = specs
            .iter()
            .zip(node_regions)
            .map(|((id, http, peer), region)| {
                let data = dir.join(id);
                let mut args = node_args(id, &data, http, peer, &members);
                args.extend(["--region".to_string(), region.to_string()]);
                if topology == "multi-leader" {
                    args.extend(["--topology", "multi-leader", "--fault-injection", "on"].map(String::from));
                }
                if topology == "leaderless" {
                    args.extend(["--topology", "leaderless"].map(String::from));
                }
                args.extend(extra.iter().map(|arg| arg.to_string()));
                ServerNode {
                    id: id.clone(),
                    http: http.clone(),
                    peer: peer.clone(),
                    data,
                    args,
                    wrapper: Vec::new(),
                    log: dir.join(format!("{id}.log")),
                    child: None,
                }
            })
            .collect();
        Cluster { dir, nodes, namespaces: None }
    }

    /// `count` nodes, each in its own network namespace with two links: one for clients
    /// (this test process reaches every node's HTTP API through it) and one for peer
    /// traffic, which `Namespaces::cut` takes down to partition a node. Started and ready.
    ///
    /// # Errors
    /// Why namespaces cannot be made here (not root, no `ip`, no veth or bridge support).
    pub fn start_in_namespaces(name: &str, count: usize, extra: &[&str]) -> Result<Cluster, String> {
        let namespaces = Namespaces::create(count)?;
        let mut cluster = Cluster::new(name, count, extra);
        let members = (1..=count).map(|number| format!("n{number}={}", namespaces.peer_addr(number))).collect::<Vec<_>>().join(",");
        for (index, node) in cluster.nodes.iter_mut().enumerate() {
            let number = index + 1;
            node.http = namespaces.http_addr(number);
            node.peer = namespaces.peer_addr(number);
            let mut args = node.args.clone();
            for pair in args.chunks_mut(2) {
                match pair[0].as_str() {
                    "--http" => pair[1] = node.http.clone(),
                    "--peer" => pair[1] = node.peer.clone(),
                    "--cluster" => pair[1] = members.clone(),
                    _ => {}
                }
            }
            node.args = args;
            node.wrapper = namespaces.wrapper(number);
        }
        cluster.namespaces = Some(namespaces);
        for node in &mut cluster.nodes {
            node.start();
        }
        cluster.wait_ready();
        Ok(cluster)
    }

    /// A new node started with `--join` (no `--cluster`): it waits for the leader to add
    /// it. Returns its index in `nodes`.
    pub fn start_joining(&mut self, extra: &[&str]) -> usize {
        let id = format!("n{}", self.nodes.len() + 1);
        let (http, peer) = (free_port_addr(), free_port_addr());
        let data = self.dir.join(&id);
        let mut args: Vec<String> = vec!["--id".into(), id.clone(), "--region".into(), "ap-south".into(), "--data".into(), data.display().to_string()];
        args.extend(["--http".to_string(), http.clone(), "--peer".to_string(), peer.clone(), "--join".to_string()]);
        args.extend(extra.iter().map(|arg| arg.to_string()));
        let mut node = ServerNode { id: id.clone(), http, peer, data, args, wrapper: Vec::new(), log: self.dir.join(format!("{id}.log")), child: None };
        node.start();
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// A node this cluster does not know, with its own defaults (single-leader) and a
    /// `--cluster` of itself and `others` (`ID=PEER,...`); not started.
    pub fn stray_node(&self, id: &str, others: &str) -> ServerNode {
        let (http, peer) = (free_port_addr(), free_port_addr());
        let data = self.dir.join(id);
        let args = node_args(id, &data, &http, &peer, &format!("{id}={peer},{others}"));
        ServerNode { id: id.into(), http, peer, data, args, wrapper: Vec::new(), log: self.dir.join(format!("{id}.log")), child: None }
    }

    /// Leaderless: a node not yet a member, whose `--cluster` is every current member
    /// (`ID@REGION=PEER`, comma separated) and itself; not started.
    pub fn leaderless_newcomer(&self, id: &str, region: &str, members: &str, extra: &[&str]) -> ServerNode {
        let (http, peer) = (free_port_addr(), free_port_addr());
        let data = self.dir.join(id);
        let mut args = node_args(id, &data, &http, &peer, &format!("{members},{id}@{region}={peer}"));
        args.extend(["--region", region, "--topology", "leaderless"].map(String::from));
        args.extend(extra.iter().map(|arg| arg.to_string()));
        ServerNode { id: id.into(), http, peer, data, args, wrapper: Vec::new(), log: self.dir.join(format!("{id}.log")), child: None }
    }

    pub fn wait_ready(&mut self) {
        if let Err(why) = self.try_wait_ready() {
            panic!("{why}");
        }
    }

    pub fn leader(&self) -> &ServerNode {
        &self.nodes[0]
    }

    pub fn logs(&self) -> String {
        self.nodes.iter().map(|node| format!("---- {} ----\n{}", node.id, node.log_text())).collect()
    }
}

/// `tern server`'s flags for a node: its id, data directory, addresses and `--cluster`.
fn node_args(id: &str, data: &std::path::Path, http: &str, peer: &str, cluster: &str) -> Vec<String> {
    let flags = ["--id", id, "--data", &data.display().to_string(), "--http", http, "--peer", peer, "--cluster", cluster].map(String::from);
    flags.to_vec()
}

pub fn wait_node_ready(node: &ServerNode) {
    if let Err(error) = tern_server::client::wait_ready(std::slice::from_ref(&node.http), Duration::from_secs(30)) {
        panic!("{} ({}): {error}", node.id, node.log_text());
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        self.namespaces.take();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Whether psql is installed, installing Debian's postgresql-client when it is not (CI
/// runs as root); a test that needs it says SKIPPED when this is false.
pub fn psql_available() -> bool {
    let installed = || Command::new("sh").args(["-c", "command -v psql"]).output().is_ok_and(|output| output.status.success());
    if !installed() {
        let _ = Command::new("sh")
            .args(["-c", "(apt-get install -y -q postgresql-client || (apt-get update -q && apt-get install -y -q postgresql-client)) >/dev/null 2>&1"])
            .status();
    }
    installed()
}

/// Polls `condition` every 20 ms until it holds, or panics naming what was awaited.
pub fn eventually(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn execute(client: &mut HttpClient, query: &str, statements: Value) -> Reply {
    client.post_json(&format!("/db/execute{query}"), &statements).expect("node answers")
}

/// `GET /db/query?q=...&<params>`.
pub fn query(client: &mut HttpClient, sql: &str, params: &str) -> Reply {
    let separator = if params.is_empty() { "" } else { "&" };
    client.get(&format!("/db/query?q={}{separator}{params}", encode_query_value(sql))).expect("node answers")
}

/// The rows of the first result of a successful query.
pub fn rows(reply: &Reply) -> Vec<Value> {
    assert_eq!(reply.status, 200, "query failed: {}", reply.body);
    assert!(reply.body["results"][0]["error"].is_null(), "query failed: {}", reply.body);
    reply.body["results"][0]["values"].as_array().cloned().unwrap_or_default()
}

pub fn count(client: &mut HttpClient, sql: &str, params: &str) -> i64 {
    rows(&query(client, sql, params))[0][0].as_i64().expect("count is an integer")
}

pub fn applied_index(client: &mut HttpClient) -> u64 {
    client.get("/status").expect("status answers").body["node"]["applied_index"].as_u64().expect("applied_index present")
}

pub fn table(name: &str) -> Value {
    json!([format!("CREATE TABLE {name} (id INTEGER PRIMARY KEY, v TEXT)")])
}

/// Network namespaces for real partitions on machines without iptables or nft: node `i`
/// lives in its own namespace with a client link and a peer link, each a veth pair whose
/// outer end is on a bridge (one bridge per network) in the test's namespace. Taking a
/// node's peer link down drops everything it sends to or receives from other nodes,
/// established connections included, while its HTTP API stays reachable.
pub struct Namespaces {
    tag: String,
    subnet: u32,
    count: usize,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip").args(args).output().map_err(|error| format!("cannot run ip: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim()))
    }
}

impl Namespaces {
    pub fn create(count: usize) -> Result<Namespaces, String> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let serial = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("t{}{serial}", std::process::id() % 10_000);
        let subnet = 100 + (std::process::id() + serial * 7) % 100;
        let namespaces = Namespaces { tag, subnet, count: 0 };
        namespaces.setup(count)
    }

    fn setup(mut self, count: usize) -> Result<Namespaces, String> {
        let (client_bridge, peer_bridge) = (format!("{}c", self.tag), format!("{}p", self.tag));
        ip(&["link", "add", &client_bridge, "type", "bridge"])?;
        ip(&["link", "add", &peer_bridge, "type", "bridge"])?;
        self.count = count; // from here on, Drop cleans up whatever exists
        ip(&["addr", "add", &format!("10.{}.1.1/24", self.subnet), "dev", &client_bridge])?;
        ip(&["link", "set", &client_bridge, "up"])?;
        ip(&["link", "set", &peer_bridge, "up"])?;
        for number in 1..=count {
            let namespace = self.namespace(number);
            ip(&["netns", "add", &namespace])?;
            ip(&["netns", "exec", &namespace, "ip", "link", "set", "lo", "up"])?;
            for (kind, bridge, net) in [("c", &client_bridge, 1), ("p", &peer_bridge, 2)] {
                let (outer, inner) = (format!("{}{kind}{number}", self.tag), format!("{}{}{number}", self.tag, kind.to_uppercase()));
                ip(&["link", "add", &outer, "type", "veth", "peer", "name", &inner])?;
                ip(&["link", "set", &inner, "netns", &namespace])?;
                ip(&["link", "set", &outer, "master", bridge])?;
                ip(&["link", "set", &outer, "up"])?;
                let address = format!("10.{}.{net}.{}/24", self.subnet, 10 + number);
                ip(&["netns", "exec", &namespace, "ip", "addr", "add", &address, "dev", &inner])?;
                ip(&["netns", "exec", &namespace, "ip", "link", "set", &inner, "up"])?;
            }
        }
        Ok(self)
    }

    fn namespace(&self, number: usize) -> String {
        format!("{}n{number}", self.tag)
    }

    pub fn http_addr(&self, number: usize) -> String {
        format!("10.{}.1.{}:4001", self.subnet, 10 + number)
    }

    pub fn peer_addr(&self, number: usize) -> String {
        format!("10.{}.2.{}:7001", self.subnet, 10 + number)
    }

    pub fn wrapper(&self, number: usize) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.namespace(number)]
    }

    /// Takes node `number`'s peer link down (up again with `heal`).
    pub fn cut(&self, number: usize) {
        let link = format!("{}P{number}", self.tag);
        ip(&["netns", "exec", &self.namespace(number), "ip", "link", "set", &link, "down"]).expect("peer link goes down");
    }

    pub fn heal(&self, number: usize) {
        let link = format!("{}P{number}", self.tag);
        ip(&["netns", "exec", &self.namespace(number), "ip", "link", "set", &link, "up"]).expect("peer link comes up");
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth ends inside it, and so their pairs.
        for number in 1..=self.count {
            let _ = ip(&["netns", "del", &self.namespace(number)]);
        }
        let _ = ip(&["link", "del", &format!("{}c", self.tag)]);
        let _ = ip(&["link", "del", &format!("{}p", self.tag)]);
    }
}

/// A 3-node cluster, started, with table `ledger (id INTEGER PRIMARY KEY, v TEXT)` on every node.
pub fn start_with_ledger(name: &str, extra: &[&str]) -> Cluster {
    let cluster = Cluster::start(name, 3, extra);
    let reply = execute(&mut cluster.leader().client(), "?w=all", json!(["CREATE TABLE ledger (id INTEGER PRIMARY KEY, v TEXT)"]));
    assert_eq!(reply.status, 200, "{}", reply.body);
    cluster
}
