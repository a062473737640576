//! The event store on PostgreSQL.
//!
//! Appends are single statements (or savepoint-guarded inside a transaction); reads by
//! position follow the reading order of the `position` module, so `read_all` and
//! `subscribe_all` never skip an event that commits late and never repeat one.

mod append;
mod rows;

pub(crate) use append::{Mode, append};
pub(crate) use rows::recorded_event;

use async_trait::async_trait;
use sqlx::{PgConnection, PgExecutor, Postgres, Transaction};
use tributary_core::backend::validate_batch;
use tributary_core::{
    AppendOutcome, CatchUpConfig, Envelope, Error, EventId, EventStore, EventStream,
    ExpectedVersion, Payload, Position, RecordedEvent, Result, Snapshot, StreamId, StreamVersion,
    catch_up,
};

use crate::database::{Inner, PgDatabase};
use crate::error::SqlxResultExt;
use crate::horizon::settled_read;
use crate::lag::{PgLag, lag};
use crate::position::TxPosition;
use crate::sql::Statements;

/// An [`EventStore`] in a service's PostgreSQL schema.
#[derive(Clone, Debug)]
pub struct PgEventStore {
    db: PgDatabase,
}

impl PgEventStore {
    pub fn new(db: PgDatabase) -> Self {
        Self { db }
    }

    pub fn database(&self) -> &PgDatabase {
        &self.db
    }

    /// Appends in the caller's own transaction (for applications that use sqlx directly):
    /// the events commit or roll back with it. Same rules as [`EventStore::append`]; a lost
    /// race is rolled back to a savepoint, so the transaction stays usable after a conflict.
    /// Readers are woken once it committed, from outside (see [`crate::PgOutbox::publish`]).
    ///
    /// # Errors
    /// As [`EventStore::append`].
    pub async fn append_in(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<Envelope>,
    ) -> Result<AppendOutcome> {
        validate_batch(&events, self.db.inner.config.max_event_bytes)?;
        let conn: &mut PgConnection = tx;
        let inner = &self.db.inner;
        let outcome = append(
            conn,
            &inner.sql,
            stream,
            expected,
            &events,
            Mode::InTransaction,
        )
        .await?;
        if !outcome.deduplicated {
            inner.written_externally(TxPosition::from_position(outcome.last_position).tx_id as i64);
        }
        Ok(outcome)
    }

    /// How far a reader of [`EventStore::read_all`] / [`EventStore::subscribe_all`] whose
    /// next position is `next` is behind (e.g. a projection at checkpoint `c` has `next` =
    /// `c.next()`).
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the server cannot be reached.
    pub async fn lag(&self, next: Position) -> Result<PgLag> {
        lag(
            &self.db,
            &self.db.inner.sql.events_lag,
            Some(TxPosition::from_position(next)),
        )
        .await
    }
}

/// Up to `max` events at `from` or later in reading order, below the horizon (see
/// [`settled_read`]), with their places.
pub(crate) async fn read_all_settled(
    db: &Inner,
    from: TxPosition,
    max: usize,
) -> Result<Vec<(TxPosition, RecordedEvent)>> {
    settled_read(db, from, max, &db.sql.events_held_back, |from, n| {
        read_all_once(db, from, n)
    })
    .await
}

async fn read_all_once(
    db: &Inner,
    from: TxPosition,
    max: usize,
) -> Result<Vec<(TxPosition, RecordedEvent)>> {
    let rows = sqlx::query(db.sql.read_all.sql())
        .bind(from.tx_i64())
        .bind(from.ordinal_i32())
        .bind(limit(max))
        .fetch_all(&db.pool)
        .await
        .context("reading all events")?;
    rows.iter().map(recorded_event).collect()
}

/// A row limit as PostgreSQL's `bigint`.
pub(crate) fn limit(max: usize) -> i64 {
    i64::try_from(max).unwrap_or(i64::MAX)
}

pub(crate) async fn read_stream_in<'e>(
    conn: impl PgExecutor<'e>,
    sql: &Statements,
    stream: &StreamId,
    from: StreamVersion,
    max: usize,
) -> Result<Vec<RecordedEvent>> {
    let rows = sqlx::query(sql.read_stream.sql())
        .bind(stream.as_str())
        .bind(i64::try_from(from.get()).unwrap_or(i64::MAX))
        .bind(limit(max))
        .fetch_all(conn)
        .await
        .context("reading a stream")?;
    rows.iter()
        .map(|r| recorded_event(r).map(|(_, e)| e))
        .collect()
}

#[async_trait]
impl EventStore for PgEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        mut events: Vec<Envelope>,
    ) -> Result<AppendOutcome> {
        let inner = &self.db.inner;
        tributary_core::trace::stamp_appended(stream, &mut events);
        validate_batch(&events, inner.config.max_event_bytes)?;
        let mut conn = inner.pool.acquire().await.context("appending events")?;
        let outcome = append(
            &mut conn,
            &inner.sql,
            stream,
            expected,
            &events,
            Mode::Autocommit,
        )
        .await?;
        if !outcome.deduplicated {
            inner.committed();
        }
        Ok(outcome)
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: StreamVersion,
        max: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let inner = &self.db.inner;
        read_stream_in(&inner.pool, &inner.sql, stream, from, max).await
    }

    async fn read_all(&self, from: Position, max: usize) -> Result<Vec<RecordedEvent>> {
        Ok(
            read_all_settled(&self.db.inner, TxPosition::from_position(from), max)
                .await?
                .into_iter()
                .map(|(_, e)| e)
                .collect(),
        )
    }

    fn subscribe_all(&self, from: Position) -> EventStream {
        let db = self.db.clone();
        let config = CatchUpConfig {
            poll_every: db.inner.config.poll_every,
            ..CatchUpConfig::default()
        };
        let commits = db.inner.commits_receiver();
        catch_up(from, commits, config, move |from, max| {
            let db = db.clone();
            async move {
                Ok(
                    read_all_settled(&db.inner, TxPosition::from_position(from), max)
                        .await?
                        .into_iter()
                        .map(|(_, e)| e)
                        .collect(),
                )
            }
        })
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<StreamVersion> {
        let inner = &self.db.inner;
        let v: i64 = sqlx::query_scalar(inner.sql.stream_version.sql())
            .bind(stream.as_str())
            .fetch_one(&inner.pool)
            .await
            .context("reading a stream version")?;
        u64::try_from(v)
            .map(StreamVersion::new)
            .map_err(|_| Error::decode("stream version", "negative"))
    }

    async fn position_of(&self, id: &EventId) -> Result<Option<Position>> {
        let inner = &self.db.inner;
        let row: Option<(uuid::Uuid, String, i64, i64, i32)> =
            sqlx::query_as(inner.sql.find_events.sql())
                .bind(vec![id.as_uuid()])
                .fetch_optional(&inner.pool)
                .await
                .context("looking up an event id")?;
        row.map(|(_, _, _, tx_id, ordinal)| TxPosition::from_row(tx_id, ordinal)?.to_position())
            .transpose()
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>> {
        let inner = &self.db.inner;
        load_snapshot_in(&inner.pool, &inner.sql, stream).await
    }

    async fn save_snapshot(&self, stream: &StreamId, snapshot: Snapshot) -> Result<()> {
        let inner = &self.db.inner;
        save_snapshot_in(&inner.pool, &inner.sql, stream, &snapshot).await
    }
}

/// The latest snapshot of `stream`, read on `conn` (the pool, or a unit's transaction).
pub(crate) async fn load_snapshot_in<'e>(
    conn: impl PgExecutor<'e>,
    sql: &Statements,
    stream: &StreamId,
) -> Result<Option<Snapshot>> {
    let row: Option<(i64, String)> = sqlx::query_as(sql.load_snapshot.sql())
        .bind(stream.as_str())
        .fetch_optional(conn)
        .await
        .context("loading a snapshot")?;
    row.map(|(version, state)| {
        Ok(Snapshot {
            version: StreamVersion::new(
                u64::try_from(version)
                    .map_err(|_| Error::decode("snapshot", "negative version"))?,
            ),
            state: Payload::from_json_str(state).map_err(|e| Error::decode("snapshot", e))?,
        })
    })
    .transpose()
}

/// Saves `snapshot` of `stream` on `conn`, unless a newer one is stored.
pub(crate) async fn save_snapshot_in<'e>(
    conn: impl PgExecutor<'e>,
    sql: &Statements,
    stream: &StreamId,
    snapshot: &Snapshot,
) -> Result<()> {
    sqlx::query(sql.save_snapshot.sql())
        .bind(stream.as_str())
        .bind(i64::try_from(snapshot.version.get()).unwrap_or(i64::MAX))
        .bind(snapshot.state.as_str())
        .execute(conn)
        .await
        .context("saving a snapshot")?;
    Ok(())
}
