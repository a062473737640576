//! A participant: an ordinary consumer handler for saga commands, where each command handler
//! is one async function that replies success or failure.
//!
//! The reply is published through the participant's outbox in the consumer's unit, together
//! with the command's inbox entry and whatever the handler wrote: the command's effect and its
//! reply commit together. A handler that returns a [`HandlerError`] instead replies nothing:
//! the consumer retries the command, then dead-letters it (a poison command), and the saga's
//! deadline takes over.
//!
//! The helper also keeps, per saga step, a marker in the participant's database, so that the
//! two orders in which a step's command and its compensation can arrive are both safe:
//! - a command sent again (a retried pivot or retriable step, a redelivered dead letter) after
//!   it succeeded replies the recorded success without running again;
//! - a compensation for a step that never succeeded here (it failed, or was dead-lettered, or
//!   has not arrived yet) replies success without running: there is nothing to undo;
//! - a command that arrives after its compensation is refused (replied as failed) without
//!   running, so nothing is left done after the saga undid it.

use std::collections::HashMap;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tributary_core::{BoxFuture, Envelope, HandlerError, Topic, UnitOfWork, UnitOfWorkExt};
use tributary_runtime::Handler;

use crate::message::{Outcome, SagaCommand, reply_envelope};

/// The collection of the participant's per-step markers.
pub const PARTICIPANT_MARKERS: &str = "tributary_saga_participant";

/// A participant's answer to a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Done; the data goes back to the saga (its step's `on_reply`).
    Success(serde_json::Value),
    /// Not done, for a business reason (no credit, no stock): the saga compensates.
    Failure(String),
}

impl Reply {
    /// Success without data.
    pub fn ok() -> Self {
        Reply::Success(serde_json::Value::Null)
    }

    /// Success with `data`.
    ///
    /// # Errors
    /// [`HandlerError::Reject`] when `data` does not serialize.
    pub fn success<T: Serialize>(data: &T) -> Result<Self, HandlerError> {
        serde_json::to_value(data)
            .map(Reply::Success)
            .map_err(|e| HandlerError::reject(format!("the reply does not serialize: {e}")))
    }

    pub fn failure(reason: impl Into<String>) -> Self {
        Reply::Failure(reason.into())
    }
}

type Route = Box<
    dyn for<'a> Fn(
            &'a SagaCommand,
            &'a mut dyn UnitOfWork,
        ) -> BoxFuture<'a, Result<Reply, HandlerError>>
        + Send
        + Sync,
>;

#[derive(Default, Serialize, Deserialize)]
struct Marker {
    /// Whether the step succeeded here. A flag of its own: the success data may be JSON null.
    succeeded: bool,
    /// The success reply's data.
    #[serde(default)]
    data: serde_json::Value,
    compensated: bool,
}

/// A consumer handler for saga commands, routing by command type (see the module doc).
///
/// ```
/// use serde::Deserialize;
/// use tributary_core::UnitOfWorkExt;
/// use tributary_saga::{Participant, Reply};
///
/// #[derive(Deserialize)]
/// struct ReserveStock { sku: String, qty: i64 }
///
/// let inventory = Participant::new("inventory")
///     .on("ReserveStock", |c: ReserveStock, _cmd, unit| Box::pin(async move {
///         let stock: i64 = unit.get_as("stock", &c.sku).await?.unwrap_or(0);
///         if stock < c.qty {
///             return Ok(Reply::failure("out of stock"));
///         }
///         unit.put_as("stock", &c.sku, &(stock - c.qty)).await?;
///         Ok(Reply::ok())
///     }))
///     .on_compensation("ReleaseStock", |c: ReserveStock, _cmd, unit| Box::pin(async move {
///         let stock: i64 = unit.get_as("stock", &c.sku).await?.unwrap_or(0);
///         unit.put_as("stock", &c.sku, &(stock + c.qty)).await?;
///         Ok(Reply::ok())
///     }));
/// ```
pub struct Participant {
    source: String,
    forward: HashMap<String, Route>,
    compensations: HashMap<String, Route>,
}

impl Participant {
    /// A participant whose replies have `source` as their source.
    pub fn new(source: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            forward: HashMap::new(),
            compensations: HashMap::new(),
        }
    }

    /// Handles the command `command_type` with `f`, its payload decoded as `C`. A payload that
    /// does not decode is rejected (dead-lettered).
    pub fn on<C, F>(mut self, command_type: &str, f: F) -> Self
    where
        C: DeserializeOwned + Send + 'static,
        F: for<'a> Fn(
                C,
                &'a SagaCommand,
                &'a mut dyn UnitOfWork,
            ) -> BoxFuture<'a, Result<Reply, HandlerError>>
            + Send
            + Sync
            + 'static,
    {
        self.forward
            .insert(command_type.to_owned(), route(command_type, f));
        self
    }

    /// Handles the compensation command `command_type` with `f`.
    pub fn on_compensation<C, F>(mut self, command_type: &str, f: F) -> Self
    where
        C: DeserializeOwned + Send + 'static,
        F: for<'a> Fn(
                C,
                &'a SagaCommand,
                &'a mut dyn UnitOfWork,
            ) -> BoxFuture<'a, Result<Reply, HandlerError>>
            + Send
            + Sync
            + 'static,
    {
        self.compensations
            .insert(command_type.to_owned(), route(command_type, f));
        self
    }
}

fn route<C, F>(command_type: &str, f: F) -> Route
where
    C: DeserializeOwned + Send + 'static,
    F: for<'a> Fn(
            C,
            &'a SagaCommand,
            &'a mut dyn UnitOfWork,
        ) -> BoxFuture<'a, Result<Reply, HandlerError>>
        + Send
        + Sync
        + 'static,
{
    let name = command_type.to_owned();
    Box::new(move |command, unit| match command.payload.decode::<C>() {
        Ok(c) => f(c, command, unit),
        Err(e) => {
            let rejected = HandlerError::reject(format!("cannot decode the command {name}: {e}"));
            Box::pin(async move { Err(rejected) })
        }
    })
}

#[async_trait]
impl Handler for Participant {
    async fn handle(
        &self,
        event: &Envelope,
        unit: &mut dyn UnitOfWork,
    ) -> Result<(), HandlerError> {
        let command = SagaCommand::from_envelope(event)
            .map_err(|e| HandlerError::reject(format!("not a saga command: {e}")))?;
        let header = &command.header;
        let routes = if header.compensation {
            &self.compensations
        } else {
            &self.forward
        };
        let Some(route) = routes.get(&command.command_type) else {
            return Err(HandlerError::reject(format!(
                "unknown saga command {:?}{}",
                command.command_type,
                if header.compensation {
                    " (compensation)"
                } else {
                    ""
                }
            )));
        };
        let marker_id = format!("{}:{}:{}", header.saga_type, header.saga_id, header.step);
        let mut marker: Marker = unit
            .get_as(PARTICIPANT_MARKERS, &marker_id)
            .await?
            .unwrap_or_default();
        let (outcome, reason, data) = match (header.compensation, &marker) {
            (
                false,
                Marker {
                    compensated: true, ..
                },
            ) => (
                Outcome::Failed,
                Some("the step was compensated before its command arrived".to_owned()),
                serde_json::Value::Null,
            ),
            (
                false,
                Marker {
                    succeeded: true,
                    data,
                    ..
                },
            ) => (Outcome::Succeeded, None, data.clone()),
            (
                true,
                Marker {
                    compensated: true, ..
                },
            )
            | (
                true,
                Marker {
                    succeeded: false, ..
                },
            ) => {
                if !marker.compensated {
                    marker.compensated = true;
                    unit.put_as(PARTICIPANT_MARKERS, &marker_id, &marker)
                        .await?;
                }
                (Outcome::Succeeded, None, serde_json::Value::Null)
            }
            (compensation, _) => match route(&command, unit).await? {
                Reply::Success(data) => {
                    if compensation {
                        marker.compensated = true;
                    } else {
                        marker.succeeded = true;
                        marker.data = data.clone();
                    }
                    unit.put_as(PARTICIPANT_MARKERS, &marker_id, &marker)
                        .await?;
                    (Outcome::Succeeded, None, data)
                }
                Reply::Failure(reason) => (Outcome::Failed, Some(reason), serde_json::Value::Null),
            },
        };
        let reply = reply_envelope(&self.source, event, header, outcome, reason, data)?;
        let topic: &Topic = &header.reply_to;
        unit.publish(topic, reply).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tributary_core::{Database, InMemoryDatabase};

    use super::*;
    use crate::definition::Command;
    use crate::instance::SagaId;
    use crate::message::{SagaCommandHeader, command_envelope};

    fn bump(unit: &mut dyn UnitOfWork, delta: i64) -> BoxFuture<'_, Result<Reply, HandlerError>> {
        Box::pin(async move {
            let n: i64 = unit.get_as("count", "n").await?.unwrap_or(0);
            unit.put_as("count", "n", &(n + delta)).await?;
            Ok(Reply::ok())
        })
    }

    fn add<'a>(
        _: serde_json::Value,
        _: &'a SagaCommand,
        unit: &'a mut dyn UnitOfWork,
    ) -> BoxFuture<'a, Result<Reply, HandlerError>> {
        bump(unit, 1)
    }

    fn undo<'a>(
        _: serde_json::Value,
        _: &'a SagaCommand,
        unit: &'a mut dyn UnitOfWork,
    ) -> BoxFuture<'a, Result<Reply, HandlerError>> {
        bump(unit, -1)
    }

    fn counter() -> Participant {
        Participant::new("p")
            .on("Add", add)
            .on_compensation("Undo", undo)
    }

    fn command(compensation: bool) -> Envelope {
        let header = SagaCommandHeader {
            saga_type: "T".into(),
            saga_id: SagaId::generate(),
            step: 0,
            step_name: "add".into(),
            compensation,
            attempt: 1,
            reply_to: Topic::new("T-replies").unwrap(),
        };
        let kind = if compensation { "Undo" } else { "Add" };
        command_envelope("o", header, &Command::new(kind, &1).unwrap(), None).unwrap()
    }

    async fn handle(db: &Arc<dyn Database>, p: &Arc<Participant>, e: &Envelope) -> i64 {
        let (p, e) = (p.clone(), e.clone());
        db.transact(move |unit| {
            Box::pin(async move {
                p.handle(&e, unit)
                    .await
                    .map_err(|e| tributary_core::Error::invalid(e.to_string()))
            })
        })
        .await
        .unwrap();
        db.get_document_as("count", "n").await.unwrap().unwrap_or(0)
    }

    #[tokio::test]
    async fn a_command_sent_again_after_a_success_without_data_is_not_run_again_and_is_still_compensated()
     {
        let db: Arc<dyn Database> = Arc::new(InMemoryDatabase::new());
        let p = Arc::new(counter());
        let forward = command(false);
        assert_eq!(handle(&db, &p, &forward).await, 1);
        // Sent again (a new envelope for the same step): the recorded success is replied.
        let again = forward.clone().with_id(tributary_core::EventId::new());
        assert_eq!(handle(&db, &p, &again).await, 1);
        let mut undo = command(true);
        undo.data = {
            let mut body = undo.data.to_value();
            body["saga"]["saga_id"] = forward.data.to_value()["saga"]["saga_id"].clone();
            tributary_core::Payload::from_value(&body).unwrap()
        };
        assert_eq!(
            handle(&db, &p, &undo).await,
            0,
            "the success (null data) is compensated"
        );
        assert_eq!(handle(&db, &p, &undo).await, 0, "a compensation runs once");
        // The command arriving after its compensation is refused, not run.
        let late = forward.clone().with_id(tributary_core::EventId::new());
        assert_eq!(handle(&db, &p, &late).await, 0);
    }
}
