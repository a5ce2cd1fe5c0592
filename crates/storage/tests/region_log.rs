//! Multi-leader's per-origin log: writes taken only in stream order, recorded atomically
//! with their effects, read back exactly, and still there after a reopen.

use rusqlite::Connection;
use tern_core::multi_leader::{Dot, VersionVector};
use tern_storage::region_log::{self, LoggedWrite};

fn logged(region: &str, seq: u64, seen: &[(&str, u64)], payload: &str) -> LoggedWrite {
    LoggedWrite { dot: Dot::new(region, seq), seen: seen.iter().map(|(region, seq)| (*region, *seq)).collect(), payload: payload.as_bytes().to_vec() }
}

fn database(name: &str) -> (std::path::PathBuf, Connection) {
    let path = std::env::temp_dir().join(format!("tern-region-log-{}-{name}.db", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let connection = Connection::open(&path).unwrap();
    region_log::create(&connection).unwrap();
    (path, connection)
}

#[test]
fn writes_are_taken_in_stream_order_and_read_back_exactly() {
    let (path, connection) = database("order");
    let writes = [logged("us", 1, &[], "a"), logged("eu", 1, &[("us", 1)], "b"), logged("us", 2, &[("eu", 1), ("us", 1)], "c")];
    for write in &writes {
        region_log::record(&connection, write).unwrap();
    }
    assert_eq!(region_log::holds(&connection).unwrap(), [("eu", 1), ("us", 2)].into_iter().collect::<VersionVector>());
    assert_eq!(region_log::read(&connection, "us", 0, 2).unwrap(), vec![writes[0].clone(), writes[2].clone()]);
    assert_eq!(region_log::read(&connection, "us", 1, 5).unwrap(), vec![writes[2].clone()], "fewer when the log holds fewer");
    assert_eq!(region_log::read(&connection, "ap", 0, 5).unwrap(), Vec::new());

    let gap = region_log::record(&connection, &logged("us", 4, &[], "d")).unwrap_err();
    assert!(gap.to_string().contains("does not continue us's stream, which ends at 2"), "{gap}");
    let again = region_log::record(&connection, &logged("eu", 1, &[], "b again")).unwrap_err();
    assert!(again.to_string().contains("ends at 1"), "{again}");
    assert_eq!(region_log::read(&connection, "eu", 0, 9).unwrap(), vec![writes[1].clone()], "refusals wrote nothing");
    drop(connection);

    let reopened = Connection::open(&path).unwrap();
    assert_eq!(region_log::holds(&reopened).unwrap(), [("eu", 1), ("us", 2)].into_iter().collect::<VersionVector>(), "durable across a reopen");
    assert_eq!(region_log::read(&reopened, "us", 0, 2).unwrap(), vec![writes[0].clone(), writes[2].clone()]);
    let _ = std::fs::remove_file(path);
}

#[test]
fn a_write_is_recorded_with_its_effects_or_not_at_all() {
    let (path, mut connection) = database("atomic");
    connection.execute_batch("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT)").unwrap();
    {
        let transaction = connection.transaction().unwrap();
        transaction.execute("INSERT INTO orders VALUES (1, 'pen')", []).unwrap();
        region_log::record(&transaction, &logged("eu", 1, &[], "insert pen")).unwrap();
        // Dropped without commit: a crash before the commit.
    }
    assert_eq!(region_log::holds(&connection).unwrap(), VersionVector::new());
    let orders: i64 = connection.query_row("SELECT count(*) FROM orders", [], |row| row.get(0)).unwrap();
    assert_eq!(orders, 0);
    let transaction = connection.transaction().unwrap();
    transaction.execute("INSERT INTO orders VALUES (1, 'pen')", []).unwrap();
    region_log::record(&transaction, &logged("eu", 1, &[], "insert pen")).unwrap();
    transaction.commit().unwrap();
    assert_eq!(region_log::holds(&connection).unwrap(), [("eu", 1)].into_iter().collect::<VersionVector>());
    let _ = std::fs::remove_file(path);
}

#[test]
fn a_damaged_record_is_a_clear_error() {
    let (path, connection) = database("damaged");
    region_log::record(&connection, &logged("us", 1, &[("eu", 3)], "a")).unwrap();
    connection.execute("UPDATE _tern_region_log SET seen = x'ff'", []).unwrap();
    let error = region_log::read(&connection, "us", 0, 1).unwrap_err();
    assert!(error.to_string().contains("the region log's record of us#1 is damaged"), "{error}");
    let _ = std::fs::remove_file(path);
}
