//! The binlog decoder against bytes a real MariaDB wrote: a private server writes a binlog,
//! the test reads the file and decodes it with `decode_binlog` (the same decoder the capture
//! runs on the replication stream), and checks every column type, before and after images,
//! a multi-statement transaction and rows on both sides of `ALTER TABLE`.

mod mysql;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use tributary_cdc::binlog::decode::{BinlogEvent, DecodedJson, RowsKind};
use tributary_cdc::binlog::decode_binlog;

use mysql::{PrivateMariaDb, binlog_bytes};

/// Writes `script` on a fresh private server and decodes its first binlog file.
fn binlog_of(test: &str, script: &str) -> Result<Option<Vec<DecodedJson>>> {
    let Some(server) = PrivateMariaDb::start_or_skip(test, &[]) else {
        return Ok(None);
    };
    server.sql("test", script)?;
    server.sql("", "FLUSH BINARY LOGS")?;
    let bytes = binlog_bytes(&server.data().join("binlog.000001"))?;
    if let Ok(dir) = std::env::var("TRIBUTARY_WRITE_BINLOG_SEEDS") {
        std::fs::write(std::path::Path::new(&dir).join(test), &bytes)?;
    }
    let (events, error) = decode_binlog(&bytes);
    if let Some(error) = error {
        anyhow::bail!(
            "decoding the server's binlog failed after {} events: {error}",
            events.len()
        );
    }
    Ok(Some(events))
}

/// (before, after) images of each row of an event.
type Images = Vec<(Option<Value>, Option<Value>)>;

/// The rows events of `table`: (kind, [(before, after)]).
fn rows_of(events: &[DecodedJson], table: &str) -> Vec<(RowsKind, Images)> {
    events
        .iter()
        .filter_map(|e| match &e.decoded.event {
            BinlogEvent::Rows(change) if change.table.table == table => {
                Some((change.kind, e.rows.clone()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn every_column_type_decodes_from_the_servers_own_bytes() -> Result<()> {
    let test = "every_column_type_decodes_from_the_servers_own_bytes";
    let Some(events) = binlog_of(
        test,
        r#"
        CREATE TABLE types (
          id BIGINT UNSIGNED PRIMARY KEY,
          ti TINYINT, si SMALLINT UNSIGNED, mi MEDIUMINT, mu MEDIUMINT UNSIGNED, m1 MEDIUMINT, i INT, bi BIGINT,
          d DECIMAL(12,3), f FLOAT, dbl DOUBLE,
          vc VARCHAR(50), ch CHAR(5), tx TEXT, bl BLOB, vb VARBINARY(8),
          js JSON,
          dt DATETIME(3), dt0 DATETIME, ts TIMESTAMP(6) NULL, dte DATE, tm TIME(2), yr YEAR,
          en ENUM('small','large'), st SET('a','b','c'), bt BIT(10),
          l1 VARCHAR(10) CHARACTER SET latin1
        ) DEFAULT CHARSET=utf8mb4;
        SET time_zone = '+02:00';
        BEGIN;
        INSERT INTO types VALUES (1, -128, 65535, -8388608, 16777215, -1, -2147483648, -9223372036854775808,
          -123456789.125, 1.5, 2.25, 'héllo wörld', 'ab', 'long text', x'00ff10', x'cafe',
          '{"a": [1, 2], "b": null}', '2024-01-02 03:04:05.678', '2024-12-31 23:59:59',
          '2024-01-02 05:04:05.123456', '2024-02-29', '-838:59:59.00', 2024, 'large', 'a,c',
          b'1000000001', 'Æble');
        INSERT INTO types (id) VALUES (18446744073709551615);
        UPDATE types SET vc = 'changed', d = 0.001 WHERE id = 1;
        DELETE FROM types WHERE id = 18446744073709551615;
        COMMIT;
        "#,
    )?
    else {
        return Ok(());
    };
    let rows = rows_of(&events, "types");
    let kinds: Vec<RowsKind> = rows.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        kinds,
        [
            RowsKind::Insert,
            RowsKind::Insert,
            RowsKind::Update,
            RowsKind::Delete
        ]
    );
    let full = rows[0].1[0].1.clone().context("after image")?;
    let expected = json!({
        "id": 1, "ti": -128, "si": 65535, "mi": -8388608, "mu": 16777215, "m1": -1, "i": -2147483648,
        "bi": -9223372036854775808i64,
        "d": "-123456789.125", "f": 1.5, "dbl": 2.25,
        "vc": "héllo wörld", "ch": "ab", "tx": "long text", "bl": "\\x00ff10", "vb": "\\xcafe",
        // MariaDB's JSON is LONGTEXT: the binlog carries the text as written.
        "js": "{\"a\": [1, 2], \"b\": null}",
        // DATETIME has no zone: the wall-clock time as written.
        "dt": "2024-01-02 03:04:05.678", "dt0": "2024-12-31 23:59:59",
        // TIMESTAMP is stored in UTC: written at +02:00, published with +00.
        "ts": "2024-01-02 03:04:05.123456+00",
        "dte": "2024-02-29", "tm": "-838:59:59.00", "yr": 2024,
        "en": "large", "st": "a,c", "bt": 513, "l1": "Æble",
    });
    assert_eq!(full, expected);
    // The row of NULLs, and the largest unsigned key.
    let nulls = rows[1].1[0].1.clone().context("after image")?;
    assert_eq!(nulls["id"], json!(18446744073709551615u64));
    let object = nulls.as_object().context("object")?;
    assert!(
        object
            .iter()
            .filter(|(k, _)| *k != "id")
            .all(|(_, v)| v.is_null()),
        "{nulls}"
    );
    // Before and after images of the update.
    let (before, after) = rows[2].1[0].clone();
    let (before, after) = (before.context("before")?, after.context("after")?);
    assert_eq!(
        (before["vc"].clone(), after["vc"].clone()),
        (json!("héllo wörld"), json!("changed"))
    );
    assert_eq!(
        (before["d"].clone(), after["d"].clone()),
        (json!("-123456789.125"), json!("0.001"))
    );
    assert_eq!(before["ts"], after["ts"]);
    // The delete has a before image only.
    assert!(rows[3].1[0].0.is_some() && rows[3].1[0].1.is_none());

    // All four statements are one transaction: one GTID before them, one XID after.
    let positions: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(
            |(_, e)| matches!(&e.decoded.event, BinlogEvent::Rows(c) if c.table.table == "types"),
        )
        .map(|(i, _)| i)
        .collect();
    let (first, last) = (positions[0], positions[positions.len() - 1]);
    let gtid_before = events[..first]
        .iter()
        .rposition(|e| matches!(e.decoded.event, BinlogEvent::Gtid { .. }))
        .context("a GTID before the rows")?;
    ensure!(
        !events[gtid_before + 1..last].iter().any(|e| matches!(
            e.decoded.event,
            BinlogEvent::Gtid { .. } | BinlogEvent::Xid(_)
        )),
        "no transaction boundary between the statements"
    );
    ensure!(
        matches!(
            events.get(last + 1).map(|e| &e.decoded.event),
            Some(BinlogEvent::Xid(_))
        ),
        "the transaction commits right after its last rows event"
    );
    // The table map gave the primary key.
    let BinlogEvent::Rows(change) = &events[first].decoded.event else {
        unreachable!()
    };
    assert_eq!(change.table.primary_key, vec![0]);
    Ok(())
}

#[test]
fn rows_around_alter_table_are_read_with_their_own_columns() -> Result<()> {
    let test = "rows_around_alter_table_are_read_with_their_own_columns";
    let Some(events) = binlog_of(
        test,
        "CREATE TABLE evolving (id INT PRIMARY KEY, a VARCHAR(10));
         INSERT INTO evolving VALUES (1, 'one');
         ALTER TABLE evolving ADD COLUMN b INT DEFAULT 7 AFTER id;
         INSERT INTO evolving VALUES (2, 20, 'two');
         ALTER TABLE evolving DROP COLUMN a;
         UPDATE evolving SET b = 21 WHERE id = 2;
         ALTER TABLE evolving MODIFY b VARCHAR(5);
         DELETE FROM evolving WHERE id = 1;",
    )?
    else {
        return Ok(());
    };
    let rows = rows_of(&events, "evolving");
    let images: Vec<(Option<Value>, Option<Value>)> =
        rows.into_iter().flat_map(|(_, r)| r).collect();
    assert_eq!(
        images,
        vec![
            (None, Some(json!({"id": 1, "a": "one"}))),
            (None, Some(json!({"id": 2, "b": 20, "a": "two"}))),
            (
                Some(json!({"id": 2, "b": 20})),
                Some(json!({"id": 2, "b": 21}))
            ),
            (Some(json!({"id": 1, "b": "7"})), None),
        ]
    );
    Ok(())
}

#[test]
fn a_binlog_cut_anywhere_decodes_its_whole_events_and_reports_the_rest() -> Result<()> {
    let test = "a_binlog_cut_anywhere_decodes_its_whole_events_and_reports_the_rest";
    let Some(server) = PrivateMariaDb::start_or_skip(test, &[]) else {
        return Ok(());
    };
    server.sql(
        "test",
        "CREATE TABLE t (id INT PRIMARY KEY, v TEXT);
         INSERT INTO t VALUES (1, REPEAT('x', 300)), (2, 'y');
         UPDATE t SET v = 'z';",
    )?;
    server.sql("", "FLUSH BINARY LOGS")?;
    let bytes = binlog_bytes(&server.data().join("binlog.000001"))?;
    let (whole, error) = decode_binlog(&bytes);
    ensure!(error.is_none(), "{error:?}");
    // Every prefix and every one-byte corruption: errors, never panics, never more events.
    for cut in 0..bytes.len() {
        let (events, _) = decode_binlog(&bytes[..cut]);
        ensure!(events.len() <= whole.len());
    }
    for at in (0..bytes.len()).step_by(7) {
        let mut corrupt = bytes.clone();
        corrupt[at] ^= 0x5a;
        let _ = decode_binlog(&corrupt);
    }
    Ok(())
}
