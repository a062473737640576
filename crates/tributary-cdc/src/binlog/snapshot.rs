//! The initial snapshot: the captured tables' rows as of one binlog position, read in one
//! `START TRANSACTION WITH CONSISTENT SNAPSHOT`. MariaDB reports the binlog position that
//! transaction sees (`binlog_snapshot_file`, `binlog_snapshot_position`, and its GTID through
//! `BINLOG_GTID_POS`) without locking anything: the snapshot shows exactly the transactions
//! committed before that position, the stream exactly those after it.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use mysql_async::consts::{ColumnFlags, ColumnType};
use mysql_async::prelude::*;
use mysql_async::{Column, Conn, Row, Value};
use tributary_core::OutgoingMessage;

use super::config::BinlogConfig;
use super::error::{BinlogError, Result};
use super::mapping::Mapper;
use super::position::BinlogPosition;
use super::state::{self, ServerInfo, ident, literal};
use crate::capture::{OutboxCapture, TableConfig};
use crate::pgoutput::write_json_string;

enum Source {
    Table(TableConfig),
    Outbox(OutboxCapture),
}

/// An open snapshot transaction and how far it was read.
pub(crate) struct Snapshot {
    conn: Conn,
    position: BinlogPosition,
    label: String,
    time: DateTime<Utc>,
    mapper: Arc<Mapper>,
    sources: Vec<Source>,
    /// (source index, rows read of it)
    at: (usize, u64),
    keys: Option<Vec<String>>,
}

impl Snapshot {
    pub(crate) async fn open(
        config: &BinlogConfig,
        mapper: Arc<Mapper>,
        server: &ServerInfo,
    ) -> Result<Self> {
        if !server.mariadb {
            return Err(BinlogError::Config {
                reason: format!(
                    "the initial snapshot needs MariaDB's binlog_snapshot_position ({} has none); \
                     capture without --snapshot",
                    server.version
                ),
            });
        }
        let mut conn = state::connect(&config.url).await?;
        for sql in [
            "SET SESSION time_zone = '+00:00'",
            "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            "START TRANSACTION WITH CONSISTENT SNAPSHOT",
        ] {
            state::exec(&mut conn, sql).await?;
        }
        let status = state::rows(&mut conn, "SHOW STATUS LIKE 'binlog_snapshot_%'").await?;
        let value = |name: &str| {
            status.iter().find_map(|row| {
                (row.get::<String, _>(0).as_deref() == Some(name))
                    .then(|| row.get::<String, _>(1))
                    .flatten()
            })
        };
        let file = value("Binlog_snapshot_file")
            .ok_or_else(|| BinlogError::decode("no binlog_snapshot_file"))?;
        let offset: u64 = value("Binlog_snapshot_position")
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| BinlogError::decode("no binlog_snapshot_position"))?;
        let sql = format!("SELECT BINLOG_GTID_POS({}, {offset})", literal(&file));
        let gtids: Option<Option<String>> = conn
            .query_first(&sql)
            .await
            .map_err(|e| BinlogError::driver(&sql, e))?;
        let gtids = gtids
            .flatten()
            .unwrap_or_default()
            .parse()
            .map_err(BinlogError::decode)?;
        let position = BinlogPosition {
            gtids: Some(gtids),
            file,
            offset,
        };
        let mut sources: Vec<Source> = config
            .tables
            .iter()
            .flat_map(|t| &t.tables)
            .filter(|t| t.snapshot)
            .cloned()
            .map(Source::Table)
            .collect();
        if let Some(outbox) = config.outbox.as_ref().filter(|o| o.snapshot) {
            sources.push(Source::Outbox(outbox.clone()));
        }
        Ok(Snapshot {
            conn,
            label: position.to_string(),
            position,
            time: Utc::now(),
            mapper,
            sources,
            at: (0, 0),
            keys: None,
        })
    }

    pub(crate) fn position(&self) -> &BinlogPosition {
        &self.position
    }

    /// The next rows, up to `max`; empty when every table was read.
    pub(crate) async fn read(&mut self, max: usize) -> Result<(Vec<OutgoingMessage>, Vec<u64>)> {
        while let Some(source) = self.sources.get(self.at.0) {
            let (schema, table, configured) = match source {
                Source::Table(t) => (t.schema.clone(), t.table.clone(), t.key_columns.clone()),
                Source::Outbox(o) => (
                    o.schema.clone(),
                    o.table.clone(),
                    Some(vec![o.id_column.clone()]),
                ),
            };
            if self.keys.is_none() {
                let keys = match configured {
                    Some(keys) => keys,
                    None => primary_key(&mut self.conn, &schema, &table).await?,
                };
                self.keys = Some(keys);
            }
            let keys = self.keys.clone().unwrap_or_default();
            let order = if keys.is_empty() {
                String::new()
            } else {
                format!(
                    " ORDER BY {}",
                    keys.iter().map(|k| ident(k)).collect::<Vec<_>>().join(", ")
                )
            };
            let sql = format!(
                "SELECT * FROM {}.{}{order} LIMIT {max} OFFSET {}",
                ident(&schema),
                ident(&table),
                self.at.1
            );
            let rows: Vec<Row> = state::rows(&mut self.conn, &sql).await?;
            if rows.is_empty() {
                self.at = (self.at.0 + 1, 0);
                self.keys = None;
                continue;
            }
            let mut messages = Vec::with_capacity(rows.len());
            let mut outbox_ids = Vec::new();
            for row in rows {
                let ordinal = self.at.1;
                self.at.1 += 1;
                let columns = row.columns();
                let values = row.unwrap();
                let mapped = match source {
                    Source::Table(config) => {
                        let json: Vec<(String, String)> = columns
                            .iter()
                            .zip(&values)
                            .map(|(c, v)| (c.name_str().into_owned(), text_value_json(c, v)))
                            .collect();
                        self.mapper.snapshot_row(
                            &self.label,
                            self.time,
                            config,
                            ordinal,
                            &json,
                            &keys,
                        )?
                    }
                    Source::Outbox(outbox) => {
                        let raw: Vec<(String, Option<Vec<u8>>)> = columns
                            .iter()
                            .zip(values)
                            .map(|(c, v)| {
                                let bytes = match v {
                                    Value::Bytes(b) => Some(b),
                                    Value::NULL => None,
                                    other => Some(other.as_sql(true).into_bytes()),
                                };
                                (c.name_str().into_owned(), bytes)
                            })
                            .collect();
                        self.mapper.outbox_snapshot_row(
                            &self.label,
                            self.time,
                            ordinal,
                            outbox,
                            &raw,
                        )
                    }
                };
                outbox_ids.extend(mapped.outbox_id);
                messages.push(mapped.message);
            }
            return Ok((messages, outbox_ids));
        }
        Ok((Vec::new(), Vec::new()))
    }
}

async fn primary_key(conn: &mut Conn, schema: &str, table: &str) -> Result<Vec<String>> {
    let sql = format!(
        "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE \
         WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {} AND CONSTRAINT_NAME = 'PRIMARY' \
         ORDER BY ORDINAL_POSITION",
        literal(schema),
        literal(table)
    );
    conn.query(&sql)
        .await
        .map_err(|e| BinlogError::driver(&sql, e))
}

/// A value of the text protocol as JSON, in the shapes the binlog decoder writes (see
/// [`super::decode`]): the session runs with `time_zone = '+00:00'`, so `TIMESTAMP` text is
/// UTC.
pub(crate) fn text_value_json(column: &Column, value: &Value) -> String {
    let mut out = String::new();
    let bytes = match value {
        Value::NULL => return "null".into(),
        Value::Bytes(bytes) => bytes.as_slice(),
        other => {
            write_json_string(&other.as_sql(true), &mut out);
            return out;
        }
    };
    let text = std::str::from_utf8(bytes).ok();
    let binary = column.character_set() == 63;
    match column.column_type() {
        ColumnType::MYSQL_TYPE_TINY
        | ColumnType::MYSQL_TYPE_SHORT
        | ColumnType::MYSQL_TYPE_LONG
        | ColumnType::MYSQL_TYPE_INT24
        | ColumnType::MYSQL_TYPE_LONGLONG
        | ColumnType::MYSQL_TYPE_YEAR => match text {
            Some(t) if t.parse::<i128>().is_ok() => out.push_str(t),
            _ => write_json_string(&String::from_utf8_lossy(bytes), &mut out),
        },
        ColumnType::MYSQL_TYPE_FLOAT | ColumnType::MYSQL_TYPE_DOUBLE => {
            match text
                .and_then(|t| t.parse::<f64>().ok())
                .and_then(serde_json::Number::from_f64)
            {
                Some(n) => out.push_str(&n.to_string()),
                None => write_json_string(&String::from_utf8_lossy(bytes), &mut out),
            }
        }
        ColumnType::MYSQL_TYPE_BIT => {
            let n = bytes
                .iter()
                .fold(0u128, |acc, b| (acc << 8) | u128::from(*b));
            out.push_str(&n.to_string());
        }
        ColumnType::MYSQL_TYPE_TIMESTAMP | ColumnType::MYSQL_TYPE_TIMESTAMP2 => {
            let t = String::from_utf8_lossy(bytes);
            write_json_string(&format!("{t}+00"), &mut out);
        }
        ColumnType::MYSQL_TYPE_JSON => match serde_json::from_slice::<serde_json::Value>(bytes) {
            Ok(v) => out.push_str(&v.to_string()),
            Err(_) => write_json_string(&String::from_utf8_lossy(bytes), &mut out),
        },
        ColumnType::MYSQL_TYPE_STRING
        | ColumnType::MYSQL_TYPE_VAR_STRING
        | ColumnType::MYSQL_TYPE_VARCHAR
        | ColumnType::MYSQL_TYPE_BLOB
        | ColumnType::MYSQL_TYPE_TINY_BLOB
        | ColumnType::MYSQL_TYPE_MEDIUM_BLOB
        | ColumnType::MYSQL_TYPE_LONG_BLOB
        | ColumnType::MYSQL_TYPE_GEOMETRY
            if binary
                && !column
                    .flags()
                    .intersects(ColumnFlags::ENUM_FLAG | ColumnFlags::SET_FLAG) =>
        {
            out.push_str("\"\\\\x");
            for b in bytes {
                out.push_str(&format!("{b:02x}"));
            }
            out.push('"');
        }
        _ => write_json_string(&String::from_utf8_lossy(bytes), &mut out),
    }
    out
}
