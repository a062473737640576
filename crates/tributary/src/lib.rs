#![doc = include_str!("../README.md")]

mod inspect;
mod url;

pub use inspect::Found;
pub use url::{BrokerUrl, DatabaseUrl, connect, connect_broker, redact};

// The model and the application's API.
pub use tributary_core::{
    Aggregate, AppendOutcome, BoxFuture, Broker, CommandError, ConsistencyKey, ConsistencyToken,
    Database, DeadLetter, DeadLetterId, DeadLetterStore, Delivery, Envelope, Error, EventId,
    EventStore, EventStream, Executed, ExpectedVersion, GroupLag, GroupLock, GroupName,
    HandlerError, InMemoryBroker, InMemoryDatabase, InMemoryEventStore, JSON_CONTENT_TYPE,
    LastMessage, LeaseGuard, Loaded, Metadata, Offset, OutgoingMessage, Partition,
    PartitionConsumer, Payload, Position, RecordedEvent, RelaySource, Repository, Resolution,
    Result, Snapshot, StreamId, StreamVersion, TokenEntry, TokenError, Topic, UnitOfWork,
    UnitOfWorkExt, UpcastEvent, Upcasters, decode_event, encode_event, envelopes_for,
};

// The long-running tasks.
pub use tributary_runtime::{
    Backoff, CancellationToken, Consumer, ConsumerConfig, DeadLetterAdmin, Dispatch, Handler,
    Health, HealthState, Projector, ProjectorConfig, Relay, RelayConfig, RelayStats, ReplayOutcome,
    View, WaitError, handler_fn,
};

// Operating a deployment from outside its processes (the operator CLI, the console).
pub use tributary_core::{Backlog, DeadLetterSummary, LeaseState, NewDeadLetter};
pub use tributary_runtime::{
    REPLAY_REQUESTS, ReplayRequest, ReplayState, metrics, replay_request, request_replay,
};

/// W3C trace context through the envelope.
pub use tributary_core::trace;

/// Orchestrated sagas: typed steps (compensatable, pivot, retriable), commands and replies
/// through the outbox and inbox, durable deadlines, recovery and inspection.
pub mod saga {
    pub use tributary_saga::*;
}

/// For implementing a backend; applications do not need it.
pub use tributary_core::backend;

/// The embedded backend: SQLite service databases and the embedded broker log.
#[cfg(feature = "sqlite")]
pub mod sqlite {
    pub use tributary_sqlite::*;
}

/// Service databases on PostgreSQL, and the primitives that work in the service's own sqlx
/// transaction ([`postgres::PgOutbox`], [`postgres::PgEventStore::append_in`],
/// [`postgres::PgInbox`]).
#[cfg(feature = "postgres")]
pub mod postgres {
    pub use tributary_postgres::*;
}

/// The broker on NATS JetStream.
#[cfg(feature = "nats")]
pub mod nats {
    pub use tributary_nats::*;
}

/// Change data capture from PostgreSQL's WAL.
#[cfg(feature = "cdc")]
pub mod cdc {
    pub use tributary_cdc::*;
}

/// What a service usually needs: `use tributary::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Aggregate, Broker, CancellationToken, ConsistencyKey, ConsistencyToken, Consumer,
        ConsumerConfig, Database, Dispatch, Envelope, Error, EventStore, ExpectedVersion,
        GroupName, Handler, HandlerError, Metadata, Payload, Projector, ProjectorConfig, Relay,
        RelayConfig, Repository, StreamId, Topic, UnitOfWork, UnitOfWorkExt, View, WaitError,
        connect, connect_broker, handler_fn,
    };

    #[cfg(feature = "postgres")]
    pub use tributary_postgres::PgUnitExt;
    #[cfg(feature = "sqlite")]
    pub use tributary_sqlite::SqliteUnitExt;
}

/// The repository's README: its Rust examples are compiled (and, where they need no server,
/// run) as doc tests, so that what it shows users keeps working.
#[cfg(all(doctest, feature = "sqlite", feature = "postgres"))]
#[doc = include_str!("../../../README.md")]
pub struct RepositoryReadme;
