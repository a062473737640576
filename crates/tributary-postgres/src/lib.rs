#![doc = include_str!("../README.md")]

pub mod bench;
mod config;
mod database;
mod error;
mod event_store;
mod horizon;
mod inbox;
mod inspect;
mod lag;
mod outbox;
pub mod position;
mod schema;
mod service;
mod sql;
mod unit_of_work;

pub use config::PgConfig;
pub use database::PgDatabase;
pub use database::WATCH_COMMITS_EVERY;
pub use event_store::PgEventStore;
pub use inbox::{PgInbox, Recorded};
pub use inspect::{PgSchemaState, connect_one, inspect};
pub use lag::{PgHorizonHolder, PgLag};
pub use outbox::PgOutbox;
pub use position::{MAX_ROWS_PER_TRANSACTION, TxPosition};
pub use schema::latest_version;
pub use service::{PgDeadLetters, PgEventsSource, PgLease, PgOutboxSource};
pub use unit_of_work::{PgTx, PgUnitExt};

/// The raw driver, for services that keep their own tables inside a unit of work.
pub use sqlx;
