//! The event store on SQLite.
//!
//! Appends go through the database's group-commit writer; reads use the read pool. With one
//! writer at a time and `AUTOINCREMENT` positions, positions grow in commit order, so a reader
//! that reads `position >= next` never misses a late commit.

mod append;
mod rows;

pub(crate) use append::append_in_tx;
pub(crate) use rows::recorded_event;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use tributary_core::backend::validate_batch;
use tributary_core::{
    AppendOutcome, CatchUpConfig, Envelope, Error, EventId, EventStore, EventStream,
    ExpectedVersion, Payload, Position, RecordedEvent, Result, Snapshot, StreamId, StreamVersion,
    catch_up,
};

use crate::database::SqliteDatabase;
use crate::sql_error::SqlResultExt;

/// Pages at least this large are read by two connections in parallel.
const PARALLEL_READ_MIN: usize = 2048;

/// An [`EventStore`] in a SQLite service database.
#[derive(Clone, Debug)]
pub struct SqliteEventStore {
    db: SqliteDatabase,
}

impl SqliteEventStore {
    pub fn new(db: SqliteDatabase) -> Self {
        Self { db }
    }

    pub fn database(&self) -> &SqliteDatabase {
        &self.db
    }
}

fn collect_events(rows: rusqlite::Rows<'_>, capacity: usize) -> Result<Vec<RecordedEvent>> {
    let mut rows = rows;
    let mut out = Vec::with_capacity(capacity.min(4096));
    while let Some(row) = rows.next().context("reading events")? {
        out.push(recorded_event(row)?);
    }
    Ok(out)
}

pub(crate) fn read_stream_in(
    conn: &Connection,
    stream: &StreamId,
    from: StreamVersion,
    max: usize,
) -> Result<Vec<RecordedEvent>> {
    let mut stmt = conn
        .prepare_cached(include_str!("read_stream.sql"))
        .context("preparing read_stream")?;
    let rows = stmt
        .query(params![
            stream.as_str(),
            from.get() as i64,
            max.min(i64::MAX as usize) as i64
        ])
        .context("reading a stream")?;
    collect_events(rows, max)
}

/// As [`read_all_in`], but stops once the events' data passes `max_bytes` (at least one event).
pub(crate) fn read_all_limited(
    conn: &Connection,
    from: Position,
    max: usize,
    max_bytes: usize,
) -> Result<Vec<RecordedEvent>> {
    let mut stmt = conn
        .prepare_cached(include_str!("read_all.sql"))
        .context("preparing read_all")?;
    let mut rows = stmt
        .query(params![
            from.get() as i64,
            max.min(i64::MAX as usize) as i64
        ])
        .context("reading all events")?;
    let mut out = Vec::new();
    let mut bytes = 0;
    while bytes < max_bytes
        && let Some(row) = rows.next().context("reading events")?
    {
        let event = recorded_event(row)?;
        bytes += event.envelope.data.len();
        out.push(event);
    }
    Ok(out)
}

pub(crate) fn read_all_in(
    conn: &Connection,
    from: Position,
    max: usize,
) -> Result<Vec<RecordedEvent>> {
    let mut stmt = conn
        .prepare_cached(include_str!("read_all.sql"))
        .context("preparing read_all")?;
    let rows = stmt
        .query(params![
            from.get() as i64,
            max.min(i64::MAX as usize) as i64
        ])
        .context("reading all events")?;
    collect_events(rows, max)
}

#[async_trait]
impl EventStore for SqliteEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        mut events: Vec<Envelope>,
    ) -> Result<AppendOutcome> {
        tributary_core::trace::stamp_appended(stream, &mut events);
        validate_batch(&events, self.db.config().max_event_bytes)?;
        let stream = stream.clone();
        self.db
            .write(move |tx| append_in_tx(tx.connection(), &stream, expected, &events))
            .await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from: StreamVersion,
        max: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let stream = stream.clone();
        self.db
            .read(move |conn| read_stream_in(conn, &stream, from, max))
            .await
    }

    async fn read_all(&self, from: Position, max: usize) -> Result<Vec<RecordedEvent>> {
        if max < PARALLEL_READ_MIN {
            return self.db.read(move |conn| read_all_in(conn, from, max)).await;
        }
        // Decoding rows costs far more than finding them, so a large page is split in two
        // halves decoded on two connections at once. Both halves agree: rows below the split
        // position are committed and can never change (positions grow in commit order and
        // events are append-only), so the second read cannot see a different first half.
        let half = max / 2;
        let split = self
            .db
            .read(move |conn| {
                conn.prepare_cached(include_str!("nth_position.sql"))
                    .context("preparing nth_position")?
                    .query_row(params![from.get() as i64, half as i64], |r| {
                        r.get::<_, i64>(0)
                    })
                    .optional()
                    .context("finding the split position")
            })
            .await?;
        let Some(split) = split else {
            return self.db.read(move |conn| read_all_in(conn, from, max)).await;
        };
        let split = Position::new(split as u64);
        let (first, second) = tokio::join!(
            self.db.read(move |conn| read_all_in(conn, from, half)),
            self.db
                .read(move |conn| read_all_in(conn, split, max - half)),
        );
        let mut events = first?;
        debug_assert!(events.last().is_none_or(|e| e.position < split));
        events.extend(second?);
        Ok(events)
    }

    fn subscribe_all(&self, from: Position) -> EventStream {
        let db = self.db.clone();
        let config = CatchUpConfig {
            poll_every: db.config().poll_every,
            ..CatchUpConfig::default()
        };
        catch_up(from, db.commits(), config, move |from, max| {
            let db = db.clone();
            async move { db.read(move |conn| read_all_in(conn, from, max)).await }
        })
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<StreamVersion> {
        let stream = stream.clone();
        self.db
            .read(move |conn| append::stream_version(conn, &stream))
            .await
    }

    async fn position_of(&self, id: &EventId) -> Result<Option<Position>> {
        let id = *id;
        self.db
            .read(move |conn| Ok(append::find_event(conn, &id)?.map(|at| at.position)))
            .await
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>> {
        let stream = stream.clone();
        self.db
            .read(move |conn| load_snapshot_in(conn, &stream))
            .await
    }

    async fn save_snapshot(&self, stream: &StreamId, snapshot: Snapshot) -> Result<()> {
        let stream = stream.clone();
        self.db
            .write(move |tx| save_snapshot_in(tx.connection(), &stream, &snapshot))
            .await
    }
}

/// The latest snapshot of `stream` on `conn` (a reader, or a unit's transaction).
pub(crate) fn load_snapshot_in(conn: &Connection, stream: &StreamId) -> Result<Option<Snapshot>> {
    let row = conn
        .prepare_cached(include_str!("load_snapshot.sql"))
        .context("preparing load_snapshot")?
        .query_row([stream.as_str()], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })
        .optional()
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

/// Saves `snapshot` of `stream` in the transaction on `conn`, unless a newer one is stored.
pub(crate) fn save_snapshot_in(
    conn: &Connection,
    stream: &StreamId,
    snapshot: &Snapshot,
) -> Result<()> {
    conn.prepare_cached(include_str!("save_snapshot.sql"))
        .context("preparing save_snapshot")?
        .execute(params![
            stream.as_str(),
            snapshot.version.get() as i64,
            snapshot.state.as_str()
        ])
        .context("saving a snapshot")?;
    Ok(())
}
