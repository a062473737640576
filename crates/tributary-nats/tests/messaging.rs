//! The messaging conformance suite (relay, consumers with inbox, dead letters, rebuilds) with
//! NATS JetStream as the broker and in-memory service databases: the point is the broker.

mod common;

use std::sync::Arc;

use tributary_core::InMemoryDatabase;
use tributary_nats::NatsBroker;
use tributary_testkit::messaging::MessagingFixture;

async fn make() -> Option<MessagingFixture> {
    let url = common::shared_server("NATS messaging conformance")?;
    let broker = NatsBroker::connect(common::test_config(url))
        .await
        .expect("connect to the shared NATS server");
    Some(MessagingFixture {
        broker: Arc::new(broker.clone()),
        new_database: Box::new(|| Box::pin(async { Arc::new(InMemoryDatabase::new()) as _ })),
        guard: Box::new(common::DeleteStreams(broker)),
    })
}

tributary_testkit::messaging_conformance!(make);
