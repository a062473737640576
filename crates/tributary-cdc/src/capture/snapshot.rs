//! The initial snapshot: the rows that existed when the slot was created, read through the
//! snapshot the slot exported, so that they and the stream that follows meet exactly at the
//! slot's consistent point (no gap, no double).
//!
//! The exported snapshot lives only as long as the transaction that imported it. A crash
//! mid-snapshot therefore cannot resume: the snapshot restarts from scratch with a new slot
//! (see the module doc of `capture`).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tributary_core::OutgoingMessage;

use super::config::{OutboxCapture, TableConfig};
use super::error::{CdcError, Result};
use super::mapping::Mapper;
use crate::lsn::Lsn;
use crate::pgoutput::{Relation, RelationColumn, RelationId, ReplicaIdentity, Row, TupleValue};
use crate::replication::PgReplicationConfig;
use crate::sql::{SqlSession, ident, literal};

/// One table being read.
#[derive(Debug)]
struct SnapshotTable {
    config: TableConfig,
    cursor: String,
    key_columns: Vec<String>,
    /// Rows read so far (part of the event ids).
    read: u64,
    done: bool,
}

/// The outbox being read, in id order.
#[derive(Debug)]
struct SnapshotOutbox {
    config: OutboxCapture,
    read: u64,
    done: bool,
}

const OUTBOX_CURSOR: &str = "tributary_snapshot_outbox";

/// Reads the outbox (first) and the snapshot tables, a batch at a time, in one
/// `REPEATABLE READ` transaction that imported the slot's snapshot.
#[derive(Debug)]
pub(crate) struct SnapshotReader {
    session: SqlSession,
    outbox: Option<SnapshotOutbox>,
    tables: Vec<SnapshotTable>,
    consistent_point: Lsn,
    time: DateTime<Utc>,
}

impl SnapshotReader {
    /// Imports `snapshot_name` and opens a cursor per table. Must run before the connection
    /// that created the slot runs its next command, which ends the exported snapshot.
    pub(crate) async fn open(
        connection: &PgReplicationConfig,
        snapshot_name: &str,
        tables: Vec<TableConfig>,
        outbox: Option<OutboxCapture>,
        consistent_point: Lsn,
        time: DateTime<Utc>,
    ) -> Result<Self> {
        let mut session = SqlSession::connect(connection).await?;
        session
            .query(&format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT {}",
                literal(snapshot_name)
            ))
            .await?;
        if let Some(outbox) = &outbox {
            session
                .query(&format!(
                    "DECLARE {OUTBOX_CURSOR} NO SCROLL CURSOR FOR SELECT * FROM {}.{} ORDER BY {}",
                    ident(&outbox.schema),
                    ident(&outbox.table),
                    ident(&outbox.id_column)
                ))
                .await?;
        }
        let mut opened = Vec::with_capacity(tables.len());
        for (i, config) in tables.into_iter().enumerate() {
            let key_columns = match &config.key_columns {
                Some(columns) => columns.clone(),
                None => {
                    super::state::table_primary_key(&mut session, &config.schema, &config.table)
                        .await?
                }
            };
            let cursor = format!("tributary_snapshot_{i}");
            session
                .query(&format!(
                    "DECLARE {cursor} NO SCROLL CURSOR FOR SELECT * FROM {}.{}",
                    ident(&config.schema),
                    ident(&config.table)
                ))
                .await?;
            opened.push(SnapshotTable {
                config,
                cursor,
                key_columns,
                read: 0,
                done: false,
            });
        }
        Ok(SnapshotReader {
            session,
            outbox: outbox.map(|config| SnapshotOutbox {
                config,
                read: 0,
                done: false,
            }),
            tables: opened,
            consistent_point,
            time,
        })
    }

    /// Whether the outbox and every table were read to their end.
    pub(crate) fn is_done(&self) -> bool {
        self.tables.iter().all(|t| t.done) && self.outbox.as_ref().is_none_or(|o| o.done)
    }

    /// The snapshot's position (the slot's consistent point).
    pub(crate) fn consistent_point(&self) -> Lsn {
        self.consistent_point
    }

    /// Up to `max` rows as messages, the outbox first, then table after table; empty once
    /// everything is done. Also the highest outbox id among them (to delete once published).
    pub(crate) async fn read(
        &mut self,
        max: usize,
        mapper: &Mapper,
    ) -> Result<(Vec<OutgoingMessage>, Option<i64>)> {
        let mut out = Vec::new();
        let mut outbox_max = None;
        if let Some(outbox) = self.outbox.as_mut().filter(|o| !o.done) {
            let result = self
                .session
                .query(&format!("FETCH FORWARD {max} FROM {OUTBOX_CURSOR}"))
                .await?;
            if result.rows.len() < max {
                outbox.done = true;
            }
            let relation = Arc::new(Relation {
                id: RelationId(0),
                namespace: outbox.config.schema.clone(),
                name: outbox.config.table.clone(),
                replica_identity: ReplicaIdentity::Default,
                columns: result
                    .columns
                    .iter()
                    .map(|c| RelationColumn {
                        is_key: c.name == outbox.config.id_column,
                        name: c.name.clone(),
                        type_oid: c.type_oid,
                        type_modifier: -1,
                    })
                    .collect(),
            });
            for values in result.rows {
                if values.len() != relation.columns.len() {
                    return Err(CdcError::protocol("outbox row does not match its columns"));
                }
                let values = values
                    .into_iter()
                    .map(|v| v.map_or(TupleValue::Null, TupleValue::Text))
                    .collect();
                let row = Row::from_parts(Arc::clone(&relation), values);
                let mapped = mapper.outbox_snapshot_row(
                    self.consistent_point,
                    self.time,
                    outbox.read,
                    &outbox.config,
                    &row,
                )?;
                outbox.read += 1;
                outbox_max = outbox_max.max(mapped.outbox_id);
                out.push(mapped.message);
            }
        }
        for table in self.tables.iter_mut().filter(|t| !t.done) {
            let wanted = max.saturating_sub(out.len());
            if wanted == 0 {
                break;
            }
            let result = self
                .session
                .query(&format!("FETCH FORWARD {wanted} FROM {}", table.cursor))
                .await?;
            if result.rows.len() < wanted {
                table.done = true;
            }
            if result.rows.is_empty() {
                continue;
            }
            let relation = Arc::new(Relation {
                id: RelationId(0),
                namespace: table.config.schema.clone(),
                name: table.config.table.clone(),
                replica_identity: ReplicaIdentity::Default,
                columns: result
                    .columns
                    .iter()
                    .map(|c| RelationColumn {
                        is_key: table.key_columns.contains(&c.name),
                        name: c.name.clone(),
                        type_oid: c.type_oid,
                        type_modifier: -1,
                    })
                    .collect(),
            });
            let width = relation.columns.len();
            for values in result.rows {
                if values.len() != width {
                    return Err(CdcError::protocol(
                        "snapshot row does not match its columns",
                    ));
                }
                let values = values
                    .into_iter()
                    .map(|v| v.map_or(TupleValue::Null, TupleValue::Text))
                    .collect();
                let row = Row::from_parts(Arc::clone(&relation), values);
                let mapped = mapper.snapshot_row(
                    self.consistent_point,
                    self.time,
                    &table.config,
                    table.read,
                    &row,
                )?;
                table.read += 1;
                out.push(mapped.message);
            }
        }
        Ok((out, outbox_max))
    }

    /// Ends the snapshot transaction.
    pub(crate) async fn finish(mut self) {
        let _ = self.session.query("COMMIT").await;
        self.session.close().await;
    }
}
