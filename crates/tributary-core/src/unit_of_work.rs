//! A service's state and its events in one local transaction.
//!
//! A [`UnitOfWork`] reads and writes the service's own state as JSON documents, records
//! events to publish in the outbox, and appends to the event store — all committed together
//! or not at all. It looks the same on every backend, so code written against it runs
//! unchanged on the in-memory, SQLite and PostgreSQL backends. A unit is run the way sqlx runs
//! a transaction: `Database::transact` begins it, awaits the closure's future, commits on
//! `Ok` and rolls back on `Err`, on a panic, or when the caller stops waiting.
//!
//! ```
//! use std::sync::Arc;
//! use tributary_core::{Database, Envelope, Error, InMemoryDatabase, Payload, Topic, UnitOfWorkExt};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let db: Arc<dyn Database> = Arc::new(InMemoryDatabase::new());
//! db.transact(|unit| Box::pin(async move {
//!     unit.put_as("customers", "c-1", &serde_json::json!({"credit_limit": 100})).await?;
//!     let created = Envelope::new("customer-service", "CustomerCreated", Payload::null());
//!     unit.publish(&Topic::new("Customer")?, created).await?;
//!     Ok::<_, Error>(())
//! }))
//! .await?;
//! # Ok::<_, Error>(()) }).unwrap();
//! ```
//!
//! # Why this shape
//!
//! Three shapes were tried (the `spike` in the repository's `docs/architecture.md` has the
//! details):
//! - **A closure returning a boxed future** (`|unit| Box::pin(async move { … })`), as sqlx's
//!   `Connection::transaction`. The future's `Send` bound is written in the signature, so a
//!   unit can run inside an axum handler or a spawned task; the unit is borrowed for exactly
//!   the closure's future, so it cannot escape or outlive its transaction. Chosen.
//! - **Native async closures** (`async |unit| { … }`, `AsyncFnOnce`): nicer to write, but on
//!   stable Rust a function cannot require the future of an `AsyncFnOnce` to be `Send`
//!   (`CallOnceFuture` cannot be named), so such a unit could not be awaited inside
//!   `tokio::spawn` or an axum handler. Rejected until return-type notation is stable.
//! - **Explicit `begin` / `commit`** (`let mut unit = db.begin().await?; …; unit.commit()`):
//!   natural for PostgreSQL, but SQLite's group commit runs many units inside one
//!   transaction on the writer's thread, which then has to lend its connection to another
//!   task across every `.await` and learn of an abandoned unit from a synchronous `Drop`.
//!   The closure keeps the unit on the writer, which drives its future. Rejected.
//!
//! A backend may hold writes in the unit and make them when it commits (PostgreSQL holds
//! published events and updates of documents, to save round trips): the unit always reads its
//! own writes, but a write the database refuses may then fail the unit at commit with
//! [`Error::Refused`] rather than at the call that made it. Either way nothing of a failed
//! unit is kept.
//!
//! On SQLite the writer thread drives the futures of the units it commits together, one after
//! the other: a unit must not await anything outside its database (a network call, a timer),
//! because every other writer of the file waits meanwhile. The SQLite backend detects such a
//! wait, logs it with the unit's origin and counts it. Do slow or remote work before the unit.

use std::any::Any;
use std::future::Future;
use std::panic::Location;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::{ConsumerTx, Pending, Work, WorkError, WorkOrigin};
use crate::broker::{LeaseGuard, RelaySource};
use crate::consistency::{ConsistencyToken, TokenEntry, Written};
use crate::dead_letter::DeadLetterStore;
use crate::envelope::Envelope;
use crate::error::{Error, ExpectedVersion, Result};
use crate::event_store::{AppendOutcome, EventStore, RecordedEvent, Snapshot};
use crate::ids::{Position, StreamId, StreamVersion};
use crate::payload::Payload;
use crate::topic::{GroupName, Topic};

/// A boxed future that can move between threads: what a unit of work closure returns.
pub type BoxFuture<'a, T> = futures::future::BoxFuture<'a, T>;

/// The application's view of one local transaction. See the module documentation.
#[async_trait]
pub trait UnitOfWork: Send {
    /// The document `id` of `collection`, if it exists (as this unit left it).
    async fn get(&mut self, collection: &str, id: &str) -> Result<Option<Payload>>;

    /// Creates or replaces the document `id` of `collection`.
    ///
    /// # Errors
    /// [`Error::DocumentConflict`] (at once or at commit) when another unit changed or created
    /// the document after this unit read it: run the unit again.
    async fn put(&mut self, collection: &str, id: &str, document: Payload) -> Result<()>;

    /// Deletes the document; returns whether it existed.
    async fn delete(&mut self, collection: &str, id: &str) -> Result<bool>;

    /// Deletes every document of `collection` (e.g. a view about to be rebuilt); returns how
    /// many there were.
    async fn clear_collection(&mut self, collection: &str) -> Result<u64>;

    /// Records `event` in the outbox, to be published on `topic` after the unit commits.
    async fn publish(&mut self, topic: &Topic, event: Envelope) -> Result<()>;

    /// Appends to the event store, as [`EventStore::append`].
    async fn append(
        &mut self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<Envelope>,
    ) -> Result<AppendOutcome>;

    /// Reads a stream as of this transaction, as [`EventStore::read_stream`].
    async fn read_stream(
        &mut self,
        stream: &StreamId,
        from: StreamVersion,
        max: usize,
    ) -> Result<Vec<RecordedEvent>>;

    /// The latest snapshot of `stream`, as [`EventStore::load_snapshot`].
    async fn load_snapshot(&mut self, stream: &StreamId) -> Result<Option<Snapshot>>;

    /// Saves a snapshot of `stream` with this unit, as [`EventStore::save_snapshot`].
    async fn save_snapshot(&mut self, stream: &StreamId, snapshot: Snapshot) -> Result<()>;

    /// The backend's own transaction object. Backend crates build their typed accessors on it
    /// (`unit.sqlite()`, `unit.postgres()`); applications use those.
    fn backend(&mut self) -> &mut dyn Any;

    /// What this unit has published and appended so far, as a consistency token: return it
    /// from the unit (it is complete once the unit's last write is made) so that a view can
    /// be asked to wait for those writes (see [`ConsistencyToken`]). Empty for a unit that
    /// wrote no event, and inside a consumer's handler.
    fn written(&self) -> ConsistencyToken {
        ConsistencyToken::new()
    }
}

/// The unit an application's closure gets from [`Database::transact`]: the backend's unit,
/// recording what it publishes and appends for [`UnitOfWork::written`].
struct Recording<'a> {
    inner: &'a mut dyn ConsumerTx,
    token: ConsistencyToken,
}

#[async_trait]
impl UnitOfWork for Recording<'_> {
    async fn get(&mut self, collection: &str, id: &str) -> Result<Option<Payload>> {
        self.inner.get(collection, id).await
    }

    async fn put(&mut self, collection: &str, id: &str, document: Payload) -> Result<()> {
        self.inner.put(collection, id, document).await
    }

    async fn delete(&mut self, collection: &str, id: &str) -> Result<bool> {
        self.inner.delete(collection, id).await
    }

    async fn clear_collection(&mut self, collection: &str) -> Result<u64> {
        self.inner.clear_collection(collection).await
    }

    async fn publish(&mut self, topic: &Topic, event: Envelope) -> Result<()> {
        let written = Written::of(Some(topic), &event);
        self.inner.publish(topic, event).await?;
        self.token.note(written);
        Ok(())
    }

    async fn append(
        &mut self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<Envelope>,
    ) -> Result<AppendOutcome> {
        // Relayed to the topic named by the aggregate type (see `topic_for_event`); without
        // one the relay's default topic is not known here.
        let written: Vec<Written> = events
            .iter()
            .map(|e| {
                let topic = e.aggregate_type.as_deref().and_then(|t| Topic::new(t).ok());
                Written::of(topic.as_ref(), e)
            })
            .collect();
        let outcome = self.inner.append(stream, expected, events).await?;
        for w in written {
            self.token.note(w);
        }
        Ok(outcome)
    }

    async fn read_stream(
        &mut self,
        stream: &StreamId,
        from: StreamVersion,
        max: usize,
    ) -> Result<Vec<RecordedEvent>> {
        self.inner.read_stream(stream, from, max).await
    }

    async fn load_snapshot(&mut self, stream: &StreamId) -> Result<Option<Snapshot>> {
        self.inner.load_snapshot(stream).await
    }

    async fn save_snapshot(&mut self, stream: &StreamId, snapshot: Snapshot) -> Result<()> {
        self.inner.save_snapshot(stream, snapshot).await
    }

    fn backend(&mut self) -> &mut dyn Any {
        self.inner.backend()
    }

    fn written(&self) -> ConsistencyToken {
        self.token.clone()
    }
}

/// Typed access to documents.
pub trait UnitOfWorkExt: UnitOfWork {
    /// The document decoded as `T`.
    ///
    /// # Errors
    /// [`Error::Decode`] when the stored JSON does not have the shape of `T`.
    fn get_as<T: DeserializeOwned>(
        &mut self,
        collection: &str,
        id: &str,
    ) -> impl Future<Output = Result<Option<T>>> + Send {
        async move {
            self.get(collection, id)
                .await?
                .map(|p| p.decode())
                .transpose()
        }
    }

    /// Stores `document` serialized as JSON.
    fn put_as<T: Serialize + ?Sized>(
        &mut self,
        collection: &str,
        id: &str,
        document: &T,
    ) -> impl Future<Output = Result<()>> + Send {
        let document = Payload::from_value(document);
        async move { self.put(collection, id, document?).await }
    }
}

impl<U: UnitOfWork + ?Sized> UnitOfWorkExt for U {}

/// A service's own database: its documents, outbox, inbox, dead letters, checkpoints and
/// event store, written through units of work.
#[async_trait]
pub trait Database: Send + Sync + 'static {
    /// Runs `work` in one transaction and commits it, or rolls everything back when it fails.
    /// Applications call `Database::transact`; this is the backend's side of it.
    async fn execute(&self, work: Work) -> Result<Box<dyn Any + Send>, WorkError>;

    /// Changes after commits made through this handle (wake-ups for relays and views). The
    /// count includes a commit before the unit that made it returns.
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

    /// The names of the event-store relay cursors this database keeps — one per
    /// [`Database::event_store_source`] that has published anything — for `tributary status`.
    async fn relay_cursors(&self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// How many messages each consumer group recorded in its inbox since `since` (handled,
    /// duplicates not counted twice), for the rates an operator watches; groups with none are
    /// left out. One range read of the inbox's time index. `None` when the backend cannot tell.
    async fn handled_since(&self, since: DateTime<Utc>) -> Result<Option<Vec<(GroupName, u64)>>> {
        let _ = since;
        Ok(None)
    }

    /// How often readers poll for commits made by other processes.
    fn poll_every(&self) -> Duration;

    /// Which of a token's `entries` `group` has not applied yet, and why (empty: all of them
    /// applied). One indexed read per entry. Entries of writes the group never sees (other
    /// topics) are the caller's to leave out (see `View` in `tributary-runtime`).
    async fn pending(&self, group: &GroupName, entries: &[TokenEntry]) -> Result<Vec<Pending>>;

    /// How many consumed messages the runtime handles in one transaction by default: one
    /// commit then serves them all.
    fn messages_per_unit(&self) -> usize {
        64
    }

    /// Why some of this database's data cannot be read — corruption a read found after the
    /// database was opened — or `None`. Cheap (no I/O): health endpoints call it on every
    /// request. Backends that cannot tell return `None`.
    fn damage(&self) -> Option<String> {
        None
    }

    /// Takes `group`'s lock in `mode` if nobody holds it in a mode that excludes it, or
    /// returns `None` at once. A group's running consumers hold it [`GroupLock::Shared`] (any
    /// number of processes at once); an operation that needs the group stopped (a view
    /// rebuild) takes it [`GroupLock::Exclusive`]. Dropping the guard releases it, and so does
    /// the death of the process that holds it (a kernel file lock, a database session), so a
    /// crashed consumer never leaves the group locked.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the database cannot be reached.
    async fn try_lock_group(
        &self,
        group: &GroupName,
        mode: GroupLock,
    ) -> Result<Option<Box<dyn LeaseGuard>>>;
}

/// How [`Database::try_lock_group`] holds a consumer group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupLock {
    /// Held by each running consumer of the group; many holders at once.
    Shared,
    /// Held alone, while no consumer of the group runs.
    Exclusive,
}

impl dyn Database {
    /// Runs `work` as one unit of work: its documents, outbox events and appends commit
    /// together, or — when it returns an error, panics, or the returned future is dropped
    /// before the unit ran — not at all.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use tributary_core::{Database, Error, InMemoryDatabase, UnitOfWorkExt};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let db: Arc<dyn Database> = Arc::new(InMemoryDatabase::new());
    /// let n: i64 = db
    ///     .transact(|unit| Box::pin(async move {
    ///         let n = unit.get_as::<i64>("counters", "visits").await?.unwrap_or(0) + 1;
    ///         unit.put_as("counters", "visits", &n).await?;
    ///         Ok::<_, Error>(n)
    ///     }))
    ///     .await?;
    /// assert_eq!(n, 1);
    /// # Ok::<_, Error>(()) }).unwrap();
    /// ```
    ///
    /// # Errors
    /// The work's own error, or a store error converted into `E` (see
    /// [`Error::is_retryable`] for whether to run the unit again).
    #[track_caller]
    pub fn transact<T, E, F>(&self, work: F) -> impl Future<Output = Result<T, E>> + Send + '_
    where
        F: for<'u> FnOnce(&'u mut dyn UnitOfWork) -> BoxFuture<'u, Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        let origin = WorkOrigin::Caller(Location::caller());
        async move {
            // The unit may run on another thread (SQLite's writer): it runs in the span that
            // awaits it, so that what it publishes carries the caller's trace context.
            let span = tracing::Span::current();
            let work = Work::new(origin, move |tx: &mut dyn ConsumerTx| {
                Box::pin(tracing::Instrument::instrument(
                    async move {
                        let mut unit = Recording {
                            inner: tx,
                            token: ConsistencyToken::new(),
                        };
                        match work(&mut unit).await {
                            Ok(value) => Ok(Box::new(value) as Box<dyn Any + Send>),
                            Err(e) => Err(WorkError::Aborted(Box::new(e))),
                        }
                    },
                    span,
                ))
            });
            match self.execute(work).await {
                Ok(value) => Ok(*value
                    .downcast::<T>()
                    .unwrap_or_else(|_| unreachable!("the unit returns T"))),
                Err(WorkError::Failed(e)) => Err(E::from(e)),
                Err(WorkError::Aborted(e)) => Err(*e
                    .downcast::<E>()
                    .unwrap_or_else(|_| unreachable!("the unit aborts with E"))),
            }
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

    /// Runs runtime work (inbox, dead letters, checkpoints) as one unit; `origin` names it
    /// in diagnostics. For the consumer runtime and other backend-level callers: it commits
    /// on `Ok` and rolls back on `Err`, as `Database::transact`.
    ///
    /// # Errors
    /// The work's own error, or the store's.
    pub async fn transact_consumer<T, F>(&self, origin: WorkOrigin, work: F) -> Result<T>
    where
        F: for<'u> FnOnce(&'u mut dyn ConsumerTx) -> BoxFuture<'u, Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let work = Work::new(origin, move |tx: &mut dyn ConsumerTx| {
            let unit = work(tx);
            Box::pin(async move {
                unit.await
                    .map(|v| Box::new(v) as Box<dyn Any + Send>)
                    .map_err(WorkError::Failed)
            })
        });
        match self.execute(work).await {
            Ok(value) => Ok(*value
                .downcast::<T>()
                .unwrap_or_else(|_| unreachable!("the unit returns T"))),
            Err(WorkError::Failed(e)) => Err(e),
            Err(WorkError::Aborted(_)) => {
                unreachable!("the unit fails only with WorkError::Failed")
            }
        }
    }
}
