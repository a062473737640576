//! The unit of work on PostgreSQL: one transaction on one pooled connection.
//!
//! A unit's closure is synchronous. It runs on a blocking thread (`spawn_blocking`), where a
//! [`PgTx`] holds the unit's `sqlx::Transaction` and a handle to the tokio runtime; each method
//! blocks on its sqlx call. The unit commits when the closure returns `Ok` and rolls back when
//! it returns an error or panics.
//!
//! Consistency inside a unit (the transaction runs at READ COMMITTED):
//! - a document read with `get` is locked (`SELECT … FOR UPDATE`) until the unit ends, so two
//!   units cannot both update a document from the same old value: the second waits and reads
//!   the first's result;
//! - a document read as absent and then `put` is inserted only if no other unit created it
//!   meanwhile; otherwise the put fails with a retryable [`Error::Conflict`];
//! - an append that loses a race to another unit reports a conflict from the stream's new
//!   version (the lost insert is rolled back to a savepoint, the unit stays usable);
//! - a failed statement aborts a PostgreSQL transaction: a unit that swallows such an error
//!   and returns `Ok` is rolled back and reported, never silently half-committed.
//!
//! Published events, and updates of documents the unit holds locked (see `documents.rs`), are
//! held in the unit and written in one statement each when it commits (also before a
//! savepoint, and before the raw transaction is handed out, so that SQL of the service's own
//! sees them), instead of one round trip each. Such a write that fails then fails the unit,
//! at commit.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use sqlx::{PgConnection, Postgres, Transaction};
use tokio::runtime::Handle;
use tributary_core::{
    AppendOutcome, ConsumerTx, DeadLetter, DeadLetterId, Envelope, Error, EventId, ExpectedVersion,
    GroupName, NewDeadLetter, OutgoingMessage, Payload, Position, RecordedEvent, Resolution,
    Result, StreamId, StreamVersion, Topic, UnitOfWork, Work, WorkError, validate_batch,
    validate_document_key,
};

use crate::database::{Inner, PgDatabase};
use crate::error::db_error;
use crate::event_store::{Mode, append, read_stream_in};
use crate::outbox;
use crate::sql::Statements;

mod documents;

use documents::{Documents, key, write_updates};

/// Held events or document updates are written once this many are waiting, to bound a
/// unit's memory.
const HELD_WRITES_MAX: usize = 1000;
const HELD_EVENT_BYTES_MAX: usize = 8 << 20;

/// The transaction a unit of work runs in. Downcast a `&mut dyn UnitOfWork` to it with
/// [`PgTx::from_unit`] to run your own SQL in the same transaction:
///
/// ```no_run
/// use tributary_core::{Database, Error, UnitOfWork};
/// use tributary_postgres::{PgDatabase, PgTx};
///
/// # async fn f(db: PgDatabase) -> Result<(), Error> {
/// let db: &dyn Database = &db;
/// db.transact(|unit: &mut dyn UnitOfWork| {
///     let pg = PgTx::from_unit(unit).expect("a PostgreSQL unit");
///     let (runtime, tx) = pg.parts();
///     runtime
///         .block_on(sqlx::query("UPDATE my_table SET n = n + 1").execute(&mut **tx))
///         .map_err(|e| Error::storage("updating my_table", e))?;
///     Ok::<_, Error>(())
/// })
/// .await
/// # }
/// ```
pub struct PgTx {
    tx: Transaction<'static, Postgres>,
    handle: Handle,
    db: Arc<Inner>,
    /// Open `ConsumerTx` savepoints, each with what the unit knew of documents at the time.
    savepoints: Vec<Documents>,
    /// What the unit knows of the documents it touched, and the updates it holds.
    docs: Documents,
    /// Events published and not yet written to the outbox (see the module doc), and their size.
    outbox: Vec<OutgoingMessage>,
    outbox_bytes: usize,
    /// Writing held events or updates failed when the raw transaction was handed out: the
    /// unit fails with this error.
    deferred: Option<Error>,
    /// A statement failed since the last savepoint rollback: the transaction may be aborted.
    failed: bool,
    /// The raw transaction was handed out: anything may have happened to it.
    raw: bool,
    wrote: bool,
}

impl PgTx {
    /// The PostgreSQL transaction behind a unit of work, if the unit runs on PostgreSQL.
    pub fn from_unit(unit: &mut dyn UnitOfWork) -> Option<&mut PgTx> {
        unit.backend().downcast_mut::<PgTx>()
    }

    /// The runtime handle to block on and the unit's transaction, for the service's own SQL.
    /// Do not commit or roll back the transaction yourself. A statement that fails aborts the
    /// whole unit: return its error from the unit.
    pub fn parts(&mut self) -> (&Handle, &mut Transaction<'static, Postgres>) {
        if let Err(e) = self.flush() {
            self.deferred.get_or_insert(e);
        }
        self.raw = true;
        self.wrote = true;
        (&self.handle, &mut self.tx)
    }

    /// The schema of the service's tables.
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
    fn flush(&mut self) -> Result<()> {
        self.outbox_bytes = 0;
        let held = write_held(&mut self.tx, &self.db.sql, &mut self.docs, &mut self.outbox);
        let done = self.handle.block_on(held);
        self.checked(done)
    }

    /// Commits (when `outcome` is Ok and the transaction is healthy) or rolls back.
    async fn finish(
        mut self,
        outcome: Result<Box<dyn Any + Send>, WorkError>,
    ) -> Result<Box<dyn Any + Send>, WorkError> {
        let outcome = match (outcome, self.deferred.take()) {
            (Ok(_), Some(e)) => Err(WorkError::Failed(e)),
            (outcome, _) => outcome,
        };
        let value = match outcome {
            Ok(value) => value,
            Err(e) => {
                if let Err(rollback) = self.tx.rollback().await {
                    tracing::debug!(error = %rollback, "rolling back a failed unit of work failed; the connection is discarded");
                }
                return Err(e);
            }
        };
        // A transaction that hit an error answers COMMIT with a silent ROLLBACK: ask first.
        if (self.failed || self.raw)
            && let Err(e) = sqlx::raw_sql("SELECT 1").execute(&mut *self.tx).await
        {
            let _ = self.tx.rollback().await;
            return Err(WorkError::Failed(Error::storage(
                "a statement of the unit of work failed, but the unit returned Ok; it was rolled back (return the statement's error from the unit)",
                e,
            )));
        }
        let held = write_held(&mut self.tx, &self.db.sql, &mut self.docs, &mut self.outbox);
        if let Err(e) = held.await {
            let _ = self.tx.rollback().await;
            return Err(WorkError::Failed(e));
        }
        self.tx
            .commit()
            .await
            .map_err(|e| WorkError::Failed(db_error("committing a unit of work", e)))?;
        if self.wrote {
            self.db.committed();
        }
        Ok(value)
    }
}

/// Writes the document updates and events a unit holds (none: no round trip).
async fn write_held(
    conn: &mut PgConnection,
    sql: &Statements,
    docs: &mut Documents,
    outbox: &mut Vec<OutgoingMessage>,
) -> Result<()> {
    write_updates(conn, sql, &docs.take_updates()).await?;
    outbox::insert_all(conn, sql, &std::mem::take(outbox)).await
}

/// Runs `work` as one transaction (see the module doc).
pub(crate) async fn execute(db: &PgDatabase, work: Work) -> Result<Box<dyn Any + Send>, WorkError> {
    let tx = db
        .inner
        .pool
        .begin()
        .await
        .map_err(|e| WorkError::Failed(db_error("starting a unit of work", e)))?;
    let handle = Handle::current();
    let inner = db.inner.clone();
    let (outcome, tx) = tokio::task::spawn_blocking(move || {
        let mut tx = PgTx {
            tx,
            handle,
            db: inner,
            savepoints: Vec::new(),
            docs: Documents::default(),
            outbox: Vec::new(),
            outbox_bytes: 0,
            deferred: None,
            failed: false,
            raw: false,
            wrote: false,
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| work(&mut tx))).unwrap_or_else(|panic| {
            Err(WorkError::Failed(Error::panicked(
                "unit of work",
                panic.as_ref(),
            )))
        });
        (outcome, tx)
    })
    .await
    .map_err(|e| WorkError::Failed(Error::unavailable("unit of work thread", e)))?;
    tx.finish(outcome).await
}

/// The conflict reported when a document this unit read as absent was created by another
/// unit meanwhile. The core error has no document variant, so the document is named as a
/// stream `<collection>/<id>` that was expected not to exist.
fn document_conflict(collection: &str, id: &str) -> Error {
    let mut name = format!("{collection}/{id}");
    let mut cut = name.len().min(tributary_core::MAX_STREAM_ID_LEN);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    name.truncate(cut);
    match StreamId::new(name) {
        Ok(stream) => Error::Conflict {
            stream,
            expected: ExpectedVersion::NoStream,
            actual: StreamVersion::new(1),
        },
        Err(_) => Error::unavailable(
            format!("document {collection}/{id}"),
            "another unit of work created it concurrently; retry",
        ),
    }
}

fn decode_document(body: Option<String>) -> Result<Option<Payload>> {
    body.map(|b| Payload::from_json_str(b).map_err(|e| Error::decode("document", e)))
        .transpose()
}

impl UnitOfWork for PgTx {
    fn get(&mut self, collection: &str, id: &str) -> Result<Option<Payload>> {
        validate_document_key(collection, id)?;
        let k = key(collection, id);
        if let Some(held) = self.docs.held(&k) {
            return Ok(Some(held.clone()));
        }
        let found = self.handle.block_on(
            sqlx::query_scalar(self.db.sql.get_document.sql())
                .bind(collection)
                .bind(id)
                .fetch_optional(&mut *self.tx),
        );
        let body: Option<String> = self.sqlx(found, "reading a document")?;
        self.docs.read(k, body.is_some());
        decode_document(body)
    }

    fn put(&mut self, collection: &str, id: &str, document: Payload) -> Result<()> {
        validate_document_key(collection, id)?;
        let k = key(collection, id);
        let Some(document) = self.docs.hold(k.clone(), document) else {
            self.wrote = true;
            if self.docs.held_count() >= HELD_WRITES_MAX {
                self.flush()?;
            }
            return Ok(());
        };
        let create = self.docs.must_create(&k);
        let statement = if create {
            &self.db.sql.create_document
        } else {
            &self.db.sql.put_document
        };
        let done = self.handle.block_on(
            sqlx::query(statement.sql())
                .bind(collection)
                .bind(id)
                .bind(document.as_str())
                .execute(&mut *self.tx),
        );
        let done = self.sqlx(done, "writing a document")?;
        if create && done.rows_affected() == 0 {
            return Err(document_conflict(collection, id));
        }
        self.docs.written(k);
        self.wrote = true;
        Ok(())
    }

    fn delete(&mut self, collection: &str, id: &str) -> Result<bool> {
        validate_document_key(collection, id)?;
        let done = self.handle.block_on(
            sqlx::query(self.db.sql.delete_document.sql())
                .bind(collection)
                .bind(id)
                .execute(&mut *self.tx),
        );
        let done = self.sqlx(done, "deleting a document")?;
        self.docs.deleted(&key(collection, id));
        self.wrote = true;
        Ok(done.rows_affected() > 0)
    }

    fn clear_collection(&mut self, collection: &str) -> Result<u64> {
        validate_document_key(collection, "-")?;
        let done = self.handle.block_on(
            sqlx::query(self.db.sql.clear_collection.sql())
                .bind(collection)
                .execute(&mut *self.tx),
        );
        let done = self.sqlx(done, "clearing a collection")?;
        self.docs.cleared(collection);
        self.wrote = true;
        Ok(done.rows_affected())
    }

    fn publish(&mut self, topic: &Topic, event: Envelope) -> Result<()> {
        let message = outbox::outgoing(topic, &event, self.db.config.max_event_bytes)?;
        self.outbox_bytes += message.payload.len();
        self.outbox.push(message);
        self.wrote = true;
        if self.outbox.len() >= HELD_WRITES_MAX || self.outbox_bytes >= HELD_EVENT_BYTES_MAX {
            self.flush()?;
        }
        Ok(())
    }

    fn append(
        &mut self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<Envelope>,
    ) -> Result<AppendOutcome> {
        validate_batch(&events, self.db.config.max_event_bytes)?;
        let done = self.handle.block_on(append(
            &mut self.tx,
            &self.db.sql,
            stream,
            expected,
            &events,
            Mode::InTransaction,
        ));
        let done = self.checked(done)?;
        if !done.deduplicated {
            self.wrote = true;
        }
        Ok(done)
    }

    fn read_stream(
        &mut self,
        stream: &StreamId,
        from: StreamVersion,
        max: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let read = self.handle.block_on(read_stream_in(
            &mut *self.tx,
            &self.db.sql,
            stream,
            from,
            max,
        ));
        self.checked(read)
    }

    fn backend(&mut self) -> &mut dyn Any {
        self
    }
}

impl ConsumerTx for PgTx {
    fn inbox_contains(&mut self, group: &GroupName, id: &EventId) -> Result<bool> {
        let found = self.handle.block_on(
            sqlx::query_scalar(self.db.sql.inbox_contains.sql())
                .bind(group.as_str())
                .bind(id.as_uuid())
                .fetch_one(&mut *self.tx),
        );
        self.sqlx(found, "reading the inbox")
    }

    fn inbox_insert(&mut self, group: &GroupName, id: &EventId) -> Result<()> {
        let done = self.handle.block_on(
            sqlx::query(self.db.sql.inbox_insert.sql())
                .bind(group.as_str())
                .bind(id.as_uuid())
                .execute(&mut *self.tx),
        );
        let done = self.sqlx(done, "writing the inbox")?;
        if done.rows_affected() == 0 {
            return Err(Error::invalid(format!(
                "message {id} is already in {group}'s inbox"
            )));
        }
        self.wrote = true;
        Ok(())
    }

    // The batched lookups take arrays and probe the index once per element (see their SQL).
    // They run as unnamed statements, planned each time for the table as it is now: as named
    // (cached) statements PostgreSQL soon settles on a generic plan made from the statistics
    // of the moment, and one planned while the inbox was nearly empty scans it (seen: a
    // consumer slowing down as its inbox grew). That costs one more round trip per unit; a
    // unit of one message uses the single-row statements instead.
    fn inbox_seen(&mut self, group: &GroupName, ids: &[EventId]) -> Result<HashSet<EventId>> {
        if let [id] = ids {
            let seen = self.inbox_contains(group, id)?;
            return Ok(seen.then_some(*id).into_iter().collect());
        }
        let ids: Vec<uuid::Uuid> = ids.iter().map(EventId::as_uuid).collect();
        let found = self.handle.block_on(
            sqlx::query_scalar(self.db.sql.inbox_seen.sql())
                .bind(group.as_str())
                .bind(&ids)
                .persistent(false)
                .fetch_all(&mut *self.tx),
        );
        let seen: Vec<uuid::Uuid> = self.sqlx(found, "reading the inbox")?;
        Ok(seen.into_iter().map(EventId::from_uuid).collect())
    }

    fn inbox_insert_all(&mut self, group: &GroupName, ids: &[EventId]) -> Result<()> {
        match ids {
            [] => return Ok(()),
            [id] => return self.inbox_insert(group, id),
            _ => {}
        }
        let uuids: Vec<uuid::Uuid> = ids.iter().map(EventId::as_uuid).collect();
        let done = self.handle.block_on(
            sqlx::query(self.db.sql.inbox_insert_all.sql())
                .bind(group.as_str())
                .bind(&uuids)
                .execute(&mut *self.tx),
        );
        let done = self.sqlx(done, "writing the inbox")?;
        if done.rows_affected() != ids.len() as u64 {
            return Err(Error::invalid(format!(
                "{} of {} messages were already in {group}'s inbox",
                ids.len() as u64 - done.rows_affected(),
                ids.len()
            )));
        }
        self.wrote = true;
        Ok(())
    }

    fn blocking_dead_letters(
        &mut self,
        group: &GroupName,
        keys: &[&str],
    ) -> Result<HashMap<String, DeadLetterId>> {
        if let [key] = keys {
            let blocker = self.blocking_dead_letter(group, key)?;
            return Ok(blocker
                .map(|id| ((*key).to_owned(), id))
                .into_iter()
                .collect());
        }
        let found = self.handle.block_on(
            sqlx::query_as(self.db.sql.blocking_dead_letters.sql())
                .bind(group.as_str())
                .bind(keys)
                .persistent(false)
                .fetch_all(&mut *self.tx),
        );
        let rows: Vec<(String, i64)> = self.sqlx(found, "looking for dead letters of keys")?;
        Ok(rows
            .into_iter()
            .map(|(key, id)| (key, DeadLetterId::new(id as u64)))
            .collect())
    }

    fn clear_inbox(&mut self, group: &GroupName) -> Result<u64> {
        let done = self.handle.block_on(
            sqlx::query(self.db.sql.clear_inbox.sql())
                .bind(group.as_str())
                .execute(&mut *self.tx),
        );
        let done = self.sqlx(done, "clearing an inbox")?;
        self.wrote = true;
        Ok(done.rows_affected())
    }

    fn blocking_dead_letter(
        &mut self,
        group: &GroupName,
        key: &str,
    ) -> Result<Option<DeadLetterId>> {
        let found = self.handle.block_on(
            sqlx::query_scalar(self.db.sql.blocking_dead_letter.sql())
                .bind(group.as_str())
                .bind(key)
                .fetch_optional(&mut *self.tx),
        );
        let id: Option<i64> = self.sqlx(found, "looking for dead letters of a key")?;
        Ok(id.map(|id| DeadLetterId::new(id as u64)))
    }

    fn insert_dead_letter(&mut self, letter: NewDeadLetter) -> Result<DeadLetterId> {
        let inserted = self.handle.block_on(
            sqlx::query_scalar(self.db.sql.insert_dead_letter.sql())
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
                .fetch_one(&mut *self.tx),
        );
        let id: i64 = self.sqlx(inserted, "writing a dead letter")?;
        self.wrote = true;
        Ok(DeadLetterId::new(id as u64))
    }

    fn dead_letter(&mut self, id: DeadLetterId) -> Result<Option<DeadLetter>> {
        let row = self.handle.block_on(
            sqlx::query(self.db.sql.get_dead_letter.sql())
                .bind(id.get() as i64)
                .fetch_optional(&mut *self.tx),
        );
        let row = self.sqlx(row, "reading a dead letter")?;
        row.as_ref()
            .map(crate::service::decode_dead_letter)
            .transpose()
    }

    fn resolve_dead_letter(&mut self, id: DeadLetterId, resolution: Resolution) -> Result<()> {
        let done = self.handle.block_on(
            sqlx::query(self.db.sql.resolve_dead_letter.sql())
                .bind(id.get() as i64)
                .bind(resolution.as_str())
                .execute(&mut *self.tx),
        );
        let done = self.sqlx(done, "resolving a dead letter")?;
        if done.rows_affected() == 0 {
            return Err(Error::invalid(format!(
                "dead letter {id} does not exist or is already resolved"
            )));
        }
        self.wrote = true;
        Ok(())
    }

    fn record_dead_letter_failure(&mut self, id: DeadLetterId, reason: &str) -> Result<()> {
        let done = self.handle.block_on(
            sqlx::query(self.db.sql.dead_letter_failure.sql())
                .bind(id.get() as i64)
                .bind(reason)
                .execute(&mut *self.tx),
        );
        self.sqlx(done, "recording a dead letter failure")?;
        self.wrote = true;
        Ok(())
    }

    fn checkpoint(&mut self, name: &str) -> Result<Option<Position>> {
        // Locked, so that a rebuild's reset commits before this read or after this unit,
        // never in between (where this unit's write would undo the reset).
        let found = self.handle.block_on(
            sqlx::query_scalar(self.db.sql.lock_checkpoint.sql())
                .bind(name)
                .fetch_optional(&mut *self.tx),
        );
        let p: Option<i64> = self.sqlx(found, "reading a checkpoint")?;
        // Positions are u64 stored bit for bit in a bigint.
        Ok(p.map(|p| Position::new(p as u64)))
    }

    fn set_checkpoint(&mut self, name: &str, position: Position) -> Result<()> {
        let done = self.handle.block_on(
            sqlx::query(self.db.sql.set_checkpoint.sql())
                .bind(name)
                .bind(position.get() as i64)
                .execute(&mut *self.tx),
        );
        self.sqlx(done, "writing a checkpoint")?;
        self.wrote = true;
        Ok(())
    }

    fn savepoint(&mut self) -> Result<()> {
        // What the unit held before the savepoint must be written before it, or rolling back
        // to it would drop that too; so the unit only ever holds what came after the innermost
        // savepoint, and a rollback to it drops what is held.
        self.flush()?;
        let sql = format!("SAVEPOINT tributary_nested_{}", self.savepoints.len() + 1);
        let done = self
            .handle
            .block_on(sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut *self.tx));
        self.sqlx(done, "opening a savepoint")?;
        self.savepoints.push(self.docs.clone());
        Ok(())
    }

    fn release_savepoint(&mut self) -> Result<()> {
        if self.savepoints.is_empty() {
            return Err(Error::invalid("no savepoint to release"));
        }
        let sql = format!(
            "RELEASE SAVEPOINT tributary_nested_{}",
            self.savepoints.len()
        );
        let done = self
            .handle
            .block_on(sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut *self.tx));
        self.savepoints.pop();
        self.sqlx(done, "releasing a savepoint")?;
        Ok(())
    }

    fn rollback_savepoint(&mut self) -> Result<()> {
        let Some(docs) = self.savepoints.pop() else {
            return Err(Error::invalid("no savepoint to roll back"));
        };
        let name = format!("tributary_nested_{}", self.savepoints.len() + 1);
        let sql = format!("ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}");
        let done = self
            .handle
            .block_on(sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut *self.tx));
        self.sqlx(done, "rolling back a savepoint")?;
        // Back at the savepoint: whatever failed after it is undone, and the locks taken after
        // it are released.
        self.docs = docs;
        self.outbox.clear();
        self.outbox_bytes = 0;
        self.failed = false;
        Ok(())
    }
}
