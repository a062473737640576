//! Message handlers: application code that runs inside the consumer's transaction.
//!
//! A handler is async and gets the message's envelope and the consumer's unit of work, in
//! which the message's inbox entry is recorded: everything it writes through the unit
//! (documents, outbox events, appends, the service's own SQL through the backend's typed
//! accessor) commits together with that entry, or not at all.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use tributary_core::{BoxFuture, Envelope, HandlerError, UnitOfWork};

/// Processes one message inside the consumer's unit of work. It must be quick and must not
/// wait on the network: on SQLite every other writer of the file waits while it runs.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// # Errors
    /// A [`HandlerError`]; the unit's writes for this message are rolled back.
    async fn handle(&self, event: &Envelope, unit: &mut dyn UnitOfWork)
    -> Result<(), HandlerError>;
}

#[async_trait]
impl<F> Handler for F
where
    F: for<'a> Fn(&'a Envelope, &'a mut dyn UnitOfWork) -> BoxFuture<'a, Result<(), HandlerError>>
        + Send
        + Sync
        + 'static,
{
    async fn handle(
        &self,
        event: &Envelope,
        unit: &mut dyn UnitOfWork,
    ) -> Result<(), HandlerError> {
        self(event, unit).await
    }
}

/// A handler made of one async closure over every message (see [`Dispatch`] to route by
/// event type). The function gives the closure its signature:
///
/// ```
/// use tributary_runtime::{handler_fn, HandlerError};
///
/// let count = handler_fn(|event, unit| Box::pin(async move {
///     use tributary_core::UnitOfWorkExt;
///     let n: u64 = unit.get_as("counts", &event.event_type).await?.unwrap_or(0);
///     unit.put_as("counts", &event.event_type, &(n + 1)).await?;
///     Ok::<_, HandlerError>(())
/// }));
/// ```
pub fn handler_fn<F>(f: F) -> std::sync::Arc<dyn Handler>
where
    F: for<'a> Fn(&'a Envelope, &'a mut dyn UnitOfWork) -> BoxFuture<'a, Result<(), HandlerError>>
        + Send
        + Sync
        + 'static,
{
    std::sync::Arc::new(f)
}

type Route = Box<
    dyn for<'a> Fn(&'a Envelope, &'a mut dyn UnitOfWork) -> BoxFuture<'a, Result<(), HandlerError>>
        + Send
        + Sync,
>;

/// A handler that routes by event type to typed async closures. An event type that is neither
/// routed nor explicitly ignored is rejected (dead-lettered), so that a new event type is
/// noticed instead of silently dropped.
///
/// ```
/// use serde::Deserialize;
/// use tributary_core::UnitOfWorkExt;
/// use tributary_runtime::{Dispatch, HandlerError};
///
/// #[derive(Deserialize)]
/// struct OrderCancelled { sku: String, qty: i64 }
///
/// let handler = Dispatch::new()
///     .on("OrderCancelled", |o: OrderCancelled, _cause, unit| Box::pin(async move {
///         let stock: i64 = unit.get_as("stock", &o.sku).await?.unwrap_or(0);
///         unit.put_as("stock", &o.sku, &(stock + o.qty)).await?;
///         Ok::<_, HandlerError>(())
///     }))
///     .ignore(&["OrderCreated"]);
/// ```
///
/// The closure is called once per message and its future may not borrow from the closure's
/// captures: clone what it needs (an `Arc`, a repository) into the `async move` block.
#[derive(Default)]
pub struct Dispatch {
    routes: HashMap<String, Route>,
    ignored: HashSet<String>,
}

impl Dispatch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Handles `event_type` by decoding its data as `E` and calling `f` with it, the envelope
    /// (its cause, for [`tributary_core::Metadata::caused_by`]) and the unit of work. Data that
    /// does not decode as `E` is rejected (dead-lettered) without calling `f`.
    pub fn on<E, F>(mut self, event_type: &str, f: F) -> Self
    where
        E: DeserializeOwned + Send + 'static,
        F: for<'a> Fn(
                E,
                &'a Envelope,
                &'a mut dyn UnitOfWork,
            ) -> BoxFuture<'a, Result<(), HandlerError>>
            + Send
            + Sync
            + 'static,
    {
        let name = event_type.to_owned();
        let route: Route = Box::new(move |envelope, unit| match envelope.data.decode::<E>() {
            Ok(data) => f(data, envelope, unit),
            Err(e) => {
                let rejected =
                    HandlerError::reject(format!("cannot decode the data of {name}: {e}"));
                Box::pin(async move { Err(rejected) })
            }
        });
        self.routes.insert(event_type.to_owned(), route);
        self
    }

    /// Acknowledges these event types without doing anything.
    pub fn ignore(mut self, event_types: &[&str]) -> Self {
        self.ignored
            .extend(event_types.iter().map(|t| (*t).to_owned()));
        self
    }
}

#[async_trait]
impl Handler for Dispatch {
    async fn handle(
        &self,
        event: &Envelope,
        unit: &mut dyn UnitOfWork,
    ) -> Result<(), HandlerError> {
        match self.routes.get(&event.event_type) {
            Some(route) => route(event, unit).await,
            None if self.ignored.contains(&event.event_type) => Ok(()),
            None => Err(HandlerError::reject(format!(
                "unknown event type {:?}: route it with Dispatch::on or list it in Dispatch::ignore",
                event.event_type
            ))),
        }
    }
}
