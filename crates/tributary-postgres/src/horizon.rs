//! Reading below the xmin horizon, and waiting for it to pass rows committed before a read.
//!
//! Readers only return rows of transactions below the snapshot's xmin (see the `position`
//! module). Right after a commit, that usually excludes the rows just committed whenever any
//! older transaction on the server is still running — often one of a few milliseconds. So a
//! read first notes the newest transaction whose committed rows wait above the horizon; if
//! the read then comes back short, it waits (up to `settle_timeout`) for the horizon to pass
//! that transaction and reads once more. Every row committed before a read began is then
//! returned by it (up to `max`), unless a transaction older than those rows stays open longer
//! than the timeout: those rows come with a later read, never out of order.
//!
//! The note must be taken *before* the read: rows held back during the read may have become
//! readable by the time a later check looks, and would then be missed by this read.

use std::future::Future;
use std::time::{Duration, Instant};

use tributary_core::Result;

use crate::database::Inner;
use crate::error::SqlxResultExt;
use crate::position::TxPosition;
use crate::sql::Statement;

/// Up to `max` rows at or after `from` in reading order (see the module doc for the wait).
///
/// `read(from, max)` returns rows at or after `from`, below the horizon, in reading order,
/// each with its place. `held_back` returns the horizon and the newest `tx_id` of committed
/// rows at or above it.
pub(crate) async fn settled_read<T, R, Fut>(
    db: &Inner,
    from: TxPosition,
    max: usize,
    held_back: &Statement,
    mut read: R,
) -> Result<Vec<(TxPosition, T)>>
where
    R: FnMut(TxPosition, usize) -> Fut,
    Fut: Future<Output = Result<Vec<(TxPosition, T)>>>,
{
    if max == 0 {
        return Ok(Vec::new());
    }
    let (_, newest_held): (i64, Option<i64>) = sqlx::query_as(held_back.sql())
        .fetch_one(&db.pool)
        .await
        .context("looking for rows held back by running transactions")?;
    let mut out = read(from, max).await?;
    let Some(newest_held) = newest_held else {
        return Ok(out);
    };
    if out.len() >= max {
        return Ok(out);
    }
    if !wait_for_horizon(db, newest_held, db.config.settle_timeout).await? {
        tracing::debug!(
            schema = %db.config.schema,
            tx_id = newest_held,
            "committed rows stay held back by an older running transaction"
        );
        return Ok(out);
    }
    let next = out.last().map_or(from, |(last, _)| after(*last));
    let more = read(next, max - out.len()).await?;
    out.extend(more);
    Ok(out)
}

/// The place just after `p` (rows of the same transaction after it, then later transactions).
pub(crate) fn after(p: TxPosition) -> TxPosition {
    TxPosition {
        tx_id: p.tx_id,
        ordinal: p.ordinal.saturating_add(1),
    }
}

/// Waits until the horizon is above `tx_id` (every transaction up to it has ended), looking
/// again after each commit through this handle and otherwise after a short, growing delay.
/// Returns false if `timeout` passed first.
///
/// The transactions that hold the horizon back are usually units of a few milliseconds, often
/// this process's own: a wait that needed 9 ms overshot by 6 ms with delays doubling up to
/// 25 ms, and every hop of a message through the relay pays it. A look is one cheap query.
async fn wait_for_horizon(db: &Inner, tx_id: i64, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    let mut commits = db.commits_receiver();
    let mut delay = Duration::from_millis(1);
    loop {
        commits.borrow_and_update();
        if current_horizon(db).await? > tx_id {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        tokio::select! {
            _ = tokio::time::sleep(delay.min(deadline - now)) => {}
            _ = commits.changed() => {}
        }
        delay = (delay * 2).min(HORIZON_LOOK_EVERY);
    }
}

/// The longest pause between two looks at the horizon while waiting for it.
const HORIZON_LOOK_EVERY: Duration = Duration::from_millis(4);

/// The xmin of a new snapshot: every transaction below it has ended.
pub(crate) async fn current_horizon(db: &Inner) -> Result<i64> {
    sqlx::query_scalar(db.sql.horizon.sql())
        .fetch_one(&db.pool)
        .await
        .context("reading the transaction horizon")
}
