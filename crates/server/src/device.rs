//! An offline-first device (issue 15): a replica embedded in an application, in a local
//! directory, that takes reads and writes at local speed with or without a network and
//! syncs with any node of a multi-leader tern cluster when it can.
//!
//! A device is an origin of its own: each of its write transactions is the next write of
//! its stream, with its id, what it had seen and a hybrid-clock time, exactly as a
//! region's writes are. [`Device::sync`] pulls what the device lacks (pages of writes in
//! an order it can apply them in) and then pushes its own writes the cluster lacks; both
//! directions resume from durable per-origin cursors (the device's region log, and the
//! cluster's), so an interrupted sync is simply run again. Conflicts with other devices
//! and regions follow each table's policy, on the device as in the cluster.
//!
//! ```no_run
//! # fn main() -> Result<(), String> {
//! let mut phone = tern_server::device::Device::open(std::path::Path::new("cal.db"), Some("alice-phone"))?;
//! phone.execute(&["INSERT INTO bookings VALUES ('room1-9am', 'alice')"])?; // offline is fine
//! let report = phone.sync("127.0.0.1:4001")?;
//! println!("pulled {}, pushed {}", report.pulled, report.pushed);
//! # Ok(()) }
//! ```

use crate::client::HttpClient;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tern_core::multi_leader::{Dot, VersionVector};
use tern_core::LogFormat;
use tern_storage::sync::{vector_from_json, vector_to_json, write_from_json, write_to_json};
use tern_storage::{Engine, Executed, Reader, Statement, StatementResult, TableConflicts, WriteRequest};

/// The device's own bookkeeping, beside its database.
const STATE_FILE: &str = "device.json";

/// Writes per pushed page, and about how many bytes.
const PUSH_WRITES: u64 = 1_000;
const PUSH_BYTES: usize = 2 << 20;

/// Pulled writes per page.
const PULL_WRITES: usize = 1_000;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct DeviceState {
    id: String,
    /// What the cluster said it holds at the last sync (its own cursor of this device's
    /// stream is what counts; this copy only says what is pending).
    cluster_holds: VersionVector,
    /// When the last sync finished (ms since the Unix epoch), and with whom.
    last_sync_ms: Option<u64>,
    last_server: Option<String>,
}

/// What one sync did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// The device was behind what the cluster keeps of its log: it installed a copy of
    /// the node's database (its own unsynced writes kept on top) before pulling.
    pub snapshot: bool,
    /// Writes pulled from the cluster and applied here.
    pub pulled: u64,
    /// Writes of this device pushed and held by the cluster.
    pub pushed: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub took: Duration,
}

/// What `tern device status` shows.
#[derive(Clone, Debug)]
pub struct DeviceStatus {
    pub id: String,
    /// Writes made here, and those of them the cluster did not hold at the last sync.
    pub own_writes: u64,
    pub pending: u64,
    pub last_sync_ms: Option<u64>,
    pub last_server: Option<String>,
    /// Every write this device holds, per origin.
    pub holds: VersionVector,
    /// Rows holding losing versions (or taken out by a UNIQUE clash), over all tables.
    pub conflicted_rows: usize,
}

pub struct Device {
    directory: PathBuf,
    engine: Engine,
    /// Opened at the first read, then kept (it sees each write once committed).
    reader: Option<Reader>,
    state: DeviceState,
    /// Held locked while the device is open: one program at a time.
    _lock: std::fs::File,
}

/// Milliseconds since the Unix epoch (what `DeviceStatus::last_sync_ms` counts in).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// A fresh device id: `device-` and 16 hex digits from the process's random hasher seed.
fn new_device_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(unix_ms());
    hasher.write_u32(std::process::id());
    format!("device-{:016x}", hasher.finish())
}

/// Whether `id` may name a device: 1 to 64 letters, digits, `-`, `_` or `.`.
///
/// # Errors
/// Why it may not.
pub fn valid_id(id: &str) -> Result<(), String> {
    let fine = !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if fine {
        Ok(())
    } else {
        Err(format!("device id {id:?}: use 1 to 64 letters, digits, '-', '_' or '.'"))
    }
}

/// Whether a pull answer carries writes of `id`'s own stream (which only `id` makes).
fn writes_of_self(page: &Value, id: &str) -> bool {
    page["writes"].as_array().is_some_and(|writes| writes.iter().any(|write| write["origin"] == id))
}

impl Device {
    /// Opens (or creates) the device in `directory`. A new device takes `id`, or a fresh
    /// random one; an existing device keeps its own (a different `id` is refused).
    ///
    /// # Errors
    /// If the directory cannot be used, or `id` does not match the device there.
    pub fn open(directory: &Path, id: Option<&str>) -> Result<Device, String> {
        std::fs::create_dir_all(directory).map_err(|error| format!("cannot create {}: {error}", directory.display()))?;
        let lock_path = directory.join("device.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|error| format!("cannot open {}: {error}", lock_path.display()))?;
        if lock.try_lock().is_err() {
            return Err(format!("device {} is in use by another program", directory.display()));
        }
        let path = directory.join(STATE_FILE);
        let state = match std::fs::read(&path) {
            Ok(bytes) => {
                let state: DeviceState = serde_json::from_slice(&bytes).map_err(|error| format!("{} is damaged: {error}", path.display()))?;
                if let Some(id) = id.filter(|id| *id != state.id) {
                    return Err(format!("{} is device {}, not {id}", directory.display(), state.id));
                }
                state
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let id = id.map_or_else(new_device_id, str::to_string);
                valid_id(&id)?;
                DeviceState { id, ..DeviceState::default() }
            }
            Err(error) => return Err(format!("cannot read {}: {error}", path.display())),
        };
        let mut engine = Engine::open(directory, LogFormat::Row).map_err(|error| error.to_string())?;
        engine.set_device(&state.id).map_err(|error| error.to_string())?;
        let device = Device { directory: directory.to_path_buf(), engine, reader: None, state, _lock: lock };
        device.save()?;
        Ok(device)
    }

    pub fn id(&self) -> &str {
        &self.state.id
    }

    fn save(&self) -> Result<(), String> {
        let path = self.directory.join(STATE_FILE);
        let staged = self.directory.join(format!("{STATE_FILE}.new"));
        let bytes = serde_json::to_vec_pretty(&self.state).map_err(|error| error.to_string())?;
        std::fs::write(&staged, bytes).and_then(|()| std::fs::rename(&staged, &path)).map_err(|error| format!("cannot save {}: {error}", path.display()))
    }

    /// Runs SQL statements here, at local speed, network or not: reads on a read
    /// connection; writes as one transaction, the next write of this device's stream.
    /// Schema changes are made in the cluster and reach devices when they sync.
    ///
    /// # Errors
    /// A schema change, or a failure of the local database (a statement's own error is
    /// in its result, and then nothing of the transaction is kept).
    pub fn execute(&mut self, statements: &[&str]) -> Result<Vec<StatementResult>, String> {
        self.execute_statements(statements.iter().map(|sql| Statement::new(*sql)).collect())
    }

    /// As [`Device::execute`], with parameters.
    ///
    /// # Errors
    /// As [`Device::execute`].
    pub fn execute_statements(&mut self, statements: Vec<Statement>) -> Result<Vec<StatementResult>, String> {
        let request = WriteRequest { statements, transaction: true };
        if tern_storage::changes_schema(&request) {
            return Err("a device takes its schema from the cluster: make schema changes there, then sync".to_string());
        }
        if self.reader.is_none() {
            self.reader = Some(Reader::open(&self.directory).map_err(|error| error.to_string())?);
        }
        let reader = self.reader.as_ref().expect("opened above");
        if tern_storage::all_read_only(reader, &request.statements) {
            return reader.query(&request.statements).map(|(results, _)| results).map_err(|error| error.to_string());
        }
        let batch = self.engine.execute_batch(1, std::slice::from_ref(&request)).map_err(|error| error.to_string())?;
        self.compact()?;
        Ok(batch.results.into_iter().next().unwrap_or_default())
    }

    /// The device keeps no replication log of its own (its stream is the region log).
    fn compact(&mut self) -> Result<(), String> {
        let last = self.engine.last().index;
        self.engine.compact(1, last).map_err(|error| error.to_string())
    }

    /// Every write this device holds, per origin (its own included).
    ///
    /// # Errors
    /// On a failure of the local database.
    pub fn holds(&self) -> Result<VersionVector, String> {
        self.engine.region_holds().map_err(|error| error.to_string())
    }

    /// Rows with losing versions on record here, per table.
    ///
    /// # Errors
    /// On a failure of the local database.
    pub fn conflicts(&self) -> Result<Vec<TableConflicts>, String> {
        self.engine.region_conflicts().map_err(|error| error.to_string())
    }

    /// Settles the conflicts of `table`'s row `key` for every device and region: keeps
    /// `values` (the whole row), or the version shown now, as a write of this device that
    /// has seen every version of the row (it reaches the others when this device syncs).
    ///
    /// # Errors
    /// If the row does not exist or the values do not fit, or on a failure of the local database.
    pub fn resolve(&mut self, table: &str, key: &[tern_storage::SqlValue], values: Option<Vec<tern_storage::SqlValue>>) -> Result<(), String> {
        self.engine.resolve_conflict(1, table, key, values, &|| true).map_err(|error| error.to_string())?;
        self.compact()
    }

    /// # Errors
    /// On a failure of the local database.
    pub fn status(&self) -> Result<DeviceStatus, String> {
        let holds = self.holds()?;
        let own_writes = holds.get(&self.state.id);
        let conflicted_rows = self.conflicts()?.iter().map(|table| table.rows.len() + table.unique.len()).sum();
        Ok(DeviceStatus {
            id: self.state.id.clone(),
            own_writes,
            pending: own_writes.saturating_sub(self.state.cluster_holds.get(&self.state.id)),
            last_sync_ms: self.state.last_sync_ms,
            last_server: self.state.last_server.clone(),
            holds,
            conflicted_rows,
        })
    }

    /// Syncs with the node at `server` (`host:port`, `http://` accepted): pulls every
    /// write this device lacks, then pushes every write of its own the cluster lacks.
    /// Safe to interrupt at any point and to run again.
    ///
    /// # Errors
    /// If the node cannot be reached or refuses (what was applied or pushed before
    /// stays; the next sync goes on from there).
    pub fn sync(&mut self, server: &str) -> Result<SyncReport, String> {
        let started = Instant::now();
        let mut client = HttpClient::new(server).with_timeout(Duration::from_secs(60));
        let mut report = SyncReport::default();
        let cluster_holds = self.pull(&mut client, &mut report)?;
        self.state.cluster_holds = cluster_holds;
        self.push(&mut client, &mut report)?;
        self.state.last_sync_ms = Some(unix_ms());
        self.state.last_server = Some(server.to_string());
        self.save()?;
        report.took = started.elapsed();
        Ok(report)
    }

    fn call(client: &mut HttpClient, path: &str, body: &Value, report: &mut SyncReport) -> Result<Value, String> {
        let sent = serde_json::to_vec(body).map_err(|error| error.to_string())?;
        report.bytes_sent += sent.len() as u64;
        let (status, bytes) = client.request_raw("POST", path, Some(&sent)).map_err(|error| format!("cannot reach {}: {error}", client.addr()))?;
        report.bytes_received += bytes.len() as u64;
        let body = crate::client::parse_body(&bytes);
        if status != 200 {
            let why = body["error"].as_str().map_or_else(|| body.to_string(), str::to_string);
            return Err(format!("{} answered {path} with {status}: {why}", client.addr()));
        }
        Ok(body)
    }

    /// Fetches a copy of the node's database and installs it, keeping this device's own
    /// writes the copy lacks.
    fn install_snapshot(&mut self, client: &mut HttpClient, report: &mut SyncReport) -> Result<(), String> {
        let (status, bytes) = client.request_raw("GET", "/db/sync/snapshot", None).map_err(|error| format!("cannot reach {}: {error}", client.addr()))?;
        report.bytes_received += bytes.len() as u64;
        if status != 200 {
            return Err(format!("{} could not send a snapshot ({status}): {}", client.addr(), String::from_utf8_lossy(&bytes)));
        }
        let path = self.directory.join("snapshot.incoming.db");
        std::fs::write(&path, &bytes).map_err(|error| format!("cannot write {}: {error}", path.display()))?;
        // The read connection would go on reading the file the snapshot replaces.
        self.reader = None;
        let installed = self.engine.install_device_snapshot(&path).map_err(|error| format!("cannot install the snapshot: {error}"));
        let _ = std::fs::remove_file(&path);
        installed?;
        report.snapshot = true;
        self.compact()
    }

    /// Pulls and applies pages until none is left; returns what the node holds.
    fn pull(&mut self, client: &mut HttpClient, report: &mut SyncReport) -> Result<VersionVector, String> {
        loop {
            let holds = self.holds()?;
            let body = json!({ "holds": vector_to_json(&holds), "max_writes": PULL_WRITES });
            let page = Self::call(client, "/db/sync/pull", &body, report)?;
            let node_holds = vector_from_json(&page["holds"]).map_err(|error| format!("the node's holds: {error}"))?;
            if node_holds.get(&self.state.id) > holds.get(&self.state.id) || writes_of_self(&page, &self.state.id) {
                // Its own writes would be taken for ones the cluster has, and dropped.
                return Err(format!(
                    "the cluster holds writes of device {} that this device never made: another device uses this id (or this one lost \
                     its data); give each device its own id",
                    self.state.id
                ));
            }
            if page["snapshot"] == json!(true) {
                if report.snapshot {
                    return Err("the node asked for a snapshot twice in one sync".to_string());
                }
                self.install_snapshot(client, report)?;
                continue;
            }
            let writes = page["writes"].as_array().ok_or("the node's pull answer has no writes")?;
            let writes =
                writes.iter().map(write_from_json).collect::<Result<Vec<_>, _>>().map_err(|error| format!("the node sent a write that is not one: {error}"))?;
            if !writes.is_empty() {
                match self.engine.apply_region_writes(1, &writes, &|| true).map_err(|error| format!("cannot apply pulled writes: {error}"))? {
                    Executed::Committed(_) => report.pulled += writes.len() as u64,
                    Executed::StoppedLeading => return Err("the device's database refused the writes".to_string()),
                }
                self.compact()?;
            }
            if page["more"] != json!(true) || writes.is_empty() {
                return Ok(node_holds);
            }
        }
    }

    /// Pushes this device's writes the node lacks, in pages, each held by the node's
    /// region before the next is sent.
    fn push(&mut self, client: &mut HttpClient, report: &mut SyncReport) -> Result<(), String> {
        let own = self.holds()?.get(&self.state.id);
        let mut after = self.state.cluster_holds.get(&self.state.id);
        while after < own {
            let writes = self.engine.read_region_writes(&self.state.id, after, own.min(after + PUSH_WRITES)).map_err(|error| error.to_string())?;
            let mut page = Vec::new();
            let mut bytes = 0;
            for write in &writes {
                let json = write_to_json(write).map_err(|error| error.to_string())?;
                bytes += json.to_string().len();
                page.push(json);
                if bytes > PUSH_BYTES {
                    break;
                }
            }
            if page.is_empty() {
                return Err(format!("this device's write {} is missing from its own log", Dot::new(self.state.id.clone(), after + 1)));
            }
            let count = page.len() as u64;
            Self::call(client, "/db/sync/push", &json!({ "device": self.state.id, "writes": page }), report)?;
            after += count;
            report.pushed += count;
            self.state.cluster_holds.advance(&Dot::new(self.state.id.clone(), after));
            self.save()?;
        }
        Ok(())
    }
}
