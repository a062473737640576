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
use serde_json::{Value, json};
use tributary_core::{Envelope, EventId, OutgoingMessage, Payload, Topic};

use super::config::{
    CdcConfig, HEARTBEAT_PREFIX, MessageRoute, OutboxCapture, TableConfig, topic_for_name,
};
use super::error::{CdcError, Result};
use super::ids::IdSpace;
use crate::lsn::Lsn;
use crate::pgoutput::{
    LogicalMessage, OldRow, PgTimestamp, Relation, Row, RowChange, Truncate, TupleValue, Xid,
    type_oid, write_json_string,
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
    /// Primary key columns by schema and table, read from the catalog when streaming starts.
    primary_keys: HashMap<String, HashMap<String, Vec<String>>>,
}

impl Mapper {
    pub(crate) fn new(
        config: Arc<CdcConfig>,
        ids: IdSpace,
        primary_keys: HashMap<(String, String), Vec<String>>,
    ) -> Self {
        let mut by_schema: HashMap<String, HashMap<String, Vec<String>>> = HashMap::new();
        for ((schema, table), columns) in primary_keys {
            by_schema.entry(schema).or_default().insert(table, columns);
        }
        Mapper {
            config,
            ids,
            primary_keys: by_schema,
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
                RowChange::Insert { new } => {
                    let fallback = || self.ids.change(tx.commit_lsn, index, 0, unix_ms(tx.time()));
                    Ok(Some(self.outbox_row(fallback, outbox, new)?))
                }
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
        let envelope = Envelope {
            id: self.ids.change(tx.commit_lsn, index, 0, unix_ms(time)),
            source: self.config.name.clone(),
            event_type: route
                .event_type
                .clone()
                .unwrap_or_else(|| message.prefix.clone()),
            subject: None,
            time,
            data,
            aggregate_type: None,
            sequence: None,
            partition_key: Some(
                route
                    .partition_key
                    .clone()
                    .unwrap_or_else(|| message.prefix.clone()),
            ),
            correlation_id: None,
            causation_id: None,
            traceparent: None,
            tracestate: None,
            schema_version: 1,
        };
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

    fn key_columns<'a>(
        &'a self,
        table: Option<&'a TableConfig>,
        relation: &'a Relation,
    ) -> KeyColumns<'a> {
        if let Some(columns) = table.and_then(|t| t.key_columns.as_deref()) {
            return KeyColumns::Named(columns);
        }
        if let Some(columns) = self
            .primary_keys
            .get(relation.namespace.as_str())
            .and_then(|tables| tables.get(relation.name.as_str()))
        {
            return KeyColumns::Named(columns);
        }
        KeyColumns::Identity
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
            .and_then(|t| t.event_prefix.as_deref())
            .unwrap_or(&relation.name);
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
        // The data is written straight to JSON text: building a `Value` per row costs more
        // than the rest of the capture together.
        let mut data = String::with_capacity(256);
        data.push_str("{\"operation\":");
        write_json_string(operation, &mut data);
        data.push_str(",\"schema\":");
        write_json_string(&relation.namespace, &mut data);
        data.push_str(",\"table\":");
        write_json_string(&relation.name, &mut data);
        data.push_str(",\"key\":");
        let key_text = match event.key_row {
            Some(row) => write_key(row, self.key_columns(event.table, relation), &mut data)?,
            None => {
                data.push_str("null");
                None
            }
        };
        data.push_str(",\"new\":");
        match event.new {
            Some(row) => row.write_json(&mut data, |_| true)?,
            None => data.push_str("null"),
        }
        data.push_str(",\"old\":");
        match event.old {
            Some(OldRow::Key(row)) => row.write_json(&mut data, |c| c.is_key)?,
            Some(OldRow::Full(row)) => row.write_json(&mut data, |_| true)?,
            None => data.push_str("null"),
        }
        data.push_str(",\"unchanged_toast\":[");
        if let Some(row) = event.new {
            for (i, name) in row.unchanged_toast_columns().enumerate() {
                if i > 0 {
                    data.push(',');
                }
                write_json_string(name, &mut data);
            }
        }
        data.push_str("],\"transaction\":");
        match event.transaction {
            Some((tx, index)) => {
                data.push_str(&format!(
                    "{{\"xid\":{},\"commit_lsn\":\"{}\",\"index\":{index}}}",
                    tx.xid.0, tx.commit_lsn
                ));
            }
            None => data.push_str("null"),
        }
        for (name, value) in event.extra {
            data.push(',');
            write_json_string(name, &mut data);
            data.push(':');
            data.push_str(&value.to_string());
        }
        data.push('}');
        let data = Payload::from_json_str(data)
            .map_err(|e| CdcError::protocol(format!("event data: {e}")))?;
        let partition_key = key_text.clone().unwrap_or_else(|| relation.name.clone());
        let envelope = Envelope {
            id,
            source: self.config.name.clone(),
            event_type: format!("{prefix}.{}", event.operation),
            subject: key_text,
            time,
            data,
            aggregate_type: Some(relation.name.clone()),
            sequence: None,
            // No key: the table is one ordered stream.
            partition_key: Some(partition_key),
            correlation_id: None,
            causation_id: None,
            traceparent: None,
            tracestate: None,
            schema_version: 1,
        };
        Ok(OutgoingMessage::from_envelope(topic, &envelope))
    }

    /// An outbox row that already existed when the slot was created (the initial snapshot).
    pub(crate) fn outbox_snapshot_row(
        &self,
        consistent_point: Lsn,
        time: DateTime<Utc>,
        ordinal: u64,
        outbox: &OutboxCapture,
        row: &Row,
    ) -> Result<Mapped> {
        let qualified = format!("{}.{}", outbox.schema, outbox.table);
        let fallback = || {
            self.ids
                .snapshot(consistent_point, &qualified, ordinal, unix_ms(time))
        };
        self.outbox_row(fallback, outbox, row)
    }

    /// The row's own envelope; `fallback_id` names it when the row carries no usable id.
    fn outbox_row(
        &self,
        fallback_id: impl Fn() -> EventId,
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

/// Which columns make a table's key.
enum KeyColumns<'a> {
    /// These, by name (configured, or the primary key).
    Named(&'a [String]),
    /// The replica identity columns the Relation message marks.
    Identity,
}

/// Appends the key columns of `row` as a JSON object to `out`, and returns their values
/// joined with `:` (`None` without key columns).
fn write_key(row: &Row, columns: KeyColumns<'_>, out: &mut String) -> Result<Option<String>> {
    let mut text: Option<String> = None;
    let mut add = |value: &TupleValue| {
        let part = match value {
            TupleValue::Text(text) => text.as_str(),
            _ => "",
        };
        match text.as_mut() {
            Some(text) => {
                text.push(':');
                text.push_str(part);
            }
            None => text = Some(part.to_owned()),
        }
    };
    match columns {
        KeyColumns::Named(names) => {
            out.push('{');
            let mut first = true;
            for name in names {
                let Some((column, value)) = row.columns().find(|(c, _)| &c.name == name) else {
                    continue;
                };
                add(value);
                let mark = out.len();
                if !first {
                    out.push(',');
                }
                write_json_string(name, out);
                out.push(':');
                if crate::pgoutput::write_value_json(column, value, out)? {
                    first = false;
                } else {
                    out.truncate(mark);
                }
            }
            out.push('}');
        }
        KeyColumns::Identity => {
            for (_, value) in row.columns().filter(|(c, _)| c.is_key) {
                add(value);
            }
            row.write_json(out, |c| c.is_key)?;
        }
    }
    Ok(text)
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
