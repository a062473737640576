//! The stateful side of decoding: the relation cache, and rows with named columns.
//!
//! Row messages name their table only by OID and list values by position; the names and
//! types come from the Relation message the server sent earlier in the same session. So a
//! decoder must see every message of a session in order, and a new session (a reconnect)
//! needs a fresh decoder or at least must replay from a point where the server resends
//! Relation messages, which it always does at the start of a session.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::decode::decode_message;
use super::error::DecodeError;
use super::json::{value_to_json, write_json_string, write_value_json};
use super::message::{
    Oid, OldTuple, PgOutputMessage, Relation, RelationColumn, RelationId, Truncate, TupleData,
    TupleValue, TypeInfo,
};

/// Decodes a session's pgoutput messages in order and remembers the relations and types they
/// describe, so rows can be read by column name.
#[derive(Debug, Default, Clone)]
pub struct PgOutputDecoder {
    relations: HashMap<RelationId, Arc<Relation>>,
    types: HashMap<Oid, TypeInfo>,
}

impl PgOutputDecoder {
    /// A decoder that knows no relations yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes one XLogData payload and, for Relation and Type messages, updates the cache.
    ///
    /// # Errors
    ///
    /// As [`decode_message`]; the cache is unchanged when decoding fails.
    pub fn decode(&mut self, payload: &[u8]) -> Result<PgOutputMessage, DecodeError> {
        let message = decode_message(payload)?;
        self.observe(&message);
        Ok(message)
    }

    /// Updates the cache from a message decoded elsewhere (for example with
    /// [`decode_message`]). Messages other than Relation and Type are ignored.
    pub fn observe(&mut self, message: &PgOutputMessage) {
        match message {
            PgOutputMessage::Relation(relation) => {
                self.relations
                    .insert(relation.id, Arc::new(relation.clone()));
            }
            PgOutputMessage::Type(info) => {
                self.types.insert(info.oid, info.clone());
            }
            _ => {}
        }
    }

    /// The latest Relation message seen for this table.
    pub fn relation(&self, id: RelationId) -> Option<&Arc<Relation>> {
        self.relations.get(&id)
    }

    /// The latest Type message seen for this type (built-in types are never sent).
    pub fn type_info(&self, oid: Oid) -> Option<&TypeInfo> {
        self.types.get(&oid)
    }

    /// Pairs a row's values with its table's columns.
    ///
    /// # Errors
    ///
    /// [`DecodeError::UnknownRelation`] if no Relation message for the table was seen, and
    /// [`DecodeError::ColumnCountMismatch`] if the row does not fit it.
    pub fn row(&self, relation_id: RelationId, tuple: &TupleData) -> Result<Row, DecodeError> {
        let relation = self
            .relations
            .get(&relation_id)
            .ok_or(DecodeError::UnknownRelation { relation_id })?;
        if relation.columns.len() != tuple.values.len() {
            return Err(DecodeError::ColumnCountMismatch {
                table: qualified_name(relation),
                expected: relation.columns.len(),
                actual: tuple.values.len(),
            });
        }
        Ok(Row {
            relation: Arc::clone(relation),
            values: tuple.values.clone(),
        })
    }

    /// The row change an Insert, Update or Delete message describes, with named columns;
    /// `None` for every other message.
    ///
    /// # Errors
    ///
    /// As [`row`](Self::row).
    pub fn change(&self, message: &PgOutputMessage) -> Result<Option<RowChange>, DecodeError> {
        let change = match message {
            PgOutputMessage::Insert(insert) => RowChange::Insert {
                new: self.row(insert.relation_id, &insert.new)?,
            },
            PgOutputMessage::Update(update) => RowChange::Update {
                old: update
                    .old
                    .as_ref()
                    .map(|old| self.old_row(update.relation_id, old))
                    .transpose()?,
                new: self.row(update.relation_id, &update.new)?,
            },
            PgOutputMessage::Delete(delete) => RowChange::Delete {
                old: self.old_row(delete.relation_id, &delete.old)?,
            },
            _ => return Ok(None),
        };
        Ok(Some(change))
    }

    /// The tables a Truncate message names.
    ///
    /// # Errors
    ///
    /// [`DecodeError::UnknownRelation`] for a table whose Relation message was not seen.
    pub fn truncated(&self, truncate: &Truncate) -> Result<Vec<Arc<Relation>>, DecodeError> {
        truncate
            .relation_ids
            .iter()
            .map(|&relation_id| {
                self.relations
                    .get(&relation_id)
                    .cloned()
                    .ok_or(DecodeError::UnknownRelation { relation_id })
            })
            .collect()
    }

    fn old_row(&self, relation_id: RelationId, old: &OldTuple) -> Result<OldRow, DecodeError> {
        Ok(match old {
            OldTuple::Key(tuple) => OldRow::Key(self.row(relation_id, tuple)?),
            OldTuple::Full(tuple) => OldRow::Full(self.row(relation_id, tuple)?),
        })
    }
}

fn qualified_name(relation: &Relation) -> String {
    format!("{}.{}", relation.namespace, relation.name)
}

/// A change to one row, with named columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowChange {
    /// A row was inserted.
    Insert {
        /// The new row.
        new: Row,
    },
    /// A row was updated.
    Update {
        /// The old key or row, when the server sent one (see
        /// [`Update::old`](super::Update::old)).
        old: Option<OldRow>,
        /// The new row; unchanged TOAST values are [`TupleValue::UnchangedToast`].
        new: Row,
    },
    /// A row was deleted.
    Delete {
        /// The deleted row's key, or the whole row with replica identity FULL.
        old: OldRow,
    },
}

impl RowChange {
    /// The table the row belongs to.
    pub fn relation(&self) -> &Relation {
        match self {
            RowChange::Insert { new } | RowChange::Update { new, .. } => new.relation(),
            RowChange::Delete { old } => old.row().relation(),
        }
    }
}

/// The old values of an updated or deleted row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldRow {
    /// Only the replica identity columns are meaningful; the others are NULL. Read it with
    /// [`Row::key_to_json`].
    Key(Row),
    /// The whole old row (replica identity FULL).
    Full(Row),
}

impl OldRow {
    /// The row, whichever kind it is.
    pub fn row(&self) -> &Row {
        match self {
            OldRow::Key(row) | OldRow::Full(row) => row,
        }
    }
}

/// One row's values together with its table's columns.
///
/// The row keeps the [`Relation`] it was decoded with, so a later schema change in the
/// stream does not change how an earlier row reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    relation: Arc<Relation>,
    /// Same length as `relation.columns` (checked when the row is made).
    values: Vec<TupleValue>,
}

impl Row {
    /// A row read some other way than from the stream (the initial snapshot reads tables with
    /// SQL, which prints values in the same text form). The caller makes `values` as long as
    /// `relation.columns`.
    pub(crate) fn from_parts(relation: Arc<Relation>, values: Vec<TupleValue>) -> Self {
        debug_assert_eq!(relation.columns.len(), values.len());
        Row { relation, values }
    }

    /// The table.
    pub fn relation(&self) -> &Relation {
        &self.relation
    }

    /// The table's schema (empty for `pg_catalog`).
    pub fn schema(&self) -> &str {
        &self.relation.namespace
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.relation.name
    }

    /// Each column with its value, in table order.
    pub fn columns(&self) -> impl Iterator<Item = (&RelationColumn, &TupleValue)> {
        self.relation.columns.iter().zip(&self.values)
    }

    /// The value of the column with this name.
    pub fn get(&self, name: &str) -> Option<&TupleValue> {
        self.columns()
            .find(|(column, _)| column.name == name)
            .map(|(_, value)| value)
    }

    /// The names of the columns whose unchanged TOAST values the server left out.
    pub fn unchanged_toast_columns(&self) -> impl Iterator<Item = &str> {
        self.columns()
            .filter(|(_, value)| **value == TupleValue::UnchangedToast)
            .map(|(column, _)| column.name.as_str())
    }

    /// The row as a JSON object, column name → value (see [`value_to_json`] for the
    /// conversion). Unchanged TOAST values are left out: the server did not send them, and
    /// [`unchanged_toast_columns`](Self::unchanged_toast_columns) names them.
    ///
    /// # Errors
    ///
    /// As [`value_to_json`].
    pub fn to_json(&self) -> Result<Map<String, Value>, DecodeError> {
        self.json_of(|_| true)
    }

    /// The replica identity (key) columns as a JSON object.
    ///
    /// # Errors
    ///
    /// As [`value_to_json`].
    pub fn key_to_json(&self) -> Result<Map<String, Value>, DecodeError> {
        self.json_of(|column| column.is_key)
    }

    /// Appends the columns `keep` selects as a JSON object to `out`, the same object
    /// [`to_json`](Self::to_json) gives, without building it (unchanged TOAST values are
    /// left out).
    pub(crate) fn write_json(
        &self,
        out: &mut String,
        keep: impl Fn(&RelationColumn) -> bool,
    ) -> Result<(), DecodeError> {
        out.push('{');
        let mut first = true;
        for (column, value) in self.columns().filter(|(column, _)| keep(column)) {
            let mark = out.len();
            if !first {
                out.push(',');
            }
            write_json_string(&column.name, out);
            out.push(':');
            if write_value_json(column, value, out)? {
                first = false;
            } else {
                out.truncate(mark);
            }
        }
        out.push('}');
        Ok(())
    }

    fn json_of(
        &self,
        keep: impl Fn(&RelationColumn) -> bool,
    ) -> Result<Map<String, Value>, DecodeError> {
        let mut object = Map::new();
        for (column, value) in self.columns().filter(|(column, _)| keep(column)) {
            if let Some(json) = value_to_json(column, value)? {
                object.insert(column.name.clone(), json);
            }
        }
        Ok(object)
    }
}
