//! The outbox and the event store as relay sources.
//!
//! Delivery guarantee: at-least-once, in reading order (see the `position` module). Both
//! read committed rows below the transaction horizon in `(tx_id, tx_ordinal)` order, so a row
//! whose transaction commits late is read after the rows read before it commits — never
//! skipped. The outbox source deletes everything up to the last row of a published batch;
//! the event-store source keeps the `(tx_id, tx_ordinal)` pair of the last published event in
//! `relay_cursors`.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use tributary_core::{
    Backlog, Error, EventId, GroupLock, LeaseGuard, LeaseState, OutgoingMessage, Position,
    RelaySource, Result, SourceBatch, Topic, topic_for_event,
};
use uuid::Uuid;

use crate::database::{Inner, PgDatabase};
use crate::error::SqlxResultExt;
use crate::event_store::{limit, read_all_settled};
use crate::horizon::{after, settled_read};
use crate::lag::{PgLag, lag};
use crate::position::TxPosition;

use super::lease::{lease_state, try_lease};

/// The outbox table as a relay source: published rows are deleted.
#[derive(Clone, Debug)]
pub struct PgOutboxSource {
    db: PgDatabase,
}

impl PgOutboxSource {
    pub fn new(db: PgDatabase) -> Self {
        Self { db }
    }

    /// How far the relay of this outbox is behind: every row in the outbox is unpublished.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the server cannot be reached.
    pub async fn lag(&self) -> Result<PgLag> {
        lag(&self.db, &self.db.inner.sql.outbox_lag, None).await
    }
}

/// The event store read in order; a cursor row records what was published.
#[derive(Clone, Debug)]
pub struct PgEventsSource {
    db: PgDatabase,
    name: String,
    default_topic: Topic,
}

impl PgEventsSource {
    pub fn new(db: PgDatabase, name: &str, default_topic: Topic) -> Self {
        Self {
            db,
            name: tributary_core::backend::events_cursor(name),
            default_topic,
        }
    }

    /// The `(tx_id, tx_ordinal)` of the last published event, if any.
    async fn cursor(&self) -> Result<Option<TxPosition>> {
        let inner = &self.db.inner;
        let row: Option<(i64, i32)> = sqlx::query_as(inner.sql.get_cursor.sql())
            .bind(&self.name)
            .fetch_optional(&inner.pool)
            .await
            .context("reading a relay cursor")?;
        row.map(|(tx_id, ordinal)| TxPosition::from_row(tx_id, ordinal))
            .transpose()
    }

    /// How far this source's relay is behind.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the server cannot be reached.
    pub async fn lag(&self) -> Result<PgLag> {
        let from = self.cursor().await?.map(after).unwrap_or_default();
        lag(&self.db, &self.db.inner.sql.events_lag, Some(from)).await
    }
}

async fn read_outbox_once(
    db: &Inner,
    from: TxPosition,
    max: usize,
) -> Result<Vec<(TxPosition, OutgoingMessage)>> {
    let rows = sqlx::query(db.sql.read_outbox.sql())
        .bind(from.tx_i64())
        .bind(from.ordinal_i32())
        .bind(limit(max))
        .fetch_all(&db.pool)
        .await
        .context("reading the outbox")?;
    rows.iter()
        .map(|row| {
            let bad = |e: sqlx::Error| Error::decode("outbox row", e);
            let at =
                TxPosition::from_row(row.try_get(0).map_err(bad)?, row.try_get(1).map_err(bad)?)?;
            let topic = Topic::new(row.try_get::<String, _>(2).map_err(bad)?)
                .map_err(|e| Error::decode(format!("outbox row {at:?}"), e))?;
            Ok((
                at,
                OutgoingMessage {
                    topic,
                    key: row.try_get(3).map_err(bad)?,
                    id: EventId::from_uuid(row.try_get::<Uuid, _>(4).map_err(bad)?),
                    payload: row.try_get(5).map_err(bad)?,
                },
            ))
        })
        .collect()
}

fn batch(rows: Vec<(TxPosition, OutgoingMessage)>) -> Result<Option<SourceBatch>> {
    let Some(&(last, _)) = rows.last() else {
        return Ok(None);
    };
    Ok(Some(SourceBatch {
        messages: rows.into_iter().map(|(_, m)| m).collect(),
        through: last.to_position()?,
    }))
}

#[async_trait]
impl RelaySource for PgOutboxSource {
    fn name(&self) -> &str {
        "outbox"
    }

    async fn read_batch(&self, max: usize) -> Result<Option<SourceBatch>> {
        let db = &self.db.inner;
        let rows = settled_read(
            db,
            TxPosition::default(),
            max,
            &db.sql.outbox_held_back,
            |from, n| read_outbox_once(db, from, n),
        )
        .await?;
        batch(rows)
    }

    async fn mark_published(&self, through: Position) -> Result<()> {
        let db = &self.db.inner;
        let through = TxPosition::from_position(through);
        sqlx::query(db.sql.delete_outbox.sql())
            .bind(through.tx_i64())
            .bind(through.ordinal_i32())
            .execute(&db.pool)
            .await
            .context("deleting published outbox rows")?;
        Ok(())
    }

    fn commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.db.inner.commits_receiver()
    }

    fn poll_every(&self) -> Duration {
        self.db.inner.config.poll_every
    }

    async fn try_lease(&self) -> Result<Option<Box<dyn LeaseGuard>>> {
        Ok(try_lease(&self.db, "outbox", GroupLock::Exclusive)
            .await?
            .map(|l| Box::new(l) as Box<dyn LeaseGuard>))
    }

    async fn backlog(&self) -> Result<Option<Backlog>> {
        Ok(Some(backlog_of(self.lag().await?)))
    }

    async fn lease_state(&self) -> Result<Option<LeaseState>> {
        Ok(Some(lease_state(&self.db, "outbox").await?))
    }
}

fn backlog_of(lag: PgLag) -> Backlog {
    Backlog {
        pending: lag.unread(),
        oldest_age: lag.oldest_unread_age,
    }
}

#[async_trait]
impl RelaySource for PgEventsSource {
    fn name(&self) -> &str {
        &self.name
    }

    async fn read_batch(&self, max: usize) -> Result<Option<SourceBatch>> {
        let from = self.cursor().await?.map(after).unwrap_or_default();
        let events = read_all_settled(&self.db.inner, from, max).await?;
        batch(
            events
                .into_iter()
                .map(|(at, e)| {
                    let topic = topic_for_event(&e.envelope, &self.default_topic);
                    (at, OutgoingMessage::from_envelope(topic, &e.envelope))
                })
                .collect(),
        )
    }

    async fn mark_published(&self, through: Position) -> Result<()> {
        let db = &self.db.inner;
        let through = TxPosition::from_position(through);
        sqlx::query(db.sql.set_cursor.sql())
            .bind(&self.name)
            .bind(through.tx_i64())
            .bind(through.ordinal_i32())
            .execute(&db.pool)
            .await
            .context("advancing a relay cursor")?;
        Ok(())
    }

    fn commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.db.inner.commits_receiver()
    }

    fn poll_every(&self) -> Duration {
        self.db.inner.config.poll_every
    }

    async fn try_lease(&self) -> Result<Option<Box<dyn LeaseGuard>>> {
        Ok(try_lease(&self.db, &self.name, GroupLock::Exclusive)
            .await?
            .map(|l| Box::new(l) as Box<dyn LeaseGuard>))
    }

    async fn backlog(&self) -> Result<Option<Backlog>> {
        Ok(Some(backlog_of(self.lag().await?)))
    }

    async fn lease_state(&self) -> Result<Option<LeaseState>> {
        Ok(Some(lease_state(&self.db, &self.name).await?))
    }
}
