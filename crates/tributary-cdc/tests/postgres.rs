//! The decoder and the replication transport against a real PostgreSQL with
//! `wal_level = logical` (a private server per test, see `support`).
//!
//! Exact bytes per message come from `pg_logical_slot_peek_binary_changes`, which runs the
//! same pgoutput plugin through SQL; the stream and `pg_recvlogical` must deliver the same
//! bytes at the same positions.

mod support;

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use tributary_cdc::pgoutput::{OldRow, PgOutputMessage, ReplicaIdentity, TupleValue};
use tributary_cdc::{
    Lsn, PgOutputDecoder, PublicationName, ReplicationConnection, ReplicationError,
    ReplicationMessage, ReplicationStream, RowChange, SlotName, SnapshotAction, StartReplication,
    XLogData,
};

use support::{PrivatePostgres, eventually};

/// `(lsn, xid, payload)` of every message `slot` would send now, without consuming them.
fn peek(
    pg: &PrivatePostgres,
    db: &str,
    slot: &str,
    publication: &str,
) -> Result<Vec<(Lsn, u32, Vec<u8>)>> {
    let out = pg.sql(
        db,
        &format!(
            "SELECT lsn, xid, encode(data, 'hex') FROM pg_logical_slot_peek_binary_changes('{slot}', NULL, NULL, \
             'proto_version', '1', 'publication_names', '{publication}', 'messages', 'true');"
        ),
    )?;
    out.lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let mut parts = line.split('|');
            let (Some(lsn), Some(xid), Some(hex), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                bail!("unexpected peek line {line:?}");
            };
            Ok((lsn.parse()?, xid.parse()?, from_hex(hex)?))
        })
        .collect()
}

fn from_hex(hex: &str) -> Result<Vec<u8>> {
    ensure!(hex.len().is_multiple_of(2), "odd hex length");
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            Ok(u8::from_str_radix(
                hex.get(i..i + 2).context("hex digit pair")?,
                16,
            )?)
        })
        .collect()
}

fn slot_column(pg: &PrivatePostgres, db: &str, slot: &str, column: &str) -> Result<String> {
    pg.sql(db, &format!("SELECT coalesce({column}::text, '') FROM pg_replication_slots WHERE slot_name = '{slot}';"))
}

fn tags(messages: &[PgOutputMessage]) -> String {
    messages.iter().map(|m| char::from(m.tag())).collect()
}

fn json_of(change: &RowChange) -> Value {
    let row = match change {
        RowChange::Insert { new } | RowChange::Update { new, .. } => new,
        RowChange::Delete { old } => old.row(),
    };
    Value::Object(row.to_json().expect("server values convert to JSON"))
}

#[tokio::test(flavor = "multi_thread")]
async fn decoder_reads_every_message_and_column_type_the_server_produces() -> Result<()> {
    let Some(pg) = PrivatePostgres::start_or_skip(
        "decoder_reads_every_message_and_column_type_the_server_produces",
        &[],
    ) else {
        return Ok(());
    };
    pg.create_database("decoding")?;
    let db = "decoding";
    pg.sql(
        db,
        "CREATE TYPE mood AS ENUM ('happy', 'sad');
         CREATE TABLE items (
             id int8 PRIMARY KEY, flag bool, small int2, num int4, r float4, d float8, amount numeric,
             name text, code varchar(10), doc json, docb jsonb, uid uuid, at timestamp, atz timestamptz,
             feeling mood, body text);
         -- Out of line and uncompressed, so an untouched body is an unchanged TOAST value.
         ALTER TABLE items ALTER COLUMN body SET STORAGE EXTERNAL;
         CREATE TABLE audit (id int PRIMARY KEY, note text);
         ALTER TABLE audit REPLICA IDENTITY FULL;
         CREATE PUBLICATION pub FOR TABLE items, audit;
         SELECT pg_replication_origin_create('upstream');",
    )?;
    pg.sql(
        db,
        "SELECT 1 FROM pg_create_logical_replication_slot('s', 'pgoutput');",
    )?;
    pg.sql(
        db,
        "BEGIN;
         INSERT INTO items VALUES
           (1, true, -2, 42, 1.5, -0.25, 12345678901234567890.000000001, 'hello', 'abc',
            '{\"a\": [1, 2]}', '{\"b\": {\"c\": null}}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
            '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05+00', 'happy', repeat('x', 10000)),
           (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
         COMMIT;
         BEGIN;
         UPDATE items SET num = 43 WHERE id = 1;
         UPDATE items SET id = 3 WHERE id = 2;
         COMMIT;
         BEGIN;
         INSERT INTO audit VALUES (1, 'one');
         UPDATE audit SET note = 'uno' WHERE id = 1;
         DELETE FROM items WHERE id = 3;
         DELETE FROM audit WHERE id = 1;
         COMMIT;
         TRUNCATE audit RESTART IDENTITY;
         BEGIN;
         SELECT pg_logical_emit_message(true, 'prefix', 'payload');
         INSERT INTO audit VALUES (2, 'two');
         COMMIT;
         SELECT pg_logical_emit_message(false, 'outside', 'now');
         SELECT pg_replication_origin_session_setup('upstream');
         BEGIN;
         SELECT pg_replication_origin_xact_setup('0/ABCDEF', now());
         INSERT INTO audit VALUES (3, 'three');
         COMMIT;",
    )?;

    let peeked = peek(&pg, db, "s", "pub")?;
    let mut decoder = PgOutputDecoder::new();
    let mut messages = Vec::new();
    for (_, _, payload) in &peeked {
        messages.push(
            decoder
                .decode(payload)
                .with_context(|| format!("decoding {payload:?}"))?,
        );
    }
    // TRUNCATE … RESTART IDENTITY invalidates the table's cached schema, so pgoutput sends its
    // Relation message again before the Truncate and before the next row of it.
    assert_eq!(tags(&messages), "BYRIICBUUCBRIUDDCBRTCBMRICMBOIC");

    // Transaction ids and commit positions agree between Begin, Commit and the peek.
    let PgOutputMessage::Begin(begin) = &messages[0] else {
        bail!("expected Begin")
    };
    assert_eq!(begin.xid.0, peeked[0].1);
    let PgOutputMessage::Commit(commit) = &messages[5] else {
        bail!("expected Commit")
    };
    assert_eq!(commit.commit_lsn, begin.final_lsn);
    assert!(commit.end_lsn > commit.commit_lsn);
    assert!(begin.commit_time.to_utc().is_some());

    let PgOutputMessage::Type(mood) = &messages[1] else {
        bail!("expected Type")
    };
    assert_eq!(
        (mood.namespace.as_str(), mood.name.as_str()),
        ("public", "mood")
    );
    let PgOutputMessage::Relation(items) = &messages[2] else {
        bail!("expected Relation")
    };
    assert_eq!(
        (items.namespace.as_str(), items.name.as_str()),
        ("public", "items")
    );
    assert_eq!(items.replica_identity, ReplicaIdentity::Default);
    assert_eq!(items.columns.len(), 16);
    assert!(items.columns[0].is_key && items.columns[1..].iter().all(|c| !c.is_key));
    assert_eq!(items.columns[14].type_oid, mood.oid);
    assert_eq!(
        items.columns[8].type_modifier, 14,
        "varchar(10) is stored as 10 + 4"
    );

    let changes: Vec<Option<RowChange>> = messages
        .iter()
        .map(|m| decoder.change(m))
        .collect::<Result<_, _>>()?;
    let first = changes[3].as_ref().context("first insert")?;
    assert_eq!(
        json_of(first),
        json!({
            "id": 1, "flag": true, "small": -2, "num": 42, "r": 1.5, "d": -0.25,
            "amount": "12345678901234567890.000000001", "name": "hello", "code": "abc",
            "doc": {"a": [1, 2]}, "docb": {"b": {"c": null}},
            "uid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "at": "2024-01-02 03:04:05.123456", "atz": "2024-01-02 03:04:05+00",
            "feeling": "happy", "body": "x".repeat(10000),
        })
    );
    let second = changes[4].as_ref().context("second insert")?;
    let nulls = json_of(second);
    assert_eq!(nulls.get("id"), Some(&json!(2)));
    assert!(
        nulls
            .as_object()
            .is_some_and(|o| o.len() == 16 && o.iter().filter(|(_, v)| v.is_null()).count() == 15)
    );

    // The untouched TOASTed body is not sent again.
    let Some(RowChange::Update { old: None, new }) = &changes[7] else {
        bail!("expected update without old row")
    };
    assert_eq!(new.get("body"), Some(&TupleValue::UnchangedToast));
    assert_eq!(new.unchanged_toast_columns().collect::<Vec<_>>(), ["body"]);
    assert_eq!(new.get("num"), Some(&TupleValue::Text("43".into())));

    // A key change sends the old key.
    let Some(RowChange::Update {
        old: Some(OldRow::Key(old)),
        new,
    }) = &changes[8]
    else {
        bail!("expected update with old key")
    };
    assert_eq!(Value::Object(old.key_to_json()?), json!({"id": 2}));
    assert_eq!(new.get("id"), Some(&TupleValue::Text("3".into())));

    // Replica identity FULL sends whole old rows; DEFAULT only the key.
    let Some(RowChange::Update {
        old: Some(OldRow::Full(old)),
        ..
    }) = &changes[13]
    else {
        bail!("expected update with full old row")
    };
    assert_eq!(
        Value::Object(old.to_json()?),
        json!({"id": 1, "note": "one"})
    );
    let Some(RowChange::Delete {
        old: OldRow::Key(old),
    }) = &changes[14]
    else {
        bail!("expected delete by key")
    };
    assert_eq!(
        (old.table(), Value::Object(old.key_to_json()?)),
        ("items", json!({"id": 3}))
    );
    let Some(RowChange::Delete {
        old: OldRow::Full(old),
    }) = &changes[15]
    else {
        bail!("expected full delete")
    };
    assert_eq!(
        Value::Object(old.to_json()?),
        json!({"id": 1, "note": "uno"})
    );

    let PgOutputMessage::Truncate(truncate) = &messages[19] else {
        bail!("expected Truncate")
    };
    assert!(truncate.restart_identity && !truncate.cascade);
    let truncated = decoder.truncated(truncate)?;
    assert_eq!(
        truncated
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["audit"]
    );

    let PgOutputMessage::Message(inside) = &messages[22] else {
        bail!("expected Message")
    };
    assert!(inside.transactional);
    assert_eq!(
        (inside.prefix.as_str(), inside.content.as_slice()),
        ("prefix", b"payload".as_slice())
    );
    assert_eq!(inside.lsn, peeked[22].0);
    let PgOutputMessage::Message(outside) = &messages[26] else {
        bail!("expected Message")
    };
    assert!(!outside.transactional);
    assert_eq!(
        (outside.prefix.as_str(), outside.content.as_slice()),
        ("outside", b"now".as_slice())
    );

    let PgOutputMessage::Origin(origin) = &messages[28] else {
        bail!("expected Origin")
    };
    assert_eq!(origin.name, "upstream");
    assert_eq!(origin.commit_lsn, "0/ABCDEF".parse()?);
    Ok(())
}

/// Receives XLogData until `count` arrived (keepalives are skipped).
async fn receive(stream: &mut ReplicationStream, count: usize) -> Result<Vec<XLogData>> {
    let mut received = Vec::new();
    while received.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(20), stream.recv())
            .await
            .context("timed out waiting for replication data")??
            .context("stream ended")?;
        if let ReplicationMessage::XLogData(data) = message {
            received.push(data);
        }
    }
    Ok(received)
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_delivers_what_sql_peek_and_pg_recvlogical_see_and_confirms_only_when_told()
-> Result<()> {
    let test = "stream_delivers_what_sql_peek_and_pg_recvlogical_see_and_confirms_only_when_told";
    let Some(pg) = PrivatePostgres::start_or_skip(test, &[]) else {
        return Ok(());
    };
    pg.create_database("streaming")?;
    let db = "streaming";
    pg.sql(
        db,
        "CREATE TABLE t (id int PRIMARY KEY, v text, at timestamptz);
         CREATE PUBLICATION pub FOR TABLE t;
         INSERT INTO t VALUES (0, 'before the slot', '2024-05-06 07:08:09+02');",
    )?;
    let config = pg.replication_config(db);
    let mut connection = ReplicationConnection::connect(&config).await?;
    let system = connection.identify_system().await?;
    assert_eq!(system.database.as_deref(), Some(db));

    let slot = SlotName::new("ours")?;
    let created = connection
        .create_slot(&slot, SnapshotAction::Export)
        .await?;
    let snapshot = created
        .snapshot_name
        .clone()
        .context("an exported snapshot")?;
    pg.sql(
        db,
        "SELECT 1 FROM pg_create_logical_replication_slot('theirs', 'pgoutput');",
    )?;
    pg.sql(
        db,
        "BEGIN; INSERT INTO t VALUES (1, 'first', '2024-05-06 07:08:09+02'); COMMIT;
         BEGIN; INSERT INTO t VALUES (2, 'a', now()), (3, 'b', now()), (4, 'c', now());
                SELECT pg_logical_emit_message(true, 'app', 'marker'); COMMIT;
         BEGIN; UPDATE t SET v = 'changed' WHERE id = 2; DELETE FROM t WHERE id = 3; COMMIT;",
    )?;
    // The exported snapshot shows the table as of the slot's consistent point: only row 0.
    let at_snapshot = pg.sql(
        db,
        &format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{snapshot}';
             SELECT string_agg(id::text, ',') FROM t; COMMIT;"
        ),
    )?;
    assert_eq!(at_snapshot, "0");

    let peeked = peek(&pg, db, "ours", "pub")?;
    let theirs = peek(&pg, db, "theirs", "pub")?;
    assert_eq!(
        peeked.iter().map(|p| &p.2).collect::<Vec<_>>(),
        theirs.iter().map(|p| &p.2).collect::<Vec<_>>()
    );
    assert_eq!(peeked.len(), 14, "3 transactions: BRIC, BIIIMC, BUDC");
    let end_pos: Lsn = pg.sql(db, "SELECT pg_current_wal_lsn();")?.parse()?;

    // pg_recvlogical writes each payload followed by a newline; payloads may contain newlines
    // themselves, so compare the whole file with the peeked payloads joined the same way.
    let file = tempfile::NamedTempFile::new()?;
    let status = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(pg.program("pg_recvlogical"))
            // The same output settings as the peek and our stream (the server's zone differs).
            .env("PGOPTIONS", "-c TimeZone=UTC -c DateStyle=ISO,MDY")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                db,
                "-S",
                "theirs",
                "--start",
                "--no-loop",
            ])
            .args([
                "-o",
                "proto_version=1",
                "-o",
                "publication_names=pub",
                "-o",
                "messages=true",
            ])
            .arg("-p")
            .arg(pg.port.to_string())
            .arg("-E")
            .arg(end_pos.to_string())
            .arg("-f")
            .arg(file.path())
            .kill_on_drop(true)
            .status(),
    )
    .await
    .context("pg_recvlogical did not stop at --endpos")??;
    assert!(status.success(), "pg_recvlogical failed: {status}");
    let expected: Vec<u8> = theirs
        .iter()
        .flat_map(|(_, _, p)| p.iter().copied().chain([b'\n']))
        .collect();
    assert_eq!(
        std::fs::read(file.path())?,
        expected,
        "pg_recvlogical output differs from the peek"
    );

    // Our stream: same payloads at the same positions, decoded the same way.
    let start = StartReplication::new(slot.clone(), vec![PublicationName::new("pub")?]);
    let mut stream = connection.start(start).await?;
    let received = receive(&mut stream, peeked.len()).await?;
    let mut from_stream = PgOutputDecoder::new();
    let mut from_peek = PgOutputDecoder::new();
    let mut commits = Vec::new();
    for (data, (lsn, _, payload)) in received.iter().zip(&peeked) {
        assert_eq!(data.payload.as_ref(), payload.as_slice());
        // The walsender sends 0/0 for messages written ahead of another one in the same
        // callback (Relation, Type, Origin); the SQL interface reports the change's LSN.
        if payload.first() == Some(&b'R') {
            assert_eq!(data.wal_start, Lsn::ZERO);
        } else {
            assert_eq!(data.wal_start, *lsn);
        }
        let message = from_stream.decode(&data.payload)?;
        assert_eq!(message, from_peek.decode(payload)?);
        assert_eq!(from_stream.change(&message)?, from_peek.change(&message)?);
        if let PgOutputMessage::Commit(commit) = &message {
            commits.push(commit.end_lsn);
        }
    }
    let first_insert = from_stream.decode(&received[2].payload)?;
    let change = from_stream.change(&first_insert)?.context("first insert")?;
    assert_eq!(
        json_of(&change),
        json!({"id": 1, "v": "first", "at": "2024-05-06 05:08:09+00"}),
        "the stream pins TimeZone=UTC whatever the server's timezone"
    );

    // Nothing is confirmed without being told, although status updates go out every 200 ms.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(stream.confirmed(), Lsn::ZERO);
    assert_eq!(
        slot_column(&pg, db, "ours", "confirmed_flush_lsn")?,
        created.consistent_point.to_string()
    );

    // Confirming the first transaction moves the slot exactly there.
    stream.confirm(commits[0]);
    let first = commits[0].to_string();
    eventually(Duration::from_secs(10), || {
        Ok((slot_column(&pg, db, "ours", "confirmed_flush_lsn")? == first).then_some(()))
    })
    .await
    .context("confirmed_flush_lsn did not reach the first commit")?;
    stream.stop().await?;
    eventually(Duration::from_secs(10), || {
        Ok(slot_column(&pg, db, "ours", "active_pid")?
            .is_empty()
            .then_some(()))
    })
    .await?;

    // A new session resumes after the confirmed transaction: at-least-once, nothing skipped.
    let connection = ReplicationConnection::connect(&config).await?;
    let start = StartReplication::new(slot.clone(), vec![PublicationName::new("pub")?])
        .with_resume_from(commits[0]);
    let mut stream = connection.start(start).await?;
    // The new session sends the table's Relation message again (the decoder is new too).
    let again = receive(&mut stream, peeked.len() - 4 + 1).await?;
    let again: Vec<_> = again
        .iter()
        .filter(|data| data.payload.first() != Some(&b'R'))
        .collect();
    assert_eq!(again.len(), peeked.len() - 4);
    for (data, (lsn, _, payload)) in again.iter().zip(&peeked[4..]) {
        assert_eq!(
            (data.wal_start, data.payload.as_ref()),
            (*lsn, payload.as_slice())
        );
    }
    let last = *commits.last().context("commits")?;
    stream.confirm(last);
    stream.confirm(commits[0]); // older positions are ignored
    assert_eq!(stream.confirmed(), last);
    let last = last.to_string();
    eventually(Duration::from_secs(10), || {
        Ok((slot_column(&pg, db, "ours", "confirmed_flush_lsn")? == last).then_some(()))
    })
    .await
    .context("confirmed_flush_lsn did not reach the last commit")?;
    stream.stop().await?;
    Ok(())
}

async fn start_error(
    pg: &PrivatePostgres,
    db: &str,
    start: StartReplication,
) -> Result<ReplicationError> {
    let connection = ReplicationConnection::connect(&pg.replication_config(db)).await?;
    match connection.start(start).await {
        Ok(_) => bail!("replication started"),
        Err(error) => Ok(error),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slot_trouble_is_reported_as_typed_errors() -> Result<()> {
    let Some(pg) = PrivatePostgres::start_or_skip("slot_trouble_is_reported_as_typed_errors", &[])
    else {
        return Ok(());
    };
    pg.create_database("slots")?;
    let db = "slots";
    pg.sql(
        db,
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION pub FOR TABLE t;",
    )?;
    let publications = vec![PublicationName::new("pub")?];
    let mut connection = ReplicationConnection::connect(&pg.replication_config(db)).await?;

    // Dropped slot.
    let dropped = SlotName::new("dropped")?;
    connection
        .create_slot(&dropped, SnapshotAction::NoExport)
        .await?;
    connection.drop_slot(&dropped).await?;
    let error = start_error(
        &pg,
        db,
        StartReplication::new(dropped.clone(), publications.clone()),
    )
    .await?;
    assert!(
        matches!(&error, ReplicationError::SlotMissing { slot } if slot == "dropped"),
        "{error}"
    );
    assert!(!error.is_retryable());
    // The server's own answer (DROP of a missing slot) maps to the same error.
    let error = connection
        .drop_slot(&dropped)
        .await
        .expect_err("slot is gone");
    assert!(
        matches!(&error, ReplicationError::SlotMissing { slot } if slot == "dropped"),
        "{error}"
    );

    // Recreated slot: it has confirmed past where the caller resumes from.
    let recreated = SlotName::new("recreated")?;
    let created = connection
        .create_slot(&recreated, SnapshotAction::NoExport)
        .await?;
    let behind = Lsn::new(created.consistent_point.as_u64() - 1);
    let start =
        StartReplication::new(recreated.clone(), publications.clone()).with_resume_from(behind);
    let error = start_error(&pg, db, start).await?;
    assert!(
        matches!(&error, ReplicationError::SlotAhead { confirmed_flush, resume_from, .. }
            if *confirmed_flush == created.consistent_point && *resume_from == behind),
        "{error}"
    );

    // A slot held by another reader.
    let busy = ReplicationConnection::connect(&pg.replication_config(db))
        .await?
        .start(StartReplication::new(
            recreated.clone(),
            publications.clone(),
        ))
        .await?;
    let error = start_error(
        &pg,
        db,
        StartReplication::new(recreated.clone(), publications.clone()),
    )
    .await?;
    assert!(
        matches!(&error, ReplicationError::SlotInUse { pid: Some(_), .. }),
        "{error}"
    );
    assert!(error.is_retryable());
    busy.stop().await?;

    // A publication that does not exist fails at the first change.
    let start = StartReplication::new(recreated.clone(), vec![PublicationName::new("nope")?]);
    let mut stream = ReplicationConnection::connect(&pg.replication_config(db))
        .await?
        .start(start)
        .await?;
    pg.sql(db, "INSERT INTO t VALUES (1);")?;
    let error = loop {
        match tokio::time::timeout(Duration::from_secs(20), stream.recv()).await? {
            Ok(Some(_)) => continue,
            Ok(None) => bail!("stream ended without an error"),
            Err(error) => break error,
        }
    };
    assert!(
        matches!(&error, ReplicationError::PublicationMissing { .. }),
        "{error}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn starting_on_an_invalidated_slot_is_a_typed_error() -> Result<()> {
    let test = "starting_on_an_invalidated_slot_is_a_typed_error";
    // Keep no WAL for slots beyond the current segment, so a checkpoint invalidates them.
    let Some(pg) = PrivatePostgres::start_or_skip(
        test,
        &["max_slot_wal_keep_size = 1MB", "max_wal_size = 32MB"],
    ) else {
        return Ok(());
    };
    pg.create_database("lost")?;
    let db = "lost";
    pg.sql(
        db,
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION pub FOR TABLE t;",
    )?;
    pg.sql(
        db,
        "SELECT 1 FROM pg_create_logical_replication_slot('old', 'pgoutput');",
    )?;
    eventually(Duration::from_secs(30), || {
        pg.sql(db, "INSERT INTO t SELECT coalesce(max(id), 0) + 1 FROM t; SELECT pg_switch_wal(); CHECKPOINT;")?;
        Ok((slot_column(&pg, db, "old", "wal_status")? == "lost").then_some(()))
    })
    .await
    .context("the slot was not invalidated")?;
    let start = StartReplication::new(SlotName::new("old")?, vec![PublicationName::new("pub")?]);
    let error = start_error(&pg, db, start).await?;
    assert!(
        matches!(&error, ReplicationError::SlotInvalidated { slot, .. } if slot == "old"),
        "{error}"
    );
    assert!(!error.is_retryable());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_busy_consumer_does_not_let_the_server_time_the_stream_out() -> Result<()> {
    let test = "a_busy_consumer_does_not_let_the_server_time_the_stream_out";
    let Some(pg) = PrivatePostgres::start_or_skip(test, &["wal_sender_timeout = 1s"]) else {
        return Ok(());
    };
    pg.create_database("busy")?;
    let db = "busy";
    pg.sql(
        db,
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION pub FOR TABLE t;",
    )?;
    pg.sql(
        db,
        "SELECT 1 FROM pg_create_logical_replication_slot('s', 'pgoutput');",
    )?;
    pg.sql(db, "INSERT INTO t SELECT generate_series(1, 50);")?;
    // A buffer of 2 fills at once; status updates every 200 ms keep the session alive while
    // nobody reads (with a 10 s interval the server ends it: checked by hand).
    let config = pg.replication_config(db).with_buffer(2);
    let start = StartReplication::new(SlotName::new("s")?, vec![PublicationName::new("pub")?]);
    let mut stream = ReplicationConnection::connect(&config)
        .await?
        .start(start)
        .await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    // B, R, 50 inserts, C: all still arrive.
    let received = receive(&mut stream, 53).await?;
    let last = received.last().context("messages")?;
    let PgOutputMessage::Commit(commit) = tributary_cdc::decode_message(&last.payload)? else {
        bail!("expected the commit last");
    };
    stream.confirm(commit.end_lsn);
    stream.stop().await?;
    assert_eq!(
        slot_column(&pg, db, "s", "confirmed_flush_lsn")?,
        commit.end_lsn.to_string()
    );
    Ok(())
}
