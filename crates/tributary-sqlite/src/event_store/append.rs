//! Appending inside an open transaction: used by the event store and by units of work.

use rusqlite::{Connection, OptionalExtension, params};
use tributary_core::backend::{StoredAt, dedup_outcome};
use tributary_core::{
    AppendOutcome, Envelope, Error, ExpectedVersion, Position, Result, StreamId, StreamVersion,
};

use crate::sql_error::{SqlResultExt, is_unique_violation, sql_error};

/// Where `id` is stored, if it is.
pub(crate) fn find_event(
    conn: &Connection,
    id: &tributary_core::EventId,
) -> Result<Option<StoredAt>> {
    let mut stmt = conn
        .prepare_cached(include_str!("find_event.sql"))
        .context("preparing find_event")?;
    let row = stmt
        .query_row([&id.to_bytes()[..]], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })
        .optional()
        .context("looking up an event id")?;
    row.map(|(stream, version, position)| {
        Ok(StoredAt {
            stream: StreamId::new(stream)?,
            version: StreamVersion::new(version as u64),
            position: Position::new(position as u64),
        })
    })
    .transpose()
}

pub(crate) fn stream_version(conn: &Connection, stream: &StreamId) -> Result<StreamVersion> {
    let mut stmt = conn
        .prepare_cached(include_str!("stream_version.sql"))
        .context("preparing stream_version")?;
    let v: i64 = stmt
        .query_row([stream.as_str()], |r| r.get(0))
        .context("reading a stream version")?;
    Ok(StreamVersion::new(v as u64))
}

/// Appends an already validated batch (see `tributary_core::validate_batch`) in the caller's
/// transaction, with the optimistic-concurrency and idempotency rules of `EventStore::append`.
pub(crate) fn append_in_tx(
    conn: &Connection,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: &[Envelope],
) -> Result<AppendOutcome> {
    let outcome = append_unmeasured(conn, stream, expected, events);
    tributary_core::backend::count_append("sqlite", events.len(), &outcome);
    outcome
}

fn append_unmeasured(
    conn: &Connection,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: &[Envelope],
) -> Result<AppendOutcome> {
    if let Some(first) = find_event(conn, &events[0].id)? {
        return dedup_outcome(stream, events, first, |id| find_event(conn, id));
    }
    let actual = stream_version(conn, stream)?;
    if !expected.matches(actual) {
        return Err(Error::Conflict {
            stream: stream.clone(),
            expected,
            actual,
        });
    }
    let mut insert = conn
        .prepare_cached(include_str!("insert_event.sql"))
        .context("preparing insert_event")?;
    let mut version = actual;
    for e in events {
        version = version.next();
        let time_ns = e.time.timestamp_nanos_opt().ok_or_else(|| {
            Error::invalid(format!("event {} has a time outside 1677..2262", e.id))
        })?;
        insert
            .execute(params![
                &e.id.to_bytes()[..],
                stream.as_str(),
                version.get() as i64,
                e.event_type,
                e.source,
                e.subject,
                time_ns,
                e.aggregate_type,
                e.partition_key,
                e.correlation_id,
                e.causation_id,
                e.traceparent,
                e.schema_version,
                e.data.as_str(),
            ])
            .map_err(|err| {
                if is_unique_violation(&err) {
                    Error::invalid(format!(
                        "event id {} is already stored; an id may be used for one event only",
                        e.id
                    ))
                } else {
                    sql_error("inserting an event", err)
                }
            })?;
    }
    Ok(AppendOutcome {
        first_version: actual.next(),
        next_expected: version,
        last_position: Position::new(conn.last_insert_rowid() as u64),
        deduplicated: false,
    })
}
