//! One partition of a consumer group: fetch, handle in the service's transaction, commit the
//! offset.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use futures::FutureExt;
use tributary_core::backend::{ConsumerTx, InboxEntry, Work, WorkError};
use tributary_core::{
    DeadLetterId, Delivery, Envelope, Error, EventId, HandlerError, NewDeadLetter, Partition,
    Result, Topic, UnitOfWork,
};

use super::Context;
use crate::health::HealthState;
use crate::metrics::{Outcome, PartitionMetrics};
use crate::retry::{Retry, Stop};

/// Why a message was not handled.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    pub retryable: bool,
    /// Not the message's fault (see [`HandlerError::Transient`]): does not count as an attempt.
    pub transient: bool,
    pub reason: String,
}

impl Failure {
    fn from_handler(e: HandlerError) -> Self {
        Self {
            retryable: e.is_retryable(),
            transient: e.is_transient(),
            reason: e.message().to_owned(),
        }
    }

    fn rejected(reason: String) -> Self {
        Self {
            retryable: false,
            transient: false,
            reason,
        }
    }
}

/// How far a unit got through its deliveries.
struct Progress {
    /// Deliveries dealt with (handled, skipped as duplicates, parked or dead-lettered).
    done: usize,
    /// The failure that stopped the unit at delivery `done`, if any.
    failure: Option<Failure>,
    /// Of the deliveries dealt with: handled, found in the inbox, and dead-lettered (undecodable
    /// or parked) inside the unit. Recorded once the unit commits.
    handled: u64,
    duplicates: u64,
    dead_lettered: u64,
}

impl Progress {
    fn record(&self, metrics: &PartitionMetrics) {
        metrics.count(Outcome::Ok, self.handled);
        metrics.count(Outcome::Duplicate, self.duplicates);
        metrics.count(Outcome::DeadLettered, self.dead_lettered);
    }
}

/// Consumes one partition until shutdown (`Ok`) or a failure retrying cannot fix (`Err`).
pub(crate) async fn run(
    ctx: Arc<Context>,
    topic: Topic,
    partition: Partition,
    retry: Retry,
) -> Result<()> {
    let metrics = PartitionMetrics::new(ctx.group.as_str(), topic.as_str(), partition.get());
    let stop = consume(&ctx, &topic, partition, &retry, &metrics).await;
    match stop {
        Stop::Shutdown => Ok(()),
        Stop::Fatal(e) => Err(e),
    }
}

async fn consume(
    ctx: &Arc<Context>,
    topic: &Topic,
    partition: Partition,
    retry: &Retry,
    metrics: &PartitionMetrics,
) -> Stop {
    let opening = format!("opening {topic}/{partition}");
    let mut consumer = match retry
        .until_ok(&opening, || {
            ctx.broker.consume(&ctx.group, topic, partition)
        })
        .await
    {
        Ok(c) => c,
        Err(stop) => return stop,
    };
    let fetching = format!("fetching {topic}/{partition}");
    let mut failures = 0;
    let mut lag_sampled: Option<tokio::time::Instant> = None;
    loop {
        if lag_sampled.is_none_or(|at| at.elapsed() >= ctx.config.lag_every) {
            lag_sampled = Some(tokio::time::Instant::now());
            // Only a gauge: a failure here is the fetch's to report.
            match consumer.lag().await {
                Ok(Some(lag)) => metrics.lag.set(lag as f64),
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(group = %ctx.group, %topic, %partition, error = %e, "sampling the consumer lag failed")
                }
            }
        }
        let fetched = tokio::select! {
            r = consumer.fetch(ctx.config.batch_size, ctx.config.fetch_wait) => r,
            _ = retry.shutdown.cancelled() => return Stop::Shutdown,
        };
        let deliveries = match fetched {
            Ok(d) => {
                // The broker answers again: an idle group has no batch to handle that would
                // say so, and would stay Degraded until its next message.
                if failures > 0 {
                    ctx.health.set(HealthState::Running);
                }
                failures = 0;
                d
            }
            Err(e) => match retry.after_failure(&fetching, e, &mut failures).await {
                Ok(()) => continue,
                Err(stop) => return stop,
            },
        };
        let Some(last) = deliveries.last().map(|d| d.offset) else {
            continue;
        };
        if let Err(stop) = handle_all(ctx, Arc::new(deliveries), retry, metrics).await {
            return stop;
        }
        let mut commit_failures = 0;
        while let Err(e) = consumer.commit(last).await {
            if let Err(stop) = retry
                .after_failure("committing an offset", e, &mut commit_failures)
                .await
            {
                return stop;
            }
        }
        metrics.last_offset.set(last.get() as f64);
    }
}

/// Deals with every delivery in order: handled, duplicate, parked or dead-lettered. Stops
/// early only on shutdown (the rest will be redelivered) or a failure retrying cannot fix.
async fn handle_all(
    ctx: &Arc<Context>,
    deliveries: Arc<Vec<Delivery>>,
    retry: &Retry,
    metrics: &PartitionMetrics,
) -> Result<(), Stop> {
    let mut next = 0;
    let mut store_failures = 0;
    let per_unit = ctx
        .config
        .messages_per_unit
        .unwrap_or_else(|| ctx.db.messages_per_unit())
        .max(1);
    // Halved when a unit loses a race to another partition's unit, doubled again (up to
    // `per_unit`) after each unit that commits: contention costs retries of small units.
    let mut size = per_unit;
    let mut races = 0;
    // After a unit failed at a message: the end of the unit that redoes the messages before
    // it, and the failure to deal with once they are committed.
    let mut redo_until = None;
    let mut failed_next: Option<Failure> = None;
    // A backend that could not say which message wrote a refused value: run the messages
    // up to here one per unit.
    let mut one_by_one_until = 0;
    while next < deliveries.len() {
        let end = redo_until.take().unwrap_or_else(|| {
            let size = if next < one_by_one_until { 1 } else { size };
            deliveries.len().min(next + size)
        });
        match run_unit(ctx, &deliveries, next, end, metrics).await {
            Ok(
                progress @ Progress {
                    done,
                    failure: None,
                    ..
                },
            ) => {
                progress.record(metrics);
                next += done;
                store_failures = 0;
                races = 0;
                size = (size * 2).min(per_unit);
                if let Some(failure) = failed_next.take() {
                    retry_one(ctx, &deliveries, next, failure, retry, metrics).await?;
                    next += 1;
                }
            }
            Ok(Progress {
                done,
                failure: Some(failure),
                ..
            }) => {
                store_failures = 0;
                if done > 0 {
                    // The unit was rolled back as a whole (no savepoint per message, which
                    // costs round trips): commit the messages before the failing one first.
                    redo_until = Some(next + done);
                    failed_next = Some(failure);
                } else {
                    failed_next = None;
                    retry_one(ctx, &deliveries, next, failure, retry, metrics).await?;
                    next += 1;
                }
            }
            Err(Error::Refused { reason, message }) => {
                // A value a handler wrote was refused when the unit committed (the backend
                // held the write until then): it will be refused again. Nothing of the unit
                // was written. The backend names the message that wrote it.
                store_failures = 0;
                let failure = Failure::rejected(format!(
                    "the database refused what the handler wrote: {reason}"
                ));
                match message {
                    Some(0) => {
                        failed_next = None;
                        retry_one(ctx, &deliveries, next, failure, retry, metrics).await?;
                        next += 1;
                    }
                    Some(i) if next + i < end => {
                        redo_until = Some(next + i);
                        failed_next = Some(failure);
                    }
                    _ if end - next > 1 => one_by_one_until = end,
                    _ => {
                        retry_one(ctx, &deliveries, next, failure, retry, metrics).await?;
                        next += 1;
                    }
                }
            }
            Err(e) if lost_race(&e) => {
                // Another unit changed a document (or a stream) this one read: nothing of it
                // was written. Not a failure of anything: run again, smaller, at once (after
                // a few races in a row, with a short jittered pause).
                races += 1;
                size = ((end - next) / 2).max(1);
                tracing::debug!(group = %ctx.group, races, size, error = %e, "a unit lost a race; running it again");
                if races > 3 {
                    retry.nap(ctx.config.backoff.delay(races - 3)).await?;
                }
            }
            Err(e) => {
                // The transaction itself failed (database busy, disk full): nothing of it was
                // written. Try the same deliveries again; an operator may have to fix the
                // database, and health says why meanwhile.
                redo_until = Some(end);
                store_failures += 1;
                retry.degraded("handling a batch", &e);
                retry.nap(retry.backoff.delay(store_failures)).await?;
            }
        }
    }
    ctx.health.set(HealthState::Running);
    Ok(())
}

/// Whether a unit failed because another unit won a race for a document or a stream.
fn lost_race(e: &Error) -> bool {
    matches!(e, Error::DocumentConflict { .. } | Error::Conflict { .. })
}

/// Retries the delivery at `index`, which just failed for the first time, until it succeeds,
/// its attempts run out, or it fails for good; then dead-letters it.
async fn retry_one(
    ctx: &Arc<Context>,
    deliveries: &Arc<Vec<Delivery>>,
    index: usize,
    mut failure: Failure,
    retry: &Retry,
    metrics: &PartitionMetrics,
) -> Result<(), Stop> {
    let first_failed_at = Utc::now();
    let mut attempts = u32::from(!failure.transient);
    let mut naps = 1;
    loop {
        if !failure.retryable || attempts >= ctx.config.max_attempts {
            let recorded = dead_letter(
                ctx,
                deliveries,
                index,
                failure,
                attempts,
                first_failed_at,
                retry,
            )
            .await?;
            metrics.count(Outcome::DeadLettered, u64::from(recorded));
            return Ok(());
        }
        tracing::debug!(group = %ctx.group, attempts, reason = %failure.reason, "handler failed; retrying");
        if failure.transient {
            ctx.health.set(HealthState::Degraded(format!(
                "handling a message: {}",
                failure.reason
            )));
        }
        retry.nap(ctx.config.backoff.delay(naps)).await?;
        naps += 1;
        metrics.count(Outcome::Retried, 1);
        match run_unit(ctx, deliveries, index, index + 1, metrics).await {
            Ok(progress @ Progress { failure: None, .. }) => {
                progress.record(metrics);
                return Ok(());
            }
            Ok(Progress {
                failure: Some(again),
                ..
            }) => {
                attempts += u32::from(!again.transient);
                failure = again;
            }
            Err(Error::Refused { reason, .. }) => {
                failure = Failure::rejected(format!(
                    "the database refused what the handler wrote: {reason}"
                ));
            }
            // A lost race is nobody's failure; a store failure is not the message's: neither
            // counts as an attempt.
            Err(e) if lost_race(&e) => {}
            Err(e) => retry.degraded("handling a message", &e),
        }
    }
}

async fn dead_letter(
    ctx: &Arc<Context>,
    deliveries: &Arc<Vec<Delivery>>,
    index: usize,
    failure: Failure,
    attempts: u32,
    first_failed_at: chrono::DateTime<Utc>,
    retry: &Retry,
) -> Result<bool, Stop> {
    tracing::warn!(group = %ctx.group, reason = %failure.reason, attempts, "dead-lettering a message");
    retry
        .until_ok("writing a dead letter", || {
            let (c, d) = (ctx.clone(), deliveries.clone());
            let reason = failure.reason.clone();
            ctx.db.transact_consumer(ctx.origin.clone(), move |tx| {
                Box::pin(async move {
                    let delivery = &d[index];
                    let envelope = decode(&c, delivery).ok();
                    record_dead_letter(
                        tx,
                        &c,
                        delivery,
                        envelope.as_ref(),
                        reason,
                        attempts,
                        first_failed_at,
                    )
                    .await
                })
            })
        })
        .await
}

/// Runs deliveries `from..to` in one unit of work. A handler failure stops it and rolls all
/// of it back: the progress then says at which delivery, and nothing was committed.
async fn run_unit(
    ctx: &Arc<Context>,
    deliveries: &Arc<Vec<Delivery>>,
    from: usize,
    to: usize,
    metrics: &PartitionMetrics,
) -> Result<Progress> {
    let (c, d, m) = (ctx.clone(), deliveries.clone(), metrics.clone());
    let work = Work::new(ctx.origin.clone(), move |tx: &mut dyn ConsumerTx| {
        Box::pin(async move {
            match handle_in_unit(tx, &c, &d[from..to], &m).await {
                Ok(progress) if progress.failure.is_some() => {
                    Err(WorkError::Aborted(Box::new(progress)))
                }
                Ok(progress) => Ok(Box::new(progress) as Box<dyn std::any::Any + Send>),
                Err(e) => Err(WorkError::Failed(e)),
            }
        })
    });
    match ctx.db.execute(work).await {
        Ok(progress) | Err(WorkError::Aborted(progress)) => progress
            .downcast::<Progress>()
            .map(|p| *p)
            .map_err(|_| Error::storage_msg("a consumer unit returned something else")),
        Err(WorkError::Failed(e)) => Err(e),
    }
}

/// Handles `deliveries` in order inside one unit, until the first handler failure. The inbox
/// and the dead letters blocking the deliveries' keys are read once for the whole unit, and
/// the handled messages are recorded in the inbox at its end: on a networked database a unit
/// costs its handlers' statements plus three.
async fn handle_in_unit(
    tx: &mut dyn ConsumerTx,
    ctx: &Context,
    deliveries: &[Delivery],
    metrics: &PartitionMetrics,
) -> Result<Progress> {
    let decoded: Vec<_> = deliveries.iter().map(|d| decode(ctx, d)).collect();
    let ids: Vec<EventId> = decoded
        .iter()
        .zip(deliveries)
        .filter_map(|(e, d)| e.as_ref().map(|e| e.id).ok().or(d.id))
        .collect();
    // Processed before, or earlier in this unit (a redelivery can arrive in the same batch).
    let mut seen = tx.inbox_seen(&ctx.group, &ids).await?;
    let mut keys: Vec<&str> = deliveries.iter().map(|d| d.key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    let mut blockers = tx.blocking_dead_letters(&ctx.group, &keys).await?;
    let mut dealt_with = Vec::new();
    let (mut handled, mut duplicates, mut dead_lettered) = (0, 0, 0);
    for (done, (delivery, envelope)) in deliveries.iter().zip(decoded).enumerate() {
        let envelope = match envelope {
            Ok(e) => e,
            Err(reason) => {
                if delivery.id.is_some_and(|id| !seen.insert(id)) {
                    duplicates += 1;
                    continue;
                }
                dead_lettered += 1;
                let blocker = blockers.get(&delivery.key).copied();
                let letter = letter_for(ctx, delivery, None, reason, 1, Utc::now(), blocker);
                let letter = tx.insert_dead_letter(letter).await?;
                blockers.entry(delivery.key.clone()).or_insert(letter);
                dealt_with.extend(delivery.id.map(InboxEntry::undecodable));
                continue;
            }
        };
        if !seen.insert(envelope.id) {
            duplicates += 1;
            continue;
        }
        if let Some(blocker) = blockers.get(&delivery.key).copied() {
            dead_lettered += 1;
            let reason = format!("parked behind dead letter {blocker} with the same key");
            let letter = letter_for(
                ctx,
                delivery,
                Some(&envelope),
                reason,
                0,
                Utc::now(),
                Some(blocker),
            );
            tx.insert_dead_letter(letter).await?;
            dealt_with.push(InboxEntry::of(&envelope, false));
            continue;
        }
        tx.start_message(done);
        let unit: &mut dyn UnitOfWork = &mut *tx;
        let started = Instant::now();
        let span = crate::trace::process_span(&ctx.group, delivery, &envelope);
        let outcome = tracing::Instrument::instrument(
            AssertUnwindSafe(ctx.handler.handle(&envelope, unit)).catch_unwind(),
            span,
        )
        .await;
        metrics
            .handler_seconds
            .record(started.elapsed().as_secs_f64());
        let failure = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(Failure::from_handler(e)),
            Err(panic) => Some(Failure::rejected(
                Error::panicked("handler", panic.as_ref()).to_string(),
            )),
        };
        if let Some(failure) = failure {
            return Ok(Progress {
                done,
                failure: Some(failure),
                handled,
                duplicates,
                dead_lettered,
            });
        }
        handled += 1;
        dealt_with.push(InboxEntry::of(&envelope, true));
    }
    tx.inbox_insert_all(&ctx.group, &dealt_with).await?;
    Ok(Progress {
        done: deliveries.len(),
        failure: None,
        handled,
        duplicates,
        dead_lettered,
    })
}

/// The envelope of a delivery, upcast; or why it cannot be handled at all.
pub(crate) fn decode(ctx: &Context, delivery: &Delivery) -> Result<Envelope, String> {
    let envelope =
        Envelope::from_json(&delivery.payload).map_err(|e| format!("undecodable message: {e}"))?;
    ctx.config
        .upcasters
        .upcast(envelope)
        .map_err(|e| format!("cannot upcast the message: {e}"))
}

/// The dead letter of a delivery.
fn letter_for(
    ctx: &Context,
    delivery: &Delivery,
    envelope: Option<&Envelope>,
    reason: String,
    attempts: u32,
    first_failed_at: chrono::DateTime<Utc>,
    parked_behind: Option<DeadLetterId>,
) -> NewDeadLetter {
    NewDeadLetter {
        group: ctx.group.clone(),
        topic: delivery.topic.clone(),
        partition: delivery.partition,
        offset: delivery.offset,
        message_id: envelope.map(|e| e.id).or(delivery.id),
        key: delivery.key.clone(),
        event_type: envelope.map(|e| e.event_type.clone()),
        payload: delivery.payload.clone(),
        reason,
        attempts,
        first_failed_at,
        parked_behind,
    }
}

/// Records a dead letter in a unit of its own, and the message as dealt with in the inbox (so
/// a redelivery is not dead-lettered twice). A message already in the inbox is left alone
/// (`false`).
async fn record_dead_letter(
    tx: &mut dyn ConsumerTx,
    ctx: &Context,
    delivery: &Delivery,
    envelope: Option<&Envelope>,
    reason: String,
    attempts: u32,
    first_failed_at: chrono::DateTime<Utc>,
) -> Result<bool> {
    let id = envelope.map(|e| e.id).or(delivery.id);
    if let Some(id) = &id
        && tx.inbox_contains(&ctx.group, id).await?
    {
        return Ok(false);
    }
    let parked_behind = tx.blocking_dead_letter(&ctx.group, &delivery.key).await?;
    let letter = letter_for(
        ctx,
        delivery,
        envelope,
        reason,
        attempts,
        first_failed_at,
        parked_behind,
    );
    tx.insert_dead_letter(letter).await?;
    let entry = match envelope {
        Some(e) => Some(InboxEntry::of(e, false)),
        None => id.map(InboxEntry::undecodable),
    };
    if let Some(entry) = entry {
        tx.inbox_insert(&ctx.group, &entry).await?;
    }
    Ok(true)
}
