//! The capture end to end: a private PostgreSQL with `wal_level = logical`, the real relay,
//! and the embedded broker in a temporary directory; what the broker stored is read back and
//! checked envelope by envelope.

mod common;
mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use tributary_cdc::capture::{MessageCapture, MessageRoute, OutboxCapture};
use tributary_cdc::{CdcError, CdcSource, Lsn, TableCapture, TableConfig, resnapshot};
use tributary_core::{Broker, Envelope, Payload, RelaySource, Topic};

use common::{
    Running, broker, config, confirmed_flush, current_lsn, envelope, read_topic, wait_for,
    wait_streaming,
};
use support::{PrivatePostgres, eventually};

fn server(test: &str, db: &str) -> Result<Option<PrivatePostgres>> {
    let Some(pg) = PrivatePostgres::start_or_skip(test, &[]) else {
        return Ok(None);
    };
    pg.create_database(db)?;
    Ok(Some(pg))
}

#[tokio::test(flavor = "multi_thread")]
async fn table_changes_reach_the_broker_as_envelopes_in_commit_order() -> Result<()> {
    let db = "tables";
    let Some(pg) = server(
        "table_changes_reach_the_broker_as_envelopes_in_commit_order",
        db,
    )?
    else {
        return Ok(());
    };
    pg.sql(
        db,
        "CREATE TABLE items (id int8 PRIMARY KEY, name text, body text);
         ALTER TABLE items ALTER COLUMN body SET STORAGE EXTERNAL;
         CREATE TABLE audit (id int PRIMARY KEY, note text);
         ALTER TABLE audit REPLICA IDENTITY FULL;
         CREATE TABLE ignored (id int PRIMARY KEY);
         CREATE PUBLICATION pub FOR TABLE items, audit, ignored;",
    )?;
    let dir = tempfile::tempdir()?;
    let broker = broker(&dir)?;
    let tables = TableCapture::only(vec![
        TableConfig::new("items"),
        TableConfig::new("public.audit")
            .with_topic(Topic::new("Audit")?)
            .with_event_prefix("AuditEntry"),
    ]);
    let running = Running::start(config(&pg, db).with_tables(tables), broker.clone())?;
    wait_streaming(&pg, db).await?;
    pg.sql(
        db,
        "BEGIN;
         INSERT INTO items VALUES (1, 'one', repeat('x', 10000)), (2, 'two', 'short');
         INSERT INTO ignored VALUES (1);
         COMMIT;
         UPDATE items SET name = 'uno' WHERE id = 1;
         UPDATE items SET id = 3 WHERE id = 2;
         DELETE FROM items WHERE id = 3;
         BEGIN;
         INSERT INTO audit VALUES (1, 'first');
         UPDATE audit SET note = 'changed' WHERE id = 1;
         DELETE FROM audit WHERE id = 1;
         COMMIT;
         ALTER TABLE items ADD COLUMN price numeric;
         INSERT INTO items VALUES (4, 'four', NULL, 12.50);
         TRUNCATE audit;",
    )?;
    let items = wait_for(broker.as_ref(), "items", 6).await?;
    let audit = wait_for(broker.as_ref(), "Audit", 4).await?;
    ensure!(items.len() == 6 && audit.len() == 4, "no extra events");
    ensure!(read_topic(broker.as_ref(), "ignored").await?.is_empty());

    let by_key = |deliveries: &[tributary_core::Delivery]| {
        let mut keys: BTreeMap<String, Vec<Envelope>> = BTreeMap::new();
        for d in deliveries {
            keys.entry(d.key.clone()).or_default().push(envelope(d));
        }
        keys
    };
    let items = by_key(&items);
    let types = |key: &str| -> Vec<String> {
        items
            .get(key)
            .map(|events| events.iter().map(|e| e.event_type.clone()).collect())
            .unwrap_or_default()
    };
    assert_eq!(types("1"), ["items.inserted", "items.updated"]);
    assert_eq!(types("2"), ["items.inserted"]);
    // The key change is published under the new key, with the old key in the data.
    assert_eq!(types("3"), ["items.updated", "items.deleted"]);
    assert_eq!(types("4"), ["items.inserted"]);

    let first = items["1"][0].data.to_value();
    assert_eq!(first["operation"], "insert");
    assert_eq!(first["key"], json!({"id": 1}));
    assert_eq!(first["new"]["body"].as_str().map(str::len), Some(10000));
    let xid = first["transaction"]["xid"].as_u64().context("xid")?;
    let commit_lsn: Lsn = first["transaction"]["commit_lsn"]
        .as_str()
        .context("commit lsn")?
        .parse()?;
    ensure!(xid > 0 && commit_lsn > Lsn::ZERO);
    let second = items["2"][0].data.to_value();
    assert_eq!(second["transaction"]["xid"], json!(xid), "same transaction");
    assert_eq!(second["transaction"]["index"], json!(1));

    let renamed = items["1"][1].data.to_value();
    assert_eq!(renamed["new"], json!({"id": 1, "name": "uno"}));
    assert_eq!(renamed["unchanged_toast"], json!(["body"]));
    assert_eq!(renamed["old"], Value::Null);
    let rekeyed = items["3"][0].data.to_value();
    assert_eq!(rekeyed["old"], json!({"id": 2}));
    let deleted = items["3"][1].data.to_value();
    assert_eq!(
        (&deleted["new"], &deleted["old"]),
        (&Value::Null, &json!({"id": 3}))
    );
    // The column added mid-stream is read from the new Relation message.
    let priced = items["4"][0].data.to_value();
    assert_eq!(
        priced["new"],
        json!({"id": 4, "name": "four", "body": null, "price": "12.50"})
    );

    let audit = by_key(&audit);
    let entries = &audit["1"];
    let types: Vec<&str> = entries.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "AuditEntry.inserted",
            "AuditEntry.updated",
            "AuditEntry.deleted"
        ]
    );
    assert_eq!(
        entries[1].data.to_value()["old"],
        json!({"id": 1, "note": "first"}),
        "replica identity FULL gives the whole old row"
    );
    assert_eq!(
        audit["audit"][0].event_type, "AuditEntry.truncated",
        "a truncate is keyed by its table"
    );
    for events in items.values().chain(audit.values()) {
        for e in events {
            assert_eq!(e.source, "test-capture");
        }
    }

    // Everything acknowledged is confirmed to the slot.
    let end = current_lsn(&pg, db)?;
    eventually(Duration::from_secs(20), || {
        Ok((confirmed_flush(&pg, db)? >= end).then_some(()))
    })
    .await
    .context("the slot did not confirm everything")?;
    running.stop().await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn outbox_rows_are_published_from_the_wal_and_their_deletes_are_not() -> Result<()> {
    let db = "outbox";
    let Some(pg) = server(
        "outbox_rows_are_published_from_the_wal_and_their_deletes_are_not",
        db,
    )?
    else {
        return Ok(());
    };
    pg.sql(
        db,
        "CREATE TABLE outbox (id bigserial PRIMARY KEY, topic text NOT NULL,
                              message_key text NOT NULL, event_id uuid NOT NULL,
                              payload bytea NOT NULL);
         CREATE TABLE orders (id int PRIMARY KEY);
         CREATE PUBLICATION pub FOR TABLE outbox, orders;",
    )?;
    let dir = tempfile::tempdir()?;
    let broker = broker(&dir)?;
    let capture = config(&pg, db)
        .without_tables()
        .with_outbox(OutboxCapture::default().with_delete_published(true));
    let running = Running::start(capture, broker.clone())?;
    wait_streaming(&pg, db).await?;

    let mut written = Vec::new();
    let mut script = String::new();
    for tx in 0..4 {
        script.push_str("BEGIN;\n");
        for i in 0..5 {
            let key = format!("order-{}", i % 2);
            let event = Envelope::new(
                "orders",
                "OrderCreated",
                Payload::from_value(&json!({"tx": tx, "i": i}))?,
            )
            .with_subject(key.clone());
            let hex: String = event
                .to_json()
                .bytes()
                .map(|b| format!("{b:02x}"))
                .collect();
            script.push_str(&format!(
                "INSERT INTO orders VALUES ({});
                 INSERT INTO outbox (topic, message_key, event_id, payload)
                 VALUES ('Order', '{key}', '{}', decode('{hex}', 'hex'));\n",
                tx * 10 + i,
                event.id
            ));
            written.push(event);
        }
        script.push_str("COMMIT;\n");
    }
    pg.sql(db, &script)?;
    let stored = wait_for(broker.as_ref(), "Order", written.len()).await?;
    assert_eq!(stored.len(), written.len());
    let by_id: HashMap<_, _> = stored.iter().map(|d| (d.id, d)).collect();
    for event in &written {
        let delivery = by_id.get(&Some(event.id)).context("every row published")?;
        assert_eq!(delivery.payload, event.to_json().into_bytes(), "as written");
        assert_eq!(Some(delivery.key.as_str()), event.subject.as_deref());
    }
    // Per key, in commit order.
    for key in ["order-0", "order-1"] {
        let published: Vec<_> = stored
            .iter()
            .filter(|d| d.key == key)
            .filter_map(|d| d.id)
            .collect();
        let committed: Vec<_> = written
            .iter()
            .filter(|e| e.subject.as_deref() == Some(key))
            .map(|e| e.id)
            .collect();
        assert_eq!(published, committed);
    }
    // Published rows are deleted, and the deletes are not published.
    eventually(Duration::from_secs(20), || {
        Ok((pg.sql(db, "SELECT count(*) FROM outbox;")? == "0").then_some(()))
    })
    .await
    .context("published outbox rows were not deleted")?;
    let after_deletes = current_lsn(&pg, db)?;
    pg.sql(
        db,
        &format!(
            "INSERT INTO outbox (topic, message_key, event_id, payload)
             VALUES ('not a topic', 'k', '{}', convert_to('{{}}', 'UTF8'));",
            tributary_core::EventId::new()
        ),
    )?;
    wait_for(broker.as_ref(), "cdc-invalid", 1).await?;
    assert_eq!(read_topic(broker.as_ref(), "Order").await?.len(), 20);
    assert!(read_topic(broker.as_ref(), "outbox").await?.is_empty());
    assert!(read_topic(broker.as_ref(), "orders").await?.is_empty());
    // Transactions that published nothing (the deletes) still let the slot move on.
    eventually(Duration::from_secs(20), || {
        Ok((confirmed_flush(&pg, db)? > after_deletes).then_some(()))
    })
    .await
    .context("the slot stayed behind the deletes")?;
    running.stop().await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn outbox_rows_written_before_the_first_start_are_published_once_then_the_stream()
-> Result<()> {
    let db = "outbox_snapshot";
    let Some(pg) = server(
        "outbox_rows_written_before_the_first_start_are_published_once_then_the_stream",
        db,
    )?
    else {
        return Ok(());
    };
    pg.sql(
        db,
        "CREATE TABLE outbox (id bigserial PRIMARY KEY, topic text NOT NULL,
                              message_key text NOT NULL, event_id uuid NOT NULL,
                              payload bytea NOT NULL);
         CREATE PUBLICATION pub FOR TABLE outbox;",
    )?;
    let insert = |event: &Envelope| {
        let hex: String = event
            .to_json()
            .bytes()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!(
            "INSERT INTO outbox (topic, message_key, event_id, payload)
             VALUES ('Order', 'k', '{}', decode('{hex}', 'hex'));",
            event.id
        )
    };
    let event = |n: u64| -> Result<Envelope> {
        Ok(Envelope::new(
            "orders",
            "OrderCreated",
            Payload::from_value(&json!({"n": n}))?,
        )
        .with_subject("k"))
    };
    // The service wrote (and committed) before any capture existed.
    let before: Vec<Envelope> = (0..30).map(event).collect::<Result<_>>()?;
    pg.sql(db, &before.iter().map(insert).collect::<String>())?;
    let dir = tempfile::tempdir()?;
    let broker = broker(&dir)?;
    let capture = config(&pg, db)
        .without_tables()
        .with_outbox(OutboxCapture::default().with_delete_published(true));
    let running = Running::start(capture, broker.clone())?;
    wait_streaming(&pg, db).await?;
    let after: Vec<Envelope> = (30..40).map(event).collect::<Result<_>>()?;
    pg.sql(db, &after.iter().map(insert).collect::<String>())?;
    let stored = wait_for(broker.as_ref(), "Order", 40).await?;
    let published: Vec<_> = stored.iter().filter_map(|d| d.id).collect();
    let written: Vec<_> = before.iter().chain(&after).map(|e| e.id).collect();
    assert_eq!(
        published, written,
        "every row once, the old ones first, in order"
    );
    eventually(Duration::from_secs(20), || {
        Ok((pg.sql(db, "SELECT count(*) FROM outbox;")? == "0").then_some(()))
    })
    .await
    .context("published rows, old and new, are deleted")?;
    running.stop().await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn logical_messages_inside_transactions_become_events() -> Result<()> {
    let db = "messages";
    let Some(pg) = server("logical_messages_inside_transactions_become_events", db)? else {
        return Ok(());
    };
    pg.sql(
        db,
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION pub FOR TABLE t;",
    )?;
    let dir = tempfile::tempdir()?;
    let broker = broker(&dir)?;
    let route = MessageRoute::new("orders", Topic::new("Order")?).with_event_type("OrderNoted");
    let capture = config(&pg, db)
        .without_tables()
        .with_messages(MessageCapture::default().with_route(route));
    let running = Running::start(capture, broker.clone())?;
    wait_streaming(&pg, db).await?;
    let whole = Envelope::new(
        "app",
        "OrderShipped",
        Payload::from_json_str(r#"{"order":"o-7"}"#)?,
    )
    .with_subject("o-7");
    pg.sql(
        db,
        &format!(
            "BEGIN;
             INSERT INTO t VALUES (1);
             SELECT pg_logical_emit_message(true, 'orders', '{{\"note\": \"first\"}}');
             SELECT pg_logical_emit_message(true, 'orders', '{}');
             SELECT pg_logical_emit_message(true, 'audit-log', 'plain text');
             COMMIT;
             BEGIN;
             SELECT pg_logical_emit_message(true, 'orders', '{{\"note\": \"rolled back\"}}');
             SELECT pg_logical_emit_message(false, 'orders', '{{\"note\": \"not transactional\"}}');
             ROLLBACK;
             BEGIN;
             SELECT pg_logical_emit_message(true, 'orders', '{{\"note\": \"second\"}}');
             COMMIT;",
            whole.to_json().replace('\'', "''")
        ),
    )?;
    let orders = wait_for(broker.as_ref(), "Order", 3).await?;
    let audit = wait_for(broker.as_ref(), "audit-log", 1).await?;
    // A marker committed after everything above: the capture publishes in commit order, so once
    // the marker is on the topic, anything rolled back or non-transactional would be there too.
    pg.sql(
        db,
        "SELECT pg_logical_emit_message(true, 'orders', '{\"note\": \"marker\"}');",
    )?;
    let orders_now = wait_for(broker.as_ref(), "Order", 4).await?;
    assert_eq!(
        orders_now.len(),
        4,
        "nothing rolled back or non-transactional"
    );
    assert!(
        orders_now
            .iter()
            .any(|d| envelope(d).data.to_value()["note"] == json!("marker"))
    );
    let envelopes: Vec<Envelope> = orders.iter().map(envelope).collect();
    let notes: Vec<Value> = envelopes
        .iter()
        .filter(|e| e.event_type == "OrderNoted")
        .map(|e| e.data.to_value()["note"].clone())
        .collect();
    assert_eq!(notes, [json!("first"), json!("second")]);
    let shipped = orders
        .iter()
        .find(|d| d.id == Some(whole.id))
        .context("the whole envelope")?;
    assert_eq!(shipped.payload, whole.to_json().into_bytes());
    assert_eq!(shipped.key, "o-7");
    assert_eq!(envelope(&audit[0]).data.to_value(), json!("plain text"));
    running.stop().await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_publishes_existing_rows_once_then_the_stream() -> Result<()> {
    let db = "snapshot";
    let Some(pg) = server("snapshot_publishes_existing_rows_once_then_the_stream", db)? else {
        return Ok(());
    };
    pg.sql(
        db,
        "CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL);
         INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 2500) g;
         CREATE PUBLICATION pub FOR TABLE accounts;",
    )?;
    let dir = tempfile::tempdir()?;
    let broker = broker(&dir)?;
    let capture = config(&pg, db)
        .with_batch_size(1000)
        .with_tables(TableCapture::only(vec![
            TableConfig::new("accounts").with_snapshot(true),
        ]));
    let running = Running::start(capture, broker.clone())?;
    // Writes race the slot's creation and the snapshot: each lands in exactly one of them.
    for round in 0..20 {
        pg.sql(
            db,
            &format!(
                "INSERT INTO accounts VALUES ({}, 1);
                 UPDATE accounts SET balance = balance + 1 WHERE id = {};
                 DELETE FROM accounts WHERE id = {};",
                3000 + round,
                round + 1,
                2000 + round
            ),
        )?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_streaming(&pg, db).await?;
    pg.sql(db, "INSERT INTO accounts VALUES (9999, 7);")?;
    let end_state: BTreeMap<i64, i64> = pg
        .sql(db, "SELECT id || ',' || balance FROM accounts ORDER BY id;")?
        .lines()
        .map(|line| {
            let (id, balance) = line.split_once(',').context("id,balance")?;
            Ok((id.parse()?, balance.parse()?))
        })
        .collect::<Result<_>>()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !read_topic(broker.as_ref(), "accounts")
        .await?
        .iter()
        .any(|d| d.key == "9999")
    {
        ensure!(
            std::time::Instant::now() < deadline,
            "the change after the snapshot did not arrive"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stored = read_topic(broker.as_ref(), "accounts").await?;

    // Replaying the events per key (snapshot = upsert) gives exactly the table.
    let mut replayed: BTreeMap<i64, i64> = BTreeMap::new();
    let mut snapshot_rows = 0;
    let mut keys_seen_in_snapshot = HashSet::new();
    let mut per_key: BTreeMap<String, Vec<Envelope>> = BTreeMap::new();
    for d in &stored {
        per_key.entry(d.key.clone()).or_default().push(envelope(d));
    }
    for (key, events) in &per_key {
        for (i, e) in events.iter().enumerate() {
            let data = e.data.to_value();
            let id = data["key"]["id"].as_i64().context("id")?;
            match e.event_type.as_str() {
                "accounts.snapshot" => {
                    ensure!(i == 0, "key {key}: snapshot event after a change");
                    ensure!(
                        keys_seen_in_snapshot.insert(id),
                        "key {key} snapshotted twice"
                    );
                    ensure!(data["transaction"].is_null());
                    snapshot_rows += 1;
                    replayed.insert(id, data["new"]["balance"].as_i64().context("balance")?);
                }
                "accounts.inserted" => {
                    ensure!(!replayed.contains_key(&id), "key {key} inserted twice");
                    replayed.insert(id, data["new"]["balance"].as_i64().context("balance")?);
                }
                "accounts.updated" => {
                    ensure!(
                        replayed.contains_key(&id),
                        "key {key} updated before it existed"
                    );
                    replayed.insert(id, data["new"]["balance"].as_i64().context("balance")?);
                }
                "accounts.deleted" => {
                    ensure!(replayed.remove(&id).is_some(), "key {key} deleted twice");
                }
                other => bail!("unexpected event type {other}"),
            }
        }
    }
    assert_eq!(replayed, end_state, "no gap and no double");
    ensure!(
        snapshot_rows >= 2480,
        "the snapshot had the existing rows ({snapshot_rows})"
    );
    let recorded = pg.sql(
        db,
        "SELECT status || ',' || snapshot_rows FROM tributary_cdc_slots WHERE slot_name = 'cdc';",
    )?;
    assert_eq!(recorded, format!("streaming,{snapshot_rows}"));
    running.stop().await??;
    Ok(())
}

/// The next batch, retrying through slot-in-use and empty reads.
async fn next_batch(source: &CdcSource) -> Result<tributary_core::SourceBatch> {
    for _ in 0..200 {
        match source.read_batch(50).await {
            Ok(Some(batch)) => return Ok(batch),
            Ok(None) => {}
            Err(e) if e.is_retryable() => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => return Err(e.into()),
        }
    }
    bail!("no batch")
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_rereads_unconfirmed_changes_with_the_same_ids_and_one_capture_holds_the_slot()
-> Result<()> {
    let db = "restart";
    let Some(pg) = server(
        "restart_rereads_unconfirmed_changes_with_the_same_ids_and_one_capture_holds_the_slot",
        db,
    )?
    else {
        return Ok(());
    };
    pg.sql(
        db,
        "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE PUBLICATION pub FOR TABLE t;",
    )?;
    let capture = config(&pg, db).with_batch_size(50);
    let first = CdcSource::new(capture.clone())?;
    let lease = first
        .try_lease()
        .await?
        .context("the first capture takes the lease")?;
    let second = CdcSource::new(capture.clone())?;
    assert!(
        second.try_lease().await?.is_none(),
        "one capture per slot: the second one stands by"
    );
    // The first read creates the slot.
    assert!(first.read_batch(50).await?.is_none());
    wait_streaming(&pg, db).await?;
    pg.sql(
        db,
        "INSERT INTO t SELECT g, 'a' FROM generate_series(1, 30) g;
         INSERT INTO t SELECT g, 'b' FROM generate_series(31, 130) g;",
    )?;
    // The first transaction, whole; read again (from the slot) until it is marked.
    let small = next_batch(&first).await?;
    assert_eq!(small.messages.len(), 30);
    assert_eq!(next_batch(&first).await?, small);
    first.mark_published(small.through).await?;
    let confirmed = first.confirmed();
    assert_eq!(small.through.get(), confirmed.as_u64());
    // The second transaction is twice the batch size: split, confirming nothing new.
    let part = next_batch(&first).await?;
    assert_eq!(part.messages.len(), 50);
    assert_eq!(
        part.through, small.through,
        "part of a transaction moves nothing"
    );
    first.mark_published(part.through).await?;
    let rest = next_batch(&first).await?;
    assert_eq!(rest.messages.len(), 50);
    let in_flight: Vec<_> = part
        .messages
        .iter()
        .chain(&rest.messages)
        .map(|m| m.id)
        .collect();
    // Crash before the rest was acknowledged.
    drop(lease);
    drop(first);
    eventually(Duration::from_secs(20), || {
        Ok((confirmed_flush(&pg, db)? == confirmed).then_some(()))
    })
    .await
    .context("the slot moved past an unacknowledged batch")?;

    let _lease = loop {
        if let Some(lease) = second.try_lease().await? {
            break lease;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut again = Vec::new();
    for _ in 0..2 {
        let batch = next_batch(&second).await?;
        again.extend(batch.messages.iter().map(|m| m.id));
        second.mark_published(batch.through).await?;
    }
    assert_eq!(
        again, in_flight,
        "the transaction in flight comes back whole, with the same ids"
    );
    // Once idle, the slot moves to the end (keepalives, heartbeats).
    let end = current_lsn(&pg, db)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while confirmed_flush(&pg, db)? < end {
        ensure!(
            std::time::Instant::now() < deadline,
            "the slot stayed behind"
        );
        assert!(second.read_batch(50).await?.is_none());
    }
    second.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_or_recreated_slot_stops_the_capture_with_the_resnapshot_command() -> Result<()> {
    let db = "slotloss";
    let Some(pg) = server(
        "a_dropped_or_recreated_slot_stops_the_capture_with_the_resnapshot_command",
        db,
    )?
    else {
        return Ok(());
    };
    pg.sql(
        db,
        "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION pub FOR TABLE t;",
    )?;
    let dir = tempfile::tempdir()?;
    let broker = broker(&dir)?;
    let capture = config(&pg, db);
    let running = Running::start(capture.clone(), broker.clone())?;
    wait_streaming(&pg, db).await?;
    pg.sql(db, "INSERT INTO t VALUES (1);")?;
    wait_for(broker.as_ref(), "t", 1).await?;
    running.stop().await??;

    // Dropped while stopped.
    pg.sql(db, "SELECT pg_drop_replication_slot('cdc');")?;
    let error = Running::start(capture.clone(), broker.clone())?
        .ended(Duration::from_secs(30))
        .await?
        .expect_err("a missing slot stops the capture");
    assert!(matches!(error, CdcError::SlotMissing { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains("tributary cdc --resnapshot --slot cdc"),
        "{error}"
    );

    // Recreated behind the capture's back (after more WAL).
    pg.sql(
        db,
        "INSERT INTO t VALUES (2);
         SELECT 1 FROM pg_create_logical_replication_slot('cdc', 'pgoutput');",
    )?;
    let error = Running::start(capture.clone(), broker.clone())?
        .ended(Duration::from_secs(30))
        .await?
        .expect_err("a recreated slot stops the capture");
    assert!(matches!(error, CdcError::SlotRecreated { .. }), "{error}");
    assert!(error.to_string().contains("--resnapshot"), "{error}");

    // The operator's command starts over.
    resnapshot(&capture).await?;
    let running = Running::start(capture.clone(), broker.clone())?;
    wait_streaming(&pg, db).await?;
    pg.sql(db, "INSERT INTO t VALUES (3);")?;
    let stored = wait_for(broker.as_ref(), "t", 2).await?;
    let keys: Vec<&str> = stored.iter().map(|d| d.key.as_str()).collect();
    assert!(keys.contains(&"3"), "{keys:?}");
    running.stop().await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn heartbeats_advance_the_slot_while_only_uncaptured_tables_change() -> Result<()> {
    let db = "quiet";
    let Some(pg) = server(
        "heartbeats_advance_the_slot_while_only_uncaptured_tables_change",
        db,
    )?
    else {
        return Ok(());
    };
    pg.sql(
        db,
        "CREATE TABLE captured (id int PRIMARY KEY);
         CREATE TABLE busy (id serial PRIMARY KEY, filler text);
         CREATE PUBLICATION pub FOR TABLE captured;",
    )?;
    let dir = tempfile::tempdir()?;
    let broker = broker(&dir)?;
    let running = Running::start(config(&pg, db), broker.clone())?;
    wait_streaming(&pg, db).await?;
    let start = confirmed_flush(&pg, db)?;
    for _ in 0..10 {
        pg.sql(
            db,
            "INSERT INTO busy (filler) SELECT repeat('y', 200) FROM generate_series(1, 500);",
        )?;
    }
    let written = current_lsn(&pg, db)?;
    ensure!(
        written.as_u64() - start.as_u64() > 500_000,
        "enough WAL written"
    );
    eventually(Duration::from_secs(20), || {
        Ok((confirmed_flush(&pg, db)? >= written).then_some(()))
    })
    .await
    .context("the slot pinned WAL of uncaptured tables")?;
    let lag = running.source.lag().await?;
    ensure!(lag.bytes < 100_000, "small lag once caught up: {lag:?}");
    assert_eq!(lag.slot, "cdc");
    ensure!(read_topic(broker.as_ref(), "busy").await?.is_empty());
    running.stop().await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_helper_reports_capture_and_pg_recvlogical_rates() -> Result<()> {
    let db = "bench";
    let Some(pg) = server("bench_helper_reports_capture_and_pg_recvlogical_rates", db)? else {
        return Ok(());
    };
    let program = tributary_cdc::capture::bench::find_pg_recvlogical()
        .context("pg_recvlogical beside the server")?;
    // Small by default; `CDC_BENCH_ROWS=200000 CDC_BENCH_BROKER=sqlite cargo test --release`
    // for figures.
    let rows = std::env::var("CDC_BENCH_ROWS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5000);
    let dir = tempfile::tempdir()?;
    let broker: Arc<dyn Broker> = match std::env::var("CDC_BENCH_BROKER").as_deref() {
        Ok("sqlite") => broker(&dir)?,
        _ => Arc::new(tributary_core::InMemoryBroker::new(
            tributary_core::InMemoryBrokerConfig::default(),
        )),
    };
    let report = tributary_cdc::capture::bench::bench_capture(
        &config(&pg, db),
        broker,
        rows,
        1000,
        &program,
    )
    .await?;
    eprintln!("{report:?}");
    ensure!(report.capture_rows_per_sec.is_finite() && report.capture_rows_per_sec > 0.0);
    ensure!(report.baseline_rows_per_sec > 0.0);
    ensure!(
        pg.sql(db, "SELECT count(*) FROM pg_replication_slots;")? == "0",
        "the bench cleans up its slots"
    );
    Ok(())
}
