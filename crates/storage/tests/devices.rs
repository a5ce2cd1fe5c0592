//! Devices in the engine (issue 15), under any interleaving: devices write offline and
//! sync with either of two regions (pull, then push what the region can apply), and the
//! regions exchange, in any order. After everyone has synced at the end, every replica
//! shows the same tables and holds every write every device made: none is dropped.

use proptest::prelude::*;
use tern_core::multi_leader::VersionVector;
use tern_core::LogFormat;
use tern_storage::region_log::LoggedWrite;
use tern_storage::sync::causal_order;
use tern_storage::{Engine, Executed, Reader, Statement, WriteRequest};

const REGIONS: [&str; 2] = ["us-east", "eu-west"];
const DEVICES: usize = 3;

#[derive(Clone, Debug)]
enum Step {
    /// Device `device` writes row `key` offline: sets it to `value`, or deletes it.
    Write { device: usize, key: u8, value: Option<u8> },
    /// Device `device` syncs with region `region`.
    Sync { device: usize, region: usize },
    /// Region `from` ships what it holds to region `to`.
    Exchange { from: usize, to: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..DEVICES, 0u8..4, proptest::option::of(0u8..100)).prop_map(|(device, key, value)| Step::Write { device, key, value }),
        3 => (0..DEVICES, 0..REGIONS.len()).prop_map(|(device, region)| Step::Sync { device, region }),
        1 => (0..REGIONS.len(), 0..REGIONS.len()).prop_map(|(from, to)| Step::Exchange { from, to }),
    ]
}

struct Replica {
    name: String,
    directory: std::path::PathBuf,
    engine: Engine,
}

impl Replica {
    fn holds(&self) -> VersionVector {
        self.engine.region_holds().unwrap()
    }

    /// Applies those of `writes` it can apply now, in causal order; returns how many.
    fn take(&mut self, writes: Vec<LoggedWrite>) -> usize {
        let ready = causal_order(&self.holds(), writes);
        if !ready.is_empty() {
            assert!(matches!(self.engine.apply_region_writes(1, &ready, &|| true).unwrap(), Executed::Committed(_)));
        }
        ready.len()
    }

    /// Every write it holds that `holds` lacks.
    fn lacking(&self, holds: &VersionVector) -> Vec<LoggedWrite> {
        let mut writes = Vec::new();
        for (origin, seq) in self.holds().iter() {
            writes.extend(self.engine.read_region_writes(origin, holds.get(origin), seq).unwrap());
        }
        writes
    }
}

fn run(steps: &[Step], case: u64) {
    let root = std::env::temp_dir().join(format!("tern-devices-prop-{}-{case}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let regions_list: Vec<String> = REGIONS.iter().map(|region| region.to_string()).collect();
    let mut regions: Vec<Replica> = REGIONS
        .iter()
        .map(|region| {
            let directory = root.join(region);
            let mut engine = Engine::open(&directory, LogFormat::Row).unwrap();
            engine.set_region(region, &regions_list).unwrap();
            Replica { name: region.to_string(), directory, engine }
        })
        .collect();
    let create = WriteRequest { statements: vec![Statement::new("CREATE TABLE t (k INTEGER PRIMARY KEY, v INTEGER)")], transaction: false };
    regions[0].engine.execute_batch(1, &[create]).unwrap();
    let mut devices: Vec<Replica> = (0..DEVICES)
        .map(|number| {
            let directory = root.join(format!("device-{number}"));
            let mut engine = Engine::open(&directory, LogFormat::Row).unwrap();
            engine.set_device(&format!("device-{number}")).unwrap();
            Replica { name: format!("device-{number}"), directory, engine }
        })
        .collect();
    let mut made = [0u64; DEVICES];
    let sync = |device: &mut Replica, region: &mut Replica| {
        // Pull, page by page, as the node hands them out.
        let reader = Reader::open(&region.directory).unwrap();
        loop {
            let page = reader.sync_pull(&device.holds(), 7, 1 << 20).unwrap();
            let pulled = page.writes.len();
            assert_eq!(device.take(page.writes), pulled, "a page is in an order the device can apply");
            if !page.more || pulled == 0 {
                break;
            }
        }
        // Push the device's own writes the region lacks; those waiting for writes the
        // region has not got yet (the device saw them in the other region) stay for later.
        let own: Vec<LoggedWrite> = device.lacking(&region.holds()).into_iter().filter(|write| write.dot.region == device.name).collect();
        region.take(own);
    };
    // Once the schema reaches every device, they start.
    let (first, rest) = regions.split_at_mut(1);
    rest[0].take(first[0].lacking(&rest[0].holds()));
    for device in &mut devices {
        sync(device, &mut regions[0]);
    }
    for step in steps {
        match step {
            Step::Write { device, key, value } => {
                let sql = match value {
                    Some(value) => format!("INSERT INTO t VALUES ({key}, {value}) ON CONFLICT (k) DO UPDATE SET v = excluded.v"),
                    None => format!("DELETE FROM t WHERE k = {key}"),
                };
                let batch = devices[*device].engine.execute_batch(1, &[WriteRequest { statements: vec![Statement::new(sql)], transaction: true }]).unwrap();
                assert!(batch.results[0][0].error.is_none(), "{:?}", batch.results);
                made[*device] += batch.region_writes.len() as u64;
            }
            Step::Sync { device, region } => sync(&mut devices[*device], &mut regions[*region]),
            Step::Exchange { from, to } if from != to => {
                let lacking = regions[*from].lacking(&regions[*to].holds());
                regions[*to].take(lacking);
            }
            Step::Exchange { .. } => {}
        }
    }
    // Everyone syncs until nothing moves.
    for _ in 0..3 {
        for (from, to) in [(0, 1), (1, 0)] {
            let lacking = regions[from].lacking(&regions[to].holds());
            regions[to].take(lacking);
        }
        for device in &mut devices {
            for region in &mut regions {
                sync(device, region);
            }
        }
    }
    let expected = regions[0].holds();
    for (number, made) in made.iter().enumerate() {
        assert_eq!(expected.get(&format!("device-{number}")), *made, "every write device-{number} made is held: {steps:?}");
    }
    let tables = regions[0].engine.table_checksums().unwrap();
    for replica in regions.iter().chain(&devices) {
        assert_eq!(replica.holds(), expected, "{}: {steps:?}", replica.directory.display());
        assert_eq!(replica.engine.table_checksums().unwrap(), tables, "{} shows other rows: {steps:?}", replica.directory.display());
    }
    drop(regions);
    drop(devices);
    let _ = std::fs::remove_dir_all(&root);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any interleaving of offline writes, syncs with either region and exchanges between
    /// regions converges, with every device write held everywhere.
    #[test]
    fn any_interleaving_of_device_syncs_converges_and_drops_no_write(steps in prop::collection::vec(step(), 1..40), case in any::<u64>()) {
        run(&steps, case);
    }
}

#[test]
fn a_device_behind_the_compacted_log_gets_a_snapshot_and_keeps_its_unsynced_writes() {
    let root = std::env::temp_dir().join(format!("tern-devices-snapshot-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let mut engine = Engine::open(&root.join("us"), LogFormat::Row).unwrap();
    engine.set_region("us-east", &["us-east".to_string()]).unwrap();
    let mut region = Replica { name: "us-east".into(), directory: root.join("us"), engine };
    let write = |engine: &mut Engine, sql: &str| {
        let batch = engine.execute_batch(1, &[WriteRequest { statements: vec![Statement::new(sql)], transaction: true }]).unwrap();
        assert!(batch.results[0][0].error.is_none(), "{sql}: {:?}", batch.results);
    };
    write(&mut region.engine, "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)");
    let mut engine = Engine::open(&root.join("phone"), LogFormat::Row).unwrap();
    engine.set_device("phone").unwrap();
    let mut phone = Replica { name: "phone".into(), directory: root.join("phone"), engine };
    let pulled = Reader::open(&region.directory).unwrap().sync_pull(&phone.holds(), 100, 1 << 20).unwrap();
    phone.take(pulled.writes);
    // Offline, the phone writes twice; meanwhile the region writes 20 times and compacts its log.
    write(&mut phone.engine, "INSERT INTO t VALUES (1000, 'phone a')");
    write(&mut phone.engine, "INSERT INTO t VALUES (1001, 'phone b')");
    for number in 0..20 {
        write(&mut region.engine, &format!("INSERT INTO t VALUES ({number}, 'region')"));
    }
    assert!(matches!(region.engine.compact_region_log(1, &[("us-east".to_string(), 15)], &|| true).unwrap(), Executed::Committed(_)));
    let reader = Reader::open(&region.directory).unwrap();
    let page = reader.sync_pull(&phone.holds(), 100, 1 << 20).unwrap();
    assert!(page.snapshot && page.writes.is_empty(), "us-east:2..15 are gone: only a snapshot brings the phone up to date");
    assert!(!reader.sync_pull(&region.holds(), 100, 1 << 20).unwrap().snapshot, "one that is up to date needs none");
    let copy = root.join("snapshot.db");
    tern_storage::write_logical_snapshot(&region.directory.join(tern_storage::DATABASE_FILE), &copy).unwrap();
    phone.engine.install_device_snapshot(&copy).unwrap();
    let mut expected = region.holds();
    expected.advance(&tern_core::multi_leader::Dot::new("phone", 2));
    assert_eq!(phone.holds(), expected, "the region's writes, and the phone's own two kept");
    // The phone goes on: a new write, then its three reach the region.
    write(&mut phone.engine, "UPDATE t SET v = 'phone c' WHERE k = 0");
    let own: Vec<LoggedWrite> = phone.lacking(&region.holds()).into_iter().filter(|write| write.dot.region == phone.name).collect();
    assert_eq!(region.take(own), 3);
    assert_eq!(phone.engine.table_checksums().unwrap(), region.engine.table_checksums().unwrap());
    drop((region, phone));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_pushed_write_that_would_not_apply_in_every_region_is_refused_with_the_reason() {
    let root = std::env::temp_dir().join(format!("tern-devices-checks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let mut region = Engine::open(&root, LogFormat::Row).unwrap();
    region.set_region("us-east", &["us-east".to_string()]).unwrap();
    let create = [
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)",
        "CREATE TABLE tags (name TEXT PRIMARY KEY, color TEXT)",
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, home TEXT)",
    ];
    region.execute_batch(1, &[WriteRequest { statements: create.iter().map(|sql| Statement::new(*sql)).collect(), transaction: true }]).unwrap();
    region.set_conflict_policy(1, "tags", tern_core::multi_leader::Policy::ColumnMerge, &|| true).unwrap();
    region.set_home_rule(1, "customers", "home", false, &|| true).unwrap();
    let reader = Reader::open(&root).unwrap();
    let write = |rows: serde_json::Value| {
        let json = serde_json::json!({"origin": "phone", "seq": 1, "seen": {}, "time": {"wall_us": 1, "logical": 0}, "rows": rows});
        tern_storage::sync::write_from_json(&json).unwrap()
    };
    let check = |rows: serde_json::Value| reader.check_device_writes("phone", &[write(rows)]).err().map(|error| error.to_string());
    assert_eq!(check(serde_json::json!([{"table": "notes", "key": [1], "values": [1, "fine"]}])), None);
    assert_eq!(check(serde_json::json!([{"table": "tags", "key": ["red"], "values": ["red", null], "unset": [1]}])), None, "column merge leaves columns");
    assert_eq!(check(serde_json::json!([{"table": "notes", "key": [1], "values": null}])), None, "a delete");
    for (rows, why) in [
        (serde_json::json!([{"table": "notes", "key": ["one"], "values": ["one", "x"]}]), "not an integer"),
        (serde_json::json!([{"table": "notes", "key": [1], "values": [1, null]}]), "NOT NULL column body"),
        (serde_json::json!([{"table": "notes", "key": [1], "values": [1, "x"], "unset": [1]}]), "only column-merge"),
        (serde_json::json!([{"table": "notes", "key": [1], "values": [2, "x"]}]), "other than its key"),
        (serde_json::json!([{"table": "notes", "key": [1], "values": [1]}]), "has 1 columns"),
        (serde_json::json!([{"table": "customers", "key": [1], "values": [1, "us-east"]}]), "home regions"),
        (serde_json::json!([{"table": "_tern_row_versions", "key": [1], "values": null}]), "tern's or SQLite's own"),
        (serde_json::json!([{"table": "nowhere", "key": [1], "values": null}]), "no such table"),
    ] {
        let refused = check(rows.clone()).unwrap_or_else(|| panic!("{rows} was taken"));
        assert!(refused.contains(why), "{rows}: {refused}");
    }
    assert!(reader.check_device_writes("tablet", &[write(serde_json::json!([]))]).is_err(), "only its own stream");
    drop((reader, region));
    let _ = std::fs::remove_dir_all(&root);
}
