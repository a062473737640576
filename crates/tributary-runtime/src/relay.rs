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
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tributary_core::{Broker, Error, LeaseGuard, RelaySource, SourceBatch};

use crate::backoff::Backoff;
use crate::health::{Health, HealthState};

/// Settings of a [`Relay`].
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// Most messages read and published at once.
    pub batch_size: usize,
    /// How often a standby tries to take the lease.
    pub standby_poll: Duration,
    /// Delays between retries after a failed read, publish or mark.
    pub backoff: Backoff,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            standby_poll: Duration::from_millis(250),
            backoff: Backoff::new(Duration::from_millis(20), Duration::from_secs(2)),
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
}

/// Counters of a relay, shared with whoever wants to watch it.
#[derive(Debug, Default)]
pub struct RelayStats {
    pub published: AtomicU64,
    pub batches: AtomicU64,
}

/// Publishes a [`RelaySource`] to a [`Broker`].
pub struct Relay {
    source: Arc<dyn RelaySource>,
    broker: Arc<dyn Broker>,
    config: RelayConfig,
    stats: Arc<RelayStats>,
    health: Health,
}

enum Stop {
    Shutdown,
    LeaseLost,
}

impl Relay {
    pub fn new(source: Arc<dyn RelaySource>, broker: Arc<dyn Broker>, config: RelayConfig) -> Self {
        let health = Health::new(format!("relay {}", source.name()));
        Self {
            source,
            broker,
            config,
            stats: Arc::default(),
            health,
        }
    }

    pub fn stats(&self) -> Arc<RelayStats> {
        self.stats.clone()
    }

    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Runs until `shutdown` is cancelled: waits for the lease, then publishes.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let Some(lease) = self.acquire(&shutdown).await else {
                break;
            };
            tracing::info!(
                source = self.source.name(),
                "relay holds the lease; publishing"
            );
            self.health.set(HealthState::Running);
            match self.publish_loop(lease.as_ref(), &shutdown).await {
                Stop::Shutdown => break,
                Stop::LeaseLost => {
                    tracing::warn!(source = self.source.name(), "relay lost its lease");
                }
            }
        }
        self.health.set(HealthState::Stopped);
    }

    async fn acquire(&self, shutdown: &CancellationToken) -> Option<Box<dyn LeaseGuard>> {
        let mut standby_logged = false;
        let mut failures = 0;
        loop {
            if shutdown.is_cancelled() {
                return None;
            }
            match self.source.try_lease().await {
                Ok(Some(lease)) => return Some(lease),
                Ok(None) => {
                    if !standby_logged {
                        tracing::info!(
                            source = self.source.name(),
                            "another relay is active; standing by"
                        );
                        standby_logged = true;
                    }
                    self.health.set(HealthState::Standby);
                    failures = 0;
                    self.nap(self.config.standby_poll, shutdown).await;
                }
                Err(e) => {
                    failures += 1;
                    self.degraded("taking the lease", &e);
                    self.nap(self.config.backoff.delay(failures), shutdown)
                        .await;
                }
            }
        }
    }

    async fn publish_loop(&self, lease: &dyn LeaseGuard, shutdown: &CancellationToken) -> Stop {
        let mut commits = self.source.commits();
        let mut failures = 0;
        loop {
            if shutdown.is_cancelled() {
                return Stop::Shutdown;
            }
            if !lease.is_held() {
                return Stop::LeaseLost;
            }
            // Seen before reading: a commit during the read wakes the wait below.
            commits.borrow_and_update();
            match self.source.read_batch(self.config.batch_size).await {
                Ok(Some(batch)) => {
                    failures = 0;
                    if !self.deliver(batch, shutdown).await {
                        return Stop::Shutdown;
                    }
                }
                Ok(None) => {
                    failures = 0;
                    self.health.set(HealthState::Running);
                    tokio::select! {
                        _ = commits.changed() => {}
                        _ = tokio::time::sleep(self.source.poll_every()) => {}
                        _ = shutdown.cancelled() => return Stop::Shutdown,
                    }
                }
                Err(e) => {
                    failures += 1;
                    self.degraded("reading the source", &e);
                    self.nap(self.config.backoff.delay(failures), shutdown)
                        .await;
                }
            }
        }
    }

    /// Publishes `batch` and marks it published, retrying each step until it succeeds.
    /// Returns false if stopped first: the batch is then left unmarked and is published
    /// again by whoever runs next.
    async fn deliver(&self, batch: SourceBatch, shutdown: &CancellationToken) -> bool {
        let mut failures = 0;
        while let Err(e) = self.broker.publish(&batch.messages).await {
            failures += 1;
            self.degraded("publishing", &e);
            if !self
                .nap(self.config.backoff.delay(failures), shutdown)
                .await
            {
                return false;
            }
        }
        let mut failures = 0;
        while let Err(e) = self.source.mark_published(batch.through).await {
            failures += 1;
            self.degraded("recording progress", &e);
            if !self
                .nap(self.config.backoff.delay(failures), shutdown)
                .await
            {
                return false;
            }
        }
        self.stats
            .published
            .fetch_add(batch.messages.len() as u64, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.health.set(HealthState::Running);
        true
    }

    fn degraded(&self, what: &str, e: &Error) {
        tracing::warn!(source = self.source.name(), error = %e, "relay failed {what}; retrying");
        self.health
            .set(HealthState::Degraded(format!("{what}: {e}")));
    }

    /// Sleeps for `d` unless stopped; returns whether it is still running.
    async fn nap(&self, d: Duration, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = shutdown.cancelled() => false,
        }
    }
}
