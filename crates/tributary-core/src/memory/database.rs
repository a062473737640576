//! An in-memory service database: documents, outbox, inbox, dead letters, checkpoints and an
//! event store, with transactions made of an undo log.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::FutureExt;
use tokio::sync::watch;

use super::event_log::EventLog;
use super::event_store::lock;
use crate::backend::{
    ConsumerTx, InboxEntry, Pending, PendingReason, Work, WorkError, validate_document,
    validate_document_key,
};
use crate::broker::{
    Backlog, LeaseGuard, LeaseState, OutgoingMessage, RelaySource, SourceBatch, topic_for_event,
};
use crate::catch_up::{CatchUpConfig, catch_up};
use crate::consistency::TokenEntry;
use crate::dead_letter::{DeadLetter, DeadLetterId, DeadLetterStore, NewDeadLetter, Resolution};
use crate::envelope::Envelope;
use crate::error::{Error, ExpectedVersion, Result};
use crate::event_store::{
    AppendOutcome, DEFAULT_MAX_EVENT_BYTES, EventStore, EventStream, RecordedEvent, Snapshot,
    validate_batch,
};
use crate::ids::{EventId, Position, StreamId, StreamVersion};
use crate::payload::Payload;
use crate::topic::{GroupName, Topic};
use crate::unit_of_work::{Database, GroupLock, UnitOfWork};

#[derive(Default)]
struct State {
    events: EventLog,
    documents: BTreeMap<(String, String), Payload>,
    outbox: BTreeMap<u64, OutgoingMessage>,
    next_outbox: u64,
    inbox: HashMap<(GroupName, EventId), InboxRow>,
    dead_letters: BTreeMap<u64, (DeadLetter, Option<Resolution>)>,
    next_dead_letter: u64,
    checkpoints: HashMap<String, Position>,
    cursors: HashMap<String, Position>,
}

/// A message a group dealt with.
#[derive(Clone, Copy, Debug)]
struct InboxRow {
    at: DateTime<Utc>,
    entry: InboxEntry,
}

/// How to undo one change of a unit.
enum Undo {
    Document((String, String), Option<Payload>),
    Outbox(u64),
    Inbox((GroupName, EventId), Option<InboxRow>),
    InboxRemoved((GroupName, EventId), InboxRow),
    DeadLetterInsert(u64),
    DeadLetterChange(u64, (DeadLetter, Option<Resolution>)),
    Checkpoint(String, Option<Position>),
    Events(usize),
    Snapshot(StreamId, Option<Snapshot>),
}

struct Shared {
    /// Held by a unit of work for its whole duration (units are serialized and nothing sees
    /// a unit's writes before it ends), and briefly by readers.
    state: tokio::sync::Mutex<State>,
    commits: watch::Sender<u64>,
    /// Lease name → how many hold it shared (`None`: one holds it exclusively).
    leases: Mutex<HashMap<String, Option<usize>>>,
    max_event_bytes: usize,
}

/// A [`Database`] in memory, for tests and examples. Units are serialized by one lock.
#[derive(Clone)]
pub struct InMemoryDatabase {
    shared: Arc<Shared>,
}

impl Default for InMemoryDatabase {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryDatabase {
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                state: tokio::sync::Mutex::default(),
                commits: watch::channel(0).0,
                leases: Mutex::default(),
                max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            }),
        }
    }

    async fn run(&self, work: Work) -> Result<Box<dyn Any + Send>, WorkError> {
        let mut state = self.shared.state.lock().await;
        let mut tx = MemoryTx {
            state: &mut state,
            undo: Vec::new(),
            savepoints: Vec::new(),
            max_event_bytes: self.shared.max_event_bytes,
        };
        let outcome = match AssertUnwindSafe(work.run(&mut tx)).catch_unwind().await {
            Ok(outcome) => outcome,
            Err(panic) => Err(WorkError::Failed(Error::panicked(
                "unit of work",
                panic.as_ref(),
            ))),
        };
        if outcome.is_err() {
            tx.undo_to(0);
        }
        let changed = !tx.undo.is_empty();
        drop(state);
        // Before the caller learns of its commit, so that "my unit returned" implies "the
        // commit count includes it".
        if outcome.is_ok() && changed {
            self.shared.commits.send_modify(|c| *c += 1);
        }
        outcome
    }
}

struct MemoryTx<'a> {
    state: &'a mut State,
    undo: Vec<Undo>,
    savepoints: Vec<usize>,
    max_event_bytes: usize,
}

impl MemoryTx<'_> {
    fn undo_to(&mut self, mark: usize) {
        while self.undo.len() > mark {
            let Some(step) = self.undo.pop() else { break };
            let s = &mut *self.state;
            match step {
                Undo::Document(key, Some(previous)) => {
                    s.documents.insert(key, previous);
                }
                Undo::Document(key, None) => {
                    s.documents.remove(&key);
                }
                Undo::Outbox(id) => {
                    s.outbox.remove(&id);
                }
                Undo::Inbox(key, Some(previous)) => {
                    s.inbox.insert(key, previous);
                }
                Undo::Inbox(key, None) => {
                    s.inbox.remove(&key);
                }
                Undo::InboxRemoved(key, row) => {
                    s.inbox.insert(key, row);
                }
                Undo::DeadLetterInsert(id) => {
                    s.dead_letters.remove(&id);
                }
                Undo::DeadLetterChange(id, previous) => {
                    s.dead_letters.insert(id, previous);
                }
                Undo::Checkpoint(name, Some(previous)) => {
                    s.checkpoints.insert(name, previous);
                }
                Undo::Checkpoint(name, None) => {
                    s.checkpoints.remove(&name);
                }
                Undo::Events(len) => s.events.truncate(len),
                Undo::Snapshot(stream, Some(previous)) => {
                    s.events.snapshots.insert(stream, previous);
                }
                Undo::Snapshot(stream, None) => {
                    s.events.snapshots.remove(&stream);
                }
            }
        }
    }

    fn dead_letter_mut(
        &mut self,
        id: DeadLetterId,
    ) -> Result<&mut (DeadLetter, Option<Resolution>)> {
        let previous = self
            .state
            .dead_letters
            .get(&id.get())
            .cloned()
            .ok_or_else(|| Error::invalid(format!("no dead letter {id}")))?;
        self.undo.push(Undo::DeadLetterChange(id.get(), previous));
        self.state
            .dead_letters
            .get_mut(&id.get())
            .ok_or_else(|| Error::invalid(format!("no dead letter {id}")))
    }
}

#[async_trait]
impl UnitOfWork for MemoryTx<'_> {
    async fn get(&mut self, collection: &str, id: &str) -> Result<Option<Payload>> {
        validate_document_key(collection, id)?;
        Ok(self
            .state
            .documents
            .get(&(collection.to_owned(), id.to_owned()))
            .cloned())
    }

    async fn put(&mut self, collection: &str, id: &str, document: Payload) -> Result<()> {
        validate_document_key(collection, id)?;
        validate_document(collection, id, document.as_str())?;
        let key = (collection.to_owned(), id.to_owned());
        let previous = self.state.documents.insert(key.clone(), document);
        self.undo.push(Undo::Document(key, previous));
        Ok(())
    }

    async fn delete(&mut self, collection: &str, id: &str) -> Result<bool> {
        validate_document_key(collection, id)?;
        let key = (collection.to_owned(), id.to_owned());
        let previous = self.state.documents.remove(&key);
        let existed = previous.is_some();
        self.undo.push(Undo::Document(key, previous));
        Ok(existed)
    }

    async fn clear_collection(&mut self, collection: &str) -> Result<u64> {
        let keys: Vec<_> = self
            .state
            .documents
            .keys()
            .filter(|(c, _)| c == collection)
            .cloned()
            .collect();
        for key in &keys {
            let previous = self.state.documents.remove(key);
            self.undo.push(Undo::Document(key.clone(), previous));
        }
        Ok(keys.len() as u64)
    }

    async fn publish(&mut self, topic: &Topic, mut event: Envelope) -> Result<()> {
        crate::trace::stamp(topic, &mut event);
        validate_batch(std::slice::from_ref(&event), self.max_event_bytes)?;
        self.state.next_outbox += 1;
        let id = self.state.next_outbox;
        self.state
            .outbox
            .insert(id, OutgoingMessage::from_envelope(topic.clone(), &event));
        self.undo.push(Undo::Outbox(id));
        Ok(())
    }

    async fn append(
        &mut self,
        stream: &StreamId,
        expected: ExpectedVersion,
        mut events: Vec<Envelope>,
    ) -> Result<AppendOutcome> {
        crate::trace::stamp_appended(stream, &mut events);
        validate_batch(&events, self.max_event_bytes)?;
        let before = self.state.events.len();
        let outcome = self.state.events.append(stream, expected, events)?;
        self.undo.push(Undo::Events(before));
        Ok(outcome)
    }

    async fn read_stream(
        &mut self,
        stream: &StreamId,
        from: StreamVersion,
        max: usize,
    ) -> Result<Vec<RecordedEvent>> {
        Ok(self.state.events.read_stream(stream, from, max))
    }

    async fn load_snapshot(&mut self, stream: &StreamId) -> Result<Option<Snapshot>> {
        Ok(self.state.events.snapshots.get(stream).cloned())
    }

    async fn save_snapshot(&mut self, stream: &StreamId, snapshot: Snapshot) -> Result<()> {
        let newer = self
            .state
            .events
            .snapshots
            .get(stream)
            .is_none_or(|s| s.version <= snapshot.version);
        if newer {
            let previous = self.state.events.snapshots.insert(stream.clone(), snapshot);
            self.undo.push(Undo::Snapshot(stream.clone(), previous));
        }
        Ok(())
    }

    fn backend(&mut self) -> &mut dyn Any {
        // The in-memory store has no tables of its own to offer.
        &mut self.max_event_bytes
    }
}

#[async_trait]
impl ConsumerTx for MemoryTx<'_> {
    async fn inbox_contains(&mut self, group: &GroupName, id: &EventId) -> Result<bool> {
        Ok(self.state.inbox.contains_key(&(group.clone(), *id)))
    }

    async fn inbox_insert(&mut self, group: &GroupName, entry: &InboxEntry) -> Result<()> {
        let key = (group.clone(), entry.id);
        if self.state.inbox.contains_key(&key) {
            return Err(Error::invalid(format!(
                "message {} is already in {group}'s inbox",
                entry.id
            )));
        }
        let row = InboxRow {
            at: Utc::now(),
            entry: *entry,
        };
        self.state.inbox.insert(key.clone(), row);
        self.undo.push(Undo::Inbox(key, None));
        Ok(())
    }

    async fn inbox_mark_applied(&mut self, group: &GroupName, entry: &InboxEntry) -> Result<()> {
        let key = (group.clone(), entry.id);
        let row = InboxRow {
            at: Utc::now(),
            entry: InboxEntry {
                applied: true,
                ..*entry
            },
        };
        let previous = self.state.inbox.insert(key.clone(), row);
        self.undo.push(Undo::Inbox(key, previous));
        Ok(())
    }

    async fn clear_inbox(&mut self, group: &GroupName) -> Result<u64> {
        let keys: Vec<_> = self
            .state
            .inbox
            .keys()
            .filter(|(g, _)| g == group)
            .cloned()
            .collect();
        for key in &keys {
            if let Some(row) = self.state.inbox.remove(key) {
                self.undo.push(Undo::InboxRemoved(key.clone(), row));
            }
        }
        Ok(keys.len() as u64)
    }

    async fn blocking_dead_letter(
        &mut self,
        group: &GroupName,
        key: &str,
    ) -> Result<Option<DeadLetterId>> {
        Ok(self
            .state
            .dead_letters
            .values()
            .find(|(d, resolution)| resolution.is_none() && &d.group == group && d.key == key)
            .map(|(d, _)| d.id))
    }

    async fn insert_dead_letter(&mut self, letter: NewDeadLetter) -> Result<DeadLetterId> {
        self.state.next_dead_letter += 1;
        let id = self.state.next_dead_letter;
        let now = Utc::now();
        let dead = DeadLetter {
            id: DeadLetterId::new(id),
            group: letter.group,
            topic: letter.topic,
            partition: letter.partition,
            offset: letter.offset,
            message_id: letter.message_id,
            key: letter.key,
            event_type: letter.event_type,
            payload: letter.payload,
            reason: letter.reason,
            attempts: letter.attempts,
            first_failed_at: letter.first_failed_at,
            last_failed_at: now,
            parked_behind: letter.parked_behind,
        };
        self.state.dead_letters.insert(id, (dead, None));
        self.undo.push(Undo::DeadLetterInsert(id));
        Ok(DeadLetterId::new(id))
    }

    async fn dead_letter(&mut self, id: DeadLetterId) -> Result<Option<DeadLetter>> {
        Ok(self
            .state
            .dead_letters
            .get(&id.get())
            .map(|(d, _)| d.clone()))
    }

    async fn resolve_dead_letter(
        &mut self,
        id: DeadLetterId,
        resolution: Resolution,
    ) -> Result<()> {
        let entry = self.dead_letter_mut(id)?;
        if entry.1.is_some() {
            return Err(Error::invalid(format!(
                "dead letter {id} does not exist or is already resolved"
            )));
        }
        entry.1 = Some(resolution);
        Ok(())
    }

    async fn record_dead_letter_failure(&mut self, id: DeadLetterId, reason: &str) -> Result<()> {
        let (letter, _) = self.dead_letter_mut(id)?;
        letter.attempts += 1;
        letter.reason = reason.to_owned();
        letter.last_failed_at = Utc::now();
        Ok(())
    }

    async fn checkpoint(&mut self, name: &str) -> Result<Option<Position>> {
        Ok(self.state.checkpoints.get(name).copied())
    }

    async fn set_checkpoint(&mut self, name: &str, position: Position) -> Result<()> {
        let previous = self.state.checkpoints.insert(name.to_owned(), position);
        self.undo.push(Undo::Checkpoint(name.to_owned(), previous));
        Ok(())
    }

    async fn savepoint(&mut self) -> Result<()> {
        self.savepoints.push(self.undo.len());
        Ok(())
    }

    async fn release_savepoint(&mut self) -> Result<()> {
        self.savepoints
            .pop()
            .map(|_| ())
            .ok_or_else(|| Error::invalid("no savepoint to release"))
    }

    async fn rollback_savepoint(&mut self) -> Result<()> {
        let mark = self
            .savepoints
            .pop()
            .ok_or_else(|| Error::invalid("no savepoint to roll back"))?;
        self.undo_to(mark);
        Ok(())
    }
}

#[async_trait]
impl Database for InMemoryDatabase {
    async fn execute(&self, work: Work) -> Result<Box<dyn Any + Send>, WorkError> {
        self.run(work).await
    }

    fn commits(&self) -> watch::Receiver<u64> {
        self.shared.commits.subscribe()
    }

    async fn get_document(&self, collection: &str, id: &str) -> Result<Option<Payload>> {
        validate_document_key(collection, id)?;
        Ok(self
            .shared
            .state
            .lock()
            .await
            .documents
            .get(&(collection.to_owned(), id.to_owned()))
            .cloned())
    }

    async fn list_documents(
        &self,
        collection: &str,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<(String, Payload)>> {
        let state = self.shared.state.lock().await;
        let start = (collection.to_owned(), after.unwrap_or("").to_owned());
        Ok(state
            .documents
            .range(start..)
            .take_while(|((c, _), _)| c == collection)
            .filter(|((_, id), _)| after.is_none_or(|a| id.as_str() > a))
            .take(max)
            .map(|((_, id), doc)| (id.clone(), doc.clone()))
            .collect())
    }

    async fn checkpoint(&self, name: &str) -> Result<Option<Position>> {
        Ok(self
            .shared
            .state
            .lock()
            .await
            .checkpoints
            .get(name)
            .copied())
    }

    async fn try_lock_group(
        &self,
        group: &GroupName,
        mode: GroupLock,
    ) -> Result<Option<Box<dyn LeaseGuard>>> {
        Ok(try_lease(self, &format!("group:{group}"), mode))
    }

    async fn drop_collection(&self, collection: &str) -> Result<u64> {
        let mut state = self.shared.state.lock().await;
        let before = state.documents.len();
        state.documents.retain(|(c, _), _| c != collection);
        let dropped = (before - state.documents.len()) as u64;
        drop(state);
        self.shared.commits.send_modify(|c| *c += 1);
        Ok(dropped)
    }

    fn event_store(&self) -> Arc<dyn EventStore> {
        Arc::new(DatabaseEvents(self.clone()))
    }

    fn outbox_source(&self) -> Arc<dyn RelaySource> {
        Arc::new(OutboxSource(self.clone()))
    }

    fn event_store_source(&self, name: &str, default_topic: Topic) -> Arc<dyn RelaySource> {
        Arc::new(EventsSource {
            db: self.clone(),
            name: crate::backend::events_cursor(name),
            default_topic,
        })
    }

    fn dead_letters(&self) -> Arc<dyn DeadLetterStore> {
        Arc::new(self.clone())
    }

    async fn prune_inbox(&self, group: &GroupName, before: DateTime<Utc>) -> Result<u64> {
        let mut state = self.shared.state.lock().await;
        let n = state.inbox.len();
        state
            .inbox
            .retain(|(g, _), row| g != group || row.at >= before);
        Ok((n - state.inbox.len()) as u64)
    }

    async fn relay_cursors(&self) -> Result<Vec<String>> {
        let state = self.shared.state.lock().await;
        let mut names = crate::backend::event_source_names(state.cursors.keys().cloned().collect());
        names.sort();
        Ok(names)
    }

    async fn handled_since(&self, since: DateTime<Utc>) -> Result<Option<Vec<(GroupName, u64)>>> {
        let state = self.shared.state.lock().await;
        let mut counts: BTreeMap<GroupName, u64> = BTreeMap::new();
        for ((group, _), row) in &state.inbox {
            if row.at >= since {
                *counts.entry(group.clone()).or_default() += 1;
            }
        }
        Ok(Some(counts.into_iter().collect()))
    }

    fn poll_every(&self) -> Duration {
        Duration::from_millis(500)
    }

    fn messages_per_unit(&self) -> usize {
        256
    }

    async fn pending(&self, group: &GroupName, entries: &[TokenEntry]) -> Result<Vec<Pending>> {
        let state = self.shared.state.lock().await;
        Ok(entries
            .iter()
            .filter_map(|entry| {
                let reason = match *entry {
                    TokenEntry::Write { id, .. } => match state.inbox.get(&(group.clone(), id)) {
                        None => Some(PendingReason::NotYet),
                        Some(row) if !row.entry.applied => Some(PendingReason::DeadLettered),
                        Some(_) => None,
                    },
                    TokenEntry::FollowUp {
                        source,
                        correlation,
                        after,
                        ..
                    } => {
                        let seen = state.inbox.iter().any(|((g, id), row)| {
                            g == group
                                && row.entry.applied
                                && row.entry.source == source
                                && row.entry.correlation == Some(correlation)
                                && *id > after
                        });
                        (!seen).then_some(PendingReason::NotYet)
                    }
                };
                reason.map(|reason| Pending {
                    entry: *entry,
                    reason,
                })
            })
            .collect())
    }
}

#[async_trait]
impl DeadLetterStore for InMemoryDatabase {
    async fn list(&self, group: Option<&GroupName>, max: usize) -> Result<Vec<DeadLetter>> {
        Ok(self
            .shared
            .state
            .lock()
            .await
            .dead_letters
            .values()
            .filter(|(d, r)| r.is_none() && group.is_none_or(|g| &d.group == g))
            .take(max)
            .map(|(d, _)| d.clone())
            .collect())
    }

    async fn get(&self, id: DeadLetterId) -> Result<Option<DeadLetter>> {
        Ok(self
            .shared
            .state
            .lock()
            .await
            .dead_letters
            .get(&id.get())
            .map(|(d, _)| d.clone()))
    }
}

/// The database's event store, sharing its log and lock with units of work.
struct DatabaseEvents(InMemoryDatabase);

#[async_trait]
impl EventStore for DatabaseEvents {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        mut events: Vec<Envelope>,
    ) -> Result<AppendOutcome> {
        crate::trace::stamp_appended(stream, &mut events);
        validate_batch(&events, self.0.shared.max_event_bytes)?;
        let outcome = self
            .0
            .shared
            .state
            .lock()
            .await
            .events
            .append(stream, expected, events)?;
        if !outcome.deduplicated {
            self.0.shared.commits.send_modify(|c| *c += 1);
        }
        Ok(outcome)
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: StreamVersion,
        max: usize,
    ) -> Result<Vec<RecordedEvent>> {
        Ok(self
            .0
            .shared
            .state
            .lock()
            .await
            .events
            .read_stream(stream, from, max))
    }

    async fn read_all(&self, from: Position, max: usize) -> Result<Vec<RecordedEvent>> {
        Ok(self.0.shared.state.lock().await.events.read_all(from, max))
    }

    fn subscribe_all(&self, from: Position) -> EventStream {
        let db = self.0.clone();
        catch_up(
            from,
            db.shared.commits.subscribe(),
            CatchUpConfig::default(),
            move |from, max| {
                let db = db.clone();
                // In a task of its own: a subscriber that stops polling its stream (a select!
                // with a timeout) must not leave a waiter for the lock that is never polled —
                // the lock would be handed to it and every unit of work would wait forever.
                let read =
                    tokio::spawn(
                        async move { db.shared.state.lock().await.events.read_all(from, max) },
                    );
                async move {
                    read.await
                        .map_err(|e| Error::unavailable("the in-memory event store", e))
                }
            },
        )
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<StreamVersion> {
        Ok(self
            .0
            .shared
            .state
            .lock()
            .await
            .events
            .stream_version(stream))
    }

    async fn position_of(&self, id: &EventId) -> Result<Option<Position>> {
        Ok(self.0.shared.state.lock().await.events.position_of(id))
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>> {
        Ok(self
            .0
            .shared
            .state
            .lock()
            .await
            .events
            .snapshots
            .get(stream)
            .cloned())
    }

    async fn save_snapshot(&self, stream: &StreamId, snapshot: Snapshot) -> Result<()> {
        let mut state = self.0.shared.state.lock().await;
        let newer = state
            .events
            .snapshots
            .get(stream)
            .is_none_or(|s| s.version <= snapshot.version);
        if newer {
            state.events.snapshots.insert(stream.clone(), snapshot);
        }
        Ok(())
    }
}

struct MemoryLease {
    leases: Arc<Shared>,
    name: String,
}

impl LeaseGuard for MemoryLease {
    fn is_held(&self) -> bool {
        true
    }
}

impl Drop for MemoryLease {
    fn drop(&mut self) {
        let mut leases = lock(&self.leases.leases);
        match leases.get_mut(&self.name) {
            Some(Some(shared)) if *shared > 1 => *shared -= 1,
            _ => {
                leases.remove(&self.name);
            }
        }
    }
}

fn try_lease(db: &InMemoryDatabase, name: &str, mode: GroupLock) -> Option<Box<dyn LeaseGuard>> {
    let mut leases = lock(&db.shared.leases);
    match (leases.get_mut(name), mode) {
        (None, GroupLock::Exclusive) => {
            leases.insert(name.to_owned(), None);
        }
        (None, GroupLock::Shared) => {
            leases.insert(name.to_owned(), Some(1));
        }
        (Some(Some(shared)), GroupLock::Shared) => *shared += 1,
        (Some(_), _) => return None,
    }
    Some(Box::new(MemoryLease {
        leases: db.shared.clone(),
        name: name.to_owned(),
    }))
}

/// Who holds the exclusive lease `name`: this process, the only one a memory database has.
fn lease_state(db: &InMemoryDatabase, name: &str) -> LeaseState {
    match lock(&db.shared.leases).get(name) {
        Some(None) => LeaseState::Held {
            holder: format!("pid {} (in memory)", std::process::id()),
            since: None,
        },
        _ => LeaseState::Free,
    }
}

struct OutboxSource(InMemoryDatabase);

#[async_trait]
impl RelaySource for OutboxSource {
    fn name(&self) -> &str {
        "outbox"
    }

    async fn read_batch(&self, max: usize) -> Result<Option<SourceBatch>> {
        let state = self.0.shared.state.lock().await;
        let rows: Vec<_> = state.outbox.iter().take(max).collect();
        let Some(&(&last, _)) = rows.last() else {
            return Ok(None);
        };
        Ok(Some(SourceBatch {
            messages: rows.into_iter().map(|(_, m)| m.clone()).collect(),
            through: Position::new(last),
        }))
    }

    async fn mark_published(&self, through: Position) -> Result<()> {
        let mut state = self.0.shared.state.lock().await;
        let keep = state.outbox.split_off(&(through.get() + 1));
        state.outbox = keep;
        Ok(())
    }

    fn commits(&self) -> watch::Receiver<u64> {
        self.0.shared.commits.subscribe()
    }

    fn poll_every(&self) -> Duration {
        Duration::from_millis(500)
    }

    async fn try_lease(&self) -> Result<Option<Box<dyn LeaseGuard>>> {
        Ok(try_lease(&self.0, "outbox", GroupLock::Exclusive))
    }

    async fn lease_state(&self) -> Result<Option<LeaseState>> {
        Ok(Some(lease_state(&self.0, "outbox")))
    }
}

struct EventsSource {
    db: InMemoryDatabase,
    name: String,
    default_topic: Topic,
}

impl EventsSource {
    /// The position after this source's cursor.
    fn first_unpublished(&self, state: &State) -> Position {
        state
            .cursors
            .get(&self.name)
            .copied()
            .unwrap_or(Position::START)
            .next()
    }
}

#[async_trait]
impl RelaySource for EventsSource {
    fn name(&self) -> &str {
        &self.name
    }

    async fn read_batch(&self, max: usize) -> Result<Option<SourceBatch>> {
        let state = self.db.shared.state.lock().await;
        let from = self.first_unpublished(&state);
        let events = state.events.read_all(from, max);
        let Some(last) = events.last().map(|e| e.position) else {
            return Ok(None);
        };
        Ok(Some(SourceBatch {
            messages: events
                .iter()
                .map(|e| {
                    OutgoingMessage::from_envelope(
                        topic_for_event(&e.envelope, &self.default_topic),
                        &e.envelope,
                    )
                })
                .collect(),
            through: last,
        }))
    }

    async fn mark_published(&self, through: Position) -> Result<()> {
        self.db
            .shared
            .state
            .lock()
            .await
            .cursors
            .insert(self.name.clone(), through);
        Ok(())
    }

    fn commits(&self) -> watch::Receiver<u64> {
        self.db.shared.commits.subscribe()
    }

    fn poll_every(&self) -> Duration {
        Duration::from_millis(500)
    }

    async fn try_lease(&self) -> Result<Option<Box<dyn LeaseGuard>>> {
        Ok(try_lease(&self.db, &self.name, GroupLock::Exclusive))
    }

    async fn lease_state(&self) -> Result<Option<LeaseState>> {
        Ok(Some(lease_state(&self.db, &self.name)))
    }

    async fn backlog(&self) -> Result<Option<Backlog>> {
        let state = self.db.shared.state.lock().await;
        let from = self.first_unpublished(&state);
        let pending = state.events.read_all(from, usize::MAX);
        Ok(Some(Backlog {
            pending: pending.len() as u64,
            oldest_age: pending
                .first()
                .map(|e| (Utc::now() - e.envelope.time).to_std().unwrap_or_default()),
        }))
    }
}
