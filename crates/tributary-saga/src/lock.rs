//! Semantic locks: the countermeasure of the saga literature against the isolation a saga
//! lacks. Until a saga ends, what its compensatable steps changed may still be undone, so
//! another saga (or the service's own request) that reads or changes the same record may act
//! on a state that never becomes final. A participant's step marks the record it changed as
//! *held* by its saga, in the same unit as the change; a command of another saga on that record
//! is refused at once (its saga compensates); the step's compensation, or a later step of the
//! same saga, releases the record, again in the unit that answers the command.
//!
//! Refusing, not waiting, is deliberate: a command that waited inside a consumer would hold its
//! partition, and the very command that releases the record may be queued behind it. A saga
//! that should not give up on a held record retries from its own side (a retriable step, or
//! the caller starting a new saga).
//!
//! Take the hold last, after every check that may refuse the command and right before the
//! change: a participant's failure reply still commits its unit, and a hold committed with a
//! refused step has no compensation to release it. Release only in the step's compensation or
//! in a step at or after the pivot: a later compensatable step of the same saga may still be
//! undone.
//!
//! A saga that ends in `CompensationFailed` keeps what it holds: the record stays refused until
//! an operator's retry of the compensation releases it, visible through [`holder`].
//!
//! ```
//! use tributary_core::UnitOfWorkExt;
//! use tributary_saga::{Participant, Reply, lock::{self, Hold}};
//!
//! # #[derive(serde::Deserialize)] struct Seat { id: String }
//! let venue = Participant::new("venue")
//!     .on("ReserveSeat", |s: Seat, command, unit| Box::pin(async move {
//!         if let Hold::Refused(reply) = lock::hold(unit, &format!("seat:{}", s.id), command).await? {
//!             return Ok(reply);
//!         }
//!         unit.put_as("seats", &s.id, &"reserved").await?;
//!         Ok(Reply::ok())
//!     }))
//!     .on_compensation("ReleaseSeat", |s: Seat, command, unit| Box::pin(async move {
//!         unit.delete("seats", &s.id).await?;
//!         lock::release(unit, &format!("seat:{}", s.id), command).await?;
//!         Ok(Reply::ok())
//!     }));
//! ```

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tributary_core::{HandlerError, UnitOfWork, UnitOfWorkExt};

use crate::instance::SagaId;
use crate::message::SagaCommand;
use crate::participant::Reply;

/// The participant's collection of held records (id = the record's name).
pub const SEMANTIC_LOCKS: &str = "tributary_saga_locks";

/// The saga that holds a record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    pub saga_type: String,
    pub saga_id: SagaId,
    /// The step that took the record.
    pub step: usize,
    pub since: DateTime<Utc>,
}

impl LockHolder {
    fn is(&self, command: &SagaCommand) -> bool {
        self.saga_type == command.header.saga_type && self.saga_id == command.header.saga_id
    }
}

/// What [`hold`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hold {
    /// The record is held by the command's saga (now, or already).
    Acquired,
    /// Another saga holds it: reply this (a failure naming the holder) without changing it.
    Refused(Reply),
}

/// Holds `record` for the saga of `command`, in the command's unit. A saga holding it already
/// holds it still (a command sent again takes the same lock); another saga's hold refuses,
/// and a refusal writes nothing.
///
/// # Errors
/// Storage errors, as a retryable [`HandlerError`].
pub async fn hold(
    unit: &mut dyn UnitOfWork,
    record: &str,
    command: &SagaCommand,
) -> Result<Hold, HandlerError> {
    match holder(unit, record).await? {
        Some(h) if h.is(command) => Ok(Hold::Acquired),
        Some(h) => Ok(Hold::Refused(Reply::failure(format!(
            "{record} is held by saga {} {} (step {}, since {})",
            h.saga_type,
            h.saga_id,
            h.step,
            h.since.to_rfc3339()
        )))),
        None => {
            let held = LockHolder {
                saga_type: command.header.saga_type.clone(),
                saga_id: command.header.saga_id.clone(),
                step: command.header.step,
                since: Utc::now(),
            };
            unit.put_as(SEMANTIC_LOCKS, record, &held).await?;
            Ok(Hold::Acquired)
        }
    }
}

/// Releases `record` if the saga of `command` holds it; returns whether it did. Releasing a
/// record the saga does not hold (it never took it, or another saga holds it) changes nothing,
/// so a compensation may release unconditionally.
///
/// # Errors
/// Storage errors, as a retryable [`HandlerError`].
pub async fn release(
    unit: &mut dyn UnitOfWork,
    record: &str,
    command: &SagaCommand,
) -> Result<bool, HandlerError> {
    match holder(unit, record).await? {
        Some(h) if h.is(command) => {
            unit.delete(SEMANTIC_LOCKS, record).await?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// The saga holding `record`, if any: what a request of the service itself (not a saga's
/// command) checks before it changes the record.
///
/// # Errors
/// Storage errors, as a retryable [`HandlerError`].
pub async fn holder(
    unit: &mut dyn UnitOfWork,
    record: &str,
) -> Result<Option<LockHolder>, HandlerError> {
    Ok(unit.get_as(SEMANTIC_LOCKS, record).await?)
}
