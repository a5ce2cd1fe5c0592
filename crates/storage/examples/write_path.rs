//! Times the storage work on a single-row write's path: the leader executing and
//! committing one `INSERT OR REPLACE` into a 100,000-row table (as `rqlite_load` does),
//! and a follower applying the entry it makes. `cargo run --release -p tern-storage
//! --example write_path [WRITES] [DIR]`
use std::time::{Duration, Instant};
use tern_core::LogFormat;
use tern_storage::{Engine, Executed, Params, SqlValue, Statement, WriteRequest};

fn main() {
    let mut args = std::env::args().skip(1);
    let writes: usize = args.next().and_then(|text| text.parse().ok()).unwrap_or(5000);
    let root = std::path::PathBuf::from(args.next().unwrap_or_else(|| std::env::temp_dir().join("tern-write-path").display().to_string()));
    let _ = std::fs::remove_dir_all(&root);
    let mut leader = Engine::open(&root.join("leader"), LogFormat::Row).unwrap();
    let mut follower = Engine::open(&root.join("follower"), LogFormat::Row).unwrap();
    let setup = [
        "CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT)",
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x<100000) INSERT INTO kv SELECT x, substr(hex(zeroblob(128)),1,256) FROM c",
    ];
    for sql in setup {
        let request = WriteRequest { statements: vec![Statement::new(sql)], transaction: false };
        let entry = committed(leader.execute_batch_while(1, &[request], &|| true).unwrap());
        leader.sync_commits().unwrap();
        follower.apply(&[entry]).unwrap();
    }
    let (mut execute, mut sync, mut apply) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut seed: u64 = 1;
    for _ in 0..writes {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let key = (seed >> 33) % 100_000 + 1;
        let request = WriteRequest {
            statements: vec![Statement {
                sql: "INSERT OR REPLACE INTO kv(k, v) VALUES(?, ?)".into(),
                params: Params::Positional(vec![SqlValue::Integer(key as i64), SqlValue::Text(format!("{seed:0>256}"))]),
            }],
            transaction: false,
        };
        let started = Instant::now();
        let entry = committed(leader.execute_batch_while(1, &[request], &|| true).unwrap());
        execute += started.elapsed();
        let started = Instant::now();
        leader.sync_commits().unwrap();
        sync += started.elapsed();
        let started = Instant::now();
        follower.apply(&[entry]).unwrap();
        apply += started.elapsed();
    }
    let per = |total: Duration| total.as_secs_f64() * 1e6 / writes as f64;
    println!(
        "writes={writes} leader execute+commit {:.1} us, leader sync {:.1} us, follower apply (with its sync) {:.1} us",
        per(execute),
        per(sync),
        per(apply)
    );
    let _ = std::fs::remove_dir_all(&root);
}

fn committed(executed: Executed) -> tern_core::Entry {
    match executed {
        Executed::Committed(batch) => batch.entry.expect("the write changed a row"),
        Executed::StoppedLeading => unreachable!("always leading"),
    }
}
