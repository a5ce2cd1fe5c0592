//! The leaderless driver: one thread owning the core's `LeaderlessNode` and the SQLite
//! store. Every event goes through the core's `handle`; its outputs are carried out in
//! order (store changes synchronously, so durable before any later message is queued).
//! Around the core, the SQL: capturing a write's row, sending the statement to a replica
//! of that row, asking every node which row a statement changes when this node does not
//! hold it, schema changes on every node, and SELECTs run over the versions read.

use super::{Command, Leaderless, LeaderlessFrame, LeaderlessStatus, MemberChange, Membership, Outcome};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tern_core::leaderless::{
    Answer, Context, Count, Key, LeaderlessNode, Levels, NodeConfig as CoreConfig, NodeEvent, NodeOutput, Placement, RepairReport, Request, Ring, RingNode,
};
use tern_core::{Micros, Protocol};
use tern_storage::leaderless::{encode_row, key_lookup, LeaderlessStore};
use tern_storage::{Statement, StatementResult};
use tokio::sync::oneshot;

const SCHEMA_PULL_INTERVAL: Duration = Duration::from_secs(10);

/// Where a job's outcomes go.
enum Respond {
    Local(oneshot::Sender<Vec<Outcome>>),
    /// A statement a peer sent this node (a replica of its row) to coordinate.
    Remote {
        peer: String,
        id: u64,
    },
}

enum JobKind {
    Write {
        levels: Levels,
        pre_read: Option<Count>,
        context: Option<Context>,
    },
    Read {
        levels: Levels,
        siblings: bool,
    },
    /// A table's siblings policy, set on every node like a schema change.
    Policy,
}

/// One client request: its statements, run one after another.
struct Job {
    statements: VecDeque<Statement>,
    outcomes: Vec<Outcome>,
    kind: JobKind,
    respond: Respond,
}

/// What a core request or a frame sent is waiting for.
enum Wait {
    Write { job: u64, result: StatementResult },
    PreRead { job: u64, key: Key, again: bool },
    KeyRead { job: u64, key: Key },
    Scan { job: u64 },
    Forwarded { job: u64, to: String, deadline: Instant },
    Probe { job: u64, waiting: BTreeSet<String>, keys: BTreeSet<Key>, error: Option<String>, deadline: Instant },
    Schema { job: u64, waiting: BTreeSet<String>, failed: Vec<String>, deadline: Instant },
    Repair { reply: oneshot::Sender<RepairReport> },
}

impl Wait {
    fn deadline(&self) -> Option<Instant> {
        match self {
            Wait::Forwarded { deadline, .. } | Wait::Probe { deadline, .. } | Wait::Schema { deadline, .. } => Some(*deadline),
            _ => None,
        }
    }
}

pub(super) struct Driver {
    node: Arc<Leaderless>,
    store: LeaderlessStore,
    core: LeaderlessNode,
    dot_name: String,
    next_id: u64,
    jobs: BTreeMap<u64, Job>,
    waits: BTreeMap<u64, Wait>,
    next_schema_pull: Instant,
    /// Whether a peer's schema list has arrived since start: until then, ask every second
    /// (the first asks go out before the links are up).
    schema_heard: bool,
}

fn encode_context(context: &Context) -> String {
    postcard::to_stdvec(context).expect("encoding to memory cannot fail").iter().map(|byte| format!("{byte:02x}")).collect()
}

/// # Errors
/// If the text is not a context this node gave out.
pub fn decode_context(text: &str) -> Result<Context, String> {
    let bad = || format!("context={text:?} is not a context from a read: pass the \"context\" of a read's result as it was given");
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return Err(bad());
    }
    let bytes: Vec<u8> = (0..text.len()).step_by(2).map(|at| u8::from_str_radix(&text[at..at + 2], 16)).collect::<Result<_, _>>().map_err(|_| bad())?;
    postcard::from_bytes(&bytes).map_err(|_| bad())
}

fn wall_clock_us() -> Micros {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_micros() as Micros)
}

fn placement_of(members: &Membership, replicas: usize, vnodes: usize) -> Placement {
    let nodes: Vec<RingNode> = members.members.iter().map(|member| RingNode { id: member.id.clone(), region: member.region.clone() }).collect();
    Placement::new(Ring::new(nodes, vnodes), replicas)
}

fn is_insert(sql: &str) -> bool {
    let keyword = tern_storage::guard::first_keyword(sql);
    keyword == "INSERT" || keyword == "REPLACE"
}

impl Driver {
    pub(super) fn new(node: Arc<Leaderless>, store: LeaderlessStore) -> Result<Driver, String> {
        let config = &node.config;
        let settings = &config.leaderless;
        let members = node.members();
        if settings.replicas == 0 || settings.replicas > members.members.len() {
            return Err(format!("--replicas {} is out of range: 1 to the cluster's {} nodes", settings.replicas, members.members.len()));
        }
        let placement = placement_of(&members, settings.replicas, settings.vnodes);
        let dot_name = format!("{}.{:x}", config.id, store.incarnation());
        let mut core_config = CoreConfig::new(config.id.clone(), dot_name.clone(), placement.clone());
        core_config.request_timeout_us = config.write_timeout.as_micros() as Micros;
        core_config.anti_entropy_interval_us = settings.anti_entropy_interval.as_micros() as Micros;
        let hints = store.hints().map_err(|error| error.to_string())?;
        // Numbers that a previous run of this node never gave out.
        core_config.first_op = wall_clock_us();
        let core = LeaderlessNode::new(core_config, hints, wall_clock_us());
        Ok(Driver {
            node,
            store,
            core,
            dot_name,
            next_id: wall_clock_us(),
            jobs: BTreeMap::new(),
            waits: BTreeMap::new(),
            next_schema_pull: Instant::now(),
            schema_heard: false,
        })
    }

    /// The wall clock, µs since the epoch: the core stamps writes with it (hybrid
    /// time decides which concurrent version shows) and never lets it go backwards.
    fn now(&self) -> Micros {
        wall_clock_us()
    }

    fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn me(&self) -> &str {
        &self.node.config.id
    }

    fn handle(&mut self, event: NodeEvent) {
        let now = self.now();
        self.core.handle(event, now);
    }

    pub(super) fn run(mut self, commands: std_mpsc::Receiver<Command>) {
        loop {
            let now = self.now();
            let core_due = self.core.poll_timeout().map_or(Duration::from_millis(100), |at| Duration::from_micros(at.saturating_sub(now)));
            let waits_due = self.waits.values().filter_map(Wait::deadline).min().map(|at| at.saturating_duration_since(Instant::now()));
            let timeout = core_due.min(waits_due.unwrap_or(Duration::MAX)).min(Duration::from_millis(100));
            match commands.recv_timeout(timeout) {
                Ok(Command::Stop) | Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
                Ok(command) => self.on_command(command),
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            }
            if self.core.poll_timeout().is_some_and(|at| at <= self.now()) {
                self.handle(NodeEvent::Tick);
            }
            self.expire_waits();
            if Instant::now() >= self.next_schema_pull {
                let interval = if self.schema_heard { SCHEMA_PULL_INTERVAL } else { Duration::from_secs(1) };
                self.next_schema_pull = Instant::now() + interval;
                for peer in self.core.placement().nodes() {
                    if peer != self.me() {
                        self.node.send(&peer, LeaderlessFrame::SchemaPull);
                    }
                }
            }
            self.drain();
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Frame { from, frame } => self.on_frame(from, frame),
            Command::Execute { statements, levels, pre_read, context, reply } => {
                let context = match context.as_deref().map(decode_context).transpose() {
                    Ok(context) => context,
                    Err(message) => {
                        let _ = reply.send(vec![Outcome::error(message); statements.len()]);
                        return;
                    }
                };
                let kind = JobKind::Write { levels, pre_read, context };
                self.start_job(statements.into(), kind, Respond::Local(reply));
            }
            Command::Query { statements, levels, siblings, reply } => {
                self.start_job(statements.into(), JobKind::Read { levels, siblings }, Respond::Local(reply));
            }
            Command::Repair { reply } => {
                let id = self.id();
                self.waits.insert(id, Wait::Repair { reply });
                self.handle(NodeEvent::Repair { id });
            }
            Command::Members { change, reply } => {
                let _ = reply.send(self.change_members(change));
            }
            Command::Policy { table, siblings, reply } => {
                let statement = Statement::new(tern_storage::leaderless::policy_statement(&table, siblings));
                self.start_job(VecDeque::from([statement]), JobKind::Policy, Respond::Local(reply));
            }
            Command::Conflicts { reply } => {
                let _ = reply.send(self.store.keys_with_siblings(1_000).map_err(|error| error.to_string()));
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Stop => {}
        }
    }

    fn status(&self) -> LeaderlessStatus {
        let settings = &self.node.config.leaderless;
        LeaderlessStatus {
            id: self.node.config.id.clone(),
            region: self.node.config.region.clone(),
            replicas: self.core.placement().replicas,
            default_w: settings.w.name(),
            default_r: settings.r.name(),
            keys_stored: self.store.key_count().unwrap_or(0),
            hints: self.core.hint_counts(),
            peers_down: self.core.down_peers(),
            requests_in_flight: self.core.requests_in_flight(),
            keys_with_siblings: self.store.sibling_counts().unwrap_or_default().into_iter().collect(),
            schema_statements: self.store.schema().map_or(0, |schema| schema.len()),
            incarnation: self.dot_name.clone(),
        }
    }

    // --- membership ---

    fn change_members(&mut self, change: MemberChange) -> Result<Membership, String> {
        // Rows move to a new replica from the replicas that stay; with one replica per
        // row there is none, and the row would stay behind on a node that no longer serves it.
        if self.core.placement().replicas < 2 {
            return Err("members cannot change with --replicas 1: a row's only copy would stay on the node that gives it up; run with 2 or more".to_string());
        }
        let mut next = self.node.members();
        let before: Vec<String> = next.members.iter().map(|member| member.id.clone()).collect();
        match change {
            MemberChange::Add(member) => {
                if next.members.iter().any(|known| known.id == member.id || known.addr == member.addr) {
                    return Err(format!("{} or its address {} is a member already", member.id, member.addr));
                }
                next.members.push(member);
            }
            MemberChange::Remove(id) => {
                if !next.members.iter().any(|known| known.id == id) {
                    return Err(format!("{id} is not a member: the members are {}", before.join(", ")));
                }
                next.members.retain(|known| known.id != id);
                if next.members.len() < self.core.placement().replicas {
                    return Err(format!("removing {id} would leave {} nodes for {} replicas per row", next.members.len(), self.core.placement().replicas));
                }
            }
        }
        next.version += 1;
        // Everyone who was or is a member hears of it; a node removed stops taking part.
        let everyone: BTreeSet<String> = before.into_iter().chain(next.members.iter().map(|member| member.id.clone())).collect();
        // A member removed loses its link when the change applies here: tell it first.
        for peer in everyone.iter().filter(|peer| !next.members.iter().any(|member| member.id == **peer)) {
            self.node.send(peer, LeaderlessFrame::Members(next.clone()));
        }
        self.apply_members(next.clone());
        for peer in next.members.iter().map(|member| member.id.clone()).filter(|peer| peer != self.me()) {
            self.node.send(&peer, LeaderlessFrame::Members(next.clone()));
        }
        Ok(next)
    }

    fn apply_members(&mut self, members: Membership) {
        if let Err(error) = self.store.set_members(&serde_json::to_string(&members).expect("members encode")) {
            panic!("cannot store the member list: {error}");
        }
        tracing::info!("members now (version {}): {}", members.version, members.members.iter().map(|member| member.id.as_str()).collect::<Vec<_>>().join(", "));
        let placement = placement_of(&members, self.node.config.leaderless.replicas, self.node.config.leaderless.vnodes);
        self.node.set_members(members);
        self.handle(NodeEvent::Placement(placement));
    }

    // --- jobs ---

    fn start_job(&mut self, statements: VecDeque<Statement>, kind: JobKind, respond: Respond) {
        let job = self.id();
        self.jobs.insert(job, Job { statements, outcomes: Vec::new(), kind, respond });
        self.next_statement(job);
    }

    /// Starts the job's next statement, or answers the job when none is left.
    fn next_statement(&mut self, job: u64) {
        let Some(current) = self.jobs.get(&job) else { return };
        let Some(statement) = current.statements.front().cloned() else {
            if let Some(done) = self.jobs.remove(&job) {
                match done.respond {
                    Respond::Local(reply) => {
                        let _ = reply.send(done.outcomes);
                    }
                    Respond::Remote { peer, id } => {
                        let outcome = done.outcomes.into_iter().next().unwrap_or_default();
                        self.node.send(&peer, LeaderlessFrame::Executed { id, outcome });
                    }
                }
            }
            return;
        };
        match current.kind {
            JobKind::Read { levels, .. } => self.start_read(job, statement, levels),
            JobKind::Write { .. } => self.start_write(job, statement),
            JobKind::Policy => self.start_schema(job, statement),
        }
    }

    fn finish(&mut self, job: u64, outcome: Outcome) {
        if let Some(current) = self.jobs.get_mut(&job) {
            current.statements.pop_front();
            current.outcomes.push(outcome);
        }
        self.next_statement(job);
    }

    fn levels(&self, job: u64) -> Levels {
        match self.jobs.get(&job).map(|current| &current.kind) {
            Some(JobKind::Write { levels, .. } | JobKind::Read { levels, .. }) => *levels,
            Some(JobKind::Policy) | None => Levels::default(),
        }
    }

    fn current_statement(&self, job: u64) -> Option<Statement> {
        self.jobs.get(&job).and_then(|current| current.statements.front().cloned())
    }

    fn request(&mut self, wait: Wait, key: Key, request: Request, levels: Levels) {
        let id = self.id();
        self.waits.insert(id, wait);
        self.handle(NodeEvent::Request { id, key, request, levels });
    }

    // --- reads ---

    fn start_read(&mut self, job: u64, statement: Statement, levels: Levels) {
        if !self.store.reads_only(&statement.sql) {
            return self.finish(job, Outcome::error("attempt to change the database in a query: send writes to /db/execute"));
        }
        let by_key = key_lookup(&statement).and_then(|(table, column, value)| self.store.key_of(&table, &column, &value));
        if let Some(key) = by_key {
            return self.request(Wait::KeyRead { job, key: key.clone() }, key, Request::Read, levels);
        }
        match self.store.tables_read(&statement.sql) {
            Some(tables) if !tables.is_empty() => {
                let id = self.id();
                self.waits.insert(id, Wait::Scan { job });
                self.handle(NodeEvent::Request { id, key: Key::new("", Vec::new()), request: Request::Scan { tables }, levels });
            }
            // No table (SELECT 1), or it does not prepare: SQLite's own answer.
            _ => {
                let result = self.store.evaluate(&statement, &[], false);
                self.finish(job, Outcome { result, ..Outcome::default() });
            }
        }
    }

    // --- writes ---

    fn start_write(&mut self, job: u64, statement: Statement) {
        let request = tern_storage::WriteRequest { statements: vec![statement.clone()], transaction: false };
        if tern_storage::changes_schema(&request) {
            return self.start_schema(job, statement);
        }
        let captured = self.store.capture(&statement);
        if captured.result.error.is_some() {
            return self.finish(job, Outcome { result: captured.result, ..Outcome::default() });
        }
        match captured.row {
            Some((key, _)) => self.route(job, statement, key),
            None if is_insert(&statement.sql) => self.finish(job, Outcome { result: captured.result, ..Outcome::default() }),
            // This node holds no row the statement changes; another may.
            None => self.probe(job, statement, captured.result),
        }
    }

    fn route(&mut self, job: u64, statement: Statement, key: Key) {
        if self.core.placement().is_replica(key.token(), self.me()) {
            return self.coordinate(job, key);
        }
        let down = self.core.down_peers();
        let Some(replica) = self.core.placement().replicas(&key).into_iter().find(|node| !down.contains(node)) else {
            return self.finish(job, Outcome::unavailable("every replica of this row is down: nothing was written; retry"));
        };
        let (levels, pre_read, context) = match self.jobs.get(&job).map(|current| &current.kind) {
            Some(JobKind::Write { levels, pre_read, context }) => (*levels, *pre_read, context.clone()),
            _ => (Levels::default(), None, None),
        };
        let id = self.id();
        let deadline = Instant::now() + self.node.config.write_timeout;
        self.waits.insert(id, Wait::Forwarded { job, to: replica.clone(), deadline });
        self.node.send(&replica, LeaderlessFrame::Execute { id, statement, levels, pre_read, context, key: Some(key) });
    }

    fn probe(&mut self, job: u64, statement: Statement, nothing: StatementResult) {
        let down = self.core.down_peers();
        let peers: BTreeSet<String> = self.core.placement().nodes().into_iter().filter(|node| node != self.me() && !down.contains(node)).collect();
        if peers.is_empty() {
            return self.finish(job, Outcome { result: nothing, ..Outcome::default() });
        }
        let id = self.id();
        for peer in &peers {
            self.node.send(peer, LeaderlessFrame::Probe { id, statement: statement.clone() });
        }
        let deadline = Instant::now() + self.node.config.write_timeout.min(Duration::from_secs(3));
        self.waits.insert(id, Wait::Probe { job, waiting: peers, keys: BTreeSet::new(), error: None, deadline });
    }

    fn probed(&mut self, job: u64, keys: BTreeSet<Key>, error: Option<String>, silent: Vec<String>) {
        if let Some(message) = error {
            return self.finish(job, Outcome::error(message));
        }
        let Some(statement) = self.current_statement(job) else { return };
        match keys.len() {
            0 if silent.is_empty() => self.finish(job, Outcome { result: StatementResult::default(), ..Outcome::default() }),
            0 => self.finish(
                job,
                Outcome::unavailable(format!("no node that answered holds a row this statement changes, and {} did not answer: retry", silent.join(", "))),
            ),
            1 => {
                let key = keys.into_iter().next().expect("one key");
                self.route(job, statement, key);
            }
            many => self.finish(
                job,
                Outcome::error(format!(
                    "this statement changes {many} rows: under --topology leaderless a write changes one row, addressed by its primary key"
                )),
            ),
        }
    }

    /// On a replica of `key`: reads the row from `pre_read` replicas first if asked, then
    /// runs the statement on this copy and coordinates the row's new version.
    fn coordinate(&mut self, job: u64, key: Key) {
        let pre_read = match self.jobs.get(&job).map(|current| &current.kind) {
            Some(JobKind::Write { pre_read, .. }) => *pre_read,
            _ => None,
        };
        match pre_read {
            Some(count) if count.of(self.core.placement().replicas) > 1 => {
                let levels = Levels { r: count, ..self.levels(job) };
                self.request(Wait::PreRead { job, key: key.clone(), again: false }, key, Request::Read, levels);
            }
            _ => self.capture_and_write(job, key, false),
        }
    }

    /// `read_first`: the row was just read from other replicas (so a statement that
    /// finds no row here finds none anywhere asked).
    fn capture_and_write(&mut self, job: u64, key: Key, read_first: bool) {
        let Some(statement) = self.current_statement(job) else { return };
        let captured = self.store.capture(&statement);
        if captured.result.error.is_some() {
            return self.finish(job, Outcome { result: captured.result, ..Outcome::default() });
        }
        let Some((changed, image)) = captured.row else {
            if !read_first && !is_insert(&statement.sql) {
                // This replica may have missed the row another replica holds: read it from
                // a quorum of them, then run the statement again.
                let levels = Levels { r: Count::Quorum, ..self.levels(job) };
                return self.request(Wait::PreRead { job, key: key.clone(), again: true }, key, Request::Read, levels);
            }
            return self.finish(job, Outcome { result: captured.result, replicas: Some(0), ..Outcome::default() });
        };
        if changed != key {
            return self.finish(
                job,
                Outcome::error("this statement changes a row's primary key: under --topology leaderless that is two writes, a DELETE of the old row and an INSERT of the new"),
            );
        }
        let context = match self.jobs.get(&job).map(|current| &current.kind) {
            Some(JobKind::Write { context, .. }) => context.clone(),
            _ => None,
        };
        let levels = self.levels(job);
        let value = image.as_ref().map(encode_row);
        self.request(Wait::Write { job, result: captured.result }, key, Request::Write { value, context }, levels);
    }

    // --- schema ---

    fn start_schema(&mut self, job: u64, statement: Statement) {
        let origin = format!("{}:{}", self.dot_name, self.next_id);
        let result = self.apply_schema_item(&origin, &statement);
        if result.error.is_some() {
            return self.finish(job, Outcome { result, ..Outcome::default() });
        }
        let peers: BTreeSet<String> = self.core.placement().nodes().into_iter().filter(|node| node != self.me()).collect();
        if peers.is_empty() {
            return self.finish(job, Outcome { result, ..Outcome::default() });
        }
        let id = self.id();
        for peer in &peers {
            self.node.send(peer, LeaderlessFrame::Schema { id, origin: origin.clone(), statement: statement.clone() });
        }
        let deadline = Instant::now() + self.node.config.write_timeout;
        self.waits.insert(id, Wait::Schema { job, waiting: peers, failed: Vec::new(), deadline });
    }

    fn schema_done(&mut self, job: u64, failed: Vec<String>, silent: Vec<String>) {
        let total = self.core.placement().nodes().len();
        if failed.is_empty() && silent.is_empty() {
            return self.finish(job, Outcome { result: StatementResult::default(), replicas: Some(total), ..Outcome::default() });
        }
        let mut message = String::from("the schema change was made on this node");
        if !failed.is_empty() {
            message.push_str(&format!("; refused on {}", failed.join("; ")));
        }
        if !silent.is_empty() {
            message.push_str(&format!("; {} did not answer (a node catches up on the schema within 10 s of coming back)", silent.join(", ")));
        }
        self.finish(job, Outcome { unavailable: failed.is_empty(), ..Outcome::error(message) });
    }

    /// A schema stream item: SQL, or a table's siblings policy.
    fn apply_schema_item(&mut self, origin: &str, statement: &Statement) -> StatementResult {
        match tern_storage::leaderless::parse_policy_statement(&statement.sql) {
            Some((table, siblings)) => match self.store.apply_policy(origin, &table, siblings) {
                Ok(()) => StatementResult::default(),
                Err(error) => StatementResult::error(error.to_string()),
            },
            None => self.store.apply_schema(origin, statement),
        }
    }

    // --- frames ---

    fn on_frame(&mut self, from: String, frame: LeaderlessFrame) {
        match frame {
            LeaderlessFrame::Node(message) => self.handle(NodeEvent::Message { from, message }),
            LeaderlessFrame::Execute { id, statement, levels, pre_read, context, key } => {
                let kind = JobKind::Write { levels, pre_read, context };
                let job = self.id();
                self.jobs.insert(
                    job,
                    Job { statements: VecDeque::from([statement.clone()]), outcomes: Vec::new(), kind, respond: Respond::Remote { peer: from, id } },
                );
                match key {
                    Some(key) if self.core.placement().is_replica(key.token(), self.me()) => self.coordinate(job, key),
                    _ => self.finish(job, Outcome::error(format!("{} is not a replica of this row: the nodes disagree on the ring; retry", self.me()))),
                }
            }
            LeaderlessFrame::Executed { id, outcome } => {
                if let Some(Wait::Forwarded { job, .. }) = self.waits.remove(&id) {
                    self.finish(job, outcome);
                }
            }
            LeaderlessFrame::Probe { id, statement } => {
                let captured = self.store.capture(&statement);
                let key = captured.row.map(|(key, _)| key);
                self.node.send(&from, LeaderlessFrame::Probed { id, key, error: captured.result.error });
            }
            LeaderlessFrame::Probed { id, key, error } => {
                let Some(Wait::Probe { waiting, keys, error: first_error, .. }) = self.waits.get_mut(&id) else { return };
                waiting.remove(&from);
                keys.extend(key);
                if first_error.is_none() {
                    *first_error = error;
                }
                if waiting.is_empty() {
                    if let Some(Wait::Probe { job, keys, error, .. }) = self.waits.remove(&id) {
                        self.probed(job, keys, error, Vec::new());
                    }
                }
            }
            LeaderlessFrame::Schema { id, origin, statement } => {
                let result = self.apply_schema_item(&origin, &statement);
                self.node.send(&from, LeaderlessFrame::SchemaApplied { id, error: result.error });
            }
            LeaderlessFrame::SchemaApplied { id, error } => {
                let Some(Wait::Schema { waiting, failed, .. }) = self.waits.get_mut(&id) else { return };
                waiting.remove(&from);
                if let Some(error) = error {
                    failed.push(format!("{from}: {error}"));
                }
                if waiting.is_empty() {
                    if let Some(Wait::Schema { job, failed, .. }) = self.waits.remove(&id) {
                        self.schema_done(job, failed, Vec::new());
                    }
                }
            }
            LeaderlessFrame::Members(members) => {
                let ids: BTreeSet<&str> = members.members.iter().map(|member| member.id.as_str()).collect();
                let fits = ids.len() == members.members.len() && ids.len() >= self.node.config.leaderless.replicas;
                // Two changes made at once on two nodes can take one number: the list
                // itself breaks the tie, the same way on every node.
                if fits && members.order() > self.node.members().order() {
                    self.apply_members(members);
                } else if !fits {
                    tracing::warn!("{from} sent a member list that cannot be the cluster's (an id twice, or fewer nodes than --replicas): ignored");
                }
            }
            LeaderlessFrame::SchemaPull => {
                let statements = self.store.schema().unwrap_or_default();
                self.node.send(&from, LeaderlessFrame::SchemaList { statements });
            }
            LeaderlessFrame::SchemaList { statements } => {
                self.schema_heard = true;
                let made = self.store.schema().unwrap_or_default();
                for (origin, sql) in statements.into_iter().filter(|(origin, _)| !made.iter().any(|(made_as, _)| made_as == origin)) {
                    let result = self.apply_schema_item(&origin, &Statement::new(sql.clone()));
                    if let Some(error) = result.error {
                        tracing::warn!("could not apply schema statement {sql:?} from {from}: {error}");
                    }
                }
            }
        }
    }

    fn expire_waits(&mut self) {
        let now = Instant::now();
        let late: Vec<u64> = self.waits.iter().filter(|(_, wait)| wait.deadline().is_some_and(|deadline| deadline <= now)).map(|(id, _)| *id).collect();
        for id in late {
            match self.waits.remove(&id) {
                Some(Wait::Forwarded { job, to, .. }) => {
                    self.finish(job, Outcome::unavailable(format!("timed out waiting for {to}, the replica coordinating this write: its outcome is unknown")));
                }
                Some(Wait::Probe { job, waiting, keys, error, .. }) => self.probed(job, keys, error, waiting.into_iter().collect()),
                Some(Wait::Schema { job, waiting, failed, .. }) => self.schema_done(job, failed, waiting.into_iter().collect()),
                Some(other) => {
                    self.waits.insert(id, other);
                }
                None => {}
            }
        }
    }

    // --- the core's outputs ---

    fn on_answer(&mut self, id: u64, answer: Answer) {
        let Some(wait) = self.waits.remove(&id) else { return };
        let refusal = |answer: &Answer| match answer {
            Answer::Refused(refusal) => Some(Outcome::unavailable(refusal.to_string())),
            _ => None,
        };
        match wait {
            Wait::Write { job, result } => match answer {
                Answer::Written { acks, hinted, .. } => self.finish(job, Outcome { result, replicas: Some(acks), hinted: Some(hinted), ..Outcome::default() }),
                other => self.finish(job, refusal(&other).unwrap_or_default()),
            },
            Wait::PreRead { job, key, again } => match answer {
                Answer::Read { versions, .. } => match self.store.merge(&[(key.clone(), versions)]) {
                    Ok(_) => self.capture_and_write(job, key, again),
                    Err(error) => self.finish(job, Outcome::error(error.to_string())),
                },
                other => self.finish(job, refusal(&other).unwrap_or_default()),
            },
            Wait::KeyRead { job, key } => match answer {
                Answer::Read { versions, answered } => {
                    let Some(statement) = self.current_statement(job) else { return };
                    let asked = matches!(self.jobs.get(&job).map(|current| &current.kind), Some(JobKind::Read { siblings: true, .. }));
                    let siblings = asked || self.store.sibling_tables().unwrap_or_default().contains(&key.table);
                    let context = Some(encode_context(&versions.context()));
                    let result = self.store.evaluate(&statement, &[(key, versions)], siblings);
                    self.finish(job, Outcome { result, replicas: Some(answered), context, ..Outcome::default() });
                }
                other => self.finish(job, refusal(&other).unwrap_or_default()),
            },
            Wait::Scan { job } => match answer {
                Answer::Scanned { entries, answered } => {
                    let Some(statement) = self.current_statement(job) else { return };
                    let result = self.store.evaluate(&statement, &entries, false);
                    self.finish(job, Outcome { result, replicas: Some(answered), ..Outcome::default() });
                }
                other => self.finish(job, refusal(&other).unwrap_or_default()),
            },
            other => {
                self.waits.insert(id, other);
            }
        }
    }

    /// Carries out the core's outputs in order. Consecutive merges share one transaction,
    /// written before anything after them.
    fn drain(&mut self) {
        let mut merges: Vec<(Key, tern_core::leaderless::KeyVersions)> = Vec::new();
        loop {
            let output = self.core.poll_output();
            if !matches!(output, Some(NodeOutput::Merge { .. })) && !merges.is_empty() {
                // An acknowledgement may follow: a store that cannot write ends the node
                // rather than acknowledge what it did not keep (another replica takes over).
                if let Err(error) = self.store.merge(&merges) {
                    panic!("cannot store {} merged row version(s): {error}", merges.len());
                }
                for skipped in self.store.take_skipped() {
                    tracing::warn!("a row version from a peer was not kept: {skipped}");
                }
                merges.clear();
            }
            let Some(output) = output else { return };
            match output {
                NodeOutput::Merge { key, versions } => {
                    // Versions from peers: anti-entropy, read repair and hints handed off.
                    crate::metrics::count("tern_leaderless_merges_total", &self.node.config.id);
                    merges.push((key, versions));
                }
                NodeOutput::Send { to, message } => self.node.send(&to, LeaderlessFrame::Node(message)),
                NodeOutput::Answer { id, answer } => self.on_answer(id, answer),
                NodeOutput::Repaired { id, report } => {
                    crate::metrics::count("tern_leaderless_repairs_total", &self.node.config.id);
                    if let Some(Wait::Repair { reply }) = self.waits.remove(&id) {
                        let _ = reply.send(report);
                    }
                }
                NodeOutput::WriteLocal { op, key, value, context } => match self.store.write_local(&key, &self.dot_name, context.as_ref(), value) {
                    Ok((dot, versions)) => self.handle(NodeEvent::LocalWritten { op, dot, versions }),
                    Err(error) => panic!("cannot store a row's new version: {error}"),
                },
                NodeOutput::Load { op, key } => {
                    // An empty answer would count toward r as "no such row".
                    let versions = self.store.load(&key).unwrap_or_else(|error| panic!("cannot read a row's versions: {error}"));
                    self.handle(NodeEvent::Loaded { op, versions });
                }
                NodeOutput::StoreHint { target, key, versions } => {
                    if let Err(error) = self.store.store_hint(&target, &key, &versions) {
                        panic!("cannot store a hint for {target}: {error}");
                    }
                }
                NodeOutput::DropHint { target, key } => {
                    if let Err(error) = self.store.drop_hint(&target, &key) {
                        tracing::error!("could not drop a delivered hint for {target}: {error}");
                    }
                }
                NodeOutput::BuildTree { op, peer, depth } => {
                    let (me, placement) = (self.node.config.id.clone(), self.core.placement().clone());
                    let tree = self
                        .store
                        .tree(depth, &|token| placement.shares(token, &me, &peer))
                        .unwrap_or_else(|_| tern_core::leaderless::MerkleTree::build(depth, std::iter::empty()));
                    self.handle(NodeEvent::TreeBuilt { op, tree });
                }
                NodeOutput::LoadRanges { op, peer, ranges } => {
                    let (me, placement) = (self.node.config.id.clone(), self.core.placement().clone());
                    let entries = self.store.entries_in(&ranges, &|token| placement.shares(token, &me, &peer)).unwrap_or_default();
                    self.handle(NodeEvent::RangesLoaded { op, entries });
                }
                NodeOutput::LoadTables { op, tables } => {
                    let entries = self.store.table_entries(&tables).unwrap_or_default();
                    self.handle(NodeEvent::TablesLoaded { op, entries });
                }
            }
        }
    }
}
