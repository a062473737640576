//! Row changes to outgoing messages, with the PostgreSQL capture's envelope.
//!
//! - **Table changes**: type `<table>.inserted|updated|deleted` (`<table>.snapshot` for the
//!   initial load), subject and partition key = the key columns' values joined with `:`,
//!   `aggregatetype` = the table, `time` = the commit time (seconds: the binlog has no finer
//!   commit time), data `{"operation", "schema", "table", "key", "new", "old",
//!   "unchanged_toast": [], "transaction": {"gtid", "binlog_file", "binlog_pos", "xid",
//!   "index"}}` — `schema` is the database; `old` is the before image of updates and deletes
//!   (`binlog_row_image=FULL`).
//! - **Outbox rows**: see [`crate::binlog`]'s module doc for the table; the row's payload
//!   as written, its `event_id`, `topic` and `message_key`. Only inserts are published.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use mysql_common::binlog::value::BinlogValue;
use mysql_common::value::Value as MyValue;
use serde_json::json;
use tributary_core::{Envelope, EventId, OutgoingMessage, Payload, Topic};

use super::config::BinlogConfig;
use super::decode::{RowImage, RowsKind, TableInfo, write_row_json, write_value_json};
use super::error::{BinlogError, Result};
use crate::capture::ids::IdSpace;
use crate::capture::mapping::unix_ms;
use crate::capture::{OutboxCapture, TableConfig, topic_for_name};
use crate::pgoutput::write_json_string;

/// The state table, never captured.
pub(crate) const STATE_TABLE: &str = "tributary_cdc_binlog";

/// The transaction a change belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TxInfo {
    /// `domain-server-seq` on MariaDB, `file:offset` of its first event elsewhere: the key
    /// of its event ids.
    pub(crate) id: String,
    pub(crate) gtid: Option<String>,
    pub(crate) file: String,
    /// Where the transaction's first event ends in `file`.
    pub(crate) offset: u64,
    pub(crate) time: DateTime<Utc>,
}

/// A message to publish, with the outbox row id it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mapped {
    pub(crate) message: OutgoingMessage,
    pub(crate) outbox_id: Option<u64>,
}

enum Target<'a> {
    Table(Option<&'a TableConfig>),
    Outbox(&'a OutboxCapture),
    Ignore,
}

/// Turns row changes into messages, following the configuration.
#[derive(Debug)]
pub(crate) struct Mapper {
    config: Arc<BinlogConfig>,
    ids: IdSpace,
    state_database: String,
}

impl Mapper {
    pub(crate) fn new(config: Arc<BinlogConfig>, state_database: String) -> Self {
        let ids = IdSpace::new("mysql-binlog", &state_database, &config.capture);
        Mapper {
            config,
            ids,
            state_database,
        }
    }

    fn target(&self, database: &str, table: &str) -> Target<'_> {
        if table == STATE_TABLE && database == self.state_database {
            return Target::Ignore;
        }
        if let Some(outbox) = &self.config.outbox
            && outbox.schema == database
            && outbox.table == table
        {
            return Target::Outbox(outbox);
        }
        match &self.config.tables {
            None => Target::Ignore,
            Some(tables) if tables.tables.is_empty() => Target::Table(None),
            Some(tables) => tables
                .tables
                .iter()
                .find(|t| t.schema == database && t.table == table)
                .map_or(Target::Ignore, |t| Target::Table(Some(t))),
        }
    }

    /// Whether changes of this table are published (so its rows must be decodable).
    pub(crate) fn captures(&self, database: &str, table: &str) -> bool {
        !matches!(self.target(database, table), Target::Ignore)
    }

    /// Whether a statement-logged change naming this table could be one we capture.
    pub(crate) fn captured_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .config
            .tables
            .iter()
            .flat_map(|t| &t.tables)
            .map(|t| t.table.to_lowercase())
            .collect();
        names.extend(self.config.outbox.iter().map(|o| o.table.to_lowercase()));
        names
    }

    /// The message for one row change, if its table is captured.
    pub(crate) fn change(
        &self,
        tx: &TxInfo,
        index: u64,
        table: &TableInfo,
        kind: RowsKind,
        before: Option<&RowImage>,
        after: Option<&RowImage>,
    ) -> Result<Option<Mapped>> {
        match self.target(&table.database, &table.table) {
            Target::Ignore => Ok(None),
            Target::Outbox(outbox) => match (kind, after) {
                (RowsKind::Insert, Some(row)) => {
                    let id = self.ids.keyed(tx.id.as_bytes(), index, 0, unix_ms(tx.time));
                    Ok(Some(self.outbox_row(id, outbox, table, row)?))
                }
                _ => Ok(None),
            },
            Target::Table(config) => {
                let (operation, new, old) = match kind {
                    RowsKind::Insert => ("inserted", after, None),
                    RowsKind::Update => ("updated", after, before),
                    RowsKind::Delete => ("deleted", None, before),
                };
                let id = self.ids.keyed(tx.id.as_bytes(), index, 0, unix_ms(tx.time));
                let mut transaction = String::with_capacity(128);
                transaction.push_str("{\"gtid\":");
                match &tx.gtid {
                    Some(gtid) => write_json_string(gtid, &mut transaction),
                    None => transaction.push_str("null"),
                }
                transaction.push_str(",\"binlog_file\":");
                write_json_string(&tx.file, &mut transaction);
                transaction.push_str(&format!(
                    ",\"binlog_pos\":{},\"index\":{index}}}",
                    tx.offset
                ));
                let message = self.table_event(
                    id,
                    tx.time,
                    config,
                    table,
                    operation,
                    new.or(old),
                    new,
                    old,
                    &transaction,
                )?;
                Ok(Some(Mapped {
                    message,
                    outbox_id: None,
                }))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn table_event(
        &self,
        id: EventId,
        time: DateTime<Utc>,
        config: Option<&TableConfig>,
        table: &TableInfo,
        operation: &str,
        key_row: Option<&RowImage>,
        new: Option<&RowImage>,
        old: Option<&RowImage>,
        transaction: &str,
    ) -> Result<OutgoingMessage> {
        let prefix = config
            .and_then(|t| t.event_prefix.as_deref())
            .unwrap_or(&table.table);
        let topic = config
            .and_then(|t| t.topic.clone())
            .unwrap_or_else(|| topic_for_name(&table.table));
        let short = match operation {
            "inserted" => "insert",
            "updated" => "update",
            "deleted" => "delete",
            other => other,
        };
        let mut data = String::with_capacity(256);
        data.push_str("{\"operation\":");
        write_json_string(short, &mut data);
        data.push_str(",\"schema\":");
        write_json_string(&table.database, &mut data);
        data.push_str(",\"table\":");
        write_json_string(&table.table, &mut data);
        data.push_str(",\"key\":");
        let key_text = match key_row {
            Some(row) => self.write_key(config, table, row, &mut data)?,
            None => {
                data.push_str("null");
                None
            }
        };
        data.push_str(",\"new\":");
        match new {
            Some(row) => write_row_json(table, row, &mut data)?,
            None => data.push_str("null"),
        }
        data.push_str(",\"old\":");
        match old {
            Some(row) => write_row_json(table, row, &mut data)?,
            None => data.push_str("null"),
        }
        data.push_str(",\"unchanged_toast\":[],\"transaction\":");
        data.push_str(transaction);
        data.push('}');
        let data = Payload::from_json_str(data)
            .map_err(|e| BinlogError::decode(format!("event data: {e}")))?;
        let partition_key = key_text.clone().unwrap_or_else(|| table.table.clone());
        let envelope = Envelope {
            id,
            source: self.config.name.clone(),
            event_type: format!("{prefix}.{operation}"),
            subject: key_text,
            time,
            data,
            aggregate_type: Some(table.table.clone()),
            sequence: None,
            partition_key: Some(partition_key),
            correlation_id: None,
            causation_id: None,
            traceparent: None,
            tracestate: None,
            schema_version: 1,
        };
        Ok(OutgoingMessage::from_envelope(topic, &envelope))
    }

    /// Writes the key object and returns the key text (values joined with `:`).
    fn write_key(
        &self,
        config: Option<&TableConfig>,
        table: &TableInfo,
        row: &RowImage,
        out: &mut String,
    ) -> Result<Option<String>> {
        let indexes: Vec<usize> = match config.and_then(|t| t.key_columns.as_deref()) {
            Some(names) => names
                .iter()
                .map(|name| {
                    table.column(name).ok_or_else(|| {
                        BinlogError::decode(format!(
                            "key column {name} is not a column of {}.{} any more",
                            table.database, table.table
                        ))
                    })
                })
                .collect::<Result<_>>()?,
            None => table.primary_key.clone(),
        };
        if indexes.is_empty() {
            out.push_str("{}");
            return Ok(None);
        }
        let mut text = String::new();
        out.push('{');
        for (n, &i) in indexes.iter().enumerate() {
            let column = &table.columns[i];
            let value = row.values.get(i).and_then(Option::as_ref);
            if n > 0 {
                out.push(',');
                text.push(':');
            }
            write_json_string(&column.name, out);
            out.push(':');
            write_value_json(column, value, out)?;
            text.push_str(&key_part(value));
        }
        out.push('}');
        Ok(Some(text))
    }

    /// An outbox row's own envelope (or, for a row that cannot be published as written, an
    /// error envelope on the invalid topic: never dropped).
    fn outbox_row(
        &self,
        fallback_id: EventId,
        outbox: &OutboxCapture,
        table: &TableInfo,
        row: &RowImage,
    ) -> Result<Mapped> {
        let value = |name: &str| {
            table
                .column(name)
                .and_then(|i| row.values.get(i))
                .and_then(Option::as_ref)
        };
        let text = |name: &str| match value(name) {
            Some(BinlogValue::Value(MyValue::Bytes(bytes))) => {
                std::str::from_utf8(bytes).ok().map(str::to_owned)
            }
            Some(BinlogValue::Value(MyValue::Int(i))) => Some(i.to_string()),
            Some(BinlogValue::Value(MyValue::UInt(u))) => Some(u.to_string()),
            _ => None,
        };
        let outbox_id = text(&outbox.id_column).and_then(|id| id.parse::<u64>().ok());
        let payload = match value(&outbox.payload_column) {
            Some(BinlogValue::Value(MyValue::Bytes(bytes))) => Some(bytes.clone()),
            Some(BinlogValue::Jsonb(jsonb)) => serde_json::Value::try_from(jsonb.clone())
                .ok()
                .map(|v| v.to_string().into_bytes()),
            _ => None,
        };
        let Some(payload) = payload else {
            let mut row_json = String::new();
            write_row_json(table, row, &mut row_json)?;
            let data = json!({
                "error": format!("outbox row without a readable {} column", outbox.payload_column),
                "row": serde_json::from_str::<serde_json::Value>(&row_json)
                    .map_err(|e| BinlogError::decode(e.to_string()))?,
            });
            let envelope = Envelope::new(
                self.config.name.clone(),
                "tributary.cdc.invalid_outbox_row",
                Payload::from_value(&data).map_err(|e| BinlogError::decode(e.to_string()))?,
            )
            .with_id(fallback_id);
            return Ok(Mapped {
                message: OutgoingMessage::from_envelope(
                    self.config.invalid_topic.clone(),
                    &envelope,
                ),
                outbox_id,
            });
        };
        let envelope = Envelope::from_json(&payload).ok();
        let id = text(&outbox.event_id_column)
            .and_then(|id| id.trim().parse::<EventId>().ok())
            .or(envelope.as_ref().map(|e| e.id))
            .unwrap_or(fallback_id);
        let topic = text(&outbox.topic_column)
            .and_then(|t| Topic::new(t).ok())
            .unwrap_or_else(|| self.config.invalid_topic.clone());
        let key = text(&outbox.key_column)
            .or_else(|| envelope.as_ref().map(|e| e.ordering_key().into_owned()))
            .unwrap_or_else(|| id.to_string());
        Ok(Mapped {
            message: OutgoingMessage {
                topic,
                key,
                id,
                payload,
            },
            outbox_id,
        })
    }

    /// A row of the initial snapshot, its values already as JSON text by column.
    pub(crate) fn snapshot_row(
        &self,
        snapshot: &str,
        time: DateTime<Utc>,
        config: &TableConfig,
        ordinal: u64,
        columns: &[(String, String)],
        key_columns: &[String],
    ) -> Result<Mapped> {
        let qualified = format!("snapshot:{snapshot}:{}.{}", config.schema, config.table);
        let id = self
            .ids
            .keyed(qualified.as_bytes(), ordinal, 0, unix_ms(time));
        let mut data = String::with_capacity(256);
        data.push_str("{\"operation\":\"snapshot\",\"schema\":");
        write_json_string(&config.schema, &mut data);
        data.push_str(",\"table\":");
        write_json_string(&config.table, &mut data);
        data.push_str(",\"key\":{");
        let mut key_text: Option<String> = None;
        let mut first = true;
        for name in key_columns {
            if let Some((_, value)) = columns.iter().find(|(c, _)| c == name) {
                if !first {
                    data.push(',');
                }
                first = false;
                write_json_string(name, &mut data);
                data.push(':');
                data.push_str(value);
                let part = serde_json::from_str::<serde_json::Value>(value)
                    .map(|v| match v {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    })
                    .unwrap_or_default();
                match key_text.as_mut() {
                    Some(text) => {
                        text.push(':');
                        text.push_str(&part);
                    }
                    None => key_text = Some(part),
                }
            }
        }
        data.push_str("},\"new\":{");
        for (i, (name, value)) in columns.iter().enumerate() {
            if i > 0 {
                data.push(',');
            }
            write_json_string(name, &mut data);
            data.push(':');
            data.push_str(value);
        }
        data.push_str("},\"old\":null,\"unchanged_toast\":[],\"transaction\":null,\"snapshot\":{\"position\":");
        write_json_string(snapshot, &mut data);
        data.push_str("}}");
        let data = Payload::from_json_str(data)
            .map_err(|e| BinlogError::decode(format!("snapshot data: {e}")))?;
        let prefix = config.event_prefix.as_deref().unwrap_or(&config.table);
        let topic = config
            .topic
            .clone()
            .unwrap_or_else(|| topic_for_name(&config.table));
        let envelope = Envelope {
            id,
            source: self.config.name.clone(),
            event_type: format!("{prefix}.snapshot"),
            subject: key_text.clone(),
            time,
            data,
            aggregate_type: Some(config.table.clone()),
            sequence: None,
            partition_key: Some(key_text.unwrap_or_else(|| config.table.clone())),
            correlation_id: None,
            causation_id: None,
            traceparent: None,
            tracestate: None,
            schema_version: 1,
        };
        Ok(Mapped {
            message: OutgoingMessage::from_envelope(topic, &envelope),
            outbox_id: None,
        })
    }

    /// An outbox row that existed when the capture started (its snapshot).
    pub(crate) fn outbox_snapshot_row(
        &self,
        snapshot: &str,
        time: DateTime<Utc>,
        ordinal: u64,
        outbox: &OutboxCapture,
        columns: &[(String, Option<Vec<u8>>)],
    ) -> Mapped {
        let get = |name: &str| {
            columns
                .iter()
                .find(|(c, _)| c == name)
                .and_then(|(_, v)| v.as_ref())
        };
        let text = |name: &str| get(name).and_then(|b| std::str::from_utf8(b).ok());
        let qualified = format!("snapshot:{snapshot}:{}.{}", outbox.schema, outbox.table);
        let fallback = self
            .ids
            .keyed(qualified.as_bytes(), ordinal, 0, unix_ms(time));
        let payload = get(&outbox.payload_column).cloned().unwrap_or_default();
        let envelope = Envelope::from_json(&payload).ok();
        let id = text(&outbox.event_id_column)
            .and_then(|id| id.trim().parse::<EventId>().ok())
            .or(envelope.as_ref().map(|e| e.id))
            .unwrap_or(fallback);
        let topic = text(&outbox.topic_column)
            .and_then(|t| Topic::new(t).ok())
            .unwrap_or_else(|| self.config.invalid_topic.clone());
        let key = text(&outbox.key_column)
            .map(str::to_owned)
            .or_else(|| envelope.as_ref().map(|e| e.ordering_key().into_owned()))
            .unwrap_or_else(|| id.to_string());
        Mapped {
            message: OutgoingMessage {
                topic,
                key,
                id,
                payload,
            },
            outbox_id: text(&outbox.id_column).and_then(|id| id.parse().ok()),
        }
    }
}

/// A key column's value as text, for subjects and partition keys.
fn key_part(value: Option<&BinlogValue<'_>>) -> String {
    match value {
        Some(BinlogValue::Value(MyValue::Int(i))) => i.to_string(),
        Some(BinlogValue::Value(MyValue::UInt(u))) => u.to_string(),
        Some(BinlogValue::Value(MyValue::Bytes(bytes))) => {
            String::from_utf8_lossy(bytes).into_owned()
        }
        Some(BinlogValue::Value(MyValue::Double(f))) => f.to_string(),
        Some(BinlogValue::Value(MyValue::Float(f))) => f.to_string(),
        Some(BinlogValue::Value(MyValue::Date(y, mo, d, h, mi, s, us))) => {
            format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}")
        }
        _ => String::new(),
    }
}
