//! Helpers shared by the capture tests: a capture running in the background, a real broker
//! in a temporary directory, and reading back what the broker stored.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tributary_cdc::{CdcConfig, CdcError, CdcSource, PublicationName, SlotName};
use tributary_core::{Broker, Delivery, Envelope, GroupName, Partition, Topic};
use tributary_sqlite::{SqliteBroker, SqliteBrokerConfig};

use crate::support::{PrivatePostgres, eventually};

/// A capture publishing in the background.
pub struct Running {
    pub source: Arc<CdcSource>,
    token: CancellationToken,
    task: JoinHandle<Result<(), CdcError>>,
}

impl Running {
    pub fn start(config: CdcConfig, broker: Arc<dyn Broker>) -> Result<Self> {
        let source = Arc::new(CdcSource::new(config)?);
        let token = CancellationToken::new();
        let task = tokio::spawn(Arc::clone(&source).run(broker, token.clone()));
        Ok(Running {
            source,
            token,
            task,
        })
    }

    /// Stops it gracefully and returns how it ended.
    pub async fn stop(self) -> Result<Result<(), CdcError>> {
        self.token.cancel();
        Ok(tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .context("the capture did not stop")??)
    }

    /// Waits for the capture to end on its own (a fatal error).
    pub async fn ended(self, within: Duration) -> Result<Result<(), CdcError>> {
        Ok(tokio::time::timeout(within, self.task)
            .await
            .context("the capture kept running")??)
    }
}

/// The capture settings of the tests: slot `cdc`, publication `pub`, short intervals.
pub fn config(pg: &PrivatePostgres, db: &str) -> CdcConfig {
    CdcConfig::default()
        .with_connection(pg.replication_config(db))
        .with_name("test-capture")
        .with_slot(SlotName::new("cdc").expect("valid slot name"))
        .with_publication(PublicationName::new("pub").expect("valid publication name"))
        .with_heartbeat_interval(Some(Duration::from_millis(300)))
        .with_lease_check_interval(Duration::from_millis(200))
        .with_idle_wait(Duration::from_millis(100))
}

/// The embedded broker in a temporary directory.
pub fn broker(dir: &tempfile::TempDir) -> Result<Arc<SqliteBroker>> {
    Ok(Arc::new(SqliteBroker::open(
        dir.path().join("broker.db"),
        SqliteBrokerConfig::default().with_default_partitions(4),
    )?))
}

/// Everything the broker stored on `topic`, partition by partition, in offset order.
pub async fn read_topic(broker: &dyn Broker, topic: &str) -> Result<Vec<Delivery>> {
    static READERS: AtomicU64 = AtomicU64::new(0);
    let topic = Topic::new(topic)?;
    let group = GroupName::new(format!("check-{}", READERS.fetch_add(1, Ordering::Relaxed)))?;
    let mut out = Vec::new();
    for partition in 0..broker.partitions(&topic).await? {
        let mut consumer = broker
            .consume(&group, &topic, Partition::new(partition))
            .await?;
        loop {
            let batch = consumer.fetch(1000, Duration::from_millis(1)).await?;
            if batch.is_empty() {
                break;
            }
            out.extend(batch);
        }
    }
    Ok(out)
}

pub fn envelope(delivery: &Delivery) -> Envelope {
    Envelope::from_json(&delivery.payload).expect("a CloudEvents envelope")
}

/// Waits until `topic` holds at least `count` messages, and returns them.
pub async fn wait_for(broker: &dyn Broker, topic: &str, count: usize) -> Result<Vec<Delivery>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let stored = read_topic(broker, topic).await?;
        if stored.len() >= count {
            return Ok(stored);
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("{topic} holds {} messages, expected {count}", stored.len());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the capture's record says the slot streams (created, snapshot done).
pub async fn wait_streaming(pg: &PrivatePostgres, db: &str) -> Result<()> {
    eventually(Duration::from_secs(60), || {
        let status = pg
            .sql(
                db,
                "SELECT status FROM tributary_cdc_slots WHERE slot_name = 'cdc';",
            )
            .unwrap_or_default();
        Ok((status == "streaming").then_some(()))
    })
    .await
    .context("the capture did not start streaming")
}

/// The slot's confirmed_flush_lsn.
pub fn confirmed_flush(pg: &PrivatePostgres, db: &str) -> Result<tributary_cdc::Lsn> {
    let text = pg.sql(
        db,
        "SELECT coalesce(confirmed_flush_lsn::text, '0/0') FROM pg_replication_slots WHERE slot_name = 'cdc';",
    )?;
    Ok(text.parse()?)
}

pub fn current_lsn(pg: &PrivatePostgres, db: &str) -> Result<tributary_cdc::Lsn> {
    Ok(pg.sql(db, "SELECT pg_current_wal_lsn();")?.parse()?)
}
