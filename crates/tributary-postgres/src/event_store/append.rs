//! Appending: optimistic concurrency through the `(stream_id, version)` unique key, idempotent
//! retries through the `event_id` unique key.
//!
//! The stream's version is read, checked against the expectation, and the batch is inserted in
//! one statement with the versions that follow. Two appenders that read the same version race
//! on the unique key: the second waits for the first to commit, fails, and checks again — now
//! seeing the first's events, it reports a conflict (or, expecting any version, appends after
//! them).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgArguments;
use sqlx::query::QueryAs;
use sqlx::{PgConnection, Postgres};
use tributary_core::backend::{StoredAt, dedup_outcome};
use tributary_core::{
    AppendOutcome, Envelope, Error, EventId, ExpectedVersion, Result, StreamId, StreamVersion,
};
use uuid::Uuid;

use crate::error::{SqlxResultExt, constraint, db_error, is_unique_violation};
use crate::position::TxPosition;
use crate::sql::Statements;

/// How often an append re-checks after losing a race before it reports `Unavailable`.
const MAX_ATTEMPTS: u32 = 16;

/// Whether the connection is inside a transaction that must survive a failed insert (a unit
/// of work, a caller's transaction) or in autocommit mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Each statement commits by itself; the insert is one atomic statement.
    Autocommit,
    /// Inside a transaction: the insert runs in a savepoint so that losing a race leaves the
    /// transaction usable.
    InTransaction,
}

/// The batch as the arrays `insert_events.sql` unnests.
struct Columns {
    ids: Vec<Uuid>,
    types: Vec<String>,
    sources: Vec<String>,
    subjects: Vec<Option<String>>,
    times: Vec<DateTime<Utc>>,
    aggregate_types: Vec<Option<String>>,
    partition_keys: Vec<Option<String>>,
    correlation_ids: Vec<Option<String>>,
    causation_ids: Vec<Option<String>>,
    traceparents: Vec<Option<String>>,
    schema_versions: Vec<i32>,
    data: Vec<String>,
}

impl Columns {
    fn of(events: &[Envelope]) -> Result<Self> {
        let schema_versions = events
            .iter()
            .map(|e| {
                i32::try_from(e.schema_version).map_err(|_| {
                    Error::invalid(format!(
                        "event {} has schema version {}, above {}",
                        e.id,
                        e.schema_version,
                        i32::MAX
                    ))
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            ids: events.iter().map(|e| e.id.as_uuid()).collect(),
            types: events.iter().map(|e| e.event_type.clone()).collect(),
            sources: events.iter().map(|e| e.source.clone()).collect(),
            subjects: events.iter().map(|e| e.subject.clone()).collect(),
            times: events.iter().map(|e| e.time).collect(),
            aggregate_types: events.iter().map(|e| e.aggregate_type.clone()).collect(),
            partition_keys: events.iter().map(|e| e.partition_key.clone()).collect(),
            correlation_ids: events.iter().map(|e| e.correlation_id.clone()).collect(),
            causation_ids: events.iter().map(|e| e.causation_id.clone()).collect(),
            traceparents: events.iter().map(|e| e.traceparent.clone()).collect(),
            schema_versions,
            data: events.iter().map(|e| e.data.as_str().to_owned()).collect(),
        })
    }

    /// Binds the arrays, in the order both insert statements unnest them, after whatever the
    /// statement binds first.
    fn bind_to<'q, O>(
        &'q self,
        query: QueryAs<'q, Postgres, O, PgArguments>,
    ) -> QueryAs<'q, Postgres, O, PgArguments> {
        query
            .bind(&self.ids)
            .bind(&self.types)
            .bind(&self.sources)
            .bind(&self.subjects)
            .bind(&self.times)
            .bind(&self.aggregate_types)
            .bind(&self.partition_keys)
            .bind(&self.correlation_ids)
            .bind(&self.causation_ids)
            .bind(&self.traceparents)
            .bind(&self.schema_versions)
            .bind(&self.data)
    }
}

/// Appends an already validated batch (see `tributary_core::validate_batch`) with the rules of
/// `EventStore::append`.
/// The common case in one round trip (outside a caller's transaction, where a failed statement
/// costs nothing): insert if the stream is at `expected`. `None` when that did not work —
/// another version, a retried batch, a race — and the careful path must decide.
async fn append_optimistically(
    conn: &mut PgConnection,
    sql: &Statements,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: &[Envelope],
    columns: &Columns,
) -> Result<Option<AppendOutcome>> {
    let expected_version: i64 = match expected {
        ExpectedVersion::Any => -1,
        ExpectedVersion::NoStream => 0,
        // No stream can be that long; the careful path reports the conflict.
        ExpectedVersion::Exact(v) => match i64::try_from(v.get()) {
            Ok(v) => v,
            Err(_) => return Ok(None),
        },
    };
    let inserted: Result<Vec<(i64, i32, i64)>, sqlx::Error> = columns
        .bind_to(
            sqlx::query_as(sql.insert_events_expecting.sql())
                .bind(stream.as_str())
                .bind(expected_version),
        )
        .fetch_all(&mut *conn)
        .await;
    let rows = match inserted {
        Ok(rows) if rows.len() == events.len() => rows,
        Ok(_) => return Ok(None),
        Err(e) if is_unique_violation(&e) => return Ok(None),
        Err(e) => {
            if crate::error::sqlstate(&e).as_deref() == Some("23514") {
                return Err(Error::invalid(format!(
                    "a transaction may append at most {} events: {e}",
                    crate::position::MAX_ROWS_PER_TRANSACTION
                )));
            }
            return Err(db_error("appending events", e));
        }
    };
    let mut last = None;
    let (mut first_version, mut last_version) = (i64::MAX, 0);
    for (tx_id, ordinal, version) in rows {
        last = last.max(Some(TxPosition::from_row(tx_id, ordinal)?));
        first_version = first_version.min(version);
        last_version = last_version.max(version);
    }
    let last = last.ok_or_else(|| Error::storage_msg("an append inserted no rows"))?;
    Ok(Some(AppendOutcome {
        first_version: StreamVersion::new(first_version.max(0) as u64),
        next_expected: StreamVersion::new(last_version.max(0) as u64),
        last_position: last.to_position()?,
        deduplicated: false,
    }))
}

pub(crate) async fn append(
    conn: &mut PgConnection,
    sql: &Statements,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: &[Envelope],
    mode: Mode,
) -> Result<AppendOutcome> {
    let outcome = append_unmeasured(conn, sql, stream, expected, events, mode).await;
    tributary_core::backend::count_append("postgres", events.len(), &outcome);
    outcome
}

async fn append_unmeasured(
    conn: &mut PgConnection,
    sql: &Statements,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: &[Envelope],
    mode: Mode,
) -> Result<AppendOutcome> {
    let Some(first) = events.first() else {
        return Err(Error::invalid("nothing to append: the batch is empty"));
    };
    let columns = Columns::of(events)?;
    if mode == Mode::Autocommit
        && let Some(outcome) =
            append_optimistically(conn, sql, stream, expected, events, &columns).await?
    {
        return Ok(outcome);
    }
    for _ in 0..MAX_ATTEMPTS {
        let (actual, stored): (i64, bool) = sqlx::query_as(sql.append_check.sql())
            .bind(stream.as_str())
            .bind(first.id.as_uuid())
            .fetch_one(&mut *conn)
            .await
            .context("checking a stream before appending")?;
        if stored {
            return deduplicate(conn, sql, stream, events).await;
        }
        let actual = version(actual)?;
        if !expected.matches(actual) {
            return Err(Error::Conflict {
                stream: stream.clone(),
                expected,
                actual,
            });
        }
        if mode == Mode::InTransaction {
            savepoint(conn, "SAVEPOINT tributary_append").await?;
        }
        let inserted: Result<Vec<(i64, i32)>, sqlx::Error> = columns
            .bind_to(
                sqlx::query_as(sql.insert_events.sql())
                    .bind(stream.as_str())
                    .bind(actual.get() as i64),
            )
            .fetch_all(&mut *conn)
            .await;
        let failed = inserted.is_err();
        if mode == Mode::InTransaction {
            if failed {
                savepoint(conn, "ROLLBACK TO SAVEPOINT tributary_append").await?;
            }
            savepoint(conn, "RELEASE SAVEPOINT tributary_append").await?;
        }
        match inserted {
            Ok(rows) => {
                let mut last = None;
                for (tx_id, ordinal) in rows {
                    last = last.max(Some(TxPosition::from_row(tx_id, ordinal)?));
                }
                let last = last.ok_or_else(|| Error::storage_msg("an append inserted no rows"))?;
                return Ok(AppendOutcome {
                    first_version: actual.next(),
                    next_expected: StreamVersion::new(actual.get() + events.len() as u64),
                    last_position: last.to_position()?,
                    deduplicated: false,
                });
            }
            Err(e) if is_unique_violation(&e) => {
                if constraint(&e) == Some("events_event_id_key") {
                    let stored = stored_at(conn, sql, events).await?;
                    if stored.contains_key(&first.id) {
                        // The same batch was stored meanwhile (a concurrent retry).
                        return deduplicate(conn, sql, stream, events).await;
                    }
                    if let Some(e) = events.iter().find(|e| stored.contains_key(&e.id)) {
                        return Err(Error::invalid(format!(
                            "event id {} is already stored; an id may be used for one event only",
                            e.id
                        )));
                    }
                }
                // Another append took the version (or an id) first: check again.
            }
            Err(e) => {
                if let Some(code) = crate::error::sqlstate(&e)
                    && code == "23514"
                {
                    return Err(Error::invalid(format!(
                        "a transaction may append at most {} events: {e}",
                        crate::position::MAX_ROWS_PER_TRANSACTION
                    )));
                }
                return Err(db_error("appending events", e));
            }
        }
    }
    Err(Error::unavailable(
        format!("event stream {stream}"),
        "too many concurrent appends to the same stream; try again",
    ))
}

async fn savepoint(conn: &mut PgConnection, statement: &'static str) -> Result<()> {
    sqlx::raw_sql(statement)
        .execute(&mut *conn)
        .await
        .map(|_| ())
        .context("managing the append savepoint")
}

fn version(v: i64) -> Result<StreamVersion> {
    u64::try_from(v)
        .map(StreamVersion::new)
        .map_err(|_| Error::decode("stream version", "negative"))
}

/// Where each of `events` is stored, for those that are.
async fn stored_at(
    conn: &mut PgConnection,
    sql: &Statements,
    events: &[Envelope],
) -> Result<HashMap<EventId, StoredAt>> {
    let ids: Vec<Uuid> = events.iter().map(|e| e.id.as_uuid()).collect();
    // Unnamed, so planned for these ids: a cached generic plan for `= ANY($1)` can be a scan
    // of the whole table (see `PgTx::inbox_seen`).
    let rows: Vec<(Uuid, String, i64, i64, i32)> = sqlx::query_as(sql.find_events.sql())
        .bind(&ids)
        .persistent(false)
        .fetch_all(&mut *conn)
        .await
        .context("looking up event ids")?;
    rows.into_iter()
        .map(|(id, stream, v, tx_id, ordinal)| {
            Ok((
                EventId::from_uuid(id),
                StoredAt {
                    stream: StreamId::new(stream)?,
                    version: version(v)?,
                    position: TxPosition::from_row(tx_id, ordinal)?.to_position()?,
                },
            ))
        })
        .collect()
}

/// The outcome of a batch whose first event is stored: an exact retry, or a misuse of ids.
async fn deduplicate(
    conn: &mut PgConnection,
    sql: &Statements,
    stream: &StreamId,
    events: &[Envelope],
) -> Result<AppendOutcome> {
    let stored = stored_at(conn, sql, events).await?;
    let first = events
        .first()
        .and_then(|e| stored.get(&e.id))
        .cloned()
        .ok_or_else(|| Error::storage_msg("a stored event id vanished (events are append-only)"))?;
    dedup_outcome(stream, events, first, |id| Ok(stored.get(id).cloned()))
}
