//! The in-memory event log shared by the in-memory event store and database.

use std::collections::HashMap;

use crate::envelope::Envelope;
use crate::error::{Error, ExpectedVersion, Result};
use crate::event_store::{AppendOutcome, RecordedEvent, Snapshot, StoredAt, dedup_outcome};
use crate::ids::{EventId, Position, StreamId, StreamVersion};

#[derive(Default)]
pub(crate) struct EventLog {
    /// All events; the event at index i has position i + 1.
    log: Vec<RecordedEvent>,
    /// Per stream, the indexes into `log` in version order.
    streams: HashMap<StreamId, Vec<usize>>,
    ids: HashMap<EventId, usize>,
    pub(crate) snapshots: HashMap<StreamId, Snapshot>,
}

impl EventLog {
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

    pub(crate) fn position_of(&self, id: &EventId) -> Option<Position> {
        self.ids.get(id).map(|&i| self.log[i].position)
    }

    pub(crate) fn len(&self) -> usize {
        self.log.len()
    }

    /// Appends a validated batch with the rules of `EventStore::append`.
    pub(crate) fn append(
        &mut self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<Envelope>,
    ) -> Result<AppendOutcome> {
        if let Some(first) = self.stored_at(&events[0].id) {
            return dedup_outcome(stream, &events, first, |id| Ok(self.stored_at(id)));
        }
        if let Some(e) = events.iter().find(|e| self.ids.contains_key(&e.id)) {
            return Err(Error::invalid(format!(
                "event id {} is already stored; an id may be used for one event only",
                e.id
            )));
        }
        let actual = self.stream_version(stream);
        if !expected.matches(actual) {
            return Err(Error::Conflict {
                stream: stream.clone(),
                expected,
                actual,
            });
        }
        let mut version = actual;
        for mut envelope in events {
            version = version.next();
            let index = self.log.len();
            envelope.sequence = Some(version);
            self.ids.insert(envelope.id, index);
            self.streams.entry(stream.clone()).or_default().push(index);
            self.log.push(RecordedEvent {
                position: Position::new(index as u64 + 1),
                stream: stream.clone(),
                version,
                envelope,
            });
        }
        Ok(AppendOutcome {
            first_version: actual.next(),
            next_expected: version,
            last_position: Position::new(self.log.len() as u64),
            deduplicated: false,
        })
    }

    /// Removes every event after the first `len` (undoing appends of a rolled-back unit).
    pub(crate) fn truncate(&mut self, len: usize) {
        while self.log.len() > len {
            let Some(r) = self.log.pop() else { break };
            self.ids.remove(&r.envelope.id);
            if let Some(indexes) = self.streams.get_mut(&r.stream) {
                indexes.pop();
                if indexes.is_empty() {
                    self.streams.remove(&r.stream);
                }
            }
        }
    }

    pub(crate) fn stream_version(&self, stream: &StreamId) -> StreamVersion {
        StreamVersion::new(self.streams.get(stream).map_or(0, |v| v.len() as u64))
    }

    pub(crate) fn read_stream(
        &self,
        stream: &StreamId,
        from: StreamVersion,
        max: usize,
    ) -> Vec<RecordedEvent> {
        let Some(indexes) = self.streams.get(stream) else {
            return Vec::new();
        };
        let start = from.get().saturating_sub(1) as usize;
        indexes
            .iter()
            .skip(start)
            .take(max)
            .map(|&i| self.log[i].clone())
            .collect()
    }

    pub(crate) fn read_all(&self, from: Position, max: usize) -> Vec<RecordedEvent> {
        let start = from.get().saturating_sub(1) as usize;
        self.log.iter().skip(start).take(max).cloned().collect()
    }
}
