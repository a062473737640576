//! The unit of work on PostgreSQL: one `sqlx::Transaction` on one pooled connection, driven
//! on the caller's task (no blocking bridge). The unit commits when its future returns `Ok`
//! and rolls back when it returns an error, panics, or is dropped.
//!
//! Consistency inside a unit (the transaction runs at READ COMMITTED):
//! - documents are read without locks and written at commit, after the unit locked every
//!   document it read or writes in key order and checked that none it read changed (see
//!   `documents.rs`): no update is lost, no two units deadlock on documents, and the unit
//!   that loses a race fails with a retryable [`Error::DocumentConflict`] (run it again);
//! - an append that loses a race to another unit reports a conflict from the stream's new
//!   version (the lost insert is rolled back to a savepoint, the unit stays usable);
//! - a failed statement aborts a PostgreSQL transaction: a unit that swallows such an error
//!   and returns `Ok` is rolled back and reported, never silently half-committed.
//!
//! Published events and document writes are held in the unit and written in one statement
//! each when it commits (also before a savepoint, and before the service's own SQL runs, so
//! that it sees them), instead of one round trip each. Values PostgreSQL would refuse (`\u0000` in a document) are refused at the
//! call; a held write refused at commit anyway fails the unit with [`Error::Refused`], naming
//! the consumer message that made it.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use async_trait::async_trait;
use futures::FutureExt;
use sqlx::{Connection, PgConnection, Postgres, Transaction};
use tributary_core::backend::{
    ConsumerTx, InboxEntry, Work, WorkError, validate_batch, validate_document,
    validate_document_key,
};
use tributary_core::{
    AppendOutcome, DeadLetter, DeadLetterId, Envelope, Error, EventId, ExpectedVersion, GroupName,
    NewDeadLetter, OutgoingMessage, Payload, Position, RecordedEvent, Resolution, Result, Snapshot,
    StreamId, StreamVersion, Topic, UnitOfWork,
};

use crate::database::{Inner, PgDatabase};
use crate::error::{SqlxResultExt, db_error};
use crate::event_store::{Mode, append, load_snapshot_in, read_stream_in, save_snapshot_in};
use crate::outbox;
use crate::sql::Statements;

mod documents;

use documents::{DocumentWrites, Documents, key};

/// Held events or document updates are written once this many are waiting, to bound a
/// unit's memory.
const HELD_WRITES_MAX: usize = 1000;
const HELD_EVENT_BYTES_MAX: usize = 8 << 20;

/// The transaction a unit of work runs in. Reach it from a unit with
/// [`PgUnitExt::postgres`] to run the service's own SQL in the same transaction, with
/// `.await`:
///
/// ```no_run
/// use tributary_core::{Database, Error};
/// use tributary_postgres::{PgConfig, PgDatabase, PgUnitExt};
///
/// # async fn f() -> Result<(), Error> {
/// let db = PgDatabase::connect(PgConfig::default().with_url("postgres://localhost/app")).await?;
/// let db: &dyn Database = &db;
/// db.transact(|unit| Box::pin(async move {
///     let conn = unit.postgres()?.connection().await?;
///     sqlx::query("UPDATE products SET stock = stock - 1 WHERE sku = $1")
///         .bind("a-1")
///         .execute(conn)
///         .await?; // a deadlock or a lost connection is retryable, a bad value is not
///     Ok::<_, Error>(())
/// }))
/// .await
/// # }
/// ```
pub struct PgTx {
    /// Begun at the unit's first statement: a unit that only holds writes commits them in one
    /// statement at the end, without `BEGIN` and `COMMIT` round trips.
    tx: Option<Transaction<'static, Postgres>>,
    db: Arc<Inner>,
    /// Open `ConsumerTx` savepoints, each with what the unit knew of documents at the time.
    savepoints: Vec<Documents>,
    /// What the unit knows of the documents it touched, and the updates it holds.
    docs: Documents,
    /// Events published and not yet written to the outbox (see the module doc), each with the
    /// consumer message that published it, and their size.
    outbox: Vec<(OutgoingMessage, usize)>,
    outbox_bytes: usize,
    /// The consumer message being handled (see `ConsumerTx::start_message`).
    message: usize,
    /// A statement failed since the last savepoint rollback: the transaction may be aborted.
    failed: bool,
    /// The service's own SQL ran: anything may have happened to the transaction.
    raw: bool,
    wrote: bool,
}

/// Typed access to the PostgreSQL transaction behind a unit of work.
pub trait PgUnitExt {
    /// The unit's PostgreSQL transaction, for the service's own SQL.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the unit does not run on PostgreSQL.
    fn postgres(&mut self) -> Result<&mut PgTx>;
}

impl<U: UnitOfWork + ?Sized> PgUnitExt for U {
    fn postgres(&mut self) -> Result<&mut PgTx> {
        self.backend()
            .downcast_mut::<PgTx>()
            .ok_or_else(|| Error::invalid("this unit of work does not run on PostgreSQL"))
    }
}

impl PgTx {
    /// The unit's transaction, begun now if it was not.
    async fn tx(&mut self) -> Result<&mut PgConnection> {
        if self.tx.is_none() {
            let begun = self.db.pool.begin().await;
            self.tx = Some(begun.map_err(|e| db_error("starting a unit of work", e))?);
        }
        self.tx
            .as_deref_mut()
            .ok_or_else(|| Error::storage_msg("the unit's transaction is missing"))
    }

    /// A document and its version as the unit's transaction sees it (no lock).
    async fn read_document(&mut self, collection: &str, id: &str) -> Result<Option<(String, i64)>> {
        let db = self.db.clone();
        let found = sqlx::query_as(db.sql.get_document.sql())
            .bind(collection)
            .bind(id)
            .fetch_optional(self.tx().await?)
            .await;
        self.sqlx(found, "reading a document")
    }

    fn new(db: Arc<Inner>) -> Self {
        Self {
            tx: None,
            db,
            savepoints: Vec::new(),
            docs: Documents::default(),
            outbox: Vec::new(),
            outbox_bytes: 0,
            message: 0,
            failed: false,
            raw: false,
            wrote: false,
        }
    }

    /// The connection, inside the unit's transaction, for the service's own statements. What
    /// the unit holds (published events, document updates) is written first, so the SQL sees
    /// it. Do not commit or roll back on it; a statement that fails aborts the whole unit:
    /// return its error from the unit.
    ///
    /// # Errors
    /// When writing what the unit holds fails.
    pub async fn connection(&mut self) -> Result<&mut PgConnection> {
        self.flush().await?;
        self.raw = true;
        self.wrote = true;
        self.tx().await
    }

    /// The schema of Tributary's tables for this service.
    pub fn schema(&self) -> &str {
        &self.db.config.schema
    }

    /// Records the outcome of a statement: a failed one may have aborted the transaction.
    fn checked<T>(&mut self, result: Result<T>) -> Result<T> {
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    fn sqlx<T>(&mut self, result: Result<T, sqlx::Error>, what: &str) -> Result<T> {
        self.checked(result.map_err(|e| db_error(what, e)))
    }

    /// Writes what the unit holds now (see the module doc).
    async fn flush(&mut self) -> Result<()> {
        self.outbox_bytes = 0;
        let held = Held::take(&mut self.docs, &mut self.outbox);
        if held.is_empty() {
            return Ok(());
        }
        let db = self.db.clone();
        let done = match self.tx().await {
            Ok(conn) => held.write(conn, &db.sql).await,
            Err(e) => Err(e),
        };
        if done.is_ok() {
            self.docs.written(held.docs);
        }
        self.checked(done)
    }

    /// Commits (when `outcome` is Ok and the transaction is healthy) or rolls back.
    async fn finish(
        mut self,
        outcome: Result<Box<dyn Any + Send>, WorkError>,
    ) -> Result<Box<dyn Any + Send>, WorkError> {
        let value = match outcome {
            Ok(value) => value,
            Err(e) => {
                if let Some(tx) = self.tx.take()
                    && let Err(rollback) = tx.rollback().await
                {
                    tracing::debug!(error = %rollback, "rolling back a failed unit of work failed; the connection is discarded");
                }
                return Err(e);
            }
        };
        let held = Held::take(&mut self.docs, &mut self.outbox);
        let Some(mut tx) = self.tx.take() else {
            // Nothing but held writes: one statement, its own transaction.
            if !held.is_empty() {
                self.write_alone(&held).await?;
            }
            if self.wrote {
                self.db.committed();
            }
            return Ok(value);
        };
        // A transaction that hit an error answers COMMIT with a silent ROLLBACK: ask first.
        if (self.failed || self.raw)
            && let Err(e) = sqlx::raw_sql("SELECT 1").execute(&mut *tx).await
        {
            let _ = tx.rollback().await;
            return Err(WorkError::Failed(Error::storage(
                "a statement of the unit of work failed, but the unit returned Ok; it was rolled back (return the statement's error from the unit)",
                e,
            )));
        }
        if let Err(e) = held.write(&mut tx, &self.db.sql).await {
            let _ = tx.rollback().await;
            return Err(WorkError::Failed(self.refused(e, &held).await));
        }
        tx.commit()
            .await
            .map_err(|e| WorkError::Failed(db_error("committing a unit of work", e)))?;
        if self.wrote {
            self.db.committed();
        }
        Ok(value)
    }

    /// Commits a unit that never began a transaction: its held writes in one statement.
    async fn write_alone(&self, held: &Held) -> Result<(), WorkError> {
        let mut conn = self
            .db
            .pool
            .acquire()
            .await
            .map_err(|e| WorkError::Failed(db_error("committing a unit of work", e)))?;
        let written = match held.as_one_statement() {
            Some(statement) => statement.run(&mut conn, &self.db.sql).await,
            None => {
                // Deletes too: more than one statement, so a transaction after all.
                let mut tx = conn
                    .begin()
                    .await
                    .map_err(|e| WorkError::Failed(db_error("committing a unit of work", e)))?;
                match held.write(&mut tx, &self.db.sql).await {
                    Ok(()) => tx
                        .commit()
                        .await
                        .map_err(|e| db_error("committing a unit of work", e)),
                    Err(e) => {
                        let _ = tx.rollback().await;
                        Err(e)
                    }
                }
            }
        };
        match written {
            Ok(()) => Ok(()),
            Err(e) => Err(WorkError::Failed(self.refused(e, held).await)),
        }
    }

    /// The error for a failed write of `held`: a value the server refused names the consumer
    /// message that wrote it (found on the now idle connection), so the runtime can tell
    /// whose handler made it.
    async fn refused(&self, e: Error, held: &Held) -> Error {
        match e {
            Error::InvalidInput { reason } => {
                let message = held.refused_by(&self.db).await;
                Error::Refused { reason, message }
            }
            other => other,
        }
    }
}

/// What a unit holds, taken out to be written.
struct Held {
    docs: DocumentWrites,
    events: Vec<(OutgoingMessage, usize)>,
}

impl Held {
    fn take(docs: &mut Documents, outbox: &mut Vec<(OutgoingMessage, usize)>) -> Self {
        Self {
            docs: docs.take_writes(),
            events: std::mem::take(outbox),
        }
    }

    fn is_empty(&self) -> bool {
        self.docs.is_empty() && self.events.is_empty()
    }

    /// The held writes as one statement, when they can be (puts and events; deletes and
    /// checks of what the unit read need statements of their own).
    fn as_one_statement(&self) -> Option<OneStatement<'_>> {
        let puts = self.docs.blind_puts()?;
        Some(OneStatement {
            puts,
            events: self.events.iter().map(|(m, _)| m).collect(),
        })
    }

    /// Writes the documents and the events (nothing held: no round trip).
    async fn write(&self, conn: &mut PgConnection, sql: &Statements) -> Result<()> {
        self.docs.apply(conn, sql).await?;
        let messages: Vec<OutgoingMessage> = self.events.iter().map(|(m, _)| m.clone()).collect();
        outbox::insert_all(conn, sql, &messages).await
    }

    /// The consumer message of the first held write the server refuses, tried one by one in
    /// a transaction that is rolled back. Only on the failure path.
    async fn refused_by(&self, db: &Inner) -> Option<usize> {
        let mut conn = db.pool.acquire().await.ok()?;
        let mut tx = conn.begin().await.ok()?;
        let mut culprit = None;
        for write in self.docs.held() {
            let one = Held {
                docs: DocumentWrites::only(write),
                events: Vec::new(),
            };
            if probe(&mut tx, &db.sql, &one).await {
                culprit = Some(write.1.message);
                break;
            }
        }
        if culprit.is_none() {
            for (event, message) in &self.events {
                let one = Held {
                    docs: DocumentWrites::default(),
                    events: vec![(event.clone(), *message)],
                };
                if probe(&mut tx, &db.sql, &one).await {
                    culprit = Some(*message);
                    break;
                }
            }
        }
        let _ = tx.rollback().await;
        culprit
    }
}

/// A unit's held puts and events written as one statement, in autocommit: one round trip
/// for the whole unit, atomic because it is one statement.
struct OneStatement<'a> {
    puts: Vec<(&'a (String, String), &'a Payload)>,
    events: Vec<&'a OutgoingMessage>,
}

impl OneStatement<'_> {
    async fn run(&self, conn: &mut PgConnection, sql: &Statements) -> Result<()> {
        match (self.puts.is_empty(), self.events.is_empty()) {
            (true, true) => Ok(()),
            (true, false) => {
                let messages: Vec<OutgoingMessage> =
                    self.events.iter().map(|&m| m.clone()).collect();
                outbox::insert_all(conn, sql, &messages).await
            }
            (false, events_empty) => {
                let outbox::Columns {
                    topics,
                    keys,
                    ids,
                    payloads,
                } = outbox::columns(&self.events);
                let collections: Vec<&str> = self.puts.iter().map(|(k, _)| k.0.as_str()).collect();
                let doc_ids: Vec<&str> = self.puts.iter().map(|(k, _)| k.1.as_str()).collect();
                let bodies: Vec<&str> = self.puts.iter().map(|(_, d)| d.as_str()).collect();
                let query = if events_empty {
                    sqlx::query(sql.put_documents.sql())
                        .bind(collections)
                        .bind(doc_ids)
                        .bind(bodies)
                } else {
                    sqlx::query(sql.put_documents_and_publish.sql())
                        .bind(collections)
                        .bind(doc_ids)
                        .bind(bodies)
                        .bind(topics)
                        .bind(keys)
                        .bind(ids)
                        .bind(payloads)
                };
                query
                    .execute(conn)
                    .await
                    .context("writing documents and events")?;
                Ok(())
            }
        }
    }
}

/// Whether the server refuses `one` (a single held write), in a savepoint of `tx`.
async fn probe(tx: &mut PgConnection, sql: &Statements, one: &Held) -> bool {
    if sqlx::raw_sql("SAVEPOINT tributary_probe")
        .execute(&mut *tx)
        .await
        .is_err()
    {
        return false;
    }
    let refused = matches!(one.write(tx, sql).await, Err(Error::InvalidInput { .. }));
    let _ = sqlx::raw_sql("ROLLBACK TO SAVEPOINT tributary_probe")
        .execute(&mut *tx)
        .await;
    refused
}

/// Runs `work` as one transaction (see the module doc).
pub(crate) async fn execute(db: &PgDatabase, work: Work) -> Result<Box<dyn Any + Send>, WorkError> {
    let mut unit = PgTx::new(db.inner.clone());
    let outcome = AssertUnwindSafe(work.run(&mut unit))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            Err(WorkError::Failed(Error::panicked(
                "unit of work",
                panic.as_ref(),
            )))
        });
    unit.finish(outcome).await
}

fn decode_document(body: Option<String>) -> Result<Option<Payload>> {
    body.map(|b| Payload::from_json_str(b).map_err(|e| Error::decode("document", e)))
        .transpose()
}

#[async_trait]
impl UnitOfWork for PgTx {
    async fn get(&mut self, collection: &str, id: &str) -> Result<Option<Payload>> {
        validate_document_key(collection, id)?;
        let k = key(collection, id);
        if let Some(held) = self.docs.held(&k) {
            return Ok(held.cloned());
        }
        let found = self.read_document(collection, id).await?;
        self.docs
            .read(k, found.as_ref().map(|(_, version)| *version));
        decode_document(found.map(|(body, _)| body))
    }

    async fn put(&mut self, collection: &str, id: &str, document: Payload) -> Result<()> {
        validate_document_key(collection, id)?;
        validate_document(collection, id, document.as_str())?;
        self.docs
            .hold(key(collection, id), Some(document), self.message);
        self.wrote = true;
        if self.docs.held_count() >= HELD_WRITES_MAX {
            self.flush().await?;
        }
        Ok(())
    }

    async fn delete(&mut self, collection: &str, id: &str) -> Result<bool> {
        validate_document_key(collection, id)?;
        let k = key(collection, id);
        let existed = match self.docs.held(&k) {
            Some(held) => held.is_some(),
            None => {
                let found = self.read_document(collection, id).await?;
                let version = found.map(|(_, version)| version);
                self.docs.read(k.clone(), version);
                version.is_some()
            }
        };
        self.docs.hold(k, None, self.message);
        self.wrote = true;
        if self.docs.held_count() >= HELD_WRITES_MAX {
            self.flush().await?;
        }
        Ok(existed)
    }

    async fn clear_collection(&mut self, collection: &str) -> Result<u64> {
        let db = self.db.clone();
        validate_document_key(collection, "-")?;
        let done = sqlx::query(db.sql.clear_collection.sql())
            .bind(collection)
            .execute(self.tx().await?)
            .await;
        let done = self.sqlx(done, "clearing a collection")?;
        self.docs.cleared(collection);
        self.wrote = true;
        Ok(done.rows_affected())
    }

    async fn publish(&mut self, topic: &Topic, mut event: Envelope) -> Result<()> {
        tributary_core::trace::stamp(topic, &mut event);
        let message = outbox::outgoing(topic, &event, self.db.config.max_event_bytes)?;
        self.outbox_bytes += message.payload.len();
        self.outbox.push((message, self.message));
        self.wrote = true;
        if self.outbox.len() >= HELD_WRITES_MAX || self.outbox_bytes >= HELD_EVENT_BYTES_MAX {
            self.flush().await?;
        }
        Ok(())
    }

    async fn append(
        &mut self,
        stream: &StreamId,
        expected: ExpectedVersion,
        mut events: Vec<Envelope>,
    ) -> Result<AppendOutcome> {
        let db = self.db.clone();
        tributary_core::trace::stamp_appended(stream, &mut events);
        validate_batch(&events, self.db.config.max_event_bytes)?;
        let done = append(
            self.tx().await?,
            &db.sql,
            stream,
            expected,
            &events,
            Mode::InTransaction,
        )
        .await;
        let done = self.checked(done)?;
        if !done.deduplicated {
            self.wrote = true;
        }
        Ok(done)
    }

    async fn read_stream(
        &mut self,
        stream: &StreamId,
        from: StreamVersion,
        max: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let db = self.db.clone();
        let read = read_stream_in(self.tx().await?, &db.sql, stream, from, max).await;
        self.checked(read)
    }

    async fn load_snapshot(&mut self, stream: &StreamId) -> Result<Option<Snapshot>> {
        let db = self.db.clone();
        let loaded = load_snapshot_in(self.tx().await?, &db.sql, stream).await;
        self.checked(loaded)
    }

    async fn save_snapshot(&mut self, stream: &StreamId, snapshot: Snapshot) -> Result<()> {
        let db = self.db.clone();
        let saved = save_snapshot_in(self.tx().await?, &db.sql, stream, &snapshot).await;
        self.wrote = true;
        self.checked(saved)
    }

    fn backend(&mut self) -> &mut dyn Any {
        self
    }
}

#[async_trait]
impl ConsumerTx for PgTx {
    async fn inbox_contains(&mut self, group: &GroupName, id: &EventId) -> Result<bool> {
        let db = self.db.clone();
        let found = sqlx::query_scalar(db.sql.inbox_contains.sql())
            .bind(group.as_str())
            .bind(id.as_uuid())
            .fetch_one(self.tx().await?)
            .await;
        self.sqlx(found, "reading the inbox")
    }

    async fn inbox_insert(&mut self, group: &GroupName, entry: &InboxEntry) -> Result<()> {
        let db = self.db.clone();
        let done = sqlx::query(db.sql.inbox_insert.sql())
            .bind(group.as_str())
            .bind(entry.id.as_uuid())
            .bind(entry.applied)
            .bind(entry.source as i64)
            .bind(entry.correlation.map(|c| c as i64))
            .execute(self.tx().await?)
            .await;
        let done = self.sqlx(done, "writing the inbox")?;
        if done.rows_affected() == 0 {
            return Err(Error::invalid(format!(
                "message {} is already in {group}'s inbox",
                entry.id
            )));
        }
        self.wrote = true;
        Ok(())
    }

    async fn inbox_mark_applied(&mut self, group: &GroupName, entry: &InboxEntry) -> Result<()> {
        let db = self.db.clone();
        let done = sqlx::query(db.sql.inbox_mark_applied.sql())
            .bind(group.as_str())
            .bind(entry.id.as_uuid())
            .bind(entry.source as i64)
            .bind(entry.correlation.map(|c| c as i64))
            .execute(self.tx().await?)
            .await;
        self.sqlx(done, "writing the inbox")?;
        self.wrote = true;
        Ok(())
    }

    // The batched lookups take arrays and probe the index once per element (see their SQL).
    // They run as unnamed statements, planned each time for the table as it is now: as named
    // (cached) statements PostgreSQL soon settles on a generic plan made from the statistics
    // of the moment, and one planned while the inbox was nearly empty scans it (seen: a
    // consumer slowing down as its inbox grew). That costs one more round trip per unit; a
    // unit of one message uses the single-row statements instead.
    async fn inbox_seen(&mut self, group: &GroupName, ids: &[EventId]) -> Result<HashSet<EventId>> {
        let db = self.db.clone();
        if let [id] = ids {
            let seen = self.inbox_contains(group, id).await?;
            return Ok(seen.then_some(*id).into_iter().collect());
        }
        let ids: Vec<uuid::Uuid> = ids.iter().map(EventId::as_uuid).collect();
        let found = sqlx::query_scalar(db.sql.inbox_seen.sql())
            .bind(group.as_str())
            .bind(&ids)
            .persistent(false)
            .fetch_all(self.tx().await?)
            .await;
        let seen: Vec<uuid::Uuid> = self.sqlx(found, "reading the inbox")?;
        Ok(seen.into_iter().map(EventId::from_uuid).collect())
    }

    async fn inbox_insert_all(&mut self, group: &GroupName, entries: &[InboxEntry]) -> Result<()> {
        match entries {
            [] => return Ok(()),
            [entry] => return self.inbox_insert(group, entry).await,
            _ => {}
        }
        let db = self.db.clone();
        let ids: Vec<uuid::Uuid> = entries.iter().map(|e| e.id.as_uuid()).collect();
        let applied: Vec<bool> = entries.iter().map(|e| e.applied).collect();
        let sources: Vec<i64> = entries.iter().map(|e| e.source as i64).collect();
        let correlations: Vec<Option<i64>> = entries
            .iter()
            .map(|e| e.correlation.map(|c| c as i64))
            .collect();
        let done = sqlx::query(db.sql.inbox_insert_all.sql())
            .bind(group.as_str())
            .bind(&ids)
            .bind(&applied)
            .bind(&sources)
            .bind(&correlations)
            .execute(self.tx().await?)
            .await;
        let done = self.sqlx(done, "writing the inbox")?;
        if done.rows_affected() != entries.len() as u64 {
            return Err(Error::invalid(format!(
                "{} of {} messages were already in {group}'s inbox",
                entries.len() as u64 - done.rows_affected(),
                entries.len()
            )));
        }
        self.wrote = true;
        Ok(())
    }

    async fn blocking_dead_letters(
        &mut self,
        group: &GroupName,
        keys: &[&str],
    ) -> Result<HashMap<String, DeadLetterId>> {
        let db = self.db.clone();
        if let [key] = keys {
            let blocker = self.blocking_dead_letter(group, key).await?;
            return Ok(blocker
                .map(|id| ((*key).to_owned(), id))
                .into_iter()
                .collect());
        }
        let found = sqlx::query_as(db.sql.blocking_dead_letters.sql())
            .bind(group.as_str())
            .bind(keys)
            .persistent(false)
            .fetch_all(self.tx().await?)
            .await;
        let rows: Vec<(String, i64)> = self.sqlx(found, "looking for dead letters of keys")?;
        Ok(rows
            .into_iter()
            .map(|(key, id)| (key, DeadLetterId::new(id as u64)))
            .collect())
    }

    async fn clear_inbox(&mut self, group: &GroupName) -> Result<u64> {
        let db = self.db.clone();
        let done = sqlx::query(db.sql.clear_inbox.sql())
            .bind(group.as_str())
            .execute(self.tx().await?)
            .await;
        let done = self.sqlx(done, "clearing an inbox")?;
        self.wrote = true;
        Ok(done.rows_affected())
    }

    async fn blocking_dead_letter(
        &mut self,
        group: &GroupName,
        key: &str,
    ) -> Result<Option<DeadLetterId>> {
        let db = self.db.clone();
        let found = sqlx::query_scalar(db.sql.blocking_dead_letter.sql())
            .bind(group.as_str())
            .bind(key)
            .fetch_optional(self.tx().await?)
            .await;
        let id: Option<i64> = self.sqlx(found, "looking for dead letters of a key")?;
        Ok(id.map(|id| DeadLetterId::new(id as u64)))
    }

    async fn insert_dead_letter(&mut self, letter: NewDeadLetter) -> Result<DeadLetterId> {
        let db = self.db.clone();
        let inserted = sqlx::query_scalar(db.sql.insert_dead_letter.sql())
            .bind(letter.group.as_str())
            .bind(letter.topic.as_str())
            .bind(i64::from(letter.partition.get()))
            .bind(letter.offset.get() as i64)
            .bind(letter.message_id.map(|id| id.as_uuid()))
            .bind(&letter.key)
            .bind(&letter.event_type)
            .bind(&letter.payload)
            .bind(&letter.reason)
            .bind(i64::from(letter.attempts))
            .bind(letter.first_failed_at)
            .bind(letter.parked_behind.map(|id| id.get() as i64))
            .fetch_one(self.tx().await?)
            .await;
        let id: i64 = self.sqlx(inserted, "writing a dead letter")?;
        self.wrote = true;
        Ok(DeadLetterId::new(id as u64))
    }

    async fn dead_letter(&mut self, id: DeadLetterId) -> Result<Option<DeadLetter>> {
        let db = self.db.clone();
        let row = sqlx::query(db.sql.get_dead_letter.sql())
            .bind(id.get() as i64)
            .fetch_optional(self.tx().await?)
            .await;
        let row = self.sqlx(row, "reading a dead letter")?;
        row.as_ref()
            .map(crate::service::decode_dead_letter)
            .transpose()
    }

    async fn resolve_dead_letter(
        &mut self,
        id: DeadLetterId,
        resolution: Resolution,
    ) -> Result<()> {
        let db = self.db.clone();
        let done = sqlx::query(db.sql.resolve_dead_letter.sql())
            .bind(id.get() as i64)
            .bind(resolution.as_str())
            .execute(self.tx().await?)
            .await;
        let done = self.sqlx(done, "resolving a dead letter")?;
        if done.rows_affected() == 0 {
            return Err(Error::invalid(format!(
                "dead letter {id} does not exist or is already resolved"
            )));
        }
        self.wrote = true;
        Ok(())
    }

    async fn record_dead_letter_failure(&mut self, id: DeadLetterId, reason: &str) -> Result<()> {
        let db = self.db.clone();
        let done = sqlx::query(db.sql.dead_letter_failure.sql())
            .bind(id.get() as i64)
            .bind(reason)
            .execute(self.tx().await?)
            .await;
        self.sqlx(done, "recording a dead letter failure")?;
        self.wrote = true;
        Ok(())
    }

    async fn checkpoint(&mut self, name: &str) -> Result<Option<Position>> {
        let db = self.db.clone();
        // Locked, so that a rebuild's reset commits before this read or after this unit,
        // never in between (where this unit's write would undo the reset).
        let found = sqlx::query_scalar(db.sql.lock_checkpoint.sql())
            .bind(name)
            .fetch_optional(self.tx().await?)
            .await;
        let p: Option<i64> = self.sqlx(found, "reading a checkpoint")?;
        // Positions are u64 stored bit for bit in a bigint.
        Ok(p.map(|p| Position::new(p as u64)))
    }

    async fn set_checkpoint(&mut self, name: &str, position: Position) -> Result<()> {
        let db = self.db.clone();
        let done = sqlx::query(db.sql.set_checkpoint.sql())
            .bind(name)
            .bind(position.get() as i64)
            .execute(self.tx().await?)
            .await;
        self.sqlx(done, "writing a checkpoint")?;
        self.wrote = true;
        Ok(())
    }

    async fn savepoint(&mut self) -> Result<()> {
        // What the unit held before the savepoint must be written before it, or rolling back
        // to it would drop that too; so the unit only ever holds what came after the innermost
        // savepoint, and a rollback to it drops what is held.
        self.flush().await?;
        let sql = format!("SAVEPOINT tributary_nested_{}", self.savepoints.len() + 1);
        let done = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(self.tx().await?)
            .await;
        self.sqlx(done, "opening a savepoint")?;
        self.savepoints.push(self.docs.clone());
        Ok(())
    }

    async fn release_savepoint(&mut self) -> Result<()> {
        if self.savepoints.is_empty() {
            return Err(Error::invalid("no savepoint to release"));
        }
        let sql = format!(
            "RELEASE SAVEPOINT tributary_nested_{}",
            self.savepoints.len()
        );
        let done = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(self.tx().await?)
            .await;
        self.savepoints.pop();
        self.sqlx(done, "releasing a savepoint")?;
        Ok(())
    }

    async fn rollback_savepoint(&mut self) -> Result<()> {
        let Some(docs) = self.savepoints.pop() else {
            return Err(Error::invalid("no savepoint to roll back"));
        };
        let name = format!("tributary_nested_{}", self.savepoints.len() + 1);
        let sql = format!("ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}");
        let done = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(self.tx().await?)
            .await;
        self.sqlx(done, "rolling back a savepoint")?;
        // Back at the savepoint: whatever failed after it is undone, and the locks taken after
        // it are released.
        self.docs = docs;
        self.outbox.clear();
        self.outbox_bytes = 0;
        self.failed = false;
        Ok(())
    }

    fn start_message(&mut self, index: usize) {
        self.message = index;
    }
}
