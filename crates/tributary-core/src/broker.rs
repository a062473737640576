//! The broker: partitioned topics, consumer groups with committed offsets.
//!
//! Delivery guarantee: at-least-once. A message is redelivered to a group until the group
//! commits an offset at or past it; consumers deduplicate with the inbox.

use std::time::Duration;

use async_trait::async_trait;

use crate::envelope::Envelope;
use crate::error::Result;
use crate::ids::{EventId, Position};
use crate::topic::{GroupName, Offset, Partition, Topic};

/// A relay batch or a consumer fetch stops growing once its payloads pass this many bytes (it
/// always holds at least one message), so large events cannot make batches huge.
pub const MAX_BATCH_BYTES: usize = 16 << 20;

/// A message on its way to a broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutgoingMessage {
    pub topic: Topic,
    /// Messages with the same key are delivered in order (partition = hash(key) mod N).
    pub key: String,
    /// The envelope id: the broker's deduplication id and the consumers' inbox key.
    pub id: EventId,
    /// The envelope in CloudEvents JSON form.
    pub payload: Vec<u8>,
}

impl OutgoingMessage {
    pub fn from_envelope(topic: Topic, envelope: &Envelope) -> Self {
        Self {
            topic,
            key: envelope.ordering_key().into_owned(),
            id: envelope.id,
            payload: envelope.to_json().into_bytes(),
        }
    }
}

/// The topic an event-store event is published on: its aggregate type if that is a valid
/// topic name, else `default`.
pub fn topic_for_event(event: &Envelope, default: &Topic) -> Topic {
    event
        .aggregate_type
        .as_deref()
        .and_then(|t| Topic::new(t).ok())
        .unwrap_or_else(|| default.clone())
}

/// A message as a consumer receives it. The payload is raw bytes: a message that cannot be
/// decoded still reaches the consumer, which dead-letters it with its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub topic: Topic,
    pub partition: Partition,
    pub offset: Offset,
    pub key: String,
    /// The id the publisher gave the message, when the broker carries one.
    pub id: Option<EventId>,
    pub payload: Vec<u8>,
    /// 1 on the first delivery to this group, more on redeliveries (when the broker knows).
    pub delivery_count: u32,
}

/// How many messages one consumer group is behind on one partition of a topic (see
/// [`Broker::group_lags`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct GroupLag {
    pub group: GroupName,
    pub topic: Topic,
    pub partition: Partition,
    /// The partition's messages after the group's committed offset, as
    /// [`PartitionConsumer::lag`] counts them.
    pub lag: u64,
}

/// The newest message one partition of a topic retains (see [`Broker::last_messages`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastMessage {
    pub topic: Topic,
    pub partition: Partition,
    pub offset: Offset,
    /// As published: for messages a Tributary relay sent, an [`crate::Envelope`] whose
    /// `source` names the service that published it.
    pub payload: Vec<u8>,
}

/// A message broker with partitioned topics and consumer groups.
///
/// Every implementation passes the broker conformance suite in `tributary-testkit`.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Why the broker cannot be reached right now, as far as this process knows without
    /// asking it (a network broker's client knows at once when its connection dropped), or
    /// `None` while it can. Cheap: health endpoints call it on every request. A broker in
    /// the process's own files is always reachable.
    fn unreachable(&self) -> Option<String> {
        None
    }

    /// Creates `topic` with `partitions` partitions, or checks that an existing topic has that
    /// many.
    ///
    /// # Errors
    /// [`crate::Error::InvalidInput`] when the topic exists with a different partition count.
    async fn ensure_topic(&self, topic: &Topic, partitions: u32) -> Result<()>;

    /// The partition count of `topic`, creating it with the broker's default if it is new.
    async fn partitions(&self, topic: &Topic) -> Result<u32>;

    /// Publishes `messages` and returns once the broker acknowledged every one of them. A
    /// message whose id the broker has already stored (within its deduplication window) is
    /// acknowledged without being stored twice.
    ///
    /// # Errors
    /// [`crate::Error::Unavailable`] when the broker cannot be reached; some messages may then
    /// have been stored: publish the whole batch again.
    async fn publish(&self, messages: &[OutgoingMessage]) -> Result<()>;

    /// Opens `group`'s consumer of one partition. Delivery starts after the group's committed
    /// offset (or at the oldest retained message for a new group).
    async fn consume(
        &self,
        group: &GroupName,
        topic: &Topic,
        partition: Partition,
    ) -> Result<Box<dyn PartitionConsumer>>;

    /// The oldest a message can be when it is (re)delivered. Inbox entries must be kept longer.
    fn redelivery_horizon(&self) -> Duration;

    /// Moves `group` back to the start of `topic`: on every partition, the group's next
    /// message becomes the oldest one retained, so it receives the retained log again (to
    /// rebuild a view). The group's consumers must be stopped while this runs.
    async fn reset_group(&self, group: &GroupName, topic: &Topic) -> Result<()>;

    /// Forgets `group` on `topic`: its committed offsets go, so it no longer holds messages
    /// back from retention (a group that will not come back, e.g. an audit). The group's
    /// consumers must be stopped.
    async fn delete_group(&self, group: &GroupName, topic: &Topic) -> Result<()>;

    /// Every consumer group the broker knows on every topic (a group is known once it has
    /// opened a consumer of the partition, until it is deleted) and how far behind it is,
    /// sorted by group, topic and partition: what an operator's `status --broker` shows.
    /// Reads only: no topic, group or consumer is created or changed. `None` when the broker
    /// cannot tell.
    async fn group_lags(&self) -> Result<Option<Vec<GroupLag>>> {
        Ok(None)
    }

    /// The newest retained message of every partition that retains one, on every topic, sorted
    /// by topic and partition: what tells an operator which service publishes a topic (the
    /// envelopes' `source`) without consuming anything. Reads only, like
    /// [`Broker::group_lags`]. `None` when the broker cannot tell.
    async fn last_messages(&self) -> Result<Option<Vec<LastMessage>>> {
        Ok(None)
    }
}

/// One group's cursor on one partition.
#[async_trait]
pub trait PartitionConsumer: Send {
    /// The next messages in offset order after the last one fetched (after the committed
    /// offset for a new consumer). Waits up to `wait` when none is available, then returns an
    /// empty batch.
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>>;

    /// Records that the group is done with every message up to and including `offset`.
    async fn commit(&mut self, offset: Offset) -> Result<()>;

    /// How many of the partition's messages come after the group's committed offset (fetched
    /// and not yet committed ones included): the consumer lag an operator watches. One
    /// indexed count or one request; the runtime samples it every few seconds. `None` when
    /// the broker cannot tell.
    async fn lag(&mut self) -> Result<Option<u64>> {
        Ok(None)
    }
}

/// Where a relay source is, and what it hands to the broker next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceBatch {
    pub messages: Vec<OutgoingMessage>,
    /// The source position of the last message: pass it to `mark_published` once the broker
    /// acknowledged the batch.
    pub through: Position,
}

/// What a relay source still has to publish.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Committed messages not yet published.
    pub pending: u64,
    /// How long the oldest of them has been waiting (by its envelope's time where the source
    /// keeps no write time of its own), `None` when nothing is pending.
    pub oldest_age: Option<Duration>,
}

/// Whether a relay source's lease is held, and by whom (see [`RelaySource::lease_state`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LeaseState {
    /// Nobody holds it: no relay publishes this source right now.
    Free,
    /// A relay holds it. `holder` names it as well as the backend can (a process id, the
    /// client address of a database session); `since` is when it took the lease, if known.
    Held {
        holder: String,
        since: Option<chrono::DateTime<chrono::Utc>>,
    },
}

/// Holds a lease while alive; dropping it releases the lease.
#[async_trait]
pub trait LeaseGuard: Send + Sync {
    /// Whether the lease is still held (a lease bound to a lost connection is not).
    fn is_held(&self) -> bool;

    /// Releases the lease and returns once another holder can take it. Dropping the guard
    /// releases it as well, but a backend that holds leases over the network may finish that
    /// after the drop returned.
    async fn release(self: Box<Self>) {}
}

/// Committed rows waiting to be published: an outbox, or an event store read by position.
///
/// Reads return rows in commit order and never skip a row that commits later with a smaller
/// position.
#[async_trait]
pub trait RelaySource: Send + Sync + 'static {
    /// A name for logs and leases, unique per source.
    fn name(&self) -> &str;

    /// Up to `max` committed, unpublished messages in commit order, or `None` if there are none.
    async fn read_batch(&self, max: usize) -> Result<Option<SourceBatch>>;

    /// Records that everything up to `through` was acknowledged by the broker (deleting outbox
    /// rows or advancing a cursor), in one statement.
    async fn mark_published(&self, through: Position) -> Result<()>;

    /// Changes after commits made in this process; the relay also polls every
    /// [`RelaySource::poll_every`] for commits made elsewhere.
    fn commits(&self) -> tokio::sync::watch::Receiver<u64>;

    fn poll_every(&self) -> Duration;

    /// Takes the source's lease if no other relay holds it.
    async fn try_lease(&self) -> Result<Option<Box<dyn LeaseGuard>>>;

    /// What is still to publish, for metrics and `tributary status`; `None` when the source
    /// cannot tell cheaply. Reads only: never takes the lease.
    async fn backlog(&self) -> Result<Option<Backlog>> {
        Ok(None)
    }

    /// Who holds the lease, for `tributary status`; `None` when the source cannot tell.
    /// Never takes the lease (a backend may probe it for an instant, so that a standby's
    /// `try_lease` at that very moment fails and succeeds on its next poll).
    async fn lease_state(&self) -> Result<Option<LeaseState>> {
        Ok(None)
    }
}
