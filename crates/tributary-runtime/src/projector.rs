//! Projections from the event store into documents (views), with the checkpoint stored in the
//! same transaction as the view.
//!
//! Delivery guarantee: exactly-once effects. Each batch of events and the checkpoint after it
//! commit together, so a crash never applies an event twice or skips one. A rebuild clears the
//! view and resets the checkpoint in one transaction; a running projector notices the reset
//! and starts over from the beginning while new events keep arriving.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use std::any::Any;
use tokio_util::sync::CancellationToken;

use tributary_core::backend::{ConsumerTx, Work, WorkError, WorkOrigin};
use tributary_core::{
    Database, Envelope, Error, HandlerError, Position, RecordedEvent, Result, UnitOfWork, Upcasters,
};

use crate::backoff::Backoff;
use crate::handler::Handler;
use crate::health::{Health, HealthState};
use crate::retry::{Retry, Stop};

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
    origin: WorkOrigin,
}

enum BatchResult {
    Applied(Position),
    /// The stored checkpoint is not where this projector left it: a rebuild reset it.
    Reset,
    /// An event the handler failed on (the batch was rolled back).
    Failed(String),
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
            origin: WorkOrigin::Task(format!("projector {name}").into()),
            name,
            db,
            handler,
            config,
        }
    }

    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// The view this projector keeps, for readers that must see their own writes: it has
    /// applied an event once its checkpoint is at or past the event's position.
    pub fn view(&self) -> crate::View {
        crate::View::of_projection(self.db.clone(), self.checkpoint_name())
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
            .transact_consumer(self.origin.clone(), move |tx| {
                Box::pin(async move {
                    // The checkpoint first, as the projector's own units take it (a locking
                    // read on PostgreSQL) before they touch the view: clearing the view first
                    // could deadlock with a unit that holds the checkpoint and wants a row.
                    tx.checkpoint(&name).await?;
                    for c in &collections {
                        tx.clear_collection(c).await?;
                    }
                    tx.set_checkpoint(&name, Position::START).await
                })
            })
            .await
    }

    /// Runs until `shutdown` is cancelled. An event the handler fails on is retried with
    /// backoff (the view stops there and health says why) until it succeeds.
    ///
    /// # Errors
    /// A failure of the event store or the view's database retrying cannot fix.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let retry = Retry::new(self.config.backoff, shutdown, self.health.clone());
        let stopped = self.follow(&retry).await;
        retry.finish(stopped)
    }

    /// Applies the event store to the view, from the checkpoint, again after every reset.
    async fn follow(&self, retry: &Retry) -> Result<(), Stop> {
        let name = self.checkpoint_name();
        loop {
            let start = retry
                .until_ok("reading the checkpoint", || {
                    let n = name.clone();
                    self.db.transact_consumer(self.origin.clone(), move |tx| {
                        Box::pin(async move { tx.checkpoint(&n).await })
                    })
                })
                .await?;
            self.subscription(&name, start, retry).await?;
        }
    }

    /// Applies events from after `start` until the checkpoint is found reset (`Ok`) or the
    /// projector stops (`Err`).
    async fn subscription(
        &self,
        name: &str,
        start: Option<Position>,
        retry: &Retry,
    ) -> Result<(), Stop> {
        let mut expected = start;
        let mut events = self
            .db
            .event_store()
            .subscribe_all(start.unwrap_or(Position::START).next());
        self.health.set(HealthState::Running);
        let mut failures = 0;
        loop {
            let first = tokio::select! {
                e = events.next() => e,
                _ = tokio::time::sleep(self.config.idle_check) => {
                    // Idle: a rebuild only shows in the checkpoint, so look at it.
                    match self.db.checkpoint(name).await {
                        Ok(stored) if stored != expected => {
                            tracing::info!(projector = %self.name, "checkpoint was reset; rebuilding");
                            return Ok(());
                        }
                        _ => continue,
                    }
                }
                _ = retry.shutdown.cancelled() => return Err(Stop::Shutdown),
            };
            let mut batch = match first {
                Some(Ok(e)) => vec![e],
                Some(Err(e)) if !e.is_retryable() => return Err(Stop::Fatal(e)),
                Some(Err(e)) => {
                    failures += 1;
                    retry.degraded("reading events", &e);
                    retry.nap(self.config.backoff.delay(failures)).await?;
                    return Ok(());
                }
                None => return Ok(()),
            };
            // Take whatever else is ready, without waiting.
            while batch.len() < self.config.batch_size {
                match events.next().now_or_never() {
                    Some(Some(Ok(e))) => batch.push(e),
                    _ => break,
                }
            }
            loop {
                let applied = retry
                    .until_ok("writing the view", || {
                        self.apply(name, expected, batch.clone())
                    })
                    .await?;
                match applied {
                    BatchResult::Applied(last) => {
                        expected = Some(last);
                        failures = 0;
                        self.health.set(HealthState::Running);
                        break;
                    }
                    BatchResult::Reset => {
                        tracing::info!(projector = %self.name, "checkpoint was reset; rebuilding");
                        return Ok(());
                    }
                    BatchResult::Failed(reason) => {
                        failures += 1;
                        retry.degraded("applying an event", &reason);
                        retry.nap(self.config.backoff.delay(failures)).await?;
                    }
                }
            }
        }
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
        let work = Work::new(self.origin.clone(), move |tx: &mut dyn ConsumerTx| {
            Box::pin(async move {
                if tx.checkpoint(&name).await? != expected {
                    return Ok(Box::new(BatchResult::Reset) as Box<dyn Any + Send>);
                }
                let mut last = expected.unwrap_or(Position::START);
                for recorded in batch {
                    let position = recorded.position;
                    let envelope = upcasters.upcast(recorded.envelope)?;
                    if let Err(e) = apply_one(tx, handler.as_ref(), &envelope).await {
                        // Roll the whole batch back by failing the unit; report the cause.
                        let failed = BatchResult::Failed(format!(
                            "event at position {position} ({}): {}",
                            envelope.event_type,
                            e.message()
                        ));
                        return Err(WorkError::Aborted(Box::new(failed)));
                    }
                    last = position;
                }
                tx.set_checkpoint(&name, last).await?;
                Ok(Box::new(BatchResult::Applied(last)) as Box<dyn Any + Send>)
            })
        });
        match self.db.execute(work).await {
            Ok(done) | Err(WorkError::Aborted(done)) => done
                .downcast::<BatchResult>()
                .map(|b| *b)
                .map_err(|_| Error::storage_msg("a projector unit returned something else")),
            Err(WorkError::Failed(e)) => Err(e),
        }
    }
}

async fn apply_one(
    tx: &mut dyn ConsumerTx,
    handler: &dyn Handler,
    envelope: &Envelope,
) -> Result<(), HandlerError> {
    let unit: &mut dyn UnitOfWork = tx;
    match AssertUnwindSafe(handler.handle(envelope, unit))
        .catch_unwind()
        .await
    {
        Ok(result) => result,
        Err(panic) => Err(HandlerError::reject(
            Error::panicked("projection handler", panic.as_ref()).to_string(),
        )),
    }
}
