//! Decoded changes to outgoing messages: the envelope of each mode.
//!
//! - **Table changes**: type `<table>.inserted|updated|deleted|truncated` (`<table>.snapshot`
//!   for the initial load), subject and partition key = the key columns' values joined with
//!   `:`, `aggregatetype` = the table, `time` = the commit time, and data
//!   `{"operation", "schema", "table", "key", "new", "old", "unchanged_toast", "transaction":
//!   {"xid", "commit_lsn", "index"}}` (see the module doc of `capture`).
//! - **Outbox rows**: the row's own envelope bytes, its `event_id`, `topic` and `message_key`.
//!   Only inserts; updates, deletes and truncates of the outbox table are never published.
//! - **Logical messages**: a payload that is a CloudEvents envelope is published as written
//!   (its own id, type and key); any other payload becomes the `data` of a new envelope (JSON
//!   as is, other UTF-8 text as a JSON string, other bytes as a `\x…` hex string).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use tributary_core::{Envelope, EventId, OutgoingMessage, Payload, Topic};

use super::config::{
    CdcConfig, HEARTBEAT_PREFIX, MessageRoute, OutboxCapture, TableConfig, topic_for_name,
};
use super::error::{CdcError, Result};
use super::ids::IdSpace;
use crate::lsn::Lsn;
use crate::pgoutput::{
    LogicalMessage, OldRow, PgTimestamp, Relation, Row, RowChange, Truncate, TupleValue, Xid,
    type_oid,
};

/// The transaction a change belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TxContext {
    pub(crate) xid: Xid,
    pub(crate) commit_lsn: Lsn,
    pub(crate) commit_time: PgTimestamp,
}

impl TxContext {
    fn time(&self) -> DateTime<Utc> {
        self.commit_time.to_utc().unwrap_or_else(Utc::now)
    }
}

/// A message to publish, with the outbox row id it came from (for deleting published rows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mapped {
    pub(crate) message: OutgoingMessage,
    pub(crate) outbox_id: Option<i64>,
}

impl Mapped {
    fn plain(message: OutgoingMessage) -> Self {
        Mapped {
            message,
            outbox_id: None,
        }
    }
}

/// What a table is to the capture.
enum Target<'a> {
    /// Row changes become events (with this table's settings, if it has any).
    Table(Option<&'a TableConfig>),
    /// The outbox table.
    Outbox(&'a OutboxCapture),
    /// Not captured.
    Ignore,
}

/// Turns changes into outgoing messages, following the configuration.
#[derive(Debug)]
pub(crate) struct Mapper {
    config: Arc<CdcConfig>,
    ids: IdSpace,
    /// Primary key columns by (schema, table), read from the catalog when streaming starts.
    primary_keys: HashMap<(String, String), Vec<String>>,
}

impl Mapper {
    pub(crate) fn new(
        config: Arc<CdcConfig>,
        ids: IdSpace,
        primary_keys: HashMap<(String, String), Vec<String>>,
    ) -> Self {
        Mapper {
            config,
            ids,
            primary_keys,
        }
    }

    fn target(&self, schema: &str, table: &str) -> Target<'_> {
        if schema == self.config.state_schema && table == super::state::STATE_TABLE {
            return Target::Ignore;
        }
        if let Some(outbox) = &self.config.outbox
            && outbox.matches(schema, table)
        {
            return Target::Outbox(outbox);
        }
        match &self.config.tables {
            None => Target::Ignore,
            Some(tables) if tables.tables.is_empty() => Target::Table(None),
            Some(tables) => tables
                .tables
                .iter()
                .find(|t| t.matches(schema, table))
                .map_or(Target::Ignore, |t| Target::Table(Some(t))),
        }
    }

    /// The message for one row change, if its table is captured. `index` is the change's
    /// place in its transaction.
    pub(crate) fn change(
        &self,
        tx: &TxContext,
        index: u32,
        change: &RowChange,
    ) -> Result<Option<Mapped>> {
        let relation = change.relation();
        match self.target(&relation.namespace, &relation.name) {
            Target::Ignore => Ok(None),
            Target::Outbox(outbox) => match change {
                RowChange::Insert { new } => Ok(Some(self.outbox_row(tx, index, outbox, new)?)),
                // Deleting published rows (ours or anyone's) and fixing rows are not events.
                RowChange::Update { .. } | RowChange::Delete { .. } => Ok(None),
            },
            Target::Table(table) => {
                let (operation, new, old) = match change {
                    RowChange::Insert { new } => ("inserted", Some(new), None),
                    RowChange::Update { new, old } => ("updated", Some(new), old.as_ref()),
                    RowChange::Delete { old } => ("deleted", None, Some(old)),
                };
                let key_row = new.or(old.map(OldRow::row));
                let id = self.ids.change(tx.commit_lsn, index, 0, unix_ms(tx.time()));
                let event = TableEvent {
                    table,
                    relation,
                    operation,
                    key_row,
                    new,
                    old,
                    transaction: Some((tx, index)),
                    extra: Vec::new(),
                };
                Ok(Some(Mapped::plain(self.table_event(
                    id,
                    tx.time(),
                    event,
                )?)))
            }
        }
    }

    /// One message per captured table of a truncate.
    pub(crate) fn truncate(
        &self,
        tx: &TxContext,
        index: u32,
        relations: &[Arc<Relation>],
        truncate: &Truncate,
    ) -> Result<Vec<Mapped>> {
        let mut out = Vec::new();
        for (sub, relation) in relations.iter().enumerate() {
            let Target::Table(table) = self.target(&relation.namespace, &relation.name) else {
                continue;
            };
            let sub = u32::try_from(sub).unwrap_or(u32::MAX);
            let id = self
                .ids
                .change(tx.commit_lsn, index, sub, unix_ms(tx.time()));
            let event = TableEvent {
                table,
                relation,
                operation: "truncated",
                key_row: None,
                new: None,
                old: None,
                transaction: Some((tx, index)),
                extra: vec![
                    ("cascade", truncate.cascade.into()),
                    ("restart_identity", truncate.restart_identity.into()),
                ],
            };
            out.push(Mapped::plain(self.table_event(id, tx.time(), event)?));
        }
        Ok(out)
    }

    /// The message for a transactional logical message, if its prefix is captured.
    pub(crate) fn message(
        &self,
        tx: &TxContext,
        index: u32,
        message: &LogicalMessage,
    ) -> Result<Option<Mapped>> {
        let Some(capture) = &self.config.messages else {
            return Ok(None);
        };
        if message.prefix == HEARTBEAT_PREFIX {
            return Ok(None);
        }
        let route = match capture.routes.iter().find(|r| r.prefix == message.prefix) {
            Some(route) => route.clone(),
            None if capture.publish_unrouted => {
                MessageRoute::new(message.prefix.clone(), topic_for_name(&message.prefix))
            }
            None => return Ok(None),
        };
        // A whole envelope: published exactly as the application wrote it.
        if let Ok(envelope) = Envelope::from_json(&message.content) {
            return Ok(Some(Mapped::plain(OutgoingMessage {
                topic: route.topic,
                key: envelope.ordering_key().into_owned(),
                id: envelope.id,
                payload: message.content.clone(),
            })));
        }
        let data = match std::str::from_utf8(&message.content) {
            Ok(text) => Payload::from_json_str(text)
                .or_else(|_| Payload::from_value(&Value::String(text.to_owned()))),
            Err(_) => Payload::from_value(&Value::String(hex(&message.content))),
        }
        .map_err(|e| CdcError::protocol(format!("logical message payload: {e}")))?;
        let time = tx.time();
        let envelope = Envelope::new(
            self.config.name.clone(),
            route
                .event_type
                .clone()
                .unwrap_or_else(|| message.prefix.clone()),
            data,
        )
        .with_id(self.ids.change(tx.commit_lsn, index, 0, unix_ms(time)))
        .with_partition_key(
            route
                .partition_key
                .clone()
                .unwrap_or_else(|| message.prefix.clone()),
        );
        let envelope = Envelope { time, ..envelope };
        Ok(Some(Mapped::plain(OutgoingMessage::from_envelope(
            route.topic,
            &envelope,
        ))))
    }

    /// The message for one row of the initial snapshot.
    pub(crate) fn snapshot_row(
        &self,
        consistent_point: Lsn,
        time: DateTime<Utc>,
        table: &TableConfig,
        ordinal: u64,
        row: &Row,
    ) -> Result<Mapped> {
        let qualified = format!("{}.{}", table.schema, table.table);
        let id = self
            .ids
            .snapshot(consistent_point, &qualified, ordinal, unix_ms(time));
        let event = TableEvent {
            table: Some(table),
            relation: row.relation(),
            operation: "snapshot",
            key_row: Some(row),
            new: Some(row),
            old: None,
            transaction: None,
            extra: vec![(
                "snapshot",
                json!({"consistent_point": consistent_point.to_string()}),
            )],
        };
        Ok(Mapped::plain(self.table_event(id, time, event)?))
    }

    fn key_columns(&self, table: Option<&TableConfig>, relation: &Relation) -> Vec<String> {
        if let Some(columns) = table.and_then(|t| t.key_columns.clone()) {
            return columns;
        }
        if let Some(columns) = self
            .primary_keys
            .get(&(relation.namespace.clone(), relation.name.clone()))
        {
            return columns.clone();
        }
        relation
            .columns
            .iter()
            .filter(|c| c.is_key)
            .map(|c| c.name.clone())
            .collect()
    }

    fn table_event(
        &self,
        id: EventId,
        time: DateTime<Utc>,
        event: TableEvent<'_>,
    ) -> Result<OutgoingMessage> {
        let relation = event.relation;
        let prefix = event
            .table
            .and_then(|t| t.event_prefix.clone())
            .unwrap_or_else(|| relation.name.clone());
        let topic = event
            .table
            .and_then(|t| t.topic.clone())
            .unwrap_or_else(|| topic_for_name(&relation.name));
        let operation = match event.operation {
            "inserted" => "insert",
            "updated" => "update",
            "deleted" => "delete",
            "truncated" => "truncate",
            other => other,
        };
        let mut data = Map::new();
        data.insert("operation".into(), operation.into());
        data.insert("schema".into(), relation.namespace.clone().into());
        data.insert("table".into(), relation.name.clone().into());
        let mut key_text = None;
        match event.key_row {
            Some(row) => {
                let columns = self.key_columns(event.table, relation);
                let (key, text) = key_of(row, &columns)?;
                data.insert("key".into(), Value::Object(key));
                key_text = text;
            }
            None => {
                data.insert("key".into(), Value::Null);
            }
        }
        data.insert(
            "new".into(),
            event
                .new
                .map(|row| row.to_json().map(Value::Object))
                .transpose()?
                .unwrap_or(Value::Null),
        );
        data.insert(
            "old".into(),
            event
                .old
                .map(|old| match old {
                    OldRow::Key(row) => row.key_to_json(),
                    OldRow::Full(row) => row.to_json(),
                })
                .transpose()?
                .map_or(Value::Null, Value::Object),
        );
        data.insert(
            "unchanged_toast".into(),
            event
                .new
                .map(|row| row.unchanged_toast_columns().map(Value::from).collect())
                .unwrap_or_else(|| Value::Array(Vec::new())),
        );
        data.insert(
            "transaction".into(),
            event.transaction.map_or(Value::Null, |(tx, index)| {
                json!({"xid": tx.xid.0, "commit_lsn": tx.commit_lsn.to_string(), "index": index})
            }),
        );
        for (name, value) in event.extra {
            data.insert(name.into(), value);
        }
        let payload = Payload::from_value(&Value::Object(data))
            .map_err(|e| CdcError::protocol(format!("event data: {e}")))?;
        let mut envelope = Envelope::new(
            self.config.name.clone(),
            format!("{prefix}.{}", event.operation),
            payload,
        )
        .with_id(id)
        .with_aggregate_type(relation.name.clone());
        envelope.time = time;
        match key_text {
            Some(key) => {
                envelope = envelope.with_subject(key.clone()).with_partition_key(key);
            }
            // No key: the table is one ordered stream.
            None => envelope = envelope.with_partition_key(relation.name.clone()),
        }
        Ok(OutgoingMessage::from_envelope(topic, &envelope))
    }

    fn outbox_row(
        &self,
        tx: &TxContext,
        index: u32,
        outbox: &OutboxCapture,
        row: &Row,
    ) -> Result<Mapped> {
        let text = |column: &str| match row.get(column) {
            Some(TupleValue::Text(text)) => Some(text.as_str()),
            _ => None,
        };
        let outbox_id = text(&outbox.id_column).and_then(|id| id.parse::<i64>().ok());
        let payload = match (
            row.get(&outbox.payload_column),
            payload_is_bytea(row, outbox),
        ) {
            (Some(TupleValue::Text(text)), true) => unhex(text),
            (Some(TupleValue::Text(text)), false) => Some(text.as_bytes().to_vec()),
            _ => None,
        };
        let fallback_id = || self.ids.change(tx.commit_lsn, index, 0, unix_ms(tx.time()));
        let Some(payload) = payload else {
            // Nothing to publish as written; say so where operators look, rather than drop it.
            let data = json!({
                "error": format!("outbox row without a readable {} column", outbox.payload_column),
                "row": row.to_json()?,
            });
            let envelope = Envelope::new(
                self.config.name.clone(),
                "tributary.cdc.invalid_outbox_row",
                Payload::from_value(&data)
                    .map_err(|e| CdcError::protocol(format!("invalid outbox row: {e}")))?,
            )
            .with_id(fallback_id());
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
            .and_then(|id| id.parse::<EventId>().ok())
            .or(envelope.as_ref().map(|e| e.id))
            .unwrap_or_else(fallback_id);
        let topic = text(&outbox.topic_column)
            .and_then(|topic| Topic::new(topic).ok())
            .unwrap_or_else(|| self.config.invalid_topic.clone());
        let key = text(&outbox.key_column)
            .map(str::to_owned)
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
}

/// The parts of one table event.
struct TableEvent<'a> {
    table: Option<&'a TableConfig>,
    relation: &'a Relation,
    /// `inserted`, `updated`, `deleted`, `truncated` or `snapshot`.
    operation: &'static str,
    key_row: Option<&'a Row>,
    new: Option<&'a Row>,
    old: Option<&'a OldRow>,
    transaction: Option<(&'a TxContext, u32)>,
    /// More fields of the data (a truncate's options, a snapshot's position).
    extra: Vec<(&'static str, Value)>,
}

/// The key columns of `row` as JSON, and their values joined with `:` (`None` without key
/// columns).
fn key_of(row: &Row, columns: &[String]) -> Result<(Map<String, Value>, Option<String>)> {
    let mut object = Map::new();
    let mut parts = Vec::with_capacity(columns.len());
    for name in columns {
        let Some((column, value)) = row.columns().find(|(c, _)| &c.name == name) else {
            continue;
        };
        if let Some(json) = crate::pgoutput::value_to_json(column, value)? {
            object.insert(name.clone(), json);
        }
        parts.push(match value {
            TupleValue::Text(text) => text.clone(),
            _ => String::new(),
        });
    }
    let text = (!parts.is_empty()).then(|| parts.join(":"));
    Ok((object, text))
}

fn payload_is_bytea(row: &Row, outbox: &OutboxCapture) -> bool {
    row.columns()
        .find(|(c, _)| c.name == outbox.payload_column)
        .is_some_and(|(c, _)| c.type_oid == type_oid::BYTEA)
}

/// PostgreSQL's hex output of `bytea` (`\x0a1b…`) to bytes.
fn unhex(text: &str) -> Option<Vec<u8>> {
    let digits = text.strip_prefix("\\x")?.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks_exact(2)
        .map(|pair| {
            let high = char::from(pair[0]).to_digit(16)?;
            let low = char::from(pair[1]).to_digit(16)?;
            u8::try_from(high * 16 + low).ok()
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 + bytes.len() * 2);
    out.push_str("\\x");
    for byte in bytes {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

pub(crate) fn unix_ms(time: DateTime<Utc>) -> u64 {
    u64::try_from(time.timestamp_millis()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytea_hex_round_trips() {
        assert_eq!(unhex("\\x00ff7b"), Some(vec![0, 255, 123]));
        assert_eq!(unhex(&hex(b"{\"a\":1}")), Some(b"{\"a\":1}".to_vec()));
        assert_eq!(unhex("\\x0"), None);
        assert_eq!(unhex("00"), None);
        assert_eq!(unhex("\\xzz"), None);
    }
}
