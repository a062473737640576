//! Message handlers: application code that runs inside the consumer's transaction.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::de::DeserializeOwned;
use tributary_core::{Envelope, Error, UnitOfWork};

/// Why a handler did not process a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandlerError {
    /// Worth trying again later. Otherwise the message goes straight to the dead letters.
    pub retryable: bool,
    /// The infrastructure failed, not the message (the database was busy, a deadlock, a
    /// concurrent writer): retried for as long as it takes, without counting attempts, so a
    /// database hiccup never dead-letters good messages.
    pub transient: bool,
    pub message: String,
}

impl HandlerError {
    /// A failure that may go away: the runtime retries with backoff, then dead-letters.
    pub fn retry(message: impl Into<String>) -> Self {
        Self {
            retryable: true,
            transient: false,
            message: message.into(),
        }
    }

    /// A failure that will not go away (bad data, unknown event): dead-letter at once.
    pub fn reject(message: impl Into<String>) -> Self {
        Self {
            retryable: false,
            transient: false,
            message: message.into(),
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for HandlerError {}

impl From<Error> for HandlerError {
    fn from(e: Error) -> Self {
        Self {
            retryable: e.is_retryable(),
            transient: e.is_retryable(),
            message: e.to_string(),
        }
    }
}

/// Processes one message inside the consumer's unit of work. Everything it writes through
/// `unit` commits together with the inbox entry, or not at all. It must be quick and must not
/// block on the network.
pub trait Handler: Send + Sync + 'static {
    /// # Errors
    /// A [`HandlerError`]; the unit's writes for this message are rolled back.
    fn handle(&self, event: &Envelope, unit: &mut dyn UnitOfWork) -> Result<(), HandlerError>;
}

impl<F> Handler for F
where
    F: Fn(&Envelope, &mut dyn UnitOfWork) -> Result<(), HandlerError> + Send + Sync + 'static,
{
    fn handle(&self, event: &Envelope, unit: &mut dyn UnitOfWork) -> Result<(), HandlerError> {
        self(event, unit)
    }
}

type Route = Box<dyn Fn(&Envelope, &mut dyn UnitOfWork) -> Result<(), HandlerError> + Send + Sync>;

/// A handler that routes by event type to typed closures. An event type that is neither
/// routed nor explicitly ignored is rejected (dead-lettered), so that a new event type is
/// noticed instead of silently dropped.
#[derive(Default)]
pub struct Dispatch {
    routes: HashMap<String, Route>,
    ignored: HashSet<String>,
}

impl Dispatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Handles `event_type` by decoding its data as `E` and calling `f`.
    pub fn on<E, F>(mut self, event_type: &str, f: F) -> Self
    where
        E: DeserializeOwned,
        F: Fn(E, &Envelope, &mut dyn UnitOfWork) -> Result<(), HandlerError>
            + Send
            + Sync
            + 'static,
    {
        let name = event_type.to_owned();
        self.routes.insert(
            event_type.to_owned(),
            Box::new(move |envelope, unit| {
                let data: E = envelope.data.decode().map_err(|e| {
                    HandlerError::reject(format!("cannot decode the data of {name}: {e}"))
                })?;
                f(data, envelope, unit)
            }),
        );
        self
    }

    /// Acknowledges these event types without doing anything.
    pub fn ignore(mut self, event_types: &[&str]) -> Self {
        self.ignored
            .extend(event_types.iter().map(|t| (*t).to_owned()));
        self
    }
}

impl Handler for Dispatch {
    fn handle(&self, event: &Envelope, unit: &mut dyn UnitOfWork) -> Result<(), HandlerError> {
        match self.routes.get(&event.event_type) {
            Some(route) => route(event, unit),
            None if self.ignored.contains(&event.event_type) => Ok(()),
            None => Err(HandlerError::reject(format!(
                "unknown event type {:?}: route it with Dispatch::on or list it in Dispatch::ignore",
                event.event_type
            ))),
        }
    }
}
