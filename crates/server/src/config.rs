//! Configuration of one node, shared by `tern server` and the in-process demo cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tern_core::{AckMode, LogFormat, NodeId, Topology};

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: NodeId,
    pub region: String,
    pub data_dir: PathBuf,
    pub http_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    /// Every member's peer address, this node included, in `--cluster` order.
    pub cluster: Vec<(NodeId, SocketAddr)>,
    pub leader: NodeId,
    /// Single-leader (one leader for all of `cluster`) or multi-leader (`cluster`'s nodes
    /// of this node's region elect their leader; the regions exchange writes).
    pub topology: Topology,
    pub log_format: LogFormat,
    pub ack: AckMode,
    /// Emulated one-way WAN latency between regions, applied by the peer transport.
    pub wan: WanLatency,
    /// Regions known up front (the demo knows them all); others are learned from handshakes.
    pub regions: BTreeMap<NodeId, String>,
    /// Requests with larger bodies are refused with 413.
    pub max_body_bytes: usize,
    /// After answering an HTTP read, keep one async worker polling for the next request
    /// this long before it sleeps (`idle_poll`); zero: sleep at once.
    pub idle_poll: std::time::Duration,
    /// Log entries kept after compaction; a follower further behind gets a snapshot.
    pub log_retain: u64,
    /// Multi-leader: writes kept per origin in the region log beyond what every region
    /// holds; a device further behind gets a snapshot when it syncs.
    pub region_log_retain: u64,
    /// Leader: bytes of the newest log entries kept in memory for shipping.
    pub tail_cache_bytes: usize,
    pub heartbeat_interval: Duration,
    pub in_sync_timeout: Duration,
    pub write_timeout: Duration,
    /// Statement format: rewrite non-deterministic functions to literals (`--statement-rewrite`).
    pub statement_rewrite: bool,
    /// Automatic failover by quorum vote (`--failover on`, the default); off keeps
    /// `leader` fixed.
    pub failover: bool,
    /// One election tick: followers campaign after 10 to 20 ticks without a leader, and
    /// a leader's write lease lasts 7.5 ticks from each heartbeat round a majority saw.
    pub election_tick: Duration,
    /// Start outside the cluster and wait for its leader to add this node
    /// (`tern cluster add`); `cluster` then names only this node.
    pub join: bool,
    /// Serve `POST /debug/partition`: drop all traffic to and from chosen peers (for
    /// partition tests and the demo's failover drill on machines without a packet filter).
    pub fault_injection: bool,
    /// What one client statement may cost: its running time and its result's size.
    pub limits: tern_storage::Limits,
    /// Leaderless: replicas per row, default `w=`/`r=`, anti-entropy.
    pub leaderless: LeaderlessSettings,
    /// Single-leader with failover: this node's leader priority (`--leader-priority`):
    /// leadership moves by itself to a healthy, caught-up voter of higher priority than
    /// the leader's; 0 is never handed leadership and leads only as a last resort.
    pub leader_priority: u8,
    /// Single-leader: permanent non-voting replicas (`--non-voters`, the same on every
    /// node): they receive the log and serve reads, and count for no majority, election
    /// or ack. A node joining as one names itself.
    pub non_voters: BTreeSet<NodeId>,
    /// Where to speak PostgreSQL's wire protocol (`--pg`); off when `None`.
    pub pg_addr: Option<SocketAddr>,
    /// Users and their permissions (`--auth FILE`); `None`: anyone may do anything.
    pub auth: Option<std::sync::Arc<crate::auth::Users>>,
    /// Mutual TLS between nodes (`--node-cert`, `--node-key`, `--node-ca`); plain TCP when
    /// `None`.
    pub peer_tls: Option<std::sync::Arc<crate::tls::PeerTls>>,
    /// HTTPS for the client API and TLS for the PostgreSQL door (`--http-cert`,
    /// `--http-key`, `--http-ca`); plain when `None`.
    pub http_tls: Option<std::sync::Arc<crate::tls::HttpTls>>,
}

/// Leaderless settings (`--replicas`, `--default-w`, `--default-r`,
/// `--anti-entropy-interval-ms`).
#[derive(Clone, Debug)]
pub struct LeaderlessSettings {
    pub replicas: usize,
    pub w: tern_core::leaderless::Count,
    pub r: tern_core::leaderless::Count,
    /// 0: only on demand (`tern repair`).
    pub anti_entropy_interval: Duration,
    pub vnodes: usize,
}

impl Default for LeaderlessSettings {
    fn default() -> LeaderlessSettings {
        LeaderlessSettings {
            replicas: 3,
            w: tern_core::leaderless::Count::Quorum,
            r: tern_core::leaderless::Count::Quorum,
            anti_entropy_interval: Duration::from_secs(30),
            vnodes: 128,
        }
    }
}

impl NodeConfig {
    /// A node that is a cluster of one (single-leader, row format, semi-sync), listening
    /// for HTTP on any free loopback port: the defaults `tern server` has, for programs
    /// that embed a node (the demo, examples) and change what they need.
    pub fn new(id: &str, region: &str, data_dir: PathBuf, peer_addr: SocketAddr) -> NodeConfig {
        NodeConfig {
            id: id.to_string(),
            region: region.to_string(),
            data_dir,
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            peer_addr,
            cluster: vec![(id.to_string(), peer_addr)],
            leader: id.to_string(),
            topology: Topology::SingleLeader,
            log_format: LogFormat::Row,
            ack: AckMode::SemiSync,
            wan: WanLatency::default(),
            regions: BTreeMap::from([(id.to_string(), region.to_string())]),
            max_body_bytes: 8 << 20,
            idle_poll: std::time::Duration::from_micros(100),
            log_retain: 100_000,
            region_log_retain: 100_000,
            tail_cache_bytes: 64 << 20,
            heartbeat_interval: Duration::from_millis(50),
            in_sync_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(10),
            statement_rewrite: true,
            failover: true,
            election_tick: Duration::from_millis(25),
            join: false,
            fault_injection: false,
            limits: tern_storage::Limits::default(),
            leaderless: LeaderlessSettings::default(),
            leader_priority: 1,
            non_voters: BTreeSet::new(),
            pg_addr: None,
            auth: None,
            peer_tls: None,
            http_tls: None,
        }
    }

    /// `https` when the HTTP API speaks TLS, else `http`: every member is assumed to serve
    /// its API as this one does.
    pub fn http_scheme(&self) -> &'static str {
        if self.http_tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// A client for another member's HTTP API at `address` (`host:port`): over HTTPS when
    /// this node serves HTTPS, trusting the cluster CA (`--node-ca`) and presenting this
    /// node's certificate, else trusting what `TERN_CA` says.
    pub fn member_client(&self, address: &str) -> crate::client::HttpClient {
        let client = crate::client::HttpClient::new(&format!("{}://{address}", self.http_scheme()));
        match &self.peer_tls {
            Some(tls) if self.http_tls.is_some() => client.with_tls(Some(tls.client_config())),
            _ => client,
        }
    }

    /// What this node asks of leader placement, as it tells its peers.
    pub fn preference(&self) -> tern_core::Preference {
        tern_core::Preference { leader_priority: self.leader_priority, voter: !self.non_voters.contains(&self.id), yielding: false }
    }

    /// The nodes that elect this node's leader: all of `cluster` under single-leader,
    /// this region's nodes under multi-leader.
    pub fn members(&self) -> Vec<NodeId> {
        self.group().map(|(id, _)| id.clone()).collect()
    }

    /// Peer addresses of `members`, as the core hands them to nodes that join later.
    pub fn addresses(&self) -> BTreeMap<NodeId, String> {
        self.group().map(|(id, addr)| (id.clone(), addr.to_string())).collect()
    }

    fn group(&self) -> impl Iterator<Item = &(NodeId, SocketAddr)> {
        self.cluster.iter().filter(|(id, _)| self.topology == Topology::SingleLeader || self.regions.get(id) == Some(&self.region))
    }

    /// Multi-leader: the nodes of the other regions, with their regions.
    pub fn remote_nodes(&self) -> Vec<(NodeId, SocketAddr, String)> {
        if self.topology != Topology::MultiLeader {
            return Vec::new();
        }
        let region_of = |id: &NodeId| self.regions.get(id).cloned().unwrap_or_default();
        self.cluster.iter().filter(|(id, _)| region_of(id) != self.region).map(|(id, addr)| (id.clone(), *addr, region_of(id))).collect()
    }

    /// Multi-leader: the region where schema changes are made (that of the first member
    /// in `cluster`), so every region applies them in one order.
    pub fn schema_region(&self) -> String {
        self.cluster.first().and_then(|(id, _)| self.regions.get(id)).cloned().unwrap_or_else(|| self.region.clone())
    }

    /// Multi-leader: every region of the cluster, this one included, in name order.
    pub fn all_regions(&self) -> Vec<String> {
        let mut regions: Vec<String> = self.cluster.iter().filter_map(|(id, _)| self.regions.get(id).cloned()).collect();
        regions.push(self.region.clone());
        regions.sort();
        regions.dedup();
        regions
    }
}

/// One-way latency per unordered pair of regions.
#[derive(Clone, Debug, Default)]
pub struct WanLatency {
    pairs: BTreeMap<(String, String), Duration>,
}

impl WanLatency {
    pub fn none() -> WanLatency {
        WanLatency::default()
    }

    /// The demo's geography: us-east↔eu-west 40 ms, us-east↔antarctica 75 ms,
    /// eu-west↔antarctica 90 ms, one way.
    pub fn demo_default() -> WanLatency {
        WanLatency::parse("us-east:eu-west=40,us-east:antarctica=75,eu-west:antarctica=90").expect("the default is well formed")
    }

    /// Parses `a:b=MS,c:d=MS`.
    ///
    /// # Errors
    /// A message naming the malformed item.
    pub fn parse(text: &str) -> Result<WanLatency, String> {
        let mut latency = WanLatency::default();
        for item in text.split(',').map(str::trim).filter(|item| !item.is_empty()) {
            let parsed = item.split_once('=').and_then(|(pair, ms)| {
                let (a, b) = pair.split_once(':')?;
                Some((a.trim().to_string(), b.trim().to_string(), ms.trim().parse::<u64>().ok()?))
            });
            let Some((a, b, ms)) = parsed else {
                return Err(format!("bad WAN latency {item:?}: expected REGION:REGION=MILLISECONDS"));
            };
            latency.set(&a, &b, Duration::from_millis(ms));
        }
        Ok(latency)
    }

    pub fn set(&mut self, a: &str, b: &str, one_way: Duration) {
        let key = if a <= b { (a.to_string(), b.to_string()) } else { (b.to_string(), a.to_string()) };
        self.pairs.insert(key, one_way);
    }

    pub fn one_way(&self, a: &str, b: &str) -> Duration {
        if a == b {
            return Duration::ZERO;
        }
        let key = if a <= b { (a.to_string(), b.to_string()) } else { (b.to_string(), a.to_string()) };
        self.pairs.get(&key).copied().unwrap_or(Duration::ZERO)
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }
}

/// Parses `n1=127.0.0.1:7001,n2=...`; a member may name its region, `n1@us-east=...`.
/// Returns the members and the regions named.
///
/// # Errors
/// A message naming the malformed item.
pub fn parse_cluster_with_regions(text: &str) -> Result<(Vec<(NodeId, SocketAddr)>, BTreeMap<NodeId, String>), String> {
    let mut members: Vec<(NodeId, SocketAddr)> = Vec::new();
    let mut regions = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|item| !item.is_empty()) {
        let Some((named, addr)) = item.split_once('=') else {
            return Err(format!("bad cluster member {item:?}: expected ID[@REGION]=HOST:PORT"));
        };
        let id = match named.split_once('@') {
            Some((id, region)) if !id.trim().is_empty() && !region.trim().is_empty() => {
                regions.insert(id.trim().to_string(), region.trim().to_string());
                id
            }
            Some(_) => return Err(format!("bad cluster member {item:?}: expected ID@REGION=HOST:PORT")),
            None => named,
        };
        let addr: SocketAddr = addr.trim().parse().map_err(|error| format!("bad address in cluster member {item:?}: {error}"))?;
        if members.iter().any(|(known, _)| known == id.trim()) {
            return Err(format!("node {:?} appears twice in --cluster", id.trim()));
        }
        members.push((id.trim().to_string(), addr));
    }
    if members.is_empty() {
        return Err("--cluster names no nodes".to_string());
    }
    Ok((members, regions))
}

/// [`parse_cluster_with_regions`], without the regions.
///
/// # Errors
/// As [`parse_cluster_with_regions`].
pub fn parse_cluster(text: &str) -> Result<Vec<(NodeId, SocketAddr)>, String> {
    parse_cluster_with_regions(text).map(|(members, _)| members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wan_latency_is_symmetric_and_zero_within_a_region() {
        let latency = WanLatency::demo_default();
        assert_eq!(latency.one_way("eu-west", "us-east"), Duration::from_millis(40));
        assert_eq!(latency.one_way("antarctica", "eu-west"), Duration::from_millis(90));
        assert_eq!(latency.one_way("us-east", "us-east"), Duration::ZERO);
        assert!(WanLatency::parse("a:b").is_err());
    }

    #[test]
    fn cluster_parsing_rejects_duplicates_and_bad_addresses() {
        let members = parse_cluster("n1=127.0.0.1:7001, n2=127.0.0.1:7002").unwrap();
        assert_eq!(members[1].0, "n2");
        assert!(parse_cluster("n1=127.0.0.1:7001,n1=127.0.0.1:7002").unwrap_err().contains("twice"));
        assert!(parse_cluster("n1=localhost").is_err());
        assert!(parse_cluster("").is_err());
        let (members, regions) = parse_cluster_with_regions("n1@us-east=127.0.0.1:7001,n2=127.0.0.1:7002").unwrap();
        assert_eq!(members.len(), 2);
        assert_eq!(regions.get("n1").map(String::as_str), Some("us-east"));
        assert!(!regions.contains_key("n2"));
        assert!(parse_cluster("@us-east=127.0.0.1:7001").is_err());
    }
}
