//! The relay: from a source of committed rows (outbox or event store) to the broker.
//!
//! Delivery guarantee: at-least-once, in commit order. A batch is read in commit order,
//! published with every acknowledgement awaited, and only then marked published (rows deleted
//! or cursor advanced) in one statement. A crash between the two republishes the batch; the
//! broker's deduplication by message id and the consumers' inboxes absorb the copies.
//!
//! One relay is active per source: it holds the source's lease. Another relay started on the
//! same source waits as a hot standby and takes over when the lease is released (the holder
//! stopped or died).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tributary_core::{Broker, Error, LeaseGuard, RelaySource, SourceBatch};

use crate::backoff::Backoff;
use crate::health::{Health, HealthState};
use crate::metrics::RelayMetrics;
use crate::retry::{Retry, Stop};

/// Settings of a [`Relay`].
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Most messages read and published at once.
    pub batch_size: usize,
    /// How often a standby tries to take the lease.
    pub standby_poll: Duration,
    /// Delays between retries after a failed read, publish or mark.
    pub backoff: Backoff,
    /// The `service` label of the relay's metrics (the source's name is the `source` label).
    pub service: Option<String>,
    /// How often the active relay measures its source's backlog for the metrics.
    pub backlog_every: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            standby_poll: Duration::from_millis(250),
            backoff: Backoff::new(Duration::from_millis(20), Duration::from_secs(2)),
            service: None,
            backlog_every: Duration::from_secs(5),
        }
    }
}

impl RelayConfig {
    pub fn with_batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }
    pub fn with_standby_poll(mut self, d: Duration) -> Self {
        self.standby_poll = d;
        self
    }
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }
    pub fn with_service(mut self, service: impl Into<String>) -> Self {
        self.service = Some(service.into());
        self
    }
    pub fn with_backlog_every(mut self, every: Duration) -> Self {
        self.backlog_every = every;
        self
    }
}

/// Counters of a relay, shared with whoever wants to watch it.
#[derive(Debug, Default)]
pub struct RelayStats {
    pub published: AtomicU64,
    pub batches: AtomicU64,
    /// Publish attempts the broker refused for good (see [`Relay`]'s halting rule).
    pub refusals: AtomicU64,
}

/// Publishes a [`RelaySource`] to a [`Broker`].
pub struct Relay {
    source: Arc<dyn RelaySource>,
    broker: Arc<dyn Broker>,
    config: RelayConfig,
    stats: Arc<RelayStats>,
    health: Health,
    metrics: RelayMetrics,
}

impl Relay {
    pub fn new(source: Arc<dyn RelaySource>, broker: Arc<dyn Broker>, config: RelayConfig) -> Self {
        let health = Health::new(format!("relay {}", source.name()));
        let metrics = RelayMetrics::new(config.service.as_deref(), source.name());
        Self {
            source,
            broker,
            config,
            stats: Arc::default(),
            health,
            metrics,
        }
    }

    pub fn stats(&self) -> Arc<RelayStats> {
        self.stats.clone()
    }

    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Runs until `shutdown` is cancelled: waits for the lease, then publishes. A lost lease
    /// sends it back to standing by. Failures that may clear are retried (health says why).
    ///
    /// # Errors
    /// A failure of the source retrying cannot fix (a storage problem, an undecodable row):
    /// the relay stops rather than skip anything.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        let retry = Retry::new(self.config.backoff, shutdown, self.health.clone());
        let stopped = self.lead(&retry).await;
        retry.finish(stopped)
    }

    /// Holds the lease and publishes, again after every lost lease, until stopped.
    async fn lead(&self, retry: &Retry) -> Result<(), Stop> {
        loop {
            let lease = self.acquire(retry).await?;
            tracing::info!(
                source = self.source.name(),
                "relay holds the lease; publishing"
            );
            self.health.set(HealthState::Running);
            self.metrics.lease_held.set(1.0);
            let held = self.publish_while_held(lease.as_ref(), retry).await;
            self.metrics.lease_held.set(0.0);
            // Given back before the relay returns, so a standby (or an operator command that
            // needs the source idle) can take it at once.
            lease.release().await;
            held?;
            tracing::warn!(source = self.source.name(), "relay lost its lease");
        }
    }

    async fn acquire(&self, retry: &Retry) -> Result<Box<dyn LeaseGuard>, Stop> {
        let mut standby_logged = false;
        loop {
            if let Some(lease) = retry
                .until_ok("taking the lease", || self.source.try_lease())
                .await?
            {
                return Ok(lease);
            }
            if !standby_logged {
                tracing::info!(
                    source = self.source.name(),
                    "another relay is active; standing by"
                );
                standby_logged = true;
            }
            self.health.set(HealthState::Standby);
            retry.nap(self.config.standby_poll).await?;
        }
    }

    /// Publishes until the lease is lost (`Ok`) or the relay stops (`Err`).
    async fn publish_while_held(&self, lease: &dyn LeaseGuard, retry: &Retry) -> Result<(), Stop> {
        let mut commits = self.source.commits();
        let mut backlog_measured: Option<Instant> = None;
        loop {
            if retry.shutdown.is_cancelled() {
                return Err(Stop::Shutdown);
            }
            if !lease.is_held() {
                return Ok(());
            }
            if backlog_measured.is_none_or(|t| t.elapsed() >= self.config.backlog_every) {
                backlog_measured = Some(Instant::now());
                self.measure_backlog().await;
            }
            // Seen before reading: a commit during the read wakes the wait below.
            commits.borrow_and_update();
            let batch = retry
                .until_ok("reading the source", || {
                    self.source.read_batch(self.config.batch_size)
                })
                .await?;
            match batch {
                Some(batch) => self.deliver(batch, retry).await?,
                None => {
                    self.health.set(HealthState::Running);
                    tokio::select! {
                        _ = commits.changed() => {}
                        _ = tokio::time::sleep(self.source.poll_every()) => {}
                        _ = retry.shutdown.cancelled() => return Err(Stop::Shutdown),
                    }
                }
            }
        }
    }

    /// Sets the backlog gauges; a failure only skips this sample (the read that follows
    /// reports a source that is down).
    async fn measure_backlog(&self) {
        match self.source.backlog().await {
            Ok(Some(backlog)) => {
                self.metrics.pending.set(backlog.pending as f64);
                self.metrics
                    .oldest_age
                    .set(backlog.oldest_age.map_or(0.0, |a| a.as_secs_f64()));
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(source = self.source.name(), error = %e, "measuring the backlog failed")
            }
        }
    }

    /// Publishes `batch` and marks it published, retrying each step until it succeeds.
    /// Stopped first, the batch is left unmarked and is published again by whoever runs next.
    ///
    /// A broker that refuses the batch for good (a message above its size limit, say) does
    /// not make the relay drop or skip anything: skipping would lose the row and break the
    /// per-key order promised to consumers. The relay says so loudly, once, keeps the batch and
    /// retries at its slowest pace until the operator raises the broker's limit.
    async fn deliver(&self, batch: SourceBatch, retry: &Retry) -> Result<(), Stop> {
        let mut failures = 0;
        let mut refusal_reported = false;
        let started = Instant::now();
        let span = crate::trace::send_span(self.source.name(), &batch.messages);
        while let Err(e) =
            tracing::Instrument::instrument(self.broker.publish(&batch.messages), span.clone())
                .await
        {
            failures += 1;
            let delay = if e.is_retryable() {
                retry.degraded("publishing", &e);
                self.config.backoff.delay(failures)
            } else {
                if !refusal_reported {
                    refusal_reported = true;
                    tracing::error!(
                        source = self.source.name(),
                        error = %e,
                        first_message = ?batch.messages.first().map(|m| m.id),
                        messages = batch.messages.len(),
                        "the broker refuses this batch; the relay keeps it and stops here until \
                         the broker accepts it (raise the broker's message size limit, or lower \
                         max_event_bytes for new events)"
                    );
                }
                self.stats.refusals.fetch_add(1, Ordering::Relaxed);
                self.metrics.refusals.increment(1);
                self.health.set(HealthState::Degraded(format!(
                    "publishing refused by the broker, relay halted on this batch: {e}"
                )));
                self.config.backoff.delay(u32::MAX)
            };
            retry.nap(delay).await?;
        }
        drop(span);
        self.metrics
            .publish_seconds
            .record(started.elapsed().as_secs_f64());
        retry
            .until_ok("recording progress", || {
                self.source.mark_published(batch.through)
            })
            .await?;
        // Health before the counters: whoever sees a batch counted sees the relay running.
        self.health.set(HealthState::Running);
        self.stats
            .published
            .fetch_add(batch.messages.len() as u64, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .published
            .increment(batch.messages.len() as u64);
        self.metrics.batch_size.record(batch.messages.len() as f64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tributary_core::{
        Database, Envelope, GroupName, InMemoryDatabase, Partition, Payload, Topic,
    };

    use super::*;
    use crate::faulty_broker::FaultyBroker;

    async fn until(what: &str, check: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_batch_halts_the_relay_without_losing_or_skipping_a_message() {
        let db: Arc<dyn Database> = Arc::new(InMemoryDatabase::new());
        let broker = Arc::new(FaultyBroker::new());
        broker.refuse_publish.store(true, Ordering::SeqCst);
        let topic = Topic::new("refusals").unwrap();
        broker.ensure_topic(&topic, 1).await.unwrap();
        let events: Vec<Envelope> = (0..3)
            .map(|n| {
                Envelope::new("test", "Numbered", Payload::from_value(&n).unwrap())
                    .with_partition_key("k")
            })
            .collect();
        let sent: Vec<_> = events.iter().map(|e| e.id).collect();
        let t = topic.clone();
        db.transact(move |tx| {
            Box::pin(async move {
                for e in events {
                    tx.publish(&t, e).await?;
                }
                Ok::<_, Error>(())
            })
        })
        .await
        .unwrap();

        let config = RelayConfig {
            backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(10)),
            ..RelayConfig::default()
        };
        let relay = Relay::new(db.outbox_source(), broker.clone(), config);
        let (stats, health) = (relay.stats(), relay.health());
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(relay.run(shutdown.clone()));

        until("repeated refusals", || {
            stats.refusals.load(Ordering::Relaxed) >= 3
        })
        .await;
        assert_eq!(stats.published.load(Ordering::Relaxed), 0);
        match health.get() {
            HealthState::Degraded(why) => assert!(why.contains("refused"), "{why}"),
            other => panic!("health should say the relay is halted, not {other:?}"),
        }

        broker.refuse_publish.store(false, Ordering::SeqCst);
        until("the held batch published", || {
            stats.published.load(Ordering::Relaxed) == 3
        })
        .await;
        let group = GroupName::new("reader").unwrap();
        let mut consumer = broker
            .consume(&group, &topic, Partition::new(0))
            .await
            .unwrap();
        let got: Vec<_> = consumer
            .fetch(10, Duration::from_millis(100))
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.id.unwrap())
            .collect();
        assert_eq!(got, sent, "every held message arrives, in order");
        assert!(health.is_ok());
        shutdown.cancel();
        running.await.unwrap().unwrap();
    }
}
