//! Durable deadlines: documents in the orchestrator's database, one per wait that can end by
//! itself (a step's reply deadline, the time to try a step again), set in the unit that
//! starts the wait and deleted in the unit that ends it.
//!
//! A deadline's document id starts with its due time in zero-padded milliseconds, so listing
//! the collection in id order lists deadlines in due order. Firing one is a unit of its own
//! that first deletes the document: a deadline whose document is gone (the reply came first
//! and its unit deleted it) or whose saga no longer waits for it is acknowledged and ignored,
//! never acted on. That is what makes the race between a late timer and a finished saga
//! harmless, on every backend, in any number of processes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tributary_core::{EventId, Result, UnitOfWork, UnitOfWorkExt};

use crate::instance::{AwaitKind, SagaId};

/// The collection of `saga_type`'s deadlines.
pub fn deadlines_collection(saga_type: &str) -> String {
    format!("tributary_saga_deadlines_{saga_type}")
}

/// One stored deadline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deadline {
    /// The document id (due time, then the message id).
    pub key: String,
    pub saga_id: SagaId,
    /// The command (or retry timer) the saga waits on.
    pub message_id: EventId,
    pub due: DateTime<Utc>,
    pub what: AwaitKind,
}

/// What firing a deadline did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeadlineOutcome {
    /// The saga still waited for it: it moved on (compensates, or tries again).
    Fired,
    /// It was already cancelled, or the saga no longer waits for it (a step or the saga
    /// finished first): acknowledged, nothing else done.
    Ignored,
}

pub(crate) fn key(due: DateTime<Utc>, message_id: &EventId) -> String {
    format!("{:020}:{message_id}", due.timestamp_millis().max(0))
}

pub(crate) async fn schedule(
    unit: &mut dyn UnitOfWork,
    saga_type: &str,
    deadline: &Deadline,
) -> Result<()> {
    unit.put_as(&deadlines_collection(saga_type), &deadline.key, deadline)
        .await
}

pub(crate) async fn cancel(unit: &mut dyn UnitOfWork, saga_type: &str, key: &str) -> Result<bool> {
    unit.delete(&deadlines_collection(saga_type), key).await
}

/// Wall-clock time measured on tokio's clock from when the orchestrator started: the real time
/// in production, and virtual time in tests that pause tokio's clock, so deadline tests run
/// deterministically without waiting.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    wall: DateTime<Utc>,
    start: tokio::time::Instant,
}

impl Clock {
    pub fn new() -> Self {
        Self {
            wall: Utc::now(),
            start: tokio::time::Instant::now(),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.start);
        self.wall + chrono::Duration::from_std(elapsed).unwrap_or(chrono::Duration::MAX)
    }

    /// How long from now until `at` (zero if it passed).
    pub fn until(&self, at: DateTime<Utc>) -> std::time::Duration {
        (at - self.now()).to_std().unwrap_or_default()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
