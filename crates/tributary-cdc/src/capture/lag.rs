//! How far a slot is behind: the figures operators alert on before WAL fills the disk.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::config::CdcConfig;
use super::error::{CdcError, Result};
use crate::lsn::Lsn;
use crate::replication::{PgReplicationConfig, SlotName, WalStatus};
use crate::sql::SqlSession;

/// A slot's lag.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SlotLag {
    /// The slot.
    pub slot: String,
    /// The server's current WAL position.
    pub current_wal_lsn: Lsn,
    /// Everything before this was confirmed (`None` for a slot that never confirmed).
    pub confirmed_flush_lsn: Option<Lsn>,
    /// WAL bytes between the two: what the slot keeps the server from recycling for this
    /// capture (and what a restart reads again at most, past the last batch in flight).
    pub bytes: u64,
    /// Whether the WAL the slot needs is still there (`unreserved`: about to be lost).
    pub wal_status: Option<WalStatus>,
    /// The server process streaming from the slot (a running capture), `None` when idle.
    pub active_pid: Option<i32>,
    /// The commit time of the last transaction this process confirmed (only known to a
    /// running [`CdcSource`](super::CdcSource)).
    pub last_confirmed_commit: Option<DateTime<Utc>>,
    /// How long ago that was.
    pub since_last_confirmed_commit: Option<Duration>,
}

/// The lag of `config`'s slot, read on a new connection.
///
/// # Errors
///
/// [`CdcError::SlotMissing`] if the slot does not exist; connection failures.
pub async fn slot_lag(config: &CdcConfig) -> Result<SlotLag> {
    super::source::lag_of(config)
        .await?
        .ok_or_else(|| CdcError::SlotMissing {
            slot: config.slot.to_string(),
            confirmed: Lsn::ZERO,
        })
}

pub(crate) async fn query_lag(
    session: &mut SqlSession,
    slot: &SlotName,
) -> Result<Option<SlotLag>> {
    // Every slot of the database (a handful), then this one: one statement for both uses.
    let result = session.query(include_str!("sql/lags.sql")).await?;
    result
        .rows
        .into_iter()
        .find(|row| row.get(5).and_then(Option::as_deref) == Some(slot.as_str()))
        .map(lag_from_row)
        .transpose()
}

/// Every logical replication slot of the connection's database and how far it is behind
/// (`tributary status`), whoever made it. Reads `pg_replication_slots` only.
///
/// # Errors
/// Connection failures.
pub async fn slot_lags(connection: &PgReplicationConfig) -> Result<Vec<SlotLag>> {
    let mut session = SqlSession::connect(connection).await?;
    let result = session.query(include_str!("sql/lags.sql")).await;
    session.close().await;
    result?.rows.into_iter().map(lag_from_row).collect()
}

/// A row of `lags.sql`: current LSN, confirmed LSN, bytes, WAL status, the
/// pid of the session streaming from the slot, the slot's name.
fn lag_from_row(row: Vec<Option<String>>) -> Result<SlotLag> {
    let text = |i: usize| row.get(i).cloned().flatten();
    let lsn = |i: usize| -> Result<Option<Lsn>> {
        text(i)
            .map(|t| {
                t.parse()
                    .map_err(|e| CdcError::protocol(format!("slot lag: {e}")))
            })
            .transpose()
    };
    Ok(SlotLag {
        slot: text(5).unwrap_or_default(),
        current_wal_lsn: lsn(0)?.unwrap_or(Lsn::ZERO),
        confirmed_flush_lsn: lsn(1)?,
        bytes: text(2)
            .and_then(|b| b.parse::<i64>().ok())
            .map_or(0, |b| u64::try_from(b).unwrap_or(0)),
        wal_status: text(3).as_deref().map(WalStatus::parse),
        active_pid: text(4).and_then(|p| p.parse().ok()),
        last_confirmed_commit: None,
        since_last_confirmed_commit: None,
    })
}
