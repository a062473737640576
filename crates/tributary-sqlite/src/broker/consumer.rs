//! One group's cursor on one partition of the embedded log.

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::params;
use tokio::sync::watch;
use tributary_core::{
    Delivery, Error, EventId, GroupName, MAX_BATCH_BYTES, Offset, Partition, PartitionConsumer,
    Result, Topic,
};

use crate::database::SqliteDatabase;
use crate::sql_error::SqlResultExt;

/// A [`PartitionConsumer`] of the embedded broker.
pub struct SqliteBrokerConsumer {
    db: SqliteDatabase,
    group: GroupName,
    topic: Topic,
    partition: Partition,
    /// The last offset handed out (starts at the committed offset).
    fetched: Offset,
    /// The group's committed offset, as far as this consumer committed it.
    committed: Offset,
    commits: watch::Receiver<u64>,
}

impl SqliteBrokerConsumer {
    pub(crate) async fn open(
        db: SqliteDatabase,
        group: GroupName,
        topic: Topic,
        partition: Partition,
    ) -> Result<Self> {
        let (g, t) = (group.clone(), topic.clone());
        // Registering the group protects its messages from retention from now on.
        let committed = db
            .write(move |tx| {
                let conn = tx.connection();
                conn.prepare_cached(include_str!("register_group.sql"))
                    .context("preparing register_group")?
                    .execute(params![g.as_str(), t.as_str(), partition.get()])
                    .context("registering a consumer group")?;
                conn.prepare_cached(include_str!("get_offset.sql"))
                    .context("preparing get_offset")?
                    .query_row(params![g.as_str(), t.as_str(), partition.get()], |r| {
                        r.get::<_, i64>(0)
                    })
                    .context("reading a committed offset")
            })
            .await?;
        let commits = db.commits();
        Ok(Self {
            db,
            group,
            topic,
            partition,
            fetched: Offset::new(committed.max(0) as u64),
            committed: Offset::new(committed.max(0) as u64),
            commits,
        })
    }

    async fn read(&mut self, max: usize) -> Result<Vec<Delivery>> {
        let (topic, partition, after) = (self.topic.clone(), self.partition, self.fetched);
        let batch = self
            .db
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(include_str!("fetch.sql"))
                    .context("preparing fetch")?;
                let mut rows = stmt
                    .query(params![
                        topic.as_str(),
                        partition.get(),
                        after.get() as i64,
                        max.min(i64::MAX as usize) as i64
                    ])
                    .context("reading the log")?;
                let mut out: Vec<Delivery> = Vec::new();
                let mut bytes = 0;
                while bytes < MAX_BATCH_BYTES
                    && let Some(row) = rows.next().context("reading the log")?
                {
                    let bad = |e: rusqlite::Error| Error::decode("log row", e);
                    let id: Vec<u8> = row.get(2).map_err(bad)?;
                    out.push(Delivery {
                        topic: topic.clone(),
                        partition,
                        offset: Offset::new(row.get::<_, i64>(0).map_err(bad)? as u64),
                        key: row.get(1).map_err(bad)?,
                        id: EventId::from_slice(&id).ok(),
                        payload: row.get(3).map_err(bad)?,
                        delivery_count: 1,
                    });
                    bytes += out.last().map_or(0, |d| d.payload.len());
                }
                Ok(out)
            })
            .await?;
        if let Some(last) = batch.last() {
            self.fetched = last.offset;
        }
        Ok(batch)
    }
}

#[async_trait]
impl PartitionConsumer for SqliteBrokerConsumer {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        self.commits.borrow_and_update();
        let batch = self.read(max).await?;
        if !batch.is_empty() {
            return Ok(batch);
        }
        // Wait for a commit in this process, or poll for publishers in other processes.
        let deadline = tokio::time::Instant::now() + wait;
        let poll = self.db.config().poll_every;
        loop {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let nap = poll.min(deadline - now);
            let _ = tokio::time::timeout(nap, self.commits.changed()).await;
            self.commits.borrow_and_update();
            let batch = self.read(max).await?;
            if !batch.is_empty() {
                return Ok(batch);
            }
        }
    }

    async fn commit(&mut self, offset: Offset) -> Result<()> {
        let (group, topic, partition) = (self.group.clone(), self.topic.clone(), self.partition);
        self.db
            .write(move |tx| {
                tx.connection()
                    .prepare_cached(include_str!("commit_offset.sql"))
                    .context("preparing commit_offset")?
                    .execute(params![
                        group.as_str(),
                        topic.as_str(),
                        partition.get(),
                        offset.get() as i64
                    ])
                    .context("committing an offset")
                    .map(|_| ())
            })
            .await?;
        self.committed = self.committed.max(offset);
        Ok(())
    }

    async fn lag(&mut self) -> Result<Option<u64>> {
        let (topic, partition, after) = (self.topic.clone(), self.partition, self.committed);
        let count: i64 = self
            .db
            .read(move |conn| {
                conn.prepare_cached(include_str!("lag.sql"))
                    .context("preparing lag")?
                    .query_row(
                        params![topic.as_str(), partition.get(), after.get() as i64],
                        |r| r.get(0),
                    )
                    .context("counting the partition's messages after the committed offset")
            })
            .await?;
        Ok(Some(count.max(0) as u64))
    }
}
