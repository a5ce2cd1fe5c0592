//! The `tern` binary: `tern server` runs one node, `tern demo` an in-process multi-region
//! cluster with a workload, `tern bench` a benchmark on real processes.

mod admin;
mod args;
mod bench;
mod bench_devices;
mod bench_geo;
mod bench_leaderless;
mod bench_sizing;
mod changes;
mod cluster;
mod conflicts;
mod demo;
mod demo_multi;
mod device;
mod lab;
mod shell;
mod sim;
mod stats;

use args::{AckArg, LogFormatArg, Switch, TopologyArg};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use tern_core::Topology;
use tern_server::{parse_cluster_with_regions, NodeConfig, WanLatency};

#[derive(Parser)]
#[command(name = "tern", version, about = "A geo-replicated SQL database on SQLite, in which replication is the product")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node of a cluster.
    Server(Box<ServerArgs>),
    /// Start an in-process 3-region cluster with emulated WAN latency, run an e-commerce
    /// workload, print what was measured, then keep serving until Ctrl-C.
    Demo(demo::DemoArgs),
    /// Start a 3-node cluster of real processes on loopback and measure writes/s and
    /// latency per ack mode and client count.
    Bench(bench::BenchArgs),
    /// Run the deterministic cluster simulator with faults and check its properties.
    Sim(sim::SimArgs),
    /// Measure the primer's claims about replication (stale reads, lost writes, ...) as
    /// experiments, and write a report with plots.
    Lab(lab::LabArgs),
    /// Compare every replica's data (table checksums; page hashes for --log-format physical).
    Verify(VerifyArgs),
    /// Inspect a node's rollback store: entries it removed because a later leader lacked them.
    #[command(subcommand)]
    Rollback(RollbackCommand),
    /// Change who is in the cluster and who leads.
    #[command(subcommand)]
    Cluster(admin::ClusterCommand),
    /// Multi-leader: list conflicts, settle one, or set a table's conflict policy.
    #[command(subcommand)]
    Conflicts(conflicts::ConflictsCommand),
    /// Multi-leader: move a row of a homed table to another home region, fenced (no two
    /// regions ever write it at once).
    Rehome(conflicts::RehomeArgs),
    /// Multi-leader: see how many rows each region is home to, or set a table's home rule.
    #[command(subcommand)]
    Homes(conflicts::HomesCommand),
    /// Leaderless: compare Merkle trees with every peer now and exchange the rows that
    /// differ (a node whose disk was wiped comes back complete).
    Repair(conflicts::RepairArgs),
    /// An offline-first device replica: run SQL on it offline, sync it with a
    /// multi-leader cluster, see what is pending.
    Device(device::DeviceArgs),
    /// An interactive SQL shell on any node (line editing, history, aligned tables, dot
    /// commands); `-c SQL` or a pipe runs statements and exits.
    Shell(shell::ShellArgs),
    /// The change stream: one JSON line per changed row, in log order, resumable with
    /// --from; --follow keeps waiting for new changes.
    Changes(changes::ChangesArgs),
    /// Client authentication: `tern auth hash` reads a password on standard input and
    /// prints its bcrypt hash, for an --auth file.
    #[command(subcommand)]
    Auth(AuthCommand),
    /// Make a cluster CA and a certificate per node for TLS (a test cluster's, or until an
    /// operator's own CA takes over): DIR/ca.pem, DIR/ca.key, DIR/ID.pem, DIR/ID.key. Each
    /// node certificate names the node's id and --hosts, and serves as both server and
    /// client; start each node with --tls-dir DIR.
    Certs(CertsArgs),
}

#[derive(Subcommand)]
enum AuthCommand {
    /// Read a password (one line) on standard input; print its bcrypt hash.
    Hash,
}

#[derive(clap::Args)]
struct CertsArgs {
    /// Where to write the files (created if missing). A CA already there (ca.pem and
    /// ca.key) signs the new node certificates; node files of the same ids are replaced.
    dir: PathBuf,
    /// The node ids, comma separated (they must be DNS names: letters, digits, hyphens).
    #[arg(long, value_delimiter = ',', required = true)]
    nodes: Vec<String>,
    /// Host names and IP addresses clients dial (HTTP, PostgreSQL), put in every node
    /// certificate.
    #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1,::1")]
    hosts: Vec<String>,
    /// The cluster's name, in the CA's common name.
    #[arg(long, default_value = "tern")]
    cluster: String,
}

fn run_certs(args: CertsArgs) -> Result<(), String> {
    let ids: Vec<String> = args.nodes.iter().map(|id| id.trim().to_string()).filter(|id| !id.is_empty()).collect();
    let hosts: Vec<String> = args.hosts.iter().map(|host| host.trim().to_string()).filter(|host| !host.is_empty()).collect();
    // A CA already in DIR signs the new certificates (a node added to a running cluster).
    let existing_key = std::fs::read_to_string(args.dir.join("ca.key")).ok().filter(|_| args.dir.join("ca.pem").exists());
    let generated = tern_server::tls::generate(&args.cluster, &ids, &hosts, existing_key.as_deref())?;
    if existing_key.is_some() {
        println!("signing with the CA already in {} (ca.pem, ca.key)", args.dir.display());
    }
    for path in tern_server::tls::write_certificates(&args.dir, &generated, existing_key.is_none())? {
        println!("wrote {}", path.display());
    }
    println!("start each node with --tls-dir {} (clients: TERN_CA={}/ca.pem, https:// addresses)", args.dir.display(), args.dir.display());
    Ok(())
}

fn run_auth(command: AuthCommand) -> Result<(), String> {
    let AuthCommand::Hash = command;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).map_err(|error| format!("cannot read the password: {error}"))?;
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err("no password on standard input: echo -n 'secret' | tern auth hash".to_string());
    }
    println!("{}", tern_server::auth::hash_password(password)?);
    Ok(())
}

#[derive(Subcommand)]
enum RollbackCommand {
    /// List the rolled-back entries of the node at --http.
    List {
        /// HTTP address of the node.
        #[arg(long, default_value = "127.0.0.1:4001")]
        http: String,
    },
}

fn run_rollback(command: RollbackCommand) -> Result<(), String> {
    let RollbackCommand::List { http } = command;
    let body = admin::get(&http, "/db/rollback")?;
    let entries = body["entries"].as_array().cloned().unwrap_or_default();
    println!("{} rolled-back entries on {}", entries.len(), body["node"].as_str().unwrap_or("?"));
    for entry in entries {
        println!(
            "  {}.{}  rolled back at {} ms  {}",
            entry["epoch"],
            entry["index"],
            entry["rolled_back_at_ms"],
            entry["description"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

#[derive(Args, Debug)]
struct VerifyArgs {
    /// HTTP address of any node of the cluster.
    #[arg(long, default_value = "127.0.0.1:4001")]
    http: String,
}

fn run_verify(args: VerifyArgs) -> Result<(), String> {
    let verdict = admin::get(&args.http, "/db/verify")?;
    for node in verdict["nodes"].as_array().into_iter().flatten() {
        let pages = node["pages"].as_u64().map_or(String::new(), |pages| format!(", {pages} pages"));
        println!("{}: at {}, {} tables{pages}", node["id"].as_str().unwrap_or("?"), node["position"].as_str().unwrap_or("?"), node["tables"]);
    }
    for difference in verdict["differences"].as_array().into_iter().flatten() {
        println!("DIFFERENCE: {}", difference.as_str().unwrap_or_default());
    }
    if verdict["agree"] == true {
        println!("replicas agree ({} format)", verdict["log_format"].as_str().unwrap_or("?"));
        Ok(())
    } else {
        Err("replicas do not agree".to_string())
    }
}

#[derive(Args, Clone, Debug)]
pub struct ServerArgs {
    /// This node's id; must appear in --cluster (unless --join).
    #[arg(long, default_value = "n1")]
    id: String,
    /// The region this node runs in (shown in /status and used for WAN emulation).
    #[arg(long, default_value = "local")]
    region: String,
    /// Directory for this node's data; the database is <data>/data.db.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Address for the HTTP API.
    #[arg(long, default_value = "127.0.0.1:4001")]
    http: String,
    /// Address for node-to-node traffic.
    #[arg(long, default_value = "127.0.0.1:7001")]
    peer: String,
    /// Every member as ID=PEER_ADDR or ID@REGION=PEER_ADDR, comma separated (default:
    /// this node alone). Multi-leader needs every member's region.
    #[arg(long)]
    cluster: Option<String>,
    /// The leader (default: the first id in --cluster; multi-leader: the first of this
    /// node's region).
    #[arg(long)]
    leader: Option<String>,
    /// single-leader: one leader for the cluster. multi-leader: each region's nodes elect
    /// their own leader, every region takes writes, and the regions exchange them
    /// asynchronously (row log format). Fixed when the cluster is created: a node started
    /// with another topology is refused by its peers.
    #[arg(long, value_enum, default_value_t = TopologyArg::SingleLeader)]
    topology: TopologyArg,
    /// How writes are logged and shipped.
    #[arg(long, value_enum, default_value_t = LogFormatArg::Row)]
    log_format: LogFormatArg,
    /// When a write is acknowledged by default (per request: w=).
    #[arg(long, value_enum, default_value_t = AckArg::SemiSync)]
    ack: AckArg,
    /// Emulated one-way WAN latency between regions, e.g. us-east:eu-west=40,us-east:antarctica=75.
    #[arg(long, default_value = "")]
    wan: String,
    /// Largest accepted request body, in bytes (larger requests get 413).
    #[arg(long, default_value_t = 8 << 20)]
    max_body_bytes: usize,
    /// After answering an HTTP read, keep polling for the next request this many
    /// microseconds before sleeping (waking a core costs more than a read by key); 0: sleep at once.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    idle_poll_us: u64,
    /// Log entries kept after compaction; followers further behind receive a snapshot.
    #[arg(long, default_value_t = 100_000)]
    log_retain: u64,
    /// Multi-leader: writes kept per origin in the region log beyond what every region
    /// holds; a device further behind is sent a snapshot when it syncs.
    #[arg(long, default_value_t = 100_000)]
    region_log_retain: u64,
    /// Leader: the newest log entries kept in memory, in MiB, to ship to followers without
    /// reading the log (older ones come from the log on disk, or a snapshot).
    #[arg(long, default_value_t = 64)]
    tail_cache_mib: usize,
    /// Leader heartbeat interval, milliseconds.
    #[arg(long, default_value_t = 50)]
    heartbeat_ms: u64,
    /// A follower silent for this long leaves the in-sync set used by --ack sync, milliseconds.
    #[arg(long, default_value_t = 1000)]
    in_sync_timeout_ms: u64,
    /// A write not acknowledged as asked within this long fails as "outcome unknown", milliseconds.
    #[arg(long, default_value_t = 10_000)]
    write_timeout_ms: u64,
    /// Statement format only: rewrite non-deterministic functions to literals on the
    /// leader (on), or let every replica evaluate them itself (off: replicas diverge;
    /// `tern verify` shows where).
    #[arg(long, value_enum, default_value_t = Switch::On)]
    statement_rewrite: Switch,
    /// Automatic failover: nodes elect the leader by quorum vote (on), and --leader is
    /// only the preferred first leader; off keeps --leader fixed.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    failover: Switch,
    /// Election tick, milliseconds: a follower campaigns after 10 to 20 ticks without
    /// hearing a leader. Raise it on links with round trips near 100 ms.
    #[arg(long, default_value_t = 25)]
    election_tick_ms: u64,
    /// Start outside any cluster and wait to be added by its leader
    /// (`tern cluster add --id ID --addr PEER_ADDR`); --cluster is not needed. The node
    /// catches up as a learner, then votes. Restarts use the saved membership.
    #[arg(long)]
    join: bool,
    /// Serve POST /debug/partition?drop=ID,... to drop all traffic to and from peers
    /// (partition tests where no packet filter exists). Off by default.
    #[arg(long, value_enum, default_value_t = Switch::Off)]
    fault_injection: Switch,
    /// A client statement (read or write) still running after this long is stopped with
    /// an error, milliseconds. A stopped write fails its whole group commit (retry it).
    #[arg(long, default_value_t = 10_000)]
    query_timeout_ms: u64,
    /// A query whose result would exceed this many bytes is refused with an error (page
    /// through large results with LIMIT/OFFSET).
    #[arg(long, default_value_t = 64 << 20)]
    max_result_bytes: usize,
    /// Leaderless: nodes holding each row (placed by consistent hashing of the table
    /// and primary key, spread over regions).
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Leaderless: copies a write waits for unless it says w= (one, quorum, all or a number).
    #[arg(long, default_value = "quorum")]
    default_w: String,
    /// Leaderless: replicas a read asks unless it says r= (one, quorum, all or a number).
    #[arg(long, default_value = "quorum")]
    default_r: String,
    /// Leaderless: how often a node compares Merkle trees with its next peer and sends
    /// what differs, milliseconds; 0: only when asked (`tern repair`).
    #[arg(long, default_value_t = 30_000)]
    anti_entropy_interval_ms: u64,
    /// Single-leader: this node's leader priority. When a voter of higher priority than
    /// the leader's is healthy and caught up for 3 s, leadership moves to it by itself
    /// (after a failover, back to the home region). 0: never handed leadership, and
    /// campaigns only as a last resort (no leader for 10 election timeouts), handing over
    /// as soon as it can. Give the home region's nodes 2 and the rest the default.
    #[arg(long, default_value_t = 1)]
    leader_priority: u8,
    /// Single-leader: permanent non-voting replicas, comma separated ids, the same on
    /// every node (a node joining as one names itself). They receive the log and serve
    /// local reads, and never count toward a majority, an election or an ack (w=all and
    /// --ack sync count voters), so a far one never slows a write. Never promoted.
    #[arg(long, value_delimiter = ',')]
    non_voters: Vec<String>,
    /// Also speak PostgreSQL's wire protocol here (psql, psycopg and pgbench are tested),
    /// e.g. 127.0.0.1:5433. The SQL is SQLite's. Off by default.
    #[arg(long)]
    pg: Option<String>,
    /// Users, their bcrypt-hashed passwords and permissions (rqlite's auth file format: a
    /// JSON list of {"username", "password", "perms"}; user "*" is anyone). Every HTTP
    /// request then needs HTTP basic auth with the permission its endpoint needs.
    /// `tern auth hash` makes a hash.
    #[arg(long)]
    auth: Option<PathBuf>,
    /// Mutual TLS between nodes: this node's certificate (PEM), which must name its --id.
    /// With --node-key and --node-ca, every peer connection, both ways, is TLS, and a peer
    /// without a certificate signed by the CA, or whose certificate does not name the node
    /// it says it is, is refused before any of its frames is read.
    #[arg(long, requires_all = ["node_key", "node_ca"])]
    node_cert: Option<PathBuf>,
    /// Mutual TLS between nodes: this node's private key (PEM).
    #[arg(long, requires_all = ["node_cert", "node_ca"])]
    node_key: Option<PathBuf>,
    /// Mutual TLS between nodes: the cluster CA's certificate (PEM), `tern certs` makes one.
    #[arg(long, requires_all = ["node_cert", "node_key"])]
    node_ca: Option<PathBuf>,
    /// HTTPS for the client API, and TLS for the PostgreSQL door (which then refuses
    /// clients that do not ask for TLS): the server certificate (PEM).
    #[arg(long, requires = "http_key")]
    http_cert: Option<PathBuf>,
    /// HTTPS: the server's private key (PEM).
    #[arg(long, requires = "http_cert")]
    http_key: Option<PathBuf>,
    /// HTTPS: also require client certificates signed by this CA (PEM).
    #[arg(long, requires = "http_cert")]
    http_ca: Option<PathBuf>,
    /// TLS everywhere from one directory `tern certs` wrote: DIR/ID.pem, DIR/ID.key and
    /// DIR/ca.pem as the node and HTTP certificates (the HTTP API requires no client
    /// certificate). Excludes the six flags above.
    #[arg(long, conflicts_with_all = ["node_cert", "node_key", "node_ca", "http_cert", "http_key", "http_ca"])]
    tls_dir: Option<PathBuf>,
}

impl ServerArgs {
    /// The certificates the TLS flags name, loaded.
    fn tls(&self) -> Result<(Option<std::sync::Arc<tern_server::tls::PeerTls>>, Option<std::sync::Arc<tern_server::tls::HttpTls>>), String> {
        use std::sync::Arc;
        use tern_server::tls::{HttpTls, PeerTls, TlsFiles};
        if let Some(dir) = &self.tls_dir {
            let (peer, http) = tern_server::tls::load_dir(dir, &self.id)?;
            return Ok((Some(Arc::new(peer)), Some(Arc::new(http))));
        }
        let peer = match (&self.node_cert, &self.node_key, &self.node_ca) {
            (Some(cert), Some(key), Some(ca)) => Some(Arc::new(PeerTls::load(&self.id, cert, key, ca)?)),
            _ => None,
        };
        let http = match (&self.http_cert, &self.http_key) {
            (Some(cert), Some(key)) => Some(Arc::new(HttpTls::load(&TlsFiles { cert: cert.clone(), key: key.clone(), ca: self.http_ca.clone() })?)),
            _ => None,
        };
        Ok((peer, http))
    }

    fn into_config(self) -> Result<NodeConfig, String> {
        if self.max_body_bytes > tern_server::node::MAX_BODY_BYTES_LIMIT {
            return Err(format!(
                "--max-body-bytes {} is over the limit of {} bytes: a write must fit in one log entry, and an entry in one peer frame",
                self.max_body_bytes,
                tern_server::node::MAX_BODY_BYTES_LIMIT
            ));
        }
        let peer_addr = self.peer.parse().map_err(|error| format!("bad --peer {:?}: {error}", self.peer))?;
        let http_addr = self.http.parse().map_err(|error| format!("bad --http {:?}: {error}", self.http))?;
        let (cluster, mut regions) = match &self.cluster {
            Some(_) if self.join => return Err("--join and --cluster exclude each other: a joining node learns the members from the leader".to_string()),
            Some(text) => parse_cluster_with_regions(text)?,
            None => (vec![(self.id.clone(), peer_addr)], std::collections::BTreeMap::new()),
        };
        if !cluster.iter().any(|(id, _)| *id == self.id) {
            return Err(format!("--id {} is not a member of --cluster", self.id));
        }
        if let Some(named) = regions.get(&self.id).filter(|named| **named != self.region) {
            return Err(format!("--cluster puts {} in region {named}, but --region says {}", self.id, self.region));
        }
        regions.insert(self.id.clone(), self.region.clone());
        let topology: Topology = self.topology.into();
        if topology == Topology::MultiLeader {
            let well_named = |region: &str| !region.is_empty() && region.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if let Some(region) = regions.values().find(|region| !well_named(region)) {
                return Err(format!(
                    "region name {region:?}: under multi-leader a region is named with letters, digits, '-', '_' and '.' only (it appears in session tokens)"
                ));
            }
            if let Some((missing, _)) = cluster.iter().find(|(id, _)| !regions.contains_key(id)) {
                return Err(format!("--topology multi-leader needs every member's region: write {missing}@REGION=ADDRESS in --cluster"));
            }
            if self.log_format != LogFormatArg::Row {
                return Err("--topology multi-leader needs --log-format row: regions settle conflicts per row".to_string());
            }
            if self.join {
                return Err("--join is not supported under --topology multi-leader yet: name every member in --cluster".to_string());
            }
        }
        let leaderless = topology == Topology::Leaderless;
        if leaderless {
            if let Some((missing, _)) = cluster.iter().find(|(id, _)| !regions.contains_key(id)) {
                return Err(format!(
                    "--topology leaderless needs every member's region (each node places rows with the same ring): write {missing}@REGION=ADDRESS in --cluster"
                ));
            }
        }
        if topology != Topology::SingleLeader && (self.leader_priority != 1 || !self.non_voters.is_empty()) {
            return Err(format!("--leader-priority and --non-voters are for --topology single-leader (not supported under {})", topology.name()));
        }
        if leaderless && self.pg.is_some() {
            return Err("--pg is not supported under --topology leaderless yet: use the HTTP API".to_string());
        }
        if leaderless && self.join {
            return Err("--join is not supported under --topology leaderless: name every member in --cluster".to_string());
        }
        let count = |flag: &str, text: &str| text.parse::<tern_core::leaderless::Count>().map_err(|error| format!("bad {flag}: {error}"));
        let leaderless_settings = tern_server::config::LeaderlessSettings {
            replicas: self.replicas,
            w: count("--default-w", &self.default_w)?,
            r: count("--default-r", &self.default_r)?,
            anti_entropy_interval: Duration::from_millis(self.anti_entropy_interval_ms),
            vnodes: 128,
        };
        if leaderless && !(1..=cluster.len()).contains(&self.replicas) {
            return Err(format!("--replicas {} is out of range: 1 to the {} members of --cluster", self.replicas, cluster.len()));
        }
        let same_group = |id: &String| topology == Topology::SingleLeader || regions.get(id) == Some(&self.region);
        let leader = match &self.leader {
            Some(leader) => leader.clone(),
            None => cluster.iter().find(|(id, _)| same_group(id)).map_or_else(|| self.id.clone(), |(id, _)| id.clone()),
        };
        if !cluster.iter().any(|(id, _)| *id == leader) {
            return Err(format!("--leader {leader} is not a member of --cluster"));
        }
        if !same_group(&leader) {
            return Err(format!("--leader {leader} is not in region {}: under multi-leader each region leads itself", self.region));
        }
        let auth = self.auth.as_deref().map(tern_server::auth::Users::load).transpose()?.map(std::sync::Arc::new);
        let (peer_tls, http_tls) = self.tls()?;

        Ok(NodeConfig {
            auth,
            peer_tls,
            http_tls,
            data_dir: self.data.clone().unwrap_or_else(|| PathBuf::from(&self.id)),
            region: self.region,
            http_addr,
            peer_addr,
            cluster,
            leader,
            topology,
            log_format: self.log_format.into(),
            ack: self.ack.into(),
            wan: WanLatency::parse(&self.wan)?,
            regions,
            max_body_bytes: self.max_body_bytes,
            idle_poll: Duration::from_micros(self.idle_poll_us),
            log_retain: self.log_retain.max(1),
            region_log_retain: self.region_log_retain,
            tail_cache_bytes: self.tail_cache_mib << 20,
            heartbeat_interval: Duration::from_millis(self.heartbeat_ms.max(1)),
            in_sync_timeout: Duration::from_millis(self.in_sync_timeout_ms),
            write_timeout: Duration::from_millis(self.write_timeout_ms),
            statement_rewrite: self.statement_rewrite.is_on(),
            failover: self.failover.is_on(),
            election_tick: Duration::from_millis(self.election_tick_ms.max(1)),
            join: self.join,
            fault_injection: self.fault_injection.is_on(),
            limits: tern_storage::Limits {
                statement_timeout: Duration::from_millis(self.query_timeout_ms.max(1)),
                max_result_bytes: self.max_result_bytes.max(1),
            },
            leaderless: leaderless_settings,
            leader_priority: self.leader_priority,
            non_voters: self.non_voters.iter().map(|id| id.trim().to_string()).filter(|id| !id.is_empty()).collect(),
            pg_addr: self.pg.as_deref().map(|text| text.parse().map_err(|error| format!("bad --pg {text:?}: {error}"))).transpose()?,
            id: self.id,
        })
    }
}

/// Where log lines go once a command names a file (`tern demo`: its data directory, so
/// the nodes' lines do not interleave its report); stderr until then.
static LOG_FILE: std::sync::OnceLock<std::sync::Mutex<std::fs::File>> = std::sync::OnceLock::new();

struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match LOG_FILE.get() {
            Some(file) => file.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).write(bytes),
            None => std::io::stderr().write(bytes),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match LOG_FILE.get() {
            Some(file) => file.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).flush(),
            None => std::io::stderr().flush(),
        }
    }
}

/// Sends log lines to `path` from now on, unless `TERN_LOG` asks for them (then they stay
/// on stderr). Returns the path when they go there.
pub fn log_to_file(path: &std::path::Path) -> Option<&std::path::Path> {
    if std::env::var_os("TERN_LOG").is_some() {
        return None;
    }
    let file = std::fs::File::create(path).ok()?;
    LOG_FILE.set(std::sync::Mutex::new(file)).ok()?;
    Some(path)
}

/// Logging to stderr (or a command's file, see [`log_to_file`]), filtered by `TERN_LOG`
/// as `RUST_LOG` filters elsewhere: a level (`warn`) or per-module directives
/// (`info,tern_server::transport=debug`). `plain`: no terminal colours (lines for a file).
fn init_tracing(plain: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("TERN_LOG") {
        Ok(text) => EnvFilter::try_new(&text).unwrap_or_else(|error| {
            eprintln!("tern: TERN_LOG={text:?} is not a log filter ({error}); logging at info");
            EnvFilter::new("info")
        }),
        Err(_) => EnvFilter::new("info"),
    };
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(!plain).with_writer(|| LogWriter).init();
}

/// A panic anywhere ends the process. A node whose replica loop or storage thread died
/// would otherwise keep answering HTTP from a frozen state, holding its lease, so the
/// others never fail over; exiting lets them.
fn exit_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        eprintln!("tern: a thread panicked; stopping the process so the cluster fails over instead of waiting on a frozen node");
        std::process::exit(101);
    }));
}

fn main() {
    let cli = Cli::parse();
    init_tracing(matches!(cli.command, Command::Demo(_)) && std::env::var_os("TERN_LOG").is_none());
    exit_on_panic();
    let outcome = match cli.command {
        Command::Server(args) => run_server(*args),
        Command::Demo(args) => demo::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Sim(args) => sim::run(args),
        Command::Lab(args) => lab::run(args),
        Command::Repair(args) => conflicts::run_repair(args),
        Command::Verify(args) => run_verify(args),
        Command::Rollback(command) => run_rollback(command),
        Command::Cluster(command) => admin::run_cluster(command),
        Command::Conflicts(command) => conflicts::run_conflicts(command),
        Command::Homes(command) => conflicts::run_homes(command),
        Command::Device(args) => device::run(args),
        Command::Shell(args) => shell::run(args),
        Command::Changes(args) => changes::run(args),
        Command::Auth(command) => run_auth(command),
        Command::Certs(args) => run_certs(args),
        Command::Rehome(args) => conflicts::run_rehome(args),
    };
    if let Err(message) = outcome {
        eprintln!("tern: {message}");
        std::process::exit(2);
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // TERN_WORKERS: async worker threads (default: one per core), for experiments.
    if let Some(workers) = std::env::var("TERN_WORKERS").ok().and_then(|text| text.parse().ok()) {
        builder.worker_threads(workers);
    }
    builder.enable_all().build().map_err(|error| format!("cannot start the runtime: {error}"))
}

/// Waits for Ctrl-C or SIGTERM.
async fn until_told_to_stop() -> Result<(), String> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|error| error.to_string())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    Ok(())
}

fn run_leaderless_server(config: NodeConfig) -> Result<(), String> {
    runtime()?.block_on(async move {
        let node = tern_server::leaderless::serve(config).await?;
        let config = &node.config;
        tracing::info!(
            "node {} ({}) serving HTTP on {} and peers on {}; leaderless, {} replicas per row, w={} r={} by default; data in {}",
            config.id,
            config.region,
            node.http_addr.lock().expect("http addr lock"),
            config.peer_addr,
            config.leaderless.replicas,
            config.leaderless.w.name(),
            config.leaderless.r.name(),
            config.data_dir.display()
        );
        until_told_to_stop().await?;
        node.shutdown().await;
        Ok(())
    })
}

fn run_server(args: ServerArgs) -> Result<(), String> {
    let config = args.into_config()?;
    if config.topology == Topology::Leaderless {
        return run_leaderless_server(config);
    }
    runtime()?.block_on(async move {
        let node = tern_server::serve(config).await?;
        let config = &node.config;
        tracing::info!(
            "node {} ({}) serving HTTP on {} and peers on {}; leader {}, {} log, --ack {}; data in {}",
            config.id,
            config.region,
            node.http_addr.lock().expect("http addr lock"),
            config.peer_addr,
            config.leader,
            config.log_format.name(),
            config.ack.name(),
            config.data_dir.display()
        );
        until_told_to_stop().await?;
        tracing::info!("shutting down: checkpointing the database");
        node.shutdown().await;
        Ok(())
    })
}
