//! Starting whole clusters: in-process (the demo) or as real `tern server` processes
//! (the benchmark).

use std::collections::BTreeMap;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use tern_core::{AckMode, LogFormat, Topology};
use tern_server::{Node, NodeConfig, WanLatency};

pub use tern_server::client::{free_local_addr as free_addr, wait_ready};

/// A fresh scratch directory under the system temp dir.
pub fn scratch_dir(purpose: &str) -> Result<PathBuf, String> {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|since| since.as_nanos()).unwrap_or(0);
    let directory = std::env::temp_dir().join(format!("tern-{purpose}-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&directory).map_err(|error| format!("cannot create {}: {error}", directory.display()))?;
    Ok(directory)
}

/// One node of a cluster to start: id, region and leader priority; the first is the leader.
pub struct Member {
    pub id: String,
    pub region: String,
    /// `--leader-priority` (single-leader): leadership returns to the highest.
    pub leader_priority: u8,
}

pub struct ClusterSpec {
    pub members: Vec<Member>,
    pub topology: Topology,
    pub log_format: LogFormat,
    pub ack: AckMode,
    pub wan: WanLatency,
    pub data_dir: PathBuf,
    /// TLS everywhere: certificates made for the members in `data_dir/certs`, mutual TLS
    /// between nodes, HTTPS and TLS for the PostgreSQL door; this process trusts the CA.
    pub tls: bool,
}

/// Makes a CA and certificates for `ids` in `dir` (as `tern certs` does) and has this
/// process's HTTPS clients trust that CA.
///
/// # Errors
/// If they cannot be made or written.
pub fn make_certificates(dir: &Path, cluster: &str, ids: &[String], hosts: &[String]) -> Result<(), String> {
    use tern_server::tls::{client_config_from, generate, write_certificates};
    write_certificates(dir, &generate(cluster, ids, hosts, None)?, true)?;
    tern_server::client::trust_for_https(client_config_from(&dir.join("ca.pem"), None)?);
    Ok(())
}

/// The peer and HTTP TLS settings of each member, from certificates made now.
fn demo_tls(spec: &ClusterSpec) -> Result<Vec<(Arc<tern_server::tls::PeerTls>, Arc<tern_server::tls::HttpTls>)>, String> {
    let ids: Vec<String> = spec.members.iter().map(|member| member.id.clone()).collect();
    let dir = spec.data_dir.join("certs");
    make_certificates(&dir, "demo", &ids, &["localhost".to_string(), "127.0.0.1".to_string()])?;
    ids.iter()
        .map(|id| {
            let (peer, http) = tern_server::tls::load_dir(&dir, id)?;
            Ok((Arc::new(peer), Arc::new(http)))
        })
        .collect()
}

/// Starts every member in this process, connected over loopback TCP.
///
/// # Errors
/// If a node cannot start.
pub async fn start_in_process(spec: &ClusterSpec) -> Result<Vec<Arc<Node>>, String> {
    let mut cluster = Vec::new();
    for member in &spec.members {
        cluster.push((member.id.clone(), free_addr()?));
    }
    let regions: BTreeMap<String, String> = spec.members.iter().map(|member| (member.id.clone(), member.region.clone())).collect();
    let tls = if spec.tls { Some(demo_tls(spec)?) } else { None };
    let mut nodes = Vec::new();
    for (index, (member, (_, peer_addr))) in spec.members.iter().zip(&cluster).enumerate() {
        let (peer_tls, http_tls) = match &tls {
            Some(settings) => (Some(settings[index].0.clone()), Some(settings[index].1.clone())),
            None => (None, None),
        };
        let config = NodeConfig {
            peer_tls,
            http_tls,
            cluster: cluster.clone(),
            // Multi-leader: the region's first member leads it first.
            leader: spec
                .members
                .iter()
                .find(|other| spec.topology == Topology::SingleLeader || other.region == member.region)
                .map_or_else(|| member.id.clone(), |first| first.id.clone()),
            topology: spec.topology,
            log_format: spec.log_format,
            ack: spec.ack,
            wan: spec.wan.clone(),
            regions: regions.clone(),
            // Ticks long enough for the emulated WAN: a round trip to the nearest
            // majority must fit well inside the lease.
            election_tick: if spec.wan.is_empty() { Duration::from_millis(25) } else { Duration::from_millis(60) },
            fault_injection: true,
            leader_priority: member.leader_priority,
            // PostgreSQL clients can connect to every node (any free port).
            pg_addr: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
            ..NodeConfig::new(&member.id, &member.region, spec.data_dir.join(&member.id), *peer_addr)
        };
        nodes.push(tern_server::serve(config).await?);
    }
    Ok(nodes)
}

/// A `tern server` child process.
pub struct ServerProcess {
    pub http: String,
    pub child: Child,
    /// The full command line, to restart the node from its data directory.
    command: (PathBuf, Vec<String>),
}

impl ServerProcess {
    fn spawn(binary: &Path, args: &[String], http: String) -> Result<ServerProcess, String> {
        let child = Command::new(binary)
            .args(args)
            .env("TERN_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|error| format!("cannot start {}: {error}", binary.display()))?;
        Ok(ServerProcess { http, child, command: (binary.to_path_buf(), args.to_vec()) })
    }

    /// SIGKILL and reap: nothing but what was fsynced survives.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the process again with the same flags and data directory.
    ///
    /// # Errors
    /// If it cannot be spawned.
    pub fn restart(&mut self) -> Result<(), String> {
        let (binary, args) = self.command.clone();
        // Dropping the old handle "kills" an already reaped child: a harmless no-op.
        *self = ServerProcess::spawn(&binary, &args, self.http.clone())?;
        Ok(())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `count` real server processes from this binary, the first as leader.
///
/// # Errors
/// If a process cannot be spawned.
pub fn start_processes(count: usize, data_dir: &Path, extra: &[String]) -> Result<Vec<ServerProcess>, String> {
    start_processes_in_regions(&vec!["local"; count], false, data_dir, extra)
}

/// Starts one server process per entry of `regions` (n1 in the first, ...). With
/// `name_regions`, `--cluster` names each member's region (multi-leader needs it).
///
/// # Errors
/// If a process cannot be spawned.
pub fn start_processes_in_regions(regions: &[&str], name_regions: bool, data_dir: &Path, extra: &[String]) -> Result<Vec<ServerProcess>, String> {
    let binary = std::env::current_exe().map_err(|error| error.to_string())?;
    let mut peers = Vec::new();
    let mut https = Vec::new();
    for number in 1..=regions.len() {
        peers.push((format!("n{number}"), free_addr()?));
        https.push(free_addr()?);
    }
    let member =
        |((id, addr), region): (&(String, std::net::SocketAddr), &&str)| if name_regions { format!("{id}@{region}={addr}") } else { format!("{id}={addr}") };
    let cluster = peers.iter().zip(regions).map(member).collect::<Vec<_>>().join(",");
    let mut processes = Vec::new();
    for (((id, peer), http), region) in peers.iter().zip(&https).zip(regions) {
        let mut args: Vec<String> = vec!["server".into(), "--id".into(), id.clone(), "--data".into(), data_dir.join(id).display().to_string()];
        args.extend(["--http".into(), http.to_string(), "--peer".into(), peer.to_string(), "--cluster".into(), cluster.clone()]);
        args.extend(["--region".into(), region.to_string()]);
        args.extend(extra.iter().cloned());
        processes.push(ServerProcess::spawn(&binary, &args, http.to_string())?);
    }
    Ok(processes)
}
