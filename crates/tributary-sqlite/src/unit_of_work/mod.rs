//! The unit of work on SQLite: one transaction (or savepoint) on the writer's connection.
//!
//! Units run on the database's writer thread, inside the group commit. Inside a consumer, the
//! inbox entry, the handler's state changes and the events it publishes commit together.

use std::any::Any;

use async_trait::async_trait;
use chrono::Utc;
use rusqlite::{Connection, OptionalExtension, params};
use tributary_core::backend::{
    ConsumerTx, InboxEntry, validate_batch, validate_document, validate_document_key,
};
use tributary_core::{
    AppendOutcome, DeadLetter, DeadLetterId, Envelope, Error, EventId, ExpectedVersion, GroupName,
    NewDeadLetter, OutgoingMessage, Payload, Position, RecordedEvent, Resolution, Result, Snapshot,
    StreamId, StreamVersion, Topic, UnitOfWork,
};

use crate::event_store::{append_in_tx, load_snapshot_in, read_stream_in, save_snapshot_in};
use crate::sql_error::{SqlResultExt, is_unique_violation, sql_error};

/// Milliseconds since the Unix epoch, the time unit of the messaging tables.
pub(crate) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// The transaction a unit of work runs in, on the database's writer thread. Reach it from a
/// unit with [`SqliteUnitExt::sqlite`] to run the service's own SQL on its own tables in the
/// same transaction:
///
/// ```
/// use std::sync::Arc;
/// use tributary_core::{Database, Error};
/// use tributary_sqlite::{SqliteConfig, SqliteDatabase, SqliteUnitExt};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// # let dir = tempfile::tempdir().unwrap();
/// let db: Arc<dyn Database> =
///     Arc::new(SqliteDatabase::open(dir.path().join("inventory.db"), SqliteConfig::default())?);
/// db.transact(|unit| Box::pin(async move {
///     let conn = unit.sqlite()?.connection();
///     conn.execute("CREATE TABLE IF NOT EXISTS products (sku TEXT PRIMARY KEY, stock INTEGER)", [])?;
///     conn.execute("INSERT INTO products VALUES ('a-1', 5)", [])?;
///     Ok::<_, Error>(())
/// }))
/// .await?;
/// # Ok::<_, Error>(()) }).unwrap();
/// ```
pub struct SqliteTx {
    conn: Connection,
    max_event_bytes: usize,
    nesting: usize,
}

impl SqliteTx {
    pub(crate) fn new(conn: Connection, max_event_bytes: usize) -> Self {
        Self {
            conn,
            max_event_bytes,
            nesting: 0,
        }
    }

    /// The connection, inside the unit's transaction (rusqlite is synchronous: no `.await`).
    /// Do not commit or roll back on it; a failing statement fails the unit when its error is
    /// returned.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    pub(crate) fn reset_nesting(&mut self) {
        self.nesting = 0;
    }

    fn exec(&self, sql: &str, what: &str) -> Result<()> {
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute([]))
            .map(|_| ())
            .context(what)
    }
}

#[async_trait]
impl UnitOfWork for SqliteTx {
    async fn get(&mut self, collection: &str, id: &str) -> Result<Option<Payload>> {
        validate_document_key(collection, id)?;
        let body: Option<String> = self
            .conn
            .prepare_cached(include_str!("get_document.sql"))
            .context("preparing get_document")?
            .query_row(params![collection, id], |r| r.get(0))
            .optional()
            .context("reading a document")?;
        body.map(|b| Payload::from_json_str(b).map_err(|e| Error::decode("document", e)))
            .transpose()
    }

    async fn put(&mut self, collection: &str, id: &str, document: Payload) -> Result<()> {
        validate_document_key(collection, id)?;
        validate_document(collection, id, document.as_str())?;
        self.conn
            .prepare_cached(include_str!("put_document.sql"))
            .context("preparing put_document")?
            .execute(params![collection, id, document.as_str()])
            .context("writing a document")?;
        Ok(())
    }

    async fn delete(&mut self, collection: &str, id: &str) -> Result<bool> {
        validate_document_key(collection, id)?;
        let n = self
            .conn
            .prepare_cached(include_str!("delete_document.sql"))
            .context("preparing delete_document")?
            .execute(params![collection, id])
            .context("deleting a document")?;
        Ok(n > 0)
    }

    async fn clear_collection(&mut self, collection: &str) -> Result<u64> {
        validate_document_key(collection, "-")?;
        let n = self
            .conn
            .prepare_cached(include_str!("clear_collection.sql"))
            .context("preparing clear_collection")?
            .execute([collection])
            .context("clearing a collection")?;
        Ok(n as u64)
    }

    async fn publish(&mut self, topic: &Topic, mut event: Envelope) -> Result<()> {
        tributary_core::trace::stamp(topic, &mut event);
        validate_batch(std::slice::from_ref(&event), self.max_event_bytes)?;
        let message = OutgoingMessage::from_envelope(topic.clone(), &event);
        self.conn
            .prepare_cached(include_str!("insert_outbox.sql"))
            .context("preparing insert_outbox")?
            .execute(params![
                message.topic.as_str(),
                message.key,
                &message.id.to_bytes()[..],
                message.payload
            ])
            .context("writing to the outbox")?;
        Ok(())
    }

    async fn append(
        &mut self,
        stream: &StreamId,
        expected: ExpectedVersion,
        mut events: Vec<Envelope>,
    ) -> Result<AppendOutcome> {
        tributary_core::trace::stamp_appended(stream, &mut events);
        validate_batch(&events, self.max_event_bytes)?;
        // All or nothing even inside a larger unit: a batch that fails half-way (an id used
        // elsewhere) must not leave its first events behind for a unit that goes on.
        self.exec("SAVEPOINT tributary_append", "opening a savepoint")?;
        match append_in_tx(&self.conn, stream, expected, &events) {
            Ok(outcome) => {
                self.exec("RELEASE tributary_append", "releasing a savepoint")?;
                Ok(outcome)
            }
            Err(e) => {
                if !self.conn.is_autocommit() {
                    let _ = self.exec("ROLLBACK TO tributary_append", "rolling back an append");
                    let _ = self.exec("RELEASE tributary_append", "releasing a savepoint");
                }
                Err(e)
            }
        }
    }

    async fn read_stream(
        &mut self,
        stream: &StreamId,
        from: StreamVersion,
        max: usize,
    ) -> Result<Vec<RecordedEvent>> {
        read_stream_in(&self.conn, stream, from, max)
    }

    async fn load_snapshot(&mut self, stream: &StreamId) -> Result<Option<Snapshot>> {
        load_snapshot_in(&self.conn, stream)
    }

    async fn save_snapshot(&mut self, stream: &StreamId, snapshot: Snapshot) -> Result<()> {
        save_snapshot_in(&self.conn, stream, &snapshot)
    }

    fn backend(&mut self) -> &mut dyn Any {
        self
    }
}

/// Typed access to the SQLite transaction behind a unit of work.
pub trait SqliteUnitExt {
    /// The unit's SQLite transaction, for the service's own SQL.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the unit does not run on SQLite.
    fn sqlite(&mut self) -> Result<&mut SqliteTx>;
}

impl<U: UnitOfWork + ?Sized> SqliteUnitExt for U {
    fn sqlite(&mut self) -> Result<&mut SqliteTx> {
        self.backend()
            .downcast_mut::<SqliteTx>()
            .ok_or_else(|| Error::invalid("this unit of work does not run on SQLite"))
    }
}

#[async_trait]
impl ConsumerTx for SqliteTx {
    async fn inbox_contains(&mut self, group: &GroupName, id: &EventId) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached(include_str!("inbox_contains.sql"))
            .context("preparing inbox_contains")?
            .query_row(params![group.as_str(), &id.to_bytes()[..]], |_| Ok(()))
            .optional()
            .context("reading the inbox")?
            .is_some())
    }

    async fn inbox_insert(&mut self, group: &GroupName, entry: &InboxEntry) -> Result<()> {
        self.conn
            .prepare_cached(include_str!("inbox_insert.sql"))
            .context("preparing inbox_insert")?
            .execute(params![
                group.as_str(),
                &entry.id.to_bytes()[..],
                now_ms(),
                entry.applied,
                entry.source as i64,
                entry.correlation.map(|c| c as i64),
            ])
            .map_err(|e| {
                if is_unique_violation(&e) {
                    Error::invalid(format!(
                        "message {} is already in {group}'s inbox",
                        entry.id
                    ))
                } else {
                    sql_error("writing the inbox", e)
                }
            })?;
        Ok(())
    }

    async fn inbox_mark_applied(&mut self, group: &GroupName, entry: &InboxEntry) -> Result<()> {
        self.conn
            .prepare_cached(include_str!("inbox_mark_applied.sql"))
            .context("preparing inbox_mark_applied")?
            .execute(params![
                group.as_str(),
                &entry.id.to_bytes()[..],
                now_ms(),
                entry.source as i64,
                entry.correlation.map(|c| c as i64),
            ])
            .context("writing the inbox")?;
        Ok(())
    }

    async fn clear_inbox(&mut self, group: &GroupName) -> Result<u64> {
        let n = self
            .conn
            .prepare_cached(include_str!("clear_inbox.sql"))
            .context("preparing clear_inbox")?
            .execute([group.as_str()])
            .context("clearing an inbox")?;
        Ok(n as u64)
    }

    async fn blocking_dead_letter(
        &mut self,
        group: &GroupName,
        key: &str,
    ) -> Result<Option<DeadLetterId>> {
        let id: Option<i64> = self
            .conn
            .prepare_cached(include_str!("blocking_dead_letter.sql"))
            .context("preparing blocking_dead_letter")?
            .query_row(params![group.as_str(), key], |r| r.get(0))
            .optional()
            .context("looking for dead letters of a key")?;
        Ok(id.map(|id| DeadLetterId::new(id as u64)))
    }

    async fn insert_dead_letter(&mut self, letter: NewDeadLetter) -> Result<DeadLetterId> {
        let now = now_ms();
        self.conn
            .prepare_cached(include_str!("insert_dead_letter.sql"))
            .context("preparing insert_dead_letter")?
            .execute(params![
                letter.group.as_str(),
                letter.topic.as_str(),
                letter.partition.get(),
                letter.offset.get() as i64,
                letter.message_id.map(|id| id.to_bytes().to_vec()),
                letter.key,
                letter.event_type,
                letter.payload,
                letter.reason,
                letter.attempts,
                letter.first_failed_at.timestamp_millis(),
                now,
                letter.parked_behind.map(|id| id.get() as i64),
            ])
            .context("writing a dead letter")?;
        Ok(DeadLetterId::new(self.conn.last_insert_rowid() as u64))
    }

    async fn dead_letter(&mut self, id: DeadLetterId) -> Result<Option<DeadLetter>> {
        let mut stmt = self
            .conn
            .prepare_cached(include_str!("../service/get_dead_letter.sql"))
            .context("preparing get_dead_letter")?;
        let mut rows = stmt
            .query([id.get() as i64])
            .context("reading a dead letter")?;
        rows.next()
            .context("reading a dead letter")?
            .map(crate::service::decode_dead_letter)
            .transpose()
    }

    async fn resolve_dead_letter(
        &mut self,
        id: DeadLetterId,
        resolution: Resolution,
    ) -> Result<()> {
        let n = self
            .conn
            .prepare_cached(include_str!("resolve_dead_letter.sql"))
            .context("preparing resolve_dead_letter")?
            .execute(params![id.get() as i64, resolution.as_str(), now_ms()])
            .context("resolving a dead letter")?;
        if n == 0 {
            return Err(Error::invalid(format!(
                "dead letter {id} does not exist or is already resolved"
            )));
        }
        Ok(())
    }

    async fn record_dead_letter_failure(&mut self, id: DeadLetterId, reason: &str) -> Result<()> {
        self.conn
            .prepare_cached(include_str!("dead_letter_failure.sql"))
            .context("preparing dead_letter_failure")?
            .execute(params![id.get() as i64, reason, now_ms()])
            .context("recording a dead letter failure")?;
        Ok(())
    }

    async fn checkpoint(&mut self, name: &str) -> Result<Option<Position>> {
        let p: Option<i64> = self
            .conn
            .prepare_cached(include_str!("get_checkpoint.sql"))
            .context("preparing get_checkpoint")?
            .query_row([name], |r| r.get(0))
            .optional()
            .context("reading a checkpoint")?;
        Ok(p.map(|p| Position::new(p as u64)))
    }

    async fn set_checkpoint(&mut self, name: &str, position: Position) -> Result<()> {
        self.conn
            .prepare_cached(include_str!("set_checkpoint.sql"))
            .context("preparing set_checkpoint")?
            .execute(params![name, position.get() as i64])
            .context("writing a checkpoint")?;
        Ok(())
    }

    async fn savepoint(&mut self) -> Result<()> {
        self.nesting += 1;
        self.exec(
            &format!("SAVEPOINT tributary_nested_{}", self.nesting),
            "opening a savepoint",
        )
    }

    async fn release_savepoint(&mut self) -> Result<()> {
        if self.nesting == 0 {
            return Err(Error::invalid("no savepoint to release"));
        }
        let sql = format!("RELEASE tributary_nested_{}", self.nesting);
        self.nesting -= 1;
        self.exec(&sql, "releasing a savepoint")
    }

    async fn rollback_savepoint(&mut self) -> Result<()> {
        if self.nesting == 0 {
            return Err(Error::invalid("no savepoint to roll back"));
        }
        let name = format!("tributary_nested_{}", self.nesting);
        self.nesting -= 1;
        self.exec(&format!("ROLLBACK TO {name}"), "rolling back a savepoint")?;
        self.exec(&format!("RELEASE {name}"), "releasing a savepoint")
    }
}
