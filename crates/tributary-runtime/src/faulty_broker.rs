//! The in-memory broker with faults switched on and off by a test: the runtime's tasks must
//! ride through a broker that refuses or is briefly unavailable.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tributary_core::{
    Broker, Delivery, Error, GroupName, InMemoryBroker, Offset, OutgoingMessage, Partition,
    PartitionConsumer, Result, Topic,
};

pub(crate) struct FaultyBroker {
    pub inner: InMemoryBroker,
    /// Every publish is refused for good (as NATS refuses a message above `max_payload`).
    pub refuse_publish: AtomicBool,
    /// Every partition count answers "unavailable" (as JetStream does during an election).
    pub partitions_unavailable: AtomicBool,
    /// How many partition counts were asked for, to wait on without sleeping.
    pub partition_counts: watch::Sender<u32>,
    /// Every fetch answers "unavailable" (as a restarting NATS server does).
    pub fetch_unavailable: Arc<AtomicBool>,
    /// How many fetches failed, to wait on without sleeping.
    pub failed_fetches: Arc<watch::Sender<u32>>,
}

impl FaultyBroker {
    pub fn new() -> Self {
        Self {
            inner: InMemoryBroker::new(Default::default()),
            refuse_publish: AtomicBool::new(false),
            partitions_unavailable: AtomicBool::new(false),
            partition_counts: watch::channel(0).0,
            fetch_unavailable: Arc::default(),
            failed_fetches: Arc::new(watch::channel(0).0),
        }
    }
}

#[async_trait]
impl Broker for FaultyBroker {
    async fn ensure_topic(&self, topic: &Topic, partitions: u32) -> Result<()> {
        self.inner.ensure_topic(topic, partitions).await
    }
    async fn partitions(&self, topic: &Topic) -> Result<u32> {
        self.partition_counts.send_modify(|n| *n += 1);
        if self.partitions_unavailable.load(Ordering::SeqCst) {
            return Err(Error::unavailable(
                format!("the stream of topic {topic}"),
                "no leader elected yet",
            ));
        }
        self.inner.partitions(topic).await
    }
    async fn publish(&self, messages: &[OutgoingMessage]) -> Result<()> {
        if self.refuse_publish.load(Ordering::SeqCst) {
            return Err(Error::TooLarge {
                what: "message".into(),
                size: 2 << 20,
                limit: 1 << 20,
            });
        }
        self.inner.publish(messages).await
    }
    async fn consume(
        &self,
        group: &GroupName,
        topic: &Topic,
        partition: Partition,
    ) -> Result<Box<dyn PartitionConsumer>> {
        Ok(Box::new(FaultyConsumer {
            inner: self.inner.consume(group, topic, partition).await?,
            unavailable: self.fetch_unavailable.clone(),
            failed: self.failed_fetches.clone(),
        }))
    }
    fn redelivery_horizon(&self) -> Duration {
        self.inner.redelivery_horizon()
    }
    async fn reset_group(&self, group: &GroupName, topic: &Topic) -> Result<()> {
        self.inner.reset_group(group, topic).await
    }
    async fn delete_group(&self, group: &GroupName, topic: &Topic) -> Result<()> {
        self.inner.delete_group(group, topic).await
    }
    async fn group_lags(&self) -> Result<Option<Vec<tributary_core::GroupLag>>> {
        self.inner.group_lags().await
    }

    async fn last_messages(&self) -> Result<Option<Vec<tributary_core::LastMessage>>> {
        self.inner.last_messages().await
    }
}

struct FaultyConsumer {
    inner: Box<dyn PartitionConsumer>,
    unavailable: Arc<AtomicBool>,
    failed: Arc<watch::Sender<u32>>,
}

#[async_trait]
impl PartitionConsumer for FaultyConsumer {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        if self.unavailable.load(Ordering::SeqCst) {
            self.failed.send_modify(|n| *n += 1);
            return Err(Error::unavailable(
                "the partition",
                "the server is restarting",
            ));
        }
        self.inner.fetch(max, wait).await
    }
    async fn commit(&mut self, offset: Offset) -> Result<()> {
        self.inner.commit(offset).await
    }
}
