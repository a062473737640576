//! A running group holds its lock shared ([`GroupLock::Shared`]): an operation that needs the
//! group stopped (a view rebuild) takes it exclusively and is refused while any consumer of
//! the group runs, in this process or another. A consumer that starts while a rebuild is
//! being requested waits the few milliseconds that takes, then performs the rebuild.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tributary_core::{GroupLock, LeaseGuard};

use super::Context;
use crate::retry::{Retry, Stop};

/// How often a running group checks that its lock is still held (a database session that
/// carried it can be cut) and how long it waits for an exclusive holder to let go.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// The group's lock while its consumers run; dropped after the last partition stopped.
pub(super) type HeldLock = Arc<Mutex<Box<dyn LeaseGuard>>>;

/// Takes the group's lock shared, waiting while an exclusive holder has it.
pub(super) async fn take(ctx: &Context, retry: &Retry) -> Result<Box<dyn LeaseGuard>, Stop> {
    let mut waiting_logged = false;
    loop {
        let taken = retry
            .until_ok("taking the consumer group's lock", || {
                ctx.db.try_lock_group(&ctx.group, GroupLock::Shared)
            })
            .await?;
        if let Some(guard) = taken {
            return Ok(guard);
        }
        if !waiting_logged {
            tracing::info!(group = %ctx.group, "the group is locked by a rebuild request; waiting");
            waiting_logged = true;
        }
        retry.nap(CHECK_EVERY).await?;
    }
}

/// Takes the lock again whenever it was lost, until `stop`.
pub(super) async fn keep(ctx: Arc<Context>, held: HeldLock, retry: Retry, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = stop.cancelled() => return,
        }
        let lost = !held.lock().map(|g| g.is_held()).unwrap_or(false);
        if lost {
            tracing::warn!(group = %ctx.group, "the consumer group's lock was lost; taking it again");
            match take(&ctx, &retry).await {
                Ok(guard) => {
                    if let Ok(mut slot) = held.lock() {
                        *slot = guard;
                    }
                }
                Err(_) => return, // stopping, or the partitions report the failure
            }
        }
    }
}

/// Releases the lock once the group's tasks (the keeper among them) have ended.
pub(super) async fn release(held: HeldLock) {
    let guard = Arc::try_unwrap(held)
        .ok()
        .and_then(|slot| slot.into_inner().ok());
    if let Some(guard) = guard {
        guard.release().await;
    }
}
