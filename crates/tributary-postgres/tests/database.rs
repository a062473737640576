//! What the PostgreSQL backend promises beyond the conformance suites: row locks and
//! conflicts inside units, the raw transaction, savepoints, migrations, notifications,
//! leases and lag figures.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::Connection;
use tributary_core::backend::{InboxEntry, WorkOrigin};
use tributary_core::{
    Database, Envelope, Error, EventStore, ExpectedVersion, Payload, Position, RelaySource,
    StreamId, Topic, UnitOfWorkExt,
};
use tributary_postgres::{PgConfig, PgDatabase, PgUnitExt, TxPosition, latest_version};

fn origin() -> WorkOrigin {
    WorkOrigin::Task("a PostgreSQL test".into())
}

/// Taken by the tests that keep a transaction open on purpose or keep opening them, so that the
/// lag test sees its own long transaction as the oldest one (the horizon is server-wide).
static LONG_TRANSACTIONS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn event(n: u64) -> Envelope {
    Envelope::new(
        "test",
        "Numbered",
        Payload::from_value(&json!({ "n": n })).expect("json"),
    )
}

async fn eventually(within: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_read_modify_writes_lose_no_update() {
    let Some((db, _guard)) = common::database("postgres units").await else {
        return;
    };
    let db: Arc<dyn Database> = Arc::new(db);
    db.transact(|unit| Box::pin(async move { unit.put_as("counters", "c", &0u64).await }))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            let mut lost_races = 0u32;
            for _ in 0..10 {
                // A unit that loses the race is rolled back and reports a retryable conflict:
                // run it again, as the consumer runtime does.
                loop {
                    let done = db
                        .transact(|unit| {
                            Box::pin(async move {
                                let n: u64 = unit.get_as("counters", "c").await?.unwrap_or(0);
                                // Widen the window between read and write.
                                tokio::time::sleep(Duration::from_millis(1)).await;
                                unit.put_as("counters", "c", &(n + 1)).await
                            })
                        })
                        .await;
                    match done {
                        Ok(()) => break,
                        Err(Error::DocumentConflict { .. }) => lost_races += 1,
                        Err(e) => panic!("only a lost race may fail a unit here: {e:?}"),
                    }
                }
            }
            lost_races
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n: u64 = db
        .get_document("counters", "c")
        .await
        .unwrap()
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(
        n, 60,
        "every increment that committed read the previous one's result"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn units_touching_the_same_documents_in_opposite_orders_conflict_instead_of_deadlocking() {
    let Some((db, _guard)) = common::database("postgres units").await else {
        return;
    };
    let db: Arc<dyn Database> = Arc::new(db);
    db.transact(|unit| {
        Box::pin(async move {
            unit.put_as("docs", "a", &0u64).await?;
            unit.put_as("docs", "b", &0u64).await
        })
    })
    .await
    .unwrap();
    // Both units read their first document, wait until the other has too, then read and
    // write the other one: with read locks this is the textbook deadlock.
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let unit = |first: &'static str, second: &'static str| {
        let (db, barrier) = (db.clone(), barrier.clone());
        tokio::spawn(async move {
            db.transact(move |unit| {
                Box::pin(async move {
                    let x: u64 = unit.get_as("docs", first).await?.unwrap_or(0);
                    barrier.wait().await;
                    let y: u64 = unit.get_as("docs", second).await?.unwrap_or(0);
                    unit.put_as("docs", first, &(x + 1)).await?;
                    unit.put_as("docs", second, &(y + 1)).await
                })
            })
            .await
        })
    };
    let (one, other) = (unit("a", "b"), unit("b", "a"));
    let outcomes = [one.await.unwrap(), other.await.unwrap()];
    let committed = outcomes.iter().filter(|o| o.is_ok()).count();
    let lost = outcomes
        .iter()
        .filter(|o| matches!(o, Err(Error::DocumentConflict { .. })))
        .count();
    assert_eq!(
        (committed, lost),
        (1, 1),
        "one commits, the other loses the race (not a deadlock): {outcomes:?}"
    );
    for id in ["a", "b"] {
        assert_eq!(
            db.get_document_as::<u64>("docs", id).await.unwrap(),
            Some(1)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn creating_a_document_another_unit_created_meanwhile_is_a_retryable_conflict() {
    let _long = LONG_TRANSACTIONS.lock().await;
    let Some((db, _guard)) = common::database("postgres units").await else {
        return;
    };
    let db: Arc<dyn Database> = Arc::new(db);
    let (read_tx, read_rx) = tokio::sync::oneshot::channel::<()>();
    let (created_tx, created_rx) = tokio::sync::oneshot::channel::<()>();
    let first = {
        let db = db.clone();
        tokio::spawn(async move {
            db.transact(move |unit| {
                Box::pin(async move {
                    assert!(unit.get("users", "ada").await?.is_none());
                    read_tx.send(()).unwrap();
                    created_rx.await.unwrap();
                    unit.put_as("users", "ada", &json!({"by": "first"})).await
                })
            })
            .await
        })
    };
    read_rx.await.unwrap();
    db.transact(|unit| {
        Box::pin(async move {
            assert!(unit.get("users", "ada").await?.is_none());
            unit.put_as("users", "ada", &json!({"by": "second"})).await
        })
    })
    .await
    .unwrap();
    created_tx.send(()).unwrap();
    let err = first.await.unwrap().unwrap_err();
    assert!(
        matches!(&err, Error::DocumentConflict { collection, id } if collection == "users" && id == "ada")
            && err.is_retryable(),
        "got {err:?}"
    );
    let doc = db.get_document("users", "ada").await.unwrap().unwrap();
    assert_eq!(
        doc.to_value()["by"],
        "second",
        "the winner's document stays"
    );
    // A blind put (no read first) simply replaces.
    db.transact(|unit| {
        Box::pin(async move { unit.put_as("users", "ada", &json!({"by": "blind"})).await })
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_raw_transaction_commits_and_rolls_back_with_the_unit() {
    let Some((pg, _guard)) = common::database("postgres units").await else {
        return;
    };
    let table = format!("\"{}\".my_rows", pg.schema());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {table} (n int PRIMARY KEY)"
    )))
    .execute(pg.pool())
    .await
    .unwrap();
    let db: Arc<dyn Database> = Arc::new(pg.clone());
    let insert = format!("INSERT INTO {table} (n) VALUES ($1)");
    for (n, commit) in [(1, true), (2, false)] {
        let insert = insert.clone();
        let topic = Topic::new("Rows").unwrap();
        let result = db
            .transact(move |unit| {
                Box::pin(async move {
                    let pg = unit.postgres()?;
                    assert!(pg.schema().starts_with("tributary_test_"));
                    sqlx::query(sqlx::AssertSqlSafe(insert))
                        .bind(n)
                        .execute(pg.connection().await?)
                        .await?;
                    unit.publish(&topic, event(n as u64)).await?;
                    if commit {
                        Ok(())
                    } else {
                        Err(Error::invalid("changed my mind"))
                    }
                })
            })
            .await;
        assert_eq!(result.is_ok(), commit);
    }
    let rows: Vec<i32> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT n FROM {table} ORDER BY n"
    )))
    .fetch_all(pg.pool())
    .await
    .unwrap();
    assert_eq!(rows, vec![1], "the committed unit's row only");
    let batch = pg.outbox_source().read_batch(10).await.unwrap().unwrap();
    assert_eq!(batch.messages.len(), 1, "and its event only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_raw_transaction_sees_the_events_the_unit_published_before() {
    let Some((pg, _guard)) = common::database("postgres units").await else {
        return;
    };
    let count = format!("SELECT count(*) FROM \"{}\".outbox", pg.schema());
    let db: Arc<dyn Database> = Arc::new(pg.clone());
    let topic = Topic::new("Rows").unwrap();
    let seen = db
        .transact(move |unit| {
            Box::pin(async move {
                for n in 0..3 {
                    unit.publish(&topic, event(n)).await?;
                }
                let seen: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(count))
                    .fetch_one(unit.postgres()?.connection().await?)
                    .await?;
                unit.publish(&topic, event(3)).await?;
                Ok::<_, Error>(seen)
            })
        })
        .await
        .unwrap();
    assert_eq!(
        seen, 3,
        "events held by the unit are written before raw SQL runs"
    );
    let batch = pg.outbox_source().read_batch(10).await.unwrap().unwrap();
    let ids: Vec<_> = batch.messages.iter().map(|m| m.id).collect();
    assert_eq!(
        ids.len(),
        4,
        "and the one published after it is written at commit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_unit_that_ignores_a_failed_statement_is_rolled_back_not_half_committed() {
    let Some((pg, _guard)) = common::database("postgres units").await else {
        return;
    };
    let db: Arc<dyn Database> = Arc::new(pg);
    let err = db
        .transact(|unit| {
            Box::pin(async move {
                unit.put_as("docs", "a", &1).await?;
                // A statement of the service's own fails, and the unit ignores the error.
                let failed = sqlx::query("SELECT 1 / 0")
                    .execute(unit.postgres()?.connection().await?)
                    .await;
                assert!(failed.is_err());
                Ok::<_, Error>(())
            })
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Storage { .. }), "got {err:?}");
    assert!(
        db.get_document("docs", "a").await.unwrap().is_none(),
        "nothing of the unit was committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn savepoints_undo_only_the_nested_work_even_after_a_failed_statement() {
    let Some((pg, _guard)) = common::database("postgres units").await else {
        return;
    };
    let db: Arc<dyn Database> = Arc::new(pg);
    db.transact_consumer(origin(), |tx| {
        Box::pin(async move {
            tx.put_as("docs", "before", &1).await?;
            tx.savepoint().await?;
            tx.put_as("docs", "inside", &2).await?;
            let failed = sqlx::query("SELECT 1 / 0")
                .execute(tx.postgres()?.connection().await?)
                .await;
            assert!(failed.is_err(), "a failed statement aborts the transaction");
            tx.rollback_savepoint().await?;
            tx.savepoint().await?;
            tx.put_as("docs", "kept", &3).await?;
            tx.release_savepoint().await?;
            tx.put_as("docs", "after", &4).await
        })
    })
    .await
    .unwrap();
    for (id, present) in [
        ("before", true),
        ("inside", false),
        ("kept", true),
        ("after", true),
    ] {
        assert_eq!(
            db.get_document("docs", id).await.unwrap().is_some(),
            present,
            "{id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_append_that_loses_a_race_in_a_unit_conflicts_and_leaves_the_unit_usable() {
    let _long = LONG_TRANSACTIONS.lock().await;
    let Some((pg, _guard)) = common::database("postgres units").await else {
        return;
    };
    let db: Arc<dyn Database> = Arc::new(pg.clone());
    let stream = StreamId::new("race-1").unwrap();
    let (appended_tx, appended_rx) = tokio::sync::oneshot::channel::<()>();
    let (other_tx, other_rx) = tokio::sync::oneshot::channel::<()>();
    let s = stream.clone();
    let slow = {
        let db = db.clone();
        tokio::spawn(async move {
            db.transact(move |unit| {
                Box::pin(async move {
                    unit.append(&s, ExpectedVersion::NoStream, vec![event(1)])
                        .await?;
                    appended_tx.send(()).unwrap();
                    other_rx.await.unwrap();
                    Ok::<_, Error>(())
                })
            })
            .await
        })
    };
    appended_rx.await.unwrap();
    let s = stream.clone();
    let racer =
        {
            let db = db.clone();
            tokio::spawn(async move {
                db.transact(move |unit| Box::pin(async move {
                // Blocks on the slow unit's uncommitted version 1, then loses.
                let lost = unit.append(&s, ExpectedVersion::NoStream, vec![event(2)]).await;
                let conflict =
                    matches!(lost, Err(Error::Conflict { actual, .. }) if actual.get() == 1);
                // The unit goes on and commits other work.
                unit.put_as("notes", "racer", &conflict).await?;
                Ok::<_, Error>(conflict)
            }))
            .await
            })
        };
    tokio::time::sleep(Duration::from_millis(200)).await;
    other_tx.send(()).unwrap();
    slow.await.unwrap().unwrap();
    assert!(
        racer.await.unwrap().unwrap(),
        "the racer saw a conflict at version 1"
    );
    assert_eq!(
        db.get_document("notes", "racer")
            .await
            .unwrap()
            .unwrap()
            .to_value(),
        json!(true)
    );
    assert_eq!(pg.events().stream_version(&stream).await.unwrap().get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn positions_pack_the_writing_transaction_and_the_row_within_it() {
    let Some((pg, _guard)) = common::database("postgres positions").await else {
        return;
    };
    let db: Arc<dyn Database> = Arc::new(pg.clone());
    let (a, b) = (StreamId::new("a").unwrap(), StreamId::new("b").unwrap());
    let (first, second) = db
        .transact(move |unit| {
            Box::pin(async move {
                let first = unit
                    .append(&a, ExpectedVersion::Any, vec![event(1), event(2)])
                    .await?;
                let second = unit
                    .append(&b, ExpectedVersion::Any, vec![event(3)])
                    .await?;
                Ok::<_, Error>((first, second))
            })
        })
        .await
        .unwrap();
    let (p1, p2) = (
        TxPosition::from_position(first.last_position),
        TxPosition::from_position(second.last_position),
    );
    assert_eq!(p1.tx_id, p2.tx_id, "one transaction");
    assert_eq!(
        (p1.ordinal, p2.ordinal),
        (1, 2),
        "rows numbered in insert order"
    );
    let all = pg.events().read_all(Position::START, 10).await.unwrap();
    let ordinals: Vec<u32> = all
        .iter()
        .map(|e| TxPosition::from_position(e.position).ordinal)
        .collect();
    assert_eq!(ordinals, vec![0, 1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_right_after_a_commit_returns_it_while_other_transactions_come_and_go() {
    let _long = LONG_TRANSACTIONS.lock().await;
    let Some((pg, _guard)) = common::database("postgres reads").await else {
        return;
    };
    // Short transactions with transaction ids, all the time, as on a busy server: each holds
    // the horizon back for a moment.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut churn = Vec::new();
    for i in 0..3u64 {
        let (pool, stop) = (pg.pool().clone(), stop.clone());
        churn.push(tokio::spawn(async move {
            let mut n = i;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut tx = pool.begin().await.unwrap();
                sqlx::query("SELECT pg_current_xact_id()")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                tokio::time::sleep(Duration::from_micros(500 + (n >> 33) % 3000)).await;
                tx.commit().await.unwrap();
            }
        }));
    }
    let db: Arc<dyn Database> = Arc::new(pg.clone());
    let (store, source) = (pg.events(), pg.outbox_source());
    let stream = StreamId::new("s").unwrap();
    let topic = Topic::new("T").unwrap();
    let mut next = Position::START;
    for i in 0..150 {
        let out = store
            .append(&stream, ExpectedVersion::Any, vec![event(i)])
            .await
            .unwrap();
        let read = store.read_all(next, 10).await.unwrap();
        assert_eq!(
            read.iter().map(|e| e.position).collect::<Vec<_>>(),
            vec![out.last_position],
            "round {i}: read_all returns the event just committed"
        );
        next = out.last_position.next();
        let t = topic.clone();
        db.transact(move |unit| Box::pin(async move { unit.publish(&t, event(i)).await }))
            .await
            .unwrap();
        let batch = source.read_batch(10).await.unwrap();
        assert_eq!(
            batch.as_ref().map(|b| b.messages.len()),
            Some(1),
            "round {i}: the outbox row just committed is readable"
        );
        source.mark_published(batch.unwrap().through).await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for c in churn {
        c.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pruning_the_inbox_deletes_only_entries_recorded_before_the_cutoff() {
    let Some((pg, _guard)) = common::database("postgres inbox").await else {
        return;
    };
    let db: Arc<dyn Database> = Arc::new(pg);
    let group = tributary_core::GroupName::new("g").unwrap();
    let (old, new) = (
        tributary_core::EventId::new(),
        tributary_core::EventId::new(),
    );
    let g = group.clone();
    db.transact_consumer(origin(), move |tx| {
        Box::pin(async move { tx.inbox_insert(&g, &InboxEntry::undecodable(old)).await })
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cutoff = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let g = group.clone();
    db.transact_consumer(origin(), move |tx| {
        Box::pin(async move {
            tx.inbox_insert(&g, &InboxEntry::undecodable(new)).await?;
            // Recording the same message twice is refused without breaking the unit.
            assert!(matches!(
                tx.inbox_insert(&g, &InboxEntry::undecodable(new)).await,
                Err(Error::InvalidInput { .. })
            ));
            Ok(())
        })
    })
    .await
    .unwrap();
    assert_eq!(db.prune_inbox(&group, cutoff).await.unwrap(), 1);
    let g = group.clone();
    let kept = db
        .transact_consumer(origin(), move |tx| {
            Box::pin(async move {
                Ok((
                    tx.inbox_contains(&g, &old).await?,
                    tx.inbox_contains(&g, &new).await?,
                ))
            })
        })
        .await
        .unwrap();
    assert_eq!(kept, (false, true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrations_are_recorded_once_and_reopening_is_harmless() {
    let Some((pg, _guard)) = common::database("postgres schema").await else {
        return;
    };
    let config = pg.config().clone();
    let again = PgDatabase::connect(config).await.unwrap();
    let versions: Vec<i32> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT version FROM \"{}\".tributary_migrations ORDER BY version",
        pg.schema()
    )))
    .fetch_all(again.pool())
    .await
    .unwrap();
    assert_eq!(versions, (1..=latest_version()).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_schema_from_a_newer_version_is_refused() {
    let Some((pg, _guard)) = common::database("postgres schema").await else {
        return;
    };
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO \"{}\".tributary_migrations (version, description) VALUES (99, 'future')",
        pg.schema()
    )))
    .execute(pg.pool())
    .await
    .unwrap();
    let err = PgDatabase::connect(pg.config().clone()).await.unwrap_err();
    assert!(
        matches!(&err, Error::Storage { reason, .. } if reason.contains("newer")),
        "got {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_schema_holding_the_services_tables_is_shared_but_one_with_a_clashing_name_is_refused() {
    let Some(()) = common::server("postgres schema") else {
        return;
    };
    let guard = common::SchemaGuard::new();
    // The service migrated its own tables first (as `sqlx::migrate!` would), then Tributary
    // connects to the same schema: both kinds of table live side by side.
    let config = common::config();
    guard.track(&config.schema);
    let mut conn = sqlx::PgConnection::connect(&config.url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA \"{0}\"; CREATE TABLE \"{0}\".products (sku text PRIMARY KEY); \
         CREATE TABLE \"{0}\"._sqlx_migrations (version bigint PRIMARY KEY)",
        config.schema
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let shared = PgDatabase::connect(config.clone())
        .await
        .expect("a shared schema is fine");
    drop(shared);
    PgDatabase::connect(config)
        .await
        .expect("and reconnecting too");
    // A table of the service's that has the name of one of Tributary's is never touched.
    let clash = common::config();
    guard.track(&clash.schema);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA \"{0}\"; CREATE TABLE \"{0}\".events (x int)",
        clash.schema
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let err = PgDatabase::connect(clash).await.unwrap_err();
    assert!(
        matches!(&err, Error::Storage { reason, .. } if reason.contains("events")),
        "got {err:?}"
    );
    assert!(matches!(
        PgDatabase::connect(PgConfig::default().with_schema("Not-Valid")).await,
        Err(Error::InvalidInput { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commits_made_through_another_handle_wake_readers_by_notification() {
    let _long = LONG_TRANSACTIONS.lock().await;
    let Some((pg, _guard)) = common::database("postgres notify").await else {
        return;
    };
    // Another process, as far as `pg` can tell: its own pool and listener.
    let other = PgDatabase::connect(pg.config().clone()).await.unwrap();
    let mut commits = Database::commits(&pg);
    commits.borrow_and_update();
    other
        .events()
        .append(
            &StreamId::new("s").unwrap(),
            ExpectedVersion::Any,
            vec![event(1)],
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), commits.changed())
        .await
        .expect("a NOTIFY reached the other handle")
        .unwrap();
    // Outbox rows written in an application's own transaction notify too.
    commits.borrow_and_update();
    let mut tx = other.pool().begin().await.unwrap();
    other
        .outbox()
        .publish(&mut tx, &Topic::new("T").unwrap(), &event(2))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !commits.has_changed().unwrap(),
        "nothing is announced before the commit"
    );
    tx.commit().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), commits.changed())
        .await
        .expect("the commit was announced")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_commit_listener_comes_back_after_its_connection_is_killed() {
    let Some((pg, _guard)) = common::database("postgres notify").await else {
        return;
    };
    let other = PgDatabase::connect(pg.config().clone()).await.unwrap();
    let app = format!("listen {}", pg.schema());
    let listeners = async || -> Vec<i32> {
        sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE application_name = left($1, 63)")
            .bind(&app)
            .fetch_all(other.pool())
            .await
            .unwrap()
    };
    // Both handles listen; kill them all, as a network cut or a server restart would.
    let before = listeners().await;
    assert_eq!(before.len(), 2);
    for pid in &before {
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .execute(other.pool())
            .await
            .unwrap();
    }
    // Back means listening again: a new connection is in pg_stat_activity before it has
    // sent its LISTEN, and a commit announced in that moment reaches nobody.
    let listening = async || -> Vec<i32> {
        sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE application_name = left($1, 63) \
             AND state = 'idle' AND query ILIKE 'listen%'",
        )
        .bind(&app)
        .fetch_all(other.pool())
        .await
        .unwrap()
    };
    let back = eventually(Duration::from_secs(30), async || {
        let now = listening().await;
        now.len() == 2 && now.iter().all(|p| !before.contains(p))
    })
    .await;
    assert!(back, "the listeners reconnected and listen");
    let mut commits = Database::commits(&pg);
    commits.borrow_and_update();
    other
        .events()
        .append(
            &StreamId::new("s").unwrap(),
            ExpectedVersion::Any,
            vec![event(1)],
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), commits.changed())
        .await
        .expect("notifications flow again")
        .unwrap();
}

async fn terminate_lease_connection(pg: &PgDatabase, name: &str) -> bool {
    let app = format!("lease {name}@{}", pg.schema());
    sqlx::query_scalar::<_, bool>(
        "SELECT coalesce(bool_or(pg_terminate_backend(pid)), false) FROM pg_stat_activity WHERE application_name = left($1, 63)",
    )
    .bind(app)
    .fetch_one(pg.pool())
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lease_is_exclusive_and_is_lost_with_its_connection() {
    let Some((pg, _guard)) = common::database("postgres leases").await else {
        return;
    };
    let source = pg.outbox_source();
    let first = source.try_lease().await.unwrap().expect("a free lease");
    assert!(first.is_held());
    assert!(
        source.try_lease().await.unwrap().is_none(),
        "one holder at a time"
    );
    // Another source of the same database has a lease of its own.
    let events = pg.event_store_source("x", Topic::new("T").unwrap());
    assert!(events.try_lease().await.unwrap().is_some());
    // Dropping the guard releases the lease (its keeper unlocks right away).
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    let held = loop {
        if let Some(lease) = source.try_lease().await.unwrap() {
            break lease;
        }
        assert!(Instant::now() < deadline, "a dropped lease can be taken");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The holder's connection dies (e.g. a network cut): the lease is gone and says so.
    assert!(terminate_lease_connection(&pg, "outbox").await);
    assert!(
        eventually(Duration::from_secs(5), async || !held.is_held()).await,
        "is_held turns false once the connection is lost"
    );
    assert!(
        eventually(Duration::from_secs(5), async || {
            source.try_lease().await.unwrap().is_some()
        })
        .await,
        "the server released the lock with the session"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lag_shows_rows_held_back_by_a_long_transaction_and_who_holds_them() {
    let _long = LONG_TRANSACTIONS.lock().await;
    let Some((pg, _guard)) = common::database_with(
        "postgres lag",
        common::config().with_settle_timeout(Duration::from_millis(300)),
    )
    .await
    else {
        return;
    };
    let topic = Topic::new("T").unwrap();
    let source = tributary_postgres::PgOutboxSource::new(pg.clone());
    // A transaction that wrote early and stays open.
    let mut long = pg.pool().begin().await.unwrap();
    pg.outbox()
        .publish(&mut long, &topic, &event(1))
        .await
        .unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *long)
        .await
        .unwrap();
    // A later one commits.
    let db: Arc<dyn Database> = Arc::new(pg.clone());
    let t = topic.clone();
    db.transact(move |unit| Box::pin(async move { unit.publish(&t, event(2)).await }))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let lag = source.lag().await.unwrap();
    assert_eq!((lag.readable, lag.held_back), (0, 1), "{lag:?}");
    let holder = lag.horizon_holder.expect("the holder is named");
    assert_eq!(holder.pid, pid);
    assert!(holder.transaction_age >= Duration::from_millis(100));
    assert!(lag.oldest_unread_age.is_some());
    assert!(
        source.read_batch(10).await.unwrap().is_none(),
        "the committed row waits behind the open transaction"
    );
    long.commit().await.unwrap();
    // Both rows are unread; whether they are readable yet depends on every other transaction
    // on the server, so only the total is certain.
    assert_eq!(source.lag().await.unwrap().unread(), 2);
    let batch = source.read_batch(10).await.unwrap().expect("both rows");
    assert_eq!(batch.messages.len(), 2);
    source.mark_published(batch.through).await.unwrap();
    assert_eq!(source.lag().await.unwrap().unread(), 0);
    // The event store's lag works from a reader's next position.
    let store = pg.events();
    store
        .append(
            &StreamId::new("s").unwrap(),
            ExpectedVersion::Any,
            vec![event(3)],
        )
        .await
        .unwrap();
    assert_eq!(store.lag(Position::START).await.unwrap().unread(), 1);
    let last = store.read_all(Position::START, 10).await.unwrap()[0].position;
    assert_eq!(store.lag(last.next()).await.unwrap().unread(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_raw_insert_baseline_measures_and_cleans_up() {
    let Some(()) = common::server("postgres bench") else {
        return;
    };
    let url = tributary_testkit::servers::postgres_url();
    let report = tributary_postgres::bench::raw_single_row_commits(&url, 200, 100, 2)
        .await
        .unwrap();
    assert_eq!(report.rows, 200);
    assert!(report.rows_per_sec > 0.0);
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tributary_bench_%'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(left, 0, "the baseline's schema is dropped");
}

/// The readers in (tx_id, tx_ordinal) order must walk the primary key from the cursor, not
/// sort every row past it: their output columns share the key columns' names, and an ORDER BY
/// that named those would sort (seen: the relay spending 40-90 ms per batch of 1,000).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reading_order_queries_walk_the_index_instead_of_sorting() {
    let Some((pg, _guard)) = common::database("postgres units").await else {
        return;
    };
    let db: Arc<dyn Database> = Arc::new(pg.clone());
    let topic = Topic::new("Rows").unwrap();
    for round in 0..20u64 {
        let topic = topic.clone();
        db.transact(move |unit| {
            Box::pin(async move {
                for n in 0..100 {
                    unit.publish(&topic, event(round * 100 + n)).await?;
                }
                let stream = StreamId::new(format!("s-{round}"))?;
                let events = (0..100).map(|n| event(round * 100 + n)).collect();
                unit.append(&stream, ExpectedVersion::NoStream, events)
                    .await?;
                Ok::<_, Error>(())
            })
        })
        .await
        .unwrap();
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ANALYZE \"{0}\".outbox; ANALYZE \"{0}\".events",
        pg.schema()
    )))
    .execute(pg.pool())
    .await
    .unwrap();
    let queries = [
        (
            "read_outbox",
            include_str!("../src/service/read_outbox.sql"),
            true,
        ),
        (
            "read_all",
            include_str!("../src/event_store/read_all.sql"),
            true,
        ),
        (
            "outbox_held_back",
            include_str!("../src/service/outbox_held_back.sql"),
            false,
        ),
        (
            "events_held_back",
            include_str!("../src/event_store/events_held_back.sql"),
            false,
        ),
    ];
    for (name, sql, takes_cursor) in queries {
        let sql = sql.replace("__SCHEMA__", &format!("\"{}\"", pg.schema()));
        let explain = format!("EXPLAIN (FORMAT JSON) {sql}");
        let query = sqlx::query_scalar::<_, serde_json::Value>(sqlx::AssertSqlSafe(explain));
        // A batch well below the rows past the cursor, as a relay behind a backlog reads: the
        // case the sort made slow. (With a batch as large as the planner's estimate of what
        // is left, a bitmap scan plus a sort of those few rows can cost less, and the planner
        // may rightly pick it: under load it did, once in nine stress rounds.)
        let query = if takes_cursor {
            query.bind(0i64).bind(0i32).bind(100i64)
        } else {
            query
        };
        let plan = query.fetch_one(pg.pool()).await.unwrap().to_string();
        assert!(!plan.contains("\"Sort\""), "{name} sorts: {plan}");
        assert!(
            plan.contains("Index"),
            "{name} does not use an index: {plan}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_held_write_refused_at_commit_names_the_message_that_made_it() {
    let Some((pg, _guard)) = common::database("postgres units").await else {
        return;
    };
    let db: Arc<dyn Database> = Arc::new(pg);
    db.transact(|unit| {
        Box::pin(async move {
            for id in ["a", "b", "c"] {
                unit.put_as("docs", id, &0u64).await?;
            }
            Ok::<_, Error>(())
        })
    })
    .await
    .unwrap();
    // Valid JSON that jsonb refuses (beyond numeric's range): nothing refuses it before the
    // held update is written at commit.
    let refused = Payload::from_json_str(r#"{"n":1e1000000}"#).unwrap();
    let err = db
        .transact_consumer(origin(), move |tx| {
            Box::pin(async move {
                for (message, id) in ["a", "b", "c"].into_iter().enumerate() {
                    tx.start_message(message);
                    let _: Option<u64> = tx.get_as("docs", id).await?;
                    if id == "b" {
                        tx.put("docs", id, refused.clone()).await?;
                    } else {
                        tx.put_as("docs", id, &1u64).await?;
                    }
                }
                Ok(())
            })
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Refused {
                message: Some(1),
                ..
            }
        ),
        "the second message made the refused write: {err:?}"
    );
    assert!(!err.is_retryable());
    assert_eq!(
        db.get_document_as::<u64>("docs", "a").await.unwrap(),
        Some(0),
        "nothing of the unit was committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_unit_that_only_writes_commits_its_documents_and_events_together_or_not_at_all() {
    let Some((pg, _guard)) = common::database("postgres units").await else {
        return;
    };
    let db: Arc<dyn Database> = Arc::new(pg.clone());
    let topic = Topic::new("Writes").unwrap();
    // Read nothing, put and publish: committed without a transaction of its own (one
    // statement), atomically.
    let t = topic.clone();
    db.transact(move |unit| {
        Box::pin(async move {
            unit.put_as("docs", "b", &2u64).await?;
            unit.put_as("docs", "a", &1u64).await?;
            unit.publish(&t, event(1)).await?;
            unit.publish(&t, event(2)).await
        })
    })
    .await
    .unwrap();
    assert_eq!(
        db.get_document_as::<u64>("docs", "a").await.unwrap(),
        Some(1)
    );
    let batch = pg.outbox_source().read_batch(10).await.unwrap().unwrap();
    let order: Vec<u64> = batch
        .messages
        .iter()
        .map(|m| {
            Envelope::from_json(&m.payload).unwrap().data.to_value()["n"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(order, [1, 2], "events in publish order");
    pg.outbox_source()
        .mark_published(batch.through)
        .await
        .unwrap();
    // One value the server refuses: nothing of the unit is kept.
    let refused = Payload::from_json_str(r#"{"n":1e1000000}"#).unwrap();
    let t = topic.clone();
    let err = db
        .transact(move |unit| {
            Box::pin(async move {
                unit.put_as("docs", "c", &3u64).await?;
                unit.put("docs", "d", refused).await?;
                unit.publish(&t, event(3)).await
            })
        })
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Refused { .. }), "got {err:?}");
    assert_eq!(db.get_document_as::<u64>("docs", "c").await.unwrap(), None);
    assert!(pg.outbox_source().read_batch(10).await.unwrap().is_none());
    // Deletes need more than one statement: a transaction of its own, still all or nothing.
    db.transact(|unit| {
        Box::pin(async move {
            unit.delete("docs", "a").await?;
            unit.put_as("docs", "e", &5u64).await
        })
    })
    .await
    .unwrap();
    assert_eq!(db.get_document_as::<u64>("docs", "a").await.unwrap(), None);
    assert_eq!(
        db.get_document_as::<u64>("docs", "e").await.unwrap(),
        Some(5)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_key_of_the_services_own_table_is_invalid_input_not_a_storage_problem() {
    let config = common::config();
    // The service's own table, in the test's schema (dropped with it).
    let table = format!("\"{}\".accounts", config.schema);
    let Some((pg, _guard)) = common::database_with("postgres constraint", config).await else {
        return;
    };
    let db: Arc<dyn Database> = Arc::new(pg);
    let (create, insert) = (
        format!("CREATE TABLE {table} (id text PRIMARY KEY)"),
        format!("INSERT INTO {table} VALUES ('a')"),
    );
    let first = insert.clone();
    db.transact(move |unit| {
        Box::pin(async move {
            sqlx::raw_sql(sqlx::AssertSqlSafe(create))
                .execute(unit.postgres()?.connection().await?)
                .await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(first))
                .execute(unit.postgres()?.connection().await?)
                .await?;
            Ok::<_, Error>(())
        })
    })
    .await
    .unwrap();
    let err = db
        .transact(move |unit| {
            Box::pin(async move {
                sqlx::raw_sql(sqlx::AssertSqlSafe(insert))
                    .execute(unit.postgres()?.connection().await?)
                    .await?;
                Ok::<_, Error>(())
            })
        })
        .await
        .unwrap_err();
    // The same unit fails the same way again: not retried, and an application answers it
    // as a refusal (a 4xx), not as a broken database.
    assert!(
        matches!(&err, Error::InvalidInput { reason } if reason.contains("constraint")),
        "got {err:?}"
    );
    assert!(!err.is_retryable());
}
