//! The error type shared by every store, broker and runtime component.

use std::fmt;

use crate::ids::{StreamId, StreamVersion};

/// Boxed source of a backend error: driver errors are wrapped, never part of the API.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a caller may expect of a stream when appending to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ExpectedVersion {
    /// Append whatever the stream's version is.
    Any,
    /// The stream must not exist yet (have no events).
    NoStream,
    /// The stream must be at exactly this version.
    Exact(StreamVersion),
}

impl ExpectedVersion {
    /// Whether a stream currently at `actual` satisfies this expectation.
    pub fn matches(self, actual: StreamVersion) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == StreamVersion::NONE,
            ExpectedVersion::Exact(v) => v == actual,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// Every failure a Tributary component reports. Match on the variants you must handle;
/// [`Error::is_retryable`] says whether trying the same operation again can succeed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The stream was not at the expected version: someone else appended first. Reload and
    /// decide again.
    #[error(
        "conflict on stream {stream}: expected {expected}, but the stream is at version {actual}; reload it and retry the command"
    )]
    Conflict {
        stream: StreamId,
        expected: ExpectedVersion,
        actual: StreamVersion,
    },

    /// A document this unit read changed before the unit committed (or one it read as absent
    /// was created meanwhile): another unit of work won the race. Nothing of this unit was
    /// written; run it again and it reads the new state.
    #[error(
        "document {collection}/{id} was changed by another unit of work after this one read it; run the unit again"
    )]
    DocumentConflict { collection: String, id: String },

    /// The database refused a value the unit wrote when the unit committed (a backend may hold
    /// writes until commit, see [`crate::UnitOfWork`]): the unit was rolled back. The same
    /// write will be refused again.
    #[error("the database refused a write of the unit of work: {reason}")]
    Refused {
        reason: String,
        /// For a unit run by the consumer runtime: the index, within the unit, of the message
        /// whose handler made the refused write, when the backend can tell.
        message: Option<usize>,
    },

    /// An event (or a batch) is bigger than the configured limit.
    #[error("{what} is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        what: String,
        size: usize,
        limit: usize,
    },

    /// A stream id is empty, too long or contains control characters.
    #[error("invalid stream id: {reason}")]
    InvalidStreamId { reason: String },

    /// Input that can never succeed as given (a payload that is not JSON, an event id reused
    /// for a different event, a bad configuration value).
    #[error("invalid input: {reason}")]
    InvalidInput { reason: String },

    /// Bytes from outside (a database row, a broker message, a request) could not be decoded.
    #[error("cannot decode {what}: {reason}")]
    Decode { what: String, reason: String },

    /// A database or broker is unreachable, busy or shutting down. Worth retrying.
    #[error("{what} is unavailable: {source}")]
    Unavailable {
        what: String,
        #[source]
        source: BoxError,
    },

    /// The storage holds something this version cannot use: not a Tributary database, a newer
    /// schema, a corrupted row. Not worth retrying.
    #[error("storage problem: {reason}")]
    Storage {
        reason: String,
        #[source]
        source: Option<BoxError>,
    },

    /// Application code (a unit of work, a handler) panicked. The unit was rolled back.
    #[error("{what} panicked: {message}")]
    Panicked { what: String, message: String },

    /// What the operation needs to itself is in use by a running component (e.g. a view
    /// rebuild while the group's consumers run). Stop that component and try again.
    #[error("{what} is in use: {reason}")]
    InUse { what: String, reason: String },

    /// A component was stopped while the operation was in flight.
    #[error("{what} has shut down")]
    Shutdown { what: String },
}

impl Error {
    /// Whether retrying the same operation may succeed: the infrastructure was busy or
    /// unreachable, or another writer won a race. A conflict is retryable only for a caller
    /// that re-reads before it retries (a unit of work run again does; the repository does).
    /// Everything else (bad input, a value the database refuses, a storage problem) fails
    /// the same way again.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. } | Error::Conflict { .. } | Error::DocumentConflict { .. }
        )
    }

    pub fn decode(what: impl Into<String>, reason: impl fmt::Display) -> Self {
        Error::Decode {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    pub fn invalid(reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            reason: reason.into(),
        }
    }

    pub fn unavailable(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Unavailable {
            what: what.into(),
            source: source.into(),
        }
    }

    pub fn storage(reason: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Storage {
            reason: reason.into(),
            source: Some(source.into()),
        }
    }

    /// The error for a caught panic payload.
    pub fn panicked(what: impl Into<String>, payload: &(dyn std::any::Any + Send)) -> Self {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-string panic payload".to_owned());
        Error::Panicked {
            what: what.into(),
            message,
        }
    }

    pub fn storage_msg(reason: impl Into<String>) -> Self {
        Error::Storage {
            reason: reason.into(),
            source: None,
        }
    }
}
