//! The in-memory database and broker pass the messaging conformance suite.

use std::sync::Arc;

use tributary_core::{InMemoryBroker, InMemoryDatabase};
use tributary_testkit::messaging::MessagingFixture;

async fn make() -> Option<MessagingFixture> {
    Some(MessagingFixture {
        broker: Arc::new(InMemoryBroker::default()),
        new_database: Box::new(|| Box::pin(async { Arc::new(InMemoryDatabase::new()) as _ })),
        guard: Box::new(()),
    })
}

tributary_testkit::messaging_conformance!(paused: make);
