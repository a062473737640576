//! The SQLite event store against the conformance suite.

use std::sync::Arc;

use tributary_sqlite::{SqliteConfig, SqliteDatabase, SqliteEventStore};
use tributary_testkit::event_store::Fixture;

async fn make() -> Option<Fixture> {
    let dir = tempfile::tempdir().expect("temp dir");
    let db =
        SqliteDatabase::open(dir.path().join("events.db"), SqliteConfig::default()).expect("open");
    Some(Fixture::with_guard(
        Arc::new(SqliteEventStore::new(db)),
        dir,
    ))
}

tributary_testkit::event_store_conformance!(make);
