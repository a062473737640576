//! An in-memory broker with the semantics of the durable ones (partitions, groups, committed
//! offsets, redelivery of uncommitted messages to a new consumer, deduplication by id).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use super::event_store::lock;
use crate::broker::{Broker, Delivery, GroupLag, LastMessage, OutgoingMessage, PartitionConsumer};
use crate::error::{Error, Result};
use crate::ids::EventId;
use crate::topic::{GroupName, Offset, Partition, Topic};

/// Settings of an [`InMemoryBroker`].
#[derive(Clone, Debug)]
pub struct InMemoryBrokerConfig {
    /// Partitions of a topic created implicitly.
    pub default_partitions: u32,
}

impl Default for InMemoryBrokerConfig {
    fn default() -> Self {
        Self {
            default_partitions: 4,
        }
    }
}

struct Stored {
    key: String,
    id: EventId,
    payload: Vec<u8>,
}

struct TopicLog {
    /// Per partition, the messages; the message at index i has offset i + 1.
    partitions: Vec<Vec<Stored>>,
    ids: HashSet<EventId>,
}

#[derive(Default)]
struct State {
    topics: HashMap<Topic, TopicLog>,
    committed: HashMap<(GroupName, Topic, Partition), Offset>,
    /// Highest offset ever handed to a group, to count redeliveries.
    delivered: HashMap<(GroupName, Topic, Partition), Offset>,
}

struct Inner {
    state: Mutex<State>,
    published: watch::Sender<u64>,
    config: InMemoryBrokerConfig,
}

/// A [`Broker`] in memory.
#[derive(Clone)]
pub struct InMemoryBroker {
    inner: Arc<Inner>,
}

impl Default for InMemoryBroker {
    fn default() -> Self {
        Self::new(InMemoryBrokerConfig::default())
    }
}

impl InMemoryBroker {
    pub fn new(config: InMemoryBrokerConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::default(),
                published: watch::channel(0).0,
                config,
            }),
        }
    }
}

fn ensure(state: &mut State, topic: &Topic, partitions: u32) -> Result<u32> {
    if partitions == 0 {
        return Err(Error::invalid("a topic needs at least one partition"));
    }
    let log = state
        .topics
        .entry(topic.clone())
        .or_insert_with(|| TopicLog {
            partitions: (0..partitions).map(|_| Vec::new()).collect(),
            ids: HashSet::new(),
        });
    let existing = log.partitions.len() as u32;
    if existing != partitions {
        return Err(Error::invalid(format!(
            "topic {topic} has {existing} partitions, not {partitions}; partition counts cannot change"
        )));
    }
    Ok(existing)
}

#[async_trait]
impl Broker for InMemoryBroker {
    async fn ensure_topic(&self, topic: &Topic, partitions: u32) -> Result<()> {
        ensure(&mut lock(&self.inner.state), topic, partitions).map(|_| ())
    }

    async fn partitions(&self, topic: &Topic) -> Result<u32> {
        let mut state = lock(&self.inner.state);
        match state.topics.get(topic) {
            Some(log) => Ok(log.partitions.len() as u32),
            None => ensure(&mut state, topic, self.inner.config.default_partitions),
        }
    }

    async fn publish(&self, messages: &[OutgoingMessage]) -> Result<()> {
        let mut state = lock(&self.inner.state);
        for m in messages {
            let n = match state.topics.get(&m.topic) {
                Some(log) => log.partitions.len() as u32,
                None => ensure(&mut state, &m.topic, self.inner.config.default_partitions)?,
            };
            let partition = Partition::for_key(&m.key, n);
            let Some(log) = state.topics.get_mut(&m.topic) else {
                continue;
            };
            if !log.ids.insert(m.id) {
                continue;
            }
            log.partitions[partition.get() as usize].push(Stored {
                key: m.key.clone(),
                id: m.id,
                payload: m.payload.clone(),
            });
        }
        drop(state);
        self.inner.published.send_modify(|n| *n += 1);
        Ok(())
    }

    async fn consume(
        &self,
        group: &GroupName,
        topic: &Topic,
        partition: Partition,
    ) -> Result<Box<dyn PartitionConsumer>> {
        partition.check_in(topic, self.partitions(topic).await?)?;
        // The group is known from its first consumer on (see `group_lags`).
        let committed = *lock(&self.inner.state)
            .committed
            .entry((group.clone(), topic.clone(), partition))
            .or_default();
        Ok(Box::new(MemoryConsumer {
            broker: self.clone(),
            key: (group.clone(), topic.clone(), partition),
            fetched: committed,
            published: self.inner.published.subscribe(),
        }))
    }

    fn redelivery_horizon(&self) -> Duration {
        // Nothing is ever removed from the in-memory log.
        Duration::MAX
    }

    async fn delete_group(&self, group: &GroupName, topic: &Topic) -> Result<()> {
        let mut state = lock(&self.inner.state);
        state
            .committed
            .retain(|(g, t, _), _| !(g == group && t == topic));
        state
            .delivered
            .retain(|(g, t, _), _| !(g == group && t == topic));
        Ok(())
    }

    async fn group_lags(&self) -> Result<Option<Vec<GroupLag>>> {
        let state = lock(&self.inner.state);
        let mut lags: Vec<GroupLag> = state
            .committed
            .iter()
            .map(|((group, topic, partition), committed)| {
                let end = state.topics.get(topic).map_or(0, |log| {
                    log.partitions[partition.get() as usize].len() as u64
                });
                GroupLag {
                    group: group.clone(),
                    topic: topic.clone(),
                    partition: *partition,
                    lag: end.saturating_sub(committed.get()),
                }
            })
            .collect();
        lags.sort_by(|a, b| {
            (&a.group, &a.topic, a.partition).cmp(&(&b.group, &b.topic, b.partition))
        });
        Ok(Some(lags))
    }

    async fn last_messages(&self) -> Result<Option<Vec<LastMessage>>> {
        let state = lock(&self.inner.state);
        let mut last: Vec<LastMessage> = state
            .topics
            .iter()
            .flat_map(|(topic, log)| {
                log.partitions
                    .iter()
                    .enumerate()
                    .filter_map(|(p, messages)| {
                        messages.last().map(|m| LastMessage {
                            topic: topic.clone(),
                            partition: Partition::new(p as u32),
                            offset: Offset::new(messages.len() as u64),
                            payload: m.payload.clone(),
                        })
                    })
            })
            .collect();
        last.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(Some(last))
    }

    async fn reset_group(&self, group: &GroupName, topic: &Topic) -> Result<()> {
        let mut state = lock(&self.inner.state);
        state
            .committed
            .retain(|(g, t, _), _| !(g == group && t == topic));
        Ok(())
    }
}

struct MemoryConsumer {
    broker: InMemoryBroker,
    key: (GroupName, Topic, Partition),
    fetched: Offset,
    published: watch::Receiver<u64>,
}

impl MemoryConsumer {
    fn take(&mut self, max: usize) -> Vec<Delivery> {
        let mut state = lock(&self.broker.inner.state);
        let (_, topic, partition) = &self.key;
        let Some(log) = state.topics.get(topic) else {
            return Vec::new();
        };
        let messages = &log.partitions[partition.get() as usize];
        let start = self.fetched.get() as usize;
        let delivered_before = state.delivered.get(&self.key).copied().unwrap_or_default();
        let batch: Vec<Delivery> = messages
            .iter()
            .enumerate()
            .skip(start)
            .take(max)
            .map(|(i, m)| {
                let offset = Offset::new(i as u64 + 1);
                Delivery {
                    topic: topic.clone(),
                    partition: *partition,
                    offset,
                    key: m.key.clone(),
                    id: Some(m.id),
                    payload: m.payload.clone(),
                    delivery_count: if offset <= delivered_before { 2 } else { 1 },
                }
            })
            .collect();
        if let Some(last) = batch.last() {
            self.fetched = last.offset;
            let entry = state.delivered.entry(self.key.clone()).or_default();
            *entry = (*entry).max(last.offset);
        }
        batch
    }
}

#[async_trait]
impl PartitionConsumer for MemoryConsumer {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        self.published.borrow_and_update();
        let batch = self.take(max);
        if !batch.is_empty() {
            return Ok(batch);
        }
        let _ = tokio::time::timeout(wait, self.published.changed()).await;
        Ok(self.take(max))
    }

    async fn commit(&mut self, offset: Offset) -> Result<()> {
        let mut state = lock(&self.broker.inner.state);
        let committed = state.committed.entry(self.key.clone()).or_default();
        *committed = (*committed).max(offset);
        Ok(())
    }

    async fn lag(&mut self) -> Result<Option<u64>> {
        let state = lock(&self.broker.inner.state);
        let (_, topic, partition) = &self.key;
        let end = state.topics.get(topic).map_or(0, |log| {
            log.partitions[partition.get() as usize].len() as u64
        });
        let committed = state.committed.get(&self.key).copied().unwrap_or_default();
        Ok(Some(end.saturating_sub(committed.get())))
    }
}
