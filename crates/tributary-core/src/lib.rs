#![doc = include_str!("../README.md")]

mod aggregate;
mod catch_up;
mod envelope;
mod error;
mod event_store;
mod ids;
mod memory;
mod payload;
mod upcast;

pub use aggregate::{
    Aggregate, CommandError, Executed, Loaded, Metadata, Repository, decode_event, encode_event,
    envelopes_for,
};
pub use catch_up::{CatchUpConfig, Positioned, catch_up};
pub use envelope::{Envelope, JSON_CONTENT_TYPE};
pub use error::{BoxError, Error, ExpectedVersion, Result};
pub use event_store::{
    AppendOutcome, DEFAULT_MAX_EVENT_BYTES, EventStore, EventStream, RecordedEvent, Snapshot,
    StoredAt, dedup_outcome, validate_batch,
};
pub use ids::{EventId, MAX_STREAM_ID_LEN, Position, StreamId, StreamVersion};
pub use memory::InMemoryEventStore;
pub use payload::Payload;
pub use upcast::{UpcastEvent, Upcasters};
