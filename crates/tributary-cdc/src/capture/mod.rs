//! The capture: PostgreSQL's logical replication stream published through the relay.
//!
//! [`CdcSource`] is a [`RelaySource`](tributary_core::RelaySource), so the same
//! [`Relay`](tributary_runtime::Relay) that publishes an outbox publishes the capture: it
//! reads a batch, publishes it with every acknowledgement awaited, then marks it published.
//! [`capture`] wires the two together for `tributary cdc`.
//!
//! # Delivery guarantee: at-least-once, duplicates bounded, same ids
//!
//! pgoutput (protocol 1, no `streaming`) sends a transaction only after it committed, whole,
//! between its Begin and Commit, in commit order. A batch is built from those messages:
//!
//! - It holds whole transactions. When the batch fills up in the middle of a transaction and
//!   earlier transactions are complete, the batch ends at the last Commit and the started
//!   transaction's messages wait for the next batch. Its **position** (`through`) is the end
//!   of that last commit record (pgoutput's `Commit::end_lsn`): confirming it tells the slot
//!   "everything that committed before here is done". The end, not the start: the server
//!   replays every transaction whose commit record starts at or after the confirmed
//!   position, so confirming the start would replay the last transaction every time.
//! - A transaction larger than a batch is split: its first `batch_size` messages go out as
//!   one batch whose position is the one already confirmed, so marking it published confirms
//!   nothing new; the batch that ends with its Commit carries its end. The slot's confirmed
//!   position therefore only ever sits on a commit boundary, and only after the broker
//!   acknowledged every message before it. A crash in the middle makes the server send the
//!   whole transaction again; its events get the **same ids** (below), so the broker's
//!   deduplication and the consumers' inboxes absorb the copies.
//! - [`mark_published`](tributary_core::RelaySource::mark_published) confirms the position
//!   to the slot with a standby status update (after raising the record's limit, below).
//!   Nothing else confirms data: the stream's periodic status updates repeat the last
//!   confirmed position.
//!
//! So after a crash, what is read again is at most the batch that was in flight plus the rest
//! of the transaction it belonged to; nothing committed is skipped, and nothing uncommitted
//! was ever read (no phantoms). A batch handed out and never marked (the relay gave up on it)
//! is read again from the slot when the next batch is asked for: the same changes, with the
//! same ids.
//!
//! Event ids are computed, not drawn: a UUIDv7 whose time is the commit time and whose other
//! bits are SHA-256 of (cluster system id, database, slot, commit LSN, index of the change in
//! its transaction). Reading the same transaction again yields the same ids.
//!
//! # Confirming without data: keepalives and heartbeats
//!
//! A slot keeps all WAL after its confirmed position. If the captured tables are quiet while
//! the server writes other WAL (other tables, other databases), confirming only commits of
//! captured changes would pin that WAL forever. So when nothing is in flight — no batch
//! handed out and unmarked, nothing read and unpublished, no transaction open — the capture
//! also confirms the positions the server reports between data: the `wal_end` of keepalives,
//! the end of transactions that produced no event, and its own heartbeat messages. That is
//! safe because the walsender sends messages in WAL order: by the time it reports position
//! P, every transaction that committed before P has been sent (and here, published). A
//! transaction still running at P commits after P and is sent in full later, whatever was
//! confirmed (the server keeps the WAL of running transactions through the slot's
//! `restart_lsn`, not its confirmed position).
//!
//! Every [`heartbeat_interval`](CdcConfig::heartbeat_interval) the control connection writes
//! `pg_logical_emit_message(false, 'tributary-heartbeat', <slot>)`, a non-transactional
//! message the stream delivers at once, so the capture sees a fresh position even when the
//! walsender has nothing else to say, and raises the record's limit (next section).
//!
//! # The slot record: a recreated slot is refused
//!
//! The capture keeps one row per slot in `tributary_cdc_slots` (schema
//! [`state_schema`](CdcConfig::state_schema)) in the captured database: the cluster's system
//! id, a status (`creating`, `snapshot`, `streaming`) and a `position_limit`. Before the
//! capture confirms a position beyond the limit, it raises the limit (to the server's current
//! insert position, so this write is rare). The slot's confirmed position therefore never
//! exceeds the limit. On start:
//!
//! - record `streaming`, slot missing → [`CdcError::SlotMissing`];
//! - slot invalidated (`wal_status = lost`) → [`CdcError::SlotInvalidated`];
//! - slot confirmed beyond the limit → [`CdcError::SlotRecreated`]: a slot created after the
//!   last limit was written starts at a later position than any this capture could have
//!   confirmed;
//! - record from another cluster → [`CdcError::OtherSystem`];
//! - no record, slot present → taken over from its confirmed position (refused with
//!   [`CdcError::SlotNotManaged`] when a snapshot is configured);
//! - record `creating`/`snapshot` → the creation or snapshot was interrupted before anything
//!   was confirmed: the slot is dropped and made again.
//!
//! Each of those errors stops the capture (never retried) and names the operator command
//! `tributary cdc --resnapshot --slot <slot>` ([`resnapshot`]), which drops the slot and the
//! record so the next run starts over, with a new snapshot where configured.
//!
//! # Initial snapshot
//!
//! With [`TableConfig::snapshot`] on for some table, the slot is created with an exported
//! snapshot, imported at once on another connection (`SET TRANSACTION SNAPSHOT` in a
//! `REPEATABLE READ` transaction) and read with cursors, `batch_size` rows at a time, as
//! `<table>.snapshot` events. Their position is the slot's consistent point, which is not
//! confirmed beyond, and the stream starts only once the last snapshot batch was
//! acknowledged and the record says `streaming`: the snapshot shows exactly the transactions
//! committed before the consistent point, the stream exactly those after — no gap, no
//! double. Progress (rows acknowledged) is kept in the record for operators.
//!
//! A crash mid-snapshot **restarts** the snapshot; it cannot resume, because the exported
//! snapshot died with the transaction that imported it and rows read from a newer snapshot
//! would overlap the stream. Nothing was confirmed yet, so the slot is dropped and created
//! again with a new snapshot, whose events have new ids (ids include the consistent point):
//! consumers see the interrupted prefix and then a complete snapshot, which is harmless for
//! the upsert semantics of snapshot events and keeps "no gap".
//!
//! # Modes and envelopes
//!
//! - **Table changes** ([`TableCapture`]): one event per row change, type
//!   `<table>.inserted|updated|deleted|truncated` (`<table>.snapshot`), `source` = the
//!   capture's name, `time` = the commit time, `subject` and partition key = the key columns'
//!   values joined with `:` (the configured key columns, else the primary key, else the
//!   replica identity columns; a table without any is one stream keyed by its name), topic =
//!   the table's configured topic or its name. The data:
//!   ```json
//!   {"operation": "update", "schema": "public", "table": "orders",
//!    "key": {"id": 7}, "new": {"id": 7, "total": 120}, "old": null,
//!    "unchanged_toast": ["notes"],
//!    "transaction": {"xid": 731, "commit_lsn": "0/16B3748", "index": 2}}
//!   ```
//!   `old` is the old row with `REPLICA IDENTITY FULL`, the old key when an update changed
//!   the key, and `null` otherwise; `new` leaves out unchanged TOASTed values and
//!   `unchanged_toast` names them. The transaction id and commit LSN sit in the data because
//!   the envelope has no free-form extension attributes. Schema changes need nothing: each
//!   row is read with the Relation message the server sent last (a new column appears in the
//!   next event after `ALTER TABLE … ADD COLUMN`).
//! - **Outbox tailing** ([`OutboxCapture`]): each row inserted into the outbox table is
//!   published as its own envelope: payload = the stored bytes, id = `event_id`, topic =
//!   `topic`, key = `message_key`. Updates and deletes of the outbox are never published, so
//!   deleting published rows ([`OutboxCapture::delete_published`]) publishes nothing. A row
//!   whose topic is not a valid topic name goes to [`CdcConfig::invalid_topic`] unchanged.
//! - **Logical messages** ([`MessageCapture`]): `pg_logical_emit_message(true, prefix,
//!   payload)` inside an application transaction. A payload that parses as a CloudEvents
//!   envelope is published exactly as written (its own id: emitting the same envelope twice
//!   publishes it once); any other payload becomes the data of a new envelope (type = the
//!   route's type or the prefix, key = the route's key or the prefix, id computed as above).
//!   **Non-transactional messages are never published**: they are written even when the
//!   writer's transaction rolls back, so publishing them could publish what never happened.
//!
//! # One capture per slot
//!
//! [`try_lease`](tributary_core::RelaySource::try_lease) takes a session advisory lock
//! (key: FNV-1a of `tributary-cdc:<slot>`) on the control connection, which is checked every
//! [`lease_check_interval`](CdcConfig::lease_check_interval); a standby polls for it. The
//! slot itself allows one reader too (a second one gets "slot in use", retried), but the
//! lock also covers slot creation, the snapshot and the record, which happen before any
//! stream exists. A process that dies drops its connections, and the server releases both.

mod admin;
mod assembler;
mod config;
mod error;
pub(crate) mod ids;
mod lag;
pub(crate) mod mapping;
mod pipeline;
mod snapshot;
mod source;
mod state;

pub mod bench;

pub use admin::{ensure_publication, retire_capture};
pub use config::{
    CdcConfig, HEARTBEAT_PREFIX, MessageCapture, MessageRoute, OutboxCapture, TableCapture,
    TableConfig, topic_for_name,
};
pub use error::{CdcError, Result, resnapshot_command};
pub use lag::{SlotLag, slot_lag, slot_lags};
pub use source::{CdcSource, capture, resnapshot};

#[cfg(test)]
mod tests;
