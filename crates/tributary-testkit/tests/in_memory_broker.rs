//! The in-memory broker passes the broker conformance suite.

use std::sync::Arc;

use tributary_core::InMemoryBroker;
use tributary_testkit::broker::BrokerFixture;

async fn make() -> Option<BrokerFixture> {
    Some(BrokerFixture::new(Arc::new(InMemoryBroker::default())))
}

tributary_testkit::broker_conformance!(make);
