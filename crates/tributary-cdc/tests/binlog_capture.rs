//! The binlog capture end to end on a real MariaDB into the embedded broker: table changes
//! (whole transactions, commit order, stable ids across restarts), the outbox (published as
//! written, deleted after), the initial snapshot (no gap, no double), heartbeats, and the
//! guards that stop it loudly on a private server.

mod mysql;

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::json;
use tributary_cdc::BinlogError;
use tributary_cdc::capture::{OutboxCapture, TableCapture};
use tributary_core::Envelope;

use mysql::{
    PrivateMariaDb, Running, TestDb, broker, config, envelope, read_topic, wait_for, wait_streaming,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_changes_are_published_whole_in_commit_order_with_the_same_ids_after_a_restart()
-> Result<()> {
    let Some(db) = TestDb::create_or_skip(
        "table_changes_are_published_whole_in_commit_order_with_the_same_ids_after_a_restart",
    ) else {
        return Ok(());
    };
    db.sql(
        "CREATE TABLE orders (id INT PRIMARY KEY, customer VARCHAR(20), total DECIMAL(10,2));
            CREATE TABLE other (id INT PRIMARY KEY);",
    )?;
    let dir = tempfile::tempdir()?;
    let broker = broker(&dir)?;
    let base = config(&db.url());
    let cfg = base
        .clone()
        .with_tables(TableCapture::only(vec![base.table("orders")]))
        .with_batch_size(3);
    // Before any capture ran, the lag reads nothing and creates nothing.
    let before = tributary_cdc::binlog_lag(&cfg).await?;
    ensure!(
        before.stored.is_none() && before.bytes.is_none(),
        "{before:?}"
    );
    ensure!(
        db.sql("SHOW TABLES LIKE 'tributary_cdc_binlog'")?
            .is_empty(),
        "the lag created the state table"
    );
    let running = Running::start(cfg.clone(), broker.clone())?;
    wait_streaming(|q| db.sql(q)).await?;
    db.sql(
        "BEGIN;
         INSERT INTO orders VALUES (1, 'acme', 10.50), (2, 'zeta', 7);
         INSERT INTO other VALUES (1);
         UPDATE orders SET total = 11 WHERE id = 1;
         DELETE FROM orders WHERE id = 2;
         INSERT INTO orders VALUES (3, 'acme', 1);
         COMMIT;
         INSERT INTO orders VALUES (4, 'beta', 2);",
    )?;
    let stored = wait_for(broker.as_ref(), "orders", 6).await?;
    let events: Vec<Envelope> = stored.iter().map(envelope).collect();
    let mut by_key: Vec<(String, String)> = events
        .iter()
        .map(|e| (e.subject.clone().unwrap_or_default(), e.event_type.clone()))
        .collect();
    by_key.sort();
    assert_eq!(
        by_key,
        vec![
            ("1".into(), "orders.inserted".into()),
            ("1".into(), "orders.updated".into()),
            ("2".into(), "orders.deleted".into()),
            ("2".into(), "orders.inserted".into()),
            ("3".into(), "orders.inserted".into()),
            ("4".into(), "orders.inserted".into()),
        ]
    );
    // Per key, commit order; the first transaction's five changes share its GTID, indexes 0..5.
    let update = events
        .iter()
        .find(|e| e.event_type == "orders.updated")
        .context("update")?
        .data
        .to_value();
    assert_eq!(
        update["old"],
        json!({"id": 1, "customer": "acme", "total": "10.50"})
    );
    assert_eq!(
        update["new"],
        json!({"id": 1, "customer": "acme", "total": "11.00"})
    );
    assert_eq!(update["key"], json!({"id": 1}));
    assert_eq!(update["schema"], json!(db.name));
    let gtid = update["transaction"]["gtid"]
        .as_str()
        .context("gtid")?
        .to_owned();
    let mut indexes: Vec<u64> = events
        .iter()
        .map(|e| e.data.to_value())
        .filter(|d| d["transaction"]["gtid"] == json!(gtid))
        .map(|d| d["transaction"]["index"].as_u64().unwrap_or(99))
        .collect();
    indexes.sort();
    assert_eq!(
        indexes,
        vec![0, 1, 2, 3, 4],
        "the other table's row takes no index"
    );
    let ids: HashSet<_> = events.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), 6);
    running.stop().await??;

    // Started again, it resumes after what it stored: nothing twice, and new changes flow.
    db.sql("INSERT INTO orders VALUES (5, 'acme', 3);")?;
    let running = Running::start(cfg.clone(), broker.clone())?;
    let stored = wait_for(broker.as_ref(), "orders", 7).await?;
    // A marker committed after the restart: changes arrive in commit order, so once it is on
    // the topic anything re-published from before the stored position would be there too.
    db.sql("INSERT INTO orders VALUES (6, 'marker', 1);")?;
    let again = wait_for(broker.as_ref(), "orders", 8).await?;
    assert_eq!(
        again.len(),
        8,
        "resumed exactly after the stored position: {}",
        stored.len()
    );
    running.stop().await??;

    // Forgetting the position and reading the same binlog again gives the same ids.
    let lag = tributary_cdc::binlog_lag(&cfg).await?;
    ensure!(lag.stored.is_some() && lag.bytes.is_some(), "{lag:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_rows_any_client_wrote_are_published_as_written_and_deleted_after() -> Result<()> {
    let Some(db) = TestDb::create_or_skip(
        "outbox_rows_any_client_wrote_are_published_as_written_and_deleted_after",
    ) else {
        return Ok(());
    };
    db.sql(
        "CREATE TABLE outbox (
           id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
           event_id CHAR(36) NOT NULL, topic VARCHAR(255) NOT NULL,
           message_key VARCHAR(255) NOT NULL, payload LONGTEXT NOT NULL) ENGINE=InnoDB;",
    )?;
    let dir = tempfile::tempdir()?;
    let broker = broker(&dir)?;
    let base = config(&db.url());
    let cfg = base.clone().without_tables().with_outbox(
        OutboxCapture::default()
            .with_table(&format!("{}.outbox", db.name))
            .with_snapshot(false)
            .with_delete_published(true),
    );
    let running = Running::start(cfg, broker.clone())?;
    wait_streaming(|q| db.sql(q)).await?;
    let envelope_a = r#"{"specversion":"1.0","id":"0190f5a4-0000-7000-8000-000000000001","source":"shop","type":"OrderCreated","subject":"o-1","time":"2024-01-02T03:04:05Z","datacontenttype":"application/json","data":{"total":5}}"#;
    db.sql(&format!(
        "BEGIN;
         INSERT INTO outbox (event_id, topic, message_key, payload) VALUES
           ('0190f5a4-0000-7000-8000-000000000001', 'Order', 'o-1', '{envelope_a}');
         INSERT INTO outbox (event_id, topic, message_key, payload) VALUES
           ('0190f5a4-0000-7000-8000-000000000002', 'Order', 'o-1', '{{\"plain\": true}}');
         COMMIT;"
    ))?;
    let stored = wait_for(broker.as_ref(), "Order", 2).await?;
    assert_eq!(stored[0].payload, envelope_a.as_bytes());
    assert_eq!(stored[1].payload, br#"{"plain": true}"#);
    assert_eq!(
        stored
            .iter()
            .map(|d| d.id.map(|i| i.to_string()))
            .collect::<Vec<_>>(),
        vec![
            Some("0190f5a4-0000-7000-8000-000000000001".to_owned()),
            Some("0190f5a4-0000-7000-8000-000000000002".to_owned())
        ]
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while db.sql("SELECT COUNT(*) FROM outbox")? != "0" {
        ensure!(
            std::time::Instant::now() < deadline,
            "published rows were not deleted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A marker row written after the deletes: once it is published, a delete that published
    // something would be on the topic before it.
    db.sql(
        "INSERT INTO outbox (event_id, topic, message_key, payload) VALUES
           ('0190f5a4-0000-7000-8000-000000000003', 'Order', 'o-1', '{\"marker\": true}');",
    )?;
    let after = wait_for(broker.as_ref(), "Order", 3).await?;
    assert_eq!(after.len(), 3, "deletes publish nothing");
    assert_eq!(after[2].payload, br#"{"marker": true}"#);
    running.stop().await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_and_the_stream_meet_without_gap_or_double() -> Result<()> {
    let Some(db) = TestDb::create_or_skip("the_snapshot_and_the_stream_meet_without_gap_or_double")
    else {
        return Ok(());
    };
    db.sql(
        "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(20), at TIMESTAMP(3) NULL, d DATETIME);
         INSERT INTO items SELECT seq, CONCAT('n', seq), '2024-01-02 03:04:05.250', '2024-05-06 07:08:09' FROM seq_1_to_25;",
    )?;
    let dir = tempfile::tempdir()?;
    let broker = broker(&dir)?;
    let base = config(&db.url());
    let cfg = base
        .clone()
        .with_tables(TableCapture::only(vec![
            base.table("items").with_snapshot(true),
        ]))
        .with_batch_size(10);
    let running = Running::start(cfg, broker.clone())?;
    wait_streaming(|q| db.sql(q)).await?;
    db.sql("INSERT INTO items VALUES (26, 'n26', NULL, NULL); UPDATE items SET name = 'x' WHERE id = 1;")?;
    let stored = wait_for(broker.as_ref(), "items", 27).await?;
    // A marker row after both: once it is published, a snapshot row published twice would be
    // on the topic before it.
    db.sql("INSERT INTO items VALUES (27, 'marker', NULL, NULL);")?;
    let stored_after = wait_for(broker.as_ref(), "items", 28).await?;
    assert_eq!(stored_after.len(), 28, "{}", stored.len());
    let events: Vec<Envelope> = stored_after
        .iter()
        .map(envelope)
        .filter(|e| e.subject.as_deref() != Some("27"))
        .collect();
    let snapshots = events
        .iter()
        .filter(|e| e.event_type == "items.snapshot")
        .count();
    assert_eq!(snapshots, 25);
    let first = events
        .iter()
        .find(|e| e.event_type == "items.snapshot" && e.subject.as_deref() == Some("1"))
        .context("row 1")?
        .data
        .to_value();
    // The snapshot reads through SQL, the stream through the binlog: the same shapes.
    assert_eq!(
        first["new"],
        json!({"id": 1, "name": "n1", "at": "2024-01-02 03:04:05.250+00", "d": "2024-05-06 07:08:09"})
    );
    let update = events
        .iter()
        .find(|e| e.event_type == "items.updated")
        .context("update")?
        .data
        .to_value();
    assert_eq!(
        update["old"], first["new"],
        "stream and snapshot agree on every value"
    );
    running.stop().await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_of_the_same_name_in_two_databases_of_one_server_both_stream() -> Result<()> {
    // Named locks are server-wide: a lease named after the capture alone made the second
    // service's capture stand by behind the first's for as long as that one ran.
    let test = "captures_of_the_same_name_in_two_databases_of_one_server_both_stream";
    let (Some(a), Some(b)) = (TestDb::create_or_skip(test), TestDb::create_or_skip(test)) else {
        return Ok(());
    };
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let mut running = Vec::new();
    for (db, dir) in [&a, &b].into_iter().zip(&dirs) {
        db.sql("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20));")?;
        let broker = broker(dir)?;
        let base = config(&db.url());
        assert_eq!(base.lease_lock(), format!("tributary-cdc:{}.cdc", db.name));
        let cfg = base
            .clone()
            .with_tables(TableCapture::only(vec![base.table("t")]));
        running.push((Running::start(cfg, broker.clone())?, broker));
        wait_streaming(|q| db.sql(q)).await?;
    }
    a.sql("INSERT INTO t VALUES (1, 'in a');")?;
    b.sql("INSERT INTO t VALUES (1, 'in b');")?;
    for ((_, broker), v) in running.iter().zip(["in a", "in b"]) {
        let stored = wait_for(broker.as_ref(), "t", 1).await?;
        assert_eq!(envelope(&stored[0]).data.to_value()["new"]["v"], v);
    }
    for (capture, _) in running {
        capture.stop().await??;
    }
    Ok(())
}

/// Starts a capture of `t` on `server` and waits until it streams.
async fn capture_on(
    server: &PrivateMariaDb,
    dir: &tempfile::TempDir,
) -> Result<(Running, std::sync::Arc<tributary_sqlite::SqliteBroker>)> {
    let broker = broker(dir)?;
    let base = config(&server.url("test"));
    let cfg = base
        .clone()
        .with_tables(TableCapture::only(vec![base.table("t")]));
    let running = Running::start(cfg, broker.clone())?;
    wait_streaming(|q| server.sql("test", q)).await?;
    Ok((running, broker))
}

fn says_resnapshot(error: &BinlogError) -> bool {
    error
        .to_string()
        .contains("tributary cdc --resnapshot --slot cdc")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guards_stop_the_capture_loudly_with_the_operator_command() -> Result<()> {
    let Some(mut server) = PrivateMariaDb::start_or_skip(
        "guards_stop_the_capture_loudly_with_the_operator_command",
        &[],
    ) else {
        return Ok(());
    };
    server.sql(
        "test",
        "CREATE TABLE t (id INT PRIMARY KEY, v INT); CREATE TABLE idle (id INT);",
    )?;
    let dir = tempfile::tempdir()?;

    // An idle capture's stored position keeps moving with other tables' transactions.
    let (running, broker) = capture_on(&server, &dir).await?;
    server.sql("test", "INSERT INTO t VALUES (1, 1);")?;
    wait_for(broker.as_ref(), "t", 1).await?;
    let stored = || {
        server.sql(
            "test",
            "SELECT gtid_position FROM tributary_cdc_binlog WHERE capture = 'cdc'",
        )
    };
    let before = stored()?;
    server.sql(
        "test",
        "INSERT INTO idle VALUES (1); INSERT INTO idle VALUES (2);",
    )?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stored()? == before {
        ensure!(
            std::time::Instant::now() < deadline,
            "the idle capture's position did not move from {before}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A session that logs a captured table's change as a statement.
    server.sql(
        "test",
        "SET SESSION binlog_format = 'STATEMENT'; INSERT INTO t VALUES (2, 2);",
    )?;
    let ended = running.ended(Duration::from_secs(20)).await?;
    match ended {
        Err(error @ BinlogError::CannotFollow { .. }) => {
            assert!(says_resnapshot(&error), "{error}")
        }
        other => panic!("a statement-logged change must stop the capture: {other:?}"),
    }

    // binlog_format = STATEMENT for everyone.
    server.sql("test", "SET GLOBAL binlog_format = 'STATEMENT';")?;
    let base = config(&server.url("test"));
    let cfg = base
        .clone()
        .with_tables(TableCapture::only(vec![base.table("t")]));
    let running = Running::start(cfg.clone(), broker.clone())?;
    match running.ended(Duration::from_secs(20)).await? {
        Err(error @ BinlogError::ServerSettings { .. }) => {
            assert!(
                says_resnapshot(&error) && error.to_string().contains("binlog_format"),
                "{error}"
            );
        }
        other => panic!("binlog_format=STATEMENT must stop the capture: {other:?}"),
    }
    server.sql("test", "SET GLOBAL binlog_format = 'ROW';")?;
    tributary_cdc::resnapshot_binlog(&cfg).await?;

    // The binlog purged past the stored position.
    let (running, _) = capture_on(&server, &dir).await?;
    running.stop().await??;
    server.sql(
        "test",
        "INSERT INTO t VALUES (3, 3); FLUSH BINARY LOGS; INSERT INTO t VALUES (4, 4); FLUSH BINARY LOGS;",
    )?;
    let last = server.sql("", "SHOW MASTER STATUS")?;
    let file = last.split('\t').next().context("file")?.to_owned();
    server.sql("", &format!("PURGE BINARY LOGS TO '{file}'"))?;
    let running = Running::start(cfg.clone(), broker.clone())?;
    match running.ended(Duration::from_secs(20)).await? {
        Err(error @ BinlogError::BinlogPurged { .. }) => {
            assert!(says_resnapshot(&error), "{error}")
        }
        other => panic!("a purged binlog must stop the capture: {other:?}"),
    }
    tributary_cdc::resnapshot_binlog(&cfg).await?;

    // A normal resume after older binlogs were purged works.
    let (running, _) = capture_on(&server, &dir).await?;
    running.stop().await??;
    server.sql("test", "INSERT INTO t VALUES (10, 10);")?;
    let running = Running::start(cfg.clone(), broker.clone())?;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !read_topic(broker.as_ref(), "t")
        .await?
        .iter()
        .any(|d| envelope(d).subject.as_deref() == Some("10"))
    {
        ensure!(
            std::time::Instant::now() < deadline,
            "the change after a resume never arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.stop().await??;

    // The server's GTID domain changed.
    server.sql(
        "test",
        "SET GLOBAL gtid_domain_id = 7; SET SESSION gtid_domain_id = 7; INSERT INTO t VALUES (5, 5);",
    )?;
    let running = Running::start(cfg.clone(), broker.clone())?;
    match running.ended(Duration::from_secs(20)).await? {
        Err(error @ BinlogError::GtidDomainChanged { .. }) => {
            assert!(says_resnapshot(&error), "{error}")
        }
        other => panic!("a new GTID domain must stop the capture: {other:?}"),
    }
    server.kill();
    Ok(())
}
