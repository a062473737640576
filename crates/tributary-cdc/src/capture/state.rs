//! The capture's record of its slot (`tributary_cdc_slots` in the captured database), the
//! lease, and the other statements of the control connection.
//!
//! The record is what lets a capture tell a slot it must not trust: the slot's position can
//! only be read from the server, and a dropped-and-recreated slot looks exactly like a healthy
//! one that confirmed a lot. So before confirming a position the capture makes sure the
//! record's `position_limit` is at least that position; a slot found beyond the limit has
//! confirmed something this capture never confirmed, and the capture refuses to use it.

use std::collections::HashMap;

use crate::lsn::Lsn;
use crate::replication::SlotName;
use crate::sql::{SqlSession, fill, ident, literal};

use super::error::{CdcError, Result};

/// The name of the record table.
pub(crate) const STATE_TABLE: &str = "tributary_cdc_slots";

/// Where the slot is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotStatus {
    /// Being created; the slot may or may not exist.
    Creating,
    /// The initial snapshot is being published; nothing was confirmed yet.
    Snapshot,
    /// Streaming: the slot must exist and never be behind-the-back recreated.
    Streaming,
}

impl SlotStatus {
    fn as_str(self) -> &'static str {
        match self {
            SlotStatus::Creating => "creating",
            SlotStatus::Snapshot => "snapshot",
            SlotStatus::Streaming => "streaming",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "creating" => Some(SlotStatus::Creating),
            "snapshot" => Some(SlotStatus::Snapshot),
            "streaming" => Some(SlotStatus::Streaming),
            _ => None,
        }
    }
}

/// One row of the record table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SlotRecord {
    pub(crate) system_id: String,
    pub(crate) database: String,
    pub(crate) status: SlotStatus,
    pub(crate) consistent_point: Option<Lsn>,
    pub(crate) position_limit: Option<Lsn>,
    pub(crate) snapshot_rows: i64,
}

/// The statements of the control connection for one slot.
#[derive(Debug, Clone)]
pub(crate) struct StateSql {
    table: String,
    schema: String,
    slot: String,
}

impl StateSql {
    pub(crate) fn new(schema: &str, slot: &SlotName) -> Self {
        StateSql {
            table: format!("{}.{}", ident(schema), ident(STATE_TABLE)),
            schema: schema.to_owned(),
            slot: literal(slot.as_str()),
        }
    }

    /// Creates the record table if it is missing.
    pub(crate) async fn ensure_table(&self, session: &mut SqlSession) -> Result<()> {
        if self.schema != "public" {
            session
                .query(&format!(
                    "CREATE SCHEMA IF NOT EXISTS {}",
                    ident(&self.schema)
                ))
                .await?;
        }
        session
            .query(&fill(include_str!("sql/create_state.sql"), &[&self.table]))
            .await?;
        Ok(())
    }

    pub(crate) async fn load(&self, session: &mut SqlSession) -> Result<Option<SlotRecord>> {
        let result = session
            .query(&fill(
                include_str!("sql/load_state.sql"),
                &[&self.table, &self.slot],
            ))
            .await?;
        let Some(row) = result.rows.into_iter().next() else {
            return Ok(None);
        };
        let text = |i: usize| row.get(i).cloned().flatten();
        let lsn = |i: usize| -> Result<Option<Lsn>> {
            text(i)
                .map(|t| {
                    t.parse()
                        .map_err(|e| CdcError::protocol(format!("slot record: {e}")))
                })
                .transpose()
        };
        Ok(Some(SlotRecord {
            system_id: text(0).unwrap_or_default(),
            database: text(1).unwrap_or_default(),
            status: text(2)
                .as_deref()
                .and_then(SlotStatus::parse)
                .ok_or_else(|| CdcError::protocol("slot record: unknown status"))?,
            consistent_point: lsn(3)?,
            position_limit: lsn(4)?,
            snapshot_rows: text(5).and_then(|n| n.parse().ok()).unwrap_or(0),
        }))
    }

    pub(crate) async fn begin_creating(
        &self,
        session: &mut SqlSession,
        system_id: &str,
        database: &str,
        status: SlotStatus,
    ) -> Result<()> {
        session
            .query(&fill(
                include_str!("sql/begin_creating.sql"),
                &[
                    &self.table,
                    &self.slot,
                    &literal(system_id),
                    &literal(database),
                    &literal(status.as_str()),
                ],
            ))
            .await?;
        Ok(())
    }

    pub(crate) async fn slot_created(
        &self,
        session: &mut SqlSession,
        status: SlotStatus,
        consistent_point: Lsn,
    ) -> Result<()> {
        session
            .query(&fill(
                include_str!("sql/slot_created.sql"),
                &[
                    &self.table,
                    &self.slot,
                    &literal(status.as_str()),
                    &literal(&consistent_point.to_string()),
                ],
            ))
            .await?;
        Ok(())
    }

    /// Records a slot made elsewhere; returns the limit.
    pub(crate) async fn adopt(
        &self,
        session: &mut SqlSession,
        system_id: &str,
        database: &str,
        confirmed: Lsn,
    ) -> Result<Lsn> {
        let limit = session
            .value(&fill(
                include_str!("sql/adopt_slot.sql"),
                &[
                    &self.table,
                    &self.slot,
                    &literal(system_id),
                    &literal(database),
                    &literal(&confirmed.to_string()),
                ],
            ))
            .await?;
        parse_lsn(limit, "adopt")
    }

    /// Raises the limit to at least `position`; returns the new limit.
    pub(crate) async fn raise_limit(&self, session: &mut SqlSession, position: Lsn) -> Result<Lsn> {
        let limit = session
            .value(&fill(
                include_str!("sql/raise_limit.sql"),
                &[&self.table, &self.slot, &literal(&position.to_string())],
            ))
            .await?;
        parse_lsn(limit, "raise_limit")
    }

    /// Writes a heartbeat; returns the new limit if the slot is streaming.
    pub(crate) async fn heartbeat(&self, session: &mut SqlSession) -> Result<Option<Lsn>> {
        let result = session
            .query(&fill(
                include_str!("sql/heartbeat.sql"),
                &[&self.table, &self.slot],
            ))
            .await?;
        // Row 0: the message's LSN; row 1 (if any): the limit.
        result
            .rows
            .get(1)
            .and_then(|row| row.first().cloned().flatten())
            .map(|limit| parse_lsn(Some(limit), "heartbeat"))
            .transpose()
    }

    pub(crate) async fn snapshot_progress(
        &self,
        session: &mut SqlSession,
        rows: usize,
    ) -> Result<()> {
        session
            .query(&fill(
                include_str!("sql/snapshot_progress.sql"),
                &[&self.table, &self.slot, &rows.to_string()],
            ))
            .await?;
        Ok(())
    }

    pub(crate) async fn snapshot_done(&self, session: &mut SqlSession) -> Result<()> {
        session
            .query(&fill(
                include_str!("sql/snapshot_done.sql"),
                &[&self.table, &self.slot],
            ))
            .await?;
        Ok(())
    }

    /// Drops the slot (if it exists) and deletes the record.
    pub(crate) async fn forget(&self, session: &mut SqlSession) -> Result<()> {
        session
            .query(&fill(
                include_str!("sql/forget_slot.sql"),
                &[&self.table, &self.slot],
            ))
            .await?;
        Ok(())
    }

    /// Drops the slot if it exists (an unfinished creation or snapshot).
    pub(crate) async fn drop_slot(&self, session: &mut SqlSession) -> Result<()> {
        session
            .query(&fill(include_str!("sql/drop_slot.sql"), &[&self.slot]))
            .await?;
        Ok(())
    }
}

/// Takes the slot's lease: a session-level advisory lock, held as long as `session` lives.
pub(crate) async fn try_lock(session: &mut SqlSession, slot: &SlotName) -> Result<bool> {
    let held = session
        .value(&format!("SELECT pg_try_advisory_lock({})", lease_key(slot)))
        .await?;
    Ok(held.as_deref() == Some("t"))
}

/// Gives the slot's lease back at once. Closing the session releases it too, but only when
/// the server's backend has exited, which a client that closed its socket does not wait for:
/// an operator command run right after a capture stopped could find it still held.
pub(crate) async fn unlock(session: &mut SqlSession, slot: &SlotName) -> Result<()> {
    session
        .value(&format!("SELECT pg_advisory_unlock({})", lease_key(slot)))
        .await?;
    Ok(())
}

/// The advisory lock key of a slot: FNV-1a (64 bit) of `tributary-cdc:<slot>`. Stable across
/// processes and versions, as every capture of the slot must agree on it.
pub(crate) fn lease_key(slot: &SlotName) -> i64 {
    let hash = crate::hash::fnv1a64(format!("tributary-cdc:{slot}").as_bytes());
    i64::from_ne_bytes(hash.to_ne_bytes())
}

/// Primary key columns of the publications' tables, by (schema, table).
pub(crate) async fn primary_keys(
    session: &mut SqlSession,
    publications: &[crate::replication::PublicationName],
) -> Result<HashMap<(String, String), Vec<String>>> {
    let names: Vec<String> = publications.iter().map(|p| literal(p.as_str())).collect();
    let result = session
        .query(&fill(
            include_str!("sql/primary_keys.sql"),
            &[&names.join(", ")],
        ))
        .await?;
    let mut keys: HashMap<(String, String), Vec<String>> = HashMap::new();
    for row in result.rows {
        if let [Some(schema), Some(table), Some(column)] = row.as_slice() {
            keys.entry((schema.clone(), table.clone()))
                .or_default()
                .push(column.clone());
        }
    }
    Ok(keys)
}

/// The primary key columns of one table.
pub(crate) async fn table_primary_key(
    session: &mut SqlSession,
    schema: &str,
    table: &str,
) -> Result<Vec<String>> {
    let qualified = format!("{}.{}", ident(schema), ident(table));
    let result = session
        .query(&fill(
            include_str!("sql/table_primary_key.sql"),
            &[&literal(&qualified)],
        ))
        .await?;
    Ok(result
        .rows
        .into_iter()
        .filter_map(|row| row.into_iter().next().flatten())
        .collect())
}

fn parse_lsn(text: Option<String>, what: &str) -> Result<Lsn> {
    text.ok_or_else(|| CdcError::protocol(format!("{what}: no position returned")))?
        .parse()
        .map_err(|e| CdcError::protocol(format!("{what}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_keys_are_stable_and_differ_per_slot() {
        let a = SlotName::new("orders").expect("valid");
        let b = SlotName::new("customers").expect("valid");
        assert_eq!(lease_key(&a), lease_key(&a));
        assert_ne!(lease_key(&a), lease_key(&b));
    }

    #[test]
    fn statuses_round_trip() {
        for status in [
            SlotStatus::Creating,
            SlotStatus::Snapshot,
            SlotStatus::Streaming,
        ] {
            assert_eq!(SlotStatus::parse(status.as_str()), Some(status));
        }
    }
}
