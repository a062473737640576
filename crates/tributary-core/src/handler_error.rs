//! Why a message handler did not process a message, and what the consumer runtime does next.

use crate::error::Error;

/// Why a handler did not process a message. The variant decides what happens to it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerError {
    /// A failure that may go away (a participant not ready yet): retried with backoff, then
    /// dead-lettered once the group's attempts are used up.
    #[error("{0}")]
    Retry(String),
    /// A failure that will not go away (bad data, an unknown event, a broken invariant):
    /// dead-lettered at once, and later messages with the same key are parked behind it.
    #[error("{0}")]
    Reject(String),
    /// The infrastructure failed, not the message (the database was busy, a deadlock, a lost
    /// race, a dropped connection): retried for as long as it takes without counting attempts,
    /// so a database hiccup never dead-letters a good message.
    #[error("{0}")]
    Transient(String),
}

impl HandlerError {
    /// See [`HandlerError::Retry`].
    pub fn retry(message: impl Into<String>) -> Self {
        HandlerError::Retry(message.into())
    }

    /// See [`HandlerError::Reject`].
    pub fn reject(message: impl Into<String>) -> Self {
        HandlerError::Reject(message.into())
    }

    /// See [`HandlerError::Transient`].
    pub fn transient(message: impl Into<String>) -> Self {
        HandlerError::Transient(message.into())
    }

    /// Whether handling the message again may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, HandlerError::Reject(_))
    }

    /// Whether the failure is the infrastructure's rather than the message's.
    pub fn is_transient(&self) -> bool {
        matches!(self, HandlerError::Transient(_))
    }

    /// What went wrong.
    pub fn message(&self) -> &str {
        match self {
            HandlerError::Retry(m) | HandlerError::Reject(m) | HandlerError::Transient(m) => m,
        }
    }
}

impl From<Error> for HandlerError {
    /// A retryable store error (busy, unreachable, a lost race) is [`HandlerError::Transient`];
    /// any other (bad input, a refused value, a storage problem) is [`HandlerError::Reject`].
    fn from(e: Error) -> Self {
        if e.is_retryable() {
            HandlerError::Transient(e.to_string())
        } else {
            HandlerError::Reject(e.to_string())
        }
    }
}

#[cfg(feature = "sqlx")]
impl From<sqlx_core::Error> for HandlerError {
    /// Classified as [`Error::from_sqlx`] does: a deadlock is retried, a bad value rejected.
    fn from(e: sqlx_core::Error) -> Self {
        Error::from(e).into()
    }
}

#[cfg(feature = "rusqlite")]
impl From<rusqlite::Error> for HandlerError {
    /// Classified as [`Error::from_rusqlite`] does: a busy database is retried.
    fn from(e: rusqlite::Error) -> Self {
        Error::from(e).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_store_errors_are_transient_and_the_rest_rejected() {
        let busy = Error::unavailable("db", "busy");
        assert!(HandlerError::from(busy).is_transient());
        let race = Error::DocumentConflict {
            collection: "c".into(),
            id: "1".into(),
        };
        assert!(HandlerError::from(race).is_transient());
        let bad = Error::invalid("no");
        assert_eq!(
            HandlerError::from(bad),
            HandlerError::Reject("invalid input: no".into())
        );
        assert!(HandlerError::retry("later").is_retryable());
        assert!(!HandlerError::reject("never").is_retryable());
    }
}
