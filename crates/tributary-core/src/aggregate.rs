//! Event-sourced aggregates and the repository that loads, decides and appends them.

use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::envelope::Envelope;
use crate::error::{Error, ExpectedVersion, Result};
use crate::event_store::{EventStore, RecordedEvent, Snapshot};
use crate::ids::{StreamId, StreamVersion};
use crate::payload::Payload;
use crate::unit_of_work::UnitOfWork;
use crate::upcast::Upcasters;

/// An event-sourced entity: it decides on commands by emitting events and changes its state
/// only by applying events.
///
/// `Event` must serialize as an adjacently tagged enum
/// (`#[serde(tag = "type", content = "data")]`): the tag becomes the envelope's `type` and the
/// content its `data`. The state is serialized for snapshots.
pub trait Aggregate: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The aggregate type, e.g. `Order`: the envelope's `aggregatetype`, the stream prefix and
    /// the default topic of its events.
    const TYPE: &'static str;
    type Command: Send;
    type Event: Serialize + DeserializeOwned + Send + Sync;
    type Error: std::error::Error + Send + Sync + 'static;

    /// Decides what happens. Must not change `self`: state changes come only from `apply`.
    ///
    /// # Errors
    /// A domain error when the command is not allowed in the current state.
    fn handle(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Evolves the state by one event. Must not fail: the event already happened.
    fn apply(&mut self, event: &Self::Event);
}

/// Splits an adjacently tagged event into its type and data.
///
/// # Errors
/// [`Error::InvalidInput`] when the event does not serialize as `{"type": "...", "data": ...}`.
pub fn encode_event<E: Serialize>(event: &E) -> Result<(String, Payload)> {
    let value = serde_json::to_value(event)
        .map_err(|e| Error::invalid(format!("event cannot be serialized: {e}")))?;
    let serde_json::Value::Object(mut map) = value else {
        return Err(Error::invalid(
            "an event must serialize as an object; tag the enum with #[serde(tag = \"type\", content = \"data\")]",
        ));
    };
    let Some(serde_json::Value::String(event_type)) = map.remove("type") else {
        return Err(Error::invalid(
            "an event must have a string \"type\"; tag the enum with #[serde(tag = \"type\", content = \"data\")]",
        ));
    };
    let data = map.remove("data").unwrap_or(serde_json::Value::Null);
    Ok((event_type, Payload::from_value(&data)?))
}

/// Rebuilds a typed event from an envelope's type and data.
///
/// # Errors
/// [`Error::Decode`] for an unknown type or data of the wrong shape.
pub fn decode_event<E: DeserializeOwned>(event_type: &str, data: &Payload) -> Result<E> {
    let type_json = serde_json::to_string(event_type)
        .map_err(|e| Error::decode(format!("event type {event_type:?}"), e))?;
    let tagged = format!(r#"{{"type":{type_json},"data":{}}}"#, data.as_str());
    serde_json::from_str(&tagged).map_err(|e| Error::decode(format!("event {event_type}"), e))
}

/// Correlation metadata carried from whatever caused a command to the events it produces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl Metadata {
    /// The metadata of events caused by `cause`.
    pub fn caused_by(cause: &Envelope) -> Self {
        Self {
            causation_id: Some(cause.id.to_string()),
            correlation_id: Some(
                cause
                    .correlation_id
                    .clone()
                    .unwrap_or_else(|| cause.id.to_string()),
            ),
            traceparent: cause.traceparent.clone(),
            tracestate: cause.tracestate.clone(),
        }
    }

    pub fn stamp(&self, mut envelope: Envelope) -> Envelope {
        envelope.correlation_id = self.correlation_id.clone();
        envelope.causation_id = self.causation_id.clone();
        envelope.traceparent = self.traceparent.clone();
        envelope.tracestate = self.tracestate.clone();
        envelope
    }
}

/// Builds the envelopes of an aggregate's new events.
///
/// # Errors
/// As [`encode_event`].
pub fn envelopes_for<A: Aggregate>(
    source: &str,
    id: &str,
    events: &[A::Event],
    metadata: &Metadata,
    upcasters: &Upcasters,
) -> Result<Vec<Envelope>> {
    events
        .iter()
        .map(|event| {
            let (event_type, data) = encode_event(event)?;
            let version = upcasters.latest_version(&event_type);
            Ok(metadata.stamp(
                Envelope::new(source, event_type, data)
                    .with_subject(id)
                    .with_aggregate_type(A::TYPE)
                    .with_schema_version(version),
            ))
        })
        .collect()
}

/// An aggregate's state and the stream version it reflects.
#[derive(Clone, Debug, Default)]
pub struct Loaded<A> {
    pub state: A,
    pub version: StreamVersion,
}

impl<A: Aggregate> Loaded<A> {
    /// Applies recorded events (already upcast) in order.
    ///
    /// # Errors
    /// [`Error::Decode`] for an event the aggregate does not know.
    pub fn apply_recorded(&mut self, events: &[RecordedEvent]) -> Result<()> {
        for recorded in events {
            let event: A::Event =
                decode_event(&recorded.envelope.event_type, &recorded.envelope.data)?;
            self.state.apply(&event);
            self.version = recorded.version;
        }
        Ok(())
    }

    /// Whether the stream exists (has at least one event).
    pub fn exists(&self) -> bool {
        self.version != StreamVersion::NONE
    }
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error + 'static> {
    /// The aggregate refused the command.
    #[error(transparent)]
    Rejected(E),
    /// The store failed (after the bounded retries for conflicts).
    #[error(transparent)]
    Store(#[from] Error),
}

/// What a successful command did.
#[derive(Debug)]
pub struct Executed<A: Aggregate> {
    /// The state after the new events.
    pub state: A,
    /// The stream version after the new events.
    pub version: StreamVersion,
    /// The new events' envelopes (empty when the command decided nothing needs to happen).
    pub events: Vec<Envelope>,
}

/// Loads aggregates from an [`EventStore`] (latest snapshot, then the events after it), runs
/// commands and appends the result with optimistic concurrency, retrying a bounded number of
/// times when another writer got there first.
pub struct Repository<A: Aggregate> {
    store: Arc<dyn EventStore>,
    source: String,
    snapshot_every: Option<u64>,
    max_attempts: u32,
    upcasters: Upcasters,
    page: usize,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A: Aggregate> Clone for Repository<A> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            source: self.source.clone(),
            snapshot_every: self.snapshot_every,
            max_attempts: self.max_attempts,
            upcasters: self.upcasters.clone(),
            page: self.page,
            _aggregate: PhantomData,
        }
    }
}

impl<A: Aggregate> Repository<A> {
    /// A repository whose events name `source` as their producer. No snapshots, 5 attempts.
    pub fn new(store: Arc<dyn EventStore>, source: impl Into<String>) -> Self {
        Self {
            store,
            source: source.into(),
            snapshot_every: None,
            max_attempts: 5,
            upcasters: Upcasters::new(),
            page: 1000,
            _aggregate: PhantomData,
        }
    }

    /// Saves a snapshot whenever a stream's version crosses a multiple of `n`.
    pub fn with_snapshots_every(mut self, n: u64) -> Self {
        self.snapshot_every = (n > 0).then_some(n);
        self
    }

    /// How many times a command is tried when appends conflict (at least 1).
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    pub fn with_upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = upcasters;
        self
    }

    pub fn stream_id(id: &str) -> Result<StreamId> {
        StreamId::for_aggregate(A::TYPE, id)
    }

    /// The aggregate's current state (default state at version 0 if it has no events).
    ///
    /// # Errors
    /// Store errors, or [`Error::Decode`] for an event the aggregate cannot read.
    pub async fn load(&self, id: &str) -> Result<Loaded<A>> {
        let stream = Self::stream_id(id)?;
        let mut loaded = Loaded::<A>::default();
        if self.snapshot_every.is_some()
            && let Some(snapshot) = self.store.load_snapshot(&stream).await?
        {
            loaded = Self::restore(&stream, snapshot).unwrap_or_default();
        }
        loop {
            let events = self
                .store
                .read_stream(&stream, loaded.version.next(), self.page)
                .await?;
            if self.apply_page(&mut loaded, events)? {
                return Ok(loaded);
            }
        }
    }

    /// Upcasts and applies one page of a stream; returns whether it was the last page.
    fn apply_page(&self, loaded: &mut Loaded<A>, page: Vec<RecordedEvent>) -> Result<bool> {
        let done = page.len() < self.page;
        let events = page
            .into_iter()
            .map(|mut r| {
                r.envelope = self.upcasters.upcast(r.envelope)?;
                Ok(r)
            })
            .collect::<Result<Vec<_>>>()?;
        loaded.apply_recorded(&events)?;
        Ok(done)
    }

    /// Loads the aggregate inside a unit of work, as of the unit's transaction (its latest
    /// snapshot if snapshots are on, then the events after it).
    ///
    /// # Errors
    /// As [`Repository::load`].
    pub async fn load_in(&self, unit: &mut dyn UnitOfWork, id: &str) -> Result<Loaded<A>> {
        let stream = Self::stream_id(id)?;
        let mut loaded = Loaded::<A>::default();
        if self.snapshot_every.is_some()
            && let Some(snapshot) = unit.load_snapshot(&stream).await?
        {
            loaded = Self::restore(&stream, snapshot).unwrap_or_default();
        }
        loop {
            let events = unit
                .read_stream(&stream, loaded.version.next(), self.page)
                .await?;
            if self.apply_page(&mut loaded, events)? {
                return Ok(loaded);
            }
        }
    }

    /// Runs `command` inside a unit of work: load, decide, append at the loaded version — all
    /// in the unit's transaction, so the events commit together with whatever else the unit
    /// writes (an inbox entry, outbox events, the service's own rows). When another writer
    /// appended to the stream first, the aggregate is reloaded inside the unit and the command
    /// decided again, up to the configured attempts. Outside a consumer, run it in a unit of
    /// its own:
    ///
    /// ```ignore
    /// let done = db
    ///     .transact(move |unit| Box::pin(async move {
    ///         orders.execute(unit, &order_id, command, &Metadata::default()).await
    ///     }))
    ///     .await?;
    /// ```
    ///
    /// # Errors
    /// [`CommandError::Rejected`] with the domain error, or [`CommandError::Store`] (a
    /// [`Error::Conflict`] once the attempts are used up: the unit may be run again).
    pub async fn execute(
        &self,
        unit: &mut dyn UnitOfWork,
        id: &str,
        command: A::Command,
        metadata: &Metadata,
    ) -> Result<Executed<A>, CommandError<A::Error>>
    where
        A::Command: Clone,
    {
        let stream = Self::stream_id(id)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut loaded = self.load_in(unit, id).await?;
            let events = loaded
                .state
                .handle(command.clone())
                .map_err(CommandError::Rejected)?;
            if events.is_empty() {
                return Ok(Executed {
                    state: loaded.state,
                    version: loaded.version,
                    events: Vec::new(),
                });
            }
            let envelopes =
                envelopes_for::<A>(&self.source, id, &events, metadata, &self.upcasters)?;
            let expected = if loaded.exists() {
                ExpectedVersion::Exact(loaded.version)
            } else {
                ExpectedVersion::NoStream
            };
            match unit.append(&stream, expected, envelopes.clone()).await {
                Ok(outcome) => {
                    let before = loaded.version;
                    for event in &events {
                        loaded.state.apply(event);
                    }
                    loaded.version = outcome.next_expected;
                    self.maybe_snapshot(unit, &stream, before, &loaded).await?;
                    return Ok(Executed {
                        state: loaded.state,
                        version: loaded.version,
                        events: envelopes,
                    });
                }
                Err(Error::Conflict { .. }) if attempt < self.max_attempts => {
                    tracing::debug!(%stream, attempt, "append conflicted; reloading");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The state a snapshot holds, or `None` when it does not decode (an older shape).
    fn restore(stream: &StreamId, snapshot: Snapshot) -> Option<Loaded<A>> {
        match snapshot.state.decode::<A>() {
            Ok(state) => Some(Loaded {
                state,
                version: snapshot.version,
            }),
            // A snapshot of an older state shape is only a cache: replay instead.
            Err(e) => {
                tracing::warn!(%stream, error = %e, "ignoring undecodable snapshot");
                None
            }
        }
    }

    /// Saves a snapshot in the unit when the stream's version crossed a multiple of the
    /// snapshot interval. In the unit, so that a snapshot never describes events that were
    /// rolled back.
    async fn maybe_snapshot(
        &self,
        unit: &mut dyn UnitOfWork,
        stream: &StreamId,
        before: StreamVersion,
        after: &Loaded<A>,
    ) -> Result<()> {
        let Some(every) = self.snapshot_every else {
            return Ok(());
        };
        if before.get() / every == after.version.get() / every {
            return Ok(());
        }
        match Payload::from_value(&after.state) {
            Ok(state) => {
                let snapshot = Snapshot {
                    version: after.version,
                    state,
                };
                unit.save_snapshot(stream, snapshot).await
            }
            Err(e) => {
                tracing::warn!(%stream, error = %e, "cannot serialize snapshot");
                Ok(())
            }
        }
    }
}
