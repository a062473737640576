#![doc = include_str!("../README.md")]

mod broker;
mod config;
mod database;
mod event_store;
mod inspect;
mod schema;
mod service;
mod sql_error;
mod unit_of_work;
mod writer;

pub use broker::{SqliteBroker, SqliteBrokerConfig, SqliteBrokerConsumer};
pub use config::{SqliteConfig, Synchronous};
pub use database::SqliteDatabase;
pub use event_store::SqliteEventStore;
pub use inspect::{SqliteFileState, inspect};
pub use schema::{SqliteDatabaseKind, latest_version};
pub use service::{SqliteEventsSource, SqliteOutboxSource};
pub use unit_of_work::{SqliteTx, SqliteUnitExt};
pub use writer::{SqliteWriter, SqliteWriterStats};

/// The raw driver, for services that keep their own tables inside a unit of work.
pub use rusqlite;
