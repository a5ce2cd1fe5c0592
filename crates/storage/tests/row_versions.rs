//! Multi-leader's row versions in SQLite: the user table shows the policy's visible
//! version, two regions applying the same writes in different orders end byte-for-byte
//! alike, and losing versions stay listed as conflicts.

use rusqlite::Connection;
use tern_core::multi_leader::{Dot, Policy, RowWrite, Stamp, VersionVector};
use tern_core::Timestamp;
use tern_storage::row_versions::{self, TableShape};
use tern_storage::SqlValue;

fn region_database() -> Connection {
    let connection = Connection::open_in_memory().unwrap();
    connection.execute_batch("CREATE TABLE products (sku TEXT, shop INTEGER, price INTEGER, colour TEXT, PRIMARY KEY (shop, sku))").unwrap();
    row_versions::create(&connection).unwrap();
    connection
}

fn text(value: &str) -> SqlValue {
    SqlValue::Text(value.to_string())
}

/// (sku, shop): the key columns in column order.
fn key() -> Vec<SqlValue> {
    vec![text("pen"), SqlValue::Integer(1)]
}

fn write(region: &str, seq: u64, time: u64, seen: &[(&str, u64)], values: Option<Vec<Option<SqlValue>>>) -> RowWrite<SqlValue> {
    RowWrite {
        dot: Dot::new(region, seq),
        stamp: Stamp::new(Timestamp::new(time, 0), region),
        seen: seen.iter().map(|(r, s)| (*r, *s)).collect::<VersionVector>(),
        values,
    }
}

fn full(price: i64, colour: &str) -> Option<Vec<Option<SqlValue>>> {
    Some(vec![Some(text("pen")), Some(SqlValue::Integer(1)), Some(SqlValue::Integer(price)), Some(text(colour))])
}

fn table(connection: &Connection) -> Vec<(String, i64, Option<i64>, Option<String>)> {
    let mut statement = connection.prepare("SELECT sku, shop, price, colour FROM products ORDER BY shop, sku").unwrap();
    statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))).unwrap().map(Result::unwrap).collect()
}

fn apply_all(connection: &Connection, writes: &[&RowWrite<SqlValue>]) {
    let shape = row_versions::shape(connection, "products").unwrap();
    for write in writes {
        row_versions::apply(connection, &shape, &key(), write).unwrap();
    }
}

#[test]
fn the_shape_names_columns_and_the_key_in_column_order() {
    let connection = region_database();
    let shape = row_versions::shape(&connection, "products").unwrap();
    assert_eq!(
        shape,
        TableShape {
            name: "products".into(),
            columns: vec!["sku".into(), "shop".into(), "price".into(), "colour".into()],
            key: vec![0, 1],
            policy: Policy::LastWriterWins
        }
    );
    connection.execute_batch("CREATE TABLE notes (body TEXT)").unwrap();
    assert!(row_versions::shape(&connection, "notes").unwrap_err().to_string().contains("has no PRIMARY KEY"));
    assert!(row_versions::shape(&connection, "missing").unwrap_err().to_string().contains("no such table: missing"));
}

#[test]
fn regions_applying_concurrent_updates_in_either_order_show_the_same_row_and_the_same_conflict() {
    let insert = write("us", 1, 100, &[], full(2, "blue"));
    let eu = write("eu", 1, 200, &[("us", 1)], full(3, "blue"));
    let ap = write("ap", 1, 150, &[("us", 1)], full(2, "red"));
    let (one, other) = (region_database(), region_database());
    apply_all(&one, &[&insert, &eu, &ap]);
    apply_all(&other, &[&insert, &ap, &eu]);
    assert_eq!(table(&one), vec![("pen".to_string(), 1, Some(3), Some("blue".to_string()))]);
    assert_eq!(table(&one), table(&other));
    let conflicts = row_versions::conflicts(&one, "products").unwrap();
    assert_eq!(conflicts, row_versions::conflicts(&other, "products").unwrap());
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].0, key());
    assert_eq!(conflicts[0].1[0].loser.0, Dot::new("ap", 1), "ap's red pen is on record");
}

#[test]
fn column_merge_keeps_both_edits_in_the_table() {
    let connection = region_database();
    row_versions::set_policy(&connection, "products", Policy::ColumnMerge).unwrap();
    let insert = write("us", 1, 100, &[], full(2, "blue"));
    let price = write("eu", 1, 200, &[("us", 1)], Some(vec![None, None, Some(SqlValue::Integer(3)), None]));
    let colour = write("ap", 1, 150, &[("us", 1)], Some(vec![None, None, None, Some(text("red"))]));
    apply_all(&connection, &[&insert, &colour, &price]);
    assert_eq!(table(&connection), vec![("pen".to_string(), 1, Some(3), Some("red".to_string()))]);
    assert!(row_versions::conflicts(&connection, "products").unwrap().is_empty());
}

#[test]
fn a_winning_delete_removes_the_row_and_keeps_the_update_on_record() {
    let connection = region_database();
    let insert = write("us", 1, 100, &[], full(2, "blue"));
    let update = write("ap", 1, 150, &[("us", 1)], full(5, "blue"));
    let delete = write("eu", 1, 200, &[("us", 1)], None);
    apply_all(&connection, &[&insert, &update, &delete]);
    assert_eq!(table(&connection), Vec::new());
    let conflicts = row_versions::conflicts(&connection, "products").unwrap();
    assert_eq!(conflicts[0].1[0].loser.0, Dot::new("ap", 1));
}

#[test]
fn a_write_that_does_not_fit_changes_nothing() {
    let connection = region_database();
    apply_all(&connection, &[&write("us", 1, 100, &[], full(2, "blue"))]);
    let before = table(&connection);
    let shape = row_versions::shape(&connection, "products").unwrap();
    let narrow = write("eu", 1, 200, &[("us", 1)], Some(vec![Some(text("pen"))]));
    let error = row_versions::apply(&connection, &shape, &key(), &narrow).unwrap_err();
    assert!(error.to_string().contains("write eu#1 has 1 columns where the table has 4"), "{error}");
    assert!(row_versions::apply(&connection, &shape, &[text("pen")], &narrow).unwrap_err().to_string().contains("whose key has 2"));
    assert_eq!(table(&connection), before);
    assert!(row_versions::conflicts(&connection, "products").unwrap().is_empty());
}

#[test]
fn a_remote_transaction_applies_with_user_triggers_off_and_leaves_them_on() {
    let mut connection = region_database();
    connection
        .execute_batch(
            "CREATE TABLE audit (note TEXT);
             CREATE TRIGGER products_audit AFTER INSERT ON products BEGIN INSERT INTO audit VALUES ('inserted ' || NEW.sku); END;",
        )
        .unwrap();
    let audited = |connection: &Connection| -> i64 { connection.query_row("SELECT count(*) FROM audit", [], |row| row.get(0)).unwrap() };
    let transaction = connection.transaction().unwrap();
    // The origin's trigger wrote its audit row there; it arrives as a row write of its own.
    let remote = vec![
        ("products".to_string(), key(), write("us", 1, 100, &[], full(2, "blue"))),
        (
            "products".to_string(),
            vec![text("ink"), SqlValue::Integer(1)],
            write("us", 1, 100, &[], Some(vec![Some(text("ink")), Some(SqlValue::Integer(1)), Some(SqlValue::Integer(1)), Some(text("black"))])),
        ),
    ];
    row_versions::apply_transaction(&transaction, &remote).unwrap();
    assert_eq!(audited(&transaction), 0, "the trigger did not run again here");
    transaction.commit().unwrap();
    assert_eq!(table(&connection).len(), 2);
    connection.execute("INSERT INTO products VALUES ('cap', 2, 1, 'red')", []).unwrap();
    assert_eq!(audited(&connection), 1, "local writes fire triggers again");
    let missing = vec![("missing".to_string(), key(), write("eu", 1, 100, &[], full(1, "x")))];
    assert!(row_versions::apply_transaction(&connection, &missing).is_err());
    connection.execute("INSERT INTO products VALUES ('mug', 2, 1, 'red')", []).unwrap();
    assert_eq!(audited(&connection), 2, "triggers are back on after a failed apply too");
}

/// A region runs `sql` as one local transaction: the changeset becomes row writes, which
/// are recorded in its own versions, and returned for shipping.
fn local_transaction(connection: &mut Connection, region: &str, seq: u64, time: u64, seen: &[(&str, u64)], sql: &str) -> Vec<row_versions::RemoteRowWrite> {
    let transaction = connection.transaction().unwrap();
    let writes = {
        let session = tern_storage::capture::row::Session::start(&transaction).unwrap();
        transaction.execute_batch(sql).unwrap();
        let changeset = session.changeset().unwrap();
        let seen: VersionVector = seen.iter().map(|(r, s)| (*r, *s)).collect();
        row_versions::local_writes(&transaction, &changeset, &Dot::new(region, seq), &Stamp::new(Timestamp::new(time, 0), region), &seen).unwrap()
    };
    row_versions::apply_transaction(&transaction, &writes).unwrap();
    transaction.commit().unwrap();
    writes
}

fn receive(connection: &mut Connection, writes: &[row_versions::RemoteRowWrite]) {
    let transaction = connection.transaction().unwrap();
    row_versions::apply_transaction(&transaction, writes).unwrap();
    transaction.commit().unwrap();
}

#[test]
fn local_transactions_become_row_writes_that_make_another_region_alike() {
    let (mut us, mut eu) = (region_database(), region_database());
    let first =
        local_transaction(&mut us, "us", 1, 100, &[], "INSERT INTO products VALUES ('pen', 1, 2, 'blue'), ('ink', 1, 1, 'black'), ('cap', 2, 5, 'red')");
    assert_eq!(first.len(), 3);
    receive(&mut eu, &first);
    assert_eq!(table(&eu), table(&us));
    let second =
        local_transaction(&mut us, "us", 2, 110, &[("us", 1)], "UPDATE products SET price = 3 WHERE sku = 'pen'; DELETE FROM products WHERE sku = 'cap'");
    assert_eq!(second.iter().filter(|(_, _, write)| write.values.is_none()).count(), 1, "the delete");
    receive(&mut eu, &second);
    assert_eq!(table(&eu), table(&us));
    assert_eq!(table(&eu), vec![("ink".to_string(), 1, Some(1), Some("black".to_string())), ("pen".to_string(), 1, Some(3), Some("blue".to_string()))]);

    // Both regions edit the pen at once, each having seen us#1 and us#2.
    let from_us = local_transaction(&mut us, "us", 3, 200, &[("us", 2)], "UPDATE products SET price = 4 WHERE sku = 'pen'");
    let from_eu = local_transaction(&mut eu, "eu", 1, 210, &[("us", 2)], "UPDATE products SET colour = 'green' WHERE sku = 'pen'");
    receive(&mut us, &from_eu);
    receive(&mut eu, &from_us);
    assert_eq!(table(&us), table(&eu), "the regions converge");
    assert_eq!(table(&us)[1], ("pen".to_string(), 1, Some(3), Some("green".to_string())), "lww: eu's later whole row wins");
    let conflicts = row_versions::conflicts(&us, "products").unwrap();
    assert_eq!(conflicts, row_versions::conflicts(&eu, "products").unwrap());
    assert_eq!(conflicts[0].1[0].loser.2, Some(vec![text("pen"), SqlValue::Integer(1), SqlValue::Integer(4), text("blue")]), "us's price change is on record");
}

#[test]
fn under_column_merge_concurrent_local_edits_of_different_columns_both_survive() {
    let (mut us, mut eu) = (region_database(), region_database());
    for connection in [&us, &eu] {
        row_versions::set_policy(connection, "products", Policy::ColumnMerge).unwrap();
    }
    let first = local_transaction(&mut us, "us", 1, 100, &[], "INSERT INTO products VALUES ('pen', 1, 2, 'blue')");
    receive(&mut eu, &first);
    let from_us = local_transaction(&mut us, "us", 2, 200, &[("us", 1)], "UPDATE products SET price = 4 WHERE sku = 'pen'");
    let from_eu = local_transaction(&mut eu, "eu", 1, 210, &[("us", 1)], "UPDATE products SET colour = 'green' WHERE sku = 'pen'");
    receive(&mut us, &from_eu);
    receive(&mut eu, &from_us);
    assert_eq!(table(&us), vec![("pen".to_string(), 1, Some(4), Some("green".to_string()))]);
    assert_eq!(table(&eu), table(&us));
    assert!(row_versions::conflicts(&us, "products").unwrap().is_empty());
}
