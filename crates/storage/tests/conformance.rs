//! The storage engine against the contract the replica core relies on, for every log
//! format: the suite of `tern_core::storage_contract`, which the simulator's disk model
//! passes too (crates/sim/tests/conformance.rs). A case one of them fails is a rule on
//! which the simulator does not answer as the engine does.

use std::path::PathBuf;
use tern_core::storage_contract::{assert_conforms, Harness, ReplicaStorage};
use tern_core::{Entry, LogFormat, Position};
use tern_storage::{Engine, RollbackStore, Statement, StorageError, WriteRequest};

/// One node's engine, driven as the server's storage thread drives it.
struct EngineStorage {
    engine: Engine,
    /// Snapshots this node made, for naming the next one.
    snapshots_made: u64,
}

impl ReplicaStorage for EngineStorage {
    type Write = WriteRequest;
    /// A snapshot file, consumed by installing it.
    type Snapshot = PathBuf;
    type Error = StorageError;

    fn last(&self) -> Position {
        self.engine.last()
    }

    fn first_index(&self) -> u64 {
        self.engine.first_index()
    }

    fn epoch_starts(&self) -> Result<Vec<(u64, u64)>, StorageError> {
        self.engine.epoch_starts()
    }

    fn append_own(&mut self, epoch: u64, index: u64, write: WriteRequest) -> Result<Option<Entry>, StorageError> {
        // The engine logs a leader's write at the index after its durable end by itself:
        // it has no way to be asked for another. The server executes writes only there,
        // so an index elsewhere is refused here, before the engine sees the write.
        if index != self.engine.last().index + 1 {
            return Ok(None);
        }
        Ok(self.engine.execute_batch(epoch, &[write])?.entry)
    }

    fn persist(&mut self, entries: &[Entry]) -> Result<Position, StorageError> {
        self.engine.apply(entries)
    }

    fn read_log(&self, from_index: u64, max_entries: usize) -> Result<Option<Vec<Entry>>, StorageError> {
        self.engine.read_log(from_index, max_entries, usize::MAX)
    }

    fn compact(&mut self, retain: u64, committed: u64) -> Result<(), StorageError> {
        self.engine.compact(retain, committed)
    }

    fn snapshot(&mut self) -> Result<PathBuf, StorageError> {
        self.snapshots_made += 1;
        let directory = self.engine.directory();
        let name = format!("{}-snapshot-{}.db", directory.file_name().expect("a node directory").to_string_lossy(), self.snapshots_made);
        let target = directory.with_file_name(name);
        self.engine.write_snapshot(&target)?;
        Ok(target)
    }

    fn install_snapshot(&mut self, snapshot: PathBuf) -> Result<Position, StorageError> {
        self.engine.install_snapshot(&snapshot, false)
    }

    fn roll_back_and_install(&mut self, common: u64, snapshot: PathBuf) -> Result<Position, StorageError> {
        Ok(self.engine.roll_back_and_install(common, &snapshot)?.1)
    }

    fn rolled_back(&self) -> Result<Vec<Position>, StorageError> {
        let store = RollbackStore::open(self.engine.directory())?;
        Ok(store.list()?.iter().map(|entry| Position::new(entry.epoch, entry.index)).collect())
    }
}

/// Nodes of one log format, each in a directory of its own under `root`.
struct Engines {
    format: LogFormat,
    root: PathBuf,
    created: u64,
}

impl Harness for Engines {
    type Storage = EngineStorage;

    fn create(&mut self) -> EngineStorage {
        self.created += 1;
        let directory = self.root.join(format!("node-{}", self.created));
        EngineStorage { engine: Engine::open(&directory, self.format).expect("opening a new engine"), snapshots_made: 0 }
    }

    /// Closing the engine and opening its directory again: everything in memory is gone,
    /// and what `Engine::open` recovers is what was durable.
    fn reopen(&mut self, storage: EngineStorage) -> EngineStorage {
        let directory = storage.engine.directory().to_path_buf();
        drop(storage.engine);
        EngineStorage { engine: Engine::open(&directory, self.format).expect("reopening an engine"), snapshots_made: storage.snapshots_made }
    }

    /// Its own row in a table the first write creates.
    fn write(&self, number: u64) -> WriteRequest {
        let statements =
            vec![Statement::new("CREATE TABLE IF NOT EXISTS writes (n INTEGER PRIMARY KEY)"), Statement::new(format!("INSERT INTO writes VALUES ({number})"))];
        WriteRequest { statements, transaction: true }
    }

    fn writes_reflected(&self, storage: &EngineStorage) -> Vec<u64> {
        let database = rusqlite::Connection::open_with_flags(storage.engine.database_path(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("opening the database to read");
        let has_table: i64 = database.query_row("SELECT count(*) FROM sqlite_schema WHERE name = 'writes'", [], |row| row.get(0)).expect("reading the schema");
        if has_table == 0 {
            return Vec::new();
        }
        let mut statement = database.prepare("SELECT n FROM writes ORDER BY n").expect("preparing a read");
        let numbers = statement.query_map([], |row| row.get::<_, i64>(0)).expect("reading the writes");
        numbers.map(|number| number.expect("reading a write") as u64).collect()
    }
}

fn check(format: LogFormat, known_differences: &[(&str, &str)]) {
    let root = std::env::temp_dir().join(format!("tern-conformance-{}-{}", std::process::id(), format.name()));
    let _ = std::fs::remove_dir_all(&root);
    assert_conforms(&mut Engines { format, root: root.clone(), created: 0 }, known_differences);
    let _ = std::fs::remove_dir_all(root);
}

/// A logical snapshot is a copy of the leader's database, log included.
const LOGICAL_SNAPSHOT_KEEPS_THE_LEADERS_LOG: (&str, &str) = (
    "after_a_snapshot_the_log_starts_after_it",
    "the follower keeps the leader's retained log (first index 1 here, not 6) and can read entries up to the snapshot's \
     position; the simulator's model and the physical format start the log after it",
);

#[test]
fn the_statement_format_conforms() {
    check(LogFormat::Statement, &[LOGICAL_SNAPSHOT_KEEPS_THE_LEADERS_LOG]);
}

#[test]
fn the_row_format_conforms() {
    check(LogFormat::Row, &[LOGICAL_SNAPSHOT_KEEPS_THE_LEADERS_LOG]);
}

#[test]
fn the_physical_format_conforms() {
    check(
        LogFormat::Physical,
        &[
            (
                "a_persist_that_would_leave_a_gap_is_refused_and_changes_nothing",
                "apply commits a batch one entry at a time (one commit per leader commit), so a batch with a hole inside \
                 (2 then 4, at 1) applies 2 before refusing 4 (as Engine::apply documents); the storage thread then reports \
                 the durable end before the failure, so the core's view stays the disk's",
            ),
            (
                "epoch_starts_after_a_snapshot_are_those_of_its_log",
                "installing a snapshot resets the log after its position, so epoch_starts is empty ([] instead of \
                 [(1, 1), (2, 4)]); the core then takes the snapshot's epoch to start at its last index",
            ),
        ],
    );
}
