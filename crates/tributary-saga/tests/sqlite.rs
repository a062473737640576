//! The saga scenarios on the embedded backend: SQLite service databases (the orchestrator's
//! and the participants') and the embedded broker log, on the wall clock.

mod common;

use std::sync::Arc;
use std::time::Duration;

use tributary_core::Database;
use tributary_sqlite::{SqliteBroker, SqliteBrokerConfig, SqliteConfig, SqliteDatabase};

async fn make() -> Option<common::Fixture> {
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let config = SqliteConfig::default().with_poll_every(Duration::from_millis(50));
    let broker = SqliteBroker::open(
        dir.path().join("broker.db"),
        SqliteBrokerConfig::default().with_sqlite(config.clone()),
    )
    .expect("broker");
    let participants =
        SqliteDatabase::open(dir.path().join("participants.db"), config.clone()).expect("db");
    let path = dir.path().join("orders.db");
    Some(common::Fixture {
        broker: Arc::new(broker),
        participant_db: Arc::new(participants),
        // Each call opens the file again, as a restarted process does.
        open_orchestrator_db: Box::new(move || {
            let db = SqliteDatabase::open(&path, config.clone()).expect("orchestrator database");
            Box::pin(async move { Arc::new(db) as Arc<dyn Database> })
        }),
        guard: Box::new(dir),
    })
}

saga_scenarios!(make, #[tokio::test(flavor = "multi_thread", worker_threads = 4)]);
