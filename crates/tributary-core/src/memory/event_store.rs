//! An in-memory event store.

use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::watch;

use super::event_log::EventLog;
use crate::catch_up::{CatchUpConfig, catch_up};
use crate::envelope::Envelope;
use crate::error::{ExpectedVersion, Result};
use crate::event_store::{
    AppendOutcome, DEFAULT_MAX_EVENT_BYTES, EventStore, EventStream, RecordedEvent, Snapshot,
    validate_batch,
};
use crate::ids::{EventId, Position, StreamId, StreamVersion};

/// Locks a mutex, ignoring poisoning: every mutation of the in-memory state is validated
/// before it starts, so a panic cannot leave it half-changed.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An [`EventStore`] in memory. It keeps every guarantee of the durable stores except
/// durability and passes the same conformance suite.
pub struct InMemoryEventStore {
    log: Arc<Mutex<EventLog>>,
    commits: watch::Sender<u64>,
    max_event_bytes: usize,
}

impl Default for InMemoryEventStore {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryEventStore {
    pub fn new() -> Self {
        Self::over(Arc::default(), watch::channel(0).0)
    }

    pub(crate) fn over(log: Arc<Mutex<EventLog>>, commits: watch::Sender<u64>) -> Self {
        Self {
            log,
            commits,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
        }
    }

    pub fn with_max_event_bytes(mut self, limit: usize) -> Self {
        self.max_event_bytes = limit;
        self
    }
}

#[async_trait]
impl EventStore for InMemoryEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        mut events: Vec<Envelope>,
    ) -> Result<AppendOutcome> {
        crate::trace::stamp_appended(stream, &mut events);
        validate_batch(&events, self.max_event_bytes)?;
        let outcome = lock(&self.log).append(stream, expected, events)?;
        if !outcome.deduplicated {
            self.commits.send_modify(|c| *c += 1);
        }
        Ok(outcome)
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: StreamVersion,
        max: usize,
    ) -> Result<Vec<RecordedEvent>> {
        Ok(lock(&self.log).read_stream(stream, from, max))
    }

    async fn read_all(&self, from: Position, max: usize) -> Result<Vec<RecordedEvent>> {
        Ok(lock(&self.log).read_all(from, max))
    }

    fn subscribe_all(&self, from: Position) -> EventStream {
        let log = self.log.clone();
        catch_up(
            from,
            self.commits.subscribe(),
            CatchUpConfig::default(),
            move |from, max| {
                let events = lock(&log).read_all(from, max);
                async move { Ok(events) }
            },
        )
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<StreamVersion> {
        Ok(lock(&self.log).stream_version(stream))
    }

    async fn position_of(&self, id: &EventId) -> Result<Option<Position>> {
        Ok(lock(&self.log).position_of(id))
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>> {
        Ok(lock(&self.log).snapshots.get(stream).cloned())
    }

    async fn save_snapshot(&self, stream: &StreamId, snapshot: Snapshot) -> Result<()> {
        let mut log = lock(&self.log);
        let newer = log
            .snapshots
            .get(stream)
            .is_none_or(|s| s.version <= snapshot.version);
        if newer {
            log.snapshots.insert(stream.clone(), snapshot);
        }
        Ok(())
    }
}
