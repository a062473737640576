//! In-memory implementations for tests and examples. They keep every guarantee of the
//! durable backends except durability, and pass the same conformance suites.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::watch;

use crate::catch_up::{CatchUpConfig, catch_up};
use crate::envelope::Envelope;
use crate::error::{Error, ExpectedVersion, Result};
use crate::event_store::{
    AppendOutcome, DEFAULT_MAX_EVENT_BYTES, EventStore, EventStream, RecordedEvent, Snapshot,
    StoredAt, dedup_outcome, validate_batch,
};
use crate::ids::{EventId, Position, StreamId, StreamVersion};

#[derive(Default)]
struct Inner {
    /// All events; the event at index i has position i + 1.
    log: Vec<RecordedEvent>,
    /// Per stream, the indexes into `log` in version order.
    streams: HashMap<StreamId, Vec<usize>>,
    ids: HashMap<EventId, usize>,
    snapshots: HashMap<StreamId, Snapshot>,
}

impl Inner {
    fn stored_at(&self, id: &EventId) -> Option<StoredAt> {
        self.ids.get(id).map(|&i| {
            let r = &self.log[i];
            StoredAt {
                stream: r.stream.clone(),
                version: r.version,
                position: r.position,
            }
        })
    }
}

/// An [`EventStore`] in memory.
pub struct InMemoryEventStore {
    inner: std::sync::Arc<Mutex<Inner>>,
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
        Self {
            inner: Default::default(),
            commits: watch::channel(0).0,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
        }
    }

    pub fn with_max_event_bytes(mut self, limit: usize) -> Self {
        self.max_event_bytes = limit;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` half-updated: every mutation
        // below is validated first and then applied without a fallible step.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn read_all_from(inner: &Mutex<Inner>, from: Position, max: usize) -> Vec<RecordedEvent> {
    let inner = inner.lock().unwrap_or_else(|p| p.into_inner());
    let start = from.get().saturating_sub(1) as usize;
    inner.log.iter().skip(start).take(max).cloned().collect()
}

#[async_trait]
impl EventStore for InMemoryEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        mut events: Vec<Envelope>,
    ) -> Result<AppendOutcome> {
        validate_batch(&events, self.max_event_bytes)?;
        let outcome = {
            let mut inner = self.lock();
            if let Some(first) = inner.stored_at(&events[0].id) {
                return dedup_outcome(stream, &events, first, |id| Ok(inner.stored_at(id)));
            }
            if let Some(e) = events.iter().find(|e| inner.ids.contains_key(&e.id)) {
                return Err(Error::invalid(format!(
                    "event id {} is already stored; an id may be used for one event only",
                    e.id
                )));
            }
            let actual =
                StreamVersion::new(inner.streams.get(stream).map_or(0, |v| v.len() as u64));
            if !expected.matches(actual) {
                return Err(Error::Conflict {
                    stream: stream.clone(),
                    expected,
                    actual,
                });
            }
            let first_version = actual.next();
            let mut version = actual;
            for envelope in events.drain(..) {
                version = version.next();
                let index = inner.log.len();
                let position = Position::new(index as u64 + 1);
                let mut envelope = envelope;
                envelope.sequence = Some(version);
                inner.ids.insert(envelope.id, index);
                inner.streams.entry(stream.clone()).or_default().push(index);
                inner.log.push(RecordedEvent {
                    position,
                    stream: stream.clone(),
                    version,
                    envelope,
                });
            }
            AppendOutcome {
                first_version,
                next_expected: version,
                last_position: Position::new(inner.log.len() as u64),
                deduplicated: false,
            }
        };
        self.commits.send_modify(|c| *c += 1);
        Ok(outcome)
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: StreamVersion,
        max: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let inner = self.lock();
        let Some(indexes) = inner.streams.get(stream) else {
            return Ok(Vec::new());
        };
        let start = from.get().saturating_sub(1) as usize;
        Ok(indexes
            .iter()
            .skip(start)
            .take(max)
            .map(|&i| inner.log[i].clone())
            .collect())
    }

    async fn read_all(&self, from: Position, max: usize) -> Result<Vec<RecordedEvent>> {
        Ok(read_all_from(&self.inner, from, max))
    }

    fn subscribe_all(&self, from: Position) -> EventStream {
        let inner = self.inner.clone();
        catch_up(
            from,
            self.commits.subscribe(),
            CatchUpConfig::default(),
            move |from, max| {
                let events = read_all_from(&inner, from, max);
                async move { Ok(events) }
            },
        )
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<StreamVersion> {
        Ok(StreamVersion::new(
            self.lock()
                .streams
                .get(stream)
                .map_or(0, |v| v.len() as u64),
        ))
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>> {
        Ok(self.lock().snapshots.get(stream).cloned())
    }

    async fn save_snapshot(&self, stream: &StreamId, snapshot: Snapshot) -> Result<()> {
        self.lock().snapshots.insert(stream.clone(), snapshot);
        Ok(())
    }
}
