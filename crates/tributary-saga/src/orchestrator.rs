//! The orchestrator of one saga type: starts sagas, advances them on replies (a consumer
//! group with an inbox on the saga type's reply topic) and on deadlines (a runner over the
//! durable deadline documents), all in units of work of the orchestrator's own database.
//!
//! Delivery guarantee: commands are published through the outbox, at least once; replies are
//! consumed with the inbox, so a redelivered reply is acknowledged without effect, and a reply
//! for a command the saga no longer waits for (late, or sent twice by a participant) is
//! recorded in the history and ignored. The outbox relay that publishes the commands is the
//! service's own (`Relay::new(db.outbox_source(), …)`), as for any other event it publishes.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use tributary_core::{
    Broker, Database, Envelope, Error, HandlerError, Result, UnitOfWork, UnitOfWorkExt,
};
use tributary_runtime::{Backoff, Consumer, ConsumerConfig, Handler, Health};

use crate::admin::SagaAdmin;
use crate::deadlines::{Clock, Deadline, DeadlineOutcome, deadlines_collection};
use crate::definition::{SagaData, SagaDefinition};
use crate::engine::Engine;
use crate::instance::{SAGAS, SagaId, SagaInstance, SagaState};
use crate::message::Reply;
use crate::requests::{self, RequestState, SAGA_REQUESTS, SagaAction, SagaRequest};

/// The gauge of sagas per (type, state): alert on `state="compensation_failed"` above 0.
pub const SAGAS_GAUGE: &str = "tributary_sagas";

/// Settings of an [`Orchestrator`].
#[derive(Clone, Debug)]
pub struct OrchestratorConfig {
    /// The `source` of the commands it sends.
    pub service: String,
    /// How long a step waits for its reply unless the step sets its own deadline. `None`:
    /// forever (a lost participant then shows only as a saga stuck in `running`).
    pub step_deadline: Option<Duration>,
    /// Attempts of one compensation before the saga ends in `CompensationFailed`.
    pub compensation_attempts: u32,
    /// Delays between attempts of retriable steps and of failed compensations.
    pub retry_backoff: Backoff,
    /// The reply consumer's settings.
    pub consumer: ConsumerConfig,
    /// How often the deadline runner looks for deadlines set by other processes (it also
    /// sleeps until the earliest deadline it knows). Deadlines fire at most this late.
    pub deadline_poll: Duration,
    /// How often the deadline runner sets the per-state saga gauges (see
    /// [`Orchestrator::record_counts`]).
    pub metrics_every: Duration,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        Self {
            service: "saga-orchestrator".into(),
            step_deadline: Some(Duration::from_secs(30)),
            compensation_attempts: 5,
            retry_backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(30)),
            consumer: ConsumerConfig::default(),
            deadline_poll: Duration::from_millis(200),
            metrics_every: Duration::from_secs(15),
        }
    }
}

impl OrchestratorConfig {
    pub fn with_service(mut self, service: impl Into<String>) -> Self {
        self.service = service.into();
        self
    }
    pub fn with_step_deadline(mut self, deadline: Option<Duration>) -> Self {
        self.step_deadline = deadline;
        self
    }
    pub fn with_compensation_attempts(mut self, n: u32) -> Self {
        self.compensation_attempts = n.max(1);
        self
    }
    pub fn with_retry_backoff(mut self, backoff: Backoff) -> Self {
        self.retry_backoff = backoff;
        self
    }
    pub fn with_consumer(mut self, consumer: ConsumerConfig) -> Self {
        self.consumer = consumer;
        self
    }
    pub fn with_deadline_poll(mut self, poll: Duration) -> Self {
        self.deadline_poll = poll;
        self
    }

    pub fn with_metrics_every(mut self, every: Duration) -> Self {
        self.metrics_every = every;
        self
    }
}

/// Whether [`Orchestrator::start_with_id`] started a saga.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Started {
    New,
    /// A saga with that id exists already; nothing was done.
    Exists,
}

/// Runs the sagas of one [`SagaDefinition`]. Cheap to clone.
pub struct Orchestrator<D> {
    engine: Arc<Engine<D>>,
    db: Arc<dyn Database>,
    broker: Arc<dyn Broker>,
    /// The reply consumer's health, known before `run` starts it.
    health: Health,
}

impl<D> Clone for Orchestrator<D> {
    fn clone(&self) -> Self {
        Self {
            engine: self.engine.clone(),
            db: self.db.clone(),
            broker: self.broker.clone(),
            health: self.health.clone(),
        }
    }
}

impl<D: SagaData> Orchestrator<D> {
    pub fn new(
        definition: SagaDefinition<D>,
        db: Arc<dyn Database>,
        broker: Arc<dyn Broker>,
        config: OrchestratorConfig,
    ) -> Self {
        let health = Health::new(format!("consumer {}", definition.group));
        Self {
            health,
            engine: Arc::new(Engine {
                def: Arc::new(definition),
                config,
                clock: Clock::new(),
            }),
            db,
            broker,
        }
    }

    pub fn definition(&self) -> &SagaDefinition<D> {
        &self.engine.def
    }

    /// The health of the reply consumer `run` runs: starting until it runs, degraded or
    /// failed as the consumer reports (a deployment's `/health` lists it beside its groups).
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Starts a saga with a fresh id, in a unit of its own.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn start(&self, data: D) -> Result<SagaId> {
        let id = SagaId::generate();
        self.start_with_id(id.clone(), data).await?;
        Ok(id)
    }

    /// Starts the saga `id` in a unit of its own, unless it exists.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn start_with_id(&self, id: SagaId, data: D) -> Result<Started> {
        let engine = self.engine.clone();
        self.db
            .transact(move |unit| Box::pin(async move { start_in(&engine, unit, id, data).await }))
            .await
    }

    /// Starts the saga `id` inside the caller's unit (e.g. the unit that creates the order),
    /// so that the saga starts if and only if that unit commits.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn start_in(
        &self,
        unit: &mut dyn UnitOfWork,
        id: SagaId,
        data: D,
    ) -> Result<Started> {
        start_in(&self.engine, unit, id, data).await
    }

    /// The stored instance of saga `id`.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn instance(&self, id: &SagaId) -> Result<Option<SagaInstance>> {
        self.db.get_document_as(SAGAS, id.as_str()).await
    }

    /// The typed data of saga `id`.
    ///
    /// # Errors
    /// Storage errors; [`Error::Decode`] when the stored data is not a `D`.
    pub async fn data(&self, id: &SagaId) -> Result<Option<D>> {
        self.instance(id)
            .await?
            .map(|i| serde_json::from_value(i.data).map_err(|e| Error::decode("saga data", e)))
            .transpose()
    }

    /// The handler of the reply topic, for a consumer the caller runs itself (`run` runs
    /// one).
    pub fn reply_handler(&self) -> Arc<dyn Handler> {
        Arc::new(ReplyHandler {
            engine: self.engine.clone(),
        })
    }

    /// Up to `max` stored deadlines of this saga type, earliest first.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn deadlines(&self, max: usize) -> Result<Vec<Deadline>> {
        let collection = deadlines_collection(&self.engine.def.saga_type);
        self.db
            .list_documents(&collection, None, max)
            .await?
            .into_iter()
            .map(|(_, doc)| doc.decode())
            .collect()
    }

    /// Fires `deadline` now, in a unit of its own: what the deadline runner does when it is
    /// due. A deadline that was cancelled meanwhile, or that the saga no longer waits for, is
    /// ignored.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn fire_deadline(&self, deadline: &Deadline) -> Result<DeadlineOutcome> {
        let engine = self.engine.clone();
        let deadline = deadline.clone();
        self.db
            .transact(move |unit| {
                Box::pin(async move {
                    let collection = deadlines_collection(&engine.def.saga_type);
                    // Deleting first both reads and claims the deadline: in another unit that
                    // fires it at the same time, or the unit that ends its wait, one loses.
                    if unit.get(&collection, &deadline.key).await?.is_none() {
                        return Ok(DeadlineOutcome::Ignored);
                    }
                    unit.delete(&collection, &deadline.key).await?;
                    let Some((mut inst, mut data)) = engine.load(unit, &deadline.saga_id).await?
                    else {
                        return Ok(DeadlineOutcome::Ignored);
                    };
                    let outcome = engine
                        .on_deadline(unit, &mut inst, &mut data, &deadline)
                        .await?;
                    engine.save(unit, &mut inst, &data).await?;
                    Ok::<_, Error>(outcome)
                })
            })
            .await
    }

    /// Cancels saga `id` (an operator's action, recorded in its timeline): its current wait
    /// ends and the steps it completed are compensated in reverse order.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an unknown saga, or one that finished, already compensates
    /// or is at or past its pivot; storage errors.
    pub async fn cancel(&self, id: &SagaId, reason: &str) -> Result<()> {
        let action = SagaAction::Cancel {
            reason: reason.to_owned(),
        };
        self.operate(id, action).await
    }

    /// Runs the current step or compensation of saga `id` again now (an operator's action,
    /// recorded in its timeline), also for a saga that ended in `CompensationFailed`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an unknown saga or one that completed or was compensated;
    /// storage errors.
    pub async fn retry(&self, id: &SagaId) -> Result<()> {
        self.operate(id, SagaAction::Retry).await
    }

    /// An operator's `action` on saga `id`, in a unit of its own.
    async fn operate(&self, id: &SagaId, action: SagaAction) -> Result<()> {
        let (engine, id) = (self.engine.clone(), id.clone());
        self.db
            .transact(move |unit| {
                Box::pin(async move { operate(&engine, unit, &id, &action).await })
            })
            .await
    }

    /// Performs the pending operator requests for sagas of this type (see
    /// [`SagaAdmin::request_cancel`](crate::SagaAdmin::request_cancel)), oldest first, each
    /// in one unit with the saga's new state; returns how many it handled. A request the
    /// saga refuses is recorded as refused.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn perform_requests(&self) -> Result<usize> {
        let pending = requests::pending(&self.db, &self.engine.def.saga_type).await?;
        for request in &pending {
            let (engine, performed) = (self.engine.clone(), request.clone());
            let done = self
                .db
                .transact(move |unit| {
                    Box::pin(async move {
                        // Read again in the unit: a newer request or an earlier run won.
                        let current: Option<SagaRequest> = unit
                            .get_as(SAGA_REQUESTS, performed.saga_id.as_str())
                            .await?;
                        if current.as_ref() != Some(&performed) {
                            return Ok(());
                        }
                        operate(&engine, unit, &performed.saga_id, &performed.action).await?;
                        let at = engine.clock.now();
                        requests::record(unit, &performed, RequestState::Done { at }).await
                    })
                })
                .await;
            match done {
                Ok(()) => {}
                Err(Error::InvalidInput { reason }) => {
                    let (refused, at) = (request.clone(), self.engine.clock.now());
                    self.db
                        .transact(move |unit| {
                            Box::pin(async move {
                                let state = RequestState::Refused { at, reason };
                                requests::record(unit, &refused, state).await
                            })
                        })
                        .await?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(pending.len())
    }

    /// Sets the `tributary_sagas{saga_type, state}` gauges of this saga type to the number of
    /// its sagas in each state, 0 included, so that an alert on `state="compensation_failed"`
    /// clears once an operator resolved the saga. The deadline runner calls it every
    /// [`OrchestratorConfig::metrics_every`]; it reads every saga of the database.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn record_counts(&self) -> Result<()> {
        let counts = SagaAdmin::new(self.db.clone()).counts().await?;
        let saga_type = &self.engine.def.saga_type;
        for state in SagaState::ALL {
            let n = counts
                .get(&(saga_type.clone(), state.as_str()))
                .copied()
                .unwrap_or(0);
            metrics::gauge!(
                SAGAS_GAUGE,
                "saga_type" => saga_type.clone(),
                "state" => state.as_str()
            )
            .set(n as f64);
        }
        // Sagas no definition can read (their type is unknown): an alert of their own.
        let unreadable = counts
            .get(&(String::from("?"), crate::admin::UNREADABLE))
            .copied()
            .unwrap_or(0);
        metrics::gauge!(SAGAS_GAUGE, "saga_type" => "?", "state" => crate::admin::UNREADABLE)
            .set(unreadable as f64);
        Ok(())
    }

    /// Runs the reply consumer and the deadline runner until `shutdown`.
    ///
    /// # Errors
    /// The first error either of them cannot retry.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let def = &self.engine.def;
        let consumer = Consumer::new(
            def.group.clone(),
            vec![def.reply_topic.clone()],
            self.db.clone(),
            self.broker.clone(),
            self.reply_handler(),
            self.engine.config.consumer.clone(),
        )?
        .with_health(self.health.clone());
        let stop = shutdown.child_token();
        let consumer = consumer.run(stop.clone());
        let deadlines = self.run_deadlines(stop.clone());
        tokio::pin!(consumer, deadlines);
        // Whichever ends first (an error, or shutdown) stops the other.
        tokio::select! {
            r = &mut consumer => { stop.cancel(); let other = deadlines.await; r.and(other) }
            r = &mut deadlines => { stop.cancel(); let other = consumer.await; r.and(other) }
        }
    }

    /// Fires due deadlines, earliest first, until `shutdown`.
    async fn run_deadlines(&self, shutdown: CancellationToken) -> Result<()> {
        let poll = self.engine.config.deadline_poll;
        let clock = self.engine.clock;
        let mut failures = 0u32;
        let mut counted: Option<tokio::time::Instant> = None;
        while !shutdown.is_cancelled() {
            if counted.is_none_or(|at| at.elapsed() >= self.engine.config.metrics_every) {
                counted = Some(tokio::time::Instant::now());
                if let Err(e) = self.record_counts().await {
                    tracing::debug!(saga_type = %self.engine.def.saga_type, error = %e, "counting sagas failed");
                }
            }
            let performed = self.perform_requests().await.map(|_| ());
            let wait = match performed.and(self.fire_due().await) {
                Ok(next) => {
                    failures = 0;
                    next.map_or(poll, |due| clock.until(due).min(poll))
                }
                Err(e) if e.is_retryable() => {
                    failures += 1;
                    tracing::warn!(saga_type = %self.engine.def.saga_type, error = %e, "saga deadlines: retrying");
                    self.engine.config.retry_backoff.delay(failures)
                }
                Err(e) => return Err(e),
            };
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        Ok(())
    }

    /// Fires every due deadline; returns when the next one is due.
    async fn fire_due(&self) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        loop {
            let page = self.deadlines(256).await?;
            let now = self.engine.clock.now();
            let mut fired = 0;
            for deadline in &page {
                if deadline.due > now {
                    return Ok(Some(deadline.due));
                }
                self.fire_deadline(deadline).await?;
                fired += 1;
            }
            if fired < 256 {
                return Ok(None);
            }
        }
    }
}

/// Loads saga `id`, applies an operator's `action` and saves it, in `unit`.
async fn operate<D: SagaData>(
    engine: &Engine<D>,
    unit: &mut dyn UnitOfWork,
    id: &SagaId,
    action: &SagaAction,
) -> Result<()> {
    let (mut inst, mut data) = engine
        .load(unit, id)
        .await?
        .ok_or_else(|| Error::invalid(format!("no saga {id}")))?;
    match action {
        SagaAction::Cancel { reason } => engine.cancel(unit, &mut inst, &mut data, reason).await?,
        SagaAction::Retry => engine.retry(unit, &mut inst, &mut data).await?,
    }
    engine.save(unit, &mut inst, &data).await
}

async fn start_in<D: SagaData>(
    engine: &Engine<D>,
    unit: &mut dyn UnitOfWork,
    id: SagaId,
    data: D,
) -> Result<Started> {
    if unit.get(SAGAS, id.as_str()).await?.is_some() {
        return Ok(Started::Exists);
    }
    engine.start(unit, id, data).await?;
    Ok(Started::New)
}

/// Advances sagas on their replies, inside the reply consumer's unit (with the inbox entry).
struct ReplyHandler<D> {
    engine: Arc<Engine<D>>,
}

#[async_trait]
impl<D: SagaData> Handler for ReplyHandler<D> {
    async fn handle(
        &self,
        event: &Envelope,
        unit: &mut dyn UnitOfWork,
    ) -> Result<(), HandlerError> {
        let reply = Reply::from_envelope(event)
            .map_err(|e| HandlerError::reject(format!("not a saga reply: {e}")))?;
        let saga = &reply.body.saga;
        if saga.saga_type != self.engine.def.saga_type {
            return Err(HandlerError::reject(format!(
                "a reply for saga type {} on the reply topic of {}",
                saga.saga_type, self.engine.def.saga_type
            )));
        }
        let Some((mut inst, mut data)) = self.engine.load(unit, &saga.saga_id).await? else {
            return Err(HandlerError::reject(format!(
                "a reply for saga {} which does not exist",
                saga.saga_id
            )));
        };
        self.engine
            .on_reply(unit, &mut inst, &mut data, &reply, &event.id)
            .await?;
        self.engine.save(unit, &mut inst, &data).await?;
        Ok(())
    }
}
