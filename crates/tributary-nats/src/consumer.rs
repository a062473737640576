//! [`NatsPartitionConsumer`]: one group's cursor on one partition, a durable JetStream pull
//! consumer.
//!
//! Delivery guarantee: at-least-once, in stream order. A message is redelivered to the group
//! until a commit at or past its offset was acknowledged by the server.
//!
//! # How offsets, commits and redelivery map onto JetStream
//!
//! - The offset of a delivery is its stream sequence. The durable consumer
//!   `<group>_<partition>` (later generations `<group>_<partition>_g<n>`, see below) filters
//!   the partition's subject, starts at the oldest retained message (deliver policy `all`) and
//!   uses ack policy `all`: `commit(offset)` acknowledges the
//!   fetched message with the highest sequence at or below `offset` (a confirmed "double" ack),
//!   which acknowledges everything before it. The consumer's ack floor is the committed offset.
//! - A fetched, uncommitted message is *pending* on the server. JetStream would redeliver it
//!   only after `ack_wait`, and in the meantime hand newer messages to whoever pulls next: a
//!   new consumer instance would see the same key out of order. So a new instance that finds
//!   pending messages (or pull requests of a dead instance still waiting) *resets* the group's
//!   cursor: it creates the next generation of the server consumer, starting right after the
//!   ack floor, and then deletes the older ones: the uncommitted messages come back at once, in
//!   order, before anything newer. Server 2.14's consumer reset does the same in one call; 2.9
//!   has no such call.
//! - A reset never deletes and re-creates a consumer under the same name: in a cluster, a
//!   consumer re-created under a name whose deleted raft group was still shutting down on some
//!   node was seen left without a leader for minutes (nats-server 2.9.10, during node flaps).
//!   Creating before deleting also means that no crash loses the group's offset: the newest
//!   generation is the cursor, and older ones still listed are leftovers that the next reset or
//!   open deletes. Nothing is pulled before the older generations are gone, so a takeover never
//!   has two server consumers serving one partition at once.
//! - The same reset repairs a gap: every delivery carries the consumer's delivery sequence,
//!   and a jump means a delivery was lost on the way (a pull request that outlived its
//!   connection); resetting to the ack floor brings the lost message back in order. Messages
//!   this instance already returned are then skipped when they come again (their offsets are
//!   at or below the last one fetched), but their acknowledgement handles are refreshed.
//! - `ack_wait` therefore only governs redelivery to the *same* instance when it holds messages
//!   longer than that without committing; those redeliveries are skipped the same way.
//! - `max_ack_pending` bounds fetched, uncommitted messages: a consumer that never commits gets
//!   empty batches once it holds that many.
//! - `delivery_count` is the server's count for the current server-side consumer, plus one
//!   for messages an earlier incarnation had delivered (recorded in the consumer description).
//!
//! - A reset interrupted by a failed request (in a cluster, a leader election makes the
//!   create or a delete time out) is finished by the next call, before anything else. Every
//!   attempt takes a new generation, so a create whose answer was lost leaves at most a
//!   consumer that the finished reset deletes.
//! - A server consumer that stops answering pull requests while it answers info requests
//!   (seen after node flaps on 2.9.10: a leader, messages pending, no pull waiting) is replaced
//!   the same way after [`UNANSWERED_PULLS_BEFORE_RESET`] unanswered pulls in a row.
//! - A server consumer that is gone while no newer generation exists was not taken over: a
//!   cluster lost it in a leader election, or someone deleted it. It is re-created the same
//!   way, as the next generation after the last commit.
//!
//! One live instance per (group, topic, partition) is supported: opening a second one takes the
//! partition over, and the first then fails with [`Error::Shutdown`] instead of fighting back.
//! A reset that finds a generation another instance created since its own steps back the same
//! way, and so does one whose new generation was overwritten before it pulled. Known window:
//! two instances that list the same newest generation at the same moment (one opening, one
//! resetting) can both create the next one (JetStream 2.9 treats the second create as an
//! update); if the second create lands after the first instance checked its consumer, both
//! pull one server consumer until a failed pull makes the first notice, and meanwhile one's
//! commit can acknowledge what the other fetched. The delete and re-create of one name that
//! this replaced had the same window.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull::Config as PullConfig;
use async_nats::jetstream::consumer::{
    AckPolicy, DeliverPolicy, Info as ConsumerInfo, PullConsumer,
};
use async_nats::jetstream::message::Acker;
use async_nats::jetstream::{self, ErrorCode};
use async_trait::async_trait;
use futures::StreamExt;
use serde_json::json;
use tributary_core::{
    Delivery, Error, EventId, GroupLag, GroupName, Offset, Partition, PartitionConsumer, Result,
    Topic,
};

use crate::broker::Inner;
use crate::naming;

/// Pull requests in a row that the server consumer left unanswered (while it still answers info
/// requests) before it is taken for wedged and replaced by a new generation.
const UNANSWERED_PULLS_BEFORE_RESET: u32 = 3;

/// A confirmed acknowledgement handle of one delivery, or none when the server consumer was
/// reset since and the message has not come again yet.
struct Pending {
    acker: Option<Acker>,
    /// The delivery's consumer sequence: JetStream ignores an "ack all" whose consumer
    /// sequence is at or below the last one it processed.
    dseq: u64,
}

enum Received {
    /// A message after the last one fetched, now buffered.
    New,
    /// A message at or below the last one fetched (its ack handle was refreshed).
    Again,
    /// A delivery was lost: the server consumer must be reset.
    Gap,
}

pub(crate) struct NatsPartitionConsumer {
    inner: Arc<Inner>,
    group: GroupName,
    topic: Topic,
    partition: Partition,
    stream: String,
    /// Generation of the server consumer this instance drives, and its name.
    generation: u64,
    name: String,
    filter: String,
    consumer: PullConsumer,
    /// The incarnation token in the description of the server consumer this instance drives
    /// (its creation time is not stable across server restarts): another token under the
    /// same name means another instance took the partition over.
    incarnation: String,
    /// The group is done with everything up to here (as far as this instance knows).
    committed: u64,
    /// Highest stream sequence returned by `fetch`.
    returned: u64,
    /// Highest stream sequence received (returned or buffered).
    seen: u64,
    /// Last delivery (consumer) sequence received from the current server consumer.
    dseq: u64,
    /// Consumer sequence of the last acknowledgement sent.
    acked_dseq: u64,
    /// Messages at or below this sequence were delivered to an earlier server consumer.
    redelivered_through: u64,
    /// Received, uncommitted messages by stream sequence.
    pending: BTreeMap<u64, Pending>,
    /// Received, not yet returned by `fetch`.
    buffer: VecDeque<Delivery>,
    /// A pull failed: deliveries may have been lost; check the server consumer before pulling.
    suspect: bool,
    /// A reset did not get to create the next generation (a request failed: a leader election
    /// in a cluster, a lost connection); the next call finishes it before anything else.
    unfinished_reset: Option<Start>,
    /// The generations this instance tried to create since it last switched: a create whose
    /// answer was lost may still take effect, so a retry never reuses its number, and such a
    /// generation is not taken for another instance's.
    attempts: Vec<u64>,
    /// Older generations of the server consumer may still exist: delete them before pulling.
    older_generations: bool,
    /// Pull requests in a row that got no answer at all.
    unanswered_pulls: u32,
}

/// Where a (re)created server consumer starts, and what it remembers of its predecessor.
#[derive(Clone, Debug)]
struct Start {
    floor: u64,
    redelivered_through: u64,
}

impl NatsPartitionConsumer {
    pub(crate) async fn open(
        inner: Arc<Inner>,
        group: &GroupName,
        topic: &Topic,
        partition: Partition,
    ) -> Result<Self> {
        let prefix = &inner.config.stream_prefix;
        let stream = naming::stream_name(prefix, topic);
        let filter = naming::subject(prefix, topic, partition);
        let generations = generations(&inner, &stream, group, partition).await?;
        let (consumer, generation, start, dseq) = match generations.last() {
            None => {
                let start = Start {
                    floor: 0,
                    redelivered_through: 0,
                };
                let name = naming::consumer_name(group, partition, 0);
                let c = create(&inner, group, topic, partition, &stream, &name, &start).await?;
                (c, 0, start, 0)
            }
            Some((newest, name)) => {
                let Some(info) = consumer_info(&inner, &stream, name).await? else {
                    return Err(unavailable(
                        &stream,
                        name,
                        "it was deleted while this consumer opened (another instance is \
                         opening the same partition); open again",
                    ));
                };
                if info.config.filter_subject != filter {
                    return Err(Error::invalid(format!(
                        "consumer {name} of stream {stream} filters {:?}, not {filter:?}; it was \
                         not created by Tributary: delete it or use another group name",
                        info.config.filter_subject
                    )));
                }
                let start = start_after(&info);
                let clean = info.num_ack_pending == 0
                    && info.num_waiting == 0
                    && info.delivered.stream_sequence <= start.floor
                    && info.config.ack_policy == AckPolicy::All
                    && info.config.ack_wait == inner.config.ack_wait
                    && info.config.max_ack_pending == i64::from(inner.config.max_ack_pending);
                if clean {
                    let get = async {
                        inner
                            .js
                            .get_consumer_from_stream(name, &stream)
                            .await
                            .map_err(|e| unavailable(&stream, name, e))
                    };
                    let c: PullConsumer = inner.bounded(name, get).await?;
                    let dseq = c.cached_info().delivered.consumer_sequence;
                    (c, *newest, start, dseq)
                } else {
                    let generation = next_generation(*newest, &stream, name)?;
                    let name = naming::consumer_name(group, partition, generation);
                    let c = create(&inner, group, topic, partition, &stream, &name, &start).await?;
                    (c, generation, start, 0)
                }
            }
        };
        delete_generations_before(&inner, &stream, group, partition, Some(generation)).await?;
        // JetStream ignores an "ack all" at or below the consumer's ack floor (in delivery
        // sequences).
        let acked_dseq = consumer.cached_info().ack_floor.consumer_sequence;
        Ok(Self {
            incarnation: incarnation_of(consumer.cached_info()),
            inner,
            group: group.clone(),
            topic: topic.clone(),
            partition,
            stream,
            generation,
            name: naming::consumer_name(group, partition, generation),
            filter,
            consumer,
            committed: start.floor,
            returned: start.floor,
            seen: start.floor,
            dseq,
            acked_dseq,
            redelivered_through: start.redelivered_through,
            pending: BTreeMap::new(),
            buffer: VecDeque::new(),
            suspect: false,
            unfinished_reset: None,
            older_generations: false,
            unanswered_pulls: 0,
            attempts: Vec::new(),
        })
    }

    /// Another instance took the partition over; `how` says what showed it.
    fn shut_out(&self, how: &str) -> Error {
        Error::Shutdown {
            what: format!(
                "consumer of group {} on topic {} partition {} (its JetStream consumer {} {how}: \
                 another instance took the partition over; open a new one)",
                self.group, self.topic, self.partition, self.name
            ),
        }
    }

    /// The server consumer, if it is still the one this instance created or opened; `None` if
    /// it vanished without a successor. [`Error::Shutdown`] if another instance took over:
    /// it created a newer generation (and deleted this one), or overwrote this one.
    ///
    /// A vanished consumer is not a takeover: in a cluster, a consumer created during one
    /// leader election was seen answering "consumer not found" after the next (nats-server
    /// 2.9.10), and an operator may delete one by hand. The caller re-creates it from the
    /// last commit.
    async fn own_info(&self) -> Result<Option<ConsumerInfo>> {
        match consumer_info(&self.inner, &self.stream, &self.name).await? {
            Some(info)
                if incarnation_of(&info) == self.incarnation
                    && info.config.filter_subject == self.filter =>
            {
                Ok(Some(info))
            }
            Some(_) => Err(self.shut_out("was overwritten by another instance")),
            None => {
                let listed =
                    generations(&self.inner, &self.stream, &self.group, self.partition).await?;
                let successor = listed
                    .iter()
                    .find(|(g, _)| *g > self.generation && !self.attempts.contains(g));
                match successor {
                    Some((_, newer)) => Err(self.shut_out(&format!("is gone and {newer} exists"))),
                    None => Ok(None),
                }
            }
        }
    }

    /// Replaces the server consumer by its next generation, starting right after the ack floor,
    /// so that everything not yet committed is delivered again, in order, before anything newer.
    async fn reset(&mut self) -> Result<()> {
        if self.unfinished_reset.is_none() {
            let mut start = match self.own_info().await? {
                Some(info) => start_after(&info),
                None => {
                    tracing::warn!(
                        stream = %self.stream, consumer = %self.name, committed = self.committed,
                        "the JetStream consumer vanished without a successor; re-creating it \
                         from the last commit"
                    );
                    Start {
                        floor: 0,
                        redelivered_through: 0,
                    }
                }
            };
            start.floor = start.floor.max(self.committed);
            start.redelivered_through = start
                .redelivered_through
                .max(self.redelivered_through)
                .max(self.seen);
            self.unfinished_reset = Some(start);
        }
        self.finish_reset().await
    }

    /// Creates the next generation for an unfinished reset, switches to it and deletes the
    /// older ones.
    async fn finish_reset(&mut self) -> Result<()> {
        let Some(mut start) = self.unfinished_reset.clone() else {
            return self.delete_older_generations().await;
        };
        // A commit may have been acknowledged on the current generation since the reset began.
        start.floor = start.floor.max(self.committed);
        // The current generation is deleted only by this instance, after the switch: if it is
        // gone and a newer one exists, another instance took the partition over.
        self.own_info().await?;
        let listed = generations(&self.inner, &self.stream, &self.group, self.partition).await?;
        let newest = listed.last().map_or(0, |(g, _)| *g);
        let tried = self.attempts.iter().copied().max().unwrap_or(0);
        let generation = next_generation(
            newest.max(self.generation).max(tried),
            &self.stream,
            &self.name,
        )?;
        let name = naming::consumer_name(&self.group, self.partition, generation);
        tracing::debug!(
            stream = %self.stream, consumer = %name, replaces = %self.name, floor = start.floor,
            "resetting the JetStream consumer to its ack floor"
        );
        self.attempts.push(generation);
        let consumer = create(
            &self.inner,
            &self.group,
            &self.topic,
            self.partition,
            &self.stream,
            &name,
            &start,
        )
        .await?;
        // Another instance that opened the partition meanwhile created a generation between
        // the current one and this one: it took the partition over; step back.
        let listed = generations(&self.inner, &self.stream, &self.group, self.partition).await?;
        let (current, attempts) = (self.generation, &self.attempts);
        let overtaken = listed
            .iter()
            .any(|(g, _)| *g > current && *g < generation && !attempts.contains(g));
        if overtaken {
            delete(&self.inner, &self.stream, &name).await?;
            return Err(self.shut_out("was followed by a generation another instance created"));
        }
        self.consumer = consumer;
        self.attempts.clear();
        self.unfinished_reset = None;
        self.generation = generation;
        self.name = name;
        self.incarnation = incarnation_of(self.consumer.cached_info());
        self.committed = start.floor;
        self.redelivered_through = start.redelivered_through;
        self.dseq = 0;
        self.acked_dseq = self.consumer.cached_info().ack_floor.consumer_sequence;
        self.pending = self.pending.split_off(&(start.floor + 1));
        for p in self.pending.values_mut() {
            p.acker = None;
        }
        self.suspect = false;
        self.unanswered_pulls = 0;
        self.older_generations = true;
        self.delete_older_generations().await?;
        // Another instance creating the same generation meanwhile overwrote its description.
        // If the new generation is not found at once, the next pull finds out why.
        if self.own_info().await?.is_none() {
            self.suspect = true;
        }
        Ok(())
    }

    async fn delete_older_generations(&mut self) -> Result<()> {
        if self.older_generations {
            delete_generations_before(
                &self.inner,
                &self.stream,
                &self.group,
                self.partition,
                Some(self.generation),
            )
            .await?;
            self.older_generations = false;
        }
        Ok(())
    }

    /// Before a pull: finish what a failed request interrupted, and after a failed pull check
    /// whether deliveries went to a request nobody reads any more.
    async fn check_after_failure(&mut self) -> Result<()> {
        if self.unfinished_reset.is_some() || self.older_generations {
            return self.finish_reset().await;
        }
        if !self.suspect {
            return Ok(());
        }
        let Some(info) = self.own_info().await? else {
            return self.reset().await;
        };
        if info.delivered.consumer_sequence != self.dseq {
            self.reset().await
        } else if self.unanswered_pulls >= UNANSWERED_PULLS_BEFORE_RESET {
            tracing::warn!(
                stream = %self.stream, consumer = %self.name,
                unanswered = self.unanswered_pulls, pending = info.num_pending,
                waiting = info.num_waiting,
                "the JetStream consumer answers info requests but no pull request; replacing it"
            );
            self.reset().await
        } else {
            self.suspect = false;
            Ok(())
        }
    }

    /// Room left under `max_ack_pending`.
    fn room(&self) -> usize {
        (self.inner.config.max_ack_pending as usize).saturating_sub(self.pending.len())
    }

    /// One pull request: up to `max` messages, waiting up to `wait` for the first when none is
    /// available (`None`: do not wait). Returns how many deliveries arrived.
    async fn pull(&mut self, max: usize, wait: Option<Duration>) -> Result<usize> {
        self.check_after_failure().await?;
        let bound = wait.unwrap_or_default() + self.inner.config.request_timeout;
        match tokio::time::timeout(bound, self.pull_unbounded(max, wait)).await {
            Ok(Ok(n)) => {
                self.unanswered_pulls = 0;
                Ok(n)
            }
            Ok(Err(e)) => {
                // An error is an answer: the consumer is not wedged.
                self.unanswered_pulls = 0;
                self.suspect = true;
                Err(e)
            }
            Err(_) => {
                self.suspect = true;
                self.unanswered_pulls += 1;
                // Nobody answers a pull for a consumer that was deleted: tell a takeover from a
                // slow or unreachable server.
                if let Err(e @ Error::Shutdown { .. }) = self.own_info().await {
                    return Err(e);
                }
                Err(Error::unavailable(
                    self.what(),
                    format!("no answer to a pull request within {bound:?}"),
                ))
            }
        }
    }

    async fn pull_unbounded(&mut self, max: usize, wait: Option<Duration>) -> Result<usize> {
        let requested = match wait {
            None => self.consumer.fetch().max_messages(max).messages().await,
            Some(wait) => {
                self.consumer
                    .batch()
                    .max_messages(max)
                    .expires(wait)
                    .messages()
                    .await
            }
        };
        let mut batch = requested.map_err(|e| Error::unavailable(self.what(), e))?;
        let mut arrived = 0;
        let mut gap = false;
        while let Some(item) = batch.next().await {
            let message = match item {
                Ok(message) => message,
                // The server stops handing out messages at max_ack_pending; not a failure.
                Err(e) if e.to_string().contains("MaxAckPending") => break,
                Err(e) => {
                    drop(batch);
                    // A deleted consumer answers 409: tell a takeover from a network failure.
                    self.own_info().await?;
                    return Err(Error::unavailable(self.what(), e));
                }
            };
            arrived += 1;
            if let Received::Gap = self.receive(message) {
                gap = true;
                break;
            }
        }
        drop(batch);
        if gap {
            self.reset().await?;
        }
        Ok(arrived)
    }

    fn receive(&mut self, message: jetstream::Message) -> Received {
        let Ok(info) = message.info() else {
            return Received::Gap;
        };
        let (sseq, dseq, delivered) =
            (info.stream_sequence, info.consumer_sequence, info.delivered);
        if dseq != self.dseq + 1 {
            tracing::debug!(
                stream = %self.stream, consumer = %self.name, expected = self.dseq + 1, got = dseq,
                "a JetStream delivery was lost on the way"
            );
            return Received::Gap;
        }
        self.dseq = dseq;
        let (message, acker) = message.split();
        if sseq <= self.committed {
            return Received::Again;
        }
        let fresh = Pending {
            acker: Some(acker),
            dseq,
        };
        if sseq <= self.seen {
            self.pending.insert(sseq, fresh);
            return Received::Again;
        }
        let headers = message.headers.as_ref();
        let key = headers
            .and_then(|h| h.get(naming::KEY_HEADER))
            .map(|v| {
                let raw = v.as_str();
                naming::decode_key(raw).unwrap_or_else(|| raw.to_owned())
            })
            .unwrap_or_default();
        let id = headers
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .and_then(|v| v.as_str().parse::<EventId>().ok());
        let earlier = u32::from(sseq <= self.redelivered_through);
        let count = u32::try_from(delivered.max(1)).unwrap_or(u32::MAX);
        self.buffer.push_back(Delivery {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: Offset::new(sseq),
            key,
            id,
            payload: message.payload.to_vec(),
            delivery_count: count.saturating_add(earlier),
        });
        self.pending.insert(sseq, fresh);
        self.seen = sseq;
        Received::New
    }

    /// Pulls until something new is buffered or `wait` has passed.
    async fn fill(&mut self, max: usize, wait: Duration) -> Result<()> {
        let deadline = Instant::now() + wait;
        loop {
            let room = self.room().min(max);
            if room == 0 {
                tracing::warn!(
                    stream = %self.stream, consumer = %self.name,
                    max_ack_pending = self.inner.config.max_ack_pending,
                    "a consumer holds max_ack_pending uncommitted messages; commit to get more"
                );
                tokio::time::sleep_until(deadline.into()).await;
                return Ok(());
            }
            self.pull(room, None).await?;
            if !self.buffer.is_empty() {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left < Duration::from_millis(1) {
                return Ok(());
            }
            // Wait for one message, then take whatever else is ready without waiting, so that
            // no pull request outlives this call.
            self.pull(1, Some(left)).await?;
            if !self.buffer.is_empty() {
                let room = self.room().min(max.saturating_sub(self.buffer.len()));
                if room > 0 {
                    self.pull(room, None).await?;
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Ok(());
            }
        }
    }

    fn what(&self) -> String {
        format!(
            "NATS JetStream consumer {} of stream {}",
            self.name, self.stream
        )
    }
}

#[async_trait]
impl PartitionConsumer for NatsPartitionConsumer {
    async fn fetch(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        if self.buffer.is_empty() {
            self.fill(max, wait).await?;
        }
        let n = max.min(self.buffer.len());
        let batch: Vec<Delivery> = self.buffer.drain(..n).collect();
        if let Some(last) = batch.last() {
            self.returned = last.offset.get();
        }
        Ok(batch)
    }

    async fn commit(&mut self, offset: Offset) -> Result<()> {
        let limit = offset.get().min(self.returned);
        if limit <= self.committed {
            return Ok(());
        }
        let Some(target) = self.pending.range(..=limit).next_back().map(|(s, _)| *s) else {
            return Ok(());
        };
        // After a reset the message has to come again before it can be acknowledged; it
        // comes first, in order. A few rounds are enough unless the server is unreachable.
        for _ in 0..8 {
            let usable = self
                .pending
                .get(&target)
                .is_some_and(|p| p.acker.is_some() && p.dseq > self.acked_dseq);
            if usable {
                break;
            }
            let stale = self
                .pending
                .get(&target)
                .is_some_and(|p| p.acker.is_some() && p.dseq <= self.acked_dseq);
            if stale {
                // Only a delivery newer than the last acknowledgement can move the floor.
                self.reset().await?;
            }
            let room = self.room().max(1);
            self.pull(room, Some(Duration::from_millis(200))).await?;
        }
        let Some(Pending {
            acker: Some(acker),
            dseq,
        }) = self.pending.get(&target)
        else {
            return Err(Error::unavailable(
                self.what(),
                format!(
                    "offset {target} has not been redelivered since the consumer was reset; commit again"
                ),
            ));
        };
        let dseq = *dseq;
        let what = self.what();
        let ack = async {
            acker
                .double_ack()
                .await
                .map_err(|e| Error::unavailable(what.clone(), e))
        };
        self.inner.bounded(&what, ack).await?;
        self.acked_dseq = dseq;
        self.committed = target;
        self.pending = self.pending.split_off(&(target + 1));
        Ok(())
    }

    /// The server consumer's count of messages not yet delivered plus those delivered and not
    /// acknowledged (an acknowledgement is a commit here).
    async fn lag(&mut self) -> Result<Option<u64>> {
        if self.unfinished_reset.is_some() {
            return Ok(None);
        }
        let Some(info) = self.own_info().await? else {
            // Vanished: the next fetch re-creates it; the lag is unknown until then.
            self.suspect = true;
            return Ok(None);
        };
        Ok(Some(
            info.num_pending.saturating_add(info.num_ack_pending as u64),
        ))
    }
}

fn incarnation_of(info: &ConsumerInfo) -> String {
    naming::incarnation_in_description(info.config.description.as_deref().unwrap_or(""))
}

/// Where a server consumer that replaces `info` starts.
fn start_after(info: &ConsumerInfo) -> Start {
    let description = info.config.description.as_deref().unwrap_or("");
    Start {
        floor: info
            .ack_floor
            .stream_sequence
            .max(naming::floor_in_description(description)),
        redelivered_through: naming::redelivered_through_in_description(description)
            .max(info.delivered.stream_sequence),
    }
}

fn unavailable(stream: &str, name: &str, e: impl Into<tributary_core::BoxError>) -> Error {
    Error::unavailable(
        format!("NATS JetStream consumer {name} of stream {stream}"),
        e,
    )
}

async fn consumer_info(inner: &Inner, stream: &str, name: &str) -> Result<Option<ConsumerInfo>> {
    let what = format!("reading JetStream consumer {name} of stream {stream}");
    match inner
        .api::<ConsumerInfo>(&what, format!("CONSUMER.INFO.{stream}.{name}"), &json!({}))
        .await?
    {
        Ok(info) => Ok(Some(info)),
        Err(e) if e.error_code() == ErrorCode::CONSUMER_NOT_FOUND => Ok(None),
        Err(e) => Err(inner.api_failure(&what, e)),
    }
}

/// The generations of the group's server consumer on one partition that the stream has, oldest
/// first, with their names.
async fn generations(
    inner: &Inner,
    stream: &str,
    group: &GroupName,
    partition: Partition,
) -> Result<Vec<(u64, String)>> {
    let names: Vec<String> = list_all(inner, format!("CONSUMER.NAMES.{stream}"), stream).await?;
    let mut found: Vec<(u64, String)> = names
        .into_iter()
        .filter_map(|name| naming::consumer_generation(group, partition, &name).map(|g| (g, name)))
        .collect();
    found.sort();
    Ok(found)
}

/// Every entry of a paged listing of the stream's consumers (`CONSUMER.NAMES` gives names,
/// `CONSUMER.LIST` their infos), requested page by page from offset 0.
async fn list_all<T: serde::de::DeserializeOwned>(
    inner: &Inner,
    subject: String,
    stream: &str,
) -> Result<Vec<T>> {
    #[derive(serde::Deserialize)]
    #[serde(bound = "T: serde::de::DeserializeOwned")]
    struct Page<T> {
        total: usize,
        #[serde(default)]
        consumers: Option<Vec<T>>,
    }
    let what = format!("listing the JetStream consumers of stream {stream}");
    let mut all = Vec::new();
    loop {
        let page = match inner
            .api::<Page<T>>(&what, subject.clone(), &json!({ "offset": all.len() }))
            .await?
        {
            Ok(page) => page,
            Err(e) => return Err(inner.api_failure(&what, e)),
        };
        let entries = page.consumers.unwrap_or_default();
        // An empty page ends the listing even if the total says more exist (consumers deleted
        // while listing).
        let last_page = entries.is_empty() || all.len() + entries.len() >= page.total;
        all.extend(entries);
        if last_page {
            return Ok(all);
        }
    }
}

/// How far behind every Tributary group's consumer of `topic`'s stream is, per partition:
/// the newest generation's pending and unacknowledged messages (older generations are what a
/// reset leaves until it finishes). Reads only.
pub(crate) async fn group_lags(
    inner: &Inner,
    stream: &str,
    topic: &Topic,
) -> Result<Vec<GroupLag>> {
    let infos: Vec<ConsumerInfo> =
        list_all(inner, format!("CONSUMER.LIST.{stream}"), stream).await?;
    // (group, partition) -> (generation, lag)
    let mut newest: BTreeMap<(GroupName, Partition), (u64, u64)> = BTreeMap::new();
    for info in infos {
        let description = info.config.description.as_deref().unwrap_or("");
        let Some((group, of_topic, partition)) = naming::cursor_in_description(description) else {
            continue;
        };
        let Some(generation) = naming::consumer_generation(&group, partition, &info.name) else {
            continue;
        };
        if &of_topic != topic {
            continue;
        }
        let lag = info.num_pending.saturating_add(info.num_ack_pending as u64);
        let entry = newest
            .entry((group, partition))
            .or_insert((generation, lag));
        if generation >= entry.0 {
            *entry = (generation, lag);
        }
    }
    Ok(newest
        .into_iter()
        .map(|((group, partition), (_, lag))| GroupLag {
            group,
            topic: topic.clone(),
            partition,
            lag,
        })
        .collect())
}

/// The generation after `newest` (a consumer named by hand with the highest number has none).
fn next_generation(newest: u64, stream: &str, name: &str) -> Result<u64> {
    newest.checked_add(1).ok_or_else(|| {
        Error::invalid(format!(
            "consumer {name} of stream {stream} has no generation after {newest}: delete the \
             group's consumers"
        ))
    })
}

/// Rewinds the group's cursor on one partition to the oldest retained message: the next
/// generation of its server consumer starts there, then the older ones are deleted (so that no
/// name is re-created after a delete, and a crash in between loses nothing: the newest
/// generation is the cursor). Nothing to do when the group has no consumer on the partition:
/// the first `consume` starts at the oldest message.
pub(crate) async fn rewind(
    inner: &Inner,
    group: &GroupName,
    topic: &Topic,
    partition: Partition,
) -> Result<()> {
    let stream = naming::stream_name(&inner.config.stream_prefix, topic);
    let Some((newest, name)) = generations(inner, &stream, group, partition).await?.pop() else {
        return Ok(());
    };
    let generation = next_generation(newest, &stream, &name)?;
    let start = Start {
        floor: 0,
        redelivered_through: 0,
    };
    let next = naming::consumer_name(group, partition, generation);
    create(inner, group, topic, partition, &stream, &next, &start).await?;
    delete_generations_before(inner, &stream, group, partition, Some(generation)).await
}

/// Deletes the group's server consumers on one partition older than `generation` (all of them
/// with `None`).
pub(crate) async fn delete_generations_before(
    inner: &Inner,
    stream: &str,
    group: &GroupName,
    partition: Partition,
    generation: Option<u64>,
) -> Result<()> {
    for (g, name) in generations(inner, stream, group, partition).await? {
        if generation.is_none_or(|newest| g < newest) {
            delete(inner, stream, &name).await?;
        }
    }
    Ok(())
}

async fn delete(inner: &Inner, stream: &str, name: &str) -> Result<()> {
    let what = format!("deleting JetStream consumer {name} of stream {stream}");
    match inner
        .api::<serde_json::Value>(
            &what,
            format!("CONSUMER.DELETE.{stream}.{name}"),
            &json!({}),
        )
        .await?
    {
        Ok(_) => Ok(()),
        Err(e) if e.error_code() == ErrorCode::CONSUMER_NOT_FOUND => Ok(()),
        Err(e) => Err(inner.api_failure(&what, e)),
    }
}

async fn create(
    inner: &Inner,
    group: &GroupName,
    topic: &Topic,
    partition: Partition,
    stream: &str,
    name: &str,
    start: &Start,
) -> Result<PullConsumer> {
    let config = PullConfig {
        durable_name: Some(name.to_owned()),
        description: Some(naming::consumer_description(
            group,
            topic,
            partition,
            &EventId::new().as_uuid().simple().to_string(),
            start.floor,
            start.redelivered_through,
        )),
        deliver_policy: if start.floor == 0 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence {
                start_sequence: start.floor + 1,
            }
        },
        ack_policy: AckPolicy::All,
        ack_wait: inner.config.ack_wait,
        max_ack_pending: i64::from(inner.config.max_ack_pending),
        // Retries and dead letters are the consumer runner's business.
        max_deliver: -1,
        filter_subject: naming::subject(&inner.config.stream_prefix, topic, partition),
        ..Default::default()
    };
    let call = async {
        inner
            .js
            .create_consumer_on_stream(config, stream)
            .await
            .map_err(|e| unavailable(stream, name, e))
    };
    inner.bounded(name, call).await
}
