//! Projections from the event store into documents (views), with the checkpoint stored in the
//! same transaction as the view.
//!
//! Delivery guarantee: exactly-once effects. Each batch of events and the checkpoint after it
//! commit together, so a crash never applies an event twice or skips one. A rebuild clears the
//! view and resets the checkpoint in one transaction; a running projector notices the reset
//! and starts over from the beginning while new events keep arriving.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;
use tributary_core::{
    ConsumerTx, Database, Error, Position, RecordedEvent, Result, UnitOfWork, Upcasters,
};

use crate::backoff::Backoff;
use crate::handler::{Handler, HandlerError};
use crate::health::{Health, HealthState};

/// Settings of a [`Projector`].
#[derive(Clone, Debug)]
pub struct ProjectorConfig {
    /// Most events applied in one transaction.
    pub batch_size: usize,
    pub backoff: Backoff,
    pub upcasters: Upcasters,
    /// How often an idle projector checks whether its checkpoint was reset by a rebuild.
    pub idle_check: std::time::Duration,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        Self {
            batch_size: 500,
            backoff: Backoff::default(),
            upcasters: Upcasters::new(),
            idle_check: std::time::Duration::from_millis(500),
        }
    }
}

/// Keeps a view current from a database's event store.
pub struct Projector {
    name: String,
    db: Arc<dyn Database>,
    handler: Arc<dyn Handler>,
    config: ProjectorConfig,
    health: Health,
}

enum BatchResult {
    Applied(Position),
    /// The stored checkpoint is not where this projector left it: a rebuild reset it.
    Reset,
    Failed(HandlerError),
}

impl Projector {
    pub fn new(
        name: impl Into<String>,
        db: Arc<dyn Database>,
        handler: Arc<dyn Handler>,
        config: ProjectorConfig,
    ) -> Self {
        let name = name.into();
        Self {
            health: Health::new(format!("projector {name}")),
            name,
            db,
            handler,
            config,
        }
    }

    pub fn health(&self) -> Health {
        self.health.clone()
    }

    fn checkpoint_name(&self) -> String {
        format!("projector:{}", self.name)
    }

    /// Clears `collections` and resets the checkpoint in one transaction. A running projector
    /// replays everything into the empty view; queries see it fill up again.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn rebuild(&self, collections: &[&str]) -> Result<()> {
        let name = self.checkpoint_name();
        let collections: Vec<String> = collections.iter().map(|c| (*c).to_owned()).collect();
        self.db
            .transact_consumer(move |tx| {
                for c in &collections {
                    tx.clear_collection(c)?;
                }
                tx.set_checkpoint(&name, Position::START)
            })
            .await
    }

    /// Runs until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let name = self.checkpoint_name();
        let mut failures = 0;
        'subscription: loop {
            let n = name.clone();
            let start = match self.db.transact_consumer(move |tx| tx.checkpoint(&n)).await {
                Ok(c) => c,
                Err(e) => {
                    failures += 1;
                    self.degraded("reading the checkpoint", &e.to_string());
                    if !nap(self.config.backoff.delay(failures), &shutdown).await {
                        break;
                    }
                    continue;
                }
            };
            let mut expected = start;
            let mut events = self
                .db
                .event_store()
                .subscribe_all(start.unwrap_or(Position::START).next());
            self.health.set(HealthState::Running);
            loop {
                let first = tokio::select! {
                    e = events.next() => e,
                    _ = tokio::time::sleep(self.config.idle_check) => {
                        // Idle: a rebuild only shows in the checkpoint, so look at it.
                        match self.db.checkpoint(&name).await {
                            Ok(stored) if stored != expected => {
                                tracing::info!(projector = %self.name, "checkpoint was reset; rebuilding");
                                continue 'subscription;
                            }
                            _ => continue,
                        }
                    }
                    _ = shutdown.cancelled() => break 'subscription,
                };
                let mut batch = match first {
                    Some(Ok(e)) => vec![e],
                    Some(Err(e)) => {
                        failures += 1;
                        self.degraded("reading events", &e.to_string());
                        if !nap(self.config.backoff.delay(failures), &shutdown).await {
                            break 'subscription;
                        }
                        continue 'subscription;
                    }
                    None => continue 'subscription,
                };
                // Take whatever else is ready, without waiting.
                while batch.len() < self.config.batch_size {
                    match events.next().now_or_never() {
                        Some(Some(Ok(e))) => batch.push(e),
                        _ => break,
                    }
                }
                loop {
                    match self.apply(&name, expected, batch.clone()).await {
                        Ok(BatchResult::Applied(last)) => {
                            expected = Some(last);
                            failures = 0;
                            self.health.set(HealthState::Running);
                            break;
                        }
                        Ok(BatchResult::Reset) => {
                            tracing::info!(projector = %self.name, "checkpoint was reset; rebuilding");
                            continue 'subscription;
                        }
                        Ok(BatchResult::Failed(e)) => {
                            failures += 1;
                            self.degraded("applying an event", &e.message);
                        }
                        Err(e) => {
                            failures += 1;
                            self.degraded("writing the view", &e.to_string());
                        }
                    }
                    if !nap(self.config.backoff.delay(failures), &shutdown).await {
                        break 'subscription;
                    }
                }
            }
        }
        self.health.set(HealthState::Stopped);
    }

    async fn apply(
        &self,
        name: &str,
        expected: Option<Position>,
        batch: Vec<RecordedEvent>,
    ) -> Result<BatchResult> {
        let (name, handler, upcasters) = (
            name.to_owned(),
            self.handler.clone(),
            self.config.upcasters.clone(),
        );
        self.db
            .transact_consumer(move |tx| {
                if tx.checkpoint(&name)? != expected {
                    return Ok(BatchResult::Reset);
                }
                let mut last = expected.unwrap_or(Position::START);
                for recorded in batch {
                    let position = recorded.position;
                    let envelope = upcasters.upcast(recorded.envelope)?;
                    if let Err(e) = apply_one(tx, handler.as_ref(), &envelope) {
                        // Roll the whole batch back by failing the unit; report the cause.
                        return Err(Error::invalid(format!(
                            "event at position {position} ({}): {}",
                            envelope.event_type, e.message
                        )));
                    }
                    last = position;
                }
                tx.set_checkpoint(&name, last)?;
                Ok(BatchResult::Applied(last))
            })
            .await
            .or_else(|e| match e {
                Error::InvalidInput { reason } => {
                    Ok(BatchResult::Failed(HandlerError::reject(reason)))
                }
                other => Err(other),
            })
    }

    fn degraded(&self, what: &str, reason: &str) {
        tracing::warn!(projector = %self.name, reason, "projector failed {what}; retrying");
        self.health
            .set(HealthState::Degraded(format!("{what}: {reason}")));
    }
}

fn apply_one(
    tx: &mut dyn ConsumerTx,
    handler: &dyn Handler,
    envelope: &tributary_core::Envelope,
) -> Result<(), HandlerError> {
    let unit: &mut dyn UnitOfWork = tx;
    match catch_unwind(AssertUnwindSafe(|| handler.handle(envelope, unit))) {
        Ok(result) => result,
        Err(panic) => Err(HandlerError::reject(
            Error::panicked("projection handler", panic.as_ref()).to_string(),
        )),
    }
}

async fn nap(d: std::time::Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = shutdown.cancelled() => false,
    }
}
