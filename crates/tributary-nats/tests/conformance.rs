//! The broker conformance suite against the shared NATS server, each test under a stream
//! prefix of its own (its streams are deleted afterwards).

mod common;

use std::sync::Arc;

use tributary_nats::NatsBroker;
use tributary_testkit::broker::BrokerFixture;

async fn make() -> Option<BrokerFixture> {
    let url = common::shared_server("NATS broker conformance")?;
    let broker = NatsBroker::connect(common::test_config(url))
        .await
        .expect("connect to the shared NATS server");
    Some(BrokerFixture::with_guard(
        Arc::new(broker.clone()),
        common::DeleteStreams(broker),
    ))
}

tributary_testkit::broker_conformance!(make);
