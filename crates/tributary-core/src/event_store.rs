//! The event store: append with optimistic concurrency, read a stream, read and subscribe to
//! everything in global order.

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::envelope::Envelope;
use crate::error::{Error, ExpectedVersion, Result};
use crate::ids::{EventId, Position, StreamId, StreamVersion};
use crate::payload::Payload;

/// The default size limit of one event (data plus metadata): 1 MiB.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1 << 20;

/// An event as stored: its envelope (with `sequence` set to its version) and where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedEvent {
    pub position: Position,
    pub stream: StreamId,
    pub version: StreamVersion,
    pub envelope: Envelope,
}

/// What an append did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendOutcome {
    /// The version of the first appended event.
    pub first_version: StreamVersion,
    /// The stream's version after the append (the version of the last appended event).
    pub next_expected: StreamVersion,
    /// The global position of the last appended event.
    pub last_position: Position,
    /// True when every event was already stored (a retry after a lost reply): nothing new was
    /// written and this describes the earlier append.
    pub deduplicated: bool,
}

/// A snapshot of an aggregate's state at a stream version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub version: StreamVersion,
    pub state: Payload,
}

/// A live, ordered feed of recorded events. It ends only on an error it cannot recover from.
pub type EventStream = BoxStream<'static, Result<RecordedEvent>>;

/// An append-only store of event streams.
///
/// Every implementation passes the conformance suite in `tributary-testkit`.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` to `stream` if it is at `expected`; all or nothing.
    ///
    /// Appending events whose ids are all already stored, at the same place in the same
    /// stream, succeeds with `deduplicated: true` and writes nothing (a retry after a lost reply).
    ///
    /// # Errors
    /// [`Error::Conflict`] when the stream is not at `expected`; [`Error::TooLarge`] for an
    /// event over the size limit; [`Error::InvalidInput`] for an empty batch or an event id
    /// already used by a different event; [`Error::Unavailable`] when storage cannot be reached.
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<Envelope>,
    ) -> Result<AppendOutcome>;

    /// Up to `max` events of `stream` with version `from` or later, in version order.
    async fn read_stream(
        &self,
        stream: &StreamId,
        from: StreamVersion,
        max: usize,
    ) -> Result<Vec<RecordedEvent>>;

    /// Up to `max` events at position `from` or later, in global (commit) order.
    async fn read_all(&self, from: Position, max: usize) -> Result<Vec<RecordedEvent>>;

    /// A catch-up subscription: every event at position `from` or later, history first, then
    /// new appends as they commit, with no gap and no duplicate at the switch-over. Memory stays
    /// bounded by one read batch however far behind `from` is.
    fn subscribe_all(&self, from: Position) -> EventStream;

    /// The current version of `stream` ([`StreamVersion::NONE`] if it has no events).
    async fn stream_version(&self, stream: &StreamId) -> Result<StreamVersion>;

    /// Where the event `id` is in global order, if this store holds it (one indexed read):
    /// a projector has applied it once its checkpoint is at or past that position.
    async fn position_of(&self, id: &EventId) -> Result<Option<Position>>;

    /// The latest snapshot saved for `stream`, if any.
    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>>;

    /// Saves a snapshot for `stream`, replacing an older one.
    async fn save_snapshot(&self, stream: &StreamId, snapshot: Snapshot) -> Result<()>;
}

/// The checks every backend makes before it writes anything: a non-empty batch, distinct
/// ids, each event within `max_event_bytes`.
///
/// # Errors
/// [`Error::InvalidInput`] or [`Error::TooLarge`].
pub fn validate_batch(events: &[Envelope], max_event_bytes: usize) -> Result<()> {
    if events.is_empty() {
        return Err(Error::invalid("nothing to append: the batch is empty"));
    }
    let mut seen = std::collections::HashSet::with_capacity(events.len());
    for e in events {
        let size = e.size_hint();
        if size > max_event_bytes {
            return Err(Error::TooLarge {
                what: format!("event {} ({})", e.id, e.event_type),
                size,
                limit: max_event_bytes,
            });
        }
        if e.event_type.is_empty() {
            return Err(Error::invalid(format!("event {} has an empty type", e.id)));
        }
        if e.text_attributes().any(|a| a.contains('\0')) {
            return Err(Error::invalid(format!(
                "event {} has an attribute with the NUL character, which cannot be stored",
                e.id
            )));
        }
        if !seen.insert(e.id) {
            return Err(Error::invalid(format!(
                "event id {} appears twice in one batch",
                e.id
            )));
        }
    }
    Ok(())
}

/// Where an already stored event id lives, for idempotent re-append checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredAt {
    pub stream: StreamId,
    pub version: StreamVersion,
    pub position: Position,
}

/// Decides what a batch whose first event id is already stored means. `lookup` finds where an
/// event id is stored. Returns the outcome of the earlier append when the batch is an exact
/// retry of it.
///
/// # Errors
/// [`Error::InvalidInput`] when the ids were used elsewhere or only partly stored.
pub fn dedup_outcome(
    stream: &StreamId,
    events: &[Envelope],
    first: StoredAt,
    mut lookup: impl FnMut(&EventId) -> Result<Option<StoredAt>>,
) -> Result<AppendOutcome> {
    let mut last = first.clone();
    for (i, e) in events.iter().enumerate() {
        let at = if i == 0 {
            Some(first.clone())
        } else {
            lookup(&e.id)?
        };
        match at {
            Some(at)
                if &at.stream == stream && at.version.get() == first.version.get() + i as u64 =>
            {
                last = at;
            }
            Some(at) => {
                return Err(Error::invalid(format!(
                    "event id {} is already stored in stream {} at version {}; an id may be used for one event only",
                    e.id, at.stream, at.version
                )));
            }
            None => {
                return Err(Error::invalid(format!(
                    "the batch repeats stored event {} but also holds new event {}; retry the original batch unchanged",
                    events[0].id, e.id
                )));
            }
        }
    }
    Ok(AppendOutcome {
        first_version: first.version,
        next_expected: last.version,
        last_position: last.position,
        deduplicated: true,
    })
}
