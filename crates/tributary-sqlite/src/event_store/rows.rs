//! Decoding event rows. Rows come from outside this process's control (the file may have been
//! written by another version or damaged), so every field is checked, never unwrapped.

use chrono::DateTime;
use rusqlite::Row;
use rusqlite::types::ValueRef;
use tributary_core::{
    Envelope, Error, EventId, Payload, Position, RecordedEvent, Result, StreamId, StreamVersion,
};

fn text(row: &Row<'_>, i: usize) -> Result<String> {
    opt_text(row, i)?.ok_or_else(|| Error::decode("event row", format!("column {i} is NULL")))
}

fn opt_text(row: &Row<'_>, i: usize) -> Result<Option<String>> {
    match row.get_ref(i) {
        Ok(ValueRef::Null) => Ok(None),
        Ok(ValueRef::Text(bytes)) => std::str::from_utf8(bytes)
            .map(|s| Some(s.to_owned()))
            .map_err(|e| Error::decode("event row", format!("column {i}: {e}"))),
        Ok(other) => Err(Error::decode(
            "event row",
            format!("column {i} has type {:?}, expected text", other.data_type()),
        )),
        Err(e) => Err(Error::decode("event row", e)),
    }
}

fn int(row: &Row<'_>, i: usize) -> Result<i64> {
    match row.get_ref(i) {
        Ok(ValueRef::Integer(v)) => Ok(v),
        Ok(other) => Err(Error::decode(
            "event row",
            format!(
                "column {i} has type {:?}, expected integer",
                other.data_type()
            ),
        )),
        Err(e) => Err(Error::decode("event row", e)),
    }
}

fn non_negative(row: &Row<'_>, i: usize) -> Result<u64> {
    u64::try_from(int(row, i)?)
        .map_err(|_| Error::decode("event row", format!("column {i} is negative")))
}

/// Decodes a row selected as in `read_all.sql`.
pub(crate) fn recorded_event(row: &Row<'_>) -> Result<RecordedEvent> {
    let position = Position::new(non_negative(row, 0)?);
    let stream = StreamId::new(text(row, 1)?)?;
    let version = StreamVersion::new(non_negative(row, 2)?);
    let id = match row.get_ref(3) {
        Ok(ValueRef::Blob(b)) => EventId::from_slice(b)?,
        _ => return Err(Error::decode("event row", "event_id is not a 16-byte blob")),
    };
    let time = DateTime::from_timestamp_nanos(int(row, 7)?);
    let schema_version = u32::try_from(int(row, 13)?)
        .map_err(|_| Error::decode("event row", "schema_version out of range"))?;
    let data = match row.get_ref(14) {
        Ok(ValueRef::Text(b)) => std::str::from_utf8(b)
            .map_err(|e| Error::decode("event data", e))
            .and_then(|s| Payload::from_json_str(s).map_err(|e| Error::decode("event data", e)))?,
        _ => return Err(Error::decode("event row", "data is not text")),
    };
    Ok(RecordedEvent {
        position,
        stream,
        version,
        envelope: Envelope {
            id,
            source: text(row, 5)?,
            event_type: text(row, 4)?,
            subject: opt_text(row, 6)?,
            time,
            data,
            aggregate_type: opt_text(row, 8)?,
            sequence: Some(version),
            partition_key: opt_text(row, 9)?,
            correlation_id: opt_text(row, 10)?,
            causation_id: opt_text(row, 11)?,
            traceparent: opt_text(row, 12)?,
            // Not stored by the event store (no column): the state of a replayed event is lost.
            tracestate: None,
            schema_version,
        },
    })
}
