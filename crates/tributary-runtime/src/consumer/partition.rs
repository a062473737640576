//! One partition of a consumer group: fetch, handle in the service's transaction, commit the
//! offset.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tributary_core::{
    ConsumerTx, DeadLetterId, Delivery, Envelope, Error, EventId, NewDeadLetter, Partition,
    PartitionConsumer, Result, Topic, UnitOfWork, Work, WorkError,
};

use super::Context;
use crate::health::HealthState;

/// Why a message was not handled.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    pub retryable: bool,
    /// Not the message's fault (see `HandlerError::transient`): does not count as an attempt.
    pub transient: bool,
    pub reason: String,
}

/// How far a unit got through its deliveries.
struct Progress {
    /// Deliveries dealt with (handled, skipped as duplicates, parked or dead-lettered).
    done: usize,
    /// The failure that stopped the unit at delivery `done`, if any.
    failure: Option<Failure>,
}

pub(crate) async fn run(
    ctx: Arc<Context>,
    topic: Topic,
    partition: Partition,
    shutdown: CancellationToken,
) {
    let mut failures = 0;
    let mut consumer = loop {
        if shutdown.is_cancelled() {
            return;
        }
        match ctx.broker.consume(&ctx.group, &topic, partition).await {
            Ok(c) => break c,
            Err(e) => {
                failures += 1;
                degraded(&ctx, &format!("opening {topic}/{partition}"), &e);
                if !nap(ctx.config.backoff.delay(failures), &shutdown).await {
                    return;
                }
            }
        }
    };
    let mut failures = 0;
    loop {
        let fetched = tokio::select! {
            r = consumer.fetch(ctx.config.batch_size, ctx.config.fetch_wait) => r,
            _ = shutdown.cancelled() => return,
        };
        let deliveries = match fetched {
            Ok(d) => {
                failures = 0;
                d
            }
            Err(e) => {
                failures += 1;
                degraded(&ctx, &format!("fetching {topic}/{partition}"), &e);
                if !nap(ctx.config.backoff.delay(failures), &shutdown).await {
                    return;
                }
                continue;
            }
        };
        let Some(last) = deliveries.last().map(|d| d.offset) else {
            continue;
        };
        if !handle_all(&ctx, Arc::new(deliveries), &shutdown).await {
            return;
        }
        if !commit(&ctx, consumer.as_mut(), last, &shutdown).await {
            return;
        }
    }
}

async fn commit(
    ctx: &Context,
    consumer: &mut dyn PartitionConsumer,
    offset: tributary_core::Offset,
    shutdown: &CancellationToken,
) -> bool {
    let mut failures = 0;
    loop {
        match consumer.commit(offset).await {
            Ok(()) => return true,
            Err(e) => {
                failures += 1;
                degraded(ctx, "committing an offset", &e);
                if !nap(ctx.config.backoff.delay(failures), shutdown).await {
                    return false;
                }
            }
        }
    }
}

/// Deals with every delivery in order: handled, duplicate, parked or dead-lettered. Returns
/// false if stopped first (the rest will be redelivered).
async fn handle_all(
    ctx: &Arc<Context>,
    deliveries: Arc<Vec<Delivery>>,
    shutdown: &CancellationToken,
) -> bool {
    let mut next = 0;
    let mut store_failures = 0;
    let per_unit = ctx
        .config
        .messages_per_unit
        .unwrap_or_else(|| ctx.db.messages_per_unit())
        .max(1);
    // After a unit failed at a message: the end of the unit that redoes the messages before
    // it, and the failure to retry once they are committed.
    let mut redo_until = None;
    let mut failed_next: Option<Failure> = None;
    // After a unit failed at commit because the database refused a value: run the messages
    // up to here one per unit, to find the one that wrote it.
    let mut one_by_one_until = 0;
    while next < deliveries.len() {
        let end = redo_until.take().unwrap_or_else(|| {
            let size = if next < one_by_one_until { 1 } else { per_unit };
            deliveries.len().min(next + size)
        });
        match run_unit(ctx, &deliveries, next, end).await {
            Ok(Progress {
                done,
                failure: None,
            }) => {
                next += done;
                store_failures = 0;
                if let Some(failure) = failed_next.take() {
                    if !retry_one(ctx, &deliveries, next, failure, shutdown).await {
                        return false;
                    }
                    next += 1;
                }
            }
            Ok(Progress {
                done,
                failure: Some(failure),
            }) => {
                store_failures = 0;
                if done > 0 {
                    // The unit was rolled back as a whole (no savepoint per message, which
                    // costs two round trips each): commit the messages before the failing
                    // one first.
                    redo_until = Some(next + done);
                    failed_next = Some(failure);
                } else {
                    failed_next = None;
                    if !retry_one(ctx, &deliveries, next, failure, shutdown).await {
                        return false;
                    }
                    next += 1;
                }
            }
            Err(e) if refused_data(&e) => {
                // A value a handler wrote was refused when the unit committed (a backend may
                // hold writes until then): it will be refused again. Nothing of the unit was
                // written; find the message that wrote it and dead-letter it alone.
                store_failures = 0;
                if end - next > 1 {
                    one_by_one_until = end;
                } else {
                    let failure = Failure {
                        retryable: false,
                        transient: false,
                        reason: format!("the database refused what the handler wrote: {e}"),
                    };
                    if !retry_one(ctx, &deliveries, next, failure, shutdown).await {
                        return false;
                    }
                    next += 1;
                }
            }
            Err(e) => {
                // The transaction itself failed (database busy, disk full): nothing of it was
                // written. Try the same deliveries again.
                redo_until = Some(end);
                store_failures += 1;
                degraded(ctx, "handling a batch", &e);
                if !nap(ctx.config.backoff.delay(store_failures), shutdown).await {
                    return false;
                }
            }
        }
    }
    ctx.health.set(HealthState::Running);
    true
}

/// Whether a unit's failure is a value the database refuses (not the database's state).
fn refused_data(e: &Error) -> bool {
    matches!(e, Error::InvalidInput { .. } | Error::TooLarge { .. })
}

/// Retries the delivery at `index`, which just failed for the first time, until it succeeds,
/// its attempts run out, or it fails for good; then dead-letters it.
async fn retry_one(
    ctx: &Arc<Context>,
    deliveries: &Arc<Vec<Delivery>>,
    index: usize,
    mut failure: Failure,
    shutdown: &CancellationToken,
) -> bool {
    let first_failed_at = Utc::now();
    let mut attempts = u32::from(!failure.transient);
    let mut naps = 1;
    loop {
        if !failure.retryable || attempts >= ctx.config.max_attempts {
            return dead_letter(
                ctx,
                deliveries,
                index,
                failure,
                attempts,
                first_failed_at,
                shutdown,
            )
            .await;
        }
        tracing::debug!(group = %ctx.group, attempts, reason = %failure.reason, "handler failed; retrying");
        if failure.transient {
            ctx.health.set(HealthState::Degraded(format!(
                "handling a message: {}",
                failure.reason
            )));
        }
        if !nap(ctx.config.backoff.delay(naps), shutdown).await {
            return false;
        }
        naps += 1;
        match run_unit(ctx, deliveries, index, index + 1).await {
            Ok(Progress { failure: None, .. }) => return true,
            Ok(Progress {
                failure: Some(again),
                ..
            }) => {
                attempts += u32::from(!again.transient);
                failure = again;
            }
            Err(e) => {
                // A store failure is not the message's fault: do not count it.
                degraded(ctx, "handling a message", &e);
            }
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
    shutdown: &CancellationToken,
) -> bool {
    tracing::warn!(group = %ctx.group, reason = %failure.reason, attempts, "dead-lettering a message");
    let mut failures = 0;
    loop {
        let (c, d) = (ctx.clone(), deliveries.clone());
        let reason = failure.reason.clone();
        let result = ctx
            .db
            .transact_consumer(move |tx| {
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
            })
            .await;
        match result {
            Ok(()) => return true,
            Err(e) => {
                failures += 1;
                degraded(ctx, "writing a dead letter", &e);
                if !nap(ctx.config.backoff.delay(failures), shutdown).await {
                    return false;
                }
            }
        }
    }
}

/// Runs deliveries `from..to` in one unit of work. A handler failure stops it and rolls all
/// of it back: the progress then says at which delivery, and nothing was committed.
async fn run_unit(
    ctx: &Arc<Context>,
    deliveries: &Arc<Vec<Delivery>>,
    from: usize,
    to: usize,
) -> Result<Progress> {
    let (c, d) = (ctx.clone(), deliveries.clone());
    let work: Work =
        Box::new(
            move |tx: &mut dyn ConsumerTx| match handle_in_unit(tx, &c, &d[from..to]) {
                Ok(progress) if progress.failure.is_some() => {
                    Err(WorkError::Aborted(Box::new(progress)))
                }
                Ok(progress) => Ok(Box::new(progress) as Box<dyn std::any::Any + Send>),
                Err(e) => Err(WorkError::Failed(e)),
            },
        );
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
fn handle_in_unit(
    tx: &mut dyn ConsumerTx,
    ctx: &Context,
    deliveries: &[Delivery],
) -> Result<Progress> {
    let decoded: Vec<_> = deliveries.iter().map(|d| decode(ctx, d)).collect();
    let ids: Vec<EventId> = decoded
        .iter()
        .zip(deliveries)
        .filter_map(|(e, d)| e.as_ref().map(|e| e.id).ok().or(d.id))
        .collect();
    // Processed before, or earlier in this unit (a redelivery can arrive in the same batch).
    let mut seen = tx.inbox_seen(&ctx.group, &ids)?;
    let mut keys: Vec<&str> = deliveries.iter().map(|d| d.key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    let mut blockers = tx.blocking_dead_letters(&ctx.group, &keys)?;
    let mut dealt_with = Vec::new();
    for (done, (delivery, envelope)) in deliveries.iter().zip(decoded).enumerate() {
        let envelope = match envelope {
            Ok(e) => e,
            Err(reason) => {
                if delivery.id.is_some_and(|id| !seen.insert(id)) {
                    continue;
                }
                let blocker = blockers.get(&delivery.key).copied();
                let letter =
                    insert_dead_letter(tx, ctx, delivery, None, reason, 1, Utc::now(), blocker)?;
                blockers.entry(delivery.key.clone()).or_insert(letter);
                dealt_with.extend(delivery.id);
                continue;
            }
        };
        if !seen.insert(envelope.id) {
            continue;
        }
        if let Some(blocker) = blockers.get(&delivery.key).copied() {
            let reason = format!("parked behind dead letter {blocker} with the same key");
            insert_dead_letter(
                tx,
                ctx,
                delivery,
                Some(&envelope),
                reason,
                0,
                Utc::now(),
                Some(blocker),
            )?;
            dealt_with.push(envelope.id);
            continue;
        }
        let unit: &mut dyn UnitOfWork = &mut *tx;
        let outcome = catch_unwind(AssertUnwindSafe(|| ctx.handler.handle(&envelope, unit)));
        let failure = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(Failure {
                retryable: e.retryable,
                transient: e.transient,
                reason: e.message,
            }),
            Err(panic) => Some(Failure {
                retryable: false,
                transient: false,
                reason: Error::panicked("handler", panic.as_ref()).to_string(),
            }),
        };
        if let Some(failure) = failure {
            return Ok(Progress {
                done,
                failure: Some(failure),
            });
        }
        dealt_with.push(envelope.id);
    }
    tx.inbox_insert_all(&ctx.group, &dealt_with)?;
    Ok(Progress {
        done: deliveries.len(),
        failure: None,
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

/// Records a dead letter for `delivery`, parked behind `parked_behind` if that is set.
#[allow(clippy::too_many_arguments)]
fn insert_dead_letter(
    tx: &mut dyn ConsumerTx,
    ctx: &Context,
    delivery: &Delivery,
    envelope: Option<&Envelope>,
    reason: String,
    attempts: u32,
    first_failed_at: chrono::DateTime<Utc>,
    parked_behind: Option<DeadLetterId>,
) -> Result<DeadLetterId> {
    tx.insert_dead_letter(NewDeadLetter {
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
    })
}

/// Records a dead letter in a unit of its own, and the message as dealt with in the inbox (so
/// a redelivery is not dead-lettered twice). A message already in the inbox is left alone.
fn record_dead_letter(
    tx: &mut dyn ConsumerTx,
    ctx: &Context,
    delivery: &Delivery,
    envelope: Option<&Envelope>,
    reason: String,
    attempts: u32,
    first_failed_at: chrono::DateTime<Utc>,
) -> Result<()> {
    let id = envelope.map(|e| e.id).or(delivery.id);
    if let Some(id) = &id
        && tx.inbox_contains(&ctx.group, id)?
    {
        return Ok(());
    }
    let parked_behind = tx.blocking_dead_letter(&ctx.group, &delivery.key)?;
    insert_dead_letter(
        tx,
        ctx,
        delivery,
        envelope,
        reason,
        attempts,
        first_failed_at,
        parked_behind,
    )?;
    if let Some(id) = &id {
        tx.inbox_insert(&ctx.group, id)?;
    }
    Ok(())
}

fn degraded(ctx: &Context, what: &str, e: &Error) {
    tracing::warn!(group = %ctx.group, error = %e, "consumer failed {what}; retrying");
    ctx.health
        .set(HealthState::Degraded(format!("{what}: {e}")));
}

async fn nap(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = shutdown.cancelled() => false,
    }
}
