//! The PostgreSQL event store against the conformance suite, each check in its own schema.

mod common;

use std::sync::Arc;

use tributary_testkit::event_store::Fixture;

async fn make() -> Option<Fixture> {
    let (db, guard) = common::database("postgres event store").await?;
    Some(Fixture::with_guard(Arc::new(db.events()), guard))
}

tributary_testkit::event_store_conformance!(make);
