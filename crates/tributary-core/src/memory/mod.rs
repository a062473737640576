//! In-memory implementations for tests and examples. They keep every guarantee of the
//! durable backends except durability, and pass the same conformance suites.

mod broker;
mod database;
mod event_log;
mod event_store;

pub use broker::{InMemoryBroker, InMemoryBrokerConfig};
pub use database::InMemoryDatabase;
pub use event_store::InMemoryEventStore;
