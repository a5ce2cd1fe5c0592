//! A leaderless node (`--topology leaderless`, issue 16): the core's `LeaderlessNode`
//! and the node's SQLite store, both owned by one thread (`driver.rs`), which carries the
//! core's outputs out in order (a store change is durable before any later message
//! leaves); peer links (`peers.rs`); and what the HTTP API asks of it.
//!
//! A client statement reaches any node. A write is run (and rolled back) on this node's
//! copy to learn the one row it changes; if this node is not a replica of that row, the
//! statement goes to the first replica up, which runs it on its own copy, and the row's
//! new version is coordinated there: stored, sent to the other replicas, answered after
//! `w=` copies. A SELECT by primary key reads that key's replicas (`r=`); any other
//! SELECT reads every range of its tables from `r` replicas, and runs over the merged rows.

mod driver;
mod peers;

pub use driver::decode_context;

use crate::config::NodeConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tern_core::leaderless::{Count, Key, Levels, NodeMessage, RepairReport};
use tern_storage::{Statement, StatementResult};
use tokio::sync::{mpsc, oneshot};

/// What leaderless nodes say to each other: the core's messages, and the SQL around them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum LeaderlessFrame {
    Node(NodeMessage),
    /// A write statement for a replica of its row to run and coordinate.
    Execute {
        id: u64,
        statement: Statement,
        levels: Levels,
        pre_read: Option<Count>,
        context: Option<tern_core::leaderless::Context>,
        key: Option<Key>,
    },
    Executed {
        id: u64,
        outcome: Outcome,
    },
    /// Which row would this statement change on your copy? (A write reaching a node
    /// without the row.)
    Probe {
        id: u64,
        statement: Statement,
    },
    Probed {
        id: u64,
        key: Option<Key>,
        error: Option<String>,
    },
    /// A schema change, named by where it was made (`incarnation:number`): the same
    /// text made twice (CREATE, DROP, CREATE) is two changes.
    Schema {
        id: u64,
        origin: String,
        statement: Statement,
    },
    SchemaApplied {
        id: u64,
        error: Option<String>,
    },
    /// Send me your schema statements (a node starting, or catching up).
    SchemaPull,
    SchemaList {
        statements: Vec<(String, String)>,
    },
    /// The cluster's members, from the node where they were changed (newer versions win).
    Members(Membership),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    pub region: String,
    pub addr: std::net::SocketAddr,
}

/// The cluster's members; each change numbered one higher than the one it replaces.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub version: u64,
    pub members: Vec<Member>,
}

impl Membership {
    /// Which of two lists is newer: the version, then (for two changes made at once) a
    /// digest of the list, the same on every node.
    pub fn order(&self) -> (u64, u64) {
        let text = serde_json::to_string(&self.members).unwrap_or_default();
        (self.version, tern_core::Fnv1a::hash(text.as_bytes()))
    }
}

/// `/cluster/add` and `/cluster/remove`.
#[derive(Clone, Debug)]
pub enum MemberChange {
    Add(Member),
    Remove(String),
}

/// One statement's outcome as the client sees it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Outcome {
    pub result: StatementResult,
    /// Replicas that answered a read or hold a write (hints included unless strict).
    pub replicas: Option<usize>,
    /// Of those, hinted copies on fallback nodes.
    pub hinted: Option<usize>,
    /// A read's context: pass it as `context=` to a write that replaces what was read.
    pub context: Option<String>,
    /// Refused for availability (too few replicas up, timed out): HTTP 503.
    pub unavailable: bool,
}

impl Outcome {
    pub fn error(message: impl Into<String>) -> Outcome {
        Outcome { result: StatementResult::error(message), ..Outcome::default() }
    }

    fn unavailable(message: impl Into<String>) -> Outcome {
        Outcome { result: StatementResult::error(message), unavailable: true, ..Outcome::default() }
    }
}

/// What the HTTP side asks the driver thread.
pub(crate) enum Command {
    Frame { from: String, frame: LeaderlessFrame },
    Execute { statements: Vec<Statement>, levels: Levels, pre_read: Option<Count>, context: Option<String>, reply: oneshot::Sender<Vec<Outcome>> },
    Query { statements: Vec<Statement>, levels: Levels, siblings: bool, reply: oneshot::Sender<Vec<Outcome>> },
    Repair { reply: oneshot::Sender<RepairReport> },
    Members { change: MemberChange, reply: oneshot::Sender<Result<Membership, String>> },
    Policy { table: String, siblings: bool, reply: oneshot::Sender<Vec<Outcome>> },
    Conflicts { reply: oneshot::Sender<Result<Vec<(Key, tern_core::leaderless::KeyVersions)>, String>> },
    Status { reply: oneshot::Sender<LeaderlessStatus> },
    Stop,
}

/// `/status` under leaderless.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LeaderlessStatus {
    pub id: String,
    pub region: String,
    pub replicas: usize,
    pub default_w: String,
    pub default_r: String,
    pub keys_stored: u64,
    /// Hints kept for other nodes, by node.
    pub hints: BTreeMap<String, usize>,
    pub peers_down: Vec<String>,
    pub requests_in_flight: usize,
    /// Keys holding concurrent versions (siblings), by table.
    pub keys_with_siblings: BTreeMap<String, u64>,
    pub schema_statements: usize,
    pub incarnation: String,
}

pub struct Leaderless {
    pub config: NodeConfig,
    pub http_addr: Mutex<String>,
    commands: std_mpsc::Sender<Command>,
    members: Mutex<Membership>,
    outbound: Mutex<BTreeMap<String, mpsc::UnboundedSender<(Instant, LeaderlessFrame)>>>,
    runtime: tokio::runtime::Handle,
    driver: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Leaderless {
    /// Opens the store, starts the driver thread and the peer links.
    ///
    /// # Errors
    /// If the store cannot be opened or the peer address bound.
    pub async fn start(config: NodeConfig, http_addr: String) -> Result<Arc<Leaderless>, String> {
        crate::metrics::install();
        let listener =
            tokio::net::TcpListener::bind(config.peer_addr).await.map_err(|error| format!("cannot listen for peers on {}: {error}", config.peer_addr))?;
        let store = tern_storage::leaderless::LeaderlessStore::open(&config.data_dir, config.limits).map_err(|error| error.to_string())?;
        let (commands, receiver) = std_mpsc::channel();
        // Members as last changed on this node, else as --cluster names them.
        let stored = store.members().map_err(|error| error.to_string())?;
        let members = match stored.as_deref().map(serde_json::from_str::<Membership>) {
            Some(Ok(members)) => members,
            Some(Err(error)) => return Err(format!("the stored member list does not read: {error}")),
            None => Membership {
                version: 0,
                members: config
                    .cluster
                    .iter()
                    .map(|(id, addr)| Member { id: id.clone(), region: config.regions.get(id).cloned().unwrap_or_else(|| "local".to_string()), addr: *addr })
                    .collect(),
            },
        };
        let node = Arc::new(Leaderless {
            config,
            http_addr: Mutex::new(http_addr),
            commands,
            members: Mutex::new(Membership::default()),
            outbound: Mutex::new(BTreeMap::new()),
            runtime: tokio::runtime::Handle::current(),
            driver: Mutex::new(None),
        });
        node.set_members(members);
        let driver = driver::Driver::new(node.clone(), store)?;
        let thread = std::thread::Builder::new().name("tern-leaderless".into()).spawn(move || driver.run(receiver)).map_err(|error| error.to_string())?;
        *node.driver.lock().expect("driver lock") = Some(thread);
        tokio::spawn(peers::accept_loop(node.clone(), listener));
        Ok(node)
    }

    fn post(&self, command: Command) {
        let _ = self.commands.send(command);
    }

    pub(crate) fn send(&self, to: &str, frame: LeaderlessFrame) {
        if let Some(queue) = self.outbound.lock().expect("outbound lock").get(to) {
            let _ = queue.send((Instant::now(), frame));
        }
    }

    pub fn members(&self) -> Membership {
        self.members.lock().expect("members lock").clone()
    }

    fn is_member(&self, id: &str) -> bool {
        self.members.lock().expect("members lock").members.iter().any(|member| member.id == id)
    }

    /// Takes `members` as the cluster: links to new members open, links to members gone close.
    fn set_members(self: &Arc<Self>, members: Membership) {
        let mut outbound = self.outbound.lock().expect("outbound lock");
        // A link dropped here still writes what was queued on it, then closes.
        outbound.retain(|peer, _| members.members.iter().any(|member| member.id == *peer));
        let new: Vec<Member> = members.members.iter().filter(|member| member.id != self.config.id && !outbound.contains_key(&member.id)).cloned().collect();
        // The members first: a new link looks up its peer's region (for the emulated WAN
        // delay) as it starts, and one started before found none and sent undelayed for
        // its whole life (`tern lab --real` saw a leaderless pair of regions 75 ms apart
        // answer in 1.4 ms).
        *self.members.lock().expect("members lock") = members;
        for member in new {
            let (sender, queue) = mpsc::unbounded_channel();
            outbound.insert(member.id.clone(), sender);
            self.runtime.spawn(peers::outbound_loop(self.clone(), member.id, member.addr, queue));
        }
    }

    fn wan_delay(&self, peer: &str) -> std::time::Duration {
        let region = self.members.lock().expect("members lock").members.iter().find(|member| member.id == peer).map(|member| member.region.clone());
        self.config.wan.one_way(&self.config.region, &region.unwrap_or_default())
    }

    /// Adds or removes a member on every node; keys then move to their new replicas.
    ///
    /// # Errors
    /// If the change does not fit the cluster (an id twice, too few nodes for --replicas).
    pub async fn change_members(&self, change: MemberChange) -> Result<Membership, String> {
        self.ask(|reply| Command::Members { change, reply }).await.unwrap_or_else(|| Err("the node is stopping".to_string()))
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        self.post(make(reply));
        answer.await.ok()
    }

    /// Runs write statements, one after another. `pre_read`: read each row from this
    /// many replicas before the statement computes its new value.
    pub async fn execute(&self, statements: Vec<Statement>, levels: Levels, pre_read: Option<Count>, context: Option<String>) -> Vec<Outcome> {
        let count = statements.len();
        self.ask(|reply| Command::Execute { statements, levels, pre_read, context, reply })
            .await
            .unwrap_or_else(|| vec![Outcome::unavailable("the node is stopping"); count])
    }

    pub async fn query(&self, statements: Vec<Statement>, levels: Levels, siblings: bool) -> Vec<Outcome> {
        let count = statements.len();
        self.ask(|reply| Command::Query { statements, levels, siblings, reply })
            .await
            .unwrap_or_else(|| vec![Outcome::unavailable("the node is stopping"); count])
    }

    /// Sets whether reads of `table` by key return every concurrent version, on every node.
    pub async fn set_policy(&self, table: String, siblings: bool) -> Outcome {
        let outcomes = self.ask(|reply| Command::Policy { table, siblings, reply }).await.unwrap_or_default();
        outcomes.into_iter().next().unwrap_or_else(|| Outcome::unavailable("the node is stopping"))
    }

    /// Up to 1,000 rows holding concurrent versions, with them.
    pub async fn conflicts(&self) -> Result<Vec<(Key, tern_core::leaderless::KeyVersions)>, String> {
        self.ask(|reply| Command::Conflicts { reply }).await.unwrap_or_else(|| Err("the node is stopping".to_string()))
    }

    pub async fn repair(&self) -> Option<RepairReport> {
        self.ask(|reply| Command::Repair { reply }).await
    }

    pub async fn status(&self) -> Option<LeaderlessStatus> {
        self.ask(|reply| Command::Status { reply }).await
    }

    /// Stops the driver thread (the store is closed with it).
    pub async fn shutdown(&self) {
        self.post(Command::Stop);
        let thread = self.driver.lock().expect("driver lock").take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

/// Starts a leaderless node and its HTTP server; returns once both are listening.
///
/// # Errors
/// If storage cannot be opened or an address cannot be bound.
pub async fn serve(mut config: NodeConfig) -> Result<Arc<Leaderless>, String> {
    let listener = tokio::net::TcpListener::bind(config.http_addr).await.map_err(|error| format!("cannot listen for HTTP on {}: {error}", config.http_addr))?;
    config.http_addr = listener.local_addr().map_err(|error| error.to_string())?;
    let node = Leaderless::start(config.clone(), config.http_addr.to_string()).await?;
    let app = crate::http::leaderless_router(node.clone());
    crate::tls::spawn_http(listener, app, node.config.http_tls.as_deref());
    Ok(node)
}
