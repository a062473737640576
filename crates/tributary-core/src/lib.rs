#![doc = include_str!("../README.md")]

mod aggregate;
pub mod backend;
mod broker;
mod catch_up;
mod consistency;
mod dead_letter;
mod driver_errors;
mod envelope;
mod error;
mod event_store;
mod handler_error;
mod ids;
mod memory;
mod payload;
mod topic;
pub mod trace;
mod unit_of_work;
mod upcast;

pub use aggregate::{
    Aggregate, CommandError, Executed, Loaded, Metadata, Repository, decode_event, encode_event,
    envelopes_for,
};
pub use broker::{
    Backlog, Broker, Delivery, GroupLag, LastMessage, LeaseGuard, LeaseState, MAX_BATCH_BYTES,
    OutgoingMessage, PartitionConsumer, RelaySource, SourceBatch, topic_for_event,
};
pub use catch_up::{CatchUpConfig, Positioned, catch_up};
pub use consistency::{
    ConsistencyKey, ConsistencyToken, MAX_ENTRIES as MAX_TOKEN_ENTRIES, MAX_SEALED_LEN, TokenEntry,
    TokenError, Written, correlation_of, name_hash,
};
pub use dead_letter::{
    DeadLetter, DeadLetterId, DeadLetterStore, DeadLetterSummary, NewDeadLetter, Resolution,
};
pub use envelope::{Envelope, JSON_CONTENT_TYPE};
pub use error::{BoxError, Error, ExpectedVersion, Result};
pub use event_store::{
    AppendOutcome, DEFAULT_MAX_EVENT_BYTES, EventStore, EventStream, RecordedEvent, Snapshot,
};
pub use handler_error::HandlerError;
pub use ids::{EventId, MAX_STREAM_ID_LEN, Position, StreamId, StreamVersion};
pub use memory::{InMemoryBroker, InMemoryBrokerConfig, InMemoryDatabase, InMemoryEventStore};
pub use payload::Payload;
pub use topic::{GroupName, MAX_NAME_LEN, Offset, Partition, Topic};
pub use unit_of_work::{BoxFuture, Database, GroupLock, UnitOfWork, UnitOfWorkExt};
pub use upcast::{UpcastEvent, Upcasters};
