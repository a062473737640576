//! Settings of a [`crate::NatsBroker`].

use std::time::Duration;

use tributary_core::{Error, Result};

use crate::naming::{self, MAX_PARTITIONS};

/// Where JetStream keeps a topic's messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum NatsStorage {
    /// Files in the server's store directory (`-sd`). Survives a server restart. Note that
    /// the server acknowledges before its writes reach stable storage: see the crate docs.
    #[default]
    File,
    /// Server memory only: lost when the server stops. For tests and caches.
    Memory,
}

/// Settings of a [`crate::NatsBroker`]. Every process using the same streams must agree on the
/// stream settings (`stream_prefix`, `max_age`, `duplicate_window`, `replicas`, `storage`):
/// an existing stream whose settings differ is refused, never reconfigured.
///
/// Durability is not a setting here but the server's: JetStream acknowledges a publish before
/// the message reaches stable storage. nats-server 2.9 never fsyncs its file store (it has no
/// setting for it); 2.10 and later fsync every `sync_interval` (server config, default 2
/// minutes; `always` fsyncs each write before acknowledging, at a large throughput cost).
/// A killed server process loses nothing the kernel already holds; a power loss can lose
/// acknowledged messages unless `replicas` ≥ 3 spreads them over machines.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NatsBrokerConfig {
    /// Server URL(s), comma-separated: `nats://127.0.0.1:4222`.
    pub url: String,
    /// Namespaces streams (`<prefix>_<topic>`) and subjects (`<prefix>.<topic>.<partition>`).
    pub stream_prefix: String,
    /// Partitions of a topic created implicitly (by `partitions`, `publish` or `consume`).
    pub default_partitions: u32,
    /// How long the server waits for a commit before it redelivers a fetched message to the
    /// same consumer. Redelivery to a *new* consumer does not wait for it (see the crate docs).
    pub ack_wait: Duration,
    /// The most fetched, uncommitted messages a consumer may hold; `fetch` returns nothing
    /// more until some are committed.
    pub max_ack_pending: u32,
    /// Retention: the stream's `max_age`, and so the broker's redelivery horizon. Zero keeps
    /// messages forever.
    pub max_age: Duration,
    /// The stream's `duplicate_window`: a message id published again within it is acknowledged
    /// without being stored twice. Later duplicates are stored (consumers' inboxes catch them).
    pub duplicate_window: Duration,
    /// Stream replicas (1 on a single server; 3 or 5 in a cluster).
    pub replicas: usize,
    /// Where streams keep their messages (see above for what "kept" means on disk).
    pub storage: NatsStorage,
    /// Bound on one JetStream API request and on waiting for one publish acknowledgement.
    pub request_timeout: Duration,
    /// Bound on establishing the connection in [`crate::NatsBroker::connect`].
    pub connect_timeout: Duration,
    /// Publish acknowledgements one `publish` call waits for at once: it sends this many
    /// messages ahead of the acknowledgements it has received.
    pub publish_window: usize,
    /// The longest wait between two attempts to reconnect after the connection was lost. The
    /// client's own default grows to 4 s, so a server back after a few seconds was found
    /// only up to 4 s later, and every relay and consumer waited that long to catch up
    /// (measured: health and the first settled order 4.9 s after the restart that ended an
    /// 8-second outage). An attempt is one TCP connect.
    pub max_reconnect_delay: Duration,
}

impl Default for NatsBrokerConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            stream_prefix: "TRIB".into(),
            default_partitions: 4,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 10_000,
            max_age: Duration::from_secs(7 * 24 * 3600),
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
            storage: NatsStorage::File,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            publish_window: 1024,
            max_reconnect_delay: Duration::from_millis(250),
        }
    }
}

impl NatsBrokerConfig {
    pub fn with_max_reconnect_delay(mut self, delay: Duration) -> Self {
        self.max_reconnect_delay = delay;
        self
    }

    pub fn with_url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }

    pub fn with_stream_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.stream_prefix = prefix.into();
        self
    }

    pub fn with_default_partitions(mut self, partitions: u32) -> Self {
        self.default_partitions = partitions;
        self
    }

    pub fn with_ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    pub fn with_max_ack_pending(mut self, max_ack_pending: u32) -> Self {
        self.max_ack_pending = max_ack_pending;
        self
    }

    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    pub fn with_duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }

    pub fn with_replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    pub fn with_storage(mut self, storage: NatsStorage) -> Self {
        self.storage = storage;
        self
    }

    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    pub fn with_publish_window(mut self, window: usize) -> Self {
        self.publish_window = window;
        self
    }

    /// # Errors
    /// [`Error::InvalidInput`] for a value the server would refuse or that breaks an invariant.
    pub fn validate(&self) -> Result<()> {
        naming::validate_prefix(&self.stream_prefix).map_err(Error::invalid)?;
        if self.default_partitions == 0 || self.default_partitions > MAX_PARTITIONS {
            return Err(Error::invalid(format!(
                "default_partitions must be 1 to {MAX_PARTITIONS}, got {}",
                self.default_partitions
            )));
        }
        if self.ack_wait.is_zero() {
            return Err(Error::invalid("ack_wait must be positive"));
        }
        if self.max_ack_pending == 0 {
            return Err(Error::invalid("max_ack_pending must be at least 1"));
        }
        if self.duplicate_window.is_zero() {
            return Err(Error::invalid(
                "duplicate_window must be positive: publish retries rely on it",
            ));
        }
        if !self.max_age.is_zero() && self.duplicate_window > self.max_age {
            return Err(Error::invalid(format!(
                "duplicate_window ({:?}) cannot exceed max_age ({:?})",
                self.duplicate_window, self.max_age
            )));
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(Error::invalid(format!(
                "replicas must be 1 to 5, got {}",
                self.replicas
            )));
        }
        if self.request_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(Error::invalid("timeouts must be positive"));
        }
        if self.publish_window == 0 {
            return Err(Error::invalid("publish_window must be at least 1"));
        }
        Ok(())
    }
}

/// The wait before reconnection attempt `attempts` (counted from 1): none for the first,
/// then doubling from 10 ms, never more than `max`.
pub(crate) fn reconnect_delay(attempts: usize, max: Duration) -> Duration {
    match attempts {
        0 | 1 => Duration::ZERO,
        n => {
            let doublings = u32::try_from(n - 2).unwrap_or(u32::MAX).min(16);
            Duration::from_millis(10u64 << doublings).min(max)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_config_is_valid() {
        NatsBrokerConfig::default().validate().unwrap();
    }

    #[test]
    fn invalid_settings_are_refused_before_connecting() {
        let base = NatsBrokerConfig::default;
        for bad in [
            base().with_stream_prefix("a.b"),
            base().with_default_partitions(0),
            base().with_default_partitions(MAX_PARTITIONS + 1),
            base().with_ack_wait(Duration::ZERO),
            base().with_max_ack_pending(0),
            base().with_duplicate_window(Duration::ZERO),
            base()
                .with_max_age(Duration::from_secs(60))
                .with_duplicate_window(Duration::from_secs(120)),
            base().with_replicas(0),
            base().with_publish_window(0),
        ] {
            assert!(
                matches!(bad.validate(), Err(Error::InvalidInput { .. })),
                "{bad:?} must be refused"
            );
        }
        base()
            .with_max_age(Duration::ZERO)
            .validate()
            .expect("zero max_age keeps messages forever");
    }

    #[test]
    fn reconnecting_waits_at_most_the_configured_delay() {
        let max = NatsBrokerConfig::default().max_reconnect_delay;
        assert!(max <= Duration::from_millis(250), "{max:?}");
        assert_eq!(reconnect_delay(1, max), Duration::ZERO);
        assert_eq!(reconnect_delay(2, max), Duration::from_millis(10));
        assert_eq!(reconnect_delay(3, max), Duration::from_millis(20));
        for attempts in 1..10_000 {
            assert!(reconnect_delay(attempts, max) <= max, "attempt {attempts}");
        }
        assert_eq!(reconnect_delay(usize::MAX, max), max);
    }
}
