//! A service's state and its events in one local transaction.
//!
//! A [`UnitOfWork`] reads and writes the service's own state as JSON documents, records
//! events to publish in the outbox, and appends to the event store — all committed together
//! or not at all. It looks the same on every backend, so code written against it runs
//! unchanged on SQLite and PostgreSQL. Units are synchronous closures: do slow or async work
//! (network calls) before the unit, and keep the unit short.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::broker::RelaySource;
use crate::dead_letter::{DeadLetter, DeadLetterId, DeadLetterStore, NewDeadLetter, Resolution};
use crate::envelope::Envelope;
use crate::error::{Error, ExpectedVersion, Result};
use crate::event_store::{AppendOutcome, EventStore, RecordedEvent};
use crate::ids::{EventId, Position, StreamId, StreamVersion};
use crate::payload::Payload;
use crate::topic::{GroupName, Topic};

/// The application's view of one local transaction.
///
/// A backend may hold writes in the unit and make them when it commits (PostgreSQL holds
/// published events and updates of documents the unit read, to save round trips): the unit
/// always reads its own writes, but a write the database refuses may then fail the unit at
/// commit rather than the call that made it. Either way nothing of a failed unit is kept.
pub trait UnitOfWork {
    /// The document `id` of `collection`, if it exists.
    fn get(&mut self, collection: &str, id: &str) -> Result<Option<Payload>>;

    /// Creates or replaces the document `id` of `collection`.
    fn put(&mut self, collection: &str, id: &str, document: Payload) -> Result<()>;

    /// Deletes the document; returns whether it existed.
    fn delete(&mut self, collection: &str, id: &str) -> Result<bool>;

    /// Deletes every document of `collection` (e.g. a view about to be rebuilt); returns how
    /// many there were.
    fn clear_collection(&mut self, collection: &str) -> Result<u64>;

    /// Records `event` in the outbox, to be published on `topic` after the unit commits.
    fn publish(&mut self, topic: &Topic, event: Envelope) -> Result<()>;

    /// Appends to the event store, as [`EventStore::append`].
    fn append(
        &mut self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<Envelope>,
    ) -> Result<AppendOutcome>;

    /// Reads a stream as of this transaction, as [`EventStore::read_stream`].
    fn read_stream(
        &mut self,
        stream: &StreamId,
        from: StreamVersion,
        max: usize,
    ) -> Result<Vec<RecordedEvent>>;

    /// The backend's own transaction object, for services that keep their own tables: downcast
    /// it to the backend's type (e.g. `tributary_sqlite::SqliteTx`).
    fn backend(&mut self) -> &mut dyn Any;
}

/// Typed access to documents.
pub trait UnitOfWorkExt: UnitOfWork {
    /// The document decoded as `T`.
    ///
    /// # Errors
    /// [`Error::Decode`] when the stored JSON does not have the shape of `T`.
    fn get_as<T: DeserializeOwned>(&mut self, collection: &str, id: &str) -> Result<Option<T>> {
        self.get(collection, id)?.map(|p| p.decode()).transpose()
    }

    /// Stores `document` serialized as JSON.
    fn put_as<T: Serialize + ?Sized>(
        &mut self,
        collection: &str,
        id: &str,
        document: &T,
    ) -> Result<()> {
        self.put(collection, id, Payload::from_value(document)?)
    }
}

impl<U: UnitOfWork + ?Sized> UnitOfWorkExt for U {}

/// What the consumer runtime needs inside a unit besides the application's view: the inbox,
/// dead letters, checkpoints and nested savepoints. Application code uses [`UnitOfWork`].
pub trait ConsumerTx: UnitOfWork {
    /// Whether `group` already processed message `id`.
    fn inbox_contains(&mut self, group: &GroupName, id: &EventId) -> Result<bool>;

    /// Records that `group` processed message `id`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when it was already recorded.
    fn inbox_insert(&mut self, group: &GroupName, id: &EventId) -> Result<()>;

    /// Forgets every message `group` processed (before rebuilding its view); returns how many.
    fn clear_inbox(&mut self, group: &GroupName) -> Result<u64>;

    /// The oldest unresolved dead letter of `group` with `key`: later messages with that key
    /// must be parked behind it.
    fn blocking_dead_letter(
        &mut self,
        group: &GroupName,
        key: &str,
    ) -> Result<Option<DeadLetterId>>;

    /// Which of `ids` `group` already processed. A networked database answers in one round
    /// trip; the default asks [`ConsumerTx::inbox_contains`] for each.
    fn inbox_seen(&mut self, group: &GroupName, ids: &[EventId]) -> Result<HashSet<EventId>> {
        let mut seen = HashSet::new();
        for id in ids {
            if self.inbox_contains(group, id)? {
                seen.insert(*id);
            }
        }
        Ok(seen)
    }

    /// Records that `group` processed each of `ids`, as [`ConsumerTx::inbox_insert`] does
    /// for one.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when one of them was already recorded.
    fn inbox_insert_all(&mut self, group: &GroupName, ids: &[EventId]) -> Result<()> {
        ids.iter().try_for_each(|id| self.inbox_insert(group, id))
    }

    /// [`ConsumerTx::blocking_dead_letter`] for each of `keys` that has one.
    fn blocking_dead_letters(
        &mut self,
        group: &GroupName,
        keys: &[&str],
    ) -> Result<HashMap<String, DeadLetterId>> {
        let mut blockers = HashMap::new();
        for key in keys {
            if let Some(id) = self.blocking_dead_letter(group, key)? {
                blockers.insert((*key).to_owned(), id);
            }
        }
        Ok(blockers)
    }

    fn insert_dead_letter(&mut self, letter: NewDeadLetter) -> Result<DeadLetterId>;

    /// A dead letter, resolved or not.
    fn dead_letter(&mut self, id: DeadLetterId) -> Result<Option<DeadLetter>>;

    /// Marks a dead letter resolved; it no longer blocks its key.
    fn resolve_dead_letter(&mut self, id: DeadLetterId, resolution: Resolution) -> Result<()>;

    /// Records another failed attempt on an unresolved dead letter.
    fn record_dead_letter_failure(&mut self, id: DeadLetterId, reason: &str) -> Result<()>;

    /// A named position (of a subscription or projection) stored with the data it covers.
    /// The read holds the checkpoint until the unit ends: another unit changing it (a rebuild's
    /// reset) commits before this read or after this unit, never in between.
    fn checkpoint(&mut self, name: &str) -> Result<Option<Position>>;

    fn set_checkpoint(&mut self, name: &str, position: Position) -> Result<()>;

    /// Opens a nested savepoint; pair with [`ConsumerTx::release_savepoint`] or
    /// [`ConsumerTx::rollback_savepoint`].
    fn savepoint(&mut self) -> Result<()>;

    fn release_savepoint(&mut self) -> Result<()>;

    fn rollback_savepoint(&mut self) -> Result<()>;
}

/// Why a unit of work did not commit: the store failed, or the work itself chose to stop
/// (with the caller's own error, carried back untouched). Either way nothing was written.
#[derive(Debug)]
pub enum WorkError {
    Failed(Error),
    Aborted(Box<dyn Any + Send>),
}

impl From<Error> for WorkError {
    fn from(e: Error) -> Self {
        WorkError::Failed(e)
    }
}

/// A unit of work with its result type erased, as a backend runs it.
pub type Work =
    Box<dyn FnOnce(&mut dyn ConsumerTx) -> Result<Box<dyn Any + Send>, WorkError> + Send>;

/// A service's own database: its documents, outbox, inbox, dead letters, checkpoints and
/// event store, written through units of work.
#[async_trait]
pub trait Database: Send + Sync + 'static {
    /// Runs `work` in one transaction and commits it, or rolls everything back when it fails.
    async fn execute(&self, work: Work) -> Result<Box<dyn Any + Send>, WorkError>;

    /// Changes after commits made through this handle (wake-ups for relays and views).
    fn commits(&self) -> tokio::sync::watch::Receiver<u64>;

    /// A committed document, read outside any unit.
    async fn get_document(&self, collection: &str, id: &str) -> Result<Option<Payload>>;

    /// Up to `max` documents of `collection` with ids after `after`, in id order.
    async fn list_documents(
        &self,
        collection: &str,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<(String, Payload)>>;

    /// A committed checkpoint, read outside any unit.
    async fn checkpoint(&self, name: &str) -> Result<Option<Position>>;

    /// Deletes every document of `collection` (e.g. to rebuild a view); returns how many.
    async fn drop_collection(&self, collection: &str) -> Result<u64>;

    /// The event store in this database.
    fn event_store(&self) -> Arc<dyn EventStore>;

    /// The outbox as a relay source: published rows are deleted.
    fn outbox_source(&self) -> Arc<dyn RelaySource>;

    /// The event store as a relay source (events stay; a cursor named `name` advances).
    /// Each event goes to the topic named by its aggregate type, or `default_topic`.
    fn event_store_source(&self, name: &str, default_topic: Topic) -> Arc<dyn RelaySource>;

    /// Read access to dead letters.
    fn dead_letters(&self) -> Arc<dyn DeadLetterStore>;

    /// Deletes `group`'s inbox entries recorded before `before`; returns how many. Other
    /// groups' entries are theirs to prune, with their own retention.
    async fn prune_inbox(&self, group: &GroupName, before: DateTime<Utc>) -> Result<u64>;

    /// How often readers poll for commits made by other processes.
    fn poll_every(&self) -> Duration;

    /// How many consumed messages the runtime handles in one transaction. A single-writer
    /// database wants many (one commit serves them all); a database with row locks wants one,
    /// because a transaction holding the rows of several messages deadlocks with another
    /// partition's transaction taking the same rows in another order.
    fn messages_per_unit(&self) -> usize {
        1
    }
}

impl dyn Database {
    /// Runs `work` as one unit of work: its documents, outbox events and appends commit
    /// together, or — when it returns an error — not at all.
    ///
    /// # Errors
    /// The work's own error, or a store error converted into `E`.
    pub async fn transact<T, E, F>(&self, work: F) -> Result<T, E>
    where
        F: FnOnce(&mut dyn UnitOfWork) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        let boxed: Work = Box::new(move |tx: &mut dyn ConsumerTx| match work(tx) {
            Ok(value) => Ok(Box::new(value) as Box<dyn Any + Send>),
            Err(e) => Err(WorkError::Aborted(Box::new(e))),
        });
        match self.execute(boxed).await {
            Ok(value) => Ok(*value
                .downcast::<T>()
                .unwrap_or_else(|_| unreachable!("the unit returns T"))),
            Err(WorkError::Failed(e)) => Err(E::from(e)),
            Err(WorkError::Aborted(e)) => Err(*e
                .downcast::<E>()
                .unwrap_or_else(|_| unreachable!("the unit aborts with E"))),
        }
    }

    /// Every document of `collection`, in id order, read page by page. For tools, audits and
    /// tests: it holds the whole collection in memory.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn all_documents(&self, collection: &str) -> Result<Vec<(String, Payload)>> {
        let mut out = Vec::new();
        loop {
            let after = out.last().map(|(id, _): &(String, Payload)| id.clone());
            let page = self
                .list_documents(collection, after.as_deref(), 1000)
                .await?;
            if page.is_empty() {
                return Ok(out);
            }
            out.extend(page);
        }
    }

    /// A committed document decoded as `T`.
    ///
    /// # Errors
    /// Storage errors, or [`Error::Decode`] when the document is not a `T`.
    pub async fn get_document_as<T: DeserializeOwned>(
        &self,
        collection: &str,
        id: &str,
    ) -> Result<Option<T>> {
        self.get_document(collection, id)
            .await?
            .map(|doc| doc.decode())
            .transpose()
    }

    /// `all_documents`, each decoded as `T`, in id order.
    ///
    /// # Errors
    /// Storage errors, or [`Error::Decode`] for a document that is not a `T`.
    pub async fn all_documents_as<T: DeserializeOwned>(&self, collection: &str) -> Result<Vec<T>> {
        self.all_documents(collection)
            .await?
            .into_iter()
            .map(|(_, doc)| doc.decode())
            .collect()
    }

    /// Runs runtime work (inbox, dead letters, checkpoints) as one unit.
    ///
    /// # Errors
    /// As [`Database::execute`].
    pub async fn transact_consumer<T, F>(&self, work: F) -> Result<T>
    where
        F: FnOnce(&mut dyn ConsumerTx) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let boxed: Work = Box::new(move |tx: &mut dyn ConsumerTx| {
            work(tx)
                .map(|v| Box::new(v) as Box<dyn Any + Send>)
                .map_err(WorkError::Failed)
        });
        match self.execute(boxed).await {
            Ok(value) => Ok(*value
                .downcast::<T>()
                .unwrap_or_else(|_| unreachable!("the unit returns T"))),
            Err(WorkError::Failed(e)) => Err(e),
            Err(WorkError::Aborted(_)) => unreachable!("consumer work never aborts"),
        }
    }
}

/// Checks that every collection name is usable everywhere (non-empty, at most 128 bytes).
///
/// # Errors
/// [`Error::InvalidInput`].
pub fn validate_document_key(collection: &str, id: &str) -> Result<()> {
    if collection.is_empty() || collection.len() > 128 {
        return Err(Error::invalid(format!(
            "collection name must be 1 to 128 bytes, got {} bytes",
            collection.len()
        )));
    }
    if id.is_empty() || id.len() > 512 {
        return Err(Error::invalid(format!(
            "document id must be 1 to 512 bytes, got {} bytes",
            id.len()
        )));
    }
    Ok(())
}
