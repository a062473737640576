//! The MySQL/MariaDB binlog capture, published through the same relay as the PostgreSQL one.
//!
//! [`BinlogSource`] is a [`RelaySource`](tributary_core::RelaySource); [`capture_binlog`]
//! runs it under a [`Relay`](tributary_runtime::Relay) for `tributary cdc --db mysql://…`.
//!
//! # What is ours and what is not
//!
//! The replication client is `mysql_async` (handshake, authentication, `COM_REGISTER_SLAVE`,
//! `COM_BINLOG_DUMP`, packet framing) and `mysql_common` parses events, table maps and every
//! column value of row events. Written here, because no crate does it: MariaDB's GTID,
//! GTID-list and other events; resuming from a MariaDB GTID position
//! (`@slave_connect_state`); checks that keep `mysql_common` from indexing past malformed
//! input, with a panic fence behind them ([`decode`](mod@decode)); column names and primary
//! keys from the table map's optional metadata; values to JSON; transaction assembly, batches,
//! positions, the state row, the lease, heartbeats and the guards below.
//!
//! # The server
//!
//! `log_bin` on, `binlog_format=ROW`, `binlog_row_image=FULL` (before images of every column),
//! `binlog_row_metadata=FULL` (column names in every table map), and a user with
//! `REPLICATION SLAVE`, `REPLICATION CLIENT` (`BINLOG MONITOR` on MariaDB) and write access to
//! the capture's state table `tributary_cdc_binlog` in the connection's database. Checked at
//! every start; a wrong setting stops the capture with [`BinlogError::ServerSettings`].
//!
//! # Delivery guarantee: at-least-once, duplicates bounded, same ids
//!
//! The binlog holds committed transactions only, whole and in commit order. A task reads the
//! stream, decodes it and builds batches that end at commit boundaries; batches wait in a
//! bounded channel ([`BinlogConfig::pipeline_depth`]) while the relay publishes the ones before
//! them, so decoding and building envelopes overlap the broker's round trip and memory stays
//! bounded. A transaction larger than a batch is split; only the batch with its commit moves
//! the position. When the broker acknowledged a batch, the relay marks it published and the
//! capture **stores** the position after it — the GTID list on MariaDB, file and offset
//! everywhere — in its state row with one autocommit `UPDATE` (durable when it returns). So
//! the stored position only ever sits on a commit boundary after everything before it was
//! acknowledged. After a crash the capture resumes from it: what is published again is at most
//! the batch in flight and the rest of the transaction it belonged to, and it carries the
//! **same ids** — an id is a UUIDv7 whose other bits are SHA-256 of (database, capture, the
//! transaction's GTID or file and offset, index of the change), so the broker's deduplication
//! and the consumers' inboxes absorb the copies.
//!
//! # Heartbeats
//!
//! A capture whose tables are quiet still sees every other transaction of the server go by.
//! When nothing is in flight, the position after those is safe to store, and every
//! [`BinlogConfig::heartbeat_interval`] the capture stores it; that write is itself a
//! transaction in the binlog, so even an idle server moves the position. The server sends
//! heartbeat events on an idle stream (`@master_heartbeat_period`). An idle capture therefore
//! never falls behind the binlog's retention (`binlog_expire_logs_seconds`) unnoticed.
//!
//! # Guards: never a silent skip
//!
//! Each of these stops the capture (never retried) with an error naming the operator command
//! `tributary cdc --resnapshot --slot <capture>` ([`resnapshot_binlog`]), which forgets the
//! stored position so that the next start takes a new snapshot (or starts at the binlog's end):
//!
//! - [`BinlogError::BinlogPurged`]: the binlog holding the stored position was purged (the
//!   oldest file's GTID list is past it, the file is gone, or the server says so).
//! - [`BinlogError::GtidDomainChanged`]: the server's GTID position does not continue the
//!   stored one (a domain vanished, went backwards, or a new domain appeared: the server was
//!   reset, replaced, or its `gtid_domain_id` changed).
//! - [`BinlogError::ServerSettings`]: `binlog_format` is not `ROW` (or another setting above).
//!   A session that switches itself to `STATEMENT` and changes a captured table writes a
//!   statement without rows: the capture stops with [`BinlogError::CannotFollow`] there.
//! - [`BinlogError::CannotFollow`]: a change the capture cannot decode: a table map without
//!   column names, configured key columns dropped by an `ALTER TABLE`, an unknown column type.
//!
//! # Schema changes
//!
//! Every rows event is decoded with the table map written just before it, which (with
//! `binlog_row_metadata=FULL`) names the columns as they were when the row was written. A
//! column added or dropped between two changes of a table is therefore simply there or not in
//! the next event; nothing is looked up in the current schema, which may be newer than the row.
//!
//! # Modes and envelopes
//!
//! - **Table changes** (`tables`): as the PostgreSQL capture (see [`mod@crate::capture`]): type
//!   `<table>.inserted|updated|deleted`, `<table>.snapshot` for the initial load; subject and
//!   partition key = the key columns' values joined with `:` (configured, else the primary key,
//!   else the table is one stream keyed by its name); data `{"operation", "schema" (the
//!   database), "table", "key", "new", "old", "unchanged_toast": [], "transaction": {"gtid",
//!   "binlog_file", "binlog_pos", "index"}}`. `time` is the commit time, to the second (the
//!   binlog's resolution). Column values: see [`decode`](mod@decode) — `DATETIME` is wall-clock
//!   time without a zone, `TIMESTAMP` is UTC with `+00`, `DECIMAL` a string, binary data
//!   `\x…` hex, and MariaDB's `JSON` (a `LONGTEXT`) a string. `TRUNCATE TABLE` is a statement
//!   in the binlog, not rows: it is not published.
//! - **Outbox tailing** (`outbox`): rows inserted into an outbox table are published as
//!   written. Any language can write it:
//!
//!   ```sql
//!   CREATE TABLE outbox (
//!     id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
//!     event_id    CHAR(36)        NOT NULL,  -- a UUID: the broker's dedup id and inbox key
//!     topic       VARCHAR(255)    NOT NULL,  -- letters, digits, '_', '-', '.'
//!     message_key VARCHAR(255)    NOT NULL,  -- per-key order (e.g. the aggregate id)
//!     payload     LONGTEXT        NOT NULL   -- a CloudEvents 1.0 JSON envelope (or any bytes)
//!   ) ENGINE=InnoDB;
//!   ```
//!
//!   Insert it in the same transaction as the service's own rows. Updates and deletes of the
//!   outbox are never published, so the optional delete after publishing
//!   ([`OutboxCapture::delete_published`](crate::capture::OutboxCapture)) publishes nothing.
//!   A row without a readable payload becomes a `tributary.cdc.invalid_outbox_row` event on
//!   [`BinlogConfig::invalid_topic`], never dropped.
//! - **No logical messages.** MySQL and MariaDB have nothing like PostgreSQL's transactional
//!   `pg_logical_emit_message`: a message that is part of a transaction but not of any table.
//!   Use the outbox table instead; it is the same thing with a schema.
//!
//! # Initial snapshot
//!
//! With `snapshot` set on a table (or the outbox), a new capture reads those tables in one
//! `START TRANSACTION WITH CONSISTENT SNAPSHOT` and records the binlog position that snapshot
//! corresponds to (MariaDB's `binlog_snapshot_file`/`_position`, as a GTID by
//! `BINLOG_GTID_POS`), then streams from exactly there once the snapshot was acknowledged:
//! no gap, no double. A crash during the snapshot starts it over.
//!
//! # One capture per name
//!
//! The lease is a named lock (`GET_LOCK('tributary-cdc:<database>.<capture>')`, see
//! [`BinlogConfig::lease_lock`]) held by the control connection, checked every
//! [`BinlogConfig::lease_check_interval`]; a standby polls for it.

pub mod bench;
pub mod decode;

mod config;
mod error;
mod mapping;
mod position;
mod snapshot;
mod source;
mod state;
mod stream;

pub use config::BinlogConfig;
pub use decode::{BinlogDecoder, decode_binlog};
pub use error::{BinlogError, Result};
pub use position::{BinlogPosition, GtidList, MariaGtid};
pub use source::{BinlogLag, BinlogSource, binlog_lag, capture_binlog, resnapshot_binlog};
