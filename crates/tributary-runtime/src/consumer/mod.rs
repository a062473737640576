//! Consumer groups: one task per partition, each message handled inside the service's own
//! transaction together with its inbox entry.
//!
//! Delivery guarantee: exactly-once *effects* on the service's database. Brokers deliver at
//! least once; a message whose inbox entry exists is acknowledged without running the handler
//! again. Order: per partition, hence per key. A message that keeps failing is retried with
//! backoff and jitter, then dead-lettered; later messages with the same key are parked behind
//! it (dead letters too) so their order is kept, while other keys keep flowing.

mod group_lock;
mod partition;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tributary_core::backend::WorkOrigin;
use tributary_core::{
    Broker, Database, Error, GroupLock, GroupName, Partition, Position, Result, Topic, Upcasters,
};

use crate::backoff::Backoff;
use crate::handler::Handler;
use crate::health::{Health, HealthState};
use crate::retry::Retry;

/// Settings of a [`Consumer`].
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    /// Most messages fetched, and handled in one database transaction, at once.
    pub batch_size: usize,
    /// How long a fetch waits for new messages before checking for shutdown again.
    pub fetch_wait: Duration,
    /// Handler runs before a retryable failure is dead-lettered (at least 1).
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// Applied to every message before the handler sees it.
    pub upcasters: Upcasters,
    /// How long inbox entries are kept. `None` derives it from the broker's redelivery
    /// horizon (keeping them forever if the broker never forgets). An explicit value must be
    /// longer than the horizon, or a redelivered message could run twice.
    pub inbox_retention: Option<Duration>,
    /// How often old inbox entries are pruned.
    pub prune_every: Duration,
    /// Messages handled per transaction; `None` takes the database's choice
    /// ([`Database::messages_per_unit`]). A unit that loses a race for a document to another
    /// partition's unit is run again at once with half its messages, down to one, so that
    /// contention costs retries of small units, never a stall.
    pub messages_per_unit: Option<usize>,
    /// How often the group counts its open dead letters for the metrics.
    pub dead_letters_every: Duration,
    /// How often the group looks for replays requested from outside its process (see
    /// [`crate::request_replay`]).
    pub replay_requests_every: Duration,
    /// How often each partition samples its lag for the `tributary_consumer_lag` gauge (one
    /// count or one broker request).
    pub lag_every: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            batch_size: 256,
            fetch_wait: Duration::from_millis(500),
            max_attempts: 5,
            backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(5)),
            upcasters: Upcasters::new(),
            inbox_retention: None,
            prune_every: Duration::from_secs(3600),
            messages_per_unit: None,
            dead_letters_every: Duration::from_secs(5),
            replay_requests_every: Duration::from_secs(1),
            lag_every: Duration::from_secs(5),
        }
    }
}

impl ConsumerConfig {
    pub fn with_batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }
    pub fn with_max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }
    pub fn with_upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = upcasters;
        self
    }
    pub fn with_inbox_retention(mut self, retention: Duration) -> Self {
        self.inbox_retention = Some(retention);
        self
    }
    pub fn with_messages_per_unit(mut self, n: usize) -> Self {
        self.messages_per_unit = Some(n.max(1));
        self
    }
    pub fn with_fetch_wait(mut self, wait: Duration) -> Self {
        self.fetch_wait = wait;
        self
    }
    pub fn with_lag_every(mut self, every: Duration) -> Self {
        self.lag_every = every;
        self
    }

    pub fn with_replay_requests_every(mut self, every: Duration) -> Self {
        self.replay_requests_every = every;
        self
    }
    pub fn with_dead_letters_every(mut self, every: Duration) -> Self {
        self.dead_letters_every = every;
        self
    }
}

const REBUILD_REQUESTED: Position = Position::new(1);

fn rebuild_marker(group: &GroupName) -> String {
    format!("rebuild:{group}")
}

/// What every partition task of a group shares.
pub(crate) struct Context {
    pub group: GroupName,
    pub db: Arc<dyn Database>,
    pub broker: Arc<dyn Broker>,
    pub handler: Arc<dyn Handler>,
    pub config: ConsumerConfig,
    pub health: Health,
    /// Names the group's units of work in diagnostics.
    pub origin: WorkOrigin,
}

/// A consumer group of one service.
pub struct Consumer {
    topics: Vec<Topic>,
    ctx: Arc<Context>,
    retention: Option<Duration>,
}

impl Consumer {
    /// # Errors
    /// [`Error::InvalidInput`] when the inbox retention is not longer than the broker's
    /// redelivery horizon, or no topic is given.
    pub fn new(
        group: GroupName,
        topics: Vec<Topic>,
        db: Arc<dyn Database>,
        broker: Arc<dyn Broker>,
        handler: Arc<dyn Handler>,
        config: ConsumerConfig,
    ) -> Result<Self> {
        if topics.is_empty() {
            return Err(Error::invalid(format!(
                "consumer group {group} has no topics"
            )));
        }
        let horizon = broker.redelivery_horizon();
        let retention = match config.inbox_retention {
            Some(r) if r <= horizon => {
                return Err(Error::invalid(format!(
                    "inbox retention {r:?} of group {group} is not longer than the broker's redelivery horizon {horizon:?}: a redelivered message could be handled twice"
                )));
            }
            Some(r) => Some(r),
            None => horizon
                .checked_mul(2)
                .and_then(|d| d.checked_add(Duration::from_secs(3600))),
        };
        let health = Health::new(format!("consumer {group}"));
        let origin = WorkOrigin::Task(format!("consumer group {group}").into());
        Ok(Self {
            topics,
            retention,
            ctx: Arc::new(Context {
                group,
                db,
                broker,
                handler,
                config,
                health,
                origin,
            }),
        })
    }

    pub fn health(&self) -> Health {
        self.ctx.health.clone()
    }

    /// Reports the group's health to `health` instead of a cell of its own: for a component
    /// that runs a consumer inside it (a saga orchestrator) and hands out its health before
    /// the consumer exists.
    pub fn with_health(mut self, health: Health) -> Self {
        // A consumer's context is shared only by the tasks `run` starts, which takes `self`.
        Arc::get_mut(&mut self.ctx)
            .unwrap_or_else(|| unreachable!("a consumer's context is unshared before it runs"))
            .health = health;
        self
    }

    pub fn group(&self) -> &GroupName {
        &self.ctx.group
    }

    /// The group's view, for readers that wait until it applied a consistency token's writes.
    pub fn view(&self) -> crate::View {
        crate::View::new(self.ctx.db.clone(), self.ctx.group.clone(), &self.topics)
    }

    /// Asks for `group`'s view to be rebuilt from the broker's retained log: in one
    /// transaction, clears `collections` and the group's inbox and records the request; the
    /// next [`Consumer::run`] of the group moves it back to the start of its topics before it
    /// consumes. The group must be stopped: the request holds the group's lock exclusively
    /// (see [`Database::try_lock_group`]), which every running consumer of the group holds
    /// shared. Only for groups whose effects are the cleared collections (a view): a group
    /// that publishes events would publish them again.
    ///
    /// The rebuild is complete only if the broker still retains every message the view
    /// needs (see its retention settings).
    ///
    /// # Errors
    /// [`Error::InUse`] while a consumer of the group runs (in any process); nothing is
    /// cleared then. Storage errors.
    pub async fn request_rebuild(
        db: &Arc<dyn Database>,
        group: &GroupName,
        collections: &[&str],
    ) -> Result<()> {
        let Some(stopped) = db.try_lock_group(group, GroupLock::Exclusive).await? else {
            return Err(Error::InUse {
                what: format!("consumer group {group}"),
                reason: "its consumers are running; stop them before rebuilding its view".into(),
            });
        };
        let (group, marker) = (group.clone(), rebuild_marker(group));
        let collections: Vec<String> = collections.iter().map(|c| (*c).to_owned()).collect();
        let origin = WorkOrigin::Task(format!("the rebuild of consumer group {group}").into());
        let requested = db
            .transact_consumer(origin, move |tx| {
                Box::pin(async move {
                    for c in &collections {
                        tx.clear_collection(c).await?;
                    }
                    tx.clear_inbox(&group).await?;
                    tx.set_checkpoint(&marker, REBUILD_REQUESTED).await
                })
            })
            .await;
        stopped.release().await;
        requested
    }

    /// Performs a requested rebuild: the broker moves the group back, then the request is
    /// cleared. Doing it twice is harmless (the inbox recognises what was applied since).
    async fn rebuild_if_requested(&self) -> Result<()> {
        let marker = rebuild_marker(&self.ctx.group);
        if self.ctx.db.checkpoint(&marker).await? != Some(REBUILD_REQUESTED) {
            return Ok(());
        }
        for topic in &self.topics {
            self.ctx.broker.reset_group(&self.ctx.group, topic).await?;
        }
        self.ctx
            .db
            .transact_consumer(self.ctx.origin.clone(), move |tx| {
                Box::pin(async move { tx.set_checkpoint(&marker, Position::START).await })
            })
            .await?;
        tracing::info!(group = %self.ctx.group, "rebuilding from the broker's retained log");
        Ok(())
    }

    /// Runs every partition of every topic until `shutdown` is cancelled. Each partition
    /// task finishes the message it is handling and stops; unacknowledged messages are
    /// redelivered to the next run. Store and broker failures that may clear are retried
    /// (health says why meanwhile).
    ///
    /// # Errors
    /// A failure retrying cannot fix (e.g. a topic the broker refuses to open): every other
    /// partition of the group is stopped and the error returned.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        // The group's own token: a fatal failure of one partition stops the others.
        let stop = shutdown.child_token();
        let retry = Retry::new(
            self.ctx.config.backoff,
            stop.clone(),
            self.ctx.health.clone(),
        );
        let lock: group_lock::HeldLock = match group_lock::take(&self.ctx, &retry).await {
            Ok(guard) => Arc::new(std::sync::Mutex::new(guard)),
            Err(stop) => return retry.finish(Err(stop)),
        };
        let mut tasks = match self.start_partitions(&retry).await {
            Ok(tasks) => tasks,
            Err(stop) => {
                group_lock::release(lock).await;
                return retry.finish(Err(stop));
            }
        };
        if let Some(retention) = self.retention {
            let ctx = self.ctx.clone();
            let stop = stop.clone();
            tasks.spawn(async move {
                prune_inbox(ctx, retention, stop).await;
                Ok(())
            });
        }
        {
            let (ctx, lock, retry, stop) =
                (self.ctx.clone(), lock.clone(), retry.clone(), stop.clone());
            tasks.spawn(async move {
                group_lock::keep(ctx, lock, retry, stop).await;
                Ok(())
            });
        }
        {
            let ctx = self.ctx.clone();
            let stop = stop.clone();
            tasks.spawn(async move {
                count_dead_letters(ctx, stop).await;
                Ok(())
            });
        }
        {
            let (ctx, stop) = (self.ctx.clone(), stop.clone());
            let every = self.ctx.config.replay_requests_every;
            tasks.spawn(async move {
                crate::replay_requests::serve(ctx, every, stop).await;
                Ok(())
            });
        }
        self.ctx.health.set(HealthState::Running);
        let mut failure = None;
        while let Some(joined) = tasks.join_next().await {
            let outcome = joined.unwrap_or_else(|e| {
                // Handlers run under catch_unwind; a partition task that still panics is a
                // bug: stop the group loudly rather than run with a partition missing.
                Err(Error::Panicked {
                    what: format!("a partition task of consumer group {}", self.ctx.group),
                    message: e.to_string(),
                })
            });
            if let Err(e) = outcome {
                stop.cancel();
                failure.get_or_insert(e);
            }
        }
        // Released only now: every partition has finished its last message.
        group_lock::release(lock).await;
        retry.finish(failure.map_or(Ok(()), |e| Err(crate::retry::Stop::Fatal(e))))
    }

    /// Performs a requested rebuild and spawns one task per partition. A broker or database
    /// that is unavailable at start (down, electing a leader, refusing a stream for a moment)
    /// is waited for like one that fails later: a group must come up once its servers do.
    async fn start_partitions(
        &self,
        retry: &Retry,
    ) -> std::result::Result<JoinSet<Result<()>>, crate::retry::Stop> {
        retry
            .until_ok("performing a requested rebuild", || {
                self.rebuild_if_requested()
            })
            .await?;
        let mut tasks = JoinSet::new();
        for topic in &self.topics {
            let counted = retry
                .until_ok(&format!("counting the partitions of topic {topic}"), || {
                    self.ctx.broker.partitions(topic)
                })
                .await;
            let partitions = match counted {
                Ok(n) => n,
                Err(stop) => {
                    // The partitions of earlier topics have started: they finish the message
                    // they handle, as at shutdown, instead of being dropped in the middle.
                    retry.shutdown.cancel();
                    while tasks.join_next().await.is_some() {}
                    return Err(stop);
                }
            };
            for p in 0..partitions {
                tasks.spawn(partition::run(
                    self.ctx.clone(),
                    topic.clone(),
                    Partition::new(p),
                    retry.clone(),
                ));
            }
        }
        Ok(tasks)
    }
}

/// Keeps the group's open-dead-letters gauge current. A failed count only skips a sample: the
/// partitions report a database that is down.
async fn count_dead_letters(ctx: Arc<Context>, shutdown: CancellationToken) {
    let gauges = crate::metrics::DeadLetterGauges::new(ctx.group.as_str());
    loop {
        match ctx.db.dead_letters().summary().await {
            Ok(summary) => {
                let ours = summary.iter().find(|s| s.group == ctx.group);
                gauges.open.set(ours.map_or(0, |s| s.open) as f64);
                gauges.parked_keys.set(ours.map_or(0, |s| s.keys) as f64);
                let oldest = ours
                    .and_then(|s| s.oldest_failed_at)
                    .map_or(0.0, |t| (Utc::now() - t).as_seconds_f64().max(0.0));
                gauges.oldest_seconds.set(oldest);
            }
            Err(e) => {
                tracing::debug!(group = %ctx.group, error = %e, "counting dead letters failed")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(ctx.config.dead_letters_every) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn prune_inbox(ctx: Arc<Context>, retention: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ctx.config.prune_every) => {}
            _ = shutdown.cancelled() => return,
        }
        let Ok(age) = chrono::Duration::from_std(retention) else {
            return;
        };
        match ctx.db.prune_inbox(&ctx.group, Utc::now() - age).await {
            Ok(n) if n > 0 => tracing::info!(group = %ctx.group, pruned = n, "pruned the inbox"),
            Ok(_) => {}
            Err(e) => tracing::warn!(group = %ctx.group, error = %e, "pruning the inbox failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use tributary_core::{Envelope, InMemoryDatabase, OutgoingMessage, Payload};

    use super::*;
    use crate::faulty_broker::FaultyBroker;
    use crate::handler::handler_fn;

    /// Guards the waits below; each awaits an event, never a duration.
    const PATIENCE: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn a_group_started_while_the_broker_is_unavailable_comes_up_once_it_answers() {
        let broker = Arc::new(FaultyBroker::new());
        let topic = Topic::new("orders").unwrap();
        broker.ensure_topic(&topic, 1).await.unwrap();
        broker.partitions_unavailable.store(true, Ordering::SeqCst);
        let (handled_tx, mut handled) = tokio::sync::mpsc::unbounded_channel();
        let handler = handler_fn(move |event, _unit| {
            let handled_tx = handled_tx.clone();
            let id = event.id;
            Box::pin(async move {
                let _ = handled_tx.send(id);
                Ok(())
            })
        });
        let config = ConsumerConfig::default()
            .with_backoff(Backoff::new(
                Duration::from_millis(1),
                Duration::from_millis(5),
            ))
            .with_fetch_wait(Duration::from_millis(20));
        let consumer = Consumer::new(
            GroupName::new("history").unwrap(),
            vec![topic.clone()],
            Arc::new(InMemoryDatabase::new()),
            broker.clone(),
            handler,
            config,
        )
        .unwrap();
        let health = consumer.health();
        let shutdown = CancellationToken::new();
        let mut running = tokio::spawn(consumer.run(shutdown.clone()));

        // Asked, refused, and asked again: the group waits instead of failing.
        let mut counts = broker.partition_counts.subscribe();
        tokio::select! {
            asked = tokio::time::timeout(PATIENCE, counts.wait_for(|n| *n >= 3)) => {
                asked.expect("the group keeps asking for the partitions").unwrap();
            }
            ended = &mut running => panic!("the group gave up on an unavailable broker: {ended:?}"),
        }
        match health.get() {
            HealthState::Degraded(why) => assert!(why.contains("partitions"), "{why}"),
            other => panic!("health should say what the group waits for, not {other:?}"),
        }

        broker.partitions_unavailable.store(false, Ordering::SeqCst);
        let event = Envelope::new("orders", "OrderCreated", Payload::from_value(&1).unwrap())
            .with_partition_key("o-1");
        broker
            .publish(&[OutgoingMessage::from_envelope(topic, &event)])
            .await
            .unwrap();
        let got = tokio::time::timeout(PATIENCE, handled.recv())
            .await
            .expect("the group consumes once the broker answers");
        assert_eq!(got, Some(event.id));

        shutdown.cancel();
        running.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn an_idle_group_is_running_again_as_soon_as_its_broker_answers() {
        let broker = Arc::new(FaultyBroker::new());
        let topic = Topic::new("commands").unwrap();
        broker.ensure_topic(&topic, 2).await.unwrap();
        let handler = handler_fn(|_event, _unit| Box::pin(async { Ok(()) }));
        let config = ConsumerConfig::default()
            .with_backoff(Backoff::new(
                Duration::from_millis(1),
                Duration::from_millis(5),
            ))
            .with_fetch_wait(Duration::from_millis(20));
        let consumer = Consumer::new(
            GroupName::new("idle").unwrap(),
            vec![topic],
            Arc::new(InMemoryDatabase::new()),
            broker.clone(),
            handler,
            config,
        )
        .unwrap();
        let health = consumer.health();
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(consumer.run(shutdown.clone()));
        // Health is a cell, not a channel: look at it until it says `want`.
        let until = async |want: fn(&HealthState) -> bool, what: &str| {
            let waited = tokio::time::timeout(PATIENCE, async {
                while !want(&health.get()) {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
            .await;
            assert!(waited.is_ok(), "{what}: health stayed {:?}", health.get());
        };
        until(|s| *s == HealthState::Running, "the group starts").await;

        broker.fetch_unavailable.store(true, Ordering::SeqCst);
        let mut failed = broker.failed_fetches.subscribe();
        tokio::time::timeout(PATIENCE, failed.wait_for(|n| *n >= 2))
            .await
            .expect("the fetches fail")
            .unwrap();
        until(
            |s| matches!(s, HealthState::Degraded(_)),
            "a failing fetch degrades the group",
        )
        .await;
        // No message arrives after the broker is back: the fetches alone must say it is.
        broker.fetch_unavailable.store(false, Ordering::SeqCst);
        until(
            |s| *s == HealthState::Running,
            "an idle group is Running again once its fetches succeed",
        )
        .await;

        shutdown.cancel();
        running.await.unwrap().unwrap();
    }
}
