#![doc = include_str!("../README.md")]

mod config;
mod database;
mod event_store;
mod schema;
mod sql_error;
mod writer;

pub use config::{SqliteConfig, Synchronous};
pub use database::SqliteDatabase;
pub use event_store::SqliteEventStore;
pub use schema::DatabaseKind;
pub use writer::{Writer, WriterStats};

/// The raw driver, for services that keep their own tables inside a unit of work.
pub use rusqlite;
