//! Decoding event rows. Rows come from outside this process's control (written by another
//! version, or by hand), so every field is checked, never unwrapped.

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::PgRow;
use tributary_core::{
    Envelope, Error, EventId, Payload, RecordedEvent, Result, StreamId, StreamVersion,
};
use uuid::Uuid;

use crate::position::TxPosition;

fn col<'r, T>(row: &'r PgRow, i: usize) -> Result<T>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(i)
        .map_err(|e| Error::decode("event row", format!("column {i}: {e}")))
}

/// Decodes a row selected as in `read_all.sql` (and `read_stream.sql`).
pub(crate) fn recorded_event(row: &PgRow) -> Result<(TxPosition, RecordedEvent)> {
    let at = TxPosition::from_row(col(row, 0)?, col(row, 1)?)?;
    let stream = StreamId::new(col::<String>(row, 2)?)?;
    let version = StreamVersion::new(
        u64::try_from(col::<i64>(row, 3)?)
            .map_err(|_| Error::decode("event row", "negative version"))?,
    );
    let id = EventId::from_uuid(col::<Uuid>(row, 4)?);
    let time: DateTime<Utc> = col(row, 8)?;
    let schema_version = u32::try_from(col::<i32>(row, 14)?)
        .map_err(|_| Error::decode("event row", "negative schema_version"))?;
    let data = Payload::from_json_str(col::<String>(row, 15)?)
        .map_err(|e| Error::decode("event data", e))?;
    Ok((
        at,
        RecordedEvent {
            position: at.to_position()?,
            stream,
            version,
            envelope: Envelope {
                id,
                event_type: col(row, 5)?,
                source: col(row, 6)?,
                subject: col(row, 7)?,
                time,
                data,
                aggregate_type: col(row, 9)?,
                sequence: Some(version),
                partition_key: col(row, 10)?,
                correlation_id: col(row, 11)?,
                causation_id: col(row, 12)?,
                traceparent: col(row, 13)?,
                // Not stored by the event store (no column): the state of a replayed event is lost.
                tracestate: None,
                schema_version,
            },
        },
    ))
}
