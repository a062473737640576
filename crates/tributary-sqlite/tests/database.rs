//! SQLite-specific behaviour: group commit, isolation of failing units, file recognition.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rusqlite::params;
use tributary_core::{
    Envelope, Error, EventStore, ExpectedVersion, Payload, Position, StreamId, StreamVersion,
};
use tributary_sqlite::{SqliteConfig, SqliteDatabase, SqliteEventStore, Synchronous};

fn open(dir: &tempfile::TempDir, name: &str) -> SqliteDatabase {
    SqliteDatabase::open(dir.path().join(name), SqliteConfig::default()).expect("open")
}

async fn make_table(db: &SqliteDatabase) {
    db.write(|tx| {
        let c = tx.connection();
        c.execute_batch("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v INTEGER)")
            .map_err(|e| Error::storage("create", e))
    })
    .await
    .unwrap();
}

async fn count(db: &SqliteDatabase) -> i64 {
    db.read(|c| {
        c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .map_err(|e| Error::storage("count", e))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_units_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir, "group.db");
    make_table(&db).await;
    let commits_before = *db.commits().borrow();
    let mut tasks = Vec::new();
    for i in 0..400 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            db.write(move |tx| {
                let c = tx.connection();
                c.execute(
                    "INSERT INTO t (k, v) VALUES (?1, ?2)",
                    params![format!("k{i}"), i],
                )
                .map_err(|e| Error::storage("insert", e))
            })
            .await
            .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let commits = *db.commits().borrow() - commits_before;
    assert_eq!(count(&db).await, 400);
    assert!(
        commits < 400,
        "400 concurrent units took {commits} commits: no group commit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_or_panicking_unit_rolls_back_alone() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir, "isolation.db");
    make_table(&db).await;
    let ok_units = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..300 {
        let db = db.clone();
        let ok_units = ok_units.clone();
        tasks.push(tokio::spawn(async move {
            let result = db
                .write(move |tx| {
                    let c = tx.connection();
                    c.execute(
                        "INSERT INTO t (k, v) VALUES (?1, ?2)",
                        params![format!("k{i}"), i],
                    )
                    .map_err(|e| Error::storage("insert", e))?;
                    match i % 3 {
                        0 => Ok(()),
                        1 => Err(Error::invalid("this unit refuses")),
                        _ => panic!("unit {i} panics after writing"),
                    }
                })
                .await;
            match (i % 3, result) {
                (0, Ok(())) => {
                    ok_units.fetch_add(1, Ordering::SeqCst);
                }
                (1, Err(Error::InvalidInput { .. })) => {}
                (2, Err(Error::Panicked { message, .. })) => {
                    assert!(message.contains("panics after writing"));
                }
                (kind, other) => panic!("unit kind {kind} got {other:?}"),
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(ok_units.load(Ordering::SeqCst), 100);
    assert_eq!(
        count(&db).await,
        100,
        "only the successful units' rows are stored"
    );
    // The writer thread survived the panics.
    db.write(|_| Ok::<_, Error>(())).await.unwrap();
}

#[tokio::test]
async fn events_survive_closing_and_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("durable.db");
    let stream = StreamId::new("s-1").unwrap();
    {
        let db = SqliteDatabase::open(
            &path,
            SqliteConfig::default().with_synchronous(Synchronous::Full),
        )
        .unwrap();
        let store = SqliteEventStore::new(db);
        let e = Envelope::new("t", "E", Payload::from_json_str("{}").unwrap());
        store
            .append(&stream, ExpectedVersion::NoStream, vec![e])
            .await
            .unwrap();
    }
    // Dropping the last handle joined its writer thread: the file is closed now.
    let store =
        SqliteEventStore::new(SqliteDatabase::open(&path, SqliteConfig::default()).unwrap());
    assert_eq!(
        store.stream_version(&stream).await.unwrap(),
        StreamVersion::new(1)
    );
    assert_eq!(store.read_all(Position::START, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn dropping_the_last_handle_closes_the_file_before_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("closed.db");
    let wal = dir.path().join("closed.db-wal");
    for round in 0..20 {
        let store =
            SqliteEventStore::new(SqliteDatabase::open(&path, SqliteConfig::default()).unwrap());
        let e = Envelope::new("t", "E", Payload::from_json_str("{}").unwrap());
        store
            .append(
                &StreamId::new(format!("s-{round}")).unwrap(),
                ExpectedVersion::NoStream,
                vec![e],
            )
            .await
            .unwrap();
        assert!(
            wal.exists(),
            "WAL mode keeps a -wal file while the database is open"
        );
        drop(store);
        // SQLite checkpoints and deletes the -wal file when its last connection closes: gone
        // at once means the writer thread had closed its connection when the drop returned.
        assert!(
            !wal.exists(),
            "round {round}: the writer still held the file after the drop"
        );
    }
}

#[tokio::test]
async fn opening_the_same_file_twice_shares_one_writer() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir, "shared.db");
    let b = open(&dir, "shared.db");
    make_table(&a).await;
    let before = *b.commits().borrow();
    a.write(|tx| {
        let c = tx.connection();
        c.execute("INSERT INTO t VALUES ('x', 1)", [])
            .map(|_| ())
            .map_err(|e| Error::storage("i", e))
    })
    .await
    .unwrap();
    assert_eq!(
        *b.commits().borrow(),
        before + 1,
        "b sees a's commit notification"
    );
}

#[test]
fn a_foreign_sqlite_file_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("foreign.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE customers (id INTEGER PRIMARY KEY); INSERT INTO customers VALUES (1);",
        )
        .unwrap();
    }
    let err = SqliteDatabase::open(&path, SqliteConfig::default()).unwrap_err();
    assert!(
        matches!(&err, Error::Storage { reason, .. } if reason.contains("not a Tributary database")),
        "got {err}"
    );
    let c = rusqlite::Connection::open(&path).unwrap();
    let n: i64 = c
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1, "nothing was added to the foreign file");
}

/// Every entry of `dir` with its bytes and modification time.
fn snapshot(dir: &std::path::Path) -> Vec<(String, Vec<u8>, std::time::SystemTime)> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
                meta.modified().unwrap(),
            )
        })
        .collect();
    entries.sort();
    entries
}

#[test]
fn another_applications_file_in_delete_mode_is_refused_before_anything_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.db");
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        let mode: String = c
            .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "delete");
        c.execute_batch(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);
             INSERT INTO users (name) VALUES ('ada'), ('grace');",
        )
        .unwrap();
    }
    let before = snapshot(dir.path());
    assert_eq!(before.len(), 1);
    let service = SqliteDatabase::open(&path, SqliteConfig::default()).unwrap_err();
    let Err(broker) = tributary_sqlite::SqliteBroker::open(&path, Default::default()) else {
        panic!("the broker log opened another application's file");
    };
    for err in [service, broker] {
        let message = err.to_string();
        assert!(
            message.contains("not a Tributary database")
                && message.contains(&path.display().to_string())
                && message.contains("users"),
            "names the file and what it holds: {message}"
        );
    }
    // The same bytes (so still journal mode delete), the same mtime, no -wal or -shm beside it.
    assert_eq!(snapshot(dir.path()), before);
    let c = rusqlite::Connection::open(&path).unwrap();
    let mode: String = c
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete");
}

#[test]
fn inspecting_a_file_changes_nothing_and_tells_what_it_holds() {
    use tributary_sqlite::{SqliteDatabaseKind, SqliteFileState, inspect};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("service.db");
    let kind = SqliteDatabaseKind::Service;
    assert_eq!(inspect(&path, kind).unwrap(), SqliteFileState::Absent);
    assert!(snapshot(dir.path()).is_empty(), "inspect creates nothing");
    std::fs::write(&path, b"").unwrap();
    assert_eq!(inspect(&path, kind).unwrap(), SqliteFileState::Empty);
    std::fs::remove_file(&path).unwrap();
    drop(SqliteDatabase::open(&path, SqliteConfig::default()).unwrap());
    let state = inspect(&path, kind).unwrap();
    assert!(state.is_current(kind), "{state:?}");
    let err = inspect(&path, SqliteDatabaseKind::Broker).unwrap_err();
    assert!(err.to_string().contains("not a broker database"), "{err}");
    // A data directory that is a regular file is named as such.
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let err = inspect(&file.join("orders.db"), kind).unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("{} is not a directory", file.display())),
        "{err}"
    );
    let err = SqliteDatabase::open(file.join("orders.db"), SqliteConfig::default()).unwrap_err();
    assert!(err.to_string().contains("is not a directory"), "{err}");
}

#[test]
fn a_file_that_is_not_sqlite_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.db");
    std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
    let err = SqliteDatabase::open(&path, SqliteConfig::default()).unwrap_err();
    assert!(
        matches!(&err, Error::Storage { reason, .. } if reason.contains("not a SQLite database")),
        "got {err}"
    );
}

#[test]
fn a_newer_schema_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("newer.db");
    drop(SqliteDatabase::open(&path, SqliteConfig::default()).unwrap());
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", 9999).unwrap();
    }
    let err = SqliteDatabase::open(&path, SqliteConfig::default()).unwrap_err();
    assert!(
        matches!(&err, Error::Storage { reason, .. } if reason.contains("newer")),
        "got {err}"
    );
}

#[tokio::test]
async fn events_cannot_be_deleted_so_positions_are_never_reused() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir, "append_only.db");
    let store = SqliteEventStore::new(db.clone());
    let s = StreamId::new("s").unwrap();
    let e = || Envelope::new("t", "E", Payload::from_json_str("{}").unwrap());
    store
        .append(&s, ExpectedVersion::Any, vec![e(), e()])
        .await
        .unwrap();
    let err = db
        .write(|tx| {
            let c = tx.connection();
            c.execute_batch(
                "DELETE FROM events WHERE position = (SELECT max(position) FROM events)",
            )
            .map_err(|e| Error::storage("delete", e))
        })
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("append-only"), "got {err:?}");
    let out = store
        .append(&s, ExpectedVersion::Any, vec![e()])
        .await
        .unwrap();
    assert_eq!(out.last_position, Position::new(3));
}

#[tokio::test]
async fn oversized_events_are_refused_with_the_configured_limit() {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteDatabase::open(
        dir.path().join("small.db"),
        SqliteConfig::default().with_max_event_bytes(1000),
    )
    .unwrap();
    let store = SqliteEventStore::new(db);
    let e = Envelope::new("t", "E", Payload::from_value(&"z".repeat(2000)).unwrap());
    let err = store
        .append(&StreamId::new("s").unwrap(), ExpectedVersion::Any, vec![e])
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::TooLarge { limit: 1000, .. }),
        "got {err:?}"
    );
}

#[tokio::test]
async fn a_damaged_event_row_is_a_decode_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir, "damaged.db");
    let store = SqliteEventStore::new(db.clone());
    let e = Envelope::new("t", "E", Payload::from_json_str("{}").unwrap());
    store
        .append(&StreamId::new("s").unwrap(), ExpectedVersion::Any, vec![e])
        .await
        .unwrap();
    // The database refuses to change events; damage it the way a disk or a tool would.
    let refused = db
        .write(|tx| {
            let c = tx.connection();
            c.execute_batch("UPDATE events SET data = 'x'")
                .map_err(|e| Error::storage("update", e))
        })
        .await
        .unwrap_err();
    assert!(
        format!("{refused:?}").contains("append-only"),
        "got {refused:?}"
    );
    db.write(|tx| {
        let c = tx.connection();
        c.execute_batch(
            "DROP TRIGGER events_are_append_only_update;
             UPDATE events SET data = 'not json', event_id = x'01';",
        )
        .map_err(|e| Error::storage("damage", e))
    })
    .await
    .unwrap();
    let err = store.read_all(Position::START, 10).await.unwrap_err();
    assert!(matches!(err, Error::Decode { .. }), "got {err:?}");
}

#[tokio::test]
async fn corruption_a_read_meets_after_open_is_reported_as_the_databases_damage() {
    use tributary_core::{Database, UnitOfWorkExt};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("damaged.db");
    let ids: Vec<String> = (0..300).map(|i| format!("doc-{i:04}")).collect();
    {
        let db: Arc<dyn Database> = Arc::new(open(&dir, "damaged.db"));
        for chunk in ids.chunks(50) {
            let chunk = chunk.to_vec();
            db.transact(move |unit| {
                Box::pin(async move {
                    for id in &chunk {
                        let body = serde_json::json!({"id": id, "padding": "x".repeat(200)});
                        unit.put_as("docs", id, &body).await?;
                    }
                    Ok::<_, Error>(())
                })
            })
            .await
            .unwrap();
        }
    } // the last handle closes the file: its pages are in the file itself now

    // Opened again, the file passes the check at open; then every page but the first (the
    // header and the start of the schema) is overwritten, as a failing disk would. No
    // connection of this process has read the documents' pages yet.
    let db = open(&dir, "damaged.db");
    assert_eq!(db.damage(), None, "sound when opened");
    tributary_testkit::files::overwrite_all_but_the_first_page(&path, 8);
    let dyn_db: &dyn Database = &db;
    let mut failures = 0;
    for id in &ids {
        match dyn_db.get_document("docs", id).await {
            Ok(_) => {}
            Err(e) => {
                assert!(matches!(e, Error::Storage { .. }), "{e:?}");
                failures += 1;
            }
        }
    }
    assert!(failures > 0, "reads of the overwritten pages fail");
    let damage = Database::damage(&db).expect("the damage is reported");
    assert!(
        damage.contains("damaged.db") && damage.contains("corrupted"),
        "{damage}"
    );
}

#[tokio::test]
async fn errors_that_are_not_corruption_are_not_reported_as_damage() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir, "sound.db");
    let failed = db
        .read(|c| {
            c.query_row("SELECT * FROM no_such_table", [], |r| r.get::<_, i64>(0))
                .map_err(|e| Error::storage("reading a missing table", e))
        })
        .await;
    assert!(failed.is_err());
    assert_eq!(db.damage(), None);
}

#[tokio::test]
async fn a_duplicate_key_of_the_services_own_table_is_invalid_input_not_a_storage_problem() {
    use tributary_core::Database;
    use tributary_sqlite::SqliteUnitExt;
    let dir = tempfile::tempdir().unwrap();
    let sqlite = open(&dir, "constraint.db");
    make_table(&sqlite).await;
    let db: Arc<dyn Database> = Arc::new(sqlite);
    let insert = || {
        db.transact(|unit| {
            Box::pin(async move {
                unit.sqlite()?
                    .connection()
                    .execute("INSERT INTO t (k, v) VALUES ('a', 1)", [])?;
                Ok::<_, Error>(())
            })
        })
    };
    insert().await.unwrap();
    let err = insert().await.unwrap_err();
    // The same unit fails the same way again: not retried, and an application answers it
    // as a refusal (a 4xx), not as a broken database.
    assert!(
        matches!(&err, Error::InvalidInput { reason } if reason.contains("constraint")),
        "got {err:?}"
    );
    assert!(!err.is_retryable());
}
