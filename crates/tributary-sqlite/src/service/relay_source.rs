//! The outbox and the event store as relay sources; a lease (see `lease`) keeps one relay
//! active per source.
//!
//! Order: one writer at a time commits, and ids/positions are assigned inside the writing
//! transaction, so id order is commit order and a reader never skips a late commit.

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};
use tributary_core::{
    Backlog, Error, EventId, GroupLock, LeaseGuard, LeaseState, MAX_BATCH_BYTES, OutgoingMessage,
    Position, RelaySource, Result, SourceBatch, Topic, topic_for_event,
};

use crate::database::SqliteDatabase;
use crate::event_store::read_all_limited;
use crate::sql_error::SqlResultExt;

use super::lease::{file_lease_state, try_file_lease};

/// The outbox table: published rows are deleted.
pub struct SqliteOutboxSource {
    db: SqliteDatabase,
}

impl SqliteOutboxSource {
    pub fn new(db: SqliteDatabase) -> Self {
        Self { db }
    }
}

/// The event store read by position; a cursor row records what was published.
pub struct SqliteEventsSource {
    db: SqliteDatabase,
    name: String,
    default_topic: Topic,
}

impl SqliteEventsSource {
    pub fn new(db: SqliteDatabase, name: &str, default_topic: Topic) -> Self {
        Self {
            db,
            name: tributary_core::backend::events_cursor(name),
            default_topic,
        }
    }
}

fn decode_outbox_row(row: &rusqlite::Row<'_>) -> Result<(i64, OutgoingMessage)> {
    let bad = |e: rusqlite::Error| Error::decode("outbox row", e);
    let id: i64 = row.get(0).map_err(bad)?;
    let topic = Topic::new(row.get::<_, String>(1).map_err(bad)?)
        .map_err(|e| Error::decode(format!("outbox row {id}"), e))?;
    let key: String = row.get(2).map_err(bad)?;
    let event_id = EventId::from_slice(&row.get::<_, Vec<u8>>(3).map_err(bad)?)?;
    let payload: Vec<u8> = row.get(4).map_err(bad)?;
    Ok((
        id,
        OutgoingMessage {
            topic,
            key,
            id: event_id,
            payload,
        },
    ))
}

#[async_trait]
impl RelaySource for SqliteOutboxSource {
    fn name(&self) -> &str {
        "outbox"
    }

    async fn read_batch(&self, max: usize) -> Result<Option<SourceBatch>> {
        self.db
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(include_str!("read_outbox.sql"))
                    .context("preparing read_outbox")?;
                let mut rows = stmt
                    .query([max.min(i64::MAX as usize) as i64])
                    .context("reading the outbox")?;
                let mut messages = Vec::new();
                let mut last = 0;
                let mut bytes = 0;
                while bytes < MAX_BATCH_BYTES
                    && let Some(row) = rows.next().context("reading the outbox")?
                {
                    let (id, message) = decode_outbox_row(row)?;
                    last = id;
                    bytes += message.payload.len();
                    messages.push(message);
                }
                Ok((!messages.is_empty()).then(|| SourceBatch {
                    messages,
                    through: Position::new(last as u64),
                }))
            })
            .await
    }

    async fn mark_published(&self, through: Position) -> Result<()> {
        self.db
            .write(move |tx| {
                tx.connection()
                    .prepare_cached(include_str!("delete_outbox.sql"))
                    .context("preparing delete_outbox")?
                    .execute([through.get() as i64])
                    .context("deleting published outbox rows")
                    .map(|_| ())
            })
            .await
    }

    fn commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.db.commits()
    }

    fn poll_every(&self) -> Duration {
        self.db.config().poll_every
    }

    async fn try_lease(&self) -> Result<Option<Box<dyn LeaseGuard>>> {
        try_file_lease(&self.db, "outbox", GroupLock::Exclusive).await
    }

    async fn lease_state(&self) -> Result<Option<LeaseState>> {
        Ok(Some(file_lease_state(&self.db, "outbox").await?))
    }

    async fn backlog(&self) -> Result<Option<Backlog>> {
        let (pending, oldest): (i64, Option<String>) = self
            .db
            .read(|conn| {
                conn.prepare_cached(include_str!("outbox_backlog.sql"))
                    .context("preparing outbox_backlog")?
                    .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
                    .context("counting the outbox")
            })
            .await?;
        let oldest_age = oldest
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| {
                (chrono::Utc::now() - t.to_utc())
                    .to_std()
                    .unwrap_or_default()
            });
        Ok(Some(Backlog {
            pending: pending.max(0) as u64,
            oldest_age,
        }))
    }
}

#[async_trait]
impl RelaySource for SqliteEventsSource {
    fn name(&self) -> &str {
        &self.name
    }

    async fn read_batch(&self, max: usize) -> Result<Option<SourceBatch>> {
        let name = self.name.clone();
        let default_topic = self.default_topic.clone();
        self.db
            .read(move |conn| {
                let cursor: Option<i64> = conn
                    .prepare_cached(include_str!("get_cursor.sql"))
                    .context("preparing get_cursor")?
                    .query_row([&name], |r| r.get(0))
                    .optional()
                    .context("reading a relay cursor")?;
                let from = Position::new(cursor.unwrap_or(0) as u64).next();
                let events = read_all_limited(conn, from, max, MAX_BATCH_BYTES)?;
                let Some(last) = events.last().map(|e| e.position) else {
                    return Ok(None);
                };
                Ok(Some(SourceBatch {
                    messages: events
                        .iter()
                        .map(|e| {
                            OutgoingMessage::from_envelope(
                                topic_for_event(&e.envelope, &default_topic),
                                &e.envelope,
                            )
                        })
                        .collect(),
                    through: last,
                }))
            })
            .await
    }

    async fn mark_published(&self, through: Position) -> Result<()> {
        let name = self.name.clone();
        self.db
            .write(move |tx| {
                tx.connection()
                    .prepare_cached(include_str!("set_cursor.sql"))
                    .context("preparing set_cursor")?
                    .execute(params![name, through.get() as i64])
                    .context("advancing a relay cursor")
                    .map(|_| ())
            })
            .await
    }

    fn commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.db.commits()
    }

    fn poll_every(&self) -> Duration {
        self.db.config().poll_every
    }

    async fn try_lease(&self) -> Result<Option<Box<dyn LeaseGuard>>> {
        try_file_lease(&self.db, &self.name, GroupLock::Exclusive).await
    }

    async fn backlog(&self) -> Result<Option<Backlog>> {
        let name = self.name.clone();
        let (pending, oldest_ns): (i64, Option<i64>) = self
            .db
            .read(move |conn| {
                conn.prepare_cached(include_str!("events_backlog.sql"))
                    .context("preparing events_backlog")?
                    .query_row([&name], |r| Ok((r.get(0)?, r.get(1)?)))
                    .context("counting unpublished events")
            })
            .await?;
        let oldest_age = oldest_ns.map(|ns| {
            (chrono::Utc::now() - chrono::DateTime::from_timestamp_nanos(ns))
                .to_std()
                .unwrap_or_default()
        });
        Ok(Some(Backlog {
            pending: pending.max(0) as u64,
            oldest_age,
        }))
    }

    async fn lease_state(&self) -> Result<Option<LeaseState>> {
        Ok(Some(file_lease_state(&self.db, &self.name).await?))
    }
}
