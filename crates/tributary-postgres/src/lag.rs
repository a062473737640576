//! How far a reader is behind, and whether a running transaction holds it back.
//!
//! Readers only see rows below the transaction horizon (the oldest transaction still
//! running, server-wide). A reader can therefore be behind for two reasons: it has not read
//! rows it could read (its own backlog), or committed rows wait above the horizon because an
//! older transaction is still open — a long transaction anywhere on the server delays every
//! reader, and [`PgLag::horizon_holder`] names it.

use std::time::Duration;

use tributary_core::Result;

use crate::database::PgDatabase;
use crate::error::SqlxResultExt;
use crate::position::TxPosition;
use crate::sql::Statement;

/// A reader's lag: what is committed but not yet read.
#[derive(Clone, Debug, PartialEq)]
pub struct PgLag {
    /// Committed rows after the reader's position that it can read now.
    pub readable: u64,
    /// Committed rows after the reader's position that it cannot read yet: an older
    /// transaction is still running (see `horizon_holder`).
    pub held_back: u64,
    /// How long the oldest of those rows has been waiting (since it was written).
    pub oldest_unread_age: Option<Duration>,
    /// When rows are held back: the oldest running transaction, which holds them.
    pub horizon_holder: Option<PgHorizonHolder>,
}

impl PgLag {
    /// Every committed row the reader has not read.
    pub fn unread(&self) -> u64 {
        self.readable + self.held_back
    }
}

/// A running transaction that holds the horizon back (from `pg_stat_activity`).
#[derive(Clone, Debug, PartialEq)]
pub struct PgHorizonHolder {
    /// The server process running it (`pg_terminate_backend(pid)` ends it).
    pub pid: i32,
    /// Its database: the horizon is server-wide, so it may be another service's.
    pub database: Option<String>,
    /// `active`, `idle in transaction`, …
    pub state: Option<String>,
    /// How long the transaction has been open.
    pub transaction_age: Duration,
    /// The start of its current (or last) statement.
    pub query: Option<String>,
}

fn seconds(s: Option<f64>) -> Option<Duration> {
    s.filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

/// The lag of a reader of the table `statement` counts, from `from` (all rows when `None`).
pub(crate) async fn lag(
    db: &PgDatabase,
    statement: &Statement,
    from: Option<TxPosition>,
) -> Result<PgLag> {
    let mut query = sqlx::query_as(statement.sql());
    if let Some(from) = from {
        query = query.bind(from.tx_i64()).bind(from.ordinal_i32());
    }
    let (readable, held_back, age): (i64, i64, Option<f64>) = query
        .fetch_one(db.pool())
        .await
        .context("measuring a reader's lag")?;
    let horizon_holder = if held_back > 0 {
        horizon_holder(db).await?
    } else {
        None
    };
    Ok(PgLag {
        readable: readable.max(0) as u64,
        held_back: held_back.max(0) as u64,
        oldest_unread_age: seconds(age),
        horizon_holder,
    })
}

pub(crate) async fn horizon_holder(db: &PgDatabase) -> Result<Option<PgHorizonHolder>> {
    type Row = (
        i32,
        Option<String>,
        Option<String>,
        Option<f64>,
        Option<String>,
    );
    let row: Option<Row> = sqlx::query_as(db.inner.sql.horizon_holder.sql())
        .fetch_optional(db.pool())
        .await
        .context("looking for the oldest running transaction")?;
    Ok(
        row.map(|(pid, database, state, age, query)| PgHorizonHolder {
            pid,
            database,
            state,
            transaction_age: seconds(age).unwrap_or_default(),
            query,
        }),
    )
}
