//! SQLite service databases and the embedded broker against the messaging conformance suite.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tributary_sqlite::{SqliteBroker, SqliteBrokerConfig, SqliteConfig, SqliteDatabase};
use tributary_testkit::messaging::MessagingFixture;

async fn make() -> Option<MessagingFixture> {
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let config = SqliteConfig::default().with_poll_every(Duration::from_millis(100));
    let broker = SqliteBroker::open(
        dir.path().join("broker.db"),
        SqliteBrokerConfig::default().with_sqlite(config.clone()),
    )
    .expect("broker");
    let next = AtomicU32::new(0);
    let d = dir.clone();
    Some(MessagingFixture {
        broker: Arc::new(broker),
        new_database: Box::new(move || {
            let n = next.fetch_add(1, Ordering::SeqCst);
            let db = SqliteDatabase::open(d.path().join(format!("service-{n}.db")), config.clone())
                .expect("service database");
            Box::pin(async move { Arc::new(db) as _ })
        }),
        guard: Box::new(dir),
    })
}

tributary_testkit::messaging_conformance!(make);
