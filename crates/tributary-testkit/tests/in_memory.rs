//! The in-memory event store passes the same suite as the durable ones.

use std::sync::Arc;

use tributary_core::InMemoryEventStore;
use tributary_testkit::event_store::Fixture;

async fn make() -> Option<Fixture> {
    Some(Fixture::new(Arc::new(InMemoryEventStore::new())))
}

tributary_testkit::event_store_conformance!(make);
