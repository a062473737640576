//! The embedded broker: a durable, partitioned log in its own SQLite file.
//!
//! Delivery guarantee: at-least-once. A group receives every message of a partition after its
//! committed offset, in offset order; after a crash, everything not committed is delivered
//! again. Messages are kept until every group of their partition committed them *and* they
//! are older than the retention age (or the partition is over its size limit).
//!
//! Publishing goes through the file's group-commit writer: a relay's batch is one transaction,
//! and the publish returns only after that commit is durable (`synchronous=FULL`).

mod consumer;
mod retention;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use tributary_core::{
    Broker, Error, GroupLag, GroupName, LastMessage, Offset, OutgoingMessage, Partition,
    PartitionConsumer, Result, Topic,
};

use crate::config::SqliteConfig;
use crate::database::SqliteDatabase;
use crate::schema::SqliteDatabaseKind;
use crate::sql_error::SqlResultExt;
use crate::unit_of_work::now_ms;

pub use consumer::SqliteBrokerConsumer;

/// Settings of the embedded broker.
#[derive(Clone, Debug)]
pub struct SqliteBrokerConfig {
    pub sqlite: SqliteConfig,
    /// Partitions of a topic created on first use.
    pub default_partitions: u32,
    /// Messages older than this are removed once every group committed them.
    pub max_age: Duration,
    /// A partition over this many payload bytes loses its oldest committed messages.
    pub max_partition_bytes: Option<u64>,
    /// How often publishing also enforces retention.
    pub retention_every: Duration,
}

impl Default for SqliteBrokerConfig {
    fn default() -> Self {
        Self {
            sqlite: SqliteConfig::default(),
            default_partitions: 8,
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_partition_bytes: None,
            retention_every: Duration::from_secs(60),
        }
    }
}

impl SqliteBrokerConfig {
    pub fn with_sqlite(mut self, sqlite: SqliteConfig) -> Self {
        self.sqlite = sqlite;
        self
    }
    pub fn with_default_partitions(mut self, n: u32) -> Self {
        self.default_partitions = n.max(1);
        self
    }
    pub fn with_max_age(mut self, age: Duration) -> Self {
        self.max_age = age;
        self
    }
    pub fn with_max_partition_bytes(mut self, bytes: Option<u64>) -> Self {
        self.max_partition_bytes = bytes;
        self
    }
    pub fn with_retention_every(mut self, every: Duration) -> Self {
        self.retention_every = every;
        self
    }
}

/// The embedded [`Broker`].
#[derive(Clone)]
pub struct SqliteBroker {
    db: SqliteDatabase,
    config: Arc<SqliteBrokerConfig>,
    /// Partition counts never change once a topic exists, so they are cached.
    partitions: Arc<Mutex<HashMap<Topic, u32>>>,
    last_retention: Arc<Mutex<Instant>>,
}

impl SqliteBroker {
    /// Opens (creating if needed) the broker log at `path`.
    ///
    /// # Errors
    /// As [`SqliteDatabase::open`]; a service database cannot be opened as a broker log.
    pub fn open(path: impl AsRef<Path>, config: SqliteBrokerConfig) -> Result<Self> {
        let db = SqliteDatabase::open_kind(
            path.as_ref(),
            config.sqlite.clone(),
            SqliteDatabaseKind::Broker,
        )?;
        Ok(Self {
            db,
            config: Arc::new(config),
            partitions: Arc::default(),
            last_retention: Arc::new(Mutex::new(Instant::now())),
        })
    }

    pub fn database(&self) -> &SqliteDatabase {
        &self.db
    }

    fn cached_partitions(&self, topic: &Topic) -> Option<u32> {
        self.partitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(topic)
            .copied()
    }

    fn remember(&self, topic: &Topic, n: u32) {
        self.partitions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.clone(), n);
    }

    /// Removes what retention allows now; returns how many messages were removed.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn enforce_retention(&self) -> Result<u64> {
        *self
            .last_retention
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Instant::now();
        retention::enforce(&self.db, &self.config).await
    }

    fn retention_due(&self) -> bool {
        self.last_retention
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
            >= self.config.retention_every
    }
}

/// The partition count of `topic`, creating the topic with `wanted` partitions if it is new.
/// Runs inside a unit on the broker's writer.
fn ensure_in(conn: &Connection, topic: &Topic, wanted: u32, strict: bool) -> Result<u32> {
    let existing: Option<u32> = conn
        .prepare_cached(include_str!("get_topic.sql"))
        .context("preparing get_topic")?
        .query_row([topic.as_str()], |r| r.get(0))
        .optional()
        .context("reading a topic")?;
    match existing {
        Some(n) if strict && n != wanted => Err(Error::invalid(format!(
            "topic {topic} has {n} partitions, not {wanted}; partition counts cannot change"
        ))),
        Some(n) => Ok(n),
        None => {
            if wanted == 0 {
                return Err(Error::invalid("a topic needs at least one partition"));
            }
            conn.prepare_cached(include_str!("insert_topic.sql"))
                .context("preparing insert_topic")?
                .execute(params![topic.as_str(), wanted])
                .context("creating a topic")?;
            Ok(wanted)
        }
    }
}

#[async_trait]
impl Broker for SqliteBroker {
    async fn ensure_topic(&self, topic: &Topic, partitions: u32) -> Result<()> {
        let t = topic.clone();
        let n = self
            .db
            .write(move |tx| ensure_in(tx.connection(), &t, partitions, true))
            .await?;
        self.remember(topic, n);
        Ok(())
    }

    async fn partitions(&self, topic: &Topic) -> Result<u32> {
        if let Some(n) = self.cached_partitions(topic) {
            return Ok(n);
        }
        let t = topic.clone();
        let default = self.config.default_partitions;
        let n = self
            .db
            .write(move |tx| ensure_in(tx.connection(), &t, default, false))
            .await?;
        self.remember(topic, n);
        Ok(n)
    }

    async fn publish(&self, messages: &[OutgoingMessage]) -> Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        // Resolve partition counts first (rarely a write), so the publish unit only inserts.
        let mut counts: HashMap<Topic, u32> = HashMap::new();
        for m in messages {
            if !counts.contains_key(&m.topic) {
                counts.insert(m.topic.clone(), self.partitions(&m.topic).await?);
            }
        }
        let rows: Vec<(Topic, u32, OutgoingMessage)> = messages
            .iter()
            .map(|m| {
                let n = counts.get(&m.topic).copied().unwrap_or(1);
                (
                    m.topic.clone(),
                    Partition::for_key(&m.key, n).get(),
                    m.clone(),
                )
            })
            .collect();
        self.db
            .write(move |tx| {
                let conn = tx.connection();
                let mut insert = conn
                    .prepare_cached(include_str!("insert_message.sql"))
                    .context("preparing insert_message")?;
                let now = now_ms();
                for (topic, partition, m) in &rows {
                    insert
                        .execute(params![
                            topic.as_str(),
                            partition,
                            &m.id.to_bytes()[..],
                            m.key,
                            m.payload,
                            now
                        ])
                        .context("appending to the log")?;
                }
                Ok::<_, Error>(())
            })
            .await?;
        if self.retention_due() {
            // Retention problems must not fail a publish that already committed.
            if let Err(e) = self.enforce_retention().await {
                tracing::warn!(error = %e, "broker retention failed");
            }
        }
        Ok(())
    }

    async fn consume(
        &self,
        group: &GroupName,
        topic: &Topic,
        partition: Partition,
    ) -> Result<Box<dyn PartitionConsumer>> {
        partition.check_in(topic, self.partitions(topic).await?)?;
        Ok(Box::new(
            SqliteBrokerConsumer::open(self.db.clone(), group.clone(), topic.clone(), partition)
                .await?,
        ))
    }

    /// Unbounded: retention never removes a message a group has not committed, so a group
    /// that stops between handling a message and committing it gets it again whenever it
    /// comes back, however long that takes. Inbox entries are therefore kept (the default
    /// consumer configuration does not prune them on this broker).
    fn redelivery_horizon(&self) -> Duration {
        Duration::MAX
    }

    async fn delete_group(&self, group: &GroupName, topic: &Topic) -> Result<()> {
        let (group, topic) = (group.clone(), topic.clone());
        self.db
            .write(move |tx| {
                tx.connection()
                    .prepare_cached(include_str!("delete_group.sql"))
                    .context("preparing delete_group")?
                    .execute(params![group.as_str(), topic.as_str()])
                    .context("deleting a consumer group")
                    .map(|_| ())
            })
            .await
    }

    async fn reset_group(&self, group: &GroupName, topic: &Topic) -> Result<()> {
        let (group, topic) = (group.clone(), topic.clone());
        self.db
            .write(move |tx| {
                tx.connection()
                    .prepare_cached(include_str!("reset_group.sql"))
                    .context("preparing reset_group")?
                    .execute(params![group.as_str(), topic.as_str()])
                    .context("resetting a consumer group")
                    .map(|_| ())
            })
            .await
    }

    async fn group_lags(&self) -> Result<Option<Vec<GroupLag>>> {
        let rows: Vec<(String, String, u32, i64)> = self
            .db
            .read(|conn| {
                conn.prepare_cached(include_str!("group_lags.sql"))
                    .context("preparing group_lags")?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                    .context("reading the groups' offsets")?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .context("reading the groups' offsets")
            })
            .await?;
        rows.into_iter()
            .map(|(group, topic, partition, lag)| {
                let named = |e: Error| Error::decode(format!("group {group:?} on {topic:?}"), e);
                Ok(GroupLag {
                    group: GroupName::new(&group).map_err(named)?,
                    topic: Topic::new(&topic).map_err(named)?,
                    partition: Partition::new(partition),
                    lag: lag.max(0) as u64,
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    async fn last_messages(&self) -> Result<Option<Vec<LastMessage>>> {
        type Row = (String, u32, i64, Vec<u8>);
        let rows: Vec<Row> = self
            .db
            .read(|conn| {
                conn.prepare_cached(include_str!("last_messages.sql"))
                    .context("preparing last_messages")?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                    .context("reading the partitions' newest messages")?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .context("reading the partitions' newest messages")
            })
            .await?;
        rows.into_iter()
            .map(|(topic, partition, seq, payload)| {
                Ok(LastMessage {
                    topic: Topic::new(&topic)
                        .map_err(|e| Error::decode(format!("topic {topic:?}"), e))?,
                    partition: Partition::new(partition),
                    offset: Offset::new(seq.max(0) as u64),
                    payload,
                })
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}
